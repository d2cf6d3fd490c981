// RNN kernels: generic time loops (forward, and backward under every BPTT plan)
// over a cell (csrc/cells/: one header per cell, one registry line), the stacked
// layer, the fused language-model training step and generation. Free of
// pybind11: callers pass checked, contiguous data.
//
// Legend: B batch, T steps, D input size, H hidden size, V vocabulary size,
// G gate blocks of a cell (its pre-activation is G*H wide), P state parts,
// L layers, R rows of the batch slice one worker owns.
// Layouts: every sequence buffer is time-major, (T, B, width) with rows of a
// time step contiguous, so a batch slice [b0, b0+R) of step t is one R x width
// block at offset (t*B + b0)*width and the loop can run on slices in place
// (the layer's user arrays). The LM's workspace is private to each slice,
// (T, R, width), so its products over all steps are single large calls.
// Threads: the batch rows are independent through the recurrence, so each
// thread runs the whole time loop on its own slice; nothing is shared but the
// read-only (packed) weights.
// Parameters are the contract's (docs/CELLS.md, /work/briefs/cells-contract.md):
// per layer W_xh (D, G*H), W_hh (H, G*H), b_h (G*H,), b_hn (H,) for the GRU;
// the state is (P*L, B, H), rows [h_0 .. h_{L-1}, c_0 .. c_{L-1}].
//
// Maths of one layer (the cell's own steps are in its header):
//   1. gi_t = X_t W_xh + b_h (all steps in one product)   2.-5. the cell's step
//   O_t = H_t W_hq + b_q ; loss = mean -log softmax(O_t)[Y_t]
//   dO_t = (softmax(O_t) - onehot(Y_t)) / (B*T) ; dW_hq = sum H_t^T dO_t ; dH_t(direct) = dO_t W_hq^T
//   backward: the cell's step gives dgi_t, dgh_t and its direct paths to the previous
//   state; message to h_{t-1} += dgh_t W_hh^T; dW_hh = sum H_{t-1}^T dgh_t;
//   dW_xh = sum X_t^T dgi_t (LM: scatter-add); db_h = sum dgi_t; dX_t = dgi_t W_xh^T
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
#include <string>
#include <thread>
#include <vector>

#include "blas.h"
#include "cells/registry.h"
#include "kernels.h"
#include "pool.h"

namespace fastseq {
namespace rnn {

// Uninitialised scratch memory, sized once per call (never inside a time loop).
template <typename T>
struct Buffer {
    std::unique_ptr<T[]> p;
    explicit Buffer(std::size_t n) : p(new T[n > 0 ? n : 1]) {}
    T* get() { return p.get(); }
};

// Working memory kept from one call to the next on the calling thread, for the
// training step's large workspace (tens of MB at H = 512: every slice's
// activations, gates and gradients). A fresh allocation of that size is a new
// mapping whose pages the kernel zero-fills on first touch, every call: 6-10%
// of a GRU H = 512 step (perf, AVX2 EPYC). Kept per thread, so concurrent calls
// from several Python threads never share it; grown when a call needs more,
// never shrunk, freed when the thread exits (the memory a process holds is the
// largest step's workspace per thread that ran one, per dtype). One slot per
// use (kSlot*): a call uses each slot once, and nothing the slot holds survives
// the call's meaning (every element is written before it is read).
enum { kSlotWork = 0, kSlotPacked = 1, kSlots = 2 };
template <typename T>
T* reused_memory(int slot, std::size_t n) {
    struct Slot {
        std::unique_ptr<T[]> p;
        std::size_t n = 0;
    };
    thread_local Slot slots[kSlots];
    Slot& s = slots[slot];
    if (s.n < n) {
        s.p.reset();  // the old block goes first: the peak is the new size, not both
        s.n = 0;
        s.p.reset(new T[n]);
        s.n = n;
    }
    return s.p.get();
}

// A time-major sequence seen from one batch slice: step t starts at p + t*ts.
template <typename T>
struct Seq {
    T* p;
    idx ts;
    T* at(idx t) const { return p + t * ts; }
};

// One layer's sequences seen from a slice: Z (gates, G*H wide), Hs (h_t), E
// (the cell's extras, H wide each; E[0] is the LSTM's c_t), s0 its initial
// state parts (R x H each).
template <typename T>
struct Views {
    Seq<T> Z, Hs, E[2];
    const T* s0[2];
};

// One layer's parameters (the contract's layout) and gradients.
template <typename T>
struct LayerW {
    const T* W_xh;  // (D, G*H)
    const T* W_hh;  // (H, G*H)
    const T* b_h;   // (G*H,)
    const T* b_hn;  // (H,) the GRU's, else nullptr
    int D;
};
template <typename T>
struct LayerG {
    T *W_xh, *W_hh, *b_h, *b_hn;
};

// What a call does with W_hh, so that it packs no more than it uses
// (PackedRecurrent): R rows per step (a batch slice; 1 when decoding) and
// whether it runs a backward, and with how many rows per message.
struct Uses {
    int rows = 1;
    bool forward = true;
    bool backward = false;
    bool multi_message = false;  // sliding truncation: one message carries every live term
    bool pack_fwd() const { return forward && rows >= 2; }
    bool pack_bwd() const { return backward && (rows >= 2 || multi_message); }
};

// The cells of a stack, each with its W_hh packed once per call (as far as it pays).
template <typename T, class Cell>
struct CellStack {
    std::vector<Cell> cells;
    Buffer<T> packed;
    // mem: where to pack (memory_size elements), or nullptr: a buffer of its own
    CellStack(const std::vector<LayerW<T>>& Ls, int H, int variant, Uses u, T* mem = nullptr)
        : packed(!mem && (u.pack_fwd() || u.pack_bwd()) ? Ls.size() * Cell::workspace(H) : 0) {
        T* base = mem ? mem : packed.get();
        cells.reserve(Ls.size());
        for (std::size_t l = 0; l < Ls.size(); ++l) {
            cells.emplace_back(Ls[l].W_hh, Ls[l].b_hn, H, variant);
            cells.back().pk.pack_fwd = u.pack_fwd();
            cells.back().pk.pack_bwd = u.pack_bwd();
            cells.back().prepare(u.pack_fwd() || u.pack_bwd() ? base + l * Cell::workspace(H) : nullptr);
        }
    }
    static std::size_t memory_size(std::size_t layers, int H) { return layers * Cell::workspace(H); }
};

// ---------------------------------------------------------------------------
// The generic time loop.
// ---------------------------------------------------------------------------

template <class Cell, typename T>
FASTSEQ_INLINE void step_ptrs(const Views<T>& v, int t, const T** prev, T** ext) {
    prev[0] = t ? v.Hs.at(t - 1) : v.s0[0];
    prev[1] = Cell::P > 1 ? (t ? v.E[0].at(t - 1) : v.s0[1]) : nullptr;
    ext[0] = Cell::X > 0 ? v.E[0].at(t) : nullptr;
    ext[1] = Cell::X > 1 ? v.E[1].at(t) : nullptr;
}

struct NoInput {
    void operator()(int) const {}
};
// Forward over T steps for R rows: Z holds gi_t on entry to step t, written
// beforehand or by input(t) just before the step (then it is still in cache
// when the step's product adds to it).
template <typename T, class Cell, class In = NoInput>
void loop_forward(const Cell& c, int Tn, int R, const Views<T>& v, T* scratch, In&& input = In()) {
    const T* prev[2];
    T* ext[2];
    for (int t = 0; t < Tn; ++t) {
        input(t);
        step_ptrs<Cell>(v, t, prev, ext);
        c.forward_step(R, prev, v.Z.at(t), ext, v.Hs.at(t), scratch);
    }
}

// Scratch the backward loop needs for R rows (elements of T).
template <class Cell>
std::size_t backward_scratch(int H, int R, int Tn, int window) {
    const std::size_t n = std::size_t(R) * H, P = Cell::P, GH = std::size_t(Cell::G) * H;
    std::size_t s = 3 * P * n;
    if (window > 0 && window < Tn) {
        const std::size_t w = std::size_t(window);
        s += 2 * P * w * n + w * R * GH * (Cell::kSepGh ? 2 : 1) + P * n;
    }
    return s;
}

// Backward over T steps for R rows under the plan (scale, window).
//   direct: dL/dh_t from outside the recurrence (width H); may alias dZ (G == 1).
//   dZ, dGH: receive dL/dgi_t and dL/d(h W_hh)_t (width G*H; the same buffer
//            unless Cell::kSepGh), summed over all loss terms.
//   dsT:    the message to the final state's parts (R x H each) or nullptr.
//   scale:  nullptr (ones) or scale[t*sts + r]: multiplies the whole message to step t-1.
//   window: 0, or tau (sliding truncation) with 0 < tau < T.
//   ds0:    receives dL/d(state0) parts (R x H each).
//   ages:   sliding truncation in a stack: the direct gradients of the terms of ages
//           1..tau-1 at step s (from the layer above: in at(s) + k*as), and where the
//           per-age dL/dgi goes (out, ages 0..tau-1), so the layer below sees each term
//           at its own age. Unused (null) for one layer.
template <typename T>
struct AgeIO {
    const T* in = nullptr;
    T* out = nullptr;
    idx in_ts = 0, in_as = 0, out_ts = 0, out_as = 0;
};
template <typename T, class Cell>
void loop_backward(const Cell& c, int Tn, int R, const Views<T>& v, Seq<const T> direct, Seq<T> dZ, Seq<T> dGH,
                   const T* const* dsT, const T* scale, idx sts, int window, T* const* ds0, T* scratch,
                   const AgeIO<T>& ages = AgeIO<T>()) {
    constexpr int P = Cell::P;
    const int H = c.H;
    const idx n = idx(R) * H, RGH = idx(R) * Cell::G * H;
    const T* prev[2];
    T* ext[2];
    if (window <= 0 || window >= Tn) {
        // Full, block truncation, randomized: one message per step.
        T* m = scratch;       // message into step t from t+1, P parts
        T* nm = m + P * n;    // message out of step t
        T* dh = nm + P * n;
        for (int p = 0; p < P; ++p) {
            if (dsT && dsT[p]) std::memcpy(m + p * n, dsT[p], sizeof(T) * n);
            else std::fill(m + p * n, m + (p + 1) * n, T(0));
        }
        for (int t = Tn - 1; t >= 0; --t) {
            const T* d = direct.at(t);
            for (idx i = 0; i < n; ++i) dh[i] = d[i] + m[i];
            const T* dnext[2] = {dh, P > 1 ? m + n : nullptr};
            T* dprev[2] = {nm, P > 1 ? nm + n : nullptr};
            step_ptrs<Cell>(v, t, prev, ext);
            c.backward_step(R, dnext, prev, v.Z.at(t), ext, v.Hs.at(t), dZ.at(t), dGH.at(t), dprev);
            const T* s = scale ? scale + t * sts : nullptr;
            bool any = true;
            if (s) {
                any = false;
                for (int r = 0; r < R; ++r) any |= (s[r] != T(0));
            }
            if (!any) {  // block boundary: the state is detached, nothing flows back
                std::fill(nm, nm + P * n, T(0));
            } else {
                c.message(R, dGH.at(t), nm, Cell::kDirectH);
                if (s)
                    for (int p = 0; p < P; ++p)
                        for (int r = 0; r < R; ++r) {
                            const T f = s[r];
                            T* row = nm + p * n + idx(r) * H;
                            for (int j = 0; j < H; ++j) row[j] *= f;
                        }
            }
            if (t) std::swap(m, nm);
            else
                for (int p = 0; p < P; ++p) std::memcpy(ds0[p], nm + p * n, sizeof(T) * n);
        }
        return;
    }
    // Sliding truncation: loss term t back-propagates through steps t..t-tau+1.
    // The terms alive at step s are t = s..s+tau-1; term k = t - s keeps its own
    // message (age k of each part), so all of them cross one step with one
    // stacked product. The term with k = tau-1 ends at s and is dropped, except
    // at s = 0 where every live term reaches the initial state.
    const int tau = window;
    T* cur = scratch;
    T* next = cur + idx(P) * tau * n;
    T* dzk = next + idx(P) * tau * n;
    T* dghk = Cell::kSepGh ? dzk + tau * RGH : dzk;
    T* trash = dzk + tau * RGH * (Cell::kSepGh ? 2 : 1);
    auto age = [&](T* base, int p, int k) { return base + (idx(p) * tau + k) * n; };
    int live = 0;  // terms carried in from step s+1 (ages 1..live in cur)
    for (int s = Tn - 1; s >= 0; --s) {
        std::memcpy(age(cur, 0, 0), direct.at(s), sizeof(T) * n);  // term t = s enters at age 0
        for (int p = 1; p < P; ++p) std::fill(age(cur, p, 0), age(cur, p, 0) + n, T(0));
        if (s == Tn - 1 && dsT)  // the final state's gradient is part of term T-1
            for (int p = 0; p < P; ++p)
                if (dsT[p])
                    for (idx i = 0; i < n; ++i) age(cur, p, 0)[i] += dsT[p][i];
        const int nk = std::min(live + 1, tau);
        const int cont = s ? std::min(nk, tau - 1) : 0;  // terms that go on to step s-1
        if (ages.in)  // the live terms' direct gradients from the layer above (the same terms live there)
            for (int k = 1; k < nk; ++k) {
                const T* a = ages.in + s * ages.in_ts + k * ages.in_as;
                T* m = age(cur, 0, k);
                for (idx i = 0; i < n; ++i) m[i] += a[i];
            }
        if (s == 0)
            for (int p = 0; p < P; ++p) std::fill(ds0[p], ds0[p] + n, T(0));
        step_ptrs<Cell>(v, s, prev, ext);
        for (int k = 0; k < nk; ++k) {
            const T* dnext[2] = {age(cur, 0, k), P > 1 ? age(cur, 1, k) : nullptr};
            T* dprev[2] = {k < cont ? age(next, 0, k + 1) : trash, k < cont && P > 1 ? age(next, 1, k + 1) : trash + n};
            c.backward_step(R, dnext, prev, v.Z.at(s), ext, v.Hs.at(s), dzk + k * RGH, dghk + k * RGH, dprev);
            if (ages.out) std::memcpy(ages.out + s * ages.out_ts + k * ages.out_as, dzk + k * RGH, sizeof(T) * RGH);
            if (s == 0)
                for (int p = Cell::kDirectH ? 0 : 1; p < P; ++p)
                    for (idx i = 0; i < n; ++i) ds0[p][i] += dprev[p][i];
        }
        if (ages.out)
            for (int k = nk; k < tau; ++k) {
                T* o = ages.out + s * ages.out_ts + k * ages.out_as;
                std::fill(o, o + RGH, T(0));
            }
        T* dz = dZ.at(s);
        std::memcpy(dz, dzk, sizeof(T) * RGH);
        for (int k = 1; k < nk; ++k)
            for (idx i = 0; i < RGH; ++i) dz[i] += dzk[k * RGH + i];
        if (Cell::kSepGh) {
            T* dg = dGH.at(s);
            std::memcpy(dg, dghk, sizeof(T) * RGH);
            for (int k = 1; k < nk; ++k)
                for (idx i = 0; i < RGH; ++i) dg[i] += dghk[k * RGH + i];
        }
        if (s == 0) {
            c.message(R, dGH.at(0), ds0[0], true);  // linear: the sum of every live term's message
            break;
        }
        if (cont > 0) c.message(cont * R, dghk, age(next, 0, 1), Cell::kDirectH);
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
// The stacked layer on dense inputs (whole batch; sequences are user arrays).
// ---------------------------------------------------------------------------

// Where the forward pass keeps what backward needs (the cache): per layer l,
// Hs (T, B, H), Z (T, B, G*H) unless the cell keeps it in Hs, E (X, T, B, H),
// and for l >= 1 with dropout the masked input Xin (T, B, H).
template <typename T>
struct StackBufs {
    T* Hs;    // (L, T, B, H)
    T* Z;     // (L, T, B, G*H) or nullptr (Cell::kAliasZH)
    T* E;     // (L, X, T, B, H) or nullptr (X == 0)
    T* Xin;   // (L-1, T, B, H) or nullptr (no dropout between layers)
};

template <typename T, class Cell>
Views<T> layer_views(const StackBufs<T>& S, int l, int L, int Tn, int B, int H, int b0, const T* state0) {
    const idx TBH = idx(Tn) * B * H, GH = idx(Cell::G) * H;
    Views<T> v;
    T* hs = S.Hs + l * TBH;
    v.Hs = Seq<T>{hs + idx(b0) * H, idx(B) * H};
    v.Z = Cell::kAliasZH ? v.Hs : Seq<T>{S.Z + l * TBH * Cell::G + b0 * GH, B * GH};
    for (int x = 0; x < 2; ++x)
        v.E[x] = x < Cell::X ? Seq<T>{S.E + (idx(l) * Cell::X + x) * TBH + idx(b0) * H, idx(B) * H} : Seq<T>{nullptr, 0};
    for (int p = 0; p < 2; ++p)
        v.s0[p] = p < Cell::P ? state0 + (idx(p) * L + l) * B * H + idx(b0) * H : nullptr;
    return v;
}

// The input of layer l (T*B rows): X, or layer l-1's Hs (masked: Xin).
template <typename T>
const T* layer_input(const StackBufs<T>& S, int l, int Tn, int B, int H, const T* X) {
    if (l == 0) return X;
    const idx TBH = idx(Tn) * B * H;
    return S.Xin ? S.Xin + (l - 1) * TBH : S.Hs + (l - 1) * TBH;
}

// rows of out (M x N) = b (N,) broadcast, then out += A (M x K) W (K x N);
// one row (a decoding step) streams W as stored: a BLAS call would pack it.
template <typename T>
void affine(idx M, int N, int K, const T* A, const T* W, const T* b, T* out) {
    for (idx r = 0; r < M; ++r) std::memcpy(out + r * N, b, sizeof(T) * N);
    if (M == 1) matvec::axpy(K, N, A, W, N, out, true);
    else blas::gemm(false, false, int(M), N, K, T(1), A, K, W, N, T(1), out, N);
}

template <typename T>
void mul_rows(idx n, const T* a, const T* m, T* out) {  // out = a * m elementwise
    for (idx i = 0; i < n; ++i) out[i] = a[i] * m[i];
}

// Forward of L stacked layers on X (T, B, D) from state0 (P*L, B, H); m_layers
// (L-1, T, B, H) or nullptr. Fills S and stateT (P*L, B, H).
template <typename T, class Cell>
void stack_forward(const std::vector<LayerW<T>>& Ls, int H, int variant, int Tn, int B, const T* X,
                   const T* state0, const T* m_layers, const StackBufs<T>& S, T* stateT, int parts) {
    const int L = int(Ls.size());
    const idx TB = idx(Tn) * B, TBH = TB * H, GH = idx(Cell::G) * H;
    const int np = auto_parts(B, Tn, int(GH), Ls[0].D, parts);
    const int Rmax = (B + np - 1) / np;
    CellStack<T, Cell> cs(Ls, H, variant, Uses{Rmax, true, false, false});
    const std::size_t per = Cell::step_scratch(Rmax, H);
    Buffer<T> scratch(per * np);
    for (int l = 0; l < L; ++l) {
        if (l >= 1 && S.Xin) mul_rows(TBH, S.Hs + (l - 1) * TBH, m_layers + (l - 1) * TBH, S.Xin + (l - 1) * TBH);
        T* Z = Cell::kAliasZH ? S.Hs + l * TBH : S.Z + l * TBH * Cell::G;
        affine(TB, int(GH), Ls[l].D, layer_input(S, l, Tn, B, H, X), Ls[l].W_xh, Ls[l].b_h, Z);  // 1.
        parallel_slices(B, np, [&](int p, int b0, int R) {
            loop_forward<T>(cs.cells[l], Tn, R, layer_views<T, Cell>(S, l, L, Tn, B, H, b0, state0),
                            scratch.get() + per * p);
        });
        const idx last = idx(Tn - 1) * B * H;
        std::memcpy(stateT + idx(l) * B * H, S.Hs + l * TBH + last, sizeof(T) * B * H);
        if (Cell::P > 1) std::memcpy(stateT + idx(L + l) * B * H, S.E + l * Cell::X * TBH + last, sizeof(T) * B * H);
    }
}

// dW_hh (H x G*H) = h0^T dGH_0 + sum_{t>=1} H_{t-1}^T dGH_t, one product over the steps
template <typename T>
void recurrent_grad(int Tn, int B, int H, int GH, const T* h0, const T* Hs, const T* dGH, T* dW_hh) {
    blas::gemm(true, false, H, GH, B, T(1), h0, H, dGH, GH, T(0), dW_hh, GH);
    if (Tn > 1) blas::gemm(true, false, H, GH, (Tn - 1) * B, T(1), Hs, H, dGH + idx(B) * GH, GH, T(1), dW_hh, GH);
}

// db_h = sum of dgi rows (unless db_h is null); the GRU's db_hn = sum of the n block of dgh rows.
template <typename T, class Cell>
void bias_grads(idx M, int H, const T* dZ, const T* dGH, T* db_h, T* db_hn) {
    const int GH = Cell::G * H;
    if (db_h) {
        std::fill(db_h, db_h + GH, T(0));
        colsum_add(int(M), GH, dZ, db_h);
    }
    if (db_hn) {
        std::fill(db_hn, db_hn + H, T(0));
        for (idx r = 0; r < M; ++r) {
            const T* row = dGH + r * GH + 2 * H;
            for (int j = 0; j < H; ++j) db_hn[j] += row[j];
        }
    }
}

// Backward of the stack, layer by layer from the top (each layer's whole time
// loop, then its products over all steps). dY (T, B, H): dL/dY of the top
// layer; dstateT (P*L, B, H) or nullptr. Outputs dX (T, B, D), dstate0 (P*L, B, H), g.
// Sliding truncation in a stack: each loss term goes down the layers at its own age (AgeIO).
template <typename T, class Cell>
void stack_backward(const std::vector<LayerW<T>>& Ls, int H, int variant, int Tn, int B, const T* X,
                    const T* state0, const T* m_layers, const StackBufs<T>& S, const T* dY, const T* dstateT,
                    const T* scale, int window, T* dX, T* dstate0, const std::vector<LayerG<T>>& g, int parts) {
    const int L = int(Ls.size());
    const idx TB = idx(Tn) * B, TBH = TB * H;
    const int GH = Cell::G * H;
    Buffer<T> dZbuf(TB * GH), dGHbuf(Cell::kSepGh ? TB * GH : 0), dir(L > 1 ? TBH : 0);
    // sliding truncation of a stack: each term crosses the layers at its own age
    const int tau = L > 1 && window > 0 && window < Tn ? window : 0;
    Buffer<T> dZK(tau ? TB * tau * GH : 0), dirK(tau ? TBH * tau : 0);  // (T, tau, B, width)
    T* dZ = dZbuf.get();
    T* dGH = Cell::kSepGh ? dGHbuf.get() : dZ;
    const int np = auto_parts(B, Tn, GH, Ls[0].D, parts);
    const int Rmax = (B + np - 1) / np;
    CellStack<T, Cell> cs(Ls, H, variant, Uses{Rmax, false, true, window > 0 && window < Tn});
    const std::size_t per = backward_scratch<Cell>(H, Rmax, Tn, window);
    Buffer<T> scratch(per * np);
    for (int l = L - 1; l >= 0; --l) {
        if (tau && l < L - 1)  // age 0 of the terms from above: this layer's direct gradients
            for (int t = 0; t < Tn; ++t)
                std::memcpy(dir.get() + idx(t) * B * H, dirK.get() + idx(t) * tau * B * H, sizeof(T) * B * H);
        const T* direct = l == L - 1 ? dY : dir.get();
        if (Cell::kAliasZH) {  // dZ is computed in place of the direct gradients
            std::memcpy(dZ, direct, sizeof(T) * TBH);
            direct = dZ;
        }
        parallel_slices(B, np, [&](int p, int b0, int R) {
            const idx off = idx(b0) * H, goff = idx(b0) * GH;
            const T* dsT[2] = {nullptr, nullptr};
            T* ds0[2] = {nullptr, nullptr};
            for (int q = 0; q < Cell::P; ++q) {
                if (dstateT) dsT[q] = dstateT + (idx(q) * L + l) * B * H + off;
                ds0[q] = dstate0 + (idx(q) * L + l) * B * H + off;
            }
            AgeIO<T> ages;
            if (tau) {
                if (l < L - 1) ages.in = dirK.get() + off, ages.in_ts = idx(tau) * B * H, ages.in_as = idx(B) * H;
                if (l > 0) ages.out = dZK.get() + goff, ages.out_ts = idx(tau) * B * GH, ages.out_as = idx(B) * GH;
            }
            loop_backward<T>(cs.cells[l], Tn, R, layer_views<T, Cell>(S, l, L, Tn, B, H, b0, state0),
                             Seq<const T>{direct + off, idx(B) * H}, Seq<T>{dZ + goff, idx(B) * GH},
                             Seq<T>{dGH + goff, idx(B) * GH}, dsT, scale ? scale + b0 : nullptr, B, window, ds0,
                             scratch.get() + per * p, ages);
        });
        const T* in = layer_input(S, l, Tn, B, H, X);
        const int D = Ls[l].D;
        recurrent_grad(Tn, B, H, GH, state0 + idx(l) * B * H, S.Hs + l * TBH, dGH, g[l].W_hh);
        blas::gemm(true, false, D, GH, int(TB), T(1), in, D, dZ, GH, T(0), g[l].W_xh, GH);
        bias_grads<T, Cell>(TB, H, dZ, dGH, g[l].b_h, g[l].b_hn);
        if (tau && l >= 1) {  // every age's dX_l = dgi W_xh^T: layer l-1's direct gradient, per age
            blas::gemm(false, true, int(TB) * tau, D, GH, T(1), dZK.get(), GH, Ls[l].W_xh, GH, T(0), dirK.get(), D);
            if (m_layers)
                for (int t = 0; t < Tn; ++t)
                    for (int k = 0; k < tau; ++k) {
                        T* o = dirK.get() + (idx(t) * tau + k) * B * H;
                        mul_rows(idx(B) * H, o, m_layers + (l - 1) * TBH + idx(t) * B * H, o);
                    }
            continue;
        }
        T* out = l == 0 ? dX : dir.get();  // dX_l = dgi W_xh^T: layer l-1's direct gradient
        blas::gemm(false, true, int(TB), D, GH, T(1), dZ, GH, Ls[l].W_xh, GH, T(0), out, D);
        if (l >= 1 && m_layers) mul_rows(TBH, out, m_layers + (l - 1) * TBH, out);
    }
}

// ---------------------------------------------------------------------------
// The language model on token ids (batch-major (B, T), like the book).
// ---------------------------------------------------------------------------
template <typename T>
struct LMParams {
    std::vector<LayerW<T>> layers;  // layer 0's W_xh is (V, G*H): the one-hot input as a row gather
    const T* W_hq;  // (H, V)
    const T* b_q;   // (V,)
    int V, H, variant;
};

template <typename T>
struct LMGrads {
    std::vector<LayerG<T>> layers;
    T *W_hq, *b_q;
};

// Dropout masks of the LM (time-major, or nullptr): m_in (T, B, G*H) on the
// gathered rows of W_xh, m_layers (L-1, T, B, H), m_out (T, B, H).
template <typename T>
struct LMMasks {
    const T *in = nullptr, *layers = nullptr, *out = nullptr;
};

// Sizes of every gradient array, in the order LMGrads lists them.
template <typename T>
std::vector<std::size_t> lm_grad_sizes(const LMParams<T>& P, int G) {
    std::vector<std::size_t> s;
    const std::size_t H = P.H, GH = std::size_t(G) * P.H;
    for (const auto& l : P.layers) {
        s.push_back(std::size_t(l.D) * GH);
        s.push_back(H * GH);
        s.push_back(GH);
        s.push_back(l.b_hn ? H : 0);
    }
    s.push_back(H * P.V);
    s.push_back(P.V);
    return s;
}
template <typename T>
std::vector<T*> lm_grad_ptrs(const LMGrads<T>& g) {
    std::vector<T*> v;
    for (const auto& l : g.layers) {
        v.push_back(l.W_xh);
        v.push_back(l.W_hh);
        v.push_back(l.b_h);
        v.push_back(l.b_hn);
    }
    v.push_back(g.W_hq);
    v.push_back(g.b_q);
    return v;
}
template <typename T>
LMGrads<T> lm_grads_in(const LMParams<T>& P, int G, T* flat) {
    const auto s = lm_grad_sizes(P, G);
    LMGrads<T> g;
    std::size_t k = 0;
    for (std::size_t l = 0; l < P.layers.size(); ++l, k += 4) {
        LayerG<T> x;
        x.W_xh = flat, flat += s[k];
        x.W_hh = flat, flat += s[k + 1];
        x.b_h = flat, flat += s[k + 2];
        x.b_hn = s[k + 3] ? flat : nullptr, flat += s[k + 3];
        g.layers.push_back(x);
    }
    g.W_hq = flat, flat += s[k];
    g.b_q = flat;
    return g;
}

// 1. the row gather gi_t = W_xh[ids[:, t]] (* m_in) + b_h of step t for R rows of ids (stride Tn).
template <typename T>
void gather_step(const LayerW<T>& P, int GH, int Tn, int t, int R, int B, const std::int64_t* ids, const T* m_in,
                 T* A) {
    for (int r = 0; r < R; ++r) {
        const T* w = P.W_xh + idx(ids[idx(r) * Tn + t]) * GH;
        T* a = A + (idx(t) * R + r) * GH;
        if (m_in) {
            const T* m = m_in + (idx(t) * B + r) * GH;
            for (int j = 0; j < GH; ++j) a[j] = w[j] * m[j] + P.b_h[j];
        } else {
            for (int j = 0; j < GH; ++j) a[j] = w[j] + P.b_h[j];
        }
    }
}

// rows of a slice's (T, R, H) buffer times the mask's rows (T, B, H) of that slice
template <typename T>
void mask_slice(int Tn, int R, int B, int H, const T* a, const T* m, T* out) {
    for (int t = 0; t < Tn; ++t)
        mul_rows(idx(R) * H, a + idx(t) * R * H, m + idx(t) * B * H, out + idx(t) * R * H);
}

// The output projection's weights packed once per call for the register-tiled
// kernel, used while the model is small: there the products are thin (N = V or
// H) and BLAS's per-call packing and overhead dominate; above kSmallH, BLAS.
// (The gradients' products A^T B over all T*R rows, dW_hq, dW_hh and dW_xh,
// always go to BLAS: a K of thousands repays its packing, and the register-tiled
// kernel reads a transposed A with a stride (measured: the LSTM's dW_hh took a
// quarter of an H=128 step with AVX-512, more with AVX2; BLAS 3-5x faster).)
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
};


// C (Ka x N) = A^T B over M rows, A (M x Ka), B (M x N)
template <typename T>
void tn_product(int M, int Ka, int N, const T* A, const T* Bm, T* C) {
    blas::gemm(true, false, Ka, N, M, T(1), A, Ka, Bm, N, T(0), C, N);
}

// The working memory of one slice of R rows (elements of T), laid out by one
// walk for both its size and its pointers.
template <typename T, class Cell>
struct LMSlice {
    std::vector<T*> Hb, Z, E, Xin;  // per layer: (T+1, R, H) with h0 first; gates; extras; masked input
    T *Hout, *O, *dZ, *dGH, *dir, *ds0, *step, *loop;
    T *dZK = nullptr, *dirK = nullptr;  // sliding truncation of a stack: per age (T, tau, R, width)
    std::size_t size = 0;
    LMSlice(const LMParams<T>& P, const LMMasks<T>& mk, int Tn, int R, int window, bool train, T* base) {
        const int L = int(P.layers.size()), H = P.H, V = P.V, GH = Cell::G * H;
        const std::size_t M = std::size_t(Tn) * R;
        T* p = base;
        auto take = [&](std::size_t n) {
            T* r = p;
            size += n;
            if (p) p += n;
            return r;
        };
        for (int l = 0; l < L; ++l) {
            Hb.push_back(take((M + R) * H));
            Z.push_back(Cell::kAliasZH ? (Hb.back() ? Hb.back() + std::size_t(R) * H : nullptr) : take(M * GH));
            E.push_back(take(M * H * Cell::X));
            Xin.push_back(l >= 1 && mk.layers ? take(M * H) : nullptr);
        }
        Hout = mk.out ? take(M * H) : nullptr;
        O = take(M * V);
        if (!train) return;
        dZ = take(M * GH);
        dGH = Cell::kSepGh ? take(M * GH) : dZ;
        dir = take(M * H);
        ds0 = take(std::size_t(Cell::P) * R * H);
        step = take(Cell::step_scratch(R, H));
        loop = take(backward_scratch<Cell>(H, R, Tn, window));
        if (L > 1 && window > 0 && window < Tn) {
            dZK = take(M * window * GH);
            dirK = take(M * window * H);
        }
    }
    Views<T> views(int l, int Tn, int R, int H, const T* c0) const {
        const idx RH = idx(R) * H;
        Views<T> v;
        v.Hs = Seq<T>{Hb[l] + RH, RH};
        v.Z = Seq<T>{Z[l], RH * Cell::G};
        for (int x = 0; x < 2; ++x) v.E[x] = Seq<T>{x < Cell::X ? E[l] + x * idx(Tn) * RH : nullptr, RH};
        v.s0[0] = Hb[l];
        v.s0[1] = c0;
        return v;
    }
};

// The forward pass of the LM on a slice: layers, then O = H W_hq + b_q (T, R, V).
// Returns the top layer's (masked) output rows, the input of W_hq.
template <typename T, class Cell>
const T* lm_forward_slice(const LMParams<T>& P, const CellStack<T, Cell>& cs, const OutProj<T>& op,
                          const LMMasks<T>& mk, int Tn, int R, int B, const std::int64_t* ids, const T* state0,
                          int b0, const LMSlice<T, Cell>& w) {
    const int L = int(P.layers.size()), H = P.H, V = P.V, GH = Cell::G * H;
    const idx M = idx(Tn) * R, TBH = idx(Tn) * B * H;
    for (int l = 0; l < L; ++l) {
        std::memcpy(w.Hb[l], state0 + (idx(l) * B + b0) * H, sizeof(T) * R * H);
        const T* c0 = Cell::P > 1 ? state0 + (idx(L + l) * B + b0) * H : nullptr;
        if (l == 0) {
            const T* m_in = mk.in ? mk.in + idx(b0) * GH : nullptr;
            loop_forward<T>(cs.cells[0], Tn, R, w.views(0, Tn, R, H, c0), w.step,
                            [&](int t) { gather_step(P.layers[0], GH, Tn, t, R, B, ids, m_in, w.Z[0]); });
        } else {
            const T* in = w.Hb[l - 1] + idx(R) * H;
            if (mk.layers) {
                mask_slice(Tn, R, B, H, in, mk.layers + (l - 1) * TBH + idx(b0) * H, w.Xin[l]);
                in = w.Xin[l];
            }
            affine(M, GH, H, in, P.layers[l].W_xh, P.layers[l].b_h, w.Z[l]);
            loop_forward<T>(cs.cells[l], Tn, R, w.views(l, Tn, R, H, c0), w.step);
        }
    }
    const T* top = w.Hb[L - 1] + idx(R) * H;
    if (mk.out) {
        mask_slice(Tn, R, B, H, top, mk.out + idx(b0) * H, w.Hout);
        top = w.Hout;
    }
    for (idx i = 0; i < M; ++i) std::memcpy(w.O + i * V, P.b_q, sizeof(T) * V);
    op.project(P, int(M), top, w.O);
    return top;
}

// The state after the slice's last step: h of every layer, then c (LSTM).
template <typename T, class Cell>
void slice_state(const LMSlice<T, Cell>& w, int L, int Tn, int R, int B, int H, int b0, T* state) {
    for (int l = 0; l < L; ++l) {
        std::memcpy(state + (idx(l) * B + b0) * H, w.Hb[l] + idx(Tn) * R * H, sizeof(T) * R * H);
        if (Cell::P > 1)
            std::memcpy(state + (idx(L + l) * B + b0) * H, w.E[l] + idx(Tn - 1) * R * H, sizeof(T) * R * H);
    }
}

// The fused training step on a slice: forward, loss, and the whole backward.
// Returns the slice's sum of -log p (the caller divides by B*T); gradients are
// written (not accumulated) into g.
template <typename T, class Cell>
double lm_step_slice(const LMParams<T>& P, const CellStack<T, Cell>& cs, const OutProj<T>& op, const LMMasks<T>& mk,
                     int Tn, int R, int B, int b0, const std::int64_t* ids, const std::int64_t* tgt,
                     const T* state0, const T* scale, int window, const LMGrads<T>& g, T* new_state,
                     const LMSlice<T, Cell>& w) {
    const int L = int(P.layers.size()), H = P.H, V = P.V, GH = Cell::G * H;
    const idx M = idx(Tn) * R, TBH = idx(Tn) * B * H;
    T* O = w.O;
    const T* top = lm_forward_slice(P, cs, op, mk, Tn, R, B, ids, state0, b0, w);
    // loss and dO = (softmax - onehot) / (B*T), in place of O; the exponentials
    // of all rows in one vectorised pass
    const T inv = T(1) / T(double(B) * Tn);
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
    // dW_hq = H^T dO ; db_q = sum dO ; direct dH = dO W_hq^T (* m_out)
    tn_product(int(M), H, V, top, O, g.W_hq);
    std::fill(g.b_q, g.b_q + V, T(0));
    colsum_add(int(M), V, O, g.b_q);
    T* dZ = w.dZ;
    T* dGH = w.dGH;
    T* direct = Cell::kAliasZH ? dZ : w.dir;  // the plain RNN turns dH into dZ in place
    op.back(P, int(M), O, direct);
    if (mk.out) mask_slice(Tn, R, B, H, direct, mk.out + idx(b0) * H, direct);
    const idx RH = idx(R) * H;
    const int tau = w.dZK ? window : 0;
    for (int l = L - 1; l >= 0; --l) {
        const T* c0 = Cell::P > 1 ? state0 + (idx(L + l) * B + b0) * H : nullptr;
        T* ds0[2] = {w.ds0, w.ds0 + RH};  // the LM's state is detached: dstate0 is dropped
        AgeIO<T> ages;
        if (w.dZK) {
            if (l < L - 1) ages.in = w.dirK, ages.in_ts = tau * RH, ages.in_as = RH;
            if (l > 0) ages.out = w.dZK, ages.out_ts = tau * RH * Cell::G, ages.out_as = RH * Cell::G;
        }
        loop_backward<T>(cs.cells[l], Tn, R, w.views(l, Tn, R, H, c0), Seq<const T>{direct, RH},
                         Seq<T>{dZ, RH * Cell::G}, Seq<T>{dGH, RH * Cell::G}, nullptr, scale ? scale + b0 : nullptr,
                         B, window, ds0, w.loop, ages);
        const LayerG<T>& gl = g.layers[l];
        tn_product(int(M), H, GH, w.Hb[l], dGH, gl.W_hh);  // [h0; H_0..H_{T-2}]^T dGH in one product
        // the unmasked one-hot layer sums its dgi rows from the V rows of dW_xh below (fewer than T*R)
        const bool bias_from_rows = l == 0 && !mk.in;
        bias_grads<T, Cell>(M, H, dZ, dGH, bias_from_rows ? nullptr : gl.b_h, gl.b_hn);
        if (l >= 1) {
            const T* in = mk.layers ? w.Xin[l] : w.Hb[l - 1] + RH;
            tn_product(int(M), H, GH, in, dZ, gl.W_xh);
            if (w.dZK) {  // sliding truncation: every age's dX, age 0 the direct gradient below
                blas::gemm(false, true, int(M) * tau, H, GH, T(1), w.dZK, GH, P.layers[l].W_xh, GH, T(0), w.dirK, H);
                for (int t = 0; t < Tn; ++t)
                    for (int k = 0; k < tau; ++k) {
                        T* o = w.dirK + (idx(t) * tau + k) * RH;
                        if (mk.layers) mul_rows(RH, o, mk.layers + (l - 1) * TBH + (idx(t) * B + b0) * H, o);
                        if (k == 0) std::memcpy(direct + idx(t) * RH, o, sizeof(T) * RH);
                    }
                continue;
            }
            blas::gemm(false, true, int(M), H, GH, T(1), dZ, GH, P.layers[l].W_xh, GH, T(0), w.dir, H);
            if (mk.layers) mask_slice(Tn, R, B, H, w.dir, mk.layers + (l - 1) * TBH + idx(b0) * H, w.dir);
            if (Cell::kAliasZH) std::memcpy(dZ, w.dir, sizeof(T) * M * H);
            continue;
        }
        // dW_xh[ids] += dgi rows (* m_in)
        std::fill(gl.W_xh, gl.W_xh + idx(V) * GH, T(0));
        for (int t = 0; t < Tn; ++t)
            for (int r = 0; r < R; ++r) {
                T* wr = gl.W_xh + idx(ids[idx(r) * Tn + t]) * GH;
                const T* d = dZ + (idx(t) * R + r) * GH;
                if (mk.in) {
                    const T* m = mk.in + (idx(t) * B + b0 + r) * GH;
                    for (int j = 0; j < GH; ++j) wr[j] += d[j] * m[j];
                } else {
                    for (int j = 0; j < GH; ++j) wr[j] += d[j];
                }
            }
        if (bias_from_rows) {  // every dgi row went to exactly one row of dW_xh
            std::fill(gl.b_h, gl.b_h + GH, T(0));
            colsum_add(V, GH, gl.W_xh, gl.b_h);
        }
    }
    slice_state(w, L, Tn, R, B, H, b0, new_state);
    return nll;
}

// The whole training step: slices of the batch side by side, then their
// gradients summed. Returns the mean loss. state0, new_state (P*L, B, H).
template <typename T, class Cell>
double lm_loss_and_grad(const LMParams<T>& P, const LMMasks<T>& mk, int Tn, int B, const std::int64_t* ids,
                        const std::int64_t* tgt, const T* state0, const T* scale, int window, const LMGrads<T>& g,
                        T* new_state, int parts) {
    const int H = P.H, GH = Cell::G * H;
    const int np = auto_parts(B, Tn, GH, P.V, parts);
    const int Rmax = (B + np - 1) / np;
    const std::size_t per = LMSlice<T, Cell>(P, mk, Tn, Rmax, window, true, nullptr).size;
    const auto sizes = lm_grad_sizes(P, Cell::G);
    const std::size_t gsz = std::accumulate(sizes.begin(), sizes.end(), std::size_t(0));
    T* work = reused_memory<T>(kSlotWork, per * np + gsz * (np - 1));  // kept across calls (see there)
    std::vector<double> nll(np, 0.0);
    std::vector<LMGrads<T>> gs(np, g);
    for (int p = 1; p < np; ++p) gs[p] = lm_grads_in(P, Cell::G, work + per * np + gsz * (p - 1));
    CellStack<T, Cell> cs(P.layers, H, P.variant, Uses{Rmax, true, true, window > 0 && window < Tn},
                          reused_memory<T>(kSlotPacked, CellStack<T, Cell>::memory_size(P.layers.size(), H)));
    const OutProj<T> op(P);
    parallel_slices(B, np, [&](int p, int b0, int R) {
        LMSlice<T, Cell> w(P, mk, Tn, R, window, true, work + per * p);
        nll[p] = lm_step_slice(P, cs, op, mk, Tn, R, B, b0, ids + idx(b0) * Tn, tgt + idx(b0) * Tn, state0,
                               scale, window, gs[p], new_state, w);
    });
    double total = 0;
    for (int p = 0; p < np; ++p) total += nll[p];
    const auto dst = lm_grad_ptrs(g);
    for (int p = 1; p < np; ++p) {
        const auto src = lm_grad_ptrs(gs[p]);
        for (std::size_t k = 0; k < dst.size(); ++k)
            for (std::size_t i = 0; i < sizes[k]; ++i) dst[k][i] += src[k][i];
    }
    return total / (double(B) * Tn);
}

// Inference: logits (B, T, V) batch-major and the final state (P*L, B, H).
template <typename T, class Cell>
void lm_forward(const LMParams<T>& P, int Tn, int B, const std::int64_t* ids, const T* state0, T* logits,
                T* new_state, int parts) {
    const int H = P.H, V = P.V, L = int(P.layers.size());
    const int np = auto_parts(B, Tn, Cell::G * H, P.V, parts);
    const int Rmax = (B + np - 1) / np;
    const LMMasks<T> mk;
    const std::size_t per = LMSlice<T, Cell>(P, mk, Tn, Rmax, 0, false, nullptr).size +
                            Cell::step_scratch(Rmax, H);
    Buffer<T> work(per * np);
    CellStack<T, Cell> cs(P.layers, H, P.variant, Uses{Rmax, true, false, false});
    const OutProj<T> op(P);
    parallel_slices(B, np, [&](int p, int b0, int R) {
        LMSlice<T, Cell> w(P, mk, Tn, R, 0, false, work.get() + per * p);
        w.step = work.get() + per * p + w.size;
        lm_forward_slice(P, cs, op, mk, Tn, R, B, ids + idx(b0) * Tn, state0, b0, w);
        for (int t = 0; t < Tn; ++t)
            for (int r = 0; r < R; ++r)
                std::memcpy(logits + (idx(b0 + r) * Tn + t) * V, w.O + (idx(t) * R + r) * V, sizeof(T) * V);
        slice_state(w, L, Tn, R, B, H, b0, new_state);
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
// matrix-vector one, bound by reading the weights (a GRU's W_hh at H = 512 is
// 3 MB, an LSTM's 4 MB: more than a core's L2, streamed every character), so
// the hidden units are split between `parts` threads: part q owns a contiguous
// block of units [c0, c1) (whole panels) and, in every gate block, the matching
// columns of W_hh and of W_xh of layers >= 1, packed once per call by the part
// itself into one contiguous stretch that its core streams alone (packed
// panels: streaming the block's columns from W_hh as stored, matvec::axpy with
// a row stride, took 1.4-1.8x the CPU time for GRU/LSTM at H = 512). The cell's
// elementwise step for those units needs nothing from the other parts (an LSTM
// part owns its units' c), so the only exchange is h: one barrier per layer
// and step, h double-buffered. Every thread then computes the (small) logits
// and the same token itself, so no second barrier is needed.
// The split pays only while every thread has a core: when another process
// takes one, each step waits a scheduler tick for the descheduled partner (up
// to 70x slower than one thread). So the barrier blocks rather than spins,
// and a call whose threads keep having to block (kSoloAfter of the last
// kWindow barriers) goes on with one thread, which takes every part's units.
// Two threads by default when a step streams at least kGenSplitMacs weights
// (measured on a 2-core AVX2 EPYC: the Elman cell at H = 256, G*H*H*L terms).
constexpr double kGenSplitMacs = 65536;
constexpr int kWindow = 32, kSoloAfter = 3;

template <typename T, class Cell>
int generate_parts(int H, int L, int requested) {
    const int panels = (H + kern::NR<T> - 1) / kern::NR<T>;
    int parts = requested;
    if (parts <= 0) {
        const double macs = double(Cell::G) * H * H * (2.0 * L - 1.0);  // W_hh of every layer, W_xh of layers >= 1
        parts = macs >= kGenSplitMacs ? std::min(blas::SingleThreaded::user_threads(), usable_cores()) : 1;
        parts = std::min(parts, 2);
    }
    return std::max(1, std::min({parts, panels, explicit_parts_cap()}));
}

template <typename T, class Cell>
void lm_generate(const LMParams<T>& P, const std::int64_t* prefix, int np, int num_preds, double temperature,
                 int top_k, const double* uniforms, std::int32_t* out, int parts) {
    constexpr int G = Cell::G, W = kern::NR<T>;
    const int H = P.H, V = P.V, L = int(P.layers.size()), GH = G * H;
    const int panels = (H + W - 1) / W;
    parts = generate_parts<T, Cell>(H, L, parts);
    // Packed weights: per layer, W_hh then (l >= 1) W_xh, each G * packed_size(H, H)
    // elements; a part's columns of all gates are one stretch at its first panel.
    const std::size_t per_mat = std::size_t(G) * kern::packed_size<T>(H, H);
    const std::size_t n_mats = 2 * std::size_t(L) - 1;
    auto mat = [&](int l, bool xh) { return std::size_t(l == 0 ? 0 : 2 * l - 1 + (xh ? 1 : 0)) * per_mat; };
    Buffer<T> packed(per_mat * n_mats + kern::packed_size<T>(H, V));
    T* Wq = packed.get() + per_mat * n_mats;
    kern::pack_b(H, V, P.W_hq, V, false, Wq);
    // h and c of every layer, current and next (parts write their own units)
    Buffer<T> state(4 * std::size_t(L) * H);
    std::fill(state.get(), state.get() + 4 * std::size_t(L) * H, T(0));
    // per part: gates (G*H wide at most), hidden projection (kSepGh), two extras
    const std::size_t per_part = 2 * std::size_t(GH) + 2 * std::size_t(H);
    Buffer<T> scratch(per_part * parts);
    Barrier barrier(parts);
    // Written only by the thread that releases a barrier, before the release;
    // read by every thread after it: all threads see the same value each step.
    int rounds = 0, blocked = 0;
    std::atomic<bool> solo{false};
    auto on_release = [&](bool was_blocked) {
        blocked += was_blocked;
        if (++rounds == kWindow) {
            if (blocked >= kSoloAfter) solo.store(true, std::memory_order_relaxed);
            rounds = blocked = 0;
        }
    };
    // The threads wait until every one has been created: the system may refuse
    // some (thread limit), and the units are then split between those that run.
    std::promise<int> started;
    const std::shared_future<int> go = started.get_future().share();
    // A part's units are fixed once n is known; every thread derives the same.
    struct Part {
        int p0, p1, c0, c1;
    };
    std::vector<Part> part(parts);
    std::vector<Cell> cell;  // per layer and part: the cell on the part's units (b_hn at them)
    cell.reserve(std::size_t(L) * parts);

    auto worker = [&](int me) {
        const int n = go.get();
        const Part& mine = part[me];
        const int np_me = mine.p1 - mine.p0, Hp_me = mine.c1 - mine.c0;
        // pack this part's columns of every gate (its core touches them first)
        for (int l = 0; l < L; ++l)
            for (int x = 0; x < (l == 0 ? 1 : 2); ++x) {
                const T* src = x ? P.layers[l].W_xh : P.layers[l].W_hh;
                T* dst = packed.get() + mat(l, x == 1) + std::size_t(G) * mine.p0 * H * W;
                for (int g = 0; g < G; ++g)
                    kern::pack_b(H, Hp_me, src + idx(g) * H + mine.c0, GH, false,
                                 dst + std::size_t(g) * np_me * H * W);
            }
        std::vector<T*> h(L), hn(L), c(L), cn(L);
        for (int l = 0; l < L; ++l) {
            T* b = state.get() + 4 * std::size_t(l) * H;
            h[l] = b, hn[l] = b + H, c[l] = b + 2 * H, cn[l] = b + 3 * H;
        }
        std::vector<T> o(V);
        std::vector<double> e(V);
        std::vector<int> order(V);
        int q0 = me, q1 = me + 1;  // the parts this thread runs
        bool zig = false;          // panel order alternates step to step (see gemv_pb)
        bool alone = n == 1;
        // Layer l's units of part q: z = gi (+ h W_hh unless kSepGh), then the cell.
        auto run_part = [&](int l, int q, std::int64_t tok) {
            const Part& pt = part[q];
            const int npq = pt.p1 - pt.p0, Hp = pt.c1 - pt.c0;
            T* z = scratch.get() + per_part * q;
            T* gh = Cell::kSepGh ? z + GH : z;
            T* x0 = z + 2 * GH;
            const LayerW<T>& Lw = P.layers[l];
            const T* Whh = packed.get() + mat(l, false) + std::size_t(G) * pt.p0 * H * W;
            for (int g = 0; g < G; ++g) {
                const idx col = idx(g) * H + pt.c0;
                if (l == 0) {
                    const T* w = Lw.W_xh + idx(tok) * GH + col;
                    for (int j = 0; j < Hp; ++j) z[g * Hp + j] = w[j] + Lw.b_h[col + j];
                } else {
                    std::memcpy(z + g * Hp, Lw.b_h + col, sizeof(T) * Hp);
                    const T* Wxh = packed.get() + mat(l, true) + std::size_t(G) * pt.p0 * H * W;
                    kern::gemv_pb(H, h[l - 1], Wxh + std::size_t(g) * npq * H * W, 0, npq, z + g * Hp, Hp, zig);
                }
                if (Cell::kSepGh) std::fill(gh + g * Hp, gh + (g + 1) * Hp, T(0));
                kern::gemv_pb(H, h[l], Whh + std::size_t(g) * npq * H * W, 0, npq, gh + g * Hp, Hp, zig);
            }
            const T* prev[2] = {h[l] + pt.c0, c[l] + pt.c0};
            T* ext[2] = {Cell::P > 1 ? cn[l] + pt.c0 : x0, x0 + H};
            cell[std::size_t(l) * n + q].pointwise(1, prev, z, gh, ext, hn[l] + pt.c0);
        };
        // one step of every layer; false: this thread leaves (thread 0 goes on alone)
        auto step = [&](std::int64_t tok) {
            for (int l = 0; l < L; ++l) {
                for (int q = q0; q < q1; ++q) run_part(l, q, tok);
                std::swap(h[l], hn[l]);
                std::swap(c[l], cn[l]);
                if (alone) continue;
                barrier.wait(on_release);
                if (!solo.load(std::memory_order_relaxed)) continue;
                alone = true;  // after this barrier nobody reads this layer's units but thread 0
                if (me != 0) return false;
                q0 = 0, q1 = n;
            }
            zig = !zig;
            return true;
        };
        for (int i = 0; i < np; ++i)
            if (!step(prefix[i])) return;
        for (int i = 0; i < num_preds; ++i) {
            std::memcpy(o.data(), P.b_q, sizeof(T) * V);  // O = H W_hq + b_q
            kern::gemv_pb(H, h[L - 1], Wq, 0, (V + W - 1) / W, o.data(), V, false);
            const int tok = sample_token(o.data(), V, temperature, top_k, uniforms ? uniforms[i] : 0.0, e.data(),
                                         order.data());
            if (me == 0) out[i] = tok;
            if (i + 1 < num_preds && !step(tok)) return;
        }
    };
    std::vector<std::thread> th;
    try {
        th.reserve(parts - 1);
        for (int p = 1; p < parts; ++p) th.emplace_back(worker, p);
    } catch (const std::exception&) {
    }
    const int n = int(th.size()) + 1;
    for (int q = 0; q < n; ++q) {
        Part& pt = part[q];
        pt.p0 = panels * q / n, pt.p1 = panels * (q + 1) / n;
        pt.c0 = pt.p0 * W, pt.c1 = std::min(H, pt.p1 * W);
    }
    for (int l = 0; l < L; ++l)
        for (int q = 0; q < n; ++q) {
            const T* b_hn = P.layers[l].b_hn;
            cell.emplace_back(nullptr, b_hn ? b_hn + part[q].c0 : nullptr, part[q].c1 - part[q].c0, P.variant);
        }
    barrier.reset(n);
    started.set_value(n);  // publishes part and cell to the workers
    worker(0);
    for (auto& x : th) x.join();
}

// Calls f(Tag<Cell>{}, variant) for the registered cell called name; false if none is.
template <template <class> class C>
struct CellTag {
    template <typename T>
    using type = C<T>;
};
template <class F>
bool with_cell(const std::string& name, F&& f) {
#define FASTSEQ_CELL_CASE(NAME, TMPL, VARIANT) \
    if (name == NAME) {                        \
        f(CellTag<TMPL>{}, VARIANT);           \
        return true;                           \
    }
    FASTSEQ_CELLS(FASTSEQ_CELL_CASE)
#undef FASTSEQ_CELL_CASE
    return false;
}

}  // namespace rnn
}  // namespace fastseq
