"""A/B of a Convolution/InnerProduct + in-place ReLU fold, on whole nets, in one process.

    python benchmarks/relu_fold_ab.py --nets caffenet,vgg16 --reps 5 --pairs

A prototype, not in the library (it did not win; see benchmarks/README.md): in the
"folded" copy of the net, every Convolution or InnerProduct whose top an in-place
ReLU (negative_slope 0) rewrites applies the ReLU itself, per chunk right after its
store pass (ConvEngine._store, which adds the bias while transposing; Winograd's
output tiles; the batched 1x1 GEMM; InnerProduct's bias add), and the ReLU layer's
forward is skipped.  Both copies share the weights and the input; every blob is
checked bit-identical, then whole-net forwards alternate (``--rounds`` rounds of
``--reps``), and with ``--pairs`` every producer+ReLU pair is timed alone
(alternating, best and median).
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

import caffeine  # noqa: E402
from caffeine import backend  # noqa: E402


def _relu_after(xp, fn, view):
    """fn, then y = max(y, 0) on view(*args) of its arguments."""
    def run(*args):
        out = fn(*args)
        y = view(*args)
        xp.maximum(y, 0, out=y)
        return out
    return run


def fold(net):
    """Patch this net's producer+ReLU pairs (instance attributes only); returns their count."""
    xp = backend.get_xp()
    n = 0
    layers = net.layers
    for i in range(len(layers) - 1):
        a, r = layers[i], layers[i + 1]
        if r.type != 'ReLU' or r.negative_slope != 0 or a.type not in ('Convolution', 'InnerProduct'):
            continue
        if not net.top_id_vecs[i] == net.bottom_id_vecs[i + 1] == net.top_id_vecs[i + 1]:
            continue
        n += 1
        r.Forward = lambda bottom, top: 0.0
        if a.type == 'InnerProduct':
            a.forward = _relu_after(xp, a.forward, lambda bottom, top: top[0].xdata)
            continue
        e = a.engine
        e._store = _relu_after(xp, e._store, lambda xp_, o, y, n0, n1, bias: y[n0:n1])
        if e.batched_1x1:
            e.forward = _relu_after(xp, e.forward, lambda xp_, W, x, y, bias=None: y)
        if e.winograd:
            e.wino._outputs = _relu_after(xp, e.wino._outputs, lambda xp_, bufs, v, U, y, t0, t1, nb, bias,
                                          ho=e.wino.out_sp[0]: y[:, :, 2 * t0:min(ho, 2 * t1)])
    return n


def _stats(ts):
    a = np.asarray(ts) * 1e3
    return a.min(), np.median(a)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--nets', default='caffenet,vgg16')
    ap.add_argument('--reps', type=int, default=5)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--pairs', action='store_true', help='also time every producer+ReLU pair alone')
    args = ap.parse_args(argv)
    caffeine.set_mode_cpu()
    for name in args.nets.split(','):
        param = M.net_param(name)
        inputs = M.make_inputs(name, param, seed=0)
        nets = {}
        for v in ('separate', 'folded'):
            caffeine.set_random_seed(1701)
            nets[v] = caffeine.Net(param, caffeine.TEST, memory_plan=True)
            M.set_inputs(nets[v], inputs)
        sep, fol = nets['separate'], nets['folded']
        for ln, blobs in sep.params.items():
            for a, b in zip(fol.params[ln], blobs):
                a.data[...] = b.data
        k = fold(fol)
        for net in nets.values():
            net.forward_prefilled()
        same = all(np.array_equal(sep.blobs[b].data, fol.blobs[b].data) for b in sep.blobs)
        print('== %s: %d pairs folded; every blob bit-identical: %s' % (name, k, same))
        print('  ms, best / median of %d alternating forwards' % args.reps)
        for r in range(args.rounds):
            ts = {v: [] for v in nets}
            for _ in range(args.reps):
                for v, net in nets.items():
                    t0 = time.perf_counter()
                    net.forward_prefilled()
                    ts[v].append(time.perf_counter() - t0)
            (a, am), (b, bm) = _stats(ts['separate']), _stats(ts['folded'])
            print('  round %d: separate %8.2f / %8.2f   folded %8.2f / %8.2f   folded/separate %.3f / %.3f'
                  % (r + 1, a, am, b, bm, b / a, bm / am), flush=True)
        if args.pairs:
            pairs = [i for i in range(len(sep.layers) - 1) if sep.layers[i + 1].type == 'ReLU'
                     and sep.layers[i].type in ('Convolution', 'InnerProduct')]
            lt = {v: {i: [] for i in pairs} for v in nets}
            for _ in range(3 * args.reps):
                for v, net in nets.items():
                    for i in pairs:
                        t0 = time.perf_counter()
                        net.forward_from_to(i, i + 1)
                        lt[v][i].append(time.perf_counter() - t0)
            tot = [0.0, 0.0]
            for i in pairs:
                (a, am), (b, bm) = _stats(lt['separate'][i]), _stats(lt['folded'][i])
                tot[0] += a
                tot[1] += b
                print('    %-10s + ReLU  separate %7.2f / %7.2f   folded %7.2f / %7.2f' % (
                    sep.layer_names[i], a, am, b, bm))
            print('  pairs, sum of the best times: separate %.1f ms, folded %.1f ms (folded/separate %.3f)'
                  % (tot[0], tot[1], tot[1] / tot[0]), flush=True)


if __name__ == '__main__':
    main()
