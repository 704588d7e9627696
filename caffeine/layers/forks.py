"""Layers of Caffe's forks that deployed models still need.

- Interp and BN (hszhao/PSPNet; Interp from DeepLab): bilinear resize with
  aligned corners, and batch normalization with its own scale and shift;
- ShuffleChannel (farmingyard/ShuffleNet) and ConvolutionDepthwise (the
  depthwise-convolution forks ShuffleNet and MobileNet use);
- Axpy (SENet's forks): a * x + y with a per channel;
- Upsample (SegNet's forks): unpooling with the max-pooling mask;
- ReLU6 (OpenCV dnn's): min(max(x, 0), 6).

The field numbers of their parameters, and where they collide with BVLC's,
are documented in protos/caffe.proto.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2
from .neuron import NeuronLayer
from .vision import ConvolutionLayer

_F32 = np.float32


def _fork_param(layer, name, cls, collided):
    """``layer_param.<name>``; when it is unset but the BVLC field that shares the
    fork's number (``collided``) holds only unknown fields, as a binary model from
    the fork parses, the fork's parameters decoded from there."""
    lp = layer.layer_param
    if lp.HasField(name) or not lp.HasField(collided):
        return getattr(lp, name)
    other = getattr(lp, collided)
    if other.ListFields():
        return getattr(lp, name)
    return cls.FromString(other.SerializeToString())


def _interp_matrix(n_out, n_eff, n_in, offset):
    """(n_out, n_in) weights of the fork's aligned-corner bilinear resize of the
    n_eff inputs starting at ``offset`` (float32 coordinates as the fork)."""
    r = _F32(n_eff - 1) / _F32(n_out - 1) if n_out > 1 else _F32(0)
    pos = r * np.arange(n_out, dtype=_F32)
    i0 = pos.astype(np.int64)
    lam1 = pos - i0.astype(_F32)
    lam0 = _F32(1) - lam1
    step = (i0 < n_eff - 1).astype(np.int64)
    m = np.zeros((n_out, n_in), _F32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, offset + i0), lam0)
    np.add.at(m, (rows, offset + i0 + step), lam1)
    return m


@register('Interp')
class InterpLayer(Layer):
    """Bilinear resize with aligned corners (PSPNet's Interp).

    The input, cropped by pad_beg / pad_end (<= 0) to H' = H + pad_beg + pad_end,
    is resized to (H_out, W_out) so that corner pixels map onto corner pixels:
    y = A_h x A_w^T with A the per-axis interpolation weights.
    Output size: zoom_factor z: H' + (H' - 1)(z - 1); shrink_factor s: (H' - 1) / s + 1;
    height and width; or the second bottom's spatial size (exactly one of these).

    bottom[0]: x (N, C, H, W); bottom[1] (optional): a blob of the output size.
    top: (N, C, H_out, W_out).
    interp_param: height (0), width (0), zoom_factor (1), shrink_factor (1),
    pad_beg (0), pad_end (0).
    """
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1
    allow_force_backward_bottoms = {0}

    def setup(self, bottom, top):
        p = _fork_param(self, 'interp_param', caffe_pb2.InterpParameter, 'input_param')
        self.p = p
        specs = (p.HasField('zoom_factor') + p.HasField('shrink_factor')
                 + (p.HasField('height') and p.HasField('width')) + (len(bottom) == 2))
        if specs != 1:
            raise self.error('give the output size one way: zoom_factor, shrink_factor, height and width, '
                             'or a second bottom (got %d)' % specs)
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.error('pad_beg and pad_end must be <= 0 (cropping), got %d and %d' % (p.pad_beg, p.pad_end))
        if p.HasField('zoom_factor') and p.zoom_factor < 1:
            raise self.error('zoom_factor must be >= 1, got %d' % p.zoom_factor)
        if p.HasField('shrink_factor') and p.shrink_factor < 1:
            raise self.error('shrink_factor must be >= 1, got %d' % p.shrink_factor)
        self._key = None

    def reshape(self, bottom, top):
        x = bottom[0]
        if len(x.shape) != 4:
            raise self.error('bottom %s must be 4-D (N, C, H, W)' % (tuple(x.shape),))
        p = self.p
        N, C, H, W = x.shape
        he, we = H + p.pad_beg + p.pad_end, W + p.pad_beg + p.pad_end
        if p.HasField('zoom_factor'):
            ho, wo = he + (he - 1) * (p.zoom_factor - 1), we + (we - 1) * (p.zoom_factor - 1)
        elif p.HasField('shrink_factor'):
            ho, wo = (he - 1) // p.shrink_factor + 1, (we - 1) // p.shrink_factor + 1
        elif len(bottom) == 2:
            ho, wo = bottom[1].shape[-2], bottom[1].shape[-1]
        else:
            ho, wo = int(p.height), int(p.width)
        if he <= 0 or we <= 0 or ho <= 0 or wo <= 0:
            raise self.error('input %dx%d (cropped to %dx%d) and output %dx%d must be positive'
                             % (H, W, he, we, ho, wo))
        top[0].reshape(N, C, ho, wo)
        key = (H, W, ho, wo)
        if key != self._key:
            self._ah = backend.to_device(_interp_matrix(ho, he, H, -p.pad_beg))
            self._aw_t = backend.to_device(np.ascontiguousarray(_interp_matrix(wo, we, W, -p.pad_beg).T))
            self._key = key

    def forward(self, bottom, top):
        xp = backend.get_xp()
        t = xp.matmul(self._ah, bottom[0].xdata)
        xp.matmul(t, self._aw_t, out=top[0].xdata)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        t = xp.matmul(self._ah.T, top[0].xdiff)
        xp.matmul(t, self._aw_t.T, out=bottom[0].xdiff)


@register('BN')
class BNLayer(Layer):
    """PSPNet's batch normalization with its own scale and shift, per channel.

    y = slope * (x - mean) / sqrt(var + eps) + bias.  frozen, or TEST: mean and var
    are the stored ones; TRAIN (not frozen): those of the batch (over N, H, W),
    and the stored ones move: s = (1 - momentum) * batch + momentum * s.

    bottom: x (N, C, H, W).  top: y, same shape; in place allowed.
    bn_param: slope_filler, bias_filler, momentum (0.9), eps (1e-5), frozen (false).
    param blobs (1, C, 1, 1) each: slope, bias, mean, var (mean and var never
    learned; with frozen neither are slope and bias: the fork sets their lr_mult to 0).
    Backward: frozen, dx = dy slope / sqrt(var + eps); otherwise the batch
    statistics' full gradient, and slope and bias gradients.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.bn_param
        self.frozen = bool(p.frozen)
        self.momentum = _F32(p.momentum)
        self.eps = _F32(p.eps)
        if len(bottom[0].shape) != 4:
            raise self.error('bottom %s must be 4-D (N, C, H, W)' % (tuple(bottom[0].shape),))
        C = bottom[0].shape[1]
        shape = (1, C, 1, 1)
        if not self.blobs:
            self.blobs.append(self.new_param_blob(shape, p.slope_filler))
            self.blobs.append(self.new_param_blob(shape, p.bias_filler))
            self.blobs.append(self.new_param_blob(shape))
            self.blobs[2].xdata.fill(0)
            self.blobs.append(self.new_param_blob(shape))
            self.blobs[3].xdata.fill(1 if self.frozen else 0)
        if len(self.blobs) != 4 or any(b.count != C for b in self.blobs):
            raise self.error('expects 4 parameter blobs of %d values (slope, bias, mean, var), got %s'
                             % (C, [tuple(b.shape) for b in self.blobs]))
        # as the fork: the running statistics (and, frozen, slope and bias) are not learned
        lp = self.layer_param
        while len(lp.param) < 4:
            lp.param.add()
        for i in ((0, 1, 2, 3) if self.frozen else (2, 3)):
            lp.param[i].lr_mult = 0
            lp.param[i].decay_mult = 0
        self.C = C
        self._x_norm = Blob()

    def reshape(self, bottom, top):
        if bottom[0].shape[1] != self.C or len(bottom[0].shape) != 4:
            raise self.error('bottom %s: the layer was set up for (N, %d, H, W)' % (tuple(bottom[0].shape), self.C))
        top[0].reshape(bottom[0].shape)
        if not self.frozen and self.need_backward:
            self._x_norm.reshape(bottom[0].shape)

    def _uses_stored(self):
        return self.frozen or self.phase == caffe_pb2.TEST

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        slope, bias = self.blobs[0].xdata, self.blobs[1].xdata
        if self._uses_stored():
            mean, var = self.blobs[2].xdata, self.blobs[3].xdata
        else:
            mean = x.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float32)
            var = xp.square(x - mean).mean(axis=(0, 2, 3), keepdims=True, dtype=np.float32)
            m = self.momentum
            stored_mean, stored_var = self.blobs[2].xdata, self.blobs[3].xdata
            stored_mean *= m
            stored_mean += (_F32(1) - m) * mean
            stored_var *= m
            stored_var += (_F32(1) - m) * var
        inv_std = (var + self.eps) ** _F32(-0.5)
        xp.subtract(x, mean, out=y)
        y *= inv_std
        if not self.frozen and self.need_backward:
            self._x_norm.xdata[...] = y
            self._inv_std = inv_std
        y *= slope
        y += bias

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff
        slope = self.blobs[0].xdata
        if self.frozen:
            if propagate_down[0]:
                inv_std = (self.blobs[3].xdata + self.eps) ** _F32(-0.5)
                xp.multiply(dy, slope * inv_std, out=bottom[0].xdiff)
            return
        xn = self._x_norm.xdata
        axes = (0, 2, 3)
        if self.param_propagate_down[0]:
            d_slope = self.blobs[0].xdiff
            d_slope += (dy * xn).sum(axis=axes, keepdims=True)
        if self.param_propagate_down[1]:
            d_bias = self.blobs[1].xdiff
            d_bias += dy.sum(axis=axes, keepdims=True)
        if propagate_down[0]:
            g = dy * slope
            m = _F32(dy.shape[0] * dy.shape[2] * dy.shape[3])
            sum_g = g.sum(axis=axes, keepdims=True)
            sum_gx = (g * xn).sum(axis=axes, keepdims=True)
            dx = bottom[0].xdiff
            xp.multiply(xn, sum_gx, out=dx)
            dx += sum_g
            dx *= _F32(-1) / m
            dx += g
            dx *= self._inv_std


@register('ShuffleChannel')
class ShuffleChannelLayer(Layer):
    """Channel shuffle (ShuffleNet): channels seen as (group, C / group) are
    transposed to (C / group, group): y[:, j * group + i] = x[:, i * (C / group) + j].

    bottom: x (N, C, ...).  top: y, same shape; in place allowed.
    shuffle_channel_param: group (1); C must be a multiple of group.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        self.group = int(self.layer_param.shuffle_channel_param.group)
        if self.group <= 0:
            raise self.error('group must be positive, got %d' % self.group)
        self._buf = Blob()

    def reshape(self, bottom, top):
        s = tuple(bottom[0].shape)
        if len(s) < 2 or s[1] % self.group:
            raise self.error('bottom %s: channels must be a multiple of group %d' % (s, self.group))
        top[0].reshape(s)
        if bottom[0] is top[0]:
            self._buf.reshape(s)

    def _shuffle(self, src, dst, group):
        n, c = src.shape[0], src.shape[1]
        rest = src.shape[2:]
        if dst is src:
            tmp = self._buf.xdata
            tmp[...] = src
            src = tmp
        dst.reshape((n, c // group, group) + rest)[...] = (
            src.reshape((n, group, c // group) + rest).swapaxes(1, 2))

    def forward(self, bottom, top):
        self._shuffle(bottom[0].xdata, top[0].xdata, self.group)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            c = top[0].shape[1]
            self._shuffle(top[0].xdiff, bottom[0].xdiff, c // self.group)


@register('ConvolutionDepthwise')
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """Depthwise convolution, the forks' layer: a Convolution with group = C.

    bottom: x (N, C, H, W).  top: (N, C, H_out, W_out).
    convolution_param as Convolution's; num_output (C) must equal C, and group
    is taken as C whatever its value.
    param blobs: weight (C, 1, kh, kw), bias (C,).
    """

    def setup(self, bottom, top):
        c = bottom[0].shape[1] if len(bottom[0].shape) > 1 else 0
        p = self.layer_param.convolution_param
        if p.num_output and p.num_output != c:
            raise self.error('num_output %d must equal the %d input channels of a depthwise convolution'
                             % (p.num_output, c))
        orig = self.layer_param
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(orig)
        lp.convolution_param.num_output = c
        lp.convolution_param.group = c
        self.layer_param = lp
        try:
            super().setup(bottom, top)
        finally:
            self.layer_param = orig


@register('Axpy')
class AxpyLayer(Layer):
    """top = a * x + y, a one scale per sample and channel (SENet's forks).

    bottom[0]: a (N, C) or (N, C, 1, 1).  bottom[1]: x (N, C, H, W).
    bottom[2]: y, x's shape.  top: x's shape.
    """
    exact_num_bottom = 3
    exact_num_top = 1

    def reshape(self, bottom, top):
        a, x, y = (tuple(b.shape) for b in bottom)
        if x != y:
            raise self.error('x %s and y %s must have the same shape' % (x, y))
        if len(x) < 2 or bottom[0].count != x[0] * x[1] or a[:2] != x[:2]:
            raise self.error('a %s must be (N, C) or (N, C, 1, 1) for x %s' % (a, x))
        top[0].reshape(x)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[1].xdata
        a = bottom[0].xdata.reshape(x.shape[:2] + (1,) * (x.ndim - 2))
        out = top[0].xdata
        if out is bottom[2].xdata:
            out += a * x
        else:
            xp.multiply(a, x, out=out)
            out += bottom[2].xdata

    def backward(self, top, propagate_down, bottom):
        x = bottom[1].xdata
        shape = x.shape[:2] + (1,) * (x.ndim - 2)
        a = bottom[0].xdata.reshape(shape)
        d = top[0].xdiff
        if propagate_down[0]:
            bottom[0].xdiff[...] = (d * x).sum(axis=tuple(range(2, x.ndim))).reshape(bottom[0].shape)
        if propagate_down[1]:
            bottom[1].xdiff[...] = d * a
        if propagate_down[2] and bottom[2].xdiff is not d:
            bottom[2].xdiff[...] = d


@register('Upsample')
class UpsampleLayer(Layer):
    """Max unpooling (SegNet): each input value goes to the position its
    pooling mask names in its channel's output plane; the rest is 0.

    bottom[0]: x (N, C, H, W).  bottom[1]: mask, x's shape: flat indices
    h * W_out + w into the output plane (the MAX pooling layer's second top).
    top: (N, C, H_out, W_out): upsample_h x upsample_w when given, else
    H * scale_h - pad_out_h (W likewise).
    upsample_param: scale (2), scale_h, scale_w (scale), pad_out_h (false),
    pad_out_w (false), upsample_h, upsample_w.
    """
    exact_num_bottom = 2
    exact_num_top = 1
    allow_force_backward_bottoms = {0}

    def setup(self, bottom, top):
        p = _fork_param(self, 'upsample_param', caffe_pb2.UpsampleParameter, 'swish_param')
        self.p = p
        self.scale_h = int(p.scale_h) if p.HasField('scale_h') else int(p.scale)
        self.scale_w = int(p.scale_w) if p.HasField('scale_w') else int(p.scale)
        if self.scale_h <= 0 or self.scale_w <= 0:
            raise self.error('scale must be positive, got %d x %d' % (self.scale_h, self.scale_w))

    def reshape(self, bottom, top):
        x, m = tuple(bottom[0].shape), tuple(bottom[1].shape)
        if len(x) != 4 or x != m:
            raise self.error('x %s must be 4-D and the mask %s of the same shape' % (x, m))
        p = self.p
        if p.upsample_h and p.upsample_w:
            ho, wo = int(p.upsample_h), int(p.upsample_w)
        else:
            ho, wo = x[2] * self.scale_h - int(p.pad_out_h), x[3] * self.scale_w - int(p.pad_out_w)
        top[0].reshape(x[0], x[1], ho, wo)

    def _index(self, bottom, top):
        xp = backend.get_xp()
        n, c, h, w = bottom[0].shape
        plane = top[0].shape[2] * top[0].shape[3]
        idx = bottom[1].xdata.reshape(n * c, h * w).astype(np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= plane):
            raise self.error('mask index %d outside the %dx%d output plane'
                             % (int(idx.max()) if int(idx.max()) >= plane else int(idx.min()),
                                top[0].shape[2], top[0].shape[3]))
        return xp, idx

    def forward(self, bottom, top):
        xp, idx = self._index(bottom, top)
        n, c = bottom[0].shape[:2]
        y = top[0].xdata.reshape(n * c, -1)
        y.fill(0)
        y[xp.arange(n * c)[:, None], idx] = bottom[0].xdata.reshape(n * c, -1)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp, idx = self._index(bottom, top)
        n, c = bottom[0].shape[:2]
        bottom[0].xdiff.reshape(n * c, -1)[...] = xp.take_along_axis(top[0].xdiff.reshape(n * c, -1), idx, axis=1)


@register('ReLU6')
class ReLU6Layer(NeuronLayer):
    """y = min(max(x, 0), 6); the gradient passes where 0 < x < 6.

    bottom: x, any shape.  top: y, same shape; in place allowed.  No parameters.
    """

    def backward_reads_input(self):
        return True

    def neuron_forward(self, bottom, top):
        backend.get_xp().clip(bottom[0].xdata, _F32(0), _F32(6), out=top[0].xdata)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = self._input(bottom)
        xp.multiply(top[0].xdiff, (x > 0) & (x < 6), out=bottom[0].xdiff)
