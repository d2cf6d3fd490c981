"""The NumPy reference RNN layer and LM: gradients by finite differences, the seed's
identities, generation, state handling and input validation.

Legend: B batch, T steps, D input, H hidden, V vocabulary.
"""
import inspect

import numpy as np
import pytest

from fastseq.bptt import Full
from fastseq.reference.rnn import RNN, RNNLM, sample_token
from gradcheck import fd_grad



# ------------------------------------------------------------------ independent helpers
def phi(z, nl):
    return np.tanh(z) if nl == "tanh" else np.maximum(z, 0.0)


def naive_states(W_xh_rows, W_hh, b_h, h0, nl):
    """H_t one step at a time from per-step input projections (T, B, H) (written here, not imported)."""
    h, out = h0, []
    for a in W_xh_rows:
        h = phi(a + h @ W_hh + b_h, nl)
        out.append(h)
    return np.stack(out)


def naive_lm_loss(p, X, Y, h0, nl):
    """Mean cross-entropy with a per-sequence, per-step Python loop and the one-hot product."""
    B, T = X.shape
    V = p["W_xh"].shape[0]
    onehot = np.eye(V)[X.T]                                  # (T, B, V)
    Hs = naive_states(onehot @ p["W_xh"], p["W_hh"], p["b_h"], h0, nl)
    total = 0.0
    for t in range(T):
        O = Hs[t] @ p["W_hq"] + p["b_q"]
        for b in range(B):
            o = O[b] - O[b].max()
            total += -(o[Y[b, t]] - np.log(np.exp(o).sum()))
    return total / (B * T)


def randomize(model, scale, seed):
    rng = np.random.default_rng(seed)
    for p in model.params.values():
        p[...] = rng.normal(0, scale, p.shape)


def lm64(V=6, H=5, nl="tanh", seed=0, scale=0.5):
    m = RNNLM(V, H, nonlinearity=nl, dtype=np.float64, seed=seed)
    randomize(m, scale, seed + 100)
    return m


def assert_close(a, b, rtol=1e-6, atol=1e-9):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------ finite differences, Full
@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_layer_full_gradients_match_finite_differences(nl):
    T, B, D, H = 5, 3, 4, 6
    layer = RNN(D, H, nonlinearity=nl, dtype=np.float64)
    randomize(layer, 0.6, 1)
    rng = np.random.default_rng(2)
    X, h0 = rng.normal(size=(T, B, D)), rng.normal(size=(B, H))
    G, g_T = rng.normal(size=(T, B, H)), rng.normal(size=(B, H))   # L = <G, Hs> + <g_T, H_{T-1}>
    p = layer.params

    def L():
        Hs = naive_states(X @ p["W_xh"], p["W_hh"], p["b_h"], h0, nl)
        return float(np.sum(G * Hs) + np.sum(g_T * Hs[-1]))

    Hs, cache = layer.forward(X, h0)
    dX, dh0, grads = layer.backward(G, cache, dH_T=g_T)
    num = fd_grad(L, {**p, "X": X, "h0": h0})
    for k in p:
        assert_close(grads[k], num[k])
    assert_close(dX, num["X"])
    assert_close(dh0, num["h0"])
    if nl == "relu":   # the check is only meaningful if some units are off and some on
        assert 0.1 < np.mean(Hs > 0) < 0.9


@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_lm_full_gradients_match_finite_differences(nl):
    m = lm64(nl=nl, seed=3)
    rng = np.random.default_rng(4)
    B, T = 3, 6
    X, Y = rng.integers(0, 6, (B, T)), rng.integers(0, 6, (B, T))
    h0 = rng.normal(size=(B, 5)) * 0.5
    loss, grads, new_state = m.loss_and_grad(X, Y, h0, bptt=Full())
    assert loss == pytest.approx(naive_lm_loss(m.params, X, Y, h0, nl), rel=1e-12)
    num = fd_grad(lambda: naive_lm_loss(m.params, X, Y, h0, nl), m.params)
    assert set(grads) == set(m.params)
    for k in m.params:
        assert grads[k].shape == m.params[k].shape and grads[k].dtype == np.float64
        assert_close(grads[k], num[k])
    # bptt=None means Full
    _, g2, _ = m.loss_and_grad(X, Y, h0)
    for k in grads:
        np.testing.assert_array_equal(g2[k], grads[k])


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_lm_of_every_cell_gradients_match_finite_differences_with_dropout(cell, L):
    """Every parameter and the entering state (h, and c for the LSTM, every layer), the dropout masks on
    (input, between layers, output): the same Generator state draws the same masks in every call."""
    m = RNNLM(5, 3, cell=cell, num_layers=L, dropout=0.3, dtype=np.float64)
    randomize(m, 0.7, 20 + L)
    if cell == "rnn_relu":                      # keep pre-activations away from the kink
        for k in m.params:
            if k.startswith("b_h"):
                m.params[k] += 1.0
    rng = np.random.default_rng(5)
    B, T = 2, 4
    X, Y = rng.integers(0, 5, (B, T)), rng.integers(0, 5, (B, T))
    state0 = rng.normal(size=m.state_shape(B)) * 0.5

    def loss():
        return m.loss_and_grad(X, Y, state0, rng=np.random.default_rng(9))[0]

    l0, grads, _ = m.loss_and_grad(X, Y, state0, rng=np.random.default_rng(9))
    assert l0 != m.loss_and_grad(X, Y, state0)[0]          # the masks act
    num = fd_grad(loss, {**m.params, "state0": state0})
    assert list(grads) == list(m.params)
    for k in m.params:
        assert grads[k].shape == m.params[k].shape and grads[k].dtype == np.float64
        assert_close(grads[k], num[k])
    # dL/dstate0 is not returned by loss_and_grad: through the layer, whose backward returns it
    assert np.abs(num["state0"]).max() > 1e-6


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_layer_of_every_cell_gradients_match_finite_differences_with_dropout(cell, L):
    T, B, D, H = 4, 2, 3, 3
    layer = RNN(D, H, cell=cell, num_layers=L, dropout=0.4, dtype=np.float64)
    randomize(layer, 0.7, 30 + L)
    rng = np.random.default_rng(6)
    X, state0 = rng.normal(size=(T, B, D)), rng.normal(size=layer.state_shape(B))
    G, g_T = rng.normal(size=(T, B, H)), rng.normal(size=layer.state_shape(B))

    def loss():
        Y, cache = layer.forward(X, state0, rng=np.random.default_rng(3))
        return float(np.sum(G * Y) + np.sum(g_T * cache.state))

    _, cache = layer.forward(X, state0, rng=np.random.default_rng(3))
    dX, dstate0, grads = layer.backward(G, cache, dH_T=g_T)
    num = fd_grad(loss, {**layer.params, "X": X, "state0": state0})
    for k in layer.params:
        assert_close(grads[k], num[k])
    assert_close(dX, num["X"])
    assert_close(dstate0, num["state0"])


def test_float32_agrees_with_float64():
    m64 = lm64(V=8, H=16, seed=5, scale=0.3)
    m32 = RNNLM(8, 16, dtype=np.float32)
    m32.load_state_dict(m64.state_dict())
    rng = np.random.default_rng(6)
    X, Y = rng.integers(0, 8, (4, 10)), rng.integers(0, 8, (4, 10))
    l64, g64, s64 = m64.loss_and_grad(X, Y, None)
    l32, g32, s32 = m32.loss_and_grad(X, Y, None)
    assert s32.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-6)


# ------------------------------------------------------------------ the seed's identities
def test_block_identity_concatenated_weights():
    rng = np.random.default_rng(7)
    X, Hp = rng.normal(size=(4, 3)), rng.normal(size=(4, 5))
    W_xh, W_hh = rng.normal(size=(3, 5)), rng.normal(size=(5, 5))
    lhs = X @ W_xh + Hp @ W_hh
    rhs = np.concatenate([X, Hp], axis=1) @ np.concatenate([W_xh, W_hh], axis=0)
    assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    # and the layer computes H_1 = phi([X, H_0][W_xh; W_hh] + b_h)
    layer = RNN(3, 5, dtype=np.float64)
    randomize(layer, 0.5, 8)
    p = layer.params
    Hs, _ = layer.forward(X[None], Hp)
    assert_close(Hs[0], np.tanh(np.concatenate([X, Hp], 1) @ np.concatenate([p["W_xh"], p["W_hh"]]) + p["b_h"]),
                 rtol=1e-12, atol=1e-12)


def test_row_gather_equals_one_hot_product():
    m = lm64(V=7, H=4, seed=9)
    rng = np.random.default_rng(10)
    X = rng.integers(0, 7, (3, 5))
    onehot = np.eye(7)[X]                                     # (B, T, V)
    np.testing.assert_array_equal(m.params["W_xh"][X], onehot @ m.params["W_xh"])
    # the LM on ids equals the layer on one-hot inputs with the same weights
    layer = RNN(7, 4, dtype=np.float64)
    for k in layer.params:
        layer.params[k][...] = m.params[k]
    h0 = rng.normal(size=(3, 4))
    Hs, cache = layer.forward(np.ascontiguousarray(onehot.transpose(1, 0, 2)), h0)
    logits, state = m(X, h0)
    assert_close(logits, (Hs @ m.params["W_hq"] + m.params["b_q"]).transpose(1, 0, 2), rtol=1e-12, atol=1e-13)
    assert_close(state, Hs[-1], rtol=1e-12, atol=1e-13)
    # and the scatter-add dW_xh equals the one-hot product X^T dZ of the layer
    Y = rng.integers(0, 7, (3, 5))
    _, g, _ = m.loss_and_grad(X, Y, h0)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    dO = (np.exp(logp) - np.eye(7)[Y]) / 15                   # (B, T, V)
    dHs = np.ascontiguousarray((dO @ m.params["W_hq"].T).transpose(1, 0, 2))
    _, _, gl = layer.backward(dHs, cache)
    for k in ("W_xh", "W_hh", "b_h"):
        assert_close(g[k], gl[k], rtol=1e-10, atol=1e-14)


def test_call_and_state_carry():
    m = lm64(V=6, H=5, seed=11, scale=0.4)
    rng = np.random.default_rng(12)
    X = rng.integers(0, 6, (2, 9))
    logits, s = m(X, m.begin_state(2))
    l1, s1 = m(X[:, :4], None)                  # None is the zero state
    l2, s2 = m(X[:, 4:], s1)
    assert_close(np.concatenate([l1, l2], axis=1), logits, rtol=1e-12, atol=1e-14)
    assert_close(s2, s, rtol=1e-12, atol=1e-14)
    # loss_and_grad's state is H_{T-1}, a fresh array
    _, _, ns = m.loss_and_grad(X, X, None)
    assert_close(ns, s, rtol=1e-12, atol=1e-14)
    ns[...] = 0
    _, s_again = m(X, None)
    assert_close(s_again, s, rtol=0, atol=0)


def test_initialisation_is_documented_and_seeded():
    m = RNNLM(5, 3, seed=42)
    rng = np.random.default_rng(42)
    for k, shape in (("W_xh", (5, 3)), ("W_hh", (3, 3)), ("W_hq", (3, 5))):
        np.testing.assert_array_equal(m.params[k], rng.normal(0, 0.01, shape).astype(np.float32))
    assert not m.params["b_h"].any() and not m.params["b_q"].any()
    assert all(p.dtype == np.float32 for p in m.params.values())
    layer = RNN(4, 3, seed=1, dtype=np.float64)
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(layer.params["W_xh"], rng.normal(0, 0.01, (4, 3)))
    np.testing.assert_array_equal(layer.params["W_hh"], rng.normal(0, 0.01, (3, 3)))
    assert m.config == dict(vocab_size=5, num_hiddens=3, cell="rnn_tanh", num_layers=1, dropout=0.0,
                            dtype="float32", input_dropout=0.0)
    m2 = RNNLM(**{**m.config, "dtype": np.dtype(m.config["dtype"])}, seed=42)
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    assert m.backend == "numpy" and layer.backend == "numpy"


def test_state_dict_roundtrip_and_checks():
    m = lm64(seed=13)
    sd = m.state_dict()
    sd["W_hh"][0, 0] += 1                    # a copy: the model is unchanged
    assert m.params["W_hh"][0, 0] != sd["W_hh"][0, 0]
    m2 = RNNLM(6, 5, dtype=np.float64, seed=99)
    m2.load_state_dict(m.state_dict())
    for k in m.params:
        np.testing.assert_array_equal(m2.params[k], m.params[k])
    bad = m.state_dict()
    del bad["b_q"]
    with pytest.raises(ValueError, match="b_q: missing"):
        m2.load_state_dict(bad)
    bad = {**m.state_dict(), "W_extra": np.zeros(2)}
    with pytest.raises(ValueError, match="W_extra: unexpected"):
        m2.load_state_dict(bad)
    with pytest.raises(ValueError, match="state_dict"):
        m2.load_state_dict([1, 2])
    bad = m.state_dict()
    bad["W_hq"] = bad["W_hq"].T
    with pytest.raises(ValueError, match="W_hq"):
        m2.load_state_dict(bad)
    bad = m.state_dict()
    bad["b_h"][1] = np.nan
    with pytest.raises(ValueError, match="b_h"):
        m2.load_state_dict(bad)


# ------------------------------------------------------------------ generation
def manual_generate(m, prefix, n, rule):
    """The book's predict written with __call__ one token at a time."""
    state = m.begin_state(1)
    for tok in prefix:
        logits, state = m(np.array([[tok]]), state)
    out = []
    for i in range(n):
        tok = rule(logits[0, -1], i)
        out.append(tok)
        logits, state = m(np.array([[tok]]), state)
    return out


def test_generate_greedy_matches_book_predict():
    m = lm64(V=6, H=8, seed=14, scale=0.8)
    prefix = [1, 4, 2]
    got = m.generate(np.array(prefix), 12)
    assert got.dtype == np.int32 and got.shape == (12,)
    assert got.tolist() == manual_generate(m, prefix, 12, lambda lg, i: int(np.argmax(lg)))
    assert m.generate([3], 0).shape == (0,)


def test_sample_token_rule():
    logits = np.array([0.5, 2.0, -1.0, 2.0, 0.0])
    # greedy ties go to the lowest id
    assert sample_token(logits, 0.0, 0, 0.9) == 1
    # temperature 1: token = #(cumsum <= u * total) with probabilities softmax(logits)
    p = np.exp(logits - 2.0)
    c = np.cumsum(p)
    for u in (0.0, 0.1, 0.3, 0.5, 0.8, 0.999999):
        expected = int(np.sum(c <= u * c[-1]))
        assert sample_token(logits, 1.0, 0, u) == min(expected, 4)
    # u exactly on a boundary moves to the next token (side='right')
    assert sample_token(np.zeros(4), 1.0, 0, 0.25) == 1
    # top_k=2 keeps ids 1 and 3 (the tie 2.0/2.0) only
    draws = {sample_token(logits, 1.0, 2, u) for u in np.linspace(0, 0.999, 50)}
    assert draws == {1, 3}
    # top_k=1 with a tie keeps the lower id
    assert {sample_token(logits, 3.0, 1, u) for u in (0.0, 0.5, 0.99)} == {1}
    # high temperature flattens: the uniform grid hits every id
    assert {sample_token(logits, 1e6, 0, u) for u in np.arange(5) / 5 + 0.1} == set(range(5))
    # u near 1 never returns an id >= V
    assert sample_token(np.array([0.0, -1e300]), 1.0, 0, np.nextafter(1.0, 0)) <= 1


def test_generate_sampling_uses_the_uniforms():
    m = lm64(V=6, H=8, seed=15, scale=0.8)
    u = np.random.default_rng(16).random(20)

    def rule(lg, i):
        z = (lg - lg.max()) / 0.7
        c = np.cumsum(np.exp(z))
        return min(int(np.sum(c <= u[i] * c[-1])), 5)

    got = m.generate(np.array([0, 5]), 20, temperature=0.7, uniforms=u)
    assert got.tolist() == manual_generate(m, [0, 5], 20, rule)
    assert len(set(got.tolist())) > 1


def test_generate_validation():
    m = lm64()
    with pytest.raises(ValueError, match="uniforms"):
        m.generate([1], 3, temperature=1.0)
    with pytest.raises(ValueError, match="uniforms"):
        m.generate([1], 3, temperature=1.0, uniforms=np.zeros(2))
    with pytest.raises(ValueError, match="uniforms"):
        m.generate([1], 3, temperature=1.0, uniforms=np.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        m.generate([1], 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        m.generate([1], 3, top_k=-2)
    with pytest.raises(ValueError, match="prefix_ids"):
        m.generate([], 3)
    with pytest.raises(ValueError, match="prefix_ids"):
        m.generate([6], 3)
    with pytest.raises(ValueError, match="num_preds"):
        m.generate([1], -1)


# ------------------------------------------------------------------ bad inputs
def test_lm_bad_inputs():
    m = RNNLM(5, 4)
    X = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="X.*\\[0, 5\\)"):
        m.loss_and_grad(X + 5, X, None)
    with pytest.raises(ValueError, match="X"):
        m.loss_and_grad(X - 1, X, None)
    with pytest.raises(ValueError, match="Y.*\\[0, 5\\)"):
        m.loss_and_grad(X, X + 7, None)
    with pytest.raises(ValueError, match="X.*integer"):
        m(X.astype(np.float32), None)
    with pytest.raises(ValueError, match="X.*2-D"):
        m(X[0], None)
    with pytest.raises(ValueError, match="Y.*shape"):
        m.loss_and_grad(X, X[:, :2], None)
    with pytest.raises(ValueError, match="state.*shape"):
        m(X, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="state.*dtype"):
        m(X, np.zeros((2, 4), dtype=np.float64))
    with pytest.raises(ValueError, match="bptt"):
        m.loss_and_grad(X, X, None, bptt="full")
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNLM(5, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dtype"):
        RNNLM(5, 4, dtype=np.int32)
    with pytest.raises(ValueError, match="vocab_size"):
        RNNLM(0, 4)
    with pytest.raises(ValueError, match="num_hiddens"):
        RNNLM(5, 2.5)
    with pytest.raises(ValueError, match="batch_size"):
        m.begin_state(0)


def test_layer_bad_inputs():
    layer = RNN(3, 4)
    X = np.zeros((5, 2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="X.*shape"):
        layer.forward(np.zeros((5, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="X.*dtype"):
        layer.forward(X.astype(np.float64))
    with pytest.raises(ValueError, match="h0.*shape"):
        layer.forward(X, np.zeros((3, 4), dtype=np.float32))
    Hs, cache = layer.forward(X)
    with pytest.raises(ValueError, match="dHs.*shape"):
        layer.backward(Hs[:4], cache)
    with pytest.raises(ValueError, match="dH_T.*shape"):
        layer.backward(Hs, cache, dH_T=np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="^cache: expected the cache returned by this model's forward"):
        layer.backward(Hs, (X, None, Hs))
    with pytest.raises(ValueError, match="^cache: from the forward of another model"):
        RNN(3, 4).backward(Hs, cache)
    with pytest.raises(ValueError, match="input_size"):
        RNN(0, 4)


def test_layer_and_lm_share_method_signatures_of_the_contract():
    lm, layer = type(RNNLM(2, 2)), type(RNN(2, 2))     # the classes the reference builds
    sig = {name: str(inspect.signature(getattr(lm, name)))
           for name in ("__call__", "loss_and_grad", "generate", "state_grads", "begin_state", "state_dict",
                        "load_state_dict", "from_config")}
    assert sig["__call__"] == "(self, X, state)"
    assert sig["loss_and_grad"] == "(self, X, Y, state, bptt=None, rng=None)"
    assert sig["generate"] == "(self, prefix_ids, num_preds, temperature=0.0, top_k=0, uniforms=None, logit_bias=None)"
    assert sig["state_grads"] == "(self, X, Y, state=None, bptt=None, term=None)"
    assert sig["from_config"] == "(config, backend=None)"
    assert str(inspect.signature(layer.forward)) == "(self, X, h0=None, rng=None)"
    assert str(inspect.signature(layer.backward)) == "(self, dHs, cache, dH_T=None, bptt=None)"
    assert str(inspect.signature(layer.from_config)) == "(config, backend=None)"
