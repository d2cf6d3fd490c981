"""N-gram language models: Laplace smoothing (*Dive into Deep Learning*, chapter 8, "Language
Models") and interpolated modified Kneser-Ney.

Legend: V model vocabulary size, N model order, K_k number of k-grams in table k,
T tokens in a padded stream.

Every model is stored the way an ARPA file stores it (and scored the way KenLM
scores it): for each order k a table of k-grams (rows (K_k, k) int32 in
lexicographic order of model ids) with log10 P(w | c) and log10 backoff b(c).
Unseen n-grams back off: P(w | c) = b(c) P(w | c') where c' drops the first word
of c and b(c) = 1 when c is not a context. Both estimators are interpolated
models, so this form is exact, not an approximation.

Model ids: 0 '<unk>', 1 '<s>', 2 '</s>', then the words in order of first
appearance in the training data (the order lmplz gives them). Each sentence is
``<s> w1 .. wk </s>``: one ``<s>`` that is never predicted, and ``</s>`` that is.
The uniform base covers the vocabulary without ``<s>`` (V - 1 tokens, with
'<unk>' and '</s>').
"""
from collections import namedtuple

import numpy as np

from .. import _text
from ..errors import ArgumentError, FastseqError
from . import _count
from .counting import MAX_ORDER, count_ngrams, padded_stream

__all__ = ["BadDiscountError", "KneserNeyLM", "LaplaceLM", "Perplexity", "NGramLM", "NotFittedError"]

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
# log10 probability written for '<s>', which is never predicted (the ARPA convention).
NEVER = -99.0
LMPLZ_FALLBACK = (0.5, 1.0, 1.5)

Perplexity = namedtuple("Perplexity", "including_oov excluding_oov tokens oov")
Perplexity.__doc__ = """KenLM query's summary: '</s>' is a token; OOV tokens are scored as '<unk>'
(including_oov) or left out of both sum and count (excluding_oov)."""


class BadDiscountError(FastseqError):
    """A modified Kneser-Ney discount falls outside its valid range (lmplz's BadDiscountException)."""


class NotFittedError(FastseqError):
    """A model was asked to score, generate or save before it was fitted."""


def _sentences_to_ids(sentences):
    """(ids int32, lengths int64, tokens list): model ids of a corpus of sentences."""
    if isinstance(sentences, (str, bytes)):
        raise ValueError("sentences: expected an iterable of sentences (token lists or strings), got one string")
    flat, lengths = [], []
    for s in sentences:
        if not isinstance(s, str) and not hasattr(s, "__iter__"):
            raise ValueError(f"sentences: expected token lists or strings, got a {type(s).__name__} "
                             "(an id array needs vocab=)")
        toks = s.split() if isinstance(s, str) else list(s)
        if toks and not isinstance(toks[0], str):
            raise ValueError(f"sentences: expected lists of string tokens, got {type(toks[0]).__name__} tokens")
        flat.extend(toks)
        lengths.append(len(toks))
    if not lengths or not flat:
        raise ValueError("sentences: empty corpus (no tokens to fit)")
    try:
        prov, uniq = _text.intern_tokens(flat)
    except TypeError:                                    # an unhashable token
        raise ValueError(f"sentences: expected string tokens, got a "
                         f"{type(next(t for t in flat if not isinstance(t, str))).__name__}") from None
    for t in (BOS, EOS):
        if t in uniq:
            raise ValueError(f"sentences: {t!r} is reserved (each sentence is wrapped in <s> ... </s> for you)")
    if any(not isinstance(t, str) for t in uniq):
        raise ValueError("sentences: expected string tokens")
    tokens = [UNK, BOS, EOS] + [t for t in uniq if t != UNK]
    index = {t: i for i, t in enumerate(tokens)}
    table = np.array([index[t] for t in uniq], dtype=np.int32)
    return table[prov], np.asarray(lengths, dtype=np.int64), tokens


def _ids_with_vocab(ids, vocab, lengths):
    """Model ids from a Vocab-encoded array: '<unk>', '<s>', '</s>' first, then the Vocab's order."""
    if vocab is None or not hasattr(vocab, "idx_to_token"):
        raise ValueError("vocab: an id array needs the fastseq.Vocab that encoded it")
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"sentences: expected a 1-D integer id array, got shape {ids.shape} dtype {ids.dtype}")
    n = len(vocab.idx_to_token)
    if ids.size == 0:
        raise ValueError("sentences: empty corpus (no tokens to fit)")
    if ids.min() < 0 or ids.max() >= n:
        raise ValueError(f"sentences: ids must lie in [0, {n}) (the vocabulary), got [{ids.min()}, {ids.max()}]")
    tokens = [UNK, BOS, EOS] + [t for t in vocab.idx_to_token if t not in (UNK, BOS, EOS)]
    index = {t: i for i, t in enumerate(tokens)}
    table = np.array([index[t] for t in vocab.idx_to_token], dtype=np.int32)
    # A '<s>' or '</s>' inside a sentence would be counted as a word: '<s>' predicted (its
    # probability is forced to 0, so the distributions would no longer sum to 1).
    inside = np.isin(table[ids.astype(np.int64)], [BOS_ID, EOS_ID])
    if inside.any():
        j = int(np.flatnonzero(inside)[0])
        raise ValueError(f"sentences: id {int(ids[j])} at position {j} is the Vocab's "
                         f"{vocab.idx_to_token[int(ids[j])]!r}, which is reserved (pass sentence lengths; "
                         "each sentence is wrapped in <s> ... </s> for you)")
    if lengths is None:
        lengths = [len(ids)]
    return table[ids.astype(np.int64)], np.asarray(lengths), tokens


def _utf8_encodable(t):
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lookup(key, V, prefix_row, word):
    """Row of a table with sorted keys (prefix row) * V + last word for each (prefix_row, word); -1 where absent."""
    q = np.asarray(prefix_row, dtype=np.int64) * V + word
    j = np.searchsorted(key, q)
    j = np.minimum(j, len(key) - 1) if len(key) else np.zeros_like(j)
    found = (np.asarray(prefix_row) >= 0) & (len(key) > 0)
    if len(key):
        found &= key[j] == q
    return np.where(found, j, -1)


class NGramLM:
    """A back-off n-gram model (what an ARPA file holds); the base of every model here.

    prob / logprob / score / perplexity / distribution / generate / to_arpa work
    the same for a fitted model and one read by ``load_arpa``.
    """

    def __init__(self, order):
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order: expected an integer in [1, {MAX_ORDER}], got {order!r}")
        self.order = int(order)
        self.vocab = None

    # ----- storage -------------------------------------------------------------------------
    def _set_tables(self, tokens, rows, parent, logp, logb):
        """rows[k] (K_k, k), parent[k] int64 (row of table k-1; table 1 is dense: row = id),
        logp[k], logb[k] float64 (log10)."""
        self.vocab = list(tokens)
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}
        self._V = V = len(self.vocab)
        self._rows, self._logp, self._logb, self._parent, self._key = {}, {}, {}, {}, {}
        self._children = None
        for k in range(1, self.order + 1):
            self._rows[k] = rows[k]
            self._parent[k] = parent[k]
            # key of a k-gram: (row of its prefix) * V + last word; sorted because rows are.
            self._key[k] = parent[k].astype(np.int64) * V + rows[k][:, -1]
            self._logp[k] = np.asarray(logp[k], dtype=np.float64)
            self._logb[k] = np.asarray(logb[k], dtype=np.float64)

    def _check_fitted(self):
        if self.vocab is None:
            raise NotFittedError(f"{type(self).__name__}: not fitted; call fit() (or load_arpa) first")

    def _lookup(self, k, prefix_row, word):
        """Row of table k for (prefix row of table k-1, last word); -1 where absent."""
        return _lookup(self._key[k], self._V, prefix_row, word)

    def _find(self, rows):
        """Row in table n of each n-gram in rows (M, n); -1 where absent (or a prefix is)."""
        rows = np.asarray(rows, dtype=np.int64)
        idx = rows[:, 0].copy()
        for m in range(2, rows.shape[1] + 1):
            idx = self._lookup(m, idx, rows[:, m - 1])
        return idx

    # ----- scoring -------------------------------------------------------------------------
    def _ids(self, tokens, name="context"):
        for t in tokens:
            if not isinstance(t, str):
                raise ValueError(f"{name}: expected string tokens, got a {type(t).__name__}")
        return np.array([self.token_to_id.get(t, UNK_ID) for t in tokens], dtype=np.int64)

    @staticmethod
    def _tokens(x, name):
        """A string (split on whitespace) or an iterable of tokens, as a list."""
        if isinstance(x, str):
            return x.split()
        if x is None or not hasattr(x, "__iter__"):
            raise ValueError(f"{name}: expected a string or a sequence of string tokens, got {x!r}")
        return list(x)

    def _scoring_tables(self):
        if getattr(self, "_children", None) is None:
            starts = [np.zeros(1, np.int64)] + [
                np.searchsorted(self._parent[k], np.arange(len(self._rows[k - 1]) + 1)).astype(np.int64)
                for k in range(2, self.order + 1)]
            self._children = (starts, [self._rows[k][:, -1] for k in range(1, self.order + 1)],
                              [self._logp[k] for k in range(1, self.order + 1)],
                              [self._logb[k] for k in range(1, self.order + 1)])
        return self._children

    def _logp_fast(self, stream, q):
        """_logp_stream in Cython (GIL released): the scoring path used by score and perplexity."""
        return _count.backoff_logp(np.ascontiguousarray(stream, dtype=np.int64),
                                   np.ascontiguousarray(q, dtype=np.int64), *self._scoring_tables())

    def _logp_stream(self, stream, q):
        """log10 P(stream[i] | the tokens before it in its sentence), for every i.

        stream: int64 (T,) model ids; q: (T,) position of i in its sentence (0 = first
        token, which is predicted from the empty context). Back-off as KenLM does it:
        the longest stored n-gram ending at i, times the backoffs of the longer contexts.
        """
        lp = self._logp[1][stream]                       # order 1 is dense: always stored
        idx = stream.copy()                              # row of the (k-1)-gram ending at i
        for k in range(2, self.order + 1):
            ctx = np.empty_like(idx)                     # row of the (k-1)-gram ending at i-1
            ctx[1:] = idx[:-1]
            if len(ctx):
                ctx[0] = -1
            ctx[q < k - 1] = -1                          # the context would leave the sentence
            idx = np.full_like(ctx, -1)
            has = np.flatnonzero(ctx >= 0)               # only stored contexts can have k-grams
            idx[has] = self._lookup(k, ctx[has], stream[has])
            hit = idx >= 0
            backoff = ~hit & (ctx >= 0)
            lp[hit] = self._logp[k][idx[hit]]
            lp[backoff] += self._logb[k - 1][ctx[backoff]]
        return lp

    def _corpus(self, sentences, bos, eos, name="sentences"):
        """(stream, q, predicted mask, oov mask) of a corpus of sentences."""
        if isinstance(sentences, str) or not hasattr(sentences, "__iter__"):
            raise ValueError(f"sentences: expected an iterable of sentences, got {type(sentences).__name__}")
        flat, lengths = [], []
        for s in sentences:
            toks = self._tokens(s, "sentences")
            flat.extend(toks)
            lengths.append(len(toks))
        if not lengths:
            raise ValueError("sentences: empty corpus (no sentences)")
        if flat:
            try:
                prov, uniq = _text.intern_tokens(flat)
            except TypeError:                            # an unhashable token
                prov, uniq = None, [t for t in flat if not isinstance(t, str)]
            bad = [t for t in uniq if not isinstance(t, str)]
            if bad:
                raise ValueError(f"{name}: expected string tokens, got a {type(bad[0]).__name__}")
            table = np.array([self.token_to_id.get(t, UNK_ID) for t in uniq], dtype=np.int64)
            ids = table[prov]
        else:
            ids = np.zeros(0, dtype=np.int64)
        stream, room = padded_stream(ids, np.asarray(lengths, dtype=np.int64),
                                     BOS_ID if bos else None, EOS_ID if eos else None)
        stream = stream.astype(np.int64)
        seg = np.asarray(lengths, dtype=np.int64) + bool(bos) + bool(eos)
        start = np.repeat(np.concatenate([[0], np.cumsum(seg)[:-1]]), seg).astype(np.int64)
        q = np.arange(len(stream)) - start
        predicted = ~((q == 0) & bool(bos))              # '<s>' is context, never predicted
        return stream, q, predicted, stream == UNK_ID

    @staticmethod
    def _check_flag(name, v):
        # score("time", ["the"]) once took the context list as bos and returned a sentence's log10
        if not isinstance(v, (bool, np.bool_)):
            raise ArgumentError(f"{name}: expected True or False, got {v!r}; score(words, bos, eos) scores a "
                                "whole sentence; for P(word | context) call prob(word, context) or "
                                "logprob(word, context)")
        return bool(v)

    def score(self, words, bos=True, eos=True):
        """log10 probability of one sentence: kenlm's ``Model.score`` contract.

        words: a string (split on whitespace) or a list of tokens. bos: start from
        '<s>' (else from the empty context); eos: include P('</s>' | ...).
        For one word given its context use ``prob`` / ``logprob``.
        """
        self._check_fitted()
        bos, eos = self._check_flag("bos", bos), self._check_flag("eos", eos)
        stream, q, predicted, _ = self._corpus([self._tokens(words, "words")], bos, eos, "words")
        return float(self._logp_fast(stream, q)[predicted].sum())

    def logprob(self, word, context=()):
        """log10 P(word | context), the base of ARPA files and of ``score``; -inf for '<s>'.

        context: the tokens before ``word``, starting with '<s>' at a sentence start.
        """
        self._check_fitted()
        if not isinstance(word, str):
            raise ArgumentError(f"word: expected a string token, got {word!r}")
        ids = self._ids(self._tokens(context, "context") + [word])
        if ids[-1] == BOS_ID:
            return -np.inf
        return float(self._logp_stream(ids, np.arange(len(ids)))[-1])

    def prob(self, word, context=()):
        """P(word | context); context: tokens before it, starting with '<s>' at a sentence start."""
        return float(10.0 ** self.logprob(word, context))

    def distribution(self, context=()):
        """P(w | context) for every model id w (V,), summing to 1 ('<s>' has 0)."""
        self._check_fitted()
        ids = self._ids(self._tokens(context, "context"))
        ids = ids[-(self.order - 1):] if self.order > 1 else np.zeros(0, np.int64)
        lp = self._logp[1].copy()
        for k in range(2, self.order + 1):
            if len(ids) < k - 1:
                break
            c = self._find(ids[len(ids) - (k - 1):][None, :])[0]
            if c < 0:
                # not a context: backoff 1, no k-grams. A longer context may still be stored
                # (an ARPA file pruned so that 'b c' is gone but 'a b c' stays), so go on.
                continue
            lp += self._logb[k - 1][c]
            lo, hi = np.searchsorted(self._key[k], [c * self._V, (c + 1) * self._V])
            lp[self._rows[k][lo:hi, -1]] = self._logp[k][lo:hi]
        p = 10.0 ** lp
        p[BOS_ID] = 0.0
        return p

    def perplexity(self, sentences):
        """Perplexity of a corpus of sentences as KenLM's ``query`` reports it.

        Each sentence is scored from '<s>' and ends with '</s>', which is a token.
        Tokens outside the vocabulary are OOV: scored as '<unk>' in including_oov,
        left out (log-probability and count) in excluding_oov.
        """
        self._check_fitted()
        stream, q, predicted, oov = self._corpus(sentences, True, True)
        lp = self._logp_fast(stream, q)[predicted]
        oov = oov[predicted]
        tokens, n_oov = int(predicted.sum()), int(oov.sum())
        if tokens == 0:
            raise ValueError("sentences: empty corpus")
        total, total_oov = lp.sum(), lp[oov].sum()
        excl = 10.0 ** (-(total - total_oov) / (tokens - n_oov)) if tokens > n_oov else float("nan")
        return Perplexity(float(10.0 ** (-total / tokens)), float(excl), tokens, n_oov)

    def generate(self, n, prefix=(), rng=None):
        """n tokens sampled after '<s>' + prefix; after '</s>' a new sentence starts."""
        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n: expected an integer >= 0, got {n!r}")
        rng = np.random.default_rng(rng)
        context = [BOS] + self._tokens(prefix, "prefix")
        out = []
        for _ in range(n):
            p = self.distribution(context[-(self.order - 1):] if self.order > 1 else ())
            w = self.vocab[int(rng.choice(len(p), p=p / p.sum()))]
            out.append(w)
            context = [BOS] if w == EOS else context + [w]
        return out

    # ----- ARPA ------------------------------------------------------------------------------
    def to_arpa(self, path, meta=None):
        """Write the model as an ARPA file (readable by KenLM, SRILM and ``load_arpa``), atomically.

        meta: a dict of strings kept as a header comment (``load_arpa(path).meta``); tokens
        containing whitespace are escaped as docs/NGRAM-FILES.md describes (a space is '\\s').
        """
        from .arpa import write_arpa
        write_arpa(self, path, meta=meta)


def _tables(tokens, counts, order):
    """(rows, c, parent, suffix) of every order from NGramCounts with model ids.

    Table 1 is dense (row = id, count 0 for an id never seen); parent[k] is the row of a
    k-gram's prefix in table k-1 and suffix[k] the row of its suffix (both exist: the counts
    of a corpus hold every sub-n-gram of every n-gram they hold).
    """
    V, N = len(tokens), order
    if counts.order != N or counts.vocab_size > V:
        raise ArgumentError(f"counts: expected NGramCounts of order {N} over at most {V} ids, got {counts!r} "
                            f"over {counts.vocab_size}")
    rows = {1: np.arange(V, dtype=np.int32)[:, None]}
    c = {1: np.zeros(V, dtype=np.int64)}
    c[1][counts.grams[1][:, 0]] = counts.counts[1]
    parent = {1: np.zeros(V, dtype=np.int64)}
    suffix = {1: np.zeros(V, dtype=np.int64)}
    key = {1: np.arange(V, dtype=np.int64)}
    for k in range(2, N + 1):
        rows[k], c[k] = counts.grams[k], counts.counts[k]
        if k == 2:
            parent[k] = rows[k][:, 0].astype(np.int64)
            suffix[k] = rows[k][:, 1].astype(np.int64)
        else:
            if counts.parents is not None:
                parent[k] = counts.parents[k].astype(np.int64)
            else:                                        # merged counts: find each prefix in table k-1
                parent[k] = rows[k][:, 0].astype(np.int64)
                for m in range(2, k):
                    parent[k] = _lookup(key[m], V, parent[k], rows[k][:, m - 1])
            # suffix of (w0..w_{k-1}) = (suffix row of its prefix, last word) in table k-1
            suffix[k] = _lookup(key[k - 1], V, suffix[k - 1][parent[k]], rows[k][:, -1])
        if len(rows[k]) and (parent[k].min() < 0 or suffix[k].min() < 0):
            raise ArgumentError(f"counts: some {k}-grams have no prefix or suffix among the {k - 1}-grams "
                                "(not the counts of one corpus)")
        key[k] = parent[k] * V + rows[k][:, -1]
    return rows, c, parent, suffix


class _Estimator(NGramLM):
    """Shared fit: ids -> counts -> tables of rows with parent and suffix links -> _estimate -> _finish."""

    def fit(self, sentences, vocab=None, lengths=None):
        """Fit on sentences (token lists or strings), or on an id array with its Vocab
        (``lengths``: sentence lengths; default one sentence)."""
        if isinstance(sentences, np.ndarray) or vocab is not None:
            ids, lengths, tokens = _ids_with_vocab(sentences, vocab, lengths)
        else:
            if lengths is not None:
                raise ArgumentError("lengths: only with an id array (sentences of tokens carry their own lengths)")
            ids, lengths, tokens = _sentences_to_ids(sentences)
        counts = count_ngrams(ids, self.order, lengths=lengths, bos=BOS_ID, eos=EOS_ID, vocab_size=len(tokens))
        return self.fit_counts(tokens, counts)

    def fit_counts(self, tokens, counts):
        """Estimate from n-gram counts of sentences wrapped in '<s>' ... '</s>'.

        tokens: the model vocabulary, '<unk>', '<s>', '</s>' first (id i is tokens[i]);
        counts: NGramCounts of orders 1..order over those ids (merged counts of pieces, of
        files counted out of core, or of Dask partitions give the same model as ``fit``).
        """
        tokens = list(tokens)
        if tokens[:3] != [UNK, BOS, EOS] or len(set(tokens)) != len(tokens):
            raise ArgumentError("tokens: expected distinct tokens starting with '<unk>', '<s>', '</s>'")
        # Local tables: a fit that fails later (BadDiscountError) must leave a fitted model intact.
        self._estimate(tokens, *_tables(tokens, counts, self.order))
        return self

    def fit_files(self, sources, memory="1G", tmp_dir=None):
        """Fit on text files (one sentence a line, tokens separated by whitespace) or on any
        iterable of lines, counting out of core within ``memory`` bytes ("2G", "500M" or an int)
        and spilling sorted runs to ``tmp_dir``. The model equals ``fit`` on the same lines.
        See fastseq.ngram.outofcore."""
        from .outofcore import count_files
        tokens, counts = count_files(sources, self.order, memory=memory, tmp_dir=tmp_dir)
        return self.fit_counts(tokens, counts)

    def _finish(self, tokens, rows, parent, p, b):
        # A zero is written as NEVER (-99), the ARPA convention for log10(0): KenLM refuses '-inf'.
        # Zeros happen for '<s>', and in KN when a discount is at an end of its valid range
        # (0 <= D_j <= j): D_j = 0 with every child of c at count j gives a backoff gamma(c) = 0.
        with np.errstate(divide="ignore"):
            logp = {k: np.maximum(np.log10(p[k]), NEVER) for k in p}
            logb = {k: np.maximum(np.log10(b[k]), NEVER) for k in b}
        logp[1][BOS_ID] = NEVER
        self._set_tables(tokens, rows, parent, logp, logb)


class LaplaceLM(_Estimator):
    """Laplace smoothing as *Dive into Deep Learning* (Zhang, Lipton, Li, Smola), chapter 8,
    "Language Models", gives it, applied recursively down to the uniform distribution.

    P(x) = (n(x) + eps_1 / m) / (n + eps_1), m = V - 1 predictable tokens (every
    word, '</s>', '<unk>'), n = their total count; and for a context c of k-1 tokens
    P(w | c) = (n(c, w) + eps_k P(w | c')) / (n(c) + eps_k), c' = c without its first
    token, n(c) = sum_w n(c, w) (c's count as a context). The book prints the bigram
    numerator as n(x, x') + eps_2 P(x): a slip (it does not normalise); the lower-order
    estimate of the predicted token, P(x'), is the right one.

    eps: one positive number for every order, or one per order (eps_1 .. eps_N).
    """

    def __init__(self, order, eps=1.0):
        super().__init__(order)
        try:
            e = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(f"eps: expected a positive number or {self.order} positive numbers, got {eps!r}") from None
        if e.ndim != 1 or len(e) not in (1, self.order) or not np.all(np.isfinite(e)) or np.any(e <= 0):
            raise ValueError(f"eps: expected a positive number or {self.order} positive numbers, got {eps!r}")
        self.eps = np.broadcast_to(e, (self.order,)).copy()

    def _estimate(self, tokens, rows, c, parent, suffix):
        V, N = len(tokens), self.order
        n1 = c[1].astype(np.float64)
        n1[BOS_ID] = 0.0                                 # '<s>' is never predicted
        p = {1: (n1 + self.eps[0] / (V - 1)) / (n1.sum() + self.eps[0])}
        p[1][BOS_ID] = 0.0
        b = {}
        for k in range(2, N + 1):
            e = self.eps[k - 1]
            nc = np.bincount(parent[k], weights=c[k], minlength=len(rows[k - 1]))   # n(c)
            p[k] = (c[k] + e * p[k - 1][suffix[k]]) / (nc[parent[k]] + e)
            b[k - 1] = np.where(nc > 0, e / (nc + e), 1.0)
        b[N] = np.ones(len(rows[N]))
        self._finish(tokens, rows, parent, p, b)


# The arithmetic of interpolated modified Kneser-Ney, shared with fastseq.ngram.distributed (which
# applies it to pandas columns): every sum over a context is a sum of integers, exact in float64
# below 2**53 and so independent of the order of summation; the rest is elementwise. A model
# estimated in pieces on a cluster therefore has the same bits as one estimated here.
def counts_of_counts(a):
    """(n1, n2, n3, n4): how many n-grams have adjusted count 1, 2, 3, 4."""
    return np.bincount(np.minimum(a, 5), minlength=6)[1:5]


def kn_context_sums(a, parent, K):
    """Per context row (K of them): sum_w a(c w) as float64, and N_j(c .) for j = 1, 2, 3+."""
    a3 = np.minimum(a, 3)
    denom = np.bincount(parent, weights=a, minlength=K)
    return denom, [np.bincount(parent[a3 == j], minlength=K).astype(np.float64) for j in (1, 2, 3)]


def kn_gamma(D, denom, nj):
    """gamma(c) = (D1 N1(c .) + D2 N2(c .) + D3+ N3+(c .)) / sum_w a(c w); 1 where c is not a context."""
    ctx = denom > 0
    gam = D[1] * nj[0] + D[2] * nj[1] + D[3] * nj[2]
    return np.where(ctx, gam / np.where(ctx, denom, 1.0), 1.0)


def kn_probability(a, D, denom, gamma, lower):
    """P(w | c) = (a(c w) - D(a)) / sum_w a(c w) + gamma(c) P(w | c'), elementwise."""
    return (a - D[np.minimum(a, 3)]) / denom + gamma * lower


class KneserNeyLM(_Estimator):
    """Interpolated modified Kneser-Ney, estimated as KenLM's lmplz does.

    References: S. F. Chen and J. Goodman, "An Empirical Study of Smoothing Techniques for
    Language Modeling", Harvard TR-10-98 (1998), the section that introduces modified
    Kneser-Ney (three discounts D1, D2, D3+ and their estimate from Y = n1 / (n1 + 2 n2));
    K. Heafield,
    I. Pouzyrevsky, J. H. Clark and P. Koehn, "Scalable Modified Kneser-Ney Language Model
    Estimation", ACL 2013, section 3 (adjusted counts, discounts, normalisation, interpolation:
    the four steps of lmplz, which this follows, including '<s>' and '<unk>').

    Adjusted counts a: the raw count at the highest order and for n-grams that start
    with '<s>'; otherwise the number of distinct words seen to the left (continuation
    count; '<s>' counts as one). Per order k, from the counts of counts n_1..n_4 of a:
    Y = n_1 / (n_1 + 2 n_2), D_j = j - (j + 1) Y n_{j+1} / n_j (j = 1, 2, 3+).
    u(w | c) = (a(c w) - D(a)) / sum_w a(c w), gamma(c) = sum_j D_j N_j(c .) / sum_w a(c w),
    P(w | c) = u(w | c) + gamma(c) P(w | c'), and at the bottom gamma() / (V - 1), the
    uniform distribution over every token but '<s>' (so '<unk>' gets only that share).

    A discount outside [0, j] (too little data) raises BadDiscountError naming the
    order, as lmplz does; ``discount_fallback=True`` (or a triple D1, D2, D3+)
    substitutes lmplz's fallback (0.5, 1, 1.5) for the orders that need it, as
    ``lmplz --discount_fallback`` does. ``discounts``: {order: (D1, D2, D3+)} to force.

    Differences from lmplz, all deliberate: (1) lmplz deletes '<unk>' tokens from its
    training text; here a '<unk>' in the training data (e.g. from a Vocab with min_freq)
    is an ordinary token. (2) lmplz computes in float32, this in float64 (perplexities
    agree to about 1e-7 relative on the Time Machine split). (3) Some lmplz versions
    add the raw instead of the adjusted count of the very last n-gram of each lower
    order (in its sort order) to the counts of counts; here every n-gram counts with
    its adjusted count, which is Chen and Goodman's definition (at most one count of
    counts differs by one).
    """

    def __init__(self, order, discount_fallback=None, discounts=None):
        super().__init__(order)
        if discount_fallback is True:
            discount_fallback = LMPLZ_FALLBACK
        if discount_fallback is not None and discount_fallback is not False:
            try:
                d = np.asarray(discount_fallback, dtype=np.float64)
            except (TypeError, ValueError):
                d = np.zeros(0)
            if d.shape != (3,) or not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d > [1, 2, 3]):
                raise ValueError(f"discount_fallback: expected True or (D1, D2, D3+) with 0 <= Dj <= j, "
                                 f"got {discount_fallback!r}")
            self.discount_fallback = tuple(float(x) for x in d)
        else:
            self.discount_fallback = None
        self.fixed_discounts = {}
        if discounts is not None and not isinstance(discounts, dict):
            raise ValueError(f"discounts: expected {{order: (D1, D2, D3+)}}, got {discounts!r}")
        for k, d in (discounts or {}).items():
            try:
                d = np.asarray(d, dtype=np.float64)
            except (TypeError, ValueError):
                d = np.zeros(0)
            if not (isinstance(k, (int, np.integer)) and 1 <= k <= self.order) or d.shape != (3,) \
                    or not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d > [1, 2, 3]):
                raise ValueError(f"discounts: expected {{order: (D1, D2, D3+)}} with 0 <= Dj <= j, got {discounts!r}")
            self.fixed_discounts[int(k)] = tuple(float(x) for x in d)
        self.discounts = {}

    def _discount(self, k, n):
        """[0, D1, D2, D3+] of order k from the counts of counts n = (n1, n2, n3, n4) of adjusted counts."""
        if k in self.fixed_discounts:
            return np.array((0.0,) + self.fixed_discounts[k])
        n = np.asarray(n, dtype=np.float64)
        problem = None
        if np.any(n[:3] == 0):
            j = int(np.flatnonzero(n[:3] == 0)[0]) + 1
            problem = f"no {k}-grams have adjusted count {j}"
        else:
            y = n[0] / (n[0] + 2 * n[1])
            D = np.array([j - (j + 1) * y * n[j] / n[j - 1] for j in (1, 2, 3)])
            for j in (1, 2, 3):
                if not 0 <= D[j - 1] <= j:
                    problem = f"the {k}-gram discount D{j} = {D[j - 1]:.6g} is outside [0, {j}]"
                    break
        if problem is None:
            return np.concatenate([[0.0], D])
        if self.discount_fallback is not None:
            return np.array((0.0,) + self.discount_fallback)
        raise BadDiscountError(
            f"KneserNeyLM(order={self.order}): {problem} (counts of counts n1..n4 = "
            f"{', '.join(str(int(x)) for x in n)}); the data is too small (or too regular) for modified Kneser-Ney "
            f"at order {self.order}. Use a lower order, or pass discount_fallback=True to substitute "
            f"lmplz's fallback discounts D1=0.5 D2=1 D3+=1.5 (the fastseq command's --discount-fallback; "
            f"lmplz --discount_fallback).")

    def _discounts(self, n):
        """{order: [0, D1, D2, D3+]} from {order: counts of counts}; sets self.discounts."""
        D = {k: self._discount(k, n[k]) for k in sorted(n)}
        self.discounts = {k: tuple(float(x) for x in D[k][1:]) for k in D}
        return D

    @staticmethod
    def _unigram_probability(a1, D1):
        """Order 1: discounted continuation counts plus gamma times the uniform distribution over the
        V - 1 tokens but '<s>' (a(<s>) = 0 and an unseen '<unk>' has a = 0: D[0] = 0 discounts nothing)."""
        denom, nj = kn_context_sums(a1, np.zeros(len(a1), np.int64), 1)
        p1 = kn_probability(a1, D1, denom[0], kn_gamma(D1, denom, nj)[0], 1.0 / (len(a1) - 1))
        p1[BOS_ID] = 0.0
        return p1

    def _estimate(self, tokens, rows, c, parent, suffix):
        N = self.order
        # Adjusted counts.
        a = {N: c[N].copy()}
        for k in range(N - 1, 0, -1):
            a[k] = np.bincount(suffix[k + 1], minlength=len(rows[k])).astype(np.int64)
            starts = rows[k][:, 0] == BOS_ID
            a[k][starts] = c[k][starts]
        a[1][BOS_ID] = 0
        D = self._discounts({k: counts_of_counts(a[k]) for k in range(1, N + 1)})
        p, b = {1: self._unigram_probability(a[1], D[1])}, {}
        for k in range(2, N + 1):
            denom, nj = kn_context_sums(a[k], parent[k], len(rows[k - 1]))
            gamma = kn_gamma(D[k], denom, nj)                                        # 1 where not a context
            p[k] = kn_probability(a[k], D[k], denom[parent[k]], gamma[parent[k]], p[k - 1][suffix[k]])
            b[k - 1] = gamma
        b[N] = np.ones(len(rows[N]))
        self._finish(tokens, rows, parent, p, b)
