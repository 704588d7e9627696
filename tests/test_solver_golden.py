"""Every golden solver case of the real Caffe, reproduced within 1e-5 relative:
six steps straight through, and steps 4-6 after restoring Caffe's own
iteration-3 snapshot."""
import os

import pytest

import caffeine
from caffeine import testing
from caffeine.proto import caffe_pb2
from caffeine.solver import get_solver

CASES = testing.golden_cases(kind='solvers')
RTOL = 1e-5


def _need_layers():
    missing = {'Convolution', 'InnerProduct', 'ReLU', 'SoftmaxWithLoss'} - set(caffeine.layer_type_list())
    if missing:
        pytest.skip('layers not available yet: %s' % ', '.join(sorted(missing)))


def _build(case, tmp_path):
    _need_layers()
    z = testing.load_golden(case, 'solvers')
    net_file = tmp_path / 'net.prototxt'
    net_file.write_text(str(z['net_prototxt']))
    text = str(z['solver_prototxt']).replace('"NET"', '"%s"' % net_file)
    solver = get_solver(text)
    solver.param.snapshot_prefix = str(tmp_path / case)
    return z, solver


def _init(solver, z):
    for k in z.files:
        if k.startswith('init:'):
            _, layer, i = k.split(':')
            solver.net.params[layer][int(i)].data[...] = z[k]


def _step_and_check(solver, z, k, case):
    solver.net.blobs['data'].data[...] = z['data']
    solver.net.blobs['label'].data[...] = z['label']
    solver.step(1)
    want = float(z['loss:%d' % k])
    assert abs(solver.last_loss - want) <= RTOL * abs(want), '%s loss:%d %r != %r' % (case, k, solver.last_loss, want)
    for key in z.files:
        if key.startswith('step%d:' % k):
            _, layer, i = key.split(':')
            testing.assert_close(solver.net.params[layer][int(i)].data, z[key], RTOL, '%s %s' % (case, key))


def test_golden_cases_present():
    if testing.golden_dir() is None:
        pytest.skip('../shared not present')
    assert len(CASES) >= 16


@pytest.mark.parametrize('case', CASES)
def test_golden_straight(case, tmp_path):
    z, solver = _build(case, tmp_path)
    _init(solver, z)
    for k in range(1, 7):
        _step_and_check(solver, z, k, case)
    assert solver.iter == 6


@pytest.mark.parametrize('case', CASES)
def test_golden_restore_caffe_snapshot(case, tmp_path):
    z, solver = _build(case, tmp_path)
    # learned_net is a bare file name: found beside the state file
    solver.restore(str(testing.golden_dir() / 'solvers' / (case + '_iter_3.solverstate')))
    assert solver.iter == 3
    for k in range(4, 7):
        _step_and_check(solver, z, k, case)


@pytest.mark.parametrize('case', ['sgd_multistep', 'adam'])
def test_golden_restore_relative_to_cwd(case, tmp_path, monkeypatch):
    z, solver = _build(case, tmp_path)
    monkeypatch.chdir(testing.golden_dir() / 'solvers')   # as Caffe resolves learned_net
    solver.restore(case + '_iter_3.solverstate')
    for k in range(4, 7):
        _step_and_check(solver, z, k, case)


@pytest.mark.parametrize('case', CASES)
def test_golden_our_snapshot_matches_caffes(case, tmp_path):
    """The .solverstate and .caffemodel we write after step 3 carry what Caffe's do."""
    z, solver = _build(case, tmp_path)
    _init(solver, z)
    for k in range(1, 4):
        _step_and_check(solver, z, k, case)
    state_path = solver.snapshot()
    assert state_path == str(tmp_path / case) + '_iter_3.solverstate'
    ours, theirs = caffe_pb2.SolverState(), caffe_pb2.SolverState()
    ours.ParseFromString(open(state_path, 'rb').read())
    theirs.ParseFromString(open(testing.golden_dir() / 'solvers' / (case + '_iter_3.solverstate'), 'rb').read())
    assert ours.iter == theirs.iter == 3
    assert ours.current_step == theirs.current_step
    assert ours.learned_net == str(tmp_path / case) + '_iter_3.caffemodel'
    assert os.path.basename(ours.learned_net) == theirs.learned_net
    assert len(ours.history) == len(theirs.history)
    from caffeine.weights import blob_proto_to_array, read_caffemodel
    for i, (a, b) in enumerate(zip(ours.history, theirs.history)):
        assert list(a.shape.dim) == list(b.shape.dim)
        testing.assert_close(blob_proto_to_array(a), blob_proto_to_array(b), 1e-4, '%s history %d' % (case, i))
    model = read_caffemodel(ours.learned_net)
    ref = read_caffemodel(str(testing.golden_dir() / 'solvers' / (case + '_iter_3.caffemodel')))
    ours_l = {l.name: l for l in model.layer if len(l.blobs)}
    for l in ref.layer:
        if len(l.blobs):
            for i, bp in enumerate(l.blobs):
                testing.assert_close(blob_proto_to_array(ours_l[l.name].blobs[i]), blob_proto_to_array(bp),
                                     RTOL, '%s %s:%d' % (case, l.name, i))
