"""Winograd F(2x2,3x3) for 3x3, stride-1, ungrouped 2-D convolutions (the forward pass).

:class:`caffeine.layers.conv_engine.ConvEngine` chooses it (where it pays, by its
thresholds) and calls :meth:`WinogradF2x3.forward`; the backward to the data runs it too,
through the engine's flipped-kernel convolution.  Buffers come from the shared workspace.
"""
from __future__ import annotations

import numpy as np

from ..workspace import workspace
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
    """The transforms of one convolution's geometry: in_ch -> out_ch channels, 2-D ``pad``,
    output ``out_sp`` (Ho, Wo), ``num`` images; ``chunk_floats`` bounds each chunk's buffers."""

    def __init__(self, in_ch, out_ch, pad, out_sp, num, chunk_floats):
        self.in_ch, self.out_ch, self.pad, self.out_sp, self.N = in_ch, out_ch, tuple(pad), tuple(out_sp), num
        self.tiles = tuple(-(-o // 2) for o in self.out_sp)          # 2x2 output tiles per axis
        self.tile_sp = tuple(2 * t + 2 for t in self.tiles)          # the padded input they read
        # chunks of images, or of tile rows of one image when an image's tiles exceed the target
        per_row = 16 * (in_ch + out_ch) * self.tiles[1]
        self.wchunk = max(1, min(num, chunk_floats // (per_row * self.tiles[0])))
        self.wrows = max(1, min(self.tiles[0], chunk_floats // per_row))
        self._kron = None
        self._kron_xp = None     # the array module _kron lives in

    # Every array of the transforms keeps the channels innermost and the images next,
    # (rows, columns, images, channels), so that each add runs over long contiguous
    # runs (images x channels values) even on 7x7 maps; the input and the output
    # are transposed to and from that layout once per chunk.
    def _weights(self, xp, W):
        """U = G g G^T for every (out, in) channel pair, as a (16, in_ch, out_ch) view of a
        (16, out_ch, in_ch) array: one GEMM of the kernels with kron(G, G)."""
        M, C = self.out_ch, self.in_ch
        if self._kron_xp is not xp:
            self._kron, self._kron_xp = xp.asarray(_KRON_GG), xp
        u = workspace('wino_u', 16 * M * C).reshape(16, M * C)
        xp.matmul(self._kron, W.reshape(M * C, 9).T, out=u)
        return u.reshape(16, M, C).transpose(0, 2, 1)

    def forward(self, xp, W, x, y, bias=None):
        """y = W * x (+ bias) for x (N, in_ch, H, W), chunk by chunk of images (or of tile rows)."""
        C = self.in_ch
        th, tw = self.tiles
        Ht, Wt = self.tile_sp
        U = self._weights(xp, W)
        for n0 in range(0, self.N, self.wchunk):
            n1 = min(self.N, n0 + self.wchunk)
            nb = n1 - n0
            xpad = workspace('conv_pad', Ht * Wt * nb * C).reshape(Ht, Wt, nb, C)
            pad_into(xp, x[n0:n1], xpad.transpose(2, 3, 0, 1), self.pad)
            for t0 in range(0, th, self.wrows):
                self._rows(xp, U, xpad, y[n0:n1], t0, min(th, t0 + self.wrows), bias)
        return y

    def _rows(self, xp, U, xpad, y, t0, t1, bias):
        """Output tile rows t0:t1 of y (nb, M, Ho, Wo) from the padded input (Ht, Wt, nb, C)."""
        M, C = self.out_ch, self.in_ch
        tw = self.tiles[1]
        Wt = self.tile_sp[1]
        Ho, Wo = self.out_sp
        nb = xpad.shape[2]
        th = t1 - t0
        T = th * tw * nb
        # B^T d: rows 2t + (0..3) of the padded input -> r[i] (th, Wt, nb, C)
        r = workspace('wino_r', 4 * th * Wt * nb * C).reshape(4, th, Wt, nb, C)
        _bt_rows(xp, [xpad[2 * t0 + i:2 * t1 + i:2] for i in range(4)], r)
        # (B^T d) B: columns 2t + (0..3) -> v[i, j] (th, tw, nb, C)
        v = workspace('wino_v', 16 * T * C).reshape(4, 4, th, tw, nb, C)
        _bt_rows(xp, [r[:, :, j:j + 2 * tw:2] for j in range(4)], v.swapaxes(0, 1))
        m = workspace('wino_m', 16 * T * M).reshape(16, T, M)
        xp.matmul(v.reshape(16, T, C), U, out=m)
        if bias is not None:  # m[1, 1] reaches every output of a tile with weight 1
            xp.add(m[5], bias, out=m[5])
        m = m.reshape(4, 4, th, tw, nb, M)
        # A^T m: s[o, j] (th, tw, nb, M)
        s = workspace('wino_s', 8 * T * M).reshape(2, 4, th, tw, nb, M)
        _at_rows(xp, m, s)
        # (A^T m) A -> the output tiles (2 th, 2 tw, nb, M), then rows 2 t0.. of y (nb, M, Ho, Wo)
        out = workspace('wino_y', 4 * T * M).reshape(th, 2, tw, 2, nb, M)
        _at_rows(xp, s.swapaxes(0, 1), out.transpose(3, 1, 0, 2, 4, 5))
        h1 = min(Ho, 2 * t1)
        y[:, :, 2 * t0:h1] = out.reshape(2 * th, 2 * tw, nb, M)[:h1 - 2 * t0, :Wo].transpose(2, 3, 0, 1)


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
