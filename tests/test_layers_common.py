"""Common layers (InnerProduct, Embed, Concat, Slice, Split, Flatten, Reshape,
Eltwise, Tile, Reduction, ArgMax, Softmax, BatchNorm, Scale, Bias, MVN, Filter,
BatchReindex, Silence, Parameter), as specified by BVLC Caffe 1.0.

Per layer: forward values against NumPy, gradients against NumPy and finite
differences (Caffe's GradientChecker), the golden cases recorded with Caffe, and
the errors on bad parameters.  ``mode`` (tests/conftest.py) runs each test on
NumPy and, where CuPy and a GPU are present, on CuPy.
"""
import numpy as np
import pytest

import caffeine
from caffeine.blob import Blob
from caffeine.errors import LayerError
from caffeine.testing import (GradientChecker, assert_in_place_equals_out_of_place, backward_layer,
                              blobs_from_arrays, check_golden_layer, forward_layer, golden_cases, make_layer,
                              setup_layer)

TRAIN, TEST = caffeine.TRAIN, caffeine.TEST


def gauss(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def check_grad(text, *arrays, ntop=1, check_bottom=-1, stepsize=1e-2, threshold=1e-3, exhaustive=False, **kw):
    checker = GradientChecker(stepsize, threshold, 1701, **kw)
    fn = checker.check_gradient_exhaustive if exhaustive else checker.check_gradient
    fn(make_layer(text), blobs_from_arrays(*arrays), [Blob() for _ in range(ntop)], check_bottom)


# =============================================================================
# InnerProduct
# =============================================================================
@pytest.mark.parametrize('axis, transpose, bias', [(1, False, True), (2, False, True), (1, True, True),
                                                   (1, False, False), (-1, False, True)])
def test_inner_product_forward_backward(mode, axis, transpose, bias):
    x = gauss(2, 3, 4)
    text = ('type: "InnerProduct" inner_product_param { num_output: 5 axis: %d transpose: %s bias_term: %s '
            'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } }'
            % (axis, str(transpose).lower(), str(bias).lower()))
    layer, bottom, top = forward_layer(text, x)
    a = axis % 3
    K = int(np.prod(x.shape[a:]))
    assert top[0].shape == x.shape[:a] + (5,)
    assert layer.blobs[0].shape == ((K, 5) if transpose else (5, K))
    assert len(layer.blobs) == (2 if bias else 1)
    W = layer.blobs[0].data.copy()
    Wt = W if transpose else W.T                      # (K, 5)
    b = layer.blobs[1].data.copy() if bias else 0
    x2 = x.reshape(-1, K)
    np.testing.assert_allclose(top[0].data.reshape(-1, 5), x2 @ Wt + b, rtol=1e-5, atol=1e-6)
    dy = gauss(*top[0].shape, seed=1)
    for p in layer.blobs:
        p.diff[...] = 1.0                             # parameter gradients accumulate
    dx, = backward_layer(layer, bottom, top, dy)
    dy2 = dy.reshape(-1, 5)
    np.testing.assert_allclose(dx.reshape(-1, K), dy2 @ Wt.T, rtol=1e-5, atol=1e-6)
    dW = x2.T @ dy2
    np.testing.assert_allclose(layer.blobs[0].diff, 1 + (dW if transpose else dW.T), rtol=1e-5, atol=1e-5)
    if bias:
        np.testing.assert_allclose(layer.blobs[1].diff, 1 + dy2.sum(0), rtol=1e-5)


@pytest.mark.parametrize('transpose', [False, True])
def test_inner_product_gradient(mode, transpose):
    check_grad('type: "InnerProduct" inner_product_param { num_output: 3 transpose: %s '
               'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }' % str(transpose).lower(),
               gauss(2, 3, 2), exhaustive=True)


def test_inner_product_errors():
    with pytest.raises(LayerError, match=r"'layer' \(InnerProduct\).*num_output must be positive"):
        setup_layer('type: "InnerProduct"', gauss(2, 3))
    with pytest.raises(LayerError, match=r"\(InnerProduct\).*axis 3 out of range"):
        setup_layer('type: "InnerProduct" inner_product_param { num_output: 2 axis: 3 }', gauss(2, 3))
    layer, bottom, top = setup_layer('type: "InnerProduct" inner_product_param { num_output: 2 }', gauss(2, 3))
    bottom[0].reshape(2, 4)
    with pytest.raises(LayerError, match=r"\(InnerProduct\).*incompatible.*4 values.*expect 3"):
        layer.Reshape(bottom, top)


# =============================================================================
# Embed
# =============================================================================
def test_embed(mode):
    idx = np.array([[3, 0, 9], [3, 5, 1]], np.float32)
    layer, bottom, top = forward_layer('type: "Embed" embed_param { num_output: 4 input_dim: 10 '
                                       'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', idx)
    W, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    assert W.shape == (10, 4) and top[0].shape == (2, 3, 4)
    np.testing.assert_allclose(top[0].data, W[idx.astype(int)] + b, rtol=1e-6)
    dy = gauss(2, 3, 4, seed=1)
    backward_layer(layer, bottom, top, dy, propagate_down=[False])
    want = np.zeros((10, 4), np.float32)
    np.add.at(want, idx.astype(int).ravel(), dy.reshape(-1, 4))     # index 3 twice: summed
    np.testing.assert_allclose(layer.blobs[0].diff, want, rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[1].diff, dy.reshape(-1, 4).sum(0), rtol=1e-5)
    assert not layer.allow_force_backward(0)
    with pytest.raises(LayerError, match=r"\(Embed\).*back-propagate"):
        layer.Backward(top, [True], bottom)


def test_embed_gradient(mode):
    check_grad('type: "Embed" embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" } '
               'bias_filler { type: "gaussian" } }', np.array([[4, 1], [1, 0]], np.float32),
               check_bottom=-2, exhaustive=True)


@pytest.mark.parametrize('value, match', [(10, 'out of range'), (-1, 'out of range'), (2.5, 'not an integer')])
def test_embed_bad_index(mode, value, match):
    with pytest.raises(LayerError, match=r"\(Embed\).*index .* %s" % match):
        forward_layer('type: "Embed" embed_param { num_output: 2 input_dim: 10 }', np.array([1, value], np.float32))


def test_embed_bad_parameters():
    with pytest.raises(LayerError, match=r"\(Embed\).*input_dim must be positive"):
        setup_layer('type: "Embed" embed_param { num_output: 2 }', np.zeros(3))


# =============================================================================
# Concat, Slice, Split
# =============================================================================
@pytest.mark.parametrize('param, axis', [('', 1), ('concat_param { axis: 0 }', 0),
                                         ('concat_param { axis: -1 }', 2), ('concat_param { concat_dim: 0 }', 0)])
def test_concat(mode, param, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for i, s in enumerate(shapes):
        s[axis] += i
    xs = [gauss(*s, seed=i) for i, s in enumerate(shapes)]
    layer, bottom, top = forward_layer('type: "Concat" ' + param, *xs)
    np.testing.assert_array_equal(top[0].data, np.concatenate(xs, axis=axis))
    dy = gauss(*top[0].shape, seed=9)
    dxs = backward_layer(layer, bottom, top, dy)
    for dx, want in zip(dxs, np.split(dy, np.cumsum([x.shape[axis] for x in xs])[:-1], axis=axis)):
        np.testing.assert_array_equal(dx, want)


def test_concat_gradient_and_single_bottom(mode):
    check_grad('type: "Concat"', gauss(2, 1, 2), gauss(2, 2, 2, seed=1))
    layer, bottom, top = forward_layer('type: "Concat"', gauss(2, 3))
    assert top[0].shares_data_with(bottom[0])


def test_concat_errors():
    with pytest.raises(LayerError, match=r"'layer' \(Concat\).*same shape except at the concat axis 1.*\(2, 3, 4\).*\(2, 3, 5\)"):
        setup_layer('type: "Concat"', gauss(2, 3, 4), gauss(2, 3, 5))
    with pytest.raises(LayerError, match=r"\(Concat\).*same number of axes"):
        setup_layer('type: "Concat"', gauss(2, 3, 4), gauss(2, 3))
    with pytest.raises(LayerError, match=r"\(Concat\).*either axis or concat_dim"):
        setup_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', gauss(2, 3), gauss(2, 3))
    with pytest.raises(LayerError, match=r"\(Concat\).*axis 3 out of range"):
        setup_layer('type: "Concat" concat_param { axis: 3 }', gauss(2, 3), gauss(2, 3))


@pytest.mark.parametrize('param, sizes, axis', [
    ('slice_param { axis: 1 slice_point: 2 slice_point: 5 }', [2, 3, 2], 1),
    ('slice_param { axis: 0 }', [2, 2, 2], 0),
    ('slice_param { slice_dim: 2 slice_point: 1 slice_point: 3 }', [1, 2, 3], 2),
    ('slice_param { axis: -1 }', [2, 2, 2], 2),
])
def test_slice(mode, param, sizes, axis):
    shape = [6, 7, 6]
    shape[axis] = sum(sizes)
    x = gauss(*shape)
    layer, bottom, top = forward_layer('type: "Slice" ' + param, x, ntop=3)
    parts = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    for t, want in zip(top, parts):
        np.testing.assert_array_equal(t.data, want)
    dys = [gauss(*p.shape, seed=i) for i, p in enumerate(parts)]
    dx, = backward_layer(layer, bottom, top, *dys)
    np.testing.assert_array_equal(dx, np.concatenate(dys, axis=axis))


def test_slice_gradient(mode):
    check_grad('type: "Slice" slice_param { slice_point: 1 }', gauss(2, 3, 2), ntop=2)


@pytest.mark.parametrize('param, ntop, match', [
    ('slice_param { axis: 1 }', 4, 'do not evenly divide the slice axis 1 of size 6'),
    ('slice_param { slice_point: 2 }', 3, '1 slice_point values for 3 tops'),
    ('slice_param { slice_point: 3 slice_point: 2 }', 3, 'increasing'),
    ('slice_param { slice_point: 7 }', 2, 'beyond'),
    ('slice_param { axis: 1 slice_dim: 1 }', 2, 'either axis or slice_dim'),
])
def test_slice_errors(param, ntop, match):
    with pytest.raises(LayerError, match=r"\(Slice\).*" + match):
        setup_layer('type: "Slice" ' + param, gauss(2, 6), ntop=ntop)


def test_split(mode):
    x = gauss(2, 3)
    layer, bottom, top = forward_layer('type: "Split"', x, ntop=3)
    for t in top:
        assert t.shares_data_with(bottom[0])
        np.testing.assert_array_equal(t.data, x)
    dys = [gauss(2, 3, seed=i) for i in range(3)]
    dx, = backward_layer(layer, bottom, top, *dys)
    np.testing.assert_allclose(dx, dys[0] + dys[1] + dys[2], rtol=1e-6)
    check_grad('type: "Split"', x, ntop=2)
    with pytest.raises(LayerError, match=r"\(Split\).*in place"):
        make_layer('type: "Split"').SetUp(bottom, bottom)


# =============================================================================
# Flatten, Reshape
# =============================================================================
@pytest.mark.parametrize('param, want', [('', (2, 60)), ('flatten_param { axis: 2 }', (2, 3, 20)),
                                         ('flatten_param { axis: 1 end_axis: 2 }', (2, 12, 5)),
                                         ('flatten_param { axis: 0 end_axis: -2 }', (24, 5))])
def test_flatten(mode, param, want):
    x = gauss(2, 3, 4, 5)
    layer, bottom, top = forward_layer('type: "Flatten" ' + param, x)
    assert top[0].shape == want
    assert top[0].shares_data_with(bottom[0])
    np.testing.assert_array_equal(top[0].data, x.reshape(want))
    dy = gauss(*want, seed=1)
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_array_equal(dx, dy.reshape(x.shape))


def test_flatten_errors():
    with pytest.raises(LayerError, match=r"\(Flatten\).*in place"):
        b = blobs_from_arrays(gauss(2, 3))
        make_layer('type: "Flatten"').SetUp(b, b)
    with pytest.raises(LayerError, match=r"\(Flatten\).*end_axis 0 comes before axis 1"):
        setup_layer('type: "Flatten" flatten_param { end_axis: 0 }', gauss(2, 3))


@pytest.mark.parametrize('param, want', [
    ('shape { dim: 0 dim: -1 dim: 5 }', (2, 12, 5)),
    ('shape { dim: 4 dim: 0 dim: -1 }', (4, 3, 10)),            # 0 copies the bottom's axis 1
    ('shape { dim: -1 }', (120,)),
    ('shape { dim: 2 dim: 3 } axis: 1 num_axes: 1', None),      # replaces axis 1 only (x is 2x6x4x5)
    ('shape { dim: 1 } axis: 0 num_axes: 0', (1, 2, 3, 4, 5)),  # inserts an axis
    ('shape { dim: 1 } axis: -1 num_axes: 0', (2, 3, 4, 5, 1)),
    ('shape { dim: 1 dim: 1 } axis: 2 num_axes: 0', (2, 3, 1, 1, 4, 5)),
    ('shape { dim: 12 } axis: 1 num_axes: 2', (2, 12, 5)),
    ('shape { dim: -1 dim: 2 } axis: 1 num_axes: -1', (2, 30, 2)),
    ('shape { dim: 0 dim: 0 dim: 0 dim: 0 }', (2, 3, 4, 5)),
])
def test_reshape(mode, param, want):
    x = gauss(2, 3, 4, 5)
    if want is None:
        x, want = gauss(2, 6, 4, 5), (2, 2, 3, 4, 5)
    layer, bottom, top = forward_layer('type: "Reshape" reshape_param { %s }' % param, x)
    assert top[0].shape == want
    assert top[0].shares_data_with(bottom[0])
    np.testing.assert_array_equal(top[0].data, x.reshape(want))
    dy = gauss(*want, seed=1)
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_array_equal(dx, dy.reshape(x.shape))


@pytest.mark.parametrize('param, match', [
    ('shape { dim: -1 dim: -1 }', 'more than one -1'),
    ('shape { dim: 7 dim: -1 }', 'cannot infer'),
    ('shape { dim: 2 dim: 3 }', 'has 6 values but the bottom'),
    ('shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 }', 'no axis 4'),
    ('shape { dim: 2 } axis: 5', 'axis 5 out of range'),
    ('shape { dim: 2 } axis: 1 num_axes: 4', 'beyond'),
])
def test_reshape_errors(param, match):
    with pytest.raises(LayerError, match=r"\(Reshape\).*" + match):
        setup_layer('type: "Reshape" reshape_param { %s }' % param, gauss(2, 3, 4, 5))


# =============================================================================
# Eltwise
# =============================================================================
def test_eltwise_sum_prod_max(mode):
    a, b, c = gauss(2, 3, 4), gauss(2, 3, 4, seed=1), gauss(2, 3, 4, seed=2)
    dy = gauss(2, 3, 4, seed=3)
    layer, bottom, top = forward_layer('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }',
                                       a, b, c)
    np.testing.assert_allclose(top[0].data, a - 0.5 * b + 2 * c, rtol=1e-6, atol=1e-6)
    for dx, k in zip(backward_layer(layer, bottom, top, dy), (1, -0.5, 2)):
        np.testing.assert_allclose(dx, k * dy, rtol=1e-6)
    for stable in ('true', 'false'):
        layer, bottom, top = forward_layer('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: %s }'
                                           % stable, a, b, c)
        np.testing.assert_allclose(top[0].data, a * b * c, rtol=1e-6)
        da, db, dc = backward_layer(layer, bottom, top, dy)
        np.testing.assert_allclose(da, dy * b * c, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(dc, dy * a * b, rtol=1e-4, atol=1e-6)
    layer, bottom, top = forward_layer('type: "Eltwise" eltwise_param { operation: MAX }', a, b, c)
    np.testing.assert_array_equal(top[0].data, np.maximum(np.maximum(a, b), c))
    arg = np.argmax(np.stack([a, b, c]), axis=0)
    for i, dx in enumerate(backward_layer(layer, bottom, top, dy)):
        np.testing.assert_array_equal(dx, np.where(arg == i, dy, 0))


def test_eltwise_max_ties_as_caffe(mode):
    # equal values: bottom 1 wins over bottom 0; a later bottom only when strictly greater
    a = np.array([1, 2, 3], np.float32)
    layer, bottom, top = forward_layer('type: "Eltwise" eltwise_param { operation: MAX }', a, a.copy(), a.copy())
    da, db, dc = backward_layer(layer, bottom, top, np.ones(3, np.float32))
    np.testing.assert_array_equal(da, 0)
    np.testing.assert_array_equal(db, 1)
    np.testing.assert_array_equal(dc, 0)


@pytest.mark.parametrize('param', ['operation: SUM coeff: 0.5 coeff: -2', 'operation: PROD',
                                   'operation: PROD stable_prod_grad: false', 'operation: MAX'])
def test_eltwise_gradient(mode, param):
    a = gauss(2, 3, 2)
    b = gauss(2, 3, 2, seed=1)
    if 'MAX' in param:
        b = a + np.where(gauss(2, 3, 2, seed=2) > 0, 0.2, -0.2).astype(np.float32)   # no near-ties
    check_grad('type: "Eltwise" eltwise_param { %s }' % param, a, b)


@pytest.mark.parametrize('param, bottoms, match', [
    ('operation: PROD coeff: 1 coeff: 2', 2, 'coefficients are only for SUM'),
    ('operation: SUM coeff: 1', 2, '1 coeff values for 2 bottoms'),
])
def test_eltwise_bad_parameters(param, bottoms, match):
    with pytest.raises(LayerError, match=r"\(Eltwise\).*" + match):
        setup_layer('type: "Eltwise" eltwise_param { %s }' % param, *[gauss(2, 3)] * bottoms)


def test_eltwise_bad_shapes():
    with pytest.raises(LayerError, match=r"\(Eltwise\).*bottom 1 has shape \(2, 4\) but bottom 0 has \(2, 3\)"):
        setup_layer('type: "Eltwise"', gauss(2, 3), gauss(2, 4))
    with pytest.raises(LayerError, match=r"\(Eltwise\).*at least 2 bottom"):
        setup_layer('type: "Eltwise"', gauss(2, 3))


# =============================================================================
# Tile, Reduction, ArgMax, Softmax
# =============================================================================
@pytest.mark.parametrize('axis', [0, 1, 2, -1])
def test_tile(mode, axis):
    x = gauss(2, 3, 4)
    layer, bottom, top = forward_layer('type: "Tile" tile_param { axis: %d tiles: 3 }' % axis, x)
    a = axis % 3
    reps = [1, 1, 1]
    reps[a] = 3
    # Caffe repeats whole blocks from ``axis`` on: np.tile over the axis
    want = np.tile(x.reshape(x.shape[:a] + (1,) + x.shape[a:]), [1] * a + [3] + [1] * (3 - a)).reshape(
        x.shape[:a] + (3 * x.shape[a],) + x.shape[a + 1:])
    np.testing.assert_array_equal(top[0].data, want)
    dy = gauss(*want.shape, seed=1)
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_allclose(dx, dy.reshape(x.shape[:a] + (3,) + x.shape[a:]).sum(axis=a), rtol=1e-6)


def test_tile_gradient_and_errors(mode):
    check_grad('type: "Tile" tile_param { axis: 1 tiles: 2 }', gauss(2, 2, 3))
    with pytest.raises(LayerError, match=r"\(Tile\).*tiles must be positive"):
        setup_layer('type: "Tile"', gauss(2, 3))


@pytest.mark.parametrize('op', ['SUM', 'ASUM', 'SUMSQ', 'MEAN'])
@pytest.mark.parametrize('axis', [0, 1, -1])
def test_reduction(mode, op, axis):
    x = gauss(2, 3, 4)
    layer, bottom, top = forward_layer('type: "Reduction" reduction_param { operation: %s axis: %d coeff: 0.7 }'
                                       % (op, axis), x)
    a = axis % 3
    assert top[0].shape == x.shape[:a]
    x64 = x.astype(np.float64).reshape(int(np.prod(x.shape[:a])), -1)
    f = {'SUM': lambda v: v, 'ASUM': np.abs, 'SUMSQ': np.square, 'MEAN': lambda v: v}[op]
    want = 0.7 * f(x64).sum(1) / (x64.shape[1] if op == 'MEAN' else 1)
    np.testing.assert_allclose(top[0].data.ravel(), want, rtol=1e-5)
    dy = gauss(*top[0].shape, seed=1) if a else np.float32(1.3)
    dx, = backward_layer(layer, bottom, top, dy)
    g = {'SUM': np.ones_like(x64), 'ASUM': np.sign(x64), 'SUMSQ': 2 * x64,
         'MEAN': np.ones_like(x64) / x64.shape[1]}[op]
    np.testing.assert_allclose(dx.reshape(x64.shape), 0.7 * g * np.reshape(dy, (-1, 1)), rtol=1e-5)


@pytest.mark.parametrize('op', ['SUM', 'ASUM', 'SUMSQ', 'MEAN'])
def test_reduction_gradient(mode, op):
    check_grad('type: "Reduction" reduction_param { operation: %s axis: 1 coeff: 2 }' % op, gauss(2, 3, 2),
               kink=0.0, kink_range=0.02)


def test_argmax(mode):
    x = gauss(3, 8)
    layer, _, top = forward_layer('type: "ArgMax" argmax_param { top_k: 3 }', x)
    assert top[0].shape == (3, 1, 3)
    order = np.argsort(-x, axis=1, kind='stable')[:, :3]
    np.testing.assert_array_equal(top[0].data[:, 0, :], order)
    _, _, top = forward_layer('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', x)
    assert top[0].shape == (3, 2, 2)
    np.testing.assert_array_equal(top[0].data[:, 0, :], order[:, :2])
    np.testing.assert_array_equal(top[0].data[:, 1, :], np.take_along_axis(x, order[:, :2], 1))
    assert not layer.allow_force_backward(0)


def test_argmax_axis(mode):
    x = gauss(2, 5, 3)
    _, _, top = forward_layer('type: "ArgMax" argmax_param { axis: 1 top_k: 2 }', x)
    assert top[0].shape == (2, 2, 3)
    order = np.argsort(-x, axis=1, kind='stable')[:, :2]
    np.testing.assert_array_equal(top[0].data, order)
    _, _, top = forward_layer('type: "ArgMax" argmax_param { axis: -1 out_max_val: true }', x)
    np.testing.assert_array_equal(top[0].data, x.max(axis=-1, keepdims=True))


def test_argmax_ties_go_to_the_larger_index(mode):
    # Caffe sorts (value, index) pairs with std::greater
    x = np.array([[1, 3, 3, 0, 3]], np.float32)
    _, _, top = forward_layer('type: "ArgMax" argmax_param { top_k: 4 }', x)
    np.testing.assert_array_equal(top[0].data.ravel(), [4, 2, 1, 0])
    _, _, top = forward_layer('type: "ArgMax"', x)
    np.testing.assert_array_equal(top[0].data.ravel(), [4])


def test_argmax_errors():
    with pytest.raises(LayerError, match=r"\(ArgMax\).*top_k 9 is larger"):
        setup_layer('type: "ArgMax" argmax_param { top_k: 9 }', gauss(3, 8))
    with pytest.raises(LayerError, match=r"\(ArgMax\).*top_k 4 is larger than axis 1 of size 3"):
        setup_layer('type: "ArgMax" argmax_param { top_k: 4 axis: 1 }', gauss(2, 3))
    with pytest.raises(LayerError, match=r"\(ArgMax\).*top_k must be at least 1"):
        setup_layer('type: "ArgMax" argmax_param { top_k: 0 }', gauss(2, 3))


@pytest.mark.parametrize('axis', [1, 0, -1])
def test_softmax(mode, axis):
    x = gauss(2, 3, 4) * 3
    x[0, 0, 0] = 1000.0     # Caffe subtracts the max: no overflow
    layer, bottom, top = forward_layer('type: "Softmax" softmax_param { axis: %d }' % axis, x)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(top[0].data, y, rtol=1e-5, atol=1e-7)
    dy = gauss(2, 3, 4, seed=1)
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_allclose(dx, (dy - (dy * y).sum(axis=axis, keepdims=True)) * y, rtol=1e-4, atol=1e-6)


def test_softmax_gradient(mode):
    check_grad('type: "Softmax"', gauss(2, 3, 2), exhaustive=True)


# =============================================================================
# BatchNorm
# =============================================================================
def _bn_ref(x, eps):
    axes = (0,) + tuple(range(2, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps), mean.ravel(), var.ravel()


@pytest.mark.parametrize('shape', [(2, 3, 4, 5), (6, 4)])
def test_batchnorm_train(mode, shape):
    x = gauss(*shape) * 2 + 1
    layer, bottom, top = setup_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 }', x)
    C = shape[1]
    assert [b.shape for b in layer.blobs] == [(C,), (C,), (1,)]
    assert layer.param_propagate_down == [False, False, False]
    layer.blobs[0].data[...] = 0.5
    layer.blobs[1].data[...] = 2.0
    layer.blobs[2].data[...] = 1.7
    layer.Forward(bottom, top)
    y, mean, var = _bn_ref(x, 1e-3)
    np.testing.assert_allclose(top[0].data, y, rtol=1e-4, atol=1e-5)
    m = x.size // C
    np.testing.assert_allclose(layer.blobs[2].data, [0.9 * 1.7 + 1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, 0.9 * 0.5 + mean, rtol=1e-5)
    np.testing.assert_allclose(layer.blobs[1].data, 0.9 * 2.0 + var * m / (m - 1), rtol=1e-5)  # unbiased
    dy = gauss(*shape, seed=1)
    dx, = backward_layer(layer, bottom, top, dy)
    axes = (0,) + tuple(range(2, x.ndim))
    want = (dy - dy.mean(axis=axes, keepdims=True) - y * (dy * y).mean(axis=axes, keepdims=True)) \
        / np.sqrt(var + 1e-3).reshape((1, C) + (1,) * (x.ndim - 2))
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5)
    for p in layer.blobs:
        np.testing.assert_array_equal(p.diff, 0)      # the statistics get no gradient


@pytest.mark.parametrize('phase, param', [(TEST, ''), (TRAIN, 'batch_norm_param { use_global_stats: true }')])
def test_batchnorm_global_stats(mode, phase, param):
    x = gauss(2, 3, 2, 2)
    layer, bottom, top = setup_layer('type: "BatchNorm" ' + param, x, phase=phase)
    assert layer.use_global_stats
    mean, var, s = np.array([1, -1, 0.5], np.float32), np.array([4, 1, 0.25], np.float32), 2.0
    layer.blobs[0].data[...] = mean * s
    layer.blobs[1].data[...] = var * s
    layer.blobs[2].data[...] = s
    layer.Forward(bottom, top)
    std = np.sqrt(var + 1e-5).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(top[0].data, (x - mean.reshape(1, 3, 1, 1)) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[2].data, [2.0])     # untouched
    dy = gauss(2, 3, 2, 2, seed=1)
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_allclose(dx, dy / std, rtol=1e-5)
    layer.blobs[2].data[...] = 0          # scale factor 0: zero statistics, as Caffe
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_in_place_and_gradient(mode):
    x, dy = gauss(2, 3, 2, 2), gauss(2, 3, 2, 2, seed=1)
    assert_in_place_equals_out_of_place('type: "BatchNorm"', x, dy, top_rtol=1e-6, rtol=1e-6)
    check_grad('type: "BatchNorm"', gauss(3, 2, 2), stepsize=1e-3, threshold=2e-2)


def test_batchnorm_statistics_are_never_learned():
    net = caffeine.Net('''
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
    ''', TRAIN)
    assert net.params_lr == [0.0, 0.0, 0.0]
    assert net.layer_dict['bn'].force_zero_lr
    with pytest.raises(LayerError, match=r"'bn' \(BatchNorm\).*cannot be learned"):
        make_layer('name: "bn" type: "BatchNorm" param { lr_mult: 1 }').SetUp(blobs_from_arrays(gauss(2, 3)), [Blob()])


# =============================================================================
# Scale, Bias
# =============================================================================
@pytest.mark.parametrize('param, sshape, bshape', [
    ('', (3,), (1, 3, 1, 1)),
    ('scale_param { axis: 0 num_axes: 2 }', (2, 3), (2, 3, 1, 1)),
    ('scale_param { axis: 2 num_axes: -1 }', (4, 5), (1, 1, 4, 5)),
    ('scale_param { num_axes: 0 }', (), ()),
    ('scale_param { axis: -2 num_axes: 1 bias_term: true }', (4,), (1, 1, 4, 1)),
])
def test_scale_learned(mode, param, sshape, bshape):
    x = gauss(2, 3, 4, 5)
    text = ('type: "Scale" ' + param).replace('scale_param {', 'scale_param { filler { type: "gaussian" } '
                                              'bias_filler { type: "gaussian" }') if param else \
        'type: "Scale" scale_param { filler { type: "gaussian" } }'
    layer, bottom, top = forward_layer(text, x)
    s = layer.blobs[0].data.copy()
    assert s.shape == sshape
    bias = 'bias_term' in param
    b = layer.blobs[1].data.reshape(bshape) if bias else 0
    np.testing.assert_allclose(top[0].data, x * s.reshape(bshape) + b, rtol=1e-6, atol=1e-6)
    dy = gauss(2, 3, 4, 5, seed=1)
    for p in layer.blobs:
        p.diff[...] = 1.0
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_allclose(dx, dy * s.reshape(bshape), rtol=1e-6)
    axes = tuple(i for i in range(4) if bshape == () or bshape[i] == 1)
    np.testing.assert_allclose(layer.blobs[0].diff, 1 + (dy * x).sum(axis=axes).reshape(sshape), rtol=1e-4)
    if bias:
        np.testing.assert_allclose(layer.blobs[1].diff, 1 + dy.sum(axis=axes).reshape(sshape), rtol=1e-4)


def test_scale_default_filler_is_one(mode):
    layer, _, top = forward_layer('type: "Scale"', gauss(2, 3))
    np.testing.assert_array_equal(layer.blobs[0].data, 1)


def test_scale_two_bottoms(mode):
    x, s = gauss(2, 3, 4), gauss(2, 3, seed=1)
    layer, bottom, top = forward_layer('type: "Scale" scale_param { axis: 0 }', x, s)
    assert layer.blobs == []
    np.testing.assert_allclose(top[0].data, x * s[..., None], rtol=1e-6)
    dy = gauss(2, 3, 4, seed=2)
    dx, ds = backward_layer(layer, bottom, top, dy)
    np.testing.assert_allclose(dx, dy * s[..., None], rtol=1e-6)
    np.testing.assert_allclose(ds, (dy * x).sum(-1), rtol=1e-5)
    check_grad('type: "Scale" scale_param { axis: 0 }', gauss(2, 3, 2), gauss(2, 3, seed=1))
    check_grad('type: "Scale" scale_param { axis: 1 bias_term: true bias_filler { type: "gaussian" } }',
               gauss(2, 3, 2), gauss(3, seed=1))


def test_scale_in_place(mode):
    x, dy = gauss(2, 3, 4), gauss(2, 3, 4, seed=1)
    assert_in_place_equals_out_of_place('type: "Scale" scale_param { filler { type: "gaussian" } bias_term: true }',
                                        x, dy, top_rtol=1e-6, rtol=1e-6)


def test_scale_gradient(mode):
    check_grad('type: "Scale" scale_param { axis: 1 num_axes: 2 filler { type: "gaussian" } '
               'bias_term: true bias_filler { type: "gaussian" } }', gauss(2, 3, 2))


def test_scale_errors():
    with pytest.raises(LayerError, match=r"\(Scale\).*dimension mismatch.*\(2, 3, 4\).*axis 1.*\(4\)"):
        setup_layer('type: "Scale"', gauss(2, 3, 4), gauss(4))
    with pytest.raises(LayerError, match=r"\(Scale\).*beyond"):
        setup_layer('type: "Scale" scale_param { axis: 1 num_axes: 3 }', gauss(2, 3, 4))
    with pytest.raises(LayerError, match=r"\(Scale\).*axis 3 out of range"):
        setup_layer('type: "Scale" scale_param { axis: 3 }', gauss(2, 3, 4))


def test_bias(mode):
    x = gauss(2, 3, 4)
    layer, bottom, top = forward_layer('type: "Bias" bias_param { filler { type: "gaussian" } }', x)
    b = layer.blobs[0].data.copy()
    assert b.shape == (3,)
    np.testing.assert_allclose(top[0].data, x + b[:, None], rtol=1e-6)
    dy = gauss(2, 3, 4, seed=1)
    layer.blobs[0].diff[...] = 1
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(layer.blobs[0].diff, 1 + dy.sum(axis=(0, 2)), rtol=1e-5)
    layer, bottom, top = forward_layer('type: "Bias" bias_param { axis: 0 }', x, gauss(2, 3, seed=2))
    np.testing.assert_allclose(top[0].data, x + gauss(2, 3, seed=2)[..., None], rtol=1e-6)
    dx, db = backward_layer(layer, bottom, top, dy)
    np.testing.assert_allclose(db, dy.sum(-1), rtol=1e-5)
    check_grad('type: "Bias" bias_param { axis: 1 num_axes: -1 filler { type: "gaussian" } }', gauss(2, 3, 2))
    check_grad('type: "Bias"', gauss(2, 3, 2), gauss(3, 2, seed=1))


# =============================================================================
# MVN
# =============================================================================
@pytest.mark.parametrize('param', ['', 'mvn_param { across_channels: true }',
                                   'mvn_param { normalize_variance: false }',
                                   'mvn_param { across_channels: true normalize_variance: false eps: 0.1 }'])
def test_mvn(mode, param):
    x = gauss(2, 3, 4, 5) * 2 + 1
    layer, bottom, top = forward_layer('type: "MVN" ' + param, x)
    across, norm = 'across_channels: true' in param, 'normalize_variance: false' not in param
    x2 = x.astype(np.float64).reshape(2 if across else 6, -1)
    y = x2 - x2.mean(1, keepdims=True)
    if norm:
        y /= np.sqrt((y ** 2).mean(1, keepdims=True)) + 1e-9       # eps is added to the std
    np.testing.assert_allclose(top[0].data.reshape(y.shape), y, rtol=1e-4, atol=1e-5)
    check_grad('type: "MVN" ' + param, gauss(2, 3, 2, 2), threshold=5e-3)


# =============================================================================
# Filter, BatchReindex, Silence, Parameter
# =============================================================================
def test_filter(mode):
    x, z = gauss(5, 3, 2), gauss(5, 2, seed=1)
    sel = np.array([1, 0, 1, 1, 0], np.float32)
    layer, bottom, top = setup_layer('type: "Filter"', x, z, sel, ntop=2)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, x[[0, 2, 3]])
    np.testing.assert_array_equal(top[1].data, z[[0, 2, 3]])
    dys = [gauss(3, 3, 2, seed=2), gauss(3, 2, seed=3)]
    dx, dz, _ = backward_layer(layer, bottom, top, *dys, propagate_down=[True, True, False])
    want = np.zeros_like(x)
    want[[0, 2, 3]] = dys[0]
    np.testing.assert_array_equal(dx, want)
    assert layer.allow_force_backward(1) and not layer.allow_force_backward(2)
    with pytest.raises(LayerError, match=r"\(Filter\).*selector"):
        layer.Backward(top, [True, True, True], bottom)


def test_filter_errors():
    with pytest.raises(LayerError, match=r"\(Filter\).*one top per data bottom"):
        setup_layer('type: "Filter"', gauss(5, 3), np.ones(5), ntop=2)
    with pytest.raises(LayerError, match=r"\(Filter\).*selector's 4 items"):
        setup_layer('type: "Filter"', gauss(5, 3), np.ones(4))


def test_batch_reindex(mode):
    x = gauss(4, 3, 2)
    idx = np.array([3, 0, 3, 2, 3], np.float32)
    layer, bottom, top = forward_layer('type: "BatchReindex"', x, idx)
    np.testing.assert_array_equal(top[0].data, x[[3, 0, 3, 2, 3]])
    dy = gauss(5, 3, 2, seed=1)
    dx, _ = backward_layer(layer, bottom, top, dy, propagate_down=[True, False])
    want = np.zeros_like(x)
    np.add.at(want, [3, 0, 3, 2, 3], dy)       # repeated indices accumulate
    np.testing.assert_allclose(dx, want, rtol=1e-6)
    check_grad('type: "BatchReindex"', gauss(3, 2), np.array([2, 2, 0, 1], np.float32), check_bottom=0)
    with pytest.raises(LayerError, match=r"\(BatchReindex\).*indices"):
        layer.Backward(top, [True, True], bottom)
    with pytest.raises(LayerError, match=r"\(BatchReindex\).*index 4 at position 1 is out of range"):
        forward_layer('type: "BatchReindex"', x, np.array([0, 4], np.float32))


def test_silence(mode):
    layer, bottom, top = forward_layer('type: "Silence"', gauss(2, 3), gauss(4), ntop=0)
    for b in bottom:
        b.diff[...] = 5
    layer.Backward([], [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)
    np.testing.assert_array_equal(bottom[1].diff, 5)


def test_parameter(mode):
    layer, _, top = forward_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', ntop=1)
    assert layer.blobs[0].shape == (2, 3) and top[0].shape == (2, 3)
    assert top[0].shares_data_with(layer.blobs[0])
    layer.blobs[0].data[...] = gauss(2, 3)
    np.testing.assert_array_equal(top[0].data, gauss(2, 3))
    # backward: the top's gradient is the parameter's (shared diff), as Caffe's ShareDiff
    top[0].diff[...] = gauss(2, 3, seed=4)
    layer.Backward(top, [], [])
    np.testing.assert_array_equal(layer.blobs[0].diff, gauss(2, 3, seed=4))


# =============================================================================
# golden cases recorded with BVLC Caffe
# =============================================================================
COMMON_TYPES = ['InnerProduct', 'Embed', 'Concat', 'Slice', 'Split', 'Flatten', 'Reshape', 'Eltwise', 'Tile',
                'Reduction', 'ArgMax', 'Softmax', 'BatchNorm', 'Scale', 'Bias', 'MVN', 'Filter',
                'BatchReindex', 'Silence', 'Parameter']


@pytest.mark.parametrize('case', [c for t in COMMON_TYPES for c in golden_cases(t)])
def test_golden(mode, case):
    check_golden_layer(case, rtol=1e-4)
