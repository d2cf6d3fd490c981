"""fastseq.ngram.nltk against nltk.lm itself: the same text in, the same numbers out.

Every comparison is value by value with float64 tolerance 1e-12 relative: the facade evaluates
nltk's formulas in nltk's order of operations on the same integer counts, so the values agree
(in practice bit for bit); 0 and -inf must agree exactly.
"""
import math
import random

import pytest

nltk_lm = pytest.importorskip("nltk.lm")
from nltk.lm import preprocessing as nltk_pre  # noqa: E402
from nltk.lm.util import log_base2 as nltk_log2  # noqa: E402
from nltk.util import everygrams as nltk_everygrams, ngrams as nltk_ngrams  # noqa: E402

import fastseq  # noqa: E402
from fastseq.errors import FastseqError  # noqa: E402
from fastseq.ngram import nltk as fs  # noqa: E402
from fastseq.ngram.nltk import preprocessing as fs_pre  # noqa: E402

ORDER = 3
TOY = [["a", "b", "c"], ["a", "c", "d", "c", "e", "f"]]

MODELS = {
    "MLE": lambda lib, n, **kw: lib.MLE(n, **kw),
    "Lidstone0.1": lambda lib, n, **kw: lib.Lidstone(0.1, n, **kw),
    "Laplace": lambda lib, n, **kw: lib.Laplace(n, **kw),
    "WittenBell": lambda lib, n, **kw: lib.WittenBellInterpolated(n, **kw),
    "KneserNey": lambda lib, n, **kw: lib.KneserNeyInterpolated(n, **kw),
    "KneserNey0.75": lambda lib, n, **kw: lib.KneserNeyInterpolated(n, discount=0.75, **kw),
}


def same(a, b):
    """Equal to 1e-12 relative; zeros and infinities exactly."""
    if a == 0 or b == 0 or math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def fit_pair(name, order, train, **vocab_kw):
    """(nltk model, fastseq model), each fitted with its own library's padded_everygram_pipeline."""
    out = []
    for lib, pre in ((nltk_lm, nltk_pre), (fs, fs_pre)):
        kw = {"vocabulary": lib.Vocabulary(**vocab_kw)} if vocab_kw else {}
        lm = MODELS[name](lib, order, **kw)
        grams, vocab = pre.padded_everygram_pipeline(order, train)
        lm.fit(grams, vocab)
        out.append(lm)
    return tuple(out)


@pytest.fixture(scope="module")
def timemachine():
    """Time Machine sentences (one per non-empty line, the book's d2l cleaning): (train, held-out)."""
    lines = fastseq.read_lines("timemachine", cleaning="d2l")
    sents = [s for s in fastseq.tokenize(lines, "word") if s]
    return sents[:-60], sents[-60:]


def heldout_ngrams(test, order, limit=None):
    """Every n-gram (orders 1..order, with the padding) of the held-out sentences."""
    grams = [g for s in test for g in nltk_everygrams(list(nltk_pre.pad_both_ends(s, n=order)), max_len=order)]
    return grams[:limit]


# the Time Machine cases (nltk's Kneser-Ney costs seconds per hundred scores); toy texts use all of MODELS
TM_MODELS = ["MLE", "Lidstone0.1", "Laplace", "WittenBell", "KneserNey"]


@pytest.fixture(scope="module")
def fitted(timemachine):
    train, _ = timemachine
    return {name: fit_pair(name, ORDER, train) for name in TM_MODELS}


# ----- scores on the Time Machine -----------------------------------------------------------------
def slow(name):
    """nltk's Kneser-Ney rescans all its counts for every score: fewer n-grams keep its tests quick."""
    return name.startswith("Kneser")


@pytest.mark.parametrize("name", TM_MODELS)
def test_score_and_logscore_match_nltk_on_timemachine(name, fitted, timemachine):
    theirs, ours = fitted[name]
    _, test = timemachine
    grams = heldout_ngrams(test, ORDER, limit=100 if slow(name) else None)
    grams += [("the", "time", "traveller", "said"), ("zzz", "qqq", "the"), ("<s>", "<s>", "<s>"),
              ("the", "</s>"), ("<UNK>",), ("time", "<UNK>")]
    oov = sum(w not in ours.vocab for g in grams for w in g)
    assert oov > 0 and any(len(g) == 1 for g in grams) and any(g[0] == "<s>" for g in grams)
    mismatches = []
    for g in grams:
        w, c = g[-1], list(g[:-1])
        a = theirs.score(w, c)
        la = nltk_log2(a) if slow(name) else theirs.logscore(w, c)     # nltk's logscore is log_base2(score)
        b, lb = ours.score(w, c), ours.logscore(w, c)
        if not (same(a, b) and same(la, lb)):
            mismatches.append((g, a, b, la, lb))
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("name", TM_MODELS)
def test_entropy_and_perplexity_match_nltk(name, fitted, timemachine):
    theirs, ours = fitted[name]
    _, test = timemachine
    grams = heldout_ngrams(test, ORDER, limit=100 if slow(name) else None)
    # without the n-grams scored 0 (OOVs under Kneser-Ney and Witten-Bell) the perplexity is finite
    finite = [g for g in grams if ours.score(g[-1], g[:-1]) > 0]
    assert len(finite) > len(grams) // 2
    h, pp = ours.entropy(finite), ours.perplexity(finite)
    expected = theirs.entropy(finite)
    assert math.isfinite(pp) and same(expected, h)
    # nltk's perplexity is pow(2.0, entropy): call it where nltk is quick
    assert same(pow(2.0, expected) if slow(name) else theirs.perplexity(finite), pp)
    if not slow(name):
        assert same(theirs.entropy(grams), ours.entropy(grams))


def test_kneser_ney_gives_unseen_words_zero_like_nltk(fitted):
    theirs, ours = fitted["KneserNey"]
    assert theirs.score("zzzz") == ours.score("zzzz") == 0
    assert theirs.logscore("zzzz", ["the"]) == ours.logscore("zzzz", ["the"]) == float("-inf")
    assert ours.perplexity([("the", "zzzz")]) == float("inf") == theirs.perplexity([("the", "zzzz")])


# ----- toy texts, every word in every context -------------------------------------------------------
# order 1 Kneser-Ney divides by zero in both: test_kneser_ney_order_1_divides_by_zero_like_nltk
@pytest.mark.parametrize("name,order", [(m, n) for m in MODELS for n in (1, 2, 3, 4)
                                        if not (n == 1 and m.startswith("Kneser"))])
def test_every_word_in_every_context_on_toy_text(name, order):
    theirs, ours = fit_pair(name, order, TOY)
    words = sorted(set(theirs.vocab)) + ["zz"]
    contexts = [()] + [(a,) for a in words] + [(a, b) for a in words for b in words] + [("a", "c", "d")]
    for c in contexts:
        for w in words:
            try:
                a = theirs.score(w, list(c))
            except ZeroDivisionError:
                with pytest.raises(ZeroDivisionError):
                    ours.score(w, list(c))
                continue
            assert same(a, ours.score(w, list(c))), (w, c)
            assert same(theirs.unmasked_score(w, c), ours.unmasked_score(w, c)), (w, c)   # no look-ups


def test_kneser_ney_order_1_divides_by_zero_like_nltk():
    theirs, ours = fit_pair("KneserNey", 1, TOY)
    with pytest.raises(ZeroDivisionError):
        theirs.score("a")
    with pytest.raises(ZeroDivisionError, match="no bigrams"):
        ours.score("a")
    with pytest.raises(FastseqError):
        ours.score("a")


def test_kneser_ney_zero_continuation_total_unpadded():
    """Without padding, a context seen only at the start of a sentence has no word before it."""
    text = [[("x",), ("y",), ("x", "y")], [("z",), ("y",), ("z", "y")], [("y",), ("w",), ("y", "w")]]
    models = []
    for lib in (nltk_lm, fs):
        lm = lib.KneserNeyInterpolated(3)
        lm.fit(text, ["x", "y", "z", "w"])
        models.append(lm)
    theirs, ours = models
    for w, c in [("y", ["x"]), ("w", ["y"]), ("y", ["z"])]:
        try:
            expected = theirs.score(w, c)
        except ZeroDivisionError:
            with pytest.raises(ZeroDivisionError, match="never after another word"):
                ours.score(w, c)
        else:
            assert same(expected, ours.score(w, c))
    with pytest.raises(ZeroDivisionError):
        theirs.score("y", ["x"])


# ----- counts and vocabulary ------------------------------------------------------------------------
def test_counts_match_nltk(fitted, timemachine):
    theirs, ours = fitted["MLE"]
    tc, oc = theirs.counts, ours.counts
    assert oc.N() == tc.N() and len(oc) == ORDER    # nltk's len grows as lookups add empty orders
    assert dict(oc.unigrams) == dict(tc.unigrams) and dict(oc[1]) == dict(tc[1])
    for w in ["the", "time", "<s>", "</s>", "<UNK>", "zzzz"]:
        assert oc[w] == tc[w]
    for ctx in [["the"], ("time",), ["<s>"], ["<s>", "<s>"], ("the", "time"), ["zzzz"], ["the", "zzzz"]]:
        assert dict(oc[ctx]) == dict(tc[ctx]), ctx
        assert oc[ctx].N() == tc[ctx].N()
    assert oc[["the"]]["time"] == tc[["the"]]["time"] > 0
    assert oc[["the", "time"]]["traveller"] == tc[["the", "time"]]["traveller"] > 0
    for n in (2, 3):
        seen = [c for c, f in tc[n].items() if f.N()]        # nltk's lookups above added empty entries
        assert len(oc[n]) == len(seen) and oc[n].N() == tc[n].N()
        assert sorted(oc[n].conditions()) == sorted(seen)
        assert dict(oc[n][("the",) * (n - 1)]) == dict(tc[n][("the",) * (n - 1)])
    assert ("the",) in oc[2] and ("zzzz",) not in oc[2]
    assert oc[4][("a", "b", "c")] == {} and len(oc[4]) == 0
    assert str(oc[2]) == str(tc[2]).replace(str(len(tc[2])), str(len([f for f in tc[2].values() if f])))
    assert str(oc) == f"<NgramCounter with {ORDER} ngram orders and {tc.N()} ngrams>"
    assert oc[["the"]].freq("time") == tc[["the"]].freq("time")


def test_vocabulary_with_cutoff_matches_nltk(timemachine):
    train, test = timemachine
    theirs, ours = fit_pair("Laplace", 2, train[:400], unk_cutoff=2)
    tv, ov = theirs.vocab, ours.vocab
    assert len(ov) == len(tv) and list(ov) == list(tv) and ov.cutoff == tv.cutoff == 2
    assert dict(ov.counts) == dict(tv.counts)
    once = [w for w, c in tv.counts.items() if c == 1][:20]
    assert once and all(w not in ov and ov.lookup(w) == "<UNK>" for w in once)
    assert "<UNK>" in ov and ov["<UNK>"] == 2
    words = test[0] + once + ["zzzz"]
    assert ov.lookup(words) == tv.lookup(words)
    assert ov.lookup(["a", ["zzzz", "the"]]) == tv.lookup(["a", ["zzzz", "the"]])
    assert str(ov) == str(tv)
    # words under the cutoff were counted as '<UNK>'
    assert ours.counts["<UNK>"] == theirs.counts["<UNK>"] > 0
    for w in once[:5] + ["the", "zzzz"]:
        assert same(theirs.score(w, ["the"]), ours.score(w, ["the"]))
    v = fs.Vocabulary(["a", "b", "a"], unk_cutoff=2)
    assert list(v) == list(nltk_lm.Vocabulary(["a", "b", "a"], unk_cutoff=2)) == ["a", "<UNK>"]
    with pytest.raises(ValueError, match="unk_cutoff"):
        fs.Vocabulary(["a"], unk_cutoff=0)


def test_fit_again_adds_counts_and_keeps_the_vocabulary():
    models = []
    for lib, pre in ((nltk_lm, nltk_pre), (fs, fs_pre)):
        lm = lib.Laplace(2)
        lm.fit(*pre.padded_everygram_pipeline(2, TOY))
        lm.fit(*pre.padded_everygram_pipeline(2, [["a", "b", "g", "g"]]))
        models.append(lm)
    theirs, ours = models
    assert len(ours.vocab) == len(theirs.vocab) and "g" not in ours.vocab
    assert ours.counts["<UNK>"] == theirs.counts["<UNK>"] == 2
    assert ours.counts[["a"]]["b"] == theirs.counts[["a"]]["b"] == 2
    for w in ["a", "b", "g", "<UNK>", "</s>"]:
        for c in [[], ["a"], ["b"], ["<UNK>"]]:
            assert same(theirs.score(w, c), ours.score(w, c))


def test_a_generator_text_leaves_no_counts_as_in_nltk():
    """padded_everygram_pipeline over a generator: fit reads the vocabulary first, which exhausts
    the sentences, so nothing is counted (nltk's behaviour, kept)."""
    models = []
    for lib, pre in ((nltk_lm, nltk_pre), (fs, fs_pre)):
        lm = lib.MLE(2)
        lm.fit(*pre.padded_everygram_pipeline(2, (s for s in TOY)))
        models.append(lm)
    theirs, ours = models
    assert len(ours.vocab) == len(theirs.vocab) == 9              # a..f, <s>, </s>, <UNK>
    assert ours.counts.N() == theirs.counts.N() == 0
    assert ours.score("a") == theirs.score("a") == 0


# ----- other inputs: nltk's own preprocessing, bigrams only, plain lists --------------------------
@pytest.mark.parametrize("name", ["MLE", "Lidstone0.1", "WittenBell", "KneserNey"])
def test_fit_from_nltk_preprocessing_and_plain_ngrams(name, timemachine):
    train, test = timemachine
    train = train[:300]
    vocab = list(nltk_pre.flatten(nltk_pre.pad_both_ends(s, n=2) for s in train))
    inputs = {
        "nltk pipeline": lambda: nltk_pre.padded_everygram_pipeline(3, train)[0],
        "lists of tuples": lambda: [list(nltk_everygrams(list(nltk_pre.pad_both_ends(s, n=3)), max_len=3))
                                    for s in train],
        "bigrams and unigrams": lambda: [list(nltk_ngrams(nltk_pre.pad_both_ends(s, n=2), 2))
                                         + [(w,) for w in s] for s in train],
        "n-grams as lists": lambda: [[list(g) for g in nltk_ngrams(s, 2)] + [[w] for w in s] for s in train],
    }
    grams = heldout_ngrams(test[:4], 3)
    for what, make in inputs.items():
        theirs, ours = MODELS[name](nltk_lm, 3), MODELS[name](fs, 3)
        theirs.fit(make(), vocab)
        ours.fit(make(), vocab)
        assert ours.counts.N() == theirs.counts.N(), what
        for g in grams:
            try:
                a = theirs.score(g[-1], g[:-1])
            except ZeroDivisionError:
                with pytest.raises(ZeroDivisionError):
                    ours.score(g[-1], g[:-1])
                continue
            assert same(a, ours.score(g[-1], g[:-1])), (what, g)


def test_fit_rejects_what_nltk_rejects():
    for lib in (nltk_lm, fs):
        with pytest.raises(TypeError):
            lib.MLE(2).fit([["a b"]], ["a"])                      # an n-gram that is a string
        with pytest.raises(ValueError):
            lib.MLE(2).fit([[("a",)]])                            # no vocabulary at all
        with pytest.raises(ValueError):
            lib.KneserNeyInterpolated(2, discount=1.5)
    with pytest.raises(TypeError):
        fs.NgramCounter([[["a", "b"]]])                           # NgramCounter.update wants tuples
    with pytest.raises(TypeError):
        nltk_lm.NgramCounter([[["a", "b"]]])


def test_clear_errors_where_nltk_returns_nonsense(fitted):
    _, ours = fitted["MLE"]
    with pytest.raises(FastseqError, match="^context: "):
        ours.score("time", "the")                                 # nltk: 0, as if 'the' were a context of 3
    with pytest.raises(FastseqError, match="^word: "):
        ours.score(3)
    with pytest.raises(FastseqError, match="^text_ngrams: "):
        ours.entropy([])
    with pytest.raises(ZeroDivisionError):
        ours.perplexity([])
    with pytest.raises(FastseqError, match="^gamma: "):
        fs.Lidstone(-1, 2)
    with pytest.raises(FastseqError, match="^order: "):
        fs.MLE(0)


# ----- generate ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_generate_draws_the_same_words_as_nltk(name, timemachine):
    # each draw scores every candidate word (the whole vocabulary after an unseen context), which
    # nltk's Kneser-Ney does by rescanning its counts: a smaller training text keeps this quick
    train, _ = timemachine
    theirs, ours = fit_pair(name, ORDER, train[:60] if slow(name) else train[:600])
    for seed in (0, 3, 42):
        assert ours.generate(20, random_seed=seed) == theirs.generate(20, random_seed=seed)
        assert ours.generate(15, text_seed=["the", "time"], random_seed=seed) == \
            theirs.generate(15, text_seed=["the", "time"], random_seed=seed)
    assert ours.generate(random_seed=7) == theirs.generate(random_seed=7)
    assert isinstance(ours.generate(random_seed=7), str)
    assert ours.generate(5, text_seed=["zzzz", "qqqq"], random_seed=1) == \
        theirs.generate(5, text_seed=["zzzz", "qqqq"], random_seed=1)
    ra, rb = random.Random(11), random.Random(11)
    assert [ours.generate(3, random_seed=rb) for _ in range(3)] == [theirs.generate(3, random_seed=ra) for _ in range(3)]


def test_generate_on_toy_text_every_order():
    for order in (1, 2, 3):
        theirs, ours = fit_pair("MLE", order, TOY)
        for seed in range(20):
            assert ours.generate(6, text_seed=["a"], random_seed=seed) == \
                theirs.generate(6, text_seed=["a"], random_seed=seed)


def test_generated_frequencies_follow_the_scores():
    """Independent of nltk: the words drawn after a context follow P(w | context)."""
    _, ours = fit_pair("MLE", 2, TOY)
    rng = random.Random(5)
    draws = [ours.generate(1, text_seed=["c"], random_seed=rng) for _ in range(4000)]
    for w in ["d", "e", "</s>"]:
        assert abs(draws.count(w) / 4000 - 1 / 3) < 0.03
    assert set(draws) == {"d", "e", "</s>"}


# ----- preprocessing helpers --------------------------------------------------------------------------
def test_preprocessing_helpers_match_nltk():
    s = ["a", "b", "c", "d"]
    for n in (1, 2, 3, 5):
        assert list(fs.pad_both_ends(s, n=n)) == list(nltk_pre.pad_both_ends(s, n=n))
        assert list(fs.everygrams(s, max_len=n)) == list(nltk_everygrams(s, max_len=n))
        assert list(fs.everygrams(s, min_len=2, max_len=n)) == list(nltk_everygrams(s, min_len=2, max_len=n))
        assert list(fs.ngrams(s, n)) == list(nltk_ngrams(s, n))
        a, b = fs.padded_everygram_pipeline(n, TOY), nltk_pre.padded_everygram_pipeline(n, TOY)
        assert [list(x) for x in a[0]] == [list(x) for x in b[0]]
        assert list(a[1]) == list(b[1])
    assert list(fs.everygrams(s)) == list(nltk_everygrams(s))
    assert list(fs.everygrams(s, max_len=2, pad_left=True, left_pad_symbol="<s>")) == \
        list(nltk_everygrams(s, max_len=2, pad_left=True, left_pad_symbol="<s>"))
    assert list(fs.flatten([[1, 2], [3]])) == list(nltk_pre.flatten([[1, 2], [3]]))
    g = fs.everygrams(s, max_len=2)
    assert next(g) == ("a",) and list(g) == list(nltk_everygrams(s, max_len=2))[1:] and list(g) == []


def test_partly_consumed_everygrams_count_only_the_rest():
    """fit counts a fresh everygrams iterator in Cython; one already drawn from is read as nltk would."""
    sents = []
    for pre in (nltk_pre, fs_pre):
        g = list(pre.padded_everygram_pipeline(2, TOY)[0])
        next(g[0])
        next(g[0])
        sents.append(g)
    theirs, ours = nltk_lm.MLE(2), fs.MLE(2)
    theirs.fit(sents[0], list(nltk_pre.flatten(TOY)))
    ours.fit(sents[1], list(nltk_pre.flatten(TOY)))
    assert ours.counts.N() == theirs.counts.N()
    assert dict(ours.counts.unigrams) == dict(theirs.counts.unigrams)


def test_an_nltk_vocabulary_can_be_passed_in():
    theirs = nltk_lm.Laplace(2, vocabulary=nltk_lm.Vocabulary(unk_cutoff=2))
    ours = fs.Laplace(2, vocabulary=nltk_lm.Vocabulary(unk_cutoff=2))
    theirs.fit(*nltk_pre.padded_everygram_pipeline(2, TOY))
    ours.fit(*fs_pre.padded_everygram_pipeline(2, TOY))
    assert ours.counts["<UNK>"] == theirs.counts["<UNK>"] == 4                  # b, d, e, f
    for w in ["a", "b", "c", "<UNK>", "zz"]:
        for c in [[], ["a"], ["c"], ["b"]]:
            assert same(theirs.score(w, c), ours.score(w, c))
    assert ours.generate(6, random_seed=1) == theirs.generate(6, random_seed=1)
