"""Upgrading Caffe's older net and solver formats, as Caffe 1.0 does on load.

Caffe (``src/caffe/util/upgrade_proto.cpp``) upgrades every net it reads, text
or binary, in this order:

1. V0 nets (``layers { layer { type: "conv" ... } }``, V0LayerParameter) to V1
   (``layers { type: CONVOLUTION ... }``); ``padding`` layers are folded into
   the ``pad`` of the conv/pool layer that follows them.
2. Data-transformation fields (``scale``, ``mean_file``, ``crop_size``,
   ``mirror``) of V1 Data/ImageData/WindowData layers moved into
   ``transform_param``.
3. V1 layers to the current ``layer { type: "Convolution" ... }``
   (LayerParameter): ``blobs_lr``/``weight_decay``/``param``/``blob_share_mode``
   become ``param { lr_mult decay_mult name share_mode }``.
4. ``input``/``input_dim``/``input_shape`` to one ``Input`` layer named
   "input", placed first.
5. BatchNorm layers that declare three ``param`` specs get ``lr_mult: 0`` and
   ``decay_mult: 0`` in each (their names are kept, for sharing).

Solvers: the ``solver_type`` enum becomes the ``type`` string.

Where Caffe stops with a fatal error, these functions raise a one-line
:class:`~caffeine.errors.PrototxtError` naming the source; where Caffe logs an
error and goes on (a V0 parameter that does not belong to the layer's type),
they log a warning and go on.
"""
from __future__ import annotations

import logging

from .errors import PrototxtError
from .proto import caffe_pb2

log = logging.getLogger('caffeine')

__all__ = [
    'upgrade_net_param', 'upgrade_net_weights', 'upgrade_solver_param',
    'apply_net_upgrades', 'apply_solver_upgrades', 'net_needs_upgrade', 'solver_needs_upgrade',
    'net_needs_v0_to_v1_upgrade', 'upgrade_v0_net', 'upgrade_v0_padding_layers',
    'upgrade_v0_layer_parameter', 'upgrade_v0_layer_type',
    'net_needs_data_upgrade', 'upgrade_net_data_transformation',
    'net_needs_v1_to_v2_upgrade', 'upgrade_v1_net', 'upgrade_v1_layer_parameter', 'upgrade_v1_layer_type',
    'net_needs_input_upgrade', 'upgrade_net_input',
    'net_needs_batch_norm_upgrade', 'upgrade_net_batch_norm',
    'net_needs_fork_crop_upgrade', 'upgrade_net_fork_crops',
    'solver_needs_type_upgrade', 'upgrade_solver_type',
    'V1_LAYER_TYPES', 'V0_LAYER_TYPES', 'V1_PARAM_MESSAGES', 'SOLVER_TYPES',
    'STEP_V0', 'STEP_DATA', 'STEP_V1', 'STEP_INPUT', 'STEP_BATCHNORM', 'STEP_FORK_CROP', 'STEP_SOLVER_TYPE',
]

# Step names, as apply_net_upgrades reports them.
STEP_V0 = 'V0LayerParameter -> V1LayerParameter'
STEP_DATA = 'data transformation fields -> transform_param'
STEP_V1 = 'V1LayerParameter -> LayerParameter'
STEP_INPUT = 'input fields -> Input layer'
STEP_BATCHNORM = 'BatchNorm param specs -> lr_mult 0, decay_mult 0'
STEP_FORK_CROP = 'Crop without crop_param -> offsets from the coordinate maps'
STEP_SOLVER_TYPE = "solver_type (enum) -> type (string)"


def _fail(source, msg):
    raise PrototxtError('%s: %s' % (source, msg))


# --------------------------------------------------------------------------
# V0 -> V1
# --------------------------------------------------------------------------
_V1 = caffe_pb2.V1LayerParameter

#: V0 layer type string -> V1LayerParameter.LayerType name (Caffe's UpgradeV0LayerType).
V0_LAYER_TYPES = {
    'accuracy': 'ACCURACY',
    'bnll': 'BNLL',
    'concat': 'CONCAT',
    'conv': 'CONVOLUTION',
    'data': 'DATA',
    'dropout': 'DROPOUT',
    'euclidean_loss': 'EUCLIDEAN_LOSS',
    'flatten': 'FLATTEN',
    'hdf5_data': 'HDF5_DATA',
    'hdf5_output': 'HDF5_OUTPUT',
    'im2col': 'IM2COL',
    'images': 'IMAGE_DATA',
    'infogain_loss': 'INFOGAIN_LOSS',
    'innerproduct': 'INNER_PRODUCT',
    'lrn': 'LRN',
    'multinomial_logistic_loss': 'MULTINOMIAL_LOGISTIC_LOSS',
    'pool': 'POOLING',
    'relu': 'RELU',
    'sigmoid': 'SIGMOID',
    'softmax': 'SOFTMAX',
    'softmax_loss': 'SOFTMAX_LOSS',
    'split': 'SPLIT',
    'tanh': 'TANH',
    'window_data': 'WINDOW_DATA',
}

# V0 field -> {V0 layer type: (V1 sub-message, its field)}; None as the type
# means "any layer type" (Caffe moves these into transform_param whatever the type).
_V0_FIELD_MAP = (
    ('num_output', {'conv': ('convolution_param', 'num_output'),
                    'innerproduct': ('inner_product_param', 'num_output')}),
    ('biasterm', {'conv': ('convolution_param', 'bias_term'),
                  'innerproduct': ('inner_product_param', 'bias_term')}),
    ('weight_filler', {'conv': ('convolution_param', 'weight_filler'),
                       'innerproduct': ('inner_product_param', 'weight_filler')}),
    ('bias_filler', {'conv': ('convolution_param', 'bias_filler'),
                     'innerproduct': ('inner_product_param', 'bias_filler')}),
    ('pad', {'conv': ('convolution_param', 'pad'), 'pool': ('pooling_param', 'pad')}),
    ('kernelsize', {'conv': ('convolution_param', 'kernel_size'), 'pool': ('pooling_param', 'kernel_size')}),
    ('group', {'conv': ('convolution_param', 'group')}),
    ('stride', {'conv': ('convolution_param', 'stride'), 'pool': ('pooling_param', 'stride')}),
    ('pool', {'pool': ('pooling_param', 'pool')}),
    ('dropout_ratio', {'dropout': ('dropout_param', 'dropout_ratio')}),
    ('local_size', {'lrn': ('lrn_param', 'local_size')}),
    ('alpha', {'lrn': ('lrn_param', 'alpha')}),
    ('beta', {'lrn': ('lrn_param', 'beta')}),
    ('k', {'lrn': ('lrn_param', 'k')}),
    ('source', {'data': ('data_param', 'source'),
                'hdf5_data': ('hdf5_data_param', 'source'),
                'images': ('image_data_param', 'source'),
                'window_data': ('window_data_param', 'source'),
                'infogain_loss': ('infogain_loss_param', 'source')}),
    ('scale', {None: ('transform_param', 'scale')}),
    ('meanfile', {None: ('transform_param', 'mean_file')}),
    ('batchsize', {'data': ('data_param', 'batch_size'),
                   'hdf5_data': ('hdf5_data_param', 'batch_size'),
                   'images': ('image_data_param', 'batch_size'),
                   'window_data': ('window_data_param', 'batch_size')}),
    ('cropsize', {None: ('transform_param', 'crop_size')}),
    ('mirror', {None: ('transform_param', 'mirror')}),
    ('rand_skip', {'data': ('data_param', 'rand_skip'), 'images': ('image_data_param', 'rand_skip')}),
    ('shuffle_images', {'images': ('image_data_param', 'shuffle')}),
    ('new_height', {'images': ('image_data_param', 'new_height')}),
    ('new_width', {'images': ('image_data_param', 'new_width')}),
    ('concat_dim', {'concat': ('concat_param', 'concat_dim')}),
    ('det_fg_threshold', {'window_data': ('window_data_param', 'fg_threshold')}),
    ('det_bg_threshold', {'window_data': ('window_data_param', 'bg_threshold')}),
    ('det_fg_fraction', {'window_data': ('window_data_param', 'fg_fraction')}),
    ('det_context_pad', {'window_data': ('window_data_param', 'context_pad')}),
    ('det_crop_mode', {'window_data': ('window_data_param', 'crop_mode')}),
    ('hdf5_output_param', {'hdf5_output': ('hdf5_output_param', None)}),
)


def net_needs_v0_to_v1_upgrade(param):
    """True when some ``layers`` entry holds a V0 ``layer { ... }``."""
    return any(l.HasField('layer') for l in param.layers)


def upgrade_v0_layer_type(type_name, source='<net>'):
    """A V0 layer type string ("conv") -> the V1LayerParameter.LayerType number."""
    try:
        return _V1.LayerType.Value(V0_LAYER_TYPES[type_name])
    except KeyError:
        _fail(source, 'unknown V0 layer type %r' % type_name)


def upgrade_v0_padding_layers(param, source='<net>'):
    """A copy of V0 ``param`` with each "padding" layer folded into the conv or
    pool layer that reads its output (Caffe's UpgradeV0PaddingLayers)."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    last_top = {name: -1 for name in param.input}   # blob -> index of the layer that last wrote it
    for i, conn in enumerate(param.layers):
        v0 = conn.layer
        if v0.type != 'padding':
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                _fail(source, 'unknown blob input %r to V0 layer %r' % (blob, v0.name or i))
            src_idx = last_top[blob]
            if src_idx == -1:
                continue
            src = param.layers[src_idx]
            if src.layer.type != 'padding':
                continue
            if v0.type not in ('conv', 'pool'):
                _fail(source, 'padding layer %r feeds V0 layer %r of type %r; only conv and pool layers '
                      'can take a padding layer as input' % (src.layer.name, v0.name, v0.type))
            if len(conn.bottom) != 1:
                _fail(source, 'V0 layer %r takes a padding layer as input and must have exactly one bottom'
                      % v0.name)
            if len(src.bottom) != 1 or len(src.top) != 1:
                _fail(source, 'padding layer %r must have exactly one bottom and one top' % src.layer.name)
            target = out.layers[len(out.layers) - 1]
            target.layer.pad = src.layer.pad
            target.bottom[j] = src.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return out


def _set_field(msg, field, value, source, where):
    fd = msg.DESCRIPTOR.fields_by_name[field]
    try:
        if fd.message_type is not None:
            getattr(msg, field).CopyFrom(value)
        elif fd.is_repeated:
            getattr(msg, field).append(value)
        else:
            setattr(msg, field, value)
    except (ValueError, TypeError) as e:
        _fail(source, '%s: cannot set %s.%s to %r (%s)' % (where, msg.DESCRIPTOR.name, field, value, e))


def upgrade_v0_layer_parameter(conn, source='<net>'):
    """One V0 ``layers`` entry -> (V1LayerParameter, fully_compatible)."""
    v1 = _V1()
    ok = True
    v1.bottom.extend(conn.bottom)
    v1.top.extend(conn.top)
    if not conn.HasField('layer'):
        return v1, ok
    v0 = conn.layer
    if v0.HasField('name'):
        v1.name = v0.name
    t = v0.type
    where = 'V0 layer %r' % (v0.name,)
    if v0.HasField('type'):
        v1.type = upgrade_v0_layer_type(t, source)
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for v0_field, targets in _V0_FIELD_MAP:
        if not v0.HasField(v0_field):
            continue
        target = targets.get(None) or targets.get(t)
        if target is None:
            log.warning('%s: %s: unknown parameter %s for layer type %s; dropped', source, where, v0_field, t)
            ok = False
            continue
        sub_name, field = target
        sub = getattr(v1, sub_name)
        value = getattr(v0, v0_field)
        if field is None:                       # a whole sub-message (hdf5_output_param)
            sub.CopyFrom(value)
        elif v0_field == 'pool':
            name = caffe_pb2.V0LayerParameter.PoolMethod.Name(value)
            sub.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(name)
        else:
            _set_field(sub, field, value, source, where)
    return v1, ok


def upgrade_v0_net(param, source='<net>'):
    """V0 ``param`` -> (a new V1 NetParameter, fully_compatible), as Caffe's UpgradeV0Net.

    As in Caffe, only the name, the layers, ``input``, ``input_dim`` and
    ``force_backward`` are carried over.
    """
    padded = upgrade_v0_padding_layers(param, source)
    out = caffe_pb2.NetParameter()
    ok = True
    if padded.HasField('name'):
        out.name = padded.name
    for conn in padded.layers:
        v1, layer_ok = upgrade_v0_layer_parameter(conn, source)
        out.layers.add().CopyFrom(v1)
        ok &= layer_ok
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField('force_backward'):
        out.force_backward = padded.force_backward
    return out, ok


# --------------------------------------------------------------------------
# Data transformation fields
# --------------------------------------------------------------------------
_DATA_LAYERS = (('DATA', 'data_param'), ('IMAGE_DATA', 'image_data_param'), ('WINDOW_DATA', 'window_data_param'))
_TRANSFORM_FIELDS = ('scale', 'mean_file', 'crop_size', 'mirror')


def net_needs_data_upgrade(param):
    """True when a V1 Data/ImageData/WindowData layer sets scale, mean_file,
    crop_size or mirror in its own parameter message."""
    for l in param.layers:
        for type_name, sub_name in _DATA_LAYERS:
            if l.type == _V1.LayerType.Value(type_name):
                sub = getattr(l, sub_name)
                if any(sub.HasField(f) for f in _TRANSFORM_FIELDS):
                    return True
    return False


def upgrade_net_data_transformation(param):
    """Move those fields into each V1 data layer's transform_param (in place)."""
    for l in param.layers:
        for type_name, sub_name in _DATA_LAYERS:
            if l.type != _V1.LayerType.Value(type_name):
                continue
            sub = getattr(l, sub_name)
            tp = l.transform_param
            tp.SetInParent()
            for f in _TRANSFORM_FIELDS:
                if sub.HasField(f):
                    setattr(tp, f, getattr(sub, f))
                    sub.ClearField(f)


def _warn_new_style_transform_fields(param, source):
    # Caffe leaves these where they are in current-format layers, and ignores them.
    for l in param.layer:
        for sub_name in ('data_param', 'image_data_param', 'window_data_param'):
            if l.HasField(sub_name):
                sub = getattr(l, sub_name)
                set_fields = [f for f in _TRANSFORM_FIELDS if sub.HasField(f)]
                if set_fields:
                    log.warning('%s: layer %r: %s.%s is deprecated and ignored, as in Caffe; '
                                'set it in transform_param', source, l.name, sub_name, '/'.join(set_fields))


# --------------------------------------------------------------------------
# V1 -> current LayerParameter
# --------------------------------------------------------------------------
#: V1LayerParameter.LayerType name -> current layer type string (Caffe's UpgradeV1LayerType).
V1_LAYER_TYPES = {
    'NONE': '',
    'ABSVAL': 'AbsVal',
    'ACCURACY': 'Accuracy',
    'ARGMAX': 'ArgMax',
    'BNLL': 'BNLL',
    'CONCAT': 'Concat',
    'CONTRASTIVE_LOSS': 'ContrastiveLoss',
    'CONVOLUTION': 'Convolution',
    'DECONVOLUTION': 'Deconvolution',
    'DATA': 'Data',
    'DROPOUT': 'Dropout',
    'DUMMY_DATA': 'DummyData',
    'EUCLIDEAN_LOSS': 'EuclideanLoss',
    'ELTWISE': 'Eltwise',
    'EXP': 'Exp',
    'FLATTEN': 'Flatten',
    'HDF5_DATA': 'HDF5Data',
    'HDF5_OUTPUT': 'HDF5Output',
    'HINGE_LOSS': 'HingeLoss',
    'IM2COL': 'Im2col',
    'IMAGE_DATA': 'ImageData',
    'INFOGAIN_LOSS': 'InfogainLoss',
    'INNER_PRODUCT': 'InnerProduct',
    'LRN': 'LRN',
    'MEMORY_DATA': 'MemoryData',
    'MULTINOMIAL_LOGISTIC_LOSS': 'MultinomialLogisticLoss',
    'MVN': 'MVN',
    'POOLING': 'Pooling',
    'POWER': 'Power',
    'RELU': 'ReLU',
    'SIGMOID': 'Sigmoid',
    'SIGMOID_CROSS_ENTROPY_LOSS': 'SigmoidCrossEntropyLoss',
    'SILENCE': 'Silence',
    'SOFTMAX': 'Softmax',
    'SOFTMAX_LOSS': 'SoftmaxWithLoss',
    'SPLIT': 'Split',
    'SLICE': 'Slice',
    'TANH': 'TanH',
    'WINDOW_DATA': 'WindowData',
    'THRESHOLD': 'Threshold',
}

#: the layer-specific sub-messages a V1 layer can carry, copied as they are.
V1_PARAM_MESSAGES = (
    'accuracy_param', 'argmax_param', 'concat_param', 'contrastive_loss_param', 'convolution_param',
    'data_param', 'dropout_param', 'dummy_data_param', 'eltwise_param', 'exp_param', 'hdf5_data_param',
    'hdf5_output_param', 'hinge_loss_param', 'image_data_param', 'infogain_loss_param',
    'inner_product_param', 'lrn_param', 'memory_data_param', 'mvn_param', 'pooling_param',
    'power_param', 'relu_param', 'sigmoid_param', 'softmax_param', 'slice_param', 'tanh_param',
    'threshold_param', 'window_data_param', 'transform_param', 'loss_param',
)


def net_needs_v1_to_v2_upgrade(param):
    return len(param.layers) > 0


def upgrade_v1_layer_type(type_number, source='<net>'):
    """A V1LayerParameter.LayerType number -> the current type string."""
    try:
        return V1_LAYER_TYPES[_V1.LayerType.Name(type_number)]
    except (KeyError, ValueError):
        _fail(source, 'unknown V1LayerParameter layer type %r' % (type_number,))


def _param_spec(layer, i):
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def upgrade_v1_layer_parameter(v1, source='<net>'):
    """One V1LayerParameter -> (LayerParameter, fully_compatible)."""
    layer = caffe_pb2.LayerParameter()
    ok = True
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField('name'):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField('type'):
        layer.type = upgrade_v1_layer_type(v1.type, source)
    for b in v1.blobs:
        layer.blobs.add().CopyFrom(b)
    for i, name in enumerate(v1.param):
        _param_spec(layer, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        mode_name = _V1.DimCheckMode.Name(mode)
        _param_spec(layer, i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(mode_name)
    for i, lr in enumerate(v1.blobs_lr):
        _param_spec(layer, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _param_spec(layer, i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in V1_PARAM_MESSAGES:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField('layer'):
        log.warning('%s: input NetParameter has V0 layer %r -- ignoring', source, v1.layer.name)
        ok = False
    return layer, ok


def upgrade_v1_net(param, source='<net>'):
    """V1 ``param`` -> (a new NetParameter with ``layer`` entries, fully_compatible)."""
    if len(param.layer):
        _fail(source, "refusing to upgrade inconsistent NetParameter: it has both 'layer' and 'layers' "
                      "fields; the current format uses layer { type: \"Layer\" ... }, not layers { type: LAYER ... }; "
                      "switch the definition to 'layer' entries by hand")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    del out.layer[:]
    ok = True
    for i, v1 in enumerate(param.layers):
        layer, layer_ok = upgrade_v1_layer_parameter(v1, source)
        out.layer.add().CopyFrom(layer)
        if not layer_ok:
            log.warning('%s: upgrade of input layer %d failed', source, i)
            ok = False
    return out, ok


# --------------------------------------------------------------------------
# input fields -> Input layer
# --------------------------------------------------------------------------
def net_needs_input_upgrade(param):
    return len(param.input) > 0


def upgrade_net_input(param, source='<net>'):
    """``input``/``input_shape``/``input_dim`` -> one Input layer named "input",
    first in the net (in place).  Inputs without any shape (old caffemodels)
    are simply dropped, as in Caffe."""
    names = list(param.input)
    has_shape = len(param.input_shape) > 0
    has_dim = len(param.input_dim) > 0
    dim_shapes = None
    if has_dim:
        dims = list(param.input_dim)
        if len(dims) != 4 * len(names):
            _fail(source, 'input_dim has %d values, but %d input(s) need exactly 4 each (%d)'
                  % (len(dims), len(names), 4 * len(names)))
        dim_shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    if has_shape:
        if len(param.input_shape) != len(names):
            _fail(source, '%d input_shape(s) given for %d input(s); give exactly one input_shape per input'
                  % (len(param.input_shape), len(names)))
        if dim_shapes is not None and dim_shapes != [list(s.dim) for s in param.input_shape]:
            _fail(source, 'input_shape and the deprecated input_dim disagree; give only one of them')
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name='input', type='Input')
        ip = layer.input_param
        ip.SetInParent()
        for i, name in enumerate(names):
            layer.top.append(name)
            if has_shape:
                ip.shape.add().CopyFrom(param.input_shape[i])
            else:
                ip.shape.add().dim.extend(dim_shapes[i])
        existing = [caffe_pb2.LayerParameter() for _ in param.layer]
        for copy, l in zip(existing, param.layer):
            copy.CopyFrom(l)
        del param.layer[:]
        param.layer.add().CopyFrom(layer)
        for l in existing:
            param.layer.add().CopyFrom(l)
    param.ClearField('input')
    param.ClearField('input_shape')
    param.ClearField('input_dim')


# --------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------
def _is_old_batchnorm(layer):
    return layer.type == 'BatchNorm' and len(layer.param) == 3


def net_needs_batch_norm_upgrade(param):
    """True when a BatchNorm layer declares three param specs (the old way to
    keep the solver off its statistics)."""
    return any(_is_old_batchnorm(l) for l in param.layer)


def upgrade_net_batch_norm(param):
    """Set lr_mult and decay_mult to 0 in those specs, keeping their names (in place).

    Returns how many specs changed (0 when they already say lr_mult: 0 decay_mult: 0).
    """
    changed = 0
    for l in param.layer:
        if _is_old_batchnorm(l):
            for spec in l.param:
                if not (spec.HasField('lr_mult') and spec.lr_mult == 0 and
                        spec.HasField('decay_mult') and spec.decay_mult == 0):
                    changed += 1
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return changed


def _is_fork_crop(layer):
    return layer.type == 'Crop' and not layer.HasField('crop_param') and len(layer.bottom) == 2


def net_needs_fork_crop_upgrade(param):
    """True when a Crop layer has no crop_param: the FCN-era forks (HED's
    s9xie/hed, longjon's) computed its offsets from the net's coordinate maps."""
    return any(_is_fork_crop(layer) for layer in param.layer)


def upgrade_net_fork_crops(param, source='<net>'):
    """Give each Crop layer without crop_param the crop_param {axis, offset} its
    fork computed at set-up (the coordinate maps from its bottoms' common
    ancestor, as caffe.coord_map.crop), in place; returns how many changed.

    BVLC Caffe would crop such a layer at offset 0, which aligns nothing an
    FCN-style net crops; where the maps cannot align the bottoms (a layer with
    no map on the way, a scale mismatch) the layer is left so, with a warning.
    """
    from .coord_map import net_crop_offsets, UndefinedMapException, AxisMismatchException
    changed = 0
    for i, layer in enumerate(param.layer):
        if not _is_fork_crop(layer):
            continue
        try:
            axis, offset = net_crop_offsets(param, i)
        except (UndefinedMapException, AxisMismatchException, AssertionError, RuntimeError, KeyError) as e:
            log.warning('%s: Crop layer %r has no crop_param and its offsets cannot be computed from the '
                        'coordinate maps (%s): offset 0, as BVLC Caffe', source, layer.name, e)
            continue
        layer.crop_param.axis = axis
        layer.crop_param.offset.extend(offset)
        log.warning('%s: Crop layer %r has no crop_param: it crops at axis %d, offsets %s, from its coordinate '
                    'maps, as the FCN-era forks (HED) did; BVLC Caffe 1.0 would crop at offset 0 (give '
                    'crop_param to choose)', source, layer.name, axis, list(offset))
        changed += 1
    return changed


# --------------------------------------------------------------------------
# whole nets
# --------------------------------------------------------------------------
def net_needs_upgrade(param):
    """True when reading ``param`` would change it (Caffe's NetNeedsUpgrade,
    with the data-transformation check included)."""
    return (net_needs_v0_to_v1_upgrade(param) or net_needs_data_upgrade(param)
            or net_needs_v1_to_v2_upgrade(param) or net_needs_input_upgrade(param)
            or net_needs_batch_norm_upgrade(param) or net_needs_fork_crop_upgrade(param))


def _replace(param, new):
    param.Clear()
    param.MergeFrom(new)


_ATTEMPT = 'Attempting to upgrade input file specified using deprecated %s: %s'


def apply_net_upgrades(param, source='<net>'):
    """Upgrade ``param`` (a caffe_pb2.NetParameter) in place, in Caffe's order.

    Returns the list of steps applied (empty when already current).  Each
    step logs Caffe's info line ("Attempting to upgrade input file specified
    using deprecated V1LayerParameter: <source>") once it has succeeded, so
    that a failing upgrade prints only its error.
    """
    steps = []
    if net_needs_v0_to_v1_upgrade(param):
        new, ok = upgrade_v0_net(param, source)
        _replace(param, new)
        log.info(_ATTEMPT, 'V0LayerParameter', source)
        if not ok:
            log.warning('%s: had one or more problems upgrading V0NetParameter to NetParameter '
                        '(see above); continuing anyway', source)
        steps.append(STEP_V0)
    if net_needs_data_upgrade(param):
        upgrade_net_data_transformation(param)
        log.info(_ATTEMPT, 'transformation parameters', source)
        steps.append(STEP_DATA)
    if net_needs_v1_to_v2_upgrade(param):
        new, ok = upgrade_v1_net(param, source)
        _replace(param, new)
        log.info(_ATTEMPT, 'V1LayerParameter', source)
        if not ok:
            log.warning('%s: had one or more problems upgrading V1LayerParameter (see above); '
                        'continuing anyway', source)
        steps.append(STEP_V1)
    if net_needs_input_upgrade(param):
        upgrade_net_input(param, source)
        log.info(_ATTEMPT, 'input fields', source)
        steps.append(STEP_INPUT)
    elif len(param.input_dim) or len(param.input_shape):
        log.warning('%s: input_dim/input_shape given without any input name; ignored, as in Caffe', source)
    if net_needs_batch_norm_upgrade(param) and upgrade_net_batch_norm(param):
        log.info('Attempting to upgrade batch norm layers using deprecated params: %s', source)
        steps.append(STEP_BATCHNORM)
    if net_needs_fork_crop_upgrade(param) and upgrade_net_fork_crops(param, source):
        log.info('Computing the offsets of Crop layers without crop_param from the coordinate maps, '
                 'as the FCN-era forks: %s', source)
        steps.append(STEP_FORK_CROP)
    _warn_new_style_transform_fields(param, source)
    return steps


def upgrade_net_param(param, source='<net>'):
    """Upgrade a NetParameter read from a prototxt in place; True if it changed."""
    return bool(apply_net_upgrades(param, source))


def upgrade_net_weights(net_param, source='<weights>'):
    """Upgrade a NetParameter read from a binary .caffemodel in place; True if it changed.

    V0/V1 layers become current ``layer`` entries with their ``blobs`` kept;
    ``input`` names left without shapes (as old caffemodels have) are dropped.
    """
    return bool(apply_net_upgrades(net_param, source))


# --------------------------------------------------------------------------
# solvers
# --------------------------------------------------------------------------
#: SolverParameter.SolverType name -> the ``type`` string.
SOLVER_TYPES = {
    'SGD': 'SGD',
    'NESTEROV': 'Nesterov',
    'ADAGRAD': 'AdaGrad',
    'RMSPROP': 'RMSProp',
    'ADADELTA': 'AdaDelta',
    'ADAM': 'Adam',
}


def solver_needs_type_upgrade(param):
    return param.HasField('solver_type')


def upgrade_solver_type(param, source='<solver>'):
    """``solver_type: ADAM`` -> ``type: "Adam"`` (in place); True if changed."""
    if not param.HasField('solver_type'):
        return False
    try:
        new_type = SOLVER_TYPES[caffe_pb2.SolverParameter.SolverType.Name(param.solver_type)]
    except (KeyError, ValueError):
        _fail(source, 'unknown solver_type %r' % (param.solver_type,))
    if param.HasField('type') and param.type != new_type:
        _fail(source, 'the deprecated solver_type: %s and type: "%s" disagree; give only type'
              % (caffe_pb2.SolverParameter.SolverType.Name(param.solver_type), param.type))
    param.type = new_type
    param.ClearField('solver_type')
    return True


def solver_needs_upgrade(param):
    nets = _solver_nets(param)
    return solver_needs_type_upgrade(param) or any(net_needs_upgrade(n) for _, n in nets)


def _solver_nets(param):
    nets = []
    if param.HasField('net_param'):
        nets.append(('net_param', param.net_param))
    if param.HasField('train_net_param'):
        nets.append(('train_net_param', param.train_net_param))
    for i, n in enumerate(param.test_net_param):
        nets.append(('test_net_param[%d]' % i, n))
    return nets


def apply_solver_upgrades(param, source='<solver>'):
    """Upgrade a SolverParameter in place; returns the list of steps applied.

    Besides Caffe's solver_type upgrade, nets given inline (net_param,
    train_net_param, test_net_param) are upgraded as nets.
    """
    steps = []
    if solver_needs_type_upgrade(param):
        both = param.HasField('type')
        upgrade_solver_type(param, source)
        log.info(_ATTEMPT, "'solver_type' field (enum)", source)
        if both:
            log.warning('%s: both solver_type and type are given (they agree); keeping type', source)
        steps.append(STEP_SOLVER_TYPE)
    for name, net in _solver_nets(param):
        for step in apply_net_upgrades(net, '%s (%s)' % (source, name)):
            steps.append('%s: %s' % (name, step))
    return steps


def upgrade_solver_param(param, source='<solver>'):
    """Upgrade a SolverParameter in place; True if it changed."""
    return bool(apply_solver_upgrades(param, source))
