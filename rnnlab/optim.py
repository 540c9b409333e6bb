"""Optimizers over flat dicts of arrays, updating them in place.

    opt = OPTIMIZERS.build("adam", lr=0.01)
    opt.step(params, grads)
    state = opt.state_dict()      # plain arrays and numbers, for checkpoints

Every optimizer takes ``weight_decay`` (default 0): decoupled weight decay (Loshchilov & Hutter), each
step ``p -= lr * weight_decay * p`` on the weight matrices (arrays of 2 or more dimensions; biases are
not decayed), before the optimizer's own update. For SGD it is the gradient of an L2 penalty; for Adam
it makes AdamW.

An optimizer is a dataclass: its fields are its options (the one place where they and their defaults are
declared; the command line's ``optimizer`` group is made from them), validated in ``__post_init__``.
``lr`` has no default here: the run's ``lr`` is its default on the command line.

Every optimizer takes ``ema`` (default 0: off): the decay of an exponential moving average of the
parameters after each update (Polyak averaging), kept as the buffer ``avg`` and read bias-corrected by
``averaged``, as Adam reads its moments; training evaluates, keeps as its best and samples from the
average.

Every optimizer keeps its per-parameter buffers in ``self.buffers[name][slot]`` and its step count in
``self.t``, so checkpoints and resumes need no knowledge of its insides.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import math

import numpy as np

from .checks import nonnegative as _nonnegative, positive as _positive, unit_interval as _unit
from .flat import FlatParams
from .registry import OPTIMIZERS


@dataclass(eq=False)
class Optimizer:
    """The base of the optimizers: ``lr`` (the only positional option) and ``weight_decay``."""
    lr: float
    _: KW_ONLY
    weight_decay: float = 0.0     # decoupled weight decay of the weight matrices (AdamW for adam)
    ema: float = 0.0              # decay of a moving average of the weights that evaluation uses (0: off)
    slots = ()                    # the names of the per-parameter buffers (class attribute, not an option)
    CHUNK = 1 << 16               # entries of a flat buffer updated at once: the update's passes over a chunk hit the cache

    def __post_init__(self):
        self.lr = _positive("lr", self.lr)
        self.weight_decay = _nonnegative("weight_decay", self.weight_decay)
        self.ema = _unit("ema", self.ema)
        if self.ema:
            self.slots = type(self).slots + ("avg",)
        self.t = 0
        self.buffers: dict[str, dict[str, np.ndarray]] = {}

    def _scratch(self, p):
        """A work array shaped like ``p`` (not part of the optimizer's state)."""
        scratch = self.__dict__.setdefault("_work", {})
        key = (p.shape, p.dtype.str)
        if key not in scratch:
            scratch[key] = np.empty_like(p)
        return scratch[key]

    def _buffers(self, name, like):
        if name not in self.buffers:
            self.buffers[name] = {slot: np.zeros_like(like) for slot in self.slots}
        return self.buffers[name]

    def step(self, params: dict, grads: dict, shared=None) -> None:
        """Update every parameter that has a gradient, in place: the whole buffer at once when both are
        ``FlatParams`` of one layout, else array by array (the same arithmetic for each entry).

        shared: None, or ``shared(optimizer, params, grads, buffers)`` that runs ``update_range`` over
        the flat buffers' entries split between processes (``rnnlab.split``)."""
        self.t += 1
        if isinstance(params, FlatParams) and params.same_layout(grads):
            buffers = self._flat_buffers(params)
            if shared is None:
                self.update_range(params.flat, grads.flat, buffers, params.n_matrix, 0, params.flat.size)
            else:
                shared(self, params, grads, buffers)
            return
        decay = 1 - float(self.lr) * self.weight_decay     # a Python float (see Adam.update)
        for name, p in params.items():
            if self.weight_decay and p.ndim >= 2:
                p *= decay
            self._update_and_average(p, grads[name], self._buffers(name, p))

    def _update_and_average(self, p, g, buf):
        self.update(p, g, buf)
        if self.ema:
            avg = buf["avg"]
            avg *= self.ema
            avg += (1 - self.ema) * p

    def averaged(self, params: dict) -> dict:
        """The moving average of ``params`` (``ema``), bias-corrected: ``avg / (1 - ema^t)``, a new
        ``FlatParams``; ``params`` themselves before the first update or without ``ema``."""
        if not self.ema or self.t == 0:
            return params
        out = FlatParams.like(params, fill="empty")
        for name in out:
            np.divide(self.buffers[name]["avg"], 1 - self.ema ** self.t, out=out[name])
        return out

    def update_range(self, p, g, buffers, n_matrix: int, lo: int, hi: int) -> None:
        """The step (``t`` already counted) of the entries lo … hi of flat buffers whose first ``n_matrix``
        entries are weight matrices: their weight decay, then ``update`` a chunk at a time, so that all its
        passes over a chunk find it in the cache. Element-wise: any split of 0 … n gives the same result.
        (Sharing the chunks out between two threads was measured no faster; between two processes it is.)"""
        if self.weight_decay and lo < n_matrix:
            p[lo:min(hi, n_matrix)] *= 1 - float(self.lr) * self.weight_decay   # a Python float: see Adam.update
        for a in range(lo, hi, self.CHUNK):
            b = min(a + self.CHUNK, hi)
            self._update_and_average(p[a:b], g[a:b], {k: v[a:b] for k, v in buffers.items()})

    def _flat_buffers(self, params: FlatParams) -> dict:
        """One buffer per slot in the layout of ``params``; ``self.buffers`` holds named views into them
        (a restored state is copied in)."""
        flat = self.__dict__.get("_flat")
        if flat is None or not flat[0].same_layout(params):
            slots = {slot: FlatParams.like(params, fill=0, same_memory=True) for slot in self.slots}
            for name, named in self.buffers.items():
                for slot, value in named.items():
                    if slot in slots and name in params:
                        slots[slot][name] = value
            self.buffers = {name: {slot: slots[slot][name] for slot in self.slots} for name in params}
            flat = self._flat = (params, {slot: buf.flat for slot, buf in slots.items()})
        return flat[1]

    def update(self, p, g, buf):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{"t": step count, "<param>/<slot>": array, …}."""
        state = {"t": self.t}
        for name, slots in self.buffers.items():
            for slot, value in slots.items():
                state[f"{name}/{slot}"] = value
        return state

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.buffers = {}
        for key, value in state.items():
            if key == "t":
                continue
            name, slot = key.rsplit("/", 1)
            self.buffers.setdefault(name, {})[slot] = np.array(value)
        self._flat = None


@OPTIMIZERS.register("sgd")
@dataclass(eq=False)
class SGD(Optimizer):
    """p -= lr * g."""

    def update(self, p, g, buf):
        p -= self.lr * g


@OPTIMIZERS.register("momentum")
@dataclass(eq=False, kw_only=True)
class Momentum(Optimizer):
    """Heavy-ball momentum: v = mu * v + g; p -= lr * v."""
    momentum: float = 0.9
    slots = ("v",)

    def __post_init__(self):
        super().__post_init__()
        self.momentum = _unit("momentum", self.momentum)

    def update(self, p, g, buf):
        v = buf["v"]
        v *= self.momentum
        v += g
        p -= self.lr * v


@OPTIMIZERS.register("adagrad")
@dataclass(eq=False, kw_only=True)
class Adagrad(Optimizer):
    """s += g²; p -= lr * g / (sqrt(s) + eps)."""
    eps: float = 1e-8
    slots = ("s",)

    def __post_init__(self):
        super().__post_init__()
        self.eps = _positive("eps", self.eps)

    def update(self, p, g, buf):
        s = buf["s"]
        s += g * g
        p -= self.lr * g / (np.sqrt(s) + self.eps)


@OPTIMIZERS.register("rmsprop")
@dataclass(eq=False, kw_only=True)
class RMSProp(Optimizer):
    """s = rho * s + (1 - rho) * g²; p -= lr * g / (sqrt(s) + eps)."""
    rho: float = 0.99
    eps: float = 1e-8
    slots = ("s",)

    def __post_init__(self):
        super().__post_init__()
        self.rho, self.eps = _unit("rho", self.rho), _positive("eps", self.eps)

    def update(self, p, g, buf):
        s = buf["s"]
        s *= self.rho
        s += (1 - self.rho) * g * g
        p -= self.lr * g / (np.sqrt(s) + self.eps)


@OPTIMIZERS.register("adam")
@dataclass(eq=False, kw_only=True)
class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba): m, v moving averages of g and g²."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    slots = ("m", "v")

    def __post_init__(self):
        super().__post_init__()
        self.beta1, self.beta2 = _unit("beta1", self.beta1), _unit("beta2", self.beta2)
        self.eps = _positive("eps", self.eps)

    def update(self, p, g, buf):
        m, v = buf["m"], buf["v"]
        s = self._scratch(p)
        m *= self.beta1
        np.multiply(g, 1 - self.beta1, out=s)
        m += s
        v *= self.beta2
        np.multiply(g, g, out=s)
        s *= 1 - self.beta2
        v += s
        # a Python float: a NumPy float64 scalar would run the float32 passes below in float64 (8x slower)
        step = float(self.lr) * math.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        np.sqrt(v, out=s)                 # p -= step * m / (sqrt(v) + eps), without temporaries
        s += self.eps
        np.divide(m, s, out=s)
        s *= step
        p -= s
