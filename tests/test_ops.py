"""Parity over the ops: every model call gives the same results on the C++ and the NumPy ops.

Each ops is held against an oracle written here, not against itself: naive
loops for the forward passes, generation and clipping, and PyTorch's autograd
(float64) for every gradient under every BPTT plan (skipped without torch; the
direct C++-against-NumPy comparisons below run always). Tolerance: relative to
the largest entry, 1e-10 in float64 and 1e-4 in float32.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size.
"""
import inspect
import itertools
import zlib

import numpy as np
import pytest

import fastseq
from fastseq import reference
from fastseq.bptt import Full, Randomized, Truncated
from fastseq.errors import ArgumentError
from fastseq.ops import OPS_NAMES, CppOps, NumpyOps, get_ops
from fastseq.rnn import bptt_plan

RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}
DTYPES = [np.float64, np.float32]
STRATEGIES = ["full", "block", "sliding", "randomized"]
GRAD_CASES = pytest.mark.parametrize("backend, dtype, nl, kind",
                                     list(itertools.product(OPS_NAMES, DTYPES, ["tanh", "relu"], STRATEGIES)))


def seed_of(*case):
    """A seed per case, the same in every run (hash() of a str is not)."""
    return zlib.crc32(repr(case).encode())


def assert_close(a, b, dtype, what):
    """max |a - b| <= rtol * max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = max(float(np.max(np.abs(b))), 1e-30)
    err = float(np.max(np.abs(a - b)))
    assert err <= RTOL[np.dtype(dtype)] * scale, f"{what}: max abs error {err:.3e} vs scale {scale:.3e}"


def strategy(kind, T, B, rng, tau=3):
    if kind == "full":
        return Full()
    if kind in ("block", "sliding"):
        return Truncated(tau, mode=kind)
    return Randomized(xi=np.where(rng.random((T, B)) < 0.6, 1 / 0.6, 0.0))   # one draw for every ops


def randomized(model, rng, scale=0.5):
    """Weights large enough that every term matters (the init's 0.01 hides errors)."""
    model.load_state_dict({k: rng.normal(0, scale, v.shape) for k, v in model.params.items()})
    return model


def phi(z, nl):
    return np.tanh(z) if nl == "tanh" else np.maximum(z, 0.0)


# ----------------------------------------------------------------------------- oracles
def naive_states(A, h0, W_hh, nl):
    """H_t = phi(A_t + H_{t-1} W_hh), one sequence and one step at a time, float64."""
    T, B, H = A.shape
    Hs = np.zeros((T, B, H))
    for b in range(B):
        h = h0[b].astype(np.float64)
        for t in range(T):
            h = phi(A[t, b] + h @ W_hh, nl)
            Hs[t, b] = h
    return Hs


def f64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def torch_grads(params, nl, plan, inputs, terms):
    """Gradients by PyTorch autograd in float64 under a BPTT plan.

    inputs(p) -> (A (T, B, H) tensor, h0 tensor); terms(t, H_t, p) -> the scalar
    loss term of step t. scale: each step's message to H_{t-1} is multiplied by
    scale[t] (value unchanged, gradient scaled); window tau: loss term t sees
    only steps t-tau+1..t (H_{t-tau} detached; h0 kept when the window reaches it).
    """
    torch = pytest.importorskip("torch")
    scale, window = plan
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    act = torch.tanh if nl == "tanh" else torch.relu
    A, h0 = inputs(p)
    T = A.shape[0]

    def run(h, t0, t1, sc):
        out = []
        for t in range(t0, t1):
            if sc is not None:
                s = torch.tensor(sc[t], dtype=torch.float64)[:, None]
                h = h.detach() + s * (h - h.detach())
            h = act(A[t] + h @ p["W_hh"])
            out.append(h)
        return out

    if window == 0:
        Hs = run(h0, 0, T, scale)
        loss = sum(terms(t, Hs[t], p) for t in range(T))
    else:
        loss = 0
        Hfull = run(h0, 0, T, None)
        for t in range(T):
            s = t - window + 1
            start = h0 if s <= 0 else Hfull[s - 1].detach()
            loss = loss + terms(t, run(start, max(s, 0), t + 1, None)[-1], p)
    loss.backward()
    return {k: v.grad.numpy() for k, v in p.items()}


# ----------------------------------------------------------------------------- the same calls
def public_calls(cls):
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


def test_both_ops_expose_the_same_calls_with_the_same_signatures():
    ref, fast = public_calls(NumpyOps), public_calls(CppOps)
    assert set(ref) == set(fast)
    for name in ref:
        assert inspect.signature(fast[name]) == inspect.signature(ref[name]), name
    # the hot calls are the C++ ops' own; nothing else is overridden
    own = {n for n in vars(CppOps) if not n.startswith("_")}
    assert own == {"name", "rnn_forward", "rnn_backward", "lm_forward", "lm_loss_and_grad", "lm_generate",
                   "clip_grad_norm"}


def test_get_ops_names_and_default():
    assert OPS_NAMES == ("cpp", "numpy")
    assert get_ops().name == "cpp" and get_ops(None) is get_ops("cpp")
    assert isinstance(get_ops("numpy"), NumpyOps) and not isinstance(get_ops("numpy"), CppOps)
    ops = NumpyOps()
    assert get_ops(ops) is ops
    with pytest.raises(ArgumentError, match="backend: expected one of 'cpp', 'numpy', got 'gpu'"):
        get_ops("gpu")


@pytest.mark.parametrize("cls, sizes", [(fastseq.RNN, (4, 3)), (fastseq.RNNLM, (5, 3))], ids=["RNN", "RNNLM"])
def test_one_class_per_model_holding_its_ops(cls, sizes):
    for backend in OPS_NAMES:
        m = cls(*sizes, backend=backend)
        assert type(m) is cls and m.backend == backend and m.ops is get_ops(backend)
    assert cls(*sizes).backend == "cpp"
    ref = getattr(reference, cls.__name__)(*sizes)
    assert isinstance(ref, cls) and ref.backend == "numpy"
    assert set(vars(type(ref))) <= {"__init__", "__doc__", "__module__", "__qualname__"}   # only the default differs
    # the same weights for a seed whatever the ops, and the reference's documented draw
    a, b = cls(*sizes, seed=3, backend="cpp"), cls(*sizes, seed=3, backend="numpy")
    rng = np.random.default_rng(3)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        if a.params[k].ndim == 2:
            np.testing.assert_array_equal(a.params[k], rng.normal(0, 0.01, a.params[k].shape).astype(np.float32))
        else:
            assert not a.params[k].any()


# ----------------------------------------------------------------------------- the layer
@GRAD_CASES
def test_layer_forward_and_backward_match_the_oracle(backend, dtype, nl, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed_of(backend, kind, nl))
    T, B, D, H = 7, 3, 4, 5
    m = randomized(fastseq.RNN(D, H, nonlinearity=nl, dtype=dtype, backend=backend), rng)
    X = rng.normal(size=(T, B, D)).astype(dtype)
    h0 = rng.normal(size=(B, H)).astype(dtype)
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    dH_T = rng.normal(size=(B, H)).astype(dtype)
    bptt = strategy(kind, T, B, rng)
    Hs, cache = m.forward(X, h0)
    p = f64(m.params)
    assert_close(Hs, naive_states(X.astype(np.float64) @ p["W_xh"] + p["b_h"], h0, p["W_hh"], nl), dtype, "Hs")
    dX, dh0, grads = m.backward(dHs, cache, dH_T=dH_T, bptt=bptt)

    tX = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    th0 = torch.tensor(h0, dtype=torch.float64, requires_grad=True)
    g = {"dHs": torch.tensor(dHs, dtype=torch.float64), "dH_T": torch.tensor(dH_T, dtype=torch.float64)}

    def terms(t, H_t, q):
        return (H_t * g["dHs"][t]).sum() + ((H_t * g["dH_T"]).sum() if t == T - 1 else 0)

    want = torch_grads(p, nl, bptt_plan(bptt, T, B, np.float64),
                          lambda q: (tX @ q["W_xh"] + q["b_h"], th0), terms)
    for k in grads:
        assert_close(grads[k], want[k], dtype, f"grads[{k}]")
    assert_close(dX, tX.grad.numpy(), dtype, "dX")
    assert_close(dh0, th0.grad.numpy(), dtype, "dh0")


# ----------------------------------------------------------------------------- the language model
def lm_case(backend, dtype, nl, seed, V=7, H=5, B=3, T=6):
    rng = np.random.default_rng(seed)
    m = randomized(fastseq.RNNLM(V, H, nonlinearity=nl, dtype=dtype, backend=backend), rng)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = rng.normal(0, 0.5, (B, H)).astype(dtype)
    return m, X, Y, state, rng


def naive_logits(p, X, state, nl):
    A = p["W_xh"][X.T] + p["b_h"]                            # (T, B, H)
    Hs = naive_states(A, state, p["W_hh"], nl)
    return (Hs @ p["W_hq"] + p["b_q"]).transpose(1, 0, 2), Hs[-1]


def naive_loss(logits, Y):
    B, T, _ = logits.shape
    total = 0.0
    for b in range(B):
        for t in range(T):
            o = logits[b, t] - logits[b, t].max()
            total -= o[Y[b, t]] - np.log(np.exp(o).sum())
    return total / (B * T)


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_lm_logits_and_loss_match_the_oracle(backend, dtype, nl):
    m, X, Y, state, _ = lm_case(backend, dtype, nl, seed=11)
    logits, new_state = m(X, state)
    want_logits, want_state = naive_logits(f64(m.params), X, state, nl)
    assert logits.dtype == dtype and new_state.dtype == dtype
    assert_close(logits, want_logits, dtype, "logits")
    assert_close(new_state, want_state, dtype, "state")
    loss, _, s2 = m.loss_and_grad(X, Y, state)
    assert isinstance(loss, float)
    assert_close(loss, naive_loss(want_logits, Y), dtype, "loss")
    assert_close(s2, want_state, dtype, "loss_and_grad state")


@GRAD_CASES
def test_lm_grads_match_the_oracle(backend, dtype, nl, kind):
    torch = pytest.importorskip("torch")
    m, X, Y, state, rng = lm_case(backend, dtype, nl, seed=seed_of(backend, nl, kind))
    B, T = X.shape
    bptt = strategy(kind, T, B, rng)
    _, grads, _ = m.loss_and_grad(X, Y, state, bptt=bptt)
    tY = torch.tensor(Y)

    def terms(t, H_t, q):
        O = H_t @ q["W_hq"] + q["b_q"]
        return torch.nn.functional.cross_entropy(O, tY[:, t], reduction="sum") / (B * T)

    th0 = torch.tensor(state, dtype=torch.float64)
    want = torch_grads(f64(m.params), nl, bptt_plan(bptt, T, B, np.float64),
                          lambda q: (q["W_xh"][torch.tensor(X.T)] + q["b_h"], th0), terms)
    for k in grads:
        assert grads[k].dtype == dtype
        assert_close(grads[k], want[k], dtype, f"grads[{k}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", STRATEGIES)
def test_cpp_and_numpy_ops_agree_on_every_call(dtype, kind):
    """Without an oracle: the two ops on the same model and inputs, every call."""
    m, X, Y, state, rng = lm_case("cpp", dtype, "tanh", seed=5, V=11, H=9, B=4, T=8)
    slow = fastseq.RNNLM(11, 9, dtype=dtype, backend="numpy")
    slow.load_state_dict(m.state_dict())
    bptt = strategy(kind, 8, 4, rng)
    for a, b, what in zip(m(X, state), slow(X, state), ("logits", "state")):
        assert_close(a, b, dtype, what)
    (la, ga, sa), (lb, gb, sb) = m.loss_and_grad(X, Y, state, bptt), slow.loss_and_grad(X, Y, state, bptt)
    assert_close(la, lb, dtype, "loss")
    assert_close(sa, sb, dtype, "state")
    for k in ga:
        assert_close(ga[k], gb[k], dtype, f"grads[{k}]")
    layer = fastseq.RNN(11, 9, dtype=dtype, backend="cpp")
    layer.load_state_dict({k: m.params[k] for k in layer.params})
    slow_layer = reference.RNN(11, 9, dtype=dtype)
    slow_layer.load_state_dict(layer.state_dict())
    Xf = rng.normal(size=(8, 4, 11)).astype(dtype)
    dHs = rng.normal(size=(8, 4, 9)).astype(dtype)
    (Ha, ca), (Hb, cb) = layer.forward(Xf, state), slow_layer.forward(Xf, state)
    assert_close(Ha, Hb, dtype, "Hs")
    for a, b, what in zip(layer.backward(dHs, ca, bptt=bptt), slow_layer.backward(dHs, cb, bptt=bptt),
                          ("dX", "dh0", "grads")):
        if what == "grads":
            for k in a:
                assert_close(a[k], b[k], dtype, f"layer grads[{k}]")
        else:
            assert_close(a, b, dtype, what)


# ----------------------------------------------------------------------------- generation
def naive_generate(p, prefix, n, nl, temperature, top_k, uniforms, bias=None):
    """The sampling rule written out: softmax with temperature over the top_k, inverse CDF at u."""
    b_q = p["b_q"] + (0 if bias is None else bias)
    h = np.zeros(p["W_hh"].shape[0])
    out = []
    tok = None
    for i in range(len(prefix) + n - 1):
        tok = prefix[i] if i < len(prefix) else out[-1]
        h = phi(p["W_xh"][tok] + p["b_h"] + h @ p["W_hh"], nl)
        if i < len(prefix) - 1:
            continue
        logits = h @ p["W_hq"] + b_q
        if temperature == 0:
            out.append(int(np.argmax(logits)))
            continue
        order = sorted(range(len(logits)), key=lambda j: (-logits[j], j))
        kept = set(order[:top_k]) if 0 < top_k < len(logits) else set(order)
        w = [np.exp((logits[j] - logits.max()) / temperature) if j in kept else 0.0 for j in range(len(logits))]
        c = np.cumsum(w)
        out.append(min(int(np.sum(c <= uniforms[len(out)] * c[-1])), len(logits) - 1))
    return np.array(out[:n], dtype=np.int32)


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("temperature, top_k", [(0.0, 0), (1.0, 0), (0.7, 3), (2.5, 1)])
def test_generation_matches_the_oracle(backend, temperature, top_k):
    rng = np.random.default_rng(8)
    m = randomized(fastseq.RNNLM(9, 6, dtype=np.float64, backend=backend), rng, scale=0.8)
    u = rng.random(25)
    got = m.generate([1, 4, 2], 25, temperature=temperature, top_k=top_k, uniforms=u)
    want = naive_generate(m.params, [1, 4, 2], 25, "tanh", temperature, top_k, u)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("temperature, top_k", [(0.0, 0), (1.0, 0), (1000.0, 0), (1.0, 2)])
def test_logit_bias_minus_inf_forbids_a_token(backend, temperature, top_k):
    """Token 0 (say <unk>) would win every greedy step and most draws; -inf forbids it, with either rule."""
    V, n = 8, 200
    rng = np.random.default_rng(2)
    m = randomized(fastseq.RNNLM(V, 6, dtype=np.float64, backend=backend), rng)
    m.params["b_q"][0] = 5.0
    u = rng.random(n)
    plain = m.generate([3], n, temperature=temperature, top_k=top_k, uniforms=u)
    assert (plain == 0).sum() > (n // 4 if temperature < 1000 else 0)
    bias = np.zeros(V)
    bias[0] = -np.inf
    bias[5] = 0.25
    got = m.generate([3], n, temperature=temperature, top_k=top_k, uniforms=u, logit_bias=bias)
    assert not (got == 0).any()
    np.testing.assert_array_equal(got, naive_generate(m.params, [3], n, "tanh", temperature, top_k, u, bias))
    np.testing.assert_array_equal(m.params["b_q"][0], 5.0)    # the model itself is unchanged


@pytest.mark.parametrize("dtype", DTYPES)
def test_logit_bias_same_tokens_on_both_ops(dtype):
    rng = np.random.default_rng(4)
    fast = randomized(fastseq.RNNLM(12, 7, dtype=dtype), rng)
    slow = reference.RNNLM(12, 7, dtype=dtype)
    slow.load_state_dict(fast.state_dict())
    bias = rng.normal(0, 1, 12)
    bias[[0, 7]] = -np.inf
    u = rng.random(300)
    for temperature, top_k in ((0.0, 0), (0.9, 0), (0.9, 4)):
        a = fast.generate([1, 2], 300, temperature=temperature, top_k=top_k, uniforms=u, logit_bias=bias)
        b = slow.generate([1, 2], 300, temperature=temperature, top_k=top_k, uniforms=u, logit_bias=bias)
        np.testing.assert_array_equal(a, b)
        assert not np.isin(a, [0, 7]).any()


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("bias, match", [
    (np.zeros(4), r"logit_bias: expected float64 of shape \(5,\)"),
    (np.zeros(5, dtype=np.float32), r"logit_bias: expected float64"),
    (np.array([0, np.nan, 0, 0, 0.0]), "logit_bias: expected finite numbers or -inf"),
    (np.array([0, np.inf, 0, 0, 0.0]), "logit_bias: expected finite numbers or -inf"),
    (np.full(5, -np.inf), "logit_bias: every token is forbidden"),
    (np.array([1e300, 0, 0, 0, 0.0]), "logit_bias: too large for the model's float32"),
])
def test_bad_logit_bias_is_refused(backend, bias, match):
    with pytest.raises(ArgumentError, match=match):
        fastseq.RNNLM(5, 3, backend=backend).generate([1], 3, logit_bias=bias)


# ----------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", [0.1, 1.0, 1e6])
def test_clipping_matches_the_oracle(backend, dtype, theta):
    rng = np.random.default_rng(6)
    grads = {k: rng.normal(0, 1, s).astype(dtype) for k, s in (("W", (5, 4)), ("b", (4,)), ("V", (3, 7)))}
    before = {k: v.astype(np.float64) for k, v in grads.items()}
    want_norm = np.sqrt(sum(float((v ** 2).sum()) for v in before.values()))
    norm = get_ops(backend).clip_grad_norm(grads, theta)
    assert norm == pytest.approx(want_norm, rel=1e-12)
    f = min(1.0, theta / want_norm)
    for k in grads:
        assert grads[k].dtype == dtype
        assert_close(grads[k], before[k] * f, dtype, k)


@pytest.mark.parametrize("backend", OPS_NAMES)
def test_clipping_errors_are_shared(backend):
    ops = get_ops(backend)
    with pytest.raises(ArgumentError, match="theta: expected a finite number > 0, got 0"):
        ops.clip_grad_norm([np.ones(3)], 0)
    with pytest.raises(ArgumentError, match=r"grads\[1\]: expected a NumPy array"):
        ops.clip_grad_norm([np.ones(3), [1.0]], 1.0)
    g = np.ones(4)
    with pytest.raises(ArgumentError, match=r"grads\[1\]: shares memory with grads\[0\]"):
        ops.clip_grad_norm([g, g[1:]], 1.0)


# ----------------------------------------------------------------------------- the models' contract, on both ops
class BothPlan:
    """A strategy whose plan breaks the contract: a scale and a window at once."""

    def plan(self, T, B, dtype=np.float64):
        return np.ones((T, B), dtype=dtype), 2


@pytest.mark.parametrize("backend", OPS_NAMES)
def test_scale_and_window_together_are_refused_once_for_every_call(backend):
    lm = fastseq.RNNLM(5, 4, backend=backend)
    X = np.zeros((2, 3), dtype=np.int64)
    layer = fastseq.RNN(2, 4, backend=backend)
    Hs, cache = layer.forward(np.zeros((3, 2, 2), dtype=np.float32))
    calls = (lambda: lm.loss_and_grad(X, X, None, bptt=BothPlan()),
             lambda: lm.state_grads(X, X, bptt=BothPlan()),
             lambda: layer.backward(np.zeros_like(Hs), cache, bptt=BothPlan()))
    for call in calls:
        with pytest.raises(ArgumentError, match="bptt: a plan has either a scale or a sliding window, not both"):
            call()


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("cls, sizes", [(fastseq.RNN, (3, 4)), (fastseq.RNNLM, (5, 4))], ids=["RNN", "RNNLM"])
def test_from_config_rebuilds_the_model(backend, cls, sizes):
    m = cls(*sizes, nonlinearity="relu", dtype=np.float64)
    again = cls.from_config(m.config, backend=backend)
    assert type(again) is cls and again.config == m.config and again.backend == backend
    assert cls.from_config(m.config).backend == "cpp"
    assert getattr(reference, cls.__name__).from_config(m.config).backend == "numpy"
    with pytest.raises(ArgumentError, match="config: expected a dict, got list"):
        cls.from_config([1, 2])
    with pytest.raises(ArgumentError, match="config: unexpected key 'cell'"):
        cls.from_config(dict(m.config, cell="gru"))
    first = next(iter(m.config))
    with pytest.raises(ArgumentError, match=f"config: '{first}' is missing"):
        cls.from_config({k: v for k, v in m.config.items() if k != first})
    with pytest.raises(ArgumentError, match="dtype: expected float32 or float64"):
        cls.from_config(dict(m.config, dtype="int8"))


@pytest.mark.parametrize("backend", OPS_NAMES)
def test_load_state_dict_refuses_a_value_that_overflows_the_dtype(backend):
    """Issue 12 item 9: 1e300 is finite in float64 and inf in float32; the key is named, nothing is loaded."""
    m = fastseq.RNNLM(5, 4, backend=backend)
    before = m.state_dict()
    d = {k: np.full(v.shape, 0.5) for k, v in before.items()}
    d["W_hq"][1, 2] = 1e300
    with pytest.raises(ArgumentError, match=r"W_hq: 1e\+300 does not fit in the model's float32"):
        m.load_state_dict(d)
    for k in before:
        np.testing.assert_array_equal(m.params[k], before[k])   # refused before any key was copied
    m64 = fastseq.RNNLM(5, 4, dtype=np.float64, backend=backend)
    m64.load_state_dict(d)
    assert m64.params["W_hq"][1, 2] == 1e300


@pytest.mark.parametrize("backend", OPS_NAMES)
def test_load_state_dict_names_what_is_wrong(backend):
    m = fastseq.RNNLM(5, 4, backend=backend)
    good = m.state_dict()
    cases = [
        ({k: v for k, v in good.items() if k != "b_h"}, "b_h: missing from the state_dict"),
        (dict(good, extra=np.zeros(2)), "extra: unexpected key in the state_dict"),
        (dict(good, W_hh=np.zeros((4, 5))), r"W_hh: expected shape \(4, 4\), got \(4, 5\)"),
        (dict(good, b_q=good["b_q"].astype(complex)), "b_q: expected real numbers, got dtype complex128"),
        (dict(good, b_q=np.full(5, np.nan)), "b_q: expected finite numbers"),
        ([1, 2], "state_dict: expected a dict of arrays, got list"),
    ]
    for d, match in cases:
        with pytest.raises(ArgumentError, match=match):
            m.load_state_dict(d)
    m.load_state_dict({k: np.ones(v.shape, dtype=np.int64) for k, v in good.items()})   # integers convert
    assert m.params["W_hq"].dtype == np.float32 and (m.params["W_hq"] == 1).all()


def _memory():
    import os
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("make, name", [
    (lambda H, b: fastseq.RNN(3, H, backend=b), "hidden_size"),
    (lambda H, b: fastseq.RNNLM(28, H, backend=b), "num_hiddens"),
    (lambda H, b: fastseq.RNNLM(H * H, 2, backend=b), "vocab_size"),
    (lambda H, b: reference.RNNLM(30, H), "num_hiddens"),
])
def test_sizes_beyond_the_machines_memory_are_refused_before_allocating(backend, make, name):
    """Issue 12 item 13: RNN(3, 50000) allocated 28 GB in NumPy before the C++ side refused it."""
    import tracemalloc
    H = int((2 * _memory() / 4) ** 0.5) + 1         # W_hh (H, H) in float32 alone: twice this machine's memory
    tracemalloc.start()
    try:
        with pytest.raises(ArgumentError, match=rf"^{name}: \d+ makes parameters of [\d.]+ GiB .* more than "
                                                r"this machine's memory"):
            make(H, backend)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # a model that fits is built as before
    assert fastseq.RNN(3, 64, backend=backend).params["W_hh"].shape == (64, 64)


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("term", [None, 0, 3, -1])
def test_state_grads_are_dL_dH_by_autograd(backend, term):
    """state_grads: dL/dH_t of the step's loss (or of one loss term), the same on either ops."""
    torch = pytest.importorskip("torch")
    m, X, Y, state, _ = lm_case(backend, np.float64, "tanh", seed=21)
    B, T = X.shape
    dH = m.state_grads(X, Y, state, term=term)
    assert dH.shape == (T, B, m.num_hiddens) and dH.dtype == np.float64
    p = {k: torch.tensor(v, requires_grad=True) for k, v in m.params.items()}
    h = torch.tensor(state)
    Hs, loss = [], 0
    for t in range(T):
        h = torch.tanh(p["W_xh"][torch.tensor(X[:, t])] + p["b_h"] + h @ p["W_hh"])
        h.retain_grad()
        Hs.append(h)
        if term is None or t == term % T:
            O = h @ p["W_hq"] + p["b_q"]
            loss = loss + torch.nn.functional.cross_entropy(O, torch.tensor(Y[:, t]), reduction="sum") / (B * T)
    loss.backward()
    want = np.stack([H_t.grad.numpy() if H_t.grad is not None else np.zeros((B, m.num_hiddens)) for H_t in Hs])
    assert_close(dH, want, np.float64, "dH")


def test_state_grads_use_the_reference_whatever_the_ops():
    fast = randomized(fastseq.RNNLM(6, 5, dtype=np.float32), np.random.default_rng(1))
    slow = reference.RNNLM(6, 5, dtype=np.float32)
    slow.load_state_dict(fast.state_dict())
    X = np.random.default_rng(2).integers(0, 6, (3, 7))
    bptt = Truncated(2, mode="sliding")
    np.testing.assert_array_equal(fast.state_grads(X, X, bptt=bptt), slow.state_grads(X, X, bptt=bptt))
    with pytest.raises(ArgumentError, match=r"term: expected an integer in \[-7, 6\], got 7"):
        fast.state_grads(X, X, term=7)
