"""Vocabulary, corpora, splits and batches.

Two kinds of dataset, registered in ``DATASETS`` under their ``kind``:

* ``lines`` — one example per line (names). Each example is fed as ``[EOL] + chars`` and predicts
  ``chars + [EOL]``; a batch pads examples to the longest and masks the padding.
* ``text`` — running text, trained with truncated BPTT: the training text is cut into ``batch_size``
  parallel streams read in consecutive chunks of ``seq_len`` characters; the hidden state is carried
  from one chunk to the next and reset when the streams start again.

The vocabulary is the sorted set of characters with the end-of-line ``"\\n"`` always at index 0, as in
the course. Splits are deterministic functions of the seed. Batches are ``Batch(x, y, mask, reset)``
with time-major ``(T, B)`` arrays; ``reset`` says whether the hidden state starts from zero.

Whether a dataset holds one example per line is decided in one place, ``ends_at_eol(kind)``: its
samples then end at the end of a line and can be compared with its examples.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from .registry import DATASETS

EOL = "\n"
LINES, TEXT = "lines", "text"     # the built-in dataset kinds
_HERE = Path(__file__).resolve().parent
# Installed, the datasets live in the package rnnlab.builtin; in a source checkout, in the top-level data/.
BUILTIN_DIR = _HERE / "builtin" if (_HERE / "builtin").is_dir() else _HERE.parent / "data"


class DataError(ValueError):
    """A corpus that cannot be used, with a message that says what and where."""


class Batch(NamedTuple):
    x: np.ndarray       # (T, B) int input ids
    y: np.ndarray       # (T, B) int target ids
    mask: np.ndarray    # (T, B) float, 1 for real characters
    reset: bool         # start from a zero state (False: carry the state of the previous batch)


def builtin_path(name: str = "dinos.txt") -> Path:
    """Path of a dataset shipped with the package (``dinos.txt``)."""
    return BUILTIN_DIR / name


MAX_CORPUS_BYTES = 1 << 30   # a corpus larger than this is refused before it is read (1 GiB)


def read_text(path: str | os.PathLike, max_bytes: int = MAX_CORPUS_BYTES) -> str:
    """Read a UTF-8 corpus, with a clear error for a missing file, a symlink loop, a directory, anything
    that is not a regular file (a FIFO would wait forever, /dev/zero never ends), a file larger than
    ``max_bytes``, or non-text bytes. A UTF-8 byte-order mark is dropped (it is not a character of the text)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise DataError(f"data file not found: {str(p)!r}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"data path {str(p)!r} is a symbolic link that loops; point data.path at a file") from None
        raise DataError(f"data file {str(p)!r} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"data path {str(p)!r} is a directory; expected a UTF-8 text file")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"data path {str(p)!r} is not a regular file (a pipe, a device or a socket); "
                        f"expected a UTF-8 text file")
    if st.st_size > max_bytes:
        raise DataError(f"data file {str(p)!r} is {st.st_size / 2**20:,.0f} MiB; the largest corpus read is "
                        f"{max_bytes / 2**20:,.0f} MiB")
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise DataError(f"data file {str(p)!r} cannot be read ({e.strerror})") from None
    if len(raw) > max_bytes:
        raise DataError(f"data file {str(p)!r} grew beyond {max_bytes / 2**20:,.0f} MiB while being read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(p)!r} is not UTF-8 text (invalid byte at offset {e.start})") from None
    text = text.removeprefix("\ufeff")
    if "\x00" in text:
        raise DataError(f"data file {str(p)!r} contains NUL bytes; expected plain text")
    if not text.strip():
        raise DataError(f"data file {str(p)!r} is empty (no non-blank characters)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class Vocab:
    """Characters ↔ indices; ``chars[0]`` is always the end-of-line ``"\\n"``."""
    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls((EOL,) + tuple(sorted(set(text) - {EOL})))

    def __post_init__(self):
        if not self.chars or self.chars[0] != EOL:
            raise ValueError("a vocabulary must start with the end-of-line character")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("a vocabulary must not repeat characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    def __len__(self):
        return len(self.chars)

    @property
    def char_to_ix(self) -> dict[str, int]:
        return dict(self._index)

    @property
    def ix_to_char(self) -> dict[int, str]:
        return dict(enumerate(self.chars))

    def unknown(self, text: str) -> list[str]:
        """The characters of ``text`` that are not in the vocabulary (sorted, unique)."""
        return sorted(set(text) - set(self._index))

    def encode(self, text: str) -> np.ndarray:
        bad = self.unknown(text)
        if bad:
            raise DataError(f"characters not in the vocabulary: {''.join(bad)!r}; "
                            f"allowed: {''.join(self.chars[1:])!r}")
        return np.fromiter((self._index[c] for c in text), np.int64, len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def _check_fraction(name, value, allow_zero):
    if not (0 <= value < 1 if allow_zero else 0 < value < 1):
        raise DataError(f"{name} must be in {'[0' if allow_zero else '(0'}, 1), got {value}")


def ends_at_eol(kind: str) -> bool:
    """Whether a dataset of ``kind`` holds one example per line (names): its samples end at the end of a
    line, and the share of them that copy an example means something. Running text goes on."""
    return kind == LINES


class Corpus:
    """What the datasets share: options declared once, in the subclass's ``Config`` dataclass (the
    command line's ``data`` group is made from it), and the reading of a file."""
    kind = "?"

    @dataclass
    class Config:
        path: str | None = None         # a UTF-8 text file (None: the built-in dinos.txt)
        lowercase: bool = False
        val_fraction: float = 0.1       # the share held out for validation
        test_fraction: float = 0.0      # the share held out for the final test (0: none)

    def _options(self, options: dict):
        """``options`` (the ``Config`` fields but ``path``) completed with their defaults and checked."""
        o = self.Config(**options)
        _check_fraction("val_fraction", o.val_fraction, allow_zero=False)
        _check_fraction("test_fraction", o.test_fraction, allow_zero=True)
        return o

    @classmethod
    def from_file(cls, path, **options):
        """The dataset of the file at ``path``; ``options``: the fields of ``Config`` but ``path``."""
        return cls(read_text(path), source=str(path), **options)


@DATASETS.register(LINES)
class LineDataset(Corpus):
    """One example per line (e.g. names); blank lines are skipped.

    The split is a permutation of the examples by ``seed``: the first ``val_fraction`` go to
    validation, the next ``test_fraction`` to test, the rest to training.
    """
    kind = LINES

    def __init__(self, text: str, seed: int = 0, source: str = "<text>", **options):
        """``options``: the fields of ``Config`` but ``path``."""
        o = self._options(options)
        val_fraction, test_fraction = o.val_fraction, o.test_fraction
        if val_fraction + test_fraction >= 1:
            raise DataError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
        if o.lowercase:
            text = text.lower()
        lines = [line.strip() for line in text.split(EOL)]
        lines = [line for line in lines if line]
        if not lines:
            raise DataError(f"{source}: no non-blank lines")
        self.source = source
        self.vocab = Vocab.from_text("".join(lines))
        order = np.random.default_rng(seed).permutation(len(lines))
        n_val = int(round(val_fraction * len(lines)))
        n_test = int(round(test_fraction * len(lines)))
        if n_val == 0 or (test_fraction > 0 and n_test == 0) or n_val + n_test >= len(lines):
            raise DataError(f"{source}: {len(lines)} lines are too few for val_fraction={val_fraction} "
                            f"and test_fraction={test_fraction} (each split needs at least one line)")
        self.lines = {
            "val": [lines[i] for i in order[:n_val]],
            "test": [lines[i] for i in order[n_val:n_val + n_test]],
            "train": [lines[i] for i in order[n_val + n_test:]],
        }
        self._encoded = {k: [self.vocab.encode(s) for s in v] for k, v in self.lines.items()}
        self._epoch_order = (None, None)

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.lines.items())
        return f"LineDataset({self.source!r}, vocab={len(self.vocab)}, {sizes})"

    def num_chars(self, split: str) -> int:
        """Number of predicted characters in a split (each line's characters plus its end)."""
        return sum(len(s) + 1 for s in self._encoded[split])

    def _pad(self, seqs) -> Batch:
        """Lines padded at their end, longest first (the order of the packed layout the cells run on,
        so the model need not reorder the batch)."""
        seqs = sorted(seqs, key=len, reverse=True)
        T = max(len(s) for s in seqs) + 1
        B = len(seqs)
        x = np.zeros((T, B), np.int64)
        y = np.zeros((T, B), np.int64)
        mask = np.zeros((T, B), np.float64)
        for b, s in enumerate(seqs):
            n = len(s)
            x[1:n + 1, b] = s       # x[0] is the EOL start token
            y[:n, b] = s            # y[n] is the EOL end token
            mask[:n + 1, b] = 1
        return Batch(x, y, mask, True)

    def check_batch_size(self, batch_size: int) -> None:
        n = len(self._encoded["train"])
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > n:
            raise DataError(f"batch_size={batch_size} is larger than the {n} training lines of {self.source}")

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """The training batch of ``step``: a pure function of (seed, step), so a resumed run sees the
        same batches. Every epoch is a fresh permutation of the training lines (drawn from
        ``default_rng([seed, epoch])``) taken ``batch_size`` lines at a time."""
        self.check_batch_size(batch_size)
        data = self._encoded["train"]
        per_epoch = len(data) // batch_size
        epoch, i = divmod(step, per_epoch)
        if self._epoch_order[0] != (seed, epoch):
            self._epoch_order = ((seed, epoch), np.random.default_rng([seed, epoch]).permutation(len(data)))
        order = self._epoch_order[1]
        return self._pad([data[j] for j in order[i * batch_size:(i + 1) * batch_size]])

    def eval_batches(self, split: str = "val", batch_size: int = 256) -> Iterator[Batch]:
        """Every line of a split once, in batches of similar length (deterministic)."""
        data = sorted(self._encoded[split], key=len)
        for i in range(0, len(data), batch_size):
            yield self._pad(data[i:i + batch_size])

    def targets(self, split: str) -> np.ndarray:
        """All target ids of a split, end-of-line included (for baselines)."""
        seqs = self._encoded[split]
        return np.concatenate([np.append(s, 0) for s in seqs]) if seqs else np.zeros(0, np.int64)


@DATASETS.register(TEXT)
class TextDataset(Corpus):
    """Running text for truncated BPTT. The last ``val_fraction`` (and before it ``test_fraction``) of
    the text are held out as contiguous blocks."""
    kind = TEXT

    @dataclass
    class Config(Corpus.Config):
        seq_len: int = 100              # characters per chunk of truncated BPTT

    def __init__(self, text: str, seed: int = 0, source: str = "<text>", **options):
        """``options``: the fields of ``Config`` but ``path``; ``seed`` is not used (the split is fixed)."""
        o = self._options(options)
        val_fraction, test_fraction, seq_len = o.val_fraction, o.test_fraction, o.seq_len
        if seq_len < 1:
            raise DataError(f"seq_len must be >= 1, got {seq_len}")
        if o.lowercase:
            text = text.lower()
        self.source = source
        self.seq_len = seq_len
        self.vocab = Vocab.from_text(text)
        ids = self.vocab.encode(text)
        n = len(ids)
        n_val, n_test = int(val_fraction * n), int(test_fraction * n)
        n_train = n - n_val - n_test
        if n_train < seq_len + 1 or n_val < 2 or (test_fraction > 0 and n_test < 2):
            raise DataError(f"{source}: {n} characters are too few for seq_len={seq_len}, "
                            f"val_fraction={val_fraction}, test_fraction={test_fraction}")
        self.ids = {"train": ids[:n_train], "test": ids[n_train:n_train + n_test],
                    "val": ids[n_train + n_test:]}
        self._train_streams = (None, None)

    def __repr__(self):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.ids.items())
        return f"TextDataset({self.source!r}, vocab={len(self.vocab)}, seq_len={self.seq_len}, {sizes})"

    def num_chars(self, split: str) -> int:
        return max(len(self.ids[split]) - 1, 0)

    def _streams(self, ids, batch_size):
        L = (len(ids) - 1) // batch_size
        if L < 1:
            raise DataError(f"{self.source}: {len(ids)} characters cannot make {batch_size} streams")
        return np.stack([ids[b * L: b * L + L + 1] for b in range(batch_size)], axis=1), L  # (L+1, B)

    def _chunks(self, ids, batch_size) -> Iterator[Batch]:
        streams, L = self._streams(ids, batch_size)
        for i, start in enumerate(range(0, L, self.seq_len)):
            stop = min(start + self.seq_len, L)
            x, y = streams[start:stop], streams[start + 1:stop + 1]
            yield Batch(x, y, np.ones(x.shape), i == 0)

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if (len(self.ids["train"]) - 1) // batch_size < self.seq_len:
            raise DataError(f"{self.source}: {len(self.ids['train'])} training characters are too few "
                            f"for batch_size={batch_size} streams of seq_len={self.seq_len}")

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """Chunk ``step`` (cyclic) of ``seq_len`` over ``batch_size`` streams; ``reset`` at each
        stream start. Deterministic: the seed is not used (the text is read in order)."""
        self.check_batch_size(batch_size)
        if self._train_streams[0] != batch_size:
            self._train_streams = (batch_size, self._streams(self.ids["train"], batch_size))
        streams, L = self._train_streams[1]
        n_chunks = -(-L // self.seq_len)
        i = step % n_chunks
        start, stop = i * self.seq_len, min((i + 1) * self.seq_len, L)
        x, y = streams[start:stop], streams[start + 1:stop + 1]
        return Batch(x, y, np.ones(x.shape), i == 0)

    def eval_batches(self, split: str = "val", batch_size: int = 16) -> Iterator[Batch]:
        """The split read once as ``batch_size`` streams (fewer if it is short), state carried along
        each. Few streams keep the cold starts rare (each stream starts from a zero state; see
        experiments/README.md for what the number of streams does to the loss)."""
        ids = self.ids[split]
        yield from self._chunks(ids, max(1, min(batch_size, (len(ids) - 1) // self.seq_len or 1)))

    def targets(self, split: str) -> np.ndarray:
        return self.ids[split][1:]


def load_dataset(kind: str, path=None, **options):
    """Build a registered dataset from a file (the built-in ``dinos.txt`` when ``path`` is None)."""
    cls = DATASETS.get(kind)
    return cls.from_file(builtin_path() if path is None else path, **options)

