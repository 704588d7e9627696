"""Blob: Caffe's N-D array of ``data`` and ``diff``.

Storage follows Caffe's SyncedMemory: each of data and diff is a flat float32
buffer with a capacity, mirrored on the host (NumPy) and, in GPU mode, on the
device (CuPy), copied lazily in whichever direction was last written.

- ``blob.data`` / ``blob.diff``: NumPy views, writable, as in pycaffe (in GPU
  mode the device copy is refreshed on its next use).
- ``blob.xdata`` / ``blob.xdiff``: arrays of the current backend (NumPy on the
  CPU, CuPy on the GPU); this is what layers compute on.

``reshape`` reuses the buffers while their capacity suffices, so a net
allocates nothing after its first iteration.
"""
from __future__ import annotations

import numpy

from . import backend
from .errors import CaffeineError
from .proto import caffe_pb2

_UNINIT, _HOST, _DEVICE, _SYNCED = 0, 1, 2, 3
MAX_BLOB_AXES = 32


class SyncedMemory:
    """A flat float32 buffer mirrored on host and device, synced on demand."""

    __slots__ = ('capacity', 'dtype', '_host', '_dev', '_head')

    def __init__(self, capacity, dtype=numpy.float32):
        self.capacity = int(capacity)
        self.dtype = dtype
        self._host = None
        self._dev = None
        self._head = _UNINIT

    def _host_buf(self):
        if self._host is None:
            self._host = backend.zeros((self.capacity,), self.dtype, device=False)
        return self._host

    def host(self):
        """The host buffer, synced; the caller may write it."""
        if self._head == _DEVICE:
            self._host_buf()
            self._host[...] = backend.to_host(self._dev)
        elif self._head == _UNINIT:
            self._host_buf()
        self._head = _HOST
        return self._host

    def host_readonly(self):
        if self._head == _DEVICE:
            self._host_buf()
            self._host[...] = backend.to_host(self._dev)
            self._head = _SYNCED
        elif self._head == _UNINIT:
            self._host_buf()
            self._head = _HOST
        return self._host

    def device(self):
        """The buffer of the current backend, synced; the caller may write it."""
        if not backend.is_gpu():
            return self.host()
        if self._dev is None:
            self._dev = backend.zeros((self.capacity,), self.dtype, device=True)
            if self._head in (_HOST, _SYNCED):
                self._dev.set(self._host)
        elif self._head == _HOST:
            self._dev.set(self._host)
        self._head = _DEVICE
        return self._dev

    @classmethod
    def over(cls, array):
        """Memory whose current copy is ``array`` (a flat float buffer of the current
        backend, e.g. a slice of a larger one), kept as is: no copy is made."""
        m = cls(array.size, array.dtype)
        if backend.is_device_array(array):
            m._dev, m._head = array, _DEVICE
        else:
            m._host, m._head = array, _HOST
        return m


class Blob:
    """An N-D float32 array with its gradient, as Caffe's Blob."""

    def __init__(self, *shape, dtype=numpy.float32):
        self.dtype = dtype
        self._shape = ()
        self._count = 0
        self._data = None
        self._diff = None
        self._views = {}
        explicit = len(shape) == 1 and isinstance(shape[0], (list, tuple))
        if explicit:
            shape = tuple(shape[0])
        if shape or explicit:  # Blob(()) is a 0-axis blob of one value, as Caffe's
            self.reshape(shape)

    # -- shape ---------------------------------------------------------
    def reshape(self, *shape):
        """Set the shape; keeps the buffers when their capacity suffices.  Returns None, as pycaffe's."""
        if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        if len(shape) > MAX_BLOB_AXES:
            raise CaffeineError('blob shape has %d axes, more than %d' % (len(shape), MAX_BLOB_AXES))
        for s in shape:
            if s < 0:
                raise CaffeineError('blob shape %s has a negative dimension' % (list(shape),))
        count = 1
        for s in shape:
            count *= s
        self._shape = shape
        self._count = count
        if self._data is None or count > self._data.capacity:
            self._data = SyncedMemory(count, self.dtype)
            self._diff = SyncedMemory(count, self.dtype)
        self._views = {}

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._count

    def count_range(self, start, end=None):
        end = len(self._shape) if end is None else end
        c = 1
        for s in self._shape[start:end]:
            c *= s
        return c

    @property
    def num_axes(self):
        return len(self._shape)

    def canonical_axis_index(self, axis):
        """``axis`` in ``[0, num_axes)``, negative values counting from the end (Caffe's
        Blob::CanonicalAxisIndex: ``-num_axes <= axis < num_axes``, so a 0-D blob has none)."""
        n = len(self._shape)
        if not -n <= axis < n:
            raise CaffeineError('axis %d out of range for a %d-D blob of shape %s' % (axis, n, list(self._shape)))
        return axis + n if axis < 0 else axis

    def _legacy(self, i):
        n = len(self._shape)
        if n > 4:
            raise CaffeineError('legacy num/channels/height/width asked of a %d-D blob' % n)
        # Caffe's LegacyShape: 1 for the axes a blob of fewer than 4 axes lacks
        return self._shape[i] if i < n else 1

    @property
    def num(self):
        return self._legacy(0)

    @property
    def channels(self):
        return self._legacy(1)

    @property
    def height(self):
        return self._legacy(2)

    @property
    def width(self):
        return self._legacy(3)

    # -- storage -------------------------------------------------------
    def _view(self, key, buf):
        v = self._views.get(key)
        if v is None:
            v = buf[:self._count].reshape(self._shape)
            self._views[key] = v
        return v

    @property
    def data(self):
        """NumPy view of the values (writable, as in pycaffe)."""
        return self._view(('data', 'h', id(self._data)), self._data.host())

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        """NumPy view of the gradient (writable, as in pycaffe)."""
        return self._view(('diff', 'h', id(self._diff)), self._diff.host())

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    @property
    def xdata(self):
        """Values as an array of the current backend: what layers compute on."""
        return self._view(('data', backend.mode(), id(self._data)), self._data.device())

    @property
    def xdiff(self):
        """Gradient as an array of the current backend."""
        return self._view(('diff', backend.mode(), id(self._diff)), self._diff.device())

    def host_data(self):
        """Read-only access to the values on the host (no write-back to the device)."""
        return self._data.host_readonly()[:self._count].reshape(self._shape)

    def host_diff(self):
        return self._diff.host_readonly()[:self._count].reshape(self._shape)

    # -- sharing -------------------------------------------------------
    def share_data(self, other: 'Blob'):
        """Use ``other``'s data buffer (Caffe's ShareData); counts must agree."""
        if self._count != other._count:
            raise CaffeineError('share_data: count %d != %d' % (self._count, other._count))
        self._data = other._data
        self._views = {}

    def share_diff(self, other: 'Blob'):
        if self._count != other._count:
            raise CaffeineError('share_diff: count %d != %d' % (self._count, other._count))
        self._diff = other._diff
        self._views = {}

    @property
    def data_memory(self):
        """The SyncedMemory holding the values (None before the first reshape); blobs
        that share data (share_data, the memory planner) hold the same one."""
        return self._data

    @property
    def diff_memory(self):
        """The SyncedMemory holding the gradient (None before the first reshape)."""
        return self._diff

    def set_data_memory(self, mem):
        """Put this blob's data in ``mem`` (a SyncedMemory at least as large): the memory planner."""
        if mem.capacity < self._count:
            raise CaffeineError('planned buffer of %d values too small for blob of %d' % (mem.capacity, self._count))
        self._data = mem
        self._views = {}

    def place_in(self, data, diff):
        """Move values and gradient into ``data`` and ``diff`` (flat arrays of the current
        backend, ``count`` long, usually views of one buffer for the whole net, as Caffe's
        GPUParams lays out a net's parameters); the current contents are copied there."""
        for arr in (data, diff):
            if arr.ndim != 1 or arr.size != self._count or arr.dtype != self.dtype:
                raise CaffeineError('place_in: need flat %s arrays of %d values, got %s %s'
                                    % (numpy.dtype(self.dtype).name, self._count, arr.dtype, list(arr.shape)))
        data[...] = self.xdata.reshape(-1)
        diff[...] = self.xdiff.reshape(-1)
        self._data = SyncedMemory.over(data)
        self._diff = SyncedMemory.over(diff)
        self._views = {}

    def shares_data_with(self, other):
        return self._data is other._data

    # -- arithmetic helpers (Caffe's Blob API) -------------------------
    def update(self):
        """data -= diff (Caffe's Blob::Update)."""
        xd = self.xdata
        xd -= self.xdiff

    def asum_data(self):
        xp = backend.get_xp()
        return float(xp.abs(self.xdata).sum())

    def asum_diff(self):
        xp = backend.get_xp()
        return float(xp.abs(self.xdiff).sum())

    def sumsq_data(self):
        d = self.xdata
        return float((d * d).sum())

    # -- proto ---------------------------------------------------------
    def to_proto(self, proto=None, write_diff=False):
        """Fill a caffe_pb2.BlobProto (shape + float data, and diff if asked)."""
        if proto is None:
            proto = caffe_pb2.BlobProto()
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        proto.data.extend(self.host_data().ravel().tolist())
        if write_diff:
            proto.diff.extend(self.host_diff().ravel().tolist())
        return proto

    def __repr__(self):
        return 'Blob(%s)' % ' '.join(str(s) for s in self._shape)

    def shape_string(self):
        return '%s (%d)' % (' '.join(str(s) for s in self._shape), self._count)
