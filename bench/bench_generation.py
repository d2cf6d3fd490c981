"""The generation rows of ``bench/bench_rnn.py --cells`` alone (B=1, H=512, greedy, V=65, 400 characters
after a 3-character prefix; every cell against a PyTorch loop over nn.RNN/nn.GRU/nn.LSTM), without its
long training rows: the same functions, the same interleaved best-of-3 timing.

    python bench/bench_generation.py                                        # the machine's own ISA path
    FASTSEQ_ISA=avx2 OPENBLAS_CORETYPE=Haswell python bench/bench_generation.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_rnn import (GEN_H, GEN_N, TORCH_THREADS, best_times, fastest, fastseq_cell_generate,  # noqa: E402
                       torch_cell_generate)
from conftest import machine_line  # noqa: E402


def main():
    print(f"machine: {machine_line()}; FASTSEQ_ISA={os.environ.get('FASTSEQ_ISA', 'unset')}; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| cell | C++ us/char (threads) | PyTorch loop us/char (threads) | ratio | target 5x |")
    print("|---|---|---|---|---|")
    for cell in ("rnn_tanh", "gru", "lstm"):
        cases = {("cpp", n): (n, fastseq_cell_generate(cell, GEN_H, GEN_N)) for n in (1, 2)}
        cases.update({("torch", n): (n, torch_cell_generate(cell, GEN_H, GEN_N)) for n in TORCH_THREADS})
        t = best_times(cases, rounds=3, min_round=0.2)
        c, tt = fastest(t, "cpp"), fastest(t, "torch")
        r = tt[0] / c[0]
        print(f"| {cell} | {c[0] / GEN_N * 1e6:.1f} ({c[1][1]}) | {tt[0] / GEN_N * 1e6:.1f} ({tt[1][1]}) | "
              f"{r:.1f}x | {'yes' if r >= 5 else 'NO'} |", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
