"""Packaging and documentation: a non-editable install works from another directory, the README's
Python examples run, the core imports no framework."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_install_runs_from_another_directory(tmp_path):
    """`pip install .` (not editable) carries the configs and the dataset."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, cwd=tmp_path)
    wheel = next(wheels.glob("rnnlab-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                    str(wheel)], check=True)
    assert (target / "rnnlab" / "conf" / "config.yaml").is_file()
    assert (target / "rnnlab" / "conf" / "tracking" / "mlflow.yaml").is_file()
    assert (target / "rnnlab" / "builtin" / "dinos.txt").is_file()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "rnnlab", "tracking=none", "steps=20", "eval_every=10",
                          "log_every=10"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "final val_nll" in out.stdout + out.stderr
    probe = subprocess.run([sys.executable, "-c", "import rnnlab.data, rnnlab.config; "
                            "print(rnnlab.data.BUILTIN_DIR, rnnlab.config.CONF_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.split() == [str(target / "rnnlab" / "builtin"), str(target / "rnnlab" / "conf")]


def readme_block(marker):
    """The README's Python example that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.mark.slow
def test_readme_library_example_runs():
    code = readme_block("history = train(").replace("steps=1000", "steps=100")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["history"].val_nll


@pytest.mark.slow
def test_readme_textbook_example_runs(capsys):
    code = readme_block("textbook as tb").replace("num_iterations=20001", "num_iterations=2001")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "[-0.99999375  0.77911235 -0.99861469 -0.99833267]" in out
    assert "Iteration: 2000, Loss:" in out


def test_readme_plugin_example_registers_and_optimizes():
    namespace = {}
    exec(compile(readme_block("SignSGD"), "README.md", "exec"), namespace)
    from rnnlab.registry import OPTIMIZERS
    try:
        opt = OPTIMIZERS.build("signsgd", lr=0.5)
        params = {"w": np.array([1.0, -1.0])}
        opt.step(params, {"w": np.array([3.0, -0.1])})
        np.testing.assert_allclose(params["w"], [0.5, -0.5])
        # its dataclass is the one declaration of its options: the config group's option is made from it
        from rnnlab.config import option_nodes
        assert option_nodes()["optimizer"]["signsgd"] == {"name": "signsgd", "lr": "${lr}", "weight_decay": 0.0, "ema": 0.0,
                                                          "scale": 1.0}
    finally:
        OPTIMIZERS._items.pop("signsgd", None)


def test_core_imports_no_framework():
    code = ("import sys, rnnlab.cells, rnnlab.model, rnnlab.optim, rnnlab.clipping, rnnlab.sampling, "
            "rnnlab.data, rnnlab.train, rnnlab.gradcheck, rnnlab.textbook, rnnlab.checkpoint; "
            "bad = [m for m in ('hydra', 'omegaconf', 'mlflow') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_benchmark_worker_runs_without_torch():
    """The benchmark's rnnlab side (the PyTorch side needs the optional torch install), driven as bench.py
    drives it: ready, then a timed pass per command, then its peak memory."""
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / "bench.py"), "--worker",
                          "rnnlab", "lstm", "16", "4", "float32", "5"], input="pass\npass\nend\n",
                         capture_output=True, text=True, cwd=ROOT,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr
    import json
    ready, *passes, end = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert ready == {"ready": "rnnlab"} and len(passes) == 2
    assert all(p["chars_per_sec"] > 0 and p["products_only_chars_per_sec"] > 0 for p in passes)
    assert end["peak_rss_mib"] > 0


def ruff(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ruff", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT)


def test_the_tree_passes_the_linter():
    out = ruff("check", ".")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path, banned", [("rnnlab/sampling.py", True), ("rnnlab/model.py", True),
                                          ("rnnlab/config.py", False), ("tests/test_x.py", False)])
def test_the_linter_keeps_the_framework_out_of_the_core(path, banned):
    """The dependency direction is a lint rule: a core module importing Hydra, OmegaConf or MLflow fails."""
    source = 'import numpy\nfrom omegaconf import OmegaConf\n\n__all__ = ["OmegaConf", "numpy"]\n'
    out = ruff("check", "--stdin-filename", path, "-", stdin=source)
    assert ("TID251" in out.stdout) == banned, out.stdout
    assert (out.returncode != 0) == banned, out.stdout


def test_interleaved_ab_compares_two_checkouts_in_one_process():
    """experiments/benchmarks/ab.py --interleaved with this checkout on both sides: both load as packages of their
    own, train, and give a median ratio (near 1: the same code) with its quartiles over every batch pair."""
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / "ab.py"), str(ROOT),
                          str(ROOT), "--points", "lstm:16:4,gru:16:4", "--interleaved", "1"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["lstm", "gru"]
    for line in lines:
        med, q1, q3, pairs = re.search(r"median ([\d.]+) \(quartiles ([\d.]+)–([\d.]+), (\d+) batch pairs", line).groups()
        assert int(pairs) == 200                # steps_for(16, 4) batches, one pass
        assert 0 < float(q1) and 0.5 < float(med) < 2, line   # the same code on both sides: near 1


def test_split_waits_times_both_processes_waits():
    """experiments/benchmarks/split_waits.py at a point whose batches split their units: both processes' waits
    are recorded (the same number a batch: they meet at the same points), binned by size, and the batches'
    imbalance reported; at a point that does not split, it says so."""
    script = str(ROOT / "experiments" / "benchmarks" / "split_waits.py")
    out = subprocess.run([sys.executable, script, "--point", "lstm:256:4", "--passes", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    batches = int(re.search(r"^(\d+) batches: a batch's part [\d.]+ ms", out.stdout, re.M).group(1))
    assert 1 <= batches <= 8, out.stdout                  # the second pass's batches that split
    per_batch = {}
    for name in ("parent", "child"):
        line = re.search(rf"{name} waits, (\d+) a batch — (.*)", out.stdout)
        per_batch[name] = int(line.group(1))
        counts = [int(n) for n in re.findall(r": (\d+) \(", line.group(2))]
        assert len(counts) == 5 and abs(sum(counts) - per_batch[name] * batches) <= batches, line.group(0)
    assert per_batch["parent"] == per_batch["child"] > 0, out.stdout
    assert re.search(r"imbalance \|parent − child\| / 2: [\d.]+ ms a batch", out.stdout), out.stdout
    out = subprocess.run([sys.executable, script, "--point", "lstm:64:4", "--passes", "2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and "no batch split its hidden units" in out.stdout, out.stdout + out.stderr
