"""Fillers: Caffe's initialisations, deterministic under a seed."""
import math

import numpy as np
import pytest

import caffeine
from caffeine.errors import CaffeineError
from caffeine.fillers import filler_values
from caffeine.proto import caffe_pb2


def fp(**kw):
    p = caffe_pb2.FillerParameter()
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_constant_default_is_zero_and_value():
    np.testing.assert_array_equal(filler_values(fp(), (2, 3)), 0)
    np.testing.assert_array_equal(filler_values(fp(type='constant', value=2.5), (4,)), 2.5)


def test_uniform_range():
    v = filler_values(fp(type='uniform', min=-2, max=3), (1000,))
    assert v.min() >= -2 and v.max() <= 3 and abs(v.mean() - 0.5) < 0.2


def test_gaussian_moments_and_sparse():
    v = filler_values(fp(type='gaussian', mean=1, std=2), (200, 100))
    assert abs(v.mean() - 1) < 0.05 and abs(v.std() - 2) < 0.05
    s = filler_values(fp(type='gaussian', std=1, sparse=5), (50, 1000))
    # each output keeps on average sparse/num_outputs of the weights
    assert abs((s != 0).mean() - 5 / 50) < 0.01


def test_positive_unitball_rows_sum_to_one():
    v = filler_values(fp(type='positive_unitball'), (5, 2, 3))
    np.testing.assert_allclose(v.reshape(5, -1).sum(axis=1), 1, rtol=1e-5)
    assert (v >= 0).all()


@pytest.mark.parametrize('norm,n', [(caffe_pb2.FillerParameter.FAN_IN, 3 * 9),
                                    (caffe_pb2.FillerParameter.FAN_OUT, 64 * 9),
                                    (caffe_pb2.FillerParameter.AVERAGE, (27 + 576) / 2)])
def test_xavier_and_msra_scales(norm, n):
    x = filler_values(fp(type='xavier', variance_norm=norm), (64, 3, 3, 3))
    assert np.abs(x).max() <= math.sqrt(3 / n) + 1e-6
    assert abs(x.std() - math.sqrt(3 / n) / math.sqrt(3)) < 0.1 * math.sqrt(1 / n)
    m = filler_values(fp(type='msra', variance_norm=norm), (64, 3, 3, 3))
    assert abs(m.std() - math.sqrt(2 / n)) < 0.1 * math.sqrt(2 / n)


def test_bilinear_kernel_values():
    v = filler_values(fp(type='bilinear'), (2, 1, 4, 4))
    w = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(v[1, 0], np.outer(w, w))
    with pytest.raises(CaffeineError, match='square'):
        filler_values(fp(type='bilinear'), (1, 1, 3, 4))


def test_seed_makes_fills_repeatable():
    caffeine.set_random_seed(42)
    a = filler_values(fp(type='gaussian'), (10,))
    caffeine.set_random_seed(42)
    b = filler_values(fp(type='gaussian'), (10,))
    np.testing.assert_array_equal(a, b)


def test_unknown_filler_is_an_error():
    with pytest.raises(CaffeineError, match="unknown filler type 'foo'"):
        filler_values(fp(type='foo'), (2,))


@pytest.mark.parametrize('kw', [dict(type='uniform', min=-2, max=3), dict(type='gaussian', std=2, sparse=3),
                                dict(type='xavier'), dict(type='msra'), dict(type='positive_unitball')])
def test_chunked_draws_equal_one_draw_of_the_whole_blob(monkeypatch, kw):
    """Fillers draw in chunks (no float64 copy of a whole large blob), and the values are
    exactly those of one draw of the whole shape from the same generator."""
    shape = (6, 5, 7)
    caffeine.set_random_seed(7)
    whole = filler_values(fp(**kw), shape)
    monkeypatch.setattr(caffeine.fillers, 'DRAW_CHUNK', 4)
    caffeine.set_random_seed(7)
    chunked = filler_values(fp(**kw), shape)
    np.testing.assert_array_equal(chunked, whole)
    caffeine.set_random_seed(7)
    ref = caffeine.backend.rng()
    if kw['type'] == 'gaussian':
        expect = ref.normal(0, 2, size=shape).astype(np.float32)
        expect *= (ref.random(size=shape) < 3 / 6).astype(np.float32)
        np.testing.assert_array_equal(whole, expect)


def test_fill_writes_the_blob_in_place_without_a_whole_blob_temporary(monkeypatch):
    import tracemalloc

    from caffeine.blob import Blob
    from caffeine.fillers import fill
    b = Blob((1000, 1000))                       # 4 MB of float32; one float64 draw would be 8 MB
    before = b.data
    monkeypatch.setattr(caffeine.fillers, 'DRAW_CHUNK', 10000)
    caffeine.set_random_seed(3)
    tracemalloc.start()
    try:
        fill(b, fp(type='gaussian', std=0.5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert np.shares_memory(b.data, before)
    caffeine.set_random_seed(3)
    np.testing.assert_array_equal(b.data, filler_values(fp(type='gaussian', std=0.5), (1000, 1000)))
