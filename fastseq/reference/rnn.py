"""The reference RNN layer and language model: fastseq's models on the NumPy ops by default.

``RNN`` and ``RNNLM`` here are ``fastseq.RNN`` and ``fastseq.RNNLM`` with one
difference, the default ``backend='numpy'``, so code written against the
reference (subclasses included) keeps running on it. The maths itself is in
fastseq.reference.ops and fastseq.reference.cells.
"""
import numpy as np

from .. import rnn as _rnn
from .ops import sample_token

__all__ = ["RNN", "RNNLM", "sample_token"]


class RNN(_rnn.RNN):
    """``fastseq.RNN`` on the NumPy reference ops by default (see its documentation)."""

    def __init__(self, input_size, hidden_size, nonlinearity=None, dtype=np.float32, seed=0, backend="numpy", *,
                 cell=None, num_layers=1, dropout=0.0):
        super().__init__(input_size, hidden_size, nonlinearity, dtype, seed, backend,
                         cell=cell, num_layers=num_layers, dropout=dropout)


class RNNLM(_rnn.RNNLM):
    """``fastseq.RNNLM`` on the NumPy reference ops by default (see its documentation)."""

    def __init__(self, vocab_size, num_hiddens, nonlinearity=None, dtype=np.float32, seed=0, backend="numpy", *,
                 cell=None, num_layers=1, dropout=0.0, input_dropout=None):
        super().__init__(vocab_size, num_hiddens, nonlinearity, dtype, seed, backend,
                         cell=cell, num_layers=num_layers, dropout=dropout, input_dropout=input_dropout)
