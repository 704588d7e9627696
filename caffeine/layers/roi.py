"""Region layers of the detection forks: ROIPooling, PSROIPooling, Proposal.

- ROIPooling (rbgirshick/caffe-fast-rcnn, ``roi_pooling_param`` 8266711),
- PSROIPooling (daijifeng001/caffe-rfcn, R-FCN, ``psroi_pooling_param`` 10002),
- Proposal (py-faster-rcnn's ``rpn.proposal_layer.ProposalLayer`` as a built-in
  layer; OpenCV dnn's ``proposal_param`` 201, or the Python layer's
  ``param_str`` when it stands in for that module, see layers/python.py).

A region of interest (ROI) is a row ``(batch_index, x1, y1, x2, y2)`` in input
image pixels; ``spatial_scale`` maps it onto the feature map.  The bins of
each region are computed on the host (there are few regions); the pooling
itself is gathered in one vectorized pass, in chunks of regions that bound
the temporary memory.
"""
from __future__ import annotations

import ast

import numpy as np

from .. import backend
from ..layer import Layer, register
from ..proto import caffe_pb2

_F32 = np.float32


def _c_round(v):
    """C's round(): halves away from zero (NumPy rounds halves to even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _rois_host(blob):
    return backend.to_host(blob.xdata).reshape(-1, 5)


def _check_rois(layer, blob):
    """rois: R x 5 (or R x 5 x 1 x 1); returns R."""
    shape = tuple(blob.shape)
    if not shape or blob.count != 5 * shape[0]:
        raise layer.error('rois must be R x 5 (batch index, x1, y1, x2, y2), got %s' % (shape,))
    return shape[0]


class _RangeMaxTable:
    """Maxima of x (N, C, H, W) over every 2^k x 2^l block, k <= kmax, l <= lmax
    (a sparse table), with, when ``with_index``, the first maximum's flat index
    h * W + w in its plane (the smallest among equal values).  ``gather`` reads
    one block per bin; four overlapping blocks cover any bin."""

    def __init__(self, xp, x, kmax, lmax, with_index):
        N, C, H, W = x.shape
        self.xp, self.C = xp, C
        idx = xp.broadcast_to(xp.arange(H * W, dtype=np.int32).reshape(H, W), x.shape) if with_index else None
        rows = [(x, idx)]                       # l = 0..lmax along w
        for lv in range(1, lmax + 1):
            v, i = rows[-1]
            half = 1 << (lv - 1)
            rows.append(self._combine(v[..., :-half], None if i is None else i[..., :-half],
                                      v[..., half:], None if i is None else i[..., half:]))
        levels = {}
        for lv, (v, i) in enumerate(rows):      # then k = 0..kmax along h
            levels[0, lv] = (v, i)
            for kv in range(1, kmax + 1):
                pv, pi = levels[kv - 1, lv]
                half = 1 << (kv - 1)
                levels[kv, lv] = self._combine(pv[:, :, :-half], None if pi is None else pi[:, :, :-half],
                                               pv[:, :, half:], None if pi is None else pi[:, :, half:])
        # one flat buffer, level (k, l) at offset[k, l] with planes of rows[k, l] x cols[k, l]
        self.offset = np.zeros((kmax + 1, lmax + 1), np.int64)
        self.rows = np.zeros_like(self.offset)
        self.cols = np.zeros_like(self.offset)
        vals, idxs, at = [], [], 0
        for (kv, lv), (v, i) in sorted(levels.items()):
            self.offset[kv, lv], self.rows[kv, lv], self.cols[kv, lv] = at, v.shape[2], v.shape[3]
            at += v.size
            vals.append(v.reshape(-1))
            if i is not None:
                idxs.append(xp.ascontiguousarray(i).reshape(-1))
        self.vals = xp.concatenate(vals)
        self.idx = xp.concatenate(idxs) if with_index else None

    def _combine(self, av, ai, bv, bi):
        xp = self.xp
        if ai is None:
            return xp.maximum(av, bv), None
        take = (bv > av) | ((bv == av) & (bi < ai))
        return xp.where(take, bv, av), xp.where(take, bi, ai)

    def gather(self, n, k, lv, h, w):
        """Block (k, l) at (h, w) of image n, for host arrays k, l, h, w of one shape
        S (n of shape S[:1]): its values and indices, S + (C,), on the device."""
        xp = self.xp
        plane = self.rows[k, lv] * self.cols[k, lv]
        base = self.offset[k, lv] + n.reshape((-1,) + (1,) * (k.ndim - 1)) * self.C * plane + h * self.cols[k, lv] + w
        flat = backend.to_device(base)[..., None] + backend.to_device(plane)[..., None] * xp.arange(self.C)
        return self.vals[flat], (None if self.idx is None else self.idx[flat])


@register('ROIPooling')
class ROIPoolingLayer(Layer):
    """Max pooling of each region into a pooled_h x pooled_w grid (Fast R-CNN).

    For region r with corners rounded to the feature map,
    ``(xs, ys, xe, ye) = round((x1, y1, x2, y2) * spatial_scale)``, size
    ``h = max(ye - ys + 1, 1)`` (w likewise), bin (i, j) covers rows
    ``[ys + floor(i h / PH), ys + ceil((i+1) h / PH))`` clipped to the map (columns
    likewise); y[r, c, i, j] = max of x[n_r, c] over the bin, 0 for an empty bin.

    bottom[0]: features (N, C, H, W).  bottom[1]: rois (R, 5) (or R x 5 x 1 x 1).
    top: (R, C, pooled_h, pooled_w).
    roi_pooling_param: pooled_h (0, required > 0), pooled_w (0, required > 0),
    spatial_scale (1).  Backward: the gradient goes to each bin's first maximum
    (row-major order), as the fork's argmax; none to the rois.
    """
    exact_num_bottom = 2
    exact_num_top = 1
    allow_force_backward_bottoms = {0}

    def setup(self, bottom, top):
        p = self.layer_param.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error('roi_pooling_param needs pooled_h > 0 and pooled_w > 0, got %d x %d'
                             % (p.pooled_h, p.pooled_w))
        self.ph, self.pw = int(p.pooled_h), int(p.pooled_w)
        self.scale = _F32(p.spatial_scale)
        self._argmax = None

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise self.error('bottom %s must be 4-D (N, C, H, W)' % (tuple(bottom[0].shape),))
        top[0].reshape(_check_rois(self, bottom[1]), bottom[0].shape[1], self.ph, self.pw)
        if self._argmax is None or self._argmax.shape != tuple(top[0].shape):
            self._argmax = backend.empty(tuple(top[0].shape), np.int64)

    def _bins(self, rois, H, W):
        """Bin bounds on the host: hs, he (R, PH); ws, we (R, PW), clipped."""
        s = self.scale
        xs = _c_round(rois[:, 1] * s).astype(np.int64)
        ys = _c_round(rois[:, 2] * s).astype(np.int64)
        xe = _c_round(rois[:, 3] * s).astype(np.int64)
        ye = _c_round(rois[:, 4] * s).astype(np.int64)
        rh = np.maximum(ye - ys + 1, 1).astype(_F32)
        rw = np.maximum(xe - xs + 1, 1).astype(_F32)
        bh = rh / _F32(self.ph)
        bw = rw / _F32(self.pw)
        i = np.arange(self.ph, dtype=_F32)
        j = np.arange(self.pw, dtype=_F32)
        hs = np.floor(i[None, :] * bh[:, None]).astype(np.int64) + ys[:, None]
        he = np.ceil((i[None, :] + 1) * bh[:, None]).astype(np.int64) + ys[:, None]
        ws = np.floor(j[None, :] * bw[:, None]).astype(np.int64) + xs[:, None]
        we = np.ceil((j[None, :] + 1) * bw[:, None]).astype(np.int64) + xs[:, None]
        return (np.clip(hs, 0, H), np.clip(he, 0, H), np.clip(ws, 0, W), np.clip(we, 0, W))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata
        N, C, H, W = x.shape
        rois = _rois_host(bottom[1])
        R = rois.shape[0]
        if R == 0:
            return
        b = rois[:, 0].astype(np.int64)
        if b.min() < 0 or b.max() >= N:
            raise self.error('roi batch index %d outside the %d image(s) of bottom[0]'
                             % (b.min() if b.min() < 0 else b.max(), N))
        hs, he, ws, we = self._bins(rois, H, W)
        # bin (i, j): its rows [hs, he) and columns [ws, we), (R, PH, PW) each
        h0, h1 = np.broadcast_to(hs[:, :, None], (R, self.ph, self.pw)), np.broadcast_to(he[:, :, None], (R, self.ph, self.pw))
        w0, w1 = np.broadcast_to(ws[:, None, :], (R, self.ph, self.pw)), np.broadcast_to(we[:, None, :], (R, self.ph, self.pw))
        empty = (h1 <= h0) | (w1 <= w0)
        # a bin's maximum is the maximum of the 2^k x 2^l blocks at its four corners
        # (k, l the largest powers of two that fit it): a range-maximum table of x
        hk = np.where(empty, 0, np.floor(np.log2(np.maximum(h1 - h0, 1))).astype(np.int64))
        wl = np.where(empty, 0, np.floor(np.log2(np.maximum(w1 - w0, 1))).astype(np.int64))
        table = _RangeMaxTable(xp, x, int(hk.max()), int(wl.max()), self.need_backward)
        top_h = np.where(empty, 0, h0)
        bot_h = np.where(empty, 0, h1 - (1 << hk))
        left_w = np.where(empty, 0, w0)
        right_w = np.where(empty, 0, w1 - (1 << wl))
        best = best_i = None
        for hh, ww in ((top_h, left_w), (top_h, right_w), (bot_h, left_w), (bot_h, right_w)):
            v, i = table.gather(b, hk, wl, hh, ww)                 # (R, PH, PW, C)
            if best is None:
                best, best_i = v, i
            elif best_i is None:
                best = xp.maximum(best, v)
            else:
                # ties keep the smaller index: the fork's first maximum in row-major order
                take = (v > best) | ((v == best) & (i < best_i))
                best = xp.where(take, v, best)
                best_i = xp.where(take, i, best_i)
        empty_d = backend.to_device(empty)[..., None]
        top[0].xdata[...] = xp.where(empty_d, _F32(0), best).transpose(0, 3, 1, 2)
        if best_i is not None:
            # the argmax as a flat index into bottom[0] (N, C, H, W); -1 for an empty bin
            plane = (backend.to_device(b)[:, None, None, None] * C + xp.arange(C)) * (H * W)
            self._argmax[...] = xp.where(empty_d, -1, plane + best_i).transpose(0, 3, 1, 2)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dx = bottom[0].xdiff
        dx.fill(0)
        if top[0].count == 0:
            return
        idx = self._argmax.reshape(-1)
        dy = top[0].xdiff.reshape(-1)
        ok = idx >= 0
        acc = xp.bincount(idx[ok], weights=dy[ok].astype(np.float64), minlength=dx.size)
        dx[...] = acc.reshape(dx.shape).astype(_F32)


@register('PSROIPooling')
class PSROIPoolingLayer(Layer):
    """Position-sensitive average pooling of each region (R-FCN).

    With G = group_size and D = output_dim, bottom[0] has D*G*G channels; region r
    spans ``[round(x1) * s, (round(x2) + 1) * s)`` (y likewise; s = spatial_scale;
    size at least 0.1), bin (i, j) covers rows ``[floor(ys + i h / G), ceil(ys + (i+1) h / G))``
    clipped to the map, and y[r, d, i, j] = mean of x[n_r, (d*G + i)*G + j] over the
    bin (0 for an empty bin).

    bottom[0]: features (N, D*G*G, H, W).  bottom[1]: rois (R, 5).
    top: (R, D, G, G).
    psroi_pooling_param: spatial_scale, output_dim, group_size (all required).
    Backward: each bin's gradient spread evenly over its window; none to the rois.
    """
    exact_num_bottom = 2
    exact_num_top = 1
    allow_force_backward_bottoms = {0}

    def setup(self, bottom, top):
        p = self.layer_param.psroi_pooling_param
        missing = [f for f in ('spatial_scale', 'output_dim', 'group_size') if not p.HasField(f)]
        if missing:
            raise self.error('psroi_pooling_param needs %s' % ', '.join(missing))
        if p.output_dim <= 0 or p.group_size <= 0:
            raise self.error('output_dim and group_size must be > 0, got %d and %d' % (p.output_dim, p.group_size))
        self.scale = _F32(p.spatial_scale)
        self.dim = int(p.output_dim)
        self.group = int(p.group_size)

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise self.error('bottom %s must be 4-D (N, C, H, W)' % (tuple(bottom[0].shape),))
        want = self.dim * self.group * self.group
        if bottom[0].shape[1] != want:
            raise self.error('bottom has %d channels; output_dim %d x group_size %d^2 needs %d'
                             % (bottom[0].shape[1], self.dim, self.group, want))
        top[0].reshape(_check_rois(self, bottom[1]), self.dim, self.group, self.group)

    def _bins(self, rois, H, W):
        s, G = self.scale, self.group
        xs = _c_round(rois[:, 1]).astype(_F32) * s
        ys = _c_round(rois[:, 2]).astype(_F32) * s
        xe = (_c_round(rois[:, 3]).astype(_F32) + _F32(1)) * s
        ye = (_c_round(rois[:, 4]).astype(_F32) + _F32(1)) * s
        bh = np.maximum(ye - ys, _F32(0.1)) / _F32(G)
        bw = np.maximum(xe - xs, _F32(0.1)) / _F32(G)
        i = np.arange(G, dtype=_F32)
        hs = np.floor(i[None, :] * bh[:, None] + ys[:, None]).astype(np.int64)
        he = np.ceil((i[None, :] + 1) * bh[:, None] + ys[:, None]).astype(np.int64)
        ws = np.floor(i[None, :] * bw[:, None] + xs[:, None]).astype(np.int64)
        we = np.ceil((i[None, :] + 1) * bw[:, None] + xs[:, None]).astype(np.int64)
        return (np.clip(hs, 0, H), np.clip(he, 0, H), np.clip(ws, 0, W), np.clip(we, 0, W))

    def _corners(self, rois, shape):
        """Flat indices into the (N, C, H+1, W+1) integral image of the 4 corners
        of every bin, (R, D, G, G) each, and the bin areas (0 for an empty bin)."""
        N, C, H, W = shape
        G, D = self.group, self.dim
        b = rois[:, 0].astype(np.int64)
        if len(b) and (b.min() < 0 or b.max() >= N):
            raise self.error('roi batch index outside the %d image(s) of bottom[0]' % N)
        hs, he, ws, we = self._bins(rois, H, W)
        area = ((he - hs)[:, :, None] * (we - ws)[:, None, :]).astype(np.int64)   # (R, G, G)
        area = np.where(((he - hs)[:, :, None] > 0) & ((we - ws)[:, None, :] > 0), area, 0)
        gi = np.arange(G)
        ch = (np.arange(D)[:, None, None] * G + gi[None, :, None]) * G + gi[None, None, :]  # (D, G, G)
        plane = (b[:, None, None, None] * C + ch[None]) * ((H + 1) * (W + 1))          # (R, D, G, G)
        W1 = W + 1

        def at(h, w):  # h (R, G) over i, w (R, G) over j
            return plane + h[:, None, :, None] * W1 + w[:, None, None, :]
        return at(hs, ws), at(hs, we), at(he, ws), at(he, we), area

    def forward(self, bottom, top):
        xp = backend.get_xp()
        x = bottom[0].xdata
        N, C, H, W = x.shape
        rois = _rois_host(bottom[1])
        if rois.shape[0] == 0:
            return
        # integral image in float64 so that the differences keep float32 accuracy
        s = xp.zeros((N, C, H + 1, W + 1), np.float64)
        s[:, :, 1:, 1:] = xp.cumsum(xp.cumsum(x, axis=2, dtype=np.float64), axis=3)
        *corners, area = self._corners(rois, x.shape)
        a, b_, c, d = (backend.to_device(i) for i in corners)
        sf = s.reshape(-1)
        total = sf[d] - sf[b_] - sf[c] + sf[a]
        area_d = backend.to_device(np.broadcast_to(area[:, None], total.shape).astype(np.float64))
        out = xp.where(area_d > 0, total / xp.maximum(area_d, 1), 0)
        top[0].xdata[...] = out.astype(_F32)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = backend.get_xp()
        dx = bottom[0].xdiff
        N, C, H, W = dx.shape
        rois = _rois_host(bottom[1])
        if rois.shape[0] == 0:
            dx.fill(0)
            return
        a, b_, c, d, area = self._corners(rois, dx.shape)
        g = top[0].xdiff.astype(np.float64)
        area_d = backend.to_device(np.broadcast_to(area[:, None], g.shape).astype(np.float64))
        g = xp.where(area_d > 0, g / xp.maximum(area_d, 1), 0).reshape(-1)
        # a difference image: +g at the two main corners, -g at the others; its 2-D
        # running sum spreads g over each bin's window
        size = N * C * (H + 1) * (W + 1)
        idx = xp.concatenate([backend.to_device(i).reshape(-1) for i in (a, d, b_, c)])
        w = xp.concatenate([g, g, -g, -g])
        diff = xp.bincount(idx, weights=w, minlength=size).reshape(N, C, H + 1, W + 1)
        dx[...] = xp.cumsum(xp.cumsum(diff, axis=2), axis=3)[:, :, :H, :W]


# -- Proposal --------------------------------------------------------------------------

def generate_anchors(base_size=16, ratios=(0.5, 1, 2), scales=(8, 16, 32)):
    """py-faster-rcnn's reference anchors: (len(ratios) * len(scales), 4) boxes
    (x1, y1, x2, y2) around the base_size square at the origin, ratio-major."""
    ratios = np.asarray(ratios, np.float64)
    scales = np.asarray(scales, np.float64)
    size = float(base_size)
    ctr = 0.5 * (size - 1)
    ws = np.round(np.sqrt(size * size / ratios))
    hs = np.round(ws * ratios)
    ws = (ws[:, None] * scales[None, :]).ravel()
    hs = (hs[:, None] * scales[None, :]).ravel()
    return np.stack([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1),
                     ctr + 0.5 * (ws - 1), ctr + 0.5 * (hs - 1)], axis=1)


def nms(boxes, thresh, max_keep=0):
    """Greedy non-maximum suppression of ``boxes`` (K, 4), already sorted by
    decreasing score: the kept indices, a box being dropped when its overlap
    (pixel-inclusive IoU) with a kept one exceeds ``thresh``.  Stops after
    ``max_keep`` boxes when it is > 0 (the same first boxes as a full pass)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    one = boxes.dtype.type(1)
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    order = np.arange(boxes.shape[0])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if max_keep and len(keep) >= max_keep:
            break
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr <= thresh]
    return np.asarray(keep, np.int64)


def _parse_param_str(s):
    """py-faster-rcnn's param_str is YAML, in practice a flow mapping such as
    ``'feat_stride': 16`` or ``{'feat_stride': 16, 'scales': [8, 16]}``."""
    s = s.strip()
    if not s:
        return {}
    try:
        import yaml
        v = yaml.safe_load(s)
    except ImportError:
        v = ast.literal_eval(s if s.startswith('{') else '{' + s + '}')
    if not isinstance(v, dict):
        raise ValueError('not a mapping')
    return v


# py-faster-rcnn's fast_rcnn/config.py defaults per phase:
# (RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH, RPN_MIN_SIZE)
_RPN_CFG = {caffe_pb2.TRAIN: (12000, 2000, 0.7, 16), caffe_pb2.TEST: (6000, 300, 0.7, 16)}


@register('Proposal')
class ProposalLayer(Layer):
    """Region proposals from RPN outputs (py-faster-rcnn's rpn.proposal_layer).

    At each of the H x W positions, A = len(ratios) * len(scales) anchors (from a
    base_size square, shifted by feat_stride) are moved by the predicted deltas
    (dx, dy, dw, dh): centre += d * size, size *= exp(d); clipped to the image
    (im_info = height, width, scale); boxes smaller than min_size * scale dropped;
    the pre_nms_topn best (foreground score) kept, NMS at nms_thresh, then the
    post_nms_topn first.

    bottom[0]: scores (1, 2A, H, W), background then foreground.
    bottom[1]: deltas (1, 4A, H, W).  bottom[2]: im_info (1, 3).
    top[0]: rois (R, 5) = (0, x1, y1, x2, y2).  top[1] (optional): scores (R, 1).
    proposal_param (OpenCV): feat_stride (16), base_size (16), min_size (16),
    ratio (0.5, 1, 2), scale (8, 16, 32), pre_nms_topn (6000), post_nms_topn (300),
    nms_thresh (0.7).  As type 'Python' standing in for rpn.proposal_layer,
    param_str gives feat_stride and scales, and the rest is py-faster-rcnn's
    configuration for the phase (TEST: 6000, 300, 0.7, 16; TRAIN: 12000, 2000).
    No backward (as the original).  OpenCV dnn's Proposal differs in two ways
    (its proposal_layer.cpp): it ignores min_size, and pads its output with zero
    rows to post_nms_topn; caffeine follows py-faster-rcnn.  The greedy NMS is
    one vectorized overlap pass per kept box, stopping at post_nms_topn.
    """
    exact_num_bottom = 3
    min_top = 1
    max_top = 2
    allow_force_backward_bottoms = set()

    def setup(self, bottom, top):
        lp = self.layer_param
        if lp.type == 'Python':
            try:
                d = _parse_param_str(lp.python_param.param_str)
            except Exception as e:
                raise self.error('param_str %r is not a YAML mapping (%s)' % (lp.python_param.param_str, e))
            if 'feat_stride' not in d:
                raise self.error("param_str needs 'feat_stride' (py-faster-rcnn's ProposalLayer)")
            pre, post, thresh, min_size = _RPN_CFG[caffe_pb2.TRAIN if self.phase == caffe_pb2.TRAIN
                                                   else caffe_pb2.TEST]
            self.feat_stride = int(d['feat_stride'])
            scales = d.get('scales', (8, 16, 32))
            ratios = d.get('ratios', (0.5, 1, 2))
            base = 16
        else:
            p = lp.proposal_param
            self.feat_stride = int(p.feat_stride)
            scales = list(p.scale) or (8, 16, 32)
            ratios = list(p.ratio) or (0.5, 1, 2)
            base, min_size = int(p.base_size), int(p.min_size)
            pre, post, thresh = int(p.pre_nms_topn), int(p.post_nms_topn), float(p.nms_thresh)
        self.pre_nms, self.post_nms, self.nms_thresh, self.min_size = pre, post, thresh, min_size
        self.anchors = generate_anchors(base, ratios, scales)

    def reshape(self, bottom, top):
        A = self.anchors.shape[0]
        s, d = bottom[0].shape, bottom[1].shape
        if len(s) != 4 or s[1] != 2 * A:
            raise self.error('scores %s must be (1, %d, H, W): 2 x %d anchors' % (tuple(s), 2 * A, A))
        if len(d) != 4 or d[1] != 4 * A or tuple(d[2:]) != tuple(s[2:]):
            raise self.error('deltas %s must be (1, %d, %d, %d)' % (tuple(d), 4 * A, s[2], s[3]))
        if s[0] != 1:
            raise self.error('only single-image batches are supported (as py-faster-rcnn), got %d' % s[0])
        if bottom[2].count < 3:
            raise self.error('im_info must hold (height, width, scale), got shape %s' % (tuple(bottom[2].shape),))
        # the count is known only after NMS: forward reshapes again
        if not top[0].shape:
            top[0].reshape(1, 5)
        if len(top) > 1 and not top[1].shape:
            top[1].reshape(1, 1)

    def forward(self, bottom, top):
        A = self.anchors.shape[0]
        scores = backend.to_host(bottom[0].xdata)[:, A:]              # (1, A, H, W) foreground
        deltas = backend.to_host(bottom[1].xdata)
        im_info = backend.to_host(bottom[2].xdata).reshape(-1)[:3]
        H, W = scores.shape[-2:]
        sx = np.arange(W) * self.feat_stride
        sy = np.arange(H) * self.feat_stride
        sx, sy = np.meshgrid(sx, sy)
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
        # (H*W, A, 4): rows ordered (h, w, a) as the deltas and scores below
        anchors = (self.anchors[None, :, :] + shifts[:, None, :]).reshape(-1, 4).astype(_F32)
        deltas = deltas.transpose(0, 2, 3, 1).reshape(-1, 4)
        scores = scores.transpose(0, 2, 3, 1).reshape(-1)
        # bbox_transform_inv, in float32 as the original
        one, half = _F32(1), _F32(0.5)
        widths = anchors[:, 2] - anchors[:, 0] + one
        heights = anchors[:, 3] - anchors[:, 1] + one
        cx = anchors[:, 0] + half * widths
        cy = anchors[:, 1] + half * heights
        pcx = deltas[:, 0] * widths + cx
        pcy = deltas[:, 1] * heights + cy
        pw = np.exp(deltas[:, 2]) * widths
        ph = np.exp(deltas[:, 3]) * heights
        boxes = np.stack([pcx - half * pw, pcy - half * ph, pcx + half * pw, pcy + half * ph], axis=1)
        # clip to the image
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, im_info[1] - one)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, im_info[0] - one)
        # drop boxes smaller than min_size at the input scale
        min_size = _F32(self.min_size) * im_info[2]
        ws = boxes[:, 2] - boxes[:, 0] + one
        hs = boxes[:, 3] - boxes[:, 1] + one
        keep = np.where((ws >= min_size) & (hs >= min_size))[0]
        boxes, scores = boxes[keep], scores[keep]
        order = scores.argsort()[::-1]
        if self.pre_nms > 0:
            order = order[:self.pre_nms]
        boxes, scores = boxes[order], scores[order]
        keep = nms(boxes, _F32(self.nms_thresh), self.post_nms)
        boxes, scores = boxes[keep], scores[keep]
        top[0].reshape(boxes.shape[0], 5)
        out = np.zeros((boxes.shape[0], 5), _F32)
        out[:, 1:] = boxes
        backend.copy_into(top[0].xdata, out)
        if len(top) > 1:
            top[1].reshape(scores.shape[0], 1)
            backend.copy_into(top[1].xdata, scores.reshape(-1, 1).astype(_F32))
