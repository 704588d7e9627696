"""Python: layers written in Python by the user, as pycaffe's PythonLayer.

    layer { type: "Python" python_param { module: "my_layers" layer: "MyLayer" param_str: "..." } }

``my_layers.MyLayer`` subclasses ``caffeine.Layer`` (pycaffe: ``caffe.Layer``)
and defines ``setup(bottom, top)``, ``reshape(bottom, top)``,
``forward(bottom, top)`` and ``backward(top, propagate_down, bottom)``,
working on ``blob.data`` / ``blob.diff`` NumPy arrays; ``self.param_str``,
``self.phase`` and ``self.blobs`` are set as in pycaffe.

Known Python layers of Caffe's forks run without their module: when the
import of a module listed in ``FORK_PYTHON_LAYERS`` fails, the built-in layer
that implements the same algorithm stands in (logged once per module), e.g.
py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` -> the built-in
'Proposal' layer, reading the same ``param_str``.  An importable module always
wins, so a user's own copy runs as written.

Such a layer imports and runs a module named in a prototxt.  As in Caffe this
is allowed by default; set ``CAFFEINE_NO_PYTHON_LAYERS=1`` (or pass
``--no-python-layers`` to the CLI) to refuse it, e.g. when opening untrusted
models.
"""
import importlib
import logging
import os

from ..errors import LayerError
from ..layer import Layer, register


log = logging.getLogger(__name__)

# (module, class) of a fork's Python layer -> the registered built-in type that
# implements the same algorithm, used only when the module does not import.
FORK_PYTHON_LAYERS = {
    ('rpn.proposal_layer', 'ProposalLayer'): 'Proposal',   # rbgirshick/py-faster-rcnn
}
_logged = set()


def _fork_stand_in(layer_param, phase, error):
    """The built-in layer standing in for a known fork Python layer, or None."""
    pp = layer_param.python_param
    type_name = FORK_PYTHON_LAYERS.get((pp.module, pp.layer))
    if type_name is None:
        return None
    from ..layer import get_layer_class
    if pp.module not in _logged:
        _logged.add(pp.module)
        log.info('Python module %r not importable (%s): running %s.%s as the built-in %r layer',
                 pp.module, error, pp.module, pp.layer, type_name)
    return get_layer_class(type_name)(layer_param, phase)


def python_layers_allowed():
    return os.environ.get('CAFFEINE_NO_PYTHON_LAYERS', '') not in ('1', 'true', 'yes')


@register('Python')
class PythonLayer(Layer):
    """Factory for user Python layers: returns an instance of the user's class."""

    def __new__(cls, layer_param=None, phase=None):
        if cls is not PythonLayer:
            return super().__new__(cls)
        name = layer_param.name if layer_param is not None else ''
        if not python_layers_allowed():
            # a known fork layer needs no import: its built-in stand-in runs
            stand_in = _fork_stand_in(layer_param, phase, 'Python layers are disabled')
            if stand_in is not None:
                return stand_in
            raise LayerError("layer %r (Python): Python layers are disabled (CAFFEINE_NO_PYTHON_LAYERS=1); "
                             "this model would import module %r" % (name, layer_param.python_param.module))
        pp = layer_param.python_param
        if not pp.module or not pp.layer:
            raise LayerError('layer %r (Python): python_param needs both module and layer' % name)
        try:
            mod = importlib.import_module(pp.module)
        except ImportError as e:
            stand_in = _fork_stand_in(layer_param, phase, e)
            if stand_in is not None:
                return stand_in
            raise LayerError('layer %r (Python): cannot import module %r (%s)' % (name, pp.module, e))
        ucls = getattr(mod, pp.layer, None)
        if ucls is None:
            raise LayerError('layer %r (Python): module %r has no class %r' % (name, pp.module, pp.layer))
        if not (isinstance(ucls, type) and issubclass(ucls, Layer)):
            raise LayerError('layer %r (Python): %s.%s is not a subclass of caffeine.Layer'
                             % (name, pp.module, pp.layer))
        obj = ucls.__new__(ucls)
        Layer.__init__(obj, layer_param, phase)
        obj.param_str = pp.param_str
        obj.type_name = 'Python'
        return obj

    def reshape(self, bottom, top):  # pragma: no cover - never instantiated itself
        raise NotImplementedError
