"""The NumPy reference: simple, vectorised over the batch, obviously right.

Every compiled path in fastseq is tested against the functions here.
"""
from .clip import clip_grad_norm
from .rnn import RNN, RNNLM, sample_token

__all__ = ["RNN", "RNNLM", "clip_grad_norm", "sample_token"]
