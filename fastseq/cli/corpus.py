"""Corpus and n-gram commands: ``stats``, ``ngram fit``, ``ngram eval``."""
import sys
import time

import numpy as np

from .. import datasets
from . import plots
from .args import (UsageError, add_common, add_corpus_options, check_output, cleaning, finite, int_at_least,
                   print_json, sub)

EXAMPLES_STATS = """examples:
  fastseq stats                      # the built-in offline corpus (Python's docs)
  fastseq stats timemachine --token word --cleaning d2l
  fastseq stats ./my.txt --top 20 --json
  fastseq stats timemachine --cleaning d2l --plot zipf.png
"""

EXAMPLES_NGRAM = """examples:
  fastseq ngram fit timemachine --cleaning d2l --order 3 --arpa tm3.arpa
  fastseq ngram eval tm3.arpa heldout.txt
"""

EXAMPLES_NGRAM_FIT = """examples:
  fastseq ngram fit timemachine --cleaning d2l --order 3 --smoothing kn --arpa tm3.arpa
  fastseq ngram fit ./my.txt --order 2 --smoothing laplace --eps 1 --arpa my2.arpa --json
"""

EXAMPLES_NGRAM_EVAL = """examples:
  fastseq ngram eval tm3.arpa ./heldout.txt --cleaning d2l
  echo "the time traveller" | fastseq ngram eval tm3.arpa -      # the text from standard input
  fastseq ngram eval tm3.arpa ./heldout.txt --json
"""

STDIN = "-"


def _text(name):
    """The text of a corpus name, a file, or standard input ('-')."""
    if name != STDIN:
        return datasets.load(name)
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as e:
        raise UsageError(f"standard input: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_lines(name, clean):
    """The cleaned lines of a corpus name, a file, or standard input ('-')."""
    from ..text import clean as clean_line, read_lines as read_corpus

    if name != STDIN:
        return read_corpus(name, clean)
    return [clean_line(line, clean) for line in _text(name).splitlines()]


def tokens_of(name, token, clean):
    """(tokens, lines): the tokens a model of the corpus reads, by fastseq.text's one rule (raw characters
    keep line breaks; cleaned lines are joined as the book joins them), from a name, a file or stdin."""
    from ..text import tokenize_text

    text = _text(name)
    return tokenize_text(text, token, clean), text.splitlines()


def sentences(name, token, clean):
    """One token list per non-empty line."""
    from ..text import tokenize

    lines = [ln for ln in read_lines(name, clean) if ln.strip()]
    return [s for s in tokenize(lines, token) if s]


def add_parsers(subparsers, corpora):
    s = sub(subparsers, "stats", "corpus statistics: lines, tokens, vocabulary, most frequent tokens, Zipf's law",
            EXAMPLES_STATS)
    s.add_argument("corpus", nargs="?", default="pydoc",
                   help=f"a corpus name ({corpora}), a text file, or - for standard input (default: pydoc, offline)")
    add_corpus_options(s)
    s.add_argument("--top", type=int_at_least(0), default=10,
                   help="how many of the most frequent tokens to list (default: 10)")
    s.add_argument("--plot", metavar="FILE.png", help="draw the log-log frequency curves of uni/bi/trigrams")
    add_common(s)
    s.set_defaults(func=cmd_stats)

    ng = sub(subparsers, "ngram", "n-gram language models: fit (Laplace or Kneser-Ney) and evaluate", EXAMPLES_NGRAM)
    ngs = ng.add_subparsers(dest="ngram_command", metavar="SUBCOMMAND", parser_class=type(ng))
    f = sub(ngs, "fit", "fit an n-gram model on a corpus (one sentence per line) and write it as ARPA",
            EXAMPLES_NGRAM_FIT)
    f.add_argument("corpus", help=f"a corpus name ({corpora}), a text file, or - for standard input")
    f.add_argument("--order", type=int_at_least(1), default=3, help="n-gram order (default: 3)")
    f.add_argument("--smoothing", choices=("kn", "laplace"), default="kn",
                   help="kn: interpolated modified Kneser-Ney (Chen & Goodman 1998, as KenLM's lmplz); laplace: "
                        "additive smoothing (Dive into Deep Learning, section \"Language Models\") (default: kn)")
    f.add_argument("--eps", type=finite(0), default=1.0, help="Laplace's eps (default: 1)")
    f.add_argument("--discount-fallback", action="store_true",
                   help="Kneser-Ney: use discounts 0.5, 1, 1.5 where the estimate is out of range (as lmplz)")
    add_corpus_options(f)
    f.add_argument("--arpa", metavar="OUT.arpa", help="write the model in ARPA format")
    add_common(f)
    f.set_defaults(func=cmd_ngram_fit)

    e = sub(ngs, "eval", "perplexity of an ARPA model on a text (one sentence per line), with and without OOVs",
            EXAMPLES_NGRAM_EVAL)
    e.add_argument("model", help="an ARPA file (from fastseq ngram fit --arpa, or KenLM's lmplz)")
    e.add_argument("text", help=f"a text file, a corpus name ({corpora}), or - for standard input")
    add_corpus_options(e)
    add_common(e)
    e.set_defaults(func=cmd_ngram_eval)


# --------------------------------------------------------------------------- stats
def cmd_stats(args):
    from ..text import Vocab

    if plots.check_png(args.plot):
        plots.pyplot()
    tokens, lines = tokens_of(args.corpus, args.token, cleaning(args.cleaning))
    if not tokens:
        raise UsageError(f"{args.corpus}: the corpus has no tokens")
    vocab = Vocab(tokens)
    result = {
        "corpus": args.corpus, "token": args.token, "cleaning": args.cleaning,
        "lines": len(lines), "tokens": len(tokens), "vocab_size": len(vocab),
        "most_frequent": vocab.token_freqs[:args.top],
        "zipf": _zipf(tokens, vocab, args),
    }
    if args.json:
        print_json(result)
        return 0
    print(f"corpus      {args.corpus} ({args.token}s, cleaning: {args.cleaning})")
    print(f"lines       {result['lines']:,}")
    print(f"tokens      {result['tokens']:,}")
    print(f"vocabulary  {result['vocab_size']:,} (with <unk>)")
    print(f"most frequent {args.top}:")
    for tok, n in result["most_frequent"]:
        print(f"  {tok!r:>16} {n:>10,}")
    print("Zipf's law, log n_i = -alpha log i + c over the ranks seen at least twice:")
    for o in result["zipf"]["orders"]:
        print(f"  {o['name']:<9} alpha {o['alpha']:.3f} (least squares), {o['alpha_mle']:.3f} (max. likelihood)"
              f"  {o['distinct']:,} distinct, ranks {o['rank_range'][0]}-{o['rank_range'][1]}")
    if args.plot:
        print(f"plot        {args.plot}")
    return 0


def _zipf(tokens, vocab, args):
    """Zipf fits of unigrams, bigrams, trigrams (fastseq.ngram.stats), and the log-log plot.

    Both fits of Dive into Deep Learning's section "Language Models" over ranks
    1..R, R the last rank seen at least twice (the flat tail of singletons is not
    a power law): least squares in log-log, and maximum likelihood for a discrete
    power law.
    """
    from .. import ngram

    ids = np.ascontiguousarray(vocab.encode(tokens), dtype=np.int32)
    names = {1: "unigrams", 2: "bigrams", 3: "trigrams"}
    orders, data, fits = [], {}, {}
    for n in (1, 2, 3):
        if len(ids) < n:
            continue
        _, counts = ngram.count_ngrams(ids, n)[n]
        freqs = np.sort(np.asarray(counts))[::-1]
        if len(freqs) < 2:
            continue
        hi = min(len(freqs), max(2, int(np.count_nonzero(freqs >= 2))))
        lsq = ngram.zipf_lsq(freqs, (1, hi))
        mle = ngram.zipf_mle(freqs, (1, hi))
        orders.append({"order": n, "name": names[n], "distinct": int(len(freqs)), "alpha": lsq.alpha,
                       "c": lsq.c, "alpha_mle": mle.alpha, "c_mle": mle.c, "rank_range": [1, hi]})
        data[n] = (np.arange(1, len(freqs) + 1), freqs)
        fits[n] = lsq
    if args.plot:
        plots.zipf(data, fits, args.plot,
                   f"Zipf's law: {args.corpus} ({args.token}s, cleaning {args.cleaning})")
    return {"orders": orders, "plot": args.plot}


# --------------------------------------------------------------------------- ngram
def cmd_ngram_fit(args):
    from .. import ngram

    sents = sentences(args.corpus, args.token, cleaning(args.cleaning))
    if not sents:
        raise UsageError(f"{args.corpus}: the corpus has no tokens")
    if args.arpa is not None:
        check_output(args.arpa, "--arpa")
    t0 = time.perf_counter()
    if args.smoothing == "laplace":
        model = ngram.LaplaceLM(args.order, eps=args.eps)
    else:
        model = ngram.KneserNeyLM(args.order, discount_fallback=True if args.discount_fallback else None)
    try:
        model.fit(sents)
    except ngram.BadDiscountError as e:
        # The library's advice names its Python argument; the command's user needs the flag.
        problem = str(e).split(" Use a lower order")[0]
        raise UsageError(f"{problem} Use a lower --order, or --discount-fallback for lmplz's fallback "
                         "discounts D1=0.5 D2=1 D3+=1.5.") from None
    fit_s = time.perf_counter() - t0
    if args.arpa:
        model.to_arpa(args.arpa)
    train_ppl = model.perplexity(sents)
    result = {
        "corpus": args.corpus, "order": args.order, "smoothing": args.smoothing, "token": args.token,
        "cleaning": args.cleaning, "sentences": len(sents),
        "tokens": int(sum(len(s) for s in sents)), "fit_seconds": round(fit_s, 4),
        "train_perplexity": float(train_ppl.including_oov), "arpa": args.arpa,
    }
    if args.json:
        print_json(result)
        return 0
    name = "Kneser-Ney" if args.smoothing == "kn" else f"Laplace (eps {args.eps})"
    print(f"fitted a {args.order}-gram {name} model on {result['tokens']:,} {args.token}s "
          f"({result['sentences']:,} sentences) in {fit_s:.2f} s")
    print(f"training perplexity {result['train_perplexity']:.3f}")
    if args.arpa:
        print(f"wrote {args.arpa}")
    return 0


def cmd_ngram_eval(args):
    from .. import ngram

    try:
        model = ngram.load_arpa(args.model)
    except FileNotFoundError:
        raise UsageError(f"{args.model}: no such ARPA file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{args.model}: cannot be read as an ARPA file ({e})") from None
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
