"""train / evaluate / predict / diagnostics and the optimisers (fastseq.training), on the NumPy reference.

Legend: B batch, T steps, H hidden, V vocabulary.
"""
import copy
import math

import numpy as np
import pytest

from fastseq.bptt import Truncated
from fastseq.data import SeqDataLoader
from fastseq.optim import SGD, Adam
from fastseq.reference.rnn import RNNLM
from fastseq.text import Vocab, load_corpus
from fastseq.training import (EPOCH_KEYS, DivergenceError, evaluate, gradient_diagnostics, predict, sample, spectral_radius,
                              state_grad_norms, train)

V = 6


def toy_corpus(n=400, seed=0):
    """A learnable sequence: a repeating pattern with some noise."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.array([0, 1, 2, 3, 4, 5, 4, 3, 2, 1]), n // 10 + 1)[:n]
    noise = rng.random(n) < 0.05
    return np.where(noise, rng.integers(0, V, n), base).astype(np.int32)


def naive_ce(model, X, Y, h0):
    """Mean cross-entropy from __call__ logits, computed here."""
    logits, _ = model(X, h0)
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, Y[..., None].astype(np.intp), -1).mean()


class Recorder(RNNLM):
    """An RNNLM that records the state each loss_and_grad call receives."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    def loss_and_grad(self, X, Y, state, bptt=None, rng=None):
        self.seen.append(None if state is None else state.copy())
        loss, grads, new = super().loss_and_grad(X, Y, state, bptt, rng)
        self.seen[-1] = (self.seen[-1], new.copy())
        return loss, grads, new


# ------------------------------------------------------------------ train
def test_one_step_by_hand_sgd_and_clip():
    m = RNNLM(V, 8, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    for p in m.params.values():
        p[...] = rng.normal(0, 1.0, p.shape)       # large weights: the gradient norm exceeds theta
    X, Y = rng.integers(0, V, (3, 7)), rng.integers(0, V, (3, 7))
    ref = copy.deepcopy(m)
    loss, g, _ = ref.loss_and_grad(X, Y, ref.begin_state(3))
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    assert norm > 0.05
    theta = norm / 4
    for k in ref.params:
        ref.params[k] -= 0.5 * g[k] * (theta / norm)
    hist = train(m, [(X, Y)], 1, lr=0.5, clip=theta)
    for k in m.params:
        np.testing.assert_allclose(m.params[k], ref.params[k], rtol=1e-12, atol=1e-14)
    assert hist[0]["grad_norm_max"] == pytest.approx(norm, rel=1e-12)       # before clipping
    assert hist[0]["train_ppl"] == pytest.approx(math.exp(loss), rel=1e-12)
    assert tuple(hist[0]) == EPOCH_KEYS
    assert hist[0]["lr"] == 0.5 and hist[0]["step"] == 1 and hist[0]["val_ppl"] is None


def test_history_matches_callback_losses_and_stop():
    corpus = toy_corpus()
    m = RNNLM(V, 16, seed=3)
    infos = []
    hist = train(m, SeqDataLoader(corpus, 4, 5, seed=0), 3, lr=1.0, callback=infos.append)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for e in (1, 2, 3):
        losses = [i["loss"] for i in infos if i["epoch"] == e]
        norms = [i["grad_norm"] for i in infos if i["epoch"] == e]
        assert hist[e - 1]["train_ppl"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-9)
        assert hist[e - 1]["grad_norm_mean"] == pytest.approx(np.mean(norms), rel=1e-9)
        assert hist[e - 1]["grad_norm_max"] == pytest.approx(max(norms), rel=1e-12)
        assert hist[e - 1]["tokens_per_s"] > 0 and hist[e - 1]["seconds"] > 0
    assert [i["step"] for i in infos] == list(range(1, len(infos) + 1))
    assert set(infos[0]) == {"epoch", "step", "batch", "loss", "grad_norm", "lr", "tokens_per_s"}
    # the toy pattern is learnable: perplexity falls well below V
    assert hist[-1]["train_ppl"] < hist[0]["train_ppl"] < V
    # a callback returning False stops at once
    calls = []
    hist = train(RNNLM(V, 8), SeqDataLoader(corpus, 4, 5), 5, lr=1.0,
                 callback=lambda info: calls.append(info["step"]) or info["step"] < 3)
    assert calls == [1, 2, 3] and len(hist) == 1 and hist[0]["partial"] and hist[0]["step"] == 3


def test_state_carried_detached_when_sequential_and_reset_when_random():
    corpus = toy_corpus()
    m = Recorder(V, 8, seed=4)
    loader = SeqDataLoader(corpus, 4, 5, sampling="sequential", seed=0)
    train(m, loader, 2, lr=0.5)
    per_epoch = len(m.seen) // 2
    for i, (entered, left) in enumerate(m.seen):
        if i % per_epoch == 0:
            assert not entered.any()                                 # each epoch starts from zeros
        else:
            np.testing.assert_array_equal(entered, m.seen[i - 1][1])  # previous final state, carried
    m = Recorder(V, 8, seed=4)
    train(m, SeqDataLoader(corpus, 4, 5, sampling="random", seed=0), 1, lr=0.5)
    assert len(m.seen) > 3 and all(not entered.any() for entered, _ in m.seen)
    # a plain list counts as sequential; a wrapper with carries_state False as random
    batches = list(SeqDataLoader(corpus, 4, 5, seed=1))[:4]
    m = Recorder(V, 8, seed=4)
    train(m, batches, 1, lr=0.5)
    assert m.seen[2][0].any()

    class Shuffled(list):
        carries_state = False

    m = Recorder(V, 8, seed=4)
    train(m, Shuffled(batches), 1, lr=0.5)
    assert all(not entered.any() for entered, _ in m.seen)
    # a stacked LSTM's whole state (P*L, B, H) is carried, and reset by random sampling
    m = Recorder(V, 8, seed=4, cell="lstm", num_layers=2, dropout=0.2)
    train(m, SeqDataLoader(corpus, 4, 5, sampling="sequential", seed=0), 1, lr=0.5)
    assert m.seen[0][0].shape == (4, 4, 8) and not m.seen[0][0].any()
    for i in range(1, len(m.seen)):
        np.testing.assert_array_equal(m.seen[i][0], m.seen[i - 1][1])
    m = Recorder(V, 8, seed=4, cell="lstm", num_layers=2)
    train(m, SeqDataLoader(corpus, 4, 5, sampling="random", seed=0), 1, lr=0.5)
    assert all(not entered.any() and entered.shape == (4, 4, 8) for entered, _ in m.seen)


def test_training_with_truncated_bptt_and_adam():
    corpus = toy_corpus()
    m = RNNLM(V, 16, seed=5)
    hist = train(m, SeqDataLoader(corpus, 4, 10, seed=0), 4, lr=None, optimizer=Adam(0.01), bptt=Truncated(3))
    assert hist[-1]["train_ppl"] < 0.7 * hist[0]["train_ppl"]


def test_timemachine_short_run_lowers_perplexity(monkeypatch):
    monkeypatch.setenv("FASTSEQ_DATA_DIR", "/work/shared/data")
    ids, vocab = load_corpus("timemachine", token="char", cleaning="d2l")
    assert len(vocab) == 28 and len(ids) == 170580
    n = int(0.9 * len(ids))
    tr, te = ids[:n], ids[n:]
    m = RNNLM(len(vocab), 32, seed=0)
    start_ppl = evaluate(m, te)
    assert abs(start_ppl - 28) < 0.5          # tiny initial weights: nearly uniform
    hist = train(m, SeqDataLoader(tr, 32, 35, seed=0), 2, lr=1.0, clip=1.0)
    assert hist[1]["train_ppl"] < hist[0]["train_ppl"] < 28
    # held-out perplexity beats the unigram (letter frequency) model, computed here
    freq = np.bincount(tr, minlength=28) / len(tr)
    unigram = math.exp(-np.mean(np.log(freq[te[1:]])))
    assert evaluate(m, te) < 0.85 * unigram
    text = predict("time traveller ", 20, m, vocab)
    assert text.startswith("time traveller ") and len(text) == 35


# ------------------------------------------------------------------ divergence
def test_nan_during_training_names_the_step():
    corpus = toy_corpus()
    m = RNNLM(V, 8, seed=6)

    def poison(info):
        if info["step"] == 3:
            m.params["W_hh"][0, 0] = np.nan

    with pytest.raises(DivergenceError, match=r"step 4 \(epoch 1\).*loss.*learning rate") as e:
        train(m, SeqDataLoader(corpus, 4, 5), 1, lr=1.0, callback=poison)
    assert isinstance(e.value, FloatingPointError) and e.value.step == 4


def test_exploding_update_names_the_parameter():
    corpus = toy_corpus()
    m = RNNLM(V, 8, seed=7)
    with pytest.raises(DivergenceError, match=r"step 1 .*parameter"):
        train(m, SeqDataLoader(corpus, 4, 5), 1, lr=1e300, clip=None)


def test_train_bad_arguments():
    m = RNNLM(V, 8)
    data = SeqDataLoader(toy_corpus(), 4, 5)
    with pytest.raises(ValueError, match="epochs"):
        train(m, data, 0, lr=1.0)
    with pytest.raises(ValueError, match="clip"):
        train(m, data, 1, lr=1.0, clip=-1)
    with pytest.raises(ValueError, match="lr"):
        train(m, data, 1, lr=0)
    with pytest.raises(ValueError, match="callback"):
        train(m, data, 1, lr=1.0, callback=3)
    with pytest.raises(ValueError, match="X"):
        train(m, [(np.full((2, 3), V), np.zeros((2, 3), dtype=int))], 1, lr=1.0)
    with pytest.raises(ValueError, match="loader: an epoch produced no batches"):
        train(m, [], 1, lr=1.0)


# ------------------------------------------------------------------ evaluate
@pytest.mark.parametrize("model", [{}, dict(cell="lstm", num_layers=2, dropout=0.5), dict(cell="gru")],
                         ids=["rnn", "lstm2", "gru"])
@pytest.mark.parametrize("n, B", [(101, 4), (100, 4), (37, 5), (9, 32)])
def test_evaluate_equals_streams_run_in_one_piece(n, B, model):
    """Every cell's state (the LSTM's (h, c) of every layer) is carried across chunks and into the tail;
    evaluation never drops."""
    m = RNNLM(V, 8, dtype=np.float64, seed=8, **model)
    rng = np.random.default_rng(9)
    for p in m.params.values():
        p[...] = rng.normal(0, 0.5, p.shape)
    ids = toy_corpus(n, seed=n)
    # streams: B' = min(B, n-1) pieces of L predictions; the last one also takes the tail
    Bp = min(B, n - 1)
    L = (n - 1) // Bp
    total = 0.0
    for b in range(Bp):
        end = (b + 1) * L if b < Bp - 1 else n - 1
        x, y = ids[b * L:end], ids[b * L + 1:end + 1]
        total += naive_ce(m, x[None], y[None], None) * len(x)
    expected = math.exp(total / (n - 1))
    for T in (1, 3, 35):
        assert evaluate(m, ids, batch_size=B, num_steps=T) == pytest.approx(expected, rel=1e-12)


def test_evaluate_bad_inputs():
    m = RNNLM(V, 8)
    with pytest.raises(ValueError, match="ids"):
        evaluate(m, np.array([0, V]))
    with pytest.raises(ValueError, match="ids"):
        evaluate(m, np.array([1]))
    with pytest.raises(ValueError, match="ids"):
        evaluate(m, np.zeros((3, 3), dtype=int))
    with pytest.raises(ValueError, match="num_steps"):
        evaluate(m, np.array([0, 1, 2]), num_steps=0)


# ------------------------------------------------------------------ generation
def test_predict_and_sampling():
    vocab = Vocab("abcab cab")
    m = RNNLM(len(vocab), 8, dtype=np.float64, seed=10)
    rng = np.random.default_rng(11)
    for p in m.params.values():
        p[...] = rng.normal(0, 1.0, p.shape)
    greedy = m.generate(np.array(vocab[list("ab")]), 10)
    assert predict("ab", 10, m, vocab) == "ab" + "".join(vocab.to_tokens(greedy))
    assert predict(["a", "b"], 3, m, vocab) == ["a", "b"] + vocab.to_tokens(greedy[:3])
    s1 = predict("ab", 30, m, vocab, temperature=1.0, rng=5)
    assert s1 == predict("ab", 30, m, vocab, temperature=1.0, rng=np.random.default_rng(5))
    assert s1 != predict("ab", 30, m, vocab, temperature=1.0, rng=6)
    u = np.random.default_rng(5).random(30)
    assert s1 == "ab" + "".join(vocab.to_tokens(m.generate(np.array(vocab[list("ab")]), 30, 1.0, 0, u)))
    assert predict("ab", 10, m, vocab, temperature=2.0, top_k=1, rng=0) == predict("ab", 10, m, vocab)
    np.testing.assert_array_equal(sample(m, [1], 5, temperature=0.0), m.generate([1], 5))
    with pytest.raises(ValueError, match="prefix"):
        predict("", 3, m, vocab)
    with pytest.raises(ValueError, match="prefix"):
        predict(42, 3, m, vocab)


# ------------------------------------------------------------------ diagnostics
def test_state_grad_norms_match_finite_differences():
    """||dL/dH_t||: perturb H_t inside an independent forward and difference the loss."""
    H, B, T = 3, 2, 5
    m = RNNLM(V, H, dtype=np.float64, seed=12)
    rng = np.random.default_rng(13)
    for p in m.params.values():
        p[...] = rng.normal(0, 0.8, p.shape)
    X, Y = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    p = m.params

    def loss(t_pert, delta, terms):
        h, total = np.zeros((B, H)), 0.0
        for t in range(T):
            h = np.tanh(p["W_xh"][X[:, t]] + h @ p["W_hh"] + p["b_h"])
            if t == t_pert:
                h = h + delta
            O = h @ p["W_hq"] + p["b_q"]
            O = O - O.max(1, keepdims=True)
            if t in terms:
                total -= (O[np.arange(B), Y[:, t]] - np.log(np.exp(O).sum(1))).sum()
        return total / (B * T)

    def fd_norms(terms):
        out = []
        for t in range(T):
            g = np.zeros((B, H))
            for i in np.ndindex(B, H):
                d = np.zeros((B, H))
                d[i] = 1e-6
                g[i] = (loss(t, d, terms) - loss(t, -d, terms)) / 2e-6
            out.append(np.linalg.norm(g))
        return out

    got = state_grad_norms(m, X, Y)
    assert got.shape == (T,)
    np.testing.assert_allclose(got, fd_norms(range(T)), rtol=1e-6)
    last = state_grad_norms(m, X, Y, term=-1)
    np.testing.assert_allclose(last, fd_norms([T - 1]), rtol=1e-6)
    np.testing.assert_array_equal(state_grad_norms(m, X, Y, term=T - 1), last)
    second = state_grad_norms(m, X, Y, term=1)
    np.testing.assert_allclose(second, fd_norms([1]), rtol=1e-6, atol=1e-12)
    assert np.all(second[2:] == 0)                      # term 1 does not reach later states
    d = gradient_diagnostics(m, X, Y)
    np.testing.assert_array_equal(d["state_grad_norms"], got)
    np.testing.assert_array_equal(d["last_term_grad_norms"], last)
    assert d["spectral_radius"] == spectral_radius(m)
    for bad in (T, -T - 1, 1.5, True):
        with pytest.raises(ValueError, match="term"):
            state_grad_norms(m, X, Y, term=bad)


def test_spectral_radius_and_vanishing_vs_exploding():
    """W_hh = r Q with Q orthogonal (two plane rotations): every eigenvalue has modulus r.
    Near-zero states keep tanh linear, so dL/dH_t sums powers of W_hh^T over later terms:
    with r > 1 the norm grows going back in time (explodes), with r < 1 it stays bounded."""
    def rot(a):
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])

    Q = np.zeros((4, 4))
    Q[:2, :2], Q[2:, 2:] = rot(0.3), rot(1.1)
    m = RNNLM(V, 4, dtype=np.float64, seed=15)
    m.params["W_hq"][...] = np.random.default_rng(16).normal(size=(4, V))
    m.params["W_xh"] *= 1e-4                    # states < 1e-4 even at r = 1.3: tanh linear to ~1e-8
    X = np.zeros((2, 12), dtype=int)
    Y = np.tile(np.arange(12) % V, (2, 1))
    ratios = {}
    for r in (0.5, 1.3):
        m.params["W_hh"][...] = r * Q
        assert spectral_radius(m) == pytest.approx(r, rel=1e-12)
        g = state_grad_norms(m, X, Y)
        ratios[r] = g[0] / g[-1]
        # the last term alone: ||dl_{T-1}/dH_t|| = r^(T-1-t) ||dl_{T-1}/dH_{T-1}|| (Q orthogonal,
        # tanh' = 1 - H^2 = 1 up to ~1e-8 because the states stay below 1e-4)
        last = state_grad_norms(m, X, Y, term=-1)
        np.testing.assert_allclose(last / last[-1], r ** np.arange(11, -1, -1.0), rtol=1e-6)
    assert ratios[0.5] < 3 and ratios[1.3] > 10 * ratios[0.5]
    # a stack: the largest over its layers; a gated cell has no single square W_hh
    m2 = RNNLM(V, 4, dtype=np.float64, num_layers=2)
    m2.params["W_hh"][...], m2.params["W_hh_l1"][...] = 0.5 * Q, 0.9 * Q
    assert spectral_radius(m2) == pytest.approx(0.9, rel=1e-12)
    assert spectral_radius(RNNLM(V, 4, cell="lstm")) is None


# ------------------------------------------------------------------ optimisers
def test_adam_matches_the_formula_and_resumes():
    rng = np.random.default_rng(14)
    p0 = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)}
    gs = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for _ in range(4)]
    params = {k: v.copy() for k, v in p0.items()}
    opt = Adam(0.1, betas=(0.8, 0.9), eps=1e-6)
    for g in gs:
        opt.step(params, g)
    # by hand
    for k in p0:
        p, mm, vv = p0[k].copy(), 0.0, 0.0
        for t, g in enumerate(gs, 1):
            mm = 0.8 * mm + 0.2 * g[k]
            vv = 0.9 * vv + 0.1 * g[k] ** 2
            p = p - 0.1 * (mm / (1 - 0.8 ** t)) / (np.sqrt(vv / (1 - 0.9 ** t)) + 1e-6)
        np.testing.assert_allclose(params[k], p, rtol=1e-12, atol=1e-14)
    # resume from a state_dict after two steps == uninterrupted
    a = {k: v.copy() for k, v in p0.items()}
    o1 = Adam(0.1, betas=(0.8, 0.9), eps=1e-6)
    o1.step(a, gs[0])
    o1.step(a, gs[1])
    o2 = Adam()
    o2.load_state_dict(o1.state_dict())
    o2.step(a, gs[2])
    o2.step(a, gs[3])
    for k in p0:
        np.testing.assert_allclose(a[k], params[k], rtol=1e-12, atol=1e-14)


def test_sgd_and_optimizer_validation():
    p = {"w": np.ones(3, dtype=np.float32)}
    SGD(0.5).step(p, {"w": np.array([1, 2, 4], dtype=np.float32)})
    np.testing.assert_array_equal(p["w"], [0.5, 0.0, -1.0])
    assert p["w"].dtype == np.float32
    o = SGD(0.1)
    o.load_state_dict(SGD(0.3).state_dict())
    assert o.lr == 0.3
    with pytest.raises(ValueError, match="lr"):
        SGD(-1)
    with pytest.raises(ValueError, match="betas"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        Adam(eps=0)
    with pytest.raises(ValueError, match="grads"):
        SGD(1).step(p, {"v": np.ones(3)})
    with pytest.raises(ValueError, match="grads"):
        SGD(1).step(p, {"w": np.ones(4)})
    with pytest.raises(ValueError, match="state"):
        Adam().load_state_dict(SGD(1).state_dict())


# ------------------------------------------------------------------ factories, sampler
def test_optimizer_from_spec():
    from fastseq import optim
    from fastseq.errors import ArgumentError

    assert isinstance(optim.from_spec("sgd"), SGD) and optim.from_spec("sgd").lr == 1.0
    a = optim.from_spec("adam", 0.01, betas=(0.8, 0.9))
    assert isinstance(a, Adam) and a.lr == 0.01 and a.betas == (0.8, 0.9)
    assert optim.from_spec("adam").lr == 1e-3
    with pytest.raises(ArgumentError, match="optimizer"):
        optim.from_spec("rmsprop")
    with pytest.raises(ArgumentError, match="lr"):
        optim.from_spec("sgd", -1)


def test_predict_words_and_logit_bias_forbids_unk():
    vocab = Vocab("the cat sat on the mat".split())
    m = RNNLM(len(vocab), 8, dtype=np.float64, seed=10)
    out = predict("the cat", 4, m, vocab, token="word")
    greedy = m.generate(np.array(vocab[["the", "cat"]]), 4)
    assert out == "the cat" + "".join(" " + t for t in vocab.to_tokens(greedy))

    # a model that prefers '<unk>' above all: generate says it, predict never does
    m.params["b_q"][vocab.unk] = 50.0
    raw = m.generate(np.array(vocab[["the"]]), 20, temperature=5.0, uniforms=np.random.default_rng(0).random(20))
    assert vocab.unk in raw.tolist()
    for temperature in (0.0, 1.0, 1000.0):
        out = predict(["the"], 20, m, vocab, temperature=temperature, rng=0)
        assert "<unk>" not in out and len(out) == 21
    with pytest.raises(ValueError, match="temperature"):
        sample(m, [1], 3, temperature=-1)
    with pytest.raises(ValueError, match="num_preds"):
        sample(m, [1], -1)


def test_evaluate_reports_overflow_as_inf_and_evaluate_nll_counts():
    from fastseq.training import evaluate_nll

    m = RNNLM(V, 8, dtype=np.float64, seed=8)
    ids = toy_corpus(50)
    total, n = evaluate_nll(m, ids)
    assert n == 49 and evaluate(m, ids) == pytest.approx(math.exp(total / n), rel=1e-15)
    m.params["W_hq"][...] = 0
    m.params["b_q"][...] = [1e6, -1e6, 0, 0, 0, 0]     # a model certain of id 0: cross-entropy ~1e6
    assert evaluate(m, np.array([0, 1, 2, 1] * 5)) == math.inf
