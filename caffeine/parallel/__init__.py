"""Data-parallel training: one model on several processes, as Caffe's multi-GPU training.

MPI (mpi4py) between machines and CPU ranks, NCCL (CuPy) between GPUs; no
transport of caffeine's own.

- ``comm``: the communicators (``MPICommunicator``, ``NCCLCommunicator``, ``SingleProcess``);
- ``sync``: the flat parameter buffers and the gradient reduction: ``DataParallel``,
  pycaffe's ``NCCL`` and ``has_nccl``;
- ``launch``: MPI launches, spawned GPU ranks, per-rank settings and failure handling.

``caffe.NCCL`` and ``caffe.has_nccl`` are this package's; the process-wide solver
count and rank stay in ``caffeine.runtime``.
"""
from .sync import NCCL, DataParallel, has_nccl

__all__ = ['NCCL', 'DataParallel', 'has_nccl']
