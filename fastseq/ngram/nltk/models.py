"""nltk.lm's models (MLE, Lidstone, Laplace, WittenBellInterpolated, KneserNeyInterpolated) with
nltk's formulas, evaluated in the same order so the numbers are nltk's, over fastseq's counts.

Notation: c a context (tuple of words), c(c w) the count of the n-gram c w, N(c) = sum over w
of c(c w), N1+(c .) the number of distinct words after c, N1+(. c w) the number of distinct
words before c w, N1+(. c .) the number of distinct n-grams with c in the middle.
"""
import math
import random
from bisect import bisect
from itertools import accumulate, chain

from ..._checks import check_int, check_real
from ...errors import FastseqError
from .counter import NgramCounter
from .vocabulary import Vocabulary

__all__ = ["KneserNeyInterpolated", "NltkZeroDivisionError", "LanguageModel", "Laplace", "Lidstone", "MLE",
           "WittenBellInterpolated"]


class NltkZeroDivisionError(FastseqError, ZeroDivisionError):
    """Where nltk.lm divides by zero (Kneser-Ney's continuation total of a context never seen
    after another word; the entropy of no n-grams), this is raised: a ZeroDivisionError as
    nltk's, and a FastseqError with a message that says why (docs/NLTK.md)."""


def _log2(p):
    """nltk.lm.util.log_base2: log(p, 2), and -inf for 0."""
    return float("-inf") if p == 0.0 else math.log(p, 2)


class LanguageModel:
    """nltk.lm.api.LanguageModel: fit on sentences of n-gram tuples, then score words in context."""

    def __init__(self, order, vocabulary=None, counter=None):
        self.order = check_int("order", order, lo=1)
        if vocabulary is not None and not hasattr(vocabulary, "lookup"):
            raise FastseqError(f"vocabulary: expected a Vocabulary, got a {type(vocabulary).__name__}")
        if counter is not None and not isinstance(counter, NgramCounter):
            raise FastseqError(f"counter: expected a fastseq.ngram.nltk.NgramCounter, got a {type(counter).__name__}")
        self.vocab = Vocabulary() if vocabulary is None else vocabulary
        self.counts = NgramCounter() if counter is None else counter

    def fit(self, text, vocabulary_text=None):
        """Count ``text`` (sentences of n-gram tuples, as padded_everygram_pipeline gives), every
        word looked up in the vocabulary; the vocabulary is made from ``vocabulary_text`` only
        when it is still empty (a second fit adds counts but keeps the vocabulary, as in nltk)."""
        if not self.vocab:
            if vocabulary_text is None:
                raise FastseqError("vocabulary_text: cannot fit without a vocabulary or text to create it from")
            self.vocab.update(vocabulary_text)
        self.counts._update(text, self.vocab)

    def _context(self, context):
        if isinstance(context, str):
            raise FastseqError(f"context: expected a sequence of words (a list or tuple), got the string {context!r}")
        return self.vocab.lookup(context) if context else None

    def score(self, word, context=None):
        """P(word | context), both looked up in the vocabulary (out-of-vocabulary words are '<UNK>')."""
        if not isinstance(word, str):
            raise FastseqError(f"word: expected a string, got a {type(word).__name__}")
        return self.unmasked_score(self.vocab.lookup(word), self._context(context))

    def unmasked_score(self, word, context=None):
        """P(word | context) without vocabulary look-ups (nltk's contract); context a sequence or None."""
        raise NotImplementedError

    def logscore(self, word, context=None):
        """log2 of score (-inf for a score of 0)."""
        return _log2(self.score(word, context))

    def context_counts(self, context):
        """FreqDist of the words after a (looked-up) context; the unigrams for an empty one."""
        return self.counts[len(context) + 1][context] if context else self.counts.unigrams

    def entropy(self, text_ngrams):
        """Cross-entropy: minus the mean log2 score of the n-grams (the last word given the others).
        Each distinct n-gram is scored once, its words looked up once: the same numbers as
        logscore(ngram[-1], ngram[:-1]) for each, summed in the order given, as nltk sums them."""
        grams = [g if type(g) is tuple else tuple(g) for g in text_ngrams]
        if not grams:
            raise NltkZeroDivisionError("text_ngrams: no n-grams to score, so no mean")
        distinct = dict.fromkeys(grams)
        words = set(chain.from_iterable(distinct))
        for w in words:
            if not isinstance(w, str):
                raise FastseqError(f"text_ngrams: expected n-grams of string words, got a {type(w).__name__}")
        lookup = self.vocab.lookup
        mask = {w: lookup(w) for w in words}
        for g in distinct:
            distinct[g] = _log2(self.unmasked_score(mask[g[-1]], tuple(mask[w] for w in g[:-1]) or None))
        return -1 * (sum([distinct[g] for g in grams]) / len(grams))

    def perplexity(self, text_ngrams):
        """2 ** entropy(text_ngrams)."""
        return pow(2.0, self.entropy(text_ngrams))

    def generate(self, num_words=1, text_seed=None, random_seed=None):
        """Words drawn one at a time given the words before them (nltk's draws: the same
        ``random.Random`` calls, so the same words for the same random_seed). One word is
        returned as a string, more as a list."""
        num_words = check_int("num_words", num_words, lo=0)
        text_seed = [] if text_seed is None else list(text_seed)
        rng = random_seed if isinstance(random_seed, random.Random) else random.Random(random_seed)
        if num_words == 1:
            return self._draw(text_seed, rng)
        out = []
        for _ in range(num_words):
            out.append(self._draw(text_seed + out, rng))
        return out

    def _draw(self, words, rng):
        context = words[-self.order + 1:] if len(words) >= self.order else words
        samples = self.counts._next_words(self.vocab.lookup(context))
        while context and not samples:
            context = context[1:] if len(context) > 1 else []
            samples = self.counts._next_words(self.vocab.lookup(context))
        if not samples:
            raise FastseqError("generate: the model has no counts to draw from (fit it first)")
        cum = list(accumulate(self.score(w, context) for w in samples))
        return samples[bisect(cum, cum[-1] * rng.random())]


class MLE(LanguageModel):
    """Maximum likelihood: c(c w) / N(c), and 0 for a context never seen."""

    def unmasked_score(self, word, context=None):
        if context and type(context) is not tuple:
            context = tuple(context)
        t = self.counts._tables()
        if not context:
            total = t["uni"][0]
            return t["cnt"].get(1, {}).get(word, 0) / total if total else 0
        n = len(context) + 1
        e = t["ctx"].get(n, {}).get(context)
        return t["cnt"][n].get(context + (word,), 0) / e[0] if e else 0


class Lidstone(LanguageModel):
    """Add gamma: (c(c w) + gamma) / (N(c) + |V| gamma), |V| = len(vocab) (with '<UNK>')."""

    def __init__(self, gamma, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gamma = check_real("gamma", gamma, lo=0, lo_open=True)

    def unmasked_score(self, word, context=None):
        if context and type(context) is not tuple:
            context = tuple(context)
        t = self.counts._tables()
        if not context:
            count, total = t["cnt"].get(1, {}).get(word, 0), t["uni"][0]
        else:
            n = len(context) + 1
            e = t["ctx"].get(n, {}).get(context)
            count, total = (t["cnt"][n].get(context + (word,), 0), e[0]) if e else (0, 0)
        return (count + self.gamma) / (total + len(self.vocab) * self.gamma)


class Laplace(Lidstone):
    """Add one (Lidstone with gamma = 1): *Dive into Deep Learning*, chapter 8, "Language Models"."""

    def __init__(self, *args, **kwargs):
        super().__init__(1, *args, **kwargs)


class _Interpolated(LanguageModel):
    """P(w | c) = alpha(c, w) + gamma(c) P(w | c minus its first word), P(w | c) = P(w | c[1:])
    when c was never seen, and the model's own unigram score for an empty context."""

    _continuation = False

    def unmasked_score(self, word, context=None):
        if context and type(context) is not tuple:
            context = tuple(context)
        t = self.counts._tables(self._continuation)
        p = self._unigram(t, word)
        if context:
            ctx, cnt = t["ctx"], t["cnt"]
            for i in range(len(context) - 1, -1, -1):       # the shortest context first
                c = context[i:]
                n = len(c) + 1
                e = ctx.get(n, {}).get(c)
                if e is not None:
                    alpha, gamma = self._alpha_gamma(t, word, c, cnt[n].get(c + (word,), 0), e)
                    p = alpha + gamma * p
        return p


class WittenBellInterpolated(_Interpolated):
    """Witten-Bell: gamma(c) = N1+(c .) / (N1+(c .) + N(c)), alpha = (1 - gamma) c(c w) / N(c);
    the unigram score is the maximum likelihood c(w) / N."""

    def _unigram(self, t, word):
        total = t["uni"][0]
        return t["cnt"].get(1, {}).get(word, 0) / total if total else 0

    def _alpha_gamma(self, t, word, c, count, e):
        total, distinct, _ = e
        gamma = distinct / (distinct + total)
        return (1.0 - gamma) * (count / total), gamma


class KneserNeyInterpolated(_Interpolated):
    """nltk's interpolated Kneser-Ney with one discount d (not KenLM's modified Kneser-Ney).

    Highest order: alpha = max(c(c w) - d, 0) / N(c), gamma = d N1+(c .) / N(c).
    Lower orders: alpha = max(N1+(. c w) - d, 0) / N1+(. c .), gamma = d N1+(c .) / N1+(. c .)
    (nltk's gamma counts distinct words after c in the raw counts but divides by the
    continuation total, so these do not sum to 1). Unigram: N1+(. w) / N1+(. .), 0 for a
    word never seen after another word (such as '<UNK>' or '<s>').
    Kneser-Ney: Chen & Goodman (1998); here the formula of nltk.lm, which these numbers match.
    """

    _continuation = True

    def __init__(self, order, discount=0.1, **kwargs):
        super().__init__(order, **kwargs)
        self.discount = check_real("discount", discount, lo=0, hi=1)

    def _unigram(self, t, word):
        total = t["cont_tot"].get(2, {}).get((), 0)
        if not total:
            raise NltkZeroDivisionError(
                "KneserNeyInterpolated: no bigrams were counted, so the unigram continuation total is 0")
        return t["cont"][2].get((word,), 0) / total

    def _alpha_gamma(self, t, word, c, count, e):
        d, distinct = self.discount, e[1]
        if len(c) + 1 == self.order:
            num, total = count, e[0]
        else:
            n = len(c) + 2
            num, total = t["cont"].get(n, {}).get(c + (word,), 0), t["cont_tot"].get(n, {}).get(c, 0)
            if not total:
                raise NltkZeroDivisionError(
                    f"KneserNeyInterpolated: context {c!r} was counted but never after another word, "
                    "so its continuation total is 0")
        return max(num - d, 0.0) / total, d * distinct / total
