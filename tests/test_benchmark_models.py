"""The benchmark's PyTorch twins equal caffeine's nets (a correctness test of our layers too).

benchmarks/models.py builds a torch module layer by layer from the same
NetParameter and copies caffeine's weights into it; the outputs and gradients
must agree.  Skipped where torch is not installed (CI does not install it).
"""
import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import caffeine  # noqa: E402
from caffeine.layer import layer_type_list  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_models():
    spec = importlib.util.spec_from_file_location('bench_models', os.path.join(ROOT, 'benchmarks', 'models.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


M = _load_models()


def _need(*types):
    have = set(layer_type_list())
    missing = [t for t in types if t not in have]
    if missing:
        pytest.skip('layers not implemented yet: %s' % ', '.join(missing))


@pytest.fixture(autouse=True)
def _torch_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small(name, batch):
    param = M.net_param(name, batch)
    inputs = M.make_inputs(name, param, seed=3)
    return param, inputs


@pytest.mark.parametrize('name', ['lenet', 'cifar10_quick'])
def test_training_net_twin_agrees(name):
    _need('Convolution', 'Pooling', 'InnerProduct', 'ReLU', 'SoftmaxWithLoss')
    caffeine.set_mode_cpu()
    param, inputs = _small(name, 8)
    # the replaced Data layer: an Input layer with data and label of the Data layer's shapes
    inp = [lp for lp in param.layer if lp.type == 'Input']
    assert len(inp) == 1 and list(inp[0].top) == ['data', 'label']
    assert not any(lp.type == 'Data' for lp in param.layer)
    net = caffeine.Net(param, caffeine.TRAIN)
    assert net.blobs['data'].shape == (8,) + M.NETS[name]['input']
    assert net.blobs['label'].shape == (8,)
    twin = M.TorchTwin(param)
    M.copy_weights(net, twin)
    c = M.cross_check_train(net, twin, inputs)
    assert c['loss_abs_diff'] <= 1e-4 * max(1.0, abs(c['loss_torch']))
    assert c['logits_rel_diff'] < 1e-4, c
    # gradients are sums over the batch and the image: allow float32 accumulation-order noise
    assert c['grad_rel_diff'] < 1e-3, c


@pytest.mark.parametrize('name', ['lenet', 'cifar10_quick'])
def test_sgd_step_agrees(name):
    """One caffeine SGD step (momentum, weight decay, lr_mult/decay_mult) equals torch.optim.SGD's."""
    _need('Convolution', 'Pooling', 'InnerProduct', 'ReLU', 'SoftmaxWithLoss')
    caffeine.set_mode_cpu()
    param, inputs = _small(name, 8)
    trainer, _ = M.make_trainer(param)
    net = trainer.net
    M.set_inputs(net, inputs)
    twin = M.TorchTwin(param)
    M.copy_weights(net, twin)
    opt = M.twin_sgd(twin)
    tin = {k: torch.from_numpy(v) for k, v in inputs.items()}
    for _ in range(2):
        trainer.step(1)
        opt.zero_grad()
        twin.loss(twin(tin)).backward()
        opt.step()
    named = dict(twin.named_parameters())
    for lname, blobs in net.params.items():
        for j, b in enumerate(blobs):
            t = named['layers.%s.%s' % (lname, 'weight' if j == 0 else 'bias')].detach().numpy()
            assert M.rel_diff(b.data, t.reshape(b.data.shape)) < 1e-3, (lname, j)


def test_pool_output_sizes_match_caffe():
    """torch's ceil mode drops a last window that starts in the padding, as Caffe does.

    They differ only without padding, when Caffe's last window starts past the
    input (Caffe keeps it, torch drops it): the twin refuses such a layer.
    """
    differ = 0
    for size in range(1, 40):
        for k in (2, 3, 5, 7):
            for s in (1, 2, 3):
                for p in range(0, k // 2 + 1):
                    if size + 2 * p < k:
                        continue
                    c, t = M.torch_twin().caffe_pool_out(size, k, s, p), M.torch_twin().torch_pool_out(size, k, s, p)
                    starts_past = p == 0 and (c - 1) * s >= size
                    assert (c == t) != starts_past, (size, k, s, p, c, t)
                    differ += starts_past
    assert differ  # the case exists (e.g. size 3, kernel 2, stride 3)
    from google.protobuf import text_format
    from caffeine.proto import caffe_pb2
    p = text_format.Parse("""
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
    """, caffe_pb2.NetParameter())
    with pytest.raises(NotImplementedError):
        M.TorchTwin(p)


def test_googlenet_twin_agrees():
    """GoogLeNet (inception Concat, LRN, ceil-mode pooling, 3x3s on Winograd) equals its twin at batch 1."""
    caffeine.set_mode_cpu()
    param, inputs = _small('googlenet', 1)
    net = caffeine.Net(param, caffeine.TEST, memory_plan=True)
    M.set_inputs(net, inputs)
    assert any(layer.type == 'Convolution' and layer.engine.winograd for layer in net.layers)
    twin = M.TorchTwin(param)
    M.copy_weights(net, twin)
    c = M.cross_check_forward(net, twin, inputs)
    assert c['output'] == 'prob' and c['logits'] == 'loss3/classifier'
    assert c['logits_rel_diff'] < 1e-4 and c['out_abs_diff'] < 1e-5, c


def test_net_param_forward_batch():
    p = M.net_param('resnet50', 2)
    inp = [lp for lp in p.layer if lp.type == 'Input'][0]
    assert list(inp.input_param.shape[0].dim) == [2, 3, 224, 224]
    assert p.state.phase == caffeine.TEST


def test_twin_small_graph_ops():
    """BatchNorm+Scale (folded), Eltwise, Concat, InnerProduct against caffeine, on a small net."""
    from google.protobuf import text_format
    from caffeine.proto import caffe_pb2
    txt = '''
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } } }
    layer { name: "ip0" type: "InnerProduct" bottom: "data" top: "ip0"
            inner_product_param { num_output: 12 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
    layer { name: "bn" type: "BatchNorm" bottom: "ip0" top: "ip0" }
    layer { name: "sc" type: "Scale" bottom: "ip0" top: "ip0"
            scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
    layer { name: "r" type: "ReLU" bottom: "ip0" top: "ip0" }
    layer { name: "ipa" type: "InnerProduct" bottom: "ip0" top: "ipa" inner_product_param { num_output: 12 weight_filler { type: "xavier" } } }
    layer { name: "sum" type: "Eltwise" bottom: "ipa" bottom: "ip0" top: "sum" eltwise_param { coeff: 0.5 coeff: 2 } }
    layer { name: "cat" type: "Concat" bottom: "sum" bottom: "ip0" top: "cat" }
    layer { name: "prob" type: "Softmax" bottom: "cat" top: "prob" }
    '''
    p = text_format.Parse(txt, caffe_pb2.NetParameter())
    p.state.phase = caffe_pb2.TEST
    net = caffeine.Net(p, caffeine.TEST)
    rs = np.random.RandomState(0)
    for b in net.params['bn'][:2]:
        b.data[...] = rs.uniform(0.5, 1.5, b.data.shape)
    net.params['bn'][2].data[...] = 2.0
    twin = M.TorchTwin(p)
    M.copy_weights(net, twin)
    x = rs.standard_normal((4, 3, 6, 6)).astype(np.float32)
    c = M.cross_check_forward(net, twin, {'data': x})
    assert c['out_rel_diff'] < 1e-5 and c['logits_rel_diff'] < 1e-5, c
