"""Minibatches over a corpus of ids, the book's two ways.

Both yield ``X, Y`` int32 arrays of shape (batch_size, num_steps) with ``Y``
the next tokens of ``X``, and draw their offsets from a NumPy Generator.

* random sampling: subsequences from a random offset, in random order; two
  neighbouring rows or batches are not adjacent in the text, so a model must
  start from a fresh state for every batch.
* sequential partitioning: the corpus (after a random offset) is split into
  batch_size contiguous streams; row i of batch k+1 continues exactly where
  row i of batch k ended, so a hidden state can carry over (detached).
"""
import numbers

import numpy as np

__all__ = ["SeqDataLoader", "seq_data_iter_random", "seq_data_iter_sequential"]


def _check(corpus, batch_size, num_steps, need):
    corpus = np.asarray(corpus)
    if corpus.ndim != 1 or not np.issubdtype(corpus.dtype, np.integer):
        raise ValueError(f"corpus: expected a 1-D integer array of ids, got {corpus.dtype} {corpus.shape}")
    for name, v in (("batch_size", batch_size), ("num_steps", num_steps)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if len(corpus) < need:
        raise ValueError(
            f"corpus: {len(corpus)} tokens are too few for batch_size={batch_size} x num_steps={num_steps} "
            f"(need at least {need}); use a longer corpus or smaller batches")
    return corpus.astype(np.int32, copy=False)


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def seq_data_iter_random(corpus, batch_size, num_steps, rng=None):
    """Random sampling (the book's seq_data_iter_random)."""
    # Worst case: the offset eats num_steps - 1 tokens, and Y needs one more.
    corpus = _check(corpus, batch_size, num_steps, batch_size * num_steps + num_steps)
    rng = _rng(rng)
    offset = int(rng.integers(0, num_steps))
    corpus = corpus[offset:]
    num_subseqs = (len(corpus) - 1) // num_steps
    starts = np.arange(0, num_subseqs * num_steps, num_steps)
    rng.shuffle(starts)
    steps = np.arange(num_steps)
    for i in range(0, (num_subseqs // batch_size) * batch_size, batch_size):
        idx = starts[i:i + batch_size, None] + steps
        yield corpus[idx], corpus[idx + 1]


def seq_data_iter_sequential(corpus, batch_size, num_steps, rng=None):
    """Sequential partitioning (the book's seq_data_iter_sequential)."""
    corpus = _check(corpus, batch_size, num_steps, batch_size * num_steps + num_steps + 1)
    rng = _rng(rng)
    offset = int(rng.integers(0, num_steps + 1))
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = corpus[offset:offset + num_tokens].reshape(batch_size, -1)
    Ys = corpus[offset + 1:offset + 1 + num_tokens].reshape(batch_size, -1)
    for i in range(0, (Xs.shape[1] // num_steps) * num_steps, num_steps):
        yield np.ascontiguousarray(Xs[:, i:i + num_steps]), np.ascontiguousarray(Ys[:, i:i + num_steps])


class SeqDataLoader:
    """An iterable over epochs of (X, Y) minibatches; each pass draws a new offset.

    ``sampling``: 'sequential' (state carries over between batches) or 'random'
    (state is re-initialised for every batch); ``carries_state`` says which.
    The Generator's state is part of ``state_dict()`` so a run can resume.
    """

    def __init__(self, corpus, batch_size, num_steps, sampling="sequential", seed=None):
        if sampling not in ("sequential", "random"):
            raise ValueError(f"sampling: expected 'sequential' or 'random', got {sampling!r}")
        self._iter = seq_data_iter_sequential if sampling == "sequential" else seq_data_iter_random
        _check(corpus, batch_size, num_steps, batch_size * num_steps + num_steps + 1)
        self.corpus = np.asarray(corpus, dtype=np.int32)
        self.batch_size, self.num_steps, self.sampling = batch_size, num_steps, sampling
        self.rng = np.random.default_rng(seed)

    @property
    def carries_state(self):
        return self.sampling == "sequential"

    def __iter__(self):
        return self._iter(self.corpus, self.batch_size, self.num_steps, self.rng)

    def __len__(self):
        """Batches per epoch (the smallest over the possible offsets)."""
        n, B, T = len(self.corpus), self.batch_size, self.num_steps
        if self.sampling == "random":
            return ((n - T) // T) // B
        return ((n - T - 1) // B) // T

    def state_dict(self):
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["bit_generator"]
