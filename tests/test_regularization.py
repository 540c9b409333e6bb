"""Issue 7's training features: dropout (gradient-checked with fixed masks), an input embedding, weight
decay, the chunk boundary of truncated BPTT, the test split evaluated with the best parameters, and the
sample report (copies of training / held-out names versus new ones)."""

import numpy as np
import pytest

from rnnlab import checkpoint as ckpt_io
from rnnlab.clipping import NormClip
from rnnlab.data import LineDataset, TextDataset
from rnnlab.gradcheck import gradcheck
from rnnlab.model import CharLM
from rnnlab.optim import OPTIMIZERS
from rnnlab.train import History, TrainOptions, evaluate, sample_report, train

V, T, B, H = 7, 6, 4, 5


def batch(rng):
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = np.ones((T, B))
    mask[4:, 1] = 0
    return x, y, mask


def perturbed(lm, rng):
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.2, params[k].shape)
    return params


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("embedding_size", [0, 3])
def test_dropout_gradcheck_with_fixed_masks(cell, embedding_size, rng):
    lm = CharLM(V, cell, H, num_layers=2, dtype=np.float64, dropout=0.4, embedding_size=embedding_size)
    params = perturbed(lm, rng)
    x, y, mask = batch(rng)
    drop = lm.dropout_masks(np.random.default_rng(5), T, B)
    assert (drop.units[0] is not None) == bool(embedding_size) and len(drop.units) == 3
    assert drop.weights is None and drop.chars is None
    assert any((d == 0).any() for d in drop.units if d is not None)  # something is really dropped
    loss, grads, _ = lm.loss_and_grads(params, x, y, mask, drop=drop)
    assert loss == pytest.approx(lm.loss(params, x, y, mask, drop=drop)[0], rel=1e-12)
    assert loss != pytest.approx(lm.loss(params, x, y, mask)[0], rel=1e-6)  # the masks matter
    errors = gradcheck(lambda: lm.loss(params, x, y, mask, drop=drop)[0], params, grads)
    assert set(grads) == set(params) and ("E" in grads) == bool(embedding_size)
    assert max(errors.values()) < 1e-6, errors


def test_dropout_masks_are_inverted_and_drawn_only_in_training(rng):
    lm = CharLM(V, "lstm", 64, dropout=0.25, embedding_size=8)
    drop = lm.dropout_masks(np.random.default_rng(0), 50, 40).units
    for d, width in zip(drop, (8, 64)):
        assert d.shape == (50, 40, width) and d.dtype == np.float32
        assert set(np.unique(d)) == {0.0, np.float32(1 / 0.75)}
        assert (d == 0).mean() == pytest.approx(0.25, abs=0.01)
    params = lm.init_params(rng)
    x, y, mask = (a[:, :B] for a in batch(rng))
    no_rng = lm.loss_and_grads(params, x, y, mask)[0]
    assert no_rng == pytest.approx(lm.loss(params, x, y, mask)[0], rel=1e-6)   # evaluation: no dropout
    a = lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(1))[0]
    b = lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(1))[0]
    c = lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(2))[0]
    assert a == b != c
    assert CharLM(V, "rnn", H).dropout_masks(rng, T, B) is None
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
            CharLM(V, "rnn", H, dropout=bad)
    with pytest.raises(ValueError, match="embedding_size must be an integer >= 0"):
        CharLM(V, "rnn", H, embedding_size=-2)


def test_embedding_model_samples_and_round_trips_through_a_checkpoint(tmp_path, rng):
    ds = LineDataset("\n".join(["abc", "bcd", "cde", "ade", "eab"] * 4), val_fraction=0.2)
    lm = CharLM(len(ds.vocab), "gru", 8, num_layers=2, dropout=0.1, embedding_size=4)
    params = lm.init_params(rng)
    assert params["E"].shape == (len(ds.vocab), 4) and params["l0.Wx"].shape == (4, 24)
    logits, _ = lm.step(params, np.zeros(3, np.int64), lm.initial_state(3))
    (full, _), _ = lm.forward(params, np.zeros((1, 3), np.int64))
    np.testing.assert_allclose(logits, full[0], rtol=1e-5)
    path = ckpt_io.save(tmp_path / "c.npz", ckpt_io.Checkpoint(params, {"step": 1, **ckpt_io.model_meta(lm, ds.vocab, ds.kind)}))
    lm2, params2, _ = ckpt_io.restore_model(ckpt_io.load(path))
    assert (lm2.embedding_size, lm2.dropout, lm2.num_layers) == (4, 0.1, 2)
    assert all(np.array_equal(params[k], params2[k]) for k in params)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
def test_weight_decay_is_decoupled_and_spares_biases(name, rng):
    params = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
    plain, decayed = OPTIMIZERS.build(name, lr=0.1), OPTIMIZERS.build(name, lr=0.1, weight_decay=0.5)
    p1 = {k: v.copy() for k, v in params.items()}
    p2 = {k: v.copy() for k, v in params.items()}
    p1["W"] *= 1 - 0.1 * 0.5        # what decoupled decay does before the optimizer's own update
    plain.step(p1, grads)
    decayed.step(p2, grads)
    np.testing.assert_allclose(p2["W"], p1["W"], rtol=1e-12)
    np.testing.assert_allclose(p2["b"], p1["b"], rtol=1e-12)   # biases are not decayed
    with pytest.raises(ValueError, match="weight_decay must be >= 0, got -1"):
        OPTIMIZERS.build(name, lr=0.1, weight_decay=-1)


def test_sgd_weight_decay_is_the_l2_penalty_gradient(rng):
    W = rng.normal(size=(3, 3))
    g = rng.normal(size=(3, 3))
    p = {"W": W.copy()}
    OPTIMIZERS.build("sgd", lr=0.2, weight_decay=0.3).step(p, {"W": g})
    np.testing.assert_allclose(p["W"], W - 0.2 * (g + 0.3 * W), rtol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradcheck_across_a_chunk_boundary(cell, rng):
    """Two consecutive chunks of one stream, the state carried from the first into the second: the
    gradient of the sum of both losses, computed chunk by chunk (the second chunk's gradient with
    respect to its initial state fed into the first chunk's backward pass), passes a finite-difference
    check; it equals the gradient of one pass over the whole stream."""
    lm = CharLM(V, cell, H, num_layers=2, dtype=np.float64)
    params = perturbed(lm, rng)
    xs, ys = rng.integers(0, V, (2 * T, B)), rng.integers(0, V, (2 * T, B))
    (x1, x2), (y1, y2) = np.split(xs, 2), np.split(ys, 2)

    def total():
        l1, s1 = lm.loss(params, x1, y1)
        return l1 + lm.loss(params, x2, y2, state0=s1)[0]

    _, s1 = lm.loss(params, x1, y1)
    l2, g2, _, dstate = lm.loss_and_grads(params, x2, y2, state0=s1, return_dstate0=True)
    l1, g1, _ = lm.loss_and_grads(params, x1, y1, dstate=dstate)
    grads = {k: g1[k] + g2[k] for k in params}
    assert l1 + l2 == pytest.approx(total(), rel=1e-12)
    errors = gradcheck(total, params, grads)
    assert max(errors.values()) < 1e-6, errors
    # one pass over both chunks: the same loss sum (the mean over 2T steps is half of it) and gradients
    whole, gw, _ = lm.loss_and_grads(params, xs, ys)
    assert 2 * whole == pytest.approx(l1 + l2, rel=1e-12)
    for k in params:
        np.testing.assert_allclose(2 * gw[k], grads[k], rtol=1e-9, atol=1e-12)
    # truncated BPTT (what training does) drops exactly the part that crossed the boundary
    truncated = lm.loss_and_grads(params, x1, y1)[1]
    assert any(not np.allclose(truncated[k], g1[k]) for k in params)


def test_text_training_carries_the_state_between_chunks_and_resets_between_passes():
    text = "".join(np.random.default_rng(0).choice(list("abcd \n"), 3000))
    ds = TextDataset(text, seq_len=20, val_fraction=0.1)
    lm = CharLM(len(ds.vocab), "lstm", 8, dtype=np.float64)
    seen = []
    original = lm.loss_and_grads

    def spy(params, x, y, mask=None, state0=None, **kw):
        seen.append(None if state0 is None else [tuple(a.copy() for a in s) for s in state0])
        out = original(params, x, y, mask, state0, **kw)
        seen.append(out[2])
        return out

    lm.loss_and_grads = spy
    n_chunks = -(-((len(ds.ids["train"]) - 1) // 4) // 20)
    train(lm, lm.init_params(np.random.default_rng(0)), ds, OPTIMIZERS.build("sgd", lr=0.1), NormClip(5),
          TrainOptions(steps=n_chunks + 2, batch_size=4, eval_every=n_chunks + 2, sample_every=0))
    starts, finals = seen[0::2], seen[1::2]
    assert starts[0] is None and starts[n_chunks] is None        # each pass over the streams starts fresh
    for step in list(range(1, n_chunks)) + [n_chunks + 1]:       # … and carries the state within it
        for (h_in, c_in), (h_out, c_out) in zip(starts[step], finals[step - 1]):
            assert np.array_equal(h_in, h_out) and np.array_equal(c_in, c_out)


def names_dataset(test_fraction=0.2):
    names = ["anna", "bob", "carla", "dan", "eve", "fred", "gina", "hal", "ivy", "jon", "kim", "lea",
             "max", "nina", "otto", "pia", "quin", "rosa", "sam", "tina"]
    return LineDataset("\n".join(n + end for end in ("", "x", "ly", "ko") for n in names), val_fraction=0.2,
                       test_fraction=test_fraction)


def test_test_split_is_evaluated_once_with_the_best_parameters(rng):
    ds = names_dataset()
    lm = CharLM(len(ds.vocab), "gru", 32)
    reports = []

    class Spy:
        def __getattr__(self, name):
            return lambda *a: reports.append(a[1]) if name == "on_report" else None

    hist = train(lm, lm.init_params(rng), ds, OPTIMIZERS.build("adam", lr=0.05), NormClip(5),
                 TrainOptions(steps=300, batch_size=8, eval_every=10, report_samples=200), callbacks=[Spy()])
    best = int(np.argmin(hist.val_nll))
    assert best < len(hist.val_nll) - 1          # overfitting: the best is not the last evaluation
    assert hist.best_step == hist.eval_step[best]
    assert evaluate(lm, hist.best_params, ds, "val") == pytest.approx(hist.val_nll[best], rel=1e-6)
    assert hist.test_nll == pytest.approx(evaluate(lm, hist.best_params, ds, "test"), rel=1e-12)
    assert reports[-1]["test_nll"] == hist.test_nll
    assert len(hist.report["samples"]) == 200
    assert sum(hist.report[k] for k in ("samples_in_train", "samples_in_heldout", "samples_new",
                                        "samples_empty")) == pytest.approx(1)
    assert reports[-1]["final_samples_new"] == hist.report["samples_new"]
    no_test = train(lm, lm.init_params(rng), names_dataset(0.0), OPTIMIZERS.build("adam", lr=0.05),
                    NormClip(5), TrainOptions(steps=5, batch_size=8, eval_every=5, report_samples=0))
    assert no_test.test_nll is None and no_test.report == {}


def test_sample_report_counts_copies_and_new_names():
    ds = names_dataset()
    train_name, val_name, test_name = ds.lines["train"][0], ds.lines["val"][0], ds.lines["test"][0]
    assert len({train_name, val_name, test_name}) == 3 and val_name not in ds.lines["train"]
    report = sample_report(ds, [train_name, train_name, val_name, test_name, "zzz", ""])
    assert report == pytest.approx({"samples_in_train": 2 / 6, "samples_in_heldout": 2 / 6,
                                    "samples_new": 1 / 6, "samples_empty": 1 / 6})   # an empty name is not new
    assert sample_report(TextDataset("ab" * 500, seq_len=10), ["ab"]) == {}
    assert History().report == {}


def test_text_evaluation_carries_the_state_through_each_stream(rng):
    """Read as one stream, the split's loss is that of the whole split as one sequence (the state is
    carried from chunk to chunk); by default few streams are used, so the cold starts are rare; with
    many streams every one starts from a zero state and the loss is higher."""
    from rnnlab.train import evaluate
    text = "".join(np.random.default_rng(1).choice(list("abc de\n"), 12000, p=[.3, .2, .1, .1, .1, .1, .1]))
    text = text.replace("a", "ab")    # something to learn from context: 'a' is followed by 'b'
    ds = TextDataset(text, seq_len=25, val_fraction=0.25)
    lm = CharLM(len(ds.vocab), "gru", 8, dtype=np.float64)
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.5, params[k].shape)
    ids = ds.ids["val"]
    whole, _ = lm.loss(params, ids[:-1, None], ids[1:, None])
    assert evaluate(lm, params, ds, "val", batch_size=1) == pytest.approx(whole, rel=1e-12)
    default = evaluate(lm, params, ds, "val")
    assert next(iter(ds.eval_batches("val"))).x.shape[1] == 16
    many = evaluate(lm, params, ds, "val", batch_size=256)
    assert abs(default - whole) < abs(many - whole)
