// The break-even of packing W_hh for one row (float32): packing W_hh and W_hh^T against one
// matrix-vector product on packed panels and on W_hh as stored (csrc/matvec.h). Built outside the package:
//   g++ -O3 -std=c++17 -fno-trapping-math -Icsrc bench/breakeven_pack.cpp -o /tmp/be \
//     && /tmp/be && FASTSEQ_ISA=avx2 /tmp/be
#include <chrono>
#include <cstdio>
#include <vector>
#include <random>
#include "kernels.h"
#include "matvec.h"
using namespace fastseq;
using clk = std::chrono::steady_clock;
template <class F> double best_us(F f, int reps) {
    double b = 1e30;
    for (int r = 0; r < 7; ++r) {
        auto t0 = clk::now();
        for (int i = 0; i < reps; ++i) f();
        b = std::min(b, std::chrono::duration<double, std::micro>(clk::now() - t0).count() / reps);
    }
    return b;
}
int main() {
    std::printf("| H | G | W_hh MB | pack W_hh us | pack W_hh^T us | packed gemv us | streamed axpy us | streamed dot us | break-even steps (fwd) |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int H : {200, 512, 650}) for (int G : {3, 4}) {
        const int N = G * H;
        std::vector<float> W(size_t(H) * N), pk(kern::packed_size<float>(H, N)), pkt(kern::packed_size<float>(N, H));
        std::vector<float> x(N, 0.01f), y(N), z(H);
        std::mt19937 g(0); std::uniform_real_distribution<float> u(-0.1f, 0.1f);
        for (auto& w : W) w = u(g);
        double tp = best_us([&] { kern::pack_b(H, N, W.data(), N, false, pk.data()); }, 5);
        double tpt = best_us([&] { kern::pack_b(N, H, W.data(), N, true, pkt.data()); }, 5);
        double tg = best_us([&] { std::fill(y.begin(), y.end(), 0.f); kern::gemv_pb(H, x.data(), pk.data(), 0, (N + 31) / 32, y.data(), N, false); }, 20);
        double ta = best_us([&] { matvec::axpy(H, N, x.data(), W.data(), N, y.data(), false); }, 20);
        double td = best_us([&] { matvec::dot(H, N, W.data(), N, x.data(), z.data(), false); }, 20);
        double be = ta > tg ? tp / (ta - tg) : -1;
        std::printf("| %d | %d | %.2f | %.0f | %.0f | %.0f | %.0f | %.0f | %s |\n", H, G, H * N * 4 / 1e6, tp, tpt, tg, ta, td,
                    be < 0 ? "never (streamed is as fast)" : (std::to_string(int(be + 1)) + " steps").c_str());
    }
}
