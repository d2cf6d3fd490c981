"""The parity tolerance of every C++-against-reference test, keyed by dtype (float64 1e-10, float32 1e-4,
relative to the largest entry of the expected array)."""
import numpy as np


class _ByDtype(dict):
    """RTOL[np.float32] and RTOL[np.dtype('float32')] alike (a dtype and its scalar type hash apart)."""

    def __getitem__(self, dtype):
        return super().__getitem__(np.dtype(dtype))


RTOL = _ByDtype({np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4})


def assert_close(a, b, dtype, what, exact=None):
    """max |a - b| <= rtol * max |b|: relative to the array's scale (entries near 0 included).

    exact: the same quantity computed in float64 from the same inputs, for a float32 b. A sum whose
    terms cancel (a bias gradient summed over T*B rows) carries rounding relative to its terms, not to
    its result, and that rounding is already in b: then a may also differ from b by up to 4 times b's own
    distance from the exact value (no more than the reference's own float32 noise; a wrong kernel is
    off by the size of the result, far above it)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    err = float(np.max(np.abs(a - b))) if b.size else 0.0
    bound = RTOL[dtype] * scale
    noise = 0.0
    if exact is not None and b.size:
        noise = float(np.max(np.abs(b - np.asarray(exact, dtype=np.float64))))
        bound = max(bound, 4 * noise)
    assert err <= bound, f"{what}: max abs error {err:.3e} vs scale {scale:.3e} (reference's own rounding {noise:.3e})"


def up(a):
    """a in float64 (None stays None): the inputs of the exact reference that assert_close's exact= takes."""
    return None if a is None else np.asarray(a, dtype=np.float64)
