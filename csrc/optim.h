// Adam's update over one parameter (Kingma and Ba, "Adam: A Method for Stochastic Optimization", 2015)
// with AdamW's decoupled weight decay wd (Loshchilov and Hutter, "Decoupled Weight Decay Regularization",
// ICLR 2019), fused into one pass: fastseq.optim.Adam's NumPy update (fastseq/reference/optim.py, the
// reference) makes six float64 temporaries of the parameter's size and seven passes over memory per step.
//     p <- p (1 - lr wd);   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2;
//     p <- p - lr (m / c1) / (sqrt(v / c2) + eps)
// with c1 = 1 - b1^t, c2 = 1 - b2^t (the bias corrections of step t), the moments in double whatever
// the parameter's type, the decayed parameter computed in double and rounded to the parameter's type
// (see adam_update_body), and the step rounded to the parameter's type before it is subtracted.
// Contract: n contiguous elements in each array, no two of p, g, m, v overlapping, hyperparameters
// checked by the caller (csrc/module.cpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kernels.h"
#include "pool.h"

namespace fastseq {

// Every operation is rounded where the reference rounds it, in its order, so both give the same bits:
// a fused multiply-add would round once where the reference rounds twice, hence no contraction (for
// every function down to the end of the update, so the versions inline the body they share). The loop
// vectorises only without errno from the square root (of v / c2 >= 0): CMakeLists.txt's -fno-math-errno.
#if defined(__clang__)
#define FASTSEQ_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define FASTSEQ_NO_CONTRACT
#if defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
#endif

template <typename T>
FASTSEQ_INLINE void adam_update_body(T* __restrict p, const T* __restrict g, double* __restrict m,
                                     double* __restrict v, std::size_t n, double lr, double b1, double b2,
                                     double c1, double c2, double eps, double wd) {
    FASTSEQ_NO_CONTRACT
    const double a1 = 1 - b1, a2 = 1 - b2;
    // The decay factor in double, not T: float's spacing below 1 is 6e-8, so in float a decay lr wd of
    // 9e-8 (lr = wd = 3e-4) would become 1.19e-7. The decayed parameter is rounded to T before the
    // step is subtracted, torch.optim.AdamW's order (param.mul_, then addcdiv_); with wd = 0 the factor
    // is exactly 1 and the product changes no bit, so the update is the one without decay.
    const double keep = 1 - lr * wd;
    for (std::size_t i = 0; i < n; ++i) {
        const double gi = double(g[i]);
        const double mi = m[i] * b1 + a1 * gi;
        const double vi = v[i] * b2 + (a2 * gi) * gi;
        m[i] = mi;
        v[i] = vi;
        const T pi = T(double(p[i]) * keep);
        p[i] = pi - T(lr * (mi / c1) / (std::sqrt(vi / c2) + eps));
    }
}

// Three divisions and a square root an element: the divider's throughput, not memory, bounds the
// loop, and it is wider in AVX-512 and AVX2 than in the baseline's SSE2 (the wheel's), so each
// instruction set gets its version, chosen as the kernels choose theirs (kern::isa_level).
#ifdef FASTSEQ_DISPATCH
#define FASTSEQ_ADAM_VERSIONS(T)                                                                              \
    FASTSEQ_AVX512 static void adam_update_512(T* p, const T* g, double* m, double* v, std::size_t n,        \
                                               double lr, double b1, double b2, double c1, double c2,         \
                                               double eps, double wd) {                                       \
        adam_update_body(p, g, m, v, n, lr, b1, b2, c1, c2, eps, wd);                                         \
    }                                                                                                         \
    FASTSEQ_AVX2 static void adam_update_256(T* p, const T* g, double* m, double* v, std::size_t n,          \
                                             double lr, double b1, double b2, double c1, double c2,           \
                                             double eps, double wd) {                                         \
        adam_update_body(p, g, m, v, n, lr, b1, b2, c1, c2, eps, wd);                                         \
    }
FASTSEQ_ADAM_VERSIONS(float)
FASTSEQ_ADAM_VERSIONS(double)
#undef FASTSEQ_ADAM_VERSIONS
#endif

template <typename T>
void adam_update_n(T* p, const T* g, double* m, double* v, std::size_t n, double lr, double b1, double b2,
                   double c1, double c2, double eps, double wd) {
#ifdef FASTSEQ_DISPATCH
    const int level = kern::isa_level();
    if (level == 2) return adam_update_512(p, g, m, v, n, lr, b1, b2, c1, c2, eps, wd);
    if (level == 1) return adam_update_256(p, g, m, v, n, lr, b1, b2, c1, c2, eps, wd);
#endif
    adam_update_body(p, g, m, v, n, lr, b1, b2, c1, c2, eps, wd);
}

#if !defined(__clang__) && defined(__GNUC__)
#pragma GCC pop_options
#endif
#undef FASTSEQ_NO_CONTRACT

// The smallest share of a parameter worth a thread: waking a pool worker costs microseconds, a share
// this size (about 1 MB of moments) tens of them. Smaller parameters are updated on the calling thread.
constexpr std::size_t kAdamMinShare = 1 << 15;

// adam_update_n over `parts` contiguous shares side by side (the elements are independent, so the
// result does not depend on the split); every share but the last is a whole number of 64 bytes of p
// (and of m and v), so two threads write to no common cache line when the arrays start on a line
// (NumPy only guarantees 16 bytes: then the one line at a boundary is shared, a cost, never a
// wrong result).
template <typename T>
void adam_update(T* p, const T* g, double* m, double* v, std::size_t n, double lr, double b1, double b2,
                 double c1, double c2, double eps, double wd, int parts) {
    const std::size_t most = n / kAdamMinShare;
    if (parts > 1 && most >= 2) {
        parts = int(std::min<std::size_t>(std::size_t(parts), most));
        constexpr std::size_t line = 64 / sizeof(T);
        const std::size_t share = ((n + parts - 1) / parts + line - 1) / line * line;  // parts * share >= n
        SlicePool::instance().run(parts, [&](int q) {
            const std::size_t lo = std::min(n, q * share), hi = std::min(n, lo + share);
            adam_update_n(p + lo, g + lo, m + lo, v + lo, hi - lo, lr, b1, b2, c1, c2, eps, wd);
        });
        return;
    }
    adam_update_n(p, g, m, v, n, lr, b1, b2, c1, c2, eps, wd);
}

}  // namespace fastseq
