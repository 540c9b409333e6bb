"""The commands' help pages, made from the options' declarations, and bash completion: run as a user runs
them, in a subprocess."""

import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import require
from rnnlab.config import CONF_DIR, RunSettings, available_options, option_nodes
from test_cli import cli, env


def test_train_help_lists_the_keys_the_groups_their_options_and_the_other_commands(tmp_path):
    out = cli(["--help"], tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    page = out.stdout
    for f in fields(RunSettings):                                 # every main key, its default and meaning
        default = "null" if f.default is None else f.default
        assert f"{f.name}={default}" in page, f.name
        assert f.metadata["doc"][:40] in page, f.name
    for group, names in available_options().items():             # every group and every option of it
        if group == "experiment":                                 # one line each, with what it is
            assert all(f"experiment={name}" in page for name in names)
            continue
        line = next(line for line in page.splitlines() if line.strip().startswith(group + " "))
        for name in names:
            assert name in line, (group, name)
    for group, options in option_nodes().items():                # every key of every plugin's options
        for node in options.values():
            for key in node:
                if key not in ("name", "kind"):
                    assert f"{group}.{key}=" in page, (group, key)
    assert "cell.dropout=0.0           on the non-recurrent connections, in training only" in page
    assert "optimizer.beta1=0.9" in page and "[adam]" in page    # which options have a key
    for command in ("--plugins", "rnnlab.generate --help", "rnnlab.compare --help", "rnnlab.inspect --help",
                    "--hydra-help", "-sc install=bash"):
        assert command in page, command
    # the page needs neither Hydra's composition nor MLflow: -h is the same page, quickly
    short = cli(["-h"], tmp_path)
    assert short.returncode == 0 and short.stdout == page
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


def test_hydra_help_is_still_hydras(tmp_path):
    out = cli(["--hydra-help"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--shell-completion" in out.stdout and "--multirun" in out.stdout


def test_generate_help_advertises_only_what_generate_accepts(tmp_path):
    out = cli(["--help"], tmp_path, module="rnnlab.generate")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    page = out.stdout
    keys = [k for k in OmegaConf.load(CONF_DIR / "generate.yaml") if k not in ("defaults", "hydra")]
    for key in keys:
        assert f"\n  {key}=" in page, key
    assert "sampler.temperature=1.0" in page and "sampler=" not in page.replace("sampler.", "")
    for group in ("cell", "optimizer", "schedule", "clip", "data", "experiment"):
        assert f"\n  {group} " not in page and f"{group}." not in page, group
    # and what it does not accept is refused as a user mistake, exit 2, naming the allowed keys
    bad = cli(["cell=gru", "checkpoint=x.npz"], tmp_path, module="rnnlab.generate")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Unknown key 'cell'" in bad.stderr and "sampler" in bad.stderr and "prime" in bad.stderr


def test_inspect_and_compare_help(tmp_path):
    out = cli(["--help"], tmp_path, module="rnnlab.inspect")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert "views=all" in out.stdout and "checkpoint=null" in out.stdout and "\n  cell " not in out.stdout
    out = cli(["--help"], tmp_path, module="rnnlab.compare")
    assert out.returncode == 0 and out.stderr == "", out.stderr
    for key in ("sweep=", "experiment=", "tracking.uri=", "plot=", "markdown=", "x="):
        assert key in out.stdout, key
    bad = cli(["--verbose"], tmp_path, module="rnnlab.compare")
    assert bad.returncode == 2 and "unknown argument '--verbose'" in bad.stderr and "--help" in bad.stderr


@pytest.mark.parametrize("args", [["--plugins"], ["--help"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path, args):
    """``python -m rnnlab --plugins | head -1``: the pipe closes before the command writes."""
    proc = subprocess.Popen([sys.executable, "-m", "rnnlab", *args], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()            # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == ""


def rnnlab_command():
    command = shutil.which("rnnlab", path=str(Path(sys.executable).parent))
    require(command is not None, "the `rnnlab` command (pip install -e .)")
    return command


@pytest.mark.parametrize("line, expected", [
    ("rnnlab cell=", {"cell=gru", "cell=lnlstm", "cell=lstm", "cell=rnn"}),
    ("rnnlab cell.h", {"cell.hidden_size="}),
    ("rnnlab optimizer=a", {"optimizer=adagrad", "optimizer=adam"}),
    ("rnnlab lr=0.01 ste", {"steps="}),
    ("rnnlab experiment=co", {"experiment=compare_cells", "experiment=compare_clipping", "experiment=course"}),
])
def test_bash_completion_as_the_readme_installs_it(tmp_path, line, expected):
    """``eval "$(rnnlab -sc install=bash)"`` then TAB: bash calls the installed completion function."""
    bash = shutil.which("bash")
    require(bash is not None, "bash")
    command = rnnlab_command()
    script = ('eval "$(rnnlab -sc install=bash)"\n'
              'COMP_LINE="$LINE"; COMP_POINT=${#COMP_LINE}; words=($COMP_LINE)\n'
              'case "$LINE" in *" ") COMP_CWORD=${#words[@]};; *) COMP_CWORD=$(( ${#words[@]} - 1 ));; esac\n'
              'hydra_bash_completion\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    path = f"{Path(command).parent}:{env()['PATH']}"
    out = subprocess.run([bash, "-c", script], cwd=tmp_path, env=env(LINE=line, PATH=path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == expected, out.stdout


@pytest.mark.parametrize("args, part, extra", [
    (["-m", "hydra/launcher=parallel", "cell=rnn,gru"], "Hydra's joblib launcher", "sweep"),
    (["experiment=optuna"], "Hydra's Optuna sweeper", "sweep"),
    (["-m", "hydra/launcher=ray_cluster", "cell=rnn,gru"], "Hydra's Ray launcher", "ray"),
])
def test_a_missing_optional_part_is_named_with_its_extra_and_the_pip_command(tmp_path, args, part, extra):
    """Without the extra (hidden here from the import system), the command says what is missing and how
    to install it, in our words, before Hydra tries to load it; nothing is written."""
    hide = ("import sys\n"
            "for m in ('hydra_plugins.hydra_joblib_launcher', 'hydra_plugins.hydra_optuna_sweeper',\n"
            "          'hydra_plugins.hydra_ray_launcher'):\n"
            "    sys.modules[m] = None   # as if not installed\n"
            "from rnnlab.cli import main\nmain(sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-c", hide, *args], cwd=tmp_path, env=env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"needs {part}, from rnnlab's optional extra `{extra}`" in out.stderr
    assert f"pip install 'rnnlab[{extra}]'" in out.stderr and f"pip install -e '.[{extra}]'" in out.stderr
    assert "Could not load" not in out.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()
