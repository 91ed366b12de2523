"""
Stage-1 training throughput: our Qwen2 with stage 1's loss and optimiser beside transformers'
Qwen2ForCausalLM, on identical weights, batch, sequence length and dtype.

Why: stage 1 (supervised fine-tuning) is where most of the training tokens go, and a hand-written
model is only worth reading if it is not much slower than the library one. Random weights at the
official Qwen2.5-0.5B shape (no download). Each step is what stage1_reconstruct.py does per batch:
forward, summed cross-entropy of the target tokens, backward, gradient clipping at 1.0, AdamW
(stage 1's construction, decay on matrices only, the same for both models). transformers
computes its own loss from `labels` (the logits of every position; ours sends only the scored
positions through the LM head). Every position after the first is a target here. The first step
is warm-up and not counted. Prints trained tokens per second for both and the ratio.

    python benchmarks/sft_step.py                                      # CPU, fp32, B=2, T=128, 3 steps
    python benchmarks/sft_step.py --device cuda --dtype bfloat16 --batch-size 8 --seq-len 512 --steps 10
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402
from model import Qwen2, Qwen2Config  # noqa: E402
from run import adamw  # noqa: E402


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def ours_loss(model, ids):
    """stage1_reconstruct.target_loss with every position after the first a target."""
    hidden = model.hidden_states(ids, attention_mask=torch.ones_like(ids))
    return F.cross_entropy(model.logits(hidden[:, :-1]).flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")


def transformers_loss(model, ids):
    # transformers' loss is a token mean; times the count it is the same sum
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss * ids[:, 1:].numel()


def time_steps(model, loss_fn, batches, device, autocast: bool) -> tuple[float, float]:
    """Seconds per step over batches[1:] (batches[0] is warm-up), and the first step's token-mean
    loss (the same for both models, up to rounding: they hold the same weights)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=1e-6, weight_decay=0.01)
    times, losses = [], []
    for ids in batches:
        sync(device)
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model, ids)
        loss = loss / ids[:, 1:].numel()
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / len(times[1:]), losses[0]


def main():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT.parent / "shared" / "configs" / "qwen2.5-0.5b.json"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--dtype", default="float32", help="weight dtype; float32 trains under bf16 autocast on GPU, as stage 1")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-transformers", action="store_true", help="time our model only")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"dtype {args.dtype}, batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps", flush=True)
    config = Qwen2Config.from_json(args.config)
    folder = Path(tempfile.mkdtemp(prefix="bench-sft-"))  # removed at the end
    Qwen2(config).init_weights(seed=0).save_pretrained(folder / "ckpt")  # transformers loads these weights
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len), generator=g).to(args.device)
               for _ in range(args.steps + 1)]
    tokens = args.batch_size * args.seq_len
    autocast = torch.device(args.device).type == "cuda" and args.dtype == "float32"

    model = Qwen2.from_pretrained(folder / "ckpt", dtype=args.dtype, device=args.device)
    seconds, loss = time_steps(model, ours_loss, batches, args.device, autocast)
    print(f"ours          {tokens / seconds:8.1f} tokens/s   (first loss {loss:.4f})", flush=True)
    del model
    if not args.no_transformers:
        import transformers
        model = transformers.AutoModelForCausalLM.from_pretrained(folder / "ckpt", dtype=getattr(torch, args.dtype))
        ref_seconds, ref_loss = time_steps(model.to(args.device), transformers_loss, batches, args.device, autocast)
        print(f"transformers  {tokens / ref_seconds:8.1f} tokens/s   (first loss {ref_loss:.4f})   "
              f"ratio ours/transformers {ref_seconds / seconds:.2f}x")
    shutil.rmtree(folder)


if __name__ == "__main__":
    cli.run(main)
