"""``python -m rnnlab.inspect``: look inside a trained model — surprise, cells, gates, gradient flow.

    python -m rnnlab.inspect checkpoint=outputs/…/checkpoints/best.npz            # held-out text
    python -m rnnlab.inspect run=<MLflow run id> 'text="To be, or not to be"'     # + run artifacts
    python -m rnnlab.inspect checkpoint=… views=[surprise,gates] out=look

The views are written to the folder ``out`` (see ``rnnlab.inspect.views``); for ``run=`` they are
also logged to that run's artifacts under ``inspect/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import ListConfig

from ..checkpoint import CheckpointError, load, restore_model
from ..cli import USER_ERRORS, command, fail
from ..config import ConfigError
from ..data import read_text
from .gates import GATES
from .reading import prepare_text
from .source import data_kind, heldout_text
from .views import VIEWS, write_views


def chosen_views(value) -> tuple[str, ...]:
    """``views``: ``all`` or a list of view names."""
    names = list(value) if isinstance(value, (list, tuple, ListConfig)) else [str(value)]
    if names == ["all"]:
        return VIEWS
    bad = [n for n in names if n not in VIEWS]
    if bad or not names:
        raise ConfigError(f"views: unknown view {bad[0] if bad else '(none)'!r}; give all, or a list of "
                          f"{', '.join(VIEWS)}, e.g. views=[surprise,gates]")
    return tuple(names)


def _task(cfg):
    try:
        if bool(cfg.checkpoint) == bool(cfg.run):
            raise ConfigError("give exactly one of checkpoint=<path> or run=<MLflow run id>")
        if cfg.which not in ("best", "last"):
            raise ConfigError(f"which must be best or last, got {cfg.which!r}")
        if cfg.text is not None and cfg.text_file:
            raise ConfigError("give at most one of text= and text_file=")
        for key, least in (("chars", 2), ("top", 1), ("show", 1), ("max_distance", 1), ("windows", 1),
                           ("offset", 0)):
            if not int(cfg[key]) >= least:
                raise ConfigError(f"{key} must be >= {least}, got {cfg[key]}")
        views = chosen_views(cfg.views)
        explicit = not (isinstance(cfg.views, str) and cfg.views == "all")
        path, where = _checkpoint_path(cfg)
        ckpt = load(path)
        lm, params, vocab = restore_model(ckpt, where)
        if "gates" in views and explicit and lm.cell_name not in GATES:
            raise ConfigError(f"the gates view needs a gated cell ({', '.join(GATES)}); {where} is a "
                              f"{lm.cell_name!r} model")
        text, lines, flow_ids, source = _text_to_read(cfg, ckpt, vocab, "gradient_flow" in views, where)
        n_flow = len(flow_ids) if flow_ids is not None else len(text)
        if "gradient_flow" in views and n_flow <= int(cfg.max_distance) + 1:
            message = (f"the gradient flow needs more than max_distance + 1 = {int(cfg.max_distance) + 1} "
                       f"characters of text, there are {n_flow}: lower max_distance")
            if explicit:
                raise ConfigError(message)
            print(f"rnnlab: note: gradient flow skipped: {message}", file=sys.stderr)
            views = tuple(v for v in views if v != "gradient_flow")
    except USER_ERRORS as e:
        fail(str(e))
    out = Path(str(cfg.out))
    short = path.name if cfg.checkpoint else f"run {str(cfg.run)[:8]} ({cfg.which})"
    summary = write_views(out, lm, params, vocab, text, lines, views, flow_ids, source=f"{short}, {source}",
                          top=int(cfg.top), show=int(cfg.show), max_distance=int(cfg.max_distance),
                          windows=int(cfg.windows), seed=int(cfg.seed))
    print(report(summary, out))
    if cfg.run:
        log_to_run(cfg, str(cfg.run), out)


def _checkpoint_path(cfg) -> tuple[Path, str]:
    """(the checkpoint file, how to name it in messages): the given path, or the run's downloaded one."""
    if cfg.checkpoint:
        return Path(str(cfg.checkpoint)).expanduser(), f"checkpoint={cfg.checkpoint}"
    from ..tracking import download_checkpoint, resolve_uri
    uri = resolve_uri(cfg.tracking.get("uri"))
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"run={cfg.run}: there is no MLflow store at {uri}; run from the directory "
                          f"of mlflow.db or give tracking.uri=")
    return download_checkpoint(cfg, str(cfg.run), cfg.which), f"run={cfg.run}"


def _text_to_read(cfg, ckpt, vocab, flow: bool, where: str):
    """(the text to read, prepared; whether it is read as lines; the held-out ids for the gradient flow,
    or None for the text's own; a description for the titles)."""
    lines = data_kind(ckpt) == "lines"
    if cfg.text is None and not cfg.text_file:   # a slice of the held-out data
        whole, lines = heldout_text(ckpt, vocab, str(cfg.split), cfg.data_path, where)
        start = int(cfg.offset)
        if start >= len(whole) - 1:
            raise ConfigError(f"offset={start} is past the end of the {cfg.split} split ({len(whole)} characters)")
        text = prepare_text(whole[start:start + int(cfg.chars) + 1], vocab, lines, f"split={cfg.split}")
        source = f"{cfg.split} split, characters {start}–{start + len(text) - 1} of {len(whole)}"
        return text, lines, vocab.encode(whole), source
    given = str(cfg.text) if cfg.text is not None else read_text(cfg.text_file)
    label = "text" if cfg.text is not None else f"text_file={cfg.text_file}"
    text = prepare_text(given, vocab, lines, label)
    flow_ids = None
    if flow:  # on held-out windows where the checkpoint records its data, else on the text
        try:
            flow_ids = vocab.encode(heldout_text(ckpt, vocab, str(cfg.split), cfg.data_path, where)[0])
        except (ConfigError, CheckpointError):
            pass
    return text, lines, flow_ids, f"{label} ({len(given)} characters)"


def report(summary: dict, out: Path) -> str:
    """The headline numbers, and where the files are."""
    lines = [f"{summary['model']}; {summary['source']}"]
    if "surprise" in summary:
        lines.append(f"surprise: {summary['surprise']['mean_nats']:.4f} nats/char "
                     f"({summary['surprise']['mean_bits']:.4f} bits/char)")
    for prop, units in summary.get("cells", {}).items():
        lines.append(f"cells: {prop:<17} best {units[0]['unit']}  r = {units[0]['r']:+.3f}")
    for k, layer in enumerate(summary.get("gates", [])):
        lines.append(f"gates: layer {k} " + ", ".join(f"{g} {v['left_mean']:.0%} shut / {v['right_mean']:.0%} open"
                                                      for g, v in layer.items()))
    if "gradient_flow" in summary:
        curve = summary["gradient_flow"]["mean_top_layer"]
        lines.append("gradient flow (top layer, mean ‖g_k‖): " + ", ".join(f"k={k}: {v:.3g}" for k, v in curve.items()))
    lines.append(f"written to {out.resolve()}/: {', '.join(summary['files'])}")
    return "\n".join(lines)


def log_to_run(cfg, run_id: str, out: Path) -> None:
    """The folder ``out`` as the artifacts ``inspect/…`` of the MLflow run ``run_id``."""
    from mlflow.exceptions import MlflowException

    from ..tracking import connect
    client, _ = connect(cfg.tracking.get("uri"))
    try:
        client.log_artifacts(run_id, str(out), "inspect")
    except (MlflowException, OSError) as e:
        fail(f"the views are in {out.resolve()}, but logging them to MLflow run {run_id} failed ({e})", code=1)
    print(f"logged to MLflow run {run_id}: artifacts inspect/")


def main(argv=None):
    from ..help import inspect_help
    command("inspect", _task, inspect_help, argv)


if __name__ == "__main__":
    main()
