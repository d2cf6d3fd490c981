"""Global-norm gradient clipping, the seed's rule: g <- min(1, theta/||g||) g."""
import math
import numbers

import numpy as np


def clip_grad_norm(grads, theta):
    """Clip in place over all arrays together; return the norm before clipping.

    ``grads`` is a list of arrays or a dict of named arrays. The norm is the L2
    norm of all entries together, accumulated in float64. A norm that is not
    finite is returned and nothing is changed, so a diverged step is visible.
    """
    if not isinstance(theta, numbers.Real) or not (theta > 0 and math.isfinite(theta)):
        raise ValueError(f"theta: expected a finite number > 0, got {theta!r}")
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    for i, g in enumerate(arrays):
        for j in range(i):
            if np.shares_memory(g, arrays[j]):
                raise ValueError(f"grads[{i}]: shares memory with grads[{j}] (clipping in place would scale it twice)")
    norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in arrays))
    if math.isfinite(norm) and norm > theta:
        for g in arrays:
            g *= g.dtype.type(float(theta) / norm)
    return norm
