"""pycaffe's Net helpers (forward_all, forward_backward_all, set_input_arrays,
hooks), Classifier and Detector, and the classic pycaffe workflows: net
surgery, fine-tuning with a renamed last layer, feature extraction, a Python
layer that trains."""
import sys
import textwrap
import threading

import numpy as np
import pytest

import caffeine as caffe
from caffeine.errors import CaffeineError

MLP = '''
name: "mlp"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
'''


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def mlp_reference(net, x):
    w, b = (p.data for p in net.params['ip'])
    return softmax(x.reshape(len(x), -1) @ w.T + b)


# -- forward_all / forward_backward_all -----------------------------------------

def test_forward_all_runs_every_item_in_net_sized_batches_and_drops_the_padding():
    net = caffe.Net(MLP, caffe.TEST)
    x = np.random.RandomState(0).randn(10, 3, 2, 2).astype(np.float32)   # 4 + 4 + 2 (padded)
    out = net.forward_all(data=x, blobs=['ip'])
    assert set(out) == {'prob', 'ip'}
    assert out['prob'].shape == (10, 5) and out['ip'].shape == (10, 5)
    np.testing.assert_allclose(out['prob'], mlp_reference(net, x), rtol=1e-5, atol=1e-7)


def test_forward_backward_all_returns_outputs_and_input_diffs():
    net = caffe.Net('force_backward: true\n' + MLP.replace('layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }', ''),
                    caffe.TEST)
    r = np.random.RandomState(1)
    x = r.randn(6, 3, 2, 2).astype(np.float32)
    g = r.randn(6, 5).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, ip=g)
    w, b = (p.data for p in net.params['ip'])
    np.testing.assert_allclose(outs['ip'], x.reshape(6, -1) @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffs['data'], (g @ w).reshape(6, 3, 2, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(CaffeineError, match='neither net inputs'):
        net.forward_backward_all(data=x, bogus=g)


def test_hooks_see_each_layer_in_order():
    net = caffe.Net('force_backward: true\n' + MLP, caffe.TEST)
    seen = []
    net.before_forward(lambda i: seen.append(('bf', i)))
    net.after_forward(lambda i: seen.append(('af', i)))
    net.after_backward(lambda i: seen.append(('ab', i)))
    net.forward()
    net.backward()
    assert seen == [('bf', 0), ('af', 0), ('bf', 1), ('af', 1), ('bf', 2), ('af', 2),
                    ('ab', 2), ('ab', 1), ('ab', 0)]


MEMORY_NET = '''
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
layer { name: "sum" type: "Reduction" bottom: "data" top: "sum" reduction_param { axis: 1 } }
layer { name: "silence" type: "Silence" bottom: "label" }
'''


def test_set_input_arrays_serves_memory_data_batch_by_batch_and_wraps():
    net = caffe.Net(MEMORY_NET, caffe.TEST)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.array([7, 8, 9, 10], np.float32)
    net.set_input_arrays(data, labels)
    for start in (0, 2, 0):
        net.forward()
        np.testing.assert_array_equal(net.blobs['data'].data, data[start:start + 2])
        np.testing.assert_array_equal(net.blobs['label'].data, labels[start:start + 2])
        np.testing.assert_allclose(net.blobs['sum'].data, data[start:start + 2].reshape(2, -1).sum(1))
    with pytest.raises(CaffeineError, match='first layer must be a MemoryData'):
        caffe.Net(MLP, caffe.TEST).set_input_arrays(data, labels)


def test_close_stops_the_prefetch_threads(tmp_path):
    from caffeine.data.db import DBWriter
    from caffeine.io import array_to_datum
    src = str(tmp_path / 'db')
    w = DBWriter(src, 'lmdb')
    for i in range(6):
        w.put(b'%08d' % i, array_to_datum(np.full((1, 2, 2), i, np.uint8), i).SerializeToString())
    w.close()
    before = threading.active_count()
    net = caffe.Net('layer { name: "d" type: "Data" top: "data" top: "label" '
                    'data_param { source: "%s" backend: LMDB batch_size: 2 } }' % src, caffe.TRAIN)
    net.forward()
    np.testing.assert_array_equal(net.blobs['label'].data, [0, 1])
    assert threading.active_count() > before
    net.close()
    net.close()  # idempotent
    assert threading.active_count() == before


# -- Classifier and Detector ------------------------------------------------------

CLASSIFY_NET = '''
name: "tiny_classifier"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.2 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


@pytest.fixture
def weights(tmp_path):
    caffe.set_random_seed(5)
    net = caffe.Net(CLASSIFY_NET, caffe.TEST)
    path = str(tmp_path / 'w.caffemodel')
    net.save(path)
    model = tmp_path / 'deploy.prototxt'
    model.write_text(CLASSIFY_NET)
    return str(model), path, net


def reference_scores(net, crops, mean, raw_scale, swap):
    """What the classifier must compute for HxWx3 crops in [0, 1]."""
    w, b = (p.data for p in net.params['fc'])
    x = np.stack([c.transpose(2, 0, 1)[list(swap)] * raw_scale - mean[:, None, None] for c in crops])
    return softmax(x.reshape(len(x), -1) @ w.T + b)


def test_classifier_predicts_centre_crops_and_averages_the_ten_oversampled_crops(weights):
    model, w, ref = weights
    mean = np.array([10.0, 20.0, 30.0], np.float32)
    clf = caffe.Classifier(model, w, image_dims=(6, 6), mean=mean, raw_scale=255, channel_swap=(2, 1, 0))
    r = np.random.RandomState(3)
    ims = [r.rand(6, 6, 3).astype(np.float32) for _ in range(2)]
    got = clf.predict(ims, oversample=False)
    want = reference_scores(ref, [im[1:5, 1:5] for im in ims], mean, 255, (2, 1, 0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    got = clf.predict(ims)   # oversample: four corners, the centre, and their mirrors
    for k, im in enumerate(ims):
        crops = [im[y:y + 4, x:x + 4] for y, x in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
        crops += [c[:, ::-1] for c in crops]
        np.testing.assert_allclose(got[k], reference_scores(ref, crops, mean, 255, (2, 1, 0)).mean(0),
                                   rtol=1e-5, atol=1e-7)


def test_detector_scores_each_window_and_pads_context_with_the_mean(weights, tmp_path):
    from PIL import Image
    model, w, ref = weights
    r = np.random.RandomState(4)
    img = (r.rand(10, 12, 3) * 255).astype(np.uint8)
    path = str(tmp_path / 'im.png')
    Image.fromarray(img).save(path)
    image = img.astype(np.float32) / 255
    det = caffe.Detector(model, w, raw_scale=255)
    windows = np.array([[0, 0, 4, 4], [2, 3, 6, 7]])
    out = det.detect_windows([(path, windows)])
    assert [d['filename'] for d in out] == [path, path]
    for d, (y0, x0, y1, x1) in zip(out, windows):
        assert list(d['window']) == [y0, x0, y1, x1]
        want = reference_scores(ref, [image[y0:y1, x0:x1]], np.zeros(3), 255, (0, 1, 2))[0]
        np.testing.assert_allclose(d['prediction'], want, rtol=1e-5, atol=1e-7)

    mean = np.array([1.0, 2.0, 3.0], np.float32)
    padded = caffe.Detector(model, w, mean=mean, raw_scale=255, context_pad=1)
    crop = padded.crop(image, np.array([0, 0, 3, 3]))
    assert crop.shape == (4, 4, 3)
    # the grown box starts above and left of the image: that border is the mean
    # in image space (mean / raw_scale)
    np.testing.assert_allclose(crop[0, 0], mean / 255, rtol=1e-6)


# -- classic workflows -------------------------------------------------------------

def test_net_surgery_casts_fully_connected_weights_to_a_convolution():
    # pycaffe's net_surgery example: the same weights, reshaped, make a
    # fully-convolutional net that scores every 2x2 window of a larger input.
    fc = caffe.Net(MLP, caffe.TEST)
    conv = caffe.Net(MLP.replace('dim: 4 dim: 3 dim: 2 dim: 2', 'dim: 1 dim: 3 dim: 3 dim: 4').replace(
        'name: "ip" type: "InnerProduct" bottom: "data" top: "ip"\n        inner_product_param { num_output: 5',
        'name: "ip-conv" type: "Convolution" bottom: "data" top: "ip"\n        convolution_param { kernel_size: 2 num_output: 5'),
        caffe.TEST)
    conv.params['ip-conv'][0].data.flat = fc.params['ip'][0].data.flat
    conv.params['ip-conv'][1].data[...] = fc.params['ip'][1].data
    x = np.random.RandomState(6).randn(1, 3, 3, 4).astype(np.float32)
    scores = conv.forward(data=x)['prob']
    assert scores.shape == (1, 5, 2, 3)
    windows = np.stack([x[0, :, i:i + 2, j:j + 2] for i in range(2) for j in range(3)])
    want = mlp_reference(fc, windows)
    np.testing.assert_allclose(scores[0].reshape(5, 6).T, want, rtol=1e-5, atol=1e-6)


FINETUNE = '''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "h"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "%s" type: "InnerProduct" bottom: "h" top: "score"
        inner_product_param { num_output: %d weight_filler { type: "gaussian" std: 0.5 } } }
'''


def test_fine_tuning_with_a_renamed_last_layer(tmp_path):
    # pycaffe's fine-tuning recipe: rename the last layer (and change its
    # outputs); every other layer takes the pretrained weights by name.
    caffe.set_random_seed(1)
    base = caffe.Net(FINETUNE % ('fc', 10), caffe.TEST)
    path = str(tmp_path / 'base.caffemodel')
    base.save(path)
    caffe.set_random_seed(2)
    fresh = caffe.Net(FINETUNE % ('fc-style', 3), caffe.TEST)
    caffe.set_random_seed(2)
    tuned = caffe.Net(FINETUNE % ('fc-style', 3), path, caffe.TEST)    # (file, weights, phase)
    np.testing.assert_array_equal(tuned.params['ip1'][0].data, base.params['ip1'][0].data)
    np.testing.assert_array_equal(tuned.params['fc-style'][0].data, fresh.params['fc-style'][0].data)
    assert tuned.params['fc-style'][0].data.shape == (3, 5)
    # keeping the old name with a new shape is the classic mistake: a clear error
    with pytest.raises(CaffeineError, match='fc'):
        caffe.Net(FINETUNE % ('fc', 3), caffe.TEST, weights=path)


def test_feature_extraction_with_forward_end():
    text = MLP.replace('layer { name: "prob"', '''layer { name: "relu" type: "ReLU" bottom: "ip" top: "feat" }
layer { name: "prob"''').replace('bottom: "ip" top: "prob"', 'bottom: "feat" top: "prob"')
    net = caffe.Net(text, caffe.TEST)
    x = np.random.RandomState(7).randn(4, 3, 2, 2).astype(np.float32)
    net.blobs['prob'].data[...] = -1
    out = net.forward(data=x, end='relu')
    assert set(out) == {'feat'}
    w, b = (p.data for p in net.params['ip'])
    np.testing.assert_allclose(out['feat'], np.maximum(x.reshape(4, -1) @ w.T + b, 0), rtol=1e-5, atol=1e-6)
    assert (net.blobs['prob'].data == -1).all()   # layers after `end` did not run


PY_MODULE = textwrap.dedent('''
    import numpy as np
    import caffeine as caffe

    class Bias(caffe.Layer):
        """top = bottom + b, b learned (one value per feature)."""
        def setup(self, bottom, top):
            self.blobs.add_blob(bottom[0].data.shape[1])
            self.blobs[0].data[...] = 0

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = bottom[0].data + self.blobs[0].data

        def backward(self, top, propagate_down, bottom):
            self.blobs[0].diff[...] += top[0].diff.sum(0)
            if propagate_down[0]:
                bottom[0].diff[...] = top[0].diff
''')


def test_a_python_layer_trains_and_snapshots(tmp_path, monkeypatch):
    name = 'caffeine_pyfit_%d' % id(tmp_path)
    (tmp_path / (name + '.py')).write_text(PY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = tmp_path / 'net.prototxt'
    net.write_text('''
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 8 dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 8 dim: 3 } } }
layer { name: "bias" type: "Python" bottom: "x" top: "y" python_param { module: "%s" layer: "Bias" } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
''' % name)
    sp = tmp_path / 'solver.prototxt'
    sp.write_text('net: "%s" base_lr: 0.5 lr_policy: "fixed" max_iter: 40 snapshot_prefix: "%s"'
                  % (net, tmp_path / 'py'))
    try:
        s = caffe.SGDSolver(str(sp))
        target = np.array([1.0, -2.0, 0.5], np.float32)
        r = np.random.RandomState(0)

        def feed(i):
            if i == 0:
                x = r.randn(8, 3).astype(np.float32)
                s.net.blobs['x'].data[...] = x
                s.net.blobs['t'].data[...] = x + target
        s.net.before_forward(feed)
        s.step(40)
        np.testing.assert_allclose(s.net.params['bias'][0].data, target, atol=1e-3)
        s.snapshot()
        fresh = caffe.Net(str(net), str(tmp_path / 'py_iter_40.caffemodel'), caffe.TEST)
        np.testing.assert_array_equal(fresh.params['bias'][0].data, s.net.params['bias'][0].data)
    finally:
        sys.modules.pop(name, None)
