"""``fastseq train``: the main job, an RNN language model trained with progress, held-out perplexity
per epoch, Kneser-Ney baselines, a sample and a plot; checkpoints, Ctrl-C and resume."""
import os
import time

from ..errors import FastseqError
from ..optim import DEFAULT_LR
from ..training import Callback, DivergenceError, TrainingInterrupted
from . import plots, runs
from .args import (CLEANING_CHOICES, UsageError, add_common, finite, fraction, info, int_at_least, optional_import,
                   orders, print_json, sub, training_threads)
from .runs import CELL_ADAM_LR, CELL_CHOICES, DEFAULT_OUT, MAIN_JOB_MINUTES, TRAIN_DEFAULTS
from .sample import check_prefix, sample
from .train_help import train_epilog


def add_parsers(subparsers, corpora):
    t = sub(subparsers, "train", "train an RNN language model, with progress, held-out perplexity, an n-gram "
            "baseline, a sample and a plot", train_epilog())
    d = TRAIN_DEFAULTS
    t.add_argument("--corpus", help=f"a corpus name ({corpora}) or a text file (default: {d['corpus']}, offline)")
    t.add_argument("--token", choices=("char", "word"), help=f"token unit (default: {d['token']})")
    t.add_argument("--cleaning", choices=CLEANING_CHOICES, help="line cleaning (default: none)")
    t.add_argument("--max-tokens", type=int_at_least(0),
                   help=f"use only the first N tokens, 0 for all (default: {d['max_tokens']:,})")
    by_budget = "; with a time budget, the budget's: see below"
    t.add_argument("--hidden", type=int_at_least(1), help=f"hidden units H (default: {d['hidden']}{by_budget})")
    t.add_argument("--steps", type=int_at_least(1),
                   help=f"time steps T per batch (default: {d['steps']}{by_budget})")
    t.add_argument("--batch", type=int_at_least(1), help=f"batch size B (default: {d['batch']})")
    t.add_argument("--optimizer", choices=("sgd", "adam"), help=f"optimizer (default: {d['optimizer']})")
    t.add_argument("--lr", type=finite(0), help="learning rate (default: "
                   + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + "; Adam's is "
                   + ", ".join(f"{v:g} for {c}" for c, v in CELL_ADAM_LR.items()) + "); with --resume it may "
                   "change, e.g. lower for fine-tuning")
    t.add_argument("--lr-decay-to", type=finite(0, lo_open=False), metavar="F",
                   help="the learning rate decays along a half cosine from --lr to F times it over the run "
                        "(its progress: the larger of the time budget's and the epochs'); 1 keeps it "
                        f"constant (default: {d['lr_decay_to']:g}{by_budget})")
    t.add_argument("--lr-hold", type=finite(0, lo_open=False), metavar="F",
                   help=f"the fraction of the run at the full rate before the decay starts (default: {d['lr_hold']:g})")
    t.add_argument("--weight-decay", type=finite(0, lo_open=False), metavar="L",
                   help="Adam's decoupled weight decay: every step first multiplies the weights by 1 - lr * L, as "
                        "torch.optim.AdamW (Loshchilov & Hutter, \"Decoupled Weight Decay Regularization\", "
                        f"2019); not with --optimizer sgd (default: {d['weight_decay']:g}{by_budget})")
    t.add_argument("--clip", type=finite(0, lo_open=False),
                   help=f"gradient clipping threshold theta, 0 for none (default: {d['clip']:g})")
    t.add_argument("--epochs", type=int_at_least(1), help=f"epochs (default: {d['epochs']})")
    t.add_argument("--minutes", type=finite(0), help="a wall-clock budget for training besides --epochs "
                   "(the run stops with a checkpoint when it is spent; --resume continues; default: none, "
                   f"except {MAIN_JOB_MINUTES:g} when neither --epochs nor --minutes is given)")
    t.add_argument("--bptt", help="full | block:K | sliding:K | random:P (default: full over the T steps)")
    t.add_argument("--sampling", choices=("sequential", "random"),
                   help="minibatches: sequential (state carries over) or random (default: sequential)")
    t.add_argument("--cell", choices=CELL_CHOICES, help=f"recurrent cell (default: {d['cell']}{by_budget}); supersedes "
                   "--nonlinearity")
    t.add_argument("--layers", type=int_at_least(1), help=f"stacked layers L (default: {d['layers']}{by_budget})")
    t.add_argument("--dropout", type=fraction,
                   help=f"dropout probability P in training (default: {d['dropout']:g}{by_budget})")
    t.add_argument("--input-dropout", type=fraction, metavar="P",
                   help=f"dropout probability of the input rows W_xh[ids] alone (default: --dropout's{by_budget})")
    t.add_argument("--nonlinearity", choices=("tanh", "relu"),
                   help="phi of the plain RNN, the older spelling of --cell rnn_tanh / rnn_relu")
    t.add_argument("--dtype", choices=("float32", "float64"), help="parameter dtype (default: float32)")
    t.add_argument("--seed", type=int_at_least(0),
                   help="random seed of the initialisation, data order and BPTT draws (default: 0)")
    t.add_argument("--val-fraction", type=finite(0, lo_open=False),
                   help=f"the last fraction of tokens held out (default: {d['val_fraction']})")
    t.add_argument("--backend", choices=("cpp", "numpy"), help="cpp (default when built) or numpy (the reference)")
    t.add_argument("--out", help=f"checkpoint folder (default: {DEFAULT_OUT}, or {DEFAULT_OUT}-2, ... if taken; "
                                 "with --resume, the resumed folder)")
    t.add_argument("--overwrite", action="store_true", help="start afresh even if --out holds a checkpoint")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    t.add_argument("--save-every", type=int_at_least(0), default=0,
                   help="checkpoint every N steps (default: 0 = every 30 s and at each epoch end)")
    t.add_argument("--stop-after", type=int_at_least(1), metavar="STEPS",
                   help="stop (with a checkpoint) after this many steps in all, as an interruption would")
    t.add_argument("--ngram-orders", type=orders, default=[3, 5],
                   help="Kneser-Ney orders for the held-out comparison (default: 3,5)")
    t.add_argument("--no-ngram", action="store_true", help="skip the n-gram comparison")
    t.add_argument("--prefix", help="prefix of the final sample (default: 'A class ' for pydoc, else 'The ')")
    t.add_argument("--sample-length", type=int_at_least(0), default=200,
                   help="tokens in the final sample (default: 200)")
    t.add_argument("--plot", metavar="FILE.png", help="perplexity curves (default: OUT/train.png)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(t, threads=True, default_threads=training_threads())
    t.set_defaults(func=cmd_train)




class TrainingError(FastseqError):
    """The run cannot go on (NaN/inf): one line naming the step and the options to change, exit status 1."""


def diverged(e, hp):
    """The engine's DivergenceError in the command's words (its options, not the API's arguments)."""
    hint = ("gradient clipping (--clip 1; it is off)" if not hp["clip"]
            else f"stronger clipping (a --clip below {hp['clip']:g})")
    return TrainingError(f"step {e.step} (epoch {e.epoch}): {e.what} is {e.value}, training stopped; "
                         f"try {hint} or a lower learning rate (--lr below {hp['lr']:g})")


class _Checkpoints(Callback):
    """Saves every 30 s (or --save-every steps) and at each epoch end; stops after --stop-after steps."""

    def __init__(self, args, out, hp, vocab):
        self.args, self.out, self.hp, self.vocab = args, out, hp, vocab
        self.saved_step, self.last = None, time.monotonic()

    def save(self, tr):
        from .. import checkpoint

        if self.saved_step != tr.step:
            checkpoint.save(self.out, tr.model, self.vocab, self.hp, step=tr.step, resume=tr.state_dict(),
                            history={"epochs": tr.history, "log": tr.log})
            self.saved_step, self.last = tr.step, time.monotonic()

    def on_step(self, tr, info_):
        every = self.args.save_every
        if (every and tr.step % every == 0) or (not every and time.monotonic() - self.last > 30):
            self.save(tr)
        if self.args.stop_after is not None and tr.step >= self.args.stop_after:
            self.save(tr)
            return False

    def on_epoch_end(self, tr, r):
        self.save(tr)
        val = "n/a" if r["val_ppl"] is None else f"{r['val_ppl']:.3f}"
        info(self.args, f"epoch {r['epoch']}: train perplexity {r['train_ppl']:.3f}, held-out {val}, "
                        f"{r['tokens_per_s']:,.0f} tokens/s, mean gradient norm {r['grad_norm_mean']:.3f}")


def _threads(args, backend):
    """', 2 threads' after the backend: how many cores the C++ kernels use (the NumPy reference ignores it)."""
    return f", {args.threads} thread{'s' if args.threads > 1 else ''}" if backend == "cpp" else ""


def _wd(hp):
    """', weight decay L' when the run has one."""
    return f", weight decay {hp['weight_decay']:g}" if hp.get("weight_decay") else ""


def _decay(hp):
    """' decaying to X (cosine)' when the run's learning rate follows the schedule."""
    f = hp.get("lr_decay_to", 1.0)
    return f" decaying to {hp['lr'] * f:g} (cosine over the run)" if f < 1 else ""


def _progress(args):
    """A progress bar unless --no-progress; without tqdm, say once how to get one."""
    if args.no_progress:
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        info(args, "(no progress bar: the 'tqdm' package is not installed; pip install tqdm, "
                   "or pip install 'fastseq[cli]')")
        return False
    return True


def _setup(args):
    """(hp, vocab, train ids, held-out ids, trainer without callbacks yet, out) of a new or resumed run."""
    if args.resume:
        hp, ck, vocab, train_ids, val_ids = runs.resume(args)
        tr = runs.trainer(hp, ck.model, train_ids, val_ids, progress=_progress(args))
        try:
            tr.load_state_dict(ck.resume)
        except ValueError as e:
            raise UsageError(f"--resume {args.resume}: the saved training state is damaged ({e})") from None
        done = tr.epoch
        if args.epochs is not None:
            if args.epochs <= done:
                raise UsageError(f"--epochs {args.epochs}: the run in {args.resume} has already done {done} "
                                 f"epochs; pass more to extend it")
            hp["epochs"] = args.epochs
        elif done >= hp["epochs"]:
            raise UsageError(f"--resume {args.resume}: the run has finished its {done} epochs; "
                             f"extend it with --epochs N (N > {done})")
        if args.lr is not None and args.lr != hp["lr"]:
            info(args, f"learning rate {args.lr:g} from here on (the run used {tr.lr:g})" if tr.schedule is None
                 else f"learning rate {args.lr:g} from here on, times the decay's {tr.schedule.factor(tr.schedule.progress):.3g} "
                      f"at this point of the run (the run used {tr.lr:g})")
            tr.lr = hp["lr"] = args.lr
        return hp, vocab, train_ids, val_ids, tr, args.out or args.resume
    hp = runs.hparams_from_args(args)
    vocab, train_ids, val_ids = runs.prepare_data(hp)
    model = runs.new_model(hp, len(vocab), args.backend)
    hp["backend"] = model.backend
    tr = runs.trainer(hp, model, train_ids, val_ids, progress=_progress(args))
    return hp, vocab, train_ids, val_ids, tr, args.out or runs.fresh_default_out(args)


def cmd_train(args):
    optional_import("safetensors.numpy", "saving checkpoints")
    hp, vocab, train_ids, val_ids, tr, out = _setup(args)
    if args.prefix is not None:
        check_prefix(vocab, hp["token"], args.prefix)   # before training, not after it
    if args.plot:
        plots.check_png(args.plot)
        plots.pyplot()   # an explicit --plot needs matplotlib: say so before training, not after
    runs.check_out(args, out)
    plot = args.plot or os.path.join(out, "train.png")
    saver = _Checkpoints(args, out, hp, vocab)
    tr.callbacks.append(saver)
    info(args, f"corpus {hp['corpus']} ({hp['token']}s): {len(train_ids):,} training tokens, "
               f"{len(val_ids):,} held out, vocabulary {len(vocab)}")
    layers = f" x {hp['layers']} layers" if hp["layers"] > 1 else ""
    drop = f", dropout {hp['dropout']:g}" if hp["dropout"] else ""
    if hp.get("input_dropout", hp["dropout"]) != hp["dropout"]:
        drop += f", input dropout {hp['input_dropout']:g}"
    info(args, f"model RNNLM V={len(vocab)} H={hp['hidden']} {hp['cell']}{layers}{drop} {hp['dtype']} "
               f"on {tr.model.backend}{_threads(args, tr.model.backend)}; {hp['optimizer']} lr {tr.lr:g}{_decay(hp)}{_wd(hp)}, clip {hp['clip']:g}, "
               f"bptt {hp['bptt']}, batch {hp['batch']} x {hp['steps']} steps, "
               f"{hp['epochs']} epochs of {len(tr.loader)} steps")
    if args.resume:
        info(args, f"resuming {args.resume} at step {tr.step} (epoch {tr.epoch + 1}, batch {tr.batch})")
    minutes = args.minutes if args.resume else hp["minutes"]
    if args.minutes is None and args.epochs is None and not args.resume:
        # the main job: see runs.MAIN_JOB_MINUTES
        info(args, f"training for {hp['epochs']} epochs or {minutes * 60:g} s, whichever comes first "
                   "(--epochs N or --minutes M to choose)")
    t_start = time.perf_counter()
    try:
        saver.save(tr)   # step 0 (or the resumed step, in --out): a run stopped at once can be resumed
        tr.fit(hp["epochs"], minutes)
    except TrainingInterrupted:
        saver.save(tr)   # the last completed step
        info(args, f"\ninterrupted after step {tr.step}, saved in {out}; continue with: "
                   f"fastseq train --resume {out}")
        if args.json:
            print_json({"status": "interrupted", "checkpoint": out, "checkpoint_step": tr.step})
        return 130
    except DivergenceError as e:
        info(args, f"last complete checkpoint: step {saver.saved_step} in {out}")
        raise diverged(e, hp) from None
    train_s = time.perf_counter() - t_start
    if tr.stop_reason != "epochs":
        saver.save(tr)
        why = "--stop-after" if tr.stop_reason == "callback" else \
            ("--minutes" if args.minutes is not None else f"the main job's budget of {minutes * 60:g} s")
        info(args, f"stopped after step {tr.step} ({why}); checkpoint in {out}; continue with: "
                   f"fastseq train --resume {out}")
        if args.stop_after is not None and tr.step >= args.stop_after:
            if args.json:
                print_json({"status": "stopped", "checkpoint": out, "checkpoint_step": tr.step})
            return 0
    return _report(args, hp, tr, vocab, val_ids, out, plot, train_s, t_start)


def _report(args, hp, tr, vocab, val_ids, out, plot, train_s, t_start):
    """The end of the main job: held-out comparison with n-gram models, a sample, the plot."""
    final_val = tr.history[-1]["val_ppl"] if tr.history else None
    result = {"status": "done" if tr.stop_reason == "epochs" else "stopped", "checkpoint": out, "steps": tr.step,
              "epochs": tr.history, "train_seconds": round(train_s, 3), "hparams": hp, "val_ppl": final_val}
    result["ngram"] = ngram_baselines(args.ngram_orders, tr.loader.corpus, val_ids, vocab) \
        if not args.no_ngram and len(val_ids) >= 2 else []
    drawn = sample(tr.model, vocab, hp["token"], args.prefix, args.sample_length, seed=hp["seed"],
                   corpus=hp["corpus"])
    result["sample"] = drawn
    result["plot"] = None
    if tr.history:
        try:
            plots.training(tr.history, tr.log, result["ngram"], plot,
                           f"{hp['corpus']} ({hp['token']}s), H={hp['hidden']}, bptt {hp['bptt']}")
            result["plot"] = plot
        except UsageError as e:   # matplotlib missing: the run itself is fine, say what is lacking
            if args.plot:
                raise
            info(args, f"(no plot: {e})")
    result["total_seconds"] = round(time.perf_counter() - t_start, 3)
    if args.json:
        print_json(result)
        return 0
    if final_val is not None:
        print(f"\nheld-out perplexity ({len(val_ids):,} tokens):")
        print(f"  RNN (H={hp['hidden']})        {final_val:10.3f}")
        for g in result["ngram"]:
            if "error" in g:
                print(f"  Kneser-Ney {g['order']}-gram   (not fitted: {g['error']})")
            else:
                print(f"  Kneser-Ney {g['order']}-gram   {g['val_ppl']:10.3f}")
    print(f"\nsample (temperature 0.8, random seed {hp['seed']}):\n{drawn['prefix']}{drawn['text']}\n")
    if result["plot"]:
        print(f"curves: {plot}")
    print(f"checkpoint: {out}   (fastseq generate {out} -n 200 --temperature 0.8)")
    print(f"time: {train_s:.1f} s training, {result['total_seconds']:.1f} s in all")
    return 0


def ngram_baselines(orders, train_ids, val_ids, vocab):
    """Kneser-Ney models of ``orders`` (--ngram-orders) fitted on the training ids, scored on the held-out ids.

    Both models see the same token ids; the n-gram model reads them as one
    long sentence (one <s>, one </s>), so its perplexity counts one token
    more than the RNN's, which predicts ids[1:] from ids[:-1].
    """
    from .. import ngram

    tok = vocab.idx_to_token
    train = [[tok[i] for i in train_ids.tolist()]]
    val = [[tok[i] for i in val_ids.tolist()]]
    out = []
    for order in orders:
        t0 = time.perf_counter()
        # Character unigrams are too few for lmplz's discount estimate; use its fallback there.
        model = ngram.KneserNeyLM(order, discount_fallback=True)
        model.fit(train)
        p = model.perplexity(val)
        out.append({"order": order, "val_ppl": float(p.including_oov), "seconds": round(time.perf_counter() - t0, 3)})
    return out
