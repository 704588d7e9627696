"""Small shared helpers: atomic file writes, logging."""
from __future__ import annotations

import contextlib
import logging
import os
import re
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
    # '.<name>.<pid>.<random>.tmp': remove_stale_temps() knows whose it is
    fd, tmp = tempfile.mkstemp(prefix='.%s.%d.' % (os.path.basename(path), os.getpid()), suffix='.tmp', dir=d)
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
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if e.filename not in (None, tmp) or not e.strerror:
            raise
        # a write error (a full disk): name the file being written, not its temporary
        raise OSError(e.errno, e.strerror, path) from e
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


def pid_alive(pid):
    """True if process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder, stem):
    """Remove what killed writers left in ``folder``: the temporary files and folders of
    atomic_write (``.<name>.<pid>.<random>.tmp``) and atomic_path (``.<name>.tmp<pid>``,
    ``...old``) whose ``<name>`` starts with ``stem`` and whose process is gone.

    Returns the paths removed.  A temp of a live process (another writer) is kept.
    """
    folder = folder or '.'
    pat = re.compile(r'^\.(?P<name>.+?)(?:\.(?P<pid1>\d+)\.[^.]+\.tmp|\.tmp(?P<pid2>\d+)(?:\.old)?)$')
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for n in sorted(names):
        m = pat.match(n)
        if not m or not m.group('name').startswith(stem):
            continue
        pid = int(m.group('pid1') or m.group('pid2'))
        if pid == os.getpid() or pid_alive(pid):
            continue
        full = os.path.join(folder, n)
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        except OSError:
            continue
        log.info('Removed %s, left by an interrupted write (process %d is gone)', full, pid)
        removed.append(full)
    return removed
