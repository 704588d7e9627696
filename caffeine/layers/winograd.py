"""Winograd F(2x2,3x3) for 3x3, stride-1, ungrouped 2-D convolutions (the forward pass).

:class:`caffeine.layers.conv_engine.ConvEngine` chooses it (where it pays, by its
thresholds, and where it fits its memory bound) and calls :meth:`WinogradF2x3.forward`;
the backward to the data runs it too, through the engine's flipped-kernel convolution.

Memory: the transforms live inside the workspace buffers that the im2col path of the
same convolution would take (``conv_col``, ``conv_out``, ``conv_pad``), never beyond the
size im2col would ask of each, so that choosing Winograd never grows the workspace.
:meth:`WinogradF2x3.plan` sizes the chunks (of images, of tile rows, and of output
channels for the transformed kernels) to fit, or finds that nothing worth running does.
"""
from __future__ import annotations

import numpy as np

from ..workspace import align_floats, workspace
from ._util import pad_into

_F32 = np.float32

# Winograd F(2x2,3x3) (Lavin & Gray, 2015): with d a 4x4 input tile and g a 3x3 kernel,
# the 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A, * element-wise, where
#   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
#   G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]],
#   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
# Summed over input channels, the 16 element-wise products become 16 GEMMs
# (out_ch x in_ch) @ (in_ch x tiles): 16 multiply-adds per 4 outputs and channel
# instead of 36.  The transforms of the data below apply these matrices with adds only;
# the kernels' is one GEMM with kron(G, G): U[(i, j)] = sum_(a, b) G[i, a] G[j, b] g[a, b].
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=_F32)
_KRON_GG = np.kron(_G, _G)  # (16, 9)


class WinogradF2x3:
    """The transforms of one convolution's geometry and their chunking: in_ch -> out_ch
    channels, 2-D ``pad``, output ``out_sp`` (Ho, Wo), ``num`` images.

    A chunk is ``wchunk`` images (or, when one image is too much, ``wrows`` rows of
    tiles of one image) and ``mblock`` output channels.  Its scratch regions:

    - ``x``: the padded input of the chunk's images, (Ht, Wt, nb, C);
    - ``v``: the transformed input tiles, (16, T, C) (T tiles); then, with one block of
      output channels, the partly transformed outputs (A^T m);
    - ``a``: the rows' first transform (B^T d), then the 16 GEMMs' products (16, T, Mb),
      then the output tiles;
    - ``s``: A^T m, where it does not go into ``v``;
    - ``u``: the transformed kernels of one block of output channels, (16, Mb, C).
    """

    def __init__(self, in_ch, out_ch, pad, out_sp, num, wchunk, wrows, mblock, where):
        self.in_ch, self.out_ch, self.pad, self.out_sp, self.N = in_ch, out_ch, tuple(pad), tuple(out_sp), num
        self.tiles = tuple(-(-o // 2) for o in self.out_sp)          # 2x2 output tiles per axis
        self.tile_sp = tuple(2 * t + 2 for t in self.tiles)          # the padded input they read
        self.wchunk, self.wrows, self.mblock = wchunk, wrows, mblock
        self.where = where       # region -> (workspace name, offset in floats, size in floats)
        self.used = {}           # workspace name -> floats used
        for name, off, size in where.values():
            if size:
                self.used[name] = max(self.used.get(name, 0), off + size)
        self._kron = None
        self._kron_xp = None     # the array module _kron lives in

    @staticmethod
    def sizes(in_ch, out_ch, out_sp, nb, rows, mblock):
        """Floats of each region for chunks of ``nb`` images of ``rows`` tile rows and
        ``mblock`` output channels."""
        C, M = in_ch, out_ch
        tw = -(-out_sp[1] // 2)
        Ht, Wt = (2 * -(-o // 2) + 2 for o in out_sp)
        T = rows * tw * nb
        s_in_v = mblock == M and C * 2 >= M      # one block: v is dead once the products are
        return {'x': Ht * Wt * nb * C, 'v': 16 * T * C, 'a': max(4 * rows * Wt * nb * C, 16 * T * mblock),
                's': 0 if s_in_v else 8 * T * mblock, 'u': 16 * mblock * C}

    @classmethod
    def plan(cls, in_ch, out_ch, pad, out_sp, num, budget, chunk_floats, min_tiles, min_block):
        """The chunking whose regions fit in ``budget`` ({workspace name: floats}, the
        buffers and sizes im2col would use), or None.

        Blocks of output channels from all of them down by halves to ``min_block``;
        for each, the largest chunk of images (or of tile rows) within ``chunk_floats``
        (transformed input and products) that fits; the first block whose chunk has at
        least ``min_tiles`` tiles (or all of them) is taken."""
        C, M = in_ch, out_ch
        th, tw = (-(-o // 2) for o in out_sp)
        total = num * th * tw
        mb = M
        while True:
            per_row = 16 * (C + mb) * tw
            nb_cap = max(1, min(num, chunk_floats // (per_row * th)))
            rows_cap = max(1, min(th, chunk_floats // per_row))
            if rows_cap == th:
                tries = [(n, th) for n in range(nb_cap, 0, -1)] + [(1, r) for r in range(th - 1, 0, -1)]
            else:
                tries = [(1, r) for r in range(rows_cap, 0, -1)]
            for nb, rows in tries:
                if nb * rows * tw < min(min_tiles, total):
                    break
                where = _pack(cls.sizes(C, M, out_sp, nb, rows, mb), budget)
                if where is not None:
                    return cls(C, M, pad, out_sp, num, nb, rows if nb == 1 else th, mb, where)
            if mb <= min_block or mb == 1:
                return None
            mb = max(min_block, -(-mb // 2), 1)

    def _region(self, bufs, key, size):
        name, off, _ = self.where[key]
        return bufs[name][off:off + size]

    # Every array of the transforms keeps the channels innermost and the images next,
    # (rows, columns, images, channels), so that each add runs over long contiguous
    # runs (images x channels values) even on 7x7 maps; the input and the output
    # are transposed to and from that layout once per chunk.
    def _weights(self, xp, W, m0, m1, u):
        """U = G g G^T for output channels m0:m1 and every input channel, as a
        (16, in_ch, m1 - m0) view of the (16, m1 - m0, in_ch) region u: one GEMM of the
        kernels with kron(G, G)."""
        C, mb = self.in_ch, m1 - m0
        if self._kron_xp is not xp:
            self._kron, self._kron_xp = xp.asarray(_KRON_GG), xp
        u = u.reshape(16, mb * C)
        xp.matmul(self._kron, W[m0:m1].reshape(mb * C, 9).T, out=u)
        return u.reshape(16, mb, C).transpose(0, 2, 1)

    def forward(self, xp, W, x, y, bias=None):
        """y = W * x (+ bias) for x (N, in_ch, H, W), chunk by chunk."""
        C, M, mblock = self.in_ch, self.out_ch, self.mblock
        th = self.tiles[0]
        Ht, Wt = self.tile_sp
        bufs = {name: workspace(name, n) for name, n in self.used.items()}
        W = W.reshape(M, C * 9)
        U = None
        if mblock == M:    # the kernels transformed once for every chunk
            U = self._weights(xp, W, 0, M, self._region(bufs, 'u', 16 * M * C))
        for n0 in range(0, self.N, self.wchunk):
            n1 = min(self.N, n0 + self.wchunk)
            nb = n1 - n0
            xpad = self._region(bufs, 'x', Ht * Wt * nb * C).reshape(Ht, Wt, nb, C)
            pad_into(xp, x[n0:n1], xpad.transpose(2, 3, 0, 1), self.pad)
            for t0 in range(0, th, self.wrows):
                t1 = min(th, t0 + self.wrows)
                v = self._input_tiles(xp, bufs, xpad, t0, t1)
                for m0 in range(0, M, mblock):
                    m1 = min(M, m0 + mblock)
                    Ub = U if U is not None else self._weights(
                        xp, W, m0, m1, self._region(bufs, 'u', 16 * (m1 - m0) * C))
                    self._outputs(xp, bufs, v, Ub, y[n0:n1, m0:m1], t0, t1, nb,
                                  None if bias is None else bias[m0:m1])
        return y

    def _input_tiles(self, xp, bufs, xpad, t0, t1):
        """The transformed input tiles B^T d B of tile rows t0:t1, (16, T, C), from the
        padded input (Ht, Wt, nb, C)."""
        C = self.in_ch
        tw = self.tiles[1]
        Wt = self.tile_sp[1]
        nb = xpad.shape[2]
        th = t1 - t0
        T = th * tw * nb
        # B^T d: rows 2t + (0..3) of the padded input -> r[i] (th, Wt, nb, C)
        r = self._region(bufs, 'a', 4 * th * Wt * nb * C).reshape(4, th, Wt, nb, C)
        _bt_rows(xp, [xpad[2 * t0 + i:2 * t1 + i:2] for i in range(4)], r)
        # (B^T d) B: columns 2t + (0..3) -> v[i, j] (th, tw, nb, C)
        v = self._region(bufs, 'v', 16 * T * C).reshape(4, 4, th, tw, nb, C)
        _bt_rows(xp, [r[:, :, j:j + 2 * tw:2] for j in range(4)], v.swapaxes(0, 1))
        return v.reshape(16, T, C)

    def _outputs(self, xp, bufs, v, U, y, t0, t1, nb, bias):
        """Output tile rows t0:t1 of y (nb, Mb, Ho, Wo) from the tiles v (16, T, C) and the
        kernels U (16, C, Mb)."""
        mb = U.shape[2]
        T = v.shape[1]
        tw = self.tiles[1]
        Ho, Wo = self.out_sp
        th = t1 - t0
        m = self._region(bufs, 'a', 16 * T * mb).reshape(16, T, mb)
        xp.matmul(v, U, out=m)
        if bias is not None:  # m[1, 1] reaches every output of a tile with weight 1
            xp.add(m[5], bias, out=m[5])
        m = m.reshape(4, 4, th, tw, nb, mb)
        # A^T m: s[o, j] (th, tw, nb, Mb); into v's region when v is not needed again
        s = self._region(bufs, 's' if self.where['s'][2] else 'v', 8 * T * mb).reshape(2, 4, th, tw, nb, mb)
        _at_rows(xp, m, s)
        # (A^T m) A -> the output tiles (2 th, 2 tw, nb, Mb), then rows 2 t0.. of y (nb, Mb, Ho, Wo)
        out = self._region(bufs, 'a', 4 * T * mb).reshape(th, 2, tw, 2, nb, mb)
        _at_rows(xp, s.swapaxes(0, 1), out.transpose(3, 1, 0, 2, 4, 5))
        h1 = min(Ho, 2 * t1)
        y[:, :, 2 * t0:h1] = out.reshape(2 * th, 2 * tw, nb, mb)[:h1 - 2 * t0, :Wo].transpose(2, 3, 0, 1)


def _pack(sizes, budget):
    """Regions placed in the budget's buffers (first fit, largest first), each
    {region: (name, offset, size)}, or None when they do not fit."""
    free = {name: 0 for name in budget}
    where = {}
    for key, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        if size == 0:
            where[key] = (None, 0, 0)
            continue
        for name, cap in budget.items():
            if free[name] + size <= cap:
                where[key] = (name, free[name], size)
                free[name] = align_floats(free[name] + size)  # regions start on cache lines
                break
        else:
            return None
    return where


def _bt_rows(xp, d, out):
    """out[0..3] = B^T @ (d[0..3]): d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    xp.subtract(d[0], d[2], out=out[0])
    xp.add(d[1], d[2], out=out[1])
    xp.subtract(d[2], d[1], out=out[2])
    xp.subtract(d[1], d[3], out=out[3])


def _at_rows(xp, m, out):
    """out[0..1] = A^T @ (m[0..3]): m0 + m1 + m2, m1 - m2 - m3."""
    xp.add(m[0], m[1], out=out[0])
    xp.add(out[0], m[2], out=out[0])
    xp.subtract(m[1], m[2], out=out[1])
    xp.subtract(out[1], m[3], out=out[1])
