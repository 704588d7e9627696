"""Common layers: Caffe's general-purpose layers.

InnerProduct, Embed, Concat, Slice, Split, Flatten, Reshape, Eltwise, Tile,
Reduction, ArgMax, Softmax, BatchNorm, Scale, Bias, MVN, Filter,
BatchReindex, Silence and Parameter.

Written once for NumPy and CuPy with ``xp = backend.get_xp()``.  Blobs are
viewed as (outer, axis, inner) arrays so that every layer is a few whole-array
operations: no Python loops over samples, pixels or channels.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2

_F32 = np.float32


def _canonical_axis(layer, blob, axis, what='axis'):
    n = blob.num_axes
    if not -n <= axis < max(n, 1) or (n == 0 and axis != 0):
        raise layer.error('%s %d out of range for a %d-D bottom of shape %s'
                          % (what, axis, n, list(blob.shape)))
    return axis + n if axis < 0 else axis


def _prod(shape):
    c = 1
    for s in shape:
        c *= int(s)
    return c


def _shape_str(shape):
    return '(%s)' % ', '.join(str(s) for s in shape)


def _scatter_add_rows(xp, dst, idx, src):
    """dst[idx[i]] += src[i] for every i, repeated indices summed."""
    if idx.size == 0:
        return
    xp.add.at(dst, idx, src)


# =============================================================================
# InnerProduct and Embed
# =============================================================================
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
        self.axis = _canonical_axis(self, bottom[0], p.axis)
        self.K = bottom[0].count_range(self.axis)
        if self.blobs:
            pass  # weights given (loaded or shared): keep them
        else:
            wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
            self.blobs = [self.new_param_blob(wshape, p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.new_param_blob((self.N,), p.bias_filler))
        want = (self.K, self.N) if self.transpose else (self.N, self.K)
        if _prod(self.blobs[0].shape) != _prod(want):
            raise self.error('weight blob has shape %s; K=%d and num_output=%d need %s'
                             % (_shape_str(self.blobs[0].shape), self.K, self.N, _shape_str(want)))
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        axis = _canonical_axis(self, bottom[0], self.layer_param.inner_product_param.axis)
        K = bottom[0].count_range(axis)
        if K != self.K:
            raise self.error('input size incompatible with inner product parameters: bottom %s has '
                             '%d values from axis %d, the weights expect %d'
                             % (_shape_str(bottom[0].shape), K, axis, self.K))
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
                             % (_shape_str(self.blobs[0].shape), self.K, self.N))
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
            _scatter_add_rows(xp, self.blobs[0].xdiff.reshape(self.K, self.N), idx, dy)
        if self.bias_term and self.param_propagate_down[1]:
            db = self.blobs[1].xdiff.reshape(self.N)
            db += dy.sum(axis=0)


# =============================================================================
# Concat, Slice, Split, Flatten, Reshape
# =============================================================================
def _legacy_or_axis(layer, blob, param, legacy_name):
    """Caffe's axis / legacy concat_dim / slice_dim choice."""
    if param.HasField('axis') and param.HasField(legacy_name):
        raise layer.error('give either axis or %s, not both' % legacy_name)
    if param.HasField(legacy_name):
        d = int(getattr(param, legacy_name))
        if not 0 <= d < blob.num_axes:
            raise layer.error('%s %d out of range for a %d-D bottom of shape %s'
                              % (legacy_name, d, blob.num_axes, list(blob.shape)))
        return d
    return _canonical_axis(layer, blob, param.axis)


@register('Concat')
class ConcatLayer(Layer):
    """Joins bottoms along ``axis``; every other axis must agree.

    bottom: x_1 .. x_K.  top: y, whose ``axis`` is the sum of theirs.
    concat_param: axis (1) or legacy concat_dim.
    """
    min_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.concat_param
        b0 = bottom[0]
        axis = _legacy_or_axis(self, b0, p, 'concat_dim')
        total = 0
        for i, b in enumerate(bottom):
            if b.num_axes != b0.num_axes:
                raise self.error('all bottoms must have the same number of axes: bottom 0 is %s, bottom %d is %s'
                                 % (_shape_str(b0.shape), i, _shape_str(b.shape)))
            for j in range(b0.num_axes):
                if j != axis and b.shape[j] != b0.shape[j]:
                    raise self.error('all bottoms must have the same shape except at the concat axis %d: '
                                     'bottom 0 is %s, bottom %d is %s'
                                     % (axis, _shape_str(b0.shape), i, _shape_str(b.shape)))
            total += b.shape[axis]
        self.axis = axis
        self.outer = b0.count_range(0, axis)
        self.inner = b0.count_range(axis + 1)
        shape = list(b0.shape)
        shape[axis] = total
        top[0].reshape(shape)
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        if len(bottom) == 1:
            return
        y = top[0].xdata.reshape(self.outer, -1, self.inner)
        off = 0
        for b in bottom:
            n = b.shape[self.axis]
            y[:, off:off + n, :] = b.xdata.reshape(self.outer, n, self.inner)
            off += n

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            return
        dy = top[0].xdiff.reshape(self.outer, -1, self.inner)
        off = 0
        for i, b in enumerate(bottom):
            n = b.shape[self.axis]
            if propagate_down[i]:
                b.xdiff.reshape(self.outer, n, self.inner)[...] = dy[:, off:off + n, :]
            off += n


@register('Slice')
class SliceLayer(Layer):
    """Cuts the bottom along ``axis`` into the tops.

    bottom: x.  top: y_1 .. y_K.
    slice_param: axis (1) or legacy slice_dim; slice_point (K - 1 increasing
    cut positions) or none for K equal parts.
    """
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        p = self.layer_param.slice_param
        b = bottom[0]
        axis = _legacy_or_axis(self, b, p, 'slice_dim')
        dim = b.shape[axis]
        points = [int(s) for s in p.slice_point]
        if points:
            if len(points) != len(top) - 1:
                raise self.error('%d slice_point values for %d tops: need %d'
                                 % (len(points), len(top), len(top) - 1))
            if len(top) > dim:
                raise self.error('%d tops but the slice axis %d has only %d elements' % (len(top), axis, dim))
            sizes, prev = [], 0
            for s in points:
                if s <= prev:
                    raise self.error('slice_point values must be increasing and positive, got %s' % points)
                sizes.append(s - prev)
                prev = s
            if prev > dim:
                raise self.error('slice_point %d beyond the slice axis %d of size %d' % (prev, axis, dim))
            sizes.append(dim - prev)
        else:
            if dim % len(top):
                raise self.error('%d tops do not evenly divide the slice axis %d of size %d'
                                 % (len(top), axis, dim))
            sizes = [dim // len(top)] * len(top)
        self.axis = axis
        self.sizes = sizes
        self.outer = b.count_range(0, axis)
        self.inner = b.count_range(axis + 1)
        for t, n in zip(top, sizes):
            shape = list(b.shape)
            shape[axis] = n
            t.reshape(shape)
        if len(top) == 1:
            top[0].share_data(b)
            top[0].share_diff(b)

    def forward(self, bottom, top):
        if len(top) == 1:
            return
        x = bottom[0].xdata.reshape(self.outer, -1, self.inner)
        off = 0
        for t, n in zip(top, self.sizes):
            t.xdata.reshape(self.outer, n, self.inner)[...] = x[:, off:off + n, :]
            off += n

    def backward(self, top, propagate_down, bottom):
        if len(top) == 1 or not propagate_down[0]:
            return
        dx = bottom[0].xdiff.reshape(self.outer, -1, self.inner)
        off = 0
        for t, n in zip(top, self.sizes):
            dx[:, off:off + n, :] = t.xdiff.reshape(self.outer, n, self.inner)
            off += n


@register('Split')
class SplitLayer(Layer):
    """Hands one blob to several consumers: every top shares the bottom's data;
    the bottom's gradient is the sum of the tops' gradients.

    bottom: x.  top: y_1 .. y_K (K >= 1).  Inserted by the Net where a blob has
    several readers.
    """
    exact_num_bottom = 1
    min_top = 1

    def reshape(self, bottom, top):
        for i, t in enumerate(top):
            if t is bottom[0]:
                raise self.error('Split does not run in place (top %d is the bottom)' % i)
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dx = bottom[0].xdiff
        if len(top) == 1:
            dx[...] = top[0].xdiff
            return
        xp.add(top[0].xdiff, top[1].xdiff, out=dx)
        for t in top[2:]:
            dx += t.xdiff


@register('Flatten')
class FlattenLayer(Layer):
    """Merges axes ``axis`` .. ``end_axis`` into one; shares data and diff.

    bottom: x.  top: y.  flatten_param: axis (1), end_axis (-1).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error('Flatten does not run in place')
        p = self.layer_param.flatten_param
        b = bottom[0]
        start = _canonical_axis(self, b, p.axis)
        end = _canonical_axis(self, b, p.end_axis, 'end_axis')
        if end < start:
            raise self.error('end_axis %d comes before axis %d' % (p.end_axis, p.axis))
        shape = list(b.shape[:start]) + [b.count_range(start, end + 1)] + list(b.shape[end + 1:])
        top[0].reshape(shape)
        top[0].share_data(b)
        top[0].share_diff(b)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register('Reshape')
class ReshapeLayer(Layer):
    """Changes the shape, not the data; shares data and diff with the bottom.

    bottom: x.  top: y.
    reshape_param: shape (dim 0 copies the bottom's axis, dim -1 is inferred),
    axis (0) and num_axes (-1): the range of bottom axes the shape replaces.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error('Reshape does not run in place')
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        self.copy_axes, self.inferred_axis, self.constant_count = [], -1, 1
        for i, d in enumerate(dims):
            if d == 0:
                self.copy_axes.append(i)
            elif d == -1:
                if self.inferred_axis != -1:
                    raise self.error('new shape %s has more than one -1 (inferred) dimension' % dims)
                self.inferred_axis = i
            elif d < -1:
                raise self.error('new shape %s has a dimension below -1' % dims)
            else:
                self.constant_count *= d
        self.dims = dims

    def reshape(self, bottom, top):
        p = self.layer_param.reshape_param
        b = bottom[0]
        n = b.num_axes
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error('axis %d out of range for a %d-D bottom of shape %s' % (p.axis, n, list(b.shape)))
        if p.num_axes < -1:
            raise self.error('num_axes must be >= 0, or -1 for all, got %d' % p.num_axes)
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error('axis %d + num_axes %d beyond the %d-D bottom of shape %s'
                             % (p.axis, p.num_axes, n, list(b.shape)))
        shape = list(b.shape[:start]) + list(self.dims) + list(b.shape[end:])
        for a in self.copy_axes:
            if start + a >= n:
                raise self.error('new shape dim %d is 0 (copy) but the bottom %s has no axis %d'
                                 % (a, list(b.shape), start + a))
            shape[start + a] = b.shape[start + a]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * b.count_range(0, start) * b.count_range(end)
            for a in self.copy_axes:
                explicit *= b.shape[start + a]
            if explicit == 0 or b.count % explicit:
                raise self.error('cannot infer the -1 dimension: %d values do not divide into shape %s'
                                 % (b.count, self.dims))
            shape[start + self.inferred_axis] = b.count // explicit
        if _prod(shape) != b.count:
            raise self.error('new shape %s has %d values but the bottom %s has %d'
                             % (shape, _prod(shape), list(b.shape), b.count))
        top[0].reshape(shape)
        top[0].share_data(b)
        top[0].share_diff(b)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


# =============================================================================
# Eltwise, Tile, Reduction, ArgMax, Softmax
# =============================================================================
_EP = caffe_pb2.EltwiseParameter


@register('Eltwise')
class EltwiseLayer(Layer):
    """Element-wise PROD, SUM (with coefficients) or MAX of same-shaped bottoms.

    bottom: x_1 .. x_K (K >= 2), one shape.  top: y, that shape.
    eltwise_param: operation (SUM), coeff (one per bottom, SUM only),
    stable_prod_grad (true: the PROD gradient multiplies the other bottoms;
    false: divides y by x_i).
    """
    min_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if self.op not in (_EP.PROD, _EP.SUM, _EP.MAX):
            raise self.error('unknown operation %d' % self.op)
        coeffs = list(p.coeff)
        if coeffs and self.op != _EP.SUM:
            raise self.error('coefficients are only for SUM')
        if coeffs and len(coeffs) != len(bottom):
            raise self.error('%d coeff values for %d bottoms: give one per bottom' % (len(coeffs), len(bottom)))
        self.coeffs = [_F32(c) for c in coeffs] if coeffs else [_F32(1)] * len(bottom)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self._mask = Blob(dtype=np.int32) if self.op == _EP.MAX else None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error('bottom %d has shape %s but bottom 0 has %s'
                                 % (i, _shape_str(b.shape), _shape_str(bottom[0].shape)))
        top[0].reshape(bottom[0].shape)
        if self._mask is not None:
            self._mask.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        y = top[0].xdata
        if self.op == _EP.PROD:
            xp.multiply(bottom[0].xdata, bottom[1].xdata, out=y)
            for b in bottom[2:]:
                y *= b.xdata
        elif self.op == _EP.SUM:
            c0 = self.coeffs[0]
            rest = 1
            if c0 == 1 and len(bottom) > 1 and self.coeffs[1] == 1:
                xp.add(bottom[0].xdata, bottom[1].xdata, out=y)   # one pass for the common case
                rest = 2
            elif c0 == 1:
                y[...] = bottom[0].xdata
            else:
                xp.multiply(bottom[0].xdata, c0, out=y)
            for b, c in zip(bottom[rest:], self.coeffs[rest:]):
                if c == 1:
                    y += b.xdata
                else:
                    y += b.xdata * c
        else:
            # Caffe: bottom 1 wins ties with bottom 0; later bottoms need to be strictly greater
            mask = self._mask.xdata
            a, b = bottom[0].xdata, bottom[1].xdata
            gt = a > b
            mask[...] = ~gt          # 0 where bottom 0 is greater, else 1
            xp.maximum(a, b, out=y)
            for i, bb in enumerate(bottom[2:], 2):
                x = bb.xdata
                gt = x > y
                mask[gt] = i
                xp.maximum(y, x, out=y)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            dx = b.xdiff
            if self.op == _EP.PROD:
                if self.stable_prod_grad:
                    # the product of the other bottoms
                    others = [o for j, o in enumerate(bottom) if j != i]
                    dx[...] = others[0].xdata
                    for o in others[1:]:
                        dx *= o.xdata
                else:
                    xp.divide(top[0].xdata, b.xdata, out=dx)
                dx *= dy
            elif self.op == _EP.SUM:
                c = self.coeffs[i]
                if c == 1:
                    dx[...] = dy
                else:
                    xp.multiply(dy, c, out=dx)
            else:
                xp.multiply(dy, self._mask.xdata == i, out=dx)


@register('Tile')
class TileLayer(Layer):
    """Repeats the bottom ``tiles`` times along ``axis`` (each whole block repeated).

    bottom: x.  top: y, with shape[axis] * tiles.  tile_param: axis (1), tiles.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.tile_param
        self.tiles = int(p.tiles)
        if self.tiles <= 0:
            raise self.error('tiles must be positive, got %d' % self.tiles)

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = _canonical_axis(self, b, self.layer_param.tile_param.axis)
        self.outer = b.count_range(0, axis)
        self.inner = b.count_range(axis)
        shape = list(b.shape)
        shape[axis] *= self.tiles
        top[0].reshape(shape)

    def forward(self, bottom, top):
        y = top[0].xdata.reshape(self.outer, self.tiles, self.inner)
        y[...] = bottom[0].xdata.reshape(self.outer, 1, self.inner)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.outer, self.tiles, self.inner)
        xp.sum(dy, axis=1, out=bottom[0].xdiff.reshape(self.outer, self.inner))


_RP = caffe_pb2.ReductionParameter


@register('Reduction')
class ReductionLayer(Layer):
    """Reduces all axes from ``axis`` on: SUM, ASUM (sum of |x|), SUMSQ or MEAN,
    times ``coeff``.

    bottom: x.  top: y, shape x.shape[:axis] (a scalar for axis 0).
    reduction_param: operation (SUM), axis (0), coeff (1).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.reduction_param
        self.op = p.operation
        if self.op not in (_RP.SUM, _RP.ASUM, _RP.SUMSQ, _RP.MEAN):
            raise self.error('unknown operation %d' % self.op)

    def reshape(self, bottom, top):
        p = self.layer_param.reduction_param
        b = bottom[0]
        axis = _canonical_axis(self, b, p.axis)
        self.num = b.count_range(0, axis)
        self.dim = b.count_range(axis)
        top[0].reshape(tuple(b.shape[:axis]))
        coeff = _F32(p.coeff)
        if self.op == _RP.MEAN:
            coeff = _F32(coeff / _F32(self.dim)) if self.dim else coeff
        self.coeff = coeff

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.num, self.dim)
        y = top[0].xdata.reshape(self.num)
        if self.op == _RP.ASUM:
            x = xp.abs(x)
        elif self.op == _RP.SUMSQ:
            x = x * x
        xp.sum(x, axis=1, out=y)
        if self.coeff != 1:
            y *= self.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.num, 1) * self.coeff
        dx = bottom[0].xdiff.reshape(self.num, self.dim)
        if self.op in (_RP.SUM, _RP.MEAN):
            dx[...] = dy
        elif self.op == _RP.ASUM:
            x = bottom[0].xdata.reshape(self.num, self.dim)
            xp.multiply(xp.sign(x), dy, out=dx)
        else:
            x = bottom[0].xdata.reshape(self.num, self.dim)
            xp.multiply(x, dy * _F32(2), out=dx)


@register('ArgMax')
class ArgMaxLayer(Layer):
    """The indices (or values) of the top_k largest entries.

    Without ``axis``: per sample over all of its values; top (N, 1, top_k), or
    (N, 2, top_k) with out_max_val (indices, then values).  With ``axis``: along
    that axis; top is the bottom's shape with top_k there, holding indices, or
    values with out_max_val.  Ties go to the larger index, as in Caffe.
    bottom: x.  argmax_param: out_max_val (false), top_k (1), axis.  No gradient.
    """
    exact_num_bottom = 1
    exact_num_top = 1
    allow_force_backward_bottoms = frozenset()

    def setup(self, bottom, top):
        p = self.layer_param.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.has_axis = p.HasField('axis')
        if self.top_k < 1:
            raise self.error('top_k must be at least 1, got %d' % self.top_k)

    def reshape(self, bottom, top):
        b = bottom[0]
        p = self.layer_param.argmax_param
        if self.has_axis:
            self.axis = _canonical_axis(self, b, p.axis)
            if self.top_k > b.shape[self.axis]:
                raise self.error('top_k %d is larger than axis %d of size %d'
                                 % (self.top_k, self.axis, b.shape[self.axis]))
            shape = list(b.shape)
            shape[self.axis] = self.top_k
        else:
            if b.num_axes < 1:
                raise self.error('needs a bottom with at least one axis')
            if self.top_k > b.count_range(1):
                raise self.error('top_k %d is larger than the %d values per sample'
                                 % (self.top_k, b.count_range(1)))
            shape = [1] * max(b.num_axes, 3)
            shape[0] = b.shape[0]
            shape[2] = self.top_k
            if self.out_max_val:
                shape[1] = 2
        top[0].reshape(shape)

    def _topk(self, xp, v):
        """Indices (int) of the top_k largest along the last axis, larger index first on ties."""
        D = v.shape[-1]
        rev = v[..., ::-1]
        if self.top_k == 1:
            r = xp.argmax(rev, axis=-1)[..., None]
        else:
            r = xp.argsort(-rev, axis=-1, kind='stable')[..., :self.top_k]
        return (D - 1) - r

    def forward(self, bottom, top):
        xp = backend.get_xp()
        b = bottom[0]
        x = b.xdata
        if self.has_axis:
            outer = b.count_range(0, self.axis)
            D = b.shape[self.axis]
            inner = b.count_range(self.axis + 1)
            v = x.reshape(outer, D, inner).transpose(0, 2, 1)        # (outer, inner, D)
            idx = self._topk(xp, v)                                    # (outer, inner, k)
            out = xp.take_along_axis(v, idx, axis=-1) if self.out_max_val else idx
            top[0].xdata.reshape(outer, self.top_k, inner)[...] = out.transpose(0, 2, 1)
        else:
            N = b.shape[0]
            v = x.reshape(N, -1)
            idx = self._topk(xp, v)                                    # (N, k)
            y = top[0].xdata.reshape(N, -1, self.top_k)
            y[:, 0, :] = idx
            if self.out_max_val:
                y[:, 1, :] = xp.take_along_axis(v, idx, axis=-1)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error('ArgMax has no gradient; it cannot back-propagate')


@register('Softmax')
class SoftmaxLayer(Layer):
    """y = exp(x - max) / sum(exp(x - max)) along ``axis``.

    bottom: x.  top: y, same shape.  softmax_param: axis (1).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = _canonical_axis(self, b, self.layer_param.softmax_param.axis)
        self.shape3 = (b.count_range(0, axis), b.shape[axis], b.count_range(axis + 1))
        top[0].reshape(b.shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.shape3)
        y = top[0].xdata.reshape(self.shape3)
        m = x.max(axis=1, keepdims=True)
        xp.subtract(x, m, out=y)
        xp.exp(y, out=y)
        s = y.sum(axis=1, keepdims=True)
        y /= s

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        y = top[0].xdata.reshape(self.shape3)
        dy = top[0].xdiff.reshape(self.shape3)
        dx = bottom[0].xdiff.reshape(self.shape3)
        dot = (dy * y).sum(axis=1, keepdims=True)
        xp.subtract(dy, dot, out=dx)
        dx *= y


# =============================================================================
# BatchNorm, Scale, Bias, MVN
# =============================================================================
@register('BatchNorm')
class BatchNormLayer(Layer):
    """Normalizes each channel (axis 1) to zero mean and unit variance.

    TRAIN (use_global_stats false): with the batch's statistics over N and the
    spatial axes, updating the running sums: s = maf * s + 1,
    mean_sum = maf * mean_sum + mean, var_sum = maf * var_sum + m/(m-1) * var.
    use_global_stats (the default in TEST): with mean_sum / s and var_sum / s.
    y = (x - mean) / sqrt(var + eps).

    bottom: x, (N, C, ...) or (N,) .  top: y, same shape; in place allowed.
    batch_norm_param: use_global_stats, moving_average_fraction maf (0.999), eps (1e-5).
    param blobs (never learned; the Net forces lr_mult 0): mean_sum (C,), var_sum (C,), s (1,).
    """
    exact_num_bottom = 1
    exact_num_top = 1
    force_zero_lr = True

    def setup(self, bottom, top):
        p = self.layer_param.batch_norm_param
        self.maf = _F32(p.moving_average_fraction)
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if p.HasField('use_global_stats'):
            self.use_global_stats = bool(p.use_global_stats)
        self.eps = _F32(p.eps)
        self.channels = 1 if bottom[0].num_axes == 1 else bottom[0].shape[1]
        if bottom[0].num_axes < 1:
            raise self.error('needs a bottom with at least one axis')
        for i, spec in enumerate(self.layer_param.param):
            if spec.lr_mult != 0:
                raise self.error('param %d has lr_mult %g: batch normalization statistics cannot be learned '
                                 '(use lr_mult 0 or no param specs)' % (i, spec.lr_mult))
        if not self.blobs:
            self.blobs = [Blob((self.channels,)), Blob((self.channels,)), Blob((1,))]
            for blob in self.blobs:
                blob.xdata.fill(0)
        shapes = [b.count for b in self.blobs]
        if len(self.blobs) != 3 or shapes != [self.channels, self.channels, 1]:
            raise self.error('expects 3 parameter blobs of %d, %d and 1 values, got %s'
                             % (self.channels, self.channels, [b.shape for b in self.blobs]))
        self.param_propagate_down = [False, False, False]
        self._x_norm = Blob()
        self._std = Blob((self.channels,))

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes >= 2 and b.shape[1] != self.channels:
            raise self.error('bottom %s has %d channels, the layer was set up for %d'
                             % (_shape_str(b.shape), b.shape[1], self.channels))
        top[0].reshape(b.shape)
        if self._keeps_x_norm():
            self._x_norm.reshape(b.shape)
        elif self._x_norm.count:
            self._x_norm = Blob()     # not needed after all: give the memory back
        self.shape3 = (b.shape[0], self.channels, b.count_range(2) if b.num_axes > 1 else 1)

    def global_stats(self, xp):
        """(mean, variance) from the running sums: mean_sum / s, var_sum / s (0 when s is 0)."""
        s = self.blobs[2].xdata.reshape(())
        factor = xp.where(s == 0, _F32(0), _F32(1) / xp.where(s == 0, _F32(1), s)).astype(np.float32)
        return self.blobs[0].xdata * factor, self.blobs[1].xdata * factor

    def _keeps_x_norm(self):
        # backward with batch statistics reads the normalized x; with global
        # statistics it needs only the std
        return self.need_backward and not self.use_global_stats

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.shape3)
        y = top[0].xdata.reshape(self.shape3)
        std = self._std.xdata
        if self.use_global_stats:
            mean, var = self.global_stats(xp)
        else:
            mean = x.mean(axis=(0, 2), dtype=np.float32)
        xp.subtract(x, mean.reshape(1, -1, 1), out=y)
        if not self.use_global_stats:
            var = (y * y).mean(axis=(0, 2), dtype=np.float32)
            s = self.blobs[2].xdata
            s *= self.maf
            s += _F32(1)
            m_sum = self.blobs[0].xdata
            m_sum *= self.maf
            m_sum += mean
            m = bottom[0].count // self.channels
            bias_correction = _F32(m / (m - 1.0)) if m > 1 else _F32(1)
            v_sum = self.blobs[1].xdata
            v_sum *= self.maf
            v_sum += var * bias_correction
        xp.add(var, self.eps, out=std)
        xp.sqrt(std, out=std)
        y /= std.reshape(1, -1, 1)
        if self._keeps_x_norm():
            self._x_norm.xdata[...] = top[0].xdata

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.shape3)
        dx = bottom[0].xdiff.reshape(self.shape3)
        std = self._std.xdata.reshape(1, -1, 1)
        if self.use_global_stats:
            xp.divide(dy, std, out=dx)
            return
        y = self._x_norm.xdata.reshape(self.shape3)
        # dx = (dy - mean(dy) - y * mean(dy * y)) / std
        mean_dy_y = (dy * y).mean(axis=(0, 2), keepdims=True, dtype=np.float32)
        mean_dy = dy.mean(axis=(0, 2), keepdims=True, dtype=np.float32)
        t = y * mean_dy_y
        xp.subtract(dy, mean_dy, out=dx)
        dx -= t
        dx /= std


def _broadcast_dims(layer, bottom0, other_shape, axis):
    """(outer, dim, inner) for broadcasting a blob of ``other_shape`` at ``axis``."""
    n = len(other_shape)
    if bottom0.num_axes < axis + n:
        raise layer.error('bottom %s has too few axes for a %s blob at axis %d'
                          % (_shape_str(bottom0.shape), _shape_str(other_shape), axis))
    for i in range(n):
        if bottom0.shape[axis + i] != other_shape[i]:
            raise layer.error('dimension mismatch between bottom %s (axis %d) and %s'
                              % (_shape_str(bottom0.shape), axis + i, _shape_str(other_shape)))
    return (bottom0.count_range(0, axis), _prod(other_shape), bottom0.count_range(axis + n))


def _param_shape(layer, bottom0, axis_param, num_axes):
    axis = _canonical_axis(layer, bottom0, axis_param)
    if num_axes < -1:
        raise layer.error('num_axes must be >= 0, or -1 to extend to the last axis, got %d' % num_axes)
    if num_axes >= 0 and bottom0.num_axes < axis + num_axes:
        raise layer.error('axis %d + num_axes %d beyond the %d-D bottom of shape %s'
                          % (axis, num_axes, bottom0.num_axes, list(bottom0.shape)))
    end = bottom0.num_axes if num_axes == -1 else axis + num_axes
    return tuple(bottom0.shape[axis:end])


class _BroadcastLayer(Layer):
    """Shared by Scale and Bias: a (learned or second-bottom) operand broadcast
    over the bottom's axes ``axis`` .. ``axis + operand axes``."""
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def _operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def _dims(self, bottom, param):
        op = self._operand(bottom)
        # a scalar operand broadcasts everywhere; axis 0 avoids the range check
        axis = 0 if op.num_axes == 0 else _canonical_axis(self, bottom[0], param.axis)
        return _broadcast_dims(self, bottom[0], op.shape, axis)

    @staticmethod
    def _reduce(xp, prod3, out, accumulate):
        """out (+)= sum of prod3 (outer, dim, inner) over outer and inner."""
        r = prod3.sum(axis=(0, 2))
        if accumulate:
            out += r.reshape(out.shape)
        else:
            out[...] = r.reshape(out.shape)


@register('Bias')
class BiasLayer(_BroadcastLayer):
    """y = x + b, b broadcast over the bottom's axes ``axis`` .. ``axis + b.ndim``.

    bottom: x, and optionally b (else b is a learned parameter).  top: y.
    bias_param: axis (1), num_axes (1; -1 = to the last axis; learned b only),
    filler (constant 0).  param blob (one bottom): b.
    """

    def setup(self, bottom, top):
        p = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
            self.blobs = [self.new_param_blob(shape, p.filler)]
        self.param_propagate_down = [True] * len(self.blobs)

    def reshape(self, bottom, top):
        self.shape3 = self._dims(bottom, self.layer_param.bias_param)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        outer, dim, inner = self.shape3
        b = self._operand(bottom).xdata.reshape(1, dim, 1)
        xp.add(bottom[0].xdata.reshape(self.shape3), b, out=top[0].xdata.reshape(self.shape3))

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff
        if propagate_down[0] and bottom[0] is not top[0]:
            bottom[0].xdiff[...] = dy
        learned = len(bottom) == 1
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            op = self._operand(bottom)
            self._reduce(xp, dy.reshape(self.shape3), op.xdiff, accumulate=learned)


@register('Scale')
class ScaleLayer(_BroadcastLayer):
    """y = x * s (+ b), s broadcast over the bottom's axes ``axis`` .. ``axis + s.ndim``.

    bottom: x, and optionally s (else s is a learned parameter).  top: y; in place allowed.
    scale_param: axis (1), num_axes (1; -1 = to the last axis; learned s only),
    filler (constant 1), bias_term (false), bias_filler (constant 0).
    param blobs: s (one bottom), then b (bias_term).
    """

    def setup(self, bottom, top):
        p = self.layer_param.scale_param
        learned = len(bottom) == 1
        if not self.blobs:
            blobs = []
            if learned:
                shape = _param_shape(self, bottom[0], p.axis, p.num_axes)
                filler = p.filler if p.HasField('filler') else caffe_pb2.FillerParameter(type='constant', value=1.0)
                blobs.append(self.new_param_blob(shape, filler))
            if p.bias_term:
                shape = tuple(blobs[0].shape) if learned else tuple(bottom[1].shape)
                blobs.append(self.new_param_blob(shape, p.bias_filler))
            self.blobs = blobs
        want = int(learned) + int(bool(p.bias_term))
        if len(self.blobs) != want:
            raise self.error('expects %d parameter blobs, got %d' % (want, len(self.blobs)))
        self.bias_term = bool(p.bias_term)
        self.param_propagate_down = [True] * len(self.blobs)
        self._temp = Blob()

    def reshape(self, bottom, top):
        self.shape3 = self._dims(bottom, self.layer_param.scale_param)
        if self.bias_term:
            bias = self.blobs[-1]
            if bias.count != self.shape3[1]:
                raise self.error('bias blob has %d values, the scale has %d' % (bias.count, self.shape3[1]))
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        outer, dim, inner = self.shape3
        learned = len(bottom) == 1
        if bottom[0] is top[0] and self.need_backward and (not learned or self.param_propagate_down[0]):
            # in place: keep x for the scale gradient
            self._temp.reshape(bottom[0].shape)
            self._temp.xdata[...] = bottom[0].xdata
        s = self._operand(bottom).xdata.reshape(1, dim, 1)
        y = top[0].xdata.reshape(self.shape3)
        xp.multiply(bottom[0].xdata.reshape(self.shape3), s, out=y)
        if self.bias_term:
            y += self.blobs[-1].xdata.reshape(1, dim, 1)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        outer, dim, inner = self.shape3
        learned = len(bottom) == 1
        dy = top[0].xdiff.reshape(self.shape3)
        if self.bias_term and self.param_propagate_down[-1]:
            self._reduce(xp, dy, self.blobs[-1].xdiff, accumulate=True)
        if (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1]):
            x = (self._temp if bottom[0] is top[0] else bottom[0]).xdata.reshape(self.shape3)
            self._reduce(xp, dy * x, self._operand(bottom).xdiff, accumulate=learned)
        if propagate_down[0]:
            s = self._operand(bottom).xdata.reshape(1, dim, 1)
            xp.multiply(dy, s, out=bottom[0].xdiff.reshape(self.shape3))


def can_fold_batchnorm_scale(bn, scale, bn_bottom_ids, bn_top_ids, sc_bottom_ids, sc_top_ids):
    """Whether a BatchNorm with global statistics and the Scale after it can
    run as one affine pass (inference only): both in place on one blob, the
    Scale learned per channel, neither ever asked for a backward pass."""
    if bn.type != 'BatchNorm' or scale.type != 'Scale':
        return False
    if bn.need_backward or scale.need_backward or not bn.use_global_stats:
        return False
    blob = bn_top_ids[0] if bn_top_ids else None
    if not (bn_bottom_ids == bn_top_ids == sc_bottom_ids == sc_top_ids == [blob]):
        return False
    p = scale.layer_param.scale_param
    return (len(scale.blobs) == 1 + int(scale.bias_term) and p.axis in (1, -3) and p.num_axes == 1
            and scale.blobs[0].count == bn.channels)


def batchnorm_scale_forward(bn, scale, blob):
    """y = x * a + b in place, a = gamma / sqrt(var + eps), b = beta - mean * a:
    BatchNorm (global statistics) then Scale in two passes over the data
    instead of five.  The same values as the two layers up to float rounding."""
    xp = backend.get_xp()
    bn.reshape([blob], [blob])
    scale.reshape([blob], [blob])
    mean, std = bn.global_stats(xp)
    std += bn.eps
    xp.sqrt(std, out=std)
    a = scale.blobs[0].xdata.reshape(-1) / std
    b = -mean * a
    if scale.bias_term:
        b += scale.blobs[1].xdata.reshape(-1)
    x3 = blob.xdata.reshape(bn.shape3)
    xp.multiply(x3, a.reshape(1, -1, 1), out=x3)
    x3 += b.reshape(1, -1, 1)


@register('MVN')
class MVNLayer(Layer):
    """Mean-variance normalization per sample and channel (or per sample across
    channels): y = (x - mean) / (std + eps), or y = x - mean.

    bottom: x, (N, C, ...).  top: y, same shape.
    mvn_param: normalize_variance (true), across_channels (false), eps (1e-9, added to the std).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = _F32(p.eps)
        self._std = Blob()

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes < 1:
            raise self.error('needs a bottom with at least one axis')
        num = b.shape[0] if self.across_channels else b.shape[0] * (b.shape[1] if b.num_axes > 1 else 1)
        self.num = num
        self.dim = b.count // num if num else 0
        top[0].reshape(b.shape)
        self._std.reshape((num, 1))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self.num, self.dim)
        y = top[0].xdata.reshape(self.num, self.dim)
        mean = x.mean(axis=1, keepdims=True, dtype=np.float32)
        xp.subtract(x, mean, out=y)
        if self.normalize_variance:
            std = self._std.xdata
            xp.mean(y * y, axis=1, keepdims=True, dtype=np.float32, out=std)
            xp.sqrt(std, out=std)
            std += self.eps
            y /= std

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self.num, self.dim)
        dx = bottom[0].xdiff.reshape(self.num, self.dim)
        if self.normalize_variance:
            y = top[0].xdata.reshape(self.num, self.dim)
            sum_dy_y = (dy * y).sum(axis=1, keepdims=True)
            sum_dy = dy.sum(axis=1, keepdims=True)
            t = y * sum_dy_y
            t += sum_dy
            t *= _F32(1.0 / self.dim)
            xp.subtract(dy, t, out=dx)
            dx /= self._std.xdata
        else:
            mean = dy.mean(axis=1, keepdims=True, dtype=np.float32)
            xp.subtract(dy, mean, out=dx)


# =============================================================================
# Filter, BatchReindex, Silence, Parameter
# =============================================================================
@register('Filter')
class FilterLayer(Layer):
    """Keeps the items (along axis 0) whose selector is non-zero.

    bottom: x_1 .. x_K, then the selector (N,) (or N followed by 1s).
    top: y_1 .. y_K, with the selected items.  No gradient to the selector;
    the data bottoms get the tops' gradient at the kept items and 0 elsewhere.
    """
    min_bottom = 2
    min_top = 1

    def allow_force_backward(self, bottom_index):
        n = getattr(self, '_num_bottom', None) or len(self.layer_param.bottom)
        return bottom_index < n - 1   # never to the selector

    def setup(self, bottom, top):
        self._num_bottom = len(bottom)
        if len(top) != len(bottom) - 1:
            raise self.error('needs one top per data bottom: %d bottoms (the last is the selector) but %d tops'
                             % (len(bottom), len(top)))
        self._first_reshape = True
        self._indices = None

    def _select(self, bottom):
        xp = backend.get_xp()
        sel = bottom[-1]
        for i in range(1, sel.num_axes):
            if sel.shape[i] != 1:
                raise self.error('selector blob %s must be (N,) or have singleton axes after the first'
                                 % _shape_str(sel.shape))
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != sel.shape[0]:
                raise self.error('bottom %d %s does not have the selector\'s %d items'
                                 % (i, _shape_str(b.shape), sel.shape[0]))
        s = sel.xdata.reshape(-1)
        return xp.nonzero(s)[0]

    def _shape_tops(self, bottom, top, n):
        for t, b in zip(top, bottom):
            t.reshape((n,) + tuple(b.shape[1:]))

    def reshape(self, bottom, top):
        idx = self._select(bottom)
        n = int(idx.size)
        if self._first_reshape:
            # the selector holds no data yet at set-up (as Caffe: full size the first time)
            n = bottom[0].shape[0]
            self._first_reshape = False
        else:
            self._indices = idx
        self._shape_tops(bottom, top, n)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        idx = self._select(bottom)
        self._indices = idx
        self._shape_tops(bottom, top, int(idx.size))
        for t, b in zip(top, bottom):
            xp.take(b.xdata, idx, axis=0, out=t.xdata)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error('cannot back-propagate to the selector (the last bottom)')
        idx = self._indices
        for i, (t, b) in enumerate(zip(top, bottom)):
            if not propagate_down[i]:
                continue
            dx = b.xdiff
            dx.fill(0)
            if idx is not None and idx.size:
                dx[idx] = t.xdiff


@register('BatchReindex')
class BatchReindexLayer(Layer):
    """y[i] = x[idx[i]]: selects (and repeats) items along axis 0.

    bottom: x, and idx (M,) holding indices into x's first axis.
    top: y, (M,) + x.shape[1:].  The gradient to x sums over repeated indices;
    none to idx.
    """
    exact_num_bottom = 2
    exact_num_top = 1
    allow_force_backward_bottoms = frozenset([0])

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise self.error('the index bottom must be 1-D, got shape %s' % _shape_str(bottom[1].shape))
        if bottom[0].num_axes < 1:
            raise self.error('the data bottom needs at least one axis')
        top[0].reshape((bottom[1].shape[0],) + tuple(bottom[0].shape[1:]))

    def _indices(self, bottom):
        xp = backend.get_xp()
        v = bottom[1].xdata
        idx = v.astype(np.int64)
        if idx.size:
            n = bottom[0].shape[0]
            bad = (idx < 0) | (idx >= n)
            if bool(bad.any()):
                i = int(xp.argmax(bad))
                raise self.error('index %g at position %d is out of range for a batch of %d'
                                 % (float(v[i]), i, n))
        return idx

    def forward(self, bottom, top):
        xp = backend.get_xp()
        idx = self._indices(bottom)
        self._idx = idx
        M = bottom[1].shape[0]
        inner = bottom[0].count_range(1)
        x = bottom[0].xdata.reshape(-1, inner)
        xp.take(x, idx, axis=0, out=top[0].xdata.reshape(M, inner))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error('cannot back-propagate to the indices (bottom 1)')
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        inner = bottom[0].count_range(1)
        dx = bottom[0].xdiff.reshape(-1, inner)
        dx.fill(0)
        _scatter_add_rows(xp, dx, self._indices(bottom), top[0].xdiff.reshape(-1, inner))


@register('Silence')
class SilenceLayer(Layer):
    """Consumes bottoms so that they are not net outputs; their gradient is 0.

    bottom: one or more.  top: none.
    """
    min_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for i, b in enumerate(bottom):
            if propagate_down[i]:
                b.xdiff.fill(0)


@register('Parameter')
class ParameterLayer(Layer):
    """Exposes a parameter blob as a top (sharing its data and diff).

    bottom: none.  top: the parameter.  parameter_param: shape.
    param blob: that blob (filled with 0).
    """
    exact_num_bottom = 0
    exact_num_top = 1

    def setup(self, bottom, top):
        shape = tuple(int(d) for d in self.layer_param.parameter_param.shape.dim)
        if not self.blobs:
            b = Blob(shape)
            b.xdata.fill(0)
            self.blobs = [b]
        self.param_propagate_down = [True]

    def reshape(self, bottom, top):
        self._share(top)

    def _share(self, top):
        blob = self.blobs[0]
        top[0].reshape(blob.shape)
        top[0].share_data(blob)
        top[0].share_diff(blob)

    def forward(self, bottom, top):
        self._share(top)

    def backward(self, top, propagate_down, bottom):
        pass
