"""A/B: MAX and AVE pooling, the strided-view implementation (old) against the stride-phase planes (new).

    python benchmarks/pool_ab.py [--reps 15] [--rounds 2] [--check-only] [--torch [--torch-threads 1]]

The pooling layers of CIFAR10-quick (batch 100: pool1 MAX 3x3/2 on (100, 32, 32, 32),
pool2 and pool3 AVE 3x3/2 on (100, 32, 16, 16) and (100, 64, 8, 8), all at Caffe's
ceil-mode output size) and of LeNet (batch 64: pool1 MAX 2x2/2 on (64, 20, 24, 24),
pool2 on (64, 50, 8, 8)), in the TRAIN phase (forward keeps the argmax).  ``Old`` is
caffeine's PoolingLayer as it was before the phase planes (its MAX/AVE forward and
backward copied below, for this A/B only); ``new`` is the layer as it is.  Both run in
this one process, alternating (old, new, old, new, ...), forward and backward timed
apart; printed: best / median ms of each and the ratio old / new of the medians.
Before timing, the two sides' outputs are checked bitwise equal, and their gradients too
(AVE's within 1e-6: the new backward sums overlapping windows in Caffe's order, the
old one summed by window offset); ``--check-only`` stops there.  Run single-threaded:
OPENBLAS_NUM_THREADS=1.  ``--torch`` adds PyTorch's max_pool2d / avg_pool2d (ceil_mode) as
a third side in the same rotation (forward, then autograd.grad for the backward), on
``--torch-threads`` threads (1: NumPy's ufuncs run on one).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from caffeine import backend  # noqa: E402
from caffeine.blob import Blob  # noqa: E402
from caffeine.layers import pool_phases  # noqa: E402
from caffeine.layers.vision import PoolingLayer  # noqa: E402
from caffeine.proto import caffe_pb2  # noqa: E402
from caffeine.workspace import workspace  # noqa: E402

_PP = caffe_pb2.PoolingParameter
_FLT_MAX = float(np.finfo(np.float32).max)

CASES = [  # name, pooling_param, bottom shape
    ('cifar10_quick pool1', 'pool: MAX kernel_size: 3 stride: 2', (100, 32, 32, 32)),
    ('cifar10_quick pool2', 'pool: AVE kernel_size: 3 stride: 2', (100, 32, 16, 16)),
    ('cifar10_quick pool3', 'pool: AVE kernel_size: 3 stride: 2', (100, 64, 8, 8)),
    ('lenet pool1', 'pool: MAX kernel_size: 2 stride: 2', (64, 20, 24, 24)),
    ('lenet pool2', 'pool: MAX kernel_size: 2 stride: 2', (64, 50, 8, 8)),
]


class OldPooling(PoolingLayer):
    """PoolingLayer's MAX/AVE path before the phase planes (strided views of the padded input,
    ufunc.at for MAX's backward); only what the cases above reach."""

    def _max_argmax_into(self, xp, src, y):
        koff = self._koff()
        koff.fill(0)
        y.fill(-_FLT_MAX)
        gt = workspace('pool_bool', y.size, np.bool_).reshape(y.shape)
        tmp = workspace('pool_koff_tmp', y.size, self.koff_dtype).reshape(y.shape)
        for k, off in enumerate(self.offsets):
            v = self._view(src, off)
            if k:
                xp.greater(v, y, out=gt)
                xp.multiply(gt, self.koff_dtype(k), out=tmp)
                xp.maximum(koff, tmp, out=koff)
            xp.fmax(y, v, out=y)
        self._koff_valid = True
        return koff

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x, y = bottom[0].xdata, top[0].xdata
        if self.method == _PP.MAX:
            self._max_argmax_into(xp, self._src(xp, x, -np.inf), y)
        else:
            src = self._src(xp, x, 0.0)
            y[...] = self._view(src, self.offsets[0])
            for off in self.offsets[1:]:
                xp.add(y, self._view(src, off), out=y)
            xp.multiply(y, self._c.get('inv'), out=y)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy, dx = top[0].xdiff, bottom[0].xdiff
        if self.method == _PP.MAX:
            idx = self._index_in_plane(xp, self._koff())
            xp.add(idx, self._c.get('plane'), out=idx)
            xp.clip(idx, 0, dx.size - 1, out=idx)
            dx.fill(0)
            xp.add.at(dx.reshape(-1), idx.reshape(-1), dy.reshape(-1))
            return
        tmp = workspace('pool_tmp', dy.size).reshape(dy.shape)
        dpad = self._dpad(dx)
        xp.multiply(dy, self._c.get('inv'), out=tmp)
        for off in self.offsets:
            v = self._view(dpad, off)
            xp.add(v, tmp, out=v)
        if dpad is not dx:
            dx[...] = self._interior(dpad)


def build(cls, param, shape, seed):
    lp = caffe_pb2.LayerParameter()
    text_format.Merge('name: "p" type: "Pooling" pooling_param { %s }' % param, lp)
    layer = cls(lp, caffe_pb2.TRAIN)
    rng = np.random.default_rng(seed)
    bottom, top = [Blob(shape)], [Blob()]
    bottom[0].data[...] = rng.standard_normal(shape).astype(np.float32)
    layer.SetUp(bottom, top)
    top[0].diff[...] = rng.standard_normal(top[0].shape).astype(np.float32)
    return layer, bottom, top


class TorchPool:
    """PyTorch's max_pool2d / avg_pool2d (ceil_mode) on the same arrays, with Forward/Backward
    like a layer's (backward: autograd.grad of the last forward)."""

    def __init__(self, param, bottom, top):
        import torch
        import torch.nn.functional as F
        self.torch = torch
        k, s = 3 if 'kernel_size: 3' in param else 2, 2
        if 'MAX' in param:
            self.fn = lambda x: F.max_pool2d(x, k, s, ceil_mode=True)
        else:
            self.fn = lambda x: F.avg_pool2d(x, k, s, ceil_mode=True)
        self.x = torch.from_numpy(bottom[0].data.copy()).requires_grad_(True)
        self.dy = torch.from_numpy(top[0].diff.copy())

    def Forward(self, bottom, top):
        self.y = self.fn(self.x)

    def Backward(self, top, propagate_down, bottom):
        self.torch.autograd.grad(self.y, self.x, self.dy)


def run_case(name, param, shape, reps, rounds, check_only, with_torch):
    sides = [('old', build(OldPooling, param, shape, 0)), ('new', build(PoolingLayer, param, shape, 0))]
    outs = []
    for _, (layer, bottom, top) in sides:
        layer.Forward(bottom, top)
        layer.Backward(top, [True], bottom)
        outs.append((top[0].data.copy(), bottom[0].diff.copy()))
    (y0, d0), (y1, d1) = outs
    # AVE's backward sums overlapping windows in Caffe's order now (the old code summed by offset)
    exact = 'MAX' in param
    same = np.array_equal(y0, y1) and (np.array_equal(d0, d1) if exact else np.allclose(d0, d1, rtol=1e-6, atol=1e-7))
    print('%-20s %-36s top %s, bottom diff %s (max |diff| %.1e)' % (
        name, param, 'equal' if np.array_equal(y0, y1) else 'DIFFERS', 'equal' if np.array_equal(d0, d1) else
        'within 1e-6' if same else 'DIFFERS', np.abs(d0 - d1).max()), flush=True)
    if not same:
        raise SystemExit('old and new differ on %s' % name)
    if check_only:
        return
    if with_torch:
        _, bottom, top = sides[1][1]
        sides.append(('torch', (TorchPool(param, bottom, top), bottom, top)))
    for r in range(rounds):
        ts = {(s, d): [] for s, _ in sides for d in ('fwd', 'bwd')}
        for _ in range(reps):
            for s, (layer, bottom, top) in sides:
                t0 = time.perf_counter()
                layer.Forward(bottom, top)
                t1 = time.perf_counter()
                layer.Backward(top, [True], bottom)
                t2 = time.perf_counter()
                ts[s, 'fwd'].append(t1 - t0)
                ts[s, 'bwd'].append(t2 - t1)
        cells = []
        for d in ('fwd', 'bwd'):
            old, new = ts['old', d], ts['new', d]
            cells.append('%s old %6.2f / %6.2f  new %6.2f / %6.2f  (x%.1f)' % (
                d, 1e3 * min(old), 1e3 * np.median(old), 1e3 * min(new), 1e3 * np.median(new),
                np.median(old) / np.median(new)))
            if with_torch:
                tt = ts['torch', d]
                cells[-1] += '  torch %6.2f / %6.2f' % (1e3 * min(tt), 1e3 * np.median(tt))
        print('  round %d  %s' % (r + 1, '   '.join(cells)), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--reps', type=int, default=15)
    ap.add_argument('--rounds', type=int, default=2)
    ap.add_argument('--check-only', action='store_true')
    ap.add_argument('--chunk-kb', type=int, default=None, help='pool_phases.CHUNK_KB for the new side')
    ap.add_argument('--torch', action='store_true', help="a third side: PyTorch's pooling (pip install torch)")
    ap.add_argument('--torch-threads', type=int, default=1)
    args = ap.parse_args(argv)
    backend.set_mode_cpu()
    if args.chunk_kb:
        pool_phases.CHUNK_KB = args.chunk_kb
    print('pool_phases.CHUNK_KB = %d' % pool_phases.CHUNK_KB)
    print('ms, best / median of %d alternating runs per round; (xR) = old / new, medians' % args.reps)
    if args.torch:
        import torch
        torch.set_num_threads(args.torch_threads)
        print('torch %s, %d thread(s)' % (torch.__version__, args.torch_threads))
    for name, param, shape in CASES:
        run_case(name, param, shape, args.reps, args.rounds, args.check_only, args.torch)


if __name__ == '__main__':
    main()
