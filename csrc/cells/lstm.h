// nn.LSTM's cell: gate blocks i, f, g, o (PyTorch's order); the state is (h, c):
//   2. i, f, o = sigma(a_i, a_f, a_o)   3. g = tanh(a_g)      (a = gi + h W_hh)
//   4. c' = f * c + i * g               5. h' = o * tanh(c')
#pragma once
#include "cell.h"

namespace fastseq {
namespace rnn {

namespace cellk {
// One row at a time, one fused pass over H entries per row: every gate block
// and state array is a separate restrict pointer, so GCC vectorises the pass
// without alias checks, and each entry is loaded and stored once (the six
// plain passes this replaces read z and the state arrays several times).
template <typename T>
FASTSEQ_INLINE void lstm_fwd_row(int H, const T* __restrict__ cp, T* __restrict__ i, T* __restrict__ f,
                                 T* __restrict__ g, T* __restrict__ o, T* __restrict__ c, T* __restrict__ tc,
                                 T* __restrict__ h) {
    for (int j = 0; j < H; ++j) {
        const T ij = sigmoid1(i[j]), fj = sigmoid1(f[j]), gj = tanh1(g[j]), oj = sigmoid1(o[j]);  // 2., 3.
        const T cj = fj * cp[j] + ij * gj;                                                       // 4.
        const T tj = tanh1(cj);
        i[j] = ij, f[j] = fj, g[j] = gj, o[j] = oj;
        c[j] = cj, tc[j] = tj, h[j] = oj * tj;                                                  // 5.
    }
}
template <typename T>
FASTSEQ_INLINE void lstm_fwd(int R, int H, const T* cp, T* z, T* c, T* tc, T* h) {
    for (int r = 0; r < R; ++r) {
        T* a = z + idx(r) * 4 * H;
        const idx k = idx(r) * H;
        lstm_fwd_row(H, cp + k, a, a + H, a + 2 * H, a + 3 * H, c + k, tc + k, h + k);
    }
}
template <typename T>
FASTSEQ_INLINE void lstm_bwd_row(int H, const T* __restrict__ dh, const T* __restrict__ dc_in,
                                 const T* __restrict__ cp, const T* __restrict__ i, const T* __restrict__ f,
                                 const T* __restrict__ g, const T* __restrict__ o, const T* __restrict__ tc,
                                 T* __restrict__ di, T* __restrict__ df, T* __restrict__ dg, T* __restrict__ dO,
                                 T* __restrict__ dcp) {
    for (int j = 0; j < H; ++j) {
        const T ij = i[j], fj = f[j], gj = g[j], oj = o[j], tj = tc[j], dhj = dh[j];
        const T dc = dc_in[j] + dhj * oj * (T(1) - tj * tj);  // 5'. dc'
        di[j] = dc * gj * ij * (T(1) - ij);                    // 4'., 2'.
        df[j] = dc * cp[j] * fj * (T(1) - fj);
        dg[j] = dc * ij * (T(1) - gj * gj);                    // 3'.
        dO[j] = dhj * tj * oj * (T(1) - oj);                   // 5'.
        dcp[j] = dc * fj;                                      // 4'. path to c
    }
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
        pointwise(R, prev, z, nullptr, ext, h);
    }
    void pointwise(int R, const T* const* prev, T* z, const T*, T* const* ext, T* h) const {
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
