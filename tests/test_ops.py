"""Parity over the ops: every model call gives the same results on the C++ and the NumPy ops, for every
cell (rnn_tanh, rnn_relu, gru, lstm), depth and BPTT strategy.

Each ops is held against an oracle written here, not against itself: naive
loops for the plain RNN's forward pass, generation and clipping, and PyTorch's
autograd (float64) on the cells' equations written out below (the contract's
layout, x @ W) for every gradient under every BPTT plan, with the dropout masks
drawn here by the documented rule (skipped without torch; the direct
C++-against-NumPy comparisons below run always). Tolerance: relative to the
largest entry, 1e-10 in float64 and 1e-4 in float32.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size, L layers, G gate blocks.
"""
import inspect
import itertools
import types
import zlib

import numpy as np
import pytest

import fastseq
from fastseq import reference
from fastseq.bptt import Full, Randomized, Truncated
from fastseq.errors import ArgumentError
from fastseq.ops import OPS_NAMES, CppOps, NumpyOps, get_ops
from fastseq.rnn import bptt_plan
from tolerances import assert_close

DTYPES = [np.float64, np.float32]
STRATEGIES = ["full", "block", "sliding", "randomized"]
CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


def lm_dropout(cell, L):
    """The LM cases' dropout: on for every stack and for the gated cells (m_in, m_out at L = 1); off for the
    one-layer plain RNN, whose numbers are today's."""
    return 0.3 if L > 1 or not cell.startswith("rnn_") else 0.0


GRAD_CASES = [pytest.param(backend, dtype, cell, L, kind,
                           id=f"{backend}-{np.dtype(dtype).name}-{cell}-L{L}-{kind}")
              for backend, dtype, cell, L, kind in itertools.product(OPS_NAMES, DTYPES, CELLS, [1, 2], STRATEGIES)]


def seed_of(*case):
    """A seed per case, the same in every run (hash() of a str is not)."""
    return zlib.crc32(repr(case).encode())


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


def sfx(l):
    return "" if l == 0 else f"_l{l}"


def masks_of(rng, p, shape, dtype):
    """The documented draw: rng.random(shape, dtype) >= p (uniforms in the mask's dtype), kept entries 1/(1-p)."""
    return ((rng.random(shape, dtype=dtype) >= dtype(p)) / (1 - p)).astype(dtype)


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


NP = types.SimpleNamespace(tanh=np.tanh, relu=lambda a: np.maximum(a, 0), sigmoid=lambda a: 1 / (1 + np.exp(-a)))


def torch_fns(torch):
    return types.SimpleNamespace(tanh=torch.tanh, relu=torch.relu, sigmoid=torch.sigmoid)


def cell_step(F, cell, q, s, gi, state):
    """One step of layer s's cell in the contract's layout from gi = x W_xh + b_h (PyTorch's equations);
    state: (h,) or (h, c). F: the elementwise functions (NumPy's or torch's)."""
    h, H = state[0], state[0].shape[-1]
    if cell.startswith("rnn_"):
        return (getattr(F, cell[4:])(gi + h @ q["W_hh" + s]),)
    gh = h @ q["W_hh" + s]
    if cell == "gru":
        r = F.sigmoid(gi[:, :H] + gh[:, :H])
        z = F.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = F.tanh(gi[:, 2 * H:] + r * (gh[:, 2 * H:] + q["b_hn" + s]))
        return ((1 - z) * n + z * h,)
    a = gi + gh
    i, f, o = F.sigmoid(a[:, :H]), F.sigmoid(a[:, H:2 * H]), F.sigmoid(a[:, 3 * H:])
    c = f * state[1] + i * F.tanh(a[:, 2 * H:3 * H])
    return (o * F.tanh(c), c)


def split_state(state, P, L):
    """The contract's state ((B, H) or (P*L, B, H)) -> per layer a tuple of P (B, H) parts."""
    if P * L == 1:
        return [(state,)]
    return [tuple(state[k * L + l] for k in range(P)) for l in range(L)]


def stack_run(F, cell, q, L, proj0, m_layers, state, t0, t1, scale=None):
    """Steps t0..t1-1 of the stack; proj0[t]: layer 0's input projection before b_h. -> (outputs, state)."""
    state, outs = list(state), []
    for t in range(t0, t1):
        if scale is not None:                 # the message from step t to the state entering it, scaled
            w = scale[t][:, None]
            state = [tuple(p.detach() + w * (p - p.detach()) for p in ls) for ls in state]
        x = None
        for l in range(L):
            s = sfx(l)
            gi = (proj0[t] if l == 0 else x @ q["W_xh" + s]) + q["b_h" + s]
            state[l] = cell_step(F, cell, q, s, gi, state[l])
            x = state[l][0] if m_layers is None or l == L - 1 else state[l][0] * m_layers[l, t]
        outs.append(x)
    return outs, state


def torch_grads(torch, cell, q, L, plan, proj0, state0, m_layers, terms, final):
    """Backward by PyTorch autograd in float64 under a BPTT plan (q: leaf tensors; proj0, state0 built
    from leaves by the caller). terms(t, Y_t) -> loss term t; final(state_T) joins term T-1.
    scale: the message from step t to the stacked state entering it is multiplied by scale[t] (value
    kept); window tau: loss term t sees only steps t-tau+1..t of the whole stack (the state entering
    them detached, the entering state0 kept when the window reaches it)."""
    scale, window = plan
    T = proj0.shape[0]
    F = torch_fns(torch)
    sc = None if scale is None else torch.tensor(scale, dtype=torch.float64)
    if window == 0:
        outs, st = stack_run(F, cell, q, L, proj0, m_layers, state0, 0, T, sc)
        loss = sum(terms(t, outs[t]) for t in range(T)) + final(st)
    else:
        entering, st = [], state0
        for t in range(T):
            entering.append([tuple(p.detach() for p in ls) for ls in st])
            _, st = stack_run(F, cell, q, L, proj0, m_layers, st, t, t + 1)
        loss = 0
        for t in range(T):
            s0 = max(0, t - window + 1)
            outs, st = stack_run(F, cell, q, L, proj0, m_layers, state0 if s0 == 0 else entering[s0], s0, t + 1)
            loss = loss + terms(t, outs[-1]) + (final(st) if t == T - 1 else 0)
    loss.backward()


def leaves(torch, params):
    return {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in params.items()}


def torch_state(torch, state, P, L):
    """A leaf tensor of the contract's state and its per-layer view."""
    t = torch.tensor(state.astype(np.float64), requires_grad=True)
    return t, split_state(t, P, L)


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


def test_numpy_ops_calls_are_the_contracts():
    sig = {n: str(inspect.signature(f)) for n, f in public_calls(NumpyOps).items()}
    assert sig == {
        "rnn_forward": "(self, cell, X, state0, params, masks)",
        "rnn_backward": "(self, cell, dY, dstate_T, cache, params, plan)",
        "lm_forward": "(self, cell, ids, state0, params)",
        "lm_loss_and_grad": "(self, cell, ids, Y, state0, params, plan, masks)",
        "lm_backprop": "(self, cell, ids, Y, state0, params, plan, masks, term=None)",
        "lm_generate": "(self, cell, prefix, num_preds, params, temperature, top_k, uniforms)",
        "clip_grad_norm": "(self, grads, theta)",
    }


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
        assert type(m) is cls and m.backend == backend
        assert m.ops is get_ops(backend)
    assert cls(*sizes).backend == "cpp"
    ref = getattr(reference, cls.__name__)(*sizes)
    assert isinstance(ref, cls) and ref.backend == "numpy"
    # only the default differs (__slotnames__: the cache copyreg writes into a class once an instance is copied)
    assert set(vars(type(ref))) <= {"__init__", "__doc__", "__module__", "__qualname__", "__slotnames__"}
    # the same weights for a seed whatever the ops, and the reference's documented draw
    a, b = cls(*sizes, seed=3, backend="cpp"), cls(*sizes, seed=3, backend="numpy")
    rng = np.random.default_rng(3)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        if a.params[k].ndim == 2:
            np.testing.assert_array_equal(a.params[k], rng.normal(0, 0.01, a.params[k].shape).astype(np.float32))
        else:
            assert not a.params[k].any()


@pytest.mark.parametrize("cls, D", [(fastseq.RNN, 4), (fastseq.RNNLM, 6)], ids=["RNN", "RNNLM"])
@pytest.mark.parametrize("cell", CELLS)
def test_parameters_names_shapes_and_init(cls, D, cell):
    """The contract's names and shapes for 3 layers; the plain RNN keeps the book's N(0, 0.01^2) and zero
    biases, the gated cells draw PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for everything, in the listed order."""
    H, L, G = 5, 3, GATES[cell]
    m = cls(D, H, cell=cell, num_layers=L, seed=7, dtype=np.float64, backend="numpy")
    want = {}
    for l in range(L):
        want.update({"W_xh" + sfx(l): (D if l == 0 else H, G * H), "W_hh" + sfx(l): (H, G * H),
                     "b_h" + sfx(l): (G * H,)})
        if cell == "gru":
            want["b_hn" + sfx(l)] = (H,)
    if cls is fastseq.RNNLM:
        want.update(W_hq=(H, D), b_q=(D,))
    assert [(k, v.shape) for k, v in m.params.items()] == list(want.items())
    rng = np.random.default_rng(7)
    for k, shape in want.items():
        if cell.startswith("rnn_"):
            expect = rng.normal(0, 0.01, shape) if len(shape) == 2 else np.zeros(shape)
        else:
            expect = rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), shape)
        np.testing.assert_array_equal(m.params[k], expect, err_msg=k)
    P = 2 if cell == "lstm" else 1
    assert m.begin_state(2).shape == (P * L, 2, H) and not m.begin_state(2).any()
    one = cls(D, H, cell=cell, backend="numpy")
    assert one.begin_state(3).shape == ((2, 3, H) if cell == "lstm" else (3, H))


def test_cell_and_nonlinearity_resolve_to_one_cell():
    assert fastseq.RNNLM(4, 3, backend="numpy").cell == "rnn_tanh"
    assert fastseq.RNNLM(4, 3, "relu", backend="numpy").cell == "rnn_relu"
    assert fastseq.RNNLM(4, 3, "relu", cell="rnn_relu", backend="numpy").nonlinearity == "relu"
    assert fastseq.RNN(4, 3, cell="lstm", backend="numpy").nonlinearity is None
    for kw, match in [(dict(nonlinearity="relu", cell="rnn_tanh"), "^nonlinearity: 'relu' conflicts with cell"),
                      (dict(nonlinearity="tanh", cell="gru"), "^nonlinearity: 'tanh' conflicts with cell 'gru'"),
                      (dict(cell="rnn"), "^cell: expected one of"),
                      (dict(nonlinearity="sigmoid"), "^nonlinearity: expected one of"),
                      (dict(num_layers=0), "^num_layers: expected an integer >= 1"),
                      (dict(dropout=1.0), "^dropout:"), (dict(dropout=-0.1), "^dropout:")]:
        for cls in (fastseq.RNN, fastseq.RNNLM):
            with pytest.raises(ArgumentError, match=match):
                cls(4, 3, backend="numpy", **kw)


# ----------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("backend, dtype, cell, L, kind", GRAD_CASES)
def test_layer_forward_and_backward_match_the_oracle(backend, dtype, cell, L, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed_of(backend, kind, cell, L))
    T, B, D, H = 7, 3, 4, 5
    p_drop = 0.5 if L > 1 else 0.0
    m = randomized(fastseq.RNN(D, H, dtype=dtype, backend=backend, cell=cell, num_layers=L, dropout=p_drop), rng)
    P = 2 if cell == "lstm" else 1
    X = rng.normal(size=(T, B, D)).astype(dtype)
    h0 = rng.normal(size=m.state_shape(B)).astype(dtype)
    dHs = rng.normal(size=(T, B, H)).astype(dtype)
    dH_T = rng.normal(size=m.state_shape(B)).astype(dtype)
    bptt = strategy(kind, T, B, rng)
    Y, cache = m.forward(X, h0, rng=np.random.default_rng(99))
    m_layers = masks_of(np.random.default_rng(99), p_drop, (L - 1, T, B, H), dtype) if L > 1 else None
    dX, dh0, grads = m.backward(dHs, cache, dH_T=dH_T, bptt=bptt)

    q = leaves(torch, m.params)
    tX = torch.tensor(X.astype(np.float64), requires_grad=True)
    th0, state0 = torch_state(torch, h0, P, L)
    tm = None if m_layers is None else torch.tensor(m_layers.astype(np.float64))
    with torch.no_grad():
        outs, st = stack_run(torch_fns(torch), cell, q, L, tX @ q["W_xh"], tm, state0, 0, T)
    assert_close(Y, torch.stack(outs).numpy(), dtype, "Y")
    want_T = st[0][0] if P * L == 1 else torch.stack([ls[k] for k in range(P) for ls in st])
    assert_close(cache.state, want_T.numpy(), dtype, "state_T")
    g, gT = torch.tensor(dHs.astype(np.float64)), split_state(torch.tensor(dH_T.astype(np.float64)), P, L)

    def final(st):
        return sum((a * b).sum() for ls, gs in zip(st, gT) for a, b in zip(ls, gs))

    torch_grads(torch, cell, q, L, bptt_plan(bptt, T, B, np.float64), tX @ q["W_xh"], state0, tm,
                lambda t, y: (y * g[t]).sum(), final)
    assert list(grads) == list(m.params)
    for k in grads:
        assert grads[k].dtype == dtype
        assert_close(grads[k], q[k].grad.numpy(), dtype, f"grads[{k}]")
    assert_close(dX, tX.grad.numpy(), dtype, "dX")
    assert_close(dh0, th0.grad.numpy(), dtype, "dh0")


# ----------------------------------------------------------------------------- the language model
def lm_case(backend, dtype, cell, seed, L=1, dropout=0.0, V=7, H=5, B=3, T=6, input_dropout=None):
    rng = np.random.default_rng(seed)
    m = randomized(fastseq.RNNLM(V, H, dtype=dtype, backend=backend, cell=cell, num_layers=L, dropout=dropout,
                                 input_dropout=input_dropout), rng)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    state = rng.normal(0, 0.5, m.state_shape(B)).astype(dtype)
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
    """Today's numbers of the plain RNN, by a per-sequence loop (no torch)."""
    m, X, Y, state, _ = lm_case(backend, dtype, "rnn_" + nl, seed=11)
    logits, new_state = m(X, state)
    want_logits, want_state = naive_logits(f64(m.params), X, state, nl)
    assert logits.dtype == dtype and new_state.dtype == dtype
    assert_close(logits, want_logits, dtype, "logits")
    assert_close(new_state, want_state, dtype, "state")
    loss, _, s2 = m.loss_and_grad(X, Y, state)
    assert isinstance(loss, float)
    assert_close(loss, naive_loss(want_logits, Y), dtype, "loss")
    assert_close(s2, want_state, dtype, "loss_and_grad state")


def lm_masks(seed, p, L, T, B, GH, H, dtype):
    """The model's documented draw from Generator(seed): m_in, m_layers, m_out in that order."""
    if p == 0:
        return None, None, None
    rng = np.random.default_rng(seed)
    m_in = masks_of(rng, p, (T, B, GH), dtype)
    m_layers = masks_of(rng, p, (L - 1, T, B, H), dtype) if L > 1 else None
    return m_in, m_layers, masks_of(rng, p, (T, B, H), dtype)


@pytest.mark.parametrize("backend, dtype, cell, L, kind", GRAD_CASES)
def test_lm_loss_grads_and_state_match_the_oracle(backend, dtype, cell, L, kind):
    torch = pytest.importorskip("torch")
    p_drop = lm_dropout(cell, L)
    m, X, Y, state, rng = lm_case(backend, dtype, cell, seed_of(backend, cell, L, kind), L=L, dropout=p_drop)
    B, T = X.shape
    H, P, GH = m.num_hiddens, (2 if cell == "lstm" else 1), GATES[cell] * m.num_hiddens
    bptt = strategy(kind, T, B, rng)
    loss, grads, new_state = m.loss_and_grad(X, Y, state, bptt=bptt, rng=np.random.default_rng(5))
    m_in, m_layers, m_out = (None if a is None else torch.tensor(a.astype(np.float64))
                             for a in lm_masks(5, p_drop, L, T, B, GH, H, dtype))
    q = leaves(torch, m.params)
    _, state0 = torch_state(torch, state, P, L)
    rows = q["W_xh"][torch.tensor(X.T)]
    proj0 = rows if m_in is None else rows * m_in
    tY, total = torch.tensor(Y), [0.0]

    def term(t, y):
        y = y if m_out is None else y * m_out[t]
        O = y @ q["W_hq"] + q["b_q"]
        ce = torch.nn.functional.cross_entropy(O, tY[:, t], reduction="sum") / (B * T)
        total[0] += float(ce.detach())
        return ce

    torch_grads(torch, cell, q, L, bptt_plan(bptt, T, B, np.float64), proj0, state0, m_layers, term,
                lambda st: 0)
    if kind in ("full", "block", "randomized"):       # one pass over the steps: its terms are the loss
        assert_close(loss, total[0], dtype, "loss")
    with torch.no_grad():
        _, st = stack_run(torch_fns(torch), cell, q, L, proj0, m_layers, state0, 0, T)
    want_T = st[0][0] if P * L == 1 else torch.stack([ls[k] for k in range(P) for ls in st])
    assert_close(new_state, want_T.numpy(), dtype, "new_state")
    assert list(grads) == list(m.params)
    for k in grads:
        assert grads[k].dtype == dtype
        assert_close(grads[k], q[k].grad.numpy(), dtype, f"grads[{k}]")


@pytest.mark.parametrize("backend", OPS_NAMES)
@pytest.mark.parametrize("cell", CELLS)
def test_evaluation_never_drops(backend, cell):
    """Only loss_and_grad given an rng drops: without one it equals a dropout-free model, and __call__,
    generate and state_grads are the dropout-free model's."""
    m, X, Y, state, _ = lm_case(backend, np.float64, cell, seed=3, L=2, dropout=0.5)
    plain = fastseq.RNNLM(7, 5, dtype=np.float64, backend="numpy", cell=cell, num_layers=2)
    plain.load_state_dict(m.state_dict())
    for a, b in zip(m(X, state), plain(X, state)):
        assert_close(a, b, np.float64, "call")
    la, ga, _ = m.loss_and_grad(X, Y, state)
    lb, gb, _ = plain.loss_and_grad(X, Y, state)
    assert_close(la, lb, np.float64, "loss")
    for k in ga:
        assert_close(ga[k], gb[k], np.float64, k)
    np.testing.assert_array_equal(m.generate([1, 2], 8), plain.generate([1, 2], 8))
    assert_close(m.state_grads(X, Y, state), plain.state_grads(X, Y, state), np.float64, "state_grads")
    ld, _, _ = m.loss_and_grad(X, Y, state, rng=np.random.default_rng(0))
    assert ld != la                                   # and training does drop
    with pytest.raises(ArgumentError, match="^rng: expected None or a numpy.random.Generator, got int"):
        m.loss_and_grad(X, Y, state, rng=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("input_dropout", [0.0, 0.5])
def test_input_dropout_is_its_own_and_both_backends_see_the_same_masks(dtype, input_dropout):
    """input_dropout sets m_in's probability alone (0: m_in is not drawn at all, so m_layers and m_out
    come first from the Generator); both ops get the masks of the documented draw and agree."""
    L, p = 2, 0.3
    ref = None
    for backend in OPS_NAMES:
        m, X, Y, state, _ = lm_case(backend, dtype, "lstm", 41, L=L, dropout=p, input_dropout=input_dropout)
        B, T = X.shape
        got = m.loss_and_grad(X, Y, state, rng=np.random.default_rng(8))
        rng = np.random.default_rng(8)
        want_masks = (None if input_dropout == 0 else masks_of(rng, input_dropout, (T, B, 4 * 5), dtype),
                      masks_of(rng, p, (L - 1, T, B, 5), dtype), masks_of(rng, p, (T, B, 5), dtype))
        ids, Yc, s0, plan = m._step_inputs(X, Y, state, None)
        want = m.ops.lm_loss_and_grad(m.cell, ids, Yc, s0, m.params, plan, want_masks)
        assert got[0] == want[0]
        for k in want[1]:
            np.testing.assert_array_equal(got[1][k], want[1][k], err_msg=k)
        if ref is None:
            ref = got
        else:                                         # the C++ and NumPy ops on the same masks
            assert_close(got[0], ref[0], dtype, "loss")
            for k in ref[1]:
                assert_close(got[1][k], ref[1][k], dtype, k)
    with_in = lm_case("numpy", dtype, "lstm", 41, L=L, dropout=p)[0]
    loss_in = with_in.loss_and_grad(X, Y, state, rng=np.random.default_rng(8))[0]
    assert (loss_in == got[0]) == (input_dropout == p)   # None (the default) is dropout's probability


def test_input_dropout_in_the_config_and_its_checks():
    m = fastseq.RNNLM(7, 5, cell="gru", dropout=0.2, input_dropout=0.0)
    assert m.config["input_dropout"] == 0.0 and m.config["dropout"] == 0.2
    assert fastseq.RNNLM.from_config(m.config).input_dropout == 0.0
    old = {k: v for k, v in m.config.items() if k != "input_dropout"}     # a config from before the option
    assert fastseq.RNNLM.from_config(old).input_dropout == 0.2
    only_in = fastseq.RNNLM(7, 5, cell="gru", dropout=0.0, input_dropout=0.4)
    masks = only_in.draw_masks(np.random.default_rng(0), 3, 2)
    assert masks[0].shape == (3, 2, 15) and masks[1] is None and masks[2] is None
    assert fastseq.RNNLM(7, 5, dropout=0.0, input_dropout=0.0).draw_masks(np.random.default_rng(0), 3, 2) is None
    for bad in (1.0, -0.1, "x", float("nan")):
        with pytest.raises(ArgumentError, match="^input_dropout:"):
            fastseq.RNNLM(7, 5, input_dropout=bad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", STRATEGIES)
def test_cpp_and_numpy_ops_agree_on_every_call(dtype, kind):
    """Without an oracle: the two ops on the same model and inputs, every call."""
    m, X, Y, state, rng = lm_case("cpp", dtype, "rnn_tanh", seed=5, V=11, H=9, B=4, T=8)
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
def naive_generate(p, prefix, n, nl, temperature, top_k, uniforms, bias=None, cell=None, L=1):
    """The sampling rule written out: softmax with temperature over the top_k, inverse CDF at u; the
    plain RNN's step by default, any cell's (cell_step, L layers) when cell is given."""
    b_q = p["b_q"] + (0 if bias is None else bias)
    H = p["W_hh"].shape[0]
    P = 2 if cell == "lstm" else 1
    state = [tuple(np.zeros((1, H)) for _ in range(P)) for _ in range(L)]
    out = []
    tok = None
    for i in range(len(prefix) + n - 1):
        tok = prefix[i] if i < len(prefix) else out[-1]
        if cell is None:
            h = phi(p["W_xh"][tok] + p["b_h"] + state[0][0][0] @ p["W_hh"], nl)
            state[0] = (h[None],)
        else:
            x = None
            for l in range(L):
                s = sfx(l)
                gi = (p["W_xh"][tok][None] if l == 0 else x @ p["W_xh" + s]) + p["b_h" + s]
                state[l] = cell_step(NP, cell, p, s, gi, state[l])
                x = state[l][0]
        if i < len(prefix) - 1:
            continue
        logits = state[-1][0][0] @ p["W_hq"] + b_q
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


@pytest.mark.parametrize("backend, cell, L", [(b, c, L)
                                              for b in OPS_NAMES for c in CELLS for L in (1, 2)])
@pytest.mark.parametrize("temperature, top_k", [(0.0, 0), (0.8, 3)])
def test_generation_of_every_cell_and_depth_matches_the_oracle(backend, cell, L, temperature, top_k):
    rng = np.random.default_rng(seed_of(cell, L))
    m = randomized(fastseq.RNNLM(9, 6, dtype=np.float64, backend=backend, cell=cell, num_layers=L), rng, 0.8)
    u = rng.random(30)
    got = m.generate([1, 4, 2], 30, temperature=temperature, top_k=top_k, uniforms=u)
    np.testing.assert_array_equal(got, naive_generate(m.params, [1, 4, 2], 30, None, temperature, top_k, u,
                                                      cell=cell, L=L))


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
    assert list(m.config) == list(cls._CONFIG_KEYS) and m.config["cell"] == "rnn_relu"
    again = cls.from_config(m.config, backend=backend)
    assert type(again) is cls and again.config == m.config and again.backend == backend
    assert cls.from_config(m.config).backend == "cpp"
    assert getattr(reference, cls.__name__).from_config(m.config).backend == "numpy"
    # a config of before the cells (a nonlinearity, no cell, layers or dropout) still loads
    old = {k: v for k, v in m.config.items() if k not in ("cell", "num_layers", "dropout")}
    assert cls.from_config(dict(old, nonlinearity="relu"), backend=backend).config == m.config
    stack = cls(*sizes, cell="lstm", num_layers=3, dropout=0.25, backend="numpy")
    assert cls.from_config(stack.config, backend="numpy").config == stack.config
    assert stack.config["cell"] == "lstm" and stack.config["num_layers"] == 3 and stack.config["dropout"] == 0.25
    with pytest.raises(ArgumentError, match="config: expected a dict, got list"):
        cls.from_config([1, 2])
    with pytest.raises(ArgumentError, match="config: unexpected key 'cells'"):
        cls.from_config(dict(m.config, cells="gru"))
    with pytest.raises(ArgumentError, match="nonlinearity: 'tanh' conflicts with cell 'rnn_relu'"):
        cls.from_config(dict(m.config, nonlinearity="tanh"))
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
    (lambda H, b: fastseq.RNNLM(30, 64, num_layers=H * H // 4096, backend="numpy"), "num_layers"),
    (lambda H, b: fastseq.RNN(3, 300, cell="lstm", num_layers=H * H // 300000, backend="numpy"), "num_layers"),
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


@pytest.mark.parametrize("backend, cell, L", [(b, c, L)
                                              for b in OPS_NAMES for c in CELLS for L in (1, 2)])
@pytest.mark.parametrize("term", [None, 0, 3, -1])
def test_state_grads_are_dL_dH_by_autograd(backend, cell, L, term):
    """state_grads: dL/dH_t of the top layer for the step's loss (or one loss term), on either ops."""
    torch = pytest.importorskip("torch")
    m, X, Y, state, _ = lm_case(backend, np.float64, cell, seed=21, L=L, dropout=lm_dropout(cell, L))  # never drops
    B, T = X.shape
    P = 2 if cell == "lstm" else 1
    dH = m.state_grads(X, Y, state, term=term)
    assert dH.shape == (T, B, m.num_hiddens) and dH.dtype == np.float64
    q = leaves(torch, m.params)
    _, st = torch_state(torch, state, P, L)
    proj0 = q["W_xh"][torch.tensor(X.T)]
    Hs, loss = [], 0
    for t in range(T):
        outs, st = stack_run(torch_fns(torch), cell, q, L, proj0, None, st, t, t + 1)
        h = outs[0]
        h.retain_grad()
        Hs.append(h)
        if term is None or t == term % T:
            O = h @ q["W_hq"] + q["b_q"]
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
