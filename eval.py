"""
GSM8K evaluation, exactly as the BRIDGE authors ran it, with their scoring bug fixed.

The protocol (PAPER.md, "Evaluation"): a zero-shot plain-text prompt (no chat template),
greedy decoding, at most 512 new tokens, stopping when the model starts a new `Question:` or
has finished its answer line. The prediction is the number after `Final Answer:`, else after
`Answer:`, else the last number in the text. The authors compared strings, which marks `18.0`
against `18` wrong; we compare numbers. Length is the number of generated tokens, averaged over
all questions, counting everything the model produced up to the stop.

This file is the only place that knows GSM8K; the stages import its pieces (the prompt, the
answer extraction, the correctness check, the data loader).

A full test set takes hours on a small GPU, so nothing done is lost to an interruption: the output
folder is checked before the model loads, samples.jsonl grows one batch at a time, and running the
same command again (after Ctrl-C, a killed job, a full disk) continues where it stopped.
settings.json records what made the samples (model, its weights files' sizes and times, data,
split, --max-new-tokens, --dtype); a rerun with other ones is refused rather than mixed in. At the
end samples.jsonl is rewritten in question order and summary.json covers every question.

    python eval.py --model Qwen/Qwen2.5-3B                    # the full test set, from the hub
    python eval.py --model runs/tiny/stage3 --data runs/tiny/world/test.jsonl --limit 200
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Container, Iterator

import cli
from cli import positive_int, write_atomic
# torch, the model and generate are imported inside the functions that run a model: the data
# half of this file (prompt, stop rule, grading, loading) is what teacher.py and tiny_world.py
# import, and without torch it loads in a fraction of torch's own import time
# (tests/test_eval.py::test_the_data_modules_import_without_torch; docs/performance.md).
if TYPE_CHECKING:   # for the annotations only
    from generate import Generation

# -----------------------------------------------------------------------------
# The prompt and the stop rule

PROMPT_TEMPLATE = (
    "Solve this math problem step by step, showing your complete reasoning.\n"
    "Question: {question}\n"
    "{hints}"
    'You must end your response with "Final Answer: [number]"\n'
    "Reasoning:"
)


def build_prompt(question: str, hints: str = "") -> str:
    """The authors' zero-shot prompt. `hints` (lines ending in a newline, none by default) goes
    between the question and the answer-format line: stage 2's partly masked teacher steps."""
    return PROMPT_TEMPLATE.format(question=question.strip(), hints=hints)


# The answer label, one rule for the whole repository (the stop rule, extract_answer, and the
# rewards' format check and answer_part in stages 2-3): "Final Answer:" or "Answer:", any case.
ANSWER_LABEL = re.compile(r"(?:Final Answer|Answer):", re.IGNORECASE)
# An answer line: "Final Answer: 18", "Answer: $1,080.50", "answer: -3"
ANSWER_LINE = re.compile(ANSWER_LABEL.pattern + r"\s*\$?\s*-?\d[\d,]*(?:\.\d+)?", re.IGNORECASE)


def should_stop(completion: str) -> bool:
    """The authors' stop rule: a new `Question:` has begun, or an answer line holds a number and
    then either a line break or more than 20 further characters."""
    if "Question:" in completion:
        return True
    # generate asks this at every token, and the regex scan is the slow part: skip it while no
    # "wer:" is in sight. Exact: the only characters that match w, e, r or : under IGNORECASE are
    # W/w, E/e, R/r and : (tests/test_eval.py checks every code point), and lower() maps those to "wer:".
    if "wer:" not in completion.lower():
        return False
    match = ANSWER_LINE.search(completion)
    if match:
        after = completion[match.end():]
        return "\n" in after or len(after) > 20
    return False


# -----------------------------------------------------------------------------
# Answer extraction and scoring

# A number: optional sign (not when it is a hyphen between words or digits), digits with
# optional thousands commas, optional decimals.
NUMBER = re.compile(r"(?:(?<![\w)])-)?\d[\d,]*(?:\.\d+)?")


def _first_number(text: str) -> str | None:
    match = NUMBER.search(text.replace("$", ""))
    return match.group(0).replace(",", "") if match else None


def strip_continuation(completion: str) -> str:
    """The completion up to where the model starts inventing a new `Question:`."""
    return completion.split("Question:", 1)[0]


def extract_answer(completion: str) -> str | None:
    """Final Answer: -> Answer: -> last number in the text; commas and `$` removed; None if no number."""
    text = strip_continuation(completion)
    for marker in (r"Final Answer:", r"Answer:"):   # ANSWER_LABEL's two spellings, the longer first
        for match in re.finditer(marker, text, re.IGNORECASE):
            line = text[match.end():].split("\n", 1)[0]
            number = _first_number(line)
            if number is not None:
                return number
    numbers = NUMBER.findall(text.replace("$", ""))
    return numbers[-1].replace(",", "") if numbers else None


def parse_gold(answer_field: str) -> str:
    """The number after `####` in a GSM8K answer, commas removed."""
    if "####" not in answer_field:
        raise ValueError("answer has no '#### N' line")
    number = _first_number(answer_field.split("####")[-1])
    if number is None:
        raise ValueError("no number after '####'")
    return number


def to_number(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def is_correct(prediction: str | None, gold: str) -> bool:
    """Numbers compared as numbers: `18.0` equals `18`, `1,080` equals `1080`."""
    predicted, expected = to_number(prediction), to_number(gold)
    return predicted is not None and expected is not None and predicted == expected


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% confidence interval of a proportion (Wilson score; sane at 0% and 100%)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


# -----------------------------------------------------------------------------
# Data: a local GSM8K-format JSONL file, or a hub dataset


def load_gsm8k(source: str = "openai/gsm8k", split: str = "test", limit: int | None = None,
               config: str = "main") -> list[dict]:
    """Examples as dicts with `question`, `answer` (the worked solution) and `gold` (a number string)."""
    path = Path(source)
    rows: list[tuple[str, dict]] = []
    if path.is_file():
        for line_no, _, record in cli.jsonl_records(path):
            rows.append((f"{path}:{line_no}", record))
            if limit is not None and len(rows) >= limit:
                break
    elif path.exists():
        raise ValueError(f"{path}: expected a JSONL file")
    elif cli.looks_like_path(source) or path.suffix in (".jsonl", ".json"):
        raise FileNotFoundError(f"{path}: no such file (a GSM8K-format JSONL file, or a hub id like openai/gsm8k)")
    else:
        from datasets import load_dataset
        try:
            dataset = load_dataset(source, config, split=split)
        except Exception as e:  # offline, no such dataset or split: one line naming what was asked for
            raise FileNotFoundError(f"{source}: no such local file, and loading it from the hub failed "
                                    f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
        for i, record in enumerate(dataset):
            rows.append((f"{source}[{split}][{i}]", record))
            if limit is not None and len(rows) >= limit:
                break
    examples = []
    for where, record in rows:
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object with 'question' and 'answer'")
        for key in ("question", "answer"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"{where}: field '{key}' is missing or not a string")
        try:
            gold = parse_gold(record["answer"])
        except ValueError as e:
            raise ValueError(f"{where}: field 'answer': {e}") from None
        examples.append({"question": record["question"], "answer": record["answer"], "gold": gold})
    if not examples:
        raise ValueError(f"{source}: no examples")
    return examples


# -----------------------------------------------------------------------------
# Evaluation


def check_context(prompts: list[list[int]], max_new_tokens: int, window: int):
    """Refuse, before any generation, a question whose prompt cannot fit the model's context
    window (max_position_embeddings), or a --max-new-tokens that would run past it: rotary
    positions beyond the window raise no error, they only make garbage."""
    if not prompts:
        return
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    tokens = len(prompts[longest])
    if tokens >= window:
        raise ValueError(f"--data question {longest + 1}: its prompt alone is {tokens} tokens, the model's "
                         f"context window is {window} (max_position_embeddings in config.json)")
    if tokens + max_new_tokens > window:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: the longest prompt (question {longest + 1}) has "
                         f"{tokens} tokens, and {tokens} + {max_new_tokens} > {window}, the model's context window "
                         f"(max_position_embeddings); use --max-new-tokens {window - tokens} or less")


def answer_in_batches(model, tokenizer, prompts: list[list[int]], prompts_per_call: int, max_new_tokens: int,
                      k: int = 1, temperature: float = 0.0, top_p: float = 1.0, generator=None,
                      skip: Container[int] = ()) -> Iterator[tuple[list[int], "Generation"]]:
    """The student answering prompts (token ids) as eval.py asks it, batch by batch: yields
    (prompt indices, their Generation: k completions each, prompt-major) under the stop rule.
    Shortest prompts first, since similar lengths in one batch waste less on padding; `skip`
    leaves out prompts already answered. The batches depend only on the prompts and `skip`, so
    a resumed evaluation (it stopped between batches) makes the batches the first run would have
    made, and the same completions. evaluate (greedy, k=1), stage 3's failure mining and
    tiny_world's table of the base under each prompt form use it (call it under torch.no_grad())."""
    from generate import generate
    order = [i for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if i not in skip]
    for lo in range(0, len(order), prompts_per_call):
        batch = order[lo:lo + prompts_per_call]
        yield batch, generate(model, [prompts[i] for i in batch], max_new_tokens, temperature=temperature,
                              top_p=top_p, num_samples=k, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                              stop_fn=should_stop, generator=generator)


def evaluate(model, tokenizer, examples: list[dict], batch_size: int = 16, max_new_tokens: int = 512,
             progress: bool = True, desc: str = "eval", done: dict[int, dict] | None = None,
             on_batch: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], dict]:
    """Greedy completions for every example; returns (per-sample records, summary).

    done: samples an interrupted run already made, by index; they are kept, not generated again.
    on_batch(samples) is called as each batch finishes (main appends them to samples.jsonl)."""
    from tqdm import tqdm
    done = done or {}
    prompts = tokenizer.encode_batch([build_prompt(e["question"]) for e in examples])
    check_context(prompts, max_new_tokens, model.config.max_position_embeddings)
    samples: list[dict | None] = [done.get(i) for i in range(len(examples))]
    start = time.time()
    bar = tqdm(total=len(examples), initial=len(done), desc=desc, disable=not progress, dynamic_ncols=True)
    correct_so_far, answered = sum(s["correct"] for s in done.values()), len(done)
    new_tokens = 0
    for batch, out in answer_in_batches(model, tokenizer, prompts, batch_size, max_new_tokens, skip=done):
        for i, tokens, reason in zip(batch, out.tokens, out.finish_reasons):
            completion = tokenizer.decode(tokens)
            prediction = extract_answer(completion)
            correct = is_correct(prediction, examples[i]["gold"])
            correct_so_far += correct
            new_tokens += len(tokens)
            samples[i] = {"index": i, "question": examples[i]["question"], "gold": examples[i]["gold"],
                          "prediction": prediction, "correct": correct, "generated_tokens": len(tokens),
                          "finish_reason": reason, "completion": completion}
        if on_batch is not None:
            on_batch([samples[i] for i in batch])
        answered += len(batch)
        bar.update(len(batch))
        bar.set_postfix(acc=f"{correct_so_far / answered:.3f}")
    bar.close()
    return samples, summarize(samples, time.time() - start, new_tokens)


def summarize(samples: list[dict], seconds: float, new_tokens: int) -> dict:
    """Accuracy, its interval and mean length over all samples; the speed is this run's own (a
    resumed run timed only the tokens it generated)."""
    n = len(samples)
    n_correct = sum(s["correct"] for s in samples)
    total_tokens = sum(s["generated_tokens"] for s in samples)
    return {
        "accuracy": n_correct / n,
        "accuracy_ci95": list(wilson_interval(n_correct, n)),
        "mean_generated_tokens": total_tokens / n,
        "n": n,
        "correct": n_correct,
        "truncated": sum(s["finish_reason"] == "length" for s in samples),
        "seconds": round(seconds, 2),
        "generated_tokens_per_second": round(new_tokens / max(seconds, 1e-9), 1),
    }


# -----------------------------------------------------------------------------
# Output that survives an interruption: samples.jsonl grows batch by batch, and a rerun of the
# same command continues from it (settings.json says which command made it)


def check_writable(out: Path):
    """Fail on a bad --out now, not after hours of generation."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise cli.UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def run_settings(args, model_dir: Path) -> dict:
    """What decides the completions. The weights are identified by their files' sizes and
    modification times: a model retrained into the same folder must not pass for the old one."""
    weights = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(model_dir.iterdir())
               if p.name == "config.json" or p.name.endswith((".safetensors", ".safetensors.index.json"))}
    return {"model": str(args.model), "weights": weights, "data": str(args.data), "split": args.split,
            "max_new_tokens": args.max_new_tokens, "dtype": args.dtype}


def read_done(out: Path, settings: dict, examples: list[dict]) -> dict[int, dict]:
    """The samples an earlier run of this command left in out/samples.jsonl, by index. Refuses
    samples made with other settings, or for other questions; drops a last line cut short."""
    path, settings_path = out / "samples.jsonl", out / "settings.json"
    lines = path.read_text(encoding="utf-8").split("\n") if path.is_file() else []
    lines = lines[:-1]  # the piece after the last newline: empty, or a line the interruption cut short
    if not lines:
        return {}
    if not settings_path.is_file():
        raise cli.UsageError(f"{path}: samples without settings.json (an older eval.py?); delete them or choose another --out")
    try:
        before = json.loads(settings_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{settings_path}: not valid JSON ({e.msg})") from None
    changed = [key for key in settings if before.get(key) != settings[key]]
    if changed:
        key = changed[0]
        what = "the weights files of --model changed" if key == "weights" else f"{key} was {before.get(key)!r}, now {settings[key]!r}"
        raise cli.UsageError(f"{path}: made by another run ({what}); delete {out} or choose another --out")
    done = {}
    for line_no, line in enumerate(lines, 1):
        try:
            sample = json.loads(line)
            i = sample["index"]
            if not isinstance(i, int) or i < 0:
                raise TypeError("index")
            ok = sample["question"] == examples[i]["question"] and sample["gold"] == examples[i]["gold"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{line_no}: not a sample record; delete the file to start again") from None
        except IndexError:
            continue  # a question past this run's --limit
        if not ok:
            raise cli.UsageError(f"{path}:{line_no}: question {i + 1} is not the one in --data {settings['data']}; "
                                 f"delete {out} or choose another --out")
        done[i] = sample
    return done


def append_samples(path: Path, samples: list[dict]):
    """One batch at a time, flushed to disk: an interruption loses at most the batch in flight."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(s) + "\n" for s in samples))
        f.flush()
        os.fsync(f.fileno())


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None):
    parser = cli.ArgumentParser(description="GSM8K accuracy and generated length, as in the BRIDGE paper.")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id (e.g. Qwen/Qwen2.5-3B)")
    parser.add_argument("--data", default="openai/gsm8k", help="hub dataset id, or a local GSM8K-format JSONL file")
    parser.add_argument("--split", default="test", help="hub dataset split")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N questions only")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="questions per generate call")
    parser.add_argument("--max-new-tokens", type=positive_int, default=512, help="the authors' limit")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: as stored in the checkpoint")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", default=None, help="output folder (default: runs/eval/<model name>)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decode step (generate.compile_decode): minutes to compile on a CPU, "
                             "for long evaluations on a GPU")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # 1. the output folder first: a bad --out should fail now, not after the generation
    out = Path(args.out) if args.out else Path("runs/eval") / re.sub(r"[^\w.-]+", "_", str(args.model)).strip("_")
    check_writable(out)
    samples_path = out / "samples.jsonl"

    # 2. the questions, and what an interrupted run of this same command already answered
    examples = load_gsm8k(args.data, args.split, args.limit)
    from generate import compile_decode  # torch: after the data checks
    from model import Qwen2, resolve_checkpoint_dir
    from tokenizer import load_tokenizer
    model_dir = resolve_checkpoint_dir(args.model)
    settings = run_settings(args, model_dir)
    done = read_done(out, settings, examples)
    write_atomic(out / "settings.json", json.dumps(settings, indent=2) + "\n")
    write_atomic(samples_path, "".join(json.dumps(s) + "\n" for s in done.values()))  # without a cut line
    if done:
        print(f"{samples_path}: {len(done)} of {len(examples)} questions already done, continuing")

    # 3. generate the rest, appending each batch as it finishes
    if len(done) < len(examples):
        device = args.device or default_device()
        model = Qwen2.from_pretrained(model_dir, dtype=args.dtype, device=device)
        if args.compile:
            compile_decode(model)
        tokenizer = load_tokenizer(model_dir)
        saved: list[dict] = []

        def save(batch: list[dict]):
            append_samples(samples_path, batch)
            saved.extend(batch)

        try:
            samples, summary = evaluate(model, tokenizer, examples, args.batch_size, args.max_new_tokens,
                                        progress=not args.quiet, done=done, on_batch=save)
        except KeyboardInterrupt:  # Ctrl-C: what is saved stays; say how to go on
            raise KeyboardInterrupt(f"{len(done) + len(saved)} of {len(examples)} questions done, kept in "
                                    f"{samples_path}; run the same command again to continue") from None
    else:
        samples = [done[i] for i in range(len(examples))]
        summary = summarize(samples, 0.0, 0)
    summary.update({"model": str(args.model), "data": str(args.data), "split": args.split,
                    "max_new_tokens": args.max_new_tokens})
    # 4. the samples again, now in question order, and the summary over all of them
    write_atomic(samples_path, "".join(json.dumps(s) + "\n" for s in samples))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    low, high = summary["accuracy_ci95"]
    print(f"{args.model}: accuracy {summary['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}), "
          f"{summary['mean_generated_tokens']:.1f} generated tokens on average, n={summary['n']} -> {out}")
    return summary


if __name__ == "__main__":
    cli.run(main)
