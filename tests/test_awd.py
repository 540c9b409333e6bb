"""Issue 17's regularisers (AWD-LSTM's recipe): locked (variational) dropout, weight dropout on Wh,
embedding dropout, AR/TAR, a moving average of the weights (``optimizer.ema``) and a time budget.
Gradient-checked in float64 with fixed masks; resumable bit for bit."""

import time

import numpy as np
import pytest

from rnnlab import checkpoint as ckpt_io
from rnnlab.cells.base import Layout
from rnnlab.clipping import NormClip
from rnnlab.data import LineDataset, TextDataset
from rnnlab.gradcheck import gradcheck
from rnnlab.model import CharLM
from rnnlab.optim import OPTIMIZERS, Adam
from rnnlab.train import Resume, TrainOptions, evaluate, train

from test_cli import cli, run_dir

V, T, B, H = 7, 6, 5, 4
CELLS = ["rnn", "lstm", "gru"]
EACH = {"locked": dict(dropout=0.4, locked_dropout=True), "weight": dict(weight_dropout=0.5),
        "embedding": dict(embedding_dropout=0.4), "ar": dict(ar=2.0), "tar": dict(tar=3.0),
        "all": dict(dropout=0.3, locked_dropout=True, weight_dropout=0.4, embedding_dropout=0.3, ar=1.5, tar=2.5)}


def batch(rng):
    """Lengths 6, 4, 0, 1, 6 (an empty and a one-step sequence), and a carried state."""
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array([6, 4, 0, 1, 6])).astype(float)
    return x, y, mask


def perturbed(lm, rng):
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.3, params[k].shape)
    return params


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("which", list(EACH))
@pytest.mark.parametrize("embedding_size", [0, 3])
def test_gradcheck_with_fixed_masks(cell, which, embedding_size, rng):
    lm = CharLM(V, cell, H, num_layers=2, dtype=np.float64, embedding_size=embedding_size, **EACH[which])
    params = perturbed(lm, rng)
    x, y, mask = batch(rng)
    state0 = [tuple(rng.normal(0, 0.5, (B, H)) for _ in s) for s in lm.initial_state(B)]
    drop = lm.dropout_masks(np.random.default_rng(5), T, B)
    loss, grads, _ = lm.loss_and_grads(params, x, y, mask, state0, drop=drop)
    assert loss == pytest.approx(lm.loss(params, x, y, mask, state0, drop=drop)[0], rel=1e-12)  # the NLL alone
    errors = gradcheck(lambda: lm.objective(params, x, y, mask, state0, drop=drop), params, grads)
    assert max(errors.values()) < 1e-6, errors
    plain = CharLM(V, cell, H, num_layers=2, dtype=np.float64, embedding_size=embedding_size)
    assert lm.objective(params, x, y, mask, state0, drop=drop) != pytest.approx(
        plain.objective(params, x, y, mask, state0), rel=1e-6)    # the option changes what is trained


def test_masks_drop_what_they_say(rng):
    lm = CharLM(V, "lstm", 64, num_layers=2, dropout=0.25, locked_dropout=True, weight_dropout=0.5,
                embedding_dropout=0.2)
    m = lm.dropout_masks(np.random.default_rng(0), 50, 40)
    assert m.units[0] is None and [u.shape for u in m.units[1:]] == [(1, 40, 64)] * 2   # one mask per sequence
    assert [w.shape for w in m.weights] == [(64, 256)] * 2 and m.chars.shape == (V,)
    for mask, p in ((m.units[1], 0.25), (m.weights[0], 0.5)):
        assert set(np.unique(mask)) == {0.0, np.float32(1 / (1 - p))}
        assert (mask == 0).mean() == pytest.approx(p, abs=0.03)
    params = lm.init_params(rng)
    used = lm.masked(params, m)
    dropped = m.chars == 0
    assert (used["l0.Wx"][dropped] == 0).all() and np.allclose(used["l0.Wx"][~dropped], params["l0.Wx"][~dropped] / 0.8)
    assert used["l1.Wx"] is params["l1.Wx"]     # the other arrays are shared, not copied
    np.testing.assert_array_equal(used["l1.Wh"], params["l1.Wh"] * m.weights[1])
    # training draws masks (a pure function of the rng); evaluation uses the whole network
    assert lm.draws_masks and not CharLM(V, "lstm", 8, ar=1, tar=1).draws_masks
    x, y, mask = (a[:, :5] for a in batch(rng))
    a = lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(1))[0]
    assert a == lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(1))[0]
    assert a != lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(2))[0]
    assert lm.loss_and_grads(params, x, y, mask)[0] == pytest.approx(lm.loss(params, x, y, mask)[0], rel=1e-6)
    for bad in ("weight_dropout", "embedding_dropout"):
        with pytest.raises(ValueError, match=rf"{bad} must be in \[0, 1\)"):
            CharLM(V, "rnn", H, **{bad: 1.0})
    with pytest.raises(ValueError, match="tar must be >= 0"):
        CharLM(V, "rnn", H, tar=-1)


def test_locked_masks_are_the_same_at_every_step(rng):
    """A locked mask drops the same units of a sequence at every step: the dropped top-layer units
    give the softmax nothing at any step."""
    lm = CharLM(V, "gru", H, dtype=np.float64, dropout=0.5, locked_dropout=True)
    params = perturbed(lm, rng)
    x = rng.integers(0, V, (T, B))
    m = lm.dropout_masks(np.random.default_rng(3), T, B)
    top = m.units[1]
    params["by"][:] = 0
    (logits, _), _ = lm.forward(params, x, drop=m)
    _, (_, dropped_top, *_) = lm._forward(params, x, Layout(None, T, B), None, m.units)
    off = np.broadcast_to(top == 0, (T, B, H)).reshape(T * B, H)
    assert off.any() and (dropped_top[off] == 0).all()
    assert logits.shape == (T, B, V)


@pytest.mark.parametrize("cell", CELLS)
def test_shards_give_the_one_pass_result_with_every_regulariser(cell, rng, monkeypatch):
    monkeypatch.setattr(CharLM, "MIN_SHARD_WORK", 1)
    kw = dict(dtype=np.float64, embedding_size=3, **EACH["all"])
    one, two = CharLM(V, cell, H, 2, **kw), CharLM(V, cell, H, 2, threads=2, **kw)
    params = perturbed(one, rng)
    x, y, mask = batch(rng)
    drop = one.dropout_masks(rng, T, B)
    (l1, g1, f1), (l2, g2, f2) = (m.loss_and_grads(params, x, y, mask, drop=drop) for m in (one, two))
    assert len(two.shards(B, int(mask.sum()))) == 2 and l2 == pytest.approx(l1, rel=1e-13)
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_ema_is_the_bias_corrected_average_and_resumes(rng):
    """Flat and per-array updates keep the same average; it equals the average computed by hand;
    its state round-trips through state_dict."""
    lm = CharLM(V, "lstm", H)
    params = lm.init_params(rng)
    arrays = {k: v.copy() for k, v in params.items()}
    opt, per_array = Adam(0.01, ema=0.9), Adam(0.01, ema=0.9)
    assert opt.slots == ("m", "v", "avg") and Adam(0.01).slots == ("m", "v")
    assert opt.averaged(params) is params          # nothing averaged before the first update
    by_hand = {k: np.zeros_like(v, np.float64) for k, v in params.items()}
    for _ in range(5):
        grads = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in params.items()}
        opt.step(params, _flat_like(params, grads))
        per_array.step(arrays, grads)
        for k in by_hand:
            by_hand[k] = 0.9 * by_hand[k] + 0.1 * params[k]
    avg = opt.averaged(params)
    for k in params:
        np.testing.assert_array_equal(params[k], arrays[k])
        np.testing.assert_allclose(avg[k], by_hand[k] / (1 - 0.9 ** 5), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(avg[k], per_array.averaged(arrays)[k])
    restored = Adam(0.01, ema=0.9)
    restored.load_state_dict(opt.state_dict())
    for k in params:
        np.testing.assert_array_equal(restored.averaged(params)[k], avg[k])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
            OPTIMIZERS.build("sgd", lr=0.1, ema=bad)


def _flat_like(params, grads):
    out = type(params).like(params, fill="empty")
    for k in out:
        out[k] = grads[k]
    return out


def test_training_evaluates_and_keeps_the_average(tmp_path):
    ds = LineDataset("\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba"] * 4), val_fraction=0.2)
    lm = CharLM(len(ds.vocab), "lstm", 16)
    params = lm.init_params(np.random.default_rng(0))
    opt = Adam(0.02, ema=0.95)
    hist = train(lm, params, ds, opt, NormClip(5), TrainOptions(steps=30, batch_size=4, eval_every=10,
                                                                 sample_every=0, report_samples=0))
    avg = opt.averaged(params)
    assert hist.val_nll[-1] == pytest.approx(evaluate(lm, avg, ds, "val"), rel=1e-12)
    assert hist.val_nll[-1] != pytest.approx(evaluate(lm, params, ds, "val"), rel=1e-6)
    if hist.best_step == 29:
        for k in params:
            np.testing.assert_array_equal(hist.best_params[k], avg[k])


def _resumable_run(steps, ds, start=None, seed=0):
    """Train a model with every regulariser and EMA to ``steps``; ``start``: (step, checkpoint path)."""
    lm = CharLM(len(ds.vocab), "lstm", 12, num_layers=2, embedding_size=4, **EACH["all"])
    opt = Adam(0.01, ema=0.9)
    params, resume = lm.init_params(np.random.default_rng(seed)), None
    if start:
        ckpt = ckpt_io.load(start[1])
        params = ckpt.params
        opt.load_state_dict(ckpt.optimizer)
        resume = Resume(start[0], ckpt.state)
    hist = train(lm, params, ds, opt, NormClip(1), TrainOptions(steps=steps, batch_size=3, eval_every=5,
                 sample_every=0, report_samples=0, seed=seed), resume=resume)
    return params, opt, hist


@pytest.mark.parametrize("kind", ["lines", "text"])
def test_resume_is_bit_for_bit_with_every_regulariser(kind, tmp_path):
    text = "\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba", "pip"] * 6)
    ds = LineDataset(text, val_fraction=0.2) if kind == "lines" else TextDataset(text, seq_len=8, val_fraction=0.2)
    full, full_opt, _ = _resumable_run(14, ds)
    part, part_opt, hist = _resumable_run(8, ds)
    path = ckpt_io.save(tmp_path / "part.npz", ckpt_io.Checkpoint(params=part, meta={"step": 8},
                                                                  optimizer=part_opt.state_dict(), state=hist.state))
    resumed, resumed_opt, _ = _resumable_run(14, ds, start=(8, path))
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
        np.testing.assert_array_equal(resumed_opt.averaged(resumed)[k], full_opt.averaged(full)[k], err_msg=k)


def test_time_budget_stretches_the_schedule_over_the_budget():
    from rnnlab.schedules import Cosine
    ds = LineDataset("\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba"] * 4), val_fraction=0.2)
    lm = CharLM(len(ds.vocab), "rnn", 8)
    params = lm.init_params(np.random.default_rng(0))
    lrs = []

    class Lr:
        def on_start(self, *a): ...
        def on_eval(self, *a): ...
        def on_samples(self, *a): ...
        def on_report(self, *a): ...
        def on_end(self, *a): ...
        def on_step(self, step, m):
            lrs.append((m["lr"], m["steps"]))

    budget = 0.04     # minutes: 2.4 s
    t0 = time.perf_counter()
    hist = train(lm, params, ds, Adam(0.01), NormClip(5), TrainOptions(steps=10**6, batch_size=4, eval_every=50,
                 sample_every=0, report_samples=0, time_budget=budget), schedule=Cosine(warmup=0), callbacks=[Lr()])
    took = time.perf_counter() - t0
    assert 10 < len(hist.step) < 10**6                  # the budget, not `steps`, decides
    assert 0.9 * budget * 60 <= hist.wall_seconds <= took and took < budget * 60 + 2
    assert lrs[-1][0] < 0.05 * 0.01                     # the cosine ends at the end of the budget …
    assert lrs[-1][1] == pytest.approx(len(hist.step), rel=0.01)   # … where its last estimate of the steps ends
    assert lrs[0][1] == 10**6 and lrs[2][1] < 10**6     # the first guess, then the estimate
    # `steps` stays a limit: whichever comes first ends the run
    short = train(lm, lm.init_params(np.random.default_rng(0)), ds, Adam(0.01), NormClip(5),
                  TrainOptions(steps=12, batch_size=4, eval_every=50, sample_every=0, report_samples=0,
                               time_budget=budget), schedule=Cosine(warmup=0))
    assert short.step == list(range(12)) and short.eval_step == [11]
    assert hist.eval_step[-1] == hist.step[-1]          # the last step is evaluated


@pytest.mark.slow
def test_cli_regularisers_resume_bit_for_bit_and_refuse_bad_values(tmp_path):
    common = ["tracking=none", "cell=lstm", "cell.locked_dropout=true", "cell.dropout=0.2", "cell.weight_dropout=0.3",
              "cell.embedding_dropout=0.1", "cell.ar=1", "cell.tar=1", "optimizer.ema=0.9", "schedule=step",
              "schedule.every=7", "steps=20", "eval_every=5", "sample_every=0", "checkpoint_every=5",
              "cell.hidden_size=12", "report_samples=0"]
    full = cli(common, tmp_path)
    assert full.returncode == 0, full.stderr
    full_ckpt = ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    best = ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "best.npz")
    assert "avg" in {k.rsplit("/", 1)[1] for k in full_ckpt.optimizer if "/" in k}
    assert any(not np.array_equal(best.params[k], full_ckpt.params[k]) for k in best.params)   # the average
    part = cli([*common, "steps=10"], tmp_path)
    assert part.returncode == 0, part.stderr
    resumed = cli([*common, f"resume={run_dir(tmp_path) / 'checkpoints' / 'last.npz'}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    res_ckpt = ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    for k in full_ckpt.params:
        np.testing.assert_array_equal(res_ckpt.params[k], full_ckpt.params[k], err_msg=k)
    for k in full_ckpt.optimizer:
        np.testing.assert_array_equal(res_ckpt.optimizer[k], full_ckpt.optimizer[k], err_msg=k)
    for arg, msg in (("cell.weight_dropout=1.5", "weight_dropout must be in [0, 1), got 1.5"),
                     ("optimizer.ema=1", "ema must be in [0, 1), got 1"),
                     ("time_budget=-2", "time_budget must be >= 0"),
                     ("cell.locked_dropout=maybe", "locked_dropout")):
        bad = cli(["tracking=none", arg], tmp_path)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr, (arg, bad.stderr)


def test_mc_loss_averages_the_probabilities_of_the_draws(rng):
    """Monte Carlo dropout: the loss of the next-character probabilities averaged over the draws, each draw
    the masks ``dropout_masks`` gives (float64, to 1e-12); without dropout it is the plain loss."""
    x, y, mask = batch(rng)
    lm = CharLM(V, "lstm", H, num_layers=2, dtype=np.float64, **EACH["all"])
    params = perturbed(lm, rng)
    state0 = [lm.initial_state(B) for _ in range(3)]
    for s in state0:
        for layer in s:
            for a in layer:
                a += rng.normal(0, 0.5, a.shape)
    loss, finals = lm.mc_loss(params, x, y, mask, state0, samples=3, rng=np.random.default_rng(5))
    draws, p = np.random.default_rng(5), np.zeros((T, B))
    for k in range(3):
        drop = lm.dropout_masks(draws, T, B)
        (logits, final), _ = lm.forward(params, x, state0[k], mask, drop=drop)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        p += np.take_along_axis(e / e.sum(axis=-1, keepdims=True), y[..., None], axis=-1)[..., 0] / 3
        for a, b in zip(finals[k], final):
            for u, v in zip(a, b):
                np.testing.assert_allclose(u, v, atol=1e-12)
    assert loss == pytest.approx(-np.log(p[mask != 0]).mean(), rel=1e-12)
    assert loss != pytest.approx(lm.loss(params, x, y, mask, state0[0])[0], rel=1e-3)   # the draws matter
    plain = CharLM(V, "lstm", H, num_layers=2, dtype=np.float64)
    assert plain.mc_loss(params, x, y, mask, samples=2, rng=rng)[0] == pytest.approx(
        plain.loss(params, x, y, mask)[0], rel=1e-12)


def test_mc_evaluation_carries_each_draws_state_and_draws_the_same_masks_each_time():
    text = "\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba", "pip"] * 6)
    ds = TextDataset(text, seq_len=8, val_fraction=0.3)
    lm = CharLM(len(ds.vocab), "gru", 8, dtype=np.float64, dropout=0.3, locked_dropout=True, weight_dropout=0.3)
    params = perturbed(lm, np.random.default_rng(1))
    got = evaluate(lm, params, ds, "val", mc_samples=2, seed=7)
    assert got == evaluate(lm, params, ds, "val", mc_samples=2, seed=7)
    assert got != evaluate(lm, params, ds, "val", mc_samples=2, seed=8)
    rng, states, total, count = np.random.default_rng([7, 4, 0]), [None, None], 0.0, 0.0
    for b in ds.eval_batches("val"):
        assert not b.reset or count == 0
        p = 0.0
        for k in range(2):
            drop = lm.dropout_masks(rng, *b.x.shape)
            (logits, states[k]), _ = lm.forward(params, b.x, states[k], b.mask, drop=drop)
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            p = p + np.take_along_axis(e / e.sum(axis=-1, keepdims=True), b.y[..., None], axis=-1)[..., 0] / 2
        total -= np.log(p[b.mask != 0]).sum()
        count += b.mask.sum()
    assert got == pytest.approx(total / count, rel=1e-12)


def test_training_with_mc_samples_picks_and_tests_by_the_mc_loss(tmp_path):
    ds = LineDataset("\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba"] * 4), val_fraction=0.2,
                     test_fraction=0.2)
    lm = CharLM(len(ds.vocab), "lstm", 16, dropout=0.3, locked_dropout=True)
    params = lm.init_params(np.random.default_rng(0))
    hist = train(lm, params, ds, Adam(0.02), NormClip(5), TrainOptions(steps=20, batch_size=4, eval_every=10,
                 sample_every=0, report_samples=0, mc_samples=4, seed=3))
    best = hist.best_params
    assert min(hist.val_nll) == pytest.approx(evaluate(lm, best, ds, "val", mc_samples=4, seed=3), rel=1e-12)
    assert hist.test_nll == pytest.approx(evaluate(lm, best, ds, "test", mc_samples=4, seed=3), rel=1e-12)
    assert hist.test_nll != pytest.approx(evaluate(lm, best, ds, "test"), rel=1e-6)


def test_cli_mc_samples_needs_dropout_and_a_sane_count(tmp_path):
    for args, msg in ((["mc_samples=5"], "mc_samples=5 averages over draws of the dropout masks, but the model has "
                                         "no dropout"),
                      (["mc_samples=5000", "cell.dropout=0.2"], "mc_samples=5000: at most 1000 draws")):
        bad = cli(["tracking=none", *args], tmp_path)
        assert bad.returncode == 2 and msg in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
