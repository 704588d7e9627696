"""Looking at a model and a run: per-layer summary, and parsing training logs."""
from __future__ import annotations

import math
import os
import re

from .errors import CaffeineError
from .utils import atomic_write


def layer_macs(layer, bottom, top):
    """Multiply-adds of one forward pass of ``layer`` (0 where negligible)."""
    t = layer.type
    if t in ('Convolution', 'Deconvolution') and layer.blobs:
        w = layer.blobs[0].shape
        per_out = math.prod(int(x) for x in w[1:])  # (C_in/group) * kernel for Convolution
        if t == 'Convolution':
            return sum(tp.count for tp in top) * per_out
        return sum(b.count for b in bottom) * per_out
    if t == 'InnerProduct' and layer.blobs:
        return sum(tp.count for tp in top) * (layer.blobs[0].count // max(
            layer.blobs[0].shape[0] if not layer.layer_param.inner_product_param.transpose else layer.blobs[0].shape[1], 1))
    if t in ('LSTM', 'RNN') and layer.blobs:
        return sum(b.count for b in layer.blobs) * (bottom[0].shape[0] * bottom[0].shape[1] if bottom else 1)
    return 0


def summarize(net):
    """Rows (name, type, top shapes, params, macs) and totals for a built Net."""
    rows = []
    total_params = total_macs = 0
    seen = set()
    for i, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
        nparams = 0
        for b in layer.blobs:
            key = id(b.data_memory)
            if key not in seen:
                seen.add(key)
                nparams += b.count
        macs = layer_macs(layer, net.bottom_vecs[i], net.top_vecs[i])
        shapes = [tuple(t.shape) for t in net.top_vecs[i]]
        rows.append((name, layer.type, shapes, nparams, macs))
        total_params += nparams
        total_macs += macs
    return rows, total_params, total_macs


def memory_report(net):
    """Bytes held by the net's blobs (``blob_bytes``), and what they held before the
    memory planner let dead blobs share storage (``naive_blob_bytes``; equal when
    the net is not planned).  Buffers shared anyway (in-place layers, Split tops)
    count once.  Data buffers always count; diff buffers when the net has a
    backward pass.
    """
    backward = any(net.layer_need_backward)
    seen, planned = set(), 0
    for b in net._blobs:
        for mem in ((b.data_memory, b.diff_memory) if backward else (b.data_memory,)):
            if mem is not None and id(mem) not in seen:
                seen.add(id(mem))
                planned += mem.capacity * 4
    naive = net.unplanned_bytes if net.memory_planned else planned
    param_bytes = sum(b.count for b in net.learnable_params) * 4
    return {'blob_bytes': planned, 'param_bytes': param_bytes, 'naive_blob_bytes': naive}


def human_bytes(n):
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return ('%.1f %s' % (n, unit)) if unit != 'B' else '%d B' % n
        n /= 1024.0


def human_count(n):
    for unit, div in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= div:
            return '%.2f%s' % (n / div, unit)
    return str(int(n))


def format_summary(net):
    rows, tp, tm = summarize(net)
    head = ('Layer', 'Type', 'Top shape(s)', 'Params', 'Mult-adds')
    table = [head] + [(n, t, ', '.join('x'.join(str(d) for d in s) or 'scalar' for s in shapes) or '-',
                       human_count(p) if p else '-', human_count(m) if m else '-') for n, t, shapes, p, m in rows]
    widths = [max(len(str(r[i])) for r in table) for i in range(5)]
    lines = []
    for k, r in enumerate(table):
        lines.append('  '.join(str(c).ljust(widths[i]) if i < 3 else str(c).rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            lines.append('  '.join('-' * w for w in widths))
    mem = memory_report(net)
    lines.append('')
    lines.append('Total: %d layers, %s parameters (%s), %s mult-adds per forward pass'
                 % (len(rows), human_count(tp), human_bytes(tp * 4), human_count(tm)))
    lines.append('Memory: blobs %s%s, %s without the memory planner (%.0f%%); parameters %s'
                 % (human_bytes(mem['blob_bytes']), ' (memory planner on)' if net.memory_planned else '',
                    human_bytes(mem['naive_blob_bytes']),
                    100.0 * mem['blob_bytes'] / max(mem['naive_blob_bytes'], 1), human_bytes(mem['param_bytes'])))
    return '\n'.join(lines)


# -- training logs -----------------------------------------------------------------
_ITER_LOSS = re.compile(r'Iteration (\d+)(?: \([^)]*\))?, loss = ([-+\d.eE]+|nan|inf)')
_TESTING = re.compile(r'Iteration (\d+), Testing net \(#(\d+)\)')
_TEST_OUT = re.compile(r'Test net output #(\d+): (\S+) = ([-+\d.eE]+|nan|inf)')
_TRAIN_OUT = re.compile(r'Train net output #(\d+): (\S+) = ([-+\d.eE]+|nan|inf)')
_LR = re.compile(r'Iteration (\d+), lr = ([-+\d.eE]+)')


def parse_log(lines):
    """Parse a caffeine or Caffe training log.

    Returns {'train': [(iter, loss)], 'test': {name: [(iter, value)]}, 'lr': [(iter, lr)],
    'train_outputs': {name: [(iter, value)]}}; only test net #0 is collected in 'test'.
    """
    train, lr, test, train_out = [], [], {}, {}
    cur_test_iter = None
    cur_test_net = 0
    last_iter = None
    for line in lines:
        m = _ITER_LOSS.search(line)
        if m:
            last_iter = int(m.group(1))
            train.append((last_iter, float(m.group(2))))
            continue
        m = _TESTING.search(line)
        if m:
            cur_test_iter, cur_test_net = int(m.group(1)), int(m.group(2))
            continue
        m = _TEST_OUT.search(line)
        if m and cur_test_iter is not None and cur_test_net == 0:
            test.setdefault(m.group(2), []).append((cur_test_iter, float(m.group(3))))
            continue
        m = _TRAIN_OUT.search(line)
        if m and last_iter is not None:
            train_out.setdefault(m.group(2), []).append((last_iter, float(m.group(3))))
            continue
        m = _LR.search(line)
        if m:
            lr.append((int(m.group(1)), float(m.group(2))))
    return {'train': train, 'test': test, 'lr': lr, 'train_outputs': train_out}


def read_log(log_path):
    """parse_log of the file ``log_path``; one-line errors for a missing file or one with no
    training or test lines."""
    try:
        with open(log_path, errors='replace') as f:
            parsed = parse_log(f)
    except FileNotFoundError:
        raise CaffeineError('%s: no such log file' % log_path)
    if not parsed['train'] and not parsed['test']:
        raise CaffeineError('%s: no training or test lines found (is it a Caffe/caffeine log?)' % log_path)
    return parsed


def _run_names(paths):
    """Legend names for the runs: file names, or the paths as given where file names repeat."""
    base = [os.path.basename(str(p)) for p in paths]
    return base if len(set(base)) == len(base) else [str(p) for p in paths]


def _pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise CaffeineError('caffeine plot needs matplotlib: pip install caffeine[plot]')
    return plt


def draw_logs(runs, logy=False):
    """A matplotlib figure of ``runs`` [(name, parse_log result)]: train loss (solid), test
    losses (dashed, squares) against iterations on the left axis (logarithmic with ``logy``),
    test accuracies (dotted, circles) on a right axis; one colour per run.  With one run the
    legend says only what each curve is."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    acc_ax = None
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for k, (name, parsed) in enumerate(runs):
        if len(runs) == 1:
            prefix, c_train, c_test, c_acc = '', 'tab:blue', 'tab:red', 'tab:green'
        else:
            prefix, c_train = name + ': ', colours[k % len(colours)]
            c_test = c_acc = c_train
        if parsed['train']:
            it, v = zip(*parsed['train'])
            ax.plot(it, v, '-', label=prefix + 'train loss', color=c_train, lw=1)
        for series, pts in parsed['test'].items():
            it, v = zip(*pts)
            if 'acc' in series.lower():
                acc_ax = acc_ax or ax.twinx()
                acc_ax.plot(it, v, 'o:', label=prefix + 'test ' + series, color=c_acc, ms=3)
            else:
                ax.plot(it, v, 's--', label=prefix + 'test ' + series, color=c_test, ms=3)
    ax.set_xlabel('iteration')
    ax.set_ylabel('loss')
    if logy:
        ax.set_yscale('log')
    handles, labels = ax.get_legend_handles_labels()
    if acc_ax is not None:
        acc_ax.set_ylabel('accuracy')
        h2, l2 = acc_ax.get_legend_handles_labels()
        handles += h2
        labels += l2
    ax.legend(handles, labels, loc='center right', fontsize='small' if len(runs) > 2 else None)
    ax.set_title(runs[0][0] if len(runs) == 1 else ' vs '.join(name for name, _ in runs))
    fig.tight_layout()
    return fig


def plot_logs(log_paths, out_path, logy=False):
    """Draw the curves of one or several training logs (overlaid, to compare runs) into
    ``out_path`` (png, svg, pdf: by its extension); returns their parse_log results."""
    plt = _pyplot()
    log_paths = list(log_paths)
    parsed = [read_log(p) for p in log_paths]
    names = [str(log_paths[0])] if len(log_paths) == 1 else _run_names(log_paths)
    fig = draw_logs(list(zip(names, parsed)), logy=logy)
    ext = os.path.splitext(str(out_path))[1].lstrip('.') or 'png'
    try:
        with atomic_write(out_path, 'wb') as f:
            fig.savefig(f, format=ext, dpi=100)
    finally:
        plt.close(fig)
    return parsed


def plot_log(log_path, out_path, logy=False):
    """Draw training loss, test loss and test accuracy of one log against iterations (matplotlib)."""
    return plot_logs([log_path], out_path, logy=logy)[0]
