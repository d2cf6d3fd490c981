"""Vocab building and encoding (Cython) vs plain Python; clip (C++) vs NumPy.

    bash bench/run bench/bench_text.py
"""
import collections

import numpy as np
import pytest

from fastseq import Vocab, clip_grad_norm, read_lines, tokenize
from fastseq.reference import clip_grad_norm as clip_ref


@pytest.fixture(scope="module")
def words():
    return [t for line in tokenize(read_lines("tinyshakespeare"), "word") for t in line]


@pytest.fixture(scope="module")
def chars():
    return "\n".join(read_lines("tinyshakespeare"))


def counter_vocab_encode(tokens):
    """What a user writes without fastseq: the book's Vocab with collections.Counter."""
    counts = collections.Counter(tokens)
    itos = ["<unk>"] + [t for t, _ in sorted(counts.items(), key=lambda x: x[1], reverse=True)]
    stoi = {t: i for i, t in enumerate(itos)}
    return np.array([stoi.get(t, 0) for t in tokens], dtype=np.int32)


def fastseq_vocab_encode(tokens):
    return Vocab.build(tokens)[1]


@pytest.mark.benchmark(group="vocab-words")
def test_words_counter(benchmark, words):
    benchmark(counter_vocab_encode, words)


@pytest.mark.benchmark(group="vocab-words")
def test_words_fastseq(benchmark, words):
    ids = benchmark(fastseq_vocab_encode, words)
    assert np.array_equal(ids, counter_vocab_encode(words))


@pytest.mark.benchmark(group="vocab-chars")
def test_chars_counter(benchmark, chars):
    benchmark(counter_vocab_encode, chars)


@pytest.mark.benchmark(group="vocab-chars")
def test_chars_fastseq(benchmark, chars):
    ids = benchmark(fastseq_vocab_encode, chars)
    assert np.array_equal(ids, counter_vocab_encode(chars))


def _grads(H, V=28):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in [(V, H), (H, H), (H,), (H, V), (V,)]]


@pytest.mark.parametrize("H", [128, 1024])
@pytest.mark.parametrize("impl", ["cpp", "numpy"])
def test_clip(benchmark, H, impl):
    benchmark.group = f"clip-H{H}"
    g = _grads(H)
    fn = clip_grad_norm if impl == "cpp" else clip_ref
    # theta above the norm: measures the norm pass, the part paid on every step
    benchmark(fn, g, 1e9)
