"""The GRU cell (the convention of cuDNN and PyTorch: the reset gate scales ``h Wh_n + bh``).

    r, u = sigmoid(x Wx_r + h Wh_r + b_r,  x Wx_u + h Wh_u + b_u)
    n = tanh(x Wx_n + b_n + r * (h Wh_n + bh))
    h_t = (1 - u) * n + u * h_{t-1}

The forward pass computes z/2 for r and u (the weights' columns scaled by 0.5, once per batch), so that
one ``tanh`` call activates both gates: sigmoid(z) = 0.5 + 0.5 tanh(z / 2).
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, final_states, grad_buffer, half_scale, project_inputs, project_inputs_backward,
                   project_step, sigmoid, tanh_to_sigmoid)


@CELLS.register("gru")
class GRU(Cell):
    gates = 3
    state_size = 1

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As ``Cell.init``, plus the recurrent bias of the candidate, ``bh (H,)``."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["bh"] = np.zeros(hidden_size, dtype)
        return params

    def forward_packed(self, x, state0, params, pk):
        """x: (N,) ids or (N, D); state0: (h0,) with h0 (B, H); pk: the batch's ``Packing``.

        Returns ((hs (N, H), (h_final,)), cache).
        """
        H, bh = params["Wh"].shape[0], params["bh"]
        scale = half_scale(3, 2, H, params["Wh"].dtype)
        Wh = params["Wh"] * scale
        z = project_inputs(x, params["Wx"], params["b"], scale)   # (N, 3H) → r, u, n in place
        B, dt = pk.B, z.dtype
        hs = np.empty((B + pk.N, H), dt)
        hs[:B] = state0[0]
        hn = np.empty((pk.N, H), dt)            # h Wh_n + bh, needed by the backward pass
        hw = np.empty((B, 3 * H), dt)
        rn = np.empty((B, H), dt)
        p = 0
        for o, n in pk.steps:
            zt, h, r = z[o:o + n], hs[p:p + n], B + o
            np.matmul(h, Wh, out=hw[:n])
            ru = zt[:, :2 * H]
            ru += hw[:n, :2 * H]
            np.tanh(ru, out=ru)
            tanh_to_sigmoid(ru)
            np.add(hw[:n, 2 * H:], bh, out=hn[o:o + n])
            cand = zt[:, 2 * H:]
            np.multiply(zt[:, :H], hn[o:o + n], out=rn[:n])
            cand += rn[:n]
            np.tanh(cand, out=cand)
            new = hs[r:r + n]
            np.subtract(h, cand, out=new)  # h_t = n + u * (h - n)
            new *= zt[:, H:2 * H]
            new += cand
            p = r
        cache = (x, z, hs, hn, params, pk)
        return (hs[B:], final_states((hs,), pk)), cache

    def internals_packed(self, cache):
        """The values of a forward pass at every packed row, each (N, H): h and the gates r, u, n."""
        x, z, hs, hn, params, pk = cache
        H = hn.shape[1]
        return {"h": hs[pk.B:], **{k: z[:, j * H:(j + 1) * H] for j, k in enumerate("run")}}

    def backward_packed(self, dhs, cache, dstate=None, out=None, dh_steps=None):
        """dhs: (N, H); dstate: (dh,) of the final state or None; out: None or a dict receiving the
        gradients; dh_steps: None or (N, H), filled with the whole gradient reaching h_t.

        Returns (grads {"Wx", "Wh", "b", "bh"}, (dx (N, D) or None, (dh0,))).
        """
        x, z, hs, hn, params, pk = cache
        WhT = np.ascontiguousarray(params["Wh"].T)   # a copy: BLAS multiplies by it faster than by a view
        B, (N, H3) = pk.B, z.shape
        H = H3 // 3
        dt = z.dtype
        r, u, n_ = z[:, :H], z[:, H:2 * H], z[:, 2 * H:]
        hprev = pk.previous(hs)
        # For all rows at once, the factors that do not depend on the incoming gradient:
        #   dn = dh (1-u)(1-n²),  du = dh (h_{t-1} - n) u (1-u),  dr = dn hn r (1-r)
        # built in the gradient buffer dxp and multiplied in place at each step.
        dxp = self.workspace("dxp", z.shape, dt)   # gradients of the input-side pre-activations
        dhw = self.workspace("dhw", z.shape, dt)   # gradients of h Wh (+ bh)
        fr, fu, fn = dxp[:, :H], dxp[:, H:2 * H], dxp[:, 2 * H:]
        np.subtract(1, r, out=fr)
        fr *= r
        fr *= hn
        np.subtract(1, u, out=fu)
        fu *= u
        fu *= hprev - n_
        np.multiply(n_, n_, out=fn)
        np.subtract(1, fn, out=fn)
        fn *= 1 - u
        # Gradients reaching the state, one row per sequence (see LSTM.backward_packed).
        dh = np.zeros((B, H), dt) if dstate is None else np.array(dstate[0], dt)
        dh_next = dh.copy()
        direct = np.empty((B, H), dt)
        for o, n in reversed(pk.steps):
            dht, d, dw = dh[:n], dxp[o:o + n], dhw[o:o + n]
            dht += dhs[o:o + n]
            if dh_steps is not None:
                dh_steps[o:o + n] = dht
            gates3 = d.reshape(n, 3, H)                   # a view of the contiguous (n, 3H) rows
            gates3[:, 1:] *= dht[:, None]                 # du, dn
            gates3[:, 0] *= gates3[:, 2]                  # dr = dn * hn r (1 - r)
            dw[:, :2 * H] = d[:, :2 * H]
            np.multiply(d[:, 2 * H:], r[o:o + n], out=dw[:, 2 * H:])
            np.multiply(dht, u[o:o + n], out=direct[:n])
            np.matmul(dw, WhT, out=dh_next[:n])
            dh_next[:n] += direct[:n]
            dh, dh_next = dh_next, dh
        dWh = grad_buffer(out, "Wh", params["Wh"].shape, dt)
        np.matmul(hprev.T, dhw, out=dWh)
        dbh = np.sum(dhw[:, 2 * H:], axis=0, out=None if out is None else out["bh"])
        dWx, db, dx = project_inputs_backward(x, dxp, params["Wx"], out)
        return {"Wx": dWx, "Wh": dWh, "b": db, "bh": dbh}, (dx, (dh,))

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
