"""The argument checks the plugins share; each message names the option, what is allowed and what was
given (``lr must be > 0, got -1.0``), so that the framework can prefix it with the config group."""

from __future__ import annotations


def positive(name: str, value) -> float:
    """``value`` as a float, if it is > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def nonnegative(name: str, value) -> float:
    """``value`` as a float, if it is >= 0."""
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def unit_interval(name: str, value) -> float:
    """``value`` as a float, if it is in [0, 1)."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def integer(name: str, value, minimum: int) -> int:
    """``value`` as an int, if it is a whole number >= ``minimum``."""
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)
