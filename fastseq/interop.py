"""PyTorch interop: an RNNLM to and from the state dict of nn.Embedding + nn.RNN + nn.Linear.

Legend: V vocabulary, E embedding size, H hidden.

fastseq's RNNLM computes H_t = phi(W_xh[x_t] + H_{t-1} W_hh + b_h) and
O_t = H_t W_hq + b_q. The PyTorch model with the same function is::

    embedding = nn.Embedding(V, E)           # weight (V, E)
    rnn = nn.RNN(E, H, nonlinearity=phi, batch_first=True)
        # weight_ih_l0 (H, E), weight_hh_l0 (H, H), bias_ih_l0 (H,), bias_hh_l0 (H,)
    linear = nn.Linear(H, V)                 # weight (V, H), bias (V,)

torch computes x W_ih^T + b_ih + h W_hh^T + b_hh, so the mapping is

    export: embedding.weight = I_V (one-hot input, E = V), weight_ih_l0 = W_xh^T,
            weight_hh_l0 = W_hh^T, bias_ih_l0 = b_h, bias_hh_l0 = 0,
            linear.weight = W_hq^T, linear.bias = b_q
    import: W_xh = embedding.weight @ weight_ih_l0^T (a gather followed by a
            linear map is a gather of the product, so any E works exactly),
            W_hh = weight_hh_l0^T, b_h = bias_ih_l0 + bias_hh_l0,
            W_hq = linear.weight^T, b_q = linear.bias.

Keys are ``<prefix>embedding.weight``, ``<prefix>rnn.weight_ih_l0`` and so on,
the names of a module with attributes ``embedding``, ``rnn``, ``linear``
(``torch_module`` builds one). torch is imported only by the functions that
need it.
"""
import numpy as np

from .errors import ArgumentError
from .rnn import RNNLM

__all__ = ["KEYS", "to_torch_state_dict", "from_torch_state_dict", "torch_module"]

KEYS = ("embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
        "linear.weight", "linear.bias")


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("fastseq.interop needs PyTorch for tensors: pip install torch "
                          "(or pass tensors='numpy')") from None
    return torch


def to_torch_state_dict(model, prefix="", tensors="torch"):
    """The state dict (torch names and layouts) of the PyTorch model equal to ``model``.

    tensors: 'torch' (torch.Tensor, the model's dtype) or 'numpy' (arrays).
    The embedding is the identity (V, V): the RNN reads one-hot vectors, the
    book's input, and weight_ih_l0 (H, V) is W_xh^T.
    """
    if tensors not in ("torch", "numpy"):
        raise ArgumentError(f"tensors: expected 'torch' or 'numpy', got {tensors!r}")
    p = model.params
    V, H = p["W_xh"].shape
    dt = p["W_xh"].dtype
    out = {
        "embedding.weight": np.eye(V, dtype=dt),
        "rnn.weight_ih_l0": p["W_xh"].T,
        "rnn.weight_hh_l0": p["W_hh"].T,
        "rnn.bias_ih_l0": p["b_h"],
        "rnn.bias_hh_l0": np.zeros(H, dtype=dt),   # b_h is split as (b_h, 0)
        "linear.weight": p["W_hq"].T,
        "linear.bias": p["b_q"],
    }
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


def _module_nonlinearity(module, prefix, nonlinearity):
    """The nonlinearity of the module's nn.RNN at ``<prefix>rnn``, checked against the one given."""
    rnn = module
    for part in (prefix + "rnn").split("."):
        if part:
            rnn = getattr(rnn, part, None)
    if rnn is None:
        raise ArgumentError(f"state_dict: the module has no submodule {prefix}rnn")
    kind = type(rnn).__name__
    if kind != "RNN" or not hasattr(rnn, "nonlinearity"):
        raise ArgumentError(f"state_dict: {prefix}rnn is a {kind}; only a single-layer nn.RNN maps to an RNNLM")
    if nonlinearity is not None and nonlinearity != rnn.nonlinearity:
        raise ArgumentError(f"nonlinearity: {nonlinearity!r} given, but the module's nn.RNN uses {rnn.nonlinearity!r}")
    return rnn.nonlinearity


def from_torch_state_dict(state_dict, nonlinearity=None, dtype=None, prefix="", backend=None):
    """An RNNLM with the function of the PyTorch model whose state dict (or module) is given.

    state_dict: torch names (see KEYS, each after ``prefix``), tensors or
    arrays; or the nn.Module itself, whose nn.RNN then says its nonlinearity.
    Extra keys of other modules are an error, so are a second layer
    (``rnn.weight_ih_l1``) and a bidirectional RNN (``*_reverse``).
    nonlinearity: the nn.RNN's ('tanh' or 'relu'). A state dict does not
    record it: default 'tanh' (nn.RNN's default) for a state dict, the
    module's own for a module; given and different from the module's, an error.
    dtype: the model's dtype (default: that of rnn.weight_hh_l0; float16 and
    bfloat16 become float32). backend: 'cpp' (default) or 'numpy'.
    """
    if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):   # an nn.Module
        nonlinearity = _module_nonlinearity(state_dict, prefix, nonlinearity)
        state_dict = state_dict.state_dict()
    elif nonlinearity is None:
        nonlinearity = "tanh"
    if not hasattr(state_dict, "keys"):
        raise ArgumentError(f"state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}")
    names = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix)}
    missing = [k for k in KEYS if k not in names]
    extra = sorted(set(names) - set(KEYS))
    if any(k.endswith("_reverse") for k in extra):
        raise ArgumentError("state_dict: a bidirectional nn.RNN (keys *_reverse) has no RNNLM equivalent")
    if any(k.startswith("rnn.") and k[-3:-1] == "_l" for k in extra):
        raise ArgumentError(f"state_dict: a multi-layer nn.RNN ({', '.join(prefix + k for k in extra)}) "
                         "has no single-layer RNNLM equivalent")
    if missing or extra:
        raise ArgumentError(f"state_dict: expected the keys {[prefix + k for k in KEYS]}; "
                         f"missing {[prefix + k for k in missing]}, unexpected {[prefix + k for k in extra]}")
    a = {k: _as_numpy(names[k], state_dict[names[k]]) for k in KEYS}
    emb, w_hh = a["embedding.weight"], a["rnn.weight_hh_l0"]
    if emb.ndim != 2:
        raise ArgumentError(f"state_dict['{prefix}embedding.weight']: expected (V, E), got shape {emb.shape}")
    V, E = emb.shape
    if w_hh.ndim != 2 or w_hh.shape[0] != w_hh.shape[1]:
        gated = {3: " (an nn.GRU's 3 gates?)", 4: " (an nn.LSTM's 4 gates?)"}
        hint = gated.get(w_hh.shape[0] // w_hh.shape[1], "") if w_hh.ndim == 2 and w_hh.shape[1] else ""
        raise ArgumentError(f"state_dict['{prefix}rnn.weight_hh_l0']: expected (H, H), got shape {w_hh.shape}{hint}")
    H = w_hh.shape[0]
    want = {"rnn.weight_ih_l0": (H, E), "rnn.bias_ih_l0": (H,), "rnn.bias_hh_l0": (H,),
            "linear.weight": (V, H), "linear.bias": (V,)}
    for k, shape in want.items():
        if a[k].shape != shape:
            raise ArgumentError(f"state_dict['{prefix}{k}']: expected shape {shape} (V={V}, E={E}, H={H}), "
                             f"got {a[k].shape}")
    dt = np.dtype(dtype if dtype is not None else w_hh.dtype)
    if dt not in (np.float32, np.float64):
        raise ArgumentError(f"dtype: expected float32 or float64, got {dt}")
    model = RNNLM.from_config(dict(vocab_size=V, num_hiddens=H, nonlinearity=nonlinearity, dtype=dt.name), backend)
    f64 = {k: v.astype(np.float64) for k, v in a.items()}
    model.load_state_dict({
        "W_xh": (f64["embedding.weight"] @ f64["rnn.weight_ih_l0"].T).astype(dt),   # (V, E)(E, H)
        "W_hh": f64["rnn.weight_hh_l0"].T.astype(dt),
        "b_h": (f64["rnn.bias_ih_l0"] + f64["rnn.bias_hh_l0"]).astype(dt),
        "W_hq": f64["linear.weight"].T.astype(dt),
        "b_q": f64["linear.bias"].astype(dt),
    })
    return model


def torch_module(model=None, vocab_size=None, num_hiddens=None, nonlinearity=None, dtype=None):
    """A torch.nn.Module (embedding, rnn, linear) equal to ``model`` (or untrained, from sizes).

    forward(ids (B, T) int64, h0 (1, B, H) or None) -> (logits (B, T, V), h_T (1, B, H)).
    """
    torch = _torch()
    nn = torch.nn
    if model is not None:
        vocab_size, num_hiddens = model.params["W_xh"].shape
        nonlinearity = nonlinearity or model.nonlinearity
        dtype = dtype or model.params["W_xh"].dtype
    nonlinearity = nonlinearity or "tanh"
    tdtype = torch.float64 if np.dtype(dtype or np.float32) == np.float64 else torch.float32

    class TorchRNNLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, vocab_size, dtype=tdtype)
            self.rnn = nn.RNN(vocab_size, num_hiddens, nonlinearity=nonlinearity, batch_first=True, dtype=tdtype)
            self.linear = nn.Linear(num_hiddens, vocab_size, dtype=tdtype)

        def forward(self, ids, h0=None):
            hs, h_T = self.rnn(self.embedding(ids), h0)
            return self.linear(hs), h_T

    m = TorchRNNLM()
    if model is not None:
        m.load_state_dict(to_torch_state_dict(model))
    return m
