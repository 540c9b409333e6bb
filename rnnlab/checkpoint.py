"""Self-contained checkpoints: one ``.npz`` file, loaded without pickle.

A checkpoint holds the model's parameters, the optimizer's buffers, the hidden state carried between
batches (running text), and a JSON header with the format version, the step, the vocabulary, the model
shape, the dataset's kind, the resolved config and the training counters. Batches and samples are pure functions of
``(seed, step)``, so the seed and the step are the whole random state. Files are written atomically
(temporary file, fsync, rename): a crash during a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import LINES
from .flat import FlatParams

FORMAT = "rnnlab-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, of another version, or inconsistent."""


@dataclass
class Checkpoint:
    params: dict                       # name -> array
    meta: dict                         # JSON header (see module docstring)
    optimizer: dict = field(default_factory=dict)   # Optimizer.state_dict()
    state: list | None = None          # carried hidden state: per layer, a tuple of (B, H) arrays

    @property
    def step(self) -> int:
        """The number of training steps done."""
        return int(self.meta["step"])


def save(path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"param/{k}": v for k, v in ckpt.params.items()}
    for k, v in ckpt.optimizer.items():
        arrays[f"optim/{k}"] = np.asarray(v)
    if ckpt.state is not None:
        for layer, parts in enumerate(ckpt.state):
            for i, a in enumerate(parts):
                arrays[f"state/{layer}/{i}"] = a
    meta = {"format": FORMAT, "version": VERSION, **ckpt.meta}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk: one error naming the file (not the chain of the failed close)
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path) -> Checkpoint:
    """Read a checkpoint (never unpickling anything); a bad file raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{str(path)!r} is not an rnnlab checkpoint (not an .npz archive)")
    _check_headers(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{str(path)!r} is not a readable rnnlab checkpoint ({e})") from None
    if "meta" not in arrays or arrays["meta"].dtype != np.uint8:
        raise CheckpointError(f"{str(path)!r} is not an rnnlab checkpoint (no header)")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} has a corrupt header ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an rnnlab checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {meta.get('version')!r}; "
                              f"this rnnlab reads version {VERSION}")
    params, optim, state = {}, {}, {}
    for key, value in arrays.items():
        kind, _, name = key.partition("/")
        if kind == "param":
            params[name] = value
        elif kind == "optim":
            optim[name] = value if value.ndim else value.item()
        elif kind == "state":
            layer, i = name.split("/")
            state.setdefault(int(layer), {})[int(i)] = value
    layers = [tuple(parts[i] for i in sorted(parts)) for _, parts in sorted(state.items())] or None
    return Checkpoint(params=FlatParams(params) if params else params, meta=meta, optimizer=optim, state=layers)


def _check_headers(path: Path) -> None:
    """Read every array's header (shape, dtype) before any array: an array declaring more bytes than its
    member of the archive holds (a truncated or forged file), or holding objects, is refused before
    anything is allocated."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise CheckpointError(f"{str(path)!r} is not a readable rnnlab checkpoint "
                                          f"({info.filename} holds Python objects)")
                declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                if declared > info.file_size:
                    raise CheckpointError(f"{str(path)!r} is not a readable rnnlab checkpoint ({info.filename} "
                                          f"declares {declared:,} bytes {list(shape)} in {info.file_size:,}: "
                                          f"truncated or corrupt)")
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{str(path)!r} is not a readable rnnlab checkpoint ({e})") from None


def validate(ckpt: Checkpoint, lm, where: str = "checkpoint") -> None:
    """Check that the parameters fit the model ``lm`` (names, shapes, dtypes, finite values)."""
    expected = lm.init_params(np.random.default_rng(0))
    missing = sorted(set(expected) - set(ckpt.params))
    extra = sorted(set(ckpt.params) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where}: parameters do not match the model {lm!r} "
                              f"(missing {missing}, unexpected {extra})")
    for name, ref in expected.items():
        got = ckpt.params[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(f"{where}: parameter {name!r} is {got.dtype}{list(got.shape)}, "
                                  f"the model needs {ref.dtype}{list(ref.shape)}")
        if not np.all(np.isfinite(got)):
            raise CheckpointError(f"{where}: parameter {name!r} holds NaN or infinite values")


def model_meta(lm, vocab, data_kind: str) -> dict:
    """The header fields that rebuild the model and say how it samples: its shape, its vocabulary and
    the kind of dataset it learned (see ``data.ends_at_eol``)."""
    return {"model": {"cell": lm.cell_name, "hidden_size": lm.hidden_size, "num_layers": lm.num_layers,
                      "dtype": lm.dtype.name, "vocab_size": lm.vocab_size, "dropout": lm.dropout,
                      "embedding_size": lm.embedding_size},
            "vocab": list(vocab.chars), "data_kind": data_kind}


def data_kind(ckpt: Checkpoint) -> str:
    """The kind of dataset the checkpoint's model learned (older checkpoints: from their config)."""
    return ckpt.meta.get("data_kind") or ((ckpt.meta.get("config") or {}).get("data") or {}).get("kind", LINES)


def restore_model(ckpt: Checkpoint, where: str = "checkpoint"):
    """(lm, params, vocab) rebuilt from a checkpoint, validated before use."""
    from .data import Vocab
    from .model import CharLM
    try:
        spec, chars = ckpt.meta["model"], ckpt.meta["vocab"]
        vocab = Vocab(tuple(chars))
        lm = CharLM(len(vocab), spec["cell"], int(spec["hidden_size"]), int(spec["num_layers"]),
                    dtype=spec["dtype"], dropout=float(spec.get("dropout", 0.0)),
                    embedding_size=int(spec.get("embedding_size", 0)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: its header does not describe a usable model ({e})") from None
    if spec.get("vocab_size") != len(vocab):
        raise CheckpointError(f"{where}: vocab_size {spec.get('vocab_size')} does not match its "
                              f"vocabulary of {len(vocab)} characters")
    validate(ckpt, lm, where)
    return lm, ckpt.params, vocab
