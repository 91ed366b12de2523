"""
Sampling one token per row, generate.draw (inverse CDF) beside torch.multinomial, in one run: the
step alone, and a whole sampled rollout of the tiny world's model (generate at temperature 0.7,
as stage 2 samples), once with each.

Why: on a CPU, torch.multinomial over a 1024-token vocabulary took about a fifth of a tiny-world
rollout; draw needs one random number per row. Both give the same distribution (tests/test_model.py
checks draw's); the sampled tokens differ, as any two random streams do.

Random weights at the `tiny` preset's shape (tiny_world.py), no stop rule, so every row
generates --new-tokens tokens. Check `uptime` first: on 2 cores a second busy process doubles
every figure.

    python benchmarks/sampling.py                      # 128 rows, 60-token prompts, 64 new tokens
    python benchmarks/sampling.py --rows 64 --vocab 151936
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
import generate as generate_module  # noqa: E402
import tiny_world  # noqa: E402
from generate import draw, generate  # noqa: E402
from model import Qwen2, Qwen2Config  # noqa: E402


def multinomial(weights, generator=None):
    """The reference: what sample_next called before draw."""
    return torch.multinomial(weights, 1, generator=generator)[:, 0]


def best_of(rounds: int, fn) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=128, help="batch rows (stage 3 mines 128 at once in the tiny run)")
    parser.add_argument("--vocab", type=int, default=1024, help="vocabulary of the sampling step alone")
    parser.add_argument("--prompt-len", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the best of this many")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads", flush=True)
    g = torch.Generator().manual_seed(0)

    probs = torch.softmax(torch.randn(args.rows, args.vocab, generator=g) * 3, dim=-1)
    ours = best_of(args.rounds, lambda: [draw(probs, g) for _ in range(50)]) / 50
    ref = best_of(args.rounds, lambda: [multinomial(probs, g) for _ in range(50)]) / 50
    print(f"one token per row, {args.rows} x {args.vocab}: draw {ours * 1e3:.2f} ms, "
          f"torch.multinomial {ref * 1e3:.2f} ms ({ref / ours:.1f}x)", flush=True)

    preset = tiny_world.PRESETS["tiny"]
    model = Qwen2(Qwen2Config.from_dict(tiny_world.model_config(preset, preset.vocab_size, 1))).init_weights(0).eval()
    prompts = torch.randint(2, preset.vocab_size, (args.rows, args.prompt_len), generator=g).tolist()

    def rollout():
        generate(model, prompts, args.new_tokens, temperature=0.7, eos_token_ids=[], seed=0)

    rollout()  # warm-up
    seconds = {}
    for name, sampler in (("draw", draw), ("multinomial", multinomial)):
        generate_module.draw = sampler  # sample_next looks the name up at call time
        seconds[name] = best_of(args.rounds, rollout)
    generate_module.draw = draw
    tokens = args.rows * args.new_tokens
    print(f"rollout, tiny preset, {args.rows} rows x {args.new_tokens} new tokens at T=0.7: "
          f"draw {tokens / seconds['draw']:.0f} tok/s, torch.multinomial {tokens / seconds['multinomial']:.0f} tok/s "
          f"({seconds['multinomial'] / seconds['draw']:.2f}x)")


if __name__ == "__main__":
    cli.run(main)
