"""Net: graph construction as Caffe's Net::Init, and pycaffe's Net surface."""
import numpy as np
import pytest

import caffeine
from caffeine import backend
from caffeine.errors import CaffeineError, GraphError, LayerError, WeightsError
from caffeine.net import Net, filter_net, insert_splits
from caffeine.proto import caffe_pb2
from caffeine.prototxt import parse_text

RULES_NET = """
name: "rules"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "always" type: "ReLU" bottom: "x" top: "a" }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "t" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "e" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "x" top: "n" exclude { phase: TEST } }
layer { name: "level2" type: "ReLU" bottom: "x" top: "l" include { min_level: 2 } }
layer { name: "upto1" type: "ReLU" bottom: "x" top: "u" include { max_level: 1 } }
layer { name: "stage_deploy" type: "ReLU" bottom: "x" top: "s" include { stage: "deploy" } }
layer { name: "not_deploy" type: "ReLU" bottom: "x" top: "d" include { not_stage: "deploy" } }
"""


def names(net):
    return [n for n, lyr in zip(net.layer_names, net.layers) if lyr.type != 'Split']


def test_include_exclude_rules_by_phase():
    assert names(Net(RULES_NET, caffeine.TRAIN)) == ['in', 'always', 'train_only', 'not_test', 'upto1', 'not_deploy']
    assert names(Net(RULES_NET, caffeine.TEST)) == ['in', 'always', 'test_only', 'upto1', 'not_deploy']


def test_include_rules_by_level_and_stage():
    n = Net(RULES_NET, caffeine.TEST, level=2, stages=['deploy'])
    assert names(n) == ['in', 'always', 'test_only', 'level2', 'stage_deploy']


def test_include_and_exclude_together_is_an_error():
    p = parse_text('layer { name: "x" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }',
                   caffe_pb2.NetParameter())
    with pytest.raises(GraphError, match="layer 'x' specifies both include and exclude"):
        filter_net(p)


MLP = """
name: "mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 5 } shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
"""


def mlp_inputs(net, seed=0):
    r = np.random.RandomState(seed)
    net.blobs['data'].data[...] = r.randn(4, 5)
    net.blobs['label'].data[...] = r.randint(0, 3, 4)


def test_pycaffe_surface_of_a_small_net():
    net = Net(MLP, caffeine.TRAIN)
    assert list(net.blobs) == ['data', 'label', 'ip1', 'ip2', 'loss']
    assert list(net.params) == ['ip1', 'ip2']
    assert [b.shape for b in net.params['ip1']] == [(6, 5), (6,)]
    assert net.inputs == ['data', 'label'] and net.outputs == ['loss']
    assert net.top_names['data'] == ['data', 'label'] and net.bottom_names['loss'] == ['ip2', 'label']
    assert net.blob_loss_weights['loss'] == 1.0 and net.blob_loss_weights['ip2'] == 0.0
    assert net.layer_dict['relu1'].type == 'ReLU'
    assert net.params_lr == [1, 2, 1, 1] and net.params_weight_decay == [1, 0, 1, 1]
    np.testing.assert_array_equal(net.params['ip1'][1].data, np.float32(0.1))


def test_forward_returns_outputs_and_the_loss_matches_numpy():
    net = Net(MLP, caffeine.TRAIN)
    mlp_inputs(net)
    out = net.forward()
    x = net.blobs['data'].data
    w1, b1 = (p.data for p in net.params['ip1'])
    w2, b2 = (p.data for p in net.params['ip2'])
    h = np.maximum(x @ w1.T + b1, 0)
    z = h @ w2.T + b2
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    lab = net.blobs['label'].data.astype(int)
    want = -np.log(p[np.arange(4), lab]).mean()
    assert set(out) == {'loss'}
    assert abs(float(out['loss']) - want) < 1e-5


def test_forward_kwargs_start_end_and_backward():
    net = Net(MLP, caffeine.TRAIN)
    r = np.random.RandomState(1)
    out = net.forward(data=r.randn(4, 5), label=np.array([0, 1, 2, 0]), end='ip1')
    assert set(out) == {'ip1'}
    assert (out['ip1'] < 0).any()  # the in-place ReLU has not run yet
    net.forward(start='relu1')
    assert (net.blobs['ip1'].data >= 0).all()
    diffs = net.backward()
    assert set(diffs) == {'data', 'label'}
    # the label takes no gradient; without force_backward neither does the data
    assert not net.bottom_need_backward[1][0]  # ip1 does not propagate to the data input
    with pytest.raises(CaffeineError, match='do not match net inputs'):
        net.forward(data=np.zeros((4, 5)))


def test_backward_rules_follow_caffe():
    net = Net(MLP, caffeine.TRAIN)
    ids = {n: i for i, n in enumerate(net.layer_names)}
    assert net.layer_need_backward[ids['ip1']] and net.layer_need_backward[ids['loss']]
    assert not net.layer_need_backward[ids['data']]
    # the loss propagates to ip2 but never to the label
    assert net.bottom_need_backward[ids['loss']] == [True, False]
    fb = Net(MLP.replace('name: "mlp"', 'name: "mlp" force_backward: true'), caffeine.TRAIN)
    assert fb.bottom_need_backward[ids['ip1']] == [True]


def test_gradients_flow_and_match_finite_differences():
    net = Net(MLP.replace('name: "mlp"', 'name: "mlp" force_backward: true'), caffeine.TRAIN)
    mlp_inputs(net)
    net.forward()
    net.clear_param_diffs()
    net.backward()
    w = net.params['ip1'][0]
    analytic = w.diff.copy()
    eps = 1e-2
    for idx in [(0, 0), (3, 4), (5, 2)]:
        orig = w.data[idx]
        w.data[idx] = orig + eps
        lp = float(net.forward()['loss'])
        w.data[idx] = orig - eps
        ln = float(net.forward()['loss'])
        w.data[idx] = orig
        assert abs((lp - ln) / (2 * eps) - analytic[idx]) < 2e-3


def test_split_layers_are_inserted_with_caffes_names():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "ya" }
    layer { name: "b" type: "Sigmoid" bottom: "x" top: "yb" }
    layer { name: "sum" type: "Eltwise" bottom: "ya" bottom: "yb" bottom: "x" top: "s" }
    """
    p = insert_splits(parse_text(text, caffe_pb2.NetParameter()))
    sp = [lp for lp in p.layer if lp.type == 'Split']
    assert len(sp) == 1 and sp[0].name == 'x_in_0_split'
    assert list(sp[0].top) == ['x_in_0_split_0', 'x_in_0_split_1', 'x_in_0_split_2']
    assert [lp.bottom[0] for lp in p.layer if lp.name in ('a', 'b')] == ['x_in_0_split_0', 'x_in_0_split_1']
    net = Net(text, caffeine.TRAIN)
    assert 'x_in_0_split' in net.layer_names


def test_gradients_add_up_where_one_blob_feeds_two_layers():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 } } }
    layer { name: "p1" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } }
    layer { name: "p2" type: "Power" bottom: "x" top: "b" power_param { scale: 3 } }
    layer { name: "l1" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
    """
    net = Net(text, caffeine.TRAIN)
    net.blobs['x'].data[...] = [1, 2, 3]
    net.forward()
    net.backward()
    # loss = sum((2x - 3x)^2) / (2N) with N = 3 (Euclidean over the first axis... num = 3)
    # dL/dx = (2x-3x)*(2-3)/N = x/3
    np.testing.assert_allclose(net.blobs['x'].diff, np.array([1, 2, 3]) / 3.0, rtol=1e-5)


def test_param_sharing_by_name_strict_and_permissive():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }
    layer { name: "f1" type: "InnerProduct" bottom: "x" top: "y1" param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "f2" type: "InnerProduct" bottom: "y1" top: "y2" param { name: "w" } param { name: "b" }
            inner_product_param { num_output: 4 } }
    """
    net = Net(text, caffeine.TRAIN)
    w1, w2 = net.params['f1'][0], net.params['f2'][0]
    assert w1.shares_data_with(w2)
    np.testing.assert_array_equal(w1.data, w2.data)
    assert len(net.learnable_params) == 2 and net.param_owners == [-1, -1, 0, 1]
    bad = text.replace('num_output: 4 } }', 'num_output: 3 } }')
    with pytest.raises(GraphError, match=r"cannot share param 'w'.*\[3, 4\] != \[4, 4\]"):
        Net(bad, caffeine.TRAIN)


def test_missing_bottom_and_double_top_are_named():
    with pytest.raises(GraphError, match="layer 'r' \\(ReLU\\): unknown bottom blob 'nope'"):
        Net('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }', caffeine.TRAIN)
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
    layer { name: "a" type: "ReLU" bottom: "x" top: "y" }
    layer { name: "b" type: "ReLU" bottom: "x" top: "y" }
    """
    with pytest.raises(GraphError, match="layer 'b' \\(ReLU\\): top blob 'y' is produced by multiple sources"):
        Net(text, caffeine.TRAIN)


def test_shape_mismatch_names_layer_blob_and_shapes():
    text = """
    layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
    layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }
    """
    with pytest.raises(LayerError) as e:
        Net(text, caffeine.TRAIN)
    msg = str(e.value)
    assert "'sum'" in msg and 'Eltwise' in msg and '2' in msg and '3' in msg and '4' in msg


def test_unknown_layer_type_names_the_nearest():
    with pytest.raises(LayerError, match="unknown layer type 'Convolutoin'.*'Convolution'"):
        Net('layer { name: "c" type: "Convolutoin" }', caffeine.TRAIN)


def test_constructor_forms_and_weights(tmp_path):
    net = Net(MLP, caffeine.TRAIN)
    path = tmp_path / 'm.prototxt'
    path.write_text(MLP)
    w = tmp_path / 'w.caffemodel'
    net.save(str(w))
    n2 = Net(str(path), str(w), caffeine.TEST)
    n3 = Net(str(path), caffeine.TEST, weights=str(w))
    for n in (n2, n3):
        assert n.phase == caffeine.TEST and 'acc' in n.layer_names
        np.testing.assert_array_equal(n.params['ip2'][0].data, net.params['ip2'][0].data)
    with pytest.raises(TypeError):
        Net(str(path))


def test_caffemodel_and_hdf5_round_trip(tmp_path):
    net = Net(MLP, caffeine.TRAIN)
    for j, p in enumerate(net.learnable_params):
        p.data[...] = np.random.RandomState(j).randn(*p.shape)
    for fname, save in (('w.caffemodel', net.save), ('w.caffemodel.h5', net.save_hdf5)):
        save(str(tmp_path / fname))
        other = Net(MLP, caffeine.TRAIN)
        other.copy_from(str(tmp_path / fname))
        for a, b in zip(net.learnable_params, other.learnable_params):
            np.testing.assert_array_equal(a.data, b.data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['w.caffemodel', 'w.caffemodel.h5']
    # Caffe's HDF5 layout: /data/<layer>/<param index>, a group for every layer
    import h5py
    with h5py.File(str(tmp_path / 'w.caffemodel.h5'), 'r') as h:
        assert list(h) == ['data']
        assert sorted(h['data']) == sorted(net.layer_names)
        assert list(h['data/ip1']) == ['0', '1'] and len(h['data/relu1']) == 0
        np.testing.assert_array_equal(h['data/ip1/0'][...], net.params['ip1'][0].data)


def test_save_writes_the_bytes_protobuf_would_and_round_trips_bit_exactly(tmp_path):
    net = Net(MLP, caffeine.TEST)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -3.4028235e38, np.nan,
                         np.float32(np.pi)], np.float32)
    for j, p in enumerate(net.learnable_params):
        vals = np.random.RandomState(j).randn(p.count).astype(np.float32)
        vals[:min(p.count, len(specials))] = specials[:p.count]
        p.data[...] = vals.reshape(p.shape)
        p.diff[...] = -vals.reshape(p.shape)
    for write_diff in (False, True):
        path = tmp_path / ('w%d.caffemodel' % write_diff)
        net.save(str(path), write_diff)
        # the same bytes as serializing Net::ToProto's message (fields in protobuf's order)
        assert path.read_bytes() == net.to_proto(write_diff).SerializeToString()
        back = caffe_pb2.NetParameter.FromString(path.read_bytes())
        assert [lp.name for lp in back.layer] == list(net.layer_names)
        ip1 = back.layer[list(net.layer_names).index('ip1')]
        assert [p.lr_mult for p in ip1.param] == [1, 2] and ip1.inner_product_param.num_output == 6
        assert list(ip1.blobs[0].shape.dim) == [6, 5] and len(ip1.blobs[1].diff) == (6 if write_diff else 0)
        other = Net(MLP, str(path), caffeine.TEST)
        for a, b in zip(net.learnable_params, other.learnable_params):
            assert a.data.tobytes() == b.data.tobytes()     # bit for bit, NaN and -0.0 included


def test_copy_from_reports_copied_and_ignored_and_checks_shapes(tmp_path):
    net = Net(MLP, caffeine.TRAIN)
    net.save(str(tmp_path / 'w.caffemodel'))
    renamed = Net(MLP.replace('"ip2"', '"ip2_new"'), caffeine.TRAIN)
    rep = renamed.copy_from(str(tmp_path / 'w.caffemodel'))
    assert 'ip1' in rep['copied'] and 'ip2' in rep['ignored']
    wider = Net(MLP.replace('num_output: 6', 'num_output: 7'), caffeine.TRAIN)
    with pytest.raises(WeightsError, match=r"param 0 weights from layer 'ip1'.*\[6, 5\] vs target \[7, 5\]"):
        wider.copy_from(str(tmp_path / 'w.caffemodel'))


def test_legacy_4d_blob_shapes_load_into_2d_params(tmp_path):
    net = Net(MLP, caffeine.TRAIN)
    p = net.to_proto()
    for lp in p.layer:
        for b in lp.blobs:
            shape = list(b.shape.dim)
            b.ClearField('shape')
            s4 = [1] * (4 - len(shape)) + shape
            b.num, b.channels, b.height, b.width = s4
    (tmp_path / 'legacy.caffemodel').write_bytes(p.SerializeToString())
    other = Net(MLP, caffeine.TRAIN)
    other.copy_from(str(tmp_path / 'legacy.caffemodel'))
    np.testing.assert_array_equal(other.params['ip1'][0].data, net.params['ip1'][0].data)


def test_no_new_buffers_after_the_first_iteration():
    text = """
    force_backward: true
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 4 dim: 2 dim: 8 dim: 8 } shape { dim: 4 } } }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
            convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
    layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
    layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
    layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    net = Net(text, caffeine.TRAIN)
    net.blobs['data'].data[...] = np.random.RandomState(0).randn(4, 2, 8, 8)
    net.blobs['label'].data[...] = [0, 1, 2, 1]
    net.forward_backward()
    before = backend.alloc_count
    for _ in range(3):
        net.blobs['data'].data[...] = np.random.RandomState(1).randn(4, 2, 8, 8)
        net.clear_param_diffs()
        net.forward_backward()
        net.update()
    assert backend.alloc_count == before


def test_reshape_propagates_new_input_shapes():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 6 } } }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 3 } }
    """
    net = Net(text, caffeine.TEST)
    net.blobs['x'].reshape(3, 1, 10, 8)
    net.reshape()
    assert net.blobs['y'].shape == (3, 2, 8, 6)


def test_debug_info_logs_like_caffe(caplog):
    import logging
    net = Net(MLP.replace('name: "mlp"', 'name: "mlp" debug_info: true'), caffeine.TRAIN)
    mlp_inputs(net)
    with caplog.at_level(logging.INFO, logger='caffeine'):
        net.forward_backward()
    text = caplog.text
    assert '[Forward] Layer ip1, top blob ip1 data:' in text
    assert '[Backward] Layer ip2, param blob 0 diff:' in text


def test_a_loss_layer_without_top_gets_an_anonymous_one_that_still_counts():
    # Caffe's AutoTopBlobs: `SoftmaxWithLoss` with no `top` still adds its
    # loss to the net's, but the blob is not a net output and has no name.
    text = MLP.replace('top: "loss"', '')
    assert text != MLP
    net = Net(text, caffeine.TRAIN)
    ref = Net(MLP, caffeine.TRAIN)
    ref.share_with(net)
    mlp_inputs(net)
    mlp_inputs(ref)
    assert net.outputs == [] and net.top_names['loss'] == ['(automatic)']
    assert net.forward() == {}
    want = float(ref.forward()['loss'])
    assert abs(net.forward_prefilled() - want) < 1e-6
    net.clear_param_diffs()
    net.backward()
    got = net.params['ip1'][0].diff.copy()
    net.clear_param_diffs()
    ref.backward()
    assert np.abs(got).sum() > 0
    np.testing.assert_allclose(got, ref.params['ip1'][0].diff, rtol=1e-5)


BN_SCALE = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { use_global_stats: true } }
layer { name: "scale" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
"""


def _bn_scale_net(text=BN_SCALE, phase=caffeine.TEST):
    net = Net(text, phase)
    r = np.random.RandomState(3)
    net.params['bn'][0].data[...] = r.randn(4)
    net.params['bn'][1].data[...] = r.rand(4) + 0.5
    net.params['bn'][2].data[...] = 2.0
    net.params['scale'][0].data[...] = r.randn(4)
    net.params['scale'][1].data[...] = r.randn(4)
    net.blobs['x'].data[...] = r.randn(2, 3, 4, 5)
    return net


def test_batchnorm_then_scale_fold_into_one_pass_at_inference():
    net = _bn_scale_net()
    assert net._folds == {2: 3}
    out = net.forward()['c'].copy()
    # by hand, as the two layers compute it
    net.forward(end='conv')
    c = net.blobs['c'].data.copy()
    mean, var = net.params['bn'][0].data / 2, net.params['bn'][1].data / 2
    g, b = net.params['scale'][0].data, net.params['scale'][1].data
    want = np.maximum((c - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
                      * g[:, None, None] + b[:, None, None], 0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    # stopping between the two runs BatchNorm alone
    net.forward(end='bn')
    np.testing.assert_allclose(net.blobs['c'].data, (c - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5),
                               rtol=1e-5, atol=1e-6)


def test_no_folding_where_backward_may_run():
    assert _bn_scale_net('force_backward: true\n' + BN_SCALE)._folds == {}
    assert _bn_scale_net(BN_SCALE.replace('use_global_stats: true', 'use_global_stats: false'))._folds == {}
    # a BatchNorm that is not in place keeps its own top
    text = BN_SCALE.replace('bottom: "c" top: "c" batch_norm_param', 'bottom: "c" top: "n" batch_norm_param')
    text = text.replace('bottom: "c" top: "c" scale_param', 'bottom: "n" top: "n" scale_param')
    text = text.replace('bottom: "c" top: "c" }\n', 'bottom: "n" top: "n" }\n')
    assert _bn_scale_net(text)._folds == {}


def _deploy(model, batch):
    import os
    from caffeine.prototxt import read_net_param
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = read_net_param(os.path.join(root, 'models', model, 'deploy.prototxt'))
    for lp in p.layer:
        if lp.type == 'Input':
            lp.input_param.shape[0].dim[0] = batch
    return p


@pytest.mark.parametrize('model', ['bvlc_reference_caffenet', 'resnet50'])
def test_memory_planner_shares_dead_blobs_and_keeps_the_outputs(model):
    from caffeine.summary import memory_report
    caffeine.set_random_seed(0)
    planned = Net(_deploy(model, 2), caffeine.TEST, memory_plan=True)
    plain = Net(_deploy(model, 2), caffeine.TEST)
    plain.share_with(planned)
    for name, layer in planned.layer_dict.items():
        if layer.type == 'BatchNorm':   # sane statistics for a random net
            layer.blobs[0].data[...] = 0
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    assert planned.memory_planned and not plain.memory_planned
    rep = memory_report(planned)
    assert rep['blob_bytes'] <= 0.6 * rep['naive_blob_bytes']
    assert memory_report(plain)['blob_bytes'] == rep['naive_blob_bytes']
    x = np.random.RandomState(1).rand(*planned.blobs['data'].shape).astype(np.float32) * 50
    out = planned.forward(data=x)['prob'].copy()
    np.testing.assert_array_equal(out, plain.forward(data=x)['prob'])
    np.testing.assert_array_equal(planned.forward(data=x)['prob'], out)   # and again: buffers reused


def test_memory_planner_leaves_nets_with_a_backward_pass_alone():
    net = Net(MLP, caffeine.TRAIN)
    assert net.plan_memory() == 0 and not net.memory_planned
