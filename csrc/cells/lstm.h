// nn.LSTM's cell: gate blocks i, f, g, o (PyTorch's order); the state is (h, c):
//   2. i, f, o = sigma(a_i, a_f, a_o)   3. g = tanh(a_g)      (a = gi + h W_hh)
//   4. c' = f * c + i * g               5. h' = o * tanh(c')
#pragma once
#include "cell.h"

namespace fastseq {
namespace rnn {

namespace cellk {
template <typename T>
FASTSEQ_INLINE void lstm_fwd(int R, int H, const T* cp, T* z, T* c, T* tc, T* h) {
    const idx G4 = 4 * idx(H);
    for (int r = 0; r < R; ++r) {
        T* a = z + r * G4;
        const idx o = idx(r) * H;
        for (int j = 0; j < H; ++j) {
            const T i = sigmoid1(a[j]), f = sigmoid1(a[H + j]);   // 2.
            const T g = tanh1(a[2 * H + j]);                       // 3.
            const T og = sigmoid1(a[3 * H + j]);
            const T cn = f * cp[o + j] + i * g;                    // 4.
            const T t = tanh1(cn);
            h[o + j] = og * t;                                     // 5.
            c[o + j] = cn, tc[o + j] = t;
            a[j] = i, a[H + j] = f, a[2 * H + j] = g, a[3 * H + j] = og;
        }
    }
}
template <typename T>
FASTSEQ_INLINE void lstm_bwd(int R, int H, const T* dh, const T* dc_in, const T* cp, const T* z, const T* tc, T* dz,
                             T* dcp) {
    const idx G4 = 4 * idx(H);
    for (int r = 0; r < R; ++r) {
        const T* a = z + r * G4;
        T* d = dz + r * G4;
        const idx o = idx(r) * H;
        for (int j = 0; j < H; ++j) {
            const T i = a[j], f = a[H + j], g = a[2 * H + j], og = a[3 * H + j];
            const T t = tc[o + j], dhj = dh[o + j];
            const T dc = dc_in[o + j] + dhj * og * (T(1) - t * t);   // 5'. both paths into c'
            d[j] = dc * g * i * (T(1) - i);                          // 4'., 2'.
            d[H + j] = dc * cp[o + j] * f * (T(1) - f);
            d[2 * H + j] = dc * i * (T(1) - g * g);                  // 3'.
            d[3 * H + j] = dhj * t * og * (T(1) - og);               // 5'.
            dcp[o + j] = dc * f;                                     // 4'. path to c
        }
    }
}
FASTSEQ_CLONES static void lstm_fwd_f(int R, int H, const float* cp, float* z, float* c, float* tc, float* h) {
    lstm_fwd(R, H, cp, z, c, tc, h);
}
FASTSEQ_CLONES static void lstm_fwd_f(int R, int H, const double* cp, double* z, double* c, double* tc, double* h) {
    lstm_fwd(R, H, cp, z, c, tc, h);
}
FASTSEQ_CLONES static void lstm_bwd_f(int R, int H, const float* dh, const float* dc, const float* cp, const float* z,
                                      const float* tc, float* dz, float* dcp) {
    lstm_bwd(R, H, dh, dc, cp, z, tc, dz, dcp);
}
FASTSEQ_CLONES static void lstm_bwd_f(int R, int H, const double* dh, const double* dc, const double* cp,
                                      const double* z, const double* tc, double* dz, double* dcp) {
    lstm_bwd(R, H, dh, dc, cp, z, tc, dz, dcp);
}
}  // namespace cellk

template <typename T>
struct LSTMCell {
    static constexpr int G = 4, P = 2, X = 2;  // extras: c_t (state part 1), tanh(c_t)
    static constexpr bool kAliasZH = false, kSepGh = false, kDirectH = false;
    const T* W_hh;
    int H;
    PackedRecurrent<T> pk;

    LSTMCell(const T* W_hh_, const T*, int H_, int) : W_hh(W_hh_), H(H_) {}
    static std::size_t workspace(int H) { return PackedRecurrent<T>::size(H, G); }
    void prepare(T* ws) { pk.pack(W_hh, H, G, ws); }
    static std::size_t step_scratch(int, int) { return 0; }

    void forward_step(int R, const T* const* prev, T* z, T* const* ext, T* h, T*) const {
        pk.forward(R, H, G, prev[0], z, true);  // 1. a = gi + h W_hh
        cellk::lstm_fwd_f(R, H, prev[1], z, ext[0], ext[1], h);
    }
    void backward_step(int R, const T* const* dnext, const T* const* prev, const T* z, const T* const* ext,
                       const T*, T* dz, T*, T* const* dprev) const {
        cellk::lstm_bwd_f(R, H, dnext[0], dnext[1], prev[1], z, ext[1], dz, dprev[1]);
    }
    void message(int M, const T* dgh, T* out, bool acc) const { pk.message(M, H, G, dgh, out, acc); }
};

}  // namespace rnn
}  // namespace fastseq
