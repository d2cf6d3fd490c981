"""Adam's update of one parameter in NumPy (Kingma and Ba, "Adam: A Method for Stochastic Optimization",
2015), with the decoupled weight decay of AdamW (Loshchilov and Hutter, "Decoupled Weight Decay
Regularization", ICLR 2019): the reference of the fused kernel (csrc/optim.h) that fastseq.optim.Adam
runs by default."""
import numpy as np


def adam_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd=0.0):
    """In place, for step t with c1 = 1 - b1^t and c2 = 1 - b2^t (the bias corrections):

        p <- p (1 - lr wd);   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2;
        p <- p - lr (m / c1) / (sqrt(v / c2) + eps)

    the decay first with the step's lr, as torch.optim.AdamW. m, v: float64 arrays of p's shape (the
    moments, in float64 whatever p's dtype). The decayed parameter is computed in float64 and rounded to
    p's dtype, then the step, computed in float64 and rounded to p's dtype, is subtracted: in float32,
    1 - lr wd rounded to float32 would keep little of a small lr wd, and wd = 0 multiplies by exactly 1,
    so it leaves the bits of the update without decay. The kernel rounds every operation where this
    does, in the same order, so the two agree to the bit."""
    g = g.astype(np.float64)
    if wd:      # a product by 1 is exact: skipping it changes no bit
        p[...] = (p.astype(np.float64) * (1 - lr * wd)).astype(p.dtype)
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * g * g
    p -= (lr * (m / c1) / (np.sqrt(v / c2) + eps)).astype(p.dtype)
