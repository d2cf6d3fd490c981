"""fastseq.interop against real PyTorch modules (nn.RNN, nn.GRU, nn.LSTM, 1-3 layers): same logits, same
final state, same gradients (float64, 1e-10 relative)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastseq import interop  # noqa: E402
from fastseq.reference.rnn import RNNLM  # noqa: E402

V, H, B, T = 11, 7, 3, 6


def _model(nonlinearity=None, seed=0, cell=None, num_layers=1):
    m = RNNLM(V, H, nonlinearity=nonlinearity, dtype=np.float64, seed=seed, cell=cell, num_layers=num_layers)
    rng = np.random.default_rng(seed + 100)
    for k, p in m.params.items():   # biases non-zero too, weights large enough to matter
        p[...] = rng.normal(0, 0.4, p.shape)
    return m


def _data(seed=1):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, V, (B, T)).astype(np.int32)
    Y = rng.integers(0, V, (B, T)).astype(np.int32)
    h0 = rng.normal(0, 0.5, (B, H))
    return X, Y, h0


def test_export_names_and_layouts():
    m = _model()
    sd = interop.to_torch_state_dict(m, prefix="lm.")
    assert list(sd) == ["lm." + k for k in interop.KEYS]
    assert sd["lm.rnn.weight_ih_l0"].shape == (H, V) and sd["lm.linear.weight"].shape == (V, H)
    ref = torch.nn.RNN(V, H)
    for name, p in ref.state_dict().items():
        assert tuple(sd["lm.rnn." + name].shape) == tuple(p.shape)
    torch.testing.assert_close(sd["lm.rnn.bias_hh_l0"], torch.zeros(H, dtype=torch.float64))
    torch.testing.assert_close(sd["lm.rnn.bias_ih_l0"], torch.from_numpy(m.params["b_h"]))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_exported_torch_model_same_logits_state_and_gradients(nonlinearity):
    m = _model(nonlinearity)
    X, Y, h0 = _data()
    tm = interop.torch_module(m)
    assert tm.rnn.nonlinearity == nonlinearity
    logits_t, hT_t = tm(torch.from_numpy(X.astype(np.int64)), torch.from_numpy(h0)[None])
    logits, hT = m(X, h0)
    np.testing.assert_allclose(logits_t.detach().numpy(), logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hT_t[0].detach().numpy(), hT, rtol=1e-12, atol=1e-12)

    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, V), torch.from_numpy(Y.astype(np.int64)).reshape(-1))
    loss_t.backward()
    loss, grads, _ = m.loss_and_grad(X, Y, h0)
    assert loss == pytest.approx(loss_t.item(), rel=1e-12)
    g = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    close = dict(rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(g["rnn.weight_ih_l0"].T, grads["W_xh"], **close)   # identity embedding
    np.testing.assert_allclose(g["rnn.weight_hh_l0"].T, grads["W_hh"], **close)
    np.testing.assert_allclose(g["rnn.bias_ih_l0"], grads["b_h"], **close)
    np.testing.assert_allclose(g["rnn.bias_hh_l0"], grads["b_h"], **close)
    np.testing.assert_allclose(g["linear.weight"].T, grads["W_hq"], **close)
    np.testing.assert_allclose(g["linear.bias"], grads["b_q"], **close)


@pytest.mark.parametrize("E", [4, V])
def test_import_any_torch_model_same_logits(E):
    torch.manual_seed(0)

    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E, dtype=torch.float64)
            self.rnn = torch.nn.RNN(E, H, batch_first=True, dtype=torch.float64)
            self.linear = torch.nn.Linear(H, V, dtype=torch.float64)

        def forward(self, ids, h0):
            hs, hT = self.rnn(self.embedding(ids), h0)
            return self.linear(hs), hT

    tm = LM()
    with torch.no_grad():
        tm.rnn.bias_hh_l0.normal_()   # both biases non-zero: b_h is their sum
        tm.rnn.bias_ih_l0.normal_()
    X, _, h0 = _data(2)
    m = interop.from_torch_state_dict(tm.state_dict(), backend="numpy")
    logits_t, hT_t = tm(torch.from_numpy(X.astype(np.int64)), torch.from_numpy(h0)[None])
    logits, hT = m(X, h0)
    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(hT, hT_t[0].detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", None])
def test_round_trip_is_exact(backend):
    m = _model("relu")
    back = interop.from_torch_state_dict(interop.to_torch_state_dict(m), nonlinearity="relu", backend=backend)
    assert back.nonlinearity == "relu" and back.params["W_xh"].dtype == np.float64
    for k, p in m.params.items():
        np.testing.assert_array_equal(back.params[k], p, err_msg=k)
    f32 = interop.from_torch_state_dict(interop.to_torch_state_dict(m, tensors="numpy"), dtype=np.float32)
    assert f32.params["W_hh"].dtype == np.float32


def test_bad_state_dicts_named():
    m = _model()
    sd = interop.to_torch_state_dict(m)
    bad = dict(sd)
    del bad["linear.bias"]
    with pytest.raises(ValueError, match=r"missing \['linear.bias'\]"):
        interop.from_torch_state_dict(bad)
    with pytest.raises(ValueError, match=r"missing \['rnn.weight_hh_l1', 'rnn.bias_ih_l1', 'rnn.bias_hh_l1'\]"):
        interop.from_torch_state_dict(dict(sd, **{"rnn.weight_ih_l1": sd["rnn.weight_hh_l0"]}))
    with pytest.raises(ValueError, match=r"weight_hh_l0'\]: expected \(G\*H, H\) with G = 1"):
        interop.from_torch_state_dict(dict(sd, **{"rnn.weight_hh_l0": sd["rnn.weight_hh_l0"][:, :2]}))
    with pytest.raises(ValueError, match="nonlinearity: 'relu' given, but the state dict holds an nn.GRU"):
        interop.from_torch_state_dict(interop.to_torch_state_dict(_model(cell="gru")), nonlinearity="relu")
    with pytest.raises(ValueError, match="bidirectional"):
        interop.from_torch_state_dict(dict(sd, **{"rnn.weight_ih_l0_reverse": sd["rnn.weight_ih_l0"]}))
    with pytest.raises(ValueError, match=r"linear.weight'\]: expected shape \(11, 7\)"):
        interop.from_torch_state_dict(dict(sd, **{"linear.weight": sd["linear.weight"][:, :3]}))
    nan = sd["linear.bias"].clone()
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="linear.bias'\\]: holds NaN"):
        interop.from_torch_state_dict(dict(sd, **{"linear.bias": nan}))
    with pytest.raises(ValueError, match="nonlinearity"):
        interop.from_torch_state_dict(sd, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="tensors"):
        interop.to_torch_state_dict(m, tensors="jax")


class _TorchLM(torch.nn.Module):
    """nn.Embedding(V, E) + a recurrent layer + nn.Linear, float64 unless told."""

    def __init__(self, E=4, rnn=None, dtype=torch.float64, **kw):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, E, dtype=dtype)
        self.rnn = (rnn or torch.nn.RNN)(E, H, batch_first=True, dtype=dtype, **kw)
        self.linear = torch.nn.Linear(H, V, dtype=dtype)

    def forward(self, ids, h0):
        hs, hT = self.rnn(self.embedding(ids), h0)
        return self.linear(hs), hT


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_imported_model_same_gradients(nonlinearity):
    """fastseq's gradients of the imported model are torch's, mapped through the import (chain rule)."""
    torch.manual_seed(3)
    tm = _TorchLM(E=4, nonlinearity=nonlinearity)
    with torch.no_grad():
        tm.rnn.bias_hh_l0.normal_()
        tm.rnn.bias_ih_l0.normal_()
    X, Y, h0 = _data(4)
    m = interop.from_torch_state_dict(tm, backend="numpy")
    assert m.nonlinearity == nonlinearity
    logits_t, _ = tm(torch.from_numpy(X.astype(np.int64)), torch.from_numpy(h0)[None])
    torch.nn.functional.cross_entropy(logits_t.reshape(-1, V),
                                      torch.from_numpy(Y.astype(np.int64)).reshape(-1)).backward()
    loss, grads, _ = m.loss_and_grad(X, Y, h0)
    g = {n: p.grad.numpy() for n, p in tm.named_parameters()}
    emb, w_ih = tm.embedding.weight.detach().numpy(), tm.rnn.weight_ih_l0.detach().numpy()
    close = dict(rtol=1e-10, atol=1e-13)
    # W_xh = emb @ w_ih^T: dL/d emb = dL/dW_xh @ w_ih and dL/d w_ih = (emb^T @ dL/dW_xh)^T.
    np.testing.assert_allclose(g["embedding.weight"], grads["W_xh"] @ w_ih, **close)
    np.testing.assert_allclose(g["rnn.weight_ih_l0"], (emb.T @ grads["W_xh"]).T, **close)
    np.testing.assert_allclose(g["rnn.weight_hh_l0"].T, grads["W_hh"], **close)
    np.testing.assert_allclose(g["rnn.bias_ih_l0"], grads["b_h"], **close)
    np.testing.assert_allclose(g["rnn.bias_hh_l0"], grads["b_h"], **close)
    np.testing.assert_allclose(g["linear.weight"].T, grads["W_hq"], **close)
    np.testing.assert_allclose(g["linear.bias"], grads["b_q"], **close)


def test_real_torch_modules_that_do_not_map_are_named():
    with pytest.raises(ValueError, match="bidirectional"):
        interop.from_torch_state_dict(_TorchLM(bidirectional=True).state_dict())
    with pytest.raises(ValueError, match="is a bidirectional GRU"):
        interop.from_torch_state_dict(_TorchLM(rnn=torch.nn.GRU, bidirectional=True))
    with pytest.raises(ValueError, match=r"missing \['rnn.bias_ih_l0', 'rnn.bias_hh_l0'\]"):
        interop.from_torch_state_dict(_TorchLM(bias=False).state_dict())
    with pytest.raises(ValueError, match="projections"):
        interop.from_torch_state_dict(_TorchLM(rnn=torch.nn.LSTM, proj_size=2).state_dict())
    with pytest.raises(ValueError, match="nonlinearity: 'tanh' given, but the module's rnn is an nn.LSTM"):
        interop.from_torch_state_dict(_TorchLM(rnn=torch.nn.LSTM), nonlinearity="tanh")


CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
TORCH = {"rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}), "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}),
         "gru": (torch.nn.GRU, {}), "lstm": (torch.nn.LSTM, {})}


def _grads_close(mine, theirs, what):
    """max |a - b| <= 1e-10 max |b| (float64)."""
    err, scale = np.max(np.abs(mine - theirs)), max(np.max(np.abs(theirs)), 1e-300)
    assert mine.shape == theirs.shape and err <= 1e-10 * scale, f"{what}: {err:.3e} vs {scale:.3e}"


def _torch_loss(tm, X, Y, state0):
    logits_t, state_T = tm(torch.from_numpy(X.astype(np.int64)), state0)
    loss_t = torch.nn.functional.cross_entropy(logits_t.reshape(-1, V),
                                               torch.from_numpy(Y.astype(np.int64)).reshape(-1))
    loss_t.backward()
    return logits_t.detach().numpy(), state_T, loss_t.item(), {n: p.grad.numpy() for n, p in tm.named_parameters()}


def _same_function(m, tm, seed):
    """m and the torch module tm: the same logits, final state and loss from a random state; returns
    (m's grads, torch's grads by parameter name)."""
    X, Y, _ = _data(seed)
    state0 = np.random.default_rng(seed + 7).normal(0, 0.5, m.state_shape(B))
    logits_t, state_T, loss_t, g = _torch_loss(tm, X, Y, interop.to_torch_state(state0, m.cell, m.num_layers))
    logits, s_T = m(X, state0)
    _grads_close(logits, logits_t, "logits")
    _grads_close(s_T, interop.from_torch_state(state_T), "state_T")
    loss, grads, _ = m.loss_and_grad(X, Y, state0)
    assert loss == pytest.approx(loss_t, rel=1e-12)
    return grads, g


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_exported_model_of_every_cell_and_depth_same_logits_state_and_gradients(cell, L):
    m = _model(cell=cell, num_layers=L, seed=L)
    tm = interop.torch_module(m)
    assert type(tm.rnn) is TORCH[cell][0] and tm.rnn.num_layers == L
    grads, g = _same_function(m, tm, L)
    for l in range(L):
        s = "" if l == 0 else f"_l{l}"
        _grads_close(grads["W_xh" + s], g[f"rnn.weight_ih_l{l}"].T, f"W_xh{s}")   # identity embedding
        _grads_close(grads["W_hh" + s], g[f"rnn.weight_hh_l{l}"].T, f"W_hh{s}")
        _grads_close(grads["b_h" + s], g[f"rnn.bias_ih_l{l}"], f"b_h{s}")
        if cell == "gru":                       # b_hr, b_hz are folded into b_h; b_hn is its own
            _grads_close(grads["b_h" + s][:2 * H], g[f"rnn.bias_hh_l{l}"][:2 * H], f"b_h{s} (r, z)")
            _grads_close(grads["b_hn" + s], g[f"rnn.bias_hh_l{l}"][2 * H:], f"b_hn{s}")
        else:
            _grads_close(grads["b_h" + s], g[f"rnn.bias_hh_l{l}"], f"b_h{s} (bias_hh)")
    _grads_close(grads["W_hq"], g["linear.weight"].T, "W_hq")
    _grads_close(grads["b_q"], g["linear.bias"], "b_q")


@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_imported_module_of_every_cell_and_depth_same_logits_and_gradients(cell, L):
    """Any nn.Embedding(V, 4) + nn.RNN/GRU/LSTM(num_layers=L) + nn.Linear, both biases random: the imported
    model's logits and state are torch's, and its gradients are torch's through the import (chain rule)."""
    torch.manual_seed(L)
    cls, kw = TORCH[cell]
    tm = _TorchLM(E=4, rnn=cls, num_layers=L, **kw)
    with torch.no_grad():
        for l in range(L):
            getattr(tm.rnn, f"bias_hh_l{l}").normal_()
            getattr(tm.rnn, f"bias_ih_l{l}").normal_()
    m = interop.from_torch_state_dict(tm, backend="numpy")
    assert (m.cell, m.num_layers, m.dropout) == (cell, L, 0.0)
    grads, g = _same_function(m, tm, L + 10)
    emb, w_ih = tm.embedding.weight.detach().numpy(), tm.rnn.weight_ih_l0.detach().numpy()
    _grads_close(grads["W_xh"] @ w_ih, g["embedding.weight"], "embedding.weight")
    _grads_close((emb.T @ grads["W_xh"]).T, g["rnn.weight_ih_l0"], "rnn.weight_ih_l0")
    for l in range(L):
        s = "" if l == 0 else f"_l{l}"
        if l:
            _grads_close(grads["W_xh" + s].T, g[f"rnn.weight_ih_l{l}"], f"weight_ih_l{l}")
        _grads_close(grads["W_hh" + s].T, g[f"rnn.weight_hh_l{l}"], f"weight_hh_l{l}")
        _grads_close(grads["b_h" + s], g[f"rnn.bias_ih_l{l}"], f"bias_ih_l{l}")
        bias_hh = grads["b_h" + s].copy()
        if cell == "gru":
            bias_hh[2 * H:] = grads["b_hn" + s]
        _grads_close(bias_hh, g[f"rnn.bias_hh_l{l}"], f"bias_hh_l{l}")
    _grads_close(grads["W_hq"].T, g["linear.weight"], "linear.weight")
    _grads_close(grads["b_q"], g["linear.bias"], "linear.bias")


@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_round_trip_of_every_cell_and_depth_is_exact(cell, L):
    m = _model(cell=cell, num_layers=L)
    sd = interop.to_torch_state_dict(m)
    assert list(sd) == list(interop.keys(L))
    back = interop.from_torch_state_dict(sd, nonlinearity=m.nonlinearity, backend="numpy")
    assert back.config == m.config
    for k, p in m.params.items():
        np.testing.assert_array_equal(back.params[k], p, err_msg=k)


def test_nonlinearity_of_a_module_is_read_and_checked():
    relu = _TorchLM(nonlinearity="relu")
    assert interop.from_torch_state_dict(relu, backend="numpy").nonlinearity == "relu"
    with pytest.raises(ValueError, match="'tanh' given, but the module's nn.RNN uses 'relu'"):
        interop.from_torch_state_dict(relu, nonlinearity="tanh")
    # A bare state dict cannot say: nn.RNN's default, tanh.
    assert interop.from_torch_state_dict(relu.state_dict(), backend="numpy").nonlinearity == "tanh"


@pytest.mark.parametrize("tdtype", [torch.float16, torch.bfloat16])
def test_half_precision_state_dicts_import_exactly_in_float32(tdtype):
    tm = _TorchLM(E=V, dtype=tdtype)
    m = interop.from_torch_state_dict(tm.state_dict(), backend="numpy")
    assert m.params["W_hh"].dtype == np.float32
    np.testing.assert_array_equal(m.params["W_hh"], tm.rnn.weight_hh_l0.detach().float().numpy().T)
