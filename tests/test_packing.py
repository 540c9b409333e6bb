"""The packed engine: the layout itself, padded batches against each sequence run alone, column order,
gradient checks with empty and one-step sequences in a stacked model, and the flat parameter buffers
(optimizers and clipping on the whole vector give what they give array by array)."""

import numpy as np
import pytest

from rnnlab.cells import gru, lnlstm, lstm, rnn
from rnnlab.cells.base import Layout, Packing
from rnnlab.clipping import NormClip, ValueClip, global_norm
from rnnlab.flat import FlatParams
from rnnlab.gradcheck import gradcheck
from rnnlab.model import CharLM
from rnnlab.registry import OPTIMIZERS

V, H = 7, 5


def test_packing_rows_previous_and_last():
    pk = Packing([3, 3, 1, 0])
    assert pk.T == 3 and pk.N == 7 and pk.B == 4
    assert pk.steps == [(0, 3), (3, 2), (5, 2)]
    # B + N state rows: 4 initial ones, then the packed rows of steps 0, 1, 2
    np.testing.assert_array_equal(pk.prev, [0, 1, 2, 4, 5, 7, 8])
    np.testing.assert_array_equal(pk.last, [4 + 5, 4 + 6, 4 + 2, 3])   # the empty one keeps its initial state
    with pytest.raises(ValueError, match="non-increasing"):
        Packing([1, 2])


def test_layout_sorts_packs_and_unpacks():
    mask = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]])      # lengths 1, 3, 2, 0
    lay = Layout(mask, 3, 4)
    np.testing.assert_array_equal(lay.order, [1, 2, 0, 3])
    x = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(lay.pack(x), [1, 2, 0, 5, 6, 9])
    back = lay.unpack(lay.pack(x))
    np.testing.assert_array_equal(back, x * mask)
    state = np.arange(4)[:, None] * np.ones((4, 2))
    np.testing.assert_array_equal(lay.unsort(lay.sort(state)), state)
    assert Layout(np.ones((3, 2)), 3, 2).dense


def _model(cell, layers=2, **kw):
    return CharLM(V, cell, H, layers, dtype=np.float64, **kw)


def _perturbed(lm, rng):
    params = lm.init_params(rng)
    for k in params:
        params[k] += rng.normal(0, 0.2, params[k].shape)
    return params


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_padded_batch_equals_each_sequence_alone(cell, rng):
    """Loss, gradients and final states of a batch with unsorted lengths (0 and 1 among them) equal
    those of the sequences run one by one without padding — an independent check of the packing.
    (``dstate`` is not divided by the batch, the loss's gradient is: alone, it is given times B.)"""
    lm = _model(cell, reduction="sum")
    params = _perturbed(lm, rng)
    lengths = [4, 0, 6, 1, 6, 3]
    T, B = 6, len(lengths)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array(lengths)).astype(float)
    state0 = [tuple(rng.normal(0, 0.5, (B, H)) for _ in s) for s in lm.initial_state(B)]
    dstate = [tuple(rng.normal(0, 0.5, (B, H)) for _ in s) for s in lm.initial_state(B)]
    total, grads, final, dstate0 = lm.loss_and_grads(params, x, y, mask, state0, dstate, return_dstate0=True)
    total *= mask.sum()
    alone_total, alone_grads = 0.0, {k: np.zeros_like(v) for k, v in params.items()}
    for b, n in enumerate(lengths):
        s0 = [tuple(a[b:b + 1] for a in layer) for layer in state0]
        ds = [tuple(a[b:b + 1] * B for a in layer) for layer in dstate]   # alone, divided by B below
        if n == 0:   # nothing to predict: the final state is the initial one, its gradient passes through
            for layer0, layer_f, layer_d, layer_d0 in zip(state0, final, dstate, dstate0):
                for a0, af, ad, ad0 in zip(layer0, layer_f, layer_d, layer_d0):
                    np.testing.assert_array_equal(af[b], a0[b])
                    np.testing.assert_array_equal(ad0[b], ad[b])
            continue
        loss, g, f, d0 = lm.loss_and_grads(params, x[:n, b:b + 1], y[:n, b:b + 1], None, s0, ds,
                                           return_dstate0=True)
        alone_total += loss * n
        for k in g:
            alone_grads[k] += g[k] / B       # "sum" reduction: gradients are of the summed loss / B
        for layer_f, layer_d0, lf, ld0 in zip(final, dstate0, f, d0):
            for af, ad0, a1, a2 in zip(layer_f, layer_d0, lf, ld0):
                np.testing.assert_allclose(af[b], a1[0], rtol=1e-12, atol=1e-14)
                np.testing.assert_allclose(ad0[b], a2[0] / B, rtol=1e-10, atol=1e-14)
    assert total == pytest.approx(alone_total, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], alone_grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_column_order_does_not_matter(cell, rng):
    lm = _model(cell, embedding_size=3)
    params = _perturbed(lm, rng)
    T, B = 5, 5
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array([2, 5, 0, 3, 5])).astype(float)
    perm = rng.permutation(B)
    l1, g1, f1 = lm.loss_and_grads(params, x, y, mask)
    l2, g2, f2 = lm.loss_and_grads(params, x[:, perm], y[:, perm], mask[:, perm])
    assert l2 == pytest.approx(l1, rel=1e-13)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-11, atol=1e-14)
    for a, b in zip(f1, f2):
        for u, v in zip(a, b):
            np.testing.assert_allclose(v, u[perm], rtol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "lnlstm"])
def test_gradcheck_stacked_with_empty_and_one_step_sequences_dropout_embedding_and_carried_state(cell, rng):
    lm = _model(cell, dropout=0.3, embedding_size=3)
    params = _perturbed(lm, rng)
    T, B = 5, 5
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array([1, 5, 0, 3, 5])).astype(float)
    state0 = [tuple(rng.normal(0, 0.5, (B, H)) for _ in s) for s in lm.initial_state(B)]
    drop = lm.dropout_masks(np.random.default_rng(3), T, B)
    loss, grads, _ = lm.loss_and_grads(params, x, y, mask, state0, drop=drop)
    errors = gradcheck(lambda: lm.loss(params, x, y, mask, state0, drop)[0], params, grads)
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "lnlstm"])
@pytest.mark.parametrize("lengths", [[1, 5, 0, 3, 5], [1, 1, 0, 1, 1]], ids=["varied", "one-step"])
def test_from_a_zero_state_the_first_steps_products_are_skipped_for_the_same_gradients(cell, lengths, rng,
                                                                                     monkeypatch):
    """A batch that starts from zeros (names) skips the first step's h_0 Wh and its rows of dWh
    (``base.zero_start``) and, unless the initial state's gradient is asked for, the first step's product
    with Whᵀ (``state_grad``). Finite differences agree with its gradients, and so does the full
    computation (the skips turned off), which also gives the initial state's gradient; with one-step
    sequences only, no row takes part in dWh."""
    lm = _model(cell)
    params = _perturbed(lm, rng)
    T, B = 5, 5
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array(lengths)).astype(float)
    loss, grads, _ = lm.loss_and_grads(params, x, y, mask)
    errors = gradcheck(lambda: lm.loss(params, x, y, mask)[0], params, grads)
    assert max(errors.values()) < 1e-6, errors
    grads = {k: v.copy() for k, v in grads.items()}
    _, _, _, skipped_dstate0 = lm.loss_and_grads(params, x, y, mask, return_dstate0=True)
    for module in (rnn, lstm, gru, lnlstm):
        monkeypatch.setattr(module, "zero_start", lambda hs, B: False)
    full_loss, full, _, dstate0 = lm.loss_and_grads(params, x, y, mask, return_dstate0=True)
    assert full_loss == loss
    for k in grads:
        np.testing.assert_allclose(grads[k], full[k], rtol=1e-12, atol=1e-15, err_msg=k)
    for layer, skipped in zip(dstate0, skipped_dstate0):
        for a, b in zip(layer, skipped):
            assert a.shape == (B, H)
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    if max(lengths) == 1:
        assert not grads["l0.Wh"].any() and not grads["l1.Wh"].any()


def test_parameters_and_gradients_are_views_into_one_buffer(rng):
    lm = CharLM(V, "lstm", H, 2, embedding_size=3)
    params = lm.init_params(rng)
    assert isinstance(params, FlatParams)
    assert sum(v.size for v in params.values()) == params.flat.size
    assert all(np.shares_memory(v, params.flat) for v in params.values())
    assert all(params[k].ndim >= 2 for k, _ in params.layout[:4]) and params.n_matrix == sum(
        v.size for v in params.values() if v.ndim >= 2)
    x = rng.integers(0, V, (4, 3))
    _, grads, _ = lm.loss_and_grads(params, x, x)
    assert isinstance(grads, FlatParams) and grads.same_layout(params)
    params["Wy"] = np.ones_like(params["Wy"])      # assigning copies into the view
    assert np.shares_memory(params["Wy"], params.flat) and params["Wy"].sum() == params["Wy"].size
    copied = params.copy()
    assert copied.same_layout(params) and not np.shares_memory(copied.flat, params.flat)
    import pickle
    again = pickle.loads(pickle.dumps(params))
    assert again.same_layout(params) and np.array_equal(again.flat, params.flat)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adagrad", "rmsprop", "adam"])
def test_optimizers_on_the_flat_buffer_equal_array_by_array(name, rng):
    """The whole-vector update is the per-array update, bit for bit; its state is the same named
    dict, and a state saved from one and loaded into the other continues identically."""
    lm = CharLM(V, "gru", H, 2)
    flat = lm.init_params(rng)
    plain = {k: v.copy() for k, v in flat.items()}
    a, b = (OPTIMIZERS.build(name, lr=0.01, weight_decay=0.1) for _ in range(2))
    for _ in range(3):
        g = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in plain.items()}
        a.step(flat, FlatParams(g))
        b.step(plain, g)
    for k in plain:
        np.testing.assert_array_equal(flat[k], plain[k], err_msg=k)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    c = OPTIMIZERS.build(name, lr=0.01, weight_decay=0.1)
    c.load_state_dict(sb)                      # resumed from the per-array state onto the flat buffer
    g = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in plain.items()}
    c.step(flat, FlatParams(g))
    b.step(plain, g)
    for k in plain:
        np.testing.assert_array_equal(flat[k], plain[k], err_msg=k)


def test_clipping_the_flat_buffer(rng):
    g = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    flat = FlatParams(g)
    assert global_norm(flat) == pytest.approx(global_norm(g), rel=1e-12)
    NormClip(1.0)(flat)
    assert global_norm(flat) == pytest.approx(1.0, rel=1e-9)
    np.testing.assert_allclose(flat["b"], g["b"] / global_norm(g), rtol=1e-9)
    ValueClip(0.1)(flat)
    assert np.abs(flat.flat).max() <= 0.1


@pytest.mark.parametrize("cell", ["lstm", "gru", "lnlstm"])
def test_both_forms_of_the_recurrent_products_give_the_gradients(cell, rng, monkeypatch):
    """The per-step products h Wh (forward) and dz Whᵀ (backward) each have two forms, chosen by H
    (gate blocks or rows forward; rows times a copied Whᵀ or Wh times the rows backward): the stacked
    gradient check holds with every form."""
    from rnnlab.cells.base import RecurrentBackward, RecurrentForward
    for limit in (0, 10 ** 6):
        monkeypatch.setattr(RecurrentBackward, "ROWS_MAX_H", limit)
        monkeypatch.setattr(RecurrentBackward, "SMALL_H", limit)
        monkeypatch.setattr(RecurrentForward, "ROWS_MIN_H", limit)
        test_gradcheck_stacked_with_empty_and_one_step_sequences_dropout_embedding_and_carried_state(
            cell, np.random.default_rng(7))


def test_lstm_gate_factors_step_by_step_or_for_the_whole_batch(rng, monkeypatch):
    """The LSTM's backward computes its gate factors a step at a time over wide steps and for the whole
    batch over narrow ones: both give the same gradients, bit for bit, and the stacked gradient check holds
    with each."""
    from rnnlab.cells.lstm import LSTM
    lm = _model("lstm")
    params = _perturbed(lm, rng)
    T, B = 6, 4
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    mask = (np.arange(T)[:, None] < np.array([6, 0, 1, 4])).astype(float)
    state0 = [tuple(rng.normal(0, 0.5, (B, H)) for _ in s) for s in lm.initial_state(B)]
    grads = {}
    for limit in (0, 10 ** 9):
        monkeypatch.setattr(LSTM, "STEP_FACTORS_MIN", limit)
        grads[limit] = lm.loss_and_grads(params, x, y, mask, state0)[1]
        test_gradcheck_stacked_with_empty_and_one_step_sequences_dropout_embedding_and_carried_state(
            "lstm", np.random.default_rng(7))
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[10 ** 9][k], err_msg=k)


def _step_products_in_blocks(monkeypatch, rows_form=True):
    """``StepProduct``'s column blocks at a toy model's sizes: a small-matrix kernel said to take products of
    up to 60 multiply-adds, blocks of any width; LSTM and GRU in the rows form (one product of h with all of
    Wh's columns, split) or the blocks form (a product per gate, each split)."""
    from rnnlab.cells import base
    monkeypatch.setattr(base, "small_product_limit", lambda dtype: 60)
    monkeypatch.setattr(base.StepProduct, "MIN_WIDTH", 1)
    monkeypatch.setattr(base.StepProduct, "ALIGN", 1)
    monkeypatch.setattr(base.RecurrentForward, "ROWS_MIN_H", 0 if rows_form else 10 ** 6)
    widths = [base.StepProduct(np.zeros((H, 4 * H))).width(n) for n in (1, 2, 3, 5)]
    assert widths == [12, 6, 4, 2]                 # blocks of 4 * H = 20 columns: 12 + 8, …, 2 + … + 2
    assert [base.StepProduct(np.zeros((H, H))).width(n) for n in (1, 2, 3)] == [5, 5, 4]   # a gate's: 5 columns


@pytest.mark.parametrize("cell, rows_form", [("rnn", True), ("lstm", True), ("lstm", False), ("gru", True),
                                             ("gru", False), ("lnlstm", False)])
def test_step_products_in_column_blocks_give_the_same_results(cell, rows_form, rng, monkeypatch):
    """The forward's per-step products split into column blocks (``StepProduct``, for BLAS's small-matrix
    kernel) give the one product's loss, gradients and final states — the last block narrower than the
    others, from a carried state — and the stacked gradient check holds with them, in either form of the
    recurrent products (``RecurrentForward``; the layer-normalised LSTM's is the blocks form)."""
    lm = _model(cell)
    params = _perturbed(lm, rng)
    x, y = rng.integers(0, V, (6, 5)), rng.integers(0, V, (6, 5))
    mask = (np.arange(6)[:, None] < np.array([1, 6, 0, 3, 6])).astype(float)
    state0 = [tuple(rng.normal(0, 0.5, (5, H)) for _ in range(lm.cell.state_size)) for _ in range(2)]
    one = lm.loss_and_grads(params, x, y, mask, state0)
    _step_products_in_blocks(monkeypatch, rows_form)
    blocks = lm.loss_and_grads(params, x, y, mask, state0)
    assert blocks[0] == pytest.approx(one[0], rel=1e-13)
    for name in one[1]:
        np.testing.assert_allclose(blocks[1][name], one[1][name], rtol=1e-11, atol=1e-14, err_msg=name)
    for u, v in zip(one[2], blocks[2]):
        for a, b in zip(u, v):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    test_gradcheck_stacked_with_empty_and_one_step_sequences_dropout_embedding_and_carried_state(
        cell, np.random.default_rng(7))


def test_step_product_blocks_at_real_sizes(rng):
    """At an LSTM's sizes in a unit split (h_{t-1}[units] (n, 256) times (256, 1024)), with the kernel's limit
    of a million multiply-adds: blocks from the widest that fits (a multiple of 32, at most 256) down to 64
    columns, one product where the whole one fits or no block of 64 would; each equal to the one product."""
    from rnnlab.cells.base import StepProduct
    from rnnlab.threads import SMALL_KERNEL_MNK
    W = rng.standard_normal((256, 1024)).astype(np.float32)
    product = StepProduct(W)
    product.limit = SMALL_KERNEL_MNK
    sizes = (1, 2, 4, 8, 16, 32, 48, 64, 128)
    assert [product.width(n) for n in sizes] == [1024, 1024, 256, 256, 224, 96, 64, 1024, 1024]
    rows = np.full((128, 1024), np.nan, np.float32)
    states = rng.standard_normal((128, 512)).astype(np.float32)
    for n in sizes:
        a = states[:n, 256:]                       # a column block of the states, as the split reads them
        np.testing.assert_allclose(product(a, rows[:n]), a @ W, rtol=1e-5, atol=1e-4)


def test_the_small_kernel_is_used_where_blas_has_it_on_one_thread():
    """``small_product_limit``: float32 only, only on OpenBLAS's AVX-512 kernels (as threadpoolctl names
    NumPy's BLAS and the kernels it picked), only while BLAS runs on one thread."""
    from threadpoolctl import threadpool_info
    from rnnlab import threads
    blas = [i for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    avx512 = (len(blas) == 1 and blas[0]["internal_api"] == "openblas"
              and blas[0].get("architecture") in threads.SMALL_KERNEL_CORES)
    with threads.one_blas_thread():
        assert threads.small_product_limit(np.float32) == (threads.SMALL_KERNEL_MNK if avx512 else 0)
        assert threads.small_product_limit(np.float64) == 0
    with threads._controller().limit(limits=2, user_api="blas"):
        assert threads.small_product_limit(np.float32) == 0
