"""Neuron layers: element-wise functions, as specified by Caffe's NeuronLayer family.

For each layer: the forward values against NumPy, the gradient against NumPy and
against finite differences (Caffe's GradientChecker), in-place runs equal to
out-of-place ones, the golden cases recorded with BVLC Caffe, and the errors on
bad parameters.  The ``mode`` fixture (tests/conftest.py) runs every test on
NumPy and, where CuPy and a GPU are present, on CuPy.
"""
import numpy as np
import pytest

import caffeine
from caffeine import backend
from caffeine.blob import Blob
from caffeine.errors import LayerError
from caffeine.testing import (GradientChecker, assert_in_place_equals_out_of_place, backward_layer,
                              blobs_from_arrays, check_golden_layer, forward_layer, golden_cases, make_layer)

TRAIN, TEST = caffeine.TRAIN, caffeine.TEST
SHAPE = (2, 3, 2, 3)


def gauss(shape=SHAPE, seed=0, away_from=(), margin=0.05):
    """Gaussian float32 values, nudged at least ``margin`` away from the given kinks."""
    x = np.random.RandomState(seed).randn(*shape).astype(np.float32)
    for k in away_from:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, 2, -2) * margin
    return x


def positive(shape=SHAPE, seed=0, lo=0.2, hi=2.0):
    return np.random.RandomState(seed).uniform(lo, hi, shape).astype(np.float32)


def run(text, x, phase=TRAIN, dy=None):
    """Set up, forward and (with ``dy``) backward one layer; returns (y, dx, layer)."""
    layer, bottom, top = forward_layer(text, x, phase=phase)
    y = top[0].data.copy()
    if dy is None:
        return y, None, layer
    dx, = backward_layer(layer, bottom, top, dy)
    return y, dx, layer


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# name: (layer text, input, forward f(x), derivative f'(x), kinks for the gradient checker)
CASES = {
    'relu': ('type: "ReLU"', gauss(away_from=[0]),
             lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    'relu_leaky': ('type: "ReLU" relu_param { negative_slope: 0.1 }', gauss(away_from=[0]),
                   lambda x: np.where(x > 0, x, 0.1 * x), lambda x: np.where(x > 0, 1.0, 0.1)),
    'relu_negative_slope': ('type: "ReLU" relu_param { negative_slope: -0.5 }', gauss(away_from=[0]),
                            lambda x: np.where(x > 0, x, -0.5 * x), lambda x: np.where(x > 0, 1.0, -0.5)),
    'elu': ('type: "ELU" elu_param { alpha: 0.7 }', gauss(away_from=[0]),
            lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)), lambda x: np.where(x > 0, 1.0, 0.7 * np.exp(x))),
    'sigmoid': ('type: "Sigmoid"', gauss(), sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x))),
    'tanh': ('type: "TanH"', gauss(), np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    'absval': ('type: "AbsVal"', gauss(away_from=[0]), np.abs, np.sign),
    'bnll': ('type: "BNLL"', gauss() * 3, lambda x: np.log1p(np.exp(x)), sigmoid),
    'power_square': ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', gauss(),
                     lambda x: (1 + 0.5 * x) ** 2, lambda x: 2 * 0.5 * (1 + 0.5 * x)),
    'power_sqrt': ('type: "Power" power_param { power: 0.5 scale: 2 shift: 0.1 }', positive(),
                   lambda x: (0.1 + 2 * x) ** 0.5, lambda x: 0.5 * 2 * (0.1 + 2 * x) ** -0.5),
    'power_noshift': ('type: "Power" power_param { power: 3 scale: 1.5 }', gauss(away_from=[0], margin=0.3),
                      lambda x: (1.5 * x) ** 3, lambda x: 3 * 1.5 * (1.5 * x) ** 2),
    'power_linear': ('type: "Power" power_param { power: 1 scale: -2 shift: 0.5 }', gauss(),
                     lambda x: 0.5 - 2 * x, lambda x: np.full_like(x, -2.0)),
    'power_zero': ('type: "Power" power_param { power: 0 scale: 3 shift: 2 }', gauss(),
                   lambda x: np.ones_like(x), lambda x: np.zeros_like(x)),
    'power_scale_zero': ('type: "Power" power_param { power: 3 scale: 0 shift: 2 }', gauss(),
                         lambda x: np.full_like(x, 8.0), lambda x: np.zeros_like(x)),
    'exp_e': ('type: "Exp"', gauss(), np.exp, np.exp),
    'exp_base2': ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', gauss(),
                  lambda x: 2.0 ** (0.1 + 0.5 * x), lambda x: np.log(2) * 0.5 * 2.0 ** (0.1 + 0.5 * x)),
    'log_e': ('type: "Log"', positive(), np.log, lambda x: 1 / x),
    'log_base10': ('type: "Log" log_param { base: 10 scale: 2 shift: 1 }', positive(),
                   lambda x: np.log10(1 + 2 * x), lambda x: 2 / ((1 + 2 * x) * np.log(10))),
    'swish': ('type: "Swish" swish_param { beta: 1.5 }', gauss(),
              lambda x: x * sigmoid(1.5 * x),
              lambda x: sigmoid(1.5 * x) + 1.5 * x * sigmoid(1.5 * x) * (1 - sigmoid(1.5 * x))),
    'clip': ('type: "Clip" clip_param { min: -0.5 max: 0.7 }', gauss(away_from=[-0.5, 0.7]),
             lambda x: np.clip(x, -0.5, 0.7), lambda x: ((x >= -0.5) & (x <= 0.7)) * 1.0),
}
KINKED = {'relu', 'relu_leaky', 'relu_negative_slope', 'elu', 'absval', 'clip', 'power_noshift'}


@pytest.mark.parametrize('name', sorted(CASES))
def test_forward_and_backward_match_numpy(mode, name):
    text, x, f, df = CASES[name]
    dy = gauss(seed=1)
    y, dx, _ = run(text, x, dy=dy)
    np.testing.assert_allclose(y, f(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, dy * df(x.astype(np.float64)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('name', sorted(CASES))
def test_in_place_equals_out_of_place(mode, name):
    text, x, _, _ = CASES[name]
    assert_in_place_equals_out_of_place(text, x, gauss(seed=1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', sorted(CASES))
def test_gradient_finite_differences(mode, name):
    text, x, _, _ = CASES[name]
    if name.startswith('clip'):
        x = x[..., :2]  # keep it small; values stay away from both kinks
    kink = dict(kink=0.0, kink_range=0.02) if name in KINKED and name != 'clip' else {}
    checker = GradientChecker(1e-3 if name == 'power_noshift' else 1e-2, 1e-3, 1701, **kink)
    checker.check_gradient_eltwise(make_layer(text), blobs_from_arrays(x), [Blob()])


def test_sigmoid_is_computed_as_caffe_does(mode):
    # Caffe: 0.5 * tanh(0.5 x) + 0.5, which saturates to exactly 0 and 1
    x = np.array([-100, -20, 0, 20, 100], dtype=np.float32)
    y, _, _ = run('type: "Sigmoid"', x)
    np.testing.assert_allclose(y, [0, 2.06e-9, 0.5, 1, 1], atol=1e-8)
    assert y[0] == 0 and y[-1] == 1


def test_bnll_is_stable_for_large_inputs(mode):
    x = np.array([-200, -60, 0, 60, 200], dtype=np.float32)
    y, dx, _ = run('type: "BNLL"', x, dy=np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    np.testing.assert_allclose(y, [0, np.exp(-60.0), np.log(2), 60, 200], rtol=1e-5, atol=1e-30)
    # the gradient caps the exponent at Caffe's kBNLL_THRESHOLD = 50
    np.testing.assert_allclose(dx, [0, np.exp(-60.0), 0.5, 1, 1], rtol=1e-5, atol=1e-30)


# -- PReLU -----------------------------------------------------------------------
@pytest.mark.parametrize('shared', [False, True])
def test_prelu_forward_backward(mode, shared):
    x = gauss(away_from=[0])
    dy = gauss(seed=1)
    text = 'type: "PReLU" prelu_param { channel_shared: %s }' % ('true' if shared else 'false')
    layer = make_layer(text)
    bottom, top = blobs_from_arrays(x), [Blob()]
    layer.SetUp(bottom, top)
    assert layer.blobs[0].shape == (() if shared else (3,))
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)   # the default filler
    a = np.array(0.3, np.float32) if shared else np.array([0.3, -0.2, 1.5], np.float32)
    layer.blobs[0].data[...] = a
    layer.Forward(bottom, top)
    ab = a if shared else a.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(top[0].data, np.where(x > 0, x, ab * x), rtol=1e-6)
    top[0].diff[...] = dy
    layer.blobs[0].diff[...] = 1.0          # parameter gradients accumulate
    layer.Backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy * np.where(x > 0, 1, ab), rtol=1e-6)
    g = dy * np.where(x > 0, 0, x)
    want = g.sum() if shared else g.sum(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.blobs[0].diff, 1.0 + want, rtol=1e-5)


@pytest.mark.parametrize('shared', [False, True])
def test_prelu_gradient(mode, shared):
    x = gauss(shape=(2, 3, 2, 2), away_from=[0])
    layer = make_layer('type: "PReLU" prelu_param { channel_shared: %s filler { type: "uniform" min: -1 max: 1 } }'
                       % ('true' if shared else 'false'))
    GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.02).check_gradient_exhaustive(layer, blobs_from_arrays(x), [Blob()])


def test_prelu_in_place(mode):
    x, dy = gauss(away_from=[0]), gauss(seed=1)
    assert_in_place_equals_out_of_place('type: "PReLU" prelu_param { filler { type: "constant" value: 0.4 } }',
                                        x, dy, top_rtol=1e-6, rtol=1e-6)


def test_prelu_bad_parameters():
    with pytest.raises(LayerError, match=r"'layer' \(PReLU\).*2 axes"):
        make_layer('type: "PReLU"').SetUp(blobs_from_arrays(np.zeros(4)), [Blob()])


# -- Threshold -------------------------------------------------------------------
def test_threshold(mode):
    x = gauss()
    y, _, layer = run('type: "Threshold" threshold_param { threshold: 0.2 }', x)
    np.testing.assert_array_equal(y, (x > np.float32(0.2)).astype(np.float32))
    assert not layer.allow_force_backward(0)
    top = [Blob(SHAPE)]
    with pytest.raises(LayerError, match='Threshold'):
        layer.Backward(top, [True], blobs_from_arrays(x))


# -- Dropout ---------------------------------------------------------------------
def test_dropout_train_masks_and_scales(mode):
    x = positive(shape=(40, 50), lo=1.0)
    dy = gauss(shape=(40, 50), seed=1)
    caffeine.set_random_seed(5)
    y, dx, _ = run('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', x, dy=dy)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.03
    # the gradient goes through the same mask, with the same scale
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.7, 0), rtol=1e-6)


def test_dropout_is_repeatable_under_a_seed(mode):
    x = positive(shape=(10, 10))
    caffeine.set_random_seed(7)
    y1, _, _ = run('type: "Dropout"', x)
    caffeine.set_random_seed(7)
    y2, _, _ = run('type: "Dropout"', x)
    y3, _, _ = run('type: "Dropout"', x)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)


def test_dropout_test_phase_is_identity(mode):
    x, dy = gauss(), gauss(seed=1)
    y, dx, _ = run('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', x, phase=TEST, dy=dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)


def test_dropout_in_place_and_gradient(mode):
    x, dy = positive(), gauss(seed=1)
    assert_in_place_equals_out_of_place('type: "Dropout"', x, dy, seed=3)
    # the checker reseeds before every forward pass, so the mask repeats
    GradientChecker(1e-2, 1e-3, 1701).check_gradient_eltwise(make_layer('type: "Dropout"'),
                                                              blobs_from_arrays(x), [Blob()])


# -- bad parameters --------------------------------------------------------------
@pytest.mark.parametrize('text, match', [
    ('type: "Dropout" dropout_param { dropout_ratio: 1 }', r"\(Dropout\).*dropout_ratio"),
    ('type: "Dropout" dropout_param { dropout_ratio: -0.1 }', r"\(Dropout\).*dropout_ratio"),
    ('type: "Exp" exp_param { base: -2 }', r"\(Exp\).*base must be strictly positive"),
    ('type: "Exp" exp_param { base: 0 }', r"\(Exp\).*base"),
    ('type: "Log" log_param { base: 0 }', r"\(Log\).*base"),
    ('type: "Log" log_param { base: 1 }', r"\(Log\).*log\(base\) = 0"),
    ('type: "Clip" clip_param { min: 1 max: 0 }', r"\(Clip\).*min 1 is greater than max 0"),
])
def test_bad_parameters(text, match):
    with pytest.raises(LayerError, match=match):
        make_layer(text).SetUp(blobs_from_arrays(np.ones(SHAPE)), [Blob()])


def test_wrong_blob_counts():
    with pytest.raises(LayerError, match=r"\(ReLU\).*exactly 1 bottom"):
        make_layer('type: "ReLU"').SetUp(blobs_from_arrays(np.ones(3), np.ones(3)), [Blob()])
    with pytest.raises(LayerError, match=r"\(TanH\).*exactly 1 top"):
        make_layer('type: "TanH"').SetUp(blobs_from_arrays(np.ones(3)), [Blob(), Blob()])


# -- golden cases recorded with BVLC Caffe ------------------------------------------
NEURON_TYPES = ['ReLU', 'PReLU', 'ELU', 'Sigmoid', 'TanH', 'AbsVal', 'BNLL', 'Power', 'Exp', 'Log',
                'Threshold', 'Dropout', 'Swish', 'Clip']


@pytest.mark.parametrize('case', [c for t in NEURON_TYPES for c in golden_cases(t)])
def test_golden(mode, case):
    check_golden_layer(case, rtol=1e-4)


def test_dropout_net_backward_in_train(mode):
    # through a Net: the mask of the forward pass is the one used by the backward pass
    net = caffeine.Net('''
        force_backward: true
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 5 } } }
        layer { name: "d" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.5 } }
    ''', TRAIN)
    net.blobs['x'].data[...] = 1.0
    net.forward()
    y = net.blobs['x'].data.copy()
    assert set(np.unique(y)) <= {0.0, 2.0}
    net.blobs['x'].diff[...] = 1.0
    net.backward()
    np.testing.assert_array_equal(net.blobs['x'].diff, y)
    assert backend.mode() == mode
