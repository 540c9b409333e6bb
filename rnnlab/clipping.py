"""Gradient clipping policies. A policy clips a dict of gradients in place and returns the global
L2 norm the gradients had before clipping (for logging). A policy is a dataclass: its fields are its
options, declared once (the command line's ``clip`` group is made from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .checks import positive
from .flat import FlatParams
from .registry import CLIPPERS


def global_norm(grads: dict) -> float:
    """sqrt of the sum of squares of every gradient entry: one dot product over a ``FlatParams``
    buffer, else one per array."""
    if isinstance(grads, FlatParams):
        return math.sqrt(float(np.dot(grads.flat, grads.flat)))
    return math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads.values()))


def _entries(grads: dict) -> list:
    """The arrays a clipping policy scales or clips: the one flat buffer, or every array."""
    return [grads.flat] if isinstance(grads, FlatParams) else list(grads.values())


@CLIPPERS.register("none")
@dataclass
class NoClip:
    """No clipping (the norm is still measured)."""

    def __call__(self, grads: dict) -> float:
        return global_norm(grads)


@CLIPPERS.register("value")
@dataclass
class ValueClip:
    """Element-wise clip to [-max_value, max_value], as the course's ``clip`` does."""
    max_value: float = 5.0

    def __post_init__(self):
        self.max_value = positive("max_value", self.max_value)

    def __call__(self, grads: dict) -> float:
        norm = global_norm(grads)
        for g in _entries(grads):
            np.clip(g, -self.max_value, self.max_value, out=g)
        return norm


@CLIPPERS.register("norm")
@dataclass
class NormClip:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``."""
    max_norm: float = 5.0

    def __post_init__(self):
        self.max_norm = positive("max_norm", self.max_norm)

    def __call__(self, grads: dict) -> float:
        norm = global_norm(grads)
        if norm > self.max_norm:
            scale = self.max_norm / (norm + 1e-12)
            for g in _entries(grads):
                g *= scale
        return norm
