"""SSD's layers (weiliu89/caffe, branch ssd): Permute, Normalize, PriorBox, DetectionOutput.

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
        key = (H, W, IH, IW)
        if key != self._key:   # the priors depend on the shapes only
            self._host = self._priors(H, W, IH, IW)
            self._key = key
        top[0].xdata[...] = backend.to_device(self._host.reshape(top[0].shape))

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

    def _areas(self, boxes):
        w = boxes[..., 2] - boxes[..., 0]
        h = boxes[..., 3] - boxes[..., 1]
        if not self.normalized:
            a = (w + _F32(1)) * (h + _F32(1))
        else:
            a = w * h
        return np.where((w < 0) | (h < 0), _F32(0), a).astype(_F32)

    def _iou(self, box, area, boxes, areas):
        """IoU of one box with each of ``boxes`` (host float32), as weiliu89/OpenCV compute it."""
        with np.errstate(over='ignore', invalid='ignore', divide='ignore'):   # infinite boxes
            iw = np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0])
            ih = np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1])
            if self.normalized:
                inter = np.where((iw > 0) & (ih > 0), iw * ih, _F32(0))
            else:
                inter = np.where((iw >= 0) & (ih >= 0), (iw + _F32(1)) * (ih + _F32(1)), _F32(0))
            iou = inter / (area + areas - inter)
        return np.where(inter > 0, iou, _F32(0))

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
                iou = self._iou(boxes[i], areas[i], boxes[rest], areas[rest])
                cand = rest[iou <= thr]
            return keep
        kept = np.empty(0, dtype=np.int64)   # adaptive threshold: one step per candidate
        for i in cand:
            if kept.size == 0 or (self._iou(boxes[i], areas[i], boxes[kept], areas[kept]) <= thr).all():
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
        with np.errstate(over='ignore', invalid='ignore'):
            areas = self._areas(boxes)
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
