"""Communicators: the collectives data-parallel training needs, on MPI or NCCL.

caffeine has no transport of its own.  Between processes on CPUs, and between
machines, it uses MPI through mpi4py (>= 4; ``pip install 'caffeine[mpi]'``
brings mpi4py and MPICH); between GPUs it uses NCCL through CuPy, with the
NCCL id carried by MPI or by the process that spawned the ranks.

Every communicator offers the same few operations on contiguous float32
buffers of the current backend (NumPy or CuPy arrays), in place:

- ``allreduce(buf)`` sums ``buf`` over the ranks; ``iallreduce(buf)`` starts it
  and returns a request whose ``wait()`` ends it;
- ``bcast(buf, root=0)``;
- ``allreduce_max(value)`` for a small integer (the agreed signal request);
- ``allgather_bytes(payload)`` (every rank's bytes, in rank order);
- ``abort(code)`` ends every rank of the job.
"""
from __future__ import annotations

import os

import numpy as np

from .. import backend
from ..errors import CaffeineError

__all__ = ['Communicator', 'SingleProcess', 'MPICommunicator', 'NCCLCommunicator', 'mpi_world_size', 'mpi_module',
           'nccl_unique_id', 'MPI_SIZE_VARIABLES']

# set by mpiexec/mpirun (MPICH's Hydra: PMI_SIZE; Open MPI; PMIx) and by Slurm's srun for a step
MPI_SIZE_VARIABLES = ('PMI_SIZE', 'OMPI_COMM_WORLD_SIZE', 'PMIX_SIZE', 'SLURM_STEP_NUM_TASKS')


def mpi_world_size():
    """How many ranks the launcher (mpiexec, mpirun, srun) started, from its environment; 1 if none."""
    for var in MPI_SIZE_VARIABLES:
        v = os.environ.get(var, '').strip()
        if v.isdigit() and int(v) > 1:
            return int(v)
    return 1


def mpi_module():
    """mpi4py's MPI module (initializes MPI), or a CaffeineError saying what to install."""
    try:
        import mpi4py
        from mpi4py import MPI
    except ImportError as e:
        raise CaffeineError('this process was started by an MPI launcher (%d ranks) but mpi4py is not '
                            'installed (%s): pip install \'caffeine[mpi]\'' % (mpi_world_size(), e))
    major = int(mpi4py.__version__.split('.')[0])
    if major < 4:
        raise CaffeineError('caffeine needs mpi4py >= 4, found %s: pip install -U \'caffeine[mpi]\''
                            % mpi4py.__version__)
    return MPI


class _Done:
    """A request that is already complete."""

    def wait(self):
        return None


class Communicator:
    """What the data-parallel trainer needs from a transport (see the module docstring)."""

    rank = 0
    size = 1
    name = 'none'

    def allreduce(self, buf):
        raise NotImplementedError

    def iallreduce(self, buf):
        self.allreduce(buf)
        return _Done()

    def bcast(self, buf, root=0):
        raise NotImplementedError

    def progress(self, requests):
        """Let started reductions advance while the caller computes (MPI progresses only inside its calls)."""
        return None

    def allreduce_max(self, value):
        raise NotImplementedError

    def allgather_bytes(self, payload):
        raise NotImplementedError

    def abort(self, code=1):
        os._exit(code)

    def __repr__(self):
        return '<%s rank %d of %d>' % (type(self).__name__, self.rank, self.size)


class SingleProcess(Communicator):
    """One rank alone: every collective leaves the buffers as they are."""

    name = 'single process'

    def allreduce(self, buf):
        return None

    def bcast(self, buf, root=0):
        return None

    def allreduce_max(self, value):
        return int(value)

    def allgather_bytes(self, payload):
        return [bytes(payload)]


class MPICommunicator(Communicator):
    """MPI (mpi4py): CPU ranks, on one machine or several.  Device buffers (GPU ranks
    that cannot use NCCL, e.g. several ranks on one GPU) go through host copies."""

    name = 'MPI'

    def __init__(self, comm=None):
        self.MPI = mpi_module()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def local_rank_and_size(self):
        """This rank's index among the ranks of its machine, and how many they are."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()

    def allreduce(self, buf):
        if backend.is_device_array(buf):     # GPU ranks without NCCL: through host memory
            host = backend.to_host(buf)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            backend.copy_into(buf, host)
            return
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def iallreduce(self, buf):
        if backend.is_device_array(buf):
            self.allreduce(buf)
            return _Done()
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def progress(self, requests):
        self.MPI.Request.Testall([r for r in requests if not isinstance(r, _Done)])

    def bcast(self, buf, root=0):
        if backend.is_device_array(buf):
            host = backend.to_host(buf)
            self.comm.Bcast(host, root=root)
            backend.copy_into(buf, host)
            return
        self.comm.Bcast(buf, root=root)

    def allreduce_max(self, value):
        return int(self.comm.allreduce(int(value), op=self.MPI.MAX))

    def allgather_bytes(self, payload):
        return self.comm.allgather(bytes(payload))

    def bcast_object(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def abort(self, code=1):
        try:
            self.comm.Abort(code)   # MPICH's may return before the launcher ends the job
        finally:
            os._exit(code)


def nccl_unique_id():
    """A new NCCL session id as bytes (pycaffe's ``NCCL.new_uid()``)."""
    uid = backend.nccl().get_unique_id()
    return bytes(int(v) & 0xFF for v in uid)


def _uid_tuple(uid):
    """NCCL's id as CuPy takes it: a tuple of C chars (signed) from bytes or a tuple."""
    if isinstance(uid, (bytes, bytearray)):
        return tuple(b - 256 if b > 127 else b for b in uid)
    return tuple(int(v) for v in uid)


class NCCLCommunicator(Communicator):
    """NCCL (CuPy's ``cupy.cuda.nccl``) on device buffers: one GPU per rank.

    ``uid`` is the session id of rank 0 (bytes from ``nccl_unique_id()`` or CuPy's
    tuple), handed to every rank by MPI or by the parent that spawned them.  The
    collectives run on the current CUDA stream, so they follow the computation
    that produced the gradients.
    """

    name = 'NCCL'

    def __init__(self, uid, size, rank, nccl=None):
        self.nccl = backend.nccl() if nccl is None else nccl
        self.size = int(size)
        self.rank = int(rank)
        if not 0 <= self.rank < self.size:
            raise CaffeineError('NCCL: rank %d is outside 0..%d' % (self.rank, self.size - 1))
        self.comm = self.nccl.NcclCommunicator(self.size, _uid_tuple(uid), self.rank)

    def _stream(self):
        s = backend.current_stream()
        return 0 if s is None else s.ptr

    def _op(self, buf, op):
        ptr = backend.buffer_address(buf)
        self.comm.allReduce(ptr, ptr, buf.size, self._dtype(buf), op, self._stream())

    def _dtype(self, buf):
        n = self.nccl
        kinds = {np.dtype(np.float32): n.NCCL_FLOAT32, np.dtype(np.int64): n.NCCL_INT64,
                 np.dtype(np.uint8): n.NCCL_UINT8, np.dtype(np.float64): n.NCCL_FLOAT64}
        try:
            return kinds[np.dtype(buf.dtype)]
        except KeyError:
            raise CaffeineError('NCCL: no reduction for %s buffers' % buf.dtype)

    def allreduce(self, buf):
        self._op(buf, self.nccl.NCCL_SUM)

    def bcast(self, buf, root=0):
        self.comm.bcast(backend.buffer_address(buf), buf.size, self._dtype(buf), root, self._stream())

    def allreduce_max(self, value):
        a = backend.to_device(np.array([int(value)], dtype=np.int64))
        self._op(a, self.nccl.NCCL_MAX)
        return int(backend.to_host(a)[0])

    def allgather_bytes(self, payload):
        payload = bytes(payload)
        width = self.allreduce_max(len(payload))
        mine = np.zeros(width + 8, dtype=np.uint8)
        mine[:8] = np.frombuffer(np.int64(len(payload)).tobytes(), dtype=np.uint8)
        mine[8:8 + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        send = backend.to_device(mine)
        recv = backend.to_device(np.zeros(self.size * mine.size, dtype=np.uint8))
        self.comm.allGather(backend.buffer_address(send), backend.buffer_address(recv), mine.size,
                            self.nccl.NCCL_UINT8, self._stream())
        rows = backend.to_host(recv).reshape(self.size, mine.size)
        return [r[8:8 + int(np.frombuffer(r[:8].tobytes(), dtype=np.int64)[0])].tobytes() for r in rows]

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            os._exit(code)
