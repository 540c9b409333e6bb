"""A model reading a text: what every view of ``rnnlab.inspect`` looks at.

The model reads ``text`` one character at a time and predicts the next one: the inputs are
``text[:-1]``, the targets ``text[1:]``, so step ``t`` has read ``text[t]`` and is scored on
``text[t + 1]``. A model trained on one example per line (``lines`` data: names) was trained starting
each line from a zero state after the end-of-line start token; it reads the same way here — the state
is reset at every end of line — and a text without a leading end of line gets one, so that its first
character is scored too. A running-text model reads the whole text as one stream from a zero state; its
first character is context only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import EOL, DataError


@dataclass
class Reading:
    """What the network computed while reading ``text`` (N + 1 characters, N steps).

    x, y: (N,) input and target ids; logits: (N, V); layers[k]: name → (N, H) values of layer ``k``
    after each step (``h``; ``c``, ``i, f, o, g`` for an LSTM; ``r, u, n`` for a GRU).
    """
    text: str
    x: np.ndarray
    y: np.ndarray
    logits: np.ndarray
    layers: list
    cell: str
    chars: tuple      # the vocabulary: id → character

    def __len__(self):
        return len(self.x)

    @property
    def read(self) -> str:
        """The characters read, one per step: ``text[:-1]``."""
        return self.text[:-1]

    @property
    def scored(self) -> str:
        """The characters predicted, one per step: ``text[1:]``."""
        return self.text[1:]


def prepare_text(text: str, vocab, lines: bool, where: str = "text") -> str:
    """``text`` checked against the vocabulary and made ready to read (see the module docstring):
    an empty text, a character outside the vocabulary or nothing to score is a ``DataError``."""
    if not isinstance(text, str) or not text:
        raise DataError(f"{where} is empty: give at least {'one character' if lines else 'two characters'}")
    bad = vocab.unknown(text)
    if bad:
        raise DataError(f"{where} has characters outside the model's vocabulary: {''.join(bad)!r}; "
                        f"allowed: {''.join(vocab.chars[1:])!r} and the end of line")
    if lines and not text.startswith(EOL):
        text = EOL + text
    if len(text) < 2:
        raise DataError(f"{where} has nothing to predict: a running-text model needs at least two "
                        f"characters (the first is context only)")
    return text


def read(lm, params, vocab, text: str, lines: bool = False) -> Reading:
    """The model ``lm`` reading ``text`` (already prepared by ``prepare_text``)."""
    ids = vocab.encode(text)
    x, y = ids[:-1], ids[1:]
    starts = [0]
    if lines:  # each line from a zero state, as trained
        starts = sorted({0, *np.flatnonzero(x == vocab.chars.index(EOL)).tolist()})
    parts = []
    for a, b in zip(starts, starts[1:] + [len(x)]):
        logits, layers = lm.internals(params, x[a:b, None])
        parts.append((logits[:, 0], [{k: v[:, 0] for k, v in layer.items()} for layer in layers]))
    logits = np.concatenate([p[0] for p in parts])
    layers = [{name: np.concatenate([p[1][k][name] for p in parts]) for name in parts[0][1][k]}
              for k in range(lm.num_layers)]
    return Reading(text, x, y, logits, layers, lm.cell_name, vocab.chars)
