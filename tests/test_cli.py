"""The command line, run as a user runs it: in a subprocess, against a temporary MLflow store."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rnnlab.checkpoint import load

ROOT = Path(__file__).resolve().parent.parent
FAST = ["steps=30", "eval_every=10", "sample_every=15", "num_samples=3", "log_every=10",
        "checkpoint_every=10", "cell.hidden_size=16"]


def env(**extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [e.get("PYTHONPATH")] if p])
    e.update(extra)
    return e


def cli(args, cwd, module="rnnlab", timeout=300, **extra_env):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def run_dir(cwd: Path) -> Path:
    return max((cwd / "outputs").glob("*/*"), key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, seeded):
    """One tracked run into a new (empty) store in a fresh directory."""
    cwd = seeded(tmp_path_factory.mktemp("tracked"))
    out = cli(["cell=lstm", "lr=0.01", *FAST, "data.test_fraction=0.1", "cell.dropout=0.1",
               "cell.embedding_size=8", "optimizer.weight_decay=0.01", "report_samples=50"], cwd)
    assert out.returncode == 0, out.stderr
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rnnlab")
    (run,) = client.search_runs([exp.experiment_id])
    return cwd, out.stdout + out.stderr, client, run, uri


@pytest.mark.slow
def test_tracked_run_logs_everything(tracked):
    cwd, output, client, run, uri = tracked
    assert run.info.status == "FINISHED"
    # the name says the model and what else differs from the defaults (not what it already says)
    assert run.info.run_name == ("lstm-h16-adam-lr0.01 steps=30 data.test_fraction=0.1 cell.dropout=0.1 "
                                 "cell.embedding_size=8 optimizer.weight_decay=0.01")
    exp = client.get_experiment(run.info.experiment_id)   # the UI opens it on its training runs
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    p = run.data.params
    assert p["cell.name"] == "lstm" and p["cell.hidden_size"] == "16" and p["optimizer.lr"] == "0.01"
    assert p["steps"] == "30" and p["data.name"] == "dinos" and p["clip.max_norm"] == "5.0"
    assert p["cell.dropout"] == "0.1" and p["cell.embedding_size"] == "8"
    assert p["optimizer.weight_decay"] == "0.01" and p["data.test_fraction"] == "0.1"
    tags = run.data.tags
    assert tags["cell"] == "lstm" and tags["dataset"] == "dinos" and "lr=0.01" in tags["overrides"]
    for key, n in [("train_loss", 30), ("grad_norm", 30), ("chars_per_sec", 30), ("val_nll", 3),
                   ("val_bpc", 3), ("samples_new", 2), ("test_nll", 1), ("test_bpc", 1),
                   ("final_samples_new", 1), ("final_samples_in_train", 1), ("final_samples_in_heldout", 1)]:
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == n, key
    val = [m.value for m in client.get_metric_history(run.info.run_id, "val_nll")]
    bpc = [m.value for m in client.get_metric_history(run.info.run_id, "val_bpc")]
    np.testing.assert_allclose(np.array(val) / np.log(2), bpc)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "checkpoints", "config"} <= artifacts
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"samples/step_000015.txt", "samples/step_000030.txt", "samples/report.txt"}
    tables = {a.path for a in client.list_artifacts(run.info.run_id, "tables")}
    assert tables == {"tables/samples.json", "tables/report.json"}       # shown as tables in the UI
    assert "figures/learning_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    report = client.download_artifacts(run.info.run_id, "samples/report.txt", str(cwd))
    assert len(Path(report).read_text().splitlines()) == 50
    ckpts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert ckpts == {"checkpoints/last.npz", "checkpoints/best.npz"}
    # the data: train, validation and test splits as MLflow dataset inputs, with digest and source
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"dinos.train", "dinos.validation", "dinos.test"}
    for name, i in inputs.items():
        assert i.tags[0].key == "mlflow.data.context" and i.tags[0].value == name.split(".")[1]
        assert len(i.dataset.digest) == 16 and '"builtin": true' in i.dataset.source
    assert len({i.dataset.digest for i in inputs.values()}) == 3
    # the model: the best checkpoint, at its step, with a signature, an input example, linked metrics
    (model,) = client.search_logged_models([run.info.experiment_id])
    best = load(run_dir(cwd) / "checkpoints" / "best.npz")
    assert model.source_run_id == run.info.run_id and model.params["checkpoint"] == "best.npz"
    linked = {m.key: m for m in model.metrics if m.dataset_name}
    assert linked["best_val_nll"].dataset_name == "dinos.validation" and linked["best_val_nll"].step == best.step
    assert linked["best_val_nll"].value == pytest.approx(best.meta["best_val_nll"])
    assert linked["best_val_nll"].dataset_digest == inputs["dinos.validation"].dataset.digest
    assert linked["test_nll"].dataset_name == "dinos.test"
    import mlflow
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert [c.name for c in info.signature.inputs.inputs] == ["prime", "n", "temperature", "seed", "max_len"]
    assert info.saved_input_example_info is not None
    # MLflow's own lines, warnings and progress bars are in the log file, not among rnnlab's
    for noise in ("Downloading artifacts", "type hints", "Validating input example", "database tables"):
        assert noise not in output, noise
    assert "Validating input example" in (run_dir(cwd) / "rnnlab.log").read_text()
    # the run says where to look
    assert run.info.run_id in output
    assert f"mlflow ui --backend-store-uri {uri}" in output
    assert "final val_nll" in output
    test_nll = client.get_metric_history(run.info.run_id, "test_nll")[0].value
    assert f"test_nll {test_nll:.4f} nats/char" in output
    assert "50 samples of the best model: " in output


@pytest.mark.slow
def test_logged_model_generates_names(tracked):
    cwd, output, client, run, uri = tracked
    import mlflow
    mlflow.set_tracking_uri(uri)
    model_uri = output.split("mlflow.pyfunc.load_model('")[1].split("'")[0]
    model = mlflow.pyfunc.load_model(model_uri)
    names = model.predict({"n": 4, "prime": "ty", "seed": 3})
    assert len(names) == 4 and all(n.startswith("ty") for n in names)
    assert names == model.predict({"n": 4, "prime": "ty", "seed": 3})


@pytest.mark.slow
def test_generate_from_run_id_and_checkpoint(tracked):
    cwd, output, client, run, uri = tracked
    out = cli([f"run={run.info.run_id}", "n=7", "seed=2"], cwd, module="rnnlab.generate")
    assert out.returncode == 0, out.stderr
    names = out.stdout.splitlines()
    assert len(names) == 7 and all(set(n) <= set("abcdefghijklmnopqrstuvwxyz") for n in names)
    ckpt = run_dir(cwd) / "checkpoints" / "best.npz"
    again = cli([f"checkpoint={ckpt}", "n=7", "seed=2"], cwd, module="rnnlab.generate")
    assert again.stdout.splitlines() == names
    topk = cli([f"checkpoint={ckpt}", "n=3", "prime=sa", "sampler=topk", "sampler.k=2"], cwd,
               module="rnnlab.generate")
    assert topk.returncode == 0 and all(n.startswith("sa") for n in topk.stdout.splitlines())


@pytest.mark.slow
def test_running_text_continues_a_prime_for_the_requested_length(tmp_path):
    lines = ["ROMEO: what light through yonder window breaks", "JULIET: ay me", "ROMEO: she speaks",
             "NURSE: madam, your mother craves a word with you"]
    (tmp_path / "play.txt").write_text("\n".join(lines * 40) + "\n")
    out = cli(["tracking=none", "data=text", f"data.path={tmp_path / 'play.txt'}", "data.seq_len=20",
               "data.test_fraction=0.1", "batch_size=4", "max_len=80", *FAST], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "test_nll" in out.stderr + out.stdout
    ckpt = run_dir(tmp_path) / "checkpoints" / "best.npz"
    gen = cli([f"checkpoint={ckpt}", "n=2", "prime=ROMEO:", "max_len=150", "seed=1"], tmp_path,
              module="rnnlab.generate")
    assert gen.returncode == 0, gen.stderr
    samples = gen.stdout.rstrip("\n").split("\n" + "-" * 40 + "\n")
    assert len(samples) == 2
    for s in samples:   # the prime, then 150 characters: a newline does not end running text
        assert s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 150


@pytest.mark.slow
def test_resume_is_bit_for_bit(tmp_path):
    # (a schedule that depends on the step only: this test stops the first run by asking fewer steps)
    common = ["tracking=none", "cell=gru", "schedule=step", "schedule.every=7", "schedule.warmup=3", *FAST]
    full = cli(common, tmp_path)
    assert full.returncode == 0, full.stderr
    full_ckpt = load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    part = cli([*common, "steps=20"], tmp_path)
    assert part.returncode == 0, part.stderr
    part_path = run_dir(tmp_path) / "checkpoints" / "last.npz"
    assert load(part_path).step == 20
    resumed = cli([*common, f"resume={part_path}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout + resumed.stderr
    res_ckpt = load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    assert res_ckpt.step == full_ckpt.step == 30
    for k in full_ckpt.params:
        np.testing.assert_array_equal(res_ckpt.params[k], full_ckpt.params[k], err_msg=k)
    for k in full_ckpt.optimizer:
        np.testing.assert_array_equal(res_ckpt.optimizer[k], full_ckpt.optimizer[k], err_msg=k)


@pytest.mark.slow
def test_resume_from_mlflow_run_id(tmp_path, seeded):
    first = cli(["cell=rnn", *FAST, "steps=20"], seeded(tmp_path))
    assert first.returncode == 0, first.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    second = cli(["cell=rnn", *FAST, f"resume={run.info.run_id}"], tmp_path)
    assert second.returncode == 0, second.stderr
    assert load(run_dir(tmp_path) / "checkpoints" / "last.npz").step == 30


@pytest.mark.slow
def test_the_printed_mlflow_ui_command_shows_the_run(tracked):
    """The `mlflow ui …` line the run prints, pasted into a shell (on another port than 5000, which a
    user's own UI may hold): the UI comes up, its API serves the run, and it runs lean — one worker
    process, no job runner (see ``ui_command``)."""
    import shutil
    import signal
    import time
    import urllib.request

    from conftest import free_port
    cwd, output, client, run, uri = tracked
    (line,) = [ln for ln in output.splitlines() if "see it with: " in ln]
    command = line.split("see it with: ", 1)[1].strip()
    assert command.endswith("--port 5000 --workers 1") and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui" in command
    port = free_port()
    ui = subprocess.Popen([shutil.which("bash"), "-c", command.replace("--port 5000", f"--port {port}")],
                          cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        deadline, answer = time.time() + 120, None
        while answer is None and time.time() < deadline and ui.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id="
                                            f"{run.info.run_id}", timeout=5) as r:
                    answer = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert answer is not None, "the printed mlflow ui command did not serve the run"
        assert run.info.run_name in answer
        children = subprocess.run(["pgrep", "-s", str(ui.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2, children    # the `mlflow ui` launcher and its one uvicorn worker
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


BAD = [
    (["lr=-1"], "lr must be > 0, got -1.0"),
    (["cell.dropout=1.5"], "cell.dropout must be in [0, 1), got 1.5"),
    (["cell.embedding_size=-1"], "cell.embedding_size must be an integer >= 0, got -1"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay must be >= 0, got -1.0"),
    (["report_samples=-3"], "report_samples must be >= 0"),
    (["threads=-1"], "threads must be >= 0 (0: one per available CPU), got -1"),
    (["cell.hidden_size=0"], "cell.hidden_size must be an integer >= 1, got 0"),
    (["batch_size=0"], "batch_size must be > 0, got 0"),
    (["steps=0"], "steps must be > 0, got 0"),
    (["steps=abc"], "steps"),
    (["sampler.temperature=0"], "sampler.temperature must be > 0"),
    (["sampler=topp", "sampler.p=1.5"], "sampler.p must be in (0, 1]"),
    (["sampler=topk", "sampler.k=0"], "sampler.k must be an integer >= 1"),
    (["data.val_fraction=1.5"], "data.val_fraction must be in (0, 1), got 1.5"),
    (["cell=lstn"], "Unknown cell 'lstn'"),
    (["optimizer=adamm"], "Did you mean optimizer=adam?"),
    (["cell=rnn,lsmt"], "Did you mean cell=lstm?"),
    (["+cell.hiden_size=3"], "Unknown key cell.hiden_size"),
    (["cell.hiden_size=3"], "Did you mean cell.hidden_size?"),
    (["stpes=3"], "Unknown key 'stpes' in the override 'stpes=3'. Allowed keys: lr, steps"),
    (["optimizer=sgd", "optimizer.beta1=0.5"], "optimizer 'sgd' has the keys ema, lr, name"),
    (["data=lines", "data.path=/no/such/file.txt"], "data file not found: '/no/such/file.txt'"),
    (["batch_size=5000"], "batch_size=5000 is larger than the 1199 training lines"),
    (["dtype=float16"], "dtype must be float32 or float64"),
    (["schedule=cosin"], "Did you mean schedule=cosine?"),
    (["schedule=step", "schedule.gamma=2"], "schedule.gamma must be in (0, 1], got 2.0"),
    (["schedule.warmup=-1"], "schedule.warmup must be an integer >= 0, got -1"),
    (["patience=-1"], "patience must be >= 0 (0: no early stopping), got -1"),
    (["resume=/no/such.npz"], "checkpoint not found"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    out = cli(["tracking=none", *args], tmp_path)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_plugins_listing(tmp_path):
    out = cli(["--plugins"], tmp_path)
    assert out.returncode == 0
    assert "cells       gru, lnlstm, lstm, rnn" in out.stdout
    assert "optimizers  adagrad, adam, momentum, rmsprop, sgd" in out.stdout


IMPORTS_MLFLOW = textwrap.dedent("""
    import atexit, sys
    atexit.register(lambda: print("MLFLOW_IMPORTED=" + str("mlflow" in sys.modules), file=sys.stderr))
    sys.argv = ["rnnlab", *sys.argv[1:]]
    from rnnlab.cli import main
    main()
""")


@pytest.mark.slow
@pytest.mark.parametrize("args, imported", [(["--help"], False), (["tracking=none", *FAST], False),
                                            ([*FAST], True)])
def test_mlflow_is_imported_only_when_tracking(tmp_path, seeded, args, imported):
    cwd = seeded(tmp_path) if imported else tmp_path     # a tracked run: into an existing store
    out = subprocess.run([sys.executable, "-c", IMPORTS_MLFLOW, *args], cwd=cwd, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert f"MLFLOW_IMPORTED={imported}" in out.stderr, out.stderr


@pytest.mark.slow
def test_third_party_plugin_through_entry_points(tmp_path):
    """A package that declares an ``rnnlab.cells`` entry point is listed and selectable."""
    pkg = tmp_path / "plugin"
    (pkg / "tinycell").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "rnnlab-tinycell"
        version = "0.1"
        [project.entry-points."rnnlab.cells"]
        tinyrnn = "tinycell:TinyRNN"
    """))
    (pkg / "tinycell" / "__init__.py").write_text(textwrap.dedent("""
        from rnnlab.cells import RNN

        class TinyRNN(RNN):
            '''An RNN under another name: the plugin only has to follow the cell interface.'''
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(pkg)], check=True, capture_output=True)
    extra = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}
    listing = cli(["--plugins"], tmp_path, PYTHONPATH=extra["PYTHONPATH"])
    assert "tinyrnn" in listing.stdout
    out = cli(["tracking=none", "cell=tinyrnn", "cell.hidden_size=8", *FAST[:5]], tmp_path,
              PYTHONPATH=extra["PYTHONPATH"])
    assert out.returncode == 0, out.stderr
    ckpt = load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    assert ckpt.meta["model"]["cell"] == "tinyrnn" and ckpt.meta["model"]["hidden_size"] == 8
