"""Recurrent layers (RNN, LSTM, LSTMUnit): the specification, as BVLC Caffe 1.0 computes them.

Caffe builds RNN and LSTM as unrolled nets; caffeine computes them directly
but with Caffe's parameter blobs (order and shapes), so these tests pin both
the arithmetic (against a plain NumPy reference written from the formulas)
and the parameter layout, plus Caffe's state carry-over between batches, the
exposed hidden state, the gradient check and the golden cases.
"""
import numpy as np
import pytest

from caffeine.blob import Blob
from caffeine.errors import LayerError
from caffeine.testing import (GradientChecker, blobs_from_arrays, check_golden_layer, golden_cases, make_layer,
                              setup_layer)

UNIFORM = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 }'


def sig(x):
    return 1 / (1 + np.exp(-x))


def lstm_ref(x, cont, W_xc, b_c, W_hc, xs=None, W_s=None, h0=None, c0=None):
    """Caffe's unrolled LSTM, step by step; returns (h for all t, h_T, c_T)."""
    T, N = cont.shape
    H = W_hc.shape[1]
    x = x.reshape(T, N, -1).astype(np.float64)
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).astype(np.float64)
    c = np.zeros((N, H)) if c0 is None else c0.reshape(N, H).astype(np.float64)
    out = []
    for t in range(T):
        k = cont[t][:, None]
        g = x[t] @ W_xc.T + b_c + (k * h) @ W_hc.T
        if xs is not None:
            g = g + xs.reshape(N, -1) @ W_s.T
        i, f, o, gg = sig(g[:, :H]), k * sig(g[:, H:2 * H]), sig(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
        c = f * c + i * gg
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def rnn_ref(x, cont, W_xh, b_h, W_hh, W_ho, b_o, xs=None, W_s=None, h0=None):
    T, N = cont.shape
    H = W_hh.shape[0]
    x = x.reshape(T, N, -1).astype(np.float64)
    h = np.zeros((N, H)) if h0 is None else h0.reshape(N, H).astype(np.float64)
    out = []
    for t in range(T):
        pre = x[t] @ W_xh.T + b_h + (cont[t][:, None] * h) @ W_hh.T
        if xs is not None:
            pre = pre + xs.reshape(N, -1) @ W_s.T
        h = np.tanh(pre)
        out.append(np.tanh(h @ W_ho.T + b_o))
    return np.stack(out), h


def params(layer):
    return [b.data.astype(np.float64) for b in layer.blobs]


def seq_data(T=3, N=2, D=3, seed=0):
    r = np.random.RandomState(seed)
    x = r.randn(T, N, D).astype(np.float32)
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    if T > 2:
        cont[2, 1] = 0                     # stream 1 starts a new sequence at t = 2
    return x, cont


# -- LSTMUnit ---------------------------------------------------------------------------
def test_lstm_unit_forward_backward(mode):
    r = np.random.RandomState(1)
    N, D = 3, 2
    c_prev = r.randn(1, N, D).astype(np.float32)
    X = r.randn(1, N, 4 * D).astype(np.float32)
    cont = np.array([[1, 0, 1]], np.float32)
    layer, bottom, top = setup_layer('type: "LSTMUnit"', c_prev, X, cont, ntop=2)
    layer.Forward(bottom, top)
    g = X[0].astype(np.float64)
    i, f, o, gg = sig(g[:, :D]), cont[0][:, None] * sig(g[:, D:2 * D]), sig(g[:, 2 * D:3 * D]), np.tanh(g[:, 3 * D:])
    c = f * c_prev[0] + i * gg
    h = o * np.tanh(c)
    np.testing.assert_allclose(top[0].data[0], c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], h, rtol=1e-5, atol=1e-6)
    dc, dh = r.randn(N, D), r.randn(N, D)
    top[0].diff[0] = dc
    top[1].diff[0] = dh
    layer.Backward(top, [True, True, False], bottom)
    ct = dc + dh * o * (1 - np.tanh(c) ** 2)
    np.testing.assert_allclose(bottom[0].diff[0], ct * f, rtol=1e-5, atol=1e-6)
    want = np.concatenate([ct * gg * i * (1 - i), ct * c_prev[0] * f * (1 - f),
                           dh * np.tanh(c) * o * (1 - o), ct * i * (1 - gg * gg)], 1)
    np.testing.assert_allclose(bottom[1].diff[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(LayerError, match='sequence indicators'):
        layer.Backward(top, [True, True, True], bottom)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


def test_lstm_unit_gradient(mode):
    r = np.random.RandomState(2)
    arrays = [r.randn(1, 2, 3), r.randn(1, 2, 12), np.array([[1, 0]])]
    checker = GradientChecker(1e-2, 1e-2, 1701)
    for i in (0, 1):
        checker.check_gradient_exhaustive(make_layer('type: "LSTMUnit"'), blobs_from_arrays(*arrays), [Blob(), Blob()], i)


def test_lstm_unit_shape_errors(mode):
    with pytest.raises(LayerError, match=r'\(LSTMUnit\).*gates.*\(1, N, 4D\)'):
        setup_layer('type: "LSTMUnit"', np.zeros((1, 2, 3)), np.zeros((1, 2, 11)), np.zeros((1, 2)), ntop=2)
    with pytest.raises(LayerError, match='c_prev.*\\(1, N, D\\)'):
        setup_layer('type: "LSTMUnit"', np.zeros((2, 2, 3)), np.zeros((1, 2, 12)), np.zeros((1, 2)), ntop=2)
    with pytest.raises(LayerError, match='cont'):
        setup_layer('type: "LSTMUnit"', np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.zeros((2, 2)), ntop=2)


# -- LSTM ------------------------------------------------------------------------------
def test_lstm_parameter_layout_matches_caffe():
    x, cont = seq_data()
    layer, _, _ = setup_layer('type: "LSTM" recurrent_param { num_output: 5 %s }' % UNIFORM, x, cont)
    assert [b.shape for b in layer.blobs] == [(20, 3), (20,), (20, 5)]     # W_xc, b_c, W_hc
    xs = np.zeros((2, 4, 2), np.float32)
    layer, _, _ = setup_layer('type: "LSTM" recurrent_param { num_output: 5 }', x, cont, xs)
    assert [b.shape for b in layer.blobs] == [(20, 3), (20,), (20, 8), (20, 5)]   # + W_xc_static
    assert all(not b.data.any() for b in layer.blobs)                      # default filler: constant 0


@pytest.mark.parametrize('static', [False, True])
def test_lstm_forward_backward_matches_reference(mode, static):
    x, cont = seq_data(T=4, N=2, D=3)
    xs = np.random.RandomState(3).randn(2, 2).astype(np.float32)
    arrays = [x, cont] + ([xs] if static else [])
    layer, bottom, top = setup_layer('type: "LSTM" recurrent_param { num_output: 3 %s }' % UNIFORM, *arrays)
    layer.Forward(bottom, top)
    P = params(layer)
    W_s = P[2] if static else None
    want, _, _ = lstm_ref(x, cont, P[0], P[1], P[-1], xs if static else None, W_s)
    assert top[0].shape == (4, 2, 3)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('static', [False, True])
def test_lstm_gradient(mode, static):
    x, cont = seq_data(T=3, N=2, D=2)
    xs = np.random.RandomState(4).randn(2, 2).astype(np.float32)
    arrays = [x, cont] + ([xs] if static else [])
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 %s }' % UNIFORM)
    bottom = blobs_from_arrays(*arrays)
    checker = GradientChecker(1e-2, 1e-2, 1701)
    checker.check_gradient(layer, bottom, [Blob()], 0)
    if static:
        checker.check_gradient(layer, bottom, [Blob()], 2)


def test_lstm_carries_state_between_forward_passes(mode):
    """Without expose_hidden the final state of a pass starts the next one (Caffe)."""
    x, cont = seq_data(T=2, N=2, D=3)
    layer, bottom, top = setup_layer('type: "LSTM" recurrent_param { num_output: 3 %s }' % UNIFORM, x, cont)
    layer.Forward(bottom, top)
    P = params(layer)
    _, hT, cT = lstm_ref(x, cont, P[0], P[1], P[2])
    cont2 = np.ones((2, 2), np.float32)                 # continue both sequences
    bottom[1].data[...] = cont2
    layer.Forward(bottom, top)
    want, _, _ = lstm_ref(x, cont2, P[0], P[1], P[2], h0=hT, c0=cT)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)


def test_lstm_expose_hidden(mode):
    x, cont = seq_data(T=3, N=2, D=3)
    cont[0] = 1                                         # use the given initial state
    r = np.random.RandomState(5)
    h0, c0 = r.randn(1, 2, 3).astype(np.float32), r.randn(1, 2, 3).astype(np.float32)
    text = 'type: "LSTM" recurrent_param { num_output: 3 expose_hidden: true %s }' % UNIFORM
    layer, bottom, top = setup_layer(text, x, cont, h0, c0, ntop=3)
    assert not layer.static_input and len(layer.blobs) == 3
    layer.Forward(bottom, top)
    P = params(layer)
    want, hT, cT = lstm_ref(x, cont, P[0], P[1], P[2], h0=h0, c0=c0)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], hT, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[2].data[0], cT, rtol=1e-5, atol=1e-6)
    # Caffe does not back-propagate across batches: no gradient reaches h_0 / c_0
    top[0].diff[...] = 1
    bottom[2].diff[...] = 7
    layer.Backward(top, [True, False, True, True], bottom)
    assert not bottom[2].diff.any() and not bottom[3].diff.any()
    # with expose_hidden there is no state carried over
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)


def test_lstm_errors(mode):
    x, cont = seq_data()
    with pytest.raises(LayerError, match=r"layer 'layer' \(LSTM\).*num_output must be positive"):
        setup_layer('type: "LSTM"', x, cont)
    with pytest.raises(LayerError, match='cont.*must have shape'):
        setup_layer('type: "LSTM" recurrent_param { num_output: 2 }', x, cont[:2])
    with pytest.raises(LayerError, match='at least 2 axes'):
        setup_layer('type: "LSTM" recurrent_param { num_output: 2 }', np.zeros(3), cont)
    with pytest.raises(LayerError, match='static input'):
        setup_layer('type: "LSTM" recurrent_param { num_output: 2 }', x, cont, np.zeros((3, 2)))
    with pytest.raises(LayerError, match='takes exactly 3 top'):
        setup_layer('type: "LSTM" recurrent_param { num_output: 2 expose_hidden: true }', x, cont, np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), ntop=1)
    with pytest.raises(LayerError, match='hidden state input shape'):
        setup_layer('type: "LSTM" recurrent_param { num_output: 2 expose_hidden: true }', x, cont, np.zeros((1, 2, 3)), np.zeros((1, 2, 2)), ntop=3)
    layer, bottom, top = setup_layer('type: "LSTM" recurrent_param { num_output: 2 }', x, cont)
    layer.Forward(bottom, top)
    with pytest.raises(LayerError, match='sequence indicators'):
        layer.Backward(top, [True, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1) and layer.allow_force_backward(2)


# -- RNN ------------------------------------------------------------------------------
def test_rnn_parameter_layout_matches_caffe():
    x, cont = seq_data()
    layer, _, _ = setup_layer('type: "RNN" recurrent_param { num_output: 4 }', x, cont)
    assert [b.shape for b in layer.blobs] == [(4, 3), (4,), (4, 4), (4, 4), (4,)]   # W_xh b_h W_hh W_ho b_o
    layer, _, _ = setup_layer('type: "RNN" recurrent_param { num_output: 4 }', x, cont, np.zeros((2, 5)))
    assert [b.shape for b in layer.blobs] == [(4, 3), (4,), (4, 5), (4, 4), (4, 4), (4,)]


@pytest.mark.parametrize('static', [False, True])
def test_rnn_forward_matches_reference(mode, static):
    x, cont = seq_data(T=4, N=2, D=3)
    xs = np.random.RandomState(6).randn(2, 2).astype(np.float32)
    arrays = [x, cont] + ([xs] if static else [])
    layer, bottom, top = setup_layer('type: "RNN" recurrent_param { num_output: 3 %s }' % UNIFORM, *arrays)
    layer.Forward(bottom, top)
    P = params(layer)
    k = 3 if static else 2
    want, _ = rnn_ref(x, cont, P[0], P[1], P[k], P[k + 1], P[k + 2], xs if static else None, P[2] if static else None)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('static', [False, True])
def test_rnn_gradient(mode, static):
    x, cont = seq_data(T=3, N=2, D=2)
    xs = np.random.RandomState(7).randn(2, 2).astype(np.float32)
    arrays = [x, cont] + ([xs] if static else [])
    layer = make_layer('type: "RNN" recurrent_param { num_output: 2 %s }' % UNIFORM)
    bottom = blobs_from_arrays(*arrays)
    checker = GradientChecker(1e-2, 1e-2, 1701)
    checker.check_gradient(layer, bottom, [Blob()], 0)
    if static:
        checker.check_gradient(layer, bottom, [Blob()], 2)


def test_rnn_state_and_expose_hidden(mode):
    x, cont = seq_data(T=2, N=2, D=3)
    layer, bottom, top = setup_layer('type: "RNN" recurrent_param { num_output: 3 %s }' % UNIFORM, x, cont)
    layer.Forward(bottom, top)
    P = params(layer)
    _, hT = rnn_ref(x, cont, *P)
    bottom[1].data[...] = 1
    layer.Forward(bottom, top)
    want, _ = rnn_ref(x, np.ones((2, 2)), *P, h0=hT)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)

    h0 = np.random.RandomState(8).randn(1, 2, 3).astype(np.float32)
    text = 'type: "RNN" recurrent_param { num_output: 3 expose_hidden: true %s }' % UNIFORM
    layer, bottom, top = setup_layer(text, x, np.ones((2, 2)), h0, ntop=2)
    layer.Forward(bottom, top)
    P = params(layer)
    want, hT = rnn_ref(x, np.ones((2, 2)), *P, h0=h0)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(top[1].data[0], hT, rtol=1e-5, atol=1e-6)


def test_param_diffs_accumulate(mode):
    x, cont = seq_data()
    layer, bottom, top = setup_layer('type: "RNN" recurrent_param { num_output: 2 %s }' % UNIFORM, x, cont)
    layer.Forward(bottom, top)
    top[0].diff[...] = 1
    layer.Backward(top, [True, False], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    layer.Backward(top, [True, False], bottom)
    for b, d in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * d, rtol=1e-5, atol=1e-7)


def test_loaded_weights_are_kept_and_checked():
    x, cont = seq_data()
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 }')
    layer.blobs = blobs_from_arrays(np.ones((8, 3)), np.ones(8), np.ones((8, 2)))
    layer.SetUp(blobs_from_arrays(x, cont), [Blob()])
    assert layer.blobs[0].data.all()
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 }')
    layer.blobs = blobs_from_arrays(np.ones((8, 4)), np.ones(8), np.ones((8, 2)))
    with pytest.raises(LayerError, match='parameter blob shapes'):
        layer.SetUp(blobs_from_arrays(x, cont), [Blob()])


# -- golden cases (BVLC Caffe 1.0) -------------------------------------------------------
GOLDEN = [c for t in ('RNN', 'LSTM', 'LSTMUnit') for c in golden_cases(t)]


@pytest.mark.parametrize('case', GOLDEN or [pytest.param('none', marks=pytest.mark.skip(reason='../shared absent'))])
def test_golden(mode, case):
    check_golden_layer(case, rtol=1e-3)
