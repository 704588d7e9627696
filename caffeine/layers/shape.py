"""Shape layers: Concat, Slice, Split, Flatten, Reshape and Tile.

They move or share values without arithmetic; Split, Flatten and Reshape share
the bottom's storage, as in Caffe.
"""
from __future__ import annotations

from .. import backend
from ..layer import Layer, register
from ._util import canonical_axis, shape_count, shape_str


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
    return canonical_axis(layer, blob, param.axis)


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
                                 % (shape_str(b0.shape), i, shape_str(b.shape)))
            for j in range(b0.num_axes):
                if j != axis and b.shape[j] != b0.shape[j]:
                    raise self.error('all bottoms must have the same shape except at the concat axis %d: '
                                     'bottom 0 is %s, bottom %d is %s'
                                     % (axis, shape_str(b0.shape), i, shape_str(b.shape)))
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


class _ViewLayer(Layer):
    """A top that is the bottom under another shape: data and diff shared, nothing to compute."""
    exact_num_bottom = 1
    exact_num_top = 1

    def _view(self, bottom, top, shape):
        top[0].reshape(shape)
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        pass


@register('Flatten')
class FlattenLayer(_ViewLayer):
    """Merges axes ``axis`` .. ``end_axis`` into one; shares data and diff.

    bottom: x.  top: y.  flatten_param: axis (1), end_axis (-1).
    """

    def reshape(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error('Flatten does not run in place')
        p = self.layer_param.flatten_param
        b = bottom[0]
        start = canonical_axis(self, b, p.axis)
        end = canonical_axis(self, b, p.end_axis, 'end_axis')
        if end < start:
            raise self.error('end_axis %d comes before axis %d' % (p.end_axis, p.axis))
        self._view(bottom, top, list(b.shape[:start]) + [b.count_range(start, end + 1)] + list(b.shape[end + 1:]))


@register('Reshape')
class ReshapeLayer(_ViewLayer):
    """Changes the shape, not the data; shares data and diff with the bottom.

    bottom: x.  top: y.
    reshape_param: shape (dim 0 copies the bottom's axis, dim -1 is inferred),
    axis (0) and num_axes (-1): the range of bottom axes the shape replaces.
    """

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
        if shape_count(shape) != b.count:
            raise self.error('new shape %s has %d values but the bottom %s has %d'
                             % (shape, shape_count(shape), list(b.shape), b.count))
        self._view(bottom, top, shape)


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
        axis = canonical_axis(self, b, self.layer_param.tile_param.axis)
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
