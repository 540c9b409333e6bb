"""The validation loss of an MLflow experiment's runs against wall-clock minutes — the figures of
experiments/README.md's "Regularisers and time budgets", where what counts is the loss within a budget.

    python experiments/budget_figure.py <experiment> <out.png> <tracking uri>[,<tracking uri> …]

Every finished run of the experiment in each store is drawn, labelled with its run name; the clock of a
run starts at its start time, so the minutes include evaluations and checkpoints, as the budget does.
"""

from __future__ import annotations

import sys


def curves(experiment: str, uris: list[str]):
    """(run name, minutes, validation losses) of every finished run of ``experiment`` in the stores."""
    from mlflow.tracking import MlflowClient
    out = []
    for uri in uris:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time ASC"]):
            hist = sorted(client.get_metric_history(run.info.run_id, "val_nll"), key=lambda m: m.step)
            if hist:
                start = run.info.start_time
                out.append((run.info.run_name, [(m.timestamp - start) / 60000 for m in hist],
                            [m.value for m in hist]))
    return out


def main(argv: list[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    experiment, path, uris = argv[0], argv[1], argv[2].split(",")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, minutes, losses in curves(experiment, uris):
        ax.plot(minutes, losses, marker=".", label=f"{name.split(' ')[0]}: {min(losses):.4f}")
    ax.set_xlabel("wall-clock minutes (training and evaluation)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title(f"{experiment}: validation loss within the time budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
