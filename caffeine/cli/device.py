"""caffeine device_query, and the --gpu handling every command shares."""
from __future__ import annotations

import logging
import os
import platform

import click

from ..errors import CaffeineError
from .. import backend

log = logging.getLogger('caffeine')


def parse_gpus(spec):
    """Caffe's --gpu: '' (CPU), '0', '0,1' or 'all' -> a list of device ids."""
    spec = (spec or '').strip()
    if not spec:
        return []
    if spec == 'all':
        n = backend.device_count()
        if n == 0:
            # let the backend explain why there is no GPU (no CuPy, no CUDA device)
            backend.set_mode_gpu()
        return list(range(n))
    ids = []
    for part in spec.split(','):
        part = part.strip()
        try:
            ids.append(int(part))
        except ValueError:
            raise CaffeineError('--gpu %r: give a device id (0), several (0,1) or "all"' % spec)
        if ids[-1] < 0:
            raise CaffeineError('--gpu %r: device ids are >= 0' % spec)
    return ids


def use_gpus(gpus, command='train'):
    """Switch to the GPU ``gpus`` names (one id for now), or stay on the CPU for []."""
    if not gpus:
        log.info('Use CPU.')
        backend.set_mode_cpu()
        return None
    if len(gpus) > 1:
        log.info('Use GPU with device ID %d (only the first of %s is used)', gpus[0], gpus)
    gpu = gpus[0]
    backend.set_mode_gpu()
    backend.set_device(gpu)
    log.info('Using GPUs %d', gpu)
    try:
        name = _device_properties(gpu).get('Name', '')
        log.info('GPU %d: %s', gpu, name)
    except Exception:  # pragma: no cover - purely informative
        pass
    return gpu


def _device_properties(device_id):
    cp = backend._import_cupy()
    p = cp.cuda.runtime.getDeviceProperties(device_id)

    def g(k, default=''):
        v = p.get(k, default)
        return v.decode() if isinstance(v, bytes) else v
    return {
        'Device id': device_id,
        'Major revision number': g('major'),
        'Minor revision number': g('minor'),
        'Name': g('name'),
        'Total global memory': g('totalGlobalMem'),
        'Total shared memory per block': g('sharedMemPerBlock'),
        'Total registers per block': g('regsPerBlock'),
        'Warp size': g('warpSize'),
        'Maximum memory pitch': g('memPitch'),
        'Maximum threads per block': g('maxThreadsPerBlock'),
        'Maximum dimension of block': ', '.join(str(x) for x in g('maxThreadsDim', ())),
        'Maximum dimension of grid': ', '.join(str(x) for x in g('maxGridSize', ())),
        'Clock rate': g('clockRate'),
        'Total constant memory': g('totalConstMem'),
        'Texture alignment': g('textureAlignment'),
        'Concurrent copy and execution': 'Yes' if g('deviceOverlap', 0) else 'No',
        'Number of multiprocessors': g('multiProcessorCount'),
        'Kernel execution timeout': 'Yes' if g('kernelExecTimeoutEnabled', 0) else 'No',
    }


@click.command('device_query')
@click.option('--gpu', default='', help="Device id(s) to query: 0, 0,1 or all (default: every device).")
def device_query_cmd(gpu):
    """Show the GPU(s) caffeine can use (Caffe's device_query), or why there are none."""
    import numpy
    if gpu:
        gpus = parse_gpus(gpu)
        backend._import_cupy()  # one clear line when there is no CuPy or no device
    else:
        gpus = list(range(backend.device_count()))
    click.echo('CPU: %s, %d cores, NumPy %s' % (platform.processor() or platform.machine(),
                                                os.cpu_count() or 1, numpy.__version__))
    if not gpus:
        try:
            backend._import_cupy()
            why = 'no CUDA device'
        except backend.BackendError as e:
            why = str(e)
        click.echo('GPU: none (%s)' % why)
        return
    n = backend.device_count()
    log.info('Querying GPUs %s', ','.join(str(g) for g in gpus))
    for g in gpus:
        if g >= n:
            raise CaffeineError('GPU %d does not exist: %d device(s) found' % (g, n))
        for k, v in _device_properties(g).items():
            click.echo('%-32s %s' % (k + ':', v))


COMMANDS = [device_query_cmd,
            click.Command('device-query', callback=device_query_cmd.callback, params=device_query_cmd.params,
                          help=device_query_cmd.help, hidden=True)]
