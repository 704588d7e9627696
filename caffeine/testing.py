"""Test helpers: running one layer, Caffe's finite-difference GradientChecker and the golden cases.

``setup_layer``/``forward_layer``/``backward_layer`` run one layer built from a
prototxt snippet on NumPy arrays, and ``assert_in_place_equals_out_of_place``
checks that a layer gives the same values when its top is its bottom.

The golden cases (``../shared/caffe-reference/golden``) are outputs of the real
BVLC Caffe 1.0; ``check_golden_layer`` and ``check_golden_net`` rebuild each
case as a caffeine Net and compare every array within a tolerance relative to
the array's largest magnitude.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import backend
from .proto import caffe_pb2
from .backend import set_random_seed
from .blob import Blob
from .cli import run as cli_run
from .layer import create_layer
from .net import Net


# -- locating ../shared ------------------------------------------------------------
def shared_dir():
    """The shared reference folder, or None when absent (tests then skip)."""
    env = os.environ.get('CAFFEINE_SHARED')
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve()
    cands += [here.parents[2] / 'shared', here.parents[1] / 'shared', Path.cwd().parent / 'shared']
    for c in cands:
        if (c / 'caffe-reference').is_dir():
            return c
    return None


def golden_dir():
    s = shared_dir()
    return s / 'caffe-reference' / 'golden' if s else None


def golden_index():
    g = golden_dir()
    if g is None or not (g / 'index.json').exists():
        return {'layers': {}, 'nets': {}, 'solvers': {}}
    with open(g / 'index.json') as f:
        return json.load(f)


def golden_cases(type_name=None, kind='layers'):
    """Names of the golden cases (of one layer type, if given); [] without ../shared."""
    idx = golden_index().get(kind, {})
    if type_name is None:
        return sorted(idx)
    return sorted(k for k, v in idx.items() if v.get('type') == type_name)


def load_golden(case, kind='layers'):
    g = golden_dir()
    if g is None:
        import pytest
        pytest.skip('../shared (golden cases) not present')
    return np.load(g / kind / (case + '.npz'))


# -- building layers ---------------------------------------------------------------
def make_layer(layer_text, phase=caffe_pb2.TRAIN):
    """A layer from the text of one LayerParameter (name defaults to 'layer')."""
    from google.protobuf import text_format
    lp = caffe_pb2.LayerParameter()
    if isinstance(layer_text, caffe_pb2.LayerParameter):
        lp.CopyFrom(layer_text)
    else:
        text_format.Merge(layer_text, lp)
    if not lp.name:
        lp.name = 'layer'
    if not lp.HasField('phase'):
        lp.phase = phase
    return create_layer(lp, phase)


def blobs_from_arrays(*arrays):
    out = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float32)
        b = Blob(a.shape)
        b.data[...] = a
        out.append(b)
    return out


def setup_layer(layer_text, *bottoms, ntop=1, phase=caffe_pb2.TRAIN, params=None, in_place=False):
    """(layer, bottom, top): the layer of ``layer_text`` set up on Blobs holding the
    arrays ``bottoms``, with ``ntop`` new tops (or the bottoms themselves when
    ``in_place``), its parameter blobs set to ``params`` where given."""
    layer = make_layer(layer_text, phase)
    bottom = blobs_from_arrays(*bottoms)
    top = bottom if in_place else [Blob() for _ in range(ntop)]
    layer.SetUp(bottom, top)
    for b, v in zip(layer.blobs, params or ()):
        b.data[...] = v
    return layer, bottom, top


def forward_layer(layer_text, *bottoms, **kw):
    """:func:`setup_layer`, then one forward pass; returns (layer, bottom, top)."""
    layer, bottom, top = setup_layer(layer_text, *bottoms, **kw)
    layer.Forward(bottom, top)
    return layer, bottom, top


def backward_layer(layer, bottom, top, *top_diffs, propagate_down=None, zero_param_diffs=False):
    """One backward pass: the tops' diffs set to ``top_diffs`` (left as they are when
    none is given: a loss layer's weight), the parameter diffs zeroed first if asked
    (they accumulate), every bottom propagated unless ``propagate_down`` says
    otherwise.  Returns NumPy copies of the bottoms' diffs."""
    for t, d in zip(top, top_diffs):
        t.diff[...] = d
    if zero_param_diffs:
        for b in layer.blobs:
            b.diff[...] = 0
    layer.Backward(top, list(propagate_down or [True] * len(bottom)), bottom)
    return [backend.to_host(b.xdiff).copy() for b in bottom]


def assert_in_place_equals_out_of_place(layer_text, bottom, top_diff, phase=caffe_pb2.TRAIN, seed=None,
                                        top_rtol=0.0, rtol=0.0, atol=0.0):
    """Run a one-bottom, one-top layer on the array ``bottom`` twice, with a new top and
    in place (top = bottom), forward then backward with ``top_diff``, with the same
    parameters (and random seed, when given), and assert the same top (within
    ``top_rtol``; exactly by default), bottom diff and parameter diffs (within
    ``rtol``/``atol``; exactly by default).  Returns the layer run in place."""
    runs, params = [], None
    for in_place in (False, True):
        if seed is not None:
            set_random_seed(seed)
        layer, b, t = setup_layer(layer_text, bottom, phase=phase, params=params, in_place=in_place)
        params = [p.data.copy() for p in layer.blobs]
        layer.Forward(b, t)
        y = t[0].data.copy()
        dx, = backward_layer(layer, b, t, top_diff)
        runs.append((y, dx, [p.data.copy() for p in layer.blobs], [p.diff.copy() for p in layer.blobs]))
    (y, dx, pv, pd), (y2, dx2, pv2, pd2) = runs
    np.testing.assert_allclose(y2, y, rtol=top_rtol, atol=0, err_msg='top, in place')
    np.testing.assert_allclose(dx2, dx, rtol=rtol, atol=atol, err_msg='bottom diff, in place')
    for i, (a, a2, d, d2) in enumerate(zip(pv, pv2, pd, pd2)):
        np.testing.assert_allclose(a2, a, rtol=rtol, atol=atol, err_msg='param %d, in place' % i)
        np.testing.assert_allclose(d2, d, rtol=rtol, atol=atol, err_msg='param %d diff, in place' % i)
    return layer


def assert_close(actual, expected, rtol=1e-4, name=''):
    """|actual - expected| <= rtol * max(|expected|, 1e-..), element-wise, relative to the array's largest magnitude."""
    actual = np.asarray(backend.to_host(actual), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.size == expected.size and actual.shape != expected.shape:
        actual = actual.reshape(expected.shape)
    assert actual.shape == expected.shape, '%s: shape %s != expected %s' % (name, actual.shape, expected.shape)
    scale = max(float(np.abs(expected).max()) if expected.size else 0.0, 1e-30)
    err = float(np.abs(actual - expected).max()) if expected.size else 0.0
    assert err <= rtol * scale or err <= 1e-7, (
        '%s: max abs error %.3g exceeds %.1g x max|expected| (%.3g)' % (name, err, rtol, scale))
    return err / scale


# -- Caffe's GradientChecker ----------------------------------------------------------
class GradientChecker:
    """Finite-difference gradient checking, as Caffe's GradientChecker.

    The objective is half the sum of squares of all tops (``check_gradient``)
    or twice one top element (``check_gradient_exhaustive``/``_eltwise``);
    analytic gradients from Backward are compared with central differences of
    step ``stepsize``; an element passes when the difference is within
    ``threshold * max(|analytic|, |estimate|, 1)``.  Values within
    ``kink_range`` of ``kink`` (e.g. ReLU at 0) are not checked.
    """

    def __init__(self, stepsize=1e-2, threshold=1e-3, seed=1701, kink=0.0, kink_range=-1.0):
        self.stepsize = stepsize
        self.threshold = threshold
        self.seed = seed
        self.kink = kink
        self.kink_range = kink_range

    def _obj_and_gradient(self, top, top_id, top_data_id):
        loss = 0.0
        if top_id < 0:
            for t in top:
                d = backend.to_host(t.xdata).astype(np.float64)
                t.diff[...] = t.data
                loss += float((d * d).sum())
            return loss / 2.0
        for t in top:
            t.diff[...] = 0
        w = 2.0
        loss = float(top[top_id].data.ravel()[top_data_id]) * w
        top[top_id].diff.ravel()[top_data_id] = w
        return loss

    def check_gradient_single(self, layer, bottom, top, check_bottom, top_id, top_data_id, element_wise=False):
        if element_wise:
            assert len(layer.blobs) == 0, 'element-wise check of a layer with parameters'
            for b in bottom:
                assert b.count == top[top_id].count
        to_check = []
        propagate_down = [check_bottom == -1] * len(bottom)
        for p in layer.blobs:
            p.diff[...] = 0
            to_check.append(p)
        if check_bottom == -1:
            to_check += list(bottom)
        elif check_bottom >= 0:
            to_check.append(bottom[check_bottom])
            propagate_down[check_bottom] = True
        backend.set_random_seed(self.seed)
        layer.Forward(bottom, top)
        self._obj_and_gradient(top, top_id, top_data_id)
        layer.Backward(top, propagate_down, bottom)
        computed = [np.array(backend.to_host(b.xdiff), dtype=np.float64).ravel() for b in to_check]
        failures = []
        for bi, blob in enumerate(to_check):
            for feat in range(blob.count):
                est = 0.0
                if not element_wise or feat == top_data_id:
                    orig = float(blob.data.ravel()[feat])
                    blob.data.ravel()[feat] = orig + self.stepsize
                    backend.set_random_seed(self.seed)
                    layer.Forward(bottom, top)
                    pos = self._obj_and_gradient(top, top_id, top_data_id)
                    blob.data.ravel()[feat] = orig - self.stepsize
                    backend.set_random_seed(self.seed)
                    layer.Forward(bottom, top)
                    neg = self._obj_and_gradient(top, top_id, top_data_id)
                    blob.data.ravel()[feat] = orig
                    est = (pos - neg) / self.stepsize / 2.0
                comp = computed[bi][feat]
                feature = float(blob.data.ravel()[feat])
                if self.kink - self.kink_range > abs(feature) or abs(feature) > self.kink + self.kink_range:
                    scale = max(abs(comp), abs(est), 1.0)
                    if abs(comp - est) > self.threshold * scale:
                        failures.append('blob %d (%s) element %d: analytic %.6g vs numeric %.6g'
                                        % (bi, 'param' if bi < len(layer.blobs) else 'bottom', feat, comp, est))
        if failures:
            raise AssertionError('gradient check failed for top %d element %d (%d mismatches): %s'
                                 % (top_id, top_data_id, len(failures), '; '.join(failures[:5])))

    def check_gradient(self, layer, bottom, top, check_bottom=-1):
        layer.SetUp(bottom, top)
        self.check_gradient_single(layer, bottom, top, check_bottom, -1, -1)

    def check_gradient_exhaustive(self, layer, bottom, top, check_bottom=-1):
        layer.SetUp(bottom, top)
        assert len(top) > 0, 'exhaustive mode needs at least one top'
        for i in range(len(top)):
            for j in range(top[i].count):
                self.check_gradient_single(layer, bottom, top, check_bottom, i, j)

    def check_gradient_eltwise(self, layer, bottom, top):
        layer.SetUp(bottom, top)
        assert len(top) > 0
        for i in range(len(top)):
            for j in range(top[i].count):
                self.check_gradient_single(layer, bottom, top, -1, i, j, element_wise=True)


# -- golden layer cases ------------------------------------------------------------
def run_golden_layer(case):
    """Run one golden layer case in caffeine; returns (npz, net)."""
    z = load_golden(case, 'layers')
    phase = caffe_pb2.TRAIN if str(z['phase']) == 'TRAIN' else caffe_pb2.TEST
    net = Net(str(z['prototxt']), phase)
    for k in z.files:
        if k.startswith('bottom:'):
            net.blobs[k[7:]].data[...] = z[k].reshape(net.blobs[k[7:]].shape)
    layer = net.layer_dict['layer']
    for k in z.files:
        if k.startswith('param:'):
            layer.blobs[int(k[6:])].data[...] = z[k]
    net.forward()
    return z, net


def check_golden_layer(case, rtol=1e-4):
    """Assert caffeine reproduces golden layer case ``case`` (tops, diffs, params)."""
    z, net = run_golden_layer(case)
    layer = net.layer_dict['layer']
    for k in z.files:
        if k.startswith('top:'):
            assert_close(net.blobs[k[4:]].xdata, z[k], rtol, '%s %s' % (case, k))
        elif k.startswith('param_after_forward:'):
            assert_close(layer.blobs[int(k.split(':')[1])].xdata, z[k], rtol, '%s %s' % (case, k))
    if not any(k.startswith('top_diff:') for k in z.files):
        return net
    for k in z.files:
        if k.startswith('top_diff:'):
            net.blobs[k[9:]].diff[...] = z[k]
    for p in layer.blobs:
        p.diff[...] = 0
    for lname, other in net.layer_dict.items():
        if lname != 'layer':
            for p in other.blobs:
                p.diff[...] = 0
    net.backward_from_to(len(net.layers) - 1, 0)
    for k in z.files:
        if k.startswith('bottom_diff:'):
            name = k[12:]
            blob = net.blobs.get(name + '_g', net.blobs[name])
            assert_close(blob.xdiff, z[k], rtol, '%s %s' % (case, k))
        elif k.startswith('param_diff:'):
            assert_close(layer.blobs[int(k.split(':')[1])].xdiff, z[k], rtol, '%s %s' % (case, k))
    return net


# -- golden net cases --------------------------------------------------------------
def _golden_input(rng, shape, kind):
    if kind == 'gauss':
        return rng.randn(*shape).astype(np.float32)
    if kind == 'uniform01':
        return rng.uniform(0, 1, shape).astype(np.float32)
    if kind == 'binary':
        return rng.randint(0, 2, shape).astype(np.float32)
    if kind.startswith('label:'):
        return rng.randint(0, int(kind.split(':')[1]), shape).astype(np.float32)
    raise ValueError('unknown golden input kind %r' % kind)


def run_golden_net(case):
    """Build golden net ``case``, fill inputs and params as recorded, run forward (and backward)."""
    z = load_golden(case, 'nets')
    meta = golden_index()['nets'][case]
    phase = caffe_pb2.TRAIN if meta['phase'] == 'TRAIN' else caffe_pb2.TEST
    net = Net(str(z['prototxt']), phase)
    rng = np.random.RandomState(3)
    for name, (shape, kind) in meta['inputs'].items():
        v = _golden_input(rng, shape, kind)
        net.blobs[name].data[...] = v.reshape(net.blobs[name].shape)
    for lname, blobs in net.params.items():
        for i, b in enumerate(blobs):
            v = (rng.randn(*b.shape) * 0.1).astype(np.float32)
            key = 'param:%s:%d' % (lname, i)
            if key in z.files:
                v = z[key]
            b.data[...] = v.reshape(b.shape)
    net.forward()
    return z, meta, net


def check_golden_net(case, rtol=1e-4):
    z, meta, net = run_golden_net(case)
    for k in z.files:
        if k.startswith('param_abs_sum:'):
            _, lname, i = k.rsplit(':', 2)
            got = float(np.abs(net.params[lname][int(i)].data.astype(np.float64)).sum())
            assert abs(got - float(z[k])) <= 1e-6 * abs(float(z[k])) + 1e-6, '%s: regenerated params differ (%s)' % (case, k)
    for k in z.files:
        if k.startswith('blob:'):
            assert_close(net.blobs[k[5:]].xdata, z[k], rtol, '%s %s' % (case, k))
    if meta.get('backward'):
        for p in net._params:
            p.diff[...] = 0
        net.backward_from_to(len(net.layers) - 1, 0)
        for k in z.files:
            if k.startswith('param_diff:'):
                _, lname, i = k.rsplit(':', 2)
                assert_close(net.params[lname][int(i)].xdiff, z[k], rtol, '%s %s' % (case, k))
    return net


def _data_layer_shapes(lp, batch):
    """The (data, label) shapes a data layer would produce, at ``batch``; None for other layers."""
    t = lp.type
    if t == 'Data' or t == 'ImageData' or t == 'WindowData':
        crop = lp.transform_param.crop_size or lp.window_data_param.crop_size
        src = (lp.data_param.source or lp.image_data_param.source or lp.window_data_param.source).lower()
        if 'siamese' in src:
            c, h, w = 2, 28, 28  # image pairs stacked as channels
        elif 'mnist' in src:
            c, h, w = 1, 28, 28
        elif 'cifar' in src:
            c, h, w = 3, 32, 32
        else:
            c, h, w = 3, 256, 256
        if crop:
            h = w = crop
        return [(batch, c, h, w), (batch,)]
    if t == 'HDF5Data':
        return [(batch, 4), (batch,)]
    if t == 'MemoryData':
        p = lp.memory_data_param
        return [(batch, p.channels, p.height, p.width), (batch,)]
    return None


def data_layers_as_inputs(param, batch=2, input_batch=None):
    """A copy of the NetParameter with its data layers (Data, ImageData, WindowData,
    HDF5Data, MemoryData) replaced by Input layers of the shapes they would produce
    (guessed from the source name: MNIST, CIFAR or 256x256 images, cropped), so that
    nets whose data lives elsewhere still build.  ``input_batch`` also sets the batch
    of the net's own Input layers."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type == 'Input' and input_batch is not None:
            for s in lp.input_param.shape:
                s.dim[0] = input_batch
        shapes = _data_layer_shapes(lp, batch)
        if shapes is None:
            continue
        tops = list(lp.top)
        include = [r for r in lp.include]
        name = lp.name
        lp.Clear()
        lp.name, lp.type = name, 'Input'
        lp.top.extend(tops)
        lp.include.extend(include)
        for s in shapes[:len(tops)]:
            lp.input_param.shape.add().dim.extend(s)
    return out


# -- the command line ----------------------------------------------------------------------
def run_cli(args, capsys):
    """Run the ``caffeine`` console entry point in-process on ``args``; returns
    (exit status, stdout, stderr) as captured by pytest's ``capsys``."""
    try:
        cli_run([str(a) for a in args])
    except SystemExit as e:
        out = capsys.readouterr()
        return e.code, out.out, out.err
    raise AssertionError('caffeine %s returned without an exit status' % ' '.join(map(str, args)))
