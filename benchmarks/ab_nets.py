"""A/B of convolution engine settings on whole benchmark nets, in one process.

    python benchmarks/ab_nets.py --nets resnet50,googlenet --variants WINOGRAD=0 WINOGRAD=1
    python benchmarks/ab_nets.py --nets vgg16 --reps 5 --rounds 2 --layers

Each variant sets module constants of ``caffeine.layers.conv_engine`` (as
``conv_layouts.py`` does) while its copy of the net is built, so that every
convolution keeps the algorithm chosen then; the copies share the same weights
and input.  The forward passes of the variants then alternate, ``--reps`` times
per round, and each round prints the best and the median per variant; with
``--layers``, every layer whose algorithm differs between the variants is also
timed alone (alternating, best and median).  Machine noise hits every variant
alike; compare within a round, and across rounds for its size.
"""
from __future__ import annotations

import argparse
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


def _build(name, batch, settings, inputs):
    saved = {k: getattr(engine, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(engine, k, v)
        param = M.net_param(name, batch)
        net = caffeine.Net(param, caffeine.TEST, memory_plan=True)
    finally:
        for k, v in saved.items():
            setattr(engine, k, v)
    M.set_inputs(net, inputs)
    return net


def _stats(ts):
    a = np.asarray(ts) * 1e3
    return '%8.2f / %8.2f' % (a.min(), np.median(a))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--nets', default='caffenet,resnet50,googlenet,vgg16')
    ap.add_argument('--variants', nargs='+', default=['WINOGRAD=0', 'WINOGRAD=1'])
    ap.add_argument('--batch', type=int, default=None, help="default: the benchmark's CPU batch")
    ap.add_argument('--reps', type=int, default=7)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--layers', action='store_true', help='also time the layers whose algorithm differs')
    args = ap.parse_args(argv)
    caffeine.set_mode_cpu()
    print('ms, best / median of %d alternating forwards per round' % args.reps)
    for name in args.nets.split(','):
        param = M.net_param(name, args.batch)
        inputs = M.make_inputs(name, param, seed=0)
        nets = {}
        for v in args.variants:
            caffeine.set_random_seed(1701)
            nets[v] = _build(name, args.batch, _settings(v), inputs)
        first = nets[args.variants[0]]
        for v in args.variants[1:]:          # the same weights everywhere
            for lname, blobs in first.params.items():
                for a, b in zip(nets[v].params[lname], blobs):
                    a.data[...] = b.data
        if any(layer.type == 'BatchNorm' for layer in first.layers):
            for v in args.variants:
                M.calibrate_batchnorm(nets[v])
        outs = {}
        for v in args.variants:
            nets[v].forward_prefilled()
            outs[v] = np.array(nets[v].blobs[nets[v].outputs[0]].data)
        ref = outs[args.variants[0]]
        diffs = ', '.join('%s %.1e' % (v, np.abs(o - ref).max() / max(np.abs(ref).max(), 1e-30))
                          for v, o in outs.items() if v != args.variants[0])
        print('\n== %s (batch %d); output max rel. difference to %s: %s'
              % (name, param.layer[0].input_param.shape[0].dim[0], args.variants[0], diffs or '-'))
        engines = {v: {ln: la.engine_name() for ln, la in zip(n.layer_names, n.layers)} for v, n in nets.items()}
        differ = [i for i, ln in enumerate(first.layer_names)
                  if len({engines[v][ln] for v in args.variants}) > 1]
        print('  %d of %d convolutions change algorithm' % (
            len(differ), sum(la.type == 'Convolution' for la in first.layers)))
        for r in range(args.rounds):
            ts = {v: [] for v in args.variants}
            for _ in range(args.reps):
                for v in args.variants:
                    t0 = time.perf_counter()
                    nets[v].forward_prefilled()
                    ts[v].append(time.perf_counter() - t0)
            print('  round %d: %s' % (r + 1, '   '.join('%s %s' % (v, _stats(ts[v])) for v in args.variants)),
                  flush=True)
        if args.layers and differ:
            lt = {v: {i: [] for i in differ} for v in args.variants}
            for _ in range(args.reps):
                for v in args.variants:
                    for i in differ:
                        t0 = time.perf_counter()
                        nets[v].forward_from_to(i, i)
                        lt[v][i].append(time.perf_counter() - t0)
            for i in differ:
                ln = first.layer_names[i]
                print('    %-28s %s' % (ln, '   '.join('%s %s [%s]' % (v, _stats(lt[v][i]), engines[v][ln])
                                                     for v in args.variants)), flush=True)


if __name__ == '__main__':
    main()
