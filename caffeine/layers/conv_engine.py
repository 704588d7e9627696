"""The convolution engine: im2col / col2im for N spatial axes and the GEMMs around them.

The column layout is Caffe's, for a whole batch chunk at once: rows ``(c, k0, k1, ...)``
(channel, then kernel offsets, the order of Caffe's weight ``(num_output, C/group, *kernel)``),
columns ``(n, o0, o1, ...)`` (image, then output position).  A group's rows are
contiguous, so a convolution is one GEMM per group over the chunk of images:
``(M/g, C/g * K) x (C/g * K, nb * OUT)``.

- :func:`im2col` gathers with ONE strided-view copy (``as_strided`` of the padded
  input with the window offsets and the output positions as axes).
- :func:`col2im` adds back with a loop over kernel offsets only.
- :class:`ConvEngine` does the three GEMMs of Caffe's BaseConvolutionLayer
  (forward, backward to data, backward to weights) for Convolution and
  Deconvolution, with 1x1 / stride 1 / no pad convolutions skipping im2col,
  and chooses the algorithm: Winograd F(2x2,3x3) (16 GEMMs over transformed
  tiles, :mod:`.winograd`) for the forward pass of large 3x3 stride-1 convolutions,
  one GEMM per kernel row (:mod:`.conv_rows`) for the forward pass and weight
  gradient of thin batch-innermost ones, im2col + GEMM otherwise.

Buffers (padded input, columns, transposed outputs) come from the shared
workspace (:mod:`caffeine.workspace`); batches whose column buffer would exceed
its bound are processed in chunks of images.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..workspace import limit_floats, workspace
from ._util import as_strided, pad_into, shape_count
from .conv_rows import RowsGemm
from .winograd import WinogradF2x3

_F32 = np.float32


def window_view(xp, xpad, kernel, stride, dilation, out):
    """View of xpad (nb, C, *Sp) as (nb, C, *kernel, *out): element [n, c, k.., o..] is
    xpad[n, c, o_i * stride_i + k_i * dilation_i ...]."""
    st = xpad.strides
    sp = st[2:]
    shape = xpad.shape[:2] + tuple(kernel) + tuple(out)
    strides = st[:2] + tuple(d * s for d, s in zip(dilation, sp)) + tuple(t * s for t, s in zip(stride, sp))
    return as_strided(xp, xpad, shape, strides)


def offset_slices(koffs, stride, dilation, out):
    """Index of the (nb, C, *out) view of the padded input seen by kernel offset ``koffs``."""
    return (slice(None), slice(None)) + tuple(
        slice(k * d, k * d + s * (o - 1) + 1, s) for k, d, s, o in zip(koffs, dilation, stride, out))


def im2col(xp, x, col, kernel, pad, stride, dilation, out, pad_buf=None):
    """col (C, *kernel, nb, *out) <- windows of x (nb, C, *S); one strided copy.

    ``col`` may be any view with that axis order (e.g. a transposed view of a top).
    ``pad_buf``: a flat buffer for the zero-padded input when any pad is non-zero.
    """
    nd = len(kernel)
    if any(pad):
        sp = tuple(s + 2 * p for s, p in zip(x.shape[2:], pad))
        xpad = pad_buf[:shape_count(x.shape[:2] + sp)].reshape(x.shape[:2] + sp)
        pad_into(xp, x, xpad, pad)
    else:
        xpad = x
    v = window_view(xp, xpad, kernel, stride, dilation, out)
    # (nb, C, *K, *O) -> (C, *K, nb, *O)
    perm = (1,) + tuple(range(2, 2 + nd)) + (0,) + tuple(range(2 + nd, 2 + 2 * nd))
    col[...] = v.transpose(perm)
    return col


def kernel_offsets(kernel):
    return list(np.ndindex(*kernel)) if kernel else [()]


def col2im(xp, col, dx, kernel, pad, stride, dilation, out, pad_buf=None):
    """dx (nb, C, *S) = sum of the columns col (C, *kernel, nb, *out) back at their pixels
    (overwrites dx); a loop over kernel offsets only."""
    nd = len(kernel)
    if any(pad):
        sp = tuple(s + 2 * p for s, p in zip(dx.shape[2:], pad))
        dpad = pad_buf[:shape_count(dx.shape[:2] + sp)].reshape(dx.shape[:2] + sp)
    else:
        dpad = dx
    dpad.fill(0)
    tperm = (1, 0) + tuple(range(2, 2 + nd))
    for ko in kernel_offsets(kernel):
        dst = dpad[offset_slices(ko, stride, dilation, out)]
        src = col[(slice(None),) + tuple(ko)].transpose(tperm)
        xp.add(dst, src, out=dst)
    if dpad is not dx:
        dx[...] = dpad[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, dx.shape[2:]))]
    return dx


# Wide columns cost (waste - 1) * M extra multiply-adds per column element in the GEMM
# (waste = padded width / output width, M = outputs per group) and save a strided gather:
# worth it while that product is at most WIDE_MAX_EXTRA (and waste at most WIDE_MAX_WASTE).
WIDE_MAX_WASTE = 1.5
WIDE_MAX_EXTRA = 8.0
BATCHED_1X1_MIN = 128   # 1x1 convolutions: per-image GEMMs (no copies) from this many pixels on
CHWN = True             # batch-innermost columns where the layout would otherwise be narrow,
CHWN_MAX_ROW = 16       # ... for output rows of at most this many values (stride 1)
CHWN_MIN_IMAGES = 8     # ... and chunks of at least this many images
ROWS = True             # 2-D batch-innermost convolutions: one GEMM per kernel row (forward and weight gradient)
ROWS_MIN_K = 64         # ... when a row's GEMM has an inner size (in_ch * kernel_w) of at least this
ROWS_MAX_K = 512        # ... and at most this (thin convolutions: with more channels the full columns win)
FLIP_BACKWARD = True    # stride-1 gradients to the input as a convolution with the flipped kernel
FLIP_MIN_CHANNELS = 32  # ... when the input has this many channels per group, and
FLIP_MAX_RATIO = 1.05   # ... its column matrix is at most this much larger than col2im's
CHUNK_TARGET_MB = 8.0    # (2 speeds up thin convolutions by 15-25% with one BLAS thread, but loses with two)
CHUNK_MIN_COLS = 2048
WINOGRAD = True             # 3x3 stride-1 convolutions by Winograd F(2x2,3x3) (forward, and the flipped
WINOGRAD_MIN_CHANNELS = 96  # ... backward to the data) when both sides have this many channels,
WINOGRAD_MAX_WASTE = 1.2    # ... the 2x2 tiles cover at most this much more than the output (7x7: 1.31),
WINOGRAD_CHUNK_MB = 8       # ... over chunks whose transformed tiles and products take at most this much,
WINOGRAD_MIN_TILES = 96     # ... of at least this many tiles (or all), within the workspace that im2col
WINOGRAD_MIN_BLOCK = 32     # ... would take (kernels transformed for blocks of this many outputs or more),
WINOGRAD_ON_GPU = False     # ... on the CPU only: on CuPy it is tested but has never been timed


class ConvEngine:
    """Caffe's BaseConvolutionLayer GEMMs over whole batch chunks.

    The "input side" is the im2col'd one (Convolution: bottom; Deconvolution: top), of
    ``in_ch`` channels and spatial shape ``in_sp``; the "output side" (Convolution: top;
    Deconvolution: bottom) has ``out_ch`` channels and spatial shape ``out_sp``.  The
    weight is (out_ch, in_ch / group, *kernel).  Arrays are (N, ch, *spatial).

    Column layouts (``self.layout``):

    - ``'narrow'``: Caffe's, one column per output position;
    - ``'wide'`` (stride 1 on the last axis): one column per output position of a row as
      wide as the padded input, so that every column row is a contiguous run of the
      padded input (``as_strided`` of long runs; col2im adds long runs); the extra
      columns are computed and dropped (their top gradients are zero);
    - ``'chwn'`` (in place of narrow for chunks of several images): columns
      ``(c, k.., o.., n)``, the image index innermost.  The input is first copied
      (padded) to ``(C, *padded, nb)``; then every column row is a run of
      ``OUT_last * nb`` (stride 1) or ``nb`` contiguous values, for im2col and
      col2im alike, where narrow has runs of ``OUT_last`` values at best;
    - ``'1x1'`` (kernel 1, stride 1, no pad): the input is its own column matrix; with
      at least BATCHED_1X1_MIN pixels per image, per-image GEMMs in one batched matmul,
      with no copy at all; below, one GEMM over the transposed batch.

    ``self.rows`` (``'chwn'``, 2-D, stride 1 on the rows, one group, on the CPU, a row's GEMM inner
    size ``in_ch * kernel_w`` from ROWS_MIN_K to ROWS_MAX_K): forward() and the weight gradient by one
    GEMM per kernel row (``self.by_rows``, :mod:`.conv_rows`); the gradient to the data keeps its path
    (col2im of the full columns, or the flipped convolution, itself by rows where it qualifies).

    ``self.winograd``: forward() by Winograd F(2x2,3x3) (3x3, stride 1, dilation 1, one
    group, at least WINOGRAD_MIN_CHANNELS on both sides, tiles wasting at most
    WINOGRAD_MAX_WASTE, the CPU unless WINOGRAD_ON_GPU) where its transforms fit in the
    workspace that im2col would take (:meth:`im2col_workspace`; ``self.wino`` holds the
    chunking); the weight gradient keeps the columns of ``self.layout``.

    With stride 1 (and pad <= kernel extent - 1), the gradient to the input side,
    col2im(W^T dy), is computed as what it equals: a convolution of dy with the
    flipped, channel-transposed kernel and pad ``extent - 1 - pad`` (im2col + one GEMM,
    cheaper than GEMM + col2im's scattered adds).
    """

    def __init__(self, in_ch, out_ch, group, kernel, pad, stride, dilation, in_sp, out_sp, num, allow_flip=True):
        self.in_ch, self.out_ch, self.G = int(in_ch), int(out_ch), int(group)
        self.kernel, self.pad, self.stride, self.dilation = (tuple(int(v) for v in t) for t in
                                                           (kernel, pad, stride, dilation))
        self.in_sp, self.out_sp = tuple(in_sp), tuple(out_sp)
        self.N = int(num)
        self.nd = len(self.kernel)
        self.K = shape_count(self.kernel)
        self.OUT = shape_count(self.out_sp)
        self.CK = self.in_ch * self.K
        self.Mg = self.out_ch // self.G
        self.CKg = self.CK // self.G
        self.pad_sp = tuple(s + 2 * p for s, p in zip(self.in_sp, self.pad))
        self.P = shape_count(self.pad_sp)
        is_1x1 = all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) \
            and all(p == 0 for p in self.pad)
        self.batched_1x1 = is_1x1 and self.OUT >= BATCHED_1X1_MIN
        # NumPy's copies and adds run an inner loop over the last axis: OUT_last
        # values for narrow columns, OUT_last * nb for batch-innermost ones at
        # stride 1 (but only nb at larger strides).  Batch-innermost columns are
        # worth their two transposing copies (input in, output out) when the
        # rows are short and the chunk long; then they beat wide columns too.
        chwn = (CHWN and not is_1x1 and self.nd >= 1 and self.stride[-1] == 1
                and self.out_sp[-1] <= CHWN_MAX_ROW and self._chunk_for(self.OUT) >= CHWN_MIN_IMAGES)
        if is_1x1:
            self.layout = '1x1'
        elif chwn:
            self.layout = 'chwn'
        elif self.nd >= 1 and self.stride[-1] == 1 and self.out_sp[-1] > 0 \
                and self.pad_sp[-1] <= WIDE_MAX_WASTE * self.out_sp[-1] \
                and (self.pad_sp[-1] / self.out_sp[-1] - 1) * self.Mg <= WIDE_MAX_EXTRA:
            self.layout = 'wide'
        else:
            self.layout = 'narrow'
        if self.layout == 'wide':
            self.col_sp = self.out_sp[:-1] + (self.pad_sp[-1],)
            ext_last = self.dilation[-1] * (self.kernel[-1] - 1) + 1
            self.slack = ext_last  # reads of the dropped columns may run past the last plane
        else:
            self.col_sp = self.out_sp
            self.slack = 0
        self.OUTc = shape_count(self.col_sp)
        self.chunk = self._chunk_for(self.OUTc)
        # strides (in elements) of the padded input's spatial axes
        self._pstr = tuple(shape_count(self.pad_sp[i + 1:]) for i in range(self.nd))
        self.ext = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))
        # one GEMM per kernel row over columns built along the last kernel axis only
        # (5x fewer column values for a 5x5 kernel; see conv_rows.py)
        self.rows = (ROWS and not backend.is_gpu() and self.layout == 'chwn' and self.nd == 2
                     and self.G == 1 and self.stride[0] == 1
                     and ROWS_MIN_K <= self.in_ch * self.kernel[-1] <= ROWS_MAX_K)
        self.by_rows = RowsGemm(self.in_ch, self.out_ch, self.kernel, self.dilation, self.pad_sp,
                                self.out_sp, self.chunk) if self.rows else None
        self._flip = None
        self.flip_ok = (allow_flip and FLIP_BACKWARD and self.layout != '1x1' and all(s == 1 for s in self.stride)
                        and all(p <= e - 1 for p, e in zip(self.pad, self.ext))
                        and self.in_ch // self.G >= FLIP_MIN_CHANNELS)
        if self.flip_ok:
            f = self._flip_engine()
            self.flip_ok = f.out_ch * f.OUTc <= FLIP_MAX_RATIO * self.in_ch * self.OUTc
            if not self.flip_ok:
                self._flip = None
        # the algorithm of forward(): Winograd F(2x2,3x3) where it applies and fits in the
        # workspace that im2col would take, else im2col + GEMM (the weight gradient always
        # uses the columns of self.layout)
        tiles = tuple(-(-o // 2) for o in self.out_sp)               # 2x2 output tiles per axis
        self.wino = None         # the Winograd transforms and their chunking, where chosen
        if (WINOGRAD and (WINOGRAD_ON_GPU or not backend.is_gpu())
                and self.nd == 2 and self.kernel == (3, 3) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.G == 1
                and min(self.in_ch, self.out_ch) >= WINOGRAD_MIN_CHANNELS
                and 4 * shape_count(tiles) <= WINOGRAD_MAX_WASTE * self.OUT):
            target = int(min(WINOGRAD_CHUNK_MB * (1 << 20) // 4, limit_floats()))
            self.wino = WinogradF2x3.plan(self.in_ch, self.out_ch, self.pad, self.out_sp, self.N,
                                          self.im2col_workspace(), target, WINOGRAD_MIN_TILES, WINOGRAD_MIN_BLOCK)
        self.winograd = self.wino is not None

    def im2col_workspace(self):
        """The workspace buffers im2col + GEMM's forward() takes, {name: floats}: the columns,
        the transposed outputs (unless the GEMM writes the top itself) and the padded input."""
        nb = self.chunk
        ws = {'conv_col': self.CK * nb * self.OUTc}
        if nb > 1 or self.layout in ('wide', 'chwn'):
            ws['conv_out'] = self.out_ch * nb * self.OUTc
        if any(self.pad) or self.layout in ('wide', 'chwn'):
            ws['conv_pad'] = nb * self.in_ch * self.P + self.slack
        return ws

    def describe(self):
        """The algorithm, as ``caffeine time`` prints it: forward, and the backward to the data
        where it differs (``winograd``, ``im2col-<layout>``, ``1x1``)."""
        fwd = 'winograd' if self.winograd else ('1x1' if self.layout == '1x1' else 'im2col-' + self.layout)
        if self.rows and not self.winograd:
            fwd += '-rows'
        if self.flip_ok:
            return '%s; backward data: flipped %s' % (fwd, self._flip_engine().describe())
        return fwd

    def _chunk_for(self, cols_per_image):
        """Images per chunk: a column matrix of about CHUNK_TARGET_MB (it stays in cache
        for the GEMM), but at least CHUNK_MIN_COLS columns (GEMM efficiency), and never
        more than the workspace limit."""
        per_image = max(self.CK * cols_per_image, 1)
        nb = max(int(CHUNK_TARGET_MB * (1 << 20) // 4 // per_image), -(-CHUNK_MIN_COLS // max(cols_per_image, 1)))
        nb = min(nb, limit_floats() // per_image)
        return max(1, min(self.N, nb))

    def _flip_engine(self):
        """The engine of the convolution that maps dy to dx (see the class doc)."""
        if self._flip is None:
            self._flip = ConvEngine(self.out_ch, self.in_ch, self.G, self.kernel,
                                    tuple(e - 1 - p for e, p in zip(self.ext, self.pad)), self.stride,
                                    self.dilation, self.out_sp, self.in_sp, self.N, allow_flip=False)
        return self._flip

    def _flipped_weights(self, xp, W):
        """W (out_ch, in_ch/G, *K) as the weights (in_ch, out_ch/G, *K) of the flipped
        convolution: W'[g, c, m, k] = W[g, m, c, K - 1 - k]."""
        G, Mg, Cg = self.G, self.Mg, self.in_ch // self.G
        buf = workspace('conv_wflip', W.size).reshape((G, Cg, Mg) + self.kernel)
        src = W.reshape((G, Mg, Cg) + self.kernel).swapaxes(1, 2)
        buf[...] = src[(Ellipsis,) + (slice(None, None, -1),) * self.nd]
        return buf.reshape((self.in_ch, Mg) + self.kernel)

    def chunks(self):
        """(n0, n1) of the fewest chunks of at most ``self.chunk`` images, their sizes within one
        of each other (64 images by 31: 21, 21, 22, not 31, 31, 2)."""
        k = -(-self.N // self.chunk)
        for i in range(k):
            yield i * self.N // k, (i + 1) * self.N // k

    # -- columns ---------------------------------------------------------------
    def _pad_buffer(self, nb):
        """Flat workspace for the padded chunk (nb, in_ch, *pad_sp) plus slack."""
        n = nb * self.in_ch * self.P
        buf = workspace('conv_pad', n + self.slack)
        return buf, buf[:n].reshape((nb, self.in_ch) + self.pad_sp)

    def _chwn_buffer(self, nb):
        """Flat workspace for the padded chunk in (in_ch, *pad_sp, nb) order, and a view of it
        indexed (nb, in_ch, *pad_sp), for pad_into."""
        n = nb * self.in_ch * self.P
        flat = workspace('conv_pad', n)
        t = flat.reshape((self.in_ch,) + self.pad_sp + (nb,))
        return flat, t.transpose((self.nd + 1, 0) + tuple(range(1, self.nd + 1)))

    def _chwn_windows(self, xp, flat, nb, koffs=None):
        """View of the (in_ch, *pad_sp, nb) buffer as (in_ch, *kernel, *out_sp, nb), or, for one
        kernel offset ``koffs``, as (in_ch, *out_sp, nb)."""
        it = flat.itemsize
        sp = tuple(ps * nb * it for ps in self._pstr)      # padded spatial strides, in bytes
        ostr = tuple(s * t for s, t in zip(self.stride, sp))
        if koffs is None:
            shape = (self.in_ch,) + self.kernel + self.out_sp + (nb,)
            strides = (self.P * nb * it,) + tuple(d * t for d, t in zip(self.dilation, sp)) + ostr + (it,)
            return as_strided(xp, flat, shape, strides)
        start = sum(k * d * ps for k, d, ps in zip(koffs, self.dilation, self._pstr)) * nb
        shape = (self.in_ch,) + self.out_sp + (nb,)
        strides = (self.P * nb * it,) + ostr + (it,)
        return as_strided(xp, flat[start:], shape, strides)

    def _chwn_input(self, xp, x, n0, n1):
        """x[n0:n1] padded into the (in_ch, *pad_sp, nb) workspace; returns the flat buffer."""
        flat, xt = self._chwn_buffer(n1 - n0)
        pad_into(xp, x[n0:n1], xt, self.pad)
        return flat

    def _wide_view(self, xp, flat, nb, start=0):
        """(nb, C, *col_sp) view of a flat padded buffer from element ``start``:
        [n, c, o.., w] is flat[start + n*C*P + c*P + sum o_i*s_i*pstr_i + w]."""
        it = flat.itemsize
        shape = (nb, self.in_ch) + self.col_sp
        strides = (self.in_ch * self.P * it, self.P * it) + tuple(
            s * ps * it for s, ps in zip(self.stride[:-1], self._pstr[:-1])) + (it,)
        return as_strided(xp, flat[start:], shape, strides)

    def columns(self, xp, x, n0, n1):
        """The (CK, nb * OUTc) column matrix of x[n0:n1] (x: (N, in_ch, *in_sp))."""
        nb = n1 - n0
        xs = x[n0:n1]
        if self.layout == '1x1' and nb == 1:
            return xs.reshape(self.CK, self.OUT)
        col = workspace('conv_col', self.CK * nb * self.OUTc)
        if self.layout == '1x1':
            col.reshape(self.CK, nb, self.OUT)[...] = xs.reshape(nb, self.CK, self.OUT).transpose(1, 0, 2)
        elif self.layout == 'chwn':
            flat = self._chwn_input(xp, x, n0, n1)
            col.reshape((self.in_ch,) + self.kernel + self.out_sp + (nb,))[...] = self._chwn_windows(xp, flat, nb)
        elif self.layout == 'wide':
            flat, xpad = self._pad_buffer(nb)
            pad_into(xp, xs, xpad, self.pad)
            if self.slack:
                flat[xpad.size:].fill(0)
            it = flat.itemsize
            v = self._wide_view(xp, flat, nb)
            # (nb, C, *col_sp) -> (nb, C, *K, *col_sp) with the kernel offsets as axes
            shape = v.shape[:2] + self.kernel + v.shape[2:]
            strides = v.strides[:2] + tuple(d * ps * it for d, ps in zip(self.dilation, self._pstr)) + v.strides[2:]
            v = as_strided(xp, flat, shape, strides)
            nd = self.nd
            perm = (1,) + tuple(range(2, 2 + nd)) + (0,) + tuple(range(2 + nd, 2 + 2 * nd))
            col.reshape((self.in_ch,) + self.kernel + (nb,) + self.col_sp)[...] = v.transpose(perm)
        else:
            pad_buf = self._pad_buffer(nb)[0] if any(self.pad) else None
            im2col(xp, xs, col.reshape((self.in_ch,) + self.kernel + (nb,) + self.out_sp),
                   self.kernel, self.pad, self.stride, self.dilation, self.out_sp, pad_buf)
        return col.reshape(self.CK, nb * self.OUTc)

    def col2im(self, xp, col, dx, n0, n1):
        """dx[n0:n1] = col2im of the (CK, nb * OUTc) matrix col (overwrites)."""
        nb = n1 - n0
        dxs = dx[n0:n1]
        if self.layout == '1x1':
            dxs.reshape(nb, self.CK, self.OUT)[...] = col.reshape(self.CK, nb, self.OUT).transpose(1, 0, 2)
            return
        if self.layout == 'chwn':
            col = col.reshape((self.in_ch, self.K) + self.out_sp + (nb,))
            flat, dt = self._chwn_buffer(nb)
            flat.fill(0)
            for j, ko in enumerate(kernel_offsets(self.kernel)):
                dst = self._chwn_windows(xp, flat, nb, ko)
                xp.add(dst, col[:, j], out=dst)
            dxs[...] = dt[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(self.pad, self.in_sp))]
            return
        col = col.reshape((self.in_ch,) + self.kernel + (nb,) + self.col_sp)
        if self.layout == 'narrow':
            pad_buf = self._pad_buffer(nb)[0] if any(self.pad) else None
            col2im(xp, col, dxs, self.kernel, self.pad, self.stride, self.dilation, self.out_sp, pad_buf)
            return
        flat, dpad = self._pad_buffer(nb)
        flat.fill(0)
        tperm = (1, 0) + tuple(range(2, 2 + self.nd))
        for ko in kernel_offsets(self.kernel):
            start = sum(k * d * ps for k, d, ps in zip(ko, self.dilation, self._pstr))
            dst = self._wide_view(xp, flat, nb, start)
            xp.add(dst, col[(slice(None),) + tuple(ko)].transpose(tperm), out=dst)
        dxs[...] = dpad[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(self.pad, self.in_sp))]

    # -- the output side as a (out_ch, nb * OUTc) matrix -------------------------
    def _out_matrix(self, y, n0, n1):
        """Where a GEMM writes the output side of images n0:n1: a view of y when the
        layout allows (one image, narrow), else the 'conv_out' workspace."""
        nb = n1 - n0
        if nb == 1 and self.layout not in ('wide', 'chwn'):
            return y[n0:n1].reshape(self.out_ch, self.OUT)
        return workspace('conv_out', self.out_ch * nb * self.OUTc).reshape(self.out_ch, nb * self.OUTc)

    def _cropped(self, o, nb):
        """The (out_ch, nb, *out_sp) values of an output matrix (wide: the kept columns)."""
        if self.layout == 'chwn':
            o = o.reshape((self.out_ch,) + self.out_sp + (nb,))
            return o.transpose((0, self.nd + 1) + tuple(range(1, self.nd + 1)))
        o = o.reshape((self.out_ch, nb) + self.col_sp)
        if self.layout == 'wide':
            o = o[..., :self.out_sp[-1]]
        return o

    def _store(self, xp, o, y, n0, n1, bias):
        """y[n0:n1] (+ bias) = the output matrix o, from (out_ch, nb, ...) to (nb, out_ch, ...)."""
        nb = n1 - n0
        ys = y[n0:n1]
        bshape = (1, self.out_ch) + (1,) * self.nd
        if o.base is not None and _shares(o, ys):
            if bias is not None:
                xp.add(ys, bias.reshape(bshape), out=ys)
            return
        src = self._cropped(o, nb).swapaxes(0, 1)
        if bias is not None:
            xp.add(src, bias.reshape(bshape), out=ys)
        else:
            ys[...] = src

    def _load(self, xp, dy, n0, n1):
        """The output-side values dy[n0:n1] as an (out_ch, nb * OUTc) matrix (wide: the
        dropped columns zero)."""
        nb = n1 - n0
        if nb == 1 and self.layout not in ('wide', 'chwn'):
            return dy[n0:n1].reshape(self.out_ch, self.OUT)
        buf = workspace('conv_out', self.out_ch * nb * self.OUTc)
        if self.layout == 'chwn':
            b = buf.reshape((self.out_ch,) + self.out_sp + (nb,))
            b[...] = dy[n0:n1].transpose(tuple(range(1, self.nd + 2)) + (0,))
            return buf.reshape(self.out_ch, nb * self.OUTc)
        b = buf.reshape((self.out_ch, nb) + self.col_sp)
        if self.layout == 'wide':
            b[..., self.out_sp[-1]:] = 0
            b = b[..., :self.out_sp[-1]]
        b[...] = dy[n0:n1].swapaxes(0, 1)
        return buf.reshape(self.out_ch, nb * self.OUTc)

    def _gemm(self, xp, W3, col, o, nb, trans_w=False):
        """o = W @ col per group (W3: (G, Mg, CKg); trans_w: o = W^T @ col)."""
        G = self.G
        n = nb * self.OUTc
        if trans_w:
            A = W3.transpose(0, 2, 1)
            rows_in, rows_out = self.Mg, self.CKg
        else:
            A = W3
            rows_in, rows_out = self.CKg, self.Mg
        if G == 1:
            xp.matmul(A[0], col, out=o)
        else:
            xp.matmul(A, col.reshape(G, rows_in, n), out=o.reshape(G, rows_out, n))

    def _wgrad(self, xp, d, col, dW, dW_tmp, nb):
        """dW += d @ col^T per group, computed as (col @ d^T)^T: BLAS runs this long,
        thin product (inner size nb * OUTc) faster with the columns as the left operand."""
        G, Mg, CKg = self.G, self.Mg, self.CKg
        n = nb * self.OUTc
        tmpT = dW_tmp.reshape(-1)[:G * CKg * Mg].reshape(G, CKg, Mg)
        if G == 1:
            xp.matmul(col, d.T, out=tmpT[0])
        else:
            xp.matmul(col.reshape(G, CKg, n), d.reshape(G, Mg, n).transpose(0, 2, 1), out=tmpT)
        dW3 = dW.reshape(G, Mg, CKg)
        xp.add(dW3, tmpT.transpose(0, 2, 1), out=dW3)

    # -- the passes ------------------------------------------------------------
    def forward(self, xp, W, x, y, bias=None):
        """y = W * x (+ bias): x (N, in_ch, *in_sp) -> y (N, out_ch, *out_sp)."""
        if self.winograd:
            return self.wino.forward(xp, W, x, y, bias)
        G, Mg, CKg = self.G, self.Mg, self.CKg
        W3 = W.reshape(G, Mg, CKg)
        if self.batched_1x1:
            xp.matmul(W3, x.reshape(self.N, G, CKg, self.OUT), out=y.reshape(self.N, G, Mg, self.OUT))
            if bias is not None:
                y3 = y.reshape(self.N, self.out_ch, self.OUT)
                xp.add(y3, bias.reshape(1, self.out_ch, 1), out=y3)
            return y
        Wr = self.by_rows.weights(xp, W) if self.rows else None
        for n0, n1 in self.chunks():
            nb = n1 - n0
            o = self._out_matrix(y, n0, n1)
            if self.rows:
                V = self.by_rows.matrices(xp, self._chwn_input(xp, x, n0, n1), nb)
                self.by_rows.forward(xp, Wr, V, o)
            else:
                self._gemm(xp, W3, self.columns(xp, x, n0, n1), o, nb)
            self._store(xp, o, y, n0, n1, bias)
        return y

    def backward_data(self, xp, W, dy, dx):
        """dx = col2im(W^T dy): dy (N, out_ch, *out_sp) -> dx (N, in_ch, *in_sp), overwritten."""
        G, Mg, CKg = self.G, self.Mg, self.CKg
        W3 = W.reshape(G, Mg, CKg)
        if self.batched_1x1:
            xp.matmul(W3.transpose(0, 2, 1), dy.reshape(self.N, G, Mg, self.OUT),
                      out=dx.reshape(self.N, G, CKg, self.OUT))
            return dx
        if self.flip_ok:
            return self._flip_engine().forward(xp, self._flipped_weights(xp, W), dy, dx, None)
        for n0, n1 in self.chunks():
            d = self._load(xp, dy, n0, n1)
            self._data_from(xp, W3, d, dx, n0, n1)
        return dx

    def _data_from(self, xp, W3, d, dx, n0, n1):
        """dx[n0:n1] = col2im(W^T d) for the output matrix d of images n0:n1."""
        nb = n1 - n0
        if self.layout == '1x1' and nb == 1:
            self._gemm(xp, W3, d, dx[n0:n1].reshape(self.CK, self.OUT), nb, trans_w=True)
            return
        col = workspace('conv_col', self.CK * nb * self.OUTc).reshape(self.CK, nb * self.OUTc)
        self._gemm(xp, W3, d, col, nb, trans_w=True)
        self.col2im(xp, col, dx, n0, n1)

    def backward(self, xp, W, x, dy, dW=None, dW_tmp=None, dx=None):
        """Convolution's backward: dW += dy * x^T (if dW is given), dx = W^T * dy (if dx
        is given); x: input side, dy: output side.  Without the flipped-kernel path, each
        chunk's transposed dy serves both."""
        fused = dx is not None and dW is not None and not self.batched_1x1 and not self.flip_ok
        if dW is not None:
            W3 = W.reshape(self.G, self.Mg, self.CKg)
            for n0, n1 in self.chunks():
                nb = n1 - n0
                d = self._load(xp, dy, n0, n1)
                if self.rows:
                    V = self.by_rows.matrices(xp, self._chwn_input(xp, x, n0, n1), nb)
                    self.by_rows.wgrad(xp, d, V, dW, dW_tmp)
                else:
                    self._wgrad(xp, d, self.columns(xp, x, n0, n1), dW, dW_tmp, nb)
                if fused:
                    self._data_from(xp, W3, d, dx, n0, n1)
        if dx is not None and not fused:
            self.backward_data(xp, W, dy, dx)

    def deconv_backward(self, xp, W, dtop, bottom, dW=None, dW_tmp=None, dbottom=None):
        """Deconvolution's backward: the columns of the top gradient (input side) give
        both dW += bottom * col^T and dbottom = W * col."""
        G, Mg, CKg = self.G, self.Mg, self.CKg
        W3 = W.reshape(G, Mg, CKg)
        if dbottom is not None and (self.batched_1x1 or dW is None):
            if dW is not None:
                self.deconv_backward(xp, W, dtop, bottom, dW, dW_tmp, None)
            return self.forward(xp, W, dtop, dbottom, None)
        for n0, n1 in self.chunks():
            nb = n1 - n0
            col = self.columns(xp, dtop, n0, n1)
            d = self._load(xp, bottom, n0, n1)
            self._wgrad(xp, d, col, dW, dW_tmp, nb)
            if dbottom is not None:
                o = self._out_matrix(dbottom, n0, n1)
                self._gemm(xp, W3, col, o, nb)
                self._store(xp, o, dbottom, n0, n1, None)


def _shares(a, b):
    """Whether a is a reshaped view of b's memory (same start and size)."""
    try:
        return a.size == b.size and a.__array_interface__['data'][0] == b.__array_interface__['data'][0]
    except AttributeError:  # CuPy
        return a.size == b.size and a.data.ptr == b.data.ptr
