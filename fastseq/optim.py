"""Optimisers that update a dict of named NumPy arrays in place, their factory, and learning-rate schedules.

``step(params, grads)`` takes two dicts with the same keys (a model's
``params`` and the grads of ``loss_and_grad``) and changes ``params`` in place,
so the arrays a model holds stay the same objects. Every optimiser and the
schedule have ``state_dict()``/``load_state_dict()`` so a run can resume bit for bit.
"""
import math
import numbers

import numpy as np

from . import _core
from ._checks import check_choice, check_int, check_real
from .errors import ArgumentError
from .reference.optim import adam_update

__all__ = ["SGD", "Adam", "ReduceLROnPlateau", "CosineDecay", "OPTIMIZERS", "from_spec"]


def _lr(v, name="lr"):
    return check_real(name, v, lo=0, lo_open=True)


def _check_pair(params, grads):
    if not isinstance(params, dict) or not isinstance(grads, dict) or set(params) != set(grads):
        raise ArgumentError(f"grads: expected a dict with the keys of params {sorted(params)}, "
                            f"got {sorted(grads) if isinstance(grads, dict) else type(grads).__name__}")
    for k, p in params.items():                   # all checked before any is updated: a step is all or nothing
        if not isinstance(p, np.ndarray) or not p.flags.writeable:
            raise ArgumentError(f"params[{k!r}]: expected a writeable NumPy array (updated in place), got "
                                f"{'a read-only array' if isinstance(p, np.ndarray) else type(p).__name__}")
        g = grads[k]
        if not isinstance(g, np.ndarray) or g.dtype.kind not in "biuf":
            raise ArgumentError(f"grads[{k!r}]: expected a NumPy array of real numbers, got "
                                f"{g.dtype if isinstance(g, np.ndarray) else type(g).__name__}")
        if g.shape != p.shape:
            raise ArgumentError(f"grads[{k!r}]: expected shape {p.shape}, got {g.shape}")


def _check_state(state, kind, keys):
    if not isinstance(state, dict):
        raise ArgumentError(f"state: expected a dict, got {type(state).__name__}")
    if state.get("type") != kind:
        raise ArgumentError(f"state: expected a {kind} state, got type {state.get('type')!r}")
    for k in keys:
        if k not in state:
            raise ArgumentError(f"state[{k!r}]: missing from the {kind} state")


class SGD:
    """Plain minibatch SGD, the book's: p <- p - lr * g."""

    def __init__(self, lr):
        self.lr = _lr(lr)

    def step(self, params, grads):
        _check_pair(params, grads)
        for k, p in params.items():
            p -= p.dtype.type(self.lr) * grads[k]

    def state_dict(self):
        return {"type": "SGD", "lr": self.lr}

    def load_state_dict(self, state):
        _check_state(state, "SGD", ("lr",))
        self.lr = _lr(state["lr"], "state['lr']")


class Adam:
    """Adam (Kingma and Ba): m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
    p <- p - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected m_hat, v_hat.
    Moments are kept in float64 per parameter name.

    weight_decay: AdamW's decoupled weight decay (Loshchilov and Hutter, "Decoupled Weight Decay
    Regularization", ICLR 2019): p <- p (1 - lr weight_decay) before each update, with the step's lr
    (a schedule scales the decay too), as torch.optim.AdamW; 0 (the default) is plain Adam.

    backend: 'cpp' (default) updates each parameter in one fused pass of the C++ kernel (csrc/optim.h;
    a parameter or gradient it cannot take as is, e.g. not contiguous, goes to the NumPy update);
    'numpy' always runs the NumPy reference (fastseq.reference.optim.adam_update). Both give the same
    bits, so a run may resume on either; the backend is not part of ``state_dict``.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, backend="cpp"):
        self.lr = _lr(lr)
        self.betas = self._betas(betas, "betas")
        self.eps = check_real("eps", eps, lo=0, lo_open=True)
        self.weight_decay = check_real("weight_decay", weight_decay, lo=0)
        self.backend = check_choice("backend", backend, ("cpp", "numpy"))
        self.t = 0
        self.m, self.v = {}, {}

    @staticmethod
    def _betas(betas, name):
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ArgumentError(f"{name}: expected a pair of numbers in [0, 1), got {betas!r}")
        try:
            return tuple(check_real(name, b, lo=0, hi=1, hi_open=True) for b in betas)
        except ArgumentError:
            raise ArgumentError(f"{name}: expected numbers in [0, 1), got {betas!r}") from None

    def step(self, params, grads):
        _check_pair(params, grads)
        for k, p in params.items():               # before anything changes
            if k in self.m and self.m[k].shape != p.shape:     # moments loaded from another model's state
                raise ArgumentError(f"params[{k!r}]: shape {p.shape}, but its Adam moments (state_dict) have "
                                    f"shape {self.m[k].shape}")
        # set by hand or by a schedule since __init__: checked here, not half-way through the parameters
        lr, eps = check_real("lr", self.lr, lo=0), check_real("eps", self.eps, lo=0, lo_open=True)
        wd = check_real("weight_decay", self.weight_decay, lo=0)
        b1, b2 = self._betas(self.betas, "betas")
        self.t += 1
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for k, p in params.items():
            if k not in self.m:
                self.m[k], self.v[k] = np.zeros(p.shape), np.zeros(p.shape)
            _update(self.backend, p, grads[k], self.m[k], self.v[k], lr, b1, b2, c1, c2, eps, wd)

    def state_dict(self):
        return {"type": "Adam", "lr": self.lr, "betas": self.betas, "eps": self.eps,
                "weight_decay": self.weight_decay, "t": self.t,
                "m": {k: a.copy() for k, a in self.m.items()},
                "v": {k: a.copy() for k, a in self.v.items()}}

    def load_state_dict(self, state):
        _check_state(state, "Adam", ("lr", "betas", "eps", "t", "m", "v"))
        moments = {}
        for name in ("m", "v"):
            d = state[name]
            if not isinstance(d, dict):
                raise ArgumentError(f"state[{name!r}]: expected a dict of arrays, got {type(d).__name__}")
            moments[name] = {}
            for k, a in d.items():
                a = np.asarray(a)
                if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
                    raise ArgumentError(f"state[{name!r}][{k!r}]: expected finite numbers")
                if name == "v" and np.any(a < 0):
                    raise ArgumentError(f"state['v'][{k!r}]: a second moment must be >= 0")
                moments[name][k] = np.array(a, dtype=np.float64)
        if set(moments["m"]) != set(moments["v"]) or any(
                moments["m"][k].shape != moments["v"][k].shape for k in moments["m"]):
            raise ArgumentError("state['m'], state['v']: the moments name different parameters or shapes")
        t = check_int("state['t']", state["t"], lo=0)
        if t > 0 and not moments["m"]:
            raise ArgumentError(f"state['m']: empty after t={t} steps")
        lr = _lr(state["lr"], "state['lr']")
        betas = self._betas(state["betas"], "state['betas']")
        eps = check_real("state['eps']", state["eps"], lo=0, lo_open=True)
        # a state saved before weight decay existed is plain Adam's
        wd = check_real("state['weight_decay']", state.get("weight_decay", 0.0), lo=0)
        self.lr, self.betas, self.eps, self.weight_decay, self.t = lr, betas, eps, wd, t
        self.m, self.v = moments["m"], moments["v"]


def _fused(p, g):
    """Whether the C++ update takes p and g as they are (_check_pair has made them arrays, p writeable):
    both C-contiguous, aligned, of one float dtype, in separate memory."""
    return (p.dtype == g.dtype and p.dtype in (np.float32, np.float64) and p.flags.c_contiguous
            and g.flags.c_contiguous and p.flags.aligned and g.flags.aligned and not np.may_share_memory(p, g))


def _update(backend, p, g, m, v, lr, b1, b2, c1, c2, eps, wd):
    if backend == "cpp" and _fused(p, g):
        _core.adam_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd)
    else:
        adam_update(p, g, m, v, lr, b1, b2, c1, c2, eps, wd)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}
DEFAULT_LR = {"sgd": 1.0, "adam": 1e-3}


def from_spec(name, lr=None, **kwargs):
    """An optimiser by name: 'sgd' (the book's) or 'adam'; lr None takes the name's default
    (``DEFAULT_LR``: 1 for SGD, as the book's RNN chapters, 0.001 for Adam). kwargs go to the class."""
    name = check_choice("optimizer", name, tuple(OPTIMIZERS))
    return OPTIMIZERS[name](DEFAULT_LR[name] if lr is None else lr, **kwargs)


class ReduceLROnPlateau:
    """Step decay on plateau: divide the learning rate by ``factor`` when the monitored loss
    (the held-out loss, else the training loss) did not improve on the best one by more than
    ``threshold`` (relative) for more than ``patience`` epochs.

    The defaults are the rule of PyTorch's word-language-model example (``lr /= 4`` whenever
    the validation loss does not improve). ``min_lr`` bounds the rate from below.
    ``step(loss, optimizer)`` is called once per epoch and returns the rate for the next one.
    """

    def __init__(self, factor=4.0, patience=0, threshold=0.0, min_lr=0.0):
        self.factor = check_real("factor", factor, lo=1, lo_open=True)
        self.patience = check_int("patience", patience, lo=0)
        self.threshold = check_real("threshold", threshold, lo=0, hi=1, hi_open=True)
        self.min_lr = check_real("min_lr", min_lr, lo=0)
        self.best, self.bad_epochs = math.inf, 0

    def step(self, loss, optimizer):
        if not isinstance(loss, numbers.Real) or math.isnan(loss):
            raise ArgumentError(f"loss: expected a number, got {loss!r}")
        if loss < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = float(loss), 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                optimizer.lr = max(optimizer.lr / self.factor, self.min_lr)
                self.bad_epochs = 0
        return optimizer.lr

    def state_dict(self):
        return {"type": "ReduceLROnPlateau", "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "min_lr": self.min_lr,
                "best": None if self.best == math.inf else self.best,     # strict JSON has no Infinity
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        _check_state(state, "ReduceLROnPlateau", ("factor", "patience", "threshold", "min_lr", "best",
                                                  "bad_epochs"))
        other = ReduceLROnPlateau(state["factor"], state["patience"], state["threshold"], state["min_lr"])
        other.best = math.inf if state["best"] is None else check_real("state['best']", state["best"])
        other.bad_epochs = check_int("state['bad_epochs']", state["bad_epochs"], lo=0)
        self.__dict__.update(other.__dict__)


class CosineDecay:
    """Decay the learning rate along a half cosine from its starting value to ``final`` times it over
    the run's progress p in [0, 1]:

        lr(p) = base_lr * (final + (1 - final) * (1 + cos(pi p)) / 2)

    so lr(0) = base_lr, lr(1) = final * base_lr, and the rate falls slowly at first and last. This is
    the cosine scheduler of *Dive into Deep Learning*, chapter 12, "Learning Rate Scheduling" (after
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017), without restarts
    or warm-up. ``final`` = 1 keeps the rate constant.

    The Trainer calls ``at_progress(progress, optimizer)`` before every step with the run's progress,
    the larger of (wall time spent) / (the time budget) and (steps done) / (steps of all epochs) --
    whichever ends the run first. The progress never goes back (a resumed run with a larger budget
    holds the rate until its progress passes the saved one). ``base_lr`` is the optimizer's rate at
    the first call unless given; ``state_dict`` holds it and the progress reached.
    """

    def __init__(self, final=0.05, hold=0.0, base_lr=None):
        self.final = check_real("final", final, lo=0, hi=1)
        self.hold = check_real("hold", hold, lo=0, hi=1, hi_open=True)
        self.base_lr = None if base_lr is None else _lr(base_lr, "base_lr")
        self.progress = 0.0

    def factor(self, progress):
        """The fraction of base_lr at ``progress`` (clamped to [0, 1])."""
        p = min(1.0, max(0.0, float(progress)))
        q = max(0.0, p - self.hold) / (1.0 - self.hold)      # the decay's own progress
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * q))

    def at_progress(self, progress, optimizer):
        """Set optimizer.lr for a step taken at ``progress`` (never below the progress reached); returns it."""
        if not isinstance(progress, numbers.Real) or math.isnan(progress):
            raise ArgumentError(f"progress: expected a number, got {progress!r}")
        if self.base_lr is None:
            self.base_lr = optimizer.lr
        self.progress = max(self.progress, min(1.0, max(0.0, float(progress))))
        optimizer.lr = self.base_lr * self.factor(self.progress)
        return optimizer.lr

    def state_dict(self):
        return {"type": "CosineDecay", "final": self.final, "hold": self.hold, "base_lr": self.base_lr,
                "progress": self.progress}

    def load_state_dict(self, state):
        _check_state(state, "CosineDecay", ("final", "hold", "base_lr", "progress"))
        other = CosineDecay(state["final"], state["hold"], state["base_lr"])
        other.progress = check_real("state['progress']", state["progress"], lo=0, hi=1)
        self.__dict__.update(other.__dict__)
