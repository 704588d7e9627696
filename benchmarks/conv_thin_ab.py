"""A/B of convolution engine settings on the training nets (LeNet, CIFAR10-quick): whole solver
steps, in one process, the variants alternating.

    python benchmarks/conv_thin_ab.py                                   # ROWS=0 against ROWS=1
    python benchmarks/conv_thin_ab.py --nets cifar10_quick --variants ROWS=0 ROWS=1 --reps 10 --rounds 2

Each variant sets module constants of ``caffeine.layers.conv_engine`` (as ``conv_layouts.py``
does) while its solver and net are built (so every convolution keeps the algorithm chosen
then); the nets start from the same weights and inputs.  After one step each, the largest
difference of the convolution weights to the first variant's is printed (the variants must
compute the same numbers); then the SGD steps (forward, backward, update) alternate
``--reps`` times per round, and each round prints the best and the median per variant and
the ratio of the first variant's to each other's (> 1: faster than the first).

With ``--memory``, each variant instead runs three steps in a fresh subprocess, which prints
its peak resident memory (VmHWM) above its size after the imports, and the bytes of the
shared workspace buffers (columns, padded inputs, transposed outputs) it ends with.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))     # this checkout's caffeine

import models as M  # noqa: E402
from conv_layouts import _settings  # noqa: E402

import caffeine  # noqa: E402
import caffeine.layers.conv_engine as engine  # noqa: E402


def _build(param, settings, inputs):
    saved = {k: getattr(engine, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(engine, k, v)
        caffeine.set_random_seed(1701)
        trainer, _ = M.make_trainer(param)
    finally:
        for k, v in saved.items():
            setattr(engine, k, v)
    M.set_inputs(trainer.net, inputs)
    return trainer


def _memory_child(name, variant):
    from bench_cpu import peak_rss, proc_status
    from caffeine import workspace
    a = np.ones((256, 256), np.float32)
    np.dot(a, a)                             # the BLAS's own buffers before the baseline
    base = proc_status('VmRSS') or 0
    param = M.net_param(name)
    trainer = _build(param, _settings(variant), M.make_inputs(name, param, seed=0))
    trainer.step(3)
    ws = sum(b.nbytes for b in workspace.buffers().values())
    print('MEMORY ' + json.dumps({'peak': peak_rss() - base, 'workspace': ws}))


def _memory(nets, variants):
    print('MiB: peak resident memory above the size after imports; the shared workspace buffers')
    for name in nets:
        row = []
        for v in variants:
            p = subprocess.run([sys.executable, __file__, '--_memory', name, v], capture_output=True, text=True)
            got = [json.loads(ln[7:]) for ln in p.stdout.splitlines() if ln.startswith('MEMORY ')]
            if not got:
                sys.exit('memory subprocess for %s %s failed:\n%s' % (name, v, p.stderr[-2000:]))
            row.append('%s peak %.1f, workspace %.1f' % (v, got[0]['peak'] / 2 ** 20, got[0]['workspace'] / 2 ** 20))
        print('  %-14s %s' % (name, '   '.join(row)), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--nets', default='lenet,cifar10_quick')
    ap.add_argument('--variants', nargs='+', default=['ROWS=0', 'ROWS=1'])
    ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--memory', action='store_true', help='peak memory per variant (fresh processes), no timing')
    ap.add_argument('--_memory', nargs=2, metavar=('NET', 'VARIANT'), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    caffeine.set_mode_cpu()
    if args._memory:
        return _memory_child(*args._memory)
    if args.memory:
        return _memory(args.nets.split(','), args.variants)
    print('ms per solver step, best / median of %d alternating steps per round' % args.reps)
    for name in args.nets.split(','):
        param = M.net_param(name)
        inputs = M.make_inputs(name, param, seed=0)
        trainers = {v: _build(param, _settings(v), inputs) for v in args.variants}
        first = trainers[args.variants[0]].net
        for v in args.variants[1:]:          # the same weights everywhere
            for lname, blobs in first.params.items():
                for a, b in zip(trainers[v].net.params[lname], blobs):
                    a.data[...] = b.data
        for t in trainers.values():
            t.step(1)
        diffs = []
        for v in args.variants[1:]:
            d = max(float(np.abs(a.data - b.data).max() / max(np.abs(b.data).max(), 1e-30))
                    for lname, blobs in first.params.items()
                    for a, b in zip(trainers[v].net.params[lname], blobs))
            diffs.append('%s %.1e' % (v, d))
        print('\n== %s; weights after one step, max rel. difference to %s: %s'
              % (name, args.variants[0], ', '.join(diffs) or '-'))
        for ln, la in zip(first.layer_names, first.layers):
            if la.type == 'Convolution':
                print('  %-8s %s' % (ln, '   '.join('%s [%s]' % (v, t.net.layers[first.layer_names.index(ln)]
                                                                 .engine_name()) for v, t in trainers.items())))
        for r in range(args.rounds):
            ts = {v: [] for v in args.variants}
            for _ in range(args.reps):
                for v in args.variants:
                    t0 = time.perf_counter()
                    trainers[v].step(1)
                    ts[v].append(time.perf_counter() - t0)
            a = {v: np.asarray(t) * 1e3 for v, t in ts.items()}
            base = a[args.variants[0]]
            print('  round %d: %s' % (r + 1, '   '.join(
                '%s %.1f / %.1f' % (v, x.min(), np.median(x))
                + ('' if v == args.variants[0] else ' (x%.2f / x%.2f)' % (base.min() / x.min(),
                                                                         np.median(base) / np.median(x)))
                for v, x in a.items())), flush=True)


if __name__ == '__main__':
    main()
