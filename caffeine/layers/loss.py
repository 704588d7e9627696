"""Loss layers (and Accuracy), as in BVLC Caffe 1.0.

Every loss layer has a scalar top 0 whose default loss weight is 1; in
backward the loss weight is the value Caffe put in ``top[0].xdiff``.  Label
bottoms take no gradient: they are left out of force_backward (Caffe's
``AllowForceBackward``) and asking for their gradient is an error, as Caffe's
"Layer cannot backpropagate to label inputs".

Labels are float blobs cast to int (C truncation); a label outside [0, C)
that is not the ignore_label is reported as an error naming the layer and the
value (Caffe only DCHECKs it and computes garbage in a release build).
"""
from __future__ import annotations

import numpy as np

from .. import backend, engines
from ..blob import Blob
from ..layer import Layer, register
from ..proto import caffe_pb2
from ._util import canonical_axis, shape_count, sigmoid_tanh
from ..weights import blob_proto_to_array

FLT_MIN = float(np.finfo(np.float32).tiny)   # Caffe's clamp in SoftmaxWithLoss
kLOG_THRESHOLD = 1e-20                       # Caffe's clamp in MultinomialLogistic/Infogain

_LP = caffe_pb2.LossParameter






def read_labels(layer, label_data, num_classes, ignore_label=None):
    """int32 labels (truncated as C does) and the valid mask (bool) or None.

    Raises a one-line error for a label outside [0, num_classes) that is
    not ignore_label.
    """
    xp = backend.get_xp()
    lab = label_data.astype(np.int32)
    valid = None
    if ignore_label is not None:
        valid = lab != ignore_label
        bad = (lab < 0) | (lab >= num_classes)
        bad &= valid
    else:
        bad = (lab < 0) | (lab >= num_classes)
    if bool(bad.any()):
        first = float(backend.to_host(label_data[bad].ravel()[:1])[0])
        pos = int(backend.to_host(xp.flatnonzero(bad.ravel())[:1])[0])
        raise layer.error('label value %s (at index %d) is outside [0, %d)%s'
                         % (('%g' % first), pos, num_classes,
                            '' if ignore_label is None else ' and is not ignore_label %d' % ignore_label))
    if valid is not None:
        lab = xp.where(valid, lab, 0).astype(np.int32)
    return lab, valid


class LossLayer(Layer):
    """Caffe's LossLayer: two bottoms (predictions, labels), a scalar loss top."""

    exact_num_bottom = 2
    exact_num_top = None
    min_top = 1
    max_top = 1
    auto_top_blobs = True
    # Caffe's LossLayer::AllowForceBackward: every bottom but the labels (1).
    allow_force_backward_bottoms = frozenset([0])
    label_bottoms = (1,)

    def default_loss_weight(self, top_index):
        return 1.0 if top_index == 0 else 0.0

    # -- helpers -------------------------------------------------------------
    def check_first_dim(self, bottom):
        s0, s1 = bottom[0].shape, bottom[1].shape
        if not s0 or not s1 or s0[0] != s1[0]:
            raise self.error('the data and label should have the same first dimension: '
                             'bottom shapes %s and %s' % (list(s0), list(s1)))

    def check_label_propagation(self, propagate_down, what='label inputs'):
        for i in self.label_bottoms:
            if i < len(propagate_down) and propagate_down[i]:
                raise self.error('cannot backpropagate to %s (bottom %d)' % (what, i))

    def read_normalization(self, default=_LP.VALID):
        """Caffe's normalization mode, with the legacy ``normalize`` bool."""
        lp = self.layer_param.loss_param
        if lp.HasField('normalization'):
            return lp.normalization
        if lp.HasField('normalize'):
            return _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        return default

    def normalizer(self, mode, outer, inner, valid_count=None):
        """Caffe's get_normalizer, at least 1.  valid_count may be an xp array."""
        if mode == _LP.FULL:
            n = float(outer * inner)
        elif mode == _LP.VALID:
            if valid_count is None:
                n = float(outer * inner)
            else:
                return backend.get_xp().maximum(valid_count.astype(np.float32), np.float32(1))
        elif mode == _LP.BATCH_SIZE:
            n = float(outer)
        elif mode == _LP.NONE:
            n = 1.0
        else:
            raise self.error('unknown normalization mode %d' % mode)
        return max(1.0, n)

    def read_labels(self, label_data, num_classes, ignore_label=None):
        return read_labels(self, label_data, num_classes, ignore_label)

    def sample_labels(self, bottom):
        """(labels, row indices) for predictions of ``self.num`` x ``self.dim`` with one label per sample."""
        lab, _ = self.read_labels(bottom[1].xdata.ravel(), self.dim)
        return lab, backend.get_xp().arange(self.num)


# ---------------------------------------------------------------------------------
class _SoftmaxOverClassesLoss(LossLayer):
    """What SoftmaxWithLoss and InfogainLoss share: the scores seen as (outer x C x inner)
    along the class axis, one label per (outer, inner) position, and the softmax
    probabilities kept in ``self.prob`` (also top 1 when asked for)."""
    max_top = 2

    def _reshape_classes(self, bottom, top, axis, label_hint=''):
        self.check_first_dim(bottom)
        self.axis = canonical_axis(self, bottom[0], axis)
        shape = bottom[0].shape
        self.outer = shape_count(shape, 0, self.axis)
        self.C = int(shape[self.axis])
        self.inner = shape_count(shape, self.axis + 1)
        if self.outer * self.inner != bottom[1].count:
            raise self.error('number of labels must match number of predictions%s: scores %s, labels %s'
                             % (label_hint, list(shape), list(bottom[1].shape)))
        top[0].reshape(())
        if self.prob.shape != shape:
            self.prob.reshape(shape)
        if len(top) > 1:
            top[1].reshape(shape)

    def _softmax(self, x, p):
        """p = softmax of x over the class axis (both outer x C x inner in memory)."""
        xp = backend.get_xp()
        shape = (self.outer, self.C, self.inner)
        x3 = x.reshape(shape)
        p3 = p.reshape(shape)
        cudnn = engines.softmax(self)  # as Caffe's inner Softmax layer: cuDNN on the GPU where present
        if cudnn is not None:
            cudnn.forward(x3, p3)
            return
        xp.subtract(x3, x3.max(axis=1, keepdims=True), out=p3)
        xp.exp(p3, out=p3)
        p3 /= p3.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------
@register('SoftmaxWithLoss')
class SoftmaxWithLossLayer(_SoftmaxOverClassesLoss):
    """Softmax over ``softmax_param.axis`` then the multinomial logistic loss.

    bottom: scores (outer x C x inner), labels (outer*inner values in [0, C)).
    top: loss (scalar), optionally the probabilities (shape of the scores, loss weight 0).
    loss = -sum log(max(p[label], FLT_MIN)) / normalizer, skipping ignore_label.
    """

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = int(lp.ignore_label) if lp.HasField('ignore_label') else None
        self.normalization = self.read_normalization()
        self.prob = Blob()
        self._shape = None

    def reshape(self, bottom, top):
        self._reshape_classes(bottom, top, self.layer_param.softmax_param.axis,
                              '; e.g., if softmax axis == 1 and prediction shape is (N, C, H, W), label count '
                              '(number of labels) must be N*H*W, with integer values in {0, 1, ..., C-1}')
        if self._shape != (self.outer, self.C, self.inner):
            self._shape = (self.outer, self.C, self.inner)
            xp = backend.get_xp()
            o = xp.arange(self.outer, dtype=np.int64)[:, None] * (self.C * self.inner)
            self._base_idx = (o + xp.arange(self.inner, dtype=np.int64)[None, :]).ravel()
            self._base_mode = backend.mode()
        elif self._base_mode != backend.mode():
            self._base_idx = backend.to_device(backend.to_host(self._base_idx))
            self._base_mode = backend.mode()

    def _indices(self, bottom):
        if self._base_mode != backend.mode():
            self._base_idx = backend.to_device(backend.to_host(self._base_idx))
            self._base_mode = backend.mode()
        lab, valid = self.read_labels(bottom[1].xdata.ravel(), self.C, self.ignore_label)
        idx = self._base_idx + lab.astype(np.int64) * self.inner
        return idx, valid

    def forward(self, bottom, top):
        xp = backend.get_xp()
        p = self.prob.xdata
        self._softmax(bottom[0].xdata, p)
        idx, valid = self._indices(bottom)
        logp = xp.log(xp.maximum(p.ravel()[idx], np.float32(FLT_MIN)))
        if valid is not None:
            logp *= valid
            count = valid.sum()
        else:
            count = None
        norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        top[0].xdata[...] = -logp.sum(dtype=np.float32) / norm
        if len(top) > 1:
            top[1].xdata[...] = p

    def backward(self, top, propagate_down, bottom):
        self.check_label_propagation(propagate_down)
        if not propagate_down[0]:
            return
        d = bottom[0].xdiff
        d[...] = self.prob.xdata
        idx, valid = self._indices(bottom)
        flat = d.reshape(-1)
        flat[idx] -= np.float32(1)
        count = None
        if valid is not None:
            d3 = d.reshape(self._shape)
            d3 *= valid.reshape(self.outer, 1, self.inner)
            count = valid.sum()
        norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        d *= top[0].xdiff / norm


# ---------------------------------------------------------------------------------
@register('EuclideanLoss')
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / N / 2, N = a.shape[0]; both bottoms take gradients."""
    allow_force_backward_bottoms = None   # Caffe: both inputs may be forced
    label_bottoms = ()

    def setup(self, bottom, top):
        self.diff = Blob()

    def reshape(self, bottom, top):
        self.check_first_dim(bottom)
        if shape_count(bottom[0].shape, 1) != shape_count(bottom[1].shape, 1):
            raise self.error('inputs must have the same dimension: bottom shapes %s and %s'
                             % (list(bottom[0].shape), list(bottom[1].shape)))
        top[0].reshape(())
        if self.diff.shape != bottom[0].shape:
            self.diff.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        d = self.diff.xdata
        xp.subtract(bottom[0].xdata, bottom[1].xdata.reshape(d.shape), out=d)
        num = bottom[0].shape[0]
        top[0].xdata[...] = xp.vdot(d.ravel(), d.ravel()) / np.float32(num) / np.float32(2)

    def backward(self, top, propagate_down, bottom):
        num = bottom[0].shape[0]
        d = self.diff.xdata
        for i in (0, 1):
            if propagate_down[i]:
                sign = 1.0 if i == 0 else -1.0
                alpha = top[0].xdiff * np.float32(sign / num)
                bd = bottom[i].xdiff
                backend.get_xp().multiply(d.reshape(bd.shape), alpha, out=bd)


# ---------------------------------------------------------------------------------
@register('SigmoidCrossEntropyLoss')
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1], in Caffe's stable form.

    loss = -sum[x (t - (x >= 0)) - log(1 + exp(x - 2 x (x >= 0)))] / normalizer.
    Normalization defaults to BATCH_SIZE (Caffe's default for this layer when
    neither ``normalization`` nor ``normalize`` is given); ignore_label skips targets.
    """

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = int(lp.ignore_label) if lp.HasField('ignore_label') else None
        self.normalization = self.read_normalization(default=_LP.BATCH_SIZE)

    def reshape(self, bottom, top):
        self.check_first_dim(bottom)
        if bottom[0].count != bottom[1].count:
            raise self.error('SIGMOID_CROSS_ENTROPY_LOSS layer inputs must have the same count: '
                             'bottom shapes %s and %s' % (list(bottom[0].shape), list(bottom[1].shape)))
        top[0].reshape(())
        self.outer = bottom[0].shape[0]
        self.inner = shape_count(bottom[0].shape, 1)

    def _valid(self, t):
        if self.ignore_label is None:
            return None
        return t.astype(np.int32) != self.ignore_label

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata
        t = bottom[1].xdata.reshape(x.shape)
        pos = (x >= 0).astype(np.float32)
        term = x * (t - pos) - xp.log1p(xp.exp(x - 2 * x * pos))
        valid = self._valid(t)
        count = None
        if valid is not None:
            term *= valid
            count = valid.sum()
        norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        top[0].xdata[...] = -term.sum(dtype=np.float32) / norm

    def backward(self, top, propagate_down, bottom):
        self.check_label_propagation(propagate_down)
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        x = bottom[0].xdata
        t = bottom[1].xdata.reshape(x.shape)
        d = bottom[0].xdiff
        sigmoid_tanh(xp, x, d)
        d -= t
        valid = self._valid(t)
        count = None
        if valid is not None:
            d *= valid
            count = valid.sum()
        norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        d *= top[0].xdiff / norm


# ---------------------------------------------------------------------------------
@register('HingeLoss')
class HingeLossLayer(LossLayer):
    """One-vs-all hinge loss: t = -1 except t[label] = 1; loss = sum max(0, 1 - t x)^p / N.

    hinge_loss_param.norm: L1 (p = 1, default) or L2 (p = 2).
    """

    def setup(self, bottom, top):
        self.norm = self.layer_param.hinge_loss_param.norm
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise self.error('unknown norm %d' % self.norm)
        self.diff = Blob()

    def reshape(self, bottom, top):
        self.check_first_dim(bottom)
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)
        if bottom[1].count != self.num:
            raise self.error('needs one label per sample: %d samples, %d labels'
                             % (self.num, bottom[1].count))
        top[0].reshape(())
        if self.diff.shape != (self.num, self.dim):
            self.diff.reshape((self.num, self.dim))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        lab, rows = self.sample_labels(bottom)
        d = self.diff.xdata
        d[...] = bottom[0].xdata.reshape(self.num, self.dim)
        d[rows, lab] *= np.float32(-1)
        d += np.float32(1)
        xp.maximum(d, np.float32(0), out=d)
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            s = xp.abs(d).sum(dtype=np.float32)
        else:
            s = xp.vdot(d.ravel(), d.ravel())
        top[0].xdata[...] = s / np.float32(self.num)

    def backward(self, top, propagate_down, bottom):
        self.check_label_propagation(propagate_down)
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        lab, rows = self.sample_labels(bottom)
        bd = bottom[0].xdiff.reshape(self.num, self.dim)
        bd[...] = self.diff.xdata
        bd[rows, lab] *= np.float32(-1)
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            xp.sign(bd, out=bd)
            bd *= top[0].xdiff / np.float32(self.num)
        else:
            bd *= top[0].xdiff * np.float32(2.0 / self.num)


# ---------------------------------------------------------------------------------
@register('MultinomialLogisticLoss')
class MultinomialLogisticLossLayer(LossLayer):
    """loss = -sum_n log(max(p[n, label_n], 1e-20)) / N, on probabilities p (N x C)."""

    def reshape(self, bottom, top):
        self.check_first_dim(bottom)
        if shape_count(bottom[1].shape, 1) != 1:
            raise self.error('labels must have one value per sample (shape N or N x 1 x 1 x 1), got %s'
                             % list(bottom[1].shape))
        self.num = bottom[0].shape[0]
        self.dim = bottom[0].count // max(self.num, 1)
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = backend.get_xp()
        lab, rows = self.sample_labels(bottom)
        p = bottom[0].xdata.reshape(self.num, self.dim)[rows, lab]
        loss = -xp.log(xp.maximum(p, np.float32(kLOG_THRESHOLD))).sum(dtype=np.float32)
        top[0].xdata[...] = loss / np.float32(self.num)

    def backward(self, top, propagate_down, bottom):
        self.check_label_propagation(propagate_down)
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        lab, rows = self.sample_labels(bottom)
        p = bottom[0].xdata.reshape(self.num, self.dim)[rows, lab]
        bd = bottom[0].xdiff.reshape(self.num, self.dim)
        bd.fill(0)
        scale = -top[0].xdiff / np.float32(self.num)
        bd[rows, lab] = scale / xp.maximum(p, np.float32(kLOG_THRESHOLD))


# ---------------------------------------------------------------------------------
@register('InfogainLoss')
class InfogainLossLayer(_SoftmaxOverClassesLoss):
    """Softmax over ``infogain_loss_param.axis``, then the infogain-weighted log loss.

    bottom: scores (outer x C x inner), labels (outer*inner), optionally H (C x C;
    else read from ``infogain_loss_param.source``, a BlobProto binaryproto).
    top: loss, optionally the probabilities.
    loss = -sum_i sum_l H[label_i, l] log(max(p_il, 1e-20)) / normalizer.
    """
    exact_num_bottom = None
    min_bottom = 2
    max_bottom = 3
    # Caffe fails on backward to the labels and to H; neither is forced.
    allow_force_backward_bottoms = frozenset([0])
    label_bottoms = (1,)

    def setup(self, bottom, top):
        lp = self.layer_param.loss_param
        self.ignore_label = int(lp.ignore_label) if lp.HasField('ignore_label') else None
        if lp.HasField('normalize'):
            raise self.error('loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.normalization = lp.normalization
        self.prob = Blob()
        self.infogain = None
        if len(bottom) < 3:
            src = self.layer_param.infogain_loss_param.source
            if not src:
                raise self.error('infogain matrix source must be specified (infogain_loss_param.source) '
                                 'when there is no third bottom')
            proto = caffe_pb2.BlobProto()
            try:
                with open(src, 'rb') as f:
                    proto.ParseFromString(f.read())
            except OSError as e:
                raise self.error('cannot read infogain matrix %r: %s' % (src, e.strerror or e))
            except Exception as e:  # protobuf DecodeError
                raise self.error('infogain matrix %r is not a BlobProto: %s' % (src, e))
            try:
                arr = blob_proto_to_array(proto)
            except Exception as e:
                raise self.error('infogain matrix %r: %s' % (src, e))
            self.infogain = Blob(arr.shape)
            self.infogain.data[...] = arr

    def reshape(self, bottom, top):
        self._reshape_classes(bottom, top, self.layer_param.infogain_loss_param.axis)
        H = bottom[2] if len(bottom) > 2 else self.infogain
        if H.count != self.C * self.C:
            raise self.error('infogain matrix H must have %d x %d = %d values, got shape %s'
                             % (self.C, self.C, self.C * self.C, list(H.shape)))
        self._shape = (self.outer, self.C, self.inner)

    def _H(self, bottom):
        H = bottom[2] if len(bottom) > 2 else self.infogain
        return H.xdata.reshape(self.C, self.C)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        p = self.prob.xdata
        self._softmax(bottom[0].xdata, p)
        p3 = p.reshape(self._shape)
        lab, valid = self.read_labels(bottom[1].xdata.reshape(self.outer, self.inner), self.C, self.ignore_label)
        H = self._H(bottom)
        # Hl[o, l, i] = H[label[o, i], l]
        Hl = xp.transpose(H[lab], (0, 2, 1))
        logp = xp.log(xp.maximum(p3, np.float32(kLOG_THRESHOLD)))
        logp *= Hl
        count = None
        if valid is not None:
            logp *= valid[:, None, :]
            count = valid.sum()
        norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        top[0].xdata[...] = -logp.sum(dtype=np.float32) / norm
        if len(top) > 1:
            top[1].xdata[...] = p

    def backward(self, top, propagate_down, bottom):
        self.check_label_propagation(propagate_down)
        if len(propagate_down) > 2 and propagate_down[2]:
            raise self.error('cannot backpropagate to infogain inputs (bottom 2, the matrix H)')
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        lab, valid = self.read_labels(bottom[1].xdata.reshape(self.outer, self.inner), self.C, self.ignore_label)
        H = self._H(bottom)
        rowsum = H.sum(axis=1)
        bd = bottom[0].xdiff.reshape(self._shape)
        # d = p * rowsum(H)[label] - H[label, l]
        xp.multiply(self.prob.xdata.reshape(self._shape), rowsum[lab][:, None, :], out=bd)
        bd -= xp.transpose(H[lab], (0, 2, 1))
        if valid is not None:
            bd *= valid[:, None, :]
            count = valid.sum()
        else:
            count = None
        norm = self.normalizer(self.normalization, self.outer, self.inner, count)
        bd *= top[0].xdiff / norm


# ---------------------------------------------------------------------------------
@register('ContrastiveLoss')
class ContrastiveLossLayer(LossLayer):
    """Contrastive loss of pairs (a, b) with similarity y:
    loss = sum[y d^2 + (1 - y) max(margin - d, 0)^2] / 2N, d = ||a - b||
    (legacy_version: max(margin - d^2, 0) for dissimilar pairs).
    """
    exact_num_bottom = 3
    # Caffe: every bottom but the similarity label (2) may be forced.
    allow_force_backward_bottoms = frozenset([0, 1])
    label_bottoms = (2,)

    def setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)
        self.diff = Blob()
        self.dist_sq = Blob()

    def reshape(self, bottom, top):
        self.check_first_dim(bottom)
        n = bottom[0].shape[0]
        d0 = bottom[0].count // max(n, 1)
        if bottom[1].shape[0] != n or bottom[1].count // max(n, 1) != d0:
            raise self.error('bottoms a and b must have the same shape: %s and %s'
                             % (list(bottom[0].shape), list(bottom[1].shape)))
        if len(bottom[0].shape) > 2 and shape_count(bottom[0].shape, 2) != 1:
            raise self.error('features must be N x C (x 1 x 1), got %s' % list(bottom[0].shape))
        if bottom[2].count != n:
            raise self.error('needs one similarity value per pair: %d pairs, similarity shape %s'
                             % (n, list(bottom[2].shape)))
        self.num, self.dim = n, d0
        top[0].reshape(())
        if self.diff.shape != (n, d0):
            self.diff.reshape((n, d0))
            self.dist_sq.reshape((n,))

    def _sim(self, bottom):
        # Caffe: static_cast<int>(sim) is true when nonzero after truncation
        return bottom[2].xdata.ravel().astype(np.int32) != 0

    def forward(self, bottom, top):
        xp = backend.get_xp()
        d = self.diff.xdata
        xp.subtract(bottom[0].xdata.reshape(d.shape), bottom[1].xdata.reshape(d.shape), out=d)
        dsq = self.dist_sq.xdata
        xp.sum(d * d, axis=1, out=dsq)
        sim = self._sim(bottom)
        m = np.float32(self.margin)
        if self.legacy:
            dis = xp.maximum(m - dsq, np.float32(0))
        else:
            dis = xp.maximum(m - xp.sqrt(dsq), np.float32(0))
            dis = dis * dis
        loss = xp.where(sim, dsq, dis).sum(dtype=np.float32)
        top[0].xdata[...] = loss / np.float32(self.num) / np.float32(2)

    def backward(self, top, propagate_down, bottom):
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = backend.get_xp()
        d = self.diff.xdata
        dsq = self.dist_sq.xdata
        sim = self._sim(bottom)
        m = np.float32(self.margin)
        if self.legacy:
            mdist = m - dsq
            coef = xp.where(mdist > 0, np.float32(-1), np.float32(0))
        else:
            dist = xp.sqrt(dsq)
            mdist = m - dist
            coef = xp.where(mdist > 0, -mdist / (dist + np.float32(1e-4)), np.float32(0))
        coef = xp.where(sim, np.float32(1), coef).astype(np.float32)
        for i in (0, 1):
            if propagate_down[i]:
                sign = 1.0 if i == 0 else -1.0
                alpha = top[0].xdiff * np.float32(sign / self.num)
                bd = bottom[i].xdiff.reshape(d.shape)
                xp.multiply(d, (coef * alpha)[:, None], out=bd)


# ---------------------------------------------------------------------------------
@register('Accuracy')
class AccuracyLayer(Layer):
    """Top-k classification accuracy (no backward).

    bottom: scores (outer x C x inner along ``axis``), labels (outer*inner).
    top: accuracy (scalar), optionally per-class accuracy (C).
    A sample is correct when fewer than top_k classes score >= its true class.
    """
    exact_num_bottom = 2
    min_top = 1
    max_top = 2
    allow_force_backward_bottoms = frozenset()

    def setup(self, bottom, top):
        p = self.layer_param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = int(p.ignore_label) if p.HasField('ignore_label') else None

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise self.error('top_k %d must be less than or equal to the number of classes (%d)'
                             % (self.top_k, bottom[0].count // max(bottom[1].count, 1)))
        self.axis = canonical_axis(self, bottom[0], self.layer_param.accuracy_param.axis)
        shape = bottom[0].shape
        self.outer = shape_count(shape, 0, self.axis)
        self.C = int(shape[self.axis])
        self.inner = shape_count(shape, self.axis + 1)
        if self.outer * self.inner != bottom[1].count:
            raise self.error('number of labels must match number of predictions: scores %s, labels %s'
                             % (list(shape), list(bottom[1].shape)))
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self.C,))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x3 = bottom[0].xdata.reshape(self.outer, self.C, self.inner)
        lab, valid = read_labels(self, bottom[1].xdata.reshape(self.outer, self.inner), self.C, self.ignore_label)
        true_score = xp.take_along_axis(x3, lab[:, None, :], axis=1)       # outer x 1 x inner
        better = (x3 >= true_score).sum(axis=1) - 1                         # outer x inner
        correct = better < self.top_k
        if valid is not None:
            correct &= valid
            count = valid.sum()
        else:
            count = xp.asarray(self.outer * self.inner)
        ncorrect = correct.sum()
        top[0].xdata[...] = xp.where(count > 0, ncorrect.astype(np.float32) / xp.maximum(count, 1), 0)
        if len(top) > 1:
            labv = lab.ravel() if valid is None else lab.ravel()[valid.ravel()]
            corr = lab.ravel()[correct.ravel()]
            nums = xp.bincount(labv, minlength=self.C)[:self.C].astype(np.float32)
            hits = xp.bincount(corr, minlength=self.C)[:self.C].astype(np.float32)
            top[1].xdata[...] = xp.where(nums > 0, hits / xp.maximum(nums, 1), np.float32(0))

    def backward(self, top, propagate_down, bottom):
        for i, pd in enumerate(propagate_down):
            if pd:
                raise self.error('has no backward pass (cannot backpropagate to bottom %d); '
                                 'use it in the TEST phase or without force_backward' % i)
