"""Every built-in layer, grouped by family as in Caffe; importing fills the registry."""
import importlib

_FAMILIES = ('neuron', 'common', 'vision', 'loss', 'recurrent', 'data', 'python')

for _f in _FAMILIES:
    try:
        importlib.import_module('.' + _f, __name__)
    except ModuleNotFoundError as e:  # a family not written yet
        if e.name != __name__ + '.' + _f:
            raise
