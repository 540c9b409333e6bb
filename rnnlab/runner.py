"""One run of the command line: build everything from a validated config, train, checkpoint, report.

The task function returns the final validation loss (nats per character), the number Hydra's
sweepers optimise.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from . import checkpoint as ckpt_io
from .config import (TRACKERS, ConfigError, RunSettings, build, build_dataset, plugin_options,
                     run_settings)
from .data import DataError
from .model import CharLM, available_cpus, nats_to_bits
from .train import Callback, TrainingDiverged, train

log = logging.getLogger("rnnlab")
DIVERGED_LOSS = 1e6   # what a diverged trial reports to a sweep: finite (a NaN would abort Optuna), and bad


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    return HydraConfig.get().mode == RunMode.MULTIRUN


class StopRequested(Exception):
    def __init__(self, step: int, signal_number: int):
        self.step, self.signal = step, signal_number
        self.signal_name = signal.Signals(signal_number).name
        super().__init__(f"{self.signal_name} after step {step}")


class SignalStop(Callback):
    """Ctrl-C (SIGINT) or SIGTERM asks the run to stop at the end of the current step, where its
    state is whole and can be checkpointed; a second signal stops at once."""

    def __init__(self):
        self.received = None
        self.previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in a thread pool)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: stopping after this step (again to stop at once)",
                    signal.Signals(signum).name)

    def on_step(self, step, metrics):
        if self.received is not None:
            raise StopRequested(step + 1, self.received)


def run_name(cell: dict, cell_name: str, optimizer: str, lr: float) -> str:
    """A readable name such as ``lstm-h128-adam-lr0.01`` (``x2`` for two layers)."""
    layers = f"x{cell['num_layers']}" if cell.get("num_layers", 1) > 1 else ""
    return f"{cell_name}-h{cell['hidden_size']}{layers}-{optimizer}-lr{lr:g}"


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
        if self.bar is not None:
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
    validation loss. ``on_saved(kind, path)`` hears of every file written."""

    def __init__(self, directory: Path, lm, params, optimizer, vocab, meta: dict, every: int,
                 best: float = math.inf, on_saved=None):
        self.dir, self.lm, self.params, self.optimizer = Path(directory), lm, params, optimizer
        self.meta, self.every, self.best = meta, every, best
        self.meta.update(ckpt_io.model_meta(lm, vocab))
        self.on_saved = on_saved
        self.history = None
        self.step_done = 0
        self.latest = None

    def on_start(self, step, history):
        self.history = history

    def save(self, kind: str):
        bad = [k for k, v in self.params.items() if not np.all(np.isfinite(v))]
        if bad:  # never overwrite a good checkpoint with a broken state
            log.error("not writing the %s checkpoint at step %d: %s hold NaN/inf", kind, self.step_done,
                      ", ".join(bad))
            return None
        meta = dict(self.meta, step=self.step_done, best_val_nll=self.best)
        path = ckpt_io.save(self.dir / f"{kind}.npz", ckpt_io.Checkpoint(
            params=self.params, meta=meta, optimizer=self.optimizer.state_dict(), state=self.history.state))
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


def _model(ds, cell_name, cell_opts, settings):
    try:
        return CharLM(len(ds.vocab), cell_name, dtype=settings.dtype, reduction=settings.reduction,
                      threads=settings.threads or available_cpus(), **cell_opts)
    except ValueError as e:
        raise ConfigError(f"cell.{e}") from None


def _resume(source: str, lm, vocab, optimizer, cfg):
    """Load the checkpoint to resume from: a path, or an MLflow run id (its last checkpoint)."""
    path = Path(source).expanduser()
    if not path.exists() and not any(c in source for c in "/\\.") and cfg.tracking.name == "mlflow":
        from .tracking import download_checkpoint
        path = download_checkpoint(cfg, source)
    ckpt = ckpt_io.load(path)
    ckpt_io.validate(ckpt, lm, f"resume={source}")
    if tuple(ckpt.meta.get("vocab", ())) != vocab.chars:
        raise ckpt_io.CheckpointError(f"resume={source}: the checkpoint's vocabulary differs from the "
                                      f"dataset's; resume with the data it was trained on")
    try:
        optimizer.load_state_dict(ckpt.optimizer)
    except (KeyError, ValueError) as e:
        raise ckpt_io.CheckpointError(f"resume={source}: optimizer state unusable ({e})") from None
    return ckpt


def run(cfg) -> float:
    """Train as ``cfg`` says and return the final validation loss (nats/char)."""
    from hydra.core.hydra_config import HydraConfig

    t_start = time.perf_counter()
    settings: RunSettings = run_settings(cfg)
    cell_name, cell_opts = plugin_options("cell", cfg.cell)
    opt_name, _ = plugin_options("optimizer", cfg.optimizer)
    optimizer, clipper, sampler = build("optimizer", cfg), build("clip", cfg), build("sampler", cfg)
    schedule = build("schedule", cfg) if "schedule" in cfg else None
    tracking = cfg.tracking.name if "tracking" in cfg and cfg.tracking else "none"
    if tracking not in TRACKERS:
        raise ConfigError(f"tracking: unknown tracker {tracking!r}; available: {', '.join(TRACKERS)}")
    ds = build_dataset(cfg)
    try:
        ds.check_batch_size(settings.batch_size)
    except DataError as e:
        raise ConfigError(str(e)) from None
    lm = _model(ds, cell_name, cell_opts, settings)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    name = run_name(cell_opts, cell_name, opt_name, settings.lr)

    params = lm.init_params(np.random.default_rng(settings.seed))
    start, state, best = 0, None, math.inf
    if settings.resume:
        ckpt = _resume(settings.resume, lm, ds.vocab, optimizer, cfg)
        params, start, state = ckpt.params, ckpt.step, ckpt.state
        best = float(ckpt.meta.get("best_val_nll", math.inf))
        if start >= settings.steps:
            raise ConfigError(f"resume: the checkpoint is at step {start}, which already reaches "
                              f"steps={settings.steps}; ask for more steps")
        log.info("resuming from %s at step %d", settings.resume, start)

    tracker = None
    if tracking == "mlflow":
        from .tracking import MlflowTracker
        tracker = MlflowTracker.start(cfg, name=name, dataset=ds, lm=lm, out_dir=out_dir)

    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "seed": settings.seed,
            "run_name": name}
    checkpointer = Checkpointer(out_dir / "checkpoints", lm, params, optimizer, ds.vocab, meta,
                                settings.checkpoint_every, best,
                                on_saved=tracker.log_checkpoint if tracker else None)
    stopper = SignalStop()
    callbacks = [Progress(settings.steps, settings.log_every), SampleWriter(out_dir / "samples"), checkpointer]
    if tracker:
        callbacks.append(tracker)
        if settings.gradient_flow_every:
            from .inspect.monitor import GradientFlowMonitor
            callbacks.append(GradientFlowMonitor(lm, params, ds.targets("val"), settings.gradient_flow_every,
                                                 listeners=[tracker], seed=settings.seed))
    callbacks.append(stopper)  # last: the step is checkpointed and logged before a stop
    log.info("%s: %r on %r, %s, %s, %s, %s", name, lm, ds, optimizer, schedule, clipper, sampler)
    status, reason, hist = "FAILED", None, None
    stopper.install()
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a NaN/inf is caught and reported by train()
            hist = train(lm, params, ds, optimizer, clipper, steps=settings.steps,
                         batch_size=settings.batch_size, seed=settings.seed, eval_every=settings.eval_every,
                         sample_every=settings.sample_every or settings.steps,
                         num_samples=settings.num_samples, sampler=sampler, start_step=start, state=state,
                         callbacks=callbacks, schedule=schedule, patience=settings.patience,
                         min_delta=settings.min_delta, best=best, report_samples=settings.report_samples,
                         max_len=settings.max_len)
        status = "FINISHED"
        if tracker:
            best_path = out_dir / "checkpoints" / "best.npz"
            tracker.log_model(best_path if best_path.exists() else out_dir / "checkpoints" / "last.npz")
    except TrainingDiverged as e:
        reason = f"{e}; the last good checkpoint is {checkpointer.latest or 'none (none was written)'}"
    except StopRequested as e:
        status, stop_signal = "KILLED", e.signal
        path = checkpointer.save("last")
        reason = f"stopped by {e.signal_name} after step {e.step}; checkpoint {path}"
    except BaseException as e:  # a crash or a second Ctrl-C: say why the run failed, then re-raise
        reason = f"{type(e).__name__}: {e}"
        raise
    finally:
        stopper.restore()
        if tracker:
            tracker.finish(status, reason)
    if status == "KILLED":
        log.warning("%s", reason)
        print(f"rnnlab: {reason}\nresume with: python -m rnnlab resume={checkpointer.dir / 'last.npz'} "
              f"<the same overrides>", file=sys.stderr, flush=True)
        raise SystemExit(128 + stop_signal)
    if status == "FAILED":
        log.error("%s", reason)
        if _multirun():
            log.error("this trial reports val_nll=%g to the sweep, which goes on", DIVERGED_LOSS)
            return DIVERGED_LOSS
        print(f"rnnlab: error: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    final = hist.val_nll[-1]
    seconds = time.perf_counter() - t_start
    last_samples = hist.samples[max(hist.samples)] if hist.samples else []
    lines = [
        f"run {name} finished in {seconds:.1f}s ({hist.chars / max(hist.seconds, 1e-9):,.0f} chars/s)",
        f"  final val_nll {final:.4f} nats/char ({nats_to_bits(final):.4f} bits/char), "
        f"best {checkpointer.best:.4f}",
        f"  samples: {', '.join(last_samples)}",
        *([f"  test_nll {hist.test_nll:.4f} nats/char ({nats_to_bits(hist.test_nll):.4f} bits/char) with the "
           f"parameters of step {hist.best_step + 1 if hist.best_step is not None else hist.step[-1] + 1}"]
          if hist.test_nll is not None else []),
        *([f"  {len(hist.report['samples'])} samples of the best model: {hist.report['samples_new']:.1%} new, "
           f"{hist.report['samples_in_train']:.1%} copies of training names, "
           f"{hist.report['samples_in_heldout']:.1%} of held-out names ({out_dir / 'samples' / 'report.txt'})"]
          if hist.report else []),
        *([f"  stopped early at step {hist.stopped_at + 1}: no improvement of val_nll in "
           f"{settings.patience} evaluations (best checkpoint: {out_dir / 'checkpoints' / 'best.npz'})"]
          if hist.stopped_at is not None else []),
        f"  checkpoints: {out_dir / 'checkpoints'}",
    ]
    if tracker:
        lines += tracker.summary_lines()
    for line in lines:
        log.info(line)
    return final
