"""pycaffe's process-wide settings: the data-parallel solver count/rank, and Timer.

``solver_count``/``solver_rank``/``set_multiprocess`` are this process's place in
data-parallel training (set by the launcher, or by a script as BVLC's
python/train.py does); pycaffe's ``NCCL`` and ``has_nccl`` live with the
data-parallel code (``caffeine.parallel``).
"""
from __future__ import annotations

import logging
import time

from .errors import CaffeineError

__all__ = ['solver_count', 'solver_rank', 'set_solver_count', 'set_solver_rank',
           'set_multiprocess', 'multiprocess', 'Timer']

_state = {'solver_count': 1, 'solver_rank': 0, 'multiprocess': False}


def _nonneg_int(value, what, minimum):
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise CaffeineError('%s must be an integer, not %r' % (what, value))
    if v != value or v < minimum:
        raise CaffeineError('%s must be an integer >= %d, not %r' % (what, minimum, value))
    return v


def solver_count():
    """How many solvers train together (1 unless set)."""
    return _state['solver_count']


def set_solver_count(count):
    _state['solver_count'] = _nonneg_int(count, 'solver count', 1)


def solver_rank():
    """This process's solver index, 0 for the root solver."""
    return _state['solver_rank']


def set_solver_rank(rank):
    _state['solver_rank'] = _nonneg_int(rank, 'solver rank', 0)


def set_multiprocess(multiprocess):
    """Whether solvers run in separate processes (one per GPU or MPI rank)."""
    _state['multiprocess'] = bool(multiprocess)


def multiprocess():
    return _state['multiprocess']


class Timer:
    """Caffe's wall-clock timer: ``start()``, ``stop()``, ``ms`` (reading ``ms`` stops a running timer)."""

    def __init__(self):
        self._start = None
        self._elapsed = 0.0
        self._running = False
        self._has_run = False

    def start(self):
        if not self._running:
            self._start = time.perf_counter()
            self._running = True
            self._has_run = True

    def stop(self):
        if self._running:
            self._elapsed = time.perf_counter() - self._start
            self._running = False

    @property
    def ms(self):
        """Milliseconds between the last start() and stop()."""
        if not self._has_run:
            logging.getLogger('caffeine').warning('Timer has never been run before reading time.')
            return 0.0
        if self._running:
            self.stop()
        return self._elapsed * 1000.0

    def __repr__(self):
        return '<Timer %s>' % ('running' if self._running else '%.3f ms' % (self._elapsed * 1000.0))
