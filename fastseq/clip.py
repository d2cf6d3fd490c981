"""Global-norm gradient clipping on the C++ backend (reference: fastseq.reference.clip)."""
import numbers

from . import _core


def clip_grad_norm(grads, theta):
    """Clip in place: g <- min(1, theta/||g||) g over all arrays together.

    ``grads`` is a list of float32/float64 contiguous arrays or a dict of them.
    Returns ||g|| before clipping (float64 accumulation). A norm that is not
    finite leaves the gradients unchanged and is returned, so callers can stop.
    Arrays must not share memory (each would be counted and scaled twice).
    """
    if not isinstance(theta, numbers.Real):
        raise ValueError(f"theta: expected a finite number > 0, got {theta!r}")
    arrays = list(grads.values()) if isinstance(grads, dict) else list(grads)
    return _core.clip_grad_norm(arrays, float(theta))
