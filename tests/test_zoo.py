"""The model zoo: catalogue, front matter, downloader (against a local HTTP server), CLI."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import caffeine
from caffeine import zoo
from caffeine.errors import CaffeineError
from caffeine.net import Net
from caffeine.proto import caffe_pb2
from caffeine.testing import run_cli as _cli

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / 'shared'

EXPECTED_FOLDERS = ['bvlc_alexnet', 'bvlc_reference_caffenet', 'bvlc_googlenet',
                    'bvlc_reference_rcnn_ilsvrc13', 'finetune_flickr_style', 'vgg16', 'vgg19',
                    'resnet50', 'resnet101', 'resnet152', 'squeezenet1.0', 'squeezenet1.1',
                    'face_detector_res10', 'mobilenet_ssd']


# ---------------------------------------------------------------------------
# a small, controllable HTTP server
# ---------------------------------------------------------------------------

class Behaviour:
    def __init__(self):
        self.files = {}            # path -> bytes
        self.redirects = {}        # path -> Location
        self.requests = []         # (path, headers dict)
        self.support_range = True
        self.cut_after = None      # bytes of body sent before the connection is cut ...
        self.cuts = 0              # ... for this many responses
        self.fail_500 = 0          # answer 500 this many times first
        self.always_503 = False
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour = None

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        b = self.behaviour
        path = urllib.parse.urlsplit(self.path).path  # absolute URL when used as a proxy
        with b.lock:
            b.requests.append((path, dict(self.headers.items())))
            if b.always_503:
                return self._error(503)
            if b.fail_500 > 0:
                b.fail_500 -= 1
                return self._error(500)
            cut = None
            if b.cuts > 0 and b.cut_after is not None:
                b.cuts -= 1
                cut = b.cut_after
        if path in b.redirects:
            self.send_response(302)
            self.send_header('Location', b.redirects[path])
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        data = b.files.get(path)
        if data is None:
            return self._error(404)
        rng = self.headers.get('Range')
        start = 0
        if rng and b.support_range:
            m = re.match(r'bytes=(\d+)-$', rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', 'bytes */%d' % len(data))
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', 'bytes %d-%d/%d' % (start, len(data) - 1, len(data)))
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Content-Type', 'application/octet-stream')
        self.end_headers()
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)

    def _error(self, code):
        self.send_response(code)
        self.send_header('Content-Length', '0')
        self.end_headers()


@pytest.fixture
def server():
    b = Behaviour()
    handler = type('H', (_Handler,), {'behaviour': b})
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    t.start()
    b.base = 'http://127.0.0.1:%d' % httpd.server_address[1]
    try:
        yield b
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def zoo_env(tmp_path, monkeypatch):
    """Private models dir and cache; no proxy for 127.0.0.1; tiny backoff."""
    models = tmp_path / 'models'
    models.mkdir()
    home = tmp_path / 'home'
    monkeypatch.setenv('CAFFEINE_MODELS', str(models))
    monkeypatch.setenv('CAFFEINE_HOME', str(home))
    monkeypatch.delenv('CAFFEINE_ZOO_MIRROR', raising=False)
    for k in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('no_proxy', '127.0.0.1,localhost')
    monkeypatch.setattr(zoo, 'BACKOFF', 0.001)
    monkeypatch.setattr(zoo, 'RETRIES', 3)
    monkeypatch.setattr(zoo, 'TIMEOUT', 5.0)
    monkeypatch.setattr(zoo, 'CHUNK', 4096)
    return models, home


def blob(n=50_000, seed=0):
    """A caffemodel-like blob: a serialized NetParameter padded with bytes."""
    p = caffe_pb2.NetParameter(name='zoo-test-%d' % seed)
    head = p.SerializeToString()
    rnd = bytes((i * 131 + seed * 7 + (i >> 8)) % 256 for i in range(n))
    return head + rnd


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def write_readme(folder, caffemodel='tiny.caffemodel', url='http://127.0.0.1:9/tiny.caffemodel',
                 sha='', license='unrestricted', extra='', name='Tiny test model'):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'readme.md').write_text(
        '---\nname: %s\ncaffemodel: %s\ncaffemodel_url: %s\nlicense: %s\nsha1: %s\n%s---\n\n'
        'A tiny model for the tests.\n' % (name, caffemodel, url, license, sha, extra))
    return folder


def add_model(models, server, key='tiny', data=None, caffemodel='tiny.caffemodel', sha=None,
              url=None, extra=''):
    data = blob() if data is None else data
    server.files['/files/' + caffemodel] = data
    write_readme(models / key, caffemodel=caffemodel,
                 url=url or server.base + '/files/' + caffemodel,
                 sha=sha1(data) if sha is None else sha, extra=extra)
    return data


# ---------------------------------------------------------------------------
# front matter and catalogue
# ---------------------------------------------------------------------------

def test_front_matter_parsing():
    text = ('---\nname: "A: model"\ncaffemodel: a.caffemodel\n# a comment\n\n'
            "caffemodel_url: http://x.org/a.caffemodel?x=1\nsha1:\nlicense: 'BSD'\n---\n\nBody text.\n")
    meta, body = zoo.parse_front_matter(text)
    assert meta == {'name': 'A: model', 'caffemodel': 'a.caffemodel',
                    'caffemodel_url': 'http://x.org/a.caffemodel?x=1', 'sha1': '', 'license': 'BSD'}
    assert body == 'Body text.\n'
    assert zoo.parse_front_matter('no front matter\n') == ({}, 'no front matter\n')
    with pytest.raises(CaffeineError, match='never closed'):
        zoo.parse_front_matter('---\nname: x\n')
    with pytest.raises(CaffeineError, match='key: value'):
        zoo.parse_front_matter('---\njust words\n---\n')
    with pytest.raises(CaffeineError, match='twice'):
        zoo.parse_front_matter('---\na: 1\na: 2\n---\n')


def test_repo_catalogue(monkeypatch):
    monkeypatch.delenv('CAFFEINE_MODELS')
    assert zoo.models_dirs() == [REPO / 'models']
    entries = {e.key: e for e in zoo.catalogue(strict=True)}
    for key in EXPECTED_FOLDERS:
        assert key in entries, key
        e = entries[key]
        assert e.url.startswith(('http://', 'https://'))
        assert e.caffemodel.endswith('.caffemodel')
        assert e.license and e.name
        # every entry here has a published sha1; an unpublished one must say so in the body
        if e.sha1 is None:
            assert 'sha1' in e.body.lower()
        else:
            assert re.fullmatch(r'[0-9a-f]{40}', e.sha1)
        assert '## License' in e.body and '## Citation' in e.body
    ref = SHARED / 'caffe-reference' / 'zoo_bvlc.json'
    if ref.exists():
        bvlc = json.loads(ref.read_text())
        for key, want in bvlc.items():
            e = entries[key]
            for k in ('name', 'caffemodel', 'caffemodel_url', 'sha1', 'license'):
                assert e.meta[k] == want[k], (key, k)


def test_catalogue_skips_broken_readmes(zoo_env, caplog):
    models, _ = zoo_env
    write_readme(models / 'good')
    (models / 'nofm').mkdir()
    (models / 'nofm' / 'readme.md').write_text('just text\n')
    write_readme(models / 'evil', caffemodel='../../x.caffemodel')
    (models / 'noreadme').mkdir()
    with caplog.at_level(logging.WARNING, logger='caffeine'):
        keys = [e.key for e in zoo.catalogue()]
    assert keys == ['good']
    assert 'evil' in caplog.text and 'nofm' in caplog.text
    with pytest.raises(CaffeineError):
        zoo.catalogue(strict=True)


def test_info_and_unknown(zoo_env):
    models, _ = zoo_env
    write_readme(models / 'tiny', extra='caffemodel_size: 1234\ngist_id: abc\n')
    e = zoo.info('tiny')
    assert (e.key, e.caffemodel, e.size, e.gist_id, e.sha1) == ('tiny', 'tiny.caffemodel', 1234, 'abc', None)
    with pytest.raises(CaffeineError, match="unknown zoo model 'nope'"):
        zoo.info('nope')


def test_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv('CAFFEINE_HOME', str(tmp_path / 'h'))
    assert zoo.cache_home() == tmp_path / 'h'
    monkeypatch.delenv('CAFFEINE_HOME')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert zoo.cache_home() == tmp_path / 'xdg' / 'caffeine'
    monkeypatch.delenv('XDG_CACHE_HOME')
    assert zoo.cache_home() == Path.home() / '.cache' / 'caffeine'


# ---------------------------------------------------------------------------
# downloads
# ---------------------------------------------------------------------------

def test_good_download(zoo_env, server):
    models, home = zoo_env
    data = add_model(models, server)
    p = zoo.download('tiny', progress=False)
    assert p == home / 'models' / 'tiny' / 'tiny.caffemodel'
    assert p.read_bytes() == data
    assert not p.with_name('tiny.caffemodel.part').exists()
    assert len(server.requests) == 1 and 'Range' not in server.requests[0][1]
    # a verified file is not fetched again
    assert zoo.download('tiny', progress=False) == p
    assert len(server.requests) == 1
    assert zoo.is_downloaded('tiny')


def test_resume_after_cut_connection(zoo_env, server):
    models, _ = zoo_env
    data = add_model(models, server)
    server.cut_after, server.cuts = 20_000, 1
    p = zoo.download('tiny', progress=False)
    assert p.read_bytes() == data
    assert len(server.requests) == 2
    assert 'Range' not in server.requests[0][1]
    assert server.requests[1][1]['Range'] == 'bytes=20000-'


def test_resume_partial_file_from_earlier_run(zoo_env, server):
    models, home = zoo_env
    data = add_model(models, server)
    part = home / 'models' / 'tiny' / 'tiny.caffemodel.part'
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:12345])
    p = zoo.download('tiny', progress=False)
    assert p.read_bytes() == data and not part.exists()
    assert [h.get('Range') for _, h in server.requests] == ['bytes=12345-']


def test_partial_file_already_whole(zoo_env, server):
    models, home = zoo_env
    data = add_model(models, server)
    part = home / 'models' / 'tiny' / 'tiny.caffemodel.part'
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    p = zoo.download('tiny', progress=False)      # server answers 416 bytes */len
    assert p.read_bytes() == data


def test_server_ignoring_range_restarts(zoo_env, server):
    models, home = zoo_env
    data = add_model(models, server)
    server.support_range = False
    part = home / 'models' / 'tiny' / 'tiny.caffemodel.part'
    part.parent.mkdir(parents=True)
    part.write_bytes(b'\xff' * 999)               # wrong bytes: must not be kept
    p = zoo.download('tiny', progress=False)
    assert p.read_bytes() == data
    assert server.requests[0][1]['Range'] == 'bytes=999-'


def test_checksum_mismatch(zoo_env, server):
    models, home = zoo_env
    add_model(models, server, sha='0' * 40)
    with pytest.raises(CaffeineError) as ei:
        zoo.download('tiny', progress=False)
    msg = str(ei.value)
    assert 'sha1 mismatch' in msg and '\n' not in msg
    folder = home / 'models' / 'tiny'
    assert not (folder / 'tiny.caffemodel').exists()
    assert not (folder / 'tiny.caffemodel.part').exists()


def test_existing_file_with_wrong_sha1_is_replaced(zoo_env, server):
    models, home = zoo_env
    data = add_model(models, server)
    dest = home / 'models' / 'tiny' / 'tiny.caffemodel'
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b'stale')
    assert zoo.download('tiny', progress=False).read_bytes() == data
    # a stale file whose fresh download does not verify either leaves nothing behind
    dest.write_bytes(b'stale')
    server.files['/files/tiny.caffemodel'] = b'corrupt'
    with pytest.raises(CaffeineError, match='sha1 mismatch'):
        zoo.download('tiny', progress=False)
    assert not dest.exists() and not dest.with_name('tiny.caffemodel.part').exists()


def test_500_then_success(zoo_env, server):
    models, _ = zoo_env
    data = add_model(models, server)
    server.fail_500 = 2
    assert zoo.download('tiny', progress=False).read_bytes() == data
    assert len(server.requests) == 3


def test_503_always_gives_up(zoo_env, server):
    models, home = zoo_env
    add_model(models, server)
    server.always_503 = True
    with pytest.raises(CaffeineError) as ei:
        zoo.download('tiny', progress=False, retries=2)
    msg = str(ei.value)
    assert '503' in msg and 'cannot download' in msg and '\n' not in msg
    assert len(server.requests) == 3
    assert not (home / 'models' / 'tiny' / 'tiny.caffemodel').exists()


def test_404_is_not_retried(zoo_env, server):
    models, _ = zoo_env
    add_model(models, server, url=server.base + '/missing.caffemodel')
    with pytest.raises(CaffeineError, match='404'):
        zoo.download('tiny', progress=False)
    assert len(server.requests) == 1


def _free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_is_one_clear_line(zoo_env):
    models, home = zoo_env
    write_readme(models / 'tiny', url='http://127.0.0.1:%d/tiny.caffemodel' % _free_port(), sha='1' * 40)
    with pytest.raises(CaffeineError) as ei:
        zoo.download('tiny', progress=False, retries=1)
    msg = str(ei.value)
    assert 'cannot download tiny.caffemodel' in msg and 'offline' in msg and '\n' not in msg
    assert not (home / 'models' / 'tiny' / 'tiny.caffemodel').exists()


def test_mirror_argument_and_env(zoo_env, server, monkeypatch):
    models, home = zoo_env
    data = blob(seed=3)
    server.files['/mirror/tiny.caffemodel'] = data
    write_readme(models / 'tiny', url='http://127.0.0.1:%d/gone.caffemodel' % _free_port(), sha=sha1(data))
    p = zoo.download('tiny', mirror=server.base + '/mirror/', progress=False)
    assert p.read_bytes() == data
    assert server.requests[-1][0] == '/mirror/tiny.caffemodel'
    p.unlink()
    monkeypatch.setenv('CAFFEINE_ZOO_MIRROR', server.base + '/mirror')
    assert zoo.download('tiny', progress=False).read_bytes() == data
    with pytest.raises(CaffeineError, match='http'):
        zoo.download('tiny', mirror='ftp://example.org/pub', progress=False, force=True)


def test_folder_as_name_and_dir(zoo_env, server, tmp_path):
    _, home = zoo_env
    data = blob(seed=5)
    server.files['/f/own.caffemodel'] = data
    folder = write_readme(tmp_path / 'elsewhere' / 'mymodel', caffemodel='own.caffemodel',
                          url=server.base + '/f/own.caffemodel', sha=sha1(data))
    p = zoo.download(str(folder), progress=False)
    assert p == folder / 'own.caffemodel' and p.read_bytes() == data
    q = zoo.download(str(folder), dir=tmp_path / 'chosen', progress=False)
    assert q == tmp_path / 'chosen' / 'own.caffemodel' and q.read_bytes() == data
    assert not (home / 'models').exists()


def test_name_validation(zoo_env, server, tmp_path):
    models, home = zoo_env
    for bad in ('../evil', '/abs/evil', 'a/b', ''):
        with pytest.raises(CaffeineError):
            zoo.download(bad, progress=False)
    for bad in ('../../x.caffemodel', '/tmp/x.caffemodel', 'sub/x.caffemodel', '..', '.hidden'):
        folder = write_readme(tmp_path / 'bad', caffemodel=bad, url=server.base + '/files/x')
        with pytest.raises(CaffeineError, match='unsafe'):
            zoo.info(str(folder))
        with pytest.raises(CaffeineError, match='unsafe'):
            zoo.download(str(folder), progress=False)
    assert server.requests == []
    assert not (tmp_path / 'x.caffemodel').exists()
    # a catalogue folder with an unsafe name is not listed
    (models / '..evil').mkdir()
    write_readme(models / '..evil')
    assert '..evil' not in [e.key for e in zoo.catalogue()]


def test_only_http_urls(zoo_env, server, tmp_path):
    models, _ = zoo_env
    write_readme(models / 'ftp', url='ftp://example.org/tiny.caffemodel')
    with pytest.raises(CaffeineError, match='not an http'):
        zoo.info('ftp')
    secret = tmp_path / 'secret.caffemodel'
    secret.write_bytes(b'secret')
    server.redirects['/files/tiny.caffemodel'] = secret.as_uri()
    write_readme(models / 'redir', url=server.base + '/files/tiny.caffemodel')
    with pytest.raises(CaffeineError):
        zoo.download('redir', progress=False)
    assert not (zoo.cache_home() / 'models' / 'redir' / 'tiny.caffemodel').exists()
    server.redirects['/ftp.caffemodel'] = 'ftp://example.org/tiny.caffemodel'
    write_readme(models / 'toftp', url=server.base + '/ftp.caffemodel')
    with pytest.raises(CaffeineError, match='refusing redirect'):
        zoo.download('toftp', progress=False)
    # an http -> http redirect is followed
    data = blob(seed=9)
    server.files['/real.caffemodel'] = data
    server.redirects['/moved.caffemodel'] = server.base + '/real.caffemodel'
    write_readme(models / 'moved', url=server.base + '/moved.caffemodel', sha=sha1(data))
    assert zoo.download('moved', progress=False).read_bytes() == data


def test_no_sha1_warns_but_downloads(zoo_env, server, caplog):
    models, _ = zoo_env
    data = add_model(models, server, sha='')
    with caplog.at_level(logging.WARNING, logger='caffeine'):
        p = zoo.download('tiny', progress=False)
    assert p.read_bytes() == data
    assert 'no sha1' in caplog.text


def test_size_checked_when_no_sha1(zoo_env, server):
    models, home = zoo_env
    add_model(models, server, sha='', extra='caffemodel_size: 7\n')
    with pytest.raises(CaffeineError, match='size mismatch'):
        zoo.download('tiny', progress=False)
    assert not (home / 'models' / 'tiny' / 'tiny.caffemodel').exists()


def test_http_proxy_is_honoured(zoo_env, server, monkeypatch):
    models, _ = zoo_env
    data = blob(seed=11)
    server.files['/p/tiny.caffemodel'] = data
    write_readme(models / 'tiny', url='http://zoo.example.invalid/p/tiny.caffemodel', sha=sha1(data))
    monkeypatch.setenv('http_proxy', server.base)
    monkeypatch.setenv('no_proxy', '')
    assert zoo.download('tiny', progress=False).read_bytes() == data
    assert server.requests[0][1].get('Host') == 'zoo.example.invalid'


class _TTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal(zoo_env, server, monkeypatch):
    models, _ = zoo_env
    data = add_model(models, server)
    fake = _TTY()
    monkeypatch.setattr(sys, 'stderr', fake)
    assert zoo.download('tiny', progress=True).read_bytes() == data
    out = fake.getvalue()
    assert 'tiny.caffemodel' in out and '100%' in out


def test_resolve_weights(zoo_env, server):
    models, home = zoo_env
    data = add_model(models, server)
    p = zoo.resolve_weights('zoo:tiny', progress=False)
    assert p == str(home / 'models' / 'tiny' / 'tiny.caffemodel') and Path(p).read_bytes() == data
    assert zoo.resolve_weights('some/file.caffemodel') == 'some/file.caffemodel'
    assert zoo.resolve_weights(None) is None
    with pytest.raises(CaffeineError):
        zoo.resolve_weights('zoo:')


# ---------------------------------------------------------------------------
# load() and fine-tuning from zoo weights
# ---------------------------------------------------------------------------

INPUT_NET = ('name: "tiny" layer { name: "data" type: "Input" top: "data" '
             'input_param { shape { dim: 2 dim: 3 } } }\n')


def test_load_returns_net(zoo_env, server):
    models, _ = zoo_env
    data = caffe_pb2.NetParameter(name='tiny').SerializeToString()
    add_model(models, server, data=data)
    (models / 'tiny' / 'deploy.prototxt').write_text(INPUT_NET)
    net = zoo.load('tiny', progress=False)
    assert net.blobs['data'].data.shape == (2, 3)
    write_readme(models / 'nodeploy')
    with pytest.raises(CaffeineError, match='deploy.prototxt'):
        zoo.load('nodeploy')


FT_DEPLOY = INPUT_NET + '''
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 4 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 2 } }
'''
FT_NEW = INPUT_NET + '''
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1" inner_product_param { num_output: 4 } }
layer { name: "ip2_style" type: "InnerProduct" bottom: "ip1" top: "ip2_style"
        inner_product_param { num_output: 5 weight_filler { type: "constant" value: 0.5 } } }
'''


def _caffemodel_bytes(rng):
    p = caffe_pb2.NetParameter(name='tiny')
    arrays = {}
    for name, shape in (('ip1', [(4, 3), (4,)]), ('ip2', [(2, 4), (2,)])):
        layer = p.layer.add(name=name, type='InnerProduct')
        arrays[name] = []
        for s in shape:
            a = rng.standard_normal(s).astype(np.float32)
            b = layer.blobs.add()
            b.shape.dim.extend(s)
            b.data.extend(a.ravel().tolist())
            arrays[name].append(a)
    return p.SerializeToString(), arrays


def test_finetune_from_zoo_weights(zoo_env, server):
    """Weights fetched from the zoo initialise a net; a renamed layer learns from scratch."""
    models, _ = zoo_env
    data, arrays = _caffemodel_bytes(np.random.default_rng(0))
    add_model(models, server, data=data)
    (models / 'tiny' / 'deploy.prototxt').write_text(FT_DEPLOY)
    net = zoo.load('tiny', progress=False)
    for name in ('ip1', 'ip2'):
        for j, a in enumerate(arrays[name]):
            np.testing.assert_array_equal(net.params[name][j].data, a)
    ft = Net(FT_NEW, caffeine.TRAIN, weights=zoo.resolve_weights('zoo:tiny', progress=False))
    np.testing.assert_array_equal(ft.params['ip1'][0].data, arrays['ip1'][0])
    assert np.all(ft.params['ip2_style'][0].data == 0.5)


def test_weights_io_takes_local_paths_and_the_cli_resolves_zoo_names(zoo_env, server, tmp_path, capsys, caplog):
    """``zoo:NAME`` is resolved once, by the command line; Net.copy_from reads files only."""
    models, _ = zoo_env
    data, arrays = _caffemodel_bytes(np.random.default_rng(1))
    add_model(models, server, data=data)
    deploy = tmp_path / 'deploy.prototxt'
    deploy.write_text(FT_DEPLOY)
    net = Net(str(deploy), caffeine.TEST)
    with pytest.raises(CaffeineError, match='zoo:tiny: no such weights file'):
        net.copy_from('zoo:tiny')
    with caplog.at_level(logging.INFO, logger='caffeine'):
        code, _, err = _cli(['test', '--model', str(deploy), '--weights', 'zoo:tiny', '--iterations', '1'], capsys)
    assert code == 0, err
    # ip2 = W2 (W1 x + b1) + b2 with x = 0 (the Input blob is zeros)
    expect = arrays['ip2'][0] @ arrays['ip1'][1] + arrays['ip2'][1]
    got = [float(m) for m in re.findall(r'Batch 0, ip2 = (\S+)', caplog.text)]
    np.testing.assert_allclose(got, np.tile(expect, 2), rtol=1e-5)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------



def test_cli_list_info_download(zoo_env, server, capsys):
    models, home = zoo_env
    data = add_model(models, server)
    write_readme(models / 'other', caffemodel='other.caffemodel', license='non-commercial',
                 extra='caffemodel_size: 5001403\n')
    code, out, _ = _cli(['zoo', 'list'], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ['NAME', 'SIZE', 'LICENSE', 'DOWNLOADED']
    assert re.match(r'other\s+4\.8 MiB\s+non-commercial\s+no$', lines[1])
    assert re.match(r'tiny\s+\?\s+unrestricted\s+no$', lines[2])

    code, out, _ = _cli(['zoo', 'info', 'tiny'], capsys)
    assert code == 0
    assert 'tiny.caffemodel' in out and sha1(data) in out and 'not downloaded' in out
    assert 'A tiny model for the tests.' in out

    code, out, _ = _cli(['zoo', 'download', 'tiny', '--no-progress'], capsys)
    assert code == 0
    p = Path(out.strip())
    assert p == home / 'models' / 'tiny' / 'tiny.caffemodel' and p.read_bytes() == data
    code, out, _ = _cli(['zoo', 'list'], capsys)
    assert re.search(r'^tiny\s+\?\s+unrestricted\s+yes$', out, re.M)


def test_cli_download_dir_mirror_and_errors(zoo_env, server, tmp_path, capsys):
    models, _ = zoo_env
    data = blob(seed=21)
    server.files['/m/tiny.caffemodel'] = data
    write_readme(models / 'tiny', url='http://127.0.0.1:%d/x' % _free_port(), sha=sha1(data))
    code, out, _ = _cli(['zoo', 'download', 'tiny', '--dir', str(tmp_path / 'd'),
                         '--mirror', server.base + '/m'], capsys)
    assert code == 0 and Path(out.strip()) == tmp_path / 'd' / 'tiny.caffemodel'
    code, out, err = _cli(['zoo', 'download', '../evil'], capsys)
    assert code == 1 and err.startswith('caffeine: error:') and len(err.strip().splitlines()) == 1
    code, out, err = _cli(['zoo', 'info', 'nope'], capsys)
    assert code == 1 and 'unknown zoo model' in err


def test_cli_subprocess_lists_repo_catalogue():
    import subprocess
    env = dict(os.environ)
    env.pop('CAFFEINE_MODELS', None)
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'zoo', 'list'], cwd=str(REPO), env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    names = [ln.split()[0] for ln in r.stdout.splitlines()[1:]]
    assert set(EXPECTED_FOLDERS) <= set(names)
