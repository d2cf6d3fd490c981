"""Issue 12, item 13: "per-slice gradient copies do not grow with the thread count beyond what the cores can
use". Each batch slice beyond the first keeps its own copy of the gradients, so a thread count of 64 on a
2-core machine must cost what 2 slices cost, not 64 copies. Measured as the growth of the peak resident set
of a fresh process against one slice's (the copies live in C++, out of tracemalloc's sight)."""
import os
import subprocess
import sys

import pytest

H, B, T, V = 1024, 64, 4, 28
# one slice's gradient copy: W_xh, W_hh, b_h, W_hq, b_q in float32
GRAD_MB = (V * H + H * H + H + H * V + V) * 4 / 2 ** 20
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

PROBE = f"""
import sys, numpy as np, fastseq
from fastseq import _core
threads, parts = int(sys.argv[1]), int(sys.argv[2])
m = fastseq.RNNLM({V}, {H}, seed=0)
ids = np.random.default_rng(0).integers(0, {V}, ({B}, {T}))
fastseq.set_num_threads(threads)
for _ in range(2):
    if parts:                              # an explicit split (tests and benchmarks ask for one)
        _core.lm_loss_and_grad(ids, ids, np.zeros(({B}, {H}), np.float32), m.params, "tanh", None, 0, parts)
    else:                                  # what users get: the split chosen from the thread count
        m.loss_and_grad(ids, ids, None)
# VmHWM: this process image's own peak. ru_maxrss is not: exec keeps the parent's peak in it, so under a
# long pytest run every probe reported pytest's own size and the growths read 0.0.
with open("/proc/self/status") as f:
    print(next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024)
"""


def peak_mb(threads, parts=0):
    """Peak RSS (MB) of a fresh process that runs the step twice at this split. Each configuration gets its
    own process: within one process a later, smaller peak hides under an earlier one (ru_maxrss is a peak)."""
    p = subprocess.run([sys.executable, "-c", PROBE, str(threads), str(parts)], capture_output=True, text=True,
                       timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert p.returncode == 0, p.stderr
    return float(p.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_gradient_copies_are_capped_by_the_cores_not_the_thread_count():
    slack = 8.0    # MB: allocator rounding, a worker's stack and buffers, the slices' activations
    one = min(peak_mb(1, 1), peak_mb(1, 1))
    auto = peak_mb(64) - one
    assert auto <= (CORES - 1) * 2 * GRAD_MB + slack, (auto, CORES, GRAD_MB)
    # The measure sees slices: an explicit request may use twice the cores (the documented cap), and then
    # the peak grows by about one gradient copy per extra slice; 64 requested slices are capped the same way.
    explicit = peak_mb(1, 2 * CORES) - one
    assert explicit >= auto + CORES * 0.5 * GRAD_MB, (explicit, auto, GRAD_MB)
    assert peak_mb(1, 64) - one <= (2 * CORES - 1) * 2 * GRAD_MB + slack
