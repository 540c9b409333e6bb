"""Seeing inside the network (rnnlab.inspect): each measure against a known answer, the gradient flow
against finite differences, the surprise against the training loop's evaluation, the command as a user
runs it (files, bad input), and the HTML page in headless Chromium."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CHROMIUM, launch_chromium, require, require_module
from rnnlab.data import TextDataset, Vocab, load_dataset
from rnnlab.inspect import (gate_saturation, gradient_flow, prepare_text, rank_units, read, saturation,
                            surprise, text_properties)
from rnnlab.inspect.cells import Unit, correlations
from rnnlab.model import CharLM
from rnnlab.train import evaluate
from test_cli import cli, run_dir

CELLS = ("rnn", "lstm", "gru")


# ------------------------------------------------------------------------------------- gradient flow
@pytest.mark.parametrize("rho", [0.8, 0.97, 1.05])
def test_linear_recurrence_gradient_decays_as_rho_to_the_k(rho):
    """RNN with Wx = 0, b = 0, h0 = 0: h stays exactly 0, tanh' = 1, so g_{k} = g_0 (Whᵀ)^k and with
    Wh = ρ·Q (Q orthogonal) every window's ‖g_k‖ is exactly ρ^k ‖g_0‖."""
    rng = np.random.default_rng(3)
    H, V = 12, 7
    lm = CharLM(V, "rnn", H, dtype=np.float64)
    params = lm.init_params(rng)
    Q, _ = np.linalg.qr(rng.standard_normal((H, H)))
    params["l0.Wx"][:] = 0
    params["l0.b"][:] = 0
    params["l0.Wh"] = rho * Q
    flow = gradient_flow(lm, params, rng.integers(0, V, 400), max_distance=60, windows=40)
    assert flow.windows == 40 and flow.mean.shape == (1, 61)
    np.testing.assert_allclose(flow.relative(), rho ** np.arange(61), rtol=1e-12)
    for q in (flow.q10, flow.q50, flow.q90):   # each window decays alike, so every quantile does
        np.testing.assert_allclose(q[0] / q[0][0], rho ** np.arange(61), rtol=1e-12)


def _last_loss_with_h_perturbed(lm, params, x, y_last, layer, s, delta):
    """loss at the last step of one window x (T,) when h of ``layer`` after step ``s`` is moved by
    ``delta`` (H,), its recurrence and the layers above seeing the moved value; the rest of the state
    (c of an LSTM) is left as it is."""
    T, H = len(x), lm.hidden_size
    inp = x[:, None]
    for k in range(lm.num_layers):
        lp = lm.layer_params(params, k)
        zero = lm.cell.zero_state(1, H, lm.dtype)
        if k != layer:
            (hs, _), _ = lm.cell.forward(inp, zero, lp)
            inp = hs.copy()
            continue
        (before, state), _ = lm.cell.forward(inp[:s + 1], zero, lp)
        before = before.copy()
        before[s, 0] += delta
        state = (state[0] + delta,) + tuple(a.copy() for a in state[1:])
        after = lm.cell.forward(inp[s + 1:], state, lp)[0][0].copy() if s + 1 < T else before[:0]
        inp = np.concatenate([before, after])
    z = inp[-1, 0] @ params["Wy"] + params["by"]
    return float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[y_last])


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_flow_matches_finite_differences_in_a_stack(cell):
    """Each layer of a 2-layer stack: the measured ‖∂loss_{T-1}/∂h_{T-1-k}‖ equals the norm of the
    gradient obtained by moving h after step T-1-k in each direction (central differences, float64)."""
    rng = np.random.default_rng(5)
    V, H, K = 6, 5, 7
    lm = CharLM(V, cell, H, num_layers=2, dtype=np.float64)
    params = lm.init_params(rng)
    for name in params:   # larger weights than at initialisation: the gates do not sit at 0.5
        params[name] = params[name] * 2.5
    ids = rng.integers(0, V, K + 2)        # exactly one window of K + 1 inputs and its last target
    flow = gradient_flow(lm, params, ids, max_distance=K, windows=10)
    assert flow.windows == 1
    x, y_last = ids[:K + 1], ids[K + 1]
    eps = 1e-6
    for layer in range(2):
        for k in range(K + 1):
            s = K - k
            g = np.empty(H)
            for j in range(H):
                d = np.zeros(H)
                d[j] = eps
                g[j] = (_last_loss_with_h_perturbed(lm, params, x, y_last, layer, s, d)
                        - _last_loss_with_h_perturbed(lm, params, x, y_last, layer, s, -d)) / (2 * eps)
            assert flow.mean[layer, k] == pytest.approx(np.linalg.norm(g), rel=1e-6, abs=1e-12), (layer, k)


def test_gradient_flow_refuses_a_text_shorter_than_a_window():
    lm = CharLM(5, "gru", 4)
    with pytest.raises(ValueError, match="too few for a window"):
        gradient_flow(lm, lm.init_params(np.random.default_rng(0)), np.zeros(11, int), max_distance=10)


# ---------------------------------------------------------------------------------------- cells
def test_text_properties_by_hand():
    text = 'ab "c(d e)"\nxy z\n'
    p = text_properties(text)
    #                       a  b  ␣  "  c  (  d  ␣  e  )  "  ↵  x  y  ␣  z  ↵
    assert p["inside quotes"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert p["inside brackets"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert p["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 0]
    assert p["position in word"].tolist() == [1, 2, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 2, 0, 1, 0]
    assert p["end of word"].tolist() == [0, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0]
    play = "KING HENRY:\nGo. Now!\nA"
    p = text_properties(play)
    #                              K  I  N  G  ␣  H  E  N  R  Y  :  ↵  G  o  .  ␣  N  o  w  !  ↵  A
    assert p["capitals line"].tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert p["position in sentence"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 1, 2, 3,
                                                  4, 0, 1, 2]


def test_correlations_known_values():
    prop = np.arange(10.0)
    acts = np.stack([3 * prop - 2, -prop, np.ones(10), np.cos(prop)], axis=1)
    r = correlations(acts, prop)
    np.testing.assert_allclose(r[:3], [1, -1, 0], atol=1e-12)
    assert r[3] == pytest.approx(np.corrcoef(np.cos(prop), prop)[0, 1])
    assert np.isnan(correlations(acts, np.ones(10))).all()


SPEECH = ("Before we proceed any further, hear me speak.\nSpeak, speak.\n"
          "You are all resolved rather to die than to famish?\nResolved. resolved.\n"
          "First, you know Caius Marcius is chief enemy to the people.\nWe know't, we know't.\n"
          "Let us kill him, and we'll have corn at our own price.\nIs't a verdict?\n")


def counting_lstm(vocab, H=6, seed=0, step=0.02):
    """An LSTM (float64) whose unit 0 counts the characters since the last end of line: its forget
    and input gates are open (σ(30)) after any character but the end of line, shut (σ(−30)) after it,
    its candidate is tanh(step): c_t = c_{t-1} + tanh(step), reset to 0 by each end of line. The
    other units are random."""
    lm = CharLM(len(vocab), "lstm", H, dtype=np.float64)
    params = lm.init_params(np.random.default_rng(seed))
    Wx, Wh, b = params["l0.Wx"], params["l0.Wh"], params["l0.b"]
    cols = {g: j * H for j, g in enumerate("ifog")}      # unit 0 of each gate block
    for c in cols.values():
        Wh[:, c] = 0
        b[c] = 0
    eol = np.array([ch == "\n" for ch in vocab.chars])
    Wx[:, cols["i"]] = Wx[:, cols["f"]] = np.where(eol, -30.0, 30.0)
    Wx[:, cols["o"]] = 30.0
    Wx[:, cols["g"]] = step
    return lm, params


def test_a_unit_counting_since_the_last_newline_is_ranked_first_for_position_in_line():
    vocab = Vocab.from_text(SPEECH)
    lm, params = counting_lstm(vocab)
    reading = read(lm, params, vocab, prepare_text(SPEECH, vocab, lines=False))
    count = text_properties(reading.read)["position in line"]
    c0 = reading.layers[0]["c"][:, 0]
    np.testing.assert_allclose(c0, np.tanh(0.02) * count, atol=1e-10)   # it counts, exactly
    ranking = rank_units(reading, top=3)
    best = ranking["position in line"][0]
    assert (best.layer, best.kind, best.unit) == (0, "c", 0) and best.r == pytest.approx(1, abs=1e-9)
    everyone = rank_units(reading, top=2 * lm.hidden_size)["position in line"]
    assert (everyone[1].kind, everyone[1].unit) == ("h", 0)   # h = tanh(c), monotone in the count: next
    assert max(abs(u.r) for u in everyone if u.unit != 0) < 0.9        # the random units do not count
    assert "inside quotes" not in ranking           # no quote in the text: the property is left out


def test_ranking_is_sorted_by_absolute_r_and_names_units():
    vocab = Vocab.from_text(SPEECH)
    lm, params = counting_lstm(vocab, H=8, seed=4)
    ranking = rank_units(read(lm, params, vocab, prepare_text(SPEECH, vocab, lines=False)), top=5)
    for units in ranking.values():
        assert len(units) == 5
        assert [abs(u.r) for u in units] == sorted((abs(u.r) for u in units), reverse=True)
    assert Unit(1, "c", 7, 0.5).name == "layer 1 c[7]"


# ---------------------------------------------------------------------------------------- gates
def test_saturation_thresholds_are_strict():
    values = np.array([[0.05, 0.95], [0.1, 0.9], [0.5, 0.91], [0.09, 0.2]])
    left, right = saturation(values)
    np.testing.assert_allclose(left, [0.5, 0.0])     # 0.1 itself is not below 0.1
    np.testing.assert_allclose(right, [0.0, 0.5])    # 0.9 itself is not above 0.9


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_saturation_of_a_cell_with_planted_gate_values(cell):
    """No recurrence (Wh = 0), zero biases, and each gate unit's input weights planted per character:
    the gate value after reading a character is σ(weight), so the saturated fractions are counts of
    characters in the text."""
    text = "aaab cbbcaab\nccab acaa\n"
    vocab = Vocab.from_text(text)
    H = 3
    lm = CharLM(len(vocab), cell, H, dtype=np.float64)
    params = lm.init_params(np.random.default_rng(0))
    gates = {"lstm": "ifo", "gru": "ru"}[cell]
    params["l0.Wh"][:] = 0
    params["l0.b"][:] = 0
    plant = {"a": 5.0, "b": -5.0, "c": 2.0}           # σ: 0.993 (open), 0.0067 (shut), 0.88 (neither)
    Wx = params["l0.Wx"]
    for j, _gate in enumerate(gates):
        for unit in range(H):
            col = j * H + unit
            Wx[:, col] = 0
            for ch, w in plant.items():   # unit u of gate j: the plant rotated, so the units differ
                Wx[vocab.chars.index(ch), col] = w * (-1) ** (unit + j)
    reading = read(lm, params, vocab, prepare_text(text, vocab, lines=False))
    sat = gate_saturation(reading)
    read_chars = np.array(list(reading.read))
    n = len(read_chars)
    for j, g in enumerate(gates):
        left, right = sat[0][g]
        for unit in range(H):
            sign = (-1) ** (unit + j)
            opens = "a" if sign > 0 else "b"
            shuts = "b" if sign > 0 else "a"
            assert right[unit] == pytest.approx(np.sum(read_chars == opens) / n)
            assert left[unit] == pytest.approx(np.sum(read_chars == shuts) / n)
    rnn = CharLM(len(vocab), "rnn", H)
    with pytest.raises(ValueError, match="no gates"):
        gate_saturation(read(rnn, rnn.init_params(np.random.default_rng(0)), vocab, text))


# -------------------------------------------------------------------------------------- surprise
@pytest.mark.parametrize("cell", CELLS)
def test_surprise_over_a_split_is_the_evaluated_loss(cell):
    """Names read one line at a time from a zero state, running text as one stream: the mean surprise
    over the whole validation split is the training loop's validation loss."""
    names = load_dataset("lines", lowercase=True, val_fraction=0.1, seed=0)
    lm = CharLM(len(names.vocab), cell, 16, dtype=np.float64)
    params = lm.init_params(np.random.default_rng(1))
    text = "\n" + "\n".join(names.lines["val"]) + "\n"
    s = surprise(read(lm, params, names.vocab, prepare_text(text, names.vocab, lines=True), lines=True))
    assert s.mean == pytest.approx(evaluate(lm, params, names, "val"), rel=1e-12)

    play = TextDataset(SPEECH * 8, val_fraction=0.3, seq_len=17)
    lm = CharLM(len(play.vocab), cell, 16, dtype=np.float64)
    params = lm.init_params(np.random.default_rng(2))
    text = play.vocab.decode(play.ids["val"])
    s = surprise(read(lm, params, play.vocab, prepare_text(text, play.vocab, lines=False)))
    assert s.mean == pytest.approx(evaluate(lm, params, play, "val", batch_size=1), rel=1e-12)
    # the guesses: most likely first, the top one the argmax, probabilities of a distribution
    assert (np.diff(s.probs, axis=1) <= 0).all() and (s.probs.sum(axis=1) <= 1 + 1e-12).all()
    reading = read(lm, params, play.vocab, prepare_text(text, play.vocab, lines=False))
    np.testing.assert_array_equal(s.guesses[:, 0], reading.logits.argmax(axis=1))
    hit = s.guesses[:, 0] == reading.y
    np.testing.assert_allclose(np.exp(-s.loss[hit]), s.probs[hit, 0])


def test_prepare_text_refuses_bad_text():
    from rnnlab.data import DataError
    vocab = Vocab.from_text("abc")
    with pytest.raises(DataError, match="empty"):
        prepare_text("", vocab, lines=False)
    with pytest.raises(DataError, match=r"outside the model's vocabulary: 'XZ'"):
        prepare_text("abZcX", vocab, lines=False)
    with pytest.raises(DataError, match="nothing to predict"):
        prepare_text("a", vocab, lines=False)
    assert prepare_text("a", vocab, lines=True) == "\na"      # a name: its start token added


# ------------------------------------------------------------------------------- the command line
INSPECT = "rnnlab.inspect"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small LSTM on the built-in names and a GRU on running text, trained by the command line."""
    cwd = tmp_path_factory.mktemp("inspect")
    small = ["tracking=none", "steps=40", "eval_every=20", "sample_every=0", "report_samples=0",
             "log_every=20", "checkpoint_every=20", "cell.hidden_size=16"]
    out = cli(["cell=lstm", *small], cwd)
    assert out.returncode == 0, out.stderr
    names = run_dir(cwd) / "checkpoints" / "best.npz"
    (cwd / "play.txt").write_text(SPEECH * 12)
    out = cli(["cell=rnn", "data=text", f"data.path={cwd / 'play.txt'}", "data.seq_len=20", "batch_size=4",
               *small], cwd)
    assert out.returncode == 0, out.stderr
    return cwd, names, run_dir(cwd) / "checkpoints" / "best.npz"


@pytest.mark.slow
def test_inspect_writes_every_view(trained):
    cwd, names, _ = trained
    out = cli([f"checkpoint={names}", "chars=100000", "out=look"], cwd, module=INSPECT)
    assert out.returncode == 0, out.stderr
    look = cwd / "look"
    summary = json.loads((look / "summary.json").read_text())
    for name in summary["files"]:
        data = (look / name).read_bytes()
        assert data, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(summary["files"]) >= {"surprise.html", "surprise.png", "cells.html", "cells.png",
                                     "cells_heatmap.png", "units.csv", "gates.png", "gates.csv",
                                     "gradient_flow.png", "gradient_flow.csv"}
    from rnnlab.checkpoint import load
    best = load(names).meta["best_val_nll"]   # the whole validation split, read as in training
    assert summary["surprise"]["mean_nats"] == pytest.approx(best, rel=1e-5)
    assert f"surprise: {best:.4f} nats/char" in out.stdout
    assert "position in line" in summary["cells"] and len(summary["cells"]["position in line"]) == 5
    assert summary["gradient_flow"]["windows"] == 256 and "cells: position in line" in out.stdout
    page = (look / "surprise.html").read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


@pytest.mark.slow
def test_inspect_a_given_text_and_a_plain_rnn(trained):
    cwd, _, play = trained
    out = cli([f"checkpoint={play}", 'text="Speak, speak. You are all resolved"', "out=t",
               "max_distance=30"], cwd, module=INSPECT)
    assert out.returncode == 0, out.stderr
    summary = json.loads((cwd / "t" / "summary.json").read_text())
    assert summary["characters"] == len("Speak, speak. You are all resolved") - 1
    assert "gates" not in summary and "gates.png" not in summary["files"]   # an RNN has none: skipped
    assert summary["gradient_flow"]["windows"] == 256    # measured on the held-out split, not the text
    html = (cwd / "t" / "surprise.html").read_text()
    assert 'data-tip="p: ' in html and "guesses:" in html
    only = cli([f"checkpoint={play}", "views=[cells]", "out=c", "chars=300"], cwd, module=INSPECT)
    assert only.returncode == 0, only.stderr
    assert sorted(p.name for p in (cwd / "c").iterdir()) == ["cells.html", "cells.png", "cells_heatmap.png",
                                                              "summary.json", "units.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (['text="Tyrannosaurus REX!"'], "has characters outside the model's vocabulary: ' !ERTX'"),
    (['text=""'], "text is empty"),
    (["views=[gates]", "checkpoint_of=play"], "the gates view needs a gated cell"),
    (["views=[surprise,colours]"], "views: unknown view 'colours'"),
    (["max_distance=5000", "views=[gradient_flow]"], "lower max_distance"),
    (["split=tset"], "split must be train, val or test"),
    (["chars=1"], "chars must be >= 2"),
    (["text_file=nowhere.txt"], "data file not found"),
    (["colour=red"], "Unknown key 'colour'"),
    (["checkpoint_of=npz"], "is not an rnnlab checkpoint"),
    (["checkpoint_of=text"], "is not an rnnlab checkpoint (not an .npz archive)"),
    (["checkpoint_of=missing"], "checkpoint not found"),
    (["run=0123abc", "checkpoint_of=none"], "run=0123abc: there is no MLflow store at sqlite:///"),
])
def test_bad_input_is_a_clear_error(trained, args, message):
    cwd, names, play = trained
    np.savez(cwd / "other.npz", weights=np.ones(3))           # a NumPy archive of another kind
    (cwd / "notes.txt").write_text("not a checkpoint")
    which = dict(a.split("=") for a in args if a.startswith("checkpoint_of=")).get("checkpoint_of", "names")
    ckpt = {"names": names, "play": play, "npz": cwd / "other.npz", "text": cwd / "notes.txt",
            "missing": cwd / "gone.npz", "none": None}[which]
    args = [a for a in args if not a.startswith("checkpoint_of=")]
    args += [f"checkpoint={ckpt}"] if ckpt else []
    out = cli([*args, "out=bad"], cwd, module=INSPECT)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("rnnlab: error: ") and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_flow_command_draws_several_models_on_one_figure(trained):
    cwd, names, play = trained
    out = cli([f"checkpoints={names},{play}", "max_distance=20", "windows=16", "plot=flow.png", "csv=flow.csv"],
              cwd, module="rnnlab.inspect.flow")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model | k=0 | k=1 | k=5 | k=10 |") and len(rows) == 2 * (1 + 4)  # 2 trained,
    assert "median:" in out.stdout                                                      # 2 fresh; mean, median
    assert (cwd / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (cwd / "flow.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 * 21 and lines[0] == "model,layer,distance,mean,q10,q50,q90"
    bad = cli([f"checkpoints={names}", "max_distance=0"], cwd, module="rnnlab.inspect.flow")
    assert bad.returncode == 2 and "max_distance must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    none = cli(["windows=3"], cwd, module="rnnlab.inspect.flow")
    assert none.returncode == 2 and "give exactly one of experiment=" in none.stderr


def test_gradient_flow_preset_composes(tmp_path):
    import yaml
    job = yaml.safe_load(cli(["experiment=gradient_flow", "data.path=t.txt", "--cfg", "job"], tmp_path).stdout)
    assert job["data"]["kind"] == "text" and job["data"]["path"] == "t.txt" and job["cell"]["hidden_size"] == 128
    assert job["tracking"]["experiment"] == "gradient_flow"
    hydra = yaml.safe_load(cli(["experiment=gradient_flow", "--cfg", "hydra"], tmp_path).stdout)["hydra"]
    assert hydra["mode"] == "MULTIRUN" and hydra["sweeper"]["params"] == {"cell": "rnn,lstm,gru"}


@pytest.mark.slow
def test_a_tracked_run_logs_its_learning_curve_sample_tables_and_gradient_flow(tmp_path, seeded):
    out = cli(["cell=gru", "steps=30", "eval_every=10", "sample_every=15", "num_samples=3", "report_samples=7",
               "log_every=10", "cell.hidden_size=16", "gradient_flow_every=20"], seeded(tmp_path))
    assert out.returncode == 0, out.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    rid = run.info.run_id
    png = Path(client.download_artifacts(rid, "figures/learning_curve.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = json.loads(Path(client.download_artifacts(rid, "tables/samples.json", str(tmp_path))).read_text())
    assert samples["columns"] == ["step", "sample"] and [r[0] for r in samples["data"]] == [15, 15, 15, 30, 30, 30]
    periodic = Path(client.download_artifacts(rid, "samples/step_000030.txt", str(tmp_path))).read_text()
    assert [r[1] for r in samples["data"][3:]] == periodic.splitlines()
    report = json.loads(Path(client.download_artifacts(rid, "tables/report.json", str(tmp_path))).read_text())
    assert report["columns"] == ["sample", "length"] and len(report["data"]) == 7
    assert all(len(name) == length for name, length in report["data"])
    logged = json.loads(client.get_run(rid).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "tables/samples.json", "type": "table"} in logged   # what makes the UI show a table
    # gradient_flow_every=20: the flow at step 20 (the validation names joined are long enough for k=100)
    for k in (1, 10, 25, 50, 100):
        history = client.get_metric_history(rid, f"grad_flow_k{k}")
        assert [m.step for m in history] == [20] and history[0].value > 0, k
    bad = cli(["gradient_flow_every=15", "eval_every=10", "tracking=none"], tmp_path)
    assert bad.returncode == 2 and "gradient_flow_every must be 0 (off) or a multiple of eval_every=10" in bad.stderr


# --------------------------------------------------------------------------------- in a browser


@pytest.mark.slow
def test_surprise_page_shows_coloured_text_in_chromium(trained):
    sync_playwright = require_module("playwright.sync_api", "the `browser` extra (Playwright)").sync_playwright
    require(Path(CHROMIUM).exists(), "Debian's chromium (apt-get install chromium)")
    cwd, _, play = trained
    out = cli([f"checkpoint={play}", "views=[surprise]", "out=page", "chars=400"], cwd, module=INSPECT)
    assert out.returncode == 0, out.stderr
    page_file = cwd / "page" / "surprise.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_file.as_uri())
            spans = page.locator(".text span[data-tip]")
            n = spans.count()
            backgrounds = page.eval_on_selector_all(
                ".text span[data-tip]", "els => els.map(e => getComputedStyle(e).backgroundColor)")
            shown = page.inner_text(".text")
            spans.nth(5).hover()
            tip = page.evaluate("getComputedStyle(document.querySelectorAll('.text span[data-tip]')[5], "
                                "'::after').content")
            page.screenshot(path=str(cwd / "page" / "screenshot.png"))
            page.mouse.move(0, 0)
            shot = cwd / "page" / "text.png"
            page.locator(".text").screenshot(path=str(shot))
        finally:
            browser.close()
    assert requests == [page_file.as_uri()]                 # nothing fetched from anywhere else
    summary = json.loads((cwd / "page" / "summary.json").read_text())
    assert n == summary["characters"] > 300      # every character read (the split is short)
    assert "Speak, speak." in shown.replace("↵", "\n")
    assert len(set(backgrounds)) > 20                         # many colours, not one
    assert "nats" in tip and "guesses:" in tip
    import matplotlib.image
    img = matplotlib.image.imread(str(shot))[..., :3]
    warm = (img[..., 0] - img[..., 2] > 0.3).mean()            # yellow to red backgrounds on screen
    assert warm > 0.1, warm                                     # (0 for uncoloured text)


@pytest.mark.slow
def test_views_of_a_run_go_to_its_artifacts_and_show_in_the_mlflow_ui(tmp_path, shared_mlflow_server):
    """A run tracked by a real `mlflow server`, inspected by its id: the views are logged as the run's
    artifacts inspect/…, and the MLflow UI (headless Chromium) lists them and previews the page."""
    sync_playwright = require_module("playwright.sync_api", "the `browser` extra (Playwright)").sync_playwright
    require(Path(CHROMIUM).exists(), "Debian's chromium (apt-get install chromium)")
    track = [f"tracking.uri={shared_mlflow_server.uri}", "tracking.experiment=looks"]
    out = cli(["cell=gru", "steps=20", "eval_every=10", "sample_every=10", "num_samples=2", "report_samples=0",
               "log_every=10", "cell.hidden_size=16", *track], tmp_path)
    assert out.returncode == 0, out.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(shared_mlflow_server.uri)
    exp = client.get_experiment_by_name("looks")
    (run,) = client.search_runs([exp.experiment_id])
    look = cli([f"run={run.info.run_id}", "views=[surprise,gates]", "out=looked", *track], tmp_path,
               module=INSPECT)
    assert look.returncode == 0, look.stderr
    assert f"logged to MLflow run {run.info.run_id}: artifacts inspect/" in look.stdout
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "inspect")}
    assert logged == {f"inspect/{name}" for name in ("surprise.html", "surprise.png", "gates.png", "gates.csv",
                                                      "summary.json")}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{shared_mlflow_server.uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts",
                      timeout=60000)
            page.get_by_text("inspect", exact=True).first.click(timeout=60000)
            page.get_by_text("surprise.html", exact=True).first.click(timeout=30000)
            frame = page.frame_locator("iframe").first
            frame.locator(".text span[data-tip]").first.wait_for(timeout=30000)
            coloured = frame.locator(".text span[data-tip]").count()
            page.screenshot(path=str(tmp_path / "mlflow_artifacts.png"))
            body = page.inner_text("body")
            # the samples logged as a table are shown as one: a header per column, a row per sample
            page.get_by_text("tables", exact=True).first.click(timeout=30000)
            page.get_by_text("samples.json", exact=True).first.click(timeout=30000)
            page.get_by_role("columnheader", name="sample").first.wait_for(timeout=30000)
            headers = page.get_by_role("columnheader").all_inner_texts()
            rows = page.get_by_role("row").count()
            page.screenshot(path=str(tmp_path / "mlflow_table.png"))
        finally:
            browser.close()
    for name in ("surprise.png", "gates.png", "summary.json"):
        assert name in body, name
    assert coloured > 100
    assert [h.strip() for h in headers][:2] == ["step", "sample"] and rows >= 1 + 4, (headers, rows)


def test_the_measures_import_no_framework():
    """The measures are a library for notebooks: no Hydra, OmegaConf, MLflow or matplotlib on import."""
    import subprocess
    import sys
    code = ("import sys, rnnlab.inspect; bad = [m for m in ('hydra', 'omegaconf', 'mlflow', 'matplotlib') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_gradient_flow_monitor_reports_during_training():
    """The monitor measures the parameters being trained, at every ``every``-th step, and reports to
    its listeners what ``gradient_flow`` gives for them."""
    from rnnlab.clipping import NormClip
    from rnnlab.inspect.monitor import GradientFlowMonitor
    from rnnlab.optim import Adam
    from rnnlab.train import Callback, TrainOptions, train

    class Spy(Callback):
        def __init__(self):
            self.reports = {}

        def on_report(self, step, m):
            self.reports[step] = m

    play = TextDataset(SPEECH * 8, val_fraction=0.3, seq_len=17)
    lm = CharLM(len(play.vocab), "gru", 12, dtype=np.float64)
    params = lm.init_params(np.random.default_rng(0))
    spy = Spy()
    monitor = GradientFlowMonitor(lm, params, play.ids["val"], every=20, listeners=[spy], windows=16,
                                  distances=(1, 10, 30))
    train(lm, params, play, Adam(0.01), NormClip(5.0), TrainOptions(steps=40, batch_size=4, eval_every=10),
          callbacks=[monitor])
    assert sorted(spy.reports) == [19, 39] and set(spy.reports[39]) == {"grad_flow_k1", "grad_flow_k10",
                                                                         "grad_flow_k30"}
    flow = gradient_flow(lm, params, play.ids["val"], 30, 16, np.random.default_rng(0))  # the final params
    assert spy.reports[39]["grad_flow_k10"] == pytest.approx(flow.mean[-1, 10], rel=1e-12)
    assert spy.reports[19] != spy.reports[39]          # measured on the parameters of that step
    with pytest.raises(ValueError, match="every must be >= 1"):
        GradientFlowMonitor(lm, params, play.ids["val"], every=0)
