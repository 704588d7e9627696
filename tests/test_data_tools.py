"""`caffeine data` tools: convert-imageset, compute-mean, mnist, cifar10, info (library and CLI)."""
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest

import caffeine
from caffeine.testing import run_cli as cli
from caffeine.data import tools
from caffeine.data.datum import decode_image, parse_datum
from caffeine.data.db import open_db
from caffeine.proto import caffe_pb2

try:
    import plyvel
except ImportError:  # pragma: no cover
    plyvel = None

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO / 'data' / 'mnist'




def error_line(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith('caffeine: error: '), err
    return lines[0]


def records(path):
    with open_db(path) as db:
        return list(db.items())


@pytest.fixture
def image_list(tmp_path):
    from PIL import Image
    root = tmp_path / 'images'
    root.mkdir()
    rng = np.random.default_rng(8)
    arrs = {}
    lines = []
    for i in range(5):
        rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
        ext = 'png' if i % 2 == 0 else 'jpg'
        name = 'cat %d.%s' % (i, ext)
        Image.fromarray(rgb).save(root / name, quality=95)
        arrs[name] = rgb
        lines.append('%s %d' % (name, i))
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    return root, tmp_path / 'list.txt', arrs


# -- convert-imageset ------------------------------------------------------------------------
def test_convert_imageset_raw(tmp_path, image_list, capsys):
    root, lst, arrs = image_list
    rc, out, err = cli(['data', 'convert-imageset', str(root) + '/', lst, tmp_path / 'db'], capsys)
    assert rc == 0, err
    assert out.strip().startswith('convert-imageset: wrote 5 images to') and 'lmdb' in out
    recs = records(tmp_path / 'db')
    assert [k for k, _ in recs] == [b'00000000_cat 0.png', b'00000001_cat 1.jpg', b'00000002_cat 2.png',
                                    b'00000003_cat 3.jpg', b'00000004_cat 4.png']
    d = parse_datum(recs[0][1])
    assert (d.channels, d.height, d.width, d.label, d.HasField('encoded'), d.encoded) == (3, 6, 7, 0, True, False)
    np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 6, 7),
                                  arrs['cat 0.png'][:, :, ::-1].transpose(2, 0, 1))
    # byte layout as Caffe's CVMatToDatum + set_label: 1 2 3 4 5 then encoded=false
    img = arrs['cat 2.png'][:, :, ::-1].transpose(2, 0, 1)
    expected = bytes([0x08, 3, 0x10, 6, 0x18, 7, 0x22, 126]) + img.tobytes() + bytes([0x28, 2, 0x38, 0])
    assert recs[2][1] == expected


def test_convert_imageset_encoded_keeps_files(tmp_path, image_list, capsys):
    root, lst, arrs = image_list
    rc, out, err = cli(['data', 'convert-imageset', '--encoded', '--encode-type', 'png', root, lst,
                        tmp_path / 'enc'], capsys)
    assert rc == 0, err
    recs = dict(records(tmp_path / 'enc'))
    d0 = parse_datum(recs[b'00000000_cat 0.png'])
    assert d0.encoded and d0.data == (root / 'cat 0.png').read_bytes()      # the file itself (ReadFileToDatum)
    assert not d0.HasField('channels')
    d1 = parse_datum(recs[b'00000001_cat 1.jpg'])                            # a JPEG re-encoded as PNG
    assert d1.data[:8] == b'\x89PNG\r\n\x1a\n' and d1.label == 1
    # guessed from the first file's extension
    rc, out, err = cli(['data', 'convert-imageset', '--encoded', '--resize-height', '3', '--resize-width', '4',
                        '--gray', root, lst, tmp_path / 'enc2'], capsys)
    assert rc == 0, err
    d = parse_datum(records(tmp_path / 'enc2')[1][1])
    assert decode_image(d.data).shape == (1, 3, 4)


def test_convert_imageset_shuffle_check_size_leveldb(tmp_path, image_list, capsys):
    root, lst, arrs = image_list
    caffeine.set_random_seed(4)
    r = tools.convert_imageset(root, lst, tmp_path / 'sh', shuffle=True, check_size=True)
    keys = [k for k, _ in records(tmp_path / 'sh')]
    assert r['count'] == 5 and sorted(k[9:] for k in keys) == sorted(n.encode() for n in arrs)
    assert [k[:9] for k in keys] == [b'%08d_' % i for i in range(5)]
    from PIL import Image
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / 'small.png')
    with open(lst, 'a') as f:
        f.write('small.png 9\n')
    rc, out, err = cli(['data', 'convert-imageset', '--check-size', root, lst, tmp_path / 'cs'], capsys)
    assert rc == 1 and 'list.txt:6' in error_line(err) and 'check-size' in err
    assert not (tmp_path / 'cs').exists() and not [p for p in os.listdir(tmp_path) if '.tmp' in p]
    if plyvel is not None:
        rc, out, err = cli(['data', 'convert-imageset', '--backend', 'leveldb', root, lst, tmp_path / 'ldb'], capsys)
        assert rc == 0, err
        assert 'leveldb' in out
        with open_db(tmp_path / 'ldb', 'leveldb') as db:
            assert len(db) == 6


def test_convert_imageset_bad_inputs(tmp_path, image_list, capsys):
    root, lst, _ = image_list
    rc, out, err = cli(['data', 'convert-imageset', root, tmp_path / 'nolist.txt', tmp_path / 'x'], capsys)
    assert rc == 1 and 'cannot read list file' in error_line(err)
    (tmp_path / 'l2.txt').write_text('cat 0.png 0\nmissing.png 1\n')
    rc, out, err = cli(['data', 'convert-imageset', root, tmp_path / 'l2.txt', tmp_path / 'x'], capsys)
    line = error_line(err)
    assert rc == 1 and 'l2.txt:2' in line and 'missing.png' in line
    assert not (tmp_path / 'x').exists()
    rc, out, err = cli(['data', 'convert-imageset', '--skip-bad', root, tmp_path / 'l2.txt', tmp_path / 'x'], capsys)
    assert rc == 0 and '1 skipped' in out
    assert [k for k, _ in records(tmp_path / 'x')] == [b'00000000_cat 0.png']
    rc, out, err = cli(['data', 'convert-imageset', root, lst, tmp_path / 'x'], capsys)
    assert rc == 1 and 'already exists' in error_line(err)
    (tmp_path / 'l3.txt').write_text('cat 0.png zero\n')
    rc, out, err = cli(['data', 'convert-imageset', root, tmp_path / 'l3.txt', tmp_path / 'y'], capsys)
    assert rc == 1 and "l3.txt:1: label 'zero'" in error_line(err)


# -- compute-mean ------------------------------------------------------------------------------
def test_compute_mean_matches_caffe_float_sum(tmp_path, capsys):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (7, 3, 4, 5), dtype=np.uint8)
    env = lmdb.open(str(tmp_path / 'db'), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, im in enumerate(imgs):
            txn.put(b'%08d' % i, caffe_pb2.Datum(channels=3, height=4, width=5, data=im.tobytes(), label=i).SerializeToString())
    env.close()
    rc, out, err = cli(['data', 'compute-mean', tmp_path / 'db', tmp_path / 'mean.binaryproto'], capsys)
    assert rc == 0, err
    assert out.startswith('compute-mean: 7 images of 3x4x5') and 'mean_value per channel' in out
    bp = caffe_pb2.BlobProto()
    bp.ParseFromString((tmp_path / 'mean.binaryproto').read_bytes())
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 3, 4, 5) and not bp.HasField('shape')
    s = np.zeros(60, np.float32)
    for im in imgs:
        s = (s + im.ravel().astype(np.float32)).astype(np.float32)
    expect = s / np.float32(7)
    np.testing.assert_array_equal(np.array(bp.data, np.float32), expect)
    # the bytes Caffe writes: legacy dims, packed float data
    ref = caffe_pb2.BlobProto(num=1, channels=3, height=4, width=5)
    ref.data.extend(expect.tolist())
    assert (tmp_path / 'mean.binaryproto').read_bytes() == ref.SerializeToString()
    # encoded records are decoded first
    from caffeine.data.datum import encode_image
    env = lmdb.open(str(tmp_path / 'enc'), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, im in enumerate(imgs):
            txn.put(b'%d' % i, caffe_pb2.Datum(data=encode_image(im, 'png'), encoded=True).SerializeToString())
    env.close()
    r = tools.compute_mean(tmp_path / 'enc')
    np.testing.assert_array_equal(r['mean'].ravel(), expect)


def test_compute_mean_errors(tmp_path, capsys):
    rc, out, err = cli(['data', 'compute-mean', tmp_path / 'none', tmp_path / 'm.binaryproto'], capsys)
    assert rc == 1 and 'no such file' in error_line(err)
    env = lmdb.open(str(tmp_path / 'empty'), map_size=1 << 20)
    env.close()
    rc, out, err = cli(['data', 'compute-mean', tmp_path / 'empty', tmp_path / 'm.binaryproto'], capsys)
    assert rc == 1 and 'empty' in error_line(err)
    env = lmdb.open(str(tmp_path / 'mixed'), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b'a', caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4)).SerializeToString())
        txn.put(b'b', caffe_pb2.Datum(channels=1, height=3, width=2, data=bytes(6)).SerializeToString())
    env.close()
    rc, out, err = cli(['data', 'compute-mean', tmp_path / 'mixed', tmp_path / 'm.binaryproto'], capsys)
    assert rc == 1 and "key 'b'" in error_line(err)
    assert not (tmp_path / 'm.binaryproto').exists()


# -- MNIST ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not (MNIST_DIR / 'train-labels-idx1-ubyte.gz').exists(), reason='data/mnist not shipped')
def test_mnist_full_conversion(tmp_path, capsys):
    rc, out, err = cli(['data', 'mnist', '--out', tmp_path], capsys)
    assert rc == 0, err
    assert 'train 60000' in out and 'test 10000' in out
    with open_db(tmp_path / 'mnist_train_lmdb') as db:
        assert len(db) == 60000
        cur = db.cursor()
        assert cur.key() == b'00000000'
        d = parse_datum(cur.value())
        assert (d.channels, d.height, d.width, d.label, len(d.data)) == (1, 28, 28, 5, 784)
        assert not d.HasField('encoded') and len(d.float_data) == 0
        # exactly convert_mnist_data's bytes: channels height width data label
        assert cur.value() == bytes([0x08, 1, 0x10, 28, 0x18, 28, 0x22, 0x90, 0x06]) + d.data + bytes([0x28, 5])
        assert db.get(b'00059999') is not None and db.get(b'00060000') is None
    with open_db(tmp_path / 'mnist_test_lmdb') as db:
        assert len(db) == 10000
        assert parse_datum(db.get(b'00000000')).label == 7
    raw = gzip.decompress((MNIST_DIR / 't10k-images-idx3-ubyte.gz').read_bytes())
    with open_db(tmp_path / 'mnist_test_lmdb') as db:
        assert parse_datum(db.get(b'00000009')).data == raw[16 + 9 * 784:16 + 10 * 784]


@pytest.mark.skipif(plyvel is None or not (MNIST_DIR / 'train-labels-idx1-ubyte.gz').exists(), reason='needs plyvel, data/mnist')
def test_mnist_leveldb_limit(tmp_path):
    rs = tools.convert_mnist(MNIST_DIR, tmp_path, 'leveldb', limit=50)
    assert [r['count'] for r in rs] == [50, 50]
    with open_db(tmp_path / 'mnist_train_leveldb') as db:
        assert db.backend == 'leveldb' and len(db) == 50
        assert parse_datum(db.get(b'00000001')).label == 0


def _fake_mnist(folder, n=3, damage=None):
    """Small IDX files with the real names; the MD5 table is patched to match them."""
    folder.mkdir(exist_ok=True)
    files = {
        'train-images-idx3-ubyte': b'\x00\x00\x08\x03' + n.to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + bytes(n * 784),
        'train-labels-idx1-ubyte': b'\x00\x00\x08\x01' + n.to_bytes(4, 'big') + bytes(range(n)),
        't10k-images-idx3-ubyte': b'\x00\x00\x08\x03' + (2).to_bytes(4, 'big') + (28).to_bytes(4, 'big') * 2 + bytes(2 * 784),
        't10k-labels-idx1-ubyte': b'\x00\x00\x08\x01' + (2).to_bytes(4, 'big') + bytes([4, 2]),
    }
    table = {}
    for name, data in files.items():
        (folder / (name + '.gz')).write_bytes(gzip.compress(data))
        table[name] = (hashlib.md5(data).hexdigest(), tools.MNIST_FILES[name][1])
    return table


def test_mnist_small_and_checksum(tmp_path, monkeypatch, capsys):
    table = _fake_mnist(tmp_path / 'm')
    monkeypatch.setattr(tools, 'MNIST_FILES', table)
    rc, out, err = cli(['data', 'mnist', '--from', tmp_path / 'm'], capsys)
    assert rc == 0, err
    with open_db(tmp_path / 'm' / 'mnist_test_lmdb') as db:
        assert [parse_datum(v).label for _, v in db.items()] == [4, 2]
    # converting again replaces the databases atomically
    assert cli(['data', 'mnist', '--from', tmp_path / 'm'], capsys)[0] == 0
    bad = dict(table)
    bad['train-labels-idx1-ubyte'] = ('0' * 32, 2049)
    monkeypatch.setattr(tools, 'MNIST_FILES', bad)
    rc, out, err = cli(['data', 'mnist', '--from', tmp_path / 'm', '--out', tmp_path / 'o'], capsys)
    assert rc == 1 and 'MD5' in error_line(err) and 'train-labels-idx1-ubyte.gz' in err


def test_mnist_missing_without_network_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tools, 'MNIST_URLS', ['http://127.0.0.1:9/mnist/'])     # nothing listens there
    (tmp_path / 'empty').mkdir()
    rc, out, err = cli(['data', 'mnist', '--from', tmp_path / 'empty'], capsys)
    line = error_line(err)
    assert rc == 1 and 'train-images-idx3-ubyte.gz' in line and 'could not be downloaded' in line
    assert os.listdir(tmp_path / 'empty') == []


def test_mnist_readme_lists_sums_and_urls():
    text = (MNIST_DIR / 'README.md').read_text()
    for name, (md5, _) in tools.MNIST_FILES.items():
        assert md5 in text and name in text
    for url in tools.MNIST_URLS:
        assert url in text
    assert 'LeCun' in text and 'Cortes' in text and 'Burges' in text
    assert tools.CIFAR10_URL in (REPO / 'data' / 'cifar10' / 'README.md').read_text()


# -- CIFAR-10 ----------------------------------------------------------------------------------
def _fake_cifar(folder, per_file=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(6)
    recs = {}
    for name in tools.CIFAR10_TRAIN + tools.CIFAR10_TEST:
        r = rng.integers(0, 256, (per_file, 3073), dtype=np.uint8)
        r[:, 0] = rng.integers(0, 10, per_file)
        (folder / name).write_bytes(r.tobytes())
        recs[name] = r
    return recs


def test_cifar10(tmp_path, capsys):
    recs = _fake_cifar(tmp_path / 'c' / 'cifar-10-batches-bin')
    rc, out, err = cli(['data', 'cifar10', '--from', tmp_path / 'c', '--out', tmp_path / 'out'], capsys)
    assert rc == 0, err
    assert 'train 20' in out and 'test 4' in out
    train = records(tmp_path / 'out' / 'cifar10_train_lmdb')
    assert [k for k, _ in train] == [b'%05d' % i for i in range(20)]
    r = recs['data_batch_2.bin'][1]
    d = parse_datum(train[5][1])
    assert (d.channels, d.height, d.width, d.label) == (3, 32, 32, r[0]) and d.data == r[1:].tobytes()
    assert train[5][1] == bytes([0x08, 3, 0x10, 32, 0x18, 32, 0x22, 0x80, 0x18]) + r[1:].tobytes() + bytes([0x28, int(r[0])])
    test = records(tmp_path / 'out' / 'cifar10_test_lmdb')
    assert len(test) == 4
    # from the archive, as downloaded
    import tarfile
    with tarfile.open(tmp_path / 'cifar-10-binary.tar.gz', 'w:gz') as tar:
        tar.add(tmp_path / 'c' / 'cifar-10-batches-bin', arcname='cifar-10-batches-bin')
    (tmp_path / 'a').mkdir()
    shutil.move(str(tmp_path / 'cifar-10-binary.tar.gz'), str(tmp_path / 'a'))
    rs = tools.convert_cifar10(tmp_path / 'a')
    assert [r['count'] for r in rs] == [20, 4]
    assert records(tmp_path / 'a' / 'cifar10_train_lmdb') == train


def test_cifar10_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tools, 'CIFAR10_URL', 'http://127.0.0.1:9/cifar-10-binary.tar.gz')
    (tmp_path / 'none').mkdir()
    rc, out, err = cli(['data', 'cifar10', '--from', tmp_path / 'none'], capsys)
    assert rc == 1 and 'could not be downloaded' in error_line(err)
    _fake_cifar(tmp_path / 'c')
    with open(tmp_path / 'c' / 'test_batch.bin', 'ab') as f:
        f.write(b'xx')
    rc, out, err = cli(['data', 'cifar10', '--from', tmp_path / 'c'], capsys)
    assert rc == 1 and 'test_batch.bin' in error_line(err) and 'whole number' in err
    assert not (tmp_path / 'c' / 'cifar10_test_lmdb').exists()


# -- info / subprocess -----------------------------------------------------------------------------
def test_info_and_subprocess(tmp_path, image_list):
    root, lst, _ = image_list
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'data', 'convert-imageset', '--encoded', str(root),
                        str(lst), str(tmp_path / 'db')], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith('convert-imageset: wrote 5 images')
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'data', 'info', str(tmp_path / 'db'), '-n', '2'],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'lmdb, 5 records' in r.stdout and '00000000_cat 0.png: label 0, encoded PNG, 3x6x7' in r.stdout
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'data', 'info', str(tmp_path / 'nothing')],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().startswith('caffeine: error:') and len(r.stderr.strip().splitlines()) == 1
