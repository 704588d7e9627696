"""The benchmark nets, for caffeine and as PyTorch twins built from the same prototxt.

Used by ``bench_cpu.py``, ``bench_gpu.py`` and ``tests/test_benchmark_models.py``.
PyTorch is imported only inside the functions that need it, so that a
caffeine-only process (the memory measurement) never loads it.

- :func:`net_param` reads a model-library prototxt as a caffe_pb2.NetParameter;
  for training nets the Data layers become an Input layer of the same shapes
  (data and label), for deploy nets the Input batch is set.
- :func:`TorchTwin` builds a ``torch.nn.Module`` layer by layer from the same
  NetParameter (``benchmarks/torch_twin.py``, one builder per Caffe layer type:
  Convolution, Pooling (Caffe's ceil-mode output size, checked against torch's),
  LRN, ReLU, Sigmoid, TanH, AbsVal, Dropout, InnerProduct, BatchNorm (+ a following
  in-place Scale, fused into one affine BatchNorm2d), Scale, Eltwise, Concat,
  Flatten, Split, Silence, Softmax, SoftmaxWithLoss and Accuracy).  Anything else
  raises NotImplementedError.
- :func:`copy_weights` copies a caffeine Net's parameters into the twin, so
  that the two give the same outputs and gradients.
"""
from __future__ import annotations

import importlib.util
import os
import sys

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
    'googlenet': dict(kind='forward', prototxt='models/bvlc_googlenet/deploy.prototxt',
                      batch=8, gpu_batch=64, data_range=(-128.0, 128.0), title='GoogLeNet forward (b=8)'),
    'vgg16': dict(kind='forward', prototxt='models/vgg16/deploy.prototxt',
                  batch=2, gpu_batch=32, data_range=(-128.0, 128.0), title='VGG-16 forward (b=2)'),
}

# The solver settings of the training benchmarks (Caffe's SGD: momentum and weight decay).
BASE_LR = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005

DATA_TYPES = ('Data', 'ImageData', 'HDF5Data', 'MemoryData', 'WindowData', 'DummyData')


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


def torch_twin():
    """The module that builds PyTorch twins (benchmarks/torch_twin.py); importing it loads torch."""
    global _TWIN_MODULE
    if _TWIN_MODULE is None:
        spec = importlib.util.spec_from_file_location('caffeine_bench_torch_twin',
                                                      os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   'torch_twin.py'))
        _TWIN_MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_TWIN_MODULE)
    return _TWIN_MODULE


_TWIN_MODULE = None


def TorchTwin(param, phase=None):  # noqa: N802 (a class, built on first use so torch loads lazily)
    """A torch.nn.Module equal to ``param`` (a NetParameter), filtered by its phase."""
    return torch_twin().TorchTwin(param, phase)


def twin_sgd(twin):
    """The twin's torch.optim.SGD with the benchmark's solver settings."""
    return twin.sgd(BASE_LR, MOMENTUM, WEIGHT_DECAY)


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
