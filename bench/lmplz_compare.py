"""fastseq against KenLM's lmplz from text to ARPA file, on the same corpus, in one run.

    LMPLZ=/work/kenlm-build/build/bin/lmplz python bench/lmplz_compare.py [--order 5] [--words 600000]

KenLM is built from source OUTSIDE this repository (nothing of it is committed); LMPLZ names its
lmplz. The corpus (kept out of the repository, written to --out, default /tmp) is sampled from
a trigram chain of a real corpus: tinyshakespeare and The Time Machine, lowercased into words
and punctuation, one line a sentence; each next word is drawn from the words that follow the
last two in the real text (so it has the real vocabulary and local statistics, and new longer
n-grams as a larger real corpus would). Timed: lmplz -o N (text to ARPA), the `fastseq ngram fit
FILE --order N --arpa OUT` command, and in one process fastseq's fit and to_arpa separately.
"""
import argparse
import os
import random
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(os.environ.get("FASTSEQ_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def real_sentences():
    """Lowercased sentences (token lists) of tinyshakespeare and The Time Machine, one per line."""
    out = []
    for name in ("tinyshakespeare.txt", "timemachine.txt"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            toks = re.findall(r"[a-z']+|[.,!?;:]", line.lower())
            if toks:
                out.append(toks)
    return out


def sampled_corpus(words, rng_state=0):
    """Sentences of a trigram chain of real_sentences(), about ``words`` tokens in all."""
    follow = defaultdict(list)
    for s in real_sentences():
        padded = ["<s>", "<s>"] + s + ["</s>"]
        for i in range(2, len(padded)):
            follow[padded[i - 2], padded[i - 1]].append(padded[i])
    rng = random.Random(rng_state)
    out, n = [], 0
    while n < words:
        a, b, s = "<s>", "<s>", []
        while True:
            w = rng.choice(follow[a, b])
            if w == "</s>" or len(s) >= 100:
                break
            s.append(w)
            a, b = b, w
        if s:
            out.append(s)
            n += len(s)
    return out


def write_corpus(path, words):
    sents = sampled_corpus(words)
    Path(path).write_text("".join(" ".join(s) + "\n" for s in sents), encoding="utf-8")
    return sum(len(s) for s in sents)


def timed(cmd, **kw):
    """(wall seconds, CPU seconds of the child: user + system, all its threads)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--words", type=int, default=600_000)
    p.add_argument("--out", default="/tmp/fastseq-lmplz")
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs of each")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import machine_line
    from fastseq.ngram import KneserNeyLM

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / f"corpus-{args.words}.txt"
    if not corpus.exists():
        n = write_corpus(corpus, args.words)
    else:
        n = sum(len(line.split()) for line in corpus.open(encoding="utf-8"))
    rows = []
    lmplz = os.environ.get("LMPLZ")
    if lmplz:
        t = min(timed(f"exec {lmplz} -o {args.order} -S 20% -T {out} < {corpus} > {out}/lmplz.arpa", shell=True,
                      stderr=subprocess.DEVNULL) for _ in range(args.repeat))
        rows.append(("lmplz -o %d (text to ARPA)" % args.order, t, (out / "lmplz.arpa").stat().st_size))
    cmd = [sys.executable, "-m", "fastseq", "ngram", "fit", str(corpus), "--order", str(args.order),
           "--arpa", str(out / "fastseq.arpa")]
    t = min(timed(cmd, stdout=subprocess.DEVNULL) for _ in range(args.repeat))
    rows.append((f"fastseq ngram fit --order {args.order} --arpa (command)", t, (out / "fastseq.arpa").stat().st_size))
    fit = write = (float("inf"),) * 2
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        sents = [line.split() for line in corpus.open(encoding="utf-8") if line.strip()]
        m = KneserNeyLM(args.order).fit(sents)
        t1, c1 = time.perf_counter(), time.process_time()
        m.to_arpa(out / "api.arpa")
        t2, c2 = time.perf_counter(), time.process_time()
        fit, write = min(fit, (t1 - t0, c1 - c0)), min(write, (t2 - t1, c2 - c1))
    rows.append(("fastseq read + fit (in process)", fit, None))
    rows.append(("fastseq to_arpa (in process)", write, None))
    rows.append(("fastseq read + fit + to_arpa (in process)", (fit[0] + write[0], fit[1] + write[1]),
                 (out / "api.arpa").stat().st_size))
    print(f"corpus: {corpus} ({n:,} tokens, sampled trigram chain of tinyshakespeare + timemachine)")
    print(f"machine: {machine_line()}")
    print(f"\n| step | wall s | CPU s | ARPA bytes |\n|---|---:|---:|---:|")
    for name, (wall, cpu), size in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {'' if size is None else f'{size:,}'} |")
    print(f"\n(best of {args.repeat}; CPU: user + system of all threads, the machine being shared)")


if __name__ == "__main__":
    main()
