"""Background batch preparation for data layers (Caffe's BasePrefetchingDataLayer).

A :class:`Prefetcher` keeps ``slots`` batches (``data_param.prefetch``, 4 by
default) in flight, prepared by a few daemon threads, and hands them to the
layer in order::

    pf = Prefetcher('layer "data" (Data)', claim, make, slots=4)
    slot = pf.next()          # waits for batch k, in order; raises a worker's error here
    top.xdata[...] = slot.data(0)
    pf.release(slot)
    pf.close()                # stops and joins the threads

Each batch is built in two steps:

- ``claim(k)`` runs under a lock, one batch at a time and in batch order: it
  reads the records (a database cursor, a list file) and draws the batch's
  random numbers, so results never depend on thread timing;
- ``make(job, slot)`` runs in parallel in the worker threads: decoding (Pillow
  releases the GIL while it decodes JPEG) and the transform into the slot's
  buffers (``slot.buffer(i, shape)``).

In GPU mode, as Caffe's prefetching layers, the batch is made in page-locked
(pinned) host memory and the worker starts its copy to the device (``slot.device(i)``)
on its own non-blocking stream, recording an event (``slot.ready``); ``next()``
makes the compute stream wait for that event on the device (the host goes on), and
``release()`` records on the compute stream when the consumer's copies out of the
slot are queued (``slot.consumed``), which the next copy into the slot's device
buffers waits for.  Before it writes the slot's host buffers again, a worker waits
(on the host, in its own thread) for the slot's previous copy.  Nothing here
synchronizes the device for the consumer.  ``slots=0`` builds each batch
synchronously in ``next()`` (no threads).

Threads are daemon threads; :meth:`close` (also called at interpreter exit and
when the owner is garbage-collected) stops them without hanging.

What a prefetching data layer reads from is a :class:`DataSource`: ``claim``
and ``make`` as above, ``get_state``/``set_state`` for resuming a run exactly,
and ``close``.
"""
from __future__ import annotations

import atexit
import math
import os
import queue
import threading
import time
import weakref

import numpy as np

from .. import backend
from ..errors import CaffeineError, DataError

_live = weakref.WeakSet()


def default_threads():
    """Worker threads per prefetching layer: CAFFEINE_DATA_THREADS, else min(4, CPUs)."""
    env = os.environ.get('CAFFEINE_DATA_THREADS', '').strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return max(1, min(4, os.cpu_count() or 1))


class Slot:
    """One batch's buffers: ``buffer(i, shape)`` (host, reused), ``data(i)``, ``device(i)``."""

    __slots__ = ('_host', '_pinned', '_views', '_dev', 'index', 'error', 'on_device', 'info', 'ready', 'consumed')

    def __init__(self):
        self._host = []
        self._pinned = []
        self._views = []
        self._dev = []
        self.index = -1
        self.error = None
        self.on_device = False
        self.info = None
        self.ready = None      # GPU: event of the copy to the device (on the worker's side stream)
        self.consumed = None   # GPU: event of the consumer's copies out of the device buffers

    def buffer(self, i, shape, dtype=np.float32):
        """Host array ``i`` of ``shape``, reusing its storage when large enough (pinned in GPU mode)."""
        shape = tuple(int(s) for s in shape)
        n = math.prod(shape)
        while len(self._host) <= i:
            self._host.append(None)
            self._pinned.append(False)
            self._views.append(None)
            self._dev.append(None)
        buf = self._host[i]
        gpu = backend.is_gpu()
        if buf is None or buf.size < n or buf.dtype != dtype or (gpu and not self._pinned[i]):
            buf = backend.pinned_empty(max(n, 1), dtype)
            self._host[i] = buf
            self._pinned[i] = gpu
        v = buf[:n].reshape(shape)
        self._views[i] = v
        return v

    def data(self, i):
        return self._views[i]

    def count(self):
        return len(self._views)

    def device(self, i):
        return self._dev[i] if self.on_device else None

    def _to_device(self, stream):
        """Start the copy of the batch to the device on ``stream`` (after the consumer's copies
        out of the previous batch, on the device) and record ``ready``."""
        backend.wait_event(self.consumed, stream)
        self.consumed = None
        for i, v in enumerate(self._views):
            if v is None:
                continue
            d = self._dev[i]
            if d is None or d.size < v.size or d.dtype != v.dtype:
                d = backend.empty((max(v.size, 1),), v.dtype, device=True)
                self._dev[i] = d
            backend.upload_async(d[:v.size], v, stream)
        self.ready = backend.record_event(stream)
        self.on_device = True

    def device_view(self, i):
        v = self._views[i]
        return self._dev[i][:v.size].reshape(v.shape)


class DataSource:
    """What a prefetching data layer reads from (a database, a list of images, a
    window file): the contract between the layer and the :class:`Prefetcher`.

    - ``claim(k)`` returns batch ``k``'s job: the records to read and the batch's
      random draws.  Called under the prefetcher's lock, once per batch, in batch
      order, so the batches never depend on thread timing.
    - ``make(job, slot)`` builds the batch into ``slot.buffer(i, shape)`` (top
      ``i``).  Called in the worker threads, several at once: it must only read
      the source's shared state, never move it.
    - ``get_state()`` says where the next ``claim`` starts (position, order,
      random generator state) as plain JSON values; ``set_state(state)`` goes
      back there.  Only called while no thread is claiming.
    - ``close()`` releases files and databases; called once the threads are done.

    A source holds no reference to its layer, so that the layer can be collected
    (and its threads stopped) while batches are in flight.
    """

    def claim(self, k):
        raise NotImplementedError

    def make(self, job, slot):
        raise NotImplementedError

    def get_state(self):
        raise NotImplementedError

    def set_state(self, state):
        raise NotImplementedError

    def close(self):
        """Release what the source holds open (by default, nothing)."""


class Prefetcher:
    """``slots`` batches in flight, built by ``claim``/``make`` in daemon threads (see the module)."""

    def __init__(self, name, claim, make, slots=4, threads=None, close_hook=None):
        self.name = name
        self._claim = claim
        self._make = make
        self._close_hook = close_hook
        self.sync = int(slots) <= 0
        nslots = max(1, int(slots))
        self._free = queue.Queue()
        for _ in range(nslots):
            self._free.put(Slot())
        self._ready = {}
        self._cv = threading.Condition()
        self._claim_lock = threading.Lock()
        self._next_claim = 0
        self._next_out = 0
        self._failed = None
        self._stop = threading.Event()
        self._closed = False
        self._local = threading.local()   # each thread's side stream (GPU)
        self.wait_time = 0.0       # seconds next() spent waiting for a batch
        self.batches = 0
        self._threads = []
        if not self.sync:
            n = default_threads() if threads is None else max(1, int(threads))
            n = min(n, nslots)
            for t in range(n):
                th = threading.Thread(target=self._worker, name='caffeine-prefetch-%s-%d' % (name, t), daemon=True)
                self._threads.append(th)
            _live.add(self)
            for th in self._threads:
                th.start()

    # -- building one batch ----------------------------------------------------------------
    def _wrap(self, e):
        if isinstance(e, CaffeineError):
            return e
        err = DataError('%s: prefetch failed: %s: %s' % (self.name, type(e).__name__,
                                                          (str(e).splitlines() or [''])[0]))
        err.__cause__ = e
        return err

    def _build(self, slot):
        """Claim the next batch and make it into ``slot`` (any error goes into ``slot.error``)."""
        with self._claim_lock:
            if self._failed is not None or self._stop.is_set():
                return False
            k = self._next_claim
            self._next_claim += 1
            job = None
            try:
                job = self._claim(k)
            except BaseException as e:  # a worker must not die silently
                slot.error = self._wrap(e)
                self._failed = k
        slot.index = k
        slot.on_device = False
        if slot.error is None:
            try:
                backend.event_synchronize(slot.ready)   # the last copy out of these host buffers is done
                slot.ready = None
                self._make(job, slot)
                if backend.is_gpu():
                    slot._to_device(self._side_stream())
            except BaseException as e:
                slot.error = self._wrap(e)
                with self._claim_lock:
                    if self._failed is None or self._failed > k:
                        self._failed = k
        return True

    def _side_stream(self):
        """This thread's stream for the copies to the device (made once per thread)."""
        stream = getattr(self._local, 'stream', None)
        if stream is None:
            stream = self._local.stream = backend.side_stream()
        return stream

    def _worker(self):
        gpu_ready = False
        while not self._stop.is_set():
            try:
                slot = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            if self._stop.is_set():
                self._free.put(slot)
                break
            if backend.is_gpu() and not gpu_ready:
                try:
                    backend.set_device(backend.device_id())   # this thread's current device
                except Exception:
                    pass
                gpu_ready = True
            if not self._build(slot):
                self._free.put(slot)
                with self._cv:
                    self._cv.notify_all()
                if self._failed is not None:
                    break
                continue
            with self._cv:
                self._ready[slot.index] = slot
                self._cv.notify_all()

    # -- the consumer -------------------------------------------------------------------------
    def next(self):
        """The next batch in order (a Slot); a worker's error is raised here, naming the layer."""
        if self._closed:
            raise DataError('%s: data prefetching is closed' % self.name)
        t0 = time.perf_counter()
        if self.sync and self._next_out not in self._ready:
            slot = self._free.get()
            slot.error = None
            if not self._build(slot):
                self._free.put(slot)
                raise DataError('%s: data prefetching stopped' % self.name)
            with self._cv:
                self._ready[slot.index] = slot
        with self._cv:
            while self._next_out not in self._ready:
                if self._closed:
                    raise DataError('%s: data prefetching is closed' % self.name)
                if not any(t.is_alive() for t in self._threads):
                    raise DataError('%s: data prefetching threads have stopped' % self.name)
                self._cv.wait(0.5)
            slot = self._ready[self._next_out]
            if slot.error is not None:
                # leave it there: every later call raises the same error
                self.wait_time += time.perf_counter() - t0
                raise slot.error
            del self._ready[self._next_out]
            self._next_out += 1
        if slot.on_device:
            backend.wait_event(slot.ready)   # the compute stream reads the batch after its copy
        self.wait_time += time.perf_counter() - t0
        self.batches += 1
        return slot

    def release(self, slot):
        """Give a slot back for the next batches (call it after queuing the copies out of the
        slot's device buffers: in GPU mode the next copy into them waits for those)."""
        slot.error = None
        slot.info = None
        if slot.on_device:
            slot.consumed = backend.record_event()
        self._free.put(slot)

    def close(self, timeout=5.0, keep_source=False):
        """Stop the workers and wait (at most ``timeout`` s each) for them; idempotent.
        Then run the close hook (close the source), unless ``keep_source`` (a new
        Prefetcher continues on the same source) or a worker is still busy."""
        if keep_source:
            self._close_hook = None
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        me = threading.current_thread()
        for th in self._threads:
            if th is not me and th.is_alive():
                th.join(timeout)
        _live.discard(self)
        if any(th.is_alive() for th in self._threads if th is not me):
            return      # a worker still busy: leave the source open under it (a daemon thread)
        if self._close_hook is not None:
            hook, self._close_hook = self._close_hook, None
            try:
                hook()
            except Exception:
                pass

    @property
    def closed(self):
        return self._closed

    @property
    def stopped(self):
        """True when no worker thread is running (always, for a synchronous one)."""
        return not any(th.is_alive() for th in self._threads)

    def __repr__(self):
        return '<Prefetcher %s: %d thread(s), %s>' % (self.name, len(self._threads),
                                                    'closed' if self._closed else 'open')


@atexit.register
def _close_all():
    for pf in list(_live):
        try:
            pf.close(timeout=2.0)
        except Exception:
            pass
