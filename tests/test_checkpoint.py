"""fastseq.checkpoint: round trip, verification of every part, atomic writes, resume state."""
import hashlib
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("safetensors")

from fastseq import checkpoint  # noqa: E402
from fastseq.checkpoint import CheckpointError  # noqa: E402
from fastseq.reference.rnn import RNNLM  # noqa: E402
from fastseq.text import Vocab  # noqa: E402


def _model(dtype=np.float64, V=None, H=8, seed=3):
    vocab = Vocab("hello world, hello fastseq")
    m = RNNLM(V or len(vocab), H, dtype=dtype, seed=seed)
    # Non-initial values everywhere, biases included.
    rng = np.random.default_rng(seed)
    for k, p in m.params.items():
        p[...] = rng.normal(0, 0.5, p.shape)
    return m, vocab


def _meta(path):
    with open(os.path.join(path, checkpoint.META_FILE), encoding="utf-8") as f:
        return json.load(f)


def _sign(meta):
    """Recompute the manifest's integrity record (what a deliberate edit would do)."""
    return dict(meta, integrity=checkpoint._integrity(meta)) if "integrity" in meta else meta


def _write_meta(path, meta, sign=True):
    """Write an edited manifest; sign=True re-signs it so the checks behind the integrity record are reached."""
    with open(os.path.join(path, checkpoint.META_FILE), "w", encoding="utf-8") as f:
        json.dump(_sign(meta) if sign else meta, f)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_weights_vocab_hparams(tmp_path, dtype):
    m, vocab = _model(dtype)
    hp = {"lr": 0.5, "bptt": "block:5", "corpus": "x.txt"}
    checkpoint.save(tmp_path / "ck", m, vocab, hp, step=17, history={"epochs": [1, 2]})
    ck = checkpoint.load(tmp_path / "ck", backend="numpy")
    assert ck.step == 17 and ck.hparams == hp and ck.history == {"epochs": [1, 2]}
    assert ck.vocab.idx_to_token == vocab.idx_to_token
    assert ck.model.config == m.config
    for k, p in m.params.items():
        assert ck.model.params[k].dtype == p.dtype
        np.testing.assert_array_equal(ck.model.params[k], p)
    meta = _meta(tmp_path / "ck")
    import fastseq
    assert meta["fastseq_version"] == fastseq.__version__
    # The recorded sha256 is the sha256 of the weights file on disk.
    data = (tmp_path / "ck" / meta["weights"]["file"]).read_bytes()
    assert meta["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    # The weights file is plain safetensors that the ecosystem reads by name.
    from safetensors.numpy import load_file
    t = load_file(str(tmp_path / "ck" / meta["weights"]["file"]))
    assert set(t) == {"W_xh", "W_hh", "b_h", "W_hq", "b_q"}
    np.testing.assert_array_equal(t["W_hh"], m.params["W_hh"])


@pytest.mark.parametrize("kw", [dict(cell="lstm", num_layers=2, dropout=0.3), dict(cell="gru", num_layers=3),
                                dict(nonlinearity="relu", num_layers=2, dropout=0.5)],
                         ids=["lstm2-dropout", "gru3", "relu2-dropout"])
def test_round_trip_of_every_cell_depth_and_dropout(tmp_path, kw):
    vocab = Vocab("hello world, hello fastseq")
    m = RNNLM(len(vocab), 6, dtype=np.float32, **kw)
    rng = np.random.default_rng(1)
    for p in m.params.values():
        p[...] = rng.normal(0, 0.5, p.shape)
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    assert meta["format_version"] == checkpoint.FORMAT_VERSION == 3
    assert meta["model"]["config"] == m.config
    ck = checkpoint.load(tmp_path, backend="numpy")
    assert ck.model.config == m.config and list(ck.model.params) == list(m.params)
    for k, p in m.params.items():
        np.testing.assert_array_equal(ck.model.params[k], p)


def test_training_resumed_from_a_checkpoint_is_bit_identical_lstm2_dropout(tmp_path):
    """A 2-layer LSTM with dropout, its (h, c) state carried, stopped after a step and saved; loaded from
    the checkpoint into fresh objects and continued: the weights end bit for bit as an uninterrupted run."""
    from fastseq import optim
    from fastseq.data import SeqDataLoader
    from fastseq.training import Trainer

    vocab = Vocab("hello world, hello fastseq " * 8)
    ids = np.asarray(vocab[list("hello world, hello fastseq " * 8)])

    def make(callbacks=()):
        m = RNNLM(len(vocab), 6, dtype=np.float64, seed=2, cell="lstm", num_layers=2, dropout=0.3)
        loader = SeqDataLoader(ids, 2, 5, sampling="sequential", seed=3)
        return Trainer(m, loader, optim.Adam(0.01), clip=1.0, rng=4, callbacks=callbacks)

    ref = make()
    ref.fit(2)
    a = make(callbacks=[lambda info: info["step"] < 7])
    a.fit(2)
    assert a.step == 7 and a.hidden.shape == (4, 2, 6)
    checkpoint.save(tmp_path, a.model, vocab, {}, step=a.step, resume=a.state_dict())
    b = make()
    ck = checkpoint.load(tmp_path, backend="numpy", resume=True, check_resume=b.load_state_dict)
    assert ck.model.config == a.model.config
    b.fit(2)
    assert b.step == ref.step
    for k, p in ref.model.params.items():
        np.testing.assert_array_equal(b.model.params[k], p, err_msg=k)


def test_a_format_2_checkpoint_still_loads(tmp_path):
    """Format 2 (before the cells): a one-layer plain RNN whose config has a nonlinearity and no cell."""
    from checkpoint_v1 import config_v1
    m, vocab = _model()
    m64 = RNNLM(len(vocab), 8, "relu", dtype=np.float64)
    m64.load_state_dict(m.state_dict())
    checkpoint.save(tmp_path, m64, vocab, {"lr": 1.0}, step=4)
    meta = _meta(tmp_path)
    meta["format_version"] = 2
    meta["model"]["config"] = config_v1(m64)
    assert set(meta["model"]["config"]) == {"vocab_size", "num_hiddens", "nonlinearity", "dtype"}
    _write_meta(tmp_path, meta)                                  # re-signed: as format 2 wrote it
    ck = checkpoint.load(tmp_path, backend="numpy")
    assert ck.model.config == m64.config and ck.model.cell == "rnn_relu" and ck.step == 4
    for k, p in m64.params.items():
        np.testing.assert_array_equal(ck.model.params[k], p)


def test_resume_state_round_trip_nested_arrays_and_rng(tmp_path):
    m, vocab = _model()
    rng = np.random.default_rng(123)
    rng.random(5)
    state = {"optimizer": {"t": 4, "m": {"W_hh": np.arange(6.0).reshape(2, 3)}, "betas": [0.9, 0.999]},
             "state": np.ones((2, 8), dtype=np.float32), "rng": rng.bit_generator.state, "none": None}
    checkpoint.save(tmp_path, m, vocab, {}, step=2, resume=state)
    ck = checkpoint.load(tmp_path, backend="numpy", resume=True)
    r = ck.resume
    assert r["optimizer"]["t"] == 4 and r["optimizer"]["betas"] == [0.9, 0.999] and r["none"] is None
    np.testing.assert_array_equal(r["optimizer"]["m"]["W_hh"], np.arange(6.0).reshape(2, 3))
    assert r["state"].dtype == np.float32 and r["state"].shape == (2, 8)
    g = np.random.default_rng()
    g.bit_generator.state = r["rng"]
    np.testing.assert_array_equal(g.random(4), rng.random(4))


def test_no_resume_state_is_named(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    with pytest.raises(CheckpointError, match="no resume state"):
        checkpoint.load(tmp_path, resume=True)


def test_damaged_weights_named_by_sha256(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    f = tmp_path / _meta(tmp_path)["weights"]["file"]
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 .* does not match"):
        checkpoint.load(tmp_path)


def test_missing_weights_file_named(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    os.unlink(tmp_path / _meta(tmp_path)["weights"]["file"])
    with pytest.raises(CheckpointError, match="weights file named in fastseq.json is missing"):
        checkpoint.load(tmp_path)


def test_not_a_checkpoint_and_bad_json(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        checkpoint.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="fastseq.json is missing"):
        checkpoint.load(tmp_path)
    (tmp_path / "fastseq.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(tmp_path)
    (tmp_path / "fastseq.json").write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not a fastseq checkpoint"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("key, value, words", [
    ("hparams", [1, 2], "'hparams' is a list"),
    ("step", "abc", "'step' is 'abc'"),
    ("step", -1, "'step' is -1"),
    ("history", "x", "'history' is 'x', expected an object or null"),
])
def test_edited_json_fields_named(tmp_path, key, value, words):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {"lr": 1.0}, step=3, resume={"epoch": 1}, history={"epochs": []})
    _write_meta(tmp_path, dict(_meta(tmp_path), **{key: value}))
    with pytest.raises(CheckpointError, match=words):
        checkpoint.load(tmp_path, backend="numpy")


def test_newer_format_and_missing_version_refused(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    _write_meta(tmp_path, dict(meta, format_version=checkpoint.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer than this fastseq reads"):
        checkpoint.load(tmp_path)
    _write_meta(tmp_path, {k: v for k, v in meta.items() if k != "fastseq_version"})
    with pytest.raises(CheckpointError, match="fastseq_version is missing"):
        checkpoint.load(tmp_path)
    _write_meta(tmp_path, dict(meta, fastseq_version="999.0.0"))
    with pytest.raises(CheckpointError, match="newer major version"):
        checkpoint.load(tmp_path)


def test_vocab_size_and_config_mismatch_named(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    v2 = dict(meta["vocab"], idx_to_token=meta["vocab"]["idx_to_token"][:-1])
    _write_meta(tmp_path, dict(meta, vocab=v2))
    with pytest.raises(CheckpointError, match="vocabulary has .* tokens but the model's vocab_size"):
        checkpoint.load(tmp_path)
    cfg = dict(meta["model"]["config"], num_hiddens=9)
    _write_meta(tmp_path, dict(meta, model={"class": "RNNLM", "config": cfg}))
    with pytest.raises(CheckpointError, match=r"tensor W_hh has shape \(8, 8\), the model expects \(9, 9\)"):
        checkpoint.load(tmp_path)
    cfg = dict(meta["model"]["config"], dtype="float32")
    _write_meta(tmp_path, dict(meta, model={"class": "RNNLM", "config": cfg}))
    with pytest.raises(CheckpointError, match="is float64, the model config says float32"):
        checkpoint.load(tmp_path)
    _write_meta(tmp_path, dict(meta, model={"class": "LSTM", "config": {}}))
    with pytest.raises(CheckpointError, match="expected class 'RNNLM'"):
        checkpoint.load(tmp_path)


def test_edited_vocabulary_of_the_same_size_named(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    itos = meta["vocab"]["idx_to_token"]
    itos[1], itos[2] = itos[2], itos[1]          # same size, same tokens, other ids
    _write_meta(tmp_path, meta)
    with pytest.raises(CheckpointError, match="not the one these weights were trained with"):
        checkpoint.load(tmp_path, backend="numpy")


def _vocab_metadata(vocab):
    return {"fastseq.vocab_sha256": hashlib.sha256(
        json.dumps(vocab.idx_to_token, ensure_ascii=False).encode("utf-8")).hexdigest()}


def test_weights_with_wrong_names_named(tmp_path):
    from safetensors.numpy import save as st_save
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    t = {("W_xx" if k == "W_xh" else k): v for k, v in m.params.items()}
    data = st_save(t, metadata=_vocab_metadata(vocab))
    (tmp_path / meta["weights"]["file"]).write_bytes(data)
    meta["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    _write_meta(tmp_path, meta)
    with pytest.raises(CheckpointError, match=r"missing \['W_xh'\], unexpected \['W_xx'\]"):
        checkpoint.load(tmp_path)


def test_non_finite_weights_refused_on_save_and_load(tmp_path):
    from safetensors.numpy import save as st_save
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    bad = {k: v.copy() for k, v in m.params.items()}
    bad["b_q"][1] = np.nan
    with pytest.raises(CheckpointError, match="b_q: the model holds NaN or inf"):
        m.params["b_q"][1] = np.nan
        checkpoint.save(tmp_path / "other", m, vocab, {})
    data = st_save(bad, metadata=_vocab_metadata(vocab))
    (tmp_path / meta["weights"]["file"]).write_bytes(data)
    meta["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    _write_meta(tmp_path, meta)
    with pytest.raises(CheckpointError, match="b_q"):
        checkpoint.load(tmp_path)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {"v": 1}, step=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    old = {k: v.copy() for k, v in m.params.items()}
    for p in m.params.values():
        p += 1.0
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(os.path.basename(dst))
        if os.path.basename(dst) == checkpoint.META_FILE:
            raise KeyboardInterrupt  # Ctrl-C just before the new JSON would land
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, m, vocab, {"v": 2}, step=2)
    monkeypatch.setattr(os, "replace", real_replace)
    assert "fastseq.json" in calls and any(c.startswith("model-") for c in calls)
    ck = checkpoint.load(tmp_path)
    assert ck.step == 1 and ck.hparams == {"v": 1}
    for k in old:
        np.testing.assert_array_equal(ck.model.params[k], old[k])
    # No temporary files are left behind, and the old files are untouched.
    names = {p.name for p in tmp_path.iterdir()}
    assert not any(n.endswith(".tmp") for n in names)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data


def test_files_get_the_mode_of_ordinary_new_files(tmp_path):
    m, vocab = _model()
    old = os.umask(0o022)
    try:
        checkpoint.save(tmp_path, m, vocab, {}, resume={"x": np.zeros(2)})
    finally:
        os.umask(old)
    names = [n for n in os.listdir(tmp_path)]
    assert len(names) == 3
    for n in names:
        assert os.stat(tmp_path / n).st_mode & 0o777 == 0o644, n


def test_old_step_files_removed_after_new_save(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {}, step=1, resume={"a": np.zeros(2)})
    checkpoint.save(tmp_path, m, vocab, {}, step=2, resume={"a": np.ones(2)})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and names[0] == "fastseq.json", names
    assert re.fullmatch(r"model-00000002-[0-9a-f]{8}\.safetensors", names[1]), names
    assert re.fullmatch(r"resume-00000002-[0-9a-f]{8}\.safetensors", names[2]), names
    np.testing.assert_array_equal(checkpoint.load(tmp_path, resume=True).resume["a"], np.ones(2))


def test_unsaveable_resume_state_is_named(tmp_path):
    m, vocab = _model()
    with pytest.raises(CheckpointError, match="resume state: /x holds a object"):
        checkpoint.save(tmp_path, m, vocab, {}, resume={"x": object()})
    with pytest.raises(CheckpointError, match="step: expected an integer >= 0"):
        checkpoint.save(tmp_path, m, vocab, {}, step=-1)


# --------------------------------------------------------------------------- issue 12: nothing saved is lost
def _tensor_names(path):
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".safetensors"))


def _assert_is(ck, model, step, hp):
    assert ck.step == step and ck.hparams == hp
    for k, p in model.params.items():
        np.testing.assert_array_equal(ck.model.params[k], p)


def test_second_save_at_the_same_step_never_replaces_a_named_file(tmp_path, monkeypatch):
    # The end of an epoch saves twice at one step; a kill between the second save's file writes and its
    # manifest left resume-<step> replaced under the old manifest: no loadable checkpoint (item 1).
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {"v": 1}, step=5, resume={"a": np.zeros(3)})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    old = {k: v.copy() for k, v in m.params.items()}
    for p in m.params.values():
        p += 1.0
    real_replace = os.replace

    def killed_before_manifest(src, dst):
        if os.path.basename(dst) == checkpoint.META_FILE:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_manifest)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, m, vocab, {"v": 2}, step=5, resume={"a": np.ones(3)})
    monkeypatch.setattr(os, "replace", real_replace)
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data, name
    ck = checkpoint.load(tmp_path, backend="numpy", resume=True)
    assert ck.step == 5 and ck.hparams == {"v": 1}
    np.testing.assert_array_equal(ck.resume["a"], np.zeros(3))
    for k in old:
        np.testing.assert_array_equal(ck.model.params[k], old[k])


def test_next_save_removes_what_an_interrupted_save_left(tmp_path, monkeypatch):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {}, step=1, resume={"a": np.zeros(2)})
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (_ for _ in ()).throw(KeyboardInterrupt)
                        if os.path.basename(d) == checkpoint.META_FILE else real_replace(s, d))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, m, vocab, {}, step=2, resume={"a": np.ones(2)})
    monkeypatch.setattr(os, "replace", real_replace)
    (tmp_path / ".model-00000003-0123abcd.safetensors.x7_q.tmp").write_bytes(b"torn")   # a killed write
    assert len(_tensor_names(tmp_path)) == 4                # step 1's two files and the orphans of step 2
    assert checkpoint.load(tmp_path, resume=True).step == 1  # leftovers are ignored by load
    checkpoint.save(tmp_path, m, vocab, {}, step=3, resume={"a": np.ones(2)})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 3 and names[0] == checkpoint.META_FILE, names
    assert all("-00000003-" in n for n in names[1:]), names


def test_user_files_with_checkpoint_like_names_survive(tmp_path):
    # --overwrite on a folder that was not a checkpoint deleted the user's model-NNNNNNNN files (item 3).
    mine = {"model-00000001.safetensors": b"my own model", "resume-00000001.safetensors": b"mine too",
            "model-00000002.safetensors": b"and this", "notes.txt": b"notes"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {}, step=1, resume={"a": np.zeros(2)})
    checkpoint.save(tmp_path, m, vocab, {}, step=2, resume={"a": np.zeros(2)})
    checkpoint.save(tmp_path, m, vocab, {}, step=2)
    for name, data in mine.items():
        assert (tmp_path / name).read_bytes() == data, name
    assert checkpoint.load(tmp_path).step == 2
    assert len(_tensor_names(tmp_path)) == len(mine) - 1 + 1   # the user's three and one weights file


def test_a_save_after_a_format_1_checkpoint_replaces_it(tmp_path):
    from checkpoint_v1 import save_v1
    m, vocab = _model()
    save_v1(tmp_path, m, vocab, {"v": 1}, step=4, resume={"a": np.arange(3.0)}, history={"epochs": []})
    ck = checkpoint.load(tmp_path, backend="numpy", resume=True)   # fastseq 0.1.0's checkpoints still load
    _assert_is(ck, m, 4, {"v": 1})
    np.testing.assert_array_equal(ck.resume["a"], np.arange(3.0))
    assert ck.meta["format_version"] == 1
    checkpoint.save(tmp_path, m, vocab, {"v": 2}, step=5)
    assert "model-00000004.safetensors" not in _tensor_names(tmp_path)   # listed by the old manifest: ours
    assert checkpoint.load(tmp_path).meta["format_version"] == checkpoint.FORMAT_VERSION


def _edit(path, fn, sign=False):
    meta = _meta(path)
    fn(meta)
    _write_meta(path, meta, sign=sign)


def _set_cell(meta):
    meta["model"]["config"]["cell"] = "rnn_relu"


def _set_batch(v):
    def fn(meta):
        meta["resume"]["state"]["batch"] = v
    return fn


def _drop_moments(meta):
    del meta["resume"]["state"]["optimizer"]["m"]


@pytest.mark.parametrize("fn, field", [
    (_set_cell, "'model.config.cell' is 'rnn_relu', not what was saved"),
    (_set_batch(-5), "'resume.state.batch' is -5, not what was saved"),
    (_set_batch(10 ** 6), "'resume.state.batch' is 1000000, not what was saved"),
    (_drop_moments, "'resume.state.optimizer.m' was removed"),
    (lambda meta: meta["hparams"].update(lr=100.0), "'hparams.lr' is 100.0"),
    (lambda meta: meta.update(step=7), "'step' is 7"),
    (lambda meta: meta.update(comment="mine"), "'comment' was added"),
    (lambda meta: meta.pop("history"), "'history' was removed"),
    (lambda meta: meta["vocab"]["idx_to_token"].reverse(), "'vocab.idx_to_token' is a list, not what was saved"),
])
def test_edited_manifest_refused_naming_the_field(tmp_path, fn, field):
    # fastseq.json was trusted: an edited nonlinearity (now cell) loaded and shifted the logits; "batch": -5 or
    # missing optimizer moments broke the bit-for-bit resume without a word (item 4).
    m, vocab = _model()
    state = {"batch": 3, "optimizer": {"t": 2, "m": {"W_hh": np.ones((8, 8))}}}
    checkpoint.save(tmp_path, m, vocab, {"lr": 1.0}, step=3, resume=state, history={"epochs": []})
    _edit(tmp_path, fn)
    with pytest.raises(CheckpointError, match=re.escape(field)):
        checkpoint.load(tmp_path, backend="numpy", resume=True)


def test_removed_resume_arrays_named_even_when_the_manifest_is_re_signed(tmp_path):
    m, vocab = _model()
    state = {"batch": 3, "optimizer": {"t": 2, "m": {"W_hh": np.ones((8, 8))}, "v": {"W_hh": np.ones((8, 8))}}}
    checkpoint.save(tmp_path, m, vocab, {}, step=3, resume=state)
    _edit(tmp_path, lambda meta: meta["resume"]["state"]["optimizer"].pop("v"), sign=True)
    with pytest.raises(CheckpointError, match=r"'resume.state' does not refer to the arrays \['/optimizer/v/W_hh'\]"):
        checkpoint.load(tmp_path, backend="numpy", resume=True)


def test_stripped_vocabulary_hash_and_permuted_vocabulary_refused(tmp_path):
    from safetensors.numpy import save as st_save
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    meta = _meta(tmp_path)
    data = st_save({k: v for k, v in m.params.items()})                  # no fastseq.vocab_sha256
    (tmp_path / meta["weights"]["file"]).write_bytes(data)
    meta["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    itos = meta["vocab"]["idx_to_token"]
    itos[1], itos[2] = itos[2], itos[1]
    _write_meta(tmp_path, meta, sign=True)
    with pytest.raises(CheckpointError, match="does not record the sha256 of its vocabulary"):
        checkpoint.load(tmp_path, backend="numpy")


@pytest.mark.parametrize("key, value, words", [
    ("cell", 5, "'model.config.cell' is 5, expected a string"),
    ("cell", "rnn", "'model.config.cell' is 'rnn', expected one of 'rnn_tanh', 'rnn_relu', 'gru', 'lstm'"),
    ("num_layers", 0, "'model.config.num_layers' is 0, expected an integer >= 1"),
    ("num_layers", 10 ** 9, "'model.config.num_layers' is 1000000000, expected an integer in [1, 5]"),
    ("dropout", 1.0, "'model.config.dropout' is 1.0, expected a number in [0, 1)"),
    ("dropout", True, "'model.config.dropout' is True, expected a number in [0, 1)"),
    ("dtype", "int8", "'model.config.dtype' is 'int8', expected 'float32' or 'float64'"),
    ("num_hiddens", -3, "'model.config.num_hiddens' is -3, expected an integer >= 1"),
    ("vocab_size", [1], "'model.config.vocab_size' is a list"),
])
def test_schema_of_a_re_signed_manifest_names_the_field(tmp_path, key, value, words):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    _edit(tmp_path, lambda meta: meta["model"]["config"].update({key: value}), sign=True)
    with pytest.raises(CheckpointError, match=re.escape(words)):
        checkpoint.load(tmp_path, backend="numpy")


def test_resume_state_checked_by_the_engine_becomes_a_checkpoint_error(tmp_path):
    from fastseq.errors import ArgumentError
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {}, step=3, resume={"batch": 3})
    seen = []

    def engine_check(state):   # stands for Trainer.load_state_dict, which names the field it refuses
        seen.append(state)
        raise ArgumentError("batch: expected an integer in [0, 2], got 3")

    with pytest.raises(CheckpointError, match=r"fastseq.json: the resume state is not valid: batch: expected"):
        checkpoint.load(tmp_path, backend="numpy", resume=True, check_resume=engine_check)
    assert seen == [{"batch": 3}]


@pytest.mark.parametrize("hidden", [3000, 40000])
def test_edited_size_refused_before_a_model_is_allocated(tmp_path, monkeypatch, hidden):
    # num_hiddens edited to 12000 cost 1.7 GB and 6 s before the refusal; ~40000 exhausted the machine (item 5).
    import tracemalloc
    from checkpoint_v1 import save_v1
    m, vocab = _model()
    (tmp_path / "v2").mkdir()
    checkpoint.save(tmp_path / "v2", m, vocab, {})
    save_v1(tmp_path / "v1", m, vocab, {})
    built = []
    monkeypatch.setattr(checkpoint, "_from_config", lambda *a, **k: built.append(a) or pytest.fail("model built"))
    for folder in ("v1", "v2"):
        _edit(tmp_path / folder, lambda meta: meta["model"]["config"].update(num_hiddens=hidden), sign=True)
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointError, match=rf"tensor W_hh has shape \(8, 8\), the model expects "
                                                      rf"\({hidden}, {hidden}\)"):
                checkpoint.load(tmp_path / folder, backend="numpy")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, peak   # the model itself: 72 MB at H=3000, 12.8 GB at H=40000
    assert built == []


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["folder", "fifo", "dev-zero"])
@pytest.mark.parametrize("which", ["manifest", "weights"])
def test_paths_that_are_not_regular_files_refused(tmp_path, no_hang, kind, which):
    # /dev/zero as fastseq.json or weights grew memory until the process died; a FIFO blocked forever;
    # a folder raised IsADirectoryError (items 10, 11).
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    target = tmp_path / (checkpoint.META_FILE if which == "manifest" else _meta(tmp_path)["weights"]["file"])
    target.unlink()
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        _fifo(target)
    else:
        target.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match=r"is a folder|is not a regular file"):
        checkpoint.load(tmp_path, backend="numpy")


def test_oversized_manifest_refused_before_reading(tmp_path, monkeypatch):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    size = (tmp_path / checkpoint.META_FILE).stat().st_size
    monkeypatch.setattr(checkpoint, "MAX_MANIFEST_BYTES", size - 1)
    with pytest.raises(CheckpointError, match=f"{size:,} bytes, more than the {size - 1:,}"):
        checkpoint.load(tmp_path, backend="numpy")
    with pytest.raises(CheckpointError, match="more than the"):
        checkpoint.save(tmp_path, m, vocab, {})
    monkeypatch.undo()
    assert checkpoint.load(tmp_path, backend="numpy").step == 0   # the refused save changed nothing


def test_deeply_nested_manifest_is_a_checkpoint_error(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    for depth in (100, 100_000):
        text = (tmp_path / checkpoint.META_FILE).read_text()
        (tmp_path / checkpoint.META_FILE).write_text(text[:-2] + ', "x": ' + "[" * depth + "]" * depth + "}")
        with pytest.raises(CheckpointError, match="nested"):
            checkpoint.load(tmp_path, backend="numpy")
        checkpoint.save(tmp_path, m, vocab, {})


def test_a_file_inside_the_checkpoint_names_its_folder(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {}, step=2)
    weights = tmp_path / _meta(tmp_path)["weights"]["file"]
    assert checkpoint.load(weights, backend="numpy").step == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        checkpoint.load(tmp_path / "other" / "x.bin")


def test_errors_belong_to_the_one_hierarchy():
    from fastseq.datasets import DatasetError
    from fastseq.errors import FastseqError
    assert issubclass(CheckpointError, FastseqError) and issubclass(DatasetError, FastseqError)


def test_integrity_record_is_the_sha256_of_canonical_json():
    # Pins the format: another implementation (or a user's script) can recompute the record.
    meta = {"step": 3, "hparams": {"lr": 0.5, "bptt": "full"}, "history": None}
    rec = checkpoint._integrity(meta)

    def sha(v):
        return hashlib.sha256(json.dumps(v, sort_keys=True, ensure_ascii=False,
                                         separators=(",", ":")).encode("utf-8")).hexdigest()
    assert rec == {"step": sha(3), "history": sha(None),
                   "hparams": {"sha256": sha(meta["hparams"]), "fields": {"lr": sha(0.5), "bptt": sha("full")}}}


@pytest.mark.parametrize("config", [
    dict(vocab_size=1, num_hiddens=1, cell="rnn_tanh", num_layers=1, dropout=0.0, dtype="float32"),
    dict(vocab_size=7, num_hiddens=3, cell="rnn_relu", num_layers=2, dropout=0.0, dtype="float64"),
    dict(vocab_size=7, num_hiddens=3, cell="gru", num_layers=3, dropout=0.5, dtype="float64"),
    dict(vocab_size=5, num_hiddens=4, cell="lstm", num_layers=2, dropout=0.1, dtype="float32")])
def test_shapes_checked_before_building_are_the_models(config):
    from fastseq.rnn import RNNLM as FastRNNLM
    model = FastRNNLM.from_config(config, "numpy")
    assert checkpoint._param_shapes(config) == {k: v.shape for k, v in model.params.items()}
    old = dict(vocab_size=7, num_hiddens=3, nonlinearity="relu", dtype="float64")    # format 2's config
    model = FastRNNLM.from_config(old, "numpy")
    assert checkpoint._param_shapes(old, 2) == {k: v.shape for k, v in model.params.items()}


def test_unknown_backend_is_a_checkpoint_error(tmp_path):
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {})
    with pytest.raises(CheckpointError, match="backend"):
        checkpoint.load(tmp_path, backend="gpu")


def test_a_full_disk_is_a_checkpoint_error_and_keeps_the_previous(tmp_path, monkeypatch):
    import errno
    m, vocab = _model()
    checkpoint.save(tmp_path, m, vocab, {"v": 1}, step=1)
    real_write = os.write

    def full(fd, data):
        if len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(CheckpointError, match="No space left on device.*is unchanged"):
        checkpoint.save(tmp_path, m, vocab, {"v": 2}, step=2)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path).hparams == {"v": 1}
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="cannot be written"):
        checkpoint.save(tmp_path / "file", m, vocab, {})
