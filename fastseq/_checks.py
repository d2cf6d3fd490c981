"""Argument checks shared by every module; each raises ArgumentError naming the argument."""
import math
import numbers

from .errors import ArgumentError

__all__ = ["check_int", "check_real", "check_choice", "check_generator_state"]


def check_int(name, v, lo=None, hi=None):
    """v as an int in [lo, hi] (bounds optional); bools are refused (True is not a size)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) \
            or (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = (f" >= {lo}" if lo is not None else "") + (f" <= {hi}" if hi is not None else "")
        if lo is not None and hi is not None:
            bound = f" in [{lo}, {hi}]"
        raise ArgumentError(f"{name}: expected an integer{bound}, got {v!r}")
    return int(v)


def check_real(name, v, lo=None, hi=None, lo_open=False, hi_open=False, finite=True):
    """v as a float within the bounds (open or closed); NaN is always refused, inf unless finite=False."""
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v) \
        and (not finite or math.isfinite(v))
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi}")
        what = "a finite number" if finite else "a number"
        raise ArgumentError(f"{name}: expected {what}{' ' + ' and '.join(parts) if parts else ''}, got {v!r}")
    return float(v)


def check_choice(name, v, choices):
    """v must be one of choices (compared with ==)."""
    if not any(v == c and type(v) is type(c) for c in choices):
        raise ArgumentError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {v!r}")
    return v


def check_generator_state(name, rng, state):
    """Load ``state`` into the numpy Generator ``rng``; another algorithm or a damaged state is refused."""
    kind = type(rng.bit_generator).__name__
    if not isinstance(state, dict) or state.get("bit_generator") != kind:
        got = state.get("bit_generator") if isinstance(state, dict) else type(state).__name__
        raise ArgumentError(f"{name}: expected a {kind} generator state, got {got!r}")
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ArgumentError(f"{name}: not a valid {kind} state ({e})") from None
