"""
The tiny world: the whole BRIDGE curriculum on a laptop CPU in minutes, with no downloads.

Real runs need Qwen2.5 weights and a GPU. This file builds a miniature of the paper's setting in
which every script runs unchanged: grade-school word problems over small integers (2-4 steps of
add, subtract, multiply, share equally), a byte-level BPE tokenizer trained on them, and a
Qwen2.5-architecture "base model" (model.py, a small config) pre-trained for a few minutes with
plain next-token loss. Like the real base model it answers the eval prompt zero-shot, with
partial accuracy and long rambling rationales, because its pre-training solutions ramble (they
restate every fact and re-check every sum) and are sometimes wrong. The "teacher" rationales are
always right and less rambling (they restate the facts and repeat each result, about 5-8 steps,
like the R1-distilled teacher's), and a concise 2-4 step rationale exists in the generator for
comparison. The curriculum's job is then the paper's: more right answers, fewer tokens.

What a world folder holds (every file is rebuilt from the seed; nothing here is committed):
    train.jsonl     GSM8K-format training questions ({"question", "answer": "... #### N"})
    test.jsonl      held-out questions, disjoint from everything the base model or stages see
    teacher.jsonl   {"question", "answer", "rationale", "steps"} per training question (teacher.py reads it)
    concise.jsonl   the same questions with the short 2-4 step rationale (for inspection)
    tokenizer/      tokenizer.json (+ tokenizer_config.json, generation_config.json)
    base/           the pre-trained base checkpoint (loads with Qwen2.from_pretrained)
    world.json      the preset, the seed, sizes, timing and the settings the stages should use here

    python tiny_world.py --out runs/tiny/world --preset tiny      # ~5 min on 2 CPU cores
    python tiny_world.py table runs/tiny                          # the curriculum's results table
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
    error_rate: float = 0.25  # share of pre-training solutions with one wrong calculation
    max_value: int = 99       # every number in a problem, intermediate results included


PRESETS = {
    # for the test suite: a few minutes on 2 cores, a base that is right some of the time (numbers
    # up to 20, so that a model this small learns some of the arithmetic in 200 steps)
    "test": Preset(n_train=400, n_test=200, min_ops=2, max_ops=3, vocab_size=768, hidden=128,
                   layers=2, heads=4, kv_heads=2, base_steps=320, batch_size=16, lr=3e-3, max_value=20),
    # for `bash curriculum.sh tiny`: the base takes about 5 of the run's 15 minutes
    "tiny": Preset(n_train=4000, n_test=500, min_ops=2, max_ops=4, vocab_size=1024, hidden=192,
                   layers=4, heads=6, kv_heads=2, base_steps=900, batch_size=32, lr=3e-3),
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


def teacher_steps(rng: random.Random, p: Problem) -> list[str]:
    """The verbose teacher: restate the question and the start, one step per operation that
    restates its fact and computes, sometimes a step repeating the running total, then the result
    again. n + 3 steps (5-7 for 2-4 operations), plus a repeat now and then."""
    out = [f"We need to find how many {p.item} {p.name} has now.", f"{p.name} starts with {p.start} {p.item}."]
    for s in p.steps:
        out.append(f"{s.fact} So {calc(s)} {p.item}.")
        if rng.random() < 0.2 and s is not p.steps[-1]:
            out.append(f"Now {p.name} has {s.after} {p.item}.")
    out.append(f"So {p.name} has {p.answer} {p.item} now.")
    return out


def concise_steps(p: Problem) -> list[str]:
    """One short calculation per operation: what the curriculum would ideally converge to."""
    return [f"{calc(s)}." for s in p.steps]


def base_solution_steps(rng: random.Random, p: Problem, error_rate: float) -> tuple[list[str], int]:
    """The imperfect, rambling pre-training solution: it restates every fact of the question
    first, computes each operation, often re-checks a sum, and with probability error_rate
    gets one calculation wrong (and carries the error to the end). Returns (steps, its answer)."""
    she = p.pronoun.capitalize()
    out = [f"The question says {p.name} has {p.start} {p.item}."]
    out += [f"The question also says: {s.fact}" for s in p.steps if rng.random() < 0.5]
    out.append(f"We need to find how many {p.item} {p.name} has now.")
    wrong_at = rng.randrange(len(p.steps)) if rng.random() < error_rate else -1
    x = p.start
    for i, s in enumerate(p.steps):
        result = apply(s.op, x, s.operand)
        if i == wrong_at:
            result = max(0, result + rng.choice([-2, -1, 1, 2]))
        shown = Step(s.op, s.operand, x, result, s.fact)
        out.append(f"{s.fact} So {calc(shown)}.")
        if rng.random() < 0.5:
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


def teacher_record(rng: random.Random, p: Problem) -> dict:
    steps = teacher_steps(rng, p)
    return {"question": p.question, "answer": str(p.answer), "rationale": format_steps(steps, p.answer),
            "steps": steps}


def base_completion(rng: random.Random, p: Problem, error_rate: float) -> str:
    """What follows the eval prompt's `Reasoning:` in the pre-training text (EOS is appended as a token)."""
    steps, answer = base_solution_steps(rng, p, error_rate)
    return "\n" + format_steps(steps, answer, final=rng.choice(["Answer", "Final Answer"]))


def write_jsonl(path: Path, records: list[dict]):
    from eval import write_atomic
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


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


def pretrain_base(preset: Preset, problems: list[Problem], rng: random.Random, tokenizer_dir: Path,
                  out_dir: Path, seed: int, device: str = "cpu", progress: bool = True) -> dict:
    """One pass over `problems` (batch_size per step), loss on the solution tokens only: the
    prompt is the same instruction every time, and the eval never asks the model to write one."""
    import torch
    from tqdm import tqdm
    from eval import build_prompt, write_atomic
    from model import Qwen2, Qwen2Config, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    prompts = tok.encode_batch([build_prompt(p.question) for p in problems])
    # prompt and solution are encoded apart, exactly as eval.py encodes the prompt and then generates
    solutions = tok.encode_batch([base_completion(rng, p, preset.error_rate) for p in problems])
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

    metrics = []
    start = time.time()
    bar = tqdm(range(preset.base_steps), desc="base pre-training", disable=not progress, dynamic_ncols=True)
    for step in bar:
        # 1. a batch of prompt + solution + EOS, right-padded; targets only on the solution
        rows = range(step * preset.batch_size, (step + 1) * preset.batch_size)
        seqs = [prompts[i] + solutions[i] + [tok.eos_token_id] for i in rows]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
        targets = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.bool)
        for b, (i, s) in enumerate(zip(rows, seqs)):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = True
            targets[b, len(prompts[i]) - 1:len(s) - 1] = torch.tensor(s[len(prompts[i]):])
        ids, targets, mask = ids.to(device), targets.to(device), mask.to(device)
        # 2. next-token cross-entropy
        logits = model(ids, attention_mask=mask)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
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
    write_atomic(out_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in metrics))
    return {"parameters": model.num_parameters(), "final_loss": metrics[-1]["loss"],
            "seconds": round(time.time() - start, 1)}


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
    teacher step, sized for real GSM8K rationales of ~62 words a step (so B is ~0.57 of the
    teacher's length); the same share of a tiny-world teacher step is far fewer words."""
    words = sum(len(t["rationale"].split()) for t in teacher)
    steps = sum(len(t["steps"]) for t in teacher)
    per_step = words / steps
    return {"teacher_words_per_step": round(per_step, 1),
            "teacher_words_mean": round(words / len(teacher), 1),
            "teacher_steps_mean": round(steps / len(teacher), 2),
            "stage2_words_per_step": max(1, round(per_step * 35 / 62)),
            "stage1_rows": f"0:{len(teacher) // 2}", "stage2_rows": f"{len(teacher) // 2}:",
            "stage3_rows": f"{len(teacher) // 2}:"}


def build_world(out_dir, preset: str | Preset = "test", seed: int = 0, device: str = "cpu",
                progress: bool = True) -> World:
    """Build the world in out_dir (or return the one already there, if it has the same preset
    and seed). Everything is written to a temporary folder first, world.json last."""
    root = Path(out_dir)
    name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    wanted = {"preset": name, "seed": seed, "settings": dataclasses.asdict(preset)}
    meta = root / "world.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if {k: info.get(k) for k in wanted} != wanted:
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
        teacher = [teacher_record(rng, p) for p in train]
        write_jsonl(tmp / "train.jsonl", [gsm8k_record(p) for p in train])
        write_jsonl(tmp / "test.jsonl", [gsm8k_record(p) for p in test])
        write_jsonl(tmp / "teacher.jsonl", teacher)
        write_jsonl(tmp / "concise.jsonl", [{"question": p.question, "answer": str(p.answer),
                                             "rationale": format_steps(concise_steps(p), p.answer),
                                             "steps": concise_steps(p)} for p in train])
        # 3. tokenizer, trained on the text the models will read and write
        from eval import build_prompt
        sample = pretrain[:2000]
        texts = ([build_prompt(p.question) for p in sample] + [t["rationale"] for t in teacher]
                 + [base_completion(random.Random(i), p, preset.error_rate) for i, p in enumerate(sample)]
                 + [format_steps(concise_steps(p), p.answer, "Final Answer") for p in train])
        train_tokenizer(texts, preset.vocab_size, tmp / "tokenizer")
        # 4. base model
        base = pretrain_base(preset, pretrain, rng, tmp / "tokenizer", tmp / "base", seed, device, progress)
        info = {**wanted, "suggested": suggested_settings(teacher), "base": base,
                "sizes": {"train": len(train), "test": len(test), "pretrain_problems": len(pretrain)},
                "build_seconds": round(time.time() - start, 1)}
        from eval import write_atomic
        write_atomic(tmp / "world.json", json.dumps(info, indent=2) + "\n")
        # 5. move into place, world.json last: a world without it was never finished
        root.mkdir(parents=True, exist_ok=True)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "world.json"):
            item.rename(root / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return world_paths(root, info)


# -----------------------------------------------------------------------------
# 7. The results table of a curriculum run (curriculum.sh calls `python tiny_world.py table RUN`)

STAGES = ("base", "stage1", "stage2", "stage3")


def results_table(run_dir) -> list[dict]:
    """Rows from RUN/eval/<stage>/summary.json (written by eval.py) and RUN/timings.tsv (lines
    `<stage> <seconds>`, the wall time of the step that made the checkpoint), written to
    RUN/results.json and RUN/results.md, plus RUN/results.svg (accuracy against tokens)."""
    from eval import write_atomic
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
    for stage in STAGES:
        summary_path = run / "eval" / stage / "summary.json"
        if not summary_path.is_file():
            continue
        s = json.loads(summary_path.read_text())
        rows.append({"stage": stage, "accuracy": s["accuracy"], "accuracy_ci95": s["accuracy_ci95"],
                     "mean_generated_tokens": s["mean_generated_tokens"], "n": s["n"],
                     "seconds": round(seconds.get(stage, 0.0), 1),
                     "eval_seconds": round(seconds.get(f"eval_{stage}", s.get("seconds", 0.0)), 1)})
    if not rows:
        raise ValueError(f"{run}: no eval/<stage>/summary.json found")
    write_atomic(run / "results.json", json.dumps(rows, indent=2) + "\n")
    base = rows[0]
    lines = ["| stage | accuracy | 95% interval | mean generated tokens | n | seconds (+ eval) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["accuracy_ci95"]
        delta = "" if r is base else (f" ({100 * (r['accuracy'] - base['accuracy']):+.1f} pts, "
                                      f"{100 * (r['mean_generated_tokens'] / base['mean_generated_tokens'] - 1):+.0f}% tokens)")
        lines.append(f"| {r['stage']} | {100 * r['accuracy']:.1f}%{delta} | {100 * low:.1f}-{100 * high:.1f}% | "
                     f"{r['mean_generated_tokens']:.1f} | {r['n']} | {r['seconds']:.0f} (+{r['eval_seconds']:.0f}) |")
    total = sum(seconds.values())
    lines.append(f"\nTotal wall time: {total / 60:.1f} min.")
    write_atomic(run / "results.md", "\n".join(lines) + "\n")
    note = plot(rows, run)
    print("\n".join(lines))
    print(note)
    return rows


def plot(rows: list[dict], run: Path) -> str:
    """Accuracy against mean generated tokens, one point per stage: matplotlib when installed,
    otherwise a small hand-written SVG (so there is always a picture)."""
    from eval import write_atomic
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is not None:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r["mean_generated_tokens"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
        for r in rows:
            ax.annotate(r["stage"], (r["mean_generated_tokens"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(5, 5))
        ax.set_xlabel("mean generated tokens")
        ax.set_ylabel("accuracy (%)")
        fig.tight_layout()
        fig.savefig(run / "results.png", dpi=120)
        return f"plot: {run / 'results.png'}"
    xs = [r["mean_generated_tokens"] for r in rows]
    ys = [100 * r["accuracy"] for r in rows]
    x0, x1 = min(xs) * 0.9, max(xs) * 1.1 + 1e-9
    y0, y1 = max(0.0, min(ys) - 10), min(100.0, max(ys) + 10) + 1e-9

    def at(x, y):  # data -> pixels in a 400x300 picture with 50-pixel margins
        return 50 + 300 * (x - x0) / (x1 - x0), 250 - 200 * (y - y0) / (y1 - y0)

    points = [at(x, y) for x, y in zip(xs, ys)]
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300" font-family="sans-serif" font-size="11">',
           '<rect width="400" height="300" fill="white"/>',
           '<line x1="50" y1="250" x2="350" y2="250" stroke="black"/><line x1="50" y1="50" x2="50" y2="250" stroke="black"/>',
           f'<text x="200" y="285" text-anchor="middle">mean generated tokens ({x0:.0f}-{x1:.0f})</text>',
           f'<text x="15" y="150" transform="rotate(-90 15 150)" text-anchor="middle">accuracy % ({y0:.0f}-{y1:.0f})</text>',
           '<polyline fill="none" stroke="steelblue" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>']
    for (x, y), r in zip(points, rows):
        svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="steelblue"/>'
                   f'<text x="{x + 6:.1f}" y="{y - 6:.1f}">{r["stage"]} ({100 * r["accuracy"]:.0f}%, '
                   f'{r["mean_generated_tokens"]:.0f})</text>')
    svg.append("</svg>")
    write_atomic(run / "results.svg", "\n".join(svg) + "\n")
    return f"plot: {run / 'results.svg'} (matplotlib is not installed; drew a plain SVG instead)"


# -----------------------------------------------------------------------------
# 8. Command line


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        parser = argparse.ArgumentParser(prog="tiny_world.py table", description="The results table of a curriculum run.",
                                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        parser.add_argument("run", help="run folder with eval/<stage>/summary.json and timings.tsv")
        args = parser.parse_args(argv[1:])
        return results_table(args.run)
    parser = argparse.ArgumentParser(description="Build a tiny world: problems, tokenizer, base model "
                                     "(`python tiny_world.py table RUN` prints a curriculum run's results).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="runs/tiny/world", help="world folder (reused if already built)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="the tiny model is faster on CPU than it is worth moving")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    start = time.time()
    world = build_world(args.out, args.preset, args.seed, args.device, progress=not args.quiet)
    info = world.info
    print(f"tiny world ({info['preset']}, seed {info['seed']}) in {world.root}: {info['sizes']['train']} train / "
          f"{info['sizes']['test']} test questions, base model {info['base']['parameters']:,} parameters, "
          f"final loss {info['base']['final_loss']}, built in {info['build_seconds']:.0f} s "
          f"({'reused' if time.time() - start < 5 else 'new'})")
    return world


if __name__ == "__main__":
    main()
