#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CuPy and a CUDA device (e.g. a
# lent device machine; run from the repository root), under ten minutes:
#   1. the device, CuPy, cuDNN and PyTorch versions and the engine caffeine runs on;
#   2. every GPU test (`-m gpu`) with each layer's own engine: cuDNN where CuPy has
#      it (CuPy 13 + cuDNN 8), the portable CuPy path elsewhere; tests/test_engines.py
#      runs its GPU tests on both engines (parametrized; BatchNorm's running sums
#      included), tests/test_gpu_pipeline.py the prefetch pipeline (pinned memory,
#      side stream, events) and tests/test_data_layers.py the data layers on CuPy;
#   3. the engine-sensitive GPU tests again with CAFFEINE_ENGINE=CAFFE (the portable
#      path everywhere): vision layers, softmax, golden nets;
#   4. benchmarks/bench_gpu.py (caffeine against PyTorch CUDA, TF32 off on both):
#      ms and images/s, peak device memory, then LeNet and CIFAR10-quick fed by their
#      Data layers with the share of each step spent waiting for data;
#   5. data-parallel training (tools/gpu_parallel_check.py): NCCL of one rank,
#      pycaffe's NCCL flow (python/train.py) at N=1 against the plain solver,
#      2 processes on one GPU against 1 process with twice the batch, and with
#      2 GPUs `caffeine train --gpu 0,1` against one GPU (needs the mpi extra).
# Logs go to $OUT (default /tmp/gpu_check).  Each part has its own time limit
# (180 + 70 + 170 + 120 s at most, plus start-up), so that the whole stays under ten minutes.
#   bash tools/gpu_check.sh [--quick]
# Prepared environment (the machine may have no network): CuPy 13 for CUDA 12
# (pip install 'cupy-cuda12x<14'), cuDNN 8 (nvidia-cudnn-cu12<9, or
# `python -m cupyx.tools.install_library --cuda 12.x --library cudnn` where torch's
# cuDNN 9 wheel is installed), torch==2.13.0 with CUDA, and caffeine's test extra.
# Without cuDNN the cuDNN-parametrized tests skip and say why; the rest still run.
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export NVIDIA_TF32_OVERRIDE=${NVIDIA_TF32_OVERRIDE:-0}   # float32 in cuBLAS and cuDNN
quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import cupy, numpy; print("cupy", cupy.__version__, "numpy", numpy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())'
  python3 - <<'EOF'
import caffeine
from caffeine import backend, engines
caffeine.set_mode_gpu()
mods = backend.cudnn()
print('cuDNN:', 'version %s through cupyx.cudnn; workspace bound %d MiB' % (mods[0].getVersion(), engines.workspace_bytes() >> 20)
      if mods else 'none in this CuPy: convolution, pooling and softmax run the portable CuPy path')
EOF
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
} 2>&1 | tee "$OUT/device.txt"
timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/tests.log"
echo "tests exit status: $?" | tee -a "$OUT/tests.log"
CAFFEINE_ENGINE=CAFFE timeout 70 python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_layers_vision.py tests/test_layers_common.py tests/test_golden_nets.py 2>&1 | tee "$OUT/tests_caffe_engine.log"
echo "tests (CAFFEINE_ENGINE=CAFFE) exit status: $?" | tee -a "$OUT/tests_caffe_engine.log"
timeout 170 python3 benchmarks/bench_gpu.py $quick --fed-steps 20 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
echo "bench exit status: $?" | tee -a "$OUT/bench.log"
timeout 120 python3 tools/gpu_parallel_check.py "$OUT" 2>&1 | tee "$OUT/parallel.log"
echo "parallel exit status: $?" | tee -a "$OUT/parallel.log"
