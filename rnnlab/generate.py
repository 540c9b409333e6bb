"""``python -m rnnlab.generate``: sample from a trained model, one sample per line.

    python -m rnnlab.generate checkpoint=outputs/…/checkpoints/best.npz n=20 sampler=topk sampler.k=3
    python -m rnnlab.generate run=<MLflow run id> prime=tyr seed=1
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import data_kind, load, restore_model
from .cli import command
from .lifecycle import USER_ERRORS, fail
from .config import ConfigError, build
from .data import DataError, ends_at_eol
from .sampling import generate


LIMITS = {"n": 100_000, "max_len": 100_000}   # samples made at once, characters per sample: bounded memory


def samples_from_checkpoint(path, sampler, n=10, prime="", seed=0, max_len=50, where=None, min_len=1) -> list[str]:
    """Generate ``n`` samples from the checkpoint at ``path``."""
    ckpt = load(path)
    lm, params, vocab = restore_model(ckpt, where or str(path))
    bad = vocab.unknown(prime)
    if bad:
        raise DataError(f"prime={prime!r} has characters outside the model's vocabulary: {''.join(bad)!r}; "
                        f"allowed: {''.join(vocab.chars[1:])!r}")
    return generate(lm, params, vocab, sampler, np.random.default_rng(seed), n=n, prime=prime,
                    max_len=max_len, stop_at_eol=ends_at_eol(data_kind(ckpt)), min_len=min_len)


def _task(cfg):
    try:
        if bool(cfg.checkpoint) == bool(cfg.run):
            raise ConfigError("give exactly one of checkpoint=<path> or run=<MLflow run id>")
        for key in ("n", "max_len", "seed"):
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be an integer, got {value!r}")
            low = 0 if key == "seed" else 1
            if not low <= value <= (LIMITS.get(key) or value):
                top = f" and <= {LIMITS[key]:,}" if key in LIMITS else ""
                raise ConfigError(f"{key} must be an integer >= {low}{top}, got {value}"
                                  + ("; for more samples, run again with another seed=" if key == "n" else ""))
        if isinstance(cfg.min_len, bool) or not isinstance(cfg.min_len, int) or cfg.min_len < 0:
            raise ConfigError(f"min_len must be an integer >= 0, got {cfg.min_len!r}")
        if cfg.which not in ("best", "last"):
            raise ConfigError(f"which must be best or last, got {cfg.which!r}")
        sampler = build("sampler", cfg)
        if cfg.checkpoint:
            path, where = Path(str(cfg.checkpoint)).expanduser(), f"checkpoint={cfg.checkpoint}"
        else:
            from .tracking import download_checkpoint
            path, where = download_checkpoint(cfg, str(cfg.run), cfg.which), f"run={cfg.run}"
        names = samples_from_checkpoint(path, sampler, int(cfg.n), str(cfg.prime or ""), int(cfg.seed),
                                        int(cfg.max_len), where, int(cfg.min_len))
    except USER_ERRORS as e:
        fail(str(e))
    # names: one per line; running text (which holds newlines): the samples apart, between rules
    print(("\n" if all("\n" not in s for s in names) else "\n" + "-" * 40 + "\n").join(names), flush=True)


def main(argv=None):
    from .help import generate_help
    command("generate", _task, generate_help, argv)


if __name__ == "__main__":
    main()
