"""The reference cells: plain RNN (tanh, relu), GRU and LSTM, one screen each, and one time loop for all.

*Dive into Deep Learning* (Zhang, Lipton, Li, Smola), chapter 8, "Recurrent Neural Networks" and
"Backpropagation Through Time", for the loop and the BPTT strategies; the gated cells are PyTorch's
``nn.GRU`` and ``nn.LSTM`` equations, gate order and biases, so that parameters map one to one:
``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H), ``bias_ih`` (G*H,), ``bias_hh`` (G*H,) are PyTorch's
``weight_ih_l{k}`` etc. of layer k, gate blocks stacked in PyTorch's order (GRU r, z, n; LSTM i, f, g, o).
docs/CELLS.md has the equations in the book's notation.

A cell object holds no arrays; it owns
  * ``gates`` (G) and ``state_parts`` (("h",) or ("h", "c")): the parameter and state layout,
  * ``forward(p, x, state) -> (new_state, cache)``: one step, numbered,
  * ``backward(p, cache, dnew) -> (dx, dprev, grads)``: the same numbers primed, with EVERY path
    from the new state to the previous one (h and c). ``dnew`` may carry extra leading axes (the
    sliding window's ages): the step is linear in ``dnew``, so dx and dprev keep those axes and the
    parameter gradients are summed over them.

Legend: T steps, B batch, D input size, H hidden size, L layers, G gates. Inputs are time-major
X (T, B, D); a stack's state is a tuple with one array (L, B, H) per state part, as PyTorch's
``h0`` / ``(h0, c0)``.

Adding a cell: one subclass of ``Cell`` below and one line in ``CELLS``.
"""
import numpy as np

from .._checks import check_choice, check_int, check_real
from ..errors import ArgumentError

__all__ = ["Cell", "CELLS", "get_cell", "init_stack", "dropout_mask", "dropout_masks", "stack_forward",
           "stack_backward"]


def _sigmoid(a):
    return 0.5 * (1 + np.tanh(0.5 * a))             # no overflow for large |a|


def _lead_sum(d):
    """d (..., B, n) -> (B, n): sum over the leading (age) axes; the parameter gradients are linear in d."""
    return d.reshape((-1,) + d.shape[-2:]).sum(axis=0)


class Cell:
    """The parameters every cell shares: gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh, G blocks of H."""

    name = None
    gates = 1
    state_parts = ("h",)

    def param_shapes(self, D, H):
        G = self.gates
        return {"weight_ih": (G * H, D), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,)}

    def init(self, D, H, rng, dtype=np.float64):
        """PyTorch's rule: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), drawn from rng in the order above."""
        k = 1.0 / np.sqrt(H)
        return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in self.param_shapes(D, H).items()}

    @staticmethod
    def _projections(p, x, h):
        """A layer without weight_ih reads its input projection x W_ih^T directly (G*H wide): the language
        model's row gather W_xh[ids], so that its dropout can multiply the rows before the bias."""
        xw = x @ p["weight_ih"].T if "weight_ih" in p else x
        return xw + p["bias_ih"], h @ p["weight_hh"].T + p["bias_hh"]

    @staticmethod
    def _projections_backward(p, x, h, dgi, dgh):
        """From dL/dgi, dL/dgh -> (dx, the path to h through W_hh, grads)."""
        gi, gh = _lead_sum(dgi), _lead_sum(dgh)
        grads = {"weight_hh": gh.T @ h, "bias_ih": gi.sum(0), "bias_hh": gh.sum(0)}
        if "weight_ih" not in p:
            return dgi, dgh @ p["weight_hh"], grads
        grads["weight_ih"] = gi.T @ x
        return dgi @ p["weight_ih"], dgh @ p["weight_hh"], grads


class RNNTanh(Cell):
    """Elman: H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h), W_xh = weight_ih^T, b_h = bias_ih + bias_hh."""

    name = "rnn_tanh"

    def _phi(self, a):
        return np.tanh(a)

    def _dphi(self, h):
        return 1 - h * h

    def forward(self, p, x, state):
        (h,) = state
        gi, gh = self._projections(p, x, h)                      # 1. gi, gh
        h_new = self._phi(gi + gh)                               # 2. H_t = phi(gi + gh)
        return (h_new,), (x, h, h_new)

    def backward(self, p, cache, dnew):
        x, h, h_new = cache
        (dh_new,) = dnew
        da = dh_new * self._dphi(h_new)                          # 2'. phi' from H_t alone
        dx, dh, grads = self._projections_backward(p, x, h, da, da)   # 1'. the only path to H_{t-1}
        return dx, (dh,), grads


class RNNReLU(RNNTanh):
    name = "rnn_relu"

    def _phi(self, a):
        return np.maximum(a, 0)

    def _dphi(self, h):
        return (h > 0).astype(h.dtype)


class GRU(Cell):
    """nn.GRU: gates r, z, n; the reset gate multiplies the hidden projection including its bias."""

    name = "gru"
    gates = 3

    def forward(self, p, x, state):
        (h,) = state
        gi, gh = self._projections(p, x, h)                      # 1. gi, gh (3H each: r, z, n)
        gi_r, gi_z, gi_n = np.split(gi, 3, axis=-1)
        gh_r, gh_z, gh_n = np.split(gh, 3, axis=-1)
        r = _sigmoid(gi_r + gh_r)                                # 2. reset gate
        z = _sigmoid(gi_z + gh_z)                                # 3. update gate
        n = np.tanh(gi_n + r * gh_n)                             # 4. candidate: r * (W_hn h + b_hn)
        h_new = (1 - z) * n + z * h                              # 5. H_t
        return (h_new,), (x, h, r, z, n, gh_n)

    def backward(self, p, cache, dnew):
        x, h, r, z, n, gh_n = cache
        (dh_new,) = dnew
        dn = dh_new * (1 - z)                                    # 5'.
        dz = dh_new * (h - n)                                    # 5'.
        dh_direct = dh_new * z                                   # 5'. path 1 to H_{t-1}: through z * h
        dan = dn * (1 - n * n)                                   # 4'. d(gi_n + r * gh_n)
        dr = dan * gh_n                                          # 4'.
        dgh_n = dan * r                                          # 4'.
        dar = dr * r * (1 - r)                                   # 2'.
        daz = dz * z * (1 - z)                                   # 3'.
        dgi = np.concatenate([dar, daz, dan], axis=-1)
        dgh = np.concatenate([dar, daz, dgh_n], axis=-1)
        dx, dh_proj, grads = self._projections_backward(p, x, h, dgi, dgh)   # 1'. path 2: through W_hh
        return dx, (dh_direct + dh_proj,), grads


class LSTM(Cell):
    """nn.LSTM: gates i, f, g, o; the state is the pair (h, c)."""

    name = "lstm"
    gates = 4
    state_parts = ("h", "c")

    def forward(self, p, x, state):
        h, c = state
        gi, gh = self._projections(p, x, h)                      # 1. gi, gh (4H each: i, f, g, o)
        a_i, a_f, a_g, a_o = np.split(gi + gh, 4, axis=-1)
        i, f, o = _sigmoid(a_i), _sigmoid(a_f), _sigmoid(a_o)   # 2. input, forget, output gates
        g = np.tanh(a_g)                                         # 3. candidate
        c_new = f * c + i * g                                    # 4. memory cell C_t
        tc = np.tanh(c_new)
        h_new = o * tc                                           # 5. H_t
        return (h_new, c_new), (x, h, c, i, f, g, o, tc)

    def backward(self, p, cache, dnew):
        x, h, c, i, f, g, o, tc = cache
        dh_new, dc_new = dnew
        do = dh_new * tc                                         # 5'.
        dc = dc_new + dh_new * o * (1 - tc * tc)                 # 5'. both paths into C_t
        dc_prev = dc * f                                         # 4'. path to C_{t-1}
        di, df, dg = dc * g, dc * c, dc * i                      # 4'.
        da = np.concatenate([di * i * (1 - i), df * f * (1 - f),  # 2'-3'. i, f, g, o
                             dg * (1 - g * g), do * o * (1 - o)], axis=-1)
        dx, dh_prev, grads = self._projections_backward(p, x, h, da, da)   # 1'. path to H_{t-1}: W_hh
        return dx, (dh_prev, dc_prev), grads


CELLS = {c.name: c for c in (RNNTanh(), RNNReLU(), GRU(), LSTM())}


def get_cell(name):
    """The registered cell called name (a ``Cell`` instance is returned as is)."""
    if isinstance(name, Cell):
        return name
    return CELLS[check_choice("cell", name, tuple(CELLS))]


# ---------------------------------------------------------------------------- stacks and the time loop
def init_stack(cell, input_size, hidden_size, num_layers=1, rng=None, dtype=np.float64):
    """Parameters of a stack: a list of L dicts (layer 0 reads D inputs, layer l > 0 reads H)."""
    cell = get_cell(cell)
    D = check_int("input_size", input_size, lo=1)
    H = check_int("hidden_size", hidden_size, lo=1)
    L = check_int("num_layers", num_layers, lo=1)
    rng = np.random.default_rng(0) if rng is None else rng
    return [cell.init(D if l == 0 else H, H, rng, dtype) for l in range(L)]


def dropout_mask(rng, dropout, shape, dtype=np.float64):
    """One dropout mask of ``shape`` and ``dtype``: entry 0 w.p. dropout else 1/(1 - dropout); None when
    dropout == 0.

    Drawn as ``rng.random(shape, dtype=dtype) >= dtype(dropout)`` (uniforms in the mask's own dtype)
    so another backend given the same Generator state sees the same mask.
    """
    p = check_real("dropout", dropout, lo=0, hi=1, hi_open=True)
    if p == 0:
        return None
    if not isinstance(rng, np.random.Generator):
        raise ArgumentError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    dtype = np.dtype(dtype).type
    if dtype not in (np.float32, np.float64):
        raise ArgumentError(f"dtype: expected float32 or float64, got {np.dtype(dtype).name}")
    # One array, three passes: float32 uniforms cost half of float64's, and the mask overwrites them
    # (the masks of a 512-unit LSTM step were a fifth of its time, drawn before the kernels on one thread).
    m = rng.random(shape, dtype=dtype)
    np.greater_equal(m, dtype(p), out=m)
    m *= dtype(1 / (1 - p))
    return m


def dropout_masks(rng, dropout, num_layers, T, B, H, dtype=np.float64):
    """nn.LSTM(dropout=)'s masks: (L-1, T, B, H) by ``dropout_mask``, applied to the outputs of every
    layer but the last; None when dropout == 0 or L == 1."""
    check_real("dropout", dropout, lo=0, hi=1, hi_open=True)
    L = check_int("num_layers", num_layers, lo=1)
    return None if L == 1 else dropout_mask(rng, dropout, (L - 1, T, B, H), dtype)


def _check_array(name, a, shape, dtype):
    if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or a.dtype != dtype:
        got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ArgumentError(f"{name}: expected a {np.dtype(dtype)} array of shape {tuple(shape)}, got {got}")


def _check_stack(cell, params, X, state0, masks):
    """Shapes and dtypes of a stack's call, so a mistake is named instead of broadcast or mis-indexed."""
    if not isinstance(X, np.ndarray) or X.ndim != 3 or X.shape[0] < 1 \
            or X.dtype not in (np.float32, np.float64):
        raise ArgumentError("X: expected a float32 or float64 array (T, B, D) with T >= 1")
    if not isinstance(params, (list, tuple)) or not params or not all(isinstance(p, dict) for p in params):
        raise ArgumentError("params: expected a non-empty list of per-layer dicts (see init_stack)")
    T, B, D = X.shape
    w = params[0].get("weight_hh")
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ArgumentError("params[0]['weight_hh']: expected an array of shape (G*H, H)")
    L, H = len(params), w.shape[1]
    for l, p in enumerate(params):
        shapes = cell.param_shapes(D if l == 0 else H, H)
        if l == 0 and "weight_ih" not in p and D == cell.gates * H:
            del shapes["weight_ih"]                              # X is layer 0's input projection
        if set(p) != set(shapes):
            raise ArgumentError(f"params[{l}]: expected the keys {sorted(shapes)}, got {sorted(p)}")
        for n, s in shapes.items():
            _check_array(f"params[{l}][{n!r}]", p[n], s, X.dtype)
    if not isinstance(state0, tuple) or len(state0) != len(cell.state_parts):
        raise ArgumentError(f"state0: expected a tuple of {len(cell.state_parts)} array(s) "
                            f"{cell.state_parts}, each (L, B, H)")
    for k, s in zip(cell.state_parts, state0):
        _check_array(f"state0 ({k})", s, (L, B, H), X.dtype)
    if masks is not None:
        _check_array("masks", masks, (L - 1, T, B, H), X.dtype)


def stack_forward(cell, params, X, state0, masks=None):
    """X (T, B, D), state0 (one (L, B, H) per state part) -> (Y (T, B, H) top layer's H_t, state_T, cache)."""
    cell = get_cell(cell)
    _check_stack(cell, params, X, state0, masks)
    T, L = X.shape[0], len(params)
    state = [tuple(s[l] for s in state0) for l in range(L)]      # per layer: (h,) or (h, c)
    Y = np.empty(X.shape[:2] + state0[0].shape[-1:], dtype=state0[0].dtype)
    caches = []
    for t in range(T):
        x, step = X[t], []
        for l in range(L):
            state[l], cache = cell.forward(params[l], x, state[l])
            step.append(cache)
            x = state[l][0] if masks is None or l == L - 1 else state[l][0] * masks[l, t]
        Y[t] = x
        caches.append(step)
    state_T = tuple(np.stack([s[k] for s in state]) for k in range(len(cell.state_parts)))
    return Y, state_T, (caches, masks)


def stack_backward(cell, params, dY, cache, dstate_T=None, plan=(None, 0), dH_out=None):
    """dY (T, B, H) on the top layer's outputs, dstate_T (like state0) or None -> (dX, dstate0, grads).

    dH_out: None, or a (T, B, H) array filled with the top layer's total dL/dH_t (its own loss term
    plus every live message from later steps), for the diagnostics.

    plan = (scale, window) of fastseq.bptt, the same meaning for every cell and depth: the state is
    the whole stacked state (every layer's h, and c for the LSTM). scale (T, B) multiplies the whole
    message from step t to the state at t-1; window = tau counts steps of the whole state: each loss
    term (dstate_T is part of term T-1) back-propagates through its last tau steps, keeping what
    reaches state0 in time. Messages are kept per age (0..tau-1; one age when window == 0).
    """
    cell = get_cell(cell)
    caches, masks = cache
    T, L, P = len(caches), len(params), len(cell.state_parts)
    if len(caches[0]) != L:
        raise ArgumentError(f"cache: from a stack of {len(caches[0])} layer(s), params have {L}")
    h0 = caches[0][0][1]                                         # every cell's cache starts (x, h)
    B, H = h0.shape
    _check_array("dY", dY, (T, B, H), h0.dtype)
    if dstate_T is not None:
        if not isinstance(dstate_T, tuple) or len(dstate_T) != P:
            raise ArgumentError(f"dstate_T: expected None or a tuple of {P} array(s) {cell.state_parts}")
        for k, s in zip(cell.state_parts, dstate_T):
            _check_array(f"dstate_T ({k})", s, (L, B, H), h0.dtype)
    scale, window = plan
    check_int("window", window, lo=0)
    if scale is not None:
        if window:
            raise ArgumentError("plan: expected a scale or a window, not both")
        _check_array("scale", scale, (T, B), scale.dtype if isinstance(scale, np.ndarray) else h0.dtype)
    ages = window if window else 1
    M = [[np.zeros((ages, B, H), dtype=dY.dtype) for _ in range(P)] for _ in range(L)]
    if dstate_T is not None:
        for l in range(L):
            for k in range(P):
                M[l][k][0] += dstate_T[k][l]                     # the final state joins term T-1
    grads = [{n: np.zeros_like(a) for n, a in p.items()} for p in params]
    dX = None
    for t in range(T - 1, -1, -1):
        dup = np.zeros((ages, B, H), dtype=dY.dtype)
        dup[0] = dY[t]                                           # term t enters at its own step
        for l in range(L - 1, -1, -1):
            dnew = (M[l][0] + dup,) + tuple(M[l][1:])            # h_t: from above and from step t+1
            if dH_out is not None and l == L - 1:
                dH_out[t] = dnew[0].sum(axis=0)
            dx, dprev, g = cell.backward(params[l], caches[t][l], dnew)
            for n in g:
                grads[l][n] += g[n]
            M[l] = list(dprev)
            dup = dx if l == 0 or masks is None else dx * masks[l - 1, t]
        if dX is None:
            dX = np.empty((T,) + dup.shape[1:], dtype=dY.dtype)
        dX[t] = dup.sum(axis=0)
        if scale is not None:                                    # the whole message to step t-1
            M = [[m * scale[t][:, None] for m in Ml] for Ml in M]
        if t > 0 and window:                                     # age +1; age tau-1 stops here
            M = [[np.concatenate([np.zeros_like(m[:1]), m[:-1]]) for m in Ml] for Ml in M]
    dstate0 = tuple(np.stack([M[l][k].sum(axis=0) for l in range(L)]) for k in range(P))
    return dX, dstate0, grads
