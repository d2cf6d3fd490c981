"""fastseq.torch modules under DistributedDataParallel (gloo, 2 processes on the loopback): the gradients
DDP averages over the two halves of a batch equal one process's over the whole batch (issue 14).

The workers are this file run as a script: ``python test_torch_ddp.py RANK WORLD PORT OUT``.
"""
import os
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

V, B, T, H = 9, 8, 6, 5


def build(cls):
    """The same model (weights from manual_seed) and the same batch in every process."""
    import fastseq.torch as ft

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"emb": torch.nn.Embedding(V, 4), "rnn": getattr(ft, cls)(4, H, 2, batch_first=True),
                                 "out": torch.nn.Linear(H, V)}).double()
    ids = torch.randint(0, V, (B, T + 1))
    return model, ids


def loss_of(model, ids):
    y, _ = model["rnn"](model["emb"](ids[:, :-1]))
    logits = model["out"](y)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1))


def worker(rank, world, port, out, cls):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, ids = build(cls)
        ddp = torch.nn.parallel.DistributedDataParallel(_Whole(model))
        part = ids[rank * B // world: (rank + 1) * B // world]
        ddp(part).backward()                 # DDP's hooks average the gradients over the processes
        if rank == 0:
            torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    finally:
        dist.destroy_process_group()


class _Whole(torch.nn.Module):
    """DDP wraps a module whose forward is the loss, so the gradient hooks see every parameter."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return loss_of(self.model, ids)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cls", ["GRU", "LSTM"])
def test_ddp_gloo_two_processes_average_to_the_whole_batch_gradient(tmp_path, cls):
    port, out = free_port(), tmp_path / "grads.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), str(out), cls], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    got = torch.load(out, weights_only=True)
    model, ids = build(cls)
    loss_of(model, ids).backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    assert sorted(got) == sorted(want) and len(want) == 1 + 8 + 2
    for n in want:
        err = (got[n] - want[n]).abs().max().item()
        assert err <= 1e-12 * want[n].abs().max().item(), f"{n}: {err}"


if __name__ == "__main__":
    rank, world, port, out, cls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    worker(rank, world, port, out, cls)
