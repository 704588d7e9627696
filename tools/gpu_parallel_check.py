#!/usr/bin/env python
"""Data-parallel training on a GPU machine: the checks tools/gpu_check.sh runs (part 4).

    python tools/gpu_parallel_check.py OUTDIR

On a small TanH + average-pooling net (HDF5 rows, SGD with momentum, 30 iterations):

1. NCCL here: ``caffe.has_nccl()``, and a real NCCL communicator of one rank
   (allreduce, bcast, the agreed maximum, the byte gather).
2. N=1 through pycaffe's NCCL (BVLC's python/train.py flow: ``NCCL(solver, uid)``,
   ``bcast()``, ``add_callback``, ``after_backward``) against the plain solver.
3. Two processes on one GPU (``mpiexec -n 2 caffeine train --gpu 0``, batch B,
   reduced over MPI through host memory) against one process with batch 2B.
4. With two GPUs or more: ``caffeine train --gpu 0,1`` (spawned ranks, NCCL),
   batch B, against one GPU with batch 2B.
Prints one line per check with its figure; exit status 1 if a check fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'tests'))

import caffeine  # noqa: E402
from test_parallel import weights, write_case  # noqa: E402

TOL = 2e-5
failed = []


def report(name, ok, detail):
    print('%-58s %s  %s' % (name, 'ok  ' if ok else 'FAIL', detail), flush=True)
    if not ok:
        failed.append(name)


def train(d, args, ranks=1):
    cmd = [sys.executable, '-m', 'caffeine', 'train', '--solver', 'solver.prototxt'] + args
    if ranks > 1:
        cmd = [os.path.join(sysconfig.get_path('scripts'), 'mpiexec'), '-n', str(ranks)] + cmd
    env = dict(os.environ, PYTHONPATH=str(ROOT), CAFFEINE_NO_PROGRESS='1')
    res = subprocess.run(cmd, cwd=str(d), env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
    return res.returncode == 0


def worst(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def case(out, name, batch, extra=''):
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    write_case(d, batch, 'momentum: 0.9\n' + extra)
    return d


def nccl_alone():
    from caffeine import backend
    from caffeine.parallel.comm import NCCLCommunicator, nccl_unique_id
    caffeine.set_mode_gpu()
    c = NCCLCommunicator(nccl_unique_id(), 1, 0)
    buf = backend.to_device(np.arange(5, dtype=np.float32))
    c.allreduce(buf)
    c.bcast(buf)
    ok = np.array_equal(backend.to_host(buf), np.arange(5)) and c.allreduce_max(3) == 3
    ok = ok and c.allgather_bytes(b'abc') == [b'abc']
    return ok


def pycaffe_one_rank(d):
    """python/train.py's solve() for one GPU; returns the final weights."""
    cwd = os.getcwd()
    os.chdir(d)
    try:
        caffeine.set_device(0)
        caffeine.set_mode_gpu()
        caffeine.set_solver_count(1)
        caffeine.set_solver_rank(0)
        caffeine.set_multiprocess(True)
        solver = caffeine.SGDSolver('solver.prototxt')
        nccl = caffeine.NCCL(solver, caffeine.NCCL.new_uid())
        nccl.bcast()
        solver.add_callback(nccl)
        if solver.param.layer_wise_reduce:
            solver.net.after_backward(nccl)
        solver.step(solver.param.max_iter)
        return {(n, i): b.data.ravel().copy() for n, bl in solver.net.params.items() for i, b in enumerate(bl)}
    finally:
        os.chdir(cwd)


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else '/tmp/gpu_check') / 'parallel'
    from caffeine import backend
    n_gpus = backend.device_count()
    has = caffeine.has_nccl()
    report('has_nccl()', True, '%s (%d GPU(s))' % (has, n_gpus))
    if has:
        report('NCCL communicator of one rank', nccl_alone(), 'allreduce, bcast, max, gather')
        ref = case(out, 'plain_b4', 4)
        ok = train(ref, ['--gpu', '0'])
        w = pycaffe_one_rank(case(out, 'pycaffe_b4', 4, 'layer_wise_reduce: true'))
        if ok:
            a = weights(ref / 'out/s_iter_30.caffemodel')
            diff = max(float(np.abs(a[k] - w[k]).max()) for k in a)
            report('N=1: pycaffe NCCL flow vs plain solver (GPU)', diff < TOL, 'max |dw| %.3g' % diff)
        else:
            report('N=1: pycaffe NCCL flow vs plain solver (GPU)', False, 'plain run failed')
    else:
        print('skipped: NCCL checks (CuPy finds no NCCL: pip install nvidia-nccl-cu12)')
    one = case(out, 'one_b8', 8)
    two = case(out, 'two_b4_shared_gpu', 4)
    ok1 = train(one, ['--gpu', '0'])
    ok2 = train(two, ['--gpu', '0'], ranks=2)
    if ok1 and ok2:
        diff = worst(weights(one / 'out/s_iter_30.caffemodel'), weights(two / 'out/s_iter_30.caffemodel'))
        report('2 processes on GPU 0 (MPI via host) vs 1 process, batch 2B', diff < TOL, 'max |dw| %.3g' % diff)
    else:
        report('2 processes on GPU 0 (MPI via host) vs 1 process, batch 2B', False, 'a run failed')
    if n_gpus >= 2 and has:
        multi = case(out, 'gpus_b4', 4)
        ok3 = train(multi, ['--gpu', '0,1'])
        if ok1 and ok3:
            diff = worst(weights(one / 'out/s_iter_30.caffemodel'), weights(multi / 'out/s_iter_30.caffemodel'))
            report('--gpu 0,1 (spawned ranks, NCCL) vs 1 GPU, batch 2B', diff < TOL, 'max |dw| %.3g' % diff)
        else:
            report('--gpu 0,1 (spawned ranks, NCCL) vs 1 GPU, batch 2B', False, 'a run failed')
    else:
        print('skipped: --gpu 0,1 (needs 2 GPUs and NCCL; %d GPU(s) here)' % n_gpus)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
