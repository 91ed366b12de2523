"""Data parallelism with real processes on CPU (gloo): distributed.Dist's helpers, and a stage
script under torchrun whose two ranks must end with identical weights."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str):
    """One process: join the group through distributed.setup (as torchrun would set it up),
    give each parameter a rank-dependent gradient, average, and save what came out."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, str(ROOT))
    import distributed
    torch.set_num_threads(1)
    ctx = distributed.setup("cpu")
    try:
        torch.manual_seed(0)  # the same model on every rank
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        frozen, no_grad = model[0].bias, model[2].bias
        frozen.requires_grad_(False)
        g = torch.Generator().manual_seed(100 + rank)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        no_grad.grad = None          # a trainable parameter that got no gradient this step
        frozen.grad = torch.full_like(frozen, float(rank + 1))  # frozen: must not be touched
        before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        ctx.average_gradients(model)
        after = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        record = {"before": before, "after": after, "no_grad_is_none": no_grad.grad is None,
                  "sum": ctx.sum([rank, 1.5]), "gather": ctx.gather({"rank": rank}),
                  "broadcast": ctx.broadcast(f"from {rank}"), "shard": ctx.shard(list(range(7))),
                  "is_main": ctx.is_main}
        torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
        ctx.barrier()
    finally:
        ctx.close()


def test_average_gradients_two_gloo_processes(tmp_path):
    world_size = 2
    # fork where the platform has it: the children inherit the imported torch instead of paying
    # seconds to import it again (spawn is torch's portable default, and the fallback)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size,
                       join=True, start_method=method)
    records = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for name in records[0]["after"]:
        if name == "0.bias":
            continue
        expected = sum(r["before"][name] for r in records) / world_size
        for r in records:
            torch.testing.assert_close(r["after"][name], expected)
        assert not torch.equal(records[0]["before"][name], records[1]["before"][name])  # the test can fail
    for rank, r in enumerate(records):
        # frozen parameters are left alone; a missing gradient stays missing
        assert torch.equal(r["after"]["0.bias"], torch.full((4,), float(rank + 1)))
        assert r["no_grad_is_none"]
        assert r["sum"] == [1.0, 3.0]
        assert r["gather"] == [{"rank": 0}, {"rank": 1}]
        assert r["broadcast"] == "from 0"
        assert r["is_main"] == (rank == 0)
    assert records[0]["shard"] + records[1]["shard"] != list(range(7))  # interleaved, not blocks
    assert sorted(records[0]["shard"] + records[1]["shard"]) == list(range(7))
