"""fastseq.ngram statistics: frequency tables, stop words, Zipf fits, the log-log plot."""
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import numpy as np
import pytest

from fastseq.ngram import frequencies, loglog_data, plot_zipf, stop_words, zipf_lsq, zipf_mle
from fastseq.text import read_lines

# ../shared/data/README.md: the ten most frequent words of The Time Machine (book's cleaning)
TOP10 = [("the", 2261), ("i", 1267), ("and", 1245), ("of", 1155), ("a", 816), ("to", 695), ("was", 552),
         ("in", 541), ("that", 443), ("my", 440)]


@pytest.fixture(scope="module")
def words():
    return " ".join(read_lines("timemachine", "d2l")).split()


def test_frequency_tables(words):
    uni = frequencies(words, 1)
    assert [(g[0], c) for g, c in uni[:10]] == TOP10
    assert stop_words(words, 10) == [w for w, _ in TOP10]
    for n in (2, 3):
        table = frequencies(words, n)
        oracle = Counter(zip(*[words[i:] for i in range(n)]))
        assert dict(table) == dict(oracle)
        assert [c for _, c in table] == sorted(oracle.values(), reverse=True)
    assert frequencies(words, 2)[0] == (("of", "the"), 309)
    assert frequencies([["b", "a"], ["a", "b"]], 1) == [(("b",), 2), (("a",), 2)]   # ties: first appearance


def test_zipf_least_squares_recovers_an_exact_power_law():
    i = np.arange(1, 501)
    n = np.exp(7.5) * i ** -1.3
    fit = zipf_lsq(n, ranks=(10, 400))
    assert fit.alpha == pytest.approx(1.3, abs=1e-9) and fit.c == pytest.approx(7.5, abs=1e-9)


def test_zipf_mle_recovers_the_exponent_of_a_sample():
    rng = np.random.default_rng(0)
    R, alpha = 3000, 1.1
    p = np.arange(1, R + 1) ** -alpha
    counts = rng.multinomial(400_000, p / p.sum()).astype(float)      # counts in true rank order
    fit = zipf_mle(counts, ranks=(1, 1000))
    assert fit.alpha == pytest.approx(alpha, abs=0.01)
    # c makes exp(c) i^-alpha the expected count: check it against the sample's first rank
    assert np.exp(fit.c) == pytest.approx(counts[0], rel=0.02)


def test_zipf_on_timemachine(words):
    table = frequencies(words, 1)
    lsq, mle = zipf_lsq(table, ranks=(10, 1000)), zipf_mle(table, ranks=(10, 1000))
    assert 0.8 < lsq.alpha < 1.3 and 0.8 < mle.alpha < 1.3
    data = loglog_data(words)
    assert set(data) == {1, 2, 3}
    for n, (r, c) in data.items():
        assert r[0] == 1 and np.all(np.diff(c) <= 0) and c.sum() == len(words) - n + 1
    # the seed: the higher the order, the faster the top frequencies fall and the more n-grams occur once
    assert data[1][1][0] > data[2][1][0] > data[3][1][0]
    assert np.mean(data[3][1] == 1) > np.mean(data[2][1] == 1) > np.mean(data[1][1] == 1)


def test_bad_n_and_tokens_name_the_argument():
    # n = 100 used to fail inside counting as 'order: ...'; mixed tokens as a TypeError from np.unique
    with pytest.raises(ValueError, match=r"n: expected an integer in \[1, 64\], got 100"):
        frequencies(["a", "b"], 100)
    with pytest.raises(ValueError, match="tokens: expected string tokens, got a int"):
        frequencies(["a", 1, "b"], 1)
    with pytest.raises(ValueError, match="tokens: expected string tokens, got a NoneType"):
        stop_words([["a", None], ["b"]], 1)


def test_bad_input(words):
    with pytest.raises(ValueError, match="n:"):
        frequencies(words, 0)
    with pytest.raises(ValueError, match="empty"):
        frequencies([], 1)
    with pytest.raises(ValueError, match="one string"):
        frequencies("the time", 1)
    with pytest.raises(ValueError, match="ranks"):
        zipf_lsq([5, 4, 3], ranks=(2, 9))
    with pytest.raises(ValueError, match="non-negative counts"):
        zipf_mle([5, -1, 3])
    with pytest.raises(ValueError, match="positive counts"):
        zipf_lsq([5, 0, 3])


def test_plot(words, tmp_path):
    pytest.importorskip("matplotlib")
    table = frequencies(words, 1)
    path = tmp_path / "zipf.png"
    fig = plot_zipf(words[:5000], path, fits={1: zipf_lsq(table, ranks=(10, 1000))})
    assert path.stat().st_size > 1000 and len(fig.axes[0].lines) == 4


def test_plot_without_matplotlib(monkeypatch, words):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"fastseq\[plot\]"):
        plot_zipf(words[:100])
