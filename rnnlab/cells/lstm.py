"""The LSTM cell, gates fused in the order input, forget, output, cell candidate (i, f, o, g).

    z = x_t Wx + h_{t-1} Wh + b;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;     h_t = o * tanh(c_t)

The forward pass computes z/2 for i, f, o (the weights' columns scaled by 0.5, once per batch), so that
one ``tanh`` call activates all four gates: sigmoid(z) = 0.5 + 0.5 tanh(z / 2).
"""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, final_states, grad_buffer, half_scale, project_inputs, project_inputs_backward,
                   project_step, sigmoid, tanh_to_sigmoid)


@CELLS.register("lstm")
class LSTM(Cell):
    gates = 4
    state_size = 2

    def init(self, input_size, hidden_size, rng, dtype=np.float32):
        """As ``Cell.init``, with the forget-gate bias set to 1 (a common, helpful default)."""
        params = super().init(input_size, hidden_size, rng, dtype)
        params["b"][hidden_size: 2 * hidden_size] = 1
        return params

    def forward_packed(self, x, state0, params, pk):
        """x: (N,) ids or (N, D); state0: (h0, c0), each (B, H); pk: the batch's ``Packing``.

        Returns ((hs (N, H), (h_final, c_final)), cache).
        """
        H = params["Wh"].shape[0]
        scale = half_scale(4, 3, H, params["Wh"].dtype)
        Wh = params["Wh"] * scale
        z = project_inputs(x, params["Wx"], params["b"], scale)   # (N, 4H), activated in place
        B, dt = pk.B, z.dtype
        hs, cs = np.empty((B + pk.N, H), dt), np.empty((B + pk.N, H), dt)   # initial states, then steps
        hs[:B], cs[:B] = state0
        tanh_c = np.empty((pk.N, H), dt)
        rec = np.empty((B, 4 * H), dt)
        ig = np.empty((B, H), dt)
        p = 0                                    # first row of the previous step's states
        for o, n in pk.steps:
            zt, r = z[o:o + n], B + o
            np.matmul(hs[p:p + n], Wh, out=rec[:n])
            zt += rec[:n]
            np.tanh(zt, out=zt)
            tanh_to_sigmoid(zt[:, :3 * H])
            c = cs[r:r + n]
            np.multiply(zt[:, H:2 * H], cs[p:p + n], out=c)            # f * c_{t-1}
            np.multiply(zt[:, :H], zt[:, 3 * H:], out=ig[:n])          # i * g
            c += ig[:n]
            np.tanh(c, out=tanh_c[o:o + n])
            np.multiply(zt[:, 2 * H:3 * H], tanh_c[o:o + n], out=hs[r:r + n])
            p = r
        cache = (x, z, hs, cs, tanh_c, params, pk)
        return (hs[B:], final_states((hs, cs), pk)), cache

    def internals_packed(self, cache):
        """The values of a forward pass at every packed row, each (N, H): h, c, the gates i, f, o, g."""
        x, z, hs, cs, tanh_c, params, pk = cache
        H = tanh_c.shape[1]
        return {"h": hs[pk.B:], "c": cs[pk.B:], **{k: z[:, j * H:(j + 1) * H] for j, k in enumerate("ifog")}}

    def backward_packed(self, dhs, cache, dstate=None, out=None, dh_steps=None):
        """dhs: (N, H); dstate: (dh, dc) of the final state, each (B, H), or None; out: None or a dict
        receiving the gradients; dh_steps: None or (N, H), filled with the whole gradient reaching h_t.

        Returns (grads {"Wx", "Wh", "b"}, (dx (N, D) or None, (dh0, dc0))).
        """
        x, z, hs, cs, tanh_c, params, pk = cache
        WhT = np.ascontiguousarray(params["Wh"].T)   # a copy: BLAS multiplies by it faster than by a view
        B, (N, H4) = pk.B, z.shape
        H = H4 // 4
        dt = z.dtype
        i, f, o, g = (z[:, k * H:(k + 1) * H] for k in range(4))
        # For all rows at once, the factors that do not depend on the incoming gradient:
        #   dc_t += dh_t * A_t,  A = o (1 - tanh²c)
        #   d(i, f, o, g) = (dc_t, dc_t, dh_t, dc_t) * Q,  Q = (g i(1-i), c_{t-1} f(1-f), tanh c o(1-o), i (1-g²))
        # Q is built in the gradient buffer dz and multiplied in place at each step.
        A = self.workspace("A", tanh_c.shape, dt)
        np.multiply(tanh_c, tanh_c, out=A)
        np.subtract(1, A, out=A)
        A *= o
        dz = self.workspace("dz", z.shape, dt)
        sig = dz[:, :3 * H]
        np.subtract(1, z[:, :3 * H], out=sig)
        sig *= z[:, :3 * H]                            # s (1 - s) of i, f, o
        dz[:, :H] *= g
        dz[:, H:2 * H] *= pk.previous(cs)
        dz[:, 2 * H:3 * H] *= tanh_c
        dg = dz[:, 3 * H:]
        np.multiply(g, g, out=dg)
        np.subtract(1, dg, out=dg)
        dg *= i
        # Gradients reaching the state, one row per sequence. A sequence's rows are first written at its
        # last step, so until then they hold the gradient of its final state (see Packing).
        dh = np.zeros((B, H), dt) if dstate is None else np.array(dstate[0], dt)
        dc = np.zeros((B, H), dt) if dstate is None else np.array(dstate[1], dt)
        dh_next = dh.copy()
        dct = np.empty((B, H), dt)
        for o_, n in reversed(pk.steps):
            dht, dzt = dh[:n], dz[o_:o_ + n]
            dht += dhs[o_:o_ + n]
            if dh_steps is not None:
                dh_steps[o_:o_ + n] = dht
            np.multiply(dht, A[o_:o_ + n], out=dct[:n])
            dct[:n] += dc[:n]                                  # total gradient reaching c_t
            gates4 = dzt.reshape(n, 4, H)                      # a view of the contiguous (n, 4H) rows
            gates4[:, :2] *= dct[:n, None]                     # i, f
            gates4[:, 2] *= dht                                # o
            gates4[:, 3] *= dct[:n]                            # g
            np.multiply(dct[:n], f[o_:o_ + n], out=dc[:n])     # gradient reaching c_{t-1}
            np.matmul(dzt, WhT, out=dh_next[:n])
            dh, dh_next = dh_next, dh
        dWh = grad_buffer(out, "Wh", params["Wh"].shape, dt)
        np.matmul(pk.previous(hs).T, dz, out=dWh)
        dWx, db, dx = project_inputs_backward(x, dz, params["Wx"], out)
        return {"Wx": dWx, "Wh": dWh, "b": db}, (dx, (dh, dc))

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
