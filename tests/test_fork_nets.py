"""Fork nets that build and run without OpenCV: OpenPose's placeholder input,
HED's Crop offsets, py-faster-rcnn's Python proposal layer, PSPNet's and SegNet's
binary field numbers.  (The comparisons with OpenCV dnn are in
tests/test_fork_nets_opencv.py.)"""
import numpy as np
import pytest

import caffeine
from caffeine import prototxt, upgrade
from caffeine.errors import LayerError
from caffeine.proto import caffe_pb2
from caffeine.testing import shared_dir

SHARED = shared_dir()
CORPUS = SHARED / 'caffe-reference' / 'fork-prototxt' if SHARED else None
needs_corpus = pytest.mark.skipif(CORPUS is None or not CORPUS.is_dir(),
                                  reason='../shared/caffe-reference/fork-prototxt absent')


@needs_corpus
def test_openpose_builds_on_its_placeholder_and_reshapes():
    net = caffeine.Net(str(CORPUS / 'openpose_pose_coco_pose_deploy_linevec.prototxt'), caffeine.TEST)
    assert net.blobs['image'].shape == (1, 3, 1, 1)
    # BVLC Caffe: pooling 2x2 / 2 over 1x1 gives 1x1 (its windows clipped to the input)
    assert net.blobs['pool1_stage1'].shape == (1, 64, 1, 1) and net.blobs['net_output'].shape == (1, 57, 1, 1)
    net.blobs['image'].reshape(1, 3, 368, 656)
    net.reshape()
    assert net.blobs['pool3_stage1'].shape == (1, 256, 46, 82)
    assert net.blobs['net_output'].shape == (1, 57, 46, 82)


def test_nets_wrong_at_their_real_size_still_fail_clearly():
    text = ('input: "x" input_shape { dim: 1 dim: 1 dim: 5 dim: 6 }\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 9 } }')
    with pytest.raises(LayerError, match=r"'p' \(Pooling\): kernel 9x9 larger than padded input 5x6"):
        caffeine.Net(text, caffeine.TEST)


def test_pooling_a_kernel_larger_than_its_input_clips_the_window():
    text = ('input: "x" input_shape { dim: 1 dim: 2 dim: 1 dim: 1 }\n'
            'layer { name: "m" type: "Pooling" bottom: "x" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            'layer { name: "a" type: "Pooling" bottom: "x" top: "a" pooling_param { pool: AVE kernel_size: 2 stride: 3 } }')
    net = caffeine.Net(text, caffeine.TEST)
    out = net.forward(x=np.array([3, -2], np.float32).reshape(1, 2, 1, 1))
    np.testing.assert_array_equal(out['m'].ravel(), [3, -2])
    np.testing.assert_array_equal(out['a'].ravel(), [3, -2])     # Caffe divides by the clipped window


@needs_corpus
def test_hed_crop_offsets_from_the_coordinate_maps():
    raw = prototxt.read_net_param(str(CORPUS / 'hed_deploy.prototxt'), upgrade=False)
    assert upgrade.net_needs_fork_crop_upgrade(raw)
    steps = upgrade.apply_net_upgrades(raw, 'hed')
    assert upgrade.STEP_FORK_CROP in steps
    crops = [lp for lp in raw.layer if lp.type == 'Crop']
    assert [(lp.crop_param.axis, list(lp.crop_param.offset)) for lp in crops] == \
        [(2, [34]), (2, [35]), (2, [36]), (2, [38]), (2, [42])]
    assert not upgrade.net_needs_fork_crop_upgrade(raw)
    net = caffeine.Net(raw, caffeine.TEST)
    net.blobs['data'].reshape(1, 3, 96, 96)
    net.reshape()
    assert net.blobs['upscore-dsn5'].shape == (1, 1, 96, 96)


def test_fcn_style_crop_offsets_match_pycaffe_coord_map():
    # deconvolution upsampling x2 of a stride-2 convolution: pycaffe's crop() gives offset 1
    text = '''input: "data" input_shape { dim: 1 dim: 1 dim: 16 dim: 16 }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c"
            convolution_param { num_output: 1 kernel_size: 2 stride: 2 } }
    layer { name: "up" type: "Deconvolution" bottom: "c" top: "up"
            convolution_param { num_output: 1 kernel_size: 4 stride: 2 } }
    layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "out" }'''
    from caffeine import coord_map
    from caffeine.net_spec import NetSpec, layers as L
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 16, 16]))
    n.c = L.Convolution(n.data, num_output=1, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.c, convolution_param=dict(num_output=1, kernel_size=4, stride=2))
    want = coord_map.crop(n.up, n.data).fn.params['crop_param']
    p = prototxt.read_net_param(text)
    assert p.layer[-1].crop_param.axis == want['axis'] and list(p.layer[-1].crop_param.offset) == want['offset']


def test_crop_without_crop_param_that_cannot_be_aligned_keeps_bvlc_offsets(caplog):
    text = '''input: "a" input_shape { dim: 1 dim: 1 dim: 8 dim: 8 }
    input: "b" input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }
    layer { name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "out" }'''
    p = prototxt.read_net_param(text)
    assert not p.layer[-1].HasField('crop_param')
    assert "Crop layer 'crop' has no crop_param" in caplog.text
    net = caffeine.Net(p, caffeine.TEST)
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    np.testing.assert_array_equal(net.forward(a=x, b=np.zeros((1, 1, 4, 4), np.float32))['out'], x[:, :, :4, :4])


@needs_corpus
def test_py_faster_rcnn_prototxt_builds_with_the_stand_in_proposal():
    net = caffeine.Net(str(CORPUS / 'pyfrcnn_zf_test.prototxt'), caffeine.TEST)
    layer = net.layers[net.layer_names.index('proposal')]
    assert layer.type == 'Proposal' and layer.anchors.shape == (9, 4) and layer.feat_stride == 16
    assert (layer.pre_nms, layer.post_nms, layer.nms_thresh, layer.min_size) == (6000, 300, 0.7, 16)


def _binary_layer(name, type_, field, payload, blobs=()):
    """A serialized LayerParameter with a fork's parameter message at ``field``."""
    lp = caffe_pb2.LayerParameter(name=name, type=type_)
    for b in blobs:
        lp.blobs.add().CopyFrom(b)
    tag = field << 3 | 2
    head = bytearray()
    while True:
        head.append((tag & 0x7F) | (0x80 if tag >> 7 else 0))
        tag >>= 7
        if not tag:
            break
    return lp.SerializeToString() + bytes(head) + bytes([len(payload)]) + payload


def test_pspnet_and_segnet_binary_models_load_by_layer_name(tmp_path):
    """PSPNet writes interp_param at 143 (BVLC's input_param), SegNet's forks
    upsample_param at 147 (swish_param): such caffemodels parse, their blobs load
    by layer name, and the layers read their parameters back from those fields."""
    w = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[2, 2, 1, 1]), data=[1, 2, 3, 4])
    conv = caffe_pb2.LayerParameter(name='conv', type='Convolution', blobs=[w])
    interp = _binary_layer('interp', 'Interp', 143, b'\x08\x06\x10\x04')     # height: 6 width: 4
    up = _binary_layer('up', 'Upsample', 147, b'\x08\x03')                   # scale: 3
    model = b''.join(b'\xa2\x06' + bytes([len(x)]) + x for x in (conv.SerializeToString(), interp, up))
    param = caffe_pb2.NetParameter.FromString(model)
    assert param.layer[1].HasField('input_param') and param.layer[2].HasField('swish_param')
    (tmp_path / 'fork.caffemodel').write_bytes(model)
    text = '''input: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
            convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }
    layer { name: "interp" type: "Interp" bottom: "c" top: "i" interp_param { zoom_factor: 2 } }'''
    net = caffeine.Net(text, caffeine.TEST, weights=str(tmp_path / 'fork.caffemodel'))
    np.testing.assert_array_equal(net.params['conv'][0].data.ravel(), [1, 2, 3, 4])
    assert net.blobs['i'].shape == (1, 2, 5, 5)
    # the layers themselves, built from the binary parameters
    from caffeine.testing import blobs_from_arrays, make_layer
    from caffeine.blob import Blob
    for lp, bottoms, shape in ((param.layer[1], [np.zeros((1, 2, 3, 3))], (1, 2, 6, 4)),
                               (param.layer[2], [np.ones((1, 1, 2, 2)), np.zeros((1, 1, 2, 2))], (1, 1, 6, 6))):
        layer = make_layer(lp)
        top = [Blob()]
        layer.SetUp(blobs_from_arrays(*bottoms), top)
        assert top[0].shape == shape


@pytest.mark.parametrize('model, nparams', [('faster_rcnn_zf', 59294751), ('faster_rcnn_vgg16', 137078239)])
def test_model_library_faster_rcnn_deploy_nets(model, nparams):
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    net = caffeine.Net(os.path.join(root, 'models', model, 'deploy.prototxt'), caffeine.TEST)
    assert sum(b.count for blobs in net.params.values() for b in blobs) == nparams
    assert net.layers[net.layer_names.index('proposal')].type == 'Proposal'
    assert net.blobs['cls_prob'].shape == (1, 21) and net.blobs['bbox_pred'].shape == (1, 84)
    if model == 'faster_rcnn_zf' and CORPUS is not None:
        py = caffeine.Net(str(CORPUS / 'pyfrcnn_zf_test.prototxt'), caffeine.TEST)
        assert {k: [b.shape for b in v] for k, v in py.params.items()} == \
            {k: [b.shape for b in v] for k, v in net.params.items()}


def test_bn_statistics_are_not_learned_and_frozen_bn_learns_nothing():
    text = '''input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 4 }
    layer { name: "bn" type: "BN" bottom: "x" top: "y" }
    layer { name: "fz" type: "BN" bottom: "y" top: "z" bn_param { frozen: true } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "x" top: "loss" }'''
    net = caffeine.Net(text, caffeine.TRAIN)
    assert list(net.params_lr) == [1, 1, 0, 0, 0, 0, 0, 0]


def test_fork_python_layer_stand_in_is_logged_once(caplog):
    from caffeine.layers import python as pylayers
    pylayers._logged.discard('rpn.proposal_layer')
    text = '''python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" }'''
    from caffeine.testing import make_layer
    with caplog.at_level('INFO'):
        for _ in range(2):
            assert make_layer('type: "Python" ' + text).type == 'Proposal'
    lines = [r.getMessage() for r in caplog.records if 'rpn.proposal_layer' in r.getMessage()]
    assert len(lines) == 1 and "as the built-in 'Proposal' layer" in lines[0]
