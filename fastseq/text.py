"""Text preprocessing (the seed's four steps): load, tokenize, build a vocabulary, encode.

Counting and encoding run in the Cython module ``fastseq._text`` with the GIL
released; interning word strings needs the GIL and happens once per token.
"""
import json
import os
import re
from collections.abc import Iterable

import numpy as np

from . import _text
from .datasets import load

__all__ = ["CLEANINGS", "Vocab", "clean", "read_lines", "tokenize", "load_corpus"]

_D2L = re.compile(r"[^A-Za-z]+")
_UNICODE = re.compile(r"[\W_]+")
_WORD_RAW = re.compile(r"\w+|[^\w\s]")

CLEANINGS = (None, "d2l", "unicode")


def clean(line, cleaning=None):
    """One line cleaned by name.

    None: unchanged. 'd2l' (the book's rule): every run of characters outside
    A-Z/a-z becomes one space, then strip and lower-case. 'unicode': letters
    and digits of every script kept, case-folded, everything else a separator.
    """
    if cleaning is None:
        return line
    if cleaning == "d2l":
        return _D2L.sub(" ", line).strip().lower()
    if cleaning == "unicode":
        return _UNICODE.sub(" ", line).strip().casefold()
    raise ValueError(f"cleaning: expected one of {CLEANINGS}, got {cleaning!r}")


def read_lines(name_or_path, cleaning=None, data_dir=None):
    """The lines of a corpus (see fastseq.datasets.load), each cleaned by name."""
    if cleaning not in CLEANINGS:
        raise ValueError(f"cleaning: expected one of {CLEANINGS}, got {cleaning!r}")
    return [clean(line, cleaning) for line in load(name_or_path, data_dir=data_dir).splitlines()]


def _split_words(line):
    # Raw text keeps punctuation as tokens of its own; cleaned text has only words and spaces.
    return _WORD_RAW.findall(line)


def tokenize(lines, token="word"):
    """A list of token lists, one per line: words (punctuation split off) or characters."""
    if isinstance(lines, str):
        raise ValueError("lines: expected a list of strings (got one string; wrap it in a list)")
    if token == "word":
        return [_split_words(line) for line in lines]
    if token == "char":
        return [list(line) for line in lines]
    raise ValueError(f"token: expected 'word' or 'char', got {token!r}")


def _flatten(tokens):
    if isinstance(tokens, str):
        return list(tokens)
    tokens = list(tokens)
    if tokens and not isinstance(tokens[0], str) and isinstance(tokens[0], Iterable):
        return [t for line in tokens for t in line]
    return tokens


class Vocab:
    """Token <-> id, with '<unk>' at id 0, then reserved tokens, then tokens by
    frequency (most frequent first, ties in order of first appearance).

    ``tokens``: a flat list of tokens, a list of token lists, or a string (its
    characters). Tokens seen fewer than ``min_freq`` times map to '<unk>'.
    """

    UNK = "<unk>"

    def __init__(self, tokens=(), min_freq=0, reserved_tokens=None):
        if isinstance(min_freq, bool) or not isinstance(min_freq, (int, np.integer)) or min_freq < 0:
            raise ValueError(f"min_freq: expected an integer >= 0, got {min_freq!r}")
        reserved = list(reserved_tokens or [])
        if len(set(reserved)) != len(reserved) or self.UNK in reserved:
            raise ValueError(f"reserved_tokens: expected distinct tokens other than '<unk>', got {reserved!r}")
        flat = tokens if isinstance(tokens, str) else _flatten(tokens)
        if any(not isinstance(t, str) for t in flat[:1000]):
            raise ValueError("tokens: expected strings")
        self._fit(*_count(flat), min_freq, reserved)

    def _fit(self, uniq, counts, min_freq, reserved):
        order = np.argsort(-counts, kind="stable").tolist()  # stable: ties keep first appearance
        counts = counts.tolist()
        self._token_freqs = [(uniq[i], counts[i]) for i in order]
        self.idx_to_token = [self.UNK] + reserved
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        for tok, freq in self._token_freqs:
            if freq < min_freq:
                break
            if tok not in self.token_to_idx:
                self.token_to_idx[tok] = len(self.idx_to_token)
                self.idx_to_token.append(tok)

    def __len__(self):
        return len(self.idx_to_token)

    def __contains__(self, token):
        return token in self.token_to_idx

    def __getitem__(self, tokens):
        if isinstance(tokens, (list, tuple)):
            return [self.__getitem__(t) for t in tokens]
        return self.token_to_idx.get(tokens, self.unk)

    def __eq__(self, other):
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token \
            and self._token_freqs == other._token_freqs

    def __repr__(self):
        head = ", ".join(repr(t) for t in self.idx_to_token[:6])
        return f"Vocab(size={len(self)}, [{head}{', ...' if len(self) > 6 else ''}])"

    @property
    def unk(self):
        return 0

    @property
    def token_freqs(self):
        """(token, count) pairs, most frequent first (ties by first appearance)."""
        return list(self._token_freqs)

    def to_tokens(self, ids):
        """Token(s) for id(s); an id outside [0, len) is a ValueError."""
        if isinstance(ids, (int, np.integer)):
            if not 0 <= ids < len(self):
                raise ValueError(f"ids: {ids} is outside the vocabulary [0, {len(self)})")
            return self.idx_to_token[ids]
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"ids: values must lie in [0, {len(self)}), got [{ids.min()}, {ids.max()}]")
        return [self.idx_to_token[i] for i in ids.ravel().tolist()]

    def encode(self, tokens):
        """int32 ids of a flat token list, a list of token lists, or a string's characters."""
        if isinstance(tokens, str):
            cps = np.frombuffer(tokens.encode("utf-32-le"), dtype=np.uint32)
            table = np.zeros(_text.MAX_CODEPOINT, dtype=np.int32)
            for tok, i in self.token_to_idx.items():
                if len(tok) == 1:
                    table[ord(tok)] = i
            return _text.remap_codepoints(cps, table)
        prov, uniq = _text.intern_tokens(list(_flatten(tokens)))
        return self._remap(prov, uniq)

    def _remap(self, prov, uniq):
        table = np.fromiter((self.token_to_idx.get(t, 0) for t in uniq), dtype=np.int32, count=len(uniq))
        return _text.remap(prov, table)

    @classmethod
    def build(cls, tokens, min_freq=0, reserved_tokens=None):
        """(Vocab(tokens, ...), its ids of tokens): one counting pass instead of two."""
        if isinstance(tokens, str):
            vocab = cls(tokens, min_freq, reserved_tokens)
            return vocab, vocab.encode(tokens)
        flat = list(_flatten(tokens))
        vocab = cls((), min_freq, reserved_tokens)
        if any(not isinstance(t, str) for t in flat[:1000]):
            raise ValueError("tokens: expected strings")
        prov, uniq = _text.intern_tokens(flat)
        vocab._fit(uniq, _text.count_ids(prov, len(uniq)), min_freq, list(reserved_tokens or []))
        return vocab, vocab._remap(prov, uniq)

    def to_dict(self):
        return {"format": "fastseq.Vocab", "version": 1, "idx_to_token": self.idx_to_token,
                "token_freqs": self._token_freqs}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("format") != "fastseq.Vocab":
            raise ValueError("vocab: not a fastseq.Vocab dictionary (missing format='fastseq.Vocab')")
        itos = d.get("idx_to_token")
        if not isinstance(itos, list) or not itos or itos[0] != cls.UNK or len(set(itos)) != len(itos) \
                or not all(isinstance(t, str) for t in itos):
            raise ValueError("vocab: idx_to_token must be distinct strings starting with '<unk>'")
        v = cls.__new__(cls)
        v.idx_to_token = list(itos)
        v.token_to_idx = {t: i for i, t in enumerate(itos)}
        v._token_freqs = [(str(t), int(c)) for t, c in d.get("token_freqs", [])]
        return v

    def save(self, path):
        """Write JSON (atomically: an interrupted save leaves the old file intact)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON vocabulary ({e})") from None
        return cls.from_dict(d)


def _count(flat):
    """(unique tokens in order of first appearance, their counts)."""
    if isinstance(flat, str) or (flat and all(len(t) == 1 for t in flat[:64]) and all(len(t) == 1 for t in flat)):
        text = flat if isinstance(flat, str) else "".join(flat)
        cps, counts = _text.count_codepoints(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
        return [chr(c) for c in cps.tolist()], counts
    prov, uniq = _text.intern_tokens(list(flat))
    return uniq, _text.count_ids(prov, len(uniq))


def load_corpus(name_or_path="timemachine", token="char", cleaning=None, max_tokens=-1,
                vocab=None, data_dir=None):
    """(corpus ids int32, vocab) for a corpus.

    Characters of raw text (cleaning=None) keep line breaks, as char-rnn does;
    with a cleaning the cleaned lines are concatenated, as the book does (so
    the Time Machine with 'd2l' has 170,580 characters and 28 tokens). Words
    are tokens of each line in order. ``vocab``: encode with a given one.
    """
    if token not in ("char", "word"):
        raise ValueError(f"token: expected 'char' or 'word', got {token!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) \
            or (max_tokens < 1 and max_tokens != -1):
        raise ValueError(f"max_tokens: expected -1 (all) or an integer >= 1, got {max_tokens!r}")
    if cleaning is None and token == "char":
        tokens = load(name_or_path, data_dir=data_dir)
    else:
        lines = read_lines(name_or_path, cleaning, data_dir=data_dir)
        tokens = "".join(lines) if token == "char" else _flatten(tokenize(lines, token))
    if max_tokens > 0:
        tokens = tokens[:max_tokens]
    if len(tokens) == 0:
        raise ValueError(f"{name_or_path}: the corpus has no tokens")
    if vocab is not None:
        return vocab.encode(tokens), vocab
    vocab, ids = Vocab.build(tokens)
    return ids, vocab
