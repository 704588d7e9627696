"""OpenCV dnn 4.x as a reference for Caffe nets (test-only, as torch is for the benchmarks).

OpenCV 4.x reads Caffe prototxts and caffemodels, forks' layers included
(``cv2.dnn.readNetFromCaffe``; OpenCV 5 dropped it).  The helpers here run one
net in both and compare every layer's first top:

    cv2 = require_opencv()                 # skips the test when OpenCV 4.x is absent
    net = caffeine_net(prototxt)           # caffeine's net, BatchNorm+Scale folding off
    fill_random_weights(net, {'data': x})  # seeded weights, activations O(1) on x
    net.save(caffemodel)
    ours = caffeine_layer_outputs(net, {'data': x})
    theirs = opencv_layer_outputs(prototxt, caffemodel, {'data': x}, list(ours))
    compare_layer_outputs(ours, theirs)    # each within 1e-4 of its largest magnitude

OpenCV runs on its own CPU backend with layer fusion off (per-layer outputs
exist) and Winograd convolutions off (they add error on 3x3 kernels).
DetectionOutput rows are compared with ``compare_detections``: OpenCV orders
them by score and pads with zero rows; Caffe groups them by label.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

import caffeine as caffe


def require_opencv():
    """cv2 with ``dnn.readNetFromCaffe``; skips the calling test otherwise."""
    cv2 = pytest.importorskip('cv2', reason='OpenCV (opencv-python-headless<5) is not installed')
    if not hasattr(cv2, 'dnn') or not hasattr(cv2.dnn, 'readNetFromCaffe'):
        pytest.skip('this OpenCV (%s) has no dnn.readNetFromCaffe (OpenCV 5 dropped it)' % cv2.__version__)
    return cv2


@contextlib.contextmanager
def _no_folding():
    old = os.environ.get('CAFFEINE_NO_FOLDING')
    os.environ['CAFFEINE_NO_FOLDING'] = '1'
    try:
        yield
    finally:
        if old is None:
            del os.environ['CAFFEINE_NO_FOLDING']
        else:
            os.environ['CAFFEINE_NO_FOLDING'] = old


def caffeine_net(prototxt, weights=None):
    """caffeine's TEST net with BatchNorm+Scale folding off, so that each layer has its own output."""
    with _no_folding():
        if weights is None:
            return caffe.Net(str(prototxt), caffe.TEST)
        return caffe.Net(str(prototxt), str(weights), caffe.TEST)


def _set_inputs(net, inputs):
    for k, v in inputs.items():
        net.blobs[k].reshape(*v.shape)
        net.blobs[k].data[...] = v
    net.reshape()


def fill_random_weights(net, inputs, seed=0):
    """Seeded weights that keep every activation O(1) on ``inputs``: BatchNorm
    statistics with a positive variance and scale factor 1, Scale/Normalize factors
    in [0.5, 1.5], Gaussian convolution/inner-product weights and biases, each such
    layer then rescaled, in net order, so that its output on ``inputs`` has standard
    deviation 1 (LSUV), which keeps softmaxes unsaturated and box offsets small."""
    rng = np.random.default_rng(seed)
    for name, layer in zip(net.layer_names, net.layers):
        blobs = net.params.get(name, [])
        if layer.type == 'BatchNorm':
            c = blobs[0].data.shape
            blobs[0].data[...] = rng.normal(0, 0.2, c)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, c)
            blobs[2].data[...] = 1.0
            continue
        for i, b in enumerate(blobs):
            if layer.type in ('Scale', 'Normalize', 'PReLU') and i == 0:
                b.data[...] = rng.uniform(0.5, 1.5, b.data.shape)
            else:
                b.data[...] = rng.normal(0, 1.0 if i == 0 else 0.1, b.data.shape)
    _set_inputs(net, inputs)
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        net.forward(start=name, end=name)
        if layer.type in ('Convolution', 'Deconvolution', 'InnerProduct'):
            std = float(net.top_vecs[i][0].data.std())
            if std > 0:
                for b in net.params[name]:
                    b.data[...] /= std
                net.forward(start=name, end=name)
    return net


def caffeine_layer_outputs(net, inputs):
    """{layer name: a copy of its first top right after its forward}; inserted Split layers left out."""
    _set_inputs(net, inputs)
    out = {}
    names = net.layer_names

    def grab(i):
        top = net.top_vecs[i]
        if top and net.layers[i].type != 'Split':
            out[names[i]] = np.array(top[0].data, copy=True)
    net.after_forward(grab)   # the hook stays: use a net made for this comparison
    net.forward()
    return out


def opencv_reference_net(prototxt, caffemodel):
    """OpenCV dnn's net from the two files, set up as a per-blob reference: its own CPU
    backend, no layer fusion, no Winograd (which adds error on 3x3 convolutions)."""
    cv2 = require_opencv()
    ocv = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    ocv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ocv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    ocv.enableFusion(False)
    if hasattr(ocv, 'enableWinograd'):
        ocv.enableWinograd(False)
    return ocv


def opencv_layer_outputs(prototxt, caffemodel, inputs, layer_names):
    """{layer name: OpenCV's first output of that layer} for the names OpenCV's net has."""
    ocv = opencv_reference_net(prototxt, caffemodel)
    for k, v in inputs.items():
        ocv.setInput(np.ascontiguousarray(v, dtype=np.float32), k)
    have = set(ocv.getLayerNames())
    names = [n for n in layer_names if n in have]
    outs = ocv.forward(names)
    return dict(zip(names, (np.array(o) for o in outs)))


def compare_layer_outputs(ours, theirs, rtol=1e-4, skip_types=(), net=None):
    """Every layer both ran: same count, max|ours - theirs| <= rtol * max|theirs|.
    Returns {layer: relative error}; raises AssertionError listing every mismatch."""
    types = dict(zip(net.layer_names, (layer.type for layer in net.layers))) if net is not None else {}
    errs, bad = {}, []
    for name, ref in theirs.items():
        if types.get(name) in skip_types:
            continue
        got = ours[name]
        if got.size != ref.size:
            bad.append('%s: shape %s vs OpenCV %s' % (name, got.shape, ref.shape))
            continue
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        err = float(np.abs(got.reshape(ref.shape).astype(np.float64) - ref).max()) if ref.size else 0.0
        errs[name] = err / scale if scale else err
        if err > rtol * scale and err > 1e-7:
            bad.append('%s: max error %.3g > %g x %.3g' % (name, err, rtol, scale))
    assert not bad, '%d layer(s) differ from OpenCV: %s' % (len(bad), '; '.join(bad))
    return errs


def detection_rows(out):
    """The real rows of a DetectionOutput top (1, 1, D, 7): OpenCV's zero padding and
    Caffe's 'no detection' rows (label -1) dropped, sorted by image, label, score."""
    rows = np.asarray(out, dtype=np.float64).reshape(-1, 7)
    rows = rows[(rows[:, 1] >= 0) & np.any(rows != 0, axis=1)]
    order = np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))
    return rows[order]


def compare_detections(ours, theirs, box_tol=1e-3, score_tol=1e-4):
    """Same count, images and labels; boxes within box_tol, scores within score_tol."""
    a, b = detection_rows(ours), detection_rows(theirs)
    assert a.shape == b.shape, '%d detections vs OpenCV %d' % (len(a), len(b))
    np.testing.assert_array_equal(a[:, :2], b[:, :2], 'images/labels differ from OpenCV')
    np.testing.assert_allclose(a[:, 2], b[:, 2], rtol=0, atol=score_tol, err_msg='scores')
    np.testing.assert_allclose(a[:, 3:], b[:, 3:], rtol=0, atol=box_tol, err_msg='boxes')
    return a
