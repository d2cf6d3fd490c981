"""Finite differences shared by the gradient tests (float64 only)."""
import numpy as np

EPS = 1e-6


def fd_grad(f, arrays, eps=EPS):
    """Central differences of scalar f() w.r.t. every entry of every array (perturbed in place)."""
    out = {}
    for k, a in arrays.items():
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + eps
            fp = f()
            a[i] = old - eps
            fm = f()
            a[i] = old
            g[i] = (fp - fm) / (2 * eps)
        out[k] = g
    return out
