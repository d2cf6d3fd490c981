"""Corpus commands (``stats``) and the corpus readers every command shares."""
import sys

import numpy as np

from .. import datasets
from . import plots
from .args import UsageError, add_common, add_corpus_options, cleaning, int_at_least, print_json, sub

EXAMPLES_STATS = """examples:
  fastseq stats                      # the built-in offline corpus (Python's docs)
  fastseq stats timemachine --token word --cleaning d2l
  fastseq stats ./my.txt --top 20 --json
  fastseq stats timemachine --cleaning d2l --plot zipf.png
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
