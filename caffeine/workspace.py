"""The shared workspace: scratch buffers reused by every layer of a thread.

As Caffe's shared column buffer: each named buffer grows to the largest size
asked and never shrinks, so nothing is allocated after the first iteration.
The convolution engine takes its padded inputs, columns and transposed outputs
from here, and pooling its temporaries.  ``CAFFEINE_CONV_WORKSPACE_MB`` (256 by
default) bounds the column buffer: larger batches are processed in chunks.
"""
from __future__ import annotations

import os
import threading

import numpy as np

from . import backend

_ws = threading.local()
_ALIGN = 64  # bytes: BLAS and SIMD loops run faster on cache-line aligned operands


def align_floats(n):
    """``n`` float32 values rounded up to a whole number of cache lines: where a region
    carved out of a workspace buffer may start so that it stays aligned."""
    per = _ALIGN // 4
    return -(-int(n) // per) * per


def limit_floats():
    """The column buffer's bound in float32 values (``CAFFEINE_CONV_WORKSPACE_MB``, 256 MB by default)."""
    try:
        mb = float(os.environ.get('CAFFEINE_CONV_WORKSPACE_MB', '256'))
    except ValueError:
        mb = 256.0
    return max(int(mb * (1 << 20) // 4), 1)


def workspace(name, size, dtype=np.float32):
    """A flat buffer of at least ``size`` elements, shared by every layer of this thread.

    Keyed by name, dtype and backend mode/device; grows (one allocation) only when
    a larger size is asked.  The contents are not kept between calls of different layers.
    """
    d = getattr(_ws, 'bufs', None)
    if d is None:
        d = _ws.bufs = {}
    key = (name, np.dtype(dtype).str, backend.mode(), backend.device_id())
    buf = d.get(key)
    size = int(size)
    if buf is None or buf.size < size:
        buf = _aligned(backend.empty((max(size, 1) + _ALIGN,), dtype), max(size, 1))
        d[key] = buf
    return buf[:size]


def buffers():
    """This thread's buffers, {(name, dtype, mode, device): array} (for memory reports)."""
    return dict(getattr(_ws, 'bufs', None) or {})


def _aligned(raw, size):
    """A ``size``-element view of ``raw`` that starts on an _ALIGN-byte boundary."""
    try:
        ptr = raw.__array_interface__['data'][0]
    except AttributeError:  # CuPy: its allocations are already aligned
        return raw[:size]
    off = (-ptr % _ALIGN) // raw.itemsize
    return raw[off:off + size]
