"""Global-norm gradient clipping, *Dive into Deep Learning* chapter 8, "Recurrent Neural Network
Implementation from Scratch": g <- min(1, theta/||g||) g."""
import math

import numpy as np

from .._checks import check_real
from ..errors import ArgumentError


def check_clip_args(grads, theta):
    """The arguments of clip_grad_norm checked (both ops) -> (list of arrays, theta as float)."""
    theta = check_real("theta", theta, lo=0, lo_open=True)
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    for i, g in enumerate(arrays):
        if not isinstance(g, np.ndarray):
            raise ArgumentError(f"grads[{i}]: expected a NumPy array, got {type(g).__name__}")
        if g.dtype not in (np.float32, np.float64):
            raise ArgumentError(f"grads[{i}]: expected dtype float32 or float64, got {g.dtype}")
        for j in range(i):
            if np.shares_memory(g, arrays[j]):
                raise ArgumentError(f"grads[{i}]: shares memory with grads[{j}] "
                                    "(clipping in place would scale it twice)")
    return arrays, theta


def clip_grad_norm(grads, theta):
    """Clip in place over all arrays together; return the norm before clipping.

    ``grads`` is a list of arrays or a dict of named arrays. The norm is the L2
    norm of all entries together, accumulated in float64. A norm that is not
    finite is returned and nothing is changed, so a diverged step is visible.
    """
    arrays, theta = check_clip_args(grads, theta)
    norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in arrays))
    if math.isfinite(norm) and norm > theta:
        for g in arrays:
            g *= g.dtype.type(theta / norm)
    return norm
