"""Resume through the real CLI: the checkpoint's whole config comes back with the overrides on top
(issue 14.1), the best checkpoint survives resumes (14.2), and what would silently do the wrong thing
is refused (issue 13.5: another optimizer's state, another number of text streams, changed data)."""

import re

import numpy as np
import pytest

from rnnlab import checkpoint as ckpt_io

from test_cli import cli, run_dir

SMALL = ["tracking=none", "cell.hidden_size=16", "eval_every=10", "sample_every=0", "report_samples=0"]


def trained(tmp_path, *args):
    out = cli([*SMALL, *args], tmp_path)
    assert out.returncode == 0, out.stderr
    return run_dir(tmp_path) / "checkpoints", out.stdout + out.stderr


@pytest.mark.slow
def test_resume_takes_the_checkpoint_config_and_lists_the_overrides(tmp_path):
    ckpts, _ = trained(tmp_path, "cell=gru", "steps=30", "lr=0.01")
    out = cli(["tracking=none", f"resume={ckpts / 'last.npz'}", "steps=50"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "resuming with the checkpoint's config, changed: steps 30 → 50" in out.stdout + out.stderr
    last = ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "last.npz")
    assert last.step == 50 and last.meta["model"]["cell"] == "gru" and last.meta["model"]["hidden_size"] == 16
    assert last.meta["config"]["lr"] == 0.01 and last.meta["config"]["optimizer"]["lr"] == 0.01
    out = cli(["tracking=none", f"resume={ckpts / 'last.npz'}", "steps=40", "lr=0.002"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "changed: steps 30 → 40, lr 0.01 → 0.002" in out.stdout + out.stderr
    assert ckpt_io.load(run_dir(tmp_path) / "checkpoints" / "last.npz").meta["config"]["optimizer"]["lr"] == 0.002


@pytest.mark.slow
def test_resume_refuses_another_optimizers_state(tmp_path):
    ckpts, _ = trained(tmp_path, "cell=rnn", "steps=10")
    for other in ("rmsprop", "momentum"):
        out = cli(["tracking=none", f"resume={ckpts / 'last.npz'}", "steps=20", f"optimizer={other}"], tmp_path)
        assert out.returncode == 2, out.stderr
        assert "the checkpoint holds the state of the optimizer adam (buffers m, v)" in out.stderr
        assert f"this run uses {other}" in out.stderr and "resume with optimizer=adam" in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_resume_refuses_another_number_of_text_streams(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 80)
    ckpts, _ = trained(tmp_path, "cell=rnn", "steps=10", "data=text", f"data.path={text}", "data.seq_len=8",
                       "batch_size=4")
    out = cli(["tracking=none", f"resume={ckpts / 'last.npz'}", "steps=20", "batch_size=8"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert "carries the hidden state of 4 text streams (batch_size=4); resume with batch_size=4" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_resume_refuses_changed_data(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"name{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(300)) + "\n")
    ckpts, _ = trained(tmp_path, "cell=rnn", "steps=10", f"data.path={names}")
    names.write_text(names.read_text() + "zed\n")
    out = cli(["tracking=none", f"resume={ckpts / 'last.npz'}", "steps=20"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert "the data differ from the checkpoint's" in out.stderr and "the splits would silently differ" in out.stderr


@pytest.mark.slow
def test_the_best_checkpoint_survives_a_resume_that_never_improves(tmp_path):
    ckpts, first = trained(tmp_path, "cell=rnn", "steps=40", "optimizer=sgd", "lr=0.5", "data.test_fraction=0.1")
    best_before = ckpt_io.load(ckpts / "best.npz")
    # a learning rate far too large: the resumed part only gets worse
    out = cli(["tracking=none", f"resume={ckpts / 'last.npz'}", "steps=60", "lr=30"], tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    resumed = run_dir(tmp_path) / "checkpoints"
    best_after = ckpt_io.load(resumed / "best.npz")
    for name, value in best_before.params.items():
        np.testing.assert_array_equal(best_after.params[name], value, err_msg=name)

    def figure(output, what):
        return re.search(rf"{what} ([0-9.]+)", output).group(1)
    # the summary's best, and the test loss measured with the best parameters, are the first run's
    assert figure(text, "best") == figure(first, "best")
    assert figure(text, "test_nll") == figure(first, "test_nll")
    assert float(figure(text, "final val_nll")) > float(figure(first, "best"))
