// RNN kernels: a generic time loop (forward, and backward under every BPTT plan)
// over a pluggable cell, the dense layer, the fused language-model training
// step and generation. Free of pybind11: callers pass checked, contiguous data.
//
// Legend: B batch, T steps, D input size, H hidden size, V vocabulary size,
// G gate blocks of a cell (its pre-activation is G*H wide; 1 for the plain RNN),
// R rows of the batch slice one worker owns.
// Layouts: every sequence buffer is time-major, (T, B, width) with rows of a
// time step contiguous, so a batch slice [b0, b0+R) of step t is one R x width
// block at offset (t*B + b0)*width and the loop can run on slices in place
// (the layer's user arrays). The LM's workspace is private to each slice,
// (T, R, width), so its products over all steps are single large calls.
// Threads: the batch rows are independent through the recurrence, so each
// thread runs the whole time loop on its own slice; nothing is shared but the
// read-only (packed) weights.
//
// Maths, numbered as in the contract (fastseq/reference/rnn.py uses the same):
//   1. A_t = X_t W_xh + b_h     2. Z_t = A_t + H_{t-1} W_hh     3. H_t = phi(Z_t)
//   4. O_t = H_t W_hq + b_q     5. loss = mean -log softmax(O_t)[Y_t]
//   5'. dO_t = (softmax(O_t) - onehot(Y_t)) / (B*T)
//   4'. dW_hq = sum H_t^T dO_t, db_q = sum dO_t, dH_t(direct) = dO_t W_hq^T
//   3'. dZ_t = (direct_t + carry_t) * phi'(H_t)
//   2'. carry_{t-1} = scale_t * (dZ_t W_hh^T), dh0 = carry_{-1}, dW_hh = sum H_{t-1}^T dZ_t
//   1'. dW_xh = sum X_t^T dZ_t (LM: scatter-add), db_h = sum dZ_t, dX_t = dZ_t W_xh^T
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "blas.h"
#include "kernels.h"
#include "pool.h"

namespace fastseq {
namespace rnn {

using idx = std::ptrdiff_t;

enum class Act { Tanh, Relu };

// Uninitialised scratch memory, sized once per call (never inside a time loop).
template <typename T>
struct Buffer {
    std::unique_ptr<T[]> p;
    explicit Buffer(std::size_t n) : p(new T[n > 0 ? n : 1]) {}
    T* get() { return p.get(); }
};

// A time-major sequence seen from one batch slice: step t starts at p + t*ts.
template <typename T>
struct Seq {
    T* p;
    idx ts;
    T* at(idx t) const { return p + t * ts; }
};

// ---------------------------------------------------------------------------
// The cell: everything specific to one recurrence lives here, so GRU or LSTM is
// a new cell type with the same members, not a copy of the time loop. (An LSTM
// also carries its cell state c_t backwards: the message from step t to t-1
// then holds dH and dc, so the loops would take its width from the cell instead
// of assuming H; the loops already treat messages as opaque R-row blocks.)
//   G                       gate blocks of the pre-activation (width G*H)
//   forward_step            Z_t (in: A_t, the input part with bias) -> H_t
//   backward_step           dH_t (total) -> dZ_t (linear in dH_t, which sliding
//                           truncation relies on to run terms side by side)
//   message                 out = dZ W_hh^T (+ beta out): the backward message to H_{t-1}
//   recurrent_grad          dW_hh (+)= Hprev^T dZ over many rows at once
// ---------------------------------------------------------------------------
template <typename T>
struct ElmanCell {
    static constexpr int G = 1;
    const T* W_hh;  // (H, H)
    int H;
    Act act;
    const T* Wf = nullptr;  // W_hh packed as the right operand of H_{t-1} W_hh
    const T* Wb = nullptr;  // W_hh^T packed as the right operand of dZ W_hh^T

    // Scratch for prepare(): the packed copies of W_hh, shared by all slices.
    static std::size_t workspace(int H) { return 2 * kern::packed_size<T>(H, H); }
    // Packs W_hh once per call, so no step repacks it.
    void prepare(T* ws) {
        T* f = ws;
        T* b = ws + kern::packed_size<T>(H, H);
        kern::pack_b(H, H, W_hh, H, false, f);
        kern::pack_b(H, H, W_hh, H, true, b);
        Wf = f;
        Wb = b;
    }
    // 2. Z_t += H_{t-1} W_hh ; 3. H_t = phi(Z_t). Z and H may alias (the plain
    // RNN keeps no pre-activation: phi' is computed from H).
    void forward_step(int R, const T* hprev, T* z, T* h) const {
        kern::gemm_pb(R, H, H, hprev, H, false, Wf, z, H, true);
        const idx n = idx(R) * H;
        if (act == Act::Tanh) {
            kern::tanh_n(z, h, n);
        } else {
            kern::relu_n(z, h, n);
        }
    }
    // 3'. dZ_t = dH_t * phi'(H_t); z unused (phi' from H alone).
    void backward_step(int R, const T* dh, const T* h, const T* /*z*/, T* dz) const {
        const idx n = idx(R) * H;
        if (act == Act::Tanh) {
            kern::dtanh_n(dh, h, dz, n);
        } else {
            // dh * (h > 0), a product as in the reference: a NaN in dh stays NaN
            for (idx i = 0; i < n; ++i) dz[i] = dh[i] * T(h[i] > T(0));
        }
    }
    // 2'. out = dZ W_hh^T (+ out when acc), for M rows (one step, or several stacked terms).
    void message(int M, const T* dz, T* out, bool acc) const {
        kern::gemm_pb(M, H, H, dz, H, false, Wb, out, H, acc);
    }
    // 2'. dW_hh = beta dW_hh + Hprev^T dZ over M rows: one large product, BLAS.
    void recurrent_grad(int M, const T* hprev, const T* dz, T* dW_hh, T beta) const {
        blas::gemm(true, false, H, H, M, T(1), hprev, H, dz, H, beta, dW_hh, H);
    }
};

// ---------------------------------------------------------------------------
// The generic time loop.
// ---------------------------------------------------------------------------

// Forward over T steps for R rows: Z holds A_t on entry; H receives H_t.
template <typename T, class Cell>
void loop_forward(const Cell& c, int Tn, int R, const T* h0, Seq<T> Z, Seq<T> Hs) {
    for (int t = 0; t < Tn; ++t) c.forward_step(R, t ? Hs.at(t - 1) : h0, Z.at(t), Hs.at(t));
}

// Scratch the backward loop needs for R rows (elements of T).
inline std::size_t backward_scratch(int H, int G, int R, int Tn, int window) {
    std::size_t n = 2 * std::size_t(R) * H;  // dh, carry
    if (window > 0 && window < Tn) {
        const std::size_t w = std::size_t(window);
        n += 2 * w * R * H + w * R * H * G;  // messages (cur, next), per-term dZ
    }
    return n;
}

// Backward over T steps for R rows under the plan (scale, window).
//   direct: dH_t(direct) per step (width H); may alias dZ (read before written).
//   dZ:     receives dZ_t (width G*H), the sum over all loss terms.
//   scale:  nullptr (ones) or scale[t*sts + r] for step t, row r of this slice.
//   window: 0, or tau (sliding truncation) with 0 < tau < T.
//   dh0:    R x H, receives dL/dh0.
template <typename T, class Cell>
void loop_backward(const Cell& c, int Tn, int R, Seq<const T> Hs, Seq<const T> Z, Seq<const T> direct,
                   Seq<T> dZ, const T* scale, idx sts, int window, T* dh0, T* scratch) {
    const int H = c.H;
    const idx n = idx(R) * H;
    T* dh = scratch;
    T* carry = scratch + n;
    if (window <= 0 || window >= Tn) {
        // Full, block truncation, randomized: one message per step.
        for (int t = Tn - 1; t >= 0; --t) {
            const T* d = direct.at(t);
            if (t == Tn - 1) std::memcpy(dh, d, sizeof(T) * n);
            else
                for (idx i = 0; i < n; ++i) dh[i] = d[i] + carry[i];
            T* dz = dZ.at(t);
            c.backward_step(R, dh, Hs.at(t), Z.at(t), dz);
            T* out = t ? carry : dh0;
            const T* s = scale ? scale + t * sts : nullptr;
            bool any = true;
            if (s) {
                any = false;
                for (int r = 0; r < R; ++r) any |= (s[r] != T(0));
            }
            if (!any) {  // block boundary: the state is detached, nothing flows back
                std::fill(out, out + n, T(0));
                continue;
            }
            c.message(R, dz, out, false);
            if (s)
                for (int r = 0; r < R; ++r) {
                    const T f = s[r];
                    T* row = out + idx(r) * H;
                    for (int j = 0; j < H; ++j) row[j] *= f;
                }
        }
        return;
    }
    // Sliding truncation: loss term t back-propagates through steps t..t-tau+1.
    // The terms alive at step s are t = s..s+tau-1; term k = t - s keeps its own
    // message (rows k*R..k*R+R-1 of cur), so all of them cross one step with one
    // stacked product. The term with k = tau-1 ends at s and is dropped, except
    // at s = 0 where every live term reaches h0.
    const int tau = window;
    const idx GH = idx(c.G) * H;
    T* cur = carry + n;
    T* next = cur + idx(tau) * n;
    T* dzk = next + idx(tau) * n;
    int live = 0;  // terms carried in from step s+1 (k = 1..live in cur)
    for (int s = Tn - 1; s >= 0; --s) {
        std::memcpy(cur, direct.at(s), sizeof(T) * n);  // term t = s enters, k = 0
        const int nk = std::min(live + 1, tau);
        for (int k = 0; k < nk; ++k)
            c.backward_step(R, cur + k * n, Hs.at(s), Z.at(s), dzk + k * R * GH);
        T* dz = dZ.at(s);
        std::memcpy(dz, dzk, sizeof(T) * R * GH);
        for (int k = 1; k < nk; ++k) {
            const T* src = dzk + k * R * GH;
            for (idx i = 0; i < R * GH; ++i) dz[i] += src[i];
        }
        if (s == 0) {
            c.message(R, dz, dh0, false);  // linear: the sum of every live term's message
            break;
        }
        const int cont = std::min(nk, tau - 1);  // terms that go on to step s-1
        if (cont > 0) c.message(cont * R, dzk, next + n, false);
        std::swap(cur, next);
        live = cont;
    }
}

// Runs f(slice, b0, rows) on `parts` slices of B rows, one thread each (the
// caller runs slice 0, the pool's workers the others); every worker's BLAS
// calls are single-threaded.
template <class F>
void parallel_slices(int B, int parts, F&& f) {
    if (parts <= 1) {
        f(0, 0, B);
        return;
    }
    blas::SingleThreaded one;
    std::vector<int> starts(parts + 1);
    const int base = B / parts, extra = B % parts;
    int b0 = 0;
    for (int p = 0; p < parts; ++p) {
        starts[p] = b0;
        b0 += base + (p < extra ? 1 : 0);
    }
    starts[parts] = B;
    const std::function<void(int)> job = [&](int p) { f(p, starts[p], starts[p + 1] - starts[p]); };
    SlicePool::instance().run(parts, job);
}

// How many batch slices to run side by side: each core takes its own rows.
// Handing a slice to a pool worker costs a few microseconds, so a call splits
// only when its products (about rows * (H^2 + H*width) multiply-adds per pass)
// repay that: from about H = 48 for the book's B*T = 1120 (measured on 2 free
// cores: 1.9x at H = 64 and above).
// Each slice beyond the first keeps its own copy of the gradients, so the
// count is capped by the cores this process can use, whatever thread count
// the user set: more slices than cores run in turns and only cost memory.
// An explicit request (tests of uneven splits, benchmarks) may go to twice that.
inline int explicit_parts_cap() { return 2 * usable_cores(); }
inline int auto_parts(int B, int Tn, int H, int width, int requested) {
    if (requested > 0) return std::max(1, std::min({requested, B, explicit_parts_cap()}));
    const double macs = double(B) * Tn * (double(H) * H + double(H) * width);
    if (macs < 4e6) return 1;
    return std::max(1, std::min({blas::SingleThreaded::user_threads(), B, usable_cores()}));
}

template <typename T>
void colsum_add(int M, int N, const T* A, T* out) {  // out[j] += sum_i A[i, j]
    for (int i = 0; i < M; ++i) {
        const T* row = A + idx(i) * N;
        for (int j = 0; j < N; ++j) out[j] += row[j];
    }
}

// ---------------------------------------------------------------------------
// The layer on dense inputs.
// ---------------------------------------------------------------------------
template <typename T>
struct LayerParams {
    const T* W_xh;  // (D, H)
    const T* W_hh;  // (H, H)
    const T* b_h;   // (H,)
    int D, H;
    Act act;
};

// Hs (T, B, H) = the hidden states for X (T, B, D) from h0 (B, H).
template <typename T>
void layer_forward(const LayerParams<T>& P, int Tn, int B, const T* X, const T* h0, T* Hs, int parts) {
    const int H = P.H;
    // 1. A_t = X_t W_xh + b_h for all steps at once, written where H_t will be.
    for (idx r = 0; r < idx(Tn) * B; ++r) std::memcpy(Hs + r * H, P.b_h, sizeof(T) * H);
    blas::gemm(false, false, Tn * B, H, P.D, T(1), X, P.D, P.W_xh, H, T(1), Hs, H);
    ElmanCell<T> cell{P.W_hh, H, P.act};
    Buffer<T> packed(ElmanCell<T>::workspace(H));
    cell.prepare(packed.get());
    parallel_slices(B, auto_parts(B, Tn, H, P.D, parts), [&](int, int b0, int R) {
        Seq<T> s{Hs + idx(b0) * H, idx(B) * H};
        loop_forward<T>(cell, Tn, R, h0 + idx(b0) * H, s, s);
    });
}

// The layer's backward. dHs (T, B, H) direct gradients; dH_T (B, H) or nullptr;
// scale (T, B) or nullptr; window 0 or tau. Outputs dX (T, B, D), dh0 (B, H), grads.
template <typename T>
void layer_backward(const LayerParams<T>& P, int Tn, int B, const T* X, const T* h0, const T* Hs,
                    const T* dHs, const T* dH_T, const T* scale, int window, T* dX, T* dh0,
                    T* dW_xh, T* dW_hh, T* db_h, int parts) {
    const int H = P.H, D = P.D;
    const idx n = idx(Tn) * B * H;
    Buffer<T> dZbuf(n);
    T* dZ = dZbuf.get();
    std::memcpy(dZ, dHs, sizeof(T) * n);  // direct gradients, turned into dZ in place
    if (dH_T) {
        T* last = dZ + idx(Tn - 1) * B * H;
        for (idx i = 0; i < idx(B) * H; ++i) last[i] += dH_T[i];
    }
    ElmanCell<T> cell{P.W_hh, H, P.act};
    Buffer<T> packed(ElmanCell<T>::workspace(H));
    cell.prepare(packed.get());
    const int np = auto_parts(B, Tn, H, P.D, parts);
    const std::size_t per = backward_scratch(H, 1, (B + np - 1) / np, Tn, window);
    Buffer<T> scratch(per * np);
    parallel_slices(B, np, [&](int p, int b0, int R) {
        const idx off = idx(b0) * H;
        Seq<const T> hs{Hs + off, idx(B) * H};
        Seq<T> dz{dZ + off, idx(B) * H};
        loop_backward<T>(cell, Tn, R, hs, hs, Seq<const T>{dz.p, dz.ts}, dz, scale ? scale + b0 : nullptr,
                         B, window, dh0 + off, scratch.get() + per * p);
    });
    // 2'. dW_hh = h0^T dZ_0 + sum_{t>=1} H_{t-1}^T dZ_t
    cell.recurrent_grad(B, h0, dZ, dW_hh, T(0));
    if (Tn > 1) cell.recurrent_grad((Tn - 1) * B, Hs, dZ + idx(B) * H, dW_hh, T(1));
    // 1'. dW_xh = X^T dZ ; db_h = sum dZ ; dX = dZ W_xh^T
    blas::gemm(true, false, D, H, Tn * B, T(1), X, D, dZ, H, T(0), dW_xh, H);
    std::fill(db_h, db_h + H, T(0));
    colsum_add(Tn * B, H, dZ, db_h);
    blas::gemm(false, true, Tn * B, D, H, T(1), dZ, H, P.W_xh, H, T(0), dX, D);
}

// ---------------------------------------------------------------------------
// The language model on token ids (batch-major (B, T), like the book).
// ---------------------------------------------------------------------------
template <typename T>
struct LMParams {
    const T* W_xh;  // (V, H)
    const T* W_hh;  // (H, H)
    const T* b_h;   // (H,)
    const T* W_hq;  // (H, V)
    const T* b_q;   // (V,)
    int V, H;
    Act act;
};

template <typename T>
struct LMGrads {
    T *W_xh, *W_hh, *b_h, *W_hq, *b_q;
};

// 1. the row gather A_t = W_xh[ids[:, t]] + b_h for R rows of ids (stride Tn).
template <typename T>
void gather_inputs(const LMParams<T>& P, int Tn, int R, const std::int64_t* ids, T* A) {
    const int H = P.H;
    for (int t = 0; t < Tn; ++t)
        for (int r = 0; r < R; ++r) {
            const T* w = P.W_xh + idx(ids[idx(r) * Tn + t]) * H;
            T* a = A + (idx(t) * R + r) * H;
            for (int j = 0; j < H; ++j) a[j] = w[j] + P.b_h[j];
        }
}

// The output projection's weights packed once per call for the register-tiled
// kernel, used while the model is small: there the products are thin (N = V or
// H) and BLAS's per-call packing and overhead dominate; above kSmallH, BLAS.
constexpr int kSmallH = 256;
template <typename T>
struct OutProj {
    bool small;
    Buffer<T> buf;
    const T* Wq = nullptr;   // W_hq packed, right operand of H W_hq
    const T* WqT = nullptr;  // W_hq^T packed, right operand of dO W_hq^T
    explicit OutProj(const LMParams<T>& P)
        : small(P.H <= kSmallH),
          buf(small ? kern::packed_size<T>(P.H, P.V) + kern::packed_size<T>(P.V, P.H) : 0) {
        if (!small) return;
        T* a = buf.get();
        T* b = a + kern::packed_size<T>(P.H, P.V);
        kern::pack_b(P.H, P.V, P.W_hq, P.V, false, a);
        kern::pack_b(P.V, P.H, P.W_hq, P.V, true, b);
        Wq = a;
        WqT = b;
    }
    // O (M x V) += H (M x H) W_hq
    void project(const LMParams<T>& P, int M, const T* Hs, T* O) const {
        if (small) kern::gemm_pb(M, P.V, P.H, Hs, P.H, false, Wq, O, P.V, true);
        else blas::gemm(false, false, M, P.V, P.H, T(1), Hs, P.H, P.W_hq, P.V, T(1), O, P.V);
    }
    // dH (M x H) = dO (M x V) W_hq^T
    void back(const LMParams<T>& P, int M, const T* dO, T* dH) const {
        if (small) kern::gemm_pb(M, P.H, P.V, dO, P.V, false, WqT, dH, P.H, false);
        else blas::gemm(false, true, M, P.H, P.V, T(1), dO, P.V, P.W_hq, P.V, T(0), dH, P.H);
    }
    // C (Ka x N) = A^T B over M rows, A (M x Ka), B (M x N); pk: scratch for packing B
    void tn(int M, int Ka, int N, const T* A, const T* Bm, T* C, T* pk) const {
        if (small) {
            kern::pack_b(M, N, Bm, N, false, pk);
            kern::gemm_pb(Ka, N, M, A, Ka, true, pk, C, N, false);
        } else {
            blas::gemm(true, false, Ka, N, M, T(1), A, Ka, Bm, N, T(0), C, N);
        }
    }
};

// Work one slice of R rows needs for the training step (elements of T).
template <typename T>
std::size_t lm_slice_scratch(int V, int H, int R, int Tn, int window, bool own_grads) {
    std::size_t n = std::size_t(Tn + 1) * R * H   // h0, H_0..H_{T-1}
                    + std::size_t(Tn) * R * V      // O, then dO
                    + std::size_t(Tn) * R * H      // direct dH, then dZ
                    + std::size_t(R) * H           // dh0 (unused: the LM's state is detached)
                    + std::max(kern::packed_size<T>(Tn * R, V), kern::packed_size<T>(Tn * R, H))
                    + backward_scratch(H, 1, R, Tn, window);
    if (own_grads) n += std::size_t(V) * H * 2 + std::size_t(H) * H + H + V;
    return n;
}

// The fused training step on a slice: forward, loss, and the whole backward.
// Returns the slice's sum of -log p (the caller divides by B*T); gradients are
// written (not accumulated) into g; new_state receives H_{T-1} (R x H).
template <typename T>
double lm_step_slice(const LMParams<T>& P, const ElmanCell<T>& cell, const OutProj<T>& op, int Tn, int R, int Btot, const std::int64_t* ids,
                     const std::int64_t* tgt, const T* h0, const T* scale, idx sts, int window,
                     const LMGrads<T>& g, T* new_state, T* work) {
    const int H = P.H, V = P.V;
    const idx M = idx(Tn) * R;  // rows of this slice over all steps
    T* Hb = work;                      // (T+1, R, H): Hb[0] = h0, Hb[t+1] = H_t
    T* O = Hb + (M + R) * H;           // (T, R, V)
    T* dZ = O + M * V;                 // (T, R, H)
    T* dh0 = dZ + M * H;
    T* pk = dh0 + idx(R) * H;  // packing scratch
    T* scratch = pk + std::max(kern::packed_size<T>(int(M), V), kern::packed_size<T>(int(M), H));

    std::memcpy(Hb, h0, sizeof(T) * R * H);
    gather_inputs(P, Tn, R, ids, Hb + idx(R) * H);                           // 1.
    loop_forward<T>(cell, Tn, R, Hb, Seq<T>{Hb + idx(R) * H, idx(R) * H},  // 2., 3.
                    Seq<T>{Hb + idx(R) * H, idx(R) * H});
    // 4. O = H W_hq + b_q over all T*R rows
    for (idx i = 0; i < M; ++i) std::memcpy(O + i * V, P.b_q, sizeof(T) * V);
    op.project(P, int(M), Hb + idx(R) * H, O);
    // 5., 5'. loss and dO = (softmax - onehot) / (B*T), in place of O; the
    // exponentials of all rows in one vectorised pass
    const T inv = T(1) / T(double(Btot) * Tn);
    double nll = 0;
    for (idx i = 0; i < M; ++i) {
        T* o = O + i * V;
        T m = o[0];
        for (int j = 1; j < V; ++j) m = std::max(m, o[j]);
        for (int j = 0; j < V; ++j) o[j] -= m;
        const int t = int(i / R), r = int(i % R);
        nll -= double(o[tgt[idx(r) * Tn + t]]);  // -(O_y - max), the log-sum-exp follows
    }
    kern::exp_n(O, M * V);
    double prod = 1;  // log of a product of 8 sums (each in [1, V]): 8x fewer logs
    for (idx i = 0; i < M; ++i) {
        T* o = O + i * V;
        T s = 0;
        for (int j = 0; j < V; ++j) s += o[j];
        prod *= double(s);
        if ((i & 7) == 7 || i == M - 1) {
            nll += std::log(prod);
            prod = 1;
        }
        const T f = inv / s;
        for (int j = 0; j < V; ++j) o[j] *= f;
        const int t = int(i / R), r = int(i % R);
        o[tgt[idx(r) * Tn + t]] -= inv;
    }
    // 4'. dW_hq = H^T dO ; db_q = sum dO ; direct dH = dO W_hq^T
    op.tn(int(M), H, V, Hb + idx(R) * H, O, g.W_hq, pk);
    std::fill(g.b_q, g.b_q + V, T(0));
    colsum_add(int(M), V, O, g.b_q);
    op.back(P, int(M), O, dZ);
    // 3'., 2'. the recurrence backward
    const Seq<const T> hs{Hb + idx(R) * H, idx(R) * H};
    loop_backward<T>(cell, Tn, R, hs, hs, Seq<const T>{dZ, idx(R) * H}, Seq<T>{dZ, idx(R) * H}, scale, sts,
                     window, dh0, scratch);
    // 2'. dW_hh = [h0; H_0..H_{T-2}]^T dZ as one product over all steps
    op.tn(int(M), H, H, Hb, dZ, g.W_hh, pk);
    // 1'. db_h = sum dZ ; dW_xh[ids] += dZ rows
    std::fill(g.b_h, g.b_h + H, T(0));
    colsum_add(int(M), H, dZ, g.b_h);
    std::fill(g.W_xh, g.W_xh + idx(V) * H, T(0));
    for (int t = 0; t < Tn; ++t)
        for (int r = 0; r < R; ++r) {
            T* w = g.W_xh + idx(ids[idx(r) * Tn + t]) * H;
            const T* d = dZ + (idx(t) * R + r) * H;
            for (int j = 0; j < H; ++j) w[j] += d[j];
        }
    std::memcpy(new_state, Hb + idx(Tn) * R * H, sizeof(T) * R * H);
    return nll;
}

// The whole training step: slices of the batch side by side, then their
// gradients summed. Returns the mean loss.
template <typename T>
double lm_loss_and_grad(const LMParams<T>& P, int Tn, int B, const std::int64_t* ids, const std::int64_t* tgt,
                        const T* h0, const T* scale, int window, const LMGrads<T>& g, T* new_state, int parts) {
    const int H = P.H, V = P.V;
    const int np = auto_parts(B, Tn, H, P.V, parts);
    const int Rmax = (B + np - 1) / np;
    const std::size_t per0 = lm_slice_scratch<T>(V, H, Rmax, Tn, window, false);
    const std::size_t per = lm_slice_scratch<T>(V, H, Rmax, Tn, window, true);
    Buffer<T> work(per0 + per * (np - 1));
    std::vector<double> nll(np, 0.0);
    std::vector<LMGrads<T>> gs(np, g);
    ElmanCell<T> cell{P.W_hh, H, P.act};
    Buffer<T> packed(ElmanCell<T>::workspace(H));
    cell.prepare(packed.get());
    const OutProj<T> op(P);
    for (int p = 1; p < np; ++p) {
        // slices p >= 1 keep their own gradients after their working memory
        T* own = work.get() + per0 + per * (p - 1) + per0;
        gs[p] = LMGrads<T>{own, own + idx(V) * H, own + idx(V) * H + idx(H) * H,
                           own + idx(V) * H + idx(H) * H + H, own + 2 * idx(V) * H + idx(H) * H + H};
    }
    parallel_slices(B, np, [&](int p, int b0, int R) {
        T* w = p == 0 ? work.get() : work.get() + per0 + per * (p - 1);
        nll[p] = lm_step_slice(P, cell, op, Tn, R, B, ids + idx(b0) * Tn, tgt + idx(b0) * Tn, h0 + idx(b0) * H,
                               scale ? scale + b0 : nullptr, B, window, gs[p], new_state + idx(b0) * H, w);
    });
    double total = 0;
    for (int p = 0; p < np; ++p) total += nll[p];
    for (int p = 1; p < np; ++p) {
        auto add = [](T* dst, const T* src, idx n) {
            for (idx i = 0; i < n; ++i) dst[i] += src[i];
        };
        add(g.W_xh, gs[p].W_xh, idx(V) * H);
        add(g.W_hh, gs[p].W_hh, idx(H) * H);
        add(g.b_h, gs[p].b_h, H);
        add(g.W_hq, gs[p].W_hq, idx(H) * V);
        add(g.b_q, gs[p].b_q, V);
    }
    return total / (double(B) * Tn);
}

// Inference: logits (B, T, V) batch-major and the final state (B, H).
template <typename T>
void lm_forward(const LMParams<T>& P, int Tn, int B, const std::int64_t* ids, const T* h0, T* logits,
                T* new_state, int parts) {
    const int H = P.H, V = P.V;
    const int np = auto_parts(B, Tn, H, P.V, parts);
    const int Rmax = (B + np - 1) / np;
    const std::size_t per = std::size_t(Tn + 1) * Rmax * H + std::size_t(Tn) * Rmax * V;
    Buffer<T> work(per * np);
    ElmanCell<T> cell{P.W_hh, H, P.act};
    Buffer<T> packed(ElmanCell<T>::workspace(H));
    cell.prepare(packed.get());
    const OutProj<T> op(P);
    parallel_slices(B, np, [&](int p, int b0, int R) {
        T* Hb = work.get() + per * p;
        T* O = Hb + idx(Tn + 1) * R * H;
        const idx M = idx(Tn) * R;
        std::memcpy(Hb, h0 + idx(b0) * H, sizeof(T) * R * H);
        gather_inputs(P, Tn, R, ids + idx(b0) * Tn, Hb + idx(R) * H);
        loop_forward<T>(cell, Tn, R, Hb, Seq<T>{Hb + idx(R) * H, idx(R) * H}, Seq<T>{Hb + idx(R) * H, idx(R) * H});
        for (idx i = 0; i < M; ++i) std::memcpy(O + i * V, P.b_q, sizeof(T) * V);
        op.project(P, int(M), Hb + idx(R) * H, O);
        for (int t = 0; t < Tn; ++t)
            for (int r = 0; r < R; ++r)
                std::memcpy(logits + (idx(b0 + r) * Tn + t) * V, O + (idx(t) * R + r) * V, sizeof(T) * V);
        std::memcpy(new_state + idx(b0) * H, Hb + idx(Tn) * R * H, sizeof(T) * R * H);
    });
}

// The contract's sampling rule, in float64 exactly as the reference computes it.
// order: scratch of V ints. NaN logits (a diverged model) follow NumPy's
// conventions, so both backends agree and the selection below sees a strict
// weak order (a comparator that is not one lets std::nth_element misbehave):
// argmax returns the first NaN; any NaN makes the max NaN; the top-k order puts
// NaN last; a NaN threshold counts every entry (searchsorted sorts NaN last).
template <typename T>
int sample_token(const T* logits, int V, double temperature, int top_k, double u, double* e, int* order) {
    if (temperature == 0.0) {  // greedy: the first maximum
        int best = 0;
        for (int j = 0; j < V; ++j) {
            if (std::isnan(logits[j])) return j;
            if (logits[j] > logits[best]) best = j;
        }
        return best;
    }
    double m = double(logits[0]);
    for (int j = 0; j < V; ++j) m = std::isnan(m) ? m : std::isnan(logits[j]) ? double(logits[j]) : std::max(m, double(logits[j]));
    for (int j = 0; j < V; ++j) e[j] = std::exp((double(logits[j]) - m) / temperature);
    if (top_k > 0 && top_k < V) {
        std::iota(order, order + V, 0);
        // the top_k largest logits, ties toward the lower id, NaN after every number
        std::nth_element(order, order + top_k, order + V, [&](int a, int b) {
            const bool na = std::isnan(logits[a]), nb = std::isnan(logits[b]);
            if (na || nb) return na && nb ? a < b : nb;
            return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
        });
        for (int i = top_k; i < V; ++i) e[order[i]] = 0.0;
    }
    for (int j = 1; j < V; ++j) e[j] += e[j - 1];  // cumsum in id order
    const double thr = u * e[V - 1];
    if (std::isnan(thr)) return V - 1;
    int cnt = 0;
    for (int j = 0; j < V; ++j) cnt += (e[j] <= thr);
    return std::min(cnt, V - 1);
}

// Generation from a prefix (the book's predict): warm up on the prefix, then
// feed back each prediction. out: num_preds ids. B=1 makes every product a
// matrix-vector one, bound by reading W_hh: it is packed once per call and
// split by columns between `parts` threads, so each core streams its half from
// its own cache; one barrier per step. Every thread computes the (small)
// logits and the same token itself, so no second barrier is needed.
// The split pays only while every thread has a core: when another process
// takes one, each step waits a scheduler tick for the descheduled partner (up
// to 70x slower than one thread). So the barrier blocks rather than spins,
// and a call whose threads keep having to block (kSoloAfter of the last
// kWindow steps) goes on with one thread, which takes all the columns.
constexpr int kGenSplitH = 256;  // below this, a step is too short to share
constexpr int kWindow = 32, kSoloAfter = 3;

template <typename T>
void lm_generate(const LMParams<T>& P, const std::int64_t* prefix, int np, int num_preds, double temperature,
                 int top_k, const double* uniforms, std::int32_t* out, int parts) {
    const int H = P.H, V = P.V;
    constexpr int W = kern::NR<T>;
    const int panels = (H + W - 1) / W;
    if (parts <= 0) parts = (H >= kGenSplitH && blas::SingleThreaded::user_threads() >= 2) ? 2 : 1;
    parts = std::max(1, std::min({parts, panels, explicit_parts_cap()}));
    Buffer<T> packed(kern::packed_size<T>(H, H) + kern::packed_size<T>(H, V));
    T* Wf = packed.get();
    T* Wq = Wf + kern::packed_size<T>(H, H);
    kern::pack_b(H, H, P.W_hh, H, false, Wf);
    kern::pack_b(H, V, P.W_hq, V, false, Wq);
    Buffer<T> hbuf(std::size_t(2) * H);
    std::fill(hbuf.get(), hbuf.get() + 2 * H, T(0));
    Barrier barrier(parts);
    // Written only by the thread that releases a barrier, before the release;
    // read by every thread after it: all threads see the same value each step.
    int steps = 0, blocked = 0;
    std::atomic<bool> solo{false};
    auto on_release = [&](bool was_blocked) {
        blocked += was_blocked;
        if (++steps == kWindow) {
            if (blocked >= kSoloAfter) solo.store(true, std::memory_order_relaxed);
            steps = blocked = 0;
        }
    };
    // The threads wait until every one has been created: the system may refuse
    // some (thread limit), and the columns are then split between those that run.
    std::promise<int> started;
    const std::shared_future<int> go = started.get_future().share();

    auto worker = [&](int part) {
        const int n = go.get();
        int p0 = panels * part / n, p1 = panels * (part + 1) / n;
        int c0 = p0 * W, c1 = std::min(H, p1 * W);
        std::vector<T> o(V);
        std::vector<double> e(V);
        std::vector<int> order(V);
        T* cur = hbuf.get();
        T* next = cur + H;
        bool zig = false;  // panel order alternates step to step (see gemv_pb)
        bool alone = n == 1;
        // 1.-3. for this thread's columns of H_t; false: this thread leaves (solo from now on)
        auto step = [&](std::int64_t tok) {
            const T* w = P.W_xh + idx(tok) * H;
            for (int j = c0; j < c1; ++j) next[j] = w[j] + P.b_h[j];
            kern::gemv_pb(H, cur, Wf, p0, p1, next, H, zig);
            zig = !zig;
            if (P.act == Act::Tanh) kern::tanh_n(next + c0, next + c0, c1 - c0);
            else kern::relu_n(next + c0, next + c0, c1 - c0);
            std::swap(cur, next);
            if (alone) return true;
            barrier.wait(on_release);
            if (!solo.load(std::memory_order_relaxed)) return true;
            alone = true;  // after this barrier nobody reads this step's columns but thread 0
            p0 = 0, p1 = panels, c0 = 0, c1 = H;
            return part == 0;
        };
        for (int i = 0; i < np; ++i)
            if (!step(prefix[i])) return;
        for (int i = 0; i < num_preds; ++i) {
            std::memcpy(o.data(), P.b_q, sizeof(T) * V);  // 4. O = H W_hq + b_q
            kern::gemv_pb(H, cur, Wq, 0, (V + W - 1) / W, o.data(), V, false);
            const int tok = sample_token(o.data(), V, temperature, top_k, uniforms ? uniforms[i] : 0.0, e.data(),
                                         order.data());
            if (part == 0) out[i] = tok;
            if (i + 1 < num_preds && !step(tok)) return;
        }
    };
    std::vector<std::thread> th;
    try {
        th.reserve(parts - 1);
        for (int p = 1; p < parts; ++p) th.emplace_back(worker, p);
    } catch (const std::exception&) {
    }
    barrier.reset(int(th.size()) + 1);
    started.set_value(int(th.size()) + 1);
    worker(0);
    for (auto& x : th) x.join();
}

}  // namespace rnn
}  // namespace fastseq
