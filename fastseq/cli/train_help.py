"""`fastseq train --help`: the examples and the notes on cells, BPTT and the time budget's settings."""
from ..optim import DEFAULT_LR
from ..training import BUDGET_SETTINGS
from .runs import CELL_ADAM_LR

EXAMPLES_TRAIN = """examples:
  fastseq train                                  # built-in offline corpus, characters, under a minute
  fastseq train --corpus timemachine --cleaning d2l --hidden 512 --steps 35 --batch 32 --lr 1 --clip 1
  fastseq train --bptt block:10 --epochs 5 --out runs/tm
  fastseq train --bptt random:0.2 --optimizer adam --lr 0.005
  fastseq train --cell lstm --layers 2 --dropout 0.2 --corpus tinyshakespeare --minutes 10
  fastseq train --resume runs/tm --epochs 10     # continue (or extend) an interrupted run
  fastseq train --corpus ./my.txt --token word --json > result.json

--bptt: full BPTT over each window, block:K or sliding:K truncation (Dive into Deep
Learning, chapter 8, "Backpropagation Through Time"), random:P randomized truncation
(Tallec & Ollivier, "Unbiasing Truncated Backpropagation Through Time", 2017).
--cell: rnn_tanh and rnn_relu are the plain RNN of Dive into Deep Learning, chapter 8,
"Recurrent Neural Networks"; gru and lstm are the gated cells of its next chapter, as
PyTorch's nn.GRU and nn.LSTM compute them. --layers stacks cells (layer l's states are
layer l+1's input); --dropout P drops the input rows, the states between layers and the
top layer's states during training only, as nn.LSTM(dropout=P) does between layers;
--input-dropout P sets the input rows' own (0: none, as nn.LSTM with one-hot inputs).
CELL_NOTE
--clip: global-norm gradient clipping (Dive into Deep Learning, "Recurrent Neural
Network Implementation from Scratch").

A time budget (--minutes M, or the main job's 45 s) chooses the model for every option
of these not given: a longer budget trains more tokens, so it affords a larger model.
BUDGET_NOTE
Without --lr, Adam's rate is the cell's at H=128 times sqrt(128/H) beyond it. The decay
is the cosine schedule of Dive into Deep Learning, chapter 12, "Learning Rate Scheduling"
(Loshchilov & Hutter, SGDR, 2017): from --lr to --lr-decay-to times it, over the larger
of elapsed/budget and step/(all epochs' steps). Without a budget (--epochs only) the
options' own defaults hold and the rate is constant. Options given are taken as they are.

Ctrl-C stops cleanly: the last complete checkpoint stays in the run folder and
`fastseq train --resume DIR` continues the same run (same data order, same
random draws), ending with the same weights as an uninterrupted run (unless the
rate decays over a time budget: the decay follows the clock, which no rerun repeats).
Without --out, each run gets a new folder: fastseq-train, fastseq-train-2, ...
"""

def cell_defaults_note():
    """The defaults that differ by cell, in words (--help, docs/COMMANDS.md)."""
    lr = ", ".join(f"{c} {v:g}" for c, v in CELL_ADAM_LR.items())
    return (f"Every cell has the same defaults except Adam's learning rate: {DEFAULT_LR['adam']:g}, "
            f"but {lr}.")


def budget_note():
    """The settings a time budget chooses, in words (--help, docs/COMMANDS.md): BUDGET_SETTINGS."""
    rows = []
    for i, (start, s) in enumerate(BUDGET_SETTINGS):
        end = BUDGET_SETTINGS[i + 1][0] if i + 1 < len(BUDGET_SETTINGS) else None
        when = f"under {end:g} min" if start == 0 else (f"{start:g}-{end:g} min" if end else f"{start:g} min or more")
        layers = f", --layers {s['layers']}" if s["layers"] > 1 else ""
        drop = f", dropout {s['dropout']:g}" if s["dropout"] else ""
        if s.get("input_dropout", s["dropout"]) != s["dropout"]:
            drop += f", --input-dropout {s['input_dropout']:g}"
        decay = f"rate decaying to {s['lr_decay_to']:g}x" if s["lr_decay_to"] < 1 else "constant rate"
        wd = f", --weight-decay {s['weight_decay']:g}" if s.get("weight_decay") else ""
        cell = f"--cell {s['cell']}, " if "cell" in s else ""
        rows.append(f"  {when:>15}: {cell}--hidden {s['hidden']}{layers}, --steps {s['steps']}{drop}{wd}, {decay}")
    return "\n".join(rows)


def train_epilog():
    """The text after `fastseq train --help`'s options."""
    return EXAMPLES_TRAIN.replace("CELL_NOTE", cell_defaults_note()).replace("BUDGET_NOTE", budget_note())
