import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The reference corpora beside the checkout (../shared/data); never copied into the project.
_CANDIDATES = [os.environ.get("RNNLAB_SHARED_DATA"), ROOT.parent / "shared" / "data",
               ROOT.parent.parent / "shared" / "data", "/work/shared/data"]
SHARED_DATA = next((Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), ROOT.parent / "shared" / "data")


# In CI (CI=true) every optional component is installed by .ci/run: a missing one is a failure there,
# never a skip. On a developer's machine without an extra, the tests that need it are skipped, saying so.
STRICT = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, what: str):
    if not condition:
        if STRICT:
            pytest.fail(f"{what} is missing in CI")
        pytest.skip(f"{what} is not installed here (see README: the full test suite)")


def require_module(name: str, what: str):
    """Import ``name`` (e.g. a Hydra plugin of an optional extra), or skip/fail as ``require`` says."""
    import importlib.util
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    require(found, what)
    return __import__(name, fromlist=["_"])


def shared_file(name):
    """A reference corpus of ../shared/data: used where present (it is not the project's to ship)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"the reference corpus {path} is not present on this machine")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend, started and stopped by a test.

    Without MLflow's job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): it serves the GenAI jobs
    (LLM judges, trace roll-ups) that no test uses, and starting it costs eight more processes, each
    importing MLflow — 31–32 s of CPU for a start against 13–14 s without (measured on the 2-core CI
    machine), which the other tests of the parallel suite wait for."""

    def __init__(self, root):
        import subprocess
        import sys
        import time
        import urllib.request

        from rnnlab.tracking.store import UI_ARGS, UI_ENV
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
             "--artifacts-destination", str(root / "server-artifacts"), *UI_ARGS],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **UI_ENV})
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")

    def stop(self):
        import os
        import signal
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture
def mlflow_server(tmp_path):
    """A server of the test's own, for a test that stops it or needs it empty."""
    server = MlflowServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_mlflow_server(tmp_path_factory):
    """One server for the tests that each write and read only an experiment of their own name (one per
    test process of the parallel suite): a start costs ~14 s of CPU."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seeded(tmp_path_factory):
    """``seeded(folder, name="mlflow.db")`` → ``folder``, now holding an empty MLflow store ``name`` as rnnlab
    creates one (``ensure_sqlite_store``), copied from one made once per test process. MLflow's migrations
    make a new store cost ~3 s on an idle 2-core machine and 5–11 s while the parallel suite runs. For tests
    whose subject is not a new store: the fault test (whose signals may fall in a store's creation), the README's
    commands and the parallel launchers' sweeps start without one."""
    from rnnlab.tracking.store import ensure_sqlite_store
    template = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    ensure_sqlite_store(template)

    def seed(folder, name="mlflow.db"):
        shutil.copyfile(template, Path(folder) / name)
        return folder
    return seed


CHROMIUM = "/usr/bin/chromium"   # Debian's Chromium, which .ci/run installs


def launch_chromium(playwright):
    """Headless Chromium as this machine allows it: no sandbox (root), and none of the background
    connections that the closed network would refuse."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
