"""fastseq: fast classic sequence models on the CPU, with a NumPy reference.

The compiled kernels live in the private modules ``fastseq._core`` (C++,
pybind11) and ``fastseq._text`` (Cython); this package re-exports them behind
a Python API. ``fastseq.reference`` holds the NumPy implementation that every
fast path is tested against.
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import _core, optim
from .bptt import Full, Randomized, Truncated
from .clip import clip_grad_norm
from .data import SeqDataLoader, seq_data_iter_random, seq_data_iter_sequential
from .rnn import RNN, RNNLM
from .text import Vocab, clean, load_corpus, read_lines, tokenize
from .train import DivergenceError, evaluate, predict, train

try:
    __version__ = _version("fastseq")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"


def build_info():
    """How the kernels were built: BLAS library, version and threads, compiler, ISA flags."""
    info = dict(_core.build_info())
    info["version"] = __version__
    return info


def set_num_threads(n):
    """Set the number of BLAS threads used by the C++ kernels."""
    _core.set_num_threads(int(n))


def get_num_threads():
    """The number of BLAS threads used by the C++ kernels."""
    return _core.get_num_threads()


__all__ = [
    "DivergenceError", "Full", "RNN", "RNNLM", "Randomized", "SeqDataLoader", "Truncated", "Vocab",
    "build_info", "clean", "clip_grad_norm", "evaluate", "get_num_threads", "load_corpus", "optim",
    "predict", "read_lines", "seq_data_iter_random", "seq_data_iter_sequential", "set_num_threads",
    "tokenize", "train",
]
