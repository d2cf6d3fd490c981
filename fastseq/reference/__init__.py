"""The NumPy reference: simple, vectorised over the batch, obviously right.

Every compiled path in fastseq is tested against the ops here (NumpyOps);
RNN and RNNLM are fastseq's models on them by default.
"""
from .clip import clip_grad_norm
from .ops import NumpyOps, sample_token

__all__ = ["NumpyOps", "RNN", "RNNLM", "clip_grad_norm", "sample_token"]


def __getattr__(name):
    # fastseq.rnn imports the ops of this package, so the models are imported on first use
    if name in ("RNN", "RNNLM"):
        from . import rnn
        return getattr(rnn, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
