// Small dense kernels for the RNN time loop: a GEMM against a pre-packed right
// operand, and vectorised float exp/tanh. Free of pybind11.
//
// Why not BLAS here: the recurrent product H_{t-1} W_hh is small (R rows of a
// batch slice) and repeated T times with the same W_hh. A BLAS call repacks
// W_hh every time and pays its fixed overhead per step; here W_hh is packed once
// per call and each step only streams the packed panels.
//
// The wheel is built for baseline x86-64 (SSE2), so the hot loops are compiled
// several times with target_clones and the best version is picked at load time
// by the CPU (AVX-512, AVX2+FMA, or the baseline).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FASTSEQ_NO_CLONES)
#define FASTSEQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTSEQ_CLONES
#endif
#define FASTSEQ_INLINE inline __attribute__((always_inline))

namespace fastseq {
namespace kern {

using idx = std::ptrdiff_t;

// Vectors of VB bytes (64: one AVX-512 register, 32: AVX2, 16: SSE2). Each
// instruction-set version uses its native width: a wider generic vector than the
// target has is lowered element by element by the compiler (measured 75x slower).
template <typename T, int VB>
struct Vec {
    typedef T type __attribute__((vector_size(VB)));
};
// Columns of a packed panel: two vectors, so a register tile of MR rows keeps
// 2*MR independent accumulators (enough to cover the FMA latency).
template <typename T>
constexpr int NR = int(128 / sizeof(T));

// Elements a packed K x N operand takes: ceil(N / NR) panels of K x NR.
template <typename T>
std::size_t packed_size(int K, int N) {
    return std::size_t((N + NR<T> - 1) / NR<T>) * std::size_t(K) * NR<T>;
}

// Packs op(B) (K x N) into panels: out[(p*K + k)*NR + j] = op(B)[k, p*NR + j],
// zero beyond N. trans: B is stored N x K (op(B) = B^T), row stride ldb.
template <typename T>
void pack_b(int K, int N, const T* B, idx ldb, bool trans, T* out) {
    constexpr int W = NR<T>;
    for (int p0 = 0; p0 < N; p0 += W) {
        const int w = std::min(W, N - p0);
        T* o = out + idx(p0 / W) * K * W;
        for (int k = 0; k < K; ++k, o += W) {
            // rows are short (W elements): plain loops, not a library call per row
            if (!trans) {
                const T* src = B + idx(k) * ldb + p0;
                for (int j = 0; j < w; ++j) o[j] = src[j];
            } else {
                for (int j = 0; j < w; ++j) o[j] = B[idx(p0 + j) * ldb + k];
            }
            for (int j = w; j < W; ++j) o[j] = T(0);
        }
    }
}

// out[0, w) = row (+ out when acc): one row of a register tile of NV vectors, w <= NV lanes of
// it valid. All lanes valid: vector stores (an element loop cost a fifth of the kernel).
template <typename T, int VB, int NV>
FASTSEQ_INLINE void store_row(const typename Vec<T, VB>::type* row, T* out, int w, bool acc) {
    using V = typename Vec<T, VB>::type;
    constexpr int L = VB / int(sizeof(T));
    if (w == NV * L) {
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
            V o = row[v];
            if (acc) {
                V x;
                std::memcpy(&x, out + v * L, sizeof(V));
                o += x;
            }
            std::memcpy(out + v * L, &o, sizeof(V));
        }
        return;
    }
    T tmp[NV * L];
    std::memcpy(tmp, row, sizeof(tmp));
    if (acc)
        for (int j = 0; j < w; ++j) out[j] += tmp[j];
    else
        for (int j = 0; j < w; ++j) out[j] = tmp[j];
}

// One register tile of C = op(A) Bp (+ C when acc): MR rows from row i0 x NVU
// vectors from vector vo of a panel bp (w valid columns of the panel, counted
// from its start). Only the first mr <= MR rows are real: the rest read row
// i0 + mr - 1 again (never out of bounds) and are not stored.
template <typename T, int VB, int MR, int NVU, bool TA>
FASTSEQ_INLINE void tile_pb(int K, const T* A, idx lda, int i0, int mr, const T* bp, int vo, T* C, idx ldc, int w,
                            bool acc) {
    using V = typename Vec<T, VB>::type;
    constexpr int W = NR<T>, L = VB / int(sizeof(T));
    const T* a[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
        const int row = i0 + std::min(i, mr - 1);
        a[i] = TA ? A + row : A + idx(row) * lda;
    }
    V c[MR][NVU];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
        for (int v = 0; v < NVU; ++v) c[i][v] = V{};
    const T* b = bp + vo * L;
    for (int k = 0; k < K; ++k, b += W) {
        V bv[NVU];
#pragma GCC unroll 16
        for (int v = 0; v < NVU; ++v) std::memcpy(&bv[v], b + v * L, sizeof(V));
        const idx ka = TA ? idx(k) * lda : k;
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) {
            const T av = a[i][ka];
#pragma GCC unroll 16
            for (int v = 0; v < NVU; ++v) c[i][v] += av * bv[v];
        }
    }
    const int c0 = vo * L, wv = std::min(w - c0, NVU * L);  // valid columns of this tile
    for (int i = 0; i < mr; ++i) store_row<T, VB, NVU>(c[i], C + idx(i0 + i) * ldc + c0, wv, acc);
}

// C (M x N, ldc) = op(A) (M x K) Bp (+ C when acc). ta: A is stored K x M
// (op(A) = A^T), row stride lda. Tiles of MR rows x one whole panel (NR
// columns in NR*sizeof(T)/VB vectors).
template <typename T, int VB, int MR, bool TA>
FASTSEQ_INLINE void gemm_pb_impl(int M, int N, int K, const T* A, idx lda, const T* Bp, T* C, idx ldc, bool acc) {
    constexpr int W = NR<T>, L = VB / int(sizeof(T)), NV = W / L;
    for (int p0 = 0; p0 < N; p0 += W) {
        const int w = std::min(W, N - p0);
        const T* bp = Bp + idx(p0 / W) * K * W;
        for (int i0 = 0; i0 < M; i0 += MR)
            tile_pb<T, VB, MR, NV, TA>(K, A, lda, i0, std::min(MR, M - i0), bp, 0, C + p0, ldc, w, acc);
    }
}

// The same product as gemm_pb_impl for a 16-register ISA (AVX2), with tiles
// that waste no rows: 6 rows x half a panel (12 accumulators, 2 panel loads and
// 6 broadcasts per k, as the BLAS kernels for this ISA do), so a batch slice of
// 16 rows is 6 + 6 + 4 rows instead of six 3-row tiles of which the last
// computes the one remaining row three times (measured on an AVX2 EPYC, one
// core, the GRU's H = 512 recurrent product of 16 rows: 59 -> 76 GFLOP/s).
// The leftover rows (M mod 6) take 4- or 5-row half-panel tiles, or 1-3 rows
// over the whole panel. Each element is the same sum in the same order as
// gemm_pb_impl's, so both give identical results.
template <typename T, int VB, bool TA>
FASTSEQ_INLINE void gemm_pb_rows(int M, int N, int K, const T* A, idx lda, const T* Bp, T* C, idx ldc, bool acc) {
    constexpr int W = NR<T>, L = VB / int(sizeof(T)), NV = W / L, HV = NV / 2;
    static_assert(NV % 2 == 0, "half panels");
    const int full = M - M % 6, rem = M % 6;
    for (int p0 = 0; p0 < N; p0 += W) {
        const int w = std::min(W, N - p0);
        const T* bp = Bp + idx(p0 / W) * K * W;
        T* cp = C + p0;
        for (int h = 0; h < 2; ++h) {
            if (h * HV * L >= w) break;  // the panel's second half is all padding
            for (int i0 = 0; i0 < full; i0 += 6)
                tile_pb<T, VB, 6, HV, TA>(K, A, lda, i0, 6, bp, h * HV, cp, ldc, w, acc);
            if (rem == 5) tile_pb<T, VB, 5, HV, TA>(K, A, lda, full, 5, bp, h * HV, cp, ldc, w, acc);
            if (rem == 4) tile_pb<T, VB, 4, HV, TA>(K, A, lda, full, 4, bp, h * HV, cp, ldc, w, acc);
        }
        if (rem == 3) tile_pb<T, VB, 3, NV, TA>(K, A, lda, full, 3, bp, 0, cp, ldc, w, acc);
        if (rem == 2) tile_pb<T, VB, 2, NV, TA>(K, A, lda, full, 2, bp, 0, cp, ldc, w, acc);
        if (rem == 1) tile_pb<T, VB, 1, NV, TA>(K, A, lda, full, 1, bp, 0, cp, ldc, w, acc);
    }
}

// y[cols of panels p0..p1) += x (1 x K) Bp: one row against packed panels,
// two k-steps in flight to cover the FMA latency.
// reverse: visit the panels last to first. A caller that streams the same
// matrix every step alternates the direction, so the panels it read last are
// the first it needs again and are still in cache when the matrix is a little
// larger than the cache (plain LRU order would miss on every panel).
template <typename T, int VB>
FASTSEQ_INLINE void gemv_pb_impl(int K, const T* x, const T* Bp, int p0, int p1, T* y, int N, bool reverse) {
    using V = typename Vec<T, VB>::type;
    constexpr int W = NR<T>, L = VB / int(sizeof(T)), NV = W / L;
    for (int q = p0; q < p1; ++q) {
        const int p = reverse ? p0 + p1 - 1 - q : q;
        const T* b = Bp + idx(p) * K * W;
        V a0[NV], a1[NV];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) a0[v] = a1[v] = V{};
        int k = 0;
        for (; k + 2 <= K; k += 2, b += 2 * W) {
#pragma GCC unroll 16
            for (int v = 0; v < NV; ++v) {
                V b0, b1;
                std::memcpy(&b0, b + v * L, sizeof(V));
                std::memcpy(&b1, b + W + v * L, sizeof(V));
                a0[v] += x[k] * b0;
                a1[v] += x[k + 1] * b1;
            }
        }
        for (; k < K; ++k, b += W) {
#pragma GCC unroll 16
            for (int v = 0; v < NV; ++v) {
                V b0;
                std::memcpy(&b0, b + v * L, sizeof(V));
                a0[v] += x[k] * b0;
            }
        }
        T tmp[W];
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
            const V sum = a0[v] + a1[v];
            std::memcpy(tmp + v * L, &sum, sizeof(V));
        }
        const int w = std::min(W, N - p * W);
        for (int j = 0; j < w; ++j) y[p * W + j] += tmp[j];
    }
}

// One version per instruction set, each with its vector width and the tile
// that fits its registers: AVX-512 8 rows x 2 zmm (16 accumulators of 32, and
// 16- or 32-row slices need no padding rows); AVX2 6 rows x 2 ymm (12 of 16,
// gemm_pb_rows);
// SSE2 1 row x 8 xmm (8 of 16).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(FASTSEQ_NO_CLONES)
#define FASTSEQ_DISPATCH 1
#define FASTSEQ_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define FASTSEQ_AVX2 __attribute__((target("avx2,fma")))
// FASTSEQ_ISA=avx2 or baseline lowers the level (never raises it), so the tests
// can run the other versions on a machine that would always pick AVX-512.
inline int isa_level() {
    static const int level = [] {
        __builtin_cpu_init();
        int l = 0;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("fma"))
            l = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            l = 1;
        if (const char* e = std::getenv("FASTSEQ_ISA")) {
            if (std::strcmp(e, "avx2") == 0) l = std::min(l, 1);
            if (std::strcmp(e, "baseline") == 0) l = 0;
        }
        return l;
    }();
    return level;
}
#define FASTSEQ_VERSIONS(T)                                                                                    \
    FASTSEQ_AVX512 static void gemm_pb_512(int M, int N, int K, const T* A, idx lda, bool ta, const T* Bp,    \
                                           T* C, idx ldc, bool acc) {                                           \
        if (ta) gemm_pb_impl<T, 64, 8, true>(M, N, K, A, lda, Bp, C, ldc, acc);                                  \
        else gemm_pb_impl<T, 64, 8, false>(M, N, K, A, lda, Bp, C, ldc, acc);                                    \
    }                                                                                                           \
    FASTSEQ_AVX2 static void gemm_pb_256(int M, int N, int K, const T* A, idx lda, bool ta, const T* Bp,      \
                                         T* C, idx ldc, bool acc) {                                             \
        if (ta) gemm_pb_rows<T, 32, true>(M, N, K, A, lda, Bp, C, ldc, acc);                                     \
        else gemm_pb_rows<T, 32, false>(M, N, K, A, lda, Bp, C, ldc, acc);                                       \
    }                                                                                                           \
    FASTSEQ_AVX512 static void gemv_pb_512(int K, const T* x, const T* Bp, int p0, int p1, T* y, int N,       \
                                           bool reverse) {                                                      \
        gemv_pb_impl<T, 64>(K, x, Bp, p0, p1, y, N, reverse);                                                   \
    }                                                                                                           \
    FASTSEQ_AVX2 static void gemv_pb_256(int K, const T* x, const T* Bp, int p0, int p1, T* y, int N,         \
                                         bool reverse) {                                                        \
        gemv_pb_impl<T, 32>(K, x, Bp, p0, p1, y, N, reverse);                                                   \
    }
FASTSEQ_VERSIONS(float)
FASTSEQ_VERSIONS(double)
#endif

template <typename T>
static void gemm_pb(int M, int N, int K, const T* A, idx lda, bool ta, const T* Bp, T* C, idx ldc, bool acc) {
#ifdef FASTSEQ_DISPATCH
    const int level = isa_level();
    if (level == 2) return gemm_pb_512(M, N, K, A, lda, ta, Bp, C, ldc, acc);
    if (level == 1) return gemm_pb_256(M, N, K, A, lda, ta, Bp, C, ldc, acc);
#endif
    if (ta) gemm_pb_impl<T, 16, 1, true>(M, N, K, A, lda, Bp, C, ldc, acc);
    else gemm_pb_impl<T, 16, 1, false>(M, N, K, A, lda, Bp, C, ldc, acc);
}

template <typename T>
static void gemv_pb(int K, const T* x, const T* Bp, int p0, int p1, T* y, int N, bool reverse) {
#ifdef FASTSEQ_DISPATCH
    const int level = isa_level();
    if (level == 2) return gemv_pb_512(K, x, Bp, p0, p1, y, N, reverse);
    if (level == 1) return gemv_pb_256(K, x, Bp, p0, p1, y, N, reverse);
#endif
    gemv_pb_impl<T, 16>(K, x, Bp, p0, p1, y, N, reverse);
}

// exp for float, branch-free so it vectorises: x = n ln2 + r (Cody-Waite split
// of ln2), e^r by its Taylor series to r^7 (|r| <= ln2/2: error < 1 ulp),
// 2^n through the exponent bits. Inputs are clamped to the normal range
// (below e^-87.3 it returns ~1.2e-38 rather than a denormal or 0); +-inf are
// clamped too, NaN stays NaN.
FASTSEQ_INLINE float exp_approx(float x) {
    x = std::min(std::max(x, -87.3f), 88.7f);
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    // n is an integer in [-126, 128] for every number; NaN (which the clamp
    // above lets through, and which p carries to the result) would make the
    // conversion to int undefined behaviour, so its exponent is taken as 0.
    // The shift is done unsigned: a negative left shift is undefined too.
    const std::int32_t e = std::int32_t(n == n ? n : 0.0f) + 127;
    const std::uint32_t bits = std::uint32_t(e) << 23;
    float s;
    std::memcpy(&s, &bits, sizeof s);
    return p * s;
}

// tanh for float: (1 - e)/(1 + e) with e = exp(-2|x|) away from 0, where the
// subtraction loses no digits; the odd Taylor series to x^9 below |x| = 0.2
// (next term < 1e-9 relative). |x| >= 9 gives +-1 (tanh(9) rounds to 1 in float).
FASTSEQ_INLINE float tanh_approx(float x) {
    const float a = std::min(std::fabs(x), 9.0f);
    const float e = exp_approx(-2.0f * a);
    const float big = std::copysign((1.0f - e) / (1.0f + e), x);
    const float x2 = x * x;
    float p = 62.0f / 2835;
    p = p * x2 - 17.0f / 315;
    p = p * x2 + 2.0f / 15;
    p = p * x2 - 1.0f / 3;
    const float small = x + x * x2 * p;
    return a < 0.2f ? small : big;
}

FASTSEQ_CLONES static void tanh_n(const float* z, float* h, idx n) {
    for (idx i = 0; i < n; ++i) h[i] = tanh_approx(z[i]);
}
// float64 keeps libm: the reference comparison is to 1e-10 there.
static void tanh_n(const double* z, double* h, idx n) {
    for (idx i = 0; i < n; ++i) h[i] = std::tanh(z[i]);
}
FASTSEQ_CLONES static void exp_n(float* x, idx n) {
    for (idx i = 0; i < n; ++i) x[i] = exp_approx(x[i]);
}
static void exp_n(double* x, idx n) {
    for (idx i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// relu as max(z, 0) computes it in NumPy and PyTorch: NaN stays NaN, so a
// diverged model shows in its loss instead of being silently repaired.
template <typename T>
FASTSEQ_INLINE T relu(T z) {
    return z <= T(0) ? T(0) : z;
}
template <typename T>
inline void relu_n(const T* z, T* h, idx n) {
    for (idx i = 0; i < n; ++i) h[i] = relu(z[i]);
}

// dz = dh * (1 - h^2) and relu' versions: trivially vectorised, cloned for width.
FASTSEQ_CLONES static void dtanh_n(const float* dh, const float* h, float* dz, idx n) {
    for (idx i = 0; i < n; ++i) dz[i] = dh[i] * (1.0f - h[i] * h[i]);
}
FASTSEQ_CLONES static void dtanh_n(const double* dh, const double* h, double* dz, idx n) {
    for (idx i = 0; i < n; ++i) dz[i] = dh[i] * (1.0 - h[i] * h[i]);
}

}  // namespace kern
}  // namespace fastseq
