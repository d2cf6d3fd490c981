"""Checkpoints: a directory with the weights in safetensors and a JSON description.

Layout of a checkpoint directory::

    fastseq.json                 what the checkpoint is (written last, atomically)
    model-<step>.safetensors     the model's parameters (names as in model.params)
    resume-<step>.safetensors    arrays needed to continue training (optional)

``fastseq.json`` holds the format version, the fastseq version that wrote it,
the model class and config (enough to rebuild it), the vocabulary, the
training hyperparameters, and for each safetensors file its name and sha256.
Loading verifies all of it and raises ``CheckpointError`` naming what is
wrong (missing file, checksum mismatch, tensor names or shapes, vocabulary
size, a newer format).

Why numbered files and a JSON written last: every file is written to a
temporary name, flushed to disk and renamed into place, and the JSON that
points at the new files is renamed over the old one only after they are
complete. An interruption at any moment (Ctrl-C, a crash, a full disk) leaves
the previous checkpoint intact and loadable; files of older steps are deleted
only after the new JSON is in place.

Resume state is a JSON-able dict (optimizer scalars, data position, NumPy
bit-generator states) whose arrays (optimizer moments, the carried hidden
state) go into ``resume-<step>.safetensors``: in the JSON each array is
replaced by ``{"__array__": "<key>"}``.
"""
import hashlib
import json
import os
import re
import tempfile

import numpy as np

__all__ = ["CheckpointError", "Checkpoint", "save", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "fastseq.checkpoint"
FORMAT_VERSION = 1
META_FILE = "fastseq.json"


class CheckpointError(ValueError):
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


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path, data):
    """Write bytes to ``path``: temporary file, flush, fsync, rename. Never a partial file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a checkpoint gets the usual mode of a new file (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


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


def _join_arrays(obj, arrays, where):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if key not in arrays:
                raise CheckpointError(f"{where}: the array {key!r} named in {META_FILE} is missing")
            return arrays[key]
        return {k: _join_arrays(v, arrays, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays, where) for v in obj]
    return obj


# --------------------------------------------------------------------------- save
def _vocab_sha256(idx_to_token):
    """sha256 of the token list: the weights file carries it, so an edited vocabulary in the JSON is caught."""
    return _sha256(json.dumps(list(idx_to_token), ensure_ascii=False).encode("utf-8"))


def _safetensors_metadata(data):
    """The ``__metadata__`` dict of a safetensors file (8-byte little-endian header size, JSON header)."""
    if len(data) < 8:
        return {}
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _tensor_file(folder, stem, step, tensors, metadata=None):
    stn = _safetensors()
    if not tensors:
        tensors = {"__empty__": np.zeros(0, dtype=np.float32)}
    data = stn.save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    name = f"{stem}-{step:08d}.safetensors"
    atomic_write(os.path.join(folder, name), data)
    return {"file": name, "sha256": _sha256(data),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()}}


def save(path, model, vocab, hparams, step=0, resume=None, history=None, extra=None):
    """Write a checkpoint of ``model`` into the directory ``path`` (created if needed).

    model: an RNNLM (its ``config``, ``params`` and class name are saved);
    vocab: a fastseq.Vocab; hparams: a JSON-able dict of training settings;
    step: the number of completed optimizer steps; resume: None or a dict of
    state to continue training (arrays allowed anywhere in it); history: a
    JSON-able record of the run so far; extra: more JSON-able metadata.
    Returns the path of the JSON file.
    """
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    try:
        json.dumps(hparams)
        json.dumps(history)
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"hparams/history/extra: not JSON-able ({e})") from None
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise CheckpointError(f"step: expected an integer >= 0, got {step!r}")
    step = int(step)
    params = {k: np.asarray(v) for k, v in model.params.items()}
    for k, v in params.items():
        if not np.all(np.isfinite(v)):
            raise CheckpointError(f"{k}: the model holds NaN or inf; refusing to save it")
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
        "weights": _tensor_file(path, "model", step, params,
                                metadata={"fastseq.vocab_sha256": _vocab_sha256(vocab.idx_to_token)}),
        "resume": None,
    }
    if resume is not None:
        arrays = {}
        skeleton = _split_arrays(resume, arrays, "")
        meta["resume"] = dict(_tensor_file(path, "resume", step, arrays), state=skeleton)
    meta_bytes = json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8")
    meta_path = os.path.join(path, META_FILE)
    atomic_write(meta_path, meta_bytes)
    # Only now are older files garbage: the JSON no longer names them.
    keep = {meta["weights"]["file"]} | ({meta["resume"]["file"]} if meta["resume"] else set())
    for name in os.listdir(path):
        if re.fullmatch(r"(model|resume)-\d{8}\.safetensors", name) and name not in keep:
            try:
                os.unlink(os.path.join(path, name))
            except OSError:
                pass
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


def _read_tensors(folder, entry, what):
    stn = _safetensors()
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
            or not isinstance(entry.get("sha256"), str):
        raise CheckpointError(f"{os.path.join(folder, META_FILE)}: the '{what}' entry has no file name or sha256")
    name = entry["file"]
    if os.path.basename(name) != name:
        raise CheckpointError(f"{os.path.join(folder, META_FILE)}: '{what}' file {name!r} is not a plain file name")
    fpath = os.path.join(folder, name)
    try:
        with open(fpath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{fpath}: the {what} file named in {META_FILE} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{fpath}: cannot be read ({e.strerror})") from None
    got = _sha256(data)
    if got != entry["sha256"]:
        raise CheckpointError(
            f"{fpath}: sha256 {got} does not match {entry['sha256']} recorded in {META_FILE}; "
            "the file is damaged or was replaced")
    try:
        tensors = stn.load(data)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{fpath}: not a readable safetensors file ({e})") from None
    tensors.pop("__empty__", None)
    return tensors, _safetensors_metadata(data)


def build_model(model_meta, backend=None):
    """An untrained model from the JSON ``model`` entry ({"class", "config"})."""
    cls_name = model_meta.get("class") if isinstance(model_meta, dict) else None
    config = model_meta.get("config") if isinstance(model_meta, dict) else None
    if cls_name != "RNNLM" or not isinstance(config, dict):
        raise CheckpointError(f"model: expected class 'RNNLM' with a config, got {cls_name!r}")
    if backend not in (None, "cpp", "numpy"):
        raise CheckpointError(f"backend: expected 'cpp' or 'numpy', got {backend!r}")
    try:
        try:
            from .rnn import RNNLM as Fast
        except ImportError:
            Fast = None
        if Fast is not None:
            return Fast(**config, backend=backend or "cpp")
        if backend == "cpp":
            raise CheckpointError("backend 'cpp': this fastseq build has no C++ RNNLM (fastseq.rnn)")
        from .reference.rnn import RNNLM as Ref
        return Ref(**config)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model config {config}: cannot rebuild the model ({e})") from None


def load(path, backend=None, resume=False):
    """Load and verify the checkpoint directory ``path`` (or its fastseq.json).

    Returns a ``Checkpoint`` whose ``model`` is an RNNLM on ``backend`` ('cpp'
    by default when the C++ backend is available, else 'numpy'). With
    ``resume=True`` the resume state is loaded too (an error if there is none).
    Raises CheckpointError naming what is wrong.
    """
    from .text import Vocab

    path = os.fspath(path)
    folder = os.path.dirname(path) if os.path.basename(path) == META_FILE else path
    meta_path = os.path.join(folder, META_FILE)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such checkpoint directory")
    try:
        with open(meta_path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: not a checkpoint ({META_FILE} is missing)") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a fastseq checkpoint (format is not {FORMAT!r})")
    fv = meta.get("format_version")
    if not isinstance(fv, int):
        raise CheckpointError(f"{meta_path}: format_version is missing")
    if fv > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format version {fv} is newer than this fastseq reads ({FORMAT_VERSION}); "
            f"it was written by fastseq {meta.get('fastseq_version')}: upgrade fastseq")
    writer = meta.get("fastseq_version")
    if not isinstance(writer, str):
        raise CheckpointError(f"{meta_path}: fastseq_version is missing")
    mine = _version_tuple(_version())
    if mine and _version_tuple(writer)[:1] > mine[:1]:
        raise CheckpointError(
            f"{meta_path}: written by fastseq {writer}, a newer major version than this one ({_version()})")
    try:
        vocab = Vocab.from_dict(meta.get("vocab"))
    except ValueError as e:
        raise CheckpointError(f"{meta_path}: {e}") from None
    model = build_model(meta.get("model"), backend)
    if len(vocab) != model.vocab_size:
        raise CheckpointError(
            f"{meta_path}: the vocabulary has {len(vocab)} tokens but the model's vocab_size is {model.vocab_size}")
    tensors, tmeta = _read_tensors(folder, meta.get("weights"), "weights")
    bound = tmeta.get("fastseq.vocab_sha256")   # absent in checkpoints written before it was recorded
    if bound is not None and bound != _vocab_sha256(vocab.idx_to_token):
        raise CheckpointError(
            f"{meta_path}: the vocabulary is not the one these weights were trained with "
            f"({os.path.basename(meta['weights']['file'])} records another); was fastseq.json edited or mixed up?")
    want = {k: v.shape for k, v in model.params.items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if set(got) != set(want):
        missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        raise CheckpointError(
            f"{folder}: weights do not match the model: missing {missing}, unexpected {unexpected}")
    for k in want:
        if got[k] != want[k]:
            raise CheckpointError(f"{folder}: weight {k} has shape {got[k]}, the model expects {want[k]}")
        if tensors[k].dtype != model.params[k].dtype:
            raise CheckpointError(
                f"{folder}: weight {k} is {tensors[k].dtype}, the model config says {model.params[k].dtype}")
    try:
        model.load_state_dict(tensors)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    hparams, step, history = meta.get("hparams"), meta.get("step", 0), meta.get("history")
    if hparams is not None and not isinstance(hparams, dict):
        raise CheckpointError(f"{meta_path}: 'hparams' is a {type(hparams).__name__}, expected an object")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{meta_path}: 'step' is {step!r}, expected an integer >= 0")
    if history is not None and not isinstance(history, dict):
        raise CheckpointError(f"{meta_path}: 'history' is a {type(history).__name__}, expected an object")
    state = None
    if resume:
        entry = meta.get("resume")
        if not entry:
            raise CheckpointError(f"{folder}: this checkpoint has no resume state (it cannot continue training)")
        arrays, _ = _read_tensors(folder, entry, "resume")
        state = _join_arrays(entry.get("state"), arrays, folder)
        if not isinstance(state, dict):
            raise CheckpointError(f"{meta_path}: the resume state is a {type(state).__name__}, expected an object")
    return Checkpoint(path=folder, meta=meta, model=model, vocab=vocab, hparams=hparams or {},
                      step=step, history=history, resume=state)
