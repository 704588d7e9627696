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

Listeners (caffeine's own; the CLI's progress bar is one)::

    solver.add_listener(obj)      # obj duck-typed; each method optional
    obj.on_start(solver)                           # step()/solve() about to run its first iteration
    obj.on_display(solver, info)                   # each display iteration, after Caffe's log lines
    obj.on_test(solver, test_net_id, scores)       # after a test pass; scores = {output: float}
    obj.on_snapshot(solver, model_path, state_path)
    obj.on_step_end(solver)                        # after each update; solver.iter already incremented
    obj.on_finish(solver)                          # solve() ending, normally or by a stop action
    solver.remove_listener(obj)

``info`` is ``dict(iter, loss, smoothed_loss, lr, outputs, iters_per_s)``:
``loss`` is this iteration's raw loss, ``smoothed_loss`` the one Caffe
displays, ``outputs`` the train net's outputs as logged, ``iters_per_s`` None
where no iteration has run since the last display.  An output blob with more
than one value appears as ``name[0]``, ``name[1]``, ... in ``outputs`` and
``scores``.

The seam between backward and the update is ``_gradients_ready()``: pycaffe's
``on_gradients_ready`` callbacks run there, every gradient summed over
``iter_size`` in its parameter's diff, before ``apply_update()``; that is where
a data-parallel allreduce plugs in.

An update rule is a subclass of SGDSolver with ``compute_update_value(i, rate)``
and, if it keeps more than one history blob per parameter, ``history_slots``:
SGDSolver allocates them in Caffe's order (every parameter's first slot, then
every parameter's second), so solverstates stay interchangeable with Caffe's.

Weights, gradients and history live in the current backend's memory (NumPy or
CuPy); every update is computed in place, with buffers allocated once.
Reading the solver file and building its nets is ``solver_setup``; the
snapshot files and caffeine's sidecar (random-generator and data-layer state,
so a resumed run continues bit for bit) are ``solver_state``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time

import numpy as np

from . import backend, fused, runtime
from . import solver_state as state_io
from .blob import Blob
from .errors import CaffeineError, SolverError
from .proto import caffe_pb2
from .prototxt import to_text
from .solver_setup import (LR_POLICIES, build_test_nets, build_train_net, check_snapshot_writable,
                           check_solver_param, field_error, load_solver_param, upgrade_legacy_type)

log = logging.getLogger('caffeine')

_F32 = np.float32


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


# -- solver types ----------------------------------------------------------------------
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


def _solver_param(param, source):
    """``(SolverParameter, source name)`` of what a Solver was given: a message with its source, or anything
    load_solver_param reads."""
    if isinstance(param, caffe_pb2.SolverParameter) and source is not None:
        p = caffe_pb2.SolverParameter()
        p.CopyFrom(param)
        upgrade_legacy_type(p, source)
        return p, source
    p, name = load_solver_param(param)
    return p, source or name


# -- small pieces of Caffe's Solver, as functions ---------------------------------------------
def learning_rate(p, it, current_step):
    """``(rate, current_step)`` at iteration ``it`` (Caffe's GetLearningRate); step and multistep move the step."""
    policy = p.lr_policy
    base = float(_F32(p.base_lr))
    gamma = float(_F32(p.gamma))
    power = float(_F32(p.power))
    if policy == 'fixed':
        rate = base
    elif policy == 'step':
        current_step = it // p.stepsize
        rate = base * math.pow(gamma, current_step)
    elif policy == 'exp':
        rate = base * math.pow(gamma, it)
    elif policy == 'inv':
        rate = base * math.pow(float(_F32(1) + _F32(gamma) * _F32(it)), -power)
    elif policy == 'multistep':
        if current_step < len(p.stepvalue) and it >= p.stepvalue[current_step]:
            current_step += 1
        rate = base * math.pow(gamma, current_step)
    elif policy == 'poly':
        rate = base * math.pow(float(_F32(1) - _F32(it) / _F32(p.max_iter)), power)
    elif policy == 'sigmoid':
        rate = base * (1.0 / (1.0 + math.exp(-gamma * (float(it) - float(p.stepsize)))))
    else:
        raise SolverError('lr_policy: unknown learning rate policy %r (known: %s)' % (policy, ', '.join(LR_POLICIES)))
    return float(_F32(rate)), current_step


def _log_outputs(kind, net, values):
    """Caffe's ``<kind> net output #k: name = v (* w = l loss)`` lines; returns the ``(name, value)`` pairs."""
    pairs = []
    for name, vals in zip(net.outputs, values):
        w = _F32(net.blob_loss_weights[name])
        for v in vals:
            extra = (' (* %s = %s loss)' % (_g(w), _g(_F32(w * v)))) if w else ''
            log.info('    %s net output #%d: %s = %s%s', kind, len(pairs), name, _g(v), extra)
            pairs.append((name, float(v)))
    return pairs


def _named(pairs):
    """``{name: value}`` of output pairs; a name with several values becomes ``name[0]``, ``name[1]``, ..."""
    counts = {}
    for name, _ in pairs:
        counts[name] = counts.get(name, 0) + 1
    out, seen = {}, {}
    for name, v in pairs:
        if counts[name] == 1:
            out[name] = v
        else:
            k = seen.get(name, 0)
            out['%s[%d]' % (name, k)] = v
            seen[name] = k + 1
    return out


def _first_non_finite(net):
    """A phrase naming the first layer whose weights or output are non-finite."""
    xp = backend.get_xp()
    for i, (lname, layer) in enumerate(zip(net.layer_names, net.layers)):
        bad_params = [j for j, b in enumerate(layer.blobs) if not bool(xp.isfinite(b.xdata).all())]
        bad_tops = [net.top_names[lname][j] for j, t in enumerate(net.top_vecs[i])
                    if t.count and not bool(xp.isfinite(t.xdata).all())]
        if bad_params:
            return 'layer %r (%s): its weights (param %s) are non-finite: an earlier update diverged' % (
                lname, layer.type, ', '.join(str(j) for j in bad_params))
        if bad_tops:
            return 'layer %r (%s): its output %s is non-finite' % (
                lname, layer.type, ', '.join(repr(t) for t in bad_tops))
    return 'no layer output is non-finite; the loss sum overflowed'


# -- the solver ----------------------------------------------------------------------
class Solver:
    """Base of every solver: Caffe's Solver (nets, stepping, testing, snapshots).

    ``Solver(path)`` builds the solver the file's ``type`` names; a subclass
    (``SGDSolver(path)``, ...) always builds its own kind, as in pycaffe.
    The update itself (``_presolve``, ``apply_update`` and the ``history`` a
    snapshot saves) is SGDSolver's, as in Caffe.
    """

    type_name = None
    history = ()   # the update rule's history blobs, in Caffe's order

    def __new__(cls, param=None, source=None):
        loaded = None
        if cls is Solver:
            loaded = _solver_param(param, source)
            cls = solver_class(loaded[0].type, loaded[1])
        self = object.__new__(cls)
        self._loaded = loaded   # __init__ takes it, so that the file is read (and warned about) once
        return self

    def __init__(self, param, source=None):
        self.param, self._source = self.__dict__.pop('_loaded', None) or _solver_param(param, source)
        p = self.param
        self.callbacks = []
        self._listeners = []
        self._action_fn = None
        self.requested_early_exit = False
        self.allow_nan = False
        self.iter = 0
        self.current_step = 0
        self.losses = []
        self.smoothed_loss = 0.0
        self.last_loss = None
        self.last_lr = None
        self._timer = (time.perf_counter(), 0)
        # data-parallel training: every rank's snapshot state, gathered for rank 0's sidecar
        self.gather_rank_states = None
        check_solver_param(p, self._source)
        self._sanity_check()
        log.info('Initializing solver from parameters: \n%s', to_text(p))
        rank = runtime.solver_rank()
        if p.random_seed >= 0:
            backend.set_random_seed(p.random_seed + rank)
        self.net = build_train_net(p, self._source)
        # only the root solver tests (Caffe's Solver::Init)
        self.test_nets = build_test_nets(p, self._source, self.net) if rank == 0 else []
        for w in p.weights:
            self._load_weights(w)
        self._presolve()
        check_snapshot_writable(p, self._source)
        log.info('Solver scaffolding done.')

    def _err(self, field, msg):
        return field_error(self._source, field, msg)

    def _sanity_check(self):
        """A rule's own parameter checks (Caffe's SolverType::CheckSanity)."""

    def _presolve(self):
        """Allocate what the update keeps between iterations (Caffe's PreSolve)."""

    def apply_update(self):
        """Turn the gradients into a step of the weights (Caffe's pure virtual ApplyUpdate)."""
        raise NotImplementedError('%s has no update rule' % type(self).__name__)

    # -- nets -----------------------------------------------------------------------
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

    def _tagged_nets(self):
        """``(tag, net)`` pairs naming the nets in the sidecar: train, test0, test1, ..."""
        return [('train', self.net)] + [('test%d' % i, n) for i, n in enumerate(self.test_nets)]

    # -- callbacks, listeners and actions ----------------------------------------
    def add_callback(self, on_start=None, on_gradients_ready=None):
        """pycaffe's add_callback(on_start, on_gradients_ready): two callables, or one
        object with methods ``on_start`` and ``on_gradients_ready``."""
        if on_gradients_ready is None and on_start is not None and hasattr(on_start, 'on_gradients_ready'):
            obj = on_start
            on_start = getattr(obj, 'on_start', None)
            on_gradients_ready = obj.on_gradients_ready
        self.callbacks.append((on_start, on_gradients_ready))

    def add_listener(self, obj):
        """Call ``obj``'s on_start/on_display/on_test/on_snapshot/on_step_end/on_finish (each optional)."""
        self._listeners.append(obj)

    def remove_listener(self, obj):
        """Stop calling ``obj``; one that was not added is ignored."""
        if obj in self._listeners:
            self._listeners.remove(obj)

    def _notify(self, event, *args):
        for obj in list(self._listeners):
            fn = getattr(obj, event, None)
            if fn is not None:
                fn(self, *args)

    def set_action_function(self, fn):
        """``fn()`` returns 'none', 'stop' or 'snapshot' (Caffe's SetActionFunction)."""
        self._action_fn = fn

    def _requested_action(self):
        if self._action_fn is None:
            return SolverAction.NONE
        return self._action_fn() or SolverAction.NONE

    # -- stepping -----------------------------------------------------------------
    def step(self, iters):
        """Run ``iters`` training iterations (Caffe's Step)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.losses = []
        self.smoothed_loss = 0.0
        self._timer = (time.perf_counter(), self.iter)
        self._notify('on_start')
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self.callbacks:
                if on_start is not None:
                    on_start()
            display = bool(p.display) and self.iter % p.display == 0
            self.net.debug_info = display and p.debug_info
            loss = self._forward_backward()
            self._update_smoothed_loss(loss, start_iter, p.average_loss)
            info = self._display(loss) if display else None
            self._gradients_ready()
            self.apply_update()
            if info is not None:
                self._notify('on_display', dict(info, lr=self.last_lr))
            self.iter += 1
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT:
                if not self.allow_nan:
                    self._check_weights_finite()
                self.snapshot()
            self._notify('on_step_end')
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def _forward_backward(self):
        """The loss of one iteration, averaged over iter_size passes whose gradients add up in the diffs."""
        n = self.param.iter_size
        loss = 0.0
        for _ in range(n):
            loss += self.net.forward_backward()
        loss = float(_F32(loss) / _F32(n)) if n > 1 else float(_F32(loss))
        if not math.isfinite(loss):
            self._non_finite(loss)
        self.last_loss = loss
        return loss

    def _gradients_ready(self):
        """Every gradient is in its parameter's diff and the update has not run: pycaffe's
        on_gradients_ready callbacks run here (the place for a data-parallel allreduce)."""
        for _, on_grad in self.callbacks:
            if on_grad is not None:
                on_grad()

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

    def _display(self, loss):
        """Caffe's display lines; returns the listeners' info, less the rate the update has yet to compute."""
        t0, it0 = self._timer
        lapse = time.perf_counter() - t0
        per_s = (self.iter - it0) / (lapse if lapse else 1.0)
        log.info('Iteration %d (%s iter/s, %ss/%d iters), loss = %s', self.iter, _g(per_s),
                 _g(lapse), self.param.display, _g(self.smoothed_loss))
        self._timer = (time.perf_counter(), self.iter)
        net = self.net
        outputs = _log_outputs('Train', net, [net.blobs[name].host_data().ravel() for name in net.outputs])
        return dict(iter=self.iter, loss=loss, smoothed_loss=float(self.smoothed_loss), outputs=_named(outputs),
                    iters_per_s=per_s if self.iter > it0 else None)

    def _non_finite(self, loss):
        """Name the first layer whose output (or weights) turned non-finite; raise unless allow_nan."""
        msg = ('Iteration %d: loss = %s; first non-finite layer: %s; lower base_lr (now %s) or use '
               'clip_gradients' % (self.iter, _g(loss), _first_non_finite(self.net), _g(self.param.base_lr)))
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

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solve), from a snapshot if given."""
        p = self.param
        log.info('Solving %s', self.net.name)
        log.info('Learning Rate Policy: %s', p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            log.info('Restoring previous solver status from %s', resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        # one lock per prefix: the root solver's (the other ranks of a multi-GPU run share its prefix)
        snapshots = (bool(p.snapshot_prefix) and bool(p.snapshot or p.snapshot_after_train)
                     and runtime.solver_rank() == 0)
        with state_io.snapshot_lock(p.snapshot_prefix) if snapshots else contextlib.nullcontext():
            self.step(p.max_iter - self.iter)
            if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                self.snapshot()
        if self.requested_early_exit:
            log.info('Optimization stopped early.')
        else:
            self._final_display(start_iter)
            if p.test_interval and self.iter % p.test_interval == 0:
                self.test_all()
            log.info('Optimization Done.')
        self._notify('on_finish')

    def _final_display(self, start_iter):
        """After the last update: one more forward pass for the displayed loss, as Caffe's Solve."""
        p = self.param
        if not (p.display and self.iter % p.display == 0):
            return
        loss = float(self.net.forward_prefilled())
        self._update_smoothed_loss(loss, start_iter, p.average_loss)
        log.info('Iteration %d, loss = %s', self.iter, _g(self.smoothed_loss))
        outputs = [(name, float(v)) for name in self.net.outputs for v in self.net.blobs[name].host_data().ravel()]
        self._notify('on_display', dict(iter=self.iter, loss=loss, smoothed_loss=float(self.smoothed_loss),
                                        lr=learning_rate(p, self.iter, self.current_step)[0],
                                        outputs=_named(outputs), iters_per_s=None))

    # -- testing ------------------------------------------------------------------
    def test_all(self):
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Run test_iter batches of test net #id and log each output's mean (Caffe's Test).

        Returns the ``(output name, mean)`` pairs as logged; None when a stop request interrupted it."""
        p = self.param
        log.info('Iteration %d, Testing net (#%d)', self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        self._ensure_shared(net)
        n_iter = p.test_iter[test_net_id]
        scores, loss = self._test_batches(net, n_iter)
        if self.requested_early_exit:
            log.info('Test interrupted.')
            return None
        if p.test_compute_loss and n_iter:
            loss /= _F32(n_iter)
            log.info('Test loss: %s', _g(loss))
        results = _log_outputs('Test', net, [s / _F32(n_iter) for s in scores or []])
        self._notify('on_test', test_net_id, _named(results))
        return results

    def _test_batches(self, net, n_iter):
        """Sums of each output over ``n_iter`` forward passes (None if none ran) and of the loss."""
        scores = None
        loss = _F32(0)
        for _ in range(n_iter):
            self._handle_requests_while_testing()
            if self.requested_early_exit:
                break
            iter_loss = net.forward_prefilled()
            if self.param.test_compute_loss:
                loss += _F32(iter_loss)
            vals = [net.blobs[o].host_data().ravel() for o in net.outputs]
            if scores is None:
                scores = [v.astype(np.float32).copy() for v in vals]
            else:
                for s, v in zip(scores, vals):
                    s += v
        return scores, loss

    def _handle_requests_while_testing(self):
        request = self._requested_action()
        while request != SolverAction.NONE:
            if request == SolverAction.SNAPSHOT:
                self.snapshot()
            elif request == SolverAction.STOP:
                self.requested_early_exit = True
            request = self._requested_action()

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
        return state_io.snapshot_filename(self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self):
        """Write the weights and the solver state (Caffe's Snapshot); returns the state's path.
        In data-parallel training only rank 0 writes; the other ranks hand it their state."""
        p = self.param
        mine = state_io.rank_state(self._tagged_nets())
        if runtime.solver_rank() > 0:
            if self.gather_rank_states is not None:
                self.gather_rank_states(mine)
            return None
        ranks = self.gather_rank_states(mine) if self.gather_rank_states is not None else None
        hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        kind = 'HDF5 file' if hdf5 else 'binary proto file'
        model = self.snapshot_filename('.caffemodel.h5' if hdf5 else '.caffemodel')
        state_file = self.snapshot_filename('.solverstate.h5' if hdf5 else '.solverstate')
        writing = model
        try:
            log.info('Snapshotting to %s %s', kind, model)
            (self.net.save_hdf5 if hdf5 else self.net.save)(model, write_diff=p.snapshot_diff)
            writing = state_file + state_io.SIDECAR_SUFFIX
            state_io.write_sidecar(state_file, self.iter, mine['layers'], ranks)
            log.info('Snapshotting solver state to %s %s', kind, state_file)
            writing = state_file
            state_io.write_state(state_file, self._saved_state(model))
        except OSError as e:      # a full disk; every file is written atomically, so nothing is half-written
            if writing == state_file:     # the sidecar means nothing without its state
                with contextlib.suppress(OSError):
                    os.unlink(state_file + state_io.SIDECAR_SUFFIX)
            raise state_io.snapshot_write_error(writing, self.iter, p.snapshot_prefix, e) from None
        self._notify('on_snapshot', model, state_file)
        return state_file

    def _saved_state(self, model_filename):
        return state_io.SavedState(self.iter, self.current_step, model_filename,
                                   [h.host_data() for h in self.history])

    def solver_state(self, model_filename=''):
        """A caffe_pb2.SolverState of this solver (iter, learned_net, history, current_step)."""
        return state_io.state_to_proto(self._saved_state(model_filename))

    def restore(self, state_file):
        """Resume from a .solverstate (or .solverstate.h5), Caffe's or caffeine's."""
        state_file = os.fspath(state_file)
        saved = state_io.read_state(state_file)
        state_io.check_history(state_file, saved.history, [h.shape for h in self.history],
                               '%s solver on net %r' % (self.type_name, self.net.name))
        if saved.learned_net:
            self._restore_weights(state_file, state_io.resolve_learned_net(saved.learned_net, state_file))
        self.iter = saved.iter
        self.current_step = saved.current_step
        log.info('SGDSolver: restoring history')
        for hb, arr in zip(self.history, saved.history):
            backend.copy_into(hb.xdata, arr.reshape(hb.shape))
        state_io.apply_sidecar(state_file, self.iter, self._tagged_nets(), runtime.solver_rank(),
                               runtime.solver_count())

    def _restore_weights(self, state_file, model):
        try:
            res = self.net.copy_from(model)
        except CaffeineError as e:
            raise SolverError('%s: snapshot does not fit this net (%s)' % (state_file, e))
        owners = [n for n, layer in zip(self.net.layer_names, self.net.layers) if layer.blobs]
        if owners and not any(n in res['copied'] for n in owners):
            raise SolverError('%s: snapshot is from a different net: its weights %s match no layer '
                              'of net %r' % (state_file, model, self.net.name))


# -- the update rules ------------------------------------------------------------------
@_solver_type('SGD')
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: h = lr * g + m * h; w -= h.

    As Caffe's SGDSolver, the base of every rule below: the learning-rate
    schedule, ApplyUpdate (clipping, iter_size normalization, regularization,
    the rule's update value, ``net.update()``) and the history.  A rule
    overrides ``compute_update_value(i, rate)`` and, when it keeps more than one
    history blob per parameter, ``history_slots``.
    """

    history_slots = 1

    # -- history ---------------------------------------------------------------------
    def _blob_like(self, p):
        b = Blob()
        b.reshape(p.shape)
        return b

    def _presolve(self):
        """Allocate ``history_slots`` zeroed history blobs per parameter (Caffe's order) and the work buffers."""
        params = self.net.learnable_params
        self._slots = [[self._blob_like(p) for p in params] for _ in range(self.history_slots)]
        self.history = [b for slot in self._slots for b in slot]
        self.update_buffers = [self._blob_like(p) for p in params]
        self.temp = [self._blob_like(p) for p in params]
        for h in self.history:   # device memory in GPU mode
            h.xdata.fill(0)

    def _history(self, i):
        """Parameter ``i``'s history arrays, one per slot."""
        return tuple(slot[i].xdata for slot in self._slots)

    # -- the update ------------------------------------------------------------------
    def get_learning_rate(self):
        """The rate for the current iteration (Caffe's GetLearningRate); multistep advances current_step."""
        rate, step = learning_rate(self.param, self.iter, self.current_step)
        if self.param.lr_policy == 'multistep' and step != self.current_step:
            log.info('MultiStep Status: Iteration %d, step = %d', self.iter, step)
        self.current_step = step
        return rate

    def apply_update(self):
        """Caffe's ApplyUpdate: rate, clipping, normalization, regularization, the
        solver's update value, then ``net.update()``."""
        rate = self.get_learning_rate()
        self.last_lr = rate
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

    def _refuse_momentum(self, rule):
        if self.param.momentum != 0:
            raise self._err('momentum', 'momentum %g cannot be used with %s (remove it)' % (self.param.momentum, rule))

    def _rms_scaled_step(self, diff, h, u, lr):
        """diff = lr * diff / (sqrt(h) + delta), with ``u`` as scratch (AdaGrad's and RMSProp's last step)."""
        xp = backend.get_xp()
        xp.sqrt(h, out=u)
        u += _F32(self.param.delta)
        xp.divide(diff, u, out=u)
        xp.multiply(u, lr, out=diff)

    def _local_rate(self, i, rate):
        return _F32(rate) * _F32(self.net.params_lr[i])

    def compute_update_value(self, i, rate):
        """Turn parameter ``i``'s gradient (its diff) into the step ``net.update()`` subtracts."""
        xp = backend.get_xp()
        prm = self.net.learnable_params[i]
        (h,) = self._history(i)
        diff, tmp = prm.xdiff, self.temp[i].xdata
        lr = self._local_rate(i, rate)
        k = fused.get(fused.SGD_UPDATE)  # GPU: one kernel
        if k is not None:
            k(lr, _F32(self.param.momentum), diff, h)
            return
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
        (h,) = self._history(i)
        diff = prm.xdiff
        u, tmp = self.update_buffers[i].xdata, self.temp[i].xdata
        m = _F32(self.param.momentum)
        lr = self._local_rate(i, rate)
        k = fused.get(fused.NESTEROV_UPDATE)
        if k is not None:
            k(lr, m, diff, h)
            return
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
        self._refuse_momentum('AdaGrad')

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        (h,) = self._history(i)
        diff, u = self.net.learnable_params[i].xdiff, self.update_buffers[i].xdata
        k = fused.get(fused.ADAGRAD_UPDATE)
        if k is not None:
            k(self._local_rate(i, rate), _F32(self.param.delta), diff, h)
            return
        xp.multiply(diff, diff, out=u)
        h += u
        self._rms_scaled_step(diff, h, u, self._local_rate(i, rate))


@_solver_type('RMSProp')
class RMSPropSolver(SGDSolver):
    """RMSProp: h = d * h + (1 - d) * g^2; w -= lr * g / (sqrt(h) + delta)."""

    def _sanity_check(self):
        self._refuse_momentum('RMSProp')
        if not 0 <= self.param.rms_decay < 1:
            raise self._err('rms_decay', 'must be in [0, 1), got %g' % self.param.rms_decay)

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        (h,) = self._history(i)
        diff, u = self.net.learnable_params[i].xdiff, self.update_buffers[i].xdata
        d = _F32(self.param.rms_decay)
        k = fused.get(fused.RMSPROP_UPDATE)
        if k is not None:
            k(self._local_rate(i, rate), _F32(self.param.delta), d, diff, h)
            return
        xp.multiply(diff, diff, out=u)
        h *= d
        u *= _F32(1) - d
        h += u
        self._rms_scaled_step(diff, h, u, self._local_rate(i, rate))


@_solver_type('AdaDelta')
class AdaDeltaSolver(SGDSolver):
    """AdaDelta: g2 = m * g2 + (1 - m) * g^2; u = g * sqrt((u2 + delta) / (g2 + delta));
    u2 = m * u2 + (1 - m) * u^2; w -= lr * u  (history: g2, then u2)."""

    history_slots = 2

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        diff = self.net.learnable_params[i].xdiff
        hg, hu = self._history(i)
        u, t = self.update_buffers[i].xdata, self.temp[i].xdata
        m = _F32(self.param.momentum)
        delta = _F32(self.param.delta)
        lr = self._local_rate(i, rate)
        k = fused.get(fused.ADADELTA_UPDATE)
        if k is not None:
            k(lr, m, delta, diff, hg, hu)
            return
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
    """Adam: m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g^2;
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta), t = iter + 1,
    b1 = momentum, b2 = momentum2  (history: m, then v)."""

    history_slots = 2

    def compute_update_value(self, i, rate):
        xp = backend.get_xp()
        diff = self.net.learnable_params[i].xdiff
        m, v = self._history(i)
        t = self.temp[i].xdata
        b1 = _F32(self.param.momentum)
        b2 = _F32(self.param.momentum2)
        step = self.iter + 1
        correction = _F32(math.sqrt(1.0 - math.pow(float(b2), step)) / (1.0 - math.pow(float(b1), step)))
        lr = self._local_rate(i, rate)
        k = fused.get(fused.ADAM_UPDATE)
        if k is not None:
            k(_F32(lr * correction), b1, b2, _F32(self.param.delta), diff, m, v)
            return
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
