"""
Stage 2 of BRIDGE: GRPO on masked completion, with a length-aware reward.

Why this stage exists. After stage 1 the student can put a teacher's steps back in order; it
has not yet been asked to *produce* reasoning of its own and been judged on the result. Here it
sees the question and the teacher's steps in their original order with most of them masked
(k = max(3, floor(n/2)) of n, capped at n-1), writes the complete reasoning and the answer, and
is rewarded for being right first and brief second (PAPER.md, "Stage 2"). The reward is a
plain function chosen by name, so a reader can swap in correctness-only, a DAPO-style overlong
penalty or a cosine length schedule (rewards.py) and see what changes.

Why the GRPO is written out. The authors' released code samples from a prompt that already
holds the gold rationale, has no importance ratio and no clipping, and uses the absolute
difference of sequence-mean log-probs as its "KL". We implement the algorithm as published
(Shao et al. 2024, DeepSeekMath), every piece in its own function:
  1. rollout          G completions per prompt, sampled at temperature T with top-p, plus the
                      log-probability of each sampled token under the sampling policy
  2. rewards          reward(completion, example) -> float, from a name -> function dict
                      (rewards.py: the contract, the registry; the paper's reward is here)
  3. advantages       A_i = (r_i - mean(r_group)) / (std(r_group) + eps), the same for every
                      token of completion i; a group whose rewards are all equal has A = 0
                      (--no-std-scale: A_i = r_i - mean(r_group), as Dr. GRPO)
  4. loss per token   -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) + beta * k3, with
                      rho = exp(log pi(t) - log pi_old(t)) and the k3 estimator of
                      KL(pi || pi_ref): exp(ref - new) - (ref - new) - 1; all log-probs at T
  5. aggregation      "seq-mean": mean over each completion's tokens, then over completions
                      (the original GRPO); "token-mean": one mean over every token of the batch
                      (DAPO: long completions are not down-weighted per token); "dr-grpo": the
                      sum over every token divided by the constant max_new_tokens * completions
                      (Dr. GRPO, Liu et al. 2025, with --no-std-scale for its advantages)
grpo_step puts them together, one step on one screen (rollout, rewards and advantages, pi_old and
pi_ref, optimise), and train_grpo is the loop around it (resume, metrics.jsonl, checkpoints). To
read the algorithm: grpo_loss, then grpo_step, then the rewards.
`--prompt plain` runs the same loop on eval.py's prompt alone: GRPO without a curriculum, the
baseline BRIDGE is compared with (curriculum.sh's `grpo` row).
Stage 3 (stage3_rewrite.py) imports this machinery rather than repeating it: GRPOConfig and
add_grpo_arguments for the shared options, and train_grpo(config, examples, build_prompt,
reward_fn), which only needs a prompt builder and a reward.

Run it (the tiny world, a few minutes on a laptop CPU; then the paper's setting on a GPU):
    python stage2_grpo.py --model runs/tiny/stage1 --teacher-data runs/tiny/world/teacher.jsonl \\
        --rows 400: --out runs/tiny/stage2 --words-per-step 8 --group-size 4 --max-steps 40
    python stage2_grpo.py --model runs/paper/stage1 --teacher-data gsm8k --out runs/paper/stage2

The defaults are the authors' settings (G=2, temperature 0.7, top-p 0.9, 256 new tokens, lr 1e-5,
KL weight 0.1, 3 epochs, teacher rows 2000:4000), except the length budget: unless
--words-per-step is given, it is scaled to the teacher data (calibrated_words_per_step; 35 for
rationales shaped like the authors' R1 ones) and printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

import cli
import distributed
import resume
from eval import NUMBER, build_prompt as eval_prompt, is_correct, should_stop
from cli import bounded, dropout, nonnegative_float, nonnegative_int, nucleus, positive_float, positive_int
from generate import compile_decode, generate, token_logprobs
from lora import add_lora, lora_disabled, refuse_16bit_full_finetuning
from model import Qwen2
from tokenizer import load_tokenizer
from rewards import (REWARDS, Completion, RewardFn, add_reward_arguments, answer_part, bind_reward, is_right,
                     reward_from_args, score, well_formed)
from run import adamw, autocast, check_same_weights, learning_rate, step_examples
from teacher import STEP_MARKER, add_teacher_arguments, load_from_args, num_masked

# -----------------------------------------------------------------------------
# 1. Masked-completion prompts

# The authors' marker for a hidden step in stages 2-3; their stage 1 writes <MASK> (two spellings
# in their code, kept: the tiny world's base was pre-trained on each stage's own prompt)
MASK = "[MASKED]"


def states_answer(step: str, answer: str) -> bool:
    """Whether the step writes the gold answer as one of its numbers (compared as eval.py does)."""
    return any(is_correct(number, answer) for number in NUMBER.findall(step.replace("$", "")))


def mask_steps(steps: Sequence[str], rng: random.Random, answer: str | None = None) -> tuple[list[str], list[int]]:
    """The steps in their original order with num_masked(n) random ones replaced by MASK.

    With `answer` (--mask-answer-steps), every step that states the gold answer is hidden first
    and the rest of the k are drawn at random (still at most n-1 hidden). Why: a teacher's last
    steps usually state the answer, so with random masks the prompt often gives it away, and a
    reward that pays a right answer in one short step pays the student for copying it rather
    than for reasoning (on the tiny world the policy collapses to `Answer: N` within tens of
    steps). The paper masks at random, which stays the default."""
    n, k = len(steps), num_masked(len(steps))
    forced = [i for i, s in enumerate(steps) if states_answer(s, answer)][:n - 1] if answer is not None and k else []
    rest = [i for i in range(n) if i not in forced]
    hidden = sorted(forced + rng.sample(rest, max(0, k - len(forced))))
    shown = [MASK if i in hidden else step for i, step in enumerate(steps)]
    return shown, hidden


def build_masked_prompt(example, rng: random.Random, mask_answer_steps: bool = False) -> str:
    """The evaluation prompt (eval.py) with the partly masked teacher steps as hints before
    `Reasoning:`. Keeping eval's frame means what the student learns here is what it is
    measured on; the completion itself is written from scratch (it never sees the gold text)."""
    shown, _ = mask_steps(example.steps, rng, str(example.answer) if mask_answer_steps else None)
    hints = "\n".join(f"Step {i}: {step}" for i, step in enumerate(shown, 1))
    return eval_prompt(example.question, hints=f"Some steps of a solution, in order; each {MASK} step is "
                                               f"missing:\n{hints}\nWrite the complete solution.\n")


def prompt_builder(kind: str = "masked", mask_answer_steps: bool = False) -> Callable[[Any, random.Random], str]:
    """train_grpo's prompt builder for --prompt: `masked` (BRIDGE's stage 2) or `plain`
    (eval.py's prompt alone: GRPO without a curriculum, the baseline the paper compares to)."""
    if kind == "plain":
        return lambda example, rng: eval_prompt(example.question)
    if kind == "masked":
        return lambda example, rng: build_masked_prompt(example, rng, mask_answer_steps=mask_answer_steps)
    raise ValueError(f"--prompt {kind!r}: expected masked or plain")


# -----------------------------------------------------------------------------
# 2. The paper's reward
#
# What a reward sees (Completion), the format check (well_formed, answer_part), the other rewards
# and the one registry --reward chooses from are in rewards.py; this is the paper's stage-2 reward.


def reward_paper(completion: Completion, example, words_per_step: float = 35.0) -> float:
    """The authors' hierarchical reward (PAPER.md, Stage 2), lengths in words.

    n = teacher steps, B = words_per_step * n, w = words in the response,
    d = n - number of `Step k:` markers in the response; w and d count the response up to the
    end of its answer line (answer_part), as the authors cut it.
      wrong answer:                                   -2
      right, but no `Step k:` or no `Answer:`:        -1
      otherwise 1 + s + t, with
        s = 0.3 * min(d, 3) if d >= 1 else 0
        t = max(-0.01 * (w - B), -1)        if w > B
            -0.002 * (w - 0.8 B)            if 0.8 B < w <= B
            min(0.001 * (0.8 B - w), 0.2)   if w <= 0.8 B
    The maximum is 1 + 0.9 + 0.2 = 2.1."""
    solution = answer_part(completion.text)
    n, w, markers = len(example.steps), len(solution.split()), len(STEP_MARKER.findall(solution))
    correct, formatted = is_right(completion.text, example), well_formed(solution)
    completion.parts.update(correct=float(correct), format=float(formatted), step_bonus=0.0, length=0.0, words=float(w))
    if not correct:
        return -2.0
    if not formatted:
        return -1.0
    d, B = n - markers, words_per_step * n
    s = 0.3 * min(d, 3) if d >= 1 else 0.0
    if w > B:
        t = max(-0.01 * (w - B), -1.0)
    elif w > 0.8 * B:
        t = -0.002 * (w - 0.8 * B)
    else:
        t = min(0.001 * (0.8 * B - w), 0.2)
    completion.parts.update(step_bonus=s, length=t)
    return 1.0 + s + t


REWARDS["paper"] = reward_paper   # --reward paper, this stage's default


# -----------------------------------------------------------------------------
# 3. The GRPO pieces: rollout, advantages, loss


@dataclass
class Rollouts:
    """One step's completions, prompt-major: rows g*G .. g*G+G-1 belong to prompt g."""
    prompts: list[list[int]]         # the prompt of each row (repeated G times)
    completions: list[list[int]]     # new tokens, EOS included when produced
    old_logprobs: list[list[float]]  # log pi_old(token) at the sampling temperature
    finish_reasons: list[str]        # "eos" | "stop" | "length"
    texts: list[str]

    @property
    def truncated(self) -> list[bool]:
        return [r == "length" for r in self.finish_reasons]


def rollout(model, tokenizer, prompts: Sequence[Sequence[int]], group_size: int, max_new_tokens: int,
            temperature: float, top_p: float, generator: torch.Generator | None = None,
            stop_fn: Callable[[str], bool] | None = should_stop) -> Rollouts:
    """G completions of every prompt; the prompt is prefilled once per group (generate.generate)."""
    was_training = model.training
    model.eval()
    out = generate(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p,
                         num_samples=group_size, eos_token_ids=tokenizer.eos_token_ids,
                         pad_token_id=tokenizer.pad_token_id, stop_fn=stop_fn,
                         tokenizer=tokenizer if stop_fn else None, generator=generator,
                         return_logprobs=True)
    if was_training:
        train_without_dropout(model)   # (plain model.train() would switch LoRA's dropout back on)
    rows = [list(p) for p in prompts for _ in range(group_size)]
    return Rollouts(rows, out.tokens, out.logprobs, out.finish_reasons,
                    [tokenizer.decode(t) for t in out.tokens])


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4,
                     std_scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A_i = (r_i - group mean) / (group std + eps) for rewards laid out prompt-major, and a
    bool per group that is true when all its rewards are equal (those rows get exactly 0).

    The std is the sample std (Bessel-corrected, as torch.std, TRL and the authors use); with
    G = 2 the two advantages are then +-0.707 whatever the reward gap. std_scale=False
    (--no-std-scale, Dr. GRPO) keeps A_i = r_i - group mean: a group whose rewards barely differ
    is not blown up to the same weight as one whose rewards differ a lot."""
    groups = rewards.view(-1, group_size).double()
    spread = groups.max(-1).values - groups.min(-1).values
    zero_variance = spread == 0
    std = groups.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
    adv = groups - groups.mean(-1, keepdim=True)
    if std_scale:
        adv = adv / (std + eps)
    adv[zero_variance] = 0.0  # exactly zero, not a rounding residue
    return adv.view(-1).float(), zero_variance


def k3_kl(new_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref) (Schulman 2020): exp(d) - d - 1 with
    d = ref - new. It is unbiased under samples from pi, never negative, and 0 where they agree."""
    d = ref_logp - new_logp
    return torch.exp(d) - d - 1.0


LOSS_AGGREGATIONS = ("seq-mean", "token-mean", "dr-grpo")


@dataclass
class LossStats:
    """Sums (not means) so micro-batches and processes can be added up before dividing."""
    kl: float = 0.0
    clipped: float = 0.0
    tokens: float = 0.0


def grpo_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, ref_logp: torch.Tensor | None = None, beta: float = 0.0,
              clip_eps: float = 0.2, loss_agg: str = "seq-mean",
              total: float | None = None, max_new_tokens: int | None = None) -> tuple[torch.Tensor, LossStats]:
    """The PPO-clipped GRPO objective, as a loss to minimise.

    new_logp, old_logp, ref_logp, mask: [B, C] (mask true on completion tokens, EOS included,
    padding excluded); advantages: [B]. With l_it the per-token loss of completion i, token t,
    and |o_i| its length, `loss_agg` sums them as
      "seq-mean"    (1/N) sum_i (1/|o_i|) sum_t l_it           the original GRPO (Shao et al. 2024)
      "token-mean"  (1 / sum_i |o_i|) sum_i sum_t l_it          DAPO (Yu et al. 2025): every token
                                                                weighs the same, long or short
      "dr-grpo"     (1 / (L_max * N)) sum_i sum_t l_it          Dr. GRPO (Liu et al. 2025): a
                                                                constant, so no length bias at all
    with N completions and L_max = max_new_tokens (default: this batch's padded width).
    (Dr. GRPO also drops the std from the advantages: group_advantages(std_scale=False).)
    `total` is the normaliser for the whole optimisation batch when this call sees only a
    micro-batch of it: N for "seq-mean", sum_i |o_i| for "token-mean", L_max * N for
    "dr-grpo"; by default this batch's own."""
    mask = mask.bool()
    # padded positions are zeroed before any arithmetic, so whatever they held (even inf or nan)
    # reaches neither the loss nor, through a 0 * nan, the gradient
    zero = torch.zeros((), dtype=new_logp.dtype, device=new_logp.device)
    new_logp, old_logp = torch.where(mask, new_logp, zero), torch.where(mask, old_logp, zero)
    if ref_logp is not None:
        ref_logp = torch.where(mask, ref_logp, zero)
    ratio = torch.exp(new_logp - old_logp)
    adv = advantages[:, None].to(new_logp.dtype)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    kl = None
    if ref_logp is not None:
        kl = k3_kl(new_logp, ref_logp)
        if beta:
            per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, zero)
    lengths = mask.sum(-1)
    if loss_agg == "seq-mean":
        denominator = total if total is not None else max(int((lengths > 0).sum()), 1)
        loss = (per_token.sum(-1) / lengths.clamp(min=1)).sum() / denominator
    elif loss_agg == "token-mean":
        denominator = total if total is not None else max(int(lengths.sum()), 1)
        loss = per_token.sum() / denominator
    elif loss_agg == "dr-grpo":
        denominator = total if total is not None else (max_new_tokens or mask.shape[1]) * mask.shape[0]
        loss = per_token.sum() / denominator
    else:
        raise ValueError(f"loss_agg {loss_agg!r}: expected one of {LOSS_AGGREGATIONS}")
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1 + clip_eps)) | ((adv < 0) & (ratio < 1 - clip_eps))
        stats = LossStats(kl=float(torch.where(mask, kl, zero).sum()) if kl is not None else 0.0,
                          clipped=float((clipped & mask).sum()), tokens=float(mask.sum()))
    return loss, stats


# -----------------------------------------------------------------------------
# 4. Options shared with stage 3


def option(default=dataclasses.MISSING, help: str = "", group: str = "GRPO (defaults: the authors' settings)",
           **argparse_kwargs):
    """A GRPOConfig field that is also a command-line option, declared once: its default, its
    --help text and what argparse needs (type, choices, action, flag). add_grpo_arguments reads
    them; a script calling train_grpo directly just sets the fields."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **argparse_kwargs})


# --help shows the options in these groups, so a reader finds the paper's knobs together
MODEL = "model and how it runs"
VARIANT = "GRPO variants and finer choices (defaults: the GRPO of PAPER.md)"
RUN = "checkpoints and progress"


@dataclass
class GRPOConfig:
    """Every GRPO option of stages 2 and 3. The defaults are the authors' stage-2 settings
    (PAPER.md): G=2, T=0.7, top-p 0.9, 256 new tokens, lr 1e-5, KL weight 0.1, 3 epochs, and their
    trainer's schedule: 10% linear warm-up, linear decay, weight decay 0.01, one AdamW step per
    prompt (--prompts-per-step 1)."""
    model: str = option(help="policy checkpoint to start from (folder or hub id)", group=MODEL, required=True)
    out: str = option(help="output folder: final checkpoint, metrics.jsonl, checkpoint-STEP/", group=MODEL,
                      required=True)
    dtype: str | None = option(None, "weights dtype (default: float32; on CUDA, bf16 autocast is used for the "
                                     "forward passes)", MODEL, choices=["float32", "bfloat16", "float16"])
    device: str | None = option(None, "default: cuda if available, else cpu", MODEL)
    lora_rank: int = option(0, "0: full fine-tuning; else LoRA on q/k/v/o", MODEL, type=nonnegative_int)
    lora_alpha: float = option(32.0, "LoRA scale alpha / rank", MODEL, type=positive_float)
    lora_dropout: float = option(0.05, "dropout on the LoRA input", MODEL, type=dropout)
    gradient_checkpointing: bool = option(False, "recompute activations: less memory, slower", MODEL,
                                          action="store_true")
    compile: bool = option(False, "torch.compile generate's decode step (generate.compile_decode): the first "
                           "rollout compiles, minutes on a CPU; for long runs on a GPU", MODEL, action="store_true")

    group_size: int = option(2, "G completions per prompt (authors: 2)", type=bounded(int, 2))
    prompts_per_step: int = option(1, "prompts per GRPO step (all processes)", type=positive_int)
    max_steps: int | None = option(None, "GRPO steps (None: from --epochs)", type=positive_int)
    epochs: float = option(3.0, "passes over the prompts when --max-steps is not set", type=positive_float)
    lr: float = option(1e-5, "AdamW learning rate", type=positive_float)
    weight_decay: float = option(0.01, "AdamW weight decay", type=nonnegative_float)
    warmup_steps: int = option(0, "linear warm-up steps; 0: --warmup-ratio of the run", type=nonnegative_int)
    warmup_ratio: float = option(0.1, "linear warm-up over this share of the steps (authors: 0.1)",
                                 type=bounded(float, 0, 1))
    lr_schedule: str = option("linear", "after the warm-up: linear decay towards 0 at the last step (authors), "
                                        "or constant", choices=["linear", "constant"])
    max_grad_norm: float = option(1.0, "gradient clipping", type=positive_float)
    beta: float = option(0.1, "k3 KL weight (authors: 0.1); 0 loads no reference", type=nonnegative_float)
    clip_eps: float = option(0.2, "PPO clip range: the ratio is clipped to [1 - eps, 1 + eps]",
                             type=bounded(float, 0, 1, low_open=True, high_open=True))
    temperature: float = option(0.7, "sampling temperature, also used for every log-prob", type=positive_float)
    top_p: float = option(0.9, "nucleus sampling mass", type=nucleus)
    max_new_tokens: int = option(256, "completion length limit", type=positive_int)
    loss_agg: str = option("seq-mean", "how per-token losses are summed (see grpo_loss): seq-mean (GRPO), "
                                       "token-mean (DAPO), dr-grpo (Dr. GRPO: sum / (max-new-tokens x completions))",
                           choices=LOSS_AGGREGATIONS, group=VARIANT)
    std_scale: bool = option(True, "advantages r - mean(group), not divided by the group std (Dr. GRPO)",
                             flag="--no-std-scale", action="store_false", group=VARIANT)
    ppo_epochs: int = option(1, "optimiser steps on each batch of rollouts", type=positive_int, group=VARIANT)
    micro_batch_size: int = option(8, "completions per forward/backward", type=positive_int, group=MODEL)
    truncated: str = option("keep", "completions cut by --max-new-tokens: train on them, or score them but leave "
                                    "them out of the loss", choices=["keep", "exclude"], group=VARIANT)
    keep_zero_variance: bool = option(False, "also train on groups whose rewards are all equal (no policy "
                                             "gradient, only the KL pull)", action="store_true", group=VARIANT)
    recompute_gap: float = option(1e-3, "pi_old is the sampler's own log-probs; a micro-batch whose mean "
                                        "|log-prob gap| between sampler and trainer exceeds this trains against "
                                        "the trainer's own (free; see optimise). 0: always the trainer's",
                                  type=nonnegative_float, group=VARIANT)
    stop: str = option("answer", "end a completion at eval's stop rule (after the answer line) or only at EOS",
                       choices=["answer", "eos"], group=VARIANT)
    seed: int = option(42, "sampling, data order and LoRA init", type=nonnegative_int)
    save_every: int = option(50, "checkpoint every N steps (0: only at the end)", type=nonnegative_int, group=RUN)
    keep_checkpoints: int = option(2, "the newest N checkpoints are kept (0: all)", type=nonnegative_int, group=RUN)
    resume: bool = option(False, "continue from the newest OUT/checkpoint-STEP", action="store_true", group=RUN)
    quiet: bool = option(False, "no progress bar", action="store_true", group=RUN)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "GRPOConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


# Every other option (of GRPOConfig, and of the stage's own command line) changes what the run
# computes, so --resume refuses a new value for it (resume.check_config); these only say where,
# how often and how visibly, or how much memory. (save_total_limit: --keep-checkpoints' name in
# checkpoints written before 2026-11-29.)
MAY_CHANGE_ON_RESUME = ("out", "resume", "quiet", "save_every", "keep_checkpoints", "save_total_limit", "device",
                        "gradient_checkpointing", "compile")
# Options this code no longer has, with the value that does what it does now: --ref-model (a KL
# reference other than --model; used by no script here, removed 2026-11-29).
REMOVED_OPTIONS = {"ref_model": None}


def add_grpo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """GRPOConfig's fields as options, shared by stage 2 and stage 3 (which may change defaults
    with parser.set_defaults, e.g. max_new_tokens=512): `--name-with-dashes` for each field,
    with the default, help, type and choices its option() declares."""
    groups = {}
    for f in dataclasses.fields(GRPOConfig):
        meta = dict(f.metadata)
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kwargs = {k: v for k, v in meta.items() if k != "group"}
        if f.default is not dataclasses.MISSING and "action" not in kwargs:
            kwargs["default"] = f.default
        group.add_argument(flag, dest=f.name, **kwargs)
    return parser


# -----------------------------------------------------------------------------
# 5. The training loop


def train_without_dropout(model):
    """Training mode (gradient checkpointing needs it) with every dropout off: the ratio
    pi / pi_old compares the policy with the sampler, which ran without dropout, so a dropped-out
    forward would make the ratio noisy before any update and clip for nothing (LoRA's dropout,
    lora.py, is the only one in the model)."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    return model


def _batch_logprobs(model, prompts, completions, temperature, pad_id, micro, device):
    """No-grad log-probs of many completions, micro-batch by micro-batch."""
    out = []
    with torch.no_grad(), autocast(device):
        for lo in range(0, len(prompts), micro):
            lp, _ = token_logprobs(model, prompts[lo:lo + micro], completions[lo:lo + micro], temperature, pad_id)
            out.extend(row[:len(c)].tolist() for row, c in zip(lp, completions[lo:lo + micro]))
    return out


def _pad(rows: list[list[float] | None], width: int, device) -> torch.Tensor:
    t = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        if r is not None:
            t[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return t.to(device)


# One GRPO step (grpo_step, optimise), its line of metrics and its checkpoint; train_grpo,
# below, is the loop around them.


def grpo_step(model, ref, optimizer, tokenizer, cfg: GRPOConfig, dist, prompt_ids: list[list[int]],
              loss_ids: list[list[int]], examples: Sequence[Any], reward_fn: RewardFn,
              generator: torch.Generator, lr: float,
              stop_fn: Callable[[str], bool] | None = should_stop) -> tuple[dict, dict]:
    """One GRPO step on this process's prompts (token ids, with their examples). Returns this
    process's sums for the metrics (step_metrics adds up the processes) and what is not a sum.
    prompt_ids are sampled from; loss_ids are what the loss conditions each completion on: the
    same prompts in stage 2, the evaluation prompt for stage 3's rewrites (see train_grpo)."""
    G, device = cfg.group_size, dist.device

    # 1. rollout: G completions per prompt with their sampling log-probs
    t0 = time.time()
    with autocast(device):
        ro = rollout(model, tokenizer, prompt_ids, G, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                     generator, stop_fn)
    rollout_seconds = time.time() - t0
    loss_prompts = [loss_ids[row // G] for row in range(len(ro.completions))]

    # 2. rewards (score: refused unless finite; accuracy and format logged whatever the reward)
    #    and group-normalised advantages; the rows that train (groups with reward spread)
    scored = [Completion(text, len(tokens), cfg.max_new_tokens, trunc)
              for text, tokens, trunc in zip(ro.texts, ro.completions, ro.truncated)]
    rewards = torch.tensor([score(reward_fn, c, examples[row // G]) for row, c in enumerate(scored)],
                           dtype=torch.float32)
    parts = [c.parts for c in scored]
    advantages, zero_var = group_advantages(rewards, G, std_scale=cfg.std_scale)
    # A completion scored under a prompt it was not sampled from (stage 3's --policy-prompt eval)
    # is no policy-gradient sample there: the model never wrote it under that prompt, so there is
    # nothing to push down. Such rows learn from the better completions only (advantage clamped
    # at 0: reward-weighted fine-tuning); the worse ones keep only the KL term.
    off_policy = [loss_prompts[r] != ro.prompts[r] for r in range(len(ro.texts))]
    advantages = torch.where(torch.tensor(off_policy), advantages.clamp(min=0), advantages)
    rows = [r for r in range(len(ro.texts))
            if (cfg.keep_zero_variance or not zero_var[r // G])
            and not (cfg.truncated == "exclude" and ro.truncated[r])]

    # 3. pi_old and pi_ref log-probs of the rows that train (no gradients). pi_old is the
    #    sampler's own, where the loss conditions on the prompt sampled from; where it does not,
    #    the sampler's are of another prompt, and optimise takes the trainer's (None here)
    t0 = time.time()
    prompts, completions = [loss_prompts[r] for r in rows], [ro.completions[r] for r in rows]
    old = [None if off_policy[r] else ro.old_logprobs[r] for r in rows]
    logprobs = functools.partial(_batch_logprobs, prompts=prompts, completions=completions,
                                 temperature=cfg.temperature, pad_id=tokenizer.pad_token_id,
                                 micro=cfg.micro_batch_size, device=device)
    ref_lp = None
    if cfg.beta and rows:
        if ref is not None:
            ref_lp = logprobs(ref)
        else:
            with lora_disabled(model):  # LoRA: the reference is the base, adapters off
                ref_lp = logprobs(model)

    # 4. the clipped objective, --ppo-epochs optimiser steps over the batch
    trained = optimise(model, optimizer, tokenizer, cfg, dist, prompts, completions, old, ref_lp,
                       advantages[rows], lr, n_sampled=len(ro.completions))
    train_seconds = time.time() - t0

    part_names = sorted({k for p in parts for k in p})
    sums = {"reward": float(rewards.sum()), "reward_sq": float((rewards ** 2).sum()), "rows": len(rewards),
            "tokens": sum(len(c) for c in ro.completions), "truncated": sum(ro.truncated),
            "zero_var": float(zero_var.sum()), "groups": len(zero_var), "kl": trained["kl"],
            "trained_tokens": trained["tokens"], "clipped": trained["clipped"], "loss": trained["loss"],
            "gap_sum": trained["gap_sum"], "recomputed": trained["recomputed"],
            **{f"part_{k}": sum(p.get(k, 0.0) for p in parts) for k in part_names}}
    info = {"trained_rows": trained["rows"], "grad_norm": trained["grad_norm"], "gap": trained["gap"],
            "rollout_seconds": rollout_seconds, "train_seconds": train_seconds}
    return sums, info


def optimise(model, optimizer, tokenizer, cfg: GRPOConfig, dist, prompts, completions, old, ref_lp,
             advantages: torch.Tensor, lr: float, n_sampled: int) -> dict:
    """--ppo-epochs passes over the rows, each one optimiser step, gradients accumulated over
    micro-batches and normalised by the whole (all-process) batch. Returns sums for the metrics."""
    device = dist.device
    n_rows, n_tokens, n_all = dist.sum([len(prompts), sum(len(c) for c in completions), n_sampled])
    # grpo_loss's normaliser for the whole batch; Dr. GRPO's counts every sampled completion
    # (those left out of the loss too), so it is the same constant at every step
    total = {"seq-mean": n_rows, "token-mean": n_tokens,
             "dr-grpo": n_all * cfg.max_new_tokens}[cfg.loss_agg] / dist.world_size
    for group in optimizer.param_groups:
        group["lr"] = lr
    params = [p for p in model.parameters() if p.requires_grad]  # the optimiser's, in the model's order
    train_without_dropout(model)
    stats, loss_sum, grad_norm, gap = LossStats(), 0.0, 0.0, 0.0
    gap_sum, n_recomputed = 0.0, 0
    for ppo_epoch in range(cfg.ppo_epochs if n_rows else 0):
        # gradients freed, not zeroed: kept from the last step they would sit beside the
        # activations at the backward's peak (at the 0.5B shape, 2 GB of a 16.5 GB peak)
        optimizer.zero_grad(set_to_none=True)
        for lo in range(0, len(prompts), cfg.micro_batch_size):
            hi = min(lo + cfg.micro_batch_size, len(prompts))
            with autocast(device):
                new_lp, mask = token_logprobs(model, prompts[lo:hi], completions[lo:hi],
                                              cfg.temperature, tokenizer.pad_token_id)
            width = new_lp.shape[1]
            old_t = _pad(old[lo:hi], width, device)
            if ppo_epoch == 0:
                # Rows without a pi_old (loss prompt not the one sampled from) take the trainer's
                # own log-probs: the weights have not moved yet this step, so they are exactly
                # what a separate no-grad pass would compute.
                # The others: sampler vs trainer, same weights, so any gap is numerics (bf16,
                # cached decode vs one full pass). A material one would clip on noise, so this
                # micro-batch then trains against the trainer's own log-probs too.
                # --recompute-gap's 1e-3: float32 measures ~1e-6; bf16 on the tiny world
                # ~3e-4 with the float32 head (1e-3 with a bf16 head), its largest gaps then
                # 0.02 (0.07), against a clip range of log 1.2 = 0.18
                fresh = torch.tensor([o is None for o in old[lo:hi]], device=device)[:, None]
                gaps = torch.where(mask & ~fresh, (new_lp.detach() - old_t).abs(), 0)
                gap, gap_sum = max(gap, float(gaps.max())), gap_sum + float(gaps.sum())
                if float(gaps.sum()) > cfg.recompute_gap * float((mask & ~fresh).sum()):
                    fresh = torch.ones_like(fresh)
                if bool(fresh.any()):
                    old_t = torch.where(fresh, new_lp.detach(), old_t)
                    old[lo:hi] = [row[:len(c)].tolist() for row, c in zip(old_t, completions[lo:hi])]
                    n_recomputed += int(fresh.sum())
            ref_t = _pad(ref_lp[lo:hi], width, device) if ref_lp is not None else None
            adv = advantages[lo:hi].to(device)
            loss, s = grpo_loss(new_lp, old_t, adv, mask, ref_t, cfg.beta, cfg.clip_eps, cfg.loss_agg, total)
            loss.backward()
            loss_sum += float(loss.detach())
            stats.clipped += s.clipped
            if ppo_epoch == 0:
                stats.kl += s.kl
                stats.tokens += s.tokens
        for p in params:  # every process must join the all-reduce, even with no rows here
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dist.average_gradients(model)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        optimizer.step()
    return {"rows": int(n_rows), "kl": stats.kl, "tokens": stats.tokens, "clipped": stats.clipped,
            "loss": loss_sum, "grad_norm": grad_norm, "gap": gap, "gap_sum": gap_sum, "recomputed": n_recomputed}


def step_metrics(sums: dict, info: dict, dist, cfg: GRPOConfig, step: int, steps_per_epoch: int,
                 lr: float) -> dict:
    """One line of metrics.jsonl: the processes' sums added up, then divided. A reward may log a
    part on some completions only, so the processes' keys can differ: the sums are over the union
    of their keys, a key a process lacks counting 0 there."""
    names = sorted(set().union(*dist.gather(sorted(sums))))
    tot = dict(zip(names, dist.sum([sums.get(k, 0.0) for k in names])))
    part_names = sorted(k[len("part_"):] for k in names if k.startswith("part_"))
    n = max(tot["rows"], 1)
    mean_reward = tot["reward"] / n
    return {
        "step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 3),
        "reward": mean_reward, "reward_std": math.sqrt(max(tot["reward_sq"] / n - mean_reward ** 2, 0.0)),
        **{f"reward_{k}": tot[f"part_{k}"] / n for k in part_names},
        "accuracy": tot["part_correct"] / n if "correct" in part_names else None,
        "completion_tokens": tot["tokens"] / n, "truncated": tot["truncated"] / n,
        "zero_variance_groups": tot["zero_var"] / max(tot["groups"], 1), "trained_completions": info["trained_rows"],
        "kl": tot["kl"] / max(tot["trained_tokens"], 1),
        "clip_fraction": tot["clipped"] / max(tot["trained_tokens"] * cfg.ppo_epochs, 1),
        "loss": tot["loss"] / (max(cfg.ppo_epochs, 1) * dist.world_size), "grad_norm": info["grad_norm"],
        "logprob_gap": info["gap"], "lr": lr,
        "logprob_gap_mean": tot["gap_sum"] / max(tot["trained_tokens"], 1),  # vs --recompute-gap
        "old_recomputed": tot["recomputed"] / max(info["trained_rows"], 1),  # trained against the trainer's pi_old
        "rollout_seconds": round(info["rollout_seconds"], 3), "train_seconds": round(info["train_seconds"], 3),
    }


def save_checkpoint(model, optimizer, tokenizer, folder: Path, step: int, run_config: dict):
    """Weights (LoRA merged) and the trainer state (resume.py): optimiser, torch RNG and LoRA
    adapters as tensors; step, Python RNG and the options as JSON."""
    tensors, param_groups = resume.trainer_tensors(model, optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    resume.save_checkpoint(model, folder, tokenizer.folder, tensors,
                           {"step": step, "param_groups": param_groups,
                            "python_rng": random.getstate(), "config": run_config})


def load_policy(cfg: GRPOConfig, dist, out: Path, run_config: dict):
    """The policy, its frozen reference (None when --beta is 0 or with LoRA, whose reference is
    the model with its adapters off), the tokenizer, the optimiser and the step to start from.
    With --resume: from the newest complete checkpoint in `out`, after the main process has put
    right what a kill during a save left behind, with the optimiser and random states it saved,
    and only if the options are the saved run's (run_config, MAY_CHANGE_ON_RESUME excepted)."""
    device = dist.device
    resume_from, tensors, state = resume.checkpoint_to_resume(out, cfg.resume, dist)
    if state is not None:  # before anything is loaded: the reference below is --model's, unchecked otherwise
        resume.check_config(state["config"], run_config, MAY_CHANGE_ON_RESUME, resume_from, removed=REMOVED_OPTIONS)
    # With LoRA the checkpoint holds merged weights; we rebuild base + adapters instead, so the
    # reference (adapters off) is still the original model.
    weights = resume_from if resume_from is not None and not cfg.lora_rank else cfg.model
    model = Qwen2.from_pretrained(weights, dtype=cfg.dtype or "float32", device=device)
    # The tokenizer (and what every save copies beside the weights) comes from --model, never
    # from the checkpoint resumed from: rotation deletes that folder a few saves later.
    tokenizer = load_tokenizer(cfg.model)
    ref = None
    if cfg.lora_rank:
        add_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        if state is not None:
            resume.load_adapters(model, tensors, resume_from)
    elif cfg.beta:
        ref = Qwen2.from_pretrained(cfg.model, dtype=cfg.dtype or "float32", device=device)
        ref.requires_grad_(False)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    if cfg.compile:
        compile_decode(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # run.adamw: decay on matrices only
    start_step = 0
    if state is not None:
        resume.load_optimizer(optimizer, tensors, state["param_groups"])
        start_step = state["step"]
        version, internal, gauss_next = state["python_rng"]  # random.getstate(), tuples as JSON lists
        random.setstate((version, tuple(internal), gauss_next))
        torch.set_rng_state(tensors["rng.torch"])
    return model, ref, tokenizer, optimizer, start_step


def check_grpo_config(cfg: GRPOConfig, examples: Sequence[Any]):
    """What argparse cannot check alone, for train_grpo's callers that build a GRPOConfig in code."""
    if not examples:
        raise ValueError("train_grpo: no examples")
    if cfg.group_size < 2:
        raise ValueError(f"--group-size {cfg.group_size}: GRPO needs at least 2 completions per prompt")
    if cfg.loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"--loss-agg {cfg.loss_agg!r}: expected one of {LOSS_AGGREGATIONS}")
    if cfg.lr_schedule not in ("linear", "constant"):
        raise ValueError(f"--lr-schedule {cfg.lr_schedule!r}: expected linear or constant")
    refuse_16bit_full_finetuning(cfg.dtype, cfg.lora_rank)  # trained weights stay float32


def step_prompts(examples, build_prompt, tokenizer, cfg: GRPOConfig, dist, step: int):
    """This process's share of step `step`'s prompts (whole groups): their examples, the token
    ids to sample from and the token ids the loss conditions on. A prompt's random masks are a
    function of the step, so a resumed run continues exactly."""
    picks = dist.shard(step_examples(len(examples), cfg.prompts_per_step, step, cfg.seed))
    chosen = [examples[i] for _, i in picks]
    texts = [build_prompt(ex, random.Random(f"{cfg.seed}:prompt:{epoch}:{i}")) for ex, (epoch, i) in zip(chosen, picks)]
    pairs = [text if isinstance(text, tuple) else (text, text) for text in texts]
    prompt_ids = tokenizer.encode_batch([sample for sample, _ in pairs])
    same = all(sample == loss for sample, loss in pairs)   # stage 2: one prompt, encoded once
    loss_ids = prompt_ids if same else tokenizer.encode_batch([loss for _, loss in pairs])
    return chosen, prompt_ids, loss_ids


def train_grpo(config: GRPOConfig | argparse.Namespace, examples: Sequence[Any],
               build_prompt: Callable[[Any, random.Random], str | tuple[str, str]], reward_fn: RewardFn,
               desc: str = "grpo", options: dict | None = None) -> dict:
    """GRPO on `examples`: build_prompt(example, rng) gives each prompt's text and
    reward_fn(completion, example) scores each completion (a Completion: text, tokens, limit,
    truncated; rewards.py). Writes the final checkpoint, metrics.jsonl and intermediate
    checkpoints to config.out; returns a summary (steps, out, first and last reward and length).

    build_prompt may also return a pair (prompt to sample from, prompt the loss conditions the
    completions on): stage 3 samples rewrites from a rewriting prompt and can train them under
    the plain evaluation prompt; pi_old is then the trainer's (grpo_step).

    options: the whole command line (vars(args)), when the caller has more options than
    GRPOConfig (the data, the reward); they are saved with each checkpoint and --resume refuses
    to continue when one of them changed (MAY_CHANGE_ON_RESUME excepted)."""
    cfg = config if isinstance(config, GRPOConfig) else GRPOConfig.from_args(config)
    check_grpo_config(cfg, examples)
    owns_process_group = not torch.distributed.is_initialized()
    dist = distributed.setup(cfg.device)
    if cfg.prompts_per_step < dist.world_size:
        raise ValueError(f"--prompts-per-step {cfg.prompts_per_step} is smaller than the {dist.world_size} processes")
    out = Path(cfg.out)
    resume.refuse_existing_run(out, cfg.resume)
    cli.on_interrupt(lambda: resume.how_to_continue(out))  # Ctrl-C says what --resume will do
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # 1. the policy (from the newest complete checkpoint when resuming), its reference, the optimiser
    run_config = {**dataclasses.asdict(cfg), **(options or {})}
    model, ref, tokenizer, optimizer, start_step = load_policy(cfg, dist, out, run_config)
    steps_per_epoch = math.ceil(len(examples) / cfg.prompts_per_step)
    max_steps = cfg.max_steps if cfg.max_steps is not None else max(1, round(cfg.epochs * steps_per_epoch))
    stop_fn = should_stop if cfg.stop == "answer" else None
    metrics_path = out / "metrics.jsonl"
    if dist.is_main:   # keep the steps before the resume point, so a resumed run reads as one run
        resume.truncate_metrics(metrics_path, start_step)

    # 2. the steps: prompts, sampling and learning rate are functions of the step number, so a
    #    resumed run continues exactly; each step writes its line of metrics.jsonl and, every
    #    --save-every steps, a checkpoint
    history: list[dict] = []
    bar = tqdm(range(start_step, max_steps), initial=start_step, total=max_steps, desc=desc,
               disable=cfg.quiet or not dist.is_main, dynamic_ncols=True)
    for step in bar:
        chosen, prompt_ids, loss_ids = step_prompts(examples, build_prompt, tokenizer, cfg, dist, step)
        generator = torch.Generator(device=dist.device).manual_seed(cfg.seed * 1_000_003 + step * 1009 + dist.rank)
        lr = learning_rate(cfg, step, max_steps)
        sums, info = grpo_step(model, ref, optimizer, tokenizer, cfg, dist, prompt_ids, loss_ids, chosen,
                               reward_fn, generator, lr, stop_fn)
        record = step_metrics(sums, info, dist, cfg, step, steps_per_epoch, lr)
        history.append(record)
        if dist.is_main:
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix(reward=f"{record['reward']:.3f}", len=f"{record['completion_tokens']:.0f}",
                            acc=f"{record['accuracy'] or 0:.2f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < max_steps and dist.is_main:
            save_checkpoint(model, optimizer, tokenizer, out / f"checkpoint-{step + 1}", step + 1, run_config)
            resume.remove_old_checkpoints(out, cfg.keep_checkpoints)
        dist.barrier()
    bar.close()

    # 3. the final checkpoint, beside metrics.jsonl
    if dist.is_main:
        resume.save_final(model, out, tokenizer.folder)
    dist.barrier()
    summary = {"steps": max_steps, "out": str(out)}
    if dist.enabled:   # one process has nothing to compare and skips hashing the whole model
        summary["weights_sha256"] = check_same_weights(model, dist, desc)
    if history:
        first, last = history[0], history[-1]
        summary.update(first_reward=first["reward"], last_reward=last["reward"],
                       first_tokens=first["completion_tokens"], last_tokens=last["completion_tokens"])
    if owns_process_group:
        dist.close()
    return summary


# -----------------------------------------------------------------------------
# 6. Command line


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description="BRIDGE stage 2: GRPO on masked completion.")
    add_grpo_arguments(parser)
    g = parser.add_argument_group("stage 2 data and reward")
    add_teacher_arguments(g, rows="2000:4000")   # the authors' stage-2 rows
    add_reward_arguments(g, default="paper")
    g.add_argument("--mask-answer-steps", action="store_true",
                   help="always mask the teacher steps that state the gold answer, so the prompt never gives "
                        "it away (the paper masks at random; see mask_steps)")
    g.add_argument("--prompt", default="masked", choices=["masked", "plain"],
                   help="masked: the question with the teacher's steps, some masked (BRIDGE); plain: eval.py's "
                        "prompt alone, i.e. GRPO without a curriculum (a baseline)")
    args = parser.parse_args(argv)
    reward, reward_opts = reward_from_args(args)

    examples = load_from_args(args)
    reward_fn = bind_reward(reward, reward_opts, examples, desc="stage 2")
    prompt_fn = prompt_builder(args.prompt, args.mask_answer_steps)
    summary = train_grpo(GRPOConfig.from_args(args), examples, prompt_fn, reward_fn, desc="stage2", options=vars(args))
    if "last_reward" in summary:
        print(f"stage 2: {summary['steps']} steps, mean reward {summary['first_reward']:.3f} -> "
              f"{summary['last_reward']:.3f}, completion tokens {summary['first_tokens']:.1f} -> "
              f"{summary['last_tokens']:.1f} -> {summary['out']}")
    return summary


if __name__ == "__main__":
    cli.run(main)
