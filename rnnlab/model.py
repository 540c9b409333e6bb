"""The character language model: one-hot ids → stacked cells → linear output → softmax cross-entropy.

Parameters are one flat dict of arrays: the cells' as ``"l{k}.{name}"`` (``l0.Wx``, ``l0.Wh``, …) and
the output layer's as ``Wy (H, V)``, ``by (V,)``. Shapes are time-major: ``x``, ``y``, ``mask`` are
``(T, B)``; a state is a list, one tuple of (B, H) arrays per layer.
"""

from __future__ import annotations

import math

import numpy as np

from .checks import integer
from .registry import CELLS

LN2 = math.log(2.0)


def _log_softmax(logits):
    """Row-wise log-softmax of (N, V) logits, stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class CharLM:
    """A character-level LM with ``num_layers`` stacked cells of ``hidden_size`` units.

    Example::

        lm = CharLM(vocab_size=27, cell="lstm", hidden_size=64)
        params = lm.init_params(np.random.default_rng(0))
        loss, grads, state = lm.loss_and_grads(params, x, y, mask)
    """

    def __init__(self, vocab_size: int, cell: str = "lstm", hidden_size: int = 128,
                 num_layers: int = 1, dtype=np.float32, reduction: str = "mean"):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        hidden_size, num_layers = integer("hidden_size", hidden_size, 1), integer("num_layers", num_layers, 1)
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
        return (f"CharLM(vocab_size={self.vocab_size}, cell={self.cell_name!r}, "
                f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, dtype={self.dtype.name})")

    # --------------------------------------------------------------------------------- parameters
    def init_params(self, rng: np.random.Generator) -> dict:
        """Fresh parameters drawn from ``rng``."""
        params = {}
        for k in range(self.num_layers):
            n_in = self.vocab_size if k == 0 else self.hidden_size
            for name, value in self.cell.init(n_in, self.hidden_size, rng, self.dtype).items():
                params[f"l{k}.{name}"] = value
        bound = 1.0 / math.sqrt(self.hidden_size)
        params["Wy"] = rng.uniform(-bound, bound, (self.hidden_size, self.vocab_size)).astype(self.dtype)
        params["by"] = np.zeros(self.vocab_size, self.dtype)
        return params

    def layer_params(self, params: dict, k: int) -> dict:
        prefix = f"l{k}."
        return {name[len(prefix):]: v for name, v in params.items() if name.startswith(prefix)}

    def initial_state(self, batch: int) -> list:
        """Zero state for ``batch`` sequences: one tuple of (B, H) arrays per layer."""
        return [self.cell.zero_state(batch, self.hidden_size, self.dtype) for _ in range(self.num_layers)]

    # ------------------------------------------------------------------------------ forward/backward
    def forward(self, params, x, state0=None, mask=None):
        """x: (T, B) int ids. Returns ((logits (T, B, V), final state), cache)."""
        T, B = x.shape
        state0 = self.initial_state(B) if state0 is None else state0
        inp, caches, final = x, [], []
        for k in range(self.num_layers):
            (hs, state), cache = self.cell.forward(inp, state0[k], self.layer_params(params, k), mask)
            caches.append(cache)
            final.append(state)
            inp = hs
        top = inp.reshape(T * B, self.hidden_size)
        logits = top @ params["Wy"] + params["by"]
        return (logits.reshape(T, B, -1), final), (caches, top)

    def loss(self, params, x, y, mask=None, state0=None):
        """Mean cross-entropy in nats per (unmasked) character. Returns (loss, final state)."""
        (logits, final), _ = self.forward(params, x, state0, mask)
        loss, _ = self._nll(logits, y, mask)
        return loss, final

    def _nll(self, logits, y, mask):
        T, B, V = logits.shape
        logp = _log_softmax(logits.reshape(T * B, V).astype(np.float64, copy=False))
        picked = logp[np.arange(T * B), y.reshape(-1)]
        w = np.ones(T * B) if mask is None else np.asarray(mask, np.float64).reshape(-1)
        n = w.sum()
        if n == 0:
            raise ValueError("the batch has no unmasked character")
        return float(-(picked * w).sum() / n), (logp, w, n)

    def loss_and_grads(self, params, x, y, mask=None, state0=None, dstate=None):
        """Loss (nats per character), gradients of every parameter, and the final state.

        The gradients are those of the mean loss per character (``reduction="mean"``) or of the loss
        summed over each sequence and averaged over the batch (``"sum"``: the course's loss per name).
        x, y: (T, B) int ids (inputs and next-character targets); mask: (T, B) 1/0 or None;
        state0: initial state (zeros if None); dstate: gradient flowing into the final state (None).
        """
        (logits, final), (caches, top) = self.forward(params, x, state0, mask)
        loss, (logp, w, n) = self._nll(logits, y, mask)
        T, B = x.shape
        # d loss / d logits = (softmax - onehot) * w / n
        dlogits = np.exp(logp)
        dlogits[np.arange(T * B), y.reshape(-1)] -= 1
        dlogits *= (w / (n if self.reduction == "mean" else B))[:, None]
        dlogits = dlogits.astype(self.dtype, copy=False)
        grads = {"Wy": top.T @ dlogits, "by": dlogits.sum(axis=0)}
        dhs = (dlogits @ params["Wy"].T).reshape(T, B, self.hidden_size)
        for k in reversed(range(self.num_layers)):
            g, (dx, _) = self.cell.backward(dhs, caches[k], None if dstate is None else dstate[k])
            for name, value in g.items():
                grads[f"l{k}.{name}"] = value
            dhs = dx
        return loss, grads, final

    def step(self, params, x_t, state):
        """One step for sampling: x_t (B,) ids, state per layer. Returns (logits (B, V), state)."""
        inp, new_state = x_t, []
        for k in range(self.num_layers):
            s = self.cell.step(inp, state[k], self.layer_params(params, k))
            new_state.append(s)
            inp = s[0]
        return inp @ params["Wy"] + params["by"], new_state


def nats_to_bits(nats: float) -> float:
    """Nats per character → bits per character."""
    return nats / LN2
