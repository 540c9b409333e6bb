"""The tracking package's pure parts, without a store: where a store is, how params are flattened, the
sweep id. (Runs tracked for real are in test_cli, test_sweeps and test_reliability.)"""

import subprocess
import sys
from pathlib import Path

import pytest

from rnnlab.config import ConfigError
from rnnlab.tracking import check_reachable, flatten, resolve_uri, sweep_id, ui_command
from rnnlab.tracking.store import connect


def test_uris_are_resolved_once_against_the_launch_directory(tmp_path):
    assert resolve_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert resolve_uri("sqlite:///runs/x.db", tmp_path) == f"sqlite:///{tmp_path.resolve() / 'runs' / 'x.db'}"
    assert resolve_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_uri("team.db", tmp_path) == f"sqlite:///{tmp_path.resolve() / 'team.db'}"
    assert resolve_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert ui_command("http://h:1") == "open http://h:1"
    assert ui_command("sqlite:////a/m.db") == ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri "
                                               "sqlite:////a/m.db --host 127.0.0.1 --port 5000 --workers 1")


def test_a_missing_store_and_a_dead_server_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"no MLflow store at sqlite:///.*nothing\.db"):
        connect(str(tmp_path / "nothing.db"), must_exist=True)
    with pytest.raises(ConfigError, match=r"the MLflow tracking server http://127\.0\.0\.1:9 is unreachable"):
        check_reachable("http://127.0.0.1:9", timeout=2)


def test_params_are_flattened_to_dotted_keys():
    assert flatten({"a": {"b": 1, "c": [2, {"d": 3}]}, "e": [], "f": None}) == \
        {"a.b": 1, "a.c.0": 2, "a.c.1.d": 3, "e": [], "f": None}


def test_a_sweep_id_depends_on_where_and_when_it_was_launched(tmp_path):
    a = sweep_id(tmp_path, "multirun/2026-01-01/10-00-00")
    assert a == sweep_id(tmp_path / ".", "multirun/2026-01-01/10-00-00") and len(a) == 16
    assert a != sweep_id(tmp_path, "multirun/2026-01-01/10-00-01")
    assert a != sweep_id(tmp_path / "other", "multirun/2026-01-01/10-00-00")


def test_importing_the_tracking_package_does_not_import_mlflow():
    code = "import sys, rnnlab.tracking, rnnlab.runner; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"
