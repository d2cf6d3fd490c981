# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""ARPA text and back-off queries in compiled code (private; the interface is fastseq.ngram.arpa,
fastseq.ngram.binary and fastseq.ngram.query).

Numbers: written as the shortest text that reads back as the same double (std::to_chars), read
with exactly KenLM's syntax (its double-conversion settings): [+-] then 'inf', 'NaN', or ASCII
digits with an optional '.' and an optional exponent [eE][+-]digits; nothing else (no
underscores, no non-ASCII digits, no hex). Words are separated as KenLM separates them: space,
tab, carriage return (a vertical tab or form feed is part of a word).

Every entry point checks its inputs (lengths, ranges, monotone offsets) before the unchecked
loops run, so no caller can make them read out of bounds; the loops run without the GIL.
"""
import os
import threading

import numpy as np

from fastseq._checks import check_int

from libc.stdint cimport int32_t, int64_t, uint64_t, uint32_t, uint8_t, uintptr_t
from libc.string cimport memcmp, memchr, memcpy
from libcpp.string cimport string
from libcpp.vector cimport vector
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize

cdef extern from *:
    """
    #include <charconv>
    #include <system_error>
    #include <string>
    #include <cstdlib>
    #include <cmath>
    #include <cstring>
    #include <cstdint>

    static inline char* fs_fmt(char* p, double x) { return std::to_chars(p, p + 40, x).ptr; }

    /* KenLM's number syntax (double-conversion with its flags): 0 and *out set, or 1. */
    static int fs_parse(const char* b, const char* e, double* out) {
        const char* p = b; bool neg = false;
        if (p < e && (*p == '+' || *p == '-')) { neg = (*p == '-'); ++p; }
        if (e - p == 3 && p[0] == 'i' && p[1] == 'n' && p[2] == 'f') { *out = neg ? -HUGE_VAL : HUGE_VAL; return 0; }
        /* 'NaN' is KenLM's spelling; 'nan' too here, so the message says why it is refused */
        if (e - p == 3 && (p[0] == 'N' || p[0] == 'n') && p[1] == 'a' && p[2] == p[0]) { *out = NAN; return 0; }
        const char* s = p; long digits = 0;
        while (p < e && *p >= '0' && *p <= '9') { ++p; ++digits; }
        if (p < e && *p == '.') { ++p; while (p < e && *p >= '0' && *p <= '9') { ++p; ++digits; } }
        if (digits == 0) return 1;
        if (p < e && (*p == 'e' || *p == 'E')) {
            ++p;
            if (p < e && (*p == '+' || *p == '-')) ++p;
            const char* d = p;
            while (p < e && *p >= '0' && *p <= '9') ++p;
            if (p == d) return 1;
        }
        if (p != e) return 1;
        double v = 0;
        auto r = std::from_chars(s, e, v);
        if (r.ec == std::errc::result_out_of_range) {      /* overflow to inf, underflow to 0, as KenLM */
            std::string t(s, e);
            v = std::strtod(t.c_str(), nullptr);
        } else if (r.ec != std::errc() || r.ptr != e) {
            return 1;
        }
        *out = neg ? -v : v;
        return 0;
    }

    /* Offset of the first byte that is not valid UTF-8 (as Python's decoder sees it), or -1. */
    static int64_t fs_utf8_invalid(const unsigned char* s, int64_t n) {
        int64_t i = 0;
        while (i < n) {
            if (i + 8 <= n) {
                uint64_t w; std::memcpy(&w, s + i, 8);
                if (!(w & 0x8080808080808080ULL)) { i += 8; continue; }
            }
            unsigned char c = s[i];
            if (c < 0x80) { ++i; continue; }
            int len; uint32_t cp;
            if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
            else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
            else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
            else return i;
            if (i + len > n) return i;
            for (int k = 1; k < len; ++k) {
                unsigned char d = s[i + k];
                if ((d & 0xC0) != 0x80) return i;
                cp = (cp << 6) | (d & 0x3F);
            }
            if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
                (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return i;
            i += len;
        }
        return -1;
    }

    static inline uint64_t fs_load8(const char* p) { uint64_t w; std::memcpy(&w, p, 8); return w; }
    static inline uint64_t fs_load4(const char* p) { uint32_t w; std::memcpy(&w, p, 4); return w; }

    /* A word's hash (in-process only: never stored): 8 bytes a step, a multiply-xorshift each; the
       tail is read with fixed-size loads inside p[0:n] (the last 8 bytes again, or two 4-byte or
       three 1-byte reads for a short word), not a copy of variable length. */
    static inline uint64_t fs_hash_bytes(const char* p, int64_t n) {
        uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n, w;
        int64_t i = 0;
        if (n >= 8) {
            for (; i + 8 <= n; i += 8) {
                h = (h ^ fs_load8(p + i)) * 0xFF51AFD7ED558CCDULL; h ^= h >> 32;
            }
            w = i < n ? fs_load8(p + n - 8) : 0;
        } else if (n >= 4) {
            w = fs_load4(p) | (fs_load4(p + n - 4) << 32);
        } else if (n > 0) {
            w = (uint64_t)(unsigned char)p[0] | ((uint64_t)(unsigned char)p[n / 2] << 8) |
                ((uint64_t)(unsigned char)p[n - 1] << 16);
        } else {
            w = 0;
        }
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL; h ^= h >> 32;
        h *= 0xC4CEB9FE1A85EC53ULL;
        return h ^ (h >> 29);
    }

    /* a[0:n] == b[0:n] with fixed-size loads inside both ranges (short words: no call to memcmp) */
    static inline bool fs_same(const char* a, const char* b, int64_t n) {
        if (n >= 8) {
            for (int64_t i = 0; i + 8 <= n; i += 8)
                if (fs_load8(a + i) != fs_load8(b + i)) return false;
            return fs_load8(a + n - 8) == fs_load8(b + n - 8);
        }
        if (n >= 4)
            return fs_load4(a) == fs_load4(b) && fs_load4(a + n - 4) == fs_load4(b + n - 4);
        for (int64_t i = 0; i < n; ++i)
            if (a[i] != b[i]) return false;
        return true;
    }

    static inline uint64_t fs_hash_key(uint64_t k) {
        k *= 0x9E3779B97F4A7C15ULL;
        return k ^ (k >> 31);
    }

    /* The home slot of a probing key among n slots: a full 64-bit mix, then the high word of
       mix * n (no power-of-two size, so a table is 4/3 of its n-grams, not up to 8/3). */
    static inline uint64_t fs_probe_slot(uint64_t k, uint64_t n) {
        k ^= k >> 33; k *= 0xFF51AFD7ED558CCDULL; k ^= k >> 33; k *= 0xC4CEB9FE1A85EC53ULL; k ^= k >> 33;
        return (uint64_t)(((unsigned __int128)k * n) >> 64);
    }
    static inline void fs_prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }
    /* score_batch's shared work counter: relaxed is enough, the sentences' pointers were written
       before the threads started and the outputs are read after they are joined */
    static inline int64_t fs_fetch_add(int64_t* p, int64_t d) { return __atomic_fetch_add(p, d, __ATOMIC_RELAXED); }
    static inline double fs_f64(uint64_t u) { double d; std::memcpy(&d, &u, 8); return d; }
    static inline uint64_t fs_u64(double d) { uint64_t u; std::memcpy(&u, &d, 8); return u; }

    /* A checksum of a byte range: four multiply-rotate lanes over 8-byte words, then the tail. */
    static uint64_t fs_checksum(const unsigned char* p, int64_t n, uint64_t h) {
        const uint64_t P1 = 0x9E3779B185EBCA87ULL, P2 = 0xC2B2AE3D27D4EB4FULL;
        uint64_t a = h + P1, b = h ^ P2, c = h + 0x165667B19E3779F9ULL, d = h - P1;
        int64_t i = 0;
        for (; i + 32 <= n; i += 32) {
            uint64_t w[4]; std::memcpy(w, p + i, 32);
            a = ((a + w[0] * P2) << 31 | (a + w[0] * P2) >> 33) * P1;
            b = ((b + w[1] * P2) << 31 | (b + w[1] * P2) >> 33) * P1;
            c = ((c + w[2] * P2) << 31 | (c + w[2] * P2) >> 33) * P1;
            d = ((d + w[3] * P2) << 31 | (d + w[3] * P2) >> 33) * P1;
        }
        uint64_t r = (a << 1 | a >> 63) + (b << 7 | b >> 57) + (c << 12 | c >> 52) + (d << 18 | d >> 46);
        for (; i < n; ++i) { r ^= p[i]; r *= P1; r ^= r >> 29; }
        r ^= (uint64_t)n * P2;
        r ^= r >> 33; r *= P2; r ^= r >> 29;
        return r;
    }
    """
    char* fs_fmt(char* p, double x) nogil
    int fs_parse(const char* b, const char* e, double* out) nogil
    int64_t fs_utf8_invalid(const unsigned char* s, int64_t n) nogil
    uint64_t fs_hash_bytes(const char* p, int64_t n) nogil
    bint fs_same(const char* a, const char* b, int64_t n) nogil
    uint64_t fs_hash_key(uint64_t k) nogil
    uint64_t fs_probe_slot(uint64_t k, uint64_t n) nogil
    void fs_prefetch(const void* p) nogil
    int64_t fs_fetch_add(int64_t* p, int64_t d) nogil
    double fs_f64(uint64_t u) nogil
    uint64_t fs_u64(double d) nogil
    uint64_t fs_checksum(const unsigned char* p, int64_t n, uint64_t h) nogil


cdef char _EMPTY[8]            # what a pointer into an empty buffer points at


class ParseError(ValueError):
    """An ARPA file breaks the format: args (line number, message without the path)."""


cdef inline bint _is_space(char c) noexcept nogil:
    # isspace in the C locale: what KenLM's IsEntirelyWhiteSpace skips
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == b'\v' or c == b'\f'


cdef inline bint _is_sep(char c) noexcept nogil:
    # KenLM's kARPASpaces within a line: space, tab, carriage return
    return c == b' ' or c == b'\t' or c == b'\r'


# ----- a hash set of words (byte ranges), ids 0..n-1 in insertion order -------------------------
cdef int64_t _LONG_WORD = 0xFFFFFF     # a word this long or longer: its length is in _Words.start


cdef class _Words:
    """Open addressing over words copied into one arena (so comparisons stay in cache).

    A slot is two uint64: the word's high hash bits and its id + 1 (0: empty), then its place
    in the arena (start | length << 40; a length of 2^24 - 1 or more is read from start[]),
    so a probe reads one slot (prefetched by hash before
    the lookup, see QueryCore._peek) and compares bytes only when the hash bits agree."""
    cdef vector[uint64_t] slots
    cdef string arena
    cdef vector[int64_t] start
    cdef uint64_t mask

    cdef void reserve(self, int64_t n) noexcept:
        cdef int64_t cap = 16
        while cap < 2 * n + 2:
            cap <<= 1
        self.slots.assign(2 * cap, 0)
        self.mask = cap - 1
        self.start.reserve(n + 1)
        self.start.push_back(0)

    cdef inline void prefetch(self, uint64_t h) noexcept nogil:
        fs_prefetch(self.slots.data() + 2 * (h & self.mask))

    cdef inline int32_t find_or_add(self, const char* p, int64_t n, bint add) noexcept nogil:
        """Id of the word p[:n]; when absent, -1 (add false) or -2 - (its new id) (add true)."""
        return self.find_hashed(p, n, fs_hash_bytes(p, n), add)

    cdef inline int32_t find_hashed(self, const char* p, int64_t n, uint64_t h, bint add) noexcept nogil:
        """find_or_add with the word's hash h = fs_hash_bytes(p, n) already known."""
        cdef uint64_t s = h & self.mask
        cdef uint64_t tag = h & 0xFFFFFFFF00000000ULL
        cdef uint64_t v, place
        cdef const uint64_t* sl = self.slots.data()
        cdef int64_t i, m
        while True:
            v = sl[2 * s]
            if v == 0:
                break
            if (v & 0xFFFFFFFF00000000ULL) == tag:
                i = <int64_t> (v & 0xFFFFFFFFULL) - 1
                place = sl[2 * s + 1]
                m = <int64_t> (place >> 40)
                if m == _LONG_WORD:
                    m = self.start[i + 1] - self.start[i]
                if m == n and fs_same(self.arena.data() + (place & 0xFFFFFFFFFFULL), p, n):
                    return <int32_t> i
            s = (s + 1) & self.mask
        if not add:
            return -1
        i = self.start.size() - 1
        self.slots[2 * s] = tag | <uint64_t> (i + 1)
        self.slots[2 * s + 1] = <uint64_t> self.arena.size() | (<uint64_t> min(n, _LONG_WORD) << 40)
        self.arena.append(p, n)
        self.start.push_back(self.arena.size())
        return <int32_t> (-2 - i)

    cdef bytes word(self, int64_t i):
        return PyBytes_FromStringAndSize(self.arena.data() + self.start[i], self.start[i + 1] - self.start[i])


# ----- an int64 -> row map ------------------------------------------------------------------------
cdef struct _KeyMap:
    int64_t* keys
    int32_t* rows
    uint64_t mask


cdef inline int32_t _km_get(const _KeyMap* m, int64_t key) noexcept nogil:
    cdef uint64_t s = fs_hash_key(<uint64_t> key) & m.mask
    while m.rows[s] >= 0:
        if m.keys[s] == key:
            return m.rows[s]
        s = (s + 1) & m.mask
    return -1


cdef inline void _km_put(_KeyMap* m, int64_t key, int32_t row) noexcept nogil:
    cdef uint64_t s = fs_hash_key(<uint64_t> key) & m.mask
    while m.rows[s] >= 0:
        s = (s + 1) & m.mask
    m.keys[s] = key
    m.rows[s] = row


# ----- reading -------------------------------------------------------------------------------------
cdef struct _Cursor:
    const char* data
    int64_t n
    int64_t pos          # start of the next line; n + 1 past the end
    int64_t line         # number of the line last returned (1-based)


cdef inline bint _next_line(_Cursor* c, const char** b, const char** e) noexcept nogil:
    """The next line that is not entirely whitespace; False at the end (c.line = lines in the file)."""
    cdef const char* nl
    cdef const char* p
    cdef const char* q
    while c.pos <= c.n:
        p = c.data + c.pos
        nl = <const char*> memchr(p, b'\n', c.n - c.pos)
        q = nl if nl != NULL else c.data + c.n
        c.pos = (q - c.data) + 1
        c.line += 1
        b[0] = p
        e[0] = q
        while b[0] < e[0] and _is_space(b[0][0]):
            b[0] += 1
        while e[0] > b[0] and _is_space((e[0] - 1)[0]):
            e[0] -= 1
        if b[0] < e[0]:
            return True
    return False


cdef inline bint _eq(const char* b, const char* e, bytes s):
    return e - b == len(s) and memcmp(b, <const char*> s, len(s)) == 0


cdef str _text(const char* b, const char* e):
    return (<bytes> PyBytes_FromStringAndSize(b, e - b)).decode("utf-8", "replace")


# error codes of the n-gram loop (the GIL is taken back to build the message)
cdef enum:
    E_EOF = 1
    E_SHORT
    E_FIELDS
    E_PROB_SYNTAX
    E_BACKOFF_SYNTAX
    E_PROB_RANGE
    E_PROB_VALUE
    E_BACKOFF_VALUE
    E_DUP_UNIGRAM
    E_UNKNOWN_WORD
    MAXF = 72         # fields kept per line: a k-gram line has at most k + 2 <= 66


cdef int _section(_Cursor* cur, int k, int N, int64_t count, _Words words, int32_t* fid_to_id,
                  int32_t* rows, double* lp, double* lb, int64_t* where,
                  int64_t* err_j, const char** err_b, const char** err_e) noexcept nogil:
    """Parse the count lines of the k-gram section into rows (count, k) of ids (k > 1) or into
    the word set (k = 1). Returns 0 or an error code (err_j: how many lines were read)."""
    cdef const char* b
    cdef const char* e
    cdef const char* fb[MAXF]
    cdef const char* fe[MAXF]
    cdef const char* p
    cdef const char* pb[MAXF]                     # the previous line's words and their ids
    cdef int64_t pn[MAXF]
    cdef int32_t pid[MAXF]
    cdef int nf, m
    cdef int64_t j
    cdef int32_t w
    cdef double x
    for m in range(k):
        pn[m] = -1
    for j in range(count):
        err_j[0] = j
        if not _next_line(cur, &b, &e):
            return E_EOF
        if b[0] == b'\\':
            return E_SHORT
        nf = 0
        p = b
        while p < e:
            while p < e and _is_sep(p[0]):
                p += 1
            if p >= e:
                break
            if nf < MAXF:
                fb[nf] = p
            while p < e and not _is_sep(p[0]):
                p += 1
            if nf < MAXF:
                fe[nf] = p
            nf += 1
        if (nf != k + 1 and nf != k + 2) or (nf == k + 2 and k == N):
            err_j[0] = nf
            return E_FIELDS
        if fs_parse(fb[0], fe[0], &x):
            err_b[0], err_e[0] = fb[0], fe[0]
            return E_PROB_SYNTAX
        if x != x or x > 0:
            err_b[0], err_e[0] = fb[0], fe[0]
            return E_PROB_RANGE if x == x else E_PROB_VALUE
        lp[j] = x
        x = 0.0
        if nf == k + 2:
            if fs_parse(fb[k + 1], fe[k + 1], &x):
                err_b[0], err_e[0] = fb[k + 1], fe[k + 1]
                return E_BACKOFF_SYNTAX
            if x != x or x > 1e308:
                err_b[0], err_e[0] = fb[k + 1], fe[k + 1]
                return E_BACKOFF_VALUE
        lb[j] = x
        where[j] = cur.line
        if k == 1:
            w = words.find_or_add(fb[1], fe[1] - fb[1], True)
            if w >= 0:
                err_b[0], err_e[0] = fb[1], fe[1]
                return E_DUP_UNIGRAM
        else:
            for m in range(k):
                # sorted files repeat most words of the line before: compare before hashing
                if pn[m] == fe[m + 1] - fb[m + 1] and memcmp(pb[m], fb[m + 1], pn[m]) == 0:
                    rows[j * k + m] = pid[m]
                    continue
                w = words.find_or_add(fb[m + 1], fe[m + 1] - fb[m + 1], False)
                if w < 0:
                    err_b[0], err_e[0] = fb[m + 1], fe[m + 1]
                    return E_UNKNOWN_WORD
                rows[j * k + m] = fid_to_id[w]
                pb[m], pn[m], pid[m] = fb[m + 1], fe[m + 1] - fb[m + 1], fid_to_id[w]
    return 0


def parse(const unsigned char[::1] buf, int max_order, double missing_unk):
    """Parse an ARPA file held in buf.

    Returns (comments, tokens, tables): comments, the lines before '\\data\\' (str); tokens, the
    vocabulary as bytes in model-id order ('<unk>', '<s>', '</s>' first, then the file's order);
    tables[k-1] = (rows int32 (K, k) of model ids, logp float64, logb float64, line int64), in file
    order (rows of order 1: the ids, in model-id order). Raises ParseError(line, message).
    """
    if not 1 <= max_order <= 64:                     # a line keeps at most MAXF = 72 fields
        raise ValueError(f"max_order: expected 1..64, got {max_order}")
    cdef int64_t n = buf.shape[0]
    cdef const char* data = <const char*> &buf[0] if n else _EMPTY
    cdef int64_t bad
    with nogil:
        bad = fs_utf8_invalid(<const unsigned char*> data, n)
    if bad >= 0:
        line = bytes(buf[:bad]).count(b"\n") + 1
        raise ParseError(line, f"not UTF-8 (byte {buf[bad]:#04x} at offset {bad})")
    cdef _Cursor cur
    cur.data, cur.n, cur.pos, cur.line = data, n, 0, 0
    cdef const char* b
    cdef const char* e
    comments = []
    while True:
        if not _next_line(&cur, &b, &e):
            raise ParseError(cur.line, "no '\\data\\' line: not an ARPA file")
        if _eq(b, e, b"\\data\\"):
            break
        comments.append(_text(b, e))
    cdef int64_t lines_after, total_lines
    with nogil:
        total_lines = cur.line
        b = data + cur.pos
        while b < data + n:
            e = <const char*> memchr(b, b'\n', data + n - b)
            if e == NULL:
                break
            total_lines += 1
            b = e + 1
        if cur.pos <= n:
            total_lines += 1
    sizes = []
    cdef int64_t cnt, announced = 0
    while True:
        if not _next_line(&cur, &b, &e):
            raise ParseError(cur.line, "unexpected end of file (missing \\end\\)")
        if not (e - b > 6 and memcmp(b, b"ngram ", 6) == 0):
            break
        s = _text(b + 6, e)
        k, _, c = s.partition("=")
        k, c = k.strip(), c.strip()
        if not (k.isascii() and k.isdigit() and c.isascii() and c.isdigit()):
            raise ParseError(cur.line, f"expected 'ngram <order>=<count>', got {_text(b, e)!r}")
        k, c = int(k), int(c)
        if k != len(sizes) + 1:
            raise ParseError(cur.line, f"expected 'ngram {len(sizes) + 1}=<count>', got {_text(b, e)!r}")
        if k > max_order:
            raise ParseError(cur.line, f"order {k} is above the highest supported, {max_order}")
        # each n-gram takes a line: a larger count is a broken header (and would size the arrays)
        # (compared as Python ints: announced + a count near 2^63 wrapped around in int64 and passed)
        lines_after = total_lines - cur.line
        if c > lines_after - announced:
            raise ParseError(cur.line, f"the header announces {c} {k}-grams, but only "
                                       f"{lines_after} lines follow")
        cnt = c
        announced += cnt
        sizes.append(cnt)
    if not sizes:
        raise ParseError(cur.line, f"expected 'ngram 1=<count>' after \\data\\, got {_text(b, e)!r}")
    cdef int N = len(sizes), k_, code
    cdef _Words words = _Words()
    words.reserve(sizes[0])
    cdef int64_t err_j = 0
    cdef const char* err_b = NULL
    cdef const char* err_e = NULL
    cdef int32_t[::1] fid_to_id
    cdef int32_t[:, ::1] rows
    cdef double[::1] lp, lb
    cdef int64_t[::1] where
    cdef int32_t* rp
    tables = []
    tokens = None
    fid_a = np.zeros(1, np.int32)
    for k_ in range(1, N + 1):
        if not _eq(b, e, f"\\{k_}-grams:".encode()):
            raise ParseError(cur.line, f"expected '\\{k_}-grams:', got {_text(b, e)!r}")
        section_line = cur.line
        cnt = sizes[k_ - 1]
        rows_a = np.empty((cnt if k_ > 1 else 0, k_), dtype=np.int32)
        lp_a, lb_a, where_a = np.empty(cnt), np.empty(cnt), np.empty(cnt, dtype=np.int64)
        lp, lb, where, rows, fid_to_id = lp_a, lb_a, where_a, rows_a, fid_a
        rp = &rows[0, 0] if rows_a.size else NULL
        with nogil:
            code = _section(&cur, k_, N, cnt, words, &fid_to_id[0], rp,
                            &lp[0] if cnt else NULL, &lb[0] if cnt else NULL, &where[0] if cnt else NULL,
                            &err_j, &err_b, &err_e)
        if code:
            _raise(code, cur.line, k_, N, cnt, err_j, err_b, err_e)
        if k_ == 1:
            tokens, fid_a, rows_a, lp_a, lb_a, where_a = _vocabulary(words, lp_a, lb_a, where_a,
                                                                     section_line, missing_unk)
        tables.append((rows_a, lp_a, lb_a, where_a))
        if not _next_line(&cur, &b, &e):
            raise ParseError(cur.line, "unexpected end of file (missing \\end\\)")
    if not _eq(b, e, b"\\end\\"):
        raise ParseError(cur.line, f"expected '\\end\\' after the {N}-grams "
                                   f"(more lines than 'ngram {N}={sizes[N - 1]}' announced?), got {_text(b, e)!r}")
    return comments, tokens, tables


cdef _raise(int code, int64_t line, int k, int N, int64_t cnt, int64_t j, const char* b, const char* e):
    if code == E_EOF:
        raise ParseError(line, "unexpected end of file (missing \\end\\)")
    if code == E_SHORT:
        raise ParseError(line, f"the header announced {cnt} {k}-grams, but section \\{k}-grams: has {j}")
    if code == E_FIELDS:
        raise ParseError(line, f"a {k}-gram line needs a log10 probability, {k} words"
                               f"{' and an optional backoff' if k < N else ''}; got {j} fields")
    tok = _text(b, e)
    if code == E_PROB_SYNTAX:
        raise ParseError(line, f"log10 probability {tok!r} is not a number")
    if code == E_BACKOFF_SYNTAX:
        raise ParseError(line, f"log10 backoff {tok!r} is not a number")
    if code == E_PROB_RANGE:
        raise ParseError(line, f"log10 probability {tok!r} must be a log10 probability <= 0")
    if code == E_PROB_VALUE:
        raise ParseError(line, f"log10 probability {tok!r} must be a number or -inf")
    if code == E_BACKOFF_VALUE:
        raise ParseError(line, f"log10 backoff {tok!r} must be a number or -inf")
    if code == E_DUP_UNIGRAM:
        raise ParseError(line, f"unigram {tok!r} appears twice")
    raise ParseError(line, f"word {tok!r} of this {k}-gram is not among the unigrams")


cdef tuple _vocabulary(_Words words, lp_f, lb_f, where_f, int64_t section_line, double missing_unk):
    """Model ids of the unigrams: '<unk>', '<s>', '</s>' first, then the file's order."""
    cdef int64_t K = words.start.size() - 1, j
    file_words = [words.word(j) for j in range(K)]
    special = {b"<unk>": 0, b"<s>": 1, b"</s>": 2}
    for t in (b"<s>", b"</s>"):
        if words.find_or_add(<const char*> t, len(t), False) < 0:
            raise ParseError(section_line, f"the unigrams have no {t.decode()!r}")
    has_unk = words.find_or_add(b"<unk>", 5, False) >= 0
    V = K + (0 if has_unk else 1)
    fid = np.empty(max(K, 1), dtype=np.int32)
    tokens = [b"<unk>", b"<s>", b"</s>"]
    nxt = 3
    for j in range(K):
        w = file_words[j]
        s = special.get(w)
        if s is None:
            fid[j] = nxt
            nxt += 1
            tokens.append(w)
        else:
            fid[j] = s
    lp1, lb1, where1 = np.full(V, missing_unk), np.zeros(V), np.zeros(V, dtype=np.int64)
    lp1[fid[:K]], lb1[fid[:K]], where1[fid[:K]] = lp_f, lb_f, where_f
    rows1 = np.arange(V, dtype=np.int32)[:, None]
    return tokens, fid, rows1, lp1, lb1, where1


def link(list rows_list, int64_t V):
    """Sort each order lexicographically (by model ids) and find each n-gram's context.

    rows_list[k-1]: (K, k) int32 ids in file order (order 1: the dense table). Returns
    ([perm int64 per order k >= 2], [parent int64 per order k >= 2]) with the rows of order k
    sorted by perm, and parent the row (in sorted order k-1) of each sorted row's first k-1 ids;
    or raises ParseError(None, ...) with args (kind, k, index in file order): kind 'context'
    (the first k-1 ids are not an n-gram of order k-1) or 'twice' (the n-gram appears twice).
    """
    cdef int N = len(rows_list), k, m
    cdef int64_t K, i, s, cap, r
    cdef const int32_t[:, ::1] rows
    cdef int64_t[::1] key, perm_v, par_v
    cdef vector[_KeyMap] maps
    cdef vector[vector[int64_t]] kstore
    cdef vector[vector[int32_t]] rstore
    cdef int64_t bad
    cdef int64_t cache[64]
    cdef int32_t prev[64]
    cdef int agree
    cdef bint sorted_
    perms, parents = [], []
    maps.resize(N + 1)
    kstore.resize(N + 1)
    rstore.resize(N + 1)
    for k in range(2, N + 1):
        rows = rows_list[k - 1]
        if rows.shape[1] != k:
            raise ValueError(f"link: order {k} rows must have {k} columns")
        K = rows.shape[0]
        key_a = np.empty(K, dtype=np.int64)
        key = key_a
        bad = -1
        with nogil:
            for i in range(K):
                for m in range(k):
                    if rows[i, m] < 0 or rows[i, m] >= V:
                        bad = i
                if bad >= 0:
                    break
        if bad >= 0:
            raise ValueError(f"link: order {k} row {bad} has an id outside [0, {V})")
        with nogil:
            # the row of each prefix w0..w(m-1) in table m, reused while consecutive rows share it
            # (sorted files share almost every prefix with the line before)
            for i in range(K):
                agree = 0
                if i > 0:
                    while agree < k - 1 and rows[i, agree] == prev[agree]:
                        agree += 1
                for m in range(agree, k - 1):
                    prev[m] = rows[i, m]
                    if m == 0:
                        cache[0] = rows[i, 0]
                    elif cache[m - 1] < 0:
                        cache[m] = -1
                    else:
                        cache[m] = _km_get(&maps[m + 1], cache[m - 1] * V + rows[i, m])
                if cache[k - 2] < 0:
                    bad = i
                    break
                key[i] = cache[k - 2] * V + rows[i, k - 1]
        if bad >= 0:
            raise ParseError("context", k, bad)
        sorted_ = True
        with nogil:
            for i in range(1, K):
                if key[i] <= key[i - 1]:
                    sorted_ = False
                    break
        if sorted_:
            perm_a = None
            skey_a = key_a
        else:
            perm_a = np.argsort(key_a, kind="stable")
            skey_a = key_a[perm_a]
            dup = np.flatnonzero(skey_a[1:] == skey_a[:len(skey_a) - 1])
            if dup.size:
                raise ParseError("twice", k, int(perm_a[dup[0] + 1]))
        perms.append(perm_a)
        parents.append(skey_a // V if V else skey_a)
        if k < N:                                        # a map of this order for the next
            cap = 16
            while cap < 2 * K + 2:
                cap <<= 1
            kstore[k].resize(cap)
            rstore[k].assign(cap, -1)
            maps[k].keys = kstore[k].data()
            maps[k].rows = rstore[k].data()
            maps[k].mask = cap - 1
            key = skey_a
            with nogil:
                for s in range(K):
                    _km_put(&maps[k], key[s], <int32_t> s)
    return perms, parents


# ----- writing -------------------------------------------------------------------------------------
def format_arpa(bytes header, const unsigned char[::1] blob, const int64_t[::1] offsets, list rows_list,
                list logp_list, list logb_list):
    """The ARPA text (bytes) of a model: header (comments and '\\data\\' with the counts), then
    each order's section. Words are blob[offsets[i]:offsets[i+1]] (already UTF-8 and escaped);
    rows_list[k-1] (K, k) int32 ids; logb_list[k-1] None for the highest order."""
    cdef int N = len(rows_list), k, m
    cdef int64_t V = offsets.shape[0] - 1, K, j, w, total = len(header) + 16
    if V < 0 or offsets[0] != 0 or offsets[V] > blob.shape[0]:
        raise ValueError("format_arpa: offsets must start at 0 and end inside blob")
    for j in range(V):
        if offsets[j + 1] < offsets[j]:
            raise ValueError("format_arpa: offsets must not decrease")
    cdef const int32_t[:, ::1] rows
    cdef const double[::1] lp, lb
    cdef const char* words = <const char*> &blob[0] if blob.shape[0] else _EMPTY
    for k in range(1, N + 1):
        rows = rows_list[k - 1]
        if rows.shape[1] != k or len(logp_list[k - 1]) != rows.shape[0] \
                or (logb_list[k - 1] is not None and len(logb_list[k - 1]) != rows.shape[0]):
            raise ValueError(f"format_arpa: order {k} tables have inconsistent shapes")
        if rows.shape[0] and (np.min(rows_list[k - 1]) < 0 or np.max(rows_list[k - 1]) >= V):
            raise ValueError(f"format_arpa: order {k} has ids outside [0, {V})")
        total += rows.shape[0] * (64 + k * 8) + 32
    cdef string out
    out.reserve(total)
    out.append(<const char*> header, len(header))
    cdef char num[48]
    cdef char* end
    cdef bint has_b
    for k in range(1, N + 1):
        rows = rows_list[k - 1]
        lp = np.require(logp_list[k - 1], dtype=np.float64, requirements="CA")
        has_b = logb_list[k - 1] is not None
        lb = np.require(logb_list[k - 1] if has_b else np.zeros(1), dtype=np.float64, requirements="CA")
        K = rows.shape[0]
        sec = f"\n\\{k}-grams:\n".encode()
        out.append(<const char*> sec, len(sec))
        with nogil:
            for j in range(K):
                end = fs_fmt(num, lp[j])
                out.append(num, end - num)
                out.push_back(b'\t')
                for m in range(k):
                    if m:
                        out.push_back(b' ')
                    w = rows[j, m]
                    out.append(words + offsets[w], offsets[w + 1] - offsets[w])
                if has_b:
                    out.push_back(b'\t')
                    end = fs_fmt(num, lb[j])
                    out.append(num, end - num)
                out.push_back(b'\n')
    out.append(b"\n\\end\\\n", 7)
    return PyBytes_FromStringAndSize(out.data(), out.size())


def checksum(const unsigned char[::1] buf, uint64_t start=0):
    """A 64-bit checksum of buf (a fast multiply-rotate hash; detects truncation and bit flips)."""
    cdef int64_t n = buf.shape[0]
    cdef uint64_t h
    with nogil:
        h = fs_checksum(&buf[0] if n else <const unsigned char*> _EMPTY, n, start)
    return h


# ----- queries -------------------------------------------------------------------------------------
cdef enum:
    MAXCTX = 63       # context rows in a State: orders up to 64


cdef class State:
    """A query context (kenlm's State): the n-grams stored that end at the last word, one per length
    1..order-1 (the word's id, then slots of the probing tables; -1 where not stored), and their
    log10 backoffs. Equal states score every continuation alike."""
    cdef int32_t ctx[MAXCTX]
    cdef double bo[MAXCTX]            # the backoff of each stored context (read with its slot)
    cdef int n

    def __cinit__(self):
        self.n = 0

    def __richcmp__(State a, State b, int op):
        cdef int r = 0, i
        if a.n != b.n:
            r = -1 if a.n < b.n else 1
        else:
            for i in range(a.n):
                if a.ctx[i] != b.ctx[i]:
                    r = -1 if a.ctx[i] < b.ctx[i] else 1
                    break
        if op == 0:
            return r < 0
        if op == 1:
            return r <= 0
        if op == 2:
            return r == 0
        if op == 3:
            return r != 0
        if op == 4:
            return r > 0
        return r >= 0

    def __hash__(self):
        return <Py_ssize_t> (fs_hash_bytes(<const char*> self.ctx, self.n * sizeof(int32_t)) >> 2)

    def __copy__(self):
        cdef State s = State()
        s.n = self.n
        memcpy(s.ctx, self.ctx, sizeof(self.ctx))
        memcpy(s.bo, self.bo, sizeof(self.bo))
        return s

    def __deepcopy__(self, memo=None):
        return self.__copy__()

    def __repr__(self):
        return f"State({[self.ctx[i] for i in range(self.n)]})"


cdef class FullScoreReturn:
    """kenlm's FullScoreReturn: log10 probability, length of the n-gram matched, out of vocabulary."""
    cdef readonly double log_prob
    cdef readonly int ngram_length
    cdef readonly bint oov

    def __cinit__(self, log_prob, ngram_length, oov):
        self.log_prob, self.ngram_length, self.oov = log_prob, ngram_length, oov

    def __repr__(self):
        return f"FullScoreReturn({self.log_prob!r}, {self.ngram_length!r}, {self.oov!r})"


def check_tables(int order, blob, offsets, list starts, list lasts, list logp, list logb):
    """The tables of a model as contiguous arrays (offsets, blob, then starts, lasts, logp, logb of
    each order), after checking what the query loops rely on: ValueError naming the broken table."""
    if not 1 <= order <= MAXCTX + 1:
        raise ValueError(f"order: expected 1..{MAXCTX + 1}, got {order}")
    if len(starts) != order or len(lasts) != order or len(logp) != order or len(logb) != order:
        raise ValueError("tables: one of each kind per order")
    off = np.require(offsets, dtype=np.int64, requirements="CA")
    bl = np.frombuffer(blob, dtype=np.uint8)
    cdef int64_t V = off.shape[0] - 1
    if V < 3 or off[0] != 0 or off[V] > bl.shape[0] or np.any(np.diff(off) < 0):
        raise ValueError("words: offsets must start at 0, not decrease, and end inside the blob")
    keep = [off, bl]
    cdef const int64_t[::1] s64
    cdef const int32_t[::1] l32
    cdef int k
    cdef int64_t prevK = V, K, c, i, bad
    for k in range(order):
        lpk = np.require(logp[k], dtype=np.float64, requirements="CA")
        lbk = np.require(logb[k], dtype=np.float64, requirements="CA")
        if k == 0:
            K = V
            stk = np.zeros(1, np.int64)
            lak = np.arange(V, dtype=np.int32)
        else:
            stk = np.require(starts[k], dtype=np.int64, requirements="CA")
            lak = np.require(lasts[k], dtype=np.int32, requirements="CA")
            K = lak.shape[0]
            if K >= 0x7FFFFFFF:                          # a State holds rows as int32
                raise ValueError(f"order {k + 1}: {K} n-grams; at most {0x7FFFFFFF - 1} are supported")
            if stk.shape[0] != prevK + 1 or stk[0] != 0 or stk[prevK] != K:
                raise ValueError(f"order {k + 1}: starts must have {prevK + 1} entries from 0 to {K}")
            s64, l32 = stk, lak
            bad = -1
            with nogil:
                for c in range(prevK):
                    if s64[c + 1] < s64[c] or s64[c + 1] > K:    # before any read of lasts
                        bad = c
                        break
                    for i in range(s64[c], s64[c + 1]):
                        if l32[i] < 0 or l32[i] >= V or (i > s64[c] and l32[i] <= l32[i - 1]):
                            bad = c
                    if bad >= 0:
                        break
            if bad >= 0:
                raise ValueError(f"order {k + 1}: the children of row {bad} are not increasing ids in [0, {V})")
        if lpk.shape[0] != K or (lbk.shape[0] != K and not (k == order - 1 and lbk.shape[0] == 0)):
            raise ValueError(f"order {k + 1}: {K} probabilities and backoffs expected")
        if lbk.shape[0] == 0:
            lbk = np.zeros(max(K, 1))
        keep += [stk, lak, lpk, lbk]
        prevK = K
    return keep


cdef inline bint _next_word(const char** p, const char* e, const char** b) noexcept nogil:
    """The next word of p[0] .. e, split on ASCII whitespace as Python's bytes.split() (and kenlm)."""
    while p[0] < e and (p[0][0] == b' ' or (b'\t' <= p[0][0] <= b'\r')):
        p[0] += 1
    if p[0] >= e:
        return False
    b[0] = p[0]
    while p[0] < e and not (p[0][0] == b' ' or (b'\t' <= p[0][0] <= b'\r')):
        p[0] += 1
    return True


def suffix_closed(list starts, list lasts):
    """Whether the suffix of every stored n-gram is stored (as in every model lmplz or fastseq fits;
    not in a pruned file). Tables as check_tables returns them (already checked). Then a search
    that misses at order k misses at every higher order, and queries stop searching there."""
    cdef int N = len(lasts), k
    cdef const int64_t[::1] st, stp
    cdef const int32_t[::1] la, lap
    cdef int64_t K, c, r, lo, hi, mid, end, s
    cdef int32_t w
    cdef bint ok = True
    if N < 2:
        return True
    la = lasts[1]
    suf_a = np.asarray(la, dtype=np.int64)            # order 2: the suffix of (c, w) is the unigram w
    cdef int64_t[::1] suf = suf_a, nsuf
    for k in range(3, N + 1):
        st, la = starts[k - 1], lasts[k - 1]           # order k grouped by context rows of order k-1
        stp, lap = starts[k - 2], lasts[k - 2]         # order k-1, where the suffixes must be
        K = la.shape[0]
        nsuf_a = np.empty(K, dtype=np.int64)
        nsuf = nsuf_a
        with nogil:
            for c in range(st.shape[0] - 1):
                s = suf[c]                               # row (order k-2) of the suffix of context c
                for r in range(st[c], st[c + 1]):
                    w = la[r]
                    if s < 0:
                        ok = False
                        break
                    lo, end = stp[s], stp[s + 1]
                    hi = end
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if lap[mid] < w:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo >= end or lap[lo] != w:
                        ok = False
                        break
                    nsuf[r] = lo
                if not ok:
                    break
        if not ok:
            return False
        suf_a, suf = nsuf_a, nsuf
    return True


# ----- probing tables (KenLM's layout): (context, word) -> the n-gram's log10 p and backoff -----------
# One table per order k >= 2, an array of uint64: slot i is words [STRIDE * i, STRIDE * i + STRIDE)
# holding the key (context | word << 32, and bit 63: _EXT), the log10 probability and (below the
# highest order) the log10 backoff, the doubles stored by their bits. The context of an order-k
# n-gram is the word id (k = 2) or the slot of its first k - 1 words in the order k-1 table: a
# lookup is one probe whose place is known as soon as the word is, and the numbers come in the
# same cache line as the key.
# _EXT marks an n-gram that a State keeps as a context: one with a longer n-gram stored after it or
# a backoff other than 0. Any other one is followed by no stored n-gram and adds 0 when backed off
# from, so the State drops it (as KenLM's states do) and the next word skips that order's lookup.
cdef uint64_t _EMPTY_KEY = 0xFFFFFFFFFFFFFFFFULL     # no real key: words and contexts are below 2^31 - 1
cdef uint64_t _EXT = 0x8000000000000000ULL


cdef inline uint64_t _slot_key(uint32_t c, uint32_t w) noexcept nogil:
    return <uint64_t> c | (<uint64_t> w << 32)


cdef inline int _stride(int k, int order) noexcept nogil:
    return 3 if k < order else 2                          # the highest order has no backoff


def slot_count(int64_t K):
    """Slots of a table of K n-grams: 1.5 K + 1 (KenLM's default), so an empty slot ends every
    search and a missing n-gram is found missing after 2.5 slots on average (linear probing)."""
    return K + K // 2 + 1


def slot_tables(list starts, list lasts, list logp, list logb):
    """The probing table of each order k >= 2 (index k - 2; a uint64 array) from the tables as
    check_tables returns them (already checked: starts monotone, lasts in range)."""
    cdef int N = len(lasts), k, s
    cdef const int64_t[::1] st
    cdef const int64_t[::1] stn = starts[0]
    cdef const int32_t[::1] la
    cdef const double[::1] lp, lb
    cdef const int64_t[::1] prev
    cdef int64_t[::1] cur
    cdef uint64_t[::1] t
    cdef int64_t K, P, c, r, cs
    cdef uint64_t S, i, key
    out = []
    prev_a = None
    for k in range(2, N + 1):
        st, la, lp, lb = starts[k - 1], lasts[k - 1], logp[k - 1], logb[k - 1]
        K, P, s = la.shape[0], st.shape[0] - 1, _stride(k, N)
        S = slot_count(K)
        if S >= 0x7FFFFFFF:                               # a State holds slots as int32
            raise ValueError(f"order {k}: {K} n-grams; at most {(0x7FFFFFFF - 2) * 2 // 3} are supported")
        t_a = np.zeros(s * S, np.uint64)
        t_a[::s] = _EMPTY_KEY
        t = t_a
        cur_a = np.empty(K if k < N else 0, np.int64)
        cur = cur_a
        if k > 2:
            prev = prev_a
        if k < N:
            stn = starts[k]                              # the children of each k-gram at order k + 1
        with nogil:
            for c in range(P):
                cs = c if k == 2 else prev[c]
                for r in range(st[c], st[c + 1]):
                    key = _slot_key(<uint32_t> cs, <uint32_t> la[r])
                    i = fs_probe_slot(key, S)
                    while t[s * i] != _EMPTY_KEY:
                        i += 1
                        if i == S:
                            i = 0
                    t[s * i] = key
                    t[s * i + 1] = fs_u64(lp[r])
                    if s == 3:
                        t[s * i + 2] = fs_u64(lb[r])
                        cur[r] = <int64_t> i
                        if stn[r + 1] > stn[r] or lb[r] != 0.0:
                            t[s * i] = key | _EXT
        out.append(t_a)
        prev_a = cur_a
    return out


def check_slots(table, int k, int order, int64_t K):
    """The probing table of order k (K n-grams), checked for what the query loop relies on (a
    wrong entry only gives a wrong score): its size and exactly K filled slots, so that an empty
    one ends every search. ValueError naming the table, else the array."""
    t_a = np.require(table, dtype=np.uint64, requirements="CA")
    cdef int s = _stride(k, order)
    cdef int64_t S = slot_count(K)
    if t_a.ndim != 1 or t_a.shape[0] != s * S:
        raise ValueError(f"slot{k}: {t_a.size} numbers; expected {s * S} ({S} slots of {s} for {K} {k}-grams)")
    cdef const uint64_t[::1] t = t_a
    cdef int64_t i, full = 0
    with nogil:
        for i in range(S):
            full += t[s * i] != _EMPTY_KEY
    if full != K:
        raise ValueError(f"slot{k}: {full} filled slots for {K} {k}-grams")
    return t_a


def slot_rows(list slots, int order, int64_t V, counts):
    """(starts, lasts, logp, logb) of orders 2..order (lists indexed k - 2) from checked probing
    tables: each order's n-grams sorted by (context row, word), as check_tables wants them.
    ValueError if a key names a context that is not stored or an n-gram appears twice."""
    cdef int k, s
    out = ([], [], [], [])
    row_of = np.arange(V, dtype=np.int64)                # order 1: a word's row is its id
    for k in range(2, order + 1):
        s = _stride(k, order)
        t = np.asarray(slots[k - 2]).reshape(-1, s)
        filled = np.flatnonzero(t[:, 0] != _EMPTY_KEY)
        key = t[filled, 0] & ~np.uint64(_EXT)
        c, w = (key & 0xFFFFFFFF).astype(np.int64), (key >> 32).astype(np.int64)
        if np.any(c >= len(row_of)) or np.any(w >= V):
            raise ValueError(f"slot{k}: a key names a context or word outside the model")
        parent = row_of[c]
        if np.any(parent < 0):
            raise ValueError(f"slot{k}: a key names a context that is not stored")
        perm = np.lexsort((w, parent))
        parent, w, filled = parent[perm], w[perm], filled[perm]
        if len(w) > 1 and np.any((parent[1:] == parent[:len(w) - 1]) & (w[1:] == w[:len(w) - 1])):
            raise ValueError(f"slot{k}: an n-gram appears twice")
        row_of = np.full(len(t), -1, np.int64)
        row_of[filled] = np.arange(len(filled))
        out[0].append(np.searchsorted(parent, np.arange(counts[k - 2] + 1)).astype(np.int64))
        out[1].append(w.astype(np.int32))
        out[2].append(t[filled, 1].view(np.float64))
        out[3].append(t[filled, 2].view(np.float64) if s == 3 else np.zeros(0))
    return out


cdef enum:
    LANES = 16        # sentences score_batch runs in lockstep (8 and 32 measured no different)
    CHUNK = 32        # sentences a thread of score_batch takes from the shared counter at a time


cdef enum:
    PEEK_WORD = 0     # a lane's next token: a word (hashed, its slot prefetched), '</s>', none
    PEEK_EOS
    PEEK_END


cdef struct _Lane:
    const char* p
    const char* e
    Py_ssize_t sent           # index of its sentence, -1: idle
    double total
    int32_t w
    int pk                    # the token after w (PEEK_*): looked up one round later
    const char* tb            # that word: its bytes and hash
    int64_t tn
    uint64_t th
    int32_t ctx[MAXCTX]
    double bo[MAXCTX]
    uint64_t key[MAXCTX]
    uint64_t slot[MAXCTX]


cdef struct _Batch:
    const char** ptr
    const int64_t* len
    double* out
    Py_ssize_t m, next        # the sentences next .. m-1 are this thread's
    int64_t* shared           # NULL, or the next sentence nobody has taken (CHUNK at a time)
    Py_ssize_t total          # with shared: the batch's size
    bint bos, eos


cdef class QueryCore:
    """The back-off tables of a model and the query loops (kenlm's Model without the loading).

    Tables: words (UTF-8 of each model id, as the ARPA file spells them), order 1 dense
    (log10 p and backoff of each word id), and for k >= 2 the probing table of order k
    (slot_tables: key, log10 p, log10 backoff in one slot).
    """
    cdef _Words _words
    cdef readonly int order
    cdef int64_t V
    cdef const double* lp1
    cdef const double* lb1
    cdef const uint64_t* tb[64]       # order k >= 2: probing table of ts[k-1] slots of sw[k-1] words
    cdef uint64_t ts[64]
    cdef int sw[64]
    cdef object _keep
    cdef int32_t bos, eos
    cdef bint closed

    def _set_tables(self, int order, blob, offsets, logp1, logb1, list slots, bint closed):
        """Keep the tables after checking what the query loops rely on: the words (offsets
        monotone, inside blob, no word twice), V probabilities and backoffs of order 1, each
        order's probing table (check_slots, with the counts its filled slots give). closed:
        whether the model is suffix-closed (a wrong True gives wrong scores, never a read out of
        bounds)."""
        if not 1 <= order <= MAXCTX + 1:
            raise ValueError(f"order: expected 1..{MAXCTX + 1}, got {order}")
        if len(slots) != order - 1:
            raise ValueError(f"tables: {order - 1} probing tables expected, got {len(slots)}")
        off = np.require(offsets, dtype=np.int64, requirements="CA")
        bl_a = np.frombuffer(blob, dtype=np.uint8)
        cdef int64_t V = off.shape[0] - 1, i
        if V < 3 or off[0] != 0 or off[V] > bl_a.shape[0] or np.any(np.diff(off) < 0):
            raise ValueError("words: offsets must start at 0, not decrease, and end inside the blob")
        lp_a = np.require(logp1, dtype=np.float64, requirements="CA")
        lb_a = np.require(logb1, dtype=np.float64, requirements="CA")
        if lp_a.shape != (V,) or lb_a.shape != (V,):
            raise ValueError(f"order 1: {V} probabilities and backoffs expected")
        cdef int k, s
        cdef const double[::1] dv
        cdef const uint64_t[::1] tv
        dv = lp_a
        self.lp1 = &dv[0]
        dv = lb_a
        self.lb1 = &dv[0]
        tables = []
        for k in range(2, order + 1):
            s = _stride(k, order)
            t = np.require(slots[k - 2], dtype=np.uint64, requirements="CA")
            t = check_slots(t, k, order, int(np.count_nonzero(t[::s] != _EMPTY_KEY)) if t.ndim == 1 else 0)
            tv = t
            self.tb[k - 1], self.ts[k - 1], self.sw[k - 1] = &tv[0], t.shape[0] // s, s
            tables.append(t)
        self._keep = (off, bl_a, lp_a, lb_a, tables)
        self.closed = closed
        self.order, self.V = order, V
        words = _Words()
        words.reserve(V)
        cdef const int64_t[::1] o64 = off
        cdef const uint8_t[::1] bl = bl_a
        cdef const char* base = <const char*> &bl[0] if bl.shape[0] else _EMPTY
        for i in range(V):
            if words.find_or_add(base + o64[i], o64[i + 1] - o64[i], True) >= 0:
                raise ValueError(f"words: word {i} appears twice")
        self._words = words
        self.bos, self.eos = 1, 2

    cdef inline int32_t _index(self, const char* p, int64_t n) noexcept nogil:
        cdef int32_t w = self._words.find_or_add(p, n, False)
        return w if w > 0 else 0

    cdef int32_t _word(self, word) except -1:
        cdef Py_ssize_t n
        cdef const char* p
        if isinstance(word, str):
            p = PyUnicode_AsUTF8AndSize(word, &n)
        elif isinstance(word, bytes):
            p, n = <const char*> (<bytes> word), len(<bytes> word)
        else:
            raise TypeError(f"word: expected a str, got {type(word).__name__}")
        return self._index(p, n)

    # A word's lookup in two stages, so that score_batch can run several sentences in lockstep and
    # overlap their cache misses: _prepare computes every order's probe slot (the contexts are
    # known) and prefetches it; _lookup probes (one cache line a slot: key and numbers) and sums.
    cdef inline void _prepare(self, const int32_t* ctx, int32_t w, uint64_t* key, uint64_t* slot) noexcept nogil:
        cdef int k
        cdef int32_t c
        cdef const uint64_t* t
        fs_prefetch(self.lp1 + w)
        fs_prefetch(self.lb1 + w)
        for k in range(2, self.order + 1):
            c = ctx[k - 2]
            if c < 0 and self.closed:                    # no longer n-gram is stored (see _lookup)
                break
            if c >= 0:
                key[k - 2] = _slot_key(<uint32_t> c, <uint32_t> w)
                slot[k - 2] = fs_probe_slot(key[k - 2], self.ts[k - 1])
                t = self.tb[k - 1] + self.sw[k - 1] * slot[k - 2]
                # the probe's run, not just its home slot: at the tables' load of 2/3, linear
                # probing reads 5 slots on average before it finds an absent key (Knuth, TAOCP 6.4:
                # (1 + 1/(1 - a)^2) / 2; measured 4.9-5.0 on bench_query's 5-gram, 1 in 10 reads 12),
                # 80-120 bytes, and every back-off is an absent key. Three lines from the home slot
                # (measured: score_batch 1.23x the rate of the home slot's lines only; four: 1.19x)
                fs_prefetch(t)
                fs_prefetch(t + 8)
                fs_prefetch(t + 16)

    cdef inline double _lookup(self, const int32_t* ctx, const double* bo, int32_t w, const uint64_t* key,
                               const uint64_t* slot, int32_t* out, double* outb, int* length) noexcept nogil:
        """log10 P(w | ctx) by back-off, reading the probes _prepare placed in one pass over the orders:
        the longest stored n-gram's probability plus the backoff of every longer context; out, outb:
        the state after w (may alias ctx, bo: written after they are read), the n-grams found that a
        State keeps (_EXT); length: the longest n-gram found."""
        cdef int32_t nxt[MAXCTX]
        cdef double nb[MAXCTX]
        cdef double r = self.lp1[w]
        cdef int k, s, found = 1
        cdef uint64_t i, S, v, ext = 0
        cdef const uint64_t* t
        cdef bint search = True
        for k in range(2, self.order + 1):
            if ctx[k - 2] < 0:
                # suffix-closed: with no context, or after a miss, no longer n-gram is stored
                search = search and not self.closed
                continue
            if not search:
                r += bo[k - 2]                           # b(c) P(w | shorter context)
                continue
            t, S, s, i = self.tb[k - 1], self.ts[k - 1], self.sw[k - 1], slot[k - 2]
            while True:
                v = t[s * i]
                if v == _EMPTY_KEY:
                    r += bo[k - 2]
                    search = not self.closed
                    break
                if (v & ~_EXT) == key[k - 2]:
                    r, found = fs_f64(t[s * i + 1]), k   # the n-gram is stored
                    if s == 3:
                        nxt[k - 1], nb[k - 1] = <int32_t> i, fs_f64(t[s * i + 2])
                        ext |= (v >> 63) << (k - 1)
                    break
                i += 1
                if i == S:
                    i = 0
        if self.order > 1:
            out[0], outb[0] = w, self.lb1[w]
            for k in range(1, self.order - 1):
                if (ext >> k) & 1:
                    out[k], outb[k] = nxt[k], nb[k]
                else:
                    out[k], outb[k] = -1, 0.0
        length[0] = found
        return r

    cdef double _step(self, const int32_t* ctx, const double* bo, int32_t w, int32_t* out, double* outb,
                      int* length) noexcept nogil:
        """log10 P(w | ctx) by back-off; out, outb: the state after w (may alias ctx, bo)."""
        cdef uint64_t key[MAXCTX]
        cdef uint64_t slot[MAXCTX]
        self._prepare(ctx, w, key, slot)
        return self._lookup(ctx, bo, w, key, slot, out, outb, length)

    cdef void _start(self, int32_t* ctx, double* bo, bint bos) noexcept nogil:
        """The context at a sentence start ('<s>') or the empty context."""
        cdef int k
        for k in range(self.order - 1):
            ctx[k], bo[k] = -1, 0.0
        if bos and self.order > 1:
            ctx[0], bo[0] = self.bos, self.lb1[self.bos]

    cdef double _sentence(self, const char* p, int64_t n, bint bos, bint eos, int64_t* tokens,
                          int64_t* oovs, double* oov_sum) noexcept nogil:
        """_step over the sentence's words, each next word found and looked up in the vocabulary
        while the current one's probes are in flight (they wait on memory; the next word's text
        and id do not depend on them)."""
        cdef int32_t ctx[MAXCTX]
        cdef double bo[MAXCTX]
        cdef uint64_t key[MAXCTX]
        cdef uint64_t slot[MAXCTX]
        cdef const char* e = p + n
        cdef const char* b
        cdef double total = 0, x
        cdef int32_t w, wn = 0
        cdef int length
        cdef bint has = _next_word(&p, e, &b), is_word = has
        if has:
            w = self._index(b, p - b)
        elif eos:
            w = self.eos
        else:
            return 0
        self._start(ctx, bo, bos)
        while True:
            self._prepare(ctx, w, key, slot)
            if is_word:
                has = _next_word(&p, e, &b)
                if has:
                    wn = self._index(b, p - b)
            x = self._lookup(ctx, bo, w, key, slot, ctx, bo, &length)
            total += x
            tokens[0] += 1
            if not is_word:                              # '</s>' was the last token
                break
            if w == 0:
                oovs[0] += 1
                oov_sum[0] += x
            if has:
                w = wn
            elif eos:
                w, is_word = self.eos, False
            else:
                break
        return total

    cdef const char* _utf8(self, sentence, Py_ssize_t* n) except NULL:
        if isinstance(sentence, str):
            return PyUnicode_AsUTF8AndSize(sentence, n)
        if isinstance(sentence, bytes):
            n[0] = len(<bytes> sentence)
            return <const char*> (<bytes> sentence)
        raise TypeError(f"sentence: expected a str, got {type(sentence).__name__}")

    def score(self, sentence, bos=True, eos=True):
        """log10 P(sentence), words split on ASCII whitespace as kenlm splits them."""
        cdef Py_ssize_t n
        cdef const char* p = self._utf8(sentence, &n)
        cdef int64_t t = 0, o = 0
        cdef double os = 0
        return self._sentence(p, n, bos, eos, &t, &o, &os)

    def perplexity(self, sentence):
        """10 ** (-score / (words + 1)): kenlm's per-sentence perplexity ('</s>' counted)."""
        cdef Py_ssize_t n
        cdef const char* p = self._utf8(sentence, &n)
        cdef int64_t t = 0, o = 0
        cdef double os = 0
        cdef double s = self._sentence(p, n, True, True, &t, &o, &os)
        return 10.0 ** (-s / t)

    cdef inline void _peek(self, _Lane* L, bint eos) noexcept nogil:
        """Find the lane's next token and, for a word, prefetch its slot in the word set: it is
        looked up a round later, when the slot has arrived."""
        cdef const char* b
        if _next_word(&L.p, L.e, &b):
            L.pk, L.tb, L.tn = PEEK_WORD, b, L.p - b
            L.th = fs_hash_bytes(b, L.tn)
            self._words.prefetch(L.th)
        else:
            L.pk = PEEK_EOS if eos else PEEK_END

    cdef bint _lane_next(self, _Lane* L, _Batch* B) noexcept nogil:
        """Set L.w to the lane's next token, moving on to the next sentence of the batch when its
        own is done (its total written); False when the batch has no sentence left for the lane."""
        cdef int32_t w
        while True:
            if L.sent >= 0:
                if L.pk == PEEK_WORD:
                    w = self._words.find_hashed(L.tb, L.tn, L.th, False)
                    L.w = w if w > 0 else 0
                    self._peek(L, B.eos)
                    return True
                if L.pk == PEEK_EOS:
                    L.w, L.pk = self.eos, PEEK_END
                    return True
                B.out[L.sent] = L.total
            if B.next >= B.m:
                if B.shared == NULL or B.shared[0] >= B.total:
                    L.sent = -1
                    return False
                B.next = fs_fetch_add(B.shared, CHUNK)
                B.m = min(B.next + CHUNK, B.total)
                continue
            L.sent = B.next
            B.next += 1
            L.p, L.e = B.ptr[L.sent], B.ptr[L.sent] + B.len[L.sent]
            if L.sent + LANES < B.total:                 # the text a lane will take LANES sentences on:
                fs_prefetch(B.ptr[L.sent + LANES])       # a cold line of some str object otherwise
                fs_prefetch(B.ptr[L.sent + LANES] + B.len[L.sent + LANES])
            L.total = 0
            self._start(L.ctx, L.bo, B.bos)
            self._peek(L, B.eos)

    cdef void _run(self, _Batch* B) noexcept nogil:
        """Score the sentences B.next .. B.m - 1 in lockstep lanes (see score_batch)."""
        cdef _Lane lanes[LANES]
        cdef _Lane* L
        cdef int g, active = 0, length
        for g in range(LANES):
            lanes[g].sent = -1
            if self._lane_next(&lanes[g], B):
                self._prepare(lanes[g].ctx, lanes[g].w, lanes[g].key, lanes[g].slot)
                active += 1
        while active:
            # one pass a round: a lane's lookups were prefetched (_prepare) a whole round before
            # they are read, while the other lanes worked (not just their _prepare)
            for g in range(LANES):
                L = &lanes[g]
                if L.sent < 0:
                    continue
                L.total += self._lookup(L.ctx, L.bo, L.w, L.key, L.slot, L.ctx, L.bo, &length)
                if self._lane_next(L, B):
                    self._prepare(L.ctx, L.w, L.key, L.slot)
                else:
                    active -= 1

    def score_batch(self, sentences, bos=True, eos=True, threads=None):
        """log10 P of each sentence (a float64 array): score() over a list in one call, several
        sentences scored in lockstep so that their lookups' cache misses overlap. threads: how many
        threads share the batch, without the GIL (default: the CPUs this process may use, one per
        256 sentences at most); the numbers do not depend on it."""
        sentences = list(sentences)
        cdef Py_ssize_t m = len(sentences), i, n
        if threads is None:
            threads = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else (os.cpu_count() or 1), m // 256))
        cdef int T = check_int("threads", threads, 1, 256), j
        out_a = np.empty(m)
        cdef double[::1] out = out_a
        cdef vector[const char*] ptr
        cdef vector[int64_t] lens
        ptr.resize(m)
        lens.resize(m)
        for i in range(m):
            ptr[i] = self._utf8(sentences[i], &n)     # the strings stay alive in sentences
            lens[i] = n
        cdef _Batch B
        cdef int64_t shared[16]                         # the counter alone on its cache line
        B.ptr, B.len, B.out, B.next, B.bos, B.eos = ptr.data(), lens.data(), &out[0] if m else NULL, 0, bos, eos
        B.m, B.shared, B.total = m, <int64_t*> NULL, m
        if T == 1 or m < 2:
            with nogil:
                self._run(&B)
            return out_a
        # The threads take CHUNK sentences at a time from a shared counter: the shares balance
        # whatever the sentences' lengths and the threads' speeds (a thread the OS preempts
        # takes less), and a chunk's outputs are a cache line of their own, most of the time.
        shared[8] = 0
        B.shared, B.next, B.m = &shared[8], 0, 0
        jobs = []
        for j in range(T):
            job = _BatchJob()
            (<_BatchJob> job).core, (<_BatchJob> job).B = self, B
            jobs.append(job)
        workers = [threading.Thread(target=job.run) for job in jobs[1:]]
        for w in workers:
            w.start()
        jobs[0].run()                                   # this thread takes its part too
        for w in workers:
            w.join()
        return out_a

    def corpus_perplexity(self, sentences):
        """(including_oov, excluding_oov, tokens, oov) over sentences, as KenLM's query reports."""
        cdef Py_ssize_t i, n
        cdef const char* p
        cdef int64_t t = 0, o = 0
        cdef double total = 0, os = 0
        for s in sentences:
            p = self._utf8(s, &n)
            total += self._sentence(p, n, True, True, &t, &o, &os)
        if t == 0:
            raise ValueError("sentences: empty corpus")
        excl = 10.0 ** (-(total - os) / (t - o)) if t > o else float("nan")
        return 10.0 ** (-total / t), excl, t, o

    def full_scores(self, sentence, bos=True, eos=True):
        """(log10 prob, n-gram length, oov) of each word and of '</s>' (kenlm's generator)."""
        cdef Py_ssize_t n
        cdef const char* p = self._utf8(sentence, &n)
        cdef const char* e = p + n
        cdef const char* b
        cdef int32_t ctx[MAXCTX]
        cdef double bo[MAXCTX]
        cdef int32_t w
        cdef int length
        cdef double x
        out = []
        self._start(ctx, bo, bos)
        while _next_word(&p, e, &b):
            w = self._index(b, p - b)
            x = self._step(ctx, bo, w, ctx, bo, &length)
            out.append((x, length, w == 0))
        if eos:
            x = self._step(ctx, bo, self.eos, ctx, bo, &length)
            out.append((x, length, False))
        return iter(out)

    def BeginSentenceWrite(self, State state):
        """Set state to the start of a sentence (the context '<s>')."""
        self._start(state.ctx, state.bo, True)
        state.n = self.order - 1

    def NullContextWrite(self, State state):
        """Set state to the empty context."""
        self._start(state.ctx, state.bo, False)
        state.n = self.order - 1

    cdef inline void _check_state(self, State s) except *:
        if s.n != self.order - 1:
            raise ValueError("in_state: not written by this model (call BeginSentenceWrite or NullContextWrite)")

    def BaseScore(self, State in_state, word, State out_state):
        """log10 P(word | in_state); out_state becomes the context after word."""
        self._check_state(in_state)
        cdef int32_t w = self._word(word)
        cdef int length
        out_state.n = in_state.n
        return self._step(in_state.ctx, in_state.bo, w, out_state.ctx, out_state.bo, &length)

    def BaseFullScore(self, State in_state, word, State out_state):
        """BaseScore with the n-gram length matched and whether word is out of vocabulary."""
        self._check_state(in_state)
        cdef int32_t w = self._word(word)
        cdef int length
        out_state.n = in_state.n
        cdef double x = self._step(in_state.ctx, in_state.bo, w, out_state.ctx, out_state.bo, &length)
        return FullScoreReturn(x, length, w == 0)

    def __contains__(self, word):
        return self._word(word) != 0

    def index(self, word):
        """The model id of word (0, '<unk>', when it is not in the vocabulary)."""
        return self._word(word)


cdef class _BatchJob:
    """One thread's share of a score_batch call (its sentences B.next .. B.m - 1)."""
    cdef QueryCore core
    cdef _Batch B

    def run(self):
        with nogil:
            self.core._run(&self.B)
