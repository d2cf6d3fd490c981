"""nltk.lm.preprocessing's helpers with the same output, in a form fastseq's ``fit`` can count in Cython.

``everygrams`` returns an iterator that yields exactly nltk.util.everygrams' tuples (in the same
order) but also keeps the token list, so ``LanguageModel.fit`` counts a fresh one with
``count_ngrams`` instead of iterating its tuples in Python. ``padded_everygram_pipeline``
keeps nltk's laziness: both iterators it returns read the same ``text``, so with a generator
(not a list) the vocabulary iterator, consumed first by ``fit``, leaves no sentences for the
counts, as in nltk.
"""
from functools import partial
from itertools import chain

from ..counting import MAX_ORDER

__all__ = ["everygrams", "flatten", "ngrams", "pad_both_ends", "pad_sequence", "padded_everygram_pipeline",
           "padded_everygrams"]

flatten = chain.from_iterable


def pad_sequence(sequence, n, pad_left=False, pad_right=False, left_pad_symbol=None, right_pad_symbol=None):
    """An iterator over ``sequence`` with n - 1 pad symbols on the chosen sides (nltk.util.pad_sequence)."""
    sequence = iter(sequence)
    if pad_left:
        sequence = chain((left_pad_symbol,) * (n - 1), sequence)
    if pad_right:
        sequence = chain(sequence, (right_pad_symbol,) * (n - 1))
    return sequence


def pad_both_ends(sequence, n, left_pad_symbol="<s>", right_pad_symbol="</s>"):
    """n - 1 '<s>' before and n - 1 '</s>' after a sentence, as an iterator (nltk.lm.preprocessing)."""
    return pad_sequence(sequence, n, True, True, left_pad_symbol, right_pad_symbol)


class Everygrams:
    """The n-grams of lengths min_len..max_len of a token list, grouped by start position
    (shortest first), as nltk.util.everygrams yields them; an iterator, consumed once."""

    def __init__(self, tokens, min_len, max_len):
        self.tokens, self.min_len, self.max_len = tokens, min_len, max_len
        self._it = None

    def countable(self):
        """True while nothing was drawn and the tuples are exactly orders 1..max_len of the tokens
        (what count_ngrams gives); fit then takes the tokens and marks the iterator consumed."""
        return self._it is None and self.min_len == 1 and 1 <= self.max_len <= MAX_ORDER

    def consume(self):
        self._it = iter(())
        return self.tokens

    def _gen(self):
        t, lo, hi = self.tokens, self.min_len, self.max_len
        for i in range(len(t)):
            window = t[i:i + hi]
            for k in range(lo, len(window) + 1):
                yield tuple(window[:k])

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._gen()
        return next(self._it)


def everygrams(sequence, min_len=1, max_len=-1, pad_left=False, pad_right=False, **kwargs):
    """Every n-gram of lengths min_len..max_len (max_len=-1: the whole length), as nltk.util.everygrams."""
    if max_len == -1:
        sequence = list(sequence)
        max_len = len(sequence)
    return Everygrams(list(pad_sequence(sequence, max_len, pad_left, pad_right, **kwargs)), min_len, max_len)


def ngrams(sequence, n, **kwargs):
    """The n-grams of one length n of a (padded) sequence, as nltk.util.ngrams."""
    t = list(pad_sequence(sequence, n, **kwargs))
    return (tuple(t[i:i + n]) for i in range(len(t) - n + 1))


def padded_everygrams(order, sentence):
    """everygrams up to ``order`` of the sentence padded with pad_both_ends."""
    return everygrams(list(pad_both_ends(sentence, n=order)), max_len=order)


def padded_everygram_pipeline(order, text):
    """(training n-grams, vocabulary tokens) of a text of sentences, nltk's default preprocessing:
    each sentence padded with order - 1 '<s>' and '</s>', then its everygrams up to ``order``."""
    pad = partial(pad_both_ends, n=order)
    return (everygrams(list(pad(sent)), max_len=order) for sent in text), flatten(map(pad, text))
