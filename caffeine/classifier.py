"""pycaffe's ``caffe.Classifier``: a Net that classifies images.

``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
input_scale=None, raw_scale=None, channel_swap=None)`` builds the TEST net and
a :class:`caffeine.io.Transformer` for its first input (HxWxK images in, the
net's KxHxW out).  ``predict(inputs, oversample=True)`` resizes each image to
``image_dims`` (the net's input size by default), takes the ten crops of
:func:`caffeine.io.oversample` (or the centre crop when ``oversample`` is
False), forwards them all and returns the first output's rows, averaged over
the ten crops of each image: an N x classes array.
"""
from __future__ import annotations

import numpy as np

from . import io as caffe_io
from .net import Net
from .proto import caffe_pb2


def input_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """The Transformer of pycaffe's Classifier and Detector for ``net``'s first
    input: HxWxK images to KxHxW, then the optional settings."""
    in_ = net.inputs[0]
    t = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, caffe_pb2.TEST)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores for ``inputs``, an iterable of HxWxK images: N x classes."""
        images = list(inputs)
        if not images:
            raise ValueError('predict: no images given')
        h, w = (int(d) for d in self.image_dims)
        batch = np.zeros((len(images), h, w, images[0].shape[2]), np.float32)
        for i, im in enumerate(images):
            batch[i] = caffe_io.resize_image(im, (h, w))
        if oversample:
            batch = caffe_io.oversample(batch, self.crop_dims)
        else:
            # the centre crop of each image
            ch, cw = (int(d) for d in self.crop_dims)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            batch = batch[:, y0:y0 + ch, x0:x0 + cw, :]
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(batch),) + tuple(self.blobs[in_].data.shape[1:]), np.float32)
        for i, im in enumerate(batch):
            caffe_in[i] = self.transformer.preprocess(in_, im)
        scores = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(axis=1)
        return scores
