"""The checkpoint layout fastseq 0.1.0 wrote (format 1), frozen here so a test can make one after the format moved on.

Byte-for-byte what fastseq.checkpoint.save wrote at commit f689617 (checked when this file was made).
"""
import hashlib, json, os
import numpy as np
from safetensors.numpy import save as st_save


def config_v1(model):
    """The model config of formats 1 and 2 (a one-layer plain RNN: its nonlinearity, no cell)."""
    return {"vocab_size": model.vocab_size, "num_hiddens": model.num_hiddens, "nonlinearity": model.nonlinearity,
            "dtype": model.dtype.name}


def save_v1(path, model, vocab, hparams, step=0, resume=None, history=None, extra=None, version="0.1.0"):
    os.makedirs(path, exist_ok=True)
    sha = lambda b: hashlib.sha256(b).hexdigest()

    def tensor_file(stem, tensors, metadata=None):
        tensors = tensors or {"__empty__": np.zeros(0, dtype=np.float32)}
        data = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
        name = f"{stem}-{step:08d}.safetensors"
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
        return {"file": name, "sha256": sha(data),
                "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()}}

    def split(obj, arrays, where):
        if isinstance(obj, np.ndarray):
            arrays[where] = np.ascontiguousarray(obj)
            return {"__array__": where}
        if isinstance(obj, dict):
            return {k: split(v, arrays, f"{where}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [split(v, arrays, f"{where}/{i}") for i, v in enumerate(obj)]
        return obj

    vocab_sha = sha(json.dumps(list(vocab.idx_to_token), ensure_ascii=False).encode("utf-8"))
    meta = {"format": "fastseq.checkpoint", "format_version": 1, "fastseq_version": version,
            "model": {"class": "RNNLM", "config": config_v1(model)}, "vocab": vocab.to_dict(),
            "hparams": hparams, "step": step, "history": history, "extra": extra,
            "weights": tensor_file("model", {k: np.asarray(v) for k, v in model.params.items()},
                                   {"fastseq.vocab_sha256": vocab_sha}),
            "resume": None}
    if resume is not None:
        arrays = {}
        skeleton = split(resume, arrays, "")
        meta["resume"] = dict(tensor_file("resume", arrays), state=skeleton)
    with open(os.path.join(path, "fastseq.json"), "wb") as f:
        f.write(json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8"))
