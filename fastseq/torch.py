"""fastseq.torch: ``RNN``, ``GRU`` and ``LSTM`` modules for PyTorch, on fastseq's kernels.

Change one import and nothing else::

    from torch import nn            ->  the same script, with
    nn.LSTM(...)                    ->  fastseq.torch.LSTM(...)

Each class subclasses the PyTorch module of the same name, so the constructor, the parameters
(``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...), their initialisation
(the same numbers under ``torch.manual_seed``), ``state_dict`` / ``load_state_dict`` in both
directions, ``repr``, ``flatten_parameters`` and ``isinstance(m, nn.LSTM)`` are PyTorch's; only
``forward`` changes: the whole stacked layer runs as one call of the kernels
(``fastseq.ops.get_ops('cpp')``, the contract of docs/CELLS.md), wrapped in a
``torch.autograd.Function`` whose backward is full backpropagation through the whole input, as
PyTorch's (*Dive into Deep Learning*, chapter 8, "Backpropagation Through Time").

Supported: every cell (``nonlinearity='tanh'|'relu'``, GRU, LSTM), any ``num_layers``, ``bias``,
``batch_first``, inter-layer ``dropout`` (active in ``train()`` only, masks drawn from torch's
generator), batched and unbatched input, ``hx`` given or not, float32 and float64 on the CPU.
Refused with an error naming the argument: ``bidirectional``, ``proj_size``, ``PackedSequence``,
other dtypes, other devices, double backward, ``torch.jit.script`` / tracing / ONNX export (the
layer is a Python call into C++): use the ``torch.nn`` module for those.

Threads: the kernels use ``torch.get_num_threads()`` cores unless ``fastseq.set_num_threads`` was
called. Importing this module registers the three classes with
``torch.serialization.add_safe_globals``, so a model saved whole with ``torch.save`` loads under
``torch.load(weights_only=True)`` once the user's own classes are listed too.
"""

import weakref

import numpy as np
import torch

import fastseq
from . import _core
from .errors import ArgumentError
from .ops import get_ops
from .reference.ops import layer_suffix

__all__ = ["RNN", "GRU", "LSTM"]

_DTYPES = (torch.float32, torch.float64)
_FULL_BPTT = (None, 0)       # the plan of PyTorch's backward: no scale, no window


# ---------------------------------------------------------------------------- threads
def _sync_threads():
    """The kernels follow torch's thread count unless the user chose fastseq's."""
    if not getattr(fastseq, "_user_set_threads", False):
        n = torch.get_num_threads()
        if _core.get_num_threads() != n:
            _core.set_num_threads(n)


# ---------------------------------------------------------------------------- autograd
def _np(t):
    """A tensor's numbers as a C-contiguous array (no copy when the tensor already is one)."""
    return t.detach().contiguous().numpy()


def _t(a):
    """An ops result as a tensor sharing its memory (copied only if the ops handed out a read-only view)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class _Spec:
    """What the autograd Function needs besides tensors: the cell, ops, masks, the parameters in the
    contract's layout, and how to give their gradients back in torch's."""

    def __init__(self, cls, cell, ops, params, masks, bias, L, H):
        self.cls, self.cell, self.ops, self.params, self.masks = cls, cell, ops, params, masks
        self.bias, self.L, self.H = bias, L, H

    def weight_grads(self, grads):
        """The contract's gradients -> one tensor per torch weight, in torch's order (its layout)."""
        out, H = [], self.H
        for l in range(self.L):
            s = layer_suffix(l)
            out += [_t(grads[f"W_xh{s}"].T), _t(grads[f"W_hh{s}"].T)]     # the weights' own layout
            if self.bias:
                g = grads[f"b_h{s}"]
                # b_h = bias_ih + bias_hh (GRU: except the n block of bias_hh, which is b_hn): the
                # same gradient for both, in two arrays because autograd may accumulate into them
                g_hh = np.concatenate([g[:2 * H], grads[f"b_hn{s}"]]) if self.cell == "gru" else g.copy()
                out += [_t(g), _t(g_hh)]
        return out


class _Layer(torch.autograd.Function):
    """(X (T, B, D), state0 in the contract's shape, *weights in torch's order) -> (Y (T, B, H), state_T).

    Full backpropagation through time, as PyTorch's modules; the weights are inputs only so that
    autograd routes their gradients (their numbers come from ``spec.params``).
    """

    @staticmethod
    def forward(ctx, spec, X, state0, *weights):
        _sync_threads()
        Y, state_T, cache = spec.ops.rnn_forward(spec.cell, _np(X), _np(state0), spec.params, spec.masks)
        ctx.spec, ctx.cache = spec, cache
        ctx.y_like = (Y.shape, Y.dtype)
        ctx.save_for_backward(*weights)      # an in-place change of a weight before backward is an error
        ctx.set_materialize_grads(False)
        # copies: the caller may change its outputs in place (torch allows it), the cache must not see that
        return torch.from_numpy(np.array(Y)), torch.from_numpy(np.array(state_T))

    @staticmethod
    def backward(ctx, dY, dstate_T):
        ctx.saved_tensors                    # raises if a weight changed in place since the forward
        spec = ctx.spec
        if torch.is_grad_enabled():          # create_graph=True: the gradient would have to be differentiable
            raise _unsupported("create_graph", "double backward (create_graph=True through the layer)",
                               spec.cls)
        dY = np.zeros(*ctx.y_like) if dY is None else _np(dY)
        dstate_T = None if dstate_T is None else _np(dstate_T)
        _sync_threads()
        dX, dstate0, grads = spec.ops.rnn_backward(spec.cell, dY, dstate_T, ctx.cache, spec.params, _FULL_BPTT)
        return (None, _t(dX), _t(np.asarray(dstate0)), *spec.weight_grads(grads))


# ---------------------------------------------------------------------------- the modules
_VIEWS = weakref.WeakKeyDictionary()     # module -> (key, NumPy views of its weights): _views
_OPS = {}


def _ops(backend):
    """get_ops(backend), looked up once per backend (a call per token would check the name again)."""
    ops = _OPS.get(backend)
    if ops is None:
        ops = _OPS[backend] = get_ops(backend)
    return ops


def _unsupported(arg, what, cls):
    return ArgumentError(f"{arg}: {what} is not supported by fastseq.torch.{cls}; use torch.nn.{cls}")


class _FastseqRNNBase:
    """The forward shared by RNN, GRU and LSTM (mixed into torch's classes, which keep everything else).

    The weights are stored transposed (storage laid out as the contract's W_xh (D, G*H), W_hh (H, G*H),
    seen by torch as weight_ih (G*H, D), weight_hh (G*H, H)), so the kernels read them without a copy
    at every call; ``state_dict`` still gives contiguous tensors, as torch's modules do.
    """

    def _fastseq_init(self, backend):
        cls = type(self).__name__
        if self.bidirectional:
            raise _unsupported("bidirectional", "bidirectional=True", cls)
        if self.proj_size:
            raise _unsupported("proj_size", f"proj_size={self.proj_size}", cls)
        for w in self._flat_weights:
            if w.device.type != "cpu":
                raise _unsupported("device", f"device {w.device}", cls)
            if w.dtype not in _DTYPES:
                raise _unsupported("dtype", f"dtype {w.dtype} (float32 and float64 are)", cls)
        self._fastseq_backend = backend
        get_ops(backend)                     # an unknown backend is named now, not at the first forward
        with torch.no_grad():
            for name in self._flat_weights_names:
                w = getattr(self, name)
                if w.dim() == 2:
                    setattr(self, name, torch.nn.Parameter(w.T.contiguous().T, requires_grad=w.requires_grad))
        self._init_flat_weights()

    def reset_parameters(self):
        # torch's rule and random stream (each weight filled as a contiguous tensor of its shape), also
        # for the transposed storage: the same numbers as torch.nn's module under the same manual_seed
        stdv = 1.0 / self.hidden_size ** 0.5
        with torch.no_grad():
            for w in self.parameters():
                w.copy_(torch.empty(w.shape, dtype=w.dtype, device=w.device).uniform_(-stdv, stdv))

    def state_dict(self, *args, **kwargs):
        out = super().state_dict(*args, **kwargs)
        for k, v in out.items():
            if not v.is_contiguous() and not isinstance(v, torch.nn.Parameter):
                out[k] = v.contiguous()
        return out

    def __prepare_scriptable__(self):
        raise _unsupported("torch.jit.script", "scripting", type(self).__name__)

    @property
    def _cell(self):
        return self.mode.lower()             # RNN_TANH, RNN_RELU, GRU, LSTM -> the contract's names

    def _weights(self):
        """The weights as the module holds them now (a Parameter assigned since included), torch's order."""
        return [getattr(self, n) for n in self._flat_weights_names]

    def _views(self, weights):
        """NumPy views of the weights' storage, made again only when a weight's memory is another.

        A view reads the weights' numbers live, so in-place changes (optimizer steps, copy_,
        load_state_dict) need nothing; and holding it keeps that memory allocated, so no other tensor
        can come to the same address: the same (address, dtype, shape, strides) is the same memory.
        """
        key = tuple((w.data_ptr(), w.dtype, w.shape, w.stride()) for w in weights)
        hit = _VIEWS.get(self)
        if hit is None or hit[0] != key:
            hit = (key, [w.detach().numpy() for w in weights])
            _VIEWS[self] = hit
        return hit[1]

    def _params(self, weights):
        """The contract's flat dict on views of the weights (a weight laid out otherwise is copied);
        the biases' sums are made at every call (they must follow the weights)."""
        L, H, cell = self.num_layers, self.hidden_size, self._cell
        views = self._views(weights)
        per = 4 if self.bias else 2
        params = {}
        for l in range(L):
            s, w = layer_suffix(l), views[per * l: per * (l + 1)]
            params[f"W_xh{s}"] = np.ascontiguousarray(w[0].T)
            params[f"W_hh{s}"] = W_hh = np.ascontiguousarray(w[1].T)
            if self.bias:
                b_ih, b_hh = w[2], w[3]
                if cell == "gru":
                    b_h = b_ih.copy()
                    np.add(b_ih[:2 * H], b_hh[:2 * H], out=b_h[:2 * H])
                    params[f"b_h{s}"], params[f"b_hn{s}"] = b_h, b_hh[2 * H:]
                else:
                    params[f"b_h{s}"] = b_ih + b_hh
            else:
                params[f"b_h{s}"] = np.zeros(W_hh.shape[1], W_hh.dtype)
                if cell == "gru":
                    params[f"b_hn{s}"] = np.zeros(H, W_hh.dtype)
        return params

    def _check_input(self, input, hx, dtype):
        cls = type(self).__name__
        if isinstance(input, torch.nn.utils.rnn.PackedSequence):
            raise _unsupported("input", "a PackedSequence", cls)
        if not isinstance(input, torch.Tensor):
            raise ArgumentError(f"input: expected a tensor, got {type(input).__name__}")
        if input.device.type != "cpu":
            raise _unsupported("input", f"device {input.device}", cls)
        if dtype not in _DTYPES:
            raise _unsupported("dtype", f"dtype {dtype} (float32 and float64 are)", cls)
        if input.dtype != dtype:
            raise ArgumentError(f"input: dtype {input.dtype} does not match the weights' {dtype}; "
                                f"convert the input (input.to({dtype})) or the model (model.to({input.dtype}))")
        if input.dim() not in (2, 3):
            raise ArgumentError(f"input: expected 2 (unbatched) or 3 dimensions, got {input.dim()}")
        if input.shape[-1] != self.input_size:
            raise ArgumentError(f"input: expected input_size {self.input_size} features, got {input.shape[-1]}")
        T = input.shape[1 if self.batch_first and input.dim() == 3 else 0]
        B = 1 if input.dim() == 2 else input.shape[0 if self.batch_first else 1]
        if T < 1 or B < 1:
            raise ArgumentError(f"input: expected at least one step and one sequence, got shape {tuple(input.shape)}")
        parts = ("hx", "cx") if self.mode == "LSTM" else ("hx",)
        if hx is None:
            return None
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ArgumentError("hx: expected a tuple (h_0, c_0) for an LSTM")
        else:
            if not isinstance(hx, torch.Tensor):
                raise ArgumentError(f"hx: expected a tensor h_0, got {type(hx).__name__}")
            hx = (hx,)
        want = (self.num_layers, B, self.hidden_size) if input.dim() == 3 else (self.num_layers, self.hidden_size)
        for name, h in zip(parts, hx):
            if not isinstance(h, torch.Tensor) or tuple(h.shape) != want or h.dtype != dtype \
                    or h.device.type != "cpu":
                got = f"{h.dtype} {tuple(h.shape)}" if isinstance(h, torch.Tensor) else type(h).__name__
                raise ArgumentError(f"{name}: expected a CPU {dtype} tensor of shape {want}, got {got}")
        return hx

    def forward(self, input, hx=None):
        if torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise _unsupported("input", "torch.export, tracing or ONNX export", type(self).__name__)
        return self._fastseq_forward(input, hx)

    @torch.compiler.disable
    def _fastseq_forward(self, input, hx):
        """The layer as one opaque call: torch.compile runs it eagerly (a graph break) around its graph."""
        weights = self._weights()
        hx = self._check_input(input, hx, weights[0].dtype)
        batched = input.dim() == 3
        X = input if batched else input.unsqueeze(1)
        if self.batch_first and batched:
            X = X.transpose(0, 1)                                # (T, B, D): the kernels' layout
        T, B, _ = X.shape
        L, H, P = self.num_layers, self.hidden_size, 2 if self.mode == "LSTM" else 1
        if hx is None:
            state0 = torch.zeros((P * L, B, H), dtype=X.dtype)
        else:
            parts = [h if batched else h.unsqueeze(1) for h in hx]
            state0 = parts[0] if P == 1 else torch.cat(parts)
        if P * L == 1:
            state0 = state0.reshape(B, H)
        masks = None
        if self.training and self.dropout > 0 and L > 1:
            keep = 1 - self.dropout
            m = torch.empty((L - 1, T, B, H), dtype=X.dtype).bernoulli_(keep)
            masks = (None, (m.div_(keep) if keep > 0 else m).numpy(), None)
        ops, params = _ops(self._fastseq_backend), self._params(weights)
        if torch.is_grad_enabled() and (X.requires_grad or state0.requires_grad
                                        or any(w.requires_grad for w in weights)):
            spec = _Spec(type(self).__name__, self._cell, ops, params, masks, self.bias, L, H)
            Y, state_T = _Layer.apply(spec, X, state0, *weights)
        else:                                # nothing to differentiate: no autograd node, no copies
            _sync_threads()
            Y, state_T, _ = ops.rnn_forward(self._cell, _np(X), _np(state0), params, masks)
            Y, state_T = _t(Y), _t(state_T)
        state_T = state_T.reshape(P, L, B, H)
        if batched:
            out = Y.transpose(0, 1) if self.batch_first else Y
        else:
            out, state_T = Y.squeeze(1), state_T.squeeze(2)
        return (out, (state_T[0], state_T[1])) if P == 2 else (out, state_T[0])


class RNN(_FastseqRNNBase, torch.nn.RNN):
    """torch.nn.RNN (Elman: *Dive into Deep Learning*, chapter 8, "Recurrent Neural Networks") on
    fastseq's kernels. Same arguments; ``backend='numpy'`` runs the NumPy reference instead."""

    def __init__(self, *args, backend="cpp", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastseq_init(backend)


class GRU(_FastseqRNNBase, torch.nn.GRU):
    """torch.nn.GRU on fastseq's kernels. Same arguments; ``backend='numpy'`` runs the NumPy reference."""

    def __init__(self, *args, backend="cpp", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastseq_init(backend)


class LSTM(_FastseqRNNBase, torch.nn.LSTM):
    """torch.nn.LSTM on fastseq's kernels. Same arguments; ``backend='numpy'`` runs the NumPy reference."""

    def __init__(self, *args, backend="cpp", **kwargs):
        super().__init__(*args, **kwargs)
        self._fastseq_init(backend)


torch.serialization.add_safe_globals([RNN, GRU, LSTM])
