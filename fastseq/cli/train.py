"""``fastseq train``: the main job, an RNN language model trained with progress, held-out perplexity
per epoch, Kneser-Ney baselines, a sample and a plot; checkpoints, Ctrl-C and resume."""
import math
import os
import time

from .. import datasets
from . import plots
from .args import (UsageError, add_common, finite, info, int_at_least, optional_import, orders, print_json,
                   progress_bar, sub, CLEANING_CHOICES)
from .run import (DEFAULT_LR, RUN_KEYS, TRAIN_DEFAULTS, Run, TrainingError, hparams_from_args, prepare_data)
from .sample import check_prefix, sample

EXAMPLES_TRAIN = """examples:
  fastseq train                                  # built-in offline corpus, characters, under a minute
  fastseq train --corpus timemachine --cleaning d2l --hidden 512 --steps 35 --batch 32 --lr 1 --clip 1
  fastseq train --bptt block:10 --epochs 5 --out runs/tm
  fastseq train --bptt random:0.2 --optimizer adam --lr 0.005
  fastseq train --resume runs/tm --epochs 10     # continue (or extend) an interrupted run
  fastseq train --corpus ./my.txt --token word --json > result.json

--bptt: full BPTT over each window, block:K or sliding:K truncation (Dive into Deep
Learning, chapter 8, "Backpropagation Through Time"), random:P randomized truncation
(Tallec & Ollivier, "Unbiasing Truncated Backpropagation Through Time", 2017).
--clip: global-norm gradient clipping (Dive into Deep Learning, "Recurrent Neural
Network Implementation from Scratch").

Ctrl-C stops cleanly: the last complete checkpoint stays in the run folder and
`fastseq train --resume DIR` continues the same run (same data order, same
random draws), ending with the same weights as an uninterrupted run.
Without --out, each run gets a new folder: fastseq-train, fastseq-train-2, ...
"""

DEFAULT_OUT = "fastseq-train"


class _StopAfter(Exception):
    pass


def add_parsers(subparsers, corpora):
    t = sub(subparsers, "train", "train an RNN language model, with progress, held-out perplexity, an n-gram "
            "baseline, a sample and a plot", EXAMPLES_TRAIN)
    d = TRAIN_DEFAULTS
    t.add_argument("--corpus", help=f"a corpus name ({corpora}) or a text file (default: {d['corpus']}, offline)")
    t.add_argument("--token", choices=("char", "word"), help=f"token unit (default: {d['token']})")
    t.add_argument("--cleaning", choices=CLEANING_CHOICES, help="line cleaning (default: none)")
    t.add_argument("--max-tokens", type=int_at_least(0),
                   help=f"use only the first N tokens, 0 for all (default: {d['max_tokens']:,})")
    t.add_argument("--hidden", type=int_at_least(1), help=f"hidden units H (default: {d['hidden']})")
    t.add_argument("--steps", type=int_at_least(1), help=f"time steps T per batch (default: {d['steps']})")
    t.add_argument("--batch", type=int_at_least(1), help=f"batch size B (default: {d['batch']})")
    t.add_argument("--optimizer", choices=("sgd", "adam"), help=f"optimizer (default: {d['optimizer']})")
    t.add_argument("--lr", type=finite(0), help="learning rate (default: "
                   + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    t.add_argument("--clip", type=finite(0, lo_open=False),
                   help=f"gradient clipping threshold theta, 0 for none (default: {d['clip']:g})")
    t.add_argument("--epochs", type=int_at_least(1), help=f"epochs (default: {d['epochs']})")
    t.add_argument("--bptt", help="full | block:K | sliding:K | random:P (default: full over the T steps)")
    t.add_argument("--sampling", choices=("sequential", "random"),
                   help="minibatches: sequential (state carries over) or random (default: sequential)")
    t.add_argument("--nonlinearity", choices=("tanh", "relu"), help="phi (default: tanh)")
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
    add_common(t, threads=True)
    t.set_defaults(func=cmd_train)


def _fresh_default_out(args):
    """The default run folder: fastseq-train, or the first of fastseq-train-2, -3, ... not taken.

    A second run of the README's command must work; it never touches an earlier run.
    """
    from ..checkpoint import META_FILE

    out, n = DEFAULT_OUT, 1
    while os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        n += 1
        out = f"{DEFAULT_OUT}-{n}"
    if n > 1:
        earlier = DEFAULT_OUT if n == 2 else f"{DEFAULT_OUT}-{n - 1}"
        hint = (f" (continue it with fastseq train --resume {earlier})"
                if os.path.exists(os.path.join(earlier, META_FILE)) else "")
        info(args, f"{earlier} holds an earlier run{hint}; this run writes to {out}")
    return out


def _save(run, out, hp_extra=None):
    from .. import checkpoint

    return checkpoint.save(out, run.model, run.vocab, dict(run.hp, **(hp_extra or {})), step=run.step,
                           resume=run.resume_state(), history=run.history)


def cmd_train(args):
    from .. import checkpoint

    optional_import("safetensors.numpy", "saving checkpoints")
    if args.resume:
        # The run continues on the backend it was trained on (bit-identical), unless --backend says otherwise.
        saved = checkpoint.load(args.resume, backend="numpy").hparams.get("backend")
        ck = checkpoint.load(args.resume, backend=args.backend or saved, resume=True)
        hp = dict(ck.hparams)
        hp["backend"] = getattr(ck.model, "backend", "numpy")
        lacking = [k for k in (*RUN_KEYS, "epochs") if k not in hp]
        if lacking:
            raise UsageError(f"--resume {args.resume}: the checkpoint's hparams lack {', '.join(lacking)} "
                             "(fastseq.json was edited or damaged)")
        for k in RUN_KEYS:
            given = getattr(args, k, None)
            if given is not None and given != hp.get(k):
                raise UsageError(f"--{k.replace('_', '-')}: cannot change when resuming "
                                 f"(the run in {args.resume} has {hp.get(k)!r})")
        try:
            vocab, train_ids, val_ids = prepare_data(hp)
        except (UsageError, datasets.DatasetError):
            raise
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise UsageError(f"--resume {args.resume}: the checkpoint's hparams are damaged ({what})") from None
        if vocab.idx_to_token != ck.vocab.idx_to_token:
            raise UsageError(f"--resume {args.resume}: the corpus {hp['corpus']!r} no longer gives the "
                             "checkpoint's vocabulary (has the file changed?)")
        try:
            run = Run(hp, args.backend, ck.vocab, train_ids, val_ids, model=ck.model)
            run.load_resume_state(ck.resume, ck.step, ck.history)
        except UsageError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            what = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise UsageError(f"--resume {args.resume}: the saved training state in fastseq.json is damaged "
                             f"({what})") from None
        out = args.out or args.resume
    else:
        hp = hparams_from_args(args)
        vocab, train_ids, val_ids = prepare_data(hp)
        run = Run(hp, args.backend, vocab, train_ids, val_ids)
        hp["backend"] = getattr(run.model, "backend", "numpy")
        out = args.out or _fresh_default_out(args)
    if args.resume:
        done = run.epoch   # epochs completed by the saved run
        if args.epochs is not None:
            if args.epochs <= done:
                raise UsageError(f"--epochs {args.epochs}: the run in {args.resume} has already done {done} "
                                 f"epochs; pass more to extend it")
            hp["epochs"] = args.epochs
        elif done >= hp["epochs"]:
            raise UsageError(f"--resume {args.resume}: the run has finished its {done} epochs; "
                             f"extend it with --epochs N (N > {done})")
    if args.prefix is not None:
        check_prefix(run.vocab, hp["token"], args.prefix)   # before training, not after it
    if args.plot:
        plots.check_png(args.plot)
        plots.pyplot()   # an explicit --plot needs matplotlib: say so before training, not after
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out}: exists and is not a folder")
    holds_checkpoint = os.path.exists(os.path.join(out, checkpoint.META_FILE))
    same_folder = args.resume and os.path.exists(out) and os.path.samefile(out, args.resume)
    if holds_checkpoint and not same_folder and not args.overwrite:
        hint = (f"continue it with --resume {out}, or pass --overwrite / another --out" if not args.resume
                else f"pass another --out (or leave it out to continue in {args.resume}), or --overwrite")
        raise UsageError(f"--out {out}: already holds a checkpoint of another run; {hint}")
    if not holds_checkpoint and os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise UsageError(f"--out {out}: is a folder with other files, not a fastseq checkpoint; "
                         "pass a new or empty folder (or --overwrite to write into it)")
    os.makedirs(out, exist_ok=True)
    plot = args.plot or os.path.join(out, "train.png")
    model = run.model
    per_epoch = len(run.loader)
    info(args, f"corpus {hp['corpus']} ({hp['token']}s): {len(train_ids):,} training tokens, "
                f"{len(val_ids):,} held out, vocabulary {len(run.vocab)}")
    info(args, f"model RNNLM V={model.vocab_size} H={hp['hidden']} {hp['nonlinearity']} {hp['dtype']} "
                f"on {getattr(model, 'backend', 'numpy')}; {hp['optimizer']} lr {hp['lr']:g}, clip {hp['clip']:g}, "
                f"bptt {hp['bptt']}, batch {hp['batch']} x {hp['steps']} steps, "
                f"{hp['epochs']} epochs of {per_epoch} steps")
    if args.resume:
        info(args, f"resuming {args.resume} at step {run.step} (epoch {run.epoch + 1}, batch {run.batch})")
    last_save = [time.monotonic()]
    saved_step = [run.step if args.resume else None]

    def on_step(r):
        due = (args.save_every and r.step % args.save_every == 0) or \
              (not args.save_every and time.monotonic() - last_save[0] > 30)
        if due:
            _save(r, out)
            saved_step[0] = r.step
            last_save[0] = time.monotonic()
        if args.stop_after is not None and r.step >= args.stop_after:
            if saved_step[0] != r.step:
                _save(r, out)
                saved_step[0] = r.step
            raise _StopAfter()

    t_start = time.perf_counter()
    try:
        if not args.resume:
            _save(run, out)   # step 0: even a run stopped at once can be resumed
            saved_step[0] = 0
        while run.epoch < hp["epochs"]:
            bar = progress_bar(args, per_epoch, run.batch, f"epoch {run.epoch + 1}/{hp['epochs']}")
            try:
                rec = run.run_epoch(on_step=on_step, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
            _save(run, out)
            saved_step[0] = run.step
            last_save[0] = time.monotonic()
            val = "n/a" if rec["val_ppl"] is None else f"{rec['val_ppl']:.3f}"
            info(args, f"epoch {rec['epoch']}: train perplexity {rec['train_ppl']:.3f}, held-out {val}, "
                        f"{rec['tokens_per_s']:,.0f} tokens/s, mean gradient norm {rec['mean_grad_norm']:.3f}")
    except KeyboardInterrupt:
        if saved_step[0] is None:
            info(args, f"\ninterrupted at step {run.step}, before the first checkpoint was complete")
        else:
            info(args, f"\ninterrupted at step {run.step}; the last complete checkpoint (step {saved_step[0]}) "
                        f"is in {out}; continue with: fastseq train --resume {out}")
        if args.json:
            print_json({"status": "interrupted", "checkpoint": out, "checkpoint_step": saved_step[0]})
        return 130
    except _StopAfter:
        info(args, f"stopped after step {run.step} (--stop-after); checkpoint in {out}")
        if args.json:
            print_json({"status": "stopped", "checkpoint": out, "checkpoint_step": run.step})
        return 0
    except TrainingError as e:
        info(args, f"last complete checkpoint: step {saved_step[0]} in {out}")
        raise e
    train_s = time.perf_counter() - t_start

    result = {"status": "done", "checkpoint": out, "steps": run.step, "epochs": run.history["epochs"],
              "train_seconds": round(train_s, 3), "hparams": hp}
    final_val = run.history["epochs"][-1]["val_ppl"] if run.history["epochs"] else None
    result["val_ppl"] = final_val
    # Held-out comparison against Kneser-Ney n-gram models of the same tokens.
    result["ngram"] = _ngram_baselines(args, run) if not args.no_ngram and len(val_ids) >= 2 else []
    drawn = sample(run.model, run.vocab, hp["token"], args.prefix, args.sample_length, seed=hp["seed"],
                   corpus=hp["corpus"])
    result["sample"] = drawn
    result["plot"] = None
    if run.history["epochs"]:
        try:
            plots.training(run.history["epochs"], run.history["log"], result["ngram"], plot,
                           f"{hp['corpus']} ({hp['token']}s), H={hp['hidden']}, bptt {hp['bptt']}")
            result["plot"] = plot
        except UsageError as e:   # matplotlib missing: the run itself is fine, say what is lacking
            if args.plot:
                raise
            info(args, f"(no plot: {e})")
    result["total_seconds"] = round(time.perf_counter() - t_start, 3)
    if args.json:
        print_json(result)
    else:
        if final_val is not None:
            print(f"\nheld-out perplexity ({len(val_ids):,} tokens):")
            print(f"  RNN (H={hp['hidden']})        {final_val:10.3f}")
            for g in result["ngram"]:
                if "error" in g:
                    print(f"  Kneser-Ney {g['order']}-gram   (not fitted: {g['error']})")
                else:
                    print(f"  Kneser-Ney {g['order']}-gram   {g['val_ppl']:10.3f}")
        print(f"\nsample (temperature 0.8, seed {hp['seed']}):\n{drawn['prefix']}{drawn['text']}\n")
        if result["plot"]:
            print(f"curves: {plot}")
        print(f"checkpoint: {out}   (fastseq generate {out} -n 200 --temperature 0.8)")
        print(f"time: {train_s:.1f} s training, {result['total_seconds']:.1f} s in all")
    return 0


def _ngram_baselines(args, run):
    """Kneser-Ney models of orders --ngram-orders fitted on the training ids, scored on the held-out ids.

    Both models see the same token ids; the n-gram model reads them as one
    long sentence (one <s>, one </s>), so its perplexity counts one token
    more than the RNN's, which predicts ids[1:] from ids[:-1].
    """
    from .. import ngram
    from ..errors import FastseqError

    tok = run.vocab.idx_to_token
    train = [[tok[i] for i in run.train_ids.tolist()]]
    val = [[tok[i] for i in run.val_ids.tolist()]]
    out = []
    for order in args.ngram_orders:
        rec = {"order": order}
        try:
            t0 = time.perf_counter()
            # Character unigrams are too few for lmplz's discount estimate; use its fallback there.
            model = ngram.KneserNeyLM(order, discount_fallback=True)
            model.fit(train)
            p = model.perplexity(val)
            rec.update(val_ppl=float(p.including_oov), seconds=round(time.perf_counter() - t0, 3))
        except (ngram.BadDiscountError, FastseqError) as e:
            rec["error"] = str(e).splitlines()[0]
        out.append(rec)
    return out


