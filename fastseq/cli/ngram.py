"""N-gram commands: ``ngram fit`` (in memory, out of core, on Dask) and ``ngram eval``."""
import contextlib
import os
import sys
import time

from .. import datasets
from ..errors import ArgumentError
from .args import (CLEANING_CHOICES, TOKEN_CHOICES, UsageError, add_common, add_corpus_options, check_output,
                   cleaning, finite, int_at_least, one_line, optional_import, print_json, sub)
from .corpus import STDIN, sentences

EXAMPLES_NGRAM = """examples:
  fastseq ngram fit timemachine --cleaning d2l --order 3 --arpa tm3.arpa
  fastseq ngram eval tm3.arpa heldout.txt
"""

EXAMPLES_NGRAM_FIT = """examples:
  fastseq ngram fit timemachine --cleaning d2l --order 3 --smoothing kn --arpa tm3.arpa
  fastseq ngram fit tinyshakespeare --token char --order 7 --discount-fallback --arpa chars7.arpa
  fastseq ngram fit ./my.txt --order 2 --smoothing laplace --eps 1 --arpa my2.arpa --json
  fastseq ngram fit part-*.txt --order 5 --memory 2G --tmp /scratch --arpa big5.arpa   # out of core
  fastseq ngram fit part-*.txt --order 5 --workers 4 --arpa big5.arpa                  # a local Dask cluster
  fastseq ngram fit part-*.txt --order 5 --scheduler tcp://host:8786 --arpa big5.arpa  # a running one

--arpa records --token and --cleaning in the file's header, and `fastseq ngram eval` reads the text the
same way. --memory, --workers and --scheduler fit word models (Kneser-Ney or Laplace) without holding the
corpus in memory; the model, and its ARPA file, are those of the in-memory fit, byte for byte.
"""

EXAMPLES_NGRAM_EVAL = """examples:
  fastseq ngram eval tm3.arpa ./heldout.txt            # read as the fit read its corpus (--cleaning d2l)
  fastseq ngram eval chars7.arpa ./heldout.txt --token char
  echo "the time traveller" | fastseq ngram eval tm3.arpa -      # the text from standard input
  fastseq ngram eval tm3.arpa ./heldout.txt --json
"""


def add_parsers(subparsers, corpora):
    ng = sub(subparsers, "ngram", "n-gram language models: fit (Laplace or Kneser-Ney) and evaluate", EXAMPLES_NGRAM)
    ngs = ng.add_subparsers(dest="ngram_command", metavar="SUBCOMMAND", parser_class=type(ng))
    f = sub(ngs, "fit", "fit an n-gram model on a corpus (one sentence per line) and write it as ARPA",
            EXAMPLES_NGRAM_FIT)
    f.add_argument("corpus", nargs="+", help=f"corpus names ({corpora}), text files, or - for standard input; "
                                            "several are one corpus, in order")
    f.add_argument("--order", type=int_at_least(1), default=3, help="n-gram order (default: 3)")
    f.add_argument("--smoothing", choices=("kn", "laplace"), default="kn",
                   help="kn: interpolated modified Kneser-Ney (Chen & Goodman 1998, as KenLM's lmplz); laplace: "
                        "additive smoothing (Dive into Deep Learning, section \"Language Models\") (default: kn)")
    f.add_argument("--eps", type=finite(0), default=1.0, help="Laplace's eps (default: 1)")
    f.add_argument("--discount-fallback", action="store_true",
                   help="Kneser-Ney: use discounts 0.5, 1, 1.5 where the estimate is out of range (as lmplz)")
    add_corpus_options(f)
    f.add_argument("--arpa", metavar="OUT.arpa", help="write the model in ARPA format (with --token and "
                                                       "--cleaning in its header, for ngram eval)")
    f.add_argument("--memory", metavar="SIZE", type=memory_size,
                   help="count out of core within SIZE bytes (2G, 500M; as lmplz -S), sorted runs spilled to "
                        "--tmp; word tokens only; with --workers/--scheduler, each worker's budget (default: 1G)")
    f.add_argument("--tmp", metavar="DIR", help="where --memory (or each worker) spills its runs (default: the "
                                                "system's temporary folder)")
    f.add_argument("--workers", type=int_at_least(1), metavar="N",
                   help="fit on a local Dask cluster of N worker processes (needs: pip install 'fastseq[dask]')")
    f.add_argument("--scheduler", metavar="ADDRESS",
                   help="fit on the running Dask cluster at ADDRESS (tcp://host:8786); the files must be "
                        "readable at the same paths on every worker")
    add_common(f)
    f.set_defaults(func=cmd_ngram_fit)

    e = sub(ngs, "eval", "perplexity of an ARPA model on a text (one sentence per line), with and without OOVs",
            EXAMPLES_NGRAM_EVAL)
    e.add_argument("model", help="an ARPA file (from fastseq ngram fit --arpa, or KenLM's lmplz)")
    e.add_argument("text", help=f"a text file, a corpus name ({corpora}), or - for standard input")
    add_corpus_options(e, default_from="the model's, recorded by ngram fit --arpa")
    add_common(e)
    e.set_defaults(func=cmd_ngram_eval)


# --------------------------------------------------------------------------- ngram
def memory_size(s):
    """An argparse type: a byte budget as fastseq.ngram.outofcore takes it ("2G", "500M", bytes)."""
    import argparse
    from ..ngram.outofcore import parse_memory
    try:
        parse_memory(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes as an integer or like 2G, 500M (at least 1K), "
                                         f"got {s!r}") from None
    return s


def word_lines(raw, clean):
    """The sentences of raw text (one line of a file, or more) as the in-memory fit reads them: each
    line cleaned and split into words by fastseq.text's rule, joined by single spaces for the
    out-of-core counter (which splits on whitespace, and no word holds any); empty lines dropped.
    Module-level: Dask workers run it on their partitions."""
    from ..text import clean as clean_line, tokenize

    return [" ".join(t) for t in tokenize([clean_line(ln, clean) for ln in raw.splitlines()], "word") if t]


class _Sentences:
    """The word sentences of the named corpora, streamed; counts what passed (for the report)."""

    def __init__(self, names, clean):
        self.names, self.clean = names, clean
        self.sentences = self.tokens = 0

    def __iter__(self):
        for name in self.names:
            for raw in self._raw_lines(name):
                for line in word_lines(raw, self.clean):
                    self.sentences += 1
                    self.tokens += line.count(" ") + 1
                    yield line

    @staticmethod
    def _raw_lines(name):
        if name == STDIN:
            return sys.stdin
        if name in datasets.names() or not os.path.isfile(name):   # as datasets.load: names first
            return datasets.load(name).splitlines()
        return _stream(name)


def _stream(path):
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start} of a block)") from None


def _check_scale_options(args):
    """'memory', 'cluster' or None: how ngram fit counts; the flags that do not go together refused."""
    cluster = args.workers is not None or args.scheduler is not None
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("--workers: starts a local cluster; not with --scheduler (a running one)")
    if args.tmp is not None:
        if args.memory is None and not cluster:
            raise UsageError("--tmp: where --memory or the workers spill their runs; give --memory SIZE too")
        if not os.path.isdir(args.tmp):
            raise UsageError(f"--tmp {args.tmp}: not a folder")
    if args.memory is None and not cluster:
        return None
    flag = "--memory" if not cluster else ("--workers" if args.workers is not None else "--scheduler")
    if args.token != "word":
        raise UsageError(f"--token {args.token}: {flag} fits word models (a character model of any corpus "
                         "fits in memory: leave out " + flag + ")")
    if cluster:
        for name in args.corpus:
            if name == STDIN or name in datasets.names() or not os.path.isfile(name):
                what = "standard input" if name == STDIN else name
                raise UsageError(f"{what}: {flag} reads text files (the workers open them); not a file")
        optional_import("dask.distributed", flag, extra="dask")
        return "cluster"
    return "memory"


def _new_model(args):
    from .. import ngram

    if args.smoothing == "laplace":
        return ngram.LaplaceLM(args.order, eps=args.eps)
    return ngram.KneserNeyLM(args.order, discount_fallback=True if args.discount_fallback else None)


def cmd_ngram_fit(args):
    from .. import ngram

    scale = _check_scale_options(args)
    clean = cleaning(args.cleaning)
    sents = None
    if scale is None:
        sents = [s for name in args.corpus for s in sentences(name, args.token, clean)]
        if not sents:
            raise UsageError(f"{' '.join(args.corpus)}: the corpus has no tokens")
    if args.arpa is not None:
        check_output(args.arpa, "--arpa")
    t0 = time.perf_counter()
    model = _new_model(args)
    stream = _Sentences(args.corpus, clean)
    try:
        if scale is None:
            model.fit(sents)
        elif scale == "memory":
            model.fit_files([stream], memory=args.memory, tmp_dir=args.tmp)
        else:
            _fit_on_cluster(model, args, clean)
    except ngram.BadDiscountError as e:
        # The library's advice names its Python argument; the command's user needs the flag.
        problem = str(e).split(" Use a lower order")[0]
        raise UsageError(f"{problem} Use a lower --order, or --discount-fallback for lmplz's fallback "
                         "discounts D1=0.5 D2=1 D3+=1.5.") from None
    except ArgumentError:
        if scale != "memory" or stream.sentences:
            raise
        raise UsageError(f"{' '.join(args.corpus)}: the corpus has no tokens") from None
    fit_s = time.perf_counter() - t0
    if args.arpa:
        model.to_arpa(args.arpa, meta={"token": args.token, "cleaning": args.cleaning})
    result = {
        "corpus": args.corpus[0] if len(args.corpus) == 1 else args.corpus, "order": args.order,
        "smoothing": args.smoothing, "token": args.token, "cleaning": args.cleaning,
        "memory": args.memory, "workers": args.workers, "scheduler": args.scheduler,
        # Out of core the corpus is never held, so the training perplexity (a second pass) is left out.
        "sentences": len(sents) if sents is not None else (stream.sentences if scale == "memory" else None),
        "tokens": int(sum(len(s) for s in sents)) if sents is not None else
        (stream.tokens if scale == "memory" else None),
        "fit_seconds": round(fit_s, 4),
        "train_perplexity": float(model.perplexity(sents).including_oov) if sents is not None else None,
        "arpa": args.arpa,
    }
    if args.json:
        print_json(result)
        return 0
    name = "Kneser-Ney" if args.smoothing == "kn" else f"Laplace (eps {args.eps})"
    where = "" if scale is None else (f" within {args.memory}" if scale == "memory" else " on the Dask cluster")
    size = "" if result["tokens"] is None else \
        f" on {result['tokens']:,} {args.token}s ({result['sentences']:,} sentences)"
    print(f"fitted a {args.order}-gram {name} model{size}{where} in {fit_s:.2f} s")
    if result["train_perplexity"] is not None:
        print(f"training perplexity {result['train_perplexity']:.3f}")
    if args.arpa:
        print(f"wrote {args.arpa}")
    return 0


def _fit_on_cluster(model, args, clean):
    """fastseq.ngram.distributed.fit on the files: each worker reads its blocks and applies the
    command's word rule (word_lines) before counting, so the model is the in-memory fit's."""
    import dask.bag as db

    from ..ngram import distributed

    bag = db.read_text(list(args.corpus), blocksize="64MiB", encoding="utf-8").map(word_lines, clean).flatten()
    with contextlib.ExitStack() as stack:
        try:
            client = stack.enter_context(distributed.cluster(args.scheduler, args.workers))
        except OSError as e:       # no scheduler at the address (after Dask's connect timeout), no free port
            flag = f"--scheduler {args.scheduler}" if args.scheduler else f"--workers {args.workers}"
            raise UsageError(f"{flag}: cannot reach or start the Dask cluster ({one_line(e)})") from None
        distributed.fit(client, bag, model.order, model=model, memory=args.memory or "1G", tmp_dir=args.tmp)


def _token_and_cleaning(args, model):
    """--token and --cleaning of ngram eval: given, else recorded by ngram fit --arpa, else the
    defaults; a flag that contradicts the record is refused (the perplexity would be meaningless)."""
    meta = getattr(model, "meta", None) or {}
    chosen = {}
    for key, choices, default in (("token", TOKEN_CHOICES, "word"), ("cleaning", CLEANING_CHOICES, "none")):
        saved, given = meta.get(key), getattr(args, key)
        if saved is not None and saved not in choices:
            raise UsageError(f"{args.model}: its header records {key} {saved!r}, not one of "
                             f"{', '.join(choices)} (was the file edited?)")
        if given is not None and saved is not None and given != saved:
            raise UsageError(f"--{key} {given}: {args.model} was fitted with --{key} {saved}; "
                             f"leave --{key} out to read the text as the fit did")
        chosen[key] = given or saved or default
    return chosen["token"], chosen["cleaning"]


def cmd_ngram_eval(args):
    from .. import ngram

    try:
        model = ngram.load_arpa(args.model)
    except FileNotFoundError:
        raise UsageError(f"{args.model}: no such ARPA file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{args.model}: cannot be read as an ARPA file ({e})") from None
    args.token, args.cleaning = _token_and_cleaning(args, model)
    sents = sentences(args.text, args.token, cleaning(args.cleaning))
    where = "standard input" if args.text == STDIN else args.text
    if not sents:
        raise UsageError(f"{where}: the text has no tokens")
    p = model.perplexity(sents)
    result = {"model": args.model, "text": args.text, "token": args.token, "cleaning": args.cleaning,
              "perplexity_including_oov": float(p.including_oov),
              "perplexity_excluding_oov": float(p.excluding_oov),
              "tokens": int(p.tokens), "oov": int(p.oov)}
    if args.json:
        print_json(result)
        return 0
    print(f"{where}: {result['tokens']:,} tokens (each </s> counted), {result['oov']:,} OOV")
    print(f"perplexity including OOVs {result['perplexity_including_oov']:.4f}")
    print(f"perplexity excluding OOVs {result['perplexity_excluding_oov']:.4f}")
    return 0
