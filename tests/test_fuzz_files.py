"""Fuzzing the file readers: damaged checkpoints and corpora give the documented error, never another exception.

Issue 12, items 10-11. ``checkpoint.load`` raised TypeError, IsADirectoryError, RecursionError or
MemoryError on malformed manifests where it promises CheckpointError. Here hypothesis damages a
real checkpoint every way a disk, an editor or a hostile file can: structural edits of the manifest
(values of every type at every place, keys removed and added), with the integrity record left as
it was (every real change must be refused) or recomputed (so the checks behind it are reached),
truncations and bit flips of the manifest's bytes, deep nesting, and lies in the safetensors
headers of the weights and resume files (their sha256 updated so the parser is reached). A load
either succeeds or raises CheckpointError. Corpus files of random bytes give text or DatasetError.

FASTSEQ_FUZZ_EXAMPLES sets the examples per test (default 150; docs/RELIABILITY-files.md gives the
counts of the long run).
"""
import copy
import hashlib
import json
import os
import shutil
import struct
import tempfile

import numpy as np
import pytest

pytest.importorskip("safetensors")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from fastseq import checkpoint, datasets  # noqa: E402
from fastseq.checkpoint import CheckpointError  # noqa: E402
from fastseq.reference.rnn import RNNLM  # noqa: E402
from fastseq.text import Vocab  # noqa: E402

EXAMPLES = int(os.environ.get("FASTSEQ_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def template():
    """A real checkpoint with resume state, written once; every example works on a copy."""
    folder = tempfile.mkdtemp(prefix="fastseq-fuzz-")
    vocab = Vocab("it was the best of times it was the worst of times")
    m = RNNLM(len(vocab), 4, dtype=np.float32, seed=1)
    state = {"epoch": 1, "batch": 2, "optimizer": {"t": 3, "m": {k: np.ones_like(p) for k, p in m.params.items()}},
             "rng": np.random.default_rng(0).bit_generator.state, "state": np.zeros((2, 4), np.float32)}
    checkpoint.save(folder, m, vocab, {"lr": 0.5, "bptt": "full"}, step=3, resume=state,
                    history={"epochs": [{"train_ppl": 9.5}]})
    yield folder
    shutil.rmtree(folder)


class Copy:
    def __init__(self, template):
        self.dir = tempfile.mkdtemp(prefix="fastseq-fuzz-")
        shutil.copytree(template, self.dir, dirs_exist_ok=True)
        self.manifest = os.path.join(self.dir, checkpoint.META_FILE)
        with open(self.manifest, "rb") as f:
            self.raw = f.read()
        self.meta = json.loads(self.raw)

    def write_meta(self, meta, sign):
        if sign:
            meta = dict(meta, integrity=checkpoint._integrity(meta))
        with open(self.manifest, "w", encoding="utf-8") as f:
            json.dump(meta, f)

    def load(self):
        """Load everything; only CheckpointError may come out. Returns True when it loaded."""
        try:
            checkpoint.load(self.dir, backend="numpy", resume=True)
            return True
        except CheckpointError as e:
            assert str(e), "an error without a message"
            return False
        finally:
            shutil.rmtree(self.dir)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["RNNLM", "relu", "tanh", "float32", "float64", "", "..", "/etc/passwd", "a" * 64,
                       "model-00000003.safetensors", "fastseq.json", 0, -1, 10 ** 6, 2 ** 63]),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)


def _paths(obj, prefix=()):
    """Every place in a parsed JSON document (dict keys and list indices), the root excluded."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_paths(v, prefix + (k,)))
    return out


def _at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


edits = st.tuples(st.sampled_from(["replace", "delete", "add"]), st.integers(0, 10 ** 6), json_values,
                  st.text(min_size=1, max_size=8))


def _edit(meta, edit):
    kind, where, value, key = edit
    meta = copy.deepcopy(meta)
    paths = [p for p in _paths(meta) if p[0] != "vocab" or len(p) < 4]   # do not spend every draw in the vocabulary
    path = paths[where % len(paths)]
    parent, last = _at(meta, path[:-1]), path[-1]
    if kind == "replace":
        parent[last] = value
    elif kind == "delete":
        del parent[last]
    else:
        target = parent[last]
        if isinstance(target, dict):
            target[key] = value
        elif isinstance(target, list):
            target.append(value)
        else:
            parent[last] = [target, value]
    return meta


def _edited(template, edit, sign):
    c = Copy(template)
    meta = c.meta
    for e in edit:
        meta = _edit(meta, e)
    c.write_meta(meta, sign=sign)
    return c, meta


@FUZZ
@given(edit=st.lists(edits, min_size=1, max_size=3))
def test_manifest_edits_without_re_signing_are_refused(template, edit):
    c, meta = _edited(template, edit, sign=False)
    # An edit inside the integrity record's nested hashes that leaves its top-level ones true damages
    # nothing the load uses; every change to the checkpoint's own entries must be refused.
    def entries(m):
        return json.dumps({k: v for k, v in m.items() if k != "integrity"} if isinstance(m, dict) else m,
                          sort_keys=True)
    changed = entries(meta) != entries(c.meta)
    loaded = c.load()
    assert not (changed and loaded), f"an edited manifest loaded: {edit}"


@FUZZ
@given(edit=st.lists(edits, min_size=1, max_size=3))
def test_re_signed_manifest_edits_give_only_checkpoint_errors(template, edit):
    _edited(template, edit, sign=True)[0].load()


@FUZZ
@given(cut=st.integers(0, 10 ** 6), flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 7)),
                                                   max_size=8))
def test_manifest_bytes_truncated_and_flipped(template, cut, flips):
    c = Copy(template)
    data = bytearray(c.raw[:cut % (len(c.raw) + 1)])
    for pos, bit in flips:
        if data:
            data[pos % len(data)] ^= 1 << bit
    with open(c.manifest, "wb") as f:
        f.write(bytes(data))
    c.load()


@FUZZ
@given(depth=st.integers(1, 200_000), kind=st.sampled_from("[{"), where=st.sampled_from(
    ["hparams", "history", "resume.state", "model.config", "top"]))
def test_deep_nesting_anywhere(template, depth, kind, where):
    c = Copy(template)
    meta = c.meta
    deep = "[" * depth + "]" * depth if kind == "[" else '{"a":' * depth + "0" + "}" * depth
    marker = "__DEEP__"
    if where == "top":
        meta = dict(meta, deep=marker)
    else:
        _at(meta, where.split(".")[:-1])[where.split(".")[-1]] = {"deep": marker}
    text = json.dumps(meta).replace(json.dumps(marker), deep)
    with open(c.manifest, "w") as f:
        f.write(text)
    c.load()


# --------------------------------------------------------------------------- safetensors headers
def _header(data):
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _pack(header, body, claimed=None):
    h = json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(h) if claimed is None else claimed) + h + body


lies = st.one_of(
    st.tuples(st.just("shape"), st.lists(st.integers(-3, 2 ** 64), max_size=4)),
    st.tuples(st.just("dtype"), st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "F16", "BF16", "X", "", 5])),
    st.tuples(st.just("data_offsets"), st.lists(st.integers(-5, 2 ** 64), max_size=3)),
    st.tuples(st.just("value"), json_values),
    st.tuples(st.just("metadata"), json_values),
    st.tuples(st.just("size"), st.integers(0, 2 ** 64 - 1)),
    st.tuples(st.just("truncate"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6)),
)


def _lie(data, lie, pick):
    header, body = _header(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = names[pick % len(names)]
    kind, value = lie
    if kind in ("shape", "dtype", "data_offsets"):
        header[name][kind] = value
    elif kind == "value":
        header[name] = value
    elif kind == "metadata":
        header["__metadata__"] = value
    elif kind == "size":
        return _pack(header, body, claimed=value)
    elif kind == "truncate":
        return data[:value % (len(data) + 1)]
    else:
        b = bytearray(data)
        b[value % len(b)] ^= 0x10
        return bytes(b)
    return _pack(header, body)


@FUZZ
@given(which=st.sampled_from(["weights", "resume"]), lie=lies, pick=st.integers(0, 100), sign=st.booleans())
def test_lies_in_tensor_files_give_only_checkpoint_errors(template, which, lie, pick, sign):
    c = Copy(template)
    entry = c.meta[which]
    path = os.path.join(c.dir, entry["file"])
    with open(path, "rb") as f:
        data = _lie(f.read(), lie, pick)
    with open(path, "wb") as f:
        f.write(data)
    if sign:   # the manifest agrees with the damaged file, so the header parser and the shape checks are reached
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        c.write_meta(c.meta, sign=True)
    c.load()


@FUZZ
@given(which=st.sampled_from(["weights", "resume", "manifest"]),
       kind=st.sampled_from(["folder", "fifo", "dev-zero", "dangling", "missing"]))
def test_tensor_files_and_manifest_that_are_not_regular_files(template, which, kind):
    c = Copy(template)
    path = c.manifest if which == "manifest" else os.path.join(c.dir, c.meta[which]["file"])
    os.unlink(path)
    if kind == "folder":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "dangling":
        os.symlink(os.path.join(c.dir, "nothing"), path)
    assert not c.load()


# --------------------------------------------------------------------------- corpora
@FUZZ
@given(data=st.binary(max_size=512) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_corpus_files_of_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("corpus") / "c.txt"
    path.write_bytes(data)
    try:
        text = datasets.load(str(path))
    except datasets.DatasetError as e:
        assert "not UTF-8" in str(e)
    else:
        assert text.encode("utf-8") == data


@FUZZ
@given(data=st.binary(max_size=256), name=st.sampled_from(sorted(datasets.CORPORA)))
def test_named_corpora_with_damaged_local_copies(tmp_path_factory, data, name):
    folder = tmp_path_factory.mktemp("data")
    (folder / f"{name}.txt").write_bytes(data)
    with pytest.raises(datasets.DatasetError, match="does not match the expected"):
        datasets.load(name, data_dir=str(folder))
