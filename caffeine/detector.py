"""pycaffe's ``caffe.Detector``: a Net that scores windows of images (R-CNN).

``Detector(model_file, pretrained_file, mean=None, input_scale=None,
raw_scale=None, channel_swap=None, context_pad=None)``.
``detect_windows([(filename, windows), ...])`` crops each window
(``[ymin, xmin, ymax, xmax]`` rows, pixel coordinates of the loaded image),
warps it to the net's input, forwards them all and returns one dict per window:
``{'window', 'prediction', 'filename'}``.  With ``context_pad`` p, each window
is grown so that, once warped, it has p pixels of surrounding image on every
side (R-CNN's context padding); what falls outside the image is filled with
the mean.  ``detect_selective_search`` needs the ``selective_search_ijcv_with_python``
package, as in pycaffe.
"""
from __future__ import annotations

import numpy as np

from . import io as caffe_io
from .classifier import input_transformer
from .errors import CaffeineError
from .net import Net
from .proto import caffe_pb2


class Detector(Net):

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, caffe_pb2.TEST)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        crops, where = [], []
        for filename, windows in images_windows:
            image = caffe_io.load_image(filename).astype(np.float32)
            for window in windows:
                crops.append(self.crop(image, np.asarray(window)))
                where.append((filename, window))
        if not crops:
            return []
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]),
                            np.float32)
        for i, c in enumerate(crops):
            caffe_in[i] = self.transformer.preprocess(in_, c)
        scores = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        return [{'window': w, 'prediction': scores[i], 'filename': f}
                for i, (f, w) in enumerate(where)]

    def detect_selective_search(self, image_fnames):
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise CaffeineError('detect_selective_search needs the selective_search_ijcv_with_python '
                                'package (and MATLAB), as pycaffe does; use detect_windows with your own windows')
        image_fnames = [str(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd='selective_search_rcnn')
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The HxWxK crop of ``im`` for ``window``, with context padding when configured."""
        window = np.asarray(window)
        if not self.context_pad:
            return im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        crop_size = self.blobs[self.inputs[0]].width  # square inputs, as in R-CNN
        pad = self.context_pad
        scale = crop_size / (1.0 * crop_size - pad * 2)
        # Grow the box about its centre so the pad survives the warp.
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = np.array([window[0] + half_h, window[1] + half_w] * 2)
        box = np.round(centre + scale * np.array([-half_h, -half_w, half_h, half_w]))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        # The part of the grown box outside the image becomes mean padding.
        pad_y = int(round(max(0, -box[0]) * scale_h))
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if clip_h <= 0 or clip_w <= 0:
            raise CaffeineError('window %s lies outside the %dx%d image' % (list(window), im_h, im_w))
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        region = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        out = np.ones(self.crop_dims, np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = caffe_io.resize_image(region, (crop_h, crop_w))
        return out

    def configure_crop(self, context_pad):
        """Set the crop size (the net's input, as HxWxK) and the padding mean."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, np.float32)
            return
        # The mean in the space of the loaded image: HxWxK, channel order and
        # range undone.
        crop_mean = np.array(mean, np.float32).transpose(inv)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, [list(swap).index(i) for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
