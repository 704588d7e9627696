"""Layer: the base class of every layer, and the registry of Caffe type names.

A layer subclass is written once, for NumPy and CuPy, with the array module
``xp = backend.get_xp()``, and defines up to four methods, as in Caffe:

- ``setup(bottom, top)``: read ``self.layer_param``, check it, create the
  parameter blobs in ``self.blobs`` (Caffe's LayerSetUp);
- ``reshape(bottom, top)``: shape the tops (and internal buffers) from the bottoms;
- ``forward(bottom, top)``: compute ``top[i].xdata`` from ``bottom[i].xdata``;
- ``backward(top, propagate_down, bottom)``: ``bottom[i].xdiff`` from
  ``top[i].xdiff`` where ``propagate_down[i]``, and accumulate parameter
  gradients into ``self.blobs[j].xdiff`` where ``self.param_propagate_down[j]``.

The Net calls the wrappers ``SetUp``, ``Forward`` and ``Backward`` (Caffe's
names), which check bottom/top counts, set loss weights and sum the loss.

Register a class with ``@register('TypeName')``.  pycaffe's Python layers are
plain subclasses of this class too.

Beyond those four methods, the Net and the Solver read a few hooks, all declared
on :class:`Layer` with a default, so that every layer answers them:
``is_data_layer``, ``need_backward``, ``force_zero_lr`` (class attributes),
``get_state()``/``set_state(state)`` (what a snapshot keeps beside the solver
state), ``close()`` (release threads and files) and ``engine_name()`` (the
implementation ``caffeine time`` reports).
"""
from __future__ import annotations


from . import backend, engines
from .blob import Blob
from .errors import LayerError
from .fillers import fill
from .proto import caffe_pb2
from .unsupported import unsupported_message

_REGISTRY = {}


class BlobVec(list):
    """A layer's parameter blobs; ``add_blob(*shape)`` as pycaffe's Layer.blobs."""

    def add_blob(self, *shape):
        b = Blob(*shape)
        self.append(b)
        return b


def register(*type_names):
    """Class decorator: register a layer class under Caffe type name(s).

    The class's ``type_name`` becomes the first name unless the class itself
    (not a parent) sets one: a registered subclass never reports its parent's type.
    """
    def deco(cls):
        for name in type_names:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError('layer type %r registered twice' % name)
            _REGISTRY[name] = cls
        if cls.__dict__.get('type_name') is None:
            cls.type_name = type_names[0]
        return cls
    return deco


def _load_all():
    # Importing the families fills the registry.
    import importlib
    importlib.import_module(__package__ + '.layers')


def layer_type_list():
    """Every registered Caffe layer type, sorted (pycaffe's layer_type_list)."""
    _load_all()
    return sorted(_REGISTRY)


def get_layer_class(type_name, layer_name=''):
    _load_all()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise LayerError(unsupported_message([(layer_name, type_name)], _REGISTRY))
    return cls


def check_layer_types(layer_params):
    """Raise one LayerError naming every layer whose type is not registered (and the fork
    each type comes from, where known), before any layer is built."""
    _load_all()
    bad = [(lp.name, lp.type) for lp in layer_params if lp.type not in _REGISTRY]
    if bad:
        raise LayerError(unsupported_message(bad, _REGISTRY))


def create_layer(layer_param, phase=None):
    """Build the layer for a caffe_pb2.LayerParameter."""
    cls = get_layer_class(layer_param.type, layer_param.name)
    return cls(layer_param, phase)


class Layer:
    """Base class of every layer (and of pycaffe-style Python layers)."""

    type_name = None
    # Bottom/top count rules, as Caffe's ExactNumBottomBlobs() and friends;
    # None means "no rule".
    exact_num_bottom = None
    min_bottom = None
    max_bottom = None
    exact_num_top = None
    min_top = None
    max_top = None
    equal_num_bottom_top = False
    auto_top_blobs = False
    # Whether the gradient w.r.t. bottom i may be computed (Caffe's AllowForceBackward).
    allow_force_backward_bottoms = None  # None = all; else a set of indices that may
    # True for layers that produce data from outside the net (no bottoms): the
    # memory planner never lets another blob share their tops.
    is_data_layer = False
    # Set by the Net once the graph is known: False when it will never call
    # this layer's backward (no loss above it, nothing to learn), so forward
    # may skip saving what only backward needs.  A layer used on its own
    # keeps True.
    need_backward = True
    # True when the layer's parameter blobs are statistics, never learned: the
    # Net sets their lr_mult to 0 whatever the prototxt says (BatchNorm).
    force_zero_lr = False

    def __init__(self, layer_param=None, phase=None):
        if layer_param is None:
            layer_param = caffe_pb2.LayerParameter()
        self.layer_param = layer_param
        if phase is None:
            phase = layer_param.phase
        self.phase = int(phase)
        self.blobs = BlobVec()
        self.param_propagate_down = []
        self.loss_weights = []
        self.name = layer_param.name

    # -- helpers for subclasses -------------------------------------
    @property
    def type(self):
        return self.type_name or type(self).__name__

    def error(self, msg):
        """A LayerError naming this layer and its type."""
        return LayerError('layer %r (%s): %s' % (self.name, self.type, msg))

    def allow_force_backward(self, bottom_index):
        a = self.allow_force_backward_bottoms
        return True if a is None else bottom_index in a

    # -- the four methods a layer defines ---------------------------
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        pass

    # -- hooks the Net and the Solver call -----------------------------
    def get_state(self):
        """What the layer needs, beyond its parameter blobs, to continue a run
        exactly (a data layer's position and random state), as plain JSON values;
        None when there is nothing to keep (the default).  The Solver saves it
        beside each snapshot and hands it back to :meth:`set_state` on restore."""
        return None

    def set_state(self, state):
        """Continue from a value :meth:`get_state` returned (by default, nothing to do)."""

    def close(self):
        """Release what the layer holds outside its blobs (threads, open files).
        Idempotent; called by ``Net.close``.  By default, nothing to do."""

    def engine_name(self):
        """The implementation this layer runs, as ``caffeine time`` reports it: ``cudnn`` where
        caffeine.engines put it on cuDNN, else the portable path on the current backend's
        array module (``numpy`` or ``cupy``)."""
        if engines.used_by(self) == 'CUDNN':
            return 'cudnn'
        return backend.get_xp().__name__

    # -- what the Net calls --------------------------------------------
    def check_blob_counts(self, bottom, top):
        nb, nt = len(bottom), len(top)
        def bad(what, want, got):
            raise self.error('takes %s %s, got %d' % (want, what, got))
        if self.exact_num_bottom is not None and nb != self.exact_num_bottom:
            bad('bottom blob(s)', 'exactly %d' % self.exact_num_bottom, nb)
        if self.min_bottom is not None and nb < self.min_bottom:
            bad('bottom blob(s)', 'at least %d' % self.min_bottom, nb)
        if self.max_bottom is not None and nb > self.max_bottom:
            bad('bottom blob(s)', 'at most %d' % self.max_bottom, nb)
        if self.exact_num_top is not None and nt != self.exact_num_top:
            bad('top blob(s)', 'exactly %d' % self.exact_num_top, nt)
        if self.min_top is not None and nt < self.min_top:
            bad('top blob(s)', 'at least %d' % self.min_top, nt)
        if self.max_top is not None and nt > self.max_top:
            bad('top blob(s)', 'at most %d' % self.max_top, nt)
        if self.equal_num_bottom_top and nb != nt:
            raise self.error('needs as many tops as bottoms, got %d bottoms and %d tops' % (nb, nt))

    def SetUp(self, bottom, top):
        """Check counts, set up, reshape, and set the loss weights (Caffe's SetUp)."""
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        if len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down += [True] * (len(self.blobs) - len(self.param_propagate_down))
        self.reshape(bottom, top)
        self.set_loss_weights(top)

    def set_loss_weights(self, top):
        lw = list(self.layer_param.loss_weight)
        if lw and len(lw) != len(top):
            raise self.error('has %d loss_weight values but %d tops' % (len(lw), len(top)))
        if not lw:
            lw = [float(self.default_loss_weight(i)) for i in range(len(top))]
        self.loss_weights = lw
        for t, w in zip(top, lw):
            if w != 0:
                t.xdiff.fill(w)

    def default_loss_weight(self, top_index):
        return 0.0

    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def Forward(self, bottom, top):
        """Reshape, then forward (as Caffe's Layer::Forward); returns this layer's weighted loss."""
        self.reshape(bottom, top)
        self.forward(bottom, top)
        loss = 0.0
        for t, w in zip(top, self.loss_weights):
            if w != 0:
                # Caffe: loss += dot(top data, top diff), the diff holding the weight
                loss += float((t.xdata * t.xdiff).sum())
        return loss

    def Backward(self, top, propagate_down, bottom):
        self.backward(top, propagate_down, bottom)

    def Reshape(self, bottom, top):
        self.reshape(bottom, top)

    # -- parameter blobs ---------------------------------------------
    def new_param_blob(self, shape, filler_param=None):
        """A parameter Blob of ``shape``, filled with ``filler_param`` if given."""
        b = Blob(shape)
        if filler_param is not None:
            fill(b, filler_param)
        return b

    def __repr__(self):
        return '<%s layer %r>' % (self.type, self.name)
