"""The batched cells: float64 gradient checks (ids and dense input, masks, carried state), masking
semantics, single-step form, float32."""

import numpy as np
import pytest

from rnnlab.cells import GRU, LNLSTM, LSTM, RNN
from rnnlab.gradcheck import gradcheck
from rnnlab.registry import CELLS

CELL_CLASSES = [RNN, LSTM, GRU, LNLSTM]
T, B, D, H = 5, 3, 4, 6


def setup(cell, rng, inputs, dtype=np.float64):
    params = cell.init(D, H, rng, dtype)
    for k in params:  # move away from the zero biases so every path is exercised
        params[k] += rng.normal(0, 0.3, params[k].shape).astype(dtype)
    x = rng.integers(0, D, (T, B)) if inputs == "ids" else rng.normal(size=(T, B, D)).astype(dtype)
    state0 = tuple(rng.normal(0, 0.5, (B, H)).astype(dtype) for _ in range(cell.state_size))
    return params, x, state0


@pytest.mark.parametrize("cell_cls", CELL_CLASSES)
@pytest.mark.parametrize("inputs", ["ids", "dense"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck(cell_cls, inputs, masked, rng):
    cell = cell_cls()
    params, x, state0 = setup(cell, rng, inputs)
    mask = None
    if masked:  # sequences of lengths 3, 5 and 4
        mask = np.ones((T, B))
        mask[3:, 0] = 0
        mask[4:, 2] = 0
    w_out = rng.normal(size=(T, B, H))
    w_state = [rng.normal(size=(B, H)) for _ in state0]

    def loss():  # a random linear function of every output and of the final state
        (hs, state), _ = cell.forward(x, state0, params, mask)
        return float((w_out * hs).sum() + sum((w * s).sum() for w, s in zip(w_state, state)))

    (hs, state), cache = cell.forward(x, state0, params, mask)
    grads, (dx, dstate0) = cell.backward(w_out, cache, tuple(w_state))
    variables, analytic = dict(params), dict(grads)
    for i, s in enumerate(state0):
        variables[f"state0[{i}]"], analytic[f"state0[{i}]"] = s, dstate0[i]
    if inputs == "dense":
        variables["x"], analytic["x"] = x, dx
    else:
        assert dx is None
    errors = gradcheck(loss, variables, analytic)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("cell_cls", CELL_CLASSES)
def test_padding_carries_the_state_and_changes_nothing(cell_cls, rng):
    """A sequence padded with garbage after its end gives the same outputs and final state as the
    sequence alone, and no gradient flows from the padded steps."""
    cell = cell_cls()
    params, x, state0 = setup(cell, rng, "ids")
    mask = np.ones((T, B))
    mask[3:, 1] = 0
    (hs, state), cache = cell.forward(x, state0, params, mask)
    short = x[:3, 1:2]
    (hs_short, state_short), _ = cell.forward(short, tuple(s[1:2] for s in state0), params)
    np.testing.assert_allclose(hs[:3, 1:2], hs_short, rtol=1e-12)
    for s, s_short in zip(state, state_short):
        np.testing.assert_allclose(s[1:2], s_short, rtol=1e-12)
    for t in range(3, T):  # padded steps repeat the last real state
        np.testing.assert_array_equal(hs[t, 1], hs[2, 1])
    d = np.zeros((T, B, H))
    d[3:, 1] = 1.0  # gradient only on padded outputs of sequence 1 ...
    grads, (_, dstate0) = cell.backward(d, cache)
    d_direct = np.zeros((T, B, H))
    d_direct[2, 1] = T - 3  # ... equals that much gradient on its last real output
    grads_direct, (_, dstate0_direct) = cell.backward(d_direct, cache)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_direct[k], rtol=1e-10, atol=1e-14)
    for a, b in zip(dstate0, dstate0_direct):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("cell_cls", CELL_CLASSES)
def test_step_matches_forward(cell_cls, rng):
    cell = cell_cls()
    params, x, state0 = setup(cell, rng, "ids")
    (hs, final), _ = cell.forward(x, state0, params)
    state = state0
    for t in range(T):
        state = cell.step(x[t], state, params)
        np.testing.assert_allclose(state[0], hs[t], rtol=1e-12, atol=1e-14)
    for s, f in zip(state, final):
        np.testing.assert_allclose(s, f, rtol=1e-12, atol=1e-14)
    # dense input too
    xd = rng.normal(size=(T, B, D))
    (hs, _), _ = cell.forward(xd, state0, params)
    np.testing.assert_allclose(cell.step(xd[0], state0, params)[0], hs[0], rtol=1e-12)


@pytest.mark.parametrize("cell_cls", CELL_CLASSES)
def test_float32_stays_float32_and_agrees_with_float64(cell_cls, rng):
    cell = cell_cls()
    p64, x, s64 = setup(cell, rng, "ids")
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    s32 = tuple(s.astype(np.float32) for s in s64)
    (h32, _), c32 = cell.forward(x, s32, p32)
    (h64, _), c64 = cell.forward(x, s64, p64)
    assert h32.dtype == np.float32
    np.testing.assert_allclose(h32, h64, rtol=1e-4, atol=1e-5)
    g32, _ = cell.backward(np.ones_like(h32), c32)
    g64, _ = cell.backward(np.ones_like(h64), c64)
    for k in g32:
        assert g32[k].dtype == np.float32, k
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4)


def test_registry_has_the_builtin_cells():
    assert CELLS.names() == ["gru", "lnlstm", "lstm", "rnn"]
    assert CELLS.names("*ru") == ["gru"]
    assert isinstance(CELLS.build("lstm"), LSTM)


def test_bad_mask_shape_is_refused(rng):
    cell = RNN()
    params, x, state0 = setup(cell, rng, "ids")
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3\), expected \(T, B\) = \(5, 3\)"):
        cell.forward(x, state0, params, np.ones((2, 3)))


@pytest.mark.parametrize("cell_cls", CELL_CLASSES)
def test_gradcheck_with_an_empty_sequence_and_one_ending_first(cell_cls, rng):
    """Column 0 has no step at all (its final state is its initial state), column 1 ends after one
    step; gradients reach the final states, every output (padded ones too) and the initial states."""
    cell = cell_cls()
    params, x, state0 = setup(cell, rng, "dense")
    mask = np.ones((T, B))
    mask[:, 0] = 0
    mask[1:, 1] = 0
    w_out = rng.normal(size=(T, B, H))
    w_state = [rng.normal(size=(B, H)) for _ in state0]

    def loss():
        (hs, state), _ = cell.forward(x, state0, params, mask)
        return float((w_out * hs).sum() + sum((w * s).sum() for w, s in zip(w_state, state)))

    (hs, state), cache = cell.forward(x, state0, params, mask)
    np.testing.assert_array_equal(state[0][0], state0[0][0])
    np.testing.assert_array_equal(hs[:, 0], np.broadcast_to(state0[0][0], (T, H)))
    grads, (dx, dstate0) = cell.backward(w_out, cache, tuple(w_state))
    variables, analytic = dict(params, x=x), dict(grads, x=dx)
    for i, s in enumerate(state0):
        variables[f"state0[{i}]"], analytic[f"state0[{i}]"] = s, dstate0[i]
    errors = gradcheck(loss, variables, analytic)
    assert max(errors.values()) < 1e-6, errors
    assert not dx[:, 0].any() and not dx[1:, 1].any()   # nothing reaches padded inputs


@pytest.mark.parametrize("cell_cls", CELL_CLASSES)
def test_a_mask_with_a_hole_is_refused(cell_cls, rng):
    cell = cell_cls()
    params, x, state0 = setup(cell, rng, "ids")
    mask = np.ones((T, B))
    mask[2, 1] = 0
    with pytest.raises(ValueError, match="mask column 1 is not padding at the end of a sequence"):
        cell.forward(x, state0, params, mask)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_exact_at_the_extremes_and_quiet(dtype):
    """sigmoid = 1 / (1 + exp(-x)): where exp(-x) overflows the result is the exact limit 0, with no
    warning; elsewhere it agrees to the dtype's precision with 1 / (1 + exp(-x)) in extended precision
    (relative: also in the far negative tail, where 0.5 * (1 + tanh(x / 2)) would cancel)."""
    import warnings

    from rnnlab.cells.base import sigmoid
    x = np.array([-1e30, -1e4, -200, -89, -30, -1, 0, 1e-8, 1, 30, 200, 1e4, 1e30], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sigmoid(x)
        out = np.empty_like(x)
        assert sigmoid(x, out=out) is out
    assert s.dtype == dtype and np.all(np.isfinite(s)) and np.all((s >= 0) & (s <= 1))
    assert s[0] == 0 and s[-1] == 1 and s[6] == 0.5
    with np.errstate(over="ignore"):
        exact = 1 / (1 + np.exp(-x.astype(np.longdouble)))
    np.testing.assert_allclose(s.astype(np.longdouble), exact, rtol=4 * np.finfo(dtype).eps,
                               atol=np.finfo(dtype).tiny)
