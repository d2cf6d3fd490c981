"""The reference cells (fastseq.reference.cells): finite differences for every cell, parameter, input
and state under every BPTT strategy and depth; equality with PyTorch's nn.RNN / nn.GRU / nn.LSTM; the
layer 0 fed its input projection (the language model's row gather); the strategies' identities.

Legend: T steps, B batch, D input, H hidden, L layers.
"""
import numpy as np
import pytest

from fastseq.bptt import Full, Randomized, Truncated
from fastseq.errors import ArgumentError
from fastseq.reference.cells import (CELLS, dropout_masks, get_cell, init_stack, stack_backward,
                                     stack_forward)
from gradcheck import fd_grad

T, B, D, H = 5, 2, 3, 3
NAMES = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
XI = np.array([[1.0, 2.5], [0.0, 1.25], [2.5, 0.0], [1.25, 1.25], [0.0, 2.5]])   # a fixed draw, (T, B)
STRATEGIES = {
    "full": Full(),
    "block": Truncated(2),
    "sliding": Truncated(2, mode="sliding"),
    "randomized": Randomized(xi=XI),
}


def problem(name, L, dropout=0.0, seed=0, T=T):
    """Random float64 parameters, inputs, entering state, upstream gradients and dropout masks."""
    rng = np.random.default_rng(seed)
    cell = get_cell(name)
    params = init_stack(name, D, H, L, rng=rng)
    for p in params:                                     # larger than PyTorch's init: exercise the gates
        for a in p.values():
            a[...] = rng.normal(0, 0.7, a.shape)
    if name == "rnn_relu":                               # keep pre-activations away from the kink
        for p in params:
            p["bias_ih"] += 1.0
    X = rng.normal(size=(T, B, D))
    state0 = tuple(rng.normal(size=(L, B, H)) for _ in cell.state_parts)
    G = rng.normal(size=(T, B, H))                       # L = <G, Y> + sum_k <g_T[k], state_T[k]>
    g_T = tuple(rng.normal(size=(L, B, H)) for _ in cell.state_parts)
    masks = dropout_masks(rng, dropout, L, T, B, H)
    return cell, params, X, state0, G, g_T, masks


# ------------------------------------------------------------------ the surrogate losses (written here)
def run(cell, params, X, state, masks, start=0, stop=None, hold=None, base=None):
    """The stack's own time loop, steps start..stop-1 from the stacked state `state` (a list of per-layer
    tuples) -> (Y per step, final state). hold (T, B), with base states: the state entering step t is
    hold[t] * state + (1 - hold[t]) * base[t], i.e. its derivative is scaled by hold[t], its value kept."""
    stop = X.shape[0] if stop is None else stop
    state = list(state)                                  # the caller's list (e.g. a base state) stays
    Ys = {}
    for t in range(start, stop):
        if hold is not None:
            w = hold[t][:, None]
            state = [tuple(w * s + (1 - w) * sb for s, sb in zip(ls, lb)) for ls, lb in zip(state, base[t])]
        x = X[t]
        for l, p in enumerate(params):
            state[l], _ = cell.forward(p, x, state[l])
            x = state[l][0] if masks is None or l == len(params) - 1 else state[l][0] * masks[l, t]
        Ys[t] = x
    return Ys, state


def layers(state0):
    return [tuple(s[l] for s in state0) for l in range(state0[0].shape[0])]


def surrogate(cell, params, X, state0, G, g_T, masks, plan):
    """A scalar whose exact gradient is the strategy's gradient; base states are frozen copies."""
    scale, window = plan
    T = X.shape[0]
    base = []                                            # the stacked state entering each step
    state = layers(state0)
    for t in range(T):
        base.append([tuple(s.copy() for s in ls) for ls in state])
        _, state = run(cell, params, X, state, masks, t, t + 1)

    def final_term(state):
        return sum(float(np.sum(g_T[k][l] * state[l][k])) for l in range(len(state)) for k in range(len(g_T)))

    def L():
        if window == 0:
            hold = np.ones((T, X.shape[1])) if scale is None else scale
            Ys, state = run(cell, params, X, layers(state0), masks, hold=hold, base=base)
            return sum(float(np.sum(G[t] * Ys[t])) for t in range(T)) + final_term(state)
        total = 0.0
        for t in range(T):                              # term t runs its last `window` steps only
            s = max(0, t - window + 1)
            entering = layers(state0) if s == 0 else base[s]
            Ys, state = run(cell, params, X, entering, masks, s, t + 1)
            total += float(np.sum(G[t] * Ys[t])) + (final_term(state) if t == T - 1 else 0.0)
        return total
    return L


def analytic(cell, params, X, state0, G, g_T, masks, plan):
    Y, state_T, cache = stack_forward(cell, params, X, state0, masks)
    return stack_backward(cell, params, G, cache, g_T, plan)


def assert_rel(a, b, rtol):
    """max |a - b| <= rtol * max |b| (relative to the array's scale)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.max(np.abs(a - b)) <= rtol * max(np.max(np.abs(b)), 1e-300), np.max(np.abs(a - b))


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name, strategy, L):
    cell, params, X, state0, G, g_T, masks = problem(name, L, dropout=0.4 if L == 2 else 0.0)
    plan = STRATEGIES[strategy].plan(T, B)
    dX, dstate0, grads = analytic(cell, params, X, state0, G, g_T, masks, plan)
    arrays = {"X": X, **{f"{k}0": s for k, s in zip(cell.state_parts, state0)},
              **{f"{l}.{n}": a for l, p in enumerate(params) for n, a in p.items()}}
    num = fd_grad(surrogate(cell, params, X, state0, G, g_T, masks, plan), arrays)
    got = {"X": dX, **{f"{k}0": s for k, s in zip(cell.state_parts, dstate0)},
           **{f"{l}.{n}": a for l, g in enumerate(grads) for n, a in g.items()}}
    assert set(got) == set(num)
    for k in num:
        np.testing.assert_allclose(got[k], num[k], rtol=1e-6, atol=1e-8, err_msg=k)


def test_final_state_gradients_reach_every_part():
    """dc_T alone (no loss on outputs) must reach c0, h0, X and the weights of an LSTM (the c path)."""
    cell, params, X, state0, G, g_T, masks = problem("lstm", 2)
    G = np.zeros_like(G)
    g_T = (np.zeros_like(g_T[0]), g_T[1])
    dX, (dh0, dc0), grads = analytic(cell, params, X, state0, G, g_T, masks, (None, 0))
    num = fd_grad(surrogate(cell, params, X, state0, G, g_T, masks, (None, 0)),
                  {"X": X, "h0": state0[0], "c0": state0[1]})
    for k, a in {"X": dX, "h0": dh0, "c0": dc0}.items():
        assert np.max(np.abs(a)) > 1e-3, k
        np.testing.assert_allclose(a, num[k], rtol=1e-6, atol=1e-8, err_msg=k)


# ------------------------------------------------------------------ strategies' identities
@pytest.mark.parametrize("name", NAMES)
def test_long_windows_and_unit_xi_equal_full(name):
    cell, params, X, state0, G, g_T, masks = problem(name, 2, dropout=0.3, seed=3)
    full = analytic(cell, params, X, state0, G, g_T, masks, Full().plan(T, B))
    others = [Truncated(T), Truncated(T + 3), Truncated(T, mode="sliding"), Truncated(T + 3, mode="sliding"),
              Randomized(xi=np.ones((T, B)))]
    for s in others:
        dX, dstate0, grads = analytic(cell, params, X, state0, G, g_T, masks, s.plan(T, B))
        assert_rel(dX, full[0], 1e-13)
        for a, b in zip(dstate0, full[1]):
            assert_rel(a, b, 1e-13)
        for g, f in zip(grads, full[2]):
            for n in f:
                assert_rel(g[n], f[n], 1e-13)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_truncation_cuts_the_whole_state(name):
    """Block truncation at every step: h0 and c0 get exactly the gradient of step 0 alone."""
    cell, params, X, state0, G, g_T, masks = problem(name, 1, T=4)
    G[1:] = 0
    g_T = tuple(np.zeros_like(g) for g in g_T)
    cut = analytic(cell, params, X, state0, G, g_T, masks, Truncated(1).plan(4, B))
    first = analytic(cell, params, X[:1], state0, G[:1], None, masks, Full().plan(1, B))
    for a, b in zip(cut[1], first[1]):
        assert_rel(a, b, 1e-13)
    G2 = np.zeros_like(G)
    G2[-1] = 1.0                                        # a loss at the last step only
    cut = analytic(cell, params, X, state0, G2, g_T, masks, Truncated(1).plan(4, B))
    for a in cut[1]:
        assert np.all(a == 0)                           # no path left to the entering state, c included


# ------------------------------------------------------------------ a layer 0 fed its input projection
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("name", NAMES)
def test_layer_without_weight_ih_reads_its_input_projection(name, strategy):
    """The LM's path (gathered rows of W_xh): X W_ih^T given as the input equals weight_ih given, for
    the outputs, the states and every gradient (dX maps back through weight_ih)."""
    cell, params, X, state0, G, g_T, masks = problem(name, 2, dropout=0.4)
    plan = STRATEGIES[strategy].plan(T, B)
    W = params[0]["weight_ih"]
    proj = [{k: v for k, v in params[0].items() if k != "weight_ih"}] + params[1:]
    Y, state_T, cache = stack_forward(cell, params, X, state0, masks)
    Yp, state_Tp, cache_p = stack_forward(cell, proj, X @ W.T, state0, masks)
    assert_rel(Yp, Y, 1e-14)
    for a, b in zip(state_Tp, state_T):
        assert_rel(a, b, 1e-14)
    dX, dstate0, grads = stack_backward(cell, params, G, cache, g_T, plan)
    dP, dstate0_p, grads_p = stack_backward(cell, proj, G, cache_p, g_T, plan)
    assert dP.shape == (T, B, cell.gates * H) and "weight_ih" not in grads_p[0]
    assert_rel(dP @ W, dX, 1e-13)
    assert_rel(np.einsum("tbg,tbd->gd", dP, X), grads[0]["weight_ih"], 1e-13)
    for a, b in zip(dstate0_p, dstate0):
        assert_rel(a, b, 1e-13)
    for gp, g in zip(grads_p, grads):
        for k in gp:
            assert_rel(gp[k], g[k], 1e-13)


def test_dH_out_is_the_top_layers_total_gradient():
    """dH_out[t] = dL/dH_t of the top layer: by finite differences on a surrogate that adds a
    perturbation e_t to the top layer's H_t (Full plan, so the derivative in e_t is the whole one)."""
    cell, params, X, state0, G, g_T, masks = problem("lstm", 2, dropout=0.4)
    Y, _, cache = stack_forward(cell, params, X, state0, masks)
    dH = np.empty_like(Y)
    stack_backward(cell, params, G, cache, g_T, (None, 0), dH_out=dH)
    E = np.zeros_like(Y)

    def L():
        state, total = layers(state0), 0.0
        for t in range(T):
            x = X[t]
            for l, p in enumerate(params):
                state[l], _ = cell.forward(p, x, state[l])
                if l == len(params) - 1:
                    state[l] = (state[l][0] + E[t],) + state[l][1:]
                x = state[l][0] if l == len(params) - 1 else state[l][0] * masks[l, t]
            total += float(np.sum(G[t] * x))
        return total + sum(float(np.sum(g_T[k][l] * state[l][k])) for l in range(len(params)) for k in range(2))
    np.testing.assert_allclose(dH, fd_grad(L, {"E": E})["E"], rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ PyTorch
TORCH_CLASS = {"rnn_tanh": ("RNN", {"nonlinearity": "tanh"}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
               "gru": ("GRU", {}), "lstm": ("LSTM", {})}


def torch_module(torch, name, params, input_size):
    cls, kw = TORCH_CLASS[name]
    m = getattr(torch.nn, cls)(input_size, H, num_layers=len(params), dtype=torch.float64, **kw)
    with torch.no_grad():
        for l, p in enumerate(params):
            for n, a in p.items():
                getattr(m, f"{n}_l{l}").copy_(torch.from_numpy(a))
    return m


def torch_run(torch, modules, name, X, state0, G, g_T, masks=None):
    """Run torch modules in sequence (one per layer when masks are given, the mask between them)."""
    Xt = torch.tensor(X, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in state0]
    x, finals = Xt, []
    for l, m in enumerate(modules):
        sl = [s[l:l + 1] for s in st] if len(modules) > 1 else st
        x, fin = m(x, tuple(sl) if name == "lstm" else sl[0])
        finals.append(fin if name == "lstm" else (fin,))
        if masks is not None and l < len(modules) - 1:
            x = x * torch.from_numpy(masks[l])
    parts = [torch.cat([f[k] for f in finals]) for k in range(len(state0))]
    loss = (x * torch.from_numpy(G)).sum() + sum((p * torch.from_numpy(g)).sum() for p, g in zip(parts, g_T))
    loss.backward()
    grads = [{n: getattr(m, f"{n}_l{i}").grad.numpy() for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
             for m in modules for i in range(m.num_layers)]
    return (x.detach().numpy(), [p.detach().numpy() for p in parts], Xt.grad.numpy(),
            [s.grad.numpy() for s in st], grads)


def compare(mine, theirs, rtol=1e-10):
    Y, state_T, dX, dstate0, grads = mine
    tY, tstate, tdX, tdstate0, tgrads = theirs
    assert_rel(Y, tY, rtol)
    assert_rel(dX, tdX, rtol)
    for a, b in zip(state_T, tstate):
        assert_rel(a, b, rtol)
    for a, b in zip(dstate0, tdstate0):
        assert_rel(a, b, rtol)
    assert len(grads) == len(tgrads)
    for g, tg in zip(grads, tgrads):
        assert set(g) == set(tg)
        for n in g:
            assert_rel(g[n], tg[n], rtol)


def mine(cell, params, X, state0, G, g_T, masks):
    Y, state_T, cache = stack_forward(cell, params, X, state0, masks)
    dX, dstate0, grads = stack_backward(cell, params, G, cache, g_T, (None, 0))
    return Y, state_T, dX, dstate0, grads


@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_equal_to_pytorch(name, L):
    torch = pytest.importorskip("torch")
    cell, params, X, state0, G, g_T, _ = problem(name, L, seed=5)
    m = torch_module(torch, name, params, D)
    compare(mine(cell, params, X, state0, G, g_T, None), torch_run(torch, [m], name, X, state0, G, g_T))


@pytest.mark.parametrize("name", NAMES)
def test_dropout_between_layers_as_pytorch_places_it(name):
    """nn.LSTM(dropout=p) drops the outputs of every layer but the last: with our mask, a 2-layer stack
    equals two 1-layer torch modules with the same mask between them."""
    torch = pytest.importorskip("torch")
    cell, params, X, state0, G, g_T, masks = problem(name, 2, dropout=0.5, seed=6)
    assert masks is not None and np.any(masks == 0)
    ms = [torch_module(torch, name, [params[0]], D), torch_module(torch, name, [params[1]], H)]
    compare(mine(cell, params, X, state0, G, g_T, masks), torch_run(torch, ms, name, X, state0, G, g_T, masks))


@pytest.mark.parametrize("strategy", ["block", "randomized"])
@pytest.mark.parametrize("name", NAMES)
def test_scaled_plans_equal_pytorch_with_a_held_state(name, strategy):
    """scale[t] on the whole state, checked by torch itself: run nn.* one step at a time and feed step t
    the state w * s + (1 - w) * s.detach() with w = scale[t] (its value unchanged, its derivative scaled)."""
    torch = pytest.importorskip("torch")
    cell, params, X, state0, G, g_T, _ = problem(name, 2, seed=7)
    scale, window = STRATEGIES[strategy].plan(T, B)
    m = torch_module(torch, name, params, D)
    Xt = torch.tensor(X, requires_grad=True)
    st0 = [torch.tensor(s, requires_grad=True) for s in state0]
    st, ys = st0, []
    for t in range(T):
        w = torch.from_numpy(scale[t])[None, :, None]
        st = [w * s + (1 - w) * s.detach() for s in st]
        y, fin = m(Xt[t:t + 1], tuple(st) if name == "lstm" else st[0])
        st = list(fin) if name == "lstm" else [fin]
        ys.append(y)
    loss = (torch.cat(ys) * torch.from_numpy(G)).sum() + sum((s * torch.from_numpy(g)).sum() for s, g in zip(st, g_T))
    loss.backward()
    dX, dstate0, grads = analytic(cell, params, X, state0, G, g_T, None, (scale, window))
    assert_rel(dX, Xt.grad.numpy(), 1e-10)
    for a, s in zip(dstate0, st0):
        assert_rel(a, s.grad.numpy(), 1e-10)
    for l, g in enumerate(grads):
        for n in g:
            assert_rel(g[n], getattr(m, f"{n}_l{l}").grad.numpy(), 1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_float32_agrees_with_float64(name):
    cell, params, X, state0, G, g_T, masks = problem(name, 2, dropout=0.3, seed=8)
    plan = Truncated(2, mode="sliding").plan(T, B)
    ref = analytic(cell, params, X, state0, G, g_T, masks, plan)
    f32 = lambda a: a.astype(np.float32)                                           # noqa: E731
    low = analytic(cell, [{n: f32(a) for n, a in p.items()} for p in params], f32(X),
                   tuple(map(f32, state0)), f32(G), tuple(map(f32, g_T)), f32(masks), plan)
    assert low[0].dtype == np.float32
    assert_rel(low[0], ref[0], 1e-4)
    for a, b in zip(low[1], ref[1]):
        assert_rel(a, b, 1e-4)
    for g, r in zip(low[2], ref[2]):
        for n in r:
            assert g[n].dtype == np.float32
            assert_rel(g[n], r[n], 1e-4)


# ------------------------------------------------------------------ registry, init, masks, arguments
def test_registry_and_parameter_layout():
    assert set(CELLS) == set(NAMES)
    gates = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
    for name in NAMES:
        cell = get_cell(name)
        assert get_cell(cell) is cell and cell.name == name
        assert cell.state_parts == (("h", "c") if name == "lstm" else ("h",))
        p = init_stack(name, 7, 5, 2, rng=np.random.default_rng(1), dtype=np.float32)
        g = gates[name]
        assert {n: a.shape for n, a in p[0].items()} == {
            "weight_ih": (g * 5, 7), "weight_hh": (g * 5, 5), "bias_ih": (g * 5,), "bias_hh": (g * 5,)}
        assert p[1]["weight_ih"].shape == (g * 5, 5)
        for a in p[0].values():
            assert a.dtype == np.float32
            assert np.all(np.abs(a) <= 1 / np.sqrt(5)) and np.std(a) > 0.1
        again = init_stack(name, 7, 5, 2, rng=np.random.default_rng(1), dtype=np.float32)
        assert all(np.array_equal(a, again[0][n]) for n, a in p[0].items())


def test_dropout_masks():
    assert dropout_masks(np.random.default_rng(0), 0.0, 3, T, B, H) is None
    assert dropout_masks(np.random.default_rng(0), 0.5, 1, T, B, H) is None
    m = dropout_masks(np.random.default_rng(0), 0.25, 3, 50, 40, 30)
    assert m.shape == (2, 50, 40, 30)
    assert set(np.unique(m)) == {0.0, 1 / 0.75}
    assert abs(np.mean(m == 0) - 0.25) < 0.01
    again = dropout_masks(np.random.default_rng(0), 0.25, 3, 50, 40, 30)
    assert np.array_equal(m, again)                     # the caller's Generator decides the mask
    # the documented draw, uniforms in the mask's dtype: float32 draws its own, float64 the float64 ones
    for dt in (np.float32, np.float64):
        m = dropout_masks(np.random.default_rng(4), 0.25, 2, 50, 40, 30, dtype=dt)
        u = np.random.default_rng(4).random((1, 50, 40, 30), dtype=dt)
        assert m.dtype == dt
        np.testing.assert_array_equal(m, np.where(u >= dt(0.25), dt(1 / 0.75), dt(0)))


@pytest.mark.parametrize("call, message", [
    (lambda: get_cell("lstm2"), "cell:"),
    (lambda: init_stack("gru", 0, 4), "input_size:"),
    (lambda: init_stack("gru", 3, 4, num_layers=0), "num_layers:"),
    (lambda: dropout_masks(np.random.default_rng(0), 1.0, 2, T, B, H), "dropout:"),
    (lambda: dropout_masks(np.random.default_rng(0), -0.1, 2, T, B, H), "dropout:"),
    (lambda: dropout_masks(0, 0.5, 2, T, B, H), "rng:"),
    (lambda: dropout_masks(np.random.default_rng(0), 0.5, 2, T, B, H, dtype=np.int32), "dtype:"),
])
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises(ArgumentError, match=f"^{message}"):
        call()


def test_bad_stack_calls_name_the_argument():
    cell, params, X, state0, G, g_T, masks = problem("lstm", 2, dropout=0.5)
    bad_forward = [
        ((params, X[0], state0, masks), "X:"),
        ((params, X.astype(np.int64), state0, masks), "X:"),
        (([], X, state0, masks), "params:"),
        (([params[0], {**params[1], "weight_hh": params[1]["weight_hh"][:, :2]}], X, state0, masks),
         r"params\[1\]\['weight_hh'\]:"),
        (([params[0], {k: v for k, v in params[1].items() if k != "bias_hh"}], X, state0, masks),
         r"params\[1\]:"),
        (([{k: v.astype(np.float32) for k, v in p.items()} for p in params], X, state0, masks),
         r"params\[0\]\['weight_ih'\]:"),
        ((params, X, state0[:1], masks), "state0:"),
        ((params, X, (state0[0], state0[1][:1]), masks), r"state0 \(c\):"),
        ((params, X, state0, masks[:, :2]), "masks:"),
    ]
    for args, message in bad_forward:
        with pytest.raises(ArgumentError, match=f"^{message}"):
            stack_forward("lstm", *args)
    _, _, cache = stack_forward("lstm", params, X, state0, masks)
    bad_backward = [
        ((params, G[:2], cache, g_T, (None, 0)), "dY:"),
        ((params, G, cache, g_T[:1], (None, 0)), "dstate_T:"),
        ((params, G, cache, (g_T[0], g_T[1][:, :1]), (None, 0)), r"dstate_T \(c\):"),
        ((params, G, cache, g_T, (None, -1)), "window:"),
        ((params, G, cache, g_T, (np.ones((T, B)), 2)), "plan:"),
        ((params, G, cache, g_T, (np.ones((T + 1, B)), 0)), "scale:"),
        ((params[:1], G, cache, g_T, (None, 0)), "cache:"),
    ]
    for args, message in bad_backward:
        with pytest.raises(ArgumentError, match=f"^{message}"):
            stack_backward("lstm", *args)
