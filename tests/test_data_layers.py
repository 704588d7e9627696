"""The data layers: Data (LMDB/LevelDB, prefetch), ImageData, WindowData, MemoryData, DummyData,
Input, HDF5Data, HDF5Output; bad-input errors; a Net with a Data layer."""
import gc
import io
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from google.protobuf import text_format

import caffeine
from caffeine import backend, runtime
from caffeine.blob import Blob
from caffeine.errors import CaffeineError, DataError
from caffeine.layer import create_layer
from caffeine.proto import caffe_pb2

try:
    import plyvel
except ImportError:  # pragma: no cover
    plyvel = None

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
SHARED = Path(os.environ.get('CAFFEINE_SHARED') or Path(__file__).resolve().parents[2] / 'shared')
HDF5_REF = SHARED / 'caffe-reference' / 'hdf5'


# -- helpers ---------------------------------------------------------------------------------
def encode(chw, fmt):
    from PIL import Image
    if chw.shape[0] == 1:
        im = Image.fromarray(chw[0], 'L')
    else:
        im = Image.fromarray(np.ascontiguousarray(chw[::-1].transpose(1, 2, 0)), 'RGB')
    buf = io.BytesIO()
    im.save(buf, fmt, **({'quality': 95} if fmt == 'JPEG' else {}))
    return buf.getvalue()


def datum_bytes(img, label, kind='raw'):
    d = caffe_pb2.Datum()
    if kind == 'raw':
        d.channels, d.height, d.width = img.shape
        d.data = img.tobytes()
    elif kind == 'float':
        d.channels, d.height, d.width = img.shape
        d.float_data.extend(img.astype(np.float32).ravel().tolist())
    else:
        d.data = encode(img, kind)
        d.encoded = True
    d.label = label
    return d.SerializeToString()


def make_lmdb(path, imgs, labels=None, kind='raw', keyfmt=b'%08d'):
    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i, img in enumerate(imgs):
            txn.put(keyfmt % i, datum_bytes(img, i if labels is None else labels[i], kind))
    env.close()
    return str(path)


def make_leveldb(path, imgs):
    d = plyvel.DB(str(path), create_if_missing=True)
    for i, img in enumerate(imgs):
        d.put(b'%08d' % i, datum_bytes(img, i))
    d.close()
    return str(path)


def images(n=10, c=3, h=6, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def layer_param(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def setup_layer(text, ntop=2, phase=TRAIN):
    lp = layer_param(text)
    layer = create_layer(lp, phase)
    top = [Blob() for _ in range(ntop)]
    layer.SetUp([], top)
    return layer, top


def forward(layer, top):
    layer.Forward([], top)
    return [t.data.copy() for t in top]


def data_layer(source, batch=4, extra='', transform='', backend='LMDB', ntop=2, phase=TRAIN, name='data'):
    text = ('name: "%s" type: "Data" top: "data" top: "label" data_param { source: "%s" batch_size: %d '
            'backend: %s %s } transform_param { %s }' % (name, source, batch, backend, extra, transform))
    if ntop == 1:
        text = text.replace('top: "label" ', '')
    return setup_layer(text, ntop, phase)


@pytest.fixture(autouse=True)
def _close_layers():
    yield
    gc.collect()


# -- Data ------------------------------------------------------------------------------------
def test_data_raw_wraparound(tmp_path, mode):
    imgs = images(10)
    src = make_lmdb(tmp_path / 'db', imgs)
    layer, top = data_layer(src, batch=4, phase=TEST)
    try:
        assert top[0].shape == (4, 3, 6, 7) and top[1].shape == (4,)
        seen = []
        for it in range(5):
            d, l = forward(layer, top)
            idx = [(4 * it + i) % 10 for i in range(4)]
            np.testing.assert_array_equal(l, idx)
            np.testing.assert_array_equal(d, imgs[idx].astype(np.float32))
            seen.append(l)
    finally:
        layer.close()


def test_data_float_data_and_single_top(tmp_path):
    f = np.random.default_rng(1).normal(size=(5, 2, 3, 3)).astype(np.float32)
    src = make_lmdb(tmp_path / 'db', list(f), kind='float')
    layer, top = data_layer(src, batch=5, ntop=1, transform='scale: 2')
    (d,) = forward(layer, top)
    np.testing.assert_array_equal(d, f * np.float32(2))
    layer.close()


def test_data_encoded_png_and_jpeg(tmp_path):
    imgs = images(6, h=8, w=9)
    src = make_lmdb(tmp_path / 'png', imgs, kind='PNG')
    layer, top = data_layer(src, batch=6, phase=TEST)
    d, l = forward(layer, top)
    np.testing.assert_array_equal(d, imgs.astype(np.float32))     # lossless: exactly the BGR planes
    layer.close()
    src = make_lmdb(tmp_path / 'jpg', imgs, kind='JPEG')
    layer, top = data_layer(src, batch=3, phase=TEST, transform='crop_size: 5')
    d, l = forward(layer, top)
    assert d.shape == (3, 3, 5, 5)
    from PIL import Image
    for i in range(3):       # the JPEG as Pillow decodes it, in BGR planes, centre-cropped
        rgb = np.asarray(Image.open(io.BytesIO(encode(imgs[i], 'JPEG'))).convert('RGB'))
        np.testing.assert_array_equal(d[i], rgb[1:6, 2:7, ::-1].transpose(2, 0, 1))
    layer.close()
    # force_gray on encoded colour images: 1 channel
    layer, top = data_layer(src, batch=2, phase=TEST, transform='force_gray: true')
    assert top[0].shape == (2, 1, 8, 9)
    layer.close()


def test_data_force_color_on_gray(tmp_path):
    imgs = images(3, c=1)
    src = make_lmdb(tmp_path / 'g', imgs, kind='PNG')
    layer, top = data_layer(src, batch=3, phase=TEST, transform='force_color: true')
    d, _ = forward(layer, top)
    assert d.shape == (3, 3, 6, 7)
    np.testing.assert_array_equal(d[:, 0], imgs[:, 0].astype(np.float32))
    np.testing.assert_array_equal(d[:, 2], imgs[:, 0].astype(np.float32))
    layer.close()


def test_data_rand_skip(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(10))
    caffeine.set_random_seed(42)
    expect = int(backend.rng().integers(0, 7))
    caffeine.set_random_seed(42)
    layer, top = data_layer(src, batch=3, extra='rand_skip: 7', phase=TEST)
    _, l = forward(layer, top)
    np.testing.assert_array_equal(l, [(expect + i) % 10 for i in range(3)])
    layer.close()


@pytest.mark.skipif(plyvel is None, reason='plyvel missing')
def test_data_leveldb_is_caffe_default(tmp_path):
    imgs = images(5)
    src = make_leveldb(tmp_path / 'ldb', imgs)
    lp = layer_param('name: "d" type: "Data" top: "data" top: "label" data_param { source: "%s" batch_size: 2 }' % src)
    assert lp.data_param.backend == caffe_pb2.DataParameter.LEVELDB
    layer = create_layer(lp, TEST)
    top = [Blob(), Blob()]
    layer.SetUp([], top)
    for it in range(3):
        d, l = forward(layer, top)
        idx = [(2 * it + i) % 5 for i in range(2)]
        np.testing.assert_array_equal(l, idx)
        np.testing.assert_array_equal(d, imgs[idx].astype(np.float32))
    layer.close()


def _valid_crop(out, img, mean, crop, scale):
    """True if ``out`` is some crop of ``img`` (maybe mirrored), mean-subtracted and scaled."""
    _, h, w = img.shape
    for ho in range(h - crop + 1):
        for wo in range(w - crop + 1):
            ref = (img[:, ho:ho + crop, wo:wo + crop].astype(np.float32)
                   - mean[:, ho:ho + crop, wo:wo + crop]) * np.float32(scale)
            if np.array_equal(out, ref) or np.array_equal(out, ref[:, :, ::-1]):
                return True
    return False


def write_mean(path, mean):
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = 1, *mean.shape
    bp.data.extend(mean.ravel().tolist())
    path.write_bytes(bp.SerializeToString())
    return str(path)


def test_data_train_transform_and_determinism(tmp_path, monkeypatch):
    imgs = images(12, h=6, w=6)
    src = make_lmdb(tmp_path / 'db', imgs)
    mean = np.random.default_rng(3).uniform(0, 200, (3, 6, 6)).astype(np.float32)
    mf = write_mean(tmp_path / 'mean.binaryproto', mean)
    tr = 'crop_size: 4 mirror: true scale: 0.25 mean_file: "%s"' % mf

    def run(threads):
        monkeypatch.setenv('CAFFEINE_DATA_THREADS', str(threads))
        caffeine.set_random_seed(7)
        layer, top = data_layer(src, batch=4, transform=tr)
        outs = [forward(layer, top) for _ in range(6)]
        layer.close()
        return outs

    a = run(1)
    b = run(4)
    for (da, la), (db_, lb) in zip(a, b):
        np.testing.assert_array_equal(da, db_)
        np.testing.assert_array_equal(la, lb)
        for i in range(4):
            assert _valid_crop(da[i], imgs[int(la[i])], mean, 4, 0.25)
    # the draws differ from batch to batch
    assert not all(np.array_equal(a[0][0], x[0]) for x in a[3:])


def test_data_prefetch_zero_is_synchronous(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(4))
    layer, top = data_layer(src, batch=3, extra='prefetch: 0', phase=TEST)
    assert layer._pf._threads == []
    _, l = forward(layer, top)
    np.testing.assert_array_equal(l, [0, 1, 2])
    _, l = forward(layer, top)
    np.testing.assert_array_equal(l, [3, 0, 1])


def test_data_batch_reshapes_to_first_datum(tmp_path):
    # encoded images of two sizes, no crop: each batch takes its first image's shape (Caffe)
    small, big = images(2, h=4, w=4), images(2, h=5, w=6, seed=1)
    src = make_lmdb(tmp_path / 'db', [small[0], small[1], big[0], big[1]], kind='PNG')
    layer, top = data_layer(src, batch=2, phase=TEST)
    assert forward(layer, top)[0].shape == (2, 3, 4, 4)
    assert forward(layer, top)[0].shape == (2, 3, 5, 6)
    layer.close()


# -- bad input ------------------------------------------------------------------------------
def one_line(e):
    s = str(e.value)
    assert '\n' not in s
    return s


def test_data_missing_source(tmp_path):
    with pytest.raises(DataError) as e:
        data_layer(str(tmp_path / 'nope_lmdb'), name='mydata')
    s = one_line(e)
    assert s.startswith("layer 'mydata' (Data): ") and 'nope_lmdb' in s and 'no such file' in s


def test_data_empty_database(tmp_path):
    env = lmdb.open(str(tmp_path / 'empty'), map_size=1 << 20)
    env.close()
    with pytest.raises(DataError) as e:
        data_layer(str(tmp_path / 'empty'))
    assert "layer 'data' (Data): " in one_line(e) and 'empty' in one_line(e)


def _bad_db(tmp_path, bad_value, at=5):
    env = lmdb.open(str(tmp_path / 'bad'), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, img in enumerate(images(8)):
            txn.put(b'%08d' % i, bad_value if i == at else datum_bytes(img, i))
    env.close()
    return str(tmp_path / 'bad')


@pytest.mark.parametrize('case', ['not_datum', 'size', 'channels', 'undecodable', 'no_data'])
def test_data_bad_records_surface_with_layer_and_key(tmp_path, case):
    bad = {
        'not_datum': b'\xff\xfe\xfd\xfc garbage',
        'size': datum_bytes(images(1, h=3, w=3)[0], 5),
        'channels': datum_bytes(images(1, c=1)[0], 5),
        'undecodable': caffe_pb2.Datum(data=b'\xff\xd8\xff not really a jpeg', encoded=True, label=1).SerializeToString(),
        'no_data': caffe_pb2.Datum(channels=3, height=6, width=7, label=1).SerializeToString(),
    }[case]
    src = _bad_db(tmp_path, bad)
    layer, top = data_layer(src, batch=4, phase=TEST, name='feed')
    forward(layer, top)                                # records 0..3 are fine
    with pytest.raises(DataError) as e:
        forward(layer, top)                            # 4..7 hold the bad one
    s = one_line(e)
    assert s.startswith("layer 'feed' (Data): ") and src in s and "key '00000005'" in s, s
    with pytest.raises(DataError):
        forward(layer, top)                            # stays failed
    layer.close()


def test_synchronous_prefetch_error_repeats(tmp_path):
    src = _bad_db(tmp_path, b'\xff\xfe junk', at=1)
    layer, top = data_layer(src, batch=2, phase=TEST, extra='prefetch: 0', name='sync')
    for _ in range(2):
        with pytest.raises(DataError, match="layer 'sync' \\(Data\\): .*key '00000001'"):
            forward(layer, top)


def test_prefetch_worker_exception_is_wrapped(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(8))
    layer, top = data_layer(src, batch=2, name='wrapped', extra='prefetch: 2')
    forward(layer, top)
    layer.close()
    layer, top = data_layer(src, batch=2, name='wrapped', extra='prefetch: 2')

    def boom(job, slot):
        raise ValueError('decoder exploded')
    # replace the worker's make step: the next unbuilt batch fails in the worker thread
    layer._pf._make = boom
    with pytest.raises(DataError) as e:
        for _ in range(5):
            forward(layer, top)
    s = one_line(e)
    assert "'wrapped' (Data)" in s and 'ValueError' in s and 'decoder exploded' in s
    assert isinstance(e.value.__cause__, ValueError)
    layer.close()


def test_data_bad_params(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(2))
    with pytest.raises(DataError, match='batch_size must be positive'):
        data_layer(src, batch=0)
    with pytest.raises(DataError, match='crop_size 9 is larger than the image'):
        data_layer(src, transform='crop_size: 9')
    with pytest.raises(CaffeineError, match='at most 2'):
        setup_layer('name: "d" type: "Data" top: "a" top: "b" top: "c" data_param { source: "%s" batch_size: 1 backend: LMDB }' % src, 3)


# -- threads --------------------------------------------------------------------------------
def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith('caffeine-prefetch')]


def test_close_stops_daemon_threads(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(8))
    before = len(_prefetch_threads())
    layer, top = data_layer(src, batch=2, name='closing')
    mine = [t for t in _prefetch_threads() if "'closing'" in t.name]
    assert mine and all(t.daemon for t in mine)
    forward(layer, top)
    layer.close()
    assert not any(t.is_alive() for t in mine)
    with pytest.raises(DataError, match='closed'):
        forward(layer, top)
    layer.close()     # idempotent
    assert len(_prefetch_threads()) == before


def test_garbage_collected_layer_stops_threads(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(8))
    layer, top = data_layer(src, batch=2, name='collected')
    forward(layer, top)
    mine = [t for t in _prefetch_threads() if "'collected'" in t.name]
    del layer
    gc.collect()
    for t in mine:
        t.join(5)
    assert not any(t.is_alive() for t in mine)


def test_no_hang_at_interpreter_exit(tmp_path):
    src = make_lmdb(tmp_path / 'db', images(20))
    code = textwrap.dedent('''
        import caffeine
        from caffeine.blob import Blob
        from caffeine.layer import create_layer
        from google.protobuf import text_format
        from caffeine.proto import caffe_pb2
        lp = text_format.Parse('name: "d" type: "Data" top: "x" top: "y" data_param { source: "%s" '
                               'batch_size: 2 backend: LMDB prefetch: 4 }', caffe_pb2.LayerParameter())
        layer = create_layer(lp, 0)
        top = [Blob(), Blob()]
        layer.SetUp([], top)
        layer.Forward([], top)
        print('done', flush=True)
        # exit without close()
    ''' % src)
    t0 = time.time()
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60,
                       cwd=str(Path(__file__).resolve().parents[1]))
    assert r.returncode == 0, r.stderr
    assert 'done' in r.stdout
    assert time.time() - t0 < 30


# -- ImageData ------------------------------------------------------------------------------
def image_folder(tmp_path, n=6, sizes=None, gray=False):
    from PIL import Image
    root = tmp_path / 'imgs'
    root.mkdir()
    lines, arrs = [], []
    rng = np.random.default_rng(11)
    for i in range(n):
        h, w = sizes[i] if sizes else (6, 8)
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / ('im %d.png' % i))      # a space in the name: split at the last one
        lines.append('im %d.png %d' % (i, 10 + i))
        arrs.append(rgb[:, :, ::-1].transpose(2, 0, 1))
    (tmp_path / 'list.txt').write_text('\n'.join(lines) + '\n')
    return str(root) + '/', str(tmp_path / 'list.txt'), arrs


def image_data(listfile, root, batch=2, extra='', transform='', phase=TRAIN, name='img'):
    return setup_layer('name: "%s" type: "ImageData" top: "data" top: "label" image_data_param { source: "%s" '
                       'root_folder: "%s" batch_size: %d %s } transform_param { %s }'
                       % (name, listfile, root, batch, extra, transform), 2, phase)


def test_image_data_basic_and_wrap(tmp_path):
    root, lst, arrs = image_folder(tmp_path, 5)
    layer, top = image_data(lst, root, batch=2, phase=TEST)
    assert top[0].shape == (2, 3, 6, 8)
    got = []
    for it in range(4):
        d, l = forward(layer, top)
        idx = [(2 * it + i) % 5 for i in range(2)]
        np.testing.assert_array_equal(l, [10 + i for i in idx])
        for j, i in enumerate(idx):
            np.testing.assert_array_equal(d[j], arrs[i])
        got += list(l)
    layer.close()


def test_image_data_resize_gray_crop(tmp_path):
    root, lst, arrs = image_folder(tmp_path, 3, sizes=[(6, 8), (9, 5), (7, 7)])
    layer, top = image_data(lst, root, batch=3, phase=TEST,
                            extra='new_height: 4 new_width: 5 is_color: false', transform='crop_size: 3')
    assert top[0].shape == (3, 1, 3, 3)
    d, l = forward(layer, top)
    np.testing.assert_array_equal(l, [10, 11, 12])
    layer.close()
    with pytest.raises(DataError, match='new_height and new_width must be set together'):
        image_data(lst, root, extra='new_height: 4')


def test_image_data_shuffle_covers_every_image(tmp_path):
    root, lst, _ = image_folder(tmp_path, 6)
    caffeine.set_random_seed(3)
    layer, top = image_data(lst, root, batch=3, extra='shuffle: true', transform='mirror: true crop_size: 5')
    first = np.concatenate([forward(layer, top)[1] for _ in range(2)])
    second = np.concatenate([forward(layer, top)[1] for _ in range(2)])
    layer.close()
    assert sorted(first) == list(range(10, 16)) and sorted(second) == list(range(10, 16))
    caffeine.set_random_seed(3)
    layer, top = image_data(lst, root, batch=3, extra='shuffle: true', transform='mirror: true crop_size: 5')
    again = np.concatenate([forward(layer, top)[1] for _ in range(2)])
    layer.close()
    np.testing.assert_array_equal(first, again)


def test_image_data_errors(tmp_path):
    root, lst, _ = image_folder(tmp_path, 4)
    with pytest.raises(DataError) as e:
        image_data(str(tmp_path / 'missing.txt'), root)
    assert one_line(e).startswith("layer 'img' (ImageData): cannot read list file")
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(DataError, match='is empty'):
        image_data(str(tmp_path / 'empty.txt'), root)
    (tmp_path / 'nolabel.txt').write_text('a.png 1\nb.png\n')
    with pytest.raises(DataError, match=r"nolabel.txt:2: expected 'path label'"):
        image_data(str(tmp_path / 'nolabel.txt'), root)
    # a missing image at line 3: found by the worker, reported at forward
    text = Path(lst).read_text().splitlines()
    text[2] = 'gone.png 5'
    (tmp_path / 'l2.txt').write_text('\n'.join(text))
    layer, top = image_data(str(tmp_path / 'l2.txt'), root, batch=2, phase=TEST)
    forward(layer, top)
    with pytest.raises(DataError) as e:
        forward(layer, top)
    s = one_line(e)
    assert s.startswith("layer 'img' (ImageData): ") and 'l2.txt:3' in s and 'gone.png' in s
    layer.close()
    # an undecodable image
    Path(root, 'im 1.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    layer, top = image_data(lst, root, batch=2, phase=TEST)
    with pytest.raises(DataError) as e:
        forward(layer, top)
    assert 'list.txt:2' in one_line(e) and 'cannot be decoded' in one_line(e)
    layer.close()


# -- WindowData ------------------------------------------------------------------------------
def test_window_data(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / 'a.png')
    Image.fromarray(rgb[::-1].copy()).save(tmp_path / 'b.png')
    (tmp_path / 'windows.txt').write_text(textwrap.dedent('''\
        # 0
        a.png
        3
        10
        12
        3
        1 0.9 0 0 11 9
        2 0.8 2 2 7 7
        0 0.1 0 0 3 3
        # 1
        b.png
        3 10 12
        2
        3 1.0 0 0 11 9
        5 0.2 4 4 9 9
        '''))
    text = ('name: "win" type: "WindowData" top: "data" top: "label" window_data_param { source: "%s" '
            'root_folder: "%s/" batch_size: 8 fg_fraction: 0.5 %s } transform_param { crop_size: %d %s }')
    # the whole image as a window, crop = image size: the data is exactly the image (minus mean)
    layer, top = setup_layer(text % (tmp_path / 'windows.txt', tmp_path, 'fg_threshold: 0.95', 12,
                                     'mean_value: 1'), 2, TEST)
    d, l = forward(layer, top)
    assert d.shape == (8, 3, 12, 12)
    assert list(l[:4]) == [0, 0, 0, 0] and set(l[4:]) == {3}
    # the fg window covers all of b.png (10x12), warped to 12x12
    from caffeine.data.datum import resize
    b = rgb[::-1][:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(d[4], resize(np.ascontiguousarray(b), 12, 12).astype(np.float32) - 1)
    layer.close()
    # context padding and square mode run, mirror at TRAIN
    layer, top = setup_layer(text % (tmp_path / 'windows.txt', tmp_path, 'context_pad: 2 crop_mode: "square"', 8,
                                     'mirror: true'), 2, TRAIN)
    d, l = forward(layer, top)
    assert d.shape == (8, 3, 8, 8) and set(l[4:]) <= {1, 2, 3} and set(l[:4]) == {0}
    layer.close()
    with pytest.raises(DataError, match='crop_size must be positive'):
        setup_layer(text % (tmp_path / 'windows.txt', tmp_path, '', 0, ''), 2)
    (tmp_path / 'bad.txt').write_text('# 0\na.png\n3 10 12\n1\n0 0.9 0 0 3 3\n')
    with pytest.raises(DataError, match=r'bad.txt:5: a foreground window needs a label > 0'):
        setup_layer(text % (tmp_path / 'bad.txt', tmp_path, '', 8, ''), 2)


# -- MemoryData -------------------------------------------------------------------------------
def test_memory_data(mode):
    layer, top = setup_layer('name: "mem" type: "MemoryData" top: "data" top: "label" '
                             'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }')
    with pytest.raises(CaffeineError, match='reset'):
        forward(layer, top)
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 1, 2, 3)
    labels = np.arange(6, dtype=np.float32)
    layer.reset(data, labels, 6)
    for it in range(4):
        d, l = forward(layer, top)
        idx = [(2 * it) % 6, (2 * it) % 6 + 1]
        np.testing.assert_array_equal(d, data[idx])
        np.testing.assert_array_equal(l, labels[idx])
    with pytest.raises(CaffeineError, match='multiple of batch size'):
        layer.reset(data[:5], labels[:5], 5)
    with pytest.raises(CaffeineError, match='expected'):
        layer.reset(np.zeros((2, 1, 3, 3), np.float32), labels[:2], 2)
    layer.set_input_arrays(data[:2], labels[:2, None, None, None])
    np.testing.assert_array_equal(forward(layer, top)[1], [0, 1])


def test_memory_data_add_datum_vector():
    layer, top = setup_layer('name: "mem" type: "MemoryData" top: "data" top: "label" '
                             'memory_data_param { batch_size: 2 channels: 3 height: 2 width: 2 } '
                             'transform_param { crop_size: 2 scale: 0.5 }', phase=TEST)
    imgs = images(2, h=4, w=4)
    datums = [caffe_pb2.Datum(channels=3, height=4, width=4, data=im.tobytes(), label=i + 3) for i, im in enumerate(imgs)]
    layer.add_datum_vector(datums)
    d, l = forward(layer, top)
    np.testing.assert_array_equal(d, imgs[:, :, 1:3, 1:3] * np.float32(0.5))
    np.testing.assert_array_equal(l, [3, 4])


def test_memory_data_needs_dims():
    with pytest.raises(CaffeineError, match='must be specified and positive'):
        setup_layer('name: "m" type: "MemoryData" top: "a" top: "b" memory_data_param { batch_size: 2 }')


# -- DummyData / Input ---------------------------------------------------------------------------
def test_dummy_data():
    layer, top = setup_layer('name: "dd" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                             'shape { dim: 2 dim: 3 } shape { dim: 4 } shape { dim: 1 dim: 1 dim: 2 } '
                             'data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" std: 1 } '
                             'data_filler { type: "constant" } }', 3)
    assert [t.shape for t in top] == [(2, 3), (4,), (1, 1, 2)]
    assert (top[0].data == 7).all() and (top[2].data == 0).all()
    top[0].data[...] = 1        # constant tops are not refilled (Caffe's refill_)
    a1 = forward(layer, top)
    a2 = forward(layer, top)
    assert (a1[0] == 1).all()
    assert not np.array_equal(a1[1], a2[1])


def test_dummy_data_legacy_and_errors():
    layer, top = setup_layer('name: "dd" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                             'num: 2 channels: 3 height: 4 width: 5 num: 1 channels: 1 height: 1 width: 1 }', 2)
    assert top[0].shape == (2, 3, 4, 5) and top[1].shape == (1, 1, 1, 1)
    assert (forward(layer, top)[0] == 0).all()
    with pytest.raises(CaffeineError, match='both shape and legacy'):
        setup_layer('name: "dd" type: "DummyData" top: "a" dummy_data_param { num: 1 shape { dim: 1 } }', 1)
    with pytest.raises(CaffeineError, match="'shape' once, or once per top"):
        setup_layer('name: "dd" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                    'shape { dim: 1 } shape { dim: 2 } }', 3)
    with pytest.raises(CaffeineError, match='number of data fillers'):
        setup_layer('name: "dd" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { shape { dim: 1 } '
                    'data_filler { type: "constant" } data_filler { type: "constant" } }', 3)


def test_input_layer_shapes():
    layer, top = setup_layer('name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } }', 2)
    assert top[0].shape == top[1].shape == (2, 3)
    layer, top = setup_layer('name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 } shape { dim: 5 dim: 1 } }', 2)
    assert top[0].shape == (2,) and top[1].shape == (5, 1)
    top[0].data[...] = 3
    forward(layer, top)
    assert (top[0].data == 3).all()     # forward does nothing


# -- HDF5Data / HDF5Output ---------------------------------------------------------------------
def hdf5_layer(listfile, batch, tops=('data', 'label'), extra='', name='h5'):
    text = 'name: "%s" type: "HDF5Data" %s hdf5_data_param { source: "%s" batch_size: %d %s }' % (
        name, ' '.join('top: "%s"' % t for t in tops), listfile, batch, extra)
    return setup_layer(text, len(tops))


@pytest.mark.skipif(not (HDF5_REF / 'sample_data.h5').exists(), reason='shared Caffe HDF5 files absent')
def test_hdf5_caffe_sample_files(tmp_path):
    # Caffe's own test: sample_data.h5 then sample_data_2_gzip.h5, batch 5, tops data/label/label2
    lst = tmp_path / 'list.txt'
    lst.write_text('%s\n%s\n' % (HDF5_REF / 'sample_data.h5', HDF5_REF / 'sample_data_2_gzip.h5'))
    layer, top = hdf5_layer(str(lst), 5, ('data', 'label', 'label2'))
    assert [t.shape for t in top] == [(5, 8, 6, 5), (5, 1), (5, 1)]
    dim = 8 * 6 * 5
    for it in range(10):
        d, l, l2 = forward(layer, top)
        file_offset = 0 if it % 4 < 2 else 2400
        row0 = 0 if it % 2 == 0 else 5
        for i in range(5):
            np.testing.assert_array_equal(l[i], [row0 + i + 1])
            np.testing.assert_array_equal(l2[i], [row0 + i + 2])
            np.testing.assert_array_equal(d[i].ravel(), file_offset + (row0 + i) * dim + np.arange(dim))


def write_h5(path, start, n):
    with h5py.File(path, 'w') as f:
        f['data'] = (np.arange(start, start + n, dtype=np.float64)[:, None] * np.ones((1, 2)))
        f['label'] = np.arange(start, start + n, dtype=np.int32)
    return str(path)


def test_hdf5_batches_cross_file_boundaries(tmp_path):
    write_h5(tmp_path / 'a.h5', 0, 4)
    b = write_h5(tmp_path / 'b.h5', 100, 5)
    (tmp_path / 'list.txt').write_text('a.h5\n%s\n' % b)      # relative to the list file's folder, and absolute
    layer, top = hdf5_layer(str(tmp_path / 'list.txt'), 3)
    assert top[0].shape == (3, 2) and top[1].shape == (3,)
    seq = [0, 1, 2, 3, 100, 101, 102, 103, 104]
    got = np.concatenate([forward(layer, top)[1] for _ in range(6)])
    np.testing.assert_array_equal(got, (seq * 2))
    caffeine.set_random_seed(1)
    layer, top = hdf5_layer(str(tmp_path / 'list.txt'), 3, extra='shuffle: true')
    got = np.concatenate([forward(layer, top)[1] for _ in range(3)])
    assert sorted(got) == seq           # one pass: every row once, in some order
    d = forward(layer, top)[0]
    np.testing.assert_array_equal(d[:, 0], d[:, 1])


def test_hdf5_errors(tmp_path):
    write_h5(tmp_path / 'a.h5', 0, 4)
    with pytest.raises(DataError) as e:
        hdf5_layer(str(tmp_path / 'nolist.txt'), 2)
    assert one_line(e).startswith("layer 'h5' (HDF5Data): cannot read HDF5 list file")
    (tmp_path / 'l1.txt').write_text('a.h5\nmissing.h5\n')
    with pytest.raises(DataError) as e:
        hdf5_layer(str(tmp_path / 'l1.txt'), 2)
    assert 'l1.txt:2' in one_line(e) and 'missing.h5' in one_line(e)
    (tmp_path / 'l2.txt').write_text('a.h5\n')
    with pytest.raises(DataError) as e:
        hdf5_layer(str(tmp_path / 'l2.txt'), 2, ('data', 'weights'))
    s = one_line(e)
    assert s.startswith("layer 'h5' (HDF5Data): ") and 'a.h5' in s and "no dataset 'weights'" in s
    (tmp_path / 'empty.txt').write_text('\n')
    with pytest.raises(DataError, match='names no files'):
        hdf5_layer(str(tmp_path / 'empty.txt'), 2)
    with h5py.File(tmp_path / 'bad.h5', 'w') as f:
        f['data'] = np.zeros((3, 2))
        f['label'] = np.zeros(4)
    (tmp_path / 'l3.txt').write_text('bad.h5\n')
    with pytest.raises(DataError, match="'label' has 4 rows but 'data' has 3"):
        hdf5_layer(str(tmp_path / 'l3.txt'), 2)


def test_hdf5_output(tmp_path):
    out = tmp_path / 'sub' / 'out.h5'
    lp = layer_param('name: "o" type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param { file_name: "%s" }' % out)
    layer = create_layer(lp, TEST)
    d, l = Blob(2, 3, 2, 2), Blob(2)
    d.data[...] = np.arange(24).reshape(2, 3, 2, 2)
    l.data[...] = [5, 6]
    layer.SetUp([d, l], [])
    layer.Forward([d, l], [])
    d.data[...] += 100
    l.data[...] = [7, 8]
    layer.Forward([d, l], [])
    with h5py.File(out, 'r') as f:
        assert f['data'].shape == (4, 3, 2, 2) and f['label'].shape == (4, 1, 1, 1)
        np.testing.assert_array_equal(f['label'][:].ravel(), [5, 6, 7, 8])
        np.testing.assert_array_equal(f['data'][2:], np.arange(24).reshape(2, 3, 2, 2) + 100)
    layer.close()


# -- a Net with a Data layer --------------------------------------------------------------------
def test_net_with_data_layer(tmp_path):
    imgs = images(20, c=1, h=8, w=8)
    src = make_lmdb(tmp_path / 'train_lmdb', imgs, labels=[i % 3 for i in range(20)])
    mean = write_mean(tmp_path / 'mean.binaryproto', np.full((1, 8, 8), 100, np.float32))
    net_text = textwrap.dedent('''
        name: "tiny"
        layer { name: "mnist" type: "Data" top: "data" top: "label"
                include { phase: TRAIN }
                transform_param { scale: 0.00390625 crop_size: 6 mirror: true mean_file: "%s" }
                data_param { source: "%s" batch_size: 4 backend: LMDB } }
        layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    ''' % (mean, src))
    net = caffeine.Net(net_text, caffeine.TRAIN)
    try:
        assert net.blobs['data'].shape == (4, 1, 6, 6)
        labels = []
        for _ in range(6):
            out = net.forward()
            assert np.isfinite(out['loss'])
            labels += list(net.blobs['label'].data)
        assert labels == [i % 3 for i in range(20)] + [0, 1, 2, 0]
        assert np.abs(net.blobs['data'].data).max() <= 155 / 256 + 1e-6
    finally:
        for layer in net.layers:
            if hasattr(layer, 'close'):
                layer.close()


def test_data_multi_solver_skip(tmp_path, monkeypatch):
    src = make_lmdb(tmp_path / 'db', images(8))
    monkeypatch.setattr(runtime, 'solver_count', lambda: 2)
    monkeypatch.setattr(runtime, 'solver_rank', lambda: 1)
    layer, top = data_layer(src, batch=3)                   # TRAIN: rank 1 of 2 reads the odd records
    np.testing.assert_array_equal(forward(layer, top)[1], [1, 3, 5])
    layer.close()
    layer, top = data_layer(src, batch=3, phase=TEST)       # TEST: every record (only rank 0 tests)
    np.testing.assert_array_equal(forward(layer, top)[1], [0, 1, 2])
    layer.close()
