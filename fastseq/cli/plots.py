"""The PNG figures the commands draw (matplotlib, Agg backend, imported only when a plot is asked for)."""
import numpy as np

from .args import UsageError, check_output, optional_import


def pyplot():
    matplotlib = optional_import("matplotlib", "drawing a PNG", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def check_png(path, option="--plot"):
    """None, or a writable file name ending in .png; checked before any work is done."""
    if path is None:
        return None
    if not str(path).lower().endswith(".png"):
        raise UsageError(f"{option}: expected a file name ending in .png, got {path!r}")
    return check_output(path, option)


def _plain_log_y(ax):
    """Log-scaled y axis labelled 3, 4, 6, 10, 20 rather than 3x10^0 (perplexities are small numbers)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(4.0, 6.0, 7.0, 8.0, 9.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _save(plt, fig, path, dpi=None):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def zipf(data, fits, path, title):
    """Log-log frequency against rank of uni/bi/trigrams, each least-squares fit in its curve's colour."""
    from .. import ngram

    plt = pyplot()
    fig = ngram.plot_zipf(data, None, fits=fits)
    ax = fig.axes[0]
    lines = ax.get_lines()
    for curve, fit in zip(lines[0::2], lines[1::2]):
        fit.set_color(curve.get_color())
        fit.set_alpha(0.7)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    fig.set_size_inches(6.4, 4.4)
    _save(plt, fig, path, dpi=120)


def training(epochs, log, ngram_rows, path, title):
    """Training and held-out perplexity against the optimizer step, with the n-gram baselines as lines.

    epochs: [{step, train_ppl, val_ppl}], log: [{step, train_ppl}] (running, per interval).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if log:
        ax.plot([r["step"] for r in log], [r["train_ppl"] for r in log], color="tab:blue", alpha=0.6,
                label="training (running, per interval)")
    ax.plot([r["step"] for r in epochs], [r["train_ppl"] for r in epochs], "o-", color="tab:blue",
            label="training (epoch mean)")
    vals = [(r["step"], r["val_ppl"]) for r in epochs if r["val_ppl"] is not None]
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
    _save(plt, fig, path)


def bptt(rows, path, title):
    """Held-out perplexity per epoch of each BPTT strategy (left) and its training wall time (right)."""
    plt = pyplot()
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
    _save(plt, fig, path)


def _norm_band(ax, norms, color, label):
    """Median of ||dl/dh_t|| (norms: (B, T) by distance) and its 10-90 % band; returns (median, low, high)."""
    d = np.arange(norms.shape[1])
    med = np.median(norms, axis=0)
    lo, hi = np.percentile(norms, [10, 90], axis=0)
    ax.fill_between(d, lo, hi, alpha=0.2, color=color, label=f"{label}: 10-90 % of sequences")
    ax.plot(d, med, color=color, label=f"{label}: median ||dl/dh_t||")
    return med, lo, hi


def _norm_axes(ax, lows, highs, title):
    ax.set_yscale("log")
    pos = np.concatenate([lo[lo > 0] for lo in lows])
    ax.set_ylim(max(pos.min() if pos.size else 1e-300, 1e-300) / 10, max(hi.max() for hi in highs) * 100)
    ax.set_xlabel("distance d = (T-1) - t from the loss term")
    ax.set_ylabel("gradient norm (log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def grad_norms(norms, rho, decay, path, title):
    """Median and 10-90 % band of ||dl/dh_t|| (norms: (B, T) by distance), the observed decay and, for a
    one-layer plain RNN (rho not None), rho^d of the linear model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    d = np.arange(norms.shape[1])
    med, lo, hi = _norm_band(ax, norms, "tab:blue", "this model")
    if rho is not None:
        ax.plot(d, med[0] * rho ** d, "--", color="tab:red",
                label=f"rho(W_hh)^d = {rho:.3f}^d (the linear model, phi' = 1)")
    ax.plot(d, med[0] * decay ** d, ":", color="black", label=f"observed geometric decay {decay:.3f} per step")
    _norm_axes(ax, [lo], [hi], title)
    _save(plt, fig, path)


def grad_norms_compare(models, path, title):
    """Several models in one figure: models = [(label, norms (B, T) by distance, decay per step)]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    lows, highs = [], []
    for i, (label, norms, decay) in enumerate(models):
        _, lo, hi = _norm_band(ax, norms, colors[i % len(colors)], f"{label} (x{decay:.3f} per step)")
        lows.append(lo)
        highs.append(hi)
    _norm_axes(ax, lows, highs, title)
    _save(plt, fig, path)
