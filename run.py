"""
What every stage's training run shares, kept in one place so that no stage imports another's
helpers: AdamW and its learning-rate schedule, the order in which a run visits its
examples, the autocast its forward passes run under, and the check that every process of a
torchrun ends with the same weights.

Each is a function of its arguments alone (the schedule and the data order of the step number,
the seed and the epoch), which is what lets --resume continue a run exactly with no saved iterator
or scheduler state.
"""
from __future__ import annotations

import contextlib
import hashlib
import random

import torch

from lora import merged_state_dict

# -----------------------------------------------------------------------------
# 1. AdamW and its schedule


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as stages 1-3 use it: weight decay on matrices only (not biases or norms; all LoRA
    parameters are matrices, as in the authors' trainer). fused=True updates every parameter in
    one kernel (timings in docs/performance.md). Same formula, so the weights differ from the
    per-parameter loop only by float rounding."""
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak` over the first `warmup` steps, then linear decay towards 0 at
    `total`. Steps count from 0; unlike the usual schedule, neither the first nor the last
    step gets a learning rate of 0, which would waste it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / (total - warmup + 1))


def learning_rate(cfg, step: int, total: int) -> float:
    """The learning rate of step `step` (from 0) of `total`: linear warm-up over --warmup-steps
    (or int(--warmup-ratio x total), rounded down as the authors' trainer counts it), then linear
    decay (lr_at: neither the first nor the last step gets 0) or constant. A function
    of the step alone, so --resume continues the schedule exactly. cfg: the run's options (lr,
    warmup_steps, warmup_ratio, lr_schedule)."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * total)
    if cfg.lr_schedule == "linear":
        return lr_at(step, total, warmup, cfg.lr)
    return cfg.lr * min(1.0, (step + 1) / warmup) if warmup else cfg.lr


# -----------------------------------------------------------------------------
# 2. The data order: a function of the seed and the epoch (or the step)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A fresh permutation of range(n) for every epoch, from the seed. Shuffling range(n) and
    indexing a list with it is the same permutation as shuffling the list itself (a shuffle's
    swaps depend only on the length and the draws)."""
    order = list(range(n))
    random.Random(f"{seed}:order:{epoch}").shuffle(order)
    return order


def step_examples(n_examples: int, prompts_per_step: int, step: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, example index) of the prompts of one step: a fresh shuffle every epoch, so the
    data order is a function of the step number and --resume needs no saved iterator."""
    picks = []
    for position in range(step * prompts_per_step, (step + 1) * prompts_per_step):
        epoch, offset = divmod(position, n_examples)
        order = epoch_order(n_examples, seed, epoch)
        picks.append((epoch, order[offset]))
    return picks


# -----------------------------------------------------------------------------
# 3. How the forward passes run, and the weights at the end


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def weights_checksum(model) -> str:
    """sha256 of the weights as save_pretrained writes them (LoRA merged), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(merged_state_dict(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def check_same_weights(model, dist, desc: str) -> str:
    """Under torchrun every process must end with the same weights (the one checkpoint rank 0
    wrote); a mismatch means the gradients were not averaged and the run is wrong, so say so."""
    checksum = weights_checksum(model)
    print(f"{desc} rank {dist.rank}: weights sha256 {checksum}", flush=True)
    if len(set(dist.gather(checksum))) != 1:
        raise RuntimeError(f"{desc}: the processes ended with different weights")
    return checksum
