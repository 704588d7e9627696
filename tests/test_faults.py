"""Faults end in one clear line, and nothing earlier is lost (issue 14, part A).

Each class of fault is provoked for real where this machine allows it (a cut-short
data.mdb, binary list files, a full tmpfs, a stalling local HTTP server, writers
killed with SIGKILL) and asserted by its exact one-line message.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import caffeine
from caffeine import zoo
from caffeine.testing import run_cli as cli
from caffeine.data import tools
from caffeine.data.datum import raw_datum_bytes
from caffeine.data.db import DBWriter
from caffeine.errors import CaffeineError, DataError, SolverError, WeightsError
from caffeine.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------
def error_line(err):
    """The single `caffeine: error:` line of stderr (log lines before it are allowed), no traceback."""
    assert 'Traceback' not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith('caffeine: error: ')]
    assert len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0][len('caffeine: error: '):]


def one_line(excinfo):
    msg = str(excinfo.value)
    assert '\n' not in msg, msg
    return msg


def make_lmdb(path, n=300, shape=(1, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    with DBWriter(path, 'lmdb') as w:
        for i in range(n):
            w.put(b'%08d' % i, raw_datum_bytes(rng.integers(0, 256, shape, dtype=np.uint8), i % 10))
    return path


def listing(folder):
    return sorted(os.listdir(folder))


def data_net(source, backend='LMDB', batch=4):
    return ("name: 'd' layer { name: 'data' type: 'Data' top: 'data' top: 'label' include { phase: TEST } "
            "data_param { source: '%s' backend: %s batch_size: %d } }" % (source, backend, batch))


# -- a damaged LMDB ---------------------------------------------------------------------------
@pytest.fixture(scope='module')
def whole_lmdb(tmp_path_factory):
    return make_lmdb(str(tmp_path_factory.mktemp('lmdb') / 'whole_lmdb'))


def test_cut_short_lmdb_is_refused_by_every_reader(whole_lmdb, tmp_path, capsys):
    size = os.path.getsize(os.path.join(whole_lmdb, 'data.mdb'))
    assert size > 8 * 4096
    need = 'but its metadata needs %d (the file was cut short: copy or build it again)' % size
    short = 'shorter than its two metadata pages (the file was cut short: copy or build it again)'
    for cut, tail in [(0, 'is empty (0 bytes)'), (10, 'is 10 bytes, ' + short), (4096 + 100, 'is 4196 bytes, ' + short),
                      (8192, 'is 8192 bytes ' + need), (size // 2, 'is %d bytes %s' % (size // 2, need)),
                      (size - 1, 'is %d bytes %s' % (size - 1, need))]:
        db = tmp_path / ('cut%d_lmdb' % cut)
        shutil.copytree(whole_lmdb, db)
        os.truncate(db / 'data.mdb', cut)
        before = listing(db)
        expected = 'LMDB database %s is damaged: %s %s' % (db, db / 'data.mdb', tail)
        # caffeine data info / compute-mean
        for args in (['data', 'info', db], ['data', 'compute-mean', db, tmp_path / 'mean.binaryproto']):
            rc, out, err = cli(args, capsys)
            assert rc == 1 and error_line(err) == expected, (cut, args)
        assert not (tmp_path / 'mean.binaryproto').exists()
        # the Data layer (and so `caffeine test`, `extract_features`): the layer named once
        with pytest.raises(DataError) as e:
            caffeine.Net(data_net(db), caffeine.TEST)
        assert one_line(e) == "layer 'data' (Data): " + expected
        # nothing was written beside it (no lock.mdb), nothing changed
        assert listing(db) == before and os.path.getsize(db / 'data.mdb') == cut
    # the whole database still reads
    assert tools.db_info(whole_lmdb)['count'] == 300


def test_damaged_lmdb_pages_are_one_line(whole_lmdb, tmp_path, capsys):
    db = tmp_path / 'bad_lmdb'
    shutil.copytree(whole_lmdb, db)
    with open(db / 'data.mdb', 'r+b') as f:
        size = f.seek(0, 2)
        for page in range(3, size // 4096, 3):      # the page headers of every third data page
            f.seek(page * 4096)
            f.write(b'\xff' * 16)
    rc, out, err = cli(['data', 'compute-mean', db], capsys)
    line = error_line(err)
    assert rc == 1 and line.startswith('cannot read LMDB database %s: ' % db) and 'MDB_CORRUPTED' in line


def test_data_source_on_a_plain_file_leaves_no_lock(tmp_path):
    plain = tmp_path / 'train.txt'
    plain.write_text('a.png 0\n')
    for backend in ('LMDB', 'LEVELDB'):
        with pytest.raises(DataError) as e:
            caffeine.Net(data_net(plain, backend), caffeine.TEST)
        assert one_line(e) == "layer 'data' (Data): %s is a plain file, not an LMDB or LEVELDB database" % plain
    assert listing(tmp_path) == ['train.txt']


# -- binary files where text lists are expected -----------------------------------------------
def test_binary_list_files_are_refused_by_every_list_reader(tmp_path, capsys):
    h5py = pytest.importorskip('h5py')
    h5 = tmp_path / 'train.h5'
    with h5py.File(h5, 'w') as f:
        f['data'] = np.zeros((4, 3), np.float32)
        f['label'] = np.zeros(4, np.float32)
    png = tmp_path / 'windows.png'
    png.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)))
    blob = tmp_path / 'list.bin'
    blob.write_bytes(b'img.png 1\n\x00\x01\x02\xff\xfe')
    cases = [
        ("layer { name: 'h5' type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param { source: '%s' batch_size: 2 } }"
         % h5, "layer 'h5' (HDF5Data): HDF5 list file %s is an HDF5 file, not text: it should hold the paths of HDF5 "
         "files, one per line" % h5),
        ("layer { name: 'img' type: 'ImageData' top: 'data' top: 'label' image_data_param { source: '%s' batch_size: 2 } }"
         % blob, "layer 'img' (ImageData): list file %s is binary data, not text: it should hold one 'path label' "
         "per line" % blob),
        ("layer { name: 'win' type: 'WindowData' top: 'data' top: 'label' transform_param { crop_size: 8 } "
         "window_data_param { source: '%s' batch_size: 2 } }" % png,
         "layer 'win' (WindowData): window file %s is a PNG image, not text: it should hold R-CNN windows "
         "('# index', image path, channels, height, width, count, window lines)" % png),
    ]
    for layer, expected in cases:
        with pytest.raises(DataError) as e:
            caffeine.Net("name: 'n' " + layer, caffeine.TRAIN)
        assert one_line(e) == expected
    rc, out, err = cli(['data', 'convert-imageset', tmp_path, h5, tmp_path / 'out_lmdb'], capsys)
    assert rc == 1
    assert error_line(err) == "list file %s is an HDF5 file, not text: it should hold one 'path label' per line" % h5
    assert not (tmp_path / 'out_lmdb').exists() and not [n for n in os.listdir(tmp_path) if '.tmp' in n]


# -- a full disk -------------------------------------------------------------------------------
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs, where this machine lets the tests mount one (root with mount rights)."""
    mnt = tmp_path / 'tmpfs'
    mnt.mkdir()
    if not hasattr(os, 'geteuid') or os.geteuid() != 0:
        pytest.skip('mounting a tmpfs needs root (a simulated write error is tested instead)')
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip('cannot mount a tmpfs here (%s); a simulated write error is tested instead'
                    % (r.stderr.strip() or r.returncode))
    try:
        yield mnt
    finally:
        subprocess.run(['umount', '-l', str(mnt)], capture_output=True)


def _image_list(tmp_path, n, size):
    cv2 = pytest.importorskip('cv2')
    root = tmp_path / 'imgs'
    root.mkdir()
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        cv2.imwrite(str(root / ('%d.png' % i)), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        lines.append('%d.png %d' % (i, i % 3))
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    return root, tmp_path / 'list.txt'


def test_full_disk_while_writing_a_database(small_tmpfs, tmp_path, capsys):
    db = small_tmpfs / 'train_lmdb'
    make_lmdb(str(db), n=5, shape=(1, 4, 4))
    root, lst = _image_list(tmp_path, 30, 120)            # 30 x 43 KB raw: more than the 1 MiB disk
    rc, out, err = cli(['data', 'convert-imageset', '--overwrite', root, lst, db], capsys)
    line = error_line(err)
    assert rc == 1
    assert line.startswith('cannot write LMDB database %s: ' % db)
    assert ' (the disk is full: ' in line and line.endswith('; the existing %s is unchanged' % db)
    # the earlier database is whole, and nothing of the failed one is left
    assert tools.db_info(str(db))['count'] == 5
    assert listing(small_tmpfs) == ['train_lmdb']


def test_full_disk_names_the_file_not_its_temporary(small_tmpfs, whole_lmdb, capsys):
    out = small_tmpfs / 'mean.binaryproto'
    out.write_bytes(b'the earlier mean')
    with open(small_tmpfs / 'filler', 'wb', buffering=0) as f:        # fill the disk
        with pytest.raises(OSError) as e:
            while True:
                f.write(b'\0' * 4096)
    assert e.value.errno == errno.ENOSPC
    rc, out_text, err = cli(['data', 'compute-mean', whole_lmdb, out], capsys)
    assert rc == 1 and error_line(err) == "[Errno 28] No space left on device: '%s'" % out
    assert out.read_bytes() == b'the earlier mean'
    assert listing(small_tmpfs) == ['filler', 'mean.binaryproto']


def test_file_write_error_simulated(whole_lmdb, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'mean.binaryproto'
    out.write_bytes(b'the earlier mean')

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, 'fsync', fsync)
    rc, out_text, err = cli(['data', 'compute-mean', whole_lmdb, out], capsys)
    assert rc == 1 and error_line(err) == "[Errno 28] No space left on device: '%s'" % out
    assert out.read_bytes() == b'the earlier mean' and listing(tmp_path) == ['mean.binaryproto']


def test_database_write_error_simulated(tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: the database library failing at commit, as LMDB does on a full disk."""
    import lmdb
    db = tmp_path / 'train_lmdb'
    make_lmdb(str(db), n=5, shape=(1, 4, 4))
    root, lst = _image_list(tmp_path, 3, 8)

    def failing_commit(self):
        raise lmdb.Error('mdb_txn_commit: Input/output error')
    monkeypatch.setattr(DBWriter, '_commit', failing_commit)
    rc, out, err = cli(['data', 'convert-imageset', '--overwrite', root, lst, db], capsys)
    assert rc == 1
    assert error_line(err) == ('cannot write LMDB database %s: mdb_txn_commit: Input/output error; '
                               'the existing %s is unchanged' % (db, db))
    monkeypatch.undo()
    assert tools.db_info(str(db))['count'] == 5
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith('.')) == []


SOLVER = """
net_param {
  name: 'big'
  layer { name: 'x' type: 'DummyData' top: 'x' top: 'y'
          dummy_data_param { shape { dim: 2 dim: 100 } shape { dim: 2 }
                             data_filler { type: 'gaussian' } data_filler { type: 'constant' } } }
  layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'z'
          inner_product_param { num_output: 1000 weight_filler { type: 'gaussian' std: 0.01 } } }
  layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'z' bottom: 'y' top: 'loss' }
}
base_lr: 0.01 momentum: 0.9 lr_policy: 'fixed' max_iter: 3 snapshot: 1 display: 0
snapshot_prefix: '%s'
"""


def _train_to_full_disk(folder, capsys):
    prefix = folder / 'big'
    (folder.parent / 'solver.prototxt').write_text(SOLVER % prefix)
    rc, out, err = cli(['train', '--solver', folder.parent / 'solver.prototxt'], capsys)
    return rc, error_line(err), prefix


def test_full_disk_during_a_snapshot(small_tmpfs, capsys):
    # each snapshot is ~800 KB (400 KB of weights, 400 KB of momentum): the second does not fit
    rc, line, prefix = _train_to_full_disk(small_tmpfs, capsys)
    assert rc == 1
    assert line == ('cannot write the snapshot of iteration 2: %s_iter_2.caffemodel: No space left on device; '
                    'training stopped, the previous snapshot %s_iter_1.solverstate is intact' % (prefix, prefix))
    assert sorted(os.listdir(small_tmpfs)) == ['big_iter_1.caffemodel', 'big_iter_1.solverstate',
                                              'big_iter_1.solverstate.caffeine.json']
    s = caffeine.get_solver(str(small_tmpfs.parent / 'solver.prototxt'))
    s.restore(str(prefix) + '_iter_1.solverstate')
    assert s.iter == 1
    s.close()


def test_snapshot_write_error_simulated(tmp_path, monkeypatch, capsys):
    from caffeine import solver_state
    real = solver_state.write_state
    calls = []

    def write_state(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, state)
    monkeypatch.setattr(solver_state, 'write_state', write_state)
    (tmp_path / 'snaps').mkdir()
    rc, line, prefix = _train_to_full_disk(tmp_path / 'snaps', capsys)
    assert rc == 1
    assert line == ('cannot write the snapshot of iteration 2: %s_iter_2.solverstate: No space left on device; '
                    'training stopped, the previous snapshot %s_iter_1.solverstate is intact' % (prefix, prefix))
    # the weights of iteration 2 were written whole; no state, no sidecar, no lock, no temp of it is left
    assert sorted(os.listdir(tmp_path / 'snaps')) == ['big_iter_1.caffemodel', 'big_iter_1.solverstate',
                                                      'big_iter_1.solverstate.caffeine.json', 'big_iter_2.caffemodel']


# -- partial weights ---------------------------------------------------------------------------
MODEL = """name: 'two'
layer { name: 'data' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 3 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'x' top: 'h' inner_product_param { num_output: 4 } }
layer { name: 'relu' type: 'ReLU' bottom: 'h' top: 'h' }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'h' top: 'y' inner_product_param { num_output: 2 } }
"""


@pytest.fixture
def weights(tmp_path):
    model = tmp_path / 'two.prototxt'
    model.write_text(MODEL)
    net = caffeine.Net(str(model), caffeine.TEST)
    for blobs in net.params.values():
        for b in blobs:
            b.data[...] = np.random.default_rng(1).normal(size=b.shape)
    full = tmp_path / 'two.caffemodel'
    net.save(str(full))
    data = full.read_bytes()
    # the file cut exactly after layer ip1 (a protobuf prefix parses: nothing tells it is short)
    head = caffe_pb2.NetParameter()
    head.ParseFromString(data)
    del head.layer[2:]
    cut = len(head.SerializeToString())
    assert data[:cut] == head.SerializeToString()
    (tmp_path / 'after_ip1.caffemodel').write_bytes(data[:cut])
    (tmp_path / 'mid_blob.caffemodel').write_bytes(data[:cut + 20])
    (tmp_path / 'empty.caffemodel').write_bytes(b'')
    return model, tmp_path, net


def test_partial_weights_are_refused_in_test(weights, capsys):
    model, d, full_net = weights
    after = d / 'after_ip1.caffemodel'
    rc, out, err = cli(['test', '--model', model, '--weights', after, '--iterations', 1], capsys)
    assert rc == 1
    assert error_line(err) == ("%s: no weights for 1 layer(s) of net 'two' that have parameters: ip2 (InnerProduct) "
                               "(the file covers part of the net or was cut short; give --allow-missing-weights "
                               "to use them as initialized)" % after)
    rc, out, err = cli(['test', '--model', model, '--weights', d / 'empty.caffemodel'], capsys)
    assert rc == 1 and error_line(err) == '%s: the weights file is empty (0 bytes)' % (d / 'empty.caffemodel')
    rc, out, err = cli(['test', '--model', model, '--weights', d / 'mid_blob.caffemodel'], capsys)
    assert rc == 1 and error_line(err).startswith('%s: not a valid .caffemodel (binary NetParameter): '
                                                  % (d / 'mid_blob.caffemodel'))
    # asked for: scored, exit 0; the whole file: scored
    rc, out, err = cli(['test', '--model', model, '--weights', after, '--iterations', 1, '--allow-missing-weights'],
                       capsys)
    assert rc == 0, err
    rc, out, err = cli(['test', '--model', model, '--weights', d / 'two.caffemodel', '--iterations', 1], capsys)
    assert rc == 0, err


def test_partial_weights_in_net_constructor(weights):
    model, d, full_net = weights
    after = str(d / 'after_ip1.caffemodel')
    with pytest.raises(WeightsError) as e:
        caffeine.Net(str(model), caffeine.TEST, weights=after)
    assert one_line(e) == ("%s: no weights for 1 layer(s) of net 'two' that have parameters: ip2 (InnerProduct) "
                           "(the file covers part of the net or was cut short; pass allow_missing=True "
                           "to use them as initialized)" % after)
    net = caffeine.Net(str(model), after, caffeine.TEST, allow_missing=True)
    np.testing.assert_array_equal(net.params['ip1'][0].data, full_net.params['ip1'][0].data)
    # TRAIN (fine-tuning) keeps Caffe's behaviour: copy what matches
    caffeine.Net(str(model), caffeine.TRAIN, weights=after)
    with pytest.raises(WeightsError) as e:
        caffeine.Net(str(model), caffeine.TEST, weights=str(d / 'empty.caffemodel'))
    assert one_line(e) == '%s: the weights file is empty (0 bytes)' % (d / 'empty.caffemodel')
    # weights made for another net (net surgery: some of their layers are not in this net)
    other = MODEL.replace("'ip2'", "'ip2_new'")
    (d / 'other.prototxt').write_text(other)
    surgery = caffeine.Net(str(d / 'other.prototxt'), caffeine.TEST, weights=str(d / 'two.caffemodel'))
    np.testing.assert_array_equal(surgery.params['ip1'][0].data, full_net.params['ip1'][0].data)


# -- a stalling download mirror ------------------------------------------------------------------
@pytest.fixture
def stalling_server():
    """127.0.0.1: accepts connections, reads the request, never answers."""
    srv = socket.socket()
    srv.bind(('127.0.0.1', 0))
    srv.listen(16)
    held, stop = [], threading.Event()

    def serve():
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            held.append(conn)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield 'http://127.0.0.1:%d' % srv.getsockname()[1], held
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def test_stalling_mirror_is_bounded_and_visible(stalling_server, tmp_path, monkeypatch, caplog, capsys):
    url, held = stalling_server
    models = tmp_path / 'models'
    (models / 'tiny').mkdir(parents=True)
    (models / 'tiny' / 'readme.md').write_text(
        '---\nname: Tiny\ncaffemodel: tiny.caffemodel\ncaffemodel_url: %s/tiny.caffemodel\nlicense: none\nsha1:\n---\n'
        % url)
    monkeypatch.setenv('CAFFEINE_MODELS', str(models))
    monkeypatch.setenv('CAFFEINE_HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    for k in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(zoo, 'BACKOFF', 0.05)
    dest = tmp_path / 'home' / 'models' / 'tiny' / 'tiny.caffemodel'
    with caplog.at_level(logging.INFO, logger='caffeine'):
        with pytest.raises(zoo.ZooError) as e:
            zoo.download('tiny', progress=False, timeout=0.2, max_wait=1.0, retries=1000)
    msg = one_line(e)
    # the last wait may be cut to what is left of max_wait
    assert re.match(r'cannot download tiny\.caffemodel from %s: no answer within 0?\.[12]\d* s \(after \d+ attempts; '
                    r'gave up after \d\.\d s without data \(limit 1 s, CAFFEINE_DOWNLOAD_MAX_WAIT\); offline\? '
                    r'try --mirror URL or CAFFEINE_ZOO_MIRROR, or copy the file to %s\)$'
                    % (re.escape(url[7:]), re.escape(str(dest))), msg), msg
    retries = [r.getMessage() for r in caplog.records if 'retrying in' in r.getMessage()]
    assert retries and all('no answer within' in m for m in retries)
    assert len(held) == len(retries) + 1          # every retry was a new connection
    assert not dest.exists()
    # the same through the CLI, limits from the command line
    rc, out, err = cli(['zoo', 'download', 'tiny', '--no-progress', '--timeout', '0.2', '--max-wait', '0.5'], capsys)
    assert rc == 1 and error_line(err).startswith('cannot download tiny.caffemodel from %s: no answer within '
                                                  % url[7:])
    # the MNIST/CIFAR downloads go through the same fetcher, limits from the environment
    monkeypatch.setenv('CAFFEINE_DOWNLOAD_TIMEOUT', '0.2')
    monkeypatch.setenv('CAFFEINE_DOWNLOAD_MAX_WAIT', '0.5')
    with pytest.raises(DataError) as e:
        tools._download([url + '/t10k-labels-idx1-ubyte.gz'], str(tmp_path / 'x.gz'), 'MNIST file x.gz')
    msg = one_line(e)
    assert msg.startswith('MNIST file x.gz is missing and could not be downloaded (cannot download x.gz from ')
    assert msg.endswith('offline? copy the file to %s))' % (tmp_path / 'x.gz'))


# -- killed writers and a second training on one prefix -----------------------------------------
def _start(code, *args):
    """A Python subprocess running ``code``; returns once it printed 'ready'."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    p = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)] + [str(a) for a in args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    assert line.strip() == 'ready', p.stderr.read()
    return p


def _kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait(10)


def test_temps_of_killed_writers_are_removed_on_the_next_run(tmp_path, capsys):
    db = tmp_path / 'out_lmdb'
    # a database writer and a snapshot writer, each killed in the middle of its write
    writer = _start('''
        import sys, time
        from caffeine.data.db import DBWriter
        w = DBWriter(sys.argv[1], 'lmdb', commit_every=10)
        for i in range(50):
            w.put(b'%08d' % i, b'x' * 100)
        print('ready', flush=True)
        time.sleep(60)
        ''', db)
    snap = _start('''
        import sys, time
        from caffeine.utils import atomic_write
        with atomic_write(sys.argv[1] + '_iter_7.caffemodel') as f:
            f.write(b'half a snapshot')
            f.flush()
            print('ready', flush=True)
            time.sleep(60)
        ''', tmp_path / 'big')
    _kill(writer)
    _kill(snap)
    stale = sorted(n for n in os.listdir(tmp_path) if n.startswith('.'))
    assert stale == ['.big_iter_7.caffemodel.%d.' % snap.pid + stale[0].split('.')[-2] + '.tmp',
                     '.out_lmdb.tmp%d' % writer.pid]
    # the next write of the same database, and the next training on the same prefix
    make_lmdb(str(db), n=3, shape=(1, 2, 2))
    (tmp_path / 'solver.prototxt').write_text((SOLVER % (tmp_path / 'big')).replace('max_iter: 3', 'max_iter: 1'))
    rc, out, err = cli(['train', '--solver', tmp_path / 'solver.prototxt'], capsys)
    assert rc == 0, err
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith('.')) == []
    assert tools.db_info(str(db))['count'] == 3


def test_second_training_on_one_prefix_refuses(tmp_path, capsys):
    prefix = tmp_path / 'big'
    holder = _start('''
        import sys, time
        from caffeine.solver_state import snapshot_lock
        with snapshot_lock(sys.argv[1]):
            print('ready', flush=True)
            time.sleep(60)
        ''', prefix)
    try:
        (tmp_path / 'solver.prototxt').write_text(SOLVER % prefix)
        rc, out, err = cli(['train', '--solver', tmp_path / 'solver.prototxt'], capsys)
        assert rc == 1
        assert error_line(err) == ('snapshot_prefix %s is in use by another training (process %d holds %s.lock): '
                                   'give each training its own snapshot_prefix' % (prefix, holder.pid, prefix))
        assert not list(tmp_path.glob('big_iter_*'))
    finally:
        _kill(holder)
    # the holder died without cleaning up: its lock file is reused, and removed at the end
    assert (tmp_path / 'big.lock').exists()
    (tmp_path / 'solver.prototxt').write_text((SOLVER % prefix).replace('max_iter: 3', 'max_iter: 1'))
    rc, out, err = cli(['train', '--solver', tmp_path / 'solver.prototxt'], capsys)
    assert rc == 0, err
    assert not (tmp_path / 'big.lock').exists() and (tmp_path / 'big_iter_1.solverstate').exists()


# -- messages --------------------------------------------------------------------------------
def test_leveldb_errors_name_the_path_in_text(tmp_path, capsys):
    pytest.importorskip('plyvel')
    db = tmp_path / 'train_leveldb'
    with DBWriter(db, 'leveldb') as w:
        w.put(b'00000000', raw_datum_bytes(np.zeros((1, 2, 2), np.uint8), 0))
    holder = _start('''
        import sys, time, plyvel
        d = plyvel.DB(sys.argv[1])
        print('ready', flush=True)
        time.sleep(60)
        ''', db)
    try:
        rc, out, err = cli(['data', 'info', db], capsys)
    finally:
        _kill(holder)
    line = error_line(err)
    assert rc == 1 and line.startswith('cannot open LEVELDB database %s: IO error: lock %s/LOCK: ' % (db, db))
    assert "b'" not in line


def test_batch_shape_error_names_both_records(tmp_path):
    db = tmp_path / 'mixed_lmdb'
    with DBWriter(db, 'lmdb') as w:
        for i in range(4):
            w.put(b'%08d' % i, raw_datum_bytes(np.zeros((1, 4, 4) if i != 2 else (1, 5, 5), np.uint8), i))
    net = caffeine.Net(data_net(db, batch=4), caffeine.TEST)
    try:
        with pytest.raises(DataError) as e:
            net.forward()
    finally:
        net.close()
    assert one_line(e) == ("layer 'data' (Data): %s: key '00000002': the image is 5x5, but the batch is 4x4 "
                           "(set by its first image, %s: key '00000000'); images of several sizes need crop_size"
                           % (db, db))


def test_inner_product_over_a_zero_sized_input():
    with pytest.raises(CaffeineError) as e:
        caffeine.Net("name: 'z' layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 2 dim: 0 } } } "
                     "layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'y' "
                     "inner_product_param { num_output: 3 weight_filler { type: 'xavier' } } }", caffeine.TEST)
    assert one_line(e) == ("layer 'ip' (InnerProduct): bottom 'x' is (2, 0): it has no values from axis 1 "
                           "to connect (K = 0)")


# -- values Caffe accepted -------------------------------------------------------------------------
def test_values_caffe_accepted(tmp_path, capsys):
    solver = tmp_path / 'solver.prototxt'
    for field, value, expected in [
            ('base_lr', '-0.01', 'base_lr: must be >= 0, got -0.01 (a negative rate climbs the loss)'),
            ('max_iter', '-5', 'max_iter: must be >= 0, got -5')]:
        text = (SOLVER % (tmp_path / 'big')).replace('base_lr: 0.01', '').replace('max_iter: 3', '')
        solver.write_text(text + '%s: %s\n' % (field, value) + ('max_iter: 3\n' if field == 'base_lr' else
                                                                'base_lr: 0.01\n'))
        rc, out, err = cli(['train', '--solver', solver], capsys)
        assert rc == 1 and error_line(err) == '%s: %s' % (solver, expected)
    empty = tmp_path / 'empty.prototxt'
    empty.write_text("name: 'nothing'\n")
    for cmd in (['time', '--model', empty], ['test', '--model', empty, '--weights', tmp_path / 'w.caffemodel']):
        rc, out, err = cli(cmd, capsys)
        assert rc == 1
        assert error_line(err) == "--model %s: net 'nothing' has no layers in the %s phase: nothing to run" % (
            empty, 'TRAIN' if cmd[0] == 'time' else 'TEST')
    solver.write_text("net_param { name: 'nothing' } base_lr: 0.1 lr_policy: 'fixed' max_iter: 1\n")
    rc, out, err = cli(['train', '--solver', solver], capsys)
    assert rc == 1 and error_line(err) == ("%s: the train net 'nothing' has no layers in the TRAIN phase: "
                                           "nothing to run" % solver)
    with pytest.raises(SolverError):
        caffeine.SGDSolver(str(solver))
