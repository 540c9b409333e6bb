"""Plain mistakes never end in a traceback (issue 13.8): every option of the three commands (train,
generate, compare) given negative, zero, huge, non-numeric, empty and non-ASCII values. Each either
is refused — ``rnnlab: error: …`` on one line, exit 2, no checkpoint and no store written — or is a
valid value. The commands run in-process (Hydra composes as on the command line); training stops
right after its checks (``start_tracker`` is replaced by a sentinel), so the table stays fast. A few
cases also run as a real subprocess."""

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from test_cli import cli

VALUES = ["-1", "0", "99999999999", "1e30", "abc", "", "é🦖", "'é🦖'", "nan", "inf"]
NUMERIC_TRAIN = ["lr", "steps", "batch_size", "seed", "eval_every", "sample_every", "num_samples", "max_len",
                 "report_samples", "patience", "min_delta", "threads", "log_every", "checkpoint_every",
                 "gradient_flow_every", "cell.hidden_size", "cell.num_layers", "cell.dropout", "cell.embedding_size",
                 "optimizer.lr", "optimizer.weight_decay", "optimizer.beta1", "optimizer.beta2", "optimizer.eps",
                 "schedule.warmup", "clip.max_norm", "sampler.temperature", "data.val_fraction",
                 "data.test_fraction"]
OTHER_TRAIN = ["dtype", "reduction", "resume", "data.path", "data.lowercase", "tracking.uri", "tracking.experiment",
               "cell", "optimizer", "schedule", "clip", "sampler", "data", "tracking", "experiment"]
NON_NUMBERS = ["abc", "", "é🦖", "'é🦖'"]


class Validated(BaseException):
    """Raised where the run would start tracking: everything was checked and accepted."""


def run_in_process(main, argv, monkeypatch, tmp_path):
    """(exit code, stdout, stderr) of ``main(argv)``; exit code "ok" when the run passed its checks."""
    import rnnlab.runner

    def stop(*args, **kwargs):
        raise Validated

    monkeypatch.setattr(rnnlab.runner, "start_tracker", stop)
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(argv))
        except Validated:
            code = "ok"
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001 - what a user would see as a traceback
            code = f"traceback: {type(e).__name__}: {e}"
    return code, out.getvalue(), err.getvalue()


def check_case(code, out, err, case):
    assert code in ("ok", 0, 2), f"{case}: exit {code}\n{err[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in out, f"{case}\n{err[-2000:]}"
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("rnnlab: error: "), f"{case}: {err[-2000:]}"


@pytest.mark.parametrize("key", NUMERIC_TRAIN + OTHER_TRAIN)
def test_train_options_with_bad_values(key, monkeypatch, tmp_path):
    from rnnlab.cli import main
    for value in VALUES:
        run = tmp_path / f"run{VALUES.index(value)}"
        case = f"python -m rnnlab {key}={value}"
        code, out, err = run_in_process(main, [f"{key}={value}", "tracking=none", f"hydra.run.dir={run}",
                                               "cell.hidden_size=8"] if key != "cell.hidden_size" else
                                        [f"{key}={value}", "tracking=none", f"hydra.run.dir={run}"],
                                        monkeypatch, tmp_path)
        check_case(code, out, err, case)
        if key in NUMERIC_TRAIN and value in NON_NUMBERS:
            assert code == 2, f"{case} was accepted"
        if code == 2:
            assert not (run / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists(), case


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from rnnlab import checkpoint as ckpt_io
    from rnnlab.data import Vocab
    from rnnlab.model import CharLM
    lm = CharLM(4, "gru", 3)
    vocab = Vocab(("\n", "a", "b", "c"))
    path = tmp_path_factory.mktemp("ck") / "ck.npz"
    return ckpt_io.save(path, ckpt_io.Checkpoint(params=lm.init_params(np.random.default_rng(0)),
                                                 meta={"step": 3, **ckpt_io.model_meta(lm, vocab, "lines")}))


@pytest.mark.parametrize("key", ["checkpoint", "run", "which", "n", "prime", "seed", "max_len", "sampler",
                                 "sampler.temperature", "tracking.uri", "cell"])
def test_generate_options_with_bad_values(key, checkpoint, monkeypatch, tmp_path):
    from rnnlab.generate import main
    for value in VALUES:
        base = [] if key in ("checkpoint", "run") else [f"checkpoint={checkpoint}"]
        case = f"python -m rnnlab.generate {key}={value}"
        code, out, err = run_in_process(main, [*base, f"{key}={value}", "tracking.uri=sqlite:///g.db"],
                                        monkeypatch, tmp_path)
        check_case(code, out, err, case)
        if key in ("n", "max_len", "seed", "sampler.temperature") and value in NON_NUMBERS:
            assert code == 2, f"{case} was accepted"


@pytest.mark.parametrize("key", ["sweep", "experiment", "tracking.uri", "plot", "markdown", "unknown"])
def test_compare_options_with_bad_values(key, monkeypatch, tmp_path):
    from rnnlab.compare import main
    for value in VALUES:
        base = [] if key in ("sweep", "experiment") else ["experiment=rnnlab"]
        case = f"python -m rnnlab.compare {key}={value}"
        code, out, err = run_in_process(main, [*base, f"{key}={value}", "tracking.uri=sqlite:///c.db"]
                                        if key != "tracking.uri" else [*base, f"{key}={value}"], monkeypatch, tmp_path)
        check_case(code, out, err, case)
        assert code == 2, f"{case}: exit {code}"


@pytest.mark.slow
def test_mistakes_through_the_real_command_line(tmp_path):
    for args, expected in [(["~cell"], "cannot remove cell"),
                           (["prime=🦖", "checkpoint=x.npz"], "quote"),
                           (["hydra.run.dir=/proc/forbidden", "steps=1"], "hydra.run.dir"),
                           (["lr=inf"], "lr"),
                           (["+foo=1"], "foo")]:
        module = "rnnlab.generate" if any(a.startswith("prime") for a in args) else "rnnlab"
        out = cli([*args, "tracking=none"] if module == "rnnlab" else args, tmp_path, module=module)
        assert out.returncode == 2, f"{args}: {out.stderr[-2000:]}"
        assert out.stderr.strip().splitlines()[-1].startswith("rnnlab: error: "), out.stderr
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not list(Path(tmp_path).glob("outputs/*/*/checkpoints"))
