"""Data-parallel training of one solver per rank: Caffe's GPUParams and NCCL classes.

``FlatParams`` lays a net's learnable parameters out in two contiguous buffers
(values and gradients, in ``net.learnable_params`` order), so one collective
covers the whole net.  ``DataParallel`` is pycaffe's ``caffe.NCCL``: it
broadcasts rank 0's weights, and sums the gradients over the ranks and scales
them by 1/N before the update, either all at once (``on_gradients_ready``) or
layer by layer as backward produces them (as a ``net.after_backward``
callback, Caffe's ``layer_wise_reduce``).  It runs on any communicator of
``caffeine.parallel.comm``: NCCL on GPUs, MPI on CPUs.
"""
from __future__ import annotations

import json
import time

import numpy as np

from .. import backend
from ..errors import CaffeineError
from .. import runtime
from .comm import Communicator, NCCLCommunicator, SingleProcess, nccl_unique_id
from .launch import mpi_launch

__all__ = ['FlatParams', 'DataParallel', 'AgreedActions', 'NCCL', 'has_nccl']


class FlatParams:
    """Caffe's GPUParams: one buffer of values and one of gradients for ``net.learnable_params``.

    Each learnable parameter's data and diff become views of ``data``/``diff``
    (its span is ``spans[i] = (offset, count)``); parameters shared by name
    follow their owner.  Built after the mode (CPU/GPU) is set.
    """

    def __init__(self, net):
        params = net.learnable_params
        self.spans = []
        offset = 0
        for p in params:
            self.spans.append((offset, p.count))
            offset += p.count
        self.size = offset
        self.data = backend.zeros((max(offset, 1),))[:offset]
        self.diff = backend.zeros((max(offset, 1),))[:offset]
        for p, (off, n) in zip(params, self.spans):
            p.place_in(self.data[off:off + n], self.diff[off:off + n])
        layers = net.layers
        for pid, owner in enumerate(net.param_owners):
            if owner >= 0:
                li, j = net.param_layer_indices[pid]
                oli, oj = net.param_layer_indices[owner]
                layers[li].blobs[j].share_data(layers[oli].blobs[oj])
                layers[li].blobs[j].share_diff(layers[oli].blobs[oj])
        self._params = params

    def sync_values(self):
        """Make the flat value buffer current (pycaffe may have written ``blob.data`` on the host)."""
        for p in self._params:
            p.xdata

    def sync_gradients(self):
        for p in self._params:
            p.xdiff


class DataParallel:
    """pycaffe's ``caffe.NCCL(solver, uid)``: one solver's share of data-parallel training.

    ``comm`` is a Communicator (``caffeine.parallel.comm``).  Use it as BVLC's
    ``python/train.py`` does::

        nccl = caffe.NCCL(solver, uid)   # after set_solver_count/rank and the mode
        nccl.bcast()                     # rank 0's weights everywhere
        solver.add_callback(nccl)        # on_start, on_gradients_ready
        if solver.param.layer_wise_reduce:
            solver.net.after_backward(nccl)
        solver.step(solver.param.max_iter)

    Gradients: summed over the ranks, then scaled by 1/N (``solver_count``), so N
    ranks with batch B train as one with batch N*B.
    """

    def __init__(self, solver, comm: Communicator):
        self.solver = solver
        self.comm = comm
        net = solver.net
        self.layer_wise = bool(solver.param.layer_wise_reduce)
        if self.layer_wise and len(net.param_owners) != len(net.learnable_params):
            raise CaffeineError('net %r shares weights between layers (%d parameters, %d learnable): '
                                'layer_wise_reduce is not supported for it; set layer_wise_reduce: false '
                                'in the solver' % (net.name, len(net.param_owners), len(net.learnable_params)))
        self.params = FlatParams(net)
        self.scale = np.float32(1.0 / comm.size)
        # each layer's span of the flat gradient buffer (its blobs are consecutive learnable params)
        self.layer_spans = {}
        lid = 0
        for i, layer in enumerate(net.layers if self.layer_wise else ()):
            if layer.blobs:
                first = self.params.spans[lid][0]
                lid += len(layer.blobs)
                last_off, last_n = self.params.spans[lid - 1]
                self.layer_spans[i] = (first, last_off + last_n)
        self._pending = []
        self._passes = 0
        self.comm_seconds = 0.0     # read by the benchmark: time spent waiting on the reduction

    @property
    def rank(self):
        return self.comm.rank

    @property
    def size(self):
        return self.comm.size

    # -- pycaffe's NCCL ----------------------------------------------------------
    def bcast(self):
        """Rank 0's weights to every rank (Caffe's NCCL::Broadcast)."""
        self.params.sync_values()
        if self.params.size:
            self.comm.bcast(self.params.data, root=0)

    def on_start(self):
        self._passes = 0
        self._pending = []

    def __call__(self, layer_index):
        """``net.after_backward`` hook: start reducing this layer's gradients (last pass of iter_size)."""
        if not self.layer_wise:
            raise CaffeineError('NCCL used as a net.after_backward callback, but the solver has '
                                'layer_wise_reduce: false')
        if self._passes == self.solver.param.iter_size - 1:
            span = self.layer_spans.get(layer_index)
            if span is not None:
                for p in self.solver.net.layers[layer_index].blobs:
                    p.xdiff
                self._pending.append(self.comm.iallreduce(self.params.diff[span[0]:span[1]]))
            if self._pending:
                self.comm.progress(self._pending)
        if layer_index == 0:
            self._passes += 1

    def on_gradients_ready(self):
        """Finish the reduction: every rank now holds the mean of the ranks' gradients."""
        t0 = time.perf_counter()
        diff = self.params.diff
        if self.layer_wise and self._passes:
            for req in self._pending:
                req.wait()
            self._pending = []
        else:
            self.params.sync_gradients()
            if self.params.size:
                self.comm.allreduce(diff)
        if self.params.size and self.comm.size > 1:
            diff *= self.scale
        self.comm_seconds += time.perf_counter() - t0

    # -- what caffeine's own trainer adds -----------------------------------------
    def agree(self, action_code):
        """The largest of the ranks' request codes (0 none), so a signal acts on every rank."""
        return self.comm.allreduce_max(action_code)

    def gather_states(self, state):
        """Every rank's JSON-able ``state`` in rank order (for the snapshot sidecar)."""
        rows = self.comm.allgather_bytes(json.dumps(state).encode('utf-8'))
        return [json.loads(r.decode('utf-8')) for r in rows]


class AgreedActions:
    """A solver action function whose answer every rank shares: after each iteration's
    gradients (a point every rank passes), the ranks agree on the strongest request
    (stop > snapshot > none) of their own action functions, e.g. the signal handlers."""

    _CODES = {'none': 0, 'snapshot': 1, 'stop': 2}
    _NAMES = {v: k for k, v in _CODES.items()}

    def __init__(self, dp, local_action):
        self.dp = dp
        self.local_action = local_action
        self.agreed = 'none'

    def on_gradients_ready(self):
        mine = self._CODES.get(self.local_action() or 'none', 0)
        self.agreed = self._NAMES[self.dp.agree(mine)]

    def __call__(self):
        a, self.agreed = self.agreed, 'none'
        return a


def has_nccl():
    """Whether NCCL is usable here (CuPy with NCCL and a CUDA device)."""
    try:
        backend.nccl()
    except CaffeineError:
        return False
    return True


class NCCL(DataParallel):
    """pycaffe's ``caffe.NCCL(solver, uid)`` for the process-wide solver count and rank.

    In GPU mode the ranks reduce with NCCL, joined by ``uid`` (``NCCL.new_uid()`` of
    the parent, as BVLC's python/train.py).  In CPU mode they reduce with MPI
    (the processes of one ``mpiexec``) and ``uid`` is not needed; one solver alone
    needs neither.
    """

    def __init__(self, solver, uid=None):
        count, rank = runtime.solver_count(), runtime.solver_rank()
        runtime.set_multiprocess(True)
        if backend.is_gpu():
            if not uid:
                raise CaffeineError('NCCL(solver, uid): GPU ranks need the id of NCCL.new_uid() from one process')
            comm = NCCLCommunicator(uid, count, rank)
        else:
            comm = mpi_launch() or SingleProcess()
            if comm.size != count or comm.rank != rank:
                raise CaffeineError('NCCL on the CPU reduces over MPI: solver count/rank %d/%d, but MPI has '
                                    'rank %d of %d (start the processes with mpiexec -n %d)'
                                    % (count, rank, comm.rank, comm.size, count))
        super().__init__(solver, comm)

    @staticmethod
    def new_uid():
        """NCCL's session id (bytes), b'' where there is no NCCL (CPU ranks reduce over MPI)."""
        return nccl_unique_id() if has_nccl() else b''
