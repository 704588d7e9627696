"""Why a layer is slower inside a training step than alone: the same layers timed three ways.

For each round (interleaved, so the machine's load changes hit all three alike):

- **in-step**: one ``solver.step(1)``, each layer's forward and backward timed by the
  Net's before/after hooks;
- **alone, cold**: each layer once more, forward then backward, right after a sweep
  over a ``--sweep-mb`` buffer that evicts the caches (what the layer meets inside a
  step, where the layers before it filled the caches with their own data);
- **alone, hot**: the same layer's third call in a row (its inputs, weights and
  workspace still in cache: what ``caffeine time`` and ``bench_cpu.py --layers`` see).

Medians over the rounds, in ms.  The step's time minus the in-step layer sum is the
update, the data layer's copy and the step's own overhead.

    python benchmarks/step_breakdown.py --net lenet               # Input data, as bench_cpu.py
    python benchmarks/step_breakdown.py --net cifar10_quick --rounds 30
    python benchmarks/step_breakdown.py --solver solvers/lenet_solver.prototxt   # the real LMDB job
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import models as M  # noqa: E402  (puts the repository root on sys.path)

from caffeine import solver as solver_mod  # noqa: E402
from caffeine.solver_setup import load_solver_param  # noqa: E402


def build(args):
    if args.solver:
        p, _ = load_solver_param(args.solver)
        p.test_initialization = False
        p.test_interval = 10 ** 9
        p.display = 0
        p.snapshot = 0
        p.max_iter = 10 ** 9
        return solver_mod.SGDSolver(p)
    param = M.net_param(args.net)
    s, _ = M.make_trainer(param)
    M.set_inputs(s.net, M.make_inputs(args.net, param))
    return s


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--net', default='lenet', help='a training net of benchmarks/models.py (Input data)')
    ap.add_argument('--solver', help='a solver prototxt (its real data), instead of --net')
    ap.add_argument('--rounds', type=int, default=60)
    ap.add_argument('--sweep-mb', type=int, default=64, help='buffer swept before each cold call (default 64 MiB)')
    args = ap.parse_args(argv)
    s = build(args)
    net = s.net
    layers = net._layers
    n = len(layers)
    cur = {}
    t0 = [0.0]
    net._before_forward.append(lambda i: t0.__setitem__(0, time.perf_counter()))
    net._after_forward.append(lambda i: cur.__setitem__((i, 0), time.perf_counter() - t0[0]))
    net._before_backward.append(lambda i: t0.__setitem__(0, time.perf_counter()))
    net._after_backward.append(lambda i: cur.__setitem__((i, 1), time.perf_counter() - t0[0]))
    sweep = np.ones(args.sweep_mb << 18, np.float32)
    R = args.rounds
    steps = np.zeros(R)
    t = {k: np.zeros((R, n, 2)) for k in ('in-step', 'cold', 'hot')}
    s.step(5)
    for r in range(R):
        cur.clear()
        steps[r] = timed(lambda: s.step(1))
        for (i, d), v in cur.items():
            t['in-step'][r, i, d] = v
        for i in range(1, n):
            layer, bot, top = layers[i], net.bottom_vecs[i], net.top_vecs[i]
            passes = [lambda: layer.Forward(bot, top)]
            if net.layer_need_backward[i]:
                passes.append(lambda: layer.Backward(top, net.bottom_need_backward[i], bot))
            for d, f in enumerate(passes):
                sweep.sum()
                t['cold'][r, i, d] = timed(f)
                f()
                f()
                t['hot'][r, i, d] = timed(f)
    med = {k: np.median(v, axis=0) * 1e3 for k, v in t.items()}
    print('%s: %d rounds; step median %.2f ms (fastest %.2f)' % (
        args.solver or args.net, R, np.median(steps) * 1e3, steps.min() * 1e3))
    print('%-14s %17s %17s %17s' % ('layer (ms)', 'in-step fwd/bwd', 'cold fwd/bwd', 'hot fwd/bwd'))
    for i in range(n):
        row = [med[k][i, d] for k in ('in-step', 'cold', 'hot') for d in (0, 1)]
        print('%-14s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f' % (layers[i].name[:14], *row))
    sums = [med[k][:, d].sum() for k in ('in-step', 'cold', 'hot') for d in (0, 1)]
    print('%-14s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f' % ('sum', *sums))
    instep, cold, hot = sums[0] + sums[1], sums[2] + sums[3], sums[4] + sums[5]
    print('layers in-step %.2f ms = %.2fx their cold-cache time alone, %.2fx their hot-cache time alone; '
          'update + data + step overhead %.2f ms' % (instep, instep / cold, instep / hot,
                                                    np.median(steps) * 1e3 - instep))


if __name__ == '__main__':
    main()
