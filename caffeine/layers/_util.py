"""Helpers shared by the layer families: axes, counts, shapes, the sigmoid and padding.

Each is written once here so that every layer follows the same rule (Caffe's).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import CaffeineError

F32 = np.float32


def canonical_axis(layer, blob, axis, what='axis'):
    """``axis`` in ``[0, num_axes)``, negative values counting from the end.

    Caffe's ``Blob::CanonicalAxisIndex``: ``-num_axes <= axis < num_axes``, else a
    one-line error naming ``layer``, the parameter (``what``) and the blob's shape.
    """
    try:
        return blob.canonical_axis_index(axis)
    except CaffeineError:
        raise layer.error('%s %d out of range for a %d-D bottom of shape %s'
                          % (what, axis, blob.num_axes, list(blob.shape)))


def as_strided(xp, a, shape, strides):
    """A view of ``a`` with the given shape and byte strides (NumPy's or CuPy's as_strided)."""
    return xp.lib.stride_tricks.as_strided(a, shape=tuple(shape), strides=tuple(strides))


def shape_count(shape, start=0, end=None):
    """The number of values in ``shape[start:end]`` (1 for no axes), as Caffe's ``count(start, end)``."""
    return math.prod(int(s) for s in shape[start:end])


def shape_str(shape):
    """``(2, 3, 4)``: a shape as error messages write it."""
    return '(%s)' % ', '.join(str(s) for s in shape)


def sigmoid_tanh(xp, x, out):
    """out = 1 / (1 + exp(-x)), computed as Caffe's SigmoidLayer does:
    0.5 * tanh(0.5 x) + 0.5, in float32 (``out`` may be ``x``)."""
    xp.multiply(x, F32(0.5), out=out)
    xp.tanh(out, out=out)
    out *= F32(0.5)
    out += F32(0.5)
    return out


def scatter_add_rows(xp, dst, idx, src):
    """dst[idx[i]] += src[i] for every i, repeated indices summed."""
    if idx.size == 0:
        return
    xp.add.at(dst, idx, src)


def pad_into(xp, x, buf, pads, value=0.0):
    """buf[:, :, p0:p0+S0, ...] = x; every other cell of buf = value.

    x: (nb, C, *S), buf: (nb, C, *Sp) with Sp >= S + pads on the low side.
    """
    nd = x.ndim - 2
    inner = (slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pads, x.shape[2:]))
    for i in range(nd):
        p, s, sp = pads[i], x.shape[2 + i], buf.shape[2 + i]
        pre = (slice(None),) * (2 + i)
        if p > 0:
            buf[pre + (slice(0, p),)] = value
        if p + s < sp:
            buf[pre + (slice(p + s, sp),)] = value
    buf[inner] = x
    return buf
