"""The GRU cell (the convention of cuDNN and PyTorch: the reset gate scales ``h Wh_n + bh``).

    r, u = sigmoid(x Wx_r + h Wh_r + b_r,  x Wx_u + h Wh_u + b_u)
    n = tanh(x Wx_n + b_n + r * (h Wh_n + bh))
    h_t = (1 - u) * n + u * h_{t-1}

The forward pass negates the pre-activations of r and u so that one ``exp`` call activates both gates:
sigmoid(z) = 1 / (1 + exp(-z)) (``base.activate``). Gates are kept gate-major, (3, N, H) (see ``base``).
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, as_gates, final_states, grad_buffer, project_inputs, project_inputs_backward,
                   project_step, RecurrentBackward, RecurrentForward, activate, sigmoid, states, zero_start)


@CELLS.register("gru")
class GRU(Cell):
    gates = 3
    state_size = 1
    splits_units = True

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As ``Cell.init``, plus the recurrent bias of the candidate, ``bh (H,)``."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["bh"] = np.zeros(hidden_size, dtype)
        return params

    def forward_packed(self, x, state0, params, pk, share=None):
        """x: (N,) ids or (N, D); state0: (h0,) with h0 (B, H); pk: the batch's ``Packing``; share: None,
        or this process's ``split.Share`` (see ``LSTM.forward_packed``).

        Returns ((hs (N, H), (h_final,)), cache).
        """
        bh = params["bh"]
        z = project_inputs(x, params["Wx"], params["b"], 3)             # (3, N, H) → r, u, n in place
        r_, u, cand = z
        B, dt, H = pk.B, z.dtype, z.shape[2]
        hs, own = share.states(B + pk.N, 1) if share else states(state0, B + pk.N, H, dt)
        zero0 = zero_start(hs, B)                # then the first step has no recurrent term: h_0 Wh = 0
        hn = np.empty((pk.N, H), dt)            # h Wh_n + bh, needed by the backward pass
        recurrent = (share.recurrent(params["Wh"], 3, pk) if share           # h_{t-1} Wh, (3, n, H)
                     else RecurrentForward(params["Wh"], 3, B))
        rn = np.empty((B, H), dt)
        ones = np.ones((2, 1, 1), dt)
        z[:2] *= -1                              # the gates' pre-activations negated, for ``activate``
        p = 0
        with np.errstate(over="ignore"):
            for s, n in pk.steps:
                h, r, e = hs[p:p + n, own], B + s, s + n
                hw = np.zeros((3, n, H), dt) if s == 0 and zero0 else recurrent(hs[p:p + n])
                ru = z[:2, s:e]
                np.subtract(ru, hw[:2], out=ru)  # -(x Wx + b + h Wh) for r and u
                activate(ru, ones, 2)            # one exp for both gates
                np.add(hw[2], bh, out=hn[s:e])
                np.multiply(r_[s:e], hn[s:e], out=rn[:n])
                c = cand[s:e]
                c += rn[:n]
                np.tanh(c, out=c)
                new = hs[r:r + n, own]
                np.subtract(h, c, out=new)  # h_t = n + u * (h - n)
                new *= u[s:e]
                new += c
                if share:
                    recurrent.written(hs[r:r + n])   # for the other process's next step
                p = r
        cache = (x, z, hs, hn, params, pk, own, share, zero0)
        return (hs[B:], final_states((hs,), pk)), cache

    def internals_packed(self, cache):
        """The values of a forward pass at every packed row, each (N, H): h and the gates r, u, n."""
        x, z, hs, hn, params, pk, own, share, zero0 = cache
        return {"h": hs[pk.B:], **dict(zip("run", z))}

    def backward_packed(self, dhs, cache, dstate=None, out=None, dh_steps=None, state_grad=True):
        """dhs: (N, H); dstate: (dh,) of the final state or None; out: None or a dict receiving the
        gradients; dh_steps: None or (N, H), filled with the whole gradient reaching h_t; state_grad:
        whether to compute the gradient of the initial state (see ``LSTM.backward_packed``).

        Returns (grads {"Wx", "Wh", "b", "bh"}, (dx (N, D) or None, (dh0,) or None)).
        """
        x, z, hs, hn, params, pk, own, share, zero0 = cache
        B, dt = pk.B, z.dtype
        H = hn.shape[1]
        r, u, n_ = z
        hprev = pk.previous(hs)                           # all units: dWh's product needs them
        # For all rows at once, the factors that do not depend on the incoming gradient:
        #   dn = dh (1-u)(1-n²),  du = dh (h_{t-1} - n) u (1-u),  dr = dn hn r (1-r)
        # built in the gradient buffer dxp (3, N, H) of the input-side pre-activations and multiplied in
        # place at each step, and dhw (N, 3H), that of h Wh (+ bh), in rows.
        dxp = self.workspace("dxp", z.shape, dt)
        fr, fu, fn = dxp
        np.subtract(1, r, out=fr)
        fr *= r
        fr *= hn
        tmp = self.workspace("tmp", n_.shape, dt)
        np.subtract(1, u, out=fu)
        fu *= u
        fu *= np.subtract(hprev[:, own], n_, out=tmp)
        np.multiply(n_, n_, out=fn)
        np.subtract(1, fn, out=fn)
        fn *= np.subtract(1, u, out=tmp)
        dhw = self.workspace("dhw", (pk.N, 3 * H), dt)   # in rows: the layout of Wh's columns
        dhw_gates = as_gates(dhw, 3)                       # the same, viewed (3, N, H)
        # Gradients reaching the state, one row per sequence (see LSTM.backward_packed).
        dh = np.zeros((B, H), dt) if dstate is None else np.array(dstate[0], dt)
        dh_next = dh.copy()
        back = share.exchanging(params["Wh"]) if share else RecurrentBackward(params["Wh"], B)
        direct = np.empty((B, H), dt)
        for s, n in reversed(pk.steps):
            dht, d, dw, e = dh[:n], dxp[:, s:s + n], dhw_gates[:, s:s + n], s + n
            dht += dhs[s:e]
            if dh_steps is not None:
                dh_steps[s:e] = dht
            d[1:] *= dht                                  # du, dn
            d[0] *= d[2]                                  # dr = dn * hn r (1 - r)
            dw[:2] = d[:2]
            np.multiply(d[2], r[s:e], out=dw[2])
            if s or state_grad:
                back(dhw[s:e], dh_next[:n])
                np.multiply(dht, u[s:e], out=direct[:n])  # + the direct path u * dh
                dh_next[:n] += direct[:n]
            dh, dh_next = dh_next, dh
        dbh = np.matmul(np.ones(pk.N, dt), dhw[:, 2 * H:], out=grad_buffer(out, "bh", (H,), dt))  # a column sum
        first = pk.first_rows(zero0)
        dWh = np.matmul(hprev[first:].T, dhw[first:], out=grad_buffer(out, "Wh", params["Wh"].shape, dt))
        dWx, db, dx = project_inputs_backward(x, dxp, params["Wx"], out)
        return {"Wx": dWx, "Wh": dWh, "b": db, "bh": dbh}, (dx, (dh,) if state_grad else None)

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h,). Returns (h,)."""
        h = state[0]
        H = h.shape[1]
        xp = project_step(x_t, params["Wx"])
        xp = xp + params["b"]
        hw = h @ params["Wh"]
        ru = sigmoid(xp[:, :2 * H] + hw[:, :2 * H])
        r, u = ru[:, :H], ru[:, H:]
        n = np.tanh(xp[:, 2 * H:] + r * (hw[:, 2 * H:] + params["bh"]))
        return (n + u * (h - n),)
