"""
The tiny world's pre-training step (tiny_world.pretrain_base) as it runs now, beside the step as
it ran before fd66954, in one run. Now: right-padded rows and no mask, so causal attention alone,
and `model.attention` runs SDPA in float32 under bf16 autocast. Before: the padding mask every
other caller passes, and SDPA left to autocast, which runs it in bf16 (the reference swaps in that
plain SDPA call for `model.attention`). The fp32 rows (no autocast) compare only the mask: there
the two steps differ by it alone.

Why: under bf16 autocast, PyTorch's CPU attention kernel gets bf16 inputs, and there its backward
is several times slower than in float32; attention was about 40% of the step. The base's
pre-training is most of the tiny world's build, and the build most of `bash curriculum.sh tiny`'s
15 minutes.

Random weights and tokens at the `tiny` preset's shape, rows of --length tokens with the
padding of a length-bucketed batch (each row 0-31 tokens shorter), loss on every real token,
AdamW as in pretrain_base. Check `uptime` first: on 2 cores a second busy process doubles every
figure.

    python benchmarks/pretrain_step.py                   # bf16 autocast where the CPU has it, and fp32
    python benchmarks/pretrain_step.py --preset test --steps 20
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
import model as model_module  # noqa: E402
import tiny_world  # noqa: E402
from model import Qwen2, Qwen2Config  # noqa: E402


def main():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(tiny_world.PRESETS))
    parser.add_argument("--length", type=int, default=180, help="longest row of a batch (the tiny world's are 90-230 tokens)")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per figure, after 3 warm-up steps")
    parser.add_argument("--rounds", type=int, default=2, help="each figure is the best of this many")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    preset = tiny_world.PRESETS[args.preset]
    has_bf16 = tiny_world.cpu_has_bf16()
    print(f"torch {torch.__version__}, {args.threads} threads, preset {args.preset} "
          f"({preset.layers} x {preset.hidden}), batch {preset.batch_size} x {args.length} tokens, "
          f"bf16 matmuls on this CPU: {has_bf16}", flush=True)

    config = Qwen2Config.from_dict(tiny_world.model_config(preset, preset.vocab_size, 0))
    g = torch.Generator().manual_seed(0)
    B, T = preset.batch_size, args.length
    ids = torch.randint(1, preset.vocab_size, (B, T), generator=g)
    lengths = T - torch.randint(0, 32, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]
    targets = ids.roll(-1, dims=1).masked_fill(~mask, -100)

    def plain_sdpa(q, k, v, mask):
        """model.attention before fd66954: SDPA as autocast runs it (bf16 under bf16 autocast)."""
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)

    def seconds_per_step(with_mask: bool, bf16: bool, before: bool = False) -> float:
        model_module.attention = plain_sdpa if before else float32_attention
        model = Qwen2(config).init_weights(0).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(ids, attention_mask=mask) if with_mask else model(ids)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(3):
            step()
        best = float("inf")
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            best = min(best, (time.perf_counter() - start) / args.steps)
        return best

    float32_attention = model_module.attention  # Attention.forward looks the name up at call time
    for bf16 in ([True, False] if has_bf16 else [False]):
        ours = seconds_per_step(with_mask=False, bf16=bf16)
        reference = seconds_per_step(with_mask=True, bf16=bf16, before=True)
        model_module.attention = float32_attention
        dtype = "bf16 autocast" if bf16 else "fp32"
        print(f"{dtype}: now (no mask, model.attention) {ours:.3f} s/step, before fd66954 (the padding mask, "
              f"SDPA as autocast runs it) {reference:.3f} s/step "
              f"({reference / ours:.2f}x); {preset.base_steps} steps: {ours * preset.base_steps:.0f} s "
              f"against {reference * preset.base_steps:.0f} s", flush=True)


if __name__ == "__main__":
    main()
