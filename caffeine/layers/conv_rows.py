"""Convolution "by rows": one GEMM per kernel row, for thin 2-D batch-innermost convolutions.

With Caffe's column matrix ``col`` (rows ``(c, kh, kw)``) and the weight ``W`` (out_ch, in_ch, KH, KW),
``W @ col`` splits over the kernel rows r:

    y = sum_r W[:, :, r, :] @ col_r,    col_r[(c, kw), (oh, ow, n)] = xpad[c, oh + r * dh, ow + kw * dw, n]

and, on the padded (in_ch, Hp, Wp, nb) input, every ``col_r`` is a window of ONE buffer
``B[c, kw, h, ow, n] = xpad[c, h, ow + kw * dw, n]`` (rows h from ``r * dh``): KW copies of the
input instead of Caffe's KH * KW.  The weight gradient splits the same way,
``dW[:, :, r, :] += dy @ col_r^T``.

:class:`caffeine.layers.conv_engine.ConvEngine` chooses it (its ``'chwn'`` layout, 2-D,
stride 1 on the rows, one group, on the CPU, inner size ``in_ch * KW`` within its
ROWS_MIN_K..ROWS_MAX_K) and calls :class:`RowsGemm` for the forward pass and the weight
gradient; the gradient to the data keeps the engine's own path.

Memory: the row weights, the accumulator and B share the ``conv_col`` workspace buffer,
which is smaller than the full columns would take, so the rows path takes no memory of its own.
"""
from __future__ import annotations

from ..workspace import align_floats, workspace
from ._util import as_strided, shape_count


class RowsGemm:
    """The rows path of one convolution: ``in_ch`` -> ``out_ch`` channels, 2-D ``kernel``
    (KH, KW) and ``dilation``, the padded input ``pad_sp`` (Hp, Wp), output ``out_sp``
    (OH, OW), stride 1, chunks of at most ``chunk`` images.

    The ``conv_col`` workspace holds ``[row weights | accumulator | B]`` (see :meth:`space`):
    the weights as (KH, out_ch, in_ch * KW), one kernel row's product (out_ch, OUT * nb), and B.
    """

    def __init__(self, in_ch, out_ch, kernel, dilation, pad_sp, out_sp, chunk):
        self.in_ch, self.out_ch, self.chunk = int(in_ch), int(out_ch), int(chunk)
        self.kernel, self.dilation = tuple(kernel), tuple(dilation)
        self.pad_sp, self.out_sp = tuple(pad_sp), tuple(out_sp)
        self.OUT = shape_count(self.out_sp)
        self._w = align_floats(self.out_ch * self.in_ch * shape_count(self.kernel))
        self._o = align_floats(self.out_ch * self.chunk * self.OUT)

    def space(self, nb):
        """The 'conv_col' workspace as (row weights, accumulator, B) for chunks of nb images."""
        C, KW, Hp, OW = self.in_ch, self.kernel[-1], self.pad_sp[0], self.out_sp[-1]
        w, o = self._w, self._o
        buf = workspace('conv_col', w + o + C * KW * Hp * OW * self.chunk)
        return buf[:w], buf[w:w + o], buf[w + o:w + o + C * KW * Hp * OW * nb]

    def matrices(self, xp, flat, nb):
        """The kernel rows' column matrices of a chunk of nb images, from ``flat``, its padded
        (in_ch, Hp, Wp, nb) buffer: a (KH, in_ch * KW, OUT * nb) view, matrix r holding the rows
        (c, kw) of Caffe's column matrix for kernel row r, with the columns in (oh, ow, n) order.

        B (in_ch, KW, Hp, OW, nb) is one copy: kernel row r's matrix starts at h = r * dilation_h,
        its rows (c, kw) a plane of B apart, its columns one contiguous run."""
        C, (KH, KW), (Hp, Wp), OW = self.in_ch, self.kernel, self.pad_sp, self.out_sp[-1]
        b = self.space(nb)[2]
        it = flat.itemsize
        sw, sh = nb * it, Wp * nb * it                      # the padded buffer's strides
        b.reshape(C, KW, Hp, OW, nb)[...] = as_strided(
            xp, flat, (C, KW, Hp, OW, nb), (Hp * sh, self.dilation[1] * sw, sh, sw, it))
        rs = OW * nb * it                                   # one row h of B
        return as_strided(xp, b, (KH, C * KW, self.OUT * nb), (self.dilation[0] * rs, Hp * rs, it))

    def weights(self, xp, W):
        """W (out_ch, in_ch, KH, KW) as (KH, out_ch, in_ch * KW): each kernel row's GEMM operand."""
        C, (KH, KW), M = self.in_ch, self.kernel, self.out_ch
        buf = self.space(1)[0][:W.size].reshape(KH, M, C, KW)
        buf[...] = W.reshape(M, C, KH, KW).transpose(2, 0, 1, 3)
        return buf.reshape(KH, M, C * KW)

    def forward(self, xp, Wr, V, o):
        """o = sum over kernel rows r of Wr[r] @ V[r] (Wr: :meth:`weights`, V: :meth:`matrices`)."""
        xp.matmul(Wr[0], V[0], out=o)
        if len(Wr) > 1:
            tmp = self.space(1)[1][:o.size].reshape(o.shape)
            for r in range(1, len(Wr)):
                xp.matmul(Wr[r], V[r], out=tmp)
                xp.add(o, tmp, out=o)

    def wgrad(self, xp, d, V, dW, dW_tmp):
        """dW += d @ V[r]^T for every kernel row r, computed as V[r] @ d^T (as the engine's
        weight gradient, with the columns as the left operand); d: (out_ch, OUT * nb)."""
        C, (KH, KW), M = self.in_ch, self.kernel, self.out_ch
        tmp = dW_tmp.reshape(-1)[:dW.size].reshape(KH, C * KW, M)
        for r in range(KH):
            xp.matmul(V[r], d.T, out=tmp[r])
        dW4 = dW.reshape(M, C, KH, KW)
        xp.add(dW4, tmp.reshape(KH, C, KW, M).transpose(3, 1, 0, 2), out=dW4)
