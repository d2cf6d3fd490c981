"""``fastseq ar``: the sine experiment of Dive into Deep Learning, chapter 8, "Sequence Models"."""
from . import plots
from .args import add_common, int_at_least, print_json, sub

EXAMPLES_AR = """examples:
  fastseq ar                      # linear, MLP and latent RNN autoregressive models, k-step-ahead MSE
  fastseq ar --plot ar.png --no-rnn

x_t = sin(0.01 t) + N(0, 0.2^2) for t = 1..1000; the first 600 rows of lag
features (tau = 4) train, the rest is held out. Predicting k steps ahead feeds
predictions back, so the error grows with k (Dive into Deep Learning, chapter 8,
"Sequence Models"). `python -m fastseq.ar` runs this command.
"""


def add_parsers(subparsers, corpora):
    a = sub(subparsers, "ar", "autoregressive models of a noisy sine: k-step-ahead prediction error",
            EXAMPLES_AR)
    a.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the noise and the models "
                   "(default: 0)")
    a.add_argument("--plot", "--png", metavar="FILE.png", help="draw the predictions and the error against k")
    a.add_argument("--no-rnn", action="store_true", help="skip the latent (RNN) model")
    add_common(a)
    a.set_defaults(func=cmd_ar)


def cmd_ar(args):
    from .. import ar

    plot = plots.check_png(args.plot)
    if plot:
        plots.pyplot()
    result = ar.book_experiment(seed=args.seed, rnn=not args.no_rnn)
    if plot:
        ar.plot_experiment(result, plot)
    if args.json:
        print_json({"n": len(result["series"]), "tau": result["tau"], "n_train": result["n_train"],
                    "seed": args.seed, "mse": {m: {str(k): v for k, v in e.items()} for m, e in result["mse"].items()},
                    "plot": plot})
        return 0
    print(f"x_t = sin(0.01 t) + N(0, 0.2^2), n = {len(result['series'])}, tau = {result['tau']}, "
          f"train rows = {result['n_train']}, seed = {args.seed}; held-out targets "
          f"t = {result['n_train'] + result['tau']}..{len(result['series']) - 1}")
    print(ar.format_table(result))
    if plot:
        print(f"figure: {plot}")
    return 0
