"""Small shared helpers: atomic file writes, logging."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile

log = logging.getLogger('caffeine')


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Write ``path`` through a temporary file in the same folder, then rename.

    A crash mid-write leaves any earlier file under ``path`` intact and no
    half-written file under that name.
    """
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=d)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would
        # (or the mode of the file it replaces)
        try:
            perm = os.stat(path).st_mode & 0o777
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            perm = 0o666 & ~umask
        os.chmod(tmp, perm)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (file or folder); rename it into place on success."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, '.%s.tmp%d' % (os.path.basename(path), os.getpid()))
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    elif os.path.exists(tmp):
        os.unlink(tmp)
    try:
        yield tmp
        if os.path.isdir(path) and not os.path.islink(path):
            old = tmp + '.old'
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
        raise
