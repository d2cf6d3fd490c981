"""ARPA back-off models (the format of SRILM, KenLM's lmplz and ``NGramLM.to_arpa``): writing and
reading in compiled code (fastseq.ngram._arpa), with the file's header comments and the escape of
tokens that contain whitespace. The format and both conventions are documented in docs/NGRAM-FILES.md.

    # fastseq-meta: {"token": "char"}     optional comment lines (KenLM skips lines starting with '#')
    \\data\\
    ngram 1=<count>          one line per order
    \\1-grams:
    <log10 p>  <w1>  [<log10 backoff>]
    ...
    \\N-grams:
    <log10 p>  <w1 .. wN>
    \\end\\

Numbers are written as the shortest text that reads back as the same double, so a model
read back scores exactly as the one written; they are read with exactly KenLM's number syntax.
Words are separated by spaces, tabs or carriage returns (KenLM's separators). At most
MAX_ORDER (64) orders. Any deviation is an ArpaError naming the file and the line.
"""
import json
import os
import stat

import numpy as np

from .._files import _a
from ..errors import ArgumentError, FastseqError
from .counting import MAX_ORDER
from .models import NGramLM, _utf8_encodable
from . import _arpa

__all__ = ["ArpaError", "ArpaLM", "escape_token", "unescape_token", "load_arpa", "write_arpa"]

# What KenLM substitutes for a missing '<unk>' (it warns and uses log10 p = -100).
MISSING_UNK = -100.0
META_PREFIX = "# fastseq-meta: "
ESCAPE_PREFIX = "# fastseq-escape: "
ESCAPE_LINE = (ESCAPE_PREFIX + "tokens with whitespace: \\s space, \\t tab, \\n newline, \\r return, "
               "\\\\ backslash, \\uXXXX other whitespace")
_ESC = {" ": "\\s", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}
_UNESC = {"s": " ", "t": "\t", "n": "\n", "r": "\r", "\\": "\\"}


class ArpaError(FastseqError):
    """An ARPA (or binary) model file cannot be read or written; the message names the file (and line)."""


class ArpaLM(NGramLM):
    """A model read from an ARPA file; scores exactly as the file says. ``meta``: the header's dict."""

    meta = {}


def escape_token(token):
    """The ARPA spelling of a token in an escaped file: whitespace and backslash as backslash escapes
    (a space is '\\s'), so a character model's ' ' is one word; KenLM then scores text escaped alike."""
    if not any(ch.isspace() or ch == "\\" for ch in token):
        return token
    return "".join(_ESC.get(ch) or (f"\\u{ord(ch):04x}" if ch.isspace() else ch) for ch in token)


def unescape_token(word, where="word"):
    """Inverse of escape_token; ArpaError on a backslash that starts no escape."""
    if "\\" not in word:
        return word
    out, i = [], 0
    while i < len(word):
        ch = word[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = word[i + 1:i + 2]
        if nxt in _UNESC:
            out.append(_UNESC[nxt])
            i += 2
        elif nxt == "u" and len(word) >= i + 6 and all(c in "0123456789abcdefABCDEF" for c in word[i + 2:i + 6]):
            out.append(chr(int(word[i + 2:i + 6], 16)))
            i += 6
        else:
            raise ArpaError(f"{where}: {word!r} has a backslash that starts no escape (\\s \\t \\n \\r \\\\ \\uXXXX)")
    return "".join(out)


def _check_meta(meta):
    if meta is None:
        return {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ArgumentError(f"meta: expected a dict of strings (e.g. {{'token': 'char'}}), got {meta!r}")
    return dict(meta)


def arpa_words(vocab, escape=None):
    """(escaped?, UTF-8 bytes of each token as the file spells it); ArpaError on a token no file holds."""
    bad = [t for t in vocab if not t]
    if bad:
        raise ArpaError("to_arpa: the vocabulary has an empty token (ARPA separates words by whitespace)")
    if escape is None:
        escape = any(any(ch.isspace() for ch in t) for t in vocab)
    words = [escape_token(t) for t in vocab] if escape else list(vocab)
    try:
        return escape, [w.encode("utf-8") for w in words]
    except UnicodeEncodeError:
        bad = [t for t in vocab if not _utf8_encodable(t)]
        raise ArpaError(f"to_arpa: the file is UTF-8; the vocabulary has tokens {bad[:3]!r} "
                        "that UTF-8 cannot encode (lone surrogates)") from None


def header_comments(meta, escaped):
    """The comment lines before '\\data\\' (escape convention, then the meta dict as JSON)."""
    lines = [ESCAPE_LINE] if escaped else []
    if meta:
        lines.append(META_PREFIX + json.dumps(meta, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def write_arpa(model, path, meta=None):
    """Write ``model`` (a fitted NGramLM) as an ARPA file at ``path``, atomically: a temporary
    file in the same folder, flushed and synced, then renamed over ``path`` (an old file there
    stays intact until the new one is complete). meta: a dict of strings written as a header
    comment (KenLM ignores it; ``load_arpa(path).meta`` reads it back)."""
    from ..checkpoint import atomic_write
    model._check_fitted()
    meta = _check_meta(meta)
    escaped, words = arpa_words(model.vocab)
    N = model.order
    head = header_comments(meta, escaped) + "\\data\\\n" + "".join(
        f"ngram {k}={len(model._rows[k])}\n" for k in range(1, N + 1))
    blob = b"".join(words)
    offsets = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in words], out=offsets[1:])
    text = _arpa.format_arpa(head.encode("utf-8"), np.frombuffer(blob, np.uint8), offsets,
                             [np.ascontiguousarray(model._rows[k], dtype=np.int32) for k in range(1, N + 1)],
                             [model._logp[k] for k in range(1, N + 1)],
                             [model._logb[k] if k < N else None for k in range(1, N + 1)])
    try:
        atomic_write(path, text)
    except OSError as e:
        raise ArpaError(f"{os.fspath(path)}: cannot be written ({e.strerror or e})") from None


def check_regular_file(path, what="model file"):
    """os.fspath(path); ArpaError when it cannot be read or is not a regular file (a FIFO would
    block, /dev/zero never ends)."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except (OSError, ValueError) as e:
        raise ArpaError(f"{name}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ArpaError(f"{name}: is {kind}; expected {_a(what)}")
    return name


def read_regular_file(path, what="model file"):
    """The bytes of path, a regular file (check_regular_file)."""
    name = check_regular_file(path, what)
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise ArpaError(f"{name}: cannot be read ({e.strerror})") from None


def parse_comments(comments, name):
    """(meta dict, escaped?) from the comment lines before '\\data\\'."""
    meta, escaped = {}, False
    for line in comments:
        if line.startswith(ESCAPE_PREFIX):
            escaped = True
        elif line.startswith(META_PREFIX):
            try:
                m = json.loads(line[len(META_PREFIX):])
            except ValueError:
                m = None
            if not isinstance(m, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
                raise ArpaError(f"{name}: the '{META_PREFIX.strip()}' header is not a JSON object of strings")
            meta.update(m)
    return meta, escaped


def parse_arpa(data, name):
    """(meta, escaped, file words as bytes, rows, parent, logp, logb): the sorted tables of ARPA text."""
    try:
        comments, words, tables = _arpa.parse(data, MAX_ORDER, MISSING_UNK)
    except _arpa.ParseError as e:
        raise ArpaError(f"{name}:{e.args[0]}: {e.args[1]}") from None
    meta, escaped = parse_comments(comments, name)
    V, N = len(words), len(tables)
    try:
        perms, parents = _arpa.link([t[0] for t in tables], V)
    except _arpa.ParseError as e:
        kind, k, i = e.args
        r, line = tables[k - 1][0][i], tables[k - 1][3][i]
        if kind == "twice":
            raise ArpaError(f"{name}:{line}: this {k}-gram appears twice") from None
        ctx = " ".join(words[int(j)].decode() for j in r[:-1])
        raise ArpaError(f"{name}:{line}: the context {ctx!r} of this {k}-gram is not among the "
                        f"{k - 1}-grams") from None
    rows, parent, logp, logb = {1: tables[0][0]}, {1: np.zeros(V, np.int64)}, {1: tables[0][1]}, {1: tables[0][2]}
    for k in range(2, N + 1):
        r, lp, lb, _ = tables[k - 1]
        perm = perms[k - 2]
        if perm is not None:
            r, lp, lb = r[perm], lp[perm], lb[perm]
        rows[k], parent[k], logp[k], logb[k] = r, parents[k - 2], lp, lb
    return meta, escaped, words, rows, parent, logp, logb


def load_arpa(path):
    """An NGramLM that scores identically to the ARPA file at ``path``; ``.meta`` holds the dict
    written by ``to_arpa(path, meta=...)`` and escaped tokens are read back as they were."""
    name = os.fspath(path)
    data = read_regular_file(path, "ARPA file")
    meta, escaped, words, rows, parent, logp, logb = parse_arpa(data, name)
    del data
    tokens = [w.decode("utf-8") for w in words]
    if escaped:
        tokens = [unescape_token(t, name) for t in tokens]
        if len(set(tokens)) != len(tokens):
            raise ArpaError(f"{name}: two words of the file unescape to the same token")
    model = ArpaLM(len(rows))
    model._set_tables(tokens, rows, parent, logp, logb)
    model.meta = meta
    return model

