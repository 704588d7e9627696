"""The README's main job, shortened for CI: `caffeine data mnist`, then
`caffeine train` with the shipped LeNet solver and net, unchanged but for
max_iter, test_iter and the snapshots.  The full 10,000 iterations (99.15%)
are in the README; 300 iterations must already reach 95%."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import caffeine
from caffeine.prototxt import read_solver_param, to_text

REPO = Path(caffeine.__file__).resolve().parents[1]


def test_lenet_trains_from_the_shipped_solver(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cli = [sys.executable, '-m', 'caffeine']
    # the layout the solver expects, relative to the working directory as in Caffe
    (tmp_path / 'models' / 'lenet').mkdir(parents=True)
    shutil.copy(REPO / 'models' / 'lenet' / 'train_val.prototxt', tmp_path / 'models' / 'lenet')
    r = subprocess.run(cli + ['data', 'mnist', '--from', str(REPO / 'data' / 'mnist'), '--out', 'data/mnist'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'data' / 'mnist' / 'mnist_train_lmdb').is_dir()

    sp = read_solver_param(str(REPO / 'solvers' / 'lenet_solver.prototxt'))
    assert sp.net == 'models/lenet/train_val.prototxt'
    sp.max_iter, sp.test_interval, sp.test_iter[0], sp.display = 300, 300, 20, 100
    sp.snapshot = 0
    sp.snapshot_prefix = 'snapshots/lenet'
    (tmp_path / 'solver.prototxt').write_text(to_text(sp))
    r = subprocess.run(cli + ['train', '--solver', 'solver.prototxt'], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-2000:]
    assert re.search(r'Iteration 100 \([\d.]+ iter/s, [\d.]+s/100 iters\), loss = [\d.e+-]+', log)
    acc = [float(a) for a in re.findall(r'Test net output #0: accuracy = ([\d.]+)', log)]
    assert len(acc) == 2          # at iteration 0 and at 300
    assert acc[0] < 0.3 and acc[-1] >= 0.95, acc
    assert (tmp_path / 'snapshots' / 'lenet_iter_300.caffemodel').is_file()   # snapshot_after_train
