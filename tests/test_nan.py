"""NaN propagates through every cell on both backends (issue 12, item 7).

A diverged model must look diverged: with a NaN in W_hh the reference, PyTorch and the C++
kernels all return a NaN loss and NaN gradients, and forward, eval and generation agree
between the backends. (The C++ relu used to be `z > 0 ? z : 0`, which turned NaN into 0: a
finite loss and finite gradients from a broken model.) Expected values come from the NumPy
reference (backend='numpy') or from PyTorch, never from the C++ path itself.
"""
import numpy as np
import pytest

import fastseq
from fastseq.training import evaluate

V, H, B, T = 7, 12, 3, 5


def pair(nl, dtype, hidden=H, where=(1, 2)):
    """The same poisoned weights on both backends."""
    fast = fastseq.RNNLM(V, hidden, nonlinearity=nl, dtype=dtype, seed=3)
    ref = fastseq.RNNLM(V, hidden, nonlinearity=nl, dtype=dtype, seed=3, backend="numpy")
    rng = np.random.default_rng(0)
    for k, p in fast.params.items():
        p[...] = rng.normal(0, 0.5, p.shape)
        ref.params[k][...] = p
    fast.params["W_hh"][where] = np.nan
    ref.params["W_hh"][where] = np.nan
    return fast, ref


def data():
    rng = np.random.default_rng(1)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def same_nans(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, what
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=what)


CASES = [(nl, dt) for nl in ("relu", "tanh") for dt in (np.float32, np.float64)]
IDS = [f"{nl}-{np.dtype(dt).name}" for nl, dt in CASES]


@pytest.mark.parametrize("nl,dtype", CASES, ids=IDS)
def test_nan_in_W_hh_gives_nan_loss_and_grads_on_both_backends(nl, dtype):
    fast, ref = pair(nl, dtype)
    X, Y = data()
    lf, gf, sf = fast.loss_and_grad(X, Y, None)
    lr, gr, sr = ref.loss_and_grad(X, Y, None)
    assert np.isnan(lr) and np.isnan(lf), (lr, lf)
    for k in gr:
        assert np.isnan(gr[k]).any(), k
        same_nans(gf[k], gr[k], f"grad {k}")
    same_nans(sf, sr, "state")


@pytest.mark.parametrize("nl,dtype", CASES, ids=IDS)
def test_nan_reaches_forward_eval_and_generation_alike(nl, dtype):
    fast, ref = pair(nl, dtype)
    X, _ = data()
    (of, sf), (orf, srf) = fast(X, None), ref(X, None)
    assert np.isnan(orf[:, 1:]).all()           # every logit after the first step
    same_nans(of, orf, "logits")
    same_nans(sf, srf, "state")
    corpus = np.random.default_rng(2).integers(0, V, 200)
    assert np.isnan(evaluate(ref, corpus, batch_size=4, num_steps=5))
    assert np.isnan(evaluate(fast, corpus, batch_size=4, num_steps=5))
    u = np.random.default_rng(3).random(20)
    for kw in ({}, {"temperature": 1.0, "uniforms": u}, {"temperature": 0.7, "top_k": 3, "uniforms": u}):
        np.testing.assert_array_equal(fast.generate([1, 2, 3], 20, **kw), ref.generate([1, 2, 3], 20, **kw),
                                      err_msg=str(kw))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("nl", ["relu", "tanh"])
def test_generation_split_over_threads_propagates_nan(nl, threads):
    """H = 256 splits generation's columns over two threads: the NaN crosses from one half to the other."""
    fast, ref = pair(nl, np.float32, hidden=256, where=(200, 3))
    from fastseq import _core
    out = _core.lm_generate(np.array([1, 2], np.int64), 30, fast.params, nl, 0.0, 0, None, threads=threads)
    np.testing.assert_array_equal(out, ref.generate([1, 2], 30))


@pytest.mark.parametrize("nl", ["relu", "tanh"])
def test_layer_propagates_nan_like_the_reference(nl):
    fast = fastseq.RNN(4, H, nonlinearity=nl, dtype=np.float64, seed=1)
    ref = fastseq.RNN(4, H, nonlinearity=nl, dtype=np.float64, seed=1, backend="numpy")
    fast.params["W_hh"][0, 5] = ref.params["W_hh"][0, 5] = np.nan
    X = np.random.default_rng(4).normal(size=(T, B, 4))
    (Hf, cf), (Hr, cr) = fast.forward(X), ref.forward(X)
    assert np.isnan(Hr[1:]).all()
    same_nans(Hf, Hr, "Hs")
    dHs = np.ones_like(Hr)
    for a, b, what in zip(fast.backward(dHs, cf), ref.backward(dHs, cr), ("dX", "dh0", "grads")):
        if what == "grads":
            for k in b:
                same_nans(a[k], b[k], k)
        else:
            same_nans(a, b, what)


def test_pytorch_agrees_a_nan_in_W_hh_gives_a_nan_loss():
    """What the contract follows: PyTorch's relu and tanh keep NaN (max(z, 0) is NaN for NaN)."""
    torch = pytest.importorskip("torch")
    for nl in ("relu", "tanh"):
        fast, _ = pair(nl, np.float64)
        X, Y = data()
        p = {k: torch.tensor(v) for k, v in fast.params.items()}
        phi = torch.relu if nl == "relu" else torch.tanh
        h = torch.zeros(B, H, dtype=torch.float64)
        logits = []
        for t in range(T):
            h = phi(p["W_xh"][torch.tensor(X[:, t])] + p["b_h"] + h @ p["W_hh"])
            logits.append(h @ p["W_hq"] + p["b_q"])
        loss = torch.nn.functional.cross_entropy(torch.stack(logits, 1).reshape(-1, V), torch.tensor(Y).reshape(-1))
        assert torch.isnan(loss)
        assert np.isnan(fast.loss_and_grad(X, Y, None)[0])
