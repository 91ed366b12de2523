"""
The tiny world's pre-training over many steps, with batch widths as a build draws them (any
width from 90 to 230 tokens) beside the same batches rounded up to a multiple of 16 tokens, as
`tiny_world.pretrain_base` runs them now. Each side runs in its own process, so each reports its
own peak memory.

Why: a build's step got slower as pre-training went on (0.32 s a step over the first 100 steps,
0.55 s over the last 100 in one 700-step build) and the process grew to ~5 GB for a 1.8M-parameter
model, while a fixed-shape step (benchmarks/pretrain_step.py) stayed flat. With few distinct
widths neither happens. We take the cause to be the state that oneDNN, which runs the bf16 matrix
products under autocast, keeps for every shape it meets; the benchmark shows the effect, not the
mechanism.

Random weights and tokens at the `tiny` preset's shape, 32 rows a step, each row 0-31 tokens
shorter than the batch's widest, loss on every real token, AdamW as in pretrain_base, bf16 autocast
where the CPU has bf16 matrix products (fp32 elsewhere). Check `uptime` first: on 2 cores a second
busy process doubles every figure.

    python benchmarks/pretrain_widths.py                 # 300 steps a side, ~4 minutes
    python benchmarks/pretrain_widths.py --steps 60 --preset test
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
import tiny_world  # noqa: E402
from model import Qwen2, Qwen2Config  # noqa: E402


def run_side(preset_name: str, steps: int, round_to: int, threads: int) -> dict:
    """Pre-train random weights for `steps` steps; widths drawn from 90-230 tokens, rounded up to
    a multiple of `round_to` (1: as drawn). Returns seconds and peak RSS."""
    torch.set_num_threads(threads)
    preset = tiny_world.PRESETS[preset_name]
    config = Qwen2Config.from_dict(tiny_world.model_config(preset, preset.vocab_size, 0))
    model = Qwen2(config).init_weights(0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    bf16 = tiny_world.cpu_has_bf16()
    # both sides get batches of the same lengths (drawn first, from their own stream); the tokens
    # are random either way
    shapes, tokens = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    longest_of_step = torch.randint(90, 231, (steps,), generator=shapes).tolist()
    shorter_by = torch.randint(0, 32, (steps, preset.batch_size), generator=shapes)
    seconds = []
    for step, longest in enumerate(longest_of_step):
        width = tiny_world.round_up(longest, round_to)  # as pretrain_base rounds
        ids = torch.randint(1, preset.vocab_size, (preset.batch_size, width), generator=tokens)
        lengths = longest - shorter_by[step]
        real = torch.arange(width)[None, :] < lengths[:, None]
        targets = ids.roll(-1, dims=1).masked_fill(~real, -100)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids)  # right padding: causal attention alone, as in pretrain_base
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    tenth = max(1, steps // 10)
    return {"seconds": sum(seconds), "first": sum(seconds[:tenth]) / tenth, "last": sum(seconds[-tenth:]) / tenth,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "bf16": bf16}


def main():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(tiny_world.PRESETS))
    parser.add_argument("--steps", type=int, default=300, help="pre-training steps per side")
    parser.add_argument("--round-to", type=int, default=tiny_world.PAD_WIDTH_TO,
                        help="the rounded side's width multiple (tiny_world.PAD_WIDTH_TO)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one side, print JSON
    args = parser.parse_args()
    if args.side is not None:
        print(json.dumps(run_side(args.preset, args.steps, args.side, args.threads)))
        return

    print(f"torch {torch.__version__}, {args.threads} threads, preset {args.preset}, {args.steps} steps a side, "
          f"widths 90-230 tokens, bf16 matmuls on this CPU: {tiny_world.cpu_has_bf16()}", flush=True)
    results = {}
    for name, round_to in (("rounded", args.round_to), ("as drawn", 1)):
        command = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps),
                   "--threads", str(args.threads), "--side", str(round_to)]
        results[name] = r = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{name:>8} (multiple of {round_to}): {r['seconds']:.1f} s, {r['first']:.3f} s/step over the first "
              f"tenth, {r['last']:.3f} over the last; peak RSS {r['peak_rss_gb']:.2f} GB", flush=True)
    ours, reference = results["rounded"], results["as drawn"]
    print(f"rounded is {reference['seconds'] / ours['seconds']:.2f}x faster than as drawn; peak RSS "
          f"{ours['peak_rss_gb']:.2f} GB against {reference['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
