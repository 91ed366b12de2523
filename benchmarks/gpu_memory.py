"""
GPU memory each stage needs at Qwen2.5 0.5B, 1.5B and 3B: COMPUTED from the official configs
and the stage settings `curriculum.sh Qwen/Qwen2.5-*` uses, not measured (no GPU was available
to us yet; the README labels the table so). They are the numbers to check a GPU against before
starting a run, and the formulas show which option to change when one does not fit.

The sum, in bytes (P = parameters, bf16 = 2 bytes, fp32 = 4):

    weights         P * bytes of the weight dtype (stage 1: bf16, LoRA; stages 2-3: fp32)
    trainable state full fine-tuning: fp32 gradients + AdamW's two fp32 moments = 12 * P;
                    LoRA: 16 bytes per adapter parameter (fp32 weight, gradient, two moments)
    reference       stages 2-3 with full fine-tuning: a frozen copy of the policy (P * 4)
    KV cache        rollout rows * (prompt + new tokens) * 2 (k, v) * layers * kv_heads * head_dim
                    * bytes of the weight dtype (the cache is allocated in the model's dtype)
    activations     saved for backward under bf16 autocast, per token and layer:
                    20*h + 6*kv + 8*i bytes (h = hidden, i = MLP width, kv = kv_heads*head_dim:
                    the fp32 inputs of both RMSNorms, the bf16 inputs of q/k/v, o, gate/up and
                    down, rotated q and k, SDPA's q, k, v and output, SiLU's input and the two
                    factors of the gated product); with gradient checkpointing only each
                    layer's fp32 input (4*h) is kept, plus one layer's full set while recomputing
    logits          only the scored positions go through the LM head: tokens * vocab * 4 bytes
                    (fp32) times 3 (logits, their softmax for log-sum-exp's backward, the gradient)

Not counted: the CUDA context (~0.5 GB), allocator fragmentation (often 10-20%), the rollout's
own forward activations (no gradients: one layer at a time, small). Add ~20% headroom.

    python benchmarks/gpu_memory.py
    python benchmarks/gpu_memory.py --stage1-tokens 1024 --micro-batch-size 4 --gradient-checkpointing
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

SHARED = ROOT.parent / "shared" / "configs"
GB = 1024 ** 3


def parameter_count(c: dict) -> int:
    """model.py's Qwen2 built on the meta device (no memory): the architecture is known in one place."""
    import torch
    from model import Qwen2, Qwen2Config
    with torch.device("meta"):
        return Qwen2(Qwen2Config.from_dict(c)).num_parameters()


def kv_width(c: dict) -> int:
    """Width of the key (or value) projection: kv_heads * head_dim."""
    return c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])


def activation_bytes_per_token(c: dict, checkpointing: bool) -> float:
    h, i, layers, kv = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], kv_width(c)
    full_layer = 20 * h + 6 * kv + 8 * i
    return layers * 4 * h + full_layer if checkpointing else layers * full_layer


def lora_parameters(c: dict, rank: int) -> int:
    """rank * (in + out) for q, k, v and o in every layer."""
    h, kv = c["hidden_size"], kv_width(c)
    return c["num_hidden_layers"] * rank * ((h + h) + 2 * (h + kv) + (h + h))


def kv_cache_bytes(c: dict, rows: int, length: int, dtype_bytes: int) -> int:
    return rows * length * 2 * c["num_hidden_layers"] * kv_width(c) * dtype_bytes


def stage_rows(c: dict, args) -> list[tuple[str, dict]]:
    P = parameter_count(c)
    out = []
    # stage 1: LoRA r=16 on bf16 weights, batch-size examples of stage1-tokens per forward
    tokens1 = args.stage1_batch_size * args.stage1_tokens
    out.append(("stage 1 (LoRA r=16, bf16 weights)", {
        "weights": 2 * P, "trainable state": 16 * lora_parameters(c, 16), "reference": 0, "KV cache": 0,
        "activations": tokens1 * activation_bytes_per_token(c, args.gradient_checkpointing),
        "logits": 3 * args.stage1_batch_size * args.stage1_target_tokens * c["vocab_size"] * 4}))
    # stages 2 and 3: full fine-tuning in fp32 with a frozen fp32 reference; a rollout of
    # prompts-per-step * G rows; training micro-batches of completions
    for name, prompt, new in (("stage 2 (GRPO, full FT, fp32 + bf16 autocast)", args.stage2_prompt_tokens, 256),
                              ("stage 3 (GRPO, full FT, fp32 + bf16 autocast)", args.stage3_prompt_tokens, 512)):
        rows = args.prompts_per_step * args.group_size
        micro_tokens = args.micro_batch_size * (prompt + new)
        out.append((name, {
            "weights": 4 * P, "trainable state": 12 * P, "reference": 4 * P,
            "KV cache": kv_cache_bytes(c, rows, prompt + new, 4),
            "activations": micro_tokens * activation_bytes_per_token(c, args.gradient_checkpointing),
            "logits": 3 * args.micro_batch_size * new * c["vocab_size"] * 4}))
    # evaluation: bf16 weights, greedy, a batch of 64 with 512 new tokens
    out.append(("eval.py (bf16, batch 64)", {
        "weights": 2 * P, "trainable state": 0, "reference": 0,
        "KV cache": kv_cache_bytes(c, 64, 200 + 512, 2), "activations": 0,
        "logits": 64 * c["vocab_size"] * 4}))
    return out


def main():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b"],
                        help="config names in ../shared/configs (or paths to config.json files)")
    parser.add_argument("--stage1-batch-size", type=int, default=4, help="stage 1 --batch-size (examples per forward)")
    parser.add_argument("--stage1-tokens", type=int, default=512, help="padded prompt + target tokens per stage-1 example "
                        "(GSM8K's own rationales; a long R1 teacher needs up to --max-length 2048)")
    parser.add_argument("--stage1-target-tokens", type=int, default=200, help="target tokens per stage-1 example")
    parser.add_argument("--stage2-prompt-tokens", type=int, default=300, help="masked prompt tokens")
    parser.add_argument("--stage3-prompt-tokens", type=int, default=450, help="rewriting prompt tokens")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=2, help="G (the authors' setting)")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="completions per forward/backward")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    print("COMPUTED estimates (not measured), GB; see this file's docstring for the formulas")
    print(f"gradient checkpointing: {'on' if args.gradient_checkpointing else 'off'}\n")
    names = None
    for model in args.models:
        path = Path(model) if Path(model).is_file() else SHARED / f"{model}.json"
        config = json.loads(path.read_text())
        rows = stage_rows(config, args)
        if names is None:
            names = list(rows[0][1])
            print("| model | stage | " + " | ".join(names) + " | total |")
            print("|---" * (len(names) + 3) + "|")
        for stage, parts in rows:
            cells = " | ".join(f"{parts[k] / GB:.1f}" for k in names)
            print(f"| {path.stem} ({parameter_count(config) / 1e9:.2f}B) | {stage} | {cells} | "
                  f"**{sum(parts.values()) / GB:.1f}** |")


if __name__ == "__main__":
    cli.run(main)
