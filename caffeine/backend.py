"""The array backend: the only module that knows NumPy from CuPy.

Every layer is written once against an array module ``xp`` (NumPy on the CPU,
CuPy on the GPU), in the Chainer/CuPy style.  Nothing else in caffeine imports
CuPy; ``import caffeine`` never needs it.

Mode follows Caffe's ``Caffe::set_mode``: :func:`set_mode_cpu` (the default)
and :func:`set_mode_gpu` / :func:`set_device`.  On the first use of a device, CuPy's
memory pool there is limited once to ``CAFFEINE_GPU_MEMORY_FRACTION`` of its memory
when that is set.  The prefetched batches' pinned host memory, side streams and events
are made here too (``pinned_empty``, ``side_stream``, ``record_event``, ``wait_event``).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import numpy

from .errors import CaffeineError

_state = threading.local()
_cupy = None          # the cupy module once imported
_cupy_error = None    # why cupy could not be used
_cudnn = None         # (cupy.cuda.cudnn, cupyx.cudnn) once imported; False when cuDNN is absent
_kernels = {}         # fused element-wise kernels, compiled once per source
_pool_sized = set()   # devices whose CuPy memory pool has been given its limit
_mode = 'cpu'
_device_id = 0

# Buffer allocation counter: Blob storage reports every new buffer here, so a
# test can check that a net allocates nothing after its first iteration.
alloc_count = 0


class BackendError(CaffeineError):
    """GPU asked for where there is none, or CuPy is missing."""


def _import_cupy():
    global _cupy, _cupy_error
    if _cupy is not None:
        return _cupy
    if _cupy_error is not None:
        raise BackendError(_cupy_error)
    # float32 stays float32 (Caffe's numbers): no TF32 in cuBLAS and cuDNN unless the user asks
    # for it (cuDNN 8's default math allows TF32 on Ampere and later).  Read when the libraries load.
    os.environ.setdefault('NVIDIA_TF32_OVERRIDE', '0')
    _preload_pip_cudnn()
    try:
        import cupy  # the one place CuPy is imported
    except Exception as e:  # ImportError, or a broken CUDA install
        _cupy_error = ('GPU mode needs CuPy: install caffeine with the cuda12 or cuda13 extra '
                       '(pip install caffeine[cuda12]) (%s: %s)' % (type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
        raise BackendError(_cupy_error)
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        _cupy_error = 'GPU mode needs a CUDA device, but CUDA reports none (%s)' % (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise BackendError(_cupy_error)
    if n < 1:
        _cupy_error = 'GPU mode needs a CUDA device, but none was found'
        raise BackendError(_cupy_error)
    _cupy = cupy
    return cupy


def _preload_pip_cudnn():
    """Load the cuDNN 8 of the nvidia-cudnn-cu12 wheel (the cuda12 extra), if installed, before CuPy.

    CuPy 13 links against libcudnn.so.8 but looks for it only on the loader's path or in
    ~/.cupy/cuda_lib; the wheel puts it in site-packages/nvidia/cudnn/lib.  Loaded here
    globally, CuPy's own dlopen finds it by its soname.  Nothing happens without the wheel.
    """
    for root in sys.path:
        path = os.path.join(root or '.', 'nvidia', 'cudnn', 'lib', 'libcudnn.so.8')
        if os.path.exists(path):
            try:  # it opens its sub-libraries (ops, cnn, adv) from its own folder
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError:
                pass
            return


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _import_cupy()
        return True
    except BackendError:
        return False


def device_count() -> int:
    try:
        return _import_cupy().cuda.runtime.getDeviceCount()
    except BackendError:
        return 0


def _size_memory_pool(cp, device_id):
    """Limit CuPy's memory pool on ``device_id`` (the current device), once per device, to
    ``CAFFEINE_GPU_MEMORY_FRACTION`` (in (0, 1]) of the device's memory; unset: no limit
    (CuPy's default: the pool grows as needed and keeps what it freed for reuse)."""
    if device_id in _pool_sized:
        return
    raw = os.environ.get('CAFFEINE_GPU_MEMORY_FRACTION', '')
    if raw.strip():
        try:
            fraction = float(raw)
        except ValueError:
            fraction = float('nan')
        if not 0 < fraction <= 1:
            raise BackendError('CAFFEINE_GPU_MEMORY_FRACTION must be a number in (0, 1], got %r' % raw)
        cp.get_default_memory_pool().set_limit(fraction=fraction)
    _pool_sized.add(device_id)


def set_mode_cpu():
    global _mode
    _mode = 'cpu'


def set_mode_gpu():
    global _mode
    cp = _import_cupy()
    cp.cuda.Device(_device_id).use()
    _size_memory_pool(cp, _device_id)
    if _mode != 'gpu' and _last_seed is not None:
        cp.random.seed(_last_seed & 0xFFFFFFFF)
    _mode = 'gpu'


def set_device(device_id: int):
    global _device_id
    device_id = int(device_id)
    if device_id < 0:
        raise BackendError('device id must be >= 0, got %d' % device_id)
    if _cupy is not None or _mode == 'gpu':
        cp = _import_cupy()
        n = cp.cuda.runtime.getDeviceCount()
        if device_id >= n:
            raise BackendError('GPU %d does not exist: %d device(s) found' % (device_id, n))
        cp.cuda.Device(device_id).use()
        _size_memory_pool(cp, device_id)
    _device_id = device_id


def mode() -> str:
    """'cpu' or 'gpu'."""
    return _mode


def is_gpu() -> bool:
    return _mode == 'gpu'


def device_id() -> int:
    return _device_id


def get_xp():
    """The array module of the current mode: numpy, or cupy in GPU mode."""
    if _mode == 'gpu':
        return _cupy
    return numpy


def cudnn():
    """cuDNN through CuPy, in GPU mode: the pair (cupy.cuda.cudnn, cupyx.cudnn); None on the
    CPU, and where CuPy has no cuDNN (CuPy 14 dropped it; CuPy 13 without libcudnn 8).

    Which layers use it is decided in :mod:`caffeine.engines`.
    """
    global _cudnn
    if _mode != 'gpu':
        return None
    if _cudnn is None:
        try:
            from cupy.cuda import cudnn as lib
            import cupyx.cudnn as cx
            _cudnn = (lib, cx) if getattr(lib, 'available', True) else False
        except Exception:  # ImportError, or a libcudnn that fails to load
            _cudnn = False
    return _cudnn or None


def elementwise_kernel(in_params, out_params, operation, name, preamble=''):
    """A fused ``cupy.ElementwiseKernel`` in GPU mode (compiled once per source); None on the CPU.

    The kernels themselves are in :mod:`caffeine.fused`.
    """
    if _mode != 'gpu':
        return None
    key = (in_params, out_params, operation, name, preamble)
    k = _kernels.get(key)
    if k is None:
        k = _kernels[key] = _cupy.ElementwiseKernel(in_params, out_params, operation, name, preamble=preamble)
    return k


def is_device_array(a) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def to_host(a):
    """A NumPy array with ``a``'s values (no copy when it already is one)."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return numpy.asarray(a)


def to_device(a, dtype=None):
    """``a`` as an array of the current mode's module."""
    xp = get_xp()
    if dtype is None:
        return xp.asarray(a)
    return xp.asarray(a, dtype=dtype)


def copy_into(dst, src):
    """dst[...] = src, across host and device as needed."""
    if is_device_array(dst) and not is_device_array(src):
        dst.set(numpy.ascontiguousarray(src, dtype=dst.dtype).reshape(dst.shape)) if dst.flags.c_contiguous else dst.__setitem__(Ellipsis, _cupy.asarray(src))
    elif is_device_array(src) and not is_device_array(dst):
        dst[...] = _cupy.asnumpy(src).reshape(dst.shape)
    else:
        dst[...] = src.reshape(dst.shape) if hasattr(src, 'reshape') and getattr(src, 'size', None) == dst.size else src


def empty(shape, dtype=numpy.float32, device=None):
    """A new buffer on the host (device=False) or in the current mode's memory."""
    global alloc_count
    alloc_count += 1
    if device is None:
        device = is_gpu()
    if device:
        return _import_cupy().empty(shape, dtype=dtype)
    return numpy.empty(shape, dtype=dtype)


def zeros(shape, dtype=numpy.float32, device=None):
    a = empty(shape, dtype, device)
    a.fill(0)
    return a


def synchronize():
    if _cupy is not None and _mode == 'gpu':
        _cupy.cuda.Stream.null.synchronize()


def buffer_address(a) -> int:
    """The address of a contiguous array's first value (device or host memory)."""
    if is_device_array(a):
        return int(a.data.ptr)
    return int(a.ctypes.data)


def nccl():
    """CuPy's NCCL binding (``cupy.cuda.nccl``), or a BackendError saying what to install."""
    _import_cupy()
    try:
        from cupy.cuda import nccl as _nccl
        _nccl.get_version()
    except Exception as e:  # ImportError, or a CuPy built without NCCL
        raise BackendError('NCCL is not available to CuPy (%s): pip install nvidia-nccl-cu12 (or -cu13) '
                           'beside cupy-cuda12x' % (str(e).splitlines()[0] if str(e) else type(e).__name__))
    return _nccl


def current_stream():
    """CuPy's current CUDA stream (None on the CPU)."""
    if _cupy is None or _mode != 'gpu':
        return None
    return _cupy.cuda.get_current_stream()


# Host-to-device copies beside the computation (the prefetched batches) -----------------------
# As Caffe's prefetching data layers: the batch is made in page-locked host memory and copied
# on a side stream that never waits for the computation; the compute stream waits (on the
# device, not the host) for the copy's event before it reads the batch.
def pinned_empty(n, dtype=numpy.float32):
    """A 1-D host array of ``n`` values, in page-locked (pinned) memory in GPU mode so that a
    copy from it runs asynchronously; an ordinary NumPy array on the CPU."""
    if _mode != 'gpu':
        return numpy.empty(n, dtype=dtype)
    dtype = numpy.dtype(dtype)
    mem = _cupy.cuda.alloc_pinned_memory(max(int(n), 1) * dtype.itemsize)
    return numpy.frombuffer(mem, dtype, int(n))


def side_stream():
    """A new non-blocking CUDA stream (it does not wait for the legacy default stream the
    layers compute on); None on the CPU."""
    if _mode != 'gpu':
        return None
    return _cupy.cuda.Stream(non_blocking=True)


def upload_async(dst, src, stream):
    """Start the copy of the host array ``src`` (pinned, same size and dtype) into the
    contiguous device array ``dst`` on ``stream``; returns before it is done."""
    dst.set(src.reshape(dst.shape), stream=stream)


def record_event(stream=None):
    """An event recorded on ``stream`` (the current stream by default): done when the work
    queued there so far is done.  None on the CPU."""
    if _cupy is None or _mode != 'gpu':
        return None
    event = _cupy.cuda.Event(block=True, disable_timing=True)
    event.record(stream if stream is not None else _cupy.cuda.get_current_stream())
    return event


def wait_event(event, stream=None):
    """Make ``stream`` (the current stream by default) wait on the device for ``event``; the
    host goes on at once.  Nothing for None."""
    if event is not None:
        (stream if stream is not None else _cupy.cuda.get_current_stream()).wait_event(event)


def event_synchronize(event):
    """Block this host thread until ``event`` is done (nothing for None)."""
    if event is not None:
        event.synchronize()


# Random numbers --------------------------------------------------------------
# One policy for every random choice in caffeine, so that a seed makes a run
# repeatable:
# - rng(): the one NumPy generator for choices made on the host (fillers,
#   shuffles, skips, crops and mirrors);
# - child_rng(): an independent generator seeded from rng(), for work done in
#   background threads (a data layer's prefetching), so that thread timing never
#   changes what the main generator draws;
# - uniform(out): fills an array of the current mode with U[0, 1) floats, from
#   rng() on the CPU and from CuPy's generator (seeded by the same
#   set_random_seed) on the GPU, so nothing crosses the bus (dropout masks,
#   stochastic pooling).
_rng = numpy.random.Generator(numpy.random.PCG64(None))


_last_seed = None


def set_random_seed(seed: int):
    """Caffe's ``Caffe::set_random_seed``: seeds every random stream."""
    global _rng, _last_seed
    _last_seed = int(seed)
    _rng = numpy.random.Generator(numpy.random.PCG64(int(seed) & 0xFFFFFFFFFFFFFFFF))
    if _cupy is not None:
        _cupy.random.seed(int(seed) & 0xFFFFFFFF)


def rng() -> numpy.random.Generator:
    """The host generator every host-side random choice draws from."""
    return _rng


def child_rng() -> numpy.random.Generator:
    """A new generator seeded from :func:`rng`, for one background worker's draws."""
    return numpy.random.Generator(numpy.random.PCG64(int(_rng.integers(0, 2 ** 63 - 1))))


def uniform(out):
    """Fill ``out`` (a float32 array of the current mode, contiguous) with U[0, 1) values."""
    if is_device_array(out):
        out[...] = _cupy.random.random_sample(out.shape, dtype=numpy.float32)
    else:
        _rng.random(dtype=numpy.float32, out=out.reshape(-1))
    return out


def rng_state():
    return _rng.bit_generator.state


def set_rng_state(state):
    _rng.bit_generator.state = state
