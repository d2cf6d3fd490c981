"""PyTorch interop: an RNNLM of any cell and depth to and from the state dict of nn.Embedding + a
recurrent module (nn.RNN, nn.GRU or nn.LSTM, num_layers = L) + nn.Linear.

Legend: V vocabulary, E embedding size, H hidden, L layers, G gate blocks (1, 3 for the GRU, 4 for the
LSTM); s = "" for layer 0, "_l{l}" for layer l >= 1 (fastseq's names, docs/CELLS.md).

fastseq's RNNLM is the contract's cell stack on one-hot inputs (X_t W_xh is the row W_xh[x_t]) and
O_t = H_t W_hq + b_q. The PyTorch model with the same function is::

    embedding = nn.Embedding(V, E)                                  # weight (V, E)
    rnn = nn.RNN(E, H, nonlinearity=phi, num_layers=L, batch_first=True)   # or nn.GRU / nn.LSTM
        # weight_ih_l{l} (G*H, E or H), weight_hh_l{l} (G*H, H), bias_ih_l{l}, bias_hh_l{l} (G*H,)
    linear = nn.Linear(H, V)                                        # weight (V, H), bias (V,)

torch computes x W_ih^T + b_ih + h W_hh^T + b_hh per gate block (the GRU's n block: r * (h W_hn^T +
b_hn)), so the mapping is, for every layer l:

    export: embedding.weight = I_V (one-hot input, E = V), weight_ih_l{l} = W_xh{s}^T,
            weight_hh_l{l} = W_hh{s}^T, bias_ih_l{l} = b_h{s}, bias_hh_l{l} = 0 (the GRU's n block:
            b_hn{s}), linear.weight = W_hq^T, linear.bias = b_q
    import: W_xh = embedding.weight @ weight_ih_l0^T (a gather followed by a linear map is a gather
            of the product, so any E works exactly), W_xh{s} = weight_ih_l{l}^T above,
            W_hh{s} = weight_hh_l{l}^T, b_h{s} = bias_ih_l{l} + bias_hh_l{l} (the GRU's n block:
            bias_ih's alone, b_hn{s} = bias_hh's n block), W_hq = linear.weight^T, b_q = linear.bias.

The state: fastseq's one array (B, H) or (P*L, B, H), rows h_0..h_{L-1} then c_0..c_{L-1}, is torch's
h (L, B, H), or (h, c) for the LSTM (``to_torch_state`` / ``from_torch_state``). Dropout is not part of
a state dict: fastseq's masks (input, between layers, output) are its own, torch's nn.LSTM(dropout=)
drops between layers only; the functions are equal without dropout.

Keys are ``<prefix>embedding.weight``, ``<prefix>rnn.weight_ih_l0`` and so on, the names of a module
with attributes ``embedding``, ``rnn``, ``linear`` (``torch_module`` builds one). torch is imported
only by the functions that need it.
"""
import re

import numpy as np

from .errors import ArgumentError
from .reference.cells import CELLS
from .reference.ops import layer_suffix
from .rnn import RNNLM, _resolve_cell

__all__ = ["KEYS", "keys", "to_torch_state_dict", "from_torch_state_dict", "torch_module", "to_torch_state",
           "from_torch_state"]

_RNN_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LAYER_KEY = re.compile(r"rnn\.(?:weight|bias)_(?:ih|hh)_l(\d+)")
_TORCH_CLASS = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "gru": "GRU", "lstm": "LSTM"}


def keys(num_layers=1):
    """The state dict's keys (without prefix) for L layers, in order."""
    return (("embedding.weight",) + tuple(f"rnn.{k}_l{l}" for l in range(num_layers) for k in _RNN_KEYS)
            + ("linear.weight", "linear.bias"))


KEYS = keys(1)


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("fastseq.interop needs PyTorch for tensors: pip install torch "
                          "(or pass tensors='numpy')") from None
    return torch


def _gates(cell):
    return CELLS[cell].gates


def to_torch_state_dict(model, prefix="", tensors="torch"):
    """The state dict (torch names and layouts) of the PyTorch model equal to ``model`` (any cell, L layers).

    tensors: 'torch' (torch.Tensor, the model's dtype) or 'numpy' (arrays).
    The embedding is the identity (V, V): the stack reads one-hot vectors, the
    book's input, and weight_ih_l0 (G*H, V) is W_xh^T.
    """
    if tensors not in ("torch", "numpy"):
        raise ArgumentError(f"tensors: expected 'torch' or 'numpy', got {tensors!r}")
    p = model.params
    V, H, dt = model.vocab_size, model.num_hiddens, p["W_xh"].dtype
    out = {"embedding.weight": np.eye(V, dtype=dt)}
    for l in range(model.num_layers):
        s = layer_suffix(l)
        bias_hh = np.zeros(_gates(model.cell) * H, dtype=dt)      # b_h is split as (b_h, 0) ...
        if model.cell == "gru":
            bias_hh[2 * H:] = p["b_hn" + s]                        # ... but the GRU's n block: r * (.. + b_hn)
        out.update({f"rnn.weight_ih_l{l}": p["W_xh" + s].T, f"rnn.weight_hh_l{l}": p["W_hh" + s].T,
                    f"rnn.bias_ih_l{l}": p["b_h" + s], f"rnn.bias_hh_l{l}": bias_hh})
    out.update({"linear.weight": p["W_hq"].T, "linear.bias": p["b_q"]})
    out = {prefix + k: np.ascontiguousarray(v).copy() for k, v in out.items()}
    if tensors == "numpy":
        return out
    torch = _torch()
    return {k: torch.from_numpy(v) for k, v in out.items()}


def _as_numpy(name, v):
    if hasattr(v, "detach"):   # a torch.Tensor, on any device
        v = v.detach().cpu()
        if v.is_floating_point() and v.element_size() < 4:
            v = v.float()        # float16/bfloat16 (NumPy has no bfloat16): exact in float32
        v = v.numpy()
    a = np.asarray(v)
    if not np.issubdtype(a.dtype, np.floating):
        raise ArgumentError(f"state_dict[{name!r}]: expected floating-point numbers, got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ArgumentError(f"state_dict[{name!r}]: holds NaN or inf")
    return a


def _module_cell(module, prefix, nonlinearity):
    """The cell of the module's recurrent layer at ``<prefix>rnn``, the nonlinearity checked against the one given."""
    rnn = module
    for part in (prefix + "rnn").split("."):
        if part:
            rnn = getattr(rnn, part, None)
    if rnn is None:
        raise ArgumentError(f"state_dict: the module has no submodule {prefix}rnn")
    kind = type(rnn).__name__
    if kind not in ("RNN", "GRU", "LSTM") or getattr(rnn, "bidirectional", False):
        raise ArgumentError(f"state_dict: {prefix}rnn is a {'bidirectional ' * bool(getattr(rnn, 'bidirectional', 0))}"
                            f"{kind}; only a one-way nn.RNN, nn.GRU or nn.LSTM maps to an RNNLM")
    if kind != "RNN":
        if nonlinearity is not None:
            raise ArgumentError(f"nonlinearity: {nonlinearity!r} given, but the module's {prefix}rnn is an nn.{kind}")
        return kind.lower()
    if nonlinearity is not None and nonlinearity != rnn.nonlinearity:
        raise ArgumentError(f"nonlinearity: {nonlinearity!r} given, but the module's nn.RNN uses {rnn.nonlinearity!r}")
    return "rnn_" + rnn.nonlinearity


def from_torch_state_dict(state_dict, nonlinearity=None, dtype=None, prefix="", backend=None):
    """An RNNLM with the function of the PyTorch model whose state dict (or module) is given.

    state_dict: torch names (see ``keys(L)``, each after ``prefix``), tensors or arrays; or the
    nn.Module itself, whose recurrent layer then says its cell (and the nn.RNN its nonlinearity).
    The cell of a state dict is read from its shapes (weight_hh_l0 (G*H, H): G = 1 a plain RNN, 3 a
    GRU, 4 an LSTM), its depth from its keys. Extra keys of other modules are an error, so are a
    bidirectional layer (``*_reverse``) and an LSTM with projections (``weight_hr_l*``).
    nonlinearity: the nn.RNN's ('tanh' or 'relu'). A state dict does not record it: default 'tanh'
    (nn.RNN's default) for a state dict, the module's own for a module; given and different from the
    module's, an error. dtype: the model's dtype (default: that of rnn.weight_hh_l0; float16 and
    bfloat16 become float32). backend: 'cpp' (default) or 'numpy'. The model's dropout is 0.
    """
    cell = None
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):   # an nn.Module
        cell = _module_cell(state_dict, prefix, nonlinearity)
        state_dict = state_dict.state_dict()
    if not hasattr(state_dict, "keys"):
        raise ArgumentError(f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}")
    names = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix)}
    if any(k.endswith("_reverse") for k in names):
        raise ArgumentError("state_dict: a bidirectional recurrent layer (keys *_reverse) has no RNNLM equivalent")
    if any(k.startswith("rnn.weight_hr_l") for k in names):
        raise ArgumentError("state_dict: an nn.LSTM with projections (proj_size, keys weight_hr_l*) "
                            "has no RNNLM equivalent")
    layers = [int(m.group(1)) for m in map(_LAYER_KEY.fullmatch, names) if m]
    L = max(layers, default=0) + 1       # the deepest layer named: its missing keys are then named
    want_keys = keys(L)
    missing = [k for k in want_keys if k not in names]
    extra = sorted(set(names) - set(want_keys))
    if missing or extra:
        raise ArgumentError(f"state_dict: expected the keys {[prefix + k for k in want_keys]}; "
                            f"missing {[prefix + k for k in missing]}, unexpected {[prefix + k for k in extra]}")
    a = {k: _as_numpy(names[k], state_dict[names[k]]) for k in want_keys}
    emb, w_hh = a["embedding.weight"], a["rnn.weight_hh_l0"]
    if emb.ndim != 2:
        raise ArgumentError(f"state_dict['{prefix}embedding.weight']: expected (V, E), got shape {emb.shape}")
    V, E = emb.shape
    if w_hh.ndim != 2 or w_hh.shape[1] < 1 or w_hh.shape[0] % w_hh.shape[1] \
            or w_hh.shape[0] // w_hh.shape[1] not in (1, 3, 4):
        raise ArgumentError(f"state_dict['{prefix}rnn.weight_hh_l0']: expected (G*H, H) with G = 1 (nn.RNN), "
                            f"3 (nn.GRU) or 4 (nn.LSTM), got shape {w_hh.shape}")
    H = w_hh.shape[1]
    G = w_hh.shape[0] // H
    if cell is None:
        cell = _resolve_cell(None, nonlinearity) if G == 1 else {3: "gru", 4: "lstm"}[G]
        if G > 1 and nonlinearity is not None:
            raise ArgumentError(f"nonlinearity: {nonlinearity!r} given, but the state dict holds an "
                                f"nn.{_TORCH_CLASS[cell]} ({G} gate blocks)")
    elif _gates(cell) != G:
        raise ArgumentError(f"state_dict['{prefix}rnn.weight_hh_l0']: shape {w_hh.shape} is not "
                            f"an nn.{_TORCH_CLASS[cell]}'s")
    want = {"linear.weight": (V, H), "linear.bias": (V,)}
    for l in range(L):
        want.update({f"rnn.weight_ih_l{l}": (G * H, E if l == 0 else H), f"rnn.weight_hh_l{l}": (G * H, H),
                     f"rnn.bias_ih_l{l}": (G * H,), f"rnn.bias_hh_l{l}": (G * H,)})
    for k, shape in want.items():
        if a[k].shape != shape:
            raise ArgumentError(f"state_dict['{prefix}{k}']: expected shape {shape} (V={V}, E={E}, H={H}, "
                                f"G={G}), got {a[k].shape}")
    dt = np.dtype(dtype if dtype is not None else w_hh.dtype)
    if dt not in (np.float32, np.float64):
        raise ArgumentError(f"dtype: expected float32 or float64, got {dt}")
    model = RNNLM.from_config(dict(vocab_size=V, num_hiddens=H, cell=cell, num_layers=L, dropout=0.0,
                                   dtype=dt.name), backend)
    f64 = {k: v.astype(np.float64) for k, v in a.items()}
    params = {}
    for l in range(L):
        s = layer_suffix(l)
        w_ih, b_ih, b_hh = f64[f"rnn.weight_ih_l{l}"], f64[f"rnn.bias_ih_l{l}"], f64[f"rnn.bias_hh_l{l}"].copy()
        params["W_xh" + s] = f64["embedding.weight"] @ w_ih.T if l == 0 else w_ih.T   # (V, E)(E, G*H)
        params["W_hh" + s] = f64[f"rnn.weight_hh_l{l}"].T
        if cell == "gru":
            params["b_hn" + s] = b_hh[2 * H:].copy()         # inside r * (...): not foldable into b_h
            b_hh[2 * H:] = 0
        params["b_h" + s] = b_ih + b_hh
    params.update(W_hq=f64["linear.weight"].T, b_q=f64["linear.bias"])
    model.load_state_dict({k: v.astype(dt) for k, v in params.items()})
    return model


def to_torch_state(state, cell, num_layers):
    """fastseq's state ((B, H) or (P*L, B, H)) -> torch's h (L, B, H), or (h, c) for the LSTM (tensors)."""
    torch = _torch()
    t = torch.as_tensor(np.asarray(state))
    if t.ndim == 2:
        t = t[None]
    if cell == "lstm":
        return t[:num_layers], t[num_layers:]
    return t


def from_torch_state(state):
    """torch's h (L, B, H) or (h, c) -> fastseq's state array ((B, H) when it is one layer's h alone)."""
    parts = state if isinstance(state, tuple) else (state,)
    s = np.concatenate([p.detach().cpu().numpy() for p in parts])
    return s[0] if s.shape[0] == 1 else s


def torch_module(model=None, vocab_size=None, num_hiddens=None, nonlinearity=None, dtype=None, *, cell=None,
                 num_layers=1):
    """A torch.nn.Module (embedding, rnn, linear) equal to ``model`` (or untrained, from sizes and a cell).

    forward(ids (B, T) int64, state0 torch's (see to_torch_state) or None) -> (logits (B, T, V), state_T).
    """
    torch = _torch()
    nn = torch.nn
    if model is not None:
        vocab_size, num_hiddens = model.vocab_size, model.num_hiddens
        cell, num_layers = model.cell, model.num_layers
        dtype = dtype or model.dtype
    if cell is None:
        cell = "rnn_" + (nonlinearity or "tanh")
    tdtype = torch.float64 if np.dtype(dtype or np.float32) == np.float64 else torch.float32
    kw = {"nonlinearity": cell[4:]} if cell.startswith("rnn_") else {}

    class TorchRNNLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, vocab_size, dtype=tdtype)
            self.rnn = getattr(nn, _TORCH_CLASS[cell])(vocab_size, num_hiddens, num_layers=num_layers,
                                                       batch_first=True, dtype=tdtype, **kw)
            self.linear = nn.Linear(num_hiddens, vocab_size, dtype=tdtype)

        def forward(self, ids, state0=None):
            hs, state_T = self.rnn(self.embedding(ids), state0)
            return self.linear(hs), state_T

    m = TorchRNNLM()
    if model is not None:
        m.load_state_dict(to_torch_state_dict(model))
    return m
