"""ARPA files: compiled writing and reading, KenLM's number syntax, atomic writes, header meta,
escaped whitespace tokens, files that are not regular files, and the binary model."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from fastseq.errors import FastseqError
from fastseq.ngram import ArpaError, KneserNeyLM, LaplaceLM, Model, load_arpa, load_binary, write_binary
from fastseq.ngram.arpa import escape_token, unescape_token
from fastseq.text import read_lines

from test_ngram import ARPA, tm_split  # noqa: F401  (the hand-written file and the Time Machine split)


@pytest.fixture(scope="module")
def kn5(tm_split):
    return KneserNeyLM(5, discount_fallback=True).fit(tm_split[0])


def test_arpa_error_is_a_fastseq_error():
    assert issubclass(ArpaError, FastseqError) and issubclass(ArpaError, ValueError)


# ----- round trip ----------------------------------------------------------------------------------
def test_round_trip_is_exact_and_rewrites_the_same_bytes(kn5, tm_split, tmp_path):
    a, b = tmp_path / "a.arpa", tmp_path / "b.arpa"
    kn5.to_arpa(a)
    m = load_arpa(a)
    for k in range(1, 6):                                # every stored double comes back bit for bit
        assert np.array_equal(m._rows[k], kn5._rows[k])
        assert np.array_equal(m._logp[k], kn5._logp[k]) and np.array_equal(m._logb[k], kn5._logb[k])
    assert m.vocab == kn5.vocab
    m.to_arpa(b)
    assert a.read_bytes() == b.read_bytes()
    assert m.perplexity(tm_split[1]) == kn5.perplexity(tm_split[1])


def test_reader_sorts_a_file_in_any_order(tmp_path):
    # n-grams listed out of order (as other tools write them) read back as the sorted model
    p = tmp_path / "m.arpa"
    p.write_text(ARPA.replace("-0.2\t<s> a\n-0.4\ta b", "-0.4\ta b\n-0.2\t<s> a"))
    m = load_arpa(p)
    assert m.score("a b") == pytest.approx(-0.2 - 0.4 - 0.5)
    assert [list(r) for r in m._rows[2]] == sorted([list(r) for r in m._rows[2]])


# ----- numbers: exactly KenLM's syntax ---------------------------------------------------------------
ACCEPTED = ["-1", "-1.5", "-.5", "-5.", "-1e-3", "-1E+2", "-2.5e1", "+0", "0", "-0", "-00.50", "-inf",
            "-1e-400", "-0.000000000000000000001"]
REFUSED = ["-\u0661_\u0665", "-1_5", "-\u0661\u0665", "0x1p-3", "-Infinity", "-infinity", "-INF", "\uff11",
           "-1.5e", "-1.5e+", ".", "-", "--1", "-1.5.2", "-1,5", "1e5x", "-nan(1)", "-1.5\u00a0"]


@pytest.mark.parametrize("tok", ACCEPTED)
def test_numbers_kenlm_accepts_are_read(tok, tmp_path):
    p = tmp_path / "m.arpa"
    p.write_text(ARPA.replace("-0.6\ta", f"{tok}\ta"), encoding="utf-8")
    m = load_arpa(p)
    assert m._logp[1][m.vocab.index("a")] == float(tok)


@pytest.mark.parametrize("tok", REFUSED)
def test_numbers_kenlm_refuses_are_refused(tok, tmp_path):
    # '-١_٥' (Arabic-Indic digits, an underscore) was read as -15 by Python's float()
    p = tmp_path / "m.arpa"
    p.write_text(ARPA.replace("-0.6\ta", f"{tok}\ta"), encoding="utf-8")
    with pytest.raises(ArpaError, match=r"m\.arpa:8: log10 probability .* is not a number"):
        load_arpa(p)


def test_number_syntax_agrees_with_kenlm(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    for i, tok in enumerate(ACCEPTED + REFUSED):
        p = tmp_path / f"m{i}.arpa"
        p.write_text(ARPA.replace("-0.6\ta", f"{tok}\ta"), encoding="utf-8")
        try:
            k = kenlm.Model(str(p))
        except (OSError, RuntimeError):
            k = None
        try:
            ours = load_arpa(p)
        except ArpaError:
            ours = None
        assert (k is None) == (ours is None), tok
        if k is not None:
            assert k.score("a", bos=False, eos=False) == pytest.approx(ours.score("a", bos=False, eos=False)), tok


def test_words_are_separated_as_kenlm_separates_them(tmp_path):
    # a vertical tab or a no-break space is part of a word for KenLM, as here
    kenlm = pytest.importorskip("kenlm")
    p = tmp_path / "m.arpa"
    p.write_text(ARPA.replace("\tb\n", "\tb\x0bc\n").replace("a b\n", "a b\x0bc\n"), encoding="utf-8")
    m = load_arpa(p)
    assert "b\x0bc" in m.vocab
    assert kenlm.Model(str(p)).score("a", bos=True, eos=True) == pytest.approx(m.score("a"))


# ----- atomic writes -------------------------------------------------------------------------------
def test_a_failed_write_leaves_the_old_file_intact(kn5, tmp_path):
    # a file-size limit (as a full disk) stops the write of the new model halfway: the file that
    # was there must be untouched and no temporary file left (to_arpa used to truncate it first)
    p = tmp_path / "m.arpa"
    LaplaceLM(2).fit([["old", "model"]]).to_arpa(p)
    old = p.read_bytes()
    kn5.to_arpa(tmp_path / "size.arpa")
    limit = (tmp_path / "size.arpa").stat().st_size // 2
    (tmp_path / "size.arpa").unlink()
    code = f"""
import pickle, resource, signal, sys
from fastseq.ngram import KneserNeyLM
m = pickle.loads(open({str(tmp_path / 'm.pkl')!r}, 'rb').read())
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    m.to_arpa({str(p)!r})
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(3)
"""
    import pickle
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(kn5))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith("ArpaError") and "m.arpa" in r.stdout
    assert p.read_bytes() == old
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.arpa", "m.pkl"]


def test_write_failure_is_an_arpa_error(kn5, tmp_path):
    with pytest.raises(ArpaError, match="cannot be written"):
        kn5.to_arpa(tmp_path / "no" / "such" / "m.arpa")


# ----- header meta -----------------------------------------------------------------------------------
def test_meta_round_trips_and_kenlm_ignores_it(kn5, tm_split, tmp_path):
    meta = {"token": "word", "cleaning": "d2l", "note": "line one\nline two \"quoted\" \u00e9"}
    p = tmp_path / "m.arpa"
    kn5.to_arpa(p, meta=meta)
    assert p.read_text(encoding="utf-8").startswith("# fastseq-meta: ")
    assert load_arpa(p).meta == meta
    assert Model(p).meta == meta
    kenlm = pytest.importorskip("kenlm")
    k = kenlm.Model(str(p))
    for s in tm_split[1][:50]:
        assert k.score(" ".join(s)) == pytest.approx(kn5.score(s), rel=1e-5, abs=1e-5)


def test_meta_absent_is_empty_and_bad_meta_is_refused(kn5, tmp_path):
    p = tmp_path / "m.arpa"
    kn5.to_arpa(p)
    assert load_arpa(p).meta == {}
    for bad in ({"a": 1}, ["token"], {1: "x"}):
        with pytest.raises(FastseqError, match="^meta: expected a dict of strings"):
            kn5.to_arpa(p, meta=bad)
    p.write_text("# fastseq-meta: [1, 2]\n" + ARPA)
    with pytest.raises(ArpaError, match="fastseq-meta"):
        load_arpa(p)


# ----- tokens with whitespace --------------------------------------------------------------------------
def test_escape_is_reversible():
    for t in ["a", " ", "\t", "\n", "\r", "\\", "\\s", "a b\\c", "\u00a0", "\u3000x", "x\x0b", "<s>"]:
        e = escape_token(t)
        assert not any(ch.isspace() for ch in e)
        assert unescape_token(e) == t
    assert escape_token(" ") == "\\s" and escape_token("\\") == "\\\\" and escape_token("ab") == "ab"
    with pytest.raises(ArpaError, match="backslash"):
        unescape_token("a\\qb")


def test_char_7gram_of_tinyshakespeare_round_trips_and_kenlm_scores_escaped_text(tmp_path):
    # to_arpa refused the space token, so character models could not be saved at all
    lines = [ln for ln in read_lines("tinyshakespeare") if ln.strip()]
    train, test = [list(ln) for ln in lines[:-300]], [list(ln) for ln in lines[-300:]]
    m = KneserNeyLM(7, discount_fallback=True).fit(train)
    p = tmp_path / "char7.arpa"
    m.to_arpa(p, meta={"token": "char"})
    loaded = load_arpa(p)
    assert loaded.vocab == m.vocab and " " in loaded.vocab and loaded.meta == {"token": "char"}
    for k in range(1, 8):
        assert np.array_equal(loaded._logp[k], m._logp[k])
    assert loaded.perplexity(test) == m.perplexity(test)
    q = Model(p)
    for s in test:
        text = " ".join(escape_token(ch) for ch in s)
        assert q.to_sentence(s) == text
        assert q.score(text) == pytest.approx(m.score(s), rel=1e-12, abs=1e-12)
    # the kenlm wheel is built for orders up to 6 (KENLM_MAX_ORDER): its check on a 6-gram
    kenlm = pytest.importorskip("kenlm")
    m6 = KneserNeyLM(6, discount_fallback=True).fit(train)
    m6.to_arpa(tmp_path / "char6.arpa")
    k = kenlm.Model(str(tmp_path / "char6.arpa"))
    for s in test:
        assert k.score(" ".join(escape_token(ch) for ch in s)) == pytest.approx(m6.score(s), rel=1e-5, abs=1e-4)


def test_word_files_without_whitespace_tokens_are_not_escaped(tmp_path):
    # a backslash in a word model stays as it is (as lmplz writes it): no escape header
    m = LaplaceLM(2).fit([["a\\b", "c"]])
    m.to_arpa(tmp_path / "m.arpa")
    text = (tmp_path / "m.arpa").read_text()
    assert "fastseq-escape" not in text and "a\\b" in text
    assert load_arpa(tmp_path / "m.arpa").vocab == m.vocab


def test_unencodable_and_empty_tokens_are_refused(tmp_path):
    with pytest.raises(ArpaError, match="UTF-8 cannot encode"):
        LaplaceLM(2).fit([["a\udcff", "b"]]).to_arpa(tmp_path / "x.arpa")
    with pytest.raises(ArpaError, match="empty token"):
        LaplaceLM(2).fit([["", "b"]]).to_arpa(tmp_path / "x.arpa")
    assert not (tmp_path / "x.arpa").exists()


# ----- what is not a regular file ------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [load_arpa, load_binary, Model])
def test_not_a_regular_file_is_refused_at_once(loader, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = []
    t = threading.Thread(target=lambda: result.append(_raises(loader, fifo)), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():                                     # unblock the reader so the test can end
        with open(fifo, "wb"):
            pass
        t.join(5)
        pytest.fail("reading a FIFO blocked")
    assert "not a regular file" in result[0]
    assert "not a regular file" in _raises(loader, "/dev/zero")
    assert "folder" in _raises(loader, tmp_path)
    assert "cannot be read" in _raises(loader, tmp_path / "missing.arpa")


def _raises(loader, path):
    with pytest.raises(ArpaError) as e:
        loader(path)
    return str(e.value)


# ----- binary model ---------------------------------------------------------------------------------------
def test_binary_model_scores_as_the_arpa_file_and_is_smaller(kn5, tm_split, tmp_path):
    a, b1, b2 = tmp_path / "m.arpa", tmp_path / "m1.bin", tmp_path / "m2.bin"
    kn5.to_arpa(a, meta={"token": "word"})
    write_binary(kn5, b1, meta={"token": "word"})
    write_binary(a, b2)                                   # from the ARPA file: the same bytes
    assert b1.read_bytes() == b2.read_bytes()
    assert b1.stat().st_size < a.stat().st_size
    qa, qb = Model(a), Model(b1)
    assert qb.order == 5 and qb.meta == {"token": "word"}
    for s in tm_split[1]:
        s = " ".join(s)
        for bos, eos in ((True, True), (False, True), (True, False)):
            assert qb.score(s, bos=bos, eos=eos) == qa.score(s, bos=bos, eos=eos)
    lm = load_binary(b1).to_ngram_lm()
    ref = load_arpa(a)
    assert lm.vocab == ref.vocab and lm.meta == ref.meta
    for k in range(1, 6):
        assert np.array_equal(lm._rows[k], ref._rows[k]) and np.array_equal(lm._logp[k], ref._logp[k])
        assert np.array_equal(lm._logb[k], ref._logb[k])


def test_binary_model_of_an_escaped_char_model(tmp_path):
    m = KneserNeyLM(3, discount_fallback=True).fit([list("to be or not to be"), list("a\\b c")])
    write_binary(m, tmp_path / "c.bin")
    assert load_binary(tmp_path / "c.bin").to_ngram_lm().vocab == m.vocab
    q = Model(tmp_path / "c.bin")
    assert q.score(q.to_sentence(list("to be"))) == pytest.approx(m.score(list("to be")), abs=1e-12)


def _with_version(blob, version, drop_probes=False):
    """The binary file blob under another format version (and without its probing tables)."""
    import json
    from fastseq.ngram import _arpa
    from fastseq.ngram.binary import _ALIGN, _FIXED
    magic, _, hlen, _ = _FIXED.unpack_from(blob, 0)
    h = json.loads(blob[_FIXED.size:_FIXED.size + hlen])
    body = blob[-(-(_FIXED.size + hlen) // _ALIGN) * _ALIGN:]
    if drop_probes:
        h["tables"] = [t for t in h["tables"] if not t[0].startswith("probe")]
    hb = json.dumps(h).encode()
    head = _FIXED.pack(magic, version, len(hb), _arpa.checksum(np.frombuffer(hb, np.uint8))) + hb
    return head + b"\x00" * (-(-len(head) // _ALIGN) * _ALIGN - len(head)) + body


def _version_2_file(lm):
    """A binary model in format version 2 (fastseq before version 3; docs/NGRAM-FILES.md keeps its
    layout): per order logp{k}, logb{k}, and for k >= 2 starts{k}, lasts{k} and probe{k}
    (3 uint32 per slot, K + K/4 + 1 slots; not read by version 3, which builds its own)."""
    import json
    from fastseq.ngram import _arpa
    from fastseq.ngram.binary import _ALIGN, _FIXED, MAGIC, _tables_of
    escaped, words, starts, lasts, logp, logb = _tables_of(lm)
    offsets = np.concatenate([[0], np.cumsum([len(w) for w in words])]).astype(np.int64)
    tables = [("words", np.frombuffer(b"".join(words), np.uint8)), ("offsets", offsets)]
    for k in range(1, lm.order + 1):
        tables += [(f"logp{k}", np.asarray(logp[k - 1], np.float64)), (f"logb{k}", np.asarray(logb[k - 1], np.float64))]
        if k > 1:
            K = len(lasts[k - 1])
            tables += [(f"starts{k}", starts[k - 1]), (f"lasts{k}", lasts[k - 1]),
                       (f"probe{k}", np.full(3 * (K + K // 4 + 1), 0xFFFFFFFF, np.uint32))]
    place, body = [], b""
    for name, a in tables:
        place.append([name, a.dtype.name, len(body), int(a.size)])
        body += a.tobytes() + b"\x00" * (-a.nbytes % _ALIGN)
    h = {"format": "fastseq n-gram model", "order": lm.order, "vocab_size": len(words),
         "counts": [len(x) for x in logp], "escaped": escaped, "meta": {}, "suffix_closed": True,
         "tables": place, "tables_checksum": _arpa.checksum(np.frombuffer(body, np.uint8))}
    hb = json.dumps(h).encode()
    head = _FIXED.pack(MAGIC, 2, len(hb), _arpa.checksum(np.frombuffer(hb, np.uint8))) + hb
    return head + b"\x00" * (-len(head) % _ALIGN) + body


def test_binary_versions_1_and_2_are_read_and_a_newer_one_refused(kn5, tm_split, tmp_path):
    # version 3 stores the probing tables with the numbers in their slots; a version-2 file (numbers
    # in arrays by rows) and a version-1 file (no probing tables) still load, their probing tables
    # built at load, and score as the version-3 file; a version this fastseq does not know is refused
    b3, b2, b1, b4 = tmp_path / "m3.bin", tmp_path / "m2.bin", tmp_path / "m1.bin", tmp_path / "m4.bin"
    write_binary(kn5, b3)
    assert load_binary(b3).version == 3 and len(load_binary(b3).slots) == 4
    b2.write_bytes(_version_2_file(kn5))
    b1.write_bytes(_with_version(b2.read_bytes(), 1, drop_probes=True))
    sents = [" ".join(s) for s in tm_split[1]]
    want = list(Model(b3).score_batch(sents))
    ref = load_binary(b3).to_ngram_lm()
    for path, version in ((b2, 2), (b1, 1)):
        assert load_binary(path).version == version
        assert list(Model(path).score_batch(sents)) == want
        lm = load_binary(path).to_ngram_lm()
        for k in range(1, 6):
            assert np.array_equal(lm._rows[k], ref._rows[k]) and np.array_equal(lm._logp[k], ref._logp[k])
    b4.write_bytes(_with_version(b3.read_bytes(), 4))
    with pytest.raises(ArpaError, match="version 4; this fastseq reads versions 1, 2, 3"):
        Model(b4)
    # a version-2 file must have its probing tables
    (tmp_path / "m5.bin").write_bytes(_with_version(b2.read_bytes(), 2, drop_probes=True))
    with pytest.raises(ArpaError, match="probe2"):
        load_binary(tmp_path / "m5.bin")


def test_binary_model_damage_is_an_arpa_error(kn5, tmp_path):
    b = tmp_path / "m.bin"
    write_binary(kn5, b)
    data = b.read_bytes()
    cases = {"truncated": data[:len(data) // 2], "short": data[:10], "empty": b"",
             "foreign": b"\\data\\\nngram 1=3\n" + data[20:], "kenlm": b"mmap lm http://kheafield.com/code" + data[33:],
             "header flip": data[:50] + bytes([data[50] ^ 4]) + data[51:],
             "table flip": data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]}
    for name, bad in cases.items():
        p = tmp_path / f"{name}.bin"
        p.write_bytes(bad)
        with pytest.raises(ArpaError, match=r"\.bin"):
            load_binary(p)
    with pytest.raises(ArpaError, match="KenLM binary"):
        load_binary(tmp_path / "kenlm.bin")
    with pytest.raises(ArpaError, match="checksum"):
        load_binary(tmp_path / "table flip.bin")
