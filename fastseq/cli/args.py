"""What every command shares: usage errors, argparse types, output (text or --json), optional imports."""
import argparse
import json
import math
import os
import sys

from ..errors import FastseqError

CLEANING_CHOICES = ("none", "d2l", "unicode")
TOKEN_CHOICES = ("word", "char")


class UsageError(FastseqError):
    """A bad argument or input given to the command: one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2) instead of the usage block."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def sub(subparsers, name, help, epilog):
    """A subcommand whose --help shows ``help`` and the examples in ``epilog`` as written."""
    return subparsers.add_parser(name, help=help, description=help, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def int_at_least(lo, hi=None):
    """An argparse type: an integer in [lo, hi], else a one-line usage error."""
    def conv(s):
        try:
            v = int(s)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            bound = f">= {lo}" if hi is None else f"in [{lo}, {hi:,}]"
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {s!r}")
        return v
    conv.__name__ = "integer"
    return conv


def finite(lo=None, lo_open=True):
    """An argparse type: a finite number (> lo, or >= lo with lo_open=False)."""
    def conv(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)):
            bound = "" if lo is None else (f" > {lo}" if lo_open else f" >= {lo}")
            raise argparse.ArgumentTypeError(f"expected a finite number{bound}, got {s!r}")
        return v
    conv.__name__ = "number"
    return conv


def fraction(s):
    """An argparse type: a number in [0, 1), e.g. a dropout probability."""
    try:
        v = float(s)
    except ValueError:
        v = None
    if v is None or not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s!r}")
    return v


def orders(s):
    """An argparse type: comma-separated n-gram orders such as 3,5."""
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected orders like 3,5, got {s!r}") from None
    if not v or any(o < 1 for o in v):
        raise argparse.ArgumentTypeError(f"expected orders >= 1 like 3,5, got {s!r}")
    return v


def training_threads():
    """`fastseq train`'s default --threads: the cores this process may use, at most 2. On a shared 2-core
    machine two threads made the LSTM step (H=128, B=32, T=35) 1.6x faster in wall time for the same CPU
    time per step (bench/RESULTS.md); more than two were never measured."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def add_common(p, json_flag=True, threads=False, default_threads=1):
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    if threads:
        why = ("the cores this process may use, at most 2" if default_threads != 1 else
               "a second core pays off only when it is idle")
        p.add_argument("--threads", type=int_at_least(1), default=default_threads,
                       help=f"cores the C++ kernels may use (fastseq.set_num_threads; default: {default_threads}, "
                            f"{why}; a run resumed with the same count continues bit-identically)")


def add_corpus_options(p, token="word", default_from=None):
    """--token and --cleaning; with default_from (e.g. "the model's"), both default to None so the
    command can take them from a file and tell a flag given from one left out."""
    tail = (lambda d: f"default: {d}") if default_from is None else \
        (lambda d: f"default: {default_from}, else {d}")
    p.add_argument("--token", choices=TOKEN_CHOICES, default=token if default_from is None else None,
                   help=f"token unit ({tail(token)})")
    p.add_argument("--cleaning", choices=CLEANING_CHOICES, default="none" if default_from is None else None,
                   help="line cleaning: none (raw), d2l (the rule of Dive into Deep Learning, "
                        f"section \"Text Preprocessing\"), unicode ({tail('none')})")


def cleaning(v):
    """The command's cleaning name as fastseq.text takes it ('none' -> None)."""
    return None if v in (None, "none") else v


def one_line(e):
    """The first line of an error's message (its type's name if it has none)."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def info(args, *parts, **kw):
    """Human-readable output: stdout normally, stderr under --json (stdout is the JSON)."""
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    print(*parts, file=stream, flush=True, **kw)


def finite_or_none(obj):
    """A copy of a JSON-able result with NaN/inf as null: JSON has no NaN (json.dumps would write `NaN`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def print_json(obj):
    """The --json result: one strict JSON object on stdout."""
    print(json.dumps(finite_or_none(obj), ensure_ascii=False, allow_nan=False))


def optional_import(module, what, extra="cli"):
    """Import an optional dependency, or a usage error saying how to install it."""
    top = module.split(".")[0]
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UsageError(f"{what} needs the '{top}' package: pip install {top} "
                         f"(or pip install 'fastseq[{extra}]')") from None


def check_output(path, option):
    """An output file name: its folder must exist and the name must not be a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder; expected a file name")
    return path


def progress_bar(args, total, initial, desc, unit="step"):
    """A tqdm bar on stderr; without tqdm installed, a one-time note and no bar."""
    if getattr(args, "no_progress", False):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        args.no_progress = True
        info(args, "(no progress bar: the 'tqdm' package is not installed; pip install tqdm, "
                   "or pip install 'fastseq[cli]')")
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.25)
