"""Reference losses a trained model must beat, computed from the data alone (NumPy only)."""

from __future__ import annotations

import numpy as np


def unigram_nll(train_targets: np.ndarray, eval_targets: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/char) on ``eval_targets`` of the add-one-smoothed unigram of ``train_targets``."""
    counts = np.bincount(train_targets, minlength=vocab_size).astype(np.float64) + 1
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_targets].mean())
