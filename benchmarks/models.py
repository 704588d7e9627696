"""The benchmark nets, for caffeine and as PyTorch twins built from the same prototxt.

Used by ``bench_cpu.py``, ``bench_gpu.py`` and ``tests/test_benchmark_models.py``.
PyTorch is imported only inside the functions that need it, so that a
caffeine-only process (the memory measurement) never loads it.

- :func:`net_param` reads a model-library prototxt as a caffe_pb2.NetParameter;
  for training nets the Data layers become an Input layer of the same shapes
  (data and label), for deploy nets the Input batch is set.
- :class:`TorchTwin` (built by :func:`build_torch_twin`) is a ``torch.nn.Module``
  made layer by layer from the same NetParameter: Convolution, Pooling (Caffe's
  ceil-mode output size, checked against torch's), LRN, ReLU, Sigmoid, TanH,
  Dropout, InnerProduct, BatchNorm (+ a following in-place Scale, fused into
  one affine BatchNorm2d), Scale, Eltwise, Concat, Flatten, Split, Softmax,
  SoftmaxWithLoss and Accuracy.  Anything else raises NotImplementedError.
- :func:`copy_weights` copies a caffeine Net's parameters into the twin, so
  that the two give the same outputs and gradients.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from caffeine.proto import caffe_pb2  # noqa: E402

# name -> what the benchmark runs.  'input' is the (C, H, W) of the Data layer
# a training net's Data layers are replaced by.
NETS = {
    'lenet': dict(kind='train', prototxt='models/lenet/train_val.prototxt', input=(1, 28, 28),
                  batch=64, gpu_batch=256, classes=10, data_range=(0.0, 1.0),
                  title='LeNet train iter (b=64)'),
    'cifar10_quick': dict(kind='train', prototxt='models/cifar10_quick/train_val.prototxt', input=(3, 32, 32),
                          batch=100, gpu_batch=256, classes=10, data_range=(-128.0, 128.0),
                          title='CIFAR10-quick train iter (b=100)'),
    'caffenet': dict(kind='forward', prototxt='models/bvlc_reference_caffenet/deploy.prototxt',
                     batch=10, gpu_batch=128, data_range=(-128.0, 128.0), title='CaffeNet forward (b=10)'),
    'resnet50': dict(kind='forward', prototxt='models/resnet50/deploy.prototxt',
                     batch=8, gpu_batch=64, data_range=(-128.0, 128.0), title='ResNet-50 forward (b=8)'),
}

# The solver settings of the training benchmarks (Caffe's SGD: momentum and weight decay).
BASE_LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005

DATA_TYPES = ('Data', 'ImageData', 'HDF5Data', 'MemoryData', 'WindowData', 'DummyData')


def _repeated(field, i, default):
    if len(field) == 0:
        return default
    return int(field[i] if len(field) > 1 else field[0])


def _only_test_phase(lp):
    return len(lp.include) > 0 and all(r.HasField('phase') and r.phase == caffe_pb2.TEST for r in lp.include)


def net_param(name, batch=None):
    """The benchmark's NetParameter for NETS[name] (phase set: TRAIN or TEST).

    Training nets: each Data layer of the TRAIN phase becomes an Input layer
    with tops data (batch, C, H, W) and label (batch,); TEST-only Data layers
    are dropped.  Deploy nets: the Input layer's batch dimension is set.
    """
    from caffeine.prototxt import read_net_param
    spec = NETS[name]
    src = read_net_param(os.path.join(ROOT, spec['prototxt']))
    if batch is None:
        batch = spec['batch']
    out = caffe_pb2.NetParameter()
    out.CopyFrom(src)
    del out.layer[:]
    for lp in src.layer:
        if lp.type in DATA_TYPES:
            if _only_test_phase(lp):
                continue
            nl = out.layer.add()
            nl.name = lp.name
            nl.type = 'Input'
            nl.top.extend(lp.top)
            shp = nl.input_param.shape.add()
            shp.dim.extend((batch,) + tuple(spec['input']))
            if len(lp.top) > 1:
                nl.input_param.shape.add().dim.append(batch)
            continue
        nl = out.layer.add()
        nl.CopyFrom(lp)
        if lp.type == 'Input' and spec['kind'] == 'forward':
            for shp in nl.input_param.shape:
                shp.dim[0] = batch
    out.state.phase = caffe_pb2.TRAIN if spec['kind'] == 'train' else caffe_pb2.TEST
    return out


def make_inputs(name, param, seed=0):
    """{blob name: float32 array} for the net's Input tops: data in NETS[name]['data_range'], labels in range."""
    spec = NETS[name]
    rs = np.random.RandomState(seed)
    lo, hi = spec['data_range']
    out = {}
    for lp in param.layer:
        if lp.type != 'Input':
            continue
        shapes = list(lp.input_param.shape)
        for j, top in enumerate(lp.top):
            dims = tuple(shapes[0 if len(shapes) == 1 else j].dim)
            if top == 'label':
                out[top] = rs.randint(0, spec.get('classes', 10), size=dims).astype(np.float32)
            else:
                out[top] = rs.uniform(lo, hi, size=dims).astype(np.float32)
    return out


def set_inputs(net, inputs):
    for k, v in inputs.items():
        net.blobs[k].data[...] = v


def calibrate_batchnorm(net):
    """Give each BatchNorm of a TEST net the statistics of its input (one forward pass, layer by layer).

    The deploy nets' BatchNorm layers start with zero statistics (variance 0:
    each layer would scale by 1/sqrt(eps)); calibrated, a random ResNet keeps
    its activations in range, so that the cross-check means something.
    """
    for i, layer in enumerate(net.layers):
        if layer.type == 'BatchNorm':
            x = net.bottom_vecs[i][0].data
            axes = (0,) + tuple(range(2, x.ndim))
            mean = x.mean(axis=axes, dtype=np.float64)
            var = x.var(axis=axes, dtype=np.float64)
            layer.blobs[0].data[...] = mean
            layer.blobs[1].data[...] = var
            layer.blobs[2].data[...] = 1.0
        net.forward_from_to(i, i)


def caffe_pool_out(size, k, s, p):
    """Caffe's PoolingLayer output size (ceil, then dropping a window that starts in the padding)."""
    out = int(math.ceil(float(size + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def torch_pool_out(size, k, s, p):
    """torch's ceil_mode pooling output size (ATen's pooling_output_shape)."""
    out = (size + 2 * p - (k - 1) - 1 + (s - 1)) // s + 1
    if (out - 1) * s >= size + p:
        out -= 1
    return out


class Step:
    """One layer of the twin: a function of its bottoms that returns its tops."""

    def __init__(self, name, type, bottoms, tops, fn, module=None):
        self.name, self.type, self.bottoms, self.tops, self.fn, self.module = name, type, bottoms, tops, fn, module


def build_torch_twin(param, phase=None):
    """A TorchTwin (torch.nn.Module) equal to ``param`` (a NetParameter), filtered by its phase."""
    return TorchTwin(param, phase)


def _torch_classes():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class ChannelScale(nn.Module):
        """Caffe's Scale layer with one bottom and a learned per-channel scale (and bias)."""

        def __init__(self, channels, bias, axis):
            super().__init__()
            self.axis = axis
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

        def forward(self, x):
            shape = [1] * x.dim()
            shape[self.axis] = -1
            y = x * self.weight.view(shape)
            if self.bias is not None:
                y = y + self.bias.view(shape)
            return y

    class TorchTwin(nn.Module):
        def __init__(self, param, phase=None):
            super().__init__()
            from caffeine.net import filter_net
            p = caffe_pb2.NetParameter()
            p.CopyFrom(param)
            if phase is not None:
                p.state.phase = phase
            self.phase = p.state.phase
            p = filter_net(p)
            self.steps = []
            self.layers = nn.ModuleDict()
            self.param_specs = {}     # torch parameter name -> (lr_mult, decay_mult)
            self.fused_scale = {}     # BatchNorm layer name -> the Scale layer folded into it
            self.loss_weights = {}    # top name -> loss weight
            self.shapes = {}
            self.inputs = []
            layers = list(p.layer)
            skip = set()
            for idx, lp in enumerate(layers):
                if idx in skip:
                    continue
                nxt = layers[idx + 1] if idx + 1 < len(layers) else None
                if (lp.type == 'BatchNorm' and nxt is not None and nxt.type == 'Scale' and len(nxt.bottom) == 1
                        and nxt.bottom[0] == lp.top[0]):
                    skip.add(idx + 1)
                    self._add(lp, scale=nxt)
                else:
                    self._add(lp)
            self.train(self.phase == caffe_pb2.TRAIN)

        # -- building --------------------------------------------------------
        def _module(self, lp, mod, specs=None):
            key = lp.name.replace('.', '_')
            self.layers[key] = mod
            for pname, spec_lp, j in (specs or []):
                ps = spec_lp.param[j] if j < len(spec_lp.param) else caffe_pb2.ParamSpec()
                self.param_specs['layers.%s.%s' % (key, pname)] = (ps.lr_mult, ps.decay_mult)
            return mod

        def _step(self, lp, fn, module=None, tops=None, bottoms=None):
            self.steps.append(Step(lp.name, lp.type, list(lp.bottom if bottoms is None else bottoms),
                                   list(lp.top if tops is None else tops), fn, module))

        def _add(self, lp, scale=None):
            t = lp.type
            S = self.shapes
            bshapes = [S[b] for b in lp.bottom]
            for j, top in enumerate(lp.top):
                if j < len(lp.loss_weight) and lp.loss_weight[j]:
                    self.loss_weights[top] = lp.loss_weight[j]
            if t == 'Input':
                shapes = list(lp.input_param.shape)
                for j, top in enumerate(lp.top):
                    S[top] = tuple(shapes[0 if len(shapes) == 1 else j].dim)
                    self.inputs.append(top)
                self._step(lp, None)
                return
            if t == 'Convolution':
                cp = lp.convolution_param
                if cp.axis != 1 or len(bshapes[0]) != 4:
                    raise NotImplementedError('%s: only 2-D convolution on axis 1' % lp.name)
                kh = cp.kernel_h or _repeated(cp.kernel_size, 0, 0)
                kw = cp.kernel_w or _repeated(cp.kernel_size, 1, 0)
                ph = cp.pad_h if cp.HasField('pad_h') else _repeated(cp.pad, 0, 0)
                pw = cp.pad_w if cp.HasField('pad_w') else _repeated(cp.pad, 1, 0)
                sh = cp.stride_h or _repeated(cp.stride, 0, 1)
                sw = cp.stride_w or _repeated(cp.stride, 1, 1)
                dh, dw = _repeated(cp.dilation, 0, 1), _repeated(cp.dilation, 1, 1)
                n, c, h, w = bshapes[0]
                mod = self._module(lp, nn.Conv2d(c, cp.num_output, (kh, kw), (sh, sw), (ph, pw), (dh, dw),
                                                 groups=cp.group, bias=cp.bias_term),
                                   [('weight', lp, 0)] + ([('bias', lp, 1)] if cp.bias_term else []))
                oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
                ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
                S[lp.top[0]] = (n, cp.num_output, oh, ow)
                self._step(lp, mod, mod)
                return
            if t == 'Pooling':
                pp = lp.pooling_param
                n, c, h, w = bshapes[0]
                if pp.global_pooling:
                    kh, kw = h, w
                else:
                    kh = pp.kernel_h if pp.HasField('kernel_h') else pp.kernel_size
                    kw = pp.kernel_w if pp.HasField('kernel_w') else pp.kernel_size
                ph = pp.pad_h if pp.HasField('pad_h') else int(pp.pad)
                pw = pp.pad_w if pp.HasField('pad_w') else int(pp.pad)
                sh = pp.stride_h if pp.HasField('stride_h') else (1 if pp.global_pooling else pp.stride)
                sw = pp.stride_w if pp.HasField('stride_w') else (1 if pp.global_pooling else pp.stride)
                oh, ow = caffe_pool_out(h, kh, sh, ph), caffe_pool_out(w, kw, sw, pw)
                # torch's ceil mode drops a last window that starts in the padding, as Caffe does;
                # check that both give the same size (and torch's pad <= kernel/2 rule).
                if (oh, ow) != (torch_pool_out(h, kh, sh, ph), torch_pool_out(w, kw, sw, pw)):
                    raise NotImplementedError('%s: Caffe pools to %dx%d, torch ceil_mode would not' % (lp.name, oh, ow))
                if 2 * ph > kh or 2 * pw > kw:
                    raise NotImplementedError('%s: pad larger than half the kernel (torch refuses)' % lp.name)
                if pp.pool == caffe_pb2.PoolingParameter.MAX:
                    mod = nn.MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=True)
                elif pp.pool == caffe_pb2.PoolingParameter.AVE:
                    # Caffe divides by the window clipped to the padded input: torch's count_include_pad.
                    mod = nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=True, count_include_pad=True)
                else:
                    raise NotImplementedError('%s: STOCHASTIC pooling' % lp.name)
                self._module(lp, mod)
                S[lp.top[0]] = (n, c, oh, ow)
                if len(lp.top) > 1:
                    raise NotImplementedError('%s: pooling mask top' % lp.name)
                self._step(lp, mod, mod)
                return
            if t == 'LRN':
                rp = lp.lrn_param
                if rp.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
                    # Caffe: x / (k + alpha/size * sum_window x^2)^beta == torch's LocalResponseNorm.
                    mod = self._module(lp, nn.LocalResponseNorm(rp.local_size, rp.alpha, rp.beta, rp.k))
                    fn = mod
                else:
                    size, alpha, beta = rp.local_size, rp.alpha, rp.beta
                    pad = (size - 1) // 2

                    def fn(x, size=size, alpha=alpha, beta=beta, pad=pad):
                        avg = F.avg_pool2d(x * x, size, 1, pad, ceil_mode=True, count_include_pad=True)
                        return x * (1 + alpha * avg).pow(-beta)
                    mod = None
                S[lp.top[0]] = bshapes[0]
                self._step(lp, fn, mod)
                return
            if t in ('ReLU', 'Sigmoid', 'TanH', 'AbsVal'):
                inplace = lp.bottom[0] == lp.top[0]
                if t == 'ReLU':
                    slope = lp.relu_param.negative_slope
                    mod = nn.LeakyReLU(slope, inplace=inplace) if slope else nn.ReLU(inplace=inplace)
                else:
                    mod = {'Sigmoid': nn.Sigmoid, 'TanH': nn.Tanh}.get(t)
                    mod = mod() if mod else None
                    if mod is None:
                        mod = _Lambda(torch.abs)
                self._module(lp, mod)
                S[lp.top[0]] = bshapes[0]
                self._step(lp, mod, mod)
                return
            if t == 'Dropout':
                mod = self._module(lp, nn.Dropout(lp.dropout_param.dropout_ratio,
                                                  inplace=lp.bottom[0] == lp.top[0]))
                S[lp.top[0]] = bshapes[0]
                self._step(lp, mod, mod)
                return
            if t == 'InnerProduct':
                ip = lp.inner_product_param
                axis = ip.axis % len(bshapes[0])
                K = int(np.prod(bshapes[0][axis:]))
                mod = self._module(lp, nn.Linear(K, ip.num_output, bias=ip.bias_term),
                                   [('weight', lp, 0)] + ([('bias', lp, 1)] if ip.bias_term else []))

                def fn(x, mod=mod, axis=axis):
                    return mod(x.flatten(axis))
                S[lp.top[0]] = tuple(bshapes[0][:axis]) + (ip.num_output,)
                self._step(lp, fn, mod)
                return
            if t == 'BatchNorm':
                bp = lp.batch_norm_param
                c = bshapes[0][1]
                global_stats = (self.phase == caffe_pb2.TEST) if not bp.HasField('use_global_stats') \
                    else bp.use_global_stats
                affine = scale is not None
                if affine and scale.scale_param.axis != 1:
                    raise NotImplementedError('%s: Scale on axis %d' % (scale.name, scale.scale_param.axis))
                cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(bshapes[0])]
                mod = cls(c, eps=bp.eps, momentum=1.0 - bp.moving_average_fraction, affine=affine)
                mod.global_stats = global_stats
                specs = []
                if affine:
                    specs = [('weight', scale, 0)]
                    if scale.scale_param.bias_term:
                        specs.append(('bias', scale, 1))
                    else:
                        mod.bias.requires_grad_(False)
                self._module(lp, mod, specs)
                if affine:
                    self.fused_scale[lp.name] = scale.name
                S[lp.top[0]] = bshapes[0]
                tops = list(lp.top) if not affine else list(scale.top)
                self._step(lp, mod, mod, tops=tops)
                for top in tops:
                    S[top] = bshapes[0]
                return
            if t == 'Scale':
                sp = lp.scale_param
                if len(lp.bottom) != 1:
                    raise NotImplementedError('%s: Scale with two bottoms' % lp.name)
                axis = sp.axis % len(bshapes[0])
                if sp.num_axes != 1:
                    raise NotImplementedError('%s: Scale over %d axes' % (lp.name, sp.num_axes))
                mod = self._module(lp, ChannelScale(bshapes[0][axis], sp.bias_term, axis),
                                   [('weight', lp, 0)] + ([('bias', lp, 1)] if sp.bias_term else []))
                S[lp.top[0]] = bshapes[0]
                self._step(lp, mod, mod)
                return
            if t == 'Eltwise':
                ep = lp.eltwise_param
                op = ep.operation
                coeffs = list(ep.coeff)
                if op == caffe_pb2.EltwiseParameter.SUM:
                    def fn(*xs, coeffs=coeffs):
                        if coeffs:
                            y = xs[0] * coeffs[0]
                            for c, x in zip(coeffs[1:], xs[1:]):
                                y = y + c * x
                            return y
                        y = xs[0] + xs[1]
                        for x in xs[2:]:
                            y = y + x
                        return y
                elif op == caffe_pb2.EltwiseParameter.PROD:
                    def fn(*xs):
                        y = xs[0]
                        for x in xs[1:]:
                            y = y * x
                        return y
                else:
                    def fn(*xs):
                        y = xs[0]
                        for x in xs[1:]:
                            y = torch.maximum(y, x)
                        return y
                S[lp.top[0]] = bshapes[0]
                self._step(lp, fn)
                return
            if t == 'Concat':
                cp = lp.concat_param
                axis = cp.concat_dim if cp.HasField('concat_dim') else cp.axis
                axis %= len(bshapes[0])
                shape = list(bshapes[0])
                shape[axis] = sum(s[axis] for s in bshapes)
                S[lp.top[0]] = tuple(shape)
                self._step(lp, lambda *xs, axis=axis: torch.cat(xs, axis))
                return
            if t == 'Flatten':
                fp = lp.flatten_param
                nd = len(bshapes[0])
                a, e = fp.axis % nd, fp.end_axis % nd
                S[lp.top[0]] = bshapes[0][:a] + (int(np.prod(bshapes[0][a:e + 1])),) + bshapes[0][e + 1:]
                self._step(lp, lambda x, a=a, e=e: x.flatten(a, e))
                return
            if t == 'Split':
                for top in lp.top:
                    S[top] = bshapes[0]
                self._step(lp, lambda x, n=len(lp.top): (x,) * n)
                return
            if t == 'Silence':
                self._step(lp, lambda *xs: ())
                return
            if t == 'Softmax':
                axis = lp.softmax_param.axis % len(bshapes[0])
                S[lp.top[0]] = bshapes[0]
                self._step(lp, lambda x, axis=axis: F.softmax(x, axis))
                return
            if t == 'SoftmaxWithLoss':
                lossp = lp.loss_param
                ignore = lossp.ignore_label if lossp.HasField('ignore_label') else -100
                if lossp.HasField('normalize') and not lossp.normalize or \
                        lossp.normalization not in (caffe_pb2.LossParameter.VALID, caffe_pb2.LossParameter.BATCH_SIZE):
                    raise NotImplementedError('%s: loss normalization other than VALID' % lp.name)
                if lp.softmax_param.axis != 1 or len(bshapes[0]) != 2:
                    raise NotImplementedError('%s: SoftmaxWithLoss on other than (N, C)' % lp.name)
                if not len(lp.loss_weight):
                    self.loss_weights[lp.top[0]] = 1.0
                S[lp.top[0]] = ()

                def fn(x, label, ignore=ignore):
                    return F.cross_entropy(x, label.reshape(-1).long(), ignore_index=ignore)
                self._step(lp, fn)
                return
            if t == 'Accuracy':
                k = lp.accuracy_param.top_k
                S[lp.top[0]] = ()

                def fn(x, label, k=k):
                    with torch.no_grad():
                        top = x.topk(k, dim=1).indices
                        return (top == label.reshape(-1, 1).long()).any(1).float().mean()
                self._step(lp, fn)
                return
            raise NotImplementedError('layer %s: type %s has no PyTorch twin here' % (lp.name, t))

        def train(self, mode=True):
            super().train(mode)
            for m in self.modules():
                if getattr(m, 'global_stats', False):
                    m.eval()
            return self

        # -- running ---------------------------------------------------------
        def forward(self, inputs, layer_times=None, sync=None):
            """Run the net on ``inputs`` ({name: tensor}); returns {blob name: tensor}.

            ``layer_times``: a dict that gets each layer's wall time appended
            (seconds), after ``sync()`` where given (CUDA).
            """
            blobs = dict(inputs)
            for st in self.steps:
                if st.fn is None:
                    continue
                if layer_times is not None:
                    if sync:
                        sync()
                    t0 = time.perf_counter()
                out = st.fn(*[blobs[b] for b in st.bottoms])
                if layer_times is not None:
                    if sync:
                        sync()
                    layer_times.setdefault(st.name, []).append(time.perf_counter() - t0)
                if not isinstance(out, tuple):
                    out = (out,)
                for top, val in zip(st.tops, out):
                    blobs[top] = val
            return blobs

        def loss(self, blobs):
            total = None
            for top, w in self.loss_weights.items():
                v = blobs[top] * w
                total = v if total is None else total + v
            return total

        def sgd(self, base_lr=BASE_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY):
            """torch.optim.SGD with Caffe's per-parameter lr_mult and decay_mult.

            Caffe: v = m v + lr (g + wd w); w -= v.  torch: b = m b + (g + wd w); w -= lr b:
            the same steps for a fixed learning rate.
            """
            groups = []
            for name, prm in self.named_parameters():
                if not prm.requires_grad:
                    continue
                lr_mult, decay_mult = self.param_specs.get(name, (1.0, 1.0))
                if lr_mult == 0:
                    prm.requires_grad_(False)
                    continue
                groups.append({'params': [prm], 'lr': base_lr * lr_mult, 'weight_decay': weight_decay * decay_mult})
            return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)

    class _Lambda(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x)

    return TorchTwin


_TWIN = None


def TorchTwin(param, phase=None):  # noqa: N802 (a class, built on first use so torch loads lazily)
    global _TWIN
    if _TWIN is None:
        _TWIN = _torch_classes()
    return _TWIN(param, phase)


def copy_weights(net, twin):
    """Copy a caffeine Net's parameters (and BatchNorm statistics) into its TorchTwin."""
    import torch

    def put(dst, src):
        dst.data.copy_(torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).reshape(dst.shape))

    for st in twin.steps:
        mod = st.module
        if mod is None or st.name not in net.params:
            continue
        blobs = net.params[st.name]
        if st.type in ('Convolution', 'Scale'):
            put(mod.weight, blobs[0].data)
            if mod.bias is not None:
                put(mod.bias, blobs[1].data)
        elif st.type == 'InnerProduct':
            w = blobs[0].data
            if st.module.weight.shape != w.shape and w.ndim == 2 and w.shape[::-1] == tuple(mod.weight.shape):
                w = w.T  # transpose: true stores W as (K, N)
            put(mod.weight, w)
            if mod.bias is not None:
                put(mod.bias, blobs[1].data)
        elif st.type == 'BatchNorm':
            s = float(blobs[2].data.ravel()[0])
            f = 0.0 if s == 0 else 1.0 / s
            put(mod.running_mean, blobs[0].data * f)
            put(mod.running_var, blobs[1].data * f)
            scale = twin.fused_scale.get(st.name)
            if scale is not None:
                sb = net.params[scale]
                put(mod.weight, sb[0].data)
                if len(sb) > 1:
                    put(mod.bias, sb[1].data)
                else:
                    mod.bias.data.zero_()
    return twin


def rel_diff(a, b):
    """max |a - b| / max(max |b|, tiny), as a float."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError('shapes differ: %s vs %s' % (a.shape, b.shape))
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def max_abs_diff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def param_grads(net):
    """{torch-style name: caffeine diff} for the twin's parameter naming (layers.<name>.weight/bias)."""
    out = {}
    for lname, blobs in net.params.items():
        key = lname.replace('.', '_')
        layer = net.layer_dict[lname]
        if layer.type == 'BatchNorm':
            continue
        for j, b in enumerate(blobs[:2]):
            out[(lname, j, key)] = np.array(b.diff)
    return out


def compare_gradients(net, twin):
    """Largest relative gradient difference over the parameters, and the worst parameter's name.

    Per parameter: max |caffeine diff - torch grad| / max(max |torch grad|,
    1e-3 * the largest gradient of the net) -- a parameter whose gradient is
    zero in theory (a bias before a BatchNorm) is compared on the net's scale.
    """
    named = dict(twin.named_parameters())
    scale_to_bn = {v: k for k, v in twin.fused_scale.items()}  # a Scale folded into a BatchNorm
    pairs = []
    for (lname, j, key), diff in param_grads(net).items():
        mkey = scale_to_bn.get(lname, lname).replace('.', '_')
        prm = named.get('layers.%s.%s' % (mkey, 'weight' if j == 0 else 'bias'))
        if prm is None or prm.grad is None:
            continue
        g = prm.grad.detach().cpu().numpy().astype(np.float64)
        if g.shape != diff.shape:
            g = g.T if g.T.shape == diff.shape else g.reshape(diff.shape)
        pairs.append(('%s[%d]' % (lname, j), diff.astype(np.float64), g))
    if not pairs:
        return 0.0, None
    scale = max(float(np.abs(g).max()) for _, _, g in pairs)
    worst, worst_name = 0.0, None
    for name, diff, g in pairs:
        d = float(np.abs(diff - g).max()) / max(float(np.abs(g).max()), 1e-3 * scale, 1e-30)
        if d >= worst:
            worst, worst_name = d, name
    return worst, worst_name


def cross_check_train(net, twin, inputs, device='cpu'):
    """One forward-backward of the caffeine training net and of its twin, from equal weights.

    Returns {'loss_caffeine', 'loss_torch', 'loss_abs_diff', 'logits_rel_diff', 'logits_abs_diff',
    'grad_rel_diff', 'grad_worst'}; ``net``'s param diffs are left cleared.
    """
    import torch
    set_inputs(net, inputs)
    net.clear_param_diffs()
    loss_c = float(net.forward_backward())
    tin = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    twin.zero_grad(set_to_none=True)
    blobs = twin(tin)
    loss_t = twin.loss(blobs)
    loss_t.backward()
    # the logits: the first bottom of the loss layer
    loss_step = [st for st in twin.steps if st.tops and st.tops[0] in twin.loss_weights][0]
    logits = loss_step.bottoms[0]
    lc = np.array(net.blobs[logits].data)
    lt = blobs[logits].detach().cpu().numpy()
    g, gname = compare_gradients(net, twin)
    net.clear_param_diffs()
    twin.zero_grad(set_to_none=True)
    return {'loss_caffeine': loss_c, 'loss_torch': float(loss_t.detach()), 'loss_abs_diff': abs(loss_c - float(loss_t.detach())),
            'logits': logits, 'logits_rel_diff': rel_diff(lc, lt), 'logits_abs_diff': max_abs_diff(lc, lt),
            'grad_rel_diff': g, 'grad_worst': gname}


def cross_check_forward(net, twin, inputs, device='cpu'):
    """Forward the caffeine TEST net and its twin; compare the output and the last layer's input (logits)."""
    import torch
    set_inputs(net, inputs)
    last = net.layer_names[-1]
    out_name = net.outputs[0]
    logits = net.bottom_names[last][0] if net.bottom_names[last] else out_name
    net.forward()
    oc = np.array(net.blobs[out_name].data)
    # with the memory planner a middle blob is only valid until its buffer is reused: stop at the logits
    if logits != out_name:
        producer = [n for n in net.layer_names if logits in net.top_names[n]][-1]
        net.forward(end=producer)
    lc = np.array(net.blobs[logits].data)
    with torch.no_grad():
        blobs = twin({k: torch.from_numpy(v).to(device) for k, v in inputs.items()})
    ot = blobs[out_name].cpu().numpy()
    lt = blobs[logits].cpu().numpy()
    return {'output': out_name, 'out_abs_diff': max_abs_diff(oc, ot), 'out_rel_diff': rel_diff(oc, ot),
            'logits': logits, 'logits_abs_diff': max_abs_diff(lc, lt), 'logits_rel_diff': rel_diff(lc, lt)}


# -- caffeine training ------------------------------------------------------------------
def solver_param(param, base_lr=BASE_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, gpu=False):
    sp = caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(param)
    sp.base_lr = base_lr
    sp.momentum = momentum
    sp.weight_decay = weight_decay
    sp.lr_policy = 'fixed'
    sp.max_iter = 10 ** 9
    sp.display = 0
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.test_initialization = False
    sp.solver_mode = caffe_pb2.SolverParameter.GPU if gpu else caffe_pb2.SolverParameter.CPU
    sp.random_seed = 1701
    sp.type = 'SGD'
    return sp


class HandSGD:
    """Caffe's SGD update by hand, for when caffeine.solver is not there yet.

    One step: clear diffs, forward-backward, then per learnable param
    g += wd*decay_mult*w; v = m*v + lr*lr_mult*g; w -= v.
    """

    def __init__(self, net, base_lr=BASE_LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY):
        from caffeine import backend
        self.net = net
        self.base_lr, self.momentum, self.weight_decay = base_lr, momentum, weight_decay
        xp = backend.get_xp()
        self.history = [xp.zeros(p.xdata.shape, dtype=p.xdata.dtype) for p in net.learnable_params]

    def step(self, iters=1):
        net = self.net
        for _ in range(iters):
            net.clear_param_diffs()
            net.forward_backward()
            for i, p in enumerate(net.learnable_params):
                lr = self.base_lr * net.params_lr[i]
                wd = self.weight_decay * net.params_weight_decay[i]
                w, g, v = p.xdata, p.xdiff, self.history[i]
                if wd:
                    g += wd * w
                v *= self.momentum
                v += lr * g
                w -= v


def make_trainer(param, gpu=False):
    """(trainer with .net and .step(n), description): caffeine's SGDSolver when caffeine.solver exists, else HandSGD."""
    import caffeine
    try:
        import caffeine.solver as solver_mod  # noqa: F401
    except ImportError as e:
        if 'caffeine.solver' not in str(e) and "'solver'" not in str(e):
            raise
        solver_mod = None
    if solver_mod is not None:
        sp = solver_param(param, gpu=gpu)
        cls = getattr(solver_mod, 'SGDSolver', None)
        if cls is not None:
            s = cls(sp)
            return s, 'caffeine.solver.SGDSolver.step(1)'
    net = caffeine.Net(param, caffeine.TRAIN)
    return HandSGD(net), 'Net.forward_backward + hand SGD update (no caffeine.solver)'
