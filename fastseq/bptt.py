"""Backpropagation-through-time strategies (the seed's BPTT section).

Every strategy is one backward pass over a window of T steps; they differ only
in how the backward message from h_t to h_{t-1} is treated. Each one is
described to a backward pass by a *plan*:

    plan(T, B, dtype) -> (scale, window)

* ``scale``: None, or an array (T, B): step t (0-based, the step that reads
  H_{t-1}, with H_{-1} = h0 the entering state) multiplies its backward message
  to H_{t-1} by scale[t, b] for sequence b. Full: None (all ones). Block
  truncation: 0 at t = tau, 2 tau, ... Randomized: the drawn xi.
* ``window``: 0, or tau for sliding truncation: each loss term t (and dH_T,
  counted as part of term T-1) back-propagates through exactly its last tau
  steps, t, t-1, ..., t-tau+1; a message that reaches h0 within that window is
  added to dL/dh0. ``scale`` is None whenever ``window`` > 0.

Both backends (fastseq.reference and the C++ kernels) consume the same plan,
so a Randomized draw made once gives identical gradients on both.
"""
import numbers

import numpy as np

__all__ = ["Full", "Truncated", "Randomized", "as_strategy"]


def _check_tau(tau):
    if isinstance(tau, bool) or not isinstance(tau, numbers.Integral) or tau < 1:
        raise ValueError(f"tau: expected an integer >= 1, got {tau!r}")
    return int(tau)


class Full:
    """Exact gradient over the whole window of T steps."""

    def plan(self, T, B, dtype=np.float64):
        return None, 0

    def __repr__(self):
        return "Full()"


class Truncated:
    """Truncated BPTT.

    mode='block': the hidden state is detached at steps tau, 2 tau, ... (the
    usual practice: the window is cut into blocks of tau steps).
    mode='sliding': the seed's formula: the sum for dh_t/dw_h stops at
    dh_{t-tau}/dw_h, so every loss term back-propagates exactly tau steps.
    """

    def __init__(self, tau, mode="block"):
        self.tau = _check_tau(tau)
        if mode not in ("block", "sliding"):
            raise ValueError(f"mode: expected 'block' or 'sliding', got {mode!r}")
        self.mode = mode

    def plan(self, T, B, dtype=np.float64):
        if self.mode == "sliding":
            return None, self.tau
        scale = np.ones((T, B), dtype=dtype)
        scale[self.tau::self.tau] = 0
        return scale, 0

    def __repr__(self):
        return f"Truncated({self.tau}, mode={self.mode!r})"


class Randomized:
    """The seed's randomized truncation: xi_t = 0 w.p. 1 - pi_t, 1/pi_t w.p. pi_t.

    xi is drawn independently per step and per sequence of the batch from a
    NumPy Generator (``rng``, or ``np.random.default_rng(seed)``), and scales
    the backward message from h_t to h_{t-1}. E[xi_t] = 1, so the gradient is
    unbiased. ``pi`` is a constant in (0, 1] or an array of T per-step values.
    Pass ``xi`` (T, B) to use a given draw instead (both backends then see the
    same one); ``draw(T, B)`` returns a fresh draw.
    """

    def __init__(self, pi=None, rng=None, seed=None, xi=None):
        if xi is not None and pi is not None:
            raise ValueError("pi, xi: pass pi (to draw xi) or a fixed xi, not both")
        if xi is not None:
            xi = np.asarray(xi)
            if xi.ndim != 2 or not np.issubdtype(xi.dtype, np.floating):
                raise ValueError(f"xi: expected a float array of shape (T, B), got {xi.dtype} {xi.shape}")
            if not np.all(np.isfinite(xi)) or np.any(xi < 0):
                raise ValueError("xi: expected finite values >= 0")
            self.pi = None
        else:
            if pi is None:
                raise ValueError("pi: expected a probability in (0, 1] or an array of them (or pass xi)")
            p = np.asarray(pi, dtype=np.float64)
            if p.ndim > 1 or p.size == 0 or not np.all((p > 0) & (p <= 1)):
                raise ValueError(f"pi: expected values in (0, 1], got {pi!r}")
            self.pi = p
        if rng is not None and seed is not None:
            raise ValueError("rng, seed: pass one of them, not both")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng: expected a numpy.random.Generator (or pass seed=), got {type(rng).__name__}")
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.xi = xi

    def draw(self, T, B):
        """A fresh xi (T, B) float64 from this strategy's Generator."""
        if self.pi is None:
            raise ValueError("pi: this Randomized was built from a fixed xi; it has no pi to draw from")
        p = self.pi
        if p.ndim == 1:
            if p.shape[0] != T:
                raise ValueError(f"pi: expected {T} per-step values for a window of T={T}, got {p.shape[0]}")
            p = p[:, None]
        keep = self.rng.random((T, B)) < p
        return np.where(keep, 1.0 / np.broadcast_to(p, (T, B)), 0.0)

    def plan(self, T, B, dtype=np.float64):
        if self.xi is not None:
            if self.xi.shape != (T, B):
                raise ValueError(f"xi: expected shape (T, B) = ({T}, {B}), got {self.xi.shape}")
            return np.ascontiguousarray(self.xi, dtype=dtype), 0
        return np.ascontiguousarray(self.draw(T, B), dtype=dtype), 0

    def __repr__(self):
        return "Randomized(xi=...)" if self.pi is None else f"Randomized(pi={self.pi.tolist()!r})"


def as_strategy(bptt):
    """None -> Full(); a strategy object -> itself; anything else -> ValueError."""
    if bptt is None:
        return Full()
    if hasattr(bptt, "plan"):
        return bptt
    raise ValueError(f"bptt: expected Full(), Truncated(tau, mode) or Randomized(pi, rng), got {bptt!r}")
