"""Caffe's DataTransformer (``transform_param``), for a batch at a time.

For each example, exactly as Caffe computes it in float32::

    out[c, h, w'] = (x[c, h + h_off, w + w_off] - mean[c, h + h_off, w + w_off]) * scale
    (or - mean_value[c], or no mean), with w' = crop - 1 - w when mirrored

- ``crop_size``: a random offset at TRAIN (uniform over every valid position),
  the centre ``((H - crop) // 2, (W - crop) // 2)`` at TEST.  The mean file is
  cropped at the same offset (it has the full image size).
- ``mirror``: a random horizontal flip (one chance in two) at TRAIN.  (Caffe 1.0
  also flips at random at TEST when ``mirror: true``; caffeine keeps TEST
  deterministic.)
- ``mean_file`` (a ``.binaryproto`` BlobProto of the image's shape) or
  ``mean_value`` (one value, or one per channel); not both.
- ``force_color`` / ``force_gray``: how encoded images are decoded (not both).

Random numbers come from a ``numpy.random.Generator`` passed in by the caller
(:meth:`draw`), one batch at a time, so a seeded run is repeatable whatever the
thread timing: uniform numbers are drawn first and turned into offsets once the
images' sizes are known.

The work is done with whole-array NumPy operations on each example's crop (a
view): one pass writes ``x - mean`` straight into the output, through a
reversed view when mirrored, and the scaling follows while it is in cache.
This beats gathering the whole batch first (fewer passes over memory).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN


def load_mean_file(path, where=''):
    """A ``.binaryproto`` BlobProto as a float32 (C, H, W) array (Caffe's Blob::FromProto)."""
    bp = caffe_pb2.BlobProto()
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise DataError('%scannot read mean_file %s (%s)' % (where, path, e.strerror or e))
    try:
        bp.ParseFromString(raw)
    except Exception as e:
        raise DataError('%smean_file %s is not a BlobProto (%s)' % (where, path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    legacy = any(bp.HasField(f) for f in ('num', 'channels', 'height', 'width'))
    if legacy:
        shape = (bp.num, bp.channels, bp.height, bp.width)
    else:
        shape = tuple(bp.shape.dim)
    values = bp.data if len(bp.data) or not len(bp.double_data) else bp.double_data
    arr = np.asarray(values, dtype=np.float32)
    n = int(np.prod(shape)) if shape else 0
    if not shape or n == 0 or arr.size != n:
        raise DataError('%smean_file %s holds %d values for shape %s' % (where, path, arr.size, list(shape)))
    # Caffe reads the mean's legacy channels/height/width (1 for missing leading axes)
    shape = (1,) * max(0, 4 - len(shape)) + tuple(shape)
    if len(shape) > 4 or shape[0] != 1:
        raise DataError('%smean_file %s has shape %s; a mean image is 1 x channels x height x width'
                        % (where, path, list(shape)))
    return arr.reshape(shape[1:])


class Rand:
    """The random choices for one batch: ``mirror`` (bool per example) and ``u`` (uniform [0, 1)
    pairs, turned into crop offsets)."""
    __slots__ = ('mirror', 'u')

    def __init__(self, mirror, u):
        self.mirror = mirror
        self.u = u


def _first(what):
    """', <the batch's first example>' for messages about an example that differs from it."""
    if what is None:
        return ''
    text = what(0).strip().rstrip(':').strip()
    return (', ' + text) if text else ''


class DataTransformer:
    """``DataTransformer(transform_param, phase, where='')``; ``where`` prefixes errors."""

    def __init__(self, param=None, phase=TRAIN, where=''):
        if param is None:
            param = caffe_pb2.TransformationParameter()
        self.param = param
        self.where = where
        self.phase = int(phase)
        self.train = self.phase == TRAIN
        self.scale = np.float32(param.scale)
        self.crop = int(param.crop_size)
        self.do_mirror = bool(param.mirror) and self.train
        if param.force_color and param.force_gray:
            raise DataError('%stransform_param: force_color and force_gray cannot both be set' % where)
        self.decode_mode = 'color' if param.force_color else ('gray' if param.force_gray else 'native')
        has_mean_file = param.HasField('mean_file') and param.mean_file != ''
        if has_mean_file and len(param.mean_value):
            raise DataError('%stransform_param: give mean_file or mean_value, not both' % where)
        self.mean = load_mean_file(param.mean_file, where) if has_mean_file else None
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32) if len(param.mean_value) else None
        self._mv_cache = {}

    # -- shapes -----------------------------------------------------------------------
    def output_shape(self, c, h, w, what=''):
        """(C, H', W') of a transformed (C, H, W) example (Caffe's InferBlobShape)."""
        if self.crop:
            if h < self.crop or w < self.crop:
                raise DataError('%s%scrop_size %d is larger than the image (%dx%d)'
                                % (self.where, what, self.crop, h, w))
            return (c, self.crop, self.crop)
        return (c, h, w)

    def check_example(self, c, h, w, what=''):
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise DataError('%s%sthe image is %dx%dx%d (channels x height x width) but mean_file is %dx%dx%d'
                            % (self.where, what, c, h, w, *self.mean.shape))
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise DataError('%s%s%d mean_value(s) for an image of %d channels: give 1 or %d'
                            % (self.where, what, len(self.mean_values), c, c))

    # -- randomness --------------------------------------------------------------------------
    def needs_rand(self):
        return self.do_mirror or (self.train and self.crop > 0)

    def draw(self, rng, n):
        """This batch's random choices, drawn from ``rng`` in a fixed order."""
        if self.do_mirror:
            mirror = rng.integers(0, 2, size=n).astype(bool)
        else:
            mirror = np.zeros(n, dtype=bool)
        if self.train and self.crop:
            u = rng.random((n, 2))
        else:
            u = None
        return Rand(mirror, u)

    def _offsets(self, rand, i, h, w):
        if not self.crop:
            return 0, 0
        if rand is not None and rand.u is not None:
            nh, nw = h - self.crop + 1, w - self.crop + 1
            return min(int(rand.u[i, 0] * nh), nh - 1), min(int(rand.u[i, 1] * nw), nw - 1)
        return (h - self.crop) // 2, (w - self.crop) // 2

    # -- the transform --------------------------------------------------------------------
    def _mean_value_array(self, c):
        mv = self._mv_cache.get(c)
        if mv is None:
            v = self.mean_values
            mv = (np.full(c, v[0], np.float32) if len(v) == 1 else v.astype(np.float32)).reshape(1, c, 1, 1)
            self._mv_cache[c] = mv
        return mv

    def _mean_for(self, c):
        """The per-channel mean as a (C, 1, 1) float32 array, or None."""
        if self.mean_values is None:
            return None
        return self._mean_value_array(c)[0]

    def transform_list(self, items, rand, out, what=None):
        """Transform examples into ``out`` (N, C, H', W'): ``items`` is a list of (C, H_i, W_i)
        arrays (uint8 or float32, any strides; sizes may differ when cropping) or a 4-D array.

        Per example, one pass reads the crop (a view) and writes ``x - mean`` into the output,
        through a reversed view when mirrored; the scaling follows while it is in cache.
        """
        n = len(items)
        c = out.shape[1]
        crop = self.crop
        mv = self._mean_for(c)
        scale = self.scale
        checked = None
        for i in range(n):
            x = items[i]
            ci, h, w = x.shape
            if (ci, h, w) != checked:
                label = what(i) if what is not None else ''
                if ci != c:
                    raise DataError('%s%sthe image has %d channels, but the batch has %d (set by its first image%s)'
                                    % (self.where, label, ci, c, _first(what)))
                self.check_example(ci, h, w, label)
                checked = (ci, h, w)
            if crop:
                if h < crop or w < crop:
                    raise DataError('%s%scrop_size %d is larger than the image (%dx%d)'
                                    % (self.where, what(i) if what is not None else '', crop, h, w))
                ho, wo = self._offsets(rand, i, h, w)
                src = x[:, ho:ho + crop, wo:wo + crop]
            else:
                if (h, w) != tuple(out.shape[2:]):
                    raise DataError('%s%sthe image is %dx%d, but the batch is %dx%d (set by its first image%s); '
                                    'images of several sizes need crop_size'
                                    % (self.where, what(i) if what is not None else '', h, w,
                                       out.shape[2], out.shape[3], _first(what)))
                ho = wo = 0
                src = x
            o = out[i]
            dst = o[:, :, ::-1] if (rand is not None and rand.mirror[i]) else o
            if self.mean is not None:
                m = self.mean[:, ho:ho + out.shape[2], wo:wo + out.shape[3]]
                np.subtract(src, m, out=dst, dtype=np.float32, casting='unsafe')
            elif mv is not None:
                np.subtract(src, mv, out=dst, dtype=np.float32, casting='unsafe')
            else:
                dst[...] = src
            if scale != 1:
                np.multiply(o, scale, out=o)
        return out

    def transform_batch(self, x, rand, out):
        """Transform a stacked batch ``x`` (N, C, H, W) (uint8 or float32) into ``out`` (N, C, H', W')."""
        n, c, h, w = x.shape
        self.check_example(c, h, w)
        return self.transform_list(x, rand, out)

    def transform(self, x, rand=None, index=0):
        """One (C, H, W) example (pycaffe-style convenience); returns a new float32 array."""
        x = np.asarray(x)
        c, h, w = x.shape
        shape = self.output_shape(c, h, w)
        out = np.empty((1,) + shape, np.float32)
        if rand is not None and index:
            rand = Rand(rand.mirror[index:index + 1], None if rand.u is None else rand.u[index:index + 1])
        self.transform_batch(x[None], rand, out)
        return out[0]
