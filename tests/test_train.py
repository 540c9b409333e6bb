"""The library training loop: it learns, it is deterministic, it reports, it stops on divergence."""

import numpy as np
import pytest

from rnnlab.clipping import NormClip
from rnnlab.baselines import unigram_nll
from rnnlab.data import LineDataset, load_dataset
from rnnlab.model import CharLM
from rnnlab.optim import Adam
from rnnlab.train import Callback, TrainingDiverged, TrainOptions, evaluate, train

TOY = "\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba", "elle", "nan", "pip"] * 3)


def run(cell="lstm", steps=30, seed=0, ds=None, callbacks=(), **kw):
    ds = ds or LineDataset(TOY, val_fraction=0.2, seed=0)
    lm = CharLM(len(ds.vocab), cell, 16)
    params = lm.init_params(np.random.default_rng(seed))
    hist = train(lm, params, ds, Adam(0.02), NormClip(5),
                 TrainOptions(**{"steps": steps, "batch_size": 4, "seed": seed, "eval_every": 10, **kw}),
                 callbacks=callbacks)
    return lm, params, hist, ds


def test_same_seed_same_parameters():
    _, p1, h1, _ = run(seed=3)
    _, p2, h2, _ = run(seed=3)
    _, p3, _, _ = run(seed=4)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])
    assert h1.train_loss == h2.train_loss and h1.val_nll == h2.val_nll
    assert any(not np.array_equal(p1[k], p3[k]) for k in p1)


def test_history_and_callbacks():
    events = []

    class Recorder(Callback):
        def on_step(self, step, metrics):
            events.append(("step", step, sorted(metrics)))

        def on_eval(self, step, metrics):
            events.append(("eval", step, sorted(metrics)))

        def on_samples(self, step, samples):
            events.append(("samples", step, len(samples)))

        def on_end(self, step, history):
            events.append(("end", step, len(history.step)))

    lm, params, hist, ds = run(steps=25, sample_every=20, num_samples=3, callbacks=[Recorder()])
    assert hist.step == list(range(25)) and hist.eval_step == [9, 19, 24]
    assert sorted(hist.samples) == [19, 24] and all(len(s) == 3 for s in hist.samples.values())
    assert ("eval", 24, ["val_bpc", "val_nll"]) in events and events[-1] == ("end", 24, 25)
    assert ("step", 0, ["chars_per_sec", "grad_norm", "lr", "smooth_loss", "steps", "train_loss"]) in events
    assert hist.val_nll[-1] == pytest.approx(evaluate(lm, params, ds, "val"))
    assert hist.chars == sum(int(ds.train_batch(s, 4, 0).mask.sum()) for s in range(25))


def test_divergence_stops_with_the_step():
    ds = LineDataset(TOY, val_fraction=0.2, seed=0)
    lm = CharLM(len(ds.vocab), "rnn", 8)
    params = lm.init_params(np.random.default_rng(0))
    params["Wy"][0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="training diverged at step 0: the training loss is nan"):
        train(lm, params, ds, Adam(0.01), NormClip(5), TrainOptions(steps=5, batch_size=4))


def test_text_training_carries_state():
    from rnnlab.data import TextDataset
    text = "the quick brown fox jumps over the lazy dog. " * 40
    ds = TextDataset(text, val_fraction=0.1, seq_len=16)
    lm = CharLM(len(ds.vocab), "gru", 32)
    params = lm.init_params(np.random.default_rng(0))
    hist = train(lm, params, ds, Adam(0.02), NormClip(5), TrainOptions(steps=150, batch_size=4, eval_every=50))
    assert hist.state is not None and hist.state[0][0].shape == (4, 32)
    assert hist.val_nll[-1] < 0.5 * unigram_nll(ds.targets("train"), ds.targets("val"), len(ds.vocab))


@pytest.mark.slow
def test_lstm_learns_the_builtin_names_and_beats_an_rnn():
    """Same budget, same size: the LSTM ends clearly below the unigram baseline and below the RNN."""
    ds = load_dataset("lines", lowercase=True, val_fraction=0.1, seed=0)
    unigram = unigram_nll(ds.targets("train"), ds.targets("val"), len(ds.vocab))
    final = {}
    for cell in ("rnn", "lstm"):
        lm = CharLM(len(ds.vocab), cell, 64)
        params = lm.init_params(np.random.default_rng(0))
        hist = train(lm, params, ds, Adam(0.01), NormClip(5),
                     TrainOptions(steps=600, batch_size=32, eval_every=100))
        final[cell] = hist.best_val_nll
    assert final["lstm"] < unigram - 0.5, (final, unigram)
    assert final["lstm"] < final["rnn"], final


def test_sample_every_zero_means_never_and_options_are_checked():
    _, _, hist, _ = run(steps=12, sample_every=0)
    assert hist.samples == {} and hist.val_nll              # no samples at all, not even at the end
    _, _, hist, _ = run(steps=12, sample_every=100)
    assert list(hist.samples) == [11]                        # a period longer than the run: the last step
    for bad, message in [({"eval_every": 0}, "eval_every must be > 0, got 0"),
                         ({"sample_every": -1}, r"sample_every must be >= 0 \(0: never\), got -1"),
                         ({"patience": -2}, r"patience must be >= 0 \(0: no early stopping\)")]:
        with pytest.raises(ValueError, match=message):
            run(steps=2, **bad)
