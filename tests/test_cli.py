"""The `fastseq` command, end to end through its real entry point (python -m fastseq).

Sizes are tiny (H 16, T 8, B 4, a few thousand characters) so the whole file
runs in well under a minute on a shared 2-core machine.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import (DATA_DIR, REPO, TEXT, TINY, TINY_SIZES, forward_logits, is_png, load_weights,  # noqa: F401
                         reaped, run, usage_error)


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text(TEXT, encoding="utf-8")
    return f


# ------------------------------------------------------------------ help and usage errors
@pytest.mark.parametrize("cmd", [["stats"], ["train"], ["generate"], ["eval"], ["compare-bptt"],
                                 ["grad-norms"], ["ngram", "fit"], ["ngram", "eval"], ["ar"]])
def test_help_has_examples(cmd):
    p = run(*cmd, "--help", check=0)
    assert "examples:" in p.stdout and "fastseq " + cmd[0] in p.stdout


def test_no_command_prints_help_and_exits_2():
    p = run()
    assert p.returncode == 2 and "COMMAND" in p.stdout


@pytest.mark.parametrize("argv, words", [
    (["train", "--hidden", "0"], ["--hidden", "expected an integer >= 1"]),
    (["train", "--lr", "nan"], ["--lr", "finite"]),
    (["train", "--lr", "1e39"], ["--lr 1e+39", "too large for float32"]),
    (["train", "--hidden", "1000000", "--batch", "2", "--steps", "2"], ["num_hiddens: 1000000", "more than this machine's memory"]),
    (["train", "--bptt", "block:0"], ["--bptt block:0", "K must be", ">= 1"]),
    (["train", "--bptt", "foo"], ["--bptt", "full, block:K"]),
    (["train", "--bptt", "random:1.5"], ["--bptt random:1.5", "probability"]),
    (["train", "--bptt", "sliding:x"], ["--bptt sliding:x", "whole number", "'x'"]),
    (["train", "--bptt", "random:x"], ["--bptt random:x", "probability", "'x'"]),
    (["train", "--bptt", "sliding:1.5"], ["--bptt sliding:1.5", "whole number"]),
    (["train", "--val-fraction", "1.5"], ["--val-fraction", "[0, 1)"]),
    (["train", "--corpus", "no-such-corpus"], ["no-such-corpus", "no such file"]),
    (["train", "--token", "byte"], ["--token", "invalid choice"]),
    (["generate", "no-such-dir"], ["no-such-dir", "no such checkpoint directory"]),
    (["eval", "no-such-dir", "x.txt"], ["no-such-dir"]),
    (["stats", "no-such-corpus"], ["no-such-corpus"]),
    (["stats", "--top", "-1"], ["--top"]),
    (["grad-norms", "no-such-dir"], ["no-such-dir"]),
    (["compare-bptt", "--strategies", "full,bogus"], ["--bptt", "bogus"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_usage_errors_one_line_exit_2(tmp_path, argv, words):
    usage_error(run(*argv, cwd=tmp_path), *words)


def test_unreadable_corpus_is_a_usage_error(tmp_path):
    (tmp_path / "folder.txt").mkdir()
    usage_error(run("train", "--corpus", "folder.txt", cwd=tmp_path), "folder.txt", "is a folder")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 100)
    usage_error(run("train", "--corpus", "latin1.txt", cwd=tmp_path), "not UTF-8")


def test_corpus_too_small_for_batch(tmp_path):
    (tmp_path / "small.txt").write_text("abc\n" * 5)
    usage_error(run("train", "--corpus", "small.txt", *TINY, cwd=tmp_path), "too few", "--batch")


# ------------------------------------------------------------------ stats
def test_stats_timemachine_known_facts(tmp_path):
    p = run("stats", "timemachine", "--token", "word", "--cleaning", "d2l", "--json", cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    assert r["lines"] == 3221  # the book's count (shared/data/README.md)
    assert r["most_frequent"][:3] == [["the", 2261], ["i", 1267], ["and", 1245]]


def test_stats_default_pydoc_text():
    p = run("stats", check=0)
    assert "corpus      pydoc" in p.stdout and "most frequent 10:" in p.stdout


# ------------------------------------------------------------------ train
def test_train_end_to_end_learns_and_writes_everything(tmp_path, text_file):
    p = run("train", "--corpus", text_file, *TINY, "--epochs", "6", "--lr", "0.02", "--optimizer", "adam",
            "--max-tokens", "0", "--out", "run", "--json", cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    assert r["status"] == "done" and len(r["epochs"]) == 6
    ppl = [e["val_ppl"] for e in r["epochs"]]
    V = len(set(TEXT[:int(len(TEXT) * 0.9)])) + 1
    # A repetitive text: the model must beat the uniform guess (V) by far, and improve.
    assert ppl[-1] < 0.25 * V and ppl[-1] < ppl[0]
    assert is_png(tmp_path / "run" / "train.png")
    w, meta = load_weights(tmp_path / "run")
    assert meta["step"] == r["steps"] and w["W_hh"].shape == (16, 16)
    assert meta["vocab"]["idx_to_token"][0] == "<unk>" and len(meta["vocab"]["idx_to_token"]) == V
    assert len(r["sample"]["ids"]) == 10
    # Human-readable progress went to stderr under --json.
    assert "epoch 6: train perplexity" in p.stderr


def test_train_progress_bar_shows_perplexity_and_speed(tmp_path, text_file):
    argv = [a for a in TINY if a != "--no-progress"]
    p = run("train", "--corpus", text_file, *argv, "--epochs", "1", "--out", "run", cwd=tmp_path, check=0)
    assert "epoch 1" in p.stderr and "ppl " in p.stderr and "tok/s" in p.stderr
    assert "held-out perplexity" in p.stdout and "sample (temperature 0.8" in p.stdout


def test_train_refuses_to_overwrite_a_checkpoint(tmp_path, text_file):
    run("train", "--corpus", text_file, *TINY, "--epochs", "1", "--out", "run", cwd=tmp_path, check=0)
    usage_error(run("train", "--corpus", text_file, *TINY, "--out", "run", cwd=tmp_path), "--resume run")


def test_nan_stops_with_step_and_advice(tmp_path, text_file):
    p = run("train", "--corpus", text_file, *TINY_SIZES, "--lr", "1e30", "--clip", "0", "--cell", "rnn_relu",
            "--out", "run", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr     # the message alone, no NumPy warnings
    line = lines[0]
    assert "step " in line and ("nan" in line or "inf" in line)
    assert "--clip" in line and "learning rate" in line
    # The last complete checkpoint is intact and loadable (step 0 at least).
    w, meta = load_weights(tmp_path / "run")
    assert all(np.all(np.isfinite(v)) for v in w.values())


RESUME_ARGS = ["--cell", "rnn_tanh", "--hidden", "16", "--steps", "8", "--batch", "4", "--no-progress", "--no-ngram",
               "--sample-length", "5", "--dtype", "float64", "--epochs", "3", "--max-tokens", "0"]


@pytest.mark.parametrize("extra", [
    ["--optimizer", "adam", "--lr", "0.01", "--bptt", "random:0.5"],
    ["--optimizer", "sgd", "--lr", "1", "--bptt", "block:3", "--sampling", "random"],
    ["--backend", "numpy", "--optimizer", "adam", "--lr", "0.01", "--bptt", "sliding:3"],
    # the cosine decay over the epochs: the resumed run continues it from the checkpoint's schedule state
    ["--optimizer", "adam", "--lr", "0.02", "--lr-decay-to", "0.1", "--lr-hold", "0.2"],
])
def test_resume_after_stop_gives_identical_weights(tmp_path, text_file, extra):
    run("train", "--corpus", text_file, *RESUME_ARGS, *extra, "--out", "full", cwd=tmp_path, check=0)
    # Stop mid-epoch (not at an epoch boundary), then resume.
    p = run("train", "--corpus", text_file, *RESUME_ARGS, *extra, "--out", "part", "--stop-after", "101",
            cwd=tmp_path, check=0)
    assert "stopped after step 101" in p.stdout
    w_mid, meta_mid = load_weights(tmp_path / "part")
    assert meta_mid["step"] == 101
    run("train", "--resume", "part", "--no-progress", "--no-ngram", "--sample-length", "5", cwd=tmp_path,
        check=0)
    a, meta_a = load_weights(tmp_path / "full")
    b, meta_b = load_weights(tmp_path / "part")
    assert meta_a["step"] == meta_b["step"] > 101
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(w_mid["W_hh"], b["W_hh"])   # the resumed run did train
    # The per-epoch record is the same too (held-out perplexities).
    va = [e["val_ppl"] for e in meta_a["history"]["epochs"]]
    vb = [e["val_ppl"] for e in meta_b["history"]["epochs"]]
    assert va == vb
    assert [e["lr"] for e in meta_a["history"]["log"]] == [e["lr"] for e in meta_b["history"]["log"]]
    if "--lr-decay-to" in extra:
        lrs = [e["lr"] for e in meta_b["history"]["log"]]
        assert lrs[-1] < 0.5 * lrs[0]                      # the decay acted on both sides of the stop


def test_resume_cannot_change_the_run(tmp_path, text_file):
    run("train", "--corpus", text_file, *TINY, "--epochs", "1", "--out", "run", cwd=tmp_path, check=0)
    usage_error(run("train", "--resume", "run", "--hidden", "32", cwd=tmp_path), "--hidden", "cannot change")
    usage_error(run("train", "--resume", "nowhere", cwd=tmp_path), "nowhere")


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished one-epoch run (read-only: tests copy it before changing anything)."""
    d = tmp_path_factory.mktemp("one")
    (d / "tiny.txt").write_text(TEXT, encoding="utf-8")
    run("train", "--corpus", d / "tiny.txt", *TINY, "--epochs", "1", "--out", "run", cwd=d, check=0)
    return d / "run"


def test_resume_into_another_runs_folder_is_refused(tmp_path, text_file):
    run("train", "--corpus", text_file, *TINY, "--epochs", "1", "--out", "a", cwd=tmp_path, check=0)
    run("train", "--corpus", text_file, *TINY, "--epochs", "1", "--seed", "7", "--out", "b", cwd=tmp_path,
        check=0)
    before = {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()}
    usage_error(run("train", "--resume", "a", "--epochs", "2", "--out", "b", cwd=tmp_path),
                "--out b", "another run")
    assert {f.name: f.read_bytes() for f in (tmp_path / "b").iterdir()} == before   # b untouched


def test_out_folder_with_other_files_is_refused(tmp_path, text_file):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.png").write_bytes(b"my own picture")
    usage_error(run("train", "--corpus", text_file, *TINY, "--out", "mine", cwd=tmp_path), "--out mine",
                "not a fastseq checkpoint")
    assert os.listdir(tmp_path / "mine") == ["train.png"]
    assert (tmp_path / "mine" / "train.png").read_bytes() == b"my own picture"
    (tmp_path / "empty").mkdir()
    run("train", "--corpus", text_file, *TINY, "--epochs", "1", "--out", "empty", cwd=tmp_path, check=0)


def test_resume_of_a_finished_run_says_so(tmp_path, one_epoch_run):
    import shutil
    shutil.copytree(one_epoch_run, tmp_path / "run")
    before = {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()}
    usage_error(run("train", "--resume", "run", cwd=tmp_path), "finished its 1 epochs", "--epochs")
    usage_error(run("train", "--resume", "run", "--epochs", "1", cwd=tmp_path), "--epochs 1", "already done 1")
    assert {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()} == before


def test_extending_a_finished_run_equals_the_longer_run(tmp_path, text_file):
    """A run resumed at an epoch boundary draws the next epoch's data order from the saved loader RNG."""
    args = [*RESUME_ARGS[:-4], "--max-tokens", "0", "--optimizer", "adam", "--lr", "0.01", "--sampling", "random"]
    run("train", "--corpus", text_file, *args, "--epochs", "3", "--out", "full", cwd=tmp_path, check=0)
    run("train", "--corpus", text_file, *args, "--epochs", "1", "--out", "part", cwd=tmp_path, check=0)
    run("train", "--resume", "part", "--epochs", "3", "--no-progress", "--no-ngram", "--sample-length", "5",
        cwd=tmp_path, check=0)
    a, meta_a = load_weights(tmp_path / "full")
    b, meta_b = load_weights(tmp_path / "part")
    assert meta_a["step"] == meta_b["step"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["resume"]["state"].pop("loader"), ["damaged", "loader"]),
    (lambda m: m["resume"]["state"].update(epoch="x"), ["damaged", "'x'"]),
    (lambda m: m["hparams"].update(token="bogus"), ["hparams", "damaged", "bogus"]),
    (lambda m: m["hparams"].pop("steps"), ["hparams", "lack steps"]),
    (lambda m: m.update(hparams=[1]), ["'hparams' is a list"]),
])
def test_resume_of_an_edited_checkpoint_is_a_usage_error(tmp_path, one_epoch_run, edit, words):
    import shutil
    shutil.copytree(one_epoch_run, tmp_path / "run")
    f = tmp_path / "run" / "fastseq.json"
    meta = json.loads(f.read_text(encoding="utf-8"))
    edit(meta)
    from fastseq.checkpoint import _integrity
    meta["integrity"] = _integrity(meta)   # re-signed: the command's own checks are reached, not the manifest's
    f.write_text(json.dumps(meta), encoding="utf-8")
    usage_error(run("train", "--resume", "run", "--epochs", "2", cwd=tmp_path), *words)


def test_ctrl_c_keeps_last_checkpoint_and_resume_matches(tmp_path, text_file):
    args = [*RESUME_ARGS[:-4], "--epochs", "40", "--max-tokens", "0", "--optimizer", "adam", "--lr", "0.01"]
    run("train", "--corpus", text_file, *args, "--out", "full", cwd=tmp_path, check=0)
    env = dict(os.environ, FASTSEQ_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "fastseq", "train", "--corpus", str(text_file), *args,
                             "--out", "part", "--save-every", "5"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with reaped(proc):
        meta_file = tmp_path / "part" / "fastseq.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if meta_file.exists() and json.loads(meta_file.read_text())["step"] >= 50:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted after step" in out and "fastseq train --resume part" in out
    assert "Traceback" not in err
    w, meta = load_weights(tmp_path / "part")      # loadable, checksum verified below
    run("eval", "part", text_file, cwd=tmp_path, check=0)
    run("train", "--resume", "part", "--no-progress", "--no-ngram", "--sample-length", "5", cwd=tmp_path,
        check=0)
    a, _ = load_weights(tmp_path / "full")
    b, _ = load_weights(tmp_path / "part")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ generate / eval
@pytest.fixture
def trained(tmp_path, text_file):
    run("train", "--corpus", text_file, *TINY, "--epochs", "3", "--dtype", "float64", "--optimizer", "adam",
        "--lr", "0.02", "--out", "run", cwd=tmp_path, check=0)
    return tmp_path / "run"


def test_generate_greedy_follows_the_argmax(trained, tmp_path):
    p = run("generate", trained, "--prefix", "the ", "-n", "12", "--json", cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    w, meta = load_weights(trained)
    itos = meta["vocab"]["idx_to_token"]
    stoi = {t: i for i, t in enumerate(itos)}
    ids = [stoi[c] for c in "the "]
    want = []
    for _ in range(12):   # the book's predict, recomputed from the weights
        nxt = int(np.argmax(forward_logits(w, ids)[0][-1]))
        want.append(nxt)
        ids.append(nxt)
    assert r["ids"] == want
    assert r["text"] == "".join(itos[i] for i in want)
    p2 = run("generate", trained, "--prefix", "the ", "-n", "12", cwd=tmp_path, check=0)
    assert p2.stdout.rstrip("\n") == "the " + r["text"]


def test_generate_sampling_reproducible_by_seed(trained, tmp_path):
    a = json.loads(run("generate", trained, "-n", "40", "--temperature", "1", "--seed", "1", "--json",
                       cwd=tmp_path, check=0).stdout)
    b = json.loads(run("generate", trained, "-n", "40", "--temperature", "1", "--seed", "1", "--json",
                       cwd=tmp_path, check=0).stdout)
    c = json.loads(run("generate", trained, "-n", "40", "--temperature", "1", "--seed", "2", "--json",
                       cwd=tmp_path, check=0).stdout)
    assert a["ids"] == b["ids"] and a["ids"] != c["ids"]
    k1 = json.loads(run("generate", trained, "-n", "20", "--temperature", "5", "--top-k", "1", "--json",
                        cwd=tmp_path, check=0).stdout)
    g = json.loads(run("generate", trained, "-n", "20", "--json", cwd=tmp_path, check=0).stdout)
    assert k1["ids"] == g["ids"]   # top-1 sampling is greedy whatever the temperature


def test_generate_bad_values(trained, tmp_path):
    usage_error(run("generate", trained, "-n", "-3", cwd=tmp_path), "-n")
    usage_error(run("generate", trained, "--temperature", "-1", cwd=tmp_path), "--temperature")
    usage_error(run("generate", trained, "--prefix", "", cwd=tmp_path), "--prefix")


def test_prefix_outside_the_vocabulary_is_named(trained, tmp_path, text_file):
    usage_error(run("generate", trained, "--prefix", "the \u03b6ebra", cwd=tmp_path), "--prefix", "'\u03b6'",
                "not in the model's vocabulary")
    usage_error(run("generate", trained, "--prefix", "The", cwd=tmp_path), "'T'")   # the text is lower case
    # train checks an explicit --prefix before training, not after it.
    usage_error(run("train", "--corpus", text_file, *TINY, "--prefix", "Zz", "--out", "r2", cwd=tmp_path),
                "--prefix", "'Z'")
    assert not (tmp_path / "r2").exists()
    # The default prefix ('The ') falls back to lower case where 'T' is not a token.
    r = json.loads(run("generate", trained, "-n", "3", "--json", cwd=tmp_path, check=0).stdout)
    assert r["prefix"] == "the "


def test_eval_matches_an_independent_perplexity(trained, tmp_path):
    # The documented reading (fastseq.evaluate): B = min(32, n) contiguous streams of L = n // B predictions,
    # each from a zero state; the n - B*L leftover predictions continue the last stream's state.
    held = tmp_path / "held.txt"
    held.write_text("the lazy fox sleeps in the warm sun.\nthe dog is quick.\n" * 3)
    r = json.loads(run("eval", trained, held, "--json", cwd=tmp_path, check=0).stdout)
    w, meta = load_weights(trained)
    stoi = {t: i for i, t in enumerate(meta["vocab"]["idx_to_token"])}
    ids = [stoi.get(c, 0) for c in held.read_text()]
    n = len(ids) - 1
    B = min(32, n)
    L = n // B

    def nll(xs, ys, h):
        logits, h = forward_logits(w, xs, h)
        m = logits.max(1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
        return -logp[np.arange(len(ys)), ys].sum(), h

    total = 0.0
    for b in range(B):
        v, h = nll(ids[b * L:(b + 1) * L], ids[b * L + 1:(b + 1) * L + 1], None)
        total += v
    v, _ = nll(ids[B * L:n], ids[B * L + 1:n + 1], h)
    want = np.exp((total + v) / n)
    assert r["tokens"] == n
    assert r["perplexity"] == pytest.approx(want, rel=1e-9)


def test_damaged_checkpoint_is_named(trained, tmp_path):
    meta = json.loads((trained / "fastseq.json").read_text())
    f = trained / meta["weights"]["file"]
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    usage_error(run("generate", trained, cwd=tmp_path), "sha256", "does not match")
    usage_error(run("eval", trained, "pydoc", cwd=tmp_path), "sha256")


# ------------------------------------------------------------------ compare-bptt / grad-norms
def test_compare_bptt_same_seeds(tmp_path, text_file):
    p = run("compare-bptt", text_file, "--strategies", "full,block:8,random:1,block:2", "--hidden", "16",
            "--steps", "8", "--batch", "4", "--epochs", "2", "--max-tokens", "0", "--no-progress",
            "--plot", "bptt.png", "--json", cwd=tmp_path, check=0)
    r = {s["bptt"]: s for s in json.loads(p.stdout)["strategies"]}
    full = [c["val_ppl"] for c in r["full"]["curve"]]
    # Same seeds: block truncation with tau >= T and randomized with pi = 1 are exactly full BPTT.
    assert [c["val_ppl"] for c in r["block:8"]["curve"]] == full
    assert [c["val_ppl"] for c in r["random:1"]["curve"]] == full
    assert [c["val_ppl"] for c in r["block:2"]["curve"]] != full
    assert full[0] == r["block:2"]["curve"][0]["val_ppl"]     # same initialisation
    assert all(s["train_seconds"] > 0 for s in r.values())
    assert is_png(tmp_path / "bptt.png")


def test_grad_norms(trained, tmp_path):
    p = run("grad-norms", trained, "--window", "20", "--sequences", "8", "--plot", "g.png", "--json",
            cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    w, _ = load_weights(trained)
    assert r["spectral_radius_W_hh"] == pytest.approx(np.max(np.abs(np.linalg.eigvals(w["W_hh"]))), rel=1e-12)
    norms = r["median_norm_by_distance"]
    assert len(norms) == 20 and all(n >= 0 for n in norms)
    # A small trained model forgets: the signal 19 steps back is far weaker than at the loss.
    assert norms[19] < 0.1 * norms[0]
    assert is_png(tmp_path / "g.png")
    usage_error(run("grad-norms", trained, "--window", "100000", cwd=tmp_path), "--window")


def strict_json(text):
    """Parse as JSON proper: NaN, Infinity (Python's json extensions) are an error."""
    def refuse(c):
        raise ValueError(f"not JSON: {c}")
    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json_when_a_figure_is_not_finite(tmp_path, text_file):
    # float32 gradients 1000 steps from the loss underflow to 0: the decay fit is undefined.
    run("train", "--corpus", text_file, *TINY, "--epochs", "2", "--out", "run", cwd=tmp_path, check=0)
    p = run("grad-norms", "run", "--text", text_file, "--window", "1000", "--sequences", "2", "--json",
            cwd=tmp_path, check=0)
    r = strict_json(p.stdout)
    assert r["median_norm_by_distance"][-1] == 0.0 and r["decay_per_step"] is None


def test_grad_norms_match_an_independent_backward(trained, tmp_path):
    T = 20
    (tmp_path / "w.txt").write_text(TEXT[5:5 + T + 2])   # exactly one window: ids[0:T] -> ids[1:T+1]
    r = json.loads(run("grad-norms", trained, "--text", "w.txt", "--window", T, "--sequences", 1, "--json",
                       cwd=tmp_path, check=0).stdout)
    w, meta = load_weights(trained)
    stoi = {t: i for i, t in enumerate(meta["vocab"]["idx_to_token"])}
    ids = [stoi[c] for c in TEXT[5:5 + T + 1]]
    hs, h = [], np.zeros(16)
    for i in ids[:T]:
        h = np.tanh(w["W_xh"][i] + h @ w["W_hh"] + w["b_h"])
        hs.append(h)
    o = hs[-1] @ w["W_hq"] + w["b_q"]
    p = np.exp(o - o.max())
    p /= p.sum()
    p[ids[T]] -= 1                       # d(-log softmax(o)[y]) / do
    g = p @ w["W_hq"].T                  # dl/dh_{T-1}
    want = []
    for t in range(T - 1, -1, -1):
        want.append(np.linalg.norm(g))
        g = (g * (1 - hs[t] ** 2)) @ w["W_hh"].T
    np.testing.assert_allclose(r["median_norm_by_distance"], want, rtol=1e-9)


# ------------------------------------------------------------------ stats (Zipf) and ngram
def test_stats_zipf_alphas_and_plot(tmp_path):
    import re
    from collections import Counter
    p = run("stats", "timemachine", "--cleaning", "d2l", "--plot", "zipf.png", "--json", cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    words = " ".join(re.sub("[^A-Za-z]+", " ", ln).strip().lower()
                     for ln in (DATA_DIR / "timemachine.txt").read_text().splitlines()).split()
    for n, o in zip((1, 2, 3), r["zipf"]["orders"]):
        c = np.array(sorted(Counter(zip(*[words[i:] for i in range(n)])).values(), reverse=True), float)
        hi = int(np.count_nonzero(c >= 2))
        slope, icpt = np.polyfit(np.log(np.arange(1, hi + 1)), np.log(c[:hi]), 1)
        assert o["order"] == n and o["distinct"] == len(c) and o["rank_range"] == [1, hi]
        assert o["alpha"] == pytest.approx(-slope, rel=1e-9) and o["c"] == pytest.approx(icpt, rel=1e-9)
        assert 0 < o["alpha_mle"] < 2
    # Unigrams fall fastest, then bigrams, then trigrams (the seed's observation).
    a = [o["alpha"] for o in r["zipf"]["orders"]]
    assert a[0] > a[1] > a[2]
    assert is_png(tmp_path / "zipf.png")
    usage_error(run("stats", "--plot", "zipf.jpg", cwd=tmp_path), "--plot", ".png")


def test_output_file_that_is_a_folder_is_a_usage_error(tmp_path, text_file):
    (tmp_path / "out.png").mkdir()
    (tmp_path / "out.arpa").mkdir()
    usage_error(run("stats", text_file, "--plot", "out.png", cwd=tmp_path), "--plot out.png", "is a folder")
    usage_error(run("ngram", "fit", text_file, "--order", "2", "--arpa", "out.arpa", cwd=tmp_path),
                "--arpa out.arpa", "is a folder")
    usage_error(run("train", "--corpus", text_file, *TINY, "--plot", "out.png", "--out", "run", cwd=tmp_path),
                "--plot out.png", "is a folder")
    assert not (tmp_path / "run").exists()   # refused before any work


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (a folder no file can be created in)")
def test_write_failure_is_one_line(tmp_path, text_file):
    p = run("stats", text_file, "--plot", "/proc/zipf.png", cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "/proc/zipf.png" in lines[0], p.stderr


@pytest.fixture(scope="module")
def tm_split(tmp_path_factory):
    """The KenLM split of shared/data/README.md: cleaned non-empty lines, 90/10."""
    import re
    d = tmp_path_factory.mktemp("tm")
    lines = [re.sub("[^A-Za-z]+", " ", ln).strip().lower()
             for ln in (DATA_DIR / "timemachine.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert len(lines) == 2848
    (d / "train.txt").write_text("\n".join(lines[:2563]) + "\n")
    (d / "test.txt").write_text("\n".join(lines[2563:]) + "\n")
    return d


def test_ngram_fit_eval_matches_kenlm(tm_split, tmp_path):
    p = run("ngram", "fit", tm_split / "train.txt", "--order", "3", "--arpa", "tm3.arpa", "--json",
            cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    assert r["sentences"] == 2563 and r["tokens"] == 29496
    arpa = (tmp_path / "tm3.arpa").read_text()     # the header comment KenLM skips, then the ARPA data
    assert arpa.startswith('# fastseq-meta: {"token": "word", "cleaning": "none"}\n\\data\\\n')
    e = json.loads(run("ngram", "eval", "tm3.arpa", tm_split / "test.txt", "--json", cwd=tmp_path,
                       check=0).stdout)
    # KenLM's lmplz -o 3 + query on the same split (shared/data/README.md).
    assert e["tokens"] == 3564 and e["oov"] == 270
    assert e["perplexity_including_oov"] == pytest.approx(258.715650, rel=1e-4)
    assert e["perplexity_excluding_oov"] == pytest.approx(171.816939, rel=1e-4)
    text = run("ngram", "eval", "tm3.arpa", tm_split / "test.txt", cwd=tmp_path, check=0).stdout
    assert "perplexity including OOVs 258.71" in text


def test_ngram_order5_refused_then_fallback(tm_split, tmp_path):
    usage_error(run("ngram", "fit", tm_split / "train.txt", "--order", "5", cwd=tmp_path), "order=5", "discount")
    p = run("ngram", "fit", tm_split / "train.txt", "--order", "5", "--discount-fallback", "--json",
            cwd=tmp_path, check=0)
    assert json.loads(p.stdout)["order"] == 5


def test_ngram_laplace_and_bad_input(tm_split, tmp_path):
    run("ngram", "fit", tm_split / "train.txt", "--order", "2", "--smoothing", "laplace", "--eps", "0.5",
        "--arpa", "lap.arpa", cwd=tmp_path, check=0)
    e = json.loads(run("ngram", "eval", "lap.arpa", tm_split / "test.txt", "--json", cwd=tmp_path,
                       check=0).stdout)
    assert e["perplexity_including_oov"] > e["perplexity_excluding_oov"] > 1
    usage_error(run("ngram", "fit", tm_split / "train.txt", "--order", "0", cwd=tmp_path), "--order")
    usage_error(run("ngram", "fit", tm_split / "train.txt", "--arpa", "no/such/dir/x.arpa", cwd=tmp_path), "--arpa")
    usage_error(run("ngram", "eval", "missing.arpa", tm_split / "test.txt", cwd=tmp_path), "missing.arpa")
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\t<s>\nnot a line\n\\end\\\n")
    line = usage_error(run("ngram", "eval", bad, tm_split / "test.txt", cwd=tmp_path), "bad.arpa")
    assert "line" in line
    p = run("ngram", cwd=tmp_path)
    assert p.returncode == 2 and "fit or eval" in p.stderr


# ------------------------------------------------------------------ optional packages missing
def run_without(blocked, *argv, cwd=None):
    """python -m fastseq with some packages made unimportable (as if not installed)."""
    code = ("import sys, runpy\n"
            f"for m in {list(blocked)!r}: sys.modules[m] = None\n"
            f"sys.argv = ['fastseq'] + {[str(a) for a in argv]!r}\n"
            "runpy.run_module('fastseq', run_name='__main__', alter_sys=True)\n")
    env = dict(os.environ, FASTSEQ_DATA_DIR=str(DATA_DIR))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_train_without_tqdm_and_matplotlib_still_trains(tmp_path, text_file):
    argv = [a for a in TINY if a != "--no-progress"]
    p = run_without(["tqdm", "matplotlib"], "train", "--corpus", text_file, *argv, "--epochs", "1", "--out", "run",
                    cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "no progress bar: the 'tqdm' package is not installed" in p.stdout
    assert "no plot:" in p.stdout and "matplotlib" in p.stdout
    assert not (tmp_path / "run" / "train.png").exists()
    assert (tmp_path / "run" / "fastseq.json").exists()


def test_missing_packages_named_before_any_work(tmp_path, text_file):
    p = run_without(["safetensors", "safetensors.numpy"], "train", "--corpus", text_file, *TINY, "--out", "run",
                    cwd=tmp_path)
    usage_error(p, "safetensors", "pip install")
    assert not (tmp_path / "run").exists()
    usage_error(run_without(["matplotlib"], "compare-bptt", text_file, "--no-progress", cwd=tmp_path),
                "matplotlib", "pip install")
    usage_error(run_without(["matplotlib"], "stats", "--plot", "z.png", cwd=tmp_path), "matplotlib")


def test_train_ngram_baseline_on_the_same_tokens(tmp_path, text_file):
    argv = [a for a in TINY if a != "--no-ngram"]
    p = run("train", "--corpus", text_file, *argv, "--epochs", "1", "--ngram-orders", "2,3", "--out", "run",
            "--json", cwd=tmp_path, check=0)
    r = json.loads(p.stdout)
    from fastseq.ngram import KneserNeyLM
    n_train = len(TEXT) - round(len(TEXT) * 0.1)
    for g in r["ngram"]:
        lm = KneserNeyLM(g["order"], discount_fallback=True).fit([list(TEXT[:n_train])])
        want = lm.perplexity([list(TEXT[n_train:])]).including_oov
        assert g["val_ppl"] == pytest.approx(want, rel=1e-12)
    text = run("train", "--corpus", text_file, *argv, "--epochs", "1", "--ngram-orders", "2", "--out", "run2",
               cwd=tmp_path, check=0).stdout
    assert "Kneser-Ney 2-gram" in text and "RNN (H=16)" in text


def test_train_words_then_generate_words(tmp_path, text_file):
    run("train", "--corpus", text_file, *TINY, "--token", "word", "--epochs", "2", "--out", "w", cwd=tmp_path,
        check=0)
    r = json.loads(run("generate", "w", "--prefix", "the lazy", "-n", "5", "--json", cwd=tmp_path,
                       check=0).stdout)
    words = set(TEXT.replace(".", " . ").split()) | {"<unk>"}
    assert len(r["text"].split()) == 5 and set(r["text"].split()) <= words


# ------------------------------------------------------------------ ngram: the fit's token and cleaning travel
def test_ngram_eval_uses_the_token_and_cleaning_of_the_fit(tmp_path):
    fit = json.loads(run("ngram", "fit", "timemachine", "--cleaning", "d2l", "--order", "3", "--arpa", "tm3.arpa",
                         "--json", cwd=tmp_path, check=0).stdout)
    # Scoring the training text again without the flags must read it as the fit did: the same perplexity.
    e = json.loads(run("ngram", "eval", "tm3.arpa", "timemachine", "--json", cwd=tmp_path, check=0).stdout)
    assert e["cleaning"] == "d2l" and e["token"] == "word"
    assert e["perplexity_including_oov"] == pytest.approx(fit["train_perplexity"], rel=1e-9)
    assert e["perplexity_including_oov"] < 30      # raw lines (capitals, punctuation) gave 243.9
    same = json.loads(run("ngram", "eval", "tm3.arpa", "timemachine", "--cleaning", "d2l", "--json", cwd=tmp_path,
                          check=0).stdout)
    assert same["perplexity_including_oov"] == e["perplexity_including_oov"]
    usage_error(run("ngram", "eval", "tm3.arpa", "timemachine", "--cleaning", "none", cwd=tmp_path),
                "--cleaning none", "tm3.arpa", "d2l")
    usage_error(run("ngram", "eval", "tm3.arpa", "timemachine", "--token", "char", cwd=tmp_path),
                "--token char", "tm3.arpa", "word")


def test_ngram_eval_of_a_file_without_meta_keeps_the_defaults(tmp_path, text_file):
    from fastseq.ngram import KneserNeyLM, load_arpa
    from fastseq.text import read_lines, tokenize
    sents = [s for s in tokenize(read_lines(str(text_file)), "word") if s]
    KneserNeyLM(2, discount_fallback=True).fit(sents).to_arpa(str(tmp_path / "plain.arpa"))   # as lmplz: no meta
    assert load_arpa(str(tmp_path / "plain.arpa")).meta == {}
    e = json.loads(run("ngram", "eval", "plain.arpa", text_file, "--json", cwd=tmp_path, check=0).stdout)
    assert e["token"] == "word" and e["cleaning"] == "none"
    want = load_arpa(str(tmp_path / "plain.arpa")).perplexity(sents).including_oov
    assert e["perplexity_including_oov"] == pytest.approx(float(want), rel=1e-12)


def test_ngram_eval_refuses_an_edited_meta(tmp_path, text_file):
    from fastseq.ngram import KneserNeyLM
    from fastseq.text import read_lines, tokenize
    sents = [s for s in tokenize(read_lines(str(text_file)), "word") if s]
    KneserNeyLM(2, discount_fallback=True).fit(sents).to_arpa(str(tmp_path / "odd.arpa"), meta={"token": "byte"})
    usage_error(run("ngram", "eval", "odd.arpa", text_file, cwd=tmp_path), "odd.arpa", "token", "'byte'")


@pytest.fixture
def shakespeare_excerpt(tmp_path):
    f = tmp_path / "excerpt.txt"
    f.write_text("\n".join((DATA_DIR / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines()[:300]) + "\n",
                 encoding="utf-8")
    return f


def test_ngram_char_model_fit_and_eval(tmp_path, shakespeare_excerpt):
    fit = json.loads(run("ngram", "fit", shakespeare_excerpt, "--token", "char", "--order", "7", "--arpa", "m.arpa",
                         "--json", cwd=tmp_path, check=0).stdout)
    from fastseq.ngram import load_arpa
    assert load_arpa(str(tmp_path / "m.arpa")).meta == {"token": "char", "cleaning": "none"}
    for flags in (["--token", "char"], []):
        e = json.loads(run("ngram", "eval", "m.arpa", shakespeare_excerpt, *flags, "--json", cwd=tmp_path,
                           check=0).stdout)
        assert e["token"] == "char" and e["oov"] == 0
        # each line's characters, spaces included, plus its </s>
        lines = [ln for ln in shakespeare_excerpt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        assert e["tokens"] == sum(len(ln) + 1 for ln in lines)
        assert e["perplexity_including_oov"] == pytest.approx(fit["train_perplexity"], rel=1e-9)
        assert 1 < e["perplexity_including_oov"] < 10


# ------------------------------------------------------------------ ngram fit out of core and on a Dask cluster
def _word_files(tmp_path):
    """Two files with punctuation, capitals and blank lines: the command's word rule must hold on every path."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT[:1500] + "\n\n  \n", encoding="utf-8")
    b.write_text("The Fox, again!\n" + TEXT[1500:], encoding="utf-8")
    return a, b


@pytest.mark.parametrize("flags", [[], ["--cleaning", "d2l"]])
def test_ngram_fit_memory_budget_gives_the_same_arpa(tmp_path, flags):
    a, b = _word_files(tmp_path)
    run("ngram", "fit", a, b, "--order", "3", "--discount-fallback", *flags, "--arpa", "mem.arpa", cwd=tmp_path,
        check=0)
    (tmp_path / "spill").mkdir()
    p = run("ngram", "fit", a, b, "--order", "3", "--discount-fallback", *flags, "--memory", "1K", "--tmp", "spill",
            "--arpa", "ooc.arpa", "--json", cwd=tmp_path, check=0)
    assert json.loads(p.stdout)["memory"] == "1K"
    mem = (tmp_path / "mem.arpa").read_bytes()
    assert len(mem) > 1000 and (tmp_path / "ooc.arpa").read_bytes() == mem
    assert list((tmp_path / "spill").iterdir()) == []           # the runs are removed
    # the one-file corpus the in-memory fit sees is the two files in order
    both = tmp_path / "both.txt"
    both.write_text(a.read_text() + b.read_text())
    run("ngram", "fit", both, "--order", "3", "--discount-fallback", *flags, "--arpa", "both.arpa", cwd=tmp_path,
        check=0)
    assert (tmp_path / "both.arpa").read_bytes() == mem
    run("ngram", "fit", "-", "--order", "3", "--discount-fallback", *flags, "--memory", "1K", "--arpa", "stdin.arpa",
        cwd=tmp_path, check=0, input=both.read_text())                 # standard input is streamed too
    assert (tmp_path / "stdin.arpa").read_bytes() == mem


def test_ngram_fit_scale_flags_refused_where_they_do_not_apply(tmp_path, text_file):
    usage_error(run("ngram", "fit", text_file, "--memory", "lots", cwd=tmp_path), "--memory", "'lots'")
    usage_error(run("ngram", "fit", text_file, "--memory", "1G", "--tmp", "nowhere", cwd=tmp_path), "--tmp", "nowhere")
    usage_error(run("ngram", "fit", text_file, "--tmp", ".", cwd=tmp_path), "--tmp", "--memory")
    usage_error(run("ngram", "fit", text_file, "--memory", "1G", "--token", "char", cwd=tmp_path),
                "--token char", "--memory")
    usage_error(run("ngram", "fit", text_file, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", cwd=tmp_path),
                "--workers", "--scheduler")
    usage_error(run("ngram", "fit", "timemachine", "--workers", "2", cwd=tmp_path), "timemachine", "file")
    usage_error(run("ngram", "fit", "-", "--workers", "2", cwd=tmp_path, input="a b\n"), "standard input")
    usage_error(run("ngram", "fit", "-", "--memory", "1G", cwd=tmp_path, input="\n \n"), "no tokens")


@pytest.mark.slow
def test_ngram_fit_on_two_local_workers_gives_the_same_arpa(tmp_path):
    pytest.importorskip("dask.distributed")
    a, b = _word_files(tmp_path)
    run("ngram", "fit", a, b, "--order", "3", "--discount-fallback", "--cleaning", "d2l", "--arpa", "mem.arpa",
        cwd=tmp_path, check=0)
    p = run("ngram", "fit", a, b, "--order", "3", "--discount-fallback", "--cleaning", "d2l", "--workers", "2",
            "--memory", "64K", "--arpa", "dask.arpa", "--json", cwd=tmp_path, check=0, timeout=600)
    assert json.loads(p.stdout)["workers"] == 2
    mem = (tmp_path / "mem.arpa").read_bytes()
    assert len(mem) > 1000 and (tmp_path / "dask.arpa").read_bytes() == mem


def test_every_error_fastseq_defines_is_a_fastseq_error():
    """cli/main.py maps only FastseqError to one-line errors: an error class outside the hierarchy would
    reach the user as a traceback."""
    import importlib
    import inspect
    import pkgutil

    import fastseq
    from fastseq.errors import FastseqError
    # ParseError is the ARPA kernel's private exception, turned into ArpaError (with the file's name) in arpa.py;
    # TrainingInterrupted is Ctrl-C (a KeyboardInterrupt, exit 130), not an error.
    private = {"fastseq.ngram._arpa.ParseError", "fastseq.training.TrainingInterrupted"}
    found = set()
    for mod in pkgutil.walk_packages(fastseq.__path__, "fastseq."):
        if mod.name == "fastseq.__main__":    # runs the command when imported
            continue
        try:
            m = importlib.import_module(mod.name)
        except ImportError:       # an optional dependency (torch, dask) absent here
            continue
        for _, cls in inspect.getmembers(m, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == m.__name__:
                found.add(f"{cls.__module__}.{cls.__qualname__}")
                if f"{cls.__module__}.{cls.__qualname__}" not in private:
                    assert issubclass(cls, FastseqError), cls
    assert {"fastseq.checkpoint.CheckpointError", "fastseq.ngram.arpa.ArpaError", "fastseq.datasets.DatasetError",
            "fastseq.ngram.models.BadDiscountError"} <= found
    from fastseq.cli.main import USER_ERRORS
    assert USER_ERRORS == (FastseqError,)


def test_ngram_fit_unreachable_scheduler_is_one_line(tmp_path, text_file):
    pytest.importorskip("dask.distributed")
    p = run("ngram", "fit", text_file, "--order", "2", "--scheduler", "tcp://127.0.0.1:1", cwd=tmp_path,
            env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    usage_error(p, "--scheduler tcp://127.0.0.1:1", "cannot reach")
