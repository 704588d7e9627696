"""The PyTorch twin of a Caffe net: a ``torch.nn.Module`` built layer by layer from a NetParameter.

Imported only by :func:`models.TorchTwin`, so a caffeine-only process never loads torch.
Each Caffe layer type has one builder, registered with :func:`_builds`; a builder reads the
layer's parameters and the bottoms' shapes, records the tops' shapes, and appends one
:class:`Step` (a function of the bottoms that returns the tops).  A type with no builder
raises NotImplementedError.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from caffeine.net import filter_net
from caffeine.proto import caffe_pb2

_BUILDERS = {}


def _builds(*types):
    def deco(fn):
        for t in types:
            _BUILDERS[t] = fn
        return fn
    return deco


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


def _repeated(field, i, default):
    if len(field) == 0:
        return default
    return int(field[i] if len(field) > 1 else field[0])


class Step:
    """One layer of the twin: a function of its bottoms that returns its tops."""

    def __init__(self, name, type, bottoms, tops, fn, module=None):
        self.name, self.type, self.bottoms, self.tops, self.fn, self.module = name, type, bottoms, tops, fn, module


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


class Lambda(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


class TorchTwin(nn.Module):
    """The net's layers as torch modules and functions, run in the prototxt's order."""

    def __init__(self, param, phase=None):
        super().__init__()
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
        for j, top in enumerate(lp.top):
            if j < len(lp.loss_weight) and lp.loss_weight[j]:
                self.loss_weights[top] = lp.loss_weight[j]
        build = _BUILDERS.get(lp.type)
        if build is None:
            raise NotImplementedError('layer %s: type %s has no PyTorch twin here' % (lp.name, lp.type))
        bshapes = [self.shapes[b] for b in lp.bottom]
        if scale is not None:
            build(self, lp, bshapes, scale=scale)
        else:
            build(self, lp, bshapes)

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

    def sgd(self, base_lr, momentum, weight_decay):
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


def _weights(lp, bias):
    """The (torch name, layer, blob index) of a layer's weight and, if any, bias."""
    return [('weight', lp, 0)] + ([('bias', lp, 1)] if bias else [])


def _same_shape(twin, lp, shape):
    for top in lp.top:
        twin.shapes[top] = shape


# -- data and vision ----------------------------------------------------------------
@_builds('Input')
def _input(twin, lp, bshapes):
    shapes = list(lp.input_param.shape)
    for j, top in enumerate(lp.top):
        twin.shapes[top] = tuple(shapes[0 if len(shapes) == 1 else j].dim)
        twin.inputs.append(top)
    twin._step(lp, None)


@_builds('Convolution')
def _convolution(twin, lp, bshapes):
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
    mod = twin._module(lp, nn.Conv2d(c, cp.num_output, (kh, kw), (sh, sw), (ph, pw), (dh, dw),
                                     groups=cp.group, bias=cp.bias_term), _weights(lp, cp.bias_term))
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    twin.shapes[lp.top[0]] = (n, cp.num_output, oh, ow)
    twin._step(lp, mod, mod)


@_builds('Pooling')
def _pooling(twin, lp, bshapes):
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
    if len(lp.top) > 1:
        raise NotImplementedError('%s: pooling mask top' % lp.name)
    if pp.pool == caffe_pb2.PoolingParameter.MAX:
        mod = nn.MaxPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=True)
    elif pp.pool == caffe_pb2.PoolingParameter.AVE:
        # Caffe divides by the window clipped to the padded input: torch's count_include_pad.
        mod = nn.AvgPool2d((kh, kw), (sh, sw), (ph, pw), ceil_mode=True, count_include_pad=True)
    else:
        raise NotImplementedError('%s: STOCHASTIC pooling' % lp.name)
    twin._module(lp, mod)
    twin.shapes[lp.top[0]] = (n, c, oh, ow)
    twin._step(lp, mod, mod)


@_builds('LRN')
def _lrn(twin, lp, bshapes):
    rp = lp.lrn_param
    mod = None
    if rp.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        # Caffe: x / (k + alpha/size * sum_window x^2)^beta == torch's LocalResponseNorm.
        mod = twin._module(lp, nn.LocalResponseNorm(rp.local_size, rp.alpha, rp.beta, rp.k))
        fn = mod
    else:
        size, alpha, beta = rp.local_size, rp.alpha, rp.beta
        pad = (size - 1) // 2

        def fn(x):
            avg = F.avg_pool2d(x * x, size, 1, pad, ceil_mode=True, count_include_pad=True)
            return x * (1 + alpha * avg).pow(-beta)
    twin.shapes[lp.top[0]] = bshapes[0]
    twin._step(lp, fn, mod)


# -- neurons ------------------------------------------------------------------------
@_builds('ReLU', 'Sigmoid', 'TanH', 'AbsVal')
def _neuron(twin, lp, bshapes):
    inplace = lp.bottom[0] == lp.top[0]
    if lp.type == 'ReLU':
        slope = lp.relu_param.negative_slope
        mod = nn.LeakyReLU(slope, inplace=inplace) if slope else nn.ReLU(inplace=inplace)
    else:
        mod = {'Sigmoid': nn.Sigmoid, 'TanH': nn.Tanh, 'AbsVal': lambda: Lambda(torch.abs)}[lp.type]()
    twin._module(lp, mod)
    twin.shapes[lp.top[0]] = bshapes[0]
    twin._step(lp, mod, mod)


@_builds('Dropout')
def _dropout(twin, lp, bshapes):
    mod = twin._module(lp, nn.Dropout(lp.dropout_param.dropout_ratio, inplace=lp.bottom[0] == lp.top[0]))
    twin.shapes[lp.top[0]] = bshapes[0]
    twin._step(lp, mod, mod)


# -- inner product and normalization ------------------------------------------------
@_builds('InnerProduct')
def _inner_product(twin, lp, bshapes):
    ip = lp.inner_product_param
    axis = ip.axis % len(bshapes[0])
    K = math.prod(bshapes[0][axis:])
    mod = twin._module(lp, nn.Linear(K, ip.num_output, bias=ip.bias_term), _weights(lp, ip.bias_term))
    twin.shapes[lp.top[0]] = tuple(bshapes[0][:axis]) + (ip.num_output,)
    twin._step(lp, lambda x: mod(x.flatten(axis)), mod)


@_builds('BatchNorm')
def _batch_norm(twin, lp, bshapes, scale=None):
    """BatchNorm, with a following in-place Scale fused into one affine torch BatchNorm."""
    bp = lp.batch_norm_param
    c = bshapes[0][1]
    global_stats = bp.use_global_stats if bp.HasField('use_global_stats') else twin.phase == caffe_pb2.TEST
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
        twin.fused_scale[lp.name] = scale.name
    twin._module(lp, mod, specs)
    tops = list(scale.top) if affine else list(lp.top)
    twin.shapes[lp.top[0]] = bshapes[0]
    for top in tops:
        twin.shapes[top] = bshapes[0]
    twin._step(lp, mod, mod, tops=tops)


@_builds('Scale')
def _scale(twin, lp, bshapes):
    sp = lp.scale_param
    if len(lp.bottom) != 1:
        raise NotImplementedError('%s: Scale with two bottoms' % lp.name)
    if sp.num_axes != 1:
        raise NotImplementedError('%s: Scale over %d axes' % (lp.name, sp.num_axes))
    axis = sp.axis % len(bshapes[0])
    mod = twin._module(lp, ChannelScale(bshapes[0][axis], sp.bias_term, axis), _weights(lp, sp.bias_term))
    twin.shapes[lp.top[0]] = bshapes[0]
    twin._step(lp, mod, mod)


# -- element-wise and shape ---------------------------------------------------------
def _eltwise_sum(coeffs):
    def fn(*xs):
        if coeffs:
            y = xs[0] * coeffs[0]
            for c, x in zip(coeffs[1:], xs[1:]):
                y = y + c * x
            return y
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y = y + x
        return y
    return fn


def _fold(op):
    def fn(*xs):
        y = xs[0]
        for x in xs[1:]:
            y = op(y, x)
        return y
    return fn


@_builds('Eltwise')
def _eltwise(twin, lp, bshapes):
    ep = lp.eltwise_param
    if ep.operation == caffe_pb2.EltwiseParameter.SUM:
        fn = _eltwise_sum(list(ep.coeff))
    elif ep.operation == caffe_pb2.EltwiseParameter.PROD:
        fn = _fold(torch.mul)
    else:
        fn = _fold(torch.maximum)
    twin.shapes[lp.top[0]] = bshapes[0]
    twin._step(lp, fn)


@_builds('Concat')
def _concat(twin, lp, bshapes):
    cp = lp.concat_param
    axis = (cp.concat_dim if cp.HasField('concat_dim') else cp.axis) % len(bshapes[0])
    shape = list(bshapes[0])
    shape[axis] = sum(s[axis] for s in bshapes)
    twin.shapes[lp.top[0]] = tuple(shape)
    twin._step(lp, lambda *xs: torch.cat(xs, axis))


@_builds('Flatten')
def _flatten(twin, lp, bshapes):
    fp = lp.flatten_param
    nd = len(bshapes[0])
    a, e = fp.axis % nd, fp.end_axis % nd
    twin.shapes[lp.top[0]] = bshapes[0][:a] + (math.prod(bshapes[0][a:e + 1]),) + bshapes[0][e + 1:]
    twin._step(lp, lambda x: x.flatten(a, e))


@_builds('Split')
def _split(twin, lp, bshapes):
    _same_shape(twin, lp, bshapes[0])
    n = len(lp.top)
    twin._step(lp, lambda x: (x,) * n)


@_builds('Silence')
def _silence(twin, lp, bshapes):
    twin._step(lp, lambda *xs: ())


# -- softmax, loss and accuracy -----------------------------------------------------
@_builds('Softmax')
def _softmax(twin, lp, bshapes):
    axis = lp.softmax_param.axis % len(bshapes[0])
    twin.shapes[lp.top[0]] = bshapes[0]
    twin._step(lp, lambda x: F.softmax(x, axis))


@_builds('SoftmaxWithLoss')
def _softmax_loss(twin, lp, bshapes):
    lossp = lp.loss_param
    ignore = lossp.ignore_label if lossp.HasField('ignore_label') else -100
    if lossp.HasField('normalize') and not lossp.normalize or \
            lossp.normalization not in (caffe_pb2.LossParameter.VALID, caffe_pb2.LossParameter.BATCH_SIZE):
        raise NotImplementedError('%s: loss normalization other than VALID' % lp.name)
    if lp.softmax_param.axis != 1 or len(bshapes[0]) != 2:
        raise NotImplementedError('%s: SoftmaxWithLoss on other than (N, C)' % lp.name)
    if not len(lp.loss_weight):
        twin.loss_weights[lp.top[0]] = 1.0
    twin.shapes[lp.top[0]] = ()
    twin._step(lp, lambda x, label: F.cross_entropy(x, label.reshape(-1).long(), ignore_index=ignore))


@_builds('Accuracy')
def _accuracy(twin, lp, bshapes):
    k = lp.accuracy_param.top_k
    twin.shapes[lp.top[0]] = ()

    def fn(x, label):
        with torch.no_grad():
            top = x.topk(k, dim=1).indices
            return (top == label.reshape(-1, 1).long()).any(1).float().mean()
    twin._step(lp, fn)
