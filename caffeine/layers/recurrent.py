"""Recurrent layers: RNN, LSTM and LSTMUnit, as in BVLC Caffe 1.0.

Caffe builds RNN and LSTM as an unrolled internal net; here they are computed
directly, with a loop over time steps only (vectorized over streams and
units).  The parameter blobs have Caffe's order and shapes, so trained Caffe
weights load unchanged:

- LSTM: [W_xc (4H x I), b_c (4H), (W_xc_static (4H x S) with a static input), W_hc (4H x H)],
  gate order i, f, o, g (Caffe's LSTMUnit);
- RNN:  [W_xh (H x I), b_h (H), (W_xh_static (H x S)), W_hh (H x H), W_ho (H x H), b_o (H)].

Bottoms: x (T x N x ...), cont (T x N: 0 starts a new sequence), optionally a
static input x_static (N x ...), and with ``expose_hidden`` the initial state
(h_0 and, for LSTM, c_0, each 1 x N x H).  Tops: the outputs (T x N x H) and,
with ``expose_hidden``, the final state (h_T, and c_T for LSTM).

As Caffe does:
- without ``expose_hidden`` the state carries over between forward passes
  (the initial state of a pass is the final state of the previous one; zero at
  first); ``cont = 0`` at the first step of a sequence discards it;
- gradients do not cross batches: the diffs of the exposed final-state tops are
  ignored and the exposed initial-state bottoms get no gradient (zero diff);
- ``cont`` takes no gradient ("Cannot backpropagate to sequence indicators").
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..layer import Layer, register
from ._util import shape_count


def _sigmoid(xp, x, out):
    # Caffe's LSTMUnit: 1 / (1 + exp(-x))
    xp.negative(x, out=out)
    xp.exp(out, out=out)
    out += np.float32(1)
    xp.reciprocal(out, out=out)
    return out


class _RecurrentBase(Layer):
    """Shared set-up of RNN and LSTM (Caffe's RecurrentLayer)."""

    min_bottom = 2
    # Caffe: every bottom but cont (1) may be forced to back-propagate
    allow_force_backward_bottoms = None
    num_recur = 1        # recurrent state blobs: 1 (h) for RNN, 2 (h, c) for LSTM
    gate_mult = 1        # gate pre-activations per hidden unit: 4 for LSTM

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    @property
    def max_bottom(self):
        return 3 + (self.num_recur if self.layer_param.recurrent_param.expose_hidden else 0)

    @property
    def exact_num_top(self):
        return 1 + (self.num_recur if self.layer_param.recurrent_param.expose_hidden else 0)

    def _check_seq_bottoms(self, bottom):
        if len(bottom[0].shape) < 2:
            raise self.error('bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...); got shape %s'
                             % list(bottom[0].shape))
        T, N = bottom[0].shape[:2]
        if len(bottom[1].shape) != 2 or tuple(bottom[1].shape) != (T, N):
            raise self.error('bottom[1] (cont) must have shape (#timesteps, #streams) = %s; got %s'
                             % ([T, N], list(bottom[1].shape)))
        return T, N

    def setup(self, bottom, top):
        rp = self.layer_param.recurrent_param
        self.H = int(rp.num_output)
        if self.H <= 0:
            raise self.error('recurrent_param.num_output must be positive, got %d' % self.H)
        self.expose_hidden = bool(rp.expose_hidden)
        self.debug_info = bool(rp.debug_info)
        T, N = self._check_seq_bottoms(bottom)
        n_exposed = self.num_recur if self.expose_hidden else 0
        self.static_input = len(bottom) > 2 + n_exposed
        if self.expose_hidden and len(bottom) < 2 + n_exposed:
            raise self.error('with expose_hidden, takes %d recurrent state bottom(s) after x and cont '
                             '(and the optional static input); got %d bottoms' % (n_exposed, len(bottom)))
        if self.static_input:
            if len(bottom[2].shape) < 1 or bottom[2].shape[0] != N:
                raise self.error('static input bottom[2] must have shape (#streams=%d, ...); got %s'
                                 % (N, list(bottom[2].shape)))
        self.I = shape_count(bottom[0].shape, 2)
        self.S = shape_count(bottom[2].shape, 1) if self.static_input else 0
        if not self.blobs:
            self.blobs = self.make_params(rp)
        else:
            self.check_params()
        self.param_propagate_down = [True] * len(self.blobs)
        self._bufshape = None
        self._state_shape = None
        self._state = None

    def check_params(self):
        want = self.param_shapes()
        got = [tuple(b.shape) for b in self.blobs]
        if got != want:
            raise self.error('parameter blob shapes %s do not match %s' % (got, want))

    # -- buffers and state ---------------------------------------------------
    def _alloc(self, T, N):
        G = self.gate_mult * self.H
        key = (T, N, backend.mode())
        if self._bufshape != key:
            self._bufshape = key
            self._gates = backend.empty((T, N, G))          # pre-activations, then activations
            self._hc = backend.empty((T, N, self.H))        # cont_t * h_{t-1}
            self._h = backend.empty((T + 1, N, self.H))     # h_0 .. h_T
            self._dgates = backend.empty((T, N, G))
            self._alloc_extra(T, N)
        if self._state is None or self._state_shape != N:
            # the carried-over state starts at zero (as Caffe's fresh blobs)
            self._state = [backend.zeros((N, self.H)) for _ in range(self.num_recur)]
            self._state_shape = N
        elif backend.is_device_array(self._state[0]) != backend.is_gpu():
            self._state = [backend.to_device(backend.to_host(s)) for s in self._state]

    def _alloc_extra(self, T, N):
        pass

    def reshape(self, bottom, top):
        T, N = self._check_seq_bottoms(bottom)
        if shape_count(bottom[0].shape, 2) != self.I:
            raise self.error('input dimension changed: x has %d values per step and stream, the weights expect %d'
                             % (shape_count(bottom[0].shape, 2), self.I))
        if self.static_input:
            if bottom[2].shape[0] != N or shape_count(bottom[2].shape, 1) != self.S:
                raise self.error('static input must have shape (%d, ...) with %d values per stream; got %s'
                                 % (N, self.S, list(bottom[2].shape)))
        if self.expose_hidden:
            off = 2 + int(self.static_input)
            for j in range(self.num_recur):
                b = bottom[off + j]
                if tuple(b.shape) != (1, N, self.H):
                    raise self.error('bottom[%d] shape must match hidden state input shape %s; got %s'
                                     % (off + j, [1, N, self.H], list(b.shape)))
        top[0].reshape((T, N, self.H))
        if self.expose_hidden:
            for j in range(self.num_recur):
                top[1 + j].reshape((1, N, self.H))
        self._alloc(T, N)

    def _initial_state(self, bottom):
        """The initial states h_0 (, c_0) as N x H arrays."""
        if self.expose_hidden:
            off = 2 + int(self.static_input)
            return [bottom[off + j].xdata.reshape(-1, self.H) for j in range(self.num_recur)]
        return self._state

    def _finish_forward(self, top, finals):
        for j, f in enumerate(finals):
            if self.expose_hidden:
                top[1 + j].xdata[...] = f.reshape(top[1 + j].shape)
            else:
                self._state[j][...] = f

    def _static_term(self, bottom, W):
        if not self.static_input:
            return None
        xs = bottom[2].xdata.reshape(-1, self.S)
        return xs @ W.T

    def _input_backward(self, bottom, propagate_down, dG, W_x, b_x, W_s):
        """Gradients of x -> W_x x + b_x (+ W_s x_static), from dG (T x N x G)."""
        xp = backend.get_xp()
        T, N = self._bufshape[:2]
        G = dG.shape[-1]
        dG2 = dG.reshape(T * N, G)
        x2 = bottom[0].xdata.reshape(T * N, self.I)
        if self.param_propagate_down[0]:
            self.blobs[0].xdiff[...] += dG2.T @ x2
        if self.param_propagate_down[1]:
            self.blobs[1].xdiff[...] += dG2.sum(axis=0)
        if propagate_down[0]:
            xp.matmul(dG2, W_x, out=bottom[0].xdiff.reshape(T * N, self.I))
        if self.static_input:
            dS = dG.sum(axis=0)                                       # N x G
            if self.param_propagate_down[2]:
                self.blobs[2].xdiff[...] += dS.T @ bottom[2].xdata.reshape(N, self.S)
            if propagate_down[2]:
                xp.matmul(dS, W_s, out=bottom[2].xdiff.reshape(N, self.S))

    def _hidden_bottoms_backward(self, propagate_down, bottom):
        # Caffe shares only the data of the exposed initial state with the
        # unrolled net: no gradient reaches these bottoms.
        if self.expose_hidden:
            off = 2 + int(self.static_input)
            for j in range(self.num_recur):
                if off + j < len(propagate_down) and propagate_down[off + j]:
                    bottom[off + j].xdiff.fill(0)

    def _check_backward(self, propagate_down):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error('cannot backpropagate to sequence indicators (bottom 1, cont)')


# ---------------------------------------------------------------------------------
@register('LSTM')
class LSTMLayer(_RecurrentBase):
    """Long short-term memory over T time steps (Caffe's LSTMLayer).

    gates_t = W_xc x_t + b_c (+ W_xc_static x_static) + W_hc (cont_t h_{t-1});
    then LSTMUnit: c_t = cont_t f_t c_{t-1} + i_t g_t, h_t = o_t tanh(c_t).
    """
    num_recur = 2
    gate_mult = 4

    def param_shapes(self):
        G = 4 * self.H
        s = [(G, self.I), (G,)]
        if self.static_input:
            s.append((G, self.S))
        s.append((G, self.H))
        return s

    def make_params(self, rp):
        G = 4 * self.H
        wf, bf = rp.weight_filler, rp.bias_filler   # Caffe's default: constant 0
        blobs = [self.new_param_blob((G, self.I), wf), self.new_param_blob((G,), bf)]
        if self.static_input:
            blobs.append(self.new_param_blob((G, self.S), wf))
        blobs.append(self.new_param_blob((G, self.H), wf))
        return blobs

    def _alloc_extra(self, T, N):
        self._c = backend.empty((T + 1, N, self.H))     # c_0 .. c_T
        self._tanhc = backend.empty((T, N, self.H))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        T, N = self._bufshape[:2]
        H, G = self.H, 4 * self.H
        W_x, b_x = self.blobs[0].xdata, self.blobs[1].xdata
        W_h = self.blobs[-1].xdata
        gates = self._gates
        xp.matmul(bottom[0].xdata.reshape(T * N, self.I), W_x.T, out=gates.reshape(T * N, G))
        gates += b_x
        st = self._static_term(bottom, self.blobs[2].xdata) if self.static_input else None
        if st is not None:
            gates += st[None]
        cont = bottom[1].xdata.reshape(T, N, 1)
        h0, c0 = self._initial_state(bottom)
        self._h[0][...] = h0
        self._c[0][...] = c0
        for t in range(T):
            g = gates[t]
            hc = self._hc[t]
            xp.multiply(self._h[t], cont[t], out=hc)
            g += hc @ W_h.T
            # activations, in place: i, f, o sigmoid; g tanh
            _sigmoid(xp, g[:, :3 * H], g[:, :3 * H])
            xp.tanh(g[:, 3 * H:], out=g[:, 3 * H:])
            f = g[:, H:2 * H]
            f *= cont[t]                       # f = cont * sigmoid(.) (0 where cont == 0)
            c = self._c[t + 1]
            xp.multiply(f, self._c[t], out=c)
            c += g[:, :H] * g[:, 3 * H:]
            tc = self._tanhc[t]
            xp.tanh(c, out=tc)
            xp.multiply(g[:, 2 * H:3 * H], tc, out=self._h[t + 1])
        top[0].xdata[...] = self._h[1:]
        self._finish_forward(top, [self._h[T], self._c[T]])

    def backward(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        xp = backend.get_xp()
        T, N = self._bufshape[:2]
        H = self.H
        W_h = self.blobs[-1].xdata
        acts = self._gates
        dG = self._dgates
        top_diff = top[0].xdiff.reshape(T, N, H)
        cont = bottom[1].xdata.reshape(T, N, 1)
        dh_next = xp.zeros((N, H), dtype=np.float32)      # from the step after (none after T)
        dc_next = xp.zeros((N, H), dtype=np.float32)
        for t in range(T - 1, -1, -1):
            a = acts[t]
            i, f, o, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            tc = self._tanhc[t]
            dh = top_diff[t] + dh_next
            # c_term_diff = dc + dh * o * (1 - tanh(c)^2)
            ct = dc_next + dh * o * (np.float32(1) - tc * tc)
            d = dG[t]
            xp.multiply(ct * g, i * (np.float32(1) - i), out=d[:, :H])
            xp.multiply(ct * self._c[t], f * (np.float32(1) - f), out=d[:, H:2 * H])
            xp.multiply(dh * tc, o * (np.float32(1) - o), out=d[:, 2 * H:3 * H])
            xp.multiply(ct * i, np.float32(1) - g * g, out=d[:, 3 * H:])
            dc_next = ct * f
            dh_next = (d @ W_h) * cont[t]
        G = 4 * H
        if self.param_propagate_down[-1]:
            self.blobs[-1].xdiff[...] += dG.reshape(T * N, G).T @ self._hc.reshape(T * N, H)
        W_s = self.blobs[2].xdata if self.static_input else None
        self._input_backward(bottom, propagate_down, dG, self.blobs[0].xdata, self.blobs[1].xdata, W_s)
        self._hidden_bottoms_backward(propagate_down, bottom)


# ---------------------------------------------------------------------------------
@register('RNN')
class RNNLayer(_RecurrentBase):
    """Elman RNN over T time steps (Caffe's RNNLayer).

    h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h (+ W_xh_static x_static));
    o_t = tanh(W_ho h_t + b_o).
    """
    num_recur = 1
    gate_mult = 1

    def param_shapes(self):
        H = self.H
        s = [(H, self.I), (H,)]
        if self.static_input:
            s.append((H, self.S))
        s += [(H, H), (H, H), (H,)]
        return s

    def make_params(self, rp):
        H = self.H
        wf, bf = rp.weight_filler, rp.bias_filler   # Caffe's default: constant 0
        blobs = [self.new_param_blob((H, self.I), wf), self.new_param_blob((H,), bf)]
        if self.static_input:
            blobs.append(self.new_param_blob((H, self.S), wf))
        blobs += [self.new_param_blob((H, H), wf), self.new_param_blob((H, H), wf),
                  self.new_param_blob((H,), bf)]
        return blobs

    def _alloc_extra(self, T, N):
        self._o = backend.empty((T, N, self.H))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        T, N = self._bufshape[:2]
        H = self.H
        k = 2 + int(self.static_input)
        W_x, b_x = self.blobs[0].xdata, self.blobs[1].xdata
        W_hh, W_ho, b_o = self.blobs[k].xdata, self.blobs[k + 1].xdata, self.blobs[k + 2].xdata
        pre = self._gates
        xp.matmul(bottom[0].xdata.reshape(T * N, self.I), W_x.T, out=pre.reshape(T * N, H))
        pre += b_x
        if self.static_input:
            pre += self._static_term(bottom, self.blobs[2].xdata)[None]
        cont = bottom[1].xdata.reshape(T, N, 1)
        (h0,) = self._initial_state(bottom)
        self._h[0][...] = h0
        for t in range(T):
            hc = self._hc[t]
            xp.multiply(self._h[t], cont[t], out=hc)
            p = pre[t]
            p += hc @ W_hh.T
            xp.tanh(p, out=self._h[t + 1])
        o = self._o
        xp.matmul(self._h[1:].reshape(T * N, H), W_ho.T, out=o.reshape(T * N, H))
        o += b_o
        xp.tanh(o, out=o)
        top[0].xdata[...] = o
        self._finish_forward(top, [self._h[T]])

    def backward(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        xp = backend.get_xp()
        T, N = self._bufshape[:2]
        H = self.H
        k = 2 + int(self.static_input)
        W_hh, W_ho = self.blobs[k].xdata, self.blobs[k + 1].xdata
        cont = bottom[1].xdata.reshape(T, N, 1)
        o = self._o
        dpo = top[0].xdiff.reshape(T, N, H) * (np.float32(1) - o * o)    # d(W_ho h + b_o)
        dpo2 = dpo.reshape(T * N, H)
        hs = self._h[1:].reshape(T * N, H)
        if self.param_propagate_down[k + 1]:
            self.blobs[k + 1].xdiff[...] += dpo2.T @ hs
        if self.param_propagate_down[k + 2]:
            self.blobs[k + 2].xdiff[...] += dpo2.sum(axis=0)
        dH = (dpo2 @ W_ho).reshape(T, N, H)                               # dL/dh_t from the outputs
        dP = self._dgates
        dh_next = None
        for t in range(T - 1, -1, -1):
            dh = dH[t] if dh_next is None else dH[t] + dh_next
            h = self._h[t + 1]
            d = dP[t]
            xp.multiply(dh, np.float32(1) - h * h, out=d)
            dh_next = (d @ W_hh) * cont[t]
        if self.param_propagate_down[k]:
            self.blobs[k].xdiff[...] += dP.reshape(T * N, H).T @ self._hc.reshape(T * N, H)
        W_s = self.blobs[2].xdata if self.static_input else None
        self._input_backward(bottom, propagate_down, dP, self.blobs[0].xdata, self.blobs[1].xdata, W_s)
        self._hidden_bottoms_backward(propagate_down, bottom)


# ---------------------------------------------------------------------------------
@register('LSTMUnit')
class LSTMUnitLayer(Layer):
    """One LSTM step (Caffe's LSTMUnitLayer).

    bottom: c_prev (1 x N x D), gates (1 x N x 4D, order i, f, o, g), cont (1 x N).
    top: c (1 x N x D), h (1 x N x D).
    i, f, o = sigmoid; g = tanh; f is multiplied by cont;
    c = f c_prev + i g; h = o tanh(c).
    """
    exact_num_bottom = 3
    exact_num_top = 2
    allow_force_backward_bottoms = frozenset([0, 1])

    def setup(self, bottom, top):
        self._shape = None

    def reshape(self, bottom, top):
        s0, s1, s2 = bottom[0].shape, bottom[1].shape, bottom[2].shape
        if len(s0) != 3 or s0[0] != 1:
            raise self.error('bottom[0] (c_prev) must have shape (1, N, D); got %s' % list(s0))
        N, D = s0[1], s0[2]
        if tuple(s1) != (1, N, 4 * D):
            raise self.error('bottom[1] (gates) must have shape (1, N, 4D) = %s; got %s'
                             % ([1, N, 4 * D], list(s1)))
        if len(s2) != 2 or tuple(s2) != (1, N):
            raise self.error('bottom[2] (cont) must have shape (1, N) = %s; got %s' % ([1, N], list(s2)))
        self.N, self.D = N, D
        top[0].reshape(s0)
        top[1].reshape(s0)
        if self._shape != (N, D):
            self._shape = (N, D)
            self._acts = backend.empty((N, 4 * D))
            self._tanhc = backend.empty((N, D))

    def _ensure_device(self):
        if backend.is_device_array(self._acts) != backend.is_gpu():
            self._acts = backend.empty((self.N, 4 * self.D))
            self._tanhc = backend.empty((self.N, self.D))

    def forward(self, bottom, top):
        xp = backend.get_xp()
        self._ensure_device()
        N, D = self.N, self.D
        a = self._acts
        a[...] = bottom[1].xdata.reshape(N, 4 * D)
        _sigmoid(xp, a[:, :3 * D], a[:, :3 * D])
        xp.tanh(a[:, 3 * D:], out=a[:, 3 * D:])
        f = a[:, D:2 * D]
        f *= bottom[2].xdata.reshape(N, 1)
        c_prev = bottom[0].xdata.reshape(N, D)
        c = a[:, :D] * a[:, 3 * D:]
        c += f * c_prev
        tc = self._tanhc
        xp.tanh(c, out=tc)
        h = a[:, 2 * D:3 * D] * tc
        top[0].xdata.reshape(N, D)[...] = c
        top[1].xdata.reshape(N, D)[...] = h

    def backward(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error('cannot backpropagate to sequence indicators (bottom 2, cont)')
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = backend.get_xp()
        N, D = self.N, self.D
        a = self._acts
        i, f, o, g = a[:, :D], a[:, D:2 * D], a[:, 2 * D:3 * D], a[:, 3 * D:]
        tc = self._tanhc
        c_prev = bottom[0].xdata.reshape(N, D)
        dc = top[0].xdiff.reshape(N, D)
        dh = top[1].xdiff.reshape(N, D)
        ct = dc + dh * o * (np.float32(1) - tc * tc)
        if propagate_down[1]:
            d = bottom[1].xdiff.reshape(N, 4 * D)
            xp.multiply(ct * g, i * (np.float32(1) - i), out=d[:, :D])
            xp.multiply(ct * c_prev, f * (np.float32(1) - f), out=d[:, D:2 * D])
            xp.multiply(dh * tc, o * (np.float32(1) - o), out=d[:, 2 * D:3 * D])
            xp.multiply(ct * i, np.float32(1) - g * g, out=d[:, 3 * D:])
        if propagate_down[0]:
            xp.multiply(ct, f, out=bottom[0].xdiff.reshape(N, D))
