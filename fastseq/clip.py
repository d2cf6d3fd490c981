"""Global-norm gradient clipping on the C++ ops (reference: fastseq.reference.clip)."""
from .ops import get_ops


def clip_grad_norm(grads, theta):
    """Clip in place: g <- min(1, theta/||g||) g over all arrays together.

    ``grads`` is a list of float32/float64 contiguous arrays or a dict of them.
    Returns ||g|| before clipping (float64 accumulation). A norm that is not
    finite leaves the gradients unchanged and is returned, so callers can stop.
    Arrays must not share memory (each would be counted and scaled twice).
    """
    return get_ops("cpp").clip_grad_norm(grads, theta)
