"""nltk.lm.NgramCounter's contract over fastseq's Cython counts.

Counts are kept as fastseq keeps them: for each order n a table of n-grams (rows of token
ids, sorted) and their counts, made by ``count_ngrams`` and merged with the kernel's sorted
merge when ``fit`` is called again. The dictionaries that scoring reads (n-gram -> count,
context -> (total, distinct continuations, first row), and Kneser-Ney's continuation counts)
are made from those tables when first needed, one vectorised pass per order.

``counts[...]`` gives what nltk gives: ``counts['a']`` the count of the unigram,
``counts[['a']]`` (or a tuple) the FreqDist of the words after 'a', ``counts[2]`` the
ConditionalFreqDist of the bigrams, ``counts.unigrams``. Unlike nltk, these are new objects
made on each access (read-only views of the counts): ``counts[2][('a',)] is counts[['a']]``
is False, and looking up an absent context does not add an empty entry.
"""
from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np

from ... import _text
from .. import _count
from ..counting import MAX_ORDER, count_ngrams
from .preprocessing import Everygrams

__all__ = ["ConditionalFreqDist", "FreqDist", "NgramCounter"]


class FreqDist(Counter):
    """Counts of outcomes (nltk.probability.FreqDist's counting part): N(), B(), freq()."""

    def N(self):
        return sum(self.values())

    def B(self):
        return len(self)

    def freq(self, sample):
        n = self.N()
        return 0 if n == 0 else self[sample] / n


class ConditionalFreqDist(Mapping):
    """The n-grams of one order as {context tuple: FreqDist of the next word} (read-only view);
    an absent context gives an empty FreqDist, as nltk's defaultdict does."""

    def __init__(self, counter, n):
        self._counter, self._n = counter, n

    def _contexts(self):
        return self._counter._tables()["ctx"].get(self._n, {})

    def __getitem__(self, context):
        return self._counter._continuations(tuple(context), self._n)

    def __iter__(self):
        return iter(self._contexts())

    def __len__(self):
        return len(self._contexts())

    def __contains__(self, context):
        return context in self._contexts()

    def conditions(self):
        return list(self._contexts())

    def N(self):
        return sum(e[0] for e in self._contexts().values())

    def __repr__(self):
        return f"<ConditionalFreqDist with {len(self)} conditions>"


def _as_ngram(g, fitting):
    """An n-gram as a tuple; fit (which looks words up as nltk does) also takes lists, NgramCounter only tuples."""
    if isinstance(g, tuple) or (fitting and not isinstance(g, str) and hasattr(g, "__iter__")):
        return tuple(g)
    raise TypeError(f"Ngram <{g}> isn't a tuple, but {type(g)}")


def _str_keys(tok, rows):
    """Tuples of token strings for an (K, n) array of token ids."""
    return list(zip(*(tok[rows[:, j]].tolist() for j in range(rows.shape[1])))) if rows.shape[1] else [()] * len(rows)


def _groups(rows):
    """Start of each run of equal rows in a sorted (K, m) table, and the runs' lengths."""
    K = len(rows)
    if rows.shape[1] == 0:
        starts = np.zeros(min(K, 1), dtype=np.int64)
    else:
        change = np.any(rows[1:] != rows[:-1], axis=1)
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64) if K else np.zeros(0, np.int64)
    return starts, np.diff(np.append(starts, K))


class NgramCounter:
    """Counts of n-grams of every order given (nltk.lm.NgramCounter)."""

    def __init__(self, ngram_text=None):
        self._tokens, self._index = [], {}
        self._grams = {}          # n -> (rows int32 (K, n) sorted, counts int64 (K,))
        self._cache = None
        if ngram_text:
            self.update(ngram_text)

    # ----- counting ------------------------------------------------------------------------
    def update(self, ngram_text):
        """Add the n-grams of a text given as sentences of n-gram tuples."""
        self._update(ngram_text, None)

    def _update(self, text, vocab):
        """Count ``text`` (sentences of n-grams), each word looked up in ``vocab`` when given (fit)."""
        runs = {}                 # max_len -> token lists of fresh Everygrams (counted whole)
        flat, lens = [], []       # every other n-gram: its words, and its length
        for sent in text:
            if isinstance(sent, Everygrams) and sent.countable():
                runs.setdefault(sent.max_len, []).append(sent.consume())
                continue
            grams = list(sent)
            if not all(type(g) is tuple for g in grams):
                grams = [_as_ngram(g, vocab is not None) for g in grams]
            lens.extend(map(len, grams))
            flat.extend(chain.from_iterable(grams))
        if not runs and not lens:
            return
        ids = {m: self._ids([t for s in sents for t in s], vocab) for m, sents in runs.items()}
        flat = self._ids(flat, vocab) if lens else None
        V = max(len(self._tokens), 1)
        for m, a in ids.items():
            c = count_ngrams(a, m, lengths=np.fromiter(map(len, runs[m]), dtype=np.int64), vocab_size=V)
            for n in range(1, m + 1):
                self._add(n, *c[n])
        if lens:
            lens = np.asarray(lens, dtype=np.int64)
            if lens.min() < 1 or lens.max() > MAX_ORDER:
                raise TypeError(f"Ngram: expected 1 to {MAX_ORDER} words, got {int(lens.min())} or {int(lens.max())}")
            starts = np.cumsum(lens) - lens
            for n in np.unique(lens).tolist():
                rows = flat[starts[lens == n][:, None] + np.arange(n)].ravel()
                c = count_ngrams(rows, n, lengths=np.full(len(rows) // n, n, dtype=np.int64), vocab_size=V)
                self._add(n, *c[n])
        self._cache = None

    def _ids(self, tokens, vocab):
        """Ids of tokens (looked up in vocab) in this counter's id space, which only grows."""
        prov, uniq = _text.intern_tokens(tokens)
        for t in uniq:
            if not isinstance(t, str):
                raise TypeError(f"Unsupported type for looking up in vocabulary: {type(t)}")
        if vocab is not None:
            uniq = [vocab.lookup(t) for t in uniq]
        index, toks = self._index, self._tokens
        table = np.empty(len(uniq), dtype=np.int32)
        for j, t in enumerate(uniq):
            i = index.get(t)
            if i is None:
                i = index[t] = len(toks)
                toks.append(t)
            table[j] = i
        return table[prov]

    def _add(self, n, rows, counts):
        if len(counts) == 0:
            return
        if n in self._grams:
            rows, counts = _count.merge_sorted(*self._grams[n], rows, counts)
        self._grams[n] = (rows, counts)

    # ----- tables read by the models ---------------------------------------------------------
    def _tables(self, continuation=False):
        """Dictionaries over token strings, made once per fit (Kneser-Ney's on first use):
        cnt[n] {n-gram: count} (n = 1: {word: count}); ctx[n] {context of n - 1 words:
        (total count, distinct next words, first row in table n)}; uni (total, distinct);
        cont[n] {last n - 1 words of an n-gram: distinct words before them}; cont_tot[n]
        {middle n - 2 words: distinct n-grams around them}."""
        if self._cache is None:
            tok = np.array(self._tokens + [None], dtype=object)[:-1]
            cnt, ctx = {}, {}
            for n, (rows, c) in self._grams.items():
                keys = tok[rows[:, 0]].tolist() if n == 1 else _str_keys(tok, rows)
                cnt[n] = dict(zip(keys, c.tolist()))
                if n > 1:
                    starts, sizes = _groups(rows[:, :-1])
                    totals = np.add.reduceat(c, starts)
                    ctx[n] = dict(zip(_str_keys(tok, rows[starts, :-1]),
                                      zip(totals.tolist(), sizes.tolist(), starts.tolist())))
            uni = self._grams.get(1, (None, np.zeros(0, np.int64)))[1]
            self._cache = {"tok": tok, "cnt": cnt, "ctx": ctx, "uni": (int(uni.sum()), len(uni))}
        if continuation and "cont" not in self._cache:
            tok, cont, cont_tot = self._cache["tok"], {}, {}
            for n, (rows, _) in self._grams.items():
                if n > 1:
                    suffix, k = np.unique(rows[:, 1:], axis=0, return_counts=True)
                    cont[n] = dict(zip(_str_keys(tok, suffix.reshape(-1, n - 1)), k.tolist()))
                    if n == 2:                            # no middle word: every bigram counts
                        cont_tot[n] = {(): len(rows)}
                    else:
                        middle, k = np.unique(rows[:, 1:-1], axis=0, return_counts=True)
                        cont_tot[n] = dict(zip(_str_keys(tok, middle.reshape(-1, n - 2)), k.tolist()))
            self._cache["cont"], self._cache["cont_tot"] = cont, cont_tot
        return self._cache

    def _continuations(self, context, n=None):
        """FreqDist of the words after ``context`` (the n-grams of order len(context) + 1)."""
        n = len(context) + 1 if n is None else n
        if n == 1:
            return self.unigrams
        t = self._tables()
        e = t["ctx"].get(n, {}).get(context) if len(context) == n - 1 else None
        if e is None:
            return FreqDist()
        rows, c = self._grams[n]
        _, size, start = e
        return FreqDist(dict(zip(t["tok"][rows[start:start + size, -1]].tolist(), c[start:start + size].tolist())))

    def _next_words(self, context):
        """Words seen after ``context`` (every unigram for an empty context), sorted."""
        if not context:
            return sorted(self._tables()["cnt"].get(1, {}))
        return sorted(self._continuations(context))

    # ----- nltk's interface ------------------------------------------------------------------
    @property
    def unigrams(self):
        return FreqDist(self._tables()["cnt"].get(1, {}))

    def __getitem__(self, item):
        if isinstance(item, int):
            return self.unigrams if item == 1 else ConditionalFreqDist(self, item)
        if isinstance(item, str):
            return self._tables()["cnt"].get(1, {}).get(item, 0)
        if isinstance(item, Sequence):
            return self._continuations(tuple(item))
        return None

    def N(self):
        """Total count over every order."""
        return sum(int(c.sum()) for _, c in self._grams.values())

    def __len__(self):
        return len(set(self._grams) | {1})

    def __contains__(self, n):
        return n in self._grams or n == 1

    def __str__(self):
        return f"<NgramCounter with {len(self)} ngram orders and {self.N()} ngrams>"
