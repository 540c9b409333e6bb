"""The MLflow logger of one run: a callback of the training loop that logs params, buffered metrics,
samples, checkpoints and the model, keeps training through an outage of the store, and ends the run
with its status."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..config import hydra_config, is_multirun
from ..model import nats_to_bits
from ..train import Callback
from .store import connect, experiment_id, process_tags, stale_runs, ui_command
from .sweep import find_parent_run, sweep_id

log = logging.getLogger("rnnlab")
FLUSH_EVERY = 500          # buffered metric values per log_batch call (MLflow takes up to 1000)


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

        hydra_cfg = hydra_config()
        if launch_dir is None and hydra_cfg is not None:
            launch_dir = hydra_cfg.runtime.cwd   # the launch directory, wherever the job runs
        client, uri = connect(cfg.tracking.get("uri"), launch_dir)
        experiment = cfg.tracking.get("experiment") or "rnnlab"
        exp_id = experiment_id(client, experiment)
        overrides = _overrides()
        extra_tags = dict(extra_tags or {})
        if parent_run_id is None and is_multirun():
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
        tags.update(process_tags())   # which process runs it: a RUNNING run without it is stale
        run = client.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        try:
            params = flatten(OmegaConf.to_container(cfg, resolve=True))
            params = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
            client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/config.yaml")
            client.log_text(run_id, "\n".join(overrides) + "\n", "config/overrides.txt")
            client.log_batch(run_id, tags=[RunTag("vocab", "".join(dataset.vocab.chars).replace("\n", "\\n"))])
        except BaseException as e:  # a stop or a failure while the run is being set up: do not leave it RUNNING
            status = "FAILED" if isinstance(e, Exception) else "KILLED"
            client.set_tag(run_id, "rnnlab.stop_reason", f"{type(e).__name__} while starting: {e}"[:5000])
            client.set_terminated(run_id, status)
            raise
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
        shows as tables: ``samples/samples.json`` (step, sample) and ``samples/report.json`` (sample,
        length). A resumed run appends to its tables."""
        from ..inspect.figures import learning_curve
        figure = learning_curve(history, title=self.run_id)
        if not self._safe("log_figure", self.client.log_figure, self.run_id, figure, "figures/learning_curve.png"):
            self.skipped.append("figures/learning_curve.png")
        periodic = [(step + 1, s) for step, texts in sorted(history.samples.items()) for s in texts]
        tables = {"samples/samples.json": {"step": [p[0] for p in periodic], "sample": [p[1] for p in periodic]}}
        report = history.report.get("samples") or []
        tables["samples/report.json"] = {"sample": list(report), "length": [len(s) for s in report]}
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

        package = Path(__file__).resolve().parent.parent
        code = package / "pyfunc_model.py"

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
        try:
            run = self.client.get_run(self.run_id)
            stale = stale_runs(self.client, [run.info.experiment_id])
        except Exception:  # noqa: BLE001 - a store that fails here was reported already
            stale = []
        if stale:
            lines.append(f"  {len(stale)} other run(s) of this experiment are marked RUNNING but their process is "
                         f"gone: {', '.join(r.info.run_id for r in stale[:5])}; continue one with "
                         f"python -m rnnlab resume=<run id>")
        return lines


def _overrides() -> list[str]:
    cfg = hydra_config()
    return list(cfg.overrides.task) if cfg is not None else []


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("rnnlab")
    except Exception:  # noqa: BLE001 - not installed (source checkout)
        return "source"
