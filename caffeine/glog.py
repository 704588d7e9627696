"""Caffe's glog-style logging: ``init_log``/``log`` (pycaffe's) and the glog line format.

Messages go to the 'caffeine' logger of Python's logging module.  (The module
is not named ``log``: ``caffeine.log`` is pycaffe's function.)

``GlogFormatter`` writes each line as glog's classic prefix does, so that the
tools written for Caffe's logs (``tools/extra/parse_log.py``, ``parse_log.sh``,
``plot_training_log.py``) read caffeine's::

    I1203 08:04:27.123456 12345 solver.py:452] Iteration 100 (...), loss = 0.2

severity letter (I, W, E, F), month and day, local time with microseconds,
the thread id (right-aligned in 5 columns), the source file and line, ``] ``.
Every line of a multi-line message carries the prefix (glog prefixes only the
first), so that no line of a log breaks a parser that reads a date from each.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time

__all__ = ['init_log', 'log', 'GlogFormatter', 'log_to_stderr']

# glog's severities: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}
_logger = logging.getLogger('caffeine')
_handler = None


def _severity(levelno):
    if levelno >= logging.CRITICAL:
        return 'F'
    if levelno >= logging.ERROR:
        return 'E'
    if levelno >= logging.WARNING:
        return 'W'
    return 'I'      # glog has no DEBUG: its VLOG lines are INFO lines


class GlogFormatter(logging.Formatter):
    """glog's line prefix, ``I1203 08:04:27.123456 12345 file.py:42] ``, on every line of a record.

    ``year=True`` writes the year too (``I20261203 ...``), as glog 0.7 and later do.
    """

    def __init__(self, year=False):
        super().__init__()
        self.year = year

    def format(self, record):
        text = record.getMessage()
        if record.exc_info:
            text += '\n' + self.formatException(record.exc_info)
        t = time.localtime(record.created)
        # handlers run in the logging thread, so its native id is the record's
        prefix = '%s%s%02d%02d %02d:%02d:%02d.%06d %5d %s:%d] ' % (
            _severity(record.levelno), ('%04d' % t.tm_year) if self.year else '', t.tm_mon, t.tm_mday,
            t.tm_hour, t.tm_min, t.tm_sec, int(record.created % 1 * 1e6),
            threading.get_native_id(), os.path.basename(record.pathname), record.lineno)
        return '\n'.join(prefix + line for line in text.split('\n'))


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def log_to_stderr(logger=None, level=logging.INFO):
    """Send ``logger``'s records (the root logger's by default) to standard error in glog's format,
    unless it already has handlers (as ``logging.basicConfig``); returns the handler or None."""
    lg = logger if logger is not None else logging.getLogger()
    if lg.handlers:
        return None
    handler = _StderrHandler()
    handler.setFormatter(GlogFormatter())
    lg.addHandler(handler)
    lg.setLevel(level)
    return handler


def init_log(level=0, stderr=False):
    """Caffe's log set-up: messages of glog severity >= ``level`` (0 INFO ... 3 FATAL)
    on the 'caffeine' logger; ``stderr=True`` also prints them to standard error in glog's format."""
    global _handler
    lvl = _GLOG_LEVELS.get(int(level), logging.CRITICAL if int(level) > 3 else logging.INFO)
    _logger.setLevel(lvl)
    if stderr and _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(GlogFormatter())
        _logger.addHandler(_handler)
    elif not stderr and _handler is not None:
        _logger.removeHandler(_handler)
        _handler = None


def log(msg):
    """Log ``msg`` at INFO, as Caffe's LOG(INFO)."""
    _logger.info(msg, stacklevel=2)
