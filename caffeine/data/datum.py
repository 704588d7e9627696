"""Caffe's ``Datum`` and images, as Caffe (and OpenCV) store them.

A Datum holds one example: ``channels``, ``height``, ``width``, ``label`` and
either raw pixels (``data``: uint8 bytes, channels first, colour planes in
OpenCV's BGR order), ``float_data``, or an encoded image file (``encoded``:
JPEG/PNG bytes in ``data``).  Arrays here are channels first: (C, H, W).

Images are decoded with Pillow and given OpenCV's conventions, so a database
built by Caffe's tools and one built here hold the same values:
``'native'`` = ``cv::imdecode(..., IMREAD_UNCHANGED)`` (1, 3 or 4 channels),
``'color'`` = IMREAD_COLOR (3 channels, BGR), ``'gray'`` = IMREAD_GRAYSCALE.
:func:`resize` is OpenCV's ``cv::resize`` with INTER_LINEAR (its geometry and
its fixed-point arithmetic).
"""
from __future__ import annotations

import io
import os

import numpy as np

from ..errors import DataError
from ..proto import caffe_pb2

Datum = caffe_pb2.Datum


# -- Datum <-> bytes ----------------------------------------------------------------------
def parse_datum(value, where='', key=None):
    """A Datum from serialized bytes; a DataError naming ``where`` and ``key`` if it is not one."""
    d = Datum()
    at = _at(where, key)
    try:
        d.ParseFromString(value)
    except Exception as e:
        raise DataError('%srecord is not a Datum (%s)' % (at, _one_line(e)))
    if not d.HasField('data') and not len(d.float_data):
        raise DataError('%srecord is not a Datum (no data or float_data)' % at)
    return d


def _at(where, key):
    s = where or ''
    if key is not None:
        if isinstance(key, bytes):
            key = key.decode('utf-8', 'backslashreplace')
        s += 'key %r: ' % key
    return s


def _one_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def array_to_datum(arr, label=None):
    """A Datum of a (C, H, W) (or (H, W)) array: uint8 arrays go in ``data``, others in
    ``float_data`` (as float32).  pycaffe's ``caffeine.io.array_to_datum`` takes 3-D only."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError('a Datum holds a 3-D (channels, height, width) array, got shape %s' % (arr.shape,))
    d = Datum()
    d.channels, d.height, d.width = (int(s) for s in arr.shape)
    if arr.dtype == np.uint8:
        d.data = np.ascontiguousarray(arr).tobytes()
    else:
        d.float_data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())
    if label is not None:
        d.label = int(label)
    return d


def raw_datum_bytes(chw_uint8, label, encoded_false=True):
    """Serialized Datum of a (C, H, W) uint8 image, as Caffe's CVMatToDatum + set_label writes it
    (``encoded: false`` included, as CVMatToDatum sets it)."""
    d = Datum()
    c, h, w = chw_uint8.shape
    d.channels, d.height, d.width = c, h, w
    d.data = np.ascontiguousarray(chw_uint8, dtype=np.uint8).tobytes()
    d.label = int(label)
    if encoded_false:
        d.encoded = False
    return d.SerializeToString()


def encoded_datum_bytes(file_bytes, label):
    """Serialized Datum of an encoded image, as Caffe's ReadFileToDatum writes it."""
    d = Datum()
    d.data = bytes(file_bytes)
    d.label = int(label)
    d.encoded = True
    return d.SerializeToString()


def datum_shape(d, where='', key=None, data=None):
    """(C, H, W) of a raw Datum, checking its data size (``data``: ``d.data`` if already read)."""
    c, h, w = d.channels, d.height, d.width
    n = c * h * w
    at = _at(where, key)
    if c <= 0 or h <= 0 or w <= 0:
        raise DataError('%sDatum has shape %dx%dx%d (channels x height x width must be positive)' % (at, c, h, w))
    if data is None:
        data = d.data
    if data:
        if len(data) != n:
            raise DataError('%sDatum data has %d bytes, but channels*height*width = %d*%d*%d = %d'
                            % (at, len(data), c, h, w, n))
    elif len(d.float_data) != n:
        raise DataError('%sDatum float_data has %d values, but channels*height*width = %d*%d*%d = %d'
                        % (at, len(d.float_data), c, h, w, n))
    return c, h, w


def datum_to_array(d, mode='native', where='', key=None):
    """A Datum's values as a (C, H, W) array, as the data layers read it: **uint8**
    for ``data`` (a read-only view, no copy) and encoded images, **float32** for
    ``float_data``.  ``mode`` decodes encoded images ('native', 'color', 'gray').
    Not pycaffe's ``caffeine.io.datum_to_array``, which returns float64 for
    ``float_data`` and always a new array."""
    data = d.data          # (each access to a bytes field copies it: read it once)
    if d.encoded:
        return decode_image(data, mode, _at(where, key))
    c, h, w = datum_shape(d, where, key, data)
    if data:
        return np.frombuffer(data, dtype=np.uint8).reshape(c, h, w)
    return np.asarray(d.float_data, dtype=np.float32).reshape(c, h, w)


def _varint(b, i):
    r = 0
    shift = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << shift
        if x < 0x80:
            return r, i
        shift += 7
        if shift > 63:
            raise ValueError('varint too long')


def _int32(v):
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= (1 << 63) else v


def value_to_array(value, mode='native', where='', key=None):
    """(array, label) of a serialized Datum, as ``datum_to_array(parse_datum(value))``.

    Reads the wire format directly, so raw ``data`` and packed ``float_data`` become
    NumPy views of ``value`` with no copy; anything unusual (unknown fields, repeated
    fields, sizes that disagree) goes through ``parse_datum`` for the same result or error.
    """
    try:
        b = memoryview(value)
        n = len(b)
        i = 0
        c = h = w = label = 0
        encoded = False
        data = None
        floats = None
        while i < n:
            tag = b[i]
            i += 1
            if tag == 0x22:             # data, length-delimited
                ln, i = _varint(b, i)
                if data is not None:
                    raise ValueError
                data = (i, ln)
                i += ln
            elif tag in (0x08, 0x10, 0x18, 0x28, 0x38):
                v, i = _varint(b, i)
                if tag == 0x08:
                    c = _int32(v)
                elif tag == 0x10:
                    h = _int32(v)
                elif tag == 0x18:
                    w = _int32(v)
                elif tag == 0x28:
                    label = _int32(v)
                else:
                    encoded = v != 0
            elif tag == 0x32:           # float_data, packed
                ln, i = _varint(b, i)
                if floats is not None or ln % 4:
                    raise ValueError
                floats = (i, ln)
                i += ln
            else:
                raise ValueError
        if i != n:
            raise ValueError
        if encoded and data is not None:
            return decode_image(b[data[0]:data[0] + data[1]].tobytes(), mode, _at(where, key)), label
        if not encoded and c > 0 and h > 0 and w > 0:
            if data is not None and data[1]:
                if data[1] == c * h * w:
                    return np.frombuffer(value, np.uint8, data[1], data[0]).reshape(c, h, w), label
            elif floats is not None and floats[1] == 4 * c * h * w:
                return np.frombuffer(value, '<f4', c * h * w, floats[0]).reshape(c, h, w), label
    except (ValueError, IndexError):
        pass
    d = parse_datum(value, where, key)
    return datum_to_array(d, mode, where, key), d.label


def decode_datum_native(d):
    """Caffe's DecodeDatumNative: an encoded Datum becomes a raw one in place; True if it was encoded."""
    if not d.encoded:
        return False
    arr = decode_image(d.data, 'native')
    label = d.label
    d.Clear()
    d.channels, d.height, d.width = arr.shape
    d.data = np.ascontiguousarray(arr).tobytes()
    d.encoded = False
    d.label = label
    return True


# -- images ----------------------------------------------------------------------------
def _pil():
    from PIL import Image
    return Image


def _is_jpeg(im):
    return getattr(im, 'format', None) in ('JPEG', 'MPO')


def _to_u8(a):
    if a.dtype == np.uint8:
        return a
    if a.dtype in (np.uint16, np.int32, np.uint32, np.int64):
        return (np.clip(a, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)   # OpenCV: 16-bit >> 8
    return np.clip(a, 0, 255).astype(np.uint8)


def _gray_from_rgb(rgb, png):
    r = rgb[..., 0].astype(np.uint32)
    g = rgb[..., 1].astype(np.uint32)
    b = rgb[..., 2].astype(np.uint32)
    if png:   # libpng's png_set_rgb_to_gray(0.299, 0.587), as OpenCV's PNG reader asks
        y = (r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15
    else:     # OpenCV's cvtColor BGR2GRAY
        y = (r * 4899 + g * 9617 + b * 1868 + (1 << 13)) >> 14
    return y.astype(np.uint8)


def pil_to_chw(im, mode='native', where=''):
    """A decoded PIL image as (C, H, W) uint8, BGR(A), as OpenCV would give it for ``mode``."""
    fmt = getattr(im, 'format', None)
    m = im.mode
    if mode == 'gray':
        if _is_jpeg(im):
            if m != 'L':
                try:
                    im.draft('L', im.size)    # libjpeg's own grayscale output, as OpenCV's reader
                except Exception:
                    pass
            im.load()
            if im.mode == 'L':
                return np.asarray(im)[None]
            im = im.convert('RGB')
            return _gray_from_rgb(np.asarray(im), False)[None]
        if im.mode in ('L', '1'):
            return np.asarray(im.convert('L'))[None]
        if im.mode.startswith('I'):
            return _to_u8(np.asarray(im))[None]
        rgb = np.asarray(im.convert('RGB'))
        return _gray_from_rgb(rgb, fmt == 'PNG')[None]
    im.load()
    m = im.mode
    if m.startswith('I;16') or m in ('I', 'F'):
        if mode == 'native':
            raise DataError('%simage data type must be unsigned byte (the image is %s)' % (where, m))
        g = _to_u8(np.asarray(im))
        return np.stack([g, g, g]) if mode == 'color' else g[None]
    if mode == 'native':
        if m in ('L', '1'):
            return np.asarray(im.convert('L'))[None]
        if m == 'LA' or (m == 'P' and ('transparency' in im.info)) or m in ('RGBA', 'PA', 'RGBa'):
            a = np.asarray(im.convert('RGBA'))
            return a[:, :, [2, 1, 0, 3]].transpose(2, 0, 1)
        a = np.asarray(im if m == 'RGB' else im.convert('RGB'))
        return a[:, :, ::-1].transpose(2, 0, 1)
    if mode == 'color':
        a = np.asarray(im if m == 'RGB' else im.convert('RGB'))
        return a[:, :, ::-1].transpose(2, 0, 1)
    raise ValueError('mode must be native, color or gray, not %r' % (mode,))


def decode_image(data, mode='native', where=''):
    """Encoded image bytes (JPEG, PNG, ...) as (C, H, W) uint8 BGR, OpenCV-style."""
    Image = _pil()
    try:
        im = Image.open(io.BytesIO(data))
        return pil_to_chw(im, mode, where)
    except DataError:
        raise
    except Exception as e:
        raise DataError('%simage cannot be decoded (%s)' % (where, _one_line(e)))


def read_image(path, height=0, width=0, is_color=True, where=''):
    """Caffe's ReadImageToCVMat: an image file as (C, H, W) uint8 (BGR, or 1-channel gray),
    resized to height x width when both are positive."""
    Image = _pil()
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise DataError('%scannot read image %s (%s)' % (where, path, e.strerror or _one_line(e)))
    try:
        im = Image.open(io.BytesIO(data))
        arr = pil_to_chw(im, 'color' if is_color else 'gray', where)
    except DataError:
        raise
    except Exception as e:
        raise DataError('%simage %s cannot be decoded (%s)' % (where, path, _one_line(e)))
    if height > 0 and width > 0:
        arr = resize(arr, height, width)
    return arr


def encode_image(chw, ext, quality=95):
    """(C, H, W) uint8 BGR(A) as image file bytes, as cv::imencode('.' + ext) (JPEG quality 95)."""
    Image = _pil()
    ext = ext.lower().lstrip('.')
    c = chw.shape[0]
    if c == 1:
        im = Image.fromarray(np.ascontiguousarray(chw[0]), 'L')
    elif c == 3:
        im = Image.fromarray(np.ascontiguousarray(chw[::-1].transpose(1, 2, 0)), 'RGB')
    elif c == 4:
        im = Image.fromarray(np.ascontiguousarray(chw[[2, 1, 0, 3]].transpose(1, 2, 0)), 'RGBA')
    else:
        raise DataError('cannot encode an image of %d channels' % c)
    buf = io.BytesIO()
    if ext in ('jpg', 'jpeg', 'jpe'):
        if im.mode == 'RGBA':
            im = im.convert('RGB')
        im.save(buf, 'JPEG', quality=quality)
    elif ext == 'png':
        im.save(buf, 'PNG', compress_level=3)
    elif ext == 'bmp':
        im.save(buf, 'BMP')
    else:
        try:
            im.save(buf, ext.upper())
        except Exception as e:
            raise DataError('cannot encode an image as %r (%s)' % (ext, _one_line(e)))
    return buf.getvalue()


# -- OpenCV's INTER_LINEAR resize ------------------------------------------------------------
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _linear_taps(src, dst):
    scale = src / float(dst)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s
    lo = s < 0
    f[lo] = 0
    s[lo] = 0
    hi = s >= src - 1
    f[hi] = 0
    s[hi] = src - 1
    s1 = np.minimum(s + 1, src - 1)
    a0 = np.rint((1.0 - f) * _COEF_SCALE).astype(np.int64)   # saturate_cast<short>: round to nearest
    return s, s1, a0, _COEF_SCALE - a0


def resize(chw, height, width):
    """(C, H, W) uint8 resized to (C, height, width) as cv::resize(..., INTER_LINEAR):
    pixel centres aligned, no antialiasing, 11-bit fixed-point weights (OpenCV's reference
    path; its SIMD path may round a value one step differently)."""
    c, h, w = chw.shape
    if (h, w) == (height, width):
        return chw
    if height <= 0 or width <= 0:
        raise DataError('cannot resize to %dx%d' % (height, width))
    if chw.dtype != np.uint8:
        raise DataError('resize needs uint8 pixels')
    sy, sy1, b0, b1 = _linear_taps(h, height)
    sx, sx1, a0, a1 = _linear_taps(w, width)
    src = chw.astype(np.int64)
    rows = src[:, :, sx] * a0 + src[:, :, sx1] * a1                # horizontal pass, (C, H, width)
    out = rows[:, sy, :] * b0[:, None] + rows[:, sy1, :] * b1[:, None]
    out = (out + (1 << (2 * _COEF_BITS - 1))) >> (2 * _COEF_BITS)
    return np.clip(out, 0, 255).astype(np.uint8)


def image_extension(path):
    p = os.path.basename(path).rfind('.')
    return os.path.basename(path)[p + 1:].lower() if p >= 0 else ''
