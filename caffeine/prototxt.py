"""Reading and writing prototxt (Caffe's text format) and binary protos.

Parse errors come out as ``path:line:col: message``.  Nets and solvers are
upgraded from Caffe's older formats on load, as Caffe does.
"""
from __future__ import annotations

import os

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .errors import PrototxtError, CaffeineError
from .proto import caffe_pb2


def _looks_like_path(s):
    return isinstance(s, (str, os.PathLike)) and ('\n' not in str(s)) and (
        os.path.exists(s) or str(s).endswith(('.prototxt', '.pt', '.txt', '.solver')))


def read_text(path):
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        raise CaffeineError('%s: no such file' % path)
    except IsADirectoryError:
        raise CaffeineError('%s: is a directory, not a prototxt file' % path)
    except UnicodeDecodeError as e:
        raise PrototxtError('%s: not a text file (%s)' % (path, e.reason))


def parse_text(text, message, source='<string>'):
    """Merge prototxt ``text`` into ``message``; errors as ``source:line:col: msg``."""
    try:
        text_format.Merge(text, message, allow_unknown_field=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        msg = str(e)
        # protobuf prefixes "line:col : " to the message; keep only the text
        if line is not None and msg.startswith('%s:%s' % (line, col)):
            msg = msg.split(' : ', 1)[-1] if ' : ' in msg else msg.split(':', 2)[-1].strip()
        if line is None:
            raise PrototxtError('%s: %s' % (source, msg))
        raise PrototxtError('%s:%d:%d: %s' % (source, line, col, msg))
    return message


def read_message(source, message):
    """``source`` is a path to a prototxt, or prototxt text itself."""
    if isinstance(source, (bytes, bytearray)):
        source = source.decode('utf-8')
    if _looks_like_path(source):
        return parse_text(read_text(source), message, str(source))
    return parse_text(str(source), message, '<string>')


def read_net_param(source, upgrade=True):
    """A caffe_pb2.NetParameter from a path, text or message, upgraded."""
    if isinstance(source, caffe_pb2.NetParameter):
        param = caffe_pb2.NetParameter()
        param.CopyFrom(source)
        name = '<NetParameter>'
    else:
        param = read_message(source, caffe_pb2.NetParameter())
        name = str(source) if _looks_like_path(source) else '<string>'
    if upgrade:
        from .upgrade import upgrade_net_param
        upgrade_net_param(param, name)
    return param


def read_solver_param(source, upgrade=True):
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        name = '<SolverParameter>'
    else:
        param = read_message(source, caffe_pb2.SolverParameter())
        name = str(source) if _looks_like_path(source) else '<string>'
    if upgrade:
        from .upgrade import upgrade_solver_param
        upgrade_solver_param(param, name)
    return param


def read_binary(path, message):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise CaffeineError('%s: no such file' % path)
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise CaffeineError('%s: not a valid binary %s (%s)' % (path, message.DESCRIPTOR.name, e))
    return message


def to_text(message):
    return text_format.MessageToString(message)


def write_text(path, message):
    from .utils import atomic_write
    with atomic_write(path, 'w') as f:
        f.write(text_format.MessageToString(message))
