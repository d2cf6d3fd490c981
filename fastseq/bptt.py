"""Backpropagation-through-time strategies (*Dive into Deep Learning*, chapter 8,
"Backpropagation Through Time"; randomized truncation: Tallec & Ollivier,
"Unbiasing Truncated Backpropagation Through Time", 2017).

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

Every strategy has ``state_dict()``/``load_state_dict()`` (Randomized's holds
its Generator), so a resumed run draws exactly what the uninterrupted one would.
``from_spec("full" | "block:K" | "sliding:K" | "random:P", seed=...)`` builds one from text.
"""
import numpy as np

from ._checks import check_choice, check_generator_state, check_int
from .errors import ArgumentError

__all__ = ["Full", "Truncated", "Randomized", "as_strategy", "from_spec"]


def _check_tau(tau):
    return check_int("tau", tau, lo=1)


def _check_state(state, kind):
    if not isinstance(state, dict) or state.get("type") != kind:
        got = state.get("type") if isinstance(state, dict) else type(state).__name__
        raise ArgumentError(f"state: expected a {kind} state, got {got!r}")


class Full:
    """Exact gradient over the whole window of T steps."""

    def plan(self, T, B, dtype=np.float64):
        return None, 0

    def state_dict(self):
        return {"type": "Full"}

    def load_state_dict(self, state):
        _check_state(state, "Full")

    def __repr__(self):
        return "Full()"


class Truncated:
    """Truncated BPTT.

    mode='block': the hidden state is detached at steps tau, 2 tau, ... (the
    usual practice: the window is cut into blocks of tau steps).
    mode='sliding': the formula of the book's "Backpropagation Through Time"
    section: the sum for dh_t/dw_h stops at dh_{t-tau}/dw_h, so every loss term
    back-propagates exactly tau steps.
    """

    def __init__(self, tau, mode="block"):
        self.tau = _check_tau(tau)
        self.mode = check_choice("mode", mode, ("block", "sliding"))

    def plan(self, T, B, dtype=np.float64):
        if self.mode == "sliding":
            return None, self.tau
        scale = np.ones((T, B), dtype=dtype)
        scale[self.tau::self.tau] = 0
        return scale, 0

    def state_dict(self):
        return {"type": "Truncated", "tau": self.tau, "mode": self.mode}

    def load_state_dict(self, state):
        _check_state(state, "Truncated")
        if (state.get("tau"), state.get("mode")) != (self.tau, self.mode):
            raise ArgumentError(f"state: a Truncated({state.get('tau')!r}, {state.get('mode')!r}) state "
                                f"does not fit {self!r}")

    def __repr__(self):
        return f"Truncated({self.tau}, mode={self.mode!r})"


class Randomized:
    """Randomized truncation (Tallec & Ollivier 2017; the book's "Backpropagation Through
    Time" section): xi_t = 0 w.p. 1 - pi_t, 1/pi_t w.p. pi_t.

    xi is drawn independently per step and per sequence of the batch from a
    NumPy Generator (``rng``, or ``np.random.default_rng(seed)``), and scales
    the backward message from h_t to h_{t-1}. E[xi_t] = 1, so the gradient is
    unbiased. ``pi`` is a constant in (0, 1] or an array of T per-step values.
    Pass ``xi`` (T, B) to use a given draw instead (both backends then see the
    same one); ``draw(T, B)`` returns a fresh draw.
    """

    def __init__(self, pi=None, rng=None, seed=None, xi=None):
        if xi is not None and pi is not None:
            raise ArgumentError("pi, xi: pass pi (to draw xi) or a fixed xi, not both")
        if xi is not None:
            xi = np.asarray(xi)
            if xi.ndim != 2 or not np.issubdtype(xi.dtype, np.floating):
                raise ArgumentError(f"xi: expected a float array of shape (T, B), got {xi.dtype} {xi.shape}")
            if not np.all(np.isfinite(xi)) or np.any(xi < 0):
                raise ArgumentError("xi: expected finite values >= 0")
            self.pi = None
        else:
            if pi is None:
                raise ArgumentError("pi: expected a probability in (0, 1] or an array of them (or pass xi)")
            p = np.asarray(pi, dtype=np.float64)
            if p.ndim > 1 or p.size == 0 or not np.all((p > 0) & (p <= 1)):
                raise ArgumentError(f"pi: expected values in (0, 1], got {pi!r}")
            self.pi = p
        if rng is not None and seed is not None:
            raise ArgumentError("rng, seed: pass one of them, not both")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ArgumentError(f"rng: expected a numpy.random.Generator (or pass seed=), got {type(rng).__name__}")
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.xi = xi

    def draw(self, T, B):
        """A fresh xi (T, B) float64 from this strategy's Generator."""
        if self.pi is None:
            raise ArgumentError("pi: this Randomized was built from a fixed xi; it has no pi to draw from")
        p = self.pi
        if p.ndim == 1:
            if p.shape[0] != T:
                raise ArgumentError(f"pi: expected {T} per-step values for a window of T={T}, got {p.shape[0]}")
            p = p[:, None]
        keep = self.rng.random((T, B)) < p
        return np.where(keep, 1.0 / np.broadcast_to(p, (T, B)), 0.0)

    def plan(self, T, B, dtype=np.float64):
        if self.xi is not None:
            if self.xi.shape != (T, B):
                raise ArgumentError(f"xi: expected shape (T, B) = ({T}, {B}), got {self.xi.shape}")
            return np.ascontiguousarray(self.xi, dtype=dtype), 0
        return np.ascontiguousarray(self.draw(T, B), dtype=dtype), 0

    def state_dict(self):
        """pi and the Generator's state (a fixed xi is part of the object, not of the state)."""
        return {"type": "Randomized", "pi": None if self.pi is None else self.pi.tolist(),
                "bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        _check_state(state, "Randomized")
        pi = state.get("pi")
        if (pi is None) != (self.pi is None) or (pi is not None and not np.array_equal(
                np.asarray(pi, dtype=np.float64), self.pi)):
            raise ArgumentError(f"state['pi']: {pi!r} does not fit {self!r}")
        check_generator_state("state['bit_generator']", self.rng, state.get("bit_generator"))

    def __repr__(self):
        return "Randomized(xi=...)" if self.pi is None else f"Randomized(pi={self.pi.tolist()!r})"


def from_spec(spec, seed=None):
    """A strategy from text: 'full', 'block:K', 'sliding:K' (Truncated(K, mode)) or 'random:P'
    (Randomized(P, seed=seed)). Case and surrounding spaces are ignored."""
    s = str(spec).strip().lower()
    kind, _, val = s.partition(":")
    if kind == "full" and not val:
        return Full()
    if kind in ("block", "sliding") and val:
        try:
            tau = int(val)
        except ValueError:
            raise ArgumentError(f"bptt {spec}: K must be a whole number of steps, got {val!r}") from None
        if tau < 1:
            raise ArgumentError(f"bptt {spec}: K must be a whole number of steps >= 1, got {tau}")
        return Truncated(tau, kind)
    if kind == "random" and val:
        try:
            pi = float(val)
        except ValueError:
            pi = float("nan")
        if not 0 < pi <= 1:
            raise ArgumentError(f"bptt {spec}: P must be a probability in (0, 1], got {val!r}")
        return Randomized(pi, seed=seed)
    raise ArgumentError(f"bptt: expected full, block:K, sliding:K or random:P, got {spec!r}")


def as_strategy(bptt):
    """None -> Full(); a strategy object -> itself; anything else -> ArgumentError."""
    if bptt is None:
        return Full()
    if hasattr(bptt, "plan"):
        return bptt
    raise ArgumentError(f"bptt: expected Full(), Truncated(tau, mode) or Randomized(pi, rng), got {bptt!r}")
