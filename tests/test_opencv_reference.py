"""caffeine against OpenCV dnn 4.x on the fork prototxt corpus's SSD nets: every layer's
output within 1e-4 of its largest magnitude, DetectionOutput's detections the same (count,
labels; boxes within 1e-3, scores within 1e-4).  The nets run with seeded random weights
(tests/opencv_ref.py), saved to a .caffemodel that OpenCV reads.  The real face detector's
checks are in test_face_detector.py.
"""
import numpy as np
import pytest

import caffeine
from caffeine.testing import shared_dir

import opencv_ref
SHARED = shared_dir()
CORPUS = SHARED / 'caffe-reference' / 'fork-prototxt' if SHARED else None
# the corpus nets that the SSD layers enable, with their input
SSD_CORPUS = {'face_res10_deploy_opencv_sample.prototxt': (1, 3, 300, 300),
              'MobileNetSSD_deploy.prototxt': (2, 3, 300, 300)}


def _detection_layer(net):
    return [n for n, layer in zip(net.layer_names, net.layers) if layer.type == 'DetectionOutput'][0]


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SSD_CORPUS))
def test_corpus_net_matches_opencv_with_random_weights(name, tmp_path):
    opencv_ref.require_opencv()
    if CORPUS is None:
        pytest.skip('../shared (the fork prototxt corpus) is absent')
    prototxt = CORPUS / name
    x = np.random.default_rng(7).normal(0, 1, SSD_CORPUS[name]).astype(np.float32)
    net = opencv_ref.caffeine_net(prototxt)
    opencv_ref.fill_random_weights(net, {'data': x}, seed=11)
    weights = tmp_path / 'random.caffemodel'
    net.save(str(weights))
    ours = opencv_ref.caffeine_layer_outputs(net, {'data': x})
    theirs = opencv_ref.opencv_layer_outputs(prototxt, weights, {'data': x}, list(ours))
    det = _detection_layer(net)
    assert det in theirs and len(theirs) >= len(ours) - 1   # all but caffeine's inserted splits
    errs = opencv_ref.compare_layer_outputs(ours, theirs, skip_types=('DetectionOutput',), net=net)
    assert len(errs) > 100 and max(errs.values()) < 1e-4
    rows = opencv_ref.compare_detections(ours[det], theirs[det])
    assert len(rows) > 10 and set(rows[:, 0]) == set(range(x.shape[0]))
    # the net as users run it (BatchNorm+Scale folded) gives the same detections
    plain = caffeine.Net(str(prototxt), str(weights), caffeine.TEST)
    plain.blobs['data'].reshape(*x.shape)
    plain.blobs['data'].data[...] = x
    opencv_ref.compare_detections(plain.forward()[det], theirs[det])
