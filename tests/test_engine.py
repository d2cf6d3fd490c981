"""The training engine (fastseq.training.Trainer): resume bit for bit after an interrupt at any step,
Ctrl-C at a step boundary, the wall-clock budget, the learning-rate schedule, callbacks, divergence.

Legend: B batch, T steps, H hidden, V vocabulary.
"""
import copy
import math
import os
import signal
import threading

import numpy as np
import pytest

import fastseq
from fastseq import optim
from fastseq.bptt import Full, Randomized, Truncated
from fastseq.data import SeqDataLoader
from fastseq.errors import ArgumentError, FastseqError
from fastseq.reference.rnn import RNNLM
from fastseq.training import (EPOCH_KEYS, LOG_KEYS, Callback, DivergenceError, Trainer, TrainingInterrupted,
                              evaluate)

V = 6


def toy_corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    base = np.tile(np.array([0, 1, 2, 3, 4, 5, 4, 3, 2, 1]), n // 10 + 1)[:n]
    return np.where(rng.random(n) < 0.1, rng.integers(0, V, n), base).astype(np.int32)


CONFIGS = {
    # random sampling + randomized truncation (two Generators besides the loader's) + Adam
    "random+Randomized+adam": dict(sampling="random", bptt=lambda: Randomized(0.5, seed=7),
                                   opt=lambda: optim.Adam(0.01), schedule=None),
    # sequential partitioning (a carried hidden state) + block truncation + SGD + plateau schedule
    "sequential+block+sgd+plateau": dict(sampling="sequential", bptt=lambda: Truncated(2),
                                         opt=lambda: optim.SGD(1.0),
                                         schedule=lambda: optim.ReduceLROnPlateau(factor=2, patience=0,
                                                                                  threshold=0.2)),
    # a 2-layer LSTM with dropout (the trainer's Generator) carrying its (h, c) state, sliding truncation
    "lstm2+dropout+sequential+sliding+adam": dict(sampling="sequential", bptt=lambda: Truncated(3, "sliding"),
                                                  opt=lambda: optim.Adam(0.01), schedule=None,
                                                  model=dict(cell="lstm", num_layers=2, dropout=0.3)),
    # sequential + full BPTT + Adam + the cosine decay over the epochs' progress (no time budget: the
    # progress is step / total steps, so the resumed run must continue the decay from its saved state)
    "sequential+full+adam+cosine": dict(sampling="sequential", bptt=lambda: Full(), opt=lambda: optim.Adam(0.02),
                                        schedule=lambda: optim.CosineDecay(0.1, hold=0.2)),
    # a GRU with dropout, random sampling (its state re-initialised every batch)
    "gru+dropout+random+block+sgd": dict(sampling="random", bptt=lambda: Truncated(2), opt=lambda: optim.SGD(0.5),
                                         schedule=None, model=dict(cell="gru", dropout=0.2)),
}


def make(cfg, backend="numpy", callbacks=(), dtype=np.float64, rng=None):
    corpus = toy_corpus()
    if backend == "numpy":
        model = RNNLM(V, 8, dtype=dtype, seed=1, **cfg.get("model", {}))
    else:
        model = fastseq.RNNLM(V, 8, dtype=dtype, seed=1, backend=backend, **cfg.get("model", {}))
    loader = SeqDataLoader(corpus[:240], 3, 5, sampling=cfg["sampling"], seed=2)
    return Trainer(model, loader, cfg["opt"](), bptt=cfg["bptt"](), clip=0.5,
                   schedule=cfg["schedule"]() if cfg["schedule"] else None, callbacks=callbacks,
                   val_ids=corpus[240:], log_every=4, rng=rng)


def stop_at(k):
    return lambda info: info["step"] < k


def comparable(history):
    """History records without wall-clock figures."""
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "seconds")} for r in history]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_after_any_step_is_bit_identical(name):
    cfg = CONFIGS[name]
    EPOCHS = 3
    ref = make(cfg)
    ref.fit(EPOCHS)
    total = ref.step
    assert total == sum(1 for _ in range(total)) and total >= 3 * 10
    lrs = {r["lr"] for r in ref.history}
    if cfg["schedule"]:
        assert len(lrs) > 1, "the schedule never acted: the test would not cover its state"
    for k in range(0, total + 1):
        a = make(cfg, callbacks=[stop_at(k)] if k else [])
        if k:
            a.fit(EPOCHS)
            assert a.step == k and a.stop_reason in ("callback", "epochs")
        state = copy.deepcopy(a.state_dict())
        del a
        b = make(cfg)                       # fresh objects: everything comes from the state
        b.load_state_dict(state)
        b.fit(EPOCHS)
        assert b.step == total and b.epoch == EPOCHS
        for key, p in ref.model.params.items():
            np.testing.assert_array_equal(b.model.params[key], p, err_msg=f"{name}: resumed after step {k}")
        assert b.optimizer.state_dict()["lr"] == ref.optimizer.state_dict()["lr"]
        assert comparable(b.history) == comparable(ref.history), f"resumed after step {k}"
        assert comparable(b.log) == comparable(ref.log)


def test_dropout_draws_from_the_trainers_generator_only():
    """The masks come from the trainer's rng: another rng trains other weights, the same rng the same;
    the model's other Generators (loader, Randomized) are untouched by it."""
    cfg = CONFIGS["lstm2+dropout+sequential+sliding+adam"]
    a, b, c = make(cfg, rng=5), make(cfg, rng=5), make(cfg, rng=6)
    for t in (a, b, c):
        t.fit(1)
    np.testing.assert_array_equal(a.model.params["W_hh_l1"], b.model.params["W_hh_l1"])
    assert not np.array_equal(a.model.params["W_hh_l1"], c.model.params["W_hh_l1"])
    assert a.state_dict()["loader"] == c.state_dict()["loader"]
    plain = make(dict(cfg, model=dict(cfg["model"], dropout=0.0)), rng=5)
    plain.fit(1)
    assert plain.rng.bit_generator.state == np.random.default_rng(5).bit_generator.state   # nothing drawn
    assert a.hidden is None and a.model.begin_state(3).shape == (4, 3, 8)


def test_carried_state_of_a_stacked_lstm_is_checked_on_load():
    cfg = CONFIGS["lstm2+dropout+sequential+sliding+adam"]
    a = make(cfg, callbacks=[stop_at(5)])
    a.fit(1)
    state = copy.deepcopy(a.state_dict())
    assert state["hidden"].shape == (4, 3, 8)
    for bad in (np.zeros((3, 8)), np.zeros((2, 3, 8)), np.zeros((4, 3, 9))):
        with pytest.raises(ArgumentError, match=r"state\['hidden'\]: expected finite floats of shape \(4, B, 8\)"):
            make(cfg).load_state_dict(dict(state, hidden=bad))
    b = make(cfg)
    b.load_state_dict(dict(state, hidden=np.zeros((4, 5, 8))))       # another batch size is a state too
    assert b.hidden.shape == (4, 5, 8)


def test_a_state_without_rng_of_before_dropout_still_loads():
    cfg = CONFIGS["sequential+block+sgd+plateau"]
    ref = make(cfg)
    ref.fit(2)
    a = make(cfg, callbacks=[stop_at(9)])
    a.fit(2)
    old = copy.deepcopy(a.state_dict())
    old["version"] = 1
    del old["rng"]
    b = make(cfg)
    b.load_state_dict(old)
    b.fit(2)
    for key, p in ref.model.params.items():
        np.testing.assert_array_equal(b.model.params[key], p)


def test_resume_on_the_cpp_backend_float32_is_bit_identical():
    cfg = CONFIGS["random+Randomized+adam"]
    ref = make(cfg, backend="cpp", dtype=np.float32)
    ref.fit(2)
    for k in (1, ref.step // 2, ref.step - 1):
        a = make(cfg, backend="cpp", dtype=np.float32, callbacks=[stop_at(k)])
        a.fit(2)
        b = make(cfg, backend="cpp", dtype=np.float32)
        b.load_state_dict(a.state_dict())
        b.fit(2)
        for key, p in ref.model.params.items():
            np.testing.assert_array_equal(b.model.params[key], p)


def test_fit_continues_in_the_same_object_and_extends():
    cfg = CONFIGS["sequential+block+sgd+plateau"]
    ref = make(cfg)
    ref.fit(3)
    t = make(cfg, callbacks=[stop_at(7)])
    t.fit(3)
    assert t.history[-1]["partial"] and t.history[-1]["step"] == 7
    t.callbacks.clear()
    t.fit(2)                                  # epochs counts in all: continues to the end of epoch 2
    assert t.epoch == 2 and not any(r["partial"] for r in t.history)
    t.fit(3)
    for key, p in ref.model.params.items():
        np.testing.assert_array_equal(t.model.params[key], p)
    assert comparable(t.history) == comparable(ref.history)


# ------------------------------------------------------------------ Ctrl-C
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_ctrl_c_is_deferred_to_the_step_boundary_and_resumes_bit_identically():
    cfg = CONFIGS["random+Randomized+adam"]
    ref = make(cfg)
    ref.fit(2)

    class KillInStep(RNNLM):
        """SIGINT arrives in the middle of step 5's gradient computation."""
        calls = 0

        def loss_and_grad(self, X, Y, state, bptt=None, rng=None):
            KillInStep.calls += 1
            out = super().loss_and_grad(X, Y, state, bptt)
            if KillInStep.calls == 5:
                os.kill(os.getpid(), signal.SIGINT)
            return out

    t = make(cfg)
    t.model = KillInStep(V, 8, dtype=np.float64, seed=1)
    with pytest.raises(TrainingInterrupted) as e:
        t.fit(2)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.step == 5 and t.step == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # restored
    b = make(cfg)
    b.load_state_dict(t.state_dict())
    b.fit(2)
    for key, p in ref.model.params.items():
        np.testing.assert_array_equal(b.model.params[key], p)


# ------------------------------------------------------------------ budget, schedule, callbacks
def test_time_budget_stops_after_the_step_that_spends_it(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("fastseq.training.time.monotonic", lambda: clock[0])

    def tick(info):
        clock[0] += 6.0                        # every step "takes" 6 s of wall-clock time

    t = make(CONFIGS["sequential+block+sgd+plateau"], callbacks=[tick])
    t.fit(epochs=100, minutes=1.0)
    assert t.stop_reason == "time budget"
    assert t.step == 10                        # 10 x 6 s = 60 s: the budget is spent at step 10
    rec = t.history[-1]
    assert rec["partial"] and rec["step"] == 10 and rec["val_ppl"] is not None
    t.fit(epochs=100, minutes=0.1)             # a new budget: one more step
    assert t.step == 11
    with pytest.raises(ArgumentError, match="epochs, minutes"):
        t.fit()
    with pytest.raises(ArgumentError, match="minutes"):
        t.fit(minutes=0)


def test_plateau_schedule_is_the_word_language_model_rule():
    """PyTorch's word_language_model: lr /= 4 whenever the held-out loss did not improve."""
    s = optim.ReduceLROnPlateau()
    o = optim.SGD(20.0)
    lrs = [s.step(loss, o) for loss in (5.0, 4.0, 4.0, 3.0, 3.5, 3.2, 2.0)]
    assert lrs == [20.0, 20.0, 5.0, 5.0, 1.25, 0.3125, 0.3125]
    s2 = optim.ReduceLROnPlateau()
    s2.load_state_dict(copy.deepcopy(s.state_dict()))
    o2 = copy.deepcopy(o)
    assert s2.step(2.5, o2) == s.step(2.5, o) == 0.3125 / 4     # 2.5 > 2.0: no improvement
    with pytest.raises(ArgumentError, match="factor"):
        optim.ReduceLROnPlateau(factor=1)
    with pytest.raises(ArgumentError, match=r"state\['bad_epochs'\]"):
        s2.load_state_dict(dict(s.state_dict(), bad_epochs=-1))


# ------------------------------------------------------------------ the cosine decay over the run's progress
def test_cosine_decay_values_at_given_progress():
    """lr(p) = base * (f + (1 - f) (1 + cos(pi q)) / 2), q the progress past the hold; the expected values
    are worked out by hand: cos(pi/4) = 0.70710678, cos(pi/2) = 0."""
    s = optim.CosineDecay(0.1)
    assert s.factor(0.0) == 1.0
    assert s.factor(0.25) == pytest.approx(0.1 + 0.9 * 0.85355339, abs=1e-8)   # (1 + 0.70710678) / 2
    assert s.factor(0.5) == pytest.approx(0.55, abs=1e-12)
    assert s.factor(1.0) == pytest.approx(0.1, abs=1e-12)
    assert s.factor(7.0) == pytest.approx(0.1, abs=1e-12) and s.factor(-1.0) == 1.0       # clamped
    h = optim.CosineDecay(0.0, hold=0.5)                  # constant for the first half, then the half cosine
    assert h.factor(0.3) == h.factor(0.5) == 1.0
    assert h.factor(0.75) == pytest.approx(0.5, abs=1e-12) and h.factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert optim.CosineDecay(1.0).factor(0.6) == 1.0    # final 1: a constant rate
    o = optim.Adam(0.004)
    assert s.at_progress(0.5, o) == pytest.approx(0.0022, abs=1e-15) and o.lr == pytest.approx(0.0022, abs=1e-15)
    assert s.base_lr == 0.004                             # taken from the optimizer at the first call
    for bad in (dict(final=-0.1), dict(final=1.5), dict(hold=1.0), dict(hold=-0.2), dict(base_lr=0)):
        with pytest.raises(ArgumentError, match=next(iter(bad))):
            optim.CosineDecay(**{"final": 0.1, **bad})
    with pytest.raises(ArgumentError, match="progress"):
        s.at_progress(float("nan"), o)


def test_cosine_decay_is_monotone_and_never_goes_back():
    s = optim.CosineDecay(0.05, hold=0.1)
    f = [s.factor(p) for p in np.linspace(0, 1, 1001)]
    assert all(b <= a for a, b in zip(f, f[1:])) and f[0] == 1.0 and f[-1] == pytest.approx(0.05)
    assert f[500] < f[200] < f[100]                      # it does fall after the hold
    o = optim.SGD(1.0)
    s.at_progress(0.6, o)
    at_06 = o.lr
    assert s.at_progress(0.3, o) == at_06 and s.progress == 0.6    # a smaller progress holds the rate
    t = copy.deepcopy(s.state_dict())
    s2 = optim.CosineDecay()
    s2.load_state_dict(t)
    o2 = optim.SGD(123.0)
    assert s2.at_progress(0.8, o2) == s.at_progress(0.8, o)          # base_lr and progress come from the state
    with pytest.raises(ArgumentError, match=r"state\['progress'\]"):
        s2.load_state_dict(dict(t, progress=1.5))
    with pytest.raises(ArgumentError, match="hold"):
        s2.load_state_dict({k: v for k, v in t.items() if k != "hold"})


def _clocked(monkeypatch, seconds_per_step):
    """A fake wall clock that advances seconds_per_step at every step (as test_time_budget_...)."""
    clock = [1000.0]
    monkeypatch.setattr("fastseq.training.time.monotonic", lambda: clock[0])

    def tick(info):
        clock[0] += seconds_per_step
    return tick


def test_trainer_decays_over_the_larger_of_time_and_step_progress(monkeypatch):
    """Each step's rate is base * factor(progress), progress = max(elapsed / budget, step / total steps)."""
    cfg = CONFIGS["sequential+full+adam+cosine"]
    # time dominates: 6 s a step against a 60 s budget, while 100 epochs of steps are far away
    seen = []
    t = make(cfg, callbacks=[_clocked(monkeypatch, 6.0), lambda info: seen.append(info["lr"])])
    t.fit(epochs=100, minutes=1.0)
    assert t.step == 10 and t.stop_reason == "time budget"
    s = optim.CosineDecay(0.1, hold=0.2)
    assert seen == pytest.approx([0.02 * s.factor(6.0 * k / 60.0) for k in range(10)], rel=1e-12)
    assert t.elapsed == 60.0
    # steps dominate: 3 epochs of 16 steps within a budget of an hour
    n = len(make(cfg).loader)
    seen.clear()
    t = make(cfg, callbacks=[_clocked(monkeypatch, 6.0), lambda info: seen.append(info["lr"])])
    t.fit(epochs=3, minutes=60.0)
    assert t.stop_reason == "epochs" and len(seen) == 3 * n
    assert seen == pytest.approx([0.02 * s.factor(k / (3 * n)) for k in range(3 * n)], rel=1e-12)
    assert seen[-1] < 0.2 * 0.02                          # it got near the end of the decay


def test_resume_continues_the_time_budgets_decay(monkeypatch):
    """The elapsed training time is in the state: stopped after 4 steps of a 60 s budget and resumed with
    the 36 s left, the run takes the same rates (and ends with the same weights) as without the stop."""
    cfg = CONFIGS["sequential+full+adam+cosine"]
    lrs = []
    ref = make(cfg, callbacks=[_clocked(monkeypatch, 6.0), lambda info: lrs.append(info["lr"])])
    ref.fit(epochs=100, minutes=1.0)
    a_lrs = []
    a = make(cfg, callbacks=[_clocked(monkeypatch, 6.0), lambda info: a_lrs.append(info["lr"]), stop_at(4)])
    a.fit(epochs=100, minutes=1.0)
    state = copy.deepcopy(a.state_dict())
    assert a.step == 4 and state["elapsed"] == 24.0 and state["version"] == 3
    b = make(cfg, callbacks=[_clocked(monkeypatch, 6.0), lambda info: a_lrs.append(info["lr"])])
    b.load_state_dict(state)
    assert b.elapsed == 24.0
    b.fit(epochs=100, minutes=0.6)                        # the 36 s left of the budget
    assert b.step == ref.step == 10
    assert a_lrs == lrs                                   # bit for bit: the same progress at every step
    for key, p in ref.model.params.items():
        np.testing.assert_array_equal(b.model.params[key], p)
    # A state from before progress schedules (version 2, no 'elapsed') starts the clock at 0.
    old = {k: v for k, v in state.items() if k != "elapsed"}
    old["version"] = 2
    c = make(cfg)
    c.load_state_dict(old)
    assert c.elapsed == 0.0
    with pytest.raises(ArgumentError, match=r"state\['elapsed'\]"):
        make(cfg).load_state_dict(dict(state, elapsed=-1.0))
    with pytest.raises(ArgumentError, match=r"state\['elapsed'\]: missing"):
        make(cfg).load_state_dict(old | {"version": 3})


def test_setting_the_rate_rescales_a_progress_schedule():
    cfg = CONFIGS["sequential+full+adam+cosine"]
    t = make(cfg)
    t.fit(1)
    p = t.schedule.progress
    assert 0 < p < 1
    t.lr = 0.5
    assert t.schedule.base_lr == 0.5
    t.fit(2)
    assert t.history[-1]["lr"] == pytest.approx(0.5 * t.schedule.factor(t.schedule.progress), rel=1e-12)


def test_trainer_steps_the_schedule_with_the_held_out_loss():
    seen = []

    class Spy(optim.ReduceLROnPlateau):
        def step(self, loss, optimizer):
            seen.append(loss)
            return super().step(loss, optimizer)

    t = make(CONFIGS["sequential+block+sgd+plateau"])
    t.schedule = Spy()
    t.fit(2)
    assert seen == pytest.approx([math.log(r["val_ppl"]) for r in t.history], rel=1e-12)
    assert [r["lr"] for r in t.history][0] == 1.0


def test_callbacks_see_every_step_and_epoch_and_can_stop():
    class Rec(Callback):
        def __init__(self):
            self.steps, self.epochs = [], []

        def on_step(self, trainer, info):
            self.steps.append(info)

        def on_epoch_end(self, trainer, record):
            self.epochs.append(record)
            return record["epoch"] < 2          # stop after epoch 2

    r = Rec()
    t = make(CONFIGS["sequential+block+sgd+plateau"], callbacks=[r])
    hist = t.fit(5)
    assert t.stop_reason == "callback" and t.epoch == 2 and len(hist) == 2
    assert r.epochs == hist
    assert [i["step"] for i in r.steps] == list(range(1, t.step + 1))
    assert set(r.steps[0]) == {"epoch", "step", "batch", "loss", "grad_norm", "lr", "tokens_per_s"}
    for e in (1, 2):
        losses = [i["loss"] for i in r.steps if i["epoch"] == e]
        norms = [i["grad_norm"] for i in r.steps if i["epoch"] == e]
        assert hist[e - 1]["train_ppl"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-9)
        assert hist[e - 1]["grad_norm_mean"] == pytest.approx(np.mean(norms), rel=1e-9)
        assert hist[e - 1]["grad_norm_max"] == max(norms)
    # trainer.stop() from a callback stops after the current step
    t = make(CONFIGS["sequential+block+sgd+plateau"], callbacks=[lambda i: None])
    t.callbacks.append(type("S", (Callback,), {"on_step": lambda self, tr, i: tr.stop() if i["step"] == 4 else None})())
    t.fit(5)
    assert t.step == 4 and t.stop_reason == "callback"


def test_history_schema_and_interval_log():
    t = make(CONFIGS["sequential+block+sgd+plateau"])
    t.fit(2)
    assert all(tuple(r) == EPOCH_KEYS for r in t.history)
    assert [r["epoch"] for r in t.history] == [1, 2]
    assert t.history[-1]["step"] == t.step
    per_epoch = t.step // 2
    assert len(t.log) == 2 * (per_epoch // 4) + (1 if (2 * per_epoch) % 4 and per_epoch % 4 == 0 else 0) \
        or len(t.log) == t.step // 4
    assert all(set(r) == set(LOG_KEYS) for r in t.log)
    assert [r["step"] for r in t.log] == list(range(4, t.step + 1, 4))


def test_progress_bar_is_optional(capsys):
    t = make(CONFIGS["sequential+block+sgd+plateau"])
    t.progress = True
    t.fit(1)
    err = capsys.readouterr().err
    tqdm_installed = True
    try:
        import tqdm  # noqa: F401
    except ImportError:
        tqdm_installed = False
    assert ("epoch 1" in err) == tqdm_installed


# ------------------------------------------------------------------ divergence
def test_book_no_clipping_experiment_raises_divergence_naming_the_step(monkeypatch):
    """The book's experiment without clipping (lr 10) on the Time Machine used to end in
    OverflowError: math range error. Now: DivergenceError with the step, nothing half applied."""
    monkeypatch.setenv("FASTSEQ_DATA_DIR", "/work/shared/data")
    ids, vocab = fastseq.load_corpus("timemachine", cleaning="d2l")
    m = fastseq.RNNLM(len(vocab), 512, seed=0)
    before = {}

    def keep(info):
        before.update({k: p.copy() for k, p in m.params.items()})

    with pytest.raises(DivergenceError, match=r"diverged at step \d+ \(epoch 1\): the loss") as e:
        fastseq.train(m, SeqDataLoader(ids, 32, 35, seed=0), 3, lr=10, clip=None, callback=keep)
    assert isinstance(e.value, FastseqError) and isinstance(e.value, FloatingPointError)
    assert 1 < e.value.step < 152
    for k, p in m.params.items():           # the failing step applied nothing
        np.testing.assert_array_equal(p, before[k])
    m.params["W_hq"][...] *= 1e6                    # logits of 1e6 and more: the cross-entropy overflows exp
    assert evaluate(m, ids[:2000]) == math.inf      # a perplexity that overflows is inf, not an exception


def test_the_book_model_at_the_commands_size_without_clipping_stops_as_diverged():
    """`fastseq train --optimizer sgd --lr 10 --clip 0` at the command's H=128 never overflowed: it ran the
    whole budget and printed a perplexity of 85 digits. A loss ten times a uniform guess's is divergence."""
    ids, vocab = fastseq.load_corpus("pydoc")
    m = fastseq.RNNLM(len(vocab), 128, seed=0)
    with pytest.raises(DivergenceError, match=r"diverged at step \d+ \(epoch 1\): the loss is [\d.]+ nats "
                                              r"per token, over 10 times a uniform guess's ln \d+") as e:
        fastseq.train(m, SeqDataLoader(ids[:200_000], 32, 35, seed=0), 1, lr=10, clip=None)
    assert e.value.step < 100


def test_divergence_threshold_is_ten_uniform_guesses_capped_by_overflow():
    from fastseq.training import MAX_LOSS, divergence_loss
    assert divergence_loss(66) == pytest.approx(10 * math.log(66))
    assert divergence_loss(1) == pytest.approx(10 * math.log(2))
    assert divergence_loss(10 ** 40) == MAX_LOSS


def test_a_run_that_starts_far_above_uniform_but_under_the_threshold_trains_on():
    """The check is on the loss against 10 ln V, not against its first value: a model that starts at
    about 6 times a uniform guess's loss (every logit pushes token 0) trains without a stop."""
    from fastseq.training import evaluate_nll
    ids, vocab = fastseq.load_corpus("pydoc")
    V = len(vocab)
    m = fastseq.RNNLM(V, 16, seed=0)
    m.params["b_q"][...] = np.where(np.arange(V) == 0, 6 * math.log(V), 0.0)
    total, n = evaluate_nll(m, ids[:5000])
    assert 5 * math.log(V) < total / n < 10 * math.log(V)
    fastseq.train(m, SeqDataLoader(ids[:20_000], 8, 35, seed=0), 1, lr=0.1, clip=1.0)



def test_clip_zero_means_no_clipping_as_the_command():
    cfg = CONFIGS["sequential+block+sgd+plateau"]
    a, b = make(cfg), make(cfg)
    a.clip, b.clip = None, None
    c = Trainer(b.model, b.loader, b.optimizer, clip=0)
    assert c.clip is None
    with pytest.raises(ArgumentError, match="clip"):
        Trainer(b.model, b.loader, b.optimizer, clip=-1)
    with pytest.raises(ArgumentError, match="clip"):
        Trainer(b.model, b.loader, b.optimizer, clip=math.inf)


# ------------------------------------------------------------------ load_state_dict validation
@pytest.mark.parametrize("edit, key", [
    (lambda s: s.update(batch=10 ** 6), "batch"),
    (lambda s: s.update(batch=-5), "batch"),
    (lambda s: s.update(epoch="1"), "epoch"),
    (lambda s: s.update(step=1.5), "step"),
    (lambda s: s.update(hidden=np.zeros((3, 9))), "hidden"),
    (lambda s: s.update(hidden=np.full((3, 8), np.nan)), "hidden"),
    (lambda s: s["accumulators"].update(tokens=-1), "accumulators"),
    (lambda s: s["accumulators"].pop("loss_sum"), "accumulators"),
    (lambda s: s.update(history=[{"epoch": 1, "partial": False}]), "history"),
    (lambda s: s["loader"].update(batch=10 ** 6), "loader"),
    (lambda s: s["loader"].update(bit_generator={"bit_generator": "MT19937"}), "loader"),
    (lambda s: s["bptt"].update(bit_generator=None), "bptt"),
    (lambda s: s["optimizer"].update(t=-1), "optimizer"),
    (lambda s: s["optimizer"]["v"].update(W_hh=-np.ones((8, 8))), "optimizer"),
    (lambda s: s["model"].pop("W_hh"), "model"),
    (lambda s: s.pop("step"), "step"),
    (lambda s: s.update(version=4), "version"),
    (lambda s: s.pop("elapsed"), "elapsed"),
    (lambda s: s.update(elapsed=float("nan")), "elapsed"),
    (lambda s: s.pop("rng"), "rng"),
    (lambda s: s.update(rng={"bit_generator": "PCG64", "state": 5}), "rng"),
])
def test_load_state_dict_refuses_damage_naming_the_key(edit, key):
    cfg = CONFIGS["random+Randomized+adam"]
    a = make(cfg, callbacks=[stop_at(13)])
    a.fit(3)
    state = copy.deepcopy(a.state_dict())
    if key == "hidden" and state["hidden"] is None:
        state["hidden"] = np.zeros((3, 8))
    edit(state)
    b = make(cfg)
    with pytest.raises(ArgumentError, match=rf"state\['{key}'\]"):
        b.load_state_dict(state)


def test_constructor_arguments():
    m, loader = RNNLM(V, 8), SeqDataLoader(toy_corpus(), 3, 5)
    with pytest.raises(ArgumentError, match="lr"):
        Trainer(m, loader)
    with pytest.raises(ArgumentError, match="callbacks"):
        Trainer(m, loader, lr=1, callbacks=[3])
    with pytest.raises(ArgumentError, match="schedule"):
        Trainer(m, loader, lr=1, schedule=3)
    with pytest.raises(ArgumentError, match="val_ids"):
        Trainer(m, loader, lr=1, val_ids=[0, V])
    with pytest.raises(ArgumentError, match="bptt"):
        Trainer(m, loader, lr=1, bptt="full")
    t = Trainer(m, loader, lr=1)
    t.lr = 0.1                                  # fine-tuning a resumed run at a lower rate
    assert t.optimizer.lr == 0.1
    with pytest.raises(ArgumentError, match="lr"):
        t.lr = 0
    assert isinstance(Trainer(m, loader, lr=1, bptt=None).bptt, Full)
