"""
Stage 1 of BRIDGE: learn the structure of the teacher's reasoning by putting it back together
(../shared/PAPER.md, "Stage 1 - masked, shuffled reconstruction").

Why this stage. A base model asked to reason writes long, loosely ordered text. Before any
reward can shape how it reasons, it has to know what a well-formed rationale looks like: steps
that build on each other, in order, ending in the answer. Here the student sees a question and
the teacher's steps shuffled, one of them (with probability 0.7) replaced by `<MASK>`, and is
trained with plain cross-entropy to write the complete rationale in order: to sort the steps it
must follow the logic from one to the next, and to fill the gap it must redo the missing
calculation. The target is the canonical form every later stage and the eval read:
"Step 1: ...\\nStep 2: ...\\nAnswer: N", then EOS (the authors' code forgot EOS, so their
student never learned to stop).

How this carries over to the evaluation, which asks the bare question with a different prompt
(eval.PROMPT_TEMPLATE): as in the authors' code, the reconstruction prompt opens with the same
`Question: <text>` line the eval prompt has, and the target is exactly the rationale the eval
wants written after it; we also end the prompt with the eval prompt's last line, `Reasoning:`
(the authors end with "the correct, complete reasoning:"), so both prompts hand over to the
answer at the same words. What transfers is the format and the habit of finishing with the
answer and EOS. `--plain-ratio R` (off by default, to stay faithful) adds R plain pairs per
reconstruction example, eval prompt -> teacher rationale, for when that transfer is too weak;
`--task plain` trains on those pairs alone: standard distillation (SFT), the baseline the paper
compares BRIDGE with (curriculum.sh's `sft` row).

The loop: examples are made afresh each epoch (a new mask and a new order, from the seed);
batches are padded, the loss is the mean cross-entropy over all target tokens of the optimizer
step (prompt tokens are never scored), gradients accumulate over micro-batches, AdamW with
linear warm-up then linear decay, gradient clipping, bf16 autocast on GPU, optional gradient
checkpointing and LoRA. Defaults are the authors' settings (LoRA r=16, alpha 32,
dropout 0.05, lr 5e-5, weight decay 0.01, 80 warm-up steps, 5 epochs, effective batch 32, max
length 2048, clip 1.0, seed 42, teacher rows 0-1999); `--lora-rank 0` trains every weight.

    python stage1_reconstruct.py --model Qwen/Qwen2.5-3B --teacher-data runs/teacher/r1.jsonl \\
        --out runs/paper/stage1
    python stage1_reconstruct.py --model runs/tiny/world/base --teacher-data runs/tiny/world/teacher.jsonl \\
        --rows 0:2000 --lora-rank 0 --batch-size 16 --grad-accum 2 --warmup-steps 5 --lr 3e-4 \\
        --out runs/tiny/stage1   # curriculum.sh tiny's stage 1 (5 epochs, the default)
    torchrun --nproc_per_node 8 stage1_reconstruct.py ... --resume   # same run, 8 GPUs, continue

Writes OUT/ (the merged final checkpoint), OUT/metrics.jsonl (one line per optimizer step) and
OUT/checkpoint-STEP/ (weights, plus optimizer and RNG state in trainer_state.safetensors and the
step and options in trainer_state.json, for --resume; see resume.py).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import cli
import distributed
import resume
import teacher
from eval import build_prompt, default_device
from cli import dropout, nonnegative_float, nonnegative_int, positive_float, positive_int, probability
from lora import add_lora, refuse_16bit_full_finetuning
from model import Qwen2
from run import adamw, epoch_order, lr_at
from tokenizer import Tokenizer, load_tokenizer

MASK = "<MASK>"  # the authors' stage-1 mask; their stage 2 writes [MASKED] (stage2_grpo.MASK), and so do we
INSTRUCTION = ("The steps below are out of order, and one of them may be missing (shown as {mask}). "
               "Write out the complete reasoning with every step in the right order, then the answer.")
IGNORE = -100  # label of a position that is not scored

# -----------------------------------------------------------------------------
# 1. Examples: mask one step (or none), shuffle, prompt and target


@dataclass
class Example:
    prompt: str
    target: str                  # the complete ordered rationale (EOS is added as a token)
    order: list[int] | None      # original index of each shown step; None for a plain pair
    masked: list[int] | None     # original indices of the masked steps; None for a plain pair


def reconstruction_example(ex: teacher.TeacherExample, rng: random.Random, mask_prob: float,
                           masked_steps: str = "one") -> Example:
    """The paper's stage 1 (`masked_steps="one"`): with probability mask_prob one random step
    becomes <MASK>; then the steps are always shuffled (a plain shuffle, as the authors': with two
    steps it keeps the order half the time).

    Not the paper: "half" hides teacher.num_masked(n) steps (stage 2's count) and "all" every step, always.
    They measure how much of stage 1's target the student can copy from its prompt: with one
    step masked, about 85% of the target's tokens lie outside the masked step (README). The
    instruction keeps its words ("one of them may be missing") in every mode, as measured."""
    n = len(ex.steps)
    if masked_steps == "one":
        masked = [rng.randrange(n)] if rng.random() < mask_prob else []
    elif masked_steps == "half":
        masked = sorted(rng.sample(range(n), teacher.num_masked(n)))
    elif masked_steps == "all":
        masked = list(range(n))
    else:
        raise ValueError(f"masked_steps {masked_steps!r}: expected one, half or all")
    order = list(range(n))
    rng.shuffle(order)
    shown = "\n".join(f"- {MASK if i in masked else ex.steps[i]}" for i in order)
    prompt = (f"Question: {ex.question.strip()}\n{INSTRUCTION.format(mask=MASK)}\n{shown}\nReasoning:")
    return Example(prompt, "\n" + teacher.format_rationale(ex.steps, ex.answer), order, masked)


def plain_example(ex: teacher.TeacherExample) -> Example:
    """The eval prompt followed by the teacher's rationale (--plain-ratio)."""
    return Example(build_prompt(ex.question), "\n" + teacher.format_rationale(ex.steps, ex.answer), None, None)


@dataclass
class Encoded:
    prompt: list[int]
    target: list[int]            # ends with EOS unless cut by --max-length


def encode(example: Example, tokenizer: Tokenizer, max_length: int) -> Encoded:
    """Prompt and target are encoded apart, so the boundary between them is exact (encoding the
    joined text can merge tokens across it); a too-long example loses the end of its target."""
    prompt = tokenizer.encode(example.prompt)
    target = tokenizer.encode(example.target) + [tokenizer.eos_token_id]
    if len(prompt) >= max_length:
        raise ValueError(f"a prompt of {len(prompt)} tokens does not fit --max-length {max_length}")
    return Encoded(prompt, target[:max_length - len(prompt)])


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T], right-padded
    attention_mask: torch.Tensor  # [B, T], 1 for real tokens
    labels: torch.Tensor          # [B, T], the token at each target position, IGNORE elsewhere

    @property
    def target_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def collate(items: list[Encoded], pad_token_id: int, device) -> Batch:
    width = max(len(e.prompt) + len(e.target) for e in items)
    ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for row, e in enumerate(items):
        seq = e.prompt + e.target
        ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, len(e.prompt):len(seq)] = torch.tensor(e.target)
        mask[row, :len(seq)] = 1
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def target_loss(model: Qwen2, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy of the target tokens. Only the positions that predict a target token
    go through the LM head (the [tokens, vocab] logits are the largest tensor in training)."""
    hidden = model.hidden_states(batch.input_ids, attention_mask=batch.attention_mask)
    labels = batch.labels[:, 1:]               # position t predicts token t + 1
    scored = labels != IGNORE
    logits = model.logits(hidden[:, :-1][scored]).float()
    return F.cross_entropy(logits, labels[scored], reduction="sum")


@torch.no_grad()
def mean_target_loss(model: Qwen2, items: list[Encoded], pad_token_id: int, batch_size: int = 8) -> float:
    """Token-mean reconstruction loss of fixed examples (for tests and quick checks)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for lo in range(0, len(items), batch_size):
        batch = collate(items[lo:lo + batch_size], pad_token_id, model.device)
        total += float(target_loss(model, batch))
        count += batch.target_tokens
    model.train(was_training)
    return total / count


# -----------------------------------------------------------------------------
# 2. The data stream: a deterministic function of (seed, position), so a resumed run sees
# exactly the examples the interrupted one would have seen next.


class Stream:
    """Epoch e is a seeded permutation of the N teacher examples (plus round(plain_ratio * N)
    plain pairs); position j of the endless stream is item j % len(epoch) of epoch j // len(epoch).
    Each item's mask and order come from its own seeded generator."""

    def __init__(self, examples: list[teacher.TeacherExample], seed: int, mask_prob: float, plain_ratio: float,
                 task: str = "reconstruct", masked_steps: str = "one"):
        self.examples, self.seed, self.mask_prob, self.masked_steps = examples, seed, mask_prob, masked_steps
        if task == "plain":  # the standard-distillation baseline: plain pairs only
            self.items = [(i, True) for i in range(len(examples))]
        else:
            plain = random.Random(f"{seed}:plain").sample(range(len(examples)), round(plain_ratio * len(examples)))
            self.items = [(i, False) for i in range(len(examples))] + [(i, True) for i in sorted(plain)]
        self._epoch, self._order = -1, self.items

    def __len__(self) -> int:
        return len(self.items)  # items per epoch

    def __getitem__(self, j: int) -> Example:
        epoch, pos = divmod(j, len(self.items))
        if epoch != self._epoch:
            order = epoch_order(len(self.items), self.seed, epoch)
            self._epoch, self._order = epoch, [self.items[i] for i in order]
        index, plain = self._order[pos]
        if plain:
            return plain_example(self.examples[index])
        rng = random.Random(f"{self.seed}:example:{epoch}:{index}")
        return reconstruction_example(self.examples[index], rng, self.mask_prob, self.masked_steps)


def load_for_training(args, checkpoint, tensors: dict, state: dict | None, dist_ctx):
    """The model (LoRA adapters added), its trainable parameters, AdamW and the step to start at:
    from --model, or when resuming from the checkpoint's weights (full fine-tuning) or --model plus
    the saved adapters (LoRA), with the optimizer moments and the RNG states restored."""
    source = checkpoint if state and not args.lora_rank else args.model
    model = Qwen2.from_pretrained(source, dtype=args.dtype, device=dist_ctx.device)
    if args.lora_rank:
        add_lora(model, rank=args.lora_rank, alpha=args.lora_alpha, dropout=args.lora_dropout)
        if state:
            resume.load_adapters(model, tensors, checkpoint)
    model.gradient_checkpointing = args.gradient_checkpointing
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=args.lr, weight_decay=args.weight_decay)
    if not state:
        torch.manual_seed(args.seed + dist_ctx.rank)  # LoRA dropout differs per rank, like sampling
        return model, params, optimizer, 0
    resume.load_optimizer(optimizer, tensors, state["param_groups"])
    rank = dist_ctx.rank % state["ranks"]
    torch.set_rng_state(tensors[f"rng.{rank}.torch"])
    devices = sum(k.startswith(f"rng.{rank}.cuda.") for k in tensors)
    cuda = [tensors[f"rng.{rank}.cuda.{i}"] for i in range(devices)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return model, params, optimizer, state["step"]


def train_step(model: Qwen2, optimizer, params, encoded: list[Encoded], pad_token_id: int, lr: float,
               micro_batch: int, max_grad_norm: float, dist_ctx, autocast: bool) -> tuple[float, float, int, int]:
    """One optimizer step on this process's share of an effective batch, in micro-batches.

    The loss is a mean over every target token of the step, all processes together, so neither
    the micro-batch split nor the number of processes changes the gradient. Returns the step's
    loss, the gradient norm before clipping, and its target and total token counts (all processes)."""
    local_target = sum(len(e.target) for e in encoded)
    local_tokens = sum(len(e.prompt) + len(e.target) for e in encoded)
    all_target, all_tokens = dist_ctx.sum([local_target, local_tokens])
    scale = dist_ctx.world_size / all_target  # average_gradients divides by world_size again
    loss_sum = 0.0
    for lo in range(0, len(encoded), micro_batch):
        batch = collate(encoded[lo:lo + micro_batch], pad_token_id, dist_ctx.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = target_loss(model, batch)
        (loss * scale).backward()
        loss_sum += loss.item()
    # average over processes, clip, set the scheduled learning rate, step
    dist_ctx.average_gradients(model)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return dist_ctx.sum([loss_sum])[0] / all_target, grad_norm, all_target, all_tokens


# -----------------------------------------------------------------------------
# 3. Checkpoints: weights by save_pretrained, the rest (optimizer, RNG, LoRA adapters) beside them

# Every other option changes what the run computes, so --resume refuses a new value for it
# (resume.check_config); these only say where, how often and how visibly, or how much memory.
MAY_CHANGE_ON_RESUME = ("out", "resume", "stop_after", "save_every", "keep_checkpoints", "quiet", "device",
                        "gradient_checkpointing")
# Options newer than the first checkpoints, with the value that reproduces those runs
ADDED_LATER = {"masked_steps": "one"}


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def save_checkpoint(out: Path, step: int, model: Qwen2, optimizer, args, tokenizer_dir: Path,
                    rngs: list[dict], keep: int):
    """OUT/checkpoint-STEP: the (merged) weights, loadable as they are, and the trainer state
    (resume.py) with what --resume needs besides: the optimizer, every process's RNG state
    (rng.RANK.torch, rng.RANK.cuda.DEVICE) and the LoRA adapters unmerged as tensors; the step
    and the options in the JSON."""
    tensors, param_groups = resume.trainer_tensors(model, optimizer)
    for rank, rng in enumerate(rngs):
        tensors[f"rng.{rank}.torch"] = rng["torch"]
        tensors.update({f"rng.{rank}.cuda.{i}": t for i, t in enumerate(rng["cuda"])})
    resume.save_checkpoint(model, out / f"checkpoint-{step}", tokenizer_dir, tensors,
                           {"step": step, "param_groups": param_groups, "ranks": len(rngs), "args": vars(args)})
    resume.remove_old_checkpoints(out, keep)


# -----------------------------------------------------------------------------
# 4. Training


def parse_args(argv=None):
    p = cli.ArgumentParser(description="BRIDGE stage 1: masked, shuffled reconstruction of teacher rationales.")
    # --help shows the options in these groups, so a reader finds the paper's knobs together
    g = p.add_argument_group("model and how it runs")
    g.add_argument("--model", required=True, help="student checkpoint folder or hub id (e.g. Qwen/Qwen2.5-3B)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--lora-rank", type=nonnegative_int, default=16,
                   help="LoRA rank on q/k/v/o, merged at the end (the authors: 16); 0 = full fine-tuning")
    g.add_argument("--lora-alpha", type=positive_float, default=32.0, help="LoRA scale alpha / rank")
    g.add_argument("--lora-dropout", type=dropout, default=0.05, help="dropout on the LoRA input")
    g.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory, ~30%% slower")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weight dtype; float32 weights train under bf16 autocast on GPU")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    teacher.add_teacher_arguments(p.add_argument_group("teacher data"), rows="0:2000")
    g = p.add_argument_group("stage 1 (defaults: the authors' settings)")
    g.add_argument("--epochs", type=positive_float, default=5, help="passes over the teacher rows")
    g.add_argument("--max-steps", type=positive_int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--batch-size", type=positive_int, default=4, help="examples per forward pass (per process)")
    g.add_argument("--grad-accum", type=positive_int, default=8, help="micro-batches per optimizer step; "
                   "effective batch = batch-size x grad-accum, split over the processes")
    g.add_argument("--lr", type=positive_float, default=5e-5, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW decay of weight matrices")
    g.add_argument("--warmup-steps", type=nonnegative_int, default=80, help="linear warm-up, then linear decay")
    g.add_argument("--max-grad-norm", type=positive_float, default=1.0, help="gradient clipping")
    g.add_argument("--max-length", type=positive_int, default=2048, help="prompt + target tokens")
    g.add_argument("--mask-prob", type=probability, default=0.7,
                   help="probability that one step is masked (the authors: 0.7; --masked-steps half or all ignore it)")
    g.add_argument("--seed", type=nonnegative_int, default=42, help="masks, shuffles, example order, LoRA init")
    g = p.add_argument_group("variants (defaults: the paper)")
    g.add_argument("--masked-steps", default="one", choices=["one", "half", "all"],
                   help="one: --mask-prob's one step (the paper); half: stage 2's count, max(3, n/2) of n, "
                        "at most n-1; all: every step (not the paper: the student copies less, README)")
    g.add_argument("--plain-ratio", type=probability, default=0.0,
                   help="plain eval-prompt -> rationale pairs per reconstruction example (0 = the paper)")
    g.add_argument("--task", default="reconstruct", choices=["reconstruct", "plain"],
                   help="reconstruct: BRIDGE's stage 1; plain: eval prompt -> teacher rationale only, i.e. "
                        "standard distillation (SFT), the baseline the paper compares against")
    g = p.add_argument_group("checkpoints and progress")
    g.add_argument("--save-every", type=nonnegative_int, default=100, help="checkpoint every N optimizer steps (0 = never)")
    g.add_argument("--keep-checkpoints", type=nonnegative_int, default=2, help="the newest N checkpoints are kept (0: all)")
    g.add_argument("--resume", action="store_true", help="continue from the latest OUT/checkpoint-STEP")
    g.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after this many steps without changing the schedule (a job in pieces: then --resume)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def within_window(max_length: int, model, say: bool) -> int:
    """--max-length, or the model's context window where that is shorter: positions past the
    window would train garbage rotary angles, silently."""
    window = model.config.max_position_embeddings
    if max_length <= window:
        return max_length
    if say:
        print(f"stage 1: --max-length {max_length} is past the model's context window; "
              f"sequences are cut at {window} tokens (max_position_embeddings in config.json)")
    return window


def main(argv=None) -> dict:
    args = parse_args(argv)
    refuse_16bit_full_finetuning(args.dtype, args.lora_rank)  # trained weights stay float32
    dist_ctx = distributed.setup(args.device or default_device())
    device = dist_ctx.device
    out = Path(args.out)
    torch.manual_seed(args.seed)  # the same on every rank: LoRA's initial adapters must agree

    # 1. teacher data and the example stream
    examples = teacher.load_from_args(args, quiet=not dist_ctx.is_main)
    stream = Stream(examples, args.seed, args.mask_prob, args.plain_ratio, args.task, args.masked_steps)
    per_step = args.batch_size * args.grad_accum
    total_steps = args.max_steps or math.ceil(args.epochs * len(stream) / per_step)

    # 2. the model, from --model or, resuming, from the latest complete checkpoint (after the
    # main process has put right what a kill during a save left behind)
    resume.refuse_existing_run(out, args.resume)
    cli.on_interrupt(lambda: resume.how_to_continue(out))  # Ctrl-C says what --resume will do
    checkpoint, tensors, state = resume.checkpoint_to_resume(out, args.resume, dist_ctx)
    if state:
        resume.check_config(state["args"], vars(args), MAY_CHANGE_ON_RESUME, checkpoint, ADDED_LATER)
    model, params, optimizer, start = load_for_training(args, checkpoint, tensors, state, dist_ctx)
    tokenizer = load_tokenizer(args.model)  # its folder stays put while old checkpoints are deleted
    max_length = within_window(args.max_length, model, dist_ctx.is_main)
    autocast = device.type == "cuda" and model.dtype == torch.float32

    def checkpoint_now(step: int):  # every process takes part (its RNG state is saved too)
        rngs = dist_ctx.gather(rng_state())
        if dist_ctx.is_main:
            save_checkpoint(out, step, model, optimizer, args, tokenizer.folder, rngs, args.keep_checkpoints)

    metrics_path = out / "metrics.jsonl"
    if dist_ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        resume.truncate_metrics(metrics_path, start)  # the steps after the checkpoint are done again
        print(f"stage 1: {len(examples)} teacher examples ({len(stream)} per epoch), {total_steps} steps of "
              f"{per_step} examples, {sum(p.numel() for p in params):,} trainable parameters"
              + (f", resuming at step {start} from {checkpoint}" if state else ""))

    # 3. the loop: one optimizer step per effective batch
    end = total_steps if args.stop_after is None else min(total_steps, start + args.stop_after)
    bar = tqdm(total=total_steps, initial=start, desc="stage 1", dynamic_ncols=True,
               disable=args.quiet or not dist_ctx.is_main)
    first_loss = last_loss = None
    saved = False
    run_start, tokens_seen = time.time(), 0
    for step in range(start, end):
        t0 = time.time()
        # 3a. this step's examples (each process takes its share), and one optimizer step on them
        mine = dist_ctx.shard(list(range(step * per_step, (step + 1) * per_step)))
        encoded = [encode(stream[j], tokenizer, max_length) for j in mine]
        lr = lr_at(step, total_steps, args.warmup_steps, args.lr)
        loss_value, grad_norm, all_target, all_tokens = train_step(
            model, optimizer, params, encoded, tokenizer.pad_token_id, lr, args.batch_size, args.max_grad_norm,
            dist_ctx, autocast)
        # 3b. metrics, progress, checkpoint
        first_loss = loss_value if first_loss is None else first_loss
        last_loss = loss_value
        seconds = time.time() - t0
        tokens_seen += all_tokens
        if dist_ctx.is_main:
            record = {"step": step + 1, "epoch": round((step + 1) * per_step / len(stream), 4),
                      "loss": round(loss_value, 5), "lr": lr, "grad_norm": round(grad_norm, 4),
                      "target_tokens": int(all_target), "tokens": int(all_tokens),
                      "tokens_per_s": round(all_tokens / max(seconds, 1e-9), 1)}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
        saved = args.save_every > 0 and (step + 1) % args.save_every == 0
        if saved and step + 1 < total_steps:
            checkpoint_now(step + 1)
    bar.close()

    # 4. the final checkpoint (LoRA merged), or a resumable one when stopped early
    if end < total_steps:
        if not (end > start and saved):
            checkpoint_now(end)
        if dist_ctx.is_main:
            print(f"stage 1: stopped at step {end} of {total_steps}; continue with --resume")
    elif dist_ctx.is_main:
        resume.save_final(model, out, tokenizer.folder)
    dist_ctx.barrier()
    dist_ctx.close()
    summary = {"steps": end, "total_steps": total_steps, "first_loss": first_loss, "last_loss": last_loss,
               "tokens_per_s": round(tokens_seen / max(time.time() - run_start, 1e-9), 1), "out": str(out)}
    if dist_ctx.is_main and end == total_steps and first_loss is not None:
        print(f"stage 1: {end} steps, loss {first_loss:.4f} -> {last_loss:.4f}, "
              f"{summary['tokens_per_s']} tokens/s -> {out}")
    return summary


if __name__ == "__main__":
    cli.run(main)
