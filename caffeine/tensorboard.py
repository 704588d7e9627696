"""TensorBoard for a training run: a Solver listener that writes event files.

    from caffeine.tensorboard import TensorBoardListener
    solver.add_listener(TensorBoardListener('runs/lenet'))
    solver.solve()

or ``caffeine train --solver S --tensorboard runs/lenet``; then
``tensorboard --logdir runs``.  Written with TensorBoard's own event-file writer
(``pip install 'caffeine[tensorboard]'``).

Scalars, with the iteration as step:

* ``train_loss/raw`` (the iteration's loss) and ``train_loss/smoothed`` (averaged over the
  solver's ``average_loss`` iterations, the figure Caffe's log shows), at each display;
* ``train/<output>`` for every output of the train net, at each display;
* ``test/<output>`` for every output of test net #0 (``test<k>/<output>`` for net #k), at each test;
* ``solver/lr`` and ``solver/iters_per_s``, at each display;
* with ``histograms=True``, at each display iteration: ``weight_norm/<layer>/<i>`` and
  ``gradient_norm/<layer>/<i>`` (the L2 norms of parameter blob ``i`` of the layer and of its
  gradient, as they are when the gradients are ready and the update has not run: pycaffe's
  ``on_gradients_ready``) and a histogram of each parameter blob, ``weights/<layer>/<i>``.

Each display and each test is on disk before training goes on, so a running TensorBoard
shows the curves as they grow.  A run resumed from a snapshot writes into the same folder and
continues the same curves: its file starts with TensorBoard's restart marker (a SessionLog
START event) at the iteration training starts from, so the points an interrupted run wrote
from that iteration on are dropped and the resumed run's take their place (a fresh run from
iteration 0 in an old folder replaces it).
"""
from __future__ import annotations

import glob
import os
import re
import time

import numpy as np

from .errors import CaffeineError

__all__ = ['TensorBoardListener']

_EVENT_FILE_TIME = re.compile(r'events\.out\.tfevents\.(\d{10})')


def _histogram(summary_pb2, values, bins=30):
    """TensorBoard's HistogramProto of ``values``: bucket i counts (limit[i-1], limit[i]]."""
    counts, edges = np.histogram(values, bins=bins)
    return summary_pb2.HistogramProto(min=float(values.min()), max=float(values.max()), num=float(values.size),
                                      sum=float(values.sum()), sum_squares=float(values @ values),
                                      bucket_limit=[float(e) for e in edges[1:]],
                                      bucket=[float(c) for c in counts])


def _tag(name):
    """A TensorBoard tag from a blob or layer name (no spaces)."""
    return re.sub(r'\s+', '_', str(name))


def _wait_for_a_later_second(logdir):
    """TensorBoard reads the event files of a folder in the order of their names, which begin
    with the second they were made in: a file made in the same second as an existing one
    could be read before it.  Start this run's file in a later second."""
    stamps = [int(m.group(1)) for m in (_EVENT_FILE_TIME.search(os.path.basename(p))
                                        for p in glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))) if m]
    if stamps:
        while int(time.time()) <= max(stamps):
            time.sleep(0.05)


class TensorBoardListener:
    """Writes a solver's training curves as TensorBoard event files in ``logdir``.

    logdir: the folder (created if needed).  histograms (False): also the norms of every
    parameter blob and of its gradient, and a histogram of each, at each display.
    Add it with ``solver.add_listener(listener)``; ``close()`` (or the solver's ``on_finish``)
    flushes and closes the file.
    """

    def __init__(self, logdir, histograms=False):
        try:   # the optional extra 'tensorboard' (imported here: it takes a while)
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise CaffeineError("TensorBoard logging needs the tensorboard package: "
                                "pip install 'caffeine[tensorboard]'")
        self._pb = event_pb2, summary_pb2
        self._writer_class = EventFileWriter
        self.logdir = os.fspath(logdir)
        self.histograms = bool(histograms)
        self.writer = None
        self._hooked = []          # solvers whose gradients this listener reads

    # -- the writer --------------------------------------------------------------
    def _open(self, start_iter):
        if self.writer is not None:
            return self.writer
        try:
            os.makedirs(self.logdir, exist_ok=True)
        except OSError as e:
            raise CaffeineError('cannot create the TensorBoard folder %s (%s)' % (self.logdir, e.strerror or e))
        _wait_for_a_later_second(self.logdir)
        self.writer = self._writer_class(self.logdir, flush_secs=30)
        # TensorBoard drops the points of earlier files at or after a START marker's step
        event_pb2 = self._pb[0]
        self._write(int(start_iter), session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
        self.writer.flush()
        return self.writer

    def _write(self, step, scalars=(), histograms=(), **event_fields):
        """One event at ``step``: scalars [(tag, value)], histograms [(tag, values)]."""
        event_pb2, summary_pb2 = self._pb
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars]
        values += [summary_pb2.Summary.Value(tag=tag, histo=_histogram(summary_pb2, v)) for tag, v in histograms]
        if values:
            event_fields['summary'] = summary_pb2.Summary(value=values)
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), **event_fields))

    def close(self):
        if self.writer is not None:
            self.writer.close()       # flushes
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the solver's listener hooks ---------------------------------------------
    def on_start(self, solver):
        self._open(solver.iter)
        if self.histograms and not any(h is solver for h in self._hooked):
            solver.add_callback(None, lambda: self._write_parameters(solver))
            self._hooked.append(solver)

    def on_display(self, solver, info):
        w = self._open(info['iter'])
        scalars = [('train_loss/raw', info['loss']), ('train_loss/smoothed', info['smoothed_loss'])]
        scalars += [('train/' + _tag(name), value) for name, value in info.get('outputs', {}).items()]
        scalars.append(('solver/lr', info['lr']))
        if info.get('iters_per_s') is not None:
            scalars.append(('solver/iters_per_s', info['iters_per_s']))
        self._write(info['iter'], scalars)
        w.flush()

    def on_test(self, solver, test_net_id, scores):
        w = self._open(solver.iter)
        group = 'test' if test_net_id == 0 else 'test%d' % test_net_id
        self._write(solver.iter, [('%s/%s' % (group, _tag(name)), value) for name, value in scores.items()])
        w.flush()

    def on_snapshot(self, solver, model_path, state_path):
        if self.writer is not None:
            self.writer.flush()

    def on_finish(self, solver):
        self.close()

    def _write_parameters(self, solver):
        """At a display iteration, between backward and the update: parameter and gradient norms,
        parameter histograms."""
        display = solver.param.display
        if self.writer is None or not display or solver.iter % display:
            return
        scalars, histograms = [], []
        for lname, blobs in solver.net.params.items():
            for i, blob in enumerate(blobs):
                data = np.asarray(blob.data, dtype=np.float64).ravel()
                grad = np.asarray(blob.diff, dtype=np.float64).ravel()
                tag = '%s/%d' % (_tag(lname), i)
                scalars += [('weight_norm/' + tag, np.sqrt(data @ data)),
                            ('gradient_norm/' + tag, np.sqrt(grad @ grad))]
                if data.size:
                    histograms.append(('weights/' + tag, data))
        self._write(solver.iter, scalars, histograms)
