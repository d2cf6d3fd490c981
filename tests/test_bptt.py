"""BPTT strategies on the reference: truncated gradients against brute-force constructions,
randomized truncation against Full (exactly, and in expectation), and plan validation.

Truncated gradients are not derivatives of the loss, so they are rebuilt here from
finite differences of pieces of the loss with an entering state held fixed.
Legend: B batch, T steps, D input, H hidden, V vocabulary.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastseq.bptt import Full, Randomized, Truncated, from_spec
from fastseq.errors import ArgumentError
from fastseq.reference.rnn import RNN, RNNLM
from gradcheck import fd_grad

V, H, B, T = 5, 4, 2, 7


def phi(z, nl):
    return np.tanh(z) if nl == "tanh" else np.maximum(z, 0.0)


def make_lm(nl="tanh", seed=0):
    m = RNNLM(V, H, nonlinearity=nl, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed + 50)
    for p in m.params.values():
        p[...] = rng.normal(0, 0.7, p.shape)
    rng = np.random.default_rng(seed + 60)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    h0 = rng.normal(0, 0.5, (B, H))
    return m, X, Y, h0


# ---- an independent LM forward: states from an entering state, and one step's loss term
def lm_states(p, X, h_enter, t0, t1, nl):
    """H_t for t = t0..t1-1 starting from h_enter = H_{t0-1}."""
    h, out = h_enter, {}
    for t in range(t0, t1):
        h = phi(p["W_xh"][X[:, t]] + h @ p["W_hh"] + p["b_h"], nl)
        out[t] = h
    return out


def ce_term(p, Hs_t, Y, t):
    """sum over the batch of -log softmax(O_t)[Y_t], divided by B*T (the term's share of the loss)."""
    O = Hs_t @ p["W_hq"] + p["b_q"]
    O = O - O.max(axis=1, keepdims=True)
    logp = O - np.log(np.exp(O).sum(axis=1, keepdims=True))
    return -logp[np.arange(B), Y[:, t]].sum() / (B * T)


def true_states(m, X, h0, nl):
    Hs = lm_states({k: v.copy() for k, v in m.params.items()}, X, h0, 0, T, nl)
    return [Hs[t] for t in range(T)]


def brute_block(m, X, Y, h0, tau, nl):
    """Sum over blocks of FD gradients of the block's loss, entering state held fixed."""
    Hfix = true_states(m, X, h0, nl)
    total = {k: np.zeros_like(v) for k, v in m.params.items()}
    for s in range(0, T, tau):
        e = min(s + tau, T)
        h_enter = h0 if s == 0 else Hfix[s - 1].copy()

        def block_loss():
            Hs = lm_states(m.params, X, h_enter, s, e, nl)
            return sum(ce_term(m.params, Hs[t], Y, t) for t in range(s, e))

        for k, g in fd_grad(block_loss, m.params).items():
            total[k] += g
    return total


def brute_sliding(m, X, Y, h0, tau, nl):
    """Sum over t of the FD gradient of loss term t through exactly its last tau steps."""
    Hfix = true_states(m, X, h0, nl)
    total = {k: np.zeros_like(v) for k, v in m.params.items()}
    for t in range(T):
        s = max(0, t - tau + 1)
        h_enter = h0 if s == 0 else Hfix[s - 1].copy()

        def term_loss():
            return ce_term(m.params, lm_states(m.params, X, h_enter, s, t + 1, nl)[t], Y, t)

        for k, g in fd_grad(term_loss, m.params).items():
            total[k] += g
    return total


def assert_grads_close(a, b, rtol=1e-6, atol=1e-9):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def grads_differ(a, b):
    return max(np.abs(a[k] - b[k]).max() for k in a) > 1e-4


# ------------------------------------------------------------------ block truncation
@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("tau", [1, 3])
def test_block_truncation_equals_brute_force(tau, nl):
    m, X, Y, h0 = make_lm(nl, seed=tau)
    _, g, _ = m.loss_and_grad(X, Y, h0, bptt=Truncated(tau, mode="block"))
    brute = brute_block(m, X, Y, h0, tau, nl)
    assert_grads_close(g, brute)
    _, full, _ = m.loss_and_grad(X, Y, h0, bptt=Full())
    assert grads_differ(g, full)      # the construction is not trivially Full


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("tau", [1, 2, 4])
def test_sliding_truncation_equals_brute_force(tau, nl):
    m, X, Y, h0 = make_lm(nl, seed=10 + tau)
    _, g, _ = m.loss_and_grad(X, Y, h0, bptt=Truncated(tau, mode="sliding"))
    brute = brute_sliding(m, X, Y, h0, tau, nl)
    assert_grads_close(g, brute)
    _, full, _ = m.loss_and_grad(X, Y, h0, bptt=Full())
    assert grads_differ(g, full)
    if tau > 1:  # sliding differs from block for the same tau
        _, blk, _ = m.loss_and_grad(X, Y, h0, bptt=Truncated(tau, mode="block"))
        assert grads_differ(g, blk)


@pytest.mark.parametrize("mode", ["block", "sliding"])
@pytest.mark.parametrize("tau", [T, T + 5])
def test_truncation_with_tau_at_least_T_is_full(mode, tau):
    m, X, Y, h0 = make_lm(seed=20)
    _, full, _ = m.loss_and_grad(X, Y, h0, bptt=Full())
    _, g, _ = m.loss_and_grad(X, Y, h0, bptt=Truncated(tau, mode=mode))
    assert_grads_close(g, full, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ the layer under the plans
def layer_case(nl, seed):
    D = 3
    layer = RNN(D, H, nonlinearity=nl, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for p in layer.params.values():
        p[...] = rng.normal(0, 0.7, p.shape)
    X, h0 = rng.normal(size=(T, B, D)), rng.normal(size=(B, H))
    G, g_T = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))
    return layer, X, h0, G, g_T


def layer_states(p, X, h_enter, s, e, nl):
    h, out = h_enter, {}
    for t in range(s, e):
        h = phi(X[t] @ p["W_xh"] + h @ p["W_hh"] + p["b_h"], nl)
        out[t] = h
    return out


@pytest.mark.parametrize("nl", ["tanh", "relu"])
@pytest.mark.parametrize("tau", [2, 3])
def test_layer_sliding_truncation_brute_force_with_dX_dh0(tau, nl):
    """Term t of L = sum_t <G_t, H_t> + <g_T, H_{T-1}> back-propagates exactly tau steps."""
    layer, X, h0, G, g_T = layer_case(nl, 30 + tau)
    p = layer.params
    _, cache = layer.forward(X, h0)
    dX, dh0, grads = layer.backward(G, cache, dH_T=g_T, bptt=Truncated(tau, mode="sliding"))
    Hfix = layer_states(p, X, h0, 0, T, nl)
    total = {k: np.zeros_like(v) for k, v in {**p, "X": X, "h0": h0}.items()}
    for t in range(T):
        s = max(0, t - tau + 1)
        h_enter = h0 if s == 0 else Hfix[s - 1].copy()   # held fixed unless it is h0 itself
        w = G[t] + (g_T if t == T - 1 else 0)

        def term():
            return float(np.sum(w * layer_states(p, X, h_enter if s > 0 else h0, s, t + 1, nl)[t]))

        for k, g in fd_grad(term, {**p, "X": X, "h0": h0}).items():
            total[k] += g
    for k in p:
        np.testing.assert_allclose(grads[k], total[k], rtol=1e-6, atol=1e-9, err_msg=k)
    np.testing.assert_allclose(dX, total["X"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dh0, total["h0"], rtol=1e-6, atol=1e-9)
    assert np.abs(dh0).max() > 1e-3   # terms 0..tau-1 do reach h0


@pytest.mark.parametrize("tau", [2, 3])
def test_layer_block_truncation_brute_force_with_dX_dh0(tau):
    layer, X, h0, G, g_T = layer_case("tanh", 40 + tau)
    p = layer.params
    _, cache = layer.forward(X, h0)
    dX, dh0, grads = layer.backward(G, cache, dH_T=g_T, bptt=Truncated(tau))
    Hfix = layer_states(p, X, h0, 0, T, "tanh")
    total = {k: np.zeros_like(v) for k, v in {**p, "X": X, "h0": h0}.items()}
    for s in range(0, T, tau):
        e = min(s + tau, T)
        h_enter = None if s == 0 else Hfix[s - 1].copy()

        def block():
            Hs = layer_states(p, X, h0 if h_enter is None else h_enter, s, e, "tanh")
            return float(sum(np.sum(G[t] * Hs[t]) for t in range(s, e)) + (np.sum(g_T * Hs[T - 1]) if e == T else 0))

        for k, g in fd_grad(block, {**p, "X": X, "h0": h0}).items():
            total[k] += g
    for k in p:
        np.testing.assert_allclose(grads[k], total[k], rtol=1e-6, atol=1e-9, err_msg=k)
    np.testing.assert_allclose(dX, total["X"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dh0, total["h0"], rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ randomized truncation
def test_randomized_with_xi_ones_is_full_and_with_block_zeros_is_block():
    m, X, Y, h0 = make_lm(seed=50)
    _, full, _ = m.loss_and_grad(X, Y, h0, bptt=Full())
    _, g1, _ = m.loss_and_grad(X, Y, h0, bptt=Randomized(xi=np.ones((T, B))))
    assert_grads_close(g1, full, rtol=0, atol=0)
    for tau in (2, 3):
        xi = np.ones((T, B))
        xi[tau::tau] = 0
        _, gb, _ = m.loss_and_grad(X, Y, h0, bptt=Randomized(xi=xi))
        _, blk, _ = m.loss_and_grad(X, Y, h0, bptt=Truncated(tau))
        assert_grads_close(gb, blk, rtol=0, atol=0)
    # a per-sequence xi: cutting only sequence 0 equals block truncation on sequence 0 alone
    xi = np.ones((T, B))
    xi[3::3, 0] = 0
    _, gm, _ = m.loss_and_grad(X, Y, h0, bptt=Randomized(xi=xi))
    _, g0, _ = m.loss_and_grad(X[:1], Y[:1], h0[:1], bptt=Truncated(3))
    _, g1_, _ = m.loss_and_grad(X[1:], Y[1:], h0[1:], bptt=Full())
    assert_grads_close(gm, {k: (g0[k] + g1_[k]) / 2 for k in gm}, rtol=1e-12, atol=1e-15)


def test_randomized_scales_messages_by_xi():
    """With xi = 2 everywhere each backward hop doubles: compare with the explicit sum of paths."""
    layer, X, h0, G, _ = layer_case("tanh", 60)
    Hs, cache = layer.forward(X, h0)
    xi = np.full((T, B), 2.0)
    _, dh0, _ = layer.backward(G, cache, bptt=Randomized(xi=xi))
    # dh0 = sum_t 2^(t+1) * (dL_t/dh0 through the exact Jacobians); build it term by term
    W = layer.params["W_hh"]
    expect = np.zeros_like(h0)
    for t in range(T):
        msg = G[t]
        for s in range(t, -1, -1):
            msg = 2.0 * ((msg * (1 - Hs[s] ** 2)) @ W.T)
        expect += msg
    np.testing.assert_allclose(dh0, expect, rtol=1e-10, atol=1e-12)


def randomized_samples(m, X, Y, h0, pi, n, seed):
    strat = Randomized(pi, rng=np.random.default_rng(seed))
    out = []
    for _ in range(n):
        _, g, _ = m.loss_and_grad(X, Y, h0, bptt=strat)
        out.append(np.concatenate([g[k].ravel() for k in sorted(g)]))
    return np.array(out)


def flat(g):
    return np.concatenate([g[k].ravel() for k in sorted(g)])


def test_randomized_truncation_is_unbiased():
    """E[xi_t] = 1 makes the estimate unbiased (the seed): the mean of N draws lies within
    5 standard errors of the full gradient in every coordinate. The standard error is
    sqrt(sample variance / N); with ~70 coordinates a 5-sigma miss has probability < 1e-4
    (and the seed is fixed, so the test is deterministic). The same statistic does flag a
    biased estimator (xi in {0, 1} without the 1/pi weight), so the test has power."""
    m, X, Y, h0 = make_lm(seed=70)
    m.params["W_hh"] *= 1.5          # strong recurrence: truncation changes the gradient a lot
    _, full, _ = m.loss_and_grad(X, Y, h0, bptt=Full())
    full = flat(full)
    N = 3000
    S = randomized_samples(m, X, Y, h0, 0.5, N, seed=1)
    mean, se = S.mean(0), S.std(0, ddof=1) / np.sqrt(N)
    random_coords = se > 1e-12                   # W_hq, b_q do not depend on xi (rounding noise aside)
    assert random_coords.sum() > 20
    np.testing.assert_allclose(mean[~random_coords], full[~random_coords], rtol=1e-12, atol=1e-15)
    z = np.abs(mean - full)[random_coords] / se[random_coords]
    assert z.max() < 5, z.max()
    # power: the biased estimator (keep w.p. 1/2 but no 1/pi weight) is rejected by the same rule
    rng = np.random.default_rng(2)
    Sb = []
    for _ in range(N // 3):
        xi = (rng.random((T, B)) < 0.5).astype(np.float64)
        Sb.append(flat(m.loss_and_grad(X, Y, h0, bptt=Randomized(xi=xi))[1]))
    Sb = np.array(Sb)
    zb = np.abs(Sb.mean(0) - full)[random_coords] / (Sb.std(0, ddof=1)[random_coords] / np.sqrt(len(Sb)))
    assert zb.max() > 10


def test_randomized_variance_grows_as_pi_falls():
    m, X, Y, h0 = make_lm(seed=80)
    m.params["W_hh"] *= 1.5
    total_var = [randomized_samples(m, X, Y, h0, pi, 600, seed=3).var(0, ddof=1).sum() for pi in (1.0, 0.8, 0.5, 0.2)]
    assert total_var[0] < 1e-25                            # pi = 1: xi = 1 always, Full (rounding only)
    assert total_var[1] < total_var[2] < total_var[3]
    assert total_var[3] > 3 * total_var[1]


def test_randomized_draw_frequencies_and_reproducibility():
    pi = np.array([1.0, 0.9, 0.5, 0.1])
    xi = Randomized(pi, seed=4).draw(4, 20000)
    for t, p in enumerate(pi):
        kept = xi[t] > 0
        np.testing.assert_array_equal(xi[t][kept], 1 / p)
        se = np.sqrt(p * (1 - p) / 20000) + 1e-12
        assert abs(kept.mean() - p) < 5 * se
        assert abs(xi[t].mean() - 1) < 5 * np.sqrt((1 - p) / p / 20000) + 1e-12
    np.testing.assert_array_equal(Randomized(0.3, seed=5).draw(6, 3), Randomized(0.3, seed=5).draw(6, 3))
    m, X, Y, h0 = make_lm(seed=90)
    _, ga, _ = m.loss_and_grad(X, Y, h0, bptt=Randomized(0.3, rng=np.random.default_rng(6)))
    _, gb, _ = m.loss_and_grad(X, Y, h0, bptt=Randomized(0.3, rng=np.random.default_rng(6)))
    assert_grads_close(ga, gb, rtol=0, atol=0)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("tau", [0, -1, 1.5, True, "3"])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        Truncated(tau)


@pytest.mark.parametrize("pi", [0.0, -0.2, 1.5, np.nan, [0.5, 0.0], [[0.5]], []])
def test_bad_pi(pi):
    with pytest.raises(ValueError, match="pi"):
        Randomized(pi)


def test_bad_plans():
    with pytest.raises(ValueError, match="mode"):
        Truncated(2, mode="window")
    m, X, Y, h0 = make_lm()
    with pytest.raises(ValueError, match="pi"):      # per-step pi of the wrong length
        m.loss_and_grad(X, Y, h0, bptt=Randomized([0.5] * (T + 1)))
    with pytest.raises(ValueError, match="xi"):
        m.loss_and_grad(X, Y, h0, bptt=Randomized(xi=np.ones((T, B + 1))))
    with pytest.raises(ValueError, match="xi"):
        Randomized(xi=-np.ones((T, B)))
    with pytest.raises(ValueError, match="pi, xi"):
        Randomized(0.5, xi=np.ones((T, B)))
    with pytest.raises(ValueError, match="rng"):
        Randomized(0.5, 7)            # a seed passed where the Generator goes
    with pytest.raises(ValueError, match="rng, seed"):
        Randomized(0.5, rng=np.random.default_rng(), seed=1)


# ------------------------------------------------------------------ property: block == Full per block
@settings(max_examples=40, deadline=None)
@given(T_=st.integers(1, 12), B_=st.integers(1, 3), tau=st.integers(1, 14), seed=st.integers(0, 10**6))
def test_block_truncation_is_full_gradient_of_each_block(T_, B_, tau, seed):
    """Block truncation == sum over blocks of the (FD-checked) Full gradient of the block alone,
    entered with the true state; each block's mean loss is reweighted by its share of the T steps."""
    m = RNNLM(V, H, dtype=np.float64, seed=seed % 7)
    rng = np.random.default_rng(seed)
    for p in m.params.values():
        p[...] = rng.normal(0, 0.7, p.shape)
    X, Y = rng.integers(0, V, (B_, T_)), rng.integers(0, V, (B_, T_))
    h0 = rng.normal(0, 0.5, (B_, H))
    loss, g, _ = m.loss_and_grad(X, Y, h0, bptt=Truncated(tau))
    total = {k: np.zeros_like(v) for k, v in g.items()}
    state, total_loss = h0, 0.0
    for s in range(0, T_, tau):
        e = min(s + tau, T_)
        lb, gb, state = m.loss_and_grad(X[:, s:e], Y[:, s:e], state, bptt=Full())
        for k in total:
            total[k] += gb[k] * (e - s) / T_
        total_loss += lb * (e - s) / T_
    assert loss == pytest.approx(total_loss, rel=1e-12)
    assert_grads_close(g, total, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------ specs and state_dicts
@pytest.mark.parametrize("spec, want", [
    ("full", "Full()"), (" FULL ", "Full()"), ("block:5", "Truncated(5, mode='block')"),
    ("sliding:3", "Truncated(3, mode='sliding')"), ("random:0.25", "Randomized(pi=0.25)"),
    ("random:1", "Randomized(pi=1.0)"),
])
def test_from_spec(spec, want):
    assert repr(from_spec(spec, seed=1)) == want


@pytest.mark.parametrize("spec, match", [
    ("block", "block:K"), ("block:0", "K must be"), ("block:2.5", "K must be"), ("sliding:x", "K must be"),
    ("random:0", "P must be"), ("random:1.5", "P must be"), ("random:nan", "P must be"), ("random:p", "P must be"),
    ("full:3", "full, block:K"), ("tbptt:3", "full, block:K"), (None, "full, block:K"),
])
def test_from_spec_refuses_naming_the_spec(spec, match):
    with pytest.raises(ArgumentError, match=match):
        from_spec(spec)


def test_from_spec_seed_gives_the_same_draws():
    a, b = from_spec("random:0.3", seed=4), from_spec("random:0.3", seed=4)
    np.testing.assert_array_equal(a.draw(5, 2), b.draw(5, 2))


def test_randomized_state_dict_resumes_the_draws():
    a = Randomized(0.4, seed=3)
    a.draw(7, 2)
    state = a.state_dict()
    want = [a.draw(7, 2) for _ in range(3)]
    b = Randomized(0.4, seed=99)
    b.load_state_dict(state)
    for w in want:
        np.testing.assert_array_equal(b.draw(7, 2), w)
    with pytest.raises(ArgumentError, match=r"state\['pi'\]"):
        Randomized(0.5).load_state_dict(state)
    with pytest.raises(ArgumentError, match=r"state\['bit_generator'\]"):
        b.load_state_dict(dict(state, bit_generator={"bit_generator": "PCG64", "state": {"state": "x"}}))
    with pytest.raises(ArgumentError, match="state"):
        b.load_state_dict(Full().state_dict())
    Full().load_state_dict(Full().state_dict())
    Truncated(3, "sliding").load_state_dict(Truncated(3, "sliding").state_dict())
    with pytest.raises(ArgumentError, match="state"):
        Truncated(3).load_state_dict(Truncated(4).state_dict())
