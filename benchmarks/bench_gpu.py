#!/usr/bin/env python
"""caffeine on the GPU (CuPy) against PyTorch CUDA (eager), same nets and weights, larger batches.

    pip install -e '.[cuda12]' torch==2.13.0      # torch: the benchmark only
    python benchmarks/bench_gpu.py [--quick] [--only lenet,cifar10_quick,caffenet,resnet50,googlenet,vgg16] [--iters N]

LeNet and CIFAR10-quick: one SGD training iteration at batch 256; CaffeNet
(batch 128) and ResNet-50 (batch 64): a TEST forward pass with the memory
planner.  Timing: warm-up iterations (CuPy compiles its kernels there), then
the median of N iterations, each between device synchronizations.  Reported per
net: ms per iteration and images/s on both sides, caffeine's peak device memory
(the bytes CuPy's memory pool holds after the run: the pool keeps what it freed, so
this is its high-water mark) and PyTorch's (torch.cuda.max_memory_allocated).
Then LeNet and CIFAR10-quick train once more fed by their Data layers (the model
library's train_val.prototxt on a temporary LMDB of synthetic records, at the GPU
batch): images/s and the share of the step spent waiting for data (the prefetch
keeps the GPU fed when it is near 0 %).  ``CAFFEINE_GPU_MEMORY_FRACTION`` limits
CuPy's pool as in training.  TF32 is
off on both sides, so that both compute in float32: ``NVIDIA_TF32_OVERRIDE=0``
(set here before CuPy or PyTorch loads, unless given) and PyTorch's allow_tf32 flags.

Engines (caffeine.engines): ``--engine CUDNN`` (the default: cuDNN where CuPy has
it, i.e. CuPy 13 with cuDNN 8) or ``--engine CAFFE`` (the portable CuPy path);
``--no-fused`` runs the neuron layers and solver updates unfused (A/B of the fused
kernels).  The engine line printed first says what ran.  cuDNN is loaded before
PyTorch (whose wheels bring cuDNN 9; CuPy 13 binds cuDNN 8): install PyTorch
first, then ``pip install 'cupy-cuda12x<14'`` and cuDNN 8 with
``python -m cupyx.tools.install_library --cuda 12.x --library cudnn`` (pip refuses
nvidia-cudnn-cu12<9 next to torch's cuDNN 9 wheel).

Without CuPy or a CUDA device it prints "no GPU: skipped" and exits 0.  A net
that fails is reported and the others still run (exit status 1 then).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's caffeine, installed or not


def gpu_reason():
    """None when caffeine can use a GPU, else why not (one line)."""
    try:
        from caffeine import backend
    except Exception as e:  # caffeine itself broken: say so rather than skip
        raise SystemExit('cannot import caffeine: %s' % e)
    try:
        backend._import_cupy()
        return None
    except Exception as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__


def engine_line(dry):
    """What caffeine runs on: cuDNN (its version) or the portable path, fused kernels or not.
    Loads cuDNN now, before PyTorch loads its own."""
    from caffeine import backend, engines
    fused = 'fused kernels off' if os.environ.get('CAFFEINE_NO_FUSED') == '1' else 'fused kernels on'
    forced = os.environ.get('CAFFEINE_ENGINE', '')
    if dry:
        return 'engine: portable NumPy (dry run)'
    mods = backend.cudnn()
    if mods is None:
        conv = 'portable CuPy path (this CuPy has no cuDNN)'
    elif engines.requested(engines.DEFAULT) == engines.CAFFE:
        conv = 'portable CuPy path (CAFFEINE_ENGINE=CAFFE; cuDNN %s present)' % mods[0].getVersion()
    else:
        conv = 'cuDNN %s (workspace %d MiB)' % (mods[0].getVersion(), engines.workspace_bytes() >> 20)
    return 'engine: %s%s; %s; NVIDIA_TF32_OVERRIDE=%s' % (
        conv, ' [CAFFEINE_ENGINE=%s]' % forced if forced else '', fused, os.environ.get('NVIDIA_TF32_OVERRIDE'))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='few iterations (a smoke run)')
    ap.add_argument('--only', default='', help='comma-separated nets: lenet,cifar10_quick,caffenet,resnet50,googlenet,vgg16')
    ap.add_argument('--iters', type=int, default=None, help='timed iterations (default 10, --quick 3)')
    ap.add_argument('--warmup', type=int, default=None, help='warm-up iterations (default 3, --quick 2)')
    ap.add_argument('--no-layers', action='store_true', help='skip the per-layer timing')
    ap.add_argument('--no-fed', action='store_true', help='skip the training fed by Data layers')
    ap.add_argument('--fed-steps', type=int, default=None, help='timed steps of the fed training (default 30, --quick 5)')
    ap.add_argument('--json', help='also write the results to this JSON file')
    ap.add_argument('--engine', choices=['CUDNN', 'CAFFE'], default=None,
                    help='CAFFEINE_ENGINE for every layer (default: each layer\'s own, cuDNN where present)')
    ap.add_argument('--no-fused', action='store_true', help='no fused element-wise kernels (CAFFEINE_NO_FUSED=1)')
    ap.add_argument('--cpu-dry-run', action='store_true',
                    help='run the same code on the CPU at the CPU batch sizes (tests the script without a GPU)')
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 2 if args.quick else 3
    if args.fed_steps is None:
        args.fed_steps = 5 if args.quick else 30

    os.environ.setdefault('NVIDIA_TF32_OVERRIDE', '0')  # before CuPy and PyTorch load cuBLAS/cuDNN
    if args.engine:
        os.environ['CAFFEINE_ENGINE'] = args.engine
    if args.no_fused:
        os.environ['CAFFEINE_NO_FUSED'] = '1'
    dry = args.cpu_dry_run
    if not dry:
        why = gpu_reason()
        if why is not None:
            print('no GPU: skipped (%s)' % why)
            return 0

    import numpy as np
    import caffeine
    import models as M
    import bench_cpu as B

    names = [n.strip() for n in args.only.split(',') if n.strip()] or list(M.NETS)
    for n in names:
        if n not in M.NETS:
            ap.error('unknown net %r (choose from %s)' % (n, ', '.join(M.NETS)))

    if dry:
        caffeine.set_mode_cpu()
        cp = None

        def csync():
            pass
        gpu_name = 'CPU (dry run)'
    else:
        caffeine.set_mode_gpu()
        from caffeine import backend
        cp = backend._import_cupy()

        def csync():
            cp.cuda.Device().synchronize()
        try:
            props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
            gpu_name = props['name'].decode() if isinstance(props['name'], bytes) else str(props['name'])
        except Exception:
            gpu_name = 'CUDA device %d' % cp.cuda.Device().id
    engine_info = engine_line(dry)  # loads cuDNN 8 before PyTorch loads its cuDNN 9

    torch = None
    tdev = None
    tinfo = 'PyTorch: not installed (pip install torch==2.13.0): caffeine alone'
    try:
        import torch as _torch
        if dry:
            torch, tdev = _torch, 'cpu'
        elif _torch.cuda.is_available():
            torch, tdev = _torch, 'cuda'
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        else:
            tinfo = 'PyTorch %s has no CUDA here: caffeine alone' % _torch.__version__
        if torch is not None:
            tinfo = 'PyTorch %s on %s (eager, TF32 off, cudnn %s)' % (
                torch.__version__, tdev, torch.backends.cudnn.version() if tdev == 'cuda' else '-')
    except ImportError:
        pass

    def tsync():
        if tdev == 'cuda':
            torch.cuda.synchronize()

    print('caffeine %s, NumPy %s, CuPy %s on %s' % (caffeine.__version__, np.__version__,
                                                   getattr(cp, '__version__', '-'), gpu_name))
    print(tinfo)
    print(engine_info)
    print('CAFFEINE_GPU_MEMORY_FRACTION=%s' % (os.environ.get('CAFFEINE_GPU_MEMORY_FRACTION') or 'unset (no pool limit)'))
    print('command: python benchmarks/bench_gpu.py %s' % ' '.join(argv if argv is not None else sys.argv[1:]),
          flush=True)

    results, failed = [], []
    for name in names:
        spec = M.NETS[name]
        batch = spec['batch'] if dry else spec['gpu_batch']
        title = '%s %s (b=%d)' % ({'lenet': 'LeNet', 'cifar10_quick': 'CIFAR10-quick', 'caffenet': 'CaffeNet',
                                   'resnet50': 'ResNet-50', 'googlenet': 'GoogLeNet', 'vgg16': 'VGG-16'}[name],
                                  'train iter' if spec['kind'] == 'train' else 'forward', batch)
        print('\n== %s ==' % title, flush=True)
        r = {'name': name, 'title': title, 'batch': batch}
        crun = trun = None
        try:
            if cp is not None:
                cp.get_default_memory_pool().free_all_blocks()
            crun = B.CaffeineRun(name, batch=batch, gpu=not dry, sync=csync)
            r['how'] = crun.how
            print('  caffeine: %s' % crun.how, flush=True)
            if torch is not None:
                try:
                    if tdev == 'cuda':
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats()
                    trun = B.TorchRun(name, crun, device=tdev, sync=tsync)
                    r['check'] = trun.check(crun)
                    print('  cross-check: %s' % B.fmt_check(r['check']), flush=True)
                except Exception as e:
                    print('  PyTorch side failed: %s: %s' % (type(e).__name__, e), flush=True)
                    traceback.print_exc()
                    trun = None
            ct = B.time_it(crun.step, args.warmup, args.iters, csync)
            r['caffeine_ms'] = B.med(ct) * 1e3
            r['caffeine_images_s'] = batch / B.med(ct)
            if cp is not None:
                r['caffeine_pool_bytes'] = cp.get_default_memory_pool().total_bytes()
            print('  caffeine %.2f ms (min %.2f, max %.2f), %.0f images/s, peak device memory %s' % (
                r['caffeine_ms'], min(ct) * 1e3, max(ct) * 1e3, r['caffeine_images_s'],
                B.mib(r.get('caffeine_pool_bytes'))), flush=True)
            if trun is not None:
                tt = B.time_it(trun.step, args.warmup, args.iters, tsync)
                r['torch_ms'] = B.med(tt) * 1e3
                r['torch_images_s'] = batch / B.med(tt)
                if tdev == 'cuda':
                    r['torch_peak_bytes'] = torch.cuda.max_memory_allocated()
                print('  PyTorch %.2f ms (min %.2f, max %.2f), %.0f images/s; ratio %.2fx' % (
                    r['torch_ms'], min(tt) * 1e3, max(tt) * 1e3, r['torch_images_s'],
                    r['caffeine_ms'] / r['torch_ms']), flush=True)
            if not args.no_layers:
                lt = crun.layer_times(2 if args.quick else 3)
                tl = trun.layer_times(2 if args.quick else 3) if trun is not None else {}
                by = {}
                for (lname, layer), (f, b) in zip(zip(crun.net.layer_names, crun.net.layers), lt):
                    d = by.setdefault(layer.type, [0.0, 0.0, 0.0])
                    d[0] += f * 1e3
                    d[1] += b * 1e3
                    d[2] += tl.get(lname, 0.0) * 1e3
                r['by_type'] = by
                rows = [[t, '%.2f' % f, '%.2f' % b, '%.2f' % tf if tl else '-']
                        for t, (f, b, tf) in sorted(by.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))]
                print(B.table(rows, ['type', 'caffeine fwd ms', 'caffeine bwd ms', 'torch fwd ms']), flush=True)
        except Exception as e:
            r['error'] = '%s: %s' % (type(e).__name__, e)
            failed.append(name)
            print('  FAILED: %s' % r['error'], flush=True)
            traceback.print_exc()
        results.append(r)
        del crun, trun
        import gc
        gc.collect()

    fed = []
    if not args.no_fed:
        fed, fed_failed = fed_runs(names, dry, args.fed_steps, cp)
        failed += fed_failed

    print('\n' + '=' * 90)
    print('Summary on %s (median of %d iterations after %d warm-up; ms per iteration)' % (
        gpu_name, args.iters, args.warmup))
    rows = []
    for r in results:
        ratio = r['caffeine_ms'] / r['torch_ms'] if r.get('torch_ms') and r.get('caffeine_ms') else None
        rows.append([r['title'], '%.2f' % r['caffeine_ms'] if 'caffeine_ms' in r else 'FAILED',
                     '%.2f' % r['torch_ms'] if 'torch_ms' in r else '-', '%.2fx' % ratio if ratio else '-',
                     '%.0f' % r['caffeine_images_s'] if 'caffeine_images_s' in r else '-',
                     '%.0f' % r['torch_images_s'] if 'torch_images_s' in r else '-',
                     B.mib(r.get('caffeine_pool_bytes')), B.mib(r.get('torch_peak_bytes')),
                     B.fmt_check_short(r['check']) if 'check' in r else '-'])
    print(B.table(rows, ['net', 'caffeine ms', 'PyTorch ms', 'ratio', 'caffeine img/s', 'PyTorch img/s',
                         'caffeine peak mem', 'torch peak alloc', 'cross-check']))
    print('  caffeine peak mem: bytes held by CuPy\'s default memory pool after the run (its high-water mark);'
          ' torch peak alloc: torch.cuda.max_memory_allocated.')
    if fed:
        print(B.table([[r['title'], '%.2f' % r['ms'], '%.0f' % r['images_s'], '%.1f %%' % (100 * r['wait_share'])]
                       if 'ms' in r else [r['title'], 'FAILED', '-', '-'] for r in fed],
                      ['fed by its Data layer', 'ms/step', 'images/s', 'waiting for data']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'nets': results, 'fed': fed}, f, indent=1, default=str)
    return 1 if failed else 0


def fed_runs(names, dry, steps, cp):
    """LeNet and CIFAR10-quick trained from their Data layers (data_throughput.model_share: the
    model library's train_val.prototxt on a temporary LMDB of synthetic records) at the GPU batch
    (the CPU batch in a dry run): ms per step, images/s, and the share of the step the Data layer
    spent waiting for a batch.  Returns (rows, names that failed)."""
    import shutil
    import tempfile
    from pathlib import Path
    import models as M
    import data_throughput as D
    rows, failed = [], []
    tmp = Path(tempfile.mkdtemp(prefix='caffeine_bench_gpu_'))
    try:
        for name in names:
            if name not in ('lenet', 'cifar10_quick'):
                continue
            spec = M.NETS[name]
            batch = spec['batch'] if dry else spec['gpu_batch']
            r = {'name': name, 'title': '%s train, Data layer (b=%d)' % (
                {'lenet': 'LeNet', 'cifar10_quick': 'CIFAR10-quick'}[name], batch), 'batch': batch}
            print('\n== %s ==' % r['title'], flush=True)
            try:
                if cp is not None:
                    cp.get_default_memory_pool().free_all_blocks()
                share, step = D.model_share(name, tmp, steps, batch=batch)
                r.update(ms=step * 1e3, images_s=batch / step, wait_share=share)
                print('  %.2f ms/step, %.0f images/s, %.1f %% of the step waiting for data' % (
                    r['ms'], r['images_s'], 100 * share), flush=True)
            except Exception as e:
                r['error'] = '%s: %s' % (type(e).__name__, e)
                failed.append(name + ' (fed)')
                print('  FAILED: %s' % r['error'], flush=True)
                traceback.print_exc()
            rows.append(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, failed


if __name__ == '__main__':
    sys.exit(main())
