"""Finite-difference gradient checking, in float64.

    err = gradcheck(f, params, grads)     # f() -> scalar loss, reading ``params`` (a dict of arrays)

``grads`` are the analytic gradients of ``f`` with respect to ``params``; every entry of every array is
perturbed by ±eps in place (restored afterwards) and the central difference compared with it. The
relative error of each array is the course's ``||a - n|| / (||a|| + ||n||)`` (Euclidean norms over
the checked entries), which stays meaningful where single entries are close to zero.
"""

from __future__ import annotations

import numpy as np


def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6, indices=None) -> np.ndarray:
    """Central differences of ``f()`` with respect to the array ``x`` (perturbed in place)."""
    grad = np.zeros_like(x, dtype=np.float64)
    idx_iter = np.ndindex(x.shape) if indices is None else indices
    for idx in idx_iter:
        old = x[idx]
        x[idx] = old + eps
        plus = f()
        x[idx] = old - eps
        minus = f()
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def relative_error(analytic, numeric, floor: float = 1e-12) -> float:
    """||a - n|| / max(||a|| + ||n||, floor)."""
    a, n = np.ravel(np.asarray(analytic, np.float64)), np.ravel(np.asarray(numeric, np.float64))
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), floor))


def gradcheck(f, params: dict, grads: dict, eps: float = 1e-6, max_entries: int | None = None,
              rng: np.random.Generator | None = None, floor: float = 1e-12) -> dict:
    """Relative error of ``grads`` against finite differences of ``f``, per parameter name.

    params must be float64. With ``max_entries``, at most that many entries of each array (chosen with
    ``rng``) are checked. Returns {name: max relative error}.
    """
    errors = {}
    for name, x in params.items():
        if x.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 parameters; {name!r} is {x.dtype}")
        if name not in grads:
            raise KeyError(f"no analytic gradient for parameter {name!r}")
        indices = None
        if max_entries is not None and x.size > max_entries:
            rng = rng or np.random.default_rng(0)
            flat = rng.choice(x.size, max_entries, replace=False)
            indices = [np.unravel_index(i, x.shape) for i in flat]
        numeric = numerical_gradient(f, x, eps, indices)
        analytic = np.asarray(grads[name], np.float64)
        if indices is not None:
            sel = tuple(np.array(i) for i in zip(*indices))
            errors[name] = relative_error(analytic[sel], numeric[sel], floor)
        else:
            errors[name] = relative_error(analytic, numeric, floor)
    return errors
