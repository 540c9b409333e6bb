"""The layer-normalised LSTM (Ba, Kiros and Hinton 2016, "Layer Normalization", section 3.1), gates in
the LSTM's order i, f, o, g::

    LN(v) = (v - mean(v)) / sqrt(var(v) + eps)       over the H units of one gate, eps = 1e-5
    z_k = LN(x_t Wx_k) gx_k + LN(h_{t-1} Wh_k) gh_k + b_k        for each gate k of i, f, o, g
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;          h_t = o * tanh(LN(c_t) gc + bc)

Parameters: ``Wx (D, 4H)``, ``Wh (H, 4H)``, ``b (4H,)`` as the LSTM's (forget bias 1), the gains
``gx, gh (4H,)`` (initialised to 1) and the cell's gain and bias ``gc, bc (H,)`` (1 and 0). The state
(h, c) carries c un-normalised. Normalising the input and the recurrent term apart, each gate over its own
units, keeps their scales independent of the weights' scale and of each other: the gains then set them.

Gates are kept gate-major, (4, N, H) (see ``base``). The input term is normalised for every packed row
in one pass before the loop; for id (one-hot) inputs ``x_t Wx`` is a row of Wx, so the V rows of Wx are
normalised (per gate) and then gathered. The recurrent term and the cell are normalised step by step.

The backward pass of LN: with v̂ = LN(v) and s = 1 / sqrt(var(v) + eps),
``dv = s (dv̂ - mean(dv̂) - v̂ mean(dv̂ v̂))``, means over the H units.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..registry import CELLS
from .lstm import LSTM, factor_workspaces, gate_factors
from .base import (Cell, Packing, RecurrentBackward, RecurrentForward, as_gates, final_states, gate_major,
                   grad_buffer, onehot, project_step, sigmoid, activate, zero_start)

EPS = 1e-5


def _mean(v):
    """The mean over the last axis, keeping it: (…, H) → (…, 1). A matrix-vector product: faster than
    NumPy's reduction over rows as short as a gate's."""
    H = v.shape[-1]
    return np.matmul(v, np.full(H, 1.0 / H, v.dtype))[..., None]


def layer_norm(v, out=None):
    """LN over the last axis: v (…, H) → (v̂ (…, H), s (…, 1)), s = 1 / sqrt(var(v) + eps).
    ``out`` may be ``v`` itself (normalised in place)."""
    out = np.subtract(v, _mean(v), out=out)
    s = _mean(np.square(out))
    s += EPS
    np.sqrt(s, out=s)
    np.reciprocal(s, out=s)
    out *= s
    return out, s


def layer_norm_backward(dy, y, s, out=None):
    """The gradient reaching v from ``dy`` (…, H), that of y = LN(v) (…, H) with s (…, 1) from
    ``layer_norm``: ``s (dy - mean(dy) - y mean(dy y))``. ``out`` may be ``dy`` itself."""
    m = _mean(dy * y)
    ym = y * m
    out = np.subtract(dy, _mean(dy), out=out)
    out -= ym
    out *= s
    return out


class LNCache(NamedTuple):
    """What the backward pass needs from the forward one (N packed rows, B sequences)."""
    x: np.ndarray        # the input: (N,) ids or (N, D)
    z: np.ndarray        # (4, N, H) the activated gates i, f, o, g
    hs: np.ndarray       # (B + N, H) h: the initial states, then every step's
    cs: np.ndarray       # (B + N, H) c, likewise (un-normalised)
    xn: np.ndarray       # LN(x Wx) per gate: (4, V, H) of Wx's rows for ids, else (4, N, H)
    sx: np.ndarray       # its 1 / sqrt(var + eps): (4, V, 1) or (4, N, 1)
    rn: np.ndarray       # (4, N, H) LN(h_{t-1} Wh) per gate
    sr: np.ndarray       # (4, N, 1)
    cn: np.ndarray       # (N, H) LN(c_t)
    sc: np.ndarray       # (N, 1)
    tc: np.ndarray       # (N, H) tanh(LN(c_t) gc + bc)
    params: dict
    pk: Packing
    zero0: bool          # the initial h is zeros: the first step has no recurrent term (``base.zero_start``)


def _by_gate(a):
    """A fused (4H,) vector as (4, 1, H), to broadcast over gate-major (4, n, H) blocks."""
    return a.reshape(4, 1, -1)


def _ids(x):
    return np.issubdtype(x.dtype, np.integer)


@CELLS.register("lnlstm")
class LNLSTM(Cell):
    gates = 4
    state_size = 2

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As the LSTM's (``Cell.init``, forget bias 1), plus the gains ``gx``, ``gh`` (4H,) and ``gc``
        (H,) set to 1 and the cell's bias ``bc`` (H,) to 0."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["b"][hidden_size: 2 * hidden_size] = 1
        params["gx"] = np.ones(4 * hidden_size, dtype)
        params["gh"] = np.ones(4 * hidden_size, dtype)
        params["gc"] = np.ones(hidden_size, dtype)
        params["bc"] = np.zeros(hidden_size, dtype)
        return params

    def forward_packed(self, x, state0, params, pk):
        """x: (N,) ids or (N, D); state0: (h0, c0), each (B, H); pk: the batch's ``Packing``.

        Returns ((hs (N, H), (h_final, c_final)), cache).
        """
        H = params["Wh"].shape[0]
        Wg = gate_major(params["Wx"], 4)                          # (4, D, H), a copy: normalised in place
        if _ids(x):
            xn, sx = layer_norm(Wg, out=Wg)
            z = np.take(xn, x, axis=1)                            # (4, N, H) LN(x Wx), becomes the gates
            z *= _by_gate(params["gx"])
        else:
            xn, sx = layer_norm(np.matmul(x, Wg))
            z = xn * _by_gate(params["gx"])
        z += _by_gate(params["b"])
        B, N, dt = pk.B, pk.N, z.dtype
        hs, cs = np.empty((B + N, H), dt), np.empty((B + N, H), dt)   # initial states, then steps
        hs[:B], cs[:B] = state0
        cache = LNCache(x, z, hs, cs, xn, sx, np.empty((4, N, H), dt), np.empty((4, N, 1), dt),
                        np.empty((N, H), dt), np.empty((N, 1), dt), np.empty((N, H), dt), params, pk,
                        zero_start(hs, B))
        self._forward_steps(cache)
        return (hs[B:], final_states((hs, cs), pk)), cache

    def _forward_steps(self, cache: LNCache):
        """The recurrence, step by step, filling the cache's arrays (see ``forward_packed``)."""
        z, hs, cs, params, pk = cache.z, cache.hs, cache.cs, cache.params, cache.pk
        rn, sr, cn, sc, tc = cache.rn, cache.sr, cache.cn, cache.sc, cache.tc
        recurrent = RecurrentForward(params["Wh"], 4, pk.B, blocks=True)   # h_{t-1} Wh, (4, n, H)
        gh, gc, bc = _by_gate(params["gh"]), params["gc"], params["bc"]
        i, f, o, g = z
        B, H, dt = pk.B, hs.shape[1], z.dtype
        ig = np.empty((B, H), dt)
        scales, numerators = LSTM.gate_scales(dt)          # one exp for all gates (``activate``)
        p = 0                                    # first row of the previous step's states
        with np.errstate(over="ignore"):
            for s, n in pk.steps:
                zt, r, e = z[:, s:s + n], B + s, s + n
                if s == 0 and cache.zero0:           # LN(h_0 Wh) = LN(0) = 0, with s = 1 / sqrt(eps)
                    rn[:, s:e] = 0
                    sr[:, s:e] = np.reciprocal(np.sqrt(dt.type(EPS)))
                else:
                    rec = recurrent(hs[p:p + n])
                    _, sr[:, s:e] = layer_norm(rec, out=rn[:, s:e])
                    np.multiply(rn[:, s:e], gh, out=rec)
                    zt += rec
                zt *= scales
                activate(zt, numerators, 3)
                c = cs[r:r + n]
                np.multiply(f[s:e], cs[p:p + n], out=c)
                np.multiply(i[s:e], g[s:e], out=ig[:n])
                c += ig[:n]
                _, sc[s:e] = layer_norm(c, out=cn[s:e])
                np.multiply(cn[s:e], gc, out=tc[s:e])
                tc[s:e] += bc
                np.tanh(tc[s:e], out=tc[s:e])
                np.multiply(o[s:e], tc[s:e], out=hs[r:r + n])
                p = r

    def internals_packed(self, cache):
        """The values of a forward pass at every packed row, each (N, H): h, c, the gates i, f, o, g."""
        return {"h": cache.hs[cache.pk.B:], "c": cache.cs[cache.pk.B:], **dict(zip("ifog", cache.z))}

    def backward_packed(self, dhs, cache, dstate=None, out=None, dh_steps=None, state_grad=True):
        """dhs: (N, H); dstate: (dh, dc) of the final state, each (B, H), or None; out: None or a dict
        receiving the gradients; dh_steps: None or (N, H), filled with the whole gradient reaching h_t;
        state_grad: whether to compute the gradient of the initial state (see ``LSTM.backward_packed``).

        Returns (grads {"Wx", "Wh", "b", "gx", "gh", "gc", "bc"}, (dx (N, D) or None, (dh0, dc0) or None)).
        """
        params, dt = cache.params, cache.z.dtype
        dz, A = self._gate_factors(cache)
        dr = self.workspace("dr", (cache.pk.N, 4 * cache.tc.shape[1]), dt)   # gradient reaching h_{t-1} Wh, in rows
        du = self.workspace("du", cache.tc.shape, dt)   # gradient reaching LN(c_t) gc + bc, (N, H)
        dstate0 = self._backward_steps(cache, dhs, dstate, dz, A, dr, du, dh_steps, state_grad)
        first = cache.pk.first_rows(cache.zero0)
        dWh = np.matmul(cache.pk.previous(cache.hs, first).T, dr[first:],
                        out=grad_buffer(out, "Wh", params["Wh"].shape, dt))
        dgh = grad_buffer(out, "gh", params["gh"].shape, dt)
        np.einsum("knh,knh->kh", dz, cache.rn, out=dgh.reshape(4, -1))
        dgc = grad_buffer(out, "gc", params["gc"].shape, dt)
        np.einsum("nh,nh->h", du, cache.cn, out=dgc)
        dbc = np.sum(du, axis=0, out=grad_buffer(out, "bc", params["bc"].shape, dt))
        grads = {"Wh": dWh, "gh": dgh, "gc": dgc, "bc": dbc}
        dx = self._input_grads(cache, dz, out, grads)
        return grads, (dx, dstate0)

    def _gate_factors(self, cache: LNCache):
        """For all rows at once, the factors that do not depend on the incoming gradient:
        ``du_t = dh_t * A_t``, A = o (1 - tanh²) (u = LN(c) gc + bc), and
        d(i, f, o, g) = (dc_t, dc_t, dh_t, dc_t) * Q,  Q = (g i(1-i), c_{t-1} f(1-f), tanh(u) o(1-o), i (1-g²)).
        Q is built in the gradient buffer dz (4, N, H), multiplied in place at each step. Returns (dz, A)."""
        out = factor_workspaces(self, *cache.tc.shape, cache.z.dtype)
        return gate_factors(cache.z, cache.tc, cache.pk.previous(cache.cs), out)

    def _backward_steps(self, cache: LNCache, dhs, dstate, dz, A, dr, du, dh_steps, state_grad):
        """Backpropagation through time: turns the factors in ``dz`` into the gradients of the gates'
        pre-activations, fills ``dr`` and ``du`` (see ``backward_packed``) and returns (dh0, dc0), or None
        without ``state_grad``."""
        z, rn, sr, cn, sc, params, pk = cache.z, cache.rn, cache.sr, cache.cn, cache.sc, cache.params, cache.pk
        B, H, dt = pk.B, cn.shape[1], z.dtype
        f, gh, gc = z[1], _by_gate(params["gh"]), params["gc"]
        # Gradients reaching the state, one row per sequence. A sequence's rows are first written at its
        # last step, so until then they hold the gradient of its final state (see Packing).
        dh = np.zeros((B, H), dt) if dstate is None else np.array(dstate[0], dt)
        dc = np.zeros((B, H), dt) if dstate is None else np.array(dstate[1], dt)
        dh_next, dct = dh.copy(), np.empty((B, H), dt)
        back, dr_gates = RecurrentBackward(params["Wh"], B), as_gates(dr, 4)
        for s, n in reversed(pk.steps):
            dht, dzt, drt, e = dh[:n], dz[:, s:s + n], dr_gates[:, s:s + n], s + n
            dht += dhs[s:e]
            if dh_steps is not None:
                dh_steps[s:e] = dht
            np.multiply(dht, A[s:e], out=du[s:e])
            np.multiply(du[s:e], gc, out=dct[:n])             # gradient reaching LN(c_t) ...
            layer_norm_backward(dct[:n], cn[s:e], sc[s:e], out=dct[:n])   # ... and c_t through it
            dct[:n] += dc[:n]                                  # total gradient reaching c_t
            dzt[:2] *= dct[:n]                                 # i, f
            dzt[2] *= dht                                      # o
            dzt[3] *= dct[:n]                                  # g
            np.multiply(dct[:n], f[s:e], out=dc[:n])           # gradient reaching c_{t-1}
            np.multiply(dzt, gh, out=drt)
            layer_norm_backward(drt, rn[:, s:e], sr[:, s:e], out=drt)
            if s or state_grad:
                back(dr[s:e], dh_next[:n])                     # gradient reaching h_{t-1}
            dh, dh_next = dh_next, dh
        return (dh, dc) if state_grad else None

    @staticmethod
    def _input_grads(cache: LNCache, dz, out, grads):
        """The gradients of the input term LN(x Wx) gx + b from dz (4, N, H): adds "Wx", "b", "gx" to
        ``grads`` and returns dx (N, D), or None for ids (whose gradient is scattered into Wx's rows)."""
        x, xn, sx, params = cache.x, cache.xn, cache.sx, cache.params
        dt = dz.dtype
        db = grads["b"] = grad_buffer(out, "b", params["b"].shape, dt)
        dgx = grads["gx"] = grad_buffer(out, "gx", params["gx"].shape, dt)
        dWx = grads["Wx"] = grad_buffer(out, "Wx", params["Wx"].shape, dt)
        if _ids(x):     # the rows of dz summed into the row of Wx (normalised) each came from: (4, V, H)
            dz = np.matmul(onehot(x, params["Wx"].shape[0], dt).T, dz)
            np.sum(dz, axis=1, out=db.reshape(4, -1))      # (each row of x has one 1)
        else:
            np.matmul(np.ones(len(x), dt), dz, out=db.reshape(4, -1))   # the sum over rows, as a product
        np.einsum("knh,knh->kh", dz, xn, out=dgx.reshape(4, -1))
        dxn = dz * _by_gate(params["gx"])
        if _ids(x):
            layer_norm_backward(dxn, xn, sx, out=as_gates(dWx, 4))
            return None
        layer_norm_backward(dxn, xn, sx, out=dxn)
        np.matmul(x.T, dxn, out=as_gates(dWx, 4))
        return np.matmul(dxn, gate_major(params["Wx"], 4).transpose(0, 2, 1)).sum(axis=0)

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h, c). Returns (h, c)."""
        h, c = state
        B, H = h.shape
        xw, _ = layer_norm(project_step(x_t, params["Wx"]).reshape(B, 4, H))
        hw, _ = layer_norm((h @ params["Wh"]).reshape(B, 4, H))
        z = xw * params["gx"].reshape(4, H) + hw * params["gh"].reshape(4, H) + params["b"].reshape(4, H)
        sigmoid(z[:, :3], out=z[:, :3])
        np.tanh(z[:, 3], out=z[:, 3])
        c = z[:, 1] * c + z[:, 0] * z[:, 3]
        cn, _ = layer_norm(c)
        return z[:, 2] * np.tanh(cn * params["gc"] + params["bc"]), c
