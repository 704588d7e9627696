"""Reading prototxt: the BVLC corpus parses (and upgrades), malformed text gives
``path:line:col: message`` errors, and the command line shows them as one line."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caffeine.errors import CaffeineError, PrototxtError
from caffeine.proto import caffe_pb2
from caffeine.prototxt import (parse_text, read_binary, read_message, read_net_param, read_solver_param,
                               read_text, to_text, write_text)
from caffeine.upgrade import apply_net_upgrades, apply_solver_upgrades


def _shared():
    env = os.environ.get('CAFFEINE_SHARED')
    root = Path(env) if env else Path(__file__).resolve().parents[2] / 'shared'
    return root if (root / 'caffe-reference').is_dir() else None


SHARED = _shared()
CORPUS = SHARED / 'caffe-reference' / 'prototxt' if SHARED else None
FILES = sorted(CORPUS.rglob('*.prototxt')) if CORPUS and CORPUS.is_dir() else []
NET_FILES = [f for f in FILES if 'solver' not in f.name]
SOLVER_FILES = [f for f in FILES if 'solver' in f.name]


def _ids(files):
    return [str(f.relative_to(CORPUS)) for f in files]


def _or_skip(files):
    return files or [pytest.param(None, marks=pytest.mark.skip(reason='../shared prototxt corpus absent'))]


# ---------------------------------------------------------------------------
# the BVLC corpus
# ---------------------------------------------------------------------------
@pytest.mark.skipif(not FILES, reason='../shared prototxt corpus absent')
def test_corpus_is_there():
    assert len(NET_FILES) >= 25 and len(SOLVER_FILES) >= 20
    assert any(f.name == 'lenet_train_test.prototxt' for f in NET_FILES)


@pytest.mark.parametrize('path', _or_skip(NET_FILES), ids=_ids(NET_FILES) or None)
def test_corpus_net_parses_and_upgrades(path):
    text = read_text(path)
    p = parse_text(text, caffe_pb2.NetParameter(), str(path))
    assert len(p.layer) + len(p.layers) > 0
    apply_net_upgrades(p, str(path))
    assert len(p.layers) == 0 and len(p.input) == 0 and len(p.input_dim) == 0
    assert len(p.layer) > 0 and all(l.type for l in p.layer)
    names = [l.name for l in p.layer]
    assert all(names)
    # the upgraded text reads back as the same message
    again = parse_text(to_text(p), caffe_pb2.NetParameter())
    assert again == p
    # read_net_param does the same
    assert read_net_param(str(path)) == p


@pytest.mark.parametrize('path', _or_skip(SOLVER_FILES), ids=_ids(SOLVER_FILES) or None)
def test_corpus_solver_parses(path):
    s = read_message(str(path), caffe_pb2.SolverParameter())
    assert s.HasField('base_lr') and s.base_lr > 0
    assert s.HasField('net') or s.HasField('net_param') or s.HasField('train_net')
    apply_solver_upgrades(s, str(path))
    assert not s.HasField('solver_type')
    assert s.type in ('SGD', 'Nesterov', 'AdaGrad', 'RMSProp', 'AdaDelta', 'Adam')
    assert read_solver_param(str(path)) == s


@pytest.mark.skipif(not FILES, reason='../shared prototxt corpus absent')
def test_corpus_specific_values():
    lenet = read_net_param(str(CORPUS / 'examples' / 'mnist' / 'lenet_train_test.prototxt'))
    assert lenet.name == 'LeNet'
    assert [l.name for l in lenet.layer][:3] == ['mnist', 'mnist', 'conv1']
    conv1 = lenet.layer[2]
    assert conv1.type == 'Convolution' and conv1.convolution_param.num_output == 20
    assert list(conv1.convolution_param.kernel_size) == [5]
    assert [p.lr_mult for p in conv1.param] == [1.0, 2.0]
    s = read_solver_param(str(CORPUS / 'examples' / 'mnist' / 'lenet_solver_adam.prototxt'))
    assert s.type == 'Adam' and s.net == 'examples/mnist/lenet_train_test.prototxt'
    # a solver with a whole V1 net inline
    c = read_solver_param(str(CORPUS / 'examples' / 'mnist' / 'lenet_consolidated_solver.prototxt'))
    assert len(c.net_param.layers) == 0
    assert [l.type for l in c.net_param.layer] == ['Data', 'Data', 'Data', 'Convolution', 'Pooling', 'Convolution',
                                                   'Pooling', 'InnerProduct', 'ReLU', 'InnerProduct', 'Accuracy',
                                                   'SoftmaxWithLoss']
    conv1 = c.net_param.layer[3]
    assert conv1.name == 'conv1' and [p.lr_mult for p in conv1.param] == [1.0, 2.0]
    assert conv1.convolution_param.weight_filler.type == 'xavier'
    assert [list(l.include[0].stage) for l in c.net_param.layer[1:3]] == [['test-on-test-set'],
                                                                           ['test-on-train-set']]


# ---------------------------------------------------------------------------
# malformed text: path:line:col: message
# ---------------------------------------------------------------------------
MALFORMED = [
    ('name: "x"\nlayer {\n  nme: "a"\n}\n', 3, 3, 'Message type "caffe.LayerParameter" has no field named "nme".'),
    ('layer {\n  name: a\n}\n', 2, 9, "Expected string but found: 'a'"),
    ('name: "x"\nname: "y"\n', 2, 7, 'Message type "caffe.NetParameter" should not have multiple "name" fields.'),
    ('layer {\n  convolution_param { num_output: -1 }\n}\n', 2, 35, 'Value out of range: -1'),
    ('layer { param { lr_mult: 1e } }', 1, 26, "Couldn't parse float: 1e"),
    ('state { phase: TRAINX }', 1, 16, 'Enum type "caffe.Phase" has no value named TRAINX.'),
    ('layer }', 1, 7, 'Expected "{".'),
    ('layer {\n  type: "X" }\n}\n', 3, 1, 'Expected identifier or number, got }.'),
    ('force_backward: yes', 1, 17, 'Expected "true" or "false".'),
    ('name: "unterminated\n', 1, 7, "String missing ending quote: '\"unterminated'"),
    # an unclosed brace: the end of the file, and where the brace was opened
    ('layer {\n  name: "a"\n', 3, 1, 'unexpected end of file: the "{" at line 1, column 7 is never closed'),
    ('layer {\n  name: "a" # a { in a comment\n  bottom: "}"\n  param { lr_mult: 1 }\n# end\n', 6, 1,
     'unexpected end of file: the "{" at line 1, column 7 is never closed'),
    ('name:', 1, 6, 'Expected string, but the file ended'),
]


@pytest.mark.parametrize('text,line,col,message', MALFORMED)
def test_malformed_text_errors(text, line, col, message):
    with pytest.raises(PrototxtError) as e:
        parse_text(text, caffe_pb2.NetParameter(), 'nets/bad.prototxt')
    assert str(e.value) == 'nets/bad.prototxt:%d:%d: %s' % (line, col, message)


def test_malformed_file_errors_name_the_path(tmp_path):
    f = tmp_path / 'bad.prototxt'
    f.write_text('name: "n"\n\nlayer {\n  name: "c"\n  type: "Convolution"\n  convolution_param { nm_output: 3 }\n}\n')
    with pytest.raises(PrototxtError) as e:
        read_net_param(str(f))
    assert str(e.value) == ('%s:6:23: Message type "caffe.ConvolutionParameter" has no field named "nm_output".'
                            % f)
    with pytest.raises(PrototxtError) as e:
        read_message(f, caffe_pb2.NetParameter())          # a Path works as well
    assert str(e.value).startswith('%s:6:23: ' % f)


def test_solver_errors(tmp_path):
    f = tmp_path / 'solver.prototxt'
    f.write_text('base_lr: 0.01\nlr_policy: step\n')
    with pytest.raises(PrototxtError) as e:
        read_solver_param(str(f))
    assert str(e.value) == "%s:2:12: Expected string but found: 'step'" % f


def test_not_utf8_reports_where(tmp_path):
    f = tmp_path / 'latin1.prototxt'
    f.write_bytes(b'name: "ok"\nlayer { name: "caf\xe9" }\n')
    with pytest.raises(PrototxtError) as e:
        read_net_param(str(f))
    assert str(e.value).startswith('%s:2:19: not UTF-8 text (byte 0xe9)' % f)


def test_missing_required_field_is_an_error():
    with pytest.raises(PrototxtError) as e:
        parse_text('layer { name: "c" type: "Clip" clip_param { min: 0 } }', caffe_pb2.NetParameter(), 'clip.pt')
    assert str(e.value) == 'clip.pt: missing required field(s): layer[0].clip_param.max'


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CaffeineError) as e:
        read_net_param(str(tmp_path / 'nope.prototxt'))
    assert str(e.value) == '%s: no such file' % (tmp_path / 'nope.prototxt')
    with pytest.raises(CaffeineError) as e:
        read_net_param('missing_model')                        # a bare name is a file name, not text
    assert str(e.value) == 'missing_model: no such file'
    with pytest.raises(CaffeineError) as e:
        read_text(tmp_path)
    assert 'is a directory' in str(e.value)


def test_valid_text_forms_caffe_accepts():
    p = parse_text('''# comment
    name: 'single quotes'   # trailing comment
    layer: { name: "a" type: "ReLU" bottom: "x" top: "y"; }
    layer < name: "b" type: "Power" power_param { power: 2.0f scale: 1e-1 shift: -.5 } >
    input_dim: [1, 2]
    state { phase: 1 }
    ''', caffe_pb2.NetParameter())
    assert p.name == 'single quotes'
    assert [l.name for l in p.layer] == ['a', 'b']
    pp = p.layer[1].power_param
    assert (pp.power, pp.shift) == (2.0, -0.5) and pp.scale == pytest.approx(0.1)
    assert list(p.input_dim) == [1, 2] and p.state.phase == caffe_pb2.TEST


def test_byte_order_mark_is_ignored(tmp_path):
    f = tmp_path / 'bom.prototxt'
    f.write_bytes('\ufeffname: "bom"\nlayer {\n  nme: 1\n}\n'.encode('utf-8'))
    with pytest.raises(PrototxtError) as e:
        read_net_param(str(f))
    assert str(e.value).startswith('%s:3:3: ' % f)
    f.write_bytes('\ufeffname: "bom"\n'.encode('utf-8'))
    assert read_net_param(str(f)).name == 'bom'


def test_parse_text_merges_into_a_filled_message():
    m = caffe_pb2.NetParameter(name='kept')
    parse_text('layer { name: "a" }', m)
    assert m.name == 'kept' and m.layer[0].name == 'a'


def test_text_bytes_and_messages_as_sources():
    assert read_net_param(b'name: "bytes"').name == 'bytes'
    msg = caffe_pb2.NetParameter(name='m')
    msg.layers.add(name='r', type=caffe_pb2.V1LayerParameter.RELU)
    got = read_net_param(msg)
    assert got.layer[0].type == 'ReLU' and len(msg.layers) == 1        # the caller's message is not changed
    with pytest.raises(PrototxtError) as e:
        read_net_param(b'name: "\xff"')
    assert str(e.value).startswith('<string>:1:8: not UTF-8 text')


def test_write_text_round_trip(tmp_path):
    p = parse_text('name: "n" layer { name: "a" type: "ReLU" bottom: "x" top: "y" }', caffe_pb2.NetParameter())
    out = tmp_path / 'sub' / 'n.prototxt'
    write_text(out, p)
    assert out.read_text() == to_text(p)
    assert read_net_param(str(out)) == p
    assert os.listdir(out.parent) == ['n.prototxt']


def test_read_binary_errors(tmp_path):
    f = tmp_path / 'garbage.caffemodel'
    f.write_bytes(b'\xff\xff\xff\xff')
    with pytest.raises(CaffeineError) as e:
        read_binary(f, caffe_pb2.NetParameter())
    assert str(e.value).startswith('%s: not a valid binary NetParameter' % f)
    good = tmp_path / 'good.caffemodel'
    good.write_bytes(caffe_pb2.NetParameter(name='bin').SerializeToString())
    assert read_binary(good, caffe_pb2.NetParameter()).name == 'bin'


# ---------------------------------------------------------------------------
# the command line: one line on stderr, status 1; --debug shows the traceback
# ---------------------------------------------------------------------------
def _caffeine(args, cwd):
    env = dict(os.environ)
    env.pop('CAFFEINE_DEBUG', None)
    return subprocess.run([sys.executable, '-m', 'caffeine'] + args, cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_malformed_prototxt_is_one_line_exit_1(tmp_path):
    (tmp_path / 'bad.prototxt').write_text('name: "x"\nlayers {\n  name: "a"\n  type: RELU\n  bogus_field: 3\n}\n')
    r = _caffeine(['upgrade', 'net', 'bad.prototxt', 'out'], tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        'caffeine: error: bad.prototxt:5:3: Message type "caffe.V1LayerParameter" has no field named "bogus_field".']
    assert 'Traceback' not in r.stderr and r.stdout == ''
    assert sorted(os.listdir(tmp_path)) == ['bad.prototxt']

    r = _caffeine(['--debug', 'upgrade', 'net', 'bad.prototxt', 'out'], tmp_path)
    assert r.returncode == 1
    assert 'Traceback (most recent call last)' in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == (
        'caffeine.errors.PrototxtError: bad.prototxt:5:3: Message type "caffe.V1LayerParameter" has no field '
        'named "bogus_field".')
    assert sorted(os.listdir(tmp_path)) == ['bad.prototxt']


def test_cli_missing_file_is_one_line(tmp_path):
    r = _caffeine(['upgrade', 'solver', 'nope.prototxt', 'out.prototxt'], tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == ['caffeine: error: nope.prototxt: no such file']
