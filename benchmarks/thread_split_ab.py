"""A/B: does splitting NumPy's copies over a small thread pool pay on this machine?

    python benchmarks/thread_split_ab.py [--threads 2] [--reps 25] [--rounds 2]

The two passes that cost as much as the GEMMs on thin convolutions, at
CIFAR10-quick's shapes: the im2col gather of conv2 (a strided transposing copy,
batch 100, 32 channels, 5x5 kernel, 16x16 input) and a 2x2 MAX pooling of a
(100, 32, 32, 32) input (three ``np.maximum`` passes over strided views).  Each
runs on the whole batch in the calling thread, then split over ``--threads``
batch chunks of a ThreadPoolExecutor (NumPy releases the GIL in both), the two
alternating in one process; best and median per round.  caffeine keeps its
passes single-threaded unless this shows a win (BLAS threads, if any, idle
during these passes but spin for a while after each GEMM).
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--reps', type=int, default=25)
    ap.add_argument('--rounds', type=int, default=2)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 32, 16, 16)).astype(np.float32)
    col = np.empty((32, 5, 5, 100, 12, 12), np.float32)
    px = rng.standard_normal((100, 32, 32, 32)).astype(np.float32)
    py = np.empty((100, 32, 16, 16), np.float32)

    def im2col(n0, n1):
        xs = x[n0:n1]
        st = xs.strides
        v = as_strided(xs, (n1 - n0, 32, 5, 5, 12, 12), st[:2] + st[2:] + st[2:])
        col[:, :, :, n0:n1] = v.transpose(1, 2, 3, 0, 4, 5)

    def max_pool(n0, n1):
        a, y = px[n0:n1], py[n0:n1]
        np.maximum(a[:, :, 0::2, 0::2], a[:, :, 1::2, 0::2], out=y)
        np.maximum(y, a[:, :, 0::2, 1::2], out=y)
        np.maximum(y, a[:, :, 1::2, 1::2], out=y)

    pool = ThreadPoolExecutor(args.threads)
    bounds = np.linspace(0, 100, args.threads + 1).astype(int)

    def serial(f):
        f(0, 100)

    def split(f):
        for fut in [pool.submit(f, a, b) for a, b in zip(bounds[:-1], bounds[1:])]:
            fut.result()

    sides = (('serial', serial), ('%d threads' % args.threads, split))
    print('ms, best / median of %d alternating runs per round' % args.reps)
    for r in range(args.rounds):
        for f in (im2col, max_pool):
            ts = {k: [] for k, _ in sides}
            for _ in range(args.reps):
                for k, g in sides:
                    t0 = time.perf_counter()
                    g(f)
                    ts[k].append(time.perf_counter() - t0)
            print('round %d %-9s %s' % (r + 1, f.__name__, '   '.join(
                '%s %6.2f / %6.2f' % (k, 1e3 * min(v), 1e3 * np.median(v)) for k, v in ts.items())), flush=True)
    pool.shutdown()


if __name__ == '__main__':
    main()
