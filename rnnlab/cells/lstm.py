"""The LSTM cell, gates fused in the order input, forget, output, cell candidate (i, f, o, g), so that
one sigmoid covers the first three blocks.

    z = x_t Wx + h_{t-1} Wh + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;     h_t = o * tanh(c_t)
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import Cell, check_mask, project_inputs, project_inputs_backward, project_step, sigmoid


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
        m = check_mask(mask, T, B, gates.dtype)
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
            h = hs[t + 1]
            np.multiply(o, tanh_c[t], out=h)
            if m is not None:  # padded steps carry (h, c) through unchanged
                for new, old in ((h, hs[t]), (c, cs[t])):
                    new -= old
                    new *= m[t]
                    new += old
        cache = (x, gates, hs, cs, tanh_c, m, params)
        return (hs[1:], (hs[T], cs[T])), cache

    def backward(self, dhs, cache, dstate=None):
        """dhs: (T, B, H); dstate: (dh_T, dc_T) or None.

        Returns (grads {"Wx", "Wh", "b"}, (dx or None, (dh0, dc0))).
        """
        x, gates, hs, cs, tanh_c, m, params = cache
        WhT = params["Wh"].T   # a transposed view: BLAS reads it as is
        T, B, H4 = gates.shape
        H = H4 // 4
        dt = gates.dtype
        if dstate is None:
            dh, dc = np.zeros((B, H), dt), np.zeros((B, H), dt)
        else:
            dh, dc = (s.astype(dt, copy=True) for s in dstate)
        dz = self.workspace("dz", gates.shape, dt)
        dct = np.empty((B, H), dt)
        tmp = np.empty((B, H), dt)
        dh_rec = np.empty((B, H), dt)
        for t in reversed(range(T)):
            dh += dhs[t]
            if m is not None:  # a padded step passes its gradient straight to the step before
                keep = 1 - m[t]
                dh_carry, dc_carry = dh * keep, dc * keep
                dh *= m[t]
                dc *= m[t]
            z = gates[t]
            i, f, o, g = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            tc = tanh_c[t]
            d = dz[t]
            di, df, do, dg = d[:, :H], d[:, H:2 * H], d[:, 2 * H:3 * H], d[:, 3 * H:]
            # through h = o * tanh(c)
            np.multiply(dh, tc, out=do)                       # d o (before the sigmoid)
            np.multiply(tc, tc, out=tmp)
            np.subtract(1, tmp, out=tmp)
            tmp *= o
            tmp *= dh
            np.add(dc, tmp, out=dct)                          # total gradient reaching c_t
            np.multiply(dct, g, out=di)
            np.multiply(dct, cs[t], out=df)
            np.multiply(dct, i, out=dg)
            # through the nonlinearities: sigmoid' = s (1 - s), tanh' = 1 - t²
            for dd, s in ((di, i), (df, f), (do, o)):
                np.subtract(1, s, out=tmp)
                tmp *= s
                dd *= tmp
            np.multiply(g, g, out=tmp)
            np.subtract(1, tmp, out=tmp)
            dg *= tmp
            np.multiply(dct, f, out=dc)                       # gradient reaching c_{t-1}
            np.matmul(d, WhT, out=dh_rec)
            dh, dh_rec = dh_rec, dh
            if m is not None:
                dh += dh_carry
                dc += dc_carry
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
