"""ONNX Runtime as an engine (OrtNet, Net(..., engine='onnxruntime')) and the
``caffeine export onnx`` / ``caffeine time --engine onnxruntime`` commands."""
import logging

import numpy as np
import pytest

pytest.importorskip('onnx', reason='the onnx package (caffeine[onnx]) is not installed')
pytest.importorskip('onnxruntime', reason='onnxruntime (caffeine[onnx]) is not installed')

import onnx  # noqa: E402

import caffeine  # noqa: E402
from caffeine.testing import run_cli as cli  # noqa: E402
from caffeine.errors import CaffeineError  # noqa: E402
from caffeine.onnx_engine import OrtNet, seeded_weights  # noqa: E402

NET = '''name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
'''


@pytest.fixture
def model(tmp_path):
    """(prototxt path, caffemodel path) of a tiny deploy net with seeded weights."""
    proto = tmp_path / 'deploy.prototxt'
    proto.write_text(NET)
    net = caffeine.Net(str(proto), caffeine.TEST)
    seeded_weights(net, seed=4, scale=0.5)
    weights = tmp_path / 'w.caffemodel'
    net.save(str(weights))
    return str(proto), str(weights)


def _x(n, seed=0):
    return np.random.RandomState(seed).randn(n, 3, 8, 8).astype(np.float32)


def test_net_with_engine_onnxruntime_is_pycaffe_shaped(model):
    proto, weights = model
    ref = caffeine.Net(proto, weights, caffeine.TEST)
    net = caffeine.Net(proto, weights, caffeine.TEST, engine='onnxruntime')
    assert isinstance(net, OrtNet) and not isinstance(ref, OrtNet)
    assert (net.inputs, net.outputs) == (['data'], ['prob'])
    x = _x(2)
    want = ref.forward(data=x)['prob'].copy()
    got = net.forward(data=x)
    assert list(got) == ['prob'] and got['prob'].shape == (2, 5)
    np.testing.assert_allclose(got['prob'], want, rtol=1e-5, atol=1e-7)
    # pycaffe's other habit: fill the input blob, then forward()
    net.blobs['data'].data[...] = x[::-1]
    np.testing.assert_allclose(net.forward()['prob'], want[::-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs['prob'].data, want[::-1], rtol=1e-5, atol=1e-7)
    assert caffeine.Net(proto, weights, caffeine.TEST, engine='caffeine').forward(data=x)['prob'].shape == (2, 5)


def test_engine_keeps_blobs_and_runs_forward_all(model):
    proto, weights = model
    ref = caffeine.Net(proto, weights, caffeine.TEST)
    net = caffeine.Net(proto, weights, caffeine.TEST, engine='onnxruntime', engine_options={'keep': ['conv', 'pool']})
    assert isinstance(net, OrtNet)
    x = _x(5, seed=1)
    out = net.forward_all(data=x, blobs=['pool'])      # batches of 2: the last one holds 1 item
    assert out['prob'].shape == (5, 5) and out['pool'].shape == (5, 4, 4, 4)
    want = ref.forward_all(data=x, blobs=['pool'])
    np.testing.assert_allclose(out['prob'], want['prob'], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out['pool'], want['pool'], rtol=1e-5, atol=1e-6)
    assert net.blobs['data'].shape == (2, 3, 8, 8)
    ref.forward(data=x[:2])
    net.forward(data=x[:2])
    np.testing.assert_allclose(net.blobs['conv'].data, ref.blobs['conv'].data, rtol=1e-5, atol=1e-6)
    with pytest.raises(CaffeineError, match="blob 'ip' is not kept"):
        net.forward(blobs=['ip'])
    with pytest.raises(CaffeineError, match='not batch sized'):
        net.forward(data=x[:3])
    with pytest.raises(CaffeineError, match='no start/end'):
        net.forward(end='ip')


def test_engine_refuses_train_nets_and_unknown_engines(model):
    proto, weights = model
    with pytest.raises(CaffeineError, match='TEST-phase'):
        caffeine.Net(proto, weights, caffeine.TRAIN, engine='onnxruntime')
    with pytest.raises(CaffeineError, match="unknown engine 'tensorrt'"):
        caffeine.Net(proto, weights, caffeine.TEST, engine='tensorrt')




def test_cli_export_onnx(model, tmp_path, capsys):
    proto, weights = model
    out = tmp_path / 'tiny.onnx'
    rc, text, err = cli(['export', 'onnx', proto, weights, str(out), '--input', 'data=1,3,8,8',
                         '--dynamic-batch', '--keep-intermediate', 'conv,pool', '--opset', '18', '--check'], capsys)
    assert rc == 0, err
    assert 'wrote %s: opset 18, inputs data, outputs prob, conv, pool' % out in text
    assert 'check prob: largest difference' in text
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['N', 3, 8, 8]
    # the weights are the caffemodel's
    ref = caffeine.Net(proto, weights, caffeine.TEST)
    w = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_array_equal(w['conv/weight'], ref.params['conv'][0].data)
    np.testing.assert_array_equal(w['ip/bias'], ref.params['ip'][1].data)


def test_cli_export_errors_are_one_line(model, tmp_path, capsys):
    proto, weights = model
    rc, _, err = cli(['export', 'onnx', proto, weights, str(tmp_path / 'x.onnx'), '--input', 'image=1,3,8,8'], capsys)
    assert rc == 1 and err.strip() == 'caffeine: error: --input image: the net has no Input blob of that name'
    rc, _, err = cli(['export', 'onnx', proto, weights, str(tmp_path / 'x.onnx'), '--input', 'data=1,3,x'], capsys)
    assert rc == 1 and 'expected NAME=N,C,H,W' in err
    bad = tmp_path / 'bad.prototxt'
    bad.write_text(NET + 'layer { name: "out" type: "HDF5Output" bottom: "prob" bottom: "ip" '
                   'hdf5_output_param { file_name: "%s" } }\n' % (tmp_path / 'out.h5'))
    rc, _, err = cli(['export', 'onnx', str(bad), weights, str(tmp_path / 'x.onnx')], capsys)
    assert rc == 1
    assert err.strip() == "caffeine: error: layer 'out' (HDF5Output): it writes files, which an ONNX graph cannot"
    assert not (tmp_path / 'x.onnx').exists()


def test_cli_time_engine_onnxruntime(model, capsys, caplog):
    proto, weights = model
    caplog.set_level(logging.INFO)
    rc, _, err = cli(['time', '--model', proto, '--weights', weights, '--engine', 'onnxruntime',
                      '--iterations', '2'], capsys)
    assert rc == 0, err
    assert 'Iteration: 2 forward time:' in caplog.text
    assert 'Average Forward pass (onnxruntime):' in caplog.text
