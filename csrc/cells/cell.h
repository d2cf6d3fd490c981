// What a cell is to the time loops of csrc/rnn.h, and the helpers cells share.
//
// A cell type Cell<T> (one header each in this folder, one line in registry.h) has
//   G, P, X            gate blocks (pre-activation G*H wide), state parts (h; or h, c),
//                      extra per-step sequences (H wide each) its backward needs;
//                      state part p >= 1 is extra sequence p-1 (the LSTM's c_t)
//   kAliasZH           Z may be the H_t buffer itself (G == 1, X == 0: the plain RNN)
//   kSepGh             the gradient of the hidden projection h W_hh (+ b_hn) differs
//                      from the input one (the GRU's n block), so dGH is its own buffer
//   kDirectH           the step has a path to H_{t-1} besides W_hh (the GRU's z * h)
//   Cell(W_hh, b_hn, H, variant), workspace(H), prepare(ws): packs W_hh once per call,
//                      as far as the call needs it (pk's flags, PackedRecurrent below)
//   forward_step(R, prev[P], z, ext[X], h, scratch)
//       z holds gi_t = x_t W_xh + b_h (R x G*H) on entry and whatever backward
//       needs on exit (the gates' values); h receives H_t, ext[] the extras
//   pointwise(R, prev[P], z, gh, ext[X], h)
//       forward_step after its product: the elementwise rest of the step, given
//       gh = h W_hh (kSepGh; else already added into z). A cell built with
//       H = a block of units (and b_hn at the block) runs it on that block of
//       every gate: generation splits the units between threads this way.
//   backward_step(R, dnext[P], prev[P], z, ext[X], h, dz, dgh, dprev[P])
//       from the message to the new state (every part) to dz = dL/dgi, dgh =
//       dL/d(h W_hh) (only when kSepGh) and the paths to the previous state that
//       do not go through W_hh (dprev[0] only when kDirectH; dprev[p >= 1] always).
//       Linear in dnext: sliding truncation runs it once per live term.
//   message(M, dgh, out, acc)   out (M x H) (+)= dgh (M x G*H) W_hh^T
//   step_scratch(R)             elements forward_step may use as scratch
#pragma once
#include <cmath>
#include <cstddef>

#include "../kernels.h"
#include "../matvec.h"

namespace fastseq {
namespace rnn {

using idx = std::ptrdiff_t;

namespace cellk {
FASTSEQ_INLINE float tanh1(float x) { return kern::tanh_approx(x); }
FASTSEQ_INLINE double tanh1(double x) { return std::tanh(x); }
// the reference's form, 0.5 (1 + tanh(a/2)): no overflow for large |a|
template <typename T>
FASTSEQ_INLINE T sigmoid1(T a) {
    return T(0.5) * (T(1) + tanh1(T(0.5) * a));
}
// Plain passes over n entries, one per array operation: GCC vectorises these
// (a fused loop over several gate blocks of one buffer it does not).
template <typename T>
FASTSEQ_INLINE void sigmoid_row(T* x, idx n) {
    for (idx i = 0; i < n; ++i) x[i] = sigmoid1(x[i]);
}
template <typename T>
FASTSEQ_INLINE void tanh_row(const T* x, T* y, idx n) {
    for (idx i = 0; i < n; ++i) y[i] = tanh1(x[i]);
}
template <typename T>
FASTSEQ_INLINE void add_row(const T* a, T* y, idx n) {  // y += a
    for (idx i = 0; i < n; ++i) y[i] += a[i];
}
template <typename T>
FASTSEQ_INLINE void mul_row(const T* a, const T* b, T* y, idx n) {  // y = a * b
    for (idx i = 0; i < n; ++i) y[i] = a[i] * b[i];
}
template <typename T>
FASTSEQ_INLINE void fma_row(const T* a, const T* b, const T* c, const T* d, T* y, idx n) {  // y = a * b + c * d
    for (idx i = 0; i < n; ++i) y[i] = a[i] * b[i] + c[i] * d[i];
}
}  // namespace cellk

// W_hh (H x G*H) as the recurrence multiplies it, packed once per call only
// where packing pays. The stack sets what the call needs before prepare():
// pack_fwd  the forward product h W_hh runs on R >= 2 rows, where the tiled
//           kernel reuses each packed panel for several rows; one row (B = 1,
//           decoding) streams W_hh's rows as stored (csrc/matvec.h): packing
//           would read W_hh once more and write it, for nothing;
// pack_bwd  the call runs a backward whose message dgh W_hh^T has M >= 2 rows;
//           one row streams W_hh's rows as dot products; a forward-only call
//           (inference, generation) never packs W_hh^T.
template <typename T>
struct PackedRecurrent {
    bool pack_fwd = true, pack_bwd = true;
    const T* W = nullptr;   // W_hh as stored (H x G*H)
    const T* Wf = nullptr;  // packed: the right operand of h W_hh, or nullptr (stream W)
    const T* Wb = nullptr;  // packed: the right operand of dgh W_hh^T, or nullptr (stream W)
    static std::size_t size(int H, int G) {
        return kern::packed_size<T>(H, G * H) + kern::packed_size<T>(G * H, H);
    }
    void pack(const T* W_hh, int H, int G, T* ws) {
        W = W_hh;
        Wf = Wb = nullptr;
        if (pack_fwd) {
            kern::pack_b(H, G * H, W_hh, G * H, false, ws);
            Wf = ws;
        }
        if (pack_bwd) {
            T* b = ws + kern::packed_size<T>(H, G * H);
            kern::pack_b(G * H, H, W_hh, G * H, true, b);
            Wb = b;
        }
    }
    // out (R x N) (+)= a (R x K) Bp. One row streams the panels with the
    // matrix-vector kernel: the tiled one would repeat the row MR times.
    static void product(int R, int N, int K, const T* a, const T* Bp, T* out, bool acc) {
        if (R == 1) {
            if (!acc) std::fill(out, out + N, T(0));
            kern::gemv_pb(K, a, Bp, 0, (N + kern::NR<T> - 1) / kern::NR<T>, out, N, false);
        } else {
            kern::gemm_pb(R, N, K, a, K, false, Bp, out, N, acc);
        }
    }
    void forward(int R, int H, int G, const T* hprev, T* out, bool acc) const {
        const int GH = G * H;
        if (Wf) return product(R, GH, H, hprev, Wf, out, acc);
        for (int r = 0; r < R; ++r) matvec::axpy(H, GH, hprev + idx(r) * H, W, GH, out + idx(r) * GH, acc);
    }
    void message(int M, int H, int G, const T* dgh, T* out, bool acc) const {
        const int GH = G * H;
        if (Wb) return product(M, H, GH, dgh, Wb, out, acc);
        for (int m = 0; m < M; ++m) matvec::dot(H, GH, W, GH, dgh + idx(m) * GH, out + idx(m) * H, acc);
    }
};

}  // namespace rnn
}  // namespace fastseq
