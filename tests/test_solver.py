"""Solvers on a tiny net: schedules, iter_size, snapshots and resume, logs,
test nets, non-finite losses, errors and pycaffe's surface."""
import logging
import math
import os
import re

import h5py
import numpy as np
import pytest

import caffeine
from caffeine import backend
from caffeine.errors import SolverError
from caffeine.proto import caffe_pb2
from caffeine.solver import (AdamSolver, SGDSolver, Solver, SolverAction, get_solver, load_solver_param)

NET = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %(batch)d dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: %(batch)d } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: %(hidden)d weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
%(dropout)s
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
'''
DROPOUT = 'layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }'

NUM = r'[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)'


def net_text(batch=4, hidden=5, dropout=False):
    return NET % {'batch': batch, 'hidden': hidden, 'dropout': DROPOUT if dropout else ''}


def batch_for(it, batch=4, offset=0):
    rng = np.random.RandomState(1000 + it)
    data = rng.randn(64, 6).astype(np.float32)
    label = rng.randint(0, 3, 64).astype(np.float32)
    return data[offset:offset + batch], label[offset:offset + batch]


def make_solver(tmp_path, extra='', net=None, name='solver.prototxt', feed=True, cls=None, **net_kw):
    net_file = tmp_path / 'net.prototxt'
    if not net_file.exists() or net is not None or net_kw:
        net_file.write_text(net if net is not None else net_text(**net_kw))
    defaults = {'net': '"%s"' % net_file, 'base_lr': '0.1', 'lr_policy': '"fixed"', 'max_iter': '10',
                'random_seed': '11', 'snapshot_prefix': '"%s"' % (tmp_path / 'tiny')}
    text = ''.join('%s: %s\n' % kv for kv in defaults.items()
                   if not re.search(r'\b%s:' % kv[0], extra)) + extra + '\n'
    path = tmp_path / name
    path.write_text(text)
    s = (cls or get_solver)(str(path))
    if feed:
        attach_feeder(s)
    return s


def attach_feeder(s):
    b = s.net.blobs['data'].shape[0]

    def on_start():
        d, l = batch_for(s.iter, b)
        s.net.blobs['data'].data[...] = d
        s.net.blobs['label'].data[...] = l
    s.add_callback(on_start, None)


def weights(net):
    return {(l, i): b.data.copy() for l, bl in net.params.items() for i, b in enumerate(bl)}


# -- learning rate policies ------------------------------------------------------------
POLICIES = {
    'fixed': ('', lambda it, p: p.base_lr),
    'step': ('gamma: 0.5 stepsize: 3', lambda it, p: p.base_lr * p.gamma ** (it // 3)),
    'exp': ('gamma: 0.9', lambda it, p: p.base_lr * p.gamma ** it),
    'inv': ('gamma: 0.1 power: 0.75', lambda it, p: p.base_lr * (1 + p.gamma * it) ** -p.power),
    'multistep': ('gamma: 0.3 stepvalue: 2 stepvalue: 5 stepvalue: 6',
                  lambda it, p: p.base_lr * p.gamma ** sum(it >= v for v in (2, 5, 6))),
    'poly': ('power: 2', lambda it, p: p.base_lr * (1 - it / 10.0) ** p.power),
    'sigmoid': ('gamma: -0.5 stepsize: 4', lambda it, p: p.base_lr / (1 + math.exp(-p.gamma * (it - 4)))),
}


@pytest.mark.parametrize('policy', sorted(POLICIES))
def test_lr_policy_formula(policy, tmp_path):
    extra, formula = POLICIES[policy]
    s = make_solver(tmp_path, 'lr_policy: "%s" %s' % (policy, extra), feed=False)
    p = s.param
    for it in range(10):
        s.iter = it
        got = s.get_learning_rate()
        want = formula(it, p)
        assert got == pytest.approx(want, rel=1e-6), (policy, it)


def test_lr_policy_in_training_and_current_step(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'lr_policy: "multistep" gamma: 0.5 stepvalue: 1 stepvalue: 3 display: 1')
    s.step(4)
    assert s.current_step == 2
    lrs = [float(m.group(1)) for m in re.finditer(r'Iteration \d+, lr = (%s)' % NUM, caplog.text)]
    assert lrs == [0.1, 0.05, 0.05, 0.025]
    assert 'MultiStep Status: Iteration 1, step = 1' in caplog.text


# -- iter_size -------------------------------------------------------------------------
def test_iter_size_accumulates_like_one_big_batch(tmp_path):
    """iter_size 2 over two batches of 2 == iter_size 1 over the batch of 4 they make."""
    extra = 'momentum: 0.9 weight_decay: 0.01 iter_size: %d'
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    small = make_solver(tmp_path / 'a', extra % 2, batch=2, feed=False)
    big = make_solver(tmp_path / 'b', extra % 1, batch=4, feed=False)
    for (l, i), w in weights(big.net).items():
        small.net.params[l][i].data[...] = w
    sub = {'k': 0}

    def feed_small(layer_index):
        if layer_index == 0:
            d, lab = batch_for(small.iter, 2, offset=2 * (sub['k'] % 2))
            small.net.blobs['data'].data[...] = d
            small.net.blobs['label'].data[...] = lab
            sub['k'] += 1
    small.net.before_forward(feed_small)
    attach_feeder(big)
    for _ in range(3):
        small.step(1)
        big.step(1)
        assert small.last_loss == pytest.approx(big.last_loss, rel=1e-5)
    for key, w in weights(big.net).items():
        np.testing.assert_allclose(small.net.params[key[0]][key[1]].data, w, rtol=1e-5, atol=1e-6)


# -- snapshots and restore ------------------------------------------------------------------
@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
@pytest.mark.parametrize('stype', ['SGD', 'Adam'])
def test_snapshot_restore_round_trip(fmt, stype, tmp_path):
    extra = 'type: "%s" momentum: 0.9 snapshot_format: %s lr_policy: "step" gamma: 0.5 stepsize: 2' % (stype, fmt)
    s = make_solver(tmp_path, extra)
    s.step(3)
    state = s.snapshot()
    ext = '.h5' if fmt == 'HDF5' else ''
    assert state == str(tmp_path / 'tiny_iter_3.solverstate') + ext
    model = str(tmp_path / 'tiny_iter_3.caffemodel') + ext
    assert os.path.exists(model) and os.path.exists(state)
    assert sorted(os.listdir(tmp_path)) == sorted(['net.prototxt', 'solver.prototxt', os.path.basename(model),
                                                   os.path.basename(state),
                                                   os.path.basename(state) + '.caffeine.json'])
    n_hist = 4 if stype == 'SGD' else 8
    if fmt == 'HDF5':
        with h5py.File(state, 'r') as h:
            assert int(h['iter'][()]) == 3 and h['iter'].dtype == np.int32 and h['iter'].shape == ()
            assert int(h['current_step'][()]) == 1
            assert h['learned_net'][()].rstrip(b'\0').decode() == model
            assert sorted(h['history'], key=int) == [str(i) for i in range(n_hist)]
            np.testing.assert_array_equal(h['history/0'][()], s.history[0].data)
        with h5py.File(model, 'r') as h:
            np.testing.assert_array_equal(h['data/ip1/0'][()], s.net.params['ip1'][0].data)
    else:
        st = caffe_pb2.SolverState()
        st.ParseFromString(open(state, 'rb').read())
        assert (st.iter, st.learned_net, st.current_step, len(st.history)) == (3, model, 1, n_hist)
    t = make_solver(tmp_path, extra)
    t.restore(state)
    assert (t.iter, t.current_step) == (3, 1)
    for a, b in zip(s.history, t.history):
        np.testing.assert_array_equal(a.data, b.data)
    for key, w in weights(s.net).items():
        np.testing.assert_array_equal(t.net.params[key[0]][key[1]].data, w)
    s.step(2)
    t.step(2)
    for key, w in weights(s.net).items():
        np.testing.assert_array_equal(t.net.params[key[0]][key[1]].data, w)


@pytest.mark.parametrize('fmt', ['BINARYPROTO', 'HDF5'])
def test_bitwise_resume_with_dropout(fmt, tmp_path):
    extra = 'momentum: 0.9 weight_decay: 0.001 max_iter: 8 snapshot: 4 snapshot_format: %s' % fmt
    a = make_solver(tmp_path, extra, dropout=True)
    a.solve()
    straight = weights(a.net)
    ext = '.h5' if fmt == 'HDF5' else ''
    state = str(tmp_path / 'tiny_iter_4.solverstate') + ext
    b = make_solver(tmp_path, extra, dropout=True)
    b.solve(resume_file=state)
    assert b.iter == 8
    for key, w in straight.items():
        assert np.array_equal(b.net.params[key[0]][key[1]].data, w), key
    # the sidecar is what carries the dropout stream: without it the run differs
    os.unlink(state + '.caffeine.json')
    c = make_solver(tmp_path, extra, dropout=True)
    c.solve(resume_file=state)
    assert any(not np.array_equal(c.net.params[k[0]][k[1]].data, w) for k, w in straight.items())


def test_snapshot_prefix_defaults_like_caffe(tmp_path):
    (tmp_path / 'net.prototxt').write_text(net_text())
    (tmp_path / 'my_solver.prototxt').write_text('net: "%s" base_lr: 0.1 lr_policy: "fixed"' % (tmp_path / 'net.prototxt'))
    p, _ = load_solver_param(str(tmp_path / 'my_solver.prototxt'))
    assert p.snapshot_prefix == str(tmp_path / 'my_solver')
    (tmp_path / 'snaps').mkdir()
    (tmp_path / 'd_solver.prototxt').write_text('net: "x" base_lr: 0.1 lr_policy: "fixed" snapshot_prefix: "%s"'
                                                % (tmp_path / 'snaps'))
    p, _ = load_solver_param(str(tmp_path / 'd_solver.prototxt'))
    assert p.snapshot_prefix == str(tmp_path / 'snaps' / 'd_solver')


def test_snapshot_diff(tmp_path):
    s = make_solver(tmp_path, 'snapshot_diff: true')
    s.step(1)
    s.snapshot()
    from caffeine.weights import read_caffemodel
    m = read_caffemodel(str(tmp_path / 'tiny_iter_1.caffemodel'))
    ip1 = [l for l in m.layer if l.name == 'ip1'][0]
    assert len(ip1.blobs[0].diff) == ip1.blobs[0].shape.dim[0] * ip1.blobs[0].shape.dim[1]


# -- logging --------------------------------------------------------------------------
def test_log_lines_in_caffe_format(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'display: 2 max_iter: 4 average_loss: 2 test_iter: 2 test_interval: 4 '
                              'snapshot: 4 test_compute_loss: true')
    losses = []
    s.add_callback(None, lambda: losses.append(float(s.net.blobs['loss'].data)))
    s.solve()
    lines = [r.getMessage() for r in caplog.records]
    text = '\n'.join(lines)

    def find(pattern):
        found = [l for l in lines if re.fullmatch(pattern, l)]
        assert found, 'no line matches %r in:\n%s' % (pattern, text)
        return found
    find(r'Solving tiny')
    find(r'Learning Rate Policy: fixed')
    find(r'Iteration 0, Testing net \(#0\)')
    disp = find(r'Iteration (\d+) \((%s) iter/s, (%s)s/2 iters\), loss = (%s)' % (NUM, NUM, NUM))
    assert [int(re.match(r'Iteration (\d+)', l).group(1)) for l in disp] == [0, 2]
    train_out = find(r'    Train net output #0: loss = (%s) \(\* 1 = (%s) loss\)' % (NUM, NUM))
    assert len(train_out) == 2
    find(r'Iteration 2, lr = 0\.1')
    find(r'    Test net output #0: acc = (%s)' % NUM)
    find(r'    Test net output #1: loss = (%s) \(\* 1 = (%s) loss\)' % (NUM, NUM))
    find(r'Test loss: (%s)' % NUM)
    find(r'Snapshotting to binary proto file .*tiny_iter_4\.caffemodel')
    find(r'Snapshotting solver state to binary proto file .*tiny_iter_4\.solverstate')
    find(r'Iteration 4, loss = (%s)' % NUM)
    assert lines[-1] == 'Optimization Done.'
    # average_loss 2: the loss shown at iteration 2 is the mean of iterations 1 and 2
    shown = float(re.search(r'Iteration 2 \(.*\), loss = (%s)' % NUM, text).group(1))
    assert shown == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-5)
    first = float(re.search(r'Iteration 0 \(.*\), loss = (%s)' % NUM, text).group(1))
    assert first == pytest.approx(losses[0], rel=1e-5)
    # Caffe's own log parser (tools/extra/parse_log.py) reads these lines
    assert re.search(r'Train net output #(\d+): (\S+) = ([\.\deE+-]+)', text)
    assert re.search(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)', text)
    assert re.search(r'lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)', text)


def test_no_log_without_display(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path)
    s.step(3)
    assert 'lr =' not in caplog.text and 'Train net output' not in caplog.text


# -- test nets ------------------------------------------------------------------------------
def test_test_nets_share_train_weights(tmp_path):
    s = make_solver(tmp_path, 'test_iter: 1 test_iter: 2 test_interval: 5')
    assert len(s.test_nets) == 2
    for tn in s.test_nets:
        assert tn.phase == caffeine.TEST
        for lname, blobs in s.net.params.items():
            for a, b in zip(blobs, tn.params[lname]):
                assert b.shares_data_with(a)
                assert np.shares_memory(a.data, b.data)
                assert b._diff is not a._diff
    s.step(2)
    for lname, blobs in s.net.params.items():
        np.testing.assert_array_equal(s.test_nets[0].params[lname][0].data, blobs[0].data)


def test_test_reports_mean_of_outputs(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'test_iter: 3 test_interval: 100 test_compute_loss: true')
    tn = s.test_nets[0]
    seen = []

    def feed(i):
        if i == 0:
            d, l = batch_for(50 + len(seen), 4)
            tn.blobs['data'].data[...] = d
            tn.blobs['label'].data[...] = l
    tn.before_forward(feed)
    tn.after_forward(lambda i: seen.append((float(tn.blobs['acc'].data), float(tn.blobs['loss'].data)))
                            if i == len(tn.layers) - 1 else None)
    res = dict(s.test(0))
    assert len(seen) == 3
    assert res['acc'] == pytest.approx(np.mean([a for a, _ in seen]), rel=1e-6)
    assert res['loss'] == pytest.approx(np.mean([l for _, l in seen]), rel=1e-6)
    assert re.search(r'Test loss: (%s)' % NUM, caplog.text)


def test_test_initialization_false(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'test_iter: 1 test_interval: 2 test_initialization: false')
    s.step(3)
    assert 'Iteration 0, Testing' not in caplog.text
    assert 'Iteration 2, Testing net (#0)' in caplog.text


def test_test_state_and_test_net_param(tmp_path):
    s = make_solver(tmp_path, 'test_iter: 1 test_interval: 1 test_state { stage: "val" }')
    assert list(s.test_nets[0].param.state.stage) == ['val']
    n2 = tmp_path / 'n2.prototxt'
    n2.write_text(net_text(batch=2))
    (tmp_path / 's2.prototxt').write_text(
        'train_net: "%s" test_net: "%s" test_net_param { %s } test_iter: 1 test_iter: 2 test_interval: 1 '
        'base_lr: 0.1 lr_policy: "fixed"' % (tmp_path / 'net.prototxt', n2, net_text(batch=3)))
    t = get_solver(str(tmp_path / 's2.prototxt'))
    # test_net_param first, then test_net files (Caffe's order)
    assert [tn.blobs['data'].shape[0] for tn in t.test_nets] == [3, 2]
    assert all(tn.phase == caffeine.TEST for tn in t.test_nets)


# -- non-finite losses -----------------------------------------------------------------------
@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_non_finite_weights_stop_with_the_layer_named(tmp_path):
    s = make_solver(tmp_path, 'snapshot: 1')

    def poison():
        if s.iter == 2:
            s.net.params['ip2'][0].data[0, 0] = np.inf
    s.add_callback(poison, None)
    with pytest.raises(SolverError) as e:
        s.step(5)
    msg = str(e.value)
    assert 'Iteration 2' in msg and "'ip2'" in msg and 'weights' in msg
    assert s.iter == 2
    assert os.path.exists(tmp_path / 'tiny_iter_2.solverstate')
    assert not os.path.exists(tmp_path / 'tiny_iter_3.solverstate')
    st = caffe_pb2.SolverState()
    st.ParseFromString(open(tmp_path / 'tiny_iter_2.solverstate', 'rb').read())
    assert st.iter == 2


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_non_finite_output_names_first_layer(tmp_path):
    s = make_solver(tmp_path, feed=False)
    s.net.blobs['data'].data[...] = 3e38
    s.net.blobs['label'].data[...] = 0
    with pytest.raises(SolverError) as e:
        s.step(5)
    assert re.search(r'Iteration \d', str(e.value)) and "'ip1'" in str(e.value)


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_allow_nan_continues(tmp_path, caplog):
    s = make_solver(tmp_path, feed=False)
    s.allow_nan = True
    s.net.blobs['data'].data[...] = np.nan
    s.step(3)
    assert s.iter == 3
    assert 'allow-nan' in caplog.text


# -- actions (what signals ask for) ---------------------------------------------------------
def test_action_snapshot_and_stop(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'max_iter: 100')
    asked = {2: SolverAction.SNAPSHOT, 5: SolverAction.STOP}
    s.set_action_function(lambda: asked.pop(s.iter, SolverAction.NONE))
    s.solve()
    assert s.iter == 5 and s.requested_early_exit
    assert os.path.exists(tmp_path / 'tiny_iter_2.solverstate')
    assert os.path.exists(tmp_path / 'tiny_iter_5.solverstate')   # stopped: still snapshotted
    assert 'Optimization stopped early.' in caplog.text


def test_signal_handler_maps_effects():
    import signal
    from caffeine.solver import SignalHandler
    with SignalHandler('snapshot', 'stop') as h:
        assert h.action() == 'none'
        os.kill(os.getpid(), signal.SIGINT)
        assert h.action() == 'snapshot'
        os.kill(os.getpid(), signal.SIGHUP)
        assert h.action() == 'stop'
        assert h.action() == 'none'
    with pytest.raises(caffeine.CaffeineError):
        SignalHandler('explode')


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize('extra, words', [
    ('type: "Foo"', ['type', 'Foo']),
    ('lr_policy: "cosine"', ['lr_policy', 'cosine']),
    ('regularization_type: "L3"', ['regularization_type', 'L3']),
    ('lr_policy: "step"', ['stepsize']),
    ('type: "AdaGrad" momentum: 0.9', ['momentum', 'AdaGrad']),
    ('type: "RMSProp" rms_decay: 1.5', ['rms_decay']),
    ('test_iter: 5', ['test_interval']),
    ('test_state { stage: "a" } test_state { stage: "b" } test_iter: 1 test_interval: 1', ['test_state']),
    ('train_net: "x.prototxt"', ['more than one train net']),
])
def test_solver_errors(extra, words, tmp_path):
    with pytest.raises(SolverError) as e:
        make_solver(tmp_path, extra, feed=False)
    msg = str(e.value)
    assert 'solver.prototxt' in msg
    for w in words:
        assert w in msg


def test_missing_net_file_error(tmp_path):
    (tmp_path / 's.prototxt').write_text('net: "nowhere/net.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(SolverError) as e:
        get_solver(str(tmp_path / 's.prototxt'))
    assert 's.prototxt' in str(e.value) and 'nowhere/net.prototxt' in str(e.value) and 'net' in str(e.value)


def test_test_iter_without_test_net(tmp_path):
    (tmp_path / 'n.prototxt').write_text(net_text())
    (tmp_path / 's.prototxt').write_text('train_net: "%s" base_lr: 0.1 lr_policy: "fixed" test_iter: 10 '
                                         'test_interval: 10' % (tmp_path / 'n.prototxt'))
    with pytest.raises(SolverError) as e:
        get_solver(str(tmp_path / 's.prototxt'))
    assert 'test_iter' in str(e.value) and 'no test net' in str(e.value)


def test_no_train_net(tmp_path):
    (tmp_path / 's.prototxt').write_text('base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(SolverError, match='no train net'):
        get_solver(str(tmp_path / 's.prototxt'))


def test_restore_errors(tmp_path):
    s = make_solver(tmp_path)
    s.step(1)
    state = s.snapshot()
    other = tmp_path / 'other'
    other.mkdir()
    t = make_solver(other, hidden=7)
    with pytest.raises(SolverError, match='different net'):
        t.restore(state)
    a = make_solver(other, 'type: "Adam"', hidden=5)
    with pytest.raises(SolverError, match='history'):
        a.restore(state)
    with pytest.raises(SolverError, match='no such'):
        s.restore(str(tmp_path / 'missing.solverstate'))


# -- pycaffe's surface ----------------------------------------------------------------------------
def test_python_surface(tmp_path):
    s = make_solver(tmp_path, 'type: "Adam"', feed=False)
    assert isinstance(s, AdamSolver)
    path = str(tmp_path / 'solver.prototxt')
    assert isinstance(caffeine.get_solver(path), caffeine.AdamSolver)
    assert isinstance(caffeine.Solver(path), caffeine.AdamSolver)
    sgd = caffeine.SGDSolver(path)             # the class decides, as in pycaffe
    assert type(sgd) is SGDSolver
    for name in ('NesterovSolver', 'AdaGradSolver', 'RMSPropSolver', 'AdaDeltaSolver'):
        assert issubclass(getattr(caffeine, name), Solver)
    assert isinstance(sgd.param, caffe_pb2.SolverParameter) and sgd.param.type == 'Adam'
    assert sgd.iter == 0 and sgd.test_nets == [] and isinstance(sgd.net, caffeine.Net)


def test_callbacks_object_and_apply_update(tmp_path):
    s = make_solver(tmp_path, feed=False)
    calls = []

    class CB:
        def on_start(self):
            calls.append('start')

        def on_gradients_ready(self):
            calls.append('grad')
    s.add_callback(CB())
    s.step(2)
    assert calls == ['start', 'grad', 'start', 'grad']
    # apply_update: plain SGD, no momentum or decay -> w -= lr * lr_mult * diff
    w = s.net.params['ip1'][1].data.copy()
    s.net.params['ip1'][1].diff[...] = 1.0
    s.apply_update()
    np.testing.assert_allclose(s.net.params['ip1'][1].data, w - 0.1 * 2 * 1.0, rtol=1e-6)
    assert s.iter == 2


def test_share_weights(tmp_path):
    s = make_solver(tmp_path, feed=False)
    net = caffeine.Net(str(tmp_path / 'net.prototxt'), caffeine.TEST)
    s.share_weights(net)
    assert net.params['ip1'][0].shares_data_with(s.net.params['ip1'][0])


def test_legacy_solver_type_enum(tmp_path):
    s = make_solver(tmp_path, 'solver_type: ADAM', feed=False)
    assert isinstance(s, AdamSolver) and s.param.type == 'Adam' and not s.param.HasField('solver_type')


def test_weights_field_loads(tmp_path):
    s = make_solver(tmp_path, feed=False)
    s.net.save(str(tmp_path / 'w.caffemodel'))
    t = make_solver(tmp_path, 'weights: "%s" random_seed: 99' % (tmp_path / 'w.caffemodel'), feed=False)
    np.testing.assert_array_equal(t.net.params['ip1'][0].data, s.net.params['ip1'][0].data)


def test_random_seed_repeats_fillers(tmp_path):
    a = make_solver(tmp_path, feed=False)
    b = make_solver(tmp_path, feed=False)
    np.testing.assert_array_equal(a.net.params['ip1'][0].data, b.net.params['ip1'][0].data)


def test_update_allocates_nothing(tmp_path):
    for stype in ('SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta', 'Adam'):
        mom = 'momentum: 0.9' if stype in ('SGD', 'Nesterov', 'Adam', 'AdaDelta') else ''
        s = make_solver(tmp_path, 'type: "%s" %s weight_decay: 0.01 clip_gradients: 0.5 iter_size: 2' % (stype, mom))
        s.step(1)
        hist = [h.xdata for h in s.history]
        before = backend.alloc_count
        for _ in range(3):
            s.apply_update()
        assert backend.alloc_count == before, stype
        assert all(a is h.xdata for a, h in zip(hist, s.history))


def test_l1_and_clip_arithmetic(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'weight_decay: 0.5 regularization_type: "L1" clip_gradients: 0.001', feed=False)
    p = s.net.params['ip1'][0]
    for b in s.net.learnable_params:
        b.diff[...] = 0
    p.diff[...] = 1.0
    w = p.data.copy()
    n = math.sqrt(p.count)
    s.apply_update()
    expect = w - 0.1 * (1.0 * 0.001 / n + 0.5 * np.sign(w))
    np.testing.assert_allclose(p.data, expect, rtol=1e-5, atol=1e-7)
    assert 'Gradient clipping: scaling down gradients (L2 norm' in caplog.text


def test_snapshot_prefix_must_be_writable(tmp_path):
    (tmp_path / 'blocker').write_text('a file, not a folder')
    with pytest.raises(SolverError, match='snapshot_prefix'):
        make_solver(tmp_path, 'snapshot: 5 snapshot_prefix: "%s"' % (tmp_path / 'blocker' / 'x' / 'snap'), feed=False)
    s = make_solver(tmp_path, 'snapshot: 1 snapshot_prefix: "%s"' % (tmp_path / 'new' / 'deep' / 'snap'))
    s.step(1)
    assert (tmp_path / 'new' / 'deep' / 'snap_iter_1.solverstate').exists()


def test_snapshot_after_train_false(tmp_path):
    s = make_solver(tmp_path, 'max_iter: 3 snapshot_after_train: false')
    s.solve()
    assert s.iter == 3 and not list(tmp_path.glob('*.solverstate'))
    t = make_solver(tmp_path, 'max_iter: 3')
    t.solve()
    assert (tmp_path / 'tiny_iter_3.solverstate').exists()


def test_debug_info_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='caffeine')
    s = make_solver(tmp_path, 'debug_info: true display: 2')
    s.step(2)
    text = caplog.text
    assert re.search(r'\[Forward\] Layer ip1, top blob ip1 data: %s' % NUM, text)
    assert re.search(r'\[Backward\] Layer ip2, param blob 0 diff: %s' % NUM, text)
    assert re.search(r'\[Update\] Layer ip1, param 0 data: %s; diff: %s' % (NUM, NUM), text)
    # only on display iterations
    assert text.count('[Update] Layer ip1, param 0') == 1


# -- Caffe's example solvers --------------------------------------------------------------------
def _corpus_solvers():
    from caffeine.testing import shared_dir
    s = shared_dir()
    if s is None:
        return []
    root = s / 'caffe-reference' / 'prototxt'
    return sorted(str(p.relative_to(root)) for p in root.rglob('*.prototxt') if 'base_lr' in p.read_text())


@pytest.mark.parametrize('rel', _corpus_solvers() or ['<none>'])
def test_caffe_example_solvers_are_accepted(rel, tmp_path):
    from caffeine.solver import LR_POLICIES, solver_class
    from caffeine.testing import shared_dir
    if rel == '<none>':
        pytest.skip('../shared not present')
    param, _ = load_solver_param(str(shared_dir() / 'caffe-reference' / 'prototxt' / rel))
    assert param.lr_policy in LR_POLICIES
    cls = solver_class(param.type)
    assert issubclass(cls, Solver)
    # the schedule and the sanity checks run on it (with a tiny stand-in net)
    (tmp_path / 'net.prototxt').write_text(net_text())
    p = caffe_pb2.SolverParameter()
    p.CopyFrom(param)
    for f in ('net', 'train_net', 'net_param', 'train_net_param'):
        p.ClearField(f)
    del p.test_net[:]
    del p.test_net_param[:]
    del p.test_iter[:]
    del p.test_state[:]
    p.ClearField('snapshot')
    p.net = str(tmp_path / 'net.prototxt')
    s = cls(p, source=rel)
    for it in (0, 1, 1000, max(p.max_iter - 1, 0)):
        s.iter = it
        assert s.get_learning_rate() >= 0


# -- bitwise resume with real data layers -------------------------------------------------
def _data_layer(kind, tmp_path):
    """A data layer over 10 examples of 1x4x4 that makes random choices (crop,
    mirror or shuffle) and wraps around within the run."""
    r = np.random.RandomState(5)
    images = (r.rand(10, 1, 4, 4) * 255).astype(np.uint8)
    labels = r.randint(0, 3, 10)
    if kind == 'Data':
        from caffeine.data.db import DBWriter
        from caffeine.io import array_to_datum
        w = DBWriter(str(tmp_path / 'lmdb'), 'lmdb')
        for i in range(10):
            w.put(b'%08d' % i, array_to_datum(images[i], int(labels[i])).SerializeToString())
        w.close()
        return ('layer { name: "d" type: "Data" top: "data" top: "label" '
                'transform_param { crop_size: 3 mirror: true scale: 0.01 } '
                'data_param { source: "%s" backend: LMDB batch_size: 4 } }' % (tmp_path / 'lmdb'))
    if kind == 'ImageData':
        from PIL import Image
        lines = []
        for i in range(10):
            p = tmp_path / ('im%d.png' % i)
            Image.fromarray(images[i, 0]).save(str(p))
            lines.append('%s %d' % (p, labels[i]))
        (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
        return ('layer { name: "d" type: "ImageData" top: "data" top: "label" '
                'transform_param { mirror: true scale: 0.01 } '
                'image_data_param { source: "%s" batch_size: 4 shuffle: true is_color: false } }'
                % (tmp_path / 'list.txt'))
    import h5py
    with h5py.File(str(tmp_path / 'd.h5'), 'w') as f:
        f['data'] = images.astype(np.float32) / 255
        f['label'] = labels.astype(np.float32)
    (tmp_path / 'h5list.txt').write_text(str(tmp_path / 'd.h5') + '\n')
    return ('layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "%s" batch_size: 4 shuffle: true } }' % (tmp_path / 'h5list.txt'))


@pytest.mark.parametrize('kind', ['Data', 'ImageData', 'HDF5Data'])
def test_bitwise_resume_reads_the_same_batches_from_a_data_layer(kind, tmp_path):
    net = _data_layer(kind, tmp_path) + '''
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''
    extra = 'momentum: 0.9 max_iter: 7 snapshot: 3'
    a = make_solver(tmp_path, extra, net=net, feed=False)
    with a:
        a.solve()
    straight = weights(a.net)
    state = str(tmp_path / 'tiny_iter_3.solverstate')
    b = make_solver(tmp_path, extra, feed=False)
    with b:
        b.solve(resume_file=state)
    for key, w in straight.items():
        assert np.array_equal(b.net.params[key[0]][key[1]].data, w), key
    # without the saved data position the data layer starts again at the
    # first record, as in Caffe, and the weights differ
    os.unlink(state + '.caffeine.json')
    c = make_solver(tmp_path, extra, feed=False)
    with c:
        c.solve(resume_file=state)
    assert any(not np.array_equal(c.net.params[k[0]][k[1]].data, w) for k, w in straight.items())
