"""caffeine.proto.caffe_pb2 against BVLC's caffe.proto (as JSON in ../shared) and its own source.

Skipped, not failed, when ../shared (or $CAFFEINE_SHARED) is absent.
"""
import filecmp
import json
import os
import struct
from pathlib import Path

import pytest

from caffeine.proto import caffe_pb2


def _shared():
    env = os.environ.get('CAFFEINE_SHARED')
    root = Path(env) if env else Path(__file__).resolve().parents[2] / 'shared'
    return root if (root / 'caffe-reference').is_dir() else None


SHARED = _shared()
SCHEMA_PATH = SHARED / 'caffe-reference' / 'caffe_proto_schema.json' if SHARED else None
SCHEMA = json.loads(SCHEMA_PATH.read_text()) if SCHEMA_PATH and SCHEMA_PATH.exists() else None
needs_schema = pytest.mark.skipif(SCHEMA is None, reason='../shared/caffe-reference/caffe_proto_schema.json absent')

FD = caffe_pb2.DESCRIPTOR

# Caffe forks' messages and fields, beyond BVLC's schema (see the note at the top of
# protos/caffe.proto): message -> {field: number}; every BVLC field stays as BVLC has it.
FORK_MESSAGES = {  # weiliu89/caffe (SSD), with its field numbers
    'PermuteParameter': {'order': 1},
    'NormalizeParameter': {'across_spatial': 1, 'scale_filler': 2, 'channel_shared': 3, 'eps': 4},
    'PriorBoxParameter': {'min_size': 1, 'max_size': 2, 'aspect_ratio': 3, 'flip': 4, 'clip': 5,
                          'variance': 6, 'img_size': 7, 'img_h': 8, 'img_w': 9, 'step': 10,
                          'step_h': 11, 'step_w': 12, 'offset': 13},
    'DetectionOutputParameter': {'num_classes': 1, 'share_location': 2, 'background_label_id': 3,
                                 'nms_param': 4, 'save_output_param': 5, 'code_type': 6,
                                 'keep_top_k': 7, 'variance_encoded_in_target': 8,
                                 'confidence_threshold': 9, 'visualize': 10,
                                 'visualize_threshold': 11, 'save_file': 12,
                                 'clip': 1000, 'normalized_bbox': 1001},  # OpenCV's two
    'NonMaximumSuppressionParameter': {'nms_threshold': 1, 'top_k': 2, 'eta': 3},
    'MultiBoxLossParameter': {'loc_loss_type': 1, 'conf_loss_type': 2, 'loc_weight': 3, 'num_classes': 4,
                              'share_location': 5, 'match_type': 6, 'overlap_threshold': 7,
                              'use_prior_for_matching': 8, 'background_label_id': 9,
                              'use_difficult_gt': 10, 'do_neg_mining': 11, 'neg_pos_ratio': 12,
                              'neg_overlap': 13, 'code_type': 14, 'encode_variance_in_target': 16,
                              'map_object_to_agnostic': 17, 'ignore_cross_boundary_bbox': 18,
                              'bp_inside': 19, 'mining_type': 20, 'nms_param': 21, 'sample_size': 22,
                              'use_prior_for_nms': 23},
    'SaveOutputParameter': {'output_directory': 1, 'output_name_prefix': 2, 'output_format': 3,
                            'label_map_file': 4, 'name_size_file': 5, 'num_test_image': 6,
                            'resize_param': 7},
    'ResizeParameter': {'prob': 1, 'resize_mode': 2, 'height': 3, 'width': 4, 'pad_mode': 5,
                        'pad_value': 6, 'interp_mode': 7, 'height_scale': 8, 'width_scale': 9},
}
FORK_ENUMS = {'PriorBoxParameter.CodeType': {'CORNER': 1, 'CENTER_SIZE': 2, 'CORNER_SIZE': 3},
              'MultiBoxLossParameter.LocLossType': {'L2': 0, 'SMOOTH_L1': 1},
              'MultiBoxLossParameter.ConfLossType': {'SOFTMAX': 0, 'LOGISTIC': 1},
              'MultiBoxLossParameter.MatchType': {'BIPARTITE': 0, 'PER_PREDICTION': 1},
              'MultiBoxLossParameter.MiningType': {'NONE': 0, 'MAX_NEGATIVE': 1, 'HARD_EXAMPLE': 2},
              'ResizeParameter.Resize_mode': {'WARP': 1, 'FIT_SMALL_SIZE': 2, 'FIT_LARGE_SIZE_AND_PAD': 3},
              'ResizeParameter.Pad_mode': {'CONSTANT': 1, 'MIRRORED': 2, 'REPEAT_NEAREST': 3},
              'ResizeParameter.Interp_mode': {'LINEAR': 1, 'AREA': 2, 'NEAREST': 3, 'CUBIC': 4,
                                              'LANCZOS4': 5}}
FORK_FIELDS = {  # fork fields added to BVLC messages
    'LayerParameter': {'permute_param': 202, 'prior_box_param': 203,
                       'detection_output_param': 204, 'norm_param': 206,
                       'multibox_loss_param': 2201},   # weiliu89's 201 is OpenCV's proposal_param
    'PoolingParameter': {'ceil_mode': 1001},  # OpenCV's, at its own number (13 is round_mode)
}


def _type_code(name):
    from google.protobuf.descriptor import FieldDescriptor as F
    return {'double': F.TYPE_DOUBLE, 'float': F.TYPE_FLOAT, 'int64': F.TYPE_INT64, 'uint64': F.TYPE_UINT64,
            'int32': F.TYPE_INT32, 'uint32': F.TYPE_UINT32, 'bool': F.TYPE_BOOL, 'string': F.TYPE_STRING,
            'bytes': F.TYPE_BYTES, 'message': F.TYPE_MESSAGE, 'enum': F.TYPE_ENUM,
            'fixed32': F.TYPE_FIXED32, 'fixed64': F.TYPE_FIXED64, 'sint32': F.TYPE_SINT32,
            'sint64': F.TYPE_SINT64, 'sfixed32': F.TYPE_SFIXED32, 'sfixed64': F.TYPE_SFIXED64}[name]


def _all_messages():
    out = {}

    def walk(desc, prefix):
        for m in desc:
            name = prefix + m.name
            out[name] = m
            walk(m.nested_types, name + '.')
    walk(FD.message_types_by_name.values(), '')
    return out


def _all_enums():
    out = {e.name: e for e in FD.enum_types_by_name.values()}
    for mname, m in _all_messages().items():
        for e in m.enum_types:
            out[mname + '.' + e.name] = e
    return out


def _rel(full_name):
    assert full_name.startswith('caffe.')
    return full_name[len('caffe.'):]


def _label(fd):
    return 'repeated' if fd.is_repeated else 'required' if fd.is_required else 'optional'


def _f32(x):
    return struct.unpack('<f', struct.pack('<f', float(x)))[0]


def _default_matches(fd, text):
    value = fd.default_value
    t = fd.type
    if t == fd.TYPE_ENUM:
        return fd.enum_type.values_by_number[value].name == text
    if t == fd.TYPE_BOOL:
        return value is (text == 'true') and text in ('true', 'false')
    if t == fd.TYPE_FLOAT:
        return _f32(value) == _f32(text)
    if t == fd.TYPE_DOUBLE:
        return value == float(text)
    if t == fd.TYPE_STRING:
        return value == text
    if t == fd.TYPE_BYTES:
        return value == text.encode()
    return value == int(text)


@needs_schema
def test_schema_package_and_syntax():
    assert SCHEMA['package'] == 'caffe' == FD.package
    assert SCHEMA['syntax'] == 'proto2'


@needs_schema
def test_schema_messages_are_exactly_caffes():
    assert set(_all_messages()) == set(SCHEMA['messages']) | set(FORK_MESSAGES)
    assert len(SCHEMA['messages']) == 63


@needs_schema
def test_schema_enums_are_exactly_caffes():
    enums = _all_enums()
    assert set(enums) == set(SCHEMA['enums']) | set(FORK_ENUMS)
    for name, values in FORK_ENUMS.items():
        assert {v.name: v.number for v in enums[name].values} == values, name
    for name, values in SCHEMA['enums'].items():
        assert {v.name: v.number for v in enums[name].values} == values, name
    # a few values spelled out
    assert SCHEMA['enums']['Phase'] == {'TRAIN': 0, 'TEST': 1}
    assert caffe_pb2.V1LayerParameter.LayerType.Value('DECONVOLUTION') == 39
    assert caffe_pb2.SolverParameter.SolverType.Value('ADAM') == 5


@needs_schema
@pytest.mark.parametrize('message', sorted(SCHEMA['messages']) if SCHEMA else ['-'])
def test_schema_fields(message):
    desc = _all_messages()[message]
    want = SCHEMA['messages'][message]
    assert set(desc.fields_by_name) == set(want) | set(FORK_FIELDS.get(message, {})), message
    for name, spec in want.items():
        fd = desc.fields_by_name[name]
        where = '%s.%s' % (message, name)
        assert fd.number == spec['number'], where
        assert _label(fd) == spec['label'], where
        assert fd.type == _type_code(spec['type']), where
        if spec['type'] == 'message':
            assert _rel(fd.message_type.full_name) == spec['type_name'], where
        elif spec['type'] == 'enum':
            assert _rel(fd.enum_type.full_name) == spec['type_name'], where
        else:
            assert 'type_name' not in spec, where
        if 'default' in spec:
            assert fd.has_default_value, where
            assert _default_matches(fd, spec['default']), (where, fd.default_value, spec['default'])
        else:
            assert not fd.has_default_value, where
        opts = fd.GetOptions()
        packed = opts.packed if opts.HasField('packed') else None
        assert packed == spec.get('packed'), where


def test_fork_messages_and_fields_have_the_forks_numbers():
    msgs = _all_messages()
    for message, fields in list(FORK_MESSAGES.items()) + list(FORK_FIELDS.items()):
        desc = msgs[message]
        got = {name: desc.fields_by_name[name].number for name in fields}
        assert got == fields, message
    for message in FORK_MESSAGES:
        assert set(msgs[message].fields_by_name) == set(FORK_MESSAGES[message]), message
    f = caffe_pb2.PriorBoxParameter.DESCRIPTOR.fields_by_name
    assert f['clip'].default_value is False and f['flip'].default_value is True
    assert _f32(caffe_pb2.NormalizeParameter.DESCRIPTOR.fields_by_name['eps'].default_value) == _f32(1e-10)


@needs_schema
def test_schema_spot_values():
    # facts a regenerated module must keep, whatever the JSON says
    f = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    assert f['type'].default_value == 'SGD' and f['type'].number == 40
    assert _f32(f['delta'].default_value) == _f32(1e-8)
    assert f['random_seed'].default_value == -1
    assert caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name['dim'].is_packed
    assert caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name['layer'].number == 100
    assert caffe_pb2.V1LayerParameter.DESCRIPTOR.fields_by_name['blob_share_mode'].number == 1002


def test_caffe_pb2_is_not_stale(tmp_path):
    pytest.importorskip('grpc_tools.protoc')
    from caffeine.proto import regen
    out = regen.generate(str(tmp_path))
    committed = Path(caffe_pb2.__file__).with_name('caffe_pb2.py')
    assert Path(out).read_bytes() == committed.read_bytes(), (
        'caffeine/proto/caffe_pb2.py is stale: run python -m caffeine.proto.regen')
    assert filecmp.cmp(out, committed, shallow=False)
