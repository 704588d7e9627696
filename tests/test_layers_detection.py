"""SSD's layers (weiliu89/caffe): Permute, Normalize, PriorBox, DetectionOutput;
OpenCV's Pooling ceil_mode; the fork field-number collisions in binary files."""
import math

import numpy as np
import pytest

from caffeine import backend
from caffeine.errors import CaffeineError
from caffeine.proto import caffe_pb2
from caffeine.weights import field_bytes as _field
from caffeine.testing import (GradientChecker, assert_in_place_equals_out_of_place, blobs_from_arrays,
                              forward_layer, make_layer)
from caffeine.blob import Blob


def _run(layer_text, *arrays, phase=caffe_pb2.TEST):
    return forward_layer(layer_text, *arrays, phase=phase)


# -- Permute -------------------------------------------------------------------------
def test_permute_forward_is_a_transpose_and_backward_its_inverse():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    layer, bottom, top = _run('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }', x)
    assert top[0].shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(top[0].data, x.transpose(0, 2, 3, 1))
    dy = np.random.default_rng(1).normal(size=top[0].shape).astype(np.float32)
    top[0].diff[...] = dy
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dy.transpose(0, 3, 1, 2))


def test_permute_unnamed_axes_follow_in_order_and_identity_shares():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    _, _, top = _run('type: "Permute" permute_param { order: 1 }', x)
    np.testing.assert_array_equal(top[0].data, x.transpose(1, 0, 2))
    _, bottom, top = _run('type: "Permute" permute_param { order: 0 order: 1 }', x)
    np.testing.assert_array_equal(top[0].data, x)
    bottom[0].data[0, 0, 0] = 7
    assert top[0].data[0, 0, 0] == 7


def test_permute_gradient():
    x = np.random.default_rng(2).normal(size=(2, 3, 2, 4)).astype(np.float32)
    layer = make_layer('type: "Permute" permute_param { order: 0 order: 3 order: 1 order: 2 }')
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, blobs_from_arrays(x), [Blob()])


@pytest.mark.parametrize('order, msg', [('order: 4', 'order 4 is not an axis'),
                                        ('order: 1 order: 1', 'names an axis twice')])
def test_permute_bad_order(order, msg):
    with pytest.raises(CaffeineError, match=msg):
        _run('type: "Permute" permute_param { %s }' % order, np.zeros((1, 2, 3, 4), np.float32))


# -- Normalize -----------------------------------------------------------------------
def _normalize_ref(x, scale, across_spatial, eps=1e-10):
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1).astype(np.float64)
    axes = (1, 2) if across_spatial else (1,)
    norm = np.sqrt((x3 ** 2).sum(axis=axes, keepdims=True) + eps)
    s = np.asarray(scale, np.float64).reshape(1, -1, 1)
    return (x3 / norm * s).reshape(x.shape)


@pytest.mark.parametrize('across_spatial', [True, False])
@pytest.mark.parametrize('channel_shared', [True, False])
def test_normalize_forward(across_spatial, channel_shared):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    text = ('type: "Normalize" norm_param { across_spatial: %s channel_shared: %s '
            'scale_filler { type: "constant" value: 20 } }'
            % (str(across_spatial).lower(), str(channel_shared).lower()))
    layer, _, top = _run(text, x)
    assert layer.blobs[0].shape == (() if channel_shared else (3,))
    np.testing.assert_allclose(layer.blobs[0].data, 20)
    np.testing.assert_allclose(top[0].data, _normalize_ref(x, [20.0] * (1 if channel_shared else 3),
                                                           across_spatial), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('across_spatial', [True, False])
@pytest.mark.parametrize('channel_shared', [True, False])
def test_normalize_gradient(across_spatial, channel_shared):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 2, 3)).astype(np.float32)
    layer = make_layer('type: "Normalize" norm_param { across_spatial: %s channel_shared: %s }'
                       % (str(across_spatial).lower(), str(channel_shared).lower()))
    bottom, top = blobs_from_arrays(x), [Blob()]
    layer.SetUp(bottom, top)
    # scales that differ per channel, so that the check sees the exact gradient
    layer.blobs[0].data[...] = rng.uniform(0.5, 2.0, layer.blobs[0].shape)
    checker = GradientChecker(1e-3, 2e-3)
    checker.check_gradient_single(layer, bottom, top, -1, -1, -1)


@pytest.mark.parametrize('across_spatial', ['true', 'false'])
def test_normalize_in_place(across_spatial):
    x = np.random.default_rng(8).normal(size=(2, 3, 2, 2)).astype(np.float32)
    dy = np.random.default_rng(9).normal(size=x.shape).astype(np.float32)
    assert_in_place_equals_out_of_place('type: "Normalize" norm_param { across_spatial: %s channel_shared: false '
                                        'scale_filler { type: "constant" value: 3 } }' % across_spatial,
                                        x, dy, rtol=1e-6, atol=1e-6)


def test_normalize_eps_and_zero_input():
    x = np.zeros((1, 2, 1, 1), np.float32)
    _, _, top = _run('type: "Normalize" norm_param { eps: 0.25 across_spatial: false }', x + [[[[1.5]], [[2.0]]]])
    np.testing.assert_allclose(top[0].data.ravel(), np.array([1.5, 2.0]) / math.sqrt(6.25 + 0.25), rtol=1e-6)
    _, _, top = _run('type: "Normalize"', x)
    np.testing.assert_array_equal(top[0].data, 0)


def test_normalize_scale_blob_must_match():
    layer = make_layer('type: "Normalize" norm_param { channel_shared: false }')
    layer.blobs.append(Blob(4))
    with pytest.raises(CaffeineError, match='scale has 4 values'):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 3, 2, 2))), [Blob()])


# -- PriorBox ------------------------------------------------------------------------
def _priorbox(params, fmap=(10, 10), image=(100, 100)):
    f = np.zeros((1, 4) + fmap, np.float32)
    im = np.zeros((1, 3) + image, np.float32)
    return _run('type: "PriorBox" prior_box_param { %s }' % params, f, im)[2][0]


def test_priorbox_shapes_count_the_priors():
    assert _priorbox('min_size: 4 max_size: 9').shape == (1, 2, 100 * 2 * 4)
    assert _priorbox('min_size: 4 min_size: 8 max_size: 9 max_size: 18').shape == (1, 2, 100 * 4 * 4)
    assert _priorbox('min_size: 4').shape == (1, 2, 100 * 1 * 4)
    assert _priorbox('min_size: 4 aspect_ratio: 1').shape == (1, 2, 100 * 1 * 4)
    assert _priorbox('min_size: 4 max_size: 9 aspect_ratio: 2 flip: false').shape == (1, 2, 100 * 3 * 4)
    assert _priorbox('min_size: 4 max_size: 9 aspect_ratio: 2 aspect_ratio: 3').shape == (1, 2, 100 * 6 * 4)
    assert _priorbox('min_size: 4 aspect_ratio: 2 aspect_ratio: 0.5').shape == (1, 2, 100 * 3 * 4)


def test_priorbox_values_several_sizes_aspect_ratio_clip():
    # weiliu89's TestCPUAspectRatioMultiSize: 10x10 map on a 100x100 image
    top = _priorbox('min_size: 4 min_size: 8 max_size: 9 max_size: 18 aspect_ratio: 2 clip: true')
    d = top.data[0, 0]
    r2 = math.sqrt(2.0)
    want = [0.03, 0.03, 0.07, 0.07,  0.02, 0.02, 0.08, 0.08,
            0.05 - 0.02 * r2, 0.05 - 0.01 * r2, 0.05 + 0.02 * r2, 0.05 + 0.01 * r2,
            0.05 - 0.01 * r2, 0.05 - 0.02 * r2, 0.05 + 0.01 * r2, 0.05 + 0.02 * r2,
            0.01, 0.01, 0.09, 0.09,  0.0, 0.0, 0.11, 0.11,
            0.0, 0.05 - 0.04 / r2, 0.05 + 0.04 * r2, 0.05 + 0.04 / r2,
            0.05 - 0.04 / r2, 0.0, 0.05 + 0.04 / r2, 0.05 + 0.04 * r2]
    np.testing.assert_allclose(d[:32], want, atol=1e-6)
    o = 4 * 10 * 8 * 4 + 4 * 8 * 4   # the cell at row 4, column 4 (8 priors a cell)
    np.testing.assert_allclose(d[o:o + 4], [0.43, 0.43, 0.47, 0.47], atol=1e-6)
    np.testing.assert_allclose(d[o + 8:o + 12], [0.45 - 0.02 * r2, 0.45 - 0.01 * r2,
                                                 0.45 + 0.02 * r2, 0.45 + 0.01 * r2], atol=1e-6)
    np.testing.assert_allclose(top.data[0, 1], 0.1, atol=1e-7)


def test_priorbox_fixed_step_and_image_size():
    # weiliu89's TestCPUFixStep: a 20x10 map, img_size 100, step 10 (the image bottom is ignored)
    top = _priorbox('min_size: 4 max_size: 9 aspect_ratio: 2 img_size: 100 step: 10', (20, 10), (200, 100))
    d = top.data[0, 0]
    o = 14 * 10 * 4 * 4 + 4 * 4 * 4   # the cell at row 14, column 4
    np.testing.assert_allclose(d[o:o + 4], [0.43, 1.43, 0.47, 1.47], atol=1e-6)
    r2 = math.sqrt(2.0)
    np.testing.assert_allclose(d[o + 12:o + 16], [0.45 - 0.01 * r2, 1.45 - 0.02 * r2,
                                                  0.45 + 0.01 * r2, 1.45 + 0.02 * r2], atol=1e-6)


def test_priorbox_step_hw_offset_variance4():
    top = _priorbox('min_size: 10 step_h: 20 step_w: 5 offset: 0 '
                    'variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4', (2, 3), (40, 15))
    boxes = top.data[0, 0].reshape(2, 3, 4)
    cx, cy = np.arange(3) * 5.0, np.arange(2) * 20.0
    np.testing.assert_allclose(boxes[..., 0], (cx[None, :] - 5) / 15 + 0 * cy[:, None], atol=1e-6)
    np.testing.assert_allclose(boxes[..., 3], (cy[:, None] + 5) / 40 + 0 * cx[None, :], atol=1e-6)
    np.testing.assert_allclose(top.data[0, 1].reshape(-1, 4), [[0.1, 0.2, 0.3, 0.4]] * 6, rtol=1e-6)


@pytest.mark.parametrize('params, msg', [
    ('max_size: 9', 'needs min_size'),
    ('min_size: 9 max_size: 4', 'max_size 4 must be greater than min_size 9'),
    ('min_size: 4 variance: 0.1 variance: 0.2', 'variance takes 1 or 4 values'),
    ('min_size: 4 step: 8 step_h: 8 step_w: 8', 'step or step_h/step_w, not both'),
])
def test_priorbox_bad_parameters(params, msg):
    with pytest.raises(CaffeineError, match=msg):
        _priorbox(params)


def test_priorbox_gradient_to_its_bottoms_is_zero():
    layer, bottom, top = _run('type: "PriorBox" prior_box_param { min_size: 4 }',
                              np.ones((1, 2, 3, 3)), np.ones((1, 3, 30, 30)))
    bottom[0].diff[...] = 5
    layer.Backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


# -- DetectionOutput: weiliu89's test_detection_output_layer.cpp cases ----------------
def _detection_inputs(share_location):
    """2 images, 4 priors 0.3 x 0.3 on a 2x2 grid (variance 0.1), 2 classes."""
    priors = []
    for h in range(2):
        for w in range(2):
            cx, cy = (w + 0.5) * 0.5, (h + 0.5) * 0.5
            priors += [cx - 0.15, cy - 0.15, cx + 0.15, cy + 0.15]
    prior = np.zeros((2, 2, 16, 1), np.float32)
    prior[0, 0, :, 0] = priors
    prior[0, 1, :, 0] = 0.1
    conf = np.zeros((2, 4, 2), np.float32)
    for i in range(2):
        for j in range(4):
            for c in range(2):
                conf[i, j, c] = j * 0.2 if i % 2 == c % 2 else 1 - j * 0.2
    nloc = 1 if share_location else 2
    loc = np.zeros((2, 2, 2, nloc, 4), np.float32)
    for i in range(2):
        for h in range(2):
            for w in range(2):
                for c in range(nloc):
                    v = i + c / 2.0 + 0.5
                    sx, sy = (-1 if w % 2 else 1) * v, (-1 if h % 2 else 1) * v
                    loc[i, h, w, c] = [sx, sy, sx, sy]
    return loc.reshape(2, -1, 1, 1), conf.reshape(2, -1, 1, 1), prior


_DET_CASES = {
    'share': ('share_location: true background_label_id: 0', True, [
        '0 1 1.0 0.15 0.15 0.45 0.45', '0 1 0.8 0.55 0.15 0.85 0.45', '0 1 0.6 0.15 0.55 0.45 0.85',
        '0 1 0.4 0.55 0.55 0.85 0.85', '1 1 0.6 0.45 0.45 0.75 0.75', '1 1 0.0 0.25 0.25 0.55 0.55']),
    'share_topk': ('share_location: true background_label_id: 0 nms_param { top_k: 2 }', True, [
        '0 1 1.0 0.15 0.15 0.45 0.45', '0 1 0.8 0.55 0.15 0.85 0.45', '1 1 0.6 0.45 0.45 0.75 0.75']),
    'noshare': ('share_location: false background_label_id: -1', False, [
        '0 0 0.6 0.55 0.55 0.85 0.85', '0 0 0.4 0.15 0.55 0.45 0.85', '0 0 0.2 0.55 0.15 0.85 0.45',
        '0 0 0.0 0.15 0.15 0.45 0.45', '0 1 1.0 0.20 0.20 0.50 0.50', '0 1 0.8 0.50 0.20 0.80 0.50',
        '0 1 0.6 0.20 0.50 0.50 0.80', '0 1 0.4 0.50 0.50 0.80 0.80', '1 0 1.0 0.25 0.25 0.55 0.55',
        '1 0 0.4 0.45 0.45 0.75 0.75', '1 1 0.6 0.40 0.40 0.70 0.70']),
    'noshare_topk': ('share_location: false background_label_id: -1 nms_param { top_k: 2 }', False, [
        '0 0 0.6 0.55 0.55 0.85 0.85', '0 0 0.4 0.15 0.55 0.45 0.85', '0 1 1.0 0.20 0.20 0.50 0.50',
        '0 1 0.8 0.50 0.20 0.80 0.50', '1 0 1.0 0.25 0.25 0.55 0.55', '1 1 0.6 0.40 0.40 0.70 0.70']),
    'noshare_bg0': ('share_location: false background_label_id: 0', False, [
        '0 1 1.0 0.20 0.20 0.50 0.50', '0 1 0.8 0.50 0.20 0.80 0.50', '0 1 0.6 0.20 0.50 0.50 0.80',
        '0 1 0.4 0.50 0.50 0.80 0.80', '1 1 0.6 0.40 0.40 0.70 0.70']),
    'noshare_bg0_topk': ('share_location: false background_label_id: 0 nms_param { top_k: 2 }', False, [
        '0 1 1.0 0.20 0.20 0.50 0.50', '0 1 0.8 0.50 0.20 0.80 0.50', '1 1 0.6 0.40 0.40 0.70 0.70']),
}


def _detect(params, share_location, *extra):
    loc, conf, prior = _detection_inputs(share_location)
    text = 'type: "DetectionOutput" detection_output_param { num_classes: 2 %s }' % params
    if 'nms_param' in text:
        text = text.replace('nms_param {', 'nms_param { nms_threshold: 0.1')
    else:
        text = text[:-1] + ' nms_param { nms_threshold: 0.1 } }'
    return _run(text, loc, conf, prior, *extra)


@pytest.mark.parametrize('case', sorted(_DET_CASES))
def test_detection_output_weiliu89_cases(case):
    params, share, rows = _DET_CASES[case]
    _, _, top = _detect(params, share)
    want = np.array([[float(v) for v in r.split()] for r in rows])
    assert top[0].shape == (1, 1, len(rows), 7)
    np.testing.assert_allclose(top[0].data[0, 0], want, atol=1e-6)


def test_detection_output_keep_top_k_confidence_threshold_and_nothing_found():
    _, _, top = _detect('share_location: true keep_top_k: 3', True)   # image 0 has 4, image 1 has 2
    np.testing.assert_allclose(top[0].data[0, 0], [[0, 1, 1.0, 0.15, 0.15, 0.45, 0.45],
                                                   [0, 1, 0.8, 0.55, 0.15, 0.85, 0.45],
                                                   [0, 1, 0.6, 0.15, 0.55, 0.45, 0.85],
                                                   [1, 1, 0.6, 0.45, 0.45, 0.75, 0.75],
                                                   [1, 1, 0.0, 0.25, 0.25, 0.55, 0.55]], atol=1e-6)
    _, _, top = _detect('share_location: true confidence_threshold: 0.5', True)
    np.testing.assert_allclose(top[0].data[0, 0, :, :3], [[0, 1, 1.0], [0, 1, 0.8], [0, 1, 0.6], [1, 1, 0.6]],
                               atol=1e-6)
    _, _, top = _detect('share_location: true confidence_threshold: 1.5', True)
    np.testing.assert_array_equal(top[0].data[0, 0], [[0] + [-1] * 6, [1] + [-1] * 6])


def _one_class_boxes(boxes, scores, params):
    """DetectionOutput on explicit boxes: CORNER code, zero offsets, variance 1, class 1."""
    p = len(boxes)
    prior = np.zeros((1, 2, p * 4), np.float32)
    prior[0, 0] = np.asarray(boxes, np.float32).ravel()
    prior[0, 1] = 1
    conf = np.zeros((1, p, 2), np.float32)
    conf[0, :, 1] = scores
    text = 'type: "DetectionOutput" detection_output_param { num_classes: 2 %s }' % params
    return _run(text, np.zeros((1, p * 4), np.float32), conf.reshape(1, -1), prior)[2][0].data[0, 0]


def test_detection_output_nms_threshold_and_adaptive_eta():
    # IoU(a, b) = 0.6, IoU(c, d) = 0.5, the other pairs 0
    boxes = [[0, 0, 1, 1], [0.25, 0, 1.25, 1], [2, 0, 3, 1], [2 + 1 / 3, 0, 3 + 1 / 3, 1]]
    scores = [0.9, 0.8, 0.7, 0.6]
    rows = _one_class_boxes(boxes, scores, 'nms_param { nms_threshold: 0.7 }')
    np.testing.assert_allclose(rows[:, 2], [0.9, 0.8, 0.7, 0.6])
    rows = _one_class_boxes(boxes, scores, 'nms_param { nms_threshold: 0.58 }')
    np.testing.assert_allclose(rows[:, 2], [0.9, 0.7, 0.6])
    # eta: the threshold 0.7 becomes 0.56 after the first kept box, 0.448 after the second
    rows = _one_class_boxes(boxes, scores, 'nms_param { nms_threshold: 0.7 eta: 0.8 }')
    np.testing.assert_allclose(rows[:, 2], [0.9, 0.7])


def test_detection_output_center_size_and_variance_in_target():
    prior = [[0.2, 0.2, 0.6, 0.4]]                    # centre (0.4, 0.3), size (0.4, 0.2)
    p = np.zeros((1, 2, 4), np.float32)
    p[0, 0] = prior[0]
    p[0, 1] = [0.1, 0.1, 0.2, 0.2]
    loc = np.array([[1.0, -2.0, math.log(2) / 0.2, 0.0]], np.float32)
    conf = np.array([[0.1, 0.9]], np.float32)
    top = _run('type: "DetectionOutput" detection_output_param { num_classes: 2 code_type: CENTER_SIZE }',
               loc, conf, p)[2][0]
    # centre (0.4 + 0.1 * 0.4, 0.3 - 0.2 * 0.2), size (0.8, 0.2)
    np.testing.assert_allclose(top.data[0, 0, 0, 3:], [0.04, 0.16, 0.84, 0.36], atol=1e-6)
    loc2 = np.array([[0.1, -0.2, math.log(2), 0.0]], np.float32)
    top = _run('type: "DetectionOutput" detection_output_param { num_classes: 2 code_type: CENTER_SIZE '
               'variance_encoded_in_target: true }', loc2, conf, p)[2][0]
    np.testing.assert_allclose(top.data[0, 0, 0, 3:], [0.04, 0.16, 0.84, 0.36], atol=1e-6)
    top = _run('type: "DetectionOutput" detection_output_param { num_classes: 2 code_type: CORNER_SIZE }',
               np.array([[1.0, 1.0, -1.0, 0.0]], np.float32), conf, p)[2][0]
    np.testing.assert_allclose(top.data[0, 0, 0, 3:], [0.24, 0.22, 0.52, 0.4], atol=1e-6)


def test_detection_output_opencv_clip_and_pixel_boxes():
    p = np.zeros((1, 2, 4), np.float32)
    p[0, 0] = [0.8, 0.1, 1.2, 0.5]
    p[0, 1] = 1
    conf = np.array([[0.1, 0.9]], np.float32)
    loc = np.zeros((1, 4), np.float32)
    top = _run('type: "DetectionOutput" detection_output_param { num_classes: 2 clip: true }', loc, conf, p)[2][0]
    np.testing.assert_allclose(top.data[0, 0, 0, 3:], [0.8, 0.1, 1.0, 0.5], atol=1e-6)
    # pixel boxes: CENTER_SIZE sizes count the end pixel (w + 1); clip to the image bottom's size - 1
    p[0, 0] = [10, 20, 29, 29]                          # 20 x 10 pixels, centre (20, 25)
    loc = np.array([[0.5, 0, 0, 0]], np.float32)
    top = _run('type: "DetectionOutput" detection_output_param { num_classes: 2 code_type: CENTER_SIZE '
               'normalized_bbox: false clip: true }', loc, conf, p, np.zeros((1, 3, 40, 24), np.float32))[2][0]
    np.testing.assert_allclose(top.data[0, 0, 0, 3:], [20, 20, 23, 30], atol=1e-5)


@pytest.mark.parametrize('params, bottoms, msg', [
    ('share_location: true', 'loc5', 'loc \\[1, 20\\] does not hold 4 priors x 1 location classes x 4'),
    ('visualize: true', '', 'visualize'),
    ('clip: true normalized_bbox: false', '', 'clip with normalized_bbox: false needs the image as bottom\\[3\\]'),
    ('nms_param { eta: 0 }', '', 'eta must be in'),
])
def test_detection_output_bad_input(params, bottoms, msg):
    p = np.zeros((1, 2, 16), np.float32)
    p[0, 0] = np.tile([0, 0, 1, 1], 4)
    loc = np.zeros((1, 20 if bottoms == 'loc5' else 16), np.float32)
    text = 'name: "det" type: "DetectionOutput" detection_output_param { num_classes: 2 %s }' % params
    with pytest.raises(CaffeineError, match="layer 'det' \\(DetectionOutput\\): " + msg):
        _run(text, loc, np.zeros((1, 8), np.float32), p)


def test_detection_output_has_no_backward():
    layer, bottom, top = _detect('share_location: true', True)
    layer.Backward(top, [False, False, False], bottom)
    with pytest.raises(CaffeineError, match='has no backward'):
        layer.Backward(top, [True, False, False], bottom)


# -- OpenCV's Pooling ceil_mode beside BVLC master's round_mode -----------------------
@pytest.mark.parametrize('mode, shape', [('', (3, 3)), ('ceil_mode: true', (3, 3)), ('ceil_mode: false', (2, 2)),
                                         ('round_mode: FLOOR', (2, 2)), ('round_mode: CEIL', (3, 3)),
                                         ('round_mode: FLOOR ceil_mode: false', (2, 2))])
def test_pooling_ceil_mode_and_round_mode(mode, shape):
    x = np.random.default_rng(5).normal(size=(1, 1, 6, 6)).astype(np.float32)
    _, _, top = _run('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 %s }' % mode, x)
    assert top[0].shape[2:] == shape


def test_pooling_contradicting_spellings_are_an_error():
    with pytest.raises(CaffeineError, match='ceil_mode: true contradicts round_mode: FLOOR'):
        _run('type: "Pooling" pooling_param { kernel_size: 2 round_mode: FLOOR ceil_mode: true }',
             np.zeros((1, 1, 4, 4), np.float32))


def test_pooling_field_13_in_binary_files_is_round_mode():
    # tag (13 << 3 | varint) = 0x68; value 1 is BVLC master's FLOOR
    p = caffe_pb2.PoolingParameter.FromString(bytes([0x68, 1]))
    assert p.round_mode == caffe_pb2.PoolingParameter.FLOOR and not p.HasField('ceil_mode')
    # caffeine writes ceil_mode at its own number, never over 13
    data = caffe_pb2.PoolingParameter(ceil_mode=False).SerializeToString()
    assert not caffe_pb2.PoolingParameter.FromString(data).HasField('round_mode')


# -- binary files written with OpenCV's numbers (detection_output 147, permute 148) ---
def test_opencv_numbered_layer_params_in_a_caffemodel_are_not_misread(tmp_path):
    import caffeine as caffe
    det = caffe_pb2.LayerParameter(name='det', type='DetectionOutput')
    perm = caffe_pb2.LayerParameter(name='perm', type='Permute')
    conv = caffe_pb2.LayerParameter(name='conv', type='Convolution')
    w = conv.blobs.add()
    w.shape.dim[:] = [2, 1, 1, 1]
    w.data[:] = [3.0, -4.0]
    # OpenCV's DetectionOutputParameter {num_classes: 21} at 147 and PermuteParameter {order: 0 2 3 1} at 148
    det_bytes = det.SerializeToString() + _field(147, bytes([0x08, 21]))
    perm_bytes = perm.SerializeToString() + _field(148, bytes([0x08, 0, 0x08, 2, 0x08, 3, 0x08, 1]))
    net_bytes = b''.join(_field(100, b) for b in (det_bytes, perm_bytes, conv.SerializeToString()))
    parsed = caffe_pb2.NetParameter.FromString(net_bytes)
    # the wire types differ (varints where BVLC's Swish/Clip have floats): nothing is read as a
    # value, the bytes stay as unknown fields and are written back unchanged
    assert parsed.layer[0].swish_param.ListFields() == [] and parsed.layer[1].clip_param.ListFields() == []
    assert parsed.SerializePartialToString() == net_bytes
    path = tmp_path / 'opencv_numbers.caffemodel'
    path.write_bytes(net_bytes)
    net = caffe.Net(caffe_pb2.NetParameter.FromString(b''.join([
        _field(100, caffe_pb2.LayerParameter(name='in', type='Input', top=['x'], input_param=caffe_pb2.InputParameter(
            shape=[caffe_pb2.BlobShape(dim=[1, 1, 2, 2])])).SerializeToString()),
        _field(100, caffe_pb2.LayerParameter(name='conv', type='Convolution', bottom=['x'], top=['y'],
                                             convolution_param=caffe_pb2.ConvolutionParameter(
                                                 num_output=2, kernel_size=[1], bias_term=False)).SerializeToString()),
    ])), str(path), caffe.TEST)
    np.testing.assert_array_equal(net.params['conv'][0].data.ravel(), [3.0, -4.0])


def test_gpu_matches_cpu_on_detection_layers():
    if not backend.gpu_available():
        pytest.skip('no GPU (CuPy with a CUDA device)')
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    for text in ('type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 }',
                 'type: "Normalize" norm_param { across_spatial: false channel_shared: false }'):
        backend.set_mode_cpu()
        _, _, cpu = _run(text, x)
        backend.set_mode_gpu()
        try:
            _, _, gpu = _run(text, x)
            np.testing.assert_allclose(gpu[0].data, cpu[0].data, rtol=1e-5, atol=1e-6)
        finally:
            backend.set_mode_cpu()
    for case in ('share', 'noshare'):
        params, share, _ = _DET_CASES[case]
        _, _, cpu = _detect(params, share)
        backend.set_mode_gpu()
        try:
            _, _, gpu = _detect(params, share)
            np.testing.assert_allclose(gpu[0].data, cpu[0].data, atol=1e-6)
        finally:
            backend.set_mode_cpu()


# -- MultiBoxLoss ----------------------------------------------------------------------
def _iou(a, b):
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _multibox_reference(loc, conf, priors, var, gt, p):
    """weiliu89's MultiBoxLoss, prior by prior in plain Python: (loss, dloc, dconf)."""
    N, P, C = conf.shape
    boxes = {i: [(int(r[1]), r[3:7]) for r in gt if int(r[0]) == i] for i in range(N)}
    dloc, dconf = np.zeros_like(loc, np.float64), np.zeros_like(conf, np.float64)
    loc_loss = conf_loss = 0.0
    matches = 0
    chosen = []
    for i in range(N):
        g = boxes[i]
        match, best = [-1] * P, [0.0] * P
        ov = {(j, k): _iou(priors[j], b) for j in range(P) for k, (_, b) in enumerate(g)}
        ov = {jk: o for jk, o in ov.items() if o > 1e-6}
        for (j, k), o in ov.items():
            best[j] = max(best[j], o)
        pool = list(range(len(g)))
        while pool:
            cand = [(o, -j, -k) for (j, k), o in ov.items() if match[j] == -1 and k in pool]
            if not cand:
                break
            o, j, k = max(cand)
            match[-j], best[-j] = -k, o
            pool.remove(-k)
        if p['match_type'] == 'PER_PREDICTION':
            for j in range(P):
                if match[j] == -1:
                    cand = [(o, -k) for (jj, k), o in ov.items() if jj == j and o >= 0.5]
                    if cand:
                        o, k = max(cand)
                        match[j], best[j] = -k, o
        labels = [g[m][0] if m > -1 else 0 for m in match]
        ce = []
        for j in range(P):
            x = conf[i, j].astype(np.float64)
            e = np.exp(x - x.max())
            ce.append(-np.log(e[labels[j]] / e.sum()))
        sel = [j for j in range(P) if match[j] > -1]
        if g and p['mining']:
            negs = [j for j in range(P) if match[j] == -1 and best[j] < 0.5]
            negs = sorted(sorted(negs, key=lambda j: -ce[j])[:min(3 * len(sel), len(negs))])
            sel += negs
        elif not p['mining']:
            sel = list(range(P))
        chosen.append(sel)
        for j in range(P):
            if match[j] > -1:
                matches += 1
                pr, b, v = priors[j], g[match[j]][1], var[j]
                pw, ph = pr[2] - pr[0], pr[3] - pr[1]
                enc = [((b[0] + b[2]) - (pr[0] + pr[2])) / 2 / pw / v[0], ((b[1] + b[3]) - (pr[1] + pr[3])) / 2 / ph / v[1],
                       np.log((b[2] - b[0]) / pw) / v[2], np.log((b[3] - b[1]) / ph) / v[3]]
                for c in range(4):
                    d = loc[i, j, c] - enc[c]
                    loc_loss += 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
                    dloc[i, j, c] = d if abs(d) < 1 else np.sign(d)
        for j in sel:
            conf_loss += ce[j]
            x = conf[i, j].astype(np.float64)
            e = np.exp(x - x.max())
            dconf[i, j] = e / e.sum()
            dconf[i, j, labels[j]] -= 1
    norm = max(1, matches)
    return (loc_loss + conf_loss) / norm, dloc / norm, dconf / norm


def _multibox_inputs(seed=0):
    rng = np.random.default_rng(seed)
    # priors of a 3x3 map on a 30x30 image: min 10, max 20, aspect ratio 2 (4 per cell)
    pb = _priorbox('min_size: 10 max_size: 20 aspect_ratio: 2 flip: false variance: 0.1 variance: 0.1 '
                   'variance: 0.2 variance: 0.2', (3, 3), (30, 30)).data[0]
    P = pb.shape[1] // 4
    gt = np.array([[0, 1, 0, 0.1, 0.1, 0.45, 0.4, 0], [0, 2, 1, 0.5, 0.5, 0.9, 0.95, 0],
                   [2, 1, 0, 0.3, 0.2, 0.7, 0.8, 0], [-1, 0, 0, 0, 0, 0, 0, 0]], np.float32)  # image 1: none
    loc = rng.normal(0, 0.5, (3, P, 4)).astype(np.float32)
    conf = rng.normal(0, 1, (3, P, 3)).astype(np.float32)
    return loc, conf, pb, gt


@pytest.mark.parametrize('match_type', ['PER_PREDICTION', 'BIPARTITE'])
@pytest.mark.parametrize('mining', [True, False])
def test_multibox_loss_matches_a_prior_by_prior_reference(match_type, mining):
    loc, conf, pb, gt = _multibox_inputs()
    N, P, C = conf.shape
    text = ('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE '
            'match_type: %s mining_type: %s }' % (match_type, 'MAX_NEGATIVE' if mining else 'NONE'))
    layer, bottom, top = _run(text, loc.reshape(N, -1), conf.reshape(N, -1), pb[None], gt[None, None],
                              phase=caffe_pb2.TRAIN)
    loss, dloc, dconf = _multibox_reference(loc, conf, pb[0].reshape(P, 4), pb[1].reshape(P, 4), gt,
                                            {'match_type': match_type, 'mining': mining})
    np.testing.assert_allclose(float(top[0].data), loss, rtol=1e-5)
    layer.Backward(top, [True, True, False, False], bottom)
    np.testing.assert_allclose(bottom[0].diff.reshape(N, P, 4), dloc, atol=1e-6)
    np.testing.assert_allclose(bottom[1].diff.reshape(N, P, C), dconf, atol=1e-6)
    assert np.count_nonzero(np.abs(dloc).sum(axis=2)) >= 3        # every box matched
    assert not dloc[1].any() and (not mining or not dconf[1].any())   # image 1 has no box


def test_multibox_loss_gradient():
    loc, conf, pb, gt = _multibox_inputs(1)
    N = loc.shape[0]
    for b in (0, 1):
        layer = make_layer('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE '
                           'neg_pos_ratio: 1 }')
        bottom = blobs_from_arrays(loc.reshape(N, -1), conf.reshape(N, -1), pb[None], gt[None, None])
        GradientChecker(1e-3, 1e-2).check_gradient(layer, bottom, [Blob()], check_bottom=b)


def test_multibox_loss_normalization_loc_weight_and_l2():
    loc, conf, pb, gt = _multibox_inputs()
    N = loc.shape[0]
    args = (loc.reshape(N, -1), conf.reshape(N, -1), pb[None], gt[None, None])
    base = 'type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 %s } %s'
    valid = float(_run(base % ('', ''), *args)[2][0].data)
    none = float(_run(base % ('', 'loss_param { normalization: NONE }'), *args)[2][0].data)
    batch = float(_run(base % ('', 'loss_param { normalization: BATCH_SIZE }'), *args)[2][0].data)
    layer = _run(base % ('', ''), *args)[0]
    matches = round(none / valid)
    assert matches >= 3 and np.isclose(batch * N, none, rtol=1e-6)
    conf_only = float(_run(base % ('loc_weight: 0', ''), *args)[2][0].data)
    double = float(_run(base % ('loc_weight: 2', ''), *args)[2][0].data)
    np.testing.assert_allclose(double - valid, valid - conf_only, rtol=1e-5)
    assert layer.smooth_l1 and not _run(base % ('loc_loss_type: L2', ''), *args)[0].smooth_l1
    # propagate_down false for loc leaves the loc term out of the loss, as weiliu89's layer does
    no_loc = _run(base % ('', 'propagate_down: false propagate_down: true propagate_down: false '
                              'propagate_down: false'), *args)[2][0]
    np.testing.assert_allclose(float(no_loc.data), conf_only, rtol=1e-6)


@pytest.mark.parametrize('params, msg', [
    ('share_location: false', 'share_location: false is not supported'),
    ('mining_type: HARD_EXAMPLE', 'HARD_EXAMPLE is not supported'),
    ('conf_loss_type: LOGISTIC', 'LOGISTIC is not supported'),
    ('do_neg_mining: false', 'do_neg_mining: false contradicts mining_type: MAX_NEGATIVE'),
    ('background_label_id: 3', 'background_label_id 3 is not below num_classes 3'),
])
def test_multibox_loss_bad_parameters(params, msg):
    loc, conf, pb, gt = _multibox_inputs()
    with pytest.raises(CaffeineError, match=msg):
        _run('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 %s }' % params,
             loc.reshape(3, -1), conf.reshape(3, -1), pb[None], gt[None, None])


def test_multibox_loss_bad_ground_truth():
    loc, conf, pb, gt = _multibox_inputs()
    gt[0, 1] = 0
    with pytest.raises(CaffeineError, match='ground truth has the background label 0'):
        _run('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 }',
             loc.reshape(3, -1), conf.reshape(3, -1), pb[None], gt[None, None])
    gt[0, 1], gt[0, 0] = 1, 5
    with pytest.raises(CaffeineError, match='ground truth names image 5 of a batch of 3'):
        _run('type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 }',
             loc.reshape(3, -1), conf.reshape(3, -1), pb[None], gt[None, None])


def test_gpu_matches_cpu_on_multibox_loss():
    if not backend.gpu_available():
        pytest.skip('no GPU (CuPy with a CUDA device)')
    loc, conf, pb, gt = _multibox_inputs()
    N = loc.shape[0]
    args = (loc.reshape(N, -1), conf.reshape(N, -1), pb[None], gt[None, None])
    text = 'type: "MultiBoxLoss" multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE }'
    runs = []
    for gpu in (False, True):
        (backend.set_mode_gpu if gpu else backend.set_mode_cpu)()
        try:
            layer, bottom, top = _run(text, *args, phase=caffe_pb2.TRAIN)
            layer.Backward(top, [True, True, False, False], bottom)
            runs.append((float(top[0].data), bottom[0].diff.copy(), bottom[1].diff.copy()))
        finally:
            backend.set_mode_cpu()
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-5)
    np.testing.assert_allclose(runs[1][1], runs[0][1], atol=1e-6)
    np.testing.assert_allclose(runs[1][2], runs[0][2], atol=1e-6)
