"""The MLflow UI as a user meets it after a tracked run, in headless Chromium against a real
`mlflow server`: the printed link opens the experiment on its training runs (not on MLflow's GenAI
overview), the runs tell apart by name, the run page shows its datasets and registered model, the model
page its step, linked metrics and datasets. The screenshots are kept (RNNLAB_SCREENSHOTS=<dir> to copy
them out) to be looked at."""

import os
import shutil
from pathlib import Path

import pytest

from conftest import CHROMIUM, launch_chromium, require, require_module
from test_cli import cli

SMALL = ["steps=60", "eval_every=20", "sample_every=60", "num_samples=3", "cell.hidden_size=16",
         "report_samples=50"]


def hide_assistant(page):
    """Close MLflow's assistant panel, as a user does, so the screenshots show the pages (the UI
    remembers it)."""
    panel = page.get_by_text("MLflow Assistant").first
    try:
        panel.wait_for(timeout=20000)
        box = panel.bounding_box()
        buttons = page.locator("button").all()
        right = [b for b in buttons if (bb := b.bounding_box()) and abs(bb["y"] - box["y"]) < 20 and bb["x"] > box["x"]]
        max(right, key=lambda b: b.bounding_box()["x"]).click()   # the rightmost: close
    except Exception:  # noqa: BLE001 - a UI without the panel: nothing to close
        pass


@pytest.mark.slow
def test_the_mlflow_ui_opens_on_training_runs_with_datasets_and_the_model(tmp_path, shared_mlflow_server):
    sync_playwright = require_module("playwright.sync_api", "the `browser` extra (Playwright)").sync_playwright
    require(Path(CHROMIUM).exists(), "Debian's chromium (apt-get install chromium)")
    track = [f"tracking.uri={shared_mlflow_server.uri}", "tracking.experiment=newcomer"]
    first = cli([*SMALL, "data.test_fraction=0.1", "tracking.register=dinos", *track], tmp_path)
    assert first.returncode == 0, first.stderr
    second = cli([*SMALL, "cell=gru", "seed=2", *track], tmp_path)
    assert second.returncode == 0, second.stderr
    text = first.stdout + first.stderr
    link = text.split("see it with: open ")[1].split()[0]
    assert "workflowType=machine_learning" in link and "registered: models:/dinos/1" in text
    runs_link = text.split("the best first: ")[1].split()[0]
    assert "viewStateShareKey=rnnlab" in runs_link

    from mlflow.tracking import MlflowClient
    client = MlflowClient(shared_mlflow_server.uri)
    exp = client.get_experiment_by_name("newcomer")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.data.tags["cell"]: r for r in client.search_runs([exp.experiment_id])}
    lstm, gru = runs["lstm"], runs["gru"]
    assert lstm.info.run_name != gru.info.run_name
    (model,) = [m for m in client.search_logged_models([exp.experiment_id]) if m.source_run_id == lstm.info.run_id]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    pages = {}
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(link, timeout=60000)
            hide_assistant(page)
            # the experiment, from the printed link to all its runs: the runs table, the losses as columns
            page.goto(runs_link, timeout=60000)
            page.get_by_text(gru.info.run_name[:20]).first.wait_for(timeout=60000)
            page.get_by_text("best_val_nll").first.wait_for(timeout=30000)
            page.screenshot(path=str(shots / "1-experiment-runs.png"))
            pages["runs"] = page.inner_text("body")
            # the run, from the printed link
            page.goto(link, timeout=60000)
            page.get_by_text("Registered models").first.wait_for(timeout=60000)
            page.screenshot(path=str(shots / "2-run.png"), full_page=True)
            pages["run"] = page.inner_text("body")
            # the logged model
            page.goto(f"{shared_mlflow_server.uri}/#/experiments/{exp.experiment_id}/models/{model.model_id}"
                      "?workflowType=machine_learning", timeout=60000)
            page.get_by_text("best_val_nll").first.wait_for(timeout=60000)
            page.screenshot(path=str(shots / "3-model.png"), full_page=True)
            pages["model"] = page.inner_text("body")
            # its registered version
            page.goto(f"{shared_mlflow_server.uri}/#/models/dinos/versions/1?workflowType=machine_learning", timeout=60000)
            page.get_by_text("Inputs (5)").first.click(timeout=60000)
            page.get_by_text("temperature").first.wait_for(timeout=30000)
            page.screenshot(path=str(shots / "4-registered-model.png"), full_page=True)
            pages["version"] = page.inner_text("body")
        finally:
            browser.close()
            if os.environ.get("RNNLAB_SCREENSHOTS"):
                shutil.copytree(shots, os.environ["RNNLAB_SCREENSHOTS"], dirs_exist_ok=True)
    # the experiment opens on model training: runs, not the GenAI overview (traces, latency, tokens)
    assert "Run Name" in pages["runs"] and "Token Usage" not in pages["runs"] and "Latency" not in pages["runs"]
    assert lstm.info.run_name[:20] in pages["runs"] and gru.info.run_name[:20] in pages["runs"]
    for column in ("best_val_nll", "val_nll", "test_nll", "cell.name", "seed"):   # shown, not behind a menu
        assert column in pages["runs"], column
    first = pages["runs"].index(gru.info.run_name[:20]) < pages["runs"].index(lstm.info.run_name[:20])
    assert first == (gru.data.metrics["best_val_nll"] < lstm.data.metrics["best_val_nll"])   # the best first
    # the run: its name says what differs, its data (train, validation, test), its registered model
    assert "lstm-h16-adam-lr0.005 steps=60" in pages["run"] and "dinos.train" in pages["run"]
    assert "dinos" in pages["run"].split("Registered models")[1][:200]
    # the model: its metrics linked to the datasets they were measured on
    assert "dinos.validation" in pages["model"] and "best_val_nll" in pages["model"]
    # the registered version: its signature
    for column in ("prime", "temperature", "max_len"):
        assert column in pages["version"], column
