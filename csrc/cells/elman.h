// The plain RNN (Elman), the book's H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h),
// phi = tanh or relu (Dive into Deep Learning, chapter 8, "Recurrent Neural
// Networks"). One header for both activations: `variant` picks phi.
#pragma once
#include "cell.h"

namespace fastseq {
namespace rnn {

enum class Act { Tanh, Relu };

namespace cellk {
FASTSEQ_CLONES static void relu_back(const float* dh, const float* h, float* dz, idx n) {
    for (idx i = 0; i < n; ++i) dz[i] = dh[i] * float(h[i] > 0.0f);
}
FASTSEQ_CLONES static void relu_back(const double* dh, const double* h, double* dz, idx n) {
    for (idx i = 0; i < n; ++i) dz[i] = dh[i] * double(h[i] > 0.0);
}
}  // namespace cellk

template <typename T>
struct ElmanCell {
    static constexpr int G = 1, P = 1, X = 0;
    static constexpr bool kAliasZH = true, kSepGh = false, kDirectH = false;
    const T* W_hh;
    int H;
    Act act;
    PackedRecurrent<T> pk;

    ElmanCell(const T* W_hh_, const T* /*b_hn*/, int H_, int variant)
        : W_hh(W_hh_), H(H_), act(variant ? Act::Relu : Act::Tanh) {}
    static std::size_t workspace(int H) { return PackedRecurrent<T>::size(H, G); }
    void prepare(T* ws) { pk.pack(W_hh, H, G, ws); }
    static std::size_t step_scratch(int, int) { return 0; }

    // 2. Z_t += H_{t-1} W_hh ; 3. H_t = phi(Z_t). z and h may alias: phi' is
    // computed from H_t alone.
    void forward_step(int R, const T* const* prev, T* z, T* const*, T* h, T*) const {
        pk.forward(R, H, G, prev[0], z, true);
        pointwise(R, prev, z, nullptr, nullptr, h);
    }
    void pointwise(int R, const T* const*, T* z, const T*, T* const*, T* h) const {
        const idx n = idx(R) * H;
        if (act == Act::Tanh) kern::tanh_n(z, h, n);
        else kern::relu_n(z, h, n);
    }
    // 3'. dZ_t = dH_t * phi'(H_t)  (a NaN in dH stays NaN, as in the reference)
    void backward_step(int R, const T* const* dnext, const T* const*, const T*, const T* const*, const T* h, T* dz,
                       T*, T* const*) const {
        const idx n = idx(R) * H;
        if (act == Act::Tanh) kern::dtanh_n(dnext[0], h, dz, n);
        else cellk::relu_back(dnext[0], h, dz, n);
    }
    void message(int M, const T* dgh, T* out, bool acc) const { pk.message(M, H, G, dgh, out, acc); }
};

}  // namespace rnn
}  // namespace fastseq
