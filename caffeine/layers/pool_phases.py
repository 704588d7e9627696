"""MAX and AVE pooling over stride-phase planes (the portable path of Caffe's PoolingLayer).

A window offset (i, j) read on a strided view of the input costs ten times a
contiguous pass in NumPy (the inner loop strides by ``stride``).  So the padded input
is split once into its stride phases, plane (a, b)[u, v] = xpad[a + sh u, b + sw v]
(a < min(sh, kh), b < min(sw, kw)), each an (Hq, Wq) plane with
Hq = PH + (kh - 1) // sh and Wq = PW + (kw - 1) // sw.  Offset (i, j) is then plane
(i % sh, j % sw) shifted by (i // sh) Wq + j // sw: with the planes of all channels
back to back in one flat buffer, every offset is ONE contiguous slice, and every pass
(fmax, compare, add) a unit-stride ufunc over the whole chunk.  Outputs are computed in
the same "extended" layout, (Hq, Wq) per plane; lanes outside (PH, PW) are scratch,
dropped when copied out (nothing to drop when Hq = PH and Wq = PW, e.g. kernel = stride).

Backward accumulates into planes of the same shape and puts them back in place (one
strided copy per phase; with kernel <= stride each phase has one offset and that copy
is the only write).  Work runs in chunks of images small enough to stay in cache
(``CHUNK_KB`` of planes: 1024 beat 256 and 512 and tied 2048 in ``benchmarks/pool_ab.py``);
on the GPU the whole batch is one chunk.  Buffers come from the shared workspace; the
argmax (``koff``: 1 + the raster-order window offset of each maximum, 0 for none) lives
in the layer.

Caffe's semantics, exactly: the maximum starts at -FLT_MAX and is replaced by a later
element only when that is strictly greater (the first maximum in raster order wins; NaN
never wins; padding is -inf and never wins; a window where nothing wins has argmax -1,
its gradient goes nowhere); AVE divides by the window clipped to the
padded input (the caller's ``inv``); backward routes each gradient to its window's
argmax, or spreads dy * inv over the window, summing where windows overlap in Caffe's
order (the windows' raster order: the offsets' reverse one).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..workspace import workspace

_F32 = np.float32
_FLT_MAX = float(np.finfo(np.float32).max)
CHUNK_KB = 1024  # CPU: the phase planes of one chunk of images take about this much


class PhasePool:
    """The phase planes of one pooling geometry: input (N, C, H, W), kernel (kh, kw),
    stride (sh, sw), pad (ph, pw), output (PH, PW); ``koff_dtype`` holds 1 + kh * kw."""

    def __init__(self, shape, kernel, stride, pad, out, koff_dtype):
        N, C, H, W = shape
        (kh, kw), (sh, sw), (ph, pw), (PH, PW) = kernel, stride, pad, out
        self.N, self.C, self.H, self.W = N, C, H, W
        self.PH, self.PW = PH, PW
        self.koff_dtype = koff_dtype
        self.Hq, self.Wq = PH + (kh - 1) // sh, PW + (kw - 1) // sw
        self.L = self.Hq * self.Wq                       # one plane, in the extended layout
        self.phases = [(a, b) for a in range(min(sh, kh)) for b in range(min(sw, kw))]
        # offsets in raster order: (k, phase index, flat shift)
        self.offsets = [(i * kw + j, self.phases.index((i % sh, j % sw)), (i // sh) * self.Wq + j // sw)
                        for i in range(kh) for j in range(kw)]
        self.tail = max(s for _, _, s in self.offsets)  # scratch lanes of the last plane read past it
        self.exact = (self.Hq, self.Wq) == (PH, PW)     # no scratch lanes: work in y / dy directly

        def span(a, s, p, n, q):  # plane indices [u0, u1) inside the input, and the input's slice
            u0 = max(0, -((a - p) // s))
            u1 = max(u0, min(q, -(-(n + p - a) // s)))
            r0 = a + s * u0 - p
            return slice(u0, u1), slice(r0, r0 + (u1 - u0 - 1) * s + 1, s), u1 > u0
        all_ = slice(None)
        self.copies = []  # per phase: (plane slice, input slice or None, the plane's padding slices)
        cover = np.zeros((H, W), bool)
        for a, b in self.phases:
            (us, rs, hok), (vs, cs, wok) = span(a, sh, ph, H, self.Hq), span(b, sw, pw, W, self.Wq)
            pads = [(all_, slice(0, us.start)), (all_, slice(us.stop, None)),
                    (all_, us, slice(0, vs.start)), (all_, us, slice(vs.stop, None))]
            pads = [t for t, n in zip(pads, (us.start, self.Hq - us.stop, vs.start, self.Wq - vs.stop)) if n > 0]
            if hok and wok:
                self.copies.append(((all_, us, vs), (all_, rs, cs), pads))
                cover[rs, cs] = True
            else:
                self.copies.append(((all_, us, vs), None, [(all_,)]))
        self.covers_input = bool(cover.all())  # else backward zeroes dx first (kernel < stride, floor mode)
        self.disjoint = self.tail == 0          # kernel <= stride: each input element in one window at most
        plane_bytes = len(self.phases) * self.L * C * 4
        self.cpu_chunk = max(1, min(N, (CHUNK_KB << 10) // max(plane_bytes, 1)))

    # -- buffers and layout ----------------------------------------------------
    def _chunks(self):
        step = self.N if backend.is_gpu() else self.cpu_chunk  # the GPU takes the batch at once
        for n0 in range(0, self.N, step):
            yield n0, min(self.N, n0 + step)

    def _planes(self, name, nc):
        """(phases, nc * L + tail) flat planes from the workspace."""
        n = nc * self.L + self.tail
        return workspace(name, len(self.phases) * n).reshape(len(self.phases), n)

    def _plane4(self, flat, nc):
        return flat[:nc * self.L].reshape(nc, self.Hq, self.Wq)

    def split(self, xp, x, nc, value):
        """The phase planes of x (nc, H, W), padded with ``value``."""
        P = self._planes('pool_phase', nc)
        for p, (dst, src, pads) in enumerate(self.copies):
            q = self._plane4(P[p], nc)
            if src is not None:
                q[dst] = x[src]
            for t in pads:
                q[t] = value
        if self.tail:
            P[:, nc * self.L:] = value
        return P

    def merge(self, xp, P, dx, nc):
        """dx (nc, H, W) = the phase planes P put back in place (their padding dropped)."""
        if not self.covers_input:
            dx.fill(0)
        for p, (dst, src, _) in enumerate(self.copies):
            if src is not None:
                dx[src] = self._plane4(P[p], nc)[dst]

    def _out_ext(self, y, nc):
        """y's chunk (nc, PH, PW) itself when the layouts agree, else an extended scratch."""
        if self.exact:
            return y.reshape(-1)
        return workspace('pool_yext', nc * self.L)

    def _copy_out(self, ye, y, nc):
        if not self.exact:
            y[...] = self._plane4(ye, nc)[:, :self.PH, :self.PW]

    def _dy_ext(self, dy, nc):
        """dy's chunk in the extended layout, its scratch lanes 0."""
        if self.exact:
            return dy.reshape(-1)
        d = workspace('pool_dyext', nc * self.L)
        q = self._plane4(d, nc)
        q[:, :self.PH, :self.PW] = dy
        q[:, self.PH:] = 0
        q[:, :self.PH, self.PW:] = 0
        return d

    def koff_ext(self, koff):
        """max_forward's koff (N * C * L) as (N, C, PH, PW)."""
        return koff.reshape(self.N, self.C, self.Hq, self.Wq)[..., :self.PH, :self.PW]

    # -- MAX -------------------------------------------------------------------
    def max_forward(self, xp, x, y, koff=None):
        """y = each window's maximum; koff (N * C * L, or None) = 1 + its raster-order window
        offset (0 where no element beats -FLT_MAX: Caffe's argmax -1)."""
        C, H, W = self.C, self.H, self.W
        for n0, n1 in self._chunks():
            nc = (n1 - n0) * C
            P = self.split(xp, x[n0:n1].reshape(nc, H, W), nc, -np.inf)
            yc = y[n0:n1].reshape(nc, self.PH, self.PW)
            ye = self._out_ext(yc, nc)
            m = nc * self.L
            if koff is None:
                for k, p, s in self.offsets:
                    v = P[p, s:s + m]
                    if k:
                        xp.fmax(ye, v, out=ye)
                    else:
                        xp.fmax(v, _F32(-_FLT_MAX), out=ye)
            else:
                kc = koff[n0 * C * self.L:n1 * C * self.L]
                gt = workspace('pool_bool', m, np.bool_)
                gi = gt.view(np.int8)  # 0 / 1: int8 products are twice as fast as bool x int8 ones
                kt = workspace('pool_koff_tmp', m, self.koff_dtype)
                for k, p, s in self.offsets:
                    v = P[p, s:s + m]
                    # branch-free (a masked copy mispredicts): offsets only grow, so the
                    # last one to beat the maximum is max(koff, (k + 1) gt)
                    xp.greater(v, ye if k else _F32(-_FLT_MAX), out=gt)
                    if k:
                        xp.multiply(gi, self.koff_dtype(k + 1), out=kt)
                        xp.maximum(kc, kt, out=kc)
                        xp.fmax(ye, v, out=ye)
                    else:
                        kc[...] = gi
                        xp.fmax(v, _F32(-_FLT_MAX), out=ye)
            self._copy_out(ye, yc, nc)

    def max_backward(self, xp, koff, dy, dx):
        """dx = each dy added to the element its window's koff names (max_forward's)."""
        C, H, W = self.C, self.H, self.W
        for n0, n1 in self._chunks():
            nc = (n1 - n0) * C
            m = nc * self.L
            de = self._dy_ext(dy[n0:n1].reshape(nc, self.PH, self.PW), nc)
            kc = koff[n0 * C * self.L:n1 * C * self.L]
            eq = workspace('pool_bool', m, np.bool_)
            if self.disjoint:  # one offset per phase, shift 0: the planes are dx's own elements
                dxc = dx[n0:n1].reshape(nc, H, W)
                if not self.covers_input:
                    dxc.fill(0)
                for k, p, _ in self.offsets:
                    dst, src, _ = self.copies[p]
                    if src is not None:
                        xp.equal(kc, k + 1, out=eq)
                        xp.multiply(self._plane4(de, nc)[dst], self._plane4(eq, nc)[dst], out=dxc[src])
                continue
            D = self._planes('pool_dphase', nc)
            tmp = workspace('pool_tmp', m)
            first = set()
            for k, p, s in self.offsets[::-1]:
                xp.equal(kc, k + 1, out=eq)
                if p not in first:  # the first of its phase assigns (after zeroing below its shift)
                    first.add(p)
                    D[p, :s] = 0
                    xp.multiply(de, eq, out=D[p, s:s + m])
                else:
                    xp.multiply(de, eq, out=tmp)
                    v = D[p, s:s + m]
                    xp.add(v, tmp, out=v)
            self.merge(xp, D, dx[n0:n1].reshape(nc, H, W), nc)

    # -- AVE -------------------------------------------------------------------
    def ave_forward(self, xp, x, y, inv):
        """y = each window's sum times inv (PH, PW)."""
        C, H, W = self.C, self.H, self.W
        for n0, n1 in self._chunks():
            nc = (n1 - n0) * C
            P = self.split(xp, x[n0:n1].reshape(nc, H, W), nc, 0.0)
            yc = y[n0:n1].reshape(nc, self.PH, self.PW)
            ye = self._out_ext(yc, nc)
            m = nc * self.L
            _, p0, s0 = self.offsets[0]
            ye[...] = P[p0, s0:s0 + m]
            for _, p, s in self.offsets[1:]:
                xp.add(ye, P[p, s:s + m], out=ye)
            self._copy_out(ye, yc, nc)
            xp.multiply(yc, inv, out=yc)

    def ave_backward(self, xp, inv, dy, dx):
        """dx = dy * inv spread over each window."""
        C, H, W = self.C, self.H, self.W
        for n0, n1 in self._chunks():
            nc = (n1 - n0) * C
            m = nc * self.L
            g = workspace('pool_tmp', m)
            gq = self._plane4(g, nc)
            if self.exact:
                xp.multiply(dy[n0:n1].reshape(nc, self.PH, self.PW), inv, out=gq)
            else:
                xp.multiply(dy[n0:n1].reshape(nc, self.PH, self.PW), inv, out=gq[:, :self.PH, :self.PW])
                gq[:, self.PH:] = 0
                gq[:, :self.PH, self.PW:] = 0
            if self.disjoint:
                dxc = dx[n0:n1].reshape(nc, H, W)
                if not self.covers_input:
                    dxc.fill(0)
                for dst, src, _ in self.copies:
                    if src is not None:
                        dxc[src] = gq[dst]
                continue
            D = self._planes('pool_dphase', nc)
            first = set()
            for _, p, s in self.offsets[::-1]:
                if p not in first:
                    first.add(p)
                    D[p, :s] = 0
                    D[p, s:s + m] = g
                else:
                    v = D[p, s:s + m]
                    xp.add(v, g, out=v)
            self.merge(xp, D, dx[n0:n1].reshape(nc, H, W), nc)
