"""Faults and stops, injected for real: signals to the CLI in a subprocess, kill -9 during checkpoint
writes, NaN losses, a tracking server that is not there, corrupt checkpoints; fuzzed loaders."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rnnlab import checkpoint as ckpt_io
from rnnlab.data import DataError, LineDataset, TextDataset, read_text

from test_cli import cli, env, run_dir

SLOW_RUN = ["tracking=none", "cell=rnn", "cell.hidden_size=16", "eval_every=50", "sample_every=0",
            "log_every=5", "num_samples=2"]


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "rnnlab", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc, text, timeout=120):
    """Read the process's output until ``text`` appears; return everything read."""
    seen, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never appeared in:\n{''.join(seen)}")


def final_params(path):
    return ckpt_io.load(path).params


def resume_equals_uninterrupted(args, checkpoint, steps, cwd):
    """Resume from ``checkpoint`` up to ``steps``, run the same config from scratch to ``steps``, and
    check that both end with bitwise equal parameters."""
    resumed = cli([*args, f"steps={steps}", f"resume={checkpoint}"], cwd)
    assert resumed.returncode == 0, resumed.stderr
    resumed_dir = run_dir(cwd)
    resumed_ckpt = ckpt_io.load(resumed_dir / "checkpoints" / "last.npz")
    assert resumed_ckpt.step == steps
    straight = cli([*args, f"steps={steps}"], cwd)
    assert straight.returncode == 0, straight.stderr
    assert run_dir(cwd) != resumed_dir
    for name, value in final_params(run_dir(cwd) / "checkpoints" / "last.npz").items():
        np.testing.assert_array_equal(resumed_ckpt.params[name], value, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_a_checkpoint_and_resume_is_exact(tmp_path, sig, code):
    # a cosine schedule over the whole run: the resumed run must follow it from where it stopped
    args = [*SLOW_RUN, "steps=1500", "checkpoint_every=1000", "schedule=cosine", "schedule.warmup=10"]
    proc = start(args, tmp_path)
    wait_for(proc, "step 20/1500")
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out
    assert f"stopped by {signal.Signals(sig).name} after step" in out and "resume with" in out
    assert "Traceback" not in out
    stopped = run_dir(tmp_path) / "checkpoints" / "last.npz"
    k = ckpt_io.load(stopped).step
    assert 20 <= k < 1500

    resume_equals_uninterrupted(args, stopped, 1500, tmp_path)


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    """A checkpoint written every step, SIGKILL at arbitrary moments: the file always loads, and a
    resume from it ends exactly where an uninterrupted run ends."""
    args = [*SLOW_RUN, "steps=3000", "checkpoint_every=1", "cell.hidden_size=96"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = start(args, tmp_path)
        wait_for(proc, "step 10/3000")
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.kill()
        proc.wait()
        path = run_dir(tmp_path) / "checkpoints" / "last.npz"
        ckpt = ckpt_io.load(path)  # never half-written
        assert ckpt.step >= 10
    resume_equals_uninterrupted(args, path, ckpt.step + 5, tmp_path)


@pytest.mark.slow
def test_nan_stops_with_the_step_and_marks_the_run_failed(tmp_path, seeded):
    good = cli(["cell=rnn", "cell.hidden_size=16", "steps=20", "eval_every=10", "checkpoint_every=10",
                "optimizer=sgd", "lr=0.05"], seeded(tmp_path))
    assert good.returncode == 0, good.stderr
    good_path = run_dir(tmp_path) / "checkpoints" / "last.npz"
    before = good_path.read_bytes()
    # resume the good run with an absurd learning rate: the first step overflows
    bad = cli(["cell=rnn", "cell.hidden_size=16", "steps=40", "eval_every=10", "optimizer=sgd",
               "lr=1e300", "clip=none", f"resume={good_path}"], tmp_path)
    assert bad.returncode == 3
    assert "training diverged at step 21: the training loss is nan" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert good_path.read_bytes() == before and ckpt_io.load(good_path).step == 20
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id],
                              order_by=["start_time DESC"])
    assert runs[0].info.status == "FAILED"
    assert "training diverged at step 21" in runs[0].data.tags["rnnlab.stop_reason"]
    assert runs[1].info.status == "FINISHED"


@pytest.mark.slow
def test_a_diverged_trial_does_not_stop_the_sweep(tmp_path, seeded):
    out = cli(["-m", "cell=rnn", "cell.hidden_size=16", "steps=20", "eval_every=10", "optimizer=sgd",
               "clip=none", "lr=1e300,0.1"], seeded(tmp_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "this trial reports val_nll=1e+06 to the sweep" in text
    assert "final val_nll" in text  # the second trial ran to the end


def test_unreachable_tracking_server_fails_fast(tmp_path):
    t0 = time.time()
    out = cli(["tracking.uri=http://127.0.0.1:9", "steps=5"], tmp_path)
    assert time.time() - t0 < 60
    assert out.returncode == 2
    assert "the MLflow tracking server http://127.0.0.1:9 is unreachable" in out.stderr
    assert "Traceback" not in out.stderr


def test_generate_refuses_bad_checkpoints(tmp_path, seeded):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    out = cli([f"checkpoint={corrupt}"], tmp_path, module="rnnlab.generate")
    assert out.returncode == 2 and "is not a readable rnnlab checkpoint" in out.stderr
    text = tmp_path / "text.npz"
    text.write_text("hello")
    out = cli([f"checkpoint={text}"], tmp_path, module="rnnlab.generate")
    assert out.returncode == 2 and "is not an rnnlab checkpoint (not an .npz archive)" in out.stderr
    truncated = tmp_path / "truncated.npz"
    path, _ = small_checkpoint(tmp_path)
    truncated.write_bytes(path.read_bytes()[:200])
    out = cli([f"checkpoint={truncated}"], tmp_path, module="rnnlab.generate")
    assert out.returncode == 2 and "is not a readable rnnlab checkpoint" in out.stderr
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.zeros(3))
    out = cli([f"checkpoint={foreign}"], tmp_path, module="rnnlab.generate")
    assert out.returncode == 2 and "is not an rnnlab checkpoint" in out.stderr
    out = cli(["run=0123456789abcdef", "tracking.uri=sqlite:///x.db"], seeded(tmp_path, "x.db"), module="rnnlab.generate")
    assert out.returncode == 2 and "no MLflow run with id '0123456789abcdef'" in out.stderr
    out = cli([], tmp_path, module="rnnlab.generate")
    assert out.returncode == 2 and "give exactly one of checkpoint=<path> or run=<MLflow run id>" in out.stderr


def small_checkpoint(tmp_path):
    from rnnlab.data import Vocab
    from rnnlab.model import CharLM
    lm = CharLM(4, "gru", 3)
    vocab = Vocab(("\n", "a", "b", "c"))
    ck = ckpt_io.Checkpoint(params=lm.init_params(np.random.default_rng(0)),
                            meta={"step": 3, **ckpt_io.model_meta(lm, vocab, "lines")})
    return ckpt_io.save(tmp_path / "ck.npz", ck), lm


def test_checkpoint_round_trip_and_version(tmp_path):
    path, lm = small_checkpoint(tmp_path)
    back = ckpt_io.load(path)
    lm2, params, vocab = ckpt_io.restore_model(back)
    assert back.step == 3 and vocab.chars == ("\n", "a", "b", "c") and lm2.cell_name == "gru"
    future = tmp_path / "future.npz"
    meta = dict(back.meta, version=99)
    ckpt_io.save(future, ckpt_io.Checkpoint(params=back.params, meta=meta))
    with np.load(future) as z:  # save() stamps the current version; write a future one by hand
        arrays = dict(z)
    import json
    header = json.loads(arrays["meta"].tobytes())
    header["version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(future, **arrays)
    with pytest.raises(ckpt_io.CheckpointError, match="has checkpoint version 99; this rnnlab reads version 1"):
        ckpt_io.load(future)
    shapes = dict(back.params)
    shapes["Wy"] = np.zeros((2, 2), np.float32)
    ckpt_io.save(tmp_path / "bad.npz", ckpt_io.Checkpoint(params=shapes, meta=back.meta))
    with pytest.raises(ckpt_io.CheckpointError, match=r"parameter 'Wy' is float32\[2, 2\], the model needs"):
        ckpt_io.restore_model(ckpt_io.load(tmp_path / "bad.npz"))


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path, _ = small_checkpoint(tmp_path)
    with np.load(path) as z:
        arrays = dict(z)
    arrays["param/evil"] = np.array([{"x": 1}], dtype=object)
    np.savez(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(ckpt_io.CheckpointError, match="is not a readable rnnlab checkpoint"):
        ckpt_io.load(tmp_path / "pickled.npz")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_fuzz_data_loader_with_random_bytes(tmp_path, data):
    path = tmp_path / "fuzz.txt"
    path.write_bytes(data)
    for cls, opts in ((LineDataset, {}), (TextDataset, {"seq_len": 8})):
        try:
            ds = cls.from_file(path, **opts)
        except DataError:
            continue
        text = read_text(path)
        assert set(ds.vocab.chars[1:]) <= set(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrays=st.dictionaries(
    st.sampled_from(["meta", "param/Wy", "param/by", "param/l0.Wx", "optim/t", "state/0/0", "x"]),
    st.one_of(
        st.binary(max_size=64).map(lambda b: np.frombuffer(b, np.uint8)),
        st.lists(st.floats(allow_nan=True), max_size=8).map(lambda v: np.array(v, np.float64)),
        st.lists(st.integers(-5, 5), max_size=8).map(lambda v: np.array(v, np.int32)),
    ), max_size=6),
    junk=st.booleans())
def test_fuzz_checkpoint_loader_with_random_arrays(tmp_path, arrays, junk):
    path = tmp_path / "fuzz.npz"
    if junk:
        path.write_bytes(b"".join(a.tobytes() for a in arrays.values()))
    else:
        np.savez(path, **arrays)
    try:
        ck = ckpt_io.load(path)
        ckpt_io.restore_model(ck)
    except ckpt_io.CheckpointError:
        return
    raise AssertionError("random arrays made a usable checkpoint")


@pytest.mark.slow
def test_tracking_server_going_away_loses_nothing_local(tmp_path, mlflow_server):
    args = ["cell=rnn", "cell.hidden_size=16", "steps=300", "eval_every=25", "log_every=5",
            "checkpoint_every=50", "sample_every=100", f"tracking.uri={mlflow_server.uri}"]
    proc = start(args, tmp_path)
    wait_for(proc, "step 30/300")
    mlflow_server.stop()  # the server dies in the middle of the run
    try:
        out = proc.communicate(timeout=400)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the run hung after the server died:\n" + proc.communicate()[0][-5000:]) from None
    assert proc.returncode == 0, out
    assert f"MLflow tracking at {mlflow_server.uri} failed" in out
    assert "metric values could not be sent" in out and "The local checkpoints are intact" in out
    assert "Traceback" not in out
    ckpt = ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    assert ckpt.step == 300
    unsent = (run_dir(tmp_path) / "mlflow_unsent_metrics.jsonl").read_text().splitlines()
    import json
    steps = {json.loads(line)["step"] for line in unsent if '"train_loss"' in line}
    assert 300 in steps  # the metrics of the end of the run are kept locally


@pytest.mark.slow
def test_tracking_to_a_real_server(tmp_path, shared_mlflow_server):
    out = cli(["cell=gru", "cell.hidden_size=16", "steps=20", "eval_every=10",
               f"tracking.uri={shared_mlflow_server.uri}", "tracking.experiment=team"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"see it with: open {shared_mlflow_server.uri}" in out.stdout + out.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(shared_mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["cell.name"] == "gru"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 20
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")} == \
        {"checkpoints/last.npz", "checkpoints/best.npz"}


@pytest.mark.slow
def test_signal_marks_the_mlflow_run_killed(tmp_path, seeded):
    args = [a for a in SLOW_RUN if a != "tracking=none"] + ["steps=2000", "checkpoint_every=1000"]
    proc = start(args, seeded(tmp_path))
    wait_for(proc, "step 20/2000")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    assert run.info.status == "KILLED"
    assert run.data.tags["rnnlab.stop_reason"].startswith("stopped by SIGTERM after step")
    step = ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "last.npz").step
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == step  # every step's metrics
    assert "checkpoints/last.npz" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """Files may not grow past 60 KB (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG, as
    on a full disk): the checkpoint does not fit. One line, exit 3, no half-written file left."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
    args = [*SLOW_RUN, "steps=40", "checkpoint_every=10", "cell.hidden_size=64"]
    proc = subprocess.run([sys.executable, "-m", "rnnlab", *args, "hydra.job_logging.root.handlers=[console]"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rnnlab: error: cannot write") and "File too large" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    folder = run_dir(tmp_path) / "checkpoints"
    assert not list(folder.glob("*.npz")) and not list(folder.glob("*.tmp"))


@pytest.mark.slow
def test_a_run_never_overwrites_another_runs_checkpoints(tmp_path):
    first = cli(["tracking=none", "cell=rnn", "cell.hidden_size=8", "steps=10", "hydra.run.dir=shared"], tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "shared" / "checkpoints" / "last.npz").read_bytes()
    second = cli(["tracking=none", "cell=rnn", "cell.hidden_size=8", "steps=20", "hydra.run.dir=shared"], tmp_path)
    assert second.returncode == 2
    assert "its checkpoints belong to another run" in second.stderr and "Traceback" not in second.stderr
    assert (tmp_path / "shared" / "checkpoints" / "last.npz").read_bytes() == before


@pytest.mark.slow
def test_a_sweep_stopped_by_a_refused_trial_closes_its_parent_run(tmp_path, seeded):
    out = cli(["-m", "cell=rnn", "steps=5", "eval_every=5", "cell.hidden_size=8,0"], seeded(tmp_path))
    assert out.returncode == 2 and "cell.hidden_size must be an integer >= 1, got 0" in out.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rnnlab").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("rnnlab.role") == "sweep"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["rnnlab.stop_reason"] == ("the sweep stopped before its end: cell.hidden_size must be "
                                                      "an integer >= 1, got 0")
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_compare_shows_a_run_whose_process_is_gone_as_stale(tmp_path, seeded, capsys, monkeypatch):
    import socket
    from rnnlab.compare import main
    from rnnlab.tracking import connect
    client, uri = connect(f"sqlite:///{seeded(tmp_path, 'm.db') / 'm.db'}")
    exp = client.create_experiment("e")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    for name, pid in (("gone", dead.pid), ("alive", __import__("os").getpid())):
        run = client.create_run(exp, run_name=name, tags={"rnnlab.host": socket.gethostname(), "rnnlab.pid": str(pid)})
        client.log_metric(run.info.run_id, "val_nll", 2.0)
    monkeypatch.chdir(tmp_path)
    main(["experiment=e", f"tracking.uri={uri}"])
    out = capsys.readouterr().out
    rows = {line.split("|")[-2].strip(): line for line in out.splitlines() if line.startswith(("| 1", "| 2"))}
    statuses = sorted(line.split("|")[-3].strip() for line in rows.values())
    assert statuses == ["RUNNING", "STALE"]
    assert "1 STALE run(s)" in out and "python -m rnnlab resume=<run id>" in out


def test_a_signal_inside_a_log_write_prints_no_traceback(capfd):
    """A signal can arrive while a log handler is flushing its stream. Python's buffered streams are not
    reentrant, so a handler that logged would fail inside that flush and logging would print the error
    with a traceback (seen when SIGTERM landed during a step's log line). The stop is still recorded, and
    the user is told on standard error."""
    import io
    import logging

    from rnnlab.lifecycle import SignalStop
    stopper, written = SignalStop(), []

    class Raw(io.RawIOBase):          # the file under the buffered stream: the signal lands in its write
        def writable(self):
            return True

        def write(self, data):
            if not written:
                written.append(b"")
                stopper._handle(signal.SIGTERM, None)
            written.append(bytes(data))
            return len(data)

    handler = logging.StreamHandler(io.TextIOWrapper(io.BufferedWriter(Raw()), line_buffering=True))
    logger = logging.getLogger("rnnlab")
    saved = logger.disabled, logger.level      # earlier tests' runs may have configured the logger
    logger.disabled = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.warning("step 38/60  train_loss 2.1")
    finally:
        logger.removeHandler(handler)
        logger.disabled = saved[0]
        logger.setLevel(saved[1])
    err = capfd.readouterr().err
    assert stopper.received == signal.SIGTERM
    assert "Traceback" not in err and "Logging error" not in err, err
    assert "received SIGTERM: stopping after this step" in err
    assert b"".join(written).decode().startswith("step 38/60")
