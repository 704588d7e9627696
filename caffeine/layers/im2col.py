"""im2col / col2im for N spatial axes, a shared workspace, and the convolution engine.

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
  Deconvolution, with 1x1 / stride 1 / no pad convolutions skipping im2col.

Buffers (padded input, columns, transposed outputs) come from a per-thread
workspace shared by every layer, as Caffe's shared column buffer; it grows to
the largest size asked and never shrinks, so nothing is allocated after the
first iteration.  Batches whose column buffer would exceed
``CAFFEINE_CONV_WORKSPACE_MB`` (256 by default) are processed in chunks of images.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from .. import backend

_F32 = np.float32
_ws = threading.local()


def _ws_limit_floats():
    try:
        mb = float(os.environ.get('CAFFEINE_CONV_WORKSPACE_MB', '256'))
    except ValueError:
        mb = 256.0
    return max(int(mb * (1 << 20) // 4), 1)


def workspace(name, size, dtype=_F32):
    """A flat buffer of at least ``size`` elements, shared by every layer of this thread.

    Keyed by name, dtype and backend mode/device; grows (one allocation) only when
    a larger size is asked.  The contents are not kept between calls of different layers.
    """
    d = getattr(_ws, 'bufs', None)
    if d is None:
        d = _ws.bufs = {}
    key = (name, np.dtype(dtype).str, backend.mode(), backend.device_id())
    buf = d.get(key)
    size = int(size)
    if buf is None or buf.size < size:
        buf = backend.empty((max(size, 1),), dtype)
        d[key] = buf
    return buf[:size]


def clear_workspace():
    """Free the shared buffers (the next use allocates them again)."""
    _ws.bufs = {}


def _prod(s):
    p = 1
    for v in s:
        p *= int(v)
    return p


def as_strided(xp, a, shape, strides):
    return xp.lib.stride_tricks.as_strided(a, shape=tuple(shape), strides=tuple(strides))


def conv_out_size(in_size, kernel, pad, stride, dilation):
    ext = dilation * (kernel - 1) + 1
    return (in_size + 2 * pad - ext) // stride + 1


def pad_into(xp, x, buf, pads, value=0.0):
    """buf[:, :, p0:p0+S0, ...] = x; every other cell of buf = value.

    x: (nb, C, *S), buf: (nb, C, *Sp) with Sp >= S + pads on the low side.
    """
    nd = x.ndim - 2
    inner = (slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pads, x.shape[2:]))
    for i in range(nd):
        p, s, sp = pads[i], x.shape[2 + i], buf.shape[2 + i]
        pre = (slice(None),) * (2 + i)
        if p > 0:
            buf[pre + (slice(0, p),)] = value
        if p + s < sp:
            buf[pre + (slice(p + s, sp),)] = value
    buf[inner] = x
    return buf


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
        xpad = pad_buf[:_prod(x.shape[:2] + sp)].reshape(x.shape[:2] + sp)
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
        dpad = pad_buf[:_prod(dx.shape[:2] + sp)].reshape(dx.shape[:2] + sp)
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


class ConvEngine:
    """Caffe's BaseConvolutionLayer GEMMs over whole batch chunks.

    The "input side" is the im2col'd one (Convolution: bottom; Deconvolution: top), of
    ``in_ch`` channels and spatial shape ``in_sp``; the "output side" (Convolution: top;
    Deconvolution: bottom) has ``out_ch`` channels and spatial shape ``out_sp``.  The
    weight is (out_ch, in_ch / group, *kernel).  Arrays are (N, ch, *spatial).
    """

    def __init__(self, in_ch, out_ch, group, kernel, pad, stride, dilation, in_sp, out_sp, num):
        self.in_ch, self.out_ch, self.G = int(in_ch), int(out_ch), int(group)
        self.kernel, self.pad, self.stride, self.dilation = (tuple(int(v) for v in t) for t in
                                                           (kernel, pad, stride, dilation))
        self.in_sp, self.out_sp = tuple(in_sp), tuple(out_sp)
        self.N = int(num)
        self.nd = len(self.kernel)
        self.K = _prod(self.kernel)
        self.IN = _prod(self.in_sp)
        self.OUT = _prod(self.out_sp)
        self.CK = self.in_ch * self.K
        self.Mg = self.out_ch // self.G
        self.CKg = self.CK // self.G
        self.is_1x1 = all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride) \
            and all(p == 0 for p in self.pad)
        per_image = self.CK * self.OUT
        self.chunk = max(1, min(self.N, _ws_limit_floats() // max(per_image, 1))) if self.N else 1

    def chunks(self):
        for n0 in range(0, self.N, self.chunk):
            yield n0, min(self.N, n0 + self.chunk)

    # -- columns ---------------------------------------------------------------
    def columns(self, xp, x, n0, n1):
        """The (CK, nb * OUT) column matrix of x[n0:n1] (x: (N, in_ch, *in_sp))."""
        nb = n1 - n0
        xs = x[n0:n1]
        if self.is_1x1 and nb == 1:
            return xs.reshape(self.CK, self.OUT)
        col = workspace('conv_col', self.CK * nb * self.OUT)
        if self.is_1x1:
            col.reshape(self.CK, nb, self.OUT)[...] = xs.reshape(nb, self.CK, self.OUT).transpose(1, 0, 2)
        else:
            pad_buf = workspace('conv_pad', nb * self.in_ch * _prod(
                s + 2 * p for s, p in zip(self.in_sp, self.pad))) if any(self.pad) else None
            im2col(xp, xs, col.reshape((self.in_ch,) + self.kernel + (nb,) + self.out_sp),
                   self.kernel, self.pad, self.stride, self.dilation, self.out_sp, pad_buf)
        return col.reshape(self.CK, nb * self.OUT)

    def _out_T(self, xp, y, n0, n1, copy):
        """y[n0:n1] (nb, out_ch, OUT) as an (out_ch, nb * OUT) matrix: a view when nb == 1,
        else a workspace buffer (filled with y's values when ``copy``)."""
        nb = n1 - n0
        ys = y[n0:n1].reshape(nb, self.out_ch, self.OUT)
        if nb == 1:
            return ys.reshape(self.out_ch, self.OUT)
        buf = workspace('conv_out', self.out_ch * nb * self.OUT)
        if copy:
            buf.reshape(self.out_ch, nb, self.OUT)[...] = ys.transpose(1, 0, 2)
        return buf.reshape(self.out_ch, nb * self.OUT)

    # -- the three GEMMs ------------------------------------------------------
    def forward(self, xp, W, x, y, bias=None):
        """y = W * x (+ bias): x (N, in_ch, *in_sp) -> y (N, out_ch, *out_sp)."""
        G, Mg, CKg = self.G, self.Mg, self.CKg
        W3 = W.reshape(G, Mg, CKg)
        if self.is_1x1:
            xp.matmul(W3, x.reshape(self.N, G, CKg, self.OUT),
                      out=y.reshape(self.N, G, Mg, self.OUT))
            if bias is not None:
                y3 = y.reshape(self.N, self.out_ch, self.OUT)
                xp.add(y3, bias.reshape(1, self.out_ch, 1), out=y3)
            return y
        for n0, n1 in self.chunks():
            nb = n1 - n0
            col = self.columns(xp, x, n0, n1)
            o = self._out_T(xp, y, n0, n1, copy=False)
            if G == 1:
                xp.matmul(W3[0], col, out=o)
            else:
                xp.matmul(W3, col.reshape(G, CKg, nb * self.OUT), out=o.reshape(G, Mg, nb * self.OUT))
            ys = y[n0:n1].reshape(nb, self.out_ch, self.OUT)
            if nb == 1:
                if bias is not None:
                    xp.add(ys, bias.reshape(1, self.out_ch, 1), out=ys)
            elif bias is not None:
                xp.add(o.reshape(self.out_ch, nb, self.OUT).transpose(1, 0, 2),
                       bias.reshape(1, self.out_ch, 1), out=ys)
            else:
                ys[...] = o.reshape(self.out_ch, nb, self.OUT).transpose(1, 0, 2)
        return y

    def backward_data(self, xp, W, dy, dx):
        """dx = col2im(W^T dy): dy (N, out_ch, *out_sp) -> dx (N, in_ch, *in_sp), overwritten."""
        G, Mg, CKg = self.G, self.Mg, self.CKg
        W3 = W.reshape(G, Mg, CKg)
        WT = W3.transpose(0, 2, 1)
        if self.is_1x1:
            xp.matmul(WT, dy.reshape(self.N, G, Mg, self.OUT), out=dx.reshape(self.N, G, CKg, self.OUT))
            return dx
        for n0, n1 in self.chunks():
            nb = n1 - n0
            d = self._out_T(xp, dy, n0, n1, copy=True)
            col = workspace('conv_col', self.CK * nb * self.OUT)
            if G == 1:
                xp.matmul(WT[0], d, out=col.reshape(self.CK, nb * self.OUT))
            else:
                xp.matmul(WT, d.reshape(G, Mg, nb * self.OUT), out=col.reshape(G, CKg, nb * self.OUT))
            pad_buf = workspace('conv_pad', nb * self.in_ch * _prod(
                s + 2 * p for s, p in zip(self.in_sp, self.pad))) if any(self.pad) else None
            col2im(xp, col.reshape((self.in_ch,) + self.kernel + (nb,) + self.out_sp), dx[n0:n1],
                   self.kernel, self.pad, self.stride, self.dilation, self.out_sp, pad_buf)
        return dx

    def backward_weight(self, xp, x, dy, dW, dW_tmp):
        """dW += dy * x^T over the batch (x: input side, dy: output side); dW_tmp: a
        weight-shaped scratch array."""
        G, Mg, CKg = self.G, self.Mg, self.CKg
        tmp3 = dW_tmp.reshape(G, Mg, CKg)
        dW3 = dW.reshape(G, Mg, CKg)
        for n0, n1 in self.chunks():
            nb = n1 - n0
            col = self.columns(xp, x, n0, n1)
            d = self._out_T(xp, dy, n0, n1, copy=True)
            if G == 1:
                xp.matmul(d, col.T, out=tmp3[0])
            else:
                xp.matmul(d.reshape(G, Mg, nb * self.OUT), col.reshape(G, CKg, nb * self.OUT).transpose(0, 2, 1),
                          out=tmp3)
            xp.add(dW3, tmp3, out=dW3)
        return dW
