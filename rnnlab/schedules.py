"""Learning-rate schedules: the factor of the base learning rate at a step, a pure function of
(step, steps), so that a resumed run follows the same schedule.

    SCHEDULES.build("cosine", warmup=100)(step, steps)   # → factor in [0, 1]

Every schedule can start with a linear warm-up over ``warmup`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checks import integer
from .registry import SCHEDULES, plugin_repr


def _warm(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


@SCHEDULES.register("constant")
class Constant:
    """The base learning rate (after the warm-up)."""

    @dataclass
    class Config:
        warmup: int = 0

    def __init__(self, warmup: int = 0):
        self.warmup = integer("warmup", warmup, 0)

    def __call__(self, step: int, steps: int) -> float:
        return _warm(step, self.warmup)

    def __repr__(self):
        return plugin_repr(self)


@SCHEDULES.register("step")
class StepDecay(Constant):
    """Multiply the learning rate by ``gamma`` every ``every`` steps."""

    @dataclass
    class Config:
        every: int = 1000
        gamma: float = 0.5
        warmup: int = 0

    def __init__(self, every: int = 1000, gamma: float = 0.5, warmup: int = 0):
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.every, self.gamma = integer("every", every, 1), float(gamma)
        self.warmup = integer("warmup", warmup, 0)

    def __call__(self, step: int, steps: int) -> float:
        return _warm(step, self.warmup) * self.gamma ** (step // self.every)


@SCHEDULES.register("cosine")
class Cosine(Constant):
    """Cosine decay from the base learning rate (after the warm-up) to ``min_factor`` of it at the
    last step."""

    @dataclass
    class Config:
        warmup: int = 0
        min_factor: float = 0.0

    def __init__(self, warmup: int = 0, min_factor: float = 0.0):
        if not 0 <= min_factor <= 1:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
        self.warmup, self.min_factor = integer("warmup", warmup, 0), float(min_factor)

    def __call__(self, step: int, steps: int) -> float:
        if step < self.warmup:
            return _warm(step, self.warmup)
        progress = (step - self.warmup) / max(1, steps - 1 - self.warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.min_factor + (1 - self.min_factor) * cos
