"""SSD's layers (weiliu89/caffe, branch ssd): Permute, Normalize, PriorBox, DetectionOutput,
and its training loss MultiBoxLoss.

Their parameter messages and field numbers are weiliu89's (see protos/caffe.proto);
DetectionOutput also reads OpenCV's ``clip`` and ``normalized_bbox``.
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..layer import Layer, register
from ..proto import caffe_pb2

_F32 = np.float32
_CODE = caffe_pb2.PriorBoxParameter


def _box_areas(boxes, normalized=True):
    """Areas of boxes (..., 4) on the host, 0 for inverted ones; pixel boxes count their
    end pixels (w + 1)(h + 1), as weiliu89's and OpenCV's BBoxSize."""
    with np.errstate(over='ignore', invalid='ignore'):   # infinite boxes
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        a = w * h if normalized else (w + _F32(1)) * (h + _F32(1))
        return np.where((w < 0) | (h < 0), _F32(0), a).astype(_F32)


def _box_iou(a, area_a, b, area_b, normalized=True):
    """IoU of boxes a and b (..., 4, broadcast against each other), given their areas,
    as weiliu89's and OpenCV's JaccardOverlap."""
    with np.errstate(over='ignore', invalid='ignore', divide='ignore'):   # infinite boxes
        iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
        ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
        if normalized:
            inter = np.where((iw > 0) & (ih > 0), iw * ih, _F32(0))
        else:
            inter = np.where((iw >= 0) & (ih >= 0), (iw + _F32(1)) * (ih + _F32(1)), _F32(0))
        iou = inter / (area_a + area_b - inter)
    return np.where(inter > 0, iou, _F32(0)).astype(_F32)


@register('Permute')
class PermuteLayer(Layer):
    """y = x with its axes reordered: y.shape[i] = x.shape[order[i]].

    bottom: x, any shape.  top: y, the permuted shape (shares x when the order is the identity).
    permute_param: order (repeated; the axes not named follow in their own order).
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        n = len(bottom[0].shape)
        order = [int(o) for o in self.layer_param.permute_param.order]
        for o in order:
            if o >= n:
                raise self.error('order %d is not an axis of the %d-axis bottom %s'
                                 % (o, n, list(bottom[0].shape)))
        if len(set(order)) != len(order):
            raise self.error('order %s names an axis twice' % order)
        self.order = tuple(order + [i for i in range(n) if i not in order])
        self.inverse = tuple(int(i) for i in np.argsort(self.order))
        self.identity = self.order == tuple(range(n))

    def reshape(self, bottom, top):
        b = bottom[0]
        if len(b.shape) != len(self.order):
            raise self.error('bottom %s has %d axes; the layer was set up for %d'
                             % (list(b.shape), len(b.shape), len(self.order)))
        if top[0] is b:
            raise self.error('Permute does not run in place')
        top[0].reshape([b.shape[i] for i in self.order])
        if self.identity:
            top[0].share_data(b)
            top[0].share_diff(b)

    def forward(self, bottom, top):
        if not self.identity:
            top[0].xdata[...] = bottom[0].xdata.transpose(self.order)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and not self.identity:
            bottom[0].xdiff[...] = top[0].xdiff.transpose(self.inverse)


@register('Normalize')
class NormalizeLayer(Layer):
    """y = s * x / sqrt(sum(x^2) + eps), the sum over (C, H, W) of each sample
    (across_spatial) or over C at each position; s one scale or one per channel.

    bottom: x, (N, C, ...).  top: y, same shape.
    norm_param: across_spatial (true), channel_shared (true), eps (1e-10),
    scale_filler (constant 1).  param blob: the scale, shape () or (C,).
    The bottom gradient is the exact one; weiliu89's scales the scale-free gradient
    by s, which differs from it when the per-channel scales differ.
    """
    exact_num_bottom = 1
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.norm_param
        if len(bottom[0].shape) < 2:
            raise self.error('bottom %s needs at least 2 axes' % list(bottom[0].shape))
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        channels = bottom[0].shape[1]
        if not self.blobs:
            filler = p.scale_filler if p.HasField('scale_filler') else caffe_pb2.FillerParameter(
                type='constant', value=1.0)
            self.blobs.append(self.new_param_blob(() if self.channel_shared else (channels,), filler))
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise self.error('scale has %d values; %s needs %d' % (
                self.blobs[0].count, 'channel_shared' if self.channel_shared else
                'a bottom of %d channels' % channels, want))
        self._shape = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if len(b.shape) < 2:
            raise self.error('bottom %s needs at least 2 axes' % list(b.shape))
        if not self.channel_shared and b.shape[1] != self.blobs[0].count:
            raise self.error('bottom %s has %d channels, the scale %d'
                             % (list(b.shape), b.shape[1], self.blobs[0].count))
        top[0].reshape(b.shape)
        shape3 = (b.shape[0], b.shape[1], b.count_range(2))
        if shape3 != self._shape:
            self._shape = shape3
            n, c, s = shape3
            self.norm = backend.empty((n, 1, 1) if self.across_spatial else (n, 1, s))
            self.xhat = backend.empty(shape3)   # x / norm, kept for backward

    def _sum_axes(self):
        return (1, 2) if self.across_spatial else (1,)

    def _scale(self):
        s = self.blobs[0].xdata
        return s.reshape(1, 1, 1) if self.channel_shared else s.reshape(1, -1, 1)

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata.reshape(self._shape)
        y = top[0].xdata.reshape(self._shape)
        xp.square(x, out=self.xhat)
        xp.sum(self.xhat, axis=self._sum_axes(), keepdims=True, out=self.norm)
        self.norm += _F32(self.eps)
        xp.sqrt(self.norm, out=self.norm)
        xp.divide(x, self.norm, out=self.xhat)
        xp.multiply(self.xhat, self._scale(), out=y)

    def backward(self, top, propagate_down, bottom):
        xp = backend.get_xp()
        dy = top[0].xdiff.reshape(self._shape)
        if self.param_propagate_down[0]:
            g = (dy * self.xhat).sum(axis=(0, 2))
            ds = self.blobs[0].xdiff
            ds += g.sum() if self.channel_shared else g
        if propagate_down[0]:
            dx = bottom[0].xdiff.reshape(self._shape)
            xhat = self.xhat
            # with g = s * dy:  dx = (g - xhat * sum(xhat * g)) / norm
            g = dy * self._scale()
            dot = (xhat * g).sum(axis=self._sum_axes(), keepdims=True)
            xp.multiply(xhat, dot, out=dx)
            xp.subtract(g, dx, out=dx)
            dx /= self.norm


@register('PriorBox')
class PriorBoxLayer(Layer):
    """Prior (default) boxes of one SSD feature map, in [0, 1] image coordinates.

    At each cell (h, w) of the map, centre ((w + offset) * step_w, (h + offset) * step_h);
    for each min size m: a box m x m, then sqrt(m M) x sqrt(m M) for its max size M, then
    m sqrt(r) x m / sqrt(r) for each aspect ratio r != 1 (with 1/r too when flip).
    Sizes are whole pixels (weiliu89 truncates them); step defaults to image / map size.
    bottom: the feature map (N, C, H, W); the image (N, C', IH, IW) unless img_size/img_h/img_w.
    top: (1, 2, H * W * priors * 4): channel 0 the boxes (xmin, ymin, xmax, ymax),
    channel 1 their variances.
    prior_box_param: min_size (repeated, required), max_size (repeated, one per min_size),
    aspect_ratio (repeated), flip (true), clip (false; clamps to [0, 1]), variance (one or
    four values; 0.1), img_size or img_h/img_w, step or step_h/step_w, offset (0.5).
    """
    min_bottom = 1
    max_bottom = 2
    exact_num_top = 1

    def setup(self, bottom, top):
        p = self.layer_param.prior_box_param
        if not len(p.min_size):
            raise self.error('prior_box_param needs min_size')
        if any(m <= 0 for m in p.min_size):
            raise self.error('min_size must be positive, got %s' % list(p.min_size))
        self.min_sizes = [int(m) for m in p.min_size]
        self.max_sizes = [int(m) for m in p.max_size]
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise self.error('%d max_size values for %d min_size values'
                                 % (len(self.max_sizes), len(self.min_sizes)))
            for lo, hi in zip(p.min_size, p.max_size):
                if not hi > lo:
                    raise self.error('max_size %g must be greater than min_size %g' % (hi, lo))
        ratios = [1.0]
        for r in p.aspect_ratio:
            r = float(_F32(r))
            if any(abs(r - q) < 1e-6 for q in ratios):
                continue
            ratios.append(r)
            if p.flip:
                ratios.append(1.0 / r)
        self.ratios = [r for r in ratios if abs(r - 1.0) >= 1e-6]
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        var = [float(v) for v in p.variance]
        if len(var) not in (0, 1, 4):
            raise self.error('variance takes 1 or 4 values, got %d' % len(var))
        if any(v <= 0 for v in var):
            raise self.error('variance must be positive, got %s' % var)
        self.variance = var or [0.1]
        if p.HasField('img_h') or p.HasField('img_w'):
            if p.HasField('img_size'):
                raise self.error('give img_size or img_h/img_w, not both')
            self.img = (int(p.img_h), int(p.img_w))
        elif p.HasField('img_size'):
            self.img = (int(p.img_size),) * 2
        else:
            self.img = None
        if self.img is not None and min(self.img) <= 0:
            raise self.error('img_size/img_h/img_w must be positive, got %s' % (self.img,))
        if p.HasField('step_h') or p.HasField('step_w'):
            if p.HasField('step'):
                raise self.error('give step or step_h/step_w, not both')
            self.step = (float(p.step_h), float(p.step_w))
        elif p.HasField('step'):
            self.step = (float(p.step),) * 2
        else:
            self.step = None
        if self.step is not None and min(self.step) <= 0:
            raise self.error('step/step_h/step_w must be positive, got %s' % (self.step,))
        self.offset = float(p.offset)
        self.clip = bool(p.clip)
        if self.img is None and len(bottom) < 2:
            raise self.error('needs the image as bottom[1] (or img_size/img_h/img_w)')
        self._key = None

    def reshape(self, bottom, top):
        b = bottom[0]
        if len(b.shape) != 4:
            raise self.error('feature map %s must have 4 axes' % list(b.shape))
        if self.img is None and len(bottom[1].shape) != 4:
            raise self.error('image %s must have 4 axes' % list(bottom[1].shape))
        top[0].reshape(1, 2, b.shape[2] * b.shape[3] * self.num_priors * 4)

    def _priors(self, H, W, IH, IW):
        """(2, H * W * priors * 4) float32 on the host, as weiliu89 computes it in float."""
        if self.step is None:
            step_h, step_w = _F32(IH) / _F32(H), _F32(IW) / _F32(W)
        else:
            step_h, step_w = _F32(self.step[0]), _F32(self.step[1])
        off = _F32(self.offset)
        cx = (np.arange(W, dtype=_F32) + off) * step_w        # (W,)
        cy = (np.arange(H, dtype=_F32) + off) * step_h        # (H,)
        widths, heights = [], []
        for s, m in enumerate(self.min_sizes):
            widths.append(m)
            heights.append(m)
            if self.max_sizes:
                side = _F32(np.sqrt(float(m * self.max_sizes[s])))
                widths.append(side)
                heights.append(side)
            for r in self.ratios:
                sr = np.sqrt(_F32(r))
                widths.append(_F32(m * sr))
                heights.append(_F32(m / sr))
        half_w = np.asarray(widths, dtype=_F32).astype(np.float64) / 2.0   # (P,)
        half_h = np.asarray(heights, dtype=_F32).astype(np.float64) / 2.0
        cx = cx.astype(np.float64)[None, :, None]
        cy = cy.astype(np.float64)[:, None, None]
        boxes = np.empty((H, W, len(widths), 4), dtype=_F32)
        boxes[..., 0] = (cx - half_w) / IW
        boxes[..., 1] = (cy - half_h) / IH
        boxes[..., 2] = (cx + half_w) / IW
        boxes[..., 3] = (cy + half_h) / IH
        out = np.empty((2, boxes.size), dtype=_F32)
        out[0] = boxes.ravel()
        if self.clip:
            np.clip(out[0], 0.0, 1.0, out=out[0])
        out[1].reshape(-1, 4)[...] = np.asarray(self.variance, dtype=_F32)
        return out

    def forward(self, bottom, top):
        H, W = bottom[0].shape[2:]
        IH, IW = self.img if self.img is not None else bottom[1].shape[2:]
        key = (H, W, IH, IW, backend.is_gpu())
        if key != self._key:   # the priors depend on the shapes only: made once, kept on the device
            self._priors_x = backend.to_device(self._priors(H, W, IH, IW))
            self._key = key
        top[0].xdata[...] = self._priors_x.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        for i, b in enumerate(bottom):   # the priors do not depend on the values
            if propagate_down[i]:
                b.xdiff.fill(0)


@register('DetectionOutput')
class DetectionOutputLayer(Layer):
    """SSD's detections: decode the location offsets against the priors, keep per class
    the boxes above confidence_threshold (the nms top_k best), suppress overlaps (NMS:
    a box is dropped when its IoU with a kept box exceeds the threshold, which is
    multiplied by eta after each kept box while above 0.5), then keep the keep_top_k best.

    Decoding (v = the prior's variance, or 1 with variance_encoded_in_target):
    CENTER_SIZE: centre = prior centre + v * offset * prior size,
    size = prior size * exp(v * offset); CORNER: corner = prior corner + v * offset;
    CORNER_SIZE: corner = prior corner + v * offset * prior size.
    bottom: loc (N, priors * L * 4) with L = 1 (share_location) or num_classes;
    conf (N, priors * num_classes); priors (1, 2, priors * 4) from PriorBox;
    optionally the image (N, C, H, W), which bounds clip when normalized_bbox is false.
    top: (1, 1, D, 7) rows (image, label, score, xmin, ymin, xmax, ymax), grouped by image,
    then by label, best first; with no detection one row per image (image, -1, ...).
    detection_output_param: num_classes (required), share_location (true),
    background_label_id (0), code_type (CORNER), variance_encoded_in_target (false),
    keep_top_k (-1 = all), confidence_threshold (all boxes when unset),
    nms_param: nms_threshold (0.3), top_k (all), eta (1);
    OpenCV's clip (false: clamp the decoded boxes to the image before NMS) and
    normalized_bbox (true; false: pixel boxes, sizes w + 1, h + 1).
    No backward.
    """
    min_bottom = 3
    max_bottom = 4
    exact_num_top = 1
    allow_force_backward_bottoms = frozenset()

    def setup(self, bottom, top):
        p = self.layer_param.detection_output_param
        if not p.HasField('num_classes'):
            raise self.error('detection_output_param needs num_classes')
        self.num_classes = int(p.num_classes)
        self.share_location = bool(p.share_location)
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.code_type = int(p.code_type)
        self.encoded = bool(p.variance_encoded_in_target)
        self.keep_top_k = int(p.keep_top_k)
        self.threshold = float(p.confidence_threshold) if p.HasField('confidence_threshold') else None
        self.nms_threshold = float(p.nms_param.nms_threshold)
        if self.nms_threshold < 0:
            raise self.error('nms_threshold must be non-negative, got %g' % self.nms_threshold)
        self.eta = float(p.nms_param.eta)
        if not 0 < self.eta <= 1:
            raise self.error('eta must be in (0, 1], got %g' % self.eta)
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField('top_k') else -1
        self.clip = bool(p.clip)
        self.normalized = bool(p.normalized_bbox)
        if self.clip and not self.normalized and len(bottom) < 4:
            raise self.error('clip with normalized_bbox: false needs the image as bottom[3]')
        if p.visualize:
            raise self.error('visualize (drawing with OpenCV windows) is not supported')
        s = p.save_output_param
        if s.output_directory and s.label_map_file and s.name_size_file:
            raise self.error('writing detections to files (save_output_param) is not supported')

    def reshape(self, bottom, top):
        loc, conf, prior = bottom[0], bottom[1], bottom[2]
        if loc.shape[0] != conf.shape[0]:
            raise self.error('loc %s and conf %s have different batch sizes'
                             % (list(loc.shape), list(conf.shape)))
        if len(prior.shape) < 3 or prior.shape[2] % 4:
            raise self.error('priors %s must be (1, 2, priors * 4)' % list(prior.shape))
        self.num_priors = prior.shape[2] // 4
        if prior.count < 2 * prior.shape[2] and not self.encoded:
            raise self.error('priors %s lack the variances (channel 1)' % list(prior.shape))
        if loc.count_range(1) != self.num_priors * self.num_loc_classes * 4:
            raise self.error('loc %s does not hold %d priors x %d location classes x 4'
                             % (list(loc.shape), self.num_priors, self.num_loc_classes))
        if conf.count_range(1) != self.num_priors * self.num_classes:
            raise self.error('conf %s does not hold %d priors x %d classes'
                             % (list(conf.shape), self.num_priors, self.num_classes))
        top[0].reshape(1, 1, 1, 7)

    # -- decoding ------------------------------------------------------------
    def _decode(self, loc, prior, var):
        """loc (N, P, L, 4), prior (P, 4), var (P, 4) -> boxes (N, P, L, 4), all float32."""
        xp = backend.get_xp()
        if self.encoded:
            var = xp.ones_like(prior)
        var = var[None, :, None, :]
        d = loc * var
        pr = prior[None, :, None, :]
        if self.code_type == _CODE.CORNER:
            return pr + d
        pw = prior[:, 2] - prior[:, 0]
        ph = prior[:, 3] - prior[:, 1]
        if not self.normalized:
            pw = pw + _F32(1)
            ph = ph + _F32(1)
        if bool((pw <= 0).any()) or bool((ph <= 0).any()):
            raise self.error('a prior box has no positive width and height')
        size = xp.stack([pw, ph, pw, ph], axis=1)[None, :, None, :]
        if self.code_type == _CODE.CORNER_SIZE:
            return pr + d * size
        if self.code_type != _CODE.CENTER_SIZE:
            raise self.error('unknown code_type %d' % self.code_type)
        if self.normalized:
            centre = (pr[..., 0:2] + pr[..., 2:4]) / _F32(2)
        else:
            centre = pr[..., 0:2] + size[..., 0:2] * _F32(0.5)
        c = d[..., 0:2] * size[..., 0:2] + centre
        half = xp.exp(d[..., 2:4]) * size[..., 0:2] / _F32(2)
        return xp.concatenate([c - half, c + half], axis=-1)

    def _nms(self, boxes, areas, scores):
        """Indices kept for one class, best first (weiliu89's ApplyNMSFast)."""
        if self.threshold is None:
            cand = np.arange(scores.shape[0])
        else:
            cand = np.flatnonzero(scores > _F32(self.threshold))
        cand = cand[np.argsort(-scores[cand], kind='stable')]
        if self.top_k > -1:
            cand = cand[:self.top_k]
        keep = []
        thr = self.nms_threshold
        if self.eta >= 1:   # suppress by each kept box: one step per kept box
            while cand.size:
                i = cand[0]
                keep.append(int(i))
                rest = cand[1:]
                iou = _box_iou(boxes[i], areas[i], boxes[rest], areas[rest], self.normalized)
                cand = rest[iou <= thr]
            return keep
        kept = np.empty(0, dtype=np.int64)   # adaptive threshold: one step per candidate
        for i in cand:
            if kept.size == 0 or (_box_iou(boxes[i], areas[i], boxes[kept], areas[kept],
                                           self.normalized) <= thr).all():
                keep.append(int(i))
                kept = np.asarray(keep)
                if thr > 0.5:
                    thr *= self.eta
        return keep

    def forward(self, bottom, top):
        xp = backend.get_xp()
        N, P, L, C = bottom[0].shape[0], self.num_priors, self.num_loc_classes, self.num_classes
        loc = bottom[0].xdata.reshape(N, P, L, 4)
        prior = bottom[2].xdata.reshape(-1)
        with np.errstate(over='ignore'):   # exp of a huge offset is an infinite box, as in Caffe
            boxes = self._decode(loc, prior[:P * 4].reshape(P, 4),
                                 None if self.encoded else prior[P * 4:2 * P * 4].reshape(P, 4))
        if self.clip:
            if self.normalized:
                hi = xp.asarray([1, 1, 1, 1], dtype=_F32)
            else:
                IH, IW = bottom[3].shape[2:4]
                hi = xp.asarray([IW - 1, IH - 1, IW - 1, IH - 1], dtype=_F32)
            boxes = xp.minimum(xp.maximum(boxes, _F32(0)), hi)
        boxes = np.ascontiguousarray(backend.to_host(boxes), dtype=_F32)
        areas = _box_areas(boxes, self.normalized)
        conf = np.asarray(backend.to_host(bottom[1].xdata), dtype=_F32).reshape(N, P, C)
        rows = []
        for n in range(N):
            picked = []   # (label, index) grouped by label, best first
            for c in range(C):
                if c == self.background:
                    continue
                loc_c = 0 if self.share_location else c
                keep = self._nms(boxes[n, :, loc_c], areas[n, :, loc_c], conf[n, :, c])
                picked += [(c, i) for i in keep]
            if self.keep_top_k > -1 and len(picked) > self.keep_top_k:
                labels = np.asarray([c for c, _ in picked])
                idx = np.asarray([i for _, i in picked])
                best = np.argsort(-conf[n, idx, labels], kind='stable')[:self.keep_top_k]
                best = best[np.argsort(labels[best], kind='stable')]
                picked = [picked[j] for j in best]
            if picked:
                labels = np.asarray([c for c, _ in picked])
                idx = np.asarray([i for _, i in picked])
                loc_c = np.zeros_like(labels) if self.share_location else labels
                r = np.empty((len(picked), 7), dtype=_F32)
                r[:, 0] = n
                r[:, 1] = labels
                r[:, 2] = conf[n, idx, labels]
                r[:, 3:] = boxes[n, idx, loc_c]
                rows.append(r)
        if rows:
            out = np.concatenate(rows)
        else:
            out = np.full((N, 7), -1, dtype=_F32)
            out[:, 0] = np.arange(N)
        top[0].reshape(1, 1, out.shape[0], 7)
        top[0].xdata[...] = backend.to_device(out.reshape(top[0].shape))

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error('has no backward (it is a test-time layer)')


_MB = caffe_pb2.MultiBoxLossParameter
_LP = caffe_pb2.LossParameter
_LOG_FLT_MIN = 87.33654   # -log(FLT_MIN): Caffe's softmax loss clamps the probability there


@register('MultiBoxLoss')
class MultiBoxLossLayer(Layer):
    """SSD's training loss: match the priors to the ground-truth boxes, then
    loss = (loc_weight * L_loc + L_conf) / normalizer.

    Matching (on the prior boxes): each ground truth takes its best free prior, best
    pairs first (BIPARTITE); with PER_PREDICTION, every other prior whose best IoU
    is at least overlap_threshold also matches that box.  L_loc: smooth L1 (or half
    the squared L2) between the matched priors' location predictions and their
    boxes encoded against the prior (code_type, variances).  L_conf: softmax loss of
    the matched priors with their boxes' labels and of background priors with the
    background label: all of them (mining_type NONE), or for MAX_NEGATIVE the
    neg_pos_ratio x matches highest-loss priors whose best IoU is below neg_overlap.
    normalizer: the number of matches (VALID), or FULL / BATCH_SIZE / NONE (loss_param).
    bottom: loc (N, priors * 4); conf (N, priors * num_classes); priors (1, 2, priors * 4);
    ground truth (1, 1, G, 8) rows (image, label, instance, xmin, ymin, xmax, ymax,
    difficult), image -1 for padding.  top: the loss, a scalar.
    multibox_loss_param: num_classes (required), loc_loss_type (SMOOTH_L1), loc_weight (1),
    match_type (PER_PREDICTION), overlap_threshold (0.5), background_label_id (0),
    use_difficult_gt (true), mining_type (MAX_NEGATIVE), neg_pos_ratio (3),
    neg_overlap (0.5), code_type (CORNER), encode_variance_in_target (false),
    ignore_cross_boundary_bbox (false).  Not supported (an error): share_location false,
    use_prior_for_matching false, LOGISTIC, HARD_EXAMPLE mining, NMS among negatives,
    map_object_to_agnostic, bp_inside.  Gradients flow to loc and conf only.
    """
    exact_num_bottom = 4
    exact_num_top = 1
    allow_force_backward_bottoms = frozenset([0, 1])

    def default_loss_weight(self, top_index):
        return 1.0 if top_index == 0 else 0.0

    def setup(self, bottom, top):
        p = self.layer_param.multibox_loss_param
        if not p.HasField('num_classes') or p.num_classes < 1:
            raise self.error('multibox_loss_param needs num_classes (at least 1)')
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        if self.background >= self.num_classes:
            raise self.error('background_label_id %d is not below num_classes %d'
                             % (self.background, self.num_classes))
        unsupported = [(not p.share_location, 'share_location: false'),
                       (not p.use_prior_for_matching, 'use_prior_for_matching: false'),
                       (p.conf_loss_type != _MB.SOFTMAX, 'conf_loss_type: LOGISTIC'),
                       (p.mining_type == _MB.HARD_EXAMPLE, 'mining_type: HARD_EXAMPLE'),
                       (p.HasField('nms_param') and p.nms_param.nms_threshold > 0,
                        'nms_param (NMS among the mined negatives)'),
                       (p.map_object_to_agnostic, 'map_object_to_agnostic'),
                       (p.bp_inside, 'bp_inside')]
        for bad, what in unsupported:
            if bad:
                raise self.error('%s is not supported' % what)
        if p.HasField('do_neg_mining') and p.do_neg_mining != (p.mining_type != _MB.NONE):
            raise self.error('do_neg_mining: %s contradicts mining_type: %s'
                             % (str(p.do_neg_mining).lower(), _MB.MiningType.Name(p.mining_type)))
        self.mining = p.mining_type == _MB.MAX_NEGATIVE
        self.smooth_l1 = p.loc_loss_type == _MB.SMOOTH_L1
        self.loc_weight = float(p.loc_weight)
        self.bipartite_only = p.match_type == _MB.BIPARTITE
        self.overlap_threshold = _F32(p.overlap_threshold)
        self.use_difficult = bool(p.use_difficult_gt)
        self.neg_pos_ratio = _F32(p.neg_pos_ratio)
        self.neg_overlap = _F32(p.neg_overlap)
        self.code_type = int(p.code_type)
        self.encoded = bool(p.encode_variance_in_target)
        self.ignore_cross = bool(p.ignore_cross_boundary_bbox)
        lp = self.layer_param.loss_param
        if lp.HasField('normalization') or not lp.HasField('normalize'):
            self.normalization = int(lp.normalization)
        else:
            self.normalization = _LP.VALID if lp.normalize else _LP.BATCH_SIZE
        # weiliu89 adds the loc and conf terms to the loss only where propagate_down says so
        pd = list(self.layer_param.propagate_down)
        self.add_loc, self.add_conf = (bool(pd[0]), bool(pd[1])) if pd else (True, True)

    def reshape(self, bottom, top):
        loc, conf, prior, gt = bottom
        if loc.shape[0] != conf.shape[0]:
            raise self.error('loc %s and conf %s have different batch sizes'
                             % (list(loc.shape), list(conf.shape)))
        if len(prior.shape) < 3 or prior.shape[2] % 4 or prior.count < 2 * prior.shape[2]:
            raise self.error('priors %s must be (1, 2, priors * 4)' % list(prior.shape))
        self.num_priors = prior.shape[2] // 4
        if loc.count_range(1) != self.num_priors * 4:
            raise self.error('loc %s does not hold %d priors x 4' % (list(loc.shape), self.num_priors))
        if conf.count_range(1) != self.num_priors * self.num_classes:
            raise self.error('conf %s does not hold %d priors x %d classes'
                             % (list(conf.shape), self.num_priors, self.num_classes))
        if gt.count % 8:
            raise self.error('ground truth %s is not rows of 8 values' % list(gt.shape))
        top[0].reshape(())

    # -- matching (host) -----------------------------------------------------------
    def _ground_truth(self, gt, N):
        rows = gt.reshape(-1, 8)
        rows = rows[rows[:, 0] != -1]
        items, labels = rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64)
        if (items < 0).any() or (items >= N).any():
            raise self.error('ground truth names image %d of a batch of %d'
                             % (int(items[(items < 0) | (items >= N)][0]), N))
        if (labels == self.background).any():
            raise self.error('ground truth has the background label %d' % self.background)
        if (labels < 0).any() or (labels >= self.num_classes).any():
            raise self.error('ground truth label %d is outside [0, %d)'
                             % (int(labels[(labels < 0) | (labels >= self.num_classes)][0]), self.num_classes))
        if not self.use_difficult:
            keep = rows[:, 7] == 0
            rows, items, labels = rows[keep], items[keep], labels[keep]
        # padded per image, in the rows' order: boxes (N, G, 4), labels (N, G), valid (N, G)
        order = np.argsort(items, kind='stable')
        items, labels, boxes = items[order], labels[order], rows[order, 3:7].astype(_F32)
        counts = np.bincount(items, minlength=N)
        G = int(counts.max()) if counts.size else 0
        slot = np.arange(len(items)) - np.repeat(np.cumsum(counts) - counts, counts)
        gboxes = np.zeros((N, G, 4), _F32)
        glabels = np.zeros((N, G), np.int64)
        valid = np.zeros((N, G), bool)
        gboxes[items, slot] = boxes
        glabels[items, slot] = labels
        valid[items, slot] = True
        return gboxes, glabels, valid, counts > 0

    def _match(self, priors, gboxes, valid):
        """match (N, P): the matched ground truth's slot, -1 none, -2 a cross-boundary prior;
        overlap (N, P): the matched box's IoU, else the best IoU with any box."""
        N, G = valid.shape
        P = priors.shape[0]
        ov = _box_iou(priors[None, :, None, :], _box_areas(priors)[None, :, None],
                      gboxes[:, None, :, :], _box_areas(gboxes)[:, None, :])     # (N, P, G)
        present = (ov > 1e-6) & valid[:, None, :]
        match = np.full((N, P), -1, np.int64)
        if self.ignore_cross:
            cross = ((priors < 0) | (priors > 1)).any(axis=1)
            present &= ~cross[None, :, None]
            match[:, cross] = -2
        overlap = np.where(present, ov, _F32(0)).max(axis=2) if G else np.zeros((N, P), _F32)
        M = np.where(present, ov, _F32(-1))
        rows = np.arange(N)
        for _ in range(G):     # bipartite: the best remaining (prior, box) pair of each image
            flat = M.reshape(N, P * G)
            k = flat.argmax(axis=1)
            best = flat[rows, k]
            ok = best > -1
            if not ok.any():
                break
            i, p, g = rows[ok], k[ok] // G, k[ok] % G
            match[i, p] = g
            overlap[i, p] = best[ok]
            M[i, p, :] = -1
            M[i, :, g] = -1
        if not self.bipartite_only and G:   # PER_PREDICTION: the other priors' best box above the threshold
            cand = np.where(present & (ov >= self.overlap_threshold), ov, _F32(-1))
            g = cand.argmax(axis=2)
            best = np.take_along_axis(cand, g[..., None], axis=2)[..., 0]
            extra = (match == -1) & (best > -1)
            match[extra] = g[extra]
            overlap[extra] = best[extra]
        return match, overlap

    def _encode(self, priors, var, boxes):
        """Ground-truth boxes (M, 4) encoded against their priors (M, 4)."""
        if self.encoded:
            var = np.ones_like(var)
        if self.code_type == _CODE.CORNER:
            return (boxes - priors) / var
        pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
        if (pw <= 0).any() or (ph <= 0).any():
            raise self.error('a matched prior box has no positive width and height')
        size = np.stack([pw, ph, pw, ph], axis=1)
        if self.code_type == _CODE.CORNER_SIZE:
            return (boxes - priors) / size / var
        if self.code_type != _CODE.CENTER_SIZE:
            raise self.error('unknown code_type %d' % self.code_type)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        if (bw <= 0).any() or (bh <= 0).any():
            raise self.error('a ground-truth box has no positive width and height')
        pc = (priors[:, 0:2] + priors[:, 2:4]) / _F32(2)
        bc = (boxes[:, 0:2] + boxes[:, 2:4]) / _F32(2)
        out = np.empty_like(boxes)
        out[:, 0:2] = (bc - pc) / size[:, 0:2] / var[:, 0:2]
        out[:, 2] = np.log(bw / pw) / var[:, 2]
        out[:, 3] = np.log(bh / ph) / var[:, 3]
        return out

    def _normalizer(self, N, P, num_matches):
        mode = self.normalization
        if mode == _LP.FULL:
            n = N * P
        elif mode == _LP.VALID:
            n = num_matches
        elif mode == _LP.BATCH_SIZE:
            n = N
        elif mode == _LP.NONE:
            n = 1
        else:
            raise self.error('unknown normalization mode %d' % mode)
        return float(max(1, n))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        N, P, C = bottom[0].shape[0], self.num_priors, self.num_classes
        prior = backend.to_host(bottom[2].xdata).reshape(-1)
        priors, var = prior[:P * 4].reshape(P, 4), prior[P * 4:2 * P * 4].reshape(P, 4)
        gboxes, glabels, valid, has_gt = self._ground_truth(
            np.asarray(backend.to_host(bottom[3].xdata), dtype=_F32), N)
        match, overlap = self._match(priors, gboxes, valid)
        pos = match > -1
        ii, jj = np.nonzero(pos)
        labels = np.full((N, P), self.background, np.int64)
        labels[ii, jj] = glabels[ii, match[ii, jj]]
        # per-prior softmax loss (device), for mining and for the confidence loss
        x = bottom[1].xdata.reshape(N, P, C)
        m = x.max(axis=2, keepdims=True)
        lse = xp.log(xp.exp(x - m).sum(axis=2)) + m[..., 0]
        lab_dev = backend.to_device(labels.astype(np.int32))
        picked = xp.take_along_axis(x, lab_dev[..., None], axis=2)[..., 0]
        prior_loss = xp.minimum(lse - picked, _F32(_LOG_FLT_MIN))
        if self.mining:
            loss_h = np.asarray(backend.to_host(prior_loss), dtype=_F32)
            eligible = has_gt[:, None] & (match == -1) & (overlap < self.neg_overlap)
            num_pos = pos.sum(axis=1)
            num_sel = np.minimum((num_pos.astype(_F32) * self.neg_pos_ratio).astype(np.int64),
                                 eligible.sum(axis=1))
            order = np.argsort(-np.where(eligible, loss_h, -np.inf), axis=1, kind='stable')
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.arange(P)[None, :].repeat(N, axis=0), axis=1)
            selected = pos | (eligible & (rank < num_sel[:, None]))
        else:
            selected = np.ones((N, P), bool)
        num_matches = int(pos.sum())
        self._norm = self._normalizer(N, P, num_matches)
        self._labels, self._selected, self._pos = lab_dev, backend.to_device(selected), (ii, jj)
        # location loss over the matched priors
        loc = bottom[0].xdata.reshape(N, P, 4)
        if num_matches:
            enc = self._encode(priors[jj], var[jj], gboxes[ii, match[ii, jj]])
            d = loc[backend.to_device(ii), backend.to_device(jj)] - backend.to_device(enc.astype(_F32))
            a = xp.abs(d)
            loc_loss = float(xp.where(a < 1, _F32(0.5) * d * d, a - _F32(0.5)).sum()) if self.smooth_l1 \
                else 0.5 * float((d * d).sum())
            self._d = d
        else:
            loc_loss, self._d = 0.0, None
        conf_loss = float(xp.where(self._selected, prior_loss, _F32(0)).sum())
        loss = 0.0
        if self.add_loc:
            loss += self.loc_weight * loc_loss / self._norm
        if self.add_conf:
            loss += conf_loss / self._norm
        top[0].xdata[...] = loss

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2] or propagate_down[3]:
            raise self.error('cannot backpropagate to the priors or the ground truth (bottoms 2 and 3)')
        xp = backend.get_xp()
        N, P, C = bottom[0].shape[0], self.num_priors, self.num_classes
        scale = _F32(float(backend.to_host(top[0].xdiff).ravel()[0]) / self._norm)
        if propagate_down[0]:
            dloc = bottom[0].xdiff.reshape(N, P, 4)
            dloc.fill(0)
            if self._d is not None:
                g = xp.where(xp.abs(self._d) < 1, self._d, xp.sign(self._d)) if self.smooth_l1 else self._d
                ii, jj = self._pos
                dloc[backend.to_device(ii), backend.to_device(jj)] = g * _F32(self.loc_weight) * scale
        if propagate_down[1]:
            x = bottom[1].xdata.reshape(N, P, C)
            dconf = bottom[1].xdiff.reshape(N, P, C)
            xp.subtract(x, x.max(axis=2, keepdims=True), out=dconf)
            xp.exp(dconf, out=dconf)
            dconf /= dconf.sum(axis=2, keepdims=True)
            flat = dconf.reshape(N * P, C)
            flat[xp.arange(N * P), self._labels.ravel()] -= _F32(1)    # softmax - one-hot
            dconf *= self._selected[..., None] * scale
