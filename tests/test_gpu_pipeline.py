"""The GPU data pipeline and memory settings, tested on the CPU with a stand-in CuPy.

The stand-in records every call that matters (pinned allocations, streams, events, uploads)
in one log, so that the tests check which calls are made, with which arguments and in which
order: the prefetched batch in page-locked host memory, its copy on a non-blocking side
stream, the compute stream waiting on the copy's event, the next copy into a slot waiting on
the consumer's event, and CuPy's memory pool limited once per device.  The ``gpu`` tests at
the end run the same paths on a CUDA device.
"""
import sys
import threading
import types

import numpy as np
import pytest

import caffeine
from caffeine import backend
from caffeine.blob import Blob
from caffeine.data.prefetch import Prefetcher
from caffeine.proto import caffe_pb2
from caffeine.testing import make_layer

MAIN = threading.main_thread()


class FakeDeviceArray(np.ndarray):
    """A device array of the stand-in: NumPy memory, with CuPy's ``set(host, stream=)`` (which
    here also checks that the host side is page-locked memory, as an asynchronous copy needs)."""
    log = None
    pinned = None

    def set(self, arr, stream=None):
        assert self.flags.c_contiguous and arr.shape == self.shape and arr.dtype == self.dtype
        assert any(np.shares_memory(arr, np.frombuffer(m, np.uint8)) for m in self.pinned)
        self.log.append(('upload', stream, float(arr.reshape(-1)[0]) if arr.size else None))
        np.copyto(self.view(np.ndarray), arr)


class FakeStream:
    def __init__(self, log, name, non_blocking=False):
        self.log, self.name, self.non_blocking = log, name, non_blocking

    def wait_event(self, event):
        self.log.append(('wait', self, event))

    def __repr__(self):
        return '<stream %s>' % self.name


class FakeEvent:
    def __init__(self, log, block=False, disable_timing=False):
        self.log, self.block, self.disable_timing = log, block, disable_timing
        self.stream = None

    def record(self, stream=None):
        assert stream is not None
        self.stream = stream
        self.log.append(('record', self, stream, threading.current_thread() is MAIN))

    def synchronize(self):
        self.log.append(('host_sync', self))


def fake_cupy(log):
    """A stand-in for the parts of CuPy that the backend's GPU transfers and memory settings use.
    Its extra attributes: ``streams`` (those made), ``compute`` (the current stream), ``pinned``."""
    cp = types.ModuleType('cupy')
    FakeDeviceArray.log = log
    cp.ndarray = FakeDeviceArray
    cp.pinned, cp.streams = [], []
    FakeDeviceArray.pinned = cp.pinned
    cp.compute = FakeStream(log, 'compute')

    def alloc_pinned_memory(nbytes):
        mem = bytearray(nbytes)
        cp.pinned.append(mem)
        log.append(('pinned', nbytes))
        return mem

    def empty(shape, dtype=np.float32):
        log.append(('device_alloc', tuple(shape)))
        return np.empty(shape, dtype).view(FakeDeviceArray)

    def stream(non_blocking=False):
        cp.streams.append(FakeStream(log, 'side%d' % len(cp.streams), non_blocking))
        return cp.streams[-1]

    class Device:
        id = 0

        def __init__(self, i):
            self.i = i

        def use(self):
            Device.id = self.i

    class Pool:
        limits = []

        def set_limit(self, size=None, fraction=None):
            self.limits.append((Device.id, size, fraction))

    pool = Pool()
    pool.limits = []
    cp.empty = empty
    cp.asnumpy = lambda a: np.array(a.view(np.ndarray))
    cp.get_default_memory_pool = lambda: pool
    cp.random = types.SimpleNamespace(seed=lambda s: None)
    cp.cuda = types.SimpleNamespace(
        alloc_pinned_memory=alloc_pinned_memory, Stream=stream,
        Event=lambda block=False, disable_timing=False: FakeEvent(log, block, disable_timing),
        get_current_stream=lambda: cp.compute, runtime=types.SimpleNamespace(getDeviceCount=lambda: 2),
        Device=Device)
    return cp


@pytest.fixture
def gpu_log(monkeypatch):
    """GPU mode on the stand-in CuPy; yields (the stand-in, its call log)."""
    log = []
    cp = fake_cupy(log)
    monkeypatch.setattr(backend, '_cupy', cp)
    monkeypatch.setattr(backend, '_mode', 'gpu')
    monkeypatch.setattr(backend, '_pool_sized', set())
    monkeypatch.setitem(sys.modules, 'cupy', cp)
    return cp, log


# =============================================================================
# The prefetched batch: pinned memory, side stream, events
# =============================================================================
def _run_prefetcher(log, slots, threads, batches=5):
    def claim(k):
        return k

    def make(k, slot):
        log.append(('make', k))
        slot.buffer(0, (2, 3))[...] = k + 1
        slot.buffer(1, (2,))[...] = -(k + 1)

    pf = Prefetcher('layer "d" (Data)', claim, make, slots=slots, threads=threads)
    seen = []
    try:
        for _ in range(batches):
            slot = pf.next()
            assert slot.on_device
            log.append(('consume', slot.index))
            seen.append((slot.device_view(0).view(np.ndarray).copy(), slot.device_view(1).view(np.ndarray).copy()))
            pf.release(slot)
    finally:
        pf.close()
    return seen


@pytest.mark.parametrize('slots,threads', [(2, 1), (0, None)])
def test_prefetched_batches_are_pinned_and_copied_on_a_side_stream(gpu_log, slots, threads):
    cp, log = gpu_log
    seen = _run_prefetcher(log, slots, threads)
    for k, (data, label) in enumerate(seen):
        np.testing.assert_array_equal(data, np.full((2, 3), k + 1, np.float32))
        np.testing.assert_array_equal(label, np.full((2,), -(k + 1), np.float32))
    nslots = max(slots, 1)
    # host buffers: page-locked, allocated once per slot and top (24 and 8 bytes), then reused
    assert [e for e in log if e[0] == 'pinned'] == [('pinned', 24), ('pinned', 8)] * nslots
    assert len([e for e in log if e[0] == 'device_alloc']) == 2 * nslots
    # one side stream for the one copying thread, non-blocking; every upload on it
    assert len(cp.streams) == 1 and cp.streams[0].non_blocking
    side = cp.streams[0]
    assert all(e[1] is side for e in log if e[0] == 'upload')

    def first(pred, after=-1):
        return next(i for i, e in enumerate(log) if i > after and pred(e))

    made = {e[1] for e in log if e[0] == 'make'}
    for k in range(5):
        make_k = first(lambda e: e == ('make', k))
        up = first(lambda e: e[0] == 'upload' and e[2] == -(k + 1))      # the second top's copy
        ready = first(lambda e: e[0] == 'record' and e[2] is side, up)
        ev = log[ready][1]
        assert ev.block and ev.disable_timing
        # the compute stream waits for the copy on the device, before the consumer reads
        waited = first(lambda e: e[0] == 'wait' and e[1] is cp.compute and e[2] is ev)
        consumed = first(lambda e: e == ('consume', k))
        assert make_k < up < ready < waited < consumed
        # released: an event on the compute stream, recorded by the consumer's thread
        rel = first(lambda e: e[0] == 'record', consumed)
        assert log[rel][2] is cp.compute and log[rel][3] is True
        if k + nslots in made:
            # the batch that reuses this slot: the host waits for this copy before writing the
            # pinned buffers again; the side stream waits for the consumer before copying in
            nxt = first(lambda e: e == ('make', k + nslots))
            assert first(lambda e: e == ('host_sync', ev)) < nxt
            side_wait = first(lambda e: e[0] == 'wait' and e[1] is side and e[2] is log[rel][1])
            assert rel < side_wait < first(lambda e: e[0] == 'upload' and e[2] == k + nslots + 1)
    # the consumer never blocks on the host
    assert not any(e[0] == 'host_sync' and e[1].stream is cp.compute for e in log)


def test_cpu_prefetch_has_no_pinned_memory_streams_or_events(monkeypatch):
    caffeine.set_mode_cpu()
    called = []
    for name in ('side_stream', 'record_event'):
        monkeypatch.setattr(backend, name, lambda *a, _n=name: called.append(_n))

    def make(k, slot):
        slot.buffer(0, (3,))[...] = k

    pf = Prefetcher('cpu', lambda k: k, make, slots=2, threads=1)
    try:
        for k in range(3):
            slot = pf.next()
            assert not slot.on_device and slot.ready is None and slot.data(0)[0] == k
            pf.release(slot)
            assert slot.consumed is None
    finally:
        pf.close()
    assert called == []


def test_data_layer_on_the_gpu_never_synchronizes_the_device(gpu_log, monkeypatch, tmp_path):
    from caffeine.data.db import DBWriter
    cp, log = gpu_log
    with DBWriter(str(tmp_path / 'db'), 'lmdb') as w:
        for i in range(6):
            d = caffe_pb2.Datum(channels=1, height=2, width=3, label=i, data=bytes([i] * 6))
            w.put(b'%03d' % i, d.SerializeToString())
    monkeypatch.setattr(backend, 'synchronize', lambda: log.append(('device_sync',)))
    layer = make_layer('name: "data" type: "Data" top: "data" top: "label" data_param { source: "%s" batch_size: 2 '
                       'backend: LMDB prefetch: 2 }' % (tmp_path / 'db'), caffe_pb2.TEST)
    top = [Blob(), Blob()]
    layer.SetUp([], top)
    try:
        for it in range(4):
            layer.Forward([], top)
            first = (2 * it) % 6
            np.testing.assert_array_equal(top[1].xdata.view(np.ndarray), [first, first + 1])
            np.testing.assert_array_equal(top[0].xdata.view(np.ndarray)[:, 0, 0, 0], [first, first + 1])
    finally:
        layer.close()
    assert ('device_sync',) not in log
    waits = [e for e in log if e[0] == 'wait' and e[1] is cp.compute]
    releases = [e for e in log if e[0] == 'record' and e[2] is cp.compute]
    assert len(waits) == len(releases) == 4


# =============================================================================
# CuPy's memory pool, sized once per device
# =============================================================================
@pytest.mark.parametrize('value,expected', [('0.5', (None, 0.5)), ('1', (None, 1.0)), (' 0.25 ', (None, 0.25))])
def test_memory_fraction_limits_the_pool_once_per_device(gpu_log, monkeypatch, value, expected):
    cp, log = gpu_log
    monkeypatch.setenv('CAFFEINE_GPU_MEMORY_FRACTION', value)
    monkeypatch.setattr(backend, '_device_id', 0)
    backend.set_mode_gpu()
    backend.set_mode_gpu()
    backend.set_device(1)
    backend.set_device(1)
    backend.set_device(0)
    assert cp.get_default_memory_pool().limits == [(0,) + expected, (1,) + expected]


def test_no_memory_limit_without_the_setting(gpu_log, monkeypatch):
    cp, log = gpu_log
    monkeypatch.delenv('CAFFEINE_GPU_MEMORY_FRACTION', raising=False)
    backend.set_mode_gpu()
    assert cp.get_default_memory_pool().limits == []


@pytest.mark.parametrize('value', ['0', '1.5', 'half', '-0.2', 'nan'])
def test_bad_memory_fraction_is_one_line(gpu_log, monkeypatch, value):
    monkeypatch.setenv('CAFFEINE_GPU_MEMORY_FRACTION', value)
    with pytest.raises(backend.BackendError) as e:
        backend.set_mode_gpu()
    assert str(e.value) == 'CAFFEINE_GPU_MEMORY_FRACTION must be a number in (0, 1], got %r' % value
    assert '\n' not in str(e.value)


# =============================================================================
# On a GPU
# =============================================================================
@pytest.fixture
def real_gpu():
    if not backend.gpu_available():
        pytest.skip('no CuPy/GPU')
    caffeine.set_mode_gpu()
    yield backend._import_cupy()
    caffeine.set_mode_cpu()


@pytest.mark.gpu
@pytest.mark.parametrize('slots,threads', [(3, 2), (0, None)])
def test_gpu_prefetch_pipeline_delivers_every_batch_in_order(real_gpu, slots, threads):
    cp = real_gpu
    shape = (64, 3, 32, 32)

    def make(k, slot):
        buf = slot.buffer(0, shape)
        assert cp.cuda.runtime.pointerGetAttributes(buf.ctypes.data).type == 1   # cudaMemoryTypeHost: pinned
        buf[...] = k
    pf = Prefetcher('gpu', lambda k: k, make, slots=slots, threads=threads)
    out = cp.empty(shape, np.float32)
    try:
        for k in range(20):
            slot = pf.next()
            out[...] = slot.device_view(0)
            out *= 2            # compute-stream work between the copy out and the slot's next copy in
            pf.release(slot)
            assert float(out.max()) == float(out.min()) == 2 * k
    finally:
        pf.close()
