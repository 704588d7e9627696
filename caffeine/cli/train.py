"""caffeine train / test / time / extract_features, as Caffe's tools/caffe.

Caffe's single-dash spellings work too (``caffeine train -solver s.prototxt
-gpu 0``), and so do its underscore flag names (``--sigint_effect``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time as _time

import click
import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import backend
from ..data.db import DBWriter
from ..parallel.comm import NCCLCommunicator, nccl_unique_id
from ..parallel.launch import fail, mpi_launch, rank_setup, spawn
from ..parallel.sync import AgreedActions, DataParallel
from ..errors import CaffeineError
from ..net import TEST, TRAIN, Net
from ..onnx_engine import OrtNet, time_forward
from ..proto import caffe_pb2
from ..prototxt import _looks_like_path
from ..solver import SignalHandler, load_solver_param, solver_class
from ..summary import human_bytes, memory_report
from ..tensorboard import TensorBoardListener
from ..weights import check_weights_cover
from ..zoo import resolve_weights
from .device import parse_gpus, use_gpus

log = logging.getLogger('caffeine')

_EFFECTS = click.Choice(['stop', 'snapshot', 'none'])


def _stages(stage):
    out = []
    for s in stage:
        out += [x for x in s.split(',') if x]
    return out


def _weight_files(weights):
    """--weights a.caffemodel,zoo:NAME -> [(as given, local path)]: the one place
    where ``zoo:`` names are resolved (downloaded if needed)."""
    names = [w.strip() for w in (weights or '').split(',') if w.strip()]
    return [(w, resolve_weights(w)) for w in names]


def copy_layers(solver, weights):
    """--weights a.caffemodel,b.caffemodel: copy into the train net and every test net, and say what matched."""
    any_copied = False
    for w, path in _weight_files(weights):
        if not os.path.exists(path):
            raise CaffeineError('--weights %s: no such file' % w)
        res = solver.net.copy_from(path)
        for tn in solver.test_nets:
            tn.copy_from(path)
        with_blobs = [n for n in res['copied'] if solver.net.layer_dict[n].blobs]
        log.info('Copied weights from %s: %d layer(s) (%s)', w, len(with_blobs), ', '.join(with_blobs) or '-')
        if res['ignored']:
            log.info('Ignored layer(s) of %s not in net %r: %s', w, solver.net.name, ', '.join(res['ignored']))
        learnable = [n for n, layer in zip(solver.net.layer_names, solver.net.layers) if layer.blobs]
        missing = [n for n in learnable if n not in res['copied']]
        if missing:
            log.info('Layers of %r left as initialized: %s', solver.net.name, ', '.join(missing))
        any_copied |= bool(with_blobs)
    if not any_copied:
        raise CaffeineError('--weights %s: no layer name matches a layer with weights in net %r'
                            % (weights, solver.net.name))


# -- the progress bar ------------------------------------------------------------------
def progress_wanted():
    """A live bar only on a terminal, never in logs or CI."""
    if os.environ.get('CI') or os.environ.get('CAFFEINE_NO_PROGRESS'):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """A solver listener: a tqdm bar on stderr to max_iter, showing the smoothed loss and the
    first score of the lowest-numbered test net."""

    def __init__(self):
        self.bar = None
        self.score = None   # (test_net_id, name, value)

    def on_start(self, solver):
        p = solver.param
        if self.bar is None and p.max_iter > solver.iter:
            self.bar = tqdm(total=p.max_iter, initial=solver.iter, desc='train', unit='it',
                            dynamic_ncols=True, file=sys.stderr, leave=False)

    def on_test(self, solver, test_net_id, scores):
        if scores and (self.score is None or test_net_id <= self.score[0]):
            name, value = next(iter(scores.items()))
            self.score = (test_net_id, name.split('[')[0], value)

    def on_step_end(self, solver):
        if self.bar is None:
            return
        self.bar.update(solver.iter - self.bar.n)
        post = {'loss': '%.4g' % float(solver.smoothed_loss)}
        if self.score is not None:
            post[self.score[1]] = '%.4g' % self.score[2]
        self.bar.set_postfix(post, refresh=False)

    def on_finish(self, solver):
        self.close()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def progress_bar(solver, progress=None):
    """While the block runs, ``solver`` draws a ProgressBar (progress None: on a terminal only);
    console log lines print above the bar."""
    if progress is None:
        progress = progress_wanted()
    if not progress:
        yield None
        return
    consoles = [lg for lg in (logging.root, log) if any(
        isinstance(h, logging.StreamHandler) and getattr(h, 'stream', None) in (sys.stdout, sys.stderr)
        for h in lg.handlers)]
    bar = ProgressBar()
    solver.add_listener(bar)
    try:
        with logging_redirect_tqdm(loggers=consoles):
            yield bar
    finally:
        solver.remove_listener(bar)
        bar.close()


@click.command('train')
@click.option('--solver', default='', help='The solver definition (solver.prototxt).')
@click.option('--weights', default='', help='Weights to fine-tune from: a.caffemodel[,b.caffemodel], or zoo:NAME.')
@click.option('--snapshot', default='', help='A .solverstate (or .solverstate.h5) to resume from.')
@click.option('--gpu', default='', help='GPU id(s) to train on: 0, 0,1 (one process per GPU) or all '
              '(default: the solver\'s solver_mode, else the CPU).')
@click.option('--level', type=int, default=0, show_default=True, help='The train net state level.')
@click.option('--stage', multiple=True, help='Train net state stage(s): a,b or repeated.')
@click.option('--sigint-effect', '--sigint_effect', 'sigint_effect', type=_EFFECTS, default='stop',
              show_default=True, help='What SIGINT (Ctrl-C) does.')
@click.option('--sighup-effect', '--sighup_effect', 'sighup_effect', type=_EFFECTS, default='snapshot',
              show_default=True, help='What SIGHUP does.')
@click.option('--allow-nan', '--allow_nan', 'allow_nan', is_flag=True,
              help='Keep training when the loss turns NaN or infinite.')
@click.option('--progress/--no-progress', default=None, help='Live progress bar (default: on a terminal only).')
@click.option('--tensorboard', 'tensorboard_dir', default='', metavar='DIR',
              help='Write TensorBoard event files to DIR as training runs (a resumed run continues the curves).')
@click.option('--tensorboard-histograms', is_flag=True,
              help='With --tensorboard: also parameter and gradient norms and parameter histograms at each display.')
def train_cmd(solver, weights, snapshot, gpu, level, stage, sigint_effect, sighup_effect, allow_nan, progress,
              tensorboard_dir, tensorboard_histograms):
    """Train or fine-tune a model (Caffe's `caffe train`); under mpiexec/srun, one model on every rank."""
    if not solver:
        raise CaffeineError('train: need a solver definition (--solver solver.prototxt)')
    if snapshot and weights:
        raise CaffeineError('train: give --snapshot to resume training or --weights to fine-tune, not both')
    if tensorboard_histograms and not tensorboard_dir:
        raise CaffeineError('train: --tensorboard-histograms needs --tensorboard DIR')
    param, source = load_solver_param(solver)
    param.train_state.level = level
    param.train_state.stage.extend(_stages(stage))
    gpus = parse_gpus(gpu)
    comm = mpi_launch()
    if not gpus and param.HasField('solver_mode') and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        dev = param.device_id if param.HasField('device_id') else 0
        if backend.gpu_available():
            gpus = [dev]
        else:
            try:
                backend.set_mode_gpu()
            except backend.BackendError as e:
                log.warning('%s asks for solver_mode: GPU, but %s; training on the CPU', source, e)
    opts = dict(snapshot=snapshot, weights=weights, sigint_effect=sigint_effect, sighup_effect=sighup_effect,
                allow_nan=allow_nan, progress=progress, tensorboard=(tensorboard_dir, tensorboard_histograms))
    if comm is not None:
        _train_mpi(comm, gpus, param, source, opts)
    elif len(gpus) > 1:
        use_gpus(gpus[:1], 'train')       # checks CuPy and the devices before starting the ranks
        n = backend.device_count()
        if max(gpus) >= n or len(set(gpus)) != len(gpus):
            raise CaffeineError('--gpu %s: give distinct ids of the %d device(s) found'
                                % (','.join(str(g) for g in gpus), n))
        uid = nccl_unique_id()
        log.info('Using GPUs %s: one process each', ', '.join(str(g) for g in gpus))
        spawn(_gpu_rank, len(gpus), (gpus, uid, param.SerializeToString(), source, opts))
    else:
        use_gpus(gpus, 'train')
        if gpus:
            param.device_id = gpus[0]
        _train(param, source, opts)


def _train_mpi(comm, gpus, param, source, opts):
    """One rank of ``mpiexec -n N caffeine train``: MPI reduces on CPUs; with GPUs, MPI carries NCCL's id."""
    try:
        local_rank, local_size = comm.local_rank_and_size()
        rank_setup(comm.size, comm.rank, local_size)
        reducer = comm
        if gpus:
            gpu = gpus[local_rank % len(gpus)]
            use_gpus([gpu], 'train')
            param.device_id = gpu
            # NCCL takes one rank per GPU; ranks sharing a GPU reduce over MPI through host memory
            shared = comm.allreduce_max(int(local_size > len(gpus)))
            if shared:
                if comm.rank == 0:
                    log.warning('%d ranks share %d GPU(s) on a machine: reducing over MPI through host memory, '
                                'not NCCL', local_size, len(gpus))
            else:
                uid = comm.bcast_object(nccl_unique_id() if comm.rank == 0 else None)
                reducer = NCCLCommunicator(uid, comm.size, comm.rank)
        else:
            use_gpus([], 'train')
        log.info('Data-parallel training on %d ranks (%s)', comm.size, reducer.name)
        _train(param, source, opts, reducer)
    except BaseException as e:
        fail(comm, e, debug=os.environ.get('CAFFEINE_DEBUG') == '1')


def _gpu_rank(rank, gpus, uid, param_bytes, source, opts):
    """One spawned process of ``caffeine train --gpu 0,1,...``."""
    logging.basicConfig(level=logging.INFO, format='%(message)s', stream=sys.stderr)
    rank_setup(len(gpus), rank, len(gpus))
    use_gpus([gpus[rank]], 'train')
    param = caffe_pb2.SolverParameter()
    param.ParseFromString(param_bytes)
    param.device_id = gpus[rank]
    _train(param, source, opts, NCCLCommunicator(uid, len(gpus), rank))


def _train(param, source, opts, comm=None):
    """Build the solver, resume or fine-tune, and solve; with ``comm``, as one of its ranks."""
    cls = solver_class(param.type, source)
    tb_dir, tb_histograms = opts['tensorboard']
    # in data-parallel training rank 0 alone writes, as it alone logs and snapshots
    board = TensorBoardListener(tb_dir, tb_histograms) if tb_dir and (comm is None or comm.rank == 0) else None
    with SignalHandler(opts['sigint_effect'], opts['sighup_effect']) as handler:
        s = cls(param, source=source)
        with s:   # the data layers' prefetch threads stop however training ends
            s.allow_nan = opts['allow_nan']
            if opts['snapshot']:
                log.info('Resuming from %s', opts['snapshot'])
                s.restore(opts['snapshot'])
            elif opts['weights']:
                copy_layers(s, opts['weights'])
            action = handler.action
            progress = opts['progress']
            if comm is not None:
                dp = DataParallel(s, comm)
                dp.bcast()
                s.add_callback(dp)
                if s.param.layer_wise_reduce:
                    s.net.after_backward(dp)
                s.gather_rank_states = dp.gather_states
                action = AgreedActions(dp, handler.action)
                s.add_callback(action)
                progress = progress if comm.rank == 0 else False
            s.set_action_function(action)
            log.info('Starting Optimization')
            if board is not None:
                s.add_listener(board)
            # a diverging loss is reported by the solver itself, naming the layer
            with np.errstate(over='ignore', invalid='ignore', divide='ignore'), progress_bar(s, progress), \
                    (board or contextlib.nullcontext()):
                s.solve()


def _load_net(model, phase, weights, level, stage, memory_plan=False, require_all=False):
    """The net with its --weights; ``require_all``: every layer with parameters must get
    weights (``test``: scoring random weights is never what was meant)."""
    if _looks_like_path(model) and not os.path.exists(model):
        raise CaffeineError('--model %s: no such file' % model)
    net = Net(model, phase, level=level, stages=_stages(stage), memory_plan=memory_plan)
    if not net.layers:
        raise CaffeineError('--model %s: net %r has no layers in the %s phase: nothing to run'
                            % (model if _looks_like_path(model) else '<text>', net.name,
                               caffe_pb2.Phase.Name(phase)))
    files = _weight_files(weights)
    copied = []
    for w, path in files:
        res = net.copy_from(path)
        if not res['copied']:
            raise CaffeineError('--weights %s: no layer name matches a layer of net %r' % (w, net.name))
        copied += res['copied']
    if require_all:
        check_weights_cover(net, copied, [w for w, _ in files], 'give --allow-missing-weights')
    return net


@click.command('test')
@click.option('--model', default='', help='The net definition (TEST phase).')
@click.option('--weights', default='', help='Trained weights (.caffemodel, .caffemodel.h5 or zoo:NAME).')
@click.option('--iterations', type=int, default=50, show_default=True, help='Batches to score.')
@click.option('--gpu', default='', help='GPU id (default: CPU).')
@click.option('--level', type=int, default=0)
@click.option('--stage', multiple=True)
@click.option('--allow-missing-weights', '--allow_missing_weights', 'allow_missing_weights', is_flag=True,
              help='Score even when the weights leave layers with parameters at their initialization.')
def test_cmd(model, weights, iterations, gpu, level, stage, allow_missing_weights):
    """Score a trained model on its TEST-phase data (Caffe's `caffe test`)."""
    if not model:
        raise CaffeineError('test: need a model definition to score (--model)')
    if not weights:
        raise CaffeineError('test: need model weights to score (--weights)')
    use_gpus(parse_gpus(gpu), 'test')
    net = _load_net(model, TEST, weights, level, stage, require_all=not allow_missing_weights)
    log.info('Running for %d iterations.', iterations)
    scores, names = None, []
    loss = np.float32(0)
    for i in range(iterations):
        iter_loss = net.forward_prefilled()
        loss += np.float32(iter_loss)
        vals = []
        for name in net.outputs:
            for v in net.blobs[name].host_data().ravel():
                log.info('Batch %d, %s = %s', i, name, '%g' % v)
                vals.append(v)
                if i == 0:
                    names.append(name)
        vals = np.asarray(vals, dtype=np.float32)
        scores = vals if scores is None else scores + vals
    loss /= np.float32(max(iterations, 1))
    log.info('Loss: %g', loss)
    if scores is None:
        return
    for name, s in zip(names, scores):
        mean = np.float32(s / np.float32(iterations))
        w = np.float32(net.blob_loss_weights[name])
        extra = (' (* %g = %g loss)' % (w, np.float32(w * mean))) if w else ''
        log.info('%s = %g%s', name, mean, extra)


@click.command('time')
@click.option('--model', default='', help='The net definition to time.')
@click.option('--weights', default='', help='Optional weights.')
@click.option('--iterations', type=int, default=50, show_default=True)
@click.option('--gpu', default='', help='GPU id (default: CPU).')
@click.option('--phase', type=click.Choice(['TRAIN', 'TEST']), default='TRAIN', show_default=True)
@click.option('--level', type=int, default=0)
@click.option('--stage', multiple=True)
@click.option('--engine', type=click.Choice(['caffeine', 'onnxruntime']), default='caffeine', show_default=True,
              help='onnxruntime: time whole forward passes of the TEST net run by ONNX Runtime.')
def time_cmd(model, weights, iterations, gpu, phase, level, stage, engine):
    """Benchmark forward and backward, layer by layer (Caffe's `caffe time`)."""
    if not model:
        raise CaffeineError('time: need a model definition to time (--model)')
    if iterations < 1:
        raise CaffeineError('time: --iterations must be at least 1')
    if engine == 'onnxruntime':
        return time_forward(OrtNet(_load_net(model, TEST, weights, level, stage)), iterations, log)
    use_gpus(parse_gpus(gpu), 'time')
    # a TEST net without a backward pass runs with the memory planner, as deployed
    net = _load_net(model, TRAIN if phase == 'TRAIN' else TEST, weights, level, stage,
                    memory_plan=(phase != 'TRAIN'))
    log.info('Performing Forward')
    initial_loss = net.forward_prefilled()
    log.info('Initial loss: %g', initial_loss)
    log.info('Performing Backward')
    net.backward_all()
    layers = net.layers
    n = len(layers)
    fwd = [0.0] * n
    bwd = [0.0] * n
    fwd_total = bwd_total = 0.0
    clock = _time.perf_counter
    sync = backend.synchronize
    log.info('*** Benchmark begins ***')
    log.info('Testing for %d iterations.', iterations)
    total_start = clock()
    for j in range(iterations):
        it_start = clock()
        for i in range(n):
            t0 = clock()
            layers[i].Forward(net.bottom_vecs[i], net.top_vecs[i])
            sync()
            fwd[i] += clock() - t0
        t1 = clock()
        fwd_total += t1 - it_start
        for i in range(n - 1, -1, -1):
            t0 = clock()
            if net.layer_need_backward[i]:
                layers[i].Backward(net.top_vecs[i], net.bottom_need_backward[i], net.bottom_vecs[i])
                sync()
            bwd[i] += clock() - t0
        bwd_total += clock() - t1
        log.info('Iteration: %d forward-backward time: %g ms.', j + 1, (clock() - it_start) * 1000)
    total = clock() - total_start
    log.info('Average time per layer: ')
    for i, name in enumerate(net.layer_names):
        log.info('%10s\tengine: %s', name, layers[i].engine_name())
        log.info('%10s\tforward: %g ms.', name, fwd[i] * 1000 / iterations)
        log.info('%10s\tbackward: %g ms.', name, bwd[i] * 1000 / iterations)
    log.info('Average Forward pass: %g ms.', fwd_total * 1000 / iterations)
    log.info('Average Backward pass: %g ms.', bwd_total * 1000 / iterations)
    log.info('Average Forward-Backward: %g ms.', total * 1000 / iterations)
    log.info('Total Time: %g ms.', total * 1000)
    log.info('*** Benchmark ends ***')
    mem = memory_report(net)
    log.info('Memory: blobs %s%s (%s without it), parameters %s.', human_bytes(mem['blob_bytes']),
             ' with the memory planner' if net.memory_planned else '', human_bytes(mem['naive_blob_bytes']),
             human_bytes(mem['param_bytes']))


# -- extract_features ----------------------------------------------------------------
@click.command('extract_features')
@click.argument('weights')
@click.argument('model')
@click.argument('blobs')
@click.argument('dbs')
@click.argument('num_mini_batches', type=int)
@click.argument('extra', nargs=-1)
@click.option('--backend', 'db_backend', type=click.Choice(['lmdb', 'leveldb']), default=None,
              help='Database kind to write (default lmdb).')
@click.option('--gpu', default='', help='GPU id (default: CPU).')
def extract_features_cmd(weights, model, blobs, dbs, num_mini_batches, extra, db_backend, gpu):
    """Save blobs of a trained net, batch by batch, as Datum float_data in new databases.

    WEIGHTS MODEL BLOB[,BLOB...] DB[,DB...] NUM_MINI_BATCHES, as Caffe's
    extract_features (whose trailing `lmdb|leveldb [CPU|GPU] [DEVICE_ID]` are accepted too).
    """
    extra = list(extra)
    if extra and extra[0].lower() in ('lmdb', 'leveldb'):
        db_backend = db_backend or extra.pop(0).lower()
    if extra and extra[0].upper() in ('CPU', 'GPU'):
        mode = extra.pop(0).upper()
        dev = extra.pop(0) if extra else '0'
        if mode == 'GPU' and not gpu:
            gpu = dev
    if extra:
        raise CaffeineError('extract_features: unexpected arguments %s' % ' '.join(extra))
    db_backend = db_backend or 'lmdb'
    blob_names = [b for b in blobs.split(',') if b]
    db_names = [d for d in dbs.split(',') if d]
    if len(blob_names) != len(db_names):
        raise CaffeineError('extract_features: %d blob name(s) but %d database name(s): give one database per blob'
                            % (len(blob_names), len(db_names)))
    if num_mini_batches < 1:
        raise CaffeineError('extract_features: NUM_MINI_BATCHES must be at least 1')
    use_gpus(parse_gpus(gpu), 'extract_features')
    net = _load_net(model, TEST, weights, 0, ())
    for b in blob_names:
        if not net.has_blob(b):
            raise CaffeineError('Unknown feature blob name %s in the network %s' % (b, model))
    for d in db_names:
        if os.path.exists(d):
            raise CaffeineError('%s already exists: give a new database name' % d)
    log.info('Extracting Features')
    out = []
    try:
        for d in db_names:
            out.append(DBWriter(d, db_backend))
    except BaseException:
        for db in out:
            db.close(False)
        raise
    ok = False
    try:
        counts = [0] * len(blob_names)
        datum = caffe_pb2.Datum()
        for _ in range(num_mini_batches):
            net.forward_prefilled()
            for i, name in enumerate(blob_names):
                blob = net.blobs[name]
                data = blob.host_data()
                num = blob.shape[0] if blob.shape else 1
                feats = data.reshape(num, -1)
                try:
                    c, h, w = blob.channels, blob.height, blob.width
                except CaffeineError:
                    c, h, w = feats.shape[1], 1, 1
                for n in range(num):
                    datum.Clear()
                    datum.channels, datum.height, datum.width = c, h, w
                    datum.float_data.extend(feats[n].tolist())
                    out[i].put(b'%010d' % counts[i], datum.SerializeToString())
                    counts[i] += 1
                    if counts[i] % 1000 == 0:
                        out[i].commit()
                        log.info('Extracted features of %d query images for feature blob %s', counts[i], name)
        for i, name in enumerate(blob_names):
            if counts[i] % 1000 != 0:
                log.info('Extracted features of %d query images for feature blob %s', counts[i], name)
        ok = True
    finally:
        for db in out:
            db.close(ok)
    log.info('Successfully extracted the features!')


def _alias(cmd, name):
    c = click.Command(name, callback=cmd.callback, params=cmd.params, help=cmd.help, hidden=True,
                      short_help=cmd.short_help)
    return c


COMMANDS = [train_cmd, test_cmd, time_cmd, extract_features_cmd,
            _alias(extract_features_cmd, 'extract-features')]
