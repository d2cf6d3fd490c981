"""The NumPy reference: simple, vectorised over the batch, obviously right.

Every compiled path in fastseq is tested against the functions here.
"""
from .clip import clip_grad_norm

__all__ = ["clip_grad_norm"]
