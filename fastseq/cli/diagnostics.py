"""``fastseq grad-norms``: vanishing and exploding gradients on a trained model (Dive into Deep Learning,
chapter 8, "Backpropagation Through Time")."""
import numpy as np

from . import plots
from .args import UsageError, add_common, cleaning, info, int_at_least, print_json, progress_bar, sub
from .runs import smoke_test
from .sample import load_checkpoint

EXAMPLES_GRADNORMS = """examples:
  fastseq grad-norms fastseq-train --plot grad-norms.png
  fastseq grad-norms fastseq-train --text ./heldout.txt --window 100 --json
  fastseq grad-norms runs/rnn runs/lstm --plot grad-norms-cells.png   # a plain RNN against an LSTM

For a one-layer plain RNN the figure also draws rho(W_hh)^d, the linear model of Dive into Deep
Learning, chapter 8, "Backpropagation Through Time"; gated cells (the book's next chapter) carry the
gradient through their gates (and the LSTM's memory cell), so no such line is drawn for them.
"""

# Each window costs one forward and backward pass of --window steps: bound the total before any work
# (and before allocating the windows), so a typo cannot run for hours or exhaust memory.
MAX_STEPS = 2_000_000
SMOKE_SEQUENCES = 8


def add_parsers(subparsers, corpora):
    r = sub(subparsers, "grad-norms", "vanishing/exploding gradients on trained models: ||dl/dh_t|| against the "
            "distance from the loss, and the spectral radius of W_hh", EXAMPLES_GRADNORMS)
    r.add_argument("checkpoint", nargs="+", help="checkpoint folders written by fastseq train (or a file in each); "
                   "several are measured on the same windows and drawn in one figure")
    r.add_argument("--text", help="text to take windows from (default: the held-out part of the training corpus)")
    r.add_argument("--window", type=int_at_least(1), default=100, help="window length T (default: 100)")
    r.add_argument("--sequences", type=int_at_least(1), default=64, help="windows averaged (default: 64)")
    r.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the window starts (default: 0)")
    r.add_argument("--plot", metavar="FILE.png", help="draw the norms against the distance")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(r)
    r.set_defaults(func=cmd_grad_norms)


def _hidden_grad_norms(model, X, Y):
    """||dl_{T-1}/dH_t|| of the last loss term alone, by distance d = T-1-t -> (T,) for one sequence (1, T).

    fastseq.training.state_grad_norms(term=-1) gives the gradient of the window's
    mean loss (over T tokens) restricted to its last term; times T it is the
    gradient of that one token's loss.
    """
    from ..training import state_grad_norms

    return state_grad_norms(model, X, Y, term=-1)[::-1] * X.shape[1]


def _windows_source(args, ck):
    """The token ids windows are drawn from, and their name."""
    from .corpus import tokens_of

    hp = ck.hparams
    text = args.text or hp.get("corpus")
    if text is None:
        raise UsageError("--text: the checkpoint does not name its corpus; pass --text FILE")
    tokens, _ = tokens_of(text, hp.get("token", "char"), cleaning(hp.get("cleaning")))
    ids = ck.vocab.encode(tokens)
    if args.text is None:   # the held-out part of the training corpus, as the run split it
        n = len(ids)
        if hp.get("max_tokens"):
            n = min(n, hp["max_tokens"])
        frac = hp.get("val_fraction", 0.1)
        ids, text = ids[n - int(round(n * frac)):n], f"the held-out part of {text}"
    return ids, text


def model_label(model):
    """A model's cell and sizes in words: 'lstm H=128', 'rnn_tanh H=64 x 2 layers'."""
    cell = getattr(model, "cell", None) or "rnn_" + model.nonlinearity
    layers = getattr(model, "num_layers", 1)
    return f"{cell} H={model.num_hiddens}" + (f" x {layers} layers" if layers > 1 else "")


def _radius(model):
    """(spectral radius, largest singular value) of W_hh where the book's linear argument applies (a
    one-layer plain RNN: the message to h_{t-1} is W_hh^T times phi'), else (None, None): a gated cell's
    W_hh is (H, G*H), and its message also passes through the gates and the LSTM's memory cell."""
    from ..training import spectral_radius

    if getattr(model, "cell", "rnn_")[:4] != "rnn_" or getattr(model, "num_layers", 1) != 1:
        return None, None
    W_hh = np.asarray(model.params["W_hh"], dtype=np.float64)
    return spectral_radius(model), float(np.linalg.norm(W_hh, 2))


def _windows(args, path):
    """(checkpoint, ids, their name, window starts) of one checkpoint, every size checked before any work."""
    ck = load_checkpoint(path, "numpy")
    ids, text = _windows_source(args, ck)
    T, B = args.window, args.sequences
    if smoke_test():
        B = min(B, SMOKE_SEQUENCES)
    if len(ids) < T + 2:
        raise UsageError(f"--window {T}: {text} has {len(ids):,} tokens; use --window {max(1, len(ids) - 2):,} "
                         "or less, or a longer --text")
    if T * B > MAX_STEPS:
        raise UsageError(f"--window {T} x --sequences {B}: {T * B:,} steps of backpropagation; keep the product "
                         f"<= {MAX_STEPS:,}")
    return ck, ids, text, np.random.default_rng(args.seed).integers(0, len(ids) - T - 1, size=B)


def _measure(args, path, windows, bar):
    """(result, norms (B, T) by distance) of one checkpoint."""
    ck, ids, text, starts = windows
    T, B = args.window, len(starts)
    norms = np.empty((B, T))
    for b, s in enumerate(starts):
        window = np.asarray(ids[s:s + T + 1], dtype=np.int32)[None]
        norms[b] = _hidden_grad_norms(ck.model, window[:, :-1], window[:, 1:])
        if bar is not None:
            bar.update(1)
    rho, sigma = _radius(ck.model)
    med = np.median(norms, axis=0)
    # The per-step factor of a geometric fit through the median's first and last points.
    decay = float((med[-1] / med[0]) ** (1.0 / (T - 1))) if T > 1 and med[0] > 0 and med[-1] > 0 else float("nan")
    result = {"checkpoint": path, "model": model_label(ck.model), "step": ck.step, "text": text, "window": T,
              "sequences": B, "spectral_radius_W_hh": rho, "largest_singular_value_W_hh": sigma,
              "median_norm_by_distance": [float(v) for v in med], "decay_per_step": decay}
    return result, norms


def cmd_grad_norms(args):
    plot = plots.check_png(args.plot)
    if plot:
        plots.pyplot()
    if len(set(args.checkpoint)) != len(args.checkpoint):
        raise UsageError(f"checkpoint: {args.checkpoint} names a checkpoint twice")
    windows = [_windows(args, path) for path in args.checkpoint]
    bar = progress_bar(args, sum(len(w[3]) for w in windows), 0, "windows", unit="window")
    try:
        measured = [_measure(args, path, w, bar) for path, w in zip(args.checkpoint, windows)]
    finally:
        if bar is not None:
            bar.close()
    results = [r for r, _ in measured]
    if plot and len(measured) == 1:
        (r, norms), = measured
        plots.grad_norms(norms, r["spectral_radius_W_hh"], r["decay_per_step"], plot,
                         f"dl_(T-1)/dh_t on a trained model ({r['model']}, step {r['step']})")
    elif plot:
        plots.grad_norms_compare([(r["model"], norms, r["decay_per_step"]) for r, norms in measured], plot,
                                 "dl_(T-1)/dh_t against the distance from the loss, models trained on the same text")
    if args.json:
        print_json(dict(results[0], plot=plot) if len(results) == 1 else {"models": results, "plot": plot})
        return 0
    for r in results:
        T = r["window"]
        med = r["median_norm_by_distance"]
        head = f"{r['checkpoint']} ({r['model']}): " if len(results) > 1 else ""
        radius = "" if r["spectral_radius_W_hh"] is None else \
            (f"spectral radius of W_hh {r['spectral_radius_W_hh']:.4f} (largest singular value "
             f"{r['largest_singular_value_W_hh']:.4f}); ")
        info(args, f"{head}{radius}observed decay of the median norm {r['decay_per_step']:.4f} per step")
        print(f"median ||dl/dh_t|| over {r['sequences']} windows of {T} steps, by distance d from the loss:")
        for dd in sorted({0, 1, 2, 5, 10, 20, 50, 100, T - 1}):
            if dd < T:
                print(f"  d = {dd:4d}   {med[dd]:.3e}")
    if plot:
        print(f"plot: {plot}")
    return 0
