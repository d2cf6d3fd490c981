"""Training, evaluation, generation and gradient diagnostics for RNN language models.

Works with any model of the RNNLM API (fastseq.reference.RNNLM or the C++
fastseq.RNNLM). Legend: B batch, T steps, H hidden, V vocabulary.
Perplexity is the seed's: exp of the mean cross-entropy per predicted token.
"""
import math
import numbers
import time

import numpy as np

from .clip import clip_grad_norm as _cpp_clip
from .optim import SGD
from .reference.clip import clip_grad_norm as _ref_clip

__all__ = ["DivergenceError", "train", "train_step", "evaluate", "predict", "sample", "state_grad_norms",
           "spectral_radius", "gradient_diagnostics"]

_ADVICE = ("lower the learning rate, clip the gradients (clip=1.0), or use truncated BPTT "
           "(bptt=Truncated(tau))")


class DivergenceError(FloatingPointError):
    """Training produced a NaN/inf loss, gradient norm or parameter; ``step`` names the step (1-based)."""

    def __init__(self, step, epoch, what, value):
        self.step, self.epoch, self.what, self.value = step, epoch, what, value
        super().__init__(f"training diverged at step {step} (epoch {epoch}): {what} is {value}; {_ADVICE}")


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _global_norm(grads):
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


def _clip_fn(model):
    return _cpp_clip if getattr(model, "backend", "numpy") == "cpp" else _ref_clip


def train_step(model, optimizer, X, Y, state, clip=None, bptt=None, step=1, epoch=1):
    """One optimisation step: loss_and_grad, global-norm clipping (None: only the norm), update.

    Returns (loss, gradient norm before clipping, new_state). Raises
    DivergenceError naming ``step`` and ``epoch`` when the loss, the gradient
    norm or a parameter stops being finite (overflow is reported this way, not
    as NumPy warnings); the parameters may then already be updated.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        loss, grads, new_state = model.loss_and_grad(X, Y, state, bptt=bptt)
        if not math.isfinite(loss):
            raise DivergenceError(step, epoch, "the loss", loss)
        norm = _clip_fn(model)(grads, clip) if clip is not None else _global_norm(grads)
        if not math.isfinite(norm):
            raise DivergenceError(step, epoch, "the gradient norm", norm)
        optimizer.step(model.params, grads)
        for k, p in model.params.items():
            if not np.all(np.isfinite(p)):
                raise DivergenceError(step, epoch, f"parameter {k}", "nan/inf after the update")
    return loss, norm, new_state


def train(model, data_iter, num_epochs, lr, clip=1.0, bptt=None, optimizer=None, callback=None):
    """Train ``model`` in place; return a history, one dict per epoch.

    data_iter: a fastseq.data.SeqDataLoader or any re-iterable of (X, Y) id
    arrays (B, T). If it has ``carries_state`` False (random sampling) the
    state is re-initialised for every batch; otherwise (sequential) the final
    state of a batch enters the next one, detached. Each epoch starts from zeros.
    lr: the learning rate of the default optimizer SGD(lr) (ignored when
    ``optimizer`` is given). clip: theta of global-norm clipping, None for none.
    bptt: a fastseq.bptt strategy (None: Full()). callback(info) is called after
    every step with info = {epoch, step, loss, grad_norm, tokens_per_s}; returning
    False stops training (the partial epoch is recorded).

    History entries: epoch, perplexity (exp of the mean training cross-entropy),
    tokens_per_s, grad_norm_mean and grad_norm_max (before clipping), seconds.
    Raises DivergenceError (a FloatingPointError) naming the step when the loss,
    the gradient norm or a parameter stops being finite.
    """
    num_epochs = _check_int("num_epochs", num_epochs, 1)
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not (0 < clip < math.inf):
            raise ValueError(f"clip: expected a finite number > 0 or None, got {clip!r}")
    if optimizer is None:
        optimizer = SGD(lr)
    if callback is not None and not callable(callback):
        raise ValueError(f"callback: expected a callable or None, got {callback!r}")
    carries = getattr(data_iter, "carries_state", True) is not False
    history, step, stop = [], 0, False
    for epoch in range(1, num_epochs + 1):
        state, total_loss, tokens, norms = None, 0.0, 0, []
        start = time.perf_counter()
        for X, Y in data_iter:
            step += 1
            B = np.shape(X)[0]
            if state is None or not carries or state.shape[0] != B:
                state = model.begin_state(B)
            loss, norm, state = train_step(model, optimizer, X, Y, state, clip, bptt, step, epoch)
            n = int(np.size(Y))
            total_loss += loss * n
            tokens += n
            norms.append(norm)
            if callback is not None:
                info = dict(epoch=epoch, step=step, loss=loss, grad_norm=norm,
                            tokens_per_s=tokens / max(time.perf_counter() - start, 1e-12))
                if callback(info) is False:
                    stop = True
                    break
        seconds = time.perf_counter() - start
        if tokens == 0:
            raise ValueError("data_iter: an epoch produced no batches")
        history.append(dict(epoch=epoch, perplexity=math.exp(total_loss / tokens),
                            tokens_per_s=tokens / max(seconds, 1e-12), grad_norm_mean=float(np.mean(norms)),
                            grad_norm_max=float(np.max(norms)), seconds=seconds))
        if stop:
            break
    return history


def evaluate(model, corpus_ids, batch_size=32, num_steps=35):
    """Perplexity of ``model`` on ``corpus_ids`` (1-D ids), every token after the first predicted once.

    The corpus is cut into batch_size contiguous streams (the book's
    sequential partition without an offset), read num_steps at a time with the
    state carried across chunks; the (len - 1) % batch_size leftover tokens at
    the end continue the last stream's state, so no token is skipped.
    """
    ids = np.asarray(corpus_ids)
    V = model.params["W_hq"].shape[1]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"corpus_ids: expected a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.shape[0] < 2:
        raise ValueError("corpus_ids: expected at least 2 tokens")
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"corpus_ids: ids must lie in [0, {V}), got values in [{ids.min()}, {ids.max()}]")
    B = _check_int("batch_size", batch_size, 1)
    T = _check_int("num_steps", num_steps, 1)
    n = ids.shape[0] - 1                       # predicted tokens
    B = min(B, n)
    L = n // B                                 # predictions per stream
    X, Y = ids[:B * L].reshape(B, L), ids[1:B * L + 1].reshape(B, L)
    nll, count = 0.0, 0

    def chunk_nll(x, y, state):
        logits, state = model(np.ascontiguousarray(x), state)
        z = logits.astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return -np.take_along_axis(logp, y[..., None].astype(np.intp), axis=-1).sum(), state

    state = model.begin_state(B)
    for s in range(0, L, T):
        v, state = chunk_nll(X[:, s:s + T], Y[:, s:s + T], state)
        nll, count = nll + v, count + X[:, s:s + T].size
    rest = n - B * L
    if rest:                                   # the tail continues stream B-1 (which ends at B*L)
        state = state[B - 1:B].copy()
        tx, ty = ids[B * L:n][None], ids[B * L + 1:n + 1][None]
        for s in range(0, rest, T):
            v, state = chunk_nll(tx[:, s:s + T], ty[:, s:s + T], state)
            nll, count = nll + v, count + tx[:, s:s + T].size
    assert count == n
    return math.exp(nll / n)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def sample(model, prefix_ids, num_preds, temperature=1.0, top_k=0, rng=None):
    """Generate num_preds ids after prefix_ids; temperature > 0 samples with uniforms from
    ``rng`` (a Generator or a seed; one draw per generated token), 0 is greedy."""
    n = _check_int("num_preds", num_preds, 0)
    if temperature == 0:
        return model.generate(prefix_ids, n, temperature=0.0, top_k=top_k)
    return model.generate(prefix_ids, n, temperature=temperature, top_k=top_k, uniforms=_rng(rng).random(n))


def predict(prefix, num_preds, model, vocab, temperature=0.0, top_k=0, rng=None):
    """The book's predict_ch8: warm up on ``prefix``, then generate num_preds tokens.

    prefix: a string (its characters are the tokens; the result is a string)
    or a list of tokens (the result is the list of prefix + generated tokens).
    temperature 0 is greedy; > 0 samples (top_k, rng as in ``sample``).
    """
    if isinstance(prefix, str):
        tokens = list(prefix)
    elif isinstance(prefix, (list, tuple)):
        tokens = list(prefix)
    else:
        raise ValueError(f"prefix: expected a string or a list of tokens, got {type(prefix).__name__}")
    if not tokens:
        raise ValueError("prefix: expected at least one token")
    ids = np.asarray(vocab[tokens], dtype=np.int64)
    out = sample(model, ids, num_preds, temperature=temperature, top_k=top_k, rng=rng)
    gen = vocab.to_tokens(out)
    return prefix + "".join(gen) if isinstance(prefix, str) else tokens + gen


def state_grad_norms(model, X, Y, state=None, bptt=None, term=None):
    """||dL/dH_t|| (Frobenius over batch and hidden) for t = 0..T-1 of one window -> float64 (T,).

    With Full() this is the exact gradient of the window's loss w.r.t. each
    hidden state. ``term``: the index of one loss term (e.g. -1, the last) to
    back-propagate alone; then the norms show the seed's W_hh^T powers directly:
    vanishing (falling quickly towards t = 0) or exploding (growing). Computed
    with the NumPy reference maths on ``model.params`` (any backend).
    """
    if term is not None:
        T = np.shape(X)[1]
        if isinstance(term, bool) or not isinstance(term, numbers.Integral) or not -T <= term < T:
            raise ValueError(f"term: expected None or a step index in [-{T}, {T}), got {term!r}")
        term = int(term) % T
    dH = model.state_grads(X, Y, state, bptt, term)
    return np.sqrt(np.sum(np.square(dH, dtype=np.float64), axis=(1, 2)))


def spectral_radius(model):
    """max |eigenvalue| of W_hh (float64): > 1 lets gradients explode, < 1 vanish (for small states)."""
    return float(np.max(np.abs(np.linalg.eigvals(model.params["W_hh"].astype(np.float64)))))


def gradient_diagnostics(model, X, Y, state=None, bptt=None):
    """dict(state_grad_norms=(T,), last_term_grad_norms=(T,), spectral_radius=float) for one window."""
    return dict(state_grad_norms=state_grad_norms(model, X, Y, state, bptt),
                last_term_grad_norms=state_grad_norms(model, X, Y, state, bptt, term=-1),
                spectral_radius=spectral_radius(model))
