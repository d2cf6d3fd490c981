# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""N-gram counting and scoring kernels behind fastseq.ngram (private).

Contract: ids are int32 in [0, V); room[i] >= 1 is how many tokens remain in
the segment that holds position i (so an n-gram may start at i iff room[i] >= n).
Callers (fastseq.ngram.counting) check both; everything here runs without the GIL.

Counting is hierarchical: the n-gram starting at i is the pair (rank of the
(n-1)-gram starting at i, word at i+n-1). Ranks are positions in lexicographic
order, so bucketing by the prefix rank (a counting sort) and sorting each bucket
by the last word sorts the n-grams lexicographically, at any order (nothing is
packed into a fixed number of bits, so order 6, 10 or 20 cannot overflow).
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint64_t

def count_orders(const int32_t[::1] ids, const int32_t[::1] room, int order, int64_t V):
    """Counts of every n-gram, n = 1..order, in lexicographic order.

    Returns a list of (last int32[K], parent int32[K], counts int64[K]) per
    order: the n-gram k is the (n-1)-gram parent[k] of the previous order
    followed by the word last[k] (parent is 0 for unigrams).
    """
    cdef Py_ssize_t T = ids.shape[0], i, j, m, r, b, s, e, p
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
    # by_word: the positions sorted by their word (a counting sort, stable), word1[w] its bucket start
    word1_a = np.zeros(K1 + 1, dtype=np.int64)
    cdef int64_t[::1] word1 = word1_a
    by_word_a = np.empty(T, dtype=np.int32)
    cdef int32_t[::1] by_word = by_word_a
    cdef int64_t[::1] fill
    fill_a = np.empty(max(K1, 1), dtype=np.int64)
    fill = fill_a
    with nogil:
        for i in range(T):
            rank[i] = rmap[ids[i]]
            word1[rank[i] + 1] += 1
        for b in range(K1):
            word1[b + 1] += word1[b]
            fill[b] = word1[b]
        for i in range(T):
            by_word[fill[rank[i]]] = <int32_t> i
            fill[rank[i]] += 1
    out = [(present, np.zeros(K1, dtype=np.int32), c1[present])]
    cdef int64_t Kprev = K1
    cdef uint64_t[::1] buf
    cdef int64_t[::1] start, counts
    cdef int32_t[::1] newrank, parent, last
    cdef uint64_t v, lastr, prevlast = 0, w
    cdef uint64_t low32 = (<uint64_t> 1 << 32) - 1
    cdef Py_ssize_t pb
    for n in range(2, order + 1):
        if Kprev == 0:
            out.append((np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)))
            continue
        # Two-digit LSD sort of the valid starts i by (prefix rank, last word): visiting the
        # positions by last word (by_word shifted by n-1) makes the first digit free, and one
        # stable counting sort by the prefix rank does the second.
        start_a = np.zeros(Kprev + 1, dtype=np.int64)
        start = start_a
        with nogil:
            for i in range(T):
                if room[i] >= n:
                    start[rank[i] + 1] += 1
            for b in range(Kprev):
                start[b + 1] += start[b]
        m = start[Kprev]
        fill_a = start_a[:Kprev].copy()
        fill = fill_a
        buf_a = np.empty(m, dtype=np.uint64)
        buf = buf_a
        newrank_a = np.empty(T, dtype=np.int32)
        parent_a = np.empty(m, dtype=np.int32)
        last_a = np.empty(m, dtype=np.int32)
        counts_a = np.empty(m, dtype=np.int64)
        newrank = newrank_a
        parent = parent_a
        last = last_a
        counts = counts_a
        with nogil:
            for w in range(<uint64_t> K1):
                for j in range(word1[w], word1[w + 1]):
                    i = by_word[j] - (n - 1)             # the n-gram starting at i ends with word w
                    if i >= 0 and room[i] >= n:
                        pb = rank[i]
                        buf[fill[pb]] = (w << 32) | <uint64_t> i
                        fill[pb] += 1
            r = -1
            for b in range(Kprev):
                s = start[b]
                e = start[b + 1]
                for j in range(s, e):
                    v = buf[j]
                    lastr = v >> 32
                    if j == s or lastr != prevlast:
                        r += 1
                        parent[r] = <int32_t> b
                        last[r] = pres[<Py_ssize_t> lastr]
                        counts[r] = 0
                        prevlast = lastr
                    counts[r] += 1
                    newrank[<Py_ssize_t> (v & low32)] = <int32_t> r
        del buf_a, fill_a, start_a
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
