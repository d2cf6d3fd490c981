"""The parser of every command, and the one place errors become exit statuses."""
import argparse
import os
import sys

from .. import datasets
from ..errors import FastseqError
from ..training import DivergenceError
from . import ar, compare, corpus, diagnostics, ngram, sample, train
from .args import Parser, one_line
from .train import TrainingError

EXAMPLES_MAIN = """examples:
  fastseq train                          # an RNN on the built-in corpus, with n-gram baselines (< 1 min)
  fastseq generate fastseq-train --prefix "A class " -n 200 --temperature 0.8
  fastseq stats timemachine --cleaning d2l --plot zipf.png
  fastseq ngram fit timemachine --cleaning d2l --order 3 --arpa tm3.arpa
  fastseq compare-bptt --plot bptt.png
  fastseq grad-norms fastseq-train --plot grad-norms.png
  fastseq ar --plot ar.png

exit status: 0 success, 1 a diverged run (or a failed write), 2 a usage error (one line on stderr),
130 Ctrl-C. Anything else (a traceback) is a bug in fastseq: please report it.
"""

# The library's own errors (fastseq.errors: every error fastseq raises on purpose derives from FastseqError):
# a message for the user, never a traceback. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FastseqError,)
DIVERGED = (DivergenceError, TrainingError)

COMMANDS = (corpus, ngram, train, sample, compare, diagnostics, ar)


def build_parser():
    p = Parser(prog="fastseq", description="Fast classic sequence models on the CPU: RNN and n-gram "
               "language models, after Dive into Deep Learning (Zhang, Lipton, Li, Smola), chapter 8. "
               "Run `fastseq COMMAND --help` for a command's options and examples.",
               epilog=EXAMPLES_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fastseq {_pkg_version()}")
    subparsers = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    corpora = ", ".join(datasets.names())
    for module in COMMANDS:
        module.add_parsers(subparsers, corpora)
    return p


def _pkg_version():
    from .. import __version__
    return __version__


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "ngram" and args.ngram_command is None:
        print("fastseq ngram: error: expected a subcommand: fit or eval", file=sys.stderr)
        return 2
    name = args.command if args.command != "ngram" else f"ngram {args.ngram_command}"
    if getattr(args, "threads", None):
        from .. import set_num_threads
        set_num_threads(args.threads)
    try:
        return args.func(args)
    except DIVERGED as e:
        print(f"fastseq {name}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        print(f"fastseq {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastseq {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `fastseq generate ... | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush does not complain
        return 0
    except MemoryError as e:   # the machine, not fastseq: sizes are bounded before the big allocations
        detail = one_line(e) if str(e) else "an allocation failed"
        print(f"fastseq {name}: error: out of memory ({detail}); use smaller sizes", file=sys.stderr)
        return 1
    except OSError as e:
        if not getattr(e, "filename", None):
            raise   # not a file the user named or we write: a bug, keep the traceback
        # Writing a checkpoint, an ARPA file or a plot: disk full, no permission, ...
        print(f"fastseq {name}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 1
