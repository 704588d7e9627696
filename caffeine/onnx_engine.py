"""ONNX Runtime as an inference engine for Caffe models.

``caffeine.Net(model, weights, caffeine.TEST, engine='onnxruntime')`` (or
``OrtNet(net)`` on a built TEST-phase Net) exports the net
(``caffeine.onnx_export``) and runs it with ONNX Runtime behind pycaffe's
surface: ``net.blobs[name].data`` for the inputs and outputs,
``net.forward(**inputs)`` returning ``{output: array}``, ``net.forward_all``.
``compare`` runs one net on both engines and reports the largest difference
per blob.
"""
from __future__ import annotations

import collections
import os

import numpy as np

from .blob import Blob
from .errors import CaffeineError
from .onnx_export import DEFAULT_OPSET, OnnxExportError, export_onnx
from .proto import caffe_pb2

ENGINES = ('caffeine', 'onnxruntime')


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise CaffeineError('the onnxruntime engine needs the onnxruntime package: pip install "caffeine[onnx]"')
    return onnxruntime


def make_session(model, providers=None, threads=None):
    """An ``onnxruntime.InferenceSession`` for a ModelProto (or a path);
    ``threads`` caps its intra-op threads (default: ORT's own choice)."""
    ort = _import_ort()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    data = model if isinstance(model, (str, os.PathLike)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=providers or ['CPUExecutionProvider'])


class OrtNet:
    """A deploy net run by ONNX Runtime, with pycaffe's Net surface for inference.

    ``OrtNet(net)`` takes a caffeine Net built in the TEST phase with its weights
    (``caffeine.Net(model, weights, caffeine.TEST, engine='onnxruntime')`` builds
    both).  keep: intermediate blob names to expose in ``blobs``; dynamic_batch
    (True): the inputs may change their batch size; providers: ORT execution
    providers (default CPU); threads: ORT intra-op threads; opset."""

    def __init__(self, net, keep=(), dynamic_batch=True, providers=None, threads=None, opset=DEFAULT_OPSET):
        if net.phase != caffe_pb2.TEST:
            raise CaffeineError('the onnxruntime engine runs TEST-phase nets (pass caffeine.TEST)')
        try:
            self.model = export_onnx(net, opset=opset, dynamic_batch=dynamic_batch, keep=keep)
        except OnnxExportError as e:
            if dynamic_batch and 'dynamic batch' in str(e):
                raise OnnxExportError('%s (or pass dynamic_batch=False)' % e)
            raise
        self.name = net.name
        self.dynamic_batch = dynamic_batch
        self.inputs = list(net.inputs)
        self.outputs = list(net.outputs)
        self._kept = [k for k in keep if k not in self.outputs]
        names = self.inputs + self.outputs + self._kept
        self.blobs = collections.OrderedDict((n, Blob(*net.blobs[n].shape)) for n in dict.fromkeys(names))
        self._onnx_out = [o.name for o in self.model.graph.output]
        self.session = make_session(self.model, providers, threads)

    def __repr__(self):
        return '<OrtNet %r: inputs %s, outputs %s>' % (self.name, self.inputs, self.outputs)

    def reshape(self):
        """Nothing to do: ONNX Runtime takes the inputs' shapes as they are."""

    def _set_inputs(self, kwargs):
        if set(kwargs) != set(self.inputs):
            raise CaffeineError('input blob arguments %s do not match net inputs %s' % (sorted(kwargs), self.inputs))
        for name, arr in kwargs.items():
            blob = self.blobs[name]
            arr = np.asarray(arr, dtype=np.float32)
            if arr.ndim and arr.shape[0] != blob.shape[0]:
                raise CaffeineError('input %r is not batch sized: %d != %d' % (name, arr.shape[0], blob.shape[0]))
            blob.data[...] = arr

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: inputs from kwargs (or as already in ``blobs``),
        returns {output (and each of ``blobs``): array}."""
        if start is not None or end is not None:
            raise CaffeineError('the onnxruntime engine runs the whole net (no start/end)')
        wanted = list(self.outputs) + [b for b in (blobs or []) if b not in self.outputs]
        for b in wanted:
            if b not in self.blobs:
                raise CaffeineError('blob %r is not kept by the onnxruntime engine; pass keep=[%r] when '
                                    'building the net' % (b, b))
        if kwargs:
            self._set_inputs(kwargs)
        feeds = {n: np.ascontiguousarray(self.blobs[n].data) for n in self.inputs}
        results = self.session.run(self._onnx_out, feeds)
        for name, value in zip(self.outputs + self._kept, results):
            blob = self.blobs[name]
            if tuple(blob.shape) != value.shape:
                blob.reshape(value.shape)
            blob.data[...] = value
        return {b: self.blobs[b].data for b in wanted}

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's Net.forward_all: every item of the inputs, batch by batch
        (the last batch as it is: ORT needs no padding with a dynamic batch)."""
        if not kwargs:
            return {}
        n = {len(a) for a in kwargs.values()}
        if len(n) != 1:
            raise CaffeineError('inputs have different numbers of items: %s' % {k: len(a) for k, a in kwargs.items()})
        n = n.pop()
        size = self.blobs[self.inputs[0]].shape[0] if self.inputs else n
        outs = collections.defaultdict(list)
        for i in range(0, n, size):
            batch = {k: np.asarray(a[i:i + size], np.float32) for k, a in kwargs.items()}
            if len(next(iter(batch.values()))) < size:
                if not self.dynamic_batch:
                    raise CaffeineError('%d items do not fill batches of %d; build with dynamic_batch=True' % (n, size))
                for k, a in batch.items():
                    self.blobs[k].reshape(a.shape)
            for name, arr in self.forward(blobs=blobs, **batch).items():
                outs[name].append(arr.copy())
        for k in kwargs:
            shape = list(self.blobs[k].shape)
            shape[0] = size
            self.blobs[k].reshape(shape)
        return {k: np.concatenate(v) for k, v in outs.items()}


def engine_net(engine, build, **options):
    """``caffeine.Net(..., engine=...)``: ``build()`` (the caffeine Net) run by
    another engine; ``options`` go to that engine."""
    if engine != 'onnxruntime':
        raise CaffeineError('unknown engine %r: choose one of %s' % (engine, ', '.join(ENGINES)))
    return OrtNet(build(), **options)


def compare(net, model, inputs, threads=None):
    """Run caffeine's ``net`` and the ONNX ``model`` exported from it (a
    ModelProto, a path or an InferenceSession) on the same ``inputs`` ({name:
    array}; the batch may differ from the net's when the model has a dynamic
    batch); returns {blob: (largest |difference|, largest |caffeine value|)}
    for every output of the model."""
    for name, arr in inputs.items():
        if tuple(net.blobs[name].shape) != np.shape(arr):
            net.blobs[name].reshape(np.shape(arr))
    net.reshape()
    for name, arr in inputs.items():
        net.blobs[name].data[...] = arr
    net.forward()
    sess = model if hasattr(model, 'run') else make_session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    got = sess.run(names, {k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()})
    report = {}
    for name, value in zip(names, got):
        blob = name[:-4] if name.endswith('_out') and name[:-4] in inputs else name
        ref = np.asarray(net.blobs[blob].data)
        if value.shape != ref.shape:
            raise CaffeineError('blob %r: onnxruntime gives shape %s, caffeine %s'
                                % (blob, list(value.shape), list(ref.shape)))
        diff = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
        report[blob] = (diff, float(np.max(np.abs(ref))) if ref.size else 0.0)
    return report


def seeded_weights(net, seed=0, scale=0.1):
    """Fill every parameter of ``net`` with standard normal values times ``scale``
    from one seeded generator, in the net's order; BatchNorm gets positive
    variances and a scale factor of 1 so that its statistics are valid."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for j, b in enumerate(layer.blobs):
            v = rng.standard_normal(b.shape, dtype=np.float32)
            v *= np.float32(scale)
            if layer.type == 'BatchNorm' and j == 1:
                v = 0.5 + np.abs(v)
            elif layer.type == 'BatchNorm' and j == 2:
                v = np.ones(b.shape, np.float32)
            b.data[...] = v


def random_inputs(net, batch=None, seed=0):
    """{input: standard normal array of its shape (batch ``batch`` if given)}."""
    rng = np.random.RandomState(seed)
    out = {}
    for name in net.inputs:
        shape = list(net.blobs[name].shape)
        if batch is not None and shape:
            shape[0] = batch
        out[name] = rng.randn(*shape).astype(np.float32)
    return out


def time_forward(net, iterations, log):
    """``caffeine time --engine onnxruntime``: whole forward passes of ``net``
    (an OrtNet) on its current inputs; logs and returns the mean in ms."""
    import time
    net.forward()                                  # warm up
    t0 = time.perf_counter()
    for j in range(iterations):
        t = time.perf_counter()
        net.forward()
        log.info('Iteration: %d forward time: %g ms.', j + 1, (time.perf_counter() - t) * 1000)
    mean = (time.perf_counter() - t0) * 1000 / iterations
    log.info('Average Forward pass (onnxruntime): %g ms.', mean)
    return mean
