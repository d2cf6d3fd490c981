"""The NumPy reference RNN: a layer (`RNN`) and a language model (`RNNLM`).

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size.
The layer is time-major, X (T, B, D); the LM takes batch-major ids (B, T).

Forward, t = 0..T-1, H_{-1} = h0 (the entering state):
  1. A_t = X_t W_xh + b_h            (LM: X_t W_xh is the row gather W_xh[ids[:, t]])
  2. Z_t = A_t + H_{t-1} W_hh
  3. H_t = phi(Z_t)                  phi' from H alone: tanh' = 1 - H^2, relu' = (H > 0)
  4. O_t = H_t W_hq + b_q            (LM only)
  5. loss = mean over the B*T tokens of -log softmax(O_t)[Y_t]
Backward, the same numbers primed; the BPTT plan (scale, window) of fastseq.bptt
decides how the message dL/dH_{t-1} = dZ_t W_hh^T is treated (step 2').
"""
import numbers

import numpy as np

from ..bptt import as_strategy

__all__ = ["RNN", "RNNLM", "sample_token"]

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NONLINEARITIES = ("tanh", "relu")


# ----------------------------------------------------------------------------- checks
def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _DTYPES:
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")
    return dt


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
    return int(v)


def _check_nonlinearity(nonlinearity):
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


def _check_float(name, a, shape, dtype):
    """a must be an ndarray of exactly `dtype` and `shape` (None in shape: any size)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of {dtype} with shape {shape}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    return a


def _check_ids(name, ids, V, ndim):
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    if ids.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of ids, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"{name}: ids must lie in [0, {V}), got values in [{ids.min()}, {ids.max()}]")
    return ids.astype(np.intp)


def _state(name, state, B, H, dtype):
    if state is None:
        return np.zeros((B, H), dtype=dtype)
    return _check_float(name, state, (B, H), dtype)


def _check_generate(prefix_ids, num_preds, temperature, top_k, uniforms, V):
    """generate's arguments checked (shared by both backends) -> (prefix (P,) intp, n, temperature, top_k, uniforms).

    uniforms comes back as a float64 (n,) array when temperature > 0, else None.
    """
    prefix = _check_ids("prefix_ids", prefix_ids, V, 1)
    if prefix.shape[0] < 1:
        raise ValueError("prefix_ids: expected at least one token")
    n = _check_int("num_preds", num_preds, 0)
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
            or not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    top_k = _check_int("top_k", top_k, 0)
    if temperature == 0:
        return prefix, n, 0.0, top_k, None
    if uniforms is None:
        raise ValueError("uniforms: expected a float64 array (num_preds,) when temperature > 0")
    uniforms = np.asarray(uniforms)
    if uniforms.dtype != np.float64 or uniforms.shape != (n,):
        raise ValueError(f"uniforms: expected float64 of shape ({n},), got {uniforms.dtype} {uniforms.shape}")
    if n and not (np.all(uniforms >= 0) and np.all(uniforms < 1)):
        raise ValueError("uniforms: expected values in [0, 1)")
    return prefix, n, float(temperature), top_k, uniforms


# ----------------------------------------------------------------------------- shared maths
def _phi(Z, nonlinearity):
    return np.tanh(Z) if nonlinearity == "tanh" else np.maximum(Z, 0)


def _dphi(H, nonlinearity):
    return 1 - H * H if nonlinearity == "tanh" else (H > 0).astype(H.dtype)


def _recur(A, h0, W_hh, nonlinearity):
    """Steps 2-3 for all t: A (T, B, H), h0 (B, H) -> Hs (T, B, H)."""
    Hs = np.empty_like(A)
    h = h0
    for t in range(A.shape[0]):
        h = _phi(A[t] + h @ W_hh, nonlinearity)     # 2-3. H_t = phi(A_t + H_{t-1} W_hh)
        Hs[t] = h
    return Hs


def _bptt(dH_direct, Hs, W_hh, nonlinearity, plan):
    """Steps 3'-2' for all t -> (dZ (T, B, H), dh0 (B, H), dH (T, B, H) total dL/dH_t).

    dH_direct (T, B, H): the gradient each step's own loss term puts on H_t.
    plan = (scale, window) from fastseq.bptt: scale (T, B) multiplies the
    message from step t to H_{t-1}; window = tau > 0 is sliding truncation.
    """
    scale, window = plan
    T, B, H = Hs.shape
    if window and scale is not None:
        raise ValueError("bptt: a plan has either a scale or a sliding window, not both")
    dZ = np.empty_like(Hs)
    dH = np.empty_like(Hs)
    dphi = _dphi(Hs, nonlinearity)
    if window == 0:
        carry = np.zeros((B, H), dtype=Hs.dtype)          # carry_{T-1} = 0
        for t in range(T - 1, -1, -1):
            dH[t] = dH_direct[t] + carry                  # 3'. dH_t = direct_t + carry_t
            dZ[t] = dH[t] * dphi[t]                       # 3'. dZ_t = dH_t * phi'(H_t)
            carry = dZ[t] @ W_hh.T                        # 2'. message to H_{t-1} ...
            if scale is not None:
                carry *= scale[t][:, None]                # 2'. ... times scale[t] (0 cuts it)
        return dZ, carry, dH                              # dh0 = carry_{-1}
    # Sliding: M[a] is the message at H_t from loss term t + a (its age a < tau);
    # a term stops after its tau-th step, except that reaching h0 is kept.
    tau = window
    M = np.zeros((tau, B, H), dtype=Hs.dtype)
    for t in range(T - 1, -1, -1):
        M[0] = dH_direct[t]                               # term t enters at its own step
        dH[t] = M.sum(axis=0)                             # 3'. total over the live terms
        dZa = M * dphi[t]                                 # 3'. per term: dZ_t^(a)
        dZ[t] = dZa.sum(axis=0)
        msg = dZa @ W_hh.T                                # 2'. per term: message to H_{t-1}
        if t == 0:
            return dZ, msg.sum(axis=0), dH                # every live term reaches h0 in time
        M[1:] = msg[:-1]                                  # age +1; the oldest (a = tau-1) stops
        M[0] = 0
    raise AssertionError("unreachable")  # pragma: no cover  (T >= 1)


def _log_softmax(O):
    O = O - O.max(axis=-1, keepdims=True)
    return O - np.log(np.exp(O).sum(axis=-1, keepdims=True))


def sample_token(logits, temperature, top_k, u):
    """The shared sampling rule (float64): one token id from logits (V,) and u in [0, 1).

    z = (logits - max) / temperature; e = exp(z); with top_k > 0 only the top_k
    largest logits (ties toward the lower id) keep their e; c = cumsum(e);
    token = #{c <= u * c[-1]}, clamped to V-1. temperature == 0 is argmax
    (ties to the lowest id) and ignores u.
    """
    logits = np.asarray(logits, dtype=np.float64)
    V = logits.shape[0]
    if temperature == 0:
        return int(np.argmax(logits))
    e = np.exp((logits - logits.max()) / temperature)
    if 0 < top_k < V:
        keep = np.argsort(-logits, kind="stable")[:top_k]   # stable: ties keep the lower id
        mask = np.zeros(V, dtype=bool)
        mask[keep] = True
        e = np.where(mask, e, 0.0)
    c = np.cumsum(e)
    return int(min(np.searchsorted(c, u * c[-1], side="right"), V - 1))


class _Params:
    """state_dict / load_state_dict shared by the layer and the LM."""

    backend = "numpy"

    def state_dict(self):
        """A dict of copies of the parameters."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, d):
        """Copy the arrays of `d` into the parameters; names, shapes and finiteness checked."""
        if not isinstance(d, dict):
            raise ValueError(f"state_dict: expected a dict of arrays, got {type(d).__name__}")
        for k in sorted(set(self.params) - set(d)):
            raise ValueError(f"{k}: missing from the state_dict (expected keys {sorted(self.params)})")
        for k in sorted(set(d) - set(self.params), key=str):
            raise ValueError(f"{k}: unexpected key in the state_dict (expected keys {sorted(self.params)})")
        for k, p in self.params.items():
            a = np.asarray(d[k])
            if a.shape != p.shape:
                raise ValueError(f"{k}: expected shape {p.shape}, got {a.shape}")
            if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
                raise ValueError(f"{k}: expected finite numbers")
        for k, p in self.params.items():
            p[...] = np.asarray(d[k], dtype=p.dtype)

    def begin_state(self, batch_size):
        """Zeros (B, H), the entering state of a fresh sequence."""
        return np.zeros((_check_int("batch_size", batch_size, 1), self.hidden_size), dtype=self.dtype)


# ----------------------------------------------------------------------------- layer
class RNN(_Params):
    """The seed's RNN layer: H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h), time-major.

    params: W_xh (D, H), W_hh (H, H), b_h (H,). Initialisation: rng =
    np.random.default_rng(seed); W_xh then W_hh ~ N(0, 0.01^2); b_h = 0.
    """

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", dtype=np.float32, seed=0):
        D = _check_int("input_size", input_size, 1)
        H = _check_int("hidden_size", hidden_size, 1)
        self.nonlinearity = _check_nonlinearity(nonlinearity)
        self.dtype = _check_dtype(dtype)
        self.input_size, self.hidden_size = D, H
        rng = np.random.default_rng(seed)
        self.params = {
            "W_xh": rng.normal(0, 0.01, (D, H)).astype(self.dtype),
            "W_hh": rng.normal(0, 0.01, (H, H)).astype(self.dtype),
            "b_h": np.zeros(H, dtype=self.dtype),
        }

    @property
    def config(self):
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    nonlinearity=self.nonlinearity, dtype=self.dtype.name)

    def forward(self, X, h0=None):
        """X (T, B, D), h0 (B, H) or None (zeros) -> (Hs (T, B, H), cache = (X, h0, Hs))."""
        p = self.params
        _check_float("X", X, (None, None, self.input_size), self.dtype)
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X: expected T >= 1 and B >= 1, got shape {X.shape}")
        h0 = _state("h0", h0, X.shape[1], self.hidden_size, self.dtype)
        A = X @ p["W_xh"] + p["b_h"]                           # 1. A_t = X_t W_xh + b_h
        Hs = _recur(A, h0, p["W_hh"], self.nonlinearity)       # 2-3.
        return Hs, (X, h0, Hs)

    def backward(self, dHs, cache, dH_T=None, bptt=None):
        """dHs (T, B, H) = dL/dH_t from above, cache from forward, dH_T (B, H) on the final state.

        Returns (dX (T, B, D), dh0 (B, H), grads {W_xh, W_hh, b_h}). bptt: a
        strategy of fastseq.bptt (None means Full()).
        """
        if not (isinstance(cache, tuple) and len(cache) == 3):
            raise ValueError("cache: expected the (X, h0, Hs) tuple returned by forward")
        X, h0, Hs = cache
        _check_float("cache X", X, (None, None, self.input_size), self.dtype)
        T, B = X.shape[:2]
        _check_float("cache h0", h0, (B, self.hidden_size), self.dtype)
        _check_float("cache Hs", Hs, (T, B, self.hidden_size), self.dtype)
        _check_float("dHs", dHs, (T, B, self.hidden_size), self.dtype)
        plan = as_strategy(bptt).plan(T, B, self.dtype)
        p = self.params
        direct = dHs
        if dH_T is not None:
            _check_float("dH_T", dH_T, (B, self.hidden_size), self.dtype)
            direct = dHs.copy()
            direct[-1] += dH_T                                  # 4'. dH_T joins dH_{T-1}(direct)
        dZ, dh0, _ = _bptt(direct, Hs, p["W_hh"], self.nonlinearity, plan)   # 3'-2'.
        H_prev = np.concatenate([h0[None], Hs[:-1]])            # H_{t-1} for t = 0..T-1
        grads = {
            "W_xh": X.reshape(-1, self.input_size).T @ dZ.reshape(-1, self.hidden_size),    # 1'.
            "W_hh": H_prev.reshape(-1, self.hidden_size).T @ dZ.reshape(-1, self.hidden_size),  # 2'.
            "b_h": dZ.sum(axis=(0, 1)),                                                     # 1'.
        }
        dX = dZ @ p["W_xh"].T                                    # 1'. dX_t = dZ_t W_xh^T
        return dX, dh0, grads


# ----------------------------------------------------------------------------- language model
class RNNLM(_Params):
    """The seed's RNN language model on token ids, trained with softmax cross-entropy.

    params: W_xh (V, H), W_hh (H, H), b_h (H,), W_hq (H, V), b_q (V,).
    Initialisation: rng = np.random.default_rng(seed); W_xh, W_hh, W_hq drawn
    in that order as rng.normal(0, 0.01, shape) (the book's scale), cast to
    dtype; biases zero.
    """

    def __init__(self, vocab_size, num_hiddens, nonlinearity="tanh", dtype=np.float32, seed=0):
        V = _check_int("vocab_size", vocab_size, 1)
        H = _check_int("num_hiddens", num_hiddens, 1)
        self.nonlinearity = _check_nonlinearity(nonlinearity)
        self.dtype = _check_dtype(dtype)
        self.vocab_size, self.num_hiddens = V, H
        rng = np.random.default_rng(seed)
        self.params = {
            "W_xh": rng.normal(0, 0.01, (V, H)).astype(self.dtype),
            "W_hh": rng.normal(0, 0.01, (H, H)).astype(self.dtype),
            "b_h": np.zeros(H, dtype=self.dtype),
            "W_hq": rng.normal(0, 0.01, (H, V)).astype(self.dtype),
            "b_q": np.zeros(V, dtype=self.dtype),
        }

    @property
    def hidden_size(self):
        return self.num_hiddens

    @property
    def config(self):
        return dict(vocab_size=self.vocab_size, num_hiddens=self.num_hiddens,
                    nonlinearity=self.nonlinearity, dtype=self.dtype.name)

    def _forward(self, X, state):
        """ids (B, T) -> (ids_tm (T, B), h0, Hs (T, B, H), O (T, B, V)); all steps 1-4."""
        ids = _check_ids("X", X, self.vocab_size, 2)
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"X: expected B >= 1 and T >= 1, got shape {ids.shape}")
        h0 = _state("state", state, ids.shape[0], self.num_hiddens, self.dtype)
        p = self.params
        ids = ids.T                                            # time-major (T, B)
        A = p["W_xh"][ids] + p["b_h"]                          # 1. A_t = X_t W_xh + b_h (row gather)
        Hs = _recur(A, h0, p["W_hh"], self.nonlinearity)       # 2-3.
        O = Hs @ p["W_hq"] + p["b_q"]                          # 4. O_t = H_t W_hq + b_q
        return ids, h0, Hs, O

    def __call__(self, X, state):
        """ids X (B, T), state (B, H) or None -> (logits (B, T, V), new_state (B, H))."""
        _, _, Hs, O = self._forward(X, state)
        return np.ascontiguousarray(O.transpose(1, 0, 2)), Hs[-1].copy()

    def _loss_grad(self, X, Y, state, bptt, term=None):
        """Everything loss_and_grad computes, plus dH (T, B, H) = dL/dH_t (for diagnostics).

        term: None, or a step t whose loss term alone is back-propagated (diagnostics only).
        """
        ids, h0, Hs, O = self._forward(X, state)
        Y = _check_ids("Y", Y, self.vocab_size, 2)
        if Y.shape != X.shape:
            raise ValueError(f"Y: expected the shape of X {tuple(X.shape)}, got {Y.shape}")
        T, B = ids.shape
        V, H = self.vocab_size, self.num_hiddens
        p = self.params
        Yt = Y.T                                               # (T, B)
        logp = _log_softmax(O)                                 # (T, B, V)
        loss = -np.take_along_axis(logp, Yt[..., None], axis=-1).mean()        # 5.
        dO = np.exp(logp)                                      # 5'. softmax(O_t) ...
        np.put_along_axis(dO, Yt[..., None], np.take_along_axis(dO, Yt[..., None], -1) - 1, -1)
        dO /= B * T                                            # 5'. ... - onehot(Y_t), / (B*T)
        if term is not None:
            dO[np.arange(T) != term] = 0
        plan = as_strategy(bptt).plan(T, B, self.dtype)
        dH_direct = dO @ p["W_hq"].T                           # 4'. dH_t(direct) = dO_t W_hq^T
        dZ, _, dH = _bptt(dH_direct, Hs, p["W_hh"], self.nonlinearity, plan)  # 3'-2'.
        H_prev = np.concatenate([h0[None], Hs[:-1]])
        dW_xh = np.zeros_like(p["W_xh"])
        np.add.at(dW_xh, ids.ravel(), dZ.reshape(-1, H))       # 1'. scatter-add dZ_t into rows ids
        grads = {
            "W_xh": dW_xh,
            "W_hh": H_prev.reshape(-1, H).T @ dZ.reshape(-1, H),   # 2'. sum_t H_{t-1}^T dZ_t
            "b_h": dZ.sum(axis=(0, 1)),                            # 1'.
            "W_hq": Hs.reshape(-1, H).T @ dO.reshape(-1, V),       # 4'. sum_t H_t^T dO_t
            "b_q": dO.sum(axis=(0, 1)),                            # 4'.
        }
        return float(loss), grads, Hs[-1].copy(), dH

    def loss_and_grad(self, X, Y, state, bptt=None):
        """ids X, Y (B, T), state (B, H) or None -> (loss, grads, new_state (B, H)).

        loss: mean cross-entropy over the B*T tokens (natural log). grads: same
        keys and shapes as params. new_state: H_{T-1}, a fresh (detached) array.
        bptt: Full() (None), Truncated(tau, mode) or Randomized(...).
        """
        loss, grads, new_state, _ = self._loss_grad(X, Y, state, bptt)
        return loss, grads, new_state

    def generate(self, prefix_ids, num_preds, temperature=0.0, top_k=0, uniforms=None):
        """The book's predict: warm up on prefix_ids, then emit num_preds ids -> int32 (num_preds,).

        temperature 0: greedy (argmax, ties to the lowest id). temperature > 0:
        the sample_token rule with uniforms[i] (float64 (num_preds,), in [0, 1))
        for the i-th generated token; top_k > 0 keeps the top_k logits only.
        """
        prefix, n, temperature, top_k, uniforms = _check_generate(
            prefix_ids, num_preds, temperature, top_k, uniforms, self.vocab_size)
        p = self.params
        h = np.zeros((1, self.num_hiddens), dtype=self.dtype)

        def step(tok, h):                                      # steps 1-4 for one token
            h = _phi(p["W_xh"][tok][None] + p["b_h"] + h @ p["W_hh"], self.nonlinearity)
            return h, (h @ p["W_hq"] + p["b_q"])[0]

        for tok in prefix:                                     # warm-up
            h, logits = step(tok, h)
        out = np.empty(n, dtype=np.int32)
        for i in range(n):
            u = 0.0 if temperature == 0 else uniforms[i]
            out[i] = sample_token(logits, float(temperature), top_k, u)
            if i + 1 < n:
                h, logits = step(out[i], h)                    # feed the prediction back
        return out
