"""The LSTM's and GRU's hidden units split between two processes (rnnlab/split.py): the one-process results (loss,
gradients, final state; whole training runs with their optimizer state), a gradient check of the split
path itself, where it applies, and its faults — a worker that dies, Ctrl-C in the parent, a parent that
dies — none of which may hang or leave a process behind."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rnnlab import split
from rnnlab.cells.lstm import LSTM
from rnnlab.clipping import NormClip
from rnnlab.gradcheck import gradcheck
from rnnlab.model import CharLM
from rnnlab.registry import OPTIMIZERS

pytestmark = pytest.mark.skipif(not split.available(), reason="the unit split needs Linux on x86-64")

V, H = 7, 6


@pytest.fixture(autouse=True)
def _split_small_batches(monkeypatch):
    """Split even these small batches (a split pays only from ``MIN_SPLIT_WORK``: see test_when_a_split_pays)."""
    monkeypatch.setattr(CharLM, "MIN_SPLIT_WORK", 0)


def _batch(rng, T=6, B=5, lengths=(1, 6, 0, 3, 6)):
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array(lengths)).astype(float)
    return x, y, mask


def _pair(cell="lstm", **kw):
    one, two = CharLM(V, cell, H, dtype=np.float64, **kw), CharLM(V, cell, H, dtype=np.float64, threads=2, **kw)
    assert two.splits_units and not one.splits_units
    return one, two


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:      # a zombie (ended, not yet reaped) is not alive
        return f.read().split(")")[-1].split()[0] != "Z"


BACKWARD_FORMS = pytest.mark.parametrize("rows_max_h", [split.ROWS_MAX_H, 0], ids=["rows", "columns"])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@BACKWARD_FORMS
def test_split_gives_the_one_process_loss_gradients_and_final_state(cell, reduction, rows_max_h, rng, monkeypatch):
    """Empty and one-step sequences, unsorted lengths, a carried state: the split's results are the one-
    process results (the same arithmetic, summed in another order), with either form of the backward's
    exchange (``Share.exchanging``: copies of Whᵀ up to ``ROWS_MAX_H`` units, Wh in place above)."""
    monkeypatch.setattr(split, "ROWS_MAX_H", rows_max_h)
    one, two = _pair(cell, reduction=reduction)
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in range(one.cell.state_size))]
    for s0 in (None, state0):
        _assert_same_batch(one, two, params, x, y, mask, s0)
    assert two._split.starts == 1 and two._split.theirs is None


def _assert_same_batch(one, two, params, x, y, mask, state0):
    """The loss, gradients and final state of ``two`` are those of ``one`` (up to the order of sums)."""
    (l1, g1, f1), (l2, g2, f2) = (m.loss_and_grads(params, x, y, mask, state0) for m in (one, two))
    assert l2 == pytest.approx(l1, rel=1e-13)
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], rtol=1e-10, atol=1e-14, err_msg=name)
    for u, v in zip(f1[0], f2[0]):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("carried", [True, False], ids=["carried", "zeros"])
@BACKWARD_FORMS
def test_gradcheck_of_the_split_path(cell, carried, rows_max_h, rng, monkeypatch):
    """Finite differences of the loss against the gradients the two processes compute, from a carried
    state and from zeros (where both skip the first step's products: ``cells.base.zero_start``)."""
    monkeypatch.setattr(split, "ROWS_MAX_H", rows_max_h)
    two, errors = _gradcheck_of_two_processes(cell, rng, carried)
    assert max(errors.values()) < 1e-6, errors
    assert two._split.theirs is None                    # (split by units)


def _gradcheck_of_two_processes(cell, rng, carried=True):
    """(the model, gradcheck's errors) of a model with threads=2 on a batch with a carried state (or from
    zeros)."""
    _, two = _pair(cell)
    params = two.init_params(rng)
    for name in params:
        params[name] += rng.normal(0, 0.3, params[name].shape)
    x, y, mask = _batch(rng)
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in range(two.cell.state_size))] if carried else None
    _, grads, _ = two.loss_and_grads(params, x, y, mask, state0)
    grads = {k: v.copy() for k, v in grads.items()}     # (the split's buffer is reused by the next call)
    return two, gradcheck(lambda: two.loss(params, x, y, mask, state0)[0], params, grads)


def _train(lm, batch, steps: int, optimizer="adam", **options):
    """``steps`` clipped optimizer steps of ``lm`` on ``batch(step, rng)`` → (x, y, mask), with dropout masks
    drawn from a seed per step: (parameters, optimizer state)."""
    params = lm.init_params(np.random.default_rng(0))
    opt, clip = OPTIMIZERS.build(optimizer, lr=0.05, **options), NormClip(0.5)
    data = np.random.default_rng(1)
    for step in range(steps):
        x, y, mask = batch(step, data)
        _, grads, _ = lm.loss_and_grads(params, x, y, mask, rng=np.random.default_rng(step))
        clip(grads)
        lm.update(opt, params, grads)
    return params, opt.state_dict()


def _assert_same_training(one, two):
    """The parameters and optimizer states of two ``_train`` results agree (the split's sums in another order)."""
    (p1, s1), (p2, s2) = one, two
    for name in p1:
        np.testing.assert_allclose(p2[name], p1[name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert s1.keys() == s2.keys() and s1["t"] == s2["t"]
    for key in s1:
        np.testing.assert_allclose(s2[key], s1[key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("optimizer, options", [("adam", {"weight_decay": 0.1, "ema": 0.9}),
                                                ("momentum", {}), ("rmsprop", {"weight_decay": 0.01})])
def test_training_with_the_split_equals_one_process(optimizer, options, rng):
    """Twenty steps of names-like batches, each clipped and stepped (the optimizer's passes split between
    the processes too): the same parameters and optimizer state as in one process."""
    one, two = _pair(weight_dropout=0.2)          # DropConnect: the split then computes with a masked copy

    def batch(step, data):
        return _batch(data, lengths=data.integers(1, 7, 5))
    (p1, s1), (p2, s2) = runs = [_train(lm, batch, 20, optimizer, **options) for lm in (one, two)]
    _assert_same_training(*runs)
    assert s2["t"] == 20
    assert two._split.key_of(p2.flat) is not None      # the parameters now live in shared memory
    assert two._split.starts == 1                       # the moments found spares the child knew
    assert two._split.capacity[0] == int(5 * 1.25) + 1  # 5 sequences, with headroom


def test_batches_that_do_not_split_between_ones_that_do_keep_the_child_and_the_result(rng, monkeypatch):
    """A model whose batches alternate between split (enough work), one pass and two shards: the same
    training as in one process, and the child is not restarted by the batches that did not split (their
    gradients are private memory, copied into the shared buffer for the optimizer's split step)."""
    monkeypatch.setattr(CharLM, "MIN_SPLIT_WORK", 4 * H * H * 12)   # from 12 real positions
    monkeypatch.setattr(CharLM, "MIN_SHARD_WORK", 1)
    one, two = _pair()

    def batch(step, data):
        lengths = [(6, 6, 3, 5, 1), (2, 3), (4,)][step % 3]      # 21, 5 (two shards), 4 positions
        return _batch(data, B=len(lengths), lengths=lengths)
    _assert_same_training(*(_train(lm, batch, 12) for lm in (one, two)))
    assert two.shards(2, 5) != [slice(0, 2)]                  # the batch of two ran in two shards
    assert two._split.starts == 1                             # the moments found spares the child knew
    assert two._split._last_key == 6          # shared buffers made: staging, gradients, four spares (parameters, moments)
    assert len(two._split.spares) == 1                        # (one left: Adam has two moments)


def test_where_the_split_applies():
    assert all(CharLM(V, cell, 6, threads=2).splits_units for cell in ("lstm", "gru", "rnn"))
    assert CharLM(V, "lstm", 6, threads=2, weight_dropout=0.3, embedding_dropout=0.1).splits_units
    for kw in ({"threads": 1}, {"cell": "lnlstm"}, {"num_layers": 2},
               {"embedding_size": 4}, {"dropout": 0.2}, {"ar": 1.0}, {"hidden_size": 7}):
        opts = {"vocab_size": V, "cell": "lstm", "hidden_size": 6, "threads": 2, **kw}
        assert not CharLM(**opts).splits_units, kw


def test_when_a_split_pays(monkeypatch):
    """From 12 M multiply-adds in a batch's recurrent products or 500,000 parameters (measured; see
    MIN_SPLIT_WORK)."""
    monkeypatch.undo()
    names = 412                                           # real positions of a names batch of 32, about
    assert not CharLM(27, "lstm", 64, threads=2).split_pays(names)        # 6.8 M, 25 k parameters
    assert CharLM(27, "lstm", 64, threads=2).split_pays(4 * names)        # a batch of 128: 27 M
    assert CharLM(27, "gru", 64, threads=2).split_pays(3.9 * names)       # 20 M
    assert not CharLM(27, "rnn", 64, threads=2).split_pays(4 * names)     # 6.8 M
    assert CharLM(27, "rnn", 256, threads=2).split_pays(names)            # 27 M
    assert CharLM(27, "gru", 256, threads=2).split_pays(names)
    assert not CharLM(27, "gru", 256, threads=2).split_pays(9)            # a single name, 200 k parameters
    assert not CharLM(27, "rnn", 512, threads=2).split_pays(12)           # 3 M, 290 k parameters
    assert CharLM(27, "lstm", 512, threads=2).split_pays(9)               # 1.1 M parameters
    rng = np.random.default_rng(0)
    lm = CharLM(27, "lstm", 64, threads=2)
    x = rng.integers(0, 27, (13, 4))
    lm.loss_and_grads(lm.init_params(rng), x, x)
    assert lm.__dict__.get("_split") is None              # too little work for either split: one process


def test_batches_the_split_does_not_take_run_in_one_process(rng):
    """A gradient into the final state, or the gradient of the initial one, runs the one-process path."""
    one, two = _pair()
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    dstate = [tuple(rng.normal(0, 0.5, (5, H)) for _ in range(2))]
    r1, r2 = (m.loss_and_grads(params, x, y, mask, None, dstate, return_dstate0=True) for m in (one, two))
    for name in r1[1]:
        np.testing.assert_allclose(r2[1][name], r1[1][name], rtol=1e-12, err_msg=name)
    assert two.__dict__.get("_split") is None


def _fail_in(monkeypatch, worker: int, error):
    """Make worker 0 (this process) or 1 (the child) fail in its forward pass while ``error[0]`` is set."""
    forward = LSTM.forward_packed

    def failing(self, x, state0, params, pk, share=None):
        if share is not None and share.k == worker and error[0]:
            if worker == 1:
                os._exit(3)
            raise error[0]
        return forward(self, x, state0, params, pk, share=share)
    monkeypatch.setattr(LSTM, "forward_packed", failing)


def test_a_worker_that_dies_mid_batch_raises_and_the_next_batch_starts_a_new_one(rng, monkeypatch):
    one, two = _pair()
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    dying = [True]
    _fail_in(monkeypatch, 1, dying)
    t0 = time.monotonic()
    with pytest.raises(split.WorkerDied, match="ended in the middle of a batch"):
        two.loss_and_grads(params, x, y, mask)
    assert time.monotonic() - t0 < 5          # noticed, not waited for forever
    dying[0] = False                           # the next child is forked from this state
    l1, g1, _ = one.loss_and_grads(params, x, y, mask)
    l2, g2, _ = two.loss_and_grads(params, x, y, mask)
    assert l2 == pytest.approx(l1, rel=1e-13) and two._split.starts == 2
    np.testing.assert_allclose(g2.flat, g1.flat, rtol=1e-10, atol=1e-14)


def test_ctrl_c_in_the_parent_stops_the_child(rng, monkeypatch):
    one, two = _pair()
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    two.loss_and_grads(params, x, y, mask)
    pid = two._split.child[0]
    interrupt = [KeyboardInterrupt()]
    _fail_in(monkeypatch, 0, interrupt)
    with pytest.raises(KeyboardInterrupt):
        two.loss_and_grads(params, x, y, mask)
    assert two._split.child is None and not _alive(pid)
    interrupt[0] = None
    l1, _, _ = one.loss_and_grads(params, x, y, mask)
    assert two.loss_and_grads(params, x, y, mask)[0] == pytest.approx(l1, rel=1e-13)


def test_a_child_killed_between_batches_is_replaced(rng):
    _, two = _pair()
    params = two.init_params(rng)
    x, y, mask = _batch(rng)
    loss = two.loss_and_grads(params, x, y, mask)[0]
    pid = two._split.child[0]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert two.loss_and_grads(params, x, y, mask)[0] == loss
    assert two._split.starts == 2 and two._split.child[0] != pid


def test_the_child_ends_with_its_model(rng):
    _, two = _pair()
    params = two.init_params(rng)
    two.loss_and_grads(params, *_batch(rng))
    pid = two._split.child[0]
    assert _alive(pid)
    del two
    gc.collect()
    assert not _alive(pid)


def test_the_child_ends_when_its_parent_is_killed(tmp_path):
    """SIGKILL to the parent (nothing of it runs): its child notices and exits by itself."""
    script = textwrap.dedent(f"""
        import numpy as np, sys, time
        from rnnlab.model import CharLM
        CharLM.MIN_SPLIT_WORK = 0
        lm = CharLM({V}, "lstm", {H}, threads=2)
        rng = np.random.default_rng(0)
        params = lm.init_params(rng)
        x = rng.integers(0, {V}, (5, 3))
        lm.loss_and_grads(params, x, x, None)
        print(lm._split.child[0], flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert _alive(child)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_same_seed_same_result_and_a_resumed_run_continues_bit_for_bit(rng):
    """Ten split steps straight, against five, a save of the parameters and the optimizer state, a new
    model and optimizer loaded from them (a new child), and five more: the same bits."""
    def steps(lm, params, opt, first, last):
        data = np.random.default_rng(7)
        for step in range(last):
            x, y, mask = _batch(data, lengths=data.integers(1, 7, 5))
            if step >= first:
                _, grads, _ = lm.loss_and_grads(params, x, y, mask)
                NormClip(0.5)(grads)
                lm.update(opt, params, grads)

    def fresh():
        lm = CharLM(V, "lstm", H, threads=2, dtype=np.float32)
        return lm, lm.init_params(np.random.default_rng(0)), OPTIMIZERS.build("adam", lr=0.05)
    lm, straight, opt = fresh()
    steps(lm, straight, opt, 0, 10)
    lm2, again, opt2 = fresh()
    steps(lm2, again, opt2, 0, 10)
    np.testing.assert_array_equal(again.flat, straight.flat)       # same seed, same result

    lm3, half, opt3 = fresh()
    steps(lm3, half, opt3, 0, 5)
    saved, state = {k: v.copy() for k, v in half.items()}, {k: np.array(v) for k, v in opt3.state_dict().items()}
    lm3.close()
    lm4, resumed, opt4 = fresh()
    for name, value in saved.items():
        resumed[name] = value
    opt4.load_state_dict(state)
    steps(lm4, resumed, opt4, 5, 10)
    np.testing.assert_array_equal(resumed.flat, straight.flat)
    for key, value in opt4.state_dict().items():
        np.testing.assert_array_equal(value, opt.state_dict()[key], err_msg=key)


# ------------------------------------------------------------ a batch's sequences split instead (halves)
@pytest.fixture
def halves(monkeypatch):
    """Split even these small batches by their sequences (``CharLM.halves_pay``; see test_when_halves_pay)."""
    monkeypatch.setattr(CharLM, "MIN_HALVES_WORK", 0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_halves_give_the_one_process_loss_gradients_and_final_state(cell, reduction, rng, halves):
    """Empty and one-step sequences, unsorted lengths, a carried state, no mask: each process runs half of
    the sequences through the whole network; the sum of the halves is the one-process result."""
    one, two = _pair(cell, reduction=reduction)
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in range(one.cell.state_size))]
    for s0, m in ((None, mask), (state0, mask), (state0, None)):
        _assert_same_batch(one, two, params, x, y, m, s0)
    assert two._split.theirs is not None and two._split.starts == 1    # the halves ran, in one child


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradcheck_of_the_halves_path(cell, rng, halves):
    """Finite differences of the loss against the summed gradients of the two processes' halves."""
    two, errors = _gradcheck_of_two_processes(cell, rng)
    assert max(errors.values()) < 1e-6, errors
    assert two._split.theirs is not None                # (split by sequences)


def test_training_with_halves_equals_one_process(rng, halves):
    """Twenty clipped Adam steps with DropConnect (a masked copy of the parameters is staged for the child):
    the same parameters and optimizer state as in one process; the optimizer's passes split too."""
    one, two = _pair(weight_dropout=0.2)

    def batch(step, data):
        return _batch(data, lengths=data.integers(1, 7, 5))
    (p1, s1), (p2, s2) = runs = [_train(lm, batch, 20, "adam", weight_decay=0.1) for lm in (one, two)]
    _assert_same_training(*runs)
    assert two._split.theirs is not None and two._split.key_of(p2.flat) is not None
    assert two._split.starts == 1                       # the moments found spares the child knew


# Models whose units cannot be split (stacked layers, dropout of units, AR/TAR, the layer-normalised LSTM: the
# presets) split their batches by sequences at any width, every layer's states and the masks of units shared.
EVERY_REGULARISER = dict(num_layers=2, embedding_size=3, dropout=0.3, weight_dropout=0.4, embedding_dropout=0.3,
                         ar=1.5, tar=2.5)


def _halves_pair(cell, **kw):
    one, two = (CharLM(V, cell, H, dtype=np.float64, threads=t, **kw) for t in (1, 2))
    assert not two.splits_units and two.halves_pay(5, 16)
    return one, two


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "lnlstm"])
@pytest.mark.parametrize("locked", [False, True], ids=["per-step", "locked"])
def test_halves_of_stacked_regularised_models_give_the_one_process_result(cell, locked, rng, halves):
    """Two layers, an embedding, dropout of units (a mask per step, or locked), DropConnect, embedding
    dropout, AR and TAR; a carried state in every layer or zeros; empty and one-step sequences: the loss,
    the gradients of the objective and every layer's final state of the two halves are the one-process ones."""
    one, two = _halves_pair(cell, locked_dropout=locked, **EVERY_REGULARISER)
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    drop = one.dropout_masks(np.random.default_rng(4), *x.shape)
    assert all(d is not None for d in drop.units) and len(drop.units[1]) == (1 if locked else len(x))
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in s) for s in one.initial_state(5)]
    for s0 in (state0, None):
        (l1, g1, f1), (l2, g2, f2) = (m.loss_and_grads(params, x, y, mask, s0, drop=drop) for m in (one, two))
        assert l2 == pytest.approx(l1, rel=1e-13)
        for name in g1:
            np.testing.assert_allclose(g2[name], g1[name], rtol=1e-10, atol=1e-14, err_msg=name)
        assert len(f2) == 2
        for a, b in zip(f1, f2):
            for u, v in zip(a, b):
                np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-15)
    assert two._split.theirs is not None and two._split.starts == 1    # split by sequences, in one child


@pytest.mark.parametrize("cell", ["lstm", "lnlstm"])
def test_gradcheck_of_the_halves_path_with_every_regulariser(cell, rng, halves):
    """Finite differences of the objective (NLL, AR, TAR) with fixed masks against the summed gradients of
    the two processes' halves of a stacked, regularised model from a carried state."""
    _, two = _halves_pair(cell, locked_dropout=True, **EVERY_REGULARISER)
    params = two.init_params(rng)
    for name in params:
        params[name] += rng.normal(0, 0.3, params[name].shape)
    x, y, mask = _batch(rng)
    drop = two.dropout_masks(np.random.default_rng(6), *x.shape)
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in s) for s in two.initial_state(5)]
    _, grads, _ = two.loss_and_grads(params, x, y, mask, state0, drop=drop)
    grads = {k: v.copy() for k, v in grads.items()}
    errors = gradcheck(lambda: two.objective(params, x, y, mask, state0, drop=drop), params, grads)
    assert max(errors.values()) < 1e-6, errors
    assert two._split.theirs is not None


def test_training_a_preset_like_model_with_halves_equals_one_process(rng, halves):
    """Fifteen clipped Adam steps (with a moving average) of a two-layer layer-normalised LSTM with locked
    dropout and DropConnect, masks drawn per step as in training, on running-text chunks with the state
    carried from chunk to chunk: the same parameters and optimizer state as in one process."""
    kw = dict(num_layers=2, dropout=0.3, locked_dropout=True, weight_dropout=0.3)
    one, two = _halves_pair("lnlstm", **kw)
    runs = []
    for lm in (one, two):
        params = lm.init_params(np.random.default_rng(0))
        opt, clip, data = OPTIMIZERS.build("adam", lr=0.05, ema=0.9), NormClip(0.5), np.random.default_rng(1)
        state = None
        for step in range(15):
            x, y = data.integers(0, V, (4, 6)), data.integers(0, V, (4, 6))
            _, grads, state = lm.loss_and_grads(params, x, y, None, state, rng=np.random.default_rng(step))
            clip(grads)
            lm.update(opt, params, grads)
        runs.append((params, opt.state_dict()))
    _assert_same_training(*runs)
    assert two._split.theirs is not None and two._split.starts == 1


def _fail_in_child(monkeypatch, error):
    """Make the child's half of a batch end its process while ``error[0]`` is set."""
    grads, parent = CharLM._grads, os.getpid()

    def failing(self, *args, **kwargs):
        if os.getpid() != parent and error[0]:
            os._exit(3)
        return grads(self, *args, **kwargs)
    monkeypatch.setattr(CharLM, "_grads", failing)


def test_a_child_that_dies_mid_halves_raises_and_the_next_batch_starts_a_new_one(rng, halves, monkeypatch):
    one, two = _pair()
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    dying = [True]
    _fail_in_child(monkeypatch, dying)
    t0 = time.monotonic()
    with pytest.raises(split.WorkerDied, match="ended in the middle of a batch"):
        two.loss_and_grads(params, x, y, mask)
    assert time.monotonic() - t0 < 5
    dying[0] = False
    l1, g1, _ = one.loss_and_grads(params, x, y, mask)
    l2, g2, _ = two.loss_and_grads(params, x, y, mask)
    assert l2 == pytest.approx(l1, rel=1e-13) and two._split.starts == 2
    np.testing.assert_allclose(g2.flat, g1.flat, rtol=1e-10, atol=1e-14)


def test_ctrl_c_in_the_parent_during_halves_stops_the_child(rng, halves, monkeypatch):
    one, two = _pair()
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    two.loss_and_grads(params, x, y, mask)
    pid = two._split.child[0]
    grads = CharLM._grads

    def interrupted(self, *args):
        raise KeyboardInterrupt
    monkeypatch.setattr(CharLM, "_grads", interrupted)
    with pytest.raises(KeyboardInterrupt):
        two.loss_and_grads(params, x, y, mask)
    assert two._split.child is None and not _alive(pid)
    monkeypatch.setattr(CharLM, "_grads", grads)
    l1, _, _ = one.loss_and_grads(params, x, y, mask)
    assert two.loss_and_grads(params, x, y, mask)[0] == pytest.approx(l1, rel=1e-13)


def test_when_halves_pay(monkeypatch):
    """From MIN_HALVES_WORK gate values a batch, up to HALVES_MAX_WORK multiply-adds a row in a step's
    product where the units could be split instead, at any size where they cannot (measured; see CharLM)."""
    monkeypatch.undo()
    names = 412                                                   # real positions of a names batch of 32
    assert CharLM(27, "lstm", 64, threads=2).halves_pay(32, names)
    assert not CharLM(27, "lstm", 64, threads=2).halves_pay(1, 9)      # one name
    assert CharLM(27, "gru", 128, threads=2).halves_pay(32, names)
    assert not CharLM(27, "rnn", 64, threads=2).halves_pay(32, names)         # 26 k gate values
    assert CharLM(27, "rnn", 64, threads=2).halves_pay(128, 4 * names)
    assert not CharLM(27, "lstm", 256, threads=2).halves_pay(128, 4 * names)  # the unit split's
    assert CharLM(27, "rnn", 256, threads=2).halves_pay(32, names)            # 64 k multiply-adds a row
    assert not CharLM(27, "rnn", 258, threads=2).halves_pay(32, names)
    assert CharLM(27, "lstm", 128, threads=2).halves_pay(32, names)
    assert not CharLM(27, "gru", 148, threads=2).halves_pay(32, names)        # 3 × 148² > 64 k
    preset = dict(num_layers=2, dropout=0.3, locked_dropout=True, weight_dropout=0.3)   # the names preset's
    assert CharLM(27, "lnlstm", 384, threads=2, **preset).halves_pay(64, 2 * names)     # units cannot split
    assert CharLM(27, "lstm", 512, threads=2, dropout=0.3).halves_pay(32, names)
    assert not CharLM(27, "lnlstm", 384, threads=1, **preset).halves_pay(64, 2 * names)  # one thread
    rng = np.random.default_rng(0)
    lm = CharLM(27, "lstm", 64, threads=2)
    x = rng.integers(0, 27, (13, 32))
    lm.loss_and_grads(lm.init_params(rng), x, x)
    assert lm._split.theirs is not None and lm._split.child is not None


def test_an_error_in_the_childs_half_is_raised_in_the_parent(rng, halves):
    """Bad input that only the child's half holds (an id outside the vocabulary) raises what one process
    raises, not that the child died; the next batch runs."""
    one, two = _pair()
    params = one.init_params(rng)
    x, y, mask = _batch(rng, lengths=(6, 6, 6, 6, 6))
    bad = x.copy()
    bad[2, 1] = V + 3                  # column 1: the child's (every other sequence by length)
    for lm in (one, two):
        with pytest.raises(IndexError, match="out of bounds"):
            lm.loss_and_grads(params, bad, y, mask)
    assert two.loss_and_grads(params, x, y, mask)[0] == pytest.approx(one.loss_and_grads(params, x, y, mask)[0],
                                                                      rel=1e-13)


@pytest.mark.parametrize("wide", [True, False])
def test_evaluation_gets_blas_threads_back_while_the_child_sleeps(wide, rng, monkeypatch):
    """While a split's child lives, this process's BLAS is held at one thread (the child computes on the
    other core); evaluation, whose forward passes the child takes no part in, runs with BLAS's own
    threads when its products are wide enough to gain from them (``eval_threads_pay``; else it keeps
    the hold) — and the hold is back for the next training batch. The same losses either way."""
    from threadpoolctl import threadpool_info

    from rnnlab import threads
    from rnnlab.data import load_dataset
    from rnnlab.train import evaluate

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    data = load_dataset("lines", lowercase=True, val_fraction=0.2, seed=0)
    one, two = (CharLM(len(data.vocab), "lstm", H, dtype=np.float64, threads=k) for k in (1, 2))
    assert not two.eval_threads_pay()                         # (6 units: far too narrow)
    if wide:
        monkeypatch.setattr(CharLM, "EVAL_THREADS_MIN_WORK", 4 * H * H)
    params = one.init_params(np.random.default_rng(0))
    x, y, mask = data.train_batch(0, 40, 0)[:3]
    two.loss_and_grads(params, x, y, mask)                    # the child starts: BLAS held at one thread
    assert two._split is not None and threads._HELD
    original = threads._HELD[1].get_original_num_threads()["blas"]
    assert original > 1 and blas_threads() == [1]            # (a split runs on a machine of 2 CPUs or more)
    inside = []
    loss = two.loss
    monkeypatch.setattr(two, "loss", lambda *a: (inside.append(blas_threads()), loss(*a))[1])
    assert evaluate(two, params, data, "val") == pytest.approx(evaluate(one, params, data, "val"), rel=1e-12)
    assert inside and all(t == [original if wide else 1] for t in inside)
    assert blas_threads() == [1]                              # held again for the next batch
    two.close()
    assert blas_threads() == ([1] if threads._HELD else [original])   # (another test's live split may hold it)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_split_with_step_products_in_blocks_gives_the_one_process_result(cell, rng, monkeypatch):
    """The split's per-step products (``OverlappedForward``: a process's half of h_{t-1} times its rows of
    Wh, then the other's) in column blocks for BLAS's small-matrix kernel: the loss, gradients and final
    state of one process computing one product a step."""
    from test_packing import _step_products_in_blocks
    one, two = _pair(cell)
    params = one.init_params(rng)
    x, y, mask = _batch(rng)
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in range(one.cell.state_size))]
    reference = one.loss_and_grads(params, x, y, mask, state0)
    _step_products_in_blocks(monkeypatch)          # before the child is forked: it computes in blocks too
    total, grads, final = two.loss_and_grads(params, x, y, mask, state0)
    assert total == pytest.approx(reference[0], rel=1e-13)
    for name in grads:
        np.testing.assert_allclose(grads[name], reference[1][name], rtol=1e-10, atol=1e-14, err_msg=name)
    for u, v in zip(reference[2][0], final[0]):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-15)
    assert two._split.starts == 1
