"""The character language model: ids → (one-hot or embedding) → stacked cells → linear output → softmax
cross-entropy.

Parameters are one flat dict of arrays: the embedding ``E (V, D)`` when there is one, the cells' as
``"l{k}.{name}"`` (``l0.Wx``, ``l0.Wh``, …) and the output layer's as ``Wy (H, V)``, ``by (V,)`` — made
by ``init_params`` as a ``FlatParams`` (views into one buffer; gradients come the same way). Shapes
are time-major: ``x``, ``y``, ``mask`` are ``(T, B)``; a state is a list, one tuple of (B, H) arrays per
layer. A padded batch is packed once on the way in (``cells.base.Layout``): every layer, the output
layer and the loss then work on the N real positions only, and results come back in column order.

Dropout (inverted: kept units are scaled by 1/(1-p)) acts on the non-recurrent connections only, as in
Zaremba et al. (2014): the embedding output, the output of every layer into the next one, and the top
layer's output into the softmax layer. The recurrent connections are never dropped. A set of dropout
masks is a list ``drop`` of ``num_layers + 1`` arrays: ``drop[0]`` for the embedding output (None
without an embedding), ``drop[k + 1]`` for the output of layer ``k``. Masks are drawn only in training
(``loss_and_grads`` with an ``rng``); evaluation and sampling use the whole network.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .cells.base import Layout, scatter_rows
from .checks import integer, unit_interval
from .flat import FlatParams
from .registry import CELLS
from .threads import one_blas_thread, pool

LN2 = math.log(2.0)


def log_softmax(logits):
    """Log-softmax over the last axis, stable."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits):
    """Softmax over the last axis."""
    return np.exp(log_softmax(logits))


class CharLM:
    """A character-level LM with ``num_layers`` stacked cells of ``hidden_size`` units.

    Example::

        lm = CharLM(vocab_size=27, cell="lstm", hidden_size=64)
        params = lm.init_params(np.random.default_rng(0))
        loss, grads, state = lm.loss_and_grads(params, x, y, mask)
    """
    # A shard's thread pays only when it has at least this many gate values to compute in a batch (its
    # real positions × gates × hidden size); below, per-step overhead and the GIL eat the gain
    # (measured: experiments/benchmarks/README.md, session 4, "Batch shards re-decided").
    MIN_SHARD_WORK = 1_000_000

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 128,
                 num_layers: int = 1, dtype=np.float32, reduction: str = "mean", dropout: float = 0.0,
                 embedding_size: int = 0, threads: int = 1):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        hidden_size, num_layers = integer("hidden_size", hidden_size, 1), integer("num_layers", num_layers, 1)
        self.dropout = unit_interval("dropout", dropout)
        self.embedding_size = integer("embedding_size", embedding_size, 0)  # 0: one-hot input
        self.threads = integer("threads", threads, 1)   # shards of a training batch run in parallel
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
        self.reduction = reduction  # what the gradients are of: see loss_and_grads
        self.vocab_size = vocab_size
        self.cell_name = cell
        self.cell = CELLS.build(cell)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dtype = np.dtype(dtype)

    def __repr__(self):
        extra = "".join(f", {k}={getattr(self, k)}" for k in ("embedding_size", "dropout") if getattr(self, k))
        return (f"CharLM(vocab_size={self.vocab_size}, cell={self.cell_name!r}, "
                f"hidden_size={self.hidden_size}, num_layers={self.num_layers}{extra}, dtype={self.dtype.name})")

    # --------------------------------------------------------------------------------- parameters
    def init_params(self, rng: np.random.Generator) -> dict:
        """Fresh parameters drawn from ``rng``, as a ``FlatParams`` (named views into one buffer)."""
        params = {}
        if self.embedding_size:  # N(0, 1) rows, as the common frameworks initialise an embedding
            params["E"] = rng.standard_normal((self.vocab_size, self.embedding_size)).astype(self.dtype)
        for k in range(self.num_layers):
            n_in = (self.embedding_size or self.vocab_size) if k == 0 else self.hidden_size
            for name, value in self.cell.init(n_in, self.hidden_size, rng, self.dtype).items():
                params[f"l{k}.{name}"] = value
        bound = 1.0 / math.sqrt(self.hidden_size)
        params["Wy"] = rng.uniform(-bound, bound, (self.hidden_size, self.vocab_size)).astype(self.dtype)
        params["by"] = np.zeros(self.vocab_size, self.dtype)
        return FlatParams(params)

    def layer_params(self, params: dict, k: int) -> dict:
        prefix = f"l{k}."
        return {name[len(prefix):]: v for name, v in params.items() if name.startswith(prefix)}

    def initial_state(self, batch: int) -> list:
        """Zero state for ``batch`` sequences: one tuple of (B, H) arrays per layer."""
        return [self.cell.zero_state(batch, self.hidden_size, self.dtype) for _ in range(self.num_layers)]

    # ------------------------------------------------------------------------------ forward/backward
    def dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> list | None:
        """Fresh inverted-dropout masks for a (T, B) batch (None when ``dropout`` is 0): see the module
        docstring for which connection each one drops."""
        if not self.dropout:
            return None
        keep = 1.0 - self.dropout

        def draw(width):
            return ((rng.random((T, B, width)) < keep) / keep).astype(self.dtype)

        return [draw(self.embedding_size) if self.embedding_size else None] + \
            [draw(self.hidden_size) for _ in range(self.num_layers)]

    def embed(self, params, x):
        """The input of the first layer: the ids themselves (one-hot) or their embedding rows."""
        return np.take(params["E"], x, axis=0) if self.embedding_size else x

    def forward(self, params, x, state0=None, mask=None, drop=None):
        """x: (T, B) int ids; drop: dropout masks or None. Returns ((logits (T, B, V), final state), cache);
        the logits of padded steps are zeros."""
        lay = Layout(mask, *x.shape)
        (logits, final), cache = self._forward(params, x, lay, state0, drop)
        return (lay.unpack(logits), final), cache

    def _forward(self, params, x, lay, state0, drop):
        """The forward pass on the batch's packed rows (see ``cells.base.Packing``): returns
        ``((logits (N, V), final state), cache)``; states in column order."""
        state0 = self.initial_state(lay.B) if state0 is None else state0
        drop = [None if d is None else lay.pack(d) for d in (drop or [None] * (self.num_layers + 1))]
        ids = lay.pack(x)
        inp = self.embed(params, ids)
        if drop[0] is not None:
            inp = inp * drop[0]
        caches, final = [], []
        for k in range(self.num_layers):
            (hs, state), cache = self.cell.forward_packed(inp, lay.sort(state0[k]), self.layer_params(params, k),
                                                          lay.packing)
            caches.append(cache)
            final.append(lay.unsort(state))
            inp = hs if drop[k + 1] is None else hs * drop[k + 1]
        logits = inp @ params["Wy"]
        logits += params["by"]
        return (logits, final), (caches, inp, drop, ids, lay)

    def internals(self, params, x, state0=None):
        """What the network computes inside, for looking at it: ``(logits (T, B, V), layers)`` where
        ``layers[k]`` maps names to (T, B, H) arrays of layer ``k`` at every step — ``h`` for every cell,
        ``c`` and the gates ``i, f, o, g`` for an LSTM, the gates ``r, u, n`` for a GRU. No padding, no
        dropout."""
        lay = Layout(None, *x.shape)
        (logits, _), (caches, *_) = self._forward(params, x, lay, state0, None)
        return lay.unpack(logits), [{k: lay.unpack(v) for k, v in self.cell.internals_packed(c).items()}
                                    for c in caches]

    def loss(self, params, x, y, mask=None, state0=None, drop=None):
        """Mean cross-entropy in nats per (unmasked) character. Returns (loss, final state).
        No dropout unless masks are given (``drop``, e.g. for a gradient check)."""
        lay = Layout(mask, *x.shape)
        (logits, final), _ = self._forward(params, x, lay, state0, drop)
        total, _ = self._nll(logits, lay.pack(y))
        return total / _characters(x, mask), final

    @staticmethod
    def _nll(logits, y):
        """(summed negative log-likelihood in nats, log-probabilities in float64) of packed logits (N, V)
        and targets (N,)."""
        logp = log_softmax(logits.astype(np.float64, copy=False))
        return -float(logp[np.arange(len(y)), y].sum()), logp

    def loss_and_grads(self, params, x, y, mask=None, state0=None, dstate=None, rng=None, drop=None,
                       return_dstate0=False):
        """Loss (nats per character), gradients of every parameter, and the final state.

        The gradients are those of the mean loss per character (``reduction="mean"``) or of the loss
        summed over each sequence and averaged over the batch (``"sum"``: the course's loss per name).
        They come as a ``FlatParams`` (one buffer, named views). x, y: (T, B) int ids (inputs and
        next-character targets); mask: (T, B) 1/0 or None;
        state0: initial state (zeros if None); dstate: gradient flowing into the final state (None).
        rng: draws the dropout masks of this batch (training); drop: given masks instead (a gradient
        check); neither: no dropout. return_dstate0: also return the gradient of the loss with respect
        to ``state0`` (per layer, like a state), the gradient that full BPTT would pass to the batch before.

        With ``threads > 1`` the batch's sequences are split into that many shards of columns (of
        alike lengths: every k-th sequence by length), each run forward and backward in its own thread
        (NumPy releases the GIL in its loops, so the element-wise work of the cells, single-threaded in
        NumPy, runs on every core; BLAS gets one thread per shard), and the shards' gradients are summed:
        the same result as one pass up to rounding.
        """
        if drop is None and rng is not None:
            drop = self.dropout_masks(rng, *x.shape)
        T, B = x.shape
        n = _characters(x, mask)
        scale = n if self.reduction == "mean" else B   # the gradient is that of (summed loss) / scale
        shards = self.shards(B, int(n))
        if len(shards) == 1:
            total, grads, final, dstate0 = self._grads(params, x, y, Layout(mask, T, B), state0, dstate, drop,
                                                       scale)
        else:
            lay = Layout(mask, T, B)
            columns = [lay.order[positions] for positions in _interleaved(len(shards), B)]

            def shard(cols):
                return self._grads(params, x[:, cols], y[:, cols],
                                   Layout(None if mask is None else mask[:, cols], T, len(cols)),
                                   _rows(state0, cols), _rows(dstate, cols),
                                   None if drop is None else [d if d is None else d[:, cols] for d in drop], scale)
            with one_blas_thread():
                parts = list(pool(len(shards)).map(shard, columns))
            total, grads = sum(p[0] for p in parts), parts[0][1]
            for _, g, _, _ in parts[1:]:
                grads.flat += g.flat
            final, dstate0 = (_gather_rows([p[i] for p in parts], columns) for i in (2, 3))
        loss = total / n
        return (loss, grads, final, dstate0) if return_dstate0 else (loss, grads, final)

    def shards(self, batch: int, positions: int) -> list[slice]:
        """How many shards ``loss_and_grads`` splits a batch of ``batch`` sequences with ``positions`` real
        steps in all into, and their sizes (as slices): at most ``threads``, each with at least
        ``MIN_SHARD_WORK`` gate values to compute."""
        per_position = self.cell.gates * self.hidden_size
        k = max(1, min(self.threads, batch, positions * per_position // self.MIN_SHARD_WORK))
        edges = [round(i * batch / k) for i in range(k + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(edges)]

    def _grads(self, params, x, y, lay, state0, dstate, drop, scale):
        """One forward and backward pass: (summed loss in nats, gradients of summed loss / scale, final
        state, gradient of the initial state)."""
        (logits, final), (caches, top, drop, ids, lay) = self._forward(params, x, lay, state0, drop)
        y = lay.pack(y)
        total, logp = self._nll(logits, y)
        # d loss / d logits = (softmax - onehot) / scale
        dlogits = np.exp(logp)
        dlogits[np.arange(len(y)), y] -= 1
        dlogits = (dlogits / scale).astype(self.dtype, copy=False)
        grads = FlatParams.like(params, fill="empty", dtype=self.dtype)
        np.matmul(top.T, dlogits, out=grads["Wy"])
        np.sum(dlogits, axis=0, out=grads["by"])
        dhs = dlogits @ params["Wy"].T
        dstate0 = [None] * self.num_layers
        for k in reversed(range(self.num_layers)):
            if drop[k + 1] is not None:
                dhs *= drop[k + 1]
            out = {name: grads[f"l{k}.{name}"] for name in self.layer_params(params, k)}
            _, (dx, ds0) = self.cell.backward_packed(dhs, caches[k], lay.sort(None if dstate is None else dstate[k]),
                                                     out=out)
            dstate0[k] = lay.unsort(ds0)
            dhs = dx
        if self.embedding_size:
            if drop[0] is not None:
                dhs *= drop[0]
            scatter_rows(ids, dhs, self.vocab_size, out=grads["E"])
        return total, grads, final, dstate0

    def step(self, params, x_t, state):
        """One step for sampling: x_t (B,) ids, state per layer. Returns (logits (B, V), state)."""
        inp, new_state = self.embed(params, np.asarray(x_t)), []
        for k in range(self.num_layers):
            s = self.cell.step(inp, state[k], self.layer_params(params, k))
            new_state.append(s)
            inp = s[0]
        return inp @ params["Wy"] + params["by"], new_state


def nats_to_bits(nats: float) -> float:
    """Nats per character → bits per character."""
    return nats / LN2


def _characters(x, mask) -> float:
    """The number of unmasked characters of a (T, B) batch, which a loss per character divides by."""
    n = x.size if mask is None else float(np.sum(mask, dtype=np.float64))
    if n == 0:
        raise ValueError("the batch has no unmasked character")
    return n


def _interleaved(k: int, B: int) -> list[np.ndarray]:
    """Positions in a length-sorted batch of B for each of k shards, every k-th one, so that each shard
    gets long and short sequences alike (contiguous slices would give one shard all the long ones)."""
    return [np.arange(j, B, k) for j in range(k)]


def _rows(state, cols):
    """The columns ``cols`` of a per-layer state (a list of tuples of (B, H) arrays), or None."""
    return None if state is None else [tuple(a[cols] for a in layer) for layer in state]


def _gather_rows(states, columns):
    """Per-layer states of shards (of the batch's ``columns``) put back into one in column order."""
    B = sum(len(c) for c in columns)
    out = []
    for layers in zip(*states):
        arrays = []
        for parts in zip(*layers):
            a = np.empty((B,) + parts[0].shape[1:], parts[0].dtype)
            for cols, part in zip(columns, parts):
                a[cols] = part
            arrays.append(a)
        out.append(tuple(arrays))
    return out
