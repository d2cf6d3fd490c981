// Matrix-vector products on a row-major matrix as it is stored, no packing:
// one row of activations against W (K x N, row stride ldw), in both directions.
//
// Why: a call that multiplies one row by W reads W once whatever the layout,
// so packing W first (a read and a write of W, the transposed pack a strided
// read) only adds to it. Packed panels pay when a register tile reuses each
// loaded panel for several rows (csrc/kernels.h, gemm_pb); for one row these
// stream W's rows directly:
//   axpy form   y (N) (+)= x (K) W          = sum_k x_k W[k, :]   (rows read in blocks of 8)
//   dot form    y (K) (+)= W g (N)          y_k = W[k, :] . g     (4 rows at a time)
// Each streams contiguous rows (a few streams at once, what the prefetchers follow).
#pragma once
#include <algorithm>
#include <cstring>
#include <functional>

#include "blas.h"
#include "kernels.h"
#include "pool.h"

namespace fastseq {
namespace matvec {

using kern::idx;

template <typename T, int VB>
FASTSEQ_INLINE void axpy_impl(int K, int N, const T* x, const T* W, idx ldw, T* y) {
    using V = typename kern::Vec<T, VB>::type;
    constexpr int L = VB / int(sizeof(T));
    constexpr int KB = 8;
    int k = 0;
    for (; k + KB <= K; k += KB) {
        const T* w[KB];
        T xs[KB];
#pragma GCC unroll 8
        for (int i = 0; i < KB; ++i) w[i] = W + idx(k + i) * ldw, xs[i] = x[k + i];
        int j = 0;
        for (; j + L <= N; j += L) {
            V a;
            std::memcpy(&a, y + j, sizeof(V));
#pragma GCC unroll 8
            for (int i = 0; i < KB; ++i) {
                V b;
                std::memcpy(&b, w[i] + j, sizeof(V));
                a += xs[i] * b;
            }
            std::memcpy(y + j, &a, sizeof(V));
        }
        for (; j < N; ++j) {
            T a = y[j];
            for (int i = 0; i < KB; ++i) a += xs[i] * w[i][j];
            y[j] = a;
        }
    }
    for (; k < K; ++k) {
        const T* w = W + idx(k) * ldw;
        const T xk = x[k];
        int j = 0;
        for (; j + L <= N; j += L) {
            V a, b;
            std::memcpy(&a, y + j, sizeof(V));
            std::memcpy(&b, w + j, sizeof(V));
            a += xk * b;
            std::memcpy(y + j, &a, sizeof(V));
        }
        for (; j < N; ++j) y[j] += xk * w[j];
    }
}

template <typename T, int VB>
FASTSEQ_INLINE void dot_impl(int K, int N, const T* W, idx ldw, const T* g, T* y, bool acc) {
    using V = typename kern::Vec<T, VB>::type;
    constexpr int L = VB / int(sizeof(T));
    constexpr int KB = 4;
    auto hsum = [](const V& v) {
        T t[L];
        std::memcpy(t, &v, sizeof(V));
        T s = 0;
        for (int i = 0; i < L; ++i) s += t[i];
        return s;
    };
    int k = 0;
    for (; k + KB <= K; k += KB) {
        const T* w[KB];
        V a[KB];
#pragma GCC unroll 4
        for (int i = 0; i < KB; ++i) w[i] = W + idx(k + i) * ldw, a[i] = V{};
        int j = 0;
        for (; j + L <= N; j += L) {
            V gv;
            std::memcpy(&gv, g + j, sizeof(V));
#pragma GCC unroll 4
            for (int i = 0; i < KB; ++i) {
                V b;
                std::memcpy(&b, w[i] + j, sizeof(V));
                a[i] += gv * b;
            }
        }
        for (int i = 0; i < KB; ++i) {
            T s = hsum(a[i]);
            for (int jj = j; jj < N; ++jj) s += w[i][jj] * g[jj];
            y[k + i] = acc ? y[k + i] + s : s;
        }
    }
    for (; k < K; ++k) {
        const T* w = W + idx(k) * ldw;
        V a = V{};
        int j = 0;
        for (; j + L <= N; j += L) {
            V gv, b;
            std::memcpy(&gv, g + j, sizeof(V));
            std::memcpy(&b, w + j, sizeof(V));
            a += gv * b;
        }
        T s = hsum(a);
        for (; j < N; ++j) s += w[j] * g[j];
        y[k] = acc ? y[k] + s : s;
    }
}

#ifdef FASTSEQ_DISPATCH
#define FASTSEQ_MATVEC_VERSIONS(T)                                                                             \
    FASTSEQ_AVX512 static void axpy_512(int K, int N, const T* x, const T* W, idx ldw, T* y) {                \
        axpy_impl<T, 64>(K, N, x, W, ldw, y);                                                                  \
    }                                                                                                         \
    FASTSEQ_AVX2 static void axpy_256(int K, int N, const T* x, const T* W, idx ldw, T* y) {                  \
        axpy_impl<T, 32>(K, N, x, W, ldw, y);                                                                  \
    }                                                                                                         \
    FASTSEQ_AVX512 static void dot_512(int K, int N, const T* W, idx ldw, const T* g, T* y, bool acc) {       \
        dot_impl<T, 64>(K, N, W, ldw, g, y, acc);                                                              \
    }                                                                                                         \
    FASTSEQ_AVX2 static void dot_256(int K, int N, const T* W, idx ldw, const T* g, T* y, bool acc) {         \
        dot_impl<T, 32>(K, N, W, ldw, g, y, acc);                                                              \
    }
FASTSEQ_MATVEC_VERSIONS(float)
FASTSEQ_MATVEC_VERSIONS(double)
#undef FASTSEQ_MATVEC_VERSIONS
#endif

// y (N) += x (K) W (K x N), on the calling thread
template <typename T>
inline void axpy_serial(int K, int N, const T* x, const T* W, idx ldw, T* y) {
#ifdef FASTSEQ_DISPATCH
    const int level = kern::isa_level();
    if (level == 2) return axpy_512(K, N, x, W, ldw, y);
    if (level == 1) return axpy_256(K, N, x, W, ldw, y);
#endif
    axpy_impl<T, 16>(K, N, x, W, ldw, y);
}

// From this many multiply-adds (K*N: 1 MB of float32 weights, twice a core's
// L2 on the 2-core EPYC this was measured on) a one-row product streams W from
// L3 or memory, and each core streaming its own columns nearly halves it; a
// smaller W is read from the caller's caches faster than a pool worker takes
// its share (a few microseconds).
constexpr double kSplitMacs = 262144;

// y (N) = x (K) W (K x N) (+ y when acc). A large W is split by columns between
// the pool's workers (each owns whole cache lines of y, so none shares a line
// with another): a decoder's B = 1 call is one row against every weight
// matrix. Runs on the calling thread when the pool is taken (this product is
// already one batch slice of a parallel call), when the user set one thread,
// or when this process may use one core.
template <typename T>
inline void axpy(int K, int N, const T* x, const T* W, idx ldw, T* y, bool acc) {
    if (!acc) std::fill(y, y + N, T(0));
    if (double(K) * N >= kSplitMacs) {
        const int parts = std::min(blas::SingleThreaded::user_threads(), usable_cores());
        constexpr int kLine = 64 / int(sizeof(T));
        const int lines = (N + kLine - 1) / kLine;
        if (parts >= 2 && lines >= parts) {
            struct Args {
                int K, N, parts, lines;
                const T* x;
                const T* W;
                idx ldw;
                T* y;
            } a{K, N, parts, lines, x, W, ldw, y};
            // one pointer captured: std::function keeps it without allocating
            const std::function<void(int)> job = [p = &a](int q) {
                const int c0 = std::min(p->N, p->lines * q / p->parts * kLine);
                const int c1 = std::min(p->N, p->lines * (q + 1) / p->parts * kLine);
                axpy_serial(p->K, c1 - c0, p->x, p->W + c0, p->ldw, p->y + c0);
            };
            if (SlicePool::instance().try_run(parts, job)) return;
        }
    }
    axpy_serial(K, N, x, W, ldw, y);
}

// y (K) = W (K x N) g (N) (+ y when acc): one row g against W^T
template <typename T>
inline void dot(int K, int N, const T* W, idx ldw, const T* g, T* y, bool acc) {
#ifdef FASTSEQ_DISPATCH
    const int level = kern::isa_level();
    if (level == 2) return dot_512(K, N, W, ldw, g, y, acc);
    if (level == 1) return dot_256(K, N, W, ldw, g, y, acc);
#endif
    dot_impl<T, 16>(K, N, W, ldw, g, y, acc);
}

}  // namespace matvec
}  // namespace fastseq
