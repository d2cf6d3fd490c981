"""`fastseq train --weight-decay L`: Adam's decoupled weight decay (fastseq.optim.Adam(weight_decay=))
in the run's settings, the checkpoint and resume; a time budget's row may set it like its dropout."""
import json

import numpy as np
import pytest

from fastseq import training
from fastseq.cli.args import UsageError

from cli_helpers import TEXT, TINY, load_weights, run, usage_error


def settings(*argv):
    """The settings `fastseq train ARGV` would run with (runs.hparams_from_args on the real parser)."""
    from fastseq.cli.main import build_parser
    from fastseq.cli.runs import hparams_from_args

    return hparams_from_args(build_parser().parse_args(["train", "--corpus", "pydoc", *argv]))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wd")
    (d / "tiny.txt").write_text(TEXT, encoding="utf-8")
    return d


def train(d, out, *extra, epochs=2, check=0):
    return run("train", "--corpus", d / "tiny.txt", *TINY, "--epochs", epochs, "--dtype", "float64",
               "--optimizer", "adam", "--lr", "0.02", "--out", out, "--overwrite", *extra, cwd=d, check=check)


def resign(folder, edit):
    """Edit the manifest of the run in ``folder`` and sign it again, as an older fastseq would have written it."""
    from fastseq.checkpoint import _integrity

    f = folder / "fastseq.json"
    meta = json.loads(f.read_text(encoding="utf-8"))
    edit(meta)
    meta["integrity"] = _integrity(meta)
    f.write_text(json.dumps(meta), encoding="utf-8")


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("argv, expected", [
    ([], 0.0),                                                # the main job: plain Adam
    (["--minutes", "5"], 0.0),                                # the 3-8 minute row has none
    (["--minutes", "10"], 0.1),                               # from 8 minutes the budget's 0.1
    (["--weight-decay", "0.1"], 0.1),
    (["--minutes", "10", "--weight-decay", "0.01"], 0.01),
    (["--optimizer", "sgd", "--weight-decay", "0"], 0.0),
])
def test_the_option_is_a_setting_of_the_run(argv, expected):
    assert settings(*argv)["weight_decay"] == expected


def test_sgd_refuses_weight_decay(tmp_path):
    with pytest.raises(UsageError, match=r"^--weight-decay 0\.1: decoupled weight decay is Adam's"):
        settings("--optimizer", "sgd", "--weight-decay", "0.1")
    usage_error(run("train", "--corpus", "pydoc", "--optimizer", "sgd", "--weight-decay", "0.1", "--out", "x",
                    cwd=tmp_path), "--weight-decay 0.1", "--optimizer sgd takes none")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf", "much"])
def test_a_bad_weight_decay_is_a_usage_error(tmp_path, value):
    usage_error(run("train", "--corpus", "pydoc", "--weight-decay", value, "--out", "x", cwd=tmp_path),
                "--weight-decay", repr(value))


def test_a_budget_row_with_weight_decay_flows_like_dropout(monkeypatch):
    """A weight_decay in a BUDGET_SETTINGS row (here 0.05 in the 8-minute row) is the run's unless --weight-decay is
    given, reaches the optimizer, and --help's budget note prints it; SGD leaves it at 0 (the row's
    recipe is Adam's) rather than refusing an option the user never gave."""
    from fastseq.cli import runs
    from fastseq.cli.train_help import budget_note

    rows = tuple((start, dict(s, weight_decay=0.05) if start == 8.0 else s)
                 for start, s in training.BUDGET_SETTINGS)
    monkeypatch.setattr(training, "BUDGET_SETTINGS", rows)
    monkeypatch.setattr("fastseq.cli.train_help.BUDGET_SETTINGS", rows)
    assert settings("--minutes", "10")["weight_decay"] == 0.05
    assert settings("--minutes", "10", "--weight-decay", "0")["weight_decay"] == 0.0
    assert settings("--minutes", "10", "--weight-decay", "0.2")["weight_decay"] == 0.2
    assert settings("--minutes", "2")["weight_decay"] == 0.0
    assert settings("--minutes", "10", "--optimizer", "sgd")["weight_decay"] == 0.0
    note = budget_note()
    assert ("8-30 min: --cell gru, --hidden 512, --steps 64, dropout 0.35, --input-dropout 0, --weight-decay 0.05, "
            "rate") in note
    assert note.count("--weight-decay") == 2         # the 8- and the 30-minute rows
    hp = settings("--minutes", "10", "--max-tokens", "2000", "--hidden", "8", "--steps", "8", "--batch", "2")
    vocab, train_ids, val_ids = runs.prepare_data(hp)
    tr = runs.trainer(hp, runs.new_model(hp, len(vocab), "numpy"), train_ids, val_ids)
    assert type(tr.optimizer).__name__ == "Adam" and tr.optimizer.weight_decay == 0.05


def test_upgrade_gives_an_older_run_no_weight_decay():
    from fastseq.cli.runs import upgrade

    assert upgrade({"cell": "lstm"})["weight_decay"] == 0.0
    assert upgrade({"cell": "lstm", "weight_decay": 0.3})["weight_decay"] == 0.3


# ------------------------------------------------------------------ training, checkpoint, resume
def test_the_run_trains_with_its_weight_decay_and_resumes_bit_for_bit(text_dir):
    p = train(text_dir, "w-full", "--weight-decay", "0.5")
    assert "adam lr 0.02, weight decay 0.5, clip" in p.stdout
    a, meta = load_weights(text_dir / "w-full")
    assert meta["hparams"]["weight_decay"] == 0.5
    assert meta["resume"]["state"]["optimizer"]["weight_decay"] == 0.5
    assert "weight decay" not in train(text_dir, "w-none").stdout
    plain, meta0 = load_weights(text_dir / "w-none")
    assert meta0["hparams"]["weight_decay"] == 0.0
    for k in a:                          # the decay reached the optimizer: every tensor differs
        assert not np.array_equal(a[k], plain[k]), k
    # a decay of 0.5 at lr 0.02 shrinks the weights 1% a step: the decayed model is the smaller
    assert sum(float(np.sum(w ** 2)) for w in a.values()) < sum(float(np.sum(w ** 2)) for w in plain.values())
    p = train(text_dir, "w-part", "--weight-decay", "0.5", "--stop-after", 23)
    assert "stopped after step 23" in p.stdout
    usage_error(run("train", "--resume", "w-part", "--weight-decay", "0.1", cwd=text_dir),
                "--weight-decay", "cannot change", "0.5")
    run("train", "--resume", "w-part", "--weight-decay", "0.5", "--no-progress", "--no-ngram", "--sample-length",
        0, cwd=text_dir, check=0)
    b, meta_b = load_weights(text_dir / "w-part")
    assert meta_b["step"] == meta["step"] > 23
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_run_saved_before_weight_decay_resumes_without_it(text_dir):
    """A checkpoint with no weight_decay in its settings or its optimizer state (fastseq before the
    option) resumes as plain Adam: the same weights as a run without the option from the start."""
    train(text_dir, "o-full")
    p = train(text_dir, "o-old", "--stop-after", 17)
    assert "stopped after step 17" in p.stdout

    def strip(meta):
        del meta["hparams"]["weight_decay"], meta["resume"]["state"]["optimizer"]["weight_decay"]
    resign(text_dir / "o-old", strip)
    usage_error(run("train", "--resume", "o-old", "--weight-decay", "0.1", cwd=text_dir),
                "--weight-decay", "cannot change", "0.0")
    run("train", "--resume", "o-old", "--no-progress", "--no-ngram", "--sample-length", 0, cwd=text_dir, check=0)
    a, _ = load_weights(text_dir / "o-full")
    b, meta_b = load_weights(text_dir / "o-old")
    assert meta_b["hparams"]["weight_decay"] == 0.0
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_an_edited_checkpoint_with_sgd_and_weight_decay_is_a_usage_error(text_dir):
    train(text_dir, "e-sgd", "--optimizer", "sgd", "--lr", "1", "--stop-after", 5)

    def edit(meta):
        meta["hparams"]["weight_decay"] = 0.1
    resign(text_dir / "e-sgd", edit)
    usage_error(run("train", "--resume", "e-sgd", cwd=text_dir), "damaged", "weight_decay 0.1", "'sgd'")
