"""TensorBoard event files written by caffeine.tensorboard.TensorBoardListener, read back
with TensorBoard's own reader: every scalar at every step, and a resumed run continuing the
same curves without duplicates."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip('tensorboardX')
event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')

from caffeine.tensorboard import TensorBoardListener  # noqa: E402


def read_events(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}
    histograms = {tag: [e.step for e in acc.Histograms(tag)] for tag in acc.Tags()['histograms']}
    return scalars, histograms


def fake_solver(it=0):
    w = SimpleNamespace(data=np.array([[3.0, 4.0]], np.float32), diff=np.array([[0.0, 0.5]], np.float32))
    b = SimpleNamespace(data=np.array([1.0], np.float32), diff=np.array([2.0], np.float32))
    return SimpleNamespace(iter=it, net=SimpleNamespace(params={'ip 1': [w, b]}))


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


def test_listener_writes_every_scalar_at_its_iteration(tmp_path):
    listener = TensorBoardListener(tmp_path / 'run', histograms=True)
    drive(listener, fake_solver(), 0, 4, 0)
    # flushed at each display: readable while the run goes on
    scalars, _ = read_events(tmp_path / 'run')
    assert [s for s, _ in scalars['train_loss/raw']] == [0, 2, 4]
    listener.on_finish(None)
    scalars, histograms = read_events(tmp_path / 'run')
    assert sorted(scalars) == sorted([
        'train_loss/raw', 'train_loss/smoothed', 'train/loss', 'solver/lr', 'solver/iters_per_s',
        'test/accuracy', 'test/loss', 'test1/accuracy',
        'weight_norm/ip_1/0', 'weight_norm/ip_1/1', 'gradient_norm/ip_1/0', 'gradient_norm/ip_1/1'])
    approx = pytest.approx
    assert scalars['train_loss/raw'] == [(0, approx(2.0)), (2, approx(2 / 3)), (4, approx(0.4))]
    assert scalars['train/loss'] == scalars['train_loss/raw']
    assert scalars['train_loss/smoothed'] == [(0, 1.5), (2, 1.5), (4, 1.5)]
    assert scalars['solver/lr'] == [(0, approx(0.01)), (2, approx(0.01)), (4, approx(0.01))]
    assert scalars['solver/iters_per_s'] == [(0, 50.0), (2, 52.0), (4, 54.0)]
    assert scalars['test/accuracy'] == [(0, 0.0), (4, approx(0.04))]
    assert scalars['test/loss'] == [(0, 1.0), (4, approx(0.96))]
    assert scalars['test1/accuracy'] == [(0, 0.0), (4, approx(0.02))]
    assert scalars['weight_norm/ip_1/0'] == [(0, 5.0), (2, 5.0), (4, 5.0)]
    assert scalars['gradient_norm/ip_1/1'] == [(0, 2.0), (2, 2.0), (4, 2.0)]
    assert histograms == {'weights/ip_1/0': [0, 2, 4], 'weights/ip_1/1': [0, 2, 4]}


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


def test_without_tensorboardx_one_line_error(monkeypatch):
    import builtins
    from caffeine.errors import CaffeineError
    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name == 'tensorboardX':
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_tensorboardx)
    with pytest.raises(CaffeineError, match=r"^TensorBoard logging needs tensorboardX: pip install 'caffeine\[tensorboard\]'$"):
        TensorBoardListener('unused')
