"""Global-norm clipping: the C++ kernel against the NumPy reference."""
import numpy as np
import pytest

from fastseq import clip_grad_norm
from fastseq.reference import clip_grad_norm as clip_ref

RTOL = {np.float64: 1e-12, np.float32: 1e-6}


def grads(dtype, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = [(28, 64), (64, 64), (64,), (64, 28), (28,)]
    return [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("theta, scale", [(1.0, 1.0), (1e3, 1.0), (0.01, 1e-3), (5.0, 1e4)])
def test_cpp_equals_numpy(dtype, theta, scale):
    a, b = grads(dtype, 0, scale), grads(dtype, 0, scale)
    na, nb = clip_grad_norm(a, theta), clip_ref(b, theta)
    assert na == pytest.approx(nb, rel=1e-12)  # both accumulate in float64
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("clip", [clip_grad_norm, clip_ref])
def test_norm_matches_definition_and_never_exceeds_theta(clip):
    g = grads(np.float64, 1)
    expected = np.sqrt(sum(np.sum(x ** 2) for x in g))
    norm = clip(g, 0.5)
    assert norm == pytest.approx(expected, rel=1e-12)
    after = np.sqrt(sum(np.sum(x ** 2) for x in g))
    assert after <= 0.5 * (1 + 1e-12) and after == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("clip", [clip_grad_norm, clip_ref])
def test_below_theta_and_zero_gradients_are_unchanged(clip):
    g = grads(np.float32, 2)
    before = [x.copy() for x in g]
    norm = clip(g, 1e6)
    assert all(np.array_equal(x, y) for x, y in zip(g, before)) and norm > 0
    z = [np.zeros(5), np.zeros((3, 3))]
    assert clip(z, 1.0) == 0.0
    assert all(not np.any(x) for x in z)


@pytest.mark.parametrize("clip", [clip_grad_norm, clip_ref])
def test_dict_and_mixed_dtypes(clip):
    d = {"a": np.full(4, 3.0, np.float32), "b": np.full(4, 4.0)}
    assert clip(d, 1.0) == pytest.approx(10.0)
    assert d["a"].dtype == np.float32
    np.testing.assert_allclose(d["a"], 0.3, rtol=1e-6)
    np.testing.assert_allclose(d["b"], 0.4, rtol=1e-12)


@pytest.mark.parametrize("clip", [clip_grad_norm, clip_ref])
def test_non_finite_norm_is_reported_and_nothing_changes(clip):
    g = [np.array([1.0, np.inf]), np.array([2.0])]
    assert clip(g, 1.0) == np.inf
    assert g[0][0] == 1.0 and g[1][0] == 2.0


@pytest.mark.parametrize("clip", [clip_grad_norm, clip_ref])
@pytest.mark.parametrize("theta", [0.0, -1.0, np.nan, np.inf, "1", None])
def test_bad_theta(clip, theta):
    with pytest.raises(ValueError, match="theta"):
        clip([np.ones(3)], theta)


def test_bad_arrays_name_the_argument():
    with pytest.raises(ValueError, match=r"grads\[1\]: expected a NumPy array"):
        clip_grad_norm([np.ones(3), [1.0, 2.0]], 1.0)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected dtype float32 or float64"):
        clip_grad_norm([np.ones(3, dtype=np.int64)], 1.0)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected a contiguous array"):
        clip_grad_norm([np.ones((4, 4))[:, ::2]], 1.0)
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[0\]: expected a writeable array"):
        clip_grad_norm([ro], 1.0)


@pytest.mark.parametrize("clip_grad_norm", [clip_grad_norm, clip_ref])
def test_arrays_sharing_memory_are_refused_not_scaled_twice(clip_grad_norm):
    g = np.full(4, 1.0)
    with pytest.raises(ValueError, match=r"grads\[1\]: shares memory with grads\[0\]"):
        clip_grad_norm([g, g], 1.0)
    a = np.ones(8)
    with pytest.raises(ValueError, match=r"grads\[2\]: shares memory with grads\[0\]"):
        clip_grad_norm([a[:6], np.ones(3), a[2:]], 1.0)
    with pytest.raises(ValueError, match=r"grads\[1\]: shares memory"):
        clip_grad_norm({"W": a, "W_tied": a.reshape(2, 4)}, 1.0)
    np.testing.assert_array_equal(g, 1.0)   # refused before anything was scaled
    np.testing.assert_array_equal(a, 1.0)
    # adjacent, not overlapping: both clipped once
    b = np.full(8, 2.0)
    assert clip_grad_norm([b[:4], b[4:]], 1.0) == pytest.approx(np.sqrt(32.0))
    np.testing.assert_allclose(b, 2.0 / np.sqrt(32.0), rtol=1e-12)
    assert clip_grad_norm([np.zeros(0), np.zeros(0)], 1.0) == 0.0


def test_bad_theta_type_and_unaligned_arrays_name_the_argument():
    with pytest.raises(ValueError, match="theta"):
        clip_grad_norm([np.ones(3)], "a")
    with pytest.raises(ValueError, match="theta"):
        clip_grad_norm([np.ones(3)], None)
    buf = np.zeros(3 * 8 + 1, dtype=np.uint8)[1:]
    g = buf.view(np.float64)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected an aligned array"):
        clip_grad_norm([g], 1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_dtype_with_metadata_is_its_type(dtype):
    """np.dtype(float32, metadata=...) is float32 (==, the same memory) but another descriptor object:
    clipped as the plain type (it was refused with 'expected dtype float32 or float64, got float32')."""
    rng = np.random.default_rng(2)
    plain = [rng.normal(size=(4, 5)).astype(dtype) * 3, rng.normal(size=7).astype(dtype)]
    meta = [a.astype(np.dtype(dtype, metadata={"unit": "m"})) for a in plain]
    assert meta[0].dtype.metadata
    ref = [a.copy() for a in plain]
    n_ref = clip_ref(ref, 1.0)
    n_plain = clip_grad_norm(plain, 1.0)                 # the kernel on the plain type (checked above)
    assert clip_grad_norm(meta, 1.0) == n_plain == pytest.approx(n_ref, rel=1e-12)
    for a, b, r in zip(meta, plain, ref):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, rtol=RTOL[dtype], atol=0)
