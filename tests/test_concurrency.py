"""The kernels under concurrency: two threads on one model, the thread count changed from another
thread, a fork in the middle of a kernel. Expected values are serial runs of the same calls (the
kernels are deterministic for a given split), checked against the NumPy reference once.
"""
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastseq
from fastseq import _core

V, H, B, T = 30, 256, 16, 12   # H = 256: generation splits its columns, training splits its batch


@pytest.fixture(scope="module")
def model():
    m = fastseq.RNNLM(V, H, dtype=np.float64, seed=2)
    rng = np.random.default_rng(0)
    m.load_state_dict({k: rng.normal(0, 0.3, v.shape) for k, v in m.params.items()})
    return m


def _calls(m):
    rng = np.random.default_rng(1)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    u = rng.random(40)
    return {
        "train": lambda: m.loss_and_grad(X, Y, None),
        "forward": lambda: m(X, None),
        "greedy": lambda: m.generate([1, 2, 3], 40),
        "sample": lambda: m.generate([4], 40, temperature=0.8, top_k=5, uniforms=u),
    }


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, tuple):
        for x, y in zip(a, b):
            _same(x, y)
    elif np.issubdtype(np.asarray(b).dtype, np.floating):
        # the thread count changes how the batch is split, hence the order of the sums
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    else:
        np.testing.assert_array_equal(a, b)   # generated ids: the same for every split


def test_serial_results_are_the_references(model):
    """The baseline the concurrent runs are held to is itself right."""
    ref = fastseq.RNNLM(V, H, dtype=np.float64, backend="numpy")
    ref.load_state_dict(model.state_dict())
    for name, call in _calls(model).items():
        got, want = call(), _calls(ref)[name]()
        if name == "train":
            assert abs(got[0] - want[0]) <= 1e-10 * want[0]
            for k in want[1]:
                np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-9, atol=1e-12)
        elif name == "forward":
            np.testing.assert_allclose(got[0], want[0], rtol=1e-9, atol=1e-12)
        else:
            np.testing.assert_array_equal(got, want)


def test_two_threads_on_one_model_while_a_third_changes_the_thread_count(model):
    calls = _calls(model)
    serial = {name: call() for name, call in calls.items()}
    old = fastseq.get_num_threads()
    stop, errors = threading.Event(), []

    def worker(names, rounds):
        try:
            for r in range(rounds):
                for name in names:
                    _same(calls[name](), serial[name])
        except BaseException as e:   # reported by the main thread
            errors.append(e)

    def churn():
        i = 0
        while not stop.is_set():
            _core.set_num_threads(1 + i % 3)
            i += 1

    ts = [threading.Thread(target=worker, args=(["train", "greedy"], 4)),
          threading.Thread(target=worker, args=(["sample", "forward", "train"], 4))]
    c = threading.Thread(target=churn)
    c.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    stop.set()
    c.join()
    try:
        assert not any(t.is_alive() for t in ts), "a kernel hung"
        assert errors == [], errors[0]
    finally:
        fastseq.set_num_threads(old)


_FORK_DURING_KERNEL = r"""
import os, sys, threading
import numpy as np, fastseq
from fastseq import _core
m = fastseq.RNNLM(30, 256, dtype=np.float64, seed=2)
rng = np.random.default_rng(1)
X, Y = rng.integers(0, 30, (16, 12)), rng.integers(0, 30, (16, 12))
want_loss = m.loss_and_grad(X, Y, None)[0]
want_gen = _core.lm_generate(np.array([1, 2]), 50, m.params, "tanh", 0.0, 0, None, 2)
fastseq.set_num_threads(2)
stop = threading.Event()
def busy():                      # kernels (pool slices, generation threads) running at every fork
    while not stop.is_set():
        m.loss_and_grad(X, Y, None)
        _core.lm_generate(np.array([1, 2]), 50, m.params, "tanh", 0.0, 0, None, 2)
t = threading.Thread(target=busy); t.start()
bad = 0
for i in range(10):
    pid = os.fork()
    if pid == 0:                 # the child: the kernels work, with threads, and it exits
        ok = m.loss_and_grad(X, Y, None)[0] == want_loss
        g = _core.lm_generate(np.array([1, 2]), 50, m.params, "tanh", 0.0, 0, None, 2)
        os._exit(0 if ok and (g == want_gen).all() else 1)
    _, status = os.waitpid(pid, 0)
    bad += os.waitstatus_to_exitcode(status) != 0
stop.set(); t.join()
sys.exit(bad)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_fork_during_kernels_child_computes_the_same_results():
    r = subprocess.run([sys.executable, "-c", _FORK_DURING_KERNEL], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (f"{r.returncode} of 10 children failed", r.stderr[-2000:])


_GENERATE_SOLO_AFTER_BLOCKING = r"""
import os, sys, time
import numpy as np, fastseq
from fastseq import _core
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # both threads on one core: every step blocks
m = fastseq.RNNLM(40, 512, dtype=np.float32, seed=0)
ref = _core.lm_generate(np.array([1]), 300, m.params, "tanh", 0.0, 0, None, 1)
t0 = time.perf_counter()
out = _core.lm_generate(np.array([1]), 300, m.params, "tanh", 0.0, 0, None, 2)
dt = time.perf_counter() - t0
assert (out == ref).all()
print(dt)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="needs sched_setaffinity")
def test_generation_split_on_one_core_is_correct_and_finishes():
    """Two generation threads forced onto one core (the worst case of a busy machine): each step's
    barrier blocks; the call must give the one-thread result and not take seconds per token."""
    r = subprocess.run([sys.executable, "-c", _GENERATE_SOLO_AFTER_BLOCKING], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 30.0   # 300 tokens, about 0.05 s on one free core
