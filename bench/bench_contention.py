"""Generation and a training step with and without a competing busy process (issue 12, item 12).

The kernels split generation's columns (H >= 256) and a training step's batch over two threads.
That pays while both threads have a core; when another process takes one, a thread that spins
for its descheduled partner wastes the core the partner needs. Measured here, in one run:
one thread, two threads and the automatic choice, on a quiet machine and with a busy-looping
process pinned to the second core (this process pinned to the first two).

    python bench/bench_contention.py [OUT.md]
    FASTSEQ_ISA=avx2 OPENBLAS_CORETYPE=Haswell python bench/bench_contention.py [OUT.md]

Workloads (float32, the book's V = 28): generation of 1,000 tokens at H = 512 (greedy) and
one training step (loss and gradients) at B = 32, T = 35, H = 256. Each cell is the median
of ROUNDS runs, the conditions and thread counts interleaved so drift hits them alike.
"""
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fastseq  # noqa: E402
from fastseq import _core  # noqa: E402

from conftest import machine_line  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", 7))
V = 28


def _spin(cpu):
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def workloads():
    gen = fastseq.RNNLM(V, 512, dtype=np.float32, seed=0)
    lm = fastseq.RNNLM(V, 256, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X, Y = rng.integers(0, V, (32, 35)), rng.integers(0, V, (32, 35))
    h0 = np.zeros((32, 256), np.float32)
    prefix = np.array([1, 2, 3], np.int64)
    return {
        "generate 1000 tokens, H=512": lambda th: _core.lm_generate(prefix, 1000, gen.params, "tanh", 0.0, 0, None, th),
        "training step B=32 T=35 H=256": lambda th: _core.lm_loss_and_grad(X, Y, h0, lm.params, "tanh", None, 0, th),
    }


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main(out=None):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("needs two cores")
    os.sched_setaffinity(0, set(cpus[:2]))
    fastseq.set_num_threads(2)
    work = workloads()
    for f in work.values():     # warm up: pool threads, page faults
        for th in (1, 2, 0):
            f(th)
    times = {}
    for r in range(ROUNDS):
        for cond in ("quiet", "busy"):
            p = None
            if cond == "busy":
                p = mp.get_context("spawn").Process(target=_spin, args=(cpus[1],), daemon=True)
                p.start()
                time.sleep(0.2)
            try:
                for name, f in work.items():
                    for th in (1, 2, 0):
                        times.setdefault((name, cond, th), []).append(timed(lambda: f(th)))
            finally:
                if p is not None:
                    p.terminate()
                    p.join()
    isa = os.environ.get("FASTSEQ_ISA", "native")
    lines = [f"ISA path: {isa}; machine: {machine_line()}", "",
             "| workload | condition | 1 thread (s) | 2 threads (s) | auto (s) | 2 threads / 1 | auto / 1 |",
             "|---|---|---|---|---|---|---|"]
    for name in work:
        for cond in ("quiet", "busy"):
            m = {th: statistics.median(times[(name, cond, th)]) for th in (1, 2, 0)}
            lines.append(f"| {name} | {cond} | {m[1]:.4f} | {m[2]:.4f} | {m[0]:.4f} | {m[2] / m[1]:.2f} | "
                         f"{m[0] / m[1]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "a") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
