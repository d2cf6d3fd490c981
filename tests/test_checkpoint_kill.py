"""A save killed at every file operation leaves a checkpoint that loads and verifies (issue 12, item 1).

Random signals never hit the window between two file operations, so the kill is injected: the os
functions a save uses are wrapped, a dry run counts the operations, then for each one a forked child
runs the same save and dies (os._exit) just before it, or halfway through it for a write (a torn
write). The parent then loads the folder: the checkpoint from before the save or the one it was
writing must load and verify, with exactly its weights, hyperparameters and resume arrays, never
neither. A next save must leave only its own files. The same runs with an exception (Ctrl-C) raised
in the process instead of a kill.
"""
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("safetensors")

from fastseq import checkpoint  # noqa: E402
from fastseq.reference.rnn import RNNLM  # noqa: E402
from fastseq.text import Vocab  # noqa: E402

# Every os function a save writes, renames, deletes or syncs through (tempfile and os.makedirs use them).
FILE_OPS = ("open", "write", "fsync", "close", "replace", "rename", "unlink", "remove", "chmod", "mkdir", "link")
KILLED = 77
USER_FILE = "model-00000009.safetensors"   # the user's, in the folder: it survives everything


@pytest.fixture(autouse=True)
def no_disk_sync(monkeypatch):
    """A killed process loses nothing the kernel holds, so durability is not what these tests test:
    fsync (still counted as an operation a kill can hit) skips the disk, which makes 300 saves take seconds."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


class Injector:
    """Wraps FILE_OPS; op number ``at`` dies (kill) or raises (Ctrl-C); ``torn`` writes half first."""

    def __init__(self, at=None, how="kill", torn=False):
        self.at, self.how, self.torn = at, how, torn
        self.ops = []
        self.real = {name: getattr(os, name) for name in FILE_OPS}

    def __enter__(self):
        for name, real in self.real.items():
            setattr(os, name, self._wrap(name, real))
        return self

    def __exit__(self, *exc):
        for name, real in self.real.items():
            setattr(os, name, real)

    def _wrap(self, name, real):
        def op(*args, **kwargs):
            i = len(self.ops)
            self.ops.append(name)
            if i == self.at:
                if self.how == "raise":
                    raise KeyboardInterrupt(f"injected before {name} (op {i})")
                if self.torn:
                    data = bytes(args[1])
                    real(args[0], data[:max(1, len(data) // 2)])
                os._exit(KILLED)
            return real(*args, **kwargs)
        return op


def _state(seed, step, with_resume=True):
    vocab = Vocab("the time machine by h g wells")
    m = RNNLM(len(vocab), 6, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for p in m.params.values():
        p[...] = rng.normal(0, 1, p.shape)
    resume = {"optimizer": {"t": step, "m": {k: rng.normal(size=p.shape) for k, p in m.params.items()}},
              "state": rng.normal(size=(2, 6)), "batch": step % 7} if with_resume else None
    return dict(model=m, vocab=vocab, hparams={"run": seed}, step=step, resume=resume)


def _save(folder, s):
    return checkpoint.save(folder, s["model"], s["vocab"], s["hparams"], step=s["step"], resume=s["resume"])


def _is(ck, s):
    if ck.step != s["step"] or ck.hparams != s["hparams"]:
        return False
    if any(not np.array_equal(ck.model.params[k], p) for k, p in s["model"].params.items()):
        return False
    if s["resume"] is None:
        return True
    r = ck.resume
    return r is not None and r["batch"] == s["resume"]["batch"] and np.array_equal(r["state"], s["resume"]["state"]) \
        and all(np.array_equal(r["optimizer"]["m"][k], v) for k, v in s["resume"]["optimizer"]["m"].items())


def _scenarios(tmp_path):
    """(name, template folder, the state it holds or None, the state the save writes)."""
    from checkpoint_v1 import save_v1
    out = []
    a, b = _state(1, 5), _state(2, 5)
    # The case: the end of an epoch saves a second time at the step just saved.
    t = tmp_path / "same-step"
    _save(t, a)
    out.append(("same-step", t, a, b))
    # A later step without resume state, over a checkpoint that an earlier interrupted save left litter in.
    t = tmp_path / "litter"
    _save(t, a)
    with Injector(at=None) as probe:
        _save(tmp_path / "probe", b)
    names = probe.ops
    at = max(i for i, n in enumerate(names) if n == "replace")   # the manifest's rename: the last one
    pid = os.fork()
    if pid == 0:
        with Injector(at=at):
            _save(t, b)
        os._exit(3)
    assert os.waitpid(pid, 0)[1] >> 8 == KILLED
    out.append(("litter", t, a, _state(3, 6, with_resume=False)))
    # A checkpoint written by fastseq 0.1.0 (format 1), replaced by this version's format.
    t = tmp_path / "format-1"
    save_v1(t, a["model"], a["vocab"], a["hparams"], step=a["step"], resume=a["resume"])
    out.append(("format-1", t, a, b))
    # The first save into a folder that holds only the user's file.
    t = tmp_path / "first"
    t.mkdir()
    out.append(("first", t, None, b))
    for _, t, _, _ in out:
        (t / USER_FILE).write_bytes(b"the user's own file")
    return out


def _check_folder(folder, before, new, where):
    """The previous or the new checkpoint loads and verifies; then a clean save leaves only its own files."""
    try:
        ck = checkpoint.load(folder, backend="numpy")
        if ck.meta["resume"] is not None:
            ck = checkpoint.load(folder, backend="numpy", resume=True)
    except checkpoint.CheckpointError as e:
        if before is None and "fastseq.json is missing" in str(e):
            ck = None     # killed before the first manifest landed: there was never a checkpoint here
        else:
            raise AssertionError(f"{where}: no loadable checkpoint: {e}") from None
    if ck is not None:
        assert (before is not None and _is(ck, before)) or _is(ck, new), f"{where}: loads, but is neither"
    assert (folder / USER_FILE).read_bytes() == b"the user's own file", where
    last = _state(4, 8)
    _save(folder, last)
    assert _is(checkpoint.load(folder, backend="numpy", resume=True), last), where
    names = sorted(os.listdir(folder))
    assert len(names) == 4 and names[0] == checkpoint.META_FILE and USER_FILE in names, f"{where}: {names}"
    return ck is not None and _is(ck, new)


def _count_ops(tmp_path, template, new):
    probe = tmp_path / "count"
    shutil.copytree(template, probe, symlinks=True)
    with Injector() as inj:
        _save(probe, new)
    shutil.rmtree(probe)
    return inj.ops


def test_a_kill_at_every_file_operation_of_a_save_leaves_a_checkpoint(tmp_path):
    cases = 0
    for name, template, before, new in _scenarios(tmp_path):
        ops = _count_ops(tmp_path, template, new)
        assert {"write", "fsync", "replace", "unlink"} <= set(ops), ops
        kills = [(i, False) for i in range(len(ops) + 1)] + [(i, True) for i, op in enumerate(ops) if op == "write"]
        saw_new = saw_old = 0
        for i, torn in kills:
            folder = tmp_path / f"{name}-{i}-{'torn' if torn else 'kill'}"
            shutil.copytree(template, folder, symlinks=True)
            where = f"{name}: killed {'during' if torn else 'before'} op {i} " \
                    f"({ops[i] if i < len(ops) else 'after the last'})"
            pid = os.fork()
            if pid == 0:
                try:
                    with Injector(at=i, torn=torn):
                        _save(folder, new)
                finally:
                    os._exit(3 if i == len(ops) else 4)
            status = os.waitpid(pid, 0)[1]
            assert os.WIFEXITED(status), where
            assert os.WEXITSTATUS(status) == (3 if i == len(ops) else KILLED), f"{where}: exit {status >> 8}"
            if _check_folder(folder, before, new, where):
                saw_new += 1
            else:
                saw_old += 1
            shutil.rmtree(folder)
            cases += 1
        # The kills landed on both sides of the switch: the test saw the old and the new checkpoint.
        assert saw_new >= 1 and saw_old >= 1, (name, saw_old, saw_new)
    assert cases > 100, cases


def test_an_exception_at_every_file_operation_of_a_save_leaves_a_checkpoint(tmp_path):
    for name, template, before, new in _scenarios(tmp_path):
        ops = _count_ops(tmp_path, template, new)
        for i in range(len(ops)):
            folder = tmp_path / f"{name}-{i}-raise"
            shutil.copytree(template, folder, symlinks=True)
            where = f"{name}: Ctrl-C before op {i} ({ops[i]})"
            with Injector(at=i, how="raise"):
                try:
                    _save(folder, new)
                except KeyboardInterrupt:
                    pass
            _check_folder(folder, before, new, where)
            shutil.rmtree(folder)
