"""Fused element-wise kernels for the GPU: one CUDA kernel where the NumPy path runs several.

Each :class:`Kernel` is the source of a ``cupy.ElementwiseKernel`` (built by
``backend.elementwise_kernel``, so nothing here imports CuPy).  :func:`get` gives
the compiled kernel in GPU mode and None on the CPU (or with
``CAFFEINE_NO_FUSED=1``, to compare against the unfused path); a caller runs its
NumPy/xp formula when it gets None.  Each operation is the formula of the
NumPy path, in the same order of operations, written with a small vocabulary
that reads the same in CUDA C++ and in NumPy (``tests/test_engines.py`` runs
every source through NumPy and compares it with the layer or solver):
``select(c, a, b)`` (c ? a : b), ``max``/``min``, ``exp``, ``tanh``, ``sqrt``,
float literals written ``1.0f``, and ``float t = ...`` for a temporary.
Arithmetic is float32 on both sides (the literals carry the ``f``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import backend

PREAMBLE = '__device__ __forceinline__ float select(bool c, float a, float b) { return c ? a : b; }\n'


@dataclass(frozen=True)
class Kernel:
    name: str
    in_params: str
    out_params: str
    operation: str


def get(kernel):
    """The compiled kernel in GPU mode, else None (the caller's xp path runs)."""
    if os.environ.get('CAFFEINE_NO_FUSED') == '1':
        return None
    return backend.elementwise_kernel(kernel.in_params, kernel.out_params, kernel.operation,
                                      'caffeine_' + kernel.name, preamble=PREAMBLE)


# -- neuron layers (Caffe's formulas; see layers/neuron.py) ----------------------------------
RELU_FORWARD = Kernel('relu_forward', 'float32 x, float32 ns', 'float32 y',
                      'y = max(x, 0.0f) + ns * min(x, 0.0f)')
RELU_BACKWARD = Kernel('relu_backward', 'float32 x, float32 dy, float32 ns', 'float32 dx',
                       'dx = dy * select(x > 0.0f, 1.0f, ns)')
SIGMOID_FORWARD = Kernel('sigmoid_forward', 'float32 x', 'float32 y',
                         'y = 0.5f * tanh(0.5f * x) + 0.5f')
SIGMOID_BACKWARD = Kernel('sigmoid_backward', 'float32 y, float32 dy', 'float32 dx',
                          'dx = dy * ((1.0f - y) * y)')
TANH_BACKWARD = Kernel('tanh_backward', 'float32 y, float32 dy', 'float32 dx',
                       'dx = dy * (1.0f - y * y)')
ELU_FORWARD = Kernel('elu_forward', 'float32 x, float32 alpha', 'float32 y',
                     'y = max(x, 0.0f) + alpha * (exp(min(x, 0.0f)) - 1.0f)')
ELU_BACKWARD = Kernel('elu_backward', 'float32 x, float32 y, float32 dy, float32 alpha', 'float32 dx',
                      'dx = dy * select(x > 0.0f, 1.0f, y + alpha)')

# -- solver updates (solver.py): g is the parameter's diff, turned into the step -------------
SGD_UPDATE = Kernel('sgd_update', 'float32 lr, float32 momentum', 'float32 g, float32 h',
                    'h = momentum * h + lr * g; g = h')
NESTEROV_UPDATE = Kernel('nesterov_update', 'float32 lr, float32 momentum', 'float32 g, float32 h',
                         'float h_old = h; h = momentum * h + lr * g; '
                         'g = -momentum * h_old + (1.0f + momentum) * h')
ADAGRAD_UPDATE = Kernel('adagrad_update', 'float32 lr, float32 delta', 'float32 g, float32 h',
                        'h = h + g * g; g = g / (sqrt(h) + delta) * lr')
RMSPROP_UPDATE = Kernel('rmsprop_update', 'float32 lr, float32 delta, float32 decay', 'float32 g, float32 h',
                        'h = decay * h + (1.0f - decay) * (g * g); g = g / (sqrt(h) + delta) * lr')
ADADELTA_UPDATE = Kernel('adadelta_update', 'float32 lr, float32 momentum, float32 delta',
                         'float32 g, float32 hg, float32 hu',
                         'hg = momentum * hg + (1.0f - momentum) * (g * g); '
                         'g = g * sqrt((delta + hu) / (delta + hg)); '
                         'hu = momentum * hu + (1.0f - momentum) * (g * g); g = g * lr')
ADAM_UPDATE = Kernel('adam_update', 'float32 lr_corr, float32 b1, float32 b2, float32 delta',
                     'float32 g, float32 m, float32 v',
                     'm = b1 * m + (1.0f - b1) * g; v = b2 * v + (1.0f - b2) * (g * g); '
                     'g = m / (sqrt(v) + delta) * lr_corr')

KERNELS = (RELU_FORWARD, RELU_BACKWARD, SIGMOID_FORWARD, SIGMOID_BACKWARD, TANH_BACKWARD, ELU_FORWARD,
           ELU_BACKWARD, SGD_UPDATE, NESTEROV_UPDATE, ADAGRAD_UPDATE, RMSPROP_UPDATE, ADADELTA_UPDATE,
           ADAM_UPDATE)
