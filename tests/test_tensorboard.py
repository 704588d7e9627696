"""TensorBoard event files written by caffeine.tensorboard.TensorBoardListener (from Python and
by `caffeine train --tensorboard`), read back with TensorBoard's own reader: every scalar at
every step, equal to what the training log says, and a resumed run continuing the same curves
without duplicates."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')

import caffeine  # noqa: E402
from caffeine.data.db import DBWriter  # noqa: E402
from caffeine.io import array_to_datum  # noqa: E402
from caffeine.summary import parse_log  # noqa: E402
from caffeine.tensorboard import TensorBoardListener  # noqa: E402

REPO = Path(caffeine.__file__).resolve().parents[1]


def read_events(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}
    histograms = {tag: [e.step for e in acc.Histograms(tag)] for tag in acc.Tags()['histograms']}
    return scalars, histograms


def fake_solver(it=0):
    return SimpleNamespace(iter=it)


def drive(listener, solver, start, stop, offset):
    """What a Solver does: displays every 2 iterations, tests every 4; values tell runs apart."""
    listener.on_start(solver)
    for it in range(start, stop + 1):
        solver.iter = it
        if it % 4 == 0:
            listener.on_test(solver, 0, {'accuracy': offset + it / 100, 'loss': offset + 1 - it / 100})
            listener.on_test(solver, 1, {'accuracy': offset + it / 200})
        if it % 2 == 0:
            listener.on_display(solver, dict(iter=it, loss=offset + 2.0 / (it + 1), smoothed_loss=offset + 1.5,
                                             lr=0.01 * (offset + 1), outputs={'loss': offset + 2.0 / (it + 1)},
                                             iters_per_s=50.0 + it))


def test_a_resumed_run_continues_the_curves_and_replaces_the_points_past_its_start(tmp_path):
    first = TensorBoardListener(tmp_path)
    drive(first, fake_solver(), 0, 9, 0)       # interrupted after iteration 9; snapshot at 4
    first.on_finish(None)
    second = TensorBoardListener(tmp_path)
    drive(second, fake_solver(4), 4, 12, 100)  # resumed from the snapshot of iteration 4
    second.on_finish(None)
    assert len([f for f in os.listdir(tmp_path) if f.startswith('events.out.tfevents.')]) == 2
    scalars, _ = read_events(tmp_path)
    # every step once; the first run's points before 4, the resumed run's from 4 on
    assert [s for s, _ in scalars['train_loss/raw']] == [0, 2, 4, 6, 8, 10, 12]
    assert [v > 100 for _, v in scalars['train_loss/raw']] == [False, False, True, True, True, True, True]
    assert scalars['solver/lr'] == [(0, pytest.approx(0.01)), (2, pytest.approx(0.01))] + [
        (s, pytest.approx(1.01)) for s in (4, 6, 8, 10, 12)]
    assert scalars['test/accuracy'] == [(0, 0.0), (4, pytest.approx(100.04)), (8, pytest.approx(100.08)),
                                        (12, pytest.approx(100.12))]


def test_without_the_tensorboard_package_one_line_error(monkeypatch):
    from caffeine.errors import CaffeineError
    monkeypatch.setitem(sys.modules, 'tensorboard.summary.writer.event_file_writer', None)   # import fails
    with pytest.raises(CaffeineError, match=r"^TensorBoard logging needs the tensorboard package: "
                                            r"pip install 'caffeine\[tensorboard\]'$"):
        TensorBoardListener('unused')


NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00390625 } data_param { source: "%(db)s" backend: LMDB batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""

SOLVER = """
net: "%(net)s"
test_iter: 2  test_interval: 4
base_lr: %(lr)s  lr_policy: "step"  gamma: 0.5  stepsize: 3  momentum: 0.9
display: 2  max_iter: %(max_iter)d  snapshot: 4  snapshot_prefix: "%(prefix)s"  random_seed: 3
"""


def tiny_solver(tmp_path, lr=0.1, max_iter=8, name='solver.prototxt'):
    """A 4-class softmax regression over 16 records of 1x2x2, tested every 4 iterations."""
    db = tmp_path / 'db'
    if not db.exists():
        r = np.random.RandomState(0)
        with DBWriter(db, 'lmdb') as w:
            for i in range(16):
                w.put(b'%08d' % i, array_to_datum(r.randint(0, 255, (1, 2, 2)).astype(np.uint8), i % 4)
                      .SerializeToString())
    (tmp_path / 'net.prototxt').write_text(NET % dict(db=db))
    (tmp_path / name).write_text(SOLVER % dict(net=tmp_path / 'net.prototxt', lr=lr, max_iter=max_iter,
                                               prefix=tmp_path / 'snap'))
    return str(tmp_path / name)


def test_listener_on_a_solver_from_python(tmp_path):
    solver = caffeine.get_solver(tiny_solver(tmp_path))
    displays, tests = [], []
    solver.add_listener(SimpleNamespace(on_display=lambda s, info: displays.append(info),
                                        on_test=lambda s, k, scores: tests.append((s.iter, scores))))
    with TensorBoardListener(tmp_path / 'tb', histograms=True) as board:
        solver.add_listener(board)
        solver.step(5)
        # flushed at each display: readable while training goes on
        scalars, histograms = read_events(tmp_path / 'tb')
        assert [s for s, _ in scalars['train_loss/raw']] == [0, 2, 4]
    solver.close()
    scalars, histograms = read_events(tmp_path / 'tb')
    assert sorted(scalars) == ['gradient_norm/ip/0', 'gradient_norm/ip/1', 'solver/iters_per_s', 'solver/lr',
                               'test/accuracy', 'test/loss', 'train/loss', 'train_loss/raw', 'train_loss/smoothed',
                               'weight_norm/ip/0', 'weight_norm/ip/1']
    approx = pytest.approx
    assert [s for s, _ in scalars['train_loss/raw']] == [d['iter'] for d in displays] == [0, 2, 4]
    assert [v for _, v in scalars['train_loss/raw']] == approx([d['loss'] for d in displays])
    assert [v for _, v in scalars['train_loss/smoothed']] == approx([d['smoothed_loss'] for d in displays])
    assert [v for _, v in scalars['train/loss']] == approx([d['outputs']['loss'] for d in displays])
    assert scalars['solver/lr'] == [(0, approx(0.1)), (2, approx(0.1)), (4, approx(0.05))]
    assert [s for s, _ in scalars['solver/iters_per_s']] == [2, 4]      # none before an iteration has run
    assert [it for it, _ in tests] == [0, 4]
    for name in ('accuracy', 'loss'):
        assert scalars['test/' + name] == [(it, approx(scores[name])) for it, scores in tests]
    assert [s for s, _ in scalars['weight_norm/ip/0']] == [0, 2, 4]
    assert [s for s, _ in scalars['gradient_norm/ip/1']] == [0, 2, 4]
    assert histograms == {'weights/ip/0': [0, 2, 4], 'weights/ip/1': [0, 2, 4]}
    assert all(v > 0 for _, v in scalars['gradient_norm/ip/0'])


def train_cli(tmp_path, *args):
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'train'] + [str(a) for a in args], cwd=tmp_path,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return parse_log(r.stderr.splitlines())


def test_train_cli_tensorboard_matches_the_log_and_a_resume_continues_the_curves(tmp_path):
    first = train_cli(tmp_path, '--solver', tiny_solver(tmp_path), '--tensorboard', tmp_path / 'tb',
                      '--tensorboard-histograms')
    scalars, histograms = read_events(tmp_path / 'tb')
    approx = pytest.approx
    # the log's smoothed loss (Caffe's display line) at 0, 2, 4, 6 and the final one at 8
    assert [s for s, _ in first['train']] == [0, 2, 4, 6, 8]
    assert scalars['train_loss/smoothed'] == [(s, approx(v, rel=1e-5)) for s, v in first['train']]
    # Caffe's log shows no train outputs after the last iteration; the listener gets them
    assert scalars['train/loss'][:-1] == [(s, approx(v, rel=1e-5)) for s, v in first['train_outputs']['loss']]
    assert [s for s, _ in scalars['train/loss']] == [0, 2, 4, 6, 8]
    assert scalars['solver/lr'] == [(0, approx(0.1)), (2, approx(0.1)), (4, approx(0.05)), (6, approx(0.025)),
                                    (8, approx(0.025))]
    assert [s for s, _ in first['test']['accuracy']] == [0, 4, 8]
    for name in ('accuracy', 'loss'):
        assert scalars['test/' + name] == [(s, approx(v, rel=1e-5)) for s, v in first['test'][name]]
    assert [s for s, _ in scalars['solver/iters_per_s']] == [2, 4, 6]
    assert histograms['weights/ip/0'] == [0, 2, 4, 6]
    # before iteration 4's update the weights are those of the iteration-4 snapshot
    net = caffeine.Net(str(tmp_path / 'net.prototxt'), caffeine.TEST, weights=str(tmp_path / 'snap_iter_4.caffemodel'))
    w4 = dict(scalars['weight_norm/ip/0'])[4]
    assert w4 == approx(float(np.linalg.norm(net.params['ip'][0].data)), rel=1e-5)
    net.close()

    # resume from iteration 4 with another base_lr, to 10: the first run's points from 4 on
    # give way to the resumed run's; every step once
    second = train_cli(tmp_path, '--solver', tiny_solver(tmp_path, lr=0.4, max_iter=10, name='resume.prototxt'),
                       '--snapshot', tmp_path / 'snap_iter_4.solverstate', '--tensorboard', tmp_path / 'tb')
    scalars, histograms = read_events(tmp_path / 'tb')
    assert [s for s, _ in second['train']] == [4, 6, 8, 10]
    assert scalars['train_loss/smoothed'] == [(s, approx(v, rel=1e-5)) for s, v in first['train'][:2] + second['train']]
    assert scalars['solver/lr'] == [(0, approx(0.1)), (2, approx(0.1)), (4, approx(0.2)), (6, approx(0.1)),
                                    (8, approx(0.1)), (10, approx(0.05))]
    for name in ('accuracy', 'loss'):
        assert [s for s, _ in second['test'][name]] == [4, 8]
        assert scalars['test/' + name] == [(s, approx(v, rel=1e-5)) for s, v in
                                           first['test'][name][:1] + second['test'][name]]
    # the resumed run asked for no histograms: the first run's before 4 stay, the later ones go
    assert histograms['weights/ip/0'] == [0, 2]
    assert [s for s, _ in scalars['weight_norm/ip/0']] == [0, 2]


def test_train_cli_tensorboard_errors(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'train', '--solver', tiny_solver(tmp_path),
                        '--tensorboard-histograms'], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == ('caffeine: error: train: --tensorboard-histograms needs '
                                                 '--tensorboard DIR')
