"""Engines: where a layer runs on cuDNN, and where on the portable ``xp`` path; decided here only.

As Caffe's layer factory: a layer's ``engine`` field (``DEFAULT``, ``CAFFE``, ``CUDNN``)
asks, and cuDNN runs when caffeine is in GPU mode and CuPy has cuDNN
(``backend.cudnn()``); ``engine: CAFFE`` forces the portable path.  ``engine: CUDNN``
without a GPU runs the portable path (Caffe's CPU-only build refuses the layer; a
caffeine net is written once for both).  ``CAFFEINE_ENGINE=CAFFE`` (or ``CUDNN``) in the
environment overrides every layer's field, to compare the engines on one net.

What cuDNN runs (and why the rest stays on the portable path):

- Convolution and Deconvolution with 2 or 3 spatial axes: forward, backward to the data
  and to the weights (``cupyx.cudnn.convolution_*``), groups and dilation included.
  cuDNN's choice of algorithm is cached by CuPy per (device, shapes, pad, stride,
  workspace limit), i.e. per shape as Caffe's CuDNNConvolutionLayer::Reshape chooses it;
  the workspace is bounded by ``CAFFEINE_CONV_WORKSPACE_MB`` (the column buffer's bound of
  the portable engine).  ``CAFFEINE_CUDNN_AUTOTUNE=1`` times the algorithms (cudnnFind)
  in place of cuDNN's heuristics.  Tensor cores (TF32) are never asked for: float32 stays float32.
- Pooling, 2-D, when cuDNN's windows are Caffe's: the output size is the floor one
  (Caffe's ceil adds windows that hang past the padded input; cuDNN's would count
  differently) and pad < kernel.  AVE as ``AVERAGE_COUNT_INCLUDE_PADDING`` (Caffe divides by
  the window clipped to the padded input: the whole window at floor size).  MAX only
  where no backward will be asked and no mask top is wanted: cuDNN's backward picks
  among tied maxima its own way, Caffe's the first (Caffe's factory keeps MAX on its
  own engine too).  STOCHASTIC: portable.
- Softmax: ``cupyx.cudnn.softmax_forward/backward`` (ACCURATE: the max subtracted, as Caffe's),
  also the softmax inside SoftmaxWithLoss and InfogainLoss (Caffe's inner Softmax layer).
  Most of Caffe's nets pool at the ceil output size (CIFAR10-quick's AVE pools, every MAX
  pool with backward), so their pooling stays portable; their convolutions and softmax do not.
- BatchNorm (BVLC's BatchNormParameter has no ``engine`` field: ``CAFFEINE_ENGINE`` alone
  forces the portable path): normalization by ``cupyx.cudnn.batch_normalization_*`` in
  SPATIAL mode (over N and the spatial axes) with scale 1 and bias 0, i.e. Caffe's
  y = (x - mean) / sqrt(var + eps) with the biased batch variance.  Caffe's statistics are
  not cuDNN's exponential averages but three blobs of running sums (s = maf s + 1,
  mean_sum = maf mean_sum + mean, var_sum = maf var_sum + m/(m-1) var), so cuDNN runs with
  the averaging factor 1: its "running" mean and variance are then this batch's mean and
  its unbiased (m/(m-1)) variance, which the layer adds into Caffe's blobs itself.  With
  global statistics cuDNN's inference call normalizes by mean_sum / s and var_sum / s.
  Portable where cuDNN cannot give Caffe's numbers: eps below cuDNN's CUDNN_BN_MIN_EPSILON,
  and batch statistics over m = 1 value per channel (Caffe's correction is 1 there, cuDNN's
  m/(m-1) divides by zero).
- LRN: portable.  cuDNN's cross-channel LRN is Caffe's ACROSS_CHANNELS formula (Caffe's
  CuDNNLRNLayer passes local_size, alpha, beta and k unchanged; cuDNN divides alpha by the
  window), but CuPy 13 binds no cuDNN LRN call (only the constant
  CUDNN_LRN_CROSS_CHANNEL_DIM1; no LRN descriptor, no lrnCrossChannelForward/Backward), and
  caffeine binds no cuDNN function of its own.  WITHIN_CHANNEL has no cuDNN form (Caffe
  builds it from layers).
"""
from __future__ import annotations

import os

from . import backend
from .proto import caffe_pb2
from .workspace import limit_floats

DEFAULT, CAFFE, CUDNN = 0, 1, 2  # every *Parameter.Engine enum of caffe.proto
_NAMES = {'DEFAULT': DEFAULT, 'CAFFE': CAFFE, 'CUDNN': CUDNN}
_PP = caffe_pb2.PoolingParameter


def requested(engine_field):
    """The engine asked for: ``CAFFEINE_ENGINE`` if set, else the layer's field."""
    env = os.environ.get('CAFFEINE_ENGINE', '').strip().upper()
    if env:
        if env not in _NAMES:
            raise backend.BackendError('CAFFEINE_ENGINE must be CAFFE, CUDNN or DEFAULT, got %r' % env)
        return _NAMES[env]
    return int(engine_field)


def use_cudnn(engine_field, cudnn_present):
    """Whether a layer whose field says ``engine_field`` runs on cuDNN."""
    return cudnn_present and requested(engine_field) != CAFFE


def _cudnn_for(engine_field):
    """The (cupy.cuda.cudnn, cupyx.cudnn) pair when this layer is to use it, else None."""
    mods = backend.cudnn()
    return mods if use_cudnn(engine_field, mods is not None) else None


def used_by(layer):
    """'CUDNN' when the layer's last reshape/forward ran (or will run) on cuDNN, else 'CAFFE' (for
    per-layer reports such as ``caffeine time``).  Layers keep their cuDNN object in ``engine``
    (Convolution, Deconvolution) or ``cudnn`` (Pooling, Softmax, BatchNorm)."""
    for attr in ('engine', 'cudnn'):
        if getattr(getattr(layer, attr, None), 'name', None) == 'CUDNN':
            return 'CUDNN'
    return 'CAFFE'


def workspace_bytes():
    """cuDNN's workspace bound: the portable engine's column-buffer bound, in bytes."""
    return limit_floats() * 4


def _autotune():
    return os.environ.get('CAFFEINE_CUDNN_AUTOTUNE') == '1'


# =============================================================================
# Convolution
# =============================================================================
def convolution(layer, in_ch, out_ch, group, kernel, pad, stride, dilation, in_sp, out_sp, num):
    """A :class:`CudnnConvolution` for ``layer`` (Convolution or Deconvolution) when cuDNN is to
    run it, else None (the caller builds the portable ``ConvEngine`` from the same arguments)."""
    mods = _cudnn_for(layer.layer_param.convolution_param.engine)
    if mods is None or len(kernel) not in (2, 3):
        return None
    return CudnnConvolution(mods, in_ch, out_ch, group, kernel, pad, stride, dilation, in_sp, out_sp, num)


class CudnnConvolution:
    """The convolution GEMMs of ``ConvEngine``, by cuDNN, with ``ConvEngine``'s interface.

    The input side x is (N, in_ch, *in_sp), the output side y (N, out_ch, *out_sp), the
    weight (out_ch, in_ch / group, *kernel) (Deconvolution: the input side is its top).
    cuDNN overwrites what it writes; Caffe's weight gradient accumulates, so it is
    computed into ``dW_tmp`` and added.  Built from ``ConvEngine``'s arguments; cuDNN reads
    the shapes from the arrays (CuPy caches its algorithm per shape).
    """
    name = 'CUDNN'

    def __init__(self, mods, in_ch, out_ch, group, kernel, pad, stride, dilation, in_sp, out_sp, num):
        self.cx = mods[1]
        self.G = int(group)
        self.pad = tuple(int(v) for v in pad)
        self.stride = tuple(int(v) for v in stride)
        self.dilation = tuple(int(v) for v in dilation)
        self.auto_tune = _autotune()
        self.cx.set_max_workspace_size(workspace_bytes())

    def _geometry(self):
        return self.pad, self.stride, self.dilation, self.G

    def forward(self, xp, W, x, y, bias=None):
        """y = W * x (+ bias)."""
        self.cx.convolution_forward(x, W, bias, y, *self._geometry(),
                                    auto_tune=self.auto_tune, tensor_core='never')
        return y

    def backward_data(self, xp, W, dy, dx):
        """dx = the gradient of W * x with respect to x, for dy (overwrites dx)."""
        self.cx.convolution_backward_data(W, dy, None, dx, *self._geometry(), deterministic=False,
                                          auto_tune=self.auto_tune, tensor_core='never')
        return dx

    def _weight_grad(self, xp, x, dy, dW, dW_tmp):
        tmp = dW_tmp.reshape(dW.shape)
        self.cx.convolution_backward_filter(x, dy, tmp, *self._geometry(), deterministic=False,
                                            auto_tune=self.auto_tune, tensor_core='never')
        xp.add(dW, tmp, out=dW)

    def backward(self, xp, W, x, dy, dW=None, dW_tmp=None, dx=None):
        """Convolution's backward: dW += dy * x^T, dx = W^T * dy (each when given)."""
        if dW is not None:
            self._weight_grad(xp, x, dy, dW, dW_tmp)
        if dx is not None:
            self.backward_data(xp, W, dy, dx)

    def deconv_backward(self, xp, W, dtop, bottom, dW=None, dW_tmp=None, dbottom=None):
        """Deconvolution's backward: dW += bottom * dtop^T, dbottom = W * dtop."""
        if dW is not None:
            self._weight_grad(xp, dtop, bottom, dW, dW_tmp)
        if dbottom is not None:
            self.forward(xp, W, dtop, dbottom, None)


# =============================================================================
# Pooling
# =============================================================================
def pooling(layer, want_backward, num_tops):
    """A :class:`CudnnPooling` for a configured PoolingLayer when cuDNN is to run it, else None.

    ``want_backward``: whether backward may be called (MAX stays portable then)."""
    mods = _cudnn_for(layer.layer_param.pooling_param.engine)
    if mods is None or not pooling_supported(layer, want_backward, num_tops):
        return None
    lib = mods[0]
    mode = lib.CUDNN_POOLING_MAX if layer.method == _PP.MAX else lib.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
    return CudnnPooling(mods, layer.k, layer.strides, layer.pads, mode)


def pooling_supported(layer, want_backward, num_tops):
    """Whether cuDNN's pooling gives Caffe's numbers for this configured layer (see the module doc)."""
    if layer.method == _PP.MAX:
        if want_backward or num_tops > 1:
            return False
    elif layer.method != _PP.AVE:
        return False
    (kh, kw), (sh, sw), (ph, pw) = layer.k, layer.strides, layer.pads
    if ph >= kh or pw >= kw:
        return False
    floor = ((layer.H + 2 * ph - kh) // sh + 1, (layer.W + 2 * pw - kw) // sw + 1)
    return floor == (layer.PH, layer.PW)


class CudnnPooling:
    """Pooling by cuDNN: (N, C, H, W) -> (N, C, PH, PW)."""
    name = 'CUDNN'

    def __init__(self, mods, kernel, stride, pad, mode):
        self.cx = mods[1]
        self.args = (tuple(int(v) for v in kernel), tuple(int(v) for v in stride), tuple(int(v) for v in pad),
                     int(mode))

    def forward(self, x, y):
        self.cx.pooling_forward(x, y, *self.args)

    def backward(self, x, y, dy, dx):
        """dx = the gradient (overwrites dx; cuDNN returns a new array, copied)."""
        dx[...] = self.cx.pooling_backward(x, y, dy, *self.args)


# =============================================================================
# Softmax
# =============================================================================
def softmax(layer):
    """A :class:`CudnnSoftmax` when cuDNN is to run this Softmax layer, else None."""
    mods = _cudnn_for(layer.layer_param.softmax_param.engine)
    return None if mods is None else CudnnSoftmax(mods)


class CudnnSoftmax:
    """Softmax by cuDNN over axis 1 of an (outer, channels, inner) array (ACCURATE: max subtracted)."""
    name = 'CUDNN'

    def __init__(self, mods):
        self.lib, self.cx = mods

    def forward(self, x3, y3):
        y3[...] = self.cx.softmax_forward(x3, 1, self.lib.CUDNN_SOFTMAX_ACCURATE)

    def backward(self, y3, dy3, dx3):
        dx3[...] = self.cx.softmax_backward(y3, dy3, 1, self.lib.CUDNN_SOFTMAX_ACCURATE)


# =============================================================================
# BatchNorm
# =============================================================================
def batch_norm(layer):
    """A :class:`CudnnBatchNorm` for a BatchNormLayer (reshaped: ``shape3`` set) when cuDNN is
    to run it and gives Caffe's numbers (see the module doc), else None."""
    mods = _cudnn_for(DEFAULT)  # no engine field in BatchNormParameter: CAFFEINE_ENGINE alone decides
    if mods is None or not batch_norm_supported(layer, mods[0]):
        return None
    return CudnnBatchNorm(mods, layer.channels, layer.eps)


def batch_norm_supported(layer, lib):
    """Whether cuDNN's batch normalization reproduces Caffe's for this layer and shape."""
    if float(layer.eps) < float(lib.CUDNN_BN_MIN_EPSILON):
        return False
    num, _, inner = layer.shape3
    return layer.use_global_stats or num * inner > 1


class CudnnBatchNorm:
    """Caffe's BatchNorm normalization by cuDNN (SPATIAL mode, scale 1, bias 0) on an
    (N, C, inner, 1) view of the bottom; the layer keeps Caffe's running sums itself.

    ``forward_training`` normalizes by the batch's statistics and writes the batch mean and
    unbiased variance into ``mean``/``var`` (cuDNN's running averages with factor 1,
    i.e. decay 0); ``backward`` needs the forward's x and uses the mean and 1/std that
    cuDNN saved then.  ``forward_inference`` normalizes by given statistics.
    cupyx.cudnn returns new arrays: each is copied into the layer's top or bottom diff.
    """
    name = 'CUDNN'

    def __init__(self, mods, channels, eps):
        self.lib, self.cx = mods
        self.mode = self.lib.CUDNN_BATCHNORM_SPATIAL
        self.eps = float(eps)
        self.gamma = backend.empty((channels,))
        self.gamma.fill(1)
        self.beta = backend.zeros((channels,))
        self.saved = None

    def forward_training(self, x4, y4, mean, var):
        y, save_mean, save_inv_std = self.cx.batch_normalization_forward_training(
            x4, self.gamma, self.beta, mean, var, None, None, self.eps, 0.0, True, self.mode, False)
        y4[...] = y
        self.saved = (save_mean, save_inv_std)

    def forward_inference(self, x4, y4, mean, var):
        y4[...] = self.cx.batch_normalization_forward_inference(x4, self.gamma, self.beta, mean, var, self.eps,
                                                                True, self.mode)

    def backward(self, x4, dy4, dx4):
        """dx = (dy - mean(dy) - x_norm * mean(dy * x_norm)) / std, for the last forward_training's x."""
        save_mean, save_inv_std = self.saved
        dx, _, _ = self.cx.batch_normalization_backward(x4, self.gamma, dy4, save_mean, save_inv_std, self.eps,
                                                        True, self.mode, False)
        dx4[...] = dx
