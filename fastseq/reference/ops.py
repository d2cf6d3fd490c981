"""The NumPy ops: the reference maths of the RNN layer and language model.

Every model in fastseq holds an ops object (``model.ops``, chosen by name with
``fastseq.ops.get_ops``). These are the reference ops; the C++ ops
(``fastseq.ops.CppOps``) subclass them and replace the hot calls by kernels,
so both expose the same calls and a parity test runs over both.

The ops compute; they do not check. The model (fastseq.rnn) checks every
argument first and hands over arrays of the params' dtype and the right shapes,
ids as integer arrays in [0, V), and the BPTT plan (scale, window) of
fastseq.bptt with at most one of the two set.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size.
The layer is time-major, X (T, B, D); the LM takes batch-major ids (B, T).
The maths is *Dive into Deep Learning* (Zhang, Lipton, Li, Smola), chapter 8,
"Recurrent Neural Networks" and "Backpropagation Through Time":

Forward, t = 0..T-1, H_{-1} = h0 (the entering state):
  1. A_t = X_t W_xh + b_h            (LM: X_t W_xh is the row gather W_xh[ids[:, t]])
  2. Z_t = A_t + H_{t-1} W_hh
  3. H_t = phi(Z_t)                  phi' from H alone: tanh' = 1 - H^2, relu' = (H > 0)
  4. O_t = H_t W_hq + b_q            (LM only)
  5. loss = mean over the B*T tokens of -log softmax(O_t)[Y_t]
Backward, the same numbers primed; the plan (scale, window) decides how the
message dL/dH_{t-1} = dZ_t W_hh^T is treated (step 2').
"""
import numpy as np

from .clip import clip_grad_norm

__all__ = ["NumpyOps", "sample_token"]


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
    plan = (scale, window): scale (T, B) multiplies the message from step t to
    H_{t-1}; window = tau > 0 is sliding truncation.
    """
    scale, window = plan
    T, B, H = Hs.shape
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
    (ties to the lowest id) and ignores u. A logit of -inf has e = 0: never drawn.
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


class NumpyOps:
    """The reference ops: every call in NumPy, vectorised over the batch, obviously right."""

    name = "numpy"

    def __repr__(self):
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ layer
    def rnn_forward(self, X, h0, params, nonlinearity):
        """X (T, B, D), h0 (B, H) -> Hs (T, B, H)."""
        A = X @ params["W_xh"] + params["b_h"]                  # 1. A_t = X_t W_xh + b_h
        return _recur(A, h0, params["W_hh"], nonlinearity)      # 2-3.

    def rnn_backward(self, dHs, X, h0, Hs, params, nonlinearity, dH_T, plan):
        """dHs (T, B, H) from above, dH_T (B, H) or None on the final state -> (dX, dh0, grads)."""
        D, H = params["W_xh"].shape
        direct = dHs
        if dH_T is not None:
            direct = dHs.copy()
            direct[-1] += dH_T                                  # 4'. dH_T joins dH_{T-1}(direct)
        dZ, dh0, _ = _bptt(direct, Hs, params["W_hh"], nonlinearity, plan)  # 3'-2'.
        H_prev = np.concatenate([h0[None], Hs[:-1]])            # H_{t-1} for t = 0..T-1
        grads = {
            "W_xh": X.reshape(-1, D).T @ dZ.reshape(-1, H),     # 1'. sum_t X_t^T dZ_t
            "W_hh": H_prev.reshape(-1, H).T @ dZ.reshape(-1, H),  # 2'. sum_t H_{t-1}^T dZ_t
            "b_h": dZ.sum(axis=(0, 1)),                         # 1'.
        }
        dX = dZ @ params["W_xh"].T                              # 1'. dX_t = dZ_t W_xh^T
        return dX, dh0, grads

    # ------------------------------------------------------------------ language model
    def _lm_states(self, ids, h0, params, nonlinearity):
        """ids (B, T) -> (ids_tm (T, B), Hs (T, B, H), O (T, B, V)); steps 1-4."""
        ids = ids.T                                             # time-major (T, B)
        A = params["W_xh"][ids] + params["b_h"]                 # 1. A_t = X_t W_xh + b_h (row gather)
        Hs = _recur(A, h0, params["W_hh"], nonlinearity)        # 2-3.
        O = Hs @ params["W_hq"] + params["b_q"]                 # 4. O_t = H_t W_hq + b_q
        return ids, Hs, O

    def lm_forward(self, ids, h0, params, nonlinearity):
        """ids (B, T), h0 (B, H) -> (logits (B, T, V), new_state (B, H))."""
        _, Hs, O = self._lm_states(ids, h0, params, nonlinearity)
        return np.ascontiguousarray(O.transpose(1, 0, 2)), Hs[-1].copy()

    def lm_backprop(self, ids, Y, h0, params, nonlinearity, plan, term=None):
        """The whole training step -> (loss, grads, new_state (B, H), dH (T, B, H) = dL/dH_t).

        term: None, or one step t whose loss term alone is back-propagated (diagnostics).
        """
        ids, Hs, O = self._lm_states(ids, h0, params, nonlinearity)   # 1-4.
        T, B = ids.shape
        V, H = params["W_xh"].shape
        Yt = Y.T                                                # (T, B)
        logp = _log_softmax(O)                                  # (T, B, V)
        loss = -np.take_along_axis(logp, Yt[..., None], axis=-1).mean()   # 5.
        dO = np.exp(logp)                                       # 5'. softmax(O_t) ...
        np.put_along_axis(dO, Yt[..., None], np.take_along_axis(dO, Yt[..., None], -1) - 1, -1)
        dO /= B * T                                             # 5'. ... - onehot(Y_t), / (B*T)
        if term is not None:
            dO[np.arange(T) != term] = 0                        # keep loss term `term` alone
        dH_direct = dO @ params["W_hq"].T                       # 4'. dH_t(direct) = dO_t W_hq^T
        dZ, _, dH = _bptt(dH_direct, Hs, params["W_hh"], nonlinearity, plan)   # 3'-2'.
        H_prev = np.concatenate([h0[None], Hs[:-1]])            # H_{t-1} for t = 0..T-1
        dW_xh = np.zeros_like(params["W_xh"])
        np.add.at(dW_xh, ids.ravel(), dZ.reshape(-1, H))        # 1'. scatter-add dZ_t into rows ids
        grads = {
            "W_xh": dW_xh,
            "W_hh": H_prev.reshape(-1, H).T @ dZ.reshape(-1, H),   # 2'. sum_t H_{t-1}^T dZ_t
            "b_h": dZ.sum(axis=(0, 1)),                            # 1'.
            "W_hq": Hs.reshape(-1, H).T @ dO.reshape(-1, V),       # 4'. sum_t H_t^T dO_t
            "b_q": dO.sum(axis=(0, 1)),                            # 4'.
        }
        return float(loss), grads, Hs[-1].copy(), dH

    def lm_loss_and_grad(self, ids, Y, h0, params, nonlinearity, plan):
        """ids, Y (B, T), h0 (B, H) -> (mean loss, grads, new_state (B, H))."""
        loss, grads, new_state, _ = self.lm_backprop(ids, Y, h0, params, nonlinearity, plan)
        return loss, grads, new_state

    def lm_generate(self, prefix, num_preds, params, nonlinearity, temperature, top_k, uniforms):
        """Warm up on prefix (P,) from a zero state, then emit num_preds ids -> int32 (num_preds,).

        uniforms: float64 (num_preds,) when temperature > 0, else None (greedy).
        """
        p = params
        h = np.zeros((1, p["W_hh"].shape[0]), dtype=p["W_hh"].dtype)

        def step(tok, h):                                       # steps 1-4 for one token
            h = _phi(p["W_xh"][tok][None] + p["b_h"] + h @ p["W_hh"], nonlinearity)
            return h, (h @ p["W_hq"] + p["b_q"])[0]

        for tok in prefix:                                      # warm-up
            h, logits = step(tok, h)
        out = np.empty(num_preds, dtype=np.int32)
        for i in range(num_preds):
            u = 0.0 if temperature == 0 else uniforms[i]
            out[i] = sample_token(logits, temperature, top_k, u)
            if i + 1 < num_preds:
                h, logits = step(out[i], h)                     # feed the prediction back
        return out

    # ------------------------------------------------------------------ training helpers
    def clip_grad_norm(self, grads, theta):
        """Global-norm clipping in place (gradient clipping, *Dive into Deep Learning* chapter 8,
        "Recurrent Neural Network Implementation from Scratch"); returns the norm before clipping."""
        return clip_grad_norm(grads, theta)
