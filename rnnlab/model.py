"""The character language model: ids → (one-hot or embedding) → stacked cells → linear output → softmax
cross-entropy.

Parameters are one flat dict of arrays: the embedding ``E (V, D)`` when there is one, the cells' as
``"l{k}.{name}"`` (``l0.Wx``, ``l0.Wh``, …) and the output layer's as ``Wy (H, V)``, ``by (V,)`` — made
by ``init_params`` as a ``FlatParams`` (views into one buffer; gradients come the same way). Shapes
are time-major: ``x``, ``y``, ``mask`` are ``(T, B)``; a state is a list, one tuple of (B, H) arrays per
layer. A padded batch is packed once on the way in (``cells.base.Layout``): every layer, the output
layer and the loss then work on the N real positions only, and results come back in column order.

Regularisers (training only: evaluation and sampling use the whole network, unpenalised):

- **dropout** (inverted: kept entries are scaled by 1/(1-p)) on the non-recurrent connections, as in
  Zaremba et al. (2014): the embedding output, the output of every layer into the next one, and the top
  layer's output into the softmax layer — a new mask at every step, or with ``locked_dropout`` one mask
  per sequence for all its steps (variational dropout, Gal & Ghahramani 2016);
- **weight_dropout** (DropConnect on the recurrent weights, Merity et al. 2017): one mask on each layer's
  ``Wh`` per batch, the same at every step, so the per-step product is the usual one with other weights;
- **embedding_dropout**: whole characters dropped for a batch — rows of ``E``, or of the first layer's
  ``Wx`` for a one-hot input (its row gather is the embedding);
- **ar** and **tar** (activation regularisation): ``ar · mean(h²)`` of the top layer's (dropped) output
  and ``tar · mean((h_t − h_{t−1})²)`` of its raw output within a batch, both means over the batch's
  characters × units, added to the loss that the gradients are of (the reported loss stays the NLL).

The masks of one batch are a ``Masks``; ``dropout_masks`` draws them (a pure function of the ``rng``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from . import split
from .cells.base import Layout, mask_lengths, scatter_rows
from .checks import integer, nonnegative, unit_interval
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


@dataclass
class Masks:
    """The regularisation masks of one training batch, inverted (kept entries scaled by 1/(1-p)).

    ``units``: ``num_layers + 1`` dropout masks — ``units[0]`` for the embedding output (None without an
    embedding), ``units[k + 1]`` for the output of layer ``k`` — each (T, B, W), or (1, B, W) when locked;
    ``weights``: per layer a (H, G*H) mask of ``Wh``; ``chars``: a (V,) mask of the input rows."""
    units: list | None = None
    weights: list | None = None
    chars: np.ndarray | None = None


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
    # A unit split (two processes, ``rnnlab.split``) pays from this many multiply-adds in a batch's recurrent
    # products (its real positions × gates × hidden size²), or from this many parameters (its optimizer step
    # is split too); below both, its fixed costs (a command to the second process on each batch, a barrier
    # at each step, more calls) exceed what halving the work saves (measured for the three cells:
    # experiments/benchmarks/README.md, sessions 11 and 12).
    MIN_SPLIT_WORK, MIN_SPLIT_PARAMS = 12_000_000, 500_000
    # Up to this many multiply-adds a row in a step's recurrent product (gates × hidden size²: an LSTM of 128
    # units, a GRU of 147, an RNN of 256; at any width when the units cannot be split: ``halves_pay``), a batch
    # with at least this many gate values (real positions × gates × hidden size) is split by its sequences
    # instead, the two halves run by two processes with the whole network each (``split.UnitSplit.halves``):
    # no waits at every step, the elements of every pass halved; the per-step products' fixed costs paid by
    # both (which is what makes the unit split the faster one for larger products: a process's half of a
    # step's product has to outweigh a barrier). Measured: experiments/benchmarks/README.md, sessions 14, 21
    # and 23 (the RNN of 256 units: 1.15–1.26x by sequences).
    HALVES_MAX_WORK, MIN_HALVES_WORK = 65_536, 50_000
    # Evaluation, run in this process while a split's second one sleeps, gets BLAS's threads back
    # (``threads.blas_threads_back``) from this many multiply-adds a character in the recurrent products
    # (gates × hidden size² × layers): a validation pass of LSTM 512 (1 M) 1.4–1.6x faster on two threads,
    # 384 × 2 1.14–1.26x; at 256 units (262 k) it gains ~10 ms, what OpenBLAS's second thread, spinning idle
    # after it, takes from the split's next batch; at 64 and 128 nothing (experiments/benchmarks/README.md,
    # session 22).
    EVAL_THREADS_MIN_WORK = 500_000
    REGULARISERS = ("dropout", "locked_dropout", "weight_dropout", "embedding_dropout", "ar", "tar")

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 128,
                 num_layers: int = 1, dtype=np.float32, reduction: str = "mean", dropout: float = 0.0,
                 embedding_size: int = 0, threads: int = 1, locked_dropout: bool = False,
                 weight_dropout: float = 0.0, embedding_dropout: float = 0.0, ar: float = 0.0, tar: float = 0.0):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        hidden_size, num_layers = integer("hidden_size", hidden_size, 1), integer("num_layers", num_layers, 1)
        self.dropout = unit_interval("dropout", dropout)
        self.locked_dropout = bool(locked_dropout)
        self.weight_dropout = unit_interval("weight_dropout", weight_dropout)
        self.embedding_dropout = unit_interval("embedding_dropout", embedding_dropout)
        self.ar, self.tar = nonnegative("ar", ar), nonnegative("tar", tar)
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
        extra = "".join(f", {k}={getattr(self, k)}" for k in ("embedding_size",) + self.REGULARISERS
                        if getattr(self, k))
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
    @property
    def draws_masks(self) -> bool:
        """Whether training batches draw masks (any dropout of units, weights or characters)."""
        return bool(self.dropout or self.weight_dropout or self.embedding_dropout)

    def dropout_masks(self, rng: np.random.Generator, T: int, B: int) -> Masks | None:
        """Fresh masks for a (T, B) batch, drawn from ``rng`` (None when no dropout is on): see ``Masks``
        and the module docstring for what each one drops."""
        if not self.draws_masks:
            return None
        masks = Masks()
        if self.dropout:
            shape = (1 if self.locked_dropout else T, B)
            masks.units = [_keep(rng, shape + (self.embedding_size,), self.dropout, self.dtype)
                           if self.embedding_size else None] + \
                [_keep(rng, shape + (self.hidden_size,), self.dropout, self.dtype) for _ in range(self.num_layers)]
        if self.weight_dropout:
            width = self.cell.gates * self.hidden_size
            masks.weights = [_keep(rng, (self.hidden_size, width), self.weight_dropout, self.dtype)
                             for _ in range(self.num_layers)]
        if self.embedding_dropout:
            masks.chars = _keep(rng, (self.vocab_size,), self.embedding_dropout, self.dtype)
        return masks

    def masked(self, params, masks: Masks | None):
        """The parameters a batch computes with: ``params`` with the batch's DropConnect and embedding
        dropout applied (a dict sharing the untouched arrays), or ``params`` itself."""
        if masks is None or (masks.weights is None and masks.chars is None):
            return params
        out = dict(params)
        for k, m in enumerate(masks.weights or ()):
            out[f"l{k}.Wh"] = params[f"l{k}.Wh"] * m
        if masks.chars is not None:
            key = self._char_rows
            out[key] = params[key] * masks.chars[:, None]
        return out

    @property
    def _char_rows(self) -> str:
        """The parameter whose rows are the characters' inputs: E, or the first layer's Wx (one-hot)."""
        return "E" if self.embedding_size else "l0.Wx"

    def _masked_grads(self, grads, masks: Masks | None) -> None:
        """In place: gradients with respect to ``masked(params)`` → with respect to ``params``."""
        if masks is None:
            return
        for k, m in enumerate(masks.weights or ()):
            grads[f"l{k}.Wh"] *= m
        if masks.chars is not None:
            grads[self._char_rows] *= masks.chars[:, None]

    def embed(self, params, x):
        """The input of the first layer: the ids themselves (one-hot) or their embedding rows."""
        return np.take(params["E"], x, axis=0) if self.embedding_size else x

    def forward(self, params, x, state0=None, mask=None, drop=None):
        """x: (T, B) int ids; drop: the batch's ``Masks`` or None. Returns ((logits (T, B, V), final
        state), cache); the logits of padded steps are zeros."""
        lay = Layout(mask, *x.shape)
        drop = _as_masks(drop)
        (logits, final), cache = self._forward(self.masked(params, drop), x, lay, state0, drop and drop.units)
        return (lay.unpack(logits), final), cache

    def _forward(self, params, x, lay, state0, units):
        """The forward pass on the batch's packed rows (see ``cells.base.Packing``), with the dropout
        masks ``units`` (or None): returns ``((logits (N, V), final state), cache)``; states in column
        order. ``params`` are the masked ones (``masked``)."""
        state0 = self.initial_state(lay.B) if state0 is None else state0
        units = [None if d is None else lay.pack(np.broadcast_to(d, (lay.T, lay.B, d.shape[2])))
                 for d in (units or [None] * (self.num_layers + 1))]
        ids = lay.pack(x)
        inp = self.embed(params, ids)
        if units[0] is not None:
            inp = inp * units[0]
        caches, final = [], []
        for k in range(self.num_layers):
            (hs, state), cache = self.cell.forward_packed(inp, lay.sort(state0[k]), self.layer_params(params, k),
                                                          lay.packing)
            caches.append(cache)
            final.append(lay.unsort(state))
            inp = hs if units[k + 1] is None else hs * units[k + 1]
        logits = inp @ params["Wy"]
        logits += params["by"]
        return (logits, final), (caches, inp, units, ids, hs, lay)

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
        drop = _as_masks(drop)
        (logits, final), _ = self._forward(self.masked(params, drop), x, lay, state0, drop and drop.units)
        total, _ = self._nll(logits, lay.pack(y))
        return total / _characters(x, mask), final

    def objective(self, params, x, y, mask=None, state0=None, drop=None) -> float:
        """What ``loss_and_grads``' gradients are the gradients of: the summed NLL over the reduction's
        scale (characters, or sequences) plus the ``ar``/``tar`` penalties, with the masks ``drop``."""
        lay = Layout(mask, *x.shape)
        drop = _as_masks(drop)
        (logits, _), (_, top, _, _, raw, lay) = self._forward(self.masked(params, drop), x, lay, state0,
                                                              drop and drop.units)
        n = _characters(x, mask)
        total, _ = self._nll(logits, lay.pack(y))
        return total / (n if self.reduction == "mean" else x.shape[1]) + self._penalties(top, raw, lay, n)[0]

    def _penalties(self, top, raw, lay, n):
        """(AR + TAR penalty, its gradient with respect to the dropped top output, … to the raw one) of the
        packed top-layer outputs; the gradients are None when their term is off."""
        scale = 1.0 / (n * self.hidden_size)
        value, dtop, draw = 0.0, None, None
        if self.ar:
            value += self.ar * scale * float(np.vdot(top, top))
            dtop = top * self.dtype.type(2 * self.ar * scale)
        if self.tar:
            pk = lay.packing
            cur = np.nonzero(pk.step_of > 0)[0]           # rows with a previous step in this batch …
            prev = pk.prev[cur] - pk.B                    # … and that step's row (each row at most once)
            diff = raw[cur] - raw[prev]
            value += self.tar * scale * float(np.vdot(diff, diff))
            diff *= self.dtype.type(2 * self.tar * scale)
            draw = np.zeros_like(raw)
            draw[cur] += diff
            draw[prev] -= diff
        return value, dtop, draw

    @staticmethod
    def _nll(logits, y, probabilities: bool = False):
        """(summed negative log-likelihood in nats, the softmax (V, N) in float64 or None) of packed logits
        (N, V) and targets (N,): log p_y = z_y - max - log Σ exp(z - max), the log taken of N sums only."""
        shifted, p, sums = _exponentials(logits)
        total = float(np.log(sums).sum() - shifted[y, np.arange(len(y))].sum())
        if not probabilities:
            return total, None
        p /= sums
        return total, p

    def mc_loss(self, params, x, y, mask=None, states=None, samples: int = 1, rng=None):
        """Monte Carlo dropout (Gal & Ghahramani 2016): the loss in nats per (unmasked) character of the
        next-character probabilities averaged over ``samples`` draws of the training masks
        (``dropout_masks(rng, …)``, each applied as in training). ``states``: the initial state of each
        draw (a list), or None for zeros. Returns (loss, the final state of each draw)."""
        lay = Layout(mask, *x.shape)
        y = lay.pack(y)
        p_y, finals = np.zeros(len(y)), []
        for k in range(samples):
            drop = self.dropout_masks(rng, *x.shape)
            (logits, final), _ = self._forward(self.masked(params, drop), x, lay, None if states is None else states[k],
                                               drop and drop.units)
            _, p, sums = _exponentials(logits)
            p_y += p[y, np.arange(len(y))] / sums
            finals.append(final)
        return -float(np.log(p_y / samples).sum()) / _characters(x, mask), finals

    def loss_and_grads(self, params, x, y, mask=None, state0=None, dstate=None, rng=None, drop=None,
                       return_dstate0=False):
        """Loss (nats per character), gradients of every parameter, and the final state.

        The gradients are those of the mean loss per character (``reduction="mean"``) or of the loss
        summed over each sequence and averaged over the batch (``"sum"``: the course's loss per name),
        plus the ``ar``/``tar`` penalties (``objective``); the loss returned is the NLL alone.
        They come as a ``FlatParams`` (one buffer, named views). x, y: (T, B) int ids (inputs and
        next-character targets); mask: (T, B) 1/0 or None;
        state0: initial state (zeros if None); dstate: gradient flowing into the final state (None).
        rng: draws the masks of this batch (training); drop: given ``Masks`` instead (a gradient
        check); neither: no dropout. return_dstate0: also return the gradient of the loss with respect
        to ``state0`` (per layer, like a state), the gradient that full BPTT would pass to the batch before.

        With ``threads >= 2``, a batch runs in two processes (``rnnlab.split``): split by its sequences when
        ``halves_pay`` (any model), else by its hidden units when the model ``splits_units`` and
        ``split_pays``. Otherwise (a gradient passed into the final state or asked of the initial one, or
        too little work), with ``threads > 1`` the batch's sequences are split into that many shards of columns (of
        alike lengths: every k-th sequence by length), each run forward and backward in its own thread
        (NumPy releases the GIL in its loops, so the element-wise work of the cells, single-threaded in
        NumPy, runs on every core; BLAS gets one thread per shard), and the shards' gradients are summed:
        the same result as one pass up to rounding.
        """
        drop = _as_masks(drop)
        if drop is None and rng is not None:
            drop = self.dropout_masks(rng, *x.shape)
        T, B = x.shape
        n = _characters(x, mask)
        scale = n if self.reduction == "mean" else B   # the gradient is that of (summed loss) / scale
        shards = self.shards(B, int(n))
        used, units = self.masked(params, drop), drop and drop.units
        two = dstate is None and not return_dstate0        # (neither split passes a gradient between batches)
        if two and self.halves_pay(B, n):
            mask = np.ones((T, B), np.int8) if mask is None else mask
            order = np.argsort(-mask_lengths(mask, T, B), kind="stable")   # each half: long and short ones
            columns = [order[positions] for positions in _interleaved(2, B)]
            total, grads, finals = self._unit_split().halves(used, x, y, mask, columns, state0, scale, n, units)
            final, dstate0 = _gather_rows(finals, columns), None
        elif two and self.splits_units and units is None and self.split_pays(n):
            lay = Layout(mask, T, B)
            total, grads, final = self._unit_split().loss_and_grads(
                used, lay.pack(x), lay.pack(y), lay.packing, lay.sort(None if state0 is None else state0[0]), scale)
            final, dstate0 = [lay.unsort(final)], None
        elif len(shards) == 1:
            total, grads, final, dstate0 = self._grads(used, x, y, Layout(mask, T, B), state0, dstate, units,
                                                       scale, n, state_grad=return_dstate0)
        else:
            lay = Layout(mask, T, B)
            columns = [lay.order[positions] for positions in _interleaved(len(shards), B)]

            def shard(cols):
                return self._grads(used, x[:, cols], y[:, cols],
                                   Layout(None if mask is None else mask[:, cols], T, len(cols)),
                                   _rows(state0, cols), _rows(dstate, cols),
                                   None if units is None else [d if d is None else d[:, cols] for d in units],
                                   scale, n, state_grad=return_dstate0)
            with one_blas_thread():
                parts = list(pool(len(shards)).map(shard, columns))
            total, grads = sum(p[0] for p in parts), parts[0][1]
            for _, g, _, _ in parts[1:]:
                grads.flat += g.flat
            final = _gather_rows([p[2] for p in parts], columns)
            dstate0 = _gather_rows([p[3] for p in parts], columns) if return_dstate0 else None
        self._masked_grads(grads, drop)
        loss = total / n
        return (loss, grads, final, dstate0) if return_dstate0 else (loss, grads, final)

    @property
    def splits_units(self) -> bool:
        """Whether training batches split the hidden units between two processes (``rnnlab.split``; those
        with too little work (``split_pays``), dropout masks of units or a gradient into the final state
        do not): with ``threads >= 2``, for a cell that supports it (LSTM, GRU), one layer on a one-hot
        input, no dropout of units, no activation regularisation, an even number of units, on a platform
        that can."""
        return (self.threads >= 2 and self.cell.splits_units and self.num_layers == 1 and not self.embedding_size
                and not self.dropout and not (self.ar or self.tar) and self.hidden_size % 2 == 0
                and split.available())

    @property
    def row_work(self) -> int:
        """Multiply-adds of one row (a sequence's step) in a layer's recurrent product: gates × hidden size²."""
        return self.cell.gates * self.hidden_size ** 2

    def split_pays(self, positions: float) -> bool:
        """Whether a batch of ``positions`` real steps in all has the work for a unit split to pay."""
        G, H, V = self.cell.gates, self.hidden_size, self.vocab_size
        params = G * H * (V + H + 1) + H * (V + 1)        # about: the cell's and the output layer's
        return positions * self.row_work >= self.MIN_SPLIT_WORK or params >= self.MIN_SPLIT_PARAMS

    def eval_threads_pay(self) -> bool:
        """Whether evaluation takes BLAS's threads back while a split holds them (``EVAL_THREADS_MIN_WORK``)."""
        return self.row_work * self.num_layers >= self.EVAL_THREADS_MIN_WORK

    def halves_pay(self, batch: int, positions: float) -> bool:
        """Whether a batch of ``batch`` sequences and ``positions`` real steps in all is split by its sequences
        between two processes (``split.UnitSplit.halves``): with ``threads >= 2`` on a platform that can,
        up to ``HALVES_MAX_WORK`` multiply-adds a row in a step's product for a model whose units could be
        split instead (larger, the unit split is the faster), at any size for one whose units cannot (stacked
        layers, dropout of units, activation regularisation, the layer-normalised LSTM: the presets)."""
        return (self.threads >= 2 and split.available() and batch >= 2
                and (self.row_work <= self.HALVES_MAX_WORK or not self.splits_units)
                and positions * self.cell.gates * self.hidden_size >= self.MIN_HALVES_WORK)

    def _unit_split(self) -> "split.UnitSplit":
        if self.__dict__.get("_split") is None:
            self._split = split.UnitSplit(self)
        return self._split

    def update(self, optimizer, params, grads) -> None:
        """``optimizer.step(params, grads)``; when the batch split the units between processes, the step's
        element-wise passes are split between them too (``split.UnitSplit.update``)."""
        if self.__dict__.get("_split") is not None:
            self._unit_split().update(optimizer, params, grads)
        else:
            optimizer.step(params, grads)

    def close(self) -> None:
        """End the unit split's second process, if any (a later batch starts a new one); while it lives,
        BLAS runs on one thread in this process (see ``threads.hold_one_blas_thread``)."""
        if self.__dict__.get("_split") is not None:
            self._split.stop()

    def __getstate__(self):
        """Pickled (sweeps, model files) without the unit split's worker process."""
        return {k: v for k, v in self.__dict__.items() if k != "_split"}

    def shards(self, batch: int, positions: int) -> list[slice]:
        """How many shards ``loss_and_grads`` splits a batch of ``batch`` sequences with ``positions`` real
        steps in all into, and their sizes (as slices): at most ``threads``, each with at least
        ``MIN_SHARD_WORK`` gate values to compute."""
        per_position = self.cell.gates * self.hidden_size
        k = max(1, min(self.threads, batch, positions * per_position // self.MIN_SHARD_WORK))
        edges = [round(i * batch / k) for i in range(k + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(edges)]

    def _grads(self, params, x, y, lay, state0, dstate, units, scale, n, state_grad=False):
        """One forward and backward pass: (summed loss in nats, gradients of summed loss / scale +
        penalties (normalised by the whole batch's ``n`` characters), final state, gradient of the
        initial state per layer — computed when ``state_grad``, else None)."""
        (logits, final), (caches, top, units, ids, raw, lay) = self._forward(params, x, lay, state0, units)
        y = lay.pack(y)
        total, dlogits = output_gradient(logits, y, scale, self.dtype)
        grads = FlatParams.like(params, fill="empty", dtype=self.dtype)
        np.matmul(top.T, dlogits.T, out=grads["Wy"])
        np.sum(dlogits, axis=1, out=grads["by"])
        dhs = np.matmul(dlogits.T, params["Wy"].T)
        _, dtop, draw = self._penalties(top, raw, lay, n) if self.ar or self.tar else (0, None, None)
        if dtop is not None:
            dhs += dtop
        dstate0 = [None] * self.num_layers
        for k in reversed(range(self.num_layers)):
            if units[k + 1] is not None:
                dhs *= units[k + 1]
            if draw is not None and k == self.num_layers - 1:
                dhs += draw
            out = {name: grads[f"l{k}.{name}"] for name in self.layer_params(params, k)}
            _, (dx, ds0) = self.cell.backward_packed(dhs, caches[k], lay.sort(None if dstate is None else dstate[k]),
                                                     out=out, state_grad=state_grad)
            dstate0[k] = lay.unsort(ds0)
            dhs = dx
        if self.embedding_size:
            if units[0] is not None:
                dhs *= units[0]
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


def output_gradient(logits, y, scale: float, dtype):
    """The summed NLL in nats of packed logits (N, V) and targets (N,), and the gradient of NLL / scale
    with respect to the logits, (softmax - onehot) / scale, transposed: (V, N) in ``dtype``."""
    total, dlogits = CharLM._nll(logits, y, probabilities=True)
    dlogits[y, np.arange(len(y))] -= 1
    dlogits *= 1.0 / scale
    return total, dlogits.astype(dtype, copy=False)


def nats_to_bits(nats: float) -> float:
    """Nats per character → bits per character."""
    return nats / LN2


def _characters(x, mask) -> float:
    """The number of unmasked characters of a (T, B) batch, which a loss per character divides by."""
    n = x.size if mask is None else float(np.sum(mask, dtype=np.float64))
    if n == 0:
        raise ValueError("the batch has no unmasked character")
    return n


def _exponentials(logits):
    """For packed logits (N, V): (z - max, exp(z - max), Σ exp(z - max)), transposed — (V, N), (V, N), (N,) —
    in float64. Transposed, the max and the sums over V run along contiguous rows of N values, several
    times faster than over the V values of each row of an (N, V) array."""
    shifted = np.array(logits.T, np.float64, order="C")
    shifted -= shifted.max(axis=0)
    p = np.exp(shifted)
    return shifted, p, p.sum(axis=0)


def _keep(rng, shape, p: float, dtype):
    """An inverted dropout mask: each entry kept (1 / (1 - p)) with probability 1 - p, else 0."""
    keep = 1.0 - p
    return ((rng.random(shape) < keep) / keep).astype(dtype)


def _as_masks(drop) -> Masks | None:
    """``drop`` as ``Masks``: a plain list is the dropout masks of the units."""
    return Masks(units=list(drop)) if isinstance(drop, (list, tuple)) else drop


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
