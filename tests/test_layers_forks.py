"""Layers of Caffe's forks: ROIPooling, PSROIPooling, Proposal, Interp, BN,
ShuffleChannel, ConvolutionDepthwise, Axpy, Upsample, ReLU6, Dropout's scale_train,
and the built-in stand-in for py-faster-rcnn's Python proposal layer.

Each is specified by a direct reference written from the fork's source (loops on
small shapes), Caffe's gradient checker where the fork has a backward, and its
errors.  The comparison of whole corpus nets with OpenCV dnn is in
tests/test_fork_nets_opencv.py.
"""
import math

import numpy as np
import pytest

import caffeine
from caffeine.blob import Blob
from caffeine.errors import LayerError
from caffeine.proto import caffe_pb2
from caffeine.testing import GradientChecker, blobs_from_arrays, make_layer

TRAIN, TEST = caffeine.TRAIN, caffeine.TEST


def gauss(shape, seed=0, scale=1.0):
    return (np.random.RandomState(seed).randn(*shape) * scale).astype(np.float32)


def run(text, bottoms, phase=TRAIN, ntop=1, params=None):
    layer = make_layer(text, phase)
    bottom = blobs_from_arrays(*bottoms)
    top = [Blob() for _ in range(ntop)]
    layer.SetUp(bottom, top)
    if params is not None:
        for b, p in zip(layer.blobs, params):
            b.data[...] = p
    layer.Forward(bottom, top)
    return layer, bottom, top


def c_round(v):
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


ROIS = np.array([[0, 0, 0, 40, 40], [1, 10, 5, 100, 120], [0, -20, 3, 7, 8],
                 [1, 150, 150, 160, 170], [0, 33, 17, 35, 18], [1, 4, 4, 4, 4]], np.float32)


# -- ROIPooling ---------------------------------------------------------------------
def roi_pool_ref(x, rois, ph, pw, s):
    """rbgirshick/caffe-fast-rcnn's ROIPoolingLayer::Forward_cpu, loop by loop."""
    N, C, H, W = x.shape
    y = np.zeros((len(rois), C, ph, pw), np.float32)
    arg = -np.ones((len(rois), C, ph, pw), np.int64)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        xs, ys, xe, ye = (c_round(float(v) * s) for v in roi[1:])
        bh = np.float32(max(ye - ys + 1, 1)) / np.float32(ph)
        bw = np.float32(max(xe - xs + 1, 1)) / np.float32(pw)
        for i in range(ph):
            for j in range(pw):
                hs = min(max(int(math.floor(i * bh)) + ys, 0), H)
                he = min(max(int(math.ceil((i + 1) * bh)) + ys, 0), H)
                ws = min(max(int(math.floor(j * bw)) + xs, 0), W)
                we = min(max(int(math.ceil((j + 1) * bw)) + xs, 0), W)
                if he <= hs or we <= ws:
                    continue
                for c in range(C):
                    best = -np.inf
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, c, h, w] > best:
                                best = x[b, c, h, w]
                                arg[r, c, i, j] = ((b * C + c) * H + h) * W + w
                    y[r, c, i, j] = best
    return y, arg


def test_roi_pooling_forward_matches_the_fork(mode):
    x = gauss((2, 3, 12, 10))
    layer, _, top = run('type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.125 }',
                        [x, ROIS])
    want, _ = roi_pool_ref(x, ROIS, 3, 2, 0.125)
    assert top[0].shape == (6, 3, 3, 2)
    np.testing.assert_array_equal(top[0].data, want)
    # the 5th region is empty after clipping: zeros, as the fork
    assert (top[0].data[3] == 0).all()


def test_roi_pooling_backward_goes_to_the_first_maximum(mode):
    # ties: a constant image; the fork's strict '>' keeps the first (row-major) maximum
    x = np.zeros((1, 2, 6, 6), np.float32)
    x[0, 1, 4, 5] = 3
    rois = np.array([[0, 0, 0, 5, 5]], np.float32)
    layer, bottom, top = run('type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 2 }', [x, rois])
    dy = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2) + 1
    top[0].diff[...] = dy
    layer.Backward(top, [True, False], bottom)
    want = np.zeros_like(x)
    _, arg = roi_pool_ref(x, rois, 2, 2, 1.0)
    np.add.at(want.reshape(-1), arg.reshape(-1), dy.reshape(-1))
    np.testing.assert_array_equal(bottom[0].diff, want)
    assert bottom[0].diff[0, 0, 0, 0] == 1 and bottom[0].diff[0, 1, 4, 5] == 8


def test_roi_pooling_ties_go_to_the_first_maximum_everywhere(mode):
    # values in {0, 1, 2}: most bins hold several maxima
    x = np.random.RandomState(3).randint(0, 3, (2, 3, 12, 10)).astype(np.float32)
    layer, bottom, top = run('type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.125 }',
                             [x, ROIS])
    want, arg = roi_pool_ref(x, ROIS, 3, 2, 0.125)
    np.testing.assert_array_equal(top[0].data, want)
    dy = gauss(want.shape, seed=4)
    top[0].diff[...] = dy
    layer.Backward(top, [True, False], bottom)
    ref = np.zeros(x.size)
    ok = arg.reshape(-1) >= 0
    np.add.at(ref, arg.reshape(-1)[ok], dy.reshape(-1)[ok])
    np.testing.assert_allclose(bottom[0].diff.reshape(-1), ref, rtol=1e-6, atol=1e-6)


def test_roi_pooling_gradient(mode):
    layer = make_layer('type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.0625 }')
    bottom = blobs_from_arrays(gauss((2, 2, 8, 7)), ROIS)
    GradientChecker(1e-4, 1e-2).check_gradient(layer, bottom, [Blob()], check_bottom=0)


def test_roi_pooling_errors():
    with pytest.raises(LayerError, match='pooled_h > 0'):
        run('name: "r" type: "ROIPooling"', [gauss((1, 1, 4, 4)), ROIS])
    with pytest.raises(LayerError, match='batch index 1 outside'):
        run('type: "ROIPooling" roi_pooling_param { pooled_h: 1 pooled_w: 1 }', [gauss((1, 1, 4, 4)), ROIS])
    with pytest.raises(LayerError, match=r'rois must be R x 5 .*got \(6, 4\)'):
        run('type: "ROIPooling" roi_pooling_param { pooled_h: 1 pooled_w: 1 }', [gauss((1, 1, 4, 4)), ROIS[:, :4]])


# -- PSROIPooling -------------------------------------------------------------------
def psroi_ref(x, rois, dim, g, s):
    """daijifeng001/caffe-rfcn's PSROIPoolingForward, loop by loop."""
    N, C, H, W = x.shape
    f = np.float32
    y = np.zeros((len(rois), dim, g, g), np.float32)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        xs, ys = f(c_round(roi[1])) * f(s), f(c_round(roi[2])) * f(s)
        xe, ye = f(c_round(roi[3]) + 1) * f(s), f(c_round(roi[4]) + 1) * f(s)
        bh, bw = max(ye - ys, f(0.1)) / f(g), max(xe - xs, f(0.1)) / f(g)
        for d in range(dim):
            for i in range(g):
                for j in range(g):
                    hs = min(max(int(math.floor(i * bh + ys)), 0), H)
                    he = min(max(int(math.ceil((i + 1) * bh + ys)), 0), H)
                    ws = min(max(int(math.floor(j * bw + xs)), 0), W)
                    we = min(max(int(math.ceil((j + 1) * bw + xs)), 0), W)
                    if he > hs and we > ws:
                        y[r, d, i, j] = x[b, (d * g + i) * g + j, hs:he, ws:we].astype(np.float64).mean()
    return y


PSROI = 'type: "PSROIPooling" psroi_pooling_param { output_dim: 2 group_size: 3 spatial_scale: 0.125 }'


def test_psroi_pooling_forward_matches_the_fork(mode):
    x = gauss((2, 18, 12, 10))
    _, _, top = run(PSROI, [x, ROIS])
    assert top[0].shape == (6, 2, 3, 3)
    np.testing.assert_allclose(top[0].data, psroi_ref(x, ROIS, 2, 3, 0.125), rtol=0, atol=2e-6)


def test_psroi_pooling_gradient(mode):
    layer = make_layer('type: "PSROIPooling" psroi_pooling_param { output_dim: 2 group_size: 2 spatial_scale: 0.0625 }')
    bottom = blobs_from_arrays(gauss((2, 8, 6, 5)), ROIS)
    GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, [Blob()], check_bottom=0)


def test_psroi_pooling_errors():
    with pytest.raises(LayerError, match='needs output_dim, group_size'):
        run('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 1 }', [gauss((1, 4, 4, 4)), ROIS[:1]])
    with pytest.raises(LayerError, match='18 channels; output_dim 3 x group_size 3\\^2 needs 27'):
        run('type: "PSROIPooling" psroi_pooling_param { output_dim: 3 group_size: 3 spatial_scale: 1 }',
            [gauss((1, 18, 4, 4)), ROIS[:1]])


# -- Proposal -----------------------------------------------------------------------
def anchors_ref(base=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """py-faster-rcnn's generate_anchors, step by step."""
    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, cx, cy):
        return [[cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)]
                for w, h in zip(ws, hs)]
    w, h, cx, cy = whctrs(np.array([0, 0, base - 1, base - 1], float))
    ws = np.round(np.sqrt(w * h / np.array(ratios)))
    hs = np.round(ws * np.array(ratios))
    out = []
    for a in mk(ws, hs, cx, cy):
        w, h, cx, cy = whctrs(np.array(a))
        out += mk(w * np.array(scales, float), h * np.array(scales, float), cx, cy)
    return np.array(out)


def test_generate_anchors_are_py_faster_rcnns():
    from caffeine.layers.roi import generate_anchors
    a = generate_anchors()
    np.testing.assert_array_equal(a, anchors_ref())
    # the well-known first anchor of py-faster-rcnn (ratio 0.5, scale 8)
    np.testing.assert_array_equal(a[0], [-84, -40, 99, 55])
    np.testing.assert_array_equal(generate_anchors(16, (1,), (2,)), [[-8, -8, 23, 23]])


def proposal_ref(scores, deltas, im_info, stride, pre, post, thresh, min_size):
    """rpn.proposal_layer.ProposalLayer.forward with bbox_transform_inv, clip_boxes,
    _filter_boxes and py_cpu_nms, as in py-faster-rcnn."""
    anchors = anchors_ref()
    A = len(anchors)
    sc = scores[:, A:]
    H, W = sc.shape[-2:]
    sx, sy = np.meshgrid(np.arange(W) * stride, np.arange(H) * stride)
    shifts = np.vstack((sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel())).T
    anc = (anchors.reshape(1, A, 4) + shifts.reshape(-1, 1, 4)).reshape(-1, 4).astype(np.float32)
    d = deltas.transpose(0, 2, 3, 1).reshape(-1, 4)
    sc = sc.transpose(0, 2, 3, 1).reshape(-1, 1)
    w = anc[:, 2] - anc[:, 0] + 1.0
    h = anc[:, 3] - anc[:, 1] + 1.0
    cx, cy = anc[:, 0] + 0.5 * w, anc[:, 1] + 0.5 * h
    pcx, pcy = d[:, 0] * w + cx, d[:, 1] * h + cy
    pw, ph = np.exp(d[:, 2]) * w, np.exp(d[:, 3]) * h
    p = np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], 1).astype(np.float32)
    p[:, 0::2] = np.maximum(np.minimum(p[:, 0::2], im_info[1] - 1), 0)
    p[:, 1::2] = np.maximum(np.minimum(p[:, 1::2], im_info[0] - 1), 0)
    ws, hs = p[:, 2] - p[:, 0] + 1, p[:, 3] - p[:, 1] + 1
    keep = np.where((ws >= min_size * im_info[2]) & (hs >= min_size * im_info[2]))[0]
    p, sc = p[keep], sc[keep]
    order = sc.ravel().argsort()[::-1][:pre]
    p, sc = p[order], sc[order]
    x1, y1, x2, y2 = p.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.arange(len(p))
    kept = []
    while order.size > 0:
        i = order[0]
        kept.append(i)
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    kept = kept[:post]
    return np.hstack([np.zeros((len(kept), 1), np.float32), p[kept]]), sc[kept]


def rpn_inputs(h=7, w=9, seed=3):
    rng = np.random.RandomState(seed)
    scores = rng.rand(1, 18, h, w).astype(np.float32)
    deltas = (rng.randn(1, 36, h, w) * 0.3).astype(np.float32)
    im_info = np.array([[h * 16 - 5, w * 16 + 3, 1.2]], np.float32)
    return scores, deltas, im_info


@pytest.mark.parametrize('text', [
    'type: "Proposal" proposal_param { feat_stride: 16 pre_nms_topn: 100 post_nms_topn: 20 nms_thresh: 0.6 }',
    # py-faster-rcnn's own prototxt: the Python layer, its module absent
    'type: "Python" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
    'param_str: "\'feat_stride\': 16" }',
])
def test_proposal_matches_py_faster_rcnn(mode, text):
    scores, deltas, im_info = rpn_inputs()
    layer, _, top = run(text, [scores, deltas, im_info], phase=TEST, ntop=2)
    if 'Python' in text:
        assert layer.type == 'Proposal'
        want, wscores = proposal_ref(scores, deltas, im_info[0], 16, 6000, 300, 0.7, 16)
    else:
        want, wscores = proposal_ref(scores, deltas, im_info[0], 16, 100, 20, 0.6, 16)
    assert 5 < len(want) == top[0].shape[0]
    np.testing.assert_allclose(top[0].data, want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(top[1].data, wscores)


def test_proposal_python_stand_in_runs_with_python_layers_disabled(monkeypatch):
    monkeypatch.setenv('CAFFEINE_NO_PYTHON_LAYERS', '1')
    layer = make_layer('type: "Python" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
                       'param_str: "{\'feat_stride\': 16, \'scales\': [4, 8]}" }', TEST)
    scores, deltas, im_info = rpn_inputs()
    layer.SetUp(blobs_from_arrays(scores[:, :12], deltas[:, :24], im_info), [Blob()])
    assert layer.type == 'Proposal' and layer.anchors.shape == (6, 4)
    # any other Python layer is still refused
    with pytest.raises(LayerError, match='Python layers are disabled'):
        make_layer('type: "Python" python_param { module: "rpn.other" layer: "X" }')


def test_proposal_errors():
    scores, deltas, im_info = rpn_inputs()
    with pytest.raises(LayerError, match=r'scores \(1, 8, 7, 9\) must be \(1, 18, H, W\)'):
        run('type: "Proposal"', [scores[:, :8], deltas, im_info], ntop=1)
    with pytest.raises(LayerError, match="param_str needs 'feat_stride'"):
        make_layer('type: "Python" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
                   'param_str: "\'scales\': [8]" }').SetUp(blobs_from_arrays(scores, deltas, im_info), [Blob()])


# -- Dropout scale_train ------------------------------------------------------------
def test_dropout_scale_train_false(mode):
    x = gauss((4, 50))
    text = 'type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }'
    _, _, top = run(text, [x], phase=TEST)
    np.testing.assert_array_equal(top[0].data, x * np.float32(0.7))
    layer, bottom, top = run(text, [x], phase=TRAIN)
    y = top[0].data
    kept = y != 0
    np.testing.assert_array_equal(y[kept], x[kept])      # unscaled
    assert 0.55 < kept.mean() < 0.85
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, kept.astype(np.float32))
    # the default keeps Caffe's scaling
    _, _, top = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [x], phase=TEST)
    np.testing.assert_array_equal(top[0].data, x)


# -- Interp -------------------------------------------------------------------------
def interp_ref(x, ho, wo, pad_beg=0, pad_end=0):
    """PSPNet's caffe_cpu_interp2 (aligned corners), loop by loop."""
    N, C, H, W = x.shape
    he, we = H + pad_beg + pad_end, W + pad_beg + pad_end
    off = -pad_beg
    f = np.float32
    rh = f(he - 1) / f(ho - 1) if ho > 1 else f(0)
    rw = f(we - 1) / f(wo - 1) if wo > 1 else f(0)
    y = np.zeros((N, C, ho, wo), np.float32)
    for i in range(ho):
        hr = rh * f(i)
        h1 = int(hr)
        hp = 1 if h1 < he - 1 else 0
        l1 = hr - f(h1)
        for j in range(wo):
            wr = rw * f(j)
            w1 = int(wr)
            wp = 1 if w1 < we - 1 else 0
            m1 = wr - f(w1)
            a = x[:, :, off + h1, off + w1]
            b = x[:, :, off + h1, off + w1 + wp]
            c = x[:, :, off + h1 + hp, off + w1]
            d = x[:, :, off + h1 + hp, off + w1 + wp]
            y[:, :, i, j] = (1 - l1) * ((1 - m1) * a + m1 * b) + l1 * ((1 - m1) * c + m1 * d)
    return y


@pytest.mark.parametrize('param, shape', [
    ('zoom_factor: 3', (2, 3, 13, 16)),
    ('shrink_factor: 2', (2, 3, 3, 3)),
    ('height: 7 width: 4', (2, 3, 7, 4)),
    ('zoom_factor: 2 pad_beg: -1 pad_end: -1', (2, 3, 5, 7)),
])
def test_interp_matches_the_fork(mode, param, shape):
    x = gauss((2, 3, 5, 6))
    _, _, top = run('type: "Interp" interp_param { %s }' % param, [x])
    assert top[0].shape == shape
    pb = -1 if 'pad_beg' in param else 0
    np.testing.assert_allclose(top[0].data, interp_ref(x, shape[2], shape[3], pb, pb), rtol=0, atol=1e-5)


def test_interp_size_of_second_bottom_and_gradient(mode):
    x = gauss((1, 2, 4, 5))
    _, _, top = run('type: "Interp"', [x, np.zeros((1, 1, 6, 3), np.float32)])
    np.testing.assert_allclose(top[0].data, interp_ref(x, 6, 3), atol=1e-5)
    layer = make_layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 }')
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(x), [Blob()])


def test_interp_reads_pspnet_binary_field_143():
    # a PSPNet caffemodel stores interp_param at 143, BVLC's input_param
    lp = caffe_pb2.LayerParameter(name='i', type='Interp')
    raw = lp.SerializeToString() + b'\xfa\x08\x04\x08\x07\x10\x04'   # field 143 { height: 7 width: 4 }
    lp2 = caffe_pb2.LayerParameter.FromString(raw)
    assert not lp2.HasField('interp_param')
    _, _, top = run(lp2, [gauss((1, 2, 3, 3))])
    assert top[0].shape == (1, 2, 7, 4)


def test_interp_errors():
    with pytest.raises(LayerError, match='one way'):
        run('type: "Interp" interp_param { zoom_factor: 2 height: 3 width: 3 }', [gauss((1, 1, 3, 3))])
    with pytest.raises(LayerError, match='must be <= 0'):
        run('type: "Interp" interp_param { zoom_factor: 2 pad_beg: 1 }', [gauss((1, 1, 3, 3))])


# -- BN -----------------------------------------------------------------------------
def bn_params(c, seed=4):
    rng = np.random.RandomState(seed)
    s = (1, c, 1, 1)
    return [rng.randn(*s).astype(np.float32), rng.randn(*s).astype(np.float32),
            rng.randn(*s).astype(np.float32), (rng.rand(*s) + 0.5).astype(np.float32)]


def test_bn_frozen_and_test_use_the_stored_statistics(mode):
    x = gauss((2, 3, 4, 5))
    p = bn_params(3)
    want = p[0] * (x - p[2]) / np.sqrt(p[3] + np.float32(1e-5)) + p[1]
    for phase, frozen in ((TEST, 'false'), (TRAIN, 'true'), (TEST, 'true')):
        layer, _, top = run('type: "BN" bn_param { frozen: %s }' % frozen, [x], phase=phase, params=p)
        np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(layer.blobs[2].data, p[2])      # not updated


def test_bn_train_uses_batch_statistics_and_moves_the_stored_ones(mode):
    x = gauss((2, 3, 4, 5), scale=2) + 1
    p = bn_params(3)
    layer, _, top = run('type: "BN" bn_param { momentum: 0.8 eps: 1e-4 }', [x], phase=TRAIN, params=p)
    m = x.mean(axis=(0, 2, 3), keepdims=True)
    v = x.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(top[0].data, p[0] * (x - m) / np.sqrt(v + 1e-4) + p[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[2].data, 0.2 * m + 0.8 * p[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.blobs[3].data, 0.2 * v + 0.8 * p[3], rtol=1e-5, atol=1e-6)
    # the running statistics are never learned
    assert [s.lr_mult for s in layer.layer_param.param][2:] == [0, 0]


def test_bn_gradients(mode):
    x = gauss((2, 3, 3, 4))
    layer = make_layer('type: "BN" bn_param { slope_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                       TRAIN)
    GradientChecker(1e-2, 1e-2).check_gradient(layer, blobs_from_arrays(x), [Blob()])
    frozen, bottom, top = run('type: "BN" bn_param { frozen: true slope_filler { type: "gaussian" } }', [x])
    assert [s.lr_mult for s in frozen.layer_param.param] == [0, 0, 0, 0]
    np.testing.assert_array_equal(frozen.blobs[3].data, 1)     # frozen starts with var 1
    dy = gauss(x.shape, seed=9)
    top[0].diff[...] = dy
    frozen.Backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy * frozen.blobs[0].data / np.sqrt(np.float32(1 + 1e-5)), rtol=1e-6)


# -- ShuffleChannel, ConvolutionDepthwise, Axpy, Upsample, ReLU6 --------------------------
def test_shuffle_channel(mode):
    x = gauss((2, 6, 2, 3))
    layer, bottom, top = run('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', [x])
    order = [0, 2, 4, 1, 3, 5]      # (group 3, 2 each) -> (2, 3)
    np.testing.assert_array_equal(top[0].data, x[:, order])
    GradientChecker(1e-2, 1e-3).check_gradient(make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 2 }'),
                                               blobs_from_arrays(x), [Blob()])
    # in place
    b = blobs_from_arrays(x)
    inplace = make_layer('type: "ShuffleChannel" shuffle_channel_param { group: 3 }')
    inplace.SetUp(b, b)
    inplace.Forward(b, b)
    np.testing.assert_array_equal(b[0].data, x[:, order])
    with pytest.raises(LayerError, match='multiple of group 4'):
        run('type: "ShuffleChannel" shuffle_channel_param { group: 4 }', [x])


def test_convolution_depthwise_is_grouped_convolution(mode):
    x = gauss((2, 4, 6, 6))
    w = gauss((4, 1, 3, 3), seed=1)
    b = gauss((4,), seed=2)
    text = 'convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 }'
    _, _, dw = run('type: "ConvolutionDepthwise" ' + text, [x], params=[w, b])
    _, _, ref = run('type: "Convolution" ' + text.replace('pad: 1', 'pad: 1 group: 4'), [x], params=[w, b])
    np.testing.assert_array_equal(dw[0].data, ref[0].data)
    with pytest.raises(LayerError, match='num_output 8 must equal the 4 input channels'):
        run('type: "ConvolutionDepthwise" convolution_param { num_output: 8 kernel_size: 3 }', [x])


def test_axpy(mode):
    a, x, y = gauss((2, 3, 1, 1)), gauss((2, 3, 4, 5), 1), gauss((2, 3, 4, 5), 2)
    _, _, top = run('type: "Axpy"', [a, x, y])
    np.testing.assert_allclose(top[0].data, a * x + y, rtol=1e-6)
    GradientChecker(1e-2, 1e-3).check_gradient(make_layer('type: "Axpy"'), blobs_from_arrays(a, x, y), [Blob()])
    with pytest.raises(LayerError, match='a \\(2, 2, 1, 1\\) must be'):
        run('type: "Axpy"', [a[:, :2], x, y])


def test_upsample_unpools_with_the_mask(mode):
    # a 2x2 max pooling's values and argmax mask, put back
    x = gauss((1, 2, 4, 6))
    pooled = x.reshape(1, 2, 2, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(1, 2, 2, 3, 4)
    k = pooled.argmax(-1)
    vals = pooled.max(-1)
    hh = np.arange(2)[:, None] * 2 + k // 2
    ww = np.arange(3)[None, :] * 2 + k % 2
    mask = (hh * 6 + ww).astype(np.float32)
    layer, bottom, top = run('type: "Upsample" upsample_param { scale: 2 }', [vals, mask])
    want = np.where(x == np.repeat(np.repeat(vals, 2, 2), 2, 3), x, 0)
    np.testing.assert_array_equal(top[0].data, want)
    _, _, top2 = run('type: "Upsample" upsample_param { upsample_h: 5 upsample_w: 6 }', [vals, mask])
    assert top2[0].shape == (1, 2, 5, 6)
    GradientChecker(1e-2, 1e-3).check_gradient(make_layer('type: "Upsample"'), blobs_from_arrays(vals, mask),
                                               [Blob()], check_bottom=0)
    with pytest.raises(LayerError, match='outside the 4x6 output plane'):
        run('type: "Upsample" upsample_param { scale: 2 }', [vals, mask + 1000])


def test_relu6(mode):
    x = gauss((3, 40), scale=5)
    layer, bottom, top = run('type: "ReLU6"', [x])
    np.testing.assert_array_equal(top[0].data, np.clip(x, 0, 6))
    top[0].diff[...] = 1
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, ((x > 0) & (x < 6)).astype(np.float32))


@pytest.mark.parametrize('text, phase', [
    ('type: "BN" bn_param { slope_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', TRAIN),
    ('type: "BN" bn_param { frozen: true slope_filler { type: "gaussian" } }', TRAIN),
    ('type: "BN" bn_param { slope_filler { type: "gaussian" } }', TEST),
    ('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', TRAIN),
    ('type: "ReLU6"', TRAIN),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 scale_train: false }', TRAIN),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.4 scale_train: false }', TEST),
])
def test_in_place_equals_out_of_place(mode, text, phase):
    from caffeine.testing import assert_in_place_equals_out_of_place
    x = gauss((2, 4, 3, 5), scale=4)
    assert_in_place_equals_out_of_place(text, x, gauss(x.shape, seed=7), phase=phase, seed=5, rtol=1e-6, atol=1e-6)
