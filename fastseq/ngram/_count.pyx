# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""N-gram counting and scoring kernels behind fastseq.ngram (private).

Contract: ids are int32 in [0, V); room[i] >= 1 is how many tokens remain in
the segment that holds position i (so an n-gram may start at i iff room[i] >= n).
Callers (fastseq.ngram.counting) check both; everything here runs without the GIL.

Counting is hierarchical: the n-gram starting at i is the pair (rank of the
(n-1)-gram starting at i, rank of the word at i+n-1), packed into one uint64
key. Ranks are positions in lexicographic order, so sorting the keys sorts the
n-grams lexicographically, and a key never needs more than log2(T * V) bits,
whatever the order: no 64-bit overflow at order 6, 10 or 20.
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

cdef enum:
    DIGIT = 11
    BUCKETS = 2048


cdef int _radix_sort(uint64_t* keys, int32_t* vals, Py_ssize_t n, int bits) noexcept nogil:
    """LSD radix sort of (key, value) pairs by key, stable; 0 on success, -1 out of memory."""
    cdef int nd = (bits + DIGIT - 1) // DIGIT
    if nd < 1 or n < 2:
        return 0
    cdef uint64_t* kt = <uint64_t*> malloc(n * sizeof(uint64_t))
    cdef int32_t* vt = <int32_t*> malloc(n * sizeof(int32_t))
    cdef Py_ssize_t* hist = <Py_ssize_t*> malloc(nd * BUCKETS * sizeof(Py_ssize_t))
    if kt == NULL or vt == NULL or hist == NULL:
        free(kt); free(vt); free(hist)
        return -1
    memset(hist, 0, nd * BUCKETS * sizeof(Py_ssize_t))
    cdef Py_ssize_t i, s, c
    cdef int d
    cdef uint64_t k
    # One pass for all histograms: the keys are read once instead of once per digit.
    for i in range(n):
        k = keys[i]
        for d in range(nd):
            hist[d * BUCKETS + <int>((k >> (d * DIGIT)) & (BUCKETS - 1))] += 1
    cdef uint64_t* src_k = keys
    cdef int32_t* src_v = vals
    cdef uint64_t* dst_k = kt
    cdef int32_t* dst_v = vt
    cdef uint64_t* tk
    cdef int32_t* tv
    cdef Py_ssize_t* h
    cdef int b, shift
    for d in range(nd):
        h = hist + d * BUCKETS
        shift = d * DIGIT
        # A digit shared by every key leaves the order unchanged: skip the pass.
        if h[<int>((src_k[0] >> shift) & (BUCKETS - 1))] == n:
            continue
        s = 0
        for b in range(BUCKETS):
            c = h[b]
            h[b] = s
            s += c
        for i in range(n):
            k = src_k[i]
            b = <int>((k >> shift) & (BUCKETS - 1))
            dst_k[h[b]] = k
            dst_v[h[b]] = src_v[i]
            h[b] += 1
        tk = src_k; src_k = dst_k; dst_k = tk
        tv = src_v; src_v = dst_v; dst_v = tv
    if src_k != keys:
        memcpy(keys, src_k, n * sizeof(uint64_t))
        memcpy(vals, src_v, n * sizeof(int32_t))
    free(kt); free(vt); free(hist)
    return 0


def count_orders(const int32_t[::1] ids, const int32_t[::1] room, int order, int64_t V):
    """Counts of every n-gram, n = 1..order, in lexicographic order.

    Returns a list of (last int32[K], parent int32[K], counts int64[K]) per
    order: the n-gram k is the (n-1)-gram parent[k] of the previous order
    followed by the word last[k] (parent is 0 for unigrams).
    """
    cdef Py_ssize_t T = ids.shape[0], i, j, m, r
    cdef int n
    c1 = np.zeros(V, dtype=np.int64)
    cdef int64_t[::1] cc1 = c1
    with nogil:
        for i in range(T):
            cc1[ids[i]] += 1
    present = np.flatnonzero(c1).astype(np.int32)
    cdef int32_t[::1] pres = present
    cdef int64_t K1 = present.shape[0]
    rmap_a = np.full(V, -1, dtype=np.int32)
    rmap_a[present] = np.arange(K1, dtype=np.int32)
    cdef int32_t[::1] rmap = rmap_a
    rank_a = np.empty(T, dtype=np.int32)
    cdef int32_t[::1] rank = rank_a
    with nogil:
        for i in range(T):
            rank[i] = rmap[ids[i]]
    out = [(present, np.zeros(K1, dtype=np.int32), c1[present])]
    cdef int64_t Kprev = K1
    cdef uint64_t[::1] keys
    cdef int32_t[::1] pos, newrank, parent, last
    cdef int64_t[::1] counts
    cdef uint64_t key, prev
    cdef int bits, rc
    for n in range(2, order + 1):
        if Kprev == 0:
            out.append((np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)))
            continue
        with nogil:
            m = 0
            for i in range(T):
                if room[i] >= n:
                    m += 1
        keys_a = np.empty(m, dtype=np.uint64)
        pos_a = np.empty(m, dtype=np.int32)
        keys = keys_a
        pos = pos_a
        bits = int(Kprev * K1 - 1).bit_length()
        newrank_a = np.empty(T, dtype=np.int32)
        parent_a = np.empty(m, dtype=np.int32)
        last_a = np.empty(m, dtype=np.int32)
        counts_a = np.empty(m, dtype=np.int64)
        newrank = newrank_a
        parent = parent_a
        last = last_a
        counts = counts_a
        with nogil:
            j = 0
            for i in range(T):
                if room[i] >= n:
                    keys[j] = <uint64_t> rank[i] * <uint64_t> K1 + <uint64_t> rmap[ids[i + n - 1]]
                    pos[j] = <int32_t> i
                    j += 1
            rc = _radix_sort(&keys[0], &pos[0], m, bits) if m > 0 else 0
            r = -1
            prev = 0
            for j in range(m):
                key = keys[j]
                if r < 0 or key != prev:
                    r += 1
                    parent[r] = <int32_t> (key // <uint64_t> K1)
                    last[r] = pres[<Py_ssize_t> (key % <uint64_t> K1)]
                    counts[r] = 0
                    prev = key
                counts[r] += 1
                newrank[pos[j]] = <int32_t> r
        if rc != 0:
            raise MemoryError(f"count_ngrams: out of memory sorting {m} {n}-grams")
        del keys_a, pos_a
        K = r + 1
        out.append((last_a[:K].copy(), parent_a[:K].copy(), counts_a[:K].copy()))
        rank_a = newrank_a
        rank = rank_a
        Kprev = K
    return out


cdef inline int _cmp_rows(const int32_t[:, ::1] a, Py_ssize_t i, const int32_t[:, ::1] b, Py_ssize_t j, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t t
    for t in range(n):
        if a[i, t] < b[j, t]:
            return -1
        if a[i, t] > b[j, t]:
            return 1
    return 0


def merge_sorted(const int32_t[:, ::1] a, const int64_t[::1] ca, const int32_t[:, ::1] b, const int64_t[::1] cb):
    """Union of two lexicographically sorted (K, n) tables, counts summed; zero sums dropped."""
    cdef Py_ssize_t na = a.shape[0], nb = b.shape[0], n = a.shape[1]
    rows_a = np.empty((na + nb, n), dtype=np.int32)
    counts_a = np.empty(na + nb, dtype=np.int64)
    cdef int32_t[:, ::1] rows = rows_a
    cdef int64_t[::1] counts = counts_a
    cdef Py_ssize_t i = 0, j = 0, k = 0, t
    cdef int c
    cdef int64_t s
    with nogil:
        while i < na or j < nb:
            if i >= na:
                c = 1
            elif j >= nb:
                c = -1
            else:
                c = _cmp_rows(a, i, b, j, n)
            if c < 0:
                s = ca[i]
                for t in range(n):
                    rows[k, t] = a[i, t]
                i += 1
            elif c > 0:
                s = cb[j]
                for t in range(n):
                    rows[k, t] = b[j, t]
                j += 1
            else:
                s = ca[i] + cb[j]
                for t in range(n):
                    rows[k, t] = a[i, t]
                i += 1
                j += 1
            if s != 0:
                counts[k] = s
                k += 1
    return rows_a[:k].copy(), counts_a[:k].copy()
