"""The ``fastseq`` command (also ``python -m fastseq``).

Usage errors (unknown corpus, unreadable file, bad value) print one line to
stderr and exit with status 2, never a traceback.
"""
import argparse
import json
import sys

from . import datasets

EXAMPLES_STATS = """examples:
  fastseq stats                      # the built-in offline corpus (Python's docs)
  fastseq stats timemachine --token word --cleaning d2l
  fastseq stats ./my.txt --top 20 --json
"""


class UsageError(Exception):
    """A bad argument or input: one line, exit status 2."""


def _parser():
    p = argparse.ArgumentParser(prog="fastseq", description="Fast classic sequence models on the CPU.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("stats", help="corpus statistics: lines, tokens, vocabulary, most frequent tokens",
                       epilog=EXAMPLES_STATS, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("corpus", nargs="?", default="pydoc",
                   help=f"a corpus name ({', '.join(datasets.names())}) or a text file (default: pydoc, offline)")
    s.add_argument("--token", choices=("word", "char"), default="word", help="token unit (default: word)")
    s.add_argument("--cleaning", choices=("none", "d2l", "unicode"), default="none",
                   help="line cleaning: none (raw), d2l (the book's rule), unicode (default: none)")
    s.add_argument("--top", type=int, default=10, help="how many of the most frequent tokens to list (default: 10)")
    s.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    s.set_defaults(func=cmd_stats)
    return p


def cmd_stats(args):
    from .text import Vocab, read_lines, tokenize

    if args.top < 0:
        raise UsageError(f"--top: expected a number >= 0, got {args.top}")
    cleaning = None if args.cleaning == "none" else args.cleaning
    lines = read_lines(args.corpus, cleaning)
    tokens = [t for line in tokenize(lines, args.token) for t in line]
    if not tokens:
        raise UsageError(f"{args.corpus}: the corpus has no tokens")
    vocab = Vocab(tokens)
    result = {
        "corpus": args.corpus, "token": args.token, "cleaning": args.cleaning,
        "lines": len(lines), "tokens": len(tokens), "vocab_size": len(vocab),
        "most_frequent": vocab.token_freqs[:args.top],
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"corpus      {args.corpus} ({args.token}s, cleaning: {args.cleaning})")
    print(f"lines       {result['lines']:,}")
    print(f"tokens      {result['tokens']:,}")
    print(f"vocabulary  {result['vocab_size']:,} (with <unk>)")
    print(f"most frequent {args.top}:")
    for tok, n in result["most_frequent"]:
        print(f"  {tok!r:>16} {n:>10,}")
    return 0


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UsageError, datasets.DatasetError, ValueError) as e:
        print(f"fastseq {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastseq {args.command}: interrupted", file=sys.stderr)
        return 130
