"""The step-by-step API of the classic course, with its exact names, shapes and semantics.

Two parts, as in the course:

* "Building a recurrent neural network, step by step": ``rnn_cell_forward`` … ``lstm_backward``.
  Layout is features × batch × time: ``x`` is ``(n_x, m, T_x)``, hidden states ``(n_a, m)``.
  LSTM gate weights act on the concatenation ``[a_prev; xt]`` (a_prev on top).
* "Dinosaurus Island", the character model: ``clip``, ``sample``, ``optimize``, ``model`` and their
  helpers. Its RNN names the hidden bias ``b``; it feeds one example (a list of indices) at a time and
  uses NumPy's *global* random state in the same order as the course, so the course's numbers come out.

The sequence-level helpers of the character model are called ``rnn_forward``/``rnn_backward`` in the
course's ``utils.py``; here they are ``char_rnn_forward``/``char_rnn_backward`` so that they do not shadow
the step-by-step functions of the same name.

This module is deliberately plain loops over time steps; the fast batched engine is ``rnnlab.cells``,
and the tests cross-check the two on identical weights. ``to_engine`` and ``from_engine`` carry weights
(or gradients) across: the engine's layout is the transpose (inputs × units), its biases are flat, and
its LSTM gates are fused in the order i, f, o, g where the course has separate f, i, c, o.
"""

from __future__ import annotations

import io
import sys

import numpy as np

__all__ = [
    "softmax", "sigmoid",
    "rnn_cell_forward", "rnn_forward", "rnn_cell_backward", "rnn_backward",
    "lstm_cell_forward", "lstm_forward", "lstm_cell_backward", "lstm_backward",
    "initialize_parameters", "get_initial_loss", "smooth", "get_sample", "print_sample",
    "rnn_step_forward", "rnn_step_backward", "update_parameters",
    "char_rnn_forward", "char_rnn_backward",
    "clip", "sample", "optimize", "model",
    "to_engine", "from_engine",
]


# ----------------------------------------------------------------------------------------- helpers

def softmax(x):
    """Softmax over axis 0 (the class axis), stabilised by the global maximum, as in the course."""
    e_x = np.exp(x - np.max(x))
    return e_x / e_x.sum(axis=0)


def sigmoid(x):
    """Logistic function ``1 / (1 + exp(-x))``."""
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------------ the bridge to the engine

LSTM_GATES = ("i", "f", "o", "c")   # the engine's fused order (its g is the course's candidate c)


def to_engine(parameters: dict) -> dict:
    """Textbook weights → the engine's: ``{"Wx": (n_x, G*n_a), "Wh": (n_a, G*n_a), "b": (G*n_a,)}``.

    An RNN (``Wax``, ``Waa`` and ``ba``, or ``b`` for the character model) gives G = 1; an LSTM (``Wf``,
    ``Wi``, ``Wc``, ``Wo`` acting on ``[a_prev; x]``, biases ``bf``…) gives G = 4, gates reordered to
    i, f, o, g. An output layer (``Wya`` or ``Wy``, ``by``) comes along as the character model's
    ``Wy (n_a, n_y)`` and ``by (n_y,)``.
    """
    p = parameters
    if "Wax" in p:
        out = {"Wx": p["Wax"].T, "Wh": p["Waa"].T, "b": p["ba" if "ba" in p else "b"].ravel()}
    else:
        n_a = p["Wf"].shape[0]
        out = {"Wx": np.concatenate([p["W" + g][:, n_a:].T for g in LSTM_GATES], axis=1),
               "Wh": np.concatenate([p["W" + g][:, :n_a].T for g in LSTM_GATES], axis=1),
               "b": np.concatenate([p["b" + g].ravel() for g in LSTM_GATES])}
    output = p.get("Wya", p.get("Wy"))
    if output is not None:
        out.update(Wy=output.T, by=p["by"].ravel())
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_engine(params: dict, prefix: str = "", rnn_bias: str = "ba") -> dict:
    """The engine's weights (or gradients, with ``prefix="d"``) → the textbook's names and shapes; the
    inverse of ``to_engine``. The cell is told by its gate count: 1 an RNN (bias ``rnn_bias``: ``ba``,
    or ``b`` for the character model), 4 an LSTM."""
    n_a = params["Wh"].shape[0]
    gates = params["Wh"].shape[1] // n_a
    if gates == 1:
        out = {"Wax": params["Wx"].T, "Waa": params["Wh"].T, rnn_bias: params["b"][:, None]}
        output_name = "Wya"
    elif gates == 4:
        out, output_name = {}, "Wy"
        for j, g in enumerate(LSTM_GATES):
            cols = slice(j * n_a, (j + 1) * n_a)
            out["W" + g] = np.concatenate([params["Wh"][:, cols].T, params["Wx"][:, cols].T], axis=1)
            out["b" + g] = params["b"][cols][:, None]
    else:
        raise ValueError(f"the textbook has no cell with {gates} gates (RNN: 1, LSTM: 4)")
    if "Wy" in params:
        out.update({output_name: params["Wy"].T, "by": params["by"][:, None]})
    return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}


# ------------------------------------------------------------------------------- RNN, step by step

def rnn_cell_forward(xt, a_prev, parameters):
    """One step of a basic RNN.

    xt: (n_x, m); a_prev: (n_a, m); parameters: Wax (n_a, n_x), Waa (n_a, n_a), Wya (n_y, n_a),
    ba (n_a, 1), by (n_y, 1).
    Returns a_next (n_a, m), yt_pred (n_y, m) and cache = (a_next, a_prev, xt, parameters).
    """
    Wax, Waa, Wya = parameters["Wax"], parameters["Waa"], parameters["Wya"]
    ba, by = parameters["ba"], parameters["by"]
    a_next = np.tanh(np.dot(Waa, a_prev) + np.dot(Wax, xt) + ba)
    yt_pred = softmax(np.dot(Wya, a_next) + by)
    cache = (a_next, a_prev, xt, parameters)
    return a_next, yt_pred, cache


def rnn_forward(x, a0, parameters):
    """A basic RNN over a whole sequence.

    x: (n_x, m, T_x); a0: (n_a, m).
    Returns a (n_a, m, T_x), y_pred (n_y, m, T_x) and caches = (list of step caches, x).
    """
    n_x, m, T_x = x.shape
    n_y, n_a = parameters["Wya"].shape
    a = np.zeros((n_a, m, T_x))
    y_pred = np.zeros((n_y, m, T_x))
    step_caches = []
    a_next = a0
    for t in range(T_x):
        a_next, yt_pred, cache = rnn_cell_forward(x[:, :, t], a_next, parameters)
        a[:, :, t] = a_next
        y_pred[:, :, t] = yt_pred
        step_caches.append(cache)
    return a, y_pred, (step_caches, x)


def rnn_cell_backward(da_next, cache):
    """Backward pass of one RNN step (through the hidden state only; the output layer is not included).

    da_next: (n_a, m) gradient of the loss with respect to a_next.
    Returns {"dxt": (n_x, m), "da_prev": (n_a, m), "dWax": (n_a, n_x), "dWaa": (n_a, n_a), "dba": (n_a, 1)}.
    """
    a_next, a_prev, xt, parameters = cache
    Wax, Waa = parameters["Wax"], parameters["Waa"]
    dz = (1 - a_next ** 2) * da_next
    return {
        "dxt": np.dot(Wax.T, dz),
        "da_prev": np.dot(Waa.T, dz),
        "dWax": np.dot(dz, xt.T),
        "dWaa": np.dot(dz, a_prev.T),
        "dba": np.sum(dz, axis=1, keepdims=True),
    }


def rnn_backward(da, caches):
    """Backpropagation through time for the basic RNN.

    da: (n_a, m, T_x) upstream gradients of every hidden state; caches from ``rnn_forward``.
    Returns {"dx": (n_x, m, T_x), "da0": (n_a, m), "dWax", "dWaa", "dba"}.
    """
    step_caches, x = caches
    _, _, x1, parameters = step_caches[0]
    n_a, m, T_x = da.shape
    n_x, _ = x1.shape
    dx = np.zeros((n_x, m, T_x))
    dWax = np.zeros((n_a, n_x))
    dWaa = np.zeros((n_a, n_a))
    dba = np.zeros((n_a, 1))
    da_prevt = np.zeros((n_a, m))
    for t in reversed(range(T_x)):
        g = rnn_cell_backward(da[:, :, t] + da_prevt, step_caches[t])
        dx[:, :, t] = g["dxt"]
        da_prevt = g["da_prev"]
        dWax += g["dWax"]
        dWaa += g["dWaa"]
        dba += g["dba"]
    return {"dx": dx, "da0": da_prevt, "dWax": dWax, "dWaa": dWaa, "dba": dba}


# ------------------------------------------------------------------------------ LSTM, step by step

def lstm_cell_forward(xt, a_prev, c_prev, parameters):
    """One LSTM step.

    xt: (n_x, m); a_prev, c_prev: (n_a, m); gate weights Wf, Wi, Wc, Wo: (n_a, n_a + n_x) acting on
    [a_prev; xt]; biases bf, bi, bc, bo: (n_a, 1); output Wy (n_y, n_a), by (n_y, 1).
    Returns a_next, c_next (n_a, m), yt_pred (n_y, m) and the cache
    (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters).
    """
    Wf, bf = parameters["Wf"], parameters["bf"]
    Wi, bi = parameters["Wi"], parameters["bi"]
    Wc, bc = parameters["Wc"], parameters["bc"]
    Wo, bo = parameters["Wo"], parameters["bo"]
    Wy, by = parameters["Wy"], parameters["by"]
    concat = np.concatenate((a_prev, xt), axis=0)
    ft = sigmoid(np.dot(Wf, concat) + bf)
    it = sigmoid(np.dot(Wi, concat) + bi)
    cct = np.tanh(np.dot(Wc, concat) + bc)
    c_next = ft * c_prev + it * cct
    ot = sigmoid(np.dot(Wo, concat) + bo)
    a_next = ot * np.tanh(c_next)
    yt_pred = softmax(np.dot(Wy, a_next) + by)
    cache = (a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters)
    return a_next, c_next, yt_pred, cache


def lstm_forward(x, a0, parameters):
    """An LSTM over a whole sequence; the initial cell state is zero.

    x: (n_x, m, T_x); a0: (n_a, m).
    Returns a (n_a, m, T_x), y (n_y, m, T_x), c (n_a, m, T_x) and caches = (list of step caches, x).
    """
    n_x, m, T_x = x.shape
    n_y, n_a = parameters["Wy"].shape
    a = np.zeros((n_a, m, T_x))
    c = np.zeros((n_a, m, T_x))
    y = np.zeros((n_y, m, T_x))
    a_next, c_next = a0, np.zeros(a0.shape)
    step_caches = []
    for t in range(T_x):
        a_next, c_next, yt, cache = lstm_cell_forward(x[:, :, t], a_next, c_next, parameters)
        a[:, :, t] = a_next
        c[:, :, t] = c_next
        y[:, :, t] = yt
        step_caches.append(cache)
    return a, y, c, (step_caches, x)


def lstm_cell_backward(da_next, dc_next, cache):
    """Backward pass of one LSTM step (the output layer is not included).

    da_next, dc_next: (n_a, m). Returns {"dxt": (n_x, m), "da_prev", "dc_prev": (n_a, m),
    "dWf", "dWi", "dWc", "dWo": (n_a, n_a + n_x), "dbf", "dbi", "dbc", "dbo": (n_a, 1)}.
    """
    a_next, c_next, a_prev, c_prev, ft, it, cct, ot, xt, parameters = cache
    n_a = a_next.shape[0]
    tanh_c = np.tanh(c_next)
    # Gradient reaching c_next: directly, and through a_next = ot * tanh(c_next).
    dc = dc_next + da_next * ot * (1 - tanh_c ** 2)
    dot = da_next * tanh_c * ot * (1 - ot)
    dcct = dc * it * (1 - cct ** 2)
    dit = dc * cct * it * (1 - it)
    dft = dc * c_prev * ft * (1 - ft)
    concat = np.concatenate((a_prev, xt), axis=0)
    dconcat = (np.dot(parameters["Wf"].T, dft) + np.dot(parameters["Wi"].T, dit)
               + np.dot(parameters["Wc"].T, dcct) + np.dot(parameters["Wo"].T, dot))
    return {
        "dxt": dconcat[n_a:],
        "da_prev": dconcat[:n_a],
        "dc_prev": dc * ft,
        "dWf": np.dot(dft, concat.T), "dbf": np.sum(dft, axis=1, keepdims=True),
        "dWi": np.dot(dit, concat.T), "dbi": np.sum(dit, axis=1, keepdims=True),
        "dWc": np.dot(dcct, concat.T), "dbc": np.sum(dcct, axis=1, keepdims=True),
        "dWo": np.dot(dot, concat.T), "dbo": np.sum(dot, axis=1, keepdims=True),
    }


def lstm_backward(da, caches):
    """Backpropagation through time for the LSTM.

    da: (n_a, m, T_x) upstream gradients of every hidden state; caches from ``lstm_forward``.
    Returns {"dx": (n_x, m, T_x), "da0": (n_a, m), "dWf", "dbf", "dWi", "dbi", "dWc", "dbc", "dWo", "dbo"}.
    """
    step_caches, x = caches
    x1 = step_caches[0][8]
    n_a, m, T_x = da.shape
    n_x, _ = x1.shape
    dx = np.zeros((n_x, m, T_x))
    da_prevt = np.zeros((n_a, m))
    dc_prevt = np.zeros((n_a, m))
    grads = {k: np.zeros((n_a, n_a + n_x)) for k in ("dWf", "dWi", "dWc", "dWo")}
    grads.update({k: np.zeros((n_a, 1)) for k in ("dbf", "dbi", "dbc", "dbo")})
    for t in reversed(range(T_x)):
        g = lstm_cell_backward(da[:, :, t] + da_prevt, dc_prevt, step_caches[t])
        dx[:, :, t] = g["dxt"]
        da_prevt, dc_prevt = g["da_prev"], g["dc_prev"]
        for k in grads:
            grads[k] += g[k]
    return {"dx": dx, "da0": da_prevt, **grads}


# ------------------------------------------------------------------ the character model (dinosaurs)

def initialize_parameters(n_a, n_x, n_y):
    """Small random RNN weights from the global RNG seeded with 1, zero biases (as the course does).

    Returns {"Wax": (n_a, n_x), "Waa": (n_a, n_a), "Wya": (n_y, n_a), "b": (n_a, 1), "by": (n_y, 1)}.
    """
    np.random.seed(1)
    Wax = np.random.randn(n_a, n_x) * 0.01
    Waa = np.random.randn(n_a, n_a) * 0.01
    Wya = np.random.randn(n_y, n_a) * 0.01
    return {"Wax": Wax, "Waa": Waa, "Wya": Wya, "b": np.zeros((n_a, 1)), "by": np.zeros((n_y, 1))}


def get_initial_loss(vocab_size, seq_length):
    """Loss of a uniform guess over ``seq_length`` characters: ``seq_length * log(vocab_size)``."""
    return -np.log(1.0 / vocab_size) * seq_length


def smooth(loss, cur_loss):
    """Exponential moving average used for the printed loss: 0.999 old + 0.001 new."""
    return loss * 0.999 + cur_loss * 0.001


def get_sample(sample_ix, ix_to_char):
    """The sampled characters as text, first letter capitalised (the trailing newline kept)."""
    txt = "".join(ix_to_char[ix] for ix in sample_ix)
    return txt[0].upper() + txt[1:]


def print_sample(sample_ix, ix_to_char):
    """Print the sampled characters, first letter capitalised, without adding a newline."""
    print("%s" % (get_sample(sample_ix, ix_to_char),), end="")


def rnn_step_forward(parameters, a_prev, x):
    """One step of the character RNN: x (vocab, 1) one-hot, a_prev (n_a, 1) → a_next, p_t (vocab, 1)."""
    Waa, Wax, Wya = parameters["Waa"], parameters["Wax"], parameters["Wya"]
    b, by = parameters["b"], parameters["by"]
    a_next = np.tanh(np.dot(Wax, x) + np.dot(Waa, a_prev) + b)
    p_t = softmax(np.dot(Wya, a_next) + by)
    return a_next, p_t


def rnn_step_backward(dy, gradients, parameters, x, a, a_prev):
    """Accumulate one step's gradients into ``gradients`` (which carries ``da_next``) and return it."""
    gradients["dWya"] += np.dot(dy, a.T)
    gradients["dby"] += dy
    da = np.dot(parameters["Wya"].T, dy) + gradients["da_next"]
    daraw = (1 - a * a) * da
    gradients["db"] += daraw
    gradients["dWax"] += np.dot(daraw, x.T)
    gradients["dWaa"] += np.dot(daraw, a_prev.T)
    gradients["da_next"] = np.dot(parameters["Waa"].T, daraw)
    return gradients


def update_parameters(parameters, gradients, lr):
    """Plain gradient descent, in place: ``W += -lr * dW`` for Wax, Waa, Wya, b, by."""
    for name in ("Wax", "Waa", "Wya", "b", "by"):
        parameters[name] += -lr * gradients["d" + name]
    return parameters


def char_rnn_forward(X, Y, a0, parameters, vocab_size=27):
    """Forward pass over one example (the course's ``utils.rnn_forward``).

    X: list of input indices, ``None`` standing for the zero vector at the start; Y: list of target
    indices of the same length; a0: (n_a, 1). Returns the summed cross-entropy and cache = (y_hat, a, x),
    three dicts keyed by time step (``a[-1]`` is a0).
    """
    x, a, y_hat = {}, {}, {}
    a[-1] = np.copy(a0)
    loss = 0
    for t in range(len(X)):
        x[t] = np.zeros((vocab_size, 1))
        if X[t] is not None:
            x[t][X[t]] = 1
        a[t], y_hat[t] = rnn_step_forward(parameters, a[t - 1], x[t])
        loss -= np.log(y_hat[t][Y[t], 0])
    return loss, (y_hat, a, x)


def char_rnn_backward(X, Y, parameters, cache):
    """Backward pass over one example (the course's ``utils.rnn_backward``). Returns (gradients, a)."""
    y_hat, a, x = cache
    gradients = {"d" + k: np.zeros_like(parameters[k]) for k in ("Wax", "Waa", "Wya", "b", "by")}
    gradients["da_next"] = np.zeros_like(a[0])
    for t in reversed(range(len(X))):
        dy = np.copy(y_hat[t])
        dy[Y[t]] -= 1
        gradients = rnn_step_backward(dy, gradients, parameters, x[t], a[t], a[t - 1])
    return gradients, a


def clip(gradients, maxValue):
    """Clip every gradient element-wise to [-maxValue, maxValue].

    Returns a new dict with exactly the keys dWaa, dWax, dWya, db, dby (``da_next`` is dropped). As in
    the current course version the caller's arrays are left untouched (the oldest version clipped them
    in place; the returned values are the same).
    """
    return {name: np.clip(gradients[name], -maxValue, maxValue)
            for name in ("dWaa", "dWax", "dWya", "db", "dby")}


def sample(parameters, char_to_ix, seed):
    """Sample a sequence of character indices from the character RNN.

    Before drawing the character at position ``counter`` the global RNG is seeded with
    ``seed + 2 * counter`` (the course's ``np.random.seed(counter + seed)`` with both incremented each
    step). Stops after the newline character or after 50 characters, in which case a newline index is
    appended. Returns the list of indices.
    """
    Waa, Wax, Wya = parameters["Waa"], parameters["Wax"], parameters["Wya"]
    b, by = parameters["b"], parameters["by"]
    vocab_size = by.shape[0]
    n_a = Waa.shape[1]
    x = np.zeros((vocab_size, 1))
    a_prev = np.zeros((n_a, 1))
    indices = []
    idx = -1
    counter = 0
    newline_character = char_to_ix["\n"]
    while idx != newline_character and counter != 50:
        a = np.tanh(np.dot(Wax, x) + np.dot(Waa, a_prev) + b)
        y = softmax(np.dot(Wya, a) + by)
        np.random.seed(counter + seed)
        idx = np.random.choice(list(range(vocab_size)), p=y.ravel())
        indices.append(idx)
        x = np.zeros((vocab_size, 1))
        x[idx] = 1
        a_prev = a
        seed += 1
        counter += 1
    if counter == 50:
        indices.append(char_to_ix["\n"])
    return indices


def optimize(X, Y, a_prev, parameters, learning_rate=0.01):
    """One step of training on one example: forward, backward, clip to [-5, 5], gradient descent.

    X, Y: lists of indices; a_prev: (n_a, 1). Updates ``parameters`` in place.
    Returns (loss, gradients, a_last) where a_last is the hidden state after the last character.
    """
    vocab_size = parameters["by"].shape[0]  # the course's default of 27, for any vocabulary
    loss, cache = char_rnn_forward(X, Y, a_prev, parameters, vocab_size)
    gradients, a = char_rnn_backward(X, Y, parameters, cache)
    gradients = clip(gradients, 5)
    parameters = update_parameters(parameters, gradients, learning_rate)
    return loss, gradients, a[len(X) - 1]


def _examples(data):
    """The training examples of ``model``: the corpus' lines, lowercased and stripped."""
    lines = io.StringIO(data).readlines() if isinstance(data, str) else list(data)
    return [line.lower().strip() for line in lines]


def model(data, ix_to_char, char_to_ix, num_iterations=35000, n_a=50, dino_names=7, vocab_size=27,
          hook=None):
    """Train the character RNN one name at a time, exactly as the course does, and return the parameters.

    data: the corpus text (one example per line), or a list of its lines. The examples are lowercased,
    stripped and shuffled once with ``np.random.seed(0)``; iteration ``j`` trains on example
    ``j % len(examples)`` with input ``[None] + indices`` and target ``indices + [newline]``, carrying the
    hidden state from one name to the next. Every 2000 iterations it prints
    ``Iteration: %d, Loss: %f`` (loss smoothed from ``get_initial_loss``) and ``dino_names`` samples.
    ``hook(j, parameters, curr_loss)``, if given, is called after each iteration's update (to measure
    the run as it goes without changing it; not part of the course).
    """
    n_x, n_y = vocab_size, vocab_size
    parameters = initialize_parameters(n_a, n_x, n_y)
    loss = get_initial_loss(vocab_size, dino_names)
    examples = _examples(data)
    np.random.seed(0)
    np.random.shuffle(examples)
    a_prev = np.zeros((n_a, 1))
    for j in range(num_iterations):
        index = j % len(examples)
        X = [None] + [char_to_ix[ch] for ch in examples[index]]
        Y = X[1:] + [char_to_ix["\n"]]
        curr_loss, gradients, a_prev = optimize(X, Y, a_prev, parameters, learning_rate=0.01)
        loss = smooth(loss, curr_loss)
        if hook is not None:
            hook(j, parameters, curr_loss)
        if j % 2000 == 0:
            print("Iteration: %d, Loss: %f" % (j, loss) + "\n")
            seed = 0
            for _ in range(dino_names):
                sampled_indices = sample(parameters, char_to_ix, seed)
                print_sample(sampled_indices, ix_to_char)
                seed += 1
            print("\n")
            sys.stdout.flush()
    return parameters
