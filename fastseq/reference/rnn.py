"""The reference RNN layer and language model: fastseq's models on the NumPy ops.

``RNN(...)`` and ``RNNLM(...)`` here take the arguments of ``fastseq.RNN`` and
``fastseq.RNNLM`` and build those same classes with ``backend='numpy'`` by
default, so code written against the reference keeps running on it. The maths
itself is in fastseq.reference.ops.
"""
import numpy as np

from .ops import sample_token

__all__ = ["RNN", "RNNLM", "sample_token"]


def RNN(input_size, hidden_size, nonlinearity="tanh", dtype=np.float32, seed=0, backend="numpy"):
    """``fastseq.RNN`` on the NumPy reference ops (see its documentation)."""
    from ..rnn import RNN as cls   # at call time: fastseq.rnn imports this package's ops

    return cls(input_size, hidden_size, nonlinearity=nonlinearity, dtype=dtype, seed=seed, backend=backend)


def RNNLM(vocab_size, num_hiddens, nonlinearity="tanh", dtype=np.float32, seed=0, backend="numpy"):
    """``fastseq.RNNLM`` on the NumPy reference ops (see its documentation)."""
    from ..rnn import RNNLM as cls

    return cls(vocab_size, num_hiddens, nonlinearity=nonlinearity, dtype=dtype, seed=seed, backend=backend)
