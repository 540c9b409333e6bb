"""``python -m rnnlab.compare``: the runs of a sweep (or of an experiment) as a table sorted by their best
validation loss, and a PNG of their validation curves.

    python -m rnnlab.compare sweep=<sweep id>                 # the trials of one -m sweep
    python -m rnnlab.compare experiment=<name>                # every finished run of an experiment
    python -m rnnlab.compare experiment=<name> x=minutes      # the curves against wall-clock minutes

Only the parameters that vary between the runs are shown, with the best and the final validation loss,
the speed (characters trained on per second of training step) and the seconds of training steps: both
measured as the run's own summary measures them, so chars/s × seconds is the characters trained on.
A run marked RUNNING whose process is gone (killed with SIGKILL, the machine stopped) shows as STALE,
with the command that resumes it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from .cli import emit
from .config import ConfigError
from .lifecycle import fail
from .tracking import connect
from .tracking.store import process_state

SKIP_PARAMS = ("resume", "tracking.uri", "data.path", "tracking.register")
ARGS = {"sweep": "the sweep id the sweep printed (its MLflow parent run id)",
        "experiment": "an MLflow experiment: its runs (not sweeps' parent runs)",
        "tracking.uri": "the store (default: ./mlflow.db), or http://host:5000",
        "plot": "where the PNG of the validation curves goes (default: compare-<id>.png here)",
        "x": "the curves' x axis: step (default) or minutes (wall clock since the run started, evaluations "
             "included: for runs with a time_budget)",
        "markdown": "also write the table to this Markdown file"}


def help_text() -> str:
    lines = ["rnnlab.compare: the runs of a sweep or of an experiment, sorted by their best validation loss.", "",
             "Usage", "  python -m rnnlab.compare sweep=<sweep id> [key=value …]",
             "  python -m rnnlab.compare experiment=<name> [key=value …]", "", "Keys"]
    lines += [f"  {k + '=…':<16} {v}" for k, v in ARGS.items()]
    return "\n".join(lines)


def parse(argv: list[str]) -> dict:
    opts = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ARGS:
            raise ConfigError(f"unknown argument {arg!r}; allowed: {', '.join(sorted(ARGS))} "
                              f"(as key=value; --help for what they mean)")
        opts[key] = value
    if ("sweep" in opts) == ("experiment" in opts):
        raise ConfigError("give exactly one of sweep=<sweep id> or experiment=<name>")
    if opts.get("x", "step") not in X_AXES:
        raise ConfigError(f"x={opts['x']!r} is not an x axis; allowed: {', '.join(X_AXES)}")
    return opts


def collect(client, opts):
    """(title, runs) of a sweep (its trials) or an experiment (its finished trial runs)."""
    from mlflow.exceptions import MlflowException
    if "sweep" in opts:
        try:
            parent = client.get_run(opts["sweep"])
        except MlflowException:
            raise ConfigError(f"no sweep with id {opts['sweep']!r} in {client.tracking_uri} (the id is the "
                              f"one the sweep printed: its MLflow parent run)") from None
        runs = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                  max_results=10000)
        return f"sweep {parent.info.run_id} ({parent.data.tags.get('overrides', '')})", runs
    exp = client.get_experiment_by_name(opts["experiment"])
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ConfigError(f"no MLflow experiment {opts['experiment']!r}; there are: {', '.join(names)}")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=10000)
            if r.data.tags.get("rnnlab.role") != "sweep"]
    return f"experiment {opts['experiment']}", runs


NAN = float("nan")
X_AXES = {"step": "step", "minutes": "wall-clock minutes since the run started (training and evaluation)"}


def table(client, runs) -> tuple[list[str], list[dict]]:
    """(varying parameter names, one row per run sorted by its best val_nll; a run without one last)."""
    keys = sorted({k for r in runs for k in r.data.params if k not in SKIP_PARAMS})
    varying, seen = [], set()
    for k in keys:
        values = tuple(r.data.params.get(k) for r in runs)
        if len(set(values)) > 1 and values not in seen:  # e.g. optimizer.lr repeats lr: show it once
            varying.append(k)
            seen.add(values)
    rows = []
    for r in runs:
        m = r.data.metrics
        seconds = m.get("train_seconds")
        if seconds is None:  # a run of an older rnnlab: the median of its steps' speed, and no time
            speed = [x.value for x in client.get_metric_history(r.info.run_id, "chars_per_sec")]
            chars_per_sec, seconds = (statistics.median(speed) if speed else NAN), NAN
        else:
            chars_per_sec = m.get("train_chars", NAN) / seconds if seconds > 0 else NAN
        status = r.info.status
        if status == "RUNNING" and process_state(r) == "gone":
            status = "STALE"
        rows.append({"run": r.info.run_name, "id": r.info.run_id, "status": status, "start": r.info.start_time,
                     **{k: r.data.params.get(k, "") for k in varying},
                     "val_nll": m.get("val_nll", NAN), "best_val_nll": m.get("best_val_nll", m.get("val_nll", NAN)),
                     "chars/s": chars_per_sec, "seconds": seconds})
    rows.sort(key=lambda row: (row["best_val_nll"] != row["best_val_nll"], row["best_val_nll"]))
    return varying, rows


def _short(value: str) -> str:
    """A parameter value for a table: long floats to 4 significant digits."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:.4g}" if len(str(value)) > 8 and "." in str(value) else str(value)


def markdown(varying, rows) -> str:
    cols = ["#", *varying, "best_val_nll", "final val_nll", "chars/s", "train s", "status", "run id"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, row in enumerate(rows, 1):
        cells = [str(i), *[_short(row[k]) for k in varying], f"{row['best_val_nll']:.4f}", f"{row['val_nll']:.4f}",
                 f"{row['chars/s']:,.0f}", f"{row['seconds']:.1f}", row["status"], row["id"][:8]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve(client, row, x: str = "step") -> tuple[list, list]:
    """(x, validation losses) of one run of ``table``'s rows; x its steps or, for ``x="minutes"``, the
    wall-clock minutes from the run's start to each evaluation."""
    hist = sorted(client.get_metric_history(row["id"], "val_nll"), key=lambda m: m.step)
    xs = [m.step for m in hist] if x == "step" else [(m.timestamp - row["start"]) / 60000 for m in hist]
    return xs, [m.value for m in hist]


def plot(client, varying, rows, path: Path, title: str, x: str = "step") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    lows, highs = [], []
    for row in rows:
        xs, values = curve(client, row, x)
        if values:
            label = ", ".join(f"{k}={_short(row[k])}" for k in varying if row[k] != "") or row["run"]
            lows.append(min(values))
            highs.append(max(values))
            ax.plot(xs, values, marker=".", label=label)
    if lows and min(lows) > 0 and max(highs) / min(lows) > 10:
        ax.set_yscale("log")  # a diverged run would flatten every other curve
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(title[:90], fontsize=9)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--help", "-h") for a in argv):
        emit(help_text())
        return
    try:
        opts = parse(argv)
        client, _ = connect(opts.get("tracking.uri"), must_exist=True)
        title, runs = collect(client, opts)
        if not runs:
            raise ConfigError(f"{title} has no runs")
    except ConfigError as e:
        fail(str(e))
    varying, rows = table(client, runs)
    text = markdown(varying, rows)
    emit(f"{title}: {len(rows)} runs, sorted by their best val_nll (nats/char); chars/s and train s: "
         f"characters trained on per second of training step, and those seconds\n")
    emit(text)
    tag = opts.get("sweep", opts.get("experiment"))[:8]
    png = plot(client, varying, rows, Path(opts.get("plot", f"compare-{tag}.png")), title, opts.get("x", "step"))
    emit(f"\nvalidation curves: {png.resolve()}")
    stale = [row["id"] for row in rows if row["status"] == "STALE"]
    if stale:
        emit(f"\n{len(stale)} STALE run(s): marked RUNNING, but their process is gone (killed?). Continue one "
              f"with: python -m rnnlab resume=<run id> (it closes the stale run as KILLED): {', '.join(stale)}")
    if "markdown" in opts:
        Path(opts["markdown"]).write_text(text + "\n")


if __name__ == "__main__":
    main()
