#!/usr/bin/env python
"""caffeine (NumPy) against PyTorch CPU (eager) on the same nets, weights and batch sizes.

    pip install torch==2.13.0          # the benchmark only; never a caffeine dependency
    python benchmarks/bench_cpu.py [--quick] [--only lenet,cifar10_quick,caffenet,resnet50,googlenet,vgg16]
                                   [--iters N]

One run, one process (plus a fresh subprocess per net and framework for peak
memory), the same thread count for both (torch.set_num_threads(2); NumPy's
BLAS keeps its default).  For each net:

- time: warm-up iterations, then the median of N timed iterations;
  training nets (LeNet b=64, CIFAR10-quick b=100): one SGD iteration (forward,
  backward, momentum 0.9 + weight decay update); caffeine uses its SGDSolver
  when caffeine.solver exists, else Net.forward_backward + a hand update;
  forward nets (CaffeNet b=10, ResNet-50 b=8, GoogLeNet b=8, VGG-16 b=2):
  Net(deploy, TEST, memory_plan=True).forward() against torch under no_grad;
- correctness: the PyTorch twin is built layer by layer from the same
  NetParameter with caffeine's weights; the max differences of the outputs
  (and of the gradients, for training nets) are printed;
- memory: caffeine's peak resident memory (VmHWM) above the process's size
  after imports, in a fresh subprocess, and the planned blob memory
  (caffeine.summary.memory_report); the same peak for PyTorch;
- where the time goes: per-layer times (caffeine forward/backward, torch
  forward), the share in GEMM (timed wrappers around numpy.dot / matmul /
  tensordot / einsum / inner), and per Convolution/InnerProduct layer the
  achieved GFLOP/s against NumPy's own sgemm on the GEMM that layer implies.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's caffeine, installed or not
import models as M  # noqa: E402

import numpy as np  # noqa: E402

import caffeine  # noqa: E402
from caffeine.summary import layer_macs, memory_report  # noqa: E402

TARGETS = {'lenet': 1.0, 'cifar10_quick': 1.0, 'caffenet': 1.0, 'resnet50': 1.0}  # issue 16's; none yet for
# googlenet and vgg16, which are measured only
GEMM_FUNCS = ('dot', 'matmul', 'tensordot', 'einsum', 'inner', 'vdot')


# -- small helpers ------------------------------------------------------------------
def time_it(fn, warmup, iters, sync=None):
    """Seconds of each of ``iters`` calls of fn(), after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def time_alternating(fa, fb, warmup, iters, block=5):
    """Like time_it for two functions, in alternating blocks of ``block`` timed iterations.

    On a shared machine the load changes over a run; alternating gives both
    sides the same conditions.  Each block starts with one untimed iteration
    (the other side's thread pool may still be spinning, its data left the
    caches).  Returns (seconds of fa's calls, of fb's).
    """
    for _ in range(warmup):
        fa()
    for _ in range(warmup):
        fb()
    ta, tb = [], []
    while len(ta) < iters or len(tb) < iters:
        for f, out in ((fa, ta), (fb, tb)):
            n = min(block, iters - len(out))
            if n <= 0:
                continue
            f()
            for _ in range(n):
                t0 = time.perf_counter()
                f()
                out.append(time.perf_counter() - t0)
    return ta, tb


class OtherLoad:
    """The share of the machine's CPU time used by other processes while active (from /proc/stat)."""

    @staticmethod
    def _busy():
        try:
            with open('/proc/stat') as f:
                v = [int(x) for x in f.readline().split()[1:]]
            hz = os.sysconf('SC_CLK_TCK')
            return (sum(v[:8]) - v[3] - v[4]) / hz  # all but idle and iowait, in seconds
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        self.b0, self.t0, self.o0 = self._busy(), time.perf_counter(), os.times()
        return self

    def __exit__(self, *exc):
        b1, t1, o1 = self._busy(), time.perf_counter(), os.times()
        if self.b0 is None or b1 is None:
            self.share = None
            return
        own = (o1.user + o1.system) - (self.o0.user + self.o0.system)
        self.share = max(0.0, (b1 - self.b0) - own) / max((t1 - self.t0) * (os.cpu_count() or 1), 1e-9)


def med(xs):
    return statistics.median(xs) if xs else float('nan')


def proc_status(key):
    """A /proc/self/status field in bytes (VmRSS, VmHWM), or None."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(key + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss():
    v = proc_status('VmHWM')
    if v is None:
        import resource
        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return v


class BlasTimer:
    """Time spent inside numpy.dot/matmul/tensordot/einsum/inner/vdot while active.

    The functions are replaced on the numpy module, so calls made as
    ``xp.dot(...)`` / ``np.matmul(...)`` are seen; ``a @ b`` and ``a.dot(b)``
    are not (the cProfile listing shows ``ndarray.dot``).
    """

    def __init__(self):
        self.total = 0.0
        self.calls = 0
        self._depth = 0
        self._orig = {}

    def _wrap(self, f):
        def timed(*a, **k):
            if self._depth:
                return f(*a, **k)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                self.total += time.perf_counter() - t0
                self.calls += 1
                self._depth -= 1
        return timed

    def __enter__(self):
        for n in GEMM_FUNCS:
            self._orig[n] = getattr(np, n)
            setattr(np, n, self._wrap(self._orig[n]))
        return self

    def __exit__(self, *exc):
        for n, f in self._orig.items():
            setattr(np, n, f)


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_kernels():
    """The BLAS libraries loaded, with the kernel set each runs (threadpoolctl's 'architecture',
    e.g. OpenBLAS's Haswell or SkylakeX) and its thread count."""
    try:
        import threadpoolctl
    except ImportError:
        return 'threadpoolctl not installed (pip install threadpoolctl to see the BLAS kernel)'
    info = [d for d in threadpoolctl.threadpool_info() if d.get('user_api') == 'blas']
    return '; '.join('%s %s, kernel %s, %s threads' % (d.get('internal_api'), d.get('version'),
                                                       d.get('architecture', '?'), d.get('num_threads'))
                     for d in info) or 'no BLAS found by threadpoolctl'


def blas_name():
    try:
        cfg = np.show_config(mode='dicts')
        b = cfg['Build Dependencies']['blas']
        return '%s %s' % (b.get('name', '?'), b.get('version', ''))
    except Exception:
        return '?'


# -- one net ------------------------------------------------------------------------
class CaffeineRun:
    """The caffeine side of one benchmark net: build, step, per-layer timing.

    ``gpu``: build in GPU mode (caffeine.set_mode_gpu() must have been called);
    ``sync``: called around per-layer timings (the CUDA device's synchronize).
    """

    def __init__(self, name, seed=1701, batch=None, gpu=False, sync=None, calibrate=True):
        self.name = name
        self.spec = M.NETS[name]
        self.sync = sync
        self.param = M.net_param(name, batch)
        self.inputs = M.make_inputs(name, self.param, seed)
        caffeine.set_random_seed(seed)
        if self.spec['kind'] == 'train':
            self.trainer, self.how = M.make_trainer(self.param, gpu=gpu)
            self.net = self.trainer.net
        else:
            self.trainer = None
            self.net = caffeine.Net(self.param, caffeine.TEST, memory_plan=True)
            self.how = 'Net(deploy, TEST, memory_plan=True).forward_prefilled()'
        M.set_inputs(self.net, self.inputs)
        if calibrate and self.spec['kind'] == 'forward' and any(layer.type == 'BatchNorm' for layer in self.net.layers):
            M.calibrate_batchnorm(self.net)

    def step(self):
        if self.trainer is not None:
            self.trainer.step(1)
        else:
            self.net.forward_prefilled()

    def layer_times(self, iters):
        """[(median forward s, median backward s)] per layer, running the layers one at a time."""
        net = self.net
        n = len(net.layers)
        train = self.trainer is not None
        sync = self.sync or (lambda: None)
        for it in range(iters + 1):  # the first is a warm-up
            if it <= 1:
                fwd = [[] for _ in range(n)]
                bwd = [[] for _ in range(n)]
            for i in range(n):
                sync()
                t0 = time.perf_counter()
                net.forward_from_to(i, i)
                sync()
                fwd[i].append(time.perf_counter() - t0)
            if train:
                for i in range(n - 1, -1, -1):
                    sync()
                    t0 = time.perf_counter()
                    net.backward_from_to(i, i)
                    sync()
                    bwd[i].append(time.perf_counter() - t0)
                net.clear_param_diffs()
        # the minimum: per-layer times are short, and other work only adds to them
        return [(min(fwd[i]), min(bwd[i]) if train else 0.0) for i in range(n)]


class TorchRun:
    """The PyTorch side: the twin with caffeine's weights, on ``device``."""

    def __init__(self, name, crun, threads=None, device='cpu', sync=None):
        import torch
        self.torch = torch
        if threads:
            torch.set_num_threads(threads)
        self.spec = M.NETS[name]
        self.device = device
        self.sync = sync
        self.twin = M.TorchTwin(crun.param)
        M.copy_weights(crun.net, self.twin)
        self.twin.to(device)
        self.tin = {k: torch.from_numpy(v.copy()).to(device) for k, v in crun.inputs.items()}
        self.opt = M.twin_sgd(self.twin) if self.spec['kind'] == 'train' else None

    def check(self, crun):
        if self.spec['kind'] == 'train':
            return M.cross_check_train(crun.net, self.twin, crun.inputs, self.device)
        return M.cross_check_forward(crun.net, self.twin, crun.inputs, self.device)

    def step(self):
        if self.opt is not None:
            self.opt.zero_grad(set_to_none=True)
            loss = self.twin.loss(self.twin(self.tin))
            loss.backward()
            self.opt.step()
        else:
            with self.torch.no_grad():
                self.twin(self.tin)

    def layer_times(self, iters):
        """{layer name: median forward s} (in training mode for training nets, then a backward)."""
        times = {}
        for it in range(iters + 1):  # the first is a warm-up
            if it == 1:
                times = {}
            if self.opt is not None:
                self.opt.zero_grad(set_to_none=True)
                blobs = self.twin(self.tin, layer_times=times, sync=self.sync)
                self.twin.loss(blobs).backward()
            else:
                with self.torch.no_grad():
                    self.twin(self.tin, layer_times=times, sync=self.sync)
        return {k: min(v) for k, v in times.items()}


def gemm_shapes(net, i):
    """(M, N, K, groups) of the GEMM(s) that an im2col+GEMM Convolution or an InnerProduct implies.

    Convolution: W (M = C_out/g, K = C_in/g*kh*kw) times columns (K, N = batch*H_out*W_out), g times.
    InnerProduct: x (M = batch rows, K) times W^T (K, N = num_output).
    """
    layer = net.layers[i]
    bottom, top = net.bottom_vecs[i][0], net.top_vecs[i][0]
    w = layer.blobs[0].shape
    if layer.type == 'Convolution':
        g = max(int(layer.layer_param.convolution_param.group), 1)
        m = w[0] // g
        k = int(np.prod(w[1:]))
        n = top.shape[0] * int(np.prod(top.shape[2:]))
        return m, n, k, g
    ip = layer.layer_param.inner_product_param
    axis = ip.axis % len(bottom.shape)
    m = int(np.prod(bottom.shape[:axis]))
    k = int(np.prod(bottom.shape[axis:]))
    return m, ip.num_output, k, 1


_SGEMM_CACHE = {}


def sgemm_seconds(m, n, k, min_time=0.05):
    """NumPy's own float32 GEMM time for (m, k) @ (k, n), the best of repeats."""
    key = (m, n, k)
    if key in _SGEMM_CACHE:
        return _SGEMM_CACHE[key]
    rs = np.random.RandomState(0)
    a = rs.standard_normal((m, k)).astype(np.float32)
    b = rs.standard_normal((k, n)).astype(np.float32)
    c = np.empty((m, n), np.float32)
    np.dot(a, b, out=c)
    ts = []
    t_end = time.perf_counter() + min_time
    while len(ts) < 5 or (time.perf_counter() < t_end and len(ts) < 200):
        t0 = time.perf_counter()
        np.dot(a, b, out=c)
        ts.append(time.perf_counter() - t0)
    _SGEMM_CACHE[key] = min(ts)
    return _SGEMM_CACHE[key]


def run_net(name, args, have_torch):
    res = {'name': name, 'title': M.NETS[name]['title'], 'kind': M.NETS[name]['kind']}
    print('\n== %s ==' % res['title'], flush=True)
    crun = CaffeineRun(name)
    res['how'] = crun.how
    print('  caffeine: %s' % crun.how, flush=True)
    trun = None
    if have_torch:
        trun = TorchRun(name, crun, args.threads)
        res['check'] = trun.check(crun)
        print('  cross-check: %s' % fmt_check(res['check']), flush=True)
    # timing (caffeine and PyTorch in alternating blocks); again when other processes took
    # more than 10% of the CPU meanwhile, keeping the quietest attempt
    best = None
    for attempt in range(1 + max(args.retries, 0)):
        with OtherLoad() as load:
            if trun is not None:
                c_t, t_t = time_alternating(crun.step, trun.step, args.warmup, args.iters)
            else:
                c_t, t_t = time_it(crun.step, args.warmup, args.iters), None
        share = load.share if load.share is not None else 0.0
        if best is None or share < best[0]:
            best = (share, c_t, t_t)
        if share <= 0.1:
            break
        print('  (other processes used %.0f%% of the CPU: timing again)' % (100 * share), flush=True)
    share, c_times, t_times = best
    res['other_load'] = share
    res['caffeine_ms'] = med(c_times) * 1e3
    res['caffeine_spread'] = (min(c_times) * 1e3, max(c_times) * 1e3)
    if trun is not None:
        res['torch_ms'] = med(t_times) * 1e3
        res['torch_spread'] = (min(t_times) * 1e3, max(t_times) * 1e3)
    print('  caffeine %.2f ms (min %.2f, max %.2f)%s' % (
        res['caffeine_ms'], res['caffeine_spread'][0], res['caffeine_spread'][1],
        '; PyTorch %.2f ms (min %.2f, max %.2f)' % ((res['torch_ms'],) + res['torch_spread']) if trun else ''),
        flush=True)
    print('  other processes used %.0f%% of the CPU while timing%s' % (
        100 * share, ' (the timings are disturbed)' if share > 0.1 else ''), flush=True)
    # GEMM share: iterations with numpy's GEMM functions wrapped in timers
    k = max(2, args.iters // 4)
    with BlasTimer() as bt:
        t0 = time.perf_counter()
        for _ in range(k):
            crun.step()
        total = time.perf_counter() - t0
    res['gemm_share'] = bt.total / total if total else 0.0
    res['gemm_calls'] = bt.calls / k
    # cProfile of a few iterations
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(k):
        crun.step()
    prof.disable()
    res['cprofile'] = top_functions(prof, k)
    # per-layer
    net = crun.net
    lt = crun.layer_times(max(2, args.iters // 4))
    tt = trun.layer_times(max(2, args.iters // 4)) if trun else {}
    # the twin folds a Scale that follows a BatchNorm into it: group the two in the by-type table
    fused = trun.twin.fused_scale if trun else {}
    folded = {v: k for k, v in fused.items()}
    rows = []
    for i, (lname, layer) in enumerate(zip(net.layer_names, net.layers)):
        group = 'BatchNorm+Scale' if (lname in fused or lname in folded) else layer.type
        rows.append({'name': lname, 'type': layer.type, 'group': group,
                     'fwd_ms': lt[i][0] * 1e3, 'bwd_ms': lt[i][1] * 1e3,
                     'torch_fwd_ms': tt[lname] * 1e3 if lname in tt else None,
                     'folded_into': folded.get(lname),
                     'macs': layer_macs(layer, net.bottom_vecs[i], net.top_vecs[i])})
    res['layers'] = rows
    res['layer_sum_ms'] = sum(r['fwd_ms'] + r['bwd_ms'] for r in rows)
    res['torch_layer_fwd_sum_ms'] = sum(tt.values()) * 1e3 if tt else None
    res['gemm_layer_share'] = (sum(r['fwd_ms'] + r['bwd_ms'] for r in rows
                                   if r['type'] in ('Convolution', 'InnerProduct', 'Deconvolution'))
                               / res['layer_sum_ms']) if res['layer_sum_ms'] else 0.0
    # GEMM throughput per Convolution/InnerProduct layer
    gemm = []
    for i, (lname, layer) in enumerate(zip(net.layer_names, net.layers)):
        if layer.type not in ('Convolution', 'InnerProduct') or not layer.blobs:
            continue
        m, n, kk, g = gemm_shapes(net, i)
        macs = layer_macs(layer, net.bottom_vecs[i], net.top_vecs[i])
        ref = sgemm_seconds(m, n, kk) * g
        fwd_s = lt[i][0]
        row = {'name': lname, 'type': layer.type, 'M': m, 'N': n, 'K': kk, 'groups': g, 'macs': macs,
               'fwd_ms': fwd_s * 1e3, 'fwd_gflops': 2 * macs / fwd_s / 1e9 if fwd_s else 0.0,
               'sgemm_ms': ref * 1e3, 'sgemm_gflops': 2 * macs / ref / 1e9 if ref else 0.0}
        row['fwd_ratio'] = row['fwd_gflops'] / row['sgemm_gflops'] if row['sgemm_gflops'] else 0.0
        if crun.trainer is not None:
            ngemm = 1 + int(bool(net.bottom_need_backward[i][0]))
            bwd_s = lt[i][1]
            row['bwd_ms'] = bwd_s * 1e3
            row['bwd_gflops'] = 2 * macs * ngemm / bwd_s / 1e9 if bwd_s else 0.0
            row['bwd_ratio'] = row['bwd_gflops'] / row['sgemm_gflops'] if row['sgemm_gflops'] else 0.0
        if lname in tt:
            row['torch_fwd_gflops'] = 2 * macs / tt[lname] / 1e9
        gemm.append(row)
    res['gemm'] = gemm
    tot_macs = sum(r['macs'] for r in gemm)
    tot_fwd = sum(r['fwd_ms'] for r in gemm)
    tot_ref = sum(r['sgemm_ms'] for r in gemm)
    res['gemm_total'] = {'fwd_gflops': 2 * tot_macs / tot_fwd / 1e6 if tot_fwd else 0.0,
                         'sgemm_gflops': 2 * tot_macs / tot_ref / 1e6 if tot_ref else 0.0}
    res['gemm_total']['ratio'] = (res['gemm_total']['fwd_gflops'] / res['gemm_total']['sgemm_gflops']
                                  if res['gemm_total']['sgemm_gflops'] else 0.0)
    return res


def top_functions(prof, iters, n=14):
    st = pstats.Stats(prof)
    rows = []
    for (fname, line, func), (cc, nc, tt, ct, callers) in st.stats.items():
        where = '%s:%d' % (os.path.relpath(fname, M.ROOT) if fname.startswith(M.ROOT) else os.path.basename(fname),
                           line) if line else '~'
        rows.append({'func': func, 'where': where, 'tottime_ms': tt / iters * 1e3, 'calls': nc / iters})
    rows.sort(key=lambda r: -r['tottime_ms'])
    return rows[:n]


def fmt_check_short(c):
    """The cross-check in a few words: relative differences of the logits (and gradients)."""
    out = '%s rel %.1e' % (c['logits'], c['logits_rel_diff'])
    if 'grad_rel_diff' in c:
        out += ', grads rel %.1e' % c['grad_rel_diff']
    return out


def fmt_check(c):
    if 'grad_rel_diff' in c:
        return ('loss %.6f vs %.6f (|diff| %.2e); %s max |diff| %.2e (rel %.2e); gradients rel %.2e (worst %s)'
                % (c['loss_caffeine'], c['loss_torch'], c['loss_abs_diff'], c['logits'], c['logits_abs_diff'],
                   c['logits_rel_diff'], c['grad_rel_diff'], c['grad_worst']))
    return ('%s max |diff| %.2e (rel %.2e); %s max |diff| %.2e (rel %.2e)'
            % (c['output'], c['out_abs_diff'], c['out_rel_diff'], c['logits'], c['logits_abs_diff'],
               c['logits_rel_diff']))


# -- memory, in a fresh subprocess per net and framework --------------------------------
def internal_bytes(net, extra=()):
    """Host bytes held outside the net's blobs and parameters, by layer type.

    Blobs and arrays kept as layer attributes (layer-internal buffers), the
    shared convolution workspace (caffeine.workspace), and ``extra``
    objects (the solver's history).  Returns {type or 'workspace' or 'solver': bytes}.
    """
    from caffeine.blob import Blob
    seen = set()
    for b in list(net._blobs) + list(net.learnable_params) + [p for ps in net.params.values() for p in ps]:
        for mem in (b._data, b._diff):
            if mem is not None:
                seen.add(id(mem))
    out = {}

    def add(key, obj):
        n = 0
        if isinstance(obj, Blob):
            for mem in (obj._data, obj._diff):
                if mem is not None and id(mem) not in seen and getattr(mem, '_host', None) is not None:
                    seen.add(id(mem))
                    n += mem._host.nbytes
        elif isinstance(obj, np.ndarray):
            base = obj
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in seen:
                seen.add(id(base))
                n += base.nbytes
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                add(key, o)
        elif isinstance(obj, dict):
            for o in obj.values():
                add(key, o)
        if n:
            out[key] = out.get(key, 0) + n

    for layer in net.layers:
        for k, v in vars(layer).items():
            if k in ('blobs', 'layer_param'):
                continue
            add(layer.type, v)
    from caffeine import workspace
    for v in workspace.buffers().values():
        add('conv workspace', v)
    for o in extra:
        add('solver', o)
    return out


def memory_child(framework, name, threads, iters):
    out = {'framework': framework, 'name': name}
    if framework == 'caffeine':
        # initialize the BLAS (its per-thread buffers) before the baseline
        a = np.ones((256, 256), np.float32)
        np.dot(a, a)
        del a
        base = proc_status('VmRSS') or 0
        crun = CaffeineRun(name, calibrate=False)  # the values do not matter here: unit BatchNorm statistics
        for layer in crun.net.layers:
            if layer.type == 'BatchNorm':
                layer.blobs[1].data[...] = 1.0
                layer.blobs[2].data[...] = 1.0
        for _ in range(iters):
            crun.step()
        rep = memory_report(crun.net)
        out.update(rep)
        extra = []
        if crun.trainer is not None:
            extra = [v for k, v in vars(crun.trainer).items() if k in ('history', 'update', 'temp')]
        out['internal'] = internal_bytes(crun.net, extra)
    else:
        import torch
        torch.set_num_threads(threads)
        # initialize oneDNN/MKL and the thread pool before the baseline
        x = torch.ones(2, 3, 16, 16)
        torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3))
        torch.mm(torch.ones(256, 256), torch.ones(256, 256))
        del x
        base = proc_status('VmRSS') or 0
        param = M.net_param(name)
        twin = M.TorchTwin(param)
        tin = {k: torch.from_numpy(v) for k, v in M.make_inputs(name, param).items()}
        if M.NETS[name]['kind'] == 'train':
            opt = M.twin_sgd(twin)
            for _ in range(iters):
                opt.zero_grad(set_to_none=True)
                twin.loss(twin(tin)).backward()
                opt.step()
        else:
            with torch.no_grad():
                for _ in range(iters):
                    twin(tin)
    out['base_rss'] = base
    out['peak_rss'] = peak_rss()
    print('MEMORY ' + json.dumps(out))


def measure_memory(framework, name, threads, iters=3):
    cmd = [sys.executable, os.path.abspath(__file__), '--_memory', framework, name, '--threads', str(threads),
           '--iters', str(iters)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return None
    for line in p.stdout.splitlines():
        if line.startswith('MEMORY '):
            return json.loads(line[7:])
    sys.stderr.write('memory subprocess for %s/%s failed:\n%s\n' % (framework, name, p.stderr[-2000:]))
    return None


# -- printing ---------------------------------------------------------------------------
def table(rows, head, align=None):
    cols = len(head)
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(cols)]
    align = align or ['<'] + ['>'] * (cols - 1)
    lines = []
    for k, r in enumerate(cells):
        lines.append('  '.join(('{:%s%d}' % (align[i], w[i])).format(r[i]) for i in range(cols)).rstrip())
        if k == 0:
            lines.append('  '.join('-' * x for x in w))
    return '\n'.join(lines)


def mib(n):
    return '%.0f MiB' % (n / 2 ** 20) if n is not None else '-'


def print_report(results, mem, args, have_torch):
    print('\n' + '=' * 100)
    print('Summary (median of %d iterations after %d warm-up; ms per iteration)' % (args.iters, args.warmup))
    rows = []
    for r in results:
        cm = mem.get(('caffeine', r['name'])) or {}
        tm = mem.get(('torch', r['name'])) or {}
        ratio = r['caffeine_ms'] / r['torch_ms'] if r.get('torch_ms') else None
        target = TARGETS.get(r['name'])
        rows.append([
            r['title'], '%.2f' % r['caffeine_ms'], '%.2f' % r['torch_ms'] if r.get('torch_ms') else '-',
            ('%.2fx' % ratio) if ratio else '-',
            ('%.2fx' % (r['caffeine_spread'][0] / r['torch_spread'][0])) if r.get('torch_spread') else '-',
            ('<=%.1fx %s' % (target, 'ok' if ratio <= target else 'MISS')) if ratio and target else '-',
            '%s of %s' % (mib(cm['peak_rss'] - cm['base_rss']), mib(cm['peak_rss'])) if cm else '-',
            mib(cm.get('blob_bytes')) if cm else '-',
            mib(cm.get('param_bytes')) if cm else '-',
            mib(sum((cm.get('internal') or {}).values())) if cm else '-',
            '%s of %s' % (mib(tm['peak_rss'] - tm['base_rss']), mib(tm['peak_rss'])) if tm else '-',
            '%.0f%% / %.0f%%' % (100 * r['gemm_share'], 100 * r['gemm_layer_share']),
            '%.0f%%' % (100 * r['other_load']) if r.get('other_load') is not None else '-',
        ])
    print(table(rows, ['net', 'caffeine ms', 'PyTorch ms', 'ratio', 'min ratio', 'target', 'caffeine peak RSS',
                       'planned blobs', 'params', 'layer buffers', 'PyTorch peak RSS', 'GEMM share', 'other load']))
    print('''
  ratio: caffeine / PyTorch (lower is better for caffeine), of the medians; min ratio: of the fastest
    iterations, the steadier figure on a machine shared with others (the target is judged on the medians).
  peak RSS: X of Y = VmHWM of a fresh process running the net (%d iterations) is Y, X above its VmRSS
    after imports and a first small GEMM (BLAS / oneDNN buffers and threads already there).
  planned blobs: caffeine.summary.memory_report blob_bytes (data, plus diffs for training nets;
    the memory planner is on for the forward nets); params: learnable parameter bytes;
  layer buffers: host memory held outside the blobs and params (layer-internal Blobs/arrays, the shared
    convolution workspace, the solver's history), by layer type below.
  GEMM share: time inside numpy.dot/matmul/tensordot/einsum/inner/vdot (timed wrappers on the numpy
    module; `@` and ndarray.dot are not seen) / time in Convolution+InnerProduct layers (per-layer timing,
    forward+backward, includes im2col and bias), each as a share of caffeine's iteration.
  other load: CPU share used by other processes while timing (above ~10%% the figures are disturbed).
  Per-layer times and the sgemm references below are the best of their repeats; iterations are medians.'''
          % args.mem_iters)
    for r in results:
        cm = mem.get(('caffeine', r['name'])) or {}
        if cm.get('internal'):
            print('  %-34s layer buffers: %s' % (r['title'], ', '.join(
                '%s %s' % (k, mib(v)) for k, v in sorted(cm['internal'].items(), key=lambda kv: -kv[1]))))
    if have_torch:
        print('\nCorrectness (PyTorch twin with caffeine\'s weights):')
        for r in results:
            if 'check' in r:
                print('  %-34s %s' % (r['title'], fmt_check(r['check'])))


def print_profile(r, full):
    print('\n-- %s: where caffeine\'s time goes --' % r['title'])
    layers = r['layers']
    total = r['layer_sum_ms']
    train = r['kind'] == 'train'
    print('  iteration %.2f ms; sum of per-layer times %.2f ms%s' % (
        r['caffeine_ms'], total,
        ('; solver update + overhead ~%.2f ms' % (r['caffeine_ms'] - total)) if train else ''))
    if r.get('torch_ms'):
        print('  PyTorch: iteration %.2f ms; per-layer forward sum %.2f ms%s' % (
            r['torch_ms'], r['torch_layer_fwd_sum_ms'] or 0,
            ('; backward + update ~%.2f ms' % (r['torch_ms'] - (r['torch_layer_fwd_sum_ms'] or 0))) if train else ''))
    # by type
    by = {}
    for x in layers:
        d = by.setdefault(x.get('group', x['type']), [0, 0.0, 0.0, 0.0, False])
        d[0] += 1
        d[1] += x['fwd_ms']
        d[2] += x['bwd_ms']
        if x['torch_fwd_ms'] is not None:
            d[3] += x['torch_fwd_ms']
            d[4] = True
    rows = []
    for t, (n, f, b, tf, has) in sorted(by.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
        rows.append([t, n, '%.2f' % f] + (['%.2f' % b] if train else []) +
                    ['%.0f%%' % (100 * (f + b) / total if total else 0), ('%.2f' % tf) if has else '-',
                     ('%.1fx' % (f / tf)) if has and tf > 0 else '-'])
    print(table(rows, ['type', 'n', 'fwd ms'] + (['bwd ms'] if train else []) +
                ['share', 'torch fwd ms', 'fwd ratio']))
    sel = layers if full else sorted(layers, key=lambda x: -(x['fwd_ms'] + x['bwd_ms']))[:12]
    rows = []
    for x in sel:
        rows.append([x['name'], x['type'], '%.3f' % x['fwd_ms']] + (['%.3f' % x['bwd_ms']] if train else []) +
                    ['%.0f%%' % (100 * (x['fwd_ms'] + x['bwd_ms']) / total if total else 0),
                     '%.3f' % x['torch_fwd_ms'] if x['torch_fwd_ms'] is not None else
                     ('in ' + x['folded_into'] if x.get('folded_into') else '-'),
                     ('%.1fx' % (x['fwd_ms'] / x['torch_fwd_ms'])) if x['torch_fwd_ms'] else '-'])
    print('  %s:' % ('every layer' if full else 'slowest layers (--layers for all)'))
    print(table(rows, ['layer', 'type', 'fwd ms'] + (['bwd ms'] if train else []) +
                ['share', 'torch fwd ms', 'fwd ratio']))
    print('  cProfile (per iteration, by own time):')
    rows = [[c['func'][:64], c['where'][:48], '%.0f' % c['calls'], '%.3f' % c['tottime_ms']] for c in r['cprofile']]
    print(table(rows, ['function', 'where', 'calls', 'own ms']))


def print_gemm(r, full):
    g = r['gemm']
    if not g:
        return
    train = r['kind'] == 'train'
    print('\n-- %s: GEMM throughput (2*MACs / layer time vs NumPy sgemm of the implied M,N,K; target >= 70%%) --'
          % r['title'])
    sel = g if full or len(g) <= 16 else sorted(g, key=lambda x: -x['fwd_ms'])[:16]
    rows = []
    for x in sel:
        rows.append([x['name'], '%dx%dx%d%s' % (x['M'], x['N'], x['K'], (' g%d' % x['groups']) if x['groups'] > 1 else ''),
                     '%.3f' % x['fwd_ms'], '%.1f' % x['fwd_gflops']] +
                    (['%.1f' % x.get('bwd_gflops', 0)] if train else []) +
                    ['%.1f' % x['sgemm_gflops'], '%.0f%%' % (100 * x['fwd_ratio'])] +
                    (['%.0f%%' % (100 * x.get('bwd_ratio', 0))] if train else []) +
                    ['%.1f' % x['torch_fwd_gflops'] if 'torch_fwd_gflops' in x else '-'])
    print(table(rows, ['layer', 'M x N x K', 'fwd ms', 'fwd GF/s'] + (['bwd GF/s'] if train else []) +
                ['sgemm GF/s', 'fwd/sgemm'] + (['bwd/sgemm'] if train else []) + ['torch fwd GF/s']))
    if len(sel) < len(g):
        print('  (%d slowest of %d layers; --layers for all)' % (len(sel), len(g)))
    t = r['gemm_total']
    print('  all Convolution/InnerProduct forward: %.1f GFLOP/s vs sgemm %.1f GFLOP/s = %.0f%%'
          % (t['fwd_gflops'], t['sgemm_gflops'], 100 * t['ratio']))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='few iterations (a smoke run)')
    ap.add_argument('--only', default='', help='comma-separated nets: ' + ','.join(M.NETS))
    ap.add_argument('--iters', type=int, default=None, help='timed iterations (default 20, --quick 3)')
    ap.add_argument('--warmup', type=int, default=None, help='warm-up iterations (default 3, --quick 1)')
    ap.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (default 2)')
    ap.add_argument('--layers', action='store_true', help='print every layer in the profile and GEMM tables')
    ap.add_argument('--no-memory', action='store_true', help='skip the peak-memory subprocesses')
    ap.add_argument('--retries', type=int, default=2,
                    help='time a net again (at most this many times) when other processes used >10%% of the CPU')
    ap.add_argument('--json', help='also write the results to this JSON file')
    ap.add_argument('--_memory', nargs=2, metavar=('FRAMEWORK', 'NET'), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    args.mem_iters = 2 if args.quick else 3
    if args._memory:
        memory_child(args._memory[0], args._memory[1], args.threads, args.iters)
        return 0
    names = [n.strip() for n in args.only.split(',') if n.strip()] or list(M.NETS)
    for n in names:
        if n not in M.NETS:
            ap.error('unknown net %r (choose from %s)' % (n, ', '.join(M.NETS)))
    try:
        import torch
        torch.set_num_threads(args.threads)
        have_torch = True
        tinfo = 'PyTorch %s (eager, %d threads, oneDNN %s)' % (
            torch.__version__, torch.get_num_threads(), 'on' if torch.backends.mkldnn.is_available() else 'off')
    except ImportError:
        have_torch = False
        tinfo = 'PyTorch not installed (pip install torch==2.13.0): timing caffeine alone'
    caffeine.set_mode_cpu()
    print('caffeine %s on NumPy %s (%s, BLAS threads: default; OPENBLAS_NUM_THREADS=%s, OPENBLAS_CORETYPE=%s)' % (
        caffeine.__version__, np.__version__, blas_name(), os.environ.get('OPENBLAS_NUM_THREADS', 'unset'),
        os.environ.get('OPENBLAS_CORETYPE', 'unset (OpenBLAS picks its kernels for the CPU)')))
    print('BLAS in use (threadpoolctl): %s' % blas_kernels())
    print(tinfo)
    print('CPU: %s, %d cores; Python %s' % (cpu_name(), os.cpu_count() or 0, platform.python_version()))
    print('command: python benchmarks/bench_cpu.py %s' % ' '.join(argv if argv is not None else sys.argv[1:]))
    results = []
    for n in names:
        results.append(run_net(n, args, have_torch))
    mem = {}
    if not args.no_memory:
        print('\nmeasuring peak memory (a fresh process per net and framework)...', flush=True)
        for n in names:
            for fw in ('caffeine',) + (('torch',) if have_torch else ()):
                mem[(fw, n)] = measure_memory(fw, n, args.threads, args.mem_iters)
    print_report(results, mem, args, have_torch)
    for r in results:
        print_profile(r, args.layers)
        print_gemm(r, args.layers)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'memory': {'%s/%s' % k: v for k, v in mem.items()}}, f, indent=1,
                      default=str)
    return 0


if __name__ == '__main__':
    sys.exit(main())
