"""Query speed of fastseq.ngram.query.Model side by side with the kenlm module, in one run.

    python bench/bench_query.py [--order 5] [--words 600000] [--heldout 72000] [--repeat 5]

The model: a Kneser-Ney N-gram of the sampled corpus of bench/lmplz_compare.py (a trigram chain of
tinyshakespeare + The Time Machine, kept out of the repository); held-out text: another sample
of the same chain. Each figure is the best of --repeat runs, the two libraries interleaved;
rates are given per CPU second of this process (the machine is shared) and, for the batch on
--threads threads (default: score_batch's default), per wall second too, each against kenlm's
per-sentence score() in the same run.
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def best(f, repeat):
    return interleaved([f], repeat)[0]


def interleaved(fs, repeat):
    """(best wall, best CPU) seconds of each function, the functions run in turn in every repeat
    (so that a change of the machine's load reaches all of them alike)."""
    wall, cpu = [float("inf")] * len(fs), [float("inf")] * len(fs)
    for _ in range(repeat):
        for i, f in enumerate(fs):
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            wall[i], cpu[i] = min(wall[i], time.perf_counter() - w0), min(cpu[i], time.process_time() - c0)
    return list(zip(wall, cpu))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--order", type=int, default=5)
    p.add_argument("--words", type=int, default=600_000)
    p.add_argument("--heldout", type=int, default=72_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default="/tmp/fastseq-lmplz")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the multi-threaded score_batch row (default: score_batch's own default)")
    args = p.parse_args(argv)
    import kenlm
    from conftest import machine_line
    from lmplz_compare import sampled_corpus
    from fastseq.ngram import KneserNeyLM, Model, load_arpa, write_binary

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = sampled_corpus(args.words, rng_state=0)
    held = [" ".join(s) for s in sampled_corpus(args.heldout, rng_state=1)]
    n_tok = sum(len(s.split()) + 1 for s in held)
    lm = KneserNeyLM(args.order).fit(train)
    arpa, binf = out / "query.arpa", out / "query.bin"
    rows = []
    t_write_f = best(lambda: lm.to_arpa(arpa), 1)
    t_bin_w = best(lambda: write_binary(arpa, binf), 1)
    k_load = best(lambda: kenlm.Model(str(arpa)), args.repeat)
    f_load = best(lambda: Model(arpa), args.repeat)
    f_lm = best(lambda: load_arpa(arpa), args.repeat)
    f_bin = best(lambda: Model(binf), args.repeat)
    k, q = kenlm.Model(str(arpa)), Model(binf)

    def per_sentence(m):
        return lambda: [m.score(s) for s in held]

    k_score, f_score, f_batch, f_batch_t, k_ppl = interleaved(
        [per_sentence(k), per_sentence(q), lambda: q.score_batch(held, threads=1),
         lambda: q.score_batch(held, threads=args.threads), lambda: [k.perplexity(s) for s in held]], args.repeat)
    tname = f"threads={args.threads}" if args.threads is not None else f"default threads; {len(os.sched_getaffinity(0))} CPUs"
    words = [w for s in held for w in s.split() + ["</s>"]]

    def chain(m, State):
        def run():
            a, b = State(), State()
            m.BeginSentenceWrite(a)
            for w in words:
                m.BaseScore(a, w, b)
                a, b = b, a
        return run

    k_base, f_base = interleaved([chain(k, kenlm.State),
                                  chain(q, __import__("fastseq.ngram.query", fromlist=["State"]).State)], args.repeat)
    ks = sum(k.score(s) for s in held)
    fs = float(q.score_batch(held, threads=1).sum())
    print(f"model: {args.order}-gram Kneser-Ney of {args.words:,} sampled words; ARPA {arpa.stat().st_size:,} bytes, "
          f"binary {binf.stat().st_size:,} bytes; held-out {len(held):,} sentences, {n_tok:,} tokens "
          f"(with </s>); total log10: kenlm {ks:.4f}, fastseq {fs:.4f}")
    print(f"machine: {machine_line()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| operation | kenlm | fastseq | fastseq / kenlm speed |\n|---|---:|---:|---:|")

    def rate(t):                       # tokens per CPU second (this process; the machine is shared)
        return n_tok / t[1]
    rows = [
        ("ARPA load (s wall / s CPU)", f"{k_load[0]:.2f} / {k_load[1]:.2f}", f"Model {f_load[0]:.2f} / {f_load[1]:.2f}",
         f"{k_load[1] / f_load[1]:.2f}x (CPU)"),
        ("ARPA load to NGramLM (load_arpa)", "", f"{f_lm[0]:.2f} / {f_lm[1]:.2f}", f"{k_load[1] / f_lm[1]:.2f}x (CPU)"),
        ("binary load (s wall / s CPU)", "", f"{f_bin[0]:.3f} / {f_bin[1]:.3f}",
         f"{f_load[1] / f_bin[1]:.0f}x faster than parsing its ARPA (CPU)"),
        ("score() per sentence (tokens per CPU s)", f"{rate(k_score) / 1e6:.2f}M", f"{rate(f_score) / 1e6:.2f}M",
         f"{k_score[1] / f_score[1]:.2f}x"),
        ("batch score_batch(threads=1) vs kenlm per-sentence score (tokens per CPU s)", f"{rate(k_score) / 1e6:.2f}M",
         f"{rate(f_batch) / 1e6:.2f}M", f"{k_score[1] / f_batch[1]:.2f}x"),
        (f"batch score_batch({tname}) vs kenlm per-sentence score (tokens per wall s)",
         f"{n_tok / k_score[0] / 1e6:.2f}M", f"{n_tok / f_batch_t[0] / 1e6:.2f}M", f"{k_score[0] / f_batch_t[0]:.2f}x"),
        (f"batch score_batch({tname}) (tokens per CPU s)", f"{rate(k_score) / 1e6:.2f}M",
         f"{rate(f_batch_t) / 1e6:.2f}M", f"{k_score[1] / f_batch_t[1]:.2f}x"),
        ("perplexity() per sentence (tokens per CPU s)", f"{rate(k_ppl) / 1e6:.2f}M", "", ""),
        ("BaseScore chained (calls per CPU s)", f"{len(words) / k_base[1] / 1e6:.2f}M",
         f"{len(words) / f_base[1] / 1e6:.2f}M", f"{k_base[1] / f_base[1]:.2f}x"),
        ("to_arpa / write_binary (s, once)", "", f"{t_write_f[0]:.2f} / {t_bin_w[0]:.2f}", ""),
    ]
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
