"""Out-of-core n-gram fitting: peak memory (RSS) and wall time against the in-memory fit and lmplz.

    python bench/make_sampled_corpus.py --tokens 100M --out /tmp/sampled       # the corpus, outside the repo
    python bench/bench_outofcore.py /tmp/sampled/sampled-100M.txt --order 3 --memory 1G [--in-memory] [--lmplz PATH]

Each fit runs in a fresh process (so that its peak RSS, ru_maxrss, is its own) from the text file to
a fitted model: ``KneserNeyLM(order).fit_files([FILE], memory=..., tmp_dir=...)`` (out of core),
``KneserNeyLM(order).fit(lines of FILE)`` (in memory, with --in-memory) and ``lmplz -o ORDER -S MEMORY
-T TMP`` (with --lmplz, writing its ARPA file to TMP). Prints one Markdown table row per fit.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import resource, sys, time
from fastseq.ngram import KneserNeyLM
path, order, how, memory, tmp, fallback = sys.argv[1:7]
order = int(order)
t0 = time.perf_counter()
model = KneserNeyLM(order, discount_fallback=fallback == "1")
if how == "outofcore":
    m = model.fit_files([path], memory=memory, tmp_dir=tmp)
else:
    with open(path, encoding="utf-8") as f:
        m = model.fit(f.read().splitlines())
t = time.perf_counter() - t0
print(t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, sum(len(m._rows[k]) for k in m._rows))
"""


def run_fit(path, order, how, memory, tmp, fallback=False):
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(order), how, memory, tmp, str(int(fallback))],
                         stdout=subprocess.PIPE, text=True, check=True).stdout.split()   # errors show
    return float(out[0]), int(out[1]), int(out[2])


def run_lmplz(lmplz, path, order, memory, tmp):
    arpa = os.path.join(tmp, "lmplz.arpa")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    with open(path, "rb") as src, open(arpa, "wb") as dst:
        subprocess.run([lmplz, "-o", str(order), "-S", memory, "-T", tmp], stdin=src, stdout=dst,
                       stderr=subprocess.DEVNULL, check=True)
    t = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    os.remove(arpa)
    # ru_maxrss of children is the largest of any child so far: exact when lmplz is the largest
    return t, max(rss, before) * 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--tmp", default=None, help="folder for the runs (default: the system's temporary folder)")
    ap.add_argument("--tokens", type=int, default=None, help="the corpus's token count, if known (else counted)")
    ap.add_argument("--in-memory", action="store_true", help="also the in-memory fit")
    ap.add_argument("--lmplz", default=None, help="path of KenLM's lmplz binary")
    ap.add_argument("--discount-fallback", action="store_true",
                    help="lmplz's fallback discounts: at order 3 a corpus sampled from a trigram model has no "
                         "trigram seen 1 to 4 times, so the Kneser-Ney discounts cannot be estimated")
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import machine_line
    tokens = a.tokens
    if tokens is None:
        with open(a.corpus, "rb") as f:
            tokens = sum(len(line.split()) for line in f)
    print(f"machine: {machine_line()}")
    print(f"corpus: {a.corpus}, {tokens:,} tokens, order {a.order}\n")
    print("| fit | tokens | budget | wall time (s) | peak RSS (MB) | n-grams in the model |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        t, rss, ngrams = run_fit(a.corpus, a.order, "outofcore", a.memory, tmp, a.discount_fallback)
        print(f"| fit_files (out of core) | {tokens:,} | {a.memory} | {t:.1f} | {rss / 2**20:.0f} | {ngrams:,} |",
              flush=True)
        if a.in_memory:
            t, rss, ngrams = run_fit(a.corpus, a.order, "inmemory", a.memory, tmp, a.discount_fallback)
            print(f"| fit (in memory) | {tokens:,} | none | {t:.1f} | {rss / 2**20:.0f} | {ngrams:,} |", flush=True)
        if a.lmplz:
            t, rss = run_lmplz(a.lmplz, a.corpus, a.order, a.memory, tmp)
            print(f"| lmplz -S {a.memory} | {tokens:,} | {a.memory} | {t:.1f} | {rss / 2**20:.0f} | |", flush=True)


if __name__ == "__main__":
    main()
