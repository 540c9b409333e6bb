"""MLflow tracking: the only module that imports mlflow (lazily, when a run is tracked).

The default store is the SQLite database ``mlflow.db`` in the directory the command was launched from,
resolved to an absolute ``sqlite:///`` URI at launch; ``tracking.uri`` may name another store or an
``http(s)://`` tracking server, which must answer within seconds or the run does not start.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from omegaconf import OmegaConf

from .config import ConfigError
from .model import nats_to_bits
from .train import Callback

log = logging.getLogger("rnnlab")
FLUSH_EVERY = 500          # buffered metric values per log_batch call (MLflow takes up to 1000)


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


def flatten(d, prefix: str = "") -> dict:
    """Nested dicts/lists → {"a.b.c": value} with dotted keys."""
    out = {}
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MlflowTracker(Callback):
    """Logs one run: params, buffered metrics, samples, checkpoints, config; ends with a status."""

    def __init__(self, client, run_id: str, uri: str, experiment: str, out_dir=None):
        self.client, self.run_id, self.uri, self.experiment = client, run_id, uri, experiment
        self.out_dir = Path(out_dir) if out_dir else None
        self.buffer = []
        self.model_uri = None
        self.failing_since = None   # the first error of an outage of the tracking store
        self.errors = 0
        self.retry_at = 0.0         # during an outage, no call before this time (time.monotonic())
        self.backoff = 5.0
        self.skipped = []           # artifacts not sent during an outage

    @classmethod
    def start(cls, cfg, name: str, dataset, lm, out_dir=None, launch_dir=None,
              parent_run_id: str | None = None, extra_tags: dict | None = None):
        from mlflow.entities import Param, RunTag

        hydra_cfg = _hydra_config()
        if launch_dir is None and hydra_cfg is not None:
            launch_dir = hydra_cfg.runtime.cwd   # the launch directory, wherever the job runs
        client, uri = connect(cfg, launch_dir)
        experiment = cfg.tracking.get("experiment") or "rnnlab"
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        overrides = _overrides()
        extra_tags = dict(extra_tags or {})
        if parent_run_id is None and hydra_cfg is not None and str(hydra_cfg.mode) == "RunMode.MULTIRUN":
            sid = sweep_id(hydra_cfg.runtime.cwd, hydra_cfg.sweep.dir)
            parent_run_id = find_parent_run(client, exp_id, sid)
            extra_tags.update({"rnnlab.sweep_id": sid, "rnnlab.role": "trial",
                               "trial": str(hydra_cfg.job.num)})
        tags = {"cell": lm.cell_name, "dataset": cfg.data.get("name", "?"),
                "data.path": str(cfg.data.get("path") or "builtin:dinos.txt"),
                "overrides": " ".join(overrides) or "(defaults)", "mlflow.runName": name,
                "rnnlab.version": _version()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        tags.update(extra_tags or {})
        run = client.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        params = flatten(OmegaConf.to_container(cfg, resolve=True))
        params = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
        client.log_text(run_id, "\n".join(overrides) + "\n", "config/overrides.txt")
        client.log_batch(run_id, tags=[RunTag("vocab", "".join(dataset.vocab.chars).replace("\n", "\\n"))])
        return cls(client, run_id, uri, experiment, out_dir)

    def _safe(self, what: str, call, *args, force: bool = False, **kwargs) -> bool:
        """Call the store; on failure remember the outage, warn once, back off (no call for a while,
        doubling up to a minute) and go on training."""
        if not force and time.monotonic() < self.retry_at:
            return False
        try:
            call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any store/network error must not stop training
            self.errors += 1
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(2 * self.backoff, 60.0)
            if self.failing_since is None:
                self.failing_since = f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                log.warning("MLflow tracking at %s failed (%s); training goes on, metrics are kept "
                            "and retried", self.uri, self.failing_since)
            return False
        if self.failing_since is not None:
            log.warning("MLflow tracking at %s is back", self.uri)
            self.failing_since = None
        self.retry_at, self.backoff = 0.0, 5.0
        return True

    # ----------------------------------------------------------------------------- callbacks
    def _metric(self, key, value, step):
        from mlflow.entities import Metric
        self.buffer.append(Metric(key, float(value), int(time.time() * 1000), int(step)))
        if len(self.buffer) >= FLUSH_EVERY:
            self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send the buffered metrics; what cannot be sent stays buffered for the next try."""
        while self.buffer:
            chunk = self.buffer[:1000]
            if not self._safe("log_batch", self.client.log_batch, self.run_id, metrics=chunk, force=force):
                return False
            del self.buffer[:len(chunk)]
        return True

    def on_step(self, step, m):
        for key in ("train_loss", "grad_norm", "chars_per_sec", "lr"):
            self._metric(key, m[key], step + 1)

    def on_eval(self, step, m):
        self._metric("val_nll", m["val_nll"], step + 1)
        self._metric("val_bpc", m["val_bpc"], step + 1)
        self.flush()

    def log_samples(self, name: str, samples):
        """``samples`` as the text artifact ``name``, one per line (listed as skipped if the store fails)."""
        if not self._safe("log_text", self.client.log_text, self.run_id, "\n".join(samples) + "\n", name):
            self.skipped.append(name)

    def on_samples(self, step, samples):
        self.log_samples(f"samples/step_{step + 1:06d}.txt", samples)

    def on_report(self, step, m):
        for key, value in m.items():
            self._metric(key, value, step + 1)

    def log_checkpoint(self, kind, path):
        if not self._safe("log_artifact", self.client.log_artifact, self.run_id, str(path), "checkpoints"):
            self.skipped.append(f"checkpoints/{kind}.npz")

    def on_end(self, step, history):
        self.flush()
        if history.val_nll:
            best = min(history.val_nll)
            self._metric("best_val_nll", best, step + 1)
            self._metric("best_val_bpc", nats_to_bits(best), step + 1)
        self.flush()
        if history.report.get("samples"):
            self.log_samples("samples/report.txt", history.report["samples"])
        self.log_figures(history)

    def log_figures(self, history):
        """The learning curves as ``figures/learning_curve.png``; the samples as tables the MLflow UI
        shows as tables: ``tables/samples.json`` (step, sample) and ``tables/report.json`` (sample,
        length). A resumed run appends to its tables."""
        from .inspect.figures import learning_curve
        figure = learning_curve(history, title=self.run_id)
        if not self._safe("log_figure", self.client.log_figure, self.run_id, figure, "figures/learning_curve.png"):
            self.skipped.append("figures/learning_curve.png")
        periodic = [(step + 1, s) for step, texts in sorted(history.samples.items()) for s in texts]
        tables = {"tables/samples.json": {"step": [p[0] for p in periodic], "sample": [p[1] for p in periodic]}}
        report = history.report.get("samples") or []
        tables["tables/report.json"] = {"sample": list(report), "length": [len(s) for s in report]}
        for name, table in tables.items():
            if table["sample"] and not self._safe("log_table", self.client.log_table, self.run_id, table, name):
                self.skipped.append(name)

    def finish(self, status: str = "FINISHED", reason: str | None = None):
        """Flush, tag the reason of a failure or a stop, and end the run with ``status``. Metrics the
        store never took are written next to the checkpoints (``mlflow_unsent_metrics.jsonl``)."""
        for attempt in range(3):
            if self.flush(force=True):
                break
            time.sleep(1 + attempt)
        if reason:
            self._safe("set_tag", self.client.set_tag, self.run_id, "rnnlab.stop_reason", reason[:5000],
                       force=True)
        ended = self._safe("set_terminated", self.client.set_terminated, self.run_id, status, force=True)
        if self.buffer or not ended or self.skipped:
            path = self._save_unsent()
            log.error("MLflow tracking at %s failed (%s): %d metric values could not be sent%s; %d "
                      "artifacts were not uploaded (%s); the run may show as RUNNING there. The local "
                      "checkpoints are intact.", self.uri, self.failing_since, len(self.buffer),
                      f" and are saved in {path}" if path else "", len(self.skipped),
                      ", ".join(self.skipped[:5]) + (" …" if len(self.skipped) > 5 else ""))

    def _save_unsent(self):
        if not self.buffer or self.out_dir is None:
            return None
        import json
        path = self.out_dir / "mlflow_unsent_metrics.jsonl"
        with open(path, "a") as f:
            for m in self.buffer:
                f.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                    "step": m.step, "timestamp": m.timestamp}) + "\n")
        return path

    def log_model(self, checkpoint_path) -> None:
        """Log the model (code plus the checkpoint's arrays) as an MLflow pyfunc model of this run;
        its URI goes to ``self.model_uri``."""
        import mlflow

        code = Path(__file__).with_name("pyfunc_model.py")
        package = Path(__file__).resolve().parent

        def log():  # only called for a finished run; finish() then sets the final status again
            import warnings
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*type hints.*")
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(code), artifacts={"checkpoint": str(checkpoint_path)},
                    code_paths=[str(package)], pip_requirements=["numpy>=2,<3", "mlflow>=3.17,<3.18"])
            self.model_uri = info.model_uri

        self._safe("log_model", log)

    def summary_lines(self) -> list[str]:
        lines = [f"  MLflow run {self.run_id} in experiment {self.experiment!r} at {self.uri}"]
        if self.model_uri:
            lines.append(f"  model: mlflow.pyfunc.load_model({self.model_uri!r})")
        lines.append(f"  see it with: {ui_command(self.uri)}")
        return lines


def connect(cfg, launch_dir=None):
    """(MlflowClient, uri) for ``cfg.tracking``; an unreachable server fails here, within seconds."""
    uri = resolve_uri(cfg.tracking.get("uri"), launch_dir)
    if uri.startswith(("http://", "https://")):
        # fail within seconds rather than retrying for minutes when the server goes away
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    check_reachable(uri)
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=uri), uri


def download_checkpoint(cfg, run_id: str, kind: str = "last") -> Path:
    """The ``kind`` checkpoint logged by the MLflow run ``run_id`` of the store ``cfg.tracking``."""
    from mlflow.exceptions import MlflowException
    client, _ = connect(cfg)
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None
    try:
        return Path(client.download_artifacts(run_id, f"checkpoints/{kind}.npz"))
    except (MlflowException, OSError) as e:
        raise ConfigError(f"MLflow run {run_id} has no {kind} checkpoint ({e})") from None


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig
        return HydraConfig.get() if HydraConfig.initialized() else None
    except ImportError:
        return None


def _overrides() -> list[str]:
    cfg = _hydra_config()
    return list(cfg.overrides.task) if cfg is not None else []


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("rnnlab")
    except Exception:  # noqa: BLE001 - not installed (source checkout)
        return "source"


# ------------------------------------------------------------------------------------------ sweeps

def sweep_id(launch_dir, sweep_dir) -> str:
    """The id shared by a sweep's parent run and its trials: a digest of where it was launched."""
    import hashlib
    key = f"{Path(launch_dir).resolve()}|{sweep_dir}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def find_parent_run(client, experiment_id: str, sid: str) -> str | None:
    """The parent run of the sweep ``sid`` in the experiment, if the sweep callback created one."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`rnnlab.sweep_id` = '{sid}' and "
                                                            f"tags.`rnnlab.role` = 'sweep'", max_results=1)
    return runs[0].info.run_id if runs else None


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency; keep the module importable anyway
    _HydraCallback = object


class SweepCallback(_HydraCallback):
    """Hydra callback: one MLflow parent run per multirun sweep, its trials nested under it.

    ``on_multirun_start`` runs in the launching process before any job: it creates (and migrates) the
    tracking store once, then the parent run; every trial finds it by the sweep's id. At the end the
    parent run gets the best trial's figures and the command that compares the trials.
    """

    def __init__(self):
        self.client = self.parent = self.experiment_id = self.sid = None

    def on_multirun_start(self, config, **kwargs) -> None:
        if config.get("tracking", {}).get("name") != "mlflow":
            return
        try:
            client, uri = connect(config, launch_dir=os.getcwd())
        except ConfigError as e:
            log.error("%s", e)
            raise SystemExit(2) from None
        name = config.tracking.get("experiment") or "rnnlab"
        exp = client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else client.create_experiment(name)
        self.sid = sweep_id(os.getcwd(), str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        run = client.create_run(self.experiment_id, run_name=f"sweep {' '.join(overrides)}"[:240], tags={
            "rnnlab.sweep_id": self.sid, "rnnlab.role": "sweep", "overrides": " ".join(overrides),
            "sweeper": str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1],
            "launcher": str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1]})
        self.client, self.parent, self.uri = client, run.info.run_id, uri
        log.info("sweep %s: MLflow parent run %s in experiment %r at %s", self.sid, self.parent, name, uri)

    def on_multirun_end(self, config, **kwargs) -> None:
        if self.parent is None:
            return
        from mlflow.entities import Metric
        trials = self.client.search_runs([self.experiment_id],
                                         filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'",
                                         max_results=10000)
        done = [t for t in trials if "val_nll" in t.data.metrics and t.info.status == "FINISHED"]
        now = int(time.time() * 1000)
        metrics = [Metric("trials", len(trials), now, 0), Metric("trials_finished", len(done), now, 0)]
        if done:
            best = min(done, key=lambda t: t.data.metrics["val_nll"])
            metrics.append(Metric("best_val_nll", best.data.metrics["val_nll"], now, 0))
            self.client.set_tag(self.parent, "best_run_id", best.info.run_id)
            self.client.set_tag(self.parent, "best_overrides", best.data.tags.get("overrides", ""))
        self.client.log_batch(self.parent, metrics=metrics)
        self.client.set_terminated(self.parent, "FINISHED")
        log.info("sweep %s finished: %d trials (%d finished). Compare them with: "
                 "python -m rnnlab.compare sweep=%s%s", self.sid, len(trials), len(done), self.parent,
                 "" if self.uri.endswith(f"{os.getcwd()}/mlflow.db") else f" tracking.uri={self.uri}")
        log.info("see the sweep with: %s", ui_command(self.uri))
