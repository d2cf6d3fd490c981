"""pytest-benchmark: one training step of the NumPy reference RNNLM (the baseline the C++ backend must beat).

One step = loss_and_grad (forward + Full BPTT) + global-norm clipping (theta=1) + SGD update,
at B=32, T=35, V=28 (the Time Machine characters), float32, H in {32, 128, 256, 512}.
tokens/s = B*T / median step time, stored in extra_info (see --benchmark-json).

    env -u OPENBLAS_CORETYPE OPENBLAS_NUM_THREADS=1 python -m pytest bench/bench_reference.py \
        --benchmark-only --benchmark-min-rounds=20
"""
import numpy as np
import pytest

from fastseq.optim import SGD
from fastseq.reference import RNNLM
from fastseq.reference.clip import clip_grad_norm

B, T, V = 32, 35, 28


@pytest.mark.parametrize("H", [32, 128, 256, 512])
def test_reference_train_step(benchmark, H):
    model = RNNLM(V, H, dtype=np.float32, seed=0)
    rng = np.random.default_rng(0)
    X = rng.integers(0, V, (B, T), dtype=np.int32)
    Y = rng.integers(0, V, (B, T), dtype=np.int32)
    opt = SGD(1.0)
    state = [model.begin_state(B)]

    def step():
        loss, grads, state[0] = model.loss_and_grad(X, Y, state[0])
        clip_grad_norm(grads, 1.0)
        opt.step(model.params, grads)
        return loss

    loss = benchmark(step)
    assert np.isfinite(loss)
    # the median resists the stalls of a shared machine; the mean is kept for comparison
    benchmark.extra_info["tokens_per_s"] = B * T / benchmark.stats.stats.median
    benchmark.extra_info["tokens_per_s_mean"] = B * T / benchmark.stats.stats.mean
    benchmark.extra_info["H"] = H
