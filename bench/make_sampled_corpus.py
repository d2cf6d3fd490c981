"""Write a corpus of sentences sampled from the maximum-likelihood trigram model of a real corpus.

    python bench/make_sampled_corpus.py --tokens 100M --out /tmp/sampled [--source tinyshakespeare]

The text goes to OUT/sampled-<tokens>.txt (one sentence a line, words separated by spaces), never
into the repository. Sentences are drawn the way a trigram model generates them (*Dive into Deep
Learning*, chapter 8, "Language Models"): the first word from P(w | <s>), then P(w | u v) until
'</s>'. The same --random-state gives the same file. Many lanes are sampled at once with NumPy,
so 100M tokens take minutes, not hours.
"""
import argparse
import os
import sys
import time

import numpy as np

from fastseq.ngram import count_ngrams


def trigram_tables(lines):
    """Vocabulary (id 0 '<s>', 1 '</s>') and the sampling tables of the trigram MLE of the lines."""
    index = {"<s>": 0, "</s>": 1}
    ids, lengths = [], []
    for line in lines:
        toks = line.split()
        if toks:
            ids += [index.setdefault(t, len(index)) for t in toks]
            lengths.append(len(toks))
    V = len(index)
    c = count_ngrams(np.asarray(ids, np.int64), 3, lengths=lengths, bos=0, eos=1, vocab_size=V)
    g2, g3, n3 = c.grams[2], c.grams[3], c.counts[3]
    key2 = g2[:, 0].astype(np.int64) * V + g2[:, 1]
    parent3 = np.searchsorted(key2, g3[:, 0].astype(np.int64) * V + g3[:, 1])      # context (u v)
    suffix3 = np.searchsorted(key2, g3[:, 1].astype(np.int64) * V + g3[:, 2])      # next state (v w)
    suffix3 = np.minimum(suffix3, len(key2) - 1)    # (v '</s>') ends the sentence: never used as a state
    start3 = np.searchsorted(parent3, np.arange(len(g2) + 1))                      # children of each context
    cum3 = np.concatenate([[0], np.cumsum(n3)])
    first = np.flatnonzero(g2[:, 0] == 0)                                          # bigrams (<s> w)
    cum_first = np.concatenate([[0], np.cumsum(c.counts[2][first])])
    words = [None] * V
    for t, i in index.items():
        words[i] = t
    return words, (first, cum_first, g2[:, 1], g3[:, 2], start3, cum3, suffix3)


def sample(tables, n_tokens, rng, lanes=1 << 16, steps=256):
    """Yield arrays of sampled ids, whole sentences each ending with id 1 ('</s>'), until n_tokens
    words. Each of ``lanes`` lanes samples ``steps`` ids a round; its unfinished sentence is dropped."""
    first, cum_first, word2, last3, start3, cum3, suffix3 = tables

    def starts(n):                                  # bigram rows (<s> w1), drawn by their counts
        return first[np.searchsorted(cum_first, rng.integers(0, cum_first[-1], n), "right") - 1]

    done = 0
    while done < n_tokens:
        out = np.empty((lanes, steps), np.int32)
        state = starts(lanes)                       # state: the bigram row (u v) of the last two words
        out[:, 0] = word2[state]
        for s in range(1, steps):
            lo, hi = start3[state], start3[state + 1]
            target = cum3[lo] + (rng.random(lanes) * (cum3[hi] - cum3[lo])).astype(np.int64)
            pick = np.clip(np.searchsorted(cum3, target, "right") - 1, 0, len(last3) - 1)
            nxt, state = last3[pick], suffix3[pick]
            r = np.flatnonzero(out[:, s - 1] == 1)  # after '</s>' a new sentence starts
            if len(r):
                st = starts(len(r))
                nxt[r], state[r] = word2[st], st
            out[:, s] = nxt
        ends = out == 1
        last_end = steps - 1 - np.argmax(ends[:, ::-1], axis=1)
        keep = (np.arange(steps)[None, :] <= last_end[:, None]) & ends.any(axis=1)[:, None]
        ids = out[keep]
        done += int(np.count_nonzero(ids != 1))
        yield ids


def sampled_lines(source_lines, n_tokens, random_state=0, lanes=1 << 16):
    """Chunks of text (whole lines) of about n_tokens words sampled from the trigram model of the lines."""
    words, tables = trigram_tables(source_lines)
    rng = np.random.default_rng(random_state)
    strings = np.array([w + " " for w in words], dtype=object)
    strings[1] = "\n"
    for ids in sample(tables, n_tokens, rng, lanes=lanes):
        yield "".join(strings[ids].tolist())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="100M", help="words to sample (K, M, G suffixes: powers of 1000)")
    ap.add_argument("--out", required=True, help="folder outside the repository")
    ap.add_argument("--source", default="tinyshakespeare", help="a corpus of fastseq.datasets or a text file")
    ap.add_argument("--random-state", type=int, default=0)
    a = ap.parse_args(argv)
    n = int(float(a.tokens.rstrip("KMG")) * {"K": 1e3, "M": 1e6, "G": 1e9}.get(a.tokens[-1], 1))
    if os.path.isfile(a.source):
        with open(a.source, encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        from fastseq.text import read_lines
        lines = read_lines(a.source)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"sampled-{a.tokens}.txt")
    t0, written = time.perf_counter(), 0
    with open(path + ".part", "w", encoding="utf-8") as f:
        for text in sampled_lines(lines, n, a.random_state):
            f.write(text)
    os.replace(path + ".part", path)
    print(f"{path}: sampled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
