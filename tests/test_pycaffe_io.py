"""caffeine.io (pycaffe's caffe.io) and caffeine.runtime / caffeine.glog (pycaffe's process-wide settings, Timer, logging)."""
import time

import numpy as np
import pytest
from PIL import Image

import caffeine as caffe
from caffeine.proto import caffe_pb2


# -- Transformer -------------------------------------------------------------

def _transformer(shape=(1, 3, 4, 5)):
    t = caffe.io.Transformer({'data': shape})
    t.set_transpose('data', (2, 0, 1))
    t.set_channel_swap('data', (2, 1, 0))
    t.set_raw_scale('data', 255)
    t.set_mean('data', np.array([104., 117., 123.]))
    t.set_input_scale('data', 0.5)
    return t


def test_transformer_preprocess_matches_hand_computation():
    t = _transformer()
    im = np.zeros((4, 5, 3), np.float32)
    im[0, 0] = (0.1, 0.2, 0.3)          # R, G, B of the top-left pixel
    im[3, 4] = (1.0, 0.0, 0.5)
    before = im.copy()
    out = t.preprocess('data', im)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    # channel 0 is B (swap), x255, minus mean[0]=104, x0.5
    assert out[0, 0, 0] == pytest.approx((0.3 * 255 - 104) * 0.5, rel=1e-6)
    assert out[1, 0, 0] == pytest.approx((0.2 * 255 - 117) * 0.5, rel=1e-6)
    assert out[2, 0, 0] == pytest.approx((0.1 * 255 - 123) * 0.5, rel=1e-6)
    assert out[0, 3, 4] == pytest.approx((0.5 * 255 - 104) * 0.5, rel=1e-6)
    assert out[2, 3, 4] == pytest.approx((1.0 * 255 - 123) * 0.5, rel=1e-6)
    assert out[1, 1, 1] == pytest.approx(-117 * 0.5)
    np.testing.assert_array_equal(im, before)   # the caller's image is untouched


def test_transformer_round_trip_and_batch_squeeze():
    rng = np.random.RandomState(0)
    t = _transformer()
    im = rng.rand(4, 5, 3).astype(np.float32)
    caffe_in = t.preprocess('data', im)
    back = t.deprocess('data', caffe_in[np.newaxis])   # 1 x K x H x W as net blobs hold it
    assert back.shape == (4, 5, 3)
    np.testing.assert_allclose(back, im, atol=1e-5)


def test_transformer_full_mean_and_resize():
    rng = np.random.RandomState(1)
    t = caffe.io.Transformer({'data': (2, 3, 4, 5)})
    t.set_transpose('data', (2, 0, 1))
    mean = rng.rand(3, 4, 5).astype(np.float32)
    t.set_mean('data', mean)
    im = np.full((8, 10, 3), 0.25, np.float32)       # resized to 4 x 5 (a constant stays constant)
    out = t.preprocess('data', im)
    np.testing.assert_allclose(out, 0.25 - mean, rtol=1e-6)
    # a 2-D mean is H x W, broadcast over channels
    t2 = caffe.io.Transformer({'data': [1, 1, 4, 5]})
    t2.set_mean('data', np.ones((4, 5)))
    t2.set_transpose('data', (2, 0, 1))
    np.testing.assert_allclose(t2.preprocess('data', np.full((4, 5, 1), 3.0)), np.full((1, 4, 5), 2.0))


def test_transformer_checks_and_messages():
    t = caffe.io.Transformer({'data': (1, 3, 4, 5)})
    with pytest.raises(Exception, match='is not one of the net inputs'):
        t.set_raw_scale('nope', 1)
    with pytest.raises(Exception, match='Transpose order needs to have the same number of dimensions'):
        t.set_transpose('data', (1, 0))
    with pytest.raises(Exception, match='Channel swap needs to have the same number of dimensions'):
        t.set_channel_swap('data', (1, 0))
    with pytest.raises(ValueError, match='Mean channels incompatible with input.'):
        t.set_mean('data', np.zeros(4))
    with pytest.raises(ValueError, match='Mean shape incompatible with input shape.'):
        t.set_mean('data', np.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match='Mean shape invalid'):
        t.set_mean('data', np.zeros((1, 3, 4, 5)))
    with pytest.raises(caffe.CaffeineError):
        t.preprocess('label', np.zeros((4, 5, 3)))


# -- images ------------------------------------------------------------------

def test_load_image_rgb_gray_alpha_and_16bit(tmp_path):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 14
    Image.fromarray(rgb, 'RGB').save(tmp_path / 'rgb.png')
    im = caffe.io.load_image(str(tmp_path / 'rgb.png'))
    assert im.dtype == np.float32 and im.shape == (2, 3, 3)
    np.testing.assert_allclose(im, rgb / 255.0, rtol=1e-6)

    gray = caffe.io.load_image(str(tmp_path / 'rgb.png'), color=False)
    assert gray.shape == (2, 3, 1)
    lum = (rgb / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(gray[:, :, 0], lum, rtol=1e-5)

    g = np.array([[0, 128, 255]], np.uint8)
    Image.fromarray(g, 'L').save(tmp_path / 'g.png')
    assert caffe.io.load_image(str(tmp_path / 'g.png'), color=False).shape == (1, 3, 1)
    tiled = caffe.io.load_image(str(tmp_path / 'g.png'))
    assert tiled.shape == (1, 3, 3)
    np.testing.assert_allclose(tiled[0, 1], [128 / 255.0] * 3, rtol=1e-6)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a.png')
    a = caffe.io.load_image(str(tmp_path / 'a.png'))
    assert a.shape == (2, 2, 3)
    np.testing.assert_allclose(a[..., 0], 1.0)
    np.testing.assert_allclose(a[..., 1:], 0.0)

    g16 = np.array([[0, 65535, 32768]], np.uint16)
    Image.fromarray(g16).save(tmp_path / 'g16.png')
    im16 = caffe.io.load_image(str(tmp_path / 'g16.png'), color=False)
    np.testing.assert_allclose(im16[0, :, 0], [0, 1, 32768 / 65535.0], rtol=1e-6)

    with pytest.raises(OSError, match='no such file'):
        caffe.io.load_image(str(tmp_path / 'missing.png'))
    (tmp_path / 'bad.png').write_bytes(b'not an image')
    with pytest.raises(caffe.CaffeineError, match='cannot read image'):
        caffe.io.load_image(str(tmp_path / 'bad.png'))


def test_resize_image_bilinear_nearest_and_range():
    # f(y, x) = 2y + x is linear: bilinear resampling (pixel centres aligned,
    # edges clamped) samples it at y, x = clip((i + 0.5) * in/out - 0.5)
    im = np.array([[0, 1], [2, 3]], np.float32)[:, :, None] * 100 + 50    # range [50, 350]
    up = caffe.io.resize_image(im, (4, 4))
    assert up.shape == (4, 4, 1) and up.dtype == np.float32
    c = np.array([0, 0.25, 0.75, 1])
    np.testing.assert_allclose(up[:, :, 0], (2 * c[:, None] + c[None, :]) * 100 + 50, rtol=1e-6)
    big = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    down = caffe.io.resize_image(big, (2, 2))
    np.testing.assert_allclose(down[:, :, 0], [[2.5, 4.5], [10.5, 12.5]], rtol=1e-6)   # 2x2 block means
    near = caffe.io.resize_image(big, (2, 2), interp_order=0)
    np.testing.assert_array_equal(near[:, :, 0], [[5, 7], [13, 15]])
    near_up = caffe.io.resize_image(im, (4, 4), interp_order=0)
    np.testing.assert_array_equal(near_up[:, :, 0], np.repeat(np.repeat(im[:, :, 0], 2, 0), 2, 1))
    # constant image, any channel count, non-square target
    const = caffe.io.resize_image(np.full((3, 3, 5), 7.0), (6, 2))
    assert const.shape == (6, 2, 5) and (const == 7).all()
    rgb = np.random.RandomState(0).rand(5, 7, 3) * 255
    out = caffe.io.resize_image(rgb, (10, 3))
    assert out.shape == (10, 3, 3) and out.min() >= rgb.min() - 1e-3 and out.max() <= rgb.max() + 1e-3
    cubic = caffe.io.resize_image(rgb, (10, 14), interp_order=3)
    assert cubic.shape == (10, 14, 3)


def test_oversample_order_and_values():
    im = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2)
    im2 = im + 1000
    crops = caffe.io.oversample([im, im2], (2, 3))
    assert crops.shape == (20, 2, 3, 2) and crops.dtype == np.float32
    expect = [im[0:2, 0:3], im[0:2, 2:5], im[2:4, 0:3], im[2:4, 2:5], im[1:3, 1:4]]
    expect += [e[:, ::-1] for e in expect]
    for i, e in enumerate(expect):
        np.testing.assert_array_equal(crops[i], e)
        np.testing.assert_array_equal(crops[10 + i], e + 1000)
    # pycaffe's centre for odd margins rounds down
    odd = caffe.io.oversample([np.arange(25.).reshape(5, 5, 1)], (2, 2))
    np.testing.assert_array_equal(odd[4, :, :, 0], [[6, 7], [11, 12]])


# -- protos ------------------------------------------------------------------

def test_blobproto_round_trip_and_legacy_shape():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    diff = -arr
    blob = caffe.io.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_allclose(caffe.io.blobproto_to_array(blob), arr, rtol=1e-6)
    np.testing.assert_allclose(caffe.io.blobproto_to_array(blob, return_diff=True), diff, rtol=1e-6)

    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    legacy.data.extend([1, 2, 3, 4, 5, 6])
    out = caffe.io.blobproto_to_array(legacy)
    assert out.shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(out.ravel(), [1, 2, 3, 4, 5, 6])

    s = caffe.io.arraylist_to_blobprotovector_str([arr, np.ones((5,))])
    assert isinstance(s, bytes)
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert len(back) == 2 and back[1].shape == (5,)
    np.testing.assert_allclose(back[0], arr, rtol=1e-6)


def test_datum_round_trip():
    u8 = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    d = caffe.io.array_to_datum(u8, label=7)
    assert (d.channels, d.height, d.width, d.label) == (2, 3, 4, 7)
    assert d.data == u8.tobytes() and len(d.float_data) == 0
    back = caffe.io.datum_to_array(d)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, u8)

    f = np.linspace(-1, 1, 12).reshape(3, 2, 2)
    d2 = caffe.io.array_to_datum(f)
    assert len(d2.data) == 0 and len(d2.float_data) == 12 and not d2.HasField('label')
    np.testing.assert_allclose(caffe.io.datum_to_array(d2), f, rtol=1e-6)
    d3 = caffe_pb2.Datum()
    d3.ParseFromString(d2.SerializeToString())
    np.testing.assert_allclose(caffe.io.datum_to_array(d3), f, rtol=1e-6)

    with pytest.raises(ValueError, match='Incorrect array shape'):
        caffe.io.array_to_datum(np.zeros((2, 2)))
    short = caffe_pb2.Datum(channels=1, height=2, width=2, data=b'abc')
    with pytest.raises(ValueError, match='needs 4'):
        caffe.io.datum_to_array(short)


def test_pycaffe_readers_give_float64_and_caffeines_own_give_float32():
    """caffe.io's readers keep pycaffe's dtypes; the Net's and the data layers' readers give what a Blob holds."""
    from caffeine.data.datum import datum_to_array as layer_datum_to_array
    from caffeine.weights import blob_proto_to_array
    vals = np.array([[0.1, -2.5], [3.25, 1e-3]])
    bp = caffe.io.array_to_blobproto(vals)
    for arr, dtype in ((caffe.io.blobproto_to_array(bp), np.float64), (blob_proto_to_array(bp), np.float32)):
        assert arr.dtype == dtype and arr.shape == (2, 2)
        np.testing.assert_array_equal(arr, vals.astype(np.float32))     # a BlobProto stores float32
    d = caffe.io.array_to_datum(vals.reshape(1, 2, 2))
    assert caffe.io.datum_to_array(d).dtype == np.float64
    assert layer_datum_to_array(d).dtype == np.float32
    u8 = caffe.io.array_to_datum(np.arange(4, dtype=np.uint8).reshape(1, 2, 2))
    pycaffe_u8, layer_u8 = caffe.io.datum_to_array(u8), layer_datum_to_array(u8)
    assert pycaffe_u8.dtype == layer_u8.dtype == np.uint8
    assert pycaffe_u8.flags.writeable and not layer_u8.flags.writeable


def test_encoded_datum_decodes_to_bgr(tmp_path):
    import io as _io
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200        # red
    rgb[..., 2] = 10         # a little blue
    buf = _io.BytesIO()
    Image.fromarray(rgb, 'RGB').save(buf, format='PNG')
    d = caffe_pb2.Datum(encoded=True, data=buf.getvalue(), label=3)
    arr = caffe.io.datum_to_array(d)
    assert arr.shape == (3, 2, 3) and arr.dtype == np.uint8
    assert (arr[0] == 10).all() and (arr[1] == 0).all() and (arr[2] == 200).all()


# -- caffeine.runtime, caffeine.glog ------------------------------------------

def test_parallel_singletons_timer_and_log(caplog):
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    try:
        caffe.set_solver_count(4)
        caffe.set_solver_rank(2)
        caffe.set_multiprocess(True)
        assert caffe.solver_count() == 4 and caffe.solver_rank() == 2
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        caffe.set_multiprocess(False)
    with pytest.raises(caffe.CaffeineError):
        caffe.set_solver_count(0)

    t = caffe.Timer()
    assert t.ms == 0
    t.start()
    time.sleep(0.02)
    t.stop()
    ms = t.ms
    assert 15 < ms < 2000
    assert t.ms == ms        # stopped: reading again gives the same value

    import logging
    logger = logging.getLogger('caffeine')
    level = logger.level
    try:
        caffe.init_log(0)
        assert logger.level == logging.INFO
        with caplog.at_level('INFO', logger='caffeine'):
            caffe.log('hello from pycaffe')
        assert 'hello from pycaffe' in caplog.text
        caffe.init_log(2)
        assert logger.level == logging.ERROR
    finally:
        logger.setLevel(level)
