"""The MLflow logger of one run: a callback of the training loop that logs params, buffered metrics,
samples, checkpoints and the model, keeps training through an outage of the store, and ends the run
with its status."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..config import hydra_config, is_multirun
from ..model import nats_to_bits
from ..train import Callback
from .store import connect, experiment_id, process_tags, stale_runs, ui_command, ui_link
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


# Overrides a run name leaves out: those already in it (cell, size, optimizer, lr) and where things are.
NAMED = ("cell", "cell.name", "cell.hidden_size", "cell.num_layers", "optimizer", "optimizer.name", "lr",
         "optimizer.lr")
UNNAMED = ("tracking", "resume", "hydra", "log_every", "checkpoint_every", "eval_every", "sample_every",
           "num_samples", "max_len", "report_samples", "threads", "gradient_flow_every")   # not the model
# The measures of the logged model (the best checkpoint), linked to it and to the split they are of.
MODEL_METRICS = {"best_val_nll": "validation", "best_val_bpc": "validation", "test_nll": "test", "test_bpc": "test"}
SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))   # split, MLflow's context name


def distinct_name(name: str, overrides: list[str], limit: int = 160) -> str:
    """``name`` (e.g. ``lstm-h64-adam-lr0.005``) followed by what else the run changed from the defaults
    that makes another model (``steps=3000 seed=1``, not ``log_every=10``), so that a day's runs tell
    apart in the MLflow UI; a path shows its file name."""
    extra = []
    for ov in overrides:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in NAMED or key.split(".")[0] in UNNAMED or key.startswith("hydra/"):
            continue
        if key.endswith("path") or "/" in value:
            value = value.rstrip("/").rsplit("/", 1)[-1]
        extra.append(f"{key}={value}")
    full = " ".join([name, *extra])
    return full if len(full) <= limit else full[:limit - 1] + "…"


def data_source(path) -> tuple[str, str]:
    """(MLflow source type, source JSON) of a dataset file: a URL, a local file or the built-in names."""
    import json
    if path is None:
        from ..data import builtin_path
        return "local", json.dumps({"path": str(builtin_path()), "builtin": True})
    if str(path).startswith(("http://", "https://")):
        return "http", json.dumps({"url": str(path)})
    return "local", json.dumps({"path": str(Path(str(path)).expanduser().resolve())})


def dataset_inputs(dataset, name: str, path) -> list:
    """The splits of ``dataset`` as MLflow dataset inputs (``mlflow.log_input``'s entities): name
    ``<data>.<split>``, a digest of the split's characters and the vocabulary, the source, a profile."""
    import hashlib
    import json

    import numpy as np
    from mlflow.entities import Dataset, DatasetInput, InputTag
    source_type, source = data_source(path)
    vocab = "".join(dataset.vocab.chars).encode()
    inputs = []
    for split, context in SPLITS:
        if dataset.num_chars(split) == 0:
            continue
        ids = np.ascontiguousarray(dataset.targets(split), dtype=np.int32)
        digest = hashlib.sha256(vocab + b"\0" + ids.tobytes()).hexdigest()[:16]
        profile = {"characters": int(dataset.num_chars(split)), "vocabulary": len(dataset.vocab)}
        if hasattr(dataset, "lines"):
            profile["sequences"] = len(dataset.lines[split])
        inputs.append(DatasetInput(Dataset(f"{name}.{context}", digest, source_type, source,
                                           profile=json.dumps(profile)),
                                   tags=[InputTag("mlflow.data.context", context)]))
    return inputs


# What the logged model takes: a table of requests, each optional column with its default in the model
# (rnnlab/pyfunc_model.py); a dict of scalars is one request. It returns the samples, one string each.
MODEL_INPUTS = (("prime", "string"), ("n", "long"), ("temperature", "double"), ("seed", "long"),
                ("max_len", "long"))
MODEL_INPUT_EXAMPLE = {"prime": "", "n": 3, "temperature": 1.0, "seed": 0, "max_len": 50}


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    return ModelSignature(inputs=Schema([ColSpec(t, name, required=False) for name, t in MODEL_INPUTS]),
                          outputs=Schema([ColSpec("string")]))


def route_mlflow_output() -> None:
    """MLflow's own output (its log lines, its warnings, its progress bars) goes to the run's log file
    (Hydra's ``<run dir>/rnnlab.log``), not among rnnlab's lines on the console. Without a log file
    (outside a Hydra job) nothing changes."""
    import os
    import warnings
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        return
    for name in ("mlflow", "alembic", "rnnlab.mlflow"):
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = list(files), False
    show = warnings.showwarning
    if getattr(show, "routes_mlflow", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if f"{os.sep}mlflow{os.sep}" in str(filename):
            logging.getLogger("rnnlab.mlflow").warning("%s: %s", category.__name__, message)
        else:
            show(message, category, filename, lineno, file, line)
    showwarning.routes_mlflow = True
    warnings.showwarning = showwarning


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
        self.experiment_id = None
        self.register = None        # a Model Registry name for the model (tracking.register)
        self.digests = {}           # MLflow context (validation, test) -> (dataset name, digest)
        self.model_params = {}      # what the logged model is: cell, sizes, vocabulary
        self.model_version = None
        self.pending = {}           # MODEL_METRICS: key -> (value, step), until the model is logged

    @classmethod
    def start(cls, cfg, name: str, dataset, lm, out_dir=None, launch_dir=None,
              parent_run_id: str | None = None, extra_tags: dict | None = None):
        from mlflow.entities import Param, RunTag

        route_mlflow_output()
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
        name = distinct_name(name, overrides)
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
            inputs = dataset_inputs(dataset, str(cfg.data.get("name", "data")), cfg.data.get("path"))
            _log_inputs(client, run_id, inputs)
        except BaseException as e:  # a stop or a failure while the run is being set up: do not leave it RUNNING
            status = "FAILED" if isinstance(e, Exception) else "KILLED"
            client.set_tag(run_id, "rnnlab.stop_reason", f"{type(e).__name__} while starting: {e}"[:5000])
            client.set_terminated(run_id, status)
            raise
        tracker = cls(client, run_id, uri, experiment, out_dir)
        tracker.experiment_id = exp_id
        tracker.register = cfg.tracking.get("register")
        tracker.digests = {i.dataset.name.rsplit(".", 1)[1]: (i.dataset.name, i.dataset.digest) for i in inputs}
        tracker.model_params = {"cell": lm.cell_name, **{k: str(v) for k, v in flatten(
            OmegaConf.to_container(cfg.cell, resolve=True)).items() if k != "name"},
            "dtype": str(cfg.get("dtype")), "vocab_size": len(dataset.vocab), "data": str(cfg.data.get("name"))}
        return tracker

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
            if key in MODEL_METRICS:   # logged once, with the model they measure (see log_model)
                self.pending[key] = (value, step + 1)
            else:
                self._metric(key, value, step + 1)

    def log_checkpoint(self, kind, path):
        if not self._safe("log_artifact", self.client.log_artifact, self.run_id, str(path), "checkpoints"):
            self.skipped.append(f"checkpoints/{kind}.npz")

    def on_end(self, step, history):
        self.flush()
        if history.val_nll:
            best = min(history.val_nll)
            self.pending["best_val_nll"] = (best, step + 1)
            self.pending["best_val_bpc"] = (nats_to_bits(best), step + 1)
        # the run's speed as its summary states it: characters trained on, over the seconds of the steps
        self._metric("train_chars", history.chars, step + 1)
        self._metric("train_seconds", history.seconds, step + 1)
        self.flush()
        if history.report.get("samples"):
            self.log_samples("samples/report.txt", history.report["samples"])
        self.log_figures(history)

    def log_figures(self, history):
        """The learning curves as ``figures/learning_curve.png``; the samples as tables the MLflow UI
        shows as tables: ``tables/samples.json`` (step, sample) and ``tables/report.json`` (sample,
        length). A resumed run appends to its tables."""
        from ..inspect.figures import learning_curve
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
        for key, (value, step) in self.pending.items():   # no model was logged: plain metrics of the run
            self._metric(key, value, step)
        self.pending = {}
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
        """Log the model of ``checkpoint_path`` (the best checkpoint) as an MLflow pyfunc model of this
        run: code plus the checkpoint's arrays, with a signature and an input example, at the step of the
        checkpoint, its validation (and test) loss linked to it and to the datasets they were measured
        on; registered under ``tracking.register`` when given. Its URI goes to ``self.model_uri``."""
        import mlflow

        from ..checkpoint import load

        package = Path(__file__).resolve().parent.parent
        code = package / "pyfunc_model.py"
        ckpt = load(checkpoint_path)

        def log():  # only called for a finished run; finish() then sets the final status again
            mlflow.set_tracking_uri(self.uri)
            said = io.StringIO()   # MLflow prints the registration: to the log file, rnnlab says it once
            with mlflow.start_run(run_id=self.run_id), contextlib.redirect_stderr(said), \
                    contextlib.redirect_stdout(said):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(code), artifacts={"checkpoint": str(checkpoint_path)},
                    code_paths=[str(package)], pip_requirements=["numpy>=2,<3", "mlflow>=3.17,<3.18"],
                    signature=model_signature(), input_example=MODEL_INPUT_EXAMPLE, step=ckpt.step,
                    params={**self.model_params, "checkpoint": Path(checkpoint_path).name},
                    registered_model_name=self.register or None)
            if said.getvalue().strip():
                logging.getLogger("rnnlab.mlflow").info("%s", said.getvalue().strip())
            self.model_uri = info.model_uri
            self.model_version = getattr(info, "registered_model_version", None)
            for key, (value, _) in list(self.pending.items()):
                name, digest = self.digests.get(MODEL_METRICS[key], (None, None))
                self.client.log_metric(self.run_id, key, value, step=ckpt.step, model_id=info.model_id,
                                       dataset_name=name, dataset_digest=digest)
                del self.pending[key]

        self._safe("log_model", log)

    def summary_lines(self) -> list[str]:
        lines = [f"  MLflow run {self.run_id} in experiment {self.experiment!r} at {self.uri}"]
        if self.model_uri:
            lines.append(f"  model: mlflow.pyfunc.load_model({self.model_uri!r})")
        if self.model_version:
            lines.append(f"  registered: models:/{self.register}/{self.model_version}")
        link = ui_link(self.uri, self.experiment_id, self.run_id)
        runs = ui_link(self.uri, self.experiment_id)
        if self.uri.startswith(("http://", "https://")):
            lines.append(f"  see it with: open {link}")
        else:
            lines.append(f"  see it with: {ui_command(self.uri)}")
            lines.append(f"  then open: {link}")
        lines.append(f"  all the runs of {self.experiment!r}, the best first: {runs}")
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


def _log_inputs(client, run_id: str, inputs) -> None:
    """``log_inputs``, retried: trials of a parallel sweep may create the same dataset record at the same
    moment, and SQLite's UNIQUE constraint then fails for all but one; a second try links the existing one."""
    from mlflow.exceptions import MlflowException
    for attempt in range(4):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            if "UNIQUE constraint failed" not in str(e) or attempt == 3:
                raise
            time.sleep(0.1 * (attempt + 1))
