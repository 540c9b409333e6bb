"""A randomized fault test against the real command line (issue 13).

Runs tracked into a new SQLite store are sent SIGINT, SIGTERM, SIGHUP, a double SIGINT or SIGKILL at a
random moment of their life: launch (imports, Hydra, store creation, the run's set-up), a training step,
an evaluation or a checkpoint write, the final report. After each one:

* the store opens and accepts a new run;
* no run is RUNNING without a live process behind it — a SIGKILLed run may be, until resume settles it
  (``resume=<run id>`` closes it KILLED), or it shows as stale;
* the last checkpoint loads;
* resuming reaches the uninterrupted run's final parameters and final loss bit for bit.

``RNNLAB_FAULT_RUNS`` (default 5, each fault once) sets how many runs; ``RNNLAB_FAULT_SEED`` the seed of the draws. A soak:
``RNNLAB_FAULT_RUNS=40 python -m pytest tests/test_faults.py -q -s`` prints the moment each run covered.
Each run is a test of its own (its draws seeded by the seed and its number).
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rnnlab import checkpoint as ckpt_io

from test_cli import cli, env

STEPS = 120
ARGS = ["cell=rnn", "cell.hidden_size=32", f"steps={STEPS}", "eval_every=20", "checkpoint_every=3", "log_every=1",
        "sample_every=60", "num_samples=2", "report_samples=20"]
RUNS = int(os.environ.get("RNNLAB_FAULT_RUNS", "5"))   # 5: each fault once
SEED = int(os.environ.get("RNNLAB_FAULT_SEED", "0"))
FAULTS = ["SIGINT", "SIGTERM", "SIGHUP", "double SIGINT", "SIGKILL"]


class Watched:
    """The CLI in a subprocess, its output read by a thread (so the moment of a signal is known)."""

    def __init__(self, args, cwd):
        self.cwd = cwd
        self.proc = subprocess.Popen([sys.executable, "-m", "rnnlab", *args], cwd=cwd, env=env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, text, timeout=120):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None and not self.reader.is_alive():
                return False
            time.sleep(0.002)
        return False

    def moment(self) -> str:
        """Where the run is, from its output and its files: a label of the moment of the signal."""
        store = self.cwd / "mlflow.db"
        if list(self.cwd.glob("mlflow.db.creating-*")):
            return "store creation"
        text = list(self.lines)
        steps = [line for line in text if "][rnnlab][" in line and f"/{STEPS}  train_loss" in line]
        if any("finished in" in line for line in text):
            return "summary and exit"
        if any("final_samples" in line or "test_nll" in line for line in text) or \
                (steps and f"step {STEPS}/{STEPS}" in steps[-1]):
            return "final report and model logging"
        if steps:
            k = int(steps[-1].split("step ")[1].split("/")[0])
            where = "evaluation" if k % 20 == 0 else "checkpoint write" if k % 3 == 0 else "step"
            return f"{where} after step {k}"
        if any("CharLM(" in line for line in text):
            return "run set-up (tracker start)"
        if not store.exists():
            return "launch (imports, Hydra) before the store"
        return "launch, store created"

    def send(self, fault: str, rng):
        if fault == "double SIGINT":
            self.proc.send_signal(signal.SIGINT)
            time.sleep(float(rng.uniform(0, 0.05)))
            self.proc.send_signal(signal.SIGINT)
        else:
            self.proc.send_signal(getattr(signal, fault))

    def finish(self, case, timeout=180):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{case}: the process hung\n{''.join(self.lines)[-3000:]}") from None
        self.reader.join(timeout=10)
        return "".join(self.lines)


def runs_of(uri):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rnnlab")
    return client, (client.search_runs([exp.experiment_id], max_results=1000) if exp else [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("reference")
    out = cli([*ARGS, "tracking=none"], cwd)
    assert out.returncode == 0, out.stderr
    (run,) = (cwd / "outputs").glob("*/*")
    return ckpt_io.load(run / "checkpoints" / "last.npz"), out.stdout + out.stderr


def draw(rng, i):
    """(fault, moment kind, target) of the i-th run: every fault and every kind come round."""
    fault = FAULTS[i % len(FAULTS)] if i < len(FAULTS) else FAULTS[int(rng.integers(len(FAULTS)))]
    kind = ["launch", "step", "step", "end"][int(rng.integers(4))]
    if kind == "launch":
        return fault, kind, float(rng.uniform(0.0, 6.0))
    if kind == "step":
        return fault, kind, int(rng.integers(1, STEPS))
    return fault, kind, float(rng.uniform(0.0, 0.6))


@pytest.mark.slow
@pytest.mark.parametrize("i", range(RUNS))
def test_random_faults_lose_nothing_and_leave_nothing_stuck(tmp_path, reference, i):
    """Run i of RUNS, its draws from its own generator (seeded by SEED and i): the runs are independent
    tests, which pytest-xdist spreads over its workers."""
    ref_ckpt, ref_out = reference
    rng = np.random.default_rng([SEED, i])
    t_start = time.time()
    fault, kind, target = draw(rng, i)
    cwd = tmp_path / f"run{i}"
    cwd.mkdir()
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    w = Watched(ARGS, cwd)
    if kind == "launch":
        time.sleep(target)
    elif kind == "step":
        w.wait_for(f"step {target}/{STEPS}  train_loss")
        time.sleep(float(rng.uniform(0, 0.02)))
    else:
        w.wait_for(f"step {STEPS}/{STEPS}  val_nll")
        time.sleep(target)
    moment = w.moment() if w.proc.poll() is None else "after the process ended"
    w.send(fault, rng) if w.proc.poll() is None else None
    out = w.finish(f"run {i}: {fault} at {moment}")
    code = w.proc.returncode
    case = f"run {i}: {fault} at {moment} (exit {code})"
    sig = signal.SIGKILL if fault == "SIGKILL" else signal.SIGINT if "SIGINT" in fault else getattr(signal, fault)
    assert code in (0, 128 + sig, -sig), f"{case}\n{out[-3000:]}"
    if code not in (-signal.SIGKILL,) and moment not in ("launch (imports, Hydra) before the store",):
        assert "Traceback" not in out, f"{case}\n{out[-3000:]}"

    # the store opens and accepts a new run (created now if the kill came before it existed)
    from rnnlab.tracking import connect
    client, _ = connect(uri)
    exp = client.get_experiment_by_name("rnnlab") or client.get_experiment(client.create_experiment("rnnlab"))
    probe = client.create_run(exp.experiment_id, run_name="probe")
    client.set_terminated(probe.info.run_id, "FINISHED")

    # no RUNNING run without a live process (a SIGKILLed one: gone, to be settled by resume)
    from rnnlab.tracking.store import process_state
    _, runs = runs_of(uri)
    running = [r for r in runs if r.info.status == "RUNNING"]
    if fault != "SIGKILL":
        assert not running, f"{case}: left RUNNING\n{out[-3000:]}"
    assert all(process_state(r) == "gone" for r in running), case

    # the last checkpoint loads; resume reaches the uninterrupted run bit for bit
    folders = list((cwd / "outputs").glob("*/*/checkpoints/last.npz"))
    if not folders:
        assert not running or fault == "SIGKILL", case
        return
    (last,) = folders
    k = ckpt_io.load(last).step
    stale = [r for r in running if r.data.tags.get("rnnlab.checkpoint_dir") == str(last.parent.resolve())]
    source = stale[0].info.run_id if stale else str(last)
    if k >= STEPS:  # stopped after its last step: nothing to resume, the checkpoint is the final one
        resumed_ckpt = ckpt_io.load(last)
    else:
        again = cli([*ARGS, f"resume={source}"], cwd)
        assert again.returncode == 0, f"{case}: resume={source}\n{again.stderr[-3000:]}"
        resumed_dir = max((cwd / "outputs").glob("*/*"), key=lambda p: p.stat().st_mtime)
        resumed_ckpt = ckpt_io.load(resumed_dir / "checkpoints" / "last.npz")
        text = again.stdout + again.stderr
        final = [line for line in text.splitlines() if "final val_nll" in line]
        ref_final = [line for line in ref_out.splitlines() if "final val_nll" in line]
        assert final and final[-1].split("final val_nll")[1].split(" nats")[0] == \
            ref_final[-1].split("final val_nll")[1].split(" nats")[0], case
        _, runs = runs_of(uri)
        assert not [r for r in runs if r.info.status == "RUNNING"], f"{case}: resume left a run RUNNING"
    assert resumed_ckpt.step == STEPS
    for name, value in ref_ckpt.params.items():
        np.testing.assert_array_equal(resumed_ckpt.params[name], value, err_msg=f"{case}: {name}")
    print(f"\n{case}: {time.time() - t_start:.0f}s")
