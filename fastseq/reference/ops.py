"""The NumPy ops: the reference maths of the RNN layer and language model, for every cell and depth.

Every model in fastseq holds an ops object (``model.ops``, chosen by name with
``fastseq.ops.get_ops``). These are the reference ops; the C++ ops
(``fastseq.ops.CppOps``) subclass them and replace the hot calls by kernels,
so both expose the same calls and a parity test runs over both.

The ops compute; they do not check. The model (fastseq.rnn) checks every
argument first and hands over arrays of the params' dtype and the right shapes,
ids as integer arrays in [0, V), the BPTT plan (scale, window) of fastseq.bptt
with at most one of the two set, and dropout masks (or None).

The calls, their parameters (a flat dict in the book's layout, x @ W), the state
layout and the masks are the contract of docs/CELLS.md. The recurrence itself is
``fastseq.reference.cells`` (one class per cell, one time loop for every cell,
depth and BPTT strategy); this module only adapts the flat parameters to the
cells' (PyTorch's) layout and adds what the language model puts around the stack.

Legend: B batch, T steps, D input size, H hidden size, V vocabulary size,
L layers, G gate blocks, P state parts. The layer is time-major, X (T, B, D); the
LM takes batch-major ids (B, T). The maths is *Dive into Deep Learning* (Zhang,
Lipton, Li, Smola), chapter 8, "Recurrent Neural Networks" and
"Backpropagation Through Time"; the LM, per step t:
  1. A_t = W_xh[ids_t] * m_in_t       the input rows (one-hot X_t W_xh), input dropout
  2. H_t = the stack's top layer after A_t + b_h and its previous state
  3. O_t = (H_t * m_out_t) W_hq + b_q  output dropout
  4. loss = mean over the B*T tokens of -log softmax(O_t)[Y_t]
Backward, the same numbers primed, the stack's under the plan.
"""
import numpy as np

from .cells import get_cell, stack_backward, stack_forward
from .clip import clip_grad_norm

__all__ = ["NumpyOps", "sample_token", "layer_suffix", "num_layers"]


def layer_suffix(l):
    """The contract's suffix of layer l's parameter names: "" for layer 0, "_l{l}" above."""
    return "" if l == 0 else f"_l{l}"


def num_layers(params):
    """L of a flat parameter dict: the number of W_hh{s}."""
    L = 0
    while "W_hh" + layer_suffix(L) in params:
        L += 1
    return L


# ----------------------------------------------------------------------------- the one adapter
def _layers(cell, params, gather=False):
    """The flat dict -> the cells' per-layer dicts (PyTorch's layout): weight_ih = W_xh^T,
    weight_hh = W_hh^T, bias_ih = b_h, bias_hh = 0 but the GRU's n block = b_hn.

    gather: layer 0 has no weight_ih (the LM feeds it the gathered rows W_xh[ids])."""
    layers = []
    for l in range(num_layers(params)):
        s = layer_suffix(l)
        W_hh = params["W_hh" + s]
        bias_hh = np.zeros(W_hh.shape[1], dtype=W_hh.dtype)
        if cell.name == "gru":
            H = W_hh.shape[0]
            bias_hh[2 * H:] = params["b_hn" + s]
        p = {"weight_hh": W_hh.T, "bias_ih": params["b_h" + s], "bias_hh": bias_hh}
        if not (gather and l == 0):
            p["weight_ih"] = params["W_xh" + s].T
        layers.append(p)
    return layers


def _flat_grads(cell, layer_grads):
    """The cells' per-layer gradients -> the flat dict's. b_h enters once, as bias_ih (the cells' bias_hh
    is a constant zero here, but the GRU's n block, which is b_hn)."""
    grads = {}
    for l, g in enumerate(layer_grads):
        s = layer_suffix(l)
        if "weight_ih" in g:
            grads["W_xh" + s] = np.ascontiguousarray(g["weight_ih"].T)
        grads["W_hh" + s] = np.ascontiguousarray(g["weight_hh"].T)
        grads["b_h" + s] = g["bias_ih"]
        if cell.name == "gru":
            H = g["weight_hh"].shape[1]
            grads["b_hn" + s] = g["bias_hh"][2 * H:].copy()
    return grads


def _parts(cell, state, L):
    """The contract's state ((B, H), or (P*L, B, H) rows h_0..h_{L-1}, c_0..c_{L-1}) -> the cells' tuple
    of P arrays (L, B, H)."""
    P = len(cell.state_parts)
    s = state.reshape((P, L) + state.shape[-2:])
    return tuple(s[k] for k in range(P))


def _joined(parts):
    """The inverse of _parts: a fresh array, (B, H) when P*L == 1."""
    s = np.concatenate(parts)
    return s[0].copy() if s.shape[0] == 1 else s


def _unpack(masks):
    return (None, None, None) if masks is None else masks


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
    """The reference ops: every call in NumPy on fastseq.reference.cells, vectorised over the batch."""

    name = "numpy"

    def __repr__(self):
        return f"{type(self).__name__}()"

    # ------------------------------------------------------------------ layer
    def rnn_forward(self, cell, X, state0, params, masks):
        """X (T, B, D), state0 -> (Y (T, B, H) the top layer's H_t, state_T, cache)."""
        c = get_cell(cell)
        layers = _layers(c, params)
        Y, state_T, cache = stack_forward(c, layers, X, _parts(c, state0, len(layers)), _unpack(masks)[1])
        return Y, _joined(state_T), cache

    def rnn_backward(self, cell, dY, dstate_T, cache, params, plan):
        """dY (T, B, H), dstate_T (like the state) or None -> (dX (T, B, D), dstate0, grads)."""
        c = get_cell(cell)
        layers = _layers(c, params)
        dT = None if dstate_T is None else _parts(c, dstate_T, len(layers))
        dX, dstate0, g = stack_backward(c, layers, dY, cache, dT, plan)
        grads = _flat_grads(c, g)
        return dX, _joined(dstate0), {k: grads[k] for k in params}

    # ------------------------------------------------------------------ language model
    def _lm_states(self, c, ids, state0, params, masks):
        """ids (B, T) -> (ids_tm (T, B), O (T, B, V), state_T, the stack's cache, H_t * m_out); steps 1-3."""
        m_in, m_layers, m_out = _unpack(masks)
        layers = _layers(c, params, gather=True)
        ids = ids.T                                             # time-major (T, B)
        A = params["W_xh"][ids]                                 # 1. the rows of W_xh (T, B, G*H)
        if m_in is not None:
            A = A * m_in                                        # 1. input dropout, before b_h
        Y, state_T, cache = stack_forward(c, layers, A, _parts(c, state0, len(layers)), m_layers)   # 2.
        Yq = Y if m_out is None else Y * m_out                  # 3. output dropout
        O = Yq @ params["W_hq"] + params["b_q"]                 # 3. O_t = H_t W_hq + b_q
        return ids, O, state_T, cache, Yq

    def lm_forward(self, cell, ids, state0, params):
        """ids (B, T), state0 -> (logits (B, T, V), state_T); no dropout (evaluation)."""
        _, O, state_T, _, _ = self._lm_states(get_cell(cell), ids, state0, params, None)
        return np.ascontiguousarray(O.transpose(1, 0, 2)), _joined(state_T)

    def lm_backprop(self, cell, ids, Y, state0, params, plan, masks, term=None):
        """The whole training step -> (loss, grads, state_T, dH (T, B, H) = dL/dH_t of the top layer).

        term: None, or one step t whose loss term alone is back-propagated (diagnostics).
        """
        c = get_cell(cell)
        ids, O, state_T, cache, Yq = self._lm_states(c, ids, state0, params, masks)   # 1-3.
        m_in, _, m_out = _unpack(masks)
        T, B = ids.shape
        V = params["W_hq"].shape[1]
        Yt = Y.T                                                # (T, B)
        logp = _log_softmax(O)                                  # (T, B, V)
        loss = -np.take_along_axis(logp, Yt[..., None], axis=-1).mean()   # 4.
        dO = np.exp(logp)                                       # 4'. softmax(O_t) ...
        np.put_along_axis(dO, Yt[..., None], np.take_along_axis(dO, Yt[..., None], -1) - 1, -1)
        dO /= B * T                                             # 4'. ... - onehot(Y_t), / (B*T)
        if term is not None:
            dO[np.arange(T) != term] = 0                        # keep loss term `term` alone
        dY = dO @ params["W_hq"].T                              # 3'. dL/d(H_t * m_out_t)
        if m_out is not None:
            dY *= m_out                                         # 3'.
        H = dY.shape[-1]
        dH = np.empty_like(dY)
        layers = _layers(c, params, gather=True)
        dA, _, g = stack_backward(c, layers, dY, cache, None, plan, dH_out=dH)    # 2'.
        if m_in is not None:
            dA *= m_in                                          # 1'.
        grads = _flat_grads(c, g)
        grads["W_xh"] = np.zeros_like(params["W_xh"])
        np.add.at(grads["W_xh"], ids.ravel(), dA.reshape(T * B, -1))   # 1'. scatter-add into the rows ids
        grads["W_hq"] = Yq.reshape(-1, H).T @ dO.reshape(-1, V)       # 3'. sum_t (H_t m_out_t)^T dO_t
        grads["b_q"] = dO.sum(axis=(0, 1))                            # 3'.
        return float(loss), {k: grads[k] for k in params}, _joined(state_T), dH

    def lm_loss_and_grad(self, cell, ids, Y, state0, params, plan, masks):
        """ids, Y (B, T), state0 -> (mean loss, grads, state_T)."""
        loss, grads, state_T, _ = self.lm_backprop(cell, ids, Y, state0, params, plan, masks)
        return loss, grads, state_T

    def lm_generate(self, cell, prefix, num_preds, params, temperature, top_k, uniforms):
        """Warm up on prefix (P,) from a zero state, then emit num_preds ids -> int32 (num_preds,).

        uniforms: float64 (num_preds,) when temperature > 0, else None (greedy).
        """
        c = get_cell(cell)
        layers = _layers(c, params, gather=True)
        H = params["W_hh"].shape[0]
        state = [tuple(np.zeros((1, H), dtype=params["W_hh"].dtype) for _ in c.state_parts) for _ in layers]

        def step(tok):                                          # steps 1-3 for one token, every layer
            x = params["W_xh"][tok][None]
            for l, p in enumerate(layers):
                state[l], _ = c.forward(p, x, state[l])
                x = state[l][0]
            return (x @ params["W_hq"] + params["b_q"])[0]

        for tok in prefix:                                      # warm-up
            logits = step(tok)
        out = np.empty(num_preds, dtype=np.int32)
        for i in range(num_preds):
            u = 0.0 if temperature == 0 else uniforms[i]
            out[i] = sample_token(logits, temperature, top_k, u)
            if i + 1 < num_preds:
                logits = step(out[i])                           # feed the prediction back
        return out

    # ------------------------------------------------------------------ training helpers
    def clip_grad_norm(self, grads, theta):
        """Global-norm clipping in place (gradient clipping, *Dive into Deep Learning* chapter 8,
        "Recurrent Neural Network Implementation from Scratch"); returns the norm before clipping."""
        return clip_grad_norm(grads, theta)
