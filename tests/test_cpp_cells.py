"""The C++ cells (csrc/cells/) against the NumPy reference cells (fastseq.reference.cells).

The kernels are called directly (fastseq._core.cell_*), with the contract's flat parameters (the
book's x @ W layout; docs/CELLS.md); the reference runs PyTorch's layout, so each test maps the
parameters across: weight_ih = W_xh.T, weight_hh = W_hh.T, bias_ih = b_h, bias_hh = 0 except the
GRU's n block = b_hn. The language model's reference is a few lines of NumPy around the reference
stack (row gather as an identity input projection, softmax cross-entropy), written here.
Tolerances: float64 1e-10 relative to the array's largest entry, float32 1e-4.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastseq import _core
from fastseq.bptt import Full, Randomized, Truncated
from fastseq.errors import ArgumentError
from fastseq.reference.cells import get_cell, stack_backward, stack_forward
from fastseq.reference.ops import sample_token
from tolerances import RTOL, assert_close, up

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]


def sfx(l):
    return "" if l == 0 else f"_l{l}"


def make_params(cell, D, H, L, dtype, rng, V=None, scale=0.5):
    """The contract's flat dict; V given: an LM (D = V, plus W_hq, b_q)."""
    G = get_cell(cell).gates
    p = {}
    for l in range(L):
        s = sfx(l)
        p["W_xh" + s] = rng.normal(0, scale, (D if l == 0 else H, G * H))
        p["W_hh" + s] = rng.normal(0, scale, (H, G * H))
        p["b_h" + s] = rng.normal(0, scale, G * H)
        if cell == "gru":
            p["b_hn" + s] = rng.normal(0, scale, H)
    if V is not None:
        p["W_hq"] = rng.normal(0, scale, (H, V))
        p["b_q"] = rng.normal(0, scale, V)
    return {k: v.astype(dtype) for k, v in p.items()}


def to_torch_layout(cell, params, L, identity_input=False):
    """Per-layer dicts of the reference; identity_input: layer 0 reads gi - b_h directly (the LM's gather)."""
    out = []
    for l in range(L):
        s = sfx(l)
        W_xh, W_hh, b_h = params["W_xh" + s], params["W_hh" + s], params["b_h" + s]
        GH, H = b_h.shape[0], W_hh.shape[0]
        bias_hh = np.zeros_like(b_h)
        if cell == "gru":
            bias_hh[2 * H:] = params["b_hn" + s]
        w_ih = np.eye(GH, dtype=b_h.dtype) if identity_input and l == 0 else W_xh.T.copy()
        out.append({"weight_ih": w_ih, "weight_hh": W_hh.T.copy(), "bias_ih": b_h.copy(), "bias_hh": bias_hh})
    return out


def grads_from_torch_layout(cell, g, L, skip_w_xh0=False):
    out = {}
    for l in range(L):
        s = sfx(l)
        if not (skip_w_xh0 and l == 0):
            out["W_xh" + s] = g[l]["weight_ih"].T
        out["W_hh" + s] = g[l]["weight_hh"].T
        out["b_h" + s] = g[l]["bias_ih"]
        if cell == "gru":
            H = g[l]["weight_hh"].shape[1]
            out["b_hn" + s] = g[l]["bias_hh"][2 * H:]
    return out


def split_state(cell, s, L):
    """The contract's state ((B, H) or (P*L, B, H)) as the reference's tuple of (L, B, H)."""
    P = len(get_cell(cell).state_parts)
    if s.ndim == 2:
        return (s[None],)
    return tuple(s[k * L:(k + 1) * L] for k in range(P))


def join_state(cell, parts, L):
    s = np.concatenate(parts, axis=0)
    return s[0] if s.shape[0] == 1 else s


def state_shape(cell, L, B, H):
    P = len(get_cell(cell).state_parts)
    return (B, H) if P * L == 1 else (P * L, B, H)


def make_plan(kind, tau, T, B, rng, dtype):
    if kind == "full":
        return Full().plan(T, B, dtype)
    if kind == "block":
        return Truncated(tau, mode="block").plan(T, B, dtype)
    if kind == "sliding":
        return Truncated(tau, mode="sliding").plan(T, B, dtype)
    xi = np.where(rng.random((T, B)) < 0.6, 1 / 0.6, 0.0)
    return Randomized(xi=xi).plan(T, B, dtype)


def layer_masks(rng, L, T, B, H, dtype, p=0.3):
    if L == 1:
        return None
    return ((rng.random((L - 1, T, B, H)) >= p) / (1 - p)).astype(dtype)


cells = st.sampled_from(CELLS)
kinds = st.sampled_from(["full", "block", "sliding", "randomized"])
dtypes = st.sampled_from([np.float64, np.float32])
threads = st.sampled_from([1, 2])
sizes = st.tuples(st.integers(1, 7), st.integers(1, 5), st.integers(1, 6), st.integers(1, 9))


# ----------------------------------------------------------------------------- the layer (a stack)
@HYP
@given(cell=cells, kind=kinds, dtype=dtypes, threads=threads, size=sizes, L=st.integers(1, 3),
       tau=st.integers(1, 8), dropout=st.booleans(), with_dsT=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_layer_matches_reference(cell, kind, dtype, threads, size, L, tau, dropout, with_dsT, seed):
    T, B, D, H = size
    rng = np.random.default_rng(seed)
    params = make_params(cell, D, H, L, dtype, rng)
    X = rng.normal(size=(T, B, D)).astype(dtype)
    s0 = rng.normal(0, 0.5, state_shape(cell, L, B, H)).astype(dtype)
    m = layer_masks(rng, L, T, B, H, dtype) if dropout else None
    dY = rng.normal(size=(T, B, H)).astype(dtype)
    dsT = rng.normal(size=s0.shape).astype(dtype) if with_dsT else None
    plan = make_plan(kind, tau, T, B, rng, dtype)

    Y, sT, cache = _core.cell_forward(cell, X, s0, params, (None, m, None), threads)
    dX, ds0, grads = _core.cell_backward(cell, dY, dsT, cache, params, plan[0], plan[1], threads)

    ref_p = to_torch_layout(cell, params, L)
    Yr, sTr, cr = stack_forward(cell, ref_p, X, split_state(cell, s0, L), m)
    dXr, ds0r, gr = stack_backward(cell, ref_p, dY, cr, None if dsT is None else split_state(cell, dsT, L), plan)
    assert_close(Y, Yr, dtype, "Y")
    assert_close(sT, join_state(cell, sTr, L), dtype, "state_T")
    assert_close(dX, dXr, dtype, "dX")
    assert_close(ds0, join_state(cell, ds0r, L), dtype, "dstate0")
    gr = grads_from_torch_layout(cell, gr, L)
    assert set(grads) == set(gr) == set(params)
    for k in gr:
        assert grads[k].dtype == dtype
        assert_close(grads[k], gr[k], dtype, k)


# ----------------------------------------------------------------------------- the language model
def reference_lm(cell, params, ids, Yt, s0, plan, masks, L):
    """(loss, grads, state_T, logits): the one-hot LM in NumPy around the reference stack."""
    m_in, m_layers, m_out = masks if masks is not None else (None, None, None)
    W_xh, W_hq, b_q = params["W_xh"], params["W_hq"], params["b_q"]
    B, T = ids.shape
    E = W_xh[ids.T]                                          # (T, B, G*H): x W_xh for one-hot x
    X0 = E * m_in if m_in is not None else E
    ref_p = to_torch_layout(cell, params, L, identity_input=True)
    Y, sT, cache = stack_forward(cell, ref_p, X0, split_state(cell, s0, L), m_layers)
    Ht = Y * m_out if m_out is not None else Y
    O = Ht @ W_hq + b_q                                      # (T, B, V)
    Z = O - O.max(-1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(-1, keepdims=True))
    tgt = Yt.T
    loss = -np.take_along_axis(logp, tgt[..., None], -1).mean()
    dO = np.exp(logp)
    np.put_along_axis(dO, tgt[..., None], np.take_along_axis(dO, tgt[..., None], -1) - 1, -1)
    dO /= B * T
    grads = {"W_hq": np.einsum("tbh,tbv->hv", Ht, dO), "b_q": dO.sum((0, 1))}
    dY = dO @ W_hq.T
    if m_out is not None:
        dY = dY * m_out
    dX0, _, g = stack_backward(cell, ref_p, dY, cache, None, plan)
    dE = dX0 * m_in if m_in is not None else dX0
    gW = np.zeros_like(W_xh)
    np.add.at(gW, ids.T, dE)
    grads["W_xh"] = gW
    grads.update(grads_from_torch_layout(cell, g, L, skip_w_xh0=True))
    logits = np.transpose(O, (1, 0, 2))
    return loss, grads, join_state(cell, sT, L), logits


@HYP
@given(cell=cells, kind=kinds, dtype=dtypes, threads=threads, size=sizes, L=st.integers(1, 3),
       tau=st.integers(1, 8), dropout=st.sampled_from(["none", "all", "in", "layers", "out"]),
       seed=st.integers(0, 2**31 - 1))
def test_lm_step_matches_reference(cell, kind, dtype, threads, size, L, tau, dropout, seed):
    T, B, V, H = size
    rng = np.random.default_rng(seed)
    G = get_cell(cell).gates
    params = make_params(cell, V, H, L, dtype, rng, V=V)
    ids = rng.integers(0, V, (B, T))
    Yt = rng.integers(0, V, (B, T))
    s0 = rng.normal(0, 0.5, state_shape(cell, L, B, H)).astype(dtype)
    plan = make_plan(kind, tau, T, B, rng, dtype)

    def m(shape):
        return ((rng.random(shape) >= 0.25) / 0.75).astype(dtype)
    masks = None
    if dropout != "none":
        masks = (m((T, B, G * H)) if dropout in ("all", "in") else None,
                 m((L - 1, T, B, H)) if dropout in ("all", "layers") and L > 1 else None,
                 m((T, B, H)) if dropout in ("all", "out") else None)

    loss, grads, sT = _core.cell_lm_loss_and_grad(cell, ids, Yt, s0, params, plan[0], plan[1], masks, threads)
    lr, gr, sTr, logits_r = reference_lm(cell, params, ids, Yt, s0, plan, masks, L)
    assert abs(loss - lr) <= RTOL[dtype] * abs(lr)
    assert_close(sT, sTr, dtype, "state_T")
    assert set(grads) == set(gr) == set(params)
    exact = None
    if dtype == np.float32:   # the float32 reference's own rounding, for sums that cancel (tolerances.py)
        exact = reference_lm(cell, {k: up(v) for k, v in params.items()}, ids, Yt, up(s0),
                             (up(plan[0]), plan[1]), None if masks is None else tuple(up(x) for x in masks), L)[1]
    for k in gr:
        assert grads[k].dtype == dtype
        assert_close(grads[k], gr[k], dtype, k, exact=None if exact is None else exact[k])
    if masks is None:
        logits, sT2 = _core.cell_lm_forward(cell, ids, s0, params, threads)
        assert_close(logits, logits_r, dtype, "logits")
        assert_close(sT2, sTr, dtype, "state_T (lm_forward)")


# ----------------------------------------------------------------------------- generation
def reference_generate(cell, params, L, prefix, n, temperature, top_k, u):
    H = params["W_hh"].shape[0]
    dtype = params["W_hh"].dtype
    ref_p = to_torch_layout(cell, params, L, identity_input=True)
    state = tuple(np.zeros((L, 1, H), dtype) for _ in get_cell(cell).state_parts)

    def run(tok, state):
        X = params["W_xh"][[tok]][None]                       # (1, 1, G*H)
        Y, state, _ = stack_forward(cell, ref_p, X, state)
        return Y[0, 0] @ params["W_hq"] + params["b_q"], state
    for tok in prefix:
        logits, state = run(tok, state)
    out = []
    for i in range(n):
        out.append(sample_token(logits, temperature, top_k, u[i] if u is not None else 0.0))
        if i + 1 < n:
            logits, state = run(out[-1], state)
    return np.array(out, dtype=np.int32)


@HYP
@given(cell=cells, V=st.integers(1, 9), H=st.integers(1, 12), L=st.integers(1, 3), dtype=dtypes,
       seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
       top_k=st.integers(0, 10), n=st.integers(0, 15), plen=st.integers(1, 4))
def test_generation_matches_reference(cell, V, H, L, dtype, seed, temperature, top_k, n, plen):
    rng = np.random.default_rng(seed)
    params = make_params(cell, V, H, L, dtype, rng, V=V, scale=1.0)
    prefix = rng.integers(0, V, plen)
    u = rng.random(n) if temperature > 0 else None
    out = _core.cell_lm_generate(cell, prefix, n, params, temperature, min(top_k, V), u)
    assert out.dtype == np.int32 and out.shape == (n,)
    np.testing.assert_array_equal(out, reference_generate(cell, params, L, prefix, n, temperature, min(top_k, V), u))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_generation_split_between_threads_matches_reference(cell, L, threads):
    """Generation splits the hidden units between threads in whole panels (32 float32 / 16 float64 columns),
    so H spans several panels here, one part ending mid-panel; every thread count gives the reference's tokens
    (float64), and float32 gives the same tokens and state whatever the split (each unit's sums are the same)."""
    for dtype, H in ((np.float64, 37), (np.float32, 70)):
        rng = np.random.default_rng(L * 10 + threads)
        V = 11
        params = make_params(cell, V, H, L, dtype, rng, V=V, scale=1.0)
        prefix = rng.integers(0, V, 4)
        for temperature, top_k in ((0.0, 0), (1.0, 0), (0.8, 3)):
            u = rng.random(40) if temperature > 0 else None
            out = _core.cell_lm_generate(cell, prefix, 40, params, temperature, top_k, u, threads)
            if dtype == np.float64:
                np.testing.assert_array_equal(out, reference_generate(cell, params, L, prefix, 40, temperature,
                                                                      top_k, u), err_msg=f"{temperature} {top_k}")
            else:
                one = _core.cell_lm_generate(cell, prefix, 40, params, temperature, top_k, u, 1)
                np.testing.assert_array_equal(out, one, err_msg=f"{temperature} {top_k}")


@pytest.mark.parametrize("cell,H", [("rnn_tanh", 520), ("gru", 300), ("lstm", 300)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_row_forward_split_between_threads(cell, H, dtype):
    """B = 1 (a decoder's call): a one-row product with a W of >= 2**18 entries is split by columns between the
    pool's threads (csrc/matvec.h). Outputs equal the reference; at T = 1 (every product one row) they equal one
    thread's bit for bit (each column's sums run in the same order whatever the split; with T > 1 the input
    product is BLAS's over T rows, whose sums may depend on its own thread count)."""
    import fastseq
    rng = np.random.default_rng(3)
    L = 2
    params = make_params(cell, H, H, L, dtype, rng, scale=1 / np.sqrt(H))  # torch's scale: not chaotic in float32
    before = fastseq.get_num_threads()
    for T in (1, 3):
        X = rng.normal(size=(T, 1, H)).astype(dtype)
        s0 = rng.normal(size=state_shape(cell, L, 1, H)).astype(dtype)
        try:
            got = {}
            for n in (1, 2):
                fastseq.set_num_threads(n)
                got[n] = _core.cell_forward(cell, X, s0, params)[:2]
        finally:
            fastseq.set_num_threads(before)
        Yr, sTr, _ = stack_forward(cell, to_torch_layout(cell, params, L), X, split_state(cell, s0, L))
        assert_close(got[2][0], Yr, dtype, "Y")
        assert_close(got[2][1], join_state(cell, sTr, L), dtype, "state_T")
        if T == 1:
            np.testing.assert_array_equal(got[2][0], got[1][0])
            np.testing.assert_array_equal(got[2][1], got[1][1])


# ----------------------------------------------------------------------------- the registry
def test_every_reference_cell_is_registered_in_cpp():
    from fastseq.reference.cells import CELLS as REF_CELLS
    for name in REF_CELLS:
        params = make_params(name, 2, 3, 1, np.float64, np.random.default_rng(0))
        Y, _, _ = _core.cell_forward(name, np.ones((2, 1, 2)), np.zeros(state_shape(name, 1, 1, 3)), params)
        assert Y.shape == (2, 1, 3)
    with pytest.raises(ArgumentError, match="cell: expected one of 'rnn_tanh', 'rnn_relu', 'gru', 'lstm'"):
        _core.cell_forward("elman", np.ones((2, 1, 2)), np.zeros((1, 3)), params)


# ----------------------------------------------------------------------------- CppOps, the contract's calls
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2])
def test_cpp_ops_calls_are_the_kernels(cell, L):
    """CppOps maps the contract's calls (masks tuple, plan, flat params) onto one kernel call each."""
    from fastseq.ops import CppOps
    ops = CppOps()
    rng = np.random.default_rng(1)
    T, B, D, H, V = 5, 3, 4, 6, 7
    G = get_cell(cell).gates
    params = make_params(cell, D, H, L, np.float64, rng)
    X = rng.normal(size=(T, B, D))
    s0 = rng.normal(size=state_shape(cell, L, B, H))
    masks = (None, layer_masks(rng, L, T, B, H, np.float64), None)
    plan = Truncated(2, mode="block").plan(T, B)
    Y, sT, cache = ops.rnn_forward(cell, X, s0, params, masks)
    dY = rng.normal(size=Y.shape)
    dX, ds0, grads = ops.rnn_backward(cell, dY, None, cache, params, plan)
    ref_p = to_torch_layout(cell, params, L)
    Yr, sTr, cr = stack_forward(cell, ref_p, X, split_state(cell, s0, L), masks[1])
    dXr, ds0r, gr = stack_backward(cell, ref_p, dY, cr, None, plan)
    assert_close(Y, Yr, np.float64, "Y")
    assert_close(sT, join_state(cell, sTr, L), np.float64, "state_T")
    assert_close(dX, dXr, np.float64, "dX")
    assert_close(ds0, join_state(cell, ds0r, L), np.float64, "dstate0")
    for k, v in grads_from_torch_layout(cell, gr, L).items():
        assert_close(grads[k], v, np.float64, k)

    lm = make_params(cell, V, H, L, np.float64, rng, V=V)
    ids, tgt = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    lm_masks = ((rng.random((T, B, G * H)) > 0.3) / 0.7, masks[1], (rng.random((T, B, H)) > 0.3) / 0.7)
    loss, g, sT = ops.lm_loss_and_grad(cell, ids, tgt, s0, lm, plan, lm_masks)
    lr, gr, sTr, _ = reference_lm(cell, lm, ids, tgt, s0, plan, lm_masks, L)
    assert abs(loss - lr) <= 1e-10 * lr
    for k in gr:
        assert_close(g[k], gr[k], np.float64, k)
    logits, sT = ops.lm_forward(cell, ids, s0, lm)
    _, _, sTr, logits_r = reference_lm(cell, lm, ids, tgt, s0, (None, 0), None, L)
    assert_close(logits, logits_r, np.float64, "logits")
    u = rng.random(6)
    out = ops.lm_generate(cell, ids[0, :3], 6, lm, 1.0, 100, u)
    np.testing.assert_array_equal(out, reference_generate(cell, lm, L, ids[0, :3], 6, 1.0, V, u))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sliding_truncation_of_stacks(cell, dtype):
    """Sliding truncation with 2 and 3 layers and dropout: each term goes down the layers at its own age."""
    for L, threads in ((2, 1), (3, 2)):
        test_layer_matches_reference.hypothesis.inner_test(
            cell=cell, kind="sliding", dtype=dtype, threads=threads, size=(7, 4, 3, 5), L=L, tau=3, dropout=True,
            with_dsT=True, seed=L)
        test_lm_step_matches_reference.hypothesis.inner_test(
            cell=cell, kind="sliding", dtype=dtype, threads=threads, size=(7, 4, 6, 5), L=L, tau=3, dropout="all",
            seed=L)
