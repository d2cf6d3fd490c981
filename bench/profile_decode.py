"""Per-call cost of fastseq.torch LSTM/GRU against torch.nn at B=1, T=1, 2 layers, under torch.no_grad():
the whole call, the kernel call alone (_core.cell_forward) and the Python side building the parameters.

    python bench/profile_decode.py          (THREADS=n for n threads)
"""
import sys, time, os
import numpy as np
import torch
import fastseq, fastseq.torch as ft
from fastseq import _core
print("fastseq from", fastseq.__file__)
torch.set_num_threads(int(os.environ.get("THREADS", "1")))

def best(f, n=200, rounds=5):
    b = 1e9
    f()
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n): f()
        b = min(b, (time.perf_counter() - t0) / n)
    return b * 1e6

for cls in ("LSTM", "GRU"):
    for H in (200, 650):
        torch.manual_seed(0)
        ref = getattr(torch.nn, cls)(H, H, 2).eval()
        ours = getattr(ft, cls)(H, H, 2).eval()
        x = torch.randn(1, 1, H)
        with torch.no_grad():
            _, hx = ref(x)
            t_ref = best(lambda: ref(x, hx))
            t_ours = best(lambda: ours(x, hx))
            # kernel alone
            params = ours._params(ours._weights())
            X = x.numpy(); P = 2 if cls == "LSTM" else 1
            s0 = np.zeros((P * 2, 1, H), np.float32)
            cell = cls.lower()
            t_kern = best(lambda: _core.cell_forward(cell, X, s0, params))
            t_params = best(lambda: ours._params(ours._weights()))
        print(f"{cls} H={H}: torch {t_ref:.1f} us  fastseq {t_ours:.1f} us  kernel call {t_kern:.1f} us  "
              f"_params {t_params:.1f} us  ratio {t_ref / t_ours:.2f}x", flush=True)
