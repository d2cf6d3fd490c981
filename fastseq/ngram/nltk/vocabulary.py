"""nltk.lm.Vocabulary: word counts with a cutoff below which words are looked up as '<UNK>'."""
from collections import Counter
from collections.abc import Iterable

from ..._checks import check_int

__all__ = ["Vocabulary"]


class Vocabulary:
    """Counts of the vocabulary text; a word is in the vocabulary when its count >= unk_cutoff,
    and the unknown label always is. ``lookup`` maps a word (or, recursively, a sequence of
    words, giving a tuple) to itself or to the unknown label. ``len`` counts the words in the
    vocabulary plus the unknown label (once there is any count), as nltk does."""

    def __init__(self, counts=None, unk_cutoff=1, unk_label="<UNK>"):
        self.unk_label = unk_label
        self._cutoff = check_int("unk_cutoff", unk_cutoff, lo=1)
        self.counts = Counter()
        self.update(counts if counts is not None else "")

    @property
    def cutoff(self):
        return self._cutoff

    def update(self, *args, **kwargs):
        """Add counts (collections.Counter.update)."""
        self.counts.update(*args, **kwargs)
        self._len = sum(1 for _ in self)

    def lookup(self, words):
        """A word or the unknown label; for a sequence, a tuple of looked-up items."""
        if isinstance(words, str):
            return words if words == self.unk_label or self.counts.get(words, 0) >= self._cutoff else self.unk_label
        if type(words) in (list, tuple) and all(type(w) is str for w in words):    # the common case, quickly
            get, cutoff, unk = self.counts.get, self._cutoff, self.unk_label
            return tuple(w if w == unk or get(w, 0) >= cutoff else unk for w in words)
        if isinstance(words, Iterable):
            return tuple(self.lookup(w) for w in words)
        raise TypeError(f"words: expected a string or an iterable of strings, got a {type(words).__name__}")

    def __getitem__(self, item):
        return self._cutoff if item == self.unk_label else self.counts[item]

    def __contains__(self, item):
        return self[item] >= self._cutoff

    def __iter__(self):
        yield from (w for w in self.counts if w in self)
        if self.counts:
            yield self.unk_label

    def __len__(self):
        return self._len

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and (self.unk_label, self._cutoff, self.counts) == (
            other.unk_label, other._cutoff, other.counts)

    def __str__(self):
        return f"<Vocabulary with cutoff={self._cutoff} unk_label='{self.unk_label}' and {len(self)} items>"
