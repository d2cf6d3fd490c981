"""The RNN layer (`RNN`) and language model (`RNNLM`) of *Dive into Deep Learning* (Zhang, Lipton,
Li, Smola), chapter 8, "Recurrent Neural Networks", with any cell of fastseq.reference.cells (the plain
RNN of the book, and the GRU and LSTM of its next chapter as PyTorch's nn.GRU / nn.LSTM), stacked, with
dropout, on the ops of your choice.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size, L layers, G gate blocks,
P state parts (2 for the LSTM's (h, c), else 1).

A model checks its arguments, owns its parameters (init, state_dict, config)
and hands the maths to its ops object (``model.ops``, named by
``model.backend``): ``backend='cpp'`` (default) runs the C++ kernels,
``backend='numpy'`` the NumPy reference (fastseq.reference.ops); see
fastseq.ops. Code written against one runs on the other with the same results
up to rounding. ``fastseq.reference.RNN`` / ``RNNLM`` are these classes with
the NumPy ops as their default. docs/CELLS.md has the parameters, the state
layout and the dropout masks.
"""
import math
import os

import numpy as np

from ._checks import check_choice, check_int, check_real
from .bptt import as_strategy
from .errors import ArgumentError
from .ops import get_ops
from .reference.cells import CELLS, dropout_mask, dropout_masks, get_cell
from .reference.ops import layer_suffix

__all__ = ["RNN", "RNNLM", "bptt_plan", "param_shapes"]

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


def _check_fits(sizes, shapes, dtype, repeat=None):
    """Refuse, before allocating, parameters that cannot fit in this machine's memory.

    sizes: {argument name: value}; the largest is named as the one to reduce.
    repeat: {index in shapes: how many such arrays} (a stack's layers above the first, counted
    without listing them). Initialisation draws each matrix in float64 before the cast, so the
    peak is every parameter in dtype plus the largest matrix in float64.
    """
    counts = [math.prod(s) for s in shapes]
    total = sum(c * (repeat or {}).get(i, 1) for i, c in enumerate(counts))
    need = total * dtype.itemsize + max(counts) * 8
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


def _check_state(name, state, shape, dtype):
    """None (zeros) or an array of the model's state shape and dtype."""
    if state is None:
        return np.zeros(shape, dtype=dtype)
    return _check_float(name, state, shape, dtype)


def _resolve_cell(cell, nonlinearity):
    """The cell's name: cell None means 'rnn_' + nonlinearity (None: tanh); both given must agree."""
    if cell is None:
        return "rnn_" + check_choice("nonlinearity", "tanh" if nonlinearity is None else nonlinearity,
                                     _NONLINEARITIES)
    cell = check_choice("cell", cell, tuple(CELLS))
    if nonlinearity is not None and cell != "rnn_" + str(nonlinearity):
        raise ArgumentError(f"nonlinearity: {nonlinearity!r} conflicts with cell {cell!r} "
                            "(give one of the two; the nonlinearity is the plain RNN's phi)")
    return cell


def param_shapes(cell, input_size, hidden_size, num_layers=1, vocab_size=None):
    """{name: shape} of a model's parameters in order, without allocating them (docs/CELLS.md):
    per layer W_xh{s} (D_l, G*H), W_hh{s} (H, G*H), b_h{s} (G*H,), b_hn{s} (H,) for the GRU; then
    W_hq (H, V), b_q (V,) for a language model (vocab_size given; its input_size is V)."""
    c = get_cell(cell)
    H, GH = hidden_size, c.gates * hidden_size
    shapes = {}
    for l in range(num_layers):
        s = layer_suffix(l)
        shapes.update({"W_xh" + s: (input_size if l == 0 else H, GH), "W_hh" + s: (H, GH), "b_h" + s: (GH,)})
        if c.name == "gru":
            shapes["b_hn" + s] = (H,)
    if vocab_size is not None:
        shapes.update(W_hq=(H, vocab_size), b_q=(vocab_size,))
    return shapes


def bptt_plan(bptt, T, B, dtype):
    """The BPTT strategy's plan (scale (T, B) or None, window) for T steps of B sequences, checked once
    for both ops: a plan has a scale or a sliding window, not both."""
    scale, window = as_strategy(bptt).plan(T, B, dtype)
    if window and scale is not None:
        raise ArgumentError("bptt: a plan has either a scale or a sliding window, not both")
    if scale is not None:
        scale = _check_float("bptt scale", np.asarray(scale, dtype=dtype), (T, B), dtype)
    return scale, int(window)


def _check_rng(rng):
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise ArgumentError(f"rng: expected None or a numpy.random.Generator, got {type(rng).__name__}")
    return rng


# ----------------------------------------------------------------------------- shared by both models
class _Model:
    """What both models share: the cell, the ops, the parameters and their (de)serialisation."""

    def _init(self, sizes, input_size, vocab_size, nonlinearity, dtype, seed, backend, cell, num_layers,
              dropout):
        """Check the arguments, then draw the parameters of param_shapes in order."""
        self.cell = _resolve_cell(cell, nonlinearity)
        self.nonlinearity = self.cell[4:] if self.cell.startswith("rnn_") else None
        L = self.num_layers = check_int("num_layers", num_layers, 1)
        self.dropout = check_real("dropout", dropout, lo=0, hi=1, hi_open=True)
        self.dtype = _check_dtype(dtype)
        self.ops = get_ops(backend)
        H = self.hidden_size
        two = list(param_shapes(self.cell, input_size, H, min(L, 2), vocab_size).items())
        above = {i: L - 1 for i, (k, _) in enumerate(two) if k.endswith("_l1")}   # layers 1..L-1 alike
        _check_fits(dict(sizes, num_layers=L), [s for _, s in two], self.dtype, above)
        shapes = param_shapes(self.cell, input_size, H, L, vocab_size)
        rng = np.random.default_rng(seed)
        if self.nonlinearity is not None:       # the book's: matrices N(0, 0.01^2), biases zero
            draw = lambda s: rng.normal(0, 0.01, s) if len(s) == 2 else np.zeros(s)   # noqa: E731
        else:                                   # PyTorch's U(-1/sqrt(H), 1/sqrt(H)); 0.01 starves the gates
            k = 1.0 / math.sqrt(H)
            draw = lambda s: rng.uniform(-k, k, s)                                     # noqa: E731
        self.params = {k: draw(s).astype(self.dtype) for k, s in shapes.items()}   # drawn in float64, then cast

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({args}, backend={self.backend!r})"

    @property
    def backend(self):
        """The name of the ops running this model: 'cpp' or 'numpy'."""
        return self.ops.name

    @classmethod
    def from_config(cls, config, backend=None):
        """An untrained model from ``config`` (a dict as ``model.config`` returns; an older config with a
        ``nonlinearity`` and no cell still loads) on ``backend`` (None: the class's default, 'cpp' for
        fastseq's models, 'numpy' for fastseq.reference's)."""
        if not isinstance(config, dict):
            raise ArgumentError(f"config: expected a dict, got {type(config).__name__}")
        keys = cls._CONFIG_KEYS
        extra = sorted(set(config) - set(keys) - {"nonlinearity"}, key=str)
        if extra:
            raise ArgumentError(f"config: unexpected key {extra[0]!r} for {cls.__name__} (expected {list(keys)})")
        missing = [k for k in keys[:2] if k not in config]
        if missing:
            raise ArgumentError(f"config: {missing[0]!r} is missing (expected {list(keys)})")
        sizes = [config[k] for k in keys[:2]]
        rest = {k: v for k, v in config.items() if k not in keys[:2]}
        return cls(*sizes, **rest) if backend is None else cls(*sizes, **rest, backend=backend)

    @property
    def config(self):
        """The constructor's arguments that define the model's function: from_config(config) rebuilds it."""
        sizes = {k: getattr(self, k) for k in self._CONFIG_KEYS[:2]}
        return dict(sizes, cell=self.cell, num_layers=self.num_layers, dropout=self.dropout,
                    dtype=self.dtype.name)

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

    @property
    def state_parts(self):
        """P: 2 for the LSTM's (h, c), else 1."""
        return len(get_cell(self.cell).state_parts)

    def state_shape(self, batch_size):
        """(B, H) when P*L == 1 (the plain RNN's); otherwise (P*L, B, H), rows h_0..h_{L-1}, c_0..c_{L-1}."""
        PL = self.state_parts * self.num_layers
        return (batch_size, self.hidden_size) if PL == 1 else (PL, batch_size, self.hidden_size)

    def begin_state(self, batch_size):
        """Zeros of state_shape(B), the entering state of a fresh sequence."""
        return np.zeros(self.state_shape(check_int("batch_size", batch_size, 1)), dtype=self.dtype)

    def _layer_masks(self, rng, T, B):
        """nn.LSTM(dropout=)'s masks between layers (L-1, T, B, H), or None (no rng, no dropout or L == 1)."""
        if rng is None:
            return None
        return dropout_masks(rng, self.dropout, self.num_layers, T, B, self.hidden_size, self.dtype)


class LayerCache:
    """What ``RNN.forward`` hands to ``RNN.backward``: ``state`` is the final state (the model's state
    shape); the rest is the ops' own and opaque."""

    __slots__ = ("model", "shape", "state", "masks", "inner")

    def __init__(self, model, shape, state, masks, inner):
        self.model, self.shape, self.state, self.masks, self.inner = model, shape, state, masks, inner


# ----------------------------------------------------------------------------- layer
class RNN(_Model):
    """The recurrent layer, time-major, any cell, L layers (chapter 8, "Recurrent Neural Networks";
    nn.RNN / nn.GRU / nn.LSTM(num_layers=L, dropout=p) in PyTorch's terms).

    cell: 'rnn_tanh', 'rnn_relu', 'gru' or 'lstm' (None: 'rnn_' + nonlinearity, nonlinearity None
    meaning tanh). params per layer (docs/CELLS.md): W_xh{s} (D_l, G*H), W_hh{s} (H, G*H), b_h{s}
    (G*H,), and b_hn{s} (H,) for the GRU; s = "" for layer 0, "_l1", ... above. dropout: between layers
    (never after the top one), applied when forward is given an rng. Initialisation: rng =
    np.random.default_rng(seed), the parameters drawn in that order; the plain RNN's matrices N(0,
    0.01^2) and biases 0 (the book's); gated cells U(-1/sqrt(H), 1/sqrt(H)) everywhere (PyTorch's:
    the book's scale starves the gates). backend: 'cpp' (default) or 'numpy' (the reference), or an
    ops object.
    """

    _CONFIG_KEYS = ("input_size", "hidden_size", "cell", "num_layers", "dropout", "dtype")

    def __init__(self, input_size, hidden_size, nonlinearity=None, dtype=np.float32, seed=0, backend="cpp", *,
                 cell=None, num_layers=1, dropout=0.0):
        D = self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self._init({"input_size": D, "hidden_size": self.hidden_size}, D, None, nonlinearity, dtype, seed,
                   backend, cell, num_layers, dropout)

    def forward(self, X, h0=None, rng=None):
        """X (T, B, D), h0 (the state, state_shape(B)) or None (zeros) -> (Y (T, B, H) the top layer's H_t,
        cache for backward; cache.state is the final state).

        rng: None (no dropout: evaluation) or a numpy Generator the dropout masks are drawn from.
        """
        _check_float("X", X, (None, None, self.input_size), self.dtype)
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ArgumentError(f"X: expected T >= 1 and B >= 1, got shape {X.shape}")
        T, B = X.shape[:2]
        state0 = _check_state("h0", h0, self.state_shape(B), self.dtype)
        m_layers = self._layer_masks(_check_rng(rng), T, B)
        masks = None if m_layers is None else (None, m_layers, None)
        Y, state_T, inner = self.ops.rnn_forward(self.cell, X, state0, self.params, masks)
        return Y, LayerCache(self, (T, B), state_T, masks, inner)

    def backward(self, dHs, cache, dH_T=None, bptt=None):
        """dHs (T, B, H) = dL/dY_t from above, cache from forward, dH_T (the state's shape) on the final state.

        Returns (dX (T, B, D), dh0 (the state's shape), grads (params' keys)). bptt: a strategy of
        fastseq.bptt (None means Full()); for every cell and depth as docs/CELLS.md says.
        """
        if not isinstance(cache, LayerCache):
            raise ArgumentError("cache: expected the cache returned by this model's forward")
        if cache.model is not self:
            raise ArgumentError("cache: from the forward of another model")
        T, B = cache.shape
        _check_float("dHs", dHs, (T, B, self.hidden_size), self.dtype)
        if dH_T is not None:
            _check_float("dH_T", dH_T, self.state_shape(B), self.dtype)
        plan = bptt_plan(bptt, T, B, self.dtype)
        return self.ops.rnn_backward(self.cell, dHs, dH_T, cache.inner, self.params, plan)


# ----------------------------------------------------------------------------- language model
class RNNLM(_Model):
    """The recurrent language model on token ids (B, T), any cell, L layers, trained with softmax
    cross-entropy (chapter 8, "Recurrent Neural Networks" and "Recurrent Neural Network Implementation
    from Scratch").

    params: the layer's with D_0 = V (one-hot input: W_xh's rows are gathered), then W_hq (H, V),
    b_q (V,). dropout p, applied only by loss_and_grad given an rng (training): between layers and on
    the top layer's H_t where it enters W_hq, and on the input rows W_xh[ids] (before b_h) with
    input_dropout (None: the same p; 0: none, as nn.LSTM fed one-hot inputs, which drops nothing there).
    Initialisation as RNN's, W_hq and b_q last (zero b_q for the plain RNN). backend: 'cpp' (default)
    or 'numpy' (the reference), or an ops object.
    """

    _CONFIG_KEYS = ("vocab_size", "num_hiddens", "cell", "num_layers", "dropout", "dtype", "input_dropout")

    def __init__(self, vocab_size, num_hiddens, nonlinearity=None, dtype=np.float32, seed=0, backend="cpp", *,
                 cell=None, num_layers=1, dropout=0.0, input_dropout=None):
        V = self.vocab_size = check_int("vocab_size", vocab_size, 1)
        H = self.num_hiddens = check_int("num_hiddens", num_hiddens, 1)
        self._init({"vocab_size": V, "num_hiddens": H}, V, V, nonlinearity, dtype, seed, backend, cell,
                   num_layers, dropout)
        # None: the input rows share `dropout` (the model before input_dropout existed, and its configs)
        self.input_dropout = self.dropout if input_dropout is None else \
            check_real("input_dropout", input_dropout, lo=0, hi=1, hi_open=True)

    @property
    def config(self):
        return dict(super().config, input_dropout=self.input_dropout)

    @property
    def hidden_size(self):
        return self.num_hiddens

    def _inputs(self, X, state):
        ids = _check_ids("X", X, self.vocab_size, 2)
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ArgumentError(f"X: expected B >= 1 and T >= 1, got shape {ids.shape}")
        return ids, _check_state("state", state, self.state_shape(ids.shape[0]), self.dtype)

    def _step_inputs(self, X, Y, state, bptt):
        """The checked arguments of a training step: (ids, Y, state0, plan)."""
        ids, state0 = self._inputs(X, state)
        Y = _check_ids("Y", Y, self.vocab_size, 2)
        if Y.shape != ids.shape:
            raise ArgumentError(f"Y: expected the shape of X {tuple(ids.shape)}, got {Y.shape}")
        B, T = ids.shape
        return ids, Y, state0, bptt_plan(bptt, T, B, self.dtype)

    def draw_masks(self, rng, T, B):
        """The contract's masks (m_in (T, B, G*H), m_layers (L-1, T, B, H), m_out (T, B, H)) drawn from rng
        in that order, or None when both dropouts are 0; m_in is None (not drawn) when input_dropout is 0,
        the others when dropout is."""
        if self.dropout == 0 and self.input_dropout == 0:
            return None
        GH = self.params["b_h"].shape[0]
        m_in = dropout_mask(rng, self.input_dropout, (T, B, GH), self.dtype)
        m_layers = self._layer_masks(rng, T, B)
        return m_in, m_layers, dropout_mask(rng, self.dropout, (T, B, self.num_hiddens), self.dtype)

    def __call__(self, X, state):
        """ids X (B, T), state (state_shape(B)) or None -> (logits (B, T, V), new_state); never drops."""
        ids, state0 = self._inputs(X, state)
        return self.ops.lm_forward(self.cell, ids, state0, self.params)

    def loss_and_grad(self, X, Y, state, bptt=None, rng=None):
        """ids X, Y (B, T), state (state_shape(B)) or None -> (loss, grads, new_state).

        loss: mean cross-entropy over the B*T tokens (natural log). grads: same
        keys and shapes as params. new_state: the final state, a fresh (detached) array.
        bptt: Full() (None), Truncated(tau, mode) or Randomized(...). rng: None (no dropout)
        or the numpy Generator the dropout masks are drawn from (the Trainer passes its own).
        """
        ids, Y, state0, plan = self._step_inputs(X, Y, state, bptt)
        masks = None if _check_rng(rng) is None else self.draw_masks(rng, ids.shape[1], ids.shape[0])
        return self.ops.lm_loss_and_grad(self.cell, ids, Y, state0, self.params, plan, masks)

    def state_grads(self, X, Y, state=None, bptt=None, term=None):
        """dL/dH_t (T, B, H) of the top layer for the step loss_and_grad(X, Y, state, bptt) takes
        (diagnostics; no dropout).

        Computed by the NumPy reference ops on this model's parameters whatever
        its backend. term: None (the whole loss) or a step t in [-T, T) (-1: the
        last) whose loss term alone is back-propagated (how far one term's
        gradient reaches back).
        """
        ids, Y, state0, plan = self._step_inputs(X, Y, state, bptt)
        T = ids.shape[1]
        if term is not None:
            term = check_int("term", term, -T, T - 1) % T
        return get_ops("numpy").lm_backprop(self.cell, ids, Y, state0, self.params, plan, None, term)[3]

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, uniforms=None, logit_bias=None):
        """The book's predict: warm up on prefix_ids, then emit num_preds ids -> int32 (num_preds,).

        temperature 0: greedy (argmax, ties to the lowest id). temperature > 0:
        the sampling rule (fastseq.reference.sample_token) with uniforms[i]
        (float64 (num_preds,), in [0, 1)) for the i-th generated token; top_k >
        0 keeps the top_k logits only. logit_bias: None or float64 (V,) added to
        the logits before the rule; -inf forbids a token (e.g. <unk>). Never drops.
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
        return self.ops.lm_generate(self.cell, prefix, n, params, temperature, top_k, uniforms)

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
