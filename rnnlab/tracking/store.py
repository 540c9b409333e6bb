"""Access to an MLflow tracking store: where it is, whether it answers, a client, an experiment, a
logged checkpoint.

The default store is the SQLite database ``mlflow.db`` in the directory the command was launched from,
resolved to an absolute ``sqlite:///`` URI at launch; ``tracking.uri`` may name another store or an
``http(s)://`` tracking server, which must answer within seconds or the command does not start.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ..config import ConfigError


def resolve_uri(uri: str | None, launch_dir: str | os.PathLike | None = None) -> str:
    """The tracking URI: ``None`` → ``sqlite:///<launch dir>/mlflow.db``; a relative sqlite or file
    path is made absolute against the launch directory."""
    base = Path(launch_dir or os.getcwd()).resolve()
    if not uri:
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return f"sqlite:///{(base / uri).resolve()}" if uri.endswith(".db") else str((base / uri).resolve())
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """For an http(s) tracking server: fail fast, naming the URI, if it does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status >= 500:
                raise OSError(f"HTTP {r.status}")
    except (OSError, urllib.error.URLError) as e:
        raise ConfigError(f"tracking.uri: the MLflow tracking server {uri} is unreachable ({e}); "
                          f"start it, fix tracking.uri, or run with tracking=none") from None


def ui_command(uri: str) -> str:
    """The exact command that shows this store in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The address of an experiment's runs table (with rnnlab's view: losses and options as columns, the
    best first) or of one run, in the MLflow UI that ``ui_command`` starts (or on the server ``uri``),
    opened on model training (the UI's GenAI view is its default)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    if run_id:
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def connect(uri: str | None, launch_dir=None, must_exist: bool = False):
    """(MlflowClient, resolved uri) of the store ``uri`` (``tracking.uri``; None: the default store).
    An unreachable server fails here, within seconds; with ``must_exist`` so does a missing SQLite file."""
    uri = resolve_uri(uri, launch_dir)
    if uri.startswith(("http://", "https://")):
        # fail within seconds rather than retrying for minutes when the server goes away
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    check_reachable(uri)
    if must_exist and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"no MLflow store at {uri}; run from the directory of mlflow.db or give tracking.uri=")
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri), uri


# The kind the MLflow UI reads to open an experiment on its training runs (not as a GenAI project).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A view of the runs table that the UI opens with ?viewStateShareKey=rnnlab (MLflow's shared views are
# experiment tags): the losses and the main options as columns, the best run first.
VIEW_KEY = "rnnlab"
VIEW = {"selectedColumns": [f"metrics.`{m}`" for m in ("best_val_nll", "val_nll", "test_nll", "train_seconds")]
        + [f"params.`{p}`" for p in ("cell.name", "cell.hidden_size", "cell.num_layers", "lr", "steps", "seed",
                                     "data.name")],
        "orderByKey": "metrics.`best_val_nll`", "orderByAsc": True}


def experiment_id(client, name: str) -> str:
    """The id of the experiment ``name``, created if it does not exist yet, of the kind of training runs."""
    import json
    tags = {**EXPERIMENT_KIND, f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(VIEW)}
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=tags)
    for key, value in tags.items():
        if key not in exp.tags:   # an experiment created before: add them, never change a chosen one
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def download_checkpoint(cfg, run_id: str, kind: str = "last") -> Path:
    """The ``kind`` checkpoint logged by the MLflow run ``run_id`` of the store ``cfg.tracking``."""
    from mlflow.exceptions import MlflowException
    client, _ = connect(cfg.tracking.get("uri"))
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None
    try:
        return Path(client.download_artifacts(run_id, f"checkpoints/{kind}.npz"))
    except (MlflowException, OSError) as e:
        raise ConfigError(f"MLflow run {run_id} has no {kind} checkpoint ({e})") from None
