"""
LoRA, low-rank adapters: W x + (alpha / r) * B(A(dropout(x))), with W frozen.

The authors trained stage 1 this way (r=16, alpha=32, dropout 0.05 on q/k/v/o); `--lora-rank`
offers it in every stage. Adapters wrap the attention projections of a `model.Qwen2` in place;
`merged_state_dict` folds B @ A back into W; it is what the checkpoints hand `model.save_pretrained`
to write, so a saved checkpoint is a plain Qwen2.5 any loader reads. Kept out of model.py so that the network
reads on its own (peft keeps its adapters apart from transformers' models the same way).
"""
from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        # The adapters are float32 whatever the frozen base is: AdamW's steps (about lr per entry,
        # 5e-5) are far below half a bf16 ulp of an entry of A (2^-9 |a|, ~1e-4 at |a| = 0.05),
        # so bf16 adapters lose most updates (docs/performance.md). The forward casts them to the
        # input's dtype (or autocast does).
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=torch.float32))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # B = 0, so training starts at W
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.enabled = True

    @property
    def weight(self):
        return self.base.weight

    def forward(self, x):
        out = self.base(x)
        if self.enabled:
            # cast at use: gradients reach the float32 adapters through the cast; no-op in float32
            delta = F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scale
            out = out + delta.to(out.dtype)
        return out

    def merged_weight(self):
        """W + (alpha / r) B A in float32: in bf16 the sum would round every entry to the nearest
        bf16 value, dropping each update smaller than half an ulp of W (see merged_state_dict)."""
        return self.base.weight.float() + (self.lora_B.float() @ self.lora_A.float()) * self.scale


def add_lora(model: nn.Module, rank: int = 16, alpha: float = 32.0, dropout: float = 0.05,
             targets: Sequence[str] = LORA_TARGETS) -> nn.Module:
    """Freeze every weight and wrap the target projections with trainable adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        for name in targets:
            setattr(layer.self_attn, name, LoRALinear(getattr(layer.self_attn, name), rank, alpha, dropout))
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def refuse_16bit_full_finetuning(dtype, lora_rank: int) -> None:
    """Trained weights must be float32. There is no float32 master copy here, so full fine-tuning
    with bf16 weights would let AdamW round its steps away: half a bf16 ulp is 2^-9 to 2^-8 of
    a weight (6e-5 at |w| = 0.02), above nearly every step at lr 1e-5. LoRA is fine (its
    adapters are float32 on any base), and so are float32 weights under bf16 autocast."""
    if str(dtype).removeprefix("torch.") in ("bfloat16", "float16") and not lora_rank:  # a name or a torch.dtype
        raise SystemExit(f"--dtype {dtype} with full fine-tuning would lose most AdamW updates to "
                         f"{dtype} rounding: use --dtype float32 (on a GPU the forward passes still run "
                         f"under bf16 autocast) or train LoRA adapters (--lora-rank), which are float32")


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """The base model without adapters, e.g. as the frozen GRPO reference with no second copy."""
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in adapters:
        m.enabled = False
    try:
        yield model
    finally:
        for m in adapters:
            m.enabled = True


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain Hugging Face state dict, with each adapter folded into its weight.

    With adapters on a bf16 (or fp16) base the whole dict is float32, so a saved checkpoint
    keeps the trained update exactly: rounding W + BA back to bf16 moves each entry to the
    nearest bf16 value, which drops every update below half an ulp of W and quantises the rest
    (docs/performance.md). So the merged file is float32, twice bf16's size; stages 2-3 train
    in float32 anyway."""
    state = {}
    for name, tensor in model.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base.", ".")] = tensor
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.weight"] = module.merged_weight().detach()
    if has_lora(model) and model.dtype != torch.float32:
        state = {k: v.float() for k, v in state.items()}
    return state
