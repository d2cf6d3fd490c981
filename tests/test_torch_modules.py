"""fastseq.torch.RNN/GRU/LSTM against torch.nn's modules: outputs, states and every gradient, every
cell, depth and layout; autograd (gradcheck, double backward); dropout; refusals; saving; threads;
DataLoader workers; and a training script whose only change is the import (issue 14)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fastseq.torch")

from fastseq.errors import FastseqError  # noqa: E402
from torch.autograd.gradcheck import GradcheckError  # noqa: E402

CELLS = {"rnn_tanh": ("RNN", {"nonlinearity": "tanh"}), "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
         "gru": ("GRU", {}), "lstm": ("LSTM", {})}
REL = {torch.float64: 1e-10, torch.float32: 1e-4}
BACKENDS = ("cpp", "numpy")


def make_pair(cell, D, H, L, dtype=torch.float64, backend="cpp", **kw):
    """A torch.nn module and the fastseq.torch one with the same weights (both from the same manual_seed)."""
    cls, extra = CELLS[cell]
    torch.manual_seed(1)
    ref = getattr(torch.nn, cls)(D, H, L, dtype=dtype, **extra, **kw)
    torch.manual_seed(1)
    ours = getattr(ft, cls)(D, H, L, dtype=dtype, backend=backend, **extra, **kw)
    return ref, ours


def assert_rel(a, b, rel, what):
    """max |a - b| <= rel * max |b|: the relative tolerance of the issue, on the whole tensor."""
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err, scale = (a - b).abs().max().item(), max(b.abs().max().item(), 1e-30)
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} * {scale:.3g}"


def run(module, X, hx, weights_out):
    """Forward, then a loss touching the output and every final state; returns (outputs, grads)."""
    out, hn = module(X, hx)
    states = hn if isinstance(hn, tuple) else (hn,)
    g = torch.Generator().manual_seed(7)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    leaves = [X] + ([] if hx is None else list(hx if isinstance(hx, tuple) else (hx,)))
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()))
    return (out,) + states, grads


def compare(cell, L, batch_first, with_hx, dtype, T=5, B=3, D=4, H=6, backend="cpp", unbatched=False):
    ref, ours = make_pair(cell, D, H, L, dtype, backend, batch_first=batch_first)
    torch.manual_seed(2)
    shape = (T, D) if unbatched else ((B, T, D) if batch_first else (T, B, D))
    X = torch.randn(shape, dtype=dtype, requires_grad=True)
    hx = None
    if with_hx:
        hshape = (L, H) if unbatched else (L, B, H)
        parts = [torch.randn(hshape, dtype=dtype, requires_grad=True) for _ in range(2 if cell == "lstm" else 1)]
        hx = tuple(parts) if cell == "lstm" else parts[0]
    outs_r, grads_r = run(ref, X, hx, True)
    outs_o, grads_o = run(ours, X, hx, True)
    names = ["input"] + (["h0", "c0"][:1 + (cell == "lstm")] if with_hx else []) + [n for n, _ in ref.named_parameters()]
    for k, (a, b) in enumerate(zip(outs_o, outs_r)):
        assert_rel(a, b, REL[dtype], ["output", "h_n", "c_n"][k])
    assert len(grads_o) == len(grads_r) == len(names)
    for n, a, b in zip(names, grads_o, grads_r):
        assert_rel(a, b, REL[dtype], f"d{n}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cell", list(CELLS))
def test_equal_to_torch(cell, L, batch_first, with_hx, dtype):
    compare(cell, L, batch_first, with_hx, dtype)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,B", [(1, 3), (1, 1), (200, 2), (7, 1)], ids=["T1", "T1B1", "longT", "B1"])
def test_equal_to_torch_edge_sizes(cell, T, B):
    compare(cell, 2, True, True, torch.float64, T=T, B=B)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_unbatched_input(cell, with_hx):
    compare(cell, 2, True, with_hx, torch.float64, unbatched=True)


@pytest.mark.parametrize("cell", list(CELLS))
def test_step_by_step_decoding_under_no_grad_equals_torch(cell):
    """B=1, one call per step with the state fed back, as a decoder calls it (no autograd node)."""
    ref, ours = make_pair(cell, 4, 6, 2)
    xs = torch.randn(30, 1, 1, 4, dtype=torch.float64)
    with torch.no_grad():
        hr = ho = None
        for x in xs:
            yr, hr = ref(x, hr)
            yo, ho = ours(x, ho)
            assert yo.grad_fn is None
            assert_rel(yo, yr, 1e-10, "output")
    for a, b in zip(ho if cell == "lstm" else (ho,), hr if cell == "lstm" else (hr,)):
        assert_rel(a, b, 1e-10, "state after 30 steps")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_one_row_at_sizes_off_the_vector_width_equals_torch(cell, dtype):
    """B=1: the kernels stream W_hh unpacked (csrc/matvec.h), with and without autograd; H=37 leaves
    remainders in every block of rows and vector of columns, D=11 in the input product."""
    compare(cell, 2, False, True, dtype, T=3, B=1, D=11, H=37)
    ref, ours = make_pair(cell, 11, 37, 2, dtype)
    x = torch.randn(1, 1, 11, dtype=dtype)
    with torch.no_grad():
        assert_rel(ours(x)[0], ref(x)[0], REL[dtype], "output, T=1, B=1")


def _change_weights(m, how):
    """Change every weight of m the ways a user does between two calls."""
    with torch.no_grad():
        if how == "in_place":
            for p in m.parameters():
                p.mul_(0.5).add_(0.01)
        elif how == "data":
            for p in m.parameters():
                p.data = torch.randn_like(p) * 0.3
        elif how == "load_state_dict":
            m.load_state_dict({k: torch.randn_like(v) * 0.3 for k, v in m.state_dict().items()})
        elif how == "new_parameter":
            m.weight_hh_l1 = torch.nn.Parameter(torch.randn_like(m.weight_hh_l1) * 0.3)
    if how == "optimizer":
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        out, _ = m(torch.randn(3, 2, m.input_size, dtype=m.weight_hh_l0.dtype))
        out.sum().backward()
        opt.step()


@pytest.mark.parametrize("how", ["in_place", "data", "load_state_dict", "new_parameter", "optimizer"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_calls_never_use_stale_weights(cell, how):
    """What a call keeps from the last one (views of the weights) follows every way a weight changes."""
    ref, ours = make_pair(cell, 4, 6, 2)
    x = torch.randn(2, 1, 4, dtype=torch.float64)      # two steps: the second reads every weight
    with torch.no_grad():
        before = ours(x)[0].clone()
    _change_weights(ours, how)
    ref.load_state_dict(ours.state_dict())
    with torch.no_grad():
        after, want = ours(x)[0], ref(x)[0]
    assert not torch.equal(after, before)
    assert_rel(after, want, 1e-10, f"output after a change ({how})")


@pytest.mark.parametrize("cell", list(CELLS))
def test_without_bias(cell):
    cls, extra = CELLS[cell]
    torch.manual_seed(3)
    ref = getattr(torch.nn, cls)(3, 4, 2, bias=False, dtype=torch.float64, **extra)
    ours = getattr(ft, cls)(3, 4, 2, bias=False, dtype=torch.float64, **extra)
    ours.load_state_dict(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"]
    X = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    outs_r, g_r = run(ref, X, None, True)
    outs_o, g_o = run(ours, X, None, True)
    for a, b in zip(outs_o + g_o, outs_r + g_r):
        assert_rel(a, b, 1e-10, "bias=False")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree(backend):
    compare("lstm", 2, False, True, torch.float64, backend=backend)
    compare("gru", 2, True, False, torch.float32, backend=backend)


# ---------------------------------------------------------------------------- the module contract
@pytest.mark.parametrize("cell", list(CELLS))
def test_same_parameters_as_torch_under_the_same_seed_and_state_dicts_both_ways(cell):
    ref, ours = make_pair(cell, 5, 7, 3, torch.float32, bias=True)
    sd_r, sd_o = ref.state_dict(), ours.state_dict()
    assert list(sd_r) == list(sd_o)
    for k in sd_r:
        assert torch.equal(sd_r[k], sd_o[k]), k
        assert sd_o[k].is_contiguous(), k        # as torch's: safetensors and friends take it as is
    # both directions, strict, with other numbers
    cls, extra = CELLS[cell]
    other = getattr(torch.nn, cls)(5, 7, 3, **extra)
    ours.load_state_dict(other.state_dict())
    ref.load_state_dict(ours.state_dict())
    for k, v in other.state_dict().items():
        assert torch.equal(ref.state_dict()[k], v), k
    assert isinstance(ours, getattr(torch.nn, cls)) and repr(ours) == repr(other)


def test_parameters_receive_grads_in_their_own_layout_and_optimizers_step():
    _, m = make_pair("lstm", 3, 4, 2, torch.float32)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out, _ = m(torch.randn(5, 2, 3))
    out.sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, n
    opt.step()
    after = m.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    m.flatten_parameters()                       # accepted, as torch's


def test_a_weight_changed_in_place_before_backward_is_refused_as_torch_does():
    _, m = make_pair("gru", 3, 4, 1, torch.float64)
    out, _ = m(torch.randn(2, 2, 3, dtype=torch.float64))
    with torch.no_grad():
        m.weight_hh_l0.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_an_output_changed_in_place_does_not_change_the_gradients():
    ref, ours = make_pair("lstm", 3, 4, 2)
    X = torch.randn(6, 2, 3, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        out, (h, c) = m(X)
        R = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
        loss = (out * R).sum() + h.sum() + 2 * c.sum()      # saves none of out, h, c
        out.add_(100.0)                          # torch's modules allow it; our cache must not see it
        h.zero_()
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    for a, b in zip(*grads):
        assert_rel(a, b, 1e-10, "grad")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradients_through_the_final_state_only(cell):
    """The output unused (its gradient None, as in a sequence classifier reading h_n)."""
    ref, ours = make_pair(cell, 3, 4, 2)
    X = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for m in (ref, ours):
        _, hn = m(X)
        h = hn[0] if cell == "lstm" else hn
        grads.append(torch.autograd.grad((h[-1] ** 2).sum(), [X] + list(m.parameters())))
    for a, b in zip(*grads):
        assert_rel(b, a, 1e-10, "grad")


def test_parameters_for_functional_call():
    ref, ours = make_pair("rnn_tanh", 3, 4, 2)
    new = {n: torch.randn_like(p) for n, p in ref.named_parameters()}
    X = torch.randn(5, 2, 3, dtype=torch.float64)
    a, _ = torch.func.functional_call(ref, new, (X,))
    b, _ = torch.func.functional_call(ours, new, (X,))
    assert_rel(b, a, 1e-10, "functional_call")


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_float64(cell):
    _, m = make_pair(cell, 3, 2, 2, torch.float64)
    names = [n for n, _ in m.named_parameters()]
    P = 2 if cell == "lstm" else 1
    torch.manual_seed(4)
    X = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True) for _ in range(P)]
    weights = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(X, *rest):
        hx = tuple(rest[:P]) if P == 2 else rest[0]
        out, hn = torch.func.functional_call(m, dict(zip(names, rest[P:])), (X, hx))
        return (out,) + (hn if isinstance(hn, tuple) else (hn,))

    assert torch.autograd.gradcheck(f, (X, *states, *weights), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_can_fail(monkeypatch):
    """The check above can fail: the layer's parameter gradients off by 0.1% are caught by the same call."""
    _, m = make_pair("gru", 3, 2, 1, torch.float64)
    X = torch.randn(3, 2, 3, dtype=torch.float64)
    w = m.weight_hh_l0.detach().clone().requires_grad_()
    right = ft._Spec.weight_grads
    monkeypatch.setattr(ft._Spec, "weight_grads", lambda self, g: [x * 1.001 for x in right(self, g)])
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(lambda w: torch.func.functional_call(m, {"weight_hh_l0": w}, (X,))[0], (w,),
                                 eps=1e-6, atol=1e-7, rtol=1e-5)


def test_double_backward_is_refused():
    _, m = make_pair("lstm", 3, 2, 1, torch.float64)
    X = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = m(X)
    with pytest.raises(FastseqError, match="^create_graph: double backward .*torch.nn.LSTM"):
        torch.autograd.grad(out.sum(), X, create_graph=True)
    (g,) = torch.autograd.grad(out.sum(), X)            # the first-order gradient still works
    assert g.shape == X.shape and not g.requires_grad


# ---------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("cell", list(CELLS))
def test_train_mode_dropout_is_between_layers_with_masks_from_torchs_generator(cell):
    """Outputs and gradients equal a hand-made stack of one-layer torch modules with the same masks,
    drawn as the module draws them: (L-1, T, B, H) Bernoulli(1 - p) / (1 - p) from torch's generator."""
    L, T, B, D, H, p = 3, 5, 2, 3, 4, 0.4
    ref, ours = make_pair(cell, D, H, L, dropout=p)
    cls, extra = CELLS[cell]
    layers = []
    for l in range(L):
        one = getattr(torch.nn, cls)(D if l == 0 else H, H, 1, dtype=torch.float64, **extra)
        one.load_state_dict({k.replace(f"_l{l}", "_l0"): v for k, v in ref.state_dict().items() if k.endswith(f"_l{l}")})
        layers.append(one)
    X = torch.randn(T, B, D, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(11)
    masks = torch.empty((L - 1, T, B, H), dtype=torch.float64).bernoulli_(1 - p) / (1 - p)
    x = X
    for l, one in enumerate(layers):
        x, _ = one(x)
        if l < L - 1:
            x = x * masks[l]
    want = x
    ours.train()
    torch.manual_seed(11)
    got, _ = ours(X)
    assert_rel(got, want, 1e-10, "output with dropout")
    gw = torch.autograd.grad((want ** 2).sum(), [X] + [q for one in layers for q in one.parameters()])
    go = torch.autograd.grad((got ** 2).sum(), [X] + list(ours.parameters()))
    for a, b in zip(go, gw):
        assert_rel(a, b, 1e-10, "gradient with dropout")
    # eval(): no dropout, torch's eval output; train(): another draw, another output
    ours.eval()
    ref.eval()
    assert_rel(ours(X)[0], ref(X)[0], 1e-10, "eval")
    ours.train()
    assert not torch.allclose(ours(X)[0], got)


def test_dropout_is_deterministic_under_manual_seed():
    _, m = make_pair("lstm", 3, 4, 2, dropout=0.5)
    X = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    a, _ = m(X)
    torch.manual_seed(5)
    b, _ = m(X)
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("kwargs,arg", [({"bidirectional": True}, "bidirectional"), ({"proj_size": 2}, "proj_size"),
                                        ({"dtype": torch.float16}, "dtype"), ({"dtype": torch.bfloat16}, "dtype"),
                                        ({"device": "meta"}, "device")])
def test_unsupported_options_are_refused_naming_the_argument(kwargs, arg):
    with pytest.raises(FastseqError, match=f"^{arg}: .*torch.nn.LSTM"):
        ft.LSTM(3, 4, **kwargs)


def test_unknown_backend_is_refused_at_construction():
    with pytest.raises(FastseqError, match="^backend: "):
        ft.GRU(3, 4, backend="cuda")


def test_bad_inputs_are_refused_naming_the_argument():
    m = ft.LSTM(3, 4, 2)
    X = torch.randn(5, 2, 3)
    cases = [
        (lambda: m(torch.nn.utils.rnn.pack_padded_sequence(X, [5, 4])), "^input: a PackedSequence"),
        (lambda: m(X.double()), "^input: dtype torch.float64"),
        (lambda: m(torch.randn(5, 2, 4)), "^input: expected input_size 3"),
        (lambda: m(torch.randn(5, 2, 3, 1)), "^input: expected 2 .* or 3 dimensions"),
        (lambda: m(torch.randn(0, 2, 3)), "^input: expected at least one step"),
        (lambda: m(X, torch.zeros(2, 2, 4)), "^hx: expected a tuple"),
        (lambda: m(X, (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4))), r"^cx: expected a CPU torch.float32 tensor of shape \(2, 2, 4\)"),
        (lambda: m(X, (torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))), "^hx: expected"),
        (lambda: ft.GRU(3, 4)(X, torch.zeros(1, 2, 4, dtype=torch.float64)), "^hx: expected a CPU torch.float32"),
    ]
    for call, pattern in cases:
        with pytest.raises(FastseqError, match=pattern):
            call()
    h = m.half()
    with pytest.raises(FastseqError, match="^dtype: dtype torch.float16"):
        h(X.half())


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_scripting_and_tracing_are_refused_clearly():
    m = ft.GRU(3, 4)
    with pytest.raises(FastseqError, match="^torch.jit.script: .*torch.nn.GRU"):
        torch.jit.script(m)
    with pytest.raises(FastseqError, match="^input: torch.export, tracing or ONNX export.*torch.nn.GRU"):
        torch.jit.trace(m, (torch.randn(2, 1, 3),))
    with pytest.raises(FastseqError, match="^input: torch.export, tracing or ONNX export.*torch.nn.GRU"):
        torch.export.export(m, (torch.randn(2, 1, 3),))


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")   # torch's own internals
def test_torch_compile_runs_the_layer_eagerly_with_the_same_numbers():
    _, m = make_pair("lstm", 3, 4, 2)
    X = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    want, _ = m(X)
    (g_want,) = torch.autograd.grad(want.sum(), X)
    got, _ = torch.compile(m)(X)
    (g_got,) = torch.autograd.grad(got.sum(), X)
    assert torch.equal(got, want) and torch.equal(g_got, g_want)


# ---------------------------------------------------------------------------- saving
class WordLM(torch.nn.Module):
    """The user's model: an Embedding, a recurrent module, dropout and a Linear."""

    def __init__(self, rnn_cls, V=11, H=8):
        super().__init__()
        self.embedding = torch.nn.Embedding(V, 6)
        self.rnn = rnn_cls(6, H, 2, batch_first=True, dropout=0.2)
        self.drop = torch.nn.Dropout(0.2)
        self.linear = torch.nn.Linear(H, V)

    def forward(self, ids, hx=None):
        y, hx = self.rnn(self.embedding(ids), hx)
        return self.linear(self.drop(y)), hx


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
def test_torch_save_whole_model_loads_with_weights_only(tmp_path, cls):
    model = WordLM(getattr(ft, cls)).eval()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    user_classes = [WordLM, torch.nn.Embedding, torch.nn.Dropout, torch.nn.Linear]
    with torch.serialization.safe_globals(user_classes):    # fastseq's own are registered on import
        back = torch.load(path, weights_only=True)
    assert type(back.rnn) is getattr(ft, cls)
    ids = torch.randint(0, 11, (2, 5))
    assert torch.equal(back(ids)[0], model(ids)[0])
    # without the user's classes, torch refuses as usual (the registration covers fastseq's only)
    with pytest.raises(Exception, match="WordLM"):
        torch.load(path, weights_only=True)


# ---------------------------------------------------------------------------- the training script
SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn
    {import_line}

    torch.manual_seed(0)
    V, B, T = 13, 4, 9
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(V, 8)
            self.rnn = {cls}(8, 10, num_layers=2, batch_first=True)
            self.drop = nn.Dropout(0.3)
            self.linear = nn.Linear(10, V)
        def forward(self, ids, hx=None):
            y, hx = self.rnn(self.embedding(ids), hx)
            return self.linear(self.drop(y)), hx
    model = Model().double()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    data = (3 * torch.arange(20 * T + 1) + torch.arange(B)[:, None]) % V     # a pattern to learn
    losses, hx = [], None
    for step in range(20):
        x, y = data[:, step * T: (step + 1) * T], data[:, step * T + 1: (step + 1) * T + 1]
        if hx is not None:
            hx = tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()
        logits, hx = model(x, hx)
        loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
""")


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
def test_a_training_script_with_only_the_import_changed_gives_the_same_losses(cls):
    runs = {}
    for name, line in [("torch", f"from torch.nn import {cls}"), ("fastseq", f"from fastseq.torch import {cls}")]:
        ns = {}
        exec(SCRIPT.format(import_line=line, cls=cls), ns)
        runs[name] = np.array(ns["losses"])
    assert runs["torch"][-1] < 0.7 * runs["torch"][0]          # it trains
    np.testing.assert_allclose(runs["fastseq"], runs["torch"], rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------- threads and workers
def _python(code):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_threads_follow_torch_unless_fastseq_set_num_threads_was_called():
    out = _python("""
        import torch, fastseq, fastseq.torch as ft
        m = ft.GRU(3, 4)
        X = torch.randn(2, 1, 3)
        for n in (2, 1, 2):
            torch.set_num_threads(n); m(X); print(fastseq.get_num_threads())
        fastseq.set_num_threads(1)
        torch.set_num_threads(2); m(X); print(fastseq.get_num_threads())
    """)
    assert out == ["2", "1", "2", "1"]


def test_dataloader_workers_fork_and_compute_the_same():
    out = _python("""
        import torch, fastseq.torch as ft
        torch.manual_seed(0)
        m = ft.LSTM(3, 64, 2).eval()
        X = torch.randn(40, 8, 3)
        with torch.no_grad():
            two = [m(X[:, i:i + 1])[0] for i in range(8)]      # the parent ran kernels (2 threads) before the fork
            # DataLoader workers run torch, hence fastseq, on one thread; OpenBLAS's product over the
            # T*B input rows rounds differently on 1 and 2 threads (3e-8 on Haswell), so the workers'
            # results are compared bit for bit with the parent's on one thread
            torch.set_num_threads(1)
            want = [m(X[:, i:i + 1])[0] for i in range(8)]
            torch.set_num_threads(2)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(two, want))
        class DS(torch.utils.data.Dataset):
            def __len__(self): return 8
            def __getitem__(self, i):
                with torch.no_grad():
                    return i, m(X[:, i:i + 1])[0]
        dl = torch.utils.data.DataLoader(DS(), batch_size=None, num_workers=2, multiprocessing_context="fork")
        got = dict(dl)
        print(sorted(got) == list(range(8)), all(torch.equal(got[i], want[i]) for i in range(8)))
    """)
    assert out == ["True", "True"]


def test_import_fastseq_does_not_import_torch():
    out = _python("import sys, fastseq, fastseq.ops, fastseq.interop; print('torch' in sys.modules)")
    assert out == ["False"]
