"""Every built-in layer, grouped by family as in Caffe; importing fills the registry."""
import importlib

_FAMILIES = ('input', 'neuron', 'inner_product', 'shape', 'reduction', 'softmax', 'normalization',
             'utility', 'vision', 'loss', 'recurrent', 'data', 'python', 'detection')

for _f in _FAMILIES:
    importlib.import_module('.' + _f, __name__)


def __getattr__(name):
    """pycaffe's ``caffe.layers.<Type>(...)`` NetSpec functions, e.g. ``L.Convolution``."""
    if name.startswith('__'):
        raise AttributeError(name)
    from ..net_spec import layers as _netspec_layers
    return getattr(_netspec_layers, name)
