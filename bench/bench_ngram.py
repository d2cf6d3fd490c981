"""Benchmarks of fastseq.ngram (pytest-benchmark; ratios are measured in the same run).

    python -m pytest bench/bench_ngram.py --benchmark-only      # speed table
    python bench/bench_ngram.py                                 # held-out perplexities (bench/RESULTS.md)

Corpora: tinyshakespeare words (the book's 'd2l' cleaning, one sentence per
non-empty line, first 90% of the lines for training). The 10M-token corpus is
sampled from a Kneser-Ney trigram fitted on that training part (a sample, not
a repeated text, so its counts of counts stay natural); it is cached in
$TMPDIR/fastseq-bench-ngram-<tokens>.npz.
"""
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import numpy as np

from fastseq.ngram import KneserNeyLM, LaplaceLM, count_ngrams
from fastseq.text import read_lines

BIG = int(os.environ.get("FASTSEQ_BENCH_NGRAM_TOKENS", 10_000_000))


def shakespeare_split():
    lines = [line.split() for line in read_lines("tinyshakespeare", "d2l") if line]
    n = int(len(lines) * 0.9)
    return lines[:n], lines[n:]


def sample_corpus(m, n_tokens, seed=0, streams=20000):
    """(ids int32, lengths int64) of at least n_tokens words sampled from the Kneser-Ney model m
    (ids are m's ids; '</s>' ends a sentence and is not in ids).

    Uses the mixture form P(w | c) = u(w | c) + gamma(c) P(w | c'): with probability
    1 - gamma(c) draw w from u(. | c), else descend to c' (exact; vectorised over streams).
    """
    rng = np.random.default_rng(seed)
    N, V = m.order, m._V
    p = {k: 10.0 ** m._logp[k] for k in range(1, N + 1)}
    gam = {k: 10.0 ** m._logb[k] for k in range(1, N)}          # backoff = gamma(c); 1 if not a context
    suffix = {2: m._rows[2][:, 1].astype(np.int64)} if N >= 2 else {}
    for k in range(3, N + 1):
        suffix[k] = m._lookup(k - 1, suffix[k - 1][m._parent[k]], m._rows[k][:, -1])
    cum = {}
    for k in range(2, N + 1):                                   # u = P(c w) - gamma(c) P(c' w)
        u = np.maximum(p[k] - gam[k - 1][m._parent[k]] * p[k - 1][suffix[k]], 0.0)
        cum[k] = np.concatenate([[0.0], np.cumsum(u)])
    u1 = np.maximum(p[1] - p[1][0], 0.0)                        # '<unk>' has only the uniform share
    u1[1] = 0.0
    gamma0 = 1.0 - u1.sum()
    cum[1] = np.concatenate([[0.0], np.cumsum(u1)])
    B = streams
    steps = int(n_tokens * 1.1 / B) + 50
    out = np.empty((B, steps), dtype=np.int32)
    ctx = np.full((B, N), -1, dtype=np.int64)                   # ctx[:, j]: row of the j-gram ending here
    ctx[:, 1] = 1                                               # '<s>'
    ar = np.arange(B)
    for t in range(steps):
        w = np.full(B, -1, dtype=np.int64)
        for j in range(N - 1, 0, -1):                           # longest context first
            live = ar[(w < 0) & (ctx[:, j] >= 0)]
            if not live.size:
                continue
            c = ctx[live, j]
            take = rng.random(live.size) >= gam[j][c]
            live, c = live[take], c[take]
            lo = np.searchsorted(m._key[j + 1], c * V)
            hi = np.searchsorted(m._key[j + 1], (c + 1) * V)
            r = cum[j + 1][lo] + rng.random(c.size) * (cum[j + 1][hi] - cum[j + 1][lo])
            row = np.clip(np.searchsorted(cum[j + 1], r, side="right") - 1, lo, hi - 1)
            w[live] = m._rows[j + 1][row, -1]
        rest = ar[w < 0]
        if rest.size:
            ww = np.searchsorted(cum[1], rng.random(rest.size) * cum[1][-1], side="right") - 1
            unif = rng.integers(0, V - 1, rest.size)
            unif += unif >= 1                                   # every token but '<s>'
            w[rest] = np.where(rng.random(rest.size) >= gamma0, ww, unif)
        out[:, t] = w
        old = ctx.copy()
        ctx[:, 1] = w
        for j in range(2, N):
            ctx[:, j] = m._lookup(j, old[:, j - 1], w)
        end = w == 2                                            # '</s>': a new sentence from '<s>'
        ctx[end] = -1
        ctx[end, 1] = 1
    # rows -> sentences; each stream's unfinished last sentence is dropped
    ids, lengths = [], []
    for row in out:
        ends = np.flatnonzero(row == 2)
        if not ends.size:
            continue
        row = row[:ends[-1] + 1]
        starts = np.concatenate([[0], ends[:-1] + 1])
        lengths.append(ends - starts)
        ids.append(row[row != 2])
        if sum(len(x) for x in ids) >= n_tokens:
            break
    return np.concatenate(ids).astype(np.int32), np.concatenate(lengths).astype(np.int64)


_CACHE = {}


def big_corpus(tokens=BIG):
    """(ids, lengths, model) of the sampled corpus, cached on disk."""
    if tokens in _CACHE:
        return _CACHE[tokens]
    train, _ = shakespeare_split()
    m = KneserNeyLM(3).fit(train)
    path = Path(tempfile.gettempdir()) / f"fastseq-bench-ngram-{tokens}.npz"
    if path.exists():
        z = np.load(path)
        ids, lengths = z["ids"], z["lengths"]
    else:
        ids, lengths = sample_corpus(m, tokens)
        np.savez(path, ids=ids, lengths=lengths)
    _CACHE[tokens] = ids, lengths, m
    return _CACHE[tokens]


def sentences_of(ids, lengths, vocab, words):
    out, n = [], 0
    for s in np.split(ids, np.cumsum(lengths)[:-1]):
        out.append([vocab[i] for i in s])
        n += len(s)
        if n >= words:
            break
    return out


def best_of(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ----- counting ------------------------------------------------------------------------------
def test_count_orders_1_3_vs_counter(benchmark):
    ids, _, m = big_corpus()
    ids = ids[:1_000_000]
    as_list = ids.tolist()                                     # Counter gets Python ints (its fast path)

    def counter():
        return [Counter(zip(*[as_list[i:] for i in range(n)])) for n in (1, 2, 3)]

    t_counter = best_of(counter, 2)
    benchmark.pedantic(count_ngrams, args=(ids, 3), kwargs=dict(vocab_size=m._V), rounds=5, iterations=1)
    ratio = t_counter / benchmark.stats.stats.min
    benchmark.extra_info.update(tokens=len(ids), counter_s=t_counter, speedup_vs_counter=ratio)
    print(f"\ncount orders 1..3 on {len(ids)} tokens: fastseq {benchmark.stats.stats.min:.4f} s, "
          f"Counter over zip {t_counter:.3f} s, ratio {ratio:.1f}x")


def test_count_10m_tokens_per_second(benchmark):
    ids, lengths, m = big_corpus()
    rates = {}
    for n in range(1, 6):
        t = best_of(lambda: count_ngrams(ids, n, lengths=lengths, bos=1, eos=2, vocab_size=m._V), 2)
        rates[n] = len(ids) / t
    benchmark.pedantic(count_ngrams, args=(ids, 5), kwargs=dict(lengths=lengths, bos=1, eos=2, vocab_size=m._V),
                       rounds=1, iterations=1)
    # peak memory of counting orders 1..5 alone, in a fresh process that only loads the ids
    # (VmHWM: the high-water mark of this process's own memory; ru_maxrss would include the parent's)
    code = ("import re, numpy as np; from fastseq.ngram import count_ngrams; "
            "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); "
            "z = np.load(%r); ids, lengths = z['ids'], z['lengths']; before = hwm(); "
            "c = count_ngrams(ids, 5, lengths=lengths, bos=1, eos=2, vocab_size=%d); "
            "print(before, hwm())") % (str(Path(tempfile.gettempdir()) / f"fastseq-bench-ngram-{BIG}.npz"), m._V)
    before, after = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                            check=True).stdout.split())
    benchmark.extra_info.update(tokens=len(ids), tokens_per_s={n: round(r) for n, r in rates.items()},
                                peak_rss_mb=after / 1024, rss_before_counting_mb=before / 1024)
    print(f"\n{len(ids)} tokens: " + ", ".join(f"order {n} (orders 1..{n}): {r / 1e6:.2f}M tokens/s"
                                                for n, r in rates.items())
          + f"; peak RSS {after / 1024:.0f} MB (of which {before / 1024:.0f} MB before counting)")
    assert after / 1024 < 2048


# ----- models ----------------------------------------------------------------------------------
def test_fit_kn5_600k_words(benchmark):
    ids, lengths, m = big_corpus()
    train = sentences_of(ids, lengths, m.vocab, 600_000)
    model = benchmark.pedantic(lambda: KneserNeyLM(5).fit(train), rounds=3, iterations=1)
    benchmark.extra_info.update(words=sum(map(len, train)), discounts=str(model.discounts))
    print(f"\nKneserNeyLM(5).fit on {sum(map(len, train))} words: {benchmark.stats.stats.min:.3f} s")


def test_score_tokens_per_second(benchmark):
    ids, lengths, m = big_corpus()
    train = sentences_of(ids, lengths, m.vocab, 600_000)
    model = KneserNeyLM(5).fit(train)
    held = sentences_of(*_tail(ids, lengths, 1_000_000), m.vocab, 1_000_000)
    pp = benchmark.pedantic(model.perplexity, args=(held,), rounds=3, iterations=1)
    rate = pp.tokens / benchmark.stats.stats.min
    benchmark.extra_info.update(tokens=pp.tokens, tokens_per_s=rate)
    print(f"\nperplexity() of a 5-gram KN on {pp.tokens} held-out tokens: {rate / 1e6:.2f}M tokens/s")


def _tail(ids, lengths, words):
    """The last sentences holding about `words` words."""
    k = int(np.searchsorted(np.cumsum(lengths[::-1]), words)) + 1
    lengths = lengths[-k:]
    return ids[-int(lengths.sum()):], lengths


def test_nltk_small_case(benchmark):
    nltk_lm = __import__("pytest").importorskip("nltk.lm")
    from nltk.lm.preprocessing import padded_everygram_pipeline
    train, test = shakespeare_split()
    train, test = train[:300], test[:30]                       # nltk.lm is very slow: keep it tiny

    def with_nltk():
        grams, vocab = padded_everygram_pipeline(3, train)
        lm = nltk_lm.KneserNeyInterpolated(3)
        lm.fit(grams, vocab)
        return sum(lm.logscore(w, s[max(0, i - 2):i]) for s in test for i, w in enumerate(s))

    def with_fastseq():
        lm = KneserNeyLM(3, discount_fallback=True).fit(train)
        return lm.perplexity(test)

    t_nltk = best_of(with_nltk, 1)
    benchmark.pedantic(with_fastseq, rounds=5, iterations=1)
    ratio = t_nltk / benchmark.stats.stats.min
    benchmark.extra_info.update(nltk_s=t_nltk, speedup_vs_nltk=ratio)
    print(f"\nfit + score a trigram KN on {sum(map(len, train))} words, {sum(map(len, test))} test words: "
          f"nltk.lm {t_nltk:.2f} s, fastseq {benchmark.stats.stats.min:.4f} s, ratio {ratio:.0f}x")


def perplexity_table():
    """Held-out perplexities of Laplace and Kneser-Ney, orders 1..5, tinyshakespeare words."""
    train, test = shakespeare_split()
    print(f"train {len(train)} lines {sum(map(len, train))} words; test {len(test)} lines "
          f"{sum(map(len, test))} words")
    print("| model | order 1 | order 2 | order 3 | order 4 | order 5 |")
    print("|---|---|---|---|---|---|")
    rows = [("Laplace eps=1", lambda n: LaplaceLM(n, eps=1.0)), ("Laplace eps=0.01", lambda n: LaplaceLM(n, eps=0.01)),
            ("Laplace eps_1=1, eps_k=100", lambda n: LaplaceLM(n, eps=[1.0] + [100.0] * (n - 1))),
            ("Kneser-Ney (lmplz)", lambda n: KneserNeyLM(n))]
    for name, make in rows:
        cells = []
        for n in range(1, 6):
            try:
                pp = make(n).fit(train).perplexity(test)
                cells.append(f"{pp.including_oov:.1f} ({pp.excluding_oov:.1f})")
            except ValueError as e:
                pp = KneserNeyLM(n, discount_fallback=True).fit(train).perplexity(test)
                cells.append(f"refused ({type(e).__name__}); fallback: {pp.including_oov:.1f} ({pp.excluding_oov:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"tokens {pp.tokens}, OOV {pp.oov}")


if __name__ == "__main__":
    perplexity_table()
