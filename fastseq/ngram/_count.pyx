# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""N-gram counting kernels behind fastseq.ngram (private).

Contract: ids are int32 in [0, V); room[i] >= 1 is how many tokens remain in
the segment that holds position i (so an n-gram may start at i iff room[i] >= n),
and i + room[i] <= T. Callers (fastseq.ngram.counting) give clear errors for bad
user input; the entry points here check the contract again (one O(T) pass) and
raise fastseq.errors.ArgumentError naming the argument, so no caller can make the unchecked loops read out of bounds.
Everything runs without the GIL.

Counting is hierarchical: the n-gram starting at i is the (n-1)-gram starting
at i followed by the word at i+n-1; sorting the positions of each (n-1)-gram by
that word sorts the n-grams lexicographically, at any order (nothing is packed
into a fixed number of bits, so order 6, 10 or 20 cannot overflow).
"""
import numpy as np

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcpy, memset
from libcpp.algorithm cimport sort

from fastseq._checks import check_int
from fastseq._text import vector
from fastseq.errors import ArgumentError

cdef void _sort_group(uint64_t* v, uint64_t* tmp, int64_t* hist, Py_ssize_t n, int64_t K) noexcept nogil:
    """Sort n items (rank << 32 | position) by rank: a counting sort when n is large next to K."""
    cdef Py_ssize_t i, b
    cdef int64_t c, s
    if n < 2:
        return
    if n < 64 or n * 8 < K:
        sort(v, v + n)
        return
    memset(hist, 0, K * sizeof(int64_t))
    for i in range(n):
        hist[<Py_ssize_t> (v[i] >> 32)] += 1
    s = 0
    for b in range(K):
        c = hist[b]
        hist[b] = s
        s += c
    for i in range(n):
        b = <Py_ssize_t> (v[i] >> 32)
        tmp[hist[b]] = v[i]
        hist[b] += 1
    memcpy(v, tmp, n * sizeof(uint64_t))


def count_orders(ids_a, room_a, order_a, V_a):
    """Counts of every n-gram, n = 1..order, in lexicographic order.

    Returns a list of (last int32[K], parent int32[K], counts int64[K]) per
    order: the n-gram k is the (n-1)-gram parent[k] of the previous order
    followed by the word last[k] (parent is 0 for unigrams).

    The positions of each order are kept grouped by their n-gram (groups in
    lexicographic order). An (n+1)-gram is an n-gram followed by one word, so
    sorting each group by its next word gives the groups of order n+1 in
    lexicographic order: no global sort, and memory is read group by group.
    """
    cdef const int32_t[::1] ids = vector("ids", ids_a, np.int32)
    cdef const int32_t[::1] room = vector("room", room_a, np.int32)
    cdef int order = check_int("order", order_a, 1, 2**16)
    cdef int64_t V = check_int("V", V_a, 1, 2**31 - 1)
    cdef Py_ssize_t T = ids.shape[0], i, j, m, r, g, k, sz
    cdef int n
    cdef Py_ssize_t bad = -1
    if room.shape[0] != T:
        raise ArgumentError(f"room: expected {T} entries (one per token), got {room.shape[0]}")
    if T > 2**31 - 1:
        raise ArgumentError(f"ids: expected fewer than 2**31 tokens, got {T}")
    with nogil:
        for i in range(T):
            if ids[i] < 0 or ids[i] >= V or room[i] < 1 or room[i] > T - i:
                bad = i
                break
    if bad >= 0:
        raise ArgumentError(f"ids: position {bad} breaks the contract (id {ids[bad]} must lie in "
                         f"[0, {V}), room {room[bad]} in [1, {T - bad}])")
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
    # Order 1: positions grouped by word (a counting sort), group g = word rank g.
    G_a = np.zeros(K1 + 1, dtype=np.int64)
    P_a = np.empty(T, dtype=np.int32)
    fill_a = np.empty(max(K1, 1), dtype=np.int64)
    cdef int64_t[::1] G = G_a, fill = fill_a
    cdef int32_t[::1] P = P_a
    with nogil:
        for i in range(T):
            G[rmap[ids[i]] + 1] += 1
        for g in range(K1):
            G[g + 1] += G[g]
            fill[g] = G[g]
        for i in range(T):
            g = rmap[ids[i]]
            P[fill[g]] = <int32_t> i
            fill[g] += 1
    del fill_a
    out = [(present, np.zeros(K1, dtype=np.int32), c1[present])]
    cdef int64_t Kprev = K1
    cdef int64_t[::1] Gn, counts
    cdef int32_t[::1] Pn, parent, last
    cdef uint64_t[::1] items, tmp
    cdef int64_t[::1] hist
    cdef uint64_t v, lastr, prevlast = 0
    cdef uint64_t low32 = (<uint64_t> 1 << 32) - 1
    hist_a = np.empty(max(K1, 1), dtype=np.int64)
    hist = hist_a
    for n in range(2, order + 1):
        m = P.shape[0]
        if Kprev == 0 or m == 0:
            out.append((np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64)))
            Kprev = 0
            continue
        items_a = np.empty(m, dtype=np.uint64)
        tmp_a = np.empty(m, dtype=np.uint64)
        Pn_a = np.empty(m, dtype=np.int32)
        Gn_a = np.empty(m + 1, dtype=np.int64)
        parent_a = np.empty(m, dtype=np.int32)
        last_a = np.empty(m, dtype=np.int32)
        counts_a = np.empty(m, dtype=np.int64)
        items = items_a
        tmp = tmp_a
        Pn = Pn_a
        Gn = Gn_a
        parent = parent_a
        last = last_a
        counts = counts_a
        with nogil:
            r = -1
            k = 0
            Gn[0] = 0
            for g in range(Kprev):
                # the positions of (n-1)-gram g that start an n-gram, keyed by the next word
                sz = 0
                for j in range(G[g], G[g + 1]):
                    i = P[j]
                    if room[i] >= n:
                        items[sz] = (<uint64_t> rmap[ids[i + n - 1]] << 32) | <uint64_t> i
                        sz += 1
                _sort_group(&items[0], &tmp[0], &hist[0], sz, K1)
                for j in range(sz):
                    v = items[j]
                    lastr = v >> 32
                    if j == 0 or lastr != prevlast:
                        if r >= 0:
                            Gn[r + 1] = k
                        r += 1
                        parent[r] = <int32_t> g
                        last[r] = pres[<Py_ssize_t> lastr]
                        counts[r] = 0
                        prevlast = lastr
                    counts[r] += 1
                    Pn[k] = <int32_t> (v & low32)
                    k += 1
            if r >= 0:
                Gn[r + 1] = k
        del items_a, tmp_a
        K = r + 1
        out.append((last_a[:K].copy(), parent_a[:K].copy(), counts_a[:K].copy()))
        P_a = Pn_a[:k]
        G_a = Gn_a[:K + 1]
        P = P_a
        G = G_a
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


def merge_sorted(a_a, ca_a, b_a, cb_a):
    """Union of two lexicographically sorted (K, n) tables, counts summed; zero sums dropped."""
    cdef const int32_t[:, ::1] a = vector("a", a_a, np.int32, 2)
    cdef const int64_t[::1] ca = vector("ca", ca_a, np.int64)
    cdef const int32_t[:, ::1] b = vector("b", b_a, np.int32, 2)
    cdef const int64_t[::1] cb = vector("cb", cb_a, np.int64)
    cdef Py_ssize_t na = a.shape[0], nb = b.shape[0], n = a.shape[1]
    if b.shape[1] != n or ca.shape[0] != na or cb.shape[0] != nb:
        raise ArgumentError(f"b: expected tables (Ka, n), (Kb, n) with Ka and Kb counts, got "
                         f"{(a.shape[0], a.shape[1])} with {ca.shape[0]} and {(b.shape[0], b.shape[1])} with {cb.shape[0]}")
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


def _table(name, k, a, dtype):
    """One order's table as a 1-d C-contiguous array of dtype; a value that does not convert
    (a string, an integer beyond the dtype) is refused rather than wrapped."""
    try:
        arr = np.asarray(a)
        if arr.dtype.kind not in "biuf" or (np.dtype(dtype).kind in "iu" and arr.dtype.kind == "f"):
            raise TypeError(arr.dtype)
        out = np.require(arr, dtype=dtype, requirements="CA")   # aligned too: read through typed pointers
        if arr.dtype.kind in "iu" and arr.size and np.dtype(dtype).kind in "iu" \
                and (arr.min() < np.iinfo(dtype).min or arr.max() > np.iinfo(dtype).max):
            raise OverflowError
    except (TypeError, ValueError, OverflowError):
        raise ArgumentError(f"{name}[{k}]: expected an array of {np.dtype(dtype)} values") from None
    if out.ndim != 1:
        raise ArgumentError(f"{name}[{k}]: expected a 1-d array, got shape {out.shape}")
    return out


def backoff_logp(stream_a, q_a, starts, lasts, logps, logbs):
    """log10 P(stream[i] | its sentence before i) of a back-off model, for every i.

    Order k = 1..N tables (lists indexed k - 1): lasts[k-1] int32[K_k] last words,
    logps[k-1] / logbs[k-1] float64[K_k]; starts[k-1] int64[K_{k-1} + 1]: the children of
    row c of table k-1 are rows starts[k-1][c] .. starts[k-1][c+1] - 1 of table k, sorted
    by last word (starts[0] unused; table 1 is dense: row = word id). q[i]: position of i
    in its sentence. The same back-off as NGramLM._logp_stream, one position at a time:
    a binary search among a context's children instead of over a whole table.
    Every list is converted and checked (lengths, and starts non-decreasing within
    [0, K_k]) before the search runs, so no table can send it out of bounds.
    """
    cdef const int64_t[::1] stream = vector("stream", stream_a, np.int64)
    cdef const int64_t[::1] q = vector("q", q_a, np.int64)
    cdef Py_ssize_t T = stream.shape[0], i, lo, hi, mid, j
    for name, lst in (("starts", starts), ("lasts", lasts), ("logps", logps), ("logbs", logbs)):
        if not isinstance(lst, list):
            raise ArgumentError(f"{name}: expected a list of arrays, one per order, got {type(lst).__name__}")
    cdef int N = len(lasts), k
    if not 1 <= N <= 64 or len(starts) != N or len(logps) != N or len(logbs) != N:
        raise ArgumentError(f"lasts: expected 1..64 tables of each kind, got {len(starts)} starts, {N} lasts, "
                            f"{len(logps)} logps, {len(logbs)} logbs")
    if q.shape[0] != T:
        raise ArgumentError(f"q: expected {T} positions, got {q.shape[0]}")
    keep = []
    for k in range(N):
        a64 = _table("starts", k, starts[k], np.int64)
        a32 = _table("lasts", k, lasts[k], np.int32)
        ap = _table("logps", k, logps[k], np.float64)
        ab = _table("logbs", k, logbs[k], np.float64)
        if len(ap) != len(a32) or len(ab) != len(a32) or (k > 0 and len(a64) != len(keep[len(keep) - 3]) + 1):
            raise ArgumentError(f"lasts[{k}]: the order-{k + 1} tables have inconsistent lengths")
        if k > 0 and len(a64) and (a64[0] < 0 or a64[len(a64) - 1] > len(a32) or np.any(np.diff(a64) < 0)):
            raise ArgumentError(f"starts[{k}]: expected non-decreasing row numbers in [0, {len(a32)}]")
        keep += [a64, a32, ap, ab]
    if T and (np.min(stream_a) < 0 or np.max(stream_a) >= len(keep[2])):
        raise ArgumentError(f"stream: ids must lie in [0, {len(keep[2])})")
    out_a = np.empty(T, dtype=np.float64)
    cdef double[::1] out = out_a
    cdef const int64_t* st[64]
    cdef const int32_t* la[64]
    cdef const double* lp[64]
    cdef const double* lb[64]
    cdef const int64_t[::1] mv64
    cdef const int32_t[::1] mv32
    cdef const double[::1] mvd
    for k in range(N):
        a64 = keep[4 * k]
        a32 = keep[4 * k + 1]
        ap = keep[4 * k + 2]
        ab = keep[4 * k + 3]
        mv64 = a64
        st[k] = &mv64[0] if a64.shape[0] else NULL
        mv32 = a32
        la[k] = &mv32[0] if a32.shape[0] else NULL
        mvd = ap
        lp[k] = &mvd[0] if ap.shape[0] else NULL
        mvd = ab
        lb[k] = &mvd[0] if ab.shape[0] else NULL
    cdef int64_t prev[65]
    cdef int64_t cur[65]
    cdef int64_t w, ctx
    cdef double r
    with nogil:
        for k in range(N + 1):
            prev[k] = -1
        for i in range(T):
            w = stream[i]
            r = lp[0][w]
            cur[1] = w
            for k in range(2, N + 1):
                ctx = prev[k - 1] if q[i] >= k - 1 else -1
                if ctx < 0:
                    cur[k] = -1
                    continue
                j = -1
                lo = st[k - 1][ctx]
                hi = st[k - 1][ctx + 1]
                while lo < hi:                          # w among the children of ctx
                    mid = (lo + hi) >> 1
                    if la[k - 1][mid] < w:
                        lo = mid + 1
                    else:
                        hi = mid
                if lo < st[k - 1][ctx + 1] and la[k - 1][lo] == w:
                    j = lo
                if j >= 0:
                    r = lp[k - 1][j]                    # P(c w) is stored
                else:
                    r += lb[k - 2][ctx]                 # b(c) P(w | c')
                cur[k] = j
            for k in range(1, N + 1):
                prev[k] = cur[k]
            out[i] = r
    return out_a
