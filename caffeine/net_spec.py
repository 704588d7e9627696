"""pycaffe's NetSpec: write a net in Python, get its NetParameter (prototxt).

    import caffeine as caffe
    from caffeine import layers as L, params as P

    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=64, backend=P.Data.LMDB, source='train_lmdb',
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.pool1, n.label)
    print(n.to_proto())

``L.<Type>(*bottoms, **params)`` makes a layer of that type and returns its
top (a ``Top``), a tuple of tops when ``ntop`` > 1, or the ``Function``
itself when ``ntop=0``.  Keyword arguments:

* ``ntop``: number of tops (default 1); ``in_place=True``: the top is the bottom.
* ``<something>_param=dict(...)``: that LayerParameter field, filled from the
  dict (nested dicts fill sub-messages, lists fill repeated fields, a list of
  dicts adds one message per dict).
* any other name is looked up first in the layer type's own parameter message
  (``num_output`` -> ``convolution_param.num_output`` for Convolution) and
  then in LayerParameter itself (``name``, ``loss_weight``, ``param``,
  ``include``, ``propagate_down`` ...).

Tops are named after the NetSpec attributes they are assigned to; a layer is
named after its first top.  Unnamed tops (and layers with no tops) are named
``<Type><n>``, counting per type, in the order ``to_proto`` reaches them.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from .errors import CaffeineError
from .proto import caffe_pb2

__all__ = ['NetSpec', 'layers', 'params', 'to_proto', 'Top', 'Function',
           'param_name_dict', 'assign_proto', 'NetSpecError']


class NetSpecError(CaffeineError, AttributeError):
    """A NetSpec keyword that names no field (also an AttributeError, as in pycaffe)."""


def param_name_dict():
    """``{layer type: parameter field prefix}``, from LayerParameter's ``*_param`` fields.

    E.g. ``'Convolution': 'convolution'``, ``'InnerProduct': 'inner_product'``,
    ``'Pooling': 'pooling'``: the field name without ``_param``, keyed by its
    message type name without ``Parameter``.
    """
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if not field.name.endswith('_param') or field.message_type is None:
            continue
        type_name = field.message_type.name
        if type_name.endswith('Parameter'):
            type_name = type_name[:-len('Parameter')]
        out[type_name] = field.name[:-len('_param')]
    return out


_param_names = param_name_dict()
# layer types that read a parameter message named after another type
_PARAM_ALIASES = {'Deconvolution': 'convolution'}


def _param_field_for(type_name):
    """The ``*_param`` field of LayerParameter that a layer type reads, or None."""
    prefix = _param_names.get(type_name) or _PARAM_ALIASES.get(type_name)
    return prefix + '_param' if prefix else None


def _is_repeated(field):
    rep = getattr(field, 'is_repeated', None)
    if rep is not None:
        return rep
    return field.label == field.LABEL_REPEATED


def assign_proto(proto, name, val):
    """Set field ``name`` of message ``proto`` from a Python value.

    A dict fills a sub-message; a list (or tuple) fills a repeated field,
    adding one message per dict for repeated messages; a single value given
    for a repeated field becomes a one-element list.
    """
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetSpecError('%s has no field named %r' % (proto.DESCRIPTOR.name, name))
    is_message = field.message_type is not None
    if _is_repeated(field):
        if not isinstance(val, (list, tuple)):
            val = [val]
        container = getattr(proto, name)
        if is_message:
            for item in val:
                sub = container.add()
                if isinstance(item, dict):
                    for k, v in item.items():
                        assign_proto(sub, k, v)
                else:
                    sub.CopyFrom(item)
        else:
            container.extend(list(val))
    elif is_message:
        sub = getattr(proto, name)
        if isinstance(val, dict):
            for k, v in val.items():
                assign_proto(sub, k, v)
        else:
            sub.CopyFrom(val)
    else:
        setattr(proto, name, val)


class Top:
    """One output of a ``Function`` (layer); what NetSpec attributes hold."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """The NetParameter of the layers this top depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return '<Top %d of %s>' % (self.n, self.fn.type_name)


class Function:
    """A layer in the making: its type, bottoms (``Top``s) and parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise TypeError('%s input %d is not a Top (type is %s)'
                                % (type_name, index, type(inp)))
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop('ntop', 1)
        self.in_place = self.params.pop('in_place', False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)

        own = _param_field_for(self.type_name)
        for k, v in self.params.items():
            if k.endswith('param'):
                target, where = layer, 'LayerParameter'
            elif own is not None and k in getattr(layer, own).DESCRIPTOR.fields_by_name:
                target, where = getattr(layer, own), own
            elif k in layer.DESCRIPTOR.fields_by_name:
                target, where = layer, 'LayerParameter'
            else:
                raise NetSpecError('%s layer %r: %r is a field of neither %s nor LayerParameter'
                                   % (self.type_name, layer.name, k,
                                      own or '(no %s parameter message)' % self.type_name))
            try:
                assign_proto(target, k, v)
            except NetSpecError as e:
                raise NetSpecError('%s layer %r, %s.%s: %s' % (self.type_name, layer.name, where, k, e))
            except (TypeError, ValueError) as e:
                raise type(e)('%s layer %r, %s.%s: %s' % (self.type_name, layer.name, where, k, e))
        layers[self] = layer

    def __repr__(self):
        return '<Function %s, %d bottoms, %d tops>' % (self.type_name, len(self.inputs), self.ntop)


def to_proto(*tops):
    """A NetParameter holding the layers needed to compute ``tops`` (auto-named)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) are named after them."""

    def __init__(self):
        super().__setattr__('tops', OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError('NetSpec has no top named %r' % name)

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.tops[item]

    def __delattr__(self, name):
        del self.tops[name]

    def __delitem__(self, key):
        del self.tops[key]

    def __contains__(self, key):
        return key in self.tops

    def to_proto(self):
        """The NetParameter: every layer reached from the assigned tops, in assignment order."""
        names = {v: k for k, v in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **params)``: a layer of Caffe type ``<Type>``."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        layer_fn.__qualname__ = 'layers.' + name
        return layer_fn


class _ParamAccessor:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, param_name):
        if param_name.startswith('__'):
            raise AttributeError(param_name)
        msg = getattr(caffe_pb2, self._name + 'Parameter', None)
        if msg is None:
            raise NetSpecError('caffe_pb2 has no message %sParameter' % self._name)
        try:
            return getattr(msg, param_name)
        except AttributeError:
            raise NetSpecError('%sParameter has no attribute %r' % (self._name, param_name))


class Parameters:
    """``P.<Type>.<ENUM>``: enum values of ``<Type>Parameter``, e.g. ``P.Pooling.MAX``."""

    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return _ParamAccessor(name)


layers = Layers()
params = Parameters()
