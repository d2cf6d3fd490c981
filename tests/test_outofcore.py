"""fastseq.ngram.outofcore: counting in sorted runs spilled to disk and merged gives exactly the
counts, and the model, of the in-memory fit."""
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("FASTSEQ_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastseq.errors import FastseqError
from fastseq.ngram import KneserNeyLM, LaplaceLM, count_ngrams
from fastseq.ngram import outofcore
from fastseq.ngram.outofcore import _merge_order, count_files, parse_memory
from fastseq.text import read_lines

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from make_sampled_corpus import sampled_lines  # noqa: E402


def assert_same_model(a, b):
    """Every stored probability and backoff, bit for bit, and the vocabulary."""
    assert a.vocab == b.vocab and a.order == b.order
    for k in range(1, a.order + 1):
        assert np.array_equal(a._rows[k], b._rows[k]), k
        assert np.array_equal(a._logp[k], b._logp[k]), k
        assert np.array_equal(a._logb[k], b._logb[k]), k


@pytest.fixture(scope="module")
def corpus_600k():
    """About 600K words: Shakespeare and the Time Machine as they are, then sentences sampled
    from the trigram model of Shakespeare."""
    lines = read_lines("tinyshakespeare") + read_lines("timemachine")
    have = sum(len(line.split()) for line in lines)
    for text in sampled_lines(lines, 600_000 - have, random_state=1, lanes=1024):
        for line in text.splitlines():
            if have < 600_000:
                lines.append(line)
                have += len(line.split())
    assert 600_000 <= sum(len(line.split()) for line in lines) < 600_100
    return lines


@pytest.fixture
def spy_runs(monkeypatch):
    """How many runs a count spilled to disk."""
    saved = []
    real = outofcore._Run.save

    def save(folder, counts):
        saved.append(folder)
        return real(folder, counts)

    monkeypatch.setattr(outofcore._Run, "save", staticmethod(save))
    return saved


@pytest.mark.slow
def test_600k_words_many_runs_equal_in_memory_fit(corpus_600k, tmp_path, spy_runs):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(corpus_600k) + "\n", encoding="utf-8")
    want = KneserNeyLM(5).fit(corpus_600k)
    got = KneserNeyLM(5).fit_files([str(path)], memory="8M", tmp_dir=tmp_path)
    assert len(spy_runs) > outofcore.FAN_IN          # a tree of merges, two levels at least
    assert_same_model(got, want)
    assert got.discounts == want.discounts
    assert os.listdir(tmp_path) == ["corpus.txt"]      # the runs are gone


def test_counts_equal_counting_at_once_on_a_real_corpus(tmp_path, spy_runs):
    lines = read_lines("timemachine")
    tokens, counts = count_files([lines], 4, memory="1M", chunk_tokens=1000, tmp_dir=tmp_path)
    assert len(spy_runs) >= 30
    model = KneserNeyLM(4)
    from fastseq.ngram.models import _sentences_to_ids
    ids, lengths, want_tokens = _sentences_to_ids(lines)
    assert tokens == want_tokens
    assert counts == count_ngrams(ids, 4, lengths=lengths, bos=1, eos=2, vocab_size=len(tokens))
    assert_same_model(model.fit_counts(tokens, counts), KneserNeyLM(4).fit(lines))


def test_arpa_bytes_identical(tmp_path):
    lines = read_lines("timemachine")
    a, b = tmp_path / "a.arpa", tmp_path / "b.arpa"
    KneserNeyLM(3).fit(lines).to_arpa(a)
    KneserNeyLM(3).fit_files([lines[:1000], iter(lines[1000:])], memory="64K").to_arpa(b)
    assert a.read_bytes() == b.read_bytes()


sentences = st.lists(st.lists(st.sampled_from("a b c d e f <unk>".split()), max_size=9), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(sentences, st.integers(1, 5), st.integers(1, 30), st.booleans())
def test_sampled_corpora_tiny_budget_property(sents, order, chunk, laplace):
    lines = [" ".join(s) for s in sents]
    if not any(sents):
        with pytest.raises(FastseqError, match="empty corpus"):
            count_files([lines], order, chunk_tokens=chunk)
        return
    make = (lambda: LaplaceLM(order, eps=0.5)) if laplace else (lambda: KneserNeyLM(order, discount_fallback=True))
    tokens, counts = count_files([lines], order, memory="4K", chunk_tokens=chunk)
    assert_same_model(make().fit_counts(tokens, counts), make().fit(lines))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(*[st.integers(0, 3)] * 3), max_size=30), min_size=1, max_size=6),
       st.integers(1, 7))
def test_kway_merge_in_small_blocks_sums_the_runs(tmp_path_factory, runs, block):
    folder = tmp_path_factory.mktemp("merge")
    tables, want = [], Counter()
    for r in runs:
        run = Counter(r)
        want.update(run)
        keys = sorted(run)
        tables.append((np.array(keys, dtype=np.int32).reshape(-1, 3), np.array([run[x] for x in keys], np.int64)))
    K = _merge_order(tables, block, folder / "g", folder / "c")
    g = np.fromfile(folder / "g", np.int32).reshape(-1, 3)
    c = np.fromfile(folder / "c", np.int64)
    assert K == len(want)
    assert [tuple(x) for x in g.tolist()] == sorted(want)                 # sorted, no duplicates
    assert c.tolist() == [want[x] for x in sorted(want)]


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_merge_reads_runs_without_mapping_them(tmp_path, monkeypatch):
    # Found today: runs merged through memory maps kept every page the merge had read resident,
    # so the 14M-token order-5 fit peaked 4% over its 512M budget in the merge (bench/RESULTS.md).
    mapped = []
    real = outofcore._merge_order

    def spy(tables, block, gfile, cfile):
        with open("/proc/self/maps") as f:
            mapped.extend(line for line in f if str(tmp_path) in line)
        return real(tables, block, gfile, cfile)

    monkeypatch.setattr(outofcore, "_merge_order", spy)
    lines = [" ".join(s) for s in read_lines("timemachine", "d2l")[:600]]
    tokens, counts = count_files([lines], 3, memory="64K", tmp_dir=tmp_path, chunk_tokens=500)
    assert not mapped
    tokens2, counts2 = count_files([lines], 3, memory="64M", tmp_dir=tmp_path)
    assert tokens == tokens2
    for k in range(1, 4):
        assert np.array_equal(counts.grams[k], counts2.grams[k]) and np.array_equal(counts.counts[k], counts2.counts[k])


def test_files_and_iterables_mix(tmp_path):
    lines = read_lines("timemachine")[:400]
    p = tmp_path / "x.txt"
    p.write_text("\n".join(lines[100:]) + "\n", encoding="utf-8")
    with open(p, encoding="utf-8") as f:
        got = LaplaceLM(3).fit_files([lines[:50], (x for x in lines[50:100]), p], memory="16K")
    assert_same_model(got, LaplaceLM(3).fit(lines))
    got = LaplaceLM(2).fit_files(p, memory="16K")                      # one path
    assert_same_model(got, LaplaceLM(2).fit(lines[100:]))


@pytest.mark.parametrize("memory, want", [("2G", 2 << 30), ("500M", 500 << 20), ("64k", 64 << 10),
                                          ("1.5G", 3 << 29), (4096, 4096), ("3GiB", 3 << 30)])
def test_parse_memory(memory, want):
    assert parse_memory(memory) == want


@pytest.mark.parametrize("memory", ["2X", "", "-1G", 12, True, 1.5, None, "G"])
def test_bad_memory_names_the_argument(memory):
    with pytest.raises(FastseqError, match="^memory: "):
        parse_memory(memory)


def test_bad_sources_name_what_is_wrong(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(FastseqError, match="latin1.txt: not UTF-8"):
        KneserNeyLM(2).fit_files([bad])
    with pytest.raises(FastseqError, match="missing.txt: cannot be read"):
        KneserNeyLM(2).fit_files([tmp_path / "missing.txt"])
    with pytest.raises(FastseqError, match="reserved"):
        KneserNeyLM(2).fit_files([["a <s> b"]])
    with pytest.raises(FastseqError, match=r"sources\[0\]: expected lines of text"):
        KneserNeyLM(2).fit_files([[["a", "b"]]])
    with pytest.raises(FastseqError, match="empty corpus"):
        KneserNeyLM(2).fit_files([["", "  "]])
    with pytest.raises(FastseqError, match="tmp_dir"):
        KneserNeyLM(2).fit_files([["a b"]], tmp_dir=tmp_path / "nowhere")
    with pytest.raises(FastseqError, match="sources"):
        KneserNeyLM(2).fit_files(42)


def test_runs_are_removed_after_a_failure(tmp_path):
    def lines():
        yield "a b c"
        yield "d e f"
        raise OSError("disk gone")

    with pytest.raises(OSError):
        count_files([lines()], 2, chunk_tokens=1, tmp_dir=tmp_path)
    assert os.listdir(tmp_path) == []
