"""Export a built caffeine Net (TEST phase, with its weights) as an ONNX model.

``export_onnx(net, path)`` walks the net's layers in order and writes each as
standard ONNX operators with Caffe's exact semantics; the graph's inputs and
outputs carry the names of Caffe's blobs.  Every layer type maps through the
table ``CONVERTERS`` (Caffe type -> function), so a new layer family plugs in
with one ``@converter('Type')`` function.  A layer with no faithful ONNX form
fails with a one-line error naming the layer and its type, never a silently
different graph.

The graph is built with the ``onnx`` package's helpers and checked with
``onnx.checker`` (install it with ``pip install caffeine[onnx]``).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import CaffeineError
from .proto import caffe_pb2
from .weights import blob_proto_to_array

DEFAULT_OPSET = 17
MIN_OPSET = 13

CONVERTERS = {}

_DATA = 'a data layer reads its own files; export the deploy net, whose data comes in through Input layers'
NO_EXPORT = {          # why a type has no export, where there is more to say than "none"
    'Data': _DATA, 'ImageData': _DATA, 'WindowData': _DATA, 'HDF5Data': _DATA, 'MemoryData': _DATA,
    'DummyData': _DATA,
    'HDF5Output': 'it writes files, which an ONNX graph cannot',
    'Python': 'a Python layer runs arbitrary code, which has no ONNX form',
    'DetectionOutput': 'its NMS (top_k, keep_top_k, adaptive eta) and its variable-length output have no '
                       'faithful ONNX form; export the net up to its bottoms and run the detection step '
                       'outside the graph',
    'MultiBoxLoss': 'a training loss (matching and hard-negative mining) with no faithful ONNX form',
}


class OnnxExportError(CaffeineError):
    """A net, a layer or an option the ONNX export cannot write faithfully."""


def converter(*type_names):
    """Register ``fn(g, L) -> [onnx tensor name per top]`` for Caffe type(s)."""
    def deco(fn):
        for t in type_names:
            CONVERTERS[t] = fn
        return fn
    return deco


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise OnnxExportError('ONNX export needs the onnx package: pip install "caffeine[onnx]"')
    return onnx


class LayerView:
    """What a converter sees of one layer: its parameter, bottoms (ONNX tensor
    names and Caffe shapes), top shapes and parameter arrays."""

    def __init__(self, g, lp, layer, bottoms, blobs, outs):
        self.g, self.lp, self.layer = g, lp, layer
        self.name, self.type = lp.name, lp.type
        self.bottoms = bottoms
        self.bottom_blobs = [blobs[b] for b in lp.bottom]
        self.top_blobs = [blobs[t] for t in lp.top]
        self.bshapes = [tuple(b.shape) for b in self.bottom_blobs]
        self.tshapes = [tuple(t.shape) for t in self.top_blobs]
        self._outs = outs
        self.params = [np.asarray(b.data, dtype=np.float32) for b in layer.blobs]

    def out(self, j=0):
        """The ONNX name top ``j`` is written under."""
        return self._outs[j]

    def error(self, msg):
        return OnnxExportError('layer %r (%s): %s' % (self.name, self.type, msg))

    def axis(self, a, ndim=None):
        ndim = len(self.bshapes[0]) if ndim is None else ndim
        if not -ndim <= a < max(ndim, 1):
            raise self.error('axis %d out of range for a %d-axis bottom' % (a, ndim))
        return a + ndim if a < 0 else a


class Graph:
    """The ONNX graph being built: nodes, initializers and unique names."""

    def __init__(self, onnx, opset, dynamic_batch, reserved):
        self.onnx, self.opset, self.dynamic = onnx, opset, dynamic_batch
        self.nodes, self.inits = [], []
        self.used = set(reserved)
        self._n = 0

    def fresh(self, hint):
        name, i = hint, 1
        while name in self.used:
            name = '%s_%d' % (hint, i)
            i += 1
        self.used.add(name)
        return name

    def const(self, hint, array, dtype=np.float32):
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.array(array, dtype=dtype, order='C'), name))
        return name

    def ints(self, hint, values):
        return self.const(hint, np.asarray(values, np.int64).reshape(-1), np.int64)

    def scalar(self, hint, value):
        return self.const(hint, np.asarray(value, np.float32).reshape(()))

    def node(self, op, inputs, out=None, nout=1, name='', **attrs):
        """Add one node; ``out`` (a name or list of names) or ``nout`` fresh ones.
        Returns the output name, or the list of them when there are several."""
        if out is None:
            outs = [self.fresh('%s/%s' % (name or op, op.lower()) + ('_%d' % k if nout > 1 else ''))
                    for k in range(nout)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
            self.used.update(outs)
        self._n += 1
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), outs,
                                                     name='%s/%s_%d' % (name or op, op, self._n), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def reduce(self, op, x, axes, keepdims, out=None, name=''):
        """ReduceXxx over ``axes``: an attribute before opset 18, an input since
        (ReduceSum takes an input from 13)."""
        if self.opset >= 18 or op == 'ReduceSum':
            return self.node(op, [x, self.ints(name + '/axes', axes)], out, name=name, keepdims=int(keepdims))
        return self.node(op, [x], out, name=name, axes=list(axes), keepdims=int(keepdims))

    def reshape(self, x, shape, out=None, name=''):
        return self.node('Reshape', [x, self.ints(name + '/shape', shape)], out, name=name)

    def batch_shape(self, shape, keeps_batch):
        """A Reshape target: ``shape`` with its batch dim written as 0 (copy the
        input's) when the batch is dynamic and the reshape keeps dim 0."""
        shape = [int(d) for d in shape]
        if self.dynamic and keeps_batch and shape:
            shape[0] = 0
        return shape


def _last_writers(net):
    """{blob: index of the last layer that writes it}: that layer's top gets the
    blob's own name in the graph, earlier (in-place) versions ``blob@layer``."""
    last = {}
    for i, layer in enumerate(net.layers):
        for t in layer.layer_param.top:
            last[t] = i
    return last


def export_onnx(net, path=None, opset=DEFAULT_OPSET, dynamic_batch=False, keep=(), check=True,
                graph_name=None):
    """Write ``net`` (a caffeine Net built in the TEST phase) as an ONNX model.

    opset: the ONNX opset (13 or newer).  dynamic_batch: the inputs' first
    dimension is symbolic (``N``).  keep: names of intermediate blobs to expose
    as extra outputs (their value after the whole forward pass, as
    ``net.blobs[name]`` holds it).  check: run ``onnx.checker`` (with shape
    inference).  Returns the ``onnx.ModelProto``; writes it to ``path`` when given."""
    onnx = _import_onnx()
    _check_request(onnx, net, opset, keep)
    g = Graph(onnx, opset, dynamic_batch, reserved=list(net.blobs))
    tensor, inputs = _convert_layers(g, net)
    graph = onnx.helper.make_graph(g.nodes, graph_name or net.name or 'caffeine', _graph_inputs(g, net, inputs),
                                   _graph_outputs(g, net, tensor, inputs, keep), initializer=g.inits)
    opsets = [onnx.helper.make_opsetid('', opset)]
    model = onnx.helper.make_model(graph, producer_name='caffeine',
                                   opset_imports=opsets, ir_version=onnx.helper.find_min_ir_version_for(opsets))
    if dynamic_batch:
        _infer_output_shapes(onnx, model)        # strict shape inference: the full check's
        if check:
            onnx.checker.check_model(model)
    elif check:
        onnx.checker.check_model(model, full_check=True)
    if path is not None:
        onnx.save(model, path)
    return model


def _check_request(onnx, net, opset, keep):
    if net.phase != caffe_pb2.TEST:
        raise OnnxExportError('export needs a TEST-phase net (build it with caffeine.TEST)')
    if opset < MIN_OPSET:
        raise OnnxExportError('opset %d is too old: the export writes opset %d or newer' % (opset, MIN_OPSET))
    if opset > onnx.defs.onnx_opset_version():
        raise OnnxExportError('opset %d is newer than the installed onnx package knows (%d)'
                              % (opset, onnx.defs.onnx_opset_version()))
    for k in keep:
        if k not in net.blobs:
            raise OnnxExportError('--keep-intermediate: no blob named %r in the net' % k)


def _convert_layers(g, net):
    """Every layer through its converter; returns ({blob: its last ONNX tensor}, [input blobs])."""
    last = _last_writers(net)
    tensor = {}
    inputs = [t for layer in net.layers if layer.type == 'Input' for t in layer.layer_param.top]
    for i, layer in enumerate(net.layers):
        lp = layer.layer_param
        tops, bots = list(lp.top), list(lp.bottom)
        if lp.type == 'Input':
            tensor.update((t, t) for t in tops)
            continue
        fn = CONVERTERS.get(lp.type)
        if fn is None:
            raise OnnxExportError('layer %r (%s): %s' % (lp.name, lp.type, NO_EXPORT.get(
                lp.type, 'no ONNX export for layer type %s' % lp.type)))
        outs = [t if last[t] == i and t not in inputs else g.fresh('%s@%s' % (t, lp.name)) for t in tops]
        view = LayerView(g, lp, layer, [tensor[b] for b in bots], net.blobs, outs)
        got = fn(g, view)
        if len(got) != len(tops):
            raise view.error('the export wrote %d tops, the layer has %d' % (len(got), len(tops)))
        tensor.update(zip(tops, got))
    return tensor, inputs


def _graph_inputs(g, net, inputs):
    out = []
    for name in inputs:
        shape = list(net.blobs[name].shape)
        if g.dynamic and shape:
            shape[0] = 'N'
        out.append(g.onnx.helper.make_tensor_value_info(name, g.onnx.TensorProto.FLOAT, shape))
    return out


def _graph_outputs(g, net, tensor, inputs, keep):
    """The net's outputs, then the kept blobs, each under its blob's name (an
    input blob, which ONNX cannot name twice, as ``name_out``)."""
    out = []
    for name in list(net.outputs) + [k for k in keep if k not in net.outputs]:
        oname = name if name not in inputs else g.fresh(name + '_out')
        if tensor[name] != oname:
            g.node('Identity', [tensor[name]], oname, name=name)
        shape = None if g.dynamic else list(net.blobs[name].shape)
        out.append(g.onnx.helper.make_tensor_value_info(oname, g.onnx.TensorProto.FLOAT, shape))
    return out


def _infer_output_shapes(onnx, model):
    """Give the outputs of a dynamic-batch graph the shapes ONNX infers (``N`` x ...)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for o in model.graph.output:
        v = known.get(o.name)
        if v is not None and v.type.tensor_type.HasField('shape'):
            o.type.CopyFrom(v.type)


# ---------------------------------------------------------------------------
# Shape, routing and utility layers
# ---------------------------------------------------------------------------
@converter('Split')
def _split(g, L):
    """Split's tops are the bottom itself."""
    return [L.bottoms[0]] * len(L.tshapes)


@converter('Dropout')
def _dropout(g, L):
    """TEST: y = x; with rbgirshick's scale_train false (a field of the forks'
    schema, when it has it) y = x (1 - dropout_ratio)."""
    p = L.lp.dropout_param
    if 'scale_train' not in p.DESCRIPTOR.fields_by_name or p.scale_train:
        return [L.bottoms[0]]
    keep = g.scalar(L.name + '/keep', 1.0 - p.dropout_ratio)
    return [g.node('Mul', [L.bottoms[0], keep], L.out(0), name=L.name)]


@converter('Silence')
def _silence(g, L):
    return []


@converter('Parameter')
def _parameter(g, L):
    w = g.const(L.name + '/param', L.params[0])
    return [g.node('Identity', [w], L.out(0), name=L.name)]


@converter('Concat')
def _concat(g, L):
    p = L.lp.concat_param
    axis = L.axis(p.concat_dim if p.HasField('concat_dim') else p.axis)
    if len(L.bottoms) == 1:
        return [L.bottoms[0]]
    return [g.node('Concat', L.bottoms, L.out(0), name=L.name, axis=axis)]


@converter('Slice')
def _slice(g, L):
    p = L.lp.slice_param
    axis = L.axis(p.slice_dim if p.HasField('slice_dim') else p.axis)
    if len(L.tshapes) == 1:
        return [L.bottoms[0]]
    if axis == 0 and g.dynamic:
        raise L.error('slicing the batch axis cannot have a dynamic batch; export without --dynamic-batch')
    sizes = [s[axis] for s in L.tshapes]
    outs = [L.out(j) for j in range(len(L.tshapes))]
    got = g.node('Split', [L.bottoms[0], g.ints(L.name + '/split', sizes)], outs, name=L.name, axis=axis)
    return [got] if isinstance(got, str) else got


@converter('Flatten')
def _flatten(g, L):
    p = L.lp.flatten_param
    nd = len(L.bshapes[0])
    a, e = L.axis(p.axis), L.axis(p.end_axis)
    shape = [0] * a + [-1] + list(L.bshapes[0][e + 1:])
    return [g.reshape(L.bottoms[0], shape, L.out(0), name=L.name)] if nd else [L.bottoms[0]]


@converter('Reshape')
def _reshape(g, L):
    p = L.lp.reshape_param
    nd = len(L.bshapes[0])
    start = p.axis + nd + 1 if p.axis < 0 else p.axis
    spec = list(p.shape.dim)
    target = [int(d) for d in L.tshapes[0]]
    if g.dynamic:
        if start > 0 or (spec and spec[0] == 0):
            target[0] = 0
        elif -1 in spec:
            target[start + spec.index(-1)] = -1
        else:
            raise L.error('a reshape that sets the batch axis cannot have a dynamic batch; '
                          'export without --dynamic-batch')
    return [g.reshape(L.bottoms[0], target, L.out(0), name=L.name)]


@converter('Crop')
def _crop(g, L):
    p = L.lp.crop_param
    a = L.axis(p.axis)
    nd = len(L.bshapes[0])
    offs = list(p.offset)
    if len(offs) not in (0, 1, nd - a):
        raise L.error('crop offset has %d values for %d cropped axes' % (len(offs), nd - a))
    offs = [offs[0] if len(offs) == 1 else (offs[i] if offs else 0) for i in range(nd - a)]
    ref = L.bshapes[1]
    axes = list(range(a, nd))
    if g.dynamic and a == 0:
        raise L.error('cropping the batch axis cannot have a dynamic batch; export without --dynamic-batch')
    starts = offs
    ends = [o + ref[ax] for o, ax in zip(offs, axes)]
    return [g.node('Slice', [L.bottoms[0], g.ints(L.name + '/starts', starts), g.ints(L.name + '/ends', ends),
                             g.ints(L.name + '/axes', axes)], L.out(0), name=L.name)]


@converter('Tile')
def _tile(g, L):
    p = L.lp.tile_param
    a = L.axis(p.axis)
    reps = [1] * len(L.bshapes[0])
    reps[a] = int(p.tiles)
    return [g.node('Tile', [L.bottoms[0], g.ints(L.name + '/repeats', reps)], L.out(0), name=L.name)]


@converter('BatchReindex')
def _batch_reindex(g, L):
    idx = g.node('Cast', [L.bottoms[1]], name=L.name, to=g.onnx.TensorProto.INT64)
    return [g.node('Gather', [L.bottoms[0], idx], L.out(0), name=L.name, axis=0)]


# ---------------------------------------------------------------------------
# Vision layers
# ---------------------------------------------------------------------------
def _spatial(values, h, w, nsp, default, name, L):
    """Caffe's kernel/stride/pad/dilation fields: the repeated value, or _h/_w."""
    if h is not None:
        return [int(h), int(w)]
    values = list(values)
    if not values:
        return [default] * nsp
    if len(values) == 1:
        return [int(values[0])] * nsp
    if len(values) != nsp:
        raise L.error('%s has %d values for %d spatial axes' % (name, len(values), nsp))
    return [int(v) for v in values]


def _hw(p, f):
    """The (f_h, f_w) fields when either is set, else (None, None)."""
    if p.HasField(f + '_h') or p.HasField(f + '_w'):
        return getattr(p, f + '_h'), getattr(p, f + '_w')
    return None, None


def _conv_geometry(L, p):
    nsp = len(L.bshapes[0]) - 2
    if p.axis != 1 and L.axis(p.axis) != 1:
        raise L.error('convolution along axis %d: ONNX convolves channels at axis 1' % p.axis)
    k = _spatial(p.kernel_size, *_hw(p, 'kernel'), nsp, 1, 'kernel_size', L)
    s = _spatial(p.stride, *_hw(p, 'stride'), nsp, 1, 'stride', L)
    pad = _spatial(p.pad, *_hw(p, 'pad'), nsp, 0, 'pad', L)
    d = _spatial(p.dilation, None, None, nsp, 1, 'dilation', L)
    return dict(kernel_shape=k, strides=s, pads=pad + pad, dilations=d, group=int(p.group))


def _conv_node(g, L, op):
    p = L.lp.convolution_param
    ins = [L.bottoms[0], g.const(L.name + '/weight', L.params[0])]
    if p.bias_term:
        ins.append(g.const(L.name + '/bias', L.params[1]))
    return [g.node(op, ins, L.out(0), name=L.name, **_conv_geometry(L, p))]


@converter('Convolution')
def _convolution(g, L):
    return _conv_node(g, L, 'Conv')


@converter('Deconvolution')
def _deconvolution(g, L):
    """ConvTranspose; Caffe's output size stride (in - 1) + dilation (k - 1) + 1 - 2 pad
    is ONNX's with the same pads and no output_padding."""
    return _conv_node(g, L, 'ConvTranspose')


@converter('Im2col')
def _im2col(g, L):
    """Caffe's columns (C x kh x kw channels of each output position) as a grouped
    convolution with one-hot kernels: output channel (c, i, j) copies input
    channel c at kernel offset (i, j)."""
    attrs = _conv_geometry(L, L.lp.convolution_param)
    C = L.bshapes[0][1]
    k = attrs['kernel_shape']
    n = int(np.prod(k))
    w = np.zeros((C * n, 1) + tuple(k), np.float32)
    w.reshape(C, n, n)[:, np.arange(n), np.arange(n)] = 1
    attrs['group'] = C
    return [g.node('Conv', [L.bottoms[0], g.const(L.name + '/onehot', w)], L.out(0), name=L.name, **attrs)]


def _window_sizes(n, k, s, p, out):
    """Caffe's AVE divisor along one axis: each window clipped to the padded input."""
    start = np.arange(out) * s - p
    return np.minimum(start + k, n + p) - start


def _pool_geometry(L, p, H, W):
    if p.global_pooling:
        return (H, W), (1, 1), (0, 0)
    k = _spatial([p.kernel_size] if p.HasField('kernel_size') else [], *_hw(p, 'kernel'), 2, 1, 'kernel_size', L)
    s = _spatial([p.stride] if p.HasField('stride') else [], *_hw(p, 'stride'), 2, 1, 'stride', L)
    pad = _spatial([p.pad] if p.HasField('pad') else [], *_hw(p, 'pad'), 2, 0, 'pad', L)
    return tuple(k), tuple(s), tuple(pad)


def pool2d(g, L, x, in_shape, out_hw, method, kernel, stride, pad, out=None, mask=None):
    """Caffe's 2-D pooling of ``x`` into ``out_hw``: the end padding is chosen so
    that ONNX's floor rule gives Caffe's (ceil) output size, MAX ignores padding,
    AVE divides by the window clipped to the padded input (Caffe's divisor).
    ``mask``: MAX also writes Caffe's mask top there (the argmax's h * W + w as a
    float; ONNX's indices run over the whole N x C x H x W input)."""
    P = caffe_pb2.PoolingParameter
    H, W = in_shape[2:]
    ends = []
    for n, k, s, p, o in zip((H, W), kernel, stride, pad, out_hw):
        e = max(0, (o - 1) * s + k - n - p)
        if (n + p + e - k) // s + 1 != o:
            raise L.error('pooled size %d of input %d (kernel %d, stride %d, pad %d) has no ONNX form'
                          % (o, n, k, s, p))
        ends.append(e)
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pad) + ends)
    if method == P.MAX and mask is None:
        return g.node('MaxPool', [x], out, name=L.name, **attrs)
    if method == P.MAX:
        y, idx = g.node('MaxPool', [x], [out or g.fresh(L.name + '/maxpool'), g.fresh(L.name + '/indices')],
                        name=L.name, **attrs)
        plane = g.node('Mod', [idx, g.ints(L.name + '/plane', [H * W])], name=L.name)
        g.node('Cast', [plane], mask, name=L.name, to=g.onnx.TensorProto.FLOAT)
        return y
    if method == P.AVE:
        corr = np.outer(kernel[0] / _window_sizes(H, kernel[0], stride[0], pad[0], out_hw[0]),
                        kernel[1] / _window_sizes(W, kernel[1], stride[1], pad[1], out_hw[1]))
        if np.all(corr == 1):
            return g.node('AveragePool', [x], out, name=L.name, count_include_pad=1, **attrs)
        y = g.node('AveragePool', [x], name=L.name, count_include_pad=1, **attrs)
        return g.node('Mul', [y, g.const(L.name + '/divisor', corr)], out, name=L.name)
    if method == P.STOCHASTIC:
        # TEST phase: sum(x^2) / sum(x) over each window (no padding).
        if any(pad):
            raise L.error('STOCHASTIC pooling has no padding')
        sq = g.node('Mul', [x, x], name=L.name)
        num = g.node('AveragePool', [sq], name=L.name, count_include_pad=1, **attrs)
        den = g.node('AveragePool', [x], name=L.name, count_include_pad=1, **attrs)
        return g.node('Div', [num, den], out, name=L.name)
    raise L.error('unknown pooling method %d' % method)


@converter('Pooling')
def _pooling(g, L):
    p = L.lp.pooling_param
    if len(L.bshapes[0]) != 4:
        raise L.error('pooling of a %d-axis bottom; ONNX export handles N x C x H x W' % len(L.bshapes[0]))
    H, W = L.bshapes[0][2:]
    k, s, pad = _pool_geometry(L, p, H, W)
    mask = L.out(1) if len(L.tshapes) > 1 else None
    if p.global_pooling and p.pool in (p.MAX, p.AVE) and mask is None:
        op = 'GlobalMaxPool' if p.pool == p.MAX else 'GlobalAveragePool'
        return [g.node(op, [L.bottoms[0]], L.out(0), name=L.name)]
    y = pool2d(g, L, L.bottoms[0], L.bshapes[0], L.tshapes[0][2:], p.pool, k, s, pad, L.out(0), mask)
    return [y] if mask is None else [y, mask]


@converter('SPP')
def _spp(g, L):
    """Pyramid levels l = 0..height-1: pooling with kernel ceil(H / 2^l), stride
    the same, pad (kernel 2^l - H + 1) / 2, each flattened, concatenated."""
    p = L.lp.spp_param
    N, C, H, W = L.bshapes[0]
    if p.pyramid_height == 1:
        pooled = g.node('GlobalMaxPool' if p.pool == p.MAX else 'GlobalAveragePool', [L.bottoms[0]], name=L.name)
        return [g.reshape(pooled, g.batch_shape([N, C], True), L.out(0), name=L.name)]
    parts = []
    for lvl in range(p.pyramid_height):
        bins = 2 ** lvl
        kh, kw = -(-H // bins), -(-W // bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        oh = -(-(H + 2 * ph - kh) // kh) + 1
        ow = -(-(W + 2 * pw - kw) // kw) + 1
        if ph and (oh - 1) * kh >= H + ph:
            oh -= 1
        if pw and (ow - 1) * kw >= W + pw:
            ow -= 1
        y = pool2d(g, L, L.bottoms[0], L.bshapes[0], (oh, ow), p.pool, (kh, kw), (kh, kw), (ph, pw))
        parts.append(g.reshape(y, g.batch_shape([N, C * oh * ow], True), name=L.name))
    return [g.node('Concat', parts, L.out(0), name=L.name, axis=1)]


@converter('LRN')
def _lrn(g, L):
    p = L.lp.lrn_param
    size = int(p.local_size)
    if p.norm_region == p.ACROSS_CHANNELS:
        return [g.node('LRN', [L.bottoms[0]], L.out(0), name=L.name, size=size, alpha=float(p.alpha),
                       beta=float(p.beta), bias=float(p.k))]
    # WITHIN_CHANNEL: x (1 + alpha * mean of x^2 over the zero-padded size x size window)^-beta
    x = L.bottoms[0]
    pad = (size - 1) // 2
    sq = g.node('Mul', [x, x], name=L.name)
    avg = g.node('AveragePool', [sq], name=L.name, kernel_shape=[size, size], strides=[1, 1],
                 pads=[pad, pad, size - 1 - pad, size - 1 - pad], count_include_pad=1)
    sc = g.node('Mul', [avg, g.scalar(L.name + '/alpha', p.alpha)], name=L.name)
    sc = g.node('Add', [sc, g.scalar(L.name + '/one', 1.0)], name=L.name)
    sc = g.node('Pow', [sc, g.scalar(L.name + '/beta', -p.beta)], name=L.name)
    return [g.node('Mul', [x, sc], L.out(0), name=L.name)]


# ---------------------------------------------------------------------------
# Inner product, embedding, normalization
# ---------------------------------------------------------------------------
@converter('InnerProduct')
def _inner_product(g, L):
    """y = x W^T + b over the axes from ``axis`` on (W is N x K, or K x N with transpose)."""
    p = L.lp.inner_product_param
    a = L.axis(p.axis)
    W = L.params[0]
    x = L.bottoms[0]
    nd = len(L.bshapes[0])
    if a == 1:
        if nd != 2:
            x = g.node('Flatten', [x], name=L.name, axis=1)
        ins = [x, g.const(L.name + '/weight', W)]
        if p.bias_term:
            ins.append(g.const(L.name + '/bias', L.params[1].reshape(-1)))
        return [g.node('Gemm', ins, L.out(0), name=L.name, transB=0 if p.transpose else 1)]
    x = g.reshape(x, [0] * a + [-1], name=L.name) if nd != a + 1 else x
    Wt = W if p.transpose else W.T
    if not p.bias_term:
        return [g.node('MatMul', [x, g.const(L.name + '/weight', Wt)], L.out(0), name=L.name)]
    y = g.node('MatMul', [x, g.const(L.name + '/weight', Wt)], name=L.name)
    return [g.node('Add', [y, g.const(L.name + '/bias', L.params[1].reshape(-1))], L.out(0), name=L.name)]


@converter('Embed')
def _embed(g, L):
    p = L.lp.embed_param
    idx = g.node('Cast', [L.bottoms[0]], name=L.name, to=g.onnx.TensorProto.INT64)
    if not p.bias_term:
        return [g.node('Gather', [g.const(L.name + '/weight', L.params[0]), idx], L.out(0), name=L.name, axis=0)]
    y = g.node('Gather', [g.const(L.name + '/weight', L.params[0]), idx], name=L.name, axis=0)
    return [g.node('Add', [y, g.const(L.name + '/bias', L.params[1].reshape(-1))], L.out(0), name=L.name)]


def _broadcast(shape, axis, ndim):
    """A parameter of ``shape`` laid along axes axis..: trailing ones so that
    ONNX's right-aligned broadcasting puts it there."""
    return list(shape) + [1] * (ndim - axis - len(shape))


@converter('BatchNorm')
def _batch_norm(g, L):
    """(x - mean / s) / sqrt(var / s + eps), s = the stored scale factor (0 -> 0);
    without global statistics the batch's own mean and variance."""
    p = L.lp.batch_norm_param
    nd = len(L.bshapes[0])
    global_stats = p.use_global_stats if p.HasField('use_global_stats') else True
    eps = float(p.eps)
    x = L.bottoms[0]
    if global_stats:
        s = float(L.params[2].reshape(-1)[0])
        f = 0.0 if s == 0 else 1.0 / s
        mean = (L.params[0] * np.float32(f)).astype(np.float32)
        var = (L.params[1] * np.float32(f)).astype(np.float32)
        C = mean.shape[0]
        a = (1.0 / np.sqrt(var.astype(np.float64) + eps)).astype(np.float32)
        b = (-mean.astype(np.float64) * a).astype(np.float32)
        bshape = _broadcast([C], 1, nd)
        y = g.node('Mul', [x, g.const(L.name + '/scale', a.reshape(bshape))], name=L.name)
        return [g.node('Add', [y, g.const(L.name + '/shift', b.reshape(bshape))], L.out(0), name=L.name)]
    axes = [0] + list(range(2, nd))
    m = g.reduce('ReduceMean', x, axes, True, name=L.name)
    d = g.node('Sub', [x, m], name=L.name)
    v = g.reduce('ReduceMean', g.node('Mul', [d, d], name=L.name), axes, True, name=L.name)
    sd = g.node('Sqrt', [g.node('Add', [v, g.scalar(L.name + '/eps', eps)], name=L.name)], name=L.name)
    return [g.node('Div', [d, sd], L.out(0), name=L.name)]


def _param_along(g, L, j, axis, hint):
    """Parameter ``j`` as a constant laid along the bottom's axes from ``axis`` on."""
    val = L.params[j]
    return g.const(L.name + hint, val.reshape(_broadcast(val.shape, axis, len(L.bshapes[0]))))


def _bottom_along(g, L, axis):
    """bottom[1] laid along bottom[0]'s axes from ``axis`` on (trailing ones added)."""
    nd, vshape = len(L.bshapes[0]), L.bshapes[1]
    if len(vshape) + axis == nd:
        return L.bottoms[1]
    return g.reshape(L.bottoms[1], [0] * len(vshape) + [1] * (nd - axis - len(vshape)), name=L.name)


@converter('Scale')
def _scale(g, L):
    """y = x * s (+ b), s (bottom[1] or a parameter) and b along axes axis..axis+num_axes."""
    p = L.lp.scale_param
    a = L.axis(p.axis)
    two = len(L.bottoms) > 1
    s = _bottom_along(g, L, a) if two else _param_along(g, L, 0, a, '/scale')
    if not p.bias_term:
        return [g.node('Mul', [L.bottoms[0], s], L.out(0), name=L.name)]
    y = g.node('Mul', [L.bottoms[0], s], name=L.name)
    return [g.node('Add', [y, _param_along(g, L, 0 if two else 1, a, '/bias')], L.out(0), name=L.name)]


@converter('Bias')
def _bias(g, L):
    """y = x + b, b (bottom[1] or a parameter) along axes axis..axis+num_axes."""
    a = L.axis(L.lp.bias_param.axis)
    b = _bottom_along(g, L, a) if len(L.bottoms) > 1 else _param_along(g, L, 0, a, '/bias')
    return [g.node('Add', [L.bottoms[0], b], L.out(0), name=L.name)]


@converter('MVN')
def _mvn(g, L):
    """x - mean, over (C,)H,W of each sample; normalize_variance: / (std + eps)."""
    p = L.lp.mvn_param
    nd = len(L.bshapes[0])
    axes = list(range(1 if p.across_channels else 2, nd))
    x = L.bottoms[0]
    m = g.reduce('ReduceMean', x, axes, True, name=L.name)
    if not p.normalize_variance:
        return [g.node('Sub', [x, m], L.out(0), name=L.name)]
    d = g.node('Sub', [x, m], name=L.name)
    v = g.reduce('ReduceMean', g.node('Mul', [d, d], name=L.name), axes, True, name=L.name)
    sd = g.node('Add', [g.node('Sqrt', [v], name=L.name), g.scalar(L.name + '/eps', p.eps)], name=L.name)
    return [g.node('Div', [d, sd], L.out(0), name=L.name)]


# ---------------------------------------------------------------------------
# Softmax, Eltwise, Reduction, ArgMax
# ---------------------------------------------------------------------------
@converter('Softmax')
def _softmax(g, L):
    return [g.node('Softmax', [L.bottoms[0]], L.out(0), name=L.name, axis=L.axis(L.lp.softmax_param.axis))]


@converter('Eltwise')
def _eltwise(g, L):
    p = L.lp.eltwise_param
    E = caffe_pb2.EltwiseParameter
    xs = L.bottoms
    if p.operation == E.PROD:
        y = xs[0]
        for j, x in enumerate(xs[1:]):
            y = g.node('Mul', [y, x], L.out(0) if j == len(xs) - 2 else None, name=L.name)
        return [y]
    if p.operation == E.MAX:
        return [g.node('Max', xs, L.out(0), name=L.name)]
    coeffs = list(p.coeff)
    if coeffs and len(coeffs) != len(xs):
        raise L.error('Eltwise has %d coefficients for %d bottoms' % (len(coeffs), len(xs)))
    if coeffs and any(c != 1 for c in coeffs):
        xs = [x if c == 1 else g.node('Mul', [x, g.scalar(L.name + '/coeff', c)], name=L.name)
              for x, c in zip(xs, coeffs)]
    return [g.node('Sum', xs, L.out(0), name=L.name)]


@converter('Reduction')
def _reduction(g, L):
    """SUM, ASUM, SUMSQ or MEAN over the axes from ``axis`` on, times coeff."""
    p = L.lp.reduction_param
    R = caffe_pb2.ReductionParameter
    nd = len(L.bshapes[0])
    a = L.axis(p.axis)
    op = {R.SUM: 'ReduceSum', R.ASUM: 'ReduceL1', R.SUMSQ: 'ReduceSumSquare', R.MEAN: 'ReduceMean'}[p.operation]
    axes = list(range(a, nd))
    last = p.coeff == 1
    y = g.reduce(op, L.bottoms[0], axes, False, L.out(0) if last else None, name=L.name)
    if last:
        return [y]
    return [g.node('Mul', [y, g.scalar(L.name + '/coeff', p.coeff)], L.out(0), name=L.name)]


@converter('ArgMax')
def _argmax(g, L):
    """TopK along ``axis`` (or over each sample's flattened values): indices as
    floats, or with out_max_val the values (with ``axis``) or both (without)."""
    p = L.lp.argmax_param
    k = g.ints(L.name + '/k', [p.top_k])
    x = L.bottoms[0]
    flt = g.onnx.TensorProto.FLOAT
    if p.HasField('axis'):
        a = L.axis(p.axis)
        vals, idx = g.node('TopK', [x, k], nout=2, name=L.name, axis=a)
        if p.out_max_val:
            return [g.node('Identity', [vals], L.out(0), name=L.name)]
        return [g.node('Cast', [idx], L.out(0), name=L.name, to=flt)]
    x2 = g.reshape(x, g.batch_shape([L.bshapes[0][0], -1], True), name=L.name)
    vals, idx = g.node('TopK', [x2, k], nout=2, name=L.name, axis=1)
    idx = g.node('Cast', [idx], name=L.name, to=flt)
    if not p.out_max_val:
        return [g.reshape(idx, g.batch_shape(L.tshapes[0], True), L.out(0), name=L.name)]
    one = g.ints(L.name + '/axis1', [1])
    both = g.node('Concat', [g.node('Unsqueeze', [idx, one], name=L.name),
                             g.node('Unsqueeze', [vals, one], name=L.name)], name=L.name, axis=1)
    return [g.reshape(both, g.batch_shape(L.tshapes[0], True), L.out(0), name=L.name)]


# ---------------------------------------------------------------------------
# Neurons
# ---------------------------------------------------------------------------
def _unary(op, **attrs):
    def fn(g, L):
        return [g.node(op, [L.bottoms[0]], L.out(0), name=L.name, **attrs)]
    return fn


converter('Sigmoid')(_unary('Sigmoid'))
converter('TanH')(_unary('Tanh'))
converter('AbsVal')(_unary('Abs'))
converter('BNLL')(_unary('Softplus'))


@converter('ReLU')
def _relu(g, L):
    slope = float(L.lp.relu_param.negative_slope)
    if slope:
        return [g.node('LeakyRelu', [L.bottoms[0]], L.out(0), name=L.name, alpha=slope)]
    return [g.node('Relu', [L.bottoms[0]], L.out(0), name=L.name)]


@converter('ELU')
def _elu(g, L):
    return [g.node('Elu', [L.bottoms[0]], L.out(0), name=L.name, alpha=float(L.lp.elu_param.alpha))]


@converter('PReLU')
def _prelu(g, L):
    nd = len(L.bshapes[0])
    slope = L.params[0]
    s = slope.reshape(()) if L.lp.prelu_param.channel_shared else slope.reshape(_broadcast(slope.shape, 1, nd))
    return [g.node('PRelu', [L.bottoms[0], g.const(L.name + '/slope', s)], L.out(0), name=L.name)]


@converter('Threshold')
def _threshold(g, L):
    gt = g.node('Greater', [L.bottoms[0], g.scalar(L.name + '/threshold', L.lp.threshold_param.threshold)],
                name=L.name)
    return [g.node('Cast', [gt], L.out(0), name=L.name, to=g.onnx.TensorProto.FLOAT)]


@converter('Clip')
def _clip(g, L):
    p = L.lp.clip_param
    return [g.node('Clip', [L.bottoms[0], g.scalar(L.name + '/min', p.min), g.scalar(L.name + '/max', p.max)],
                   L.out(0), name=L.name)]


@converter('Swish')
def _swish(g, L):
    beta = float(L.lp.swish_param.beta)
    x = L.bottoms[0]
    bx = x if beta == 1 else g.node('Mul', [x, g.scalar(L.name + '/beta', beta)], name=L.name)
    return [g.node('Mul', [x, g.node('Sigmoid', [bx], name=L.name)], L.out(0), name=L.name)]


def _affine(g, L, x, scale, shift, out=None):
    """shift + scale * x, leaving out the identity parts."""
    if scale != 1:
        x = g.node('Mul', [x, g.scalar(L.name + '/scale', scale)], None if shift else out, name=L.name)
    if shift:
        x = g.node('Add', [x, g.scalar(L.name + '/shift', shift)], out, name=L.name)
    return x


def _finish(g, L, y):
    return y if y != L.bottoms[0] else g.node('Identity', [y], L.out(0), name=L.name)


@converter('Power')
def _power(g, L):
    """y = (shift + scale x)^power."""
    p = L.lp.power_param
    if p.power == 1:
        return [_finish(g, L, _affine(g, L, L.bottoms[0], p.scale, p.shift, L.out(0)))]
    y = _affine(g, L, L.bottoms[0], p.scale, p.shift)
    return [g.node('Pow', [y, g.scalar(L.name + '/power', p.power)], L.out(0), name=L.name)]


def _ln_base(L, base):
    if base == -1:
        return 1.0
    if base <= 0:
        raise L.error('base must be strictly positive or -1 (e), got %g' % base)
    return math.log(base)


@converter('Exp')
def _exp(g, L):
    """y = base^(shift + scale x) = exp(ln(base) (shift + scale x)); base -1 is e."""
    p = L.lp.exp_param
    lb = _ln_base(L, p.base)
    y = _affine(g, L, L.bottoms[0], lb * p.scale, lb * p.shift)
    return [g.node('Exp', [y], L.out(0), name=L.name)]


@converter('Log')
def _log(g, L):
    """y = log_base(shift + scale x) = ln(shift + scale x) / ln(base); base -1 is e."""
    p = L.lp.log_param
    lb = _ln_base(L, p.base)
    y = _affine(g, L, L.bottoms[0], p.scale, p.shift)
    if lb == 1:
        return [g.node('Log', [y], L.out(0), name=L.name)]
    y = g.node('Log', [y], name=L.name)
    return [g.node('Mul', [y, g.scalar(L.name + '/inv_log_base', 1.0 / lb)], L.out(0), name=L.name)]


# ---------------------------------------------------------------------------
# SSD layers (weiliu89's fork)
# ---------------------------------------------------------------------------
@converter('Permute')
def _permute(g, L):
    order = [int(o) for o in L.lp.permute_param.order]
    perm = order + [i for i in range(len(L.bshapes[0])) if i not in order]
    if g.dynamic and perm[0] != 0:
        raise L.error('a permutation that moves the batch axis cannot have a dynamic batch; '
                      'export without --dynamic-batch')
    return [g.node('Transpose', [L.bottoms[0]], L.out(0), name=L.name, perm=perm)]


@converter('Normalize')
def _normalize(g, L):
    """y = s x / sqrt(sum(x^2) + eps), the sum over (C, H, W) of each sample
    (across_spatial) or over C at each position; s one scale or one per channel."""
    p = L.lp.norm_param
    nd = len(L.bshapes[0])
    x = L.bottoms[0]
    sq = g.reduce('ReduceSumSquare', x, list(range(1, nd)) if p.across_spatial else [1], True, name=L.name)
    norm = g.node('Sqrt', [g.node('Add', [sq, g.scalar(L.name + '/eps', p.eps)], name=L.name)], name=L.name)
    y = g.node('Div', [x, norm], name=L.name)
    scale = L.params[0]
    scale = scale.reshape(()) if p.channel_shared else scale.reshape(_broadcast(scale.shape, 1, nd))
    return [g.node('Mul', [y, g.const(L.name + '/scale', scale)], L.out(0), name=L.name)]


@converter('PriorBox')
def _prior_box(g, L):
    """A constant: the boxes depend on the shapes only, so caffeine computes them once."""
    L.layer.Forward(L.bottom_blobs, L.top_blobs)
    boxes = g.const(L.name + '/priors', np.array(L.top_blobs[0].data, np.float32))
    return [g.node('Identity', [boxes], L.out(0), name=L.name)]


# ---------------------------------------------------------------------------
# Other forks' layers (ShuffleNet, MobileNet, SENet, PSPNet)
# ---------------------------------------------------------------------------
@converter('ShuffleChannel')
def _shuffle_channel(g, L):
    """Channels seen as (group, C / group), transposed to (C / group, group)."""
    group = int(L.lp.shuffle_channel_param.group)
    shape = L.bshapes[0]
    C, rest = shape[1], list(shape[2:])
    x = g.reshape(L.bottoms[0], g.batch_shape([shape[0], group, C // group] + rest, True), name=L.name)
    perm = [0, 2, 1] + list(range(3, 3 + len(rest)))
    y = g.node('Transpose', [x], name=L.name, perm=perm)
    return [g.reshape(y, g.batch_shape(shape, True), L.out(0), name=L.name)]


@converter('ConvolutionDepthwise')
def _convolution_depthwise(g, L):
    """A Convolution with one group per input channel."""
    attrs = _conv_geometry(L, L.lp.convolution_param)
    attrs['group'] = L.bshapes[0][1]
    ins = [L.bottoms[0], g.const(L.name + '/weight', L.params[0])]
    if L.lp.convolution_param.bias_term:
        ins.append(g.const(L.name + '/bias', L.params[1]))
    return [g.node('Conv', ins, L.out(0), name=L.name, **attrs)]


@converter('Axpy')
def _axpy(g, L):
    """top = a x + y, a one scale per sample and channel."""
    a, x, y = L.bottoms
    nd = len(L.bshapes[1])
    a = g.reshape(a, g.batch_shape(list(L.bshapes[1][:2]) + [1] * (nd - 2), True), name=L.name)
    return [g.node('Add', [g.node('Mul', [a, x], name=L.name), y], L.out(0), name=L.name)]


@converter('ReLU6')
def _relu6(g, L):
    return [g.node('Clip', [L.bottoms[0], g.scalar(L.name + '/zero', 0.0), g.scalar(L.name + '/six', 6.0)],
                   L.out(0), name=L.name)]


@converter('BN')
def _bn(g, L):
    """PSPNet's BN at TEST: slope (x - mean) / sqrt(var + eps) + bias, the stored statistics."""
    slope, bias, mean, var = (v.reshape(-1).astype(np.float64) for v in L.params)
    a = slope / np.sqrt(var + float(L.lp.bn_param.eps))
    shape = _broadcast([a.size], 1, len(L.bshapes[0]))
    y = g.node('Mul', [L.bottoms[0], g.const(L.name + '/scale', a.reshape(shape))], name=L.name)
    return [g.node('Add', [y, g.const(L.name + '/shift', (bias - mean * a).reshape(shape))], L.out(0), name=L.name)]


@converter('Upsample')
def _upsample(g, L):
    """SegNet's max unpooling: each value to the position its mask (h * W_out + w)
    names in its channel's output plane, zeros elsewhere."""
    ho, wo = L.tshapes[0][2:]
    shape = g.node('Shape', [L.bottoms[0]], name=L.name)
    nc = g.node('Slice', [shape, g.ints(L.name + '/start', [0]), g.ints(L.name + '/end', [2])], name=L.name)
    full = g.node('Concat', [nc, g.ints(L.name + '/plane', [ho * wo])], name=L.name, axis=0)
    zeros = g.node('ConstantOfShape', [full], name=L.name,
                   value=g.onnx.numpy_helper.from_array(np.zeros(1, np.float32)))
    x = g.reshape(L.bottoms[0], [0, 0, -1], name=L.name)
    idx = g.node('Cast', [g.reshape(L.bottoms[1], [0, 0, -1], name=L.name)], name=L.name,
                 to=g.onnx.TensorProto.INT64)
    y = g.node('ScatterElements', [zeros, idx, x], name=L.name, axis=2)
    return [g.reshape(y, [0, 0, ho, wo], L.out(0), name=L.name)]


@converter('ROIPooling')
def _roi_pooling(g, L):
    """Fast R-CNN's ROIPooling is ONNX's MaxRoiPool (rois: batch index, x1, y1, x2, y2)."""
    p = L.lp.roi_pooling_param
    return [g.node('MaxRoiPool', [L.bottoms[0], L.bottoms[1]], L.out(0), name=L.name,
                   pooled_shape=[int(p.pooled_h), int(p.pooled_w)], spatial_scale=float(p.spatial_scale))]


# ---------------------------------------------------------------------------
# Recurrent layers
# ---------------------------------------------------------------------------
def _lstm_cell(g, name, gates, c_prev, cont, H, axis):
    """Caffe's LSTMUnit: gates (i, f, o, g along ``axis``) -> (c, h) with
    c = cont f c_prev + i g, h = o tanh(c); ``cont`` broadcasts over the units."""
    i, f, o, gg = g.node('Split', [gates, g.ints(name + '/split', [H] * 4)], nout=4, name=name, axis=axis)
    i, f, o = (g.node('Sigmoid', [v], name=name) for v in (i, f, o))
    gg = g.node('Tanh', [gg], name=name)
    kept = g.node('Mul', [cont, g.node('Mul', [f, c_prev], name=name)], name=name)
    c = g.node('Add', [kept, g.node('Mul', [i, gg], name=name)], name=name)
    h = g.node('Mul', [o, g.node('Tanh', [c], name=name)], name=name)
    return c, h


@converter('LSTMUnit')
def _lstm_unit(g, L):
    H = L.bshapes[0][2]
    cont = g.node('Unsqueeze', [L.bottoms[2], g.ints(L.name + '/axis2', [2])], name=L.name)
    c, h = _lstm_cell(g, L.name, L.bottoms[1], L.bottoms[0], cont, H, 2)
    return [g.node('Identity', [c], L.out(0), name=L.name), g.node('Identity', [h], L.out(1), name=L.name)]


def _subgraph(g):
    """A graph for a Scan body: its own nodes, the outer graph's names and initializers."""
    sub = Graph(g.onnx, g.opset, g.dynamic, ())
    sub.used, sub.inits = g.used, g.inits
    return sub


@converter('LSTM', 'RNN')
def _recurrent(g, L):
    """Caffe's unrolled recurrence as one ONNX Scan over the T steps, with the
    sequence-continuation input: LSTM h_t = LSTMUnit(W_xc x_t + b_c (+ W_xc_static
    x_static) + W_hc (cont_t h_{t-1})); RNN h_t = tanh(W_xh x_t + b_h (+ static) +
    W_hh (cont_t h_{t-1})), o_t = tanh(W_ho h_t + b_o).  The state starts at zero
    (or at the exposed h_0, c_0 bottoms): Caffe's first forward pass; Caffe carries
    h_T into the next call, which a stateless graph does not (use expose_hidden)."""
    onnx = g.onnx
    rp = L.lp.recurrent_param
    lstm = L.type == 'LSTM'
    nrec = 2 if lstm else 1
    H = int(rp.num_output)
    T, N = L.bshapes[0][:2]
    exposed = nrec if rp.expose_hidden else 0
    static = len(L.bottoms) > 2 + exposed
    P = L.params
    G = P[1].shape[0]
    x = g.reshape(L.bottoms[0], [0, 0, -1], name=L.name)
    gx = g.node('MatMul', [x, g.const(L.name + '/W_x', P[0].T)], name=L.name)
    gx = g.node('Add', [gx, g.const(L.name + '/b_x', P[1])], name=L.name)
    if static:
        xs = g.reshape(L.bottoms[2], [0, -1], name=L.name)
        gx = g.node('Add', [gx, g.node('MatMul', [xs, g.const(L.name + '/W_static', P[2].T)], name=L.name)],
                    name=L.name)
    k = 3 if static else 2
    if exposed:
        axis0 = g.ints(L.name + '/axis0', [0])
        init = [g.node('Squeeze', [b, axis0], name=L.name) for b in L.bottoms[k:k + nrec]]
    else:
        init = [g.const(L.name + '/zero_state', np.zeros((N, H), np.float32)) for _ in range(nrec)]
    W_h = g.const(L.name + '/W_h', P[k].T)
    flt = onnx.TensorProto.FLOAT
    b = _subgraph(g)
    states = [b.fresh('%s/%s_prev' % (L.name, s)) for s in ('h', 'c')[:nrec]]
    gx_t, cont_t = b.fresh(L.name + '/gates_x_t'), b.fresh(L.name + '/cont_t')
    cont = b.node('Unsqueeze', [cont_t, b.ints(L.name + '/axis1', [1])], name=L.name)
    hc = b.node('Mul', [states[0], cont], name=L.name)
    pre = b.node('Add', [gx_t, b.node('MatMul', [hc, W_h], name=L.name)], name=L.name)
    if lstm:
        c, h = _lstm_cell(b, L.name, pre, states[1], cont, H, 1)
        outs = [h, c, b.node('Identity', [h], name=L.name)]
        out_shapes = [[N, H]] * 3
    else:
        h = b.node('Tanh', [pre], name=L.name)
        o = b.node('MatMul', [h, b.const(L.name + '/W_o', P[k + 1].T)], name=L.name)
        o = b.node('Tanh', [b.node('Add', [o, b.const(L.name + '/b_o', P[k + 2])], name=L.name)], name=L.name)
        outs = [h, o]
        out_shapes = [[N, H], [N, P[k + 1].shape[0]]]
    body = onnx.helper.make_graph(
        b.nodes, L.name + '/step',
        [onnx.helper.make_tensor_value_info(s, flt, [N, H]) for s in states]
        + [onnx.helper.make_tensor_value_info(gx_t, flt, [N, G]), onnx.helper.make_tensor_value_info(cont_t, flt, [N])],
        [onnx.helper.make_tensor_value_info(o, flt, s) for o, s in zip(outs, out_shapes)])
    got = g.node('Scan', init + [gx, L.bottoms[1]], nout=nrec + 1, name=L.name, body=body, num_scan_inputs=2)
    seq = g.node('Identity', [got[-1]], L.out(0), name=L.name)
    if not exposed:
        return [seq]
    axis0 = g.ints(L.name + '/axis0', [0])
    return [seq] + [g.node('Unsqueeze', [s, axis0], L.out(1 + j), name=L.name) for j, s in enumerate(got[:nrec])]


@converter('Filter')
def _filter(g, L):
    """The items (along axis 0) whose selector (the last bottom) is non-zero."""
    sel = g.reshape(L.bottoms[-1], [-1], name=L.name)
    keep = g.node('Not', [g.node('Equal', [sel, g.scalar(L.name + '/zero', 0.0)], name=L.name)], name=L.name)
    return [g.node('Compress', [x, keep], L.out(j), name=L.name, axis=0) for j, x in enumerate(L.bottoms[:-1])]


# ---------------------------------------------------------------------------
# Losses and accuracy (a TEST-phase net's scores)
# ---------------------------------------------------------------------------
FLT_MIN = float(np.finfo(np.float32).tiny)


def _outer_c_inner(g, L, x, axis):
    """x viewed as outer x C x inner around ``axis`` (the batch stays dynamic)."""
    shape = L.bshapes[0]
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return g.reshape(x, g.batch_shape([outer, shape[axis], inner], axis > 0), name=L.name)


def _labels(g, L, lab, shape):
    """Labels as int64 (truncated, as Caffe's int cast) in ``shape``."""
    lab = g.reshape(lab, shape, name=L.name)
    return g.node('Cast', [lab], name=L.name, to=g.onnx.TensorProto.INT64)


def _ignore_mask(g, L, lab, ignore_label):
    """(labels with ignored ones set to 0, float mask of the valid ones)."""
    ok = g.node('Not', [g.node('Equal', [lab, g.ints(L.name + '/ignore', [ignore_label])], name=L.name)],
                name=L.name)
    safe = g.node('Where', [ok, lab, g.ints(L.name + '/zero', [0])], name=L.name)
    return safe, g.node('Cast', [ok], name=L.name, to=g.onnx.TensorProto.FLOAT)


def _normalized(g, L, per_item, mask, mode, out):
    """Caffe's normalized loss of ``per_item`` (outer x inner): FULL and VALID
    (no ignored label) divide by outer*inner, VALID by the valid count (at
    least 1), BATCH_SIZE by outer, NONE by 1."""
    LP = caffe_pb2.LossParameter
    neg = g.scalar(L.name + '/minus_one', -1.0)
    if mask is not None:
        per_item = g.node('Mul', [per_item, mask], name=L.name)
    if mode == LP.VALID and mask is not None:
        total = g.reduce('ReduceSum', per_item, [0, 1], False, name=L.name)
        count = g.reduce('ReduceSum', mask, [0, 1], False, name=L.name)
        count = g.node('Max', [count, g.scalar(L.name + '/one', 1.0)], name=L.name)
        return g.node('Div', [g.node('Mul', [total, neg], name=L.name), count], out, name=L.name)
    if mode in (LP.FULL, LP.VALID):
        total = g.reduce('ReduceMean', per_item, [0, 1], False, name=L.name)
    elif mode == LP.BATCH_SIZE:
        total = g.reduce('ReduceMean', g.reduce('ReduceSum', per_item, [1], False, name=L.name), [0], False,
                         name=L.name)
    elif mode == LP.NONE:
        total = g.reduce('ReduceSum', per_item, [0, 1], False, name=L.name)
    else:
        raise L.error('unknown normalization mode %d' % mode)
    return g.node('Mul', [total, neg], out, name=L.name)


def _normalization(lp, default):
    p = lp.loss_param
    if p.HasField('normalization'):
        return p.normalization
    if p.HasField('normalize'):
        return caffe_pb2.LossParameter.VALID if p.normalize else caffe_pb2.LossParameter.BATCH_SIZE
    return default


@converter('SoftmaxWithLoss')
def _softmax_with_loss(g, L):
    """-sum log(max(softmax(x)[label], FLT_MIN)) / normalizer; top 1: the softmax."""
    a = L.axis(L.lp.softmax_param.axis)
    prob = g.node('Softmax', [L.bottoms[0]], L.out(1) if len(L.tshapes) > 1 else None, name=L.name, axis=a)
    p3 = _outer_c_inner(g, L, prob, a)
    shape = L.bshapes[0]
    inner = int(np.prod(shape[a + 1:], dtype=np.int64))
    lab = _labels(g, L, L.bottoms[1], g.batch_shape([int(np.prod(shape[:a], dtype=np.int64)), 1, inner], a > 0))
    mask = None
    if L.lp.loss_param.HasField('ignore_label'):
        lab, mask = _ignore_mask(g, L, lab, L.lp.loss_param.ignore_label)
        mask = g.node('Squeeze', [mask, g.ints(L.name + '/axis1', [1])], name=L.name)
    picked = g.node('GatherElements', [p3, lab], name=L.name, axis=1)
    picked = g.node('Max', [picked, g.scalar(L.name + '/flt_min', FLT_MIN)], name=L.name)
    logp = g.node('Squeeze', [g.node('Log', [picked], name=L.name), g.ints(L.name + '/axis1', [1])],
                  name=L.name)
    loss = _normalized(g, L, logp, mask, _normalization(L.lp, caffe_pb2.LossParameter.VALID), L.out(0))
    return [loss, prob] if len(L.tshapes) > 1 else [loss]


@converter('InfogainLoss')
def _infogain_loss(g, L):
    """-sum_i sum_l H[label_i, l] log(max(softmax(x)_il, 1e-20)) / normalizer; H is
    bottom[2] or the BlobProto file infogain_loss_param.source; top 1: the softmax."""
    a = L.axis(L.lp.infogain_loss_param.axis)
    shape = L.bshapes[0]
    C = shape[a]
    outer = int(np.prod(shape[:a], dtype=np.int64))
    inner = int(np.prod(shape[a + 1:], dtype=np.int64))
    prob = g.node('Softmax', [L.bottoms[0]], L.out(1) if len(L.tshapes) > 1 else None, name=L.name, axis=a)
    logp = g.node('Log', [g.node('Max', [_outer_c_inner(g, L, prob, a), g.scalar(L.name + '/threshold', 1e-20)],
                                 name=L.name)], name=L.name)
    if len(L.bottoms) > 2:
        H = g.reshape(L.bottoms[2], [C, C], name=L.name)
    else:
        H = g.const(L.name + '/infogain', _read_blob_proto(L, L.lp.infogain_loss_param.source).reshape(C, C))
    lab = _labels(g, L, L.bottoms[1], g.batch_shape([outer, inner], a > 0))
    mask = None
    if L.lp.loss_param.HasField('ignore_label'):
        lab, mask = _ignore_mask(g, L, lab, L.lp.loss_param.ignore_label)
    rows = g.node('Transpose', [g.node('Gather', [H, lab], name=L.name, axis=0)], name=L.name,
                  perm=[0, 2, 1])                                          # outer x C x inner
    per = g.reduce('ReduceSum', g.node('Mul', [rows, logp], name=L.name), [1], False, name=L.name)
    loss = _normalized(g, L, per, mask, L.lp.loss_param.normalization, L.out(0))
    return [loss, prob] if len(L.tshapes) > 1 else [loss]


def _read_blob_proto(L, path):
    try:
        with open(path, 'rb') as f:
            proto = caffe_pb2.BlobProto.FromString(f.read())
    except OSError as e:
        raise L.error('cannot read %r: %s' % (path, e.strerror or e))
    return blob_proto_to_array(proto).astype(np.float32)


@converter('SigmoidCrossEntropyLoss')
def _sigmoid_cross_entropy_loss(g, L):
    """sum[max(x, 0) - x t + log(1 + exp(-|x|))] / normalizer (Caffe's stable form)."""
    x = L.bottoms[0]
    shape = L.bshapes[0]
    inner = int(np.prod(shape[1:], dtype=np.int64))
    x2 = g.reshape(x, g.batch_shape([shape[0], inner], True), name=L.name)
    t2 = g.reshape(L.bottoms[1], g.batch_shape([shape[0], inner], True), name=L.name)
    xt = g.node('Mul', [x2, t2], name=L.name)
    sp = g.node('Softplus', [g.node('Neg', [g.node('Abs', [x2], name=L.name)], name=L.name)], name=L.name)
    term = g.node('Add', [g.node('Sub', [g.node('Relu', [x2], name=L.name), xt], name=L.name), sp], name=L.name)
    term = g.node('Neg', [term], name=L.name)      # Caffe sums the negated term
    mask = None
    if L.lp.loss_param.HasField('ignore_label'):
        _, mask = _ignore_mask(g, L, g.node('Cast', [t2], name=L.name, to=g.onnx.TensorProto.INT64),
                               L.lp.loss_param.ignore_label)
    mode = _normalization(L.lp, caffe_pb2.LossParameter.BATCH_SIZE)
    return [_normalized(g, L, term, mask, mode, L.out(0))]


@converter('EuclideanLoss')
def _euclidean_loss(g, L):
    """sum((a - b)^2) / N / 2."""
    shape = L.bshapes[0]
    flat = g.batch_shape([shape[0], -1], True)
    a = g.reshape(L.bottoms[0], flat, name=L.name)
    b = g.reshape(L.bottoms[1], flat, name=L.name)
    sq = g.reduce('ReduceSumSquare', g.node('Sub', [a, b], name=L.name), [1], False, name=L.name)
    mean = g.reduce('ReduceMean', sq, [0], False, name=L.name)
    return [g.node('Mul', [mean, g.scalar(L.name + '/half', 0.5)], L.out(0), name=L.name)]


@converter('ContrastiveLoss')
def _contrastive_loss(g, L):
    """sum[y d^2 + (1 - y) max(margin - d, 0)^2] / 2N, d = ||a - b|| (legacy:
    max(margin - d^2, 0)); a pair is similar when int(y) != 0."""
    p = L.lp.contrastive_loss_param
    shape = L.bshapes[0]
    flat = g.batch_shape([shape[0], -1], True)
    d = g.node('Sub', [g.reshape(L.bottoms[0], flat, name=L.name), g.reshape(L.bottoms[1], flat, name=L.name)],
               name=L.name)
    dsq = g.reduce('ReduceSumSquare', d, [1], False, name=L.name)
    m = g.scalar(L.name + '/margin', p.margin)
    zero = g.scalar(L.name + '/zero', 0.0)
    if p.legacy_version:
        dis = g.node('Max', [g.node('Sub', [m, dsq], name=L.name), zero], name=L.name)
    else:
        r = g.node('Max', [g.node('Sub', [m, g.node('Sqrt', [dsq], name=L.name)], name=L.name), zero], name=L.name)
        dis = g.node('Mul', [r, r], name=L.name)
    y = g.reshape(L.bottoms[2], g.batch_shape([shape[0]], True), name=L.name)
    sim = g.node('GreaterOrEqual', [g.node('Abs', [y], name=L.name), g.scalar(L.name + '/one', 1.0)], name=L.name)
    per = g.node('Where', [sim, dsq, dis], name=L.name)
    mean = g.reduce('ReduceMean', per, [0], False, name=L.name)
    return [g.node('Mul', [mean, g.scalar(L.name + '/half', 0.5)], L.out(0), name=L.name)]


def _per_sample(g, L):
    """(scores as N x dim, labels as int64 N x 1)."""
    n = L.bshapes[0][0]
    x = g.reshape(L.bottoms[0], g.batch_shape([n, -1], True), name=L.name)
    return x, _labels(g, L, L.bottoms[1], g.batch_shape([n, 1], True))


@converter('MultinomialLogisticLoss')
def _multinomial_logistic_loss(g, L):
    """-sum log(max(p[label], 1e-20)) / N, on probabilities."""
    p, lab = _per_sample(g, L)
    picked = g.node('GatherElements', [p, lab], name=L.name, axis=1)
    logp = g.node('Log', [g.node('Max', [picked, g.scalar(L.name + '/threshold', 1e-20)], name=L.name)],
                  name=L.name)
    mean = g.reduce('ReduceMean', logp, [0, 1], False, name=L.name)
    return [g.node('Neg', [mean], L.out(0), name=L.name)]


@converter('HingeLoss')
def _hinge_loss(g, L):
    """sum max(0, 1 - t x)^p / N, t = 1 at the label and -1 elsewhere; p = 1 (L1) or 2 (L2)."""
    x, lab = _per_sample(g, L)
    dim = int(np.prod(L.bshapes[0][1:], dtype=np.int64))
    at_label = g.node('Equal', [lab, g.const(L.name + '/classes', np.arange(dim).reshape(1, -1), np.int64)],
                      name=L.name)
    tx = g.node('Where', [at_label, x, g.node('Neg', [x], name=L.name)], name=L.name)
    d = g.node('Relu', [g.node('Sub', [g.scalar(L.name + '/one', 1.0), tx], name=L.name)], name=L.name)
    if L.lp.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
        d = g.node('Mul', [d, d], name=L.name)
    per = g.reduce('ReduceSum', d, [1], False, name=L.name)
    return [g.reduce('ReduceMean', per, [0], False, L.out(0), name=L.name)]


@converter('Accuracy')
def _accuracy(g, L):
    """The share of samples with fewer than top_k classes scoring >= their label's;
    top 1: that share among the samples of each class (0 for a class absent)."""
    p = L.lp.accuracy_param
    a = L.axis(p.axis)
    shape = L.bshapes[0]
    inner = int(np.prod(shape[a + 1:], dtype=np.int64))
    x3 = _outer_c_inner(g, L, L.bottoms[0], a)
    lab = _labels(g, L, L.bottoms[1], g.batch_shape([int(np.prod(shape[:a], dtype=np.int64)), 1, inner], a > 0))
    mask = None
    if p.HasField('ignore_label'):
        lab, mask = _ignore_mask(g, L, lab, p.ignore_label)
    true = g.node('GatherElements', [x3, lab], name=L.name, axis=1)
    ge = g.node('Cast', [g.node('GreaterOrEqual', [x3, true], name=L.name)], name=L.name,
                to=g.onnx.TensorProto.FLOAT)
    better = g.reduce('ReduceSum', ge, [1], True, name=L.name)
    correct = g.node('Cast', [g.node('Less', [better, g.scalar(L.name + '/k', p.top_k + 1)], name=L.name)],
                     name=L.name, to=g.onnx.TensorProto.FLOAT)
    if mask is not None:
        correct = g.node('Mul', [correct, mask], name=L.name)
    tops = [_share(g, L, correct, mask, [0, 1, 2], L.out(0))]
    if len(L.tshapes) > 1:
        classes = g.const(L.name + '/classes', np.arange(shape[a]).reshape(1, -1, 1), np.int64)
        onehot = g.node('Cast', [g.node('Equal', [lab, classes], name=L.name)], name=L.name,
                        to=g.onnx.TensorProto.FLOAT)            # outer x C x inner
        hits = g.node('Mul', [onehot, correct], name=L.name)
        valid = onehot if mask is None else g.node('Mul', [onehot, mask], name=L.name)
        tops.append(_share(g, L, hits, valid, [0, 2], L.out(1)))
    return tops


def _share(g, L, hits, valid, axes, out):
    """sum(hits) / sum(valid) over ``axes`` (valid None: all), 0 where nothing is valid."""
    if valid is None:
        return g.reduce('ReduceMean', hits, axes, False, out, name=L.name)
    n = g.reduce('ReduceSum', valid, axes, False, name=L.name)
    ratio = g.node('Div', [g.reduce('ReduceSum', hits, axes, False, name=L.name),
                           g.node('Max', [n, g.scalar(L.name + '/one', 1.0)], name=L.name)], name=L.name)
    return g.node('Where', [g.node('Greater', [n, g.scalar(L.name + '/zero', 0.0)], name=L.name), ratio,
                            g.scalar(L.name + '/zero', 0.0)], out, name=L.name)


def supported_types():
    """The Caffe layer types the export writes (Input included)."""
    return sorted(set(CONVERTERS) | {'Input'})
