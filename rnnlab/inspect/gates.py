"""Gates: how often each gate unit is saturated — nearly shut (left-saturated, value < 0.1) or wide
open (right-saturated, > 0.9) — as in Karpathy, Johnson and Fei-Fei (2015), figure 3.

Only the sigmoid gates count: ``i, f, o`` of an LSTM, ``r, u`` of a GRU (``g`` and ``n`` are tanh
candidates, not gates). A plain RNN has none.
"""

from __future__ import annotations

import numpy as np

GATES = {"lstm": ("i", "f", "o"), "lnlstm": ("i", "f", "o"), "gru": ("r", "u")}
GATE_NAMES = {"i": "input", "f": "forget", "o": "output", "r": "reset", "u": "update"}


def saturation(values: np.ndarray, low: float = 0.1, high: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """For gate values (N, H): the fraction of the N steps each unit is below ``low`` and above
    ``high``, as two (H,) arrays (left, right)."""
    values = np.asarray(values)
    return (values < low).mean(axis=0), (values > high).mean(axis=0)


def gate_saturation(reading, low: float = 0.1, high: float = 0.9) -> list[dict]:
    """Per layer, gate name → (left (H,), right (H,)) fractions over the reading. Raises ValueError
    for a cell without gates."""
    names = GATES.get(reading.cell)
    if names is None:
        raise ValueError(f"a {reading.cell!r} cell has no gates; the gates view needs a gated cell ({', '.join(GATES)})")
    return [{g: saturation(layer[g], low, high) for g in names} for layer in reading.layers]
