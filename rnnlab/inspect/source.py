"""Where the text comes from when none is given: the data a checkpoint was trained on, as its config
recorded it."""

from __future__ import annotations

from omegaconf import OmegaConf

from ..checkpoint import CheckpointError
from ..config import ConfigError, build_dataset
from ..data import EOL


def data_kind(ckpt) -> str:
    """``lines`` (one example per line, the default of old checkpoints) or ``text`` (running text)."""
    return ((ckpt.meta.get("config") or {}).get("data") or {}).get("kind", "lines")


def heldout_text(ckpt, vocab, split: str, data_path, where: str):
    """(the whole ``split`` of the data the checkpoint was trained on as one text, whether it is lines)."""
    config = ckpt.meta.get("config") or {}
    if not config.get("data"):
        raise CheckpointError(f"{where} does not record the data it was trained on; give text= or text_file=")
    data = dict(config["data"])
    if data_path:
        data["path"] = str(data_path)
    try:
        ds = build_dataset(OmegaConf.create({"data": data}))
    except ConfigError as e:
        raise ConfigError(f"{e} (the data {where} was trained on; give data_path=<file> if it moved)") from None
    if ds.vocab.chars != vocab.chars:
        raise ConfigError(f"the data at {data.get('path') or 'the built-in dataset'} is not the data {where} "
                          f"was trained on (its vocabulary differs); give data_path=<file>")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    if data.get("kind", "lines") == "lines":
        lines = ds.lines[split]
        if not lines:
            raise ConfigError(f"the {split} split of {ds.source} is empty")
        return EOL + EOL.join(lines) + EOL, True
    ids = ds.ids[split]
    if len(ids) < 2:
        raise ConfigError(f"the {split} split of {ds.source} is empty")
    return vocab.decode(ids), False
