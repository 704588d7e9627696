"""pycaffe's Python-side Net methods (BVLC's python/caffe/pycaffe.py adds the same ones to Net).

``forward``/``backward`` take inputs and diffs by blob name and return arrays by name;
``forward_all``/``forward_backward_all`` run any number of items in net-sized batches;
``set_input_arrays`` feeds a MemoryData layer.  They use only the Net's public surface
(``blobs``, ``inputs``, ``outputs``, ``layer_dict``, ``top_names``, ``bottom_names``,
``forward_from_to``, ``backward_from_to``).
"""
from __future__ import annotations

import numpy as np

from .errors import CaffeineError


class PycaffeNet:
    """The mixin that gives :class:`caffeine.net.Net` pycaffe's by-name methods."""

    def _layer_index(self, name):
        try:
            return list(self.layer_dict).index(name)
        except ValueError:
            raise CaffeineError('unknown layer name %r' % name)

    def _fill(self, arrays, field):
        """Copy {blob name: array} into the inputs' data (``field`` 'data') or the
        outputs' diffs ('diff'), each array batch sized."""
        expected, args, item = ((self.inputs, 'input blob arguments', 'input') if field == 'data'
                                else (self.outputs, 'top diff arguments', 'diff'))
        if set(arrays) != set(expected):
            raise CaffeineError('%s %s do not match net %s %s' % (args, sorted(arrays),
                                                               'inputs' if field == 'data' else 'outputs', expected))
        for name, arr in arrays.items():
            blob = self.blobs[name]
            arr = np.asarray(arr)
            if arr.ndim and arr.shape[0] != blob.shape[0]:
                raise CaffeineError('%s %r is not batch sized: %d != %d' % (item, name, arr.shape[0], blob.shape[0]))
            getattr(blob, field)[...] = arr

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: set inputs from kwargs, run, return {output: array}."""
        blobs = list(blobs or [])
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + blobs)
        else:
            end_ind = len(self.layers) - 1
            outputs = set(self.outputs + blobs)
        if kwargs:
            self._fill(kwargs, 'data')
        self.forward_from_to(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: set top diffs from kwargs, run, return {input: diff}."""
        diffs = list(diffs or [])
        start_ind = self._layer_index(start) if start is not None else len(self.layers) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs + diffs)
        if kwargs:
            self._fill(kwargs, 'diff')
        self.backward_from_to(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    def _batches(self, arrays):
        """Split {blob: array} into net-sized batches; the last one padded with zeros."""
        if not arrays:
            return
        n = {len(a) for a in arrays.values()}
        if len(n) != 1:
            raise CaffeineError('inputs have different numbers of items: %s'
                                % {k: len(a) for k, a in arrays.items()})
        n = n.pop()
        size = self.blobs[next(iter(arrays))].shape[0]
        for i in range(0, n, size):
            batch = {}
            for name, a in arrays.items():
                chunk = np.asarray(a[i:i + size])
                if len(chunk) < size:
                    pad = np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                batch[name] = chunk
            yield batch

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's Net.forward_all: forward every item of the inputs given as
        kwargs, batch by batch; returns {output (and each of ``blobs``): array}
        with one row per item (the padding of the last batch dropped)."""
        names = set(self.outputs + list(blobs or []))
        outs = {name: [] for name in names}
        for batch in self._batches(kwargs):
            for name, arr in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(arr.copy())
        return _unpad(outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's Net.forward_backward_all: kwargs name inputs (forwarded)
        and outputs (their diffs, backpropagated); returns ({outputs}, {input diffs})."""
        fwd = {k: v for k, v in kwargs.items() if k in self.inputs}
        bwd = {k: v for k, v in kwargs.items() if k in self.outputs}
        other = set(kwargs) - set(fwd) - set(bwd)
        if other:
            raise CaffeineError('forward_backward_all: %s are neither net inputs %s nor outputs %s'
                                % (sorted(other), self.inputs, self.outputs))
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads = {name: [] for name in set(self.inputs + list(diffs or []))}
        bb = self._batches(bwd)
        for fbatch in self._batches(fwd):
            bbatch = next(bb, {})
            for name, arr in self.forward(blobs=blobs, **fbatch).items():
                outs[name].extend(arr.copy())
            for name, arr in self.backward(diffs=diffs, **bbatch).items():
                grads[name].extend(arr.copy())
        return _unpad(outs, fwd), _unpad(grads, fwd)

    def set_input_arrays(self, data, labels):
        """pycaffe's Net.set_input_arrays: give the first layer, a MemoryData
        layer, ``data`` (N x C x H x W) and ``labels`` (N) to serve batch by batch."""
        if not self.layers or self.layers[0].type != 'MemoryData':
            raise CaffeineError('set_input_arrays: the first layer must be a MemoryData layer, not %s'
                                % (self.layers[0].type if self.layers else 'nothing'))
        self.layers[0].set_input_arrays(data, labels)


def _unpad(collected, given):
    """{name: rows} as arrays, cut to the number of items given (the last batch's padding dropped)."""
    out = {k: np.asarray(v) for k, v in collected.items()}
    if given and out:
        n = len(next(iter(given.values())))
        out = {k: v[:n] for k, v in out.items()}
    return out
