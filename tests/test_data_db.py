"""caffeine.data.db and caffeine.data.datum: cursors, writers, Datum bytes, images."""
import io
import os

import lmdb
import numpy as np
import pytest

from caffeine.data import db as dbmod
from caffeine.data.datum import (array_to_datum, datum_to_array, decode_datum_native, decode_image,
                                 encode_image, encoded_datum_bytes, parse_datum, raw_datum_bytes, read_image,
                                 resize)
from caffeine.data.db import DBWriter, detect_backend, open_db
from caffeine.errors import DataError
from caffeine.proto import caffe_pb2

try:
    import plyvel
except ImportError:  # pragma: no cover
    plyvel = None

BACKENDS = ['lmdb', pytest.param('leveldb', marks=pytest.mark.skipif(plyvel is None, reason='plyvel missing'))]


def caffe_lmdb(path, records):
    """An LMDB written the way Caffe does, with the lmdb package directly."""
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for k, v in records:
            txn.put(k, v)
    env.close()


def test_lmdb_written_by_caffe_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(5):
        d = caffe_pb2.Datum()
        d.channels, d.height, d.width = 3, 4, 5
        d.data = rng.integers(0, 256, 60, dtype=np.uint8).tobytes()
        d.label = i
        recs.append((b'%08d' % i, d.SerializeToString()))
    caffe_lmdb(tmp_path / 'db', recs)
    assert detect_backend(tmp_path / 'db') == 'lmdb'
    with open_db(tmp_path / 'db') as db:
        assert len(db) == 5
        cur = db.cursor()
        got = list(cur)
        assert got == recs
        assert not cur.valid()
        cur.seek_to_first()
        assert cur.valid() and cur.key() == b'00000000'
        d = parse_datum(cur.value())
        assert datum_to_array(d).shape == (3, 4, 5)
        assert db.get('00000003') == recs[3][1]


@pytest.mark.parametrize('backend', BACKENDS)
def test_writer_roundtrip_and_atomic(tmp_path, backend):
    path = tmp_path / ('out_' + backend)
    with DBWriter(path, backend, commit_every=3) as w:
        for i in range(10):
            w.put(b'%05d' % i, b'v%d' % i)
        assert not path.exists()              # only the temporary name while writing
    assert path.is_dir()
    assert [p for p in os.listdir(tmp_path) if 'tmp' in p] == []
    with open_db(path, backend) as db:
        assert db.backend == backend
        assert [k for k, _ in db.items()] == [b'%05d' % i for i in range(10)]
        assert len(db) == 10
    # refused when it exists (Caffe's db::NEW)
    with pytest.raises(DataError, match='already exists'):
        DBWriter(path, backend)


def test_writer_failure_leaves_nothing(tmp_path):
    path = tmp_path / 'half'
    with pytest.raises(RuntimeError):
        with DBWriter(path, 'lmdb') as w:
            w.put(b'a', b'1')
            raise RuntimeError('crash mid-way')
    assert os.listdir(tmp_path) == []


def test_lmdb_map_grows(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, 'LMDB_INITIAL_MAP_SIZE', 1 << 16)
    with DBWriter(tmp_path / 'big', 'lmdb', commit_every=50) as w:
        for i in range(200):
            w.put(b'%05d' % i, bytes(4000))
    with open_db(tmp_path / 'big') as db:
        assert len(db) == 200


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match='no such file'):
        open_db(tmp_path / 'missing', 'lmdb')
    (tmp_path / 'empty_dir').mkdir()
    with pytest.raises(DataError, match='not an LMDB or LEVELDB'):
        open_db(tmp_path / 'empty_dir')
    caffe_lmdb(tmp_path / 'l', [(b'a', b'b')])
    with pytest.raises(DataError, match='LMDB database, but backend LEVELDB'):
        open_db(tmp_path / 'l', 0)
    with pytest.raises(DataError, match='unknown database backend'):
        open_db(tmp_path / 'l', 'rocksdb')


def test_shared_handles(tmp_path):
    caffe_lmdb(tmp_path / 'l', [(b'a', b'1'), (b'b', b'2')])
    a = open_db(tmp_path / 'l')
    b = open_db(tmp_path / 'l')
    assert a._h is b._h
    a.close()
    assert list(b.items()) == [(b'a', b'1'), (b'b', b'2')]
    b.close()
    assert not dbmod._shared


@pytest.mark.skipif(plyvel is None, reason='plyvel missing')
def test_leveldb_cursor(tmp_path):
    d = plyvel.DB(str(tmp_path / 'ldb'), create_if_missing=True)
    for i in range(4):
        d.put(b'%08d' % i, b'x%d' % i)
    d.close()
    assert detect_backend(tmp_path / 'ldb') == 'leveldb'
    with open_db(tmp_path / 'ldb', 'leveldb') as db, open_db(tmp_path / 'ldb', 0) as db2:
        cur = db.cursor()
        keys = []
        while cur.valid():
            keys.append(cur.key())
            cur.next()
        assert keys == [b'%08d' % i for i in range(4)]
        cur.seek_to_first()
        assert cur.value() == b'x0'
        assert len(db2) == 4                  # second open in-process shares the handle


def test_plyvel_missing_is_one_line(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == 'plyvel':
            raise ImportError('no plyvel')
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, '__import__', fake)
    (tmp_path / 'ldb').mkdir()
    (tmp_path / 'ldb' / 'CURRENT').write_text('x')
    with pytest.raises(DataError) as e:
        open_db(tmp_path / 'ldb', 'leveldb', what="layer 'd' (Data): ")
    assert 'plyvel' in str(e.value) and '\n' not in str(e.value) and str(e.value).startswith("layer 'd'")
    with pytest.raises(DataError, match='plyvel'):
        DBWriter(tmp_path / 'new', 'leveldb')


# -- Datum ------------------------------------------------------------------------------------
def test_datum_bytes_match_caffe_layout():
    img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    b = raw_datum_bytes(img, 7)
    # channels=2 height=3 width=4 data label=7 encoded=false, in field order (CVMatToDatum)
    expected = bytes([0x08, 2, 0x10, 3, 0x18, 4, 0x22, 24]) + img.tobytes() + bytes([0x28, 7, 0x38, 0])
    assert b == expected
    enc = encoded_datum_bytes(b'\xff\xd8abc', 3)
    assert enc == bytes([0x22, 5]) + b'\xff\xd8abc' + bytes([0x28, 3, 0x38, 1])


def test_array_to_datum_and_back():
    f = np.random.default_rng(1).normal(size=(2, 3, 3)).astype(np.float32)
    d = array_to_datum(f, 4)
    assert not d.data and len(d.float_data) == 18 and d.label == 4
    np.testing.assert_array_equal(datum_to_array(d), f)
    u = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    np.testing.assert_array_equal(datum_to_array(array_to_datum(u)), u)


def test_parse_errors():
    with pytest.raises(DataError, match="key '00000001': record is not a Datum"):
        parse_datum(b'\xff\xff\xff\xff', 'db: ', b'00000001')
    with pytest.raises(DataError, match='not a Datum'):
        parse_datum(b'', 'db: ', b'k')
    d = caffe_pb2.Datum(channels=3, height=2, width=2, data=b'123')
    with pytest.raises(DataError, match='data has 3 bytes, but channels\\*height\\*width = 3\\*2\\*2 = 12'):
        datum_to_array(d)


def _png(arr_hwc, mode):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(arr_hwc, mode).save(buf, 'PNG')
    return buf.getvalue()


def test_decode_bgr_and_modes():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200   # red
    rgb[..., 2] = 10    # blue
    png = _png(rgb, 'RGB')
    x = decode_image(png)
    assert x.shape == (3, 2, 3)
    assert (x[0] == 10).all() and (x[2] == 200).all()      # BGR planes
    g = decode_image(png, 'gray')
    assert g.shape == (1, 2, 3)
    # libpng's rgb_to_gray weights (as OpenCV reads PNG in grayscale)
    assert g[0, 0, 0] == (200 * 9798 + 10 * 3735 + (1 << 14)) >> 15
    gray_png = _png(np.full((2, 2), 77, np.uint8), 'L')
    assert decode_image(gray_png).shape == (1, 2, 2)
    c = decode_image(gray_png, 'color')
    assert c.shape == (3, 2, 2) and (c == 77).all()
    rgba = np.dstack([rgb, np.full((2, 3), 9, np.uint8)])
    x4 = decode_image(_png(rgba, 'RGBA'))
    assert x4.shape == (4, 2, 3) and (x4[3] == 9).all() and (x4[0] == 10).all()
    with pytest.raises(DataError, match='cannot be decoded'):
        decode_image(b'not an image', where='k: ')


def test_decode_datum_native():
    rgb = np.random.default_rng(2).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    d = parse_datum(encoded_datum_bytes(_png(rgb, 'RGB'), 6))
    assert decode_datum_native(d)
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 4, 5, 6, False)
    np.testing.assert_array_equal(datum_to_array(d), rgb[:, :, ::-1].transpose(2, 0, 1))


def test_encode_roundtrip_png():
    x = np.random.default_rng(3).integers(0, 256, (3, 6, 7), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(x, 'png')), x)
    j = decode_image(encode_image(x, 'jpg'))
    assert j.shape == x.shape


def test_resize_opencv_linear():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4) * 10
    # exact 2x downscale = mean of 2x2 blocks, rounded (OpenCV's INTER_LINEAR there)
    r = resize(x, 2, 2)
    expect = (x[0].reshape(2, 2, 2, 2).astype(int).sum(axis=(1, 3)) + 2) // 4
    np.testing.assert_array_equal(r[0], expect)
    up = resize(np.array([[[0, 100]]], np.uint8), 1, 4)
    # centres at -0.25, 0.25, 0.75, 1.25 -> clamped 0, 25, 75, 100
    np.testing.assert_array_equal(up[0, 0], [0, 25, 75, 100])
    assert resize(x, 4, 4) is x


def test_read_image_errors(tmp_path):
    with pytest.raises(DataError, match='cannot read image'):
        read_image(str(tmp_path / 'nope.jpg'))
    (tmp_path / 'bad.jpg').write_bytes(b'garbage')
    with pytest.raises(DataError, match='bad.jpg cannot be decoded'):
        read_image(str(tmp_path / 'bad.jpg'))


def test_value_to_array_fast_path_agrees_with_protobuf():
    from caffeine.data.datum import value_to_array
    rng = np.random.default_rng(4)
    u8 = rng.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    f = rng.normal(size=(2, 3, 4)).astype(np.float32)
    cases = [
        caffe_pb2.Datum(channels=2, height=3, width=4, data=u8.tobytes(), label=-3),
        caffe_pb2.Datum(channels=2, height=3, width=4, data=u8.tobytes(), label=7, encoded=False),
        caffe_pb2.Datum(channels=2, height=3, width=4, float_data=f.ravel().tolist(), label=2 ** 31 - 1),
        caffe_pb2.Datum(data=encode_image(np.repeat(u8[:1], 3, 0), 'png'), encoded=True, label=1),
    ]
    for d in cases:
        value = d.SerializeToString()
        a, lab = value_to_array(value)
        ref = datum_to_array(parse_datum(value))
        assert lab == d.label and a.dtype == ref.dtype
        np.testing.assert_array_equal(a, ref)
    # non-packed float_data, an unknown field: the protobuf path gives the same answer
    nonpacked = bytes([0x08, 1, 0x10, 1, 0x18, 2, 0x35]) + np.float32(1.5).tobytes() + bytes([0x35]) + np.float32(-2).tobytes()
    a, lab = value_to_array(nonpacked)
    np.testing.assert_array_equal(a, [[[1.5, -2]]])
    extra = cases[0].SerializeToString() + bytes([0x48, 1])       # field 9, unknown to Datum
    np.testing.assert_array_equal(value_to_array(extra)[0], u8)
    with pytest.raises(DataError, match="key 'k': record is not a Datum"):
        value_to_array(b'\xff\xff', where='db: ', key=b'k')
    short = caffe_pb2.Datum(channels=2, height=3, width=4, data=b'12', label=1).SerializeToString()
    with pytest.raises(DataError, match='data has 2 bytes'):
        value_to_array(short)
