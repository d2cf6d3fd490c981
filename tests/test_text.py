"""Text pipeline: parity with the book on The Time Machine, cleaning, tokenize, Vocab."""
import collections
import json
import os

import numpy as np
import pytest

import fastseq
from fastseq import Vocab, clean, corpus_tokens, load_corpus, read_lines, tokenize, tokenize_text
from fastseq.errors import ArgumentError, FastseqError


# Facts from ../shared/data/README.md (measured by the book, not by fastseq).
def test_timemachine_lines_match_the_book():
    assert len(read_lines("timemachine", "d2l")) == 3221


def test_timemachine_chars_match_the_book():
    corpus, vocab = load_corpus("timemachine", token="char", cleaning="d2l")
    assert len(corpus) == 170580
    assert len(vocab) == 28
    assert set(vocab.idx_to_token) == set("abcdefghijklmnopqrstuvwxyz ") | {"<unk>"}
    assert corpus.dtype == np.int32


def test_timemachine_top_words_match_the_book():
    tokens = tokenize(read_lines("timemachine", "d2l"), "word")
    vocab = Vocab(tokens)
    assert vocab.token_freqs[:10] == [
        ("the", 2261), ("i", 1267), ("and", 1245), ("of", 1155), ("a", 816),
        ("to", 695), ("was", 552), ("in", 541), ("that", 443), ("my", 440)]


def test_cleanings():
    assert clean("It's  a Time-Machine!", "d2l") == "it s a time machine"
    assert clean("  Ça va? Straße 42_x  ", "unicode") == "ça va strasse 42 x"
    assert clean("Δ-Ω", "unicode") == "δ ω"
    assert clean(" Raw\tText ", None) == " Raw\tText "
    with pytest.raises(ValueError, match="cleaning"):
        clean("x", "lower")


def test_tokenize_words_split_punctuation_and_chars_keep_everything():
    assert tokenize(["Hello, world!", "it's"], "word") == [["Hello", ",", "world", "!"], ["it", "'", "s"]]
    assert tokenize(["ab c"], "char") == [["a", "b", " ", "c"]]
    with pytest.raises(ValueError, match="token"):
        tokenize(["x"], "byte")
    with pytest.raises(ValueError, match="lines"):
        tokenize("one string", "word")


def test_vocab_order_unk_and_ties_by_first_appearance():
    v = Vocab(["b", "a", "c", "a", "b", "d"])
    # counts: b 2, a 2, c 1, d 1; ties keep first appearance: b before a, c before d
    assert v.idx_to_token == ["<unk>", "b", "a", "c", "d"]
    assert v["a"] == 2 and v["zzz"] == 0 and v[["c", "q"]] == [3, 0]
    assert v.to_tokens([1, 4]) == ["b", "d"] and v.to_tokens(0) == "<unk>"
    assert len(v) == 5 and "a" in v and "q" not in v


def test_vocab_min_freq_and_reserved():
    v = Vocab([["x", "y", "x"], ["z", "x", "y"]], min_freq=2, reserved_tokens=["<pad>", "<bos>"])
    assert v.idx_to_token == ["<unk>", "<pad>", "<bos>", "x", "y"]
    assert v["z"] == 0
    assert v.token_freqs == [("x", 3), ("y", 2), ("z", 1)]


@pytest.mark.parametrize("bad, match", [
    (dict(min_freq=-1), "min_freq"), (dict(min_freq=1.5), "min_freq"),
    (dict(reserved_tokens=["<unk>"]), "reserved_tokens"), (dict(reserved_tokens=["a", "a"]), "reserved_tokens"),
])
def test_vocab_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        Vocab(["a"], **bad)


def test_vocab_rejects_non_strings_and_bad_ids():
    with pytest.raises(ValueError, match="tokens"):
        Vocab([1, 2, 3])
    v = Vocab("abc")
    with pytest.raises(ValueError, match="ids"):
        v.to_tokens([0, 9])
    with pytest.raises(ValueError, match="ids"):
        v.to_tokens(-1)


def test_cython_counts_equal_counter_on_tinyshakespeare_words():
    tokens = [t for line in tokenize(read_lines("tinyshakespeare"), "word") for t in line]
    v = Vocab(tokens)
    expected = collections.Counter(tokens)
    assert dict(v.token_freqs) == dict(expected)
    # Counter.most_common is stable in insertion (= first appearance) order for ties.
    assert [t for t, _ in v.token_freqs] == [t for t, _ in expected.most_common()]
    ids = v.encode(tokens)
    assert ids.dtype == np.int32 and len(ids) == len(tokens)
    assert ids.tolist() == [v.token_to_idx[t] for t in tokens]


def test_build_equals_vocab_then_encode():
    tokens = tokenize(read_lines("timemachine", "d2l"), "word")
    for kw in ({}, {"min_freq": 3, "reserved_tokens": ["<pad>"]}):
        vocab, ids = Vocab.build(tokens, **kw)
        assert vocab == Vocab(tokens, **kw)
        assert np.array_equal(ids, vocab.encode(tokens))
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build(["a"], min_freq=-2)


def test_char_fast_path_equals_token_list_path():
    text = read_lines("tinyshakespeare")[:2000]
    s = "\n".join(text)
    a, b = Vocab(s), Vocab(list(s))
    assert a == b
    assert np.array_equal(a.encode(s), b.encode(list(s)))
    assert a.encode("Z\u2603") .tolist() == [a["Z"], 0]  # unseen character -> <unk>


def test_vocab_save_load_roundtrip(tmp_path):
    v = Vocab(["é", "a", "é", "<pad>"], reserved_tokens=["<bos>"])
    p = tmp_path / "v.json"
    v.save(p)
    w = Vocab.load(p)
    assert w == v and w["é"] == v["é"] and w.token_freqs == v.token_freqs


def test_vocab_load_rejects_damaged_files(tmp_path):
    p = tmp_path / "v.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON vocabulary"):
        Vocab.load(p)
    p.write_text(json.dumps({"format": "fastseq.Vocab", "idx_to_token": ["a", "<unk>"]}))
    with pytest.raises(ValueError, match="idx_to_token"):
        Vocab.load(p)
    p.write_text(json.dumps({"idx_to_token": ["<unk>"]}))
    with pytest.raises(ValueError, match="format"):
        Vocab.load(p)


def test_load_corpus_raw_chars_keep_newlines_and_max_tokens():
    corpus, vocab = load_corpus("tinyshakespeare", token="char")
    assert len(vocab) == 66  # 65 distinct characters + <unk>
    assert "\n" in vocab
    part, _ = load_corpus("tinyshakespeare", token="char", max_tokens=100)
    assert len(part) == 100
    with pytest.raises(ValueError, match="max_tokens"):
        load_corpus("tinyshakespeare", max_tokens=0)
    with pytest.raises(ValueError, match="token"):
        load_corpus("tinyshakespeare", token="bpe")


def test_load_corpus_empty_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_text("")
    with pytest.raises(ValueError, match="no tokens"):
        load_corpus(str(p))


def test_build_info_and_threads():
    info = fastseq.build_info()
    assert info["blas"] == "scipy-openblas32"
    assert info["blas_config"].startswith("OpenBLAS")
    for key in ("blas_version", "blas_threads", "compiler", "isa_flags", "isa", "version"):
        assert key in info


def test_build_info_reports_the_instruction_set_the_kernels_run():
    """kernel_isa follows the CPU (read from /proc/cpuinfo here, not from the module) and FASTSEQ_ISA."""
    import platform
    import subprocess
    import sys

    if platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("the dispatch is x86-64's; the CPU's flags are read from Linux's /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    native = ("avx512" if {"avx512f", "avx512vl", "avx512bw", "avx512dq", "fma"} <= flags
              else "avx2" if {"avx2", "fma"} <= flags else "baseline")

    def reported(isa):
        env = {k: v for k, v in os.environ.items() if k != "FASTSEQ_ISA"}
        if isa:
            env["FASTSEQ_ISA"] = isa
        code = "import fastseq; print(fastseq.build_info()['kernel_isa'])"
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert reported(None) == native
    assert reported("avx2") == ("avx2" if native != "baseline" else "baseline")
    assert reported("baseline") == "baseline"
    old = fastseq.get_num_threads()
    try:
        fastseq.set_num_threads(1)
        assert fastseq.get_num_threads() == 1 == fastseq.build_info()["blas_threads"]
    finally:
        fastseq.set_num_threads(old)
    with pytest.raises(ValueError, match="n"):
        fastseq.set_num_threads(0)


# ------------------------------------------------------------------ one tokenizer for every command
def test_corpus_tokens_is_what_training_and_stats_count():
    """`fastseq stats` counted 65 characters of tinyshakespeare (its lines, without the line
    breaks) where `fastseq train` counted 66: corpus_tokens is the one rule for both."""
    chars = corpus_tokens("tinyshakespeare", "char")
    assert isinstance(chars, str) and "\n" in chars
    ids, vocab = load_corpus("tinyshakespeare", token="char")
    assert len(Vocab(chars)) == len(vocab) == 66
    assert np.array_equal(vocab.encode(chars), ids)
    d2l = corpus_tokens("timemachine", "char", "d2l")
    assert len(d2l) == 170580 and "\n" not in d2l
    words = corpus_tokens("timemachine", "word", "d2l")
    assert words == [t for line in tokenize(read_lines("timemachine", "d2l"), "word") for t in line]


def test_tokenize_text_follows_the_corpus_rule():
    assert tokenize_text("Hi, you\nthere", "char") == list("Hi, you\nthere")
    assert tokenize_text("Hi, you\nthere", "word") == ["Hi", ",", "you", "there"]
    assert tokenize_text("Hi, you\nthere", "char", "d2l") == list("hi youthere")
    assert tokenize_text("Hi, you\nthere", "word", "d2l") == ["hi", "you", "there"]
    text = "The Time  Machine,\nby H. G. Wells\n"
    for token in ("char", "word"):
        for cleaning in (None, "d2l", "unicode"):
            assert tokenize_text(text, token, cleaning) == list(fastseq.text._text_tokens(text, token, cleaning))
    with pytest.raises(ArgumentError, match="token"):
        tokenize_text("a", "bpe")
    with pytest.raises(ArgumentError, match="cleaning"):
        tokenize_text("a", "char", "lower")
    with pytest.raises(ArgumentError, match="text"):
        tokenize_text(["a"], "char")


def test_vocab_checks_every_token_not_only_the_first_thousand():
    with pytest.raises(ArgumentError, match="tokens: expected strings, got int 5 at position 1500"):
        Vocab(["ab"] * 1500 + [5])
    with pytest.raises(ArgumentError, match="position 1500"):
        Vocab.build(["ab"] * 1500 + [5])
    with pytest.raises(ArgumentError, match="position"):
        Vocab([["ab"] * 1200, ["cd", None]])
    with pytest.raises(ArgumentError, match="reserved_tokens"):
        Vocab(["a"], reserved_tokens=[3])


def test_vocab_load_reads_only_regular_files_of_bounded_size(tmp_path):
    with pytest.raises(FastseqError, match="not a regular file"):
        Vocab.load("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FastseqError, match="not a regular file"):
        Vocab.load(fifo)                      # neither blocks waiting for a writer nor reads forever
    with pytest.raises(FastseqError, match="cannot read"):
        Vocab.load(tmp_path)                  # a folder
    with pytest.raises(FastseqError, match="cannot read"):
        Vocab.load(tmp_path / "missing.json")
    p = tmp_path / "v.json"
    Vocab("abc").save(p)
    assert Vocab.load(p) == Vocab("abc")
    with pytest.raises(FastseqError, match="bytes"):
        Vocab.load(p, max_bytes=10)
    p.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(FastseqError, match="vocab"):
        Vocab.load(p)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "v.json"]     # save left no temporary file
