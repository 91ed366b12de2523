"""
Data parallelism for the stage scripts, written out instead of hidden in a framework.

Under `torchrun --nproc_per_node N stageX.py ...` every process holds a full copy of the model,
works on its own share of the examples (rollouts, batches), and after each backward pass the
gradients are averaged across processes, so every copy takes the same optimizer step and the
copies stay identical. Only rank 0 writes checkpoints, metrics and progress bars. Run as a plain
`python stageX.py`, world_size is 1 and every helper below does nothing, so the scripts behave
exactly as before.

    torchrun --nproc_per_node 2 stage2_grpo.py --model runs/tiny/stage1 ...   # CPU: gloo backend
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence):
        """This process's share: items rank, rank + world_size, ... (every process gets a turn)."""
        return items[self.rank::self.world_size]

    def average_gradients(self, model: torch.nn.Module):
        """Mean of each gradient over processes, in one flat all-reduce (one message, not one per tensor)."""
        if not self.enabled:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a few numbers over processes (for metrics)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every process's object, in rank order (small Python objects only)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        if self.enabled and dist.is_initialized():
            # every process reaches this point before any tears down its connections: a rank
            # that leaves first can otherwise abort another's teardown in gloo ("terminate
            # called without an active exception")
            dist.barrier()
            dist.destroy_process_group()


def setup(device: str | None = None) -> Dist:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group:
    NCCL on GPUs (one per process), gloo on CPU. Without torchrun: a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)
