"""The training loop in library form: no Hydra, no MLflow, no printing.

    history = train(lm, params, dataset, optimizer, clipper, steps=2000, batch_size=32, seed=0)

Each step takes the batch of that step (a pure function of seed and step), runs forward and BPTT,
clips, and updates the parameters in place. Every ``eval_every`` steps it measures the validation loss;
every ``sample_every`` steps it generates samples. Callbacks hear about all of it (a logger, a progress
bar, a checkpointer). A non-finite loss or gradient stops the run with ``TrainingDiverged``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .model import nats_to_bits
from .sampling import SoftmaxSampler, generate


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

    @property
    def best_val_nll(self) -> float:
        return min(self.val_nll) if self.val_nll else math.inf


def evaluate(lm, params, dataset, split: str = "val", batch_size: int | None = None) -> float:
    """Mean negative log-likelihood in nats per character over a whole split.

    ``batch_size`` None: the dataset's own choice — 256 names per batch, or running text read as 16
    streams with the state carried along each (every stream starts cold, so many short streams would
    inflate the loss: on Tiny Shakespeare's last 5 %, 256 streams read 0.03 nats/char worse than one).
    """
    total, count, state = 0.0, 0.0, None
    batches = dataset.eval_batches(split) if batch_size is None else dataset.eval_batches(split, batch_size)
    for batch in batches:
        if batch.reset:
            state = None
        loss, state = lm.loss(params, batch.x, batch.y, batch.mask, state)
        n = float(batch.mask.sum())
        total += loss * n
        count += n
    if count == 0:
        raise ValueError(f"the {split!r} split is empty")
    return total / count


def sample_report(dataset, samples: list[str]) -> dict:
    """For name datasets: the shares of ``samples`` that copy a training name, copy a held-out
    (validation or test) name, or are new (makemore's split). Empty for running text."""
    if not hasattr(dataset, "lines") or not samples:
        return {}
    train = set(dataset.lines["train"])
    heldout = set(dataset.lines["val"]) | set(dataset.lines["test"])
    n = len(samples)
    in_train = sum(s in train for s in samples)
    in_heldout = sum(s not in train and s in heldout for s in samples)
    return {"samples_in_train": in_train / n, "samples_in_heldout": in_heldout / n,
            "samples_new": (n - in_train - in_heldout) / n}


def train(lm, params: dict, dataset, optimizer, clipper, steps: int, batch_size: int = 32, seed: int = 0,
          eval_every: int = 200, sample_every: int = 0, num_samples: int = 5, sampler=None,
          start_step: int = 0, state=None, callbacks=(), smoothing: float = 0.98, schedule=None,
          patience: int = 0, min_delta: float = 0.0, best: float = math.inf, report_samples: int = 0,
          max_len: int = 50) -> History:
    """Train ``params`` in place for steps ``start_step … steps - 1`` and return the ``History``.

    schedule: ``schedule(step, steps)`` → factor of the optimizer's learning rate at each step (None:
    constant). patience: stop early after that many evaluations without an improvement of the
    validation loss by more than ``min_delta`` (0: never); ``History.stopped_at`` then says where.
    state: the hidden state carried into ``start_step`` (running text; None for zeros). The final
    validation loss is measured at the last step whatever ``eval_every`` is. best: the best validation
    loss before ``start_step`` (a resumed run).

    At the end, with the parameters of the best validation loss (``History.best_params``; the last
    ones if no evaluation improved on ``best``): the test split, if the dataset has one, is evaluated
    once (``History.test_nll``), and ``report_samples`` samples are drawn for the sample report
    (``History.report``). Both reach the callbacks' ``on_report``; so does the sample report of
    every periodic batch of samples.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    dataset.check_batch_size(batch_size)
    sampler = sampler or SoftmaxSampler()
    if patience < 0:
        raise ValueError(f"patience must be >= 0, got {patience}")
    hist = History(state=state)
    smooth = None
    base_lr = optimizer.lr
    stale = 0
    stop_at_eol = hasattr(dataset, "lines")  # names end at a newline; running text goes on
    for cb in callbacks:
        cb.on_start(start_step, hist)
    for step in range(start_step, steps):
        batch = dataset.train_batch(step, batch_size, seed)
        if batch.reset:
            state = None
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, 2, step]) if lm.dropout else None  # this step's dropout masks
        loss, grads, state = lm.loss_and_grads(params, batch.x, batch.y, batch.mask, state, rng=rng)
        norm = clipper(grads)
        if not math.isfinite(loss):
            raise TrainingDiverged(step, "the training loss", loss)
        if not math.isfinite(norm):
            raise TrainingDiverged(step, "the gradient norm", norm)
        if schedule is not None:
            optimizer.lr = base_lr * schedule(step, steps)
        optimizer.step(params, grads)
        dt = time.perf_counter() - t0
        n_chars = int(batch.mask.sum())
        hist.chars += n_chars
        hist.seconds += dt
        smooth = loss if smooth is None else smoothing * smooth + (1 - smoothing) * loss
        hist.step.append(step)
        hist.train_loss.append(loss)
        hist.smooth_loss.append(smooth)
        hist.grad_norm.append(norm)
        hist.state = state
        metrics = {"train_loss": loss, "smooth_loss": smooth, "grad_norm": norm, "lr": optimizer.lr,
                   "chars_per_sec": n_chars / dt if dt > 0 else math.inf}
        for cb in callbacks:
            cb.on_step(step, metrics)
        last = step == steps - 1
        if eval_every and ((step + 1) % eval_every == 0 or last):
            val = evaluate(lm, params, dataset, "val")
            hist.eval_step.append(step)
            hist.val_nll.append(val)
            for cb in callbacks:
                cb.on_eval(step, {"val_nll": val, "val_bpc": nats_to_bits(val)})
            if val < best:
                hist.best_step, hist.best_params = step, {k: v.copy() for k, v in params.items()}
            if val < best - min_delta:
                stale = 0
            else:
                stale += 1
            best = min(best, val)
            if patience and stale >= patience and not last:
                hist.stopped_at, last = step, True
        if sample_every and ((step + 1) % sample_every == 0 or last):
            rng = np.random.default_rng([seed, 1, step])
            texts = generate(lm, params, dataset.vocab, sampler, rng, n=num_samples, max_len=max_len,
                             stop_at_eol=stop_at_eol)
            hist.samples[step] = texts
            report = sample_report(dataset, texts)
            for cb in callbacks:
                cb.on_samples(step, texts)
                if report:
                    cb.on_report(step, report)
        if hist.stopped_at is not None:
            break
    optimizer.lr = base_lr
    end = hist.step[-1] if hist.step else steps - 1
    final = hist.best_params or params
    report = {}
    if dataset.num_chars("test") > 0:
        hist.test_nll = evaluate(lm, final, dataset, "test")
        report.update(test_nll=hist.test_nll, test_bpc=nats_to_bits(hist.test_nll))
    if report_samples and stop_at_eol:
        texts = generate(lm, final, dataset.vocab, sampler, np.random.default_rng([seed, 3]),
                         n=report_samples, max_len=max_len)
        hist.report = {**sample_report(dataset, texts), "samples": texts}
        report.update({f"final_{k}": v for k, v in hist.report.items() if k != "samples"})
    if report:
        for cb in callbacks:
            cb.on_report(end, report)
    for cb in callbacks:
        cb.on_end(end, hist)
    return hist
