// nn.LSTM's cell: gate blocks i, f, g, o (PyTorch's order); the state is (h, c):
//   2. i, f, o = sigma(a_i, a_f, a_o)   3. g = tanh(a_g)      (a = gi + h W_hh)
//   4. c' = f * c + i * g               5. h' = o * tanh(c')
#pragma once
#include "cell.h"

namespace fastseq {
namespace rnn {

namespace cellk {
// One row at a time, in plain passes over H entries (see cell.h).
template <typename T>
FASTSEQ_INLINE void lstm_fwd(int R, int H, const T* cp, T* z, T* c, T* tc, T* h) {
    for (int r = 0; r < R; ++r) {
        T* i = z + idx(r) * 4 * H;
        T* f = i + H;
        T* g = f + H;
        T* o = g + H;
        const idx k = idx(r) * H;
        sigmoid_row(i, 2 * idx(H));            // 2. i, f
        tanh_row(g, g, H);                     // 3.
        sigmoid_row(o, H);                     // 2. o
        fma_row(f, cp + k, i, g, c + k, H);    // 4. c' = f * c + i * g
        tanh_row(c + k, tc + k, H);
        mul_row(o, tc + k, h + k, H);          // 5. h' = o * tanh(c')
    }
}
template <typename T>
FASTSEQ_INLINE void lstm_bwd_row(int H, const T* dh, const T* dc_in, const T* cp, const T* i, const T* f, const T* g,
                                 const T* o, const T* tc, T* di, T* df, T* dg, T* dO, T* dcp) {
    for (int j = 0; j < H; ++j) dcp[j] = dc_in[j] + dh[j] * o[j] * (T(1) - tc[j] * tc[j]);   // 5'. dc'
    for (int j = 0; j < H; ++j) di[j] = dcp[j] * g[j] * i[j] * (T(1) - i[j]);               // 4'., 2'.
    for (int j = 0; j < H; ++j) df[j] = dcp[j] * cp[j] * f[j] * (T(1) - f[j]);
    for (int j = 0; j < H; ++j) dg[j] = dcp[j] * i[j] * (T(1) - g[j] * g[j]);               // 3'.
    for (int j = 0; j < H; ++j) dO[j] = dh[j] * tc[j] * o[j] * (T(1) - o[j]);               // 5'.
    for (int j = 0; j < H; ++j) dcp[j] *= f[j];                                             // 4'. path to c
}
template <typename T>
FASTSEQ_INLINE void lstm_bwd(int R, int H, const T* dh, const T* dc_in, const T* cp, const T* z, const T* tc, T* dz,
                             T* dcp) {
    for (int r = 0; r < R; ++r) {
        const T* a = z + idx(r) * 4 * H;
        T* d = dz + idx(r) * 4 * H;
        const idx k = idx(r) * H;
        lstm_bwd_row(H, dh + k, dc_in + k, cp + k, a, a + H, a + 2 * H, a + 3 * H, tc + k, d, d + H, d + 2 * H,
                     d + 3 * H, dcp + k);
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
