"""One run of the command line: build everything from a validated config, train, report.

``run`` reads as the run goes: ``prepare`` builds and checks everything (a user mistake stops here,
before anything is written or tracked), the tracker starts, ``task`` trains under the ``Supervisor``
(which decides how a stop or a failure ends: rnnlab/lifecycle.py), and the summary is logged. It
returns the final validation loss (nats per character), the number Hydra's sweepers optimise.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import socket
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
from .lifecycle import DIVERGED_LOSS, StopNow, StopRequested, Supervisor, stopped_before_start, take_early
from .model import CharLM, nats_to_bits
from .threads import available_cpus
from .train import Callback, Resume, TrainOptions, train

log = logging.getLogger("rnnlab")


def run(cfg) -> float:
    """Train as ``cfg`` says and return the final validation loss (nats/char)."""
    t_start = time.perf_counter()
    stopper = take_early()                        # installed before any state exists: a signal always ends
    try:
        try:
            job = prepare(cfg)                    # a mistake stops here, before anything is written
            checkpointer = Checkpointer(job.out_dir / "checkpoints", job.lm, job.params, job.optimizer,
                                        job.dataset, checkpoint_meta(job.cfg, job), job.settings.checkpoint_every,
                                        job.resume.best_val_nll)
            checkpointer.claim(job.resumed_from)  # a run never writes into another run's checkpoints
            best = carry_best(job, checkpointer)  # the best checkpoint survives resumes
            stopper.check(None)
        except (StopRequested, StopNow) as stop:
            stopped_before_start(stop)
        tracker = start_tracker(job.cfg, job)     # None with tracking=none; a signal meanwhile is kept
        if tracker and best:
            tracker.log_checkpoint("best", best)
        if tracker:
            tracker = Shielded(tracker, stopper)  # a second signal never interrupts a call into the store
        checkpointer.on_saved = tracker.log_checkpoint if tracker else None
        supervisor = Supervisor(tracker, checkpointer, multirun=is_multirun(), stopper=stopper)
        hist = supervisor.run(lambda stopper: task(job, checkpointer, tracker, stopper))
    finally:
        stopper.restore()
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
    cfg: object = None                 # the run's config (resumed: the checkpoint's, the overrides on top)
    resumed_from: Path | None = None   # the checkpoint a resumed run continues
    stale_run: str | None = None       # resume=<run id> of a run whose process is gone: closed as KILLED
    best_source: Path | None = None    # the best checkpoint of the resumed run, carried into this one


MAX_MC_SAMPLES = 1000


def prepare(cfg) -> Job:
    """The run's objects, from a config checked against the options' declarations (``ConfigError``,
    ``DataError`` or ``CheckpointError`` on a mistake). A resumed run takes its checkpoint's config,
    the overrides of the command line on top."""
    resumed = None
    if cfg.get("resume"):
        resumed = _locate(cfg, str(cfg.resume))
        cfg = resume_config(cfg, resumed)
    settings = run_settings(cfg)
    cell_name, cell_opts = plugin_options("cell", cfg.cell)
    opt_name, _ = plugin_options("optimizer", cfg.optimizer)
    tracking = cfg.tracking.name if "tracking" in cfg and cfg.tracking else "none"
    if tracking not in TRACKERS:
        raise ConfigError(f"tracking: unknown tracker {tracking!r}; available: {', '.join(TRACKERS)}")
    optimizer, clipper, sampler = build("optimizer", cfg), build("clip", cfg), build("sampler", cfg)
    schedule = build("schedule", cfg) if "schedule" in cfg else None
    warmup = getattr(schedule, "warmup", 0) or 0
    if warmup >= settings.steps:
        raise ConfigError(f"schedule.warmup={warmup} is not shorter than the run (steps={settings.steps}): the "
                          f"learning rate would never reach lr; give a shorter warm-up or more steps")
    ds = build_dataset(cfg)
    try:
        ds.check_batch_size(settings.batch_size)
        lm = CharLM(len(ds.vocab), cell_name, dtype=settings.dtype, reduction=settings.reduction,
                    threads=settings.threads or available_cpus(), **cell_opts)
    except DataError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:
        raise ConfigError(f"cell.{e}") from None
    if settings.mc_samples > MAX_MC_SAMPLES:
        raise ConfigError(f"mc_samples={settings.mc_samples}: at most {MAX_MC_SAMPLES} draws (each one is a whole "
                          f"forward pass of every evaluation; 30 already averages well)")
    if settings.mc_samples and not lm.draws_masks:
        raise ConfigError(f"mc_samples={settings.mc_samples} averages over draws of the dropout masks, but the model "
                          f"has no dropout: give cell.dropout, cell.weight_dropout or cell.embedding_dropout, "
                          f"or mc_samples=0")
    check_memory(lm, ds, settings.batch_size, optimizer)
    job = Job(settings, run_name(cell_opts, cell_name, opt_name, settings.lr),
              Path(hydra_config().runtime.output_dir), tracking, ds, lm,
              lm.init_params(np.random.default_rng(settings.seed)), optimizer, clipper, sampler, schedule,
              Resume(), cfg)
    if resumed is not None:
        _resume(job, resumed)
    log.info("%s: %r on %r, %s, %s, %s, %s", job.name, lm, ds, optimizer, schedule, clipper, sampler)
    return job


GATES = {"rnn": 1, "gru": 3, "lstm": 4}   # weight blocks per cell (a cell not listed: counted as 4)


def memory_needed(lm: CharLM, dataset, batch_size: int, optimizer) -> int:
    """An estimate, in bytes, of what training ``lm`` allocates: parameters, gradients and optimizer
    buffers, plus the activations a batch keeps for backpropagation (a few arrays per gate and step)."""
    g, h, v = GATES.get(lm.cell_name, 4), lm.hidden_size, lm.vocab_size
    x = lm.embedding_size or v
    weights = v * lm.embedding_size + g * h * (x + h + 1) + (lm.num_layers - 1) * g * h * (2 * h + 1) + v * (h + 1)
    copies = 2 + len(getattr(optimizer, "slots", ())) + 1          # params, grads, buffers, the best params
    steps = getattr(dataset, "seq_len", 0) or 64
    activations = steps * batch_size * (lm.num_layers * h * (g + 3) + 2 * v) * 4
    return (weights * copies + activations) * lm.dtype.itemsize


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(lm: CharLM, dataset, batch_size: int, optimizer) -> None:
    """Refuse, before allocating, a model and batch that need more memory than the machine has."""
    need, have = memory_needed(lm, dataset, batch_size, optimizer), available_memory()
    if have is not None and need > have:
        raise ConfigError(f"cell.hidden_size={lm.hidden_size}, cell.num_layers={lm.num_layers}, batch_size={batch_size}: "
                          f"training needs about {need / 2**30:,.1f} GiB of memory, more than the "
                          f"{have / 2**30:,.1f} GiB available; choose a smaller model or batch")


class Shielded(Callback):
    """The tracker, its calls shielded from a second signal (see ``SignalStop.shield``)."""

    def __init__(self, tracker, stopper):
        self.tracker, self.stopper = tracker, stopper

    def __getattr__(self, name):
        attr = getattr(self.tracker, name)
        if not callable(attr):
            return attr

        def shielded(*args, **kwargs):
            with self.stopper.shield():
                return attr(*args, **kwargs)
        return shielded

    # the training loop's hooks (defined on Callback, so __getattr__ does not see them)
    def on_start(self, *a): return self.__getattr__("on_start")(*a)
    def on_step(self, *a): return self.__getattr__("on_step")(*a)
    def on_eval(self, *a): return self.__getattr__("on_eval")(*a)
    def on_samples(self, *a): return self.__getattr__("on_samples")(*a)
    def on_report(self, *a): return self.__getattr__("on_report")(*a)
    def on_end(self, *a): return self.__getattr__("on_end")(*a)


def start_tracker(cfg, job: Job):
    """The MLflow logger of the run (None with tracking=none); mlflow is imported only here."""
    if job.tracking != "mlflow":
        return None
    from .tracking import MlflowTracker
    from .tracking.store import close_stale
    tags = {"rnnlab.checkpoint_dir": str((job.out_dir / "checkpoints").resolve())}
    if job.settings.resume:
        tags["rnnlab.resumed_from"] = str(job.settings.resume)
    tracker = MlflowTracker.start(cfg, name=job.name, dataset=job.dataset, lm=job.lm, out_dir=job.out_dir,
                                  extra_tags=tags)
    if job.stale_run:
        close_stale(tracker.client, tracker.client.get_run(job.stale_run),
                    f"its process ended without closing the run (killed with SIGKILL, or the machine stopped); "
                    f"resumed from its last checkpoint as run {tracker.run_id}")
        log.info("run %s was left RUNNING by a process that is gone: closed as KILLED, continued as run %s",
                 job.stale_run, tracker.run_id)
    return tracker


def checkpoint_meta(cfg, job: Job) -> dict:
    """What the checkpoints' header says of the run, besides the model (see ``Checkpointer``)."""
    return {"config": OmegaConf.to_container(cfg, resolve=True), "seed": job.settings.seed, "run_name": job.name,
            "data_sha256": corpus_fingerprint(job.dataset)}


def carry_best(job: Job, checkpointer: Checkpointer) -> Path | None:
    """A resumed run starts with the best checkpoint of the run it continues: the best survives resumes."""
    if job.best_source is None or not job.best_source.is_file():
        return None
    target = checkpointer.dir / "best.npz"
    if target.resolve() == job.best_source.resolve():
        return None
    tmp = target.with_name(f"best.npz.{os.getpid()}.tmp")
    shutil.copyfile(job.best_source, tmp)
    os.replace(tmp, target)
    return target


def task(job: Job, checkpointer: Checkpointer, tracker, stopper):
    """Train the job, its progress, samples and checkpoints written and tracked; then log the model of
    the best checkpoint. Returns the History. ``stopper`` comes last: a step is checkpointed and logged
    before a stop."""
    s = job.settings
    options = TrainOptions(**{name: getattr(s, name) for name in TrainOptions.__dataclass_fields__})
    callbacks = [Progress(s.steps, s.log_every), SampleWriter(job.out_dir / "samples"), checkpointer,
                 *([tracker] if tracker else [])]
    if tracker and s.gradient_flow_every:
        with stopper.shield():   # an import interrupted half-way could leave a lock held
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


def corpus_fingerprint(dataset) -> str:
    """A digest of what the dataset's splits hold: a resume on other data (the file changed, another
    file) would silently train on another split, so the checkpoint records it and a resume compares."""
    h = hashlib.sha256(dataset.kind.encode())
    for split in ("train", "val", "test"):
        h.update(split.encode())
        if hasattr(dataset, "lines"):
            h.update("\n".join(dataset.lines[split]).encode("utf-8"))
        else:
            h.update(np.ascontiguousarray(dataset.ids[split]).tobytes())
    return h.hexdigest()


@dataclass
class Resumed:
    """The checkpoint a run resumes, and where it came from."""
    source: str                 # what resume= said
    path: Path                  # the checkpoint file
    ckpt: ckpt_io.Checkpoint
    run: object = None          # the MLflow run of resume=<run id>
    stale: bool = False         # that run is RUNNING but its process is gone
    cfg: object = None          # the command's config (where the run id is looked up)


def _locate(cfg, source: str) -> Resumed:
    """The checkpoint ``resume=`` names: a file, or the last checkpoint of an MLflow run id."""
    path = Path(source).expanduser()
    looks_like_id = not path.exists() and not any(c in source for c in "/\\.")
    tracking = cfg.tracking.name if "tracking" in cfg and cfg.tracking else "none"
    if looks_like_id and tracking != "mlflow":
        raise ConfigError(f"resume={source}: no such checkpoint file, and with tracking={tracking} a run id "
                          f"cannot be looked up; give the checkpoint's path (…/checkpoints/last.npz) or drop "
                          f"tracking={tracking}")
    if not looks_like_id:
        return Resumed(source, path, ckpt_io.load(path))
    from .tracking import connect, download_checkpoint
    from .tracking.store import process_state
    client, uri = connect(cfg.tracking.get("uri"))
    from mlflow.exceptions import MlflowException
    try:
        run = client.get_run(source)
    except MlflowException:
        raise ConfigError(f"resume={source}: no MLflow run with id {source!r} in {uri}") from None
    stale = False
    if run.info.status == "RUNNING":
        state = process_state(run)
        if state == "alive":
            raise ConfigError(f"resume={source}: that run is still running (process {run.data.tags.get('rnnlab.pid')} "
                              f"on this machine); stop it first (Ctrl-C or kill {run.data.tags.get('rnnlab.pid')})")
        stale = state == "gone"
    local = Path(run.data.tags.get("rnnlab.checkpoint_dir", "")) / "last.npz"
    if run.data.tags.get("rnnlab.host") == socket.gethostname() and local.is_file():
        return Resumed(source, local, ckpt_io.load(local), run, stale, cfg)  # as recent as the upload, or more
    path = download_checkpoint(cfg, source)
    return Resumed(source, path, ckpt_io.load(path), run, stale, cfg)


GROUP_KEYS = ("cell", "optimizer", "schedule", "clip", "sampler", "data")


def resume_config(cfg, resumed: Resumed):
    """The config of a resumed run: the checkpoint's whole config, with the overrides given on this
    command line on top (a group choice such as ``cell=gru`` replaces the group's node). Where to track
    (``tracking``) is this command's. Logs what the overrides change."""
    base = resumed.ckpt.meta.get("config")
    if not isinstance(base, dict):
        return cfg                      # a checkpoint without its config (written by the library API)
    old = OmegaConf.create(base)
    new = OmegaConf.create(base)
    hc = hydra_config()
    overrides = list(hc.overrides.task) if hc is not None else []
    keys = []
    for ov in overrides:
        key = ov.partition("=")[0].lstrip("+~")
        if not key or key.startswith(("hydra", "tracking.")) or key in ("resume", "tracking"):
            continue
        if key == "experiment":
            raise ConfigError("resume: a named experiment cannot be applied on top of a checkpoint's config; "
                              "give the options to change one by one")
        keys.append(key)
        value = OmegaConf.select(cfg, key, default=None)
        OmegaConf.update(new, key, OmegaConf.to_container(value, resolve=True)
                         if OmegaConf.is_config(value) else value, merge=False, force_add=True)
    if "lr" in keys and "optimizer.lr" not in keys and "lr" in new.get("optimizer", {}):
        new.optimizer.lr = new.lr       # the run's lr is the optimizer's (an interpolation before resolving)
    new.resume = str(cfg.resume)
    if "tracking" in cfg:
        new.tracking = OmegaConf.to_container(cfg.tracking, resolve=True)
    changes = []
    for key in keys:
        before, after = OmegaConf.select(old, key, default=None), OmegaConf.select(new, key, default=None)
        before = OmegaConf.to_container(before) if OmegaConf.is_config(before) else before
        after = OmegaConf.to_container(after) if OmegaConf.is_config(after) else after
        if before != after:
            changes.append(f"{key} {_short(before)} → {_short(after)}")
    log.info("resuming with the checkpoint's config%s", (", changed: " + ", ".join(changes)) if changes
             else " (no option changed)")
    return new


def _short(value) -> str:
    if isinstance(value, dict):
        return value.get("name", "{…}") if "name" in value else "{…}"
    return str(value)


def _resume(job: Job, resumed: Resumed) -> None:
    """Continue from the checkpoint: refuse what would silently do the wrong thing (another model,
    vocabulary, data, optimizer or batch of text streams), then take its parameters and state."""
    source, ckpt = resumed.source, resumed.ckpt
    where = f"resume={source}"
    spec = ckpt.meta.get("model") or {}
    lm = job.lm
    for key, mine in (("cell", lm.cell_name), ("hidden_size", lm.hidden_size), ("num_layers", lm.num_layers),
                      ("embedding_size", lm.embedding_size), ("dtype", lm.dtype.name)):
        if key in spec and spec[key] != mine:
            option = key if key == "dtype" else ("cell" if key == "cell" else f"cell.{key}")
            raise ckpt_io.CheckpointError(f"{where}: the checkpoint's model has {option}={spec[key]}, this run "
                                          f"asks {option}={mine}; resume with {option}={spec[key]} (or leave it "
                                          f"out: a resume takes the checkpoint's config)")
    if tuple(ckpt.meta.get("vocab", ())) != job.dataset.vocab.chars:
        raise ckpt_io.CheckpointError(f"{where}: the checkpoint's vocabulary differs from the "
                                      f"dataset's; resume with the data it was trained on")
    ckpt_io.validate(ckpt, lm, where)
    recorded = ckpt.meta.get("data_sha256")
    if recorded and recorded != corpus_fingerprint(job.dataset):
        raise ckpt_io.CheckpointError(
            f"{where}: the data differ from the checkpoint's ({job.dataset.source}: fingerprint "
            f"{corpus_fingerprint(job.dataset)[:12]} now, {recorded[:12]} when the checkpoint was written): the "
            f"file changed or another one is given, and the splits would silently differ; resume with the data "
            f"it was trained on")
    _check_optimizer_state(job, ckpt, where)
    if ckpt.state is not None and ckpt.state and ckpt.state[0][0].shape[0] != job.settings.batch_size:
        streams = ckpt.state[0][0].shape[0]
        raise ConfigError(f"{where}: the checkpoint carries the hidden state of {streams} text streams "
                          f"(batch_size={streams}); resume with batch_size={streams}")
    try:
        job.optimizer.load_state_dict(ckpt.optimizer)
    except (KeyError, ValueError) as e:
        raise ckpt_io.CheckpointError(f"{where}: optimizer state unusable ({e})") from None
    spent = float(ckpt.meta.get("wall_seconds", 0.0))
    if job.settings.time_budget and spent >= job.settings.time_budget * 60:
        raise ConfigError(f"resume: the checkpoint's run already spent {spent / 60:.1f} minutes of "
                          f"time_budget={job.settings.time_budget:g}; ask for a longer time_budget")
    if ckpt.step >= job.settings.steps and not job.settings.time_budget:
        raise ConfigError(f"resume: the checkpoint is at step {ckpt.step}, which already reaches "
                          f"steps={job.settings.steps}; ask for more steps")
    job.params = ckpt.params
    best = _best_of(resumed)
    job.resume = Resume(ckpt.step, ckpt.state, float(ckpt.meta.get("best_val_nll", math.inf)),
                        best.params if best else None, best.step - 1 if best else None, spent)
    job.resumed_from = resumed.path
    job.best_source = resumed.path.parent / "best.npz" if best else None
    job.stale_run = resumed.run.info.run_id if resumed.stale else None
    log.info("resuming from %s at step %d", source, ckpt.step)


def _check_optimizer_state(job: Job, ckpt, where: str) -> None:
    """The checkpoint's optimizer buffers must be this optimizer's, shaped like the parameters."""
    config = ckpt.meta.get("config") or {}
    theirs = (config.get("optimizer") or {}).get("name")
    mine = type(job.optimizer).__name__
    slots = {k.rsplit("/", 1)[1] for k in ckpt.optimizer if "/" in k}
    own = set(getattr(job.optimizer, "slots", ()))
    ours = (job.cfg.optimizer.get("name") if "optimizer" in job.cfg else None) or mine
    if (theirs and theirs != ours) or (slots and slots != own):
        raise ckpt_io.CheckpointError(
            f"{where}: the checkpoint holds the state of the optimizer {theirs or '?'} (buffers "
            f"{', '.join(sorted(slots)) or 'none'}); this run uses {ours} (buffers {', '.join(sorted(own)) or 'none'}); "
            f"resume with optimizer={theirs} (or leave optimizer out: a resume takes the checkpoint's config)")
    for key, value in ckpt.optimizer.items():
        if "/" in key:
            name = key.rsplit("/", 1)[0]
            if name not in job.params or np.shape(value) != job.params[name].shape:
                raise ckpt_io.CheckpointError(f"{where}: the optimizer buffer {key!r} does not fit the model")


def _best_of(resumed: Resumed):
    """The best checkpoint beside the resumed one (``best.npz``), if it is of the same run."""
    path = resumed.path.parent / "best.npz"
    if resumed.run is not None and not path.is_file():
        try:
            from .tracking import download_checkpoint
            path = download_checkpoint(resumed.cfg, resumed.source, "best")
        except ConfigError:
            return None
    if not path.is_file():
        return None
    try:
        best = ckpt_io.load(path)
    except ckpt_io.CheckpointError:
        return None
    same = best.meta.get("run_name") == resumed.ckpt.meta.get("run_name") and set(best.params) == set(resumed.ckpt.params)
    return best if same and best.step <= resumed.ckpt.step else None


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
    if job.settings.time_budget:
        lines.append(f"  time_budget {job.settings.time_budget:g} min: {hist.step[-1] + 1 if hist.step else 0:,} steps "
                     f"in {hist.wall_seconds / 60:.1f} min of training and evaluation")
    if hist.stopped_at is not None:
        lines.append(f"  stopped early at step {hist.stopped_at + 1}: no improvement of val_nll in "
                     f"{job.settings.patience} evaluations (best checkpoint: {out / 'checkpoints' / 'best.npz'})")
    lines.append(f"  checkpoints: {out / 'checkpoints'}")
    return lines + (tracker.summary_lines() if tracker else [])
