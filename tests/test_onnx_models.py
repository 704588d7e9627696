"""ONNX export of whole nets: every deploy net of the model library and the golden
nets of ../shared, with seeded random weights; onnx.checker passes and ONNX
Runtime's outputs and intermediate blobs equal caffeine's within 1e-4 of each
blob's largest magnitude, at batch 1 and (dynamic batch) a larger one.  The big
ImageNet nets run at batch 1 and AlexNet, CaffeNet and VGG-16 at small inputs
(their fully connected layers shrink) to keep CI short."""
import os

import numpy as np
import pytest

pytest.importorskip('onnx', reason='the onnx package (caffeine[onnx]) is not installed')
pytest.importorskip('onnxruntime', reason='onnxruntime (caffeine[onnx]) is not installed')

import onnx  # noqa: E402

import caffeine  # noqa: E402
from caffeine.onnx_engine import OrtNet, compare, make_session, random_inputs, seeded_weights  # noqa: E402
from caffeine.onnx_export import export_onnx  # noqa: E402
from caffeine.prototxt import read_net_param  # noqa: E402
from caffeine.testing import golden_cases, golden_index, load_golden, _golden_input  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# model, input (C, H, W) or None for the deploy net's own, larger batch or None (batch 1 only)
MODELS = [
    ('lenet', None, 4),
    ('cifar10_quick', None, 3),
    ('cifar10_full', None, 3),
    ('squeezenet1.1', (3, 67, 67), 3),
    ('bvlc_reference_caffenet', (3, 99, 99), None),
    ('bvlc_alexnet', (3, 99, 99), None),
    ('bvlc_googlenet', None, None),
    ('vgg16', (3, 32, 32), 2),
    ('resnet50', None, None),
]


def _deploy(model, chw, batch=1):
    param = read_net_param(os.path.join(ROOT, 'models', model, 'deploy.prototxt'))
    for lp in param.layer:
        if lp.type == 'Input':
            dims = lp.input_param.shape[0].dim
            dims[0] = batch
            if chw:
                dims[1:] = chw
    return caffeine.Net(param, caffeine.TEST)


def _assert_report(report, names, what):
    assert set(report) >= set(names), what
    worst = max(d / max(m, 1e-6) for d, m in report.values())
    for blob, (diff, top) in report.items():
        assert diff <= 1e-4 * max(top, 1e-6), (what, blob, diff, top)
        assert top > 0, (what, blob)      # a blob of zeros would prove nothing
    return worst


@pytest.mark.parametrize('model,chw,batch', [pytest.param(*m, marks=pytest.mark.slow) if m[0] == 'vgg16' else m
                                             for m in MODELS], ids=[m[0] for m in MODELS])
def test_model_library_deploy_net(model, chw, batch):
    net = _deploy(model, chw)
    seeded_weights(net, seed=5)
    keep = [b for b in net.blobs if b not in net.inputs and b not in net.outputs]
    m = export_onnx(net, dynamic_batch=batch is not None, keep=keep, check=False)
    onnx.checker.check_model(m, full_check=True)
    sess = make_session(m)
    _assert_report(compare(net, sess, random_inputs(net, seed=1)), net.outputs + keep, model)
    if batch:
        _assert_report(compare(net, sess, random_inputs(net, batch=batch, seed=2)), net.outputs + keep,
                       '%s batch %d' % (model, batch))


@pytest.mark.parametrize('model,chw', [('lenet', None), ('cifar10_quick', None), ('cifar10_full', None),
                                       ('squeezenet1.1', (3, 67, 67))])
def test_onnxruntime_engine_runs_the_deploy_net(model, chw):
    """The engine a user gets with Net(..., engine='onnxruntime'): the same outputs as caffeine's."""
    net = _deploy(model, chw)
    seeded_weights(net, seed=7, scale=0.05)
    ort = OrtNet(net)
    x = random_inputs(net, seed=3)
    want = {k: v.copy() for k, v in net.forward(**x).items()}
    got = ort.forward(**x)
    assert list(got) == net.outputs
    for k, v in want.items():
        assert np.abs(got[k] - v).max() <= 1e-4 * np.abs(v).max(), k
        assert v.std() > 0, k                      # outputs that are not constant


GOLDEN = golden_cases(kind='nets')


@pytest.mark.skipif(not GOLDEN, reason='../shared golden cases not present')
@pytest.mark.parametrize('case', [pytest.param(c, marks=pytest.mark.slow) if c == 'caffenet_deploy' else c
                                  for c in GOLDEN])
def test_golden_net(case):
    """Each golden net in the TEST phase, with the golden inputs and weights: ORT
    equals caffeine on every blob, and, for the deploy nets, equals the real Caffe."""
    z = load_golden(case, 'nets')
    meta = golden_index()['nets'][case]
    net = caffeine.Net(str(z['prototxt']), caffeine.TEST)
    rng = np.random.RandomState(3)
    inputs = {name: _golden_input(rng, shape, kind).reshape(net.blobs[name].shape)
              for name, (shape, kind) in meta['inputs'].items()}
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            v = (rng.randn(*b.shape) * 0.1).astype(np.float32)
            key = 'param:%s:%d' % (lname, i)
            b.data[...] = (z[key] if key in z.files else v).reshape(b.shape)
    for layer in net.layers:      # TEST-phase BatchNorm reads the blobs as statistics: make them valid
        if layer.type == 'BatchNorm':
            layer.blobs[1].data[...] = np.abs(layer.blobs[1].data)
            layer.blobs[2].data[...] = 1
    keep = [b for b in net.blobs if b not in net.inputs and b not in net.outputs]
    m = export_onnx(net, keep=keep)
    sess = make_session(m)
    report = compare(net, sess, inputs)
    for blob, (diff, top) in report.items():
        assert diff <= 1e-4 * max(top, 1e-6), (case, blob, diff, top)
    if meta['phase'] == 'TEST':       # the deploy cases: Caffe's own blobs
        names = [o.name for o in sess.get_outputs()]
        for name, got in zip(names, sess.run(names, inputs)):
            ref = z['blob:' + name]
            assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), (case, name)
