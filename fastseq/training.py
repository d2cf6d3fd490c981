"""The training engine, the evaluator and the sampler for RNN language models.

One place for each: ``Trainer`` (and its one-call wrapper ``train``) is the only
training loop, ``evaluate``/``evaluate_nll`` the only held-out perplexity,
``sample``/``predict`` the only place where sampling draws its uniforms. The
``fastseq`` command uses these same functions, so the API and the command agree
to the last digit.

Works with any model of the RNNLM API (``loss_and_grad``, ``__call__``,
``generate``, ``params``, ``begin_state``, ``state_dict``, ``dtype``,
``vocab_size``). Perplexity is that of *Dive into Deep Learning*, chapter 8,
"Language Models": exp of the mean cross-entropy per predicted token; one that
overflows is ``inf``, never an exception. Gradient clipping is the book's, from
"Recurrent Neural Network Implementation from Scratch". Legend: B batch,
T steps, H hidden, V vocabulary.
"""
import copy
import math
import signal
import sys
import threading
import time

import numpy as np

from ._checks import check_int, check_real
from .bptt import as_strategy
from .data import _rng
from .errors import ArgumentError, FastseqError
from .optim import SGD

__all__ = ["DivergenceError", "divergence_loss", "TrainingInterrupted", "Callback", "Trainer", "train", "train_step",
           "evaluate", "evaluate_nll", "perplexity", "sample", "predict", "state_grad_norms",
           "spectral_radius", "gradient_diagnostics", "EPOCH_KEYS", "LOG_KEYS", "BUDGET_SETTINGS",
           "budget_settings"]

# The history schema: one record per epoch (``Trainer.history``) and one per interval (``Trainer.log``).
EPOCH_KEYS = ("epoch", "step", "train_ppl", "val_ppl", "lr", "tokens_per_s", "grad_norm_mean", "grad_norm_max",
              "seconds", "partial")
LOG_KEYS = ("epoch", "step", "train_ppl", "lr", "grad_norm_mean", "tokens_per_s")

# A mean cross-entropy above this has a perplexity beyond the largest float: the run has diverged.
MAX_LOSS = math.log(sys.float_info.max)
# A run has also diverged when its loss is this many times a uniform guess's, ln V: training starts
# near ln V and a healthy run never climbs to ten times it (at V = 66 that is a perplexity of 1.6e18,
# V^10), while exploding gradients (no clipping, a large rate: Dive into Deep Learning, chapter 8,
# "Recurrent Neural Network Implementation from Scratch", gradient clipping) end far beyond it.
DIVERGED_TIMES_UNIFORM = 10


# The settings a time budget affords, for `fastseq train --minutes M` with the option not given (and
# for the main job's 45 s): rows of (from this many minutes on, settings); the last row whose minutes
# the budget reaches applies. A longer budget trains more tokens, so it affords a larger model: a small
# model stops improving (its capacity) long before a large one, and a large one in a short budget is
# still far from trained (bench/RESULTS.md, issue 11). Quiet 2-core AVX2 machine, batches of 32 x 64,
# two threads: an LSTM step takes 8.6 ms at H = 128 and 126 ms at H = 512 (it grows as H^2), so ten
# minutes are about 4,500 steps (9 epochs of Tiny Shakespeare) at H = 512.
#   < 3 min: the main job's model (H = 128, T = 35), measured; its rate stays constant: on the main job
#     (pydoc, 45 s) the cosine decay gave held-out 5.00 against 4.30 for the constant rate (both runs
#     side by side), and holding the rate for 80% before decaying 4.78 against 4.65: a run this short is
#     nowhere near the noise that a smaller rate averages out. The decay's cost shrinks as the run gets
#     longer: 4 epochs of Tiny Shakespeare at H = 128 (1,960 steps of 32 x 64) ended at 5.168 with it
#     and 5.135 without (side by side, load 6-8).
#   3-8 min: H = 256, T = 64 with the decay: between the two measured rows (not measured itself).
#   8-30 min: H = 512, T = 64 with the decay and dropout on the non-recurrent connections (Zaremba,
#     Sutskever and Vinyals, "Recurrent Neural Network Regularization", 2014): without dropout this
#     model overfits Tiny Shakespeare within the 10 minutes' 9 epochs (4,410 steps by step count, 1
#     thread, load 6-8: held-out 4.577 after epoch 7, then 4.586 and 4.611 at the end while the training
#     perplexity fell from 3.15 to 2.97), above the Kneser-Ney 7-gram's 4.557. The 10-minute row of
#     bench/quality_cells.py (bench/RESULTS.md) measures it.
#     The dropout is not on the input rows W_xh[ids] (input_dropout 0), which is also nn.LSTM's recipe
#     with one-hot inputs (bench/quality_cells.py): step for step it is better. Same settings, 4 epochs
#     (1,960 steps) by step count, 1 thread, load 4-6 (bench/RESULTS.md, fifth session): held-out
#     4.630 and 4.709 (two seeds) without input dropout against 4.864 with it; nn.LSTM by the same
#     recipe 4.719 (level with fastseq: the two initialisations differ by as much). And without
#     the input rows' mask a step draws a fifth of the uniforms (4 ms of CPU instead of 18).
#     Not yet enough at 10 minutes on a fast machine: on a quiet 2-core Zen 4 EPYC, 2 threads, the run
#     took 6,411 steps (13 epochs) and its held-out perplexity was lowest after epoch 7 (4.455), then
#     rose to 4.604 while the training perplexity fell to 2.88 (nn.LSTM, 8 epochs: 4.424): the
#     regularisation has to grow with the epochs a budget affords (bench/RESULTS.md, fifth session).
#     So from 8 minutes the regularisation grows: dropout 0.35 on the output and AdamW's decoupled weight
#     decay 0.1 (Loshchilov and Hutter 2019; fastseq.optim.Adam(weight_decay=)). By step count, GRU of
#     512, 13 epochs (6,370 steps: what a fastseq GRU step affords in 10 minutes on a 2-core AVX2 Zen 3),
#     1 thread, two runs side by side (bench/RESULTS.md, sixth session): held-out 4.506 with dropout 0.2,
#     4.461 with 0.35, 4.425 with 0.35 and weight decay 0.03, 4.365 with 0.35 and weight decay 0.1
#     (4.345-4.352 over epochs 10-12, where the run without decay rose from 4.425 to 4.461); a GRU of
#     768 units for the 7 epochs it affords: 4.545.
#     And the cell is the GRU: in the 10-minute table with this recipe (quiet 2-core AVX2 Zen 3, 2
#     threads, one run) the fastseq GRU did 7,436 steps (15 epochs) and ended at 4.379, the fastseq LSTM
#     5,657 steps and 4.400, nn.LSTM 4,092 steps and 4.393 (the Kneser-Ney 7-gram: 4.557). Below 8
#     minutes the LSTM stays (the main job, side by side on 1 thread each: LSTM 3.679, GRU 3.774).
#   >= 30 min: two GRU layers of 512 with the same regularisation: not measured (a 2-layer step at H = 512
#     takes 250-370 ms).
BUDGET_SETTINGS = (
    (0.0, dict(hidden=128, layers=1, steps=35, dropout=0.0, lr_decay_to=1.0)),
    (3.0, dict(hidden=256, layers=1, steps=64, dropout=0.0, lr_decay_to=0.05)),
    (8.0, dict(cell="gru", hidden=512, layers=1, steps=64, dropout=0.35, input_dropout=0.0, weight_decay=0.1,
               lr_decay_to=0.05)),
    (30.0, dict(cell="gru", hidden=512, layers=2, steps=64, dropout=0.35, input_dropout=0.0, weight_decay=0.1,
                lr_decay_to=0.05)),
)


def budget_settings(minutes):
    """The model size, window, dropout and learning-rate decay for a budget of ``minutes``
    (BUDGET_SETTINGS: hidden, layers, steps, dropout, lr_decay_to, and input_dropout where the rows with
    dropout set it, without it the input rows take the dropout; cell and weight_decay where a row sets
    them); {} for None (no budget: the caller's own defaults)."""
    if minutes is None:
        return {}
    minutes = check_real("minutes", minutes, lo=0, lo_open=True)
    chosen = {}
    for start, settings in BUDGET_SETTINGS:
        if minutes >= start:
            chosen = settings
    return dict(chosen)


def divergence_loss(vocab_size):
    """The mean cross-entropy (nats per token) above which training has diverged:
    min(10 ln V, the log of the largest float)."""
    return min(MAX_LOSS, DIVERGED_TIMES_UNIFORM * math.log(max(int(vocab_size), 2)))

_ADVICE = ("lower the learning rate, clip the gradients (clip=1.0), or use truncated BPTT "
           "(bptt=Truncated(tau))")


class DivergenceError(FastseqError, FloatingPointError):
    """Training produced a NaN/inf loss, gradient norm or parameter; ``step`` names the step (1-based)."""

    def __init__(self, step, epoch, what, value):
        self.step, self.epoch, self.what, self.value = step, epoch, what, value
        super().__init__(f"training diverged at step {step} (epoch {epoch}): {what} is {value}; {_ADVICE}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``Trainer.fit``, raised at the step boundary after it: ``step`` steps are complete
    and ``trainer.state_dict()`` holds exactly them (save it, then exit 130 as the command does)."""

    def __init__(self, step):
        self.step = step
        super().__init__(f"training interrupted after step {step}; trainer.state_dict() holds that step")


def perplexity(mean_nll):
    """exp(mean cross-entropy); ``inf`` where it overflows."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def _check_clip(clip):
    """None or 0: no clipping (as the command's --clip 0); else a finite theta > 0."""
    if clip is None:
        return None
    clip = check_real("clip", clip, lo=0)
    return clip or None


def train_step(model, optimizer, X, Y, state, clip=None, bptt=None, step=1, epoch=1, rng=None):
    """One optimisation step: loss_and_grad, global-norm clipping (None or 0: only the norm), update.

    rng: None (no dropout) or the numpy Generator the model's dropout masks are drawn from.

    Returns (loss, gradient norm before clipping, new_state). Raises
    DivergenceError naming ``step`` and ``epoch`` when the loss is not finite, above MAX_LOSS (its
    perplexity overflows) or above ``divergence_loss(V)`` (ten times a uniform guess's ln V: see
    DIVERGED_TIMES_UNIFORM), or the gradient norm is not
    finite (in these cases nothing was updated), or a parameter is not finite
    after the (complete) update; overflow is reported this way, never as NumPy warnings.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _step(model, optimizer, X, Y, state, _check_clip(clip), bptt, step, epoch, rng)


def _step(model, optimizer, X, Y, state, clip, bptt, step, epoch, rng):
    # train_step without its errstate, which the engine enters once per epoch instead of per step.
    loss, grads, new_state = model.loss_and_grad(X, Y, state, bptt=bptt, rng=rng)
    V = getattr(model, "vocab_size", None)
    limit = MAX_LOSS if V is None else divergence_loss(V)
    if not loss <= limit:
        if not math.isfinite(loss):
            value = loss
        elif loss > MAX_LOSS:
            value = f"{loss:.6g} nats per token (its perplexity overflows)"
        else:
            value = (f"{loss:.6g} nats per token, over {DIVERGED_TIMES_UNIFORM} times a uniform guess's "
                     f"ln {V} = {math.log(V):.3f} (perplexity {math.exp(loss):.3g})")
        raise DivergenceError(step, epoch, "the loss", value)
    # Without clipping the ops' clip still measures the norm: no norm exceeds the largest float.
    norm = model.ops.clip_grad_norm(grads, clip or sys.float_info.max)
    if not math.isfinite(norm):
        raise DivergenceError(step, epoch, "the gradient norm", norm)
    optimizer.step(model.params, grads)
    # A NaN or inf anywhere makes the sum non-finite; a sum is the cheapest pass over the values, and
    # isfinite confirms the rare non-finite sum (large finite values can overflow it).
    for k, p in model.params.items():
        if not math.isfinite(p.sum()) and not np.isfinite(p).all():
            raise DivergenceError(step, epoch, f"parameter {k}", "nan/inf after the update")
    return loss, norm, new_state


class Callback:
    """Hooks of ``Trainer.fit``; override what you need. Returning False from a hook stops the run
    at that point (as ``trainer.stop()`` does); None or True continues.

    ``on_step(trainer, info)`` after every step: info = {epoch, step, batch, loss, grad_norm, lr,
    tokens_per_s}. ``on_epoch_end(trainer, record)`` after every epoch with its history record.
    """

    def on_step(self, trainer, info):
        return None

    def on_epoch_end(self, trainer, record):
        return None


class _StepFunction(Callback):
    """A plain callable f(info) used as on_step."""

    def __init__(self, f):
        self.f = f

    def on_step(self, trainer, info):
        return self.f(info)


def _zero_acc():
    return {"loss_sum": 0.0, "tokens": 0, "norm_sum": 0.0, "norm_max": 0.0, "batches": 0, "seconds": 0.0}


class _DeferSigint:
    """Within the block, SIGINT only sets a flag (when Python's default handler is the one
    installed, on the main thread); the engine checks it at step boundaries, so no update is
    ever half applied."""

    def __init__(self):
        self.fired, self._old = False, None

    def _handler(self, signum, frame):
        self.fired = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False


def _progress_bar(enabled, total, initial, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:       # the progress bar is optional: without tqdm, train quietly
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=True, mininterval=0.25,
                dynamic_ncols=True)


class Trainer:
    """The training engine: model + optimizer + loader + BPTT strategy + clip + schedule + callbacks.

    model: an RNNLM (any backend). loader: a fastseq.SeqDataLoader or any
    re-iterable of (X, Y) id arrays (B, T); with ``carries_state`` False
    (random sampling) the state is re-initialised for every batch, otherwise
    the final state of a batch enters the next one, detached; each epoch starts
    from zeros. optimizer: an object of fastseq.optim (default SGD(lr)).
    bptt: a fastseq.bptt strategy (None: Full()). clip: theta of global-norm
    clipping, None or 0 for none. schedule: e.g. optim.ReduceLROnPlateau(),
    stepped once per epoch with the held-out loss (the training loss without
    ``val_ids``). callbacks: Callback objects or plain callables f(info) (as
    on_step). val_ids: held-out ids, evaluated by ``evaluate`` at each epoch end.
    log_every: steps per record of ``log`` (default: about 20 per epoch).
    progress: a tqdm bar per epoch when tqdm is installed (quiet otherwise).
    rng: the source of the model's dropout masks, the trainer's own numpy Generator (an integer or
    None seeds a new one, None as 0; a Generator is used as is): every training step passes it to
    ``model.loss_and_grad``; evaluation never drops. Its state is part of ``state_dict()``.

    ``fit(epochs, minutes)`` trains until ``epochs`` epochs are complete or the
    wall-clock budget is spent, and can be called again to continue.
    ``state_dict()`` captures everything that decides what happens next, so a
    run interrupted after any step and resumed with ``load_state_dict`` ends
    with bit-identical weights.
    """

    def __init__(self, model, loader, optimizer=None, *, lr=None, bptt=None, clip=1.0, schedule=None,
                 callbacks=(), val_ids=None, eval_batch_size=32, eval_steps=35, log_every=None,
                 progress=False, rng=None):
        if optimizer is None:
            if lr is None:
                raise ArgumentError("lr: expected a learning rate (or pass optimizer=)")
            optimizer = SGD(lr)
        self.model, self.loader, self.optimizer = model, loader, optimizer
        self.bptt = as_strategy(bptt)
        self.clip = _check_clip(clip)
        if schedule is not None and not ((callable(getattr(schedule, "step", None))
                                          or callable(getattr(schedule, "at_progress", None)))
                                         and callable(getattr(schedule, "state_dict", None))):
            raise ArgumentError("schedule: expected an object with step() or at_progress(), and state_dict(), "
                                f"got {schedule!r}")
        self.schedule = schedule
        if callable(callbacks) or isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks = []
        for cb in callbacks:
            if isinstance(cb, Callback):
                self.callbacks.append(cb)
            elif callable(cb):
                self.callbacks.append(_StepFunction(cb))
            else:
                raise ArgumentError(f"callbacks: expected Callback objects or callables, got {cb!r}")
        if val_ids is not None:
            val_ids = _check_ids("val_ids", val_ids, model.vocab_size)
        self.val_ids = val_ids
        self.eval_batch_size = check_int("eval_batch_size", eval_batch_size, lo=1)
        self.eval_steps = check_int("eval_steps", eval_steps, lo=1)
        if log_every is None:
            n = len(loader) if hasattr(loader, "__len__") else 20
            log_every = max(1, n // 20)
        self.log_every = check_int("log_every", log_every, lo=1)
        self.progress = bool(progress)
        self.rng = _rng(0 if rng is None else rng)
        self.carries_state = getattr(loader, "carries_state", True) is not False
        self._resumable_loader = callable(getattr(loader, "state_dict", None))
        # The position: everything besides the components' own state that decides what comes next.
        self.epoch = 0            # epochs completed
        self.step = 0             # optimizer steps completed
        self.batch = 0            # batches of the running epoch completed
        self.hidden = None        # the state carried into the next batch (model.state_shape(B)), or None
        self.elapsed = 0.0        # wall seconds spent in fit() over the whole run (the time budget's progress)
        self._budget = None       # seconds of elapsed at which the running fit()'s budget ends, or None
        self._total_steps = None  # steps of all the running fit()'s epochs, or None
        self._clock = None        # (time.monotonic(), elapsed) when the running fit() started
        self._acc, self._interval = _zero_acc(), _zero_acc()
        self.history, self.log = [], []
        self.stop_reason = None   # why the last fit() returned: 'epochs', 'time budget', 'callback'
        self._stop = False
        self._live = None         # the iterator over the running epoch's batches

    # ------------------------------------------------------------------ control
    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        """Change the learning rate (e.g. to fine-tune a resumed run); the schedule continues from it
        (a progress schedule such as optim.CosineDecay takes it as the rate it scales: its base_lr)."""
        self.optimizer.lr = check_real("lr", value, lo=0, lo_open=True)
        if self._per_step_schedule():
            self.schedule.base_lr = self.optimizer.lr

    def _per_step_schedule(self):
        return self.schedule is not None and callable(getattr(self.schedule, "at_progress", None))

    def run_progress(self):
        """How far the running fit() is through the run, in [0, 1]: the larger of (wall time spent in
        fit over the whole run) / (its time budget) and (steps done) / (steps of all its epochs);
        0 when fit() has neither (or is not running). A progress schedule's input."""
        p = 0.0
        if self._clock is not None and self._budget is not None:
            t0, e0 = self._clock
            p = (e0 + time.monotonic() - t0) / self._budget if self._budget > 0 else 1.0
        if self._total_steps:
            p = max(p, self.step / self._total_steps)
        return min(1.0, p)

    def stop(self):
        """Ask fit() to return after the current step (from a callback)."""
        self._stop = True

    def fit(self, epochs=None, minutes=None):
        """Train until ``epochs`` epochs (in all, counting those done) are complete or ``minutes`` of
        wall-clock time have passed (checked after every step); returns ``history``.

        A run stopped mid-epoch (budget or callback) appends a record with partial=True for the
        epoch so far; a later fit() continues that epoch and replaces the record. Ctrl-C raises
        TrainingInterrupted at the next step boundary. Raises DivergenceError naming the step.
        """
        if epochs is None and minutes is None:
            raise ArgumentError("epochs, minutes: give at least one of them")
        if epochs is not None:
            epochs = check_int("epochs", epochs, lo=1)
        start = time.monotonic()
        deadline = None if minutes is None else \
            start + 60 * check_real("minutes", minutes, lo=0, lo_open=True)
        # The progress of a progress schedule: this fit's budget ends `minutes` from now, i.e. at
        # elapsed + 60 * minutes of the run's training time; its epochs end after epochs * len(loader) steps.
        self._clock = (start, self.elapsed)
        self._budget = None if minutes is None else self.elapsed + 60 * minutes
        self._total_steps = epochs * len(self.loader) if epochs is not None and hasattr(self.loader, "__len__") \
            else None
        self._stop, self.stop_reason = False, None
        try:
            with _DeferSigint() as sigint:
                while epochs is None or self.epoch < epochs:
                    if not self._run_epoch(deadline, sigint):
                        return self.history
                    if sigint.fired:
                        raise TrainingInterrupted(self.step)
                    if self._stop:
                        self.stop_reason = "callback"
                        return self.history
                    if deadline is not None and time.monotonic() >= deadline:
                        self.stop_reason = "time budget"
                        return self.history
            self.stop_reason = "epochs"
            return self.history
        finally:
            self._tick()
            self._clock = None

    def _tick(self):
        """Bring ``elapsed`` up to now (while fit runs)."""
        if self._clock is not None:
            t0, e0 = self._clock
            self.elapsed = e0 + time.monotonic() - t0

    # ------------------------------------------------------------------ the loop
    def _batches(self):
        """The rest of the running epoch: the live iterator when fit() continues in this object,
        else a new one (the loader's state_dict or, for a plain re-iterable, skipping gives the position)."""
        if self.batch and self._live is not None:
            return self._live
        self._live = it = iter(self.loader)
        if self.batch and not self._resumable_loader:
            for _ in range(self.batch):
                next(it, None)
        return it

    def _run_epoch(self, deadline, sigint):
        """Train to the end of the running epoch; False if stopped before its end."""
        model, acc, iv = self.model, self._acc, self._interval
        if self.batch == 0:
            self.hidden = None
        if self.history and self.history[-1]["partial"]:
            self.history.pop()            # the epoch continues: its partial record is replaced at its end
        bar = _progress_bar(self.progress, len(self.loader) if hasattr(self.loader, "__len__") else None,
                            self.batch, f"epoch {self.epoch + 1}")
        errstate = np.errstate(over="ignore", invalid="ignore", divide="ignore")
        per_step = self._per_step_schedule()
        try:
            errstate.__enter__()
            for X, Y in self._batches():
                if per_step:
                    self.schedule.at_progress(self.run_progress(), self.optimizer)
                t0 = time.perf_counter()
                B = len(X)
                state = self.hidden
                if state is None or not self.carries_state or state.shape[-2] != B:   # (..., B, H)
                    state = model.begin_state(B)
                step = self.step + 1
                loss, norm, state = _step(model, self.optimizer, X, Y, state, self.clip, self.bptt,
                                          step, self.epoch + 1, self.rng)
                dt = time.perf_counter() - t0
                self._tick()
                n = Y.size if isinstance(Y, np.ndarray) else int(np.size(Y))
                self.step, self.batch, self.hidden = step, self.batch + 1, state
                for a in (acc, iv):
                    a["loss_sum"] += loss * n
                    a["tokens"] += n
                    a["norm_sum"] += norm
                    a["norm_max"] = max(a["norm_max"], norm)
                    a["batches"] += 1
                    a["seconds"] += dt
                if iv["batches"] >= self.log_every:
                    self.log.append(self._record(iv, LOG_KEYS))
                    self._interval = iv = _zero_acc()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"ppl {perplexity(acc['loss_sum'] / acc['tokens']):.2f}, "
                                        f"{acc['tokens'] / max(acc['seconds'], 1e-12):,.0f} tok/s", refresh=False)
                if self.callbacks:
                    info = dict(epoch=self.epoch + 1, step=step, batch=self.batch, loss=loss, grad_norm=norm,
                                lr=self.optimizer.lr, tokens_per_s=acc["tokens"] / max(acc["seconds"], 1e-12))
                    for cb in self.callbacks:
                        if cb.on_step(self, info) is False:
                            self._stop = True
                if sigint.fired:
                    raise TrainingInterrupted(self.step)
                budget = deadline is not None and time.monotonic() >= deadline
                if self._stop or budget:
                    self.stop_reason = "callback" if self._stop else "time budget"
                    self.history.append(self._epoch_record(partial=True))
                    return False
        finally:
            errstate.__exit__(None, None, None)
            if bar is not None:
                bar.close()
        if acc["tokens"] == 0:
            raise ArgumentError("loader: an epoch produced no batches")
        record = self._epoch_record(partial=False)
        if self.schedule is not None and not per_step:
            val = record["val_ppl"]
            loss = math.log(val) if val is not None else acc["loss_sum"] / acc["tokens"]
            self.schedule.step(loss, self.optimizer)
        self.history.append(record)
        self.epoch, self.batch, self.hidden, self._acc, self._live = self.epoch + 1, 0, None, _zero_acc(), None
        for cb in self.callbacks:
            if cb.on_epoch_end(self, record) is False:
                self._stop = True
        return True

    def _record(self, a, keys):
        full = dict(epoch=self.epoch + 1, step=self.step, train_ppl=perplexity(a["loss_sum"] / a["tokens"]),
                    lr=self.optimizer.lr, tokens_per_s=a["tokens"] / max(a["seconds"], 1e-12),
                    grad_norm_mean=a["norm_sum"] / a["batches"], grad_norm_max=a["norm_max"],
                    seconds=a["seconds"])
        return {k: full[k] for k in keys if k in full}

    def _epoch_record(self, partial):
        rec = self._record(self._acc, EPOCH_KEYS)
        rec["val_ppl"] = None if self.val_ids is None else \
            evaluate(self.model, self.val_ids, self.eval_batch_size, self.eval_steps)
        rec["partial"] = partial
        return {k: rec[k] for k in EPOCH_KEYS}

    # ------------------------------------------------------------------ resume
    def state_dict(self):
        """The components' own state_dicts and the position; arrays are copies."""
        return {
            "format": "fastseq.Trainer", "version": 3,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict() if self._resumable_loader else None,
            "bptt": self.bptt.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "epoch": self.epoch, "step": self.step, "batch": self.batch,
            "hidden": None if self.hidden is None else np.array(self.hidden),
            "accumulators": dict(self._acc), "interval": dict(self._interval),
            "history": copy.deepcopy(self.history), "log": copy.deepcopy(self.log),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state):
        """Continue from ``state``; every key is checked (ArgumentError naming it) before anything changes
        except the components, which check their own state (errors prefixed with their key).

        Version 1 (before dropout) has no "rng": the trainer's generator is left as it is; versions 1 and 2
        (before progress schedules) have no "elapsed": the run's training time starts from 0."""
        if not isinstance(state, dict) or state.get("format") != "fastseq.Trainer":
            raise ArgumentError("state: not a fastseq.Trainer state (missing format='fastseq.Trainer')")
        version = state.get("version")
        if version not in (1, 2, 3):
            raise ArgumentError(f"state['version']: expected 1, 2 or 3, got {version!r}")
        for k in ("model", "optimizer", "loader", "bptt", "schedule", "epoch", "step", "batch", "hidden",
                  "accumulators", "interval", "history", "log") + (("rng",) if version >= 2 else ()) \
                + (("elapsed",) if version >= 3 else ()):
            if k not in state:
                raise ArgumentError(f"state[{k!r}]: missing")
        rng = None
        elapsed = check_real("state['elapsed']", state["elapsed"], lo=0) if version >= 3 else 0.0
        if version >= 2:
            rng = np.random.Generator(type(self.rng.bit_generator)())
            try:
                rng.bit_generator.state = state["rng"]
            except (ValueError, TypeError, KeyError) as e:
                raise ArgumentError(f"state['rng']: not a {type(self.rng.bit_generator).__name__} state ({e})") \
                    from None
        epoch = check_int("state['epoch']", state["epoch"], lo=0)
        step = check_int("state['step']", state["step"], lo=0)
        batch = check_int("state['batch']", state["batch"], lo=0, hi=step)
        hidden = state["hidden"]
        if hidden is not None:
            hidden = np.asarray(hidden)
            one = self.model.begin_state(1).shape                # the state's shape with B = 1
            if hidden.ndim != len(one) or hidden.shape[:-2] + hidden.shape[-1:] != one[:-2] + one[-1:] \
                    or not np.issubdtype(hidden.dtype, np.floating) or not np.all(np.isfinite(hidden)):
                want = "(" + ", ".join("B" if i == len(one) - 2 else str(d) for i, d in enumerate(one)) + ")"
                raise ArgumentError(f"state['hidden']: expected finite floats of shape {want}, "
                                    f"got {hidden.dtype} {hidden.shape}")
            if batch == 0:
                raise ArgumentError("state['hidden']: a carried state at the start of an epoch")
            hidden = np.array(hidden, dtype=self.model.dtype)
        accs = {}
        for key in ("accumulators", "interval"):
            a = state[key]
            if not isinstance(a, dict) or set(a) != set(_zero_acc()):
                raise ArgumentError(f"state[{key!r}]: expected the keys {sorted(_zero_acc())}")
            accs[key] = {k: (check_int(f"state[{key!r}][{k!r}]", a[k], lo=0) if k in ("tokens", "batches")
                             else check_real(f"state[{key!r}][{k!r}]", a[k], lo=0, finite=False))
                         for k in a}
        if accs["accumulators"]["batches"] != batch:
            raise ArgumentError(f"state['accumulators']: counts {accs['accumulators']['batches']} batches "
                                f"where state['batch'] is {batch}")
        for key in ("history", "log"):
            if not isinstance(state[key], list) or not all(isinstance(r, dict) for r in state[key]):
                raise ArgumentError(f"state[{key!r}]: expected a list of records")
        if len([r for r in state["history"] if not r.get("partial")]) != epoch:
            raise ArgumentError(f"state['history']: does not hold the {epoch} epochs of state['epoch']")
        if self._resumable_loader:
            ls = state["loader"]
            if not isinstance(ls, dict) or ls.get("batch", 0) != batch:
                raise ArgumentError(f"state['loader']: its batch {ls.get('batch') if isinstance(ls, dict) else ls!r}"
                                    f" is not state['batch'] = {batch}")
        if (state["schedule"] is None) != (self.schedule is None):
            raise ArgumentError("state['schedule']: the saved run and this trainer differ in having a schedule")
        for key, obj in (("model", self.model), ("optimizer", self.optimizer), ("bptt", self.bptt),
                         ("schedule", self.schedule), ("loader", self.loader if self._resumable_loader else None)):
            if obj is None:
                continue
            try:
                obj.load_state_dict(state[key])
            except (ValueError, TypeError, KeyError) as e:
                raise ArgumentError(f"state[{key!r}]: {e}") from None
        self.epoch, self.step, self.batch, self.hidden = epoch, step, batch, hidden
        self._acc, self._interval = accs["accumulators"], accs["interval"]
        self.history, self.log = copy.deepcopy(state["history"]), copy.deepcopy(state["log"])
        if rng is not None:
            self.rng = rng
        self.elapsed = elapsed
        self._live = None


def train(model, data_iter, num_epochs=None, lr=None, clip=1.0, bptt=None, optimizer=None, callback=None, *,
          minutes=None, val_ids=None, schedule=None, progress=False, rng=None):
    """Train ``model`` in place with a Trainer; return its history (one record per epoch, EPOCH_KEYS).

    data_iter: a SeqDataLoader or any re-iterable of (X, Y) (see Trainer).
    lr: the learning rate of the default optimizer SGD(lr) (ignored when
    ``optimizer`` is given). clip: theta of global-norm clipping, None or 0 for
    none. callback(info) after every step; returning False stops (the partial
    epoch is recorded with partial=True). minutes: a wall-clock budget besides
    num_epochs. rng: the dropout masks' Generator (see Trainer). Raises DivergenceError (a
    FloatingPointError) naming the step.
    """
    if callback is not None and not callable(callback):
        raise ArgumentError(f"callback: expected a callable or None, got {callback!r}")
    trainer = Trainer(model, data_iter, optimizer, lr=lr, bptt=bptt, clip=clip, schedule=schedule,
                      callbacks=() if callback is None else (callback,), val_ids=val_ids, progress=progress,
                      rng=rng)
    return trainer.fit(num_epochs, minutes)


# ---------------------------------------------------------------------- the evaluator
def _check_ids(name, ids, V):
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ArgumentError(f"{name}: expected a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.shape[0] < 2:
        raise ArgumentError(f"{name}: expected at least 2 tokens")
    if ids.min() < 0 or ids.max() >= V:
        raise ArgumentError(f"{name}: ids must lie in [0, {V}), got values in [{ids.min()}, {ids.max()}]")
    return ids


def _nll(model, x, y, state):
    """Sum of -log softmax(logits)[y] in float64 over a chunk, and the state after it."""
    logits, state = model(np.ascontiguousarray(x), state)
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, y[..., None].astype(np.intp), axis=-1)[..., 0]
    return float(np.sum(lse - picked)), state


def evaluate_nll(model, ids, batch_size=32, num_steps=35):
    """(total cross-entropy in nats, tokens predicted) of ``model`` on ``ids``: every token after the
    first is predicted exactly once.

    The ids are cut into batch_size contiguous streams (the book's sequential
    partition without an offset), read num_steps at a time from a zero state
    carried across chunks; the (len - 1) % batch_size leftover tokens at the
    end continue the last stream's state, so no token is skipped.
    """
    ids = _check_ids("ids", ids, model.vocab_size)
    B = check_int("batch_size", batch_size, lo=1)
    T = check_int("num_steps", num_steps, lo=1)
    n = ids.shape[0] - 1                       # predicted tokens
    B = min(B, n)
    L = n // B                                 # predictions per stream
    X, Y = ids[:B * L].reshape(B, L), ids[1:B * L + 1].reshape(B, L)
    total, state = 0.0, model.begin_state(B)
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(0, L, T):
            v, state = _nll(model, X[:, s:s + T], Y[:, s:s + T], state)
            total += v
        rest = n - B * L
        if rest:                               # the tail continues stream B-1 (which ends at B*L)
            state = state[..., B - 1:B, :].copy()         # the state's batch axis is -2
            tx, ty = ids[B * L:n][None], ids[B * L + 1:n + 1][None]
            for s in range(0, rest, T):
                v, state = _nll(model, tx[:, s:s + T], ty[:, s:s + T], state)
                total += v
    return total, n


def evaluate(model, ids, batch_size=32, num_steps=35):
    """Perplexity of ``model`` on ``ids`` (1-D ids): exp of evaluate_nll's mean; inf where it overflows,
    NaN when the model gives NaN."""
    total, n = evaluate_nll(model, ids, batch_size, num_steps)
    return perplexity(total / n)


# ---------------------------------------------------------------------- the sampler
def sample(model, prefix_ids, num_preds, temperature=1.0, top_k=0, rng=None, logit_bias=None):
    """Generate num_preds ids after prefix_ids: temperature 0 is greedy; > 0 samples with uniforms
    from ``rng`` (a Generator or an integer; one draw per generated token). logit_bias (V,) is added
    to the logits (-inf forbids a token)."""
    n = check_int("num_preds", num_preds, lo=0)
    temperature = check_real("temperature", temperature, lo=0)
    uniforms = None if temperature == 0 else _rng(rng).random(n)
    return model.generate(prefix_ids, n, temperature=temperature, top_k=top_k, uniforms=uniforms,
                          logit_bias=logit_bias)


def predict(prefix, num_preds, model, vocab, temperature=0.0, top_k=0, rng=None, token="char"):
    """The book's predict_ch8 ("Recurrent Neural Network Implementation from Scratch"): warm up on
    ``prefix``, then generate num_preds tokens, never '<unk>'.

    prefix: a string, tokenized as ``token`` ('char' or 'word', see
    fastseq.text.tokenize_text); the result is then a string (words joined by
    spaces). Or a list of tokens; the result is then the list of prefix +
    generated tokens. temperature 0 is greedy; > 0 samples (top_k, rng as in ``sample``).
    """
    from .text import tokenize_text

    if isinstance(prefix, str):
        tokens = tokenize_text(prefix, token)
    elif isinstance(prefix, (list, tuple)):
        tokens = list(prefix)
    else:
        raise ArgumentError(f"prefix: expected a string or a list of tokens, got {type(prefix).__name__}")
    if not tokens:
        raise ArgumentError("prefix: expected at least one token")
    bias = np.zeros(model.vocab_size, dtype=np.float64)
    bias[vocab.unk] = -np.inf                 # a model that knows its vocabulary never says '<unk>'
    out = sample(model, np.asarray(vocab[tokens], dtype=np.int64), num_preds, temperature, top_k, rng, bias)
    gen = vocab.to_tokens(out)
    if not isinstance(prefix, str):
        return tokens + gen
    return prefix + ("".join(gen) if token == "char" else "".join(" " + t for t in gen))


# ---------------------------------------------------------------------- gradient diagnostics
def state_grad_norms(model, X, Y, state=None, bptt=None, term=None):
    """||dL/dH_t|| (Frobenius over batch and hidden) for t = 0..T-1 of one window -> float64 (T,).

    With Full() this is the exact gradient of the window's loss w.r.t. each
    hidden state. ``term``: the index of one loss term (e.g. -1, the last) to
    back-propagate alone; then the norms show the powers of W_hh^T of the book's
    "Backpropagation Through Time" section directly: vanishing (falling quickly
    towards t = 0) or exploding (growing).
    """
    dH = model.state_grads(X, Y, state, bptt, term)
    return np.sqrt(np.sum(np.square(dH, dtype=np.float64), axis=(1, 2)))


def spectral_radius(model):
    """max |eigenvalue| of the plain RNN's W_hh (float64; the largest over a stack's layers): > 1 lets
    gradients explode, < 1 vanish (for small states). None for a gated cell: its W_hh is (H, G*H), the
    gates' blocks, and its Jacobian is set by the gates, not by one square matrix."""
    if getattr(model, "nonlinearity", "tanh") is None:
        return None
    return max(float(np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))))
               for k, w in model.params.items() if k.startswith("W_hh"))


def gradient_diagnostics(model, X, Y, state=None, bptt=None):
    """dict(state_grad_norms=(T,), last_term_grad_norms=(T,), spectral_radius=float) for one window."""
    return dict(state_grad_norms=state_grad_norms(model, X, Y, state, bptt),
                last_term_grad_norms=state_grad_norms(model, X, Y, state, bptt, term=-1),
                spectral_radius=spectral_radius(model))
