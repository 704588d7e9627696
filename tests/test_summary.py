"""caffeine summary and caffeine plot."""
import subprocess
import sys

import pytest

import caffeine
from caffeine.summary import parse_log, summarize

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
