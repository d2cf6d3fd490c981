"""Autoregressive sequence models: *Dive into Deep Learning* (Zhang, Lipton, Li, Smola), chapter 8,
"Sequence Models".

To predict x_t from its past, the book gives two strategies:

* an **autoregressive model** looks only at a window of the last tau
  observations x_{t-tau}, ..., x_{t-1}; the input has a fixed size, so any
  regression model fits: here `LinearAR` (least squares) and `MLPAR` (a small
  NumPy MLP trained with MSE);
* a **latent autoregressive model** keeps a state h_t = g(h_{t-1}, x_{t-1})
  summarising all the past and predicts x_hat_t from h_t: here `RNNAR`, the
  package's own RNN layer (fastseq.RNN, on the C++ kernels by default) with a
  linear read-out.

Legend: n series length, tau window (lag) length, N = n - tau rows of lagged
features, k prediction horizon, B batch, H hidden size.

Lag features (`lag_features`): row j holds the window x_j, ..., x_{j+tau-1}
(feature column i holds x_{t-tau+i} for the target t = j + tau) and the target
is x_{j+tau}. So features (N, tau), targets (N,).

k-step-ahead prediction (`predict_multistep`): for every start, the model sees
only the observations up to the start and then feeds its own predictions back
in as if they were observations. Row j of the result (N - k + 1, k) starts
after observing x_0..x_{j+tau-1}; its column h-1 predicts x_{j+tau+h-1}, h
steps ahead. The autoregressive models use only the last tau of those
observations; the latent model reads all of them into its state. Because every
predicted value is an input to the next, errors accumulate and the error grows
with k: the point the book makes with its experiment.

The book's experiment (`book_experiment`, or ``python -m fastseq.ar``):
x_t = sin(0.01 t) + N(0, 0.2^2) noise for t = 1..1000 (a seeded NumPy
Generator), tau = 4, the first 600 rows of lag features for training (series
x_0..x_603). Every model is scored on the same held-out targets x_t,
t = 604..999: the k-step MSE predicts each x_t from the observations up to
x_{t-k}, for k = 1 (one-step), 4, 16 and 64. ``--png FILE`` draws the
predictions and the MSE against k in one figure (needs matplotlib).

Measured with ``python -m fastseq.ar --seed 0`` (default hyperparameters:
MLP 4 -> 10 ReLU -> 1, Adam lr 0.01, 10 epochs, batches of 16; RNN H = 16 tanh,
chunks of 64 steps, Adam lr 0.003, 600 epochs, clip 1.0), held-out MSE:

    | model  | 1-step | 4-step | 16-step | 64-step |
    | linear | 0.0436 | 0.0513 | 0.0660  | 0.2582  |
    | mlp    | 0.0463 | 0.0580 | 0.1080  | 0.3559  |
    | rnn    | 0.0417 | 0.0481 | 0.0755  | 0.4395  |

One-step errors sit at the noise variance 0.2^2 = 0.04; every model's error
grows with k. Seeds 1-3 show the same growth; the RNN's 64-step error varies
most across seeds (0.27-1.41), the linear model's least (0.24-0.26). The RNN
row is on the C++ ops (the default); on the NumPy ops (``backend='numpy'``)
the epoch losses agree to 1e-13 for 200 epochs and to 1e-5 at 300, then the
rounding differences have grown in this chaotic training and the row reads 0.0412, 0.0471,
0.0726, 0.2728: a difference of the size of the variation across seeds.
"""
import sys

import numpy as np

from ._checks import check_int, check_real
from .bptt import Full
from .errors import ArgumentError, FastseqError
from .optim import Adam
from .rnn import RNN

__all__ = [
    "lag_features", "LinearAR", "MLPAR", "RNNAR", "sine_series", "book_experiment",
    "format_table", "plot_experiment", "main",
]


# ----------------------------------------------------------------------------- checks
def _check_seed(seed):
    """None (fresh entropy) or an integer >= 0, as np.random.default_rng takes."""
    if seed is None:
        return None
    try:
        return check_int("seed", seed, 0)
    except ArgumentError:
        raise ArgumentError(f"seed: expected None or an integer >= 0, got {seed!r}") from None


def _check_series(series, min_len, name="series"):
    """A finite 1-D float64 copy of `series` with at least `min_len` points."""
    try:
        a = np.asarray(series)
    except (TypeError, ValueError):                      # e.g. ragged nested lists
        raise ArgumentError(f"{name}: expected a 1-D sequence of real numbers") from None
    if a.dtype.kind not in "iuf":                        # no bool, complex, str or object
        raise ArgumentError(f"{name}: expected a 1-D sequence of real numbers, got dtype {a.dtype}")
    x = a.astype(np.float64)                             # always a copy
    if x.ndim != 1:
        raise ArgumentError(f"{name}: expected a 1-D array, got shape {x.shape}")
    if x.shape[0] < min_len:
        raise ArgumentError(f"{name}: expected at least {min_len} points, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ArgumentError(f"{name}: expected finite values, got {x[bad]} at index {bad}")
    return x


# ----------------------------------------------------------------------------- features
def lag_features(series, tau):
    """The lagged windows of a 1-D series: (features (n - tau, tau), targets (n - tau,)).

    features[j, i] = x_{j+i}, i.e. for the target t = j + tau column i holds
    x_{t-tau+i}; targets[j] = x_{j+tau}. Needs n >= tau + 1 finite points.
    """
    tau = check_int("tau", tau, 1)
    x = _check_series(series, tau + 1)
    N = x.shape[0] - tau
    features = np.stack([x[i:i + N] for i in range(tau)], axis=1)   # column i: x_{t-tau+i}
    return features, x[tau:].copy()


# ----------------------------------------------------------------------------- window models
class _WindowAR:
    """Shared by the autoregressive models: x_hat_t = f(x_{t-tau}, ..., x_{t-1})."""

    def _check_fitted(self):
        if not self.fitted:
            raise FastseqError(f"{type(self).__name__}: call fit(series) before predicting")

    def predict_windows(self, windows):
        """windows (B, tau), column i = x_{t-tau+i} -> predictions of x_t (B,)."""
        self._check_fitted()
        try:
            w = np.asarray(windows, dtype=np.float64)
        except (TypeError, ValueError):
            raise ArgumentError(f"windows: expected real numbers of shape (B, {self.tau})") from None
        if w.ndim != 2 or w.shape[1] != self.tau:
            raise ArgumentError(f"windows: expected shape (B, {self.tau}), got {w.shape}")
        if not np.all(np.isfinite(w)):
            raise ArgumentError("windows: expected finite values")
        return self._f(w)

    def predict(self, series):
        """One step ahead: series (n,) -> predictions of x_tau, ..., x_{n-1} (n - tau,)."""
        self._check_fitted()
        features, _ = lag_features(series, self.tau)
        return self._f(features)

    def predict_multistep(self, series, k):
        """k steps ahead feeding predictions back: series (n,) -> (n - tau - k + 1, k).

        Row j observes x_j..x_{j+tau-1}; column h-1 predicts x_{j+tau+h-1}.
        """
        self._check_fitted()
        k = check_int("k", k, 1)
        x = _check_series(series, self.tau + k)
        N = x.shape[0] - self.tau - k + 1
        buf = np.empty((N, self.tau + k))                           # observed, then predicted
        for i in range(self.tau):
            buf[:, i] = x[i:i + N]
        for h in range(k):
            buf[:, self.tau + h] = self._f(buf[:, h:h + self.tau])  # last tau values, fed back
        return buf[:, self.tau:]


class LinearAR(_WindowAR):
    """Linear autoregression x_hat_t = sum_i coef[i] x_{t-tau+i} (+ intercept), least squares.

    After fit: coef_ (tau,) in the column order of lag_features (coef_[tau-1]
    multiplies x_{t-1}), intercept_ (0.0 when intercept=False).
    """

    def __init__(self, tau, intercept=True):
        self.tau = check_int("tau", tau, 1)
        self.intercept = bool(intercept)
        self.coef_, self.intercept_, self.fitted = None, 0.0, False

    def fit(self, series):
        """Least squares on the lag features of `series` (n,); returns self."""
        features, targets = lag_features(series, self.tau)
        A = np.hstack([features, np.ones((len(features), 1))]) if self.intercept else features
        w, *_ = np.linalg.lstsq(A, targets, rcond=None)
        self.coef_ = w[:self.tau].copy()
        self.intercept_ = float(w[self.tau]) if self.intercept else 0.0
        self.fitted = True
        return self

    def _f(self, w):
        return w @ self.coef_ + self.intercept_


class MLPAR(_WindowAR):
    """A small MLP on the window: tau -> hidden ReLU -> 1, trained on MSE with Adam.

    params: W1 (tau, hidden), b1 (hidden,), W2 (hidden, 1), b2 (1,).
    Initialisation: rng = np.random.default_rng(seed); W1 then W2 Xavier-uniform
    (limit sqrt(6 / (fan_in + fan_out))), biases zero. Training: `epochs`
    passes over the rows in a shuffled order (the same rng), minibatches of
    `batch_size`, loss = mean over the batch of (x_hat - x)^2. After fit:
    loss_history_ holds the mean training loss of every epoch (float).
    """

    def __init__(self, tau, hidden=10, lr=0.01, epochs=10, batch_size=16, seed=0):
        self.tau = check_int("tau", tau, 1)
        self.hidden = check_int("hidden", hidden, 1)
        self.lr = check_real("lr", lr, lo=0, lo_open=True)
        self.epochs = check_int("epochs", epochs, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = seed = _check_seed(seed)
        self.rng = np.random.default_rng(seed)
        lim1 = np.sqrt(6 / (self.tau + self.hidden))
        lim2 = np.sqrt(6 / (self.hidden + 1))
        self.params = {
            "W1": self.rng.uniform(-lim1, lim1, (self.tau, self.hidden)),
            "b1": np.zeros(self.hidden),
            "W2": self.rng.uniform(-lim2, lim2, (self.hidden, 1)),
            "b2": np.zeros(1),
        }
        self.loss_history_, self.fitted = [], False

    def _forward(self, w):
        p = self.params
        Z = w @ p["W1"] + p["b1"]                  # pre-activation (B, hidden)
        A = np.maximum(Z, 0)                       # ReLU
        return (A @ p["W2"] + p["b2"])[:, 0], A    # x_hat (B,), A kept for backward

    def _f(self, w):
        return self._forward(w)[0]

    def loss_and_grad(self, windows, targets):
        """MSE of the windows (B, tau) against targets (B,) and its gradient dict."""
        p = self.params
        y_hat, A = self._forward(windows)
        r = y_hat - targets
        loss = float(np.mean(r * r))
        dy = (2 / len(r)) * r[:, None]              # dL/dx_hat (B, 1)
        dA = (dy @ p["W2"].T) * (A > 0)             # back through W2 and the ReLU
        grads = {"W1": windows.T @ dA, "b1": dA.sum(0), "W2": A.T @ dy, "b2": dy.sum(0)}
        return loss, grads

    def fit(self, series):
        """Train on the lag features of `series` (n,); returns self (training continues on refit)."""
        features, targets = lag_features(series, self.tau)
        opt = Adam(lr=self.lr)
        N = len(targets)
        for _ in range(self.epochs):
            order = self.rng.permutation(N)
            total = 0.0
            for s in range(0, N, self.batch_size):
                idx = order[s:s + self.batch_size]
                loss, grads = self.loss_and_grad(features[idx], targets[idx])
                opt.step(self.params, grads)
                total += loss * len(idx)
            self.loss_history_.append(total / N)
        self.fitted = True
        return self


# ----------------------------------------------------------------------------- latent model
class RNNAR:
    """Latent autoregression: h_t = RNN(h_{t-1}, x_{t-1}), x_hat_t = h_t W_hq + b_q.

    The state is the package's RNN layer (fastseq.RNN, D = 1, float64, on
    ``backend``: 'cpp', the default, or 'numpy') started from zeros at x_0; the read-out W_hq (H, 1), b_q (1,) is
    initialised N(0, 0.1^2) and zero (after the layer, from the same seed).
    `tau` only aligns the predictions with the window models (the first
    prediction is of x_tau); the state sees every observation before it.

    Training (`fit`): the training series is cut into `num_steps` chunks read
    in order with the state carried across chunks (detached, the book's
    sequential partition, B = 1); loss = mean over the chunk of
    (x_hat_t - x_t)^2; Full BPTT inside a chunk; the global gradient norm
    clipped to `clip`; Adam. loss_history_: mean training loss per epoch.
    """

    def __init__(self, tau=4, hidden_size=16, num_steps=64, lr=0.003, epochs=600, clip=1.0, seed=0,
                 backend="cpp"):
        self.tau = check_int("tau", tau, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_steps = check_int("num_steps", num_steps, 1)
        self.lr = check_real("lr", lr, lo=0, lo_open=True)
        self.epochs = check_int("epochs", epochs, 1)
        self.clip = check_real("clip", clip, lo=0, lo_open=True)
        seed = _check_seed(seed)
        self.rnn = RNN(1, self.hidden_size, "tanh", np.float64, seed, backend=backend)
        rng = np.random.default_rng(None if seed is None else seed + 1)
        self.readout = {"W_hq": rng.normal(0, 0.1, (self.hidden_size, 1)), "b_q": np.zeros(1)}
        self.loss_history_, self.fitted = [], False

    def _states(self, x, h0=None):
        """Inputs x (T,) -> states (T, H) after each input, with the cache for backward."""
        Hs, cache = self.rnn.forward(x.reshape(-1, 1, 1), h0)
        return Hs, cache

    def _readout(self, Hs):
        return Hs @ self.readout["W_hq"] + self.readout["b_q"]     # (..., 1)

    def loss_and_grad(self, inputs, targets, h0=None):
        """One chunk: inputs (T,) = x_{s..s+T-1}, targets (T,) = x_{s+1..s+T}, h0 (1, H) or None.

        Returns (loss = mean (x_hat - x)^2, grads {W_xh, W_hh, b_h, W_hq, b_q}
        with Full BPTT inside the chunk, the last state (1, H) as a fresh array).
        """
        Hs, cache = self._states(np.asarray(inputs, dtype=np.float64), h0)   # Hs (T, 1, H)
        r = self._readout(Hs)[:, 0, 0] - targets                   # x_hat - x (T,)
        dO = (2 / len(r)) * r[:, None, None]                       # dL/dx_hat (T, 1, 1)
        grads = {"W_hq": Hs[:, 0, :].T @ dO[:, 0, :], "b_q": dO.sum((0, 1))}
        dHs = dO @ self.readout["W_hq"].T                          # (T, 1, H)
        _, _, g = self.rnn.backward(dHs, cache, bptt=Full())
        grads.update(g)
        return float(np.mean(r * r)), grads, Hs[-1].copy()

    def fit(self, series):
        """Train on `series` (n,) (inputs x_0..x_{n-2}, targets x_1..x_{n-1}); returns self."""
        x = _check_series(series, self.tau + 1)
        opt = Adam(lr=self.lr)
        inputs, targets = x[:-1], x[1:]
        params = dict(self.rnn.params, **self.readout)         # the same arrays, updated in place
        for _ in range(self.epochs):
            h = None
            total = 0.0
            for s in range(0, len(inputs), self.num_steps):
                X, Y = inputs[s:s + self.num_steps], targets[s:s + self.num_steps]
                loss, grads, h = self.loss_and_grad(X, Y, h)      # h carried, detached
                total += loss * len(X)
                self.rnn.ops.clip_grad_norm(grads, self.clip)
                opt.step(params, grads)
            self.loss_history_.append(total / len(inputs))
        self.fitted = True
        return self

    def _check_fitted(self):
        if not self.fitted:
            raise FastseqError("RNNAR: call fit(series) before predicting")

    def predict(self, series):
        """One step ahead: series (n,) -> predictions of x_tau, ..., x_{n-1} (n - tau,)."""
        return self.predict_multistep(series, 1)[:, 0]

    def predict_multistep(self, series, k):
        """k steps ahead feeding predictions back: series (n,) -> (n - tau - k + 1, k).

        Row j has read x_0..x_{j+tau-1} into its state; column h-1 predicts x_{j+tau+h-1}.
        """
        self._check_fitted()
        k = check_int("k", k, 1)
        x = _check_series(series, self.tau + k)
        N = x.shape[0] - self.tau - k + 1
        Hs, _ = self._states(x[:self.tau - 1 + N])                  # state after x_0..x_t
        h = Hs[self.tau - 1:, 0, :]                                 # row j: after x_{j+tau-1} (N, H)
        out = np.empty((N, k))
        for step in range(k):
            out[:, step] = self._readout(h)[:, 0]                   # predict the next value
            if step + 1 < k:
                Hn, _ = self.rnn.forward(out[None, :, step, None].copy(), h)   # feed it back
                h = Hn[0]
        return out


# ----------------------------------------------------------------------------- the experiment
def sine_series(n=1000, noise=0.2, seed=0):
    """The book's data: x_t = sin(0.01 t) + N(0, noise^2), t = 1..n, from default_rng(seed)."""
    n = check_int("n", n, 2)
    noise = check_real("noise", noise, lo=0)
    t = np.arange(1, n + 1, dtype=np.float64)
    return np.sin(0.01 * t) + np.random.default_rng(seed).normal(0, noise, n)


def book_experiment(seed=0, n=1000, tau=4, n_train=600, steps=(1, 4, 16, 64), rnn=True,
                    mlp_epochs=10, rnn_epochs=600):
    """Run the book's experiment ("Sequence Models"); returns a dict.

    Keys: 'series' (n,), 'n_train', 'tau', 'steps', 'models' {name: model},
    'mse' {name: {k: MSE}}, 'preds' {name: {k: predictions (n - n_train - tau,)}}:
    every model and k scored on the same held-out targets x_t,
    t = n_train + tau .. n - 1, each predicted from the observations up to x_{t-k}.
    """
    tau = check_int("tau", tau, 1)
    n_train = check_int("n_train", n_train, 1)
    if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
        raise ArgumentError(f"steps: expected a non-empty sequence of integers >= 1, got {steps!r}")
    steps = tuple(check_int("steps", k, 1) for k in steps)
    if not steps:
        raise ArgumentError("steps: expected a non-empty sequence of integers >= 1, got ()")
    x = sine_series(n, 0.2, seed)
    first = n_train + tau                       # the first held-out target
    if first >= n or first - max(steps) + 1 - tau < 0:
        raise ArgumentError(f"n_train: expected room for held-out targets and a {max(steps)}-step "
                         f"horizon in {n} points, got n_train={n_train}")
    train = x[:n_train + tau]                   # the first n_train rows of lag features
    models = {
        "linear": LinearAR(tau).fit(train),
        "mlp": MLPAR(tau, epochs=mlp_epochs, seed=seed).fit(train),
    }
    if rnn:
        models["rnn"] = RNNAR(tau, epochs=rnn_epochs, seed=seed).fit(train)
    truth = x[first:]
    mse, preds = {}, {}
    for name, m in models.items():
        mse[name], preds[name] = {}, {}
        for k in steps:
            P = m.predict_multistep(x, k)       # row j predicts x_{j+tau+k-1} in its last column
            p = P[first - tau - k + 1:, k - 1]
            preds[name][k] = p
            mse[name][k] = float(np.mean((p - truth) ** 2))
    return dict(series=x, n_train=n_train, tau=tau, steps=steps, models=models, mse=mse, preds=preds)


def format_table(result):
    """The MSE table of book_experiment as Markdown: one row per model, one column per k."""
    steps = result["steps"]
    head = "| model | " + " | ".join(f"{k}-step MSE" for k in steps) + " |"
    rule = "|---|" + "---|" * len(steps)
    rows = [f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in steps) + " |"
            for name, m in result["mse"].items()]
    return "\n".join([head, rule, *rows])


def plot_experiment(result, path):
    """Draw the experiment in one PNG: data and k-step predictions, and MSE against k.

    Needs matplotlib (imported here, Agg backend); raises ImportError without it.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, steps = result["series"], result["steps"]
    first = result["n_train"] + result["tau"]
    t = np.arange(1, len(x) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    ax1.plot(t, x, color="0.7", lw=1, label="data")
    name = "mlp" if "mlp" in result["preds"] else next(iter(result["preds"]))
    for k in steps:
        ax1.plot(t[first:], result["preds"][name][k], lw=1.2, label=f"{name} {k}-step")
    ax1.axvline(t[first], color="k", ls=":", lw=1)
    ax1.set(xlabel="time t", ylabel="x", title="held-out k-step-ahead predictions (right of the line)")
    ax1.legend(fontsize=8, loc="lower left")
    for name, m in result["mse"].items():
        ax2.plot(steps, [m[k] for k in steps], marker="o", label=name)
    ax2.set(xscale="log", yscale="log", xlabel="k (steps ahead)", ylabel="held-out MSE",
            title="error accumulates with k")
    ax2.set_xticks(steps, [str(k) for k in steps])
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    """``python -m fastseq.ar [options]`` runs ``fastseq ar [options]`` (see ``fastseq ar --help``)."""
    from .cli import main as cli_main

    return cli_main(["ar", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
