"""The basic (Elman) RNN cell: ``h_t = tanh(x_t Wx + h_{t-1} Wh + b)``."""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, Padding, add_rows, end_gradients, project_inputs, project_inputs_backward,
                   project_step)


@CELLS.register("rnn")
class RNN(Cell):
    gates = 1
    state_size = 1

    def forward(self, x, state0, params, mask=None):
        """x: (T, B) ids or (T, B, D); state0: (h0,) with h0 (B, H); mask: (T, B) or None.

        Returns ((hs (T, B, H), (h_T,)), cache).
        """
        Wh = params["Wh"]
        xp = project_inputs(x, params["Wx"], params["b"])
        T, B, H = xp.shape
        pad = Padding.of(mask, T, B, xp.dtype)
        hs = np.empty((T + 1, B, H), xp.dtype)
        hs[0] = state0[0]
        for t in range(T):
            h = hs[t + 1]
            np.matmul(hs[t], Wh, out=h)
            h += xp[t]
            np.tanh(h, out=h)
        cache = (x, hs, pad, params)
        if pad is None:
            return (hs[1:], (hs[T],)), cache
        return (pad.outputs(hs), (pad.final(hs),)), cache

    def internals(self, cache):
        """The values of a forward pass at every step: {"h": (T, B, H)}."""
        return {"h": cache[1][1:]}

    def backward(self, dhs, cache, dstate=None, dh_steps=None):
        """dhs: (T, B, H) gradients of the outputs; dstate: (dh_T,) or None; dh_steps: None, or a
        (T, B, H) array filled with the whole gradient reaching each step's output h_t.

        Returns (grads {"Wx", "Wh", "b"}, (dx or None, (dh0,))).
        """
        x, hs, pad, params = cache
        WhT = params["Wh"].T
        T = hs.shape[0] - 1
        B, H = hs.shape[1:]
        dhs, ends, start = end_gradients(pad, dhs, dstate, 1, T)
        dz = self.workspace("dz", (T, B, H), hs.dtype)
        np.multiply(hs[1:], hs[1:], out=dz)     # tanh' = 1 - h², for all steps at once
        np.subtract(1, dz, out=dz)
        dh = np.zeros((B, H), hs.dtype)
        for t in reversed(range(T)):
            dh += dhs[t]
            add_rows((dh,), ends.get(t))
            if dh_steps is not None:
                dh_steps[t] = dh
            d = dz[t]
            d *= dh
            np.matmul(d, WhT, out=dh)
        add_rows((dh,), start)
        dWh = hs[:-1].reshape(T * B, H).T @ dz.reshape(T * B, H)
        dWx, db, dx = project_inputs_backward(x, dz, params["Wx"])
        return {"Wx": dWx, "Wh": dWh, "b": db}, (dx, (dh,))

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h,). Returns the new state (h,)."""
        xp = project_step(x_t, params["Wx"])
        return (np.tanh(xp + state[0] @ params["Wh"] + params["b"]),)
