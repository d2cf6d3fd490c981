"""fastseq.torch.LSTM/GRU against torch.nn.LSTM/GRU inside a real PyTorch loop, the import being the
only change (issue 14).

Training: PyTorch's word-language-model example (Embedding -> 2-layer LSTM/GRU -> Dropout -> Linear ->
cross-entropy; AdamW, clip_grad_norm_ 0.25, the state carried over detached), B=20, T=35, V=10000,
float32, H=200 and H=650, at 1 and 2 threads (torch.set_num_threads; fastseq.torch follows it).
Inference: torch.no_grad(), B=1, one step per call as a decoder calls it (embedding, module, Linear,
argmax fed back). Ratios are torch's time over fastseq's, both measured in the same run, interleaved,
the best of several rounds each.

    python bench/bench_torch_modules.py [OUT.md]                       # the machine's own ISA path
    FASTSEQ_ISA=avx2 OPENBLAS_CORETYPE=Haswell python bench/bench_torch_modules.py [OUT.md]
    python -m pytest bench/bench_torch_modules.py --benchmark-only     # pytest-benchmark timings
"""
import os
import sys
import time

import pytest

torch = pytest.importorskip("torch")

import fastseq  # noqa: E402
import fastseq.torch as ft  # noqa: E402

V, B, T, LAYERS = 10000, 20, 35, 2
HS = (200, 650)
CELLS = ("LSTM", "GRU")
TARGET_TRAIN, TARGET_INFER = 2.0, 3.0


class WordLM(torch.nn.Module):
    """PyTorch's examples/word_language_model RNNModel (untied), with the recurrent class given."""

    def __init__(self, rnn_cls, H, dropout=0.2):
        super().__init__()
        self.encoder = torch.nn.Embedding(V, H)
        self.rnn = rnn_cls(H, H, LAYERS, dropout=dropout)
        self.drop = torch.nn.Dropout(dropout)
        self.decoder = torch.nn.Linear(H, V)

    def forward(self, ids, hx=None):
        y, hx = self.rnn(self.drop(self.encoder(ids)), hx)
        return self.decoder(self.drop(y)), hx


def _detach(hx):
    return tuple(h.detach() for h in hx) if isinstance(hx, tuple) else hx.detach()


def train_step_fn(rnn_cls, H, seed=0):
    """A closure running one training step (time-major batches, as the example's)."""
    torch.manual_seed(seed)
    model = WordLM(rnn_cls, H).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, V, (T + 1, B))
    state = {"hx": None}

    def step():
        logits, hx = model(data[:-1], state["hx"])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), data[1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        state["hx"] = _detach(hx)
        return loss.item()
    return step


def infer_fn(rnn_cls, H, steps=50, seed=0):
    """A closure decoding ``steps`` tokens greedily, B=1, one module call per token."""
    torch.manual_seed(seed)
    model = WordLM(rnn_cls, H).eval()

    def run():
        with torch.no_grad():
            tok, hx = torch.zeros((1, 1), dtype=torch.int64), None
            for _ in range(steps):
                logits, hx = model(tok, hx)
                tok = logits[-1].argmax(-1, keepdim=True)
        return int(tok)
    return run


def module_step_fn(rnn_cls, H, seed=0):
    """The recurrent module alone, as the training step runs it: forward and backward of (T, B, H)."""
    torch.manual_seed(seed)
    rnn = rnn_cls(H, H, LAYERS, dropout=0.2).train()
    X = torch.randn(T, B, H, requires_grad=True)
    dY = torch.randn(T, B, H)

    def step():
        y, _ = rnn(X)
        y.backward(dY)
    return step


def module_decode_fn(rnn_cls, H, steps=50, seed=0):
    """The recurrent module alone, B=1, one call per step, under torch.no_grad()."""
    torch.manual_seed(seed)
    rnn = rnn_cls(H, H, LAYERS).eval()
    x = torch.randn(1, 1, H)

    def run():
        with torch.no_grad():
            hx = None
            for _ in range(steps):
                y, hx = rnn(x, hx)
        return y
    return run


def best_time(fns, rounds, reps):
    """Best time per call of each fn, rounds interleaved so both see the same machine load."""
    best = [float("inf")] * len(fns)
    for f in fns:
        f()                                   # warm-up
    for _ in range(rounds):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            best[i] = min(best[i], (time.perf_counter() - t0) / reps)
    return best


def table(rounds=3, threads_list=(1, 2)):
    from conftest import machine_line

    isa = os.environ.get("FASTSEQ_ISA", "native")
    rows = [f"machine: {machine_line()}", f"FASTSEQ_ISA={isa}, torch {torch.__version__}", "",
            "| workload | cell | H | threads | torch (ms) | fastseq (ms) | ratio | target |",
            "|---|---|---|---|---|---|---|---|"]
    workloads = [("train step B=20 T=35 (whole loop)", train_step_fn, 1, 2, TARGET_TRAIN),
                 ("  module alone: forward+backward", module_step_fn, 1, 3, None),
                 ("decode B=1, per token (whole model)", infer_fn, 50, 1, TARGET_INFER),
                 ("  module alone, per step", module_decode_fn, 50, 1, None)]
    # FASTSEQ_BENCH_WORKLOADS=decode (or train): only those rows (a loaded machine's short run)
    only = os.environ.get("FASTSEQ_BENCH_WORKLOADS")
    if only:
        workloads = [w for w in workloads if (w[1] in (infer_fn, module_decode_fn)) == (only == "decode")]
    for threads in threads_list:
        torch.set_num_threads(threads)
        for cell in CELLS:
            for H in HS:
                t = {}
                for name, make, per, reps, target in workloads:
                    t_torch, t_fs = best_time([make(getattr(torch.nn, cell), H), make(getattr(ft, cell), H)],
                                              rounds, reps)
                    t[make] = (t_torch / per, t_fs / per)
                    goal = f">= {target}x" if target else ""
                    rows.append(f"| {name} | {cell} | {H} | {threads} | {t_torch * 1e3 / per:.3f} "
                                f"| {t_fs * 1e3 / per:.3f} | {t_torch / t_fs:.2f}x | {goal} |")
                    print(rows[-1], flush=True)
                if infer_fn in t and module_decode_fn in t:
                    # The import changes only the module: even a module taking no time leaves torch's
                    # embedding, Linear over V and argmax, so the whole-model ratio is at most
                    # whole / (whole - module), both torch's, from the same run.
                    whole, mod = t[infer_fn][0], t[module_decode_fn][0]
                    cap = whole / (whole - mod) if whole > mod else float("inf")
                    rows.append(f"| cap of the whole-model ratio (torch's module {100 * mod / whole:.0f}% of its "
                                f"step) | {cell} | {H} | {threads} | | | {cap:.2f}x | |")
                    print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("H", HS)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", ["torch", "fastseq"])
@pytest.mark.parametrize("make", [train_step_fn, module_step_fn, infer_fn, module_decode_fn],
                         ids=["train_step", "module_step", "decode_50", "module_decode_50"])
def test_bench(benchmark, make, impl, cell, H):
    benchmark(make(getattr(torch.nn if impl == "torch" else ft, cell), H))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    out = table()
    print(out)
    if len(sys.argv) > 1:
        from fastseq.checkpoint import atomic_write
        atomic_write(sys.argv[1], out.encode("utf-8"))
