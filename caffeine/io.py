"""pycaffe's ``caffe.io``: image loading and preprocessing, proto <-> array.

* ``Transformer`` turns images as loaded (H x W x K, RGB, floats in [0, 1])
  into what a net takes (K x H x W, channels reordered, scaled, mean
  subtracted) and back again.
* ``load_image``, ``resize_image``, ``oversample``: the image helpers that
  ``Classifier`` and ``Detector`` use.  They need only NumPy and Pillow (no
  scikit-image or SciPy).
* ``blobproto_to_array`` / ``array_to_blobproto`` /
  ``arraylist_to_blobprotovector_str`` / ``blobprotovector_str_to_arraylist``
  / ``array_to_datum`` / ``datum_to_array``: conversions between NumPy arrays
  and Caffe's BlobProto, BlobProtoVector and Datum messages (mean files,
  LMDB records).  These return float64 for float values, as pycaffe's do.
  caffeine itself reads these messages with float32 readers of nearly the
  same names: ``caffeine.weights.blob_proto_to_array`` (weights, solver
  history) and ``caffeine.data.datum.datum_to_array`` (the data layers).
"""
from __future__ import annotations

import io as _io

import numpy as np

from .errors import CaffeineError
from .proto import caffe_pb2

__all__ = ['Transformer', 'load_image', 'resize_image', 'oversample',
           'blobproto_to_array', 'array_to_blobproto',
           'arraylist_to_blobprotovector_str', 'blobprotovector_str_to_arraylist',
           'array_to_datum', 'datum_to_array', 'IOValueError', 'TransformerError', 'ImageReadError']


class IOValueError(CaffeineError, ValueError):
    """An array or proto of the wrong shape (also a ValueError, as pycaffe's errors were)."""


class TransformerError(IOValueError):
    """A Transformer set-up that does not fit the net's input."""


class ImageReadError(CaffeineError, OSError):
    """An image file that is missing or cannot be decoded (also an OSError)."""


# -- proto <-> array ---------------------------------------------------------

def blobproto_to_array(blob, return_diff=False):
    """pycaffe's: a BlobProto's data (or diff) as a **float64** array of its shape.

    Blobs written with Caffe's legacy 4-D fields (num, channels, height,
    width) get that shape; others get ``shape.dim``.  Values come from the
    float fields, or from the double ones when only those are filled.
    (``caffeine.weights.blob_proto_to_array`` is the float32 reader the Net
    and the solver use.)
    """
    if return_diff:
        values = blob.diff if len(blob.diff) or not len(blob.double_diff) else blob.double_diff
    else:
        values = blob.data if len(blob.data) or not len(blob.double_data) else blob.double_data
    arr = np.array(values, dtype=np.float64)
    legacy = any(blob.HasField(f) for f in ('num', 'channels', 'height', 'width'))
    shape = ((blob.num, blob.channels, blob.height, blob.width) if legacy
             else tuple(blob.shape.dim))
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise IOValueError('BlobProto holds %d %s values, but its shape %s needs %d'
                            % (arr.size, 'diff' if return_diff else 'data', list(shape),
                               int(np.prod(shape, dtype=np.int64))))
    return arr.reshape(shape)


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``arr``'s shape and values (and ``diff``'s, if given)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise IOValueError('array_to_blobproto: diff has %d values, data has %d'
                                % (diff.size, arr.size))
        blob.diff.extend(diff.astype(np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A list of arrays, serialized as a BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    for arr in arraylist:
        vec.blobs.add().CopyFrom(array_to_blobproto(arr))
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(str):  # noqa: A002 (pycaffe's argument name)
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(str)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """pycaffe's: a Datum from a C x H x W array: uint8 arrays fill ``data`` (bytes),
    others ``float_data``.  (``caffeine.data.datum.array_to_datum`` also takes H x W.)"""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise IOValueError('Incorrect array shape.')
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """pycaffe's: a Datum's values as a new C x H x W array, **uint8** from ``data``,
    **float64** from ``float_data``.

    An encoded Datum (``encoded: true``, from ``convert_imageset --encoded``)
    is decoded, with channels in BGR order as Caffe's OpenCV decoding gives.
    (``caffeine.data.datum.datum_to_array``, which the data layers use, gives
    float32 and a read-only view of ``data``, and takes Caffe's decode modes.)
    """
    if datum.encoded and len(datum.data):
        from PIL import Image
        try:
            with Image.open(_io.BytesIO(datum.data)) as img:
                arr = np.asarray(img.convert('L' if img.mode in ('L', 'I;16', 'I', '1') else 'RGB'))
        except OSError as e:
            raise IOValueError('encoded Datum does not decode as an image (%s)' % e)
        if arr.ndim == 2:
            return arr[np.newaxis].copy()
        return np.ascontiguousarray(arr[:, :, ::-1].transpose(2, 0, 1))
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape, dtype=np.int64))
    if len(datum.data):
        if len(datum.data) != count:
            raise IOValueError('Datum holds %d bytes, but its shape %s needs %d'
                               % (len(datum.data), list(shape), count))
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    if len(datum.float_data) != count:
        raise IOValueError('Datum holds %d float values, but its shape %s needs %d'
                           % (len(datum.float_data), list(shape), count))
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# -- images ------------------------------------------------------------------

# scikit-image's rgb2gray weights (ITU-R BT.709), which pycaffe's grayscale loading used
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def _pil_to_float(img):
    """A PIL image as a float array in [0, 1]: H x W (gray) or H x W x C, alpha kept."""
    mode = img.mode
    if mode in ('P', 'PA'):
        img = img.convert('RGBA' if ('transparency' in img.info or mode == 'PA') else 'RGB')
        mode = img.mode
    elif mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        img = img.convert('RGB')
        mode = 'RGB'
    if mode == '1':
        return np.asarray(img, dtype=np.float64)
    if mode.startswith('I;16'):
        return np.asarray(img).astype(np.float64) / 65535.0
    if mode == 'I':      # Pillow's mode for 16-bit PNGs and TIFFs
        arr = np.asarray(img).astype(np.float64)
        return arr / (65535.0 if arr.max(initial=0) <= 65535 else 2147483647.0)
    if mode == 'F':
        return np.asarray(img, dtype=np.float64)
    if mode == 'LA':
        return np.asarray(img)[:, :, 0].astype(np.float64) / 255.0
    if mode not in ('L', 'RGB', 'RGBA', 'RGBX', 'RGBa'):
        img = img.convert('RGB')
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    return arr.astype(np.float64)


def load_image(filename, color=True):
    """Load an image as pycaffe does: float32 in [0, 1], H x W x 3 RGB.

    ``color=False`` gives H x W x 1 luminance (BT.709 weights, as scikit-image's
    ``rgb2gray``); a grayscale file loaded with ``color=True`` is tiled to three
    channels.  An alpha channel is dropped.  ``filename`` may be a path or an
    open binary file.
    """
    from PIL import Image
    try:
        with Image.open(filename) as img:
            img.load()
            arr = _pil_to_float(img)
    except FileNotFoundError:
        raise ImageReadError('%s: no such file' % (filename,))
    except (Image.UnidentifiedImageError, OSError) as e:
        raise ImageReadError('%s: cannot read image (%s)' % (filename, e))
    if arr.ndim == 3:
        arr = arr[:, :, :3]
        if not color:
            arr = arr @ _GRAY_WEIGHTS
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
        if color:
            arr = np.tile(arr, (1, 1, 3))
    return arr.astype(np.float32)


def _resize_axis_linear(x, axis, n_out):
    """Bilinear along one axis, pixel centres aligned, edges clamped."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    w = pos - lo
    shape = [1] * x.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w


def _resize_axis_nearest(x, axis, n_out):
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.take(x, np.minimum(idx, n_in - 1), axis=axis)


def _resize_pillow(im, new_dims, resample):
    from PIL import Image
    h, w = int(new_dims[0]), int(new_dims[1])
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(im[:, :, k], dtype=np.float32), mode='F')
                        .resize((w, h), resample=resample))
             for k in range(im.shape[2])]
    return np.stack(chans, axis=2).astype(np.float64)


def resize_image(im, new_dims, interp_order=1):
    """Resize an H x W x K image to ``new_dims`` (height, width); float32 out.

    ``interp_order`` 0 is nearest neighbour, 1 bilinear (pixel centres
    aligned, edges clamped), 2 and more bicubic.  As pycaffe, the image is
    scaled to [0, 1] for the resize and back to its own range after, so any
    value range works; a constant image gives a constant image.
    """
    im = np.asarray(im)
    squeeze = im.ndim == 2
    if squeeze:
        im = im[:, :, np.newaxis]
    if im.ndim != 3:
        raise IOValueError('resize_image needs an H x W x K image, got shape %s' % (im.shape,))
    new_dims = tuple(int(d) for d in new_dims)
    if len(new_dims) != 2 or min(new_dims) < 1:
        raise IOValueError('resize_image: new_dims must be (height, width), got %s' % (new_dims,))
    if im.size == 0:
        raise IOValueError('resize_image: empty image of shape %s' % (im.shape,))
    im_min, im_max = float(im.min()), float(im.max())
    if not im_max > im_min:
        out = np.full(new_dims + (im.shape[2],), im_min, dtype=np.float32)
        return out[:, :, 0] if squeeze else out
    std = (im.astype(np.float64) - im_min) / (im_max - im_min)
    if interp_order == 0:
        out = _resize_axis_nearest(_resize_axis_nearest(std, 0, new_dims[0]), 1, new_dims[1])
    elif interp_order == 1:
        out = _resize_axis_linear(_resize_axis_linear(std, 0, new_dims[0]), 1, new_dims[1])
    elif 2 <= interp_order <= 5:
        from PIL import Image
        out = _resize_pillow(std, new_dims, Image.BICUBIC)
    else:
        raise IOValueError('resize_image: interp_order must be 0 to 5, got %r' % (interp_order,))
    out = (out * (im_max - im_min) + im_min).astype(np.float32)
    return out[:, :, 0] if squeeze else out


def oversample(images, crop_dims):
    """Ten crops of each image, as pycaffe: the four corners and the centre,
    then the same five mirrored left-right.

    ``images``: a list (or N x H x W x K array) of images of one shape.
    ``crop_dims``: (height, width).  Returns (10 N) x h x w x K float32.
    """
    if len(images) == 0:
        raise IOValueError('oversample: no images')
    im_shape = np.asarray(images[0]).shape
    if len(im_shape) != 3:
        raise IOValueError('oversample needs H x W x K images, got shape %s' % (im_shape,))
    ch, cw = (int(d) for d in crop_dims)
    h, w = im_shape[0], im_shape[1]
    if not (0 < ch <= h and 0 < cw <= w):
        raise IOValueError('oversample: crop %dx%d does not fit in a %dx%d image' % (ch, cw, h, w))
    starts = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw),
              ((h - ch) // 2, (w - cw) // 2)]
    try:
        batch = np.asarray(images, dtype=np.float32)
    except ValueError:
        raise IOValueError('oversample: all images must have the same shape')
    if batch.ndim != 4 or batch.shape[1:] != tuple(im_shape):
        raise IOValueError('oversample: all images must have the same shape')
    crops = np.stack([batch[:, i:i + ch, j:j + cw, :] for i, j in starts], axis=1)
    both = np.concatenate([crops, crops[:, :, :, ::-1, :]], axis=1)
    return np.ascontiguousarray(both.reshape((-1, ch, cw, im_shape[2])))


# -- Transformer ---------------------------------------------------------------

class Transformer:
    """Preprocess images for a net's inputs, and undo it, as pycaffe's ``caffe.io.Transformer``.

    ``inputs``: ``{input_name: input_shape}`` (N x K x H x W), e.g.
    ``{'data': net.blobs['data'].data.shape}``.  Per input, in this order:
    resize to the input's H x W, ``transpose`` (e.g. (2, 0, 1) for
    H x W x K to K x H x W), ``channel_swap`` (e.g. (2, 1, 0) for RGB to BGR),
    multiply by ``raw_scale``, subtract ``mean``, multiply by ``input_scale``.
    ``deprocess`` undoes each step in reverse order.
    """

    def __init__(self, inputs):
        self.inputs = inputs
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise TransformerError('{} is not one of the net inputs: {}'.format(in_, self.inputs))

    def _shape(self, in_):
        return tuple(int(d) for d in self.inputs[in_])

    def preprocess(self, in_, data):
        """An image (H x W x K, as from ``load_image``) as input ``in_`` takes it: float32 K x H x W."""
        self._check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        in_dims = self._shape(in_)[2:]
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if transpose is not None:
            caffe_in = caffe_in.transpose(transpose)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        # pycaffe's in-place float32 arithmetic, on a copy: the caller's array is never modified
        caffe_in = np.array(caffe_in, dtype=np.float32, copy=True)
        if raw_scale is not None:
            caffe_in *= raw_scale
        if mean is not None:
            caffe_in -= mean
        if input_scale is not None:
            caffe_in *= input_scale
        return np.ascontiguousarray(caffe_in, dtype=np.float32)

    def deprocess(self, in_, data):
        """Undo ``preprocess``: net input (K x H x W, or 1 x K x H x W) back to an H x W x K image."""
        self._check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        if not np.issubdtype(decaf_in.dtype, np.floating):
            decaf_in = decaf_in.astype(np.float32)
        transpose = self.transpose.get(in_)
        channel_swap = self.channel_swap.get(in_)
        raw_scale = self.raw_scale.get(in_)
        mean = self.mean.get(in_)
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        if mean is not None:
            decaf_in += mean
        if raw_scale is not None:
            decaf_in /= raw_scale
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in

    def set_transpose(self, in_, order):
        """Axis order for input ``in_``, e.g. (2, 0, 1) for H x W x K to K x H x W."""
        self._check_input(in_)
        if len(order) != len(self._shape(in_)) - 1:
            raise TransformerError('Transpose order needs to have the same number of '
                                   'dimensions as the input.')
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """Channel order for input ``in_``, e.g. (2, 1, 0) for RGB to BGR (after transpose)."""
        self._check_input(in_)
        if len(order) != self._shape(in_)[1]:
            raise TransformerError('Channel swap needs to have the same number of '
                                   'dimensions as the input channels.')
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Scale raw values (e.g. 255 for [0, 1] images and nets trained on [0, 255]); before the mean."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: a per-channel vector (K,) or a full (K x H x W or H x W) mean."""
        self._check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            # one value per channel, broadcast over the image
            if ms[0] != self._shape(in_)[1]:
                raise TransformerError('Mean channels incompatible with input.')
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            # elementwise
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise TransformerError('Mean shape invalid')
            if tuple(ms) != self._shape(in_)[1:]:
                raise TransformerError('Mean shape incompatible with input shape.')
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Scale applied last, after the mean (e.g. 0.017 for nets trained on scaled input)."""
        self._check_input(in_)
        self.input_scale[in_] = scale
