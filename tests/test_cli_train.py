"""caffeine train / test / time / extract_features / device_query, as Caffe's tools/caffe."""
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import caffeine
import caffeine.solver
from caffeine import backend
from caffeine.cli import run
from caffeine.layers import conv_engine
from caffeine.proto import caffe_pb2

REPO = Path(caffeine.solver.__file__).resolve().parents[1]
NUM = r'[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)'

NET = '''
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop" type: "Dropout" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
'''

DUMMY_NET = '''
name: "dummy"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def write_solver(d, extra='', net=NET, name='solver.prototxt'):
    d = Path(d)
    (d / 'net.prototxt').write_text(net)
    defaults = {'net': '"net.prototxt"', 'base_lr': '0.05', 'momentum': '0.9', 'lr_policy': '"fixed"',
                'max_iter': '10', 'random_seed': '5', 'snapshot_prefix': '"snaps/tiny"'}
    (d / name).write_text(''.join('%s: %s\n' % kv for kv in defaults.items()
                                  if not re.search(r'\b%s:' % kv[0], extra)) + extra + '\n')
    return name


def cli(args, capsys):
    """Run the console entry point in-process: (exit status, stderr of click)."""
    with pytest.raises(SystemExit) as e:
        run(list(args))
    err = capsys.readouterr().err
    return e.value.code, err


def one_error_line(err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith('caffeine: error: '), err
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    yield tmp_path
    caffeine.set_mode_cpu()


# -- training ------------------------------------------------------------------------------
def test_train_tiny_net(in_tmp, capsys, caplog):
    write_solver(in_tmp, 'display: 2 snapshot: 5 test_iter: 2 test_interval: 5')
    rc, err = cli(['train', '-solver', 'solver.prototxt'], capsys)   # Caffe's single-dash spelling
    assert rc == 0, err
    text = caplog.text
    assert 'Use CPU.' in text and 'Starting Optimization' in text
    assert re.search(r'Iteration 8 \(%s iter/s, %ss/2 iters\), loss = %s' % (NUM, NUM, NUM), text)
    assert re.search(r'    Test net output #0: acc = %s' % NUM, text)
    assert 'Optimization Done.' in text
    for it in (5, 10):
        assert (in_tmp / 'snaps' / ('tiny_iter_%d.caffemodel' % it)).exists()
        assert (in_tmp / 'snaps' / ('tiny_iter_%d.solverstate' % it)).exists()
    assert not [f for f in os.listdir(in_tmp / 'snaps') if f.endswith('.tmp')]


def test_train_dummy_data_net(in_tmp, capsys, caplog):
    if 'DummyData' not in caffeine.layer_type_list():
        pytest.skip('DummyData layer not available yet')
    write_solver(in_tmp, 'display: 5 max_iter: 10 snapshot_after_train: false', net=DUMMY_NET)
    rc, err = cli(['train', '--solver', 'solver.prototxt'], capsys)
    assert rc == 0, err
    assert 'Optimization Done.' in caplog.text
    assert not (in_tmp / 'snaps').exists()


def test_resume_is_bitwise(in_tmp, capsys):
    write_solver(in_tmp, 'snapshot: 4 weight_decay: 0.001')
    assert cli(['train', '--solver', 'solver.prototxt'], capsys)[0] == 0
    final = (in_tmp / 'snaps' / 'tiny_iter_10.caffemodel').read_bytes()
    os.unlink(in_tmp / 'snaps' / 'tiny_iter_10.caffemodel')
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--snapshot', 'snaps/tiny_iter_4.solverstate'], capsys)
    assert rc == 0, err
    assert (in_tmp / 'snaps' / 'tiny_iter_10.caffemodel').read_bytes() == final


def test_train_hdf5_snapshots(in_tmp, capsys):
    write_solver(in_tmp, 'snapshot: 5 snapshot_format: HDF5')
    assert cli(['train', '--solver', 'solver.prototxt'], capsys)[0] == 0
    assert (in_tmp / 'snaps' / 'tiny_iter_5.caffemodel.h5').exists()
    assert (in_tmp / 'snaps' / 'tiny_iter_5.solverstate.h5').exists()
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--snapshot', 'snaps/tiny_iter_5.solverstate.h5'], capsys)
    assert rc == 0, err


def test_finetune_weights_report(in_tmp, capsys, caplog):
    write_solver(in_tmp)
    net = caffeine.Net(NET, caffeine.TRAIN)
    net.save('w.caffemodel')
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--weights', 'w.caffemodel'], capsys)
    assert rc == 0, err
    assert re.search(r'Copied weights from w\.caffemodel: 2 layer\(s\) \(ip1, ip2\)', caplog.text)


def test_train_level_and_stage(in_tmp, capsys, caplog):
    net = NET.replace('layer { name: "acc"', 'layer { name: "extra" type: "ReLU" bottom: "ip2" top: "extra" '
                      'include { stage: "x" min_level: 2 } }\nlayer { name: "acc"')
    write_solver(in_tmp, 'max_iter: 1 display: 1', net=net)
    assert cli(['train', '--solver', 'solver.prototxt'], capsys)[0] == 0
    assert 'Train net output #0: extra' not in caplog.text
    caplog.clear()
    assert cli(['train', '--solver', 'solver.prototxt', '-level', '2', '-stage', 'x'], capsys)[0] == 0
    assert 'Train net output #0: extra' in caplog.text


# -- errors: one line, non-zero status -----------------------------------------------------
def test_error_missing_solver(in_tmp, capsys):
    rc, err = cli(['train', '--solver', 'nope.prototxt'], capsys)
    assert rc == 1 and 'nope.prototxt' in one_error_line(err)
    rc, err = cli(['train'], capsys)
    assert rc == 1 and 'solver' in one_error_line(err)


def test_error_missing_net_file(in_tmp, capsys):
    (in_tmp / 's.prototxt').write_text('net: "models/none.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    rc, err = cli(['train', '--solver', 's.prototxt'], capsys)
    line = one_error_line(err)
    assert rc == 1 and 's.prototxt' in line and 'models/none.prototxt' in line


@pytest.mark.parametrize('extra, words', [
    ('type: "Fancy"', ['type', 'Fancy']),
    ('lr_policy: "zigzag"', ['lr_policy', 'zigzag']),
])
def test_error_bad_fields(extra, words, in_tmp, capsys):
    write_solver(in_tmp)
    text = (in_tmp / 'solver.prototxt').read_text().replace('lr_policy: "fixed"', '') + extra
    (in_tmp / 'solver.prototxt').write_text(text)
    rc, err = cli(['train', '--solver', 'solver.prototxt'], capsys)
    line = one_error_line(err)
    assert rc == 1 and all(w in line for w in words) and 'solver.prototxt' in line


def test_error_test_iter_without_test_net(in_tmp, capsys):
    (in_tmp / 'net.prototxt').write_text(NET)
    (in_tmp / 's.prototxt').write_text('train_net: "net.prototxt" test_iter: 10 test_interval: 10 base_lr: 0.1 '
                                       'lr_policy: "fixed"')
    rc, err = cli(['train', '--solver', 's.prototxt'], capsys)
    assert rc == 1 and 'test_iter' in one_error_line(err)


def test_error_weights_and_snapshot(in_tmp, capsys):
    write_solver(in_tmp)
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--weights', 'a', '--snapshot', 'b'], capsys)
    assert rc == 1 and 'not both' in one_error_line(err)


def test_error_weights_match_no_layer(in_tmp, capsys):
    write_solver(in_tmp)
    other = caffeine.Net(NET.replace('"ip1"', '"fc_a"').replace('"ip2"', '"fc_b"'), caffeine.TRAIN)
    other.save('other.caffemodel')
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--weights', 'other.caffemodel'], capsys)
    assert rc == 1 and 'no layer' in one_error_line(err)
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--weights', 'missing.caffemodel'], capsys)
    assert rc == 1 and 'missing.caffemodel' in one_error_line(err)


def test_error_snapshot_of_other_net(in_tmp, capsys):
    write_solver(in_tmp, 'max_iter: 2')
    assert cli(['train', '--solver', 'solver.prototxt'], capsys)[0] == 0
    write_solver(in_tmp, 'max_iter: 4', net=NET.replace('num_output: 5', 'num_output: 7'))
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--snapshot', 'snaps/tiny_iter_2.solverstate'], capsys)
    line = one_error_line(err)
    assert rc == 1 and 'different net' in line and 'tiny_iter_2.solverstate' in line


@pytest.mark.parametrize('gpu', ['0,1', 'all'])
def test_error_multi_gpu_unavailable(gpu, in_tmp, capsys):
    write_solver(in_tmp)
    if backend.device_count() > 1:
        pytest.skip('several GPUs: --gpu 0,1 trains (tools/gpu_check.sh runs it)')
    if gpu == 'all' and backend.device_count() == 1:
        pytest.skip('one GPU: "all" is one id')
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--gpu', gpu], capsys)
    line = one_error_line(err)
    assert rc == 1
    if backend.gpu_available():
        assert 'device(s) found' in line      # one GPU here: 0,1 names a second one
    else:
        assert 'CuPy' in line or 'CUDA' in line


def test_error_gpu_without_gpu(in_tmp, capsys):
    if backend.gpu_available():
        pytest.skip('a GPU is present')
    write_solver(in_tmp)
    rc, err = cli(['train', '--solver', 'solver.prototxt', '--gpu', '0'], capsys)
    assert rc == 1 and 'GPU' in one_error_line(err)


def test_solver_mode_gpu_falls_back_without_gpu(in_tmp, capsys, caplog):
    if backend.gpu_available():
        pytest.skip('a GPU is present')
    write_solver(in_tmp, 'solver_mode: GPU max_iter: 2')
    rc, err = cli(['train', '--solver', 'solver.prototxt'], capsys)
    assert rc == 0, err
    assert 'training on the CPU' in caplog.text


def test_non_finite_loss_cli(in_tmp, capsys):
    write_solver(in_tmp, 'snapshot: 1 max_iter: 50')
    text = (in_tmp / 'solver.prototxt').read_text().replace('base_lr: 0.05', 'base_lr: 1e30')
    (in_tmp / 'solver.prototxt').write_text(text)
    with np.errstate(all='ignore'):
        rc, err = cli(['train', '--solver', 'solver.prototxt'], capsys)
        line = one_error_line(err)
        assert rc == 1 and 'Iteration' in line and 'non-finite' in line
        it = int(re.search(r'Iteration (\d+)', line).group(1))
        # the snapshots before the failure are complete and finite
        from caffeine.weights import read_caffemodel, blob_proto_to_array
        last = sorted(int(re.search(r'_iter_(\d+)\.solverstate$', f).group(1))
                      for f in os.listdir('snaps') if f.endswith('.solverstate'))[-1]
        assert last <= it
        m = read_caffemodel('snaps/tiny_iter_%d.caffemodel' % last)
        assert all(np.isfinite(blob_proto_to_array(b)).all() for lyr in m.layer for b in lyr.blobs)
        rc, err = cli(['train', '--solver', 'solver.prototxt', '--allow-nan'], capsys)
        assert rc == 0, err


# -- signals (a real child process) -----------------------------------------------------------
def _start(tmp, args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''), CI='1')
    p = subprocess.Popen([sys.executable, '-m', 'caffeine', 'train', '--solver', 'solver.prototxt'] + args,
                         cwd=str(tmp), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q = queue.Queue()
    lines = []

    def reader():
        for line in p.stderr:
            lines.append(line)
            q.put(line)
        q.put(None)
    threading.Thread(target=reader, daemon=True).start()
    killer = threading.Timer(120, p.kill)
    killer.start()
    return p, q, lines, killer


def _wait_for(q, pattern, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            line = q.get(timeout=max(0.1, end - time.time()))
        except queue.Empty:
            break
        if line is None:
            break
        if re.search(pattern, line):
            return line
    raise AssertionError('no line matching %r' % pattern)


def _state_iter(path):
    st = caffe_pb2.SolverState()
    st.ParseFromString(Path(path).read_bytes())
    return st.iter


def test_sigint_stops_with_snapshot(tmp_path):
    write_solver(tmp_path, 'display: 200 max_iter: 100000000')
    p, q, lines, killer = _start(tmp_path, [])
    try:
        _wait_for(q, r'Iteration \d+ \(')
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    finally:
        killer.cancel()
        p.kill()
    time.sleep(0.1)
    err = ''.join(lines)
    assert rc == 0, err
    assert 'Optimization stopped early.' in err
    states = [f for f in os.listdir(tmp_path / 'snaps') if f.endswith('.solverstate')]
    assert len(states) == 1
    it = int(re.search(r'_iter_(\d+)\.', states[0]).group(1))
    assert _state_iter(tmp_path / 'snaps' / states[0]) == it > 0
    assert (tmp_path / 'snaps' / ('tiny_iter_%d.caffemodel' % it)).exists()
    assert not [f for f in os.listdir(tmp_path / 'snaps') if f.endswith('.tmp')]
    # never a progress bar when stderr is not a terminal
    assert '\r' not in err and 'it/s]' not in err


def test_sighup_snapshots_and_sigint_none(tmp_path):
    write_solver(tmp_path, 'display: 200 max_iter: 100000000')
    p, q, lines, killer = _start(tmp_path, ['-sigint_effect', 'none', '--sighup-effect', 'snapshot'])
    try:
        _wait_for(q, r'Iteration \d+ \(')
        p.send_signal(signal.SIGHUP)
        _wait_for(q, r'Snapshotting solver state to binary proto file')
        p.send_signal(signal.SIGINT)           # ignored
        _wait_for(q, r'Iteration \d+ \(')      # still training
        assert p.poll() is None
    finally:
        killer.cancel()
        p.kill()
        p.wait()
    states = [f for f in os.listdir(tmp_path / 'snaps') if f.endswith('.solverstate')]
    assert len(states) == 1


# -- test, time, extract_features, device_query -------------------------------------------------
def _trained_weights(d):
    net = caffeine.Net(NET, caffeine.TEST)
    net.save(str(Path(d) / 'w.caffemodel'))
    (Path(d) / 'net.prototxt').write_text(NET)
    return net


def test_test_command(in_tmp, capsys, caplog):
    _trained_weights(in_tmp)
    rc, err = cli(['test', '-model', 'net.prototxt', '-weights', 'w.caffemodel', '-iterations', '3'], capsys)
    assert rc == 0, err
    text = caplog.text
    assert 'Running for 3 iterations.' in text
    assert re.search(r'Batch 2, acc = %s' % NUM, text)
    assert re.search(r'Loss: %s' % NUM, text)
    assert re.search(r'(?m)^.*\bloss = (%s) \(\* 1 = \1 loss\)$' % NUM, text)
    rc, err = cli(['test', '--model', 'net.prototxt'], capsys)
    assert rc == 1 and 'weights' in one_error_line(err)


def test_time_command(in_tmp, capsys, caplog):
    (in_tmp / 'net.prototxt').write_text(NET)
    rc, err = cli(['time', '-model', 'net.prototxt', '-iterations', '3'], capsys)
    assert rc == 0, err
    lines = [r.getMessage() for r in caplog.records]
    text = '\n'.join(lines)
    assert 'Performing Forward' in text and re.search(r'Initial loss: %s' % NUM, text)
    assert '*** Benchmark begins ***' in text and '*** Benchmark ends ***' in text
    assert len(re.findall(r'Iteration: \d forward-backward time: %s ms\.' % NUM, text)) == 3
    for name in ('data', 'ip1', 'relu', 'drop', 'ip2', 'loss'):
        assert any(re.fullmatch(r' *%s\tforward: %s ms\.' % (name, NUM), ln) for ln in lines), name
        assert any(re.fullmatch(r' *%s\tbackward: %s ms\.' % (name, NUM), ln) for ln in lines), name
    assert any(re.fullmatch(r'      data\tforward: %s ms\.' % NUM, ln) for ln in lines)  # setw(10)
    engines = dict(re.fullmatch(r' *(\S+)\tengine: (.+)', ln).groups() for ln in lines if '\tengine: ' in ln)
    assert engines == {name: 'numpy' for name in ('data', 'label', 'ip1', 'relu', 'drop', 'ip2', 'loss')}
    for what in ('Average Forward pass', 'Average Backward pass', 'Average Forward-Backward', 'Total Time'):
        assert re.search(r'%s: %s ms\.' % (what, NUM), text), what
    # a training net keeps every blob; the memory line says so
    assert re.search(r'Memory: blobs [\d.]+ \w+ \([\d.]+ \w+ without it\), parameters [\d.]+ \w+\.', text)


def test_time_command_names_the_convolution_algorithm(in_tmp, capsys, caplog, monkeypatch):
    monkeypatch.setattr(conv_engine, 'WINOGRAD_MIN_CHANNELS', 16)
    (in_tmp / 'conv.prototxt').write_text('''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 16 dim: 8 dim: 8 } } }
layer { name: "c3" type: "Convolution" bottom: "data" top: "c3"
        convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "c5" type: "Convolution" bottom: "c3" top: "c5" convolution_param { num_output: 4 kernel_size: 5 } }
layer { name: "c1" type: "Convolution" bottom: "c5" top: "c1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "relu" type: "ReLU" bottom: "c1" top: "c1" }
''')
    rc, err = cli(['time', '--model', 'conv.prototxt', '--iterations', '1'], capsys)
    assert rc == 0, err
    lines = [r.getMessage() for r in caplog.records]
    engines = dict(re.fullmatch(r' *(\S+)\tengine: (.+)', ln).groups() for ln in lines if '\tengine: ' in ln)
    # a 3x3 stride-1 convolution of 16 channels to 16 (the threshold here) runs Winograd, its gradient to the data
    # too (the flipped convolution); a 5x5 one im2col + GEMM; a 1x1 one no columns
    assert engines['c3'] == 'numpy winograd'
    assert re.fullmatch(r'numpy im2col-(narrow|wide|chwn)', engines['c5']), engines['c5']
    assert engines['c1'] == 'numpy 1x1'
    assert engines['relu'] == engines['data'] == 'numpy'
    # the engine line comes right before each layer's forward and backward lines
    i = lines.index('        c3\tengine: numpy winograd')
    assert re.fullmatch(r'        c3\tforward: %s ms\.' % NUM, lines[i + 1])
    assert re.fullmatch(r'        c3\tbackward: %s ms\.' % NUM, lines[i + 2])


def test_time_command_plans_memory_for_a_test_net(in_tmp, capsys, caplog):
    (in_tmp / 'deploy.prototxt').write_text('''
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 64 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 64 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 64 } }
layer { name: "ip3" type: "InnerProduct" bottom: "ip2" top: "ip3" inner_product_param { num_output: 64 } }
layer { name: "ip4" type: "InnerProduct" bottom: "ip3" top: "ip4" inner_product_param { num_output: 8 } }
''')
    rc, err = cli(['time', '--model', 'deploy.prototxt', '--phase', 'TEST', '--iterations', '1'], capsys)
    assert rc == 0, err
    text = '\n'.join(r.getMessage() for r in caplog.records)
    # data, ip1..ip3 (4 x 64 floats each) and ip4 (4 x 8): ip1 and ip3 can share, ip2 cannot
    m = re.search(r'Memory: blobs ([\d.]+) KiB with the memory planner \(([\d.]+) KiB without it\)', text)
    assert m, text[-300:]
    assert float(m.group(2)) == pytest.approx((4 * 64 * 4 + 4 * 8) * 4 / 1024, abs=0.06)
    assert float(m.group(1)) == pytest.approx((3 * 4 * 64 + 4 * 8) * 4 / 1024, abs=0.06)


@pytest.mark.parametrize('db_backend', ['lmdb', 'leveldb'])
def test_extract_features(db_backend, in_tmp, capsys, caplog):
    if db_backend == 'leveldb':
        pytest.importorskip('plyvel')
    net = _trained_weights(in_tmp)
    rc, err = cli(['extract_features', 'w.caffemodel', 'net.prototxt', 'ip2,ip1', 'f_ip2,f_ip1', '3',
                   '--backend', db_backend], capsys)
    assert rc == 0, err
    assert 'Successfully extracted the features!' in caplog.text
    net.forward()
    want = {'f_ip2': net.blobs['ip2'].data, 'f_ip1': net.blobs['ip1'].data}
    for db_name, arr in want.items():
        items = _read_db(in_tmp / db_name, db_backend)
        assert [k for k, _ in items] == [b'%010d' % i for i in range(12)]
        d = caffe_pb2.Datum()
        d.ParseFromString(items[5][1])
        assert (d.channels, d.height, d.width) == (arr.shape[1], 1, 1)
        np.testing.assert_allclose(np.array(d.float_data), arr[5 % 4], rtol=1e-6)
    assert not [f for f in os.listdir(in_tmp) if '.tmp' in f]
    rc, err = cli(['extract_features', 'w.caffemodel', 'net.prototxt', 'ip2', 'f_ip2', '1'], capsys)
    assert rc == 1 and 'already exists' in one_error_line(err)
    rc, err = cli(['extract_features', 'w.caffemodel', 'net.prototxt', 'nope', 'f_x', '1'], capsys)
    assert rc == 1 and 'nope' in one_error_line(err) and not (in_tmp / 'f_x').exists()
    rc, err = cli(['extract_features', 'w.caffemodel', 'net.prototxt', 'ip1,ip2', 'f_y', '1'], capsys)
    assert rc == 1 and 'one database per blob' in one_error_line(err)


def _read_db(path, db_backend):
    if db_backend == 'lmdb':
        import lmdb
        env = lmdb.open(str(path), readonly=True, lock=False)
        with env.begin() as txn:
            items = list(txn.cursor())
        env.close()
        return items
    import plyvel
    db = plyvel.DB(str(path))
    items = list(db)
    db.close()
    return items


def test_extract_features_caffe_positional_args(in_tmp, capsys):
    _trained_weights(in_tmp)
    rc, err = cli(['extract_features', 'w.caffemodel', 'net.prototxt', 'ip2', 'f', '1', 'lmdb', 'CPU'], capsys)
    assert rc == 0, err
    assert (in_tmp / 'f' / 'data.mdb').exists()


def test_device_query_output(capsys):
    with pytest.raises(SystemExit):
        run(['device_query'])
    out = capsys.readouterr().out
    assert 'CPU:' in out
    if not backend.gpu_available():
        assert 'GPU: none' in out
    else:
        assert 'Name:' in out
