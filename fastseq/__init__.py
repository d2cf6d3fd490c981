"""fastseq: fast classic sequence models on the CPU, with a NumPy reference.

The compiled kernels live in the private modules ``fastseq._core`` (C++,
pybind11) and ``fastseq._text`` (Cython); this package re-exports them behind
a Python API. ``fastseq.reference`` holds the NumPy implementation that every
fast path is tested against.
"""
from importlib.metadata import PackageNotFoundError, version as _version


def _compiled_modules_missing(error):
    """The ImportError to raise when fastseq._core cannot be imported: from a source tree (no
    compiled modules next to this file) say where the user is and what to do, as NumPy does."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "csrc")):
        return ImportError(
            f"fastseq: importing from its source tree ({root}), whose fastseq/ folder has no compiled "
            "kernels (fastseq._core, fastseq._text); Python found it before the installed fastseq "
            "because it is the current folder. Run Python from another folder (cd ..) to use the "
            "installed fastseq, or install from this tree in development mode: "
            "pip install --no-build-isolation -e .")
    return ImportError(f"fastseq: the compiled module fastseq._core cannot be loaded ({error}); "
                       "reinstall fastseq (pip install --force-reinstall fastseq)")


try:
    from . import _core
except ImportError as _e:
    raise _compiled_modules_missing(_e) from None

from . import optim  # noqa: E402
from .bptt import Full, Randomized, Truncated  # noqa: E402
from .clip import clip_grad_norm  # noqa: E402
from .data import SeqDataLoader, seq_data_iter_random, seq_data_iter_sequential  # noqa: E402
from .errors import FastseqError  # noqa: E402
from .rnn import RNN, RNNLM  # noqa: E402
from .text import Vocab, clean, corpus_tokens, load_corpus, read_lines, tokenize, tokenize_text  # noqa: E402
from .training import (Callback, DivergenceError, Trainer, TrainingInterrupted, evaluate,  # noqa: E402
                       predict, sample, train)

try:
    __version__ = _version("fastseq")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"


def build_info():
    """How the kernels were built: BLAS library, version and threads, compiler, ISA flags ('isa': the
    baseline the module is compiled for), and 'kernel_isa', the instruction set the hot kernels run on
    this machine ('avx512', 'avx2' or 'baseline'; FASTSEQ_ISA=avx2 or baseline lowers it)."""
    info = dict(_core.build_info())
    info["version"] = __version__
    return info


_user_set_threads = False     # fastseq.torch follows torch.get_num_threads() until this is set


def set_num_threads(n):
    """Set the number of BLAS threads used by the C++ kernels."""
    global _user_set_threads
    _core.set_num_threads(int(n))
    _user_set_threads = True


def get_num_threads():
    """The number of BLAS threads used by the C++ kernels."""
    return _core.get_num_threads()


__all__ = [
    "Callback", "DivergenceError", "FastseqError", "Full", "RNN", "RNNLM", "Randomized", "SeqDataLoader",
    "Trainer", "TrainingInterrupted", "Truncated", "Vocab", "build_info", "clean", "clip_grad_norm",
    "corpus_tokens", "evaluate", "get_num_threads", "load_corpus", "optim", "predict", "read_lines", "sample",
    "seq_data_iter_random", "seq_data_iter_sequential", "set_num_threads", "tokenize", "tokenize_text", "train",
]
