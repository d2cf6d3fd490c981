"""The NumPy reference: simple, vectorised over the batch, obviously right.

Every compiled path in fastseq is tested against the ops here (NumpyOps);
RNN and RNNLM build fastseq's models on them.
"""
from .clip import clip_grad_norm
from .ops import NumpyOps, sample_token
from .rnn import RNN, RNNLM

__all__ = ["NumpyOps", "RNN", "RNNLM", "clip_grad_norm", "sample_token"]
