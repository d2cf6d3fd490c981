"""The ``fastseq`` command (also ``python -m fastseq``): a thin face over the library.

One module per group of commands (``corpus``: stats and n-grams; ``train``; ``sample``: generate
and eval; ``compare``: compare-bptt; ``diagnostics``: grad-norms; ``ar``), ``args`` for what they
share and ``plots`` for the figures. ``main`` maps the library's own errors to exit statuses: a
FastseqError or a usage error prints one line and exits 2, a diverged run exits 1, Ctrl-C 130;
any other exception is a bug and keeps its traceback.
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
