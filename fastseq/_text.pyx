# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Counting and encoding kernels behind fastseq.Vocab (private).

Contract: ids are int32 in [0, n); callers (fastseq.text) check ranges.
Interning Python strings needs the GIL; everything after it runs without.
"""
import numpy as np

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint32_t

MAX_CODEPOINT = 0x110000


def intern_tokens(list tokens):
    """Provisional ids in order of first appearance: (ids int32[n], unique tokens)."""
    cdef Py_ssize_t i, n = len(tokens)
    cdef dict index = {}
    cdef list uniq = []
    ids = np.empty(n, dtype=np.int32)
    cdef int32_t[::1] out = ids
    cdef PyObject* tok
    cdef PyObject* j
    cdef int32_t k
    for i in range(n):
        tok = PyList_GET_ITEM(tokens, i)
        j = PyDict_GetItem(index, <object>tok)  # borrowed; NULL when absent
        if j is NULL:
            k = len(uniq)
            PyDict_SetItem(index, <object>tok, k)
            uniq.append(<object>tok)
        else:
            k = <object>j
        out[i] = k
    return ids, uniq


def count_ids(const int32_t[::1] ids, Py_ssize_t n):
    """counts[k] = number of i with ids[i] == k, for k in [0, n)."""
    counts = np.zeros(n, dtype=np.int64)
    cdef int64_t[::1] c = counts
    cdef Py_ssize_t i, m = ids.shape[0]
    with nogil:
        for i in range(m):
            c[ids[i]] += 1
    return counts


def count_codepoints(const uint32_t[::1] cps):
    """Characters of a UTF-32 buffer: (codepoints in order of first appearance, counts)."""
    cdef Py_ssize_t i, m = cps.shape[0], k = 0
    counts = np.zeros(MAX_CODEPOINT, dtype=np.int64)
    order = np.empty(MAX_CODEPOINT, dtype=np.uint32)
    cdef int64_t[::1] c = counts
    cdef uint32_t[::1] o = order
    cdef uint32_t cp
    with nogil:
        for i in range(m):
            cp = cps[i]
            if c[cp] == 0:
                o[k] = cp
                k += 1
            c[cp] += 1
    first = order[:k].copy()
    return first, counts[first]


def remap(const int32_t[::1] ids, const int32_t[::1] table):
    """out[i] = table[ids[i]]: provisional ids to vocabulary ids."""
    cdef Py_ssize_t i, m = ids.shape[0]
    out = np.empty(m, dtype=np.int32)
    cdef int32_t[::1] o = out
    with nogil:
        for i in range(m):
            o[i] = table[ids[i]]
    return out


def remap_codepoints(const uint32_t[::1] cps, const int32_t[::1] table):
    """out[i] = table[cps[i]] for a dense codepoint table of size 0x110000."""
    cdef Py_ssize_t i, m = cps.shape[0]
    out = np.empty(m, dtype=np.int32)
    cdef int32_t[::1] o = out
    with nogil:
        for i in range(m):
            o[i] = table[cps[i]]
    return out
