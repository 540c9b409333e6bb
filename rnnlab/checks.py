"""The argument checks the plugins and the training loop share; each message names the option, what is
allowed and what was given (``lr must be > 0, got -1.0``), so that the framework can prefix it with the
config group."""

from __future__ import annotations

import math
from dataclasses import field, fields


def positive(name: str, value) -> float:
    """``value`` as a float, if it is finite and > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return _finite(name, value)


def nonnegative(name: str, value) -> float:
    """``value`` as a float, if it is finite and >= 0."""
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return _finite(name, value)


def _finite(name: str, value) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
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


def option(default, doc: str, rule=None, zero: str | None = None):
    """A dataclass field declaring an option once: its default, what it means (``doc``) and the rule its
    value follows: ``"> 0"``, ``">= 0"``, or the allowed values as {value: what it means or None};
    ``zero`` says what 0 means (``"never"``)."""
    return field(default=default, metadata={"doc": doc, "rule": rule, "zero": zero})


def check_options(options) -> None:
    """Refuse the first field of the dataclass instance ``options`` that breaks its rule (see ``option``),
    with a ``ValueError`` naming the option, what is allowed and what was given."""
    for f in fields(options):
        rule, zero, value = f.metadata.get("rule"), f.metadata.get("zero"), getattr(options, f.name)
        if isinstance(rule, dict):
            if value not in rule:
                allowed = " or ".join(f"{k} ({v})" if v else k for k, v in rule.items())
                raise ValueError(f"{f.name} must be {allowed}, got {value!r}")
        elif rule is not None and not (value > 0 if rule == "> 0" else value >= 0):
            raise ValueError(f"{f.name} must be {rule}{f' (0: {zero})' if zero else ''}, got {value}")
        elif rule is not None:
            _finite(f.name, value)
