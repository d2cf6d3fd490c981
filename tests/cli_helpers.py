"""What the command's tests share: running `python -m fastseq` as a user would, and reading its output."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("FASTSEQ_DATA_DIR") or REPO / ".." / "shared" / "data").resolve()

TEXT = ("the quick brown fox jumps over the lazy dog.\n"
        "a lazy dog sleeps in the sun while the fox runs.\n"
        "the sun is warm and the fox is quick.\n") * 30
# A tiny run of `fastseq train`. TINY_SIZES leaves the cell to the command (its default is the LSTM);
# TINY pins the plain RNN, a quarter of the LSTM's work, for the tests of everything but the cell.
TINY_SIZES = ["--hidden", "16", "--steps", "8", "--batch", "4", "--no-progress", "--no-ngram", "--sample-length", "10"]
TINY = ["--cell", "rnn_tanh", *TINY_SIZES]


def run(*argv, cwd=None, check=None, timeout=300, input=None, env=None):
    """`python -m fastseq ARGV` in cwd; check: the exit status expected (the output is shown if not)."""
    env = dict(os.environ, FASTSEQ_DATA_DIR=str(DATA_DIR), PYTHONUNBUFFERED="1", **(env or {}))
    p = subprocess.run([sys.executable, "-m", "fastseq", *map(str, argv)], capture_output=True, text=True,
                       cwd=cwd, env=env, timeout=timeout, input=input)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def usage_error(p, *words):
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert p.returncode == 2, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def load_weights(folder):
    from safetensors.numpy import load_file
    meta = json.loads((Path(folder) / "fastseq.json").read_text(encoding="utf-8"))
    return load_file(str(Path(folder) / meta["weights"]["file"])), meta


def is_png(path):
    data = Path(path).read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def forward_logits(w, ids, h=None):
    """An independent float64 forward pass of the RNN LM of Dive into Deep Learning ("Recurrent Neural
    Networks") on one sequence from state h (zeros by default): (logits (T, V), final state)."""
    h = np.zeros(w["W_hh"].shape[0]) if h is None else h
    out = []
    for i in ids:
        h = np.tanh(w["W_xh"][i] + h @ w["W_hh"] + w["b_h"])
        out.append(h @ w["W_hq"] + w["b_q"])
    return np.array(out).reshape(len(out), -1), h


@contextlib.contextmanager
def reaped(proc):
    """Yield proc; on the way out (a failed assertion too) kill it if it still runs, so no run is left going."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
