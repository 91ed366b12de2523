"""
Generation speed: our `generate.generate` beside transformers' `generate`, on identical weights.

Random weights at the official Qwen2.5-0.5B shape (no download), a 100-token prompt, 64 sampled
new tokens (temperature 1, no top-k/top-p truncation, EOS disabled so every row runs the full
length), for each batch size and dtype. Prints new tokens per second for each implementation and
the ratio, and the ceiling: the call's matrix products (generate_matmul_flops) at the rate of one
large matrix product on this machine (matmul_peak), which no implementation passes. Not a test:
the figures depend on the machine.

    python benchmarks/generation.py                                  # CPU, fp32 and bf16, B = 8 and 32
    python benchmarks/generation.py --device cuda --dtypes bfloat16 --batch-sizes 8 32 128
    python benchmarks/generation.py --compile --no-transformers   # ours eager and with --compile
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from generate import compile_decode, generate  # noqa: E402
from model import Qwen2, Qwen2Config  # noqa: E402


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def random_prompts(batch: int, vocab: int, length: int) -> list[list[int]]:
    """The benchmark's prompts: random token ids, the same for a given batch size."""
    g = torch.Generator().manual_seed(batch)
    return torch.randint(0, vocab, (batch, length), generator=g).tolist()


def generate_matmul_flops(config: Qwen2Config, batch: int, prompt_len: int, new_tokens: int) -> float:
    """FLOPs (2 per multiply-add) of the matrix products a generate call must do, whoever wrote
    it: the prefill of batch x prompt_len tokens with the LM head at the last position only, then
    new_tokens - 1 decode steps of one token per row through every layer and the LM head, and
    attention's two products (q.k, then weights.v) over the context so far."""
    c = config
    kv = c.num_key_value_heads * c.head_dim
    layers = c.num_hidden_layers * 2 * c.hidden_size * (2 * c.hidden_size + 2 * kv + 3 * c.intermediate_size)
    head = 2 * c.hidden_size * c.vocab_size

    def attention(context: int) -> int:  # one token attending to `context` positions
        return c.num_hidden_layers * 2 * 2 * context * c.num_attention_heads * c.head_dim

    prefill = prompt_len * layers + head + sum(attention(p + 1) for p in range(prompt_len))
    decode = sum(layers + head + attention(prompt_len + t + 1) for t in range(1, new_tokens))
    return batch * (prefill + decode)


def matmul_peak(dtype: str, device, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of one large square matrix product in `dtype` on this machine, the best of `reps`:
    the rate no implementation's matrix products beat, so it caps every generate."""
    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype), device=device) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def time_ours(model, prompts, new_tokens, device):
    sync(device)
    start = time.perf_counter()
    out = generate(model, prompts, new_tokens, temperature=1.0, top_p=1.0, eos_token_ids=[], seed=0)
    sync(device)
    assert all(len(t) == new_tokens for t in out.tokens)
    return time.perf_counter() - start


def time_warm(model, prompts, new_tokens, device) -> tuple[float, float]:
    """(seconds of a short first call, seconds of the timed call) on the same prompts. With
    compile_decode the first call compiles, and so does the first change of batch size: warming
    up on the timed batch keeps both compiles out of the timed call."""
    start = time.perf_counter()
    time_ours(model, prompts, 4, device)
    return time.perf_counter() - start, time_ours(model, prompts, new_tokens, device)


def time_transformers(model, prompts, new_tokens, device):
    ids = torch.tensor(prompts, device=device)
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             eos_token_id=None, pad_token_id=0)
    sync(device)
    assert out.shape[1] == ids.shape[1] + new_tokens
    return time.perf_counter() - start


def main():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT.parent / "shared" / "configs" / "qwen2.5-0.5b.json"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prompt-len", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-transformers", action="store_true", help="time our generate only")
    parser.add_argument("--compile", action="store_true",
                        help="also time ours with generate.compile_decode (the --compile option); "
                             "the first call's compile time is printed apart")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"prompt {args.prompt_len} tokens, {args.new_tokens} new tokens")
    config = Qwen2Config.from_json(args.config)
    ours = Qwen2(config).init_weights(seed=0)
    folder = Path(tempfile.mkdtemp(prefix="bench-gen-"))  # ~2 GB at the 0.5B shape: removed at the end
    try:
        ours.save_pretrained(folder / "ckpt")  # so transformers loads exactly these weights
        del ours
        rows = []
        for dtype in args.dtypes:
            peak = matmul_peak(dtype, args.device)
            print(f"{dtype:9s} matrix product 2048^3: {peak / 1e9:.1f} GFLOP/s", flush=True)
            ours = Qwen2.from_pretrained(folder / "ckpt", dtype=dtype, device=args.device)
            ref = None
            if not args.no_transformers:
                import transformers
                ref = transformers.AutoModelForCausalLM.from_pretrained(
                    folder / "ckpt", dtype=getattr(torch, dtype)).to(args.device).eval()
            for batch in args.batch_sizes:
                prompts = random_prompts(batch, config.vocab_size, args.prompt_len)
                time_ours(ours, prompts[:2], 4, args.device)  # warm-up
                t_ours = time_ours(ours, prompts, args.new_tokens, args.device)
                t_ref = None
                if ref is not None:
                    time_transformers(ref, prompts[:2], 4, args.device)
                    t_ref = time_transformers(ref, prompts, args.new_tokens, args.device)
                tokens = batch * args.new_tokens
                # the ceiling: this call's matrix products alone, at the measured peak rate
                ceiling = tokens / (generate_matmul_flops(config, batch, args.prompt_len, args.new_tokens) / peak)
                rows.append((dtype, batch, tokens / t_ours, tokens / t_ref if t_ref else None, ceiling))
                ours_s, ref_s = rows[-1][2], rows[-1][3]
                print(f"{dtype:9s} B={batch:<4d} ours {ours_s:8.1f} tok/s"
                      + (f"   transformers {ref_s:8.1f} tok/s   ratio {ours_s / ref_s:5.2f}x" if ref_s else "")
                      + f"   ceiling {ceiling:8.1f} tok/s (ours at {ours_s / ceiling:.0%})", flush=True)
            if args.compile:
                compiled = compile_decode(Qwen2.from_pretrained(folder / "ckpt", dtype=dtype, device=args.device))
                for batch in args.batch_sizes:
                    prompts = random_prompts(batch, config.vocab_size, args.prompt_len)
                    first, seconds = time_warm(compiled, prompts, args.new_tokens, args.device)
                    print(f"{dtype:9s} B={batch:<4d} compile_decode: first call {first:.1f} s", flush=True)
                    speed = batch * args.new_tokens / seconds
                    eager = next(r[2] for r in rows if r[:2] == (dtype, batch))
                    print(f"{dtype:9s} B={batch:<4d} ours compiled {speed:8.1f} tok/s   compiled / eager {speed / eager:5.2f}x",
                          flush=True)
                del compiled
            del ours, ref
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("\n| dtype | batch | ours (tok/s) | transformers (tok/s) | ratio | ceiling (tok/s) | ours / ceiling |\n"
          "|---|---|---|---|---|---|---|")
    for dtype, batch, o, r, ceiling in rows:
        theirs = f"{r:.1f} | {o / r:.2f}x" if r else "- | -"
        print(f"| {dtype} | {batch} | {o:.1f} | {theirs} | {ceiling:.1f} | {o / ceiling:.0%} |")


if __name__ == "__main__":
    cli.run(main)
