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


def _both(n, dtype, steps=3, seed=0, wd=None, **hyper):
    """(kernel's p, m, v, reference's p, m, v) after `steps` steps from the same arrays; wd None leaves
    the weight decay to the functions' defaults."""
    h = dict(HYPER, **hyper)
    decay = () if wd is None else (wd,)
    rng = np.random.default_rng(seed)
    p, g, m, v = _arrays(rng, n, dtype)
    P, M, W = p.copy(), m.copy(), v.copy()
    for t in range(1, steps + 1):
        c1, c2 = 1 - h["b1"] ** t, 1 - h["b2"] ** t
        _core.adam_update(p, g, m, v, h["lr"], h["b1"], h["b2"], c1, c2, h["eps"], *decay)
        adam_update(P, g, M, W, h["lr"], h["b1"], h["b2"], c1, c2, h["eps"], *decay)
    return (p, m, v), (P, M, W)


# sizes: empty, one, a vector's tail, one share, and enough for the two threads' shares (kAdamMinShare)
SIZES = (0, 1, 7, 100, 65537, 3 * (1 << 15) + 13)


@pytest.mark.parametrize("wd", [None, 0.0, 0.1, 30.0])      # lr wd up to 0.15: the decay shows in float32
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_fused_adam_is_bit_equal_to_the_reference(dtype, n, wd):
    got, want = _both(n, dtype, wd=wd)
    for a, b, what in zip(got, want, "pmv"):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b, err_msg=what)
    if n:
        assert not np.array_equal(got[0], _arrays(np.random.default_rng(0), n, dtype)[0])   # it did move
    if wd and n > 3:        # the decay reached both: the parameters differ from plain Adam's
        assert not np.array_equal(got[0], _both(n, dtype)[0][0])


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
            out.append(_both(5 * (1 << 15) + 3, np.float32, wd=0.5)[0])
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
        for wd in (None, 0.1, 30.0):
            got, want = _both(n, dt, wd=wd)
            assert all(np.array_equal(a, b) for a, b in zip(got, want)), (dt, n, wd)
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
    same = np.ones(4, np.float32)                    # the gradient is the parameter: the reference takes it
    optim.Adam(0.1).step({"w": same}, {"w": same})
    np.testing.assert_allclose(same, 1 - 0.1 / (1 + 1e-8), rtol=1e-7)
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
    p = {"a": np.ones(3), "w": np.ones(5)}
    b.m["a"], b.v["a"] = np.zeros(3), np.zeros(3)
    with pytest.raises(ArgumentError, match=r"params\['w'\]: shape \(5,\), but its Adam moments"):
        b.step(p, {"a": np.ones(3), "w": np.ones(5)})
    np.testing.assert_array_equal(p["a"], 1.0)           # nothing was updated, not even the parameter before
    assert b.t == 1


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
    (4, -1e-300, r"^lr: expected a finite number in \[0"),
    (4, float("inf"), r"^lr:"),
    (4, "0.1", r"^lr: expected a real number"),
    (5, 1.0, r"^b1: expected a finite number in \[0"),
    (6, -0.1, r"^b2:"),
    (6, float("nan"), r"^b2:"),
    (7, 0.0, r"^c1: expected a finite number in \(0"),
    (8, 1.5, r"^c2:"),
    (9, 0.0, r"^eps: expected a finite number in \(0, inf\), got 0$"),
    (4, -1e-9, r"^lr: expected a finite number in \[0, inf\), got -1e-09$"),
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_takes_the_zero_rate_a_cosine_schedule_ends_at(dtype):
    """CosineDecay(final=0) sets lr = 0 at progress 1 (a time-budgeted run's last step): both backends
    take it (the step moves nothing, the moments still advance) and agree to the bit."""
    out = []
    for backend in ("cpp", "numpy"):
        rng = np.random.default_rng(4)
        p = {"w": rng.normal(size=50).astype(dtype)}
        g = {"w": rng.normal(size=50).astype(dtype)}
        a = optim.Adam(0.01, backend=backend)
        a.step(p, g)
        before = p["w"].copy()
        assert optim.CosineDecay(final=0.0).at_progress(1.0, a) == 0.0
        a.step(p, g)
        np.testing.assert_array_equal(p["w"], before)
        assert a.t == 2
        out.append((p["w"], a.m["w"], a.v["w"]))
    for x, y in zip(*out):
        np.testing.assert_array_equal(x, y)
    p, g, m, v = _arrays(np.random.default_rng(5), 9, np.float64)
    P = p.copy()
    _core.adam_update(p, g, m, v, 0.0, 0.9, 0.999, 0.1, 0.001, 1e-8)
    np.testing.assert_array_equal(p, P)


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("bad, match", [
    (lambda p, g, a: p.__setitem__("b", _read_only(p["b"].copy())), r"^params\['b'\]: expected a writeable"),
    (lambda p, g, a: p.__setitem__("b", [1.0, 2.0, 3.0]), r"^params\['b'\]: expected a writeable NumPy array"),
    (lambda p, g, a: g.__setitem__("b", np.array(["x", "y", "z"])), r"^grads\['b'\]: expected"),
    (lambda p, g, a: setattr(a, "lr", float("nan")), r"^lr:"),
    (lambda p, g, a: setattr(a, "lr", -0.1), r"^lr:"),
    (lambda p, g, a: setattr(a, "eps", 0.0), r"^eps:"),
    (lambda p, g, a: setattr(a, "betas", (1.0, 0.999)), r"^betas:"),
    (lambda p, g, a: setattr(a, "weight_decay", -0.1), r"^weight_decay:"),
    (lambda p, g, a: setattr(a, "weight_decay", float("inf")), r"^weight_decay:"),
])
def test_adam_step_that_fails_changes_nothing(backend, bad, match):
    """A step refused for its second parameter (or a hyperparameter set out of range by hand) leaves
    the first parameter, every moment and t as they were, on both backends: a step is all or nothing."""
    rng = np.random.default_rng(6)
    p = {"a": rng.normal(size=4), "b": rng.normal(size=3)}
    g = {"a": rng.normal(size=4), "b": rng.normal(size=3)}
    a = optim.Adam(0.1, backend=backend)
    a.step(p, g)
    bad(p, g, a)
    before = a.state_dict()
    pa = p["a"].copy()
    with pytest.raises(ArgumentError, match=match):
        a.step(p, g)
    np.testing.assert_array_equal(p["a"], pa)
    assert a.t == before["t"] == 1
    for name in ("m", "v"):
        for k in ("a", "b"):
            np.testing.assert_array_equal(getattr(a, name)[k], before[name][k], err_msg=f"{name}[{k}]")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_update_takes_a_dtype_with_metadata(dtype):
    """np.dtype(float64, metadata=...) is float64 (==, the same memory) but another descriptor object:
    the kernel takes it as the reference does (it said 'expected dtype float32 or float64, got float64'
    and Adam.step, which sends such arrays to it, failed half-way through a step)."""
    dt = np.dtype(dtype, metadata={"unit": "m"})
    _, want = _both(20, dtype)
    rng = np.random.default_rng(0)
    p, g, m, v = _arrays(rng, 20, dtype)
    p, g = p.astype(dt), g.astype(dt)
    m, v = m.astype(np.dtype(np.float64, metadata={"x": 1})), v.astype(np.dtype(np.float64, metadata={"x": 1}))
    assert p.dtype.metadata and m.dtype.metadata
    for t in range(1, 4):
        _core.adam_update(p, g, m, v, HYPER["lr"], HYPER["b1"], HYPER["b2"], 1 - HYPER["b1"] ** t,
                          1 - HYPER["b2"] ** t, HYPER["eps"])
    for a, b in zip((p, m, v), want):
        np.testing.assert_array_equal(a, b)
    params, grads = {"w": np.ones(3, dt)}, {"w": np.ones(3, dt)}
    plain = {"w": np.ones(3, dtype)}
    optim.Adam(0.1).step(params, grads)
    optim.Adam(0.1, backend="numpy").step(plain, {"w": np.ones(3, dtype)})
    np.testing.assert_array_equal(params["w"], plain["w"])


# p after three steps of plain Adam (lr 0.01, betas (0.9, 0.999), eps 1e-8) from P0 with the gradients
# G0, -G0/2, G0/4, as the update computed before weight decay existed (commit ab04532's reference,
# bit-equal to its kernel): weight_decay=0 must keep these bits.
P0, G0 = [0.5, -1.25, 3.0, 1e-3, 0.0], [0.1, 2.0, -0.3, 1e-6, -4.0]
STORED = {
    np.float32: ["0x1.ef8bf6p-2", "-0x1.441d02p+0", "0x1.820e82p+1", "-0x1.e7bd92p-7", "0x1.0740a8p-6"],
    np.float64: ["0x1.ef8bf596a5232p-2", "-0x1.441d02a1e4fedp+0", "0x1.820e814fd20d7p+1",
                 "-0x1.e7bd924b81c68p-7", "0x1.0740a885f96fcp-6"],
}


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 0.0}, {"weight_decay": 0}])
def test_adam_without_weight_decay_keeps_the_stored_bits(backend, dtype, kwargs):
    p, g = {"w": np.array(P0, dtype)}, np.array(G0, dtype)
    a = optim.Adam(0.01, backend=backend, **kwargs)
    for _ in range(3):
        a.step(p, {"w": g})
        g = g * dtype(-0.5)
    np.testing.assert_array_equal(p["w"], np.array([float.fromhex(x) for x in STORED[dtype]], dtype))


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_weight_decay_is_decoupled_and_follows_the_rate(backend, dtype):
    """With a zero gradient Adam's step is 0 (m = 0), so a step is the decay alone: p (1 - lr wd), the
    product in float64 rounded to p's dtype, with the rate of that step (a schedule's)."""
    p0 = np.array([1.5, -2.0, 1e-3, 0.0, -0.0, 7e30], dtype)
    p, zero = {"w": p0.copy()}, {"w": np.zeros(6, dtype)}
    a = optim.Adam(0.1, weight_decay=0.2, backend=backend)
    a.step(p, zero)
    once = (p0.astype(np.float64) * 0.98).astype(dtype)
    np.testing.assert_array_equal(p["w"], once)
    a.lr = 0.5                                       # as CosineDecay.at_progress sets it
    a.step(p, zero)
    np.testing.assert_array_equal(p["w"], (once.astype(np.float64) * 0.9).astype(dtype))
    assert np.signbit(p["w"][4])                     # -0.0 stays -0.0


def test_adam_weight_decay_factor_is_float64_for_float32_parameters():
    """1 - lr wd is not rounded to float32: lr = wd = 3e-4 (lr wd = 9e-8) would become 1.19e-7 there (a
    third more decay); the product is computed in float64 and rounded once to float32."""
    p0 = np.random.default_rng(11).normal(size=1000).astype(np.float32)
    want = (p0.astype(np.float64) * (1 - 3e-4 * 3e-4)).astype(np.float32)
    assert np.sum(want != p0 * np.float32(1 - 3e-4 * 3e-4)) > 100          # a float32 factor differs
    for backend in ("cpp", "numpy"):
        w = {"w": p0.copy()}
        optim.Adam(3e-4, weight_decay=3e-4, backend=backend).step(w, {"w": np.zeros(1000, np.float32)})
        np.testing.assert_array_equal(w["w"], want)


@pytest.mark.parametrize("bad", [-1e-9, float("nan"), float("inf"), "0.1", True, None])
def test_adam_weight_decay_is_checked(bad):
    with pytest.raises(ArgumentError, match=r"^weight_decay: expected a finite number >= 0"):
        optim.Adam(0.1, weight_decay=bad)
    args = _ok()
    before = args[0].copy()
    with pytest.raises(ArgumentError, match=r"^weight_decay: expected a (finite number in \[0, inf\)|real number)"):
        _core.adam_update(*args, bad)
    with pytest.raises(ArgumentError, match=r"^weight_decay:"):
        _core.adam_update(*args, weight_decay=bad)
    np.testing.assert_array_equal(args[0], before)


def test_adam_state_carries_weight_decay_and_an_older_state_loads_as_plain_adam():
    rng = np.random.default_rng(9)
    p, g = {"w": rng.normal(size=5)}, {"w": rng.normal(size=5)}
    a = optim.Adam(0.1, weight_decay=0.25)
    a.step(p, g)
    state = a.state_dict()
    assert state["weight_decay"] == 0.25
    b = optim.Adam(0.1)
    b.load_state_dict(state)
    assert b.weight_decay == 0.25
    old = {k: v for k, v in state.items() if k != "weight_decay"}     # saved before weight decay existed
    c = optim.Adam(0.1, weight_decay=0.5)
    c.load_state_dict(old)
    assert c.weight_decay == 0.0
    q, r = {"w": p["w"].copy()}, {"w": p["w"].copy()}
    b.step(q, g)
    a.step(r, g)                                     # the loaded optimizer continues as the saved one
    np.testing.assert_array_equal(q["w"], r["w"])
    with pytest.raises(ArgumentError, match=r"^state\['weight_decay'\]: expected a finite number >= 0"):
        optim.Adam().load_state_dict(dict(state, weight_decay=-1.0))


def test_adam_weight_decay_matches_torch_adamw():
    """torch.optim.AdamW (the decay first, p <- p (1 - lr wd), then Adam's step), 10 steps on float64
    tensors with a rate that changes between steps as a schedule's: the same parameters to 1e-12
    (relative; torch computes the step in another order, sqrt(v) / sqrt(c2) and lr / c1)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10)
    shapes = {"W": (4, 3), "b": (3,)}
    start = {k: rng.normal(size=s) for k, s in shapes.items()}
    grads = [{k: rng.normal(size=s) * 10.0 ** rng.integers(-3, 2) for k, s in shapes.items()} for _ in range(10)]
    rates = [0.05 * (1 - i / 12) for i in range(10)]
    tp = {k: torch.tensor(a, requires_grad=True) for k, a in start.items()}
    topt = torch.optim.AdamW(list(tp.values()), lr=rates[0], betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3)
    ours = {b: ({k: a.copy() for k, a in start.items()},
                optim.Adam(rates[0], betas=(0.8, 0.99), eps=1e-7, weight_decay=0.3, backend=b))
            for b in ("cpp", "numpy")}
    for lr, g in zip(rates, grads):
        topt.param_groups[0]["lr"] = lr
        for k, t in tp.items():
            t.grad = torch.tensor(g[k])
        topt.step()
        for p, opt in ours.values():
            opt.lr = lr
            opt.step(p, g)
    for p, _ in ours.values():
        for k, t in tp.items():
            want = t.detach().numpy()
            np.testing.assert_allclose(p[k], want, rtol=1e-12, atol=0, err_msg=k)
            assert not np.allclose(want, start[k], rtol=1e-3)              # they moved
    plain = optim.Adam(rates[0], betas=(0.8, 0.99), eps=1e-7)           # and the decay is part of it
    p = {k: a.copy() for k, a in start.items()}
    for lr, g in zip(rates, grads):
        plain.lr = lr
        plain.step(p, g)
    assert not np.allclose(p["W"], ours["cpp"][0]["W"], rtol=1e-6)
