"""The command's cells (issue 11): `--cell`, `--layers`, `--dropout` on train, resume, generate, eval,
grad-norms and compare-bptt, checked against an independent float64 forward pass of each cell written
here from PyTorch's equations (not fastseq's reference)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli_helpers import TEXT, TINY_SIZES, is_png, load_weights, run, usage_error

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cells")
    (d / "tiny.txt").write_text(TEXT, encoding="utf-8")
    return d


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def cell_logits(w, cell, layers, ids):
    """Logits (T, V) of the LM with flat parameters w (the contract's names, x @ W, PyTorch's gate order)
    on one sequence from zero states, in float64."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    H = w["W_hh"].shape[0]
    h = [np.zeros(H) for _ in range(layers)]
    c = [np.zeros(H) for _ in range(layers)]
    out = []
    for i in ids:
        x = None
        for l in range(layers):
            s = "" if l == 0 else f"_l{l}"
            gi = (w["W_xh" + s][i] if l == 0 else x @ w["W_xh" + s]) + w["b_h" + s]
            gh = h[l] @ w["W_hh" + s]
            if cell == "rnn_tanh":
                h[l] = np.tanh(gi + gh)
            elif cell == "rnn_relu":
                h[l] = np.maximum(gi + gh, 0)
            elif cell == "gru":
                r = sigmoid(gi[:H] + gh[:H])
                z = sigmoid(gi[H:2 * H] + gh[H:2 * H])
                n = np.tanh(gi[2 * H:] + r * (gh[2 * H:] + w["b_hn" + s]))
                h[l] = (1 - z) * n + z * h[l]
            else:
                a = gi + gh
                ig, fg, gg, og = sigmoid(a[:H]), sigmoid(a[H:2 * H]), np.tanh(a[2 * H:3 * H]), sigmoid(a[3 * H:])
                c[l] = fg * c[l] + ig * gg
                h[l] = og * np.tanh(c[l])
            x = h[l]
        out.append(x @ w["W_hq"] + w["b_q"])
    return np.array(out)


def train(d, out, *extra, epochs=2, check=0):
    return run("train", "--corpus", d / "tiny.txt", *TINY_SIZES, "--epochs", epochs, "--dtype", "float64",
               "--optimizer", "adam", "--lr", "0.02", "--out", out, "--overwrite", *extra, cwd=d, check=check)


# ------------------------------------------------------------------ flags
@pytest.mark.parametrize("argv, words", [
    (["--cell", "transformer"], ["--cell", "invalid choice", "lstm"]),
    (["--layers", "0"], ["--layers", "expected an integer >= 1"]),
    (["--layers", "two"], ["--layers", "'two'"]),
    (["--dropout", "1"], ["--dropout", "[0, 1)", "'1'"]),
    (["--dropout", "-0.1"], ["--dropout", "[0, 1)"]),
    (["--dropout", "nan"], ["--dropout", "[0, 1)"]),
    (["--input-dropout", "1"], ["--input-dropout", "[0, 1)", "'1'"]),
    (["--cell", "gru", "--nonlinearity", "relu"], ["--nonlinearity relu", "conflicts with --cell gru"]),
    (["--cell", "rnn_tanh", "--nonlinearity", "relu"], ["--nonlinearity relu", "--cell rnn_tanh"]),
])
def test_cell_flags_usage_errors(text_dir, argv, words):
    usage_error(run("train", "--corpus", text_dir / "tiny.txt", *TINY_SIZES, "--out", "bad", *argv, cwd=text_dir),
                *words)
    assert not (text_dir / "bad").exists()     # refused before any work


def test_help_documents_cells_and_defaults():
    out = " ".join(run("train", "--help", check=0).stdout.split())      # argparse wraps the option texts
    for word in ("--cell", "rnn_tanh", "rnn_relu", "gru", "lstm", "--layers", "--dropout", "supersedes",
                 "nn.LSTM(dropout=P)", "Every cell has the same defaults except Adam's learning rate: 0.001, but gru 0.01, lstm 0.01",
                 "(default: lstm; with a time budget, the budget's"):
        assert word in out, word
    out = run("compare-bptt", "--help", check=0).stdout
    assert "--cell" in out and "--layers" in out and "--dropout" in out
    assert "(default: rnn_tanh, the book's plain RNN)" in " ".join(out.split())   # the book's strategies, its cell
    assert "several are measured" in run("grad-norms", "--help", check=0).stdout


@pytest.mark.parametrize("flags, cell", [(["--nonlinearity", "relu"], "rnn_relu"),
                                         (["--cell", "rnn_relu", "--nonlinearity", "relu"], "rnn_relu"),
                                         (["--nonlinearity", "tanh"], "rnn_tanh"),
                                         ([], "lstm")])                   # the default: the quality table's winner
def test_nonlinearity_still_names_the_plain_cell(text_dir, flags, cell):
    p = train(text_dir, "phi", *flags, epochs=1)
    _, meta = load_weights(text_dir / "phi")
    assert meta["hparams"]["cell"] == cell
    assert f"H=16 {cell} float64" in p.stdout


@pytest.mark.parametrize("flags, lr", [(["--cell", "lstm"], 0.01), (["--cell", "gru"], 0.01), ([], 0.01),
                                       (["--cell", "rnn_tanh"], 0.001), (["--cell", "rnn_relu"], 0.001), (["--cell", "lstm", "--optimizer", "sgd"], 1.0),
                                       (["--cell", "lstm", "--lr", "0.002"], 0.002)])
def test_default_learning_rate_by_cell(text_dir, flags, lr):
    p = run("train", "--corpus", text_dir / "tiny.txt", *TINY_SIZES, "--stop-after", 1, "--backend", "numpy", "--json",
            "--out", "lr", "--overwrite", *flags, cwd=text_dir, check=0)
    _, meta = load_weights(text_dir / "lr")
    assert meta["hparams"]["lr"] == lr
    assert f" lr {lr:g}, clip" in p.stderr          # what the optimizer was given


# ------------------------------------------------------------------ every cell, end to end
@pytest.mark.parametrize("cell, layers, dropout", [
    ("rnn_relu", 2, 0.0), ("gru", 1, 0.0), ("gru", 2, 0.25), ("lstm", 1, 0.0), ("lstm", 2, 0.25)])
@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_cell_trains_saves_and_evaluates(text_dir, cell, layers, dropout, backend):
    out = f"{cell}-{layers}-{dropout}-{backend}"
    p = train(text_dir, out, "--cell", cell, "--layers", layers, "--dropout", dropout, "--backend", backend,
              "--json", epochs=3)
    r = json.loads(p.stdout)
    assert r["hparams"]["cell"] == cell and r["hparams"]["layers"] == layers and r["hparams"]["dropout"] == dropout
    ppl = [e["val_ppl"] for e in r["epochs"]]
    assert ppl[-1] < ppl[0]                                    # it learns
    w, meta = load_weights(text_dir / out)
    H, G, V = 16, GATES[cell], len(meta["vocab"]["idx_to_token"])
    want = {"W_xh": (V, G * H), "W_hh": (H, G * H), "b_h": (G * H,), "W_hq": (H, V), "b_q": (V,)}
    for l in range(1, layers):
        want.update({f"W_xh_l{l}": (H, G * H), f"W_hh_l{l}": (H, G * H), f"b_h_l{l}": (G * H,)})
    if cell == "gru":
        want.update({"b_hn" + ("" if l == 0 else f"_l{l}"): (H,) for l in range(layers)})
    assert {k: v.shape for k, v in w.items()} == want
    # fastseq eval: every held-out token predicted once from a zero state, no dropout: an independent forward.
    held = TEXT[-300:]
    (text_dir / "held.txt").write_text(held, encoding="utf-8")
    ev = json.loads(run("eval", out, "held.txt", "--json", cwd=text_dir, check=0).stdout)
    stoi = {t: i for i, t in enumerate(meta["vocab"]["idx_to_token"])}
    ids = [stoi.get(ch, 0) for ch in held]
    # The evaluator reads 32 streams of 9 tokens (+ 11 tokens continuing the last): the same sum of terms.
    n = len(ids) - 1
    L = n // 32
    nll = 0.0
    for b in range(32):
        end = (b + 1) * L if b < 31 else n
        z = cell_logits(w, cell, layers, ids[b * L:end])
        z = z - z.max(axis=1, keepdims=True)
        nll -= np.sum(z[np.arange(len(z)), ids[b * L + 1:end + 1]] - np.log(np.exp(z).sum(axis=1)))
    assert ev["perplexity"] == pytest.approx(np.exp(nll / n), rel=1e-9)
    # fastseq generate, greedy: the argmax of the same forward, token after token.
    g = json.loads(run("generate", out, "--prefix", "the ", "-n", 8, "--json", cwd=text_dir, check=0).stdout)
    seq = [stoi[ch] for ch in "the "]
    for _ in range(8):
        seq.append(int(np.argmax(cell_logits(w, cell, layers, seq)[-1])))
    assert g["ids"] == seq[4:]


def test_dropout_changes_training_not_evaluation(text_dir):
    train(text_dir, "d0", "--cell", "lstm", "--backend", "numpy", epochs=1)
    train(text_dir, "d3", "--cell", "lstm", "--backend", "numpy", "--dropout", "0.3", epochs=1)
    a, _ = load_weights(text_dir / "d0")
    b, meta = load_weights(text_dir / "d3")
    assert not np.allclose(a["W_hh"], b["W_hh"])             # the masks were drawn and used
    train(text_dir, "d3b", "--cell", "lstm", "--backend", "numpy", "--dropout", "0.3", epochs=1)
    c, _ = load_weights(text_dir / "d3b")
    for k in b:                                               # ... from the run's own random state
        np.testing.assert_array_equal(b[k], c[k], err_msg=k)


def test_input_dropout_is_its_own_option_saved_with_the_model(text_dir):
    """--input-dropout 0 drops no input rows (other weights than --dropout alone); the value is in the
    hparams and the model's config; without it the input rows take --dropout (as before the option)."""
    train(text_dir, "i0", "--cell", "lstm", "--backend", "numpy", "--dropout", "0.3", "--input-dropout", "0",
          epochs=1)
    a, meta = load_weights(text_dir / "i0")
    assert meta["hparams"]["input_dropout"] == 0.0 and meta["model"]["config"]["input_dropout"] == 0.0
    train(text_dir, "i3", "--cell", "lstm", "--backend", "numpy", "--dropout", "0.3", epochs=1)
    b, meta_b = load_weights(text_dir / "i3")                 # --dropout 0.3 alone
    assert meta_b["hparams"]["input_dropout"] == 0.3 and meta_b["model"]["config"]["input_dropout"] == 0.3
    assert not np.allclose(a["W_hh"], b["W_hh"])
    # a checkpoint of before the option (no input_dropout anywhere) resumes with its input rows dropped
    old = text_dir / "i-old"
    p = train(text_dir, "i-old", "--cell", "lstm", "--backend", "numpy", "--dropout", "0.3", "--stop-after", 20,
              epochs=1)
    assert "stopped after step 20" in p.stdout
    meta_path = old / "fastseq.json"
    m = json.loads(meta_path.read_text())
    del m["hparams"]["input_dropout"], m["model"]["config"]["input_dropout"]
    from fastseq.checkpoint import _integrity
    m["integrity"] = _integrity(m)                            # as the older fastseq wrote it
    meta_path.write_text(json.dumps(m))
    run("train", "--resume", "i-old", "--no-progress", "--no-ngram", "--sample-length", 0, cwd=text_dir, check=0)
    c, _ = load_weights(old)
    for k in b:                                               # the same run as --dropout 0.3 from the start
        np.testing.assert_array_equal(b[k], c[k], err_msg=k)


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("cell, extra", [("lstm", ["--layers", "2", "--dropout", "0.3"]),
                                         ("gru", ["--dropout", "0.2", "--bptt", "random:0.5"])])
def test_resume_of_a_cell_run_gives_identical_weights(text_dir, cell, extra):
    args = ["--cell", cell, "--backend", "numpy", *extra]
    train(text_dir, f"full-{cell}", *args, epochs=2)
    p = train(text_dir, f"part-{cell}", *args, "--stop-after", 37, epochs=2)
    assert "stopped after step 37" in p.stdout
    run("train", "--resume", f"part-{cell}", "--no-progress", "--no-ngram", "--sample-length", 5, cwd=text_dir,
        check=0)
    a, meta_a = load_weights(text_dir / f"full-{cell}")
    b, meta_b = load_weights(text_dir / f"part-{cell}")
    assert meta_a["step"] == meta_b["step"] > 37
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("flags, words", [
    (["--cell", "gru"], ["--cell", "cannot change", "'lstm'"]),
    (["--layers", "3"], ["--layers", "cannot change"]),
    (["--dropout", "0.5"], ["--dropout", "cannot change"]),
    (["--input-dropout", "0.5"], ["--input-dropout", "cannot change"]),
    (["--nonlinearity", "tanh"], ["--nonlinearity", "cannot change", "'lstm'"]),
])
def test_resume_cannot_change_the_cell(text_dir, flags, words):
    train(text_dir, "fixed", "--cell", "lstm", "--backend", "numpy", epochs=1)
    usage_error(run("train", "--resume", "fixed", "--epochs", 2, *flags, cwd=text_dir), *words)


def test_resume_of_a_run_saved_before_cells(text_dir):
    """A run whose settings say `nonlinearity` (fastseq before issue 11) resumes as that plain cell."""
    train(text_dir, "new", "--nonlinearity", "relu", epochs=1)
    train(text_dir, "old", "--nonlinearity", "relu", epochs=1)
    f = text_dir / "old" / "fastseq.json"
    meta = json.loads(f.read_text(encoding="utf-8"))
    hp = meta["hparams"]
    for k in ("cell", "layers", "dropout"):
        hp.pop(k)
    hp["nonlinearity"] = "relu"
    from fastseq.checkpoint import _integrity
    meta["integrity"] = _integrity(meta)
    f.write_text(json.dumps(meta), encoding="utf-8")
    usage_error(run("train", "--resume", "old", "--epochs", 2, "--cell", "rnn_tanh", cwd=text_dir),
                "--cell", "cannot change", "'rnn_relu'")
    for d in ("new", "old"):
        run("train", "--resume", d, "--epochs", 2, "--nonlinearity", "relu", "--no-progress", "--no-ngram",
            "--sample-length", 0, cwd=text_dir, check=0)
    a, _ = load_weights(text_dir / "new")
    b, meta_b = load_weights(text_dir / "old")
    assert meta_b["hparams"]["cell"] == "rnn_relu" and "nonlinearity" not in meta_b["hparams"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ diagnostics and comparisons
def test_grad_norms_of_two_cells_in_one_figure(text_dir):
    train(text_dir, "g-rnn", "--cell", "rnn_tanh", epochs=2)
    train(text_dir, "g-lstm", "--cell", "lstm", "--backend", "numpy", epochs=2)
    p = run("grad-norms", "g-rnn", "g-lstm", "--window", 12, "--sequences", 4, "--plot", "g.png", "--json",
            cwd=text_dir, check=0)
    r = json.loads(p.stdout)
    assert [m["model"] for m in r["models"]] == ["rnn_tanh H=16", "lstm H=16"]
    rnn, lstm = r["models"]
    w, _ = load_weights(text_dir / "g-rnn")
    assert rnn["spectral_radius_W_hh"] == pytest.approx(np.max(np.abs(np.linalg.eigvals(w["W_hh"]))), rel=1e-12)
    assert lstm["spectral_radius_W_hh"] is None              # W_hh is (H, 4H): the linear argument does not apply
    for m in r["models"]:
        assert len(m["median_norm_by_distance"]) == 12 and m["median_norm_by_distance"][0] > 0
    assert rnn["median_norm_by_distance"] != lstm["median_norm_by_distance"]
    assert is_png(text_dir / "g.png") and r["plot"] == "g.png"
    # One of them alone: the same numbers as in the comparison (same windows).
    alone = json.loads(run("grad-norms", "g-lstm", "--window", 12, "--sequences", 4, "--json", cwd=text_dir,
                           check=0).stdout)
    assert alone["median_norm_by_distance"] == lstm["median_norm_by_distance"]
    usage_error(run("grad-norms", "g-rnn", "g-rnn", cwd=text_dir), "twice")


def test_compare_bptt_with_a_gated_cell(text_dir):
    p = run("compare-bptt", text_dir / "tiny.txt", "--cell", "gru", "--layers", "2", "--hidden", 8, "--steps", 6,
            "--batch", 4, "--epochs", 2, "--strategies", "full,block:6,block:2", "--backend", "numpy",
            "--no-progress", "--plot", "b.png", "--json", cwd=text_dir, check=0)
    r = {s["bptt"]: s for s in json.loads(p.stdout)["strategies"]}
    full = [c["val_ppl"] for c in r["full"]["curve"]]
    assert [c["val_ppl"] for c in r["block:6"]["curve"]] == full   # tau >= T is full BPTT, for any cell
    assert [c["val_ppl"] for c in r["block:2"]["curve"]] != full
    assert is_png(text_dir / "b.png")


# ------------------------------------------------------------------ the quality recipe's thread count
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and 2 cores to tell the default from 1")
def test_train_uses_two_threads_by_default_and_one_on_one_core(text_dir):
    """Two threads made the LSTM step 1.6x faster in wall time (bench/RESULTS.md); a process allowed
    one core keeps one thread (two would only wait on each other); --threads still decides."""
    argv = ["train", "--corpus", text_dir / "tiny.txt", *TINY_SIZES, "--stop-after", 1, "--out", "th", "--overwrite"]
    assert ", 2 threads;" in run(*argv, cwd=text_dir, check=0).stdout
    assert ", 1 thread;" in run(*argv, "--threads", 1, cwd=text_dir, check=0).stdout
    one_core = subprocess.run([sys.executable, "-c", "import os, sys; os.sched_setaffinity(0, {0}); "
                               "from fastseq.cli.main import main; sys.exit(main(sys.argv[1:]))", *map(str, argv)],
                              cwd=text_dir, capture_output=True, text=True, timeout=300)
    assert one_core.returncode == 0, one_core.stderr
    assert ", 1 thread;" in one_core.stdout
