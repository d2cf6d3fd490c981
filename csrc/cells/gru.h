// nn.GRU's cell: gate blocks r, z, n (PyTorch's order and biases); the reset
// gate multiplies the hidden projection including its bias b_hn:
//   2. r = sigma(gi_r + gh_r)   3. z = sigma(gi_z + gh_z)
//   4. n = tanh(gi_n + r * gh_n)   (gh_n = h W_hn + b_hn)
//   5. h' = (1 - z) * n + z * h
// gi = x W_xh + b_h (b_h holds PyTorch's b_ir + b_hr, b_iz + b_hz, b_in).
#pragma once
#include <cstring>

#include "cell.h"

namespace fastseq {
namespace rnn {

namespace cellk {
// One row at a time, in plain passes over H entries (see cell.h).
template <typename T>
FASTSEQ_INLINE void gru_fwd_row(int H, const T* hp, T* zr, T* zz, T* zn, const T* gn, const T* b_hn, T* e, T* out) {
    for (int j = 0; j < H; ++j) e[j] = gn[j] + b_hn[j];                                 // gh_n
    for (int j = 0; j < H; ++j) zn[j] += zr[j] * e[j];
    tanh_row(zn, zn, H);                                                                 // 4. n
    for (int j = 0; j < H; ++j) out[j] = (T(1) - zz[j]) * zn[j] + zz[j] * hp[j];      // 5.
}
template <typename T>
FASTSEQ_INLINE void gru_fwd(int R, int H, const T* hp, T* z, const T* gh, const T* b_hn, T* ghn_out, T* h) {
    for (int r = 0; r < R; ++r) {
        T* a = z + idx(r) * 3 * H;
        const T* g = gh + idx(r) * 3 * H;
        const idx k = idx(r) * H;
        add_row(g, a, 2 * idx(H));     // gi_r + gh_r, gi_z + gh_z
        sigmoid_row(a, 2 * idx(H));    // 2., 3. r, z
        gru_fwd_row(H, hp + k, a, a + H, a + 2 * H, g + 2 * H, b_hn, ghn_out + k, h + k);
    }
}
template <typename T>
FASTSEQ_INLINE void gru_bwd_row(int H, const T* dh, const T* hp, const T* rg, const T* ug, const T* n, const T* e,
                                T* ar, T* az, T* an, T* br, T* bz, T* bn, T* dp) {
    for (int j = 0; j < H; ++j) an[j] = dh[j] * (T(1) - ug[j]) * (T(1) - n[j] * n[j]);   // 5'., 4'.
    for (int j = 0; j < H; ++j) ar[j] = an[j] * e[j] * rg[j] * (T(1) - rg[j]);           // 4'., 2'.
    for (int j = 0; j < H; ++j) az[j] = dh[j] * (hp[j] - n[j]) * ug[j] * (T(1) - ug[j]); // 5'., 3'.
    for (int j = 0; j < H; ++j) bn[j] = an[j] * rg[j];
    for (int j = 0; j < H; ++j) dp[j] = dh[j] * ug[j];                                   // 5'. through z * h
    std::memcpy(br, ar, sizeof(T) * H);
    std::memcpy(bz, az, sizeof(T) * H);
}
template <typename T>
FASTSEQ_INLINE void gru_bwd(int R, int H, const T* dh, const T* hp, const T* z, const T* ghn, T* dz, T* dgh, T* dprev) {
    for (int r = 0; r < R; ++r) {
        const T* a = z + idx(r) * 3 * H;
        T* d = dz + idx(r) * 3 * H;
        T* b = dgh + idx(r) * 3 * H;
        const idx k = idx(r) * H;
        gru_bwd_row(H, dh + k, hp + k, a, a + H, a + 2 * H, ghn + k, d, d + H, d + 2 * H, b, b + H, b + 2 * H,
                    dprev + k);
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
        pointwise(R, prev, z, gh, ext, h);
    }
    void pointwise(int R, const T* const* prev, T* z, const T* gh, T* const* ext, T* h) const {
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
