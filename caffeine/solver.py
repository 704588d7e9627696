"""Solvers: Caffe's SGD, Nesterov, AdaGrad, RMSProp, AdaDelta and Adam.

A solver trains the net a ``solver.prototxt`` names, exactly as Caffe's
``Solver``/``SGDSolver`` do: the same learning-rate schedule, the same update
arithmetic (per-parameter ``lr_mult``/``decay_mult``, L1/L2 regularization,
gradient clipping over all parameters, ``iter_size`` accumulation), the same
test passes, snapshots (``.caffemodel`` + ``.solverstate``, or their HDF5
forms) and the same log lines, so Caffe's log parsers keep working.

pycaffe's surface::

    solver = caffeine.get_solver('solver.prototxt')   # or caffeine.SGDSolver(...)
    solver.net, solver.test_nets, solver.iter, solver.param
    solver.step(100); solver.solve(); solver.snapshot(); solver.restore(path)
    solver.apply_update(); solver.add_callback(on_start, on_gradients_ready)
    solver.share_weights(other_net)

Weights, gradients and history live in the current backend's memory (NumPy or
CuPy); every update is computed in place, with buffers allocated once.

Beyond Caffe's files, a snapshot writes a small sidecar ``<state>.caffeine.json``
with caffeine's random-generator state (and the state of any layer that offers
``get_state()``/``set_state(state)``, e.g. a data layer's cursor), so that a
resumed run continues bit for bit on the CPU.  Caffe's own files are untouched
by it and a solverstate without a sidecar (one written by Caffe) restores too.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from . import backend
from .blob import Blob
from .errors import CaffeineError, SolverError
from .proto import caffe_pb2

log = logging.getLogger('caffeine')

_F32 = np.float32

LR_POLICIES = ('fixed', 'step', 'exp', 'inv', 'multistep', 'poly', 'sigmoid')
REGULARIZATION_TYPES = ('L2', 'L1')
_LEGACY_TYPES = {caffe_pb2.SolverParameter.SGD: 'SGD', caffe_pb2.SolverParameter.NESTEROV: 'Nesterov',
                 caffe_pb2.SolverParameter.ADAGRAD: 'AdaGrad', caffe_pb2.SolverParameter.RMSPROP: 'RMSProp',
                 caffe_pb2.SolverParameter.ADADELTA: 'AdaDelta', caffe_pb2.SolverParameter.ADAM: 'Adam'}
SIDECAR_SUFFIX = '.caffeine.json'


def _g(x):
    """A number as C++'s ostream prints a float (6 significant digits)."""
    return '%g' % float(x)


# -- actions and signals -------------------------------------------------------------
class SolverAction:
    """What a signal asks of a running solver (Caffe's SolverAction)."""
    NONE = 'none'
    STOP = 'stop'
    SNAPSHOT = 'snapshot'
    ALL = (STOP, SNAPSHOT, NONE)


class SignalHandler:
    """Caffe's SignalHandler: SIGINT and SIGHUP become requests to the solver.

    Use as a context manager around training and hand ``handler.action`` to
    ``solver.set_action_function``: the solver polls it after every iteration
    (and between test batches) and stops, snapshots or does nothing, as the
    effect given for that signal says.
    """

    def __init__(self, sigint_effect=SolverAction.STOP, sighup_effect=SolverAction.SNAPSHOT):
        for name, eff in (('sigint_effect', sigint_effect), ('sighup_effect', sighup_effect)):
            if eff not in SolverAction.ALL:
                raise CaffeineError('%s must be one of stop, snapshot, none; got %r' % (name, eff))
        self.sigint_effect = sigint_effect
        self.sighup_effect = sighup_effect
        self.got_sigint = False
        self.got_sighup = False
        self._old = {}

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT:
            self.got_sigint = True
        else:
            self.got_sighup = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            sigs = [signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, 'SIGHUP') else [])
            for s in sigs:
                self._old[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        return False

    def action(self):
        """The requested action, clearing the flag that asked for it."""
        if self.got_sigint:
            self.got_sigint = False
            return self.sigint_effect
        if self.got_sighup:
            self.got_sighup = False
            return self.sighup_effect
        return SolverAction.NONE


# -- reading a solver ----------------------------------------------------------------
def _upgrade_legacy_type(param, source):
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
    from .prototxt import read_solver_param, _looks_like_path
    if isinstance(source, caffe_pb2.SolverParameter):
        name = '<SolverParameter>'
        is_file = False
    else:
        is_file = _looks_like_path(source)
        name = os.fspath(source) if is_file else '<string>'
        if is_file and not os.path.exists(source):
            raise SolverError('%s: no such solver file' % name)
    param = read_solver_param(source)
    _upgrade_legacy_type(param, name)
    if is_file:
        if not param.HasField('snapshot_prefix'):
            param.snapshot_prefix = os.path.splitext(name)[0]
            log.info('snapshot_prefix was not specified and is set to %s', param.snapshot_prefix)
        elif os.path.isdir(param.snapshot_prefix):
            stem = os.path.splitext(os.path.basename(name))[0]
            param.snapshot_prefix = os.path.join(param.snapshot_prefix, stem)
            log.info('snapshot_prefix is a directory and is set to %s', param.snapshot_prefix)
    return param, name


_SOLVER_CLASSES = {}


def _solver_type(name):
    def deco(cls):
        cls.type_name = name
        _SOLVER_CLASSES[name] = cls
        return cls
    return deco


def solver_class(type_name, source='<solver>'):
    cls = _SOLVER_CLASSES.get(type_name)
    if cls is None:
        raise SolverError('%s: type: unknown solver type %r (known: %s)'
                          % (source, type_name, ', '.join(sorted(_SOLVER_CLASSES))))
    return cls


def get_solver(source, **kwargs):
    """The solver a solver.prototxt (path, text or SolverParameter) asks for, by its ``type``."""
    param, name = load_solver_param(source)
    kwargs.setdefault('source', name)
    return solver_class(param.type, kwargs['source'])(param, **kwargs)


# -- the solver ----------------------------------------------------------------------
class Solver:
    """Base of every solver: Caffe's Solver (nets, stepping, testing, snapshots).

    ``Solver(path)`` builds the solver the file's ``type`` names; a subclass
    (``SGDSolver(path)``, ...) always builds its own kind, as in pycaffe.
    """

    type_name = None

    def __new__(cls, *args, **kwargs):
        if cls is Solver:
            src = args[0] if args else kwargs.get('param')
            param, name = load_solver_param(src)
            cls = solver_class(param.type, kwargs.get('source') or name)
        return object.__new__(cls)

    def __init__(self, param, source=None):
        if isinstance(param, caffe_pb2.SolverParameter) and source is not None:
            p = caffe_pb2.SolverParameter()
            p.CopyFrom(param)
            _upgrade_legacy_type(p, source)
            self._source = source
        else:
            p, name = load_solver_param(param)
            self._source = source or name
        self.param = p
        self.callbacks = []
        self._action_fn = None
        self.requested_early_exit = False
        self.allow_nan = False
        self.iter = 0
        self.current_step = 0
        self.losses = []
        self.smoothed_loss = 0.0
        self.last_loss = None
        self.last_test_scores = {}
        self._pbar = None
        self._check_param()
        from .prototxt import to_text
        log.info('Initializing solver from parameters: \n%s', to_text(p))
        if p.random_seed >= 0:
            backend.set_random_seed(p.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        for w in p.weights:
            self._load_weights(w)
        self._presolve()
        self._check_snapshot_writable()
        log.info('Solver scaffolding done.')

    # -- checks -----------------------------------------------------------------
    def _err(self, field, msg):
        return SolverError('%s: %s: %s' % (self._source, field, msg))

    def _check_param(self):
        p = self.param
        if p.lr_policy not in LR_POLICIES:
            raise self._err('lr_policy', 'unknown learning rate policy %r (known: %s)'
                            % (p.lr_policy, ', '.join(LR_POLICIES)) if p.lr_policy else
                            'no learning rate policy given (one of %s)' % ', '.join(LR_POLICIES))
        if p.lr_policy in ('step',) and p.stepsize <= 0:
            raise self._err('stepsize', 'lr_policy "step" needs stepsize > 0, got %d' % p.stepsize)
        if p.lr_policy == 'poly' and p.max_iter <= 0:
            raise self._err('max_iter', 'lr_policy "poly" needs max_iter > 0')
        if p.regularization_type not in REGULARIZATION_TYPES:
            raise self._err('regularization_type', 'unknown regularization type %r (L1 or L2)' % p.regularization_type)
        if p.average_loss < 1:
            raise self._err('average_loss', 'must be at least 1, got %d' % p.average_loss)
        if p.iter_size < 1:
            raise self._err('iter_size', 'must be at least 1, got %d' % p.iter_size)
        if p.display < 0:
            raise self._err('display', 'must be >= 0, got %d' % p.display)
        if p.snapshot < 0:
            raise self._err('snapshot', 'must be >= 0, got %d' % p.snapshot)
        self._sanity_check()

    def _sanity_check(self):
        pass

    def _check_snapshot_writable(self):
        """Fail now, not after hours of training, when snapshots cannot be written (Caffe's check)."""
        p = self.param
        if not p.snapshot:
            return
        d = os.path.dirname(os.path.abspath(p.snapshot_prefix + '_iter_0'))
        while not os.path.isdir(d):
            parent = os.path.dirname(d)
            if parent == d or (os.path.exists(d) and not os.path.isdir(d)):
                break
            d = parent
        if not (os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)):
            raise self._err('snapshot_prefix', 'cannot write snapshots to %r: make sure its folder is writable'
                            % p.snapshot_prefix)

    # -- nets ---------------------------------------------------------------------
    def _read_net_file(self, field, path):
        from .prototxt import read_net_param
        if not os.path.isfile(path):
            raise self._err(field, 'net file %r not found (solver paths are relative to the current '
                            'directory, %s, as in Caffe)' % (path, os.getcwd()))
        try:
            return read_net_param(path)
        except SolverError:
            raise
        except CaffeineError as e:
            raise self._err(field, str(e))

    def _build_net(self, net_param, state, what):
        from .net import Net
        try:
            return Net(net_param, state=state)
        except CaffeineError as e:
            raise type(e)('%s (%s of %s)' % (e, what, self._source))

    def _init_train_net(self):
        p = self.param
        fields = [f for f in ('train_net_param', 'train_net', 'net_param', 'net') if p.HasField(f)]
        if not fields:
            raise SolverError('%s: no train net: give one of train_net_param, train_net, net_param, net'
                              % self._source)
        if len(fields) > 1:
            raise SolverError('%s: more than one train net given (%s): give only one of train_net_param, '
                              'train_net, net_param, net' % (self._source, ', '.join(fields)))
        field = fields[0]
        if field == 'train_net_param':
            log.info('Creating training net specified in train_net_param.')
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(p.train_net_param)
        elif field == 'train_net':
            log.info('Creating training net from train_net file: %s', p.train_net)
            net_param = self._read_net_file('train_net', p.train_net)
        elif field == 'net_param':
            log.info('Creating training net specified in net_param.')
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(p.net_param)
        else:
            log.info('Creating training net from net file: %s', p.net)
            net_param = self._read_net_file('net', p.net)
        if field in ('train_net_param', 'net_param'):
            from .upgrade import upgrade_net_param
            upgrade_net_param(net_param, '%s %s' % (self._source, field))
        state = caffe_pb2.NetState()
        state.phase = caffe_pb2.TRAIN
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        return self._build_net(net_param, state, 'the train net')

    def _init_test_nets(self):
        p = self.param
        has_generic = p.HasField('net_param') or p.HasField('net')
        n_params, n_files = len(p.test_net_param), len(p.test_net)
        n_specific = n_params + n_files
        n_iter = len(p.test_iter)
        if has_generic:
            if n_iter < n_specific:
                raise self._err('test_iter', 'given %d time(s) for %d test nets: give one per test net'
                                % (n_iter, n_specific))
        elif n_iter != n_specific:
            if n_specific == 0:
                raise self._err('test_iter', 'given, but there is no test net (no net/net_param to test, '
                                'no test_net/test_net_param)')
            raise self._err('test_iter', 'given %d time(s) for %d test nets: give one per test net'
                            % (n_iter, n_specific))
        n_generic = n_iter - n_specific
        n_total = n_specific + n_generic
        if len(p.test_state) and len(p.test_state) != n_total:
            raise self._err('test_state', 'given %d time(s) for %d test nets: give none or one per test net'
                            % (len(p.test_state), n_total))
        if n_total and p.test_interval <= 0:
            raise self._err('test_interval', 'must be > 0 when there are test nets (test_iter given), got %d'
                            % p.test_interval)
        for i, it in enumerate(p.test_iter):
            if it < 0:
                raise self._err('test_iter', 'must be >= 0, got %d' % it)
        sources = []
        from .upgrade import upgrade_net_param
        for i in range(n_params):
            np_ = caffe_pb2.NetParameter()
            np_.CopyFrom(p.test_net_param[i])
            upgrade_net_param(np_, '%s test_net_param' % self._source)
            sources.append(('test_net_param', np_))
        for i in range(n_files):
            sources.append(('test_net file: ' + p.test_net[i], self._read_net_file('test_net', p.test_net[i])))
        if n_generic:
            if p.HasField('net_param'):
                gen = caffe_pb2.NetParameter()
                gen.CopyFrom(p.net_param)
                upgrade_net_param(gen, '%s net_param' % self._source)
                what = 'net_param'
            else:
                gen = self._read_net_file('net', p.net)
                what = 'net file: ' + p.net
            for i in range(n_generic):
                sources.append((what, gen))
        nets = []
        for i, (what, net_param) in enumerate(sources):
            state = caffe_pb2.NetState()
            state.phase = caffe_pb2.TEST
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            log.info('Creating test net (#%d) specified by %s', i, what)
            net = self._build_net(net_param, state, 'test net #%d' % i)
            # test nets use the train net's weights: shared memory, never copies
            net.share_with(self.net)
            nets.append(net)
        return nets

    def _load_weights(self, path):
        """Copy trained layers into the train net and every test net (Caffe's LoadNetWeights)."""
        res = self.net.copy_from(path)
        for tn in self.test_nets:
            tn.copy_from(path)
        return res

    def share_weights(self, net):
        """Let ``net`` use this solver's train-net weights (pycaffe's share_weights)."""
        net.share_with(self.net)

    def close(self):
        """Stop the data layers' prefetch threads of every net; idempotent."""
        self.net.close()
        for tn in self.test_nets:
            tn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- history buffers -------------------------------------------------------------
    def _blob_like(self, p):
        b = Blob()
        b.reshape(p.shape)
        return b

    def _presolve(self):
        params = self.net.learnable_params
        self.history = [self._blob_like(p) for p in params]
        self.update_buffers = [self._blob_like(p) for p in params]
        self.temp = [self._blob_like(p) for p in params]
        # zero the history where it will be used (device memory in GPU mode)
        for h in self.history:
            h.xdata.fill(0)

    # -- callbacks and actions --------------------------------------------------
    def add_callback(self, on_start=None, on_gradients_ready=None):
        """pycaffe's add_callback(on_start, on_gradients_ready): two callables, or one
        object with methods ``on_start`` and ``on_gradients_ready``."""
        if on_gradients_ready is None and on_start is not None and hasattr(on_start, 'on_gradients_ready'):
            obj = on_start
            on_start = getattr(obj, 'on_start', None)
            on_gradients_ready = obj.on_gradients_ready
        self.callbacks.append((on_start, on_gradients_ready))

    def set_action_function(self, fn):
        """``fn()`` returns 'none', 'stop' or 'snapshot' (Caffe's SetActionFunction)."""
        self._action_fn = fn

    def _requested_action(self):
        if self._action_fn is None:
            return SolverAction.NONE
        return self._action_fn() or SolverAction.NONE

    # -- learning rate ------------------------------------------------------------
    def get_learning_rate(self):
        """The rate for the current iteration (Caffe's GetLearningRate); multistep advances current_step."""
        p = self.param
        policy = p.lr_policy
        base = float(_F32(p.base_lr))
        gamma = float(_F32(p.gamma))
        power = float(_F32(p.power))
        it = self.iter
        if policy == 'fixed':
            rate = base
        elif policy == 'step':
            self.current_step = it // p.stepsize
            rate = base * math.pow(gamma, self.current_step)
        elif policy == 'exp':
            rate = base * math.pow(gamma, it)
        elif policy == 'inv':
            rate = base * math.pow(float(_F32(1) + _F32(gamma) * _F32(it)), -power)
        elif policy == 'multistep':
            if self.current_step < len(p.stepvalue) and it >= p.stepvalue[self.current_step]:
                self.current_step += 1
                log.info('MultiStep Status: Iteration %d, step = %d', it, self.current_step)
            rate = base * math.pow(gamma, self.current_step)
        elif policy == 'poly':
            rate = base * math.pow(float(_F32(1) - _F32(it) / _F32(p.max_iter)), power)
        elif policy == 'sigmoid':
            rate = base * (1.0 / (1.0 + math.exp(-gamma * (float(it) - float(p.stepsize)))))
        else:  # checked at construction
            raise self._err('lr_policy', 'unknown learning rate policy %r' % policy)
        return float(_F32(rate))

    # -- the update ---------------------------------------------------------------
    def apply_update(self):
        """Caffe's ApplyUpdate: rate, clipping, normalization, regularization, the
        solver's update value, then ``net.update()``."""
        rate = self.get_learning_rate()
        p = self.param
        if p.display and self.iter % p.display == 0:
            log.info('Iteration %d, lr = %s', self.iter, _g(rate))
        self.clip_gradients()
        for i in range(len(self.net.learnable_params)):
            self.normalize(i)
            self.regularize(i)
            self.compute_update_value(i, rate)
        if self.net.debug_info:
            for pid in range(len(self.net.param_owners)):
                self.net.update_debug_info(pid)
        self.net.update()

    def clip_gradients(self):
        clip = float(_F32(self.param.clip_gradients))
        if clip < 0:
            return
        xp = backend.get_xp()
        sumsq = 0.0
        for prm in self.net.learnable_params:
            d = prm.xdiff.reshape(-1)
            sumsq += float(xp.dot(d, d))
        l2 = math.sqrt(sumsq)
        if l2 > clip:
            factor = _F32(clip / l2)
            log.info('Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s',
                     _g(l2), _g(clip), _g(factor))
            for prm in self.net.learnable_params:
                d = prm.xdiff
                d *= factor

    def normalize(self, i):
        n = self.param.iter_size
        if n == 1:
            return
        d = self.net.learnable_params[i].xdiff
        d *= _F32(1.0) / _F32(n)

    def regularize(self, i):
        p = self.param
        decay = _F32(p.weight_decay) * _F32(self.net.params_weight_decay[i])
        if not decay:
            return
        xp = backend.get_xp()
        prm = self.net.learnable_params[i]
        data, diff, tmp = prm.xdata, prm.xdiff, self.temp[i].xdata
        if p.regularization_type == 'L2':
            xp.multiply(data, decay, out=tmp)
        else:  # L1
            xp.sign(data, out=tmp)
            tmp *= decay
        diff += tmp

    def _local_rate(self, i, rate):
        return _F32(rate) * _F32(self.net.params_lr[i])

    def compute_update_value(self, i, rate):
        raise NotImplementedError

    # -- stepping -----------------------------------------------------------------
    def _update_smoothed_loss(self, loss, start_iter, average_loss):
        loss = _F32(loss)
        if len(self.losses) < average_loss:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = _F32((_F32(self.smoothed_loss) * _F32(n - 1) + loss) / _F32(n))
        else:
            idx = (self.iter - start_iter) % average_loss
            self.smoothed_loss = _F32(_F32(self.smoothed_loss) + (loss - self.losses[idx]) / _F32(average_loss))
            self.losses[idx] = loss

    def _display_outputs(self):
        net = self.net
        k = 0
        for name in net.outputs:
            w = _F32(net.blob_loss_weights[name])
            for v in net.blobs[name].host_data().ravel():
                extra = (' (* %s = %s loss)' % (_g(w), _g(_F32(w * v)))) if w else ''
                log.info('    Train net output #%d: %s = %s%s', k, name, _g(v), extra)
                k += 1

    def _non_finite(self, loss):
        """Name the first layer whose output (or weights) turned non-finite."""
        xp = backend.get_xp()
        net = self.net
        culprit = None
        for i, (lname, layer) in enumerate(zip(net.layer_names, net.layers)):
            bad_params = [j for j, b in enumerate(layer.blobs) if not bool(xp.isfinite(b.xdata).all())]
            bad_tops = [net.top_names[lname][j] for j, t in enumerate(net.top_vecs[i])
                        if t.count and not bool(xp.isfinite(t.xdata).all())]
            if bad_params or bad_tops:
                if bad_params:
                    why = 'its weights (param %s) are non-finite: an earlier update diverged' % (
                        ', '.join(str(j) for j in bad_params))
                else:
                    why = 'its output %s is non-finite' % ', '.join(repr(t) for t in bad_tops)
                culprit = 'layer %r (%s): %s' % (lname, layer.type, why)
                break
        if culprit is None:
            culprit = 'no layer output is non-finite; the loss sum overflowed'
        msg = ('Iteration %d: loss = %s; first non-finite layer: %s; lower base_lr (now %s) or use '
               'clip_gradients' % (self.iter, _g(loss), culprit, _g(self.param.base_lr)))
        if self.allow_nan:
            log.warning('%s (continuing: --allow-nan)', msg)
            return
        raise SolverError(msg + ' (the last snapshot, if any, is intact; --allow-nan continues)')

    def _check_weights_finite(self):
        """Never snapshot weights an update has just made non-finite."""
        xp = backend.get_xp()
        net = self.net
        for lname, layer in zip(net.layer_names, net.layers):
            for j, b in enumerate(layer.blobs):
                if not bool(xp.isfinite(b.xdata).all()):
                    raise SolverError('Iteration %d: the update made the weights of layer %r (%s), param %d, '
                                      'non-finite; not snapshotting them (the last snapshot, if any, is intact; '
                                      '--allow-nan continues)' % (self.iter, lname, layer.type, j))

    def step(self, iters):
        """Run ``iters`` training iterations (Caffe's Step)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        self.losses = []
        self.smoothed_loss = 0.0
        timer = time.perf_counter()
        iterations_last = self.iter
        net = self.net
        while self.iter < stop_iter:
            net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self.callbacks:
                if on_start is not None:
                    on_start()
            display = bool(p.display) and self.iter % p.display == 0
            net.debug_info = display and p.debug_info
            loss = 0.0
            for _ in range(p.iter_size):
                loss += net.forward_backward()
            loss = float(_F32(loss) / _F32(p.iter_size)) if p.iter_size > 1 else float(_F32(loss))
            if not math.isfinite(loss):
                self._non_finite(loss)
            self.last_loss = loss
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse if lapse else 1.0)
                log.info('Iteration %d (%s iter/s, %ss/%d iters), loss = %s', self.iter, _g(per_s),
                         _g(lapse), p.display, _g(self.smoothed_loss))
                timer = time.perf_counter()
                iterations_last = self.iter
                self._display_outputs()
            for _, on_grad in self.callbacks:
                if on_grad is not None:
                    on_grad()
            self.apply_update()
            self.iter += 1
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT:
                if not self.allow_nan:
                    self._check_weights_finite()
                self.snapshot()
            if self._pbar is not None:
                self._progress_update()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    # -- progress bar ---------------------------------------------------------
    def _progress_update(self):
        bar = self._pbar
        bar.update(self.iter - bar.n)
        post = {'loss': '%.4g' % float(self.smoothed_loss)}
        if self.last_test_scores:
            name, val = self.last_test_scores[min(self.last_test_scores)][0]
            post[name] = '%.4g' % val
        bar.set_postfix(post, refresh=False)

    @staticmethod
    def progress_wanted():
        """A live bar only on a terminal, never in logs or CI."""
        if os.environ.get('CI') or os.environ.get('CAFFEINE_NO_PROGRESS'):
            return False
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def solve(self, resume_file=None, progress=None):
        """Train to max_iter (Caffe's Solve), from a snapshot if given."""
        p = self.param
        log.info('Solving %s', self.net.name)
        log.info('Learning Rate Policy: %s', p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info('Restoring previous solver status from %s', resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        if progress is None:
            progress = self.progress_wanted()
        if progress and p.max_iter > self.iter:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            consoles = [lg for lg in (logging.root, log) if any(
                isinstance(h, logging.StreamHandler) and getattr(h, 'stream', None) in (sys.stdout, sys.stderr)
                for h in lg.handlers)]
            with logging_redirect_tqdm(loggers=consoles):
                with tqdm(total=p.max_iter, initial=self.iter, desc='train', unit='it',
                          dynamic_ncols=True, file=sys.stderr, leave=False) as bar:
                    self._pbar = bar
                    try:
                        self.step(p.max_iter - self.iter)
                    finally:
                        self._pbar = None
        else:
            self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info('Optimization stopped early.')
            return
        if p.display and self.iter % p.display == 0:
            loss = self.net.forward_prefilled()
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            log.info('Iteration %d, loss = %s', self.iter, _g(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info('Optimization Done.')

    # -- testing ------------------------------------------------------------------
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Run test_iter batches of test net #id and log each output's mean (Caffe's Test)."""
        p = self.param
        log.info('Iteration %d, Testing net (#%d)', self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        self._ensure_shared(net)
        n_iter = p.test_iter[test_net_id]
        scores = None
        loss = _F32(0)
        for i in range(n_iter):
            request = self._requested_action()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            iter_loss = net.forward_prefilled()
            if p.test_compute_loss:
                loss += _F32(iter_loss)
            vals = [net.blobs[o].host_data().ravel() for o in net.outputs]
            if scores is None:
                scores = [v.astype(np.float32).copy() for v in vals]
            else:
                for s, v in zip(scores, vals):
                    s += v
        if self.requested_early_exit:
            log.info('Test interrupted.')
            return
        if p.test_compute_loss and n_iter:
            loss /= _F32(n_iter)
            log.info('Test loss: %s', _g(loss))
        results = []
        k = 0
        for name, s in zip(net.outputs, scores or []):
            w = _F32(net.blob_loss_weights[name])
            for v in s:
                mean = _F32(v / _F32(n_iter))
                extra = (' (* %s = %s loss)' % (_g(w), _g(_F32(w * mean)))) if w else ''
                log.info('    Test net output #%d: %s = %s%s', k, name, _g(mean), extra)
                results.append((name, float(mean)))
                k += 1
        if results:
            self.last_test_scores[test_net_id] = results
        return results

    def _ensure_shared(self, net):
        """Re-share if a train param blob was replaced (Caffe shares before every test)."""
        for lname, params in net.params.items():
            src = self.net.params.get(lname)
            if src is None:
                continue
            if any(not d.shares_data_with(s) for d, s in zip(params, src)):
                net.share_with(self.net)
                return

    # -- snapshots ----------------------------------------------------------------
    def snapshot_filename(self, extension):
        return '%s_iter_%d%s' % (self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self):
        """Write the weights and the solver state (Caffe's Snapshot); returns the state's path."""
        p = self.param
        if p.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            model = self.snapshot_filename('.caffemodel.h5')
            log.info('Snapshotting to HDF5 file %s', model)
            self.net.save_hdf5(model, write_diff=p.snapshot_diff)
            state_file = self.snapshot_filename('.solverstate.h5')
            self._write_sidecar(state_file)
            log.info('Snapshotting solver state to HDF5 file %s', state_file)
            self._write_state_hdf5(state_file, model)
        else:
            model = self.snapshot_filename('.caffemodel')
            log.info('Snapshotting to binary proto file %s', model)
            self.net.save(model, write_diff=p.snapshot_diff)
            state_file = self.snapshot_filename('.solverstate')
            self._write_sidecar(state_file)
            log.info('Snapshotting solver state to binary proto file %s', state_file)
            self._write_state_proto(state_file, model)
        return state_file

    def solver_state(self, model_filename=''):
        """A caffe_pb2.SolverState of this solver (iter, learned_net, history, current_step)."""
        st = caffe_pb2.SolverState()
        st.iter = self.iter
        st.learned_net = model_filename
        st.current_step = self.current_step
        for h in self.history:
            h.to_proto(st.history.add())
        return st

    def _write_state_proto(self, path, model):
        from .utils import atomic_write
        data = self.solver_state(model).SerializeToString()
        with atomic_write(path, 'wb') as f:
            f.write(data)

    def _write_state_hdf5(self, path, model):
        import h5py
        from .utils import atomic_write
        with atomic_write(path, 'wb') as f:
            with h5py.File(f, 'w') as h:
                h.create_dataset('iter', data=np.int32(self.iter))
                _h5_write_string(h, 'learned_net', model)
                h.create_dataset('current_step', data=np.int32(self.current_step))
                g = h.create_group('history')
                for i, hb in enumerate(self.history):
                    g.create_dataset(str(i), data=hb.host_data())

    def _layer_states(self):
        out = {}
        for tag, net in [('train', self.net)] + [('test%d' % i, n) for i, n in enumerate(self.test_nets)]:
            for lname, layer in zip(net.layer_names, net.layers):
                get = getattr(layer, 'get_state', None)
                if callable(get):
                    out['%s/%s' % (tag, lname)] = get()
        return out

    def _write_sidecar(self, state_file):
        from .utils import atomic_write
        extra = {'caffeine_sidecar': 1, 'iter': self.iter, 'mode': backend.mode(),
                 'rng': backend.rng_state(), 'layers': self._layer_states()}
        try:
            text = json.dumps(extra)
        except TypeError as e:
            log.warning('Not saving layer states with the snapshot (%s)', e)
            extra['layers'] = {}
            text = json.dumps(extra)
        with atomic_write(state_file + SIDECAR_SUFFIX, 'w') as f:
            f.write(text)

    # -- restoring ----------------------------------------------------------------
    def restore(self, state_file):
        """Resume from a .solverstate (or .solverstate.h5), Caffe's or caffeine's."""
        state_file = os.fspath(state_file)
        if not os.path.isfile(state_file):
            raise SolverError('%s: no such solver state file' % state_file)
        if state_file.endswith('.h5'):
            it, learned, step, hist = self._read_state_hdf5(state_file)
        else:
            it, learned, step, hist = self._read_state_proto(state_file)
        self._check_history(state_file, hist)
        if learned:
            model = _resolve_learned_net(learned, state_file)
            try:
                res = self.net.copy_from(model)
            except CaffeineError as e:
                raise SolverError('%s: snapshot does not fit this net (%s)' % (state_file, e))
            owners = [n for n, l in zip(self.net.layer_names, self.net.layers) if l.blobs]
            if owners and not any(n in res['copied'] for n in owners):
                raise SolverError('%s: snapshot is from a different net: its weights %s match no layer '
                                  'of net %r' % (state_file, model, self.net.name))
        self.iter = it
        self.current_step = step
        log.info('SGDSolver: restoring history')
        for hb, arr in zip(self.history, hist):
            backend.copy_into(hb.xdata, arr.reshape(hb.shape))
        self._read_sidecar(state_file)

    def _read_state_proto(self, path):
        from .weights import blob_proto_to_array
        st = caffe_pb2.SolverState()
        try:
            with open(path, 'rb') as f:
                st.ParseFromString(f.read())
        except Exception as e:
            raise SolverError('%s: not a valid .solverstate (binary SolverState): %s' % (path, e))
        hist = []
        for i, bp in enumerate(st.history):
            try:
                hist.append(blob_proto_to_array(bp))
            except CaffeineError as e:
                raise SolverError('%s: history blob %d: %s' % (path, i, e))
        return st.iter, st.learned_net if st.HasField('learned_net') else '', st.current_step, hist

    def _read_state_hdf5(self, path):
        import h5py
        try:
            h = h5py.File(path, 'r')
        except OSError as e:
            raise SolverError('%s: cannot open HDF5 solver state (%s)' % (path, e))
        with h:
            try:
                it = int(np.asarray(h['iter'][()]))
                step = int(np.asarray(h['current_step'][()])) if 'current_step' in h else 0
                learned = ''
                if 'learned_net' in h:
                    v = h['learned_net'][()]
                    if isinstance(v, np.ndarray):
                        v = v.tobytes()
                    learned = (v.decode('utf-8') if isinstance(v, bytes) else str(v)).rstrip('\0')
                g = h['history']
                hist = [np.asarray(g[str(i)], dtype=np.float32) for i in range(len(g))]
            except KeyError as e:
                raise SolverError('%s: not a Caffe HDF5 solver state (missing %s)' % (path, e))
        return it, learned, step, hist

    def _check_history(self, path, hist):
        want = self.history
        if len(hist) != len(want):
            raise SolverError('%s: snapshot is from a different net or solver type: it has %d history blobs, '
                              'this %s solver on net %r needs %d' % (path, len(hist), self.type_name,
                                                                     self.net.name, len(want)))
        for i, (a, b) in enumerate(zip(hist, want)):
            shape = tuple(b.shape)
            legacy = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else shape
            if a.size != b.count or tuple(a.shape) not in (shape, legacy):
                raise SolverError('%s: snapshot is from a different net: history blob %d has shape %s, '
                                  'this net needs %s' % (path, i, list(a.shape), list(shape)))

    def _read_sidecar(self, state_file):
        side = state_file + SIDECAR_SUFFIX
        if not os.path.isfile(side):
            log.debug('No %s: random streams continue from the seed', side)
            return
        try:
            with open(side) as f:
                extra = json.load(f)
        except (OSError, ValueError) as e:
            log.warning('Ignoring %s: %s', side, e)
            return
        if extra.get('iter') != self.iter:
            log.warning('Ignoring %s: it is for iteration %s, the state for %d', side, extra.get('iter'), self.iter)
            return
        if extra.get('rng'):
            try:
                backend.set_rng_state(extra['rng'])
            except (TypeError, ValueError, KeyError) as e:
                log.warning('Could not restore the random generator from %s: %s', side, e)
        states = extra.get('layers') or {}
        for tag, net in [('train', self.net)] + [('test%d' % i, n) for i, n in enumerate(self.test_nets)]:
            for lname, layer in zip(net.layer_names, net.layers):
                key = '%s/%s' % (tag, lname)
                setter = getattr(layer, 'set_state', None)
                if key in states and callable(setter):
                    setter(states[key])


def _h5_write_string(h, name, s):
    """A scalar fixed-length, NUL-terminated string dataset, as HDF5's H5LTmake_dataset_string."""
    import h5py
    b = s.encode('utf-8')
    try:
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(len(b) + 1)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        sid = h5py.h5s.create(h5py.h5s.SCALAR)
        did = h5py.h5d.create(h.id, name.encode(), tid, sid)
        did.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(b + b'\0', dtype='S%d' % (len(b) + 1)))
    except Exception:  # pragma: no cover - an h5py without the low-level API
        if name in h:
            del h[name]
        h.create_dataset(name, data=np.bytes_(b + b'\0'))


def _resolve_learned_net(learned, state_file):
    """Caffe reads learned_net relative to the current directory; failing that, beside the state file."""
    if os.path.isabs(learned) or os.path.exists(learned):
        if not os.path.exists(learned):
            raise SolverError('%s: learned_net %s: no such file' % (state_file, learned))
        return learned
    d = os.path.dirname(os.path.abspath(state_file))
    for cand in (os.path.join(d, learned), os.path.join(d, os.path.basename(learned))):
        if os.path.exists(cand):
            return cand
    raise SolverError('%s: learned_net %s: no such file (looked in %s and beside the state file)'
                      % (state_file, learned, os.getcwd()))


# -- the update rules ------------------------------------------------------------------
@_solver_type('SGD')
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: h = lr * g + m * h; w -= h."""

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        prm = self.net.learnable_params[i]
        diff, h, tmp = prm.xdiff, self.history[i].xdata, self.temp[i].xdata
        lr = self._local_rate(i, rate)
        h *= _F32(self.param.momentum)
        xp.multiply(diff, lr, out=tmp)
        h += tmp
        diff[...] = h


@_solver_type('Nesterov')
class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: w -= (1 + m) * h_new - m * h_old."""

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        prm = self.net.learnable_params[i]
        diff, h = prm.xdiff, self.history[i].xdata
        u, tmp = self.update_buffers[i].xdata, self.temp[i].xdata
        m = _F32(self.param.momentum)
        lr = self._local_rate(i, rate)
        u[...] = h
        h *= m
        xp.multiply(diff, lr, out=tmp)
        h += tmp
        u *= -m
        xp.multiply(h, _F32(1) + m, out=tmp)
        u += tmp
        diff[...] = u


@_solver_type('AdaGrad')
class AdaGradSolver(SGDSolver):
    """AdaGrad: h += g^2; w -= lr * g / (sqrt(h) + delta)."""

    def _sanity_check(self):
        if self.param.momentum != 0:
            raise self._err('momentum', 'momentum %g cannot be used with AdaGrad (remove it)' % self.param.momentum)

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        prm = self.net.learnable_params[i]
        diff, h, u = prm.xdiff, self.history[i].xdata, self.update_buffers[i].xdata
        lr = self._local_rate(i, rate)
        xp.multiply(diff, diff, out=u)
        h += u
        xp.sqrt(h, out=u)
        u += _F32(self.param.delta)
        xp.divide(diff, u, out=u)
        xp.multiply(u, lr, out=diff)


@_solver_type('RMSProp')
class RMSPropSolver(SGDSolver):
    """RMSProp: h = d * h + (1 - d) * g^2; w -= lr * g / (sqrt(h) + delta)."""

    def _sanity_check(self):
        p = self.param
        if p.momentum != 0:
            raise self._err('momentum', 'momentum %g cannot be used with RMSProp (remove it)' % p.momentum)
        if not 0 <= p.rms_decay < 1:
            raise self._err('rms_decay', 'must be in [0, 1), got %g' % p.rms_decay)

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        prm = self.net.learnable_params[i]
        diff, h, u = prm.xdiff, self.history[i].xdata, self.update_buffers[i].xdata
        d = _F32(self.param.rms_decay)
        lr = self._local_rate(i, rate)
        xp.multiply(diff, diff, out=u)
        h *= d
        u *= _F32(1) - d
        h += u
        xp.sqrt(h, out=u)
        u += _F32(self.param.delta)
        xp.divide(diff, u, out=u)
        xp.multiply(u, lr, out=diff)


@_solver_type('AdaDelta')
class AdaDeltaSolver(SGDSolver):
    """AdaDelta: RMS of past updates over RMS of past gradients, both decayed by momentum."""

    def _presolve(self):
        super()._presolve()
        extra = [self._blob_like(p) for p in self.net.learnable_params]
        for h in extra:
            h.xdata.fill(0)
        self.history += extra

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        n = len(self.net.learnable_params)
        prm = self.net.learnable_params[i]
        diff = prm.xdiff
        hg, hu = self.history[i].xdata, self.history[n + i].xdata
        u, t = self.update_buffers[i].xdata, self.temp[i].xdata
        m = _F32(self.param.momentum)
        delta = _F32(self.param.delta)
        lr = self._local_rate(i, rate)
        xp.multiply(diff, diff, out=u)
        hg *= m
        u *= _F32(1) - m
        hg += u
        t.fill(delta)
        xp.add(t, hu, out=u)
        xp.add(t, hg, out=t)
        xp.divide(u, t, out=u)
        xp.sqrt(u, out=u)
        diff *= u
        xp.multiply(diff, diff, out=u)
        hu *= m
        u *= _F32(1) - m
        hu += u
        diff *= lr


@_solver_type('Adam')
class AdamSolver(SGDSolver):
    """Adam: m, v moments (momentum, momentum2) with Caffe's bias correction."""

    def _presolve(self):
        super()._presolve()
        extra = [self._blob_like(p) for p in self.net.learnable_params]
        for h in extra:
            h.xdata.fill(0)
        self.history += extra

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        n = len(self.net.learnable_params)
        prm = self.net.learnable_params[i]
        diff = prm.xdiff
        m, v, t = self.history[i].xdata, self.history[n + i].xdata, self.temp[i].xdata
        b1 = _F32(self.param.momentum)
        b2 = _F32(self.param.momentum2)
        step = self.iter + 1
        correction = _F32(math.sqrt(1.0 - math.pow(float(b2), step)) / (1.0 - math.pow(float(b1), step)))
        lr = self._local_rate(i, rate)
        m *= b1
        xp.multiply(diff, _F32(1) - b1, out=t)
        m += t
        xp.multiply(diff, diff, out=t)
        v *= b2
        t *= _F32(1) - b2
        v += t
        xp.sqrt(v, out=t)
        t += _F32(self.param.delta)
        xp.divide(m, t, out=t)
        xp.multiply(t, _F32(lr * correction), out=diff)


__all__ = ['Solver', 'SGDSolver', 'NesterovSolver', 'AdaGradSolver', 'RMSPropSolver', 'AdaDeltaSolver',
           'AdamSolver', 'get_solver', 'load_solver_param', 'solver_class', 'SignalHandler', 'SolverAction',
           'LR_POLICIES']
