"""Loss layers and Accuracy: the specification, as BVLC Caffe 1.0 computes them.

Per layer: forward against NumPy written from the formulas, Caffe's
finite-difference gradient check, the golden cases recorded with the real
Caffe, and the errors on bad parameters and labels.  Every test that computes
runs on the CPU and, where CuPy and a GPU are present, on the GPU (the
``mode`` fixture of conftest.py).
"""
import numpy as np
import pytest

import caffeine
from caffeine.blob import Blob
from caffeine.errors import LayerError
from caffeine.layer import layer_type_list
from caffeine.proto import caffe_pb2
from caffeine.testing import (GradientChecker, backward_layer, blobs_from_arrays, check_golden_layer,
                              forward_layer, golden_cases, load_golden, make_layer)

FLT_MIN = np.finfo(np.float32).tiny


def rng(seed=0):
    return np.random.RandomState(seed)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -- SoftmaxWithLoss --------------------------------------------------------------------
def np_softmax_loss(x, label, axis=1, ignore=None, norm='VALID', weight=1.0):
    p = np_softmax(x.astype(np.float64), axis)
    pm = np.moveaxis(p, axis, -1)                    # outer.. x inner.. x C
    C = pm.shape[-1]
    pm = pm.reshape(-1, C)
    lab = label.reshape(-1).astype(int)
    valid = np.ones_like(lab, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    logp = np.log(np.maximum(pm[np.arange(len(lab)), safe], FLT_MIN))
    loss = -(logp * valid).sum()
    outer = int(np.prod(x.shape[:axis]))
    n = {'FULL': len(lab), 'VALID': valid.sum(), 'BATCH_SIZE': outer, 'NONE': 1}[norm]
    n = max(1.0, float(n))
    g = pm.copy()
    g[np.arange(len(lab)), safe] -= 1
    g *= valid[:, None]
    g = g.reshape(np.moveaxis(p, axis, -1).shape)
    g = np.moveaxis(g, -1, axis) * weight / n
    return loss / n, g


@pytest.mark.parametrize('norm', ['VALID', 'FULL', 'BATCH_SIZE', 'NONE'])
@pytest.mark.parametrize('ignore', [None, 2])
def test_softmax_loss_forward_backward_matches_numpy(mode, norm, ignore):
    r = rng(1)
    x = r.randn(2, 4, 3, 2).astype(np.float32)
    label = r.randint(0, 4, (2, 1, 3, 2)).astype(np.float32)
    text = 'type: "SoftmaxWithLoss" loss_param { normalization: %s %s }' % (
        norm, '' if ignore is None else 'ignore_label: %d' % ignore)
    layer, bottom, top = forward_layer(text, x, label)
    want, g = np_softmax_loss(x, label, 1, ignore, norm)
    assert top[0].shape == ()
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    diffs = backward_layer(layer, bottom, top, propagate_down=[True, False])
    np.testing.assert_allclose(diffs[0], g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('normalize, norm', [(True, 'VALID'), (False, 'BATCH_SIZE')])
def test_softmax_loss_legacy_normalize_flag(mode, normalize, norm):
    r = rng(2)
    x = r.randn(3, 5, 2).astype(np.float32)
    label = r.randint(0, 5, (3, 2)).astype(np.float32)
    label[0, 0] = 4
    text = 'type: "SoftmaxWithLoss" loss_param { normalize: %s ignore_label: 4 }' % ('true' if normalize else 'false')
    layer, bottom, top = forward_layer(text, x, label)
    want, _ = np_softmax_loss(x, label, 1, 4, norm)
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)


def test_softmax_loss_axis_and_probability_top(mode):
    r = rng(3)
    x = r.randn(2, 3, 4).astype(np.float32)
    label = r.randint(0, 4, (2, 3)).astype(np.float32)
    layer, bottom, top = forward_layer('type: "SoftmaxWithLoss" softmax_param { axis: 2 }', x, label, ntop=2)
    want, g = np_softmax_loss(x, label, axis=2)
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    np.testing.assert_allclose(top[1].data, np_softmax(x, 2), rtol=1e-5, atol=1e-7)
    assert layer.loss_weights == [1.0, 0.0]            # the probability top is no loss
    diffs = backward_layer(layer, bottom, top, propagate_down=[True, False])
    np.testing.assert_allclose(diffs[0], g, rtol=1e-5, atol=1e-7)


def test_softmax_loss_clamps_log_at_flt_min(mode):
    x = np.array([[0.0, 200.0]], np.float32)            # p[0] underflows to 0
    label = np.array([0], np.float32)
    _, _, top = forward_layer('type: "SoftmaxWithLoss"', x, label)
    np.testing.assert_allclose(float(top[0].data), -np.log(FLT_MIN), rtol=1e-6)


def test_softmax_loss_uses_loss_weight_from_top_diff(mode):
    r = rng(4)
    x = r.randn(4, 3).astype(np.float32)
    label = r.randint(0, 3, 4).astype(np.float32)
    layer, bottom, top = forward_layer('type: "SoftmaxWithLoss" loss_weight: 2.5', x, label)
    assert float(top[0].diff) == 2.5
    _, g = np_softmax_loss(x, label, weight=2.5)
    np.testing.assert_allclose(backward_layer(layer, bottom, top, propagate_down=[True, False])[0], g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('text', [
    'type: "SoftmaxWithLoss"',
    'type: "SoftmaxWithLoss" loss_param { ignore_label: 0 normalization: FULL }',
    'type: "SoftmaxWithLoss" softmax_param { axis: 2 }',
])
def test_softmax_loss_gradient(mode, text):
    r = rng(5)
    x = r.randn(2, 3, 2).astype(np.float32)
    label = r.randint(0, 2 if 'axis: 2' in text else 3, (2, 1, 2) if 'axis: 2' not in text else (2, 3)).astype(np.float32)
    layer = make_layer(text)
    GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(layer, blobs_from_arrays(x, label), [Blob()], 0)


def test_softmax_loss_label_out_of_range_is_an_error(mode):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(LayerError, match=r"layer 'layer' \(SoftmaxWithLoss\).*label value 3 .*\[0, 3\)"):
        forward_layer('type: "SoftmaxWithLoss"', x, np.array([0, 3], np.float32))
    with pytest.raises(LayerError, match='label value -1'):
        forward_layer('type: "SoftmaxWithLoss"', x, np.array([-1, 0], np.float32))
    # the ignore label may lie outside [0, C)
    _, _, top = forward_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }', x, np.array([255, 1], np.float32))
    np.testing.assert_allclose(float(top[0].data), np.log(3), rtol=1e-6)


def test_softmax_loss_bad_shapes_and_label_backward(mode):
    with pytest.raises(LayerError, match='number of labels must match'):
        forward_layer('type: "SoftmaxWithLoss"', np.zeros((2, 3, 2), np.float32), np.zeros((2, 1), np.float32))
    with pytest.raises(LayerError, match='same first dimension'):
        forward_layer('type: "SoftmaxWithLoss"', np.zeros((2, 3), np.float32), np.zeros((1, 2), np.float32))
    with pytest.raises(LayerError, match='axis 3 out of range'):
        forward_layer('type: "SoftmaxWithLoss" softmax_param { axis: 3 }', np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(LayerError, match='takes exactly 2 bottom'):
        forward_layer('type: "SoftmaxWithLoss"', np.zeros((2, 3), np.float32))
    layer, bottom, top = forward_layer('type: "SoftmaxWithLoss"', np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(LayerError, match='cannot backpropagate to label inputs'):
        layer.Backward(top, [True, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


# -- EuclideanLoss ----------------------------------------------------------------------
def test_euclidean_loss(mode):
    r = rng(6)
    a, b = r.randn(4, 3, 2).astype(np.float32), r.randn(4, 3, 2).astype(np.float32)
    layer, bottom, top = forward_layer('type: "EuclideanLoss" loss_weight: 3', a, b)
    np.testing.assert_allclose(float(top[0].data), ((a - b) ** 2).sum() / 4 / 2, rtol=1e-5)
    da, db = backward_layer(layer, bottom, top, propagate_down=[True, True])
    np.testing.assert_allclose(da, 3 * (a - b) / 4, rtol=1e-5)
    np.testing.assert_allclose(db, -3 * (a - b) / 4, rtol=1e-5)
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)
    GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(make_layer('type: "EuclideanLoss"'),
                                                                blobs_from_arrays(a, b), [Blob()])
    with pytest.raises(LayerError, match='same dimension'):
        forward_layer('type: "EuclideanLoss"', a, np.zeros((4, 5), np.float32))


# -- SigmoidCrossEntropyLoss -------------------------------------------------------------
def np_sigmoid_ce(x, t, ignore=None, norm='BATCH_SIZE'):
    x = x.astype(np.float64)
    valid = np.ones(x.shape, bool) if ignore is None else t.astype(int) != ignore
    term = -(x * (t - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
    n = {'FULL': x.size, 'VALID': valid.sum(), 'BATCH_SIZE': x.shape[0], 'NONE': 1}[norm]
    n = max(1.0, float(n))
    g = (1 / (1 + np.exp(-x)) - t) * valid / n
    return (term * valid).sum() / n, g


@pytest.mark.parametrize('param, ignore, norm', [
    ('', None, 'BATCH_SIZE'),
    ('loss_param { normalization: VALID ignore_label: 1 }', 1, 'VALID'),
    ('loss_param { normalization: FULL }', None, 'FULL'),
    ('loss_param { normalize: true }', None, 'VALID'),
])
def test_sigmoid_cross_entropy_loss(mode, param, ignore, norm):
    r = rng(7)
    x = (r.randn(3, 4) * 3).astype(np.float32)
    x[0, 0], x[0, 1] = 60.0, -60.0                   # large magnitudes stay finite
    t = (r.rand(3, 4) > 0.5).astype(np.float32) if ignore is not None else r.rand(3, 4).astype(np.float32)
    layer, bottom, top = forward_layer('type: "SigmoidCrossEntropyLoss" ' + param, x, t)
    want, g = np_sigmoid_ce(x, t, ignore, norm)
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    np.testing.assert_allclose(backward_layer(layer, bottom, top, propagate_down=[True, False])[0], g, rtol=1e-5, atol=1e-7)


def test_sigmoid_cross_entropy_gradient_and_errors(mode):
    r = rng(8)
    x, t = r.randn(2, 3).astype(np.float32), r.rand(2, 3).astype(np.float32)
    GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(
        make_layer('type: "SigmoidCrossEntropyLoss"'), blobs_from_arrays(x, t), [Blob()], 0)
    with pytest.raises(LayerError, match='same count'):
        forward_layer('type: "SigmoidCrossEntropyLoss"', x, np.zeros((2, 4), np.float32))
    layer, bottom, top = forward_layer('type: "SigmoidCrossEntropyLoss"', x, t)
    with pytest.raises(LayerError, match='cannot backpropagate to label'):
        layer.Backward(top, [False, True], bottom)


# -- HingeLoss ----------------------------------------------------------------------------
@pytest.mark.parametrize('norm', ['L1', 'L2'])
def test_hinge_loss(mode, norm):
    r = rng(9)
    x = r.randn(4, 5).astype(np.float32)
    label = r.randint(0, 5, 4).astype(np.float32)
    layer, bottom, top = forward_layer('type: "HingeLoss" hinge_loss_param { norm: %s }' % norm, x, label)
    t = -np.ones((4, 5))
    t[np.arange(4), label.astype(int)] = 1
    m = np.maximum(0, 1 - t * x)
    want = (m.sum() if norm == 'L1' else (m * m).sum()) / 4
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    g = (-t * (m > 0) if norm == 'L1' else -2 * t * m) / 4
    np.testing.assert_allclose(backward_layer(layer, bottom, top, propagate_down=[True, False])[0], g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('norm', ['L1', 'L2'])
def test_hinge_loss_gradient(mode, norm):
    r = rng(10)
    x = r.randn(3, 4).astype(np.float32)
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.5            # keep away from the hinge's kinks at |x| = 1
    label = r.randint(0, 4, 3).astype(np.float32)
    GradientChecker(1e-3, 2e-3, 1701).check_gradient_exhaustive(
        make_layer('type: "HingeLoss" hinge_loss_param { norm: %s }' % norm), blobs_from_arrays(x, label), [Blob()], 0)


def test_hinge_loss_bad_label(mode):
    with pytest.raises(LayerError, match=r'\(HingeLoss\).*label value 5'):
        forward_layer('type: "HingeLoss"', np.zeros((2, 5), np.float32), np.array([0, 5], np.float32))


# -- MultinomialLogisticLoss ---------------------------------------------------------------
def test_multinomial_logistic_loss(mode):
    r = rng(11)
    p = np_softmax(r.randn(4, 5), 1).astype(np.float32)
    p[0, 2] = 0.0                                      # clamped at 1e-20
    label = np.array([2, 3, 0, 1], np.float32)
    layer, bottom, top = forward_layer('type: "MultinomialLogisticLoss"', p, label)
    pl = np.maximum(p[np.arange(4), label.astype(int)].astype(np.float64), 1e-20)
    np.testing.assert_allclose(float(top[0].data), -np.log(pl).sum() / 4, rtol=1e-5)
    g = np.zeros((4, 5))
    g[np.arange(4), label.astype(int)] = -1 / pl / 4
    np.testing.assert_allclose(backward_layer(layer, bottom, top, propagate_down=[True, False])[0], g, rtol=1e-5)


def test_multinomial_logistic_gradient_and_errors(mode):
    r = rng(12)
    p = (r.rand(3, 4) * 0.8 + 0.2).astype(np.float32)
    label = r.randint(0, 4, 3).astype(np.float32)
    GradientChecker(1e-3, 1e-2, 1701).check_gradient_exhaustive(
        make_layer('type: "MultinomialLogisticLoss"'), blobs_from_arrays(p, label), [Blob()], 0)
    with pytest.raises(LayerError, match='one value per sample'):
        forward_layer('type: "MultinomialLogisticLoss"', p, np.zeros((3, 2), np.float32))
    with pytest.raises(LayerError, match='label value 4'):
        forward_layer('type: "MultinomialLogisticLoss"', p, np.array([0, 4, 1], np.float32))


# -- InfogainLoss -------------------------------------------------------------------------
def np_infogain(x, label, H, ignore=None, norm='VALID'):
    p = np_softmax(x.astype(np.float64), 1).reshape(x.shape[0], x.shape[1], -1)   # N C inner
    lab = label.reshape(x.shape[0], -1).astype(int)
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    Hl = np.transpose(H[safe], (0, 2, 1))                                           # N C inner
    loss = -(Hl * np.log(np.maximum(p, 1e-20)) * valid[:, None]).sum()
    n = {'FULL': lab.size, 'VALID': valid.sum(), 'BATCH_SIZE': x.shape[0], 'NONE': 1}[norm]
    n = max(1.0, float(n))
    g = (p * H.sum(1)[safe][:, None] - Hl) * valid[:, None] / n
    return loss / n, g.reshape(x.shape)


@pytest.mark.parametrize('param, ignore, norm', [
    ('', None, 'VALID'),
    ('loss_param { ignore_label: 1 normalization: BATCH_SIZE }', 1, 'BATCH_SIZE'),
])
def test_infogain_loss_with_H_bottom(mode, param, ignore, norm):
    r = rng(13)
    x = r.randn(3, 4, 2).astype(np.float32)
    label = r.randint(0, 4, (3, 2)).astype(np.float32)
    H = r.rand(4, 4).astype(np.float32)
    layer, bottom, top = forward_layer('type: "InfogainLoss" ' + param, x, label, H, ntop=2)
    want, g = np_infogain(x, label, H, ignore, norm)
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    np.testing.assert_allclose(top[1].data, np_softmax(x, 1), rtol=1e-5)
    np.testing.assert_allclose(backward_layer(layer, bottom, top, propagate_down=[True, False, False])[0], g, rtol=1e-5, atol=1e-7)
    with pytest.raises(LayerError, match='cannot backpropagate to infogain inputs'):
        layer.Backward(top, [True, False, True], bottom)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, False, False]


def test_infogain_loss_matrix_from_binaryproto(mode, tmp_path):
    r = rng(14)
    x = r.randn(4, 3).astype(np.float32)
    label = r.randint(0, 3, 4).astype(np.float32)
    H = r.rand(3, 3).astype(np.float32)
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([1, 1, 3, 3])
    bp.data.extend(H.ravel().tolist())
    path = tmp_path / 'H.binaryproto'
    path.write_bytes(bp.SerializeToString())
    text = 'type: "InfogainLoss" infogain_loss_param { source: "%s" }' % path
    layer, bottom, top = forward_layer(text, x, label)
    want, g = np_infogain(x, label, H)
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    np.testing.assert_allclose(backward_layer(layer, bottom, top, propagate_down=[True, False])[0], g, rtol=1e-5, atol=1e-7)
    GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(make_layer(text), blobs_from_arrays(x, label), [Blob()], 0)


def test_infogain_loss_errors(mode, tmp_path):
    x, label = np.zeros((2, 3), np.float32), np.zeros(2, np.float32)
    with pytest.raises(LayerError, match='source must be specified'):
        forward_layer('type: "InfogainLoss"', x, label)
    with pytest.raises(LayerError, match='cannot read infogain matrix'):
        forward_layer('type: "InfogainLoss" infogain_loss_param { source: "%s" }' % (tmp_path / 'none'), x, label)
    with pytest.raises(LayerError, match='3 x 3 = 9 values'):
        forward_layer('type: "InfogainLoss"', x, label, np.zeros((2, 2), np.float32))
    with pytest.raises(LayerError, match='normalize is deprecated'):
        forward_layer('type: "InfogainLoss" loss_param { normalize: true }', x, label, np.eye(3, dtype=np.float32))


# -- ContrastiveLoss ------------------------------------------------------------------------
@pytest.mark.parametrize('legacy', [False, True])
def test_contrastive_loss(mode, legacy):
    r = rng(15)
    a, b = r.randn(6, 3).astype(np.float32), r.randn(6, 3).astype(np.float32)
    sim = np.array([1, 0, 1, 0, 0, 1], np.float32)
    margin = 2.0
    text = 'type: "ContrastiveLoss" contrastive_loss_param { margin: 2 legacy_version: %s }' % str(legacy).lower()
    layer, bottom, top = forward_layer(text, a, b, sim)
    d = (a - b).astype(np.float64)
    dsq = (d * d).sum(1)
    dist = np.sqrt(dsq)
    dis = np.maximum(margin - dsq, 0) if legacy else np.maximum(margin - dist, 0) ** 2
    want = np.where(sim > 0, dsq, dis).sum() / 6 / 2
    np.testing.assert_allclose(float(top[0].data), want, rtol=1e-5)
    if legacy:
        coef = np.where(margin - dsq > 0, -1.0, 0.0)
    else:
        coef = np.where(margin - dist > 0, -(margin - dist) / (dist + 1e-4), 0.0)
    coef = np.where(sim > 0, 1.0, coef)
    da, db, _ = backward_layer(layer, bottom, top, propagate_down=[True, True, False])
    np.testing.assert_allclose(da, coef[:, None] * d / 6, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, -coef[:, None] * d / 6, rtol=1e-5, atol=1e-7)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


@pytest.mark.parametrize('legacy', ['false', 'true'])
def test_contrastive_loss_gradient(mode, legacy):
    r = rng(16)
    a, b = r.randn(4, 2).astype(np.float32), r.randn(4, 2).astype(np.float32)
    sim = np.array([1, 0, 0, 1], np.float32)
    layer = make_layer('type: "ContrastiveLoss" contrastive_loss_param { margin: 3 legacy_version: %s }' % legacy)
    bottom = blobs_from_arrays(a, b, sim)
    for i in (0, 1):
        GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(layer, bottom, [Blob()], i)


def test_contrastive_loss_shape_errors(mode):
    with pytest.raises(LayerError, match='same shape'):
        forward_layer('type: "ContrastiveLoss"', np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), np.zeros(2, np.float32))
    with pytest.raises(LayerError, match='one similarity value per pair'):
        forward_layer('type: "ContrastiveLoss"', np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), np.zeros((2, 2), np.float32))


# -- Accuracy -----------------------------------------------------------------------------------
def np_accuracy(x, label, top_k=1, ignore=None, axis=1):
    xm = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    lab = label.reshape(-1).astype(int)
    keep = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    C = xm.shape[1]
    ok = np.zeros(lab.shape, bool)
    for n in np.flatnonzero(keep):
        ok[n] = (xm[n] >= xm[n, lab[n]]).sum() - 1 < top_k
    acc = ok[keep].mean() if keep.any() else 0.0
    per = np.array([ok[keep & (lab == c)].mean() if (keep & (lab == c)).any() else 0.0 for c in range(C)])
    return acc, per


@pytest.mark.parametrize('param, top_k, ignore, axis', [
    ('', 1, None, 1),
    ('accuracy_param { top_k: 3 }', 3, None, 1),
    ('accuracy_param { ignore_label: 2 }', 1, 2, 1),
    ('accuracy_param { axis: 2 top_k: 2 }', 2, None, 2),
])
def test_accuracy(mode, param, top_k, ignore, axis):
    r = rng(17)
    x = r.randn(6, 5, 4).astype(np.float32)
    lshape = (6, 4) if axis == 1 else (6, 5)
    C = x.shape[axis]
    label = r.randint(0, C, lshape).astype(np.float32)
    layer, bottom, top = forward_layer('type: "Accuracy" ' + param, x, label, ntop=2, phase=caffeine.TEST)
    acc, per = np_accuracy(x, label, top_k, ignore, axis)
    np.testing.assert_allclose(float(top[0].data), acc, rtol=1e-6)
    assert top[1].shape == (C,)
    np.testing.assert_allclose(top[1].data, per, rtol=1e-6)


def test_accuracy_ties_count_against_the_true_class(mode):
    x = np.array([[1, 1, 0], [0, 2, 1]], np.float32)
    _, _, top = forward_layer('type: "Accuracy"', x, np.array([1, 1], np.float32), phase=caffeine.TEST)
    assert float(top[0].data) == 0.5                 # the tie in row 0 is not a hit


def test_accuracy_errors_and_no_backward(mode):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(LayerError, match='top_k 4 must be less than or equal'):
        forward_layer('type: "Accuracy" accuracy_param { top_k: 4 }', x, np.zeros(2, np.float32))
    with pytest.raises(LayerError, match='number of labels must match'):
        forward_layer('type: "Accuracy"', x, np.zeros(3, np.float32))
    with pytest.raises(LayerError, match=r'\(Accuracy\).*label value 7'):
        forward_layer('type: "Accuracy"', x, np.array([0, 7], np.float32))
    layer, bottom, top = forward_layer('type: "Accuracy"', x, np.zeros(2, np.float32))
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    layer.Backward(top, [False, False], bottom)
    with pytest.raises(LayerError, match='no backward'):
        layer.Backward(top, [True, False], bottom)
    assert layer.default_loss_weight(0) == 0


def test_loss_layers_default_loss_weight():
    for t in ['SoftmaxWithLoss', 'EuclideanLoss', 'SigmoidCrossEntropyLoss', 'HingeLoss', 'InfogainLoss',
              'MultinomialLogisticLoss', 'ContrastiveLoss']:
        layer = make_layer('type: "%s"' % t)
        assert layer.default_loss_weight(0) == 1 and layer.default_loss_weight(1) == 0, t


# -- golden cases (BVLC Caffe 1.0) -------------------------------------------------------
LOSS_TYPES = ['SoftmaxWithLoss', 'EuclideanLoss', 'SigmoidCrossEntropyLoss', 'HingeLoss', 'InfogainLoss',
              'MultinomialLogisticLoss', 'ContrastiveLoss', 'Accuracy']
GOLDEN = [c for t in LOSS_TYPES for c in golden_cases(t)]


@pytest.mark.parametrize('case', GOLDEN or [pytest.param('none', marks=pytest.mark.skip(reason='../shared absent'))])
def test_golden(mode, case):
    if case == 'infogain' and 'Scale' not in layer_type_list():
        pytest.skip('the infogain case feeds p through a Scale layer, not available here '
                    '(see test_golden_infogain_direct)')
    check_golden_layer(case)


def test_golden_infogain_direct(mode):
    """The infogain golden case, run on the layer alone (its net needs a Scale layer)."""
    z = load_golden('infogain')
    layer = make_layer('type: "InfogainLoss"')
    bottom = blobs_from_arrays(z['bottom:p'], z['bottom:label'], z['bottom:H'])
    top = [Blob()]
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(float(top[0].data), float(z['top:loss']), rtol=1e-5)
    top[0].diff[...] = z['top_diff:loss']
    layer.Backward(top, [True, False, False], bottom)
    g = z['bottom_diff:p']
    assert np.abs(bottom[0].diff - g).max() <= 1e-4 * np.abs(g).max()
