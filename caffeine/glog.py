"""Caffe's glog-style logging for pycaffe: ``init_log`` and ``log``.

Messages go to the 'caffeine' logger of Python's logging module.  (The module
is not named ``log``: ``caffeine.log`` is pycaffe's function.)
"""
from __future__ import annotations

import logging
import sys

__all__ = ['init_log', 'log']

# glog's severities: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_logger = logging.getLogger('caffeine')
_handler = None


def init_log(level=0, stderr=False):
    """Caffe's log set-up: messages of glog severity >= ``level`` (0 INFO ... 3 FATAL)
    on the 'caffeine' logger; ``stderr=True`` also prints them to standard error."""
    global _handler
    lvl = _GLOG_LEVELS.get(int(level), logging.CRITICAL if int(level) > 3 else logging.INFO)
    _logger.setLevel(lvl)
    if stderr and _handler is None:
        _handler = logging.StreamHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter('%(levelname).1s%(asctime)s %(message)s', '%m%d %H:%M:%S'))
        _logger.addHandler(_handler)
    elif not stderr and _handler is not None:
        _logger.removeHandler(_handler)
        _handler = None


def log(msg):
    """Log ``msg`` at INFO, as Caffe's LOG(INFO)."""
    _logger.info(msg)
