"""What a new user trips over in the command (issue 10), and the error contract: the library's own errors
are one line and an exit status, anything else is a bug and keeps its traceback."""
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cli_helpers import DATA_DIR, REPO, TEXT, TINY, reaped, run, usage_error


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text(TEXT, encoding="utf-8")
    return f


def python(code, cwd):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"FASTSEQ_DATA_DIR": str(DATA_DIR), "PATH": "/usr/bin:/bin"})


# ------------------------------------------------------------------ errors
def test_an_internal_bug_keeps_its_traceback(tmp_path):
    # A ValueError that is not fastseq's own (here a broken tokenizer) is a bug: it must not read as a usage error.
    p = python("import fastseq.text as t\n"
               "def broken(*a, **k): raise ValueError('boom inside fastseq')\n"
               "t.tokenize = broken\n"
               "from fastseq.cli import main\n"
               "raise SystemExit(main(['stats', 'pydoc']))\n", tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" in p.stderr and "boom inside fastseq" in p.stderr


def test_a_library_error_is_one_line_and_exit_2(tmp_path):
    p = python("import fastseq.text as t\n"
               "from fastseq.errors import FastseqError\n"
               "def refuse(*a, **k): raise FastseqError('lines: something the user can fix')\n"
               "t.tokenize = refuse\n"
               "from fastseq.cli import main\n"
               "raise SystemExit(main(['stats', 'pydoc']))\n", tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == "fastseq stats: error: lines: something the user can fix"


# ------------------------------------------------------------------ the README's command, twice
def test_running_the_main_command_twice_works(tmp_path, text_file):
    args = ["train", "--corpus", text_file, *TINY, "--epochs", "1"]
    first = run(*args, cwd=tmp_path, check=0)
    second = run(*args, cwd=tmp_path, check=0)
    assert (tmp_path / "fastseq-train" / "fastseq.json").is_file()
    assert (tmp_path / "fastseq-train-2" / "fastseq.json").is_file()
    assert "fastseq-train-2" in second.stdout and "fastseq-train-2" not in first.stdout
    assert "earlier run" in second.stdout


def _ignored(path):
    """Whether the repository's .gitignore ignores ``path`` (git itself when this is a clone)."""
    if (REPO / ".git").exists():
        return subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", path]).returncode == 0
    patterns = [ln.strip() for ln in (REPO / ".gitignore").read_text().splitlines() if ln.strip()]
    return any(fnmatch.fnmatch(path.split("/")[0] + "/", p) for p in patterns if not p.startswith("!"))


@pytest.mark.parametrize("path", ["fastseq-train/fastseq.json", "fastseq-train-2/model-00000001.safetensors"])
def test_the_default_run_folder_is_ignored_by_git(path):
    assert _ignored(path)


# ------------------------------------------------------------------ n-gram commands
def test_ngram_eval_reads_standard_input(tmp_path, text_file):
    run("ngram", "fit", text_file, "--order", "2", "--smoothing", "laplace", "--arpa", "m.arpa", cwd=tmp_path,
        check=0)
    from_file = json.loads(run("ngram", "eval", "m.arpa", text_file, "--json", cwd=tmp_path, check=0).stdout)
    from_stdin = json.loads(run("ngram", "eval", "m.arpa", "-", "--json", cwd=tmp_path, check=0,
                                input=TEXT).stdout)
    assert from_stdin["tokens"] == from_file["tokens"] > 0
    assert from_stdin["perplexity_including_oov"] == from_file["perplexity_including_oov"]


def test_ngram_fit_advice_names_the_flag(tmp_path, text_file):
    # 30 copies of three lines: no n-gram is seen once, so modified Kneser-Ney's discounts are undefined.
    line = usage_error(run("ngram", "fit", text_file, "--order", "3", cwd=tmp_path), "--discount-fallback")
    assert "discount_fallback" not in line
    run("ngram", "fit", text_file, "--order", "3", "--discount-fallback", cwd=tmp_path, check=0)


def test_stats_counts_the_characters_train_counts(tmp_path, text_file):
    r = json.loads(run("stats", text_file, "--token", "char", "--json", cwd=tmp_path, check=0).stdout)
    assert r["tokens"] == len(TEXT)               # line breaks are characters the model reads
    assert r["vocab_size"] == len(set(TEXT)) + 1   # + <unk>


# ------------------------------------------------------------------ checkpoints
@pytest.fixture
def trained(tmp_path, text_file):
    run("train", "--corpus", text_file, *TINY, "--epochs", "1", "--out", "run", cwd=tmp_path, check=0)
    return tmp_path / "run"


def test_generate_accepts_a_file_of_the_checkpoint(trained, tmp_path):
    folder = run("generate", "run", "-n", "20", cwd=tmp_path, check=0).stdout
    weights = next(trained.glob("model-*.safetensors"))
    for f in (weights, trained / "fastseq.json"):
        assert run("generate", f, "-n", "20", cwd=tmp_path, check=0).stdout == folder


def test_grad_norms_refuses_a_window_longer_than_the_text_at_once(tmp_path):
    run("train", "--corpus", "pydoc", "--max-tokens", "4000", *TINY, "--epochs", "1", "--out", "run",
        cwd=tmp_path, check=0)
    t0 = time.perf_counter()
    usage_error(run("grad-norms", "run", "--window", "100000", cwd=tmp_path, timeout=60), "--window 100000")
    assert time.perf_counter() - t0 < 30


def test_grad_norms_bounds_the_work_before_allocating(trained, tmp_path):
    t0 = time.perf_counter()
    usage_error(run("grad-norms", "run", "--window", "10", "--sequences", "100000000", cwd=tmp_path, timeout=60),
                "--sequences 100000000")
    assert time.perf_counter() - t0 < 30


def test_grad_norms_shows_progress(trained, tmp_path):
    p = run("grad-norms", "run", "--window", "20", "--sequences", "5", cwd=tmp_path, check=0)
    assert "windows" in p.stderr and "5/5" in p.stderr


# ------------------------------------------------------------------ ar
def test_ar_is_a_command_and_python_m_fastseq_ar_runs_it(tmp_path):
    a = run("ar", "--no-rnn", cwd=tmp_path, check=0).stdout
    b = subprocess.run([sys.executable, "-m", "fastseq.ar", "--no-rnn"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert b.returncode == 0, b.stderr
    assert a == b.stdout and "| linear |" in a


# ------------------------------------------------------------------ naming the sources
COMMANDS = [[], ["stats"], ["ngram"], ["ngram", "fit"], ["ngram", "eval"], ["train"], ["generate"], ["eval"],
            ["compare-bptt"], ["grad-norms"], ["ar"]]
UNNAMED_SOURCE = re.compile(r"\bthe seed\b", re.IGNORECASE)


def test_help_names_its_sources_not_the_seed(tmp_path):
    for cmd in COMMANDS:
        text = run(*cmd, "--help", cwd=tmp_path, check=0).stdout
        assert not UNNAMED_SOURCE.search(text), (cmd, UNNAMED_SOURCE.search(text))
    for cmd in (["train"], ["compare-bptt"]):
        text = run(*cmd, "--help", cwd=tmp_path, check=0).stdout
        flat = " ".join(text.split())
        assert "Dive into Deep Learning" in flat and "Backpropagation Through Time" in flat
        assert "Tallec & Ollivier" in flat


@pytest.mark.parametrize("path", ["README.md", "docs/COMMANDS.md", "fastseq/cli", "fastseq/__main__.py"])
def test_docs_and_the_command_never_say_the_seed(path):
    files = [REPO / path] if (REPO / path).is_file() else sorted((REPO / path).glob("*.py"))
    assert files
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            assert not UNNAMED_SOURCE.search(line), f"{f.name}:{i}: {line.strip()}"


# ------------------------------------------------------------------ one engine, one evaluator, one sampler
def test_the_command_has_no_loop_evaluator_or_sampler_of_its_own():
    pattern = re.compile(r"loss_and_grad|log_softmax|\.random\(")
    for f in sorted((REPO / "fastseq" / "cli").glob("*.py")):
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            assert not pattern.search(line), f"{f.name}:{i}: {line.strip()}"


def test_eval_agrees_with_the_api_to_the_last_digit(trained, tmp_path):
    held = tmp_path / "held.txt"
    held.write_text("the lazy fox sleeps in the warm sun.\nthe dog is quick, the sun is warm.\n" * 3)
    r = json.loads(run("eval", "run", held, "--json", cwd=tmp_path, check=0).stdout)
    p = python("import sys, fastseq\n"
               "from fastseq import checkpoint\n"
               "ck = checkpoint.load('run')\n"
               "ids = ck.vocab.encode(open('held.txt', encoding='utf-8').read())\n"
               "print(repr(fastseq.evaluate(ck.model, ids)))\n", tmp_path)
    assert p.returncode == 0, p.stderr
    assert r["perplexity"] == float(p.stdout)


def test_generate_never_emits_unk(trained, tmp_path):
    r = json.loads(run("generate", "run", "-n", "400", "--temperature", "1000", "--json", cwd=tmp_path,
                       check=0).stdout)
    assert len(r["ids"]) == 400 and 0 not in r["ids"] and "<unk>" not in r["text"]


def test_a_resumed_run_may_lower_the_learning_rate(trained, tmp_path):
    run("train", "--resume", "run", "--epochs", "2", "--lr", "0.0005", "--no-progress", "--no-ngram",
        "--sample-length", "5", cwd=tmp_path, check=0)
    meta = json.loads((trained / "fastseq.json").read_text())
    lrs = [e["lr"] for e in meta["history"]["epochs"]]
    assert lrs[-1] == 0.0005 and lrs[0] != 0.0005


def test_a_time_budget_stops_with_a_checkpoint(tmp_path, text_file):
    p = run("train", "--corpus", text_file, *TINY, "--epochs", "100000", "--minutes", "0.02", "--out", "run",
            cwd=tmp_path, check=0, timeout=120)
    assert "(--minutes)" in p.stdout and "--resume run" in p.stdout
    meta = json.loads((tmp_path / "run" / "fastseq.json").read_text())
    assert 0 < meta["step"]


def test_ctrl_c_before_the_first_periodic_save_keeps_the_last_step(tmp_path):
    env = dict(os.environ, FASTSEQ_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED="1")
    # pydoc in batches of 4 x 8: an epoch of 13,000 steps, so no epoch ends and no 30-second save is due.
    proc = subprocess.Popen([sys.executable, "-m", "fastseq", "train", *TINY, "--out", "run"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        for line in proc.stdout:
            if line.startswith("model RNNLM"):
                break
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    meta = json.loads((tmp_path / "run" / "fastseq.json").read_text())
    assert meta["step"] > 0
    assert f"after step {meta['step']}," in out and "fastseq train --resume run" in out
    run("train", "--resume", "run", "--stop-after", str(meta["step"] + 1), "--no-progress", cwd=tmp_path, check=0)
