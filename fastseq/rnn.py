"""The RNN layer (`RNN`) and language model (`RNNLM`) of *Dive into Deep Learning* (Zhang, Lipton,
Li, Smola), chapter 8, "Recurrent Neural Networks", on the ops of your choice.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size.

A model checks its arguments, owns its parameters (init, state_dict, config)
and hands the maths to its ops object (``model.ops``, named by
``model.backend``): ``backend='cpp'`` (default) runs the C++ kernels,
``backend='numpy'`` the NumPy reference (fastseq.reference.ops); see
fastseq.ops. Code written against one runs on the other with the same results
up to rounding. ``fastseq.reference.RNN`` / ``RNNLM`` are these classes with
the NumPy ops as their default.
"""
import math
import os

import numpy as np

from ._checks import check_choice, check_int, check_real
from .bptt import as_strategy
from .errors import ArgumentError
from .ops import get_ops

__all__ = ["RNN", "RNNLM", "bptt_plan"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NONLINEARITIES = ("tanh", "relu")


# ----------------------------------------------------------------------------- checks
def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _DTYPES:
        raise ArgumentError(f"dtype: expected float32 or float64, got {dtype!r}")
    return dt


def _memory_bytes():
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _check_fits(sizes, shapes, dtype):
    """Refuse, before allocating, parameters that cannot fit in this machine's memory.

    sizes: {argument name: value}; the largest is named as the one to reduce.
    Initialisation draws each matrix in float64 before the cast, so the peak is
    every parameter in dtype plus the largest matrix in float64.
    """
    counts = [math.prod(s) for s in shapes]
    need = sum(counts) * dtype.itemsize + max(counts) * 8
    have = _memory_bytes()
    if have is not None and need > have:
        name = max(sizes, key=sizes.get)
        raise ArgumentError(f"{name}: {sizes[name]} makes parameters of {need / 2**30:.1f} GiB "
                            f"({', '.join(f'{k}={v}' for k, v in sizes.items())}, {dtype.name}), "
                            f"more than this machine's memory ({have / 2**30:.1f} GiB)")


def _check_float(name, a, shape, dtype):
    """a must be an ndarray of exactly `dtype` and `shape` (None in shape: any size)."""
    if not isinstance(a, np.ndarray):
        raise ArgumentError(f"{name}: expected a numpy array of {dtype} with shape {shape}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ArgumentError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ArgumentError(f"{name}: expected shape {want}, got {a.shape}")
    return a


def _check_ids(name, ids, V, ndim):
    """Token ids as an intp array of `ndim` dimensions, each in [0, V)."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ArgumentError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        raise ArgumentError(f"{name}: expected a {ndim}-D array of ids, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ArgumentError(f"{name}: ids must lie in [0, {V}), got values in [{ids.min()}, {ids.max()}]")
    return ids.astype(np.intp)


def _state(name, state, B, H, dtype):
    if state is None:
        return np.zeros((B, H), dtype=dtype)
    return _check_float(name, state, (B, H), dtype)


def bptt_plan(bptt, T, B, dtype):
    """The BPTT strategy's plan (scale (T, B) or None, window) for T steps of B sequences, checked once
    for both ops: a plan has a scale or a sliding window, not both."""
    scale, window = as_strategy(bptt).plan(T, B, dtype)
    if window and scale is not None:
        raise ArgumentError("bptt: a plan has either a scale or a sliding window, not both")
    if scale is not None:
        scale = _check_float("bptt scale", np.asarray(scale, dtype=dtype), (T, B), dtype)
    return scale, int(window)


# ----------------------------------------------------------------------------- shared by both models
class _Model:
    """What both models share: the ops, the parameters and their (de)serialisation."""

    def _init(self, sizes, shapes, nonlinearity, dtype, seed, backend):
        """Parameters of `shapes` ({name: shape}, the matrices drawn in order, biases zero)."""
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, _NONLINEARITIES)
        self.dtype = _check_dtype(dtype)
        self.ops = get_ops(backend)
        _check_fits(sizes, shapes.values(), self.dtype)
        rng = np.random.default_rng(seed)
        self.params = {k: (rng.normal(0, 0.01, s) if len(s) == 2 else np.zeros(s)).astype(self.dtype)
                       for k, s in shapes.items()}  # the book's scale, 0.01; drawn in float64, then cast

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args}, backend={self.backend!r})"

    @property
    def backend(self):
        """The name of the ops running this model: 'cpp' or 'numpy'."""
        return self.ops.name

    @classmethod
    def from_config(cls, config, backend=None):
        """An untrained model from ``config`` (a dict as ``model.config`` returns) on ``backend``
        (None: the class's default, 'cpp' for fastseq's models, 'numpy' for fastseq.reference's)."""
        if not isinstance(config, dict):
            raise ArgumentError(f"config: expected a dict, got {type(config).__name__}")
        keys = cls._CONFIG_KEYS
        extra = sorted(set(config) - set(keys), key=str)
        if extra:
            raise ArgumentError(f"config: unexpected key {extra[0]!r} for {cls.__name__} (expected {list(keys)})")
        missing = [k for k in keys[:2] if k not in config]
        if missing:
            raise ArgumentError(f"config: {missing[0]!r} is missing (expected {list(keys)})")
        return cls(**config) if backend is None else cls(**config, backend=backend)

    @property
    def config(self):
        """The constructor's arguments that define the model's function: from_config(config) rebuilds it."""
        sizes = {k: getattr(self, k) for k in self._CONFIG_KEYS[:2]}
        return dict(sizes, nonlinearity=self.nonlinearity, dtype=self.dtype.name)

    def state_dict(self):
        """A dict of copies of the parameters."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, d):
        """Copy the arrays of `d` into the parameters; names, shapes and finiteness (in the model's dtype) checked."""
        if not isinstance(d, dict):
            raise ArgumentError(f"state_dict: expected a dict of arrays, got {type(d).__name__}")
        for k in sorted(set(self.params) - set(d)):
            raise ArgumentError(f"{k}: missing from the state_dict (expected keys {sorted(self.params)})")
        for k in sorted(set(d) - set(self.params), key=str):
            raise ArgumentError(f"{k}: unexpected key in the state_dict (expected keys {sorted(self.params)})")
        new = {}
        for k, p in self.params.items():
            a = np.asarray(d[k])
            if a.shape != p.shape:
                raise ArgumentError(f"{k}: expected shape {p.shape}, got {a.shape}")
            if a.dtype.kind not in "iuf":
                raise ArgumentError(f"{k}: expected real numbers, got dtype {a.dtype}")
            if not np.all(np.isfinite(a)):
                raise ArgumentError(f"{k}: expected finite numbers")
            with np.errstate(over="ignore"):
                new[k] = a.astype(p.dtype)
            if not np.all(np.isfinite(new[k])):     # e.g. 1e300 is finite in float64, inf in float32
                bad = a.flat[int(np.flatnonzero(~np.isfinite(new[k]))[0])]
                raise ArgumentError(f"{k}: {bad} does not fit in the model's {p.dtype} (it would become inf)")
        for k, p in self.params.items():
            p[...] = new[k]

    def begin_state(self, batch_size):
        """Zeros (B, H), the entering state of a fresh sequence."""
        return np.zeros((check_int("batch_size", batch_size, 1), self.hidden_size), dtype=self.dtype)


# ----------------------------------------------------------------------------- layer
class RNN(_Model):
    """The RNN layer H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h), time-major (chapter 8,
    "Recurrent Neural Networks").

    params: W_xh (D, H), W_hh (H, H), b_h (H,). Initialisation: rng =
    np.random.default_rng(seed); W_xh then W_hh ~ N(0, 0.01^2); b_h = 0.
    backend: 'cpp' (default) or 'numpy' (the reference), or an ops object.
    """

    _CONFIG_KEYS = ("input_size", "hidden_size", "nonlinearity", "dtype")

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", dtype=np.float32, seed=0, backend="cpp"):
        D = self.input_size = check_int("input_size", input_size, 1)
        H = self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self._init({"input_size": D, "hidden_size": H}, {"W_xh": (D, H), "W_hh": (H, H), "b_h": (H,)},
                   nonlinearity, dtype, seed, backend)

    def forward(self, X, h0=None):
        """X (T, B, D), h0 (B, H) or None (zeros) -> (Hs (T, B, H), cache = (X, h0, Hs))."""
        _check_float("X", X, (None, None, self.input_size), self.dtype)
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ArgumentError(f"X: expected T >= 1 and B >= 1, got shape {X.shape}")
        h0 = _state("h0", h0, X.shape[1], self.hidden_size, self.dtype)
        Hs = self.ops.rnn_forward(X, h0, self.params, self.nonlinearity)
        return Hs, (X, h0, Hs)

    def backward(self, dHs, cache, dH_T=None, bptt=None):
        """dHs (T, B, H) = dL/dH_t from above, cache from forward, dH_T (B, H) on the final state.

        Returns (dX (T, B, D), dh0 (B, H), grads {W_xh, W_hh, b_h}). bptt: a
        strategy of fastseq.bptt (None means Full()).
        """
        if not (isinstance(cache, tuple) and len(cache) == 3):
            raise ArgumentError("cache: expected the (X, h0, Hs) tuple returned by forward")
        X, h0, Hs = cache
        H = self.hidden_size
        _check_float("cache X", X, (None, None, self.input_size), self.dtype)
        T, B = X.shape[:2]
        _check_float("cache h0", h0, (B, H), self.dtype)
        _check_float("cache Hs", Hs, (T, B, H), self.dtype)
        _check_float("dHs", dHs, (T, B, H), self.dtype)
        if dH_T is not None:
            _check_float("dH_T", dH_T, (B, H), self.dtype)
        plan = bptt_plan(bptt, T, B, self.dtype)
        return self.ops.rnn_backward(dHs, X, h0, Hs, self.params, self.nonlinearity, dH_T, plan)


# ----------------------------------------------------------------------------- language model
class RNNLM(_Model):
    """The RNN language model on token ids (B, T), trained with softmax cross-entropy (chapter 8,
    "Recurrent Neural Networks" and "Recurrent Neural Network Implementation from Scratch").

    params: W_xh (V, H), W_hh (H, H), b_h (H,), W_hq (H, V), b_q (V,).
    Initialisation: rng = np.random.default_rng(seed); W_xh, W_hh, W_hq drawn
    in that order as rng.normal(0, 0.01, shape) (the book's scale), cast to
    dtype; biases zero. backend: 'cpp' (default) or 'numpy' (the reference), or an ops object.
    """

    _CONFIG_KEYS = ("vocab_size", "num_hiddens", "nonlinearity", "dtype")

    def __init__(self, vocab_size, num_hiddens, nonlinearity="tanh", dtype=np.float32, seed=0, backend="cpp"):
        V = self.vocab_size = check_int("vocab_size", vocab_size, 1)
        H = self.num_hiddens = check_int("num_hiddens", num_hiddens, 1)
        self._init({"vocab_size": V, "num_hiddens": H},
                   {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,), "W_hq": (H, V), "b_q": (V,)},
                   nonlinearity, dtype, seed, backend)

    @property
    def hidden_size(self):
        return self.num_hiddens

    def _inputs(self, X, state):
        ids = _check_ids("X", X, self.vocab_size, 2)
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ArgumentError(f"X: expected B >= 1 and T >= 1, got shape {ids.shape}")
        return ids, _state("state", state, ids.shape[0], self.num_hiddens, self.dtype)

    def _step_inputs(self, X, Y, state, bptt):
        """The checked arguments of a training step: (ids, Y, h0, plan)."""
        ids, h0 = self._inputs(X, state)
        Y = _check_ids("Y", Y, self.vocab_size, 2)
        if Y.shape != ids.shape:
            raise ArgumentError(f"Y: expected the shape of X {tuple(ids.shape)}, got {Y.shape}")
        B, T = ids.shape
        return ids, Y, h0, bptt_plan(bptt, T, B, self.dtype)

    def __call__(self, X, state):
        """ids X (B, T), state (B, H) or None -> (logits (B, T, V), new_state (B, H))."""
        ids, h0 = self._inputs(X, state)
        return self.ops.lm_forward(ids, h0, self.params, self.nonlinearity)

    def loss_and_grad(self, X, Y, state, bptt=None):
        """ids X, Y (B, T), state (B, H) or None -> (loss, grads, new_state (B, H)).

        loss: mean cross-entropy over the B*T tokens (natural log). grads: same
        keys and shapes as params. new_state: H_{T-1}, a fresh (detached) array.
        bptt: Full() (None), Truncated(tau, mode) or Randomized(...).
        """
        ids, Y, h0, plan = self._step_inputs(X, Y, state, bptt)
        return self.ops.lm_loss_and_grad(ids, Y, h0, self.params, self.nonlinearity, plan)

    def state_grads(self, X, Y, state=None, bptt=None, term=None):
        """dL/dH_t (T, B, H) for the step loss_and_grad(X, Y, state, bptt) takes (diagnostics).

        Computed by the NumPy reference ops on this model's parameters whatever
        its backend. term: None (the whole loss) or a step t in [-T, T) (-1: the
        last) whose loss term alone is back-propagated (how far one term's
        gradient reaches back).
        """
        ids, Y, h0, plan = self._step_inputs(X, Y, state, bptt)
        T = ids.shape[1]
        if term is not None:
            term = check_int("term", term, -T, T - 1) % T
        return get_ops("numpy").lm_backprop(ids, Y, h0, self.params, self.nonlinearity, plan, term)[3]

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, uniforms=None, logit_bias=None):
        """The book's predict: warm up on prefix_ids, then emit num_preds ids -> int32 (num_preds,).

        temperature 0: greedy (argmax, ties to the lowest id). temperature > 0:
        the sampling rule (fastseq.reference.sample_token) with uniforms[i]
        (float64 (num_preds,), in [0, 1)) for the i-th generated token; top_k >
        0 keeps the top_k logits only. logit_bias: None or float64 (V,) added to
        the logits before the rule; -inf forbids a token (e.g. <unk>).
        """
        prefix = _check_ids("prefix_ids", prefix_ids, self.vocab_size, 1)
        if prefix.shape[0] < 1:
            raise ArgumentError("prefix_ids: expected at least one token")
        n = check_int("num_preds", num_preds, 0)
        temperature = check_real("temperature", temperature, lo=0)
        top_k = check_int("top_k", top_k, 0)
        if temperature == 0:
            uniforms = None
        elif uniforms is None:
            raise ArgumentError("uniforms: expected a float64 array (num_preds,) when temperature > 0")
        else:
            uniforms = np.asarray(uniforms)
            if uniforms.dtype != np.float64 or uniforms.shape != (n,):
                raise ArgumentError(f"uniforms: expected float64 of shape ({n},), "
                                    f"got {uniforms.dtype} {uniforms.shape}")
            if n and not (np.all(uniforms >= 0) and np.all(uniforms < 1)):
                raise ArgumentError("uniforms: expected values in [0, 1)")
        params = self.params if logit_bias is None else dict(self.params, b_q=self._biased_b_q(logit_bias))
        return self.ops.lm_generate(prefix, n, params, self.nonlinearity, temperature, top_k, uniforms)

    def _biased_b_q(self, logit_bias):
        """b_q + logit_bias in the model's dtype: the bias on the logits as a bias on the output layer,
        so every ops applies it the same way."""
        bias = np.asarray(logit_bias)
        V = self.vocab_size
        if bias.dtype != np.float64 or bias.shape != (V,):
            raise ArgumentError(f"logit_bias: expected float64 of shape ({V},), got {bias.dtype} {bias.shape}")
        if np.isnan(bias).any() or np.isposinf(bias).any():
            raise ArgumentError("logit_bias: expected finite numbers or -inf (to forbid a token), got NaN or +inf")
        if np.isneginf(bias).all():
            raise ArgumentError("logit_bias: every token is forbidden (-inf everywhere)")
        with np.errstate(over="ignore"):
            b_q = (self.params["b_q"] + bias).astype(self.dtype)
        if np.isposinf(b_q).any():
            raise ArgumentError(f"logit_bias: too large for the model's {self.dtype} (the logits would be +inf)")
        return b_q
