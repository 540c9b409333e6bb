"""Gradient flow: how much of the loss at one step reaches the hidden state k steps before it.

For a window of ``k_max + 1`` characters read from a zero state, the loss at the window's last step
``T-1`` is back-propagated through time; ``g_k = ∂loss_{T-1}/∂h_{T-1-k}`` is the whole gradient reaching
the output of step ``T-1-k`` (through every path: the recurrence, and for a lower layer of a stack, the
layers above). Its norm ``‖g_k‖`` as a function of the distance ``k`` says how far back the model can be
taught: for a plain RNN it typically shrinks geometrically (the vanishing gradient), which is why the
LSTM and the GRU exist. Many windows of held-out text, one per column of a batch, are done in one
backward pass; the curve is the mean of ``‖g_k‖`` over the windows (quantiles kept too: a few windows
can dominate a mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import softmax


@dataclass
class GradientFlow:
    """distance: (K+1,) k = 0 … K; mean, q10, q50, q90: (num_layers, K+1) statistics of ‖g_k‖ over
    the windows, layer 0 first; windows: how many windows were averaged."""
    distance: np.ndarray
    mean: np.ndarray
    q10: np.ndarray
    q50: np.ndarray
    q90: np.ndarray
    windows: int

    def relative(self, layer: int = -1) -> np.ndarray:
        """The mean curve of ``layer`` divided by its value at k = 0."""
        return self.mean[layer] / self.mean[layer][0]


def window_starts(n: int, length: int, windows: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``windows`` distinct start positions of windows of ``length`` + 1 ids (inputs and the last
    target) in a sequence of ``n`` ids, drawn by ``rng``; a ValueError if not even one fits."""
    room = n - length  # starts 0 … n - length - 1 leave a target after the window
    if room < 1:
        raise ValueError(f"the text has {n} characters: too few for a window of {length} plus its target")
    return np.sort(rng.choice(room, size=min(windows, room), replace=False))


def gradient_flow(lm, params, ids, max_distance: int = 100, windows: int = 256,
                  rng: np.random.Generator | None = None) -> GradientFlow:
    """Measure ``‖∂loss_{T-1}/∂h_{T-1-k}‖`` for k = 0 … ``max_distance`` on windows of ``ids`` (a 1-D
    array of held-out character ids) drawn by ``rng`` (seed 0 by default)."""
    ids = np.asarray(ids)
    T = max_distance + 1
    starts = window_starts(len(ids), T, windows, np.random.default_rng(0) if rng is None else rng)
    cols = starts[None, :] + np.arange(T)[:, None]
    x, y_last = ids[cols], ids[starts + T]                    # (T, B) inputs, (B,) the last targets
    B, H = len(starts), lm.hidden_size
    (logits, _), (caches, *_, layout) = lm.forward(params, x)
    p = softmax(logits[-1].astype(np.float64))
    p[np.arange(B), y_last] -= 1                              # ∂loss_{T-1}/∂logits_{T-1}, each window
    dhs = np.zeros((T, B, H), lm.dtype)
    dhs[-1] = p.astype(lm.dtype) @ params["Wy"].T
    norms = np.empty((lm.num_layers, T, B))
    for k in reversed(range(lm.num_layers)):
        dh_steps = np.empty((T, B, H), lm.dtype)
        _, (dx, _) = lm.cell.backward(dhs, (caches[k], layout), dh_steps=dh_steps)
        norms[k] = np.linalg.norm(dh_steps.astype(np.float64), axis=2)[::-1]   # row k: distance k
        dhs = dx
    q10, q50, q90 = np.quantile(norms, [0.1, 0.5, 0.9], axis=2)
    return GradientFlow(np.arange(T), norms.mean(axis=2), q10, q50, q90, B)
