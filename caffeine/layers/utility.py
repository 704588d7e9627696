"""Utility layers: Filter, BatchReindex, Silence and Parameter."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..blob import Blob
from ..layer import Layer, register
from ._util import scatter_add_rows, shape_str


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
                                 % shape_str(sel.shape))
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes < 1 or b.shape[0] != sel.shape[0]:
                raise self.error('bottom %d %s does not have the selector\'s %d items'
                                 % (i, shape_str(b.shape), sel.shape[0]))
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
            raise self.error('the index bottom must be 1-D, got shape %s' % shape_str(bottom[1].shape))
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
        scatter_add_rows(xp, dx, self._indices(bottom), top[0].xdiff.reshape(-1, inner))


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
