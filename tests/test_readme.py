"""Every code block of the README is executed here as pasted (or by the test named for it), so the README
cannot drift from what the code does; a new block without a test fails ``test_every_block_is_executed``."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest

from test_cli import ROOT, cli, env

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)

# the marker of each block -> the test that runs it
EXECUTED = {
    "pip install -e": "test_readme_setup_block_sets_up_and_runs_the_main_job",
    "python -m pytest": None,   # how to run this very suite: it is run whenever a test runs
    "mlflow.pyfunc.load_model": "test_readme_model_block_predicts",
    "SignSGD": "test_package.py::test_readme_plugin_example_registers_and_optimizes",
    "rnnlab.cells\"]": "test_readme_entry_point_block_adds_a_cell",
    "history = train(": "test_package.py::test_readme_library_example_runs",
    "from rnnlab.cells import LSTM": "test_readme_engine_block_runs",
    "textbook as tb": "test_package.py::test_readme_textbook_example_runs",
}


def block(marker: str) -> str:
    (code,) = [code for _, code in BLOCKS if marker in code]
    return code


def test_every_block_is_executed():
    for lang, code in BLOCKS:
        owners = [m for m in EXECUTED if m in code]
        assert len(owners) == 1, f"a README block without exactly one test: ```{lang}\n{code[:200]}"
    assert len(BLOCKS) == len(EXECUTED)


def test_readme_engine_block_runs():
    namespace = {}
    exec(compile(block("from rnnlab.cells import LSTM"), "README.md", "exec"), namespace)
    hs, grads = namespace["hs"], namespace["grads"]
    assert hs.shape == (12, 4, 64) and set(grads) == {"Wx", "Wh", "b"}
    assert np.all(hs[8:, 2:] == hs[7:8, 2:])   # a finished sequence's output stays as it ended


@pytest.mark.slow
def test_readme_model_block_predicts(tmp_path):
    out = cli(["steps=20", "eval_every=10", "cell.hidden_size=8", "report_samples=0"], tmp_path)
    assert out.returncode == 0, out.stderr
    uri = (out.stdout + out.stderr).split("mlflow.pyfunc.load_model('")[1].split("'")[0]
    code = block("mlflow.pyfunc.load_model").replace("models:/m-…", uri)
    lines = code.strip().splitlines()
    code = "\n".join(lines[:-1] + [f"names = {lines[-1]}"])
    script = f"import os\nos.chdir({str(tmp_path)!r})\n{code}\nprint(repr(names))\n"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    names = eval(run.stdout.strip().splitlines()[-1])
    assert len(names) == 5 and all(n.startswith("ty") and len(n) > 2 for n in names)
    assert "type hints" not in run.stderr


@pytest.mark.slow
def test_readme_entry_point_block_adds_a_cell(tmp_path):
    """A package whose pyproject.toml holds the README's block verbatim adds the cell ``mycell``."""
    pkg = tmp_path / "plugin"
    (pkg / "mypackage").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "mypackage"
        version = "0.1"
    """) + block('rnnlab.cells"]'))
    (pkg / "mypackage" / "__init__.py").write_text("")
    (pkg / "mypackage" / "cells.py").write_text("from rnnlab.cells import GRU\n\n\nclass MyCell(GRU):\n"
                                                "    '''A GRU under another name.'''\n")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(pkg)],
                   check=True, capture_output=True)
    path = os.pathsep.join([str(ROOT), str(site)])
    assert "mycell" in cli(["--plugins"], tmp_path, PYTHONPATH=path).stdout
    out = cli(["tracking=none", "cell=mycell", "cell.hidden_size=8", "steps=10", "eval_every=5"], tmp_path,
              PYTHONPATH=path)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_readme_setup_block_sets_up_and_runs_the_main_job(tmp_path):
    """The first block, pasted into bash in a fresh copy of the checkout. The new virtualenv sees this
    one's packages (a .pth file), so ``pip install -e ".[test]"`` installs rnnlab itself and nothing
    from the network but its build backend; then the main job runs, as is, with its defaults."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    clone = tmp_path / "rnnlab"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    code = block("pip install -e").strip()
    assert code.startswith("python3 -m venv .venv && ")
    venv.create(clone / ".venv", with_pip=True)           # the block's first command, done here to add …
    site = next((clone / ".venv" / "lib").glob("python*/site-packages"))
    parent = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "parent.pth").write_text("\n".join(parent) + "\n")   # … the packages this test runs with
    rest = code[len("python3 -m venv .venv && "):]
    clean = {k: v for k, v in env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([bash, "-c", rest], cwd=clone, env=clean, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "run lstm-h64-adam-lr0.005 finished in" in text and "final val_nll" in text
    assert "then open: http://127.0.0.1:5000/#/experiments/1/runs/" in text
    installed = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", "import rnnlab.config; print(rnnlab.config.__file__)"],
                               capture_output=True, text=True, cwd="/")
    assert installed.stdout.strip() == str(clone / "rnnlab" / "config.py")   # the copy, installed editable
