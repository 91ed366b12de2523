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
import re
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
    on_batch(samples) is called as each batch finishes (answer_the_rest appends them to
    samples.jsonl)."""
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
# The command line: samples.jsonl grows batch by batch (cli.SampleLog), and a rerun of the same
# command continues from it


def parse_args(argv=None):
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
    return parser.parse_args(argv)


def out_folder(args) -> Path:
    """--out, else runs/eval/<model name> with what a folder name should not hold made `_`."""
    return Path(args.out) if args.out else Path("runs/eval") / re.sub(r"[^\w.-]+", "_", str(args.model)).strip("_")


def run_settings(args, model_dir: Path) -> dict:
    """What decides the completions. The weights are identified by their files' sizes and
    modification times: a model retrained into the same folder must not pass for the old one."""
    weights = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(model_dir.iterdir())
               if p.name == "config.json" or p.name.endswith((".safetensors", ".safetensors.index.json"))}
    return {"model": str(args.model), "weights": weights, "data": str(args.data), "split": args.split,
            "max_new_tokens": args.max_new_tokens, "dtype": args.dtype}


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def answer_the_rest(args, model_dir: Path, examples: list[dict], done: dict[int, dict],
                    log: cli.SampleLog) -> tuple[list[dict], dict]:
    """Load the model and evaluate the questions not in `done`, appending each batch to the log
    as it finishes; on Ctrl-C, what is saved stays, and the message says how to go on."""
    from generate import compile_decode
    from model import Qwen2
    from tokenizer import load_tokenizer
    device = args.device or default_device()
    model = Qwen2.from_pretrained(model_dir, dtype=args.dtype, device=device)
    if args.compile:
        compile_decode(model)
    tokenizer = load_tokenizer(model_dir)
    saved: list[dict] = []

    def save(batch: list[dict]):
        log.append(batch)
        saved.extend(batch)

    try:
        return evaluate(model, tokenizer, examples, args.batch_size, args.max_new_tokens,
                        progress=not args.quiet, done=done, on_batch=save)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"{len(done) + len(saved)} of {len(examples)} questions done, kept in "
                                f"{log.path}; run the same command again to continue") from None


def main(argv=None):
    args = parse_args(argv)
    # 1. the output folder first: a bad --out should fail now, not after the generation
    log = cli.SampleLog(out_folder(args))

    # 2. the questions, and what an interrupted run of this same command already answered
    examples = load_gsm8k(args.data, args.split, args.limit)
    from model import resolve_checkpoint_dir  # torch: after the data checks
    model_dir = resolve_checkpoint_dir(args.model)

    def same_question(i: int, sample: dict) -> bool:  # an IndexError past the last: a smaller --limit
        return sample["question"] == examples[i]["question"] and sample["gold"] == examples[i]["gold"]

    done = log.resume(run_settings(args, model_dir), same_question)
    if done:
        print(f"{log.path}: {len(done)} of {len(examples)} questions already done, continuing")

    # 3. generate the rest, appending each batch as it finishes
    if len(done) < len(examples):
        samples, summary = answer_the_rest(args, model_dir, examples, done, log)
    else:
        samples = [done[i] for i in range(len(examples))]
        summary = summarize(samples, 0.0, 0)
    summary.update({"model": str(args.model), "data": str(args.data), "split": args.split,
                    "max_new_tokens": args.max_new_tokens})
    # 4. the samples again, now in question order, and the summary over all of them
    log.write_all(samples)
    write_atomic(log.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    low, high = summary["accuracy_ci95"]
    print(f"{args.model}: accuracy {summary['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}), "
          f"{summary['mean_generated_tokens']:.1f} generated tokens on average, n={summary['n']} -> {log.out}")
    return summary

if __name__ == "__main__":
    cli.run(main)
