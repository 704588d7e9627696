"""Solver state files and the solver's net definitions, without building a Net:
caffeine.solver_state (solverstate proto/HDF5, sidecar, layer states) and
caffeine.solver_setup (train/test net rules, parameter checks)."""
import json
import logging

import h5py
import numpy as np
import pytest

from caffeine import backend
from caffeine import solver_state as sio
from caffeine.errors import SolverError
from caffeine.proto import caffe_pb2
from caffeine.prototxt import parse_text
from caffeine.solver_setup import check_solver_param, load_solver_param, train_net_spec
from caffeine.solver_setup import eval_net_specs


def a_state(learned='snap_iter_7.caffemodel'):
    rng = np.random.RandomState(3)
    hist = [rng.randn(4, 6).astype(np.float32), rng.randn(4).astype(np.float32),
            rng.randn(3, 4).astype(np.float32), rng.randn(2).astype(np.float32)]
    return sio.SavedState(iter=7, current_step=2, learned_net=learned, history=hist)


# -- solverstate files -------------------------------------------------------------------
@pytest.mark.parametrize('ext', ['.solverstate', '.solverstate.h5'])
def test_state_round_trip_without_a_net(tmp_path, ext):
    st = a_state()
    path = str(tmp_path / ('snap_iter_7' + ext))
    sio.write_state(path, st)
    back = sio.read_state(path)
    assert (back.iter, back.current_step, back.learned_net) == (7, 2, 'snap_iter_7.caffemodel')
    assert [a.shape for a in back.history] == [(4, 6), (4,), (3, 4), (2,)]
    for a, b in zip(st.history, back.history):
        assert b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.tmp')]


def test_proto_state_is_caffes_message(tmp_path):
    st = a_state()
    path = str(tmp_path / 's.solverstate')
    sio.write_state(path, st)
    msg = caffe_pb2.SolverState()
    msg.ParseFromString(open(path, 'rb').read())
    assert (msg.iter, msg.current_step, msg.learned_net, len(msg.history)) == (7, 2, 'snap_iter_7.caffemodel', 4)
    assert list(msg.history[0].shape.dim) == [4, 6]
    np.testing.assert_array_equal(np.array(msg.history[2].data, np.float32), st.history[2].ravel())
    assert open(path, 'rb').read() == sio.state_to_proto(st).SerializeToString()


def test_hdf5_state_is_caffes_layout(tmp_path):
    path = str(tmp_path / 's.solverstate.h5')
    sio.write_state(path, a_state('w.caffemodel.h5'))
    with h5py.File(path, 'r') as h:
        assert sorted(h) == ['current_step', 'history', 'iter', 'learned_net']
        assert h['iter'].dtype == np.int32 and h['iter'].shape == () and int(h['iter'][()]) == 7
        assert int(h['current_step'][()]) == 2
        assert h['learned_net'][()] == b'w.caffemodel.h5'          # fixed length, NUL terminated
        assert h['learned_net'].dtype.itemsize == len('w.caffemodel.h5') + 1
        assert sorted(h['history'], key=int) == ['0', '1', '2', '3']


def test_caffes_legacy_4d_history_shapes_are_accepted(tmp_path):
    st = sio.SavedState(1, 0, '', [np.ones((1, 1, 4, 6), np.float32), np.ones((1, 1, 1, 4), np.float32)])
    path = str(tmp_path / 'legacy.solverstate')
    sio.write_state(path, st)
    hist = sio.read_state(path).history
    sio.check_history(path, hist, [(4, 6), (4,)], 'SGD solver on net x')
    with pytest.raises(SolverError, match=r'history blob 1 has shape \[1, 1, 1, 4\], this net needs \[5\]'):
        sio.check_history(path, hist, [(4, 6), (5,)], 'SGD solver on net x')
    with pytest.raises(SolverError, match=r'it has 2 history blobs, this Adam solver on net \'x\' needs 4'):
        sio.check_history(path, hist, [(4, 6), (4,)] * 2, "Adam solver on net 'x'")


def test_bad_state_files_are_one_line_errors(tmp_path):
    with pytest.raises(SolverError, match='no such solver state file'):
        sio.read_state(str(tmp_path / 'missing.solverstate'))
    bad = tmp_path / 'bad.solverstate'
    bad.write_bytes(b'\xff\xff\xff')
    with pytest.raises(SolverError, match='not a valid .solverstate'):
        sio.read_state(str(bad))
    h5 = str(tmp_path / 'empty.solverstate.h5')
    with h5py.File(h5, 'w') as h:
        h.create_dataset('iter', data=np.int32(1))
    with pytest.raises(SolverError, match='not a Caffe HDF5 solver state'):
        sio.read_state(h5)


def test_snapshot_filename_and_learned_net_lookup(tmp_path, monkeypatch):
    assert sio.snapshot_filename('out/lenet', 500, '.caffemodel') == 'out/lenet_iter_500.caffemodel'
    (tmp_path / 'snaps').mkdir()
    (tmp_path / 'snaps' / 'w.caffemodel').write_bytes(b'')
    state = str(tmp_path / 'snaps' / 's.solverstate')
    monkeypatch.chdir(tmp_path)
    # relative to the current directory first (Caffe), then beside the state file
    assert sio.resolve_learned_net('snaps/w.caffemodel', state) == 'snaps/w.caffemodel'
    assert sio.resolve_learned_net('elsewhere/w.caffemodel', state) == str(tmp_path / 'snaps' / 'w.caffemodel')
    with pytest.raises(SolverError, match='learned_net gone.caffemodel: no such file'):
        sio.resolve_learned_net('gone.caffemodel', state)


# -- the sidecar ---------------------------------------------------------------------------
class _Layer:
    def __init__(self, pos):
        self.pos = pos

    def get_state(self):
        return {'pos': self.pos}

    def set_state(self, st):
        self.pos = st['pos']


class _Stateless:
    """A layer with Layer's defaults: no state to save."""

    def get_state(self):
        return None

    def set_state(self, st):
        raise AssertionError('a stateless layer is handed no state')


class _Net:
    def __init__(self, **layers):
        self.layer_names = list(layers)
        self.layers = list(layers.values())


def test_sidecar_round_trip_restores_rng_and_layer_states(tmp_path):
    backend.set_random_seed(5)
    state_file = str(tmp_path / 's_iter_3.solverstate')
    nets = [('train', _Net(data=_Layer(12), ip=_Stateless())), ('test0', _Net(data=_Layer(40)))]
    assert sio.layer_states(nets) == {'train/data': {'pos': 12}, 'test0/data': {'pos': 40}}
    sio.write_sidecar(state_file, 3, sio.layer_states(nets))
    want = backend.rng().random(4)
    saved = json.loads(open(state_file + sio.SIDECAR_SUFFIX).read())
    assert (saved['caffeine_sidecar'], saved['iter'], saved['mode']) == (1, 3, backend.mode())
    backend.set_random_seed(99)
    fresh = [('train', _Net(data=_Layer(0), ip=_Stateless())), ('test0', _Net(data=_Layer(0)))]
    sio.apply_sidecar(state_file, 3, fresh)
    assert [n.layers[0].pos for _, n in fresh] == [12, 40]
    np.testing.assert_array_equal(backend.rng().random(4), want)


def test_sidecar_for_another_iteration_is_ignored(tmp_path, caplog):
    state_file = str(tmp_path / 's.solverstate')
    sio.write_sidecar(state_file, 3, {'train/data': {'pos': 1}})
    with caplog.at_level(logging.WARNING, logger='caffeine'):
        assert sio.read_sidecar(state_file, 4) is None
    assert 'it is for iteration 3, the state for 4' in caplog.text
    assert sio.read_sidecar(str(tmp_path / 'caffes.solverstate'), 4) is None   # Caffe's own: no sidecar


def test_sidecar_without_unserializable_layer_states(tmp_path, caplog):
    state_file = str(tmp_path / 's.solverstate')
    with caplog.at_level(logging.WARNING, logger='caffeine'):
        sio.write_sidecar(state_file, 1, {'train/data': object()})
    assert 'Not saving layer states' in caplog.text
    assert sio.read_sidecar(state_file, 1)['layers'] == {}


# -- the nets a solver file defines -----------------------------------------------------------
NET = 'name: "n" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }'


def solver_param(text):
    return parse_text(text, caffe_pb2.SolverParameter())


def test_train_net_spec_merges_states_in_caffes_order():
    p = solver_param('net_param { %s state { level: 2 stage: "a" } } train_state { stage: "b" }' % NET)
    net_param, state = train_net_spec(p, 'sv')
    assert net_param.name == 'n'
    assert (state.phase, state.level, list(state.stage)) == (caffe_pb2.TRAIN, 2, ['a', 'b'])


def test_train_net_exactly_one():
    with pytest.raises(SolverError, match='sv: no train net: give one of train_net_param, train_net'):
        train_net_spec(solver_param('base_lr: 0.1'), 'sv')
    with pytest.raises(SolverError, match=r'more than one train net given \(train_net_param, net_param\)'):
        train_net_spec(solver_param('net_param { %s } train_net_param { %s }' % (NET, NET)), 'sv')


def test_test_net_specs_generic_and_specific(tmp_path):
    f = tmp_path / 'other.prototxt'
    f.write_text(NET.replace('"n"', '"other"'))
    p = solver_param('net_param { %s } test_net: "%s" test_iter: 5 test_iter: 6 test_iter: 7 test_interval: 10 '
                     'test_state { stage: "s0" } test_state { stage: "s1" } test_state { stage: "s2" }'
                     % (NET, f))
    specs = eval_net_specs(p, 'sv')
    assert [(what, n.name) for what, n, _ in specs] == [('test_net file: %s' % f, 'other'),
                                                        ('net_param', 'n'), ('net_param', 'n')]
    assert [(s.phase, list(s.stage)) for _, _, s in specs] == [(caffe_pb2.TEST, ['s0']), (caffe_pb2.TEST, ['s1']),
                                                               (caffe_pb2.TEST, ['s2'])]


@pytest.mark.parametrize('extra, message', [
    ('test_iter: 5', 'sv: test_iter: given, but there is no test net'),
    ('test_net_param { %s } test_net_param { %s } test_iter: 5 test_interval: 2' % (NET, NET),
     'sv: test_iter: given 1 time\\(s\\) for 2 test nets'),
    ('net_param { %s } test_iter: 5 test_interval: 0' % NET, 'sv: test_interval: must be > 0'),
    ('net_param { %s } test_iter: 5 test_iter: 5 test_interval: 3 test_state { }' % NET,
     'sv: test_state: given 1 time\\(s\\) for 2 test nets'),
    ('net_param { %s } test_iter: -2 test_interval: 3' % NET, 'sv: test_iter: must be >= 0, got -2'),
])
def test_test_net_rules(extra, message):
    with pytest.raises(SolverError, match=message):
        eval_net_specs(solver_param(extra), 'sv')


@pytest.mark.parametrize('extra, message', [
    ('lr_policy: "cosine"', "lr_policy: unknown learning rate policy 'cosine'"),
    ('lr_policy: "step"', 'stepsize: lr_policy "step" needs stepsize > 0, got 0'),
    ('lr_policy: "fixed" iter_size: 0', 'iter_size: must be at least 1, got 0'),
    ('lr_policy: "fixed" display: -1', 'display: must be >= 0, got -1'),
])
def test_solver_param_checks(extra, message):
    with pytest.raises(SolverError, match='sv: ' + message):
        check_solver_param(solver_param(extra), 'sv')


def test_load_solver_param_defaults_snapshot_prefix_beside_the_file(tmp_path):
    path = tmp_path / 'lenet_solver.prototxt'
    path.write_text('base_lr: 0.1 lr_policy: "fixed" solver_type: ADAM')
    p, name = load_solver_param(str(path))
    assert name == str(path)
    assert p.snapshot_prefix == str(tmp_path / 'lenet_solver')
    assert p.type == 'Adam' and not p.HasField('solver_type')
