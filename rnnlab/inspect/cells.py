"""Cells: which units track which simple property of the text.

Each property is a number per step, about the text read so far (``text[:t+1]``, the characters the state
after step ``t`` has seen) — except ``end of word``, which looks one character ahead: a unit that tracks
it anticipates the end of the word (see ``text_properties``). A unit's activation over the text (``h``, and ``c`` for an LSTM)
is scored against each property by the absolute value of their Pearson correlation ``|r|`` over the
steps: 1 for a unit that is an exact affine function of the property, 0 for no linear relation. A
property that is constant over the text (say, no quote in it) is left out: it has no correlation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import EOL

OPENING, CLOSING = "([{", ")]}"


def text_properties(read: str) -> dict[str, np.ndarray]:
    """name → (N,) float property of each step of a text whose characters read are ``read``:

    * inside quotes — between a double quote and the next one (the opening one included);
    * inside brackets — after more opening than closing brackets ``( [ {``;
    * position in line — characters since the last end of line (0 on the end of line itself);
    * position in word — letters since the last non-letter (0 on a non-letter);
    * position in sentence — characters since the last ``. ! ?`` (0 on it);
    * capitals line — the line so far has at least two letters, all upper-case (a speaker's name in a
      play, a heading);
    * end of word — this letter is the word's last (looks one character ahead).
    """
    n = len(read)
    props = {name: np.zeros(n) for name in ("inside quotes", "inside brackets", "position in line",
                                            "position in word", "position in sentence", "capitals line",
                                            "end of word")}
    quoted, depth, line, word, sentence, upper, lower = False, 0, 0, 0, 0, 0, 0
    for t, ch in enumerate(read):
        if ch == '"':
            quoted = not quoted
        depth = depth + 1 if ch in OPENING else max(depth - 1, 0) if ch in CLOSING else depth
        line = 0 if ch == EOL else line + 1
        word = word + 1 if ch.isalpha() else 0
        sentence = 0 if ch in ".!?" else sentence + 1
        upper, lower = (0, 0) if ch == EOL else (upper + ch.isupper(), lower + ch.islower())
        props["inside quotes"][t] = quoted
        props["inside brackets"][t] = depth > 0
        props["position in line"][t] = line
        props["position in word"][t] = word
        props["position in sentence"][t] = sentence
        props["capitals line"][t] = upper >= 2 and lower == 0
    letters = np.array([c.isalpha() for c in read] + [False])
    props["end of word"] = (letters[:-1] & ~letters[1:]).astype(float)
    return props


def correlations(acts: np.ndarray, prop: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``acts`` (N, H) with ``prop`` (N,); 0 for a constant
    column (NaN for all if ``prop`` is constant)."""
    a = acts.astype(np.float64) - acts.mean(axis=0)
    p = prop.astype(np.float64) - prop.mean()
    denom = np.sqrt((a * a).sum(axis=0) * (p @ p))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p @ a) / denom
    return np.where(denom > 0, r, 0.0) if p @ p > 0 else np.full(acts.shape[1], np.nan)


@dataclass(frozen=True)
class Unit:
    """One unit: ``layers[layer][kind][:, unit]``, with its correlation ``r`` to a property."""
    layer: int
    kind: str      # "h" or "c"
    unit: int
    r: float

    @property
    def name(self) -> str:
        return f"layer {self.layer} {self.kind}[{self.unit}]"


def activations(reading) -> dict[tuple[int, str], np.ndarray]:
    """(layer, kind) → (N, H) activations of the units looked at: h of every layer, and c (LSTM)."""
    return {(k, kind): layer[kind] for k, layer in enumerate(reading.layers) for kind in ("h", "c")
            if kind in layer}


def rank_units(reading, props: dict | None = None, top: int = 5) -> dict[str, list[Unit]]:
    """property → the ``top`` units of every layer (h and c) with the largest ``|r|``, best first.
    Properties constant over the text are left out."""
    props = text_properties(reading.read) if props is None else props
    acts = activations(reading)
    ranking = {}
    for name, prop in props.items():
        if np.ptp(prop) == 0:
            continue
        units = [Unit(k, kind, j, float(r)) for (k, kind), a in acts.items()
                 for j, r in enumerate(correlations(a, prop))]
        units.sort(key=lambda u: (-abs(u.r), u.layer, u.kind, u.unit))
        ranking[name] = units[:top]
    return ranking


def unit_values(reading, unit: Unit) -> np.ndarray:
    """(N,) activation of ``unit`` at each step."""
    return reading.layers[unit.layer][unit.kind][:, unit.unit]
