"""Reading and writing the files a user keeps: one place for the rules every reader and writer follows.

Writing: a temporary file in the same folder, flushed, fsynced, renamed into place, the folder fsynced;
an interruption at any instant leaves the old file or the new one, never a torn one.

Reading: only regular files. ``/dev/zero`` grows memory until the process dies and opening a FIFO
blocks until some writer appears, so a path that is not a regular file is refused before any read.
"""
import os
import stat
import tempfile

__all__ = ["atomic_write", "fsync_dir", "read_regular", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def _a(noun):
    """The noun with its article: "an ARPA file", "a corpus"."""
    return ("an " if noun[:1].upper() in "AEIOU" else "a ") + noun


def fsync_dir(path):
    """Make a rename in ``path`` durable (the directory entry, not only the data)."""
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


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path, data, replace=True):
    """Write bytes to ``path``: temporary file, flush, fsync, rename. Never a partial file.

    replace=False refuses (FileExistsError) to put the new file over an existing one: a checkpoint
    never replaces a file that the manifest on disk may name.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX)
    try:
        # mkstemp makes the file private (0600); the user's files get the usual mode of a new file (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not replace and os.path.lexists(path):
            raise FileExistsError(f"{path}: exists; refusing to replace it")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def read_regular(path, error, max_bytes=None, what="file"):
    """The bytes of the regular file ``path``; anything else raises ``error`` (an exception class).

    FileNotFoundError is left to the caller, which knows how to say what was expected there.
    max_bytes: refuse a larger file before reading it (a manifest is small; a huge one is not ours).
    """
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{path}: the {what} cannot be opened ({e.strerror})") from None
    except ValueError:   # a NUL byte in the path
        raise error(f"{path!r}: not a valid path (it holds a NUL byte)") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: is a folder, expected {_a(what)}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is not a regular file (a device, FIFO or socket), expected {_a(what)}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
        chunks, total = [], 0
        while True:
            # Ask for what is left plus one byte (EOF in one call), at most 16 MB at a time.
            chunk = os.read(fd, max(4096, min(st.st_size - total + 1, 1 << 24)))
            if not chunk:
                break
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:   # grew while being read
                raise error(f"{path}: more than the {max_bytes:,} bytes a {what} may have")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{path}: the {what} cannot be read ({e.strerror})") from None
    finally:
        os.close(fd)
