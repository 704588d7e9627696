"""Inner product layers: InnerProduct (fully connected) and Embed (a learned lookup table).

Both are one GEMM (or one gather/scatter-add) over the whole batch.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..layer import Layer, register
from ._util import canonical_axis, shape_count, scatter_add_rows, shape_str


@register('InnerProduct')
class InnerProductLayer(Layer):
    """Fully connected: y = x W^T + b, flattening x's axes from ``axis`` on.

    bottom: x, shape (d0, ..., d_{axis-1}, ...) with K = count from ``axis``.
    top: y, shape (d0, ..., d_{axis-1}, num_output).
    inner_product_param: num_output, bias_term (true), axis (1),
    transpose (false: W is (num_output, K); true: W is (K, num_output)),
    weight_filler, bias_filler.  param blobs: weight, bias (num_output,).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.N = int(p.num_output)
        if self.N <= 0:
            raise self.error('num_output must be positive, got %d' % self.N)
        self.bias_term = bool(p.bias_term)
        self.transpose = bool(p.transpose)
        self.axis = canonical_axis(self, bottom[0], p.axis)
        self.K = bottom[0].count_range(self.axis)
        if self.K == 0:
            raise self.error('bottom %r is %s: it has no values from axis %d to connect (K = 0)'
                             % (self.layer_param.bottom[0], shape_str(bottom[0].shape), self.axis))
        if self.blobs:
            pass  # weights given (loaded or shared): keep them
        else:
            wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
            self.blobs = [self.new_param_blob(wshape, p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.new_param_blob((self.N,), p.bias_filler))
        want = (self.K, self.N) if self.transpose else (self.N, self.K)
        if shape_count(self.blobs[0].shape) != shape_count(want):
            raise self.error('weight blob has shape %s; K=%d and num_output=%d need %s'
                             % (shape_str(self.blobs[0].shape), self.K, self.N, shape_str(want)))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        axis = canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis)
        K = bottom[0].count_range(axis)
        if K != self.K:
            raise self.error('input size incompatible with inner product parameters: bottom %s has '
                             '%d values from axis %d, the weights expect %d'
                             % (shape_str(bottom[0].shape), K, axis, self.K))
        self.axis = axis
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(tuple(bottom[0].shape[:axis]) + (self.N,))

    def _weight(self, blob_arr):
        return blob_arr.reshape(self.K, self.N) if self.transpose else blob_arr.reshape(self.N, self.K)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.M, self.K)
        y = top[0].xdata.reshape(self.M, self.N)
        W = self._weight(self.blobs[0].xdata)
        xp.dot(x, W if self.transpose else W.T, out=y)
        if self.bias_term:
            y += self.blobs[1].xdata.reshape(1, self.N)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.M, self.N)
        if self.param_propagate_down[0]:
            x = bottom[0].xdata.reshape(self.M, self.K)
            dW = self._weight(self.blobs[0].xdiff)
            if self.transpose:
                dW += xp.dot(x.T, dy)
            else:
                dW += xp.dot(dy.T, x)
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].xdiff.reshape(self.N)
            db += dy.sum(axis=0)
        if propagate_down[0]:
            W = self._weight(self.blobs[0].xdata)
            dx = bottom[0].xdiff.reshape(self.M, self.K)
            xp.dot(dy, W.T if self.transpose else W, out=dx)


@register('Embed')
class EmbedLayer(Layer):
    """A lookup table: y[..., :] = W[int(x[...]), :] + b.

    bottom: x, integer indices in [0, input_dim) stored as floats, any shape.
    top: y, shape x.shape + (num_output,).
    embed_param: num_output, input_dim, bias_term (true), weight_filler, bias_filler.
    param blobs: weight (input_dim, num_output), bias (num_output,).
    No gradient to the indices.
    """
    exact_num_bottom = 1
    exact_num_top = 1
    allow_force_backward_bottoms = frozenset()

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        self.N = int(p.num_output)
        self.K = int(p.input_dim)
        if self.N <= 0:
            raise self.error('num_output must be positive, got %d' % self.N)
        if self.K <= 0:
            raise self.error('input_dim must be positive, got %d' % self.K)
        self.bias_term = bool(p.bias_term)
        if not self.blobs:
            self.blobs = [self.new_param_blob((self.K, self.N), p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.new_param_blob((self.N,), p.bias_filler))
        if self.blobs[0].count != self.K * self.N:
            raise self.error('weight blob has shape %s, expected (%d, %d)'
                             % (shape_str(self.blobs[0].shape), self.K, self.N))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        self.M = bottom[0].count
        top[0].reshape(tuple(bottom[0].shape) + (self.N,))

    def _indices(self, bottom):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(-1)
        idx = x.astype(np.int64)   # C++ static_cast<int>: truncation
        if idx.size:
            bad = (idx < 0) | (idx >= self.K) | (idx != x)
            if bool(bad.any()):
                i = int(xp.argmax(bad))
                v = float(x[i])
                why = 'not an integer' if v != int(v) else 'out of range [0, %d)' % self.K
                raise self.error('index %g at position %d is %s (input_dim %d)' % (v, i, why, self.K))
        return idx

    def forward(self, bottom, top):
        xp = backend.get_xp()
        idx = self._indices(bottom)
        self._idx = idx
        y = top[0].xdata.reshape(self.M, self.N)
        W = self.blobs[0].xdata.reshape(self.K, self.N)
        xp.take(W, idx, axis=0, out=y)
        if self.bias_term:
            y += self.blobs[1].xdata.reshape(1, self.N)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        if propagate_down[0]:
            raise self.error("can't back-propagate to the Embed input (the indices)")
        dy = top[0].xdiff.reshape(self.M, self.N)
        if self.param_propagate_down[0]:
            idx = self._indices(bottom)
            scatter_add_rows(xp, self.blobs[0].xdiff.reshape(self.K, self.N), idx, dy)
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].xdiff.reshape(self.N)
            db += dy.sum(axis=0)
