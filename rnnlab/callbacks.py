"""The training loop's callbacks of a command-line run: progress on the terminal or in the log, samples
as files, checkpoints (``last.npz``, ``best.npz``)."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt_io
from .config import ConfigError
from .train import Callback

log = logging.getLogger("rnnlab")


class Progress(Callback):
    """A progress bar on a terminal; otherwise a log line every ``log_every`` steps."""

    def __init__(self, steps: int, log_every: int, bar: bool | None = None):
        self.steps, self.log_every = steps, log_every
        self.bar_wanted = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        self.last_val = math.nan

    def on_start(self, step, history):
        if self.bar_wanted:
            from tqdm import tqdm
            self.bar = tqdm(total=self.steps, initial=step, unit="step", dynamic_ncols=True, leave=False)

    def on_step(self, step, m):
        self.steps = m.get("steps", self.steps)      # a time budget re-estimates the run's steps
        if self.bar is not None:
            if self.bar.total != self.steps:
                self.bar.total = self.steps
            self.bar.update(1)
            val = "-" if math.isnan(self.last_val) else f"{self.last_val:.3f}"
            self.bar.set_postfix(loss=f"{m['smooth_loss']:.3f}", val=val, refresh=False)
        elif (step + 1) % self.log_every == 0 or step + 1 == self.steps:
            log.info("step %d/%d  train_loss %.4f  grad_norm %.2f  %.0f chars/s", step + 1, self.steps,
                     m["smooth_loss"], m["grad_norm"], m["chars_per_sec"])

    def on_eval(self, step, m):
        self.last_val = m["val_nll"]
        if self.bar is None:
            log.info("step %d/%d  val_nll %.4f  val_bpc %.4f", step + 1, self.steps, m["val_nll"],
                     m["val_bpc"])

    def on_samples(self, step, samples):
        if self.bar is not None:
            self.bar.clear()
        log.info("samples at step %d: %s", step + 1, ", ".join(samples))

    def on_report(self, step, m):
        if self.bar is not None:
            self.bar.clear()
        log.info("step %d: %s", step + 1, "  ".join(f"{k} {v:.4f}" for k, v in m.items()))

    def on_end(self, step, history):
        if self.bar is not None:
            self.bar.close()


class SampleWriter(Callback):
    """Keeps every batch of samples as ``samples/step_NNNNNN.txt`` in the run's output directory."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def write(self, name: str, samples):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / name).write_text("\n".join(samples) + "\n")

    def on_samples(self, step, samples):
        self.write(f"step_{step + 1:06d}.txt", samples)

    def on_end(self, step, history):
        if history.report.get("samples"):  # the final sample report's samples, from the best parameters
            self.write("report.txt", history.report["samples"])


class Checkpointer(Callback):
    """Writes ``last.npz`` every ``every`` steps and at the end, ``best.npz`` at each new best
    validation loss. ``on_saved(kind, path)`` hears of every file written. The folder belongs to one
    run (``claim``): another run given the same folder is refused before it writes anything."""

    OWNER = ".owner"

    def __init__(self, directory: Path, lm, params, optimizer, dataset, meta: dict, every: int,
                 best: float = math.inf, on_saved=None):
        self.dir, self.lm, self.params, self.optimizer = Path(directory), lm, params, optimizer
        self.meta, self.every, self.best = meta, every, best
        self.meta.update(ckpt_io.model_meta(lm, dataset.vocab, dataset.kind))
        self.on_saved = on_saved
        self.history = None
        self.step_done = 0
        self.latest = None

    def claim(self, resumed_from: Path | None = None) -> None:
        """Make the folder this run's: create ``.owner`` in it exclusively (atomic, so of two runs started
        at once into one folder only one gets it). A folder that another run owns is refused, unless this
        run resumes a checkpoint of that very folder (the same run, continued)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        owner = self.dir / self.OWNER
        try:
            fd = os.open(owner, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if resumed_from is not None and Path(resumed_from).resolve().parent == self.dir.resolve():
                return
            try:
                who = owner.read_text().strip()
            except OSError:
                who = "?"
            raise ConfigError(f"hydra.run.dir={self.dir.parent}: its checkpoints belong to another run ({who}); "
                              f"a run never overwrites another run's checkpoints: give another hydra.run.dir "
                              f"(by default each run gets a new folder)") from None
        except OSError as e:
            raise ConfigError(f"hydra.run.dir={self.dir.parent}: cannot write checkpoints there "
                              f"({e.strerror}); give a writable hydra.run.dir") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"pid {os.getpid()} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def on_start(self, step, history):
        self.history = history
        self.step_done = step

    def save(self, kind: str):
        bad = [k for k, v in self.params.items() if not np.all(np.isfinite(v))]
        if bad:  # never overwrite a good checkpoint with a broken state
            log.error("not writing the %s checkpoint at step %d: %s hold NaN/inf", kind, self.step_done,
                      ", ".join(bad))
            return None
        meta = dict(self.meta, step=self.step_done, best_val_nll=self.best,
                    wall_seconds=self.history.wall_seconds)
        params = self.params if kind == "last" else getattr(self.optimizer, "averaged", lambda p: p)(self.params)
        path = ckpt_io.save(self.dir / f"{kind}.npz", ckpt_io.Checkpoint(
            params=params, meta=meta, optimizer=self.optimizer.state_dict(), state=self.history.state))
        self.latest = path
        if self.on_saved:
            self.on_saved(kind, path)
        return path

    def on_step(self, step, metrics):
        self.step_done = step + 1
        if self.step_done % self.every == 0:
            self.save("last")

    def on_eval(self, step, metrics):
        if metrics["val_nll"] < self.best:
            self.best = metrics["val_nll"]
            self.save("best")

    def on_end(self, step, history):
        self.save("last")
