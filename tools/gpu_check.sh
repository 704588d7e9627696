#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CuPy and a CUDA device (e.g. a
# lent device machine; run from the repository root):
#   1. the device and CuPy versions,
#   2. every test parametrized over the backends, on the GPU (`-m gpu`): the
#      layers' golden cases and gradient checks, golden nets, blobs, data layers,
#   3. benchmarks/bench_gpu.py (caffeine on CuPy against PyTorch CUDA),
#   4. data-parallel training (tools/gpu_parallel_check.py): NCCL of one rank,
#      pycaffe's NCCL flow (python/train.py) at N=1 against the plain solver,
#      2 processes on one GPU against 1 process with twice the batch, and with
#      2 GPUs `caffeine train --gpu 0,1` against one GPU (needs the mpi extra).
# Logs go to $OUT (default /tmp/gpu_check).  Each part has its own time limit
# so that the whole stays under ten minutes.
#   bash tools/gpu_check.sh [--quick]
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import cupy, numpy; print("cupy", cupy.__version__, "numpy", numpy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())'
} 2>&1 | tee "$OUT/device.txt"
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log"
echo "tests exit status: $?" | tee -a "$OUT/tests.log"
timeout 240 python3 benchmarks/bench_gpu.py $quick 2>&1 | tee "$OUT/bench.log"
echo "bench exit status: $?" | tee -a "$OUT/bench.log"
timeout 180 python3 tools/gpu_parallel_check.py "$OUT" 2>&1 | tee "$OUT/parallel.log"
echo "parallel exit status: $?" | tee -a "$OUT/parallel.log"
