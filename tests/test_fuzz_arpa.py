"""The ARPA and binary readers under damage: truncations, bit flips, header lies, spliced bytes.
Only ArpaError (or a model that loads and scores) may come out; never another exception."""
import json
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastseq.ngram import ArpaError, KneserNeyLM, Model, load_arpa, load_binary, write_binary
from fastseq.ngram import _arpa
from fastseq.ngram.binary import _FIXED

CORPUS = [["a", "b", "c", "a"], ["b", "c", "d"], ["a", "a", "b", "c", "d", "e"], ["e", "d", "c", "b", "a"]]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    m = KneserNeyLM(3, discount_fallback=True).fit(CORPUS)
    m.to_arpa(d / "m.arpa", meta={"token": "word"})
    write_binary(m, d / "m.bin")
    return (d / "m.arpa").read_bytes(), (d / "m.bin").read_bytes()


_n = [0]


def _fresh(tmp_path, suffix):
    # a new file for every example: rewriting a file that an earlier example's model still maps
    # would change its pages underneath it (a truncation there is a SIGBUS, as for any mmap)
    _n[0] += 1
    return tmp_path / f"case{_n[0]}{suffix}"


def _use(loader, path):
    try:
        m = loader(path)
    except ArpaError:
        return
    # whatever loads must also score without crashing (a huge log10 in a damaged file may
    # overflow a perplexity to inf: NGramLM.perplexity warns then, which is not this suite's concern)
    if hasattr(m, "vocab"):
        m.score("a b zz")
        with np.errstate(over="ignore"):
            m.perplexity([["a", "b"], ["c"]])
    else:
        m.score("a b zz")
        s, o = _arpa.State(), _arpa.State()
        m.BeginSentenceWrite(s)
        m.BaseScore(s, "a", o)


def _all(path):
    for loader in (load_arpa, Model):
        _use(loader, path)


@SETTINGS
@given(data=st.data())
def test_arpa_truncated_or_flipped(files, tmp_path, data):
    text = files[0]
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice", "delete"]))
    i = data.draw(st.integers(0, len(text) - 1))
    if kind == "truncate":
        bad = text[:i]
    elif kind == "flip":
        bad = text[:i] + bytes([text[i] ^ (1 << data.draw(st.integers(0, 7)))]) + text[i + 1:]
    elif kind == "splice":
        bad = text[:i] + data.draw(st.binary(min_size=1, max_size=12)) + text[i:]
    else:
        bad = text[:i] + text[i + data.draw(st.integers(1, 40)):]
    p = _fresh(tmp_path, ".arpa")
    p.write_bytes(bad)
    _all(p)


def test_arpa_header_count_near_2_63_is_refused(files, tmp_path):
    """Found by the fuzz below: counts whose sum wrapped around in int64 passed the header check
    and sized the arrays (a ValueError from NumPy, not an ArpaError); a count past int64 too."""
    text = files[0].decode()
    for count in (2**63 - 24, 2**63 - 1, 10**30):
        p = _fresh(tmp_path, ".arpa")
        p.write_text(re.sub(r"ngram 3=\d+", f"ngram 3={count}", text, count=1), encoding="utf-8")
        for loader in (load_arpa, Model):
            with pytest.raises(ArpaError, match="announces"):
                loader(p)


@SETTINGS
@given(order=st.integers(-3, 70), count=st.integers(-5, 2**63 - 1), which=st.integers(1, 3),
       junk=st.sampled_from(["", "x", "=", "1=", " ", "\u0661", "1_0", "0x10", "+3"]))
def test_arpa_header_lies(files, tmp_path, order, count, which, junk):
    text = files[0].decode()
    bad = text.replace(f"ngram {which}=", f"ngram {order}{junk}=", 1) if junk else text
    head, rest = bad.split("\n\\1-grams:", 1)
    lines = head.split("\n")
    for j, ln in enumerate(lines):
        if ln.startswith(f"ngram {which}="):
            lines[j] = f"ngram {which}={count}"
    p = _fresh(tmp_path, ".arpa")
    p.write_text("\n".join(lines) + "\n\\1-grams:" + rest, encoding="utf-8")
    _all(p)


@SETTINGS
@given(data=st.data())
def test_binary_truncated_or_flipped(files, tmp_path, data):
    blob = files[1]
    kind = data.draw(st.sampled_from(["truncate", "flip", "zero"]))
    i = data.draw(st.integers(0, len(blob) - 1))
    if kind == "truncate":
        bad = blob[:i]
    elif kind == "flip":
        bad = blob[:i] + bytes([blob[i] ^ (1 << data.draw(st.integers(0, 7)))]) + blob[i + 1:]
    else:
        n = data.draw(st.integers(1, 64))
        bad = blob[:i] + b"\x00" * n + blob[i + n:]
    if bad != blob:
        p = _fresh(tmp_path, ".bin")
        p.write_bytes(bad)
        with pytest.raises(ArpaError):
            load_binary(p)
        with pytest.raises(ArpaError):
            Model(p)


def _resign(blob, mutate_header=None, mutate_body=None):
    """A binary file altered and then given valid checksums: only the structural checks stand."""
    magic, version, hlen, _ = _FIXED.unpack_from(blob, 0)
    h = json.loads(blob[_FIXED.size:_FIXED.size + hlen])
    start = -(-(_FIXED.size + hlen) // 64) * 64
    body = bytearray(blob[start:])
    if mutate_body:
        mutate_body(h, body)
    h["tables_checksum"] = _arpa.checksum(np.frombuffer(bytes(body), np.uint8))
    if mutate_header:
        mutate_header(h)
    hb = json.dumps(h).encode()
    new_start = -(-(_FIXED.size + len(hb)) // 64) * 64
    head = _FIXED.pack(magic, version, len(hb), _arpa.checksum(np.frombuffer(hb, np.uint8))) + hb
    return head + b"\x00" * (new_start - len(head)) + bytes(body)


@SETTINGS
@given(data=st.data())
def test_binary_header_and_table_lies_with_valid_checksums(files, tmp_path, data):
    blob = files[1]
    kind = data.draw(st.sampled_from(["counts", "order", "vocab", "place", "dtype", "slot2", "slot3", "offsets",
                                      "logb1", "meta", "drop"]))
    value = data.draw(st.integers(-2**40, 2**40))

    def header(h):
        if kind == "counts":
            h["counts"][data.draw(st.integers(0, len(h["counts"]) - 1))] = value
        elif kind == "order":
            h["order"] = value
        elif kind == "vocab":
            h["vocab_size"] = value
        elif kind == "place":
            h["tables"][data.draw(st.integers(0, len(h["tables"]) - 1))][2] = value
        elif kind == "dtype":
            h["tables"][data.draw(st.integers(0, len(h["tables"]) - 1))][1] = data.draw(
                st.sampled_from(["int8", "float32", "object", "int64", "uint8"]))
        elif kind == "meta":
            h["meta"] = data.draw(st.sampled_from([[1], {"a": 1}, None, "x"]))
        elif kind == "drop":
            del h["tables"][data.draw(st.integers(0, len(h["tables"]) - 1))]

    def body(h, b):
        if kind not in ("slot2", "slot3", "offsets", "logb1"):
            return
        name = kind
        _, dt, off, cnt = next(t for t in h["tables"] if t[0] == name)
        size = np.dtype(dt).itemsize
        j = data.draw(st.integers(0, cnt - 1))
        b[off + j * size:off + (j + 1) * size] = np.array([value], np.int64).astype(dt).tobytes()

    bad = _resign(blob, header, body)
    p = _fresh(tmp_path, ".bin")
    p.write_bytes(bad)
    _use(Model, p)
    try:
        b = load_binary(p)
    except ArpaError:
        return
    try:
        b.to_ngram_lm().score("a b")
    except ArpaError:
        pass


def test_resigned_untouched_file_loads(files, tmp_path):
    # the resigning helper itself keeps a valid file valid (so the lies above are what fails)
    p = tmp_path / "same.bin"
    p.write_bytes(_resign(files[1]))
    assert Model(p).score("a b") == pytest.approx(load_binary(p).to_ngram_lm().score("a b"), abs=1e-12)


def test_binary_padding_after_the_header_is_checked(files, tmp_path):
    """Found by the fuzz above in CI: a flipped byte between the header and the 64-byte aligned tables
    (covered by neither checksum) loaded silently."""
    from fastseq.ngram.binary import _ALIGN

    blob = files[1]
    hlen = _FIXED.unpack_from(blob, 0)[2]
    first, start = _FIXED.size + hlen, -(-(_FIXED.size + hlen) // _ALIGN) * _ALIGN
    assert start > first, "this model's header happens to end on the alignment: no padding to test"
    path = tmp_path / "padded.bin"
    path.write_bytes(blob[:first] + b"\x01" + blob[first + 1:])
    with pytest.raises(ArpaError, match="padding"):
        load_binary(str(path))
