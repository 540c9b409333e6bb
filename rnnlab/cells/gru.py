"""The GRU cell (the convention of cuDNN and PyTorch: the reset gate scales ``h Wh_n + bh``).

    r, u = sigmoid(x Wx_r + h Wh_r + b_r,  x Wx_u + h Wh_u + b_u)
    n = tanh(x Wx_n + b_n + r * (h Wh_n + bh))
    h_t = (1 - u) * n + u * h_{t-1}
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, Padding, add_rows, end_gradients, project_inputs, project_inputs_backward,
                   project_step, sigmoid)


@CELLS.register("gru")
class GRU(Cell):
    gates = 3
    state_size = 1

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As ``Cell.init``, plus the recurrent bias of the candidate, ``bh (H,)``."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["bh"] = np.zeros(hidden_size, dtype)
        return params

    def forward(self, x, state0, params, mask=None):
        """x: (T, B) ids or (T, B, D); state0: (h0,) with h0 (B, H); mask: (T, B) or None.

        Returns ((hs (T, B, H), (h_T,)), cache).
        """
        Wh, bh = params["Wh"], params["bh"]
        gates = project_inputs(x, params["Wx"], params["b"])  # (T, B, 3H) → r, u, n in place
        T, B, H3 = gates.shape
        H = H3 // 3
        pad = Padding.of(mask, T, B, gates.dtype)
        hs = np.empty((T + 1, B, H), gates.dtype)
        hn = np.empty((T, B, H), gates.dtype)  # h Wh_n + bh, needed by the backward pass
        hw = np.empty((B, H3), gates.dtype)
        rn = np.empty((B, H), gates.dtype)
        hs[0] = state0[0]
        for t in range(T):
            z, h = gates[t], hs[t]
            np.matmul(h, Wh, out=hw)
            z[:, :2 * H] += hw[:, :2 * H]
            sigmoid(z[:, :2 * H], out=z[:, :2 * H])
            np.add(hw[:, 2 * H:], bh, out=hn[t])
            r, u, n = z[:, :H], z[:, H:2 * H], z[:, 2 * H:]
            np.multiply(r, hn[t], out=rn)
            n += rn
            np.tanh(n, out=n)
            new = hs[t + 1]
            np.subtract(h, n, out=new)  # h_t = n + u * (h - n)
            new *= u
            new += n
        cache = (x, gates, hs, hn, pad, params)
        if pad is None:
            return (hs[1:], (hs[T],)), cache
        return (pad.outputs(hs), (pad.final(hs),)), cache

    def internals(self, cache):
        """The values of a forward pass at every step, each (T, B, H): h and the gates r, u, n."""
        x, gates, hs, hn, pad, params = cache
        H = hs.shape[2]
        return {"h": hs[1:], **{k: gates[..., j * H:(j + 1) * H] for j, k in enumerate("run")}}

    def backward(self, dhs, cache, dstate=None, dh_steps=None):
        """dhs: (T, B, H); dstate: (dh_T,) or None; dh_steps: None, or a (T, B, H) array filled with
        the whole gradient reaching each step's output h_t (from the loss and from later steps).

        Returns (grads {"Wx", "Wh", "b", "bh"}, (dx or None, (dh0,))).
        """
        x, gates, hs, hn, pad, params = cache
        WhT = params["Wh"].T
        T, B, H3 = gates.shape
        H = H3 // 3
        dt = gates.dtype
        dhs, ends, start = end_gradients(pad, dhs, dstate, 1, T)
        r, u, n = gates[..., :H], gates[..., H:2 * H], gates[..., 2 * H:]
        # For all steps at once, the factors that do not depend on the incoming gradient:
        #   dn = dh (1-u)(1-n²),  du = dh (h_{t-1} - n) u (1-u),  dr = dn hn r (1-r)
        # built in the gradient buffer dxp and multiplied in place at each step.
        dxp = self.workspace("dxp", gates.shape, dt)   # gradients of the input-side pre-activations
        dhw = self.workspace("dhw", gates.shape, dt)   # gradients of h Wh (+ bh)
        fr, fu, fn = dxp[..., :H], dxp[..., H:2 * H], dxp[..., 2 * H:]
        np.subtract(1, r, out=fr)
        fr *= r
        fr *= hn
        np.subtract(1, u, out=fu)
        fu *= u
        np.multiply(n, n, out=fn)
        np.subtract(1, fn, out=fn)
        fn *= 1 - u
        tmp = hs[:-1] - n
        fu *= tmp
        dh = np.zeros((B, H), dt)
        direct = np.empty((B, H), dt)
        for t in reversed(range(T)):
            dh += dhs[t]
            add_rows((dh,), ends.get(t))
            if dh_steps is not None:
                dh_steps[t] = dh
            d, dw = dxp[t], dhw[t]
            gates3 = d.reshape(B, 3, H)                   # a view of the contiguous (B, 3H) row
            gates3[:, 1:] *= dh[:, None]                  # du, dn
            gates3[:, 0] *= gates3[:, 2]                  # dr = dn * hn r (1 - r)
            dw[:, :2 * H] = d[:, :2 * H]
            np.multiply(d[:, 2 * H:], r[t], out=dw[:, 2 * H:])
            np.multiply(dh, u[t], out=direct)
            np.matmul(dw, WhT, out=dh)
            dh += direct
        add_rows((dh,), start)
        flat_w = dhw.reshape(T * B, H3)
        dWh = hs[:-1].reshape(T * B, H).T @ flat_w
        dbh = flat_w[:, 2 * H:].sum(axis=0)
        dWx, db, dx = project_inputs_backward(x, dxp, params["Wx"])
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
