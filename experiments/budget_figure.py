"""The validation loss of an MLflow experiment's runs against wall-clock minutes — the figures of
experiments/README.md's "Regularisers and time budgets", where what counts is the loss within a budget.

    python experiments/budget_figure.py <experiment> <out.png> <tracking uri>[,<tracking uri> …] [<skip> …]

Every finished run of the experiment in each store is drawn, labelled with its run name, except the runs
whose name or one of whose ``key=value`` parameters contains one of the ``skip`` strings (e.g. ``threads=1``: runs that shared the machine, whose
minutes are not the budget's); the clock of a run starts at its start time, so the minutes include
evaluations and checkpoints, as the budget does.
"""

from __future__ import annotations

import sys


def curves(experiment: str, uris: list[str], skip=()):
    """(run name, minutes, validation losses) of every finished run of ``experiment`` in the stores whose
    name contains none of ``skip``."""
    from mlflow.tracking import MlflowClient
    out = []
    for uri in uris:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time ASC"]):
            said = [run.info.run_name] + [f"{k}={v}" for k, v in run.data.params.items()]
            if any(text in one for text in skip for one in said):
                continue
            hist = sorted(client.get_metric_history(run.info.run_id, "val_nll"), key=lambda m: m.step)
            if hist:
                start = run.info.start_time
                out.append((run.info.run_name, [(m.timestamp - start) / 60000 for m in hist],
                            [m.value for m in hist]))
    return out


def _label(name: str, width: int = 80) -> str:
    """A run name without the overrides every run of a preset shares (experiment, data path, budget)."""
    words = [w for w in name.split() if not w.startswith(("experiment=", "data.path=", "time_budget="))]
    text = " ".join(words)
    return text if len(text) <= width else text[:width - 1] + "…"


def main(argv: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    experiment, path, uris, skip = argv[0], argv[1], argv[2].split(","), argv[3:]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, minutes, losses in curves(experiment, uris, skip):
        ax.plot(minutes, losses, marker=".", label=f"{_label(name)}: {min(losses):.4f}")
    ax.set_xlabel("wall-clock minutes (training and evaluation)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"{experiment}: validation loss within the time budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
