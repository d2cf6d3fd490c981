// Global-norm gradient clipping (Dive into Deep Learning, chapter 8, "Recurrent Neural Network Implementation
// from Scratch"), one rule over all arrays together:
//     g <- min(1, theta / ||g||) g,   ||g|| = sqrt(sum_i sum_j g_ij^2)
// Contract: plain pointers to n contiguous elements, checked by the caller.
// The squares are summed in double for both float and double, so the norm of a
// float32 gradient does not lose digits with the number of parameters.
#pragma once
#include <cmath>
#include <cstddef>

namespace fastseq {

template <typename T>
double sumsq_n(const T* x, std::size_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // four chains: no loop-carried add latency
    std::size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += double(x[i]) * double(x[i]);
        s1 += double(x[i + 1]) * double(x[i + 1]);
        s2 += double(x[i + 2]) * double(x[i + 2]);
        s3 += double(x[i + 3]) * double(x[i + 3]);
    }
    for (; i < n; ++i) s0 += double(x[i]) * double(x[i]);
    return (s0 + s1) + (s2 + s3);
}

template <typename T>
void scale_n(T* x, std::size_t n, T alpha) {
    for (std::size_t i = 0; i < n; ++i) x[i] *= alpha;
}

// The factor applied by clipping; 1 when the norm is already within theta or is
// zero, and 1 (no change) when the norm is not finite, so a diverged step is
// reported by the returned norm rather than silently zeroed.
inline double clip_factor(double norm, double theta) {
    if (!std::isfinite(norm) || norm <= theta) return 1.0;
    return theta / norm;
}

}  // namespace fastseq
