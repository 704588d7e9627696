"""Caffe's model zoo: a catalogue of pretrained nets and a careful downloader.

Each zoo model is a folder under ``models/`` holding a ``readme.md`` whose
front matter follows Caffe's zoo convention::

    ---
    name: BAIR/BVLC AlexNet Model
    caffemodel: bvlc_alexnet.caffemodel
    caffemodel_url: http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel
    license: unrestricted
    sha1: 9116a64c0fbe4459d18f4bb6b56d647b63920377
    ---

Optional keys: ``gist_id``, ``caffe_commit``, ``caffemodel_size`` (bytes,
only where published).  An empty ``sha1:`` means no checksum is published:
such a download proceeds with a warning.

The catalogue is read from the ``models/`` folder beside the ``caffeine``
package (``Path(caffeine.__file__).parent.parent / 'models'``), or from the
folder(s) named by ``CAFFEINE_MODELS`` (``os.pathsep``-separated).

Weights go to ``<home>/models/<name>/<caffemodel>`` where ``<home>`` is
``$CAFFEINE_HOME`` or ``$XDG_CACHE_HOME/caffeine`` (``~/.cache/caffeine``),
unless a ``dir`` is given; when the model is named by a folder path, the
weights go into that folder.  ``CAFFEINE_ZOO_MIRROR`` (or ``mirror=``) fetches
``<mirror>/<caffemodel file name>`` instead of the published URL.

Downloads resume a partial ``<file>.part`` with an HTTP Range request, retry
connection errors and 5xx answers with exponential backoff, verify the sha1
and only then rename the file to its final name.  Only http and https URLs
are followed, redirects included; proxies come from ``http_proxy`` /
``https_proxy`` / ``no_proxy`` through urllib.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .errors import CaffeineError
from .net import Net
from .proto import caffe_pb2

log = logging.getLogger('caffeine')

__all__ = ['ZooEntry', 'parse_front_matter', 'models_dirs', 'cache_home', 'catalogue', 'info',
           'download', 'load', 'resolve_weights', 'weights_path', 'is_downloaded', 'ZooError']

README = 'readme.md'
ENV_MODELS = 'CAFFEINE_MODELS'
ENV_HOME = 'CAFFEINE_HOME'
ENV_MIRROR = 'CAFFEINE_ZOO_MIRROR'

#: retry policy for transient failures (connection errors, timeouts, 5xx, 408, 429)
RETRIES = 3
BACKOFF = 0.5          # seconds before the first retry; doubles each time
TIMEOUT = 20.0         # seconds one connect or read may wait ($CAFFEINE_DOWNLOAD_TIMEOUT)
MAX_WAIT = 90.0        # seconds in all without receiving a byte before giving up ($CAFFEINE_DOWNLOAD_MAX_WAIT)
ENV_TIMEOUT = 'CAFFEINE_DOWNLOAD_TIMEOUT'
ENV_MAX_WAIT = 'CAFFEINE_DOWNLOAD_MAX_WAIT'
CHUNK = 1 << 20

_REQUIRED = ('name', 'caffemodel', 'caffemodel_url', 'sha1', 'license')
_KEY_RE = re.compile(r'^[A-Za-z_][A-Za-z0-9_.-]*$')
_SAFE_RE = re.compile(r'^[A-Za-z0-9_+][A-Za-z0-9_.+-]*$')
_SHA1_RE = re.compile(r'^[0-9a-f]{40}$')
_USER_AGENT = 'caffeine-zoo (+https://github.com/BVLC/caffe model zoo client)'


class ZooError(CaffeineError):
    """A zoo entry that cannot be read, or weights that cannot be fetched."""


# ---------------------------------------------------------------------------
# front matter
# ---------------------------------------------------------------------------

def _unquote(v):
    if len(v) >= 2 and v[0] == v[-1] and v[0] in '\'"':
        return v[1:-1]
    return v


def parse_front_matter(text, source='<readme>'):
    """Split a zoo readme into (front-matter dict, body).

    The front matter is the block between a first line ``---`` and the next
    ``---`` line: ``key: value`` lines (values may be quoted, may be empty),
    blank lines and ``#`` comments.  Everything after is the body.  A readme
    without such a block gives ``({}, text)``.
    """
    if text.startswith('\ufeff'):
        text = text[1:]
    lines = text.splitlines()
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i >= len(lines) or lines[i].strip() != '---':
        return {}, text
    meta = {}
    start = i
    for j in range(i + 1, len(lines)):
        line = lines[j]
        s = line.strip()
        if s == '---':
            body = '\n'.join(lines[j + 1:]).strip('\n')
            return meta, body + ('\n' if body else '')
        if not s or s.startswith('#'):
            continue
        key, sep, value = s.partition(':')
        key = key.strip()
        if not sep or not _KEY_RE.match(key):
            raise ZooError('%s:%d: front matter line is not "key: value": %r' % (source, j + 1, s))
        if key in meta:
            raise ZooError('%s:%d: front matter key %r given twice' % (source, j + 1, key))
        value = value.strip()
        if value.startswith('#'):
            value = ''
        meta[key] = _unquote(value)
    raise ZooError('%s:%d: front matter opened with --- is never closed' % (source, start + 1))


def _check_component(value, what, source):
    """A single path component: no separators, no '..', not absolute, printable."""
    if (not value or not _SAFE_RE.match(value) or '..' in value
            or os.path.isabs(value) or value != os.path.basename(value)):
        raise ZooError('%s: unsafe %s %r (must be a plain file name: letters, digits, '
                       '"._+-", no path separators or "..")' % (source, what, value))
    return value


def _check_url(url, source, what='caffemodel_url'):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ('http', 'https') or not parts.netloc:
        raise ZooError('%s: %s %r is not an http(s) URL' % (source, what, url))
    return url


def _parse_size(v, source):
    if v in (None, ''):
        return None
    try:
        n = int(str(v).replace('_', ''))
    except ValueError:
        raise ZooError('%s: caffemodel_size %r is not a whole number of bytes' % (source, v))
    if n < 0:
        raise ZooError('%s: caffemodel_size %r is negative' % (source, v))
    return n


@dataclass
class ZooEntry:
    """One zoo model: its folder key, its readme's front matter and body."""
    key: str
    folder: Path
    meta: Dict[str, str]
    body: str = ''
    from_path: bool = field(default=False, repr=False)

    @property
    def name(self):
        return self.meta['name']

    @property
    def caffemodel(self):
        return self.meta['caffemodel']

    @property
    def url(self):
        return self.meta['caffemodel_url']

    @property
    def sha1(self) -> Optional[str]:
        return self.meta.get('sha1') or None

    @property
    def license(self):
        return self.meta['license']

    @property
    def gist_id(self):
        return self.meta.get('gist_id') or None

    @property
    def size(self) -> Optional[int]:
        return _parse_size(self.meta.get('caffemodel_size') or self.meta.get('size'), self.readme)

    @property
    def readme(self):
        return self.folder / README

    @property
    def deploy(self):
        return self.folder / 'deploy.prototxt'

    def default_dir(self):
        """Where the weights go when no ``dir`` is given."""
        if self.from_path:
            return self.folder
        return cache_home() / 'models' / self.key


def read_entry(folder, key=None, from_path=False):
    """Read and validate ``folder/readme.md``."""
    folder = Path(folder)
    readme = folder / README
    key = key if key is not None else folder.resolve().name
    try:
        text = readme.read_text(encoding='utf-8')
    except FileNotFoundError:
        raise ZooError('%s: no %s' % (folder, README))
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError('%s: cannot read (%s)' % (readme, e))
    meta, body = parse_front_matter(text, str(readme))
    if not meta:
        raise ZooError('%s: no front matter (a --- block with name, caffemodel, '
                       'caffemodel_url, sha1, license)' % readme)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ZooError('%s: front matter lacks %s' % (readme, ', '.join(missing)))
    src = str(readme)
    _check_component(meta['caffemodel'], 'caffemodel file name', src)
    _check_url(meta['caffemodel_url'], src)
    sha1 = meta['sha1'].strip().lower()
    if sha1 and not _SHA1_RE.match(sha1):
        raise ZooError('%s: sha1 %r is not 40 hex digits' % (src, meta['sha1']))
    meta['sha1'] = sha1
    _parse_size(meta.get('caffemodel_size') or meta.get('size'), src)
    return ZooEntry(key=key, folder=folder, meta=meta, body=body, from_path=from_path)


# ---------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------

def models_dirs() -> List[Path]:
    """The folders the catalogue is read from."""
    env = os.environ.get(ENV_MODELS)
    if env:
        return [Path(os.path.expanduser(p)) for p in env.split(os.pathsep) if p]
    return [Path(__file__).resolve().parent.parent / 'models']


def cache_home() -> Path:
    """``$CAFFEINE_HOME``, else ``$XDG_CACHE_HOME/caffeine``, else ``~/.cache/caffeine``."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get('XDG_CACHE_HOME')
    base = Path(os.path.expanduser(xdg)) if xdg and os.path.isabs(os.path.expanduser(xdg)) \
        else Path.home() / '.cache'
    return base / 'caffeine'


def _scan():
    entries = {}
    for d in models_dirs():
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if not (sub / README).is_file() or sub.name in entries:
                continue
            if not _SAFE_RE.match(sub.name) or '..' in sub.name:
                log.warning('zoo: skipping %s (unsafe folder name)', sub)
                continue
            entries[sub.name] = sub
    return entries


def _natural_key(s):
    return [(0, int(t), '') if t.isdigit() else (1, 0, t.lower()) for t in re.split(r'(\d+)', s) if t]


def catalogue(strict=False) -> List[ZooEntry]:
    """Every zoo model, sorted by key.  Broken readmes are skipped with a
    warning (or raise, with ``strict=True``)."""
    out = []
    for key, folder in sorted(_scan().items(), key=lambda kv: _natural_key(kv[0])):
        try:
            out.append(read_entry(folder, key))
        except ZooError as e:
            if strict:
                raise
            log.warning('zoo: skipping %s: %s', key, e)
    return out


def _resolve(name_or_folder) -> ZooEntry:
    if isinstance(name_or_folder, ZooEntry):
        return name_or_folder
    spec = os.fspath(name_or_folder)
    if not isinstance(spec, str) or not spec:
        raise ZooError('a zoo model name or a folder with a %s is required' % README)
    folders = _scan()
    if spec in folders:
        return read_entry(folders[spec], spec)
    looks_like_path = (os.sep in spec or (os.altsep and os.altsep in spec)
                       or spec.startswith('.') or os.path.isabs(spec))
    p = Path(os.path.expanduser(spec))
    if (p / README).is_file():
        return read_entry(p, from_path=True)
    if looks_like_path:
        if p.is_dir():
            raise ZooError('%s: folder has no %s' % (spec, README))
        raise ZooError('unknown zoo model %r: not a catalogue name, and no folder %s with a %s'
                       % (spec, spec, README))
    known = ', '.join(sorted(folders)) or 'none; see %s' % ENV_MODELS
    raise ZooError('unknown zoo model %r (known: %s)' % (spec, known))


def info(name_or_folder) -> ZooEntry:
    """The catalogue entry for a model name, or for a folder holding a readme.md."""
    return _resolve(name_or_folder)


def weights_path(name_or_folder, dir=None) -> Path:
    """Where ``download`` puts (or has put) the weights; nothing is fetched."""
    e = _resolve(name_or_folder)
    target = Path(os.path.expanduser(os.fspath(dir))) if dir is not None else e.default_dir()
    dest = target / _check_component(e.caffemodel, 'caffemodel file name', str(e.readme))
    # belt and braces: the final path must sit directly in the target folder
    if os.path.dirname(os.path.abspath(dest)) != os.path.abspath(target):
        raise ZooError('%s: caffemodel %r escapes %s' % (e.readme, e.caffemodel, target))
    return dest


def is_downloaded(name_or_folder, dir=None) -> bool:
    """Whether the weights file exists at its usual place (not verified)."""
    try:
        return weights_path(name_or_folder, dir).is_file()
    except ZooError:
        return False


# ---------------------------------------------------------------------------
# downloading
# ---------------------------------------------------------------------------

class _Transient(Exception):
    """A failure worth retrying."""


class _Restart(Exception):
    """The partial file is unusable: start again from byte 0."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ('http', 'https'):
            raise ZooError('refusing redirect from %s to %s (only http and https are followed)'
                           % (req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener():
    # build_opener adds urllib's ProxyHandler, which honours http_proxy,
    # https_proxy and no_proxy.
    return urllib.request.build_opener(_HttpOnlyRedirects())


def _sha1_file(path):
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK), b''):
            h.update(chunk)
    return h.hexdigest()


def _mirror_url(mirror, caffemodel):
    base = mirror.rstrip('/')
    _check_url(base + '/', 'mirror', 'mirror URL')
    return base + '/' + urllib.parse.quote(caffemodel)


def _progress_bar(enabled, total, initial, desc):
    enabled = bool(enabled) and hasattr(sys.stderr, 'isatty') and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit='B', unit_scale=True, unit_divisor=1024,
                desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)


def _content_range_start(value):
    m = re.match(r'^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$', value or '')
    if not m:
        return None, None
    total = None if m.group(3) == '*' else int(m.group(3))
    return int(m.group(1)), total


def _fetch_once(url, part, progress, timeout, desc, known_size):
    """One HTTP request that appends to ``part``; returns when the body is whole."""
    have = part.stat().st_size if part.exists() else 0
    headers = {'User-Agent': _USER_AGENT, 'Accept-Encoding': 'identity'}
    if have:
        headers['Range'] = 'bytes=%d-' % have
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = _opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        code, reason = e.code, e.reason
        content_range = e.headers.get('Content-Range', '') if e.headers is not None else ''
        e.close()
        if code == 416 and have:
            m = re.match(r'^\s*bytes\s+\*/(\d+)\s*$', content_range)
            if m and int(m.group(1)) == have:
                return  # the partial file is already whole
            raise _Restart('server refused to resume at byte %d' % have)
        if code >= 500 or code in (408, 425, 429):
            raise _Transient('HTTP %d %s' % (code, reason))
        raise ZooError('cannot download %s: HTTP %d %s' % (url, code, reason))
    with resp:
        status = resp.status
        if status not in (200, 206):
            raise ZooError('cannot download %s: unexpected HTTP %d' % (url, status))
        length = resp.headers.get('Content-Length')
        length = int(length) if length and length.isdigit() else None
        mode = 'ab'
        if status == 206:
            start, total = _content_range_start(resp.headers.get('Content-Range'))
            if start != have:
                raise _Restart('server sent bytes from %s, not from %d' % (start, have))
        else:
            if have:
                log.info('zoo: server ignored the Range request; starting %s again', desc)
            mode, have = 'wb', 0
            total = length
        if total is None and length is not None:
            total = have + length
        if total is None:
            total = known_size
        expected_body = length
        bar = _progress_bar(progress, total, have, desc)
        got = 0
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as e:
                        f.flush()
                        raise _Transient('connection lost after %d bytes (%s)' % (have + got, e))
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        finally:
            if bar is not None:
                bar.close()
        if expected_body is not None and got < expected_body:
            raise _Transient('connection closed after %d of %d bytes' % (have + got, have + expected_body))
        if expected_body is None and total is not None and have + got < total:
            raise _Transient('connection closed after %d of %d bytes' % (have + got, total))


def _seconds(value, env, default, what):
    """A time limit: the argument, else the environment variable, else the default."""
    if value is None:
        value = os.environ.get(env) or default
    try:
        value = float(value)
    except ValueError:
        raise ZooError('%s must be a number of seconds, got %r (%s)' % (what, value, env))
    if value <= 0:
        raise ZooError('%s must be positive, got %g (%s)' % (what, value, env))
    return value


def _fetch(url, part, progress, retries, backoff, timeout, desc, known_size, final, max_wait, hint=None):
    """Fetch ``url`` into ``part``, resuming and retrying.  Each connect and read waits at
    most ``timeout`` s; the time spent without receiving a byte (waits, retries and their
    pauses together) is bounded by ``max_wait`` s.  Every wait that ends is logged."""
    host = urllib.parse.urlsplit(url).netloc
    failures = 0
    restarts = 0
    attempts = 0
    idle_since = time.monotonic()       # the last time bytes arrived (or the start)
    while True:
        before = part.stat().st_size if part.exists() else 0
        limit = retries
        left = max_wait - (time.monotonic() - idle_since)
        attempts += 1
        if attempts > 1:
            log.info('zoo: connecting to %s (attempt %d)', host, attempts)
        try:
            _fetch_once(url, part, progress, min(timeout, max(left, 0.1)), desc, known_size)
            return
        except _Restart as e:
            restarts += 1
            log.info('zoo: %s; restarting %s from the beginning', e, desc)
            part.unlink(missing_ok=True)
            if restarts > 2:
                raise ZooError('cannot download %s: %s' % (url, e))
            continue
        except _Transient as e:
            reason = str(e)
        except urllib.error.URLError as e:
            r = e.reason
            if isinstance(r, (socket.timeout, TimeoutError)):
                reason = 'no answer within %g s' % min(timeout, max(left, 0.1))
            else:
                reason = r if isinstance(r, str) else (getattr(r, 'strerror', None) or str(r))
            if isinstance(r, socket.gaierror):
                limit = min(retries, 1)  # no name resolution: most likely offline
        except (socket.timeout, TimeoutError):
            reason = 'no answer within %g s' % min(timeout, max(left, 0.1))
        except (http.client.HTTPException, ConnectionError) as e:
            reason = '%s: %s' % (type(e).__name__, e) if str(e) else type(e).__name__
        except OSError as e:
            if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)) or e.errno == errno.ENOSPC:
                raise ZooError('cannot write %s: %s' % (part, e.strerror or e))
            reason = e.strerror or str(e)
        after = part.stat().st_size if part.exists() else 0
        if after > before:
            failures = 0  # progress was made: a flaky link is not a dead one
            idle_since = time.monotonic()
        failures += 1
        waited = time.monotonic() - idle_since
        delay = backoff * (2 ** (failures - 1))
        if failures > limit or waited + delay >= max_wait:
            bound = ('' if failures > limit else
                     '; gave up after %.1f s without data (limit %g s, %s)' % (waited, max_wait, ENV_MAX_WAIT))
            hint = hint or ('try --mirror URL or %s, or copy the file to %s' % (ENV_MIRROR, final))
            raise ZooError('cannot download %s from %s: %s (after %d attempts%s; offline? %s)'
                           % (desc, host, reason, failures, bound, hint))
        log.info('zoo: %s from %s: %s; retrying in %.3g s (%.1f of %g s without data)',
                 desc, host, reason, delay, waited, max_wait)
        time.sleep(delay)


def fetch_url(url, dest, desc=None, size=None, progress=False, retries=None, backoff=None, timeout=None,
              max_wait=None, hint=None):
    """Download ``url`` to ``dest`` through ``<dest>.part`` (resumed if present), renamed
    when whole.  ``timeout``: seconds one connect or read may wait; ``max_wait``: seconds
    in all without data before giving up (defaults: TIMEOUT, MAX_WAIT, or the
    CAFFEINE_DOWNLOAD_TIMEOUT / CAFFEINE_DOWNLOAD_MAX_WAIT variables).  ``hint`` ends the
    error when giving up (default: the zoo's --mirror advice).  Returns the whole ``.part``
    file; the caller verifies it and renames it."""
    dest = Path(dest)
    retries = RETRIES if retries is None else int(retries)
    backoff = BACKOFF if backoff is None else float(backoff)
    timeout = _seconds(timeout, ENV_TIMEOUT, TIMEOUT, 'the download timeout')
    max_wait = _seconds(max_wait, ENV_MAX_WAIT, MAX_WAIT, 'the download wait limit')
    part = dest.with_name(dest.name + '.part')
    _fetch(url, part, progress, retries, backoff, timeout, desc or dest.name, size, dest, max_wait, hint)
    return part


def download(name_or_folder, dir=None, mirror=None, progress=True, *, force=False,
             retries=None, backoff=None, timeout=None, max_wait=None) -> Path:
    """Fetch a zoo model's caffemodel; return its local path.

    ``name_or_folder``: a catalogue name (``bvlc_alexnet``) or a folder with a
    zoo ``readme.md`` (the weights then go into that folder).  ``dir``: put the
    weights there instead.  ``mirror``: a base URL (default
    ``$CAFFEINE_ZOO_MIRROR``) that serves ``<mirror>/<caffemodel>``.  An
    existing file whose sha1 matches is not fetched again (``force=True``
    fetches anyway).
    """
    e = _resolve(name_or_folder)
    dest = weights_path(e, dir)
    sha1 = e.sha1
    if dest.is_file() and not force:
        if sha1 is None:
            return dest
        actual = _sha1_file(dest)
        if actual == sha1:
            return dest
        log.warning('zoo: %s has sha1 %s, expected %s; removing it and downloading again',
                    dest, actual, sha1)
        dest.unlink()
    mirror = mirror if mirror is not None else os.environ.get(ENV_MIRROR) or None
    url = _mirror_url(mirror, e.caffemodel) if mirror else e.url
    _check_url(url, str(e.readme))
    if sha1 is None:
        log.warning('zoo: %s publishes no sha1 for %s; the download cannot be verified',
                    e.key, e.caffemodel)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ZooError('cannot create %s: %s' % (dest.parent, err.strerror or err))
    part = dest.with_name(dest.name + '.part')
    if force:
        part.unlink(missing_ok=True)
    log.info('zoo: downloading %s from %s', e.caffemodel, url)
    fetch_url(url, dest, e.caffemodel, e.size, progress, retries, backoff, timeout, max_wait)
    if sha1 is not None:
        actual = _sha1_file(part)
        if actual != sha1:
            part.unlink(missing_ok=True)
            raise ZooError('sha1 mismatch for %s from %s: expected %s, got %s (download removed)'
                           % (e.caffemodel, url, sha1, actual))
    elif e.size is not None and part.stat().st_size != e.size:
        got = part.stat().st_size
        part.unlink(missing_ok=True)
        raise ZooError('size mismatch for %s from %s: expected %d bytes, got %d (download removed)'
                       % (e.caffemodel, url, e.size, got))
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------
# using the weights
# ---------------------------------------------------------------------------

def load(name_or_folder, phase=None, **download_kwargs):
    """``caffeine.Net(<folder>/deploy.prototxt, phase, weights=<downloaded caffemodel>)``."""
    e = _resolve(name_or_folder)
    if not e.deploy.is_file():
        raise ZooError('%s has no deploy.prototxt' % e.folder)
    weights = download(e, **download_kwargs)
    if phase is None:
        phase = caffe_pb2.TEST
    return Net(str(e.deploy), phase, weights=str(weights))


def resolve_weights(spec, **download_kwargs):
    """``zoo:NAME`` (or ``zoo:path/to/folder``) -> local caffemodel path, downloading
    if needed; anything else is returned as it is.  Lists are resolved item by item."""
    if isinstance(spec, (list, tuple)):
        return type(spec)(resolve_weights(s, **download_kwargs) for s in spec)
    if isinstance(spec, str) and spec.startswith('zoo:'):
        name = spec[4:].strip()
        if not name:
            raise ZooError('%r: a model name is required after "zoo:"' % spec)
        return str(download(name, **download_kwargs))
    return spec
