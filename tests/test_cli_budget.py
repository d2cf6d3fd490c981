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
