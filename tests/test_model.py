"""The character LM: full-loss gradient checks (every cell, stacked, masked, carried state) and
consistency of its pieces."""

import math

import numpy as np
import pytest

from rnnlab.gradcheck import gradcheck
from rnnlab.model import CharLM, nats_to_bits
from rnnlab.registry import UnknownPluginError

V, T, B, H = 7, 6, 4, 5


def batch(rng):
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    mask = np.ones((T, B))
    mask[4:, 1] = 0
    mask[2:, 3] = 0
    return x, y, mask


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_full_loss_gradcheck(cell, num_layers, rng):
    lm = CharLM(V, cell, H, num_layers, dtype=np.float64)
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.2, params[k].shape)
    x, y, mask = batch(rng)
    state0 = [tuple(rng.normal(0, 0.5, (B, H)) for _ in s) for s in lm.initial_state(B)]

    loss, grads, _ = lm.loss_and_grads(params, x, y, mask, state0)
    errors = gradcheck(lambda: lm.loss(params, x, y, mask, state0)[0], params, grads)
    assert set(grads) == set(params)
    assert max(errors.values()) < 1e-6, errors


def test_sum_reduction_gradients_are_of_the_loss_per_sequence(rng):
    lm = CharLM(V, "rnn", H, dtype=np.float64, reduction="sum")
    params = lm.init_params(rng)
    x, y, mask = batch(rng)
    _, grads, _ = lm.loss_and_grads(params, x, y, mask)
    per_sequence = lambda: lm.loss(params, x, y, mask)[0] * mask.sum() / B  # noqa: E731
    assert max(gradcheck(per_sequence, params, grads).values()) < 1e-6


def test_loss_is_per_unmasked_character(rng):
    lm = CharLM(V, "lstm", H, dtype=np.float64)
    params = lm.init_params(rng)
    x, y, mask = batch(rng)
    loss, _ = lm.loss(params, x, y, mask)
    (logits, _), _ = lm.forward(params, x, mask=mask)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, y[..., None], -1)[..., 0]
    assert loss == pytest.approx(-(picked * mask).sum() / mask.sum(), rel=1e-12)
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)


def test_untrained_model_is_close_to_uniform(rng):
    lm = CharLM(27, "lstm", 32)
    x, y = rng.integers(0, 27, (T, B)), rng.integers(0, 27, (T, B))
    loss, _ = lm.loss(lm.init_params(rng), x, y)
    assert abs(loss - math.log(27)) < 0.1


def test_step_matches_forward(rng):
    lm = CharLM(V, "gru", H, 2, dtype=np.float64)
    params = lm.init_params(rng)
    x, _, _ = batch(rng)
    (logits, _), _ = lm.forward(params, x)
    state = lm.initial_state(B)
    for t in range(T):
        step_logits, state = lm.step(params, x[t], state)
        np.testing.assert_allclose(step_logits, logits[t], rtol=1e-10, atol=1e-12)


def test_float32_model(rng):
    lm = CharLM(V, "lstm", H)
    params = lm.init_params(rng)
    assert all(v.dtype == np.float32 for v in params.values())
    _, grads, _ = lm.loss_and_grads(params, *batch(rng))
    assert all(g.dtype == np.float32 for g in grads.values())


def test_bad_model_arguments():
    with pytest.raises(UnknownPluginError, match=r"Unknown cells 'lstn'.*Did you mean 'lstm'"):
        CharLM(V, "lstn")
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1, got 0"):
        CharLM(V, "rnn", 0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batch_shards_in_threads_give_the_one_pass_result(cell, reduction, rng, monkeypatch):
    """threads=2: each half of the batch runs forward and backward in its own thread and the gradients
    are summed. Everything a training step uses (loss, gradients, final state, gradient of the initial
    state) must be the one-pass result, with padding, a carried state, a final-state gradient, dropout
    masks and an embedding all in play."""
    Bw, Tw = 9, 7
    one = CharLM(V, cell, H, 2, dtype=np.float64, reduction=reduction, dropout=0.3, embedding_size=3)
    two = CharLM(V, cell, H, 2, dtype=np.float64, reduction=reduction, dropout=0.3, embedding_size=3,
                 threads=2)
    monkeypatch.setattr(CharLM, "MIN_SHARD_WORK", 1)      # shard even this small batch
    assert two.shards(Bw, 40) == [slice(0, 4), slice(4, 9)] and one.shards(Bw, 40) == [slice(0, 9)]
    params = one.init_params(rng)
    x, y = rng.integers(0, V, (Tw, Bw)), rng.integers(0, V, (Tw, Bw))
    mask = (np.arange(Tw)[:, None] < rng.integers(0, Tw + 1, Bw)).astype(float)
    mask[:, 0] = 1
    state0 = [tuple(rng.normal(0, 0.5, (Bw, H)) for _ in s) for s in one.initial_state(Bw)]
    dstate = [tuple(rng.normal(0, 0.5, (Bw, H)) for _ in s) for s in one.initial_state(Bw)]
    drop = one.dropout_masks(rng, Tw, Bw)

    results = [m.loss_and_grads(params, x, y, mask, state0, dstate, drop=drop, return_dstate0=True)
               for m in (one, two)]
    (l1, g1, f1, d1), (l2, g2, f2, d2) = results
    assert l2 == pytest.approx(l1, rel=1e-13)
    assert set(g2) == set(params)
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], rtol=1e-10, atol=1e-13, err_msg=name)
    for a, b in zip(f1 + d1, f2 + d2):
        for u, v in zip(a, b):
            assert u.shape == (Bw, H)
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-14)


def test_shards_need_enough_work_per_thread():
    """Sharding pays only above a minimum of gate values per shard and batch (see MIN_SHARD_WORK)."""
    lstm = CharLM(V, "lstm", 256, threads=2)             # 4 gates × 256 = 1,024 values per position
    assert lstm.shards(32, 400) == [slice(0, 32)]        # names: 400 × 1,024 < 2 × 1,000,000: one pass
    assert lstm.shards(32, 3200) == [slice(0, 16), slice(16, 32)]   # 100-character chunks: two shards
    assert CharLM(V, "lstm", 256).shards(32, 3200) == [slice(0, 32)]   # threads=1 (the library default)
    assert len(CharLM(V, "rnn", 64, threads=2).shards(128, 3200)) == 1  # 64 values per position: too little
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        CharLM(V, "rnn", 4, threads=0)
