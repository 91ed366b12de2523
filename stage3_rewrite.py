"""
Stage 3 of BRIDGE: teach the student, with GRPO, to rewrite the teacher's reasoning concisely on
the questions it still gets wrong after stage 2 (../shared/PAPER.md, "Stage 3").

Why a third stage. After stage 2 the student writes short, structured reasoning, but some
training questions stay out of reach: sampling more from the student does not help, because
none of its samples is right, so GRPO has nothing to reinforce. Stage 3 puts the teacher's full
rationale in front of the student and rewards it for a correct rewrite that is shorter than the
teacher's. The questions are the student's own persistent failures, so its reward signal is
spent exactly where it is weakest.

The pieces, in the order this file defines them:
  1. failure mining   - k attempts per question; a question is a persistent failure when at
                        least t of them are wrong (default t = k: never right). The default,
                        k=1 greedy attempt (--attempts 1 --mine-temperature 0), is the
                        authors' rule; e.g. --attempts 4 --mine-temperature 0.7 samples.
                        The mined set is written as JSONL (a valid teacher file plus the
                        attempts), and `--failures PATH` reuses one instead of mining.
  2. the prompt       - the question and the teacher's full rationale, with the instruction to
                        rewrite it step by step, shorter, same answer, ending in `Final Answer: N`.
  3. rewards          - `paper_rewrite`, the ratio reward of PAPER.md, and alternatives by name,
                        registered in the one registry (rewards.py), so stage 2's rewards (and
                        options) are offered here too.
  4. GRPO             - imported from stage2_grpo.py: the same loop, options, metrics.jsonl,
                        checkpoints and --resume. Only the prompts and the reward are this file's.

Which prompt the loss conditions on (`--policy-prompt`). The rollouts are sampled from the
rewriting prompt, because that is where the teacher's rationale is; the evaluation asks the
question with no rationale at all (eval.PROMPT_TEMPLATE).
  rewrite (the default, the paper's text) - GRPO as in stage 2, on-policy: the loss conditions
      each rewrite on the rewriting prompt it was sampled from. The student learns to rewrite,
      and what that shares with answering (the short step format, the final line) reaches the
      zero-shot evaluation.
  eval - the same sampled rewrite is trained as an answer to the plain evaluation prompt, so the
      correct concise rewrites of questions the student could not solve become answers it
      learns to give unaided. This is not a policy gradient: the samples did not come from
      pi(.|eval prompt), and no importance weight can correct for the change of prompt. So
      stage 2's grpo_step keeps only the better rewrites' push (negative advantages clamped to
      0): reward-weighted fine-tuning on the student's own best rewrites, as STaR's
      "rationalization" is, and the k3 term is a regulariser toward the reference under the
      eval prompt, not an estimate of the KL of the samples. The authors' released code scores
      the response with no prompt at all, which is closer to this reading than to the first.
The README compares the two on the tiny world.

The defaults are the authors' settings (G=2, temperature 0.7, top-p 0.9, 512 new tokens, lr
1e-5, KL weight 0.1, 5 epochs, one AdamW step per 2 prompts, failures mined from teacher rows
2000: with one greedy attempt).

    python stage3_rewrite.py --model runs/tiny/stage2 --teacher-data runs/tiny/world/teacher.jsonl \
        --rows 400: --out runs/tiny/stage3 --attempts 2 --mine-temperature 0.7 --group-size 8
    python stage3_rewrite.py --model runs/paper/stage2 --teacher-data ../shared/data/bridge/stage3_error_samples.json \
        --failures ../shared/data/bridge/stage3_error_samples.json --out runs/paper/stage3   # the authors' failure set
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm

import cli
import distributed
import resume
import stage2_grpo as stage2
from eval import answer_in_batches, build_prompt, extract_answer, is_correct
from generate import compile_decode
from model import Qwen2
from cli import nonnegative_float, nucleus, positive_int, write_atomic
from rewards import (REWARDS, Completion, add_reward_arguments, answer_part, bind_reward, is_right,
                     reward_from_args, well_formed)
from teacher import add_teacher_arguments, format_rationale, load_from_args, load_teacher_data
from tokenizer import load_tokenizer

# -----------------------------------------------------------------------------
# 1. Failure mining


@dataclass
class Attempt:
    """One of the student's answers to the plain evaluation prompt."""
    completion: str
    prediction: str | None
    correct: bool


@dataclass
class Failure:
    """A training question the student keeps getting wrong, with the teacher's rationale.
    Written as one JSONL line; the first four fields are the teacher-data format, so the mined
    file is itself a teacher file that teacher.load_teacher_data reads."""
    question: str
    answer: str                     # the gold answer, a number as a string
    rationale: str                  # the teacher's full rationale
    steps: list[str]
    row: int = -1                   # index of the question in --teacher-data (after --rows)
    wrong: int = 0                  # how many attempts were wrong
    attempts: list[Attempt] = field(default_factory=list)


def is_persistent(wrong: int, attempts: int, threshold: int) -> bool:
    """At least `threshold` of `attempts` wrong. threshold = attempts: never right once."""
    if not 1 <= threshold <= attempts:
        raise ValueError(f"failure threshold must be between 1 and the number of attempts "
                         f"({attempts}), got {threshold}")
    return wrong >= threshold


# A sampler answers each question k times: (questions, k) -> k completions per question.
Sampler = Callable[[Sequence[str], int], list[list[str]]]


def model_sampler(model, tokenizer, temperature: float = 0.7, top_p: float = 1.0,
                  max_new_tokens: int = 512, batch_size: int = 16, seed: int = 0,
                  progress: bool = False) -> Sampler:
    """The student answering the evaluation prompt exactly as eval.py asks it (same prompt, same
    stop rule), k samples per question sharing one prefill. temperature 0 is greedy (then the k
    attempts are identical, so use k=1)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)

    def sample(questions: Sequence[str], k: int) -> list[list[str]]:
        prompts = tokenizer.encode_batch([build_prompt(q) for q in questions])
        out: list[list[str]] = [[] for _ in questions]
        per_call = max(1, batch_size // k)  # batch_size counts rows, and each prompt makes k rows
        bar = tqdm(total=len(questions), desc="mining", disable=not progress, dynamic_ncols=True)
        for batch, gen in answer_in_batches(model, tokenizer, prompts, per_call, max_new_tokens, k=k,
                                            temperature=temperature, top_p=top_p, generator=generator):
            for j, i in enumerate(batch):
                out[i] = [tokenizer.decode(t) for t in gen.tokens[j * k:(j + 1) * k]]
            bar.update(len(batch))
        bar.close()
        return out

    return sample


def mine_failures(examples: Sequence, sampler: Sampler, attempts: int = 4, threshold: int | None = None,
                  rows: Sequence[int] | None = None) -> list[Failure]:
    """The persistent failures among `examples` (teacher records with question, answer, rationale,
    steps), in input order. `rows` numbers the examples in the output (default 0, 1, ...)."""
    threshold = attempts if threshold is None else threshold
    is_persistent(0, attempts, threshold)  # validate before spending any compute
    completions = sampler([e.question for e in examples], attempts)
    failures = []
    for n, (example, answers) in enumerate(zip(examples, completions)):
        if len(answers) != attempts:
            raise ValueError(f"sampler returned {len(answers)} attempts for question {n}, expected {attempts}")
        tried = []
        for text in answers:
            prediction = extract_answer(text)
            tried.append(Attempt(text, prediction, is_correct(prediction, example.answer)))
        wrong = sum(not a.correct for a in tried)
        if is_persistent(wrong, attempts, threshold):
            failures.append(Failure(example.question, example.answer, example.rationale, list(example.steps),
                                    row=rows[n] if rows is not None else n, wrong=wrong, attempts=tried))
    return failures


def save_failures(path: Path, failures: Sequence[Failure]):
    write_atomic(Path(path), "".join(json.dumps(asdict(f)) + "\n" for f in failures))


# -----------------------------------------------------------------------------
# 2. The rewriting prompt

REWRITE_TEMPLATE = (
    "Here is a math problem and a correct solution to it. Rewrite the solution step by step so "
    "that it is much shorter: fewer steps, fewer words, no restating of the question, the same "
    "answer.\n"
    "Question: {question}\n"
    "Solution:\n{rationale}\n"
    'Write the shorter solution as "Step 1: ...", "Step 2: ..." and end it with "Final Answer: [number]"\n'
    "Shorter solution:"
)


def build_rewrite_prompt(question: str, rationale: str) -> str:
    return REWRITE_TEMPLATE.format(question=question.strip(), rationale=rationale.strip())


# -----------------------------------------------------------------------------
# 3. Rewards: reward(completion, example) -> float, chosen by name with --reward
#
# The contract is rewards.py's, as in stage 2: `completion` a Completion (text, token count, limit,
# truncated, and `parts` for the components metrics.jsonl logs), `example` a Failure (or any
# teacher record). The registry and the options (--reward-option, --words-per-step,
# --overlong-buffer) are the same: `paper` judges a rewrite as stage 2 judges a completion, its
# budget B = words_per_step * the teacher's steps.


def word_count(text: str) -> int:
    return len(text.split())


def compression_bonus(ratio: float) -> float:
    """c(ratio) of PAPER.md: -0.5*min(ratio-1, 1) above 1; 0 on (0.8, 1]; 0.5*(0.8-ratio)/0.3 on
    (0.5, 0.8]; 0.5 + 0.3*min((0.5-ratio)/0.3, 1) at or below 0.5. Continuous, from -0.5
    (twice the teacher's length or more) to +0.8 (a fifth of it or less)."""
    if ratio > 1:
        return -0.5 * min(ratio - 1, 1.0)
    if ratio > 0.8:
        return 0.0
    if ratio > 0.5:
        return 0.5 * (0.8 - ratio) / 0.3
    return 0.5 + 0.3 * min((0.5 - ratio) / 0.3, 1.0)


def teacher_words(example) -> int:
    """The length a rewrite is compared with: the teacher's rationale as the student is trained to
    write it (teacher.format_rationale, stage 1's target: the steps and the answer line). The
    authors' rationales also hold a "Thinking..." section (--thinking keep), which stage 1 does not
    teach; counting it would pay a rewrite that merely copies the steps for halving the teacher."""
    return word_count(format_rationale(example.steps, str(example.answer)))


def _judge(completion: Completion, example) -> tuple[bool, bool, float]:
    """(right answer, has `Step k:` and `Answer:`, word ratio to the teacher), logged in its parts."""
    text = answer_part(completion.text)
    correct = is_right(text, example)
    formatted = well_formed(text)
    ratio = word_count(text) / max(1, teacher_words(example))
    completion.parts.update(correct=float(correct), format=float(formatted), ratio=ratio, words=float(word_count(text)))
    return correct, formatted, ratio


def paper_rewrite(completion: Completion, example) -> float:
    """The paper's stage-3 reward, with ratio = response words / teacher-rationale words
    (teacher_words: the steps and the answer line, without any "Thinking..." section):

        wrong answer                                  -2
        right answer, no `Step k:` or no `Answer:`    -1
        otherwise                                     1 + c(ratio)

    c(ratio) = -0.5*min(ratio - 1, 1)               if ratio > 1
               0                                    if 0.8 < ratio <= 1
               0.5*(0.8 - ratio)/0.3                if 0.5 < ratio <= 0.8
               0.5 + 0.3*min((0.5 - ratio)/0.3, 1)  if ratio <= 0.5

    so a correct rewrite earns 0.5 (twice the teacher's length or more) to 1.8 (a fifth of it
    or less). Words are whitespace-separated pieces, counted up to the end of the answer line."""
    correct, well_formed, ratio = _judge(completion, example)
    if not correct:
        return -2.0
    if not well_formed:
        return -1.0
    return 1.0 + compression_bonus(ratio)


def rewrite_linear(completion: Completion, example) -> float:
    """paper_rewrite with a compression term that is never flat: wrong -2, missing steps or
    answer -1, else 1 + clip(1 - ratio, -0.5, 0.8). The paper's term gives no signal between
    0.8 and 1 times the teacher's length, so a group of near-copies of the teacher has zero
    reward spread and teaches nothing; this one rewards every word saved."""
    correct, well_formed, ratio = _judge(completion, example)
    if not correct:
        return -2.0
    if not well_formed:
        return -1.0
    return 1.0 + min(max(1.0 - ratio, -0.5), 0.8)


# Registered in the one registry (rewards.py), which offers the other rewards here too (stage 2's
# hierarchical length reward, correctness alone, DAPO's overlong penalty, cosine length) and any
# reward added to it. (REWARDS is that registry under this file's name.)
REWARDS.update(paper_rewrite=paper_rewrite, rewrite_linear=rewrite_linear)


# -----------------------------------------------------------------------------
# 4. GRPO, imported from stage 2, with the policy gradient taken under a chosen prompt

POLICY_PROMPTS = ("eval", "rewrite")


def rewrite_prompt_of(example, rng=None) -> str:
    """train_grpo's prompt builder: the rewriting prompt, which the rollouts are sampled from."""
    return build_rewrite_prompt(example.question, example.rationale)


def rewrite_then_eval_prompt_of(example, rng=None) -> tuple[str, str]:
    """train_grpo's prompt builder for --policy-prompt eval: sample from the rewriting prompt,
    condition the loss on the evaluation prompt."""
    return rewrite_prompt_of(example), build_prompt(example.question)


# -----------------------------------------------------------------------------
# 5. Command line


def mine(args, examples: Sequence, dist) -> list[Failure]:
    """Every process mines its share of the questions; all of them get the whole set back. The
    model is loaded as eval.py loads it (the stored dtype unless --dtype says otherwise)."""
    model = Qwen2.from_pretrained(args.model, dtype=args.dtype, device=dist.device)
    if args.compile:
        compile_decode(model)
    tokenizer = load_tokenizer(model.source_dir)
    mine_rows = dist.shard(list(range(len(examples))))
    sampler = model_sampler(model, tokenizer, args.mine_temperature, args.mine_top_p, args.mine_max_new_tokens,
                            args.mine_batch_size, seed=args.seed + dist.rank,
                            progress=dist.is_main and not args.quiet)
    mined = mine_failures([examples[i] for i in mine_rows], sampler, args.attempts, args.failure_threshold,
                          rows=mine_rows)
    del model
    if dist.device.type == "cuda":
        torch.cuda.empty_cache()
    return sorted((f for part in dist.gather(mined) for f in part), key=lambda f: f.row)


def main(argv=None) -> dict:
    parser = cli.ArgumentParser(description="BRIDGE stage 3: GRPO on rewriting the teacher's rationale "
                                "for the student's persistent failures.")
    stage2.add_grpo_arguments(parser)
    parser.set_defaults(max_new_tokens=512, epochs=5.0, prompts_per_step=2)  # the authors' stage-3 settings
    g = parser.add_argument_group("stage 3: failure mining")
    add_teacher_arguments(g, rows="2000:")   # the authors mined rows 2000 onwards
    g.add_argument("--failures", default=None,
                   help="train on this failure set instead of mining one: a failures.jsonl written by "
                        "this script, any teacher JSONL, or the authors' stage3_error_samples.json")
    g.add_argument("--attempts", type=positive_int, default=1,
                   help="k answers per question (k=1 with --mine-temperature 0: the authors' rule)")
    g.add_argument("--failure-threshold", type=positive_int, default=None,
                   help="t: persistent failure when at least t of the k attempts are wrong (None: k)")
    g.add_argument("--mine-temperature", type=nonnegative_float, default=0.0, help="0: greedy (the authors)")
    g.add_argument("--mine-top-p", type=nucleus, default=1.0, help="nucleus sampling mass (with temperature > 0)")
    g.add_argument("--mine-max-new-tokens", type=positive_int, default=512, help="as eval.py")
    g.add_argument("--mine-batch-size", type=positive_int, default=32, help="sequences per generate call")
    g = parser.add_argument_group("stage 3: prompt and reward")
    add_reward_arguments(g, default="paper_rewrite")
    g.add_argument("--policy-prompt", default="rewrite", choices=POLICY_PROMPTS,
                   help="the prompt each sampled rewrite is scored under in the loss: the rewriting prompt it was "
                        "sampled from (GRPO), or the plain evaluation prompt (reward-weighted fine-tuning on the "
                        "better rewrites; see the docstring)")
    args = parser.parse_args(argv)
    if args.failure_threshold is None:
        args.failure_threshold = args.attempts
    if args.failure_threshold > args.attempts:  # a bad threshold fails before any work
        parser.error(f"argument --failure-threshold: expected an integer in [1, --attempts = {args.attempts}], "
                     f"got {args.failure_threshold}")
    reward, reward_opts = reward_from_args(args)   # so does a bad reward or option

    dist = distributed.setup(args.device)
    out = Path(args.out)
    resume.refuse_existing_run(out, args.resume)   # before mining, which takes a while
    cli.on_interrupt(lambda: resume.how_to_continue(out))  # Ctrl-C says what --resume will do
    stage2.refuse_16bit_full_finetuning(args.dtype, args.lora_rank)  # so is this one
    mined_path = out / "failures.jsonl"

    # 1. the failure set: given, reused on --resume, or mined from the student's own answers
    source = args.failures or (str(mined_path) if args.resume and mined_path.is_file() else None)
    if source:
        failures = load_teacher_data(source, quiet=not dist.is_main, thinking=args.thinking)
        note = f"{len(failures)} failures from {source}"
    else:
        examples = load_from_args(args, quiet=not dist.is_main)
        failures = mine(args, examples, dist)
        if dist.is_main:
            save_failures(mined_path, failures)
        note = (f"{len(failures)} persistent failures of {len(examples)} questions "
                f"(>= {args.failure_threshold} of {args.attempts} attempts wrong) -> {mined_path}")
    if dist.is_main:
        print(f"stage 3: {note}")
    if not failures:
        raise SystemExit(f"stage 3: no persistent failures to train on ({note})")

    # 2. GRPO on the rewriting prompts, with the chosen reward and the chosen loss prompt
    reward_fn = bind_reward(reward, reward_opts, failures, desc="stage 3")
    prompt_of = rewrite_then_eval_prompt_of if args.policy_prompt == "eval" else rewrite_prompt_of
    summary = stage2.train_grpo(stage2.GRPOConfig.from_args(args), failures, prompt_of, reward_fn, desc="stage3",
                                options=vars(args))  # saved with each checkpoint; --resume checks them
    summary.update(failures=len(failures), failures_path=str(source or mined_path))
    dist.close()
    if dist.is_main and "last_reward" in summary:
        print(f"stage 3: {summary['steps']} steps, mean reward {summary['first_reward']:.3f} -> "
              f"{summary['last_reward']:.3f}, completion tokens {summary['first_tokens']:.1f} -> "
              f"{summary['last_tokens']:.1f} -> {summary['out']}")
    return summary


if __name__ == "__main__":
    cli.run(main)
