"""Backends as objects: a model holds an ops object that does its maths.

    get_ops("cpp")    the C++ kernels (fastseq._core, csrc/rnn.h): the default
    get_ops("numpy")  the NumPy reference (fastseq.reference.ops.NumpyOps)

``CppOps`` subclasses the reference ops and replaces only the hot calls (layer
forward and backward, LM forward, LM loss-and-grad, generation, clipping), each
by one kernel call; everything else is the reference's. Both expose the same
calls with the same signatures and give the same results up to rounding
(tests/test_ops.py). As in the reference, the ops compute and the model checks:
the kernels check again at the binding boundary, so a direct call with a bad
array raises ValueError instead of reading out of bounds.

Threads: ``fastseq.set_num_threads(n)`` sets how many cores a kernel may use.
A training step or layer pass large enough to repay it (about H >= 48 at the
book's B*T = 1120) splits its batch into n slices run side by side (the rows
are independent through the recurrence); generation at H >= 256 splits W_hh's
columns. The kernels release the GIL, so models can also run in several
Python threads. Results agree to rounding whatever the thread count.
"""
import numpy as np

from . import _core
from ._checks import check_choice
from .reference.clip import check_clip_args
from .reference.ops import NumpyOps

__all__ = ["NumpyOps", "CppOps", "get_ops", "OPS_NAMES"]


def _c(a):
    """a as a C-contiguous, aligned array (no copy when it already is); the kernels need both."""
    return None if a is None else np.require(a, requirements="CA")


def _plan(plan):
    scale, window = plan
    return _c(scale), int(window)


class CppOps(NumpyOps):
    """The C++ ops: the hot calls run by compiled kernels (GIL released), any cell and depth.

    The calls are the cells contract's (docs/CELLS.md): ``cell`` names a registered cell
    ('rnn_tanh', 'rnn_relu', 'gru', 'lstm'), ``params`` is the model's flat dict, ``masks`` None or
    (m_in, m_layers, m_out). Each call is one kernel call. The cache of ``rnn_forward`` is opaque
    (the kernels' own arrays) and checked again by ``rnn_backward``.
    """

    name = "cpp"

    def rnn_forward(self, cell, X, state0, params, masks):
        return _core.cell_forward(cell, _c(X), _c(state0), params, _masks(masks))

    def rnn_backward(self, cell, dY, dstate_T, cache, params, plan):
        scale, window = _plan(plan)
        return _core.cell_backward(cell, _c(dY), _c(dstate_T), cache, params, scale, window)

    def lm_forward(self, cell, ids, state0, params):
        return _core.cell_lm_forward(cell, _ids(ids), _c(state0), params)

    def lm_loss_and_grad(self, cell, ids, Y, state0, params, plan, masks):
        scale, window = _plan(plan)
        return _core.cell_lm_loss_and_grad(cell, _ids(ids), _ids(Y), _c(state0), params, scale, window,
                                           _masks(masks))

    def lm_generate(self, cell, prefix, num_preds, params, temperature, top_k, uniforms):
        top_k = min(top_k, params["b_q"].shape[0])     # top_k >= V keeps all, as the reference does
        return _core.cell_lm_generate(cell, _ids(prefix), num_preds, params, float(temperature), top_k,
                                      _c(uniforms))

    def clip_grad_norm(self, grads, theta):
        arrays, theta = check_clip_args(grads, theta)
        return _core.clip_grad_norm(arrays, theta)


def _masks(masks):
    return None if masks is None else tuple(_c(m) for m in masks)


def _ids(ids):
    return np.require(ids, dtype=np.int64, requirements="CA")


_OPS = {ops.name: ops for ops in (CppOps(), NumpyOps())}
OPS_NAMES = tuple(_OPS)


def get_ops(backend=None):
    """The ops named ``backend`` ('cpp', the default for None, or 'numpy'); an ops object is returned as is."""
    if isinstance(backend, NumpyOps):
        return backend
    return _OPS[check_choice("backend", "cpp" if backend is None else backend, OPS_NAMES)]
