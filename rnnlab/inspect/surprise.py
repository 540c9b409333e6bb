"""Surprise: how many nats each character costs the model, and what it expected instead.

The loss of the character at step ``t`` is ``-log p(text[t+1] | text[:t+1])`` in nats (its mean over a
text is the model's loss per character, the ``val_nll`` of training on held-out text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import log_softmax


@dataclass
class Surprise:
    """loss: (N,) nats per scored character; guesses: (N, k) the k likeliest next characters' ids,
    most likely first, with their probabilities ``probs`` (N, k)."""
    loss: np.ndarray
    guesses: np.ndarray
    probs: np.ndarray

    @property
    def mean(self) -> float:
        """Mean loss in nats per character."""
        return float(self.loss.mean())


def surprise(reading, k: int = 5) -> Surprise:
    """The loss of each character of a ``Reading`` and the model's top-``k`` guesses at each step."""
    logp = log_softmax(reading.logits.astype(np.float64))
    n = len(reading.y)
    loss = -logp[np.arange(n), reading.y]
    k = min(k, logp.shape[1])
    top = np.argsort(-logp, axis=1, kind="stable")[:, :k]
    return Surprise(loss, top, np.exp(np.take_along_axis(logp, top, axis=1)))
