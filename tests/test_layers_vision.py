"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, Crop.

Each layer is specified by a direct NumPy reference written from Caffe's formulas
(float64, loops over kernel offsets or output positions on small shapes), Caffe's
finite-difference gradient checker, the golden cases recorded with BVLC Caffe 1.0,
and its errors on bad parameters.  The ``mode`` fixture (tests/conftest.py) runs
each test on NumPy and, where CuPy and a GPU are present, on CuPy.
"""
import itertools
import math

import numpy as np
import pytest

import caffeine
from caffeine import backend
from caffeine.blob import Blob
from caffeine.errors import LayerError
from caffeine import workspace as workspace_mod
from caffeine.layers import conv_engine as engine_mod
from caffeine.testing import (GradientChecker, backward_layer, blobs_from_arrays, check_golden_layer,
                              forward_layer, golden_cases, make_layer)

TRAIN, TEST = caffeine.TRAIN, caffeine.TEST
F64 = np.float64


def gauss(shape, seed=0, scale=1.0):
    return (np.random.RandomState(seed).randn(*shape) * scale).astype(np.float32)


def distinct(shape, seed=0):
    """Values with no ties (so a maximum is unique and finite differences stay away from kinks)."""
    n = int(np.prod(shape))
    v = np.random.RandomState(seed).permutation(n).astype(np.float32) / n * 4 - 2
    return v.reshape(shape)


# =============================================================================
# References (float64), from Caffe's definitions
# =============================================================================
def ref_conv(x, W, b, stride, pad, dil, group):
    x = x.astype(F64)
    N, C = x.shape[:2]
    K = W.shape[2:]
    nd = len(K)
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, p, d, k, st in zip(x.shape[2:], pad, dil, K, stride)]
    M = W.shape[0]
    Cg, Mg = C // group, M // group
    y = np.zeros((N, M) + tuple(out))
    for ko in itertools.product(*[range(k) for k in K]):
        sl = tuple(slice(k * d, k * d + st * (o - 1) + 1, st) for k, d, st, o in zip(ko, dil, stride, out))
        v = xpad[(slice(None), slice(None)) + sl]
        for g in range(group):
            w = W[(slice(g * Mg, (g + 1) * Mg), slice(None)) + ko].astype(F64)
            y[:, g * Mg:(g + 1) * Mg] += np.einsum('mc,nc...->nm...', w, v[:, g * Cg:(g + 1) * Cg])
    if b is not None:
        y += b.reshape((1, M) + (1,) * nd)
    return y


def ref_conv_grads(x, W, dy, stride, pad, dil, group):
    """Gradients of <ref_conv(x, W), dy> with respect to x and W, by the same loops."""
    x, dy = x.astype(F64), dy.astype(F64)
    C = x.shape[1]
    K = W.shape[2:]
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    dxpad = np.zeros_like(xpad)
    dW = np.zeros(W.shape)
    out = dy.shape[2:]
    M = W.shape[0]
    Cg, Mg = C // group, M // group
    for ko in itertools.product(*[range(k) for k in K]):
        sl = (slice(None), slice(None)) + tuple(
            slice(k * d, k * d + st * (o - 1) + 1, st) for k, d, st, o in zip(ko, dil, stride, out))
        v = xpad[sl]
        dv = dxpad[sl]
        for g in range(group):
            gm, gc = slice(g * Mg, (g + 1) * Mg), slice(g * Cg, (g + 1) * Cg)
            N = x.shape[0]
            dW[(gm, slice(None)) + ko] = np.einsum('nmp,ncp->mc', dy[:, gm].reshape(N, Mg, -1),
                                                   v[:, gc].reshape(N, Cg, -1))
            dv[:, gc] += np.einsum('mc,nm...->nc...', W[(gm, slice(None)) + ko].astype(F64), dy[:, gm])
    dx = dxpad[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, x.shape[2:]))]
    return dx, dW


def ref_deconv(x, W, b, stride, pad, dil, group):
    """Transposed convolution: W (C_in, num_output/group, *K)."""
    x = x.astype(F64)
    N, C = x.shape[:2]
    K = W.shape[2:]
    nd = len(K)
    M = W.shape[1] * group
    Cg, Og = C // group, M // group
    full = [st * (s - 1) + d * (k - 1) + 1 for s, st, d, k in zip(x.shape[2:], stride, dil, K)]
    y = np.zeros((N, M) + tuple(full))
    for ko in itertools.product(*[range(k) for k in K]):
        sl = tuple(slice(k * d, k * d + st * (s - 1) + 1, st) for k, d, st, s in zip(ko, dil, stride, x.shape[2:]))
        for g in range(group):
            w = W[(slice(g * Cg, (g + 1) * Cg), slice(None)) + ko].astype(F64)  # (Cg, Og)
            y[(slice(None), slice(g * Og, (g + 1) * Og)) + sl] += np.einsum('co,nc...->no...', w,
                                                                            x[:, g * Cg:(g + 1) * Cg])
    y = y[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    if b is not None:
        y = y + b.reshape((1, M) + (1,) * nd)
    return y


def ref_pool(x, method, k, s, p, ceil=True):
    """Caffe's PoolingLayer::Forward_cpu, one output at a time; returns (y, mask)."""
    x = x.astype(F64)
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    rnd = (lambda v: -(-v // 1)) if ceil else math.floor
    PH = int(rnd((H + 2 * ph - kh) / sh)) + 1
    PW = int(rnd((W + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (PH - 1) * sh >= H + ph:
            PH -= 1
        if (PW - 1) * sw >= W + pw:
            PW -= 1
    y = np.zeros((N, C, PH, PW))
    mask = np.full((N, C, PH, PW), -1.0)
    for i in range(PH):
        for j in range(PW):
            hs, ws = i * sh - ph, j * sw - pw
            if method == 'MAX':
                he, we = min(hs + kh, H), min(ws + kw, W)
                hs, ws = max(hs, 0), max(ws, 0)
                win = x[:, :, hs:he, ws:we].reshape(N, C, -1)
                a = win.argmax(-1)  # the first maximum, as Caffe's strict '>'
                y[:, :, i, j] = win.max(-1)
                mask[:, :, i, j] = (hs + a // (we - ws)) * W + ws + a % (we - ws)
            else:
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                hs, ws = max(hs, 0), max(ws, 0)
                he, we = min(he, H), min(we, W)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return y, mask


def ref_lrn_across(x, size, alpha, beta, k):
    x = x.astype(F64)
    C = x.shape[1]
    pre = (size - 1) // 2
    sq = np.pad(x * x, [(0, 0), (pre, size - 1 - pre), (0, 0), (0, 0)])
    s = k + alpha / size * sum(sq[:, i:i + C] for i in range(size))
    return x * s ** -beta


def ref_lrn_within(x, size, alpha, beta):
    x = x.astype(F64)
    H, W = x.shape[2:]
    p = (size - 1) // 2
    sq = np.pad(x * x, [(0, 0), (0, 0), (p, p), (p, p)])
    box = sum(sq[:, :, i:i + H, j:j + W] for i in range(size) for j in range(size))
    return x * (1 + alpha / size ** 2 * box) ** -beta


# =============================================================================
# Golden cases (BVLC Caffe 1.0)
# =============================================================================
GOLDEN = [(t, c) for t in ('Convolution', 'Deconvolution', 'Im2col', 'Pooling', 'SPP', 'LRN', 'Crop')
          for c in golden_cases(t)]


@pytest.mark.parametrize('case', [c for _, c in GOLDEN] or ['none'])
def test_golden(mode, case):
    if case == 'none':
        pytest.skip('../shared (golden cases) not present')
    check_golden_layer(case, rtol=1e-4)


# =============================================================================
# Convolution
# =============================================================================
CONV_CASES = {
    # name: (convolution_param text, input shape, (kernel, stride, pad, dilation), group, num_output)
    'basic': ('kernel_size: 3', (2, 3, 6, 5), ((3, 3), (1, 1), (0, 0), (1, 1)), 1, 4),
    'pad_stride': ('kernel_size: 3 pad: 1 stride: 2', (2, 3, 7, 6), ((3, 3), (2, 2), (1, 1), (1, 1)), 1, 5),
    'rect_hw': ('kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2', (2, 3, 6, 5),
                ((3, 2), (1, 2), (1, 0), (1, 1)), 1, 2),
    'per_axis': ('kernel_size: 2 kernel_size: 3 pad: 0 pad: 2 stride: 2 stride: 1', (2, 2, 5, 4),
                 ((2, 3), (2, 1), (0, 2), (1, 1)), 1, 3),
    'dilation': ('kernel_size: 3 dilation: 2 pad: 1', (2, 2, 7, 7), ((3, 3), (1, 1), (1, 1), (2, 2)), 1, 3),
    'rect_dilated': ('kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 dilation: 2 dilation: 1', (3, 3, 7, 6),
                     ((3, 2), (1, 1), (2, 1), (2, 1)), 1, 4),
    'dilation_per_axis': ('kernel_size: 2 dilation: 1 dilation: 3 stride: 2', (1, 2, 6, 8),
                          ((2, 2), (2, 2), (0, 0), (1, 3)), 1, 2),
    'group': ('kernel_size: 3 group: 2 pad: 1', (2, 4, 5, 5), ((3, 3), (1, 1), (1, 1), (1, 1)), 2, 6),
    'depthwise': ('kernel_size: 3 group: 4', (2, 4, 5, 5), ((3, 3), (1, 1), (0, 0), (1, 1)), 4, 4),
    '1x1': ('kernel_size: 1', (2, 3, 4, 5), ((1, 1), (1, 1), (0, 0), (1, 1)), 1, 7),
    '1x1_group': ('kernel_size: 1 group: 3', (3, 6, 2, 3), ((1, 1), (1, 1), (0, 0), (1, 1)), 3, 3),
    '1x1_stride': ('kernel_size: 1 stride: 2', (2, 3, 5, 5), ((1, 1), (2, 2), (0, 0), (1, 1)), 1, 4),
    '1x1_pad': ('kernel_size: 1 pad: 1', (2, 3, 3, 2), ((1, 1), (1, 1), (1, 1), (1, 1)), 1, 2),
    'conv_1d': ('kernel_size: 3 pad: 1 stride: 2', (2, 3, 9), ((3,), (2,), (1,), (1,)), 1, 4),
    'conv_3d': ('kernel_size: 2 kernel_size: 3 kernel_size: 2 pad: 1', (2, 2, 4, 5, 4),
                ((2, 3, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)), 1, 3),
    'conv_3d_group_stride': ('kernel_size: 3 stride: 2 group: 2 dilation: 1', (1, 4, 5, 5, 6),
                             ((3, 3, 3), (2, 2, 2), (0, 0, 0), (1, 1, 1)), 2, 2),
    'kernel_is_input': ('kernel_size: 4', (2, 3, 4, 4), ((4, 4), (1, 1), (0, 0), (1, 1)), 1, 3),
}


def _conv_text(kind, param, nout, bias=True, extra=''):
    return ('type: "%s" convolution_param { num_output: %d %s %s weight_filler { type: "gaussian" std: 0.5 } '
            'bias_filler { type: "gaussian" std: 0.5 } } %s'
            % (kind, nout, param, '' if bias else 'bias_term: false', extra))


@pytest.mark.parametrize('name', sorted(CONV_CASES))
@pytest.mark.parametrize('bias', [True, False])
def test_convolution_forward_backward(mode, name, bias):
    param, shape, (k, s, p, d), group, nout = CONV_CASES[name]
    x = gauss(shape)
    layer, bottom, top = forward_layer(_conv_text('Convolution', param, nout, bias), x)
    W = layer.blobs[0].data.copy()
    assert W.shape == (nout, shape[1] // group) + k
    b = layer.blobs[1].data.copy() if bias else None
    if bias:
        assert b.shape == (nout,)
    else:
        assert len(layer.blobs) == 1
    y = ref_conv(x, W, b, s, p, d, group)
    assert top[0].shape == y.shape
    np.testing.assert_allclose(top[0].data, y, rtol=1e-4, atol=1e-4)
    dy = gauss(y.shape, seed=1)
    backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
    dx, dW = ref_conv_grads(x, W, dy, s, p, d, group)
    np.testing.assert_allclose(layer.blobs[0].diff, dW, rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(layer.blobs[1].diff, dy.sum(axis=tuple(i for i in range(dy.ndim) if i != 1)),
                                   rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('layout', ['narrow', 'wide', 'chwn', 'narrow_col2im', 'wide_col2im', 'chwn_col2im',
                                    'chwn_rows', 'chwn_rows_col2im', 'batched_1x1'])
@pytest.mark.parametrize('name', ['basic', 'group', 'dilation_per_axis', '1x1', '1x1_group', 'conv_1d', 'conv_3d',
                                  'per_axis', 'rect_dilated'])
def test_convolution_column_layouts(mode, monkeypatch, layout, name):
    """Every column layout of the engine (narrow, wide, batch-innermost with full columns or one GEMM
    per kernel row, per-image 1x1) computes the same."""
    monkeypatch.setattr(engine_mod, 'CHWN', layout.startswith('chwn'))
    monkeypatch.setattr(engine_mod, 'ROWS_MIN_K', 1 if layout.startswith('chwn_rows') else 1 << 30)
    monkeypatch.setattr(engine_mod, 'ROWS_MAX_K', 1 << 30)
    monkeypatch.setattr(engine_mod, 'CHWN_MAX_ROW', 1 << 30)
    monkeypatch.setattr(engine_mod, 'CHWN_MIN_IMAGES', 2)
    monkeypatch.setattr(engine_mod, 'WIDE_MAX_WASTE', 1e9 if layout.startswith('wide') else 0.0)
    monkeypatch.setattr(engine_mod, 'WIDE_MAX_EXTRA', 1e9)
    monkeypatch.setattr(engine_mod, 'FLIP_BACKWARD', not layout.endswith('col2im'))
    monkeypatch.setattr(engine_mod, 'FLIP_MIN_CHANNELS', 1)
    monkeypatch.setattr(engine_mod, 'FLIP_MAX_RATIO', 1e9)
    monkeypatch.setattr(engine_mod, 'BATCHED_1X1_MIN', 0 if layout == 'batched_1x1' else 1 << 40)
    param, shape, (k, s, p, d), group, nout = CONV_CASES[name]
    x = gauss(shape)
    for kind in ('Convolution', 'Deconvolution'):
        layer, bottom, top = forward_layer(_conv_text(kind, param, nout * (shape[1] // group if kind == 'Deconvolution' and
                                                                           group > 1 else 1)), x)
        eng = layer.engine
        want = '1x1' if name.startswith('1x1') else ('wide' if layout.startswith('wide') and s[-1] == 1 else 'narrow')
        if want == 'narrow' and layout.startswith('chwn') and eng.chunk > 1 and s[-1] == 1:
            want = 'chwn'     # (one image at a time, or strided rows, stay narrow)
        assert eng.layout == want
        # rows: 2-D, stride 1, one group (the layout's other conditions) and on the CPU
        rows = (layout.startswith('chwn_rows') and want == 'chwn' and len(k) == 2 and s[0] == 1 and group == 1
                and mode == 'cpu')
        assert eng.rows == rows and ('-rows' in eng.describe()) == rows and (eng.by_rows is not None) == rows
        W, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
        dy = gauss(top[0].shape, seed=1)
        backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
        if kind == 'Convolution':
            np.testing.assert_allclose(top[0].data, ref_conv(x, W, b, s, p, d, group), rtol=1e-4, atol=1e-4)
            dx, dW = ref_conv_grads(x, W, dy, s, p, d, group)
        else:
            np.testing.assert_allclose(top[0].data, ref_deconv(x, W, b, s, p, d, group), rtol=1e-4, atol=1e-4)
            # a deconvolution's gradients are a convolution's with the roles of x and y swapped
            dx = ref_conv(dy, W, None, s, p, d, group)
            dW = ref_conv_grads(dy, W, x, s, p, d, group)[1]
        np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.blobs[0].diff, dW, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('param, shape, want', [('num_output: 32 kernel_size: 5 pad: 2', (100, 32, 16, 16), True),
                                                ('num_output: 50 kernel_size: 5', (64, 20, 12, 12), True),
                                                ('num_output: 32 kernel_size: 5 pad: 2', (100, 3, 32, 32), False),
                                                ('num_output: 8 kernel_size: 5 pad: 2', (16, 8, 8, 8), False),
                                                ('num_output: 8 kernel_size: 3 pad: 1', (16, 192, 7, 7), False),
                                                ('num_output: 8 kernel_size: 5 pad: 2 group: 2', (16, 32, 8, 8), False),
                                                ('num_output: 8 kernel_size: 5 stride: 2', (16, 32, 9, 9), False)])
def test_convolution_rows_choice(param, shape, want):
    """One GEMM per kernel row for the thin 2-D batch-innermost convolutions (CIFAR10-quick's conv2, LeNet's
    conv2: in_ch * kernel_w from ROWS_MIN_K 64 to ROWS_MAX_K 512), full columns otherwise (CIFAR10-quick's conv1
    is wide; 8 * 5 = 40 and 192 * 3 = 576 out of range; groups; strides)."""
    caffeine.set_mode_cpu()
    layer = make_layer('type: "Convolution" convolution_param { %s }' % param)
    layer.SetUp([Blob(shape)], [Blob()])
    assert layer.engine.rows == want
    assert ('-rows' in layer.engine_name()) == want


@pytest.mark.parametrize('algorithm', ['winograd', 'winograd_by_rows', 'im2col'])
@pytest.mark.parametrize('shape, pad, flip', [((3, 4, 8, 8), 1, True), ((2, 5, 7, 9), 1, False),
                                              ((2, 3, 6, 5), 0, True), ((1, 4, 5, 6), 2, True)])
def test_convolution_winograd(mode, monkeypatch, algorithm, shape, pad, flip):
    """3x3 stride-1 convolutions by Winograd F(2x2,3x3) equal the direct sums (forward, and the
    gradient to the data as the flipped convolution), odd output sizes and deconvolutions included;
    by_rows: a chunk bound so small that each image goes one row of tiles at a time."""
    monkeypatch.setattr(engine_mod, 'WINOGRAD', algorithm.startswith('winograd'))
    monkeypatch.setattr(engine_mod, 'WINOGRAD_ON_GPU', True)  # on CuPy too, where a GPU is present
    if algorithm == 'winograd_by_rows':
        monkeypatch.setattr(engine_mod, 'WINOGRAD_CHUNK_MB', 1e-9)
    monkeypatch.setattr(engine_mod, 'WINOGRAD_MIN_CHANNELS', 1)
    monkeypatch.setattr(engine_mod, 'WINOGRAD_MIN_TILES', 1)
    monkeypatch.setattr(engine_mod, 'WINOGRAD_MAX_WASTE', 1e9)
    monkeypatch.setattr(engine_mod, 'FLIP_MIN_CHANNELS', 1 if flip else 1 << 20)
    monkeypatch.setattr(engine_mod, 'FLIP_MAX_RATIO', 1e9)
    x = gauss(shape)
    s, p, d = (1, 1), (pad, pad), (1, 1)
    for kind in ('Convolution', 'Deconvolution'):
        layer, bottom, top = forward_layer(_conv_text(kind, 'kernel_size: 3 pad: %d' % pad, 6), x)
        eng = layer.engine
        assert eng.winograd == algorithm.startswith('winograd') and eng.flip_ok == flip
        assert eng.describe().startswith('winograd' if eng.winograd else 'im2col-')
        if algorithm == 'winograd_by_rows':
            assert eng.wino.wchunk == 1 and eng.wino.wrows == 1 < eng.wino.tiles[0]
        W, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
        dy = gauss(top[0].shape, seed=1)
        backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
        if kind == 'Convolution':
            y = ref_conv(x, W, b, s, p, d, 1)
            dx, dW = ref_conv_grads(x, W, dy, s, p, d, 1)
        else:
            y = ref_deconv(x, W, b, s, p, d, 1)
            dx = ref_conv(dy, W, None, s, p, d, 1)
            dW = ref_conv_grads(dy, W, x, s, p, d, 1)[1]
        np.testing.assert_allclose(top[0].data, y, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(layer.blobs[0].diff, dW, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('param, size, fewer, want', [('kernel_size: 3 pad: 1', 10, False, True),
                                                       ('kernel_size: 3 pad: 1', 10, True, False),
                                                       ('kernel_size: 3 pad: 1', 7, False, False),
                                                       ('kernel_size: 3', 12, False, True),
                                                       ('kernel_size: 3 stride: 2 pad: 1', 10, False, False),
                                                       ('kernel_size: 3 dilation: 2 pad: 2', 10, False, False),
                                                       ('kernel_size: 3 pad: 1 group: 2', 10, False, False),
                                                       ('kernel_size: 5 pad: 2', 10, False, False)])
def test_convolution_winograd_choice(monkeypatch, param, size, fewer, want):
    """The engine takes Winograd for 3x3, stride 1, dilation 1, one group, at least
    WINOGRAD_MIN_CHANNELS channels on both sides and 2x2 tiles that cover at most
    WINOGRAD_MAX_WASTE times the output (a 7x7 output needs 8x8: 1.31), and im2col otherwise."""
    monkeypatch.setattr(engine_mod, 'WINOGRAD_MIN_CHANNELS', 8)
    cin = 7 if fewer else 8
    layer, _, _ = forward_layer(_conv_text('Convolution', param, 8), gauss((2, cin, size, size)))
    assert layer.engine.winograd == want
    assert layer.engine_name().startswith('numpy winograd' if want else 'numpy im2col-')


@pytest.mark.parametrize('budget, mblock, wchunk, wrows', [
    ({'conv_col': 1 << 20}, 10, 3, 4),                       # everything at once
    ({'conv_col': 5000, 'conv_pad': 700}, 10, 1, 4),         # one image a time
    ({'conv_col': 2500, 'conv_pad': 600}, 10, 1, 1),         # one row of tiles a time
    ({'conv_col': 1000, 'conv_pad': 600}, 3, 1, 1)])         # ... and blocks of 3, 3, 3, 1 outputs
def test_winograd_chunks_within_a_budget(budget, mblock, wchunk, wrows):
    """WinogradF2x3.plan fits its regions in the buffers it is given (blocks of output
    channels, chunks of images and of tile rows), and the blocked forward pass still
    equals the direct sums, bias included; with too little room there is no plan."""
    from caffeine.layers.winograd import WinogradF2x3
    x, W, b = gauss((3, 5, 7, 8)), gauss((10, 5, 3, 3), seed=1), gauss((10,), seed=2)
    w = WinogradF2x3.plan(5, 10, (1, 1), (7, 8), 3, budget, chunk_floats=1 << 20, min_tiles=1, min_block=1)
    assert (w.mblock, w.wchunk, w.wrows) == (mblock, wchunk, wrows)
    for name, used in w.used.items():
        assert used <= budget[name]
    y = np.zeros((3, 10, 7, 8), np.float32)
    w.forward(np, W, x, y, b)
    np.testing.assert_allclose(y, ref_conv(x, W, b, (1, 1), (1, 1), (1, 1), 1), rtol=1e-4, atol=1e-4)
    assert WinogradF2x3.plan(5, 10, (1, 1), (7, 8), 3, {'conv_col': 500}, 1 << 20, 1, 1) is None


@pytest.mark.parametrize('shape, nout', [((2, 512, 14, 14), 512), ((2, 256, 56, 56), 256), ((8, 128, 28, 28), 128),
                                         ((10, 256, 13, 13), 384), ((1, 256, 13, 13), 384)])
def test_winograd_needs_no_more_workspace_than_im2col(shape, nout):
    """Where chosen, Winograd takes only the workspace buffers (names and sizes) that the
    im2col path of the same convolution would (VGG-16's, ResNet-50's, CaffeNet's 3x3 layers at
    their benchmark batches); CaffeNet's conv3 at batch 1 cannot fit and stays on im2col."""
    N, C, H, Wd = shape
    eng = engine_mod.ConvEngine(C, nout, 1, (3, 3), (1, 1), (1, 1), (1, 1), (H, Wd), (H, Wd), N)
    assert eng.winograd == (N > 1)
    if eng.winograd:
        im2col = eng.im2col_workspace()
        assert set(eng.wino.used) <= set(im2col)
        for name, used in eng.wino.used.items():
            assert used <= im2col[name]


def test_convolution_winograd_stays_off_on_the_gpu(monkeypatch):
    """Winograd is chosen on the CPU only unless WINOGRAD_ON_GPU (never timed on a GPU); no GPU
    needed: the choice reads backend.is_gpu()."""
    monkeypatch.setattr(engine_mod, 'WINOGRAD_MIN_CHANNELS', 8)
    text = _conv_text('Convolution', 'kernel_size: 3 pad: 1', 8)
    x = gauss((2, 8, 10, 10))
    assert forward_layer(text, x)[0].engine.winograd
    monkeypatch.setattr(engine_mod.backend, 'is_gpu', lambda: True)
    args = (8, 8, 1, (3, 3), (1, 1), (1, 1), (1, 1), (10, 10), (10, 10), 2)
    assert not engine_mod.ConvEngine(*args).winograd
    monkeypatch.setattr(engine_mod, 'WINOGRAD_ON_GPU', True)
    assert engine_mod.ConvEngine(*args).winograd


@pytest.mark.parametrize('name', ['basic', 'pad_stride', 'group', 'dilation', '1x1', 'conv_1d', 'rect_hw'])
def test_convolution_gradient(mode, name):
    param, shape, _, _, nout = CONV_CASES[name]
    shape = (2,) + shape[1:2] + tuple(min(v, 5) for v in shape[2:])
    layer = make_layer(_conv_text('Convolution', param, min(nout, 3) * (2 if 'group' in param else 1)))
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(gauss(shape)), [Blob()])


def test_convolution_3d_gradient(mode):
    layer = make_layer(_conv_text('Convolution', 'kernel_size: 2 pad: 1 stride: 2', 2))
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(gauss((1, 2, 3, 3, 2))), [Blob()])


def test_convolution_axis(mode):
    """axis: 2 makes axis 1 a batch axis too: (A, B, C, H, W) convolves each (a, b) image."""
    x = gauss((2, 3, 4, 5, 5))
    layer, bottom, top = forward_layer(_conv_text('Convolution', 'kernel_size: 3 axis: 2', 3), x)
    W, b = layer.blobs[0].data, layer.blobs[1].data
    y = ref_conv(x.reshape(6, 4, 5, 5), W, b, (1, 1), (0, 0), (1, 1), 1).reshape(2, 3, 3, 3, 3)
    np.testing.assert_allclose(top[0].data, y, rtol=1e-4, atol=1e-4)
    layer = make_layer(_conv_text('Convolution', 'kernel_size: 3 axis: 2', 2))
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(gauss((1, 2, 2, 4, 4))), [Blob()])


def test_convolution_several_bottoms_share_weights(mode):
    a, b = gauss((2, 3, 5, 5)), gauss((2, 3, 5, 5), seed=1)
    text = _conv_text('Convolution', 'kernel_size: 3 pad: 1', 2)
    layer, bottom, top = forward_layer(text, a, b, ntop=2)
    W, bias = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    for x, t in zip((a, b), top):
        np.testing.assert_allclose(t.data, ref_conv(x, W, bias, (1, 1), (1, 1), (1, 1), 1), rtol=1e-4, atol=1e-4)
    da, db = gauss(top[0].shape, seed=2), gauss(top[1].shape, seed=3)
    backward_layer(layer, bottom, top, da, db, zero_param_diffs=True)
    both = (layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy(), bottom[0].diff.copy(), bottom[1].diff.copy())
    # the parameter gradients are the sums of the two single-bottom runs
    singles = []
    for x, d in ((a, da), (b, db)):
        l1, b1, t1 = forward_layer(text, x, params=[W, bias])
        backward_layer(l1, b1, t1, d, zero_param_diffs=True)
        singles.append((l1.blobs[0].diff.copy(), l1.blobs[1].diff.copy(), b1[0].diff.copy()))
    np.testing.assert_allclose(both[0], singles[0][0] + singles[1][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(both[1], singles[0][1] + singles[1][1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(both[2], singles[0][2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both[3], singles[1][2], rtol=1e-5, atol=1e-6)
    layer = make_layer(text)
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(a[:1, :, :3, :4], b[:1, :, :3, :4]),
                                               [Blob(), Blob()])


def test_convolution_param_diffs_accumulate_and_respect_propagate_down(mode):
    x = gauss((2, 3, 5, 5))
    layer, bottom, top = forward_layer(_conv_text('Convolution', 'kernel_size: 3', 2), x)
    top[0].diff[...] = gauss(top[0].shape, seed=1)
    for b in layer.blobs:
        b.diff[...] = 0
    layer.Backward(top, [True], bottom)
    once = [b.diff.copy() for b in layer.blobs]
    bottom[0].diff[...] = 7
    layer.Backward(top, [False], bottom)
    for b, o in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * o, rtol=1e-5)
    assert np.all(bottom[0].diff == 7)  # not asked: left alone
    layer.param_propagate_down = [False, False]
    layer.Backward(top, [True], bottom)
    for b, o in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * o, rtol=1e-5)


def test_convolution_chunked_batches_equal_whole(mode, monkeypatch):
    """Batches whose column buffer exceeds the workspace limit run in chunks of images."""
    x = gauss((5, 3, 6, 6))
    res = []
    params = {}
    for limit in (None, '0.0001'):
        if limit:
            monkeypatch.setenv('CAFFEINE_CONV_WORKSPACE_MB', limit)
        for kind in ('Convolution', 'Deconvolution'):
            layer, bottom, top = forward_layer(_conv_text(kind, 'kernel_size: 3 pad: 1 stride: 2 group: 3', 3), x,
                                               params=params.get(kind))
            if kind not in params:
                params[kind] = [b.data.copy() for b in layer.blobs]
                layer.Forward(bottom, top)
            assert layer.engine.chunk == (1 if limit else 5)
            assert kind == 'Deconvolution' or layer.engine.flip_ok is False  # stride 2
            dy = gauss(top[0].shape, seed=1)
            backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
            res.append([top[0].data.copy(), bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    for a, b in zip(res[:2], res[2:]):
        for u, v in zip(a, b):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('rows', [True, False])
def test_convolution_uneven_chunks(mode, monkeypatch, rows):
    """A batch runs in the fewest chunks of at most ``chunk`` images, their sizes within one of each
    other (7 images, at most 3 a chunk: 2, 2, 3); every chunk's columns, by kernel rows or full, give
    the direct sums."""
    per_image = 20 * 25 * 36                       # column values per image: 20 channels, 5x5, 6x6 outputs
    monkeypatch.setattr(engine_mod, 'CHUNK_TARGET_MB', 3 * per_image * 4 / (1 << 20))
    monkeypatch.setattr(engine_mod, 'CHUNK_MIN_COLS', 1)
    monkeypatch.setattr(engine_mod, 'CHWN_MIN_IMAGES', 2)
    monkeypatch.setattr(engine_mod, 'ROWS_MIN_K', 1 if rows else 1 << 30)
    x = gauss((7, 20, 6, 6))
    layer, bottom, top = forward_layer(_conv_text('Convolution', 'kernel_size: 5 pad: 2', 4), x)
    eng = layer.engine
    assert eng.chunk == 3 and list(eng.chunks()) == [(0, 2), (2, 4), (4, 7)]
    assert eng.layout == 'chwn' and eng.rows == (rows and mode == 'cpu')
    W, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    s, p, d = (1, 1), (2, 2), (1, 1)
    np.testing.assert_allclose(top[0].data, ref_conv(x, W, b, s, p, d, 1), rtol=1e-4, atol=1e-4)
    dy = gauss(top[0].shape, seed=1)
    backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
    dx, dW = ref_conv_grads(x, W, dy, s, p, d, 1)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[0].diff, dW, rtol=1e-4, atol=1e-4)


def test_convolution_reshape_follows_the_input(mode):
    layer, bottom, top = forward_layer(_conv_text('Convolution', 'kernel_size: 3 pad: 1 stride: 2', 2), gauss((2, 3, 8, 8)))
    assert top[0].shape == (2, 2, 4, 4)
    x = gauss((3, 3, 5, 7), seed=4)
    bottom[0].reshape(x.shape)
    bottom[0].data[...] = x
    layer.Forward(bottom, top)
    assert top[0].shape == (3, 2, 3, 4)
    W, b = layer.blobs[0].data, layer.blobs[1].data
    np.testing.assert_allclose(top[0].data, ref_conv(x, W, b, (2, 2), (1, 1), (1, 1), 1), rtol=1e-4, atol=1e-4)


def test_convolution_fillers_and_existing_blobs(mode):
    layer, _, _ = forward_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 '
                                'weight_filler { type: "constant" value: 0.5 } '
                                'bias_filler { type: "constant" value: -2 } }', gauss((1, 2, 5, 5)))
    assert np.all(layer.blobs[0].data == 0.5) and np.all(layer.blobs[1].data == -2)
    # default fillers: constant 0
    layer, _, top = forward_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 }', gauss((1, 2, 5, 5)))
    assert np.all(layer.blobs[0].data == 0) and np.all(top[0].data == 0)
    # weights set before setup are kept when their shapes fit, refused otherwise
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }')
    layer.blobs.append(Blob(4, 2, 3, 3))
    layer.blobs.append(Blob(4))
    layer.blobs[0].data[...] = 1.25
    layer.SetUp(blobs_from_arrays(gauss((1, 2, 5, 5))), [Blob()])
    assert np.all(layer.blobs[0].data == 1.25)
    layer = make_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }')
    layer.blobs.append(Blob(4, 2, 2, 2))
    layer.blobs.append(Blob(4))
    with pytest.raises(LayerError, match='incorrect weight shape'):
        layer.SetUp(blobs_from_arrays(gauss((1, 2, 5, 5))), [Blob()])


CONV_ERRORS = [
    ('num_output: 0 kernel_size: 3', (1, 2, 5, 5), 'num_output must be positive'),
    ('num_output: 2', (1, 2, 5, 5), 'kernel_size must be specified'),
    ('num_output: 2 kernel_size: 0', (1, 2, 5, 5), 'filter dimensions must be nonzero'),
    ('num_output: 2 kernel_size: 3 stride: 0', (1, 2, 5, 5), 'stride dimensions must be nonzero'),
    ('num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3', (1, 2, 5, 5), 'not both'),
    ('num_output: 2 kernel_h: 3', (1, 2, 5, 5), 'both kernel_h and kernel_w are required'),
    ('num_output: 2 kernel_h: 3 kernel_w: 3', (1, 2, 5, 5, 5), 'can only be used for 2D'),
    ('num_output: 2 kernel_size: 3 kernel_size: 3 kernel_size: 3', (1, 2, 5, 5), 'once per spatial dimension'),
    ('num_output: 2 kernel_size: 3 pad: 1 pad: 1 pad: 1', (1, 2, 5, 5), 'pad must be specified once'),
    ('num_output: 3 kernel_size: 3 group: 2', (1, 4, 5, 5), 'num_output 3 is not a multiple of group 2'),
    ('num_output: 4 kernel_size: 3 group: 2', (1, 3, 5, 5), 'input channels 3 is not a multiple of group 2'),
    ('num_output: 2 kernel_size: 5', (1, 2, 3, 3), 'larger than padded input 3'),
    ('num_output: 2 kernel_size: 3 dilation: 3', (1, 2, 6, 6), r'extent 7.*larger than padded input 6'),
    ('num_output: 2 kernel_size: 3 axis: 4', (1, 2, 5, 5), 'axis 4 out of range'),
]


@pytest.mark.parametrize('param,shape,match', CONV_ERRORS)
def test_convolution_errors(param, shape, match):
    layer = make_layer('name: "c1" type: "Convolution" convolution_param { %s }' % param)
    with pytest.raises(LayerError, match=r"'c1' \(Convolution\).*" + match):
        layer.SetUp(blobs_from_arrays(np.zeros(shape, np.float32)), [Blob()])


def test_convolution_blob_count_and_shape_errors():
    layer = make_layer(_conv_text('Convolution', 'kernel_size: 3', 2))
    with pytest.raises(LayerError, match='as many tops as bottoms'):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 2, 5, 5)), np.zeros((1, 2, 5, 5))), [Blob()])
    layer = make_layer(_conv_text('Convolution', 'kernel_size: 3', 2))
    with pytest.raises(LayerError, match='all inputs must have the same shape'):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 2, 5, 5)), np.zeros((1, 2, 6, 5))), [Blob(), Blob()])
    layer, bottom, top = forward_layer(_conv_text('Convolution', 'kernel_size: 3', 2), np.zeros((1, 2, 5, 5)))
    bottom[0].reshape(1, 3, 5, 5)
    with pytest.raises(LayerError, match='incompatible with convolution kernel'):
        layer.Forward(bottom, top)


# =============================================================================
# Deconvolution
# =============================================================================
DECONV_CASES = {
    'basic': ('kernel_size: 3 stride: 2 pad: 1', (2, 3, 4, 3), ((3, 3), (2, 2), (1, 1), (1, 1)), 1, 3),
    'group': ('kernel_size: 4 stride: 2 group: 2', (2, 4, 3, 3), ((4, 4), (2, 2), (0, 0), (1, 1)), 2, 4),
    'rect': ('kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0', (1, 2, 3, 4),
             ((2, 3), (1, 2), (1, 0), (1, 1)), 1, 3),
    'dilation': ('kernel_size: 3 dilation: 2', (1, 2, 3, 3), ((3, 3), (1, 1), (0, 0), (2, 2)), 1, 2),
    '1x1': ('kernel_size: 1', (2, 3, 3, 4), ((1, 1), (1, 1), (0, 0), (1, 1)), 1, 5),
    'deconv_1d': ('kernel_size: 4 stride: 2 pad: 1', (2, 3, 5), ((4,), (2,), (1,), (1,)), 1, 2),
    'deconv_3d': ('kernel_size: 2 stride: 2', (1, 2, 2, 3, 2), ((2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1)), 1, 2),
}


@pytest.mark.parametrize('name', sorted(DECONV_CASES))
def test_deconvolution_forward(mode, name):
    param, shape, (k, s, p, d), group, nout = DECONV_CASES[name]
    x = gauss(shape)
    layer, bottom, top = forward_layer(_conv_text('Deconvolution', param, nout), x)
    W, b = layer.blobs[0].data.copy(), layer.blobs[1].data.copy()
    assert W.shape == (shape[1], nout // group) + k   # Caffe's deconvolution weight shape
    assert b.shape == (nout,)
    y = ref_deconv(x, W, b, s, p, d, group)
    assert top[0].shape == y.shape
    np.testing.assert_allclose(top[0].data, y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', ['basic', 'group', 'rect', 'dilation', '1x1', 'deconv_1d'])
def test_deconvolution_gradient(mode, name):
    param, shape, _, _, _, nout = (DECONV_CASES[name][0], DECONV_CASES[name][1], None, None, None,
                                   DECONV_CASES[name][4])
    shape = (1,) + shape[1:]
    layer = make_layer(_conv_text('Deconvolution', param, nout))
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(gauss(shape)), [Blob()])


def test_deconvolution_inverts_convolution_shapes(mode):
    """A Deconvolution with a Convolution's parameters maps the conv's output shape back."""
    x = gauss((1, 2, 9, 7))
    c, _, ct = forward_layer(_conv_text('Convolution', 'kernel_size: 3 stride: 2 pad: 1', 3), x)
    d, _, dt = forward_layer(_conv_text('Deconvolution', 'kernel_size: 3 stride: 2 pad: 1', 2), ct[0].data)
    assert dt[0].shape == (1, 2, 9, 7)


def test_deconvolution_errors():
    layer = make_layer('name: "d" type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 2 group: 2 }')
    with pytest.raises(LayerError, match=r"'d' \(Deconvolution\).*num_output 3 is not a multiple of group 2"):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 4, 3, 3))), [Blob()])
    layer = make_layer('name: "d" type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 1 pad: 1 }')
    with pytest.raises(LayerError, match=r'output size -1 <= 0'):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 4, 1, 1))), [Blob()])


# =============================================================================
# Im2col
# =============================================================================
@pytest.mark.parametrize('param,shape', [
    ('kernel_size: 3 pad: 1 stride: 2', (2, 3, 6, 5)),
    ('kernel_h: 2 kernel_w: 3 dilation: 2', (1, 2, 6, 7)),
    ('kernel_size: 2 stride: 1', (2, 2, 3, 3, 3)),
])
def test_im2col(mode, param, shape):
    x = gauss(shape)
    layer, bottom, top = forward_layer('type: "Im2col" convolution_param { %s }' % param, x)
    p = layer
    nd = len(shape) - 2
    out = [(s + 2 * pd - (d * (k - 1) + 1)) // st + 1
           for s, pd, d, k, st in zip(shape[2:], p.pad, p.dilation, p.kernel, p.stride)]
    C, K = shape[1], int(np.prod(p.kernel))
    assert top[0].shape == shape[:1] + (C * K,) + tuple(out)
    xpad = np.pad(x, [(0, 0), (0, 0)] + [(v, v) for v in p.pad])
    want = np.zeros(top[0].shape, np.float32)
    for c in range(C):
        for r, ko in enumerate(itertools.product(*[range(k) for k in p.kernel])):
            sl = tuple(slice(k * d, k * d + st * (o - 1) + 1, st) for k, d, st, o in zip(ko, p.dilation, p.stride, out))
            want[:, c * K + r] = xpad[(slice(None), c) + sl]
    np.testing.assert_array_equal(top[0].data, want)
    assert nd == len(out)
    # backward: the adjoint, <im2col(x), dy> = <x, col2im(dy)>
    dy = gauss(top[0].shape, seed=1)
    backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
    np.testing.assert_allclose((bottom[0].diff.astype(F64) * x).sum(), (dy.astype(F64) * want).sum(), rtol=1e-5)


def test_im2col_gradient(mode):
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 pad: 1 stride: 2 }')
    GradientChecker(1e-2, 1e-2).check_gradient(layer, blobs_from_arrays(gauss((1, 2, 3, 3))), [Blob()])


# =============================================================================
# Pooling
# =============================================================================
POOL_CASES = {
    # name: (pooling_param, input shape, method, kernel, stride, pad, ceil)
    'max': ('pool: MAX kernel_size: 3 stride: 2', (2, 3, 6, 5), 'MAX', (3, 3), (2, 2), (0, 0), True),
    'max_pad': ('pool: MAX kernel_size: 3 stride: 2 pad: 1', (2, 3, 6, 5), 'MAX', (3, 3), (2, 2), (1, 1), True),
    'max_rect': ('pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0', (2, 2, 7, 6),
                 'MAX', (3, 2), (2, 1), (1, 0), True),
    'max_2x2': ('pool: MAX kernel_size: 2 stride: 2', (2, 3, 6, 5), 'MAX', (2, 2), (2, 2), (0, 0), True),
    'max_overlap_s1': ('pool: MAX kernel_size: 3 stride: 1 pad: 1', (1, 2, 5, 4), 'MAX', (3, 3), (1, 1), (1, 1), True),
    'max_floor': ('pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR', (2, 3, 6, 6), 'MAX', (3, 3), (2, 2),
                  (0, 0), False),
    'max_floor_pad': ('pool: MAX kernel_size: 2 stride: 2 pad: 1 round_mode: FLOOR', (1, 2, 5, 6), 'MAX', (2, 2),
                      (2, 2), (1, 1), False),
    'max_kernel_is_input': ('pool: MAX kernel_size: 4', (2, 3, 4, 4), 'MAX', (4, 4), (1, 1), (0, 0), True),
    'ave': ('pool: AVE kernel_size: 3 stride: 2', (2, 3, 6, 5), 'AVE', (3, 3), (2, 2), (0, 0), True),
    'ave_pad': ('pool: AVE kernel_size: 3 stride: 2 pad: 1', (2, 3, 6, 5), 'AVE', (3, 3), (2, 2), (1, 1), True),
    'ave_pad2': ('pool: AVE kernel_size: 5 stride: 3 pad: 2', (1, 2, 8, 9), 'AVE', (5, 5), (3, 3), (2, 2), True),
    'ave_rect': ('pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_w: 1 pad_h: 0', (2, 2, 5, 6),
                 'AVE', (2, 3), (1, 2), (0, 1), True),
    'ave_floor': ('pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR', (2, 3, 5, 5), 'AVE', (2, 2), (2, 2),
                  (0, 0), False),
    'ave_kernel_is_input': ('pool: AVE kernel_size: 7', (2, 3, 7, 7), 'AVE', (7, 7), (1, 1), (0, 0), True),
    # stride-phase planes: kernel < stride (elements in no window), stride 3, a rectangle of both
    'max_k2_s3': ('pool: MAX kernel_size: 2 stride: 3', (2, 3, 8, 7), 'MAX', (2, 2), (3, 3), (0, 0), True),
    'ave_k2_s3': ('pool: AVE kernel_size: 2 stride: 3', (2, 3, 8, 7), 'AVE', (2, 2), (3, 3), (0, 0), True),
    'max_k5_s3_pad2': ('pool: MAX kernel_size: 5 stride: 3 pad: 2', (1, 2, 8, 9), 'MAX', (5, 5), (3, 3), (2, 2), True),
    'max_k1_s2': ('pool: MAX kernel_size: 1 stride: 2', (1, 2, 5, 7), 'MAX', (1, 1), (2, 2), (0, 0), True),
    'max_rect_s': ('pool: MAX kernel_h: 2 kernel_w: 4 stride_h: 2 stride_w: 3', (2, 2, 7, 11), 'MAX', (2, 4), (2, 3),
                   (0, 0), True),
    'ave_rect_s_pad': ('pool: AVE kernel_h: 4 kernel_w: 3 stride_h: 3 stride_w: 2 pad_h: 1 pad_w: 2', (1, 2, 9, 7),
                       'AVE', (4, 3), (3, 2), (1, 2), True),
}


@pytest.mark.parametrize('name', sorted(POOL_CASES))
def test_pooling_forward(mode, name):
    param, shape, method, k, s, p, ceil = POOL_CASES[name]
    x = distinct(shape)
    ntop = 2 if method == 'MAX' else 1
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { %s }' % param, x, ntop=ntop)
    y, mask = ref_pool(x, method, k, s, p, ceil)
    assert top[0].shape == y.shape
    np.testing.assert_allclose(top[0].data, y, rtol=1e-5, atol=1e-6)
    if method == 'MAX':
        np.testing.assert_array_equal(top[1].data, mask)


@pytest.mark.parametrize('name', sorted(POOL_CASES))
def test_pooling_gradient(mode, name):
    param, shape, method, *_ = POOL_CASES[name]
    shape = shape[:1] + (min(shape[1], 2),) + shape[2:]
    x = distinct(shape, seed=2) * 2  # spacing 8/n keeps a step of 1e-2 from changing the maxima
    layer = make_layer('type: "Pooling" pooling_param { %s }' % param)
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(x), [Blob()])


def test_pooling_max_ties_go_to_the_first_element_as_caffe(mode):
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = 5   # a tie inside the window of (0, 0) and (0, 1)
    for phase in (TRAIN, TEST):
        layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 1 }', x, phase=phase, ntop=2)
        np.testing.assert_array_equal(top[1].data[0, 0], [[5, 5, 6], [5, 5, 6], [8, 9, 10]])
        backward_layer(layer, bottom, top, np.ones((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.float32), zero_param_diffs=True)
        want = np.zeros((4, 4))
        for m in top[1].data.ravel():
            want.flat[int(m)] += 1
        np.testing.assert_array_equal(bottom[0].diff[0, 0], want)


def test_pooling_max_ignores_nan_and_padding_as_caffe(mode):
    """Caffe's scan: the maximum starts at -FLT_MAX and takes an element only when strictly
    greater, so NaN never wins and -inf padding never wins; a window of NaN and -inf alone
    gives -FLT_MAX and mask -1 (Caffe's), and its gradient goes nowhere."""
    nan, inf = np.nan, np.inf
    x = np.array([[1, nan, 2, 0, nan],
                  [nan, 3, nan, -inf, nan],
                  [-inf, -1, 4, nan, nan],
                  [5, 4, 6, nan, nan]], np.float32)[None, None]
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
                                       x, ntop=2)
    fmax = np.finfo(np.float32).max
    np.testing.assert_array_equal(top[0].data[0, 0], [[3, 3, 0], [5, 6, -fmax], [5, 6, -fmax]])
    np.testing.assert_array_equal(top[1].data[0, 0], [[6, 6, 3], [15, 17, -1], [15, 17, -1]])
    dy = np.float32([1, 2, 4, 8, 16, 32, 64, 128, 256]).reshape(1, 1, 3, 3)
    backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
    want = np.zeros((4, 5), np.float32)
    want.flat[[6, 3, 15, 17]] = [1 + 2, 4, 8 + 64, 16 + 128]   # the windows of NaN and -inf alone route nowhere
    np.testing.assert_array_equal(bottom[0].diff[0, 0], want)


def test_pooling_chunks_of_images_give_the_same_numbers(monkeypatch):
    """On the CPU the phase planes are built for a few images at a time; one image per chunk
    (and a last, shorter chunk) changes no number."""
    from caffeine.layers import pool_phases
    x = gauss((5, 3, 9, 8), seed=4)
    dy = gauss((5, 3, 5, 5), seed=6)
    out = []
    for kb in (pool_phases.CHUNK_KB, 1):
        monkeypatch.setattr(pool_phases, 'CHUNK_KB', kb)
        for param in ('pool: MAX kernel_size: 3 stride: 2 pad: 1', 'pool: AVE kernel_size: 3 stride: 2 pad: 1'):
            layer, bottom, top = forward_layer('type: "Pooling" pooling_param { %s }' % param, x)
            assert layer.phase_pool.cpu_chunk == (5 if kb > 1 else 1)
            out.append((top[0].data.copy(), backward_layer(layer, bottom, top, dy, zero_param_diffs=True)[0]))
    for (y0, d0), (y1, d1) in zip(out[:2], out[2:]):
        np.testing.assert_array_equal(y0, y1)
        np.testing.assert_array_equal(d0, d1)


@pytest.mark.parametrize('phase', [TRAIN, TEST])
def test_pooling_max_backward_without_mask_top(mode, phase):
    """TEST-phase forward skips the argmax; backward recomputes it, even if a later
    in-place layer changed the top."""
    x = distinct((2, 3, 7, 6), seed=5)
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', x, phase=phase)
    dy = gauss(top[0].shape, seed=1)
    _, mask = ref_pool(x, 'MAX', (3, 3), (2, 2), (1, 1))
    top[0].data[...] = np.maximum(top[0].data, 0)   # e.g. an in-place ReLU after the pooling
    backward_layer(layer, bottom, top, dy, zero_param_diffs=True)
    want = np.zeros((6, 42))
    np.add.at(want, (np.arange(6)[:, None], mask.reshape(6, -1).astype(int)), dy.reshape(6, -1))
    np.testing.assert_allclose(bottom[0].diff, want.reshape(x.shape), rtol=1e-6)


@pytest.mark.parametrize('method', ['MAX', 'AVE'])
def test_pooling_global(mode, method):
    x = distinct((2, 3, 5, 4))
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % method, x, ntop=2 if method == 'MAX' else 1)
    assert top[0].shape == (2, 3, 1, 1)
    if method == 'MAX':
        np.testing.assert_array_equal(top[0].data[..., 0, 0], x.max(axis=(2, 3)))
        np.testing.assert_array_equal(top[1].data[..., 0, 0], x.reshape(2, 3, -1).argmax(-1))
    else:
        np.testing.assert_allclose(top[0].data[..., 0, 0], x.mean(axis=(2, 3)), rtol=1e-5, atol=1e-7)
    GradientChecker(1e-2, 1e-3).check_gradient(
        make_layer('type: "Pooling" pooling_param { pool: %s global_pooling: true }' % method),
        blobs_from_arrays(x), [Blob()])
    # the kernel follows the input shape
    bottom[0].reshape(1, 3, 3, 6)
    bottom[0].data[...] = distinct((1, 3, 3, 6), seed=3)
    layer.Forward(bottom, top)
    assert top[0].shape == (1, 3, 1, 1)
    red = np.max if method == 'MAX' else np.mean
    np.testing.assert_allclose(top[0].data[..., 0, 0], red(bottom[0].data, axis=(2, 3)), rtol=1e-5)


def test_pooling_stochastic_test_phase(mode):
    x = np.abs(distinct((2, 2, 5, 5))) + 0.1
    x[0, 0, :3, :3] = 0   # an all-zero window gives 0 (Caffe's FLT_MIN denominator)
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', x, phase=TEST)
    x64 = x.astype(F64)
    want = np.zeros((2, 2, 2, 2))
    for i in range(2):
        for j in range(2):
            w = x64[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            want[:, :, i, j] = (w * w).sum(axis=(2, 3)) / (w.sum(axis=(2, 3)) + np.finfo(np.float32).tiny)
    np.testing.assert_allclose(top[0].data, want, rtol=1e-5)
    assert top[0].data[0, 0, 0, 0] == 0
    x = np.abs(distinct((1, 2, 5, 5), seed=3)) + 0.5
    layer = make_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }', TEST)
    GradientChecker(1e-2, 1e-2).check_gradient(layer, blobs_from_arrays(x), [Blob()])


def test_pooling_stochastic_train_samples_by_value(mode):
    """TRAIN: each output is an element of its window, drawn with probability
    value / window sum; the gradient goes to the element drawn."""
    x = np.zeros((1, 1, 2, 2), np.float32)
    x[0, 0] = [[1, 2], [3, 4]]
    x = np.tile(x, (2000, 1, 1, 1))
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', x)
    y = top[0].data.ravel()
    assert set(np.unique(y)) <= {1, 2, 3, 4}
    freq = np.array([(y == v).mean() for v in (1, 2, 3, 4)])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.04)
    backward_layer(layer, bottom, top, np.ones(top[0].shape, np.float32), zero_param_diffs=True)
    d = bottom[0].diff.reshape(2000, 4)
    assert np.all(d.sum(1) == 1)
    np.testing.assert_array_equal(x.reshape(2000, 4)[d == 1], y)
    # the draws follow caffeine's seed
    caffeine.set_random_seed(5)
    layer.Forward(bottom, top)
    a = top[0].data.copy()
    caffeine.set_random_seed(5)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, a)
    # a window over an image edge (ceil mode) samples only inside the image
    x = np.abs(distinct((500, 1, 3, 3))) + 0.1
    layer, bottom, top = forward_layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', x)
    assert top[0].shape == (500, 1, 2, 2)
    np.testing.assert_array_equal(top[0].data[:, 0, 1, 1], x[:, 0, 2, 2])
    for n in range(0, 500, 97):
        assert top[0].data[n, 0, 0, 1] in x[n, 0, :2, 2]


POOL_ERRORS = [
    ('pool: MAX', 'both kernel_h and kernel_w are required'),
    ('pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2', 'not both'),
    ('pool: MAX kernel_size: 0', 'filter dimensions cannot be zero'),
    ('pool: MAX global_pooling: true kernel_size: 2', 'filter size cannot be specified'),
    ('pool: AVE global_pooling: true stride: 2', 'only pad = 0 and stride = 1'),
    ('pool: MAX kernel_size: 2 pad: 2', 'pad 2x2 must be smaller than kernel 2x2'),
    ('pool: STOCHASTIC kernel_size: 3 pad: 1', 'padding implemented only for average and max'),
    ('pool: MAX kernel_size: 3 pad: 1 pad_h: 1', 'pad is pad OR pad_h and pad_w'),
    ('pool: MAX kernel_size: 3 stride_h: 2', 'stride is stride OR stride_h and stride_w'),
    ('pool: MAX kernel_size: 9', 'kernel 9x9 larger than padded input 5x6'),
]


@pytest.mark.parametrize('param,match', POOL_ERRORS)
def test_pooling_errors(param, match):
    layer = make_layer('name: "p" type: "Pooling" pooling_param { %s }' % param)
    with pytest.raises(LayerError, match=r"'p' \(Pooling\).*" + match):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 2, 5, 6))), [Blob()])


def test_pooling_blob_errors():
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: AVE kernel_size: 2 }')
    with pytest.raises(LayerError, match='only MAX pooling can output a mask'):
        layer.SetUp(blobs_from_arrays(np.zeros((1, 2, 5, 6))), [Blob(), Blob()])
    layer = make_layer('name: "p" type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }')
    with pytest.raises(LayerError, match='4 axes'):
        layer.SetUp(blobs_from_arrays(np.zeros((2, 5, 6))), [Blob()])


# =============================================================================
# SPP
# =============================================================================
def ref_spp(x, height, method):
    N, C, H, W = x.shape
    outs = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        y, _ = ref_pool(x, method, (kh, kw), (kh, kw), (ph, pw))
        outs.append(y.reshape(N, -1))
    return np.concatenate(outs, axis=1) if height > 1 else outs[0].reshape(N, C, 1, 1)


@pytest.mark.parametrize('height,method,shape', [
    (3, 'MAX', (2, 3, 9, 8)), (2, 'AVE', (2, 3, 9, 8)), (3, 'AVE', (1, 2, 13, 13)),
    (1, 'MAX', (2, 3, 5, 4)), (2, 'MAX', (1, 2, 4, 7)),
])
def test_spp(mode, height, method, shape):
    x = distinct(shape)
    text = 'type: "SPP" spp_param { pyramid_height: %d pool: %s }' % (height, method)
    layer, bottom, top = forward_layer(text, x)
    y = ref_spp(x, height, method)
    assert top[0].shape == y.shape
    np.testing.assert_allclose(top[0].data, y, rtol=1e-5, atol=1e-6)
    small = distinct(shape[:1] + (1,) + shape[2:], seed=1) * 2
    GradientChecker(1e-2, 1e-3).check_gradient(make_layer(text), blobs_from_arrays(small), [Blob()])
    # a new input size rebuilds the pyramid
    x2 = distinct((1, shape[1], 7, 6), seed=2)
    bottom[0].reshape(x2.shape)
    bottom[0].data[...] = x2
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, ref_spp(x2, height, method), rtol=1e-5, atol=1e-6)


def test_spp_errors():
    with pytest.raises(LayerError, match=r"'s' \(SPP\).*pyramid_height must be at least 1"):
        make_layer('name: "s" type: "SPP" spp_param { pyramid_height: 0 }').SetUp(
            blobs_from_arrays(np.zeros((1, 1, 4, 4))), [Blob()])
    with pytest.raises(LayerError, match='4 axes'):
        make_layer('name: "s" type: "SPP" spp_param { pyramid_height: 2 }').SetUp(
            blobs_from_arrays(np.zeros((1, 4, 4))), [Blob()])


# =============================================================================
# LRN
# =============================================================================
LRN_CASES = {
    'across': ('local_size: 5 alpha: 0.5 beta: 0.75 k: 2', (2, 7, 3, 3)),
    'across_default': ('', (2, 7, 3, 3)),
    'across_size3_few_channels': ('local_size: 3 alpha: 2 beta: 0.5 k: 1.5', (1, 2, 2, 3)),
    'within': ('local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL', (2, 3, 6, 6)),
    'within_size5': ('local_size: 5 alpha: 1.5 beta: 0.6 k: 7 norm_region: WITHIN_CHANNEL', (1, 2, 4, 5)),
}


@pytest.mark.parametrize('name', sorted(LRN_CASES))
def test_lrn(mode, name):
    param, shape = LRN_CASES[name]
    x = gauss(shape)
    layer, bottom, top = forward_layer('type: "LRN" lrn_param { %s }' % param, x)
    if 'WITHIN' in param:
        y = ref_lrn_within(x, layer.size, layer.alpha, layer.beta)   # k is not used
    else:
        y = ref_lrn_across(x, layer.size, layer.alpha, layer.beta, layer.k)
    np.testing.assert_allclose(top[0].data, y, rtol=1e-5, atol=1e-6)
    small = gauss(shape[:1] + shape[1:2] + tuple(min(v, 4) for v in shape[2:]), seed=1)
    GradientChecker(1e-2, 1e-2).check_gradient_exhaustive(
        make_layer('type: "LRN" lrn_param { %s }' % param), blobs_from_arrays(small[:1, :, :2, :3]), [Blob()])


def test_lrn_errors():
    with pytest.raises(LayerError, match=r"'n' \(LRN\).*odd values for local_size, got 4"):
        make_layer('name: "n" type: "LRN" lrn_param { local_size: 4 }').SetUp(
            blobs_from_arrays(np.zeros((1, 4, 2, 2))), [Blob()])
    with pytest.raises(LayerError, match='4 axes'):
        make_layer('name: "n" type: "LRN"').SetUp(blobs_from_arrays(np.zeros((1, 4, 2))), [Blob()])


# =============================================================================
# Crop
# =============================================================================
@pytest.mark.parametrize('param,bshape,slices', [
    ('axis: 2 offset: 1 offset: 2', (2, 4, 5, 4), (slice(None), slice(None), slice(1, 6), slice(2, 6))),
    ('axis: 1 offset: 1', (2, 2, 5, 4), (slice(None), slice(1, 3), slice(1, 6), slice(1, 5))),
    ('', (2, 4, 3, 3), (slice(None), slice(None), slice(0, 3), slice(0, 3))),
    ('axis: -1 offset: 3', (2, 4, 8, 5), (slice(None), slice(None), slice(None), slice(3, 8))),
    ('axis: 0 offset: 1 offset: 0 offset: 2 offset: 3', (1, 4, 5, 5),
     (slice(1, 2), slice(0, 4), slice(2, 7), slice(3, 8))),
])
def test_crop(mode, param, bshape, slices):
    a, b = gauss((2, 4, 8, 8)), gauss(bshape, seed=1)
    layer, bottom, top = forward_layer('type: "Crop" crop_param { %s }' % param, a, b)
    np.testing.assert_array_equal(top[0].data, a[slices])
    dy = gauss(top[0].shape, seed=2)
    bottom[1].diff[...] = 3
    backward_layer(layer, bottom, top, dy, propagate_down=[True, False], zero_param_diffs=True)
    want = np.zeros(a.shape, np.float32)
    want[slices] = dy
    np.testing.assert_array_equal(bottom[0].diff, want)
    assert np.all(bottom[1].diff == 3)


def test_crop_gradient(mode):
    layer = make_layer('type: "Crop" crop_param { axis: 2 offset: 1 }')
    GradientChecker(1e-2, 1e-3).check_gradient(layer, blobs_from_arrays(gauss((1, 2, 4, 4)), gauss((1, 2, 2, 3))),
                                               [Blob()], check_bottom=0)


@pytest.mark.parametrize('param,ashape,bshape,match', [
    ('axis: 2 offset: 5', (1, 2, 8, 8), (1, 2, 4, 4), 'invalid crop parameters in dimension 2'),
    ('axis: 1 offset: 1 offset: 1', (1, 2, 8, 8), (1, 2, 4, 4), 'number of offset values'),
    ('axis: 4', (1, 2, 8, 8), (1, 2, 4, 4), 'axis 4 out of range'),
    ('axis: 2', (1, 2, 8, 8), (1, 2, 4), 'same number of axes'),
])
def test_crop_errors(param, ashape, bshape, match):
    layer = make_layer('name: "cr" type: "Crop" crop_param { %s }' % param)
    with pytest.raises(LayerError, match=r"'cr' \(Crop\).*" + match):
        layer.SetUp(blobs_from_arrays(np.zeros(ashape), np.zeros(bshape)), [Blob()])


# =============================================================================
# Buffers: nothing allocated after the first iteration
# =============================================================================
@pytest.mark.parametrize('text,shape,ntop', [
    (_conv_text('Convolution', 'kernel_size: 3 pad: 1 group: 2', 4), (3, 4, 6, 6), 1),
    (_conv_text('Convolution', 'kernel_size: 1', 4), (3, 4, 6, 6), 1),
    (_conv_text('Deconvolution', 'kernel_size: 3 stride: 2', 4), (3, 4, 6, 6), 1),
    ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 }', (3, 4, 6, 6), 1),
    ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', (3, 4, 6, 6), 2),
    ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', (3, 4, 6, 6), 1),
    ('type: "Pooling" pooling_param { pool: MAX global_pooling: true }', (3, 4, 6, 6), 1),
    ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }', (3, 4, 6, 6), 1),
    ('type: "SPP" spp_param { pyramid_height: 3 }', (3, 4, 6, 6), 1),
    ('type: "LRN" lrn_param { local_size: 3 }', (3, 4, 6, 6), 1),
    ('type: "LRN" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }', (3, 4, 6, 6), 1),
])
def test_no_allocation_after_first_iteration(mode, text, shape, ntop):
    layer, bottom, top = forward_layer(text, np.abs(gauss(shape)) + 0.1, ntop=ntop)
    for t in top:
        t.diff[...] = 1
    layer.Backward(top, [True], bottom)
    before = backend.alloc_count
    for _ in range(2):
        layer.Forward(bottom, top)
        layer.Backward(top, [True], bottom)
    assert backend.alloc_count == before


def test_workspace_is_shared_and_grows_once(mode):
    a = workspace_mod.workspace('test_ws', 10)
    b = workspace_mod.workspace('test_ws', 5)
    assert b.size == 5 and (a.base if a.base is not None else a) is (b.base if b.base is not None else b)
    n = backend.alloc_count
    workspace_mod.workspace('test_ws', 20)
    assert backend.alloc_count == n + 1
