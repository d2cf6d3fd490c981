"""Minibatches over a corpus of ids, the book's two ways.

Both yield ``X, Y`` int32 arrays of shape (batch_size, num_steps) with ``Y``
the next tokens of ``X``, and draw their offsets from a NumPy Generator.

* random sampling: subsequences from a random offset, in random order; two
  neighbouring rows or batches are not adjacent in the text, so a model must
  start from a fresh state for every batch.
* sequential partitioning: the corpus (after a random offset) is split into
  batch_size contiguous streams; row i of batch k+1 continues exactly where
  row i of batch k ended, so a hidden state can carry over (detached).

Both are *Dive into Deep Learning*, chapter 8, "Language Models" (reading long sequences).
"""
import numpy as np

from ._checks import check_choice, check_generator_state, check_int
from .errors import ArgumentError

__all__ = ["SeqDataLoader", "seq_data_iter_random", "seq_data_iter_sequential"]


def _check(corpus, batch_size, num_steps, need):
    corpus = np.asarray(corpus)
    if corpus.ndim != 1 or not np.issubdtype(corpus.dtype, np.integer):
        raise ArgumentError(f"corpus: expected a 1-D integer array of ids, got {corpus.dtype} {corpus.shape}")
    check_int("batch_size", batch_size, lo=1)
    check_int("num_steps", num_steps, lo=1)
    if len(corpus) < need:
        raise ArgumentError(
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

    ``state_dict()`` is the position in the data: the Generator's state at the
    start of the running epoch and the batches of it already yielded (0 between
    epochs). After ``load_state_dict`` the next ``iter()`` continues that epoch
    from the next batch (replaying its draws, so the rest and every later
    epoch are exactly those of the uninterrupted run); otherwise every
    ``iter()`` starts a new epoch.
    """

    def __init__(self, corpus, batch_size, num_steps, sampling="sequential", seed=None):
        check_choice("sampling", sampling, ("sequential", "random"))
        self._iter = seq_data_iter_sequential if sampling == "sequential" else seq_data_iter_random
        _check(corpus, batch_size, num_steps, batch_size * num_steps + num_steps + 1)
        self.corpus = np.asarray(corpus, dtype=np.int32)
        self.batch_size, self.num_steps, self.sampling = int(batch_size), int(num_steps), sampling
        self.rng = np.random.default_rng(seed)
        self._epoch_start = None   # the Generator's state when the running epoch began (None: between epochs)
        self._batch = 0            # batches of the running epoch yielded so far
        self._resume = False       # a loaded mid-epoch position waits for the next iter()

    @property
    def carries_state(self):
        return self.sampling == "sequential"

    def __iter__(self):
        if self._resume:
            self.rng.bit_generator.state = self._epoch_start
        else:
            self._epoch_start, self._batch = self.rng.bit_generator.state, 0
        self._resume = False
        return self._epoch(self._batch)

    def _epoch(self, skip):
        for i, batch in enumerate(self._iter(self.corpus, self.batch_size, self.num_steps, self.rng)):
            if i >= skip:
                self._batch = i + 1
                yield batch
        self._epoch_start, self._batch = None, 0

    def __len__(self):
        """Batches per epoch (the smallest over the possible offsets)."""
        n, B, T = len(self.corpus), self.batch_size, self.num_steps
        if self.sampling == "random":
            return ((n - T) // T) // B
        return ((n - T - 1) // B) // T

    def state_dict(self):
        if self._epoch_start is None:
            return {"bit_generator": self.rng.bit_generator.state, "batch": 0}
        return {"bit_generator": self._epoch_start, "batch": self._batch}

    def load_state_dict(self, state):
        """Validated: a generator state of the right kind and a batch index within that epoch."""
        if not isinstance(state, dict):
            raise ArgumentError(f"state: expected a dict, got {type(state).__name__}")
        probe = np.random.default_rng()
        check_generator_state("state['bit_generator']", probe, state.get("bit_generator"))
        start = probe.bit_generator.state
        batch = check_int("state['batch']", state.get("batch", 0), lo=0)
        if batch:
            # The exact number of batches of that epoch depends on its offset: replay its draws.
            n = sum(1 for _ in self._iter(self.corpus, self.batch_size, self.num_steps, probe))
            if batch > n:
                raise ArgumentError(f"state['batch']: {batch} is beyond the {n} batches of that epoch")
        self.rng.bit_generator.state = start
        self._epoch_start, self._batch, self._resume = (start, batch, True) if batch else (None, 0, False)
