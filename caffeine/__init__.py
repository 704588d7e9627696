"""caffeine: Caffe, reborn as a pip-installable Python tool.

``import caffeine as caffe`` gives pycaffe's API: ``caffe.Net``, ``caffe.TRAIN``,
``caffe.set_mode_gpu()``, the solvers, ``caffe.io``, ``caffe.NetSpec`` ...
"""
from __future__ import annotations

__version__ = '0.1.0'

from .proto import caffe_pb2  # noqa: F401
from .errors import CaffeineError, PrototxtError, GraphError, LayerError  # noqa: F401
from .backend import (set_mode_cpu, set_mode_gpu, set_device,  # noqa: F401
                      set_random_seed)
from .blob import Blob  # noqa: F401
from .layer import Layer, layer_type_list  # noqa: F401

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

from .net import Net  # noqa: E402,F401
from . import proto  # noqa: E402,F401

# The rest of pycaffe's surface is imported lazily, so that `import caffeine`
# stays light and never needs optional packages.
_LAZY = {
    'SGDSolver': 'solver', 'NesterovSolver': 'solver', 'AdaGradSolver': 'solver',
    'RMSPropSolver': 'solver', 'AdaDeltaSolver': 'solver', 'AdamSolver': 'solver',
    'get_solver': 'solver', 'Solver': 'solver',
    'Classifier': 'classifier', 'Detector': 'detector',
    'NetSpec': 'net_spec', 'params': 'net_spec', 'to_proto': 'net_spec',
    'solver_count': 'runtime', 'solver_rank': 'runtime', 'set_solver_count': 'runtime',
    'set_solver_rank': 'runtime', 'set_multiprocess': 'runtime', 'has_nccl': 'parallel',
    'Timer': 'runtime', 'NCCL': 'parallel', 'init_log': 'glog', 'log': 'glog',
    'export_onnx': 'onnx_export',
}
# `caffeine.layers` is the package of built-in layers; it also answers pycaffe's
# `caffe.layers.Convolution(...)` (NetSpec) through its module __getattr__.
_LAZY_MODULES = ('layers', 'io', 'draw', 'coord_map', 'zoo', 'net_spec', 'fillers', 'weights')


def __getattr__(name):
    import importlib
    if name in _LAZY:
        mod = importlib.import_module('.' + _LAZY[name], __name__)
        return getattr(mod, name)
    if name in _LAZY_MODULES:
        return importlib.import_module('.' + name, __name__)
    raise AttributeError("module 'caffeine' has no attribute %r" % name)
