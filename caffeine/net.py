"""Net: a directed acyclic graph of layers built from a NetParameter.

Built once, as Caffe's Net::Init: the layers are filtered by the NetState
(phase, level, stages; include/exclude rules), Split layers are inserted where
several layers read one blob, each layer is set up in order, parameters are
shared by name, and Caffe's rules decide which layers need a backward pass.
Blobs are allocated at setup/reshape and reused every iteration.

The Python surface is pycaffe's: ``Net(model_file, phase, weights=None)``,
``net.blobs``, ``net.params``, ``net.layers``, ``net.forward()``, ...
"""
from __future__ import annotations

import collections
import logging
import os


from . import debug_info, memory_plan
from .blob import Blob
from .errors import CaffeineError, GraphError, LayerError
from .layer import check_layer_types, create_layer
from .onnx_engine import engine_net
from .proto import caffe_pb2
from .prototxt import read_net_param
from .pycaffe import PycaffeNet
from .weights import (copy_trained_layers_from, copy_weights_into, load_hdf5, net_to_proto, save_caffemodel,
                      save_hdf5)

log = logging.getLogger('caffeine')

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


# -- NetState filtering ----------------------------------------------------
def state_meets_rule(state, rule, layer_name=''):
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField('phase') and rule.phase != state.phase:
        return False
    if rule.HasField('min_level') and state.level < rule.min_level:
        return False
    if rule.HasField('max_level') and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    for s in rule.stage:
        if s not in stages:
            return False
    for s in rule.not_stage:
        if s in stages:
            return False
    return True


def filter_net(param):
    """A copy of ``param`` with only the layers its state includes (Caffe's FilterNet)."""
    state = param.state
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if len(lp.include) and len(lp.exclude):
            raise GraphError('layer %r specifies both include and exclude rules; use one' % lp.name)
        if len(lp.include):
            keep = any(state_meets_rule(state, r, lp.name) for r in lp.include)
        else:
            keep = not any(state_meets_rule(state, r, lp.name) for r in lp.exclude)
        if keep:
            out.layer.add().CopyFrom(lp)
    return out


# -- split insertion ---------------------------------------------------------
def split_layer_name(layer_name, blob_name, blob_idx):
    return '%s_%s_%d_split' % (blob_name, layer_name, blob_idx)


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    return '%s_%s_%d_split_%d' % (blob_name, layer_name, blob_idx, split_idx)


def insert_splits(param):
    """Caffe's InsertSplits: a Split layer after each top read by several bottoms."""
    last_top = {}
    bottom_src = {}
    count = collections.Counter()
    loss_w = {}
    for i, lp in enumerate(param.layer):
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                raise GraphError('layer %r (%s): unknown bottom blob %r (bottom index %d)'
                                 % (lp.name, lp.type, b, j))
            bottom_src[(i, j)] = last_top[b]
            count[last_top[b]] += 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
        for j in range(len(lp.top)):
            w = lp.loss_weight[j] if j < len(lp.loss_weight) else 0.0
            if w:
                loss_w[(i, j)] = w
                count[(i, j)] += 1
    if not any(c > 1 for c in count.values()):
        return param
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    split_idx = collections.Counter()
    for i, lp in enumerate(param.layer):
        nl = out.layer.add()
        nl.CopyFrom(lp)
        for j, b in enumerate(lp.bottom):
            src = bottom_src[(i, j)]
            if count[src] > 1:
                src_name = param.layer[src[0]].name
                nl.bottom[j] = split_blob_name(src_name, b, src[1], split_idx[src])
                split_idx[src] += 1
        for j, t in enumerate(lp.top):
            n = count[(i, j)]
            if n > 1:
                sp = out.layer.add()
                sp.name = split_layer_name(lp.name, t, j)
                sp.type = 'Split'
                sp.bottom.append(t)
                w = loss_w.get((i, j), 0.0)
                for k in range(n):
                    sp.top.append(split_blob_name(lp.name, t, j, k))
                    if w:
                        sp.loss_weight.append(w if k == 0 else 0.0)
                if w:
                    del nl.loss_weight[:]
    return out


def _parse_net_args(args, kwargs):
    """pycaffe's constructor forms: (file, phase), (file, weights, phase), (file, phase, weights=...)."""
    phase = kwargs.pop('phase', None)
    weights = kwargs.pop('weights', None)
    args = list(args)
    if args and isinstance(args[0], (str, bytes, os.PathLike)) and not isinstance(args[0], int):
        weights = args.pop(0) if weights is None else weights
    if args:
        phase = args.pop(0)
    if args:
        raise TypeError('Net() takes (model, phase) or (model, weights, phase)')
    if kwargs:
        raise TypeError('Net() got unexpected arguments: %s' % ', '.join(kwargs))
    return phase, weights


def _read_with_state(model, phase, level, stages, state):
    """The NetParameter of ``model`` with its NetState: ``state`` if given, else
    phase/level/stages (a NetParameter given as is may keep its own state)."""
    param = read_net_param(model)
    if state is not None:
        param.state.CopyFrom(state)
    elif phase is not None or not isinstance(model, caffe_pb2.NetParameter):
        if phase is None:
            raise TypeError('Net(): phase (caffeine.TRAIN or caffeine.TEST) is required')
        if phase not in (TRAIN, TEST):
            raise CaffeineError('phase must be caffeine.TRAIN (0) or caffeine.TEST (1), got %r' % (phase,))
        param.state.phase = phase
        param.state.level = int(level)
        del param.state.stage[:]
        param.state.stage.extend(stages)
    return param


def find_folds(layers, bottom_id_vecs, top_id_vecs):
    """{i: i + 1} for the pairs of layers that forward runs as one (BatchNorm with
    global statistics + an in-place Scale, neither asked for backward), and the
    function that runs such a pair; no pairs when CAFFEINE_NO_FOLDING is set."""
    # Imported here, not at the top: it loads every layer family, which
    # `import caffeine` does not need.
    from .layers.normalization import batchnorm_scale_forward, can_fold_batchnorm_scale
    if os.environ.get('CAFFEINE_NO_FOLDING', '') not in ('', '0'):
        return {}, batchnorm_scale_forward
    folds = {}
    for i in range(len(layers) - 1):
        if can_fold_batchnorm_scale(layers[i], layers[i + 1], bottom_id_vecs[i], top_id_vecs[i],
                                    bottom_id_vecs[i + 1], top_id_vecs[i + 1]):
            folds[i] = i + 1
    return folds, batchnorm_scale_forward


class Net(PycaffeNet):
    """A Caffe network. ``Net(model, phase)``, ``Net(model, weights, phase)``,
    ``Net(model, phase, weights=..., level=..., stages=...)``; ``model`` is a
    prototxt path, prototxt text, or a caffe_pb2.NetParameter.  ``engine=
    'onnxruntime'`` returns the TEST net run by ONNX Runtime instead (an OrtNet;
    ``engine_options``: its keyword arguments)."""

    def __new__(cls, *args, engine=None, engine_options=None, **kwargs):
        # engine='onnxruntime': this net, run by ONNX Runtime (caffeine.onnx_engine.OrtNet)
        if engine in (None, 'caffeine'):
            return super().__new__(cls)
        return engine_net(engine, lambda: cls(*args, **kwargs), **(engine_options or {}))

    def __init__(self, model, *args, level=0, stages=(), state=None, memory_plan=False, allow_missing=False,
                 engine=None, engine_options=None, **kwargs):
        phase, weights = _parse_net_args(args, kwargs)
        in_param = _read_with_state(model, phase, level, stages, state)
        self.phase = in_param.state.phase
        self.param = insert_splits(filter_net(in_param))
        self.name = self.param.name
        self.debug_info = self.param.debug_info
        # layers, by layer id
        self._layers, self._layer_names = [], []
        self.bottom_vecs, self.top_vecs = [], []              # Blobs
        self.bottom_id_vecs, self.top_id_vecs = [], []        # blob ids
        self.bottom_need_backward, self.layer_need_backward = [], []
        self.param_id_vecs = []                               # net param ids
        # blobs, by blob id
        self._blobs, self._blob_names, self._blob_name_to_idx = [], [], {}
        self.blob_need_backward, self.blob_loss_weights_ = [], []
        self._input_blob_indices, self._output_blob_indices = [], []
        # parameters, by net param id (every layer's blobs) ...
        self._params, self.param_layer_indices, self.param_display_names = [], [], []
        self.param_owners = []             # -1 if it owns itself, else the owner's param id
        self.learnable_param_ids = []      # its learnable param id (its owner's if shared)
        self._param_names_index = {}       # ParamSpec.name -> owner's param id
        # ... and by learnable param id (owners only)
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self.has_params_lr, self.has_params_decay = [], []
        # pycaffe's hooks: fn(layer index)
        self._before_forward, self._after_forward = [], []
        self._before_backward, self._after_backward = [], []

        self._init_layers()
        self._mark_backward()
        self._share_weights()
        self._folds, self._fold_forward = find_folds(self._layers, self.bottom_id_vecs, self.top_id_vecs)

        # pycaffe's views, by name
        self.blobs = collections.OrderedDict(zip(self._blob_names, self._blobs))
        self.layers = list(self._layers)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self._layers))
        self.params = collections.OrderedDict(
            (name, list(layer.blobs)) for name, layer in zip(self._layer_names, self._layers) if layer.blobs)
        self.top_names = self._names_by_layer(self.top_id_vecs)
        self.bottom_names = self._names_by_layer(self.bottom_id_vecs)
        self.blob_loss_weights = collections.OrderedDict(zip(self._blob_names, self.blob_loss_weights_))

        self.memory_planned = False
        self.unplanned_bytes = None        # blob bytes before plan_memory(), once planned
        if memory_plan:
            self.plan_memory()
        if weights is not None:
            copy_weights_into(self, weights if isinstance(weights, (list, tuple)) else [weights], allow_missing)

    # -- construction (Caffe's Net::Init) ---------------------------------------
    def _init_layers(self):
        """Create, wire and set up each layer in order; append its params."""
        available = {}     # blob name -> id, for the tops no later layer has consumed yet
        check_layer_types(self.param.layer)   # every unsupported type named at once
        for layer_id, lp in enumerate(self.param.layer):
            if not lp.HasField('phase'):
                lp.phase = self.phase
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise GraphError('layer %r (%s): propagate_down has %d values but the layer has %d bottoms'
                                 % (lp.name, lp.type, len(lp.propagate_down), len(lp.bottom)))
            layer = create_layer(lp, self.phase)
            self._layers.append(layer)
            self._layer_names.append(lp.name)
            need_backward = self._append_bottoms(lp, available)
            self._append_tops(lp, layer, available)
            self._set_up_layer(layer_id)
            need_backward |= self._append_params(layer_id)
            if need_backward:
                for tid in self.top_id_vecs[layer_id]:
                    self.blob_need_backward[tid] = True
            self.layer_need_backward.append(need_backward)
        # the tops no layer consumed are the net's outputs
        self._output_blob_indices = [available[n] for n in sorted(available)]

    def _append_bottoms(self, lp, available):
        """Caffe's AppendBottom for each bottom; True if one of them needs backward."""
        bvec, bids, bneed = [], [], []
        need_backward = False
        for j, bname in enumerate(lp.bottom):
            if bname not in available:
                raise GraphError('layer %r (%s): unknown bottom blob %r (bottom index %d)'
                                 % (lp.name, lp.type, bname, j))
            bid = available.pop(bname)
            bvec.append(self._blobs[bid])
            bids.append(bid)
            bneed.append(bool(lp.propagate_down[j]) if len(lp.propagate_down) else self.blob_need_backward[bid])
            need_backward |= self.blob_need_backward[bid]
        self.bottom_vecs.append(bvec)
        self.bottom_id_vecs.append(bids)
        self.bottom_need_backward.append(bneed)
        return need_backward

    def _append_tops(self, lp, layer, available):
        """Caffe's AppendTop for each top (in place when it names the bottom at its
        index), then the anonymous tops of a layer with AutoTopBlobs."""
        tvec, tids = [], []
        for j, tname in enumerate(lp.top):
            if j < len(lp.bottom) and lp.bottom[j] == tname:
                tid = self._blob_name_to_idx[tname]
            elif tname in self._blob_name_to_idx:
                raise GraphError('layer %r (%s): top blob %r is produced by multiple sources'
                                 % (lp.name, lp.type, tname))
            else:
                tid = self._new_blob(tname)
                self._blob_name_to_idx[tname] = tid
                if lp.type == 'Input':
                    self._input_blob_indices.append(tid)
            tvec.append(self._blobs[tid])
            tids.append(tid)
            available[tname] = tid
        if layer.auto_top_blobs:
            # a loss layer given no top still gets one, that no other layer can name
            needed = max(layer.min_top or 0, layer.exact_num_top or 0)
            while len(tvec) < needed:
                tid = self._new_blob('(automatic)')
                tvec.append(self._blobs[tid])
                tids.append(tid)
        self.top_vecs.append(tvec)
        self.top_id_vecs.append(tids)

    def _new_blob(self, name):
        """A new top blob and its bookkeeping; returns its id."""
        self._blobs.append(Blob())
        self._blob_names.append(name)
        self.blob_need_backward.append(False)
        self.blob_loss_weights_.append(0.0)
        return len(self._blobs) - 1

    def _set_up_layer(self, layer_id):
        """The layer's SetUp (errors name the layer), then its tops' loss weights."""
        layer, lp = self._layers[layer_id], self.param.layer[layer_id]
        try:
            layer.SetUp(self.bottom_vecs[layer_id], self.top_vecs[layer_id])
        except LayerError:
            raise
        except CaffeineError as e:
            # errors of data layers and helpers often name the layer already: name it once
            prefix = 'layer %r (%s): ' % (lp.name, lp.type)
            if str(e).startswith(prefix):
                raise
            raise LayerError(prefix + str(e))
        for j, tid in enumerate(self.top_id_vecs[layer_id]):
            w = layer.loss(j)
            if w:
                self.blob_loss_weights_[tid] = w
        if self.debug_info or log.isEnabledFor(logging.DEBUG):
            for t in self.top_vecs[layer_id]:
                log.info('Top shape: %s', t.shape_string())

    def _append_params(self, layer_id):
        """Caffe's AppendParam for each of the layer's parameter blobs; True if one is learned."""
        layer, lp = self._layers[layer_id], self.param.layer[layer_id]
        pids = []
        need_backward = False
        force_zero = layer.force_zero_lr
        for j in range(len(layer.blobs)):
            spec = lp.param[j] if j < len(lp.param) else caffe_pb2.ParamSpec()
            lr = 0.0 if force_zero else spec.lr_mult
            need_backward |= lr != 0
            if j < len(layer.param_propagate_down):
                layer.param_propagate_down[j] = lr != 0
            pids.append(self._append_param(layer_id, j, spec, lr))
        self.param_id_vecs.append(pids)
        if len(lp.param) > len(layer.blobs):
            raise GraphError('layer %r (%s): %d param specs but the layer has %d parameter blobs'
                             % (lp.name, lp.type, len(lp.param), len(layer.blobs)))
        return need_backward

    def _append_param(self, layer_id, j, spec, lr):
        """Record parameter ``j`` of a layer: a learnable param of its own, or (a
        ParamSpec name seen before) a share of its owner's; returns its param id."""
        blob = self._layers[layer_id].blobs[j]
        pid = len(self._params)
        self._params.append(blob)
        self.param_layer_indices.append((layer_id, j))
        name = spec.name
        self.param_display_names.append(name if name else str(j))
        if name and name in self._param_names_index:
            owner = self._param_names_index[name]
            self._check_shareable(layer_id, j, spec, owner)
            self.param_owners.append(owner)
            lid = self.learnable_param_ids[owner]
            self.learnable_param_ids.append(lid)
            self._merge_shared_multipliers(layer_id, spec, lr, lid)
            return pid
        if name:
            self._param_names_index[name] = pid
        self.param_owners.append(-1)
        self.learnable_param_ids.append(len(self.learnable_params))
        self.learnable_params.append(blob)
        self.has_params_lr.append(spec.HasField('lr_mult'))
        self.has_params_decay.append(spec.HasField('decay_mult'))
        self.params_lr.append(lr)
        self.params_weight_decay.append(spec.decay_mult)
        return pid

    def _check_shareable(self, layer_id, j, spec, owner):
        """Shapes (STRICT) or counts (PERMISSIVE) of a shared param and its owner agree."""
        lp = self.param.layer[layer_id]
        mine, theirs = self._layers[layer_id].blobs[j], self._params[owner]
        owner_name = self._layer_names[self.param_layer_indices[owner][0]]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if theirs.count != mine.count:
                raise GraphError('layer %r (%s): cannot share param %r (index %d) with layer %r: count %d != %d (PERMISSIVE)'
                                 % (lp.name, lp.type, spec.name, j, owner_name, mine.count, theirs.count))
        elif theirs.shape != mine.shape:
            raise GraphError('layer %r (%s): cannot share param %r (index %d) with layer %r: shape %s != %s '
                             '(STRICT; use share_mode PERMISSIVE to match counts only)'
                             % (lp.name, lp.type, spec.name, j, owner_name, list(mine.shape), list(theirs.shape)))

    def _merge_shared_multipliers(self, layer_id, spec, lr, lid):
        """A shared param's lr_mult/decay_mult, where given, set (or must equal) the owner's."""
        lp = self.param.layer[layer_id]
        if spec.HasField('lr_mult'):
            if self.has_params_lr[lid] and self.params_lr[lid] != lr:
                raise GraphError('layer %r: shared param %r specifies a different lr_mult (%g != %g)'
                                 % (lp.name, spec.name, lr, self.params_lr[lid]))
            self.has_params_lr[lid] = True
            self.params_lr[lid] = lr
        if spec.HasField('decay_mult'):
            if self.has_params_decay[lid] and self.params_weight_decay[lid] != spec.decay_mult:
                raise GraphError('layer %r: shared param %r specifies a different decay_mult (%g != %g)'
                                 % (lp.name, spec.name, spec.decay_mult, self.params_weight_decay[lid]))
            self.has_params_decay[lid] = True
            self.params_weight_decay[lid] = spec.decay_mult

    def _mark_backward(self):
        """Caffe's rules for which layers need backward: only those under a loss,
        and not those whose tops need no gradient; then force_backward; then each
        layer is told (it may skip keeping what only backward reads)."""
        under_loss, skip_backp = set(), set()
        for layer_id in range(len(self._layers) - 1, -1, -1):
            layer = self._layers[layer_id]
            contributes, skip_prop = False, True
            for j, tid in enumerate(self.top_id_vecs[layer_id]):
                name = self._blob_names[tid]
                contributes |= bool(layer.loss(j)) or name in under_loss
                skip_prop &= name in skip_backp
                if contributes and not skip_prop:
                    break
            bneed = self.bottom_need_backward[layer_id]
            if self.layer_need_backward[layer_id] and skip_prop:
                self.layer_need_backward[layer_id] = False
                bneed[:] = [False] * len(bneed)
            if not contributes:
                self.layer_need_backward[layer_id] = False
            for j, bid in enumerate(self.bottom_id_vecs[layer_id]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    bneed[j] = False
                if not bneed[j]:
                    skip_backp.add(name)
        if self.param.force_backward:
            self._force_backward()
        for layer, nb in zip(self._layers, self.layer_need_backward):
            layer.need_backward = bool(nb)

    def _force_backward(self):
        """NetParameter.force_backward: every layer, and every bottom its layer allows."""
        for layer_id, layer in enumerate(self._layers):
            self.layer_need_backward[layer_id] = True
            bneed = self.bottom_need_backward[layer_id]
            for j, bid in enumerate(self.bottom_id_vecs[layer_id]):
                bneed[j] = bneed[j] or layer.allow_force_backward(j)
                self.blob_need_backward[bid] = self.blob_need_backward[bid] or bneed[j]
            for j in range(len(layer.param_propagate_down)):
                layer.param_propagate_down[j] = True

    def _share_weights(self):
        """Shared params use their owner's data and diff (Caffe's ShareWeights)."""
        for pid, owner in enumerate(self.param_owners):
            if owner < 0:
                continue
            p, o = self._params[pid], self._params[owner]
            if p.shape != o.shape:
                p.reshape(o.shape)
            p.share_data(o)
            p.share_diff(o)

    def _names_by_layer(self, id_vecs):
        return collections.OrderedDict(
            (name, [self._blob_names[i] for i in ids]) for name, ids in zip(self._layer_names, id_vecs))

    # -- memory planning ------------------------------------------------------
    def plan_memory(self):
        """Let blobs whose values are no longer needed share storage (inference only;
        see :mod:`caffeine.memory_plan`).  Returns the bytes saved (0 for a net with a
        backward pass).  Afterwards an intermediate blob holds its value only until a
        later layer reuses its buffer: read outputs, or forward(end=...) to stop at a blob."""
        if any(self.layer_need_backward):
            return 0
        keep = set(self._input_blob_indices) | set(self._output_blob_indices)
        groups = memory_plan.blob_groups(self._layers, self.bottom_id_vecs, self.top_id_vecs, self._blobs, keep)
        before, after = memory_plan.share_buffers(groups, self._blobs)
        self.memory_planned = True
        self.unplanned_bytes = before * 4
        return (before - after) * 4

    # -- pycaffe-style properties -------------------------------------------
    @property
    def inputs(self):
        return [self._blob_names[i] for i in self._input_blob_indices]

    @property
    def outputs(self):
        return [self._blob_names[i] for i in self._output_blob_indices]

    @property
    def layer_names(self):
        return list(self._layer_names)

    @property
    def blob_names(self):
        return list(self._blob_names)

    def has_blob(self, name):
        return name in self._blob_name_to_idx

    def layer_by_name(self, name):
        return self.layer_dict[name]

    # -- running -----------------------------------------------------------
    def forward_from_to(self, start, end):
        """Run layers start..end inclusive (Caffe's ForwardFromTo); returns the loss."""
        loss = 0.0
        folded = None
        for i in range(start, end + 1):
            for cb in self._before_forward:
                cb(i)
            if i == folded:
                pass                     # computed with the layer before it
            elif i in self._folds and self._folds[i] <= end:
                self._fold_forward(self._layers[i], self._layers[i + 1], self.top_vecs[i][0])
                folded = i + 1
            else:
                loss += self._layers[i].Forward(self.bottom_vecs[i], self.top_vecs[i])
            if self.debug_info:
                debug_info.forward_info(self, i)
            for cb in self._after_forward:
                cb(i)
        return loss

    def backward_from_to(self, start, end):
        for i in range(start, end - 1, -1):
            for cb in self._before_backward:
                cb(i)
            if self.layer_need_backward[i]:
                self._layers[i].Backward(self.top_vecs[i], self.bottom_need_backward[i], self.bottom_vecs[i])
                if self.debug_info:
                    debug_info.backward_info(self, i)
            for cb in self._after_backward:
                cb(i)

    def forward_prefilled(self):
        """Forward over the whole net; returns the total loss (Caffe's Forward)."""
        return self.forward_from_to(0, len(self._layers) - 1)

    def backward_all(self):
        self.backward_from_to(len(self._layers) - 1, 0)
        if self.debug_info:
            debug_info.backward_total(self)

    def forward_backward(self):
        loss = self.forward_prefilled()
        self.backward_all()
        return loss

    # -- pycaffe's hooks -----------------------------------------------------
    def before_forward(self, fn):
        """Call ``fn(layer_index)`` before each layer's forward (pycaffe's hook)."""
        self._before_forward.append(fn)

    def after_forward(self, fn):
        """Call ``fn(layer_index)`` after each layer's forward."""
        self._after_forward.append(fn)

    def before_backward(self, fn):
        """Call ``fn(layer_index)`` before each layer's backward."""
        self._before_backward.append(fn)

    def after_backward(self, fn):
        """Call ``fn(layer_index)`` after each layer's backward."""
        self._after_backward.append(fn)

    def close(self):
        """Stop the data layers' prefetch threads and close their databases.
        Idempotent; the net can not read more data afterwards."""
        for layer in self._layers:
            layer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def reshape(self):
        """Propagate input shape changes through every layer (Caffe's Net::Reshape)."""
        for i, layer in enumerate(self._layers):
            layer.Reshape(self.bottom_vecs[i], self.top_vecs[i])

    def clear_param_diffs(self):
        for p in self.learnable_params:
            p.xdiff.fill(0)

    def update(self):
        for p in self.learnable_params:
            p.update()

    def share_with(self, other):
        """Share ``other``'s trained layers' parameter data (Caffe's ShareTrainedLayersWith)."""
        for layer_name, src in zip(other._layer_names, other._layers):
            if layer_name not in self.layer_dict:
                log.info('Ignoring source layer %s', layer_name)
                continue
            dst = self.layer_dict[layer_name]
            if len(src.blobs) != len(dst.blobs):
                raise CaffeineError('share_with: layer %r has %d param blobs here but %d in the source'
                                    % (layer_name, len(dst.blobs), len(src.blobs)))
            for j, (s, d) in enumerate(zip(src.blobs, dst.blobs)):
                if s.shape != d.shape:
                    raise CaffeineError('share_with: layer %r param %d shape %s != source %s'
                                        % (layer_name, j, list(d.shape), list(s.shape)))
                d.share_data(s)

    # -- weights ------------------------------------------------------------
    def copy_from(self, path):
        """Copy trained layers' weights from a .caffemodel or .caffemodel.h5 file (by layer name)."""
        return copy_trained_layers_from(self, path)

    def to_proto(self, write_diff=False):
        return net_to_proto(self, write_diff)

    def save(self, filename, write_diff=False):
        save_caffemodel(self, filename, write_diff)

    def save_hdf5(self, filename, write_diff=False):
        save_hdf5(self, filename, write_diff)

    def load_hdf5(self, filename):
        load_hdf5(self, filename)

    # -- debug info (Caffe's debug_info lines; see caffeine.debug_info) ------------
    def update_debug_info(self, pid):
        debug_info.update_info(self, pid)

    def __repr__(self):
        return '<caffeine.Net %r: %d layers, %d blobs>' % (self.name, len(self._layers), len(self._blobs))
