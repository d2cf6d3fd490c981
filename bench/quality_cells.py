"""How good (issue 11): held-out perplexity per character on Tiny Shakespeare, one table.

The split is `fastseq train`'s own (`fastseq.cli.runs.prepare_data`): the first 90% of the characters
train, the last 10% are held out, the vocabulary comes from the training part. Rows, in one run:

* a character Kneser-Ney 7-gram (Chen & Goodman 1998; Heafield et al. 2013) fitted on the same training
  ids, scored on the held-out ids, both read as one stream as `fastseq train`'s baselines do
  (`fastseq.cli.train.ngram_baselines`); and the same model fitted and scored with one sentence per
  line (KenLM's reading of a text file: a newline becomes `</s>` and every line starts from `<s>`);
* PyTorch's `nn.LSTM` (one-hot input, as fastseq's model) trained by the recipe of the command's
  defaults for the budget (`fastseq.cli.runs.hparams_from_args` with `--minutes M`: the hidden size,
  layers, dropout and window the budget chooses, the same batches in the same order from
  `fastseq.cli.runs.loader`, the optimizer (Adam, as `torch.optim.AdamW` with the recipe's weight decay),
  learning rate and its schedule -- the same
  `fastseq.optim.CosineDecay` on the same progress, the larger of elapsed/budget and step/total steps --
  clipping, full BPTT over each window with the state carried over, the held-out evaluation after each
  epoch) for the same wall-clock budget, scored by `fastseq.training.evaluate`. Dropout, when the
  recipe has it: nn.LSTM's own between layers and the same inverted dropout on the top layer's output.
  Not on the input: fastseq's input dropout drops elements of the gathered input rows W_xh[ids], and
  nn.LSTM computes its input projection inside (dropping the one-hot rows instead would drop whole
  characters, a different and stronger noise). The recipe at 10 minutes has no input dropout
  (`--input-dropout 0`, the budget's setting), so both rows are the same recipe; with a recipe that has it
  (`--train-arg=--input-dropout=P`) the PyTorch row says in its note that it lacks it;
* each fastseq cell through the command itself: `fastseq train --corpus tinyshakespeare --cell C
  --minutes M`, then `fastseq eval` of its checkpoint on the held-out text (the same evaluator).

The machine is shared: each row records its wall and CPU seconds and the load average at its start and end.

Usage (from anywhere; the corpus is read from FASTSEQ_DATA_DIR, never downloaded):
    FASTSEQ_DATA_DIR=/work/shared/data python bench/quality_cells.py --minutes 10 --md /tmp/quality.md
    python bench/quality_cells.py --minutes 10 --cells lstm --threads 2   # the command's defaults (2 threads)
    python bench/quality_cells.py --minutes 2 --cells none           # only the n-gram and nn.LSTM rows
    python bench/quality_cells.py --minutes 10 --cells gru --train-arg=--hidden=384   # another recipe, both sides

The budget chooses the recipe (fastseq.training.budget_settings: at 10 minutes 512 units, windows of
64, dropout 0.35 on the output, AdamW at 0.005 with weight decay 0.1, the rate decaying to 0.05 of it
along a cosine); --train-arg options change it for
the fastseq rows and the PyTorch rows alike.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import machine_line  # noqa: E402  (also sets FASTSEQ_DATA_DIR to ../shared/data if unset)

from fastseq.cli import runs  # noqa: E402
from fastseq.cli.train import ngram_baselines  # noqa: E402
from fastseq.training import evaluate  # noqa: E402

CORPUS = "tinyshakespeare"
# The settings a row's recipe line shows (and that the nn.LSTM row must share with the fastseq row).
RECIPE_KEYS = ("hidden", "layers", "dropout", "input_dropout", "steps", "batch", "optimizer", "lr", "lr_decay_to", "lr_hold",
               "weight_decay", "clip")
CELLS = ("rnn_tanh", "rnn_relu", "gru", "lstm")
KN_ORDER = 7


def load():
    return os.getloadavg()[0]


# `fastseq train --epochs` of every fastseq row: the budget, not the epochs, ends the run (and so the
# schedule's progress is the budget's); the nn.LSTM row counts its step progress over as many epochs.
EPOCHS = 100000


def recipe(cell, minutes, extra=(), epochs=None):
    """The command's settings of a run of ``cell`` on the corpus for a budget of ``minutes`` (its defaults
    for that budget, as `fastseq train --minutes M --epochs EPOCHS` takes them, with ``extra`` options
    such as ["--hidden=256"]). With ``epochs``, the same settings for a run of that many epochs and no
    time budget (the rate's decay then follows the steps alone): fixed_options(hp) give them to the
    command."""
    from fastseq.cli.main import build_parser

    argv = ["train", "--corpus", CORPUS, "--minutes", str(minutes), "--epochs", str(EPOCHS), *extra]
    if cell:
        argv += ["--cell", cell]
    hp = runs.hparams_from_args(build_parser().parse_args(argv))
    if epochs is not None:
        hp.update(epochs=epochs, minutes=None)
    return hp


# The settings a budget chooses, given explicitly to a run of a fixed number of epochs (--epochs).
FIXED_KEYS = ("hidden", "layers", "steps", "dropout", "input_dropout", "lr", "lr_decay_to", "lr_hold", "weight_decay")


def fixed_options(hp):
    return [f"--{k.replace('_', '-')}={hp[k]!r}" for k in FIXED_KEYS]


def kn_rows(vocab, train_ids, val_ids):
    """The 7-gram read as one stream (the RNN's reading) and with one sentence per line (KenLM's)."""
    from fastseq import ngram

    t0 = time.perf_counter()
    stream = ngram_baselines([KN_ORDER], train_ids, val_ids, vocab)[0]
    rows = [dict(model=f"Kneser-Ney {KN_ORDER}-gram, text as one stream", ppl=stream["val_ppl"],
                 wall=time.perf_counter() - t0, note=f"{len(val_ids) + 1:,} tokens (one </s>)")]
    t0 = time.perf_counter()
    tok = vocab.idx_to_token
    lines = lambda ids: [list(s) for s in "".join(tok[i] for i in ids.tolist()).split("\n")]  # noqa: E731
    m = ngram.KneserNeyLM(KN_ORDER, discount_fallback=True).fit(lines(train_ids))
    p = m.perplexity(lines(val_ids))
    rows.append(dict(model=f"Kneser-Ney {KN_ORDER}-gram, one sentence per line", ppl=float(p.including_oov),
                     wall=time.perf_counter() - t0, note=f"{p.tokens:,} tokens (a newline is </s>)"))
    for r in rows:
        r["load"] = load()
    return rows


# ----------------------------------------------------------------------------- PyTorch
class TorchLM:
    """nn.Embedding-free LM: one-hot ids into nn.LSTM/GRU/RNN, then nn.Linear; fastseq's architecture."""

    def __init__(self, cell, V, hp, torch):
        nn = torch.nn
        kinds = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}), "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
                 "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}
        cls, kw = kinds[cell]
        self.torch, self.cell, self.vocab_size = torch, cell, V
        self.layers, self.H = hp.get("layers", 1), hp["hidden"]
        self.dropout = hp.get("dropout", 0.0)
        self.training = False
        self.rnn = cls(V, self.H, num_layers=self.layers, batch_first=True,
                       dropout=self.dropout if self.layers > 1 else 0.0, **kw)
        self.out = nn.Linear(self.H, V)
        self.dtype = np.dtype(np.float32)
        self.parameters = list(self.rnn.parameters()) + list(self.out.parameters())

    def forward(self, ids, state):
        F = self.torch.nn.functional
        y, state = self.rnn(F.one_hot(ids, self.vocab_size).float(), state)
        if self.training and self.dropout > 0:   # on the top layer's output, as fastseq's m_out
            y = F.dropout(y, self.dropout)
        return self.out(y), state

    def train(self, on):
        self.training = on
        self.rnn.train(on)

    # fastseq.training.evaluate's view of the model: numpy ids in, numpy logits out; the state is one
    # (B, P*L*H) array so that the evaluator's row slicing of the state works unchanged.
    def begin_state(self, B):
        parts = 2 if self.cell == "lstm" else 1
        return np.zeros((B, parts * self.layers * self.H), np.float32)

    def _unpack(self, s):
        t = self.torch.from_numpy(np.ascontiguousarray(s)).reshape(s.shape[0], -1, self.layers, self.H)
        t = t.permute(1, 2, 0, 3).contiguous()   # (P, L, B, H)
        return (t[0], t[1]) if self.cell == "lstm" else t[0]

    def _pack(self, state):
        parts = state if isinstance(state, tuple) else (state,)
        t = self.torch.stack(parts)                # (P, L, B, H)
        return t.permute(2, 0, 1, 3).reshape(t.shape[2], -1).numpy()

    def __call__(self, X, state):
        with self.torch.no_grad():
            logits, new = self.forward(self.torch.from_numpy(np.asarray(X, np.int64)), self._unpack(state))
        return logits.numpy(), self._pack(new)


def torch_row(cell, hp, vocab, train_ids, val_ids, minutes, threads):
    """nn.<cell> trained on the command's batches with its optimizer, schedule, clipping and budget
    (``minutes``; None: hp's epochs, progress by steps alone)."""
    import torch

    from fastseq import optim

    torch.set_num_threads(threads)
    torch.manual_seed(hp["seed"])
    if hp["optimizer"] != "adam" or hp["bptt"] != "full" or hp["sampling"] != "sequential" or hp["dtype"] != "float32":
        raise SystemExit(f"the nn.{cell} row implements adam, full BPTT, sequential batches, float32; "
                         f"the command's defaults changed: {hp}")
    model = TorchLM(cell, len(vocab), hp, torch)
    # AdamW: fastseq.optim.Adam's decoupled weight decay (0: plain Adam); torch's default decay is 0.01,
    # so it is always given
    opt = torch.optim.AdamW(model.parameters, lr=hp["lr"], weight_decay=hp.get("weight_decay", 0.0))
    loader = runs.loader(hp, train_ids)
    # The command's schedule (runs.trainer): the same object on the same progress as the Trainer's
    # (fastseq.training.Trainer.run_progress), applied to Adam's rate before every step.
    decay = hp.get("lr_decay_to", 1.0)
    schedule = optim.CosineDecay(decay, hp.get("lr_hold", 0.0), base_lr=hp["lr"]) if decay < 1 else None
    total_steps = hp["epochs"] * len(loader)
    budget = None if minutes is None else minutes * 60

    class Rate:                                    # CosineDecay sets .lr on an optimizer-like object
        lr = hp["lr"]

    F = torch.nn.functional
    t_start, c_start = time.perf_counter(), time.process_time()
    start = time.monotonic()
    deadline = None if budget is None else start + budget
    steps = epochs = tokens = 0
    done = False
    while not done:
        state = None                               # a fresh state at each epoch, as the Trainer
        model.train(True)
        for X, Y in loader:
            if schedule is not None:
                by_time = 0.0 if budget is None else (time.monotonic() - start) / budget
                progress = min(1.0, max(by_time, steps / total_steps))
                schedule.at_progress(progress, Rate)
                for g in opt.param_groups:
                    g["lr"] = Rate.lr
            x, y = torch.from_numpy(X.astype(np.int64)), torch.from_numpy(Y.astype(np.int64))
            logits, state = model.forward(x, state)
            loss = F.cross_entropy(logits.reshape(-1, model.vocab_size), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            if hp["clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters, hp["clip"])
            opt.step()
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
            steps, tokens = steps + 1, tokens + Y.size
            if deadline is not None and time.monotonic() >= deadline:
                done = True
                break
        else:
            epochs += 1
            model.train(False)
            evaluate(model, val_ids)               # the Trainer's held-out evaluation after each epoch
            done = epochs >= hp["epochs"]
    model.train(False)
    train_wall = time.perf_counter() - t_start
    ppl = evaluate(model, val_ids)
    n_params = sum(p.numel() for p in model.parameters)
    lacks = hp.get("input_dropout", 0.0)
    return dict(note=f"no input dropout (the fastseq rows drop the input rows with p = {lacks:g})" if lacks else None,
                model=f"PyTorch nn.{'LSTM' if cell == 'lstm' else cell} (torch {torch.__version__}, "
                      f"{threads} thread{'s' if threads > 1 else ''})",
                ppl=ppl, wall=train_wall, cpu=time.process_time() - c_start, steps=steps, epochs=epochs,
                tokens_per_s=tokens / train_wall, params=n_params, load=load(),
                hparams={k: hp.get(k) for k in RECIPE_KEYS})


# ----------------------------------------------------------------------------- fastseq, through the command
def _run(cmd, log):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {r.returncode} (see {log.name})")
    return json.loads(r.stdout)


def fastseq_row(cell, heldout, workdir, minutes, threads, extra, val_ids, epochs=None):
    out = os.path.join(workdir, cell)
    # a fixed number of epochs: the budget's settings given as options, no budget (recipe, fixed_options)
    length = ["--minutes", str(minutes), "--epochs", str(EPOCHS)] if epochs is None else \
        ["--epochs", str(epochs), *fixed_options(recipe(cell, minutes, extra, epochs))]
    cmd = [sys.executable, "-m", "fastseq", "train", "--corpus", CORPUS, "--cell", cell, *length, "--out", out, "--overwrite", "--no-ngram", "--no-progress", "--sample-length", "0",
           "--threads", str(threads), "--json", *extra]
    with open(os.path.join(workdir, f"{cell}.log"), "w") as log:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = _run(cmd, log)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ev = _run([sys.executable, "-m", "fastseq", "eval", out, heldout, "--threads", str(threads), "--json"], log)
    if ev["tokens"] != len(val_ids) - 1:
        raise SystemExit(f"fastseq eval read {ev['tokens']} tokens of {heldout}, expected {len(val_ids) - 1}")
    if res["val_ppl"] is not None and abs(res["val_ppl"] - ev["perplexity"]) > 1e-9 * ev["perplexity"]:
        raise SystemExit(f"{cell}: train's held-out {res['val_ppl']} differs from eval's {ev['perplexity']}")
    hist = res["epochs"]
    tokens_per_s = sum(r["tokens_per_s"] * r["seconds"] for r in hist) / max(sum(r["seconds"] for r in hist), 1e-12)
    hp = res["hparams"]
    return dict(model=f"fastseq {cell} ({hp.get('backend')}, {threads} thread{'s' if threads > 1 else ''})",
                ppl=ev["perplexity"], wall=res["train_seconds"], cpu=(after.ru_utime + after.ru_stime)
                - (before.ru_utime + before.ru_stime), steps=res["steps"],
                epochs=len([r for r in hist if not r["partial"]]), tokens_per_s=tokens_per_s, load=load(),
                command_wall=wall, hparams={k: hp.get(k) for k in RECIPE_KEYS})


# ----------------------------------------------------------------------------- the table
def table(rows, minutes, split, epochs=None):
    length = f"budget {minutes:g} min of training wall time per RNN row" if epochs is None else \
        f"{epochs} epochs per RNN row with the settings of a {minutes:g}-minute budget (no time limit)"
    lines = [f"Tiny Shakespeare characters, {split}; {length}.", "",
             "| model | held-out perplexity | train wall s | CPU s | steps | epochs | tokens/s | load avg at start, end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else ""  # noqa: E731
        lines.append(f"| {r['model']} | {r['ppl']:.4f} | {f('wall', '.1f')} | {f('cpu', '.1f')} | {f('steps', ',')} | "
                     f"{f('epochs', 'd')} | {f('tokens_per_s', ',.0f')} | {r['load_start']:.1f}, {r['load']:.1f} |")
    for r in rows:
        if r.get("hparams"):
            lines.append(f"\n{r['model']}: " + ", ".join(f"{k} {v}" for k, v in r["hparams"].items()) + ".")
    notes = [r for r in rows if r.get("note")]
    for r in notes:
        lines.append(f"\n{r['model']}: {r['note']}.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each RNN row (default: 10)")
    p.add_argument("--cells", default=",".join(CELLS),
                   help=f"fastseq cells run through the command, or 'none' (default: {','.join(CELLS)})")
    p.add_argument("--torch-cells", default="lstm", help="PyTorch rows, or 'none' (default: lstm)")
    p.add_argument("--recipe-of", choices=CELLS,
                   help="the fastseq cell whose recipe (the command's settings for the budget, with --train-arg) "
                        "the PyTorch rows follow (default: the first of --cells)")
    p.add_argument("--epochs", type=int,
                   help="end every RNN row after this many epochs instead of the budget (a comparison per step, "
                        "which the machine's load does not change); the settings stay the budget's")
    p.add_argument("--threads", type=int, default=1, help="threads of every row (the command's default: 1)")
    p.add_argument("--no-kn", action="store_true", help="skip the Kneser-Ney rows")
    p.add_argument("--workdir", help="checkpoints and logs (default: a temporary folder)")
    p.add_argument("--md", help="also write the table (markdown) to this file")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--train-arg", action="append", default=[],
                   help="an extra argument for every `fastseq train` (repeatable), e.g. --train-arg=--hidden=256")
    a = p.parse_args(argv)
    cells = [] if a.cells == "none" else a.cells.split(",")
    torch_cells = [] if a.torch_cells == "none" else a.torch_cells.split(",")
    workdir = a.workdir or tempfile.mkdtemp(prefix="fastseq-quality-")
    os.makedirs(workdir, exist_ok=True)

    head = f"machine: {machine_line()}; load average at start {load():.1f} on {os.cpu_count()} cores"
    print(head, flush=True)
    hp0 = recipe(None, a.minutes)
    vocab, train_ids, val_ids = runs.prepare_data(hp0)
    split = (f"first {len(train_ids):,} train, last {len(val_ids):,} held out (the command's split, "
             f"--val-fraction {hp0['val_fraction']}), vocabulary {len(vocab)}")
    heldout = os.path.join(workdir, "heldout.txt")
    with open(heldout, "w", encoding="utf-8", newline="") as f:
        f.write("".join(vocab.idx_to_token[i] for i in val_ids.tolist()))
    rows = []

    def add(r, load_start):
        r["load_start"] = load_start
        rows.append(r)
        print(json.dumps(r), flush=True)

    if not a.no_kn:
        start = load()
        for r in kn_rows(vocab, train_ids, val_ids):
            add(r, start)
    # The PyTorch rows take the recipe of the fastseq model they are compared with (--recipe-of).
    recipe_cell = a.recipe_of or (cells[0] if cells else "lstm")
    for cell in torch_cells:
        start = load()
        hp = recipe(recipe_cell, a.minutes, a.train_arg, a.epochs)
        add(torch_row(cell, hp, vocab, train_ids, val_ids, None if a.epochs else a.minutes, a.threads), start)
    for cell in cells:
        start = load()
        add(fastseq_row(cell, heldout, workdir, a.minutes, a.threads, a.train_arg, val_ids, a.epochs), start)
    text = "\n".join([table(rows, a.minutes, split, a.epochs), "", head,
                      f"load average at the end {load():.1f}",
                      "command: python bench/quality_cells.py " + " ".join(argv if argv is not None else sys.argv[1:])])
    print("\n" + text)
    if a.md:
        Path(a.md).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
