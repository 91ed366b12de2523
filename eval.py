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

    python eval.py --model Qwen/Qwen2.5-3B                    # the full test set, from the hub
    python eval.py --model runs/tiny/stage3 --data runs/tiny/world/test.jsonl --limit 200
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path

# -----------------------------------------------------------------------------
# The prompt and the stop rule

PROMPT_TEMPLATE = (
    "Solve this math problem step by step, showing your complete reasoning.\n"
    "Question: {question}\n"
    'You must end your response with "Final Answer: [number]"\n'
    "Reasoning:"
)


def build_prompt(question: str) -> str:
    return PROMPT_TEMPLATE.format(question=question.strip())


# An answer line: "Final Answer: 18", "Answer: $1,080.50", "answer: -3"
ANSWER_LINE = re.compile(r"(?:Final Answer|Answer):\s*\$?\s*-?\d[\d,]*(?:\.\d+)?", re.IGNORECASE)


def should_stop(completion: str) -> bool:
    """The authors' stop rule: a new `Question:` has begun, or an answer line holds a number and
    then either a line break or more than 20 further characters."""
    if "Question:" in completion:
        return True
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
    for marker in (r"Final Answer:", r"Answer:"):
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
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
                rows.append((f"{path}:{line_no}", record))
                if limit is not None and len(rows) >= limit:
                    break
    elif path.exists():
        raise ValueError(f"{path}: expected a JSONL file")
    else:
        from datasets import load_dataset
        dataset = load_dataset(source, config, split=split)
        for i, record in enumerate(dataset):
            rows.append((f"{source}[{split}][{i}]", record))
            if limit is not None and len(rows) >= limit:
                break
    examples = []
    for where, record in rows:
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


def evaluate(model, tokenizer, examples: list[dict], batch_size: int = 16, max_new_tokens: int = 512,
             progress: bool = True, desc: str = "eval") -> tuple[list[dict], dict]:
    """Greedy completions for every example; returns (per-sample records, summary)."""
    from tqdm import tqdm
    from model import generate
    prompts = tokenizer.encode_batch([build_prompt(e["question"]) for e in examples])
    # similar lengths in one batch waste less on padding; results go back in input order
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    samples: list[dict | None] = [None] * len(examples)
    start = time.time()
    bar = tqdm(total=len(examples), desc=desc, disable=not progress, dynamic_ncols=True)
    correct_so_far = 0
    for lo in range(0, len(order), batch_size):
        batch = order[lo:lo + batch_size]
        out = generate(model, [prompts[i] for i in batch], max_new_tokens, temperature=0.0,
                       tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, stop_fn=should_stop)
        for i, tokens, reason in zip(batch, out.tokens, out.finish_reasons):
            completion = tokenizer.decode(tokens)
            prediction = extract_answer(completion)
            correct = is_correct(prediction, examples[i]["gold"])
            correct_so_far += correct
            samples[i] = {"index": i, "question": examples[i]["question"], "gold": examples[i]["gold"],
                          "prediction": prediction, "correct": correct, "generated_tokens": len(tokens),
                          "finish_reason": reason, "completion": completion}
        bar.update(len(batch))
        done = lo + len(batch)
        bar.set_postfix(acc=f"{correct_so_far / done:.3f}")
    bar.close()
    n = len(samples)
    n_correct = sum(s["correct"] for s in samples)
    total_tokens = sum(s["generated_tokens"] for s in samples)
    seconds = time.time() - start
    summary = {
        "accuracy": n_correct / n,
        "accuracy_ci95": list(wilson_interval(n_correct, n)),
        "mean_generated_tokens": total_tokens / n,
        "n": n,
        "correct": n_correct,
        "truncated": sum(s["finish_reason"] == "length" for s in samples),
        "seconds": round(seconds, 2),
        "generated_tokens_per_second": round(total_tokens / max(seconds, 1e-9), 1),
    }
    return samples, summary


def write_atomic(path: Path, text: str):
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv=None):
    parser = argparse.ArgumentParser(description="GSM8K accuracy and generated length, as in the BRIDGE paper.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id (e.g. Qwen/Qwen2.5-3B)")
    parser.add_argument("--data", default="openai/gsm8k", help="hub dataset id, or a local GSM8K-format JSONL file")
    parser.add_argument("--split", default="test", help="hub dataset split")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N questions only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: as stored in the checkpoint")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", default=None, help="output folder (default: runs/eval/<model name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from model import Qwen2, load_tokenizer
    examples = load_gsm8k(args.data, args.split, args.limit)
    device = args.device or default_device()
    model = Qwen2.from_pretrained(args.model, dtype=args.dtype, device=device)
    tokenizer = load_tokenizer(model.source_dir)
    samples, summary = evaluate(model, tokenizer, examples, args.batch_size, args.max_new_tokens,
                                progress=not args.quiet)
    summary.update({"model": str(args.model), "data": str(args.data), "split": args.split,
                    "max_new_tokens": args.max_new_tokens})
    out = Path(args.out) if args.out else Path("runs/eval") / re.sub(r"[^\w.-]+", "_", str(args.model)).strip("_")
    write_atomic(out / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    low, high = summary["accuracy_ci95"]
    print(f"{args.model}: accuracy {summary['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}), "
          f"{summary['mean_generated_tokens']:.1f} generated tokens on average, n={summary['n']} -> {out}")
    return summary


if __name__ == "__main__":
    main()
