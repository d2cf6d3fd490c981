"""Adam's update of one parameter in NumPy (Kingma and Ba, "Adam: A Method for Stochastic Optimization",
2015): the reference of the fused kernel (csrc/optim.h) that fastseq.optim.Adam runs by default."""
import numpy as np


def adam_update(p, g, m, v, lr, b1, b2, c1, c2, eps):
    """In place, for step t with c1 = 1 - b1^t and c2 = 1 - b2^t (the bias corrections):

        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2;   p <- p - lr (m / c1) / (sqrt(v / c2) + eps)

    m, v: float64 arrays of p's shape (the moments, in float64 whatever p's dtype); the step is
    computed in float64 and rounded to p's dtype before it is subtracted. The kernel rounds every
    operation where this does, in the same order, so the two agree to the bit."""
    g = g.astype(np.float64)
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    p -= (lr * (m / c1) / (np.sqrt(v / c2) + eps)).astype(p.dtype)
