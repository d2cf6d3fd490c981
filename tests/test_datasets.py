"""fastseq.datasets: every failure gives a DatasetError that says what to do."""
import hashlib
import io
import os
import urllib.error
from pathlib import Path

import pytest

from fastseq import datasets
from fastseq.datasets import DatasetError, load

SHARED = Path(os.environ.get("FASTSEQ_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
TM_SHA256 = "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516"  # shared/data/README.md


def test_local_folder_is_verified_and_read():
    text = load("timemachine")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == TM_SHA256
    assert "Time Traveller" in text


def test_pydoc_needs_no_network(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("pydoc must not touch the network")
    monkeypatch.setattr(datasets.urllib.request, "urlopen", no_network)
    text = load("pydoc")
    assert len(text) > 100_000 and " the " in text


def test_unknown_name_and_missing_file():
    with pytest.raises(DatasetError, match="no such file, and not a corpus name"):
        load("timemachin")


def test_folder_is_not_a_file(tmp_path):
    with pytest.raises(DatasetError, match="is a folder"):
        load(str(tmp_path))


def test_undecodable_bytes(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8 .*byte 3"):
        load(str(p))


def test_wrong_checksum_in_local_folder(tmp_path):
    (tmp_path / "timemachine.txt").write_text("not the time machine")
    with pytest.raises(DatasetError, match="does not match the expected"):
        load("timemachine", data_dir=str(tmp_path))


def test_local_folder_without_the_file(tmp_path):
    with pytest.raises(DatasetError, match="timemachine.txt there"):
        load("timemachine", data_dir=str(tmp_path))


@pytest.fixture
def no_local(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(datasets.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_offline_without_cache(no_local, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(datasets.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match="download .* failed.*FASTSEQ_DATA_DIR"):
        load("timemachine")
    assert not (no_local / "timemachine.txt").exists()


def _serve(monkeypatch, payload, calls):
    def fake(url, timeout):
        calls.append(url)
        return io.BytesIO(payload)
    monkeypatch.setattr(datasets.urllib.request, "urlopen", fake)


def test_download_is_verified_cached_and_reused(no_local, monkeypatch):
    real = (SHARED / "timemachine.txt").read_bytes()
    calls = []
    _serve(monkeypatch, real, calls)
    assert load("timemachine") == real.decode("utf-8")
    assert calls == [datasets.CORPORA["timemachine"]["url"]]
    assert (no_local / "timemachine.txt").read_bytes() == real
    assert load("timemachine") == real.decode("utf-8")
    assert len(calls) == 1  # the second load came from the cache


def test_download_with_wrong_checksum_is_not_cached(no_local, monkeypatch):
    _serve(monkeypatch, b"an error page", [])
    with pytest.raises(DatasetError, match="does not match"):
        load("timemachine")
    assert not (no_local / "timemachine.txt").exists()


def test_damaged_cache_is_reported(no_local):
    no_local.mkdir()
    (no_local / "timemachine.txt").write_bytes(b"truncated")
    with pytest.raises(DatasetError, match="delete it and load again"):
        load("timemachine")


def test_bad_argument_type():
    with pytest.raises(DatasetError, match="name_or_path"):
        load(42)


def _not_regular(path, kind):
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_corpus_path_that_is_not_a_regular_file(tmp_path, no_hang, kind):
    # A corpus path at /dev/zero grew memory until the process died; a FIFO blocked forever (item 11).
    with pytest.raises(DatasetError, match="is not a regular file"):
        load(str(_not_regular(tmp_path / "corpus.txt", kind)))
    with pytest.raises(DatasetError, match="is not a regular file"):
        load("/dev/zero")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_named_corpus_in_the_local_folder_or_cache_not_a_regular_file(tmp_path, no_hang, no_local, kind):
    _not_regular(tmp_path / "timemachine.txt", kind)
    with pytest.raises(DatasetError, match="is not a regular file"):
        load("timemachine", data_dir=str(tmp_path))
    no_local.mkdir()
    _not_regular(no_local / "timemachine.txt", kind)
    with pytest.raises(DatasetError, match="is not a regular file"):
        load("timemachine")


def test_dataset_error_is_a_fastseq_error():
    from fastseq.errors import FastseqError
    assert issubclass(DatasetError, FastseqError)
    with pytest.raises(ValueError):   # callers that caught ValueError keep working
        load(42)


def test_nul_in_a_path_is_a_dataset_error():
    with pytest.raises(DatasetError, match="NUL"):
        load("corpus\0.txt")
