"""The training loop in library form: no Hydra, no MLflow, no printing.

    history = train(lm, params, dataset, optimizer, clipper, TrainOptions(steps=2000, batch_size=32))

Each step takes the batch of that step (a pure function of seed and step), runs forward and BPTT,
clips, and updates the parameters in place. Every ``eval_every`` steps it measures the validation loss;
every ``sample_every`` steps it generates samples. Callbacks hear about all of it (a logger, a progress
bar, a checkpointer). A non-finite loss or gradient stops the run with ``TrainingDiverged``.
``TrainOptions`` declares the loop's options once: the command line's top-level options include them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .checks import check_options, option
from .data import ends_at_eol
from .model import nats_to_bits
from .sampling import SoftmaxSampler, generate
from .threads import blas_threads_back

SMOOTHING = 0.98     # of the exponential moving average of the training loss (``smooth_loss``)


@dataclass
class TrainOptions:
    """The options of the training loop, with their defaults (also the command line's)."""
    steps: int = option(800, "training steps (one batch each)", "> 0")
    batch_size: int = option(32, "sequences per batch", "> 0")
    seed: int = option(0, "one seed for initialisation, batch order, dropout and sampling", ">= 0")
    eval_every: int = option(50, "measure the validation loss every N steps (and at the last one)", "> 0")
    sample_every: int = option(200, "generate samples every N steps (and at the last one)", ">= 0",
                               zero="never")
    num_samples: int = option(10, "samples generated each time", "> 0")
    max_len: int = option(50, "longest generated sample (names); characters generated (running text)", "> 0")
    report_samples: int = option(1000, "at the end, samples of the best model: the share of new names vs "
                                 "copies of the data", ">= 0", zero="no final sample report")
    patience: int = option(0, "early stopping: evaluations without improvement before stopping", ">= 0",
                           zero="no early stopping")
    min_delta: float = option(0.0, "the improvement of val_nll that counts", ">= 0")
    mc_samples: int = option(0, "evaluate by Monte Carlo dropout: validation and test losses (and so the best "
                             "checkpoint) of the next-character probabilities averaged over this many draws "
                             "of the training masks; needs dropout", ">= 0",
                             zero="the network without dropout")
    time_budget: float = option(0.0, "minutes to train: the run ends when they are spent (or at `steps`, if "
                                "sooner), its steps (and so its schedule) re-estimated at every step from "
                                "the time measured so far", ">= 0", zero="no budget: train for `steps`")


@dataclass
class Resume:
    """Where a resumed run starts: the steps already done, the hidden state carried into the next one
    (running text; None for zeros), the best validation loss so far and, if known, the parameters and
    step of that best (so the final report and test use them when the resumed part never improves)."""
    step: int = 0
    state: object = None
    best_val_nll: float = math.inf
    best_params: dict | None = None
    best_step: int | None = None
    wall_seconds: float = 0.0     # of the time budget, already spent


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite."""

    def __init__(self, step: int, what: str, value: float):
        self.step, self.what, self.value = step, what, value
        super().__init__(f"training diverged at step {step}: {what} is {value}")


class Callback:
    """Hooks of the training loop; override what you need."""

    def on_start(self, step: int, history: History) -> None: ...
    def on_step(self, step: int, metrics: dict) -> None: ...
    def on_eval(self, step: int, metrics: dict) -> None: ...
    def on_samples(self, step: int, samples: list[str]) -> None: ...
    def on_report(self, step: int, metrics: dict) -> None: ...   # sample novelty, test loss
    def on_end(self, step: int, history: History) -> None: ...


@dataclass
class History:
    """What a run measured: per-step training figures and the periodic validation losses."""
    step: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)        # nats/char of each step's batch
    smooth_loss: list = field(default_factory=list)       # its exponential moving average
    grad_norm: list = field(default_factory=list)         # before clipping
    eval_step: list = field(default_factory=list)
    val_nll: list = field(default_factory=list)           # nats/char on the validation split
    samples: dict = field(default_factory=dict)           # step -> generated texts
    state: object = None                                   # hidden state carried out of the last step
    stopped_at: int | None = None                          # the step where early stopping ended the run
    best_step: int | None = None                           # the step of the best validation loss …
    best_params: dict | None = None                        # … and a copy of the parameters then
    test_nll: float | None = None                          # nats/char on the test split, best parameters
    report: dict = field(default_factory=dict)             # the final sample report (see sample_report)
    chars: int = 0                                         # characters trained on
    seconds: float = 0.0                                   # time spent in training steps
    wall_seconds: float = 0.0                              # time spent in the loop (with a time budget)

    @property
    def best_val_nll(self) -> float:
        return min(self.val_nll) if self.val_nll else math.inf


def evaluate(lm, params, dataset, split: str = "val", batch_size: int | None = None, mc_samples: int = 0,
             seed: int = 0) -> float:
    """Mean negative log-likelihood in nats per character over a whole split.

    ``batch_size`` None: the dataset's own choice — 256 names per batch, or running text read as a few
    streams with the state carried along each (every stream starts cold, so many short streams would
    inflate the loss). ``mc_samples`` > 0: Monte Carlo dropout (``CharLM.mc_loss``), each draw carrying its
    own state; the masks come from ``seed`` alone, so every evaluation of a run draws the same ones.
    """
    total, count, state = 0.0, 0.0, None
    rng = np.random.default_rng([seed, 4, 0]) if mc_samples else None   # a stream of its own
    batches = dataset.eval_batches(split) if batch_size is None else dataset.eval_batches(split, batch_size)
    with blas_threads_back(lm.eval_threads_pay()):    # both cores: a split's second process sleeps meanwhile
        for batch in batches:
            if batch.reset:
                state = None
            if mc_samples:
                loss, state = lm.mc_loss(params, batch.x, batch.y, batch.mask, state, mc_samples, rng)
            else:
                loss, state = lm.loss(params, batch.x, batch.y, batch.mask, state)
            n = float(batch.mask.sum())
            total += loss * n
            count += n
    if count == 0:
        raise ValueError(f"the {split!r} split is empty")
    return total / count


def sample_report(dataset, samples: list[str]) -> dict:
    """For name datasets: the shares of ``samples`` that copy a training name, copy a held-out
    (validation or test) name, are new (makemore's split), or are empty (not a name: counted apart).
    Empty for running text."""
    if not ends_at_eol(dataset.kind) or not samples:
        return {}
    train = set(dataset.lines["train"])
    heldout = set(dataset.lines["val"]) | set(dataset.lines["test"])
    n = len(samples)
    empty = sum(s == "" for s in samples)
    in_train = sum(s in train for s in samples)
    in_heldout = sum(s not in train and s in heldout for s in samples)
    return {"samples_in_train": in_train / n, "samples_in_heldout": in_heldout / n,
            "samples_new": (n - in_train - in_heldout - empty) / n, "samples_empty": empty / n}


def train(lm, params: dict, dataset, optimizer, clipper, options: TrainOptions, *, sampler=None,
          schedule=None, callbacks=(), resume: Resume | None = None) -> History:
    """Train ``params`` in place for the steps ``resume.step … options.steps - 1`` and return the ``History``.

    schedule: ``schedule(step, steps)`` → factor of the optimizer's learning rate at each step (None:
    constant). ``options.patience``: stop early after that many evaluations without an improvement of
    the validation loss by more than ``min_delta`` (0: never); ``History.stopped_at`` then says where.
    The final validation loss is measured at the last step whatever ``eval_every`` is. resume: where a
    resumed run starts (None: from scratch).

    At the end, with the parameters of the best validation loss (``History.best_params``; the last
    ones if no evaluation improved on the best before): the test split, if the dataset has one, is
    evaluated once (``History.test_nll``), and ``report_samples`` samples are drawn for the sample
    report (``History.report``). Both reach the callbacks' ``on_report``; so does the sample report of
    every periodic batch of samples.
    """
    check_options(options)
    dataset.check_batch_size(options.batch_size)
    loop = _Loop(lm, params, dataset, options, sampler or SoftmaxSampler(), callbacks, resume or Resume(),
                 optimizer)
    base_lr = optimizer.lr
    for cb in callbacks:
        cb.on_start(loop.start, loop.hist)
    step, clock = loop.start, Budget(options, loop.hist)
    try:
        while step < clock.steps:
            if schedule is not None:
                optimizer.lr = base_lr * schedule(step, clock.steps)
            loop.train_step(step, optimizer, clipper, clock.steps)
            last = clock.is_last(step)
            if options.eval_every and ((step + 1) % options.eval_every == 0 or last):
                last = loop.evaluate(step, last) or last
            if options.sample_every and ((step + 1) % options.sample_every == 0 or last):
                loop.sample(step)
            if loop.hist.stopped_at is not None or last:
                break
            step += 1
    finally:
        optimizer.lr = base_lr
        lm.close()         # the unit split's second process, if any: evaluation and sampling use both cores
    return loop.finish()


class Budget:
    """How many steps the run has: ``options.steps``, or with a ``time_budget`` as many as fit in it
    (at most ``options.steps``: whichever limit comes first ends the run).

    With a budget, ``steps`` is re-estimated after every step from the wall time the run has spent in
    the loop so far (training, evaluations, samples; a resumed run counts its earlier part, kept in
    ``History.wall_seconds``), so the schedule is stretched over the budget and the last step — with its
    evaluation — ends about when the budget does. Until two steps are timed, ``options.steps`` is the guess.
    """

    def __init__(self, options: TrainOptions, hist: History):
        self.budget = options.time_budget * 60.0
        self.steps = self.limit = options.steps
        self.hist = hist
        self.start = time.perf_counter() - hist.wall_seconds
        self.first = None      # (step, elapsed) when the first step of this call ended

    def is_last(self, step: int) -> bool:
        """Whether ``step`` (just trained) is the run's last; re-estimates ``steps`` with a budget."""
        if not self.budget:
            return step == self.steps - 1
        elapsed = time.perf_counter() - self.start
        self.hist.wall_seconds = elapsed
        if self.first is None:
            self.first = (step, elapsed)
        elif step > self.first[0]:
            per_step = (elapsed - self.first[1]) / (step - self.first[0])
            self.steps = min(self.limit, step + 1 + max(0, int((self.budget - elapsed) / per_step)))
        return elapsed >= self.budget or step >= self.steps - 1


class _Loop:
    """The state of one call of ``train`` and its parts: a step, an evaluation, samples, the end."""

    def __init__(self, lm, params, dataset, options, sampler, callbacks, resume: Resume, optimizer):
        self.lm, self.params, self.dataset, self.o = lm, params, dataset, options
        self.optimizer = optimizer
        self.sampler, self.callbacks = sampler, callbacks
        self.start, self.state, self.best = resume.step, resume.state, resume.best_val_nll
        self.hist = History(state=resume.state, best_params=resume.best_params, best_step=resume.best_step,
                            wall_seconds=resume.wall_seconds)
        self.smooth, self.stale = None, 0
        self.names = ends_at_eol(dataset.kind)   # samples end at the end of a line

    def evaluated(self):
        """The parameters that evaluation, samples and the best checkpoint use: the optimizer's moving
        average (``ema``), or the trained ones."""
        return getattr(self.optimizer, "averaged", lambda p: p)(self.params)

    def train_step(self, step: int, optimizer, clipper, steps: int) -> None:
        """Forward, backward, clip, update; record and report the step."""
        lm, o, hist = self.lm, self.o, self.hist
        batch = self.dataset.train_batch(step, o.batch_size, o.seed)
        if batch.reset:
            self.state = None
        t0 = time.perf_counter()
        rng = np.random.default_rng([o.seed, 2, step]) if lm.draws_masks else None  # this step's masks
        loss, grads, self.state = lm.loss_and_grads(self.params, batch.x, batch.y, batch.mask, self.state,
                                                    rng=rng)
        norm = clipper(grads)
        if not math.isfinite(loss):
            raise TrainingDiverged(step, "the training loss", loss)
        if not math.isfinite(norm):
            raise TrainingDiverged(step, "the gradient norm", norm)
        lm.update(optimizer, self.params, grads)
        dt = time.perf_counter() - t0
        n_chars = int(batch.mask.sum())
        hist.chars += n_chars
        hist.seconds += dt
        self.smooth = loss if self.smooth is None else SMOOTHING * self.smooth + (1 - SMOOTHING) * loss
        hist.step.append(step)
        hist.train_loss.append(loss)
        hist.smooth_loss.append(self.smooth)
        hist.grad_norm.append(norm)
        hist.state = self.state
        metrics = {"train_loss": loss, "smooth_loss": self.smooth, "grad_norm": norm, "lr": optimizer.lr,
                   "chars_per_sec": n_chars / dt if dt > 0 else math.inf, "steps": steps}
        for cb in self.callbacks:
            cb.on_step(step, metrics)

    def evaluate(self, step: int, last: bool) -> bool:
        """Measure the validation loss, keep the best parameters; True when early stopping ends the run."""
        params = self.evaluated()
        val = evaluate(self.lm, params, self.dataset, "val", mc_samples=self.o.mc_samples, seed=self.o.seed)
        self.hist.eval_step.append(step)
        self.hist.val_nll.append(val)
        for cb in self.callbacks:
            cb.on_eval(step, {"val_nll": val, "val_bpc": nats_to_bits(val)})
        if val < self.best:
            self.hist.best_step, self.hist.best_params = step, {k: v.copy() for k, v in params.items()}
        self.stale = 0 if val < self.best - self.o.min_delta else self.stale + 1
        self.best = min(self.best, val)
        if self.o.patience and self.stale >= self.o.patience and not last:
            self.hist.stopped_at = step
            return True
        return False

    def sample(self, step: int) -> None:
        """The periodic samples, and their report (names)."""
        o = self.o
        texts = generate(self.lm, self.evaluated(), self.dataset.vocab, self.sampler,
                         np.random.default_rng([o.seed, 1, step]), n=o.num_samples, max_len=o.max_len,
                         stop_at_eol=self.names, min_len=1 if self.names else 0)   # shown names are never empty
        self.hist.samples[step] = texts
        report = sample_report(self.dataset, texts)
        for cb in self.callbacks:
            cb.on_samples(step, texts)
            if report:
                cb.on_report(step, report)

    def finish(self) -> History:
        """The test loss and the sample report of the best parameters; the callbacks' ends."""
        hist, o = self.hist, self.o
        end = hist.step[-1] if hist.step else o.steps - 1
        final = hist.best_params or self.evaluated()
        report = {}
        if self.dataset.num_chars("test") > 0:
            hist.test_nll = evaluate(self.lm, final, self.dataset, "test", mc_samples=o.mc_samples, seed=o.seed)
            report.update(test_nll=hist.test_nll, test_bpc=nats_to_bits(hist.test_nll))
        if o.report_samples and self.names:
            texts = generate(self.lm, final, self.dataset.vocab, self.sampler,
                             np.random.default_rng([o.seed, 3]), n=o.report_samples, max_len=o.max_len)
            hist.report = {**sample_report(self.dataset, texts), "samples": texts}
            report.update({f"final_{k}": v for k, v in hist.report.items() if k != "samples"})
        for cb in self.callbacks:
            if report:
                cb.on_report(end, report)
        for cb in self.callbacks:
            cb.on_end(end, hist)
        return hist
