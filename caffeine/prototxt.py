"""Reading and writing prototxt (Caffe's text format) and binary protos.

Parse errors come out as ``path:line:col: message``.  Nets and solvers are
upgraded from Caffe's older formats on load, as Caffe does.
"""
from __future__ import annotations

import os
import re

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .errors import CaffeineError, LayerError, PrototxtError
from .proto import caffe_pb2
from .upgrade import upgrade_net_param, upgrade_solver_param
from .utils import atomic_write


_PATH_SUFFIXES = ('.prototxt', '.pt', '.txt', '.solver', '.pbtxt')
# a single token with no braces, quotes or field separators: a file name, never prototxt text
_BARE_PATH = re.compile(r'(?:[A-Za-z]:[\\/])?[^\s{}<>:"\'\[\]]+')


def _looks_like_path(s):
    """True when ``s`` names a file rather than holding prototxt text."""
    if isinstance(s, os.PathLike):
        return True
    if not isinstance(s, str) or not s or '\n' in s:
        return False
    return os.path.exists(s) or s.endswith(_PATH_SUFFIXES) or bool(_BARE_PATH.fullmatch(s))


def _line_col(data, pos, newline):
    """1-based line and column of offset ``pos`` in ``data``."""
    line = data.count(newline, 0, pos) + 1
    return line, pos - (data.rfind(newline, 0, pos) + 1) + 1


def _decode(data, source):
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        line, col = _line_col(data, e.start, b'\n')
        raise PrototxtError('%s:%d:%d: not UTF-8 text (byte 0x%02x); a prototxt is a text file '
                            '(binary .caffemodel files are read as weights)' % (source, line, col, data[e.start]))
    return text


def _read_bytes(path, what):
    """The bytes of a file; a missing file or a directory is a one-line error naming ``what`` was expected."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except FileNotFoundError:
        raise CaffeineError('%s: no such file' % os.fspath(path))
    except IsADirectoryError:
        raise CaffeineError('%s: is a directory, not %s' % (os.fspath(path), what))


def read_text(path):
    """The text of a prototxt file (UTF-8, a leading byte-order mark dropped)."""
    return _decode(_read_bytes(path, 'a prototxt file'), os.fspath(path))


def _scan_braces(text):
    """Unclosed ``{``/``<`` positions (offsets), ignoring strings and comments."""
    stack = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '#':
            j = text.find('\n', i)
            i = n if j < 0 else j
        elif c in '"\'':
            j = i + 1
            while j < n and text[j] != c and text[j] != '\n':
                j += 2 if text[j] == '\\' else 1
            i = j
        elif c in '{<':
            stack.append(i)
        elif c in '}>':
            if stack:
                stack.pop()
        i += 1
    return stack


def _only_trivia(text, pos):
    """True when nothing but whitespace and comments follows offset ``pos``."""
    return not re.sub(r'#[^\n]*', '', text[pos:]).strip()


def _offset(lines, line, col):
    return sum(len(text_line) + 1 for text_line in lines[:line - 1]) + (col or 1) - 1


def _parse_error(e, text, source):
    line, col = e.GetLine(), e.GetColumn()
    msg = str(e)
    if line is None:
        return PrototxtError('%s: %s' % (source, msg))
    prefix = '%s:%s : ' % (line, col) if col is not None else '%s : ' % line
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    # protobuf quotes the offending line before the message: drop it
    lines = text.split('\n')
    for quoted in {lines[line - 1] if 0 < line <= len(lines) else None, ''}:
        if quoted is not None and msg.startswith("'%s': " % quoted):
            msg = msg[len(quoted) + 4:]
            break
    if msg.endswith(" but found: ''") and _only_trivia(text, _offset(lines, line, col)):
        msg = msg[:-len(" but found: ''")] + ', but the file ended'
    # at the end of the text protobuf points at the last token; point at the end instead
    if msg in ('Expected "}".', 'Expected ">".') and 0 < line <= len(lines):
        offset = _offset(lines, line, col)
        tail = re.match(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[^\s#]*', text[offset:])
        if _only_trivia(text, offset + len(tail.group(0))):
            open_braces = _scan_braces(text)
            end_line, end_col = _line_col(text, len(text), '\n')
            if open_braces:
                o_line, o_col = _line_col(text, open_braces[0], '\n')
                msg = ('unexpected end of file: the "%s" at line %d, column %d is never closed'
                       % (text[open_braces[0]], o_line, o_col))
            else:
                msg = 'unexpected end of file: %s' % msg
            line, col = end_line, end_col
    if col is None:
        return PrototxtError('%s:%d: %s' % (source, line, msg))
    return PrototxtError('%s:%d:%d: %s' % (source, line, col, msg))


def _unsupported_layers(text, source):
    """For a net that does not parse: one error naming every layer whose type caffeine does
    not support, or None.  A fork's layer brings its own ``*_param`` fields, which would
    otherwise be reported as the first unknown field rather than as the layer it belongs to."""
    lenient = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, lenient, allow_unknown_field=True)
    except text_format.ParseError:
        return None
    from .layer import check_layer_types
    try:
        check_layer_types([lp for lp in lenient.layer if lp.type])   # a skipped `type` is the parse error
    except LayerError as e:
        return LayerError('%s: %s' % (source, e))
    return None


def parse_text(text, message, source='<string>'):
    """Merge prototxt ``text`` into ``message``; errors as ``source:line:col: msg``.

    Parsed as Caffe's C++ reader does: unknown fields, a non-repeated field
    given twice and missing required fields are errors.
    """
    if text.startswith('\ufeff'):
        text = text[1:]
    parsed = type(message)()
    try:
        text_format.Parse(text, parsed, allow_unknown_field=False)
    except text_format.ParseError as e:
        if isinstance(parsed, caffe_pb2.NetParameter):
            unsupported = _unsupported_layers(text, source)
            if unsupported is not None:
                raise unsupported from None
        raise _parse_error(e, text, source) from None
    if not parsed.IsInitialized():
        raise PrototxtError('%s: missing required field(s): %s'
                            % (source, ', '.join(parsed.FindInitializationErrors())))
    message.MergeFrom(parsed)
    return message


def read_message(source, message):
    """``source`` is a path to a prototxt, or prototxt text itself."""
    if isinstance(source, (bytes, bytearray)):
        source = _decode(bytes(source), '<string>')
    if _looks_like_path(source):
        return parse_text(read_text(source), message, os.fspath(source))
    return parse_text(str(source), message, '<string>')


def _read_param(source, message_type, upgrade):
    """A copy of ``source`` (a message of ``message_type``, a path or text), upgraded by ``upgrade(param, name)``."""
    param = message_type()
    if isinstance(source, message_type):
        param.CopyFrom(source)
        name = '<%s>' % message_type.DESCRIPTOR.name
    else:
        read_message(source, param)
        name = os.fspath(source) if _looks_like_path(source) else '<string>'
    if upgrade is not None:
        upgrade(param, name)
    return param


def read_net_param(source, upgrade=True):
    """A caffe_pb2.NetParameter from a path, text or message, upgraded."""
    return _read_param(source, caffe_pb2.NetParameter, upgrade_net_param if upgrade else None)


def read_solver_param(source, upgrade=True):
    """A caffe_pb2.SolverParameter from a path, text or message, upgraded."""
    return _read_param(source, caffe_pb2.SolverParameter, upgrade_solver_param if upgrade else None)


def read_binary(path, message):
    data = _read_bytes(path, 'a binary %s file' % message.DESCRIPTOR.name)
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise CaffeineError('%s: not a valid binary %s (%s)' % (os.fspath(path), message.DESCRIPTOR.name, e))
    if not message.IsInitialized():
        raise CaffeineError('%s: binary %s is missing required field(s): %s'
                            % (os.fspath(path), message.DESCRIPTOR.name, ', '.join(message.FindInitializationErrors())))
    return message


def to_text(message):
    return text_format.MessageToString(message)


def write_text(path, message):
    with atomic_write(path, 'w') as f:
        f.write(text_format.MessageToString(message))
