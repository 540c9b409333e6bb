"""The LSTM cell, gates fused in the order input, forget, output, cell candidate (i, f, o, g).

    z = x_t Wx + h_{t-1} Wh + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;     h_t = o * tanh(c_t)

One ``exp`` call activates all four gates (``base.activate``): the forward pass scales the pre-activations
of i, f, o by -1 and of g by -2, so that sigmoid(z) = 1 / (1 + exp(-z)) and tanh(z) = 2 / (1 + exp(-2z)) - 1.
(NumPy's ``exp`` costs about half its ``tanh`` on AVX2 machines.) Gates are kept gate-major, (4, N, H) (see
``base``).
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, as_gates, final_states, grad_buffer, project_inputs, project_inputs_backward,
                   project_step, RecurrentBackward, RecurrentForward, activate, sigmoid, states, zero_start)


@CELLS.register("lstm")
class LSTM(Cell):
    gates = 4
    state_size = 2
    splits_units = True
    STEP_FACTORS_MIN = 16384     # rows × units of a batch's average step from which the backward's
                                 # factors are computed step by step (measured: experiments/benchmarks/README.md)
    FOLD_MAX_H = 256             # units up to which the gates' scaling is done once per batch, on the inputs'
                                 # part and on a copy of Wh, instead of once per step (A/B at 64 to 256 units:
                                 # ibid., session 14); wider, the copy of Wh (4H² values, 1 M at 512) outweighs
                                 # the per-step calls it saves
    SCALES = (-1, -1, -1, -2)    # of the gates' pre-activations, for ``activate`` (exact: powers of two)

    @classmethod
    def gate_scales(cls, dtype):
        """(scales, numerators), each (4, 1, 1) of ``dtype``: the factors of the gates' pre-activations and
        ``activate``'s numerators (their negatives) — for this cell and the layer-normalised LSTM."""
        scales = np.array(cls.SCALES, dtype).reshape(4, 1, 1)
        return scales, -scales

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As ``Cell.init``, with the forget-gate bias set to 1 (a common, helpful default)."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["b"][hidden_size: 2 * hidden_size] = 1
        return params

    def forward_packed(self, x, state0, params, pk, share=None):
        """x: (N,) ids or (N, D); state0: (h0, c0), each (B, H); pk: the batch's ``Packing``; share: None,
        or this process's ``split.Share`` when the hidden units are split between processes (the params
        are then its units' columns, and state0 is already in the shared states).

        Returns ((hs (N, H), (h_final, c_final)), cache).
        """
        z = project_inputs(x, params["Wx"], params["b"], 4)             # (4, N, H), activated in place
        i, f, o, g = z
        B, dt, H = pk.B, z.dtype, z.shape[2]
        hs, cs, own = share.states(B + pk.N, 2) if share else states(state0, B + pk.N, H, dt)
        zero0 = zero_start(hs, B)                # then the first step has no recurrent term
        tanh_c = np.empty((pk.N, H), dt)
        scales, numerators = self.gate_scales(dt)
        Wh, folded = params["Wh"], len(params["Wh"]) <= self.FOLD_MAX_H
        if folded:                   # the scaling once: on the inputs' part and a copy of Wh
            z *= scales
            Wh = Wh * np.repeat(scales.ravel(), H)
        recurrent = share.recurrent(Wh, 4, pk) if share else RecurrentForward(Wh, 4, B)   # h_{t-1} Wh, (4, n, H)
        ig = np.empty((B, H), dt)
        p = 0                                    # first row of the previous step's states
        with np.errstate(over="ignore"):         # for ``activate``
            for s, n in pk.steps:
                zt, r, e = z[:, s:s + n], B + s, s + n
                if s or not zero0:
                    zt += recurrent(hs[p:p + n])
                if not folded:
                    zt *= scales
                activate(zt, numerators, 3)
                c = cs[r:r + n, own]
                np.multiply(f[s:e], cs[p:p + n, own], out=c)
                np.multiply(i[s:e], g[s:e], out=ig[:n])
                c += ig[:n]
                np.tanh(c, out=tanh_c[s:e])
                np.multiply(o[s:e], tanh_c[s:e], out=hs[r:r + n, own])
                if share:
                    recurrent.written(hs[r:r + n])   # for the other process's next step
                p = r
        cache = (x, z, hs, cs, tanh_c, params, pk, own, share, zero0)
        return (hs[B:], final_states((hs, cs), pk)), cache

    def internals_packed(self, cache):
        """The values of a forward pass at every packed row, each (N, H): h, c, the gates i, f, o, g."""
        x, z, hs, cs, tanh_c, params, pk, own, share, zero0 = cache
        return {"h": hs[pk.B:], "c": cs[pk.B:], **dict(zip("ifog", z))}

    def backward_packed(self, dhs, cache, dstate=None, out=None, dh_steps=None, state_grad=True):
        """dhs: (N, H); dstate: (dh, dc) of the final state, each (B, H), or None; out: None or a dict
        receiving the gradients; dh_steps: None or (N, H), filled with the whole gradient reaching h_t;
        state_grad: whether to compute the gradient of the initial state (the first step's product with
        Whᵀ), which training without carried state discards.

        Returns (grads {"Wx", "Wh", "b"}, (dx (N, D) or None, (dh0, dc0) or None)).
        """
        x, z, hs, cs, tanh_c, params, pk, own, share, zero0 = cache
        B, dt = pk.B, z.dtype
        H = tanh_c.shape[1]
        i, f, o, g = z
        dz = self.workspace("dz", (pk.N, 4 * H), dt)  # the gates' gradients, in rows: the layout of Wh's columns
        dz_gates = as_gates(dz, 4)                          # the same, viewed (4, N, H)
        # The factors of the gradients that do not depend on the incoming gradient: over wide steps, computed
        # a step at a time while its rows are in the cache (over a whole batch they spill it); over narrow
        # ones, for the whole batch at once (a call per step would cost more than it saves).
        per_step = pk.N * H >= self.STEP_FACTORS_MIN * len(pk.steps)
        if per_step:
            Qs, As = factor_workspaces(self, B, H, dt)
        else:
            Qs, As = gate_factors(z, tanh_c, pk.previous(cs[:, own]), factor_workspaces(self, pk.N, H, dt))
        # Gradients reaching the state, one row per sequence. A sequence's rows are first written at its
        # last step, so until then they hold the gradient of its final state (see Packing).
        dh = np.zeros((B, H), dt) if dstate is None else np.array(dstate[0], dt)
        dc = np.zeros((B, H), dt) if dstate is None else np.array(dstate[1], dt)
        dh_next = dh.copy()
        dct = np.empty((B, H), dt)
        back = share.exchanging(params["Wh"]) if share else RecurrentBackward(params["Wh"], B)
        for s, n in reversed(pk.steps):
            dht, e = dh[:n], s + n
            if per_step:                                       # the step's previous states: rows p … p + n
                p = pk.prev[s]
                Q, A = gate_factors(z[:, s:e], tanh_c[s:e], cs[p:p + n, own], (Qs[:, :n], As[:n]))
            else:
                Q, A = Qs[:, s:e], As[s:e]
            dzt = dz_gates[:, s:e]                             # (4, n, H) view
            dht += dhs[s:e]
            if dh_steps is not None:
                dh_steps[s:e] = dht
            np.multiply(dht, A, out=dct[:n])
            dct[:n] += dc[:n]                                  # total gradient reaching c_t
            np.multiply(Q[:2], dct[:n], out=dzt[:2])           # i, f
            np.multiply(Q[2], dht, out=dzt[2])                 # o
            np.multiply(Q[3], dct[:n], out=dzt[3])             # g
            if s or state_grad:
                np.multiply(dct[:n], f[s:e], out=dc[:n])       # gradient reaching c_{t-1}
                back(dz[s:e], dh_next[:n])                     # gradient reaching h_{t-1}
            dh, dh_next = dh_next, dh
        first = pk.first_rows(zero0)
        dWh = np.matmul(pk.previous(hs, first).T, dz[first:], out=grad_buffer(out, "Wh", params["Wh"].shape, dt))
        dWx, db, dx = project_inputs_backward(x, dz, params["Wx"], out)
        return {"Wx": dWx, "Wh": dWh, "b": db}, (dx, (dh, dc) if state_grad else None)

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h, c). Returns (h, c)."""
        h, c = state
        xp = project_step(x_t, params["Wx"])
        z = xp + h @ params["Wh"] + params["b"]
        H = h.shape[1]
        sigmoid(z[:, :3 * H], out=z[:, :3 * H])
        np.tanh(z[:, 3 * H:], out=z[:, 3 * H:])
        c = z[:, H:2 * H] * c + z[:, :H] * z[:, 3 * H:]
        return z[:, 2 * H:3 * H] * np.tanh(c), c


def factor_workspaces(cell: Cell, rows: int, H: int, dtype):
    """The buffers ``gate_factors`` writes for ``rows`` rows: workspaces Q (4, rows, H) and A (rows, H) of ``cell``."""
    return cell.workspace("Q", (4, rows, H), dtype), cell.workspace("A", (rows, H), dtype)


def gate_factors(z, tanh_c, c_prev, out):
    """The factors of an LSTM's backward pass that do not depend on the incoming gradient, for some rows,
    from their activated gates z (4, N, H), the tanh of their cell output (N, H) and c_{t-1} (N, H):

        dc_t += dh_t * A_t,  A = o (1 - tanh²)
        d(i, f, o, g) = (dc_t, dc_t, dh_t, dc_t) * Q,  Q = (g i(1-i), c_{t-1} f(1-f), tanh o(1-o), i (1-g²))

    out: (Q (4, N, H), A (N, H)), written. Returns (Q, A)."""
    i, f, o, g = z
    Q, A = out
    np.multiply(tanh_c, tanh_c, out=A)
    np.subtract(1, A, out=A)
    A *= o
    np.subtract(1, z[:3], out=Q[:3])
    Q[:3] *= z[:3]                                 # s (1 - s) of i, f, o
    Q[0] *= g
    Q[1] *= c_prev
    Q[2] *= tanh_c
    np.multiply(g, g, out=Q[3])
    np.subtract(1, Q[3], out=Q[3])
    Q[3] *= i
    return Q, A
