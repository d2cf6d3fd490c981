"""Reading ARPA back-off models (the format of SRILM, KenLM's lmplz and ``NGramLM.to_arpa``).

    \\data\\
    ngram 1=<count>          one line per order
    \\1-grams:
    <log10 p>  <w1>  [<log10 backoff>]
    ...
    \\N-grams:
    <log10 p>  <w1 .. wN>
    \\end\\

Fields are separated by whitespace; the backoff may be omitted (0). The file
is UTF-8; at most MAX_ORDER (64) orders. Any deviation is an ArpaError naming
the file and the line.
"""
import numpy as np

from .counting import MAX_ORDER
from .models import BOS, EOS, UNK, UNK_ID, NGramLM

__all__ = ["ArpaError", "load_arpa"]

# What KenLM substitutes for a missing '<unk>' (it warns and uses log10 p = -100).
MISSING_UNK = -100.0


class ArpaError(ValueError):
    """A malformed ARPA file; the message has the path and line number."""


class ArpaLM(NGramLM):
    """A model read from an ARPA file; scores exactly as the file says."""


def _float(tok, path, ln, what):
    try:
        x = float(tok)
    except ValueError:
        raise ArpaError(f"{path}:{ln}: {what} {tok!r} is not a number") from None
    if what == "log10 probability" and (np.isnan(x) or x > 0):
        raise ArpaError(f"{path}:{ln}: {what} {tok!r} must be a log10 probability <= 0")
    if np.isnan(x) or x == np.inf:                  # -inf: a zero weight, as a zero discount gives
        raise ArpaError(f"{path}:{ln}: {what} {tok!r} must be a number or -inf")
    return x


def load_arpa(path):
    """An NGramLM that scores identically to the ARPA file at ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ArpaError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ArpaError(f"{path}:{line}: not UTF-8 "
                        f"(byte {data[e.start]:#04x} at offset {e.start})") from None
    del data
    lines = text.split("\n")
    ln = 0

    def nxt():
        nonlocal ln
        while ln < len(lines):
            ln += 1
            s = lines[ln - 1].strip()
            if s:
                return s
        raise ArpaError(f"{path}:{ln}: unexpected end of file (missing \\end\\)")

    try:
        s = nxt()
        while s != "\\data\\":                      # text before \data\ is a comment
            s = nxt()
    except ArpaError:
        raise ArpaError(f"{path}:{ln}: no '\\data\\' line: not an ARPA file") from None
    sizes = {}
    s = nxt()
    while s.startswith("ngram "):
        try:
            k, cnt = s[6:].split("=")
            k, cnt = int(k), int(cnt)
        except ValueError:
            raise ArpaError(f"{path}:{ln}: expected 'ngram <order>=<count>', got {s!r}") from None
        if k != len(sizes) + 1 or cnt < 0:
            raise ArpaError(f"{path}:{ln}: expected 'ngram {len(sizes) + 1}=<count>', got {s!r}")
        if k > MAX_ORDER:
            raise ArpaError(f"{path}:{ln}: order {k} is above the highest supported, {MAX_ORDER}")
        # each n-gram takes a line: a larger count is a broken header (and would size the arrays)
        if sum(sizes.values()) + cnt > len(lines) - ln:
            raise ArpaError(f"{path}:{ln}: the header announces {cnt} {k}-grams, but only "
                            f"{len(lines) - ln} lines follow")
        sizes[k] = cnt
        s = nxt()
    if not sizes:
        raise ArpaError(f"{path}:{ln}: expected 'ngram 1=<count>' after \\data\\, got {s!r}")
    N = len(sizes)
    grams, section = {}, {}
    for k in range(1, N + 1):
        if s != f"\\{k}-grams:":
            raise ArpaError(f"{path}:{ln}: expected '\\{k}-grams:', got {s!r}")
        section[k] = ln
        words, lp, lb, where = [], np.empty(sizes[k]), np.zeros(sizes[k]), np.empty(sizes[k], np.int64)
        for j in range(sizes[k]):
            s = nxt()
            if s.startswith("\\"):
                raise ArpaError(f"{path}:{ln}: the header announced {sizes[k]} {k}-grams, "
                                f"but section \\{k}-grams: has {j}")
            t = s.split()
            if len(t) not in (k + 1, k + 2) or (len(t) == k + 2 and k == N):
                raise ArpaError(f"{path}:{ln}: a {k}-gram line needs a log10 probability, {k} words"
                                f"{' and an optional backoff' if k < N else ''}; got {len(t)} fields")
            lp[j] = _float(t[0], path, ln, "log10 probability")
            if len(t) == k + 2:
                lb[j] = _float(t[-1], path, ln, "log10 backoff")
            words.append(t[1:k + 1])
            where[j] = ln
        grams[k] = (words, lp, lb, where)
        s = nxt()
    if s != "\\end\\":
        raise ArpaError(f"{path}:{ln}: expected '\\end\\' after the {N}-grams "
                        f"(more lines than 'ngram {N}={sizes[N]}' announced?), got {s!r}")
    # Vocabulary: '<unk>', '<s>', '</s>' first (the ids the models use), then the file's order.
    uni = [w[0] for w in grams[1][0]]
    index = {}
    for j, w in enumerate(uni):
        if w in index:
            raise ArpaError(f"{path}:{grams[1][3][j]}: unigram {w!r} appears twice")
        index[w] = j
    for t in (BOS, EOS):
        if t not in index:
            raise ArpaError(f"{path}:{section[1]}: the unigrams have no {t!r}")
    tokens = [UNK, BOS, EOS] + [w for w in uni if w not in (UNK, BOS, EOS)]
    tid = {t: i for i, t in enumerate(tokens)}
    V = len(tokens)
    model = ArpaLM(N)
    lp1, lb1 = np.full(V, MISSING_UNK), np.zeros(V)
    order = np.array([tid[w] for w in uni], dtype=np.int64)
    lp1[order], lb1[order] = grams[1][1], grams[1][2]
    # '<s>' keeps the file's value: a sentence start is never predicted anyway, and a literal
    # '<s>' inside a sentence is scored with it, as KenLM does (lmplz writes -99 there).
    rows, parent, logp, logb = {1: np.arange(V, dtype=np.int32)[:, None]}, {1: np.zeros(V, np.int64)}, {1: lp1}, {1: lb1}
    model._V = V
    model._key = {1: np.arange(V, dtype=np.int64)}
    model._rows = rows
    for k in range(2, N + 1):
        words, lp, lb, where = grams[k]
        r = np.empty((len(words), k), dtype=np.int64)
        for j, ws in enumerate(words):
            for m, w in enumerate(ws):
                i = tid.get(w)
                if i is None:
                    raise ArpaError(f"{path}:{where[j]}: word {w!r} of this {k}-gram is not among the unigrams")
                r[j, m] = i
        perm = np.lexsort(r.T[::-1]) if len(r) else np.zeros(0, np.int64)
        r, lp, lb, where = r[perm], lp[perm], lb[perm], where[perm]
        if len(r) > 1:
            dup = np.flatnonzero(np.all(r[1:] == r[:-1], axis=1))
            if dup.size:
                raise ArpaError(f"{path}:{where[dup[0] + 1]}: this {k}-gram appears twice")
        par = model._find(r[:, :-1]) if k > 2 else r[:, 0].copy()
        if np.any(par < 0):
            j = int(np.flatnonzero(par < 0)[0])
            raise ArpaError(f"{path}:{where[j]}: the context {' '.join(tokens[i] for i in r[j, :-1])!r} of this "
                            f"{k}-gram is not among the {k - 1}-grams")
        rows[k], parent[k], logp[k], logb[k] = r.astype(np.int32), par, lp, lb
        model._key[k] = par * V + r[:, -1]
    model._set_tables(tokens, rows, parent, logp, logb)
    return model
