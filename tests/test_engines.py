"""The GPU engines (caffeine.engines: cuDNN through CuPy; caffeine.fused: fused element-wise
kernels), tested on the CPU: the selection with mocked CuPy modules, the parameter translation
with a stand-in ``cupyx.cudnn`` that computes what cuDNN computes (naive NumPy loops over
kernel offsets, independent of caffeine's engine), and each fused kernel's source evaluated with
NumPy inside the layer or solver that calls it.  The ``gpu`` tests at the end run the real
thing on a CUDA device, once with cuDNN and once with engine CAFFE."""
import re
import sys
import types

import numpy as np
import pytest

import caffeine
from caffeine import backend, engines, fused
from caffeine.layers.conv_engine import ConvEngine
from caffeine.proto import caffe_pb2
from caffeine.testing import (assert_close, backward_layer, check_golden_layer, check_golden_net, golden_cases,
                              setup_layer)

_F32 = np.float32


# =============================================================================
# Fused kernels: the CUDA source evaluated with NumPy
# =============================================================================
_VOCAB = {'select': np.where, 'max': np.maximum, 'min': np.minimum, 'exp': np.exp, 'tanh': np.tanh,
          'sqrt': np.sqrt, 'f32': np.float32}


def numpy_statements(operation):
    """A kernel's operation as Python statements: ``1.0f`` -> ``f32(1.0)``, ``float t =`` -> ``t =``."""
    src = re.sub(r'\b(\d+\.\d*)f\b', r'f32(\1)', operation)
    src = re.sub(r'\bfloat\s+(?=\w+\s*=)', '', src)
    return [s.strip() for s in src.split(';') if s.strip()]


class NumpyKernel:
    """Stands in for ``cupy.ElementwiseKernel``: called as CuPy's (inputs, then outputs,
    positionally), evaluates the source with NumPy in float32 and writes the outputs in place."""

    def __init__(self, in_params, out_params, operation, name, preamble=''):
        def names(params):
            out = []
            for p in params.split(','):
                dtype, name = p.split()
                assert dtype == 'float32', p
                out.append(name)
            return out
        self.ins, self.outs = names(in_params), names(out_params)
        self.name = name
        self.code = [compile(s, name, 'exec') for s in numpy_statements(operation)]
        self.calls = 0

    def __call__(self, *args):
        assert len(args) == len(self.ins) + len(self.outs), (self.name, len(args))
        env = dict(_VOCAB)
        for n, a in zip(self.ins + self.outs, args):
            assert isinstance(a, (np.ndarray, np.float32)) and a.dtype == np.float32, (self.name, n, type(a))
            env[n] = a
        with np.errstate(all='ignore'):
            for c in self.code:
                exec(c, env)
        for n, a in zip(self.outs, args[len(self.ins):]):
            a[...] = env[n]
        self.calls += 1


@pytest.fixture
def numpy_kernels(monkeypatch):
    """backend.elementwise_kernel returning NumpyKernels (in CPU mode); {name: kernel} of those made."""
    made = {}

    def make(in_params, out_params, operation, name, preamble=''):
        assert preamble == fused.PREAMBLE
        k = made.get(name)
        if k is None:
            k = made[name] = NumpyKernel(in_params, out_params, operation, name, preamble)
        return k
    monkeypatch.setattr(backend, 'elementwise_kernel', make)
    return made


def test_kernel_sources_use_only_the_shared_vocabulary():
    for k in fused.KERNELS:
        for s in numpy_statements(k.operation):
            names = set(re.findall(r'\b[A-Za-z_]\w*\b', s))
            params = {p.split()[-1] for p in (k.in_params + ',' + k.out_params).split(',')}
            temps = set(re.findall(r'\bfloat\s+(\w+)', k.operation))
            assert names <= set(_VOCAB) | params | temps, (k.name, names - set(_VOCAB) - params - temps)
        assert not re.search(r'\d\.', re.sub(r'\d+\.\d*f', '', k.operation)), k.name  # float literals carry f


def test_no_kernel_on_the_cpu():
    caffeine.set_mode_cpu()
    assert all(fused.get(k) is None for k in fused.KERNELS)


NEURONS = [
    ('ReLU', 'relu_param { negative_slope: 0 }', ['relu_backward']),
    ('ReLU', 'relu_param { negative_slope: 0.1 }', ['relu_forward', 'relu_backward']),
    ('ReLU', 'relu_param { negative_slope: -0.5 }', ['relu_forward', 'relu_backward']),
    ('Sigmoid', '', ['sigmoid_forward', 'sigmoid_backward']),
    ('TanH', '', ['tanh_backward']),
    ('ELU', 'elu_param { alpha: 0.5 }', ['elu_forward', 'elu_backward']),
    ('ELU', 'elu_param { alpha: -0.3 }', ['elu_forward', 'elu_backward']),
]


def _neuron_run(text, x, dy, in_place):
    layer, bottom, top = setup_layer(text, x, in_place=in_place)
    layer.Forward(bottom, top)
    y = top[0].data.copy()
    dx = backward_layer(layer, bottom, top, dy)[0]
    return y, dx


@pytest.mark.parametrize('in_place', [False, True])
@pytest.mark.parametrize('kind,param,kernels', NEURONS)
def test_neuron_kernels_equal_the_numpy_path(numpy_kernels, monkeypatch, kind, param, kernels, in_place):
    text = 'name: "n" type: "%s" %s' % (kind, param)
    rng = np.random.RandomState(3)
    x = (rng.randn(2, 3, 4, 5) * 3).astype(_F32)
    x[0, 0, 0, :3] = (0, -0.0, 50)
    dy = rng.randn(*x.shape).astype(_F32)
    y, dx = _neuron_run(text, x, dy, in_place)
    assert sorted(numpy_kernels) == sorted('caffeine_' + k for k in kernels)
    assert all(k.calls == 1 for k in numpy_kernels.values())
    monkeypatch.setenv('CAFFEINE_NO_FUSED', '1')
    y0, dx0 = _neuron_run(text, x, dy, in_place)
    assert_close(y, y0, rtol=1e-6, name='top')
    assert_close(dx, dx0, rtol=1e-6, name='bottom diff')


SOLVER_NET = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
'''

SOLVERS = {
    'SGD': ('momentum: 0.9', 'sgd_update'),
    'Nesterov': ('momentum: 0.9', 'nesterov_update'),
    'AdaGrad': ('delta: 1e-6', 'adagrad_update'),
    'RMSProp': ('rms_decay: 0.9 delta: 1e-6', 'rmsprop_update'),
    'AdaDelta': ('momentum: 0.95 delta: 1e-6 base_lr: 1.0', 'adadelta_update'),
    'Adam': ('momentum: 0.9 momentum2: 0.999 delta: 1e-8 base_lr: 0.01', 'adam_update'),
}


def _train(tmp_path, type_name, extra, steps=3):
    (tmp_path / 'net.prototxt').write_text(SOLVER_NET)
    if 'base_lr' not in extra:
        extra += ' base_lr: 0.1'
    text = ('net: "%s" type: "%s" lr_policy: "fixed" weight_decay: 0.01 max_iter: 10 '
            'random_seed: 5 snapshot_prefix: "%s" %s' % (tmp_path / 'net.prototxt', type_name, tmp_path / 's', extra))
    (tmp_path / 'solver.prototxt').write_text(text)
    s = caffeine.get_solver(str(tmp_path / 'solver.prototxt'))
    rng = np.random.RandomState(7)

    def feed():
        s.net.blobs['data'].data[...] = rng.randn(4, 6)
        s.net.blobs['label'].data[...] = rng.randint(0, 3, 4)
    s.add_callback(feed, None)
    s.step(steps)
    return [b.data.copy() for b in s.net.learnable_params]


@pytest.mark.parametrize('type_name', sorted(SOLVERS))
def test_solver_kernels_equal_the_numpy_path(numpy_kernels, monkeypatch, tmp_path, type_name):
    extra, kernel = SOLVERS[type_name]
    fused_w = _train(tmp_path, type_name, extra)
    assert list(numpy_kernels) == ['caffeine_' + kernel]
    assert numpy_kernels['caffeine_' + kernel].calls == 3 * 4   # 3 steps x 4 parameters
    monkeypatch.setenv('CAFFEINE_NO_FUSED', '1')
    plain_w = _train(tmp_path, type_name, extra)
    for a, b in zip(fused_w, plain_w):
        assert_close(a, b, rtol=1e-6, name=type_name)


# =============================================================================
# cuDNN: a stand-in for CuPy 13's cupy.cuda.cudnn / cupyx.cudnn
# =============================================================================
def _offsets(kernel, stride, dilation, out):
    """(kernel offset, index of the padded input seen by it for every output position)."""
    for k in np.ndindex(*kernel):
        yield k, (slice(None), slice(None)) + tuple(
            slice(ki * d, ki * d + s * (o - 1) + 1, s) for ki, d, s, o in zip(k, dilation, stride, out))


def _out_size(sp, kernel, pad, stride, dilation):
    return tuple((n + 2 * p - (d * (k - 1) + 1)) // s + 1 for n, k, p, s, d in zip(sp, kernel, pad, stride, dilation))


def _padded(x, pad, value=0.0):
    return np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p, p) for p in pad], constant_values=value)


class FakeCudnnLib:
    """cupy.cuda.cudnn: the constants caffeine uses (values from cuDNN's headers)."""
    available = True
    CUDNN_POOLING_MAX = 0
    CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING = 1
    CUDNN_SOFTMAX_ACCURATE = 1
    CUDNN_BATCHNORM_SPATIAL = 1
    CUDNN_BN_MIN_EPSILON = 0.0   # cuDNN 8 (cuDNN 7 had 1e-5)


class FakeCupyxCudnn:
    """cupyx.cudnn of CuPy 13 with its signatures, computing in float64 with loops over kernel offsets."""

    def __init__(self):
        self.calls = []
        self.max_workspace = None

    def set_max_workspace_size(self, size):
        self.max_workspace = size

    def _check(self, name, pad, stride, dilation, groups, auto_tune, tensor_core, **kw):
        assert all(isinstance(t, tuple) for t in (pad, stride, dilation)) and isinstance(groups, int)
        assert tensor_core == 'never' and auto_tune is False
        self.calls.append((name, pad, stride, dilation, groups))

    def convolution_forward(self, x, W, b, y, pad, stride, dilation, groups, *, auto_tune, tensor_core,
                            d_layout=0, w_layout=0):
        self._check('fwd', pad, stride, dilation, groups, auto_tune, tensor_core)
        K, G = W.shape[2:], groups
        Mg, Cg = W.shape[0] // G, W.shape[1]
        out = y.shape[2:]
        assert out == _out_size(x.shape[2:], K, pad, stride, dilation)
        xpad, acc = _padded(x, pad), np.zeros(y.shape)
        for g in range(G):
            for k, sl in _offsets(K, stride, dilation, out):
                acc[:, g * Mg:(g + 1) * Mg] += np.einsum('mc,nc...->nm...', W[g * Mg:(g + 1) * Mg, :][(Ellipsis,) + k],
                                                         xpad[sl][:, g * Cg:(g + 1) * Cg])
        if b is not None:
            acc += b.reshape((1, -1) + (1,) * len(K))
        y[...] = acc

    def convolution_backward_data(self, W, x, b, y, pad, stride, dilation, groups, *, deterministic, auto_tune,
                                  tensor_core, d_layout=0, w_layout=0):
        self._check('bwd_data', pad, stride, dilation, groups, auto_tune, tensor_core)
        dy, dx = x, y
        K, G = W.shape[2:], groups
        Mg, Cg = W.shape[0] // G, W.shape[1]
        dpad = np.zeros(_padded(dx, pad).shape)
        for g in range(G):
            for k, sl in _offsets(K, stride, dilation, dy.shape[2:]):
                v = dpad[sl]
                v[:, g * Cg:(g + 1) * Cg] += np.einsum('mc,nm...->nc...', W[g * Mg:(g + 1) * Mg, :][(Ellipsis,) + k],
                                                       dy[:, g * Mg:(g + 1) * Mg])
        acc = dpad[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, dx.shape[2:]))]
        if b is not None:
            acc = acc + b.reshape((1, -1) + (1,) * len(K))
        dx[...] = acc

    def convolution_backward_filter(self, x, gy, gW, pad, stride, dilation, groups, *, deterministic, auto_tune,
                                    tensor_core, d_layout=0, w_layout=0):
        self._check('bwd_filter', pad, stride, dilation, groups, auto_tune, tensor_core)
        K, G = gW.shape[2:], groups
        Mg, Cg = gW.shape[0] // G, gW.shape[1]
        xpad = _padded(x, pad)
        acc = np.zeros(gW.shape)
        for g in range(G):
            for k, sl in _offsets(K, stride, dilation, gy.shape[2:]):
                d = gy[:, g * Mg:(g + 1) * Mg].reshape(gy.shape[0], Mg, -1)
                xs = xpad[sl][:, g * Cg:(g + 1) * Cg].reshape(gy.shape[0], Cg, -1)
                acc[g * Mg:(g + 1) * Mg][(slice(None), slice(None)) + k] = np.einsum('nmp,ncp->mc', d, xs)
        gW[...] = acc

    def pooling_forward(self, x, y, ksize, stride, pad, mode):
        self.calls.append(('pool_fwd', ksize, stride, pad, mode))
        out = y.shape[2:]
        assert out == _out_size(x.shape[2:], ksize, pad, stride, (1, 1))
        if mode == FakeCudnnLib.CUDNN_POOLING_MAX:
            xpad = _padded(x, pad, -np.inf)
            y[...] = np.max([xpad[sl] for _, sl in _offsets(ksize, stride, (1, 1), out)], axis=0)
        else:
            assert mode == FakeCudnnLib.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
            xpad = _padded(x, pad)
            y[...] = np.sum([xpad[sl] for _, sl in _offsets(ksize, stride, (1, 1), out)], axis=0) / np.prod(ksize)
        return y

    def pooling_backward(self, x, y, gy, ksize, stride, pad, mode):
        self.calls.append(('pool_bwd', ksize, stride, pad, mode))
        assert mode == FakeCudnnLib.CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING  # MAX's backward stays portable
        dpad = np.zeros(_padded(x, pad).shape)
        for _, sl in _offsets(ksize, stride, (1, 1), gy.shape[2:]):
            dpad[sl] += gy / np.prod(ksize)
        return dpad[:, :, pad[0]:pad[0] + x.shape[2], pad[1]:pad[1] + x.shape[3]].astype(x.dtype)

    def softmax_forward(self, x, axis, algorithm):
        assert algorithm == FakeCudnnLib.CUDNN_SOFTMAX_ACCURATE
        self.calls.append(('softmax_fwd', axis))
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)

    def softmax_backward(self, y, gy, axis, algorithm):
        self.calls.append(('softmax_bwd', axis))
        return (y * (gy - (gy * y).sum(axis=axis, keepdims=True))).astype(y.dtype)

    # batch normalization as cuDNN's documentation states it: y = gamma (x - mean) / sqrt(var + eps) + beta
    # with the biased batch variance; running = (1 - factor) running + factor * batch value, the
    # variance's unbiased (m / (m - 1)); saved: the mean and 1 / sqrt(var + eps)
    def _bn_check(self, name, x, gamma, beta, eps, is_for_conv2d, mode):
        assert x.ndim == 4 and x.dtype == np.float32 and x.flags.c_contiguous
        assert gamma.shape == beta.shape == (x.shape[1],) and is_for_conv2d is True
        assert mode == FakeCudnnLib.CUDNN_BATCHNORM_SPATIAL and isinstance(eps, float)
        assert (gamma == 1).all() and (beta == 0).all()
        self.calls.append((name, eps))

    def batch_normalization_forward_training(self, x, gamma, beta, running_mean, running_var, mean, inv_std,
                                             eps, decay, is_for_conv2d, cudnn_mode, debug, d_layout=0):
        self._bn_check('bn_train', x, gamma, beta, eps, is_for_conv2d, cudnn_mode)
        assert mean is None and inv_std is None and debug is False and decay == 0.0
        xd = x.astype(np.float64)
        m = x.size // x.shape[1]
        mu = xd.mean(axis=(0, 2, 3))
        var = ((xd - mu.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))
        factor = 1.0 - decay
        running_mean[...] = (1 - factor) * running_mean + factor * mu
        running_var[...] = (1 - factor) * running_var + factor * var * m / (m - 1)
        inv = 1 / np.sqrt(var + eps)
        y = gamma.reshape(1, -1, 1, 1) * (xd - mu.reshape(1, -1, 1, 1)) * inv.reshape(1, -1, 1, 1)
        return (y + beta.reshape(1, -1, 1, 1)).astype(np.float32), mu.astype(np.float32), inv.astype(np.float32)

    def batch_normalization_forward_inference(self, x, gamma, beta, mean, var, eps, is_for_conv2d, cudnn_mode,
                                              d_layout=0):
        self._bn_check('bn_infer', x, gamma, beta, eps, is_for_conv2d, cudnn_mode)
        c = (1, -1, 1, 1)
        y = gamma.reshape(c) * (x - mean.reshape(c).astype(np.float64)) / np.sqrt(var.reshape(c) + eps)
        return (y + beta.reshape(c)).astype(np.float32)

    def batch_normalization_backward(self, x, gamma, gy, mean, inv_std, eps, is_for_conv2d, cudnn_mode, debug,
                                     d_layout=0, *, reserve_space=None):
        self._bn_check('bn_bwd', x, gamma, gamma * 0, eps, is_for_conv2d, cudnn_mode)
        assert gy.shape == x.shape and debug is False and reserve_space is None
        c = (1, -1, 1, 1)
        m = x.size // x.shape[1]
        xhat = (x - mean.reshape(c).astype(np.float64)) * inv_std.reshape(c)
        gbeta = gy.sum(axis=(0, 2, 3), dtype=np.float64)
        ggamma = (gy * xhat).sum(axis=(0, 2, 3))
        gx = gamma.reshape(c) * inv_std.reshape(c) * (gy - (gbeta.reshape(c) + xhat * ggamma.reshape(c)) / m)
        return gx.astype(np.float32), ggamma.astype(np.float32), gbeta.astype(np.float32)


@pytest.fixture
def fake_cudnn(monkeypatch):
    """backend.cudnn() answering the stand-in pair (in CPU mode); returns the cupyx.cudnn stand-in."""
    cx = FakeCupyxCudnn()
    monkeypatch.setattr(backend, 'cudnn', lambda: (FakeCudnnLib, cx))
    monkeypatch.delenv('CAFFEINE_ENGINE', raising=False)
    monkeypatch.delenv('CAFFEINE_CUDNN_AUTOTUNE', raising=False)
    return cx


# -- selection -------------------------------------------------------------------------------
def test_engine_choice_follows_caffes_factory(monkeypatch):
    monkeypatch.delenv('CAFFEINE_ENGINE', raising=False)
    E = caffe_pb2.ConvolutionParameter
    assert (engines.DEFAULT, engines.CAFFE, engines.CUDNN) == (E.DEFAULT, E.CAFFE, E.CUDNN)
    assert engines.use_cudnn(E.DEFAULT, True) and engines.use_cudnn(E.CUDNN, True)
    assert not engines.use_cudnn(E.CAFFE, True)
    assert not any(engines.use_cudnn(e, False) for e in (E.DEFAULT, E.CAFFE, E.CUDNN))
    monkeypatch.setenv('CAFFEINE_ENGINE', 'caffe')
    assert not engines.use_cudnn(E.CUDNN, True)
    monkeypatch.setenv('CAFFEINE_ENGINE', 'CUDNN')
    assert engines.use_cudnn(E.CAFFE, True) and not engines.use_cudnn(E.CAFFE, False)
    monkeypatch.setenv('CAFFEINE_ENGINE', 'FAST')
    with pytest.raises(backend.BackendError, match='CAFFEINE_ENGINE must be CAFFE, CUDNN or DEFAULT'):
        engines.use_cudnn(E.DEFAULT, True)


def test_cpu_mode_has_no_cudnn():
    caffeine.set_mode_cpu()
    assert backend.cudnn() is None
    layer, _, _ = setup_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 '
                              'engine: CUDNN }', np.zeros((1, 1, 5, 5), _F32))
    assert type(layer.engine) is ConvEngine


def _install_fake_cupy(monkeypatch, lib_available=True, with_cupyx_cudnn=True):
    cupy, cuda, lib = (types.ModuleType(n) for n in ('cupy', 'cupy.cuda', 'cupy.cuda.cudnn'))
    lib.available = lib_available
    cupy.cuda, cuda.cudnn = cuda, lib
    cupyx = types.ModuleType('cupyx')
    cx = types.ModuleType('cupyx.cudnn')
    if with_cupyx_cudnn:
        cupyx.cudnn = cx
    for name, m in (('cupy', cupy), ('cupy.cuda', cuda), ('cupy.cuda.cudnn', lib), ('cupyx', cupyx),
                    ('cupyx.cudnn', cx if with_cupyx_cudnn else None)):
        monkeypatch.setitem(sys.modules, name, m)
    monkeypatch.setattr(backend, '_mode', 'gpu')
    monkeypatch.setattr(backend, '_cudnn', None)
    return lib, cx


def test_backend_finds_cudnn_in_cupy(monkeypatch):
    lib, cx = _install_fake_cupy(monkeypatch)
    assert backend.cudnn() == (lib, cx)


def test_backend_without_libcudnn(monkeypatch):
    _install_fake_cupy(monkeypatch, lib_available=False)  # CuPy 13 whose libcudnn did not load
    assert backend.cudnn() is None


def test_backend_with_cupy_14_has_no_cudnn(monkeypatch):
    _install_fake_cupy(monkeypatch, with_cupyx_cudnn=False)  # CuPy 14 removed cupyx.cudnn
    assert backend.cudnn() is None


def test_pip_cudnn_is_loaded_before_cupy(monkeypatch, tmp_path):
    lib = tmp_path / 'nvidia' / 'cudnn' / 'lib'
    lib.mkdir(parents=True)
    (lib / 'libcudnn.so.8').write_bytes(b'')
    loaded = []
    monkeypatch.setattr(backend.ctypes, 'CDLL', lambda path, mode=0: loaded.append((path, mode)))
    monkeypatch.setattr(sys, 'path', ['/nonexistent', str(tmp_path)])
    backend._preload_pip_cudnn()
    assert loaded == [(str(lib / 'libcudnn.so.8'), backend.ctypes.RTLD_GLOBAL)]
    loaded.clear()
    monkeypatch.setattr(sys, 'path', ['/nonexistent'])
    backend._preload_pip_cudnn()
    assert loaded == []


def test_tf32_is_off_unless_asked(monkeypatch):
    cupy = types.ModuleType('cupy')
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    monkeypatch.setitem(sys.modules, 'cupy', cupy)
    for setting, expected in ((None, '0'), ('1', '1')):
        if setting is None:
            monkeypatch.delenv('NVIDIA_TF32_OVERRIDE', raising=False)
        else:
            monkeypatch.setenv('NVIDIA_TF32_OVERRIDE', setting)
        monkeypatch.setattr(backend, '_cupy', None)
        monkeypatch.setattr(backend, '_cupy_error', None)
        assert backend._import_cupy() is cupy
        assert backend.os.environ['NVIDIA_TF32_OVERRIDE'] == expected


# -- convolution -----------------------------------------------------------------------------
CONVS = [
    ('Convolution', 'num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2', (2, 4, 7, 6)),
    ('Convolution', 'num_output: 6 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 dilation: 2 group: 3 '
                    'bias_term: false', (2, 3, 9, 8)),
    ('Convolution', 'num_output: 3 kernel_size: 2 stride: 1 pad: 1', (2, 2, 4, 5, 3)),  # 3-D
    ('Deconvolution', 'num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2', (2, 4, 4, 3)),
    ('Deconvolution', 'num_output: 3 kernel_size: 4 stride: 2 dilation: 2', (1, 2, 3, 3)),
]


def _conv_run(text, x, dy, W, b):
    params = [W] + ([b] if b is not None else [])
    layer, bottom, top = setup_layer(text, x, params=params)
    layer.Forward(bottom, top)
    y = top[0].data.copy()
    for p in layer.blobs:
        p.diff[...] = 0.5  # Caffe's parameter gradients accumulate
    dx = backward_layer(layer, bottom, top, dy)[0]
    return layer, y, dx, [p.diff.copy() for p in layer.blobs]


@pytest.mark.parametrize('kind,param,shape', CONVS)
def test_convolution_on_cudnn_equals_the_portable_engine(fake_cudnn, monkeypatch, kind, param, shape):
    text = 'name: "c" type: "%s" convolution_param { %s }' % (kind, param)
    rng = np.random.RandomState(1)
    x = rng.randn(*shape).astype(_F32)
    probe, _, ptop = setup_layer(text, x)
    W = rng.randn(*probe.blobs[0].shape).astype(_F32)
    b = rng.randn(*probe.blobs[1].shape).astype(_F32) if len(probe.blobs) > 1 else None
    dy = rng.randn(*ptop[0].shape).astype(_F32)
    layer, y, dx, pdiffs = _conv_run(text, x, dy, W, b)
    assert isinstance(layer.engine, engines.CudnnConvolution) and engines.used_by(layer) == 'CUDNN'
    assert fake_cudnn.max_workspace == engines.workspace_bytes() == 256 << 20
    lp = layer.layer_param.convolution_param
    geometry = (tuple(layer.pad), tuple(layer.stride), tuple(layer.dilation), int(lp.group))
    names = [c[0] for c in fake_cudnn.calls]
    if kind == 'Convolution':
        assert names == ['fwd', 'bwd_filter', 'bwd_data']
    else:  # the transposed convolution: forward is cuDNN's backward to the data
        assert names == ['bwd_data', 'bwd_filter', 'fwd']
    assert all(c[1:] == geometry for c in fake_cudnn.calls)
    monkeypatch.setenv('CAFFEINE_ENGINE', 'CAFFE')
    layer0, y0, dx0, pdiffs0 = _conv_run(text, x, dy, W, b)
    assert type(layer0.engine) is ConvEngine and len(fake_cudnn.calls) == 3 and engines.used_by(layer0) == 'CAFFE'
    assert_close(y, y0, rtol=1e-5, name='top')
    assert_close(dx, dx0, rtol=1e-5, name='bottom diff')
    for i, (a, e) in enumerate(zip(pdiffs, pdiffs0)):
        assert_close(a, e, rtol=1e-5, name='param %d diff' % i)


@pytest.mark.parametrize('text', [
    'name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 engine: CAFFE }',
    'name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 axis: 2 }',  # 1 spatial axis
])
def test_convolution_kept_on_the_portable_engine(fake_cudnn, text):
    layer, bottom, top = setup_layer(text, np.ones((2, 3, 5, 5), _F32))
    layer.Forward(bottom, top)
    assert type(layer.engine) is ConvEngine and fake_cudnn.calls == []


def test_convolution_engine_follows_the_mode(fake_cudnn, monkeypatch):
    text = 'name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }'
    layer, bottom, top = setup_layer(text, np.ones((1, 1, 5, 5), _F32))
    assert isinstance(layer.engine, engines.CudnnConvolution)
    monkeypatch.setattr(backend, 'cudnn', lambda: None)
    monkeypatch.setattr(backend, '_device_id', 1)  # a mode change: the engine is chosen again
    layer.Forward(bottom, top)
    assert type(layer.engine) is ConvEngine


def test_autotune_is_asked_by_the_environment(fake_cudnn, monkeypatch):
    monkeypatch.setenv('CAFFEINE_CUDNN_AUTOTUNE', '1')
    layer, _, _ = setup_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }',
                              np.ones((1, 1, 5, 5), _F32))
    assert layer.engine.auto_tune is True


# -- pooling ---------------------------------------------------------------------------------
def _pool_run(text, x, dy, need_backward, phase=caffe_pb2.TRAIN):
    layer, bottom, top = setup_layer(text, x, phase=phase)
    layer.need_backward = need_backward
    layer.Forward(bottom, top)
    y = top[0].data.copy()
    dx = backward_layer(layer, bottom, top, dy)[0] if need_backward else None
    return layer, y, dx


@pytest.mark.parametrize('param,shape,need_backward,cudnn', [
    ('pool: AVE kernel_size: 3 stride: 2 pad: 1', (2, 3, 7, 7), True, True),
    ('pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0', (2, 3, 5, 6), True, True),
    ('pool: AVE global_pooling: true', (2, 3, 5, 4), True, True),
    ('pool: AVE kernel_size: 3 stride: 2', (2, 3, 6, 6), True, False),    # ceil adds a window: Caffe's
    ('pool: MAX kernel_size: 3 stride: 2 pad: 1', (2, 3, 7, 7), False, True),
    ('pool: MAX kernel_size: 2 stride: 2', (2, 3, 6, 6), True, False),    # backward: Caffe's tie rule
    ('pool: STOCHASTIC kernel_size: 2 stride: 2', (2, 3, 6, 6), False, False),
])
def test_pooling_on_cudnn_where_it_gives_caffes_numbers(fake_cudnn, monkeypatch, param, shape, need_backward, cudnn):
    text = 'name: "p" type: "Pooling" pooling_param { %s }' % param
    rng = np.random.RandomState(2)
    x = np.abs(rng.randn(*shape)).astype(_F32)
    layer, _, top = setup_layer(text, x)
    dy = rng.randn(*top[0].shape).astype(_F32)
    phase = caffe_pb2.TEST if 'STOCHASTIC' in param else caffe_pb2.TRAIN
    layer, y, dx = _pool_run(text, x, dy, need_backward, phase)
    assert engines.used_by(layer) == ('CUDNN' if cudnn else 'CAFFE')
    used = [c[0] for c in fake_cudnn.calls]
    assert used == ((['pool_fwd'] + (['pool_bwd'] if need_backward else [])) if cudnn else [])
    monkeypatch.setenv('CAFFEINE_ENGINE', 'CAFFE')
    _, y0, dx0 = _pool_run(text, x, dy, need_backward, phase)
    assert len(fake_cudnn.calls) == len(used)
    assert_close(y, y0, rtol=1e-6, name='top')
    if need_backward:
        assert_close(dx, dx0, rtol=1e-6, name='bottom diff')


def test_pooling_with_a_mask_top_stays_portable(fake_cudnn):
    layer, bottom, top = setup_layer('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                                     np.ones((1, 1, 4, 4), _F32), ntop=2)
    layer.need_backward = False
    layer.Forward(bottom, top)
    assert fake_cudnn.calls == []


# -- softmax ---------------------------------------------------------------------------------
@pytest.mark.parametrize('axis,shape', [(1, (2, 5, 3)), (2, (2, 3, 4, 2)), (-1, (4, 6))])
def test_softmax_on_cudnn_equals_the_xp_path(fake_cudnn, monkeypatch, axis, shape):
    text = 'name: "s" type: "Softmax" softmax_param { axis: %d }' % axis
    rng = np.random.RandomState(4)
    x = (rng.randn(*shape) * 4).astype(_F32)
    dy = rng.randn(*shape).astype(_F32)
    runs = []
    for engine in ('CUDNN', 'CAFFE'):
        monkeypatch.setenv('CAFFEINE_ENGINE', engine)
        layer, bottom, top = setup_layer(text, x)
        layer.Forward(bottom, top)
        assert engines.used_by(layer) == ('CUDNN' if engine == 'CUDNN' else 'CAFFE')
        runs.append((top[0].data.copy(), backward_layer(layer, bottom, top, dy)[0]))
    assert [c[0] for c in fake_cudnn.calls] == ['softmax_fwd', 'softmax_bwd']
    assert_close(runs[0][0], runs[1][0], rtol=1e-6, name='top')
    assert_close(runs[0][1], runs[1][1], rtol=1e-6, name='bottom diff')


# -- batch normalization -----------------------------------------------------------------------
def _bn_run(text, xs, dy, in_place, phase=caffe_pb2.TRAIN, stats=None):
    """Forward over each x of ``xs`` (running sums accumulate), then backward with dy:
    (layer, [top after each forward], bottom diff, the three statistics blobs)."""
    layer, bottom, top = setup_layer(text, xs[0], in_place=in_place, phase=phase, params=stats)
    ys = []
    for x in xs:
        bottom[0].data[...] = x
        layer.Forward(bottom, top)
        ys.append(top[0].data.copy())
    dx = backward_layer(layer, bottom, top, dy)[0]
    return layer, ys, dx, [b.data.copy() for b in layer.blobs]


@pytest.mark.parametrize('in_place', [False, True])
@pytest.mark.parametrize('shape', [(4, 3, 5, 2), (6, 4), (5, 2, 3, 2, 2)])
def test_batch_norm_training_on_cudnn_equals_caffes(fake_cudnn, monkeypatch, shape, in_place):
    text = 'name: "bn" type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }'
    rng = np.random.RandomState(6)
    xs = [(rng.randn(*shape) * 3 + 1.5).astype(_F32) for _ in range(3)]
    dy = rng.randn(*shape).astype(_F32)
    layer, ys, dx, stats = _bn_run(text, xs, dy, in_place)
    assert engines.used_by(layer) == 'CUDNN'
    assert fake_cudnn.calls == [('bn_train', float(_F32(0.001)))] * 3 + [('bn_bwd', float(_F32(0.001)))]
    assert bool(layer._x_norm.count) == in_place    # cuDNN's backward reads x: kept only when overwritten
    monkeypatch.setenv('CAFFEINE_ENGINE', 'CAFFE')
    layer0, ys0, dx0, stats0 = _bn_run(text, xs, dy, in_place)
    assert engines.used_by(layer0) == 'CAFFE' and len(fake_cudnn.calls) == 4
    for i, (a, e) in enumerate(zip(ys, ys0)):
        assert_close(a, e, rtol=1e-5, name='top after forward %d' % i)
    assert_close(dx, dx0, rtol=1e-4, name='bottom diff')
    for name, a, e in zip(('mean_sum', 'var_sum (m/(m-1) corrected)', 's'), stats, stats0):
        assert_close(a, e, rtol=1e-5, name=name)


@pytest.mark.parametrize('in_place', [False, True])
def test_batch_norm_global_stats_on_cudnn_equals_caffes(fake_cudnn, monkeypatch, in_place):
    text = 'name: "bn" type: "BatchNorm"'
    rng = np.random.RandomState(8)
    x = (rng.randn(3, 4, 2, 3) * 2 - 1).astype(_F32)
    dy = rng.randn(*x.shape).astype(_F32)
    stats = [rng.randn(4).astype(_F32) * 5, np.abs(rng.randn(4)).astype(_F32) * 8, np.array([4.5], _F32)]
    layer, ys, dx, after = _bn_run(text, [x], dy, in_place, phase=caffe_pb2.TEST, stats=stats)
    assert engines.used_by(layer) == 'CUDNN' and fake_cudnn.calls == [('bn_infer', float(_F32(1e-5)))]
    monkeypatch.setenv('CAFFEINE_ENGINE', 'CAFFE')
    _, ys0, dx0, after0 = _bn_run(text, [x], dy, in_place, phase=caffe_pb2.TEST, stats=stats)
    assert_close(ys[0], ys0[0], rtol=1e-5, name='top')
    assert_close(dx, dx0, rtol=1e-5, name='bottom diff')
    for a, e in zip(after, stats):
        np.testing.assert_array_equal(a, e)   # global statistics are read, never written


def forward_bn(text, shape, phase):
    layer, bottom, top = setup_layer(text, np.random.RandomState(0).randn(*shape).astype(_F32), phase=phase)
    layer.Forward(bottom, top)
    return layer, bottom, top


@pytest.mark.parametrize('param,shape,phase', [
    ('eps: 1e-6', (4, 3, 2, 2), caffe_pb2.TRAIN),           # below cuDNN's CUDNN_BN_MIN_EPSILON (set to 1e-5 here)
    ('', (1, 3, 1, 1), caffe_pb2.TRAIN),                    # m = 1: Caffe's correction is 1, cuDNN's 1/0
    ('', (1, 3), caffe_pb2.TRAIN),
])
def test_batch_norm_kept_portable_where_cudnn_differs(fake_cudnn, monkeypatch, param, shape, phase):
    monkeypatch.setattr(FakeCudnnLib, 'CUDNN_BN_MIN_EPSILON', 1e-5)
    layer, bottom, top = forward_bn('name: "bn" type: "BatchNorm" batch_norm_param { %s }' % param, shape, phase)
    assert engines.used_by(layer) == 'CAFFE' and fake_cudnn.calls == []


def test_batch_norm_engine_follows_the_mode_and_the_environment(fake_cudnn, monkeypatch):
    layer, bottom, top = forward_bn('name: "bn" type: "BatchNorm"', (2, 3, 2, 2), caffe_pb2.TRAIN)
    assert isinstance(layer.cudnn, engines.CudnnBatchNorm)
    monkeypatch.setattr(backend, 'cudnn', lambda: None)
    monkeypatch.setattr(backend, '_device_id', 1)  # a mode change: the engine is chosen again
    layer.Reshape(bottom, top)
    assert layer.cudnn is None
    monkeypatch.setattr(backend, 'cudnn', lambda: (FakeCudnnLib, fake_cudnn))
    monkeypatch.setenv('CAFFEINE_ENGINE', 'CAFFE')
    monkeypatch.setattr(backend, '_device_id', 0)
    layer.Reshape(bottom, top)
    assert layer.cudnn is None


def test_lrn_stays_portable_with_cudnn_present(fake_cudnn):
    """CuPy 13 binds no cuDNN LRN (see caffeine.engines): both regions run the xp path."""
    for region in ('ACROSS_CHANNELS', 'WITHIN_CHANNEL'):
        layer, bottom, top = setup_layer('name: "n" type: "LRN" lrn_param { norm_region: %s engine: CUDNN }' % region,
                                         np.ones((1, 4, 3, 3), _F32))
        layer.Forward(bottom, top)
        backward_layer(layer, bottom, top, np.ones((1, 4, 3, 3), _F32))
        assert engines.used_by(layer) == 'CAFFE' and fake_cudnn.calls == []


# -- Caffe's golden outputs through the cuDNN calls ------------------------------------------
GOLDEN_LAYERS = [c for t in ('Convolution', 'Deconvolution', 'Pooling', 'Softmax', 'SoftmaxWithLoss', 'BatchNorm')
                 for c in golden_cases(t)]
GOLDEN_NETS = [c for c in golden_cases(kind='nets') if c in ('lenet_train', 'cifar10_quick_train')]


@pytest.mark.skipif(not GOLDEN_LAYERS, reason='../shared golden cases not present')
@pytest.mark.parametrize('case', GOLDEN_LAYERS)
def test_golden_layers_through_the_cudnn_calls(fake_cudnn, case):
    check_golden_layer(case, rtol=1e-4)
    if case.startswith('batchnorm'):
        assert {c[0] for c in fake_cudnn.calls} == ({'bn_infer'} if 'global' in case else {'bn_train', 'bn_bwd'})


@pytest.mark.skipif(not GOLDEN_NETS, reason='../shared golden cases not present')
@pytest.mark.parametrize('case', GOLDEN_NETS)
def test_golden_nets_through_the_cudnn_calls(fake_cudnn, case):
    check_golden_net(case, rtol=1e-4)
    # pooling stays on Caffe's engine in both: MAX with backward, AVE at Caffe's ceil output size
    assert {c[0] for c in fake_cudnn.calls} == {'fwd', 'bwd_filter', 'bwd_data', 'softmax_fwd'}


# =============================================================================
# On a GPU: cuDNN (where CuPy has it) and engine CAFFE against NumPy
# =============================================================================
@pytest.fixture(params=['CUDNN', 'CAFFE'])
def gpu_engine(request, monkeypatch):
    if not backend.gpu_available():
        pytest.skip('no CuPy/GPU')
    monkeypatch.setenv('CAFFEINE_ENGINE', request.param)
    caffeine.set_mode_gpu()
    if request.param == 'CUDNN' and backend.cudnn() is None:
        caffeine.set_mode_cpu()
        pytest.skip('this CuPy has no cuDNN (CuPy 14, or no libcudnn 8)')
    yield request.param
    caffeine.set_mode_cpu()


GPU_LAYERS = [('Convolution', 'convolution_param { %s }' % p, s) for _, p, s in CONVS[:3]] + [
    ('Deconvolution', 'convolution_param { %s }' % CONVS[3][1], CONVS[3][2]),
    ('Pooling', 'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', (2, 3, 7, 7)),
    ('Softmax', '', (2, 5, 3)),
    ('ReLU', 'relu_param { negative_slope: 0.1 }', (2, 3, 4, 5)),
    ('ELU', '', (2, 3, 4, 5)),
    ('Sigmoid', '', (2, 3, 4, 5)),
    ('TanH', '', (2, 3, 4, 5)),
    ('LRN', 'lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 k: 2 }', (2, 7, 4, 5)),
]


def _layer_run(text, x, dy, params):
    layer, bottom, top = setup_layer(text, x, params=params)
    layer.Forward(bottom, top)
    for p in layer.blobs:
        p.diff[...] = 0
    dx = backward_layer(layer, bottom, top, dy)[0]
    return layer, top[0].data.copy(), dx, [p.diff.copy() for p in layer.blobs]


@pytest.mark.gpu
@pytest.mark.parametrize('kind,param,shape', GPU_LAYERS)
def test_gpu_engine_equals_numpy(gpu_engine, kind, param, shape):
    text = 'name: "l" type: "%s" %s' % (kind, param)
    rng = np.random.RandomState(5)
    x = rng.randn(*shape).astype(_F32)
    caffeine.set_mode_cpu()
    probe, _, ptop = setup_layer(text, x)
    params = [rng.randn(*b.shape).astype(_F32) for b in probe.blobs]
    dy = rng.randn(*ptop[0].shape).astype(_F32)
    _, y0, dx0, pd0 = _layer_run(text, x, dy, params)
    caffeine.set_mode_gpu()
    layer, y, dx, pd = _layer_run(text, x, dy, params)
    if kind in ('Convolution', 'Deconvolution'):
        assert isinstance(layer.engine, engines.CudnnConvolution) == (gpu_engine == 'CUDNN')
    assert_close(y, y0, rtol=1e-4, name='top')
    assert_close(dx, dx0, rtol=1e-4, name='bottom diff')
    for i, (a, e) in enumerate(zip(pd, pd0)):
        assert_close(a, e, rtol=1e-4, name='param %d diff' % i)


@pytest.mark.gpu
@pytest.mark.parametrize('in_place', [False, True])
@pytest.mark.parametrize('phase', [caffe_pb2.TRAIN, caffe_pb2.TEST])
def test_gpu_batch_norm_equals_numpy(gpu_engine, phase, in_place):
    text = 'name: "bn" type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }'
    rng = np.random.RandomState(9)
    xs = [(rng.randn(8, 16, 7, 5) * 3 + 1).astype(_F32) for _ in range(3)]
    dy = rng.randn(*xs[0].shape).astype(_F32)
    stats = [rng.randn(16).astype(_F32), np.abs(rng.randn(16)).astype(_F32) + 0.5, np.array([2.5], _F32)]
    caffeine.set_mode_cpu()
    _, ys0, dx0, stats0 = _bn_run(text, xs, dy, in_place, phase, stats)
    caffeine.set_mode_gpu()
    layer, ys, dx, stats1 = _bn_run(text, xs, dy, in_place, phase, stats)
    assert engines.used_by(layer) == ('CUDNN' if gpu_engine == 'CUDNN' else 'CAFFE')
    for i, (a, e) in enumerate(zip(ys, ys0)):
        assert_close(a, e, rtol=1e-4, name='top after forward %d' % i)
    assert_close(dx, dx0, rtol=1e-4, name='bottom diff')
    for name, a, e in zip(('mean_sum', 'var_sum', 's'), stats1, stats0):
        assert_close(a, e, rtol=1e-4, name=name)


@pytest.mark.gpu
@pytest.mark.parametrize('type_name', sorted(SOLVERS))
def test_gpu_solver_kernels_equal_numpy(tmp_path, type_name):
    if not backend.gpu_available():
        pytest.skip('no CuPy/GPU')
    extra, _ = SOLVERS[type_name]
    caffeine.set_mode_cpu()
    caffeine.set_random_seed(5)
    cpu = _train(tmp_path, type_name, extra)
    caffeine.set_mode_gpu()
    caffeine.set_random_seed(5)
    try:
        gpu = _train(tmp_path, type_name, extra)
    finally:
        caffeine.set_mode_cpu()
    for a, b in zip(gpu, cpu):
        assert_close(a, b, rtol=1e-4, name=type_name)
