"""caffeine summary and caffeine plot."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import caffeine
from caffeine.summary import parse_log, summarize

REPO = Path(caffeine.__file__).resolve().parents[1]

LOG = """\
I1126 10:00:00.000 solver.cpp:228] Iteration 0, loss = 2.30
I1126 10:00:00.000 solver.cpp:244]     Train net output #0: loss = 2.30 (* 1 = 2.30 loss)
I1126 10:00:00.000 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I1126 10:00:01.000 solver.cpp:228] Iteration 100 (55.1 iter/s, 1.8s/100 iters), loss = 0.25
Iteration 100, Testing net (#0)
    Test net output #0: accuracy = 0.91
    Test net output #1: loss = 0.30 (* 1 = 0.30 loss)
Iteration 100, Testing net (#1)
    Test net output #0: accuracy = 0.5
Iteration 200 (50 iter/s, 2s/100 iters), loss = 0.125
"""


def test_parse_log_reads_caffe_and_caffeine_lines():
    p = parse_log(LOG.splitlines())
    assert p['train'] == [(0, 2.30), (100, 0.25), (200, 0.125)]
    assert p['test'] == {'accuracy': [(100, 0.91)], 'loss': [(100, 0.30)]}
    assert p['lr'] == [(0, 0.01)]
    assert p['train_outputs']['loss'] == [(0, 2.30)]


def test_summary_counts_params_and_macs():
    net = caffeine.Net('models/lenet/deploy.prototxt', caffeine.TEST)
    rows, params, macs = summarize(net)
    byname = {r[0]: r for r in rows}
    assert byname['conv1'][2] == [(64, 20, 24, 24)]
    assert byname['conv1'][3] == 20 * 25 + 20
    assert byname['conv1'][4] == 64 * 20 * 24 * 24 * 25
    assert byname['ip1'][4] == 64 * 500 * 800
    assert params == 431080  # LeNet's published parameter count


def test_summary_and_plot_cli(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'summary', 'models/lenet/deploy.prototxt'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'conv1' in r.stdout and 'Total: 9 layers, 431.08K parameters' in r.stdout
    pytest.importorskip('matplotlib')
    log = tmp_path / 'train.log'
    log.write_text(LOG)
    out = tmp_path / 'curves.png'
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'plot', str(log), '-o', str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    empty = tmp_path / 'empty.log'
    empty.write_text('nothing here\n')
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'plot', str(empty), '-o', str(tmp_path / 'x.png')],
                       capture_output=True, text=True)
    assert r.returncode == 1 and 'no training or test lines' in r.stderr and 'Traceback' not in r.stderr


def test_summary_output_ends_with_one_newline():
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'summary', 'models/lenet/deploy.prototxt'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith('MiB\n') and not r.stdout.endswith('\n\n')


LOG_B = LOG.replace('loss = 0.25', 'loss = 0.5').replace('accuracy = 0.91', 'accuracy = 0.8')


def test_draw_logs_overlays_runs_with_a_colour_each_and_a_log_axis():
    pytest.importorskip('matplotlib')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from caffeine.summary import draw_logs
    runs = [('a.log', parse_log(LOG.splitlines())), ('b.log', parse_log(LOG_B.splitlines()))]
    fig = draw_logs(runs, logy=True)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_yscale() == 'log' and acc_ax.get_yscale() == 'linear'
    lines = {ln.get_label(): ln for ln in loss_ax.get_lines() + acc_ax.get_lines()}
    assert sorted(lines) == ['a.log: test accuracy', 'a.log: test loss', 'a.log: train loss',
                             'b.log: test accuracy', 'b.log: test loss', 'b.log: train loss']
    assert list(lines['b.log: train loss'].get_ydata()) == [2.30, 0.5, 0.125]
    assert list(lines['b.log: test accuracy'].get_xdata()) == [100]
    assert list(lines['b.log: test accuracy'].get_ydata()) == [0.8]
    assert lines['a.log: train loss'].get_color() == lines['a.log: test accuracy'].get_color()
    assert lines['a.log: train loss'].get_color() != lines['b.log: train loss'].get_color()
    plt.close(fig)
    fig = draw_logs(runs[:1])
    assert fig.axes[0].get_yscale() == 'linear'
    assert sorted(ln.get_label() for ax in fig.axes for ln in ax.get_lines()) == [
        'test accuracy', 'test loss', 'train loss']
    plt.close(fig)


def test_plot_cli_overlays_several_logs(tmp_path):
    pytest.importorskip('matplotlib')
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    (tmp_path / 'a' / 'train.log').write_text(LOG)
    (tmp_path / 'b' / 'train.log').write_text(LOG_B)
    out = tmp_path / 'both.svg'
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'plot', 'a/train.log', 'b/train.log', '--logy',
                        '-o', str(out)], capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['wrote %s: a/train.log (3 train points, 2 test series)' % out,
                                     'wrote %s: b/train.log (3 train points, 2 test series)' % out]
    svg = out.read_text()
    # the same file names: the legend tells the runs apart by their paths
    assert 'a/train.log: train loss' in svg and 'b/train.log: test accuracy' in svg
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'plot', 'a/train.log', 'missing.log', '-o', str(out)],
                       capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 1 and r.stderr.strip() == 'caffeine: error: missing.log: no such log file'
