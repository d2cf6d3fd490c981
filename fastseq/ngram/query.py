"""KenLM's query API on fastseq's tables: code written for the ``kenlm`` module runs unchanged.

    from fastseq.ngram import query as kenlm        # instead of: import kenlm
    m = kenlm.Model("lm.arpa")                       # an ARPA file or a fastseq binary model
    m.score("the time machine", bos=True, eos=True)  # log10, as kenlm
    state, out = kenlm.State(), kenlm.State()
    m.BeginSentenceWrite(state)
    m.BaseScore(state, "the", out)                   # log10 P(the | <s>); out: the context after it

Sentences are split on ASCII whitespace and words looked up by their UTF-8 bytes, as kenlm
does, so the numbers are kenlm's (fastseq sums in float64, kenlm in float32: they agree to
about 1e-6). Beyond kenlm: ``score_batch(sentences, threads=None)`` (one call for many sentences,
several scored in lockstep, the batch split among threads without the GIL),
``corpus_perplexity(sentences)`` (KenLM query's summary), ``meta`` (the file's header dict) and
``to_sentence(tokens)`` (a sentence in the file's spelling: escaped tokens for an escaped file).

A State holds the stored n-grams ending at the last word (their slots in the probing tables;
kenlm's holds the words), dropping, as kenlm does, one that no continuation can extend; equal
states score every continuation alike, so decoders can merge hypotheses on them.
"""
import os

import numpy as np

from . import _arpa
from .arpa import ArpaError, check_regular_file, escape_token, parse_arpa, read_regular_file
from .binary import is_binary, load_binary, query_tables

__all__ = ["Config", "FullScoreReturn", "LanguageModel", "Model", "State"]

State = _arpa.State
FullScoreReturn = _arpa.FullScoreReturn


class Config:
    """kenlm's Config, accepted for compatibility: fastseq has one way to load a model."""

    def __init__(self):
        self.load_method = 0
        self.show_progress = False
        self.arpa_complain = 0


class Model(_arpa.QueryCore):
    """A back-off n-gram model read from an ARPA file or a fastseq binary model (kenlm's Model)."""

    def __init__(self, path, config=None):
        name = check_regular_file(path)                  # before opening: a FIFO would block
        self.path = os.path.abspath(name)
        if is_binary(name):
            b = load_binary(name)
            self.meta, self.escaped = b.meta, b.escaped
            self._binary = b
            self._set(b.order, b.words, b.offsets, b.logp1, b.logb1, b.slots, b.suffix_closed, name)
            return
        meta, escaped, words, rows, parent, logp, logb = parse_arpa(read_regular_file(name, "ARPA file"), name)
        N = len(rows)
        starts = [np.zeros(1, np.int64)] + [
            np.searchsorted(parent[k], np.arange(len(rows[k - 1]) + 1)).astype(np.int64) for k in range(2, N + 1)]
        blob = b"".join(words)
        offsets = np.zeros(len(words) + 1, np.int64)
        np.cumsum([len(w) for w in words], out=offsets[1:])
        self.meta, self.escaped = meta, escaped
        self._load(N, blob, offsets, starts, [rows[k][:, -1] for k in range(1, N + 1)],
                   [logp[k] for k in range(1, N + 1)], [logb[k] for k in range(1, N + 1)], name)

    @classmethod
    def from_lm(cls, lm):
        """A query model of a fitted NGramLM, in memory (no file)."""
        from .binary import _tables_of
        lm._check_fitted()
        self = cls.__new__(cls)
        escaped, words, starts, lasts, logp, logb = _tables_of(lm)
        blob = b"".join(words)
        offsets = np.zeros(len(words) + 1, np.int64)
        np.cumsum([len(w) for w in words], out=offsets[1:])
        self.path, self.meta, self.escaped = None, dict(getattr(lm, "meta", {})), escaped
        self._load(lm.order, blob, offsets, starts, lasts, logp, logb, "model")
        return self

    def _load(self, order, blob, offsets, starts, lasts, logp, logb, name):
        """From tables grouped by context (an ARPA file's, a fitted model's): the probing tables built."""
        try:
            lp1, lb1, slots, closed = query_tables(blob, offsets, starts, lasts, logp, logb)
        except ValueError as e:
            raise ArpaError(f"{name}: {e}") from None
        self._set(order, blob, offsets, lp1, lb1, slots, closed, name)

    def _set(self, order, blob, offsets, logp1, logb1, slots, closed, name):
        try:
            self._set_tables(order, blob, offsets, logp1, logb1, list(slots), closed)
        except ValueError as e:
            raise ArpaError(f"{name}: {e}") from None

    def to_sentence(self, tokens):
        """A sentence string of tokens in this file's spelling (escaped for an escaped file)."""
        return " ".join(escape_token(t) for t in tokens) if self.escaped else " ".join(tokens)

    def __repr__(self):
        return f"<Model from {os.path.basename(self.path) if self.path else 'memory'}>"

    def __reduce__(self):
        return (Model, (self.path,))


LanguageModel = Model
