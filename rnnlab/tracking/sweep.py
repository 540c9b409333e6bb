"""Sweeps in MLflow: one parent run per Hydra multirun, its trials nested under it by a shared id."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

from ..config import ConfigError
from ..lifecycle import fail, last_end
from .store import connect, experiment_id, process_tags, ui_command, ui_link

log = logging.getLogger("rnnlab")


def sweep_id(launch_dir, sweep_dir) -> str:
    """The id shared by a sweep's parent run and its trials: a digest of where it was launched."""
    key = f"{Path(launch_dir).resolve()}|{sweep_dir}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def find_parent_run(client, exp_id: str, sid: str) -> str | None:
    """The parent run of the sweep ``sid`` in the experiment, if the sweep callback created one."""
    runs = client.search_runs([exp_id], filter_string=f"tags.`rnnlab.sweep_id` = '{sid}' and "
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
    parent run gets the best trial's figures and the command that compares the trials. A sweep that
    ends otherwise (a trial's config refused, a signal, a crash) still closes its parent run, with the
    status and the reason (at exit; SIGTERM and SIGHUP between trials end the process through it).
    """

    def __init__(self):
        self.client = self.parent = self.experiment_id = self.sid = None
        self.ended = False

    def on_multirun_start(self, config, **kwargs) -> None:
        if config.get("tracking", {}).get("name") != "mlflow":
            return
        try:
            client, uri = connect(config.tracking.get("uri"), launch_dir=os.getcwd())
        except ConfigError as e:
            fail(str(e))
        name = config.tracking.get("experiment") or "rnnlab"
        self.experiment_id = experiment_id(client, name)
        self.sid = sweep_id(os.getcwd(), str(config.hydra.sweep.dir))
        overrides = list(config.hydra.overrides.task)
        run = client.create_run(self.experiment_id, run_name=f"sweep {' '.join(overrides)}"[:240], tags={
            "rnnlab.sweep_id": self.sid, "rnnlab.role": "sweep", "overrides": " ".join(overrides),
            "sweeper": str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1],
            "launcher": str(config.hydra.launcher.get("_target_", "")).rsplit(".", 1)[-1], **process_tags()})
        self.client, self.parent, self.uri = client, run.info.run_id, uri
        atexit.register(self._close_unfinished)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) is signal.SIG_DFL:
                    signal.signal(sig, _exit_on_signal)
        log.info("sweep %s (its MLflow parent run) in experiment %r at %s", self.parent, name, uri)

    def _close_unfinished(self) -> None:
        """At exit, a parent run the sweep's end did not close: KILLED after a signal, else FAILED."""
        if self.parent is None or self.ended:
            return
        self.ended = True
        status = "KILLED" if last_end.get("status") == "KILLED" else "FAILED"
        reason = f"the sweep stopped before its end: {last_end.get('reason') or 'its process exited'}"
        try:
            self.client.set_tag(self.parent, "rnnlab.stop_reason", reason[:5000])
            self.client.set_terminated(self.parent, status)
        except Exception as e:  # noqa: BLE001 - at exit, a store that fails can only be reported
            log.error("could not close the sweep's parent run %s (%s)", self.parent, e)

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
            best = min(done, key=lambda t: t.data.metrics.get("best_val_nll", t.data.metrics["val_nll"]))
            metrics.append(Metric("best_val_nll", best.data.metrics.get("best_val_nll", best.data.metrics["val_nll"]),
                                  now, 0))
            self.client.set_tag(self.parent, "best_run_id", best.info.run_id)
            self.client.set_tag(self.parent, "best_overrides", best.data.tags.get("overrides", ""))
        self.client.log_batch(self.parent, metrics=metrics)
        self.client.set_terminated(self.parent, "FINISHED")
        self.ended = True
        log.info("sweep %s finished: %d trials (%d finished). Compare them with: "
                 "python -m rnnlab.compare sweep=%s%s", self.parent, len(trials), len(done), self.parent,
                 "" if self.uri.endswith(f"{os.getcwd()}/mlflow.db") else f" tracking.uri={self.uri}")
        log.info("see the sweep with: %s, then open %s", ui_command(self.uri), ui_link(self.uri, self.experiment_id))


def _exit_on_signal(signum, frame):
    """SIGTERM or SIGHUP between trials: exit through ``atexit``, which closes the parent run KILLED."""
    last_end.update(status="KILLED", reason=f"stopped by {signal.Signals(signum).name} between trials")
    raise SystemExit(128 + signum)
