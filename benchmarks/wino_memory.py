"""The shared workspace with Winograd off and on, one fresh process per net and variant.

    python benchmarks/wino_memory.py                          # caffenet,resnet50,googlenet,vgg16
    python benchmarks/wino_memory.py --nets vgg16 --variants WINOGRAD=0 WINOGRAD=1,WINOGRAD_MIN_BLOCK=64

Each child sets module constants of ``caffeine.layers.conv_engine`` (as ``ab_nets.py``
does), builds the benchmark net as ``bench_cpu.py`` does, runs one iteration and prints
the workspace buffers by name (``caffeine.workspace.buffers()``), bench_cpu's "layer
buffers" total (``internal_bytes``), the peak RSS above the baseline (as bench_cpu's
memory subprocess measures it) and the chunking of every Winograd convolution
against the im2col workspace the same layer would take.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))     # this checkout's caffeine


def child(name, spec):
    import bench_cpu
    from conv_layouts import _settings

    import caffeine.layers.conv_engine as engine
    from caffeine import workspace
    for k, v in _settings(spec).items():
        setattr(engine, k, v)
    a = np.ones((256, 256), np.float32)   # the BLAS's own buffers before the baseline, as bench_cpu
    np.dot(a, a)
    base = bench_cpu.proc_status('VmRSS') or 0
    run = bench_cpu.CaffeineRun(name, calibrate=False)
    run.step()
    peak = bench_cpu.peak_rss() - base
    bufs = {}
    for (bname, _, _, _), v in workspace.buffers().items():
        bufs[bname] = bufs.get(bname, 0) + v.nbytes
    layers = []
    for ln, layer in zip(run.net.layer_names, run.net.layers):
        e = getattr(layer, 'engine', None)
        if e is not None and e.winograd:
            w = e.wino
            layers.append('%s: %d images x %d rows x %d outputs; uses %s of im2col %s' % (
                ln, w.wchunk, w.wrows, w.mblock, w.used, e.im2col_workspace()))
    print('CHILD ' + json.dumps({'workspace': bufs, 'internal': sum(bench_cpu.internal_bytes(run.net).values()),
                                 'peak': peak, 'layers': layers}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--nets', default='caffenet,resnet50,googlenet,vgg16')
    ap.add_argument('--variants', nargs='+', default=['WINOGRAD=0', 'WINOGRAD=1'])
    ap.add_argument('--plans', action='store_true', help='print the chunking of every Winograd convolution')
    ap.add_argument('--_child', nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return child(*args._child)
    mib = 1.0 / (1 << 20)
    for name in args.nets.split(','):
        print('== %s' % name)
        for v in args.variants:
            p = subprocess.run([sys.executable, __file__, '--_child', name, v], capture_output=True, text=True)
            out = [json.loads(line[6:]) for line in p.stdout.splitlines() if line.startswith('CHILD ')]
            if not out:
                print('  %s: failed\n%s' % (v, p.stderr[-2000:]))
                continue
            r = out[0]
            ws = sorted(r['workspace'].items(), key=lambda kv: -kv[1])
            print('  %-14s workspace %6.1f MiB (%s); layer buffers %6.1f MiB; peak RSS %6.1f MiB; '
                  '%d Winograd convolutions' % (v, sum(r['workspace'].values()) * mib,
                                                ', '.join('%s %.1f' % (k, b * mib) for k, b in ws),
                                                r['internal'] * mib, r['peak'] * mib, len(r['layers'])), flush=True)
            if args.plans:
                for line in r['layers']:
                    print('      ' + line)


if __name__ == '__main__':
    main()
