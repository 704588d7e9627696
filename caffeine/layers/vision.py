"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, Crop.

Written once for NumPy and CuPy with ``xp = backend.get_xp()``.

- Convolution / Deconvolution: im2col of a whole chunk of images with one strided
  copy, then ONE GEMM per group (a batched matmul over the groups) over the chunk;
  1x1 convolutions with stride 1 and no pad use the input as its own column matrix
  (see :mod:`caffeine.layers.conv_engine`).  Column and padding buffers live in a shared
  workspace that grows once and is reused, as Caffe's shared column buffer.
- Pooling: MAX and AVE loop over kernel offsets only, each step one contiguous pass over
  the input's stride-phase planes (see :mod:`caffeine.layers.pool_phases`); STOCHASTIC over
  strided views; windows that cover the whole plane (global pooling) are plain reductions.
- LRN: loops over the ``local_size`` offsets only.

On the GPU, :mod:`caffeine.engines` may run Convolution, Deconvolution and Pooling on cuDNN
instead (``engine`` field, chosen in reshape / forward); the code here is the portable path.
"""
from __future__ import annotations

import numpy as np

from .. import backend, engines
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2
from ..workspace import workspace
from . import conv_engine as _ic
from .conv_engine import ConvEngine
from .pool_phases import PhasePool
from ._util import canonical_axis, shape_count

_F32 = np.float32
_FLT_MAX = float(np.finfo(np.float32).max)
_FLT_MIN = float(np.finfo(np.float32).tiny)
_PP = caffe_pb2.PoolingParameter
_LRN = caffe_pb2.LRNParameter






def _sz(t):
    return 'x'.join(str(int(v)) for v in t)


class _DeviceConsts:
    """Small per-layer arrays (index tables, divisors) built on the host and kept
    on the device of each mode they are used in; plus per-layer scratch arrays."""

    def __init__(self):
        self._host = {}
        self._dev = {}
        self._bufs = {}

    def set(self, name, host_array):
        self._host[name] = host_array
        self._dev = {k: v for k, v in self._dev.items() if k[0] != name}

    def get(self, name):
        key = (name, backend.mode(), backend.device_id())
        a = self._dev.get(key)
        if a is None:
            a = self._host[name] if not backend.is_gpu() else backend.to_device(self._host[name])
            self._dev[key] = a
        return a

    def buf(self, name, shape, dtype=_F32):
        """A persistent per-layer array of ``shape`` (allocated when the shape, dtype or mode change)."""
        key = (name, backend.mode(), backend.device_id())
        a = self._bufs.get(key)
        shape = tuple(int(s) for s in shape)
        if a is None or a.shape != shape or a.dtype != np.dtype(dtype):
            a = backend.empty(shape, dtype)
            self._bufs[key] = a
        return a


# =============================================================================
# Convolution geometry (Caffe's BaseConvolutionLayer::LayerSetUp checks)
# =============================================================================
def _spatial_values(layer, p, nsp, field, hfield, wfield, default, what):
    """kernel/stride/pad values per spatial axis from the repeated field or the _h/_w pair."""
    has_h, has_w = p.HasField(hfield), p.HasField(wfield)
    rep = list(getattr(p, field))
    if has_h or has_w:
        if nsp != 2:
            raise layer.error('%s & %s can only be used for 2D convolution (the input has %d spatial axes)'
                              % (hfield, wfield, nsp))
        if rep:
            raise layer.error('either %s or %s/%s should be specified; not both' % (field, hfield, wfield))
        if what == 'kernel' and not (has_h and has_w):
            raise layer.error('for non-square filters both kernel_h and kernel_w are required')
        return (int(getattr(p, hfield)), int(getattr(p, wfield)))
    n = len(rep)
    if what == 'kernel' and n == 0 and nsp > 0:
        raise layer.error('kernel_size must be specified')
    if n not in (0, 1, nsp):
        raise layer.error('%s must be specified once, or once per spatial dimension '
                          '(%s specified %d times; %d spatial dims)' % (field, field, n, nsp))
    if n == 0:
        return (default,) * nsp
    return tuple(int(rep[i if n > 1 else 0]) for i in range(nsp))


def _conv_geometry(layer, p, nsp):
    kernel = _spatial_values(layer, p, nsp, 'kernel_size', 'kernel_h', 'kernel_w', None, 'kernel')
    if any(k <= 0 for k in kernel):
        raise layer.error('filter dimensions must be nonzero, got kernel %s' % _sz(kernel))
    stride = _spatial_values(layer, p, nsp, 'stride', 'stride_h', 'stride_w', 1, 'stride')
    if any(s <= 0 for s in stride):
        raise layer.error('stride dimensions must be nonzero, got stride %s' % _sz(stride))
    pad = _spatial_values(layer, p, nsp, 'pad', 'pad_h', 'pad_w', 0, 'pad')
    nd = len(p.dilation)
    if nd not in (0, 1, nsp):
        raise layer.error('dilation must be specified once, or once per spatial dimension '
                          '(dilation specified %d times; %d spatial dims)' % (nd, nsp))
    dilation = tuple(int(p.dilation[i if nd > 1 else 0]) for i in range(nsp)) if nd else (1,) * nsp
    if any(d <= 0 for d in dilation):
        raise layer.error('dilation must be positive, got %s' % _sz(dilation))
    return kernel, stride, pad, dilation


# =============================================================================
# Convolution and Deconvolution
# =============================================================================
@register('Convolution')
class ConvolutionLayer(Layer):
    """N-D convolution, as Caffe's: y = W * x + b per group.

    bottom: x_i (..., C, *spatial) with the channel axis ``axis`` (1); several bottoms
    of one shape share the weights, each giving its top.
    top: y_i (..., num_output, *out), out = (in + 2 pad - (dilation (kernel - 1) + 1)) / stride + 1.
    convolution_param: num_output, bias_term (true), kernel_size / pad / stride / dilation
    (once, or once per spatial axis) or kernel_h/w, pad_h/w, stride_h/w (2-D),
    group (1), axis (1), weight_filler, bias_filler, engine (DEFAULT: cuDNN on the GPU where
    present, CAFFE: the portable engine).
    param blobs: weight (num_output, C / group, *kernel), bias (num_output,).
    """
    min_bottom = 1
    min_top = 1
    equal_num_bottom_top = True
    reverse = False  # Deconvolution swaps the roles of input and output

    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        b0 = bottom[0]
        self.axis = canonical_axis(self, b0, p.axis)
        self.num_axes = b0.num_axes
        nsp = self.num_axes - self.axis - 1
        self.kernel, self.stride, self.pad, self.dilation = _conv_geometry(self, p, nsp)
        self.channels = b0.shape[self.axis]
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error('num_output must be positive, got %d' % self.num_output)
        self.group = int(p.group)
        if self.group <= 0:
            raise self.error('group must be positive, got %d' % self.group)
        if self.channels % self.group:
            raise self.error('number of input channels %d is not a multiple of group %d'
                             % (self.channels, self.group))
        if self.num_output % self.group:
            raise self.error('num_output %d is not a multiple of group %d' % (self.num_output, self.group))
        if self.reverse:
            out_ch, in_ch = self.channels, self.num_output
        else:
            out_ch, in_ch = self.num_output, self.channels
        self.weight_shape = (out_ch, in_ch // self.group) + tuple(self.kernel)
        self.bias_term = bool(p.bias_term)
        want = [self.weight_shape] + ([(self.num_output,)] if self.bias_term else [])
        if self.blobs:
            if len(self.blobs) != len(want):
                raise self.error('incorrect number of weight blobs: %d, expected %d'
                                 % (len(self.blobs), len(want)))
            for i, (b, s) in enumerate(zip(self.blobs, want)):
                if tuple(b.shape) != s:
                    raise self.error('incorrect %s shape: expected %s; instead, shape was %s'
                                     % ('weight' if i == 0 else 'bias', list(s), list(b.shape)))
        else:
            self.blobs.append(self.new_param_blob(self.weight_shape, p.weight_filler))
            if self.bias_term:
                self.blobs.append(self.new_param_blob((self.num_output,), p.bias_filler))
        self._key = None
        self._engine_mode = None
        self.engine = None

    def _output_spatial(self, in_sp):
        out = []
        for i, (n, k, s, pd, d) in enumerate(zip(in_sp, self.kernel, self.stride, self.pad, self.dilation)):
            ext = d * (k - 1) + 1
            if self.reverse:
                o = s * (n - 1) + ext - 2 * pd
                if o <= 0:
                    raise self.error('output size %d <= 0 on spatial axis %d (input %d, kernel %d, stride %d, pad %d)'
                                     % (o, i, n, k, s, pd))
            else:
                if n + 2 * pd < ext:
                    raise self.error('kernel %s (extent %d with dilation %d) larger than padded input %d '
                                     '(input %d, pad %d) on spatial axis %d'
                                     % (_sz(self.kernel), ext, d, n + 2 * pd, n, pd, i))
                o = (n + 2 * pd - ext) // s + 1
            out.append(o)
        return tuple(out)

    def reshape(self, bottom, top):
        b0 = bottom[0]
        if b0.num_axes != self.num_axes:
            raise self.error('bottom num_axes may not change (was %d, now %d)' % (self.num_axes, b0.num_axes))
        if b0.shape[self.axis] != self.channels:
            raise self.error('input size incompatible with convolution kernel: %d channels, set up for %d'
                             % (b0.shape[self.axis], self.channels))
        for i, b in enumerate(bottom[1:], 1):
            if tuple(b.shape) != tuple(b0.shape):
                raise self.error('all inputs must have the same shape: bottom 0 is %s, bottom %d is %s'
                                 % (list(b0.shape), i, list(b.shape)))
        shape = tuple(b0.shape)
        if shape != self._key:
            self.num = shape_count(shape[:self.axis])
            self.bottom_sp = shape[self.axis + 1:]
            self.top_sp = self._output_spatial(self.bottom_sp)
            self.top_shape = shape[:self.axis] + (self.num_output,) + self.top_sp
            if self.reverse:
                self._engine_args = (self.num_output, self.channels, self.group, self.kernel, self.pad,
                                     self.stride, self.dilation, self.top_sp, self.bottom_sp, self.num)
            else:
                self._engine_args = (self.channels, self.num_output, self.group, self.kernel, self.pad,
                                     self.stride, self.dilation, self.bottom_sp, self.top_sp, self.num)
            self._key = shape
            self._engine_mode = None
        mode = (backend.mode(), backend.device_id())
        if mode != self._engine_mode:  # cuDNN or the portable engine (caffeine.engines decides)
            args = self._engine_args
            self.engine = engines.convolution(self, *args) or ConvEngine(*args)
            self._engine_mode = mode
        for t in top:
            t.reshape(self.top_shape)

    def engine_name(self):
        """The convolution engine's algorithm (winograd, im2col-<layout>, 1x1; see ConvEngine.describe),
        or ``cudnn``."""
        if self.engine is None or engines.used_by(self) == 'CUDNN':
            return super().engine_name()
        return '%s %s' % (super().engine_name(), self.engine.describe())

    def _views(self, b, t, bdiff=False, tdiff=False):
        x = (b.xdiff if bdiff else b.xdata).reshape((self.num, self.channels) + self.bottom_sp)
        y = (t.xdiff if tdiff else t.xdata).reshape((self.num, self.num_output) + self.top_sp)
        return x, y

    def forward(self, bottom, top):
        xp = backend.get_xp()
        W = self.blobs[0].xdata
        bias = self.blobs[1].xdata if self.bias_term else None
        for b, t in zip(bottom, top):
            x, y = self._views(b, t)
            if self.reverse:
                self.engine.backward_data(xp, W, x, y)
                if bias is not None:
                    y3 = y.reshape(self.num, self.num_output, -1)
                    xp.add(y3, bias.reshape(1, -1, 1), out=y3)
            else:
                self.engine.forward(xp, W, x, y, bias)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        ppd = self.param_propagate_down
        W = self.blobs[0].xdata
        for i, (b, t) in enumerate(zip(bottom, top)):
            x, dy = self._views(b, t, tdiff=True)
            if self.bias_term and ppd[1]:
                db = self.blobs[1].xdiff
                db += dy.reshape(self.num, self.num_output, -1).sum(axis=(0, 2))
            dW = tmp = dx = None
            if ppd[0]:
                dW = self.blobs[0].xdiff
                tmp = workspace('conv_dw', dW.size).reshape(dW.shape)
            if propagate_down[i]:
                dx = b.xdiff.reshape(x.shape)
            if dW is None and dx is None:
                continue
            if self.reverse:
                self.engine.deconv_backward(xp, W, dy, x, dW, tmp, dx)
            else:
                self.engine.backward(xp, W, x, dy, dW, tmp, dx)


@register('Deconvolution')
class DeconvolutionLayer(ConvolutionLayer):
    """Transposed convolution, as Caffe's: the backward pass of a Convolution as forward.

    top spatial size: stride (in - 1) + dilation (kernel - 1) + 1 - 2 pad.
    param blobs: weight (C, num_output / group, *kernel), bias (num_output,).
    """
    reverse = True


# =============================================================================
# Im2col
# =============================================================================
@register('Im2col')
class Im2colLayer(Layer):
    """Caffe's Im2col: each image's column matrix as a top.

    bottom: (..., C, *spatial), channel axis convolution_param.axis.
    top: (..., C * prod(kernel), *out), rows ordered (c, kernel offsets) as Caffe's.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.convolution_param
        self.axis = canonical_axis(self, bottom[0], p.axis)
        self.num_axes = bottom[0].num_axes
        nsp = self.num_axes - self.axis - 1
        self.kernel, self.stride, self.pad, self.dilation = _conv_geometry(self, p, nsp)
        self.channels = bottom[0].shape[self.axis]

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != self.num_axes:
            raise self.error('bottom num_axes may not change (was %d, now %d)' % (self.num_axes, b.num_axes))
        self.channels = b.shape[self.axis]
        self.num = shape_count(b.shape[:self.axis])
        self.sp = tuple(b.shape[self.axis + 1:])
        out = []
        for i, (n, k, s, pd, d) in enumerate(zip(self.sp, self.kernel, self.stride, self.pad, self.dilation)):
            ext = d * (k - 1) + 1
            if n + 2 * pd < ext:
                raise self.error('kernel %s larger than padded input %d (input %d, pad %d) on spatial axis %d'
                                 % (_sz(self.kernel), n + 2 * pd, n, pd, i))
            out.append((n + 2 * pd - ext) // s + 1)
        self.out = tuple(out)
        self.K = shape_count(self.kernel)
        top[0].reshape(tuple(b.shape[:self.axis]) + (self.channels * self.K,) + self.out)

    def _col_view(self, a):
        nd = len(self.kernel)
        v = a.reshape((self.num, self.channels) + tuple(self.kernel) + self.out)
        return v.transpose((1,) + tuple(range(2, 2 + nd)) + (0,) + tuple(range(2 + nd, 2 + 2 * nd)))

    def _pad_buf(self):
        if not any(self.pad):
            return None
        return workspace('conv_pad', self.num * self.channels * shape_count(
            [s + 2 * p for s, p in zip(self.sp, self.pad)]))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape((self.num, self.channels) + self.sp)
        _ic.im2col(xp, x, self._col_view(top[0].xdata), self.kernel, self.pad, self.stride,
                   self.dilation, self.out, self._pad_buf())

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dx = bottom[0].xdiff.reshape((self.num, self.channels) + self.sp)
        _ic.col2im(xp, self._col_view(top[0].xdiff), dx, self.kernel, self.pad, self.stride,
                   self.dilation, self.out, self._pad_buf())


# =============================================================================
# Pooling
# =============================================================================
@register('Pooling')
class PoolingLayer(Layer):
    """2-D pooling, as Caffe's: MAX (optional mask top), AVE, STOCHASTIC.

    bottom: (N, C, H, W).  top: (N, C, PH, PW) and, for MAX, optionally the mask
    (the flat index h * W + w of each maximum in its input plane, as float; -1 where
    no element is above -FLT_MAX: NaN never wins).
    PH = ceil((H + 2 pad - kernel) / stride) + 1 (floor with round_mode FLOOR, or
    OpenCV's ceil_mode: false), less one
    when padding makes the last window start outside the input + pad.
    AVE divides by the window clipped to the padded input; MAX ignores padding.
    STOCHASTIC: TRAIN samples an element of each window with probability proportional to
    its value (backend.rng()); TEST gives sum(x^2) / sum(x) over the window.
    global_pooling: the kernel is the whole plane.
    engine (DEFAULT): cuDNN on the GPU where it gives these numbers (see caffeine.engines).
    """
    exact_num_bottom = 1
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.pooling_param
        self.method = int(p.pool)
        if len(top) > 1 and self.method != _PP.MAX:
            raise self.error('only MAX pooling can output a mask top (pool %s has %d tops)'
                             % (_PP.PoolMethod.Name(self.method), len(top)))
        self.global_pooling = bool(p.global_pooling)
        has_k, has_kh, has_kw = p.HasField('kernel_size'), p.HasField('kernel_h'), p.HasField('kernel_w')
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise self.error('with global_pooling: true filter size cannot be specified')
            self.kernel = None
        else:
            if has_k and (has_kh or has_kw):
                raise self.error('filter size is kernel_size OR kernel_h and kernel_w; not both')
            if not has_k and not (has_kh and has_kw):
                raise self.error('for non-square filters both kernel_h and kernel_w are required')
            self.kernel = (int(p.kernel_size),) * 2 if has_k else (int(p.kernel_h), int(p.kernel_w))
            if min(self.kernel) <= 0:
                raise self.error('filter dimensions cannot be zero, got kernel %s' % _sz(self.kernel))
        has_p, has_ph, has_pw = p.HasField('pad'), p.HasField('pad_h'), p.HasField('pad_w')
        if not ((not has_p and has_ph and has_pw) or (not has_ph and not has_pw)):
            raise self.error('pad is pad OR pad_h and pad_w are required')
        self.pads = (int(p.pad), int(p.pad)) if not (has_ph or has_pw) else (int(p.pad_h), int(p.pad_w))
        has_s, has_sh, has_sw = p.HasField('stride'), p.HasField('stride_h'), p.HasField('stride_w')
        if not ((not has_s and has_sh and has_sw) or (not has_sh and not has_sw)):
            raise self.error('stride is stride OR stride_h and stride_w are required')
        self.strides = (int(p.stride), int(p.stride)) if not (has_sh or has_sw) else (int(p.stride_h), int(p.stride_w))
        if min(self.strides) <= 0:
            raise self.error('stride must be positive, got %s' % _sz(self.strides))
        if self.global_pooling and (any(self.pads) or self.strides != (1, 1)):
            raise self.error('with global_pooling: true only pad = 0 and stride = 1 (got pad %s, stride %s)'
                             % (_sz(self.pads), _sz(self.strides)))
        if any(self.pads):
            if self.method not in (_PP.AVE, _PP.MAX):
                raise self.error('padding implemented only for average and max pooling')
            if not self.global_pooling and (self.pads[0] >= self.kernel[0] or self.pads[1] >= self.kernel[1]):
                raise self.error('pad %s must be smaller than kernel %s' % (_sz(self.pads), _sz(self.kernel)))
        self.round_mode = int(p.round_mode)
        if p.HasField('ceil_mode'):  # OpenCV's spelling of round_mode (see protos/caffe.proto)
            mode = _PP.CEIL if p.ceil_mode else _PP.FLOOR
            if p.HasField('round_mode') and mode != self.round_mode:
                raise self.error('ceil_mode: %s contradicts round_mode: %s'
                                 % (str(p.ceil_mode).lower(), _PP.RoundMode.Name(self.round_mode)))
            self.round_mode = mode
        self._key = None
        self._c = _DeviceConsts()
        self._koff_valid = False
        self.cudnn = None  # cuDNN's pooling when caffeine.engines picks it (at forward)

    # -- geometry --------------------------------------------------------------
    def _pooled(self, n, k, p, s):
        if self.round_mode == _PP.FLOOR:
            o = (n + 2 * p - k) // s + 1
        else:
            o = -(-(n + 2 * p - k) // s) + 1
        return o

    def _configure(self, shape):
        N, C, H, W = shape
        kh, kw = (H, W) if self.global_pooling else self.kernel
        ph, pw = self.pads
        sh, sw = self.strides
        PH, PW = self._pooled(H, kh, ph, sh), self._pooled(W, kw, pw, sw)
        if ph or pw:
            if (PH - 1) * sh >= H + ph:
                PH -= 1
            if (PW - 1) * sw >= W + pw:
                PW -= 1
        # As Caffe, a kernel larger than the padded input is no error while the
        # output keeps a pixel (its windows are clipped to the input): OpenPose's
        # nets are built on a 1x1 placeholder and reshaped before their first forward.
        if PH <= 0 or PW <= 0:
            raise self.error('kernel %dx%d larger than padded input %dx%d (input %dx%d, pad %s): output %dx%d'
                             % (kh, kw, H + 2 * ph, W + 2 * pw, H, W, _sz(self.pads), PH, PW))
        self.N, self.C, self.H, self.W = N, C, H, W
        self.k = (kh, kw)
        self.PH, self.PW = PH, PW
        self.Hx = max(H + 2 * ph, (PH - 1) * sh + kh)
        self.Wx = max(W + 2 * pw, (PW - 1) * sw + kw)
        self.need_pad = (self.Hx, self.Wx) != (H, W)
        self.plane = (PH == 1 and PW == 1 and ph == 0 and pw == 0 and kh >= H and kw >= W
                      and self.method in (_PP.MAX, _PP.AVE))
        self.offsets = [(a, b) for a in range(kh) for b in range(kw)]
        nk = kh * kw
        self.koff_dtype = np.int8 if nk < 127 else (np.int16 if nk < 32000 else np.int32)  # 1 + offset
        hs = np.arange(PH) * sh - ph
        ws = np.arange(PW) * sw - pw
        # AVE: divide by the window clipped to the padded input (Caffe's pool_size)
        hsize = np.minimum(hs + kh, H + ph) - hs
        wsize = np.minimum(ws + kw, W + pw) - ws
        with np.errstate(divide='ignore'):
            inv = (1.0 / (hsize[:, None] * wsize[None, :]).astype(np.float64)).astype(_F32)
        self._c.set('inv', inv)
        # MAX: the flat index in its plane of window offset k at output (ph, pw) is
        # base[ph, pw] + delta[k] (the mask top); plane[n, c] is the plane's start
        self._c.set('base', (hs[:, None] * W + ws[None, :]).astype(np.int64))
        # delta1[1 + k]: the in-plane shift of window offset k (delta1[0] for MAX's "none")
        self._c.set('delta1', np.array([0] + [a * W + b for a, b in self.offsets], dtype=np.int64))
        self._c.set('plane', (np.arange(N * C, dtype=np.int64) * (H * W)).reshape(N, C, 1, 1))
        self.phase_pool = None if self.plane or self.method not in (_PP.MAX, _PP.AVE) else PhasePool(
            shape, self.k, self.strides, self.pads, (PH, PW), self.koff_dtype)
        self._key = tuple(shape)
        self._koff_valid = False
        self._engine_key = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.error('input must have 4 axes, corresponding to (num, channels, height, width); got shape %s'
                             % list(b.shape))
        if tuple(b.shape) != self._key:
            self._configure(tuple(b.shape))
        for t in top:
            t.reshape(self.N, self.C, self.PH, self.PW)

    # -- helpers ---------------------------------------------------------------
    def _cudnn(self, num_tops):
        """cuDNN's pooling when caffeine.engines picks it for this geometry and mode, else None."""
        key = (self._key, backend.mode(), backend.device_id(), bool(self.need_backward), num_tops)
        if key != self._engine_key:
            self.cudnn = engines.pooling(self, bool(self.need_backward), num_tops)
            self._engine_key = key
        return self.cudnn

    def _src(self, xp, x, value, name='pool_pad'):
        """x, or x padded with ``value`` to (N, C, Hx, Wx) in a workspace buffer."""
        if not self.need_pad:
            return x
        buf = workspace(name, self.N * self.C * self.Hx * self.Wx).reshape(self.N, self.C, self.Hx, self.Wx)
        _ic.pad_into(xp, x, buf, self.pads, value)
        return buf

    def _view(self, a, off):
        kh, kw = off
        sh, sw = self.strides
        return a[:, :, kh:kh + sh * (self.PH - 1) + 1:sh, kw:kw + sw * (self.PW - 1) + 1:sw]

    def _interior(self, a):
        ph, pw = self.pads
        return a[:, :, ph:ph + self.H, pw:pw + self.W]

    def _koff(self):
        return self._c.buf('koff', (self.N, self.C, self.PH, self.PW), self.koff_dtype)

    def _phase_koff(self):
        """MAX's 1 + window offsets, in the phase planes' extended layout (kept for backward)."""
        return self._c.buf('koff_ext', (self.N * self.C * self.phase_pool.L,), self.koff_dtype)

    def _index_in_plane(self, xp, koff, one_based=False):
        """The flat index h * W + w of each window's chosen element (int64 workspace);
        koff (N, C, PH, PW): the window offsets (1 + the offsets with ``one_based``)."""
        idx = workspace('pool_idx', koff.size, np.int64).reshape(koff.shape)
        delta1 = self._c.get('delta1')
        xp.take(delta1 if one_based else delta1[1:], koff, out=idx)
        xp.add(idx, self._c.get('base'), out=idx)
        return idx

    def _dpad(self, dx):
        """A zeroed gradient buffer of the padded input (dx itself when there is no padding)."""
        if self.need_pad:
            dpad = workspace('pool_dpad', self.N * self.C * self.Hx * self.Wx).reshape(
                self.N, self.C, self.Hx, self.Wx)
        else:
            dpad = dx
        dpad.fill(0)
        return dpad

    def _plane2d(self, a):
        return a.reshape(self.N * self.C, self.H * self.W)

    # -- forward ---------------------------------------------------------------
    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata
        y = top[0].xdata
        self._koff_valid = False
        pool = self._cudnn(len(top))
        if pool is not None:
            pool.forward(x, y)
            return
        want_idx = len(top) > 1 or self.phase == caffe_pb2.TRAIN
        if self.method == _PP.MAX:
            if self.plane:
                x2 = self._plane2d(x)
                y1 = y.reshape(-1)
                xp.max(x2, axis=1, out=y1)
                if want_idx:
                    koff = self._c.buf('koff_plane', (self.N * self.C,), np.int64)
                    xp.argmax(x2, axis=1, out=koff)
                    self._koff_valid = True
                    if len(top) > 1:
                        top[1].xdata.reshape(-1)[...] = koff
                return
            if not want_idx:
                self.phase_pool.max_forward(xp, x, y)
                return
            koff = self._phase_koff()
            self.phase_pool.max_forward(xp, x, y, koff)
            self._koff_valid = True
            if len(top) > 1:
                kv = self.phase_pool.koff_ext(koff)  # 1 + offset
                idx = self._index_in_plane(xp, kv, one_based=True)
                none = workspace('pool_bool', kv.size, np.bool_).reshape(kv.shape)
                xp.equal(kv, 0, out=none)
                xp.copyto(idx, -1, where=none)  # Caffe's mask where no element beat -FLT_MAX
                top[1].xdata[...] = idx
        elif self.method == _PP.AVE:
            if self.plane:
                y1 = y.reshape(-1)
                xp.sum(self._plane2d(x), axis=1, out=y1)
                y1 *= _F32(1.0 / (self.H * self.W))
                return
            self.phase_pool.ave_forward(xp, x, y, self._c.get('inv'))
        elif self.method == _PP.STOCHASTIC:
            src = self._src(xp, x, 0.0)
            if self.phase == caffe_pb2.TRAIN:
                self._stochastic_train(xp, src, y)
            else:
                s1 = self._c.buf('s1', y.shape)
                tmp = workspace('pool_tmp', y.size).reshape(y.shape)
                s1.fill(_FLT_MIN)
                y.fill(0)
                for off in self.offsets:
                    v = self._view(src, off)
                    xp.add(s1, v, out=s1)
                    xp.multiply(v, v, out=tmp)
                    xp.add(y, tmp, out=y)
                xp.divide(y, s1, out=y)
        else:
            raise self.error('unknown pooling method %d' % self.method)

    def _stochastic_train(self, xp, src, y):
        shape = y.shape
        total = workspace('pool_tmp', y.size).reshape(shape)
        total.fill(0)
        for off in self.offsets:
            xp.add(total, self._view(src, off), out=total)
        thres = backend.uniform(self._c.buf('thres', shape))
        xp.multiply(thres, total, out=thres)
        cum = total
        cum.fill(0)
        koff = self._koff()
        koff.fill(0)
        y.fill(0)
        found = workspace('pool_bool2', y.size, np.bool_).reshape(shape)
        found.fill(False)
        hit = workspace('pool_bool', y.size, np.bool_).reshape(shape)
        for k, off in enumerate(self.offsets):
            v = self._view(src, off)
            xp.add(cum, v, out=cum)
            xp.greater_equal(cum, thres, out=hit)
            xp.greater(hit, found, out=hit)  # hit and not found
            xp.copyto(koff, self.koff_dtype(k), where=hit)
            xp.copyto(y, v, where=hit)
            xp.logical_or(found, hit, out=found)
        self._koff_valid = True

    # -- backward --------------------------------------------------------------
    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff
        dx = bottom[0].xdiff
        pool = self._cudnn(len(top))
        if pool is not None:
            pool.backward(bottom[0].xdata, top[0].xdata, dy, dx)
            return
        if self.method == _PP.AVE and self.plane:
            dx2 = self._plane2d(dx)
            dx2[...] = dy.reshape(-1, 1)
            dx2 *= _F32(1.0 / (self.H * self.W))
            return
        if self.plane:  # MAX over the whole plane
            koff = self._c.buf('koff_plane', (self.N * self.C,), np.int64)
            if not self._koff_valid:
                xp.argmax(self._plane2d(bottom[0].xdata), axis=1, out=koff)
            idx = self._c.buf('plane_idx', (self.N * self.C,), np.int64)
            xp.add(koff, self._c.get('plane').reshape(-1), out=idx)
            dx.fill(0)
            dx.reshape(-1)[idx] = dy.reshape(-1)
            return
        if self.method == _PP.MAX:
            koff = self._phase_koff()
            if not self._koff_valid:  # TEST-phase forward: the argmax of the bottom, as forward's
                ymax = workspace('pool_tmp2', dy.size).reshape(dy.shape)
                self.phase_pool.max_forward(xp, bottom[0].xdata, ymax, koff)
                self._koff_valid = True
            self.phase_pool.max_backward(xp, koff, dy, dx)
            return
        if self.method == _PP.AVE:
            self.phase_pool.ave_backward(xp, self._c.get('inv'), dy, dx)
            return
        if self.method == _PP.STOCHASTIC and self.phase == caffe_pb2.TRAIN:
            # route each gradient to the element drawn
            koff = self._koff()
            add_at = getattr(xp.add, 'at', None)
            if add_at is not None:
                idx = self._index_in_plane(xp, koff)
                xp.add(idx, self._c.get('plane'), out=idx)
                xp.clip(idx, 0, dx.size - 1, out=idx)  # only a window of NaN or -inf alone could point outside
                dx.fill(0)
                add_at(dx.reshape(-1), idx.reshape(-1), dy.reshape(-1))
                return
            # an array module without ufunc.at: one masked add per window offset
            dpad = self._dpad(dx)
            tmp = workspace('pool_tmp', dy.size).reshape(dy.shape)
            eq = workspace('pool_bool', dy.size, np.bool_).reshape(dy.shape)
            for k, off in enumerate(self.offsets):
                xp.equal(koff, k, out=eq)
                xp.multiply(dy, eq, out=tmp)
                v = self._view(dpad, off)
                xp.add(v, tmp, out=v)
            if dpad is not dx:
                dx[...] = self._interior(dpad)
            return
        # STOCHASTIC, TEST phase: d/dx_i of sum(x^2) / sum(x) = (2 x_i - y) / sum(x)
        shape = dy.shape
        tmp = workspace('pool_tmp', dy.size).reshape(shape)
        dpad = self._dpad(dx)
        src = self._src(xp, bottom[0].xdata, 0.0)
        y = top[0].xdata
        g = workspace('pool_tmp2', dy.size).reshape(shape)
        xp.divide(dy, self._c.buf('s1', shape), out=g)
        for off in self.offsets:
            xv = self._view(src, off)
            xp.multiply(xv, 2, out=tmp)
            xp.subtract(tmp, y, out=tmp)
            xp.multiply(tmp, g, out=tmp)
            v = self._view(dpad, off)
            xp.add(v, tmp, out=v)
        if dpad is not dx:
            dx[...] = self._interior(dpad)


# =============================================================================
# SPP
# =============================================================================
@register('SPP')
class SPPLayer(Layer):
    """Spatial pyramid pooling, as Caffe's: pooling at levels l = 0..pyramid_height-1
    with 2^l x 2^l bins (kernel = ceil(H / bins), stride = kernel,
    pad = (kernel * bins - H + 1) / 2), each flattened, then concatenated on axis 1.
    With pyramid_height 1 the top is the single pooling output (N, C, 1, 1).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.spp_param
        self.height = int(p.pyramid_height)
        if self.height < 1:
            raise self.error('pyramid_height must be at least 1, got %d' % self.height)
        self.pool = int(p.pool)
        self._key = None

    def _pool_param(self, level, H, W):
        bins = 2 ** level
        kh = -(-H // bins)
        kw = -(-W // bins)
        ph = (kh * bins - H + 1) // 2
        pw = (kw * bins - W + 1) // 2
        lp = caffe_pb2.LayerParameter()
        lp.name = '%s_pool%d' % (self.name, level)
        lp.type = 'Pooling'
        pp = lp.pooling_param
        pp.pool = self.pool
        pp.kernel_h, pp.kernel_w = kh, kw
        pp.stride_h, pp.stride_w = kh, kw
        pp.pad_h, pp.pad_w = ph, pw
        return lp

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.error('input must have 4 axes, corresponding to (num, channels, height, width); got shape %s'
                             % list(b.shape))
        shape = tuple(b.shape)
        if shape != self._key:
            N, C, H, W = shape
            self.pools, self.tops = [], []
            for level in range(self.height):
                layer = PoolingLayer(self._pool_param(level, H, W), self.phase)
                t = top[0] if self.height == 1 else Blob()
                layer.SetUp([b], [t])
                self.pools.append(layer)
                self.tops.append(t)
            self.sizes = [t.count // max(N, 1) for t in self.tops]
            self._grad = Blob()
            self._key = shape
        if self.height == 1:
            self.pools[0].reshape(bottom, top)
            return
        for layer, t in zip(self.pools, self.tops):
            layer.reshape(bottom, [t])
        top[0].reshape(shape[0], sum(self.sizes))

    def forward(self, bottom, top):
        if self.height == 1:
            self.pools[0].forward(bottom, top)
            return
        y = top[0].xdata
        o = 0
        for layer, t, s in zip(self.pools, self.tops, self.sizes):
            layer.forward(bottom, [t])
            y[:, o:o + s] = t.xdata.reshape(y.shape[0], s)
            o += s

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.height == 1:
            self.pools[0].backward(top, propagate_down, bottom)
            return
        dy = top[0].xdiff
        g = self._grad
        g.reshape(bottom[0].shape)
        g.share_data(bottom[0])
        dx = bottom[0].xdiff
        o = 0
        for i, (layer, t, s) in enumerate(zip(self.pools, self.tops, self.sizes)):
            t.xdiff[...] = dy[:, o:o + s].reshape(t.shape)
            o += s
            if i == 0:
                layer.backward([t], [True], bottom)
            else:
                layer.backward([t], [True], [g])
                dx += g.xdiff


# =============================================================================
# LRN
# =============================================================================
@register('LRN')
class LRNLayer(Layer):
    """Local response normalization, as Caffe's.

    ACROSS_CHANNELS: y = x (k + alpha / n * sum_{c' in window(c)} x_{c'}^2)^-beta,
    the window of n = local_size channels centred on c.
    WITHIN_CHANNEL: y = x (1 + alpha / n^2 * sum_{n x n window} x^2)^-beta (zero-padded,
    k not used), as Caffe builds it from Power, AVE Pooling and Eltwise layers.
    bottom/top: (N, C, H, W).  local_size must be odd.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise self.error('LRN only supports odd values for local_size, got %d' % self.size)
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = int(p.norm_region)
        self.pre_pad = (self.size - 1) // 2
        self._c = _DeviceConsts()

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise self.error('input must have 4 axes, corresponding to (num, channels, height, width); got shape %s'
                             % list(b.shape))
        self.shape = tuple(b.shape)
        top[0].reshape(self.shape)

    def _box(self, xp, src, out, name):
        """out = the zero-padded local sum of src (across channels, or size x size within)."""
        N, C, H, W = self.shape
        p, n = self.pre_pad, self.size
        if self.region == _LRN.ACROSS_CHANNELS:
            pad = workspace(name, N * (C + n - 1) * H * W).reshape(N, C + n - 1, H, W)
            if p:
                pad[:, :p] = 0
                pad[:, p + C:] = 0
            pad[:, p:p + C] = src
            out[...] = pad[:, 0:C]
            for i in range(1, n):
                xp.add(out, pad[:, i:i + C], out=out)
        else:
            pad = workspace(name, N * C * (H + n - 1) * (W + n - 1)).reshape(N, C, H + n - 1, W + n - 1)
            _ic.pad_into(xp, src, pad, (p, p), 0.0)
            rows = workspace(name + '_rows', N * C * H * (W + n - 1)).reshape(N, C, H, W + n - 1)
            rows[...] = pad[:, :, 0:H]
            for i in range(1, n):
                xp.add(rows, pad[:, :, i:i + H], out=rows)
            out[...] = rows[:, :, :, 0:W]
            for j in range(1, n):
                xp.add(out, rows[:, :, :, j:j + W], out=out)
        return out

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata
        y = top[0].xdata
        scale = self._c.buf('scale', self.shape)
        sq = workspace('lrn_sq', x.size).reshape(self.shape)
        xp.multiply(x, x, out=sq)
        self._box(xp, sq, scale, 'lrn_pad')
        if self.region == _LRN.ACROSS_CHANNELS:
            scale *= _F32(self.alpha / self.size)
            scale += _F32(self.k)
        else:
            scale *= _F32(self.alpha / (self.size * self.size))
            scale += _F32(1.0)
        xp.power(scale, _F32(-self.beta), out=sq)
        xp.multiply(x, sq, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = bottom[0].xdata
        y = top[0].xdata
        dy = top[0].xdiff
        dx = bottom[0].xdiff
        scale = self._c.buf('scale', self.shape)
        ratio = workspace('lrn_sq', x.size).reshape(self.shape)
        acc = workspace('lrn_acc', x.size).reshape(self.shape)
        xp.multiply(dy, y, out=ratio)
        xp.divide(ratio, scale, out=ratio)
        self._box(xp, ratio, acc, 'lrn_pad')
        n = self.size if self.region == _LRN.ACROSS_CHANNELS else self.size * self.size
        acc *= x
        acc *= _F32(2.0 * self.alpha * self.beta / n)
        xp.power(scale, _F32(-self.beta), out=ratio)
        xp.multiply(dy, ratio, out=dx)
        xp.subtract(dx, acc, out=dx)


# =============================================================================
# Crop
# =============================================================================
@register('Crop')
class CropLayer(Layer):
    """Crop bottom 0 to the shape of bottom 1 from axis ``axis`` on, as Caffe's.

    crop_param: axis (2), offset (none: 0; one: for every cropped axis; else one per
    axis from ``axis`` on).  top: bottom 0's leading axes, bottom 1's from ``axis``.
    Back-propagates to bottom 0 only (bottom 1 gives the shape).
    """
    exact_num_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.crop_param
        if bottom[0].num_axes != bottom[1].num_axes:
            raise self.error('bottom[0] and bottom[1] must have the same number of axes (%d vs %d)'
                             % (bottom[0].num_axes, bottom[1].num_axes))
        self.axis = canonical_axis(self, bottom[0], p.axis)
        n = bottom[0].num_axes
        if len(p.offset) > 1 and self.axis + len(p.offset) != n:
            raise self.error('number of offset values specified must be equal to the number of dimensions '
                             'following axis (%d offsets, axis %d, %d axes)' % (len(p.offset), self.axis, n))

    def reshape(self, bottom, top):
        p = self.layer_param.crop_param
        a, b = bottom
        if a.num_axes != b.num_axes:
            raise self.error('bottom[0] and bottom[1] must have the same number of axes (%d vs %d)'
                             % (a.num_axes, b.num_axes))
        shape, sl = [], []
        for i in range(a.num_axes):
            if i < self.axis:
                shape.append(a.shape[i])
                sl.append(slice(None))
                continue
            off = 0
            if len(p.offset) == 1:
                off = int(p.offset[0])
            elif len(p.offset) > 1:
                off = int(p.offset[i - self.axis])
            if a.shape[i] - off < b.shape[i]:
                raise self.error('invalid crop parameters in dimension %d: offset %d + size %d exceeds %d'
                                 % (i, off, b.shape[i], a.shape[i]))
            shape.append(b.shape[i])
            sl.append(slice(off, off + b.shape[i]))
        self.slices = tuple(sl)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].xdata[...] = bottom[0].xdata[self.slices]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].xdiff
            dx.fill(0)
            dx[self.slices] = top[0].xdiff
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].xdiff.fill(0)
