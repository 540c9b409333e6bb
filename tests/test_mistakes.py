"""Plain mistakes never end in a traceback (issue 13.8): every option of the three commands (train,
generate, compare) given negative, zero, huge, non-numeric, empty and non-ASCII values. Each either
is refused — ``rnnlab: error: …`` on one line, exit 2, no checkpoint and no store written — or is a
valid value. The commands run in-process (Hydra composes as on the command line); training stops
right after its checks (``start_tracker`` is replaced by a sentinel), so the table stays fast. A few
cases also run as a real subprocess."""

import copy
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from test_cli import cli

VALUES = ["-1", "0", "99999999999", "abc", "", "é🦖", "nan"]   # negative, zero, huge, non-numeric, empty, non-ASCII
NUMERIC_TRAIN = ["lr", "steps", "batch_size", "seed", "eval_every", "sample_every", "num_samples", "max_len",
                 "report_samples", "patience", "min_delta", "mc_samples", "threads", "log_every", "checkpoint_every",
                 "gradient_flow_every", "cell.hidden_size", "cell.num_layers", "cell.dropout", "cell.embedding_size",
                 "optimizer.lr", "optimizer.weight_decay", "optimizer.beta1", "optimizer.beta2", "optimizer.eps",
                 "schedule.warmup", "clip.max_norm", "sampler.temperature", "data.val_fraction",
                 "data.test_fraction"]
OTHER_TRAIN = ["dtype", "reduction", "resume", "data.path", "data.lowercase", "tracking.uri", "tracking.experiment",
               "cell", "optimizer", "schedule", "clip", "sampler", "data", "tracking", "experiment"]
NON_NUMBERS = ["abc", "", "é🦖"]


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


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """The default config composed once by Hydra (its ``hydra`` node set as a run has it): a ``key=value``
    override is then applied as Hydra types it, without composing again."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from rnnlab.config import CONF_DIR, register_configs
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["tracking=none", "cell.hidden_size=8"], return_hydra_config=True)
    return cfg


def train_in_process(composed, ov, run, monkeypatch, tmp_path):
    """What ``python -m rnnlab <ov> tracking=none cell.hidden_size=8`` does up to the start of tracking:
    the checks before Hydra, the value typed by Hydra's override parser, then the run's own checks."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict
    from rnnlab.cli import _task
    from rnnlab.config import ConfigError, check_overrides
    from rnnlab.lifecycle import fail

    def body(argv):
        try:
            check_overrides(argv)
        except ConfigError as e:
            fail(str(e))
        key = argv[0].partition("=")[0]
        value = OverridesParser.create().parse_override(argv[0]).value()
        cfg = copy.deepcopy(composed)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run)
            cfg.hydra.overrides.task = [argv[0], "tracking=none", "cell.hidden_size=8"]
        HydraConfig.instance().set_config(cfg)
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
            OmegaConf.update(cfg, key, value, merge=False)
        return _task(cfg)
    return run_in_process(body, [ov], monkeypatch, tmp_path)


@pytest.mark.parametrize("key", NUMERIC_TRAIN + OTHER_TRAIN)
def test_train_options_with_bad_values(key, composed, monkeypatch, tmp_path):
    from rnnlab.cli import main
    for value in VALUES:
        run = tmp_path / f"run{VALUES.index(value)}"
        case = f"python -m rnnlab {key}={value}"
        if "." in key or key in NUMERIC_TRAIN or key in ("dtype", "reduction", "resume"):
            code, out, err = train_in_process(composed, f"{key}={value}", run, monkeypatch, tmp_path)
        else:  # a group choice: Hydra composes it
            code, out, err = run_in_process(main, [f"{key}={value}", "tracking=none", f"hydra.run.dir={run}",
                                                   "cell.hidden_size=8"], monkeypatch, tmp_path)
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
def test_generate_options_with_bad_values(key, checkpoint, monkeypatch, tmp_path, seeded):
    from rnnlab.generate import main
    if key == "run":       # its bad run ids are looked up in the store
        seeded(tmp_path, "g.db")
    for value in VALUES:
        base = [] if key in ("checkpoint", "run") else [f"checkpoint={checkpoint}"]
        case = f"python -m rnnlab.generate {key}={value}"
        code, out, err = run_in_process(main, [*base, f"{key}={value}", "tracking.uri=sqlite:///g.db"],
                                        monkeypatch, tmp_path)
        check_case(code, out, err, case)
        if key in ("n", "max_len", "seed", "sampler.temperature") and value in NON_NUMBERS:
            assert code == 2, f"{case} was accepted"


@pytest.mark.parametrize("key", ["sweep", "experiment", "tracking.uri", "plot", "markdown", "x", "unknown"])
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
    for args, expected in [(["~cell"], "removes the cell group"),
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


def test_tracking_uris_that_are_not_stores(tmp_path):
    """A text file, a folder, a file store, a non-SQLite file: one line naming the URI and what is expected."""
    from rnnlab.config import ConfigError
    from rnnlab.tracking import connect
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "folder").mkdir()
    (tmp_path / "fake.db").write_text("not sqlite")
    for uri, expected in [(str(tmp_path / "notes.txt"), "is a plain file, not a tracking store"),
                          (str(tmp_path / "folder"), "is a file store"),
                          (f"file://{tmp_path}/mlruns", "is a file store"),
                          (f"sqlite:///{tmp_path}/folder", "names a folder"),
                          (f"sqlite:///{tmp_path}/fake.db", "is not a SQLite database"),
                          (f"sqlite:///{tmp_path}/missing/x.db", "does not exist")]:
        with pytest.raises(ConfigError, match=expected) as e:
            connect(uri)
        assert "expected a SQLite store" in str(e.value) or "does not exist" in str(e.value)


def test_a_web_server_that_is_not_mlflow_is_named_so(tmp_path):
    import http.server
    import threading
    from rnnlab.config import ConfigError
    from rnnlab.tracking import connect
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConfigError, match=r"answered \(HTTP 404 .*\) but is not an MLflow tracking server"):
            connect(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
