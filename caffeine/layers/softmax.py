"""Softmax: a normalized exponential along one axis."""
from __future__ import annotations

from .. import backend, engines
from ..layer import Layer, register
from ._util import canonical_axis


@register('Softmax')
class SoftmaxLayer(Layer):
    """y = exp(x - max) / sum(exp(x - max)) along ``axis``.

    bottom: x.  top: y, same shape.  softmax_param: axis (1), engine (DEFAULT: cuDNN on the
    GPU where present, see caffeine.engines).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = canonical_axis(self, b, self.layer_param.softmax_param.axis)
        self.shape3 = (b.count_range(0, axis), b.shape[axis], b.count_range(axis + 1))
        top[0].reshape(b.shape)
        self.cudnn = engines.softmax(self)  # None: the xp path below

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.shape3)
        y = top[0].xdata.reshape(self.shape3)
        if self.cudnn is not None:
            self.cudnn.forward(x, y)
            return
        m = x.max(axis=1, keepdims=True)
        xp.subtract(x, m, out=y)
        xp.exp(y, out=y)
        s = y.sum(axis=1, keepdims=True)
        y /= s

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        y = top[0].xdata.reshape(self.shape3)
        dy = top[0].xdiff.reshape(self.shape3)
        dx = bottom[0].xdiff.reshape(self.shape3)
        if self.cudnn is not None:
            self.cudnn.backward(y, dy, dx)
            return
        dot = (dy * y).sum(axis=1, keepdims=True)
        xp.subtract(dy, dot, out=dx)
        dx *= y
