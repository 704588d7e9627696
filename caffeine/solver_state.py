"""Solver state on disk: Caffe's .solverstate (binary proto or HDF5) and caffeine's sidecar.

The solver keeps its loop; this module keeps the files, as Caffe keeps
``SnapshotSolverState``/``RestoreSolverStateFrom*`` apart from ``Step``:

- ``SavedState(iter, current_step, learned_net, history)``: what a solverstate
  holds, with ``history`` a list of host float32 arrays in Caffe's order
  (all parameters' first slot, then all parameters' second slot, ...).
- ``write_state(path, state)`` / ``read_state(path)``: a path ending in ``.h5``
  is Caffe's HDF5 layout (``iter``, ``learned_net``, ``current_step``,
  ``history/0..``), any other path a binary ``caffe_pb2.SolverState``.
- ``check_history(path, arrays, shapes, who)``: the arrays fit the solver's
  history (Caffe's legacy 4-d shapes accepted).
- ``resolve_learned_net(learned, state_file)``: where the weights named in a
  state are (the current directory first, as Caffe, then beside the state).
- The sidecar ``<state>.caffeine.json`` holds caffeine's random-generator state
  and the ``get_state()`` of layers that offer one (a data layer's cursor), so a
  resumed run continues bit for bit: ``write_sidecar``, ``read_sidecar``,
  ``layer_states(nets)``, ``set_layer_states(nets, states)``.  In data-parallel
  training rank 0's sidecar also lists every rank's ``rank_state`` under ``ranks``.

Nothing here builds a Net: the layer-state helpers take ``(tag, net)`` pairs
and read only ``net.layer_names`` and ``net.layers``.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
from dataclasses import dataclass, field

import h5py
import numpy as np

from . import backend
from .errors import CaffeineError, SolverError
from .proto import caffe_pb2
from .utils import atomic_write, remove_stale_temps
from .weights import array_to_blob_proto, blob_proto_to_array

log = logging.getLogger('caffeine')

SIDECAR_SUFFIX = '.caffeine.json'


@dataclass
class SavedState:
    """The contents of a solverstate: Caffe's SolverState message, with host arrays for history."""
    iter: int = 0
    current_step: int = 0
    learned_net: str = ''
    history: list = field(default_factory=list)


def snapshot_filename(prefix, iteration, extension):
    """Caffe's SnapshotFilename: ``<prefix>_iter_<N><extension>``."""
    return '%s_iter_%d%s' % (prefix, iteration, extension)


def latest_snapshot(prefix):
    """The solverstate of ``prefix`` with the highest iteration on disk, or None."""
    best, best_iter = None, -1
    for path in glob.glob(glob.escape(prefix) + '_iter_*.solverstate*'):
        m = re.match(r'.*_iter_(\d+)\.solverstate(\.h5)?$', path)
        if m and int(m.group(1)) > best_iter:
            best, best_iter = path, int(m.group(1))
    return best


def snapshot_write_error(path, iteration, prefix, e):
    """The one-line SolverError for a snapshot that could not be written (a full disk)."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
    prev = latest_snapshot(prefix)
    kept = ('the previous snapshot %s is intact' % prev) if prev else 'there is no earlier snapshot'
    return SolverError('cannot write the snapshot of iteration %d: %s: %s; training stopped, %s'
                       % (iteration, path, why, kept))


try:
    import fcntl
except ImportError:      # not on Windows: no lock
    fcntl = None


@contextlib.contextmanager
def snapshot_lock(prefix):
    """Hold ``<prefix>.lock`` while a training may write snapshots under ``prefix``: a second
    training on the same prefix refuses with one line.  Temporary files that killed
    writers left under the prefix are removed once the lock is held.  The lock file
    goes when the training ends (a killed process leaves it unlocked: it is reused).
    """
    if fcntl is None:
        yield
        return
    path = prefix + '.lock'
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield          # an unwritable folder: check_snapshot_writable has spoken, or no snapshots
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 32).decode('ascii', 'replace').strip() or '?'
            finally:
                os.close(fd)
            raise SolverError('snapshot_prefix %s is in use by another training (process %s holds %s): '
                              'give each training its own snapshot_prefix' % (prefix, holder, path))
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)       # the holder removed the file as we opened it: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, b'%d\n' % os.getpid())
        folder, base = os.path.split(os.path.abspath(prefix))
        remove_stale_temps(folder, base + '_iter_')
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def is_hdf5_state(path):
    return os.fspath(path).endswith('.h5')


# -- writing ---------------------------------------------------------------------------
def state_to_proto(state):
    """A caffe_pb2.SolverState of ``state`` (Caffe's SnapshotSolverStateToBinaryProto)."""
    st = caffe_pb2.SolverState()
    st.iter = state.iter
    st.learned_net = state.learned_net
    st.current_step = state.current_step
    for arr in state.history:
        array_to_blob_proto(arr, proto=st.history.add())
    return st


def write_state(path, state):
    """Write ``state`` atomically: HDF5 when ``path`` ends in .h5, else binary proto."""
    if is_hdf5_state(path):
        _write_state_hdf5(path, state)
    else:
        data = state_to_proto(state).SerializeToString()
        with atomic_write(path, 'wb') as f:
            f.write(data)


def _write_state_hdf5(path, state):
    with atomic_write(path, 'wb') as f:
        with h5py.File(f, 'w') as h:
            h.create_dataset('iter', data=np.int32(state.iter))
            _h5_write_string(h, 'learned_net', state.learned_net)
            h.create_dataset('current_step', data=np.int32(state.current_step))
            g = h.create_group('history')
            for i, arr in enumerate(state.history):
                g.create_dataset(str(i), data=np.asarray(arr, dtype=np.float32))


def _h5_write_string(h, name, s):
    """A scalar fixed-length, NUL-terminated string dataset, as HDF5's H5LTmake_dataset_string."""
    b = s.encode('utf-8')
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(b) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    sid = h5py.h5s.create(h5py.h5s.SCALAR)
    did = h5py.h5d.create(h.id, name.encode(), tid, sid)
    did.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(b + b'\0', dtype='S%d' % (len(b) + 1)))


# -- reading ---------------------------------------------------------------------------
def read_state(path):
    """The SavedState in a .solverstate (binary proto) or .solverstate.h5 file, Caffe's or caffeine's."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SolverError('%s: no such solver state file' % path)
    return _read_state_hdf5(path) if is_hdf5_state(path) else _read_state_proto(path)


def _read_state_proto(path):
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
    return SavedState(st.iter, st.current_step, st.learned_net if st.HasField('learned_net') else '', hist)


def _read_state_hdf5(path):
    try:
        h = h5py.File(path, 'r')
    except OSError as e:
        raise SolverError('%s: cannot open HDF5 solver state (%s)' % (path, e))
    with h:
        try:
            it = int(np.asarray(h['iter'][()]))
            step = int(np.asarray(h['current_step'][()])) if 'current_step' in h else 0
            learned = _h5_read_string(h['learned_net']) if 'learned_net' in h else ''
            g = h['history']
            hist = [np.asarray(g[str(i)], dtype=np.float32) for i in range(len(g))]
        except KeyError as e:
            raise SolverError('%s: not a Caffe HDF5 solver state (missing %s)' % (path, e))
    return SavedState(it, step, learned, hist)


def _h5_read_string(dataset):
    v = dataset[()]
    if isinstance(v, np.ndarray):
        v = v.tobytes()
    return (v.decode('utf-8') if isinstance(v, bytes) else str(v)).rstrip('\0')


def check_history(path, arrays, shapes, who):
    """Fail unless ``arrays`` fit history blobs of ``shapes`` (``who`` names the solver and net)."""
    if len(arrays) != len(shapes):
        raise SolverError('%s: snapshot is from a different net or solver type: it has %d history blobs, '
                          'this %s needs %d' % (path, len(arrays), who, len(shapes)))
    for i, (a, shape) in enumerate(zip(arrays, shapes)):
        shape = tuple(shape)
        legacy = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else shape
        count = int(np.prod(shape)) if shape else 1
        if a.size != count or tuple(a.shape) not in (shape, legacy):
            raise SolverError('%s: snapshot is from a different net: history blob %d has shape %s, '
                              'this net needs %s' % (path, i, list(a.shape), list(shape)))


def resolve_learned_net(learned, state_file):
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


# -- the sidecar -----------------------------------------------------------------------
def layer_states(nets):
    """``{'<tag>/<layer>': layer.get_state()}`` over ``(tag, net)`` pairs, for layers that have a state."""
    out = {}
    for tag, net in nets:
        for lname, layer in zip(net.layer_names, net.layers):
            state = layer.get_state()
            if state is not None:
                out['%s/%s' % (tag, lname)] = state
    return out


def set_layer_states(nets, states):
    """Hand each layer of ``(tag, net)`` pairs its saved state, where it has one."""
    for tag, net in nets:
        for lname, layer in zip(net.layer_names, net.layers):
            key = '%s/%s' % (tag, lname)
            if key in states:
                layer.set_state(states[key])


def rank_state(nets):
    """This process's part of a sidecar: its random generator and its layers' states."""
    return {'rng': backend.rng_state(), 'layers': layer_states(nets)}


def write_sidecar(state_file, iteration, layers, ranks=None):
    """Write ``<state_file>.caffeine.json``: the iteration, backend mode, random generator and layer
    states, and with ``ranks`` (data-parallel training) every rank's ``rank_state``, in rank order."""
    extra = {'caffeine_sidecar': 1, 'iter': iteration, 'mode': backend.mode(),
             'rng': backend.rng_state(), 'layers': layers}
    if ranks is not None:
        extra['ranks'] = ranks
    try:
        text = json.dumps(extra)
    except TypeError as e:
        log.warning('Not saving layer states with the snapshot (%s)', e)
        extra['layers'] = {}
        text = json.dumps(extra)
    with atomic_write(state_file + SIDECAR_SUFFIX, 'w') as f:
        f.write(text)


def read_sidecar(state_file, iteration):
    """The sidecar of ``state_file`` as a dict, or None (absent, unreadable, or for another iteration)."""
    side = state_file + SIDECAR_SUFFIX
    if not os.path.isfile(side):
        log.debug('No %s: random streams continue from the seed', side)
        return None
    try:
        with open(side) as f:
            extra = json.load(f)
    except (OSError, ValueError) as e:
        log.warning('Ignoring %s: %s', side, e)
        return None
    if extra.get('iter') != iteration:
        log.warning('Ignoring %s: it is for iteration %s, the state for %d', side, extra.get('iter'), iteration)
        return None
    return extra


def apply_sidecar(state_file, iteration, nets, rank=0, count=1):
    """Restore the random generator and the layer states saved beside ``state_file``, if any
    (rank ``rank``'s of ``count``: the run must have as many ranks as the one that saved them)."""
    extra = read_sidecar(state_file, iteration)
    if extra is None:
        return
    ranks = extra.get('ranks') or [extra]
    if len(ranks) != count:
        log.warning('%s was written by %d rank(s), this run has %d: the data positions and random streams '
                    'start afresh', state_file + SIDECAR_SUFFIX, len(ranks), count)
        return
    extra = ranks[rank]
    if extra.get('rng'):
        try:
            backend.set_rng_state(extra['rng'])
        except (TypeError, ValueError, KeyError) as e:
            log.warning('Could not restore the random generator from %s: %s', state_file + SIDECAR_SUFFIX, e)
    set_layer_states(nets, extra.get('layers') or {})
