"""What every cell shares: the packed layout of a batch, the input projection of all steps at once,
initial weights, and the padded interface built on the packed one.

**Packed batches.** The B sequences of a batch are ordered longest first and laid out step by step
without padding, as PyTorch's ``PackedSequence`` does: step t holds the ``n_t`` sequences still running,
rows ``offsets[t] … offsets[t] + n_t`` of an ``(N, …)`` array (N = the number of real steps), always in
the same order, so the sequences running at step t are a prefix of those of step t − 1. A step's matrix
product and element-wise work touch only its ``n_t`` rows; the input projection, the weight gradients and
the output layer are one product over the N rows. See ``Packing``.

A cell implements ``forward_packed`` and ``backward_packed`` on that layout; ``Cell.forward`` and
``Cell.backward`` offer the same computation for time-major padded batches — ``x`` (T, B) ids or
(T, B, D) floats, ``mask`` (T, B) of 1s then 0s per column — whose padded outputs repeat each sequence's
final state (and pass their gradient to it).

A cell with ``G`` gates has parameters ``Wx (D, G*H)``, ``Wh (H, G*H)``, ``b (G*H,)`` (plus any of its
own), gates fused along the last axis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..threads import small_product_limit


class Packing:
    """The packed layout of sequences of ``lengths`` (non-increasing: longest first).

    ``steps[t] = (offset, n)``: the rows of step t. A cell keeps its states in an array of B + N rows,
    the B initial states first; ``prev`` (N,) gives, for each packed row, the row of that array holding
    the sequence's previous state, and ``last`` (B,) the row holding each sequence's final state (its
    initial state if it is empty).
    """

    def __init__(self, lengths):
        lengths = np.asarray(lengths, np.int64)
        if lengths.ndim != 1 or (lengths < 0).any() or (np.diff(lengths) > 0).any():
            raise ValueError(f"packed lengths must be non-negative and non-increasing, got {lengths}")
        self.lengths = lengths
        self.B = B = len(lengths)
        self.T = T = int(lengths[0]) if B else 0
        self.batch_sizes = sizes = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.N = int(offsets[-1])
        self.steps = [(int(o), int(n)) for o, n in zip(offsets[:-1], sizes)]
        self.full = bool(B) and int(lengths[-1]) == T      # no sequence ends early
        step = np.repeat(np.arange(T), sizes)                # the step of each packed row
        seq = np.arange(self.N) - offsets[step]              # its sequence
        self.step_of, self.seq_of = step, seq
        self.prev = np.where(step == 0, seq, B + offsets[np.maximum(step - 1, 0)] + seq)
        self.last = np.where(lengths > 0, B + offsets[np.maximum(lengths - 1, 0)] + np.arange(B), np.arange(B))

    @classmethod
    def full_batch(cls, T: int, B: int) -> "Packing":
        return cls(np.full(B, T))

    def previous(self, states, start: int = 0):
        """The state each packed row from ``start`` on started from: ``states`` (B + N, H) → (N - start, H)
        (a view when full)."""
        return states[start:self.N] if self.full else np.take(states, self.prev[start:], axis=0)

    def first_rows(self, zero0: bool) -> int:
        """The first row whose previous state takes part in a weight gradient: after the first step's rows
        when the initial states are zeros (``zero0``, from ``zero_start``), else 0."""
        return self.steps[0][1] if zero0 and self.steps else 0


class Layout:
    """How a padded time-major (T, B) batch maps onto its packed form: the columns sorted by length
    (a stable sort, longest first) and their real steps gathered into rows.

    ``pack`` (T, B, …) → (N, …); ``unpack`` the reverse (padding filled); ``sort``/``unsort`` put the
    rows of a (B, …) state into packed order and back.
    """

    def __init__(self, mask, T: int, B: int):
        lengths = mask_lengths(mask, T, B)
        self.T, self.B = T, B
        self.sorted = bool((np.diff(lengths) <= 0).all())
        self.order = np.arange(B) if self.sorted else np.argsort(-lengths, kind="stable")
        self.packing = pk = Packing(lengths[self.order])
        self.dense = pk.full and pk.T == T and self.sorted   # packed = padded, reshaped
        self.rows = (pk.step_of, self.order[pk.seq_of])       # (t, column) of each packed row

    def pack(self, a):
        """(T, B, …) → (N, …)."""
        a = np.asarray(a)
        return a.reshape(self.T * self.B, *a.shape[2:]) if self.dense else a[self.rows]

    def unpack(self, packed, fill=None):
        """(N, …) → (T, B, …); padded steps hold ``fill`` (B, …) of their column, or zeros."""
        if self.dense:
            return packed.reshape(self.T, self.B, *packed.shape[1:])
        out = np.zeros((self.T, self.B) + packed.shape[1:], packed.dtype)
        if fill is not None:
            out[:] = fill
        out[self.rows] = packed
        return out

    def padded(self):
        """(T, B) booleans: True at padded steps."""
        out = np.ones((self.T, self.B), bool)
        out[self.rows] = False
        return out

    def sort(self, state):
        """A (B, …) state (or tuple of them) in packed order."""
        if state is None or self.sorted:
            return state
        return tuple(s[self.order] for s in state) if isinstance(state, tuple) else state[self.order]

    def unsort(self, state):
        if state is None or self.sorted:
            return state
        inverse = np.empty_like(self.order)
        inverse[self.order] = np.arange(self.B)
        return tuple(s[inverse] for s in state) if isinstance(state, tuple) else state[inverse]


def mask_lengths(mask, T: int, B: int):
    """The lengths (B,) of the sequences of a (T, B) mask (None: all T), checked: each column must be 1s
    (non-zero) for its sequence's steps, then 0s."""
    if mask is None:
        return np.full(B, T)
    mask = np.asarray(mask)
    if mask.shape != (T, B):
        raise ValueError(f"mask has shape {mask.shape}, expected (T, B) = {(T, B)}")
    real = mask != 0
    lengths = real.sum(axis=0)
    wrong = np.nonzero((real != (np.arange(T)[:, None] < lengths)).any(axis=0))[0]
    if wrong.size:
        raise ValueError(f"mask column {int(wrong[0])} is not padding at the end of a sequence: "
                         f"each column must be 1 for the sequence's steps, then 0")
    return lengths


class Cell:
    """Base class of the cells: subclasses set ``gates`` and ``state_size`` and implement
    ``forward_packed``, ``backward_packed``, ``internals_packed`` and ``step``."""

    @dataclass
    class Config:
        """Options of a cell in the character model (the same for every built-in cell)."""
        hidden_size: int = 64
        num_layers: int = 1
        dropout: float = 0.0        # on the non-recurrent connections, in training only
        embedding_size: int = 0     # 0: one-hot input; D > 0: a learned (V, D) embedding
        locked_dropout: bool = False   # true: one dropout mask per sequence, the same at every step (variational)
        weight_dropout: float = 0.0    # DropConnect on the recurrent weights Wh: one mask per batch
        embedding_dropout: float = 0.0  # whole characters dropped from the input, per batch
        ar: float = 0.0             # activation regularisation: ar * mean(h^2) of the top layer's output
        tar: float = 0.0            # temporal AR: tar * mean((h_t - h_t-1)^2) of the top layer's output

    gates = 1          # G: blocks of H columns in Wx, Wh, b
    state_size = 1     # number of (B, H) arrays in the state: h, or (h, c)
    splits_units = False   # whether forward_packed/backward_packed take a ``share`` (see ``rnnlab.split``)

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

    def workspace(self, name: str, shape, dtype):
        """A scratch array kept by the cell between calls, for buffers internal to one call: reusing it
        spares allocating and first-touching fresh memory at every batch. Its contents are undefined.
        Each thread has its own (the model may run shards of a batch in parallel threads)."""
        store = self.__dict__.setdefault("_workspace", {}).setdefault(threading.get_ident(), {})
        size = int(np.prod(shape))
        buf = store.get((name, np.dtype(dtype).str))
        if buf is None or buf.size < size:
            buf = store[(name, np.dtype(dtype).str)] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    # ----------------------------------------------------------------------- the padded interface
    def forward(self, x, state0, params, mask=None):
        """x: (T, B) ids or (T, B, D); state0: tuple of (B, H); mask: (T, B) or None.

        Returns ((hs (T, B, H), final state), cache); padded outputs repeat the final h.
        """
        T, B = x.shape[:2]
        lay = Layout(mask, T, B)
        (hs, final), cache = self.forward_packed(lay.pack(x), lay.sort(state0), params, lay.packing)
        final = lay.unsort(final)
        return (lay.unpack(hs, fill=final[0]), final), (cache, lay)

    def backward(self, dhs, cache, dstate=None, dh_steps=None):
        """dhs: (T, B, H); dstate: gradient of the final state (tuple of (B, H)) or None; dh_steps:
        None, or a (T, B, H) array filled with the whole gradient reaching each step's output h_t.

        Returns (grads, (dx (T, B, D) or None, dstate0)).
        """
        cache, lay = cache
        if not lay.dense:    # a padded output is a copy of the final h: its gradient goes there
            into_final = np.where(lay.padded()[..., None], dhs, 0).sum(axis=0)
            if into_final.any() or dstate is not None:
                dstate = list(dstate) if dstate is not None else [np.zeros_like(into_final)
                                                                  for _ in range(self.state_size)]
                dstate[0] = dstate[0] + into_final
                dstate = tuple(dstate)
        steps = None if dh_steps is None else np.empty((lay.packing.N, dhs.shape[2]), dhs.dtype)
        grads, (dx, dstate0) = self.backward_packed(lay.pack(dhs), cache, lay.sort(dstate), dh_steps=steps)
        if dh_steps is not None:
            dh_steps[...] = lay.unpack(steps)
        return grads, (None if dx is None else lay.unpack(dx), lay.unsort(dstate0))

    def internals(self, cache):
        """What a padded forward pass computed inside: names → (T, B, H) arrays (see ``internals_packed``)."""
        cache, lay = cache
        return {k: lay.unpack(v) for k, v in self.internals_packed(cache).items()}


# --------------------------------------------------------------------------- shared building blocks
# Inside a batch the cells keep their gates gate-major, (G, N, H): each gate of a step is one contiguous
# (n, H) block, and NumPy's element-wise loops run several times faster on contiguous blocks than on the
# column slices of (n, G*H) rows. The parameters keep the fused (…, G*H) layout, and so do the gradients
# of the recurrent products (the LSTM's gates, the GRU's h Wh; written there at each step, a gate at a
# time): every product that follows — the per-step one with Whᵀ, and dWh over all rows — is then one
# product instead of G. The GRU's input-side gradients stay gate-major: dWx is then a product per gate
# block (measured faster than copying them into rows: 0.7 against 1.2 ms at H256, N 1,638).

def gate_major(W, G: int):
    """A (D, G*H) weight as a contiguous (G, D, H) copy: ``gate_major(W, G)[k] = W[:, k*H:(k+1)*H]``."""
    return np.ascontiguousarray(as_gates(W, G))


class StepProduct:
    """``prod(a, out)`` → ``out[:] = a @ W`` for a recurrence's step, a (n, K) and W (K, M) (returns ``out``),
    split into blocks of W's columns where that lets BLAS use its small-matrix kernel
    (``threads.small_product_limit``): when the whole product is larger than the kernel takes, blocks of
    the most columns the kernel takes at n rows — a multiple of ``ALIGN``, at most ``MAX_WIDTH`` —, if at
    least ``MIN_WIDTH`` (narrower blocks lose more in calls than the kernel gains). Each output value is
    the same sum; on the AVX-512 machine of session 23, 1.2–1.8x the one product's speed at 16 to 48 rows,
    2–4.5x at 4 to 8 (experiments/benchmarks/README.md).
    """
    MIN_WIDTH, MAX_WIDTH, ALIGN = 64, 256, 32

    def __init__(self, W):
        self.W, self.limit = W, small_product_limit(W.dtype)

    def width(self, n: int) -> int:
        """The columns of a block at n rows (all of W's: one product)."""
        K, M = self.W.shape
        if not self.limit or n * K * M <= self.limit:
            return M
        c = min(self.MAX_WIDTH, self.limit // (n * K) // self.ALIGN * self.ALIGN)
        return c if c >= self.MIN_WIDTH else M

    def __call__(self, a, out):
        M = self.W.shape[1]
        c = self.width(len(a))
        if c >= M:
            return np.matmul(a, self.W, out=out)
        for j in range(0, M, c):
            np.matmul(a, self.W[:, j:j + c], out=out[:, j:j + c])
        return out


class RecurrentForward:
    """``fwd(h)`` → ``h @ Wh`` for a step's previous states h (n, H), gate-major (G, n, H): a view of a
    buffer of this object, valid until the next call. The faster of two forms measured on this project's
    machine (experiments/benchmarks/README.md, session 8):

    - below ``ROWS_MIN_H`` units, G products with Wh's column blocks, written gate-major;
    - from ``ROWS_MIN_H`` units, one product with the whole Wh into (n, G*H) rows, viewed gate-major
      (whoever adds it to the gates reads runs of H contiguous values: nearly as fast as a block).

    ``blocks=True`` asks for the first form at any size (for a caller whose work on the result is slow on
    a strided view, such as a layer norm per gate). Either form's products are ``StepProduct``'s: in column
    blocks at the step sizes where BLAS's small-matrix kernel pays.
    """
    ROWS_MIN_H = 256

    def __init__(self, Wh, G: int, B: int, blocks: bool = False):
        H, width = Wh.shape          # width G * H, or G times a share of the units (``rnnlab.split``)
        self.G, self.rows_form = G, H >= self.ROWS_MIN_H and not blocks
        if self.rows_form:
            self.product, self.rows = StepProduct(Wh), np.empty((B, width), Wh.dtype)
        else:
            self.Wh, self.rec = as_gates(Wh, G), np.empty((G, B, width // G), Wh.dtype)
            self.gates = [StepProduct(block) for block in self.Wh]       # each in column blocks where they pay

    def __call__(self, h):
        n = len(h)
        if self.rows_form:
            return as_gates(self.product(h, self.rows[:n]), self.G)
        rec = self.rec[:, :n]
        if self.gates[0].width(n) < rec.shape[2]:
            for product, out in zip(self.gates, rec):
                product(h, out)
            return rec
        return np.matmul(h, self.Wh, out=rec)


class RecurrentBackward:
    """``back(dz, out)``: ``out[:] = dz @ Whᵀ``, the gradient that a step's gates pass to h_{t-1}, from
    their gradients in rows dz (n, G*H) (the layout of Wh's columns), in the faster of two forms measured on
    this project's machine:

    - a product with a contiguous Whᵀ made once per batch: up to ``SMALL_H`` units, and up to
      ``ROWS_MAX_H`` units for batches of at least ``ROWS_MIN_B`` sequences (the copy pays over wide steps);
    - otherwise ``Wh @ dzᵀ`` (H, n), copied transposed into ``out``: Wh read in place, no transposed copy
      of it (which costs milliseconds at H = 512: a power-of-two stride).
    """
    SMALL_H, ROWS_MAX_H, ROWS_MIN_B = 64, 256, 64

    def __init__(self, Wh, B: int):
        H = Wh.shape[0]
        self.rows_form = H <= self.SMALL_H or (H <= self.ROWS_MAX_H and B >= self.ROWS_MIN_B)
        if self.rows_form:
            self.WhT = np.ascontiguousarray(Wh.T)
        else:
            self.Wh, self.cols = Wh, np.empty(H * B, Wh.dtype)

    def __call__(self, dz, out):
        if self.rows_form:
            np.matmul(dz, self.WhT, out=out)
        else:
            n, H = out.shape
            cols = np.matmul(self.Wh, dz.T, out=self.cols[:H * n].reshape(H, n))
            np.copyto(out, cols.T)


def as_gates(a, G: int):
    """A (D, G*H) array viewed as (G, D, H) (a view: writing to it writes ``a``)."""
    D, GH = a.shape
    return a.reshape(D, G, GH // G).transpose(1, 0, 2)


def project_inputs(x, Wx, b, G: int):
    """All input projections in one go, gate-major: ``x @ Wx + b`` as (G, N, H). Integer ``x`` (N,) is a
    one-hot input, so its projection is a row gather of ``Wx + b`` (the bias added to Wx's V rows, not to
    the N gathered ones)."""
    if np.issubdtype(x.dtype, np.integer):
        return np.take(as_gates(Wx, G) + b.reshape(G, 1, -1), x, axis=1)
    z = np.matmul(x, gate_major(Wx, G))
    z += b.reshape(G, 1, -1)
    return z


def project_inputs_backward(x, dz, Wx, out=None):
    """Gradients of ``project_inputs`` from their gradients dz, in rows (N, G*H) or gate-major (G, N, H):
    ``(dWx, db, dx)``. For integer ``x`` the gradient is scattered back into rows and ``dx`` is None.
    ``out``: None, or a dict whose "Wx" and "b" arrays receive dWx and db."""
    dWx = np.empty(Wx.shape, dz.dtype) if out is None else out["Wx"]
    db = np.empty(Wx.shape[1], dz.dtype) if out is None else out["b"]
    if np.issubdtype(x.dtype, np.integer):     # gate-major dz: a product per gate block, no copy into rows
        np.matmul(onehot(x, Wx.shape[0], dz.dtype).T, dz, out=as_gates(dWx, len(dz)) if dz.ndim == 3 else dWx)
        np.sum(dWx, axis=0, out=db)      # each row has one 1: the sum over rows = the sum of dWx's rows
        return dWx, db, None
    if dz.ndim == 3:
        dz = np.ascontiguousarray(dz.transpose(1, 0, 2)).reshape(dz.shape[1], -1)   # into rows
    N = len(dz)
    np.matmul(np.ones(N, dz.dtype), dz, out=db)   # the sum over rows, as a product: faster
    np.matmul(x.T, dz, out=dWx)
    return dWx, db, np.matmul(dz, Wx.T)


def onehot(ids, n: int, dtype):
    """(N, n) rows of zeros with a 1 at each id."""
    ids = np.asarray(ids).reshape(-1)
    out = np.zeros((ids.size, n), dtype)
    out[np.arange(ids.size), ids] = 1
    return out


def scatter_rows(ids, rows, n, out=None):
    """The gradient of a row gather ``W[ids]`` (W with ``n`` rows): the rows (…, D) added into the
    rows of W they came from, as one product onehot(ids)ᵀ (n, N) @ rows (N, D)."""
    flat = rows.reshape(-1, rows.shape[-1])
    return np.matmul(onehot(ids, n, flat.dtype).T, flat, out=out)


def grad_buffer(out, name, shape, dtype):
    """Where a gradient goes: ``out[name]`` if given (a view into a flat buffer), else a new array."""
    return np.empty(shape, dtype) if out is None else out[name]


def states(state0, rows: int, H: int, dtype):
    """The arrays a cell keeps its states in, the B initial ones first: ``(hs, cs, own)``, each (rows, H)
    with ``state0`` (h0, c0) written, and ``own`` the columns this process computes (all of them; see
    ``rnnlab.split`` for a share of them)."""
    arrays = tuple(np.empty((rows, H), dtype) for _ in state0)
    for a, s0 in zip(arrays, state0):
        a[:len(s0)] = s0
    return (*arrays, slice(None))


def zero_start(hs, B: int) -> bool:
    """Whether the initial h of a batch (the first B rows of its state array ``hs``) is all zeros, as for
    names, which start afresh: the first step's recurrent product h_0 Wh is then zero and skipped, and the
    first step's rows take no part in dWh = Σ h_{t-1}ᵀ dz_t (a 1/length share of each product, ~8 % for names)."""
    return not hs[:B].any()


def final_states(arrays, pk: Packing):
    """Each sequence's final state from state arrays of B + N rows (initial ones first)."""
    return tuple(np.take(a, pk.last, axis=0) for a in arrays)


def activate(zt, numerators, sigmoids: int):
    """In place, gates zt (G, n, H) from their pre-activations z scaled by ``-numerators`` (G, 1, 1): by -1
    for the first ``sigmoids`` gates, by -2 for the others (tanh gates). One ``exp`` call for all of them:

        sigmoid(z) = 1 / (1 + exp(-z)),   tanh(z) = 2 / (1 + exp(-2z)) - 1

    Call it where exp's overflow is silenced (``np.errstate(over="ignore")``, entered once per pass: it
    costs a few microseconds): for very negative z, exp gives inf, and with it the exact limits 0 and -1.
    Near z = 0 the tanh form's error is absolute, up to an ulp of 1."""
    np.exp(zt, out=zt)
    zt += 1
    np.divide(numerators, zt, out=zt)
    if sigmoids < len(zt):
        zt[sigmoids:] -= 1


def sigmoid(x, out=None):
    """The logistic function 1 / (1 + exp(-x)) (sampling's one-step form). ``exp(-x)`` overflows to
    inf for very negative x, which gives the exact limit 0 (the overflow warning is silenced); it keeps
    its relative precision in the negative tail, where 0.5 * (1 + tanh(x / 2)) cancels."""
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
