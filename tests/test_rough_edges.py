"""Rough edges a newcomer meets: empty names, and the files a checkout gathers."""

import subprocess

import numpy as np

from rnnlab.data import Vocab
from rnnlab.model import CharLM
from rnnlab.sampling import SoftmaxSampler, generate
from test_cli import ROOT, cli, run_dir


def eol_loving_model():
    """A model that ends a name at once with probability ~1 - 1e-4."""
    vocab = Vocab.from_text("abc\n")
    lm = CharLM(len(vocab), "rnn", 4)
    params = lm.init_params(np.random.default_rng(0))
    params["by"][0] = 10.0
    return lm, params, vocab


def test_a_name_has_at_least_min_len_characters():
    lm, params, vocab = eol_loving_model()
    rng = np.random.default_rng(0)
    free = generate(lm, params, vocab, SoftmaxSampler(1.0), rng, n=50, min_len=0)
    assert free.count("") >= 45                          # the model's own choice: empty names
    names = generate(lm, params, vocab, SoftmaxSampler(1.0), np.random.default_rng(0), n=50, min_len=1)
    assert all(len(n) >= 1 for n in names)
    longer = generate(lm, params, vocab, SoftmaxSampler(1.0), np.random.default_rng(0), n=50, prime="a", min_len=3)
    assert all(len(n) >= 3 and n.startswith("a") for n in longer)


def test_generate_prints_n_names_none_empty(tmp_path):
    out = cli(["steps=20", "eval_every=10", "cell.hidden_size=8", "tracking=none", "report_samples=0"], tmp_path)
    assert out.returncode == 0, out.stderr
    ckpt = run_dir(tmp_path) / "checkpoints" / "last.npz"
    gen = cli([f"checkpoint={ckpt}", "n=200", "seed=1"], tmp_path, module="rnnlab.generate")
    assert gen.returncode == 0, gen.stderr
    lines = gen.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 201 and all(lines[:-1])   # 200 names, one per line, none empty
    free = cli([f"checkpoint={ckpt}", "n=200", "seed=1", "min_len=0"], tmp_path, module="rnnlab.generate")
    assert free.returncode == 0 and len(free.stdout.split("\n")) == 201


def test_a_checkout_stays_clean_of_the_commands_outputs():
    """compare's PNG, MLflow's artifacts, inspect's folder, the runs and the store are ignored by git."""
    paths = ["compare-1a2b3c4d.png", "mlartifacts/1/x", "inspect/surprise.html", "outputs/x/y", "mlflow.db",
             "multirun/x"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(paths)
    kept = subprocess.run(["git", "check-ignore", "--no-index", "rnnlab/inspect/views.py"], cwd=ROOT,
                          capture_output=True, text=True)
    assert kept.stdout == ""        # the package named inspect is not ignored
