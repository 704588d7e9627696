"""pycaffe's ``caffe.draw``: a net's graph with pydot and Graphviz.

Layers are boxes (``record`` nodes) labelled with name, type and, for
convolution and pooling, kernel size, stride and pad; convolutions are red,
pooling orange, inner products purple, other layers blue and in-place layers
green.  Blobs are grey octagons.  Edges from a layer to its tops carry the
batch size (Data), or the number of outputs (Convolution, Deconvolution,
InnerProduct).

``get_pydot_graph`` needs pydot (``pip install 'caffeine[draw]'``);
``draw_net`` and ``draw_net_to_file`` also need Graphviz's ``dot`` program,
except for ``ext='dot'`` / ``'gv'``, which write the graph's DOT source when
Graphviz is missing.
"""
from __future__ import annotations

import os
import shutil

from .errors import CaffeineError
from .proto import caffe_pb2
from .prototxt import read_net_param

__all__ = ['get_pydot_graph', 'draw_net', 'draw_net_to_file', 'get_edge_label',
           'get_layer_label', 'get_layer_lr_mult', 'choose_color_by_layertype',
           'get_pooling_types_dict', 'LAYER_STYLE_DEFAULT', 'NEURON_LAYER_STYLE', 'BLOB_STYLE']

LAYER_STYLE_DEFAULT = {'shape': 'record', 'fillcolor': '#6495ED', 'style': 'filled'}
NEURON_LAYER_STYLE = {'shape': 'record', 'fillcolor': '#90EE90', 'style': 'filled'}
BLOB_STYLE = {'shape': 'octagon', 'fillcolor': '#E0E0E0', 'style': 'filled'}

_LAYER_COLORS = {'Convolution': '#FF5050', 'Deconvolution': '#FF5050',
                 'Pooling': '#FF9900', 'InnerProduct': '#CC33FF'}
_LEARNING_TYPES = ('Convolution', 'Deconvolution', 'InnerProduct')
_SOURCE_EXTS = ('dot', 'gv')


def _pydot():
    try:
        import pydot
    except ImportError:
        raise CaffeineError("drawing nets needs pydot: pip install 'caffeine[draw]' (or pip install pydot)")
    return pydot


def get_pooling_types_dict():
    """``{enum value: name}`` of PoolingParameter.PoolMethod, e.g. ``{0: 'MAX', ...}``."""
    return {v: k for k, v in caffe_pb2.PoolingParameter.PoolMethod.items()}


def get_edge_label(layer):
    """The label of the edges from ``layer`` to its tops (``'""'`` for none)."""
    if layer.type == 'Data':
        return 'Batch ' + str(layer.data_param.batch_size)
    if layer.type in ('Convolution', 'Deconvolution'):
        return str(layer.convolution_param.num_output)
    if layer.type == 'InnerProduct':
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """``(weight lr_mult, bias lr_mult)`` of a Convolution, Deconvolution or
    InnerProduct layer; 1.0 where its ``param`` specs do not say."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError('%s layers do not have a learning rate multiplier' % layer.type)
    mults = [p.lr_mult if p.HasField('lr_mult') else 1.0 for p in layer.param[:2]]
    mults += [1.0] * (2 - len(mults))
    return tuple(mults)


def _first(repeated, default):
    return repeated[0] if len(repeated) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """The quoted node label of ``layer``: one descriptor per line for left-right
    graphs (``rankdir`` LR/RL), separated by spaces for top-bottom ones."""
    sep = ' ' if rankdir in ('TB', 'BT') else '\\n'
    parts = [layer.name]
    if layer.type == 'Pooling':
        pool = get_pooling_types_dict().get(layer.pooling_param.pool, str(layer.pooling_param.pool))
        parts.append('(%s %s)' % (layer.type, pool))
    else:
        parts.append('(%s)' % layer.type)
    if layer.type in ('Convolution', 'Deconvolution', 'Pooling'):
        if layer.type == 'Pooling':
            p = layer.pooling_param
            kernel = p.kernel_size if p.HasField('kernel_size') else p.kernel_h
            stride = p.stride if p.HasField('stride') or not p.HasField('stride_h') else p.stride_h
            pad = p.pad if p.HasField('pad') or not p.HasField('pad_h') else p.pad_h
        else:
            p = layer.convolution_param
            kernel = _first(p.kernel_size, p.kernel_h if p.HasField('kernel_h') else 1)
            stride = _first(p.stride, p.stride_h if p.HasField('stride_h') else 1)
            pad = _first(p.pad, p.pad_h if p.HasField('pad_h') else 0)
        parts.append(sep.join(['kernel size: %d' % kernel, 'stride: %d' % stride, 'pad: %d' % pad]))
    if display_lrm and layer.type in _LEARNING_TYPES:
        w, b = get_layer_lr_mult(layer)
        if w or b:
            parts.append('lr mult: %.1f, %.1f' % (w, b))
    text = sep.join(parts).replace('"', '\\"')
    return '"%s"' % text


def choose_color_by_layertype(layertype):
    """Fill colour of a layer node: red convolutions, orange pooling, purple inner products, else blue."""
    return _LAYER_COLORS.get(layertype, LAYER_STYLE_DEFAULT['fillcolor'])


def _phase_value(phase):
    if phase is None:
        return None
    if isinstance(phase, str):
        name = phase.upper()
        if name == 'ALL':
            return None
        if name not in ('TRAIN', 'TEST'):
            raise CaffeineError("phase must be TRAIN, TEST or ALL, not %r" % phase)
        return caffe_pb2.Phase.Value(name)
    return int(phase)


def _included(layer, phase):
    """pycaffe's phase filter: include/exclude rules that name a phase (rules without one match any)."""
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise ValueError('layer ' + layer.name + ' has both include and exclude specified.')
    if len(layer.include):
        return any((not r.HasField('phase')) or r.phase == phase for r in layer.include)
    return not any(r.HasField('phase') and r.phase == phase for r in layer.exclude)


def _as_net_param(caffe_net):
    if isinstance(caffe_net, caffe_pb2.NetParameter):
        # nets in Caffe's V0/V1 formats (``layers { }``) are drawn upgraded, on a copy
        return read_net_param(caffe_net) if len(caffe_net.layers) else caffe_net
    if hasattr(caffe_net, 'to_proto') and not isinstance(caffe_net, (str, bytes, os.PathLike)):
        proto = caffe_net.to_proto()         # a NetSpec
        if isinstance(proto, caffe_pb2.NetParameter):
            return proto
    return read_net_param(caffe_net)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """A ``pydot.Dot`` graph of the net: a node per layer and per blob, an edge
    per bottom and top.

    ``caffe_net``: a NetParameter (or a prototxt path or text, or a NetSpec).
    ``rankdir``: 'LR', 'TB', 'BT' or 'RL'.  ``phase``: caffe.TRAIN or
    caffe.TEST to keep only that phase's layers, None for all.
    ``display_lrm``: add the learning rate multipliers of learning layers.
    """
    pydot = _pydot()
    net = _as_net_param(caffe_net)
    phase = _phase_value(phase)
    graph = pydot.Dot(net.name if net.name else 'Net', graph_type='digraph', rankdir=rankdir)
    nodes = {}        # key -> pydot.Node, in first-seen order
    edges = []        # (src key, dst key, label)
    for layer in net.layer:
        if not _included(layer, phase):
            continue
        layer_key = '%s_%s' % (layer.name, layer.type)
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        in_place = (len(layer.bottom) == 1 and len(layer.top) == 1
                    and layer.bottom[0] == layer.top[0])
        if in_place:
            style = dict(NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        nodes[layer_key] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes.setdefault(bottom + '_blob', pydot.Node(_blob_id(bottom), **BLOB_STYLE))
            edges.append((bottom + '_blob', layer_key, '""'))
        top_label = get_edge_label(layer) if label_edges else '""'
        for top in layer.top:
            nodes.setdefault(top + '_blob', pydot.Node(_blob_id(top), **BLOB_STYLE))
            edges.append((layer_key, top + '_blob', top_label))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], label=label))
    return graph


def _blob_id(name):
    """A blob's node id: quoted when it holds characters DOT ids cannot (pydot quotes the rest)."""
    if any(c in name for c in ':"\\'):
        return '"%s"' % name.replace('\\', '\\\\').replace('"', '\\"')
    return name


def _render(graph, ext):
    ext = ext.lower()
    if shutil.which('dot') is None:
        if ext in _SOURCE_EXTS:
            return graph.to_string().encode('utf-8')
        raise CaffeineError("rendering a net as %s needs Graphviz's 'dot' program "
                            "(apt-get install graphviz, brew install graphviz, or conda install graphviz); "
                            "without it, write .dot instead" % ext)
    try:
        return graph.create(format=ext)
    except (OSError, FileNotFoundError) as e:
        raise CaffeineError("Graphviz's 'dot' failed: %s" % (str(e).splitlines()[0] if str(e) else e))
    except AssertionError as e:   # pydot's report of a failed dot run
        raise CaffeineError("Graphviz's 'dot' failed to render %s: %s"
                            % (ext, str(e).strip().splitlines()[0] if str(e).strip() else 'unknown error'))


def draw_net(caffe_net, rankdir, ext='png', phase=None, display_lrm=False):
    """The net drawn by Graphviz, as the bytes of an ``ext`` file (png, svg, pdf, dot ...)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    return _render(graph, ext)


def draw_net_to_file(caffe_net, filename, rankdir='LR', phase=None, display_lrm=False):
    """Draw the net into ``filename``; its extension picks the format."""
    filename = os.fspath(filename)
    base = os.path.basename(filename)
    if '.' not in base:
        raise CaffeineError('%s: no extension to choose the image format by (e.g. .png, .svg, .pdf)'
                            % filename)
    ext = base[base.rfind('.') + 1:]
    data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
    with open(filename, 'wb') as fid:
        fid.write(data)
