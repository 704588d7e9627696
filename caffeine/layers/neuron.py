"""Neuron layers: element-wise functions of one bottom, as Caffe's NeuronLayer family.

ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold,
Dropout, Swish and Clip.  Each maps one bottom to one top of the same shape
and may run in place (bottom and top the same Blob): where the gradient needs
the input and the forward pass overwrites it, the input is saved first.

Written once for NumPy and CuPy with ``xp = backend.get_xp()``; arithmetic is
float32 throughout, in the order Caffe uses, so results match Caffe's.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, fused
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2
from ._util import sigmoid_tanh

_F32 = np.float32


class NeuronLayer(Layer):
    """One bottom, one top of the same shape; in place allowed."""

    exact_num_bottom = 1
    exact_num_top = 1
    _in_place = False
    _saved_input = None

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)

    # -- the input of an in-place layer, kept by this class ----------------
    def backward_reads_input(self):
        """Whether backward needs the forward input x (False by default).  When it
        does and the layer runs in place (bottom and top the same Blob), forward
        keeps a copy of x before overwriting it; ``_input(bottom)`` gives x in
        backward either way."""
        return False

    def forward(self, bottom, top):
        """Keep x when backward will need it and the layer runs in place, then
        compute y (``neuron_forward``, what each neuron layer defines)."""
        self._in_place = (bottom[0] is top[0] and self.need_backward
                          and self.backward_reads_input())
        if self._in_place:
            if self._saved_input is None:
                self._saved_input = Blob()
            self._saved_input.reshape(bottom[0].shape)
            self._saved_input.xdata[...] = bottom[0].xdata
        self.neuron_forward(bottom, top)

    def neuron_forward(self, bottom, top):
        raise NotImplementedError

    def _input(self, bottom):
        return self._saved_input.xdata if self._in_place else bottom[0].xdata


@register('ReLU')
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0)  (leaky when negative_slope != 0).

    bottom: x, any shape.  top: y, same shape.  relu_param: negative_slope (0).
    """

    def setup(self, bottom, top):
        self.negative_slope = float(self.layer_param.relu_param.negative_slope)

    def backward_reads_input(self):
        # with a negative slope, y no longer tells the sign of x
        return self.negative_slope < 0

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        ns = self.negative_slope
        x, y = bottom[0].xdata, top[0].xdata
        if ns == 0:
            xp.maximum(x, 0, out=y)
            return
        k = fused.get(fused.RELU_FORWARD)  # GPU: one kernel for the leaky form
        if k is not None:
            k(x, _F32(ns), y)
        else:
            neg = xp.minimum(x, 0)
            neg *= _F32(ns)
            xp.maximum(x, 0, out=y)
            y += neg

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        ns = self.negative_slope
        # in place with ns >= 0, y > 0 exactly where x > 0 (Caffe reads the same buffer)
        x = self._input(bottom)
        dy, dx = top[0].xdiff, bottom[0].xdiff
        k = fused.get(fused.RELU_BACKWARD)
        if k is not None:
            k(x, dy, _F32(ns), dx)
        elif ns == 0:
            xp.multiply(dy, x > 0, out=dx)
        else:
            factor = xp.where(x > 0, _F32(1), _F32(ns)).astype(np.float32, copy=False)
            xp.multiply(dy, factor, out=dx)


@register('PReLU')
class PReLULayer(NeuronLayer):
    """y = max(x, 0) + a_c * min(x, 0), with a learned slope per channel (axis 1).

    bottom: x, at least 2 axes (N, C, ...).  top: y, same shape.
    prelu_param: channel_shared (false: one slope per channel; true: one slope),
    filler (constant 0.25).  param blob 0: the slopes, shape (C,) or () when shared.
    """

    def setup(self, bottom, top):
        p = self.layer_param.prelu_param
        if bottom[0].num_axes < 2:
            raise self.error('needs a bottom with at least 2 axes, got shape %s' % (list(bottom[0].shape),))
        self.channel_shared = bool(p.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:
            if p.HasField('filler'):
                filler = p.filler
            else:
                filler = caffe_pb2.FillerParameter(type='constant', value=0.25)
            shape = () if self.channel_shared else (channels,)
            self.blobs = [self.new_param_blob(shape, filler)]
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise self.error('slope blob has %d values; %s needs %d'
                             % (self.blobs[0].count, 'channel_shared' if self.channel_shared
                                else '%d channels' % channels, want))
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise self.error('needs a bottom with at least 2 axes, got shape %s' % (list(bottom[0].shape),))
        top[0].reshape(bottom[0].shape)

    def _slope(self, bottom):
        a = self.blobs[0].xdata
        if self.channel_shared:
            return a.reshape(1, 1, 1)
        return a.reshape(1, -1, 1)

    def _view3(self, arr, shape):
        return arr.reshape(shape[0], shape[1], -1) if arr.size else arr.reshape(shape[0], shape[1], 0)

    def backward_reads_input(self):
        return True

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        shape = bottom[0].shape
        x = self._view3(bottom[0].xdata, shape)
        y = self._view3(top[0].xdata, shape)
        neg = xp.minimum(x, 0)
        neg *= self._slope(bottom)
        xp.maximum(x, 0, out=y)
        y += neg

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        shape = bottom[0].shape
        x = self._view3(self._input(bottom), shape)
        dy = self._view3(top[0].xdiff, shape)
        # the slope gradient first: in place, dx overwrites dy
        if self.param_propagate_down[0]:
            g = dy * (x * (x <= 0))
            if self.channel_shared:
                self.blobs[0].xdiff[...] += g.sum()
            else:
                self.blobs[0].xdiff[...] += g.sum(axis=(0, 2))
        if propagate_down[0]:
            dx = self._view3(bottom[0].xdiff, shape)
            factor = xp.where(x > 0, _F32(1), self._slope(bottom)).astype(np.float32, copy=False)
            xp.multiply(dy, factor, out=dx)


@register('ELU')
class ELULayer(NeuronLayer):
    """y = x if x > 0 else alpha * (exp(x) - 1).

    bottom: x.  top: y.  elu_param: alpha (1).
    """

    def setup(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def backward_reads_input(self):
        return self.alpha < 0

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        k = fused.get(fused.ELU_FORWARD)
        if k is not None:
            k(x, _F32(self.alpha), y)
            return
        # Caffe: max(x, 0) + alpha * (exp(min(x, 0)) - 1)
        neg = xp.minimum(x, 0)
        xp.exp(neg, out=neg)
        neg -= _F32(1)
        neg *= _F32(self.alpha)
        xp.maximum(x, 0, out=y)
        y += neg

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = self._input(bottom)
        y, dy, dx = top[0].xdata, top[0].xdiff, bottom[0].xdiff
        k = fused.get(fused.ELU_BACKWARD)
        if k is not None:
            k(x, y, dy, _F32(self.alpha), dx)
            return
        factor = xp.where(x > 0, _F32(1), y + _F32(self.alpha))
        xp.multiply(dy, factor, out=dx)


@register('Sigmoid')
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as Caffe does: 0.5 * tanh(0.5 x) + 0.5.

    bottom: x.  top: y.
    """

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        k = fused.get(fused.SIGMOID_FORWARD)
        if k is not None:
            k(x, y)
        else:
            sigmoid_tanh(xp, x, y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        y, dy, dx = top[0].xdata, top[0].xdiff, bottom[0].xdiff
        k = fused.get(fused.SIGMOID_BACKWARD)
        if k is not None:
            k(y, dy, dx)
            return
        g = _F32(1) - y
        g *= y
        xp.multiply(dy, g, out=dx)


@register('TanH')
class TanHLayer(NeuronLayer):
    """y = tanh(x).  bottom: x.  top: y."""

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        xp.tanh(bottom[0].xdata, out=top[0].xdata)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        y, dy, dx = top[0].xdata, top[0].xdiff, bottom[0].xdiff
        k = fused.get(fused.TANH_BACKWARD)
        if k is not None:
            k(y, dy, dx)
            return
        g = y * y
        xp.subtract(_F32(1), g, out=g)
        xp.multiply(dy, g, out=dx)


@register('AbsVal')
class AbsValLayer(NeuronLayer):
    """y = |x|; dy/dx = sign(x).  bottom: x.  top: y.

    (Caffe refuses to run AbsVal in place; here the input is kept so it may.)
    """

    def backward_reads_input(self):
        return True

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        xp.abs(bottom[0].xdata, out=top[0].xdata)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = self._input(bottom)
        xp.multiply(top[0].xdiff, xp.sign(x), out=bottom[0].xdiff)


@register('BNLL')
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood: y = log(1 + exp(x)), computed stably.

    bottom: x.  top: y.
    """
    _THRESHOLD = 50.0  # Caffe's kBNLL_THRESHOLD, for the gradient

    def backward_reads_input(self):
        return True

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        # x > 0: x + log(1 + exp(-x)); else log(1 + exp(x))  ==  max(x,0) + log1p(exp(-|x|))
        t = xp.abs(x)
        xp.negative(t, out=t)
        xp.exp(t, out=t)
        xp.log1p(t, out=t)
        xp.maximum(x, 0, out=y)
        y += t

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = self._input(bottom)
        e = xp.minimum(x, _F32(self._THRESHOLD))
        xp.exp(e, out=e)
        d = e + _F32(1)
        xp.divide(e, d, out=e)
        xp.multiply(top[0].xdiff, e, out=bottom[0].xdiff)


@register('Power')
class PowerLayer(NeuronLayer):
    """y = (shift + scale * x) ^ power.

    bottom: x.  top: y.  power_param: power (1), scale (1), shift (0).
    """

    def setup(self, bottom, top):
        p = self.layer_param.power_param
        self.power = _F32(p.power)
        self.scale = _F32(p.scale)
        self.shift = _F32(p.shift)
        self.diff_scale = _F32(self.power * self.scale)

    def backward_reads_input(self):
        return self.diff_scale != 0 and self.power != 1

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        y = top[0].xdata
        if self.diff_scale == 0:
            # the input does not matter: scale or power is 0
            y.fill(_F32(1) if self.power == 0 else _F32(self.shift ** self.power))
            return
        x = bottom[0].xdata
        if self.scale != 1:
            xp.multiply(x, self.scale, out=y)
        elif y is not x:
            y[...] = x
        if self.shift != 0:
            y += self.shift
        if self.power != 1:
            xp.power(y, self.power, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy, dx = top[0].xdiff, bottom[0].xdiff
        if self.diff_scale == 0:
            dx.fill(0)
            return
        if self.power == 1:
            xp.multiply(dy, self.diff_scale, out=dx)
            return
        x = self._input(bottom)
        y = top[0].xdata
        if self.power == 2:
            # dy/dx = diff_scale * scale * x + diff_scale * shift
            g = x * _F32(self.diff_scale * self.scale)
            if self.shift != 0:
                g += _F32(self.diff_scale * self.shift)
        elif self.shift == 0:
            # dy/dx = power * y / x
            g = y / x
            g *= self.power
        else:
            # dy/dx = diff_scale * y / (shift + scale * x)
            g = x * self.scale if self.scale != 1 else x.copy()
            g += self.shift
            xp.divide(y, g, out=g)
            if self.diff_scale != 1:
                g *= self.diff_scale
        xp.multiply(dy, g, out=dx)


def _log_base(layer, base):
    if base != -1 and not base > 0:
        raise layer.error('base must be strictly positive (or -1 for e), got %g' % base)
    lb = _F32(1) if base == -1 else _F32(np.log(_F32(base)))
    if not math.isfinite(float(lb)):
        raise layer.error('log(base) = log(%g) is not finite' % base)
    return lb


@register('Exp')
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale * x); base -1 means e.

    bottom: x.  top: y.  exp_param: base (-1), scale (1), shift (0).
    """

    def setup(self, bottom, top):
        p = self.layer_param.exp_param
        base = float(p.base)
        log_base = _log_base(self, base)
        scale, shift = _F32(p.scale), _F32(p.shift)
        self.inner_scale = _F32(log_base * scale)
        if shift == 0:
            self.outer_scale = _F32(1)
        elif base == -1:
            self.outer_scale = _F32(np.exp(shift))
        else:
            self.outer_scale = _F32(np.power(_F32(base), shift))

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        if self.inner_scale == 1:
            xp.exp(x, out=y)
        else:
            xp.multiply(x, self.inner_scale, out=y)
            xp.exp(y, out=y)
        if self.outer_scale != 1:
            y *= self.outer_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy, dx = top[0].xdata, top[0].xdiff, bottom[0].xdiff
        g = dy * y
        if self.inner_scale != 1:
            g *= self.inner_scale
        dx[...] = g


@register('Log')
class LogLayer(NeuronLayer):
    """y = log_base(shift + scale * x); base -1 means e.

    bottom: x.  top: y.  log_param: base (-1), scale (1), shift (0).
    """

    def setup(self, bottom, top):
        p = self.layer_param.log_param
        base = float(p.base)
        log_base = _log_base(self, base)
        if log_base == 0:
            raise self.error('base %g gives log(base) = 0' % base)
        self.base_scale = _F32(_F32(1) / log_base)
        self.input_scale = _F32(p.scale)
        self.input_shift = _F32(p.shift)
        self.backward_num_scale = _F32(self.input_scale / log_base)

    def backward_reads_input(self):
        return True

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        if self.input_scale == 1 and self.input_shift == 0:
            xp.log(x, out=y)
        else:
            if self.input_scale != 1:
                xp.multiply(x, self.input_scale, out=y)
            elif y is not x:
                y[...] = x
            if self.input_shift != 0:
                y += self.input_shift
            xp.log(y, out=y)
        if self.base_scale != 1:
            y *= self.base_scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = self._input(bottom)
        g = x * self.input_scale if self.input_scale != 1 else x.copy()
        if self.input_shift != 0:
            g += self.input_shift
        xp.reciprocal(g, out=g)
        if self.backward_num_scale != 1:
            g *= self.backward_num_scale
        xp.multiply(top[0].xdiff, g, out=bottom[0].xdiff)


@register('Threshold')
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0.  No gradient (as in Caffe).

    bottom: x.  top: y.  threshold_param: threshold (0).
    """
    allow_force_backward_bottoms = frozenset()

    def setup(self, bottom, top):
        self.threshold = _F32(self.layer_param.threshold_param.threshold)

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        xp.greater(bottom[0].xdata, self.threshold, out=top[0].xdata)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error('Threshold has no gradient; it cannot back-propagate')


@register('Dropout')
class DropoutLayer(NeuronLayer):
    """TRAIN: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p); TEST: y = x.

    With scale_train false (rbgirshick/caffe-fast-rcnn): TRAIN y = x * mask,
    TEST y = x * (1 - p).

    bottom: x.  top: y.  dropout_param: dropout_ratio p (0.5), 0 <= p < 1;
    scale_train (true).
    The mask comes from caffeine's seeded generator (``set_random_seed``) on the
    CPU and from CuPy's (seeded by the same call) on the GPU.
    """

    def setup(self, bottom, top):
        p = float(self.layer_param.dropout_param.dropout_ratio)
        if not 0 <= p < 1:
            raise self.error('dropout_ratio must be in [0, 1), got %g' % p)
        self.ratio = _F32(p)
        self.scale_train = bool(self.layer_param.dropout_param.scale_train)
        # the factor on kept values in TRAIN, and on every value in TEST
        self.scale = _F32(1.0 / (1.0 - p)) if self.scale_train else _F32(1)
        self.test_scale = _F32(1) if self.scale_train else _F32(1.0 - p)
        self._mask = Blob()

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
        self._mask.reshape(bottom[0].shape)

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        if self.phase != caffe_pb2.TRAIN:
            if self.test_scale != 1:
                xp.multiply(x, self.test_scale, out=y)
            elif y is not x:
                y[...] = x
            return
        m = backend.uniform(self._mask.xdata)
        # keep where u >= p (probability 1 - p), scaled by 1 / (1 - p) unless scale_train is false
        xp.greater_equal(m, self.ratio, out=m)
        if self.scale != 1:
            m *= self.scale
        xp.multiply(x, m, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy, dx = top[0].xdiff, bottom[0].xdiff
        if self.phase == caffe_pb2.TRAIN:
            xp.multiply(dy, self._mask.xdata, out=dx)
        elif self.test_scale != 1:
            xp.multiply(dy, self.test_scale, out=dx)
        elif dx is not dy:
            dx[...] = dy


@register('Swish')
class SwishLayer(NeuronLayer):
    """y = x * sigmoid(beta * x).

    bottom: x.  top: y.  swish_param: beta (1).
    """

    def setup(self, bottom, top):
        self.beta = _F32(self.layer_param.swish_param.beta)
        self._sig = Blob()

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
        self._sig.reshape(bottom[0].shape)

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        x, y, s = bottom[0].xdata, top[0].xdata, self._sig.xdata
        xp.multiply(x, self.beta, out=s)
        sigmoid_tanh(xp, s, s)            # sigmoid(beta x), as Caffe's Sigmoid layer
        xp.multiply(x, s, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        y, s = top[0].xdata, self._sig.xdata
        # dy/dx = beta * y + s * (1 - beta * y)
        by = y * self.beta
        g = _F32(1) - by
        g *= s
        g += by
        xp.multiply(top[0].xdiff, g, out=bottom[0].xdiff)


@register('Clip')
class ClipLayer(NeuronLayer):
    """y = max(min, min(x, max)); the gradient passes where min <= x <= max.

    bottom: x.  top: y.  clip_param: min, max (min <= max).
    """

    def setup(self, bottom, top):
        p = self.layer_param.clip_param
        self.min, self.max = _F32(p.min), _F32(p.max)
        if self.min > self.max:
            raise self.error('min %g is greater than max %g' % (self.min, self.max))

    def backward_reads_input(self):
        return True

    def neuron_forward(self, bottom, top):
        xp = backend.get_xp()
        xp.clip(bottom[0].xdata, self.min, self.max, out=top[0].xdata)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = self._input(bottom)
        inside = (x >= self.min) & (x <= self.max)
        xp.multiply(top[0].xdiff, inside, out=bottom[0].xdiff)
