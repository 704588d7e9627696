"""Layers that combine values: Eltwise (across bottoms), Reduction and ArgMax (along axes).

A bottom is viewed as an (outer, axis, inner) array so that each layer is a few
whole-array operations.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2
from ._util import F32, canonical_axis, shape_str


_EP = caffe_pb2.EltwiseParameter


@register('Eltwise')
class EltwiseLayer(Layer):
    """Element-wise PROD, SUM (with coefficients) or MAX of same-shaped bottoms.

    bottom: x_1 .. x_K (K >= 2), one shape.  top: y, that shape.
    eltwise_param: operation (SUM), coeff (one per bottom, SUM only),
    stable_prod_grad (true: the PROD gradient multiplies the other bottoms;
    false: divides y by x_i).
    """
    min_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if self.op not in (_EP.PROD, _EP.SUM, _EP.MAX):
            raise self.error('unknown operation %d' % self.op)
        coeffs = list(p.coeff)
        if coeffs and self.op != _EP.SUM:
            raise self.error('coefficients are only for SUM')
        if coeffs and len(coeffs) != len(bottom):
            raise self.error('%d coeff values for %d bottoms: give one per bottom' % (len(coeffs), len(bottom)))
        self.coeffs = [F32(c) for c in coeffs] if coeffs else [F32(1)] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self._mask = Blob(dtype=np.int32) if self.op == _EP.MAX else None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error('bottom %d has shape %s but bottom 0 has %s'
                                 % (i, shape_str(b.shape), shape_str(bottom[0].shape)))
        top[0].reshape(bottom[0].shape)
        if self._mask is not None:
            self._mask.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        y = top[0].xdata
        if self.op == _EP.PROD:
            xp.multiply(bottom[0].xdata, bottom[1].xdata, out=y)
            for b in bottom[2:]:
                y *= b.xdata
        elif self.op == _EP.SUM:
            c0 = self.coeffs[0]
            rest = 1
            if c0 == 1 and len(bottom) > 1 and self.coeffs[1] == 1:
                xp.add(bottom[0].xdata, bottom[1].xdata, out=y)   # one pass for the common case
                rest = 2
            elif c0 == 1:
                y[...] = bottom[0].xdata
            else:
                xp.multiply(bottom[0].xdata, c0, out=y)
            for b, c in zip(bottom[rest:], self.coeffs[rest:]):
                if c == 1:
                    y += b.xdata
                else:
                    y += b.xdata * c
        else:
            # Caffe: bottom 1 wins ties with bottom 0; later bottoms need to be strictly greater
            mask = self._mask.xdata
            a, b = bottom[0].xdata, bottom[1].xdata
            gt = a > b
            mask[...] = ~gt          # 0 where bottom 0 is greater, else 1
            xp.maximum(a, b, out=y)
            for i, bb in enumerate(bottom[2:], 2):
                x = bb.xdata
                gt = x > y
                mask[gt] = i
                xp.maximum(y, x, out=y)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = b.xdiff
            if self.op == _EP.PROD:
                if self.stable_prod_grad:
                    # the product of the other bottoms
                    others = [o for j, o in enumerate(bottom) if j != i]
                    dx[...] = others[0].xdata
                    for o in others[1:]:
                        dx *= o.xdata
                else:
                    xp.divide(top[0].xdata, b.xdata, out=dx)
                dx *= dy
            elif self.op == _EP.SUM:
                c = self.coeffs[i]
                if c == 1:
                    dx[...] = dy
                else:
                    xp.multiply(dy, c, out=dx)
            else:
                xp.multiply(dy, self._mask.xdata == i, out=dx)


_RP = caffe_pb2.ReductionParameter


@register('Reduction')
class ReductionLayer(Layer):
    """Reduces all axes from ``axis`` on: SUM, ASUM (sum of |x|), SUMSQ or MEAN,
    times ``coeff``.

    bottom: x.  top: y, shape x.shape[:axis] (a scalar for axis 0).
    reduction_param: operation (SUM), axis (0), coeff (1).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.reduction_param
        self.op = p.operation
        if self.op not in (_RP.SUM, _RP.ASUM, _RP.SUMSQ, _RP.MEAN):
            raise self.error('unknown operation %d' % self.op)

    def reshape(self, bottom, top):
        p = self.layer_param.reduction_param
        b = bottom[0]
        axis = canonical_axis(self, b, p.axis)
        self.num = b.count_range(0, axis)
        self.dim = b.count_range(axis)
        top[0].reshape(tuple(b.shape[:axis]))
        coeff = F32(p.coeff)
        if self.op == _RP.MEAN:
            coeff = F32(coeff / F32(self.dim)) if self.dim else coeff
        self.coeff = coeff

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.num, self.dim)
        y = top[0].xdata.reshape(self.num)
        if self.op == _RP.ASUM:
            x = xp.abs(x)
        elif self.op == _RP.SUMSQ:
            x = x * x
        xp.sum(x, axis=1, out=y)
        if self.coeff != 1:
            y *= self.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.num, 1) * self.coeff
        dx = bottom[0].xdiff.reshape(self.num, self.dim)
        if self.op in (_RP.SUM, _RP.MEAN):
            dx[...] = dy
        elif self.op == _RP.ASUM:
            x = bottom[0].xdata.reshape(self.num, self.dim)
            xp.multiply(xp.sign(x), dy, out=dx)
        else:
            x = bottom[0].xdata.reshape(self.num, self.dim)
            xp.multiply(x, dy * F32(2), out=dx)


@register('ArgMax')
class ArgMaxLayer(Layer):
    """The indices (or values) of the top_k largest entries.

    Without ``axis``: per sample over all of its values; top (N, 1, top_k), or
    (N, 2, top_k) with out_max_val (indices, then values).  With ``axis``: along
    that axis; top is the bottom's shape with top_k there, holding indices, or
    values with out_max_val.  Ties go to the larger index, as in Caffe.
    bottom: x.  argmax_param: out_max_val (false), top_k (1), axis.  No gradient.
    """
    exact_num_bottom = 1
    exact_num_top = 1
    allow_force_backward_bottoms = frozenset()

    def setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField('axis')
        if self.top_k < 1:
            raise self.error('top_k must be at least 1, got %d' % self.top_k)

    def reshape(self, bottom, top):
        b = bottom[0]
        p = self.layer_param.argmax_param
        if self.has_axis:
            self.axis = canonical_axis(self, b, p.axis)
            if self.top_k > b.shape[self.axis]:
                raise self.error('top_k %d is larger than axis %d of size %d'
                                 % (self.top_k, self.axis, b.shape[self.axis]))
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            if b.num_axes < 1:
                raise self.error('needs a bottom with at least one axis')
            if self.top_k > b.count_range(1):
                raise self.error('top_k %d is larger than the %d values per sample'
                                 % (self.top_k, b.count_range(1)))
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0]
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(shape)

    def _topk(self, xp, v):
        """Indices (int) of the top_k largest along the last axis, larger index first on ties."""
        D = v.shape[-1]
        rev = v[..., ::-1]
        if self.top_k == 1:
            r = xp.argmax(rev, axis=-1)[..., None]
        else:
            r = xp.argsort(-rev, axis=-1, kind='stable')[..., :self.top_k]
        return (D - 1) - r

    def forward(self, bottom, top):
        xp = backend.get_xp()
        b = bottom[0]
        x = b.xdata
        if self.has_axis:
            outer = b.count_range(0, self.axis)
            D = b.shape[self.axis]
            inner = b.count_range(self.axis + 1)
            v = x.reshape(outer, D, inner).transpose(0, 2, 1)        # (outer, inner, D)
            idx = self._topk(xp, v)                                    # (outer, inner, k)
            out = xp.take_along_axis(v, idx, axis=-1) if self.out_max_val else idx
            top[0].xdata.reshape(outer, self.top_k, inner)[...] = out.transpose(0, 2, 1)
        else:
            N = b.shape[0]
            v = x.reshape(N, -1)
            idx = self._topk(xp, v)                                    # (N, k)
            y = top[0].xdata.reshape(N, -1, self.top_k)
            y[:, 0, :] = idx
            if self.out_max_val:
                y[:, 1, :] = xp.take_along_axis(v, idx, axis=-1)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error('ArgMax has no gradient; it cannot back-propagate')
