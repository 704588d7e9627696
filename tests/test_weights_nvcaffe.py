"""NVIDIA/caffe's raw blobs (BlobProto raw_data_type 10, raw_data 12): half-precision
(and float, double) caffemodels load as float32; other storage types are refused."""
import numpy as np
import pytest

import caffeine
from caffeine.errors import WeightsError
from caffeine.proto import caffe_pb2
from caffeine.weights import blob_proto_shape, blob_proto_to_array


def raw_blob(a, type_, shape=True):
    bp = caffe_pb2.BlobProto(raw_data_type=type_, raw_data=np.ascontiguousarray(a).tobytes())
    if shape:
        bp.shape.dim.extend(a.shape)
    return bp


@pytest.mark.parametrize('dtype, type_', [('<f2', caffe_pb2.FLOAT16), ('<f4', caffe_pb2.FLOAT),
                                           ('<f8', caffe_pb2.DOUBLE)])
def test_raw_blobs_read_as_float32(dtype, type_):
    a = np.array([[1.5, -2.25, 65504], [1e-3, 0, -7]], dtype)
    got = blob_proto_to_array(raw_blob(a, type_))
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, a.astype(np.float32))
    assert blob_proto_shape(raw_blob(a, type_, shape=False)) == (6,)


def test_raw_blob_errors():
    with pytest.raises(WeightsError, match='raw_data of type INT'):
        blob_proto_to_array(raw_blob(np.arange(4, dtype='<i4'), caffe_pb2.INT))
    bp = caffe_pb2.BlobProto(raw_data_type=caffe_pb2.FLOAT16, raw_data=b'abc')
    with pytest.raises(WeightsError, match='3 bytes is not a whole number of FLOAT16'):
        blob_proto_to_array(bp)


def test_half_precision_caffemodel_loads_into_a_net(tmp_path):
    text = ('input: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
            'layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
            'convolution_param { num_output: 2 kernel_size: 3 } }')
    w = (np.arange(36).reshape(2, 2, 3, 3) / 7 - 2).astype(np.float16)
    b = np.array([0.5, -1.25], np.float16)
    layer = caffe_pb2.NetParameter().layer.add(name='c', type='Convolution')
    layer.blobs.add().CopyFrom(raw_blob(w, caffe_pb2.FLOAT16))
    layer.blobs.add().CopyFrom(raw_blob(b, caffe_pb2.FLOAT16))
    model = caffe_pb2.NetParameter(layer=[layer])
    (tmp_path / 'half.caffemodel').write_bytes(model.SerializeToString())
    net = caffeine.Net(text, caffeine.TEST, weights=str(tmp_path / 'half.caffemodel'))
    np.testing.assert_array_equal(net.params['c'][0].data, w.astype(np.float32))
    np.testing.assert_array_equal(net.params['c'][1].data, b.astype(np.float32))
