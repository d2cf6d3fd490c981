"""The command's training run on today's library: data, model, optimizer, BPTT strategy and resume state.

Phase-1 glue: the training engine (fastseq.train.Trainer) replaces this module.
"""
import math
import os
import time

import numpy as np

from ..train import DivergenceError, train_step
from .args import UsageError, cleaning as _cleaning
from .corpus import tokens_of

TRAIN_DEFAULTS = dict(
    corpus="pydoc", token="char", cleaning="none", max_tokens=0, hidden=128, steps=35,
    batch=32, optimizer="adam", lr=None, clip=1.0, epochs=15, bptt="full", sampling="sequential",
    nonlinearity="tanh", dtype="float32", seed=0, val_fraction=0.1,
)
# Settings that define the run; they cannot change on --resume.
RUN_KEYS = ("corpus", "token", "cleaning", "max_tokens", "hidden", "steps", "batch", "optimizer", "lr",
            "clip", "bptt", "sampling", "nonlinearity", "dtype", "seed", "val_fraction")
DEFAULT_LR = {"sgd": 1.0, "adam": 0.001}


def parse_bptt(spec):
    """'full' | 'block:K' | 'sliding:K' | 'random:P' -> a fastseq.bptt strategy factory."""
    from .. import bptt

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


def make_optimizer(name, lr):
    from .. import optim

    if name == "sgd":
        return optim.SGD(lr=lr)
    return optim.Adam(lr=lr)


def prepare_data(hp):
    """Vocabulary from the training part only; (vocab, train ids, held-out ids)."""
    from ..text import Vocab

    cleaning = _cleaning(hp["cleaning"])
    tokens, _ = tokens_of(hp["corpus"], hp["token"], cleaning)
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


def perplexity(model, ids, streams=16, chunk=256):
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


class Run:
    """One training run: model, optimizer, data, BPTT strategy and the position in the data.

    Everything that decides what happens next is in ``resume_state()``, so a
    run continued from a checkpoint takes exactly the steps the uninterrupted
    run would have taken.
    """

    def __init__(self, hp, backend, vocab, train_ids, val_ids, model=None):
        from ..data import SeqDataLoader

        self.hp, self.vocab = hp, vocab
        self.train_ids, self.val_ids = train_ids, val_ids
        if model is None:
            from ..checkpoint import build_model
            config = dict(vocab_size=len(vocab), num_hiddens=hp["hidden"], nonlinearity=hp["nonlinearity"],
                          dtype=hp["dtype"], seed=hp["seed"])
            model = build_model({"class": "RNNLM", "config": config}, backend)
        self.model = model
        self.optimizer = make_optimizer(hp["optimizer"], hp["lr"])
        self.loader = SeqDataLoader(train_ids, hp["batch"], hp["steps"], hp["sampling"], seed=hp["seed"] + 1)
        self.strategy = parse_bptt(hp["bptt"])(hp["seed"] + 2)
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
        val_ppl, _ = perplexity(model, self.val_ids) if len(self.val_ids) >= 2 else (float("nan"), 0)
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


SMOKE_ENV = "FASTSEQ_SMOKE"
SMOKE_LIMITS = {"max_tokens": 20_000, "hidden": 32}


def smoke(hp):
    """With FASTSEQ_SMOKE=1 (documentation and CI smoke runs) cap the corpus and the model size."""
    if os.environ.get(SMOKE_ENV, "") in ("", "0"):
        return hp
    hp = dict(hp)
    hp["max_tokens"] = min(hp["max_tokens"] or SMOKE_LIMITS["max_tokens"], SMOKE_LIMITS["max_tokens"])
    hp["hidden"] = min(hp["hidden"], SMOKE_LIMITS["hidden"])
    return hp


class TrainingError(Exception):
    """The run cannot go on (NaN/inf): one line, exit status 1."""


def hparams_from_args(args):
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
    parse_bptt(hp["bptt"])
    return smoke(hp)
