"""The LSTM cell, gates fused in the order input, forget, output, cell candidate (i, f, o, g), so that
one sigmoid covers the first three blocks.

    z = x_t Wx + h_{t-1} Wh + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;     h_t = o * tanh(c_t)
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, Padding, add_rows, end_gradients, project_inputs, project_inputs_backward,
                   project_step, sigmoid)


def _activate(z, H):
    """In place: sigmoid on the i, f, o blocks of z (B, 4H), tanh on the g block."""
    sigmoid(z[:, :3 * H], out=z[:, :3 * H])
    np.tanh(z[:, 3 * H:], out=z[:, 3 * H:])


@CELLS.register("lstm")
class LSTM(Cell):
    gates = 4
    state_size = 2

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As ``Cell.init``, with the forget-gate bias set to 1 (a common, helpful default)."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["b"][hidden_size: 2 * hidden_size] = 1
        return params

    def forward(self, x, state0, params, mask=None):
        """x: (T, B) ids or (T, B, D); state0: (h0, c0), each (B, H); mask: (T, B) or None.

        Returns ((hs (T, B, H), (h_T, c_T)), cache).
        """
        Wh = params["Wh"]
        gates = project_inputs(x, params["Wx"], params["b"])  # (T, B, 4H), activated in place
        T, B, H4 = gates.shape
        H = H4 // 4
        pad = Padding.of(mask, T, B, gates.dtype)
        hs = np.empty((T + 1, B, H), gates.dtype)
        cs = np.empty((T + 1, B, H), gates.dtype)
        tanh_c = np.empty((T, B, H), gates.dtype)
        rec = np.empty((B, H4), gates.dtype)   # h_{t-1} Wh, reused every step
        ig = np.empty((B, H), gates.dtype)
        hs[0], cs[0] = state0
        for t in range(T):
            z = gates[t]
            np.matmul(hs[t], Wh, out=rec)
            z += rec
            _activate(z, H)
            i, f, o, g = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c = cs[t + 1]
            np.multiply(f, cs[t], out=c)
            np.multiply(i, g, out=ig)
            c += ig
            np.tanh(c, out=tanh_c[t])
            np.multiply(o, tanh_c[t], out=hs[t + 1])
        cache = (x, gates, hs, cs, tanh_c, pad, params)
        if pad is None:
            return (hs[1:], (hs[T], cs[T])), cache
        return (pad.outputs(hs), (pad.final(hs), pad.final(cs))), cache

    def internals(self, cache):
        """The values of a forward pass at every step, each (T, B, H): h, c and the gates i, f, o, g."""
        x, gates, hs, cs, tanh_c, pad, params = cache
        H = hs.shape[2]
        return {"h": hs[1:], "c": cs[1:], **{k: gates[..., j * H:(j + 1) * H] for j, k in enumerate("ifog")}}

    def backward(self, dhs, cache, dstate=None, dh_steps=None):
        """dhs: (T, B, H); dstate: (dh_T, dc_T) or None; dh_steps: None, or a (T, B, H) array filled
        with the whole gradient reaching each step's output h_t (from the loss and from later steps).

        Returns (grads {"Wx", "Wh", "b"}, (dx or None, (dh0, dc0))).
        """
        x, gates, hs, cs, tanh_c, pad, params = cache
        WhT = params["Wh"].T   # a transposed view: BLAS reads it as is
        T, B, H4 = gates.shape
        H = H4 // 4
        dt = gates.dtype
        dhs, ends, start = end_gradients(pad, dhs, dstate, 2, T)
        i, f, o, g = (gates[..., k * H:(k + 1) * H] for k in range(4))
        # For all steps at once, the factors that do not depend on the incoming gradient:
        #   dc_t += dh_t * A_t,  A = o (1 - tanh²c)
        #   d(i, f, o, g) = (dc_t, dc_t, dh_t, dc_t) * Q,  Q = (g i(1-i), c_{t-1} f(1-f), tanh c o(1-o), i (1-g²))
        # Q is built in the gradient buffer dz and multiplied in place at each step.
        A = self.workspace("A", tanh_c.shape, dt)
        np.multiply(tanh_c, tanh_c, out=A)
        np.subtract(1, A, out=A)
        A *= o
        dz = self.workspace("dz", gates.shape, dt)
        sig = dz[..., :3 * H]
        np.subtract(1, gates[..., :3 * H], out=sig)
        sig *= gates[..., :3 * H]                      # s (1 - s) of i, f, o
        dz[..., :H] *= g
        dz[..., H:2 * H] *= cs[:-1]
        dz[..., 2 * H:3 * H] *= tanh_c
        dg = dz[..., 3 * H:]
        np.multiply(g, g, out=dg)
        np.subtract(1, dg, out=dg)
        dg *= i
        dh, dc = np.zeros((B, H), dt), np.zeros((B, H), dt)
        dct = np.empty((B, H), dt)
        dh_rec = np.empty((B, H), dt)
        for t in reversed(range(T)):
            dh += dhs[t]
            add_rows((dh, dc), ends.get(t))
            if dh_steps is not None:
                dh_steps[t] = dh
            np.multiply(dh, A[t], out=dct)
            dct += dc                                          # total gradient reaching c_t
            d = dz[t]
            gates4 = d.reshape(B, 4, H)                        # a view of the contiguous (B, 4H) row
            gates4[:, :2] *= dct[:, None]                      # i, f
            gates4[:, 2] *= dh                                 # o
            gates4[:, 3] *= dct                                # g
            np.multiply(dct, f[t], out=dc)                     # gradient reaching c_{t-1}
            np.matmul(d, WhT, out=dh_rec)
            dh, dh_rec = dh_rec, dh
        add_rows((dh, dc), start)
        dWh = hs[:-1].reshape(T * B, H).T @ dz.reshape(T * B, H4)
        dWx, db, dx = project_inputs_backward(x, dz, params["Wx"])
        return {"Wx": dWx, "Wh": dWh, "b": db}, (dx, (dh, dc))

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h, c). Returns (h, c)."""
        h, c = state
        xp = project_step(x_t, params["Wx"])
        z = xp + h @ params["Wh"] + params["b"]
        H = h.shape[1]
        _activate(z, H)
        c = z[:, H:2 * H] * c + z[:, :H] * z[:, 3 * H:]
        return z[:, 2 * H:3 * H] * np.tanh(c), c
