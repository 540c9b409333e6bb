"""Vocabulary, datasets, splits, batches; samplers and generation."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rnnlab.baselines import unigram_nll
from rnnlab.data import Batch, DataError, LineDataset, TextDataset, Vocab, builtin_path, load_dataset, read_text
from rnnlab.model import CharLM
from rnnlab.registry import DATASETS, SAMPLERS
from rnnlab.sampling import generate


def test_vocab_puts_end_of_line_first():
    v = Vocab.from_text("cab\nba")
    assert v.chars == ("\n", "a", "b", "c")
    assert v.char_to_ix == {"\n": 0, "a": 1, "b": 2, "c": 3}
    assert v.decode(v.encode("abc")) == "abc"
    with pytest.raises(DataError, match=r"characters not in the vocabulary: 'xz'; allowed: 'abc'"):
        v.encode("axz")


def test_builtin_dataset():
    text = read_text(builtin_path())
    names = text.split()
    assert len(names) >= 800 and len(set(names)) == len(names)
    ds = load_dataset("lines", lowercase=True)
    assert ds.vocab.chars == tuple("\nabcdefghijklmnopqrstuvwxyz")
    assert sum(len(v) for v in ds.lines.values()) == len(names)


def test_line_split_is_deterministic_and_disjoint():
    text = "\n".join(f"name{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(200))
    a = LineDataset(text, val_fraction=0.1, test_fraction=0.05, seed=3)
    b = LineDataset(text, val_fraction=0.1, test_fraction=0.05, seed=3)
    c = LineDataset(text, val_fraction=0.1, test_fraction=0.05, seed=4)
    assert a.lines == b.lines and a.lines != c.lines
    assert (len(a.lines["val"]), len(a.lines["test"]), len(a.lines["train"])) == (20, 10, 170)
    sets = [set(a.lines[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_line_batches_pad_and_mask():
    ds = LineDataset("ab\nabc\nb\nca\nbb", val_fraction=0.2, seed=0)
    batch = ds.train_batch(0, 4, seed=0)
    assert isinstance(batch, Batch) and batch.reset
    T, B = batch.x.shape
    assert B == 4 and T == 4  # longest training name (3) + 1
    for b in range(B):
        n = int(batch.mask[:, b].sum())
        assert batch.x[0, b] == 0 and batch.y[n - 1, b] == 0  # starts and ends with EOL
        np.testing.assert_array_equal(batch.x[1:n, b], batch.y[:n - 1, b])  # y is x shifted
        assert not batch.mask[n:, b].any()
    # pure function of (seed, step); every epoch is a permutation of the training lines
    np.testing.assert_array_equal(ds.train_batch(0, 4, seed=0).x, batch.x)
    assert ds.num_chars("train") == sum(len(s) + 1 for s in ds.lines["train"])


def test_epoch_covers_every_training_line_once():
    text = "\n".join(f"n{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(60))
    ds = LineDataset(text, val_fraction=0.1, seed=0)
    seen = []
    for step in range(len(ds.lines["train"]) // 9):
        b = ds.train_batch(step, 9, seed=1)
        for j in range(b.x.shape[1]):
            n = int(b.mask[:, j].sum())
            seen.append(ds.vocab.decode(b.y[:n - 1, j]))
    assert len(seen) == len(set(seen)) == 54 // 9 * 9


def test_text_dataset_streams_and_resets():
    text = "".join(chr(97 + i % 7) for i in range(1000))
    ds = TextDataset(text, val_fraction=0.1, seq_len=10)
    assert len(ds.ids["train"]) == 900 and len(ds.ids["val"]) == 100
    B = 4
    L = (900 - 1) // B
    n_chunks = math.ceil(L / 10)
    first, second = ds.train_batch(0, B, 0), ds.train_batch(1, B, 0)
    assert first.reset and not second.reset and ds.train_batch(n_chunks, B, 0).reset
    assert first.x.shape == (10, B)
    # the second chunk continues each stream where the first stopped
    np.testing.assert_array_equal(second.x[0], first.y[-1])
    np.testing.assert_array_equal(first.x[1:], first.y[:-1])
    evals = list(ds.eval_batches("val", 4))
    assert evals[0].reset and sum(b.mask.sum() for b in evals) > 0


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n \n\t\n", "is empty"),
    (b"\xff\xfeabc", "is not UTF-8 text"),
    (b"ab\x00cd", "contains NUL bytes"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        LineDataset.from_file(path)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


def test_too_small_for_split_or_batch():
    with pytest.raises(DataError, match="too few for val_fraction"):
        LineDataset("a\nb", val_fraction=0.5, test_fraction=0.4)
    ds = LineDataset("a\nb\nc\nd\ne", val_fraction=0.2)
    with pytest.raises(DataError, match="batch_size=9 is larger than the 4 training lines"):
        ds.train_batch(0, 9, 0)
    with pytest.raises(DataError, match="val_fraction must be in"):
        LineDataset("a\nb", val_fraction=1.5)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_any_text_is_either_a_dataset_or_a_clear_error(text):
    try:
        ds = LineDataset(text, val_fraction=0.2, seed=0)
    except DataError:
        return
    for lines in ds.lines.values():
        for line in lines:
            assert ds.vocab.decode(ds.vocab.encode(line)) == line


def test_unigram_baseline():
    train = np.array([1, 1, 2, 0])
    assert unigram_nll(train, np.array([1]), 3) == pytest.approx(-math.log(3 / 7))


# ------------------------------------------------------------------------------------- sampling

def test_samplers_shape_the_distribution():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    np.testing.assert_allclose(SAMPLERS.build("softmax").probs(logits), [[0.5, 0.3, 0.15, 0.05]])
    cold = SAMPLERS.build("softmax", temperature=0.5).probs(logits)
    assert cold[0, 0] > 0.5
    np.testing.assert_allclose(SAMPLERS.build("topk", k=2).probs(logits), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(SAMPLERS.build("topp", p=0.75).probs(logits), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(SAMPLERS.build("topp", p=0.85).probs(logits),
                               [[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]])
    assert SAMPLERS.build("greedy")(logits, None)[0] == 0
    for bad in [dict(temperature=0), dict(temperature=-1)]:
        with pytest.raises(ValueError, match="temperature must be > 0"):
            SAMPLERS.build("softmax", **bad)
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        SAMPLERS.build("topp", p=1.5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        SAMPLERS.build("topk", k=0)


def test_sampler_draws_follow_the_probabilities():
    logits = np.tile(np.log(np.array([0.2, 0.5, 0.3])), (20000, 1))
    draws = SAMPLERS.build("softmax")(logits, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.015)


def test_generate_names():
    ds = LineDataset("abc\nbca\ncab\nacb\nbac", val_fraction=0.2)
    lm = CharLM(len(ds.vocab), "lstm", 8)
    params = lm.init_params(np.random.default_rng(0))
    names = generate(lm, params, ds.vocab, SAMPLERS.build("softmax"), np.random.default_rng(1), n=6,
                     prime="b", max_len=12)
    again = generate(lm, params, ds.vocab, SAMPLERS.build("softmax"), np.random.default_rng(1), n=6,
                     prime="b", max_len=12)
    assert names == again and len(names) == 6
    for name in names:
        assert name.startswith("b") and "\n" not in name and len(name) <= 13
    with pytest.raises(DataError, match="not in the vocabulary"):
        generate(lm, params, ds.vocab, SAMPLERS.build("greedy"), np.random.default_rng(1), prime="z")


def test_dataset_registry():
    assert DATASETS.names() == ["lines", "text"]
