"""The layer-normalised LSTM cell (``lnlstm``): its forward pass against a per-sequence reference written
from the equations, float64 gradient checks (ids and dense inputs, unequal lengths with an empty and a
one-step sequence, carried state, a gradient into the final state), the whole gradient reaching each
h_t (``dh_steps``) against finite differences, a 2-layer character model with an embedding and dropout,
sampling's single step, float32, and a short training run. (The generic cell tests of test_cells.py
cover it too.)"""

import numpy as np
import pytest

from rnnlab.baselines import unigram_nll
from rnnlab.cells import LNLSTM
from rnnlab.clipping import NormClip
from rnnlab.data import LineDataset
from rnnlab.gradcheck import gradcheck, numerical_gradient
from rnnlab.model import CharLM
from rnnlab.optim import Adam
from rnnlab.registry import CELLS
from rnnlab.train import TrainOptions, train

T, B, D, H = 5, 4, 3, 6
LENGTHS = [5, 0, 1, 3]          # unsorted, with an empty and a one-step sequence


def setup(rng, inputs, dtype=np.float64):
    cell = LNLSTM()
    params = cell.init(D, H, rng, dtype)
    for k in params:  # away from unit gains and zero biases, so every path is exercised
        params[k] += rng.normal(0, 0.3, params[k].shape).astype(dtype)
    x = rng.integers(0, D, (T, B)) if inputs == "ids" else rng.normal(size=(T, B, D)).astype(dtype)
    state0 = tuple(rng.normal(0, 0.5, (B, H)).astype(dtype) for _ in range(2))
    mask = (np.arange(T)[:, None] < np.array(LENGTHS)).astype(dtype)
    return cell, params, x, state0, mask


def reference(x, state0, p):
    """The cell's equations for one sequence (x: (L,) ids or (L, D)), step by step and gate by gate.
    Returns (hs (L, H), (h, c))."""
    def ln(v):
        return (v - v.mean()) / np.sqrt(v.var() + 1e-5)

    def gate(name, k):
        return p[name][k * H:(k + 1) * H]

    h, c = state0
    hs = []
    for x_t in x:
        xw = p["Wx"][x_t] if np.ndim(x_t) == 0 else x_t @ p["Wx"]
        hw = h @ p["Wh"]
        z = [ln(xw[k * H:(k + 1) * H]) * gate("gx", k) + ln(hw[k * H:(k + 1) * H]) * gate("gh", k) + gate("b", k)
             for k in range(4)]
        i, f, o = (1 / (1 + np.exp(-v)) for v in z[:3])
        c = f * c + i * np.tanh(z[3])
        h = o * np.tanh(ln(c) * p["gc"] + p["bc"])
        hs.append(h)
    return np.array(hs).reshape(len(x), H), (h, c)


def test_init_registry_and_state():
    params = LNLSTM().init(D, H, np.random.default_rng(0), np.float32)
    assert {k: v.shape for k, v in params.items()} == {"Wx": (D, 4 * H), "Wh": (H, 4 * H), "b": (4 * H,),
                                                       "gx": (4 * H,), "gh": (4 * H,), "gc": (H,), "bc": (H,)}
    assert all(v.dtype == np.float32 for v in params.values())
    np.testing.assert_array_equal(params["b"], np.repeat([0, 1, 0, 0], H))     # forget bias 1
    assert (params["gx"] == 1).all() and (params["gh"] == 1).all() and (params["gc"] == 1).all()
    assert not params["bc"].any()
    assert isinstance(CELLS.build("lnlstm"), LNLSTM) and CELLS.names("ln*") == ["lnlstm"]
    assert len(LNLSTM().zero_state(3, H)) == 2


@pytest.mark.parametrize("inputs", ["ids", "dense"])
def test_forward_matches_the_equations_sequence_by_sequence(inputs, rng):
    cell, params, x, state0, mask = setup(rng, inputs)
    (hs, (h, c)), _ = cell.forward(x, state0, params, mask)
    for b, n in enumerate(LENGTHS):
        ref, (h_ref, c_ref) = reference(x[:n, b], (state0[0][b], state0[1][b]), params)
        np.testing.assert_allclose(hs[:n, b], ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(h[b], h_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(c[b], c_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(hs[n:, b], np.broadcast_to(h[b], (T - n, H)))   # padding repeats h


def test_the_output_does_not_depend_on_the_scale_of_the_weights(rng):
    """What layer normalisation is for: scaling Wx and Wh up leaves every gate unchanged (up to eps, whose
    share of the variance shrinks as the weights grow)."""
    cell, params, x, state0, mask = setup(rng, "dense")
    (hs, _), _ = cell.forward(x, state0, params, mask)
    scaled = dict(params, Wx=params["Wx"] * 7.0, Wh=params["Wh"] * 3.0)
    (hs2, _), _ = cell.forward(x, state0, scaled, mask)
    np.testing.assert_allclose(hs2, hs, rtol=1e-3, atol=1e-4)
    assert not np.allclose(cell.forward(x, state0, dict(params, gh=params["gh"] * 2), mask)[0][0], hs)


@pytest.mark.parametrize("inputs", ["ids", "dense"])
def test_gradcheck_with_masks_carried_state_and_final_state_gradient(inputs, rng):
    cell, params, x, state0, mask = setup(rng, inputs)
    w_out = rng.normal(size=(T, B, H))
    w_state = [rng.normal(size=(B, H)) for _ in range(2)]

    def loss():  # a random linear function of every output and of the final state
        (hs, state), _ = cell.forward(x, state0, params, mask)
        return float((w_out * hs).sum() + sum((w * s).sum() for w, s in zip(w_state, state)))

    (hs, state), cache = cell.forward(x, state0, params, mask)
    grads, (dx, dstate0) = cell.backward(w_out, cache, tuple(w_state))
    variables, analytic = dict(params), dict(grads)
    variables.update({"h0": state0[0], "c0": state0[1]})
    analytic.update({"h0": dstate0[0], "c0": dstate0[1]})
    if inputs == "dense":
        variables["x"], analytic["x"] = x, dx
    else:
        assert dx is None
    errors = gradcheck(loss, variables, analytic)
    assert set(errors) == set(variables) and len(grads) == 7
    assert max(errors.values()) < 1e-6, errors
    np.testing.assert_array_equal(dstate0[1][1], w_state[1][1])     # the empty sequence: dc passes through
    if inputs == "dense":
        assert not dx[mask == 0].any()


def test_gradients_are_written_into_the_given_buffers(rng):
    """With ``out`` (the model's flat gradient buffer) every gradient lands in it, whole: the same values
    as without."""
    cell, params, x, state0, mask = setup(rng, "ids")
    (hs, _), (cache, lay) = cell.forward(x, state0, params, mask)
    dhs = lay.pack(rng.normal(size=hs.shape))
    dstate = tuple(rng.normal(size=(B, H)) for _ in range(2))
    grads, (_, d0) = cell.backward_packed(dhs, cache, dstate)
    out = {k: np.full_like(v, np.nan) for k, v in params.items()}
    got, (_, d0_out) = cell.backward_packed(dhs, cache, dstate, out=out)
    for k in params:
        assert got[k] is out[k], k
        np.testing.assert_array_equal(out[k], grads[k], err_msg=k)
    for a, b in zip(d0, d0_out):
        np.testing.assert_array_equal(a, b)


def test_dh_steps_is_the_whole_gradient_reaching_each_output(rng):
    """dh_steps[t, b] = ∂loss/∂h_t of sequence b, found by moving h_t (as an output and as the state the
    next step reads) in each direction; zero at padded steps."""
    cell, params, x, state0, mask = setup(rng, "dense")
    w_out = rng.normal(size=(T, B, H))
    w_state = [rng.normal(size=(B, H)) for _ in range(2)]
    (hs, _), cache = cell.forward(x, state0, params, mask)
    dh_steps = np.full((T, B, H), np.nan)
    cell.backward(w_out, cache, tuple(w_state), dh_steps=dh_steps)
    assert not dh_steps[mask == 0].any()
    for t, b in [(0, 0), (2, 0), (4, 0), (0, 2), (1, 3), (2, 3)]:
        delta = np.zeros(H)

        def loss(t=t, b=b, delta=delta):
            (before, state), _ = cell.forward(x[:t + 1], state0, params, mask[:t + 1])
            before = before.copy()
            before[t, b] += delta
            state = (state[0].copy(), state[1])
            state[0][b] += delta
            (after, final), _ = cell.forward(x[t + 1:], state, params, mask[t + 1:])
            return float((w_out[:t + 1] * before).sum() + (w_out[t + 1:] * after).sum()
                         + sum((w * s).sum() for w, s in zip(w_state, final)))

        np.testing.assert_allclose(dh_steps[t, b], numerical_gradient(loss, delta), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("embedding_size", [0, 3])
def test_gradcheck_two_layer_model_with_dropout_state_and_final_state_gradient(embedding_size, rng):
    V = 7
    lm = CharLM(V, "lnlstm", 5, num_layers=2, dtype=np.float64, dropout=0.3, embedding_size=embedding_size)
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.2, params[k].shape)
    Tm, Bm = 5, 5
    x, y = rng.integers(0, V, (Tm, Bm)), rng.integers(0, V, (Tm, Bm))
    mask = (np.arange(Tm)[:, None] < np.array([1, 5, 0, 3, 5])).astype(float)
    state0 = [tuple(rng.normal(0, 0.5, (Bm, 5)) for _ in s) for s in lm.initial_state(Bm)]
    dstate = [tuple(rng.normal(0, 0.5, (Bm, 5)) for _ in s) for s in lm.initial_state(Bm)]
    drop = lm.dropout_masks(np.random.default_rng(3), Tm, Bm)
    assert any((d == 0).any() for d in drop.units if d is not None)

    def total():
        loss, final = lm.loss(params, x, y, mask, state0, drop)
        return loss + sum((d * f).sum() for dl, fl in zip(dstate, final) for d, f in zip(dl, fl))

    loss, grads, _ = lm.loss_and_grads(params, x, y, mask, state0, dstate, drop=drop)
    assert loss == pytest.approx(lm.loss(params, x, y, mask, state0, drop)[0], rel=1e-12)
    errors = gradcheck(total, params, grads)
    assert {k.split(".")[-1] for k in errors} >= {"Wx", "Wh", "b", "gx", "gh", "gc", "bc"}
    assert max(errors.values()) < 1e-6, errors


def test_model_step_matches_the_forward_pass(rng):
    V = 6
    lm = CharLM(V, "lnlstm", 8, num_layers=2, dtype=np.float64, embedding_size=4)
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.2, params[k].shape)
    x = rng.integers(0, V, (6, 3))
    (logits, final), _ = lm.forward(params, x)
    state = lm.initial_state(3)
    for t in range(6):
        step_logits, state = lm.step(params, x[t], state)
        np.testing.assert_allclose(step_logits, logits[t], rtol=1e-11, atol=1e-12)
    for layer, layer_f in zip(state, final):
        for s, f in zip(layer, layer_f):
            np.testing.assert_allclose(s, f, rtol=1e-11, atol=1e-12)


def test_float32_agrees_with_float64_in_a_model(rng):
    V = 7
    lm64 = CharLM(V, "lnlstm", 16, num_layers=2, dtype=np.float64, embedding_size=4)
    lm32 = CharLM(V, "lnlstm", 16, num_layers=2, dtype=np.float32, embedding_size=4)
    p64 = lm64.init_params(rng)
    p32 = lm32.init_params(np.random.default_rng(0))
    for k in p64:
        p32[k] = p64[k].astype(np.float32)
    x, y = rng.integers(0, V, (12, 5)), rng.integers(0, V, (12, 5))
    mask = (np.arange(12)[:, None] < np.array([12, 7, 1, 12, 4])).astype(float)
    l64, g64, _ = lm64.loss_and_grads(p64, x, y, mask)
    l32, g32, _ = lm32.loss_and_grads(p32, x, y, mask)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32, k
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=2e-5 * np.abs(g64[k]).max(), err_msg=k)


def test_a_short_training_run_lowers_the_loss():
    text = "\n".join(["anna", "bob", "otto", "hannah", "ada", "eve", "abba", "elle", "nan", "pip"] * 3)
    ds = LineDataset(text, val_fraction=0.2, seed=0)
    lm = CharLM(len(ds.vocab), "lnlstm", 16)
    params = lm.init_params(np.random.default_rng(0))
    hist = train(lm, params, ds, Adam(0.02), NormClip(5), TrainOptions(steps=60, batch_size=8, eval_every=20))
    assert all(np.isfinite(hist.train_loss))
    assert np.mean(hist.train_loss[-10:]) < 0.5 * np.mean(hist.train_loss[:5]), hist.train_loss
    unigram = unigram_nll(ds.targets("train"), ds.targets("val"), len(ds.vocab))
    assert hist.val_nll[-1] < min(hist.val_nll[0], 0.5 * unigram), (hist.val_nll, unigram)


def test_batch_shards_in_threads_give_the_one_pass_result(rng, monkeypatch):
    """threads=2 (each half of the batch in its own thread, with its own workspaces) gives the one-pass
    loss, gradients and states."""
    V, Tw, Bw = 7, 6, 8
    kw = dict(num_layers=2, dtype=np.float64, dropout=0.3, embedding_size=3)
    one, two = CharLM(V, "lnlstm", 5, **kw), CharLM(V, "lnlstm", 5, threads=2, **kw)
    monkeypatch.setattr(CharLM, "MIN_SHARD_WORK", 1)      # shard even this small batch
    assert len(two.shards(Bw, 30)) == 2
    params = one.init_params(rng)
    x, y = rng.integers(0, V, (Tw, Bw)), rng.integers(0, V, (Tw, Bw))
    mask = (np.arange(Tw)[:, None] < np.array([6, 0, 3, 1, 6, 5, 2, 4])).astype(float)
    state0 = [tuple(rng.normal(0, 0.5, (Bw, 5)) for _ in s) for s in one.initial_state(Bw)]
    dstate = [tuple(rng.normal(0, 0.5, (Bw, 5)) for _ in s) for s in one.initial_state(Bw)]
    drop = one.dropout_masks(rng, Tw, Bw)
    (l1, g1, f1, d1), (l2, g2, f2, d2) = (m.loss_and_grads(params, x, y, mask, state0, dstate, drop=drop,
                                                           return_dstate0=True) for m in (one, two))
    assert l2 == pytest.approx(l1, rel=1e-13)
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], rtol=1e-10, atol=1e-13, err_msg=name)
    for a, b in zip(f1 + d1, f2 + d2):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14)
