"""A binary n-gram model: written once (from a fitted model or an ARPA file), loaded by
memory-mapping, with no parse. The layout is in docs/NGRAM-FILES.md:

    magic (24 bytes) | version u32 | header length u32 | header checksum u64 | header (JSON)
    then the tables, each at a 64-byte boundary, little-endian: the vocabulary (UTF-8 blob and
    int64 offsets), logp1 and logb1 (float64, one per word), and for k >= 2 the probing table
    slot{k} (uint64; _arpa.slot_tables: key, log10 p and, below the highest order, log10 backoff
    in each slot) that the queries search, so that loading stays a map. Versions 1 and 2 (the
    k-grams grouped by context, numbers in separate arrays) are still read: their probing tables
    are built in memory at each load (rewrite such a file with write_binary to map them).

The header holds the order, the counts, the meta dict, each table's place and a checksum of
all the tables; a truncated, foreign or altered file is an ArpaError, never a crash: after
the checksums, every table is checked for what the query loops rely on (monotone starts,
ids in range) before it is used.
"""
import json
import mmap
import os
import struct

import numpy as np

from . import _arpa
from .arpa import (ArpaError, ArpaLM, _check_meta, arpa_words, check_regular_file, parse_arpa, read_regular_file,
                   unescape_token)

__all__ = ["BinaryModel", "is_binary", "load_binary", "write_binary"]

MAGIC = b"fastseq n-gram model\x00\x00\x00\x00"
VERSION = 3
_READS = (1, 2, 3)                                 # 1, 2: tables by rows (probing tables built at load)
_FIXED = struct.Struct("<24sIIQ")                  # magic, version, header length, header checksum
_ALIGN = 64
_MAX_HEADER = 1 << 24
_DTYPES = {"uint8": np.uint8, "int32": np.int32, "uint32": np.uint32, "uint64": np.uint64, "int64": np.int64, "float64": np.float64}


def is_binary(path):
    """Whether the file at path starts with this format's magic (False if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class BinaryModel:
    """The tables of a binary model file (memory-mapped, read-only).

    order, vocab_size, meta, escaped, suffix_closed, version; words (bytes blob) and offsets;
    logp1, logb1 (order 1) and slots (the probing table of each order k >= 2 at index k - 2), as
    fastseq.ngram.query.Model uses them; starts, lasts, logp, logb (lists indexed k - 1: the
    n-grams of each order grouped by context) computed from them when first asked for.
    """

    def _row_tables(self):
        if getattr(self, "_rows", None) is None:
            V = self.vocab_size
            try:
                st, la, lp, lb = _arpa.slot_rows(self.slots, self.order, V, self.counts)
            except ValueError as e:
                raise ArpaError(f"{self.path}: {e}") from None
            self._rows = ([np.zeros(1, np.int64)] + st, [np.arange(V, dtype=np.int32)] + la,
                          [self.logp1] + lp, [self.logb1] + lb)
        return self._rows

    starts = property(lambda self: self._row_tables()[0])
    lasts = property(lambda self: self._row_tables()[1])
    logp = property(lambda self: self._row_tables()[2])
    logb = property(lambda self: self._row_tables()[3])

    def to_ngram_lm(self):
        """The NGramLM (an ArpaLM) these tables hold, as load_arpa returns it."""
        V, N = self.vocab_size, self.order
        blob = bytes(self.words)
        try:
            tokens = [blob[self.offsets[i]:self.offsets[i + 1]].decode("utf-8") for i in range(V)]
        except UnicodeDecodeError:
            raise ArpaError(f"{self.path}: a word of the vocabulary is not UTF-8") from None
        if self.escaped:
            tokens = [unescape_token(t, self.path) for t in tokens]
        if len(set(tokens)) != V:
            raise ArpaError(f"{self.path}: a word appears twice in the vocabulary")
        rows, parent = {1: np.arange(V, dtype=np.int32)[:, None]}, {1: np.zeros(V, np.int64)}
        for k in range(2, N + 1):
            starts = np.asarray(self.starts[k - 1])
            parent[k] = np.repeat(np.arange(len(starts) - 1, dtype=np.int64), np.diff(starts))
            rows[k] = np.column_stack([rows[k - 1][parent[k]], np.asarray(self.lasts[k - 1])]).astype(np.int32)
        logp = {k: np.array(self.logp[k - 1]) for k in range(1, N + 1)}
        logb = {k: np.array(self.logb[k - 1]) if k < N else np.zeros(len(rows[N])) for k in range(1, N + 1)}
        model = ArpaLM(N)
        model._set_tables(tokens, rows, parent, logp, logb)
        model.meta = dict(self.meta)
        return model


def _tables_of(model):
    """(escaped, words, starts, lasts, logp, logb) of a fitted NGramLM."""
    escaped, words = arpa_words(model.vocab)
    starts, lasts, logp, logb = model._scoring_tables()
    N = model.order
    return (escaped, words, [np.ascontiguousarray(s, np.int64) for s in starts],
            [np.ascontiguousarray(x, np.int32) for x in lasts],
            list(logp), [logb[k] if k < N - 1 else np.zeros(0) for k in range(N)])


def query_tables(blob, offsets, starts, lasts, logp, logb):
    """(logp1, logb1, slots, suffix_closed): what the queries use, from a model's tables grouped by
    context (checked by _arpa.check_tables first; ValueError naming the broken one)."""
    keep = _arpa.check_tables(len(logp), blob, offsets, list(starts), list(lasts), list(logp), list(logb))
    st, la, lp, lb = keep[2::4], keep[3::4], keep[4::4], keep[5::4]
    return lp[0], lb[0], _arpa.slot_tables(st, la, lp, lb), bool(_arpa.suffix_closed(st, la))


def write_binary(source, path, meta=None):
    """Write a binary model at path (atomically) from a fitted NGramLM or an ARPA file's path.

    meta: a dict of strings to keep (default: an ARPA file's own meta, or none).
    """
    from ..checkpoint import atomic_write
    from .models import NGramLM
    if isinstance(source, NGramLM):
        source._check_fitted()
        escaped, words, starts, lasts, logp, logb = _tables_of(source)
        meta = _check_meta(meta if meta is not None else getattr(source, "meta", None))
    else:
        name = os.fspath(source)
        file_meta, escaped, words, rows, parent, lp, lb = parse_arpa(read_regular_file(source, "ARPA file"), name)
        N = len(rows)
        starts = [np.zeros(1, np.int64)] + [
            np.searchsorted(parent[k], np.arange(len(rows[k - 1]) + 1)).astype(np.int64) for k in range(2, N + 1)]
        lasts = [rows[k][:, -1].astype(np.int32) for k in range(1, N + 1)]
        logp = [lp[k] for k in range(1, N + 1)]
        logb = [lb[k] if k < N else np.zeros(0) for k in range(1, N + 1)]
        meta = _check_meta(meta if meta is not None else file_meta)
    N = len(logp)
    blob = np.frombuffer(b"".join(words), np.uint8)
    offsets = np.zeros(len(words) + 1, np.int64)
    np.cumsum([len(w) for w in words], out=offsets[1:])
    try:
        logp1, logb1, slots, closed = query_tables(blob, offsets, starts, lasts, logp, logb)
    except ValueError as e:
        raise ArpaError(f"{os.fspath(path)}: the model's tables are not consistent ({e})") from None
    tables = [("words", blob), ("offsets", offsets), ("logp1", logp1), ("logb1", logb1)]
    tables += [(f"slot{k}", slots[k - 2]) for k in range(2, N + 1)]
    # places relative to the end of the header, which depends on its own length: two passes
    place, pos = [], 0
    for name, a in tables:
        place.append([name, a.dtype.name, pos, int(a.size)])
        pos += -(-a.nbytes // _ALIGN) * _ALIGN
    body = bytearray(pos)
    for (name, a), (_, _, off, _) in zip(tables, place):
        body[off:off + a.nbytes] = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    header = {"format": "fastseq n-gram model", "order": N, "vocab_size": len(words),
              "counts": [int(len(logp[k])) for k in range(N)], "escaped": bool(escaped), "meta": meta,
              "suffix_closed": closed,
              "tables": place, "tables_checksum": _arpa.checksum(np.frombuffer(body, np.uint8))}
    hb = json.dumps(header, ensure_ascii=False).encode("utf-8")
    start = -(-(_FIXED.size + len(hb)) // _ALIGN) * _ALIGN
    head = _FIXED.pack(MAGIC, VERSION, len(hb), _arpa.checksum(np.frombuffer(hb, np.uint8))) + hb
    data = head + b"\x00" * (start - len(head)) + bytes(body)
    try:
        atomic_write(path, data)
    except OSError as e:
        raise ArpaError(f"{os.fspath(path)}: cannot be written ({e.strerror or e})") from None


def load_binary(path, verify=True):
    """The BinaryModel in the file at path, memory-mapped. verify: check the tables' checksum
    (reads every page once); the header's checksum and the tables' structure are always checked."""
    name = check_regular_file(path, "binary model file")
    try:
        with open(name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _FIXED.size:
                raise ArpaError(f"{name}: {size} bytes: too short for a fastseq binary model (truncated?)")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ArpaError(f"{name}: cannot be read ({e.strerror})") from None
    magic, version, hlen, hsum = _FIXED.unpack_from(mm, 0)
    if magic != MAGIC:
        what = " (a KenLM binary model: load it with kenlm)" if bytes(mm[:8]) == b"mmap lm " else ""
        raise ArpaError(f"{name}: not a fastseq binary model{what}")
    if version not in _READS:
        raise ArpaError(f"{name}: binary model version {version}; this fastseq reads versions "
                        f"{', '.join(map(str, _READS))}")
    if hlen > min(_MAX_HEADER, size - _FIXED.size):
        raise ArpaError(f"{name}: the header length {hlen} runs past the end of the file (truncated?)")
    hb = mm[_FIXED.size:_FIXED.size + hlen]
    if _arpa.checksum(np.frombuffer(hb, np.uint8)) != hsum:
        raise ArpaError(f"{name}: the header's checksum does not match (the file was altered or damaged)")
    try:
        h = json.loads(hb.decode("utf-8"))
        m = BinaryModel()
        m.path = name
        m.order, m.vocab_size = int(h["order"]), int(h["vocab_size"])
        m.escaped, m.meta = bool(h["escaped"]), _check_meta(h["meta"])
        m.suffix_closed = bool(h.get("suffix_closed", False))
        place = {t[0]: (str(t[1]), int(t[2]), int(t[3])) for t in h["tables"]}
        counts = [int(c) for c in h["counts"]]
        tsum = int(h["tables_checksum"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ArpaError(f"{name}: the header is not a valid model description ({e})") from None
    start = -(-(_FIXED.size + hlen) // _ALIGN) * _ALIGN
    if start > size or any(mm[_FIXED.size + hlen:start]):   # no checksum covers the padding: it must be zeros
        raise ArpaError(f"{name}: the padding after the header is not zeros (the file was altered or damaged)")
    N, V = m.order, m.vocab_size
    if not 1 <= N <= 64 or len(counts) != N or V < 3 or counts[0] != V:
        raise ArpaError(f"{name}: the header describes order {N} with counts {counts[:8]}: not a model")
    end = start
    for _, (dt, off, cnt) in place.items():
        if dt not in _DTYPES or off < 0 or off % _ALIGN or cnt < 0:
            raise ArpaError(f"{name}: the header places a table out of the format")
        end = max(end, start + off + cnt * np.dtype(_DTYPES[dt]).itemsize)
    if end > size:
        raise ArpaError(f"{name}: {size} bytes, but its tables end at byte {end} (truncated?)")
    if verify and _arpa.checksum(np.frombuffer(mm, np.uint8, size - start, start)) != tsum:
        raise ArpaError(f"{name}: the tables' checksum does not match (the file was altered or damaged)")

    def table(tname, dtype, count):
        if tname not in place or place[tname][0] != np.dtype(dtype).name or place[tname][2] != count:
            raise ArpaError(f"{name}: table {tname!r} is missing or has the wrong type or size")
        return np.frombuffer(mm, np.dtype(dtype).newbyteorder("<"), count, start + place[tname][1])

    m.offsets = table("offsets", np.int64, V + 1)
    m.words = table("words", np.uint8, place.get("words", ("", 0, 0))[2])
    m.version, m.counts = version, counts
    try:                                         # what the query loops rely on, even in a file re-signed by hand
        if version >= 3:
            m.logp1, m.logb1 = table("logp1", np.float64, V), table("logb1", np.float64, V)
            m.slots = [_arpa.check_slots(table(f"slot{k}", np.uint64, (3 if k < N else 2) * _arpa.slot_count(counts[k - 1])),
                                         k, N, counts[k - 1]) for k in range(2, N + 1)]
        else:                                    # tables by rows: probing tables built here, at every load
            rows = [np.zeros(1, np.int64)], [np.arange(V, dtype=np.int32)], [], []
            for k in range(1, N + 1):
                rows[2].append(table(f"logp{k}", np.float64, counts[k - 1]))
                rows[3].append(table(f"logb{k}", np.float64, counts[k - 1] if k < N else 0))
                if k > 1:
                    rows[0].append(table(f"starts{k}", np.int64, counts[k - 2] + 1))
                    rows[1].append(table(f"lasts{k}", np.int32, counts[k - 1]))
                    if version == 2:             # present (and checksummed) though rebuilt: the file is whole
                        table(f"probe{k}", np.uint32, place.get(f"probe{k}", ("", 0, -1))[2])
            m.logp1, m.logb1, m.slots, _ = query_tables(m.words, m.offsets, *rows)
            m._rows = rows
    except ValueError as e:
        raise ArpaError(f"{name}: {e}") from None
    m._mmap = mm
    return m

