"""The textbook API against the published outputs of the course notebooks (given the course's random
inputs), and against the fast engine on identical weights."""

import io
import re
from contextlib import redirect_stdout

import numpy as np
import pytest

from rnnlab import textbook as tb
from rnnlab.cells import LSTM, RNN
from rnnlab.data import Vocab

from conftest import shared_file

CHARS = "\nabcdefghijklmnopqrstuvwxyz"
CHAR_TO_IX = {c: i for i, c in enumerate(CHARS)}
IX_TO_CHAR = dict(enumerate(CHARS))


def close(actual, expected, atol=1e-8):
    np.testing.assert_allclose(actual, expected, rtol=1e-7, atol=atol)


def rnn_params(order=("Waa", "Wax")):
    shapes = {"Waa": (5, 5), "Wax": (5, 3)}
    p = {k: np.random.randn(*shapes[k]) for k in order}
    p["Wya"] = np.random.randn(2, 5)
    p["ba"] = np.random.randn(5, 1)
    p["by"] = np.random.randn(2, 1)
    return p


def lstm_params(n_a=5, n_x=3, n_y=2, with_output=True):
    p = {}
    for g in ("f", "i", "o", "c"):
        p["W" + g] = np.random.randn(n_a, n_a + n_x)
        p["b" + g] = np.random.randn(n_a, 1)
    if with_output:
        p["Wy"] = np.random.randn(n_y, n_a)
        p["by"] = np.random.randn(n_y, 1)
    return p


# ------------------------------------------------------------------------ step by step: forward

def test_rnn_cell_forward_course_values():
    np.random.seed(1)
    xt, a_prev = np.random.randn(3, 10), np.random.randn(5, 10)
    p = rnn_params()
    a_next, yt_pred, cache = tb.rnn_cell_forward(xt, a_prev, p)
    close(a_next[4], [0.59584544, 0.18141802, 0.61311866, 0.99808218, 0.85016201, 0.99980978,
                      -0.18887155, 0.99815551, 0.6531151, 0.82872037])
    close(yt_pred[1], [0.9888161, 0.01682021, 0.21140899, 0.36817467, 0.98988387, 0.88945212,
                       0.36920224, 0.9966312, 0.9982559, 0.17746526])
    assert a_next.shape == (5, 10) and yt_pred.shape == (2, 10)
    assert cache[0] is a_next and cache[1] is a_prev and cache[2] is xt and cache[3] is p


def test_rnn_forward_course_values():
    np.random.seed(1)
    x, a0 = np.random.randn(3, 10, 4), np.random.randn(5, 10)
    p = rnn_params()
    a, y_pred, caches = tb.rnn_forward(x, a0, p)
    close(a[4][1], [-0.99999375, 0.77911235, -0.99861469, -0.99833267])
    close(y_pred[1][3], [0.79560373, 0.86224861, 0.11118257, 0.81515947])
    close(caches[1][1][3], [-1.1425182, -0.34934272, -0.20889423, 0.58662319])
    assert a.shape == (5, 10, 4) and y_pred.shape == (2, 10, 4)
    assert len(caches) == 2 and len(caches[0]) == 4 and caches[1] is x


def test_rnn_forward_course_2021_values():
    np.random.seed(17)
    x, a0 = np.random.randn(4, 8, 13), np.random.randn(7, 8)
    p = {"Waa": np.random.randn(7, 7), "Wax": np.random.randn(7, 4), "Wya": np.random.randn(3, 7),
         "ba": np.random.randn(7, 1), "by": np.random.randn(3, 1)}
    a, y_pred, caches = tb.rnn_forward(x, a0, p)
    close(a[5, 2, 2:6], [0.99999291, 0.99332189, 0.9921928, 0.99503445])
    np.testing.assert_allclose(y_pred[2, 1, 1:5], [0.19428, 0.14292, 0.24993, 0.00119], atol=1e-4)
    assert len(caches[0]) == 13


def test_lstm_cell_forward_course_values():
    np.random.seed(1)
    xt, a_prev, c_prev = np.random.randn(3, 10), np.random.randn(5, 10), np.random.randn(5, 10)
    p = lstm_params()
    a_next, c_next, yt, cache = tb.lstm_cell_forward(xt, a_prev, c_prev, p)
    close(a_next[4], [-0.66408471, 0.0036921, 0.02088357, 0.22834167, -0.85575339, 0.00138482,
                      0.76566531, 0.34631421, -0.00215674, 0.43827275])
    close(c_next[2], [0.63267805, 1.00570849, 0.35504474, 0.20690913, -1.64566718, 0.11832942,
                      0.76449811, -0.0981561, -0.74348425, -0.26810932])
    close(yt[1], [0.79913913, 0.15986619, 0.22412122, 0.15606108, 0.97057211, 0.31146381,
                  0.00943007, 0.12666353, 0.39380172, 0.07828381])
    close(cache[1][3], [-0.16263996, 1.03729328, 0.72938082, -0.54101719, 0.02752074, -0.30821874,
                        0.07651101, -1.03752894, 1.41219977, -0.37647422])
    assert len(cache) == 10 and cache[2] is a_prev and cache[3] is c_prev and cache[8] is xt
    assert cache[9] is p


def test_lstm_cell_forward_course_2021_values():
    np.random.seed(212)
    x, a0, c0 = np.random.randn(4, 8), np.random.randn(7, 8), np.random.randn(7, 8)
    p = lstm_params(n_a=7, n_x=4, n_y=3)
    a_next, c_next, y_pred, cache = tb.lstm_cell_forward(x, a0, c0, p)
    ft, it, cct, ot = cache[4:8]
    close(ft[0, 0:2], [0.32969833, 0.0574555])
    close(it[0, 0:2], [0.0036446, 0.9806943])
    close(cct[0, 0:2], [0.99903873, 0.57509956])
    close(c_next[0, 0:2], [0.1352798, 0.39884899])
    close(ot[0, 0:2], [0.7477249, 0.71588751])
    close(a_next[0, 0:2], [0.10053951, 0.27129536])
    np.testing.assert_allclose(y_pred[1], [0.417098, 0.449528, 0.223159, 0.278376, 0.68453, 0.419221,
                                           0.564025, 0.538475], atol=1e-5)


def test_lstm_forward_course_values():
    np.random.seed(1)
    x, a0 = np.random.randn(3, 10, 7), np.random.randn(5, 10)
    p = lstm_params()
    a, y, c, caches = tb.lstm_forward(x, a0, p)
    close(a[4][3][6], 0.17211776753291672)
    close(y[1][4][3], 0.9508734618501101)
    close(c[1][2][1], -0.8555449167181981)
    close(caches[1][1][1], [0.82797464, 0.23009474, 0.76201118, -0.22232814, -0.20075807,
                            0.18656139, 0.41005165])
    assert a.shape == (5, 10, 7) and y.shape == (2, 10, 7) and len(caches) == 2


def test_lstm_forward_course_2021_values():
    np.random.seed(45)
    x, a0 = np.random.randn(4, 13, 16), np.random.randn(3, 13)
    p = lstm_params(n_a=3, n_x=4, n_y=2)
    a, y, c, caches = tb.lstm_forward(x, a0, p)
    close(a[2, 1, 4:6], [-0.01606022, 0.0243569])
    close(c[2, 1, 4:6], [-0.02753855, 0.05668358])
    close(y[1, 1, 4:6], [0.70444592, 0.70648935])
    assert len(caches[0]) == 16 and len(caches[0][0]) == 10


# ----------------------------------------------------------------------- step by step: backward

def test_rnn_cell_backward_course_values():
    np.random.seed(1)
    xt, a_prev = np.random.randn(3, 10), np.random.randn(5, 10)
    p = rnn_params(order=("Wax", "Waa"))
    a_next, yt, cache = tb.rnn_cell_forward(xt, a_prev, p)
    da_next = np.random.randn(5, 10)
    g = tb.rnn_cell_backward(da_next, cache)
    close(g["dxt"][1][2], -1.3872130506020928)
    close(g["da_prev"][2][3], -0.152399493774)
    close(g["dWax"][3][1], 0.410772824935)
    close(g["dWaa"][1][2], 1.15034506685)
    close(g["dba"][4], [0.20023491])
    assert [g[k].shape for k in ("dxt", "da_prev", "dWax", "dWaa", "dba")] == \
        [(3, 10), (5, 10), (5, 3), (5, 5), (5, 1)]


def test_rnn_backward_course_values():
    np.random.seed(1)
    x, a0 = np.random.randn(3, 10, 4), np.random.randn(5, 10)
    p = rnn_params(order=("Wax", "Waa"))
    a, y, caches = tb.rnn_forward(x, a0, p)
    da = np.random.randn(5, 10, 4)
    g = tb.rnn_backward(da, caches)
    close(g["dx"][1][2], [-2.07101689, -0.59255627, 0.02466855, 0.01483317])
    close(g["da0"][2][3], -0.314942375127)
    close(g["dWax"][3][1], 11.2641044965)
    close(g["dWaa"][1][2], 2.30333312658)
    close(g["dba"][4], [-0.74747722])
    assert g["dx"].shape == (3, 10, 4) and g["da0"].shape == (5, 10)


def test_lstm_cell_backward_course_values():
    np.random.seed(1)
    xt, a_prev, c_prev = np.random.randn(3, 10), np.random.randn(5, 10), np.random.randn(5, 10)
    p = lstm_params()
    a_next, c_next, yt, cache = tb.lstm_cell_forward(xt, a_prev, c_prev, p)
    da_next, dc_next = np.random.randn(5, 10), np.random.randn(5, 10)
    g = tb.lstm_cell_backward(da_next, dc_next, cache)
    close(g["dxt"][1][2], 3.23055911511)
    close(g["da_prev"][2][3], -0.0639621419711)
    close(g["dc_prev"][2][3], 0.797522038797)
    close(g["dWf"][3][1], -0.147954838164)
    close(g["dWi"][1][2], 1.05749805523)
    close(g["dWc"][3][1], 2.30456216369)
    close(g["dWo"][1][2], 0.331311595289)
    close(g["dbf"][4], [0.18864637])
    close(g["dbi"][4], [-0.40142491])
    close(g["dbc"][4], [0.25587763])
    close(g["dbo"][4], [0.13893342])
    assert set(g) == {"dxt", "da_prev", "dc_prev", "dWf", "dbf", "dWi", "dbi", "dWc", "dbc", "dWo", "dbo"}
    assert g["dWf"].shape == (5, 8) and g["dbf"].shape == (5, 1) and g["dxt"].shape == (3, 10)


def test_lstm_backward_course_values():
    # The current course values (the oldest notebook's table came from a reference that did not
    # propagate gradients between steps). As in the course, da has 4 steps while x has 7.
    np.random.seed(1)
    x, a0 = np.random.randn(3, 10, 7), np.random.randn(5, 10)
    p = lstm_params(with_output=False)
    p["Wy"], p["by"] = np.zeros((2, 5)), np.zeros((2, 1))
    a, y, c, caches = tb.lstm_forward(x, a0, p)
    da = np.random.randn(5, 10, 4)
    g = tb.lstm_backward(da, caches)
    close(g["dx"][1][2], [0.00218254, 0.28205375, -0.48292508, -0.43281115])
    close(g["da0"][2][3], 0.3127703102572602)
    close(g["dWf"][3][1], -0.0809802310938)
    close(g["dWi"][1][2], 0.40512433093)
    close(g["dWc"][3][1], -0.0793746735512)
    close(g["dWo"][1][2], 0.038948775763)
    close(g["dbf"][4], [-0.15745657])
    close(g["dbi"][4], [-0.50848333])
    close(g["dbc"][4], [-0.42510818])
    close(g["dbo"][4], [-0.17958196])
    assert g["dx"].shape == (3, 10, 4) and g["da0"].shape == (5, 10)


# ------------------------------------------------------------------ the character model (dinos)

def clip_inputs():
    np.random.seed(3)
    return {"dWax": np.random.randn(5, 3) * 10, "dWaa": np.random.randn(5, 5) * 10,
            "dWya": np.random.randn(2, 5) * 10, "db": np.random.randn(5, 1) * 10,
            "dby": np.random.randn(2, 1) * 10}


@pytest.mark.parametrize("max_value, expected", [
    (10, (10.0, -10.0, 0.2971381536101662, [10.0], [8.45833407])),
    (5, (5.0, -5.0, 0.2971381536101662, [5.0], [5.0])),
])
def test_clip_course_values(max_value, expected):
    grads = clip_inputs()
    original = {k: v.copy() for k, v in grads.items()}
    grads["da_next"] = np.ones((5, 1))
    out = tb.clip(grads, max_value)
    assert set(out) == {"dWaa", "dWax", "dWya", "db", "dby"}
    got = (out["dWaa"][1][2], out["dWax"][3][1], out["dWya"][1][2], out["db"][4], out["dby"][1])
    for g, e in zip(got, expected):
        close(g, e)
    for k, v in out.items():
        assert np.all(np.abs(v) <= max_value)
        inside = np.abs(original[k]) <= max_value
        np.testing.assert_array_equal(v[inside], original[k][inside])
        np.testing.assert_array_equal(grads[k], original[k])  # the caller's arrays are untouched


def sample_params(seed):
    np.random.seed(seed)
    n_a = 100
    return {"Wax": np.random.randn(n_a, 27), "Waa": np.random.randn(n_a, n_a),
            "Wya": np.random.randn(27, n_a), "b": np.random.randn(n_a, 1), "by": np.random.randn(27, 1)}


def test_sample_course_2021_values():
    indices = tb.sample(sample_params(24), CHAR_TO_IX, 0)
    assert [int(i) for i in indices] == [23, 16, 26, 26, 24, 3, 21, 1, 7, 24, 15, 3, 25, 20, 6, 13, 10,
                                          8, 20, 12, 2, 0]


def test_sample_course_values_and_length_cap():
    # The oldest test: chaotic weights, so only the first 43 draws are platform-independent; the
    # 50-character cap then appends a newline (51 indices).
    indices = tb.sample(sample_params(2), CHAR_TO_IX, 0)
    assert [int(i) for i in indices[:43]] == [12, 17, 24, 14, 13, 9, 10, 22, 24, 6, 13, 11, 12, 6, 21, 15,
                                              21, 14, 3, 2, 1, 21, 18, 24, 7, 25, 6, 25, 18, 10, 16, 2,
                                              3, 8, 15, 12, 11, 7, 1, 12, 10, 2, 7]
    assert len(indices) == 51 and indices[-1] == 0


def test_optimize_course_values():
    np.random.seed(1)
    a_prev = np.random.randn(100, 1)
    p = {"Wax": np.random.randn(100, 27), "Waa": np.random.randn(100, 100),
         "Wya": np.random.randn(27, 100), "b": np.random.randn(100, 1), "by": np.random.randn(27, 1)}
    Wya_before = p["Wya"].copy()
    loss, g, a_last = tb.optimize([12, 3, 5, 11, 22, 3], [4, 14, 11, 22, 25, 26], a_prev, p, 0.01)
    close(loss, 126.50397572165383)
    close(g["dWaa"][1][2], 0.19470931534713587)
    assert np.argmax(g["dWax"]) == 93
    close(g["dWya"][1][2], -0.007773876032002162)
    close(g["db"][4], [-0.06809825])
    close(g["dby"][1], [0.01538192])
    close(a_last[4], [-1.0])
    assert all(np.all(np.abs(v) <= 5) for v in g.values())
    assert not np.array_equal(p["Wya"], Wya_before)  # updated in place


def test_helpers():
    close(tb.get_initial_loss(27, 7), 23.070858062030304)
    assert tb.smooth(10.0, 20.0) == pytest.approx(10.01)
    p = tb.initialize_parameters(50, 27, 27)
    assert p["Wax"].shape == (50, 27) and p["b"].shape == (50, 1) and not p["b"].any()
    np.random.seed(1)
    np.testing.assert_array_equal(p["Wax"], np.random.randn(50, 27) * 0.01)
    s = tb.softmax(np.array([[1.0, 2.0], [3.0, 10.0]]))
    close(s, [[1 / (1 + np.exp(2)), 1 / (1 + np.exp(8))], [1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-8))]])
    close(tb.sigmoid(np.array([0.0])), [0.5])


COURSE_LOG = """Iteration: 0, Loss: 23.087336

Nkzxwtdmfqoeyhsqwasjkjvu
Kneb
Kzxwtdmfqoeyhsqwasjkjvu
Neb
Zxwtdmfqoeyhsqwasjkjvu
Eb
Xwtdmfqoeyhsqwasjkjvu


Iteration: 2000, Loss: 27.884160

Liusskeomnolxeros
Hmdaairus
Hytroligoraurus
Lecalosapaus
Xusicikoraurus
Abalpsamantisaurus
Tpraneronxeros


"""


@pytest.mark.slow
def test_model_reproduces_the_course_run():
    """On the course's own dinos.txt, model() prints the notebook's first two reports exactly."""
    data = shared_file("dinos.txt").read_text().lower()
    vocab = Vocab.from_text(data)
    assert vocab.chars == tuple(CHARS)
    out = io.StringIO()
    with redirect_stdout(out):
        params = tb.model(data, vocab.ix_to_char, vocab.char_to_ix, num_iterations=2001)
    assert out.getvalue() == COURSE_LOG
    assert set(params) == {"Wax", "Waa", "Wya", "b", "by"}


def test_model_on_a_list_of_lines_matches_text():
    text = "Abc\nBcd\ncab\nDab\n"
    chars = "\nabcd"
    c2i, i2c = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    runs = []
    for data in (text, text.split("\n")[:-1]):
        out = io.StringIO()
        with redirect_stdout(out):
            params = tb.model(data, i2c, c2i, num_iterations=2001, n_a=8, dino_names=2, vocab_size=5)
        runs.append((out.getvalue(), params))
    assert runs[0][0] == runs[1][0]
    assert re.findall(r"Iteration: (\d+), Loss: [\d.]+", runs[0][0]) == ["0", "2000"]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])


# --------------------------------------------------------------- cross-checks with the engine

def test_rnn_textbook_matches_engine():
    np.random.seed(7)
    n_x, m, T, n_a = 4, 6, 5, 8
    x, a0 = np.random.randn(n_x, m, T), np.random.randn(n_a, m)
    p = {"Wax": np.random.randn(n_a, n_x), "Waa": np.random.randn(n_a, n_a) * 0.5,
         "Wya": np.random.randn(3, n_a), "ba": np.random.randn(n_a, 1), "by": np.random.randn(3, 1)}
    a, _, caches = tb.rnn_forward(x, a0, p)
    da = np.random.randn(n_a, m, T)
    g = tb.rnn_backward(da, caches)

    cell, ep = RNN(), tb.to_engine(p)
    (hs, (hT,)), cache = cell.forward(x.transpose(2, 1, 0), (a0.T,), ep)
    np.testing.assert_allclose(hs.transpose(2, 1, 0), a, rtol=1e-12, atol=1e-12)
    eg, (dx, (dh0,)) = cell.backward(da.transpose(2, 1, 0), cache)
    back = tb.from_engine(eg, prefix="d")
    assert set(back) == {"dWax", "dWaa", "dba"}
    for k, v in back.items():
        np.testing.assert_allclose(v, g[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(dx.transpose(2, 1, 0), g["dx"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0.T, g["da0"], rtol=1e-10, atol=1e-12)


def test_lstm_textbook_matches_engine():
    np.random.seed(8)
    n_x, m, T, n_a = 4, 6, 5, 7
    x, a0 = np.random.randn(n_x, m, T), np.random.randn(n_a, m)
    p = lstm_params(n_a=n_a, n_x=n_x, n_y=3)
    a, _, c, caches = tb.lstm_forward(x, a0, p)
    da = np.random.randn(n_a, m, T)
    g = tb.lstm_backward(da, caches)

    cell, ep = LSTM(), tb.to_engine(p)
    (hs, (hT, cT)), cache = cell.forward(x.transpose(2, 1, 0), (a0.T, np.zeros((m, n_a))), ep)
    np.testing.assert_allclose(hs.transpose(2, 1, 0), a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cT.T, c[:, :, -1], rtol=1e-12, atol=1e-12)
    eg, (dx, (dh0, dc0)) = cell.backward(da.transpose(2, 1, 0), cache)
    back = tb.from_engine(eg, prefix="d")
    assert set(back) == {"dW" + gate for gate in "fico"} | {"db" + gate for gate in "fico"}
    for k, v in back.items():
        np.testing.assert_allclose(v, g[k], rtol=1e-10, atol=1e-12, err_msg=k)
    np.testing.assert_allclose(dx.transpose(2, 1, 0), g["dx"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dh0.T, g["da0"], rtol=1e-10, atol=1e-12)


def test_textbook_sample_matches_engine_step():
    """The dinosaur RNN's step is the engine's RNN step on the same weights (course bias name ``b``)."""
    p = sample_params(5)
    ep = tb.to_engine(p)
    x = np.zeros((27, 1)); x[3] = 1
    a_prev = np.random.randn(100, 1)
    a, _ = tb.rnn_step_forward(p, a_prev, x)
    (h,) = RNN().step(np.array([3]), (a_prev.T,), ep)
    np.testing.assert_allclose(h.T, a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "char-rnn", "lstm"])
def test_bridge_to_the_engine_and_back_is_the_identity(cell):
    np.random.seed(3)
    params = lstm_params() if cell == "lstm" else rnn_params()
    bias = "b" if cell == "char-rnn" else "ba"
    if cell == "char-rnn":   # the character model names its hidden bias b
        params["b"] = params.pop("ba")
    engine = tb.to_engine(params)
    assert set(engine) == {"Wx", "Wh", "b", "Wy", "by"} and engine["b"].ndim == 1
    back = tb.from_engine(engine, rnn_bias=bias)
    assert set(back) == set(params)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k], err_msg=k)
    with pytest.raises(ValueError, match="no cell with 3 gates"):
        tb.from_engine({"Wx": np.zeros((2, 6)), "Wh": np.zeros((2, 6)), "b": np.zeros(6)})
