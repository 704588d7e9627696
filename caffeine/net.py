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

import numpy as np

from .blob import Blob
from .errors import CaffeineError, GraphError, LayerError
from .layer import create_layer
from .proto import caffe_pb2

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
    return phase, weights


class Net:
    """A Caffe network. ``Net(model, phase)``, ``Net(model, weights, phase)``,
    ``Net(model, phase, weights=..., level=..., stages=...)``; ``model`` is a
    prototxt path, prototxt text, or a caffe_pb2.NetParameter."""

    def __init__(self, model, *args, level=0, stages=(), state=None, memory_plan=False, **kwargs):
        phase, weights = _parse_net_args(args, kwargs)
        if kwargs:
            raise TypeError('Net() got unexpected arguments: %s' % ', '.join(kwargs))
        from .prototxt import read_net_param
        param = read_net_param(model)
        self._source = model if isinstance(model, str) and '\n' not in model else '<net>'
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
        self._init(param)
        self.memory_planned = False
        if memory_plan:
            self.plan_memory()
        if weights is not None:
            if isinstance(weights, (list, tuple)):
                for w in weights:
                    self.copy_from(w)
            else:
                self.copy_from(weights)

    # -- construction ------------------------------------------------------
    def _init(self, in_param):
        self.phase = in_param.state.phase
        filtered = filter_net(in_param)
        param = insert_splits(filtered)
        self.param = param
        self.name = param.name
        self.debug_info = param.debug_info
        self._layers = []
        self._layer_names = []
        self._blobs = []          # Blob objects, by blob id
        self._blob_names = []
        self._blob_name_to_idx = {}
        self.bottom_vecs, self.top_vecs = [], []
        self.bottom_id_vecs, self.top_id_vecs = [], []
        self.bottom_need_backward = []
        self.layer_need_backward = []
        self.blob_need_backward = []
        self.blob_loss_weights_ = []
        self.param_id_vecs = []
        self._params = []          # every param blob, by net param id
        self.param_owners = []     # -1 if it owns itself, else owner's param id
        self.param_display_names = []
        self.param_layer_indices = []
        self._param_names_index = {}
        self.learnable_params = []
        self.learnable_param_ids = []
        self.params_lr = []
        self.params_weight_decay = []
        self.has_params_lr, self.has_params_decay = [], []
        self._input_blob_indices = []
        available = {}
        self._before_forward, self._after_forward = [], []
        self._before_backward, self._after_backward = [], []

        for layer_id, lp in enumerate(param.layer):
            if not lp.HasField('phase'):
                lp.phase = self.phase
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise GraphError('layer %r (%s): propagate_down has %d values but the layer has %d bottoms'
                                 % (lp.name, lp.type, len(lp.propagate_down), len(lp.bottom)))
            layer = create_layer(lp, self.phase)
            self._layers.append(layer)
            self._layer_names.append(lp.name)
            bvec, bids, bneed = [], [], []
            need_backward = False
            for j, bname in enumerate(lp.bottom):
                if bname not in available:
                    raise GraphError('layer %r (%s): unknown bottom blob %r (bottom index %d)'
                                     % (lp.name, lp.type, bname, j))
                bid = self._blob_name_to_idx[bname]
                bvec.append(self._blobs[bid])
                bids.append(bid)
                nb = self.blob_need_backward[bid]
                if len(lp.propagate_down):
                    nb = bool(lp.propagate_down[j])
                bneed.append(nb)
                need_backward |= self.blob_need_backward[bid]
                del available[bname]
            tvec, tids = [], []
            for j, tname in enumerate(lp.top):
                if j < len(lp.bottom) and lp.bottom[j] == tname:
                    tid = self._blob_name_to_idx[tname]   # in place
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
                # Caffe's AutoTopBlobs: a loss layer given no top still gets
                # one, an anonymous blob that no other layer can name.
                needed = max(layer.min_top or 0, layer.exact_num_top or 0)
                while len(tvec) < needed:
                    tid = self._new_blob('(automatic)')
                    tvec.append(self._blobs[tid])
                    tids.append(tid)
            self.bottom_vecs.append(bvec)
            self.bottom_id_vecs.append(bids)
            self.bottom_need_backward.append(bneed)
            self.top_vecs.append(tvec)
            self.top_id_vecs.append(tids)
            try:
                layer.SetUp(bvec, tvec)
            except LayerError:
                raise
            except CaffeineError as e:
                raise LayerError('layer %r (%s): %s' % (lp.name, lp.type, e))
            for j, tid in enumerate(tids):
                w = layer.loss(j)
                if w:
                    self.blob_loss_weights_[tid] = w
            if self.debug_info or log.isEnabledFor(logging.DEBUG):
                for j, t in enumerate(tvec):
                    log.info('Top shape: %s', t.shape_string())
            # parameters
            pids = []
            force_zero = getattr(layer, 'force_zero_lr', False)
            for j, pblob in enumerate(layer.blobs):
                spec = lp.param[j] if j < len(lp.param) else caffe_pb2.ParamSpec()
                lr = 0.0 if force_zero else spec.lr_mult
                need = lr != 0
                need_backward |= need
                if j < len(layer.param_propagate_down):
                    layer.param_propagate_down[j] = need
                pids.append(self._append_param(layer_id, j, spec, lr))
            self.param_id_vecs.append(pids)
            if len(lp.param) > len(layer.blobs):
                raise GraphError('layer %r (%s): %d param specs but the layer has %d parameter blobs'
                                 % (lp.name, lp.type, len(lp.param), len(layer.blobs)))
            if need_backward:
                for tid in tids:
                    self.blob_need_backward[tid] = True
            self.layer_need_backward.append(need_backward)

        # Which layers contribute to the loss; prune backward where they do not.
        under_loss, skip_backp = set(), set()
        for layer_id in range(len(self._layers) - 1, -1, -1):
            layer = self._layers[layer_id]
            lp = param.layer[layer_id]
            contributes = False
            skip_prop = True
            for j, tid in enumerate(self.top_id_vecs[layer_id]):
                name = self._blob_names[tid]
                if layer.loss(j) or name in under_loss:
                    contributes = True
                if name not in skip_backp:
                    skip_prop = False
                if contributes and not skip_prop:
                    break
            if self.layer_need_backward[layer_id] and skip_prop:
                self.layer_need_backward[layer_id] = False
                self.bottom_need_backward[layer_id] = [False] * len(self.bottom_need_backward[layer_id])
            if not contributes:
                self.layer_need_backward[layer_id] = False
            for j, bid in enumerate(self.bottom_id_vecs[layer_id]):
                name = self._blob_names[bid]
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[layer_id][j] = False
                if not self.bottom_need_backward[layer_id][j]:
                    skip_backp.add(name)
        if param.force_backward:
            for layer_id, layer in enumerate(self._layers):
                self.layer_need_backward[layer_id] = True
                for j, bid in enumerate(self.bottom_id_vecs[layer_id]):
                    nb = self.bottom_need_backward[layer_id][j] or layer.allow_force_backward(j)
                    self.bottom_need_backward[layer_id][j] = nb
                    self.blob_need_backward[bid] = self.blob_need_backward[bid] or nb
                for j in range(len(layer.param_propagate_down)):
                    layer.param_propagate_down[j] = True
        # Layers the Net will never ask for a backward pass may skip keeping
        # what only backward reads (e.g. BatchNorm's normalized copy).
        for layer, nb in zip(self._layers, self.layer_need_backward):
            layer.need_backward = bool(nb)
        self._find_folds()
        self._output_names = sorted(available)
        self._output_blob_indices = [self._blob_name_to_idx[n] for n in self._output_names]
        self._share_weights()
        self._build_python_views()
        self._memory_used = sum(b.count for b in self._blobs) * 4

    def _new_blob(self, name):
        """A new top blob and its bookkeeping; returns its index."""
        self._blobs.append(Blob())
        self._blob_names.append(name)
        self.blob_need_backward.append(False)
        self.blob_loss_weights_.append(0.0)
        return len(self._blobs) - 1

    def _find_folds(self):
        """Pairs of layers that forward runs as one (BatchNorm + Scale at inference)."""
        from .layers.normalization import batchnorm_scale_forward, can_fold_batchnorm_scale
        self._fold_forward = batchnorm_scale_forward
        self._folds = {}
        if os.environ.get('CAFFEINE_NO_FOLDING', '') not in ('', '0'):
            return
        for i in range(len(self._layers) - 1):
            if can_fold_batchnorm_scale(self._layers[i], self._layers[i + 1],
                                        self.bottom_id_vecs[i], self.top_id_vecs[i],
                                        self.bottom_id_vecs[i + 1], self.top_id_vecs[i + 1]):
                self._folds[i] = i + 1

    def _append_param(self, layer_id, j, spec, lr):
        layer = self._layers[layer_id]
        lp = self.param.layer[layer_id]
        pid = len(self._params)
        self._params.append(layer.blobs[j])
        self.param_layer_indices.append((layer_id, j))
        name = spec.name
        self.param_display_names.append(name if name else str(j))
        if not name or name not in self._param_names_index:
            if name:
                self._param_names_index[name] = pid
            self.param_owners.append(-1)
            self.learnable_param_ids.append(len(self.learnable_params))
            self.learnable_params.append(layer.blobs[j])
            self.has_params_lr.append(spec.HasField('lr_mult'))
            self.has_params_decay.append(spec.HasField('decay_mult'))
            self.params_lr.append(lr)
            self.params_weight_decay.append(spec.decay_mult)
            return pid
        owner = self._param_names_index[name]
        self.param_owners.append(owner)
        owner_layer, owner_j = self.param_layer_indices[owner]
        owner_blob = self._params[owner]
        mine = layer.blobs[j]
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if owner_blob.count != mine.count:
                raise GraphError('layer %r (%s): cannot share param %r (index %d) with layer %r: count %d != %d (PERMISSIVE)'
                                 % (lp.name, lp.type, name, j, self._layer_names[owner_layer], mine.count, owner_blob.count))
        elif owner_blob.shape != mine.shape:
            raise GraphError('layer %r (%s): cannot share param %r (index %d) with layer %r: shape %s != %s '
                             '(STRICT; use share_mode PERMISSIVE to match counts only)'
                             % (lp.name, lp.type, name, j, self._layer_names[owner_layer],
                                list(mine.shape), list(owner_blob.shape)))
        lid = self.learnable_param_ids[owner]
        self.learnable_param_ids.append(lid)
        if spec.HasField('lr_mult'):
            if self.has_params_lr[lid] and self.params_lr[lid] != lr:
                raise GraphError('layer %r: shared param %r specifies a different lr_mult (%g != %g)'
                                 % (lp.name, name, lr, self.params_lr[lid]))
            self.has_params_lr[lid] = True
            self.params_lr[lid] = lr
        if spec.HasField('decay_mult'):
            if self.has_params_decay[lid] and self.params_weight_decay[lid] != spec.decay_mult:
                raise GraphError('layer %r: shared param %r specifies a different decay_mult (%g != %g)'
                                 % (lp.name, name, spec.decay_mult, self.params_weight_decay[lid]))
            self.has_params_decay[lid] = True
            self.params_weight_decay[lid] = spec.decay_mult
        return pid

    def _share_weights(self):
        for pid, owner in enumerate(self.param_owners):
            if owner < 0:
                continue
            p, o = self._params[pid], self._params[owner]
            if p.shape != o.shape:
                p.reshape(o.shape)
            p.share_data(o)
            p.share_diff(o)

    def _build_python_views(self):
        self.blobs = collections.OrderedDict((n, self._blobs[i]) for i, n in enumerate(self._blob_names))
        self.layers = list(self._layers)
        self.layer_dict = collections.OrderedDict(zip(self._layer_names, self._layers))
        self.params = collections.OrderedDict(
            (name, list(layer.blobs)) for name, layer in zip(self._layer_names, self._layers) if layer.blobs)
        self.top_names = collections.OrderedDict(
            (name, [self._blob_names[i] for i in ids]) for name, ids in zip(self._layer_names, self.top_id_vecs))
        self.bottom_names = collections.OrderedDict(
            (name, [self._blob_names[i] for i in ids]) for name, ids in zip(self._layer_names, self.bottom_id_vecs))
        self.blob_loss_weights = collections.OrderedDict(zip(self._blob_names, self.blob_loss_weights_))

    # -- memory planning ------------------------------------------------------
    def plan_memory(self):
        """Let blobs whose values are no longer needed share storage (inference only).

        Each blob's data lives from the layer that makes it to the last layer
        that reads it; blobs whose lives do not overlap share one buffer, the
        largest blobs placed first.  Inputs and outputs keep their own buffers.  Only for
        nets with no backward pass: afterwards an intermediate blob holds its
        value only until a later layer reuses its buffer (read outputs, or
        forward(end=...) to stop at the blob you want).  Returns the bytes saved.
        """
        if any(self.layer_need_backward):
            return 0
        from .blob import SyncedMemory
        keep = set(self._input_blob_indices) | set(self._output_blob_indices)
        groups = {}  # id(SyncedMemory) -> [first, last, count, [blob ids], fixed]
        for layer_id in range(len(self._layers)):
            for bid in self.bottom_id_vecs[layer_id] + self.top_id_vecs[layer_id]:
                b = self._blobs[bid]
                if b._data is None:
                    continue
                g = groups.setdefault(id(b._data), [layer_id, layer_id, 0, [], False])
                g[0] = min(g[0], layer_id)
                g[1] = max(g[1], layer_id)
                g[2] = max(g[2], b._data.capacity)
                if bid not in g[3]:
                    g[3].append(bid)
                if bid in keep or getattr(self._layers[layer_id], 'is_data_layer', False):
                    g[4] = True
        before = sum(g[2] for g in groups.values())
        # Greedy by size: the largest blobs first, each into the smallest buffer
        # whose blobs' lives do not overlap its own, else a new buffer of its
        # size (buffers are made largest first, so none ever grows).
        plan = sorted((g for g in groups.values() if not g[4]), key=lambda g: (-g[2], g[0]))
        buffers = []  # [capacity, [groups]]
        for g in plan:
            best = None
            for buf in buffers:
                if all(g[0] > h[1] or h[0] > g[1] for h in buf[1]):
                    if best is None or buf[0] < best[0]:
                        best = buf
            if best is None:
                best = [g[2], []]
                buffers.append(best)
            best[1].append(g)
        for buf in buffers:
            mem = SyncedMemory(buf[0])
            for g in buf[1]:
                for bid in g[3]:
                    self._blobs[bid]._set_data_memory(mem)
        after = sum(g[2] for g in groups.values() if g[4]) + sum(buf[0] for buf in buffers)
        self.memory_planned = True
        self._unplanned_bytes = before * 4
        self._planned_saving = (before - after) * 4
        return self._planned_saving

    # -- pycaffe-style properties -------------------------------------------
    @property
    def inputs(self):
        return [self._blob_names[i] for i in self._input_blob_indices]

    @property
    def outputs(self):
        return list(self._output_names)

    @property
    def layer_names(self):
        return list(self._layer_names)

    @property
    def blob_names(self):
        return list(self._blob_names)

    def has_blob(self, name):
        return name in self._blob_name_to_idx

    def blob_by_name(self, name):
        try:
            return self.blobs[name]
        except KeyError:
            raise CaffeineError('unknown blob name %r' % name)

    def has_layer(self, name):
        return name in self.layer_dict

    def layer_by_name(self, name):
        return self.layer_dict[name]

    def _layer_index(self, name):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise CaffeineError('unknown layer name %r' % name)

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
                self._forward_debug_info(i)
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
                    self._backward_debug_info(i)
            for cb in self._after_backward:
                cb(i)

    def forward_prefilled(self):
        """Forward over the whole net; returns the total loss (Caffe's Forward)."""
        return self.forward_from_to(0, len(self._layers) - 1)

    def backward_all(self):
        self.backward_from_to(len(self._layers) - 1, 0)
        if self.debug_info:
            asum_data = sum(p.asum_data() for p in self.learnable_params)
            asum_diff = sum(p.asum_diff() for p in self.learnable_params)
            log.info('    [Backward] All net params (data, diff): L1 norm = (%g, %g)', asum_data, asum_diff)

    def forward_backward(self):
        loss = self.forward_prefilled()
        self.backward_all()
        return loss

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: set inputs from kwargs, run, return {output: array}."""
        if blobs is None:
            blobs = []
        start_ind = self._layer_index(start) if start is not None else 0
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.top_names[end] + list(blobs))
        else:
            end_ind = len(self._layers) - 1
            outputs = set(self.outputs + list(blobs))
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise CaffeineError('input blob arguments %s do not match net inputs %s'
                                    % (sorted(kwargs), self.inputs))
            for name, arr in kwargs.items():
                blob = self.blobs[name]
                arr = np.asarray(arr)
                if arr.ndim and arr.shape[0] != blob.shape[0]:
                    raise CaffeineError('input %r is not batch sized: %d != %d' % (name, arr.shape[0], blob.shape[0]))
                blob.data[...] = arr
        self._last_loss = self.forward_from_to(start_ind, end_ind)
        return {out: self.blobs[out].data for out in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: set top diffs from kwargs, run, return {input: diff}."""
        if diffs is None:
            diffs = []
        start_ind = self._layer_index(start) if start is not None else len(self._layers) - 1
        if end is not None:
            end_ind = self._layer_index(end)
            outputs = set(self.bottom_names[end] + list(diffs))
        else:
            end_ind = 0
            outputs = set(self.inputs + list(diffs))
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CaffeineError('top diff arguments %s do not match net outputs %s'
                                    % (sorted(kwargs), self.outputs))
            for name, arr in kwargs.items():
                blob = self.blobs[name]
                arr = np.asarray(arr)
                if arr.ndim and arr.shape[0] != blob.shape[0]:
                    raise CaffeineError('diff %r is not batch sized: %d != %d' % (name, arr.shape[0], blob.shape[0]))
                blob.diff[...] = arr
        self.backward_from_to(start_ind, end_ind)
        return {out: self.blobs[out].diff for out in outputs}

    # -- pycaffe's batch helpers and hooks -----------------------------------
    def _batches(self, arrays):
        """Split {blob: array} into net-sized batches; the last one padded with zeros."""
        if not arrays:
            return
        n = {len(a) for a in arrays.values()}
        if len(n) != 1:
            raise CaffeineError('inputs have different numbers of items: %s'
                                % {k: len(a) for k, a in arrays.items()})
        n = n.pop()
        size = self.blobs[next(iter(arrays))].shape[0]
        for i in range(0, n, size):
            batch = {}
            for name, a in arrays.items():
                chunk = np.asarray(a[i:i + size])
                if len(chunk) < size:
                    pad = np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)
                    chunk = np.concatenate([chunk, pad])
                batch[name] = chunk
            yield batch

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's Net.forward_all: forward every item of the inputs given as
        kwargs, batch by batch; returns {output (and each of ``blobs``): array}
        with one row per item (the padding of the last batch dropped)."""
        names = set(self.outputs + list(blobs or []))
        outs = {name: [] for name in names}
        for batch in self._batches(kwargs):
            for name, arr in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(arr.copy())
        return self._unpad(outs, kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's Net.forward_backward_all: kwargs name inputs (forwarded)
        and outputs (their diffs, backpropagated); returns ({outputs}, {input diffs})."""
        fwd = {k: v for k, v in kwargs.items() if k in self.inputs}
        bwd = {k: v for k, v in kwargs.items() if k in self.outputs}
        other = set(kwargs) - set(fwd) - set(bwd)
        if other:
            raise CaffeineError('forward_backward_all: %s are neither net inputs %s nor outputs %s'
                                % (sorted(other), self.inputs, self.outputs))
        outs = {name: [] for name in set(self.outputs + list(blobs or []))}
        grads = {name: [] for name in set(self.inputs + list(diffs or []))}
        fb = self._batches(fwd)
        bb = self._batches(bwd)
        for fbatch in fb:
            bbatch = next(bb, {})
            for name, arr in self.forward(blobs=blobs, **fbatch).items():
                outs[name].extend(arr.copy())
            for name, arr in self.backward(diffs=diffs, **bbatch).items():
                grads[name].extend(arr.copy())
        return self._unpad(outs, fwd), self._unpad(grads, fwd)

    @staticmethod
    def _unpad(collected, given):
        out = {k: np.asarray(v) for k, v in collected.items()}
        if given and out:
            n = len(next(iter(given.values())))
            out = {k: v[:n] for k, v in out.items()}
        return out

    def set_input_arrays(self, data, labels):
        """pycaffe's Net.set_input_arrays: give the first layer, a MemoryData
        layer, ``data`` (N x C x H x W) and ``labels`` (N) to serve batch by batch."""
        if not self._layers or self._layers[0].type != 'MemoryData':
            raise CaffeineError('set_input_arrays: the first layer must be a MemoryData layer, not %s'
                                % (self._layers[0].type if self._layers else 'nothing'))
        self._layers[0].set_input_arrays(data, labels)

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
            close = getattr(layer, 'close', None)
            if callable(close):
                close()

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
        """Copy trained layers' weights from a .caffemodel or .caffemodel.h5 (by layer name)."""
        from .weights import copy_trained_layers_from
        return copy_trained_layers_from(self, path)

    def copy_from_param(self, net_param):
        from .weights import copy_trained_layers_from_param
        return copy_trained_layers_from_param(self, net_param)

    def to_proto(self, write_diff=False):
        from .weights import net_to_proto
        return net_to_proto(self, write_diff)

    def save(self, filename, write_diff=False):
        from .weights import save_caffemodel
        save_caffemodel(self, filename, write_diff)

    def save_hdf5(self, filename, write_diff=False):
        from .weights import save_hdf5
        save_hdf5(self, filename, write_diff)

    def load_hdf5(self, filename):
        from .weights import load_hdf5
        load_hdf5(self, filename)

    # -- debug info -----------------------------------------------------------
    def _forward_debug_info(self, i):
        for j, t in enumerate(self.top_vecs[i]):
            log.info('    [Forward] Layer %s, top blob %s data: %g', self._layer_names[i],
                     self._blob_names[self.top_id_vecs[i][j]], t.asum_data() / max(t.count, 1))
        for j, pid in enumerate(self.param_id_vecs[i]):
            p = self._params[pid]
            log.info('    [Forward] Layer %s, param blob %d data: %g', self._layer_names[i], j,
                     p.asum_data() / max(p.count, 1))

    def _backward_debug_info(self, i):
        for j, b in enumerate(self.bottom_vecs[i]):
            if not self.bottom_need_backward[i][j]:
                continue
            log.info('    [Backward] Layer %s, bottom blob %s diff: %g', self._layer_names[i],
                     self._blob_names[self.bottom_id_vecs[i][j]], b.asum_diff() / max(b.count, 1))
        for j, p in enumerate(self._layers[i].blobs):
            if not self._layers[i].param_propagate_down[j]:
                continue
            log.info('    [Backward] Layer %s, param blob %d diff: %g', self._layer_names[i], j,
                     p.asum_diff() / max(p.count, 1))

    def update_debug_info(self, pid):
        p = self._params[pid]
        layer_id, j = self.param_layer_indices[pid]
        name = self._layer_names[layer_id]
        if self.param_owners[pid] < 0:
            log.info('    [Update] Layer %s, param %d data: %g; diff: %g', name, j,
                     p.asum_data() / max(p.count, 1), p.asum_diff() / max(p.count, 1))
        else:
            owner_layer = self._layer_names[self.param_layer_indices[self.param_owners[pid]][0]]
            log.info('    [Update] Layer %s, param blob %d (owned by layer %s, param %d)', name, j,
                     owner_layer, self.param_layer_indices[self.param_owners[pid]][1])

    def __repr__(self):
        return '<caffeine.Net %r: %d layers, %d blobs>' % (self.name, len(self._layers), len(self._blobs))
