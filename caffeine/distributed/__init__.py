"""Data-parallel training on several processes: MPI (mpi4py) between machines and CPU ranks,
NCCL (CuPy) between GPUs.  ``comm``: the communicators; ``sync``: the flat parameter
buffers and the gradient reduction (pycaffe's ``NCCL``); ``launch``: MPI launches,
spawned GPU ranks, per-rank settings and failure handling."""
