"""Starting data-parallel training: MPI launches, spawned GPU ranks, per-rank settings.

- ``mpiexec -n N caffeine train ...`` (or ``srun``): every process is a rank;
  ``mpi_launch()`` sees the launcher's environment and returns an MPI
  communicator.  With ``--gpu``, each rank takes a GPU of its machine and MPI
  only carries NCCL's id; NCCL reduces.
- ``caffeine train --gpu 0,1``: ``spawn(...)`` starts one process per GPU with
  the spawn method, as BVLC's ``python/train.py`` does, hands each the NCCL id
  made in the parent, and ends every rank as soon as one fails.
- ``rank_setup(...)``: the process-wide solver count/rank, the share of the
  machine's cores for BLAS and data threads, and logging (INFO on rank 0 only).
- ``fail(comm, error)``: one line naming the rank, then the whole job ends.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback

from .. import runtime
from ..errors import CaffeineError
from .comm import MPICommunicator, mpi_world_size

log = logging.getLogger('caffeine')

ABORT_DELAY = 0.5    # seconds between a failing rank's error line and the abort of the job
_USER_THREAD_VARIABLES = ('CAFFEINE_BLAS_THREADS', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def mpi_launch():
    """An MPICommunicator when this process is one of several ranks of mpiexec/srun, else None."""
    n = mpi_world_size()
    if n <= 1:
        return None
    comm = MPICommunicator()
    if comm.size != n:
        raise CaffeineError('the launcher says %d ranks but MPI sees %d: is mpi4py built for the MPI of '
                            'this mpiexec? (set MPI4PY_LIBMPI to the cluster\'s libmpi)' % (n, comm.size))
    return comm


def threads_per_rank(local_ranks, cpus=None):
    """Cores for one rank's BLAS when ``local_ranks`` ranks share this machine."""
    if cpus is None:   # the cores this process may run on (a container's or a batch system's share)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return max(1, cpus // max(1, local_ranks))


def size_threads(local_ranks):
    """Limit this rank's BLAS threads to its share of the cores (CAFFEINE_BLAS_THREADS, or the
    BLAS's own OPENBLAS_NUM_THREADS/OMP_NUM_THREADS/MKL_NUM_THREADS, win), and its data threads."""
    user = next((v for v in _USER_THREAD_VARIABLES if os.environ.get(v, '').strip()), None)
    n = threads_per_rank(local_ranks)
    if user == 'CAFFEINE_BLAS_THREADS':
        n = max(1, int(os.environ['CAFFEINE_BLAS_THREADS']))
    os.environ.setdefault('CAFFEINE_DATA_THREADS', str(max(1, min(4, n))))
    if user is not None and user != 'CAFFEINE_BLAS_THREADS':
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.warning('threadpoolctl is not installed: each of the %d ranks on this machine may start a BLAS '
                    'thread per core (pip install threadpoolctl, or set OPENBLAS_NUM_THREADS)', local_ranks)
        return None
    threadpool_limits(limits=n, user_api='blas')
    return n


def rank_setup(size, rank, local_ranks):
    """Process-wide settings of one rank of ``size``."""
    runtime.set_solver_count(size)
    runtime.set_solver_rank(rank)
    runtime.set_multiprocess(True)
    if rank > 0:
        logging.getLogger('caffeine').setLevel(logging.WARNING)   # only the root solver logs at INFO
    return size_threads(local_ranks)


def fail(comm, error, debug=False):
    """Print one line naming this rank, then end every rank of the job."""
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__)
    msg = str(error).splitlines()[0] if str(error) else type(error).__name__
    sys.stderr.write('caffeine: error: rank %d of %d: %s\n' % (comm.rank, comm.size, msg))
    sys.stderr.flush()
    # the launcher forwards a rank's output through a pipe; an abort handled first would drop the line
    time.sleep(ABORT_DELAY)
    comm.abort(1)


# -- spawned ranks (one machine, several GPUs) ------------------------------------
def _child(target, rank, args):
    try:
        target(rank, *args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        sys.stderr.flush()
        os._exit(code)
    except BaseException as e:   # the one line is printed here; the parent stops the others
        if os.environ.get('CAFFEINE_DEBUG') == '1':
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write('caffeine: error: rank %d: %s\n' % (rank, msg))
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    os._exit(0)


def spawn(target, nprocs, args=(), grace=5.0):
    """Run ``target(rank, *args)`` in ``nprocs`` spawned processes; when one fails, stop the others
    and raise a CaffeineError naming it.  SIGINT and SIGHUP reach the ranks (the parent waits)."""
    ctx = multiprocessing.get_context('spawn')
    procs = [ctx.Process(target=_child, args=(target, r, tuple(args)), name='caffeine-rank-%d' % r)
             for r in range(nprocs)]
    old = {}
    for s in (signal.SIGINT, getattr(signal, 'SIGHUP', None)):
        if s is not None:
            old[s] = signal.signal(s, lambda signum, frame, s=s: _forward(procs, signum))
    try:
        for p in procs:
            p.start()
        alive = list(procs)
        while alive:
            multiprocessing.connection.wait([p.sentinel for p in alive])
            for p in list(alive):
                if p.exitcode is None:
                    continue
                alive.remove(p)
                if p.exitcode != 0:
                    _stop(alive, grace)
                    how = ('was killed by signal %d' % -p.exitcode if p.exitcode < 0
                           else 'failed (exit status %d)' % p.exitcode)
                    raise CaffeineError('rank %d of %d %s; the other ranks were stopped'
                                        % (procs.index(p), nprocs, how))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop([p for p in procs if p.pid is not None and p.exitcode is None], grace)


def _forward(procs, signum):
    for p in procs:
        if p.pid is not None and p.exitcode is None:
            os.kill(p.pid, signum)


def _stop(procs, grace):
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(grace)
        if p.exitcode is None:
            p.kill()
            p.join()
