"""Access to an MLflow tracking store: where it is, whether it answers, a client, an experiment, a
logged checkpoint.

The default store is the SQLite database ``mlflow.db`` in the directory the command was launched from,
resolved to an absolute ``sqlite:///`` URI at launch; ``tracking.uri`` may name another store or an
``http(s)://`` tracking server, which must answer within seconds or the command does not start.

A new SQLite store is created whole or not at all: under a file lock (``<store>.lock``, the ``filelock``
library) one process creates the schema in a temporary file beside it and renames it into place; the
others wait for the lock and then open the finished store. An interrupted creation leaves only the
temporary file, which the next creation removes: a store is never left half-made.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ..config import ConfigError

CREATE_TIMEOUT = 300.0   # seconds a process waits for another one creating the same store
UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}   # an MLflow UI or server without the job runner
UI_ARGS = ("--workers", "1")                                # … and with one worker process (see ``ui_command``)


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
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout) as r:
            r.read(64)
        with urllib.request.urlopen(base + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=timeout) as r:
            body = r.read(1 << 16)
        if not body.lstrip().startswith(b"{"):
            raise urllib.error.HTTPError(base, 200, "not JSON", None, None)
    except urllib.error.HTTPError as e:
        raise ConfigError(f"tracking.uri: {uri} answered (HTTP {e.code} {e.reason}) but is not an MLflow tracking "
                          f"server; give the address of `mlflow server`, or run with tracking=none") from None
    except (OSError, urllib.error.URLError) as e:
        raise ConfigError(f"tracking.uri: the MLflow tracking server {uri} is unreachable ({e}); "
                          f"start it, fix tracking.uri, or run with tracking=none") from None


def ui_command(uri: str) -> str:
    """The exact command that shows this store in the MLflow UI: one worker process, and (in a POSIX shell)
    without MLflow's job runner, which serves its GenAI features (LLM judges, prompt optimisation) with
    eight processes of its own. On a 2-core machine this UI answers in 13 s with 2 processes and 0.5 GB,
    against 30 s, 15 processes and 2.5 GB with ``mlflow ui``'s defaults, 4 workers and the job runner
    (``experiments/benchmarks/ui_start.py``)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    lean = "".join(f"{k}={v} " for k, v in UI_ENV.items()) if os.name == "posix" else ""
    return f"{lean}mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000 {' '.join(UI_ARGS)}"


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
    check_store_uri(uri)
    if must_exist and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"no MLflow store at {uri}; run from the directory of mlflow.db or give tracking.uri=")
    if uri.startswith("sqlite:///"):
        ensure_sqlite_store(Path(uri[len("sqlite:///"):]))
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


EXPECTED = ("expected a SQLite store (tracking.uri=sqlite:///<path>.db, or a path ending in .db) or an MLflow "
            "tracking server (tracking.uri=http://<host>:<port>)")


def check_store_uri(uri: str) -> None:
    """Refuse, naming the URI, what is not a store rnnlab can track into: a folder, a file that is not
    SQLite, a file store (``file://``, a plain path: MLflow 3 no longer writes them)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.is_dir():
            raise ConfigError(f"tracking.uri={uri} names a folder; {EXPECTED}")
        if db.is_file() and db.stat().st_size > 0:
            with open(db, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise ConfigError(f"tracking.uri={uri}: {str(db)!r} is not a SQLite database; {EXPECTED}")
        return
    if "://" not in uri and Path(uri).is_file():
        raise ConfigError(f"tracking.uri={uri} is a plain file, not a tracking store; {EXPECTED}")
    if uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"tracking.uri={uri} is a file store (a folder such as ./mlruns), which MLflow 3 no longer "
                          f"writes; {EXPECTED}")


def ensure_sqlite_store(db: Path) -> None:
    """Make sure the SQLite store ``db`` exists with its whole schema: created once, under a file lock,
    in a temporary file renamed into place (see the module docstring)."""
    if db.is_file() and db.stat().st_size > 0:
        return
    from filelock import FileLock, Timeout

    if not db.parent.is_dir():
        raise ConfigError(f"tracking.uri: the folder of the SQLite store {str(db)!r} does not exist")
    lock = FileLock(str(db) + ".lock")
    try:
        with lock.acquire(timeout=CREATE_TIMEOUT):
            if db.is_file() and db.stat().st_size > 0:
                return                      # another process created it while this one waited
            for stale in db.parent.glob(db.name + ".creating-*"):
                stale.unlink(missing_ok=True)   # what an interrupted creation left
            tmp = db.with_name(f"{db.name}.creating-{os.getpid()}")
            try:
                _create_schema(tmp)
                os.replace(tmp, db)
            finally:
                tmp.unlink(missing_ok=True)
    except Timeout:
        raise ConfigError(f"tracking.uri: waited {CREATE_TIMEOUT:.0f}s for another process creating the SQLite "
                          f"store {str(db)!r} (lock {lock.lock_file}); if none is running, delete the lock "
                          f"file") from None
    except PermissionError as e:
        raise ConfigError(f"tracking.uri: cannot create the SQLite store {str(db)!r} ({e.strerror}); "
                          f"choose a writable folder with tracking.uri=sqlite:///<path>.db") from None


def _create_schema(path: Path) -> None:
    """Create MLflow's tables (and its default experiment) in a new SQLite file at ``path``."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    store = SqlAlchemyStore(f"sqlite:///{path}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)  # as MlflowClient does
    store.engine.dispose()


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


# ----------------------------------------------------------------- which process runs a tracked run

def _start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux), "" where unknown: with the
    pid, it tells a process from a later one that reuses its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict:
    """The tags that say which process runs a run (``rnnlab.host``, ``rnnlab.pid``, ``rnnlab.pid_start``)."""
    import socket
    return {"rnnlab.host": socket.gethostname(), "rnnlab.pid": str(os.getpid()),
            "rnnlab.pid_start": _start_time(os.getpid())}


def process_state(run) -> str:
    """For a RUNNING run: "alive" (its process runs), "gone" (its process ended without closing it:
    killed with SIGKILL, the machine stopped…) or "unknown" (another host, or no process tags)."""
    import socket
    tags = run.data.tags
    if tags.get("rnnlab.host") != socket.gethostname() or not tags.get("rnnlab.pid", "").isdigit():
        return "unknown"
    pid = int(tags["rnnlab.pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    started = tags.get("rnnlab.pid_start")
    return "gone" if started and _start_time(pid) not in ("", started) else "alive"


def stale_runs(client, experiment_ids) -> list:
    """The runs marked RUNNING whose process is gone."""
    runs = client.search_runs(list(experiment_ids), filter_string="attributes.status = 'RUNNING'", max_results=1000)
    return [r for r in runs if process_state(r) == "gone"]


def close_stale(client, run, reason: str) -> None:
    """Close a RUNNING run whose process is gone as KILLED, with ``reason``."""
    client.set_tag(run.info.run_id, "rnnlab.stop_reason", reason[:5000])
    client.set_terminated(run.info.run_id, "KILLED")
