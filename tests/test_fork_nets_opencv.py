"""The fork corpus (../shared/caffe-reference/fork-prototxt) against OpenCV dnn 4.x.

For each net: caffeine builds it, seeded random weights fill it and are saved
as a caffemodel, OpenCV dnn (fusion and Winograd off) reads the same prototxt
and weights, and every blob both compute must agree within 1e-4 of its largest
magnitude.  Where OpenCV cannot read a net as it is, the note at its test says
what OpenCV is given instead.  Skipped when OpenCV (cv2, < 5: 5 dropped
readNetFromCaffe) or ../shared is absent.
"""

import os
import tempfile

import numpy as np
import pytest

import caffeine
from caffeine import prototxt
from caffeine.proto import caffe_pb2
from caffeine.testing import shared_dir
from caffeine.weights import field_bytes as _field, varint as _varint
from opencv_ref import opencv_reference_net

cv2 = pytest.importorskip('cv2', reason='OpenCV (opencv-python-headless<5) is the reference')
if not hasattr(cv2, 'dnn') or not hasattr(cv2.dnn, 'readNetFromCaffe'):
    pytest.skip('this OpenCV has no dnn.readNetFromCaffe (OpenCV 5 dropped it)', allow_module_level=True)

SHARED = shared_dir()
CORPUS = SHARED / 'caffe-reference' / 'fork-prototxt' if SHARED else None
pytestmark = pytest.mark.skipif(CORPUS is None or not CORPUS.is_dir(),
                                reason='../shared/caffe-reference/fork-prototxt absent')


# -- the comparison helper ------------------------------------------------------------
def random_weights(net, seed=0, small=()):
    """Seeded weights that keep activations in range: He-like weights, small
    biases, plausible normalization statistics; the layers named in ``small``
    get weights 10x smaller (box deltas, so that exp(delta) stays finite)."""
    rng = np.random.default_rng(seed)
    for name, layer in zip(net.layer_names, net.layers):
        blobs = layer.blobs
        t = layer.type
        if t in ('BatchNorm',):
            c = blobs[0].count
            blobs[0].data[...] = rng.standard_normal(c) * 0.1
            blobs[1].data[...] = rng.uniform(0.5, 1.5, c)
            blobs[2].data[...] = 1
            continue
        if t == 'BN':
            c = blobs[0].count
            shapes = [b.data.shape for b in blobs]
            blobs[0].data[...] = rng.uniform(0.5, 1.5, c).reshape(shapes[0])
            blobs[1].data[...] = (rng.standard_normal(c) * 0.1).reshape(shapes[1])
            blobs[2].data[...] = (rng.standard_normal(c) * 0.1).reshape(shapes[2])
            blobs[3].data[...] = rng.uniform(0.5, 1.5, c).reshape(shapes[3])
            continue
        if t == 'Scale':
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.standard_normal(blobs[1].data.shape, np.float32) * 0.1
            continue
        for i, b in enumerate(blobs):
            if i == 0 and b.data.ndim >= 2:
                fan_in = b.count // b.data.shape[0]
                rng.standard_normal(b.data.shape, np.float32, out=b.data)
                b.data *= np.float32(np.sqrt(2.0 / fan_in) * (0.1 if name in small else 1))
            else:
                b.data[...] = rng.standard_normal(b.data.shape, np.float32) * 0.1


def blob_producers(param):
    """OpenCV's name for the layer that last writes each blob (OpenCV renames a
    repeated layer name x to x_1, x_2, ...), for the layers' first tops."""
    seen, out = {}, {}
    for lp in param.layer:
        n = seen.get(lp.name, 0)
        seen[lp.name] = n + 1
        cv_name = lp.name if n == 0 else '%s_%d' % (lp.name, n)
        if lp.top:
            out[lp.top[0]] = cv_name
    return out


def compare_with_opencv(net, cv_text, cv_model, inputs, cv_param=None, rtol=1e-4, skip=(), padded=()):
    """Forward ``net`` (caffeine) and OpenCV's net from ``cv_text`` / ``cv_model``
    on ``inputs`` {name: array}; assert every blob of OpenCV's producers map
    within ``rtol`` of its largest magnitude.  Blobs named in ``padded`` may have
    more rows (first axis) in OpenCV: their leading rows are compared (OpenCV's
    Proposal pads its regions to post_nms_topn).  Returns {blob: max error / max |OpenCV|}."""
    for name, a in inputs.items():
        net.blobs[name].reshape(*a.shape)
    net.reshape()
    out = net.forward(**{k: v for k, v in inputs.items()})
    del out
    with tempfile.TemporaryDirectory() as tmp:     # (from files: 10x faster than from buffers)
        paths = [os.path.join(tmp, 'net.prototxt'), os.path.join(tmp, 'net.caffemodel')]
        for path, data in zip(paths, (cv_text.encode(), cv_model)):
            with open(path, 'wb') as f:
                f.write(data)
        cv = opencv_reference_net(*paths)
    for name, a in inputs.items():
        cv.setInput(np.ascontiguousarray(a, np.float32), name)
    producers = blob_producers(cv_param if cv_param is not None else prototxt.read_net_param(cv_text))
    cv_layers = set(cv.getLayerNames())
    # OpenCV names a layer after its top in places (HED's 'score-dsn1' -> 'score-dsn1-up')
    producers = {b: (n if n in cv_layers else b) for b, n in producers.items() if n in cv_layers or b in cv_layers}
    names = [b for b in net.blobs if b in producers and b not in inputs and b not in skip]
    outs = cv.forward([producers[b] for b in names])
    failures, errors = [], {}
    for b, got in zip(names, outs):
        mine = net.blobs[b].data
        got = np.asarray(got)
        if b in padded and got.ndim == mine.ndim and got.shape[0] > mine.shape[0]:
            got = got[:mine.shape[0]]
        if got.size != mine.size:
            failures.append('%s: shape %s vs OpenCV %s' % (b, mine.shape, got.shape))
            continue
        got = got.reshape(mine.shape)
        scale = max(float(np.abs(got).max()), 1e-30)
        err = float(np.abs(mine.astype(np.float64) - got).max())
        errors[b] = err / scale
        if err > rtol * scale and err > 1e-6:
            failures.append('%s: max error %.3g vs max |OpenCV| %.3g' % (b, err, scale))
    assert not failures, '%d of %d blobs differ: %s' % (len(failures), len(names), '; '.join(failures[:8]))
    return errors


def build(param_or_path, seed=0, small=()):
    """The net with random_weights (its own fillers dropped: they would be overwritten)."""
    param = prototxt.read_net_param(param_or_path)
    for lp in param.layer:
        for sub in (lp.convolution_param, lp.inner_product_param):
            sub.ClearField('weight_filler')
            sub.ClearField('bias_filler')
    caffeine.set_random_seed(seed)
    net = caffeine.Net(param, caffeine.TEST)
    random_weights(net, seed, small)
    return net


def weights_bytes(net, layers=None, fp16=False):
    """The net's caffemodel (name, type and blobs of each layer; or of ``layers``,
    (name, type, [arrays]) triples), serialized with NumPy (protobuf's Python
    path takes a minute for ZF's 60M weights).  ``fp16``: as NVCaffe writes
    half-precision models (raw_data_type FLOAT16, raw_data)."""
    if layers is None:
        layers = [(name, layer.type, [b.data for b in layer.blobs])
                  for name, layer in zip(net.layer_names, net.layers)]
    out = []
    for name, type_name, arrays in layers:
        body = caffe_pb2.LayerParameter(name=name, type=type_name).SerializeToString()
        for a in arrays:
            shape = caffe_pb2.BlobShape(dim=list(a.shape)).SerializeToString()
            if fp16:
                values = _varint(10 << 3) + _varint(caffe_pb2.FLOAT16) + _field(12, np.asarray(a, '<f2').tobytes())
            else:
                values = _field(5, np.ascontiguousarray(a, '<f4').tobytes())
            body += _field(7, _field(7, shape) + values)
        out.append(_field(100, body))
    return b''.join(out)


def image(shape, seed=1):
    return (np.random.RandomState(seed).rand(*shape) * 255 - 128).astype(np.float32)


def corpus_text(name):
    return (CORPUS / name).read_text()


# -- Faster R-CNN -----------------------------------------------------------------------
def test_faster_rcnn_zf_matches_opencv_and_py_faster_rcnn_prototxt_runs(tmp_path):
    """frcnn_zf_opencv (type 'Proposal') against OpenCV, then py-faster-rcnn's own
    test.prototxt (the Python rpn.proposal_layer, run by the built-in stand-in)
    against it.  OpenCV's Proposal ignores min_size (and pads its output to
    post_nms_topn rows): both sides get min_size 0 for the comparison; the
    min_size filter is checked against py-faster-rcnn in test_layers_forks.py.
    fc6 and fc7 are narrowed from 4096 to 512 outputs to keep the test short."""
    def text_of(name):
        return corpus_text(name).replace('num_output: 4096', 'num_output: 512')
    text = text_of('frcnn_zf_opencv.prototxt').replace('proposal_param {', 'proposal_param { min_size: 0')
    net = build(prototxt.read_net_param(text), small=('rpn_bbox_pred', 'bbox_pred'))
    weights = weights_bytes(net)
    inputs = {'data': image((1, 3, 224, 224)) / 128, 'im_info': np.array([[224, 224, 1]], np.float32)}
    per_roi = ('rois', 'roi_pool_conv5', 'fc6', 'fc7', 'cls_score', 'bbox_pred', 'cls_prob')
    names = compare_with_opencv(net, text, weights, inputs, padded=per_roi)
    assert set(per_roi) <= set(names)
    assert 100 < net.blobs['rois'].shape[0] <= 300

    # py-faster-rcnn's prototxt: same weights, the TEST configuration (min_size 16)
    py = caffeine.Net(prototxt.read_net_param(text_of('pyfrcnn_zf_test.prototxt')), caffeine.TEST)
    assert py.layers[py.layer_names.index('proposal')].type == 'Proposal'
    ref = caffeine.Net(prototxt.read_net_param(text_of('frcnn_zf_opencv.prototxt')), caffeine.TEST)
    (tmp_path / 'zf.caffemodel').write_bytes(weights)
    for n in (py, ref):
        n.copy_from(str(tmp_path / 'zf.caffemodel'))
        n.forward(**inputs)
    rois = py.blobs['rois'].data
    assert 0 < rois.shape[0] < 300
    widths = rois[:, 3] - rois[:, 1] + 1
    heights = rois[:, 4] - rois[:, 2] + 1
    assert (widths >= 16).all() and (heights >= 16).all()
    for b in ('rois', 'fc7', 'cls_prob', 'bbox_pred'):
        np.testing.assert_array_equal(py.blobs[b].data, ref.blobs[b].data)


# -- ShuffleNet ---------------------------------------------------------------------------
def test_shufflenet_matches_opencv():
    """ShuffleChannel and ConvolutionDepthwise (OpenCV reads the latter as a grouped
    Convolution, its group from the weights' shape)."""
    net = build(str(CORPUS / 'shufflenet_1x_g3_deploy.prototxt'))
    names = compare_with_opencv(net, corpus_text('shufflenet_1x_g3_deploy.prototxt'), weights_bytes(net),
                                {'data': image((1, 3, 224, 224)) / 128})
    assert {'shuffle2', 'resx2_conv2', 'fc1000'} <= set(names)


def test_nvcaffe_fp16_weights_load_as_opencv_reads_them(tmp_path):
    """A half-precision caffemodel as NVIDIA's Caffe writes it (BlobProto raw_data_type
    FLOAT16 + raw_data) loads into caffeine; OpenCV reads the same file."""
    text = corpus_text('shufflenet_1x_g3_deploy.prototxt')
    net = build(str(CORPUS / 'shufflenet_1x_g3_deploy.prototxt'))
    half = weights_bytes(net, fp16=True)
    (tmp_path / 'half.caffemodel').write_bytes(half)
    fresh = caffeine.Net(str(CORPUS / 'shufflenet_1x_g3_deploy.prototxt'), caffeine.TEST)
    fresh.copy_from(str(tmp_path / 'half.caffemodel'))
    w = fresh.params['resx1_conv1'][0].data
    np.testing.assert_array_equal(w, net.params['resx1_conv1'][0].data.astype(np.float16).astype(np.float32))
    assert not np.array_equal(w, net.params['resx1_conv1'][0].data)    # really rounded to fp16
    compare_with_opencv(fresh, text, half, {'data': image((1, 3, 224, 224)) / 128})


# -- OpenPose -------------------------------------------------------------------------------
def test_openpose_builds_on_its_placeholder_and_matches_opencv_at_its_real_size():
    """The 1x3x1x1 placeholder input builds (as in BVLC Caffe: pooling a 1x1 input
    gives 1x1), the user reshapes 'image' before the first forward, and the
    reshaped net matches OpenCV's."""
    path = str(CORPUS / 'openpose_pose_coco_pose_deploy_linevec.prototxt')
    net = build(path)
    assert net.blobs['image'].shape == (1, 3, 1, 1) and net.blobs['net_output'].shape == (1, 57, 1, 1)
    net.blobs['image'].reshape(1, 3, 64, 80)
    net.reshape()
    assert net.blobs['net_output'].shape == (1, 57, 8, 10)
    names = compare_with_opencv(net, corpus_text('openpose_pose_coco_pose_deploy_linevec.prototxt'),
                                weights_bytes(net), {'image': image((1, 3, 64, 80)) / 256})
    assert {'pool3_stage1', 'Mconv7_stage6_L1', 'net_output'} <= set(names)


# -- HED ------------------------------------------------------------------------------------
def test_hed_crops_where_the_fork_does_and_matches_opencv():
    """HED's Crop layers have no crop_param: the fork computed their offsets from the
    coordinate maps (34, 35, 36, 38, 42 for the five side outputs).  OpenCV's own
    Crop would crop at 0 (its HED sample registers a centre crop instead), so
    OpenCV is given the prototxt as caffeine upgrades it, offsets written out."""
    param = prototxt.read_net_param(str(CORPUS / 'hed_deploy.prototxt'))
    offsets = [(lp.crop_param.axis, list(lp.crop_param.offset)) for lp in param.layer if lp.type == 'Crop']
    assert offsets == [(2, [34]), (2, [35]), (2, [36]), (2, [38]), (2, [42])]
    net = build(param)
    names = compare_with_opencv(net, prototxt.to_text(param), weights_bytes(net),
                                {'data': image((1, 3, 96, 96)) / 128}, cv_param=param)
    assert {'upscore-dsn1', 'upscore-dsn5', 'sigmoid-fuse'} <= set(names)


# -- PSPNet ---------------------------------------------------------------------------------
def test_pspnet_matches_opencv_with_bn_as_batchnorm_and_scale():
    """PSPNet's BN and Interp.  OpenCV 4.x cannot read the prototxt as it is (its
    reader of unknown fields fails on bn_param's nested fillers, and it has no BN
    layer), so OpenCV gets the same net with each BN written as BatchNorm
    (use_global_stats, the same eps) + Scale (bias) and the same statistics;
    caffeine runs PSPNet's own BN.  The input is 89x89 instead of 473x473 (the
    feature map 12x12 instead of 60x60): the pyramid pooling kernels and the
    Interp sizes are scaled with it (60, 30, 20, 10 -> 12, 6, 4, 2); conv5_4
    has 128 outputs instead of 512 (OpenCV's reading of the weights dominates)."""
    param = prototxt.read_net_param(str(CORPUS / 'pspnet50_ADE20K_473.prototxt'))
    param.layer[0].input_param.shape[0].dim[2:] = [89, 89]
    for lp in param.layer:
        if lp.type == 'Pooling' and lp.name.startswith('conv5_3_pool'):
            k = lp.pooling_param.kernel_size // 5
            lp.pooling_param.kernel_size = lp.pooling_param.stride = k
        if lp.type == 'Interp' and lp.interp_param.height == 60:
            lp.interp_param.height = lp.interp_param.width = 12
        if lp.name == 'conv5_4':     # 4096 x 3 x 3 -> 512: 75 of the 185 MB OpenCV would parse
            lp.convolution_param.num_output = 128
    net = build(param)
    assert net.blobs['conv5_3_pool6'].shape[2:] == (6, 6) and net.blobs['conv6_interp'].shape[2:] == (89, 89)

    cv_param = caffe_pb2.NetParameter()
    cv_param.CopyFrom(param)
    del cv_param.layer[:]
    cv_layers = []
    by_name = dict(zip(net.layer_names, net.layers))
    for lp in param.layer[1:]:
        blobs = [b.data for b in by_name[lp.name].blobs]
        if lp.type != 'BN':
            cv_param.layer.add().CopyFrom(lp)
            cv_layers.append((lp.name, lp.type, blobs))
            continue
        bn = cv_param.layer.add(name=lp.name, type='BatchNorm', bottom=lp.bottom, top=lp.top)
        bn.batch_norm_param.use_global_stats = True
        bn.batch_norm_param.eps = lp.bn_param.eps
        sc = cv_param.layer.add(name=lp.name + '/scale', type='Scale', bottom=lp.top, top=lp.top)
        sc.scale_param.bias_term = True
        c = blobs[0].size
        cv_layers.append((lp.name, 'BatchNorm', [blobs[2].reshape(c), blobs[3].reshape(c), np.ones(1, np.float32)]))
        cv_layers.append((lp.name + '/scale', 'Scale', [blobs[0].reshape(c), blobs[1].reshape(c)]))
    cv_param.layer.insert(0, param.layer[0])
    names = compare_with_opencv(net, prototxt.to_text(cv_param), weights_bytes(net, cv_layers),
                                {'data': image((1, 3, 89, 89)) / 128}, cv_param=cv_param)
    assert {'conv1_1_3x3_s2', 'conv5_3_pool1_interp', 'conv5_3_concat', 'conv6_interp'} <= set(names)


# -- single fork layers ------------------------------------------------------------------------
ROIS = np.array([[0, 0, 0, 40, 40], [0, 10, 5, 100, 120], [0, -20, 3, 7, 8], [0, 33, 17, 35, 18],
                 [0, 150, 150, 160, 170], [0, 4, 4, 4, 4]], np.float32)


def _single(layer, inputs):
    lines = ['input: "%s" input_shape { %s }' % (n, ' '.join('dim: %d' % d for d in a.shape))
             for n, a in inputs.items()]
    return '\n'.join(lines) + '\nlayer { name: "l" top: "out" %s %s }\n' % (
        ' '.join('bottom: "%s"' % n for n in inputs), layer)


@pytest.mark.parametrize('layer, inputs', [
    ('type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.125 }',
     {'x': image((1, 5, 12, 10)), 'rois': ROIS}),
    ('type: "PSROIPooling" psroi_pooling_param { output_dim: 2 group_size: 3 spatial_scale: 0.125 }',
     {'x': image((1, 18, 12, 10)), 'rois': ROIS}),
    ('type: "Interp" interp_param { zoom_factor: 3 }', {'x': image((2, 3, 5, 6))}),
    ('type: "Interp" interp_param { height: 11 width: 4 }', {'x': image((1, 3, 5, 6))}),
    ('type: "ShuffleChannel" shuffle_channel_param { group: 3 }', {'x': image((2, 12, 3, 4))}),
    ('type: "ReLU6"', {'x': image((2, 3, 4, 5)) / 16}),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }', {'x': image((2, 7))}),
], ids=['roi_pooling', 'psroi_pooling', 'interp_zoom', 'interp_size', 'shuffle_channel',
        'relu6', 'dropout_scale_train'])
def test_fork_layer_matches_opencv(layer, inputs):
    """One fork layer at a time.  OpenCV 4.14 has no BN or Upsample layer, its Interp
    no shrink_factor, and its reader rewrites Axpy as a Scale of bottom 2 by bottom 0
    plus bottom 1 (the fork's is a * bottom 1 + bottom 2) that fails on SE shapes:
    those are checked against the forks' code in test_layers_forks.py."""
    text = _single(layer, inputs)
    net = caffeine.Net(text, caffeine.TEST)
    compare_with_opencv(net, text, b'', inputs, rtol=1e-5)
