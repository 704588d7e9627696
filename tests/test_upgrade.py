"""Upgrading Caffe's older formats: V0 and V1 nets, data transformation fields,
input fields, BatchNorm params, solver_type, binary weights, and the
``caffeine upgrade`` command."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from caffeine import upgrade as up
from caffeine.cli import main as cli_main
from caffeine.errors import CaffeineError, PrototxtError
from caffeine.proto import caffe_pb2
from caffeine.prototxt import parse_text, read_net_param, read_solver_param


def net(text):
    return parse_text(text, caffe_pb2.NetParameter())


def solver(text):
    return parse_text(text, caffe_pb2.SolverParameter())


def assert_same(got, want_text):
    want = parse_text(want_text, type(got)())
    assert text_format.MessageToString(got) == text_format.MessageToString(want)


# ---------------------------------------------------------------------------
# V1 -> current
# ---------------------------------------------------------------------------
V1_LENET = '''
name: "LeNet"
layers {
  name: "mnist"
  type: DATA
  top: "data"
  top: "label"
  data_param { source: "examples/mnist/mnist_train_lmdb" backend: LMDB batch_size: 64 }
  transform_param { scale: 0.00390625 }
  include: { phase: TRAIN }
}
layers {
  name: "conv1"
  type: CONVOLUTION
  bottom: "data"
  top: "conv1"
  blobs_lr: 1
  blobs_lr: 2
  weight_decay: 1
  weight_decay: 0
  convolution_param {
    num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layers {
  name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  blobs_lr: 1 blobs_lr: 2
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers {
  name: "accuracy" type: ACCURACY bottom: "ip1" bottom: "label" top: "accuracy"
  include: { phase: TEST }
}
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss" loss_weight: 0.5 }
'''

LENET_UPGRADED = '''
name: "LeNet"
layer {
  name: "mnist" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "examples/mnist/mnist_train_lmdb" batch_size: 64 backend: LMDB }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" }
    bias_filler { type: "constant" }
  }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy"
  include { phase: TEST }
}
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" loss_weight: 0.5 }
'''


def test_v1_lenet_upgrades_to_layer_format(caplog):
    p = net(V1_LENET)
    with caplog.at_level(logging.INFO, logger='caffeine'):
        assert up.upgrade_net_param(p, 'lenet_v1.prototxt') is True
    assert_same(p, LENET_UPGRADED)
    assert len(p.layers) == 0 and len(p.layer) == 7
    assert [l.type for l in p.layer] == ['Data', 'Convolution', 'Pooling', 'InnerProduct', 'ReLU', 'Accuracy',
                                         'SoftmaxWithLoss']
    conv = p.layer[1]
    assert [(s.lr_mult, s.decay_mult) for s in conv.param] == [(1.0, 1.0), (2.0, 0.0)]
    assert not p.layer[3].param[0].HasField('decay_mult')
    assert list(p.layer[6].loss_weight) == [0.5]
    msgs = [r.getMessage() for r in caplog.records]
    assert ('Attempting to upgrade input file specified using deprecated V1LayerParameter: lenet_v1.prototxt'
            in msgs)


def test_upgrade_is_idempotent_and_current_nets_are_untouched():
    p = net(V1_LENET)
    up.upgrade_net_param(p)
    before = p.SerializeToString()
    assert up.upgrade_net_param(p) is False
    assert p.SerializeToString() == before
    assert up.net_needs_upgrade(p) is False


def test_v1_param_names_share_modes_include_exclude_and_sub_messages():
    p = net('''
    layers {
      name: "ip" type: INNER_PRODUCT bottom: "x" top: "y"
      param: "w_shared" param: "b_shared"
      blob_share_mode: PERMISSIVE
      blobs_lr: 3
      include { phase: TRAIN stage: "a" } exclude { min_level: 2 } exclude { not_stage: "b" }
      inner_product_param { num_output: 7 bias_term: false }
      transform_param { mirror: true }
      loss_param { ignore_label: 4 }
    }
    layers { name: "t" type: THRESHOLD bottom: "y" top: "z" threshold_param { threshold: 0.25 } }
    layers { type: NONE }
    ''')
    assert up.upgrade_net_param(p, 'x.prototxt')
    ip = p.layer[0]
    assert ip.type == 'InnerProduct'
    assert len(ip.param) == 2
    assert ip.param[0].name == 'w_shared' and ip.param[1].name == 'b_shared'
    assert ip.param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert not ip.param[1].HasField('share_mode')
    assert ip.param[0].lr_mult == 3.0 and not ip.param[1].HasField('lr_mult')
    assert ip.include[0].phase == caffe_pb2.TRAIN and list(ip.include[0].stage) == ['a']
    assert ip.exclude[0].min_level == 2 and list(ip.exclude[1].not_stage) == ['b']
    assert ip.inner_product_param.num_output == 7 and ip.inner_product_param.bias_term is False
    assert ip.transform_param.mirror is True
    assert ip.loss_param.ignore_label == 4
    assert p.layer[1].type == 'Threshold' and p.layer[1].threshold_param.threshold == 0.25
    assert p.layer[2].HasField('type') and p.layer[2].type == ''


V1_EXPECTED_TYPES = {
    'ABSVAL': 'AbsVal', 'ACCURACY': 'Accuracy', 'ARGMAX': 'ArgMax', 'BNLL': 'BNLL', 'CONCAT': 'Concat',
    'CONTRASTIVE_LOSS': 'ContrastiveLoss', 'CONVOLUTION': 'Convolution', 'DECONVOLUTION': 'Deconvolution',
    'DATA': 'Data', 'DROPOUT': 'Dropout', 'DUMMY_DATA': 'DummyData', 'EUCLIDEAN_LOSS': 'EuclideanLoss',
    'ELTWISE': 'Eltwise', 'EXP': 'Exp', 'FLATTEN': 'Flatten', 'HDF5_DATA': 'HDF5Data',
    'HDF5_OUTPUT': 'HDF5Output', 'HINGE_LOSS': 'HingeLoss', 'IM2COL': 'Im2col', 'IMAGE_DATA': 'ImageData',
    'INFOGAIN_LOSS': 'InfogainLoss', 'INNER_PRODUCT': 'InnerProduct', 'LRN': 'LRN',
    'MEMORY_DATA': 'MemoryData', 'MULTINOMIAL_LOGISTIC_LOSS': 'MultinomialLogisticLoss', 'MVN': 'MVN',
    'POOLING': 'Pooling', 'POWER': 'Power', 'RELU': 'ReLU', 'SIGMOID': 'Sigmoid',
    'SIGMOID_CROSS_ENTROPY_LOSS': 'SigmoidCrossEntropyLoss', 'SILENCE': 'Silence', 'SOFTMAX': 'Softmax',
    'SOFTMAX_LOSS': 'SoftmaxWithLoss', 'SPLIT': 'Split', 'SLICE': 'Slice', 'TANH': 'TanH',
    'WINDOW_DATA': 'WindowData', 'THRESHOLD': 'Threshold', 'NONE': '',
}


def test_every_v1_layer_type_has_its_caffe_name():
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert set(enum.keys()) == set(V1_EXPECTED_TYPES)
    for name, want in V1_EXPECTED_TYPES.items():
        assert up.upgrade_v1_layer_type(enum.Value(name)) == want


def test_v1_sub_message_list_covers_every_v1_param_field():
    v1_params = {f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
                 if f.name.endswith('_param') and f.message_type is not None}
    assert set(up.V1_PARAM_MESSAGES) == v1_params
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert all(name in layer_fields for name in up.V1_PARAM_MESSAGES)


def test_layer_and_layers_together_is_an_error():
    p = net('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }')
    with pytest.raises(PrototxtError) as e:
        up.upgrade_net_param(p, 'mixed.prototxt')
    msg = str(e.value)
    assert msg.startswith('mixed.prototxt: refusing to upgrade inconsistent NetParameter')
    assert '\n' not in msg


# ---------------------------------------------------------------------------
# data transformation fields
# ---------------------------------------------------------------------------
def test_old_transform_fields_move_into_transform_param(caplog):
    p = net('''
    layers { name: "d" type: DATA top: "data"
             data_param { source: "db" batch_size: 8 scale: 0.5 mean_file: "m.binaryproto" crop_size: 227
                          mirror: true } }
    layers { name: "i" type: IMAGE_DATA top: "img"
             image_data_param { source: "list.txt" crop_size: 10 new_height: 32 }
             transform_param { mean_value: 104 } }
    layers { name: "w" type: WINDOW_DATA top: "win" window_data_param { source: "w.txt" mirror: false } }
    layers { name: "plain" type: DATA top: "x" data_param { source: "db2" } }
    ''')
    assert up.net_needs_data_upgrade(p)
    with caplog.at_level(logging.INFO, logger='caffeine'):
        steps = up.apply_net_upgrades(p, 'old_data.prototxt')
    assert steps == [up.STEP_DATA, up.STEP_V1]
    d, i, w, plain = p.layer
    assert (d.transform_param.scale, d.transform_param.mean_file, d.transform_param.crop_size,
            d.transform_param.mirror) == (0.5, 'm.binaryproto', 227, True)
    for f in ('scale', 'mean_file', 'crop_size', 'mirror'):
        assert not d.data_param.HasField(f)
    assert d.data_param.source == 'db' and d.data_param.batch_size == 8
    assert i.transform_param.crop_size == 10 and list(i.transform_param.mean_value) == [104.0]
    assert not i.image_data_param.HasField('crop_size') and i.image_data_param.new_height == 32
    assert w.transform_param.HasField('mirror') and w.transform_param.mirror is False
    assert not w.window_data_param.HasField('mirror')
    # Caffe touches transform_param of every data layer once it upgrades the net
    assert plain.HasField('transform_param') and plain.transform_param.ByteSize() == 0
    assert any('deprecated transformation parameters: old_data.prototxt' in r.getMessage()
               for r in caplog.records)


def test_old_transform_fields_in_current_layers_stay_as_caffe_leaves_them(caplog):
    p = net('layer { name: "d" type: "Data" top: "x" data_param { source: "db" scale: 0.5 } }')
    with caplog.at_level(logging.WARNING, logger='caffeine'):
        assert up.upgrade_net_param(p, 'n.prototxt') is False
    assert p.layer[0].data_param.scale == 0.5 and not p.layer[0].HasField('transform_param')
    assert any('deprecated and ignored' in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# V0 -> V1 -> current
# ---------------------------------------------------------------------------
V0_NET = '''
name: "v0net"
input: "data"
input_dim: 10 input_dim: 3 input_dim: 32 input_dim: 32
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers {
  layer { name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4 group: 2 biasterm: false
          weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 }
          blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 }
  bottom: "pad1" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 }
         bottom: "pool1" top: "norm1" }
layers { layer { name: "fc" type: "innerproduct" num_output: 10 } bottom: "norm1" top: "fc" }
layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.4 } bottom: "fc" top: "fc" }
layers { layer { name: "prob" type: "softmax" } bottom: "fc" top: "prob" }
'''

V0_UPGRADED = '''
name: "v0net"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 32 dim: 32 } } }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 96 bias_term: false pad: 2 kernel_size: 11 group: 2 stride: 4
                      weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0.1 } }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
        lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.4 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
'''


def test_v0_net_with_padding_layers(caplog):
    p = net(V0_NET)
    assert up.net_needs_v0_to_v1_upgrade(p)
    with caplog.at_level(logging.INFO, logger='caffeine'):
        steps = up.apply_net_upgrades(p, 'v0.prototxt')
    assert steps == [up.STEP_V0, up.STEP_V1, up.STEP_INPUT]
    assert_same(p, V0_UPGRADED)
    assert [l.name for l in p.layer] == ['input', 'conv1', 'relu1', 'pool1', 'norm1', 'fc', 'drop', 'prob']
    assert list(p.layer[1].convolution_param.pad) == [2]
    assert p.layer[3].pooling_param.pad == 1
    assert p.layer[3].bottom[0] == 'conv1'       # the padding layer's input, not "pad2"
    msgs = [r.getMessage() for r in caplog.records]
    assert 'Attempting to upgrade input file specified using deprecated V0LayerParameter: v0.prototxt' in msgs
    assert 'Attempting to upgrade input file specified using deprecated input fields: v0.prototxt' in msgs


def test_v0_to_v1_step_alone():
    p = net(V0_NET)
    v1, ok = up.upgrade_v0_net(p, 'v0.prototxt')
    assert ok
    assert [l.type for l in v1.layers] == [caffe_pb2.V1LayerParameter.LayerType.Value(t) for t in
                                          ('CONVOLUTION', 'RELU', 'POOLING', 'LRN', 'INNER_PRODUCT',
                                           'DROPOUT', 'SOFTMAX')]
    assert list(v1.layers[0].blobs_lr) == [1.0, 2.0] and list(v1.layers[0].weight_decay) == [1.0, 0.0]
    assert list(v1.input) == ['data'] and list(v1.input_dim) == [10, 3, 32, 32]


def test_v0_data_layer_fields():
    p = net('''
    name: "d"
    force_backward: true
    layers { layer { name: "data" type: "data" source: "train_db" meanfile: "mean.binaryproto" batchsize: 256
                     cropsize: 227 mirror: true scale: 0.5 rand_skip: 3 } top: "data" top: "label" }
    layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 4 shuffle_images: true
                     new_height: 64 new_width: 48 rand_skip: 1 } top: "i" top: "il" }
    layers { layer { name: "win" type: "window_data" source: "w.txt" batchsize: 128 det_fg_threshold: 0.6
                     det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" }
             top: "w" top: "wl" }
    layers { layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 2 } top: "h" }
    layers { layer { name: "cat" type: "concat" concat_dim: 0 } bottom: "data" bottom: "i" top: "cat" }
    layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "o.h5" } } bottom: "h" }
    layers { layer { name: "ig" type: "infogain_loss" source: "H.binaryproto" } bottom: "cat" bottom: "label" }
    ''')
    assert up.upgrade_net_param(p, 'v0data.prototxt')
    assert p.force_backward is True and p.name == 'd'
    data, img, win, h5, cat, out, ig = p.layer
    assert data.type == 'Data' and data.data_param.source == 'train_db' and data.data_param.batch_size == 256
    assert data.data_param.rand_skip == 3
    tp = data.transform_param
    assert (tp.mean_file, tp.crop_size, tp.mirror, tp.scale) == ('mean.binaryproto', 227, True, 0.5)
    ip = img.image_data_param
    assert img.type == 'ImageData'
    assert (ip.source, ip.batch_size, ip.shuffle, ip.new_height, ip.new_width, ip.rand_skip) == (
        'list.txt', 4, True, 64, 48, 1)
    wp = win.window_data_param
    assert win.type == 'WindowData'
    assert (wp.source, wp.batch_size, wp.context_pad, wp.crop_mode) == ('w.txt', 128, 16, 'square')
    assert np.allclose([wp.fg_threshold, wp.bg_threshold, wp.fg_fraction], [0.6, 0.4, 0.3])
    assert h5.type == 'HDF5Data' and h5.hdf5_data_param.source == 'h5.txt' and h5.hdf5_data_param.batch_size == 2
    assert cat.type == 'Concat' and cat.concat_param.HasField('concat_dim') and cat.concat_param.concat_dim == 0
    assert out.type == 'HDF5Output' and out.hdf5_output_param.file_name == 'o.h5'
    assert ig.type == 'InfogainLoss' and ig.infogain_loss_param.source == 'H.binaryproto'


def test_v0_parameter_for_the_wrong_type_is_dropped_with_a_warning(caplog):
    p = net('input: "x" layers { layer { name: "r" type: "relu" num_output: 5 } bottom: "x" top: "y" }')
    with caplog.at_level(logging.WARNING, logger='caffeine'):
        assert up.upgrade_net_param(p, 'w.prototxt')
    assert p.layer[0].type == 'ReLU' and not p.layer[0].HasField('convolution_param')
    text = ' '.join(r.getMessage() for r in caplog.records)
    assert 'unknown parameter num_output for layer type relu' in text


@pytest.mark.parametrize('text,fragment', [
    ('layers { layer { name: "a" type: "warp_drive" } top: "x" }', "unknown V0 layer type 'warp_drive'"),
    ('layers { layer { name: "a" type: "relu" } bottom: "nowhere" top: "x" }', "unknown blob input 'nowhere'"),
    ('input: "x" layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "px" } '
     'layers { layer { name: "r" type: "relu" } bottom: "px" top: "y" }', 'only conv and pool layers'),
])
def test_v0_errors_name_the_source(text, fragment):
    with pytest.raises(PrototxtError) as e:
        up.upgrade_net_param(net(text), 'bad_v0.prototxt')
    msg = str(e.value)
    assert msg.startswith('bad_v0.prototxt: ') and fragment in msg and '\n' not in msg


# ---------------------------------------------------------------------------
# input fields
# ---------------------------------------------------------------------------
def test_input_dim_groups_of_four_become_one_input_layer_first():
    p = net('''
    name: "two_inputs"
    input: "data" input: "label"
    input_dim: 2 input_dim: 3 input_dim: 5 input_dim: 7
    input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
    layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }
    ''')
    assert up.upgrade_net_param(p, 'in.prototxt')
    assert len(p.input) == 0 and len(p.input_dim) == 0 and len(p.input_shape) == 0
    assert [l.name for l in p.layer] == ['input', 'relu']
    inp = p.layer[0]
    assert inp.type == 'Input' and list(inp.top) == ['data', 'label']
    assert [list(s.dim) for s in inp.input_param.shape] == [[2, 3, 5, 7], [2, 1, 1, 1]]


def test_input_shape_becomes_input_layer():
    p = net('input: "a" input_shape { dim: 4 dim: 6 } layer { name: "s" type: "Sigmoid" bottom: "a" top: "b" }')
    assert up.upgrade_net_param(p)
    assert_same(p, 'layer { name: "input" type: "Input" top: "a" input_param { shape { dim: 4 dim: 6 } } } '
                   'layer { name: "s" type: "Sigmoid" bottom: "a" top: "b" }')


def test_input_without_shape_is_dropped_like_caffes_legacy_caffemodels():
    p = net('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert up.upgrade_net_param(p)
    assert len(p.input) == 0 and [l.name for l in p.layer] == ['r']


@pytest.mark.parametrize('text,fragment', [
    ('input: "a" input_dim: 1 input_dim: 2 input_dim: 3', 'input_dim has 3 values'),
    ('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4', 'input_dim has 4 values'),
    ('input: "a" input: "b" input_shape { dim: 1 }', '1 input_shape(s) given for 2 input(s)'),
    ('input: "a" input_shape { dim: 1 dim: 2 dim: 3 dim: 4 } input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 5',
     'disagree'),
])
def test_contradictory_input_fields_are_errors(text, fragment):
    with pytest.raises(PrototxtError) as e:
        up.upgrade_net_param(net(text), 'inputs.prototxt')
    assert str(e.value).startswith('inputs.prototxt: ') and fragment in str(e.value)


# ---------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------
def test_batchnorm_old_param_specs_get_zero_lr_and_decay_names_kept():
    p = net('''
    layer { name: "bn0" type: "BatchNorm" bottom: "x" top: "y"
            param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
    layer { name: "bn1" type: "BatchNorm" bottom: "y" top: "z"
            param { name: "m" lr_mult: 1 decay_mult: 1 } param { name: "v" } param { name: "c" lr_mult: 2 } }
    layer { name: "bn2" type: "BatchNorm" bottom: "z" top: "w" param { lr_mult: 1 } }
    layer { name: "ip" type: "InnerProduct" bottom: "w" top: "o"
            param { lr_mult: 1 } param { lr_mult: 2 } param { lr_mult: 3 } }
    ''')
    assert up.net_needs_batch_norm_upgrade(p)
    assert up.apply_net_upgrades(p, 'bn.prototxt') == [up.STEP_BATCHNORM]
    bn0, bn1, bn2, ip = p.layer
    for bn in (bn0, bn1):
        assert [(s.lr_mult, s.decay_mult) for s in bn.param] == [(0.0, 0.0)] * 3
        assert all(s.HasField('lr_mult') and s.HasField('decay_mult') for s in bn.param)
    assert [s.name for s in bn1.param] == ['m', 'v', 'c']
    assert len(bn2.param) == 1 and bn2.param[0].lr_mult == 1.0            # not three specs: untouched
    assert [s.lr_mult for s in ip.param] == [1.0, 2.0, 3.0]               # not BatchNorm: untouched
    assert up.net_needs_batch_norm_upgrade(p)                             # Caffe re-applies it ...
    before = p.SerializeToString()
    assert up.upgrade_net_param(p) is False                               # ... but nothing changes now
    assert p.SerializeToString() == before


# ---------------------------------------------------------------------------
# solvers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('enum,string', [('SGD', 'SGD'), ('NESTEROV', 'Nesterov'), ('ADAGRAD', 'AdaGrad'),
                                         ('RMSPROP', 'RMSProp'), ('ADADELTA', 'AdaDelta'), ('ADAM', 'Adam')])
def test_solver_type_enum_becomes_type_string(enum, string, caplog):
    s = solver('base_lr: 0.01 solver_type: %s' % enum)
    with caplog.at_level(logging.INFO, logger='caffeine'):
        assert up.upgrade_solver_param(s, 'solver.prototxt') is True
    assert s.type == string and s.HasField('type') and not s.HasField('solver_type')
    assert s.base_lr == pytest.approx(0.01)
    assert any("deprecated 'solver_type' field (enum): solver.prototxt" in r.getMessage() for r in caplog.records)


def test_solver_without_solver_type_is_unchanged():
    s = solver('type: "Adam" base_lr: 0.1')
    assert up.upgrade_solver_param(s) is False
    assert s.type == 'Adam'
    s = solver('base_lr: 0.1')
    assert up.upgrade_solver_param(s) is False and not s.HasField('type') and s.type == 'SGD'


def test_solver_type_and_type_disagreeing_is_an_error():
    s = solver('solver_type: ADAM type: "SGD"')
    with pytest.raises(PrototxtError) as e:
        up.upgrade_solver_param(s, 'both.prototxt')
    assert str(e.value) == ('both.prototxt: the deprecated solver_type: ADAM and type: "SGD" disagree; '
                            'give only type')


def test_solver_type_and_type_agreeing_is_accepted():
    s = solver('solver_type: NESTEROV type: "Nesterov"')
    assert up.upgrade_solver_param(s, 'agree.prototxt') is True
    assert s.type == 'Nesterov' and not s.HasField('solver_type')


def test_solver_inline_nets_are_upgraded():
    s = solver('''
    net_param { name: "n" layers { name: "r" type: RELU bottom: "x" top: "y" } }
    test_net_param { input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2 }
    ''')
    steps = up.apply_solver_upgrades(s, 's.prototxt')
    assert steps == ['net_param: ' + up.STEP_V1, 'test_net_param[0]: ' + up.STEP_INPUT]
    assert s.net_param.layer[0].type == 'ReLU' and len(s.net_param.layers) == 0
    assert s.test_net_param[0].layer[0].type == 'Input'


# ---------------------------------------------------------------------------
# binary weights
# ---------------------------------------------------------------------------
def _blob(values, shape):
    b = caffe_pb2.BlobProto()
    b.num, b.channels, b.height, b.width = shape
    b.data.extend(np.asarray(values, np.float32).ravel().tolist())
    return b


def _v1_caffemodel():
    p = caffe_pb2.NetParameter(name='w')
    c = p.layers.add(name='conv', type=caffe_pb2.V1LayerParameter.CONVOLUTION, bottom=['data'], top=['conv'])
    c.blobs.add().CopyFrom(_blob(np.arange(8), (2, 1, 2, 2)))
    c.blobs.add().CopyFrom(_blob([0.5, -0.5], (1, 1, 1, 2)))
    c.blobs_lr.extend([1, 2])
    p.layers.add(name='relu', type=caffe_pb2.V1LayerParameter.RELU, bottom=['conv'], top=['conv'])
    p.input.append('data')
    return p


def _v0_caffemodel():
    p = caffe_pb2.NetParameter(name='w0')
    p.input.append('data')
    l = p.layers.add(bottom=['data'], top=['ip'])
    l.layer.name, l.layer.type, l.layer.num_output = 'ip', 'innerproduct', 3
    l.layer.blobs.add().CopyFrom(_blob(np.arange(6), (1, 1, 3, 2)))
    l.layer.blobs.add().CopyFrom(_blob([1, 2, 3], (1, 1, 1, 3)))
    return p


def test_upgrade_net_weights_keeps_blobs():
    p = _v1_caffemodel()
    assert up.upgrade_net_weights(p, 'old.caffemodel') is True
    assert [l.name for l in p.layer] == ['conv', 'relu'] and len(p.input) == 0
    conv = p.layer[0]
    assert conv.type == 'Convolution' and len(conv.blobs) == 2
    assert list(conv.blobs[0].data) == list(range(8)) and conv.blobs[0].num == 2
    assert list(conv.blobs[1].data) == [0.5, -0.5]
    assert [s.lr_mult for s in conv.param] == [1.0, 2.0]

    p0 = _v0_caffemodel()
    assert up.upgrade_net_weights(p0)
    ip = p0.layer[0]
    assert ip.type == 'InnerProduct' and ip.inner_product_param.num_output == 3
    assert list(ip.blobs[0].data) == list(range(6)) and list(ip.blobs[1].data) == [1, 2, 3]


# ---------------------------------------------------------------------------
# reading through caffeine.prototxt
# ---------------------------------------------------------------------------
def test_read_net_param_upgrades_files(tmp_path, caplog):
    f = tmp_path / 'v1.prototxt'
    f.write_text(V1_LENET)
    with caplog.at_level(logging.INFO, logger='caffeine'):
        p = read_net_param(str(f))
    assert [l.type for l in p.layer][:2] == ['Data', 'Convolution']
    assert any(r.getMessage().endswith('V1LayerParameter: %s' % f) for r in caplog.records)
    raw = read_net_param(str(f), upgrade=False)
    assert len(raw.layers) == 7 and len(raw.layer) == 0


def test_read_solver_param_upgrades_solver_type(tmp_path):
    f = tmp_path / 'solver.prototxt'
    f.write_text('net: "n.prototxt"\nsolver_type: ADAGRAD\n')
    s = read_solver_param(str(f))
    assert s.type == 'AdaGrad' and not s.HasField('solver_type')


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------
def _run_cli(args):
    return CliRunner().invoke(cli_main, args, catch_exceptions=False)


def test_cli_upgrade_net_writes_the_file_and_no_temp_files(tmp_path):
    src = tmp_path / 'lenet_v1.prototxt'
    src.write_text(V1_LENET)
    dst = tmp_path / 'lenet.prototxt'
    res = _run_cli(['upgrade', 'net', str(src), str(dst)])
    assert res.exit_code == 0, res.output
    out_lines = [l for l in res.stdout.splitlines() if l.strip()]
    assert out_lines == ['upgraded net %s -> %s (%s), 7 layers' % (src, dst, up.STEP_V1)]
    assert sorted(os.listdir(tmp_path)) == ['lenet.prototxt', 'lenet_v1.prototxt']
    got = parse_text(dst.read_text(), caffe_pb2.NetParameter())
    assert_same(got, LENET_UPGRADED)
    # a current file is written unchanged
    again = tmp_path / 'again.prototxt'
    res = _run_cli(['upgrade', 'net', str(dst), str(again)])
    assert res.exit_code == 0
    assert 'already in the current format' in res.stdout
    assert again.read_text() == dst.read_text()
    assert sorted(os.listdir(tmp_path)) == ['again.prototxt', 'lenet.prototxt', 'lenet_v1.prototxt']


def test_cli_upgrade_solver(tmp_path):
    src = tmp_path / 's.prototxt'
    src.write_text('net: "n.prototxt"\nbase_lr: 0.01\nsolver_type: RMSPROP\nrms_decay: 0.98\n')
    dst = tmp_path / 'out' / 's2.prototxt'
    res = _run_cli(['upgrade', 'solver', str(src), str(dst)])
    assert res.exit_code == 0, res.output
    assert 'type RMSProp' in res.stdout
    s = parse_text(dst.read_text(), caffe_pb2.SolverParameter())
    assert s.type == 'RMSProp' and not s.HasField('solver_type') and s.net == 'n.prototxt'
    assert s.rms_decay == pytest.approx(0.98)
    assert os.listdir(dst.parent) == ['s2.prototxt']


def test_cli_upgrade_weights(tmp_path):
    src = tmp_path / 'old.caffemodel'
    src.write_bytes(_v1_caffemodel().SerializeToString())
    dst = tmp_path / 'new.caffemodel'
    res = _run_cli(['upgrade', 'weights', str(src), str(dst)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith('upgraded weights %s -> %s (' % (src, dst))
    assert ', 2 layers, 2 blobs, ' in res.stdout
    p = caffe_pb2.NetParameter.FromString(dst.read_bytes())
    assert len(p.layers) == 0 and [l.type for l in p.layer] == ['Convolution', 'ReLU']
    assert list(p.layer[0].blobs[0].data) == list(range(8))
    assert sorted(os.listdir(tmp_path)) == ['new.caffemodel', 'old.caffemodel']


def _subprocess(args, cwd):
    env = dict(os.environ)
    env.pop('CAFFEINE_DEBUG', None)
    return subprocess.run([sys.executable, '-m', 'caffeine'] + args, cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_upgrade_error_is_one_line(tmp_path):
    f = tmp_path / 'mixed.prototxt'
    f.write_text('layers { name: "a" type: RELU }\nlayer { name: "b" type: "ReLU" }\n')
    r = _subprocess(['upgrade', 'net', str(f), str(tmp_path / 'o.prototxt')], tmp_path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('caffeine: error: %s: refusing to upgrade' % f)
    assert sorted(os.listdir(tmp_path)) == ['mixed.prototxt']


def test_cli_weights_rejects_a_text_file(tmp_path):
    f = tmp_path / 'n.prototxt'
    f.write_text('name: "not binary at all"\n')
    with pytest.raises(CaffeineError):
        _run_cli(['upgrade', 'weights', str(f), str(tmp_path / 'o.caffemodel')])
    assert sorted(os.listdir(tmp_path)) == ['n.prototxt']
