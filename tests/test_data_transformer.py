"""DataTransformer against values computed by hand, element by element, as Caffe's loops do."""
import numpy as np
import pytest

from caffeine.data.transformer import DataTransformer, Rand, load_mean_file
from caffeine.errors import DataError
from caffeine.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def write_mean(path, mean, legacy=True):
    bp = caffe_pb2.BlobProto()
    c, h, w = mean.shape
    if legacy:
        bp.num, bp.channels, bp.height, bp.width = 1, c, h, w
    else:
        bp.shape.dim.extend([1, c, h, w])
    bp.data.extend(mean.ravel().tolist())
    path.write_bytes(bp.SerializeToString())
    return str(path)


def caffe_reference(x, mean, mean_values, scale, crop, h_off, w_off, mirror):
    """Caffe's DataTransformer::Transform(datum) loop, literally (float32)."""
    c_, h_, w_ = x.shape
    height = width = crop if crop else None
    if not crop:
        height, width = h_, w_
    out = np.zeros((c_, height, width), np.float32)
    s = np.float32(scale)
    for c in range(c_):
        for h in range(height):
            for w in range(width):
                e = np.float32(x[c, h_off + h, w_off + w])
                tw = width - 1 - w if mirror else w
                if mean is not None:
                    v = (e - np.float32(mean[c, h_off + h, w_off + w])) * s
                elif mean_values is not None:
                    mv = mean_values[0] if len(mean_values) == 1 else mean_values[c]
                    v = (e - np.float32(mv)) * s
                else:
                    v = e * s
                out[c, h, tw] = v
    return out


def tp(**kw):
    p = caffe_pb2.TransformationParameter()
    for k, v in kw.items():
        if k == 'mean_value':
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.fixture
def batch():
    rng = np.random.default_rng(5)
    return rng.integers(0, 256, (6, 3, 7, 8), dtype=np.uint8)


def test_mean_file_crop_mirror_scale_train(tmp_path, batch):
    mean = np.random.default_rng(6).uniform(0, 255, (3, 7, 8)).astype(np.float32)
    mf = write_mean(tmp_path / 'mean.binaryproto', mean)
    t = DataTransformer(tp(mean_file=mf, crop_size=4, mirror=True, scale=0.00390625), TRAIN)
    rand = t.draw(np.random.default_rng(0), 6)
    assert rand.mirror.any() and not rand.mirror.all()
    out = np.empty((6, 3, 4, 4), np.float32)
    t.transform_batch(batch, rand, out)
    for i in range(6):
        ho, wo = t._offsets(rand, i, 7, 8)
        assert 0 <= ho <= 3 and 0 <= wo <= 4
        ref = caffe_reference(batch[i], mean, None, 0.00390625, 4, ho, wo, rand.mirror[i])
        np.testing.assert_array_equal(out[i], ref)      # bit-exact: same float32 operations


def test_hand_computed_small_case(tmp_path):
    # one 1x3x3 image, mean file, crop 2 at offset (1, 0), mirrored, scale 2
    x = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], np.uint8)
    mean = np.array([[[0, 0, 0], [1, 1, 1], [2, 2, 2]]], np.float32)
    mf = write_mean(tmp_path / 'm.binaryproto', mean, legacy=False)
    t = DataTransformer(tp(mean_file=mf, crop_size=2, mirror=True, scale=2), TRAIN)
    rand = Rand(np.array([True]), np.array([[0.9, 0.0]]))     # h_off = int(0.9*2) = 1, w_off = 0
    out = np.empty((1, 1, 2, 2), np.float32)
    t.transform_batch(x[None], rand, out)
    # crop rows 1..2, cols 0..1: [[4,5],[7,8]] - mean [[1,1],[2,2]] = [[3,4],[5,6]]; *2; mirrored
    np.testing.assert_array_equal(out[0, 0], [[8, 6], [12, 10]])


def test_test_phase_centre_crop_no_mirror(batch):
    t = DataTransformer(tp(crop_size=3, mirror=True, mean_value=[10, 20, 30], scale=0.5), TEST)
    assert not t.needs_rand()
    rand = t.draw(np.random.default_rng(0), 6)
    assert not rand.mirror.any() and rand.u is None
    out = np.empty((6, 3, 3, 3), np.float32)
    t.transform_batch(batch, rand, out)
    for i in range(6):
        ref = caffe_reference(batch[i], None, [10, 20, 30], 0.5, 3, (7 - 3) // 2, (8 - 3) // 2, False)
        np.testing.assert_array_equal(out[i], ref)


def test_single_mean_value_and_no_crop(batch):
    t = DataTransformer(tp(mean_value=[100]), TRAIN)
    out = np.empty((6, 3, 7, 8), np.float32)
    t.transform_batch(batch, t.draw(np.random.default_rng(0), 6), out)
    np.testing.assert_array_equal(out, batch.astype(np.float32) - 100)


def test_float_input_and_list_path(batch):
    t = DataTransformer(tp(crop_size=5, mirror=True, scale=3), TRAIN)
    rand = t.draw(np.random.default_rng(9), 6)
    f = batch.astype(np.float32) / 7
    out1 = np.empty((6, 3, 5, 5), np.float32)
    out2 = np.empty((6, 3, 5, 5), np.float32)
    t.transform_batch(f, rand, out1)
    t.transform_list(list(f), rand, out2)
    np.testing.assert_array_equal(out1, out2)
    for i in range(6):
        ho, wo = t._offsets(rand, i, 7, 8)
        np.testing.assert_array_equal(out1[i], caffe_reference(f[i], None, None, 3, 5, ho, wo, rand.mirror[i]))


def test_list_of_different_sizes():
    rng = np.random.default_rng(1)
    items = [rng.integers(0, 255, (3, h, w), dtype=np.uint8) for h, w in [(6, 6), (9, 7), (5, 12)]]
    t = DataTransformer(tp(crop_size=5), TEST)
    out = np.empty((3, 3, 5, 5), np.float32)
    t.transform_list(items, None, out)
    for i, x in enumerate(items):
        ho, wo = (x.shape[1] - 5) // 2, (x.shape[2] - 5) // 2
        np.testing.assert_array_equal(out[i], x[:, ho:ho + 5, wo:wo + 5])
    t2 = DataTransformer(tp(), TEST)
    with pytest.raises(DataError, match='images of several sizes need crop_size'):
        t2.transform_list(items, None, np.empty((3, 3, 6, 6), np.float32))


def test_every_crop_offset_reachable():
    t = DataTransformer(tp(crop_size=2, mirror=True), TRAIN)
    rand = t.draw(np.random.default_rng(0), 2000)
    offs = {t._offsets(rand, i, 4, 5) for i in range(2000)}
    assert offs == {(h, w) for h in range(3) for w in range(4)}
    assert 0.4 < rand.mirror.mean() < 0.6


def test_errors(tmp_path):
    mf = write_mean(tmp_path / 'm.binaryproto', np.zeros((3, 4, 4), np.float32))
    with pytest.raises(DataError, match='mean_file or mean_value, not both'):
        DataTransformer(tp(mean_file=mf, mean_value=[1]), TRAIN)
    with pytest.raises(DataError, match='force_color and force_gray'):
        DataTransformer(tp(force_color=True, force_gray=True), TRAIN)
    with pytest.raises(DataError, match='cannot read mean_file'):
        DataTransformer(tp(mean_file=str(tmp_path / 'none.binaryproto')), TRAIN)
    (tmp_path / 'junk').write_bytes(b'\xff\xff\xff')
    with pytest.raises(DataError, match='not a BlobProto'):
        load_mean_file(str(tmp_path / 'junk'))
    t = DataTransformer(tp(mean_file=mf), TRAIN, where="layer 'x' (Data): ")
    with pytest.raises(DataError, match=r"^layer 'x' \(Data\): the image is 3x5x5 .* mean_file is 3x4x4"):
        t.transform_batch(np.zeros((1, 3, 5, 5), np.uint8), None, np.empty((1, 3, 5, 5), np.float32))
    t = DataTransformer(tp(mean_value=[1, 2]), TRAIN)
    with pytest.raises(DataError, match='2 mean_value'):
        t.transform_batch(np.zeros((1, 3, 2, 2), np.uint8), None, np.empty((1, 3, 2, 2), np.float32))
    t = DataTransformer(tp(crop_size=9), TRAIN)
    with pytest.raises(DataError, match='crop_size 9 is larger than the image'):
        t.output_shape(3, 8, 8)


def test_single_transform_helper():
    t = DataTransformer(tp(crop_size=2, scale=2), TEST)
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    np.testing.assert_array_equal(t.transform(x), x[:, 1:3, 1:3] * 2.0)
