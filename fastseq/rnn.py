"""The RNN layer and language model on the C++ backend (fastseq._core, csrc/rnn.h).

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size.

``fastseq.RNN`` and ``fastseq.RNNLM`` are the NumPy reference classes
(fastseq.reference.rnn) with the hot methods (forward, backward, __call__,
loss_and_grad, generate) run by compiled kernels. Same constructor (plus
``backend='cpp'`` or ``'numpy'``), same parameters, same results (up to
rounding), same errors: arguments are checked by the reference's own checks
first, then again at the binding boundary. ``backend='numpy'`` runs the
reference itself, so code written against one runs on the other.

Threads: ``fastseq.set_num_threads(n)`` sets how many cores a call may use.
A training step or layer pass large enough to repay it (about H >= 48 at the
book's B*T = 1120) splits its batch into n slices run side by side (the rows
are independent through the recurrence); generation at H >= 256 splits W_hh's
columns. The kernels release the GIL, so models can also run in several
Python threads. Results agree to rounding whatever the thread count.
"""

import numpy as np

from . import _core
from .bptt import as_strategy
from .reference import rnn as _ref

__all__ = ["RNN", "RNNLM"]

_BACKENDS = ("cpp", "numpy")


def _check_backend(backend):
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected 'cpp' or 'numpy', got {backend!r}")
    return backend


def _c(a, dtype=None):
    """a as a C-contiguous, aligned array (no copy when it already is); the kernels need both."""
    return np.require(a, dtype=dtype, requirements="CA")


def _plan(bptt, T, B, dtype):
    """The strategy's plan as the kernels take it: (scale (T, B) contiguous or None, window)."""
    scale, window = as_strategy(bptt).plan(T, B, dtype)
    if window and scale is not None:
        raise ValueError("bptt: a plan has either a scale or a sliding window, not both")
    if scale is not None:
        scale = _c(scale, dtype)
    return scale, int(window)


def _ids(name, ids, V, ndim):
    """Integer ids checked as the reference checks them (dtype, ndim, range), as contiguous int64."""
    return _c(_ref._check_ids(name, ids, V, ndim), np.int64)


class RNN(_ref.RNN):
    """The RNN layer, H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h), time-major, on C++ kernels.

    Same API as fastseq.reference.RNN; ``backend='numpy'`` runs the reference.
    params: W_xh (D, H), W_hh (H, H), b_h (H,).
    """

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", dtype=np.float32, seed=0, backend="cpp"):
        self.backend = _check_backend(backend)
        super().__init__(input_size, hidden_size, nonlinearity=nonlinearity, dtype=dtype, seed=seed)

    def forward(self, X, h0=None):
        """X (T, B, D), h0 (B, H) or None (zeros) -> (Hs (T, B, H), cache = (X, h0, Hs))."""
        if self.backend == "numpy":
            return super().forward(X, h0)
        _ref._check_float("X", X, (None, None, self.input_size), self.dtype)
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X: expected T >= 1 and B >= 1, got shape {X.shape}")
        h0 = _ref._state("h0", h0, X.shape[1], self.hidden_size, self.dtype)
        X, h0 = _c(X), _c(h0)
        Hs = _core.rnn_forward(X, h0, self.params, self.nonlinearity)
        return Hs, (X, h0, Hs)

    def backward(self, dHs, cache, dH_T=None, bptt=None):
        """dHs (T, B, H), cache from forward, dH_T (B, H) or None -> (dX (T, B, D), dh0 (B, H), grads).

        bptt: a strategy of fastseq.bptt (None means Full()).
        """
        if self.backend == "numpy":
            return super().backward(dHs, cache, dH_T=dH_T, bptt=bptt)
        if not (isinstance(cache, tuple) and len(cache) == 3):
            raise ValueError("cache: expected the (X, h0, Hs) tuple returned by forward")
        X, h0, Hs = cache
        H = self.hidden_size
        _ref._check_float("cache X", X, (None, None, self.input_size), self.dtype)
        T, B = X.shape[:2]
        _ref._check_float("cache h0", h0, (B, H), self.dtype)
        _ref._check_float("cache Hs", Hs, (T, B, H), self.dtype)
        _ref._check_float("dHs", dHs, (T, B, H), self.dtype)
        if dH_T is not None:
            _ref._check_float("dH_T", dH_T, (B, H), self.dtype)
            dH_T = _c(dH_T)
        scale, window = _plan(bptt, T, B, self.dtype)
        return _core.rnn_backward(_c(dHs), _c(X), _c(h0), _c(Hs), self.params, self.nonlinearity,
                                  dH_T, scale, window)


class RNNLM(_ref.RNNLM):
    """The RNN language model on token ids (B, T), on C++ kernels.

    Same API as fastseq.reference.RNNLM; ``backend='numpy'`` runs the reference.
    params: W_xh (V, H), W_hh (H, H), b_h (H,), W_hq (H, V), b_q (V,).
    The training step (loss_and_grad) is one call: row gather, recurrence,
    output projection, softmax cross-entropy and the whole backward pass.
    """

    def __init__(self, vocab_size, num_hiddens, nonlinearity="tanh", dtype=np.float32, seed=0, backend="cpp"):
        self.backend = _check_backend(backend)
        super().__init__(vocab_size, num_hiddens, nonlinearity=nonlinearity, dtype=dtype, seed=seed)

    def _inputs(self, X, state):
        ids = _ids("X", X, self.vocab_size, 2)
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"X: expected B >= 1 and T >= 1, got shape {ids.shape}")
        h0 = _ref._state("state", state, ids.shape[0], self.num_hiddens, self.dtype)
        return ids, _c(h0)

    def __call__(self, X, state):
        """ids X (B, T), state (B, H) or None -> (logits (B, T, V), new_state (B, H))."""
        if self.backend == "numpy":
            return super().__call__(X, state)
        ids, h0 = self._inputs(X, state)
        return _core.lm_forward(ids, h0, self.params, self.nonlinearity)

    def loss_and_grad(self, X, Y, state, bptt=None):
        """ids X, Y (B, T), state (B, H) or None -> (loss, grads, new_state (B, H)).

        loss: mean cross-entropy over the B*T tokens (natural log). grads: same
        keys and shapes as params. new_state: H_{T-1}, a fresh (detached) array.
        bptt: Full() (None), Truncated(tau, mode) or Randomized(...).
        """
        if self.backend == "numpy":
            return super().loss_and_grad(X, Y, state, bptt=bptt)
        ids, h0 = self._inputs(X, state)
        Y = _ids("Y", Y, self.vocab_size, 2)
        if Y.shape != ids.shape:
            raise ValueError(f"Y: expected the shape of X {tuple(ids.shape)}, got {Y.shape}")
        B, T = ids.shape
        scale, window = _plan(bptt, T, B, self.dtype)
        return _core.lm_loss_and_grad(ids, Y, h0, self.params, self.nonlinearity, scale, window)

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, uniforms=None):
        """The book's predict: warm up on prefix_ids, then emit num_preds ids -> int32 (num_preds,).

        temperature 0: greedy (argmax, ties to the lowest id). temperature > 0:
        the sample_token rule with uniforms[i] (float64 (num_preds,), in [0, 1))
        for the i-th generated token; top_k > 0 keeps the top_k logits only.
        """
        if self.backend == "numpy":
            return super().generate(prefix_ids, num_preds, temperature=temperature, top_k=top_k,
                                    uniforms=uniforms)
        prefix, n, temperature, top_k, uniforms = _ref._check_generate(
            prefix_ids, num_preds, temperature, top_k, uniforms, self.vocab_size)
        top_k = min(top_k, self.vocab_size)  # top_k >= V keeps all
        if uniforms is not None:
            uniforms = _c(uniforms)
        return _core.lm_generate(_c(prefix, np.int64), n, self.params, self.nonlinearity, temperature, top_k,
                                 uniforms)
