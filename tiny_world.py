"""
The tiny world: the whole BRIDGE curriculum on a laptop CPU, with no downloads.

Real runs need Qwen2.5 weights and a GPU. This file builds a miniature of the paper's setting in
which every script runs unchanged: grade-school word problems over small integers (2-4 steps of
add, subtract, multiply, share equally), a byte-level BPE tokenizer trained on them, and a
Qwen2.5-architecture "base model" (model.py, a small config) pre-trained with plain next-token
loss. What makes it a miniature of the paper and not just a small dataset:

- The base model has read every prompt the curriculum will show it. Qwen2.5 base follows the
  eval prompt, stage 1's shuffled steps, stage 2's hinted steps and stage 3's rewriting request
  because its pre-training was broad; a tiny model follows only what it was shown. So its
  pre-training documents are the four prompt forms (FORMS, each built by the stage's own code),
  and world.json records how the base does under each (the curriculum needs reward spread in
  every form it trains on).
- The base model errs the way a base model does, systematically. Most of its pre-training
  solutions ramble (they restate every fact and sometimes re-check a sum; a quarter are laid out
  like the teacher's, as a real base model has read tidy solutions too, and prefers none), slip
  on arithmetic now and then, and misread two misleading sentences most of the time
  (MISLEADING: "sells" read as a purchase, "after a trade ... N times as many" read as N more),
  unless the prompt shows that step worked out. Greedy decoding reproduces the misreading, so
  the ~40% of held-out questions with such a sentence start out wrong for a reason the
  teacher's rationales can fix.
- The teacher is too verbose for the student, the paper's premise. Its rationales are always
  right and written like an R1-distilled teacher's (verbose_teacher_steps): a paragraph per
  operation, the solution buried in detours (what is asked, the question read again, "wait, let
  me double-check that", running totals, a final verification), each there more often than not.
  They are ~1.3x as long as the base model's own answers in tokens (the paper's: ~1.7x) and vary
  in length from problem to problem. A student that imitates them whole writes every detour and
  has more numbers to keep track of than the answer needs (stage 1 and the `sft` baseline get
  longer); one that drops them is still right: stages 2 and 3 have something to take away. The
  numbers stay small (up to 12) so that the base can do the arithmetic and errs through what it
  writes around it, as the paper's competent 3B base does.
- `--teacher tidy` is the control world: the teacher of earlier versions, a rationale of 5-7
  short steps that is *shorter* than the base's rambling, which the student simply copies
  (README, "The control world"). `--teacher-checks R` makes the tidy teacher double-check a
  share R of its calculations in steps of their own. A concise 2-3 step rationale exists in the
  generator for comparison.

What a world folder holds (every file is rebuilt from the seed; nothing here is committed):
    train.jsonl     GSM8K-format training questions ({"question", "answer": "... #### N"})
    test.jsonl      held-out questions, disjoint from everything the base model or stages see
    teacher.jsonl   {"question", "answer", "rationale", "steps"} per training question (teacher.py reads it)
    concise.jsonl   the same questions with the short 2-4 step rationale (for inspection)
    tokenizer/      tokenizer.json (+ tokenizer_config.json, generation_config.json)
    base/           the pre-trained base checkpoint (loads with Qwen2.from_pretrained)
    world.json      the preset, the seed, sizes, timing and the settings the stages should use here

    python tiny_world.py --out runs/tiny/world --preset tiny      # ~5 min on 2 CPU cores
    python tiny_world.py --out runs/control/world --teacher tidy  # the control world
    python tiny_world.py table runs/tiny                          # the curriculum's results table
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cli
# torch and the stages are imported inside the functions that need them, so importing this file
# and `python tiny_world.py table RUN` (the runner's last command) do without torch; building a
# world loads it.

# -----------------------------------------------------------------------------
# 1. Presets: how big a world, how long the base model trains


@dataclass
class Preset:
    n_train: int              # training questions (train.jsonl / teacher.jsonl rows)
    n_test: int               # held-out questions
    min_ops: int              # operations per problem
    max_ops: int
    vocab_size: int           # BPE vocabulary, special token included
    hidden: int               # model width
    layers: int
    heads: int
    kv_heads: int
    base_steps: int           # optimizer steps of base pre-training
    batch_size: int
    lr: float
    error_rate: float = 0.1   # share of pre-training solutions with one slip of arithmetic
    misread_rate: float = 0.75  # how often the pre-training author misreads a misleading sentence
    structured_rate: float = 0.25  # pre-training solutions laid out like the teacher's, not rambling
    teacher: str = "verbose"       # the teacher's style (TEACHERS): verbose, R1-like (the default), or tidy (the control)
    detour_rate: float = 0.7       # verbose teacher: how often each of its detours is there
    teacher_checks: float = 0.0    # tidy teacher: share of its calculations it double-checks in a step of its own
    max_value: int = 99       # every number in a problem, intermediate results included
    # the base's pre-training mixture: which prompt each solution follows (see FORMS)
    form_shares: tuple = (0.4, 0.2, 0.2, 0.2)
    n_form_probe: int = 200   # held-out problems on which world.json reports the base under each form
    bf16: bool = True         # bf16 autocast for pre-training where the CPU has bf16 matmuls


PRESETS = {
    # for the test suite: about a minute on 2 cores, a base that is right some of the time (2
    # operations on numbers up to 20, misread half the time, so a model this small gets 10-15%).
    # 400 steps, so that it has learned to copy from a prompt: after 320, seed 0's base was right
    # 34% or 18% of the time under the reconstruction prompt, with the attention kernel the only
    # difference between the two builds (53% after 400).
    "test": Preset(n_train=400, n_test=200, min_ops=2, max_ops=2, vocab_size=768, hidden=128,
                   layers=2, heads=4, kv_heads=2, base_steps=400, batch_size=16, lr=3e-3, max_value=20,
                   misread_rate=0.5, n_form_probe=100, teacher="tidy"),
    # for `bash curriculum.sh tiny`: the base takes about 5 of the run's 15 minutes. Numbers up to
    # 12: with 20, the base got 37% of its calculations right and the curriculum had to teach
    # arithmetic, which reconstruction cannot (docs/tiny_world_log.md). It needs the
    # 700 steps: after 560 it had not learned to copy from a prompt (right 22-24% under the
    # reconstruction and hinted prompts, against 72% and 62% after 700, in builds before fd66954),
    # and stage 1 gave +1 point. lr 2e-3: at 3e-3 the loss of every world jumped 1.25-2.5x late in
    # the warm-up, and in one build world 1's base then never learned to use the prompt (25.5% under the
    # reconstruction prompt; 87% at 2e-3, docs/tiny_world_log.md).
    "tiny": Preset(n_train=4000, n_test=500, min_ops=2, max_ops=3, vocab_size=1024, hidden=192,
                   layers=4, heads=6, kv_heads=2, base_steps=700, batch_size=32, lr=2e-3, max_value=12),
}


# -----------------------------------------------------------------------------
# 2. Problems and their rationales

NAMES = [("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Sam", "he"), ("Zoe", "she"), ("Ben", "he"),
         ("Lily", "she"), ("Max", "he"), ("Emma", "she"), ("Noah", "he"), ("Ruby", "she"), ("Jack", "he"),
         ("Nora", "she"), ("Owen", "he"), ("Ella", "she"), ("Luke", "he")]
ITEMS = ["apples", "marbles", "stickers", "cookies", "books", "pencils", "shells", "cards", "coins",
         "stamps", "eggs", "beads", "toys", "flowers", "candies", "balloons", "crayons", "rocks"]
OPS = ("add", "sub", "mul", "div")
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


@dataclass
class Step:
    op: str        # add | sub | mul | div
    operand: int
    before: int
    after: int
    fact: str      # the sentence of the question that states this step, e.g. "She buys 5 more apples."


@dataclass
class Problem:
    name: str
    pronoun: str   # she | he
    friend: str
    item: str
    start: int
    steps: list[Step]

    @property
    def answer(self) -> int:
        return self.steps[-1].after

    @property
    def question(self) -> str:
        facts = " ".join(s.fact for s in self.steps)
        return f"{self.name} has {self.start} {self.item}. {facts} How many {self.item} does {self.name} have now?"


def apply(op: str, x: int, b: int) -> int:
    return {"add": x + b, "sub": x - b, "mul": x * b, "div": x // b}[op]


def fact_sentence(rng: random.Random, op: str, b: int, p: Problem) -> str:
    she, her, item, friend = p.pronoun.capitalize(), ("her" if p.pronoun == "she" else "his"), p.item, p.friend
    him = "her" if p.pronoun == "she" else "him"
    choices = {
        "add": [f"{she} buys {b} more {item}.", f"{she} finds {b} more {item}.",
                f"{friend} gives {him} {b} more {item}."],
        "sub": [f"{she} gives {b} {item} to {friend}.", f"{she} loses {b} {item}.", f"{she} sells {b} {item}."],
        "mul": [f"Then {p.pronoun} ends up with {b} times as many {item} as before.",
                f"After a trade, {p.pronoun} has {b} times as many {item} as before."],
        "div": [f"{she} shares the {item} equally among {b} kids, {p.pronoun} included, and keeps {her} share.",
                f"{she} splits the {item} into {b} equal piles and keeps one pile."],
    }[op]
    return rng.choice(choices)


def make_problem(rng: random.Random, n_ops: int, max_value: int) -> Problem:
    """A chain of n_ops operations on a running count; every intermediate value stays in
    1..max_value and every share is exact, so all arithmetic is on small whole numbers."""
    name, pronoun = rng.choice(NAMES)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    p = Problem(name, pronoun, friend, rng.choice(ITEMS), rng.randint(2, min(30, max_value)), [])
    x = p.start
    while len(p.steps) < n_ops:
        options = {
            "add": list(range(2, min(20, max_value - x) + 1)),
            "sub": list(range(1, min(20, x - 1) + 1)),
            "mul": [b for b in range(2, 6) if x * b <= max_value],
            "div": [b for b in range(2, 6) if x % b == 0],
        }
        # no operation twice in a row (that reads oddly); a dead end starts the chain again
        ops = [op for op in OPS if options[op] and not (p.steps and p.steps[-1].op == op)]
        if not ops:
            p.steps, x = [], p.start
            continue
        op = rng.choice(ops)
        b = rng.choice(options[op])
        p.steps.append(Step(op, b, x, apply(op, x, b), ""))
        p.steps[-1].fact = fact_sentence(rng, op, b, p)
        x = p.steps[-1].after
    return p


def calc(s: Step, result: int | None = None) -> str:
    return f"{s.before} {SYMBOL[s.op]} {s.operand} = {s.after if result is None else result}"


def verbose_teacher_steps(rng: random.Random, p: Problem, detour_rate: float = 0.7) -> list[str]:
    """The default teacher, written like an R1-distilled one: right every time, and longer than
    the base model's own answers. Its steps are paragraphs, as R1's are (the paper's teacher
    writes ~4.7 steps of ~60 words): the start, one paragraph per operation that restates its fact
    and computes, and the result. The solution proper is buried in detours, each there with
    probability `detour_rate`: saying what is asked, reading the whole question again,
    double-checking each calculation, repeating the running total, verifying the whole chain at
    the end. So its length varies from problem to problem; a student that imitates it whole
    writes every detour (each is there more often than not, so greedy decoding keeps them all)
    and has many more numbers to keep track of than the answer needs, and one that drops them is
    still right. The detours are what stages 2 and 3 can take away."""
    def detour() -> bool:
        return rng.random() < detour_rate

    opening = []
    if detour():
        opening.append(f"Okay, so we need to find how many {p.item} {p.name} has now.")
    if detour():
        opening.append(f"Let me read the question again. {p.name} has {p.start} {p.item}. "
                       + " ".join(s.fact for s in p.steps))
    opening.append(f"{p.name} starts with {p.start} {p.item}.")
    out = [" ".join(opening)]
    for s in p.steps:
        step = [f"{s.fact} So {calc(s)} {p.item}."]
        if detour():
            step.append(f"Wait, let me double-check that: {calc(s)}. Yes, that is right.")
        if s is not p.steps[-1] and detour():
            step.append(f"So now {p.name} has {s.after} {p.item}.")
        out.append(" ".join(step))
    closing = []
    if detour():
        closing.append("Let me verify the whole thing once more: " + ", then ".join(calc(s) for s in p.steps)
                       + ". Correct.")
    closing.append(f"So {p.name} has {p.answer} {p.item} now.")
    out.append(" ".join(closing))
    return out


def tidy_teacher_steps(rng: random.Random, p: Problem, checks: float = 0.0) -> list[str]:
    """The control world's teacher (`--teacher tidy`): restate the goal and the start, one step
    per operation that restates its fact and computes, sometimes a step repeating the running
    total, then the result again. n + 3 steps (5-7 for 2-4 operations), plus a repeat now and
    then: shorter than the base model's rambling, so its student simply copies it (README). With
    `checks` > 0, that share of the calculations is followed by a step that does it again
    (--teacher-checks): steps a student can drop without losing anything."""
    out = [f"We need to find how many {p.item} {p.name} has now.", f"{p.name} starts with {p.start} {p.item}."]
    for s in p.steps:
        out.append(f"{s.fact} So {calc(s)} {p.item}.")
        if checks and rng.random() < checks:  # no draw at 0: the worlds without checks are unchanged
            out.append(f"Let me double-check: {calc(s)}. Correct.")
        if rng.random() < 0.2 and s is not p.steps[-1]:
            out.append(f"Now {p.name} has {s.after} {p.item}.")
    out.append(f"So {p.name} has {p.answer} {p.item} now.")
    return out


TEACHERS = ("verbose", "tidy")
# what a world built before a setting existed was built with, where that is not the setting's default
BEFORE_SETTING = {"teacher": "tidy"}


def teacher_steps(rng: random.Random, p: Problem, preset: "Preset") -> list[str]:
    """The preset's teacher's steps for problem p."""
    if preset.teacher == "verbose":
        return verbose_teacher_steps(rng, p, preset.detour_rate)
    if preset.teacher == "tidy":
        return tidy_teacher_steps(rng, p, preset.teacher_checks)
    raise ValueError(f"teacher {preset.teacher!r}: expected one of {', '.join(TEACHERS)}")


def concise_steps(p: Problem) -> list[str]:
    """One short calculation per operation: what the curriculum would ideally converge to."""
    return [f"{calc(s)}." for s in p.steps]


# Two sentences of the question mislead the base model's pre-training author, who reads "sells"
# as a purchase and "after a trade ... times as many" as that many more: an addition either way.
# The author misreads them most of the time (misread_rate), so a model trained on that text
# misreads them too under greedy decoding, and gets the right reading only when it samples.
# The teacher never misreads, and neither does the author when a hint in the prompt shows the
# step worked out. This is the world's systematic error for the curriculum to fix (the real base
# model's are dropped steps, lost quantities and misread relations in long rambling answers).
MISLEADING = {"sub": " sells ", "mul": "After a trade"}


def misleads(s: Step) -> bool:
    return s.op in MISLEADING and MISLEADING[s.op] in s.fact


def base_solution_steps(rng: random.Random, p: Problem, error_rate: float, misread_rate: float = 0.0,
                        known: frozenset[int] = frozenset(), structured: bool = False) -> tuple[list[str], int]:
    """An imperfect pre-training solution. Rambling (the default): it restates every fact of the
    question first, computes each operation, sometimes re-checks a sum. Structured: the
    teacher's layout (goal, start, one step per operation, result). Either way it misreads a
    misleading sentence with probability misread_rate (unless operation i is in `known`, worked
    out in the prompt) and with probability error_rate slips on one calculation; errors carry
    to the end. Returns (steps, its answer)."""
    she = p.pronoun.capitalize()
    if structured:
        out = [f"We need to find how many {p.item} {p.name} has now.", f"{p.name} starts with {p.start} {p.item}."]
    else:
        out = [f"The question says {p.name} has {p.start} {p.item}."]
        out += [f"The question also says: {s.fact}" for s in p.steps]
        out.append(f"We need to find how many {p.item} {p.name} has now.")
    wrong_at = rng.randrange(len(p.steps)) if rng.random() < error_rate else -1
    x = p.start
    for i, s in enumerate(p.steps):
        op = "add" if misleads(s) and i not in known and rng.random() < misread_rate else s.op
        result = apply(op, x, s.operand)
        if i == wrong_at:
            result = max(0, result + rng.choice([-2, -1, 1, 2]))
        shown = Step(op, s.operand, x, result, s.fact)
        if structured:
            out.append(f"{s.fact} So {calc(shown)} {p.item}.")
            if rng.random() < 0.2 and s is not p.steps[-1]:
                out.append(f"Now {p.name} has {result} {p.item}.")
        else:
            out.append(f"{s.fact} So {calc(shown)}.")
            if rng.random() < 0.3:
                out.append(f"Let me check: {calc(shown)}. Yes, {she.lower()} has {result} {p.item}.")
        x = result
    out.append(f"So {p.name} has {x} {p.item} now.")
    return out, x


def format_steps(steps: list[str], answer: int | str, final: str = "Answer") -> str:
    """`Step 1: ...` lines and the answer line: the rationale format of the paper (and teacher.py)."""
    return "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1)) + f"\n{final}: {answer}"


# -----------------------------------------------------------------------------
# 3. The data: unique questions, held-out test first, then training questions, then the base
# model's pre-training problems, so no test question is ever trained on.


def generate_problems(rng: random.Random, n: int, preset: Preset, taken: set[str]) -> list[Problem]:
    """n problems whose question text is not in `taken` (which they are then added to)."""
    out: list[Problem] = []
    while len(out) < n:
        p = make_problem(rng, rng.randint(preset.min_ops, preset.max_ops), preset.max_value)
        if p.question not in taken:
            taken.add(p.question)
            out.append(p)
    return out


def gsm8k_record(p: Problem) -> dict:
    """GSM8K's format: worked lines, then `#### N`."""
    lines = [f"{s.fact} {calc(s)}." for s in p.steps]
    return {"question": p.question, "answer": "\n".join(lines) + f"\n#### {p.answer}"}


def teacher_record(rng: random.Random, p: Problem, preset: Preset) -> dict:
    steps = teacher_steps(rng, p, preset)
    return {"question": p.question, "answer": str(p.answer), "rationale": format_steps(steps, p.answer),
            "steps": steps}


def base_completion(rng: random.Random, p: Problem, preset: Preset, known: frozenset[int] = frozenset()) -> str:
    """What follows a prompt's last line in the pre-training text (EOS is appended as a token)."""
    structured = rng.random() < preset.structured_rate
    steps, answer = base_solution_steps(rng, p, preset.error_rate, preset.misread_rate, known, structured)
    return "\n" + format_steps(steps, answer, final=rng.choice(["Answer", "Final Answer"]))


# The prompt forms of the curriculum, each built by the stage's own code, so the base model has
# read every prompt it will be trained on (a real base model has read text of every shape; a
# tiny one reads only what it was shown, and a prompt it never saw gets near-random answers):
#   plain        eval.py's prompt (also the SFT baseline's and GRPO-alone's)
#   reconstruct  stage 1: the teacher's steps shuffled, one maybe masked
#   hinted       stage 2: the teacher's steps in order, k of them masked
#   rewrite      stage 3: the teacher's whole rationale, to be rewritten shorter
# The completion is always the author's rambling solution: it uses the steps a prompt shows
# (no misreading there) but never gets shorter or tidier because a prompt asks it to.
FORMS = ("plain", "reconstruct", "hinted", "rewrite")


def form_prompt(form: str, p: Problem, teacher: dict, rng: random.Random) -> tuple[str, frozenset[int]]:
    """(prompt, indices of the operations whose step the prompt shows worked out)."""
    from eval import build_prompt
    from teacher import TeacherExample
    ex = TeacherExample(teacher["question"], teacher["answer"], teacher["rationale"], teacher["steps"])
    if form == "plain":
        prompt = build_prompt(p.question)
    elif form == "reconstruct":
        from stage1_reconstruct import reconstruction_example
        prompt = reconstruction_example(ex, rng, mask_prob=0.7).prompt
    elif form == "hinted":
        from stage2_grpo import build_masked_prompt
        prompt = build_masked_prompt(ex, rng)
    elif form == "rewrite":
        from stage3_rewrite import build_rewrite_prompt
        prompt = build_rewrite_prompt(ex.question, ex.rationale)
    else:
        raise ValueError(f"unknown prompt form {form!r}; expected one of {', '.join(FORMS)}")
    known = frozenset(i for i, s in enumerate(p.steps) if f"So {calc(s)} {p.item}." in prompt)
    return prompt, known


def pretraining_text(rng: random.Random, p: Problem, preset: Preset) -> tuple[str, str, str]:
    """(form, prompt, completion) of one pre-training document: a form drawn by form_shares."""
    form = rng.choices(FORMS, weights=preset.form_shares)[0]
    prompt, known = form_prompt(form, p, teacher_record(rng, p, preset), rng)
    return form, prompt, base_completion(rng, p, preset, known)


def write_jsonl(path: Path, records: list[dict]):
    cli.write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


# -----------------------------------------------------------------------------
# 4. The tokenizer: byte-level BPE like Qwen's, digits always single tokens, EOS = <|endoftext|>.
# Unlike Qwen's, it does not split text into words before merging, so a phrase the world repeats
# ("Solve this math problem step by step, ...", " more apples. So ") becomes one token. The
# sequences come out about half as long, which halves every forward pass and every decode loop
# of the tiny run; the arithmetic is unchanged, because digits are still split out first.

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    # digits split first, so no merge can ever join two digits (Qwen2.5 does the same)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": EOS, "pad_token": EOS, "bos_token": None, "model_max_length": 1024,
         "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": eos_id, "eos_token_id": eos_id, "do_sample": False}, indent=2) + "\n")


# -----------------------------------------------------------------------------
# 5. The base model: a small Qwen2 pre-trained with next-token loss on prompt + rambling solution


def model_config(preset: Preset, vocab_size: int, eos_id: int) -> dict:
    """A Qwen2.5-shaped config.json (tied embeddings and grouped-query attention, as in 0.5B-3B)."""
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab_size,
            "hidden_size": preset.hidden, "intermediate_size": 8 * preset.hidden // 3 // 32 * 32,
            "num_hidden_layers": preset.layers, "num_attention_heads": preset.heads,
            "num_key_value_heads": preset.kv_heads, "max_position_embeddings": 1024,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "bos_token_id": eos_id, "eos_token_id": eos_id, "hidden_act": "silu",
            "initializer_range": 0.02, "torch_dtype": "float32"}


PAD_WIDTH_TO = 16  # pre-training batches are this many tokens wide, times some count (see pretrain_base)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pretrain_base(preset: Preset, documents: list[tuple[str, str]], tokenizer_dir: Path, out_dir: Path,
                  seed: int, device: str = "cpu", progress: bool = True) -> dict:
    """One pass over the (prompt, completion) documents (batch_size per step), loss on the
    completion tokens only: the model learns to answer prompts, never to write them."""
    import torch
    from tqdm import tqdm
    from model import Qwen2, Qwen2Config
    from tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    # prompt and completion are encoded apart, exactly as eval.py encodes the prompt and then generates
    prompts = tok.encode_batch([prompt for prompt, _ in documents])
    solutions = tok.encode_batch([completion for _, completion in documents])
    config = Qwen2Config.from_dict(model_config(preset, tok.vocab_size, tok.eos_token_id))
    torch.manual_seed(seed)
    model = Qwen2(config).init_weights(seed).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=preset.lr, betas=(0.9, 0.95))
    warmup = max(1, preset.base_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to a tenth
        if step < warmup:
            return preset.lr * (step + 1) / warmup
        progress_ = (step - warmup) / max(1, preset.base_steps - warmup)
        return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_)))

    bf16 = preset.bf16 and device == "cpu" and cpu_has_bf16()
    batches = length_buckets([len(p) + len(s) for p, s in zip(prompts, solutions)], preset.batch_size, seed)
    metrics = []
    start = time.time()
    bar = tqdm(range(preset.base_steps), desc="base pre-training", disable=not progress, dynamic_ncols=True)
    for step in bar:
        # 1. a batch of prompt + solution + EOS, right-padded; targets only on the solution
        rows = batches[step]
        seqs = [prompts[i] + solutions[i] + [tok.eos_token_id] for i in rows]
        # The width is rounded up to a multiple of 16: few distinct shapes. With every width
        # from 90 to 230, the process grew to 4.9 GB over 400 steps and the steps slowed as it
        # went (0.34 -> 0.44 s); with 14 widths it stays at 1.9 GB and ~0.30 s a step, 1.25x
        # faster for 5% more (padding) tokens computed (docs/performance.md). We take the cause
        # to be the state oneDNN, which runs the bf16 matrix products, keeps per shape.
        width = round_up(max(len(s) for s in seqs), PAD_WIDTH_TO)
        ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        targets = torch.full((len(seqs), width), -100, dtype=torch.long)
        for b, (i, s) in enumerate(zip(rows, seqs)):
            ids[b, :len(s)] = torch.tensor(s)
            targets[b, len(prompts[i]) - 1:len(s) - 1] = torch.tensor(s[len(prompts[i]):])
        ids, targets = ids.to(device), targets.to(device)
        # 2. next-token cross-entropy (matmuls in bf16 where the CPU has them, the weights, the
        # optimizer and the loss in fp32). No attention mask: the padding is on the right, so
        # causal attention alone keeps every real token from seeing it, and the padding's own
        # outputs have no target. (model.attention runs the attention itself in float32 under CPU
        # autocast, which makes the step 1.3-1.8x faster here than bf16 attention did.)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        # 3. step
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        metrics.append({"step": step + 1, "loss": round(loss.item(), 4), "lr": lr_at(step),
                        "seconds": round(time.time() - start, 1)})
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    model.save_pretrained(out_dir, tokenizer_dir=tokenizer_dir)
    cli.write_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    return {"parameters": model.num_parameters(), "final_loss": metrics[-1]["loss"], "bf16_autocast": bf16,
            "seconds": round(time.time() - start, 1)}


def length_buckets(lengths: list[int], batch_size: int, seed: int, window: int = 16) -> list[list[int]]:
    """Batches of document indices with similar lengths, in random order. The prompt forms
    differ in length by 2x, and a batch is as wide as its longest row: sorting each window of
    `window` batches by length before cutting it into batches halves the padding computed."""
    order = list(range(len(lengths)))
    random.Random(f"{seed}:batches").shuffle(order)
    batches = []
    for lo in range(0, len(order), window * batch_size):
        chunk = sorted(order[lo:lo + window * batch_size], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    random.Random(f"{seed}:batch-order").shuffle(batches)
    return batches


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def measure_forms(model_dir: Path, problems: list[Problem], seed: int, preset: Preset, max_new_tokens: int = 256,
                  batch_size: int = 100) -> dict:
    """The base model under every prompt form (greedy, eval.py's stop rule and grading), on
    held-out problems: {form: {accuracy, mean_generated_tokens, n}}. The curriculum trains on
    each form, so each needs a base that is sometimes right there (reward spread)."""
    import torch
    from eval import answer_in_batches, extract_answer, is_correct
    from model import Qwen2
    from tokenizer import load_tokenizer
    model = Qwen2.from_pretrained(model_dir).eval()
    tok = load_tokenizer(model_dir)
    table = {}
    for form in FORMS:
        rng = random.Random(f"{seed}:forms:{form}")
        prompts = [form_prompt(form, p, teacher_record(rng, p, preset), rng)[0] for p in problems]
        right, tokens = 0, 0
        with torch.no_grad():
            for batch, out in answer_in_batches(model, tok, tok.encode_batch(prompts), batch_size, max_new_tokens):
                for i, completion in zip(batch, out.tokens):
                    right += is_correct(extract_answer(tok.decode(completion)), str(problems[i].answer))
                    tokens += len(completion)
        table[form] = {"accuracy": round(right / len(problems), 4),
                       "mean_generated_tokens": round(tokens / len(problems), 1), "n": len(problems)}
    return table


# -----------------------------------------------------------------------------
# 6. Building (or reusing) a world folder


@dataclass
class World:
    root: Path
    train: Path           # GSM8K-format JSONL
    test: Path            # GSM8K-format JSONL, held out
    teacher: Path         # teacher JSONL: question, answer, rationale, steps
    tokenizer_dir: Path
    base_model: Path      # checkpoint folder (tokenizer files inside)
    info: dict = dataclasses.field(default_factory=dict, repr=False)  # world.json


def world_paths(root: Path, info: dict | None = None) -> World:
    return World(root=root, train=root / "train.jsonl", test=root / "test.jsonl", teacher=root / "teacher.jsonl",
                 tokenizer_dir=root / "tokenizer", base_model=root / "base", info=info or {})


def suggested_settings(teacher: list[dict]) -> dict:
    """Stage settings scaled to this world. The paper's stage-2 length budget is B = 35 words per
    teacher step, sized for R1 rationales of ~62 words a step (so B is ~0.57 of the teacher's
    length); the same share of a tiny-world teacher step is far fewer words (the rule of
    rewards.calibrated_words_per_step, rounded to whole words here)."""
    from rewards import PAPER_WORDS_PER_STEP, R1_WORDS_PER_STEP
    words = sum(len(t["rationale"].split()) for t in teacher)
    steps = sum(len(t["steps"]) for t in teacher)
    per_step = words / steps
    return {"teacher_words_per_step": round(per_step, 1),
            "teacher_words_mean": round(words / len(teacher), 1),
            "teacher_steps_mean": round(steps / len(teacher), 2),
            "stage2_words_per_step": max(1, round(per_step * PAPER_WORDS_PER_STEP / R1_WORDS_PER_STEP)),
            "stage1_rows": f"0:{len(teacher) // 2}", "stage2_rows": f"{len(teacher) // 2}:",
            "stage3_rows": f"{len(teacher) // 2}:"}


def build_world(out_dir, preset: str | Preset = "test", seed: int = 0, device: str = "cpu",
                progress: bool = True, teacher: str | None = None, teacher_checks: float | None = None) -> World:
    """Build the world in out_dir (or return the one already there, if it has the same preset,
    settings and seed). Everything is written to a temporary folder first, world.json last.
    teacher and teacher_checks, when given, replace the preset's (world.json records the settings used)."""
    root = Path(out_dir)
    name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if teacher is not None:
        preset = dataclasses.replace(preset, teacher=teacher)
    if teacher_checks is not None:
        preset = dataclasses.replace(preset, teacher_checks=teacher_checks)
    # (through JSON, so that it compares equal to what world.json reads back: tuples become lists)
    wanted = json.loads(json.dumps({"preset": name, "seed": seed, "settings": dataclasses.asdict(preset)}))
    meta = root / "world.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        # a setting newer than the world (absent from its world.json) was built at its default
        defaults = {f.name: f.default for f in dataclasses.fields(Preset) if f.default is not dataclasses.MISSING}
        defaults.update(BEFORE_SETTING)
        saved = {**info, "settings": {**json.loads(json.dumps(defaults)), **info.get("settings", {})}}
        if {k: saved.get(k) for k in wanted} != wanted:
            raise ValueError(f"{meta}: a world with preset {info.get('preset')!r} seed {info.get('seed')} "
                             f"is already there; use another folder or delete it")
        return world_paths(root, info)
    if root.exists() and any(p.name != "world.json" for p in root.iterdir()):
        leftover = sorted(p.name for p in root.iterdir())
        raise ValueError(f"{root}: not empty and has no world.json ({', '.join(leftover[:5])}); "
                         f"delete it or choose another folder")
    start = time.time()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        # 1. problems: test first, so nothing later can take one of its questions
        rng = random.Random(seed)
        taken: set[str] = set()
        test = generate_problems(rng, preset.n_test, preset, taken)
        train = generate_problems(rng, preset.n_train, preset, taken)
        pretrain = generate_problems(rng, preset.base_steps * preset.batch_size, preset, taken)
        # 2. files in the formats the real scripts read
        teacher = [teacher_record(rng, p, preset) for p in train]
        write_jsonl(tmp / "train.jsonl", [gsm8k_record(p) for p in train])
        write_jsonl(tmp / "test.jsonl", [gsm8k_record(p) for p in test])
        write_jsonl(tmp / "teacher.jsonl", teacher)
        write_jsonl(tmp / "concise.jsonl", [{"question": p.question, "answer": str(p.answer),
                                             "rationale": format_steps(concise_steps(p), p.answer),
                                             "steps": concise_steps(p)} for p in train])
        # 3. the base model's pre-training documents: every prompt form, rambling completions
        documents = [pretraining_text(rng, p, preset) for p in pretrain]
        # 4. tokenizer, trained on the text the models will read and write
        texts = ([prompt + completion for _, prompt, completion in documents[:2000]]
                 + [t["rationale"] for t in teacher]
                 + [format_steps(concise_steps(p), p.answer, "Final Answer") for p in train])
        train_tokenizer(texts, preset.vocab_size, tmp / "tokenizer")
        # 5. base model, and how it does under each prompt form (on held-out problems)
        base = pretrain_base(preset, [(prompt, completion) for _, prompt, completion in documents],
                             tmp / "tokenizer", tmp / "base", seed, device, progress)
        measure_start = time.time()
        base["by_form"] = measure_forms(tmp / "base", test[:preset.n_form_probe], seed, preset)
        base["by_form_seconds"] = round(time.time() - measure_start, 1)
        forms = [form for form, _, _ in documents]
        info = {**wanted, "suggested": suggested_settings(teacher), "base": base,
                "sizes": {"train": len(train), "test": len(test), "pretrain_problems": len(pretrain),
                          "pretrain_by_form": {f: forms.count(f) for f in FORMS},
                          "test_misleading": sum(any(misleads(s) for s in p.steps) for p in test) / len(test)},
                "build_seconds": round(time.time() - start, 1)}
        cli.write_atomic(tmp / "world.json", json.dumps(info, indent=2) + "\n")
        # 5. move into place, world.json last: a world without it was never finished
        root.mkdir(parents=True, exist_ok=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "world.json"):
            item.rename(root / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return world_paths(root, info)


# -----------------------------------------------------------------------------
# 7. The results table of a curriculum run (curriculum.sh calls `python tiny_world.py table RUN`)

STAGES = ("base", "stage1", "stage2", "stage3", "sft", "grpo")  # sft, grpo: the baselines


def results_table(run_dir) -> list[dict]:
    """Rows from RUN/eval/<name>/summary.json (written by eval.py) and RUN/timings.tsv (lines
    `<stage> <seconds>`, the wall time of the step that made the checkpoint), written to
    RUN/results.json and RUN/results.md, plus RUN/results.svg (accuracy against tokens, and the
    training curves from RUN/<name>/metrics.jsonl). The curriculum's rows (STAGES) come first,
    any other folder of eval/ after them, and each row is compared with the first. With
    RUN/world/world.json, results.md also shows the base model under each prompt form."""
    run = Path(run_dir)
    seconds: dict[str, float] = {}
    timings = run / "timings.tsv"
    if timings.is_file():
        for line_no, line in enumerate(timings.read_text().splitlines(), 1):
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{timings}:{line_no}: expected '<step> <seconds>', got {line!r}")
            seconds[parts[0]] = seconds.get(parts[0], 0.0) + float(parts[1])
    rows = []
    # the curriculum's rows in their order, then any others (the reward lab's) in the order they ran
    found = {p.parent.name for p in (run / "eval").glob("*/summary.json")}
    ran = [name for name in seconds if name in found and name not in STAGES]
    for stage in [s for s in STAGES if s in found] + ran + sorted(found - set(STAGES) - set(ran)):
        summary_path = run / "eval" / stage / "summary.json"
        s = json.loads(summary_path.read_text())
        rows.append({"stage": stage, "accuracy": s["accuracy"], "accuracy_ci95": s["accuracy_ci95"],
                     "mean_generated_tokens": s["mean_generated_tokens"], "n": s["n"],
                     **misleading_split(summary_path.parent / "samples.jsonl"),
                     "seconds": round(seconds.get(stage, 0.0), 1),
                     "eval_seconds": round(seconds.get(f"eval_{stage}", s.get("seconds", 0.0)), 1)})
    if not rows:
        raise ValueError(f"{run}: no eval/<stage>/summary.json found")
    cli.write_atomic(run / "results.json", json.dumps(rows, indent=2) + "\n")
    base = rows[0]
    lines = ["| stage | accuracy | 95% interval | mean generated tokens | n | misleading / other questions | "
             "seconds (+ eval) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["accuracy_ci95"]
        delta = "" if r is base else (f" ({100 * (r['accuracy'] - base['accuracy']):+.1f} pts, "
                                      f"{100 * (r['mean_generated_tokens'] / base['mean_generated_tokens'] - 1):+.0f}% tokens)")
        split = " / ".join("-" if r.get(k) is None else f"{100 * r[k]:.1f}%"
                           for k in ("accuracy_misleading", "accuracy_other")) if "accuracy_other" in r else ""
        lines.append(f"| {r['stage']} | {100 * r['accuracy']:.1f}%{delta} | {100 * low:.1f}-{100 * high:.1f}% | "
                     f"{r['mean_generated_tokens']:.1f} | {r['n']} | {split} | {r['seconds']:.0f} (+{r['eval_seconds']:.0f}) |")
    total = sum(seconds.values())
    lines.append(f"\nTotal wall time: {total / 60:.1f} min.")
    world_json = run / "world" / "world.json"
    by_form = json.loads(world_json.read_text()).get("base", {}).get("by_form") if world_json.is_file() else None
    if by_form:
        lines += ["", "The base model under each prompt form (greedy, held-out problems):", "",
                  "| prompt form | accuracy | mean generated tokens | n |", "|---|---|---|---|"]
        lines += [f"| {form} | {100 * f['accuracy']:.1f}% | {f['mean_generated_tokens']:.1f} | {f['n']} |"
                  for form, f in by_form.items()]
    cli.write_atomic(run / "results.md", "\n".join(lines) + "\n")
    cli.write_atomic(run / "results.svg", results_svg(rows, training_curves(run, [r["stage"] for r in rows])))
    print("\n".join(lines))
    print(f"plot: {run / 'results.svg'}")
    return rows


def misleading_split(samples_path: Path) -> dict:
    """Accuracy on the questions with a misleading sentence (MISLEADING: the base model's
    systematic error) and on the others, from eval.py's samples.jsonl; {} without it."""
    if not samples_path.is_file():
        return {}
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    groups: dict[bool, list[bool]] = {True: [], False: []}
    for s in samples:
        groups[any(phrase in s["question"] for phrase in MISLEADING.values())].append(s["correct"])
    return {f"accuracy_{name}": (sum(g) / len(g) if g else None) for name, g in
            (("misleading", groups[True]), ("other", groups[False]))}


# Training curves: (panel title, metrics.jsonl key, which runs: "sft" = stage 1's kind, "grpo" = GRPO's)
CURVES = (("stage 1 / sft: target loss", "loss", "sft"),
          ("GRPO: mean reward", "reward", "grpo"),
          ("GRPO: sampled accuracy", "accuracy", "grpo"),
          ("GRPO: completion tokens", "completion_tokens", "grpo"),
          ("GRPO: KL to the reference", "kl", "grpo"))


def training_curves(run: Path, names) -> list[tuple[str, dict[str, list[float]]]]:
    """[(title, {name: values by step})] from RUN/<name>/metrics.jsonl, for the panels of CURVES
    (a GRPO run is one whose metrics have a reward)."""
    logs = {}
    for name in names:
        path = run / name / "metrics.jsonl"
        if path.is_file():
            logs[name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kind = {name: "grpo" if any("reward" in r for r in log) else "sft" for name, log in logs.items()}
    return [(title, {s: [r[key] for r in log if r.get(key) is not None] for s, log in logs.items() if kind[s] == k})
            for title, key, k in CURVES]


COLORS = {"base": "black", "stage1": "#1f77b4", "stage2": "#2ca02c", "stage3": "#d62728", "sft": "#ff7f0e",
          "grpo": "#9467bd"}
OTHER_COLORS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#393b79")  # rows beyond STAGES


def svg_panel(x: float, y: float, title: str, series: dict[str, list[tuple[float, float]]], xlabel: str,
              points: bool = False, w: float = 300, h: float = 200) -> list[str]:
    """One chart at (x, y): axes with their ranges, a line (or labelled points) per series."""
    values = [p for s in series.values() for p in s]
    out = [f'<text x="{x + w / 2}" y="{y - 8}" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#888"/>']
    if not values:
        return out + [f'<text x="{x + w / 2}" y="{y + h / 2}" text-anchor="middle">(no data)</text>']
    lo_x, hi_x = min(v[0] for v in values), max(v[0] for v in values)
    lo_y, hi_y = min(v[1] for v in values), max(v[1] for v in values)
    pad_x, pad_y = (hi_x - lo_x) * 0.08 or 1.0, (hi_y - lo_y) * 0.08 or 1.0
    x0, x1, y0, y1 = lo_x - pad_x, hi_x + pad_x, lo_y - pad_y, hi_y + pad_y  # a margin around the data

    def at(px, py):
        return x + w * (px - x0) / (x1 - x0), y + h - h * (py - y0) / (y1 - y0)

    # the axes are labelled with the data's own extremes, at their places
    (left, bottom), (right, top) = at(lo_x, lo_y), at(hi_x, hi_y)
    out += [f'<text x="{left:.1f}" y="{y + h + 14}" text-anchor="middle">{lo_x:.3g}</text>',
            f'<text x="{right:.1f}" y="{y + h + 14}" text-anchor="middle">{hi_x:.3g}</text>',
            f'<text x="{x + w / 2}" y="{y + h + 28}" text-anchor="middle">{xlabel}</text>',
            f'<text x="{x - 4}" y="{bottom + 4:.1f}" text-anchor="end">{lo_y:.3g}</text>',
            f'<text x="{x - 4}" y="{top + 4:.1f}" text-anchor="end">{hi_y:.3g}</text>']
    colors = series_colors(list(series))
    if points:  # one labelled point per series; the labels are moved apart where they would overlap
        where = {name: at(*pts[0]) for name, pts in series.items()}
        labels = {name: f"{name} ({pts[0][1]:.1f}%, {pts[0][0]:.0f})" for name, pts in series.items()}
        for name, (lx, ly, anchor) in place_labels(where, labels, x, x + w).items():
            (dx, dy), color = where[name], colors[name]
            out.append(f'<circle cx="{dx:.1f}" cy="{dy:.1f}" r="4" fill="{color}"/>')
            if abs(ly - (dy - 6)) > 1:  # moved: a thin line from the point to its label
                out.append(f'<line x1="{dx:.1f}" y1="{dy:.1f}" x2="{lx:.1f}" y2="{ly - 4:.1f}" stroke="{color}" '
                           f'stroke-width="0.7"/>')
            out.append(f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="{color}">{labels[name]}</text>')
        return out
    for i, (name, pts) in enumerate(series.items()):
        color = colors[name]
        xy = [at(px, py) for px, py in pts]
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="'
                   + " ".join(f"{dx:.1f},{dy:.1f}" for dx, dy in xy) + '"/>')
        out.append(f'<text x="{x + w - 4}" y="{y + 14 + 13 * i}" text-anchor="end" fill="{color}">{name}</text>')
    return out


def series_colors(names: list[str]) -> dict[str, str]:
    """The curriculum's rows keep their colours (COLORS); other rows take OTHER_COLORS in turn."""
    others = itertools.cycle(OTHER_COLORS)
    return {name: COLORS.get(name) or next(others) for name in names}


LABEL_HEIGHT, CHAR_WIDTH = 13.0, 6.2  # at font-size 11, a generous width per character


def place_labels(points: dict[str, tuple[float, float]], labels: dict[str, str], left: float,
                 right: float) -> dict[str, tuple[float, float, str]]:
    """Where to write each point's label: {name: (x, y of the baseline, text-anchor)}. A label
    sits just above and beside its point (to the right in the panel's left half, to the left in
    its right half) and moves down, a line at a time, until it overlaps no label placed before it
    (points taken from the top), so points that nearly coincide still get legible labels."""
    placed: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 of each label's box
    where = {}
    for name, (px, py) in sorted(points.items(), key=lambda item: (item[1][1], item[1][0])):
        width = CHAR_WIDTH * len(labels[name])
        to_right = px < (left + right) / 2
        x0 = px + 6 if to_right else px - 6 - width
        y = py - 6
        while any(x0 < b[2] and b[0] < x0 + width and y - LABEL_HEIGHT + 2 < b[3] and b[1] < y + 2 for b in placed):
            y += LABEL_HEIGHT
        placed.append((x0, y - LABEL_HEIGHT + 2, x0 + width, y + 2))
        where[name] = (px + 6 if to_right else px - 6, y, "start" if to_right else "end")
    return where


def moving_mean(values: list[float], window: int = 5) -> list[float]:
    """Mean of each value and the (up to) window - 1 before it: GRPO's per-step figures come
    from 64 samples and are too noisy to read raw."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(values))]


def results_svg(rows: list[dict], curves: list[tuple[str, dict[str, list[float]]]]) -> str:
    """A 3 x 2 grid of panels: accuracy against tokens for every row, then the training curves
    (a hand-written SVG, so the picture needs no plotting package)."""
    panels = [("accuracy (%) against mean generated tokens",
               {r["stage"]: [(r["mean_generated_tokens"], 100 * r["accuracy"])] for r in rows}, "tokens", True)]
    panels += [(title, {s: list(enumerate(moving_mean(v), 1)) for s, v in by_stage.items()}, "step (5-step mean)", False)
               for title, by_stage in curves]
    width, height = 2 * 380 + 40, 3 * 270 + 20
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, (title, series, xlabel, points) in enumerate(panels):
        svg += svg_panel(60 + 380 * (i % 2), 30 + 270 * (i // 2), title, series, xlabel, points)
    return "\n".join(svg + ["</svg>"]) + "\n"


# -----------------------------------------------------------------------------
# 8. Command line


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        parser = cli.ArgumentParser(prog="tiny_world.py table", description="The results table of a curriculum run.")
        parser.add_argument("run", help="run folder with eval/<stage>/summary.json and timings.tsv")
        args = parser.parse_args(argv[1:])
        return results_table(args.run)
    parser = cli.ArgumentParser(description="Build a tiny world: problems, tokenizer, base model "
                                "(`python tiny_world.py table RUN` prints a curriculum run's results).")
    parser.add_argument("--out", default="runs/tiny/world", help="world folder (reused if already built)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="world size (test: the test suite's)")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0, help="problems, tokenizer and model initialisation")
    parser.add_argument("--teacher", default=None, choices=TEACHERS,
                        help="verbose: R1-like, longer than the base's answers (the default); tidy: shorter than "
                             "them, the control world (README)")
    parser.add_argument("--teacher-checks", type=cli.probability, default=None,
                        help="tidy teacher: share of its calculations it double-checks in a step of its own, which a "
                             "student can drop (default: the preset's, 0; docs/tiny_world_findings.md)")
    parser.add_argument("--device", default="cpu", help="the tiny model is faster on CPU than it is worth moving")
    parser.add_argument("--threads", type=cli.positive_int, default=2, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    start = time.time()
    world = build_world(args.out, args.preset, args.seed, args.device, progress=not args.quiet,
                        teacher=args.teacher, teacher_checks=args.teacher_checks)
    info = world.info
    print(f"tiny world ({info['preset']}, seed {info['seed']}) in {world.root}: {info['sizes']['train']} train / "
          f"{info['sizes']['test']} test questions, base model {info['base']['parameters']:,} parameters, "
          f"final loss {info['base']['final_loss']}, built in {info['build_seconds']:.0f} s "
          f"({'reused' if time.time() - start < 5 else 'new'})")
    return world


if __name__ == "__main__":
    cli.run(main)
