"""One run of the command line: build everything from a validated config, train, report.

``run`` reads as the run goes: ``prepare`` builds and checks everything (a user mistake stops here,
before anything is written or tracked), the tracker starts, ``task`` trains under the ``Supervisor``
(which decides how a stop or a failure ends: rnnlab/lifecycle.py), and the summary is logged. It
returns the final validation loss (nats per character), the number Hydra's sweepers optimise.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from . import checkpoint as ckpt_io
from .callbacks import Checkpointer, Progress, SampleWriter
from .config import (TRACKERS, ConfigError, RunSettings, build, build_dataset, hydra_config, is_multirun,
                     plugin_options, run_settings)
from .data import DataError
from .lifecycle import DIVERGED_LOSS, Supervisor
from .model import CharLM, nats_to_bits
from .threads import available_cpus
from .train import Resume, TrainOptions, train

log = logging.getLogger("rnnlab")


def run(cfg) -> float:
    """Train as ``cfg`` says and return the final validation loss (nats/char)."""
    t_start = time.perf_counter()
    job = prepare(cfg)                            # a mistake stops here, before anything is written
    tracker = start_tracker(cfg, job)             # None with tracking=none
    checkpointer = Checkpointer(job.out_dir / "checkpoints", job.lm, job.params, job.optimizer, job.dataset,
                                checkpoint_meta(cfg, job), job.settings.checkpoint_every, job.resume.best_val_nll,
                                on_saved=tracker.log_checkpoint if tracker else None)
    supervisor = Supervisor(tracker, checkpointer, multirun=is_multirun())
    hist = supervisor.run(lambda stopper: task(job, checkpointer, tracker, stopper))
    if hist is None:                              # a failed trial of a sweep: the sweep goes on
        return DIVERGED_LOSS
    for line in summary(job, hist, checkpointer.best, time.perf_counter() - t_start, tracker):
        log.info(line)
    return hist.val_nll[-1]


@dataclass
class Job:
    """Everything a run is made of, built and checked before anything is written."""
    settings: RunSettings
    name: str                 # e.g. lstm-h64-adam-lr0.005
    out_dir: Path             # Hydra's output directory of the run
    tracking: str             # mlflow or none
    dataset: object
    lm: CharLM
    params: dict
    optimizer: object
    clipper: object
    sampler: object
    schedule: object
    resume: Resume


def prepare(cfg) -> Job:
    """The run's objects, from a config checked against the options' declarations (``ConfigError``,
    ``DataError`` or ``CheckpointError`` on a mistake)."""
    settings = run_settings(cfg)
    cell_name, cell_opts = plugin_options("cell", cfg.cell)
    opt_name, _ = plugin_options("optimizer", cfg.optimizer)
    tracking = cfg.tracking.name if "tracking" in cfg and cfg.tracking else "none"
    if tracking not in TRACKERS:
        raise ConfigError(f"tracking: unknown tracker {tracking!r}; available: {', '.join(TRACKERS)}")
    optimizer, clipper, sampler = build("optimizer", cfg), build("clip", cfg), build("sampler", cfg)
    schedule = build("schedule", cfg) if "schedule" in cfg else None
    ds = build_dataset(cfg)
    try:
        ds.check_batch_size(settings.batch_size)
        lm = CharLM(len(ds.vocab), cell_name, dtype=settings.dtype, reduction=settings.reduction,
                    threads=settings.threads or available_cpus(), **cell_opts)
    except DataError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"cell.{e}") from None
    job = Job(settings, run_name(cell_opts, cell_name, opt_name, settings.lr),
              Path(hydra_config().runtime.output_dir), tracking, ds, lm,
              lm.init_params(np.random.default_rng(settings.seed)), optimizer, clipper, sampler, schedule,
              Resume())
    if settings.resume:
        _resume(job, cfg)
    log.info("%s: %r on %r, %s, %s, %s, %s", job.name, lm, ds, optimizer, schedule, clipper, sampler)
    return job


def start_tracker(cfg, job: Job):
    """The MLflow logger of the run (None with tracking=none); mlflow is imported only here."""
    if job.tracking != "mlflow":
        return None
    from .tracking import MlflowTracker
    return MlflowTracker.start(cfg, name=job.name, dataset=job.dataset, lm=job.lm, out_dir=job.out_dir)


def checkpoint_meta(cfg, job: Job) -> dict:
    """What the checkpoints' header says of the run, besides the model (see ``Checkpointer``)."""
    return {"config": OmegaConf.to_container(cfg, resolve=True), "seed": job.settings.seed, "run_name": job.name}


def task(job: Job, checkpointer: Checkpointer, tracker, stopper):
    """Train the job, its progress, samples and checkpoints written and tracked; then log the model of
    the best checkpoint. Returns the History. ``stopper`` comes last: a step is checkpointed and logged
    before a stop."""
    s = job.settings
    options = TrainOptions(**{name: getattr(s, name) for name in TrainOptions.__dataclass_fields__})
    callbacks = [Progress(s.steps, s.log_every), SampleWriter(job.out_dir / "samples"), checkpointer,
                 *([tracker] if tracker else [])]
    if tracker and s.gradient_flow_every:
        from .inspect.monitor import GradientFlowMonitor
        callbacks.append(GradientFlowMonitor(job.lm, job.params, job.dataset.targets("val"), s.gradient_flow_every,
                                             listeners=[tracker], seed=s.seed))
    callbacks.append(stopper)
    with np.errstate(over="ignore", invalid="ignore"):  # a NaN/inf is caught and reported by train()
        hist = train(job.lm, job.params, job.dataset, job.optimizer, job.clipper, options, sampler=job.sampler,
                     schedule=job.schedule, callbacks=callbacks, resume=job.resume)
    if tracker:
        best = job.out_dir / "checkpoints" / "best.npz"
        tracker.log_model(best if best.exists() else checkpointer.latest)
    return hist


def run_name(cell: dict, cell_name: str, optimizer: str, lr: float) -> str:
    """A readable name such as ``lstm-h128-adam-lr0.01`` (``x2`` for two layers)."""
    layers = f"x{cell['num_layers']}" if cell.get("num_layers", 1) > 1 else ""
    return f"{cell_name}-h{cell['hidden_size']}{layers}-{optimizer}-lr{lr:g}"


def _resume(job: Job, cfg) -> None:
    """Continue from ``resume``: a checkpoint path, or an MLflow run id (its last checkpoint)."""
    source = job.settings.resume
    path = Path(source).expanduser()
    if not path.exists() and not any(c in source for c in "/\\.") and job.tracking == "mlflow":
        from .tracking import download_checkpoint
        path = download_checkpoint(cfg, source)
    ckpt = ckpt_io.load(path)
    ckpt_io.validate(ckpt, job.lm, f"resume={source}")
    if tuple(ckpt.meta.get("vocab", ())) != job.dataset.vocab.chars:
        raise ckpt_io.CheckpointError(f"resume={source}: the checkpoint's vocabulary differs from the "
                                      f"dataset's; resume with the data it was trained on")
    try:
        job.optimizer.load_state_dict(ckpt.optimizer)
    except (KeyError, ValueError) as e:
        raise ckpt_io.CheckpointError(f"resume={source}: optimizer state unusable ({e})") from None
    if ckpt.step >= job.settings.steps:
        raise ConfigError(f"resume: the checkpoint is at step {ckpt.step}, which already reaches "
                          f"steps={job.settings.steps}; ask for more steps")
    job.params = ckpt.params
    job.resume = Resume(ckpt.step, ckpt.state, float(ckpt.meta.get("best_val_nll", math.inf)))
    log.info("resuming from %s at step %d", source, ckpt.step)


def summary(job: Job, hist, best: float, seconds: float, tracker=None) -> list[str]:
    """The lines that end a finished run's log: losses, samples, the reports, where things are."""
    final, out = hist.val_nll[-1], job.out_dir
    last_samples = hist.samples[max(hist.samples)] if hist.samples else []
    lines = [f"run {job.name} finished in {seconds:.1f}s ({hist.chars / max(hist.seconds, 1e-9):,.0f} chars/s)",
             f"  final val_nll {final:.4f} nats/char ({nats_to_bits(final):.4f} bits/char), best {best:.4f}"]
    if last_samples:
        lines.append(f"  samples: {', '.join(last_samples)}")
    if hist.test_nll is not None:
        step = hist.best_step + 1 if hist.best_step is not None else hist.step[-1] + 1
        lines.append(f"  test_nll {hist.test_nll:.4f} nats/char ({nats_to_bits(hist.test_nll):.4f} bits/char) "
                     f"with the parameters of step {step}")
    if hist.report:
        r = hist.report
        lines.append(f"  {len(r['samples'])} samples of the best model: {r['samples_new']:.1%} new, "
                     f"{r['samples_in_train']:.1%} copies of training names, {r['samples_in_heldout']:.1%} "
                     f"of held-out names{f', {r_empty:.1%} empty' if (r_empty := r.get('samples_empty')) else ''} "
                     f"({out / 'samples' / 'report.txt'})")
    if hist.stopped_at is not None:
        lines.append(f"  stopped early at step {hist.stopped_at + 1}: no improvement of val_nll in "
                     f"{job.settings.patience} evaluations (best checkpoint: {out / 'checkpoints' / 'best.npz'})")
    lines.append(f"  checkpoints: {out / 'checkpoints'}")
    return lines + (tracker.summary_lines() if tracker else [])
