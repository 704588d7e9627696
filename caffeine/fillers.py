"""Fillers: initial values of parameter blobs, as Caffe's FillerParameter.

constant, uniform, gaussian (with ``sparse``), positive_unitball, xavier,
msra and bilinear, with variance_norm FAN_IN / FAN_OUT / AVERAGE.  Values are
drawn on the host from caffeine's seeded generator (``set_random_seed``), so
a seed gives the same initial weights on the CPU and the GPU.
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .errors import CaffeineError
from .proto import caffe_pb2

_VN = caffe_pb2.FillerParameter


def _fans(shape):
    count = int(np.prod(shape)) if shape else 1
    num = shape[0] if len(shape) > 0 else 1
    channels = shape[1] if len(shape) > 1 else 1
    return count // max(num, 1), count // max(channels, 1)


def _n(param, shape):
    fan_in, fan_out = _fans(shape)
    vn = param.variance_norm
    if vn == _VN.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if vn == _VN.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def filler_values(param, shape):
    """A float32 NumPy array of ``shape`` filled as ``param`` says."""
    if isinstance(param, dict):
        p = caffe_pb2.FillerParameter()
        for k, v in param.items():
            setattr(p, k, v)
        param = p
    shape = tuple(int(s) for s in shape)
    if 0 in shape:      # nothing to fill (and no fan to divide by)
        return np.zeros(shape, dtype=np.float32)
    rng = backend.rng()
    t = param.type
    if t == 'constant':
        out = np.full(shape, param.value, dtype=np.float32)
    elif t == 'uniform':
        out = rng.uniform(param.min, param.max, size=shape).astype(np.float32)
    elif t == 'gaussian':
        out = rng.normal(param.mean, param.std, size=shape).astype(np.float32)
        if param.sparse >= 0:
            if len(shape) < 1:
                raise CaffeineError('gaussian filler: sparse needs a blob with at least one axis')
            num_outputs = shape[0]
            p = param.sparse / float(num_outputs)
            out *= (rng.random(size=shape) < p).astype(np.float32)
    elif t == 'positive_unitball':
        out = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        num = shape[0] if shape else 1
        flat = out.reshape(num, -1)
        flat /= flat.sum(axis=1, keepdims=True)
    elif t == 'xavier':
        scale = math.sqrt(3.0 / _n(param, shape))
        out = rng.uniform(-scale, scale, size=shape).astype(np.float32)
    elif t == 'msra':
        std = math.sqrt(2.0 / _n(param, shape))
        out = rng.normal(0.0, std, size=shape).astype(np.float32)
    elif t == 'bilinear':
        if len(shape) != 4:
            raise CaffeineError('bilinear filler needs a 4-D blob, got shape %s' % (list(shape),))
        if shape[2] != shape[3]:
            raise CaffeineError('bilinear filler needs a square kernel, got %dx%d' % (shape[2], shape[3]))
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        x = np.arange(k)
        wx = 1 - np.abs(x / f - c)
        out = np.empty(shape, dtype=np.float32)
        out[...] = (wx[:, None] * wx[None, :]).astype(np.float32)
    else:
        raise CaffeineError('unknown filler type %r (known: constant, uniform, gaussian, '
                            'positive_unitball, xavier, msra, bilinear)' % t)
    return out


def fill(blob, param):
    """Fill ``blob``'s data in place from a FillerParameter (or dict)."""
    values = filler_values(param, blob.shape)
    blob.data[...] = values
    return blob
