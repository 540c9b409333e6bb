"""``python -m rnnlab.inspect.flow``: the gradient flow of several trained models on one figure — for
the ``gradient_flow`` preset, RNN vs LSTM vs GRU trained on the same data.

    python -m rnnlab.inspect.flow experiment=gradient_flow        # every finished run of an experiment
    python -m rnnlab.inspect.flow checkpoints=a.npz,b.npz         # or checkpoint files
    options: tracking.uri=<uri> (default: ./mlflow.db)  plot=<file.png>  csv=<file.csv>  which=best|last
             max_distance=100  windows=256  seed=0  split=val  init=true|false

Each model is measured on windows of its own held-out split (the same text when the runs share their
data); ``init=true`` (the default) also draws each architecture at its initialisation (the run's seed,
dashed), to tell what the cell does from what training did.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from ..checkpoint import load, restore_model
from ..cli import USER_ERRORS, fail
from ..config import ConfigError
from . import figures
from .gradflow import gradient_flow
from .source import heldout_text

ALLOWED = {"experiment", "checkpoints", "tracking.uri", "plot", "csv", "which", "max_distance", "windows",
           "seed", "split", "init", "data_path"}


def parse(argv: list[str]) -> dict:
    opts = {"which": "best", "max_distance": "100", "windows": "256", "seed": "0", "split": "val", "init": "true"}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ALLOWED:
            raise ConfigError(f"unknown argument {arg!r}; allowed: {', '.join(sorted(ALLOWED))} (as key=value)")
        opts[key] = value
    if ("experiment" in opts) == ("checkpoints" in opts):
        raise ConfigError("give exactly one of experiment=<MLflow experiment> or checkpoints=<a.npz,b.npz,…>")
    for key in ("max_distance", "windows", "seed"):
        if not opts[key].isdigit() or (key != "seed" and int(opts[key]) < 1):
            raise ConfigError(f"{key} must be a positive integer, got {opts[key]!r}")
    if opts["which"] not in ("best", "last"):
        raise ConfigError(f"which must be best or last, got {opts['which']!r}")
    if opts["init"] not in ("true", "false"):
        raise ConfigError(f"init must be true or false, got {opts['init']!r}")
    return opts


def checkpoints_of(opts) -> list[tuple[str, Path]]:
    """(where it comes from, checkpoint path) of each model to measure."""
    if "checkpoints" in opts:
        return [(p, Path(p).expanduser()) for p in opts["checkpoints"].split(",") if p]
    from mlflow.exceptions import MlflowException

    from ..tracking import connect
    client, uri = connect(opts.get("tracking.uri"), must_exist=True)
    exp = client.get_experiment_by_name(opts["experiment"])
    if exp is None:
        raise ConfigError(f"no MLflow experiment {opts['experiment']!r} in {uri}")
    runs = [r for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                          order_by=["attributes.start_time ASC"], max_results=1000)
            if r.data.tags.get("rnnlab.role") != "sweep"]
    if not runs:
        raise ConfigError(f"the MLflow experiment {opts['experiment']!r} has no finished run")
    out = []
    for r in runs:
        p = r.data.params
        source = f"run {r.info.run_id[:8]}, seed {p.get('seed', '?')}"
        try:
            path = Path(client.download_artifacts(r.info.run_id, f"checkpoints/{opts['which']}.npz"))
        except (MlflowException, OSError) as e:
            raise ConfigError(f"MLflow run {r.info.run_id} has no {opts['which']} checkpoint ({e})") from None
        out.append((source, path))
    return out


def measure(opts) -> dict:
    """label → GradientFlow of each model (and, with init=true, of its architecture at initialisation)."""
    curves = {}
    K, n, seed = int(opts["max_distance"]), int(opts["windows"]), int(opts["seed"])
    for source, path in checkpoints_of(opts):
        ckpt = load(path)
        lm, params, vocab = restore_model(ckpt, source)
        label = f"{lm.cell_name} ({source})"
        text, _ = heldout_text(ckpt, vocab, opts["split"], opts.get("data_path"), label)
        ids = vocab.encode(text)
        if len(ids) <= K + 1:
            raise ConfigError(f"{label}: its {opts['split']} split has {len(ids)} characters, too few for "
                              f"max_distance={K}")
        curves[label] = gradient_flow(lm, params, ids, K, n, np.random.default_rng(seed))
        if opts["init"] == "true":
            fresh = lm.init_params(np.random.default_rng(int(ckpt.meta.get("seed", 0))))
            curves[f"{label} at initialisation"] = gradient_flow(lm, fresh, ids, K, n,
                                                                                np.random.default_rng(seed))
    return curves


def write_csv(path, curves: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "layer", "distance", "mean", "q10", "q50", "q90"])
        for label, flow in curves.items():
            for k in range(len(flow.mean)):
                w.writerows([label, k, d, *(f"{v[k, d]:.6e}" for v in (flow.mean, flow.q10, flow.q50, flow.q90))]
                            for d in flow.distance)


def table(curves: dict, stat: str = "mean") -> str:
    """Markdown: the top layer's mean (or median) ‖g_k‖ at a few distances, and relative to k = 0."""
    K = len(next(iter(curves.values())).distance) - 1
    ks = [k for k in (0, 1, 5, 10, 25, 50, 100, 200) if k <= K]
    lines = ["| model | " + " | ".join(f"k={k}" for k in ks) + f" | g_{ks[-1]} / g_0 |",
             "|---|" + "---|" * (len(ks) + 1)]
    for label, flow in curves.items():
        top = (flow.mean if stat == "mean" else flow.q50)[-1]
        lines.append(f"| {label} | " + " | ".join(f"{top[k]:.3g}" for k in ks) + f" | {top[ks[-1]] / top[0]:.3g} |")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts = parse(argv)
        curves = measure(opts)
    except USER_ERRORS as e:
        fail(str(e))
    name = opts.get("experiment", "checkpoints")
    png = Path(opts.get("plot", f"gradient_flow-{name}.png"))
    trained = {k: v for k, v in curves.items() if "initialisation" not in k}
    windows = next(iter(curves.values())).windows
    figures.gradient_flow(png, curves, title=f"{name}: top layer, {windows} windows of held-out text "
                          f"(band: 10th–90th percentile){'; dashed: at initialisation' if len(trained) < len(curves) else ''}",
                          every_layer=False, stats=("mean", "median"))
    print("mean ‖g_k‖ over the windows (top layer):")
    print(table(curves))
    print("\nmedian:")
    print(table(curves, "median"))
    print(f"\nfigure: {png.resolve()}")
    if "csv" in opts:
        write_csv(opts["csv"], curves)
        print(f"table: {Path(opts['csv']).resolve()}")


if __name__ == "__main__":
    main()
