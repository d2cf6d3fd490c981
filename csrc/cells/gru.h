// nn.GRU's cell: gate blocks r, z, n (PyTorch's order and biases); the reset
// gate multiplies the hidden projection including its bias b_hn:
//   2. r = sigma(gi_r + gh_r)   3. z = sigma(gi_z + gh_z)
//   4. n = tanh(gi_n + r * gh_n)   (gh_n = h W_hn + b_hn)
//   5. h' = (1 - z) * n + z * h
// gi = x W_xh + b_h (b_h holds PyTorch's b_ir + b_hr, b_iz + b_hz, b_in).
#pragma once
#include "cell.h"

namespace fastseq {
namespace rnn {

namespace cellk {
template <typename T>
FASTSEQ_INLINE void gru_fwd(int R, int H, const T* hp, T* z, const T* gh, const T* b_hn, T* ghn_out, T* h) {
    const idx G3 = 3 * idx(H);
    for (int r = 0; r < R; ++r) {
        T* zr = z + r * G3;
        const T* g = gh + r * G3;
        const T* hr = hp + idx(r) * H;
        T* e = ghn_out + idx(r) * H;
        T* o = h + idx(r) * H;
        for (int j = 0; j < H; ++j) {
            const T rg = sigmoid1(zr[j] + g[j]);                 // 2.
            const T ug = sigmoid1(zr[H + j] + g[H + j]);         // 3.
            const T ghn = g[2 * H + j] + b_hn[j];
            const T n = tanh1(zr[2 * H + j] + rg * ghn);         // 4.
            o[j] = (T(1) - ug) * n + ug * hr[j];                 // 5.
            zr[j] = rg, zr[H + j] = ug, zr[2 * H + j] = n, e[j] = ghn;
        }
    }
}
template <typename T>
FASTSEQ_INLINE void gru_bwd(int R, int H, const T* dh, const T* hp, const T* z, const T* ghn, T* dz, T* dgh, T* dprev) {
    const idx G3 = 3 * idx(H);
    for (int r = 0; r < R; ++r) {
        const T* zr = z + r * G3;
        T* a = dz + r * G3;
        T* b = dgh + r * G3;
        const idx o = idx(r) * H;
        for (int j = 0; j < H; ++j) {
            const T rg = zr[j], ug = zr[H + j], n = zr[2 * H + j], d = dh[o + j];
            const T dan = d * (T(1) - ug) * (T(1) - n * n);              // 5'., 4'.
            const T dar = dan * ghn[o + j] * rg * (T(1) - rg);            // 4'., 2'.
            const T daz = d * (hp[o + j] - n) * ug * (T(1) - ug);         // 5'., 3'.
            a[j] = dar, a[H + j] = daz, a[2 * H + j] = dan;
            b[j] = dar, b[H + j] = daz, b[2 * H + j] = dan * rg;
            dprev[o + j] = d * ug;                                        // 5'. through z * h
        }
    }
}
FASTSEQ_CLONES static void gru_fwd_f(int R, int H, const float* hp, float* z, const float* gh, const float* b_hn,
                                     float* e, float* h) {
    gru_fwd(R, H, hp, z, gh, b_hn, e, h);
}
FASTSEQ_CLONES static void gru_fwd_f(int R, int H, const double* hp, double* z, const double* gh, const double* b_hn,
                                     double* e, double* h) {
    gru_fwd(R, H, hp, z, gh, b_hn, e, h);
}
FASTSEQ_CLONES static void gru_bwd_f(int R, int H, const float* dh, const float* hp, const float* z, const float* ghn,
                                     float* dz, float* dgh, float* dprev) {
    gru_bwd(R, H, dh, hp, z, ghn, dz, dgh, dprev);
}
FASTSEQ_CLONES static void gru_bwd_f(int R, int H, const double* dh, const double* hp, const double* z,
                                     const double* ghn, double* dz, double* dgh, double* dprev) {
    gru_bwd(R, H, dh, hp, z, ghn, dz, dgh, dprev);
}
}  // namespace cellk

template <typename T>
struct GRUCell {
    static constexpr int G = 3, P = 1, X = 1;  // extra: gh_n
    static constexpr bool kAliasZH = false, kSepGh = true, kDirectH = true;
    const T* W_hh;
    const T* b_hn;
    int H;
    PackedRecurrent<T> pk;

    GRUCell(const T* W_hh_, const T* b_hn_, int H_, int) : W_hh(W_hh_), b_hn(b_hn_), H(H_) {}
    static std::size_t workspace(int H) { return PackedRecurrent<T>::size(H, G); }
    void prepare(T* ws) { pk.pack(W_hh, H, G, ws); }
    static std::size_t step_scratch(int R, int H) { return std::size_t(R) * G * H; }

    void forward_step(int R, const T* const* prev, T* z, T* const* ext, T* h, T* gh) const {
        pk.forward(R, H, G, prev[0], gh, false);  // 1. gh = h W_hh (b_hn added to its n block)
        cellk::gru_fwd_f(R, H, prev[0], z, gh, b_hn, ext[0], h);
    }
    void backward_step(int R, const T* const* dnext, const T* const* prev, const T* z, const T* const* ext,
                       const T*, T* dz, T* dgh, T* const* dprev) const {
        cellk::gru_bwd_f(R, H, dnext[0], prev[0], z, ext[0], dz, dgh, dprev[0]);
    }
    void message(int M, const T* dgh, T* out, bool acc) const { pk.message(M, H, G, dgh, out, acc); }
};

}  // namespace rnn
}  // namespace fastseq
