"""ONNX export, one layer mapping at a time: each small net is built by caffeine,
exported with every blob kept as an output, and run by ONNX Runtime; every blob
equals caffeine's within 1e-4 of its largest magnitude.  The edge cases are
Caffe's: ceil-mode windows that start in the padding, AVE's divisor at the
borders, Crop offsets, Reshape's 0 and -1, Scale with num_axes 0 ..."""
import numpy as np
import pytest

pytest.importorskip('onnx', reason='the onnx package (caffeine[onnx]) is not installed')
pytest.importorskip('onnxruntime', reason='onnxruntime (caffeine[onnx]) is not installed')

import onnx  # noqa: E402

import caffeine  # noqa: E402
from caffeine.onnx_engine import compare, random_inputs, seeded_weights  # noqa: E402
from caffeine.onnx_export import CONVERTERS, OnnxExportError, export_onnx  # noqa: E402


def _net(inputs, body):
    text = ''.join('layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }\n'
                   % (n, n, ' '.join('dim: %d' % d for d in s)) for n, s in inputs.items())
    return caffeine.Net(text + body, caffeine.TEST)


def check(inputs, body, values=None, dynamic=False, batch=None, opset=17, scale=0.5, rtol=1e-4, seed=1):
    """Export the net of ``inputs`` ({name: shape}) and layers ``body``; compare
    every blob.  ``values``: {input: array} instead of standard normal ones;
    ``batch``: run both engines at this batch (with ``dynamic``)."""
    net = _net(inputs, body)
    seeded_weights(net, seed=seed, scale=scale)
    keep = [b for b in net.blobs if b not in net.inputs]
    model = export_onnx(net, opset=opset, dynamic_batch=dynamic, keep=keep)
    onnx.checker.check_model(model, full_check=True)
    feeds = random_inputs(net, batch=batch, seed=seed)
    feeds.update(values or {})
    report = compare(net, model, feeds)
    assert set(report) >= set(keep)
    for blob, (diff, top) in report.items():
        assert diff <= rtol * max(top, 1e-6), (blob, diff, top)
    return net, model, report


def _ops(model):
    return [n.op_type for n in model.graph.node]


# -- convolution -------------------------------------------------------------
CONV = 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { %s } }'


@pytest.mark.parametrize('param', [
    'num_output: 4 kernel_size: 3',
    'num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3',
    'num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 bias_term: false',
    'num_output: 3 kernel_size: 3 dilation: 2 pad: 2',
    'num_output: 5 kernel_size: 1',
])
def test_convolution(param):
    _, model, _ = check({'data': (2, 6, 9, 8)}, CONV % param)
    assert _ops(model) == ['Conv']


@pytest.mark.parametrize('param', [
    'num_output: 4 kernel_size: 4 stride: 2 pad: 1',
    'num_output: 6 kernel_size: 3 stride: 2 group: 2',
    'num_output: 2 kernel_size: 3 stride: 3 pad: 1 bias_term: false',
])
def test_deconvolution(param):
    net, model, _ = check({'data': (2, 4, 5, 6)},
                          'layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
                          'convolution_param { %s } }' % param)
    assert _ops(model) == ['ConvTranspose']


# -- pooling -------------------------------------------------------------------
POOL = 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { %s } }'


@pytest.mark.parametrize('pool', ['MAX', 'AVE'])
@pytest.mark.parametrize('geom,shape,expect', [
    # ceil mode: the last window starts in the input and runs into the padding and past it
    ('kernel_size: 3 stride: 2 pad: 1', (1, 2, 6, 7), (4, 4)),
    # Caffe drops a last window that would start in the padding (5 + 2 - 2 -> 4 -> 3)
    ('kernel_size: 2 stride: 2 pad: 1', (1, 2, 5, 5), (3, 3)),
    # ceil without padding: the last window sticks out of the input
    ('kernel_size: 3 stride: 2', (2, 3, 8, 6), (4, 3)),
    ('kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1', (1, 2, 7, 5), (4, 6)),
    ('global_pooling: true', (2, 3, 5, 4), (1, 1)),
    ('kernel_size: 3 stride: 1 pad: 1 round_mode: FLOOR', (1, 2, 5, 5), (5, 5)),
])
def test_pooling(pool, geom, shape, expect):
    net, _, _ = check({'data': shape}, POOL % ('pool: %s %s' % (pool, geom)))
    assert net.blobs['p'].shape[2:] == expect


@pytest.mark.parametrize('geom', ['kernel_size: 3 stride: 2 pad: 1', 'kernel_size: 2 stride: 2', 'global_pooling: true'])
def test_max_pooling_mask_top(geom):
    net, _, _ = check({'data': (2, 3, 5, 6)}, 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "mask" '
                                              'pooling_param { pool: MAX %s } }' % geom)
    m = net.blobs['mask'].data
    assert m.max() > 6 and np.all(m == np.round(m))   # plane offsets h * W + w, beyond the first row


def test_ave_pooling_divisor_counts_padding_but_not_the_ceil_overhang():
    # 1x1x3x3 of ones, kernel 2, stride 2, pad 1: windows [-1,0], [1,2] and, per
    # axis, Caffe divides by the window clipped to the padded input: 2 x 2 = 4
    # everywhere, so the corner window holds 1/4, the edges 2/4 and the middle 4/4.
    net, _, _ = check({'data': (1, 1, 3, 3)}, POOL % 'pool: AVE kernel_size: 2 stride: 2 pad: 1',
                      values={'data': np.ones((1, 1, 3, 3), np.float32)})
    np.testing.assert_allclose(net.blobs['p'].data[0, 0], [[.25, .5], [.5, 1]])
    # 1x1x4x4, kernel 3, stride 2, no pad: the ceil-mode window [2,4] overhangs
    # by one and Caffe divides by the 2 values inside: the mean of what is there.
    net, _, _ = check({'data': (1, 1, 4, 4)}, POOL % 'pool: AVE kernel_size: 3 stride: 2',
                      values={'data': np.ones((1, 1, 4, 4), np.float32)})
    np.testing.assert_allclose(net.blobs['p'].data[0, 0], np.ones((2, 2)))


def test_stochastic_pooling_at_test_is_the_weighted_mean():
    x = np.random.RandomState(0).uniform(0.1, 1, (2, 2, 5, 5)).astype(np.float32)
    net, _, _ = check({'data': x.shape}, POOL % 'pool: STOCHASTIC kernel_size: 2 stride: 2', values={'data': x})
    w = x[0, 0, :2, :2]
    assert net.blobs['p'].data[0, 0, 0, 0] == pytest.approx((w * w).sum() / w.sum(), rel=1e-5)


def test_spp():
    check({'data': (2, 3, 8, 7)}, 'layer { name: "s" type: "SPP" bottom: "data" top: "s" '
                                 'spp_param { pyramid_height: 3 pool: MAX } }')
    check({'data': (2, 3, 6, 6)}, 'layer { name: "s" type: "SPP" bottom: "data" top: "s" '
                                 'spp_param { pyramid_height: 2 pool: AVE } }')


# -- LRN -----------------------------------------------------------------------
@pytest.mark.parametrize('param', [
    'local_size: 5 alpha: 0.1 beta: 0.75',
    'local_size: 3 alpha: 0.5 beta: 0.6 k: 2',
    'local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL',
    'local_size: 5 alpha: 1 beta: 0.5 norm_region: WITHIN_CHANNEL',
])
def test_lrn(param):
    check({'data': (2, 7, 6, 5)}, 'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { %s } }'
          % param, scale=2)


# -- inner product, embed --------------------------------------------------------
IP = 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { %s } }'


@pytest.mark.parametrize('shape,param', [
    ((3, 4, 2, 2), 'num_output: 5'),
    ((3, 7), 'num_output: 4 bias_term: false'),
    ((3, 4, 2, 2), 'num_output: 5 transpose: true'),
    ((2, 3, 4, 5), 'num_output: 6 axis: 2'),
    ((2, 3, 4), 'num_output: 2 axis: -1 transpose: true'),
    ((2, 3, 4, 5), 'num_output: 3 axis: 3 bias_term: false'),
])
def test_inner_product(shape, param):
    check({'data': shape}, IP % param)


def test_embed():
    idx = np.array([[0, 3, 9], [2, 2, 1]], np.float32)
    check({'data': idx.shape}, 'layer { name: "e" type: "Embed" bottom: "data" top: "e" '
                               'embed_param { num_output: 4 input_dim: 10 } }', values={'data': idx})
    check({'data': idx.shape}, 'layer { name: "e" type: "Embed" bottom: "data" top: "e" '
                               'embed_param { num_output: 4 input_dim: 10 bias_term: false } }', values={'data': idx})


# -- normalization ---------------------------------------------------------------
def test_batchnorm_global_stats_with_the_stored_scale_factor():
    net = _net({'data': (2, 3, 4, 4)}, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }')
    rng = np.random.RandomState(0)
    net.params['bn'][0].data[...] = rng.randn(3) * 4
    net.params['bn'][1].data[...] = rng.uniform(1, 5, 3) * 4
    net.params['bn'][2].data[...] = 4           # Caffe stores sums; the factor divides them
    model = export_onnx(net)
    x = rng.randn(2, 3, 4, 4).astype(np.float32)
    rep = compare(net, model, {'data': x})
    assert rep['bn'][0] <= 1e-5 * rep['bn'][1]
    mean, var = net.params['bn'][0].data / 4, net.params['bn'][1].data / 4
    np.testing.assert_allclose(net.blobs['bn'].data, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-5)


def test_batchnorm_zero_factor_and_batch_statistics():
    net = _net({'data': (2, 3, 4, 4)}, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }')
    model = export_onnx(net)                    # all zero: factor 0 means mean 0, variance 0
    rep = compare(net, model, random_inputs(net))
    assert rep['bn'][0] <= 1e-4 * rep['bn'][1]
    check({'data': (4, 3, 3, 2)}, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
                                  'batch_norm_param { use_global_stats: false eps: 0.001 } }')


@pytest.mark.parametrize('param', [
    '',
    'bias_term: true',
    'axis: 0 num_axes: 2',
    'num_axes: 0 bias_term: true',
    'axis: 2 num_axes: -1',
    'axis: -1',
])
def test_scale(param):
    check({'data': (2, 3, 4, 5)}, 'layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { %s } }'
          % param)


@pytest.mark.parametrize('shape,param', [
    ((3, 4), ''), ((2, 3), 'axis: 0'), ((4, 5), 'axis: 2 bias_term: true'), ((2, 3, 4, 5), 'axis: 0'),
])
def test_scale_by_a_bottom(shape, param):
    check({'data': (2, 3, 4, 5), 'factor': shape},
          'layer { name: "s" type: "Scale" bottom: "data" bottom: "factor" top: "s" scale_param { %s } }' % param)


def test_batchnorm_scale_in_place_pair():
    check({'data': (2, 3, 4, 4)}, 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data2" }'
                                  'layer { name: "sc" type: "Scale" bottom: "data2" top: "data2" '
                                  'scale_param { bias_term: true } }'
                                  'layer { name: "r" type: "ReLU" bottom: "data2" top: "data2" }')


@pytest.mark.parametrize('param', ['', 'axis: 0 num_axes: 2', 'num_axes: 0', 'axis: 2 num_axes: 2'])
def test_bias(param):
    check({'data': (2, 3, 4, 5)}, 'layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { %s } }'
          % param)
    check({'data': (2, 3, 4, 5), 'b': (3, 4)},
          'layer { name: "b" type: "Bias" bottom: "data" bottom: "b" top: "o" }')


@pytest.mark.parametrize('param', ['', 'normalize_variance: false', 'across_channels: true eps: 0.01'])
def test_mvn(param):
    check({'data': (2, 3, 4, 5)}, 'layer { name: "m" type: "MVN" bottom: "data" top: "m" mvn_param { %s } }'
          % param)


# -- shapes --------------------------------------------------------------------
def test_concat_slice_split():
    check({'a': (2, 3, 4), 'b': (2, 5, 4)},
          'layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "c" }'
          'layer { name: "s" type: "Slice" bottom: "c" top: "s1" top: "s2" top: "s3" '
          'slice_param { axis: 1 slice_point: 2 slice_point: 6 } }'
          'layer { name: "e" type: "Eltwise" bottom: "s1" bottom: "s3" top: "e" }'
          'layer { name: "c2" type: "Concat" bottom: "s2" bottom: "a" bottom: "e" top: "c2" concat_param { axis: -2 } }')
    check({'a': (4, 6)}, 'layer { name: "s" type: "Slice" bottom: "a" top: "s1" top: "s2" '
                         'slice_param { slice_dim: 1 } }')


@pytest.mark.parametrize('param,expect', [
    ('', (2, 60)), ('axis: 2', (2, 3, 20)), ('axis: 1 end_axis: 2', (2, 12, 5)), ('axis: 0', (120,)),
])
def test_flatten(param, expect):
    net, _, _ = check({'data': (2, 3, 4, 5)}, 'layer { name: "f" type: "Flatten" bottom: "data" top: "f" '
                                              'flatten_param { %s } }' % param)
    assert net.blobs['f'].shape == expect


@pytest.mark.parametrize('param,expect', [
    ('shape { dim: 0 dim: -1 }', (2, 60)),
    ('shape { dim: 0 dim: 3 dim: -1 dim: 2 }', (2, 3, 10, 2)),
    ('shape { dim: -1 dim: 12 }', (10, 12)),
    ('axis: 1 num_axes: 2 shape { dim: 12 }', (2, 12, 5)),
    ('axis: 2 shape { dim: 2 dim: -1 }', (2, 3, 2, 10)),
    ('axis: -1 num_axes: 0 shape { dim: 1 }', (2, 3, 4, 5, 1)),
])
def test_reshape(param, expect):
    net, _, _ = check({'data': (2, 3, 4, 5)}, 'layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
                                              'reshape_param { %s } }' % param)
    assert net.blobs['r'].shape == expect


@pytest.mark.parametrize('param,expect', [
    ('', (2, 4, 4, 3)), ('offset: 1', (2, 4, 4, 3)), ('offset: 2 offset: 1', (2, 4, 4, 3)),
    ('axis: 1 offset: 1', (2, 3, 4, 3)), ('axis: 3 offset: 3', (2, 4, 7, 3)),
])
def test_crop(param, expect):
    net, _, _ = check({'data': (2, 4, 7, 6), 'ref': (2, 3, 4, 3)},
                      'layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" crop_param { %s } }'
                      % param)
    assert net.blobs['c'].shape == expect


def test_crop_offsets_are_where_the_window_starts():
    x = np.arange(2 * 4 * 7 * 6, dtype=np.float32).reshape(2, 4, 7, 6)
    net, _, _ = check({'data': x.shape, 'ref': (2, 3, 4, 3)},
                      'layer { name: "c" type: "Crop" bottom: "data" bottom: "ref" top: "c" '
                      'crop_param { axis: 1 offset: 1 offset: 2 offset: 3 } }', values={'data': x})
    np.testing.assert_array_equal(net.blobs['c'].data, x[:, 1:4, 2:6, 3:6])


def test_tile_and_batch_reindex():
    check({'data': (2, 3, 2)}, 'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { axis: 1 tiles: 3 } }')
    check({'data': (3, 2, 2), 'idx': (4,)},
          'layer { name: "r" type: "BatchReindex" bottom: "data" bottom: "idx" top: "r" }',
          values={'idx': np.array([2, 0, 2, 1], np.float32)})


def test_dropout_is_identity_and_split_keeps_names():
    net, model, _ = check({'data': (2, 5)}, 'layer { name: "d" type: "Dropout" bottom: "data" top: "d" '
                                            'dropout_param { dropout_ratio: 0.3 } }'
                                            'layer { name: "a" type: "AbsVal" bottom: "d" top: "a" }'
                                            'layer { name: "b" type: "TanH" bottom: "d" top: "b" }')
    names = [o.name for o in model.graph.output]
    assert names[:2] == ['a', 'b'] and 'd' in names


# -- softmax, eltwise, reduction, argmax -------------------------------------------
@pytest.mark.parametrize('axis', [1, 2, -1, 0])
def test_softmax(axis):
    check({'data': (2, 3, 4, 5)}, 'layer { name: "s" type: "Softmax" bottom: "data" top: "s" '
                                  'softmax_param { axis: %d } }' % axis, scale=3)


@pytest.mark.parametrize('param', ['operation: PROD', 'operation: SUM', 'operation: SUM coeff: 1 coeff: -0.5 coeff: 2',
                                   'operation: MAX'])
def test_eltwise(param):
    check({'a': (2, 3, 4), 'b': (2, 3, 4), 'c': (2, 3, 4)},
          'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "e" eltwise_param { %s } }'
          % param)


@pytest.mark.parametrize('op', ['SUM', 'ASUM', 'SUMSQ', 'MEAN'])
@pytest.mark.parametrize('axis', [0, 1, 2, -1])
def test_reduction(op, axis):
    net, _, _ = check({'data': (2, 3, 4)}, 'layer { name: "r" type: "Reduction" bottom: "data" top: "r" '
                                           'reduction_param { operation: %s axis: %d coeff: -1.5 } }' % (op, axis),
                      opset=13 if axis == 1 else 18)
    assert net.blobs['r'].shape == (2, 3, 4)[:axis % 3]


@pytest.mark.parametrize('param', ['', 'top_k: 3', 'top_k: 2 out_max_val: true', 'axis: 1 top_k: 2',
                                   'axis: 2 out_max_val: true', 'axis: -1 top_k: 3'])
def test_argmax(param):
    check({'data': (2, 3, 5)}, 'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { %s } }'
          % param)


# -- neurons ---------------------------------------------------------------------
@pytest.mark.parametrize('layer', [
    'type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: 0.1 }', 'type: "Sigmoid"', 'type: "TanH"',
    'type: "AbsVal"', 'type: "BNLL"', 'type: "ELU" elu_param { alpha: 0.5 }', 'type: "PReLU"',
    'type: "PReLU" prelu_param { channel_shared: true }', 'type: "Threshold" threshold_param { threshold: 0.2 }',
    'type: "Clip" clip_param { min: -0.5 max: 0.7 }', 'type: "Swish"', 'type: "Swish" swish_param { beta: 1.5 }',
    'type: "Power"', 'type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }',
    'type: "Power" power_param { power: 3 }', 'type: "Power" power_param { scale: -2 shift: 0.5 }',
    'type: "Power" power_param { power: 0.5 scale: 0.1 shift: 3 }',
    'type: "Exp"', 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: -1 }',
    'type: "Exp" exp_param { base: 10 scale: 0.3 }',
    'type: "Log" log_param { shift: 4 }', 'type: "Log" log_param { base: 2 scale: 0.5 shift: 3 }',
    'type: "Log" log_param { base: 10 scale: 2 shift: 5 }',
])
def test_neuron(layer):
    check({'data': (2, 3, 4, 2)}, 'layer { name: "n" %s bottom: "data" top: "n" }' % layer)
    check({'data': (2, 3, 4, 2)}, 'layer { name: "n" %s bottom: "data" top: "data" }' % layer)  # in place


# -- losses and accuracy -----------------------------------------------------------
def _labels(shape, classes, seed=0, ignore=None):
    lab = np.random.RandomState(seed).randint(0, classes, shape).astype(np.float32)
    if ignore is not None:
        lab.flat[::3] = ignore
    return lab


@pytest.mark.parametrize('param', ['', 'loss_param { ignore_label: 2 }', 'loss_param { normalization: BATCH_SIZE }',
                                   'loss_param { normalization: NONE }', 'loss_param { normalize: false }',
                                   'loss_param { ignore_label: 1 normalization: FULL }'])
def test_softmax_with_loss(param):
    check({'data': (3, 4, 2), 'label': (3, 2)},
          'layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "l" top: "prob" %s }' % param,
          values={'label': _labels((3, 2), 4)}, scale=3)


def test_softmax_with_loss_along_axis_2():
    check({'data': (2, 3, 5), 'label': (2, 3)},
          'layer { name: "l" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "l" '
          'softmax_param { axis: 2 } loss_param { ignore_label: 0 } }', values={'label': _labels((2, 3), 5)})


@pytest.mark.parametrize('param', ['', 'loss_param { ignore_label: -1 }', 'loss_param { normalization: VALID }',
                                   'loss_param { ignore_label: -1 normalization: VALID }'])
def test_sigmoid_cross_entropy_loss(param):
    t = np.random.RandomState(2).uniform(0, 1, (3, 5)).astype(np.float32)
    if 'ignore' in param:
        t[0, 1] = t[2, 3] = -1
    check({'data': (3, 5), 't': (3, 5)},
          'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "data" bottom: "t" top: "l" %s }' % param,
          values={'t': t}, scale=4)


def test_euclidean_and_contrastive_loss():
    check({'a': (4, 3, 1, 1), 'b': (4, 3)}, 'layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }')
    y = np.array([1, 0, 1, 0], np.float32)
    for legacy in ('false', 'true'):
        check({'a': (4, 3), 'b': (4, 3), 'y': (4,)},
              'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "l" '
              'contrastive_loss_param { margin: 2 legacy_version: %s } }' % legacy, values={'y': y})


@pytest.mark.parametrize('layer', ['type: "MultinomialLogisticLoss"', 'type: "HingeLoss"',
                                   'type: "HingeLoss" hinge_loss_param { norm: L2 }'])
def test_per_sample_losses(layer):
    p = np.random.RandomState(1).dirichlet(np.ones(5), 4).astype(np.float32).reshape(4, 5, 1, 1)
    p[0, 0] = 0                                           # log's threshold (1e-20)
    lab = np.array([0, 4, 2, 2], np.float32).reshape(4, 1, 1, 1)
    check({'data': p.shape, 'label': lab.shape}, 'layer { name: "l" %s bottom: "data" bottom: "label" top: "l" }'
          % layer, values={'data': p, 'label': lab})


@pytest.mark.parametrize('from_file', [False, True])
@pytest.mark.parametrize('param', ['', 'loss_param { ignore_label: 1 normalization: BATCH_SIZE }'])
def test_infogain_loss(tmp_path, from_file, param):
    from caffeine.weights import array_to_blob_proto
    H = np.random.RandomState(3).uniform(0, 1, (4, 4)).astype(np.float32)
    inputs = {'data': (3, 4, 2), 'label': (3, 2)}
    values = {'label': _labels((3, 2), 4)}
    if from_file:
        (tmp_path / 'H.binaryproto').write_bytes(array_to_blob_proto(H.reshape(1, 1, 4, 4)).SerializeToString())
        bottoms, extra = '', 'infogain_loss_param { source: "%s" }' % (tmp_path / 'H.binaryproto')
    else:
        inputs['H'], values['H'] = (4, 4), H
        bottoms, extra = 'bottom: "H"', ''
    check(inputs, 'layer { name: "l" type: "InfogainLoss" bottom: "data" bottom: "label" %s top: "l" top: "prob" '
          '%s %s }' % (bottoms, extra, param), values=values, scale=2)


@pytest.mark.parametrize('param', ['', 'accuracy_param { top_k: 2 }', 'accuracy_param { ignore_label: 1 }',
                                   'accuracy_param { axis: 2 top_k: 3 }'])
@pytest.mark.parametrize('per_class', [False, True])
def test_accuracy(param, per_class):
    classes = 5 if 'axis' not in param else 6
    lab = _labels((4, 6) if 'axis' not in param else (4, 5), classes - 1)   # the last class absent
    net, _, _ = check({'data': (4, 5, 6), 'label': lab.shape},
                      'layer { name: "a" type: "Accuracy" bottom: "data" bottom: "label" top: "a" %s %s }'
                      % ('top: "per_class"' if per_class else '', param), values={'label': lab})
    if per_class:
        assert net.blobs['per_class'].shape == (classes,) and net.blobs['per_class'].data[-1] == 0


# -- the graph: dynamic batch, names, errors ---------------------------------------------
SMALL = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 '
         'kernel_size: 3 pad: 1 } }'
         'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }'
         'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }'
         'layer { name: "f" type: "Flatten" bottom: "p" top: "f" }'
         'layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip" inner_product_param { num_output: 3 } }'
         'layer { name: "rs" type: "Reshape" bottom: "ip" top: "rs" reshape_param { shape { dim: 0 dim: -1 dim: 1 } } }'
         'layer { name: "sm" type: "Softmax" bottom: "rs" top: "prob" }')


@pytest.mark.parametrize('batch', [1, 5])
def test_dynamic_batch(batch):
    _, model, _ = check({'data': (2, 3, 7, 7)}, SMALL, dynamic=True, batch=batch)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == 'N'
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == 'N'


def test_in_place_versions_and_names():
    net = _net({'data': (2, 3, 7, 7)}, SMALL)
    model = export_onnx(net)
    assert [i.name for i in model.graph.input] == ['data']
    assert [o.name for o in model.graph.output] == ['prob']
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [2, 3, 1]
    conv = [n for n in model.graph.node if n.op_type == 'Conv'][0]
    relu = [n for n in model.graph.node if n.op_type == 'Relu'][0]
    assert conv.output == ['c@c'] and list(relu.input) == ['c@c'] and relu.output == ['c']
    with pytest.raises(OnnxExportError, match='no blob named'):
        export_onnx(net, keep=['nope'])


def test_opset_range():
    net = _net({'data': (2, 3, 7, 7)}, SMALL)
    for opset in (13, 18, onnx.defs.onnx_opset_version()):
        model = export_onnx(net, opset=opset)
        assert model.opset_import[0].version == opset
    with pytest.raises(OnnxExportError, match='opset 11 is too old'):
        export_onnx(net, opset=11)


@pytest.mark.parametrize('param', ['kernel_size: 2', 'kernel_h: 3 kernel_w: 2 stride: 2 pad: 1',
                                   'kernel_size: 3 dilation: 2 pad: 1'])
def test_im2col(param):
    x = np.arange(2 * 3 * 6 * 5, dtype=np.float32).reshape(2, 3, 6, 5)
    net, _, rep = check({'data': x.shape}, 'layer { name: "cols" type: "Im2col" bottom: "data" top: "cols" '
                                           'convolution_param { %s } }' % param, values={'data': x})
    assert rep['cols'][0] == 0                          # copies, exactly


def test_unsupported_layer_is_one_line_naming_it(monkeypatch):
    net = _net({'data': (1, 2)}, 'layer { name: "abs" type: "AbsVal" bottom: "data" top: "a" }')
    monkeypatch.delitem(CONVERTERS, 'AbsVal')          # as a type without a converter
    with pytest.raises(OnnxExportError) as e:
        export_onnx(net)
    assert str(e.value) == "layer 'abs' (AbsVal): no ONNX export for layer type AbsVal"
    net = caffeine.Net('layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 1 dim: 2 } } }'
                       'layer { name: "r" type: "ReLU" bottom: "d" top: "r" }', caffeine.TEST)
    with pytest.raises(OnnxExportError, match="^layer 'd' \\(DummyData\\): a data layer reads its own files"):
        export_onnx(net)


def test_train_phase_net_is_refused():
    net = caffeine.Net('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }'
                       'layer { name: "d" type: "Dropout" bottom: "data" top: "d" }', caffeine.TRAIN)
    with pytest.raises(OnnxExportError, match='TEST-phase'):
        export_onnx(net)


def test_dynamic_batch_refuses_a_reshape_that_fixes_the_batch():
    net = _net({'data': (2, 6)}, 'layer { name: "r" type: "Reshape" bottom: "data" top: "r" '
                                 'reshape_param { shape { dim: 4 dim: 3 } } }')
    with pytest.raises(OnnxExportError, match="layer 'r' \\(Reshape\\).*dynamic batch"):
        export_onnx(net, dynamic_batch=True)
    export_onnx(net)


# -- recurrent ---------------------------------------------------------------------
def _cont(T, N):
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    cont[3, 1] = 0          # stream 1 starts a new sequence at t = 3
    return cont


@pytest.mark.parametrize('kind', ['LSTM', 'RNN'])
@pytest.mark.parametrize('extra', ['', 'static', 'expose'])
def test_recurrent(kind, extra):
    T, N, H = 5, 2, 3
    inputs = {'x': (T, N, 2, 2), 'cont': (T, N)}
    bottoms = 'bottom: "x" bottom: "cont"'
    tops = 'top: "h"'
    values = {'cont': _cont(T, N)}
    param = 'num_output: %d' % H
    if extra == 'static':
        inputs['s'] = (N, 3)
        bottoms += ' bottom: "s"'
    if extra == 'expose':
        param += ' expose_hidden: true'
        states = ('h0', 'c0') if kind == 'LSTM' else ('h0',)
        for st in states:
            inputs[st] = (1, N, H)
            bottoms += ' bottom: "%s"' % st
            tops += ' top: "%sT"' % st[0]
        values['cont'][0] = 1              # carry the given state into step 0
    net, model, _ = check(inputs, 'layer { name: "r" type: "%s" %s %s recurrent_param { %s } }'
                          % (kind, bottoms, tops, param), values=values, scale=0.7)
    assert [n.op_type for n in model.graph.node].count('Scan') == 1
    assert net.blobs['h'].shape == (T, N, H)


def test_recurrent_dynamic_number_of_steps():
    T, N = 4, 2
    check({'x': (T, N, 3), 'cont': (T, N)}, 'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "h" '
                                           'recurrent_param { num_output: 3 } }',
          values={'cont': _cont(7, N)}, dynamic=True, batch=7)


def test_lstm_unit():
    cont = np.array([[1, 0, 1]], np.float32)
    check({'c_prev': (1, 3, 4), 'gates': (1, 3, 16), 'cont': (1, 3)},
          'layer { name: "u" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont" top: "c" top: "h" }',
          values={'cont': cont})


def test_filter():
    sel = np.array([1, 0, 1, 1], np.float32)
    net, _, _ = check({'a': (4, 3), 'b': (4, 2, 2), 'sel': (4,)},
                      'layer { name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "sel" top: "fa" top: "fb" }',
                      values={'sel': sel})
    assert net.blobs['fa'].shape == (3, 3)


# -- SSD layers ---------------------------------------------------------------------
@pytest.mark.parametrize('order', ['order: 0 order: 2 order: 3 order: 1', 'order: 0 order: 3', ''])
def test_permute(order):
    check({'data': (2, 3, 4, 5)}, 'layer { name: "p" type: "Permute" bottom: "data" top: "p" permute_param { %s } }'
          % order, dynamic=True, batch=3)


@pytest.mark.parametrize('param', ['', 'across_spatial: false', 'channel_shared: false',
                                   'across_spatial: false channel_shared: false eps: 0.001'])
def test_normalize(param):
    check({'data': (2, 3, 4, 5)}, 'layer { name: "n" type: "Normalize" bottom: "data" top: "n" norm_param { %s } }'
          % param)


def test_prior_box_is_a_constant():
    net, model, _ = check({'data': (2, 3, 5, 4), 'image': (2, 3, 40, 32)},
                          'layer { name: "pb" type: "PriorBox" bottom: "data" bottom: "image" top: "pb" '
                          'prior_box_param { min_size: 8 max_size: 16 aspect_ratio: 2 flip: true clip: true '
                          'variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }', dynamic=True, batch=3)
    assert net.blobs['pb'].shape == (1, 2, 5 * 4 * 4 * 4)
    assert [n.op_type for n in model.graph.node if n.output[0] == 'pb'] == ['Identity']


def test_detection_output_is_refused_with_its_reason():
    net = _net({'loc': (1, 8), 'conf': (1, 4), 'prior': (1, 2, 8)},
               'layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det" '
               'detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.45 } } }')
    with pytest.raises(OnnxExportError, match="^layer 'det' \\(DetectionOutput\\): its NMS"):
        export_onnx(net)


# -- other forks' layers -----------------------------------------------------------------
def test_shuffle_channel_depthwise_axpy_relu6():
    check({'data': (2, 6, 5, 4), 'a': (2, 6)},
          'layer { name: "s" type: "ShuffleChannel" bottom: "data" top: "s" shuffle_channel_param { group: 3 } }'
          'layer { name: "d" type: "ConvolutionDepthwise" bottom: "s" top: "d" '
          'convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 } }'
          'layer { name: "r" type: "ReLU6" bottom: "d" top: "d" }'
          'layer { name: "dd" type: "ConvolutionDepthwise" bottom: "s" top: "dd" '
          'convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 bias_term: false } }'
          'layer { name: "x" type: "Axpy" bottom: "a" bottom: "d" bottom: "dd" top: "x" }', scale=3,
          dynamic=True, batch=3)


def test_pspnet_bn_at_test():
    net = _net({'data': (2, 3, 4, 4)}, 'layer { name: "bn" type: "BN" bottom: "data" top: "bn" '
                                       'bn_param { eps: 0.001 } }')
    seeded_weights(net, seed=2)
    net.params['bn'][3].data[...] = np.abs(net.params['bn'][3].data) + 0.5     # variances
    rep = compare(net, export_onnx(net), random_inputs(net))
    assert rep['bn'][0] <= 1e-4 * rep['bn'][1]


@pytest.mark.parametrize('scale_train', ['true', 'false'])
def test_dropout_scale_train(scale_train):
    net, model, _ = check({'data': (2, 5)}, 'layer { name: "d" type: "Dropout" bottom: "data" top: "d" '
                                            'dropout_param { dropout_ratio: 0.3 scale_train: %s } }' % scale_train)
    x = random_inputs(net, seed=1)['data']
    np.testing.assert_allclose(net.blobs['d'].data, x * (1 if scale_train == 'true' else 0.7), rtol=1e-6)


@pytest.mark.parametrize('param', ['scale: 2', 'upsample_h: 7 upsample_w: 6'])
def test_upsample_after_max_pooling_with_its_mask(param):
    net, _, _ = check({'data': (2, 3, 7, 6)},
                      'layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "mask" '
                      'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }'
                      'layer { name: "u" type: "Upsample" bottom: "p" bottom: "mask" top: "u" upsample_param { %s } }'
                      % param, dynamic=True, batch=3)
    assert np.count_nonzero(net.blobs['u'].data) == net.blobs['p'].count


def test_roi_pooling():
    rois = np.array([[0, 0, 0, 15, 15], [1, 3.4, 2.6, 9.2, 14.9], [0, 8, 1, 8, 20], [1, -2, 5, 30, 7]], np.float32)
    check({'data': (2, 3, 8, 10), 'rois': rois.shape},
          'layer { name: "r" type: "ROIPooling" bottom: "data" bottom: "rois" top: "r" '
          'roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 } }', values={'rois': rois})
