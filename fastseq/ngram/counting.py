"""N-gram counting: the Cython kernel and its NumPy reference.

Legend: T tokens in the (padded) stream, K distinct n-grams of one order,
n the order, V the vocabulary size (ids lie in [0, V)).

Contract of count_ngrams / count_ngrams_reference (identical output):
  input   ids: 1-D integer array (any int dtype, any strides), values in [0, V),
          V = vocab_size or max id + 1, V <= 2**31 - 1; T <= 2**31 - 1 after padding;
          order in [1, MAX_ORDER = 64].
  output  NGramCounts: for n = 1..order, grams[n] (K, n) int32 rows sorted
          lexicographically (first column most significant), no duplicates;
          counts[n] int64 (K,) >= 1. An order longer than every sentence gives K = 0.
  errors  ValueError naming the argument (ids, lengths, bos, eos, vocab_size,
          context, order); nothing reaches the kernel unchecked, and the kernel
          checks its own contract again.
Memory: O(T + min(V, 4 T + 65536)) in the kernel (a sparse vocabulary is counted on dense ranks).

Sentences: with ``lengths`` the ids are a concatenation of sentences; each is
wrapped as ``bos w1 .. wk eos`` (when those ids are given) and no n-gram
crosses a sentence. Without ``lengths`` the ids are one stream.

Mergeable counts: ``count_ngrams(piece, n, context=previous_tail)`` counts the
n-grams that END inside ``piece``; ``context`` (the last n-1 tokens before the
cut) only completes the n-grams that span it. So the counts of consecutive
pieces, each given the tail of the one before, merge (``NGramCounts.merge``)
into exactly the counts of the whole stream; ``count_in_pieces`` does this
with bounded memory. A corpus of sentences cut between sentences needs no
context at all: no n-gram spans the cut.
"""
import numpy as np

from . import _count

__all__ = ["NGramCounts", "count_ngrams", "count_ngrams_reference", "count_in_pieces"]

# Highest order anywhere in fastseq.ngram: _count.backoff_logp keeps one context row per order
# on the stack, and an order beyond any sentence only adds empty tables.
MAX_ORDER = 64
# Token ids, vocabulary sizes and padded stream lengths must fit in int32 (the kernel stores
# positions and ranks in 32 bits).
MAX_INT32 = 2**31 - 1


class NGramCounts:
    """Counts of all n-grams of orders 1..order.

    ``grams[n]``: (K, n) int32 ids in lexicographic order; ``counts[n]``: int64[K].
    ``self[n]`` gives the pair; ``to_dict(n)`` a {tuple: count} dict;
    ``a + b`` merges (sums) two counts, ``a - b`` subtracts.
    """

    def __init__(self, grams, counts, vocab_size, parents=None):
        # parents[n][k]: row of grams[n - 1] that is the prefix of grams[n][k] (from the kernel; None after a merge)
        self.parents = parents
        self.grams = {n: np.ascontiguousarray(g, dtype=np.int32) for n, g in grams.items()}
        self.counts = {n: np.ascontiguousarray(c, dtype=np.int64) for n, c in counts.items()}
        self.order = max(self.grams) if self.grams else 0
        self.vocab_size = int(vocab_size)
        # merge reads rows of both operands without bounds checks: the shapes must be right
        if sorted(self.grams) != list(range(1, self.order + 1)) or sorted(self.counts) != sorted(self.grams):
            raise ValueError(f"grams, counts: expected the orders 1..{self.order} in both, "
                             f"got {sorted(self.grams)} and {sorted(self.counts)}")
        for n in self.grams:
            g, c = self.grams[n], self.counts[n]
            if g.ndim != 2 or g.shape[1] != n or c.shape != (g.shape[0],):
                raise ValueError(f"grams[{n}], counts[{n}]: expected shapes (K, {n}) and (K,), "
                                 f"got {g.shape} and {c.shape}")

    def __getitem__(self, n):
        return self.grams[n], self.counts[n]

    def __eq__(self, other):
        return isinstance(other, NGramCounts) and self.order == other.order and all(
            np.array_equal(self.grams[n], other.grams[n]) and np.array_equal(self.counts[n], other.counts[n])
            for n in self.grams)

    def __repr__(self):
        sizes = ", ".join(f"{n}: {len(self.counts[n])}" for n in sorted(self.grams))
        return f"NGramCounts(order={self.order}, distinct={{{sizes}}})"

    def to_dict(self, n):
        """{(id, ..., id): count} for order n (for tests and small data)."""
        return {tuple(r): int(c) for r, c in zip(self.grams[n].tolist(), self.counts[n].tolist())}

    def total(self, n):
        return int(self.counts[n].sum())

    def merge(self, other, sign=1):
        """Counts of both (sign=-1: self minus other); n-grams whose count becomes 0 are dropped."""
        if not isinstance(other, NGramCounts) or other.order != self.order:
            raise ValueError(f"other: expected NGramCounts of order {self.order}, got {other!r}")
        g, c = {}, {}
        for n in self.grams:
            g[n], c[n] = _count.merge_sorted(self.grams[n], self.counts[n], other.grams[n],
                                             sign * other.counts[n])
        return NGramCounts(g, c, max(self.vocab_size, other.vocab_size))

    __add__ = merge

    def __sub__(self, other):
        return self.merge(other, sign=-1)


def _check_order(order):
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order: expected an integer in [1, {MAX_ORDER}], got {order!r}")
    return int(order)


def _check_vocab_size(vocab_size):
    """None, or an integer in [1, 2**31 - 1] (a float such as 2.5 would let id 2 through as < 2.5)."""
    if vocab_size is None:
        return None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
            or not 1 <= vocab_size <= MAX_INT32:
        raise ValueError(f"vocab_size: expected an integer in [1, {MAX_INT32}], got {vocab_size!r}")
    return int(vocab_size)


def _check_ids(ids, name="ids", vocab_size=None, one_call=True):
    a = np.asarray(ids)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of token ids, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected integer token ids, got dtype {a.dtype}")
    if one_call and a.size > MAX_INT32:
        raise ValueError(f"{name}: at most {MAX_INT32} tokens in one call (count longer streams with "
                         f"count_in_pieces), got {a.size}")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            raise ValueError(f"{name}: token ids must be >= 0, got {lo}")
        if vocab_size is not None and hi >= vocab_size:
            raise ValueError(f"{name}: token ids must lie in [0, {vocab_size}) (vocab_size), got {hi}")
        if hi >= MAX_INT32:
            raise ValueError(f"{name}: token ids must fit in int32, got {hi}")
    return a


def padded_stream(ids, lengths=None, bos=None, eos=None):
    """(stream int32[T'], room int32[T']): sentences wrapped in bos/eos; room[i] is the
    number of tokens from i to the end of its sentence (or of the stream)."""
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    if lengths is None:
        if bos is not None or eos is not None:
            lengths = np.array([len(ids)])
        else:
            T = len(ids)
            return ids, (T - np.arange(T)).astype(np.int32)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or (lengths.size and (not np.issubdtype(lengths.dtype, np.integer) or lengths.min() < 0)):
        raise ValueError("lengths: expected a 1-D array of sentence lengths >= 0")
    if lengths.size and lengths.max() > len(ids):  # before the sum, which could wrap around in int64
        raise ValueError(f"lengths: a sentence length {lengths.max()} exceeds the {len(ids)} tokens of ids")
    lengths = lengths.astype(np.int64)
    if lengths.sum() != len(ids):
        raise ValueError(f"lengths: the sentence lengths sum to {lengths.sum()}, but ids has {len(ids)} tokens")
    hb, he = int(bos is not None), int(eos is not None)
    if len(lengths) == 0:                         # no sentences: nothing to wrap
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    seg = lengths + hb + he                       # padded sentence lengths
    if int(seg.sum()) > MAX_INT32:
        raise ValueError(f"ids: {int(seg.sum())} tokens with the sentence boundaries; at most {MAX_INT32} "
                         "in one call (count a corpus of sentences in pieces cut between sentences)")
    start = np.concatenate([[0], np.cumsum(seg)[:-1]]).astype(np.int64)
    total = int(seg.sum())
    out = np.empty(total, dtype=np.int32)
    dest = np.arange(len(ids)) + np.repeat(start + hb - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    out[dest] = ids
    if hb:
        out[start] = bos
    if he:
        out[start + seg - 1] = eos
    seg_end = np.repeat(start + seg, seg)         # one past the end of each position's sentence
    room = (seg_end - np.arange(total)).astype(np.int32)
    return out, room


def _prepare(ids, order, lengths, bos, eos, vocab_size, context):
    order = _check_order(order)
    vocab_size = _check_vocab_size(vocab_size)
    ids = _check_ids(ids, vocab_size=vocab_size)
    for name, v in (("bos", bos), ("eos", eos)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0
                              or v >= (vocab_size if vocab_size is not None else MAX_INT32)):
            raise ValueError(f"{name}: expected a token id in [0, {vocab_size or MAX_INT32}), got {v!r}")
    if context is not None:
        if lengths is not None or bos is not None or eos is not None:
            raise ValueError("context: only for a plain stream (no lengths/bos/eos); "
                             "cut a corpus of sentences between sentences instead")
        context = _check_ids(context, "context", vocab_size)[-(order - 1):] if order > 1 else np.zeros(0, np.int64)
    top = max([int(ids.max()) if ids.size else -1, bos if bos is not None else -1, eos if eos is not None else -1,
               int(context.max()) if context is not None and context.size else -1])
    V = vocab_size if vocab_size is not None else max(top + 1, 1)
    return ids, order, V, context


def _from_kernel(stream, room, order, V):
    words = None
    if V > 4 * len(stream) + (1 << 16):
        # The kernel's tables are O(V): with few distinct ids among many possible ones (a
        # vocab_size or an id of 2**30), count dense ranks instead; ranks keep the id order,
        # so mapping them back keeps the lexicographic order.
        words, stream = np.unique(stream, return_inverse=True)
        stream = stream.astype(np.int32).reshape(-1)
        levels = _count.count_orders(stream, room, order, max(len(words), 1))
        levels = [(words[last].astype(np.int32), parent, cnt) for last, parent, cnt in levels]
    else:
        levels = _count.count_orders(stream, room, order, V)
    grams, counts, parents = {}, {}, {}
    prev = np.zeros((1, 0), dtype=np.int32)
    for n, (last, parent, cnt) in enumerate(levels, start=1):
        rows = np.empty((len(last), n), dtype=np.int32)
        if n > 1:   # gather whole prefix rows at once: each row viewed as one opaque item
            rows[:, :-1] = np.ascontiguousarray(prev).view(f"V{4 * (n - 1)}").ravel().take(parent) \
                .view(np.int32).reshape(-1, n - 1)
        rows[:, -1] = last
        grams[n], counts[n], parents[n] = rows, cnt, parent
        prev = rows
    return NGramCounts(grams, counts, V, parents)


def count_ngrams(ids, order, *, lengths=None, bos=None, eos=None, vocab_size=None, context=None):
    """Counts of all n-grams of orders 1..order (Cython, GIL released).

    ids: int array (T,) with values in [0, vocab_size). lengths: sentence lengths
    summing to T (no n-gram crosses a sentence); bos/eos: ids wrapped around each
    sentence. context: tokens just before ``ids`` in a longer stream; only n-grams
    ending inside ``ids`` are counted (see the module docstring on merging).
    Returns NGramCounts (grams[n]: (K, n) int32 in lexicographic order, counts[n]).
    """
    ids, order, V, context = _prepare(ids, order, lengths, bos, eos, vocab_size, context)
    if context is not None and context.size:
        whole = _from_kernel(*padded_stream(np.concatenate([context, ids])), order, V)
        return whole - _from_kernel(*padded_stream(context), order, V)
    stream, room = padded_stream(ids, lengths, bos, eos)
    return _from_kernel(stream, room, order, V)


def count_ngrams_reference(ids, order, *, lengths=None, bos=None, eos=None, vocab_size=None, context=None):
    """NumPy reference of count_ngrams: pack each n-gram into one integer key, np.unique."""
    ids, order, V, context = _prepare(ids, order, lengths, bos, eos, vocab_size, context)
    skip = 0
    if context is not None:
        skip = len(context)                       # n-grams must end at or after this position
        ids = np.concatenate([context, ids])
    stream, room = padded_stream(ids, lengths, bos, eos)
    stream = stream.astype(np.int64)
    grams, counts = {}, {}
    for n in range(1, order + 1):
        starts = np.flatnonzero((room >= n) & (np.arange(len(stream)) + n - 1 >= skip))
        rows = np.stack([stream[starts + j] for j in range(n)], axis=1) if len(starts) else np.zeros((0, n), np.int64)
        if V ** n < 2 ** 63:
            key = np.zeros(len(rows), dtype=np.int64)
            for j in range(n):                    # base-V digits, most significant first: lexicographic
                key = key * V + rows[:, j]
            uniq, cnt = np.unique(key, return_counts=True)
            out = np.empty((len(uniq), n), dtype=np.int64)
            for j in range(n - 1, -1, -1):
                uniq, out[:, j] = np.divmod(uniq, V)
        else:                                     # too many digits for 63 bits: unique rows directly
            out, cnt = np.unique(rows, axis=0, return_counts=True)
            out = out.reshape(-1, n)
        grams[n], counts[n] = out.astype(np.int32), cnt.astype(np.int64)
    return NGramCounts(grams, counts, V)


def count_in_pieces(ids, order, piece_size, *, vocab_size=None):
    """Counts of a long stream, counted ``piece_size`` tokens at a time and merged
    (each piece gets the previous tail as context), equal to count_ngrams(ids, order)."""
    order = _check_order(order)
    if isinstance(piece_size, bool) or not isinstance(piece_size, (int, np.integer)) or piece_size < 1:
        raise ValueError(f"piece_size: expected an integer >= 1, got {piece_size!r}")
    vocab_size = _check_vocab_size(vocab_size)
    ids = _check_ids(ids, vocab_size=vocab_size, one_call=False)
    V = vocab_size if vocab_size is not None else (int(ids.max()) + 1 if ids.size else 1)
    total = None
    for a in range(0, max(len(ids), 1), piece_size):
        ctx = ids[max(0, a - order + 1):a]
        part = count_ngrams(ids[a:a + piece_size], order, vocab_size=V, context=ctx)
        total = part if total is None else total + part
    return total
