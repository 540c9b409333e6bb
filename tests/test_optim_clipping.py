"""Optimizers against their textbook update rules; clipping policies."""

import numpy as np
import pytest

from rnnlab import textbook as tb
from rnnlab.clipping import NoClip, NormClip, ValueClip, global_norm
from rnnlab.registry import CLIPPERS, OPTIMIZERS


def quadratic_descent(opt, steps=300):
    """Minimise 0.5 * ||p - target||² and return the final distance."""
    target = np.array([1.0, -2.0, 3.0])
    params = {"p": np.zeros(3)}
    for _ in range(steps):
        opt.step(params, {"p": params["p"] - target})
    return np.abs(params["p"] - target).max()


@pytest.mark.parametrize("name, options", [
    ("sgd", {"lr": 0.1}), ("momentum", {"lr": 0.05}), ("adagrad", {"lr": 0.5}),
    ("rmsprop", {"lr": 0.02}), ("adam", {"lr": 0.05}),
])
def test_optimizers_converge_on_a_quadratic(name, options):
    assert quadratic_descent(OPTIMIZERS.build(name, **options)) < 0.02


def test_adam_matches_its_formula():
    opt = OPTIMIZERS.build("adam", lr=0.1, beta1=0.8, beta2=0.9, eps=1e-8)
    p = {"w": np.array([1.0, 2.0])}
    grads = [np.array([0.5, -1.0]), np.array([0.1, 0.3])]
    m = v = np.zeros(2)
    w = p["w"].copy()
    for t, g in enumerate(grads, 1):
        opt.step(p, {"w": g})
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g * g
        w = w - 0.1 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.9 ** t)) + 1e-8)
    np.testing.assert_allclose(p["w"], w, rtol=1e-6)


def test_sgd_with_value_clip_is_the_course_update():
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=(3, 2)) for k in ("Wax", "Waa", "Wya", "b", "by")}
    grads = {"d" + k: rng.normal(scale=10, size=(3, 2)) for k in params}
    expected = {k: v.copy() for k, v in params.items()}
    tb.update_parameters(expected, tb.clip(grads, 5), 0.01)
    ours = {k: grads["d" + k].copy() for k in params}
    ValueClip(5)(ours)
    OPTIMIZERS.build("sgd", lr=0.01).step(params, ours)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12)


def test_optimizer_state_round_trip():
    a, b = OPTIMIZERS.build("adam", lr=0.01), OPTIMIZERS.build("adam", lr=0.01)
    pa, pb = {"w": np.ones(4)}, {"w": np.ones(4)}
    g = {"w": np.arange(4.0)}
    a.step(pa, g)
    b.load_state_dict({k: np.copy(v) for k, v in a.state_dict().items()})
    pb["w"][:] = pa["w"]
    a.step(pa, g)
    b.step(pb, g)
    np.testing.assert_array_equal(pa["w"], pb["w"])
    assert b.t == 2


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
def test_optimizers_refuse_a_bad_learning_rate(name):
    with pytest.raises(ValueError, match="lr must be > 0, got -1"):
        OPTIMIZERS.build(name, lr=-1)


def test_clipping_policies():
    grads = lambda: {"a": np.array([3.0, -4.0]), "b": np.array([12.0])}  # noqa: E731
    assert global_norm(grads()) == pytest.approx(13.0)
    g = grads()
    assert NoClip()(g) == pytest.approx(13.0) and g["b"][0] == 12.0
    g = grads()
    assert ValueClip(5)(g) == pytest.approx(13.0)
    np.testing.assert_array_equal(g["a"], [3.0, -4.0])
    np.testing.assert_array_equal(g["b"], [5.0])
    g = grads()
    NormClip(6.5)(g)
    assert global_norm(g) == pytest.approx(6.5)
    np.testing.assert_allclose(g["a"], [1.5, -2.0])
    g = grads()
    NormClip(100)(g)
    np.testing.assert_array_equal(g["b"], [12.0])
    assert CLIPPERS.names() == ["none", "norm", "value"]
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        NormClip(0)
