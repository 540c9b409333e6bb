"""The basic (Elman) RNN cell: ``h_t = tanh(x_t Wx + h_{t-1} Wh + b)``."""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import Cell, check_mask, project_inputs, project_inputs_backward, project_step


@CELLS.register("rnn")
class RNN(Cell):
    gates = 1
    state_size = 1

    def forward(self, x, state0, params, mask=None):
        """x: (T, B) ids or (T, B, D); state0: (h0,) with h0 (B, H); mask: (T, B) or None.

        Returns ((hs (T, B, H), (h_T,)), cache).
        """
        Wh = params["Wh"]
        xp = project_inputs(x, params["Wx"], params["b"])  # becomes tanh(z) in place
        T, B, H = xp.shape
        m = check_mask(mask, T, B, xp.dtype)
        hs = np.empty((T + 1, B, H), xp.dtype)
        hs[0] = state0[0]
        for t in range(T):
            a = xp[t]
            a += hs[t] @ Wh
            np.tanh(a, out=a)
            if m is None:
                hs[t + 1] = a
            else:
                np.subtract(a, hs[t], out=hs[t + 1])
                hs[t + 1] *= m[t]
                hs[t + 1] += hs[t]
        cache = (x, xp, hs, m, params)
        return (hs[1:], (hs[T],)), cache

    def backward(self, dhs, cache, dstate=None):
        """dhs: (T, B, H) gradients of the outputs; dstate: (dh_T,) or None.

        Returns (grads {"Wx", "Wh", "b"}, (dx or None, (dh0,))).
        """
        x, a, hs, m, params = cache
        Wh = params["Wh"]
        T, B, H = a.shape
        dz = self.workspace("dz", a.shape, a.dtype)
        dh = np.zeros((B, H), a.dtype) if dstate is None else dstate[0].astype(a.dtype, copy=True)
        for t in reversed(range(T)):
            dh += dhs[t]
            d = dz[t]
            if m is None:
                np.multiply(dh, 1 - a[t] * a[t], out=d)
                dh = d @ Wh.T
            else:
                np.multiply(dh, m[t], out=d)
                d *= 1 - a[t] * a[t]
                dh *= 1 - m[t]
                dh += d @ Wh.T
        dWh = hs[:-1].reshape(T * B, H).T @ dz.reshape(T * B, H)
        dWx, db, dx = project_inputs_backward(x, dz, params["Wx"])
        return {"Wx": dWx, "Wh": dWh, "b": db}, (dx, (dh,))

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h,). Returns the new state (h,)."""
        xp = project_step(x_t, params["Wx"])
        return (np.tanh(xp + state[0] @ params["Wh"] + params["b"]),)
