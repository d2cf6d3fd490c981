# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Counting and encoding kernels behind fastseq.Vocab (private).

Contract: ids are int32 in [0, n). The callers (fastseq.text) check ranges for
their users, and every entry point here checks its contract again (one O(n)
pass over the ids) before the unchecked loops run: a wrong call raises
fastseq.errors.ArgumentError naming the argument, it never reads or writes out
of bounds. Interning Python strings needs the GIL; everything after it runs without.
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint32_t

from fastseq.errors import ArgumentError

cdef int64_t _MAX_CP = 0x110000
MAX_CODEPOINT = _MAX_CP
INT32_MAX = 2**31 - 1


def vector(name, a, dtype, ndim=1):
    """a as a C-contiguous, aligned NumPy array of exactly this dtype and number of dimensions.

    Shared by the Cython modules: a typed memoryview would accept None (and then be read as
    empty) and would report a dtype mismatch without naming the argument. A strided or
    misaligned view is copied; a different dtype is refused (a silent cast could wrap ids).
    """
    if not isinstance(a, np.ndarray):
        raise ArgumentError(f"{name}: expected a NumPy array of dtype {np.dtype(dtype)}, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype) or a.dtype.byteorder not in "=|":
        raise ArgumentError(f"{name}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.ndim != ndim:
        raise ArgumentError(f"{name}: expected a {ndim}-d array, got shape {a.shape}")
    return np.require(a, requirements="CA")


ctypedef fused index_t:
    int32_t
    uint32_t


cdef Py_ssize_t _first_outside(const index_t[::1] ids, int64_t n) noexcept nogil:
    """The first position whose id is not in [0, n), or -1."""
    cdef Py_ssize_t i
    for i in range(ids.shape[0]):
        if <int64_t> ids[i] < 0 or <int64_t> ids[i] >= n:
            return i
    return -1


def intern_tokens(tokens):
    """Provisional ids in order of first appearance: (ids int32[n], unique tokens).

    Works on a tuple copy of the tokens: comparing tokens runs their __eq__ and __hash__,
    which may change the caller's list; the copy holds a reference to every token.
    """
    if not isinstance(tokens, list):
        raise ArgumentError(f"tokens: expected a list, got {type(tokens).__name__}")
    cdef tuple seq = tuple(tokens)
    cdef Py_ssize_t i, n = len(seq)
    cdef dict index = {}
    cdef list uniq = []
    ids = np.empty(n, dtype=np.int32)
    cdef int32_t[::1] out = ids
    for i in range(n):
        tok = seq[i]
        k = index.get(tok)
        if k is None:
            k = len(uniq)
            if k > INT32_MAX:
                raise ArgumentError(f"tokens: more than {INT32_MAX} distinct tokens")
            index[tok] = k
            uniq.append(tok)
        out[i] = k
    return ids, uniq


def count_ids(ids, n):
    """counts[k] = number of i with ids[i] == k, for k in [0, n); ids int32."""
    ids = vector("ids", ids, np.int32)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= INT32_MAX + 1:
        raise ArgumentError(f"n: expected an integer in [0, {INT32_MAX + 1}], got {n!r}")
    cdef const int32_t[::1] v = ids
    cdef int64_t nn = n
    cdef Py_ssize_t i, m = v.shape[0], bad
    with nogil:
        bad = _first_outside(v, nn)
    if bad >= 0:
        raise ArgumentError(f"ids: expected ids in [0, {nn}), found {v[bad]} at position {bad}")
    counts = np.zeros(nn, dtype=np.int64)
    cdef int64_t[::1] c = counts
    with nogil:
        for i in range(m):
            c[v[i]] += 1
    return counts


def count_codepoints(cps):
    """Characters of a UTF-32 buffer (uint32): (codepoints in order of first appearance, counts)."""
    cps = vector("cps", cps, np.uint32)
    cdef const uint32_t[::1] v = cps
    cdef Py_ssize_t i, m = v.shape[0], k = 0, bad
    with nogil:
        bad = _first_outside(v, _MAX_CP)
    if bad >= 0:
        raise ArgumentError(f"cps: expected code points below {MAX_CODEPOINT:#x}, found {v[bad]:#x} at position {bad}")
    counts = np.zeros(MAX_CODEPOINT, dtype=np.int64)
    order = np.empty(MAX_CODEPOINT, dtype=np.uint32)
    cdef int64_t[::1] c = counts
    cdef uint32_t[::1] o = order
    cdef uint32_t cp
    with nogil:
        for i in range(m):
            cp = v[i]
            if c[cp] == 0:
                o[k] = cp
                k += 1
            c[cp] += 1
    first = order[:k].copy()
    return first, counts[first]


cdef _remap(str name, const index_t[::1] keys, table):
    """out[i] = table[keys[i]] after checking every key against the table's size."""
    table = vector("table", table, np.int32)
    cdef const int32_t[::1] t = table
    cdef int64_t n = t.shape[0]
    cdef Py_ssize_t i, m = keys.shape[0], bad
    with nogil:
        bad = _first_outside(keys, n)
    if bad >= 0:
        raise ArgumentError(f"{name}: expected values in [0, {n}) (the table's size), found {keys[bad]} "
                            f"at position {bad}")
    out = np.empty(m, dtype=np.int32)
    cdef int32_t[::1] o = out
    with nogil:
        for i in range(m):
            o[i] = t[keys[i]]
    return out


def remap(ids, table):
    """out[i] = table[ids[i]]: provisional ids (int32) to vocabulary ids (int32)."""
    cdef const int32_t[::1] v = vector("ids", ids, np.int32)
    return _remap("ids", v, table)


def remap_codepoints(cps, table):
    """out[i] = table[cps[i]] for code points (uint32) and a dense table (int32, usually 0x110000 entries)."""
    cdef const uint32_t[::1] v = vector("cps", cps, np.uint32)
    return _remap("cps", v, table)
