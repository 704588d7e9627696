"""The Solver's listener API, the gradients-ready seam, history slots, parsing the
solver file once, and the CLI's progress bar (a listener)."""
import logging
import os
import re
import sys

import numpy as np
import pytest

from caffeine import solver_setup
from caffeine.cli.train import progress_bar, progress_wanted
from caffeine.solver import AdaDeltaSolver, SGDSolver, Solver, SolverAction

NET = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
'''
NUM = r'[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)'


def write_solver(tmp_path, extra, prefix=True):
    (tmp_path / 'net.prototxt').write_text(NET)
    text = 'net: "%s" base_lr: 0.1 random_seed: 3 ' % (tmp_path / 'net.prototxt')
    text += '' if 'lr_policy' in extra else 'lr_policy: "fixed" '
    text += '' if 'max_iter' in extra else 'max_iter: 6 '
    if prefix:
        text += 'snapshot_prefix: "%s" ' % (tmp_path / 'tiny')
    path = tmp_path / 'solver.prototxt'
    path.write_text(text + extra)
    return str(path)


def feed(solver):
    def on_start():
        rng = np.random.RandomState(100 + solver.iter)
        for net in [solver.net] + solver.test_nets:
            net.blobs['data'].data[...] = rng.randn(4, 6)
            net.blobs['label'].data[...] = rng.randint(0, 3, 4)
    solver.add_callback(on_start, None)
    return solver


def make(tmp_path, extra, cls=Solver):
    return feed(cls(write_solver(tmp_path, extra)))


class Recorder:
    def __init__(self):
        self.events = []

    def on_start(self, solver):
        self.events.append(('start', solver.iter))

    def on_display(self, solver, info):
        self.events.append(('display', dict(info)))

    def on_test(self, solver, test_net_id, scores):
        self.events.append(('test', solver.iter, test_net_id, dict(scores)))

    def on_snapshot(self, solver, model_path, state_path):
        assert os.path.exists(model_path) and os.path.exists(state_path)
        self.events.append(('snapshot', solver.iter, model_path, state_path))

    def on_step_end(self, solver):
        self.events.append(('step_end', solver.iter))

    def on_finish(self, solver):
        self.events.append(('finish', solver.iter))


def test_listener_events_in_order(tmp_path):
    s = make(tmp_path, 'display: 3 test_iter: 2 test_interval: 3 snapshot: 4 snapshot_after_train: false')
    rec = Recorder()
    s.add_listener(rec)
    s.solve()
    kinds = [(e[0], e[1] if e[0] != 'display' else e[1]['iter']) for e in rec.events]
    assert kinds == [('start', 0), ('test', 0), ('display', 0), ('step_end', 1), ('step_end', 2), ('step_end', 3),
                     ('test', 3), ('display', 3), ('snapshot', 4), ('step_end', 4), ('step_end', 5),
                     ('step_end', 6), ('display', 6), ('test', 6), ('finish', 6)]
    snap = [e for e in rec.events if e[0] == 'snapshot'][0]
    assert snap[2:] == (str(tmp_path / 'tiny_iter_4.caffemodel'), str(tmp_path / 'tiny_iter_4.solverstate'))


def test_display_info_is_what_caffe_logs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make(tmp_path, 'display: 2 average_loss: 2 lr_policy: "step" gamma: 0.5 stepsize: 2 '
                       'snapshot_after_train: false max_iter: 5')
    rec = Recorder()
    s.add_listener(rec)
    raw = []
    s.add_callback(None, lambda: raw.append(s.last_loss))
    s.step(5)
    infos = [e[1] for e in rec.events if e[0] == 'display']
    assert [i['iter'] for i in infos] == [0, 2, 4]
    logged = [float(m.group(1)) for m in re.finditer(r'Iteration \d+ \(.*\), loss = (%s)' % NUM, caplog.text)]
    outs = [float(m.group(1)) for m in re.finditer(r'Train net output #0: loss = (%s)' % NUM, caplog.text)]
    lrs = [float(m.group(1)) for m in re.finditer(r'Iteration \d+, lr = (%s)' % NUM, caplog.text)]
    assert lrs == [0.1, 0.05, 0.025]
    for k, info in enumerate(infos):
        assert set(info) == {'iter', 'loss', 'smoothed_loss', 'lr', 'outputs', 'iters_per_s'}
        assert info['loss'] == raw[2 * k]
        assert info['smoothed_loss'] == pytest.approx(logged[k], rel=1e-5)
        assert info['lr'] == pytest.approx(lrs[k], rel=1e-6)
        assert list(info['outputs']) == ['loss']
        assert info['outputs']['loss'] == pytest.approx(outs[k], rel=1e-5)
        assert info['outputs']['loss'] == pytest.approx(raw[2 * k], rel=1e-6)
    assert infos[1]['smoothed_loss'] == pytest.approx((raw[1] + raw[2]) / 2, rel=1e-5)
    assert infos[0]['iters_per_s'] is None
    assert infos[1]['iters_per_s'] > 0 and infos[2]['iters_per_s'] > 0


def test_test_scores_are_the_logged_means(tmp_path):
    s = make(tmp_path, 'test_iter: 3 test_interval: 100')
    rec = Recorder()
    s.add_listener(rec)
    pairs = s.test(0)
    (_, it, tid, scores), = [e for e in rec.events if e[0] == 'test']
    assert (it, tid) == (0, 0)
    assert scores == dict(pairs) and sorted(scores) == ['acc', 'loss']
    assert 0 <= scores['acc'] <= 1 and scores['loss'] > 0


def test_finish_after_a_stop_action_and_removed_listener_is_silent(tmp_path):
    s = make(tmp_path, 'snapshot_after_train: false max_iter: 100')
    rec, quiet = Recorder(), Recorder()
    s.add_listener(rec)
    s.add_listener(quiet)
    s.remove_listener(quiet)
    s.remove_listener(quiet)          # removing twice is harmless
    s.set_action_function(lambda: SolverAction.STOP if s.iter >= 2 else SolverAction.NONE)
    s.solve()
    assert [e[0] for e in rec.events] == ['start', 'step_end', 'step_end', 'finish']
    assert rec.events[-1] == ('finish', 2)
    assert quiet.events == []


def test_a_listener_needs_only_the_methods_it_wants(tmp_path):
    s = make(tmp_path, 'display: 1 test_iter: 1 test_interval: 2 snapshot: 3')

    class Ends:
        def __init__(self):
            self.iters = []

        def on_step_end(self, solver):
            self.iters.append(solver.iter)
    ends = Ends()
    s.add_listener(ends)
    s.solve()
    assert ends.iters == [1, 2, 3, 4, 5, 6]


def test_gradients_ready_is_the_seam_before_the_update(tmp_path):
    """What on_gradients_ready does to the diffs (an allreduce, here a zeroing) is what the update uses."""
    s = make(tmp_path, 'momentum: 0.9 snapshot_after_train: false', cls=SGDSolver)
    w = s.net.params['ip'][0].data.copy()
    seen = []

    def ready():
        d = s.net.params['ip'][0].diff
        seen.append(float(np.abs(d).sum()))
        d[...] = 0
    s.add_callback(None, ready)
    s.step(3)
    assert len(seen) == 3 and all(v > 0 for v in seen)
    np.testing.assert_array_equal(s.net.params['ip'][0].data, w)
    assert not np.any(s.history[0].data)


def test_history_slots_are_allocated_in_caffes_order(tmp_path):
    class ThreeSlots(SGDSolver):
        history_slots = 3
    s = make(tmp_path, '', cls=ThreeSlots)
    params = s.net.learnable_params
    n = len(params)
    assert n == 2 and len(s.history) == 3 * n
    for i, p in enumerate(params):
        arrays = s._history(i)
        assert len(arrays) == 3
        for k, a in enumerate(arrays):
            assert a is s.history[k * n + i].xdata and a.shape == tuple(p.shape) and not a.any()
    ada = make(tmp_path, 'type: "AdaDelta" momentum: 0.95 delta: 1e-6', cls=AdaDeltaSolver)
    ada.step(2)
    assert len(ada.history) == 2 * n
    g2, u2 = ada._history(0)
    assert g2 is ada.history[0].xdata and u2 is ada.history[n].xdata and g2.any() and u2.any()


def test_solver_file_is_read_and_warned_about_once(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger='caffeine')
    path = write_solver(tmp_path, 'type: "Adam"', prefix=False)
    reads = []
    real = solver_setup.read_solver_param
    monkeypatch.setattr(solver_setup, 'read_solver_param', lambda src: reads.append(src) or real(src))
    s = Solver(path)
    assert type(s).__name__ == 'AdamSolver'
    assert reads == [path]
    assert caplog.text.count('snapshot_prefix was not specified') == 1
    assert s.param.snapshot_prefix == str(tmp_path / 'solver')
    reads.clear()
    SGDSolver(path)
    assert reads == [path]


# -- the CLI's progress bar ------------------------------------------------------------------
def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, capsys, monkeypatch):
    s = make(tmp_path, 'max_iter: 5 display: 0 snapshot_after_train: false')
    with progress_bar(s, True):
        s.solve()
    err = capsys.readouterr().err
    assert 'train:' in err and '/5 ' in err
    assert s._listeners == []
    monkeypatch.setenv('CI', '1')
    assert not progress_wanted()
    monkeypatch.delenv('CI')
    monkeypatch.delenv('CAFFEINE_NO_PROGRESS', raising=False)
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: False, raising=False)
    assert not progress_wanted()
    t = make(tmp_path, 'max_iter: 3 display: 0 snapshot_after_train: false')
    with progress_bar(t):
        t.solve()
    assert 'train:' not in capsys.readouterr().err
