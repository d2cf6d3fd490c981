"""Optimisers that update a dict of named NumPy arrays in place.

``step(params, grads)`` takes two dicts with the same keys (a model's
``params`` and the grads of ``loss_and_grad``) and changes ``params`` in place,
so the arrays a model holds stay the same objects.
"""
import math
import numbers

import numpy as np

__all__ = ["SGD", "Adam"]


def _positive(name, v, upper=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0 \
            or (upper is not None and v >= upper):
        bound = f"in (0, {upper})" if upper is not None else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {v!r}")
    return float(v)


def _check_pair(params, grads):
    if not isinstance(params, dict) or not isinstance(grads, dict) or set(params) != set(grads):
        raise ValueError(f"grads: expected a dict with the keys of params {sorted(params)}, "
                         f"got {sorted(grads) if isinstance(grads, dict) else type(grads).__name__}")
    for k, p in params.items():
        if grads[k].shape != p.shape:
            raise ValueError(f"grads[{k!r}]: expected shape {p.shape}, got {grads[k].shape}")


class SGD:
    """Plain minibatch SGD, the book's: p <- p - lr * g."""

    def __init__(self, lr):
        self.lr = _positive("lr", lr)

    def step(self, params, grads):
        _check_pair(params, grads)
        for k, p in params.items():
            p -= p.dtype.type(self.lr) * grads[k]

    def state_dict(self):
        return {"type": "SGD", "lr": self.lr}

    def load_state_dict(self, state):
        if state.get("type") != "SGD":
            raise ValueError(f"state: expected an SGD state, got type {state.get('type')!r}")
        self.lr = _positive("lr", state["lr"])


class Adam:
    """Adam (Kingma and Ba): m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected m_hat, v_hat.
    Moments are kept in float64 per parameter name.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr = _positive("lr", lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas: expected a pair of numbers in [0, 1), got {betas!r}")
        for b in betas:
            if isinstance(b, bool) or not isinstance(b, numbers.Real) or not 0 <= b < 1:
                raise ValueError(f"betas: expected numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _positive("eps", eps)
        self.t = 0
        self.m, self.v = {}, {}

    def step(self, params, grads):
        _check_pair(params, grads)
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, p in params.items():
            g = grads[k].astype(np.float64)
            m = self.m.setdefault(k, np.zeros(p.shape))
            v = self.v.setdefault(k, np.zeros(p.shape))
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)).astype(p.dtype)

    def state_dict(self):
        return {"type": "Adam", "lr": self.lr, "betas": self.betas, "eps": self.eps, "t": self.t,
                "m": {k: a.copy() for k, a in self.m.items()},
                "v": {k: a.copy() for k, a in self.v.items()}}

    def load_state_dict(self, state):
        if state.get("type") != "Adam":
            raise ValueError(f"state: expected an Adam state, got type {state.get('type')!r}")
        if set(state["m"]) != set(state["v"]):
            raise ValueError("state: the m and v moments name different parameters")
        self.lr = _positive("lr", state["lr"])
        self.betas = tuple(float(b) for b in state["betas"])
        self.eps = _positive("eps", state["eps"])
        self.t = int(state["t"])
        self.m = {k: np.array(a, dtype=np.float64) for k, a in state["m"].items()}
        self.v = {k: np.array(a, dtype=np.float64) for k, a in state["v"].items()}
