"""Normalization layers: BatchNorm, Scale, Bias, MVN, and the BatchNorm+Scale fold.

Scale and Bias share one broadcasting base; ``can_fold_batchnorm_scale`` and
``batchnorm_scale_forward`` let the Net run an inference-only BatchNorm and its
in-place Scale as one affine pass.
"""
from __future__ import annotations

import numpy as np

from .. import backend, engines
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2
from ._util import F32, canonical_axis, shape_count, shape_str


@register('BatchNorm')
class BatchNormLayer(Layer):
    """Normalizes each channel (axis 1) to zero mean and unit variance.

    TRAIN (use_global_stats false): with the batch's statistics over N and the
    spatial axes, updating the running sums: s = maf * s + 1,
    mean_sum = maf * mean_sum + mean, var_sum = maf * var_sum + m/(m-1) * var.
    use_global_stats (the default in TEST): with mean_sum / s and var_sum / s.
    y = (x - mean) / sqrt(var + eps).

    bottom: x, (N, C, ...) or (N,) .  top: y, same shape; in place allowed.
    batch_norm_param: use_global_stats, moving_average_fraction maf (0.999), eps (1e-5).
    param blobs (never learned; the Net forces lr_mult 0): mean_sum (C,), var_sum (C,), s (1,).
    On the GPU the normalization runs on cuDNN where caffeine.engines chooses it (``cudnn``).
    """
    exact_num_bottom = 1
    exact_num_top = 1
    force_zero_lr = True

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.maf = F32(p.moving_average_fraction)
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if p.HasField('use_global_stats'):
            self.use_global_stats = bool(p.use_global_stats)
        self.eps = F32(p.eps)
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if bottom[0].num_axes < 1:
            raise self.error('needs a bottom with at least one axis')
        for i, spec in enumerate(self.layer_param.param):
            if spec.lr_mult != 0:
                raise self.error('param %d has lr_mult %g: batch normalization statistics cannot be learned '
                                 '(use lr_mult 0 or no param specs)' % (i, spec.lr_mult))
        if not self.blobs:
            self.blobs = [Blob((self.channels,)), Blob((self.channels,)), Blob((1,))]
            for blob in self.blobs:
                blob.xdata.fill(0)
        shapes = [b.count for b in self.blobs]
        if len(self.blobs) != 3 or shapes != [self.channels, self.channels, 1]:
            raise self.error('expects 3 parameter blobs of %d, %d and 1 values, got %s'
                             % (self.channels, self.channels, [b.shape for b in self.blobs]))
        self.param_propagate_down = [False, False, False]
        self._x_norm = Blob()    # backward's saved input: y (portable) or, on cuDNN in place, x
        self._std = Blob((self.channels,))
        self._batch_stats = Blob((2, self.channels))   # cuDNN's batch mean and unbiased variance
        self._engine_key = None
        self.cudnn = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes >= 2 and b.shape[1] != self.channels:
            raise self.error('bottom %s has %d channels, the layer was set up for %d'
                             % (shape_str(b.shape), b.shape[1], self.channels))
        top[0].reshape(b.shape)
        self.shape3 = (b.shape[0], self.channels, b.count_range(2) if b.num_axes > 1 else 1)
        key = (self.shape3, backend.mode(), backend.device_id(), self.use_global_stats)
        if key != self._engine_key:  # cuDNN or the xp path (caffeine.engines decides)
            self.cudnn = engines.batch_norm(self)
            self._engine_key = key
        if self._keeps_x_norm() and (self.cudnn is None or top[0] is b):
            self._x_norm.reshape(b.shape)
        elif self._x_norm.count:
            self._x_norm = Blob()     # not needed after all: give the memory back

    def global_stats(self, xp):
        """(mean, variance) from the running sums: mean_sum / s, var_sum / s (0 when s is 0)."""
        s = self.blobs[2].xdata.reshape(())
        factor = xp.where(s == 0, F32(0), F32(1) / xp.where(s == 0, F32(1), s)).astype(np.float32)
        return self.blobs[0].xdata * factor, self.blobs[1].xdata * factor

    def _keeps_x_norm(self):
        # backward with batch statistics reads the normalized x; with global
        # statistics it needs only the std
        return self.need_backward and not self.use_global_stats

    def _accumulate(self, mean, var_unbiased):
        """Caffe's running sums: s = maf s + 1, mean_sum = maf mean_sum + mean,
        var_sum = maf var_sum + var_unbiased."""
        for blob, v in zip(self.blobs, (mean, var_unbiased, F32(1))):
            blob.xdata[...] *= self.maf
            blob.xdata[...] += v

    def _forward_cudnn(self, bottom, top):
        xp = backend.get_xp()
        shape4 = self.shape3 + (1,)
        x = bottom[0].xdata.reshape(shape4)
        y = top[0].xdata.reshape(shape4)
        std = self._std.xdata
        if self.use_global_stats:
            mean, var = self.global_stats(xp)
            self.cudnn.forward_inference(x, y, mean, var)
            xp.add(var, self.eps, out=std)   # backward's dx = dy / std
            xp.sqrt(std, out=std)
            return
        if self._keeps_x_norm() and top[0] is bottom[0]:
            self._x_norm.xdata[...] = bottom[0].xdata   # in place: keep x for cuDNN's backward
        stats = self._batch_stats.xdata
        stats.fill(0)   # cuDNN's factor-1 "running" averages start from 0: the batch's values exactly
        self.cudnn.forward_training(x, y, stats[0], stats[1])
        self._accumulate(stats[0], stats[1])

    def forward(self, bottom, top):
        if self.cudnn is not None:
            return self._forward_cudnn(bottom, top)
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.shape3)
        y = top[0].xdata.reshape(self.shape3)
        std = self._std.xdata
        if self.use_global_stats:
            mean, var = self.global_stats(xp)
        else:
            mean = x.mean(axis=(0, 2), dtype=np.float32)
        xp.subtract(x, mean.reshape(1, -1, 1), out=y)
        if not self.use_global_stats:
            var = (y * y).mean(axis=(0, 2), dtype=np.float32)
            m = bottom[0].count // self.channels
            bias_correction = F32(m / (m - 1.0)) if m > 1 else F32(1)
            self._accumulate(mean, var * bias_correction)
        xp.add(var, self.eps, out=std)
        xp.sqrt(std, out=std)
        y /= std.reshape(1, -1, 1)
        if self._keeps_x_norm():
            self._x_norm.xdata[...] = top[0].xdata

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.shape3)
        dx = bottom[0].xdiff.reshape(self.shape3)
        std = self._std.xdata.reshape(1, -1, 1)
        if self.use_global_stats:
            xp.divide(dy, std, out=dx)
            return
        if self.cudnn is not None:
            shape4 = self.shape3 + (1,)
            x = (self._x_norm if self._x_norm.count else bottom[0]).xdata.reshape(shape4)
            self.cudnn.backward(x, dy.reshape(shape4), dx.reshape(shape4))
            return
        y = self._x_norm.xdata.reshape(self.shape3)
        # dx = (dy - mean(dy) - y * mean(dy * y)) / std
        mean_dy_y = (dy * y).mean(axis=(0, 2), keepdims=True, dtype=np.float32)
        mean_dy = dy.mean(axis=(0, 2), keepdims=True, dtype=np.float32)
        t = y * mean_dy_y
        xp.subtract(dy, mean_dy, out=dx)
        dx -= t
        dx /= std


def _broadcast_dims(layer, bottom0, other_shape, axis):
    """(outer, dim, inner) for broadcasting a blob of ``other_shape`` at ``axis``."""
    n = len(other_shape)
    if bottom0.num_axes < axis + n:
        raise layer.error('bottom %s has too few axes for a %s blob at axis %d'
                          % (shape_str(bottom0.shape), shape_str(other_shape), axis))
    for i in range(n):
        if bottom0.shape[axis + i] != other_shape[i]:
            raise layer.error('dimension mismatch between bottom %s (axis %d) and %s'
                              % (shape_str(bottom0.shape), axis + i, shape_str(other_shape)))
    return (bottom0.count_range(0, axis), shape_count(other_shape), bottom0.count_range(axis + n))


def _param_shape(layer, bottom0, axis_param, num_axes):
    axis = canonical_axis(layer, bottom0, axis_param)
    if num_axes < -1:
        raise layer.error('num_axes must be >= 0, or -1 to extend to the last axis, got %d' % num_axes)
    if num_axes >= 0 and bottom0.num_axes < axis + num_axes:
        raise layer.error('axis %d + num_axes %d beyond the %d-D bottom of shape %s'
                          % (axis, num_axes, bottom0.num_axes, list(bottom0.shape)))
    end = bottom0.num_axes if num_axes == -1 else axis + num_axes
    return tuple(bottom0.shape[axis:end])


class _BroadcastLayer(Layer):
    """Shared by Scale and Bias: a (learned or second-bottom) operand broadcast
    over the bottom's axes ``axis`` .. ``axis + operand axes``."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def _operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def _dims(self, bottom, param):
        op = self._operand(bottom)
        # a scalar operand broadcasts everywhere; axis 0 avoids the range check
        axis = 0 if op.num_axes == 0 else canonical_axis(self, bottom[0], param.axis)
        return _broadcast_dims(self, bottom[0], op.shape, axis)

    @staticmethod
    def _reduce(xp, prod3, out, accumulate):
        """out (+)= sum of prod3 (outer, dim, inner) over outer and inner."""
        r = prod3.sum(axis=(0, 2))
        if accumulate:
            out += r.reshape(out.shape)
        else:
            out[...] = r.reshape(out.shape)


@register('Bias')
class BiasLayer(_BroadcastLayer):
    """y = x + b, b broadcast over the bottom's axes ``axis`` .. ``axis + b.ndim``.

    bottom: x, and optionally b (else b is a learned parameter).  top: y.
    bias_param: axis (1), num_axes (1; -1 = to the last axis; learned b only),
    filler (constant 0).  param blob (one bottom): b.
    """

    def setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
            self.blobs = [self.new_param_blob(shape, p.filler)]
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        self.shape3 = self._dims(bottom, self.layer_param.bias_param)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        outer, dim, inner = self.shape3
        b = self._operand(bottom).xdata.reshape(1, dim, 1)
        xp.add(bottom[0].xdata.reshape(self.shape3), b, out=top[0].xdata.reshape(self.shape3))

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].xdiff[...] = dy
        learned = len(bottom) == 1
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            op = self._operand(bottom)
            self._reduce(xp, dy.reshape(self.shape3), op.xdiff, accumulate=learned)


@register('Scale')
class ScaleLayer(_BroadcastLayer):
    """y = x * s (+ b), s broadcast over the bottom's axes ``axis`` .. ``axis + s.ndim``.

    bottom: x, and optionally s (else s is a learned parameter).  top: y; in place allowed.
    scale_param: axis (1), num_axes (1; -1 = to the last axis; learned s only),
    filler (constant 1), bias_term (false), bias_filler (constant 0).
    param blobs: s (one bottom), then b (bias_term).
    """

    def setup(self, bottom, top):
        p = self.layer_param.scale_param
        learned = len(bottom) == 1
        if not self.blobs:
            blobs = []
            if learned:
                shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
                filler = p.filler if p.HasField('filler') else caffe_pb2.FillerParameter(type='constant', value=1.0)
                blobs.append(self.new_param_blob(shape, filler))
            if p.bias_term:
                shape = tuple(blobs[0].shape) if learned else tuple(bottom[1].shape)
                blobs.append(self.new_param_blob(shape, p.bias_filler))
            self.blobs = blobs
        want = int(learned) + int(bool(p.bias_term))
        if len(self.blobs) != want:
            raise self.error('expects %d parameter blobs, got %d' % (want, len(self.blobs)))
        self.bias_term = bool(p.bias_term)
        self.param_propagate_down = [True] * len(self.blobs)
        self._temp = Blob()

    def reshape(self, bottom, top):
        self.shape3 = self._dims(bottom, self.layer_param.scale_param)
        if self.bias_term:
            bias = self.blobs[-1]
            if bias.count != self.shape3[1]:
                raise self.error('bias blob has %d values, the scale has %d' % (bias.count, self.shape3[1]))
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        outer, dim, inner = self.shape3
        learned = len(bottom) == 1
        if bottom[0] is top[0] and self.need_backward and (not learned or self.param_propagate_down[0]):
            # in place: keep x for the scale gradient
            self._temp.reshape(bottom[0].shape)
            self._temp.xdata[...] = bottom[0].xdata
        s = self._operand(bottom).xdata.reshape(1, dim, 1)
        y = top[0].xdata.reshape(self.shape3)
        xp.multiply(bottom[0].xdata.reshape(self.shape3), s, out=y)
        if self.bias_term:
            y += self.blobs[-1].xdata.reshape(1, dim, 1)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        outer, dim, inner = self.shape3
        learned = len(bottom) == 1
        dy = top[0].xdiff.reshape(self.shape3)
        if self.bias_term and self.param_propagate_down[-1]:
            self._reduce(xp, dy, self.blobs[-1].xdiff, accumulate=True)
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            x = (self._temp if bottom[0] is top[0] else bottom[0]).xdata.reshape(self.shape3)
            self._reduce(xp, dy * x, self._operand(bottom).xdiff, accumulate=learned)
        if propagate_down[0]:
            s = self._operand(bottom).xdata.reshape(1, dim, 1)
            xp.multiply(dy, s, out=bottom[0].xdiff.reshape(self.shape3))


def can_fold_batchnorm_scale(bn, scale, bn_bottom_ids, bn_top_ids, sc_bottom_ids, sc_top_ids):
    """Whether a BatchNorm with global statistics and the Scale after it can
    run as one affine pass (inference only): both in place on one blob, the
    Scale learned per channel, neither ever asked for a backward pass."""
    if bn.type != 'BatchNorm' or scale.type != 'Scale':
        return False
    if bn.need_backward or scale.need_backward or not bn.use_global_stats:
        return False
    blob = bn_top_ids[0] if bn_top_ids else None
    if not (bn_bottom_ids == bn_top_ids == sc_bottom_ids == sc_top_ids == [blob]):
        return False
    p = scale.layer_param.scale_param
    return (len(scale.blobs) == 1 + int(scale.bias_term) and p.axis in (1, -3) and p.num_axes == 1
            and scale.blobs[0].count == bn.channels)


def batchnorm_scale_forward(bn, scale, blob):
    """y = x * a + b in place, a = gamma / sqrt(var + eps), b = beta - mean * a:
    BatchNorm (global statistics) then Scale in two passes over the data
    instead of five.  The same values as the two layers up to float rounding."""
    xp = backend.get_xp()
    bn.reshape([blob], [blob])
    scale.reshape([blob], [blob])
    mean, std = bn.global_stats(xp)
    std += bn.eps
    xp.sqrt(std, out=std)
    a = scale.blobs[0].xdata.reshape(-1) / std
    b = -mean * a
    if scale.bias_term:
        b += scale.blobs[1].xdata.reshape(-1)
    x3 = blob.xdata.reshape(bn.shape3)
    xp.multiply(x3, a.reshape(1, -1, 1), out=x3)
    x3 += b.reshape(1, -1, 1)


@register('MVN')
class MVNLayer(Layer):
    """Mean-variance normalization per sample and channel (or per sample across
    channels): y = (x - mean) / (std + eps), or y = x - mean.

    bottom: x, (N, C, ...).  top: y, same shape.
    mvn_param: normalize_variance (true), across_channels (false), eps (1e-9, added to the std).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = F32(p.eps)
        self._std = Blob()

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes < 1:
            raise self.error('needs a bottom with at least one axis')
        num = b.shape[0] if self.across_channels else b.shape[0] * (b.shape[1] if b.num_axes > 1 else 1)
        self.num = num
        self.dim = b.count // num if num else 0
        top[0].reshape(b.shape)
        self._std.reshape((num, 1))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.num, self.dim)
        y = top[0].xdata.reshape(self.num, self.dim)
        mean = x.mean(axis=1, keepdims=True, dtype=np.float32)
        xp.subtract(x, mean, out=y)
        if self.normalize_variance:
            std = self._std.xdata
            xp.mean(y * y, axis=1, keepdims=True, dtype=np.float32, out=std)
            xp.sqrt(std, out=std)
            std += self.eps
            y /= std

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.num, self.dim)
        dx = bottom[0].xdiff.reshape(self.num, self.dim)
        if self.normalize_variance:
            y = top[0].xdata.reshape(self.num, self.dim)
            sum_dy_y = (dy * y).sum(axis=1, keepdims=True)
            sum_dy = dy.sum(axis=1, keepdims=True)
            t = y * sum_dy_y
            t += sum_dy
            t *= F32(1.0 / self.dim)
            xp.subtract(dy, t, out=dx)
            dx /= self._std.xdata
        else:
            mean = dy.mean(axis=1, keepdims=True, dtype=np.float32)
            xp.subtract(dy, mean, out=dx)
