"""The C++ backend (fastseq.RNN / fastseq.RNNLM) against the NumPy reference.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size.
Every expected value comes from fastseq.reference (or from the backend='numpy'
path, which is the reference itself); nothing is compared with itself.
"""
import inspect
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastseq
from fastseq import _core
from fastseq import reference as ref
from fastseq.bptt import Full, Randomized, Truncated
from tolerances import RTOL, assert_close, up

# The thread-count fixture is set once per parametrisation on purpose, not per example.
HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def randomize(model, rng, scale=0.5):
    """Weights large enough that every term of the gradient matters (the init's 0.01 hides errors)."""
    model.load_state_dict({k: rng.normal(0, scale, v.shape) for k, v in model.params.items()})


def make_strategy(kind, tau, T, B, rng):
    if kind == "full":
        return Full()
    if kind == "block":
        return Truncated(tau, mode="block")
    if kind == "sliding":
        return Truncated(tau, mode="sliding")
    xi = np.where(rng.random((T, B)) < 0.6, 1 / 0.6, 0.0)   # one draw, given to both backends
    return Randomized(xi=xi)


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def blas_threads(request):
    """1 thread: one slice of the batch; 2: two slices side by side (the kernels' split)."""
    old = fastseq.get_num_threads()
    fastseq.set_num_threads(request.param)
    yield request.param
    fastseq.set_num_threads(old)


sizes = st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 6), st.integers(1, 9))
kinds = st.sampled_from(["full", "block", "sliding", "randomized"])
dtypes = st.sampled_from([np.float64, np.float32])
nonlins = st.sampled_from(["tanh", "relu"])


# ----------------------------------------------------------------------------- layer
@HYP
@given(size=sizes, kind=kinds, tau=st.integers(1, 8), dtype=dtypes, nl=nonlins, seed=st.integers(0, 2**31 - 1),
       with_h0=st.booleans(), with_dHT=st.booleans())
def test_layer_matches_reference(blas_threads, size, kind, tau, dtype, nl, seed, with_h0, with_dHT):
    T, B, D, H = size
    rng = np.random.default_rng(seed)
    fast = fastseq.RNN(D, H, nonlinearity=nl, dtype=dtype)
    slow = ref.RNN(D, H, nonlinearity=nl, dtype=dtype)
    randomize(fast, rng)
    slow.load_state_dict(fast.state_dict())
    X = rng.normal(size=(T, B, D)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype) if with_h0 else None
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    dH_T = rng.normal(size=(B, H)).astype(dtype) if with_dHT else None
    strategy = make_strategy(kind, tau, T, B, rng)

    Hs, cache = fast.forward(X, h0)
    Hs_r, cache_r = slow.forward(X, h0)
    assert Hs.dtype == dtype
    assert_close(Hs, Hs_r, dtype, "Hs")
    dX, dh0, g = fast.backward(dHs, cache, dH_T=dH_T, bptt=strategy)
    dX_r, dh0_r, g_r = slow.backward(dHs, cache_r, dH_T=dH_T, bptt=strategy)
    assert_close(dX, dX_r, dtype, "dX")
    assert_close(dh0, dh0_r, dtype, "dh0")
    assert set(g) == set(g_r) == set(fast.params)
    exact = _exact_grads(lambda m: m.backward(up(dHs), m.forward(up(X), up(h0))[1], dH_T=up(dH_T),
                                              bptt=strategy)[2], ref.RNN(D, H, nonlinearity=nl, dtype=np.float64), slow, dtype)
    for k in g:
        assert g[k].dtype == dtype
        assert_close(g[k], g_r[k], dtype, k, exact=exact and exact[k])


def _exact_grads(grads_of, model64, slow, dtype):
    """For float32: the gradients in float64 from the same (float32) weights and inputs, so that a sum whose
    terms cancel is judged against the float32 reference's own rounding (tests/tolerances.py)."""
    if dtype != np.float32:
        return None
    model64.load_state_dict({k: up(v) for k, v in slow.state_dict().items()})
    return grads_of(model64)


def test_layer_cache_of_another_model_is_refused():
    """The cache is the ops' own (the cells contract): a backward of another model's forward is refused,
    whichever ops made it."""
    rng = np.random.default_rng(1)
    fast = fastseq.RNN(3, 5, dtype=np.float64)
    slow = fastseq.RNN(3, 5, dtype=np.float64, backend="numpy")
    X = rng.normal(size=(4, 2, 3))
    dHs = rng.normal(size=(4, 2, 5))
    _, c_fast = fast.forward(X)
    _, c_slow = slow.forward(X)
    for model, cache in ((fast, c_slow), (slow, c_fast)):
        with pytest.raises(ValueError, match="^cache: from the forward of another model"):
            model.backward(dHs, cache)


def test_layer_accepts_non_contiguous_inputs():
    rng = np.random.default_rng(2)
    fast = fastseq.RNN(3, 4, dtype=np.float64)
    randomize(fast, rng)
    slow = ref.RNN(3, 4, dtype=np.float64)
    slow.load_state_dict(fast.state_dict())
    X = rng.normal(size=(3, 5, 6))[:, :, ::2]          # a strided view
    assert not X.flags.c_contiguous
    assert_close(fast.forward(X)[0], slow.forward(X)[0], np.float64, "Hs")


# ----------------------------------------------------------------------------- language model
@HYP
@given(size=sizes, kind=kinds, tau=st.integers(1, 8), dtype=dtypes, nl=nonlins, seed=st.integers(0, 2**31 - 1),
       with_state=st.booleans())
def test_lm_step_matches_reference(blas_threads, size, kind, tau, dtype, nl, seed, with_state):
    T, B, V, H = size
    rng = np.random.default_rng(seed)
    fast = fastseq.RNNLM(V, H, nonlinearity=nl, dtype=dtype)
    slow = ref.RNNLM(V, H, nonlinearity=nl, dtype=dtype)
    randomize(fast, rng)
    slow.load_state_dict(fast.state_dict())
    X = rng.integers(0, V, (B, T))
    Y = rng.integers(0, V, (B, T))
    state = rng.normal(size=(B, H)).astype(dtype) if with_state else None
    strategy = make_strategy(kind, tau, T, B, rng)

    loss, g, s = fast.loss_and_grad(X, Y, state, bptt=strategy)
    loss_r, g_r, s_r = slow.loss_and_grad(X, Y, state, bptt=strategy)
    assert isinstance(loss, float)
    assert abs(loss - loss_r) <= RTOL[dtype] * max(abs(loss_r), 1e-30)
    assert_close(s, s_r, dtype, "new_state")
    assert set(g) == set(g_r) == set(fast.params)
    exact = _exact_grads(lambda m: m.loss_and_grad(X, Y, up(state), bptt=strategy)[1],
                         ref.RNNLM(V, H, nonlinearity=nl, dtype=np.float64), slow, dtype)
    for k in g:
        assert g[k].dtype == dtype and g[k].shape == fast.params[k].shape
        assert_close(g[k], g_r[k], dtype, k, exact=exact and exact[k])

    logits, s2 = fast(X, state)
    logits_r, s2_r = slow(X, state)
    assert logits.shape == (B, T, V) and logits.dtype == dtype
    assert_close(logits, logits_r, dtype, "logits")
    assert_close(s2, s2_r, dtype, "state")


def test_lm_accepts_any_integer_id_dtype():
    rng = np.random.default_rng(8)
    m = fastseq.RNNLM(6, 4, dtype=np.float64)
    randomize(m, rng)
    X = rng.integers(0, 6, (3, 5))
    logits, _ = m(X, None)
    for dt in (np.int32, np.uint8, np.uint64, np.int16, np.longlong, np.intc):
        np.testing.assert_array_equal(m(X.astype(dt), None)[0], logits)
    np.testing.assert_array_equal(m(np.asfortranarray(X), None)[0], logits)
    # np.longlong is int64 under another descriptor: the binding must take it as int64
    np.testing.assert_array_equal(m.generate(X[0].astype(np.longlong), 4), m.generate(X[0], 4))
    loss, _, _ = m.loss_and_grad(X.astype(np.longlong), X.astype(np.longlong), None)
    assert loss == m.loss_and_grad(X, X, None)[0]


def _misaligned(a):
    """A copy of a whose data starts one byte past an aligned address (numpy flags it unaligned)."""
    buf = np.zeros(a.nbytes + 1, dtype=np.uint8)[1:]
    m = buf.view(a.dtype).reshape(a.shape)
    m[...] = a
    assert not m.flags.aligned
    return m


def test_misaligned_user_arrays_give_the_aligned_results():
    rng = np.random.default_rng(11)
    for dtype in (np.float32, np.float64):
        lm = fastseq.RNNLM(7, 17, dtype=dtype)
        randomize(lm, rng)
        X = rng.integers(0, 7, (3, 5))
        s = rng.normal(size=(3, 17)).astype(dtype)
        loss, g, st = lm.loss_and_grad(_misaligned(X), _misaligned(X), _misaligned(s))
        loss_a, g_a, st_a = lm.loss_and_grad(X, X, s)
        assert loss == loss_a
        np.testing.assert_array_equal(st, st_a)
        np.testing.assert_array_equal(lm(_misaligned(X), _misaligned(s))[0], lm(X, s)[0])
        u = rng.random(4)
        np.testing.assert_array_equal(lm.generate(_misaligned(X[0]), 4, 1.0, 0, _misaligned(u)),
                                      lm.generate(X[0], 4, 1.0, 0, u))
        layer = fastseq.RNN(3, 17, dtype=dtype)
        Xd = rng.normal(size=(4, 2, 3)).astype(dtype)
        Hs, cache = layer.forward(_misaligned(Xd), _misaligned(s[:2]))
        Hs_a, cache_a = layer.forward(Xd, s[:2])
        np.testing.assert_array_equal(Hs, Hs_a)
        dX, dh0, _ = layer.backward(_misaligned(Hs), cache, _misaligned(s[:2]))
        dX_a, dh0_a, _ = layer.backward(Hs_a, cache_a, s[:2])
        np.testing.assert_array_equal(dX, dX_a)
        np.testing.assert_array_equal(dh0, dh0_a)


@pytest.mark.parametrize("num_preds", [2**31, 10**30])
def test_generate_rejects_a_count_beyond_int32(num_preds):
    m = fastseq.RNNLM(5, 4)
    with pytest.raises(ValueError, match="num_preds"):
        m.generate([0], num_preds)


def test_lm_gradient_is_the_one_hot_layer_gradient():
    """The LM's row gather and scatter-add agree with the dense layer fed one-hot inputs (both on C++)."""
    rng = np.random.default_rng(3)
    V, H, B, T = 6, 5, 3, 4
    lm = fastseq.RNNLM(V, H, dtype=np.float64)
    randomize(lm, rng)
    layer = fastseq.RNN(V, H, dtype=np.float64)
    layer.load_state_dict({k: lm.params[k] for k in layer.params})
    X = rng.integers(0, V, (B, T))
    Hs, _ = layer.forward(np.eye(V)[X.T])
    logits, _ = lm(X, None)
    ref_logits = Hs @ lm.params["W_hq"] + lm.params["b_q"]
    assert_close(logits, ref_logits.transpose(1, 0, 2), np.float64, "logits")


def test_sgd_clip_training_trajectories_agree():
    """Twenty steps of SGD (lr 1) with clipping (theta 1), state carried (detached): same losses on both backends."""
    rng = np.random.default_rng(4)
    V, H, B, T = 28, 32, 4, 8
    text = np.tile(rng.integers(0, V, 50), 20)                # a repeating pattern, learnable
    models = {b: fastseq.RNNLM(V, H, dtype=np.float64, seed=7, backend=b) for b in ("cpp", "numpy")}
    history = {}
    for backend, model in models.items():
        state, losses, norms = None, [], []
        for step in range(20):
            i = step * T
            X = np.stack([text[i + b * 100: i + b * 100 + T] for b in range(B)])
            Y = np.stack([text[i + b * 100 + 1: i + b * 100 + T + 1] for b in range(B)])
            loss, grads, state = model.loss_and_grad(X, Y, state, bptt=Truncated(5))
            norms.append(model.ops.clip_grad_norm(grads, 1.0))
            for k, p in model.params.items():
                p -= 1.0 * grads[k]
            losses.append(loss)
        history[backend] = np.array(losses), np.array(norms)
    losses, norms = history["cpp"]
    losses_r, norms_r = history["numpy"]
    assert losses_r[-1] < losses_r[0] - 0.1                     # it trains (a real trajectory)
    assert np.max(np.abs(losses - losses_r) / losses_r) <= 1e-10
    assert np.max(np.abs(norms - norms_r) / norms_r) <= 1e-10
    for k in models["cpp"].params:
        assert_close(models["cpp"].params[k], models["numpy"].params[k], np.float64, k)


# ----------------------------------------------------------------------------- generation
@HYP
@given(V=st.integers(1, 9), H=st.integers(1, 12), dtype=dtypes, nl=nonlins, seed=st.integers(0, 2**31 - 1),
       temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]), top_k=st.integers(0, 10), n=st.integers(0, 15),
       plen=st.integers(1, 4))
def test_generation_matches_reference(V, H, dtype, nl, seed, temperature, top_k, n, plen):
    rng = np.random.default_rng(seed)
    fast = fastseq.RNNLM(V, H, nonlinearity=nl, dtype=dtype)
    randomize(fast, rng, scale=1.0)
    slow = ref.RNNLM(V, H, nonlinearity=nl, dtype=dtype)
    slow.load_state_dict(fast.state_dict())
    prefix = rng.integers(0, V, plen)
    u = rng.random(n) if temperature > 0 else None
    out = fast.generate(prefix, n, temperature=temperature, top_k=top_k, uniforms=u)
    out_r = slow.generate(prefix, n, temperature=temperature, top_k=top_k, uniforms=u)
    assert out.dtype == np.int32 and out.shape == (n,)
    np.testing.assert_array_equal(out, out_r)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nan_cols", [[3], [0, 5], list(range(9))], ids=["one", "two", "all"])
def test_generation_with_nan_logits_matches_reference(dtype, nan_cols):
    """A diverged model (NaN logits) must not reach the top-k selection with a broken order; both backends agree."""
    rng = np.random.default_rng(5)
    fast = fastseq.RNNLM(9, 6, dtype=dtype)
    randomize(fast, rng, scale=1.0)
    fast.params["W_hq"][:, nan_cols] = np.nan
    slow = ref.RNNLM(9, 6, dtype=dtype)
    slow.params = {k: v.copy() for k, v in fast.params.items()}
    u = rng.random(6)
    for temperature, top_k in [(0.0, 0), (1.0, 0), (0.7, 2), (1.0, 8), (2.0, 9)]:
        uu = u if temperature > 0 else None
        got = fast.generate([1, 2], 6, temperature, top_k, uu)
        want = slow.generate([1, 2], 6, temperature, top_k, uu)
        np.testing.assert_array_equal(got, want, err_msg=f"temperature={temperature} top_k={top_k}")


@pytest.mark.parametrize("args", [
    ([], 3, 0.0, 0, None), ([[1]], 3, 0.0, 0, None), ([9], 3, 0.0, 0, None), ([-1], 3, 0.0, 0, None),
    ([1.0], 3, 0.0, 0, None), ([1], -1, 0.0, 0, None), ([1], 2.0, 0.0, 0, None), ([1], True, 0.0, 0, None),
    ([1], 3, -1.0, 0, None), ([1], 3, np.inf, 0, None), ([1], 3, np.nan, 0, None), ([1], 3, "1", 0, None),
    ([1], 3, 1.0, -1, np.full(3, 0.5)), ([1], 3, 1.0, 1.5, np.full(3, 0.5)), ([1], 3, 1.0, 0, None),
    ([1], 3, 1.0, 0, np.full(2, 0.5)), ([1], 3, 1.0, 0, np.full(3, 0.5, np.float32)),
    ([1], 3, 1.0, 0, np.array([0.1, 1.0, 0.2])), ([1], 3, 1.0, 0, np.array([0.1, np.nan, 0.2])),
])
def test_generate_argument_errors_are_the_references(args):
    """One check serves both backends: the same argument gets the same ValueError text."""
    msgs = []
    for backend in ("cpp", "numpy"):
        m = fastseq.RNNLM(5, 4, backend=backend)
        with pytest.raises(ValueError) as e:
            m.generate(*args)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


def test_generation_ties_and_top_k_edges():
    """Equal logits: greedy takes the lowest id; top_k keeps the lower ids among ties."""
    V, H = 5, 3
    for backend in ("cpp", "numpy"):
        m = fastseq.RNNLM(V, H, dtype=np.float64, backend=backend)
        m.load_state_dict({k: np.zeros_like(v) for k, v in m.params.items()})   # all logits equal
        assert m.generate([0], 3).tolist() == [0, 0, 0]
        # top_k = 2 keeps ids 0 and 1: u < 0.5 -> 0, u >= 0.5 -> 1
        assert m.generate([0], 3, temperature=1.0, top_k=2, uniforms=np.array([0.1, 0.6, 0.99])).tolist() == [0, 1, 1]
        assert m.generate([0], 2, temperature=1.0, uniforms=np.array([0.0, 0.999999])).tolist() == [0, 4]


# ----------------------------------------------------------------------------- validation
def lm_cases():
    ok_X = np.zeros((2, 3), dtype=np.int64)
    return [
        ("X", lambda m: m(np.full((2, 3), 5), None)),                              # id == V
        ("X", lambda m: m(np.full((2, 3), -1), None)),                             # negative id
        ("X", lambda m: m(np.zeros((2, 3), dtype=np.float32), None)),              # not integer
        ("X", lambda m: m(np.full((2, 3), 2**63, dtype=np.uint64), None)),         # would wrap in int64
        ("X", lambda m: m(np.full((2, 3), 5, dtype=np.int32), None)),              # id == V, another dtype
        ("X", lambda m: m(np.zeros(3, dtype=np.int64), None)),                     # not 2-D
        ("X", lambda m: m(np.zeros((0, 3), dtype=np.int64), None)),                # B = 0
        ("state", lambda m: m(ok_X, np.zeros((2, 3)))),                             # wrong H
        ("state", lambda m: m(ok_X, np.zeros((2, 4), dtype=np.float64))),          # wrong dtype
        ("Y", lambda m: m.loss_and_grad(ok_X, np.zeros((2, 4), dtype=np.int64), None)),
        ("Y", lambda m: m.loss_and_grad(ok_X, np.full((2, 3), 9), None)),
        ("bptt", lambda m: m.loss_and_grad(ok_X, ok_X, None, bptt="full")),
        ("xi", lambda m: m.loss_and_grad(ok_X, ok_X, None, bptt=Randomized(xi=np.ones((3, 3))))),
        ("prefix_ids", lambda m: m.generate([], 3)),
        ("prefix_ids", lambda m: m.generate([7], 3)),
        ("num_preds", lambda m: m.generate([1], -1)),
        ("temperature", lambda m: m.generate([1], 2, temperature=-1.0)),
        ("temperature", lambda m: m.generate([1], 2, temperature=float("nan"))),
        ("top_k", lambda m: m.generate([1], 2, top_k=-2)),
        ("uniforms", lambda m: m.generate([1], 2, temperature=1.0)),
        ("uniforms", lambda m: m.generate([1], 2, temperature=1.0, uniforms=np.zeros(3))),
        ("uniforms", lambda m: m.generate([1], 2, temperature=1.0, uniforms=np.zeros(2, dtype=np.float32))),
        ("uniforms", lambda m: m.generate([1], 2, temperature=1.0, uniforms=np.array([0.5, 1.0]))),
        ("batch_size", lambda m: m.begin_state(0)),
        ("W_hh", lambda m: m.load_state_dict({**m.state_dict(), "W_hh": np.zeros((3, 3))})),
        ("W_hq", lambda m: m.load_state_dict({**m.state_dict(), "W_hq": np.full((4, 5), np.nan)})),
    ]


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("case", range(len(lm_cases())))
def test_lm_validation_errors(backend, case):
    name, call = lm_cases()[case]
    m = fastseq.RNNLM(5, 4, backend=backend)
    with pytest.raises(ValueError, match=name):
        call(m)


def layer_cases():
    X = np.zeros((3, 2, 4), dtype=np.float32)
    return [
        ("X", lambda m: m.forward(X.astype(np.float64))),
        ("X", lambda m: m.forward(np.zeros((3, 2, 5), dtype=np.float32))),
        ("X", lambda m: m.forward(np.zeros((0, 2, 4), dtype=np.float32))),
        ("X", lambda m: m.forward(X.tolist())),
        ("h0", lambda m: m.forward(X, np.zeros((3, 6), dtype=np.float32))),
        ("dHs", lambda m: m.backward(np.zeros((3, 2, 5), dtype=np.float32), m.forward(X)[1])),
        ("dH_T", lambda m: m.backward(np.zeros((3, 2, 6), dtype=np.float32), m.forward(X)[1],
                                      dH_T=np.zeros((2, 6)))),
        ("cache", lambda m: m.backward(np.zeros((3, 2, 6), dtype=np.float32), (X,))),
        ("cache", lambda m: m.backward(np.zeros((3, 2, 6), dtype=np.float32),
                                       fastseq.RNN(4, 6, backend=m.backend).forward(X)[1])),
        ("tau", lambda m: m.backward(np.zeros((3, 2, 6), dtype=np.float32), m.forward(X)[1], bptt=Truncated(0))),
    ]


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
@pytest.mark.parametrize("case", range(len(layer_cases())))
def test_layer_validation_errors(backend, case):
    name, call = layer_cases()[case]
    m = fastseq.RNN(4, 6, backend=backend)
    with pytest.raises(ValueError, match=name):
        call(m)


def test_constructor_errors():
    with pytest.raises(ValueError, match="backend"):
        fastseq.RNNLM(5, 4, backend="gpu")
    with pytest.raises(ValueError, match="nonlinearity"):
        fastseq.RNNLM(5, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dtype"):
        fastseq.RNN(5, 4, dtype=np.int32)


def _params(V=5, H=4, dtype=np.float64):
    rng = np.random.default_rng(0)
    return {"W_xh": rng.normal(size=(V, H)).astype(dtype), "W_hh": rng.normal(size=(H, H)).astype(dtype),
            "b_h": np.zeros(H, dtype), "W_hq": rng.normal(size=(H, V)).astype(dtype), "b_q": np.zeros(V, dtype)}


def binding_cases():
    """Arguments that only the C++ boundary sees (the Python layer checks or fixes the rest first)."""
    ids = np.zeros((2, 3), dtype=np.int64)
    h0 = np.zeros((2, 4))
    p = _params()
    X = np.zeros((3, 2, 5))
    lp = {k: p[k] for k in ("W_xh", "W_hh", "b_h")}
    Hs = np.zeros((3, 2, 4))
    return [
        ("X", lambda: _core.lm_forward(ids.astype(np.int32), h0, p, "tanh")),
        ("X", lambda: _core.lm_forward(np.zeros((3, 2), np.int64).T, h0, p, "tanh")),       # not C-contiguous
        ("X", lambda: _core.lm_forward(np.full((2, 3), 5, np.int64), h0, p, "tanh")),
        ("X", lambda: _core.lm_forward([[0, 1]], h0, p, "tanh")),
        ("state", lambda: _core.lm_forward(ids, h0.astype(np.float32), p, "tanh")),
        ("state", lambda: _core.lm_forward(ids, np.zeros((3, 4)), p, "tanh")),
        ("W_hq", lambda: _core.lm_forward(ids, h0, {**p, "W_hq": np.zeros((4, 6))}, "tanh")),
        ("W_hq", lambda: _core.lm_forward(ids, h0, {**p, "W_hq": np.asfortranarray(np.zeros((4, 5)))}, "tanh")),
        ("b_q", lambda: _core.lm_forward(ids, h0, {k: v for k, v in p.items() if k != "b_q"}, "tanh")),
        ("W_xh", lambda: _core.lm_forward(ids, h0, {**p, "W_xh": p["W_xh"].astype(np.float32)}, "tanh")),
        ("W_hh", lambda: _core.lm_forward(ids, h0, {**p, "W_hh": np.zeros((4, 5))}, "tanh")),
        ("W_hh", lambda: _core.lm_forward(ids, h0, {**p, "W_hh": np.zeros((4, 4), np.int64)}, "tanh")),
        ("nonlinearity", lambda: _core.lm_forward(ids, h0, p, "sigmoid")),
        ("threads", lambda: _core.lm_forward(ids, h0, p, "tanh", threads=-1)),
        ("Y", lambda: _core.lm_loss_and_grad(ids, np.zeros((2, 4), np.int64), h0, p, "tanh", None, 0)),
        ("scale", lambda: _core.lm_loss_and_grad(ids, ids, h0, p, "tanh", np.ones((2, 3)), 0)),
        ("scale", lambda: _core.lm_loss_and_grad(ids, ids, h0, p, "tanh", np.ones((3, 2), np.float32), 0)),
        ("window", lambda: _core.lm_loss_and_grad(ids, ids, h0, p, "tanh", None, -1)),
        ("prefix_ids", lambda: _core.lm_generate(np.array([5]), 2, p, "tanh", 0.0, 0, None)),
        ("num_preds", lambda: _core.lm_generate(np.array([1]), -2, p, "tanh", 0.0, 0, None)),
        ("uniforms", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", 1.0, 0, np.array([0.1, 2.0]))),
        ("uniforms", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", 1.0, 0, None)),
        ("top_k", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", 1.0, -1, np.array([0.1, 0.2]))),
        ("temperature", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", -1.0, 0, None)),
        ("X", lambda: _core.rnn_forward(np.zeros((3, 2, 6)), h0, lp, "tanh")),
        ("h0", lambda: _core.rnn_forward(X, np.zeros((2, 4, 1)), lp, "tanh")),
        ("Hs", lambda: _core.rnn_backward(Hs, X, h0, np.zeros((3, 2, 3)), lp, "tanh", None, None, 0)),
        ("dHs", lambda: _core.rnn_backward(Hs[:, :, ::2], X, h0, Hs, lp, "tanh", None, None, 0)),
        ("dH_T", lambda: _core.rnn_backward(Hs, X, h0, Hs, lp, "tanh", np.zeros((2, 5)), None, 0)),
        ("b_h", lambda: _core.rnn_forward(X, h0, {**lp, "b_h": np.zeros(5)}, "tanh")),
        ("params", lambda: _core.lm_forward(ids, h0, list(p.values()), "tanh")),
        ("params", lambda: _core.rnn_forward(X, h0, None, "tanh")),
        ("params", lambda: _core.lm_generate(np.array([1]), 2, (), "tanh", 0.0, 0, None)),
        ("W_hh", lambda: _core.lm_forward(ids, h0, {**p, "W_hh": _misaligned(p["W_hh"])}, "tanh")),
        ("aligned", lambda: _core.rnn_forward(_misaligned(X), h0, lp, "tanh")),
        ("X", lambda: _core.lm_forward(_misaligned(ids), h0, p, "tanh")),
        ("num_preds", lambda: _core.lm_generate(np.array([1]), 2**31, p, "tanh", 0.0, 0, None)),
        ("num_preds", lambda: _core.lm_generate(np.array([1]), 10**30, p, "tanh", 0.0, 0, None)),
        ("num_preds", lambda: _core.lm_generate(np.array([1]), 2.0, p, "tanh", 0.0, 0, None)),
        ("top_k", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", 0.0, 2**40, None)),
        # mistyped scalars: ValueError naming them (not pybind11's TypeError that prints every argument)
        ("temperature", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", "hot", 0, None)),
        ("temperature", lambda: _core.lm_generate(np.array([1]), 2, p, "tanh", True, 0, None)),
        ("threads", lambda: _core.lm_forward(ids, h0, p, "tanh", threads="2")),
        ("threads", lambda: _core.rnn_forward(X, h0, lp, "tanh", threads=2**40)),
        ("window", lambda: _core.lm_loss_and_grad(ids, ids, h0, p, "tanh", None, 1.5)),
        ("window", lambda: _core.rnn_backward(Hs, X, h0, Hs, lp, "tanh", None, None, None)),
        ("nonlinearity", lambda: _core.lm_forward(ids, h0, p, b"tanh")),
        ("nonlinearity", lambda: _core.rnn_forward(X, h0, lp, None)),
        ("n", lambda: _core.set_num_threads(2**40)),
        ("n", lambda: _core.set_num_threads("4")),
        ("theta", lambda: _core.clip_grad_norm([np.ones(2)], "1")),
        ("grads", lambda: _core.clip_grad_norm(5, 1.0)),
    ]


@pytest.mark.parametrize("case", range(len(binding_cases())))
def test_binding_validation_errors(case):
    name, call = binding_cases()[case]
    with pytest.raises(ValueError, match=name):
        call()


# ----------------------------------------------------------------------------- threads and API
def test_two_models_in_two_threads_match_serial_runs():
    """The kernels release the GIL and share no state: concurrent runs give the serial results exactly."""
    rng = np.random.default_rng(5)
    # big enough (B*T*(H^2 + H*V) > 16e6) that each call also splits its batch over two threads
    models = [fastseq.RNNLM(28, 200, dtype=np.float64, seed=s) for s in (1, 2)]
    data = [(rng.integers(0, 28, (32, 20)), rng.integers(0, 28, (32, 20))) for _ in models]
    threads_before = fastseq.get_num_threads()
    serial = [m.loss_and_grad(X, Y, None) for m, (X, Y) in zip(models, data)]
    results = [[None] * 10 for _ in models]

    def work(i):
        for r in range(10):
            results[i][r] = models[i].loss_and_grad(*data[i], None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fastseq.get_num_threads() == threads_before      # the kernels restored the BLAS thread count
    for i, (loss, g, s) in enumerate(serial):
        for loss2, g2, s2 in results[i]:
            assert loss2 == loss
            np.testing.assert_array_equal(s2, s)
            for k in g:
                np.testing.assert_array_equal(g2[k], g[k])


@pytest.mark.parametrize("pair", [(fastseq.RNN, ref.RNN), (fastseq.RNNLM, ref.RNNLM)], ids=["RNN", "RNNLM"])
def test_reference_builds_the_same_class_on_numpy_ops(pair):
    """fastseq.reference.RNN/RNNLM are fastseq's classes with the NumPy ops as their default."""
    fast, slow = pair
    init = inspect.signature(fast.__init__).parameters
    made = inspect.signature(slow.__init__).parameters
    assert list(made) == list(init)
    assert [p.default for k, p in made.items() if k != "backend"] == \
        [p.default for k, p in init.items() if k != "backend"]
    assert init["backend"].default == "cpp" and made["backend"].default == "numpy"
    assert issubclass(slow, fast) and slow(4, 3).backend == "numpy"
    assert fast(4, 3).backend == "cpp" and fast(4, 3, backend="numpy").backend == "numpy"
    assert slow(4, 3, backend="cpp").backend == "cpp"
    assert fast(4, 3).config == slow(4, 3).config


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_kernel_thread_splits_match_reference(threads, dtype):
    """Explicit splits of the batch (uneven: B=5 over 3 threads) and of generation's columns (H=40 spans
    several packed panels) give the reference's results."""
    rng = np.random.default_rng(6)
    V, H, B, T = 7, 40, 5, 6
    slow = ref.RNNLM(V, H, dtype=dtype)
    randomize(slow, rng)
    p = slow.params
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    h0 = rng.normal(size=(B, H)).astype(dtype)
    for strategy in (Full(), Truncated(2, "sliding"), make_strategy("randomized", 0, T, B, rng)):
        scale, window = strategy.plan(T, B, dtype)
        loss, g, s = _core.lm_loss_and_grad(X, Y, h0, p, "tanh", scale, window, threads=threads)
        loss_r, g_r, s_r = slow.loss_and_grad(X, Y, h0, bptt=strategy)
        assert abs(loss - loss_r) <= RTOL[dtype] * loss_r
        assert_close(s, s_r, dtype, "state")
        for k in g:
            assert_close(g[k], g_r[k], dtype, k)
    logits, _ = _core.lm_forward(X, h0, p, "tanh", threads=threads)
    assert_close(logits, slow(X, h0)[0], dtype, "logits")
    u = rng.random(30)
    for temperature, uniforms in ((0.0, None), (0.7, u)):
        out = _core.lm_generate(np.array([1, 2]), 30, p, "tanh", temperature, 3, uniforms, threads=threads)
        np.testing.assert_array_equal(out, slow.generate([1, 2], 30, temperature=temperature, top_k=3, uniforms=uniforms))
    layer = ref.RNN(4, H, dtype=dtype)
    randomize(layer, rng)
    Xd = rng.normal(size=(T, B, 4)).astype(dtype)
    Hs = _core.rnn_forward(Xd, h0, layer.params, "tanh", threads=threads)
    Hs_r, cache_r = layer.forward(Xd, h0)
    assert_close(Hs, Hs_r, dtype, "Hs")
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    dX, dh0, g = _core.rnn_backward(dHs, Xd, h0, Hs, layer.params, "tanh", None, None, 3, threads=threads)
    dX_r, dh0_r, g_r = layer.backward(dHs, cache_r, bptt=Truncated(3, "sliding"))
    assert_close(dX, dX_r, dtype, "dX")
    assert_close(dh0, dh0_r, dtype, "dh0")
    for k in g:
        assert_close(g[k], g_r[k], dtype, k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H", [1, 3, 17, 33, 65])
def test_odd_sizes_match_reference(H, dtype):
    """Sizes off every tile and vector width: H around the packed panels (16 doubles, 32 floats), B against
    the register tiles (8, 3, 1 rows) and split over two threads (31 = 16 + 15), V = 1 and 2, D = 1 and 17."""
    rng = np.random.default_rng(H)
    T = 5
    for B in (1, 3, 31):
        for V in (1, 2):
            slow = ref.RNNLM(V, H, dtype=dtype)
            randomize(slow, rng)
            p = slow.params
            X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
            h0 = rng.normal(size=(B, H)).astype(dtype)
            for strategy in (Full(), Truncated(2, "sliding"), Truncated(2, "block"),
                             make_strategy("randomized", 0, T, B, rng)):
                scale, window = strategy.plan(T, B, dtype)
                loss_r, g_r, s_r = slow.loss_and_grad(X, Y, h0, bptt=strategy)
                for threads in (1, 2):
                    what = f"B={B} V={V} {strategy!r} threads={threads}"
                    loss, g, s = _core.lm_loss_and_grad(X, Y, h0, p, "tanh", scale, window, threads=threads)
                    assert abs(loss - loss_r) <= RTOL[dtype] * loss_r, what
                    assert_close(s, s_r, dtype, "state " + what)
                    for k in g:
                        assert_close(g[k], g_r[k], dtype, f"{k} {what}")
            logits_r = slow(X, h0)[0]
            for threads in (1, 2):
                assert_close(_core.lm_forward(X, h0, p, "relu", threads=threads)[0],
                             _with_nl(slow, "relu")(X, h0)[0], dtype, f"relu logits B={B} V={V}")
                assert_close(_core.lm_forward(X, h0, p, "tanh", threads=threads)[0], logits_r, dtype,
                             f"logits B={B} V={V}")
            if dtype == np.float64:   # float32 rounding may move a sample across a boundary
                u = rng.random(12)
                for threads in (1, 2):
                    for temperature, top_k, uu in ((0.0, 0, None), (0.8, 0, u), (1.0, 1, u)):
                        np.testing.assert_array_equal(
                            _core.lm_generate(np.array([0, V - 1]), 12, p, "tanh", temperature, top_k, uu,
                                              threads=threads),
                            slow.generate([0, V - 1], 12, temperature, top_k, uu))
            D = 1 if V == 1 else 17
            layer = ref.RNN(D, H, nonlinearity="relu" if B == 3 else "tanh", dtype=dtype)
            randomize(layer, rng)
            Xd = rng.normal(size=(T, B, D)).astype(dtype)
            Hs_r, cache_r = layer.forward(Xd, h0)
            dHs = rng.normal(size=(T, B, H)).astype(dtype)
            dH_T = rng.normal(size=(B, H)).astype(dtype)
            for strategy in (Full(), Truncated(3, "sliding"), Truncated(2, "block")):
                scale, window = strategy.plan(T, B, dtype)
                dX_r, dh0_r, g_r = layer.backward(dHs, cache_r, dH_T=dH_T, bptt=strategy)
                for threads in (1, 2):
                    Hs = _core.rnn_forward(Xd, h0, layer.params, layer.nonlinearity, threads=threads)
                    assert_close(Hs, Hs_r, dtype, f"Hs B={B} D={D}")
                    dX, dh0, g = _core.rnn_backward(dHs, Xd, h0, Hs_r, layer.params, layer.nonlinearity, dH_T,
                                                    scale, window, threads=threads)
                    what = f"B={B} D={D} {strategy!r} threads={threads}"
                    assert_close(dX, dX_r, dtype, "dX " + what)
                    assert_close(dh0, dh0_r, dtype, "dh0 " + what)
                    for k in g:
                        assert_close(g[k], g_r[k], dtype, f"{k} {what}")


def _with_nl(model, nl):
    """A reference LM with the same parameters and another nonlinearity."""
    m = ref.RNNLM(model.vocab_size, model.num_hiddens, nonlinearity=nl, dtype=model.dtype)
    m.params = model.params
    return m


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_large_hidden_paths_match_reference(blas_threads, dtype):
    """H > 256 takes other code paths: BLAS for the output products, generation split over threads."""
    rng = np.random.default_rng(9)
    V, H, B, T = 5, 272, 3, 4
    fast = fastseq.RNNLM(V, H, dtype=dtype)
    randomize(fast, rng, scale=0.1)
    slow = ref.RNNLM(V, H, dtype=dtype)
    slow.load_state_dict(fast.state_dict())
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    for strategy in (Full(), Truncated(2, "sliding")):
        loss, g, s = fast.loss_and_grad(X, Y, None, bptt=strategy)
        loss_r, g_r, s_r = slow.loss_and_grad(X, Y, None, bptt=strategy)
        assert abs(loss - loss_r) <= RTOL[dtype] * loss_r
        assert_close(s, s_r, dtype, "state")
        for k in g:
            assert_close(g[k], g_r[k], dtype, k)
    assert_close(fast(X, None)[0], slow(X, None)[0], dtype, "logits")
    u = rng.random(40)
    np.testing.assert_array_equal(fast.generate([1, 2], 40, temperature=1.0, uniforms=u),
                                  slow.generate([1, 2], 40, temperature=1.0, uniforms=u))
    np.testing.assert_array_equal(fast.generate([3], 40), slow.generate([3], 40))


def test_float32_tanh_is_accurate_over_its_whole_range():
    """The float32 kernels use their own vectorised tanh (exp-based, Taylor near 0): a layer with
    W_xh = 1, W_hh = 0 exposes it directly; it must stay within 4 float32 ulps of the exact value."""
    m = fastseq.RNN(1, 1, dtype=np.float32)
    m.params["W_xh"][:] = 1
    m.params["W_hh"][:] = 0
    x = np.concatenate([np.linspace(-20, 20, 40001), np.geomspace(1e-30, 1, 3001), -np.geomspace(1e-30, 1, 3001),
                        [0.0, 0.19999, 0.2, 0.20001, 9.0, -9.0]]).astype(np.float32)
    h, _ = m.forward(x.reshape(-1, 1, 1))
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    err = np.abs(h.ravel().astype(np.float64) - exact) / ulp
    assert err.max() <= 4, f"max error {err.max():.1f} ulp at x = {x[err.argmax()]}"
    assert np.all(np.abs(h) <= 1)


_ISA_CHECK = r"""
import numpy as np, fastseq
from fastseq import reference as ref
from fastseq.bptt import Truncated
rng = np.random.default_rng(0)
for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
    for V, H, B, T in ((5, 37, 7, 4), (3, 300, 2, 3)):
        fast = fastseq.RNNLM(V, H, dtype=dtype)
        fast.load_state_dict({k: rng.normal(0, 0.3, v.shape) for k, v in fast.params.items()})
        slow = ref.RNNLM(V, H, dtype=dtype)
        slow.load_state_dict(fast.state_dict())
        X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
        for bptt in (None, Truncated(2, "sliding")):
            a, b = fast.loss_and_grad(X, Y, None, bptt=bptt), slow.loss_and_grad(X, Y, None, bptt=bptt)
            assert abs(a[0] - b[0]) <= tol * b[0], (a[0], b[0])
            for k in a[1]:
                assert np.max(np.abs(a[1][k] - b[1][k])) <= tol * np.max(np.abs(b[1][k])), k
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_lower_instruction_set_tiles_match_reference(isa):
    """The GEMM tiles for AVX2 and for baseline x86-64 (picked on CPUs without AVX-512) give the
    reference's results; FASTSEQ_ISA forces the lower level on this machine."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, FASTSEQ_ISA=isa)
    r = subprocess.run([sys.executable, "-c", _ISA_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_thread_count_set_while_another_thread_runs_kernels_is_kept():
    """A kernel lowers OpenBLAS to one thread while it runs its own slices; a count the user sets
    meanwhile must be what get_num_threads reports, and must not be undone when the kernel ends."""
    m = fastseq.RNNLM(28, 64, dtype=np.float32)
    ids = np.random.default_rng(0).integers(0, 28, (32, 35))
    h0 = np.zeros((32, 64), np.float32)
    old = fastseq.get_num_threads()
    stop = threading.Event()

    def work():
        while not stop.is_set():
            _core.lm_loss_and_grad(ids, ids, h0, m.params, "tanh", None, 0, 2)   # two slices

    t = threading.Thread(target=work)
    t.start()
    seen = []
    try:
        for i in range(101):
            n = 3 if i % 2 else 2
            fastseq.set_num_threads(n)
            time.sleep(0.001)           # the other thread's kernels start and end meanwhile
            seen.append((n, fastseq.get_num_threads()))
    finally:
        stop.set()
        t.join()
    try:
        assert [s for s in seen if s[0] != s[1]] == []
        assert fastseq.get_num_threads() == 2          # the last count set
    finally:
        fastseq.set_num_threads(old)


_THREAD_LIMIT_SCRIPT = r"""
import os, resource, sys, threading
import numpy as np, numpy.testing, fastseq   # imported before dropping to a user that cannot read them
from fastseq import _core
rng = np.random.default_rng(0)
m = fastseq.RNNLM(28, 64, dtype=np.float64, seed=1)
X, Y = rng.integers(0, 28, (12, 7)), rng.integers(0, 28, (12, 7))
h0 = np.zeros((12, 64))
L = fastseq.RNN(5, 64, dtype=np.float64, seed=1)
Xd = rng.normal(size=(7, 12, 5))
want = _core.lm_loss_and_grad(X, Y, h0, m.params, "tanh", None, 0, 1)
want_h = _core.rnn_forward(Xd, h0, L.params, "tanh", 1)
want_g = _core.lm_generate(np.array([1, 2]), 6, m.params, "tanh", 0.0, 0, None, 1)
_core.lm_loss_and_grad(X, Y, h0, m.params, "tanh", None, 0, 2)   # the pool now belongs to this process
pid = os.fork()
if pid == 0:                    # the child runs without the pool: fresh threads per call
    fastseq.set_num_threads(1)  # OpenBLAS itself starts no threads here
    os.setgid(65534)
    os.setuid(65534)            # RLIMIT_NPROC binds an unprivileged user only
    # the user may own tasks elsewhere on the machine: find the soft limit that
    # leaves room for exactly one more thread
    ev = threading.Event()

    def can_start():
        t = threading.Thread(target=ev.wait)
        try:
            t.start()
        except RuntimeError:
            return None
        return t

    for lim in range(2, 10000):
        resource.setrlimit(resource.RLIMIT_NPROC, (lim, 10000))
        a = can_start()
        if a is not None:
            break
    b = can_start()
    if b is not None:
        os._exit(3)             # the limit did not bind: the test could not fail
    ev.set()
    a.join()
    for threads in (3, 4):      # one thread starts, the next is refused
        got = _core.lm_loss_and_grad(X, Y, h0, m.params, "tanh", None, 0, threads)
        assert abs(got[0] - want[0]) <= 1e-10 * abs(want[0]), (got[0], want[0])
        for k in want[1]:
            np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-10, atol=1e-14)
        np.testing.assert_array_equal(got[2], want[2])
        np.testing.assert_array_equal(_core.rnn_forward(Xd, h0, L.params, "tanh", threads), want_h)
        np.testing.assert_array_equal(_core.lm_generate(np.array([1, 2]), 6, m.params, "tanh", 0.0, 0, None,
                                                        threads), want_g)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0,
                    reason="needs fork and root (to drop to an unprivileged user for RLIMIT_NPROC)")
def test_a_refused_thread_is_run_by_the_caller_not_fatal():
    """When the system refuses a thread (thread limit) after others started, the call still
    completes with the right result instead of std::terminate on joinable threads."""
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", _THREAD_LIMIT_SCRIPT], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])


_EXIT_SCRIPT = r"""
import atexit, sys, threading, time
import numpy as np

def late_hook():                 # runs after fastseq's own exit hook (registered earlier: LIFO)
    import fastseq
    assert fastseq.RNNLM(5, 8).generate([1], 3).shape == (3,)
    print("late hook ran", flush=True)

atexit.register(late_hook)
import fastseq
from fastseq import _core
m = fastseq.RNNLM(28, 128, dtype=np.float32)
ids = np.random.default_rng(0).integers(0, 28, (32, 35))
h0 = np.zeros((32, 128), np.float32)

def work(i):
    while True:
        if i % 2:
            m.generate([1], 500)
        else:
            _core.lm_loss_and_grad(ids, ids, h0, m.params, "tanh", None, 0, 2)

for i in range(4):
    threading.Thread(target=work, args=(i,), daemon=True).start()
time.sleep(0.05)
"""


def test_interpreter_exit_with_daemon_threads_inside_kernels():
    """Python ends daemon threads that take the GIL back during finalization (pthread_exit); out of the
    GIL-release guard's destructor that was std::terminate, so the process aborted at exit."""
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
        assert "late hook ran" in r.stdout


_FORK_SCRIPT = r"""
import ctypes, os, sys, threading
import numpy as np, scipy_openblas32, fastseq
from fastseq import _core
lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(),
                               next(f for f in os.listdir(scipy_openblas32.get_lib_dir()) if ".so" in f)))
m = fastseq.RNNLM(28, 64, dtype=np.float32)
ids = np.random.default_rng(0).integers(0, 28, (32, 35))
h0 = np.zeros((32, 64), np.float32)
fastseq.set_num_threads(2)
stop = threading.Event()

def work():
    while not stop.is_set():
        _core.lm_loss_and_grad(ids, ids, h0, m.params, "tanh", None, 0, 2)   # BLAS lowered to 1 meanwhile

t = threading.Thread(target=work)
t.start()
bad = 0
for i in range(20):
    pid = os.fork()
    if pid == 0:
        _core.lm_loss_and_grad(ids, ids, h0, m.params, "tanh", None, 0, 2)  # its end restores the count
        ok = lib.scipy_openblas_get_num_threads() == 2 and fastseq.get_num_threads() == 2
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    bad += os.waitstatus_to_exitcode(status) != 0
stop.set()
t.join()
sys.exit(min(bad, 100))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_while_another_thread_runs_a_kernel_keeps_the_thread_count():
    """A child forked while a kernel (in another thread) had OpenBLAS at 1 thread must get the user's count
    back; it inherited the kernel's reference without the thread that would release it."""
    r = subprocess.run([sys.executable, "-c", _FORK_SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (f"{r.returncode} of 20 children kept 1 BLAS thread", r.stderr[-2000:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_params_of_a_dtype_with_metadata_are_that_type(dtype):
    """np.dtype(float32, metadata=...) is float32 (==, the same memory) but another descriptor object:
    the model computes with it as with the plain type (it said 'params['W_hh']: expected dtype float32
    or float64, got float32')."""
    m = fastseq.RNNLM(10, 8, seed=0, dtype=dtype)
    X = np.random.default_rng(0).integers(0, 10, (3, 5))
    want, wgrads, _ = m.loss_and_grad(X, X, m.begin_state(3))
    meta = np.dtype(dtype, metadata={"unit": "m"})
    for k in m.params:
        m.params[k] = m.params[k].astype(meta)
    assert m.params["W_hh"].dtype.metadata
    got, grads, _ = m.loss_and_grad(X, X, m.begin_state(3))
    assert got == want                               # the same kernel as the plain type's, so the same bits
    for k in wgrads:
        np.testing.assert_array_equal(grads[k], wgrads[k], err_msg=k)
    ref = fastseq.RNNLM(10, 8, seed=0, dtype=dtype, backend="numpy")
    assert got == pytest.approx(ref.loss_and_grad(X, X, ref.begin_state(3))[0], rel=1e-5)
