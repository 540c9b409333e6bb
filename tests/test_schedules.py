"""Learning-rate schedules and early stopping."""

import math

import numpy as np
import pytest

from rnnlab.clipping import NormClip
from rnnlab.data import LineDataset
from rnnlab.model import CharLM
from rnnlab.optim import SGD
from rnnlab.registry import SCHEDULES
from rnnlab.train import Callback, TrainOptions, train

TOY = "\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba", "elle", "nan", "pip"] * 3)


def test_schedule_values():
    assert SCHEDULES.names() == ["constant", "cosine", "step"]
    const = SCHEDULES.build("constant", warmup=4)
    assert [const(s, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    step = SCHEDULES.build("step", every=10, gamma=0.5)
    assert [step(s, 100) for s in (0, 9, 10, 25, 99)] == [1.0, 1.0, 0.5, 0.25, 0.5 ** 9]
    cos = SCHEDULES.build("cosine", warmup=10, min_factor=0.1)
    assert cos(0, 110) == pytest.approx(0.1) and cos(10, 110) == pytest.approx(1.0)
    assert cos(60, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert cos(109, 110) == pytest.approx(0.1)
    for name, bad, message in [("constant", {"warmup": -1}, "warmup must be an integer >= 0"),
                               ("step", {"every": 0}, "every must be an integer >= 1"),
                               ("step", {"gamma": 0}, r"gamma must be in \(0, 1\]"),
                               ("cosine", {"min_factor": 2}, r"min_factor must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            SCHEDULES.build(name, **bad)


def toy_run(schedule=None, **kw):
    ds = LineDataset(TOY, val_fraction=0.2, seed=0)
    lm = CharLM(len(ds.vocab), "rnn", 16)
    params = lm.init_params(np.random.default_rng(0))
    lrs = []

    class LR(Callback):
        def on_step(self, step, metrics):
            lrs.append(metrics["lr"])

    opt = SGD(0.5)
    hist = train(lm, params, ds, opt, NormClip(5), TrainOptions(batch_size=4, **kw), schedule=schedule,
                 callbacks=[LR()])
    return hist, lrs, opt


def test_training_follows_the_schedule_and_restores_the_learning_rate():
    hist, lrs, opt = toy_run(steps=20, eval_every=10, schedule=SCHEDULES.build("step", every=5, gamma=0.5))
    np.testing.assert_allclose(lrs, [0.5 * 0.5 ** (s // 5) for s in range(20)])
    assert opt.lr == 0.5


def test_early_stopping_stops_after_patience_evaluations_without_improvement():
    # a learning rate this large stops improving quickly on the toy names
    hist, lrs, _ = toy_run(steps=400, eval_every=5, patience=2, min_delta=0.0, sample_every=1000)
    assert hist.stopped_at is not None and hist.stopped_at < 399
    vals = hist.val_nll
    best_index = int(np.argmin(vals))
    assert len(vals) == best_index + 3            # the best, then two evaluations without improvement
    assert hist.step[-1] == hist.stopped_at == hist.eval_step[-1]
    assert list(hist.samples) == [hist.stopped_at]  # samples at the end, as for a full run
    full, _, _ = toy_run(steps=hist.stopped_at + 1, eval_every=5)
    assert full.val_nll == vals                    # early stopping changes nothing before it stops
