"""Counting n-grams of corpora bigger than memory: sorted runs spilled to disk, then a k-way merge.

Data flow (the plan of KenLM's lmplz -S/-T, Heafield et al. 2013, without its streaming
estimation):

    lines ──> chunks of about memory / BYTES_PER_TOKEN tokens
          ──> model ids: the vocabulary grows in order of first appearance, in the same one
              pass (the order ``fit`` gives: '<unk>', '<s>', '</s>', then the words)
          ──> count_ngrams per chunk (Cython): sorted tables of every order = one run,
              written to tmp_dir
          ──> merged FAN_IN runs at a time (a tree of k-way merges, block by block, so a
              merge holds about memory bytes whatever the size of its runs)
          ──> one sorted table per order: the counts ``KneserNeyLM.fit_counts`` estimates from.

A corpus cut between sentences needs no context at the cuts (no n-gram crosses a sentence),
and counts are integers, so the merged counts, and the model, are exactly those of ``fit``.
The memory budget bounds everything that grows with the number of tokens; the merged counts
(one row per distinct n-gram) are the model itself and are loaded for the estimation.
"""
import os
import re
import shutil
import tempfile

import numpy as np

from .. import _text
from ..errors import ArgumentError
from .counting import NGramCounts, count_ngrams

__all__ = ["count_files", "parse_memory"]

# Peak bytes per token of one chunk: the tokens as Python strings (split, ~60 B), their model ids
# and the counting kernel's position tables (~100 B at order 5, issue 13), with room for the
# interpreter and the merge. A budget of M bytes counts chunks of M / BYTES_PER_TOKEN tokens; in
# bench/RESULTS.md a 512M budget peaks at 408 MB (14M tokens, order 5), the in-memory fit at 1,346 MB.
BYTES_PER_TOKEN = 400
# Runs merged at once: few enough that each run's block is large, many enough for few passes.
FAN_IN = 16
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(memory):
    """Bytes in a budget given as an int or as "2G", "500M", "64K" (powers of 1024, like lmplz -S)."""
    if isinstance(memory, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", memory.upper())
        if not m:
            raise ArgumentError(f"memory: expected bytes as an integer or like '2G', '500M', got {memory!r}")
        memory = int(float(m.group(1)) * _UNITS[m.group(2)])
    if isinstance(memory, bool) or not isinstance(memory, (int, np.integer)) or memory < (1 << 10):
        raise ArgumentError(f"memory: expected at least 1K bytes, got {memory!r}")
    return int(memory)


def _lines(source, where):
    """Lines of a path (UTF-8, read as it streams) or of an iterable of strings."""
    if isinstance(source, (str, bytes, os.PathLike)):
        try:
            with open(source, encoding="utf-8") as f:
                yield from f
        except OSError as e:
            raise ArgumentError(f"{os.fsdecode(source)}: cannot be read ({e.strerror})") from None
        except UnicodeDecodeError as e:
            raise ArgumentError(f"{os.fsdecode(source)}: not UTF-8 (byte {e.object[e.start]:#04x})") from None
    elif hasattr(source, "__iter__"):
        for line in source:
            if not isinstance(line, str):
                raise ArgumentError(f"{where}: expected lines of text (str), got a {type(line).__name__}")
            yield line
    else:
        raise ArgumentError(f"{where}: expected a path or an iterable of lines, got {source!r}")


class _Encoder:
    """Model ids of chunks of lines; the vocabulary grows in order of first appearance, or is
    fixed (``tokens``: a vocabulary gathered beforehand, as fastseq.ngram.distributed does)."""

    def __init__(self, tokens=None):
        from .models import BOS, EOS, UNK
        self.fixed = tokens is not None
        self.tokens = [UNK, BOS, EOS] if tokens is None else list(tokens)
        if self.tokens[:3] != [UNK, BOS, EOS]:
            raise ArgumentError("tokens: expected a vocabulary starting with '<unk>', '<s>', '</s>'")
        self.index = {t: i for i, t in enumerate(self.tokens) if t not in (BOS, EOS)}
        self.reserved = (BOS, EOS)

    def encode(self, flat):
        prov, uniq = _text.intern_tokens(flat)
        table = np.empty(len(uniq), dtype=np.int32)
        for j, t in enumerate(uniq):
            i = self.index.get(t)
            if i is None:
                if t in self.reserved:
                    raise ArgumentError(f"sentences: {t!r} is reserved (each sentence is wrapped in "
                                        "<s> ... </s> for you)")
                if self.fixed:
                    raise ArgumentError(f"tokens: the word {t!r} of the text is not in the vocabulary")
                i = self.index[t] = len(self.tokens)
                self.tokens.append(t)
            table[j] = i
        return table[prov] if len(prov) else np.zeros(0, np.int32)


def chunks(sources, chunk_tokens):
    """(flat token list, sentence lengths) of about chunk_tokens tokens each, cut between lines."""
    if isinstance(sources, (str, bytes, os.PathLike)):
        sources = [sources]
    if not hasattr(sources, "__iter__"):
        raise ArgumentError(f"sources: expected a list of paths or iterables of lines, got {sources!r}")
    flat, lengths = [], []
    for i, source in enumerate(sources):
        for line in _lines(source, f"sources[{i}]"):
            toks = line.split()
            flat += toks
            lengths.append(len(toks))
            if len(flat) >= chunk_tokens:
                yield flat, lengths
                flat, lengths = [], []
    if lengths:
        yield flat, lengths


def count_chunk(encoder, flat, lengths, order):
    """Counts of one chunk of sentences, wrapped in '<s>' ... '</s>'."""
    from .models import BOS_ID, EOS_ID
    ids = encoder.encode(flat)
    return count_ngrams(ids, order, lengths=np.asarray(lengths, dtype=np.int64), bos=BOS_ID, eos=EOS_ID,
                        vocab_size=len(encoder.tokens))


class _FileRows:
    """The rows of a table in a file, read on demand (len, an int index, a slice of rows).

    Not a memory map: the pages of a mapped file that a merge has read stay in the process's
    resident set until unmapped, so merging runs by mapping them held every run it had read
    (the 14M-token order-5 fit peaked at 535 MB in its merge against a 512M budget, 405 MB in
    its estimate). Read into ordinary arrays, a merge holds its blocks only."""

    def __init__(self, path, dtype, rows, width=None):
        self.path, self.dtype, self.rows, self.width = path, np.dtype(dtype), rows, width
        self.row_bytes = self.dtype.itemsize * (width or 1)

    def __len__(self):
        return self.rows

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(self.rows)
            if step != 1:
                raise ValueError("rows: only contiguous slices")
        else:
            a = key + self.rows if key < 0 else key
            if not 0 <= a < self.rows:
                raise IndexError(key)
            return self[a:a + 1][0]
        n = max(b - a, 0)
        if n == 0:
            out = np.zeros(0 if self.width is None else (0, self.width), self.dtype)
        else:
            out = np.fromfile(self.path, self.dtype, n * (self.width or 1), offset=a * self.row_bytes)
        return out if self.width is None else out.reshape(n, self.width)


class _Run:
    """Sorted tables of every order in a folder: g{k}.bin (K, k) int32 rows, c{k}.bin int64 counts."""

    def __init__(self, folder, sizes):
        self.folder, self.sizes = folder, sizes

    @classmethod
    def save(cls, folder, counts):
        os.makedirs(folder)
        for k in range(1, counts.order + 1):
            counts.grams[k].tofile(os.path.join(folder, f"g{k}.bin"))
            counts.counts[k].tofile(os.path.join(folder, f"c{k}.bin"))
        return cls(folder, {k: len(counts.counts[k]) for k in counts.grams})

    def table(self, k):
        if self.sizes[k] == 0:
            return np.zeros((0, k), np.int32), np.zeros(0, np.int64)
        return (_FileRows(os.path.join(self.folder, f"g{k}.bin"), np.int32, self.sizes[k], k),
                _FileRows(os.path.join(self.folder, f"c{k}.bin"), np.int64, self.sizes[k]))

    def load(self, vocab_size):
        grams, counts = {}, {}
        for k in self.sizes:
            g, c = self.table(k)
            grams[k], counts[k] = g[:], c[:]                     # in memory: the temporary folder goes
        return NGramCounts(grams, counts, vocab_size)


def _rows_le(block, row):
    """How many rows of a sorted (B, n) block are <= row (lexicographically)."""
    d = np.sign(block.astype(np.int64) - row)
    first = np.argmax(d != 0, axis=1)
    return int(np.count_nonzero(d[np.arange(len(d)), first] <= 0))


def _merge_order(tables, block, gfile, cfile):
    """k-way merge of sorted (rows, counts) tables into two files, block rows of each at a time.

    Each step takes up to ``block`` rows of every table, then only the rows no greater than the
    smallest last row among the blocks that stop short of their table's end (the frontier):
    every row still to come is greater, so the merged rows up to the frontier are final.
    """
    pos = [0] * len(tables)
    total = 0
    with open(gfile, "wb") as fg, open(cfile, "wb") as fc:
        while True:
            live = [i for i, (g, _) in enumerate(tables) if pos[i] < len(g)]
            if not live:
                break
            end = {i: min(pos[i] + block, len(tables[i][0])) for i in live}
            short = [i for i in live if end[i] < len(tables[i][0])]
            take = dict(end)
            if short:
                frontier = min((np.asarray(tables[i][0][end[i] - 1]) for i in short), key=tuple)
                for i in live:
                    take[i] = pos[i] + _rows_le(np.asarray(tables[i][0][pos[i]:end[i]]), frontier)
            G = np.concatenate([tables[i][0][pos[i]:take[i]] for i in live])
            C = np.concatenate([tables[i][1][pos[i]:take[i]] for i in live])
            for i in live:
                pos[i] = take[i]
            perm = np.lexsort(G.T[::-1])
            G, C = G[perm], C[perm]
            first = np.ones(len(G), dtype=bool)
            first[1:] = np.any(G[1:] != G[:-1], axis=1)
            starts = np.flatnonzero(first)
            G, C = G[starts], np.add.reduceat(C, starts) if len(C) else C
            fg.write(np.ascontiguousarray(G, dtype=np.int32).tobytes())
            fc.write(np.ascontiguousarray(C, dtype=np.int64).tobytes())
            total += len(G)
    return total


def merge_runs(runs, folder, memory):
    """One run holding the summed counts of ``runs`` (a tree of FAN_IN-way merges)."""
    level = 0
    while len(runs) > 1:
        merged = []
        for j in range(0, len(runs), FAN_IN):
            group = runs[j:j + FAN_IN]
            if len(group) == 1:
                merged.append(group[0])
                continue
            out = os.path.join(folder, f"merge{level}-{j // FAN_IN}")
            os.makedirs(out)
            sizes = {}
            for k in group[0].sizes:
                # each step holds block rows of every run, their concatenation and its sorted copy
                block = max(64, memory // (4 * len(group) * (4 * k + 8)))
                sizes[k] = _merge_order([r.table(k) for r in group], block,
                                        os.path.join(out, f"g{k}.bin"), os.path.join(out, f"c{k}.bin"))
            for r in group:
                shutil.rmtree(r.folder)
            merged.append(_Run(out, sizes))
        runs, level = merged, level + 1
    return runs[0]


def count_files(sources, order, memory="1G", tmp_dir=None, chunk_tokens=None, tokens=None):
    """(tokens, NGramCounts) of sentences read from files or iterables of lines, out of core.

    sources: a path, or a list whose items are paths (UTF-8 text, one sentence a line, tokens
    separated by whitespace) or iterables of lines (a file object, a generator, a list of str).
    memory: the budget for counting and merging ("2G", "500M" or bytes); tmp_dir: where the
    runs go (a fresh folder inside it, removed at the end; default the system's temporary
    folder). chunk_tokens: tokens counted at once (default memory / BYTES_PER_TOKEN).
    tokens: a fixed vocabulary to encode with (default: grown from the text).
    Returns the model vocabulary ('<unk>', '<s>', '</s>', then words in order of first
    appearance) and the counts of orders 1..order over its ids, equal to counting all lines at once.
    """
    from .counting import _check_order
    order = _check_order(order)
    memory = parse_memory(memory)
    if chunk_tokens is None:
        chunk_tokens = max(64, memory // BYTES_PER_TOKEN)
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, (int, np.integer)) or chunk_tokens < 1:
        raise ArgumentError(f"chunk_tokens: expected an integer >= 1, got {chunk_tokens!r}")
    if tmp_dir is not None and not os.path.isdir(tmp_dir):
        raise ArgumentError(f"tmp_dir: {os.fsdecode(tmp_dir)!r} is not a folder")
    encoder = _Encoder(tokens)
    folder = tempfile.mkdtemp(prefix="fastseq-ngram-", dir=tmp_dir)
    try:
        runs, n_tokens = [], 0
        for flat, lengths in chunks(sources, chunk_tokens):
            n_tokens += len(flat)
            counts = count_chunk(encoder, flat, lengths, order)
            del flat, lengths
            runs.append(_Run.save(os.path.join(folder, f"run{len(runs)}"), counts))
            del counts
        if n_tokens == 0 and tokens is None:     # as fit: sentences with no words are no corpus
            raise ArgumentError("sources: empty corpus (no tokens to fit)")
        tokens = encoder.tokens
        if not runs:                             # a part of a corpus may hold no lines
            return tokens, NGramCounts({k: np.zeros((0, k), np.int32) for k in range(1, order + 1)},
                                       {k: np.zeros(0, np.int64) for k in range(1, order + 1)}, len(tokens))
        counts = merge_runs(runs, folder, memory).load(len(tokens))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return tokens, counts
