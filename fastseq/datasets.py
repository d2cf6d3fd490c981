"""Corpora: downloaded once, verified by sha256, cached; or read from a local folder.

Names: 'timemachine' and 'tinyshakespeare' (downloaded from their canonical
addresses on first use), 'pydoc' (Python's own documentation topics, shipped
with every CPython in ``pydoc_data``: no network at all). Any other argument is
a path to a UTF-8 text file.

Where they are read from, first match wins:
1. ``data_dir=`` or the environment variable ``FASTSEQ_DATA_DIR``: a folder
   holding ``<name>.txt`` (CI points it at ../shared/data);
2. the cache folder: ``FASTSEQ_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastseq``,
   else ``~/.cache/fastseq``;
3. the canonical address, saved to the cache after its checksum is verified.
"""
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from ._files import atomic_write, read_regular
from .errors import FastseqError

__all__ = ["DatasetError", "CORPORA", "load", "names"]

DATA_DIR_ENV = "FASTSEQ_DATA_DIR"
CACHE_DIR_ENV = "FASTSEQ_CACHE_DIR"

CORPORA = {
    "timemachine": {
        "url": "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt",
        "sha256": "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
        "about": "H. G. Wells, The Time Machine (the file Dive into Deep Learning uses)",
    },
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "about": "Shakespeare excerpts, the char-rnn benchmark",
    },
}
BUILTIN = ("pydoc",)


class DatasetError(FastseqError):
    """A corpus could not be loaded; the message says why and what to do."""


def names():
    """All corpus names that ``load`` knows."""
    return sorted(CORPORA) + list(BUILTIN)


def cache_dir():
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastseq"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _decode(data, where):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{where}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r}); "
            "convert it to UTF-8 (e.g. iconv -t UTF-8) and try again") from None


def _verified(data, name, where):
    want = CORPORA[name]["sha256"]
    got = _sha256(data)
    if got != want:
        raise DatasetError(
            f"{where}: sha256 {got} does not match the expected {want} for '{name}'; "
            "the file is damaged or a different text: delete it and load again")
    return data


def _pydoc():
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise DatasetError(
            "pydoc: this Python has no pydoc_data module (some distributions split it "
            "out; e.g. install python3-doc) ; use another corpus or a file path") from None
    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def _download(name, dest, timeout):
    url = CORPORA[name]["url"]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(
            f"{name}: no local copy and the download from {url} failed ({e}); "
            f"connect to the network, or set {DATA_DIR_ENV} to a folder holding {name}.txt") from None
    _verified(data, name, url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, data)   # an interrupted download never leaves a partial cache file
    return data


def _read(path):
    """The bytes of a corpus file; a folder, device or FIFO is refused (it would block or never end)."""
    return read_regular(path, DatasetError, what="text file")


def load(name_or_path, data_dir=None, download=True, timeout=60):
    """The text of a corpus: a known name (see ``names()``) or a file path."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise DatasetError(f"name_or_path: expected a corpus name or a file path, got {name_or_path!r}")
    key = os.fspath(name_or_path)
    if key == "pydoc":
        return _pydoc()
    if key in CORPORA:
        folder = data_dir or os.environ.get(DATA_DIR_ENV)
        if folder:
            path = Path(folder) / f"{key}.txt"
            try:
                data = _read(path)
            except FileNotFoundError:
                raise DatasetError(
                    f"{key}: {path} does not exist (the local folder comes from "
                    f"{'data_dir' if data_dir else DATA_DIR_ENV}); put {key}.txt there or unset it") from None
            return _decode(_verified(data, key, str(path)), str(path))
        cached = cache_dir() / f"{key}.txt"
        try:
            return _decode(_verified(_read(cached), key, str(cached)), str(cached))
        except FileNotFoundError:
            pass
        if not download:
            raise DatasetError(f"{key}: not in the cache ({cached}) and download=False")
        return _decode(_download(key, cached, timeout), key)
    try:
        data = _read(key)
    except FileNotFoundError:
        raise DatasetError(
            f"{key}: no such file, and not a corpus name (known: {', '.join(names())})") from None
    return _decode(data, key)
