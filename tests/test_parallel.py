"""Data-parallel training: 2 MPI ranks on the CPU against one process, resume, shards,
who writes, failures; the NCCL path with its communicator mocked.

The 2-rank runs use the mpich wheel's ``mpiexec`` (installed with ``pip install
'caffeine[mpi]'``, beside the Python executable) as ``mpiexec -n 2 python -m
caffeine train --solver S``.  They skip when mpi4py or that mpiexec is absent.
"""
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import caffeine
from caffeine import backend, runtime
from caffeine.parallel import comm as dcomm
from caffeine.parallel import launch
from caffeine.parallel.sync import AgreedActions, DataParallel, FlatParams
from caffeine.errors import CaffeineError
from caffeine.proto import caffe_pb2

ROOT = Path(__file__).resolve().parents[1]
ROWS = 64


def mpiexec_path():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    cand = os.path.join(sysconfig.get_path('scripts'), 'mpiexec')
    return cand if os.path.exists(cand) else shutil.which('mpiexec')


def need_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip('mpi4py is not installed (pip install caffeine[mpi])')
    if mpiexec_path() is None:
        pytest.skip('no mpiexec (pip install caffeine[mpi] brings MPICH\'s)')


def env():
    e = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS='1', OMP_NUM_THREADS='1',
             CAFFEINE_NO_PROGRESS='1')
    for v in dcomm.MPI_SIZE_VARIABLES:      # a test run under mpiexec must not leak its own ranks
        e.pop(v, None)
    return e


NET = '''name: "tiny"
layer { name: "d" type: "%(data)s" top: "data" top: "label" %(source)s }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "t" type: "TanH" bottom: "c" top: "c" }
layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "p" top: "ip" inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
%(extra)s
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def write_case(d, batch, solver='', data='HDF5Data', shuffle=False, extra_layers=''):
    """Data (64 rows of 1x8x8, 4 classes), a TanH + average-pooling net with batch ``batch``, a solver."""
    d = Path(d)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, ROWS)
    if data == 'HDF5Data' and not (d / 'd.h5').exists():
        import h5py
        with h5py.File(d / 'd.h5', 'w') as f:
            f['data'] = x
            f['label'] = y.astype(np.float32)
        (d / 'list.txt').write_text('d.h5\n')
    if data == 'Data' and not (d / 'lmdb').exists():
        from caffeine.data.datum import array_to_datum
        from caffeine.data.db import DBWriter
        with DBWriter(str(d / 'lmdb'), 'lmdb') as w:
            for i in range(ROWS):
                w.put(b'%08d' % i, array_to_datum(x[i], y[i]).SerializeToString())
    if data == 'HDF5Data':
        source = 'hdf5_data_param { source: "list.txt" batch_size: %d shuffle: %s }' % (
            batch, 'true' if shuffle else 'false')
    else:
        source = 'data_param { source: "lmdb" backend: LMDB batch_size: %d }' % batch
    (d / 'net.prototxt').write_text(NET % dict(data=data, source=source, extra=extra_layers))
    (d / 'solver.prototxt').write_text(
        'net: "net.prototxt"\nlr_policy: "fixed"\nmax_iter: 30\ndisplay: 10\nrandom_seed: 7\n'
        'snapshot_prefix: "out/s"\n' + ('' if 'base_lr' in solver else 'base_lr: 0.05\n') + solver + '\n')
    (d / 'out').mkdir(exist_ok=True)


def train(d, ranks=1, args=(), timeout=120):
    cmd = [sys.executable, '-m', 'caffeine', 'train', '--solver', 'solver.prototxt'] + list(args)
    if ranks > 1:
        cmd = [mpiexec_path(), '-n', str(ranks)] + cmd
    return subprocess.run(cmd, cwd=str(d), env=env(), capture_output=True, text=True, timeout=timeout)


def weights(path):
    n = caffe_pb2.NetParameter()
    n.ParseFromString(Path(path).read_bytes())
    return {(layer.name, i): np.array(b.data, dtype=np.float32) for layer in n.layer for i, b in enumerate(layer.blobs)}


def ok(res):
    assert res.returncode == 0, res.stderr[-3000:]
    return res


SOLVERS = {
    'SGD': 'momentum: 0.9',
    'Nesterov': 'momentum: 0.9',
    'AdaGrad': 'delta: 1e-6',
    'RMSProp': 'rms_decay: 0.9',
    'AdaDelta': 'momentum: 0.9\ndelta: 1e-6\nbase_lr: 1.0',
    'Adam': 'momentum: 0.9\nmomentum2: 0.999\nbase_lr: 0.01',
}


def compare_one_and_two_ranks(tmp_path, solver, data='HDF5Data', batch=4):
    one, two = tmp_path / 'one', tmp_path / 'two'
    one.mkdir()
    two.mkdir()
    write_case(one, 2 * batch, solver, data)
    write_case(two, batch, solver, data)
    ok(train(one))
    ok(train(two, ranks=2))
    a, b = weights(one / 'out/s_iter_30.caffemodel'), weights(two / 'out/s_iter_30.caffemodel')
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    moved = min(float(np.abs(a[k] - b0).max()) for k, b0 in weights_at_start(one).items())
    assert moved > 1e-3          # the run trained: the weights moved far more than the tolerance
    assert worst < 2e-5, worst   # float rounding: the sums run in another order
    return worst


def weights_at_start(d):
    """The initial weights of the one-rank case (the same seed as rank 0 of the two-rank case)."""
    caffeine.set_mode_cpu()
    cwd = os.getcwd()
    os.chdir(d)
    try:
        s = caffeine.get_solver('solver.prototxt')
        with s:
            return {(n, i): b.data.ravel().copy() for n, bl in s.net.params.items() for i, b in enumerate(bl)}
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize('kind', sorted(SOLVERS))
def test_two_ranks_train_as_one_with_twice_the_batch(kind, tmp_path):
    need_mpi()
    compare_one_and_two_ranks(tmp_path, 'type: "%s"\n%s' % (kind, SOLVERS[kind]))


@pytest.mark.parametrize('layer_wise', ['true', 'false'])
def test_two_ranks_iter_size(layer_wise, tmp_path):
    need_mpi()
    compare_one_and_two_ranks(tmp_path, 'momentum: 0.9\niter_size: 3\nlayer_wise_reduce: %s' % layer_wise)


def test_two_ranks_lmdb_data_layer(tmp_path):
    need_mpi()
    compare_one_and_two_ranks(tmp_path, 'momentum: 0.9', data='Data')


def test_two_rank_resume_equals_uninterrupted_run(tmp_path):
    """Shuffled HDF5 rows: each rank has its own order and random stream, all restored."""
    need_mpi()
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    for d in (full, cut):
        d.mkdir()
        write_case(d, 4, 'momentum: 0.9\nsnapshot: 10', shuffle=True)
    ok(train(full, ranks=2))
    (cut / 'solver.prototxt').write_text((cut / 'solver.prototxt').read_text().replace('max_iter: 30', 'max_iter: 10'))
    ok(train(cut, ranks=2))
    (cut / 'solver.prototxt').write_text((cut / 'solver.prototxt').read_text().replace('max_iter: 10', 'max_iter: 30'))
    ok(train(cut, ranks=2, args=['--snapshot', 'out/s_iter_10.solverstate']))
    a, b = weights(full / 'out/s_iter_30.caffemodel'), weights(cut / 'out/s_iter_30.caffemodel')
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # the sidecar holds both ranks' data positions, and they differ
    import json
    side = json.loads((full / 'out/s_iter_10.solverstate.caffeine.json').read_text())
    assert len(side['ranks']) == 2
    assert side['ranks'][0]['layers']['train/d'] != side['ranks'][1]['layers']['train/d']


def test_only_rank_0_writes_and_logs(tmp_path):
    need_mpi()
    pytest.importorskip('tensorboard', reason='the tensorboard extra is not installed')
    write_case(tmp_path, 4, 'snapshot: 15\ntest_iter: 2\ntest_interval: 15')
    lines = (tmp_path / 'net.prototxt').read_text().split('\n')
    data = lines[1]
    lines[1:2] = [data.replace('top: "label" ', 'top: "label" include { phase: TRAIN } '),
                  data.replace('"d"', '"dt"').replace('top: "label" ', 'top: "label" include { phase: TEST } ')]
    (tmp_path / 'net.prototxt').write_text('\n'.join(lines))
    res = ok(train(tmp_path, ranks=2, args=['--tensorboard', 'tb']))
    assert len(os.listdir(tmp_path / 'tb')) == 1 and 'tfevents' in os.listdir(tmp_path / 'tb')[0]
    assert sorted(os.listdir(tmp_path / 'out')) == sorted(
        's_iter_%d.%s' % (i, ext) for i in (15, 30)
        for ext in ('caffemodel', 'solverstate', 'solverstate.caffeine.json'))
    assert sorted(os.listdir(tmp_path)) == ['d.h5', 'list.txt', 'net.prototxt', 'out', 'solver.prototxt', 'tb']
    assert res.stderr.count('Optimization Done.') == 1
    assert res.stderr.count('Testing net (#0)') == 3     # iterations 0, 15, 30, on rank 0 alone
    assert 'Data-parallel training on 2 ranks (MPI)' in res.stderr


FAIL_LAYER = '''import os, signal, caffeine

class Fail(caffeine.Layer):
    """Rank 1 at its 5th forward: sends itself SIGKILL, SIGINT or SIGHUP (param_str), or raises."""
    def setup(self, bottom, top):
        self.n = 0
    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)
    def forward(self, bottom, top):
        self.n += 1
        top[0].data[...] = bottom[0].data
        if caffeine.solver_rank() == 1 and self.n == 5:
            if self.param_str == 'kill':
                os.kill(os.getpid(), signal.SIGKILL)
            if self.param_str in ('SIGINT', 'SIGHUP'):
                os.kill(os.getpid(), getattr(signal, self.param_str))
                return
            raise ValueError('bad record in rank 1')
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


def job_with_fail_layer(tmp_path, how, max_iter=1000):
    """The tiny case with the Fail layer above 'ip'; returns the finished mpiexec -n 2 run."""
    (tmp_path / 'faillayer.py').write_text(FAIL_LAYER)
    write_case(tmp_path, 4, extra_layers=(
        'layer { name: "f" type: "Python" bottom: "ip" top: "ipf" python_param { module: "faillayer" '
        'layer: "Fail" param_str: "%s" } }' % how))
    net = (tmp_path / 'net.prototxt').read_text().replace('bottom: "ip" bottom: "label"', 'bottom: "ipf" bottom: "label"')
    (tmp_path / 'net.prototxt').write_text(net)
    solver = (tmp_path / 'solver.prototxt').read_text()
    (tmp_path / 'solver.prototxt').write_text(solver.replace('max_iter: 30', 'max_iter: %d' % max_iter))
    e = env()
    e['PYTHONPATH'] = str(ROOT) + os.pathsep + str(tmp_path)
    cmd = [mpiexec_path(), '-n', '2', sys.executable, '-m', 'caffeine', 'train', '--solver', 'solver.prototxt']
    # bounded: the job must end by itself, long before this limit
    return subprocess.run(cmd, cwd=str(tmp_path), env=e, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('how', ['raise', 'kill'])
def test_a_failing_rank_ends_the_job(how, tmp_path):
    need_mpi()
    res = job_with_fail_layer(tmp_path, how)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-2000:]
    assert 'Optimization Done.' not in out
    if how == 'raise':
        assert 'caffeine: error: rank 1 of 2: ' in res.stderr and 'bad record in rank 1' in res.stderr, out[-2000:]
    else:
        assert 'signal 9' in out or 'KILLED' in out.upper(), out[-2000:]


def test_a_signal_to_one_rank_acts_on_the_whole_job(tmp_path):
    """SIGHUP (snapshot) and SIGINT (stop) reach rank 1 alone; every rank acts on them."""
    need_mpi()
    hup, stop = tmp_path / 'hup', tmp_path / 'int'
    hup.mkdir()
    stop.mkdir()
    res = ok(job_with_fail_layer(hup, 'SIGHUP', max_iter=8))
    assert sorted(os.listdir(hup / 'out')) == ['s_iter_%d.%s' % (i, ext) for i in (5, 8)
                                               for ext in ('caffemodel', 'solverstate', 'solverstate.caffeine.json')]
    assert 'Optimization Done.' in res.stderr
    res = ok(job_with_fail_layer(stop, 'SIGINT'))          # max_iter 1000: stops at iteration 5
    assert 'Optimization stopped early.' in res.stderr
    assert sorted(os.listdir(stop / 'out')) == ['s_iter_5.%s' % ext for ext in
                                                ('caffemodel', 'solverstate', 'solverstate.caffeine.json')]


# -- in one process: shards, flat buffers, the reduction with a mocked communicator ---------
@pytest.fixture
def ranks():
    """Set solver count and rank for a test; restores one solver after it."""
    def set_(count, rank):
        runtime.set_solver_count(count)
        runtime.set_solver_rank(rank)
    yield set_
    runtime.set_solver_count(1)
    runtime.set_solver_rank(0)


def _read_labels(d, ranks, count, rank, data, batches):
    ranks(count, rank)
    caffeine.set_random_seed(1)
    net = caffeine.Net(str(d / 'net.prototxt'), caffeine.TRAIN)
    with net:
        out = []
        for _ in range(batches):
            net.forward(end='d')
            out.append(net.blobs['data'].data[:, 0, 0, 0].copy())
        return np.concatenate(out)


@pytest.mark.parametrize('data', ['HDF5Data', 'Data'])
def test_shards_are_disjoint_and_cover_each_epoch(data, tmp_path, ranks, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_case(tmp_path, 5, data=data)    # 5 does not divide the 32 rows of a rank's epoch
    alone = _read_labels(tmp_path, ranks, 1, 0, data, 2 * ROWS // 5 + 1)
    shards = [_read_labels(tmp_path, ranks, 3, r, data, 2 * ROWS // 15 + 1) for r in range(3)]
    first = alone[:ROWS]
    assert len(set(first.tolist())) == ROWS         # the values identify the rows
    pos = {v: i for i, v in enumerate(first.tolist())}
    seen = [[pos[v] for v in s.tolist()] for s in shards]
    # rank r's first epoch: the rows at r modulo 3 (the next epoch shifts, as Caffe's offset keeps counting)
    epoch = [rows[:len(range(r, ROWS, 3))] for r, rows in enumerate(seen)]
    for r, rows in enumerate(epoch):
        assert rows == list(range(r, ROWS, 3))
    epoch = [set(rows) for rows in epoch]
    assert not (epoch[0] & epoch[1]) and not (epoch[1] & epoch[2]) and not (epoch[0] & epoch[2])
    assert set().union(*epoch) == set(range(ROWS))


def test_image_data_warns_without_shuffle_or_skip(tmp_path, ranks, caplog):
    from PIL import Image
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'a.png')
    (tmp_path / 'list.txt').write_text('a.png 0\n')
    proto = ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { source: "%s" '
             'root_folder: "%s/" batch_size: 1 %s } }')
    for rank, opts, warns in ((1, '', True), (1, 'shuffle: true', False), (1, 'rand_skip: 1', False),
                              (0, '', False)):
        ranks(2, rank)
        caplog.clear()
        p = tmp_path / 'n.prototxt'
        p.write_text(proto % (tmp_path / 'list.txt', tmp_path, opts))
        caffeine.Net(str(p), caffeine.TRAIN).close()
        assert ('Shuffling or skipping recommended for multi-GPU' in caplog.text) == warns, (rank, opts)


class FakeComm(dcomm.Communicator):
    """Rank 0 of 2: the other rank holds ``other`` (its gradients), ``other_values`` (its weights)."""
    name = 'fake'

    def __init__(self, other):
        self.rank, self.size = 0, 2
        self.other = other
        self.calls = []

    def allreduce(self, buf):
        self.calls.append(('allreduce', buf.size))
        buf += self.other[self.offset(buf):self.offset(buf) + buf.size]

    def offset(self, buf):
        return (buf.__array_interface__['data'][0] - self.base.__array_interface__['data'][0]) // 4

    def bcast(self, buf, root=0):
        self.calls.append(('bcast', buf.size))

    def allreduce_max(self, value):
        return max(int(value), self.other_action)

    def allgather_bytes(self, payload):
        return [payload, payload]


def _tiny_solver(tmp_path, extra=''):
    write_case(tmp_path, 4, extra)
    os.chdir(tmp_path)
    return caffeine.get_solver('solver.prototxt')


def test_flat_params_are_views_of_one_buffer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _tiny_solver(tmp_path)
    with s:
        before = [p.data.copy() for p in s.net.learnable_params]
        flat = FlatParams(s.net)
        assert flat.size == sum(p.count for p in s.net.learnable_params) == 4 * 9 + 4 + 4 * 36 + 4
        for p, b, (off, n) in zip(s.net.learnable_params, before, flat.spans):
            np.testing.assert_array_equal(flat.data[off:off + n], b.ravel())
            p.diff[...] = off + 1
            assert np.all(flat.diff[off:off + n] == off + 1)
        flat.data[:] = 3
        assert all(np.all(p.data == 3) for p in s.net.learnable_params)


@pytest.mark.parametrize('layer_wise', [False, True])
def test_reduction_sums_and_scales_with_a_mocked_communicator(layer_wise, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = _tiny_solver(tmp_path, 'layer_wise_reduce: %s' % ('true' if layer_wise else 'false'))
    with s:
        total = sum(p.count for p in s.net.learnable_params)
        other = np.linspace(-1, 1, total).astype(np.float32)
        fake = FakeComm(other)
        fake.iallreduce = lambda buf: (fake.allreduce(buf), dcomm._Done())[1]
        dp = DataParallel(s, fake)
        fake.base = dp.params.diff
        mine = {}     # each layer's own gradients, before the reduction starts
        s.net.after_backward(lambda i: mine.update({i: [p.diff.copy() for p in s.net.layers[i].blobs]}))
        s.add_callback(dp)
        if layer_wise:
            s.net.after_backward(dp)
        seen = {}
        s.add_callback(None, lambda: seen.setdefault('diff', dp.params.diff.copy()))
        s.step(1)
        local = np.concatenate([d.ravel() for i in sorted(mine) for d in mine[i]])
        np.testing.assert_allclose(seen['diff'], (local + other) * np.float32(0.5), rtol=1e-6, atol=1e-7)
        calls = [c for c in fake.calls if c[0] == 'allreduce']
        if layer_wise:
            assert sorted(n for _, n in calls) == sorted([4 * 9 + 4, 4 * 36 + 4])   # one per layer with weights
        else:
            assert calls == [('allreduce', total)]


def test_layer_wise_reduce_refused_for_shared_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_case(tmp_path, 4)
    net = (tmp_path / 'net.prototxt').read_text()
    net = net.replace('num_output: 4 weight_filler { type: "xavier" } } }',
                      'num_output: 4 weight_filler { type: "xavier" } } param { name: "w" } param { name: "b" } }')
    net = net.replace('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip"',
                      'layer { name: "ip2" type: "InnerProduct" bottom: "p" top: "ip2" param { name: "w" } '
                      'param { name: "b" } inner_product_param { num_output: 4 } }\n'
                      'layer { name: "sum" type: "Eltwise" bottom: "ip" bottom: "ip2" top: "ips" }\n'
                      'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ips"')
    (tmp_path / 'net.prototxt').write_text(net)
    s = caffeine.get_solver('solver.prototxt')
    with s:
        with pytest.raises(CaffeineError, match='shares weights.*layer_wise_reduce'):
            DataParallel(s, FakeComm(None))
        s.param.layer_wise_reduce = False
        dp = DataParallel(s, FakeComm(None))      # the whole-net reduction handles shared weights
        a, b = s.net.params['ip'][0], s.net.params['ip2'][0]
        dp.params.data[:] = 2
        assert np.all(a.data == 2) and np.all(b.data == 2)


def test_agreed_actions_follow_the_strongest_request():
    fake = FakeComm(None)
    fake.other_action = 2
    requests = iter(['snapshot', 'none'])
    act = AgreedActions(DataParallel.__new__(DataParallel), lambda: next(requests))
    act.dp.comm = fake
    act.on_gradients_ready()
    assert act() == 'stop' and act() == 'none'
    fake.other_action = 0
    act.on_gradients_ready()
    assert act() == 'none'


class FakeNccl:
    """cupy.cuda.nccl's names, recording what the communicator is asked to do."""
    NCCL_FLOAT32, NCCL_INT64, NCCL_UINT8, NCCL_FLOAT64 = 7, 4, 1, 8
    NCCL_SUM, NCCL_MAX = 0, 2
    made = []

    class NcclCommunicator:
        def __init__(self, ndev, uid, rank):
            FakeNccl.made.append((ndev, uid, rank))
            self.calls = []

        def allReduce(self, send, recv, count, dtype, op, stream):
            self.calls.append(('allReduce', send, recv, count, dtype, op, stream))
            if op == FakeNccl.NCCL_MAX:     # the other rank asks for 'stop'
                a = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_int64 * count).from_address(recv))
                a[:] = np.maximum(a, 2)

        def bcast(self, buf, count, dtype, root, stream):
            self.calls.append(('bcast', buf, count, dtype, root, stream))

        def allGather(self, send, recv, count, dtype, stream):
            src = (np.ctypeslib.ctypes.c_uint8 * count).from_address(send)
            dst = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * (2 * count)).from_address(recv))
            dst[:count] = dst[count:] = np.ctypeslib.as_array(src)

        def abort(self):
            self.calls.append(('abort',))


def test_nccl_communicator_calls_with_a_mocked_nccl():
    uid = bytes(range(250, 256)) + bytes(122)
    c = dcomm.NCCLCommunicator(uid, 2, 1, nccl=FakeNccl)
    assert FakeNccl.made[-1][0] == 2 and FakeNccl.made[-1][2] == 1
    assert FakeNccl.made[-1][1][:6] == (-6, -5, -4, -3, -2, -1) and len(FakeNccl.made[-1][1]) == 128
    buf = np.zeros(10, np.float32)
    c.allreduce(buf)
    c.bcast(buf[2:], root=0)
    assert c.comm.calls[0] == ('allReduce', buf.ctypes.data, buf.ctypes.data, 10, FakeNccl.NCCL_FLOAT32,
                               FakeNccl.NCCL_SUM, 0)
    assert c.comm.calls[1] == ('bcast', buf.ctypes.data + 8, 8, FakeNccl.NCCL_FLOAT32, 0, 0)
    assert c.allreduce_max(1) == 2 and c.comm.calls[-1][5] == FakeNccl.NCCL_MAX
    assert c.allgather_bytes(b'{"a": 1}') == [b'{"a": 1}', b'{"a": 1}']
    with pytest.raises(CaffeineError, match='rank 2 is outside'):
        dcomm.NCCLCommunicator(uid, 2, 2, nccl=FakeNccl)


def test_pycaffe_nccl_surface_on_one_cpu_process(tmp_path, monkeypatch):
    """python/train.py's calls, one solver on the CPU: the reduction leaves the gradients as they are."""
    monkeypatch.chdir(tmp_path)
    for v in dcomm.MPI_SIZE_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    assert caffeine.has_nccl() is (backend.gpu_available() and caffeine.has_nccl())
    uid = caffeine.NCCL.new_uid()
    assert isinstance(uid, bytes)
    s = _tiny_solver(tmp_path, 'layer_wise_reduce: true')
    with s:
        nccl = caffeine.NCCL(s, uid)
        nccl.bcast()
        s.add_callback(nccl)
        s.net.after_backward(nccl)
        s.step(3)
        assert s.iter == 3 and runtime.multiprocess()
    caffeine.set_multiprocess(False)
    with pytest.raises(CaffeineError, match='mpiexec -n 2'):
        runtime.set_solver_count(2)
        try:
            caffeine.NCCL(s, uid)
        finally:
            runtime.set_solver_count(1)


def test_mpi_launch_needs_mpi4py_when_launched(monkeypatch):
    monkeypatch.setenv('PMI_SIZE', '4')
    assert dcomm.mpi_world_size() == 4
    monkeypatch.setitem(sys.modules, 'mpi4py', None)
    with pytest.raises(CaffeineError, match=r"4 ranks.*pip install 'caffeine\[mpi\]'"):
        dcomm.mpi_module()
    monkeypatch.setenv('PMI_SIZE', '1')
    assert dcomm.mpi_world_size() == 1 and launch.mpi_launch() is None


def test_threads_per_rank():
    assert launch.threads_per_rank(2, cpus=16) == 8
    assert launch.threads_per_rank(4, cpus=2) == 1
    assert launch.threads_per_rank(1, cpus=6) == 6


def _rank_body(rank, fail_rank):
    if rank == fail_rank:
        raise RuntimeError('no more data')
    signal.pause()          # a healthy rank would wait on its collective forever


def test_spawned_ranks_end_together_when_one_fails(capfd):
    with pytest.raises(CaffeineError, match=r'rank 1 of 2 failed \(exit status 1\); the other ranks were stopped'):
        launch.spawn(_rank_body, 2, (1,), grace=2.0)
    assert 'caffeine: error: rank 1: no more data' in capfd.readouterr().err


# -- two "machines": network namespaces joined by a veth pair ------------------------------
class Namespaces:
    """Two network namespaces joined by a veth pair, with addresses of this test's own choosing;
    removed on exit (which removes the veth pair too)."""

    def __init__(self):
        tag = os.getpid() % 100000
        self.ns = ['cfn%da' % tag, 'cfn%db' % tag]
        self.dev = ['cfv%da' % tag, 'cfv%db' % tag]
        net = 200 + tag % 50
        self.addr = ['10.213.%d.1' % net, '10.213.%d.2' % net]

    def ip(self, *args):
        subprocess.run(['ip'] + list(args), check=True, capture_output=True, text=True, timeout=20)

    def __enter__(self):
        try:
            for ns in self.ns:
                self.ip('netns', 'add', ns)
            self.ip('link', 'add', self.dev[0], 'type', 'veth', 'peer', 'name', self.dev[1])
            for ns, dev, addr in zip(self.ns, self.dev, self.addr):
                self.ip('link', 'set', dev, 'netns', ns)
                self.ip('-n', ns, 'addr', 'add', addr + '/24', 'dev', dev)
                self.ip('-n', ns, 'link', 'set', dev, 'up')
                self.ip('-n', ns, 'link', 'set', 'lo', 'up')
        except (OSError, subprocess.SubprocessError) as e:
            self.__exit__()
            why = getattr(e, 'stderr', None) or str(e)
            pytest.skip('cannot make network namespaces here (needs root and iproute2): %s' % why.strip())
        return self

    def __exit__(self, *exc):
        for ns in self.ns:
            subprocess.run(['ip', 'netns', 'del', ns], capture_output=True, timeout=20)

    def rx_bytes(self, i):
        out = subprocess.run(['ip', 'netns', 'exec', self.ns[i], 'cat',
                              '/sys/class/net/%s/statistics/rx_bytes' % self.dev[i]],
                             capture_output=True, text=True, timeout=20, check=True)
        return int(out.stdout)


def train_across_namespaces(nets, d, limit=90):
    """mpiexec in the first namespace with Hydra's manual launcher; each proxy started in its own namespace."""
    cmd = ['ip', 'netns', 'exec', nets.ns[0], mpiexec_path(), '-launcher', 'manual', '-hosts', ','.join(nets.addr),
           '-localhost', nets.addr[0], '-n', '2', '-ppn', '1',
           sys.executable, '-m', 'caffeine', 'train', '--solver', 'solver.prototxt']
    # UCX (MPICH's default netmod here) sees that both namespaces are one machine and would use
    # shared memory: allow it TCP only, as between machines
    e = dict(env(), UCX_TLS='tcp', FI_PROVIDER='tcp')
    main = subprocess.Popen(cmd, cwd=str(d), env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proxies = []
    try:
        launches = []
        for line in main.stdout:
            if line.startswith('HYDRA_LAUNCH:'):
                launches.append(line.split(':', 1)[1].split())
            if line.startswith('HYDRA_LAUNCH_END') or len(launches) == 2:
                break
        assert len(launches) == 2, 'Hydra printed no launch commands'
        for ns, launch_cmd in zip(nets.ns, launches):
            proxies.append(subprocess.Popen(['ip', 'netns', 'exec', ns] + launch_cmd, cwd=str(d), env=e,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        out, err = main.communicate(timeout=limit)
        for p in proxies:
            p.wait(timeout=20)
        return main.returncode, err
    finally:
        for p in proxies + [main]:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_two_ranks_across_a_network(tmp_path):
    """The 2 ranks as two hosts in network namespaces: the gradients cross a real TCP stack."""
    need_mpi()
    if shutil.which('ip') is None:
        pytest.skip('no iproute2 (ip) to make network namespaces')
    one, two = tmp_path / 'one', tmp_path / 'two'
    one.mkdir()
    two.mkdir()
    write_case(one, 8, 'momentum: 0.9')
    write_case(two, 4, 'momentum: 0.9')
    ok(train(one))
    with Namespaces() as nets:
        before = nets.rx_bytes(1)
        rc, err = train_across_namespaces(nets, two)
        received = nets.rx_bytes(1) - before
    assert rc == 0, err[-3000:]
    assert 'Data-parallel training on 2 ranks (MPI)' in err
    a, b = weights(one / 'out/s_iter_30.caffemodel'), weights(two / 'out/s_iter_30.caffemodel')
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 2e-5
    grad_bytes = sum(v.size for v in a.values()) * 4
    assert received > 30 * grad_bytes      # 30 reductions of the whole gradient came over the veth pair


TRAIN_PY = '''import caffeine as caffe
from mpi4py import MPI

# BVLC python/train.py's solve(), on CPU ranks of one mpiexec (no uid needed: MPI reduces)
rank, count = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
caffe.set_solver_count(count)
caffe.set_solver_rank(rank)
caffe.set_multiprocess(True)
solver = caffe.SGDSolver('solver.prototxt')
nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())
nccl.bcast()
solver.add_callback(nccl)
if solver.param.layer_wise_reduce:
    solver.net.after_backward(nccl)
solver.step(solver.param.max_iter)
if rank == 0:
    solver.net.save('out/pycaffe.caffemodel')
'''


def test_pycaffe_train_py_flow_on_two_mpi_ranks(tmp_path):
    need_mpi()
    one, two = tmp_path / 'one', tmp_path / 'two'
    one.mkdir()
    two.mkdir()
    write_case(one, 8, 'momentum: 0.9')
    write_case(two, 4, 'momentum: 0.9')
    (two / 'train_flow.py').write_text(TRAIN_PY)
    ok(train(one))
    ok(subprocess.run([mpiexec_path(), '-n', '2', sys.executable, 'train_flow.py'], cwd=str(two), env=env(),
                      capture_output=True, text=True, timeout=120))
    a, b = weights(one / 'out/s_iter_30.caffemodel'), weights(two / 'out/pycaffe.caffemodel')
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 2e-5
