"""A/B of the convolution engine's column layouts on the convolutions of the
benchmark nets, in one process (the machine's noise hits both sides alike).

    python benchmarks/conv_layouts.py                      # batch-innermost columns off vs on
    python benchmarks/conv_layouts.py --cases lenet_conv2 --variants CHWN=0 CHWN=1,CHWN_MAX_ROW=64
    python benchmarks/conv_layouts.py --cases res4_3x3,vgg_conv3_2 --variants WINOGRAD=0 WINOGRAD=1
    python benchmarks/conv_layouts.py --cases cifar_conv1 --no-data-grad --variants CHUNK_TARGET_MB=8 CHUNK_TARGET_MB=2

Each variant sets module constants of ``caffeine.layers.conv_engine`` (``CHWN``,
``CHWN_MAX_ROW``, ``CHWN_MIN_IMAGES``, ``WIDE_MAX_WASTE``, ``FLIP_BACKWARD``,
``WINOGRAD``, ...) while its layer is set up; the layers are then timed in turn
(alternating the variants), forward and backward (to the data and the weights),
and the best and the median of ``--reps`` are printed with the algorithm the
engine chose.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # this checkout's caffeine

import caffeine  # noqa: E402
import caffeine.layers.conv_engine as engine  # noqa: E402
from caffeine.blob import Blob  # noqa: E402
from caffeine.testing import make_layer  # noqa: E402


def _conv(nout, k, pad=0, group=1, bias=True):
    return ('type: "Convolution" convolution_param { num_output: %d kernel_size: %d pad: %d group: %d '
            'bias_term: %s weight_filler { type: "gaussian" std: 0.01 } }'
            % (nout, k, pad, group, 'true' if bias else 'false'))


# name: (layer, bottom shape) -- the convolutions of the benchmark nets, at their batch sizes
CASES = {
    'lenet_conv1': (_conv(20, 5), (64, 1, 28, 28)),
    'lenet_conv2': (_conv(50, 5), (64, 20, 12, 12)),
    'cifar_conv1': (_conv(32, 5, 2), (100, 3, 32, 32)),
    'cifar_conv2': (_conv(32, 5, 2), (100, 32, 16, 16)),
    'cifar_conv3': (_conv(64, 5, 2), (100, 32, 8, 8)),
    'thin_3x3': (_conv(32, 3, 1), (100, 32, 16, 16)),
    'mid_5x5': (_conv(64, 5, 2), (32, 96, 12, 12)),
    'caffenet_conv2': (_conv(256, 5, 2, 2), (10, 96, 27, 27)),
    'caffenet_conv3': (_conv(384, 3, 1), (10, 256, 13, 13)),
    'res3_3x3': (_conv(128, 3, 1, bias=False), (8, 128, 28, 28)),
    'res4_3x3': (_conv(256, 3, 1, bias=False), (8, 256, 14, 14)),
    'res5_3x3': (_conv(512, 3, 1, bias=False), (8, 512, 7, 7)),
    'vgg_conv1_2': (_conv(64, 3, 1), (2, 64, 224, 224)),
    'vgg_conv2_2': (_conv(128, 3, 1), (2, 128, 112, 112)),
    'vgg_conv3_2': (_conv(256, 3, 1), (2, 256, 56, 56)),
    'vgg_conv4_2': (_conv(512, 3, 1), (2, 512, 28, 28)),
    'vgg_conv5_2': (_conv(512, 3, 1), (2, 512, 14, 14)),
    'gnet_3a_3x3': (_conv(128, 3, 1), (8, 96, 28, 28)),
    'gnet_4a_3x3': (_conv(208, 3, 1), (8, 96, 14, 14)),
    'gnet_5b_3x3': (_conv(384, 3, 1), (8, 192, 7, 7)),
}


def _settings(spec):
    out = {}
    for kv in filter(None, spec.split(',')):
        k, v = kv.split('=')
        cur = getattr(engine, k)
        out[k] = (v not in ('0', 'false', 'False')) if isinstance(cur, bool) else type(cur)(float(v))
    return out


def _build(text, shape, settings, rng):
    saved = {k: getattr(engine, k) for k in settings}
    try:
        for k, v in settings.items():
            setattr(engine, k, v)
        layer = make_layer(text)
        bottom, top = Blob(shape), Blob()
        bottom.data[...] = rng.standard_normal(shape)
        layer.SetUp([bottom], [top])
    finally:
        for k, v in saved.items():
            setattr(engine, k, v)
    top.diff[...] = rng.standard_normal(top.shape)
    return layer, bottom, top


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--cases', default=','.join(CASES), help='comma-separated: ' + ', '.join(CASES))
    ap.add_argument('--variants', nargs='+', default=['CHWN=0', 'CHWN=1'])
    ap.add_argument('--reps', type=int, default=15)
    ap.add_argument('--forward-only', action='store_true', help='time the forward pass alone')
    ap.add_argument('--no-data-grad', action='store_true',
                    help='backward to the weights only (as a net\'s first convolution)')
    args = ap.parse_args(argv)
    caffeine.set_mode_cpu()
    rng = np.random.default_rng(0)
    print('ms, forward / backward (to data and weights), best and median of %d; [algorithm]' % args.reps)
    for name in args.cases.split(','):
        text, shape = CASES[name]
        layers = [(v, _build(text, shape, _settings(v), rng)) for v in args.variants]
        times = {v: ([], []) for v in args.variants}
        for _ in range(args.reps):
            for v, (layer, bottom, top) in layers:
                t0 = time.perf_counter()
                layer.Forward([bottom], [top])
                t1 = time.perf_counter()
                if not args.forward_only:
                    layer.Backward([top], [not args.no_data_grad], [bottom])
                t2 = time.perf_counter()
                times[v][0].append(t1 - t0)
                times[v][1].append(t2 - t1)
        print(name)
        for v, (layer, _, _) in layers:
            f, b = (np.asarray(t) * 1e3 for t in times[v])
            print('  %-24s fwd %8.2f / %8.2f   bwd %8.2f / %8.2f   [%s]'
                  % (v, f.min(), np.median(f), b.min(), np.median(b), layer.engine.describe()), flush=True)

if __name__ == '__main__':
    main()
