"""The ``fastseq`` command (also ``python -m fastseq``).

Subcommands: stats, ngram fit, ngram eval, train, generate, eval,
compare-bptt, grad-norms. ``fastseq COMMAND --help`` shows examples.

Usage errors (unknown corpus, unreadable file, bad value) print one line to
stderr and exit with status 2, never a traceback. A training run that
diverges (NaN or inf) exits with status 1; Ctrl-C exits with status 130 and
keeps the last complete checkpoint.

Shapes (llm.c style legend): B batch, T steps, V vocabulary, H hidden.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np

from . import datasets
from .training import DivergenceError, train_step

EXAMPLES_MAIN = """examples:
  fastseq train                          # an RNN on the built-in corpus, with n-gram baselines (< 1 min)
  fastseq generate fastseq-train --prefix "A class " -n 200 --temperature 0.8
  fastseq stats timemachine --cleaning d2l --plot zipf.png
  fastseq ngram fit timemachine --cleaning d2l --order 3 --arpa tm3.arpa
  fastseq compare-bptt --plot bptt.png
  fastseq grad-norms fastseq-train --plot grad-norms.png

exit status: 0 success, 1 a diverged run, 2 a usage error (one line on stderr), 130 Ctrl-C.
"""

EXAMPLES_STATS = """examples:
  fastseq stats                      # the built-in offline corpus (Python's docs)
  fastseq stats timemachine --token word --cleaning d2l
  fastseq stats ./my.txt --top 20 --json
  fastseq stats timemachine --cleaning d2l --plot zipf.png
"""

EXAMPLES_NGRAM_FIT = """examples:
  fastseq ngram fit timemachine --cleaning d2l --order 3 --smoothing kn --arpa tm3.arpa
  fastseq ngram fit ./my.txt --order 2 --smoothing laplace --eps 1 --arpa my2.arpa --json
"""

EXAMPLES_NGRAM_EVAL = """examples:
  fastseq ngram eval tm3.arpa ./heldout.txt --cleaning d2l
  fastseq ngram eval tm3.arpa ./heldout.txt --json
"""

EXAMPLES_TRAIN = """examples:
  fastseq train                                  # built-in offline corpus, characters, under a minute
  fastseq train --corpus timemachine --cleaning d2l --hidden 512 --steps 35 --batch 32 --lr 1 --clip 1
  fastseq train --bptt block:10 --epochs 5 --out runs/tm
  fastseq train --bptt random:0.2 --optimizer adam --lr 0.005
  fastseq train --resume runs/tm --epochs 10     # continue (or extend) an interrupted run
  fastseq train --corpus ./my.txt --token word --json > result.json

Ctrl-C stops cleanly: the last complete checkpoint stays in --out and
`fastseq train --resume DIR` continues the same run (same data order, same
random draws), ending with the same weights as an uninterrupted run.
"""

EXAMPLES_GENERATE = """examples:
  fastseq generate runs/fastseq-train --prefix "The " -n 200
  fastseq generate runs/fastseq-train --prefix "The " -n 200 --temperature 0.8 --top-k 10 --seed 1
"""

EXAMPLES_EVAL = """examples:
  fastseq eval runs/fastseq-train ./heldout.txt
  fastseq eval runs/fastseq-train timemachine --json
"""

EXAMPLES_BPTT = """examples:
  fastseq compare-bptt                           # built-in corpus, full vs truncated vs randomized
  fastseq compare-bptt timemachine --cleaning d2l --strategies full,block:5,random:0.2 --plot bptt.png
"""

EXAMPLES_GRADNORMS = """examples:
  fastseq grad-norms runs/fastseq-train --plot grad-norms.png
  fastseq grad-norms runs/fastseq-train --text ./heldout.txt --window 100 --json
"""


class UsageError(Exception):
    """A bad argument or input: one line, exit status 2."""


class TrainingError(Exception):
    """The run cannot go on (NaN/inf): one line, exit status 1."""


# --------------------------------------------------------------------------- small helpers
def _int_at_least(lo):
    """An argparse type: an integer >= lo, else a one-line usage error."""
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}")
        return v
    return conv


def _finite(lo=None, lo_open=True):
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)):
            bound = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}")
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {s!r}")
        return v
    conv.__name__ = "number"
    return conv


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2) instead of the usage block."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _info(args, *parts, **kw):
    """Human-readable output: stdout normally, stderr under --json (stdout is the JSON)."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    print(*parts, file=stream, flush=True, **kw)


def _finite_or_none(obj):
    """A copy of a JSON-able result with NaN/inf as null: JSON has no NaN (json.dumps would write `NaN`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _print_json(obj):
    """The --json result: one strict JSON object on stdout."""
    print(json.dumps(_finite_or_none(obj), ensure_ascii=False, allow_nan=False))


def _import(module, what, extra="cli"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UsageError(f"{what} needs the '{module.split('.')[0]}' package: "
                         f"pip install {module.split('.')[0]} (or pip install 'fastseq[{extra}]')") from None


def _pyplot():
    matplotlib = _import("matplotlib", "drawing a PNG", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plain_log_y(ax):
    """Log-scaled y axis labelled 3, 4, 6, 10, 20 rather than 3x10^0 (perplexities are small numbers)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(4.0, 6.0, 7.0, 8.0, 9.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _check_png(path, option="--plot"):
    if path is None:
        return None
    if not str(path).lower().endswith(".png"):
        raise UsageError(f"{option}: expected a file name ending in .png, got {path!r}")
    return _check_output(path, option)


def _check_output(path, option):
    """An output file name: its folder must exist and the name must not be a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder; expected a file name")
    return path


def _tokens_of(name, token, cleaning):
    """(tokens, lines) of a corpus: tokens is a str (raw characters) or a flat list."""
    from .text import read_lines, tokenize

    if token == "char" and cleaning is None:
        text = datasets.load(name)
        return text, text.splitlines()
    lines = read_lines(name, cleaning)
    if token == "char":
        return "".join(lines), lines
    return [t for line in tokenize(lines, token) for t in line], lines


def _cleaning(v):
    return None if v in (None, "none") else v


# --------------------------------------------------------------------------- stats
def cmd_stats(args):
    from .text import Vocab, read_lines, tokenize

    if args.top < 0:
        raise UsageError(f"--top: expected a number >= 0, got {args.top}")
    if _check_png(args.plot):
        _pyplot()
    cleaning = _cleaning(args.cleaning)
    lines = read_lines(args.corpus, cleaning)
    tokens = [t for line in tokenize(lines, args.token) for t in line]
    if not tokens:
        raise UsageError(f"{args.corpus}: the corpus has no tokens")
    vocab = Vocab(tokens)
    result = {
        "corpus": args.corpus, "token": args.token, "cleaning": args.cleaning,
        "lines": len(lines), "tokens": len(tokens), "vocab_size": len(vocab),
        "most_frequent": vocab.token_freqs[:args.top],
    }
    zipf = _zipf(tokens, vocab, args)
    result["zipf"] = zipf
    if args.json:
        _print_json(result)
        return 0
    print(f"corpus      {args.corpus} ({args.token}s, cleaning: {args.cleaning})")
    print(f"lines       {result['lines']:,}")
    print(f"tokens      {result['tokens']:,}")
    print(f"vocabulary  {result['vocab_size']:,} (with <unk>)")
    print(f"most frequent {args.top}:")
    for tok, n in result["most_frequent"]:
        print(f"  {tok!r:>16} {n:>10,}")
    if zipf is not None:
        print("Zipf's law, log n_i = -alpha log i + c over the ranks seen at least twice:")
        for o in zipf["orders"]:
            print(f"  {o['name']:<9} alpha {o['alpha']:.3f} (least squares), {o['alpha_mle']:.3f} (max. likelihood)"
                  f"  {o['distinct']:,} distinct, ranks {o['rank_range'][0]}-{o['rank_range'][1]}")
        if args.plot:
            print(f"plot        {args.plot}")
    return 0


def _zipf(tokens, vocab, args):
    """Zipf fits of unigrams, bigrams, trigrams (fastseq.ngram.stats), and the log-log plot.

    Both of the seed's fits over ranks 1..R, R the last rank seen at least twice
    (the flat tail of singletons is not a power law): least squares in log-log,
    and maximum likelihood for a discrete power law.
    """
    from . import ngram

    ids = np.ascontiguousarray(vocab.encode(tokens), dtype=np.int32)
    names = {1: "unigrams", 2: "bigrams", 3: "trigrams"}
    orders, data, fits = [], {}, {}
    for n in (1, 2, 3):
        if len(ids) < n:
            continue
        _, counts = ngram.count_ngrams(ids, n)[n]
        freqs = np.sort(np.asarray(counts))[::-1]
        if len(freqs) < 2:
            continue
        hi = min(len(freqs), max(2, int(np.count_nonzero(freqs >= 2))))
        lsq = ngram.zipf_lsq(freqs, (1, hi))
        mle = ngram.zipf_mle(freqs, (1, hi))
        orders.append({"order": n, "name": names[n], "distinct": int(len(freqs)), "alpha": lsq.alpha,
                       "c": lsq.c, "alpha_mle": mle.alpha, "c_mle": mle.c, "rank_range": [1, hi]})
        data[n] = (np.arange(1, len(freqs) + 1), freqs)
        fits[n] = lsq
    if args.plot:
        _pyplot()
        fig = ngram.plot_zipf(data, None, fits=fits)
        ax = fig.axes[0]
        lines = ax.get_lines()
        for curve, fit in zip(lines[0::2], lines[1::2]):   # each fit in its curve's colour
            fit.set_color(curve.get_color())
            fit.set_alpha(0.7)
        ax.legend(fontsize=8)
        ax.set_title(f"Zipf's law: {args.corpus} ({args.token}s, cleaning {args.cleaning})", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        fig.set_size_inches(6.4, 4.4)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        import matplotlib.pyplot as plt
        plt.close(fig)
    return {"orders": orders, "plot": args.plot}


# --------------------------------------------------------------------------- ngram
def cmd_ngram_fit(args):
    from . import ngram

    cleaning = _cleaning(args.cleaning)
    sentences = _sentences(args.corpus, args.token, cleaning)
    if not sentences:
        raise UsageError(f"{args.corpus}: the corpus has no tokens")
    if args.arpa is not None:
        _check_output(args.arpa, "--arpa")
    t0 = time.perf_counter()
    model = _ngram_model(ngram, args.order, args.smoothing, args.eps, args.discount_fallback)
    model.fit(sentences)
    fit_s = time.perf_counter() - t0
    if args.arpa:
        model.to_arpa(args.arpa)
    train_ppl = model.perplexity(sentences)
    result = {
        "corpus": args.corpus, "order": args.order, "smoothing": args.smoothing, "token": args.token,
        "cleaning": args.cleaning, "sentences": len(sentences),
        "tokens": int(sum(len(s) for s in sentences)), "fit_seconds": round(fit_s, 4),
        "train_perplexity": float(train_ppl.including_oov), "arpa": args.arpa,
    }
    if args.json:
        _print_json(result)
        return 0
    name = "Kneser-Ney" if args.smoothing == "kn" else f"Laplace (eps {args.eps})"
    print(f"fitted a {args.order}-gram {name} model on {result['tokens']:,} {args.token}s "
          f"({result['sentences']:,} sentences) in {fit_s:.2f} s")
    print(f"training perplexity {result['train_perplexity']:.3f}")
    if args.arpa:
        print(f"wrote {args.arpa}")
    return 0


def _ngram_model(ngram, order, smoothing, eps=1.0, fallback=False):
    if smoothing == "laplace":
        return ngram.LaplaceLM(order, eps=eps)
    return ngram.KneserNeyLM(order, discount_fallback=True if fallback else None)


def _sentences(name, token, cleaning):
    """One token list per non-empty line."""
    from .text import read_lines, tokenize

    lines = [ln for ln in read_lines(name, cleaning) if ln.strip()]
    return [s for s in tokenize(lines, token) if s]


def cmd_ngram_eval(args):
    from . import ngram

    if not os.path.isfile(args.model):
        raise UsageError(f"{args.model}: no such ARPA file")
    try:
        model = ngram.load_arpa(args.model)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{args.model}: cannot be read as an ARPA file ({e})") from None
    sentences = _sentences(args.text, args.token, _cleaning(args.cleaning))
    if not sentences:
        raise UsageError(f"{args.text}: the text has no tokens")
    p = model.perplexity(sentences)
    result = {"model": args.model, "text": args.text, "token": args.token, "cleaning": args.cleaning,
              "perplexity_including_oov": float(p.including_oov),
              "perplexity_excluding_oov": float(p.excluding_oov),
              "tokens": int(p.tokens), "oov": int(p.oov)}
    if args.json:
        _print_json(result)
        return 0
    print(f"{args.text}: {result['tokens']:,} tokens (each </s> counted), {result['oov']:,} OOV")
    print(f"perplexity including OOVs {result['perplexity_including_oov']:.4f}")
    print(f"perplexity excluding OOVs {result['perplexity_excluding_oov']:.4f}")
    return 0


# --------------------------------------------------------------------------- training
TRAIN_DEFAULTS = dict(
    corpus="pydoc", token="char", cleaning="none", max_tokens=0, hidden=256, steps=35,
    batch=32, optimizer="adam", lr=None, clip=1.0, epochs=15, bptt="full", sampling="sequential",
    nonlinearity="tanh", dtype="float32", seed=0, val_fraction=0.1,
)
# Settings that define the run; they cannot change on --resume.
RUN_KEYS = ("corpus", "token", "cleaning", "max_tokens", "hidden", "steps", "batch", "optimizer", "lr",
            "clip", "bptt", "sampling", "nonlinearity", "dtype", "seed", "val_fraction")
DEFAULT_LR = {"sgd": 1.0, "adam": 0.001}


def _parse_bptt(spec):
    """'full' | 'block:K' | 'sliding:K' | 'random:P' -> a fastseq.bptt strategy factory."""
    from . import bptt

    s = str(spec).strip().lower()
    kind, _, val = s.partition(":")
    try:
        if kind == "full" and not val:
            return lambda seed: bptt.Full()
        if kind in ("block", "sliding") and val:
            try:
                tau = int(val)
            except ValueError:
                raise UsageError(f"--bptt {spec}: K must be a whole number of steps, got {val!r}") from None
            bptt.Truncated(tau, kind)
            return lambda seed: bptt.Truncated(tau, kind)
        if kind == "random" and val:
            try:
                pi = float(val)
            except ValueError:
                raise UsageError(f"--bptt {spec}: P must be a probability in (0, 1], got {val!r}") from None
            bptt.Randomized(pi)
            return lambda seed: bptt.Randomized(pi, seed=seed)
    except ValueError as e:
        raise UsageError(f"--bptt {spec}: {e}") from None
    raise UsageError(f"--bptt: expected full, block:K, sliding:K or random:P, got {spec!r}")


def _make_optimizer(name, lr):
    from . import optim

    if name == "sgd":
        return optim.SGD(lr=lr)
    return optim.Adam(lr=lr)


def _prepare_data(hp):
    """Vocabulary from the training part only; (vocab, train ids, held-out ids)."""
    from .text import Vocab

    cleaning = _cleaning(hp["cleaning"])
    tokens, _ = _tokens_of(hp["corpus"], hp["token"], cleaning)
    if hp["max_tokens"] and hp["max_tokens"] > 0:
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


def _log_softmax_nll(logits, targets):
    """Sum of -log softmax(logits)[targets] in float64; logits (..., V), targets (...)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return float(np.sum(lse - picked))


def _perplexity(model, ids, streams=16, chunk=256):
    """Held-out perplexity: exp of the mean cross-entropy predicting ids[1:] from ids[:-1].

    The ids are cut into ``streams`` contiguous pieces read in parallel (B =
    streams), each from a zero state carried across chunks of ``chunk`` steps.
    """
    ids = np.asarray(ids, dtype=np.int32)
    if len(ids) < 2:
        return float("nan"), 0
    X, Y = ids[:-1], ids[1:]
    B = max(1, min(streams, len(X) // 64 or 1))
    L = len(X) // B
    total, count = 0.0, 0
    rest = len(X) - B * L
    if L > 0:
        Xs, Ys = X[:B * L].reshape(B, L), Y[:B * L].reshape(B, L)
        state = model.begin_state(B)
        for i in range(0, L, chunk):
            logits, state = model(np.ascontiguousarray(Xs[:, i:i + chunk]), state)
            total += _log_softmax_nll(logits, Ys[:, i:i + chunk])
            count += Ys[:, i:i + chunk].size
    if rest:
        logits, _ = model(np.ascontiguousarray(X[None, B * L:]), model.begin_state(1))
        total += _log_softmax_nll(logits, Y[None, B * L:])
        count += rest
    return math.exp(total / count), count


def _rng_state(rng):
    return rng.bit_generator.state


class _Interrupted(Exception):
    pass


class _StopAfter(Exception):
    pass


class Run:
    """One training run: model, optimizer, data, BPTT strategy and the position in the data.

    Everything that decides what happens next is in ``resume_state()``, so a
    run continued from a checkpoint takes exactly the steps the uninterrupted
    run would have taken.
    """

    def __init__(self, hp, backend, vocab, train_ids, val_ids, model=None):
        from .data import SeqDataLoader

        self.hp, self.vocab = hp, vocab
        self.train_ids, self.val_ids = train_ids, val_ids
        if model is None:
            from .checkpoint import build_model
            config = dict(vocab_size=len(vocab), num_hiddens=hp["hidden"], nonlinearity=hp["nonlinearity"],
                          dtype=hp["dtype"], seed=hp["seed"])
            model = build_model({"class": "RNNLM", "config": config}, backend)
        self.model = model
        self.optimizer = _make_optimizer(hp["optimizer"], hp["lr"])
        self.loader = SeqDataLoader(train_ids, hp["batch"], hp["steps"], hp["sampling"], seed=hp["seed"] + 1)
        self.strategy = _parse_bptt(hp["bptt"])(hp["seed"] + 2)
        self.step = 0                 # optimizer steps completed
        self.epoch = 0                # epochs completed
        self.batch = 0                # batches of the current epoch completed
        self.epoch_rng = _rng_state(self.loader.rng)   # the loader's Generator at the start of this epoch
        self.state = None             # hidden state carried to the next batch (B, H)
        self.acc = {"loss_sum": 0.0, "tokens": 0, "norm_sum": 0.0, "seconds": 0.0}
        self.history = {"epochs": [], "log": []}

    # ---- resume
    def resume_state(self):
        s = {
            "epoch": self.epoch, "batch": self.batch, "epoch_rng": self.epoch_rng,
            "loader_rng": _rng_state(self.loader.rng), "acc": dict(self.acc),
            "optimizer": self.optimizer.state_dict(),
            "state": None if self.state is None else np.array(self.state),
        }
        rng = getattr(self.strategy, "rng", None)
        s["bptt_rng"] = None if rng is None else _rng_state(rng)
        return s

    def load_resume_state(self, s, step, history):
        self.step = int(step)
        self.epoch, self.batch = int(s["epoch"]), int(s["batch"])
        self.epoch_rng = s["epoch_rng"]
        self.loader.rng.bit_generator.state = s["loader_rng"]
        self.acc = dict(s["acc"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.state = None if s["state"] is None else np.asarray(s["state"], dtype=self.model.dtype)
        if s.get("bptt_rng") is not None and getattr(self.strategy, "rng", None) is not None:
            self.strategy.rng.bit_generator.state = s["bptt_rng"]
        self.history = history or {"epochs": [], "log": []}

    # ---- one epoch
    def run_epoch(self, on_step=None, progress=None):
        """Train to the end of the current epoch (from self.batch on); returns the epoch record."""
        model, hp = self.model, self.hp
        B = hp["batch"]
        if self.batch == 0:
            self.epoch_rng = _rng_state(self.loader.rng)
            self.state = None
            self.acc = {"loss_sum": 0.0, "tokens": 0, "norm_sum": 0.0, "seconds": 0.0}
        else:
            # Replay the epoch's draw of offsets, then skip the batches already done.
            self.loader.rng.bit_generator.state = self.epoch_rng
        it = iter(self.loader)
        for _ in range(self.batch):
            next(it)
        log_every = max(1, len(self.loader) // 20)
        interval_loss, interval_tokens = 0.0, 0
        for X, Y in it:
            t0 = time.perf_counter()
            if self.state is None or not self.loader.carries_state:
                self.state = model.begin_state(B)
            step = self.step + 1
            clip = hp["clip"] if hp["clip"] and hp["clip"] > 0 else None
            try:
                loss, norm, new_state = train_step(model, self.optimizer, X, Y, self.state, clip,
                                                   self.strategy, step, self.epoch + 1)
            except DivergenceError as e:
                raise TrainingError(self._diverged(step, f"{e.what} is {e.value}")) from None
            self.state = new_state
            self.step, self.batch = step, self.batch + 1
            dt = time.perf_counter() - t0
            self.acc["loss_sum"] += loss * X.size
            self.acc["tokens"] += X.size
            self.acc["norm_sum"] += norm
            self.acc["seconds"] += dt
            interval_loss += loss * X.size
            interval_tokens += X.size
            if progress is not None:
                progress.update(1)
                progress.set_postfix_str(
                    f"ppl {math.exp(self.acc['loss_sum'] / self.acc['tokens']):.2f}, "
                    f"{self.acc['tokens'] / max(self.acc['seconds'], 1e-9):,.0f} tok/s", refresh=False)
            if self.batch % log_every == 0:
                self.history["log"].append({"step": self.step,
                                            "train_ppl": math.exp(interval_loss / interval_tokens)})
                interval_loss, interval_tokens = 0.0, 0
            if on_step is not None:
                on_step(self)
        train_ppl = math.exp(self.acc["loss_sum"] / self.acc["tokens"])
        val_ppl, _ = _perplexity(model, self.val_ids) if len(self.val_ids) >= 2 else (float("nan"), 0)
        rec = {"epoch": self.epoch + 1, "step": self.step, "train_ppl": train_ppl,
               "val_ppl": val_ppl if math.isfinite(val_ppl) else None,
               "tokens_per_s": self.acc["tokens"] / max(self.acc["seconds"], 1e-9),
               "mean_grad_norm": self.acc["norm_sum"] / max(self.batch, 1)}
        self.history["epochs"].append(rec)
        self.epoch += 1
        self.batch = 0
        self.state = None
        return rec

    def _diverged(self, step, what):
        hp = self.hp
        hint = ("gradient clipping (--clip 1; it is off)" if not hp["clip"]
                else f"stronger clipping (a --clip below {hp['clip']:g})")
        return (f"step {step} (epoch {self.epoch + 1}, batch {self.batch + 1}): {what}, training stopped; "
                f"try {hint} or a lower learning rate (--lr below {hp['lr']:g})")


def _hparams_from_args(args):
    hp = {}
    for k, v in TRAIN_DEFAULTS.items():
        got = getattr(args, k, None)
        hp[k] = v if got is None else got
    if hp["lr"] is None:
        hp["lr"] = DEFAULT_LR[hp["optimizer"]]
    if hp["lr"] > float(np.finfo(hp["dtype"]).max):
        raise UsageError(f"--lr {hp['lr']:g}: too large for {hp['dtype']} parameters")
    if not 0 <= hp["val_fraction"] < 1:
        raise UsageError(f"--val-fraction: expected a number in [0, 1), got {hp['val_fraction']}")
    _parse_bptt(hp["bptt"])
    return hp


def _save(run, out, hp_extra=None):
    from . import checkpoint

    return checkpoint.save(out, run.model, run.vocab, dict(run.hp, **(hp_extra or {})), step=run.step,
                           resume=run.resume_state(), history=run.history)


def _progress_bar(args, total, initial, desc):
    """A tqdm bar on stderr; without tqdm installed, a one-time note and per-epoch lines only."""
    if args.no_progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        args.no_progress = True
        _info(args, "(no progress bar: the 'tqdm' package is not installed; pip install tqdm, "
                    "or pip install 'fastseq[cli]')")
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.25)


def cmd_train(args):
    from . import checkpoint

    _import("safetensors.numpy", "saving checkpoints")
    if args.resume:
        # The run continues on the backend it was trained on (bit-identical), unless --backend says otherwise.
        saved = checkpoint.load(args.resume, backend="numpy").hparams.get("backend")
        ck = checkpoint.load(args.resume, backend=args.backend or saved, resume=True)
        hp = dict(ck.hparams)
        hp["backend"] = getattr(ck.model, "backend", "numpy")
        lacking = [k for k in (*RUN_KEYS, "epochs") if k not in hp]
        if lacking:
            raise UsageError(f"--resume {args.resume}: the checkpoint's hparams lack {', '.join(lacking)} "
                             "(fastseq.json was edited or damaged)")
        for k in RUN_KEYS:
            given = getattr(args, k, None)
            if given is not None and given != hp.get(k):
                raise UsageError(f"--{k.replace('_', '-')}: cannot change when resuming "
                                 f"(the run in {args.resume} has {hp.get(k)!r})")
        try:
            vocab, train_ids, val_ids = _prepare_data(hp)
        except (UsageError, datasets.DatasetError):
            raise
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise UsageError(f"--resume {args.resume}: the checkpoint's hparams are damaged ({what})") from None
        if vocab.idx_to_token != ck.vocab.idx_to_token:
            raise UsageError(f"--resume {args.resume}: the corpus {hp['corpus']!r} no longer gives the "
                             "checkpoint's vocabulary (has the file changed?)")
        try:
            run = Run(hp, args.backend, ck.vocab, train_ids, val_ids, model=ck.model)
            run.load_resume_state(ck.resume, ck.step, ck.history)
        except UsageError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise UsageError(f"--resume {args.resume}: the saved training state in fastseq.json is damaged "
                             f"({what})") from None
        out = args.out or args.resume
    else:
        hp = _hparams_from_args(args)
        vocab, train_ids, val_ids = _prepare_data(hp)
        run = Run(hp, args.backend, vocab, train_ids, val_ids)
        hp["backend"] = getattr(run.model, "backend", "numpy")
        out = args.out or "fastseq-train"
    if args.resume:
        done = run.epoch   # epochs completed by the saved run
        if args.epochs is not None:
            if args.epochs <= done:
                raise UsageError(f"--epochs {args.epochs}: the run in {args.resume} has already done {done} "
                                 f"epochs; pass more to extend it")
            hp["epochs"] = args.epochs
        elif done >= hp["epochs"]:
            raise UsageError(f"--resume {args.resume}: the run has finished its {done} epochs; "
                             f"extend it with --epochs N (N > {done})")
    if args.prefix is not None:
        _check_prefix(run.vocab, hp["token"], args.prefix)   # before training, not after it
    if args.plot:
        _check_png(args.plot)
        _pyplot()   # an explicit --plot needs matplotlib: say so before training, not after
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a folder")
    holds_checkpoint = os.path.exists(os.path.join(out, checkpoint.META_FILE))
    same_folder = args.resume and os.path.exists(out) and os.path.samefile(out, args.resume)
    if holds_checkpoint and not same_folder and not args.overwrite:
        hint = (f"continue it with --resume {out}, or pass --overwrite / another --out" if not args.resume
                else f"pass another --out (or leave it out to continue in {args.resume}), or --overwrite")
        raise UsageError(f"--out {out}: already holds a checkpoint of another run; {hint}")
    if not holds_checkpoint and os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UsageError(f"--out {out}: is a folder with other files, not a fastseq checkpoint; "
                         "pass a new or empty folder (or --overwrite to write into it)")
    os.makedirs(out, exist_ok=True)
    plot = args.plot or os.path.join(out, "train.png")
    model = run.model
    per_epoch = len(run.loader)
    _info(args, f"corpus {hp['corpus']} ({hp['token']}s): {len(train_ids):,} training tokens, "
                f"{len(val_ids):,} held out, vocabulary {len(run.vocab)}")
    _info(args, f"model RNNLM V={model.vocab_size} H={hp['hidden']} {hp['nonlinearity']} {hp['dtype']} "
                f"on {getattr(model, 'backend', 'numpy')}; {hp['optimizer']} lr {hp['lr']:g}, clip {hp['clip']:g}, "
                f"bptt {hp['bptt']}, batch {hp['batch']} x {hp['steps']} steps, "
                f"{hp['epochs']} epochs of {per_epoch} steps")
    if args.resume:
        _info(args, f"resuming {args.resume} at step {run.step} (epoch {run.epoch + 1}, batch {run.batch})")
    last_save = [time.monotonic()]
    saved_step = [run.step if args.resume else None]

    def on_step(r):
        due = (args.save_every and r.step % args.save_every == 0) or \
              (not args.save_every and time.monotonic() - last_save[0] > 30)
        if due:
            _save(r, out)
            saved_step[0] = r.step
            last_save[0] = time.monotonic()
        if args.stop_after is not None and r.step >= args.stop_after:
            if saved_step[0] != r.step:
                _save(r, out)
                saved_step[0] = r.step
            raise _StopAfter()

    t_start = time.perf_counter()
    try:
        if not args.resume:
            _save(run, out)   # step 0: even a run stopped at once can be resumed
            saved_step[0] = 0
        while run.epoch < hp["epochs"]:
            bar = _progress_bar(args, per_epoch, run.batch, f"epoch {run.epoch + 1}/{hp['epochs']}")
            try:
                rec = run.run_epoch(on_step=on_step, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            _save(run, out)
            saved_step[0] = run.step
            last_save[0] = time.monotonic()
            val = "n/a" if rec["val_ppl"] is None else f"{rec['val_ppl']:.3f}"
            _info(args, f"epoch {rec['epoch']}: train perplexity {rec['train_ppl']:.3f}, held-out {val}, "
                        f"{rec['tokens_per_s']:,.0f} tokens/s, mean gradient norm {rec['mean_grad_norm']:.3f}")
    except KeyboardInterrupt:
        if saved_step[0] is None:
            _info(args, f"\ninterrupted at step {run.step}, before the first checkpoint was complete")
        else:
            _info(args, f"\ninterrupted at step {run.step}; the last complete checkpoint (step {saved_step[0]}) "
                        f"is in {out}; continue with: fastseq train --resume {out}")
        if args.json:
            _print_json({"status": "interrupted", "checkpoint": out, "checkpoint_step": saved_step[0]})
        return 130
    except _StopAfter:
        _info(args, f"stopped after step {run.step} (--stop-after); checkpoint in {out}")
        if args.json:
            _print_json({"status": "stopped", "checkpoint": out, "checkpoint_step": run.step})
        return 0
    except TrainingError as e:
        _info(args, f"last complete checkpoint: step {saved_step[0]} in {out}")
        raise e
    train_s = time.perf_counter() - t_start

    result = {"status": "done", "checkpoint": out, "steps": run.step, "epochs": run.history["epochs"],
              "train_seconds": round(train_s, 3), "hparams": hp}
    final_val = run.history["epochs"][-1]["val_ppl"] if run.history["epochs"] else None
    result["val_ppl"] = final_val
    # Held-out comparison against Kneser-Ney n-gram models of the same tokens.
    result["ngram"] = _ngram_baselines(args, run) if not args.no_ngram and len(val_ids) >= 2 else []
    sample = _sample(run.model, run.vocab, hp["token"], args.prefix, args.sample_length, seed=hp["seed"],
                     corpus=hp["corpus"])
    result["sample"] = sample
    result["plot"] = None
    if run.history["epochs"]:
        try:
            _plot_training(run.history, result["ngram"], plot, f"{hp['corpus']} ({hp['token']}s), "
                           f"H={hp['hidden']}, bptt {hp['bptt']}")
            result["plot"] = plot
        except UsageError as e:   # matplotlib missing: the run itself is fine, say what is lacking
            if args.plot:
                raise
            _info(args, f"(no plot: {e})")
    result["total_seconds"] = round(time.perf_counter() - t_start, 3)
    if args.json:
        _print_json(result)
    else:
        if final_val is not None:
            print(f"\nheld-out perplexity ({len(val_ids):,} tokens):")
            print(f"  RNN (H={hp['hidden']})        {final_val:10.3f}")
            for g in result["ngram"]:
                if "error" in g:
                    print(f"  Kneser-Ney {g['order']}-gram   (not fitted: {g['error']})")
                else:
                    print(f"  Kneser-Ney {g['order']}-gram   {g['val_ppl']:10.3f}")
        print(f"\nsample (temperature 0.8, seed {hp['seed']}):\n{sample['prefix']}{sample['text']}\n")
        if result["plot"]:
            print(f"curves: {plot}")
        print(f"checkpoint: {out}   (fastseq generate {out} -n 200 --temperature 0.8)")
        print(f"time: {train_s:.1f} s training, {result['total_seconds']:.1f} s in all")
    return 0


def _ngram_baselines(args, run):
    """Kneser-Ney models of orders --ngram-orders fitted on the training ids, scored on the held-out ids.

    Both models see the same token ids; the n-gram model reads them as one
    long sentence (one <s>, one </s>), so its perplexity counts one token
    more than the RNN's, which predicts ids[1:] from ids[:-1].
    """
    try:
        from . import ngram
    except ImportError:
        return [{"order": o, "error": "fastseq.ngram is not available"} for o in args.ngram_orders]
    tok = run.vocab.idx_to_token
    train = [[tok[i] for i in run.train_ids.tolist()]]
    val = [[tok[i] for i in run.val_ids.tolist()]]
    out = []
    for order in args.ngram_orders:
        rec = {"order": order}
        try:
            t0 = time.perf_counter()
            # Character unigrams are too few for lmplz's discount estimate; use its fallback there.
            model = ngram.KneserNeyLM(order, discount_fallback=True)
            model.fit(train)
            p = model.perplexity(val)
            rec.update(val_ppl=float(p.including_oov), seconds=round(time.perf_counter() - t0, 3))
        except ValueError as e:
            rec["error"] = str(e).splitlines()[0]
        out.append(rec)
    return out


def _encode_text(vocab, token, text):
    if token == "char":
        return vocab.encode(text)
    from .text import tokenize
    return vocab.encode([t for line in tokenize(text.splitlines(), "word") for t in line])


DEFAULT_PREFIX = {"pydoc": "A class "}   # the built-in corpus is about Python, not about "The ..."


def _prefix_tokens(token, prefix):
    if token == "char":
        return list(prefix)
    from .text import tokenize
    return [t for line in tokenize(prefix.splitlines(), "word") for t in line]


def _check_prefix(vocab, token, prefix):
    """A prefix the user gave: every token must be in the vocabulary (else it would silently read <unk>)."""
    toks = _prefix_tokens(token, prefix)
    if not toks:
        raise UsageError(f"--prefix {prefix!r}: has no tokens")
    unknown = sorted({t for t in toks if t not in vocab.token_to_idx})
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise UsageError(f"--prefix {prefix!r}: {shown} not in the model's vocabulary of {len(vocab)} "
                         f"{token}s (they would all be read as <unk>)")


def _default_prefix(vocab, token, corpus):
    """'A class ' for pydoc, else 'The ' (the, for words); lower case or the first token where those are unknown."""
    prefix = DEFAULT_PREFIX.get(corpus) or ("The " if token == "char" else "the")
    if token == "word":
        prefix = prefix.strip()
    for p in (prefix, prefix.lower()):
        if all(t in vocab.token_to_idx for t in _prefix_tokens(token, p)):
            return p
    return vocab.idx_to_token[1] if len(vocab) > 1 else vocab.idx_to_token[0]


def _sample(model, vocab, token, prefix, n, seed=0, temperature=0.8, top_k=0, corpus=None):
    if prefix is None:
        prefix = _default_prefix(vocab, token, corpus)
    else:
        _check_prefix(vocab, token, prefix)
    ids = _encode_text(vocab, token, prefix)
    uniforms = np.random.default_rng(seed).random(n)
    out = model.generate(np.asarray(ids, dtype=np.int32), n, temperature=temperature, top_k=top_k,
                         uniforms=uniforms if temperature > 0 else None)
    toks = vocab.to_tokens(np.asarray(out))
    text = "".join(toks) if token == "char" else " " + " ".join(toks)
    return {"prefix": prefix, "text": text, "temperature": temperature, "top_k": top_k, "seed": seed,
            "ids": [int(i) for i in out]}


def _plot_training(history, ngram_rows, path, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    log = history["log"]
    if log:
        ax.plot([r["step"] for r in log], [r["train_ppl"] for r in log], color="tab:blue", alpha=0.6,
                label="training (running, per interval)")
    ep = history["epochs"]
    ax.plot([r["step"] for r in ep], [r["train_ppl"] for r in ep], "o-", color="tab:blue",
            label="training (epoch mean)")
    vals = [(r["step"], r["val_ppl"]) for r in ep if r["val_ppl"] is not None]
    if vals:
        ax.plot(*zip(*vals), "s-", color="tab:red", label="held-out (end of epoch)")
    styles = ["--", ":", "-."]
    for i, g in enumerate(r for r in ngram_rows if "val_ppl" in r):
        ax.axhline(g["val_ppl"], color="gray", ls=styles[i % 3], label=f"held-out, Kneser-Ney {g['order']}-gram")
    _plain_log_y(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- generate / eval
def _load_ckpt(path, backend=None):
    from . import checkpoint

    _import("safetensors.numpy", "reading checkpoints")
    return checkpoint.load(path, backend=backend)


def cmd_generate(args):
    ck = _load_ckpt(args.checkpoint, args.backend)
    token = ck.hparams.get("token", "char")
    s = _sample(ck.model, ck.vocab, token, args.prefix, args.n, seed=args.seed,
                temperature=args.temperature, top_k=args.top_k, corpus=ck.hparams.get("corpus"))
    if args.json:
        _print_json(dict(s, checkpoint=args.checkpoint))
    else:
        print(s["prefix"] + s["text"])
    return 0


def cmd_eval(args):
    ck = _load_ckpt(args.checkpoint, args.backend)
    hp = ck.hparams
    token, cleaning = hp.get("token", "char"), _cleaning(hp.get("cleaning"))
    tokens, _ = _tokens_of(args.text, token, cleaning)
    ids = ck.vocab.encode(tokens)
    if len(ids) < 2:
        raise UsageError(f"{args.text}: needs at least 2 tokens, has {len(ids)}")
    ppl, n = _perplexity(ck.model, ids)
    oov = int(np.sum(ids[1:] == ck.vocab.unk))
    result = {"checkpoint": args.checkpoint, "text": args.text, "token": token, "perplexity": ppl,
              "tokens": n, "oov": oov}
    if args.json:
        _print_json(result)
    else:
        print(f"{args.text}: {n:,} {token}s predicted ({oov:,} are <unk>), perplexity {ppl:.4f}")
    return 0


# --------------------------------------------------------------------------- compare-bptt
def cmd_compare_bptt(args):
    plot = _check_png(args.plot)
    if plot:
        _pyplot()
    specs = [s for s in args.strategies.split(",") if s.strip()]
    if not specs:
        raise UsageError("--strategies: expected a comma-separated list such as full,block:5,random:0.2")
    for s in specs:
        _parse_bptt(s)
    base = dict(TRAIN_DEFAULTS, corpus=args.corpus, token=args.token, cleaning=args.cleaning,
                max_tokens=args.max_tokens, hidden=args.hidden, steps=args.steps, batch=args.batch,
                lr=args.lr, clip=args.clip, epochs=args.epochs, seed=args.seed, optimizer="sgd",
                dtype="float32", val_fraction=0.1)
    vocab, train_ids, val_ids = _prepare_data(base)
    _info(args, f"corpus {args.corpus} ({args.token}s): {len(train_ids):,} training tokens, "
                f"{len(val_ids):,} held out; H={args.hidden}, batch {args.batch} x {args.steps} steps, "
                f"{args.epochs} epochs, lr {args.lr:g}, clip {args.clip:g}, same seeds for every strategy")
    rows = []
    for spec in specs:
        hp = dict(base, bptt=spec.strip())
        run = Run(hp, args.backend, vocab, train_ids, val_ids)
        curve = [{"step": 0, "val_ppl": _perplexity(run.model, val_ids)[0]}]
        t_train = 0.0
        try:
            while run.epoch < hp["epochs"]:
                bar = _progress_bar(args, len(run.loader), 0, f"{spec:>12} epoch {run.epoch + 1}/{hp['epochs']}")
                t0 = time.perf_counter()
                try:
                    rec = run.run_epoch(progress=bar)
                finally:
                    if bar is not None:
                        bar.close()
                t_train += time.perf_counter() - t0
                curve.append({"step": rec["step"], "train_ppl": rec["train_ppl"], "val_ppl": rec["val_ppl"],
                              "train_seconds": t_train})
            row = {"bptt": spec, "final_val_ppl": curve[-1]["val_ppl"], "train_seconds": round(t_train, 3),
                   "curve": curve}
        except TrainingError as e:
            row = {"bptt": spec, "error": str(e), "curve": curve}
        rows.append(row)
        if "error" in row:
            _info(args, f"{spec:>14}: {row['error']}")
        else:
            _info(args, f"{spec:>14}: held-out perplexity {row['final_val_ppl']:.3f}, "
                        f"training {row['train_seconds']:.1f} s")
    if plot:
        _plot_bptt(rows, plot, f"BPTT strategies on {args.corpus} ({args.token}s), H={args.hidden}, "
                               f"T={args.steps}")
    if args.json:
        _print_json({"corpus": args.corpus, "strategies": rows, "plot": plot})
    elif plot:
        print(f"plot: {plot}")
    return 0


def _plot_bptt(rows, path, title):
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.6, 4.2), dpi=120, gridspec_kw={"width_ratios": [2, 1]})
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("x", "--")]
    for i, r in enumerate(rows):
        c = r["curve"]
        last = c[-1]["val_ppl"]
        label = f"{r['bptt']} (final {last:.2f})" if last is not None and "error" not in r else f"{r['bptt']} (diverged)"
        m, ls = styles[i % len(styles)]
        ax.plot([p["step"] for p in c], [p["val_ppl"] for p in c], marker=m, ls=ls, ms=5, alpha=0.85, label=label)
    _plain_log_y(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out perplexity (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ok = [r for r in rows if "train_seconds" in r]
    bx.barh([r["bptt"] for r in ok], [r["train_seconds"] for r in ok], color="tab:gray")
    for i, r in enumerate(ok):
        bx.text(r["train_seconds"], i, f" {r['train_seconds']:.1f} s", va="center", fontsize=8)
    bx.set_xlabel("training wall time (s)")
    bx.invert_yaxis()
    bx.set_xlim(0, max([r["train_seconds"] for r in ok] + [1e-3]) * 1.35)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- grad-norms
def _hidden_grad_norms(model, X, Y):
    """||dl_{T-1}/dH_t|| of the last loss term alone, per sequence, by distance d = T-1-t -> (B, T).

    fastseq.train.state_grad_norms(term=-1) gives the gradient of the window's
    mean loss (over T tokens for one sequence) restricted to its last term;
    times T it is the gradient of that one token's loss.
    """
    from .training import state_grad_norms

    T = X.shape[1]
    return np.stack([state_grad_norms(model, X[b:b + 1], Y[b:b + 1], term=-1)[::-1] * T
                     for b in range(X.shape[0])])


def cmd_grad_norms(args):
    ck = _load_ckpt(args.checkpoint, "numpy")
    plot = _check_png(args.plot)
    if plot:
        _pyplot()
    hp = ck.hparams
    token, cleaning = hp.get("token", "char"), _cleaning(hp.get("cleaning"))
    text = args.text or hp.get("corpus")
    if text is None:
        raise UsageError("--text: the checkpoint does not name its corpus; pass --text FILE")
    tokens, _ = _tokens_of(text, token, cleaning)
    ids = ck.vocab.encode(tokens)
    T, B = args.window, args.sequences
    if len(ids) < T + 2:
        raise UsageError(f"{text}: {len(ids)} tokens are too few for --window {T}")
    if args.text is None:   # the held-out part of the training corpus
        ids = ids[int(len(ids) * (1 - hp.get("val_fraction", 0.1))):] if len(ids) * hp.get("val_fraction", 0.1) > T + 2 else ids
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(ids) - T - 1, size=B)
    X = np.stack([ids[s:s + T] for s in starts]).astype(np.int32)
    Y = np.stack([ids[s + 1:s + T + 1] for s in starts]).astype(np.int32)
    norms = _hidden_grad_norms(ck.model, X, Y)
    W_hh = np.asarray(ck.model.params["W_hh"], dtype=np.float64)
    from .training import spectral_radius
    rho = spectral_radius(ck.model)
    sigma = float(np.linalg.norm(W_hh, 2))
    med = np.median(norms, axis=0)
    # The per-step factor of a geometric fit through the median's first and last points.
    decay = float((med[-1] / med[0]) ** (1.0 / (T - 1))) if T > 1 and med[0] > 0 and med[-1] > 0 else float("nan")
    result = {"checkpoint": args.checkpoint, "text": text, "window": T, "sequences": B,
              "spectral_radius_W_hh": rho, "largest_singular_value_W_hh": sigma,
              "median_norm_by_distance": [float(v) for v in med], "decay_per_step": decay, "plot": plot}
    if plot:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        d = np.arange(T)
        lo, hi = np.percentile(norms, [10, 90], axis=0)
        ax.fill_between(d, lo, hi, alpha=0.25, color="tab:blue", label="10-90 % of sequences")
        ax.plot(d, med, color="tab:blue", label="median ||dl/dh_t||")
        ax.plot(d, med[0] * rho ** d, "--", color="tab:red",
                label=f"rho(W_hh)^d = {rho:.3f}^d (the linear model, phi' = 1)")
        ax.plot(d, med[0] * decay ** d, ":", color="black",
                label=f"observed geometric decay {decay:.3f} per step")
        ax.set_yscale("log")
        pos = lo[lo > 0]
        ax.set_ylim(max(pos.min() if pos.size else 1e-300, 1e-300) / 10, hi.max() * 100)
        ax.set_xlabel("distance d = (T-1) - t from the loss term")
        ax.set_ylabel("gradient norm (log scale)")
        ax.set_title(f"dl_(T-1)/dh_t on a trained model (H={ck.model.num_hiddens}, "
                     f"{ck.model.nonlinearity}, step {ck.step})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot)
        plt.close(fig)
    if args.json:
        _print_json(result)
        return 0
    print(f"spectral radius of W_hh {rho:.4f} (largest singular value {sigma:.4f}); "
          f"observed decay of the median norm {decay:.4f} per step")
    print(f"median ||dl/dh_t|| over {B} windows of {T} steps, by distance d from the loss:")
    for dd in sorted(set([0, 1, 2, 5, 10, 20, 50, 100, T - 1])):
        if dd < T:
            print(f"  d = {dd:4d}   {med[dd]:.3e}")
    if plot:
        print(f"plot: {plot}")
    return 0


# --------------------------------------------------------------------------- parser
def _common(p, json_flag=True, threads=False):
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    if threads:
        p.add_argument("--threads", type=_int_at_least(1), default=1,
                       help="cores the C++ kernels may use (fastseq.set_num_threads; default: 1, which "
                            "keeps results bit-identical on resume; a second core pays off only when it is idle)")


def _sub(sub, name, help, epilog):
    return sub.add_parser(name, help=help, description=help, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _parser():
    p = _Parser(prog="fastseq", description="Fast classic sequence models on the CPU: RNN and n-gram "
                "language models. Run `fastseq COMMAND --help` for a command's options and examples.",
                epilog=EXAMPLES_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fastseq {_pkg_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    corpora = ", ".join(datasets.names())

    s = _sub(sub, "stats", "corpus statistics: lines, tokens, vocabulary, most frequent tokens, Zipf's law",
             EXAMPLES_STATS)
    s.add_argument("corpus", nargs="?", default="pydoc",
                   help=f"a corpus name ({corpora}) or a text file (default: pydoc, offline)")
    s.add_argument("--token", choices=("word", "char"), default="word", help="token unit (default: word)")
    s.add_argument("--cleaning", choices=("none", "d2l", "unicode"), default="none",
                   help="line cleaning: none (raw), d2l (the book's rule), unicode (default: none)")
    s.add_argument("--top", type=int, default=10, help="how many of the most frequent tokens to list (default: 10)")
    s.add_argument("--plot", metavar="FILE.png", help="draw the log-log frequency curves of uni/bi/trigrams")
    _common(s)
    s.set_defaults(func=cmd_stats)

    ng = _sub(sub, "ngram", "n-gram language models: fit (Laplace or Kneser-Ney) and evaluate",
              "examples:\n  fastseq ngram fit timemachine --cleaning d2l --order 3 --arpa tm3.arpa\n"
              "  fastseq ngram eval tm3.arpa heldout.txt\n")
    ngs = ng.add_subparsers(dest="ngram_command", metavar="SUBCOMMAND", parser_class=_Parser)
    f = _sub(ngs, "fit", "fit an n-gram model on a corpus (one sentence per line) and write it as ARPA",
             EXAMPLES_NGRAM_FIT)
    f.add_argument("corpus", help=f"a corpus name ({corpora}) or a text file")
    f.add_argument("--order", type=_int_at_least(1), default=3, help="n-gram order (default: 3)")
    f.add_argument("--smoothing", choices=("kn", "laplace"), default="kn",
                   help="kn: interpolated modified Kneser-Ney; laplace: the seed's additive smoothing (default: kn)")
    f.add_argument("--eps", type=_finite(0), default=1.0, help="Laplace's eps (default: 1)")
    f.add_argument("--discount-fallback", action="store_true",
                   help="Kneser-Ney: use discounts 0.5, 1, 1.5 where the estimate is out of range (as lmplz)")
    f.add_argument("--token", choices=("word", "char"), default="word", help="token unit (default: word)")
    f.add_argument("--cleaning", choices=("none", "d2l", "unicode"), default="none", help="line cleaning")
    f.add_argument("--arpa", metavar="OUT.arpa", help="write the model in ARPA format")
    _common(f)
    f.set_defaults(func=cmd_ngram_fit)
    e = _sub(ngs, "eval", "perplexity of an ARPA model on a text (one sentence per line), with and without OOVs",
             EXAMPLES_NGRAM_EVAL)
    e.add_argument("model", help="an ARPA file (from fastseq ngram fit --arpa, or KenLM's lmplz)")
    e.add_argument("text", help=f"a text file or corpus name ({corpora})")
    e.add_argument("--token", choices=("word", "char"), default="word", help="token unit (default: word)")
    e.add_argument("--cleaning", choices=("none", "d2l", "unicode"), default="none", help="line cleaning")
    _common(e)
    e.set_defaults(func=cmd_ngram_eval)

    t = _sub(sub, "train", "train an RNN language model, with progress, held-out perplexity, an n-gram "
             "baseline, a sample and a plot", EXAMPLES_TRAIN)
    d = TRAIN_DEFAULTS
    t.add_argument("--corpus", help=f"a corpus name ({corpora}) or a text file (default: {d['corpus']}, offline)")
    t.add_argument("--token", choices=("char", "word"), help=f"token unit (default: {d['token']})")
    t.add_argument("--cleaning", choices=("none", "d2l", "unicode"), help="line cleaning (default: none)")
    t.add_argument("--max-tokens", type=_int_at_least(0),
                   help=f"use only the first N tokens, 0 for all (default: {d['max_tokens']:,})")
    t.add_argument("--hidden", type=_int_at_least(1), help=f"hidden units H (default: {d['hidden']})")
    t.add_argument("--steps", type=_int_at_least(1), help=f"time steps T per batch (default: {d['steps']})")
    t.add_argument("--batch", type=_int_at_least(1), help=f"batch size B (default: {d['batch']})")
    t.add_argument("--optimizer", choices=("sgd", "adam"), help=f"optimizer (default: {d['optimizer']})")
    t.add_argument("--lr", type=_finite(0), help="learning rate (default: 1 for sgd, 0.001 for adam)")
    t.add_argument("--clip", type=_finite(0, lo_open=False),
                   help=f"gradient clipping threshold theta, 0 for none (default: {d['clip']:g})")
    t.add_argument("--epochs", type=_int_at_least(1), help=f"epochs (default: {d['epochs']})")
    t.add_argument("--bptt", help="full | block:K | sliding:K | random:P (default: full over the T steps)")
    t.add_argument("--sampling", choices=("sequential", "random"),
                   help="minibatches: sequential (state carries over) or random (default: sequential)")
    t.add_argument("--nonlinearity", choices=("tanh", "relu"), help="phi (default: tanh)")
    t.add_argument("--dtype", choices=("float32", "float64"), help="parameter dtype (default: float32)")
    t.add_argument("--seed", type=_int_at_least(0), help="seed of the initialisation, data order and BPTT draws (default: 0)")
    t.add_argument("--val-fraction", type=_finite(0, lo_open=False),
                   help=f"the last fraction of tokens held out (default: {d['val_fraction']})")
    t.add_argument("--backend", choices=("cpp", "numpy"), help="cpp (default when built) or numpy (the reference)")
    t.add_argument("--out", help="checkpoint folder (default: fastseq-train, or the --resume folder)")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    t.add_argument("--save-every", type=_int_at_least(0), default=0,
                   help="checkpoint every N steps (default: 0 = every 30 s and at each epoch end)")
    t.add_argument("--stop-after", type=_int_at_least(1), metavar="STEPS",
                   help="stop (with a checkpoint) after this many steps in all, as an interruption would")
    t.add_argument("--ngram-orders", type=_orders, default=[3, 5],
                   help="Kneser-Ney orders for the held-out comparison (default: 3,5)")
    t.add_argument("--no-ngram", action="store_true", help="skip the n-gram comparison")
    t.add_argument("--prefix", help="prefix of the final sample (default: 'A class ' for pydoc, else 'The ')")
    t.add_argument("--sample-length", type=_int_at_least(0), default=200, help="tokens in the final sample (default: 200)")
    t.add_argument("--plot", metavar="FILE.png", help="perplexity curves (default: OUT/train.png)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(t, threads=True)
    t.set_defaults(func=cmd_train)

    g = _sub(sub, "generate", "generate text from a checkpoint (greedy, or sampled with a temperature)",
             EXAMPLES_GENERATE)
    g.add_argument("checkpoint", help="a checkpoint folder written by fastseq train")
    g.add_argument("--prefix", help="the text to warm up on (default: 'A class ' for pydoc, else 'The ')")
    g.add_argument("-n", type=_int_at_least(0), default=100, help="tokens to generate (default: 100)")
    g.add_argument("--temperature", type=_finite(0, lo_open=False), default=0.0,
                   help="0: greedy (the book's predict); > 0: sample (default: 0)")
    g.add_argument("--top-k", type=_int_at_least(0), default=0, help="sample from the k most likely only (default: 0, all)")
    g.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the sampling draws (default: 0)")
    g.add_argument("--backend", choices=("cpp", "numpy"))
    _common(g, threads=True)
    g.set_defaults(func=cmd_generate)

    v = _sub(sub, "eval", "perplexity of a checkpoint's model on a text", EXAMPLES_EVAL)
    v.add_argument("checkpoint", help="a checkpoint folder written by fastseq train")
    v.add_argument("text", help=f"a text file or corpus name ({corpora}); tokenized as the model was trained")
    v.add_argument("--backend", choices=("cpp", "numpy"))
    _common(v, threads=True)
    v.set_defaults(func=cmd_eval)

    c = _sub(sub, "compare-bptt", "train the same model with full, truncated and randomized BPTT and "
             "compare held-out perplexity and wall time", EXAMPLES_BPTT)
    c.add_argument("corpus", nargs="?", default="pydoc", help=f"a corpus name ({corpora}) or a text file")
    c.add_argument("--token", choices=("char", "word"), default="char")
    c.add_argument("--cleaning", choices=("none", "d2l", "unicode"), default="none")
    c.add_argument("--strategies", default="full,block:5,sliding:5,random:0.2",
                   help="comma-separated strategies (default: full,block:5,sliding:5,random:0.2)")
    c.add_argument("--max-tokens", type=_int_at_least(0), default=0, help="first N tokens, 0 for all (default: 0)")
    c.add_argument("--hidden", type=_int_at_least(1), default=128, help="hidden units H (default: 128)")
    c.add_argument("--steps", type=_int_at_least(1), default=35, help="time steps T (default: 35)")
    c.add_argument("--batch", type=_int_at_least(1), default=32, help="batch size B (default: 32)")
    c.add_argument("--lr", type=_finite(0), default=1.0, help="SGD learning rate, the book's (default: 1)")
    c.add_argument("--clip", type=_finite(0, lo_open=False), default=1.0, help="clipping theta (default: 1)")
    c.add_argument("--epochs", type=_int_at_least(1), default=8, help="epochs (default: 8)")
    c.add_argument("--seed", type=_int_at_least(0), default=0, help="one seed for every strategy (default: 0)")
    c.add_argument("--backend", choices=("cpp", "numpy"))
    c.add_argument("--plot", metavar="FILE.png", default="bptt.png", help="output PNG (default: bptt.png)")
    c.add_argument("--no-progress", action="store_true")
    _common(c, threads=True)
    c.set_defaults(func=cmd_compare_bptt)

    r = _sub(sub, "grad-norms", "vanishing/exploding gradients on a trained model: ||dl/dh_t|| against the "
             "distance from the loss, and the spectral radius of W_hh", EXAMPLES_GRADNORMS)
    r.add_argument("checkpoint", help="a checkpoint folder written by fastseq train")
    r.add_argument("--text", help="text to take windows from (default: the held-out part of the training corpus)")
    r.add_argument("--window", type=_int_at_least(1), default=100, help="window length T (default: 100)")
    r.add_argument("--sequences", type=_int_at_least(1), default=64,
                   help="windows averaged (default: 64)")
    r.add_argument("--seed", type=_int_at_least(0), default=0)
    r.add_argument("--plot", metavar="FILE.png", help="draw the norms against the distance")
    _common(r)
    r.set_defaults(func=cmd_grad_norms)
    return p


def _orders(s):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected orders like 3,5, got {s!r}") from None
    if not v or any(o < 1 for o in v):
        raise argparse.ArgumentTypeError(f"expected orders >= 1 like 3,5, got {s!r}")
    return v


def _pkg_version():
    try:
        from importlib.metadata import version
        return version("fastseq")
    except Exception:  # pragma: no cover
        return "unknown"


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "ngram" and args.ngram_command is None:
        print("fastseq ngram: error: expected a subcommand: fit or eval", file=sys.stderr)
        return 2
    name = args.command if args.command != "ngram" else f"ngram {args.ngram_command}"
    if getattr(args, "threads", None):
        from . import set_num_threads
        set_num_threads(args.threads)
    try:
        return args.func(args)
    except TrainingError as e:
        print(f"fastseq {name}: error: {e}", file=sys.stderr)
        return 1
    except (UsageError, datasets.DatasetError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"fastseq {name}: error: {msg}", file=sys.stderr)
        return 2
    except MemoryError as e:   # e.g. --hidden 1000000: W_hh alone would take terabytes
        detail = str(e).splitlines()[0] if str(e) else "an allocation failed"
        print(f"fastseq {name}: error: out of memory ({detail}); use smaller sizes "
              "(--hidden, --batch, --steps, -n)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastseq {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fastseq generate ... | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush does not complain
        return 0
    except OSError as e:       # writing a checkpoint or a plot: disk full, no permission, ...
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"fastseq {name}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
