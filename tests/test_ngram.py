"""fastseq.ngram: counting (Cython vs NumPy reference vs Counter), Laplace and Kneser-Ney
models (against KenLM's published perplexities and the kenlm client), ARPA."""
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastseq.errors import FastseqError
from fastseq.ngram import (ArpaError, BadDiscountError, KneserNeyLM, LaplaceLM, NGramCounts, count_in_pieces,
                           count_ngrams, count_ngrams_reference, load_arpa)
from fastseq.text import Vocab, read_lines

# KenLM (lmplz -o N, then query) on the Time Machine split, from ../shared/data/README.md.
KENLM_PPL = {2: (266.974851, 177.812430), 3: (258.715650, 171.816939), 4: (258.296094, 171.590142)}


@pytest.fixture(scope="module")
def tm_split():
    lines = [line for line in read_lines("timemachine", "d2l") if line]
    n = int(len(lines) * 0.9)
    return [line.split() for line in lines[:n]], [line.split() for line in lines[n:]]


@pytest.fixture(scope="module")
def tm_words():
    words = " ".join(read_lines("timemachine", "d2l")).split()
    vocab = Vocab(words)
    return vocab.encode(words), vocab


def run_isolated(code, memory_limit=1 << 31):
    """Run code in a fresh interpreter (address space capped), so that a crash or an
    out-of-bounds write in a kernel fails the test instead of killing pytest."""
    code = "import resource; resource.setrlimit(resource.RLIMIT_AS, (%d, %d))\n" % (memory_limit, memory_limit) \
        + textwrap.dedent(code)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr[-2000:]}"
    return p.stdout


def counter_oracle(ids, n):
    """Counts of n-grams by the textbook method: collections.Counter over zip."""
    ids = list(map(int, ids))
    return Counter(zip(*[ids[i:] for i in range(n)]))


# ----- counting ------------------------------------------------------------------------------
@pytest.mark.parametrize("V, T, order", [(2, 500, 6), (7, 3000, 5), (300, 5000, 4), (1 << 20, 4000, 5)])
def test_kernel_matches_reference_on_random_ids(V, T, order):
    rng = np.random.default_rng(V + T)
    ids = rng.integers(0, V, T)
    fast, ref = count_ngrams(ids, order, vocab_size=V), count_ngrams_reference(ids, order, vocab_size=V)
    for n in range(1, order + 1):
        assert np.array_equal(fast.grams[n], ref.grams[n]) and np.array_equal(fast.counts[n], ref.counts[n])
        assert fast.total(n) == T - n + 1


def test_kernel_matches_reference_and_counter_on_timemachine(tm_words):
    ids, vocab = tm_words
    fast = count_ngrams(ids, 4, vocab_size=len(vocab))
    assert fast == count_ngrams_reference(ids, 4, vocab_size=len(vocab))
    for n in (1, 2, 3):
        assert fast.to_dict(n) == dict(counter_oracle(ids, n))
    g, c = fast[2]
    assert np.all(np.diff(g[:, 0]) >= 0)                   # lexicographic order
    top = g[np.argmax(c)]
    assert vocab.to_tokens(top.tolist()) == ["of", "the"]


def test_sentence_boundaries_no_ngram_crosses_a_line():
    # sentences [5 6] [7] [] [5 6 7], wrapped in bos=1 / eos=2
    ids, lengths = np.array([5, 6, 7, 5, 6, 7]), [2, 1, 0, 3]
    got = count_ngrams(ids, 3, lengths=lengths, bos=1, eos=2)
    want = Counter()
    for s in ([1, 5, 6, 2], [1, 7, 2], [1, 2], [1, 5, 6, 7, 2]):
        want.update(counter_oracle(s, 3))
    assert got.to_dict(3) == dict(want)
    assert got.to_dict(2)[(1, 2)] == 1 and (2, 1) not in got.to_dict(2)
    assert got == count_ngrams_reference(ids, 3, lengths=lengths, bos=1, eos=2)


def test_sentences_on_real_corpus_match_reference(tm_split):
    train, _ = tm_split
    vocab = Vocab(train, reserved_tokens=["<s>", "</s>"])
    ids = vocab.encode(train)
    lengths = [len(s) for s in train]
    kw = dict(lengths=lengths, bos=vocab["<s>"], eos=vocab["</s>"], vocab_size=len(vocab))
    assert count_ngrams(ids, 5, **kw) == count_ngrams_reference(ids, 5, **kw)


def test_counts_merge_across_cuts():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, 1000)
    whole = count_ngrams(ids, 4)
    for piece in (1, 3, 97, 500, 1000, 5000):
        assert count_in_pieces(ids, 4, piece) == whole
    # Two halves without context miss exactly the n-grams spanning the cut...
    halves = count_ngrams(ids[:400], 4, vocab_size=5) + count_ngrams(ids[400:], 4, vocab_size=5)
    for n in range(1, 5):
        missing = Counter(whole.to_dict(n))
        missing.subtract(halves.to_dict(n))
        spanning = counter_oracle(ids[400 - n + 1:400 + n - 1], n)
        assert +missing == spanning
    # ...which the context argument adds back.
    second = count_ngrams(ids[400:], 4, vocab_size=5, context=ids[:400])
    assert count_ngrams(ids[:400], 4, vocab_size=5) + second == whole
    assert second == count_ngrams_reference(ids[400:], 4, vocab_size=5, context=ids[:400])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), max_size=7), min_size=1, max_size=6), st.integers(1, 6))
def test_counting_sentences_property(sentences, order):
    ids = np.array([w for s in sentences for w in s], dtype=np.int64)
    got = count_ngrams(ids, order, lengths=[len(s) for s in sentences], bos=5, eos=6, vocab_size=7)
    for n in range(1, order + 1):
        want = Counter()
        for s in sentences:
            want.update(counter_oracle([5] + s + [6], n))
        assert got.to_dict(n) == dict(want)


def test_empty_stream_counts_nothing():
    c = count_ngrams(np.zeros(0, np.int32), 3)
    assert all(len(c.counts[n]) == 0 for n in (1, 2, 3)) and c == count_ngrams_reference([], 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ids=[1, 2], order=0), "order"),
    (dict(ids=[1, 2], order="3"), "order"),
    (dict(ids=[[1, 2]], order=2), "1-D"),
    (dict(ids=[1, -2], order=2), ">= 0"),
    (dict(ids=[1, 9], order=2, vocab_size=5), r"\[0, 5\)"),
    (dict(ids=[0.5, 1.0], order=2), "integer"),
    (dict(ids=[1, 2, 3], order=2, lengths=[1, 1]), "lengths"),
    (dict(ids=[1, 2, 3], order=2, bos=7, vocab_size=5), "bos"),
    (dict(ids=[1, 2, 3], order=2, lengths=[3], context=[1]), "context"),
])
def test_counting_bad_input(kwargs, match):
    ids, order = kwargs.pop("ids"), kwargs.pop("order")
    for fn in (count_ngrams, count_ngrams_reference):
        with pytest.raises(ValueError, match=match):
            fn(ids, order, **kwargs)


@pytest.mark.parametrize("vocab_size", [2.5, np.float64(3.0), "5", True, 0, 2**31, 2**40])
def test_vocab_size_must_be_an_int32_integer(vocab_size):
    # vocab_size=2.5 once let id 2 through (2 < 2.5) into a kernel table of 2 entries
    for fn in (count_ngrams, count_ngrams_reference):
        with pytest.raises(ValueError, match="vocab_size: expected an integer"):
            fn(np.array([0, 1, 2, 2]), 2, vocab_size=vocab_size)
    with pytest.raises(ValueError, match="vocab_size: expected an integer"):
        count_in_pieces(np.array([0, 1, 2, 2]), 2, 2, vocab_size=vocab_size)


@pytest.mark.parametrize("order", [65, 10**7, 2**40])
def test_huge_order_is_refused_at_once(order):
    for fn in (count_ngrams, count_ngrams_reference):
        with pytest.raises(ValueError, match=r"order: expected an integer in \[1, 64\]"):
            fn([1, 2], order)
    assert count_ngrams([1, 2], 64) == count_ngrams_reference([1, 2], 64)


def test_kernel_checks_its_contract():
    # called directly with ids outside [0, V) or a room past the end: a ValueError, never a write out of bounds
    out = run_isolated("""
        import numpy as np
        from fastseq.ngram import _count
        for ids, room, V in (([0, 5, 1], [3, 2, 1], 3), ([0, -1, 1], [3, 2, 1], 3), ([0, 1, 2], [3, 9, 1], 3),
                             ([0, 1, 2], [3, 2], 3), ([0, 1, 2], [3, 2, 0], 3)):
            try:
                _count.count_orders(np.array(ids, np.int32), np.array(room, np.int32), 3, V)
            except ValueError as e:
                print("ValueError", e)
        a = np.zeros((3, 2), np.int32)
        try:
            _count.merge_sorted(a, np.ones(3, np.int64), np.zeros((3, 1), np.int32), np.ones(3, np.int64))
        except ValueError as e:
            print("ValueError", e)
    """)
    assert out.count("ValueError") == 6, out


def test_sparse_large_ids_count_in_memory_of_the_tokens():
    # ids up to 2**31 - 2 (or a vocab_size that large) once sized the kernel's tables by the
    # largest id: gigabytes for a handful of tokens
    out = run_isolated("""
        import numpy as np
        from fastseq.ngram import count_ngrams, count_ngrams_reference
        ids = np.array([7, 2**31 - 2, 7, 2**30, 2**31 - 2, 7, 2**30], np.int64)
        a = count_ngrams(ids, 3)
        assert a == count_ngrams_reference(ids, 3), a
        assert a.to_dict(2) == {(7, 2**30): 2, (7, 2**31 - 2): 1, (2**30, 2**31 - 2): 1, (2**31 - 2, 7): 2}
        assert a.vocab_size == 2**31 - 1
        b = count_ngrams(np.array([3, 1, 3]), 2, vocab_size=2**31 - 1, lengths=[1, 2], bos=2**31 - 3, eos=0)
        assert b == count_ngrams_reference(np.array([3, 1, 3]), 2, vocab_size=2**31 - 1, lengths=[1, 2],
                                           bos=2**31 - 3, eos=0)
        # sentences [3] and [1, 3], each wrapped in 2**31 - 3 ... 0
        assert b.to_dict(2) == {(2**31 - 3, 3): 1, (3, 0): 2, (2**31 - 3, 1): 1, (1, 3): 1}, b.to_dict(2)
        print("ok")
    """, memory_limit=1 << 30)
    assert out.strip() == "ok"


def test_noncontiguous_and_byteswapped_ids():
    ids = (np.arange(40, dtype=np.int32) % 5)[::3]                  # a strided view
    assert not ids.flags.c_contiguous
    want = count_ngrams_reference(ids.copy(), 3)
    assert count_ngrams(ids, 3) == want
    assert count_ngrams(ids.astype(">i4"), 3) == want
    assert count_ngrams(ids, 3, lengths=[4, 0, 10], bos=5, eos=6) == \
        count_ngrams_reference(ids.copy(), 3, lengths=[4, 0, 10], bos=5, eos=6)


def test_no_sentences_counts_nothing():
    for fn in (count_ngrams, count_ngrams_reference):
        c = fn(np.zeros(0, np.int64), 3, lengths=[], bos=1, eos=2)
        assert c.order == 3 and all(len(c.counts[n]) == 0 for n in (1, 2, 3))


@pytest.mark.parametrize("lengths", [np.array([2**63 - 1, 2**63 - 1, 5], np.uint64),
                                     np.array([2**64 - 1, 4], np.uint64), [5]])
def test_lengths_that_wrap_around(lengths):
    with pytest.raises(ValueError, match="lengths: a sentence length .* exceeds the 3 tokens"):
        count_ngrams([1, 2, 3], 2, lengths=lengths)


@pytest.mark.parametrize("bos", [2**31 - 1, 2**40])
def test_bos_beyond_int32(bos):
    with pytest.raises(ValueError, match="bos: expected a token id"):
        count_ngrams([1, 2, 3], 2, lengths=[3], bos=bos)


def test_stream_longer_than_int32_is_refused(monkeypatch):
    big = np.broadcast_to(np.int32(0), (2**31,))          # no memory behind it
    with pytest.raises(ValueError, match="ids: at most 2147483647 tokens"):
        count_ngrams(big, 2)
    # the padded stream counts too: 3 sentences of 16 tokens + bos/eos exceed a limit of 50
    from fastseq.ngram import counting
    monkeypatch.setattr(counting, "MAX_INT32", 50)
    with pytest.raises(ValueError, match="ids: 54 tokens with the sentence boundaries; at most 50"):
        count_ngrams(np.zeros(48, np.int64), 2, lengths=[16, 16, 16], bos=1, eos=2)


def test_ngram_counts_checks_shapes_before_merging():
    good = count_ngrams([1, 2, 3], 2)
    with pytest.raises(ValueError, match=r"grams\[2\], counts\[2\]: expected shapes \(K, 2\) and \(K,\)"):
        good + NGramCounts({1: np.zeros((0, 1)), 2: np.zeros((5, 1))}, {1: np.zeros(0), 2: np.ones(5)}, 5)
    with pytest.raises(ValueError, match=r"grams\[2\], counts\[2\]"):
        NGramCounts({1: np.zeros((0, 1)), 2: np.zeros((2, 2))}, {1: np.zeros(0), 2: np.ones(1)}, 5)
    with pytest.raises(ValueError, match="orders 1..2"):
        NGramCounts({2: np.zeros((0, 2))}, {2: np.zeros(0)}, 5)


# ----- Kneser-Ney against KenLM ------------------------------------------------------------------
@pytest.mark.parametrize("order", [2, 3, 4])
def test_kneser_ney_matches_kenlm_perplexity(tm_split, order):
    train, test = tm_split
    assert (len(train), sum(map(len, train)), len(test), sum(map(len, test))) == (2563, 29496, 285, 3279)
    pp = KneserNeyLM(order).fit(train).perplexity(test)
    assert (pp.tokens, pp.oov) == (3564, 270)
    incl, excl = KENLM_PPL[order]
    assert pp.including_oov == pytest.approx(incl, rel=1e-4)
    assert pp.excluding_oov == pytest.approx(excl, rel=1e-4)


def test_kneser_ney_order5_refused_then_fallback(tm_split):
    train, test = tm_split
    with pytest.raises(BadDiscountError, match=r"order=5.*5-gram discount.*discount_fallback"):
        KneserNeyLM(5).fit(train)
    m = KneserNeyLM(5, discount_fallback=True).fit(train)
    assert m.discounts[5] == (0.5, 1.0, 1.5)
    assert m.discounts[4] == KneserNeyLM(5, discount_fallback=True).fit(train).discounts[4] != (0.5, 1.0, 1.5)
    assert 200 < m.perplexity(test).including_oov < 300


def test_discounts_follow_chen_goodman_formula():
    # Order 1: adjusted counts are raw counts. a4 b1 c2 d1 e2 f2 g1 </s>4: no count 3 -> refused
    with pytest.raises(BadDiscountError, match="order=1.*adjusted count 3"):
        KneserNeyLM(1).fit([["a", "a", "a", "b"], ["a", "c", "c"], ["d", "e", "e"], ["f", "f", "g"]])
    # a3 b1 c2 d1 e3 f1 g1 </s>3 -> n1=4, n2=1, n3=3: D2 = 2 - 3 Y 3 / 1 = -4
    bad = [["a", "a", "a", "b"], ["c", "c", "d"], ["e", "e", "e", "f", "g"]]
    with pytest.raises(BadDiscountError, match=r"1-gram discount D2 = -4 is outside \[0, 2\]"):
        KneserNeyLM(1).fit(bad)
    assert KneserNeyLM(1, discount_fallback=(0.25, 1.0, 2.0)).fit(bad).discounts[1] == (0.25, 1.0, 2.0)
    # one sentence: 7 words once (+ </s>), 4 twice, 2 three times, 1 four times -> n = 8, 4, 2, 1
    words = list("abcdefg") + list("hijk") * 2 + list("lm") * 3 + ["n"] * 4
    m = KneserNeyLM(1).fit([words])
    y = 8 / (8 + 2 * 4)
    assert m.discounts[1] == pytest.approx((1 - 2 * y * 4 / 8, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    # and the unigram probabilities: (c - D(c)) / 26 + gamma / (V - 1), gamma = sum_j D_j n_j / 26
    D1, D2, D3 = m.discounts[1]
    gamma = (8 * D1 + 4 * D2 + 3 * D3) / 26
    V1 = 14 + 2                                              # 14 words, </s>, <unk>
    assert m.prob("n") == pytest.approx((4 - D3) / 26 + gamma / V1)
    assert m.prob("h") == pytest.approx((2 - D2) / 26 + gamma / V1)
    assert m.prob("zzz") == pytest.approx(gamma / V1)


# ----- Laplace ------------------------------------------------------------------------------
def test_laplace_by_hand():
    m = LaplaceLM(2, eps=(1.0, 2.0)).fit([["a", "b"], ["a", "a"]])
    # predictable tokens: <unk> </s> a b (m = 4); counts a3 b1 </s>2 (n = 6)
    p1 = {"a": 3.25 / 7, "b": 1.25 / 7, "</s>": 2.25 / 7, "<unk>": 0.25 / 7}
    assert m.prob("a") == pytest.approx(p1["a"]) and m.prob("zzz") == pytest.approx(p1["<unk>"])
    # n(<s>)=2, n(a)=3 as a context, n(b)=1; (<s>,a)=2 (a,b)=1 (a,a)=1 (a,</s>)=1 (b,</s>)=1
    assert m.prob("a", ["<s>"]) == pytest.approx((2 + 2 * p1["a"]) / 4)
    assert m.prob("b", ["<s>"]) == pytest.approx(2 * p1["b"] / 4)
    assert m.prob("b", ["a"]) == pytest.approx((1 + 2 * p1["b"]) / 5)
    assert m.prob("a", ["b"]) == pytest.approx(2 * p1["a"] / 3)
    assert m.prob("a", ["</s>"]) == pytest.approx(p1["a"])          # never a context: back off
    assert m.prob("a", ["qqq"]) == pytest.approx(p1["a"])
    want = math.log10((2 + 2 * p1["a"]) / 4 * (1 + 2 * p1["b"]) / 5 * (1 + 2 * p1["</s>"]) / 3)
    assert m.score("a b") == pytest.approx(want)
    assert m.logprob("a", ["<s>"]) == pytest.approx(math.log10((2 + 2 * p1["a"]) / 4))
    assert m.logprob("b", ["<s>", "a"]) == pytest.approx(math.log10((1 + 2 * p1["b"]) / 5))
    assert m.score("a b", bos=False, eos=False) == pytest.approx(math.log10(p1["a"] * (1 + 2 * p1["b"]) / 5))
    # The book's slip, n(x, x') + eps_2 P(x), would not normalise: over the 4 predictable
    # tokens after 'a' it sums to (3 + 4 * 2 * P(a)) / 5, not 1.
    assert abs((3 + 4 * 2 * p1["a"]) / 5 - 1) > 0.1
    assert sum(m.prob(w, ["a"]) for w in ("a", "b", "</s>", "<unk>")) == pytest.approx(1.0, abs=1e-12)


def test_laplace_trigram_by_hand():
    # The recursion one level further: P(w | c) = (n(c, w) + eps_3 P(w | c')) / (n(c) + eps_3),
    # c' = c without its first token. Same corpus, eps = (1, 2, 3).
    m = LaplaceLM(3, eps=(1.0, 2.0, 3.0)).fit([["a", "b"], ["a", "a"]])
    p1 = {"a": 3.25 / 7, "b": 1.25 / 7, "</s>": 2.25 / 7, "<unk>": 0.25 / 7}
    p2a = {w: (n + 2 * p1[w]) / 5 for w, n in (("a", 1), ("b", 1), ("</s>", 1), ("<unk>", 0))}   # after 'a'
    p2b = {w: (n + 2 * p1[w]) / 3 for w, n in (("a", 0), ("b", 0), ("</s>", 1), ("<unk>", 0))}   # after 'b'
    # trigrams: (<s> a b) (a b </s>) (<s> a a) (a a </s>); n(<s> a) = 2, n(a b) = 1, n(a a) = 1
    assert m.prob("b", ["<s>", "a"]) == pytest.approx((1 + 3 * p2a["b"]) / 5)
    assert m.prob("</s>", ["<s>", "a"]) == pytest.approx(3 * p2a["</s>"] / 5)
    assert m.prob("</s>", ["a", "b"]) == pytest.approx((1 + 3 * p2b["</s>"]) / 4)
    assert m.prob("a", ["a", "b"]) == pytest.approx(3 * p2b["a"] / 4)
    assert m.prob("a", ["b", "a"]) == pytest.approx(p2a["a"])             # 'b a' never a context
    assert m.prob("zzz", ["<s>", "a"]) == pytest.approx(3 * p2a["<unk>"] / 5)
    want = math.log10((2 + 2 * p1["a"]) / 4 * (1 + 3 * p2a["b"]) / 5 * (1 + 3 * p2b["</s>"]) / 4)
    assert m.score("a b") == pytest.approx(want)
    for ctx in (["<s>", "a"], ["a", "b"], ["a", "a"], ["b", "a"], ["<unk>", "</s>"]):
        assert m.distribution(ctx).sum() == pytest.approx(1.0, abs=1e-12)


# ----- shared API ----------------------------------------------------------------------------
MODELS = [(LaplaceLM, 1, {}), (LaplaceLM, 3, dict(eps=(0.1, 0.5, 2.0))), (KneserNeyLM, 2, {}),
          (KneserNeyLM, 4, {})]


@pytest.mark.parametrize("cls, order, kw", MODELS)
def test_probabilities_sum_to_one_for_any_context(tm_split, cls, order, kw):
    train, _ = tm_split
    m = cls(order, **kw).fit(train[:800])
    contexts = [[], ["<s>"], ["<s>", "the"], ["the", "time"], ["of", "the", "time"], ["zzz"], ["zzz", "the"],
                ["the", "qqq", "xx"], ["</s>"], ["<s>", "i", "had"], ["<unk>"], ["the", "<unk>"],
                ["the", "</s>", "<s>"], ["</s>", "<s>", "the"], ["<s>", "<s>"]]
    for ctx in contexts:
        p = m.distribution(ctx)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        assert p.min() >= 0 and p[m.vocab.index("<s>")] == 0
        for w in ("the", "time", "</s>", "<unk>"):             # the scoring path agrees
            assert m.prob(w, ctx) == pytest.approx(p[m.vocab.index(w)], rel=1e-12)


@pytest.mark.parametrize("cls, order, kw", MODELS)
def test_perplexity_is_kenlm_query_arithmetic(tm_split, cls, order, kw):
    train, test = tm_split
    m = cls(order, **kw).fit(train[:800])
    pp = m.perplexity(test[:50])
    scores = [m.score(s) for s in test[:50]]
    vocab = set(m.vocab)
    oov_lp = sum(math.log10(m.prob(w, ["<s>"] + s[:i])) for s in test[:50] for i, w in enumerate(s) if w not in vocab)
    tokens = sum(len(s) + 1 for s in test[:50])
    oov = sum(w not in vocab for s in test[:50] for w in s)
    assert (pp.tokens, pp.oov) == (tokens, oov) and oov > 0
    assert pp.including_oov == pytest.approx(10 ** (-sum(scores) / tokens), rel=1e-12)
    assert pp.excluding_oov == pytest.approx(10 ** (-(sum(scores) - oov_lp) / (tokens - oov)), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcd"), max_size=6), min_size=1, max_size=8).filter(lambda c: any(c)),
       st.integers(1, 4), st.booleans(),
       st.lists(st.sampled_from(["a", "b", "c", "d", "<s>", "</s>", "<unk>", "zz"]), max_size=4))
def test_any_model_any_context_sums_to_one_property(corpus, order, kn, context):
    m = (KneserNeyLM(order, discount_fallback=True) if kn else LaplaceLM(order, eps=0.7)).fit(corpus)
    p = m.distribution(context)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p[m.vocab.index("<s>")] == 0 and np.delete(p, m.vocab.index("<s>")).min() > 0
    stream, q, _, _ = m._corpus(corpus + [context], True, True)
    assert np.allclose(m._logp_fast(stream, q), m._logp_stream(stream, q), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls, order, kw", MODELS + [(KneserNeyLM, 5, dict(discount_fallback=True))])
def test_cython_scoring_equals_numpy_scoring(tm_split, cls, order, kw):
    train, test = tm_split
    m = cls(order, **kw).fit(train)
    for bos in (True, False):
        stream, q, _, _ = m._corpus(test[:150] + [[], ["zzz", "qq"]], bos, True)
        assert np.allclose(m._logp_fast(stream, q), m._logp_stream(stream, q), rtol=0, atol=1e-12)


def test_fit_from_ids_with_vocab_equals_fit_from_sentences(tm_split):
    train, test = tm_split
    vocab = Vocab(train)
    lengths = [len(s) for s in train]
    for cls in (LaplaceLM, KneserNeyLM):
        a = cls(3).fit(train).perplexity(test)
        b = cls(3).fit(vocab.encode(train), vocab=vocab, lengths=lengths).perplexity(test)
        assert a.tokens == b.tokens and a.oov == b.oov
        assert b.including_oov == pytest.approx(a.including_oov, rel=1e-12)


def test_generate(tm_split):
    train, _ = tm_split
    m = KneserNeyLM(3).fit(train)
    a, b = m.generate(30, prefix=["the", "time"], rng=5), m.generate(30, prefix=["the", "time"], rng=5)
    assert a == b and len(a) == 30 and set(a) <= set(m.vocab) - {"<s>"}
    # a unigram model's samples follow its distribution
    u = LaplaceLM(1, eps=50.0).fit([["a"] * 6 + ["b"] * 3])
    s = Counter(u.generate(4000, rng=0))
    p = u.distribution()
    for w in ("a", "b", "</s>", "<unk>"):
        q = p[u.vocab.index(w)]
        assert abs(s[w] / 4000 - q) < 4 * math.sqrt(q * (1 - q) / 4000)


@pytest.mark.parametrize("cls, kw", [(LaplaceLM, {}), (KneserNeyLM, {})])
def test_model_bad_input(cls, kw):
    with pytest.raises(ValueError, match="order"):
        cls(0)
    with pytest.raises(ValueError, match="empty corpus"):
        cls(2).fit([])
    with pytest.raises(ValueError, match="empty corpus"):
        cls(2).fit([[], []])
    with pytest.raises(ValueError, match="one string"):
        cls(2).fit("the time machine")
    with pytest.raises(ValueError, match="reserved"):
        cls(2).fit([["a", "</s>", "b"]])
    with pytest.raises(ValueError, match="vocab="):
        cls(2).fit([1, 2, 3])
    vocab = Vocab(["a", "b"])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        cls(2).fit(np.array([1, 2, 7]), vocab=vocab)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        cls(2).fit([1, 2, 7], vocab=vocab)
    with pytest.raises(ValueError, match="Vocab"):
        cls(2).fit(np.array([1, 2]))
    for call in (lambda m: m.score("a b"), lambda m: m.prob("a"), lambda m: m.to_arpa(os.devnull)):
        with pytest.raises(FastseqError, match=f"^{cls.__name__}: not fitted; call fit"):
            call(cls(2))
    with pytest.raises(ValueError, match="eps"):
        LaplaceLM(2, eps=(1.0, -1.0))
    with pytest.raises(ValueError, match="discount_fallback"):
        KneserNeyLM(2, discount_fallback=(0.5, 3.0, 1.0))


@pytest.mark.parametrize("flag", [["the"], "the", 1, 0, None, np.array([True])])
def test_score_refuses_a_context_in_place_of_bos(flag):
    # issue 10: score("time", ["the"]) took the list as bos and returned a sentence's log10
    m = LaplaceLM(2).fit([["the", "time"]])
    for kw in ({"bos": flag}, {"eos": flag}):
        with pytest.raises(FastseqError, match=r"^(bos|eos): expected True or False.*prob\(word, context\).*"
                                               r"logprob\(word, context\)"):
            m.score("time", **kw)
    with pytest.raises(FastseqError, match="bos: expected True or False"):
        m.score("time", ["the"])
    assert m.score("time", np.True_, False) == m.score("time", True, False)
    assert m.logprob("time", ["the"]) == pytest.approx(math.log10(m.prob("time", ["the"])), abs=1e-15)
    assert m.logprob("<s>", ["the"]) == -math.inf and m.prob("<s>") == 0.0


def test_bad_discount_error_is_a_fastseq_error_naming_argument_and_flag():
    with pytest.raises(FastseqError) as e:
        KneserNeyLM(1).fit([["a", "a", "a", "b"], ["a", "c", "c"], ["d", "e", "e"], ["f", "f", "g"]])
    assert isinstance(e.value, BadDiscountError)
    assert "discount_fallback=True" in str(e.value) and "--discount-fallback" in str(e.value)


def test_fit_counts_of_merged_pieces_equals_fit(tm_split):
    # counts merged from pieces carry no parent links: fit_counts finds them
    train, _ = tm_split
    from fastseq.ngram.models import _sentences_to_ids
    ids, lengths, tokens = _sentences_to_ids(train)
    cut = int(lengths[:1000].sum())
    kw = dict(bos=1, eos=2, vocab_size=len(tokens))
    merged = count_ngrams(ids[:cut], 4, lengths=lengths[:1000], **kw) + \
        count_ngrams(ids[cut:], 4, lengths=lengths[1000:], **kw)
    assert merged.parents is None
    for make in (lambda: KneserNeyLM(4), lambda: LaplaceLM(4, eps=0.5)):
        a, b = make().fit_counts(tokens, merged), make().fit(train)
        for k in range(1, 5):
            assert np.array_equal(a._logp[k], b._logp[k]) and np.array_equal(a._logb[k], b._logb[k])
    with pytest.raises(FastseqError, match="tokens"):
        KneserNeyLM(4).fit_counts(tokens[1:], merged)
    with pytest.raises(FastseqError, match="counts: expected NGramCounts of order 3"):
        KneserNeyLM(3).fit_counts(tokens, merged)


def test_failed_refit_leaves_the_fitted_model_intact(tm_split):
    # a refit refused after counting (BadDiscountError) once left the new data's lookup keys
    # in the fitted model: P(. | the time) summed to 0.53
    train, _ = tm_split
    m = KneserNeyLM(3).fit(train[:800])
    ctxs = [["the", "time"], ["<s>", "i"], ["of", "the"]]
    before = [m.distribution(c) for c in ctxs] + [[m.prob(w, c) for c in ctxs for w in ("the", "time", "</s>")]]
    with pytest.raises(BadDiscountError):
        m.fit([["a", "b", "c"], ["a", "b"]])
    after = [m.distribution(c) for c in ctxs] + [[m.prob(w, c) for c in ctxs for w in ("the", "time", "</s>")]]
    for a, b in zip(before, after):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("cls, kw", [(LaplaceLM, {}), (KneserNeyLM, dict(discount_fallback=True))])
@pytest.mark.parametrize("reserved", ["<s>", "</s>"])
def test_fit_ids_refuses_sentence_markers_inside_sentences(cls, kw, reserved):
    # a Vocab with <s> / </s>: an id of one of them inside a sentence once became a word
    # ('<s>' predicted with probability forced to 0, so P(. | a) summed to 0.75)
    vocab = Vocab(["a", "b", "a"], reserved_tokens=["<s>", "</s>"])
    with pytest.raises(ValueError, match=f"sentences: id {vocab[reserved]} at position 1 is the Vocab's '{reserved}'"):
        cls(2, **kw).fit(vocab.encode(["a", reserved, "b", "a"]), vocab=vocab)
    m = cls(2, **kw).fit(vocab.encode(["a", "b", "a", "a"]), vocab=vocab, lengths=[2, 2])
    assert m.distribution(["a"]).sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda m: m.prob(5), "word: expected a string token"),
    (lambda m: m.prob(["a"]), "word: expected a string token"),
    (lambda m: m.prob("a", None), "context: expected a string or a sequence"),
    (lambda m: m.prob("a", [1]), "context: expected string tokens"),
    (lambda m: m.distribution([1, 2]), "context: expected string tokens"),
    (lambda m: m.score([1, 2]), "words: expected string tokens"),
    (lambda m: m.score([["a"]]), "words: expected string tokens"),
    (lambda m: m.score(None), "words: expected a string or a sequence"),
    (lambda m: m.perplexity([]), "sentences: empty corpus"),
    (lambda m: m.perplexity([None]), "sentences: expected a string or a sequence"),
    (lambda m: m.perplexity(5), "sentences: expected an iterable"),
    (lambda m: m.generate(3, None), "prefix: expected a string or a sequence"),
])
def test_scoring_bad_input(call, match):
    # non-string tokens were silently scored as '<unk>'; the rest raised TypeError or a broadcast error
    m = LaplaceLM(2).fit([["a", "b"]])
    with pytest.raises(ValueError, match=match):
        call(m)


@pytest.mark.parametrize("make, match", [
    (lambda: KneserNeyLM(2, discounts={1: (float("nan"), 1, 1.5)}), "discounts"),
    (lambda: KneserNeyLM(2, discounts=[(0.5, 1, 1.5)]), "discounts"),
    (lambda: KneserNeyLM(2, discount_fallback="yes"), "discount_fallback"),
    (lambda: LaplaceLM(2, eps="a"), "eps"),
    (lambda: LaplaceLM(65), r"order: expected an integer in \[1, 64\]"),
    (lambda: KneserNeyLM(10**6), r"order: expected an integer in \[1, 64\]"),
    (lambda: LaplaceLM(2).fit([["a", ["b"]]]), "sentences: expected string tokens"),
    (lambda: LaplaceLM(2).fit([["a\udcff", "b"]]).to_arpa(os.devnull), "UTF-8 cannot encode"),
])
def test_constructor_and_fit_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_distribution_continues_past_a_pruned_context(tmp_path):
    # 4-gram file where the context 'x a b' is stored but its suffix 'a b' is not (pruned):
    # distribution() stopped at the missing shorter context, prob() did not
    p = tmp_path / "m.arpa"
    p.write_text("""\\data\\
ngram 1=5
ngram 2=2
ngram 3=1
ngram 4=1

\\1-grams:
-1.0\t<s>\t-0.3
-0.5\t</s>\t-0.1
-0.6\ta\t-0.2
-0.9\tb\t-0.25
-0.7\tx\t-0.15

\\2-grams:
-0.2\tx a\t-0.05
-0.4\tb x

\\3-grams:
-0.1\tx a b\t-0.35

\\4-grams:
-0.02\tx a b x

\\end\\
""")
    m = load_arpa(p)
    d = m.distribution(["x", "a", "b"])
    for w in ("x", "a", "</s>", "<unk>"):
        assert d[m.vocab.index(w)] == pytest.approx(m.prob(w, ["x", "a", "b"]), rel=1e-12)
    assert m.prob("x", ["x", "a", "b"]) == pytest.approx(10 ** -0.02)
    # 'a' after 'x a b': backoff of 'x a b' (-0.35), 'a b' absent (0), 'b' -0.25, then P(a) -0.6
    assert d[m.vocab.index("a")] == pytest.approx(10 ** (-0.35 - 0.25 - 0.6))


# ----- ARPA and the kenlm client -------------------------------------------------------------
@pytest.mark.parametrize("cls, order, kw", [
    (LaplaceLM, 2, {}), (LaplaceLM, 3, dict(eps=0.3)), (LaplaceLM, 4, {}), (LaplaceLM, 5, dict(eps=(0.5, 1, 2, 3, 4))),
    (KneserNeyLM, 2, {}), (KneserNeyLM, 3, {}), (KneserNeyLM, 4, {}), (KneserNeyLM, 5, dict(discount_fallback=True)),
])
def test_kenlm_scores_fastseq_arpa(tm_split, tmp_path, cls, order, kw):
    kenlm = pytest.importorskip("kenlm")
    train, test = tm_split
    m = cls(order, **kw).fit(train)
    path = tmp_path / "m.arpa"
    m.to_arpa(path)
    k = kenlm.Model(str(path))
    loaded = load_arpa(path)
    sents = [" ".join(s) for s in test[:120]] + ["", "zzz qqq the", "the time traveller", "<unk> the"]
    for s in sents:
        for bos in (True, False):
            for eos in (True, False):
                ours = m.score(s, bos=bos, eos=eos)
                assert k.score(s, bos=bos, eos=eos) == pytest.approx(ours, rel=1e-4, abs=1e-4)
                assert loaded.score(s, bos=bos, eos=eos) == ours        # the file holds the exact doubles
    assert loaded.perplexity(test) == m.perplexity(test)
    for ctx in ([], ["<s>", "the"], ["zzz", "time"], ["of", "the", "time", "traveller"]):
        assert np.array_equal(loaded.distribution(ctx), m.distribution(ctx))
        assert loaded.distribution(ctx).sum() == pytest.approx(1.0, abs=1e-12)


ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.3
-0.5\t</s>
-0.6\ta\t-0.2
-0.9\tb

\\2-grams:
-0.2\t<s> a
-0.4\ta b

\\end\\
"""


@pytest.mark.parametrize("cls, order, kw", [(LaplaceLM, 3, {}), (KneserNeyLM, 2, {}), (KneserNeyLM, 4, {}),
                                            (KneserNeyLM, 5, dict(discount_fallback=True))])
def test_perplexity_counts_as_kenlm_query(tm_split, tmp_path, cls, order, kw):
    # KenLM's query sums full_scores: every word and '</s>' is a token; a word outside the
    # vocabulary (including a literal '<unk>') is OOV, left out of both sums for excluding_oov
    kenlm = pytest.importorskip("kenlm")
    train, test = tm_split
    test = test + [["<unk>", "the"], [], ["zzz"]]
    m = cls(order, **kw).fit(train)
    m.to_arpa(tmp_path / "m.arpa")
    k = kenlm.Model(str(tmp_path / "m.arpa"))
    total = total_oov = tokens = oov = 0
    for sent in test:
        for lp, _, is_oov in k.full_scores(" ".join(sent)):
            total, tokens = total + lp, tokens + 1
            if is_oov:
                total_oov, oov = total_oov + lp, oov + 1
    pp = m.perplexity(test)
    assert (pp.tokens, pp.oov) == (tokens, oov) == (3564 + 3 + 1 + 2, 270 + 1 + 1)
    # kenlm computes in float32: 1e-6 relative is its rounding, far inside the 1e-4
    assert pp.including_oov == pytest.approx(10 ** (-total / tokens), rel=1e-6)
    assert pp.excluding_oov == pytest.approx(10 ** (-(total - total_oov) / (tokens - oov)), rel=1e-6)


def test_zero_backoff_is_written_as_minus_99(tmp_path):
    # Here the estimated 2- and 3-gram D2 is 0 (valid), and 'b a' has only children of count 2:
    # gamma('b a') = 0. log10 gave -inf with a RuntimeWarning, and KenLM refused the file
    # ("Bad backoff -inf"). Zero is now -99, the ARPA convention.
    kenlm = pytest.importorskip("kenlm")
    corpus = [["a", "a", "b", "a"], ["a", "a", "b", "a"], ["a", "a", "b", "b", "a"]]
    m = KneserNeyLM(4, discount_fallback=True).fit(corpus)
    assert m.discounts[2][1] == 0.0
    assert m.prob("zz", ["b", "a"]) > 0
    m.to_arpa(tmp_path / "m.arpa")
    assert "inf" not in (tmp_path / "m.arpa").read_text()
    k, loaded = kenlm.Model(str(tmp_path / "m.arpa")), load_arpa(tmp_path / "m.arpa")
    for s in ("a a b a", "b a b", "b b a zz", "a", "b a a a b"):
        assert k.score(s) == pytest.approx(m.score(s), rel=1e-4, abs=1e-4)
        assert loaded.score(s) == m.score(s)
    for ctx in ([], ["b", "a"], ["a", "b", "a"], ["zz", "b", "a"]):
        assert m.distribution(ctx).sum() == pytest.approx(1.0, abs=1e-12)


def test_load_arpa_small_file_by_hand(tmp_path):
    p = tmp_path / "m.arpa"
    p.write_text(ARPA)
    m = load_arpa(p)
    assert m.order == 2 and m.prob("a", ["<s>"]) == pytest.approx(10 ** -0.2)
    assert m.prob("b", ["<s>"]) == pytest.approx(10 ** (-0.3 - 0.9))
    # missing <unk>: KenLM's -100 (compared in log10: approx's absolute 1e-12 would accept any tiny value)
    assert math.log10(m.prob("zz")) == pytest.approx(-100.0, abs=1e-12)
    assert m.score("zz", bos=False, eos=False) == pytest.approx(-100.0, abs=1e-12)
    assert m.score("a b") == pytest.approx(-0.2 - 0.4 - 0.5)
    assert m.score("b a", bos=False) == pytest.approx(-0.9 - 0.6 + (-0.2 - 0.5))
    # a literal '<s>' inside a sentence is a word with the file's probability (KenLM's reading);
    # load_arpa once replaced it by -99: -101.1 here where KenLM says -3.1
    assert m.score("a <s> b") == pytest.approx((-0.2) + (-0.2 - 1.0) + (-0.3 - 0.9) + (-0.5))
    assert m.score("<s> a", bos=True) == pytest.approx((-0.3 - 1.0) + (-0.2) + (-0.2 - 0.5))
    assert m.prob("<s>", ["a"]) == 0.0 and m.distribution(["a"])[m.vocab.index("<s>")] == 0.0


@pytest.mark.parametrize("old, new, line, match", [
    ("-0.6\ta\t-0.2", "x0.6\ta\t-0.2", 8, "not a number"),
    ("-0.4\ta b", "-0.4\ta b c", 13, "fields"),
    ("-0.4\ta b", "-0.4\ta q", 13, "'q'.*not among the unigrams"),
    ("-0.4\ta b", "-0.4\t<s> a", 13, "twice"),
    ("ngram 2=2", "ngram 2=3", 15, "announced 3 2-grams"),
    ("ngram 2=2", "ngram 2=1", 13, "end"),
    ("\\end\\\n", "", 15, "end of file"),
    ("ngram 2=2", "ngram 3=2", 3, "ngram 2="),
    ("-0.5\t</s>", "0.5\t</s>", 7, "<= 0"),
    # a count no file of this length can hold: refused before anything is sized by it
    ("ngram 2=2", "ngram 2=4000000000", 3, "announces 4000000000 2-grams, but only 13 lines follow"),
    ("ngram 1=4", "ngram 1=100000000000", 2, "announces 100000000000 1-grams"),
    ("a\t-0.2", "a\tinf", 8, "log10 backoff 'inf' must be a number"),
    ("a\t-0.2", "a\tnan", 8, "log10 backoff 'nan' must be a number"),
    ("-1.0\t<s>\t-0.3", "-1.0\tc\t-0.3", 5, "the unigrams have no '<s>'"),
    ("\\data\\", "\\dada\\", 16, r"no '\\data\\' line"),
])
def test_malformed_arpa_names_the_line(tmp_path, old, new, line, match):
    p = tmp_path / "bad.arpa"
    assert old in ARPA
    p.write_text(ARPA.replace(old, new))
    with pytest.raises(ArpaError, match=rf"bad\.arpa:{line}: .*{match}"):
        load_arpa(p)


def test_arpa_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "bad.arpa"
    p.write_bytes(ARPA.replace("-0.9\tb", "-0.9\tb\xff").encode("latin-1"))   # UnicodeDecodeError before
    with pytest.raises(ArpaError, match=r"bad\.arpa:9: not UTF-8 \(byte 0xff"):
        load_arpa(p)


def test_arpa_order_above_64_is_refused_at_its_header_line(tmp_path):
    head = "\\data\\\n" + "".join(f"ngram {k}=0\n" for k in range(1, 66)).replace("ngram 1=0", "ngram 1=2")
    body = "\n\\1-grams:\n-1\t<s>\n-1\t</s>\n" + "".join(f"\n\\{k}-grams:\n" for k in range(2, 66)) + "\n\\end\\\n"
    p = tmp_path / "deep.arpa"
    p.write_text(head + body)
    with pytest.raises(ArpaError, match=r"deep\.arpa:66: order 65 is above the highest supported, 64"):
        load_arpa(p)
    p.write_text(head.replace("ngram 65=0\n", "") + body.replace("\n\\65-grams:\n", ""))
    m = load_arpa(p)                                      # 64 orders load and score
    assert m.order == 64 and m.score("", bos=True, eos=True) == pytest.approx(-1.0)


def test_arpa_with_missing_context_names_the_line(tmp_path):
    p = tmp_path / "bad.arpa"
    p.write_text(ARPA.replace("ngram 2=2", "ngram 2=2\nngram 3=1").replace("\\end\\", "\\3-grams:\n-0.1\tb a b\n\n\\end\\"))
    with pytest.raises(ArpaError, match=r"bad\.arpa:17: the context 'b a' of this 3-gram"):
        load_arpa(p)


def test_arpa_with_missing_suffix_scores_the_stored_ngram(tmp_path):
    # pruned-style file: '<s> a a' is stored but its suffix 'a a' is not
    p = tmp_path / "m.arpa"
    p.write_text(ARPA.replace("ngram 2=2", "ngram 2=2\nngram 3=1")
                 .replace("-0.2\t<s> a", "-0.2\t<s> a\t-0.1").replace("-0.4\ta b", "-0.4\ta b\t0")
                 .replace("\\end\\", "\\3-grams:\n-0.05\t<s> a a\n\n\\end\\"))
    m = load_arpa(p)
    assert m.score("a a") == pytest.approx(-0.2 - 0.05 + (-0.5 - 0.2))
    assert m.prob("a", ["<s>", "a"]) == pytest.approx(10 ** -0.05)
    assert m.prob("b", ["<s>", "a"]) == pytest.approx(10 ** (-0.1 - 0.4))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcde"), max_size=6), min_size=1, max_size=8).filter(lambda c: any(c)),
       st.integers(2, 5), st.booleans(),
       st.lists(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "zz", "<s>", "</s>", "<unk>"]), max_size=6),
                min_size=1, max_size=4))
def test_kenlm_agrees_on_random_small_models_property(tmp_path_factory, corpus, order, kn, sentences):
    kenlm = pytest.importorskip("kenlm")
    m = (KneserNeyLM(order, discount_fallback=True) if kn else LaplaceLM(order, eps=0.7)).fit(corpus)
    path = tmp_path_factory.mktemp("arpa") / "m.arpa"
    m.to_arpa(path)
    k = kenlm.Model(str(path))
    for s in sentences:
        s = " ".join(s)
        for bos, eos in ((True, True), (False, True), (True, False)):
            assert k.score(s, bos=bos, eos=eos) == pytest.approx(m.score(s, bos=bos, eos=eos), rel=1e-4, abs=1e-4)
