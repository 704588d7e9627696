#!/usr/bin/env python
"""Data-parallel training on MPI ranks: the communication per iteration and how much of it overlaps.

    pip install 'caffeine[mpi]'
    python benchmarks/bench_parallel.py [--only lenet,cifar10_quick,resnet50] [--iters N]

For each net (LeNet b=64, CIFAR10-quick b=100, ResNet-50 b=2, training with
SGD on synthetic inputs, Input layers standing in for the Data layers), one
run of 1 rank and, under the mpich wheel's ``mpiexec -n 2``, runs of 2 ranks
(each with the batch above: an effective batch twice as large), with the
whole-net reduction (``layer_wise_reduce: false``) and the layer-wise one:

- step: median wall time of one solver iteration (forward, backward, reduction, update);
- allreduce: median time of one allreduce of the whole gradient buffer alone
  (what the communication costs when nothing else runs);
- exposed: median time an iteration waits for the reduction to finish, in
  ``on_gradients_ready`` (for the layer-wise reduction, what backward did not hide);
- overlap: 1 - exposed / allreduce, the share of the communication hidden behind backward.

Each rank's BLAS gets its share of the cores (caffeine's per-rank sizing; set
OPENBLAS_NUM_THREADS to pin it).  Times are medians over ``--iters`` iterations
after 2 warm-up ones, on rank 0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import models  # noqa: E402

NETS = {
    'lenet': dict(batch=64, iters=20),
    'cifar10_quick': dict(batch=100, iters=10),
    'resnet50': dict(batch=2, iters=3),
}
models.NETS['resnet50_train'] = dict(kind='train', prototxt='models/resnet50/train_val.prototxt', input=(3, 224, 224),
                                     batch=2, classes=1000, data_range=(-128.0, 128.0), title='ResNet-50 train')


def worker(name, batch, iters, layer_wise):
    """One rank: train ``iters`` iterations, print rank 0's medians as JSON."""
    import caffeine
    from caffeine import runtime
    from caffeine.parallel.comm import SingleProcess
    from caffeine.parallel.launch import mpi_launch, rank_setup
    from caffeine.parallel.sync import DataParallel
    comm = mpi_launch() or SingleProcess()
    rank_setup(comm.size, comm.rank, comm.local_rank_and_size()[1] if comm.size > 1 else 1)
    key = 'resnet50_train' if name == 'resnet50' else name
    param = models.net_param(key, batch)
    sp = models.solver_param(param)
    sp.layer_wise_reduce = layer_wise
    solver = caffeine.SGDSolver(sp)
    models.set_inputs(solver.net, models.make_inputs(key, param, seed=runtime.solver_rank()))
    dp = DataParallel(solver, comm)
    dp.bcast()
    solver.add_callback(dp)
    if layer_wise:
        solver.net.after_backward(dp)
    steps, exposed = [], []
    for i in range(iters + 2):
        before = dp.comm_seconds
        t0 = time.perf_counter()
        solver.step(1)
        if i >= 2:
            steps.append(time.perf_counter() - t0)
            exposed.append(dp.comm_seconds - before)
    reduce_alone = []
    buf = dp.params.diff.copy()
    for _ in range(max(5, iters)):
        t0 = time.perf_counter()
        comm.allreduce(buf)
        reduce_alone.append(time.perf_counter() - t0)
    if comm.rank == 0:
        print(json.dumps({'step': statistics.median(steps), 'exposed': statistics.median(exposed),
                          'allreduce': statistics.median(reduce_alone) if comm.size > 1 else 0.0,
                          'params': int(dp.params.size)}))


def run(name, ranks, layer_wise, iters):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', name, '--batch', str(NETS[name]['batch']),
           '--iters', str(iters)] + (['--layer-wise'] if layer_wise else [])
    if ranks > 1:
        cmd = [os.path.join(sysconfig.get_path('scripts'), 'mpiexec'), '-n', str(ranks)] + cmd
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--only', default=','.join(NETS))
    ap.add_argument('--iters', type=int, default=0, help='timed iterations (default: per net)')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    ap.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--layer-wise', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        import logging
        logging.getLogger('caffeine').setLevel(logging.WARNING)
        return worker(a.worker, a.batch, a.iters, a.layer_wise)
    print('%-14s %-22s %9s %10s %9s %8s %9s' % ('net', 'ranks', 'step ms', 'allred ms', 'exposed', 'overlap',
                                               'img/s'))
    for name in a.only.split(','):
        iters = a.iters or NETS[name]['iters']
        b = NETS[name]['batch']
        for ranks, lw in ((1, False), (2, False), (2, True)):
            r = run(name, ranks, lw, iters)
            label = '1' if ranks == 1 else '2 (%s)' % ('layer-wise' if lw else 'whole net')
            overlap = (1 - r['exposed'] / r['allreduce']) if ranks > 1 and r['allreduce'] else 0.0
            print('%-14s %-22s %9.2f %10.3f %9.3f %7.0f%% %9.1f' % (
                name if ranks == 1 else '', label, r['step'] * 1e3, r['allreduce'] * 1e3, r['exposed'] * 1e3,
                100 * max(overlap, 0.0), ranks * b / r['step']))
        print('%-14s %d parameters (%.2f MB of gradients)' % ('', r['params'], r['params'] * 4 / 1e6))


if __name__ == '__main__':
    main()
