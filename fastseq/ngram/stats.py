"""Natural-language statistics (Dive into Deep Learning, chapter 8, "Language Models"): frequency tables,
stop words, Zipf's law.

Legend: R ranks (distinct n-grams), n_i the count of the i-th most frequent one.

Zipf's law in the book's form: log n_i = -alpha log i + c (natural logs). Two fits:
least squares over a chosen rank range (what the book's log-log plot suggests),
and maximum likelihood for a discrete power law over the ranks: each token's rank
i is drawn with P(i) = i^-alpha / H(alpha), H = sum over the range of i^-alpha, and
c = log(M / H) with M the tokens in the range, so that n_i ~ exp(c) i^-alpha.
"""
from collections import namedtuple

import numpy as np

from .counting import MAX_ORDER, count_ngrams

__all__ = ["ZipfFit", "frequencies", "loglog_data", "plot_zipf", "stop_words", "zipf_lsq", "zipf_mle"]

ZipfFit = namedtuple("ZipfFit", "alpha c")


def _flat(tokens):
    if isinstance(tokens, str):
        raise ValueError("tokens: expected a list of tokens (or of token lists), got one string")
    tokens = list(tokens)
    if tokens and not isinstance(tokens[0], str):
        tokens = [t for line in tokens for t in line]
    if not tokens:
        raise ValueError("tokens: empty corpus")
    return tokens


def frequencies(tokens, n=1):
    """[(n-gram tuple, count)] over the flat token stream (as the book zips it), most
    frequent first; ties in order of first appearance of their first differing word."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_ORDER:
        raise ValueError(f"n: expected an integer in [1, {MAX_ORDER}], got {n!r}")
    tokens = _flat(tokens)
    bad = [t for t in tokens if not isinstance(t, str)][:1]
    if bad:                                        # np.unique would raise TypeError comparing them
        raise ValueError(f"tokens: expected string tokens, got a {type(bad[0]).__name__}")
    uniq, ids = np.unique(np.asarray(tokens, dtype=object), return_inverse=True)
    # ids by first appearance, so that ties keep the corpus order
    first = np.full(len(uniq), len(tokens))
    np.minimum.at(first, ids, np.arange(len(tokens)))
    rank = np.empty(len(uniq), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
    names = uniq[np.argsort(rank)]
    counts = count_ngrams(rank[ids], n, vocab_size=len(uniq))
    grams, c = counts[n]
    order = np.argsort(-c, kind="stable")
    return [(tuple(names[g].tolist()), int(k)) for g, k in zip(grams[order], c[order])]


def stop_words(tokens, k=10):
    """The k most frequent tokens (the book's stop words: the, i, and, of, ...)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    return [g[0] for g, _ in frequencies(tokens, 1)[:k]]


def _counts(freqs):
    if isinstance(freqs, list) and freqs and isinstance(freqs[0], tuple):
        freqs = [c for _, c in freqs]
    n = np.asarray(freqs, dtype=np.float64)
    if n.ndim != 1 or n.size < 2 or np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError("freqs: expected >= 2 non-negative counts in rank order (or a frequencies() table)")
    return n


def _range(n, ranks):
    lo, hi = (1, len(n)) if ranks is None else ranks
    if not (isinstance(lo, (int, np.integer)) and isinstance(hi, (int, np.integer)) and 1 <= lo < hi <= len(n)):
        raise ValueError(f"ranks: expected (first, last) with 1 <= first < last <= {len(n)}, got {ranks!r}")
    return int(lo), int(hi)


def zipf_lsq(freqs, ranks=None):
    """alpha, c of log n_i = -alpha log i + c by least squares over ranks (first, last), 1-based inclusive."""
    n = _counts(freqs)
    lo, hi = _range(n, ranks)
    if np.any(n[lo - 1:hi] <= 0):
        raise ValueError("freqs: least squares in log-log needs positive counts over the rank range")
    i = np.arange(lo, hi + 1, dtype=np.float64)
    slope, c = np.polyfit(np.log(i), np.log(n[lo - 1:hi]), 1)   # least squares line in log-log
    return ZipfFit(float(-slope), float(c))


def zipf_mle(freqs, ranks=None):
    """alpha, c by maximum likelihood for a discrete power law over ranks (first, last).

    The log-likelihood -alpha sum n_i log i - M log H(alpha) is concave in alpha; its
    derivative M E_alpha[log i] - sum n_i log i decreases, so bisection finds the root.
    """
    n = _counts(freqs)
    lo, hi = _range(n, ranks)
    counts = n[lo - 1:hi]
    logi = np.log(np.arange(lo, hi + 1, dtype=np.float64))
    M, target = counts.sum(), (counts * logi).sum() / counts.sum()    # observed mean log-rank

    def mean_logi(a):                      # E_alpha[log i], computed stably in log space
        w = -a * logi
        w = np.exp(w - w.max())
        return (w * logi).sum() / w.sum()

    a, b = -5.0, 50.0
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if mean_logi(m) > target else (a, m)
    alpha = 0.5 * (a + b)
    logH = np.logaddexp.reduce(-alpha * logi)
    return ZipfFit(float(alpha), float(np.log(M) - logH))


def loglog_data(tokens, orders=(1, 2, 3)):
    """{n: (ranks, counts)} for the book's log-log plot of unigram, bigram, trigram frequencies."""
    tokens = _flat(tokens)
    out = {}
    for n in orders:
        c = np.array([k for _, k in frequencies(tokens, n)], dtype=np.int64)
        out[n] = (np.arange(1, len(c) + 1), c)
    return out


def plot_zipf(tokens_or_data, path=None, orders=(1, 2, 3), fits=None):
    """The log-log frequency plot (matplotlib, Agg backend; the optional ``plot`` extra).

    tokens_or_data: tokens, or the dict from loglog_data. fits: {n: ZipfFit} lines to
    overlay. Saves to ``path`` when given; returns the Figure.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_zipf needs matplotlib: pip install 'fastseq[plot]'") from None
    data = tokens_or_data if isinstance(tokens_or_data, dict) else loglog_data(tokens_or_data, orders)
    names = {1: "unigram", 2: "bigram", 3: "trigram"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, (r, c) in sorted(data.items()):
        ax.loglog(r, c, label=names.get(n, f"{n}-gram"))
        if fits and n in fits:
            ax.loglog(r, np.exp(fits[n].c) * r ** -fits[n].alpha, "--",
                      label=f"{names.get(n, n)} fit: alpha={fits[n].alpha:.2f}")
    ax.set_xlabel("token: x (rank)")
    ax.set_ylabel("frequency: n(x)")
    ax.legend()
    if path is not None:
        fig.savefig(path)
        plt.close(fig)
    return fig
