"""Training experiments with the NumPy reference RNNLM on The Time Machine (characters, d2l cleaning).

(a) the book's configuration: H=512, T=35, B=32, lr=1, theta=1, sequential partitioning,
    Full BPTT, trained on the first 90% of the characters for as many epochs as fit in
    --minutes of wall time; per epoch: training perplexity, held-out perplexity on the last
    10%, seconds.
(b) BPTT strategies on the same data and seeds with a smaller H: Full, Truncated block,
    Truncated sliding and Randomized; final training / held-out perplexity and wall time.
(d) gradient diagnostics: spectral radius of W_hh and ||dl_{T-1}/dH_t|| over one window.

Usage (from the repository root):
    FASTSEQ_DATA_DIR=/work/shared/data python bench/run_reference_experiments.py a --minutes 6
    FASTSEQ_DATA_DIR=/work/shared/data python bench/run_reference_experiments.py b --hidden 128 --epochs 10
    FASTSEQ_DATA_DIR=/work/shared/data python bench/run_reference_experiments.py d --hidden 128 --epochs 3
Prints markdown tables (and writes JSON next to this file with --json PATH).
"""
import argparse
import json
import math
import os
import platform
import time

import numpy as np

from fastseq.bptt import Full, Randomized, Truncated
from fastseq.data import SeqDataLoader
from fastseq.reference import RNNLM
from fastseq.text import load_corpus
from fastseq.training import evaluate, predict, spectral_radius, state_grad_norms, train


def split():
    ids, vocab = load_corpus("timemachine", token="char", cleaning="d2l")
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], vocab


def header():
    return (f"python {platform.python_version()}, numpy {np.__version__}, "
            f"OPENBLAS_CORETYPE={'unset' if 'OPENBLAS_CORETYPE' not in os.environ else os.environ['OPENBLAS_CORETYPE']}, "
            f"{os.cpu_count()} cores (shared with other jobs)")


def part_a(minutes, seed):
    tr, te, vocab = split()
    model = RNNLM(len(vocab), 512, seed=seed)             # float32, the book's init
    loader = SeqDataLoader(tr, 32, 35, sampling="sequential", seed=seed)
    rows, start = [], time.perf_counter()
    epoch = 0
    while True:
        epoch += 1
        h = train(model, loader, 1, lr=1.0, clip=1.0, bptt=Full())[0]
        held = evaluate(model, te, batch_size=32, num_steps=35)
        rows.append(dict(epoch=epoch, train_ppl=h["perplexity"], heldout_ppl=held, seconds=h["seconds"],
                         tokens_per_s=h["tokens_per_s"], grad_norm_mean=h["grad_norm_mean"]))
        print(f"epoch {epoch}: train {h['perplexity']:.3f} held-out {held:.3f} ({h['seconds']:.1f} s)", flush=True)
        elapsed = time.perf_counter() - start
        if elapsed + elapsed / epoch > minutes * 60:
            break
    out = dict(rows=rows, wall_seconds=time.perf_counter() - start,
               sample=predict("time traveller ", 50, model, vocab), train_tokens=len(tr), heldout_tokens=len(te))
    print(f"\n{header()}\n")
    print("| epoch | train perplexity | held-out perplexity | seconds | tokens/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['train_ppl']:.3f} | {r['heldout_ppl']:.3f} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} |")
    print(f"\nwall time {out['wall_seconds']:.0f} s; greedy sample: {out['sample']!r}")
    return out


def part_b(hidden, epochs, seed, tau, pi):
    tr, te, vocab = split()
    strategies = [("Full()", lambda: Full()),
                  (f"Truncated({tau}, 'block')", lambda: Truncated(tau, mode="block")),
                  (f"Truncated({tau}, 'sliding')", lambda: Truncated(tau, mode="sliding")),
                  (f"Randomized({pi})", lambda: Randomized(pi, rng=np.random.default_rng(seed)))]
    results = []
    for name, make in strategies:
        model = RNNLM(len(vocab), hidden, seed=seed)
        loader = SeqDataLoader(tr, 32, 35, sampling="sequential", seed=seed)
        t0 = time.perf_counter()
        hist = train(model, loader, epochs, lr=1.0, clip=1.0, bptt=make())
        wall = time.perf_counter() - t0
        held = evaluate(model, te)
        results.append(dict(strategy=name, train_ppl=[h["perplexity"] for h in hist], heldout_ppl=held,
                            seconds=wall, grad_norm_mean=hist[-1]["grad_norm_mean"]))
        print(f"{name}: train {hist[-1]['perplexity']:.3f} held-out {held:.3f} {wall:.1f} s", flush=True)
    print(f"\n{header()}; H={hidden}, T=35, B=32, lr=1, theta=1, sequential, {epochs} epochs, seed {seed}\n")
    print("| strategy | train perplexity by epoch | final train | held-out | wall s | mean grad norm (last epoch) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        by = " ".join(f"{p:.2f}" for p in r["train_ppl"])
        print(f"| {r['strategy']} | {by} | {r['train_ppl'][-1]:.3f} | {r['heldout_ppl']:.3f} | {r['seconds']:.1f} "
              f"| {r['grad_norm_mean']:.3f} |")
    return results


def part_d(hidden, epochs, seed):
    """Gradient diagnostics: spectral radius of W_hh and ||dL/dH_t|| over one window, before and
    after training, and with W_hh rescaled to radius 0.5 and 1.5 (same data), to show vanishing
    and exploding messages."""
    tr, te, vocab = split()
    model = RNNLM(len(vocab), hidden, dtype=np.float64, seed=seed)
    X, Y = next(iter(SeqDataLoader(tr, 32, 35, seed=seed)))
    rows = [("init", spectral_radius(model), state_grad_norms(model, X, Y, term=-1))]
    train(model, SeqDataLoader(tr, 32, 35, seed=seed), epochs, lr=1.0, clip=1.0)
    rows.append((f"after {epochs} epochs", spectral_radius(model), state_grad_norms(model, X, Y, term=-1)))
    W = model.params["W_hh"].copy()
    for r in (0.5, 1.5):
        model.params["W_hh"][...] = W * (r / spectral_radius(model))
        rows.append((f"trained, W_hh rescaled to radius {r}", spectral_radius(model),
                     state_grad_norms(model, X, Y, term=-1)))
        model.params["W_hh"][...] = W
    ts = [0, 5, 10, 15, 20, 25, 30, 34]
    print(f"\n{header()}; H={hidden}, one window of T=35, B=32 (the first training batch), Full BPTT, "
          f"gradient of the last step's loss term only\n")
    print("| model | spectral radius | " + " | ".join(f"t={t}" for t in ts) + " | t=0 / t=34 |")
    print("|---|---|" + "---|" * (len(ts) + 1))
    for name, rho, g in rows:
        print(f"| {name} | {rho:.3f} | " + " | ".join(f"{g[t]:.2e}" for t in ts) + f" | {g[0] / g[-1]:.3g} |")
    return [dict(model=n, spectral_radius=r, state_grad_norms=g.tolist()) for n, r, g in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["a", "b", "d"])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--tau", type=int, default=10)
    ap.add_argument("--pi", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if "FASTSEQ_DATA_DIR" not in os.environ:
        raise SystemExit("set FASTSEQ_DATA_DIR to the folder holding timemachine.txt")
    if a.part == "a":
        out = part_a(a.minutes, a.seed)
    elif a.part == "b":
        out = part_b(a.hidden, a.epochs, a.seed, a.tau, a.pi)
    else:
        out = part_d(a.hidden, a.epochs, a.seed)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    main()
