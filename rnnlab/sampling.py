"""Samplers turn a step's logits into the next character, and ``generate`` runs a model with them.

    names = generate(lm, params, vocab, SAMPLERS.build("topk", k=5), rng, n=10)

A sampler is a dataclass: its fields are its options, declared once (the command line's ``sampler``
group is made from them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import integer, positive
from .model import softmax
from .registry import SAMPLERS


def _draw(probs, rng):
    """One index per row of ``probs`` (B, V), by inverse CDF with one uniform per row."""
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[0])[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), probs.shape[-1] - 1)


class Sampler:
    """What the samplers share: the probabilities softmax(logits / temperature), one draw per row."""
    temperature = 1.0

    def probs(self, logits):
        return softmax(np.asarray(logits, np.float64) / self.temperature)

    def __call__(self, logits, rng):
        return _draw(self.probs(logits), rng)


@SAMPLERS.register("softmax")
@dataclass
class SoftmaxSampler(Sampler):
    """Sample from softmax(logits / temperature)."""
    temperature: float = 1.0

    def __post_init__(self):
        self.temperature = positive("temperature", self.temperature)


@SAMPLERS.register("greedy")
@dataclass
class GreedySampler(Sampler):
    """Always the most likely character (deterministic)."""

    def __call__(self, logits, rng):
        return np.argmax(logits, axis=-1)


@SAMPLERS.register("topk")
@dataclass(kw_only=True)
class TopKSampler(SoftmaxSampler):
    """Sample among the ``k`` most likely characters, renormalised."""
    k: int = 5

    def __post_init__(self):
        super().__post_init__()
        self.k = integer("k", self.k, 1)

    def probs(self, logits):
        p = super().probs(logits)
        k = min(self.k, p.shape[-1])
        kth = np.sort(p, axis=-1)[:, -k][:, None]
        p = np.where(p >= kth, p, 0.0)
        return p / p.sum(axis=-1, keepdims=True)


@SAMPLERS.register("topp")
@dataclass(kw_only=True)
class TopPSampler(SoftmaxSampler):
    """Nucleus sampling: the smallest set of most likely characters whose mass reaches ``p``."""
    p: float = 0.9

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.p <= 1:
            raise ValueError(f"p must be in (0, 1], got {self.p}")
        self.p = float(self.p)

    def probs(self, logits):
        probs = super().probs(logits)
        order = np.argsort(-probs, axis=-1)
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        mass_before = np.cumsum(sorted_p, axis=-1) - sorted_p
        keep_sorted = mass_before < self.p          # always keeps the most likely character
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        return probs / probs.sum(axis=-1, keepdims=True)


def generate(lm, params, vocab, sampler, rng: np.random.Generator, n: int = 10, prime: str = "",
             max_len: int = 50, stop_at_eol: bool = True, min_len: int = 0) -> list[str]:
    """Generate ``n`` sequences in parallel, each starting with ``prime``.

    Each sequence starts from the end-of-line token (the start of a name), is fed ``prime``, then
    sampled one character at a time until the end-of-line character (with ``stop_at_eol``) or until
    ``max_len`` sampled characters. ``min_len``: the end-of-line character cannot end a text shorter
    than this (prime included), e.g. 1 for no empty name. Returns the texts, ``prime`` included,
    without the final newline.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    prime_ids = vocab.encode(prime) if prime else np.zeros(0, np.int64)
    state = lm.initial_state(n)
    x = np.zeros(n, np.int64)  # the EOL start token
    for c in prime_ids:
        _, state = lm.step(params, x, state)
        x = np.full(n, c, np.int64)
    out = np.zeros((max_len, n), np.int64)
    done = np.zeros(n, bool)
    for t in range(max_len):
        logits, state = lm.step(params, x, state)
        if stop_at_eol and len(prime) + t < min_len:
            logits = logits.copy()
            logits[:, 0] = -np.inf   # too short to end
        x = np.asarray(sampler(logits, rng), np.int64)
        x[done] = 0
        out[t] = x
        if stop_at_eol:
            done |= x == 0
            if done.all():
                break
    texts = []
    for b in range(n):
        ids = out[:, b]
        if stop_at_eol:
            ends = np.flatnonzero(ids == 0)
            ids = ids[: ends[0]] if len(ends) else ids
        texts.append(prime + vocab.decode(ids))
    return texts
