"""Text preprocessing (*Dive into Deep Learning*, chapter 8, "Text Preprocessing"): load, tokenize,
build a vocabulary, encode.

``corpus_tokens`` turns a corpus into tokens and ``tokenize_text`` a piece of
text (a prefix, a held-out file) the same way; ``fastseq stats``, ``fastseq
train`` and ``load_corpus`` all go through them, so they count the same tokens.

Counting and encoding run in the Cython module ``fastseq._text`` with the GIL
released; interning word strings needs the GIL and happens once per token.
"""
import json
import os
import re
import stat
from collections.abc import Iterable

import numpy as np

from . import _text
from ._checks import check_choice, check_int
from .datasets import load
from .errors import ArgumentError, FastseqError

__all__ = ["CLEANINGS", "TOKENS", "Vocab", "clean", "read_lines", "tokenize", "corpus_tokens", "tokenize_text",
           "load_corpus"]

TOKENS = ("char", "word")
VOCAB_MAX_BYTES = 256 << 20     # a vocabulary file larger than this is not one

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
    raise ArgumentError(f"cleaning: expected one of {CLEANINGS}, got {cleaning!r}")


def _check_cleaning(cleaning):
    if cleaning not in CLEANINGS or not (cleaning is None or isinstance(cleaning, str)):
        raise ArgumentError(f"cleaning: expected one of {CLEANINGS}, got {cleaning!r}")
    return cleaning


def read_lines(name_or_path, cleaning=None, data_dir=None):
    """The lines of a corpus (see fastseq.datasets.load), each cleaned by name."""
    _check_cleaning(cleaning)
    return [clean(line, cleaning) for line in load(name_or_path, data_dir=data_dir).splitlines()]


def _split_words(line):
    # Raw text keeps punctuation as tokens of its own; cleaned text has only words and spaces.
    return _WORD_RAW.findall(line)


def tokenize(lines, token="word"):
    """A list of token lists, one per line: words (punctuation split off) or characters."""
    if isinstance(lines, str):
        raise ArgumentError("lines: expected a list of strings (got one string; wrap it in a list)")
    check_choice("token", token, TOKENS)
    if token == "word":
        return [_split_words(line) for line in lines]
    return [list(line) for line in lines]


def _text_tokens(text, token, cleaning):
    """One rule for corpora and pieces of text alike: characters of raw text keep line breaks
    (as char-rnn does); with a cleaning the cleaned lines are concatenated (as the book does);
    words are the tokens of each line in order."""
    if token == "char" and cleaning is None:
        return text
    lines = [clean(line, cleaning) for line in text.splitlines()]
    if token == "char":
        return "".join(lines)
    return [t for line in tokenize(lines, token) for t in line]


def corpus_tokens(name_or_path, token="char", cleaning=None, data_dir=None):
    """The tokens of a corpus (a name of fastseq.datasets or a path): a str of characters for
    token='char' (each character a token), else a flat list of words. See tokenize_text."""
    check_choice("token", token, TOKENS)
    _check_cleaning(cleaning)
    return _text_tokens(load(name_or_path, data_dir=data_dir), token, cleaning)


def tokenize_text(text, token="char", cleaning=None):
    """A piece of text (a prefix, held-out text) as tokens, by the rule of corpus_tokens: a list of
    characters or of words."""
    if not isinstance(text, str):
        raise ArgumentError(f"text: expected a string, got {type(text).__name__}")
    check_choice("token", token, TOKENS)
    return list(_text_tokens(text, token, _check_cleaning(cleaning)))


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
        min_freq = check_int("min_freq", min_freq, lo=0)
        reserved = _check_reserved(reserved_tokens)
        flat = tokens if isinstance(tokens, str) else _check_strings(_flatten(tokens))
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
        """Token(s) for id(s); an id outside [0, len) is an ArgumentError."""
        if isinstance(ids, (int, np.integer)):
            if not 0 <= ids < len(self):
                raise ArgumentError(f"ids: {ids} is outside the vocabulary [0, {len(self)})")
            return self.idx_to_token[ids]
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise ArgumentError(f"ids: values must lie in [0, {len(self)}), got [{ids.min()}, {ids.max()}]")
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
        flat = _check_strings(_flatten(tokens))
        vocab = cls((), min_freq, reserved_tokens)
        prov, uniq = _text.intern_tokens(flat)
        vocab._fit(uniq, _text.count_ids(prov, len(uniq)), min_freq, _check_reserved(reserved_tokens))
        return vocab, vocab._remap(prov, uniq)

    def to_dict(self):
        return {"format": "fastseq.Vocab", "version": 1, "idx_to_token": self.idx_to_token,
                "token_freqs": self._token_freqs}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("format") != "fastseq.Vocab":
            raise FastseqError("vocab: not a fastseq.Vocab dictionary (missing format='fastseq.Vocab')")
        itos = d.get("idx_to_token")
        if not isinstance(itos, list) or not itos or itos[0] != cls.UNK or len(set(itos)) != len(itos) \
                or not all(isinstance(t, str) for t in itos):
            raise FastseqError("vocab: idx_to_token must be distinct strings starting with '<unk>'")
        v = cls.__new__(cls)
        v.idx_to_token = list(itos)
        v.token_to_idx = {t: i for i, t in enumerate(itos)}
        v._token_freqs = [(str(t), int(c)) for t, c in d.get("token_freqs", [])]
        return v

    def save(self, path):
        """Write JSON (atomically: temporary file, flush, fsync, rename; an interrupted save leaves
        the old file intact)."""
        from .checkpoint import atomic_write

        atomic_write(path, json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8"))

    @classmethod
    def load(cls, path, max_bytes=VOCAB_MAX_BYTES):
        """Read a file written by save(); only a regular file of at most max_bytes is read."""
        path = os.fspath(path)
        try:
            with open(path, "rb", opener=_open_nonblocking) as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise FastseqError(f"{path}: not a regular file; expected a JSON vocabulary")
                if st.st_size > max_bytes:
                    raise FastseqError(f"{path}: {st.st_size:,} bytes, more than a vocabulary's "
                                       f"{max_bytes:,}")
                data = f.read(max_bytes + 1)
        except OSError as e:
            raise FastseqError(f"{path}: cannot read the vocabulary ({e.strerror or e})") from None
        if len(data) > max_bytes:
            raise FastseqError(f"{path}: more than a vocabulary's {max_bytes:,} bytes")
        try:
            d = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise FastseqError(f"{path}: not a JSON vocabulary ({e})") from None
        return cls.from_dict(d)


def _open_nonblocking(path, flags):
    # O_NONBLOCK: opening a FIFO must not wait for a writer; the fstat check then refuses it.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _check_strings(flat):
    """Every token a string (all of them: one integer among thousands of strings is refused too)."""
    flat = list(flat)
    bad = next((i for i, t in enumerate(flat) if not isinstance(t, str)), None)
    if bad is not None:
        raise ArgumentError(f"tokens: expected strings, got {type(flat[bad]).__name__} {flat[bad]!r} "
                            f"at position {bad}")
    return flat


def _check_reserved(reserved_tokens):
    reserved = list(reserved_tokens or [])
    if len(set(reserved)) != len(reserved) or Vocab.UNK in reserved or not all(isinstance(t, str) for t in reserved):
        raise ArgumentError(f"reserved_tokens: expected distinct strings other than '<unk>', got {reserved!r}")
    return reserved


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
    """(corpus ids int32, vocab) for a corpus, tokenized by corpus_tokens.

    With the 'd2l' cleaning the Time Machine has 170,580 characters and 28
    tokens, as in the book. ``max_tokens``: -1 (all) or the first N tokens.
    ``vocab``: encode with a given one.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) \
            or (max_tokens < 1 and max_tokens != -1):
        raise ArgumentError(f"max_tokens: expected -1 (all) or an integer >= 1, got {max_tokens!r}")
    tokens = corpus_tokens(name_or_path, token, cleaning, data_dir=data_dir)
    if max_tokens > 0:
        tokens = tokens[:max_tokens]
    if len(tokens) == 0:
        raise FastseqError(f"{name_or_path}: the corpus has no tokens")
    if vocab is not None:
        return vocab.encode(tokens), vocab
    vocab, ids = Vocab.build(tokens)
    return ids, vocab
