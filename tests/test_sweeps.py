"""Sweeps against the real components: Hydra multirun with the basic, joblib and Ray launchers, the
Optuna sweeper, MLflow parent/child runs, the compare command, and the MLflow UI in headless Chromium."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CHROMIUM, launch_chromium, require, require_module
from test_cli import cli, env

SMALL = ["steps=30", "eval_every=10", "sample_every=30", "num_samples=2", "log_every=10",
         "cell.hidden_size=16"]


def store(cwd):
    from mlflow.tracking import MlflowClient
    return MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")


def sweep_runs(client, experiment="rnnlab"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("rnnlab.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("rnnlab.role") == "trial"]
    return exp, parents, trials, runs


def check_sweep(client, n_trials, steps=30, experiment="rnnlab"):
    """One parent, ``n_trials`` finished children under it, every metric of every step logged."""
    exp, parents, trials, runs = sweep_runs(client, experiment)
    assert len(parents) == 1 and len(runs) == n_trials + 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(trials) == n_trials
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert t.data.tags["rnnlab.sweep_id"] == parent.data.tags["rnnlab.sweep_id"]
        assert t.info.status == "FINISHED"
        for key in ("train_loss", "grad_norm", "chars_per_sec"):
            assert len(client.get_metric_history(t.info.run_id, key)) == steps, key
    overrides = {t.data.tags["overrides"] for t in trials}
    assert len(overrides) == n_trials  # each trial carries the overrides that distinguish it
    best = min(t.data.metrics["best_val_nll"] for t in trials)   # the best model, not the last one
    assert client.get_run(parent.info.run_id).data.metrics["best_val_nll"] == pytest.approx(best)
    return parent, trials


@pytest.mark.slow
def test_multirun_nests_trials_under_one_parent(tmp_path, seeded):
    out = cli(["-m", "cell=rnn,gru", "lr=0.003,0.01", *SMALL], seeded(tmp_path))
    assert out.returncode == 0, out.stderr
    parent, trials = check_sweep(store(tmp_path), 4)
    text = out.stdout + out.stderr
    assert f"python -m rnnlab.compare sweep={parent.info.run_id}" in text
    # one id: the sweep's lines name the parent run, never a second id
    assert parent.data.tags["rnnlab.sweep_id"] not in text
    assert f"sweep {parent.info.run_id} (its MLflow parent run)" in text

    cmp = cli([f"sweep={parent.info.run_id}", f"plot={tmp_path / 'curves.png'}"], tmp_path,
              module="rnnlab.compare")
    assert cmp.returncode == 0, cmp.stderr
    lines = [line for line in cmp.stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["#", "cell.name", "lr"] and "optimizer.lr" not in header  # varying, once
    assert "chars/s" in header and "cell.hidden_size" not in header                # constant: hidden
    column = {name: [line.split("|")[header.index(name) + 1].strip() for line in lines[1:]] for name in header}
    best = [float(v) for v in column["best_val_nll"]]
    assert len(best) == 4 and best == sorted(best)               # sorted by the best model of each trial
    final = [float(v) for v in column["final val_nll"]]
    assert all(b <= f for b, f in zip(best, final))
    # chars/s and seconds measured the same way as the run's summary: chars/s × seconds = characters
    by_id = {t.info.run_id[:8]: t for t in trials}
    for run_id, speed, seconds in zip(column["run id"], column["chars/s"], column["train s"]):
        m = by_id[run_id].data.metrics
        assert float(speed.replace(",", "")) == pytest.approx(m["train_chars"] / m["train_seconds"], abs=1)
        assert float(seconds) == pytest.approx(m["train_seconds"], abs=0.05)
        assert m["train_chars"] >= 30 * 32 * 4   # 30 steps of 32 names, each 3+ letters and its end
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same curves against wall-clock minutes (for time budgets): from the run's start to each evaluation
    minutes = cli([f"sweep={parent.info.run_id}", "x=minutes", f"plot={tmp_path / 'minutes.png'}"], tmp_path,
                  module="rnnlab.compare")
    assert minutes.returncode == 0, minutes.stderr
    assert (tmp_path / "minutes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rnnlab.compare import curve
    for t in trials:
        row = {"id": t.info.run_id, "start": t.info.start_time}
        steps, losses = curve(store(tmp_path), row)
        xs, same = curve(store(tmp_path), row, "minutes")
        assert same == losses and len(xs) == len(steps) > 0 and xs == sorted(xs)
        assert 0 <= xs[0] and xs[-1] <= (t.info.end_time - t.info.start_time) / 60000


@pytest.mark.slow
def test_parallel_joblib_sweep_loses_nothing(tmp_path):
    require_module("hydra_plugins.hydra_joblib_launcher", "the `sweep` extra (joblib launcher)")
    out = cli(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "cell=rnn,gru,lstm",
               "seed=0,1", *SMALL], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Joblib.Parallel(n_jobs=2" in out.stdout + out.stderr
    check_sweep(store(tmp_path), 6)


@pytest.mark.slow
def test_optuna_preset_survives_a_diverged_trial(tmp_path, seeded):
    require_module("hydra_plugins.hydra_optuna_sweeper", "the `sweep` extra (Optuna sweeper)")
    # the preset, with a budget of 4 trials and a search space where one learning rate explodes
    out = cli(["experiment=optuna", "hydra.sweeper.n_trials=4", "optimizer=sgd",
               "hydra.sweeper.params.lr='choice(1e300,0.3)'", *SMALL], seeded(tmp_path))
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    client = store(tmp_path)
    exp, parents, trials, runs = sweep_runs(client, "optuna")
    assert len(parents) == 1 and len(trials) == 4  # the study ran all its trials
    failed = [t for t in trials if t.info.status == "FAILED"]
    finished = [t for t in trials if t.info.status == "FINISHED"]
    assert failed and finished  # (deterministic: the preset's TPE sampler is seeded)
    assert all(t.data.params["optimizer.lr"] == "1e+300" for t in failed)
    assert text.count("this trial reports val_nll=1e+06 to the sweep") == len(failed)
    results = next((tmp_path / "multirun").glob("*/*/optimization_results.yaml")).read_text()
    best = min(t.data.metrics["val_nll"] for t in finished)
    assert f"best_value: {best}" in results and "lr: 0.3" in results


@pytest.mark.slow
def test_ray_launcher_on_a_local_cluster(tmp_path):
    require_module("hydra_plugins.hydra_ray_launcher", "the `ray` extra (Ray launcher)")
    from conftest import free_port
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    port = free_port()
    ray_env = env(RAY_ADDRESS=f"127.0.0.1:{port}", RAY_USAGE_STATS_ENABLED="0")
    temp = Path(f"/tmp/rnnlab-ray-{port}")  # short: Ray's socket paths must fit in 107 bytes
    started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                              f"--temp-dir={temp}"], env=ray_env, capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        out = subprocess.run([sys.executable, "-m", "rnnlab", "-m", "hydra/launcher=ray_cluster",
                              "cell=rnn,gru", *SMALL], cwd=tmp_path, env=ray_env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "Ray Launcher is launching 2 jobs" in out.stdout + out.stderr
        check_sweep(store(tmp_path), 2)
    finally:
        subprocess.run([ray, "stop", "--force"], env=ray_env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_named_experiments_compose_from_conf(tmp_path):
    out = cli(["experiment=course", "--cfg", "job"], tmp_path)
    assert out.returncode == 0, out.stderr
    import yaml
    cfg = yaml.safe_load(out.stdout)
    assert cfg["cell"] == {"name": "rnn", "hidden_size": 50, "num_layers": 1, "dropout": 0.0,
                           "embedding_size": 0, "locked_dropout": False, "weight_dropout": 0.0,
                           "embedding_dropout": 0.0, "ar": 0.0, "tar": 0.0}
    assert cfg["optimizer"]["name"] == "sgd" and cfg["lr"] == 0.01 and cfg["batch_size"] == 1
    assert cfg["clip"] == {"name": "value", "max_value": 5.0} and cfg["reduction"] == "sum"
    assert cfg["tracking"]["experiment"] == "course" and cfg["data"]["name"] == "dinos"
    names = yaml.safe_load(cli(["experiment=names", "data.path=names.txt", "--cfg", "job"], tmp_path).stdout)
    assert names["data"]["kind"] == "lines" and names["data"]["test_fraction"] == 0.03122
    assert round(0.03122 * 32033) == 1000 and names["schedule"]["name"] == "cosine" and names["cell"]["name"] == "lnlstm"
    assert names["cell"]["num_layers"] == 2 and names["cell"]["weight_dropout"] == 0.3 and names["time_budget"] == 20
    assert names["mc_samples"] == 30   # validation and test by Monte Carlo dropout
    text = yaml.safe_load(cli(["experiment=shakespeare", "data.path=t.txt", "--cfg", "job"], tmp_path).stdout)
    assert text["data"]["kind"] == "text" and text["data"]["seq_len"] == 100 and text["batch_size"] == 32
    assert text["cell"]["name"] == "lnlstm" and text["time_budget"] == 30
    hydra = yaml.safe_load(cli(["experiment=compare_cells", "--cfg", "hydra"], tmp_path).stdout)
    assert hydra["hydra"]["mode"] == "MULTIRUN"
    assert hydra["hydra"]["sweeper"]["params"] == {"cell": "rnn,lstm,gru", "seed": "0,1,2"}
    bad = cli(["experiment=cours"], tmp_path)
    assert bad.returncode == 2 and "Did you mean experiment=course?" in bad.stderr




@pytest.mark.slow
def test_mlflow_ui_shows_the_sweep_in_a_browser(tmp_path, shared_mlflow_server):
    """A real sweep into a real `mlflow server`, looked at in headless Chromium: the runs page groups
    the trials under their parent; the compare page shows the varied parameters against val_nll."""
    sync_playwright = require_module("playwright.sync_api", "the `browser` extra (Playwright)").sync_playwright
    require(Path(CHROMIUM).exists(), "Debian's chromium (apt-get install chromium)")
    out = cli(["-m", "cell=rnn,gru", "lr=0.003,0.01", *SMALL, f"tracking.uri={shared_mlflow_server.uri}",
               "tracking.experiment=uicheck"], tmp_path)
    assert out.returncode == 0, out.stderr
    from mlflow.tracking import MlflowClient
    client = MlflowClient(shared_mlflow_server.uri)
    exp, parents, trials, _ = sweep_runs(client, "uicheck")
    (parent,) = parents
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{shared_mlflow_server.uri}/#/experiments/{exp.experiment_id}/runs", timeout=60000)
            row = page.get_by_text(parent.info.run_name[:40]).first
            row.wait_for(timeout=60000)
            for t in trials:  # nested: hidden until the parent is expanded
                assert not page.get_by_text(t.info.run_name, exact=True).is_visible()
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
            for t in trials:
                page.get_by_text(t.info.run_name, exact=True).first.wait_for(timeout=30000)
            page.screenshot(path=str(tmp_path / "runs.png"))

            ids = json.dumps([t.info.run_id for t in trials])
            page.goto(f"{shared_mlflow_server.uri}/#/compare-runs?runs={ids}"
                      f"&experiments={json.dumps([exp.experiment_id])}", timeout=60000)
            page.get_by_text("val_nll").first.wait_for(timeout=60000)
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
            body = page.inner_text("body")
        finally:
            browser.close()
    for needle in ("cell.name", "lr", "val_nll", "rnn", "gru"):
        assert needle in body, needle
    for t in trials:
        assert t.info.run_name in body
        assert f"{t.data.metrics['val_nll']:.4g}"[:5] in body or \
            str(round(t.data.metrics["val_nll"], 3))[:5] in body
