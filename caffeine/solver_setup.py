"""From a solver.prototxt to the parameter and the nets a Solver trains (plain functions).

Caffe's ``ReadSolverParamsFromTextFileOrDie``, ``Solver::InitTrainNet`` and
``Solver::InitTestNets``, with their rules and one-line errors:

- ``load_solver_param(source)``: a checked-out SolverParameter (path, text or
  message), upgraded, with Caffe's default ``snapshot_prefix``.
- ``check_solver_param(param, source)``: the fields every solver type needs.
- ``train_net_spec(param, source)``: the train net's NetParameter and NetState
  (exactly one of train_net_param, train_net, net_param, net).
- ``eval_net_specs(param, source)``: one ``(what, NetParameter, NetState)`` per
  test net (test_net_param, then test_net, then net_param/net for the
  remaining ``test_iter``), with ``test_state`` merged in.
- ``build_net``, ``build_test_nets``: the Nets themselves; test nets share
  the train net's weights.
- ``check_snapshot_writable(param, source)``: fail before training, not after.

Only the ``build_*`` functions construct a Net; the rest are testable on
messages alone.
"""
from __future__ import annotations

import logging
import os

from .errors import CaffeineError, SolverError
from .net import Net
from .proto import caffe_pb2
from .prototxt import _looks_like_path, read_net_param, read_solver_param
from .upgrade import upgrade_net_param

log = logging.getLogger('caffeine')

LR_POLICIES = ('fixed', 'step', 'exp', 'inv', 'multistep', 'poly', 'sigmoid')
REGULARIZATION_TYPES = ('L2', 'L1')
TRAIN_NET_FIELDS = ('train_net_param', 'train_net', 'net_param', 'net')
_LEGACY_TYPES = {caffe_pb2.SolverParameter.SGD: 'SGD', caffe_pb2.SolverParameter.NESTEROV: 'Nesterov',
                 caffe_pb2.SolverParameter.ADAGRAD: 'AdaGrad', caffe_pb2.SolverParameter.RMSPROP: 'RMSProp',
                 caffe_pb2.SolverParameter.ADADELTA: 'AdaDelta', caffe_pb2.SolverParameter.ADAM: 'Adam'}


def field_error(source, field, msg):
    """The one-line error for a bad field of a solver file: ``<source>: <field>: <msg>``."""
    return SolverError('%s: %s: %s' % (source, field, msg))


# -- reading and checking the parameter ---------------------------------------------------
def upgrade_legacy_type(param, source):
    """The deprecated ``solver_type`` enum as ``type`` (in case upgrade.py left it)."""
    if param.HasField('solver_type'):
        if param.HasField('type'):
            raise SolverError('%s: the old solver_type field (enum) and the new type field (string) '
                              'cannot both be given; keep type' % source)
        param.type = _LEGACY_TYPES[param.solver_type]
        param.ClearField('solver_type')


def load_solver_param(source):
    """A SolverParameter from a path, prototxt text or message, upgraded as Caffe does.

    Returns ``(param, source_name)``.  Like Caffe's ReadSolverParamsFromTextFile,
    a file with no ``snapshot_prefix`` snapshots beside itself (the file name
    without extension), and a prefix that is a folder gets the file's stem.
    """
    if isinstance(source, caffe_pb2.SolverParameter):
        name = '<SolverParameter>'
        is_file = False
    else:
        is_file = _looks_like_path(source)
        name = os.fspath(source) if is_file else '<string>'
        if is_file and not os.path.exists(source):
            raise SolverError('%s: no such solver file' % name)
    param = read_solver_param(source)
    upgrade_legacy_type(param, name)
    if is_file:
        if not param.HasField('snapshot_prefix'):
            param.snapshot_prefix = os.path.splitext(name)[0]
            log.info('snapshot_prefix was not specified and is set to %s', param.snapshot_prefix)
        elif os.path.isdir(param.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(name))[0]
            param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
            log.info('snapshot_prefix is a directory and is set to %s', param.snapshot_prefix)
    return param, name


def check_solver_param(p, source):
    """Raise SolverError naming the first field no solver can run with."""
    if p.lr_policy not in LR_POLICIES:
        raise field_error(source, 'lr_policy', 'unknown learning rate policy %r (known: %s)'
                          % (p.lr_policy, ', '.join(LR_POLICIES)) if p.lr_policy else
                          'no learning rate policy given (one of %s)' % ', '.join(LR_POLICIES))
    if p.lr_policy == 'step' and p.stepsize <= 0:
        raise field_error(source, 'stepsize', 'lr_policy "step" needs stepsize > 0, got %d' % p.stepsize)
    if p.lr_policy == 'poly' and p.max_iter <= 0:
        raise field_error(source, 'max_iter', 'lr_policy "poly" needs max_iter > 0')
    if p.regularization_type not in REGULARIZATION_TYPES:
        raise field_error(source, 'regularization_type',
                          'unknown regularization type %r (L1 or L2)' % p.regularization_type)
    if p.base_lr < 0:
        raise field_error(source, 'base_lr', 'must be >= 0, got %g (a negative rate climbs the loss)' % p.base_lr)
    for name, least in (('max_iter', 0), ('average_loss', 1), ('iter_size', 1), ('display', 0), ('snapshot', 0)):
        value = getattr(p, name)
        if value < least:
            raise field_error(source, name, ('must be at least 1, got %d' if least else 'must be >= 0, got %d')
                              % value)


def check_snapshot_writable(p, source):
    """Fail now, not after hours of training, when snapshots cannot be written (Caffe's check)."""
    if not p.snapshot:
        return
    d = os.path.dirname(os.path.abspath(p.snapshot_prefix + '_iter_0'))
    while not os.path.isdir(d):
        parent = os.path.dirname(d)
        if parent == d or (os.path.exists(d) and not os.path.isdir(d)):
            break
        d = parent
    if not (os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)):
        raise field_error(source, 'snapshot_prefix', 'cannot write snapshots to %r: make sure its folder is '
                          'writable' % p.snapshot_prefix)


# -- the net definitions -------------------------------------------------------------------
def read_net_file(source, field, path):
    """A NetParameter from the net file a solver field names (relative to the current directory)."""
    if not os.path.isfile(path):
        raise field_error(source, field, 'net file %r not found (solver paths are relative to the current '
                          'directory, %s, as in Caffe)' % (path, os.getcwd()))
    try:
        return read_net_param(path)
    except SolverError:
        raise
    except CaffeineError as e:
        raise field_error(source, field, str(e))


def _inline_net(source, field, message):
    """A copy of an inline net_param/train_net_param/test_net_param, upgraded."""
    net_param = caffe_pb2.NetParameter()
    net_param.CopyFrom(message)
    upgrade_net_param(net_param, '%s %s' % (source, field))
    return net_param


def _net_state(phase, net_param, solver_state=None):
    """Caffe's state rule: the phase, then the net's own state, then the solver's *_state."""
    state = caffe_pb2.NetState()
    state.phase = phase
    state.MergeFrom(net_param.state)
    if solver_state is not None:
        state.MergeFrom(solver_state)
    return state


def train_net_spec(p, source):
    """``(NetParameter, NetState)`` of the train net: exactly one of train_net_param, train_net, net_param, net."""
    fields = [f for f in TRAIN_NET_FIELDS if p.HasField(f)]
    if not fields:
        raise SolverError('%s: no train net: give one of %s' % (source, ', '.join(TRAIN_NET_FIELDS)))
    if len(fields) > 1:
        raise SolverError('%s: more than one train net given (%s): give only one of %s'
                          % (source, ', '.join(fields), ', '.join(TRAIN_NET_FIELDS)))
    field = fields[0]
    if field.endswith('_param'):
        log.info('Creating training net specified in %s.', field)
        net_param = _inline_net(source, field, getattr(p, field))
    else:
        log.info('Creating training net from %s file: %s', field, getattr(p, field))
        net_param = read_net_file(source, field, getattr(p, field))
    return net_param, _net_state(caffe_pb2.TRAIN, net_param, p.train_state)


def _count_test_nets(p, source):
    """``(specific, generic)``: test nets given as test_net(_param), and those net/net_param stands in for."""
    has_generic = p.HasField('net_param') or p.HasField('net')
    n_specific = len(p.test_net_param) + len(p.test_net)
    n_iter = len(p.test_iter)
    if n_iter != n_specific and not (has_generic and n_iter > n_specific):
        if n_specific == 0 and not has_generic:
            raise field_error(source, 'test_iter', 'given, but there is no test net (no net/net_param to test, '
                              'no test_net/test_net_param)')
        raise field_error(source, 'test_iter', 'given %d time(s) for %d test nets: give one per test net'
                          % (n_iter, n_specific))
    n_total = n_iter if has_generic else n_specific
    if len(p.test_state) and len(p.test_state) != n_total:
        raise field_error(source, 'test_state', 'given %d time(s) for %d test nets: give none or one per test net'
                          % (len(p.test_state), n_total))
    if n_total and p.test_interval <= 0:
        raise field_error(source, 'test_interval', 'must be > 0 when there are test nets (test_iter given), '
                          'got %d' % p.test_interval)
    if any(it < 0 for it in p.test_iter):
        raise field_error(source, 'test_iter', 'must be >= 0, got %d' % min(p.test_iter))
    return n_specific, n_total - n_specific


def eval_net_specs(p, source):
    """One ``(what, NetParameter, NetState)`` per test net, in Caffe's order."""
    n_specific, n_generic = _count_test_nets(p, source)
    sources = [('test_net_param', _inline_net(source, 'test_net_param', m)) for m in p.test_net_param]
    sources += [('test_net file: ' + f, read_net_file(source, 'test_net', f)) for f in p.test_net]
    if n_generic:
        if p.HasField('net_param'):
            what, generic = 'net_param', _inline_net(source, 'net_param', p.net_param)
        else:
            what, generic = 'net file: ' + p.net, read_net_file(source, 'net', p.net)
        sources += [(what, generic)] * n_generic
    return [(what, net_param, _net_state(caffe_pb2.TEST, net_param, p.test_state[i] if len(p.test_state) else None))
            for i, (what, net_param) in enumerate(sources)]


# -- the nets ------------------------------------------------------------------------------
def build_net(net_param, state, what, source):
    """A Net, its errors naming which of the solver's nets failed."""
    try:
        net = Net(net_param, state=state)
    except CaffeineError as e:
        raise type(e)('%s (%s of %s)' % (e, what, source))
    if not net.layers:
        net.close()
        raise SolverError('%s: %s %r has no layers in the %s phase: nothing to run'
                          % (source, what, net.name, caffe_pb2.Phase.Name(net.phase)))
    return net


def build_train_net(p, source):
    net_param, state = train_net_spec(p, source)
    return build_net(net_param, state, 'the train net', source)


def build_test_nets(p, source, train_net):
    """The test nets, each sharing ``train_net``'s weights (shared memory, never copies)."""
    nets = []
    for i, (what, net_param, state) in enumerate(eval_net_specs(p, source)):
        log.info('Creating test net (#%d) specified by %s', i, what)
        net = build_net(net_param, state, 'test net #%d' % i, source)
        net.share_with(train_net)
        nets.append(net)
    return nets
