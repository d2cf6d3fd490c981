"""The parity tolerance of every C++-against-reference test, keyed by dtype (float64 1e-10, float32 1e-4,
relative to the largest entry of the expected array)."""
import numpy as np


class _ByDtype(dict):
    """RTOL[np.float32] and RTOL[np.dtype('float32')] alike (a dtype and its scalar type hash apart)."""

    def __getitem__(self, dtype):
        return super().__getitem__(np.dtype(dtype))


RTOL = _ByDtype({np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4})


def assert_close(a, b, dtype, what):
    """max |a - b| <= rtol * max |b|: relative to the array's scale (entries near 0 included)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    err = float(np.max(np.abs(a - b))) if b.size else 0.0
    assert err <= RTOL[dtype] * scale, f"{what}: max abs error {err:.3e} vs scale {scale:.3e}"
