"""fastseq.ngram.nltk against nltk.lm: fit + perplexity, the same text, one run (ratios).

    python -m pytest bench/bench_nltk.py --benchmark-only -s -p no:cacheprovider

Text: The Time Machine, the book's 'd2l' cleaning, one sentence per non-empty line; the first
90% of the lines train a trigram (each library's padded_everygram_pipeline), the held-out
n-grams are every n-gram (orders 1..3, with the padding) of the last 10%. nltk's
KneserNeyInterpolated rescans all its counts for every score (seconds per hundred n-grams), so
its perplexity is taken on the first KN_NGRAMS held-out n-grams, by both libraries alike.
Each case also checks that both libraries give the same perplexity.
"""
import math
import os
import time
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import pytest

nltk_lm = pytest.importorskip("nltk.lm")
from nltk.lm import preprocessing as nltk_pre  # noqa: E402

from fastseq.ngram import nltk as fs  # noqa: E402
from fastseq.ngram.nltk import preprocessing as fs_pre  # noqa: E402
from fastseq.text import read_lines, tokenize  # noqa: E402

ORDER = 3
KN_NGRAMS = 300
MODELS = {
    "MLE": lambda lib: lib.MLE(ORDER),
    "Laplace": lambda lib: lib.Laplace(ORDER),
    "Lidstone(0.1)": lambda lib: lib.Lidstone(0.1, ORDER),
    "WittenBellInterpolated": lambda lib: lib.WittenBellInterpolated(ORDER),
    "KneserNeyInterpolated": lambda lib: lib.KneserNeyInterpolated(ORDER),
}


def timemachine_split():
    sents = [s for s in tokenize(read_lines("timemachine", cleaning="d2l"), "word") if s]
    n = int(len(sents) * 0.9)
    return sents[:n], sents[n:]


def heldout(test, name):
    grams = [g for s in test for g in nltk_pre.padded_everygrams(ORDER, s)]
    return grams[:KN_NGRAMS] if name.startswith("KneserNey") else grams


def fit_and_perplexity(lib, pre, name, train, grams):
    lm = MODELS[name](lib)
    lm.fit(*pre.padded_everygram_pipeline(ORDER, train))
    return lm.perplexity(grams)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


@pytest.mark.parametrize("pipeline", ["fastseq", "nltk"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fit_and_perplexity_vs_nltk(benchmark, name, pipeline):
    """pipeline: whose padded_everygram_pipeline feeds the fastseq model ('nltk': the user changed
    only the model's import; fit then reads nltk's generators tuple by tuple)."""
    train, test = timemachine_split()
    grams = heldout(test, name)
    t_nltk, pp_nltk = timed(lambda: fit_and_perplexity(nltk_lm, nltk_pre, name, train, grams))
    pre = fs_pre if pipeline == "fastseq" else nltk_pre
    pp = benchmark.pedantic(fit_and_perplexity, args=(fs, pre, name, train, grams), rounds=5, iterations=1)
    assert pp == pp_nltk or math.isclose(pp, pp_nltk, rel_tol=1e-12)
    t = benchmark.stats.stats.min
    benchmark.extra_info.update(nltk_s=t_nltk, ratio=t_nltk / t, ngrams=len(grams), perplexity=pp)
    print(f"\n{name} ({pipeline} pipeline): {sum(map(len, train))} train words, {len(grams)} held-out n-grams, "
          f"perplexity {pp:.6g}: nltk.lm {t_nltk:.3f} s, fastseq {t:.4f} s, ratio {t_nltk / t:.1f}x")
