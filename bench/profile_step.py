"""The nn.LSTM row's training step (bench/quality_cells.py's torch_row) part by part, and fastseq's dropout
masks drawn now and as before, for the recipe of a budget (issue 11); CPU and wall milliseconds per step.

fastseq's own step, part by part as the Trainer runs it, is bench/bench_loop.py's. Here:
  * PyTorch: the loop of quality_cells.torch_row on the command's batches: the batch, its tensors, the
    forward (nn.LSTM, the output dropout, nn.Linear, cross-entropy), the backward, clipping and Adam;
  * fastseq masks: RNNLM.draw_masks (uniforms in the mask's dtype, written in place) against the draw of
    before (float64 uniforms, then a select into the dtype), for --input-dropout as the recipe has it and 0.

Usage (machine shared: compare the parts of one run; CPU time is the load-independent figure):
    python bench/profile_step.py --threads 2 --steps 20
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import machine_line  # noqa: E402

import fastseq  # noqa: E402
from fastseq.cli import runs  # noqa: E402
from quality_cells import TorchLM, recipe  # noqa: E402


class Parts:
    """Wall and CPU seconds by part, in the order first seen."""

    def __init__(self):
        self.t = {}

    def __call__(self, name, f, *args):
        w, c = time.perf_counter(), time.process_time()
        out = f(*args)
        acc = self.t.setdefault(name, [0.0, 0.0])
        acc[0] += time.perf_counter() - w
        acc[1] += time.process_time() - c
        return out

    def rows(self, steps):
        total = [sum(v[i] for v in self.t.values()) for i in (0, 1)]
        out = [(k, 1000 * w / steps, 1000 * c / steps, 100 * c / total[1]) for k, (w, c) in self.t.items()]
        return out + [("total", 1000 * total[0] / steps, 1000 * total[1] / steps, 100.0)]


def masks_before(model, rng, T, B):
    """The masks as they were drawn before December 2026's fifth session (float64 uniforms, then a
    select into the dtype): the same masks for float64 models, other draws for float32 ones."""
    def one(p, shape):
        if not p:
            return None
        return np.where(rng.random(shape) >= p, model.dtype.type(1 / (1 - p)), model.dtype.type(0))
    GH = model.params["b_h"].shape[0]
    return one(model.input_dropout, (T, B, GH)), None, one(model.dropout, (T, B, model.num_hiddens))


def mask_parts(hp, vocab, steps):
    """(name, wall ms, CPU ms, share) per draw of one step's masks: now and before, with and without input dropout."""
    rng = np.random.default_rng(0)
    t = Parts()
    for q in sorted({hp["input_dropout"], 0.0}, reverse=True):
        model = runs.new_model(dict(hp, input_dropout=q), len(vocab), "cpp")
        T, B = hp["steps"], hp["batch"]
        for _ in range(steps):
            t(f"now, input dropout {q:g}", model.draw_masks, rng, T, B)
            t(f"before, input dropout {q:g}", masks_before, model, rng, T, B)
    return t.rows(steps)[:-1]


def torch_parts(hp, vocab, train_ids, steps, warmup, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(hp["seed"])
    model = TorchLM(hp["cell"], len(vocab), hp, torch)
    model.train(True)
    opt = torch.optim.Adam(model.parameters, lr=hp["lr"])
    batches = iter(runs.loader(hp, train_ids))
    F = torch.nn.functional
    state = None
    t = Parts()

    def fwd(x, y, state):
        logits, state = model.forward(x, state)
        return F.cross_entropy(logits.reshape(-1, model.vocab_size), y.reshape(-1)), state

    def bwd(loss):
        opt.zero_grad()
        loss.backward()

    for i in range(warmup + steps):
        if i == warmup:
            t = Parts()
        X, Y = t("data (next batch)", next, batches)
        x, y = t("data (to tensors)", lambda: (torch.from_numpy(X.astype(np.int64)),
                                               torch.from_numpy(Y.astype(np.int64))))
        loss, state = t("forward (with dropout)", fwd, x, y, state)
        t("backward", bwd, loss)
        t("clip", torch.nn.utils.clip_grad_norm_, model.parameters, hp["clip"])
        t("optimizer (Adam)", opt.step)
        state = tuple(s.detach() for s in state)
    return t.rows(steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="the budget whose recipe is profiled (default: 10)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--train-arg", action="append", default=[], help="an extra `fastseq train` option (repeatable)")
    p.add_argument("--no-torch", action="store_true")
    a = p.parse_args(argv)
    fastseq.set_num_threads(a.threads)
    hp = recipe("lstm", a.minutes, a.train_arg)
    vocab, train_ids, _ = runs.prepare_data(hp)
    lines = [f"machine: {machine_line()}; FASTSEQ_ISA={os.environ.get('FASTSEQ_ISA', 'unset')}; "
             f"{a.threads} threads; load average {os.getloadavg()[0]:.1f} at the start",
             f"recipe: {', '.join(f'{k} {hp[k]}' for k in ('hidden', 'steps', 'batch', 'dropout', 'input_dropout'))}; "
             f"{a.steps} steps after {a.warmup}", ""]
    blocks = [("fastseq dropout masks of one step", mask_parts(hp, vocab, a.steps))]
    if not a.no_torch:
        blocks.append(("PyTorch nn.LSTM row", torch_parts(hp, vocab, train_ids, a.steps, a.warmup, a.threads)))
    for name, rows in blocks:
        lines += [f"| {name}: part | wall ms/step | CPU ms/step | share of CPU |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {w:.1f} | {c:.1f} | {s:.0f}% |" for k, w, c, s in rows] + [""]
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end; command: python bench/profile_step.py "
                 + " ".join(argv if argv is not None else sys.argv[1:]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
