"""What the training engine adds to a step: fastseq.Trainer against a bare loop.

Legend: B batch, T steps, H hidden size, V vocabulary size. Workload: the book's
character model on The Time Machine ('d2l' cleaning, V=28), B=32, T=35, H=128,
float32, C++ backend, 1 thread, sequential partitioning, clipping at 1, SGD(lr=1).

The bare loop is what a user writes with the model's API: for each batch of the
loader, loss_and_grad with the carried state, global-norm clipping, the SGD
update. The engine runs the same batches (same loader seed, same model
initialisation) through Trainer.fit, which adds the divergence checks, the
history and log accumulators, the deferred Ctrl-C and the budget/callback
checks. Both are timed per epoch, interleaved (bare, engine, bare, ...), so
load on the machine hits both alike; the ratio uses the fastest epoch of each.

    python -m pytest bench/bench_engine.py --benchmark-only      # pytest-benchmark timings
    python bench/bench_engine.py [OUT.md] [ROUNDS]               # the ratio table (bench/results/engine.md)
"""
import os
import sys
import time

import numpy as np
import pytest

import fastseq
from fastseq import clip_grad_norm, optim
from fastseq.training import Trainer

V, B, T, H = 28, 32, 35, 128
TARGET = 1.03          # the engine may add under 3% to a step


def _setup():
    ids, vocab = fastseq.load_corpus("timemachine", cleaning="d2l")
    assert len(vocab) == V
    model = fastseq.RNNLM(V, H, dtype=np.float32, seed=0, backend="cpp")
    loader = fastseq.SeqDataLoader(ids, B, T, seed=1)
    return model, loader


def bare_epoch(model, loader, opt):
    state = None
    for X, Y in loader:
        if state is None:
            state = model.begin_state(B)
        loss, grads, state = model.loss_and_grad(X, Y, state)
        clip_grad_norm(grads, 1.0)
        opt.step(model.params, grads)


def engine_epoch(trainer):
    trainer.fit(trainer.epoch + 1)


def measure(rounds=7):
    """(bare seconds per step, engine seconds per step, steps per epoch), fastest epoch of each."""
    fastseq.set_num_threads(1)
    m1, l1 = _setup()
    m2, l2 = _setup()
    opt = optim.SGD(1.0)
    trainer = Trainer(m2, l2, optim.SGD(1.0), clip=1.0)
    bare_epoch(m1, l1, opt)                 # warm-up: first-touch of buffers, BLAS threads
    engine_epoch(trainer)
    bare, eng = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        bare_epoch(m1, l1, opt)
        t1 = time.perf_counter()
        engine_epoch(trainer)
        t2 = time.perf_counter()
        bare.append(t1 - t0)
        eng.append(t2 - t1)
    steps = trainer.history[-1]["step"] - trainer.history[-2]["step"]
    # Same batches, same initial weights: the two loops must have trained the same model.
    for k, p in m1.params.items():
        np.testing.assert_array_equal(p, m2.params[k])
    return min(bare) / steps, min(eng) / steps, steps, bare, eng


@pytest.fixture(scope="module")
def setup():
    fastseq.set_num_threads(1)
    return _setup()


def test_bare_epoch(benchmark, setup):
    model, loader = setup
    opt = optim.SGD(1.0)
    benchmark.pedantic(bare_epoch, args=(model, loader, opt), rounds=5, warmup_rounds=1)


def test_engine_epoch(benchmark):
    model, loader = _setup()
    trainer = Trainer(model, loader, optim.SGD(1.0), clip=1.0)
    benchmark.pedantic(engine_epoch, args=(trainer,), rounds=5, warmup_rounds=1)


def main(out=None, rounds=7):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from conftest import machine_line

    bare, eng, steps, all_bare, all_eng = measure(rounds)
    ratio = eng / bare
    verdict = "met" if ratio < TARGET else "NOT met"
    lines = [
        "## Training engine overhead (fastseq.Trainer vs a bare loss_and_grad + clip + SGD loop)",
        "",
        f"Workload: The Time Machine (d2l), V={V}, B={B}, T={T}, H={H}, float32, C++ backend, 1 thread, "
        f"{steps} steps per epoch; fastest of {rounds} interleaved epochs each.",
        "",
        "| loop | ms per step (fastest epoch) | median epoch (s) | ratio to bare |",
        "|---|---:|---:|---:|",
        f"| bare loop | {bare * 1e3:.3f} | {np.median(all_bare):.3f} | 1.000 |",
        f"| Trainer.fit | {eng * 1e3:.3f} | {np.median(all_eng):.3f} | {ratio:.3f} |",
        "",
        f"Target: the engine adds under 3% (ratio < {TARGET}): {verdict} "
        f"(median-epoch ratio {np.median(all_eng) / np.median(all_bare):.3f}).",
        "",
        f"Command: `python bench/bench_engine.py bench/results/engine.md {rounds}`",
        "",
        f"Machine: {machine_line()}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, int(sys.argv[2]) if len(sys.argv) > 2 else 7)
