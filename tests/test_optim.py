"""Adam's fused C++ update (csrc/optim.h through fastseq._core.adam_update) against the NumPy reference
(fastseq.reference.optim.adam_update): the same operations rounded in the same order, so the same bits,
on every instruction-set version and thread count; and its checks at the binding."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastseq
from fastseq import _core, optim
from fastseq.errors import ArgumentError
from fastseq.reference.optim import adam_update

HYPER = dict(lr=0.005, b1=0.9, b2=0.999, eps=1e-8)


def _arrays(rng, n, dtype):
    """A parameter, a gradient spanning many magnitudes (tiny to huge, both signs) and moments."""
    p = rng.normal(size=n).astype(dtype)
    g = (rng.normal(size=n) * rng.lognormal(0, 4, size=n)).astype(dtype)
    if n > 3:
        g[:3] = 0, -0.0, np.finfo(dtype).tiny
    m = rng.normal(size=n) * 0.1
    v = rng.random(n) * 0.1
    return p, g, m, v


def _both(n, dtype, steps=3, seed=0, **hyper):
    """(kernel's p, m, v, reference's p, m, v) after `steps` steps from the same arrays."""
    h = dict(HYPER, **hyper)
    rng = np.random.default_rng(seed)
    p, g, m, v = _arrays(rng, n, dtype)
    P, M, W = p.copy(), m.copy(), v.copy()
    for t in range(1, steps + 1):
        c1, c2 = 1 - h["b1"] ** t, 1 - h["b2"] ** t
        _core.adam_update(p, g, m, v, h["lr"], h["b1"], h["b2"], c1, c2, h["eps"])
        adam_update(P, g, M, W, h["lr"], h["b1"], h["b2"], c1, c2, h["eps"])
    return (p, m, v), (P, M, W)


# sizes: empty, one, a vector's tail, one share, and enough for the two threads' shares (kAdamMinShare)
SIZES = (0, 1, 7, 100, 65537, 3 * (1 << 15) + 13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_fused_adam_is_bit_equal_to_the_reference(dtype, n):
    got, want = _both(n, dtype)
    for a, b, what in zip(got, want, "pmv"):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=what)
    if n:
        assert not np.array_equal(got[0], _arrays(np.random.default_rng(0), n, dtype)[0])   # it did move


@pytest.mark.parametrize("b1, b2", [(0.0, 0.0), (0.5, 0.9), (0.99, 0.9999)])
def test_fused_adam_other_betas(b1, b2):
    got, want = _both(1000, np.float32, steps=5, b1=b1, b2=b2, eps=1e-3, lr=0.3)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_fused_adam_does_not_depend_on_the_thread_count():
    old = fastseq.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 3):
            fastseq.set_num_threads(threads)
            out.append(_both(5 * (1 << 15) + 3, np.float32)[0])
    finally:
        fastseq.set_num_threads(old)
    for other in out[1:]:
        for a, b in zip(out[0], other):
            np.testing.assert_array_equal(a, b)


_ISA_CHECK = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from test_optim import _both
for dt in (np.float32, np.float64):
    for n in (0, 1, 7, 100, 65537):
        got, want = _both(n, dt)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)), (dt, n)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_fused_adam_lower_instruction_sets_are_bit_equal(isa):
    """The AVX2 and SSE2 versions (picked on CPUs without AVX-512; FASTSEQ_ISA forces them here):
    no fused multiply-add may creep in where the reference rounds twice."""
    env = dict(os.environ, FASTSEQ_ISA=isa)
    code = _ISA_CHECK.format(tests=os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_adam_backends_train_to_the_same_bits():
    """The optimizer's two backends through the engine: the same weights and moments, so a run saved on
    one resumes on the other."""
    from fastseq.training import Trainer

    ids = np.random.default_rng(3).integers(0, 20, 3000)
    out = []
    for backend in ("cpp", "numpy"):
        m = fastseq.RNNLM(20, 24, cell="lstm", dtype=np.float32, seed=1, dropout=0.1)
        tr = Trainer(m, fastseq.SeqDataLoader(ids, 4, 16, seed=2), optim.Adam(0.01, backend=backend), clip=1.0,
                     rng=5)
        tr.fit(1)
        out.append((m.params, tr.optimizer.state_dict()))
    (p1, s1), (p2, s2) = out
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k], err_msg=k)
        np.testing.assert_array_equal(s1["m"][k], s2["m"][k], err_msg=k)
        np.testing.assert_array_equal(s1["v"][k], s2["v"][k], err_msg=k)
    assert s1["t"] == s2["t"] > 10


def test_adam_takes_arrays_the_kernel_cannot_through_the_reference():
    """A non-contiguous parameter (a view) or a gradient of another dtype is updated by the NumPy
    reference, with the same result as a contiguous copy through the kernel."""
    rng = np.random.default_rng(8)
    base = rng.normal(size=(6, 8)).astype(np.float32)
    g = rng.normal(size=(6, 4)).astype(np.float32)
    view = {"w": base[:, ::2]}                       # not contiguous: the kernel refuses it
    copy = {"w": np.ascontiguousarray(base[:, ::2])}
    a, b = optim.Adam(0.1), optim.Adam(0.1)
    for _ in range(3):
        a.step(view, {"w": g})
        b.step(copy, {"w": g})
    np.testing.assert_array_equal(view["w"], copy["w"])
    np.testing.assert_array_equal(base[:, ::2], copy["w"])      # the view was updated in place
    p64 = {"w": np.ones(5)}
    optim.Adam(0.1).step(p64, {"w": np.ones(5, dtype=np.float32)})     # float32 grads of a float64 parameter
    np.testing.assert_allclose(p64["w"], 1 - 0.1 / (1 + 1e-8), rtol=1e-15)    # the first step: lr g / (|g| + eps)


def test_adam_backend_is_checked():
    with pytest.raises(ArgumentError, match="backend"):
        optim.Adam(backend="torch")


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_adam_moments_of_another_shape_are_named(backend):
    a = optim.Adam(0.1)
    a.step({"w": np.ones(4)}, {"w": np.ones(4)})
    b = optim.Adam(0.1, backend=backend)
    b.load_state_dict(a.state_dict())
    p = {"w": np.ones(5)}
    with pytest.raises(ArgumentError, match=r"params\['w'\]: shape \(5,\), but its Adam moments"):
        b.step(p, {"w": np.ones(5)})
    np.testing.assert_array_equal(p["w"], 1.0)


def _ok():
    p = np.ones(10, np.float32)
    return [p, np.ones(10, np.float32), np.zeros(10), np.zeros(10), 0.1, 0.9, 0.999, 0.1, 0.001, 1e-8]


NAMES = ("p", "g", "m", "v", "lr", "b1", "b2", "c1", "c2", "eps")


@pytest.mark.parametrize("i, bad, match", [
    (0, [1.0, 2.0], r"^p: expected a NumPy array"),
    (0, np.ones(10, np.int32), r"^p: expected dtype float32 or float64"),
    (0, np.ones((10, 2), np.float32)[:, 0], r"^p: expected a C-contiguous"),
    (1, np.ones(10, np.float64), r"^g: expected dtype float32"),
    (1, np.ones(9, np.float32), r"^g: expected the shape of p"),
    (1, np.ones((2, 5), np.float32), r"^g: expected the shape of p"),
    (2, np.zeros(10, np.float32), r"^m: expected dtype float64"),
    (3, np.zeros(11), r"^v: expected the shape of p"),
    (3, np.zeros((10, 2))[:, 1], r"^v: expected a C-contiguous"),
    (4, 0.0, r"^lr: expected a finite number in \(0"),
    (4, float("inf"), r"^lr:"),
    (4, "0.1", r"^lr: expected a real number"),
    (5, 1.0, r"^b1: expected a finite number in \[0"),
    (6, -0.1, r"^b2:"),
    (6, float("nan"), r"^b2:"),
    (7, 0.0, r"^c1: expected a finite number in \(0"),
    (8, 1.5, r"^c2:"),
    (9, 0.0, r"^eps:"),
    (9, True, r"^eps: expected a real number, got bool"),
])
def test_adam_update_checks_its_arguments(i, bad, match):
    args = _ok()
    args[i] = bad
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(ArgumentError, match=match):
        _core.adam_update(*args)
    for a, b in zip(args, before):                 # nothing was written
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)


def test_adam_update_refuses_read_only_and_shared_memory():
    args = _ok()
    args[0].flags.writeable = False
    with pytest.raises(ArgumentError, match=r"^p: expected a writeable array"):
        _core.adam_update(*args)
    args = _ok()
    args[3] = args[2]                                # v is m
    with pytest.raises(ArgumentError, match=r"^v: shares memory with m"):
        _core.adam_update(*args)
    args = _ok()
    args[1] = args[0]                                # g is p
    with pytest.raises(ArgumentError, match=r"^g: shares memory with p"):
        _core.adam_update(*args)
    buf = np.zeros(30)
    args = _ok()
    args[2], args[3] = buf[:10], buf[5:15]           # overlapping views
    with pytest.raises(ArgumentError, match=r"^v: shares memory with m"):
        _core.adam_update(*args)
    unaligned = np.frombuffer(np.zeros(81, np.uint8).data, dtype=np.float64, count=10, offset=1)
    args = _ok()
    args[2] = unaligned
    with pytest.raises(ArgumentError, match=r"^m: expected an aligned array"):
        _core.adam_update(*args)
