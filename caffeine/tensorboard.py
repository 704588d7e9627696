"""TensorBoard for a training run: a Solver listener that writes event files.

    from caffeine.tensorboard import TensorBoardListener
    solver.add_listener(TensorBoardListener('runs/lenet'))
    solver.solve()

or ``caffeine train --solver S --tensorboard runs/lenet``; then
``tensorboard --logdir runs``.  Needs tensorboardX (``pip install 'caffeine[tensorboard]'``).

Scalars, with the iteration as step:

* ``train_loss/raw`` (the iteration's loss) and ``train_loss/smoothed`` (averaged over the
  solver's ``average_loss`` iterations, the figure Caffe's log shows), at each display;
* ``train/<output>`` for every output of the train net, at each display;
* ``test/<output>`` for every output of test net #0 (``test<k>/<output>`` for net #k), at each test;
* ``solver/lr`` and ``solver/iters_per_s``, at each display;
* with ``histograms=True``, at each display: ``weight_norm/<layer>/<i>`` and
  ``gradient_norm/<layer>/<i>`` (the L2 norms of parameter blob ``i`` of the layer and of its
  gradient) and a histogram of each parameter blob, ``weights/<layer>/<i>``.

The file is flushed at each display and each test, so a running TensorBoard shows the curves
as they grow.  A run resumed from a snapshot writes into the same folder and continues the
same curves: the writer opens with TensorBoard's purge step set to the iteration training
starts from, so the points an interrupted run wrote past that iteration are dropped and the
resumed run's take their place (a fresh run from iteration 0 in an old folder replaces it).
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
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise CaffeineError("TensorBoard logging needs tensorboardX: pip install 'caffeine[tensorboard]'")
        self._writer_class = SummaryWriter
        self.logdir = os.fspath(logdir)
        self.histograms = bool(histograms)
        self.writer = None

    # -- the writer --------------------------------------------------------------
    def _open(self, start_iter):
        if self.writer is not None:
            return self.writer
        try:
            os.makedirs(self.logdir, exist_ok=True)
        except OSError as e:
            raise CaffeineError('--tensorboard %s: cannot create the folder (%s)' % (self.logdir, e.strerror or e))
        _wait_for_a_later_second(self.logdir)
        # purge_step: TensorBoard drops the points of earlier files at or after start_iter
        self.writer = self._writer_class(self.logdir, purge_step=int(start_iter), flush_secs=30)
        return self.writer

    def close(self):
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the solver's listener hooks ---------------------------------------------
    def on_start(self, solver):
        self._open(solver.iter)

    def on_display(self, solver, info):
        w = self._open(info['iter'])
        step = int(info['iter'])
        w.add_scalar('train_loss/raw', float(info['loss']), step)
        w.add_scalar('train_loss/smoothed', float(info['smoothed_loss']), step)
        for name, value in info.get('outputs', {}).items():
            w.add_scalar('train/' + _tag(name), float(value), step)
        w.add_scalar('solver/lr', float(info['lr']), step)
        if info.get('iters_per_s') is not None:
            w.add_scalar('solver/iters_per_s', float(info['iters_per_s']), step)
        if self.histograms:
            self._write_parameters(solver.net, step)
        w.flush()

    def on_test(self, solver, test_net_id, scores):
        w = self._open(solver.iter)
        group = 'test' if test_net_id == 0 else 'test%d' % test_net_id
        for name, value in scores.items():
            w.add_scalar('%s/%s' % (group, _tag(name)), float(value), int(solver.iter))
        w.flush()

    def on_snapshot(self, solver, model_path, state_path):
        if self.writer is not None:
            self.writer.flush()

    def on_finish(self, solver):
        self.close()

    def _write_parameters(self, net, step):
        w = self.writer
        for lname, blobs in net.params.items():
            for i, blob in enumerate(blobs):
                data = np.asarray(blob.data, dtype=np.float64).ravel()
                grad = np.asarray(blob.diff, dtype=np.float64).ravel()
                tag = '%s/%d' % (_tag(lname), i)
                w.add_scalar('weight_norm/' + tag, float(np.sqrt(data @ data)), step)
                w.add_scalar('gradient_norm/' + tag, float(np.sqrt(grad @ grad)), step)
                w.add_histogram('weights/' + tag, data, step)
