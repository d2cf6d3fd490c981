"""Checkpoints: a directory with the weights in safetensors and a JSON manifest.

Layout of a checkpoint directory (format 3)::

    fastseq.json                          the manifest: what the checkpoint is
    model-<step>-<tag>.safetensors        the model's parameters (names as in model.params)
    resume-<step>-<tag>.safetensors       arrays needed to continue training (optional)

``<tag>`` is fresh for every save, so a save never writes over a file that the
manifest on disk names, even a second save at the same step.

The manifest holds the format version, the fastseq version that wrote it, the
model class and config (enough to rebuild it), the vocabulary, the training
hyperparameters, the resume state, for each safetensors file its name, sha256
and tensor shapes, and ``integrity``: the sha256 of every other entry. Loading
checks the schema of every entry, the integrity hashes, the weights' shapes
(read from the safetensors header, before a model is allocated), the files'
sha256 and the vocabulary the weights were trained with, and raises
``CheckpointError`` naming the file and the field at fault; it raises nothing
else on a malformed checkpoint.

Why a save cannot lose the checkpoint: the new files are written under new
names (temporary file, flush, fsync, rename), then the manifest that names
them replaces the old one by one atomic rename, and only then are the files
the old manifest named deleted. At every instant a complete, verified
checkpoint is on disk. A save first records in ``.fastseq-pending.json`` the
names it is about to create and to replace, so the next save removes what an
interrupted one left behind (those of them the manifest does not name); a save deletes nothing else (files in the folder that no
manifest of fastseq named are the user's, whatever their names).

Resume state is a JSON-able dict (optimizer scalars, data position, NumPy
bit-generator states) whose arrays (optimizer moments, the carried hidden
state) go into the resume file: in the JSON each array is replaced by
``{"__array__": "<key>"}``. Its meaning (a batch index in range, the moments of
every parameter) is the training engine's to check: pass its validator as
``load(..., check_resume=...)`` and its refusals become ``CheckpointError``.

Format 3 records the model's cell, num_layers and dropout in its config (the
GRU, LSTM and stacks of docs/CELLS.md); format 2 (a ``nonlinearity``, one
plain RNN layer) is still read, and so is format 1 (fastseq 0.1.0:
``model-<step>.safetensors``, no integrity entry), with every check except the
integrity hashes.
"""
import hashlib
import json
import os
import re
import secrets

import numpy as np

from ._checks import check_choice, check_int
from ._files import TMP_SUFFIX, atomic_write, read_regular
from .errors import ArgumentError, FastseqError

__all__ = ["CheckpointError", "Checkpoint", "save", "load", "atomic_write", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fastseq.checkpoint"
FORMAT_VERSION = 3
META_FILE = "fastseq.json"
PENDING_FILE = ".fastseq-pending.json"
# A manifest holds the vocabulary and the run's history: a few MB for the largest real ones.
MAX_MANIFEST_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20          # safetensors' own limit on its JSON header
MAX_DEPTH = 64                        # nesting of the manifest's JSON (the resume state is ~5 deep)
INTEGRITY_DEPTH = 4                   # levels of fields the integrity record names one by one
_TENSOR_FILE = re.compile(r"(model|resume)-\d{8}(-[0-9a-f]{8})?\.safetensors")
_LEFTOVER = re.compile(r"\.(" + re.escape(META_FILE) + "|" + re.escape(PENDING_FILE) + "|"
                       + _TENSOR_FILE.pattern + r")\..+" + re.escape(TMP_SUFFIX))
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16", "BOOL": "bool",
              "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
              "U8": "uint8", "U16": "uint16", "U32": "uint32", "U64": "uint64"}


class CheckpointError(FastseqError):
    """A checkpoint cannot be written or read; the message names the file and the problem."""


def _safetensors():
    try:
        import safetensors.numpy as stn
    except ImportError:
        raise CheckpointError(
            "checkpoints need the 'safetensors' package: pip install safetensors "
            "(or pip install 'fastseq[cli]')") from None
    return stn


def _version():
    from . import __version__
    return __version__


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _canonical(value):
    """The bytes an entry's integrity hash is taken over: the same for the value saved and the value read back."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _digest(value, depth):
    """The integrity record of one entry: its sha256, and for an object that of each field, ``depth`` levels down
    (so an edit is named as 'resume.state.batch', not only as 'resume')."""
    h = _sha256(_canonical(value))
    if isinstance(value, dict) and depth > 1:
        return {"sha256": h, "fields": {k: _digest(v, depth - 1) for k, v in value.items()}}
    return h


def _integrity(meta):
    return {k: _digest(v, INTEGRITY_DEPTH) for k, v in meta.items() if k != "integrity"}


def _first_change(fields, value, path):
    """(path, how) of the first field of the object ``value`` that differs from its record ``fields``, or None."""
    for k in sorted(set(fields) | set(value)):
        if k not in value:
            return path + (k,), "was removed"
        if k not in fields:
            return path + (k,), "was added"
        record = fields[k]
        if (record.get("sha256") if isinstance(record, dict) else record) != _sha256(_canonical(value[k])):
            deeper = record.get("fields") if isinstance(record, dict) else None
            if isinstance(deeper, dict) and isinstance(value[k], dict):
                found = _first_change(deeper, value[k], path + (k,))
                if found:
                    return found
            return path + (k,), "changed"
    return None


def _depth(obj):
    """Nesting depth of parsed JSON, without recursion (a hostile file must not exhaust the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


# --------------------------------------------------------------------------- nested state <-> arrays
def _split_arrays(obj, arrays, path):
    """A JSON-able copy of ``obj`` with every ndarray moved into ``arrays``."""
    if isinstance(obj, np.ndarray):
        arrays[path] = np.ascontiguousarray(obj)
        return {"__array__": path}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise CheckpointError(f"resume state: key {k!r} at {path or '/'} is not a string")
        if set(obj) == {"__array__"}:
            raise CheckpointError(f"resume state: {path or '/'} is a dict whose only key is '__array__', "
                                  "which marks an array in the file")
        return {k: _split_arrays(v, arrays, f"{path}/{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, arrays, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise CheckpointError(f"resume state: {path or '/'} holds a {type(obj).__name__}, which cannot be saved")


def _join_arrays(obj, arrays, used, where):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if not isinstance(key, str) or key not in arrays:
                raise CheckpointError(f"{where}: the array {key!r} named in 'resume.state' is missing")
            used.add(key)
            return arrays[key]
        return {k: _join_arrays(v, arrays, used, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays, used, where) for v in obj]
    return obj


# --------------------------------------------------------------------------- save
def _vocab_sha256(idx_to_token):
    """sha256 of the token list: the weights file carries it, so an edited vocabulary in the JSON is caught."""
    return _sha256(json.dumps(list(idx_to_token), ensure_ascii=False).encode("utf-8"))


def _tensor_bytes(tensors, metadata=None):
    stn = _safetensors()
    if not tensors:
        tensors = {"__empty__": np.zeros(0, dtype=np.float32)}
    data = stn.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    entry = {"sha256": _sha256(data),
             "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()}}
    return data, entry


def _listed_files(folder):
    """The tensor files the manifest in ``folder`` names; empty when there is none or it cannot be read.

    Only these (and an interrupted save's leftovers) may be deleted: what cannot be proved ours is kept.
    """
    try:
        meta = json.loads(read_regular(os.path.join(folder, META_FILE), CheckpointError, MAX_MANIFEST_BYTES))
    except (FileNotFoundError, CheckpointError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return set()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return set()
    names = set()
    for key in ("weights", "resume"):
        entry = meta.get(key)
        name = entry.get("file") if isinstance(entry, dict) else None
        if isinstance(name, str) and _TENSOR_FILE.fullmatch(name):
            names.add(name)
    return names


def _remove_leftovers(folder, keep):
    """Delete what an interrupted save left: the files its pending record names (the ones it was writing
    and the ones it was replacing) but the manifest on disk does not, and its temporary files."""
    try:
        pending = json.loads(read_regular(os.path.join(folder, PENDING_FILE), CheckpointError, 1 << 16))
        pending = pending.get("files", []) if isinstance(pending, dict) else []
    except (FileNotFoundError, CheckpointError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        pending = []
    names = {n for n in pending if isinstance(n, str) and _TENSOR_FILE.fullmatch(n)}
    names |= {n for n in os.listdir(folder) if _LEFTOVER.fullmatch(n)}
    _unlink_all(folder, names - keep)


def _unlink_all(folder, names):
    for name in sorted(names):
        try:
            os.unlink(os.path.join(folder, name))
        except FileNotFoundError:
            pass
        except OSError:   # a file we cannot delete wastes space but loses nothing
            pass


def save(path, model, vocab, hparams, step=0, resume=None, history=None, extra=None):
    """Write a checkpoint of ``model`` into the directory ``path`` (created if needed).

    model: an RNNLM (its ``config``, ``params`` and class name are saved);
    vocab: a fastseq.Vocab; hparams: a JSON-able dict of training settings;
    step: the number of completed optimizer steps; resume: None or a dict of
    state to continue training (arrays allowed anywhere in it); history: a
    JSON-able record of the run so far; extra: more JSON-able metadata.
    Returns the path of the manifest. An interruption at any instant leaves
    the previous checkpoint (or the new one) complete and loadable.
    """
    path = os.fspath(path)
    try:
        check_int("step", step, 0)
    except ArgumentError as e:
        raise CheckpointError(str(e)) from None
    step = int(step)
    for name, value in (("hparams", hparams), ("history", history), ("extra", extra)):
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{name}: not JSON-able ({e})") from None
    params = {k: np.asarray(v) for k, v in model.params.items()}
    for k, v in params.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"{k}: the model holds NaN or inf; refusing to save it")
    # Everything is serialised before the folder is touched: a refusal leaves it as it was.
    weights_data, weights = _tensor_bytes(params, {"fastseq.vocab_sha256": _vocab_sha256(vocab.idx_to_token)})
    resume_data = resume_entry = None
    if resume is not None:
        arrays = {}
        skeleton = _split_arrays(resume, arrays, "")
        resume_data, resume_entry = _tensor_bytes(arrays)
        resume_entry["state"] = skeleton
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastseq_version": _version(),
        "model": {"class": type(model).__name__, "config": dict(model.config)},
        "vocab": vocab.to_dict(),
        "hparams": hparams,
        "step": step,
        "history": history,
        "extra": extra,
        "weights": weights,
        "resume": resume_entry,
    }
    meta = json.loads(json.dumps(meta, ensure_ascii=False))   # tuples become lists, as a reader sees them
    if _depth(meta) > MAX_DEPTH:
        raise CheckpointError(f"hparams/history/extra/resume: nested deeper than {MAX_DEPTH} levels")

    try:
        return _write(path, meta, step, weights_data, resume_data)
    except OSError as e:   # a full disk, a read-only folder: before the manifest's rename, so nothing changed
        raise CheckpointError(f"{e.filename or path}: cannot be written ({e.strerror}); "
                              f"the checkpoint in {path} (if any) is unchanged") from None


def _write(path, meta, step, weights_data, resume_data):
    """The file operations of a save (see the module's docstring for why in this order)."""
    os.makedirs(path, exist_ok=True)
    old = _listed_files(path)
    _remove_leftovers(path, keep=old)
    while True:   # a fresh name: never one the manifest on disk (or the user) uses
        tag = secrets.token_hex(4)
        new = {"weights": f"model-{step:08d}-{tag}.safetensors"}
        if resume_data is not None:
            new["resume"] = f"resume-{step:08d}-{tag}.safetensors"
        if not any(os.path.lexists(os.path.join(path, n)) for n in new.values()):
            break
    meta["weights"]["file"] = new["weights"]
    if resume_data is not None:
        meta["resume"]["file"] = new["resume"]
    meta["integrity"] = _integrity(meta)
    meta_bytes = json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8")
    if len(meta_bytes) > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"{META_FILE}: {len(meta_bytes):,} bytes, more than the {MAX_MANIFEST_BYTES:,} "
                              "a manifest may have (is the history or the vocabulary that large?)")

    # The record names the old files too: a save killed after the switch leaves them for the next to delete.
    pending = os.path.join(path, PENDING_FILE)
    atomic_write(pending, json.dumps({"files": sorted(old | set(new.values()))}).encode("utf-8"))
    atomic_write(os.path.join(path, new["weights"]), weights_data, replace=False)
    if resume_data is not None:
        atomic_write(os.path.join(path, new["resume"]), resume_data, replace=False)
    meta_path = os.path.join(path, META_FILE)
    atomic_write(meta_path, meta_bytes)
    # Only now are the old files garbage: the manifest on disk no longer names them.
    _unlink_all(path, old - set(new.values()))
    _unlink_all(path, {PENDING_FILE})
    return meta_path


# --------------------------------------------------------------------------- load
class Checkpoint:
    """A loaded checkpoint: ``model``, ``vocab``, ``hparams``, ``step``, ``history``,
    ``resume`` (dict or None), ``meta`` (the whole JSON), ``path``."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __repr__(self):
        return f"Checkpoint({self.path!r}, step={self.step}, model={self.meta['model']})"


def _version_tuple(v):
    parts = []
    for p in str(v).split("."):
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def _show(v):
    """How a wrong value is named in a message: its type for containers, its (short) repr otherwise."""
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "null"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


class _Schema:
    """Type checks of the manifest: each problem is one CheckpointError naming the field."""

    def __init__(self, meta_path):
        self.meta_path = meta_path

    def fail(self, field, value, expected):
        raise CheckpointError(f"{self.meta_path}: '{field}' is {_show(value)}, expected {expected}")

    def get(self, obj, key, field):
        if key not in obj:
            raise CheckpointError(f"{self.meta_path}: '{field}' is missing")
        return obj[key]

    def obj(self, v, field, nullable=False):
        if not (isinstance(v, dict) or (nullable and v is None)):
            self.fail(field, v, "an object" + (" or null" if nullable else ""))
        return v

    def int(self, v, field, lo=0):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            self.fail(field, v, f"an integer >= {lo}")
        return v

    def str(self, v, field, pattern=None, expected="a string"):
        if not isinstance(v, str) or (pattern is not None and not pattern.fullmatch(v)):
            self.fail(field, v, expected)
        return v

    def tensor_file(self, entry, field):
        self.obj(entry, field)
        name = self.str(self.get(entry, "file", f"{field}.file"), f"{field}.file")
        if os.path.basename(name) != name or name in ("", ".", ".."):
            self.fail(f"{field}.file", name, "a plain file name")
        self.str(self.get(entry, "sha256", f"{field}.sha256"), f"{field}.sha256", _SHA256, "64 hex digits")
        tensors = entry.get("tensors")
        if tensors is not None:   # format 1 did not require it
            self.obj(tensors, f"{field}.tensors")
            for k, t in tensors.items():
                f = f"{field}.tensors.{k}"
                self.obj(t, f)
                self.shape(self.get(t, "shape", f"{f}.shape"), f"{f}.shape")
                self.str(self.get(t, "dtype", f"{f}.dtype"), f"{f}.dtype")

    def shape(self, v, field):
        if not isinstance(v, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v):
            self.fail(field, v, "a list of integers >= 0")
        return tuple(v)


def _check_manifest(meta, meta_path):
    """Schema of the whole manifest (format 1, 2 or 3); returns the format version."""
    s = _Schema(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a fastseq checkpoint (format is not {FORMAT!r})")
    fv = meta.get("format_version")
    if isinstance(fv, bool) or not isinstance(fv, int):
        raise CheckpointError(f"{meta_path}: format_version is missing")
    writer = meta.get("fastseq_version")
    if fv > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format version {fv} is newer than this fastseq reads ({FORMAT_VERSION}); "
            f"it was written by fastseq {_show(writer)}: upgrade fastseq")
    s.int(fv, "format_version", 1)
    if not isinstance(writer, str):
        raise CheckpointError(f"{meta_path}: fastseq_version is missing")
    mine = _version_tuple(_version())
    if mine and _version_tuple(writer)[:1] > mine[:1]:
        raise CheckpointError(
            f"{meta_path}: written by fastseq {_show(writer)}, a newer major version than this one ({_version()})")

    model = s.obj(s.get(meta, "model", "model"), "model")
    if model.get("class") != "RNNLM":
        raise CheckpointError(f"{meta_path}: model: expected class 'RNNLM' with a config, got {_show(model.get('class'))}")
    config = s.obj(s.get(model, "config", "model.config"), "model.config")
    s.int(s.get(config, "vocab_size", "model.config.vocab_size"), "model.config.vocab_size", 1)
    s.int(s.get(config, "num_hiddens", "model.config.num_hiddens"), "model.config.num_hiddens", 1)
    for key in ("nonlinearity", "dtype") if fv < 3 else ("cell", "dtype"):
        s.str(s.get(config, key, f"model.config.{key}"), f"model.config.{key}")
    if config["dtype"] not in ("float32", "float64"):
        s.fail("model.config.dtype", config["dtype"], "'float32' or 'float64'")
    if fv >= 3:
        from .reference.cells import CELLS
        if config["cell"] not in CELLS:
            s.fail("model.config.cell", config["cell"], "one of " + ", ".join(map(repr, CELLS)))
        # every layer has 3 or 4 tensors: a bound on num_layers before param shapes are listed
        weights = s.obj(s.get(meta, "weights", "weights"), "weights")
        most = len(s.obj(s.get(weights, "tensors", "weights.tensors"), "weights.tensors"))
        L = s.int(s.get(config, "num_layers", "model.config.num_layers"), "model.config.num_layers", 1)
        if L > most:
            s.fail("model.config.num_layers", L, f"an integer in [1, {most}] (the weights hold {most} tensors)")
        for key in ("dropout", "input_dropout"):       # input_dropout: absent before it existed (= dropout)
            if key == "dropout" or key in config:
                p = s.get(config, key, f"model.config.{key}")
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                    s.fail(f"model.config.{key}", p, "a number in [0, 1)")

    vocab = s.obj(s.get(meta, "vocab", "vocab"), "vocab")
    itos = s.get(vocab, "idx_to_token", "vocab.idx_to_token")
    if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
        s.fail("vocab.idx_to_token", itos, "a list of strings")
    freqs = vocab.get("token_freqs", [])
    if not isinstance(freqs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
            and isinstance(p[1], int) and not isinstance(p[1], bool) for p in freqs):
        s.fail("vocab.token_freqs", freqs, "a list of [token, count] pairs")

    s.obj(meta.get("hparams"), "hparams", nullable=True)
    s.int(meta.get("step", 0), "step")
    s.obj(meta.get("history"), "history", nullable=True)
    s.tensor_file(s.get(meta, "weights", "weights"), "weights")
    resume = s.obj(meta.get("resume"), "resume", nullable=True)
    if resume is not None:
        s.tensor_file(resume, "resume")
        s.obj(s.get(resume, "state", "resume.state"), "resume.state")
    if fv >= 2:
        s.obj(s.get(meta, "weights", "weights").get("tensors"), "weights.tensors")
        integrity = s.obj(s.get(meta, "integrity", "integrity"), "integrity")
        found = _first_change(integrity, {k: v for k, v in meta.items() if k != "integrity"}, ())
        if found:
            path, how = found
            if how == "changed":
                value = meta
                for k in path:
                    value = value[k]
                how = f"is {_show(value)}, not what was saved"
            raise CheckpointError(f"{meta_path}: '{'.'.join(path)}' {how} (the 'integrity' record differs); "
                                  "fastseq.json was edited or damaged")
    return fv


def _param_shapes(config, fv=FORMAT_VERSION):
    """The shapes of RNNLM.from_config(config).params, known without allocating them, from a config
    _check_manifest passed (format < 3: the one-layer plain RNN, whose nonlinearity changes no shape;
    tests/test_checkpoint.py holds them to the model's)."""
    from .rnn import param_shapes
    V, H = config["vocab_size"], config["num_hiddens"]
    if fv < 3:
        return param_shapes("rnn_tanh", V, H, 1, V)
    return param_shapes(config["cell"], V, H, config["num_layers"], V)


def _parse_header(data, fpath):
    """The tensor table and metadata of a safetensors file, read from its header (no tensor is loaded)."""
    if len(data) < 8:
        raise CheckpointError(f"{fpath}: not a safetensors file ({len(data)} bytes, no header)")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_HEADER_BYTES):
        raise CheckpointError(f"{fpath}: not a safetensors file (its header claims {n:,} bytes, "
                              f"the file has {len(data) - 8:,} after the size)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{fpath}: the safetensors header is not valid JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{fpath}: the safetensors header is {_show(header)}, expected an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{fpath}: the safetensors metadata is {_show(meta)}, expected an object")
    s = _Schema(fpath)
    table = {}
    for k, t in header.items():
        s.obj(t, k)
        shape = s.shape(s.get(t, "shape", f"{k}.shape"), f"{k}.shape")
        dtype = s.get(t, "dtype", f"{k}.dtype")
        if dtype not in _ST_DTYPES:
            s.fail(f"{k}.dtype", dtype, "a safetensors dtype")
        table[k] = (shape, _ST_DTYPES[dtype])
    return table, meta


def _read_tensors(folder, entry, what, want=None):
    """The arrays of the safetensors file ``entry`` names, its sha256, header and (if given) shapes verified.

    want: {name: (shape, dtype)} they must have; None: the manifest's own table, when it has one.
    """
    stn = _safetensors()
    fpath = os.path.join(folder, entry["file"])
    try:
        data = read_regular(fpath, CheckpointError, what=f"{what} file")
    except FileNotFoundError:
        raise CheckpointError(f"{fpath}: the {what} file named in {META_FILE} is missing") from None
    got = _sha256(data)
    if got != entry["sha256"]:
        raise CheckpointError(
            f"{fpath}: sha256 {got} does not match {entry['sha256']} recorded in {META_FILE}; "
            "the file is damaged or was replaced")
    table, meta = _parse_header(data, fpath)
    table.pop("__empty__", None)
    if want is None and entry.get("tensors") is not None:
        want = {k: (tuple(t["shape"]), t["dtype"]) for k, t in entry["tensors"].items() if k != "__empty__"}
    if want is not None:
        if set(table) != set(want):
            missing, unexpected = sorted(set(want) - set(table)), sorted(set(table) - set(want))
            raise CheckpointError(f"{fpath}: the {what} do not match the model: missing {missing}, "
                                  f"unexpected {unexpected}")
        for k in sorted(want):
            if table[k][0] != want[k][0]:
                raise CheckpointError(f"{fpath}: tensor {k} has shape {table[k][0]}, the model expects {want[k][0]}")
            if table[k][1] != want[k][1]:
                raise CheckpointError(f"{fpath}: tensor {k} is {table[k][1]}, the model config says {want[k][1]}")
    try:
        tensors = stn.load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{fpath}: not a readable safetensors file ({e})") from None
    tensors.pop("__empty__", None)
    return tensors, meta


def _from_config(config, backend, where):
    """The untrained model the manifest's config describes (its sizes already checked against the weights)."""
    from .rnn import RNNLM
    try:
        return RNNLM.from_config(config, backend)
    except ValueError as e:
        raise CheckpointError(f"{where}: 'model.config' {config}: cannot rebuild the model ({e})") from None


def _folder_of(path):
    """The checkpoint folder ``path`` means: the folder, its manifest, or a file inside it."""
    if os.path.basename(path) == META_FILE:
        return os.path.dirname(path) or "."
    if os.path.isfile(path) and os.path.exists(os.path.join(os.path.dirname(path) or ".", META_FILE)):
        return os.path.dirname(path) or "."
    if os.path.lexists(path) and not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a checkpoint (expected the folder holding {META_FILE})")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    return path


def load(path, backend=None, resume=False, check_resume=None):
    """Load and verify the checkpoint directory ``path`` (or its fastseq.json, or a file in it).

    Returns a ``Checkpoint`` whose ``model`` is an RNNLM on ``backend`` ('cpp'
    by default when the C++ backend is available, else 'numpy'). With
    ``resume=True`` the resume state is loaded too (an error if there is none),
    and given to ``check_resume`` (e.g. the training engine's validator) when
    one is passed: a ValueError it raises becomes a CheckpointError.
    Raises CheckpointError naming what is wrong, and nothing else for a
    malformed checkpoint.
    """
    from .text import Vocab

    folder = _folder_of(os.fspath(path))
    meta_path = os.path.join(folder, META_FILE)
    try:
        raw = read_regular(meta_path, CheckpointError, MAX_MANIFEST_BYTES, "checkpoint manifest")
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a checkpoint ({META_FILE} is missing)") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{meta_path}: not a fastseq checkpoint (JSON nested too deep to read)") from None
    if _depth(meta) > MAX_DEPTH:
        raise CheckpointError(f"{meta_path}: not a fastseq checkpoint (JSON nested deeper than {MAX_DEPTH} levels)")
    fv = _check_manifest(meta, meta_path)
    try:
        vocab = Vocab.from_dict(meta["vocab"])
    except ValueError as e:
        raise CheckpointError(f"{meta_path}: {e}") from None
    config = meta["model"]["config"]
    if len(vocab) != config["vocab_size"]:
        raise CheckpointError(f"{meta_path}: the vocabulary has {len(vocab)} tokens but the model's vocab_size "
                              f"is {config['vocab_size']}")
    # Shapes come from the config and are checked against the file before a model is allocated:
    # a num_hiddens edited to 40000 would otherwise cost gigabytes before its refusal.
    want = {k: (shape, config["dtype"]) for k, shape in _param_shapes(config, fv).items()}
    tensors, tmeta = _read_tensors(folder, meta["weights"], "weights", want)
    bound = tmeta.get("fastseq.vocab_sha256")
    weights_file = meta["weights"]["file"]
    if bound is None:
        raise CheckpointError(f"{meta_path}: {weights_file} does not record the sha256 of its vocabulary "
                              "(fastseq.vocab_sha256); it was stripped, or the file is not fastseq's")
    if bound != _vocab_sha256(vocab.idx_to_token):
        raise CheckpointError(
            f"{meta_path}: the vocabulary is not the one these weights were trained with "
            f"({weights_file} records another); was fastseq.json edited or mixed up?")
    recorded = meta["weights"].get("tensors")
    if recorded is not None and {k: (tuple(t["shape"]), t["dtype"]) for k, t in recorded.items()} != want:
        raise CheckpointError(f"{meta_path}: 'weights.tensors' does not describe the model's parameters")
    model = _from_config(config, backend, meta_path)
    try:
        model.load_state_dict(tensors)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    state = None
    if resume:
        entry = meta.get("resume")
        if not entry:
            raise CheckpointError(f"{folder}: this checkpoint has no resume state (it cannot continue training)")
        arrays, _ = _read_tensors(folder, entry, "resume")
        used = set()
        state = _join_arrays(entry["state"], arrays, used, meta_path)
        unused = sorted(set(arrays) - used)
        if unused:
            raise CheckpointError(f"{meta_path}: 'resume.state' does not refer to the arrays {unused[:5]} of "
                                  f"{entry['file']} (part of the resume state was removed)")
        if check_resume is not None:
            try:
                check_resume(state)
            except ValueError as e:
                raise CheckpointError(f"{meta_path}: the resume state is not valid: {e}") from None
    return Checkpoint(path=folder, meta=meta, model=model, vocab=vocab, hparams=meta.get("hparams") or {},
                      step=meta.get("step", 0), history=meta.get("history"), resume=state)
