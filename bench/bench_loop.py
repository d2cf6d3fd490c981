"""Where a training step of the 10-minute recipe goes: the kernel against everything around it.

The run is `fastseq train --corpus tinyshakespeare --minutes 10`'s own: its settings
(fastseq.cli.runs.hparams_from_args with the budget's BUDGET_SETTINGS: GRU H=512, one layer, T=64, B=32,
dropout 0.35, AdamW with weight decay 0.1 and the cosine decay, clip 1), its data, model and Trainer (fastseq.cli.runs), on
--threads cores. Every part of a step is timed where it is called, in wall time and in CPU time of the
process (all its threads: the kernel's two threads count twice):

    kernel      the C++ loss-and-gradient call (forward + backward, model.ops.lm_loss_and_grad)
    masks       the dropout masks (model.draw_masks)
    model       the rest of model.loss_and_grad (its argument checks)
    clip        the global norm and clipping (model.ops.clip_grad_norm)
    optimizer   optimizer.step
    schedule    the cosine decay's at_progress
    batches     the loader's next batch
    engine      the rest of the Trainer's loop (divergence and finiteness checks, accumulators, callbacks)

and, once each, the costs that come every epoch (the held-out evaluation) or every 30 s (the command's
checkpoint), spread over the steps of an epoch and of 30 s; and bench_rnn.py's kernel-only step of the
same cell and size (the roofline's row) in the same run. The optimizer's two backends (the NumPy
reference and the fused C++ update, bit-equal) take turns on the same trainer, round by round, so the
machine's load hits both alike.

    python bench/bench_loop.py [--steps 10] [--rounds 3] [--threads 2] [--out OUT.md]
"""
import argparse
import os
import sys
import tempfile
import time
import types

import fastseq
from fastseq.cli import runs
from fastseq.training import evaluate

PARTS = ("kernel", "masks", "model", "clip", "optimizer", "schedule", "batches", "engine")


class Clock:
    """Wall and CPU seconds per part, summed over the steps of the backend being measured."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def add(self, part, wall, cpu):
        self.wall[part] = self.wall.get(part, 0.0) + wall
        self.cpu[part] = self.cpu.get(part, 0.0) + cpu

    def timed(self, part, f):
        def g(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            try:
                return f(*a, **k)
            finally:
                self.add(part, time.perf_counter() - w, time.process_time() - c)
        return g


class TimedLoader:
    """The loader with its batches timed; everything else is the loader's own."""

    def __init__(self, loader, clock):
        self._loader, self._clock = loader, clock

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        it = iter(self._loader)
        while True:
            w, c = time.perf_counter(), time.process_time()
            try:
                batch = next(it)
            except StopIteration:
                return
            self._clock.add("batches", time.perf_counter() - w, time.process_time() - c)
            yield batch


def recipe(threads):
    """(hp, vocab, trainer, held-out ids) of `fastseq train --corpus tinyshakespeare --minutes 10`."""
    args = types.SimpleNamespace(corpus="tinyshakespeare", minutes=10)
    hp = runs.hparams_from_args(args)
    vocab, train_ids, val_ids = runs.prepare_data(hp)
    model = runs.new_model(hp, len(vocab), "cpp")
    fastseq.set_num_threads(threads)
    return hp, vocab, runs.trainer(hp, model, train_ids, val_ids), val_ids


def instrument(tr, clock):
    """Time every part of tr's steps into clock; returns the step boundaries' callback."""
    model, ops = tr.model, tr.model.ops
    ops.lm_loss_and_grad = clock.timed("kernel", ops.lm_loss_and_grad)
    ops.clip_grad_norm = clock.timed("clip", ops.clip_grad_norm)
    model.draw_masks = clock.timed("masks", model.draw_masks)
    model.loss_and_grad = clock.timed("model", model.loss_and_grad)      # includes kernel and masks
    tr.optimizer.step = clock.timed("optimizer", tr.optimizer.step)
    tr.schedule.at_progress = clock.timed("schedule", tr.schedule.at_progress)
    tr.loader = TimedLoader(tr.loader, clock)
    last = {}

    def on_step(info):     # a whole step: from the end of the last one (its callbacks included)
        w, c = time.perf_counter(), time.process_time()
        if last:
            clock.add("step", w - last["w"], c - last["c"])
        else:              # the round's first step only opens the interval of the next
            clock.wall.clear(), clock.cpu.clear()
        last.update(w=time.perf_counter(), c=time.process_time())
    tr.callbacks.append(fastseq.training._StepFunction(on_step))
    return last


def table(clock, steps):
    """{part: (wall ms, cpu ms)} per step; 'model' without the kernel and masks, 'engine' the rest."""
    per = {k: (clock.wall.get(k, 0.0) / steps * 1e3, clock.cpu.get(k, 0.0) / steps * 1e3)
           for k in set(clock.wall) | {"step"}}
    for i in (0, 1):
        m = list(per["model"])
        m[i] -= per["kernel"][i] + per["masks"][i]
        per["model"] = tuple(m)
    rest = [per["step"][i] - sum(per[k][i] for k in PARTS if k in per and k != "engine") for i in (0, 1)]
    per["engine"] = tuple(rest)
    return per


def measure(steps=10, rounds=3, threads=2):
    """({backend: table}, evaluation (wall, cpu) s, checkpoint (wall, cpu) s, steps of an epoch, hp)."""
    hp, vocab, tr, val_ids = recipe(threads)
    tr.val_ids = None                 # a stopped fit() would evaluate the partial epoch: timed apart below
    clock = Clock()
    last = instrument(tr, clock)
    sums = {b: Clock() for b in ("numpy", "cpp")}
    counted = dict.fromkeys(sums, 0)
    _steps(tr, 2)                     # warm-up: the moments and the kernel's workspace are allocated
    for _ in range(rounds):
        for backend in sums:
            tr.optimizer.backend = backend
            last.clear()
            _steps(tr, steps + 1)
            for k in clock.wall:
                sums[backend].add(k, clock.wall[k], clock.cpu[k])
            counted[backend] += steps
    kernel_only = _kernel_only(hp, rounds * steps)
    w, c = time.perf_counter(), time.process_time()
    evaluate(tr.model, val_ids, tr.eval_batch_size, tr.eval_steps)
    evaluation = (time.perf_counter() - w, time.process_time() - c)
    from fastseq import checkpoint
    with tempfile.TemporaryDirectory() as d:       # as the command's _Checkpoints.save
        w, c = time.perf_counter(), time.process_time()
        checkpoint.save(d, tr.model, vocab, hp, step=tr.step, resume=tr.state_dict(),
                        history={"epochs": tr.history, "log": tr.log})
        saving = (time.perf_counter() - w, time.process_time() - c)
    return {b: table(sums[b], counted[b]) for b in sums}, evaluation, saving, kernel_only, len(tr.loader), hp


def _kernel_only(hp, n):
    """(wall, cpu) ms of bench_rnn.py's kernel-only step of the same cell and size (the roofline's row: no
    dropout, clip and a plain SGD update), the mean of n in this run."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_rnn

    step = bench_rnn.fastseq_cell_step(hp["cell"], hp["hidden"], hp["layers"])
    step()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - w) / n * 1e3, (time.process_time() - c) / n * 1e3


def _steps(tr, n):
    """n more steps (the running epoch's, then the next's)."""
    start = tr.step
    tr.callbacks.insert(0, fastseq.training._StepFunction(lambda info: tr.step < start + n))
    try:
        while tr.step < start + n:
            tr.fit(epochs=tr.epoch + 1)
    finally:
        tr.callbacks.pop(0)


def report(res, evaluation, saving, kernel_only, epoch_steps, hp, threads, steps, rounds):
    per, lines = res, []
    machine = f"{os.uname().machine}, {os.cpu_count()} cores, {fastseq._core.build_info()['compiler']}"
    lines.append(f"10-minute recipe: {hp['cell']} H={hp['hidden']} L={hp['layers']} T={hp['steps']} "
                 f"B={hp['batch']} dropout {hp['dropout']:g}, {hp['optimizer']} (cosine decay), clip {hp['clip']:g}, "
                 f"{threads} threads; {rounds} rounds of {steps} steps per optimizer backend, interleaved; "
                 f"FASTSEQ_ISA={os.environ.get('FASTSEQ_ISA', '(best)')}; {machine}")
    lines.append("")
    lines.append("| part of a step | NumPy Adam wall ms | CPU ms | fused Adam wall ms | CPU ms |")
    lines.append("|---|---:|---:|---:|---:|")
    a, b = per["numpy"], per["cpp"]
    for k in PARTS:
        lines.append(f"| {k} | {a[k][0]:.2f} | {a[k][1]:.2f} | {b[k][0]:.2f} | {b[k][1]:.2f} |")
    lines.append(f"| **step** | **{a['step'][0]:.1f}** | **{a['step'][1]:.1f}** | **{b['step'][0]:.1f}** | "
                 f"**{b['step'][1]:.1f}** |")
    ev = [x / epoch_steps * 1e3 for x in evaluation]
    ck = [x * b["step"][0] / 30 for x in saving]           # one save every 30 s of steps
    lines.append(f"| held-out evaluation, every epoch ({evaluation[0]:.2f} s wall, {evaluation[1]:.2f} s CPU "
                 f"/ {epoch_steps} steps) | {ev[0]:.2f} | {ev[1]:.2f} | {ev[0]:.2f} | {ev[1]:.2f} |")
    lines.append(f"| checkpoint, every 30 s ({saving[0] * 1e3:.0f} ms wall, {saving[1] * 1e3:.0f} ms CPU) | "
                 f"{ck[0]:.2f} | {ck[1]:.2f} | {ck[0]:.2f} | {ck[1]:.2f} |")
    lines.append("")
    for name, t in (("NumPy Adam", a), ("fused Adam", b)):
        wall = t["step"][0] + ev[0] + ck[0]
        cpu = t["step"][1] + ev[1] + ck[1]
        # On a machine to itself the kernel's threads run side by side and the rest runs on one thread:
        # wall ~ kernel CPU / threads + the rest's CPU (an estimate where the load inflates wall times).
        quiet = t["kernel"][1] / threads + cpu - t["kernel"][1]
        lines.append(f"- {name}: step {t['step'][0]:.1f} ms wall, {t['step'][1]:.1f} ms CPU, {t['step'][1] / t['kernel'][1]:.3f}x "
                     f"the kernel's CPU ({t['kernel'][1]:.1f} ms); with the periodic costs {1e3 / wall:.2f} steps/s, "
                     f"{cpu:.1f} ms CPU a step, {cpu / kernel_only[1]:.3f}x the CPU of bench_rnn's kernel-only step "
                     f"({kernel_only[1]:.1f} ms CPU, {kernel_only[0]:.1f} ms wall, the same run); a machine to itself "
                     f"would take about {quiet:.1f} ms a step ({600e3 / quiet:,.0f} steps in 10 minutes)")
    lines.append(f"- fused / NumPy Adam: optimizer {b['optimizer'][1] / a['optimizer'][1]:.3f}x CPU, "
                 f"step {b['step'][1] / a['step'][1]:.3f}x CPU, {b['step'][0] / a['step'][0]:.3f}x wall")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="steps per round and backend")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the table to this file too")
    a = ap.parse_args(argv)
    res = measure(a.steps, a.rounds, a.threads)
    text = report(*res, a.threads, a.steps, a.rounds)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
