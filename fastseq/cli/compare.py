"""``fastseq compare-bptt``: the same model trained with full, truncated and randomized BPTT, measured."""
from . import plots
from .args import CLEANING_CHOICES, UsageError, add_common, finite, fraction, info, int_at_least, print_json, sub
from .runs import CELL_CHOICES, TRAIN_DEFAULTS, new_model, prepare_data, smoke, strategy, trainer

EXAMPLES_BPTT = """examples:
  fastseq compare-bptt                           # built-in corpus, full vs truncated vs randomized
  fastseq compare-bptt timemachine --cleaning d2l --strategies full,block:5,random:0.2 --plot bptt.png
  fastseq compare-bptt --cell lstm --strategies full,block:5   # a strategy means the same for every cell

Strategies: full BPTT over each window; block:K and sliding:K truncation (Dive into
Deep Learning, chapter 8, "Backpropagation Through Time"); random:P randomized
truncation (Tallec & Ollivier, "Unbiasing Truncated Backpropagation Through Time", 2017).
"""


def add_parsers(subparsers, corpora):
    c = sub(subparsers, "compare-bptt", "train the same model with full, truncated and randomized BPTT and "
            "compare held-out perplexity and wall time", EXAMPLES_BPTT)
    c.add_argument("corpus", nargs="?", default="pydoc", help=f"a corpus name ({corpora}) or a text file")
    c.add_argument("--token", choices=("char", "word"), default="char")
    c.add_argument("--cleaning", choices=CLEANING_CHOICES, default="none")
    c.add_argument("--strategies", default="full,block:5,sliding:5,random:0.2",
                   help="comma-separated strategies (default: full,block:5,sliding:5,random:0.2)")
    c.add_argument("--max-tokens", type=int_at_least(0), default=0, help="first N tokens, 0 for all (default: 0)")
    c.add_argument("--cell", choices=CELL_CHOICES, default="rnn_tanh",
                   help="recurrent cell, as fastseq train's (default: rnn_tanh, the book's plain RNN)")
    c.add_argument("--layers", type=int_at_least(1), default=1, help="stacked layers L (default: 1)")
    c.add_argument("--dropout", type=fraction, default=0.0, help="dropout probability in training (default: 0)")
    c.add_argument("--hidden", type=int_at_least(1), default=128, help="hidden units H (default: 128)")
    c.add_argument("--steps", type=int_at_least(1), default=35, help="time steps T (default: 35)")
    c.add_argument("--batch", type=int_at_least(1), default=32, help="batch size B (default: 32)")
    c.add_argument("--lr", type=finite(0), default=1.0, help="SGD learning rate, the book's (default: 1)")
    c.add_argument("--clip", type=finite(0, lo_open=False), default=1.0, help="clipping theta (default: 1)")
    c.add_argument("--epochs", type=int_at_least(1), default=8, help="epochs (default: 8)")
    c.add_argument("--seed", type=int_at_least(0), default=0, help="one random seed for every strategy (default: 0)")
    c.add_argument("--backend", choices=("cpp", "numpy"))
    c.add_argument("--plot", metavar="FILE.png", default="bptt.png", help="output PNG (default: bptt.png)")
    c.add_argument("--no-progress", action="store_true")
    add_common(c, threads=True)
    c.set_defaults(func=cmd_compare_bptt)


def cmd_compare_bptt(args):
    plot = plots.check_png(args.plot)
    if plot:
        plots.pyplot()
    specs = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not specs:
        raise UsageError("--strategies: expected a comma-separated list such as full,block:5,random:0.2")
    for s in specs:
        strategy({"bptt": s, "seed": args.seed})
    base = smoke(dict(TRAIN_DEFAULTS, corpus=args.corpus, token=args.token, cleaning=args.cleaning,
                      max_tokens=args.max_tokens, cell=args.cell, layers=args.layers, dropout=args.dropout,
                      hidden=args.hidden, steps=args.steps, batch=args.batch,
                      lr=args.lr, clip=args.clip, epochs=args.epochs, seed=args.seed, optimizer="sgd",
                      dtype="float32", val_fraction=0.1))
    vocab, train_ids, val_ids = prepare_data(base)
    info(args, f"corpus {args.corpus} ({args.token}s): {len(train_ids):,} training tokens, "
               f"{len(val_ids):,} held out; {args.cell} H={base['hidden']} x {args.layers} layers, batch {args.batch} x {args.steps} steps, "
               f"{args.epochs} epochs, lr {args.lr:g}, clip {args.clip:g}, same random seeds for every strategy")
    rows = [_one_strategy(args, dict(base, bptt=spec), vocab, train_ids, val_ids) for spec in specs]
    if plot:
        plots.bptt(rows, plot, f"BPTT strategies on {args.corpus} ({args.token}s), {args.cell} H={base['hidden']}, "
                               f"T={args.steps}")
    if args.json:
        print_json({"corpus": args.corpus, "strategies": rows, "plot": plot})
    elif plot:
        print(f"plot: {plot}")
    return 0


def _one_strategy(args, hp, vocab, train_ids, val_ids):
    """Train one strategy epoch by epoch on the engine; its held-out curve and training time."""
    from ..training import DivergenceError, evaluate

    spec = hp["bptt"]
    tr = trainer(hp, new_model(hp, len(vocab), args.backend), train_ids, val_ids, progress=not args.no_progress)
    curve = [{"step": 0, "val_ppl": evaluate(tr.model, val_ids)}]
    seconds = 0.0
    try:
        for rec in tr.fit(hp["epochs"]):
            seconds += rec["seconds"]
            curve.append({"step": rec["step"], "train_ppl": rec["train_ppl"], "val_ppl": rec["val_ppl"],
                          "train_seconds": seconds})
        row = {"bptt": spec, "final_val_ppl": curve[-1]["val_ppl"],
               "train_seconds": round(seconds, 3), "curve": curve}
    except DivergenceError as e:
        row = {"bptt": spec, "error": f"diverged at step {e.step} (epoch {e.epoch}): {e.what} is {e.value}",
               "curve": curve}
    if "error" in row:
        info(args, f"{spec:>14}: {row['error']}")
    else:
        info(args, f"{spec:>14}: held-out perplexity {row['final_val_ppl']:.3f}, training {row['train_seconds']:.1f} s")
    return row
