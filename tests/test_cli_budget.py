"""The main job's time budget: `fastseq train` with neither --epochs nor --minutes stops after
MAIN_JOB_MINUTES; an explicit --epochs or --minutes (or --resume) is never cut by it."""
import pytest

from fastseq import training
from fastseq.cli import main as fastseq_main
from fastseq.cli.runs import MAIN_JOB_MINUTES

from cli_helpers import TEXT, TINY


@pytest.fixture
def fits(monkeypatch):
    """Every Trainer.fit call's (epochs, minutes), the real fit still run (for one epoch at most)."""
    calls, real = [], training.Trainer.fit

    def fit(self, epochs=None, minutes=None):
        calls.append((epochs, minutes))
        return real(self, min(epochs, 1) if epochs else epochs, minutes)
    monkeypatch.setattr(training.Trainer, "fit", fit)
    return calls


@pytest.mark.parametrize("extra, minutes", [
    ([], MAIN_JOB_MINUTES),                       # the main job
    (["--epochs", "3"], None),                    # the user chose a length: no budget of ours
    (["--minutes", "2"], 2.0),                    # the user's budget
])
def test_default_budget_only_for_the_main_job(tmp_path, fits, extra, minutes, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    assert fastseq_main(["train", "--corpus", str(corpus), *TINY, "--out", str(tmp_path / "run"), *extra]) == 0
    assert fits and fits[0][1] == minutes
    assert 0 < MAIN_JOB_MINUTES <= 0.8            # under a minute in all with start-up, baselines, sample, plot


# ------------------------------------------------------------------ the settings a budget chooses
def settings(*argv):
    """The settings `fastseq train ARGV` would run with (runs.hparams_from_args on the real parser)."""
    from fastseq.cli.main import build_parser
    from fastseq.cli.runs import hparams_from_args

    return hparams_from_args(build_parser().parse_args(["train", *argv]))


SIZE_KEYS = ("hidden", "layers", "steps", "dropout", "input_dropout", "weight_decay", "lr", "lr_decay_to")


@pytest.mark.parametrize("argv, expected", [
    # the main job (neither --epochs nor --minutes: 45 s): the model it always had, a constant rate
    ([], dict(hidden=128, layers=1, steps=35, dropout=0.0, input_dropout=0.0, weight_decay=0.0, lr=0.01,
              lr_decay_to=1.0)),
    (["--minutes", "2.9"], dict(hidden=128, layers=1, steps=35, dropout=0.0, input_dropout=0.0, weight_decay=0.0,
                                lr=0.01, lr_decay_to=1.0)),
    # a row without dropout leaves the input rows' to --dropout
    (["--dropout", "0.3"], dict(hidden=128, layers=1, steps=35, dropout=0.3, input_dropout=0.3, weight_decay=0.0,
                                lr=0.01, lr_decay_to=1.0)),
    # lr: 0.01 * sqrt(128 / 256) = 0.0070710678, 0.01 * sqrt(128 / 512) = 0.005
    (["--minutes", "3"], dict(hidden=256, layers=1, steps=64, dropout=0.0, input_dropout=0.0, weight_decay=0.0,
                              lr=0.0070710678, lr_decay_to=0.05)),
    # from 8 minutes: dropout 0.35 but not on the input rows (nn.LSTM's recipe with one-hot inputs), and
    # AdamW's weight decay 0.1
    (["--minutes", "10"], dict(hidden=512, layers=1, steps=64, dropout=0.35, input_dropout=0.0, weight_decay=0.1,
                               lr=0.005, lr_decay_to=0.05)),
    (["--minutes", "10", "--epochs", "3"], dict(hidden=512, layers=1, steps=64, dropout=0.35, input_dropout=0.0,
                                                weight_decay=0.1, lr=0.005, lr_decay_to=0.05)),
    (["--minutes", "45"], dict(hidden=512, layers=2, steps=64, dropout=0.35, input_dropout=0.0, weight_decay=0.1,
                               lr=0.005, lr_decay_to=0.05)),
    # no budget (--epochs only): the options' own defaults, as before budgets chose anything (the input
    # rows' dropout is --dropout's)
    (["--epochs", "4"], dict(hidden=128, layers=1, steps=35, dropout=0.0, input_dropout=0.0, weight_decay=0.0,
                             lr=0.01, lr_decay_to=1.0)),
    (["--epochs", "4", "--dropout", "0.3"], dict(hidden=128, layers=1, steps=35, dropout=0.3, input_dropout=0.3,
                                                 weight_decay=0.0, lr=0.01, lr_decay_to=1.0)),
    (["--minutes", "10", "--input-dropout", "0.1"], dict(hidden=512, layers=1, steps=64, dropout=0.35,
                                                          input_dropout=0.1, weight_decay=0.1, lr=0.005,
                                                          lr_decay_to=0.05)),
    (["--minutes", "10", "--weight-decay", "0"], dict(hidden=512, layers=1, steps=64, dropout=0.35,
                                                       input_dropout=0.0, weight_decay=0.0, lr=0.005,
                                                       lr_decay_to=0.05)),
    # the plain RNN's Adam rate is 0.001 at H = 128: 0.001 * 0.5 at H = 512
    (["--minutes", "10", "--cell", "rnn_tanh"], dict(hidden=512, layers=1, steps=64, dropout=0.35,
                                                     input_dropout=0.0, weight_decay=0.1, lr=0.0005,
                                                     lr_decay_to=0.05)),
    # SGD's rate does not follow the width, and SGD takes no weight decay: the budget's is dropped
    (["--minutes", "10", "--optimizer", "sgd"], dict(hidden=512, layers=1, steps=64, dropout=0.35,
                                                     input_dropout=0.0, weight_decay=0.0, lr=1.0,
                                                     lr_decay_to=0.05)),
])
def test_the_budget_chooses_the_size(argv, expected):
    hp = settings("--corpus", "pydoc", *argv)
    assert {k: hp[k] for k in SIZE_KEYS} == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("argv, cell", [
    ([], "lstm"),                                         # the main job keeps the LSTM
    (["--minutes", "5"], "lstm"),
    (["--minutes", "10"], "gru"),                         # from 8 minutes the GRU, which wins there
    (["--minutes", "45"], "gru"),
    (["--epochs", "3"], "lstm"),                          # no budget: the option's default
    (["--minutes", "10", "--cell", "lstm"], "lstm"),      # a cell given is taken as it is
    (["--minutes", "10", "--nonlinearity", "relu"], "rnn_relu"),   # the older flag names a cell too
])
def test_the_budget_chooses_the_cell(argv, cell):
    assert settings("--corpus", "pydoc", *argv)["cell"] == cell


def test_options_given_are_taken_as_they_are():
    hp = settings("--corpus", "pydoc", "--minutes", "10", "--hidden", "200", "--steps", "20", "--layers", "3",
                  "--dropout", "0.3", "--lr-decay-to", "1", "--lr-hold", "0.5")
    assert (hp["hidden"], hp["steps"], hp["layers"], hp["dropout"], hp["lr_decay_to"], hp["lr_hold"]) == \
        (200, 20, 3, 0.3, 1.0, 0.5)
    assert hp["lr"] == pytest.approx(0.01 * (128 / 200) ** 0.5, rel=1e-12)     # the width rule at the given H
    hp = settings("--corpus", "pydoc", "--minutes", "10", "--lr", "0.02", "--dropout", "0")
    assert hp["lr"] == 0.02 and hp["dropout"] == 0.0 and hp["hidden"] == 512
    assert settings("--corpus", "pydoc", "--minutes", "0.5", "--lr-decay-to", "0.1")["lr_decay_to"] == 0.1


@pytest.mark.parametrize("flag, value", [("--lr-decay-to", "1.5"), ("--lr-hold", "1"), ("--lr-hold", "2")])
def test_schedule_flags_out_of_range_are_usage_errors(tmp_path, flag, value):
    from cli_helpers import run, usage_error

    usage_error(run("train", "--corpus", "pydoc", flag, value, "--out", "x", cwd=tmp_path), flag)


def test_the_command_trains_with_the_decay_it_was_given(tmp_path, fits):
    """The Trainer gets a CosineDecay with the run's fraction and hold; its state is in the checkpoint."""
    import json

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    assert fastseq_main(["train", "--corpus", str(corpus), *TINY, "--epochs", "2", "--lr-decay-to", "0.2",
                         "--lr-hold", "0.25", "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "fastseq.json").read_text())
    assert meta["hparams"]["lr_decay_to"] == 0.2 and meta["hparams"]["lr_hold"] == 0.25
    sched = meta["resume"]["state"]["schedule"]
    assert sched["type"] == "CosineDecay" and sched["final"] == 0.2 and sched["hold"] == 0.25
    assert sched["base_lr"] == meta["hparams"]["lr"] and 0 < sched["progress"] <= 1
    lrs = [r["lr"] for r in meta["history"]["log"]]
    assert lrs[0] == meta["hparams"]["lr"] and lrs[-1] < lrs[0]
    assert meta["resume"]["state"]["elapsed"] > 0


def test_help_documents_the_budget_rule_and_the_schedule():
    from cli_helpers import run

    out = " ".join(run("train", "--help", check=0).stdout.split())
    for words in ("--lr-decay-to", "--lr-hold", "under 3 min: --hidden 128, --steps 35, constant rate",
                  "8-30 min: --cell gru, --hidden 512, --steps 64, dropout 0.35, --input-dropout 0, "
                  "--weight-decay 0.1, "
                  "rate decaying to 0.05x",
                  "30 min or more: --cell gru, --hidden 512, --layers 2, --steps 64, dropout 0.35",
                  "Learning Rate Scheduling", "sqrt(128/H)", "Options given are taken as they are"):
        assert words in out, words
