"""Blob: Caffe's N-D array of data and diff, with buffers reused on reshape."""
import numpy as np
import pytest

from caffeine import backend
from caffeine.blob import Blob, SyncedMemory
from caffeine.errors import CaffeineError


def test_shape_count_and_legacy_axes():
    b = Blob(2, 3, 4, 5)
    assert b.shape == (2, 3, 4, 5)
    assert b.count == 120
    assert (b.num, b.channels, b.height, b.width) == (2, 3, 4, 5)
    assert b.count_range(1) == 60 and b.count_range(1, 3) == 12
    v = Blob((7, 3))
    assert (v.num, v.channels, v.height, v.width) == (7, 3, 1, 1)
    assert v.canonical_axis_index(-1) == 1
    with pytest.raises(CaffeineError, match='axis 2 out of range'):
        v.canonical_axis_index(2)


def test_data_and_diff_start_at_zero_and_are_writable():
    b = Blob(2, 3)
    assert b.data.dtype == np.float32 and b.data.shape == (2, 3)
    np.testing.assert_array_equal(b.data, 0)
    b.data[...] = np.arange(6).reshape(2, 3)
    b.diff[...] = 1
    b.update()  # data -= diff
    np.testing.assert_array_equal(b.data, np.arange(6).reshape(2, 3) - 1)
    assert b.asum_diff() == 6 and b.sumsq_data() == float(((np.arange(6) - 1) ** 2).sum())


def test_reshape_reuses_storage_when_capacity_suffices():
    b = Blob(4, 5)
    b.data  # touch
    before = backend.alloc_count
    assert b.reshape(2, 10) is None     # as pycaffe's: a notebook cell prints nothing
    assert b.reshape((3, 3)) is None and b.shape == (3, 3)
    b.data[...] = 1
    assert backend.alloc_count == before
    b.reshape(5, 5)
    b.data
    assert backend.alloc_count > before


def test_share_data_and_diff():
    a, b = Blob(2, 2), Blob(4)
    b.share_data(a)
    b.data[...] = [1, 2, 3, 4]
    np.testing.assert_array_equal(a.data.ravel(), [1, 2, 3, 4])
    assert b.shares_data_with(a)
    b.share_diff(a)
    a.diff[...] = 7
    np.testing.assert_array_equal(b.diff, 7)
    with pytest.raises(CaffeineError):
        Blob(3).share_data(a)


def test_data_memory_is_what_shared_blobs_hold_and_set_data_memory_moves_the_values():
    a, b = Blob(2, 3), Blob(6)
    assert Blob().data_memory is None and Blob().diff_memory is None
    assert a.data_memory is not b.data_memory and a.data_memory.capacity == 6
    b.share_data(a)
    assert b.data_memory is a.data_memory and b.diff_memory is not a.diff_memory
    mem = SyncedMemory(10)
    mem.host()[:6] = np.arange(6)
    a.set_data_memory(mem)
    assert a.data_memory is mem and not a.shares_data_with(b)
    np.testing.assert_array_equal(a.data, [[0, 1, 2], [3, 4, 5]])
    a.data[1, 2] = 50
    assert mem.host()[5] == 50
    with pytest.raises(CaffeineError, match='too small'):
        Blob(11).set_data_memory(mem)


def test_negative_dimension_is_an_error():
    with pytest.raises(CaffeineError, match='negative'):
        Blob(2, -1)


def test_to_proto_round_trip():
    from caffeine.weights import blob_proto_to_array
    b = Blob(2, 3)
    b.data[...] = np.arange(6).reshape(2, 3) * 0.5
    bp = b.to_proto()
    assert list(bp.shape.dim) == [2, 3]
    np.testing.assert_array_equal(blob_proto_to_array(bp), b.data)


def test_xdata_is_the_same_array_on_cpu(mode):
    b = Blob(3)
    b.data[...] = [1, 2, 3]
    x = b.xdata
    x *= 2  # layers write xdata; pycaffe reads data
    np.testing.assert_array_equal(b.data, [2, 4, 6])
    b.data[0] = 10  # pycaffe writes data; layers see it
    assert float(backend.to_host(b.xdata)[0]) == 10
