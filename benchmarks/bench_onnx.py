#!/usr/bin/env python
"""caffeine's own engine against ONNX Runtime on the same deploy nets and weights.

    pip install "caffeine[onnx]"
    python benchmarks/bench_onnx.py [--only caffenet,resnet50,squeezenet] [--batches 1,8] [--iters N]

One process.  For each net and batch: caffeine's TEST net with the memory
planner (as ``caffeine time --phase TEST`` runs it), seeded random weights,
exported to ONNX and run by ONNX Runtime (``Net(..., engine='onnxruntime')``)
with its default threads; NumPy's BLAS keeps its default threads too.  After
a warm-up the two engines alternate forward passes (caffeine, ORT, caffeine,
...) so that both see the same machine load; printed: the median and the
fastest forward of each, and caffeine/ORT ratios (above 1: ORT is faster).
The outputs are checked to agree within 1e-4 of their largest magnitude.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # this checkout's caffeine, installed or not

import numpy as np  # noqa: E402

import caffeine  # noqa: E402
from caffeine.onnx_engine import OrtNet, random_inputs, seeded_weights  # noqa: E402
from caffeine.prototxt import read_net_param  # noqa: E402

NETS = {
    'caffenet': 'bvlc_reference_caffenet',
    'resnet50': 'resnet50',
    'squeezenet': 'squeezenet1.1',
}


def build(model, batch):
    param = read_net_param(os.path.join(ROOT, 'models', model, 'deploy.prototxt'))
    for lp in param.layer:
        if lp.type == 'Input':
            lp.input_param.shape[0].dim[0] = batch
    net = caffeine.Net(param, caffeine.TEST, memory_plan=True)
    seeded_weights(net, seed=0)
    return net, OrtNet(net)


def bench(name, batch, iters, warmup):
    net, ort = build(NETS[name], batch)
    x = random_inputs(net, seed=1)
    ref = {k: v.copy() for k, v in net.forward(**x).items()}
    got = ort.forward(**x)
    worst = max(float(np.abs(got[k] - ref[k]).max() / max(np.abs(ref[k]).max(), 1e-30)) for k in ref)
    for _ in range(warmup):
        net.forward(**x)
        ort.forward(**x)
    tc, to = [], []
    for _ in range(iters):
        t = time.perf_counter()
        net.forward(**x)
        tc.append(time.perf_counter() - t)
        t = time.perf_counter()
        ort.forward(**x)
        to.append(time.perf_counter() - t)
    mc, mo = statistics.median(tc) * 1e3, statistics.median(to) * 1e3
    fc, fo = min(tc) * 1e3, min(to) * 1e3
    print('%-11s b=%-2d  caffeine %8.1f ms (min %8.1f)   onnxruntime %8.1f ms (min %8.1f)   '
          'ratio %5.2fx (min %5.2fx)   max rel diff %.1e'
          % (name, batch, mc, fc, mo, fo, mc / mo, fc / fo, worst), flush=True)
    return mc / mo


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--only', default=','.join(NETS), help='nets: %s' % ','.join(NETS))
    ap.add_argument('--batches', default='1,8')
    ap.add_argument('--iters', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=2)
    a = ap.parse_args()
    import onnxruntime
    print('caffeine %s, onnxruntime %s, numpy %s, %d CPUs, OPENBLAS_NUM_THREADS=%s'
          % (caffeine.__version__, onnxruntime.__version__, np.__version__, os.cpu_count(),
             os.environ.get('OPENBLAS_NUM_THREADS', 'default')))
    for name in a.only.split(','):
        for b in a.batches.split(','):
            bench(name, int(b), a.iters, a.warmup)


if __name__ == '__main__':
    main()
