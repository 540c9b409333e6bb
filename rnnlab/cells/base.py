"""What every cell shares: the input projection of all time steps at once, masks, initial weights.

Shapes (time-major): ``x`` is ``(T, B)`` integer ids (one-hot input: the projection is a row gather) or
``(T, B, D)`` floats; ``mask`` is ``(T, B)`` with 1 for real steps and 0 for padding at the end of a
sequence. A padded step carries the state through unchanged (its output repeats the last real state),
so the final state of a batch is each sequence's last real state (see ``Padding``).

The backward passes compute every factor that does not depend on the incoming gradient (the
derivatives of the activations, the products with the saved gates) for all steps at once, in bulk,
before the loop over time; the loop itself is a handful of in-place products and one matrix product
per step.
A cell with ``G`` gates has parameters ``Wx (D, G*H)``, ``Wh (H, G*H)``, ``b (G*H,)`` (plus any of its
own), gates fused along the last axis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


class Cell:
    """Base class of the cells: subclasses set ``gates`` and ``state_size`` and implement
    ``forward``, ``backward`` and ``step``."""

    def workspace(self, name: str, shape, dtype):
        """A scratch array kept by the cell between calls (for buffers internal to one call, such as
        the gradients of the gates in ``backward``): reusing it spares allocating and first-touching
        megabytes of fresh memory at every batch. Its contents are undefined. Each thread has its own
        (the model may run shards of a batch in parallel threads through the same cell)."""
        store = self.__dict__.setdefault("_workspace", {}).setdefault(threading.get_ident(), {})
        size = int(np.prod(shape))
        buf = store.get((name, np.dtype(dtype).str))
        if buf is None or buf.size < size:
            buf = store[(name, np.dtype(dtype).str)] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    @dataclass
    class Config:
        """Options of a cell in the character model (the same for every built-in cell)."""
        hidden_size: int = 64
        num_layers: int = 1
        dropout: float = 0.0        # on the non-recurrent connections, in training only
        embedding_size: int = 0     # 0: one-hot input; D > 0: a learned (V, D) embedding

    gates = 1          # G: blocks of H columns in Wx, Wh, b
    state_size = 1     # number of (B, H) arrays in the state: h, or (h, c)

    def init(self, input_size: int, hidden_size: int, rng: np.random.Generator, dtype=np.float32):
        """Uniform(-1/sqrt(H), 1/sqrt(H)) weights, zero biases, as the common frameworks do.

        Returns {"Wx": (D, G*H), "Wh": (H, G*H), "b": (G*H,)}.
        """
        bound = 1.0 / np.sqrt(hidden_size)
        gh = self.gates * hidden_size
        return {
            "Wx": rng.uniform(-bound, bound, (input_size, gh)).astype(dtype),
            "Wh": rng.uniform(-bound, bound, (hidden_size, gh)).astype(dtype),
            "b": np.zeros(gh, dtype),
        }

    def zero_state(self, batch: int, hidden_size: int, dtype=np.float32):
        """The initial state: a tuple of ``state_size`` zero arrays of shape (B, H)."""
        return tuple(np.zeros((batch, hidden_size), dtype) for _ in range(self.state_size))

    def __repr__(self):
        return f"{type(self).__name__}()"


def project_inputs(x, Wx, b):
    """All input projections in one go: ``x @ Wx + b`` as ``(T, B, G*H)``.

    Integer ``x`` (T, B) is a one-hot input, so its projection is a row gather ``Wx[x]``.
    """
    if np.issubdtype(x.dtype, np.integer):
        xp = np.take(Wx, x, axis=0)  # a row gather (np.take is several times faster than Wx[x])
    else:
        T, B, D = x.shape
        xp = (x.reshape(T * B, D) @ Wx).reshape(T, B, -1)
    xp += b
    return xp


def project_inputs_backward(x, dxp, Wx):
    """Gradients of ``project_inputs``: returns (dWx, db, dx), each weight gradient one large product.

    dxp: (T, B, G*H). For integer ``x`` the gradient is scattered back into rows and ``dx`` is None.
    """
    T, B, GH = dxp.shape
    flat = dxp.reshape(T * B, GH)
    db = flat.sum(axis=0)
    if np.issubdtype(x.dtype, np.integer):
        return scatter_rows(x, dxp, Wx.shape[0]), db, None
    xf = x.reshape(T * B, -1)
    return xf.T @ flat, db, (flat @ Wx.T).reshape(x.shape)


def scatter_rows(ids, rows, n):
    """The gradient of a row gather ``W[ids]`` (W with ``n`` rows): the rows (…, D) added into the
    rows of W they came from, as one product onehot(ids)ᵀ (n, N) @ rows (N, D)."""
    flat = rows.reshape(-1, rows.shape[-1])
    onehot = np.zeros((flat.shape[0], n), flat.dtype)
    onehot[np.arange(flat.shape[0]), np.asarray(ids).reshape(-1)] = 1
    return onehot.T @ flat


class Padding:
    """Sequences padded at their end, given by a (T, B) mask of 1s then 0s in each column.

    The recurrences run over the padded steps as well (their inputs are real ids or numbers, so the
    values stay finite), and this class makes the result what it would be without them: each
    column's final state is its state after its last real step, its outputs at padded steps repeat
    that state, and in the backward pass no gradient reaches a padded step — what the padded outputs
    and the final state receive goes to the last real step. Done in bulk, once per batch, it keeps the
    mask out of the per-step loops.
    """

    def __init__(self, mask, T, B, dtype):
        mask = np.asarray(mask)
        if mask.shape != (T, B):
            raise ValueError(f"mask has shape {mask.shape}, expected (T, B) = {(T, B)}")
        real = mask != 0
        self.lengths = real.sum(axis=0)
        wrong = np.nonzero((real != (np.arange(T)[:, None] < self.lengths)).any(axis=0))[0]
        if wrong.size:
            raise ValueError(f"mask column {int(wrong[0])} is not padding at the end of a sequence: "
                             f"each column must be 1 for the sequence's steps, then 0")
        self.B = B
        self.real = real[:, :, None]
        self.valid = self.real.astype(dtype)

    @classmethod
    def of(cls, mask, T, B, dtype):
        """A ``Padding`` for ``mask``, or None when there is no mask or nothing is padded."""
        if mask is None:
            return None
        pad = cls(mask, T, B, dtype)
        return None if pad.lengths.min() == T else pad

    def final(self, seq):
        """The state after each column's last real step, from ``seq`` (T + 1, B, H) = (initial, steps…)."""
        return seq[self.lengths, np.arange(self.B)]

    def outputs(self, hs):
        """The outputs (T, B, H) from ``hs`` (T + 1, B, H): padded steps repeat the final state."""
        return np.where(self.real, hs[1:], self.final(hs)[None])


def end_gradients(pad, dhs, dstate, state_size, T):
    """Where the gradients of the final state (and of padded outputs) enter the backward loop.

    Returns ``(dhs, ends, start)``: the output gradients to use at each step (zero at padded steps),
    ``ends = {t: (columns, rows per state array)}``, the gradient to add to the state arrays at step
    ``t`` for the sequences whose last real step is ``t``, and ``start = (columns, rows)`` for empty
    sequences, whose gradient goes straight to the initial state (or None).
    """
    if pad is None:
        return dhs, ({T - 1: (slice(None), tuple(dstate))} if dstate is not None else {}), None
    g = [np.zeros((pad.B, dhs.shape[2]), dhs.dtype) for _ in range(state_size)]
    if dstate is not None:
        for gi, di in zip(g, dstate):
            gi += di
    g[0] += (dhs * (1 - pad.valid)).sum(axis=0)    # padded outputs are copies of the final h
    dhs = dhs * pad.valid
    if not any(gi.any() for gi in g):
        return dhs, {}, None
    ends, last = {}, pad.lengths - 1
    for t in np.unique(last):
        cols = np.nonzero(last == t)[0]
        if t >= 0:
            ends[int(t)] = (cols, tuple(gi[cols] for gi in g))
    empty = np.nonzero(last < 0)[0]
    return dhs, ends, ((empty, tuple(gi[empty] for gi in g)) if empty.size else None)


def add_rows(arrays, where):
    """``arrays[k][cols] += rows[k]`` for ``where = (cols, rows)`` (nothing if None)."""
    if where is not None:
        cols, rows = where
        for a, r in zip(arrays, rows):
            a[cols] += r


def sigmoid(x, out=None):
    """The logistic function 1 / (1 + exp(-x)), in four in-place passes. ``exp(-x)`` overflows to inf
    for very negative x, which gives the exact limit 0 (the overflow warning is silenced). Unlike
    0.5 * (1 + tanh(x / 2)), it keeps its relative precision in the negative tail (that form rounds
    sigmoid(-30) to 0 in float32); measured on this project's machine, both forms cost the same."""
    out = np.negative(x, out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)
    return out


def project_step(x_t, Wx):
    """The input projection of one step (no bias): x_t (B,) ids → ``Wx[x_t]``, or (B, D) → ``x_t @ Wx``."""
    x_t = np.asarray(x_t)
    return np.take(Wx, x_t, axis=0) if np.issubdtype(x_t.dtype, np.integer) else x_t @ Wx
