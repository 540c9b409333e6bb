"""The basic (Elman) RNN cell: ``h_t = tanh(x_t Wx + h_{t-1} Wh + b)``."""

from __future__ import annotations

import numpy as np

from ..registry import CELLS
from .base import (Cell, StepProduct, final_states, grad_buffer, project_inputs, project_inputs_backward, project_step,
                   states, zero_start)


@CELLS.register("rnn")
class RNN(Cell):
    gates = 1
    state_size = 1
    splits_units = True

    def forward_packed(self, x, state0, params, pk, share=None):
        """x: (N,) ids or (N, D); state0: (h0,) with h0 (B, H); pk: the batch's ``Packing``; share: None,
        or this process's ``split.Share`` (see ``LSTM.forward_packed``).

        Returns ((hs (N, H), (h_final,)), cache).
        """
        Wh = params["Wh"]
        xp = project_inputs(x, params["Wx"], params["b"], 1)[0]
        B, H = pk.B, Wh.shape[0]
        hs, own = share.states(B + pk.N, 1) if share else states(state0, B + pk.N, H, xp.dtype)
        recurrent = share.recurrent(Wh, 1, pk) if share else None
        product = None if share else StepProduct(Wh)     # h_{t-1} Wh in one process
        zero0 = zero_start(hs, B)                # then the first step has no recurrent term
        p = 0
        for o, n in pk.steps:
            r = B + o
            h = hs[r:r + n, own]
            if o == 0 and zero0:
                np.copyto(h, xp[:n])
            elif share:
                np.add(recurrent(hs[p:p + n])[0], xp[o:o + n], out=h)
            else:
                product(hs[p:p + n], h)
                h += xp[o:o + n]
            np.tanh(h, out=h)
            if share:
                recurrent.written(hs[r:r + n])   # for the other process's next step
            p = r
        cache = (x, hs, params, pk, own, share, zero0)
        return (hs[B:], final_states((hs,), pk)), cache

    def internals_packed(self, cache):
        """The values of a forward pass at every packed row: {"h": (N, H)}."""
        hs, pk = cache[1], cache[3]
        return {"h": hs[pk.B:]}

    def backward_packed(self, dhs, cache, dstate=None, out=None, dh_steps=None, state_grad=True):
        """dhs: (N, H) gradients of the outputs; dstate: (dh,) of the final state or None; out: None or
        a dict receiving the gradients; dh_steps: None or (N, H), filled with the gradient reaching h_t;
        state_grad: whether to compute the gradient of the initial state (see ``LSTM.backward_packed``).

        Returns (grads {"Wx", "Wh", "b"}, (dx (N, D) or None, (dh0,) or None)).
        """
        x, hs, params, pk, own, share, zero0 = cache
        if share:
            back = share.exchanging(params["Wh"])   # each process has its units' part of it
        else:
            WhT = np.ascontiguousarray(params["Wh"].T)   # a copy: BLAS multiplies by it faster than by a view

            def back(d, out):
                np.matmul(d, WhT, out=out)
        B, H = pk.B, params["Wh"].shape[1]
        dz = self.workspace("dz", (pk.N, H), hs.dtype)
        np.multiply(hs[B:, own], hs[B:, own], out=dz)     # tanh' = 1 - h², for all rows at once
        np.subtract(1, dz, out=dz)
        # Gradients reaching the state, one row per sequence (see LSTM.backward_packed).
        dh = np.zeros((B, H), hs.dtype) if dstate is None else np.array(dstate[0], hs.dtype)
        dh_next = dh.copy()
        for o, n in reversed(pk.steps):
            dht, d = dh[:n], dz[o:o + n]
            dht += dhs[o:o + n]
            if dh_steps is not None:
                dh_steps[o:o + n] = dht
            d *= dht
            if o or state_grad:
                back(d, dh_next[:n])
            dh, dh_next = dh_next, dh
        dWh = grad_buffer(out, "Wh", params["Wh"].shape, hs.dtype)
        first = pk.first_rows(zero0)
        np.matmul(pk.previous(hs, first).T, dz[first:], out=dWh)
        dWx, db, dx = project_inputs_backward(x, dz, params["Wx"], out)
        return {"Wx": dWx, "Wh": dWh, "b": db}, (dx, (dh,) if state_grad else None)

    def step(self, x_t, state, params):
        """One step for sampling: x_t (B,) ids or (B, D); state (h,). Returns the new state (h,)."""
        xp = project_step(x_t, params["Wx"])
        return (np.tanh(xp + state[0] @ params["Wh"] + params["b"]),)
