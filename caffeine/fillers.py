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


# Values are drawn in chunks of this many, straight into the float32 result: the stream
# (and so every value) is the same as one draw of the whole shape, without a float64
# temporary of the whole blob (VGG-16's fc6 would take 822 MB).
DRAW_CHUNK = 1 << 20


def _chunks(size):
    """(slice, length) of DRAW_CHUNK values at a time over ``size`` values, in order."""
    for i in range(0, size, DRAW_CHUNK):
        n = min(DRAW_CHUNK, size - i)
        yield slice(i, i + n), n


def _draw(out, draw):
    """out (float32, C-contiguous) <- draw(n) (float64 values, cast), chunk by chunk in order."""
    flat = out.reshape(-1)
    for s, n in _chunks(flat.size):
        flat[s] = draw(n)
    return out


def filler_values(param, shape, out=None):
    """A float32 NumPy array of ``shape`` filled as ``param`` says (``out``, when given: a
    C-contiguous float32 host array of that shape, filled in place)."""
    if isinstance(param, dict):
        p = caffe_pb2.FillerParameter()
        for k, v in param.items():
            setattr(p, k, v)
        param = p
    shape = tuple(int(s) for s in shape)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    if 0 in shape:      # nothing to fill (and no fan to divide by)
        return out
    rng = backend.rng()
    t = param.type
    if t == 'constant':
        out.fill(param.value)
    elif t == 'uniform':
        _draw(out, lambda n: rng.uniform(param.min, param.max, size=n))
    elif t == 'gaussian':
        _draw(out, lambda n: rng.normal(param.mean, param.std, size=n))
        if param.sparse >= 0:
            if len(shape) < 1:
                raise CaffeineError('gaussian filler: sparse needs a blob with at least one axis')
            num_outputs = shape[0]
            p = param.sparse / float(num_outputs)
            flat = out.reshape(-1)
            for s, n in _chunks(flat.size):
                flat[s] *= rng.random(size=n) < p
    elif t == 'positive_unitball':
        _draw(out, lambda n: rng.uniform(0.0, 1.0, size=n))
        num = shape[0] if shape else 1
        flat = out.reshape(num, -1)
        flat /= flat.sum(axis=1, keepdims=True)
    elif t == 'xavier':
        scale = math.sqrt(3.0 / _n(param, shape))
        _draw(out, lambda n: rng.uniform(-scale, scale, size=n))
    elif t == 'msra':
        std = math.sqrt(2.0 / _n(param, shape))
        _draw(out, lambda n: rng.normal(0.0, std, size=n))
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
        out[...] = (wx[:, None] * wx[None, :]).astype(np.float32)
    else:
        raise CaffeineError('unknown filler type %r (known: constant, uniform, gaussian, '
                            'positive_unitball, xavier, msra, bilinear)' % t)
    return out


def fill(blob, param):
    """Fill ``blob``'s data in place from a FillerParameter (or dict)."""
    data = blob.data
    if data.flags.c_contiguous and data.dtype == np.float32:
        filler_values(param, blob.shape, out=data)
    else:
        data[...] = filler_values(param, blob.shape)
    return blob
