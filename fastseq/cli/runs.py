"""Run folders and the settings of a training run: defaults, data, the engine's parts, checkpoints.

Shared by ``fastseq train`` and ``fastseq compare-bptt``; the training itself is fastseq.training.Trainer's.
"""
import os

import numpy as np

from ..datasets import DatasetError
from ..errors import FastseqError
from .args import UsageError, cleaning, info

TRAIN_DEFAULTS = dict(
    corpus="pydoc", token="char", cleaning="none", max_tokens=0, cell="lstm", layers=1, dropout=0.0,
    input_dropout=None, hidden=128, steps=35, batch=32, optimizer="adam", lr=None, clip=1.0, epochs=15, bptt="full",
    sampling="sequential", dtype="float32", seed=0, val_fraction=0.1, lr_decay_to=1.0, lr_hold=0.0, weight_decay=0.0,
)
# The main job's cell is the LSTM: on the main job itself, side by side on 1 thread each, it ended at 3.679
# against the GRU's 3.774 (bench/RESULTS.md, sixth session), and it ends within the main job's minute on both
# ISA paths. From 8 minutes the budget chooses the GRU (fastseq.training.BUDGET_SETTINGS), which wins there.
# H=128 stays: on the shared 2-core machine a row gets 100-250 CPU s, and at equal CPU time H=192 and H=256
# ended far behind (6.25 and 7.14 against 5.62, bench/RESULTS.md).
# The recurrent cells (fastseq.reference.cells): the book's plain RNN with tanh or relu, and the gated cells
# of its next chapter as PyTorch's nn.GRU and nn.LSTM compute them.
CELL_CHOICES = ("rnn_tanh", "rnn_relu", "gru", "lstm")
# Adam's default learning rate by cell where it is not optim.DEFAULT_LR's: the gated cells learn far faster
# at 0.01 in a short budget (nn.LSTM, H=128, 2 minutes on Tiny Shakespeare: held-out 5.75 at 0.01, 6.63 at
# 0.003, 7.25 at 0.001; bench/RESULTS.md); the plain RNN keeps 0.001 (the main job's documented run).
CELL_ADAM_LR = {"gru": 0.01, "lstm": 0.01}
# Adam's rate for a wider model: CELL_ADAM_LR is the rate at H = 128; beyond it the rate shrinks as
# (128 / H) ** ADAM_LR_WIDTH_POWER. Adam moves every weight by about the rate whatever its gradient's
# scale, so a unit summing H such moves changes by about H times the rate: the rate must fall with
# the width for the same change per unit (the width rule of Yang et al., "Tensor Programs V", 2022,
# is 1 / H for the hidden weights).
ADAM_LR_BASE_WIDTH = 128
ADAM_LR_WIDTH_POWER = 0.5
# `fastseq train` with neither --epochs nor --minutes is the main job: it must show every part (progress,
# perplexities, n-gram baselines, a sample, a plot) in under a minute on an AVX2-only 2-core machine,
# where 15 epochs take about 75 s of CPU; a budget keeps it there and costs nothing on faster machines.
MAIN_JOB_MINUTES = 0.75
# Settings that define the run; they cannot change on --resume (the learning rate can: fine-tuning).
RUN_KEYS = ("corpus", "token", "cleaning", "max_tokens", "cell", "layers", "dropout", "input_dropout", "hidden",
            "steps", "batch", "optimizer", "clip", "bptt", "sampling", "dtype", "seed", "val_fraction", "lr_decay_to",
            "lr_hold", "weight_decay")
DEFAULT_OUT = "fastseq-train"

SMOKE_ENV = "FASTSEQ_SMOKE"
SMOKE_LIMITS = {"max_tokens": 20_000, "hidden": 32}


def smoke_test():
    """FASTSEQ_SMOKE=1 (documentation tests, CI smoke runs): every command runs at toy sizes."""
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def smoke(hp):
    """The settings capped to SMOKE_LIMITS under FASTSEQ_SMOKE=1."""
    if not smoke_test():
        return hp
    hp = dict(hp)
    hp["max_tokens"] = min(hp["max_tokens"] or SMOKE_LIMITS["max_tokens"], SMOKE_LIMITS["max_tokens"])
    hp["hidden"] = min(hp["hidden"], SMOKE_LIMITS["hidden"])
    return hp


def run_minutes(args):
    """The time budget of a new run: --minutes, else the main job's when neither --epochs nor --minutes
    is given, else None (the run ends with its epochs)."""
    minutes = getattr(args, "minutes", None)
    if minutes is None and getattr(args, "epochs", None) is None:
        return MAIN_JOB_MINUTES
    return minutes


def hparams_from_args(args):
    """The settings of a new run: the options given, the defaults for the rest, checked before any work.

    With a time budget, the settings the budget decides (fastseq.training.budget_settings: the model's
    size, the window, dropout, the learning rate's decay, weight decay where it sets one) replace
    TRAIN_DEFAULTS' for every option not given; the learning rate's default then follows the hidden size
    (default_lr). Weight decay is Adam's alone (AdamW's, fastseq.optim.Adam): --optimizer sgd refuses
    --weight-decay > 0 and leaves a budget's at 0."""
    from ..training import budget_settings

    hp = {k: v if given(args, k) is None else given(args, k) for k, v in TRAIN_DEFAULTS.items()}
    hp["minutes"] = run_minutes(args)
    for k, v in budget_settings(hp["minutes"]).items():
        if given(args, k) is None:
            hp[k] = v
    if hp["input_dropout"] is None:        # --input-dropout defaults to --dropout
        hp["input_dropout"] = hp["dropout"]
    if hp["lr"] is None:
        hp["lr"] = default_lr(hp["cell"], hp["optimizer"], hp["hidden"])
    if hp["weight_decay"] and hp["optimizer"] != "adam":
        if getattr(args, "weight_decay", None) is None:       # the budget's recipe is Adam's
            hp["weight_decay"] = 0.0
        else:
            raise UsageError(f"--weight-decay {hp['weight_decay']:g}: decoupled weight decay is Adam's (AdamW); "
                             f"--optimizer {hp['optimizer']} takes none (use --optimizer adam or --weight-decay 0)")
    if not 0 <= hp["lr_decay_to"] <= 1:
        raise UsageError(f"--lr-decay-to: expected a fraction in [0, 1] of --lr, got {hp['lr_decay_to']:g}")
    if not 0 <= hp["lr_hold"] < 1:
        raise UsageError(f"--lr-hold: expected a fraction in [0, 1) of the run, got {hp['lr_hold']:g}")
    if hp["lr"] > float(np.finfo(hp["dtype"]).max):
        raise UsageError(f"--lr {hp['lr']:g}: too large for {hp['dtype']} parameters")
    if not 0 <= hp["val_fraction"] < 1:
        raise UsageError(f"--val-fraction: expected a number in [0, 1), got {hp['val_fraction']}")
    strategy(hp)
    return smoke(hp)


def default_lr(cell, optimizer, hidden=None):
    """The learning rate a run gets without --lr: the optimizer's (CELL_ADAM_LR for Adam and a gated
    cell), times ADAM_LR_WIDTH(hidden) for Adam beyond ADAM_LR_BASE_WIDTH hidden units."""
    from .. import optim

    if optimizer != "adam":
        return optim.DEFAULT_LR[optimizer]
    lr = CELL_ADAM_LR.get(cell, optim.DEFAULT_LR["adam"])
    if hidden is not None and hidden > ADAM_LR_BASE_WIDTH:
        lr *= (ADAM_LR_BASE_WIDTH / hidden) ** ADAM_LR_WIDTH_POWER
    return lr


def given(args, key):
    """What the options give for the run setting ``key``, or None: for 'cell', --cell or the older
    --nonlinearity (cell_of)."""
    return cell_of(args) if key == "cell" else getattr(args, key, None)


def cell_of(args):
    """The cell the options name, or None: --cell, else 'rnn_' + --nonlinearity (the older flag, kept);
    both given must agree."""
    cell, phi = getattr(args, "cell", None), getattr(args, "nonlinearity", None)
    if phi is not None and cell is not None and cell != "rnn_" + phi:
        raise UsageError(f"--nonlinearity {phi}: conflicts with --cell {cell} (--cell supersedes --nonlinearity: "
                         f"--nonlinearity {phi} is --cell rnn_{phi}; give one of them)")
    return cell if phi is None else "rnn_" + phi


def upgrade(hp):
    """The settings of a run saved before cells (issue 11) in today's keys: its 'nonlinearity' is the cell
    'rnn_' + nonlinearity, one layer, no dropout; one saved before the learning-rate schedule kept its
    rate constant (lr_decay_to 1); one saved before --input-dropout dropped the input rows with its dropout;
    one saved before --weight-decay had none."""
    hp = dict(hp)
    hp.setdefault("lr_decay_to", 1.0)
    hp.setdefault("lr_hold", 0.0)
    hp.setdefault("weight_decay", 0.0)
    if "cell" not in hp and "nonlinearity" in hp:
        hp["cell"] = "rnn_" + str(hp.pop("nonlinearity"))
        hp.setdefault("layers", 1)
        hp.setdefault("dropout", 0.0)
    hp.setdefault("input_dropout", hp.get("dropout", 0.0))
    return hp


def strategy(hp):
    """The run's BPTT strategy (fastseq.bptt.from_spec), its error naming the option."""
    from .. import bptt

    try:
        return bptt.from_spec(hp["bptt"], seed=hp["seed"] + 2)
    except ValueError as e:
        raise UsageError(f"--{e}") from None


def prepare_data(hp):
    """(vocab, training ids, held-out ids): the last val_fraction of the tokens is held out, and the
    vocabulary comes from the training part only."""
    from ..text import Vocab, corpus_tokens

    tokens = corpus_tokens(hp["corpus"], hp["token"], cleaning(hp["cleaning"]))
    if hp["max_tokens"]:
        tokens = tokens[:hp["max_tokens"]]
    n = len(tokens)
    n_val = int(round(n * hp["val_fraction"]))
    n_train = n - n_val
    B, T = hp["batch"], hp["steps"]
    need = B * T + T + 1
    if n_train < need:
        raise UsageError(
            f"{hp['corpus']}: {n_train:,} training tokens are too few for --batch {B} x --steps {T} "
            f"(need {need:,}); use a longer corpus or smaller --batch/--steps")
    if hp["val_fraction"] > 0 and n_val < 2:
        raise UsageError(f"--val-fraction {hp['val_fraction']}: leaves fewer than 2 held-out tokens")
    vocab = Vocab(tokens[:n_train])
    ids = vocab.encode(tokens)
    return vocab, ids[:n_train], ids[n_train:]


def loader(hp, train_ids):
    """The run's minibatches: its data order comes from its seed (bench/quality_cells.py feeds the same
    batches to PyTorch)."""
    from ..data import SeqDataLoader

    return SeqDataLoader(train_ids, hp["batch"], hp["steps"], hp["sampling"], seed=hp["seed"] + 1)


def trainer(hp, model, train_ids, val_ids, callbacks=(), progress=False):
    """The engine for these settings: data order, optimizer and BPTT draws from the run's seed."""
    from .. import optim
    from ..training import Trainer

    decay = hp.get("lr_decay_to", 1.0)
    wd = hp.get("weight_decay", 0.0)
    opt = optim.from_spec(hp["optimizer"], hp["lr"], **({"weight_decay": wd} if wd else {}))
    return Trainer(model, loader(hp, train_ids), opt, bptt=strategy(hp),
                   clip=hp["clip"] or None, val_ids=val_ids if len(val_ids) >= 2 else None,
                   schedule=optim.CosineDecay(decay, hp.get("lr_hold", 0.0)) if decay < 1 else None,
                   callbacks=callbacks, progress=progress)


def new_model(hp, vocab_size, backend):
    from ..rnn import RNNLM

    return RNNLM(vocab_size, hp["hidden"], cell=hp["cell"], num_layers=hp["layers"], dropout=hp["dropout"],
                 input_dropout=hp.get("input_dropout"), dtype=hp["dtype"], seed=hp["seed"], backend=backend or "cpp")


def fresh_default_out(args):
    """The default run folder: fastseq-train, or the first of fastseq-train-2, -3, ... not taken.

    A second run of the README's command must work; it never touches an earlier run.
    """
    from ..checkpoint import META_FILE

    out, n = DEFAULT_OUT, 1
    while os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        n += 1
        out = f"{DEFAULT_OUT}-{n}"
    if n > 1:
        earlier = DEFAULT_OUT if n == 2 else f"{DEFAULT_OUT}-{n - 1}"
        hint = (f" (continue it with fastseq train --resume {earlier})"
                if os.path.exists(os.path.join(earlier, META_FILE)) else "")
        info(args, f"{earlier} holds an earlier run{hint}; this run writes to {out}")
    return out


def check_out(args, out):
    """--out never silently replaces someone else's work."""
    from ..checkpoint import META_FILE

    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a folder")
    holds_checkpoint = os.path.exists(os.path.join(out, META_FILE))
    same_folder = args.resume and os.path.exists(out) and os.path.samefile(out, args.resume)
    if holds_checkpoint and not same_folder and not args.overwrite:
        hint = (f"continue it with --resume {out}, or pass --overwrite / another --out" if not args.resume
                else f"pass another --out (or leave it out to continue in {args.resume}), or --overwrite")
        raise UsageError(f"--out {out}: already holds a checkpoint of another run; {hint}")
    if not holds_checkpoint and os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UsageError(f"--out {out}: is a folder with other files, not a fastseq checkpoint; "
                         "pass a new or empty folder (or --overwrite to write into it)")
    os.makedirs(out, exist_ok=True)


def resume(args):
    """(hp, checkpoint, vocab, train ids, held-out ids) of the run saved in --resume, its settings checked."""
    from .. import checkpoint

    # The run continues on the backend it was trained on (bit-identical), unless --backend says otherwise.
    saved = checkpoint.load(args.resume, backend="numpy").hparams.get("backend")
    ck = checkpoint.load(args.resume, backend=args.backend or saved, resume=True)
    hp = upgrade(ck.hparams)
    hp["backend"] = ck.model.backend
    lacking = [k for k in (*RUN_KEYS, "epochs", "lr") if k not in hp]
    if lacking:
        raise UsageError(f"--resume {args.resume}: the checkpoint's hparams lack {', '.join(lacking)} "
                         "(fastseq.json was edited or damaged)")
    if hp["weight_decay"] and hp["optimizer"] != "adam":      # hparams_from_args refuses it: an edited file
        raise UsageError(f"--resume {args.resume}: the checkpoint's hparams are damaged (weight_decay "
                         f"{hp['weight_decay']!r} with optimizer {hp['optimizer']!r}, which takes none)")
    for k in RUN_KEYS:
        value = given(args, k)
        if value is not None and value != hp.get(k):
            flag = "--cell" if k == "cell" and args.cell is not None else \
                "--nonlinearity" if k == "cell" else f"--{k.replace('_', '-')}"
            raise UsageError(f"{flag}: cannot change when resuming "
                             f"(the run in {args.resume} has {hp.get(k)!r})")
    try:
        vocab, train_ids, val_ids = prepare_data(hp)
    except (UsageError, DatasetError):
        raise
    except FastseqError as e:   # a setting the corpus functions refuse: someone edited the manifest
        raise UsageError(f"--resume {args.resume}: the checkpoint's hparams are damaged ({e})") from None
    if vocab.idx_to_token != ck.vocab.idx_to_token:
        raise UsageError(f"--resume {args.resume}: the corpus {hp['corpus']!r} no longer gives the "
                         "checkpoint's vocabulary (has the file changed?)")
    return hp, ck, vocab, train_ids, val_ids
