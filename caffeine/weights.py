"""Weights I/O: .caffemodel (binary NetParameter) and Caffe's HDF5 layout.

Loading never executes code: a caffemodel is parsed as a protobuf message and
an HDF5 file is read as plain datasets.  Weights are copied by layer name,
as Caffe's CopyTrainedLayersFrom does (fine-tuning copies the layers whose
names match; a matching name with a different shape is an error).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from .errors import WeightsError
from .proto import caffe_pb2
from .upgrade import upgrade_net_weights
from .utils import atomic_write

log = logging.getLogger('caffeine')

_HDF5_MAGIC = b'\x89HDF\r\n\x1a\n'


def is_hdf5(path):
    if str(path).endswith('.h5'):
        return True
    try:
        with open(path, 'rb') as f:
            return f.read(8) == _HDF5_MAGIC
    except OSError:
        return False


# -- BlobProto <-> arrays -----------------------------------------------------
def blob_proto_shape(bp):
    """The shape a BlobProto describes (its ``shape``, else legacy num/channels/height/width)."""
    if bp.HasField('shape'):
        return tuple(int(d) for d in bp.shape.dim)
    if bp.HasField('num') or bp.HasField('channels') or bp.HasField('height') or bp.HasField('width'):
        return (bp.num, bp.channels, bp.height, bp.width)
    n = len(bp.data) or len(bp.double_data) or (_raw_values(bp).size if bp.HasField('raw_data') else 0)
    return (n,)


# NVIDIA/caffe (NVCaffe) keeps blobs as raw bytes of its storage type (BlobProto
# raw_data_type 10, raw_data 12): fp16 models load as float32.
_RAW_DTYPES = {caffe_pb2.FLOAT16: '<f2', caffe_pb2.FLOAT: '<f4', caffe_pb2.DOUBLE: '<f8'}


def _raw_values(bp):
    dtype = _RAW_DTYPES.get(bp.raw_data_type)
    if dtype is None:
        raise WeightsError('blob proto raw_data of type %s: only FLOAT16, FLOAT and DOUBLE are weights'
                           % caffe_pb2.Type.Name(bp.raw_data_type) if bp.raw_data_type in caffe_pb2.Type.values()
                           else 'blob proto raw_data of unknown type %d' % bp.raw_data_type)
    if len(bp.raw_data) % np.dtype(dtype).itemsize:
        raise WeightsError('blob proto raw_data of %d bytes is not a whole number of %s values'
                           % (len(bp.raw_data), caffe_pb2.Type.Name(bp.raw_data_type)))
    return np.frombuffer(bp.raw_data, dtype=dtype)


def blob_proto_to_array(bp, diff=False):
    """A BlobProto's values (or diff) as the **float32** array a Blob holds, shaped:
    how the Net's weights and the solver's history are read.  pycaffe's
    ``caffeine.io.blobproto_to_array`` returns float64 (and takes ``return_diff``)."""
    shape = blob_proto_shape(bp)
    if diff:
        vals = bp.double_diff if len(bp.double_diff) else bp.diff
    elif not len(bp.data) and not len(bp.double_data) and bp.HasField('raw_data'):
        vals = _raw_values(bp)
    else:
        vals = bp.double_data if len(bp.double_data) else bp.data
    arr = np.array(vals, dtype=np.float32)
    count = int(np.prod(shape)) if shape else 1
    if arr.size != count:
        raise WeightsError('blob proto has %d values for shape %s (count %d)' % (arr.size, list(shape), count))
    return arr.reshape(shape)


def array_to_blob_proto(arr, diff=None, proto=None):
    """A float32 array (and its diff) into a BlobProto (a new one, or ``proto``)."""
    proto = proto if proto is not None else caffe_pb2.BlobProto()
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    proto.shape.dim.extend(arr.shape)
    proto.data.extend(arr.ravel())
    if diff is not None:
        proto.diff.extend(np.ascontiguousarray(diff, dtype=np.float32).ravel())
    return proto


def _legacy_shape(shape, i):
    n = len(shape)
    if i >= n or i < -n:
        return 1
    return shape[i]


def shape_equals_proto(shape, bp):
    """Caffe's Blob::ShapeEquals, legacy 4-D blob fields included."""
    if bp.HasField('num') or bp.HasField('channels') or bp.HasField('height') or bp.HasField('width'):
        return (len(shape) <= 4 and _legacy_shape(shape, -4) == bp.num and _legacy_shape(shape, -3) == bp.channels
                and _legacy_shape(shape, -2) == bp.height and _legacy_shape(shape, -1) == bp.width)
    return tuple(shape) == tuple(int(d) for d in bp.shape.dim)


# -- reading ------------------------------------------------------------------
def read_caffemodel(path):
    """The NetParameter in a binary .caffemodel, upgraded from V0/V1 layers if needed."""
    param = caffe_pb2.NetParameter()
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise WeightsError('%s: no such weights file' % path)
    except IsADirectoryError:
        raise WeightsError('%s: is a directory, not a weights file' % path)
    if not data:
        raise WeightsError('%s: the weights file is empty (0 bytes)' % path)
    try:
        param.ParseFromString(data)
    except Exception as e:
        raise WeightsError('%s: not a valid .caffemodel (binary NetParameter): %s' % (path, e))
    upgrade_net_weights(param, str(path))
    return param


def copy_trained_layers_from(net, path):
    """Copy weights by layer name from a local .caffemodel or .caffemodel.h5 file
    (``zoo:NAME`` is resolved to a file by the caller: caffeine.zoo.resolve_weights)."""
    path = os.fspath(path)
    if is_hdf5(path):
        return load_hdf5(net, path)
    return copy_trained_layers_from_param(net, read_caffemodel(path), source=path)


def copy_trained_layers_from_param(net, param, source='<weights>'):
    """Copy each source layer's blobs into the net's layer of the same name.

    Returns a dict with the lists 'copied', 'ignored' (source layers the net lacks) and
    'ignored_weights' (those of them that hold weights).
    """
    copied, ignored, ignored_weights = [], [], []
    for sl in param.layer:
        name = sl.name
        if name not in net.layer_dict:
            if len(sl.blobs):
                log.info('Ignoring source layer %s', name)
                ignored_weights.append(name)
            ignored.append(name)
            continue
        target = net.layer_dict[name].blobs
        if len(sl.blobs) == 0 and len(target) == 0:
            continue
        if len(target) != len(sl.blobs):
            raise WeightsError('%s: incompatible number of blobs for layer %r: the net has %d, the weights have %d'
                               % (source, name, len(target), len(sl.blobs)))
        log.debug('Copying source layer %s', name)
        for j, (tb, bp) in enumerate(zip(target, sl.blobs)):
            if not shape_equals_proto(tb.shape, bp):
                raise WeightsError(
                    "%s: cannot copy param %d weights from layer %r: shape mismatch, source %s vs target %s; "
                    "rename the layer to learn it from scratch" % (source, j, name, list(blob_proto_shape(bp)), list(tb.shape)))
            tb.data[...] = blob_proto_to_array(bp).reshape(tb.shape)
        copied.append(name)
    return {'copied': copied, 'ignored': ignored, 'ignored_weights': ignored_weights}


def layers_without_weights(net, copied):
    """Names of the net's layers with parameters that none of ``copied`` (layer names the
    weights filled) covers; a parameter shared from another layer counts as its owner's."""
    copied = set(copied)
    names = net.layer_names
    missing = []
    for i, layer in enumerate(net.layers):
        if not layer.blobs or names[i] in copied:
            continue
        for pid in net.param_id_vecs[i]:
            owner = net.param_owners[pid]
            owner_layer = names[net.param_layer_indices[owner if owner >= 0 else pid][0]]
            if owner_layer not in copied:
                missing.append(names[i])
                break
    return missing


def check_weights_cover(net, copied, sources, how='pass allow_missing=True'):
    """Raise a one-line WeightsError when a layer with parameters got no weights from
    ``sources`` (file names): scoring it would use its random initialization."""
    missing = layers_without_weights(net, copied)
    if missing:
        shown = ', '.join('%s (%s)' % (n, net.layer_dict[n].type) for n in missing[:6])
        more = ' and %d more' % (len(missing) - 6) if len(missing) > 6 else ''
        raise WeightsError('%s: no weights for %d layer(s) of net %r that have parameters: %s%s (the file covers '
                           'part of the net or was cut short; %s to use them as initialized)'
                           % (', '.join(sources), len(missing), net.name, shown, more, how))


# -- writing ------------------------------------------------------------------
def net_to_proto(net, write_diff=False):
    """A NetParameter with the net's layers and their blobs (Caffe's Net::ToProto)."""
    param = caffe_pb2.NetParameter()
    param.name = net.name
    for lp, layer in zip(net.param.layer, net.layers):
        out = param.layer.add()
        out.CopyFrom(lp)
        del out.blobs[:]
        for b in layer.blobs:
            bp = out.blobs.add()
            bp.shape.dim.extend(b.shape)
            bp.data.extend(b.host_data().ravel())
            if write_diff:
                bp.diff.extend(b.host_diff().ravel())
    return param


# protobuf wire format: a tag is (field number << 3 | wire type); 2 is length-delimited
def varint(n):
    """``n`` as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number, pieces):
    """One length-delimited field (a submessage, or a packed repeated scalar) as a list of pieces:
    its tag and length, then ``pieces`` (bytes or buffers) themselves, never copied."""
    size = sum(memoryview(p).nbytes for p in pieces)
    return [varint(number << 3 | 2) + varint(size)] + pieces


def field_bytes(number, payload):
    """One length-delimited field (tag, length, ``payload``) as bytes: for writing protobuf
    fields by number, e.g. a fork's field that this schema numbers differently."""
    return b''.join(_field(number, [payload]))


_LAYER_FIELD = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name['layer'].number
_BLOBS_FIELD = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name['blobs'].number
_SHAPE_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name['shape'].number
_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name['data'].number
_DIFF_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name['diff'].number


def _blob_pieces(blob, write_diff):
    """A serialized BlobProto: data (and diff) as packed little-endian float32, then the shape."""
    shape = caffe_pb2.BlobShape()
    shape.dim.extend(blob.shape)
    pieces = []
    for number, arr in [(_DATA_FIELD, blob.host_data())] + ([(_DIFF_FIELD, blob.host_diff())] if write_diff else []):
        if arr.size:    # protobuf writes no empty packed field
            values = np.ascontiguousarray(arr, dtype='<f4').reshape(-1)
            pieces += _field(number, [memoryview(values).cast('B')])
    pieces += _field(_SHAPE_FIELD, [shape.SerializeToString()])
    return pieces


def _layer_pieces(lp, blobs, write_diff):
    """A serialized LayerParameter with ``blobs``, its fields in field-number order as protobuf writes them."""
    head, tail = caffe_pb2.LayerParameter(), caffe_pb2.LayerParameter()
    head.CopyFrom(lp)
    tail.CopyFrom(lp)
    for fd, _ in lp.ListFields():
        (head if fd.number >= _BLOBS_FIELD else tail).ClearField(fd.name)
    pieces = [head.SerializeToString()]
    for b in blobs:
        pieces += _field(_BLOBS_FIELD, _blob_pieces(b, write_diff))
    return pieces + [tail.SerializeToString()]


def caffemodel_pieces(net, write_diff=False):
    """The bytes of ``net_to_proto(net, write_diff).SerializeToString()``, as a list of pieces to
    write in turn: the parameters go out as the packed float32 buffers they already are, without
    protobuf's repeated-float fields (a Python float per value) or a copy of the whole file."""
    pieces = [caffe_pb2.NetParameter(name=net.name).SerializeToString()]
    for lp, layer in zip(net.param.layer, net.layers):
        pieces += _field(_LAYER_FIELD, _layer_pieces(lp, layer.blobs, write_diff))
    return pieces


def save_caffemodel(net, filename, write_diff=False):
    pieces = caffemodel_pieces(net, write_diff)
    with atomic_write(filename, 'wb') as f:
        for p in pieces:
            f.write(p)


def save_hdf5(net, filename, write_diff=False):
    """Caffe's HDF5 weight layout: /data/<layer>/<i> (and /diff/<layer>/<i>)."""
    import h5py
    with atomic_write(filename, 'wb') as f:
        with h5py.File(f, 'w') as h:
            data = h.create_group('data')
            diff = h.create_group('diff') if write_diff else None
            for layer_id, (name, layer) in enumerate(zip(net.layer_names, net.layers)):
                # a group for every layer, with or without parameters, as Caffe's Net::ToHDF5
                g = data.require_group(name)
                gd = diff.require_group(name) if diff is not None else None
                for j, b in enumerate(layer.blobs):
                    pid = net.param_id_vecs[layer_id][j]
                    if net.param_owners[pid] == -1:
                        g.create_dataset(str(j), data=b.host_data())
                    if gd is not None:
                        gd.create_dataset(str(j), data=b.host_diff())


def load_hdf5(net, filename):
    import h5py
    copied, ignored, ignored_weights = [], [], []
    try:
        h = h5py.File(filename, 'r')
    except (OSError, FileNotFoundError) as e:
        raise WeightsError('%s: cannot open HDF5 weights (%s)' % (filename, e))
    with h:
        if 'data' not in h:
            raise WeightsError('%s: no /data group: not a Caffe HDF5 weights file' % filename)
        data = h['data']
        for name in data:
            if name not in net.layer_dict:
                log.info('Ignoring source layer %s', name)
                ignored.append(name)
                if len(data[name]):
                    ignored_weights.append(name)
                continue
            layer_id = net.layer_names.index(name)
            target = net.layer_dict[name].blobs
            g = data[name]
            if len(g) > len(target):
                raise WeightsError('%s: incompatible number of blobs for layer %r: the net has %d, the file has %d'
                                   % (filename, name, len(target), len(g)))
            for j, tb in enumerate(target):
                key = str(j)
                if key not in g:
                    pid = net.param_id_vecs[layer_id][j]
                    if net.param_owners[pid] != -1:
                        continue
                    raise WeightsError('%s: incompatible number of blobs for layer %r: param %d missing'
                                       % (filename, name, j))
                arr = np.asarray(g[key], dtype=np.float32)
                if tuple(arr.shape) != tuple(tb.shape):
                    raise WeightsError("%s: cannot copy param %d weights from layer %r: shape mismatch, source %s vs "
                                       "target %s; rename the layer to learn it from scratch"
                                       % (filename, j, name, list(arr.shape), list(tb.shape)))
                tb.data[...] = arr
            copied.append(name)
    return {'copied': copied, 'ignored': ignored, 'ignored_weights': ignored_weights}


def copy_weights_into(net, files, allow_missing=False):
    """Net(..., weights): copy each file into ``net``.  In the TEST phase a layer with
    parameters that no file fills is an error (it would score with random weights) unless
    ``allow_missing``.  Weights made for another net (some of their layers are not in this
    one: net surgery, fine-tuning) fill what matches and the rest is logged."""
    copied, ignored = [], []
    for w in files:
        res = copy_trained_layers_from(net, w)
        copied += res['copied']
        ignored += res['ignored_weights']
    if net.phase != caffe_pb2.TEST or allow_missing:
        return
    if ignored:
        missing = layers_without_weights(net, copied)
        if missing:
            log.info('Layers of %r left as initialized (the weights are for another net): %s',
                     net.name, ', '.join(missing))
        return
    check_weights_cover(net, copied, [os.fspath(w) for w in files])
