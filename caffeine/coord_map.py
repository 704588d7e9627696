"""pycaffe's ``caffe.coord_map``: spatial coordinate maps between NetSpec tops.

Each spatial layer maps coordinates of its bottom to coordinates of its top
affinely, along the axes after ``axis``:  ``top = a * bottom + b``.  A map is
the triple ``(axis, a, b)``; pointwise layers have the identity map
``(None, 1, 0)``, which fits any axis.  ``coord_map_from_to(top_from, top_to)``
composes the maps along the net from a common ancestor, and ``crop(top_from,
top_to)`` uses it to make the Crop layer that aligns ``top_from`` with
``top_to``, as the FCN models do:

    n.upscore = L.Deconvolution(n.score_fr, convolution_param=dict(
        num_output=21, kernel_size=64, stride=32, bias_term=False))
    n.score = crop(n.upscore, n.data)
"""
from __future__ import annotations

import numpy as np

from .net_spec import layers as L

__all__ = ['PASS_THROUGH_LAYERS', 'conv_params', 'crop_params', 'coord_map',
           'compose', 'inverse', 'coord_map_from_to', 'crop',
           'AxisMismatchException', 'UndefinedMapException']

# layers whose top has the coordinates of their bottom
PASS_THROUGH_LAYERS = ['AbsVal', 'BatchNorm', 'Bias', 'BNLL', 'Dropout',
                       'Eltwise', 'ELU', 'Log', 'LRN', 'Exp', 'MVN', 'Power',
                       'ReLU', 'PReLU', 'Scale', 'Sigmoid', 'Split', 'TanH',
                       'Threshold']


class UndefinedMapException(Exception):
    """The layer's coordinate map is unknown (not a spatial or pointwise layer)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def _spatial_params(fn, message):
    """The parameter dict of ``fn``: its ``<message>`` dict if given, else its keyword arguments."""
    sub = fn.params.get(message)
    return sub if isinstance(sub, dict) else fn.params


def conv_params(fn):
    """``(axis, stride, effective kernel extent, pad)`` of a Convolution,
    Deconvolution, Im2col or Pooling ``Function``; the extent counts dilation."""
    message = 'pooling_param' if fn.type_name == 'Pooling' else 'convolution_param'
    params = _spatial_params(fn, message)
    legacy = {'pad_h', 'pad_w', 'kernel_h', 'kernel_w', 'stride_h', 'stride_w'}
    if legacy & set(params) or legacy & set(fn.params):
        raise AssertionError('cropping does not support legacy _h/_w params')
    if params.get('global_pooling'):
        raise UndefinedMapException('global pooling has no coordinate map')
    if 'kernel_size' not in params:
        raise UndefinedMapException('%s without kernel_size' % fn.type_name)
    axis = params.get('axis', 1)
    ks = np.array(params['kernel_size'], ndmin=1)
    dilation = np.array(params.get('dilation', 1), ndmin=1)
    stride = np.array(params.get('stride', 1), ndmin=1)
    pad = np.array(params.get('pad', 0), ndmin=1)
    return axis, stride, (ks - 1) * dilation + 1, pad


def crop_params(fn):
    """``(axis, offset)`` of a Crop ``Function`` (axis 2 by default: crop H and W of N x C x H x W)."""
    params = _spatial_params(fn, 'crop_param')
    return params.get('axis', 2), np.array(params.get('offset', 0), ndmin=1)


def coord_map(fn):
    """The map ``(axis, a, b)`` of one layer: ``top coordinate = a * bottom coordinate + b``."""
    t = fn.type_name
    if t in ('Convolution', 'Pooling', 'Im2col'):
        axis, stride, ks, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (ks - 1) / 2) / stride
    if t == 'Deconvolution':
        axis, stride, ks, pad = conv_params(fn)
        return axis, stride, (ks - 1) / 2 - pad
    if t in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if t == 'Crop':
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset    # axis - 1: the last non-spatial axis, as conv's
    raise UndefinedMapException('no coordinate map for %s layers' % t)


def compose(base_map, next_map):
    """``base`` after ``next``: scales multiply, ``next``'s shift is scaled by ``base``'s scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException('cannot compose maps on axes %s and %s' % (ax1, ax2))
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back: ``bottom = top / a - b / a``."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _bottoms(top):
    """The bottoms whose coordinates reach ``top``: all of them, but only the first for Crop."""
    inputs = top.fn.inputs
    return inputs[:1] if top.fn.type_name == 'Crop' else inputs


def _walk_back(start):
    """Yield ``(top, map from top's coordinates to start's)`` for ``start`` and its ancestors, nearest first."""
    maps = {start: (None, 1, 0)}
    queue = [start]
    seen = {start}
    while queue:
        top = queue.pop(0)
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _bottoms(top):
            if bottom in seen:
                continue
            seen.add(bottom)
            maps[bottom] = compose(maps[top], step)
            queue.append(bottom)


def coord_map_from_to(top_from, top_to):
    """The map ``(axis, a, b)`` from ``top_from``'s coordinates to ``top_to``'s.

    Both tops are walked back to their nearest common ancestor; the map is
    the ancestor-to-``top_to`` map after the inverse of the
    ancestor-to-``top_from`` one.
    """
    from_maps = dict(_walk_back(top_from))
    for top, to_map in _walk_back(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError('Could not compute map between tops; are they '
                       'connected by spatial layers?')


def crop(top_from, top_to):
    """A Crop layer (NetSpec top) cropping ``top_from`` to ``top_to``'s extent,
    with the axis and offsets from their coordinate map."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a = np.asarray(a)
    b = np.asarray(b)
    if not (a == 1).all():
        raise AssertionError('scale mismatch on crop (a = {})'.format(a))
    if not (b <= 0).all():
        raise AssertionError('cannot crop negative offset (b = {})'.format(b))
    if not (np.round(b) == b).all():
        raise AssertionError('cannot crop noninteger offset (b = {})'.format(b))
    offset = [int(v) for v in -np.round(b).astype(int).ravel()]
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=(ax if ax is not None else 1) + 1,  # +1: the first cropped axis
                                  offset=offset))


# -- the same maps over a NetParameter: offsets for a Crop layer without crop_param ----
class _LayerTop:
    """A stand-in for a NetSpec top: ``fn`` is the LayerParameter that made it."""

    def __init__(self, fn):
        self.fn = fn


class _LayerFn:
    """A stand-in for a NetSpec Function built from a caffe_pb2.LayerParameter."""

    def __init__(self, lp, inputs):
        from google.protobuf import json_format
        self.type_name = lp.type
        self.inputs = inputs
        self.params = {fd.name: json_format.MessageToDict(value, preserving_proto_field_name=True)
                       for fd, value in lp.ListFields() if fd.name.endswith('_param')}


def net_crop_offsets(net_param, index):
    """``(axis, offsets)`` aligning the first bottom of layer ``index`` (a Crop
    without crop_param, as the FCN-era forks such as HED's Caffe computed them)
    with its second bottom, from the coordinate maps of the layers before it.
    Raises UndefinedMapException / AxisMismatchException / AssertionError /
    RuntimeError as :func:`crop` when the bottoms cannot be aligned."""
    tops = {}
    for lp in net_param.layer[:index]:
        inputs = [tops[b] if b in tops else _LayerTop(_LayerFn(_input_param(b), [])) for b in lp.bottom]
        fn = _LayerFn(lp, inputs)
        for t in lp.top:
            if t not in tops:          # an in-place layer keeps its blob's first producer
                tops[t] = _LayerTop(fn)
    crop_lp = net_param.layer[index]
    ends = [tops[b] if b in tops else _LayerTop(_LayerFn(_input_param(b), [])) for b in crop_lp.bottom[:2]]
    ax, a, b = coord_map_from_to(ends[0], ends[1])
    a, b = np.asarray(a), np.asarray(b)
    if not (a == 1).all():
        raise AssertionError('scale mismatch (a = %s)' % a)
    if not (b <= 0).all() or not (np.round(b) == b).all():
        raise AssertionError('offset %s is negative or not an integer' % (-b))
    return (ax if ax is not None else 1) + 1, [int(v) for v in -np.round(b).astype(int).ravel()]


def _input_param(name):
    from .proto import caffe_pb2
    return caffe_pb2.LayerParameter(name=name, type='Input', top=[name])
