"""Learning-rate schedules: the factor of the base learning rate at a step, a pure function of
(step, steps), so that a resumed run follows the same schedule.

    SCHEDULES.build("cosine", warmup=100)(step, steps)   # → factor in [0, 1]

Every schedule can start with a linear warm-up over ``warmup`` steps. A schedule is a dataclass: its
fields are its options, declared once (the command line's ``schedule`` group is made from them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checks import integer
from .registry import SCHEDULES


def _warm(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup else 1.0


@SCHEDULES.register("constant")
@dataclass
class Constant:
    """The base learning rate (after the warm-up)."""
    warmup: int = 0      # steps of linear warm-up from lr / warmup to lr

    def __post_init__(self):
        self.warmup = integer("warmup", self.warmup, 0)

    def __call__(self, step: int, steps: int) -> float:
        return _warm(step, self.warmup)


@SCHEDULES.register("step")
@dataclass(kw_only=True)
class StepDecay(Constant):
    """Multiply the learning rate by ``gamma`` every ``every`` steps."""
    every: int = 1000
    gamma: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        self.every, self.gamma = integer("every", self.every, 1), float(self.gamma)

    def __call__(self, step: int, steps: int) -> float:
        return _warm(step, self.warmup) * self.gamma ** (step // self.every)


@SCHEDULES.register("cosine")
@dataclass(kw_only=True)
class Cosine(Constant):
    """Cosine decay from the base learning rate (after the warm-up) to ``min_factor`` of it at the
    last step."""
    min_factor: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.min_factor <= 1:
            raise ValueError(f"min_factor must be in [0, 1], got {self.min_factor}")
        self.min_factor = float(self.min_factor)

    def __call__(self, step: int, steps: int) -> float:
        if step < self.warmup:
            return _warm(step, self.warmup)
        progress = (step - self.warmup) / max(1, steps - 1 - self.warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.min_factor + (1 - self.min_factor) * cos
