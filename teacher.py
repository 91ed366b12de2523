"""
Teacher rationales: the one record format the three stages share, read from every source we have.

BRIDGE distils a teacher's step-by-step reasoning into the student (../shared/PAPER.md,
"Setting"). Each stage needs the same four things per training question: the question, the gold
answer, the teacher's rationale, and that rationale cut into steps (stage 1 masks and shuffles
steps, stage 2 masks some and counts them in its reward, stage 3 rewrites the whole). This file
turns every source into that record, `TeacherExample`, so no stage knows where its data came from:

  1. `gsm8k`      - GSM8K's own worked solutions (the default, so everything runs without a
                    teacher model): lines become steps, `<<48/2=24>>` calculator annotations are
                    removed, the `#### N` line is the answer.
  2. the authors' released files, read as they are: their stage-1/2 JSONL
                    ({"input": "Question: ...", "target": "Thinking...\\n...Step 1: ...Answer: N"})
                    and their stage-3 JSON list (question, gold_answer, teacher_cot, ...).
  3. our teacher JSONL, one {"question", "answer", "rationale", "steps"} per line, which
                    `python teacher.py generate` writes by running a teacher model (any
                    Qwen2-architecture checkpoint, through model.py) on GSM8K train and keeping
                    only rationales whose answer is right. A GSM8K-format JSONL also works.

Steps are found by `split_steps`: on `Step N:` markers; failing that a numbered list, then
lines, then sentences. The authors' "Thinking..." preamble and an R1-style <think> block are
not steps; the final `Answer:` line is the answer, not a step (the rationale of the authors'
records keeps their thinking, as they did, unless `--thinking drop`; see parse_record).
`format_rationale` writes the canonical form every stage trains on:
"Step 1: ...\\nStep 2: ...\\nAnswer: N".

Bad records (a line that is not JSON, no question, no answer, no steps) are reported with file
and line, counted by reason, and skipped; loading stops with an error when nothing usable is left.

    python teacher.py show gsm8k --rows 0:3
    python teacher.py show ../shared/data/bridge/stage3_error_samples.json
    python teacher.py generate --model Qwen/Qwen2.5-7B-Instruct --out runs/teacher/qwen7b.jsonl --limit 2000
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cli
from eval import extract_answer, is_correct, parse_gold, to_number
from cli import nonnegative_float, nonnegative_int, nucleus, positive_int, row_slice, rows_option
# torch-side modules are imported in generate_main, the one function that runs a model, so the
# data half (reading and converting rationales) loads without torch, as eval.py's does.

HUB_GSM8K = "openai/gsm8k"


@dataclass
class TeacherExample:
    question: str
    answer: str          # the gold answer, a number as a string (commas removed)
    rationale: str       # the teacher's rationale ("Step 1: ...\nAnswer: N" unless the file says otherwise)
    steps: list[str]     # the rationale's steps, without their "Step k:" labels and without the answer


# -----------------------------------------------------------------------------
# 1. Steps: find them in free text, and write them back in the canonical form

STEP_MARKER = re.compile(r"\bStep\s*(\d+)\s*:", re.IGNORECASE)
# Where a teacher's steps end. Broader than eval.ANSWER_LABEL on purpose: this reads other
# people's files (markdown bold, "Final  Answer :", GSM8K's "####"); the steps found are
# written back with a plain "Answer: N" line (format_rationale), which eval reads, except the
# authors' released rationales under --thinking keep, which stay as they were written.
ANSWER_MARKER = re.compile(r"(?:\*\*)?\b(?:Final\s+)?Answer\s*:|####", re.IGNORECASE)
NUMBERED_ITEM = re.compile(r"^[ \t]*(?:\*\*)?\d+[.)][ \t]+", re.MULTILINE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9$(])")
THINKING_WORD = re.compile(r"^\s*Thinking\s*(?:…|\.{2,3})?", re.IGNORECASE)
DONE_THINKING = re.compile(r"\.{0,3}\s*done\s+thinking\s*\.{0,3}", re.IGNORECASE)
CALCULATOR = re.compile(r"<<[^<>]*>>")


def clean_step(text: str) -> str:
    """One line of plain text: whitespace collapsed, stray markdown bold and list dashes trimmed."""
    text = " ".join(text.split())
    return text.strip(" *-:").strip()


def strip_preamble(text: str) -> str:
    """Drop what comes before the reasoning proper: an R1-style <think>...</think> block, or the
    authors' "Thinking..." section when there are no `Step N:` markers to start from."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    if STEP_MARKER.search(text):
        return text  # split_steps starts at the first marker; what precedes it is preamble
    done = DONE_THINKING.search(text)
    if done and THINKING_WORD.match(text):
        return text[done.end():]
    return THINKING_WORD.sub("", text, count=1)


def _cut_answer(text: str) -> str:
    """The text before the first answer marker (`Answer:`, `Final Answer:`, `####`)."""
    match = ANSWER_MARKER.search(text)
    return text[:match.start()] if match else text


def split_steps(text: str) -> list[str]:
    """The reasoning steps of a rationale, in order, labels and final answer removed.

    Tried in turn: `Step N:` markers (from the last `Step 1:`, so a solution that restarts its
    numbering after some thinking keeps only the final run); a numbered list of >= 2 items;
    >= 2 non-empty lines; sentences. Calculator annotations `<<...>>` are removed."""
    text = CALCULATOR.sub("", strip_preamble(text))
    markers = list(STEP_MARKER.finditer(text))
    if markers:
        ones = [i for i, m in enumerate(markers) if m.group(1) == "1"]
        markers = markers[ones[-1]:] if ones else markers
        bounds = [m.end() for m in markers]
        chunks = [text[a:b.start()] for a, b in zip(bounds, markers[1:])]
        chunks.append(_cut_answer(text[bounds[-1]:]))
    else:
        body = _cut_answer(text)
        items = list(NUMBERED_ITEM.finditer(body))
        lines = [line for line in body.splitlines() if clean_step(line)]
        if len(items) >= 2:
            chunks = [body[a.end():(b.start() if b else len(body))]
                      for a, b in zip(items, items[1:] + [None])]
        elif len(lines) >= 2:
            chunks = lines
        else:
            chunks = SENTENCE_END.split(body)
    return [s for s in (clean_step(c) for c in chunks) if s]


def format_rationale(steps: list[str], answer: str) -> str:
    """The canonical rationale every stage trains on and the eval reads back."""
    lines = [f"Step {i}: {step}" for i, step in enumerate(steps, 1)]
    return "\n".join(lines + [f"Answer: {answer}"])


def num_masked(n: int) -> int:
    """How many of n teacher steps stage 2's hint prompt hides: max(3, floor(n/2)), at most n-1;
    none when n < 2 (PAPER.md). Stage 1's `--masked-steps half` hides as many."""
    if n < 2:
        return 0
    return min(max(3, n // 2), n - 1)


def normalize_answer(value) -> str | None:
    """A gold answer as a plain number string ("1,080" -> "1080", "$18" -> "18"); None if not a number."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip().replace(",", "").lstrip("$").strip()
    return text if to_number(text) is not None else None


# -----------------------------------------------------------------------------
# 2. Records: one parser per source format, all producing TeacherExample


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is the short category it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}{': ' + detail if detail else ''}")
        self.reason = reason


def _question(record: dict) -> str:
    question = record.get("question")
    if question is None and isinstance(record.get("input"), str):
        # the authors' stage-1/2 input is "Question: <text>"
        question = re.sub(r"^\s*Question:\s*", "", record["input"])
    if not isinstance(question, str) or not question.strip():
        raise BadRecord("no question", "field 'question' is missing or empty")
    return question.strip()


def _answer_from_text(text: str) -> str | None:
    """The number on the last `Answer:` line of a rationale (the authors' targets end with one)."""
    lines = [m for m in re.finditer(r"(?:Final\s+)?Answer\s*:([^\n]*)", text, re.IGNORECASE)]
    for match in reversed(lines):
        number = extract_answer("Answer:" + match.group(1))
        if number is not None:
            return normalize_answer(number)
    return None


def _steps_or_fail(text: str) -> list[str]:
    steps = split_steps(text)
    if not steps:
        raise BadRecord("no steps", "the rationale has no reasoning steps")
    return steps


THINKING = ("keep", "drop")


def parse_record(record, thinking: str = "keep") -> TeacherExample:
    """One record of any supported format -> TeacherExample; raises BadRecord.

    thinking: what the rationale of the authors' released records holds. "keep" (their own
    choice): the whole teacher text, its "Thinking..." section included, as their stage-3
    prompt showed it and their length ratio counted it (292 words on average in
    stage3_error_samples.json); "drop": only the steps and the answer line, in the canonical
    form (147 words on average). The steps never hold the thinking."""
    if thinking not in THINKING:
        raise ValueError(f"thinking {thinking!r}: expected one of {THINKING}")
    if not isinstance(record, dict):
        raise BadRecord("not an object", f"expected a JSON object, got {type(record).__name__}")
    question = _question(record)
    if "rationale" in record or "steps" in record:                    # ours
        answer = normalize_answer(record.get("answer"))
        if answer is None:
            raise BadRecord("no answer", f"field 'answer' is {record.get('answer')!r}, not a number")
        steps = record.get("steps")
        rationale = record.get("rationale")
        if steps is not None:
            if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
                raise BadRecord("bad steps", "field 'steps' must be a list of strings")
            steps = [s for s in (clean_step(s) for s in steps) if s]
        elif isinstance(rationale, str):
            steps = split_steps(rationale)
        if not steps:
            raise BadRecord("no steps", "the rationale has no reasoning steps")
        if not isinstance(rationale, str) or not rationale.strip():
            rationale = format_rationale(steps, answer)
        return TeacherExample(question, answer, rationale.strip(), steps)
    if "teacher_cot" in record:                                          # authors' stage-3 list
        answer = normalize_answer(record.get("gold_answer"))
        if answer is None:
            raise BadRecord("no answer", f"field 'gold_answer' is {record.get('gold_answer')!r}, not a number")
        text = str(record["teacher_cot"])
        steps = _steps_or_fail(text)
        rationale = text.strip() if thinking == "keep" else format_rationale(steps, answer)
        return TeacherExample(question, answer, rationale, steps)
    if "target" in record:                                               # authors' stage-1/2 JSONL
        meta = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        target = str(record["target"])
        answer = normalize_answer(meta.get("gold_answer", record.get("gold_answer"))) or _answer_from_text(target)
        if answer is None:
            raise BadRecord("no answer", "no gold_answer and no number on an 'Answer:' line of 'target'")
        steps = _steps_or_fail(target)
        rationale = target.strip() if thinking == "keep" else format_rationale(steps, answer)
        return TeacherExample(question, answer, rationale, steps)
    if isinstance(record.get("answer"), str) and "####" in record["answer"]:  # GSM8K
        try:
            answer = parse_gold(record["answer"])
        except ValueError as e:
            raise BadRecord("no answer", str(e)) from None
        steps = _steps_or_fail(record["answer"])
        return TeacherExample(question, answer, format_rationale(steps, answer), steps)
    if "answer" not in record:
        raise BadRecord("no answer", "no 'answer' field (keys: " + ", ".join(sorted(record)) + ")")
    raise BadRecord("no rationale", "no 'rationale', 'steps', 'teacher_cot', 'target' or GSM8K '####' "
                    "solution (keys: " + ", ".join(sorted(record)) + ")")


# -----------------------------------------------------------------------------
# 3. Sources: where the records come from, each with a "file:line" to blame


def default_gsm8k_path() -> Path:
    shared = Path(os.environ.get("BRIDGE_SHARED", Path(__file__).resolve().parent.parent / "shared"))
    return shared / "data" / "gsm8k" / "train.jsonl"


def _raw_records(source: str, gsm8k_path: str | None) -> tuple[str, list[tuple[str, str | dict]]]:
    """(display name, [(where, JSON text or already-parsed record)]) in file order."""
    if source == "gsm8k":
        path = Path(gsm8k_path) if gsm8k_path else default_gsm8k_path()
        if not path.is_file():
            if gsm8k_path:
                raise FileNotFoundError(f"{path}: GSM8K file not found")
            from datasets import load_dataset  # no local copy: the hub
            rows = load_dataset(HUB_GSM8K, "main", split="train")
            return HUB_GSM8K, [(f"{HUB_GSM8K}[train][{i}]", dict(r)) for i, r in enumerate(rows)]
        source = str(path)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher data not found (a file, or 'gsm8k')")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of records or a JSONL file")
        return str(path), [(f"{path}: item {i}", item) for i, item in enumerate(items)]
    return str(path), [(f"{path}:{n}", line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def load_teacher_data(source: str, rows: slice | None = None, gsm8k_path: str | None = None,
                      quiet: bool = False, max_warnings: int = 5, thinking: str = "keep") -> list[TeacherExample]:
    """Every usable record of `source` (after taking `rows` of its records), as TeacherExample.

    source: `gsm8k` (GSM8K train: `gsm8k_path`, else ../shared's copy, else the hub), or a path to
    a JSONL file (ours, the authors' stage-1/2 format, or GSM8K's) or a JSON list (the authors'
    stage-3 file). Bad records are reported (file:line and why, the first few of each kind),
    counted, and skipped; a ValueError when none is left. `thinking`: see parse_record."""
    name, raw = _raw_records(source, gsm8k_path)
    if rows is not None:
        raw = raw[rows]
    examples: list[TeacherExample] = []
    skipped: Counter[str] = Counter()
    first_at: dict[str, str] = {}
    for where, item in raw:
        try:
            if isinstance(item, str):
                try:
                    item = json.loads(item)
                except json.JSONDecodeError as e:
                    raise BadRecord("not valid JSON", e.msg) from None
            examples.append(parse_record(item, thinking))
        except BadRecord as e:
            skipped[e.reason] += 1
            first_at.setdefault(e.reason, where)
            if not quiet and skipped[e.reason] <= max_warnings:
                print(f"{where}: skipped, {e}", file=sys.stderr)
    summary = ", ".join(f"{n} {reason} (first at {first_at[reason]})" for reason, n in skipped.most_common())
    if not examples:
        raise ValueError(f"{name}: no usable teacher records in {len(raw)} rows"
                         + (f"; skipped {summary}" if summary else ""))
    if skipped and not quiet:
        print(f"{name}: {len(examples)} teacher examples, skipped {sum(skipped.values())}: {summary}",
              file=sys.stderr)
    return examples


def add_teacher_arguments(parser, rows: str | None = None):
    """The options every stage script shares for choosing its teacher data (on a parser or one of
    its argument groups)."""
    parser.add_argument("--teacher-data", default="gsm8k",
                        help="'gsm8k' (GSM8K train solutions), our teacher JSONL, the authors' stage-1/2 "
                             "JSONL or their stage-3 JSON list")
    parser.add_argument("--rows", type=rows_option, default=rows,
                        help="START:END, a Python slice of the teacher records (none: every record)")
    parser.add_argument("--gsm8k-path", default=None,
                        help="GSM8K train JSONL for --teacher-data gsm8k (default: ../shared's copy, else the hub)")
    parser.add_argument("--thinking", default="keep", choices=THINKING,
                        help="the authors' released rationales: keep their 'Thinking...' section in the rationale "
                             "(as the authors did; stage 3's prompt and length ratio use it) or drop it (steps only)")


def load_from_args(args, quiet: bool = False) -> list[TeacherExample]:
    return load_teacher_data(args.teacher_data, row_slice(args.rows), args.gsm8k_path, quiet=quiet,
                             thinking=getattr(args, "thinking", "keep"))


# -----------------------------------------------------------------------------
# 4. Generating rationales with a teacher model (source 3)

TEACHER_INSTRUCTION = (
    "Solve this math problem step by step. Write each step on its own line, starting with "
    '"Step 1:", "Step 2:", and so on, and end with a line "Answer: <number>".\n'
    "Question: {question}"
)
# Chat formats, hard-coded: Qwen2.5-Instruct's ChatML and DeepSeek-R1-Distill's, whose assistant
# turn opens a <think> block (the thinking is dropped by split_steps, the answer is checked).
CHAT_TEMPLATES = {
    "none": "{prompt}\n",
    "qwen": "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
    "deepseek-r1": "<｜begin▁of▁sentence｜><｜User｜>{prompt}<｜Assistant｜><think>\n",
}


def detect_chat_template(tokenizer) -> str:
    """deepseek-r1 when its special tokens exist; qwen when the checkpoint ends turns with
    <|im_end|> (an instruct model); none for a base model."""
    if tokenizer.tok.token_to_id("<｜Assistant｜>") is not None:
        return "deepseek-r1"
    im_end = tokenizer.tok.token_to_id("<|im_end|>")
    return "qwen" if im_end is not None and im_end in tokenizer.eos_token_ids else "none"


def final_text(completion: str) -> str:
    """The part of a teacher completion that holds the solution (after any </think>)."""
    return completion.rsplit("</think>", 1)[1] if "</think>" in completion else completion


def judge_completion(completion: str, gold: str, finish_reason: str) -> tuple[TeacherExample | None, str]:
    """(kept example, "ok") when the completion's answer is right and it has steps; else (None, why).
    A completion cut by the token limit (finish_reason "length") is rejected as "truncated" even
    when its last number happens to be the gold answer: it never wrote its answer line, so it
    is not a finished rationale."""
    if "<think>" in completion and "</think>" not in completion:
        return None, "unfinished thinking"
    if finish_reason == "length":
        return None, "truncated"
    text = final_text(completion)
    if not is_correct(extract_answer(text), gold):
        return None, "wrong answer"
    steps = split_steps(text)
    if not steps:
        return None, "no steps"
    return TeacherExample("", gold, format_rationale(steps, gold), steps), "ok"


def _done_questions(path: Path) -> set[str]:
    """Questions already in an output file. A last line cut short by a crash is removed."""
    if not path.is_file():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    done, good = set(), 0
    for i, line in enumerate(lines):
        try:
            done.add(json.loads(line)["question"])
            good += len(line.encode("utf-8"))
        except (json.JSONDecodeError, KeyError, TypeError):
            if i != len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not a teacher record; fix or remove the line") from None
            print(f"{path}:{i + 1}: removing a line cut short by an interrupted run", file=sys.stderr)
            with open(path, "r+b") as f:
                f.truncate(good)
    return done


def _append(path: Path, records: list[dict]):
    if records:
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def generate_main(args):
    from tqdm import tqdm
    from eval import default_device, load_gsm8k
    from generate import compile_decode, generate
    from model import Qwen2
    from tokenizer import load_tokenizer

    # 1. the questions still to do (resume: skip what either output file already holds)
    data = args.data or (str(default_gsm8k_path()) if default_gsm8k_path().is_file() else HUB_GSM8K)
    questions = load_gsm8k(data, "train")
    rows = row_slice(args.rows)
    if rows is not None:
        questions = questions[rows]
    if args.limit is not None:
        questions = questions[:args.limit]
    out = Path(args.out)
    rejected_path = out.with_name(out.stem + ".rejected.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done_questions(out) | _done_questions(rejected_path)
    todo = [q for q in questions if q["question"] not in done]
    print(f"{len(questions) - len(todo)} of {len(questions)} questions already done; {len(todo)} to go",
          file=sys.stderr)

    # 2. the teacher model and its prompt format
    device = args.device or default_device()
    model = Qwen2.from_pretrained(args.model, dtype=args.dtype, device=device)
    if args.compile:
        compile_decode(model)
    tokenizer = load_tokenizer(model.source_dir)
    template = CHAT_TEMPLATES[args.chat if args.chat != "auto" else detect_chat_template(tokenizer)]

    # 3. batches: generate, judge, append (so an interrupted run loses at most one batch)
    kept = rejected = 0
    reasons: Counter[str] = Counter()
    bar = tqdm(total=len(todo), desc="teacher", dynamic_ncols=True)
    for lo in range(0, len(todo), args.batch_size):
        batch = todo[lo:lo + args.batch_size]
        prompts = tokenizer.encode_batch([template.format(prompt=TEACHER_INSTRUCTION.format(question=q["question"]))
                                          for q in batch])
        gen = generate(model, prompts, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       num_samples=args.samples, tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id,
                       seed=args.seed + lo)
        good, bad = [], []
        for i, q in enumerate(batch):
            verdicts = []
            for j in range(i * args.samples, (i + 1) * args.samples):
                completion = tokenizer.decode(gen.tokens[j])
                example, why = judge_completion(completion, q["gold"], gen.finish_reasons[j])
                verdicts.append((example, why, completion, len(gen.tokens[j])))
                if example is not None:
                    break
            example, why, completion, n_tokens = verdicts[-1]
            if example is not None:
                good.append({"question": q["question"], "answer": q["gold"], "rationale": example.rationale,
                             "steps": example.steps, "teacher": str(args.model), "teacher_tokens": n_tokens})
            else:
                reasons[why] += 1
                bad.append({"question": q["question"], "answer": q["gold"], "reason": why, "completion": completion})
        _append(out, good)
        _append(rejected_path, bad)
        kept, rejected = kept + len(good), rejected + len(bad)
        bar.update(len(batch))
        bar.set_postfix(kept=f"{kept / max(1, kept + rejected):.2f}")
    bar.close()
    detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
    print(f"{args.model}: kept {kept} of {kept + rejected} rationales -> {out}"
          + (f"; rejected ({detail}) -> {rejected_path}" if rejected else ""))


def show_main(args):
    examples = load_teacher_data(args.source, row_slice(args.rows), args.gsm8k_path, thinking=args.thinking)
    n_steps = [len(e.steps) for e in examples]
    words = [len(e.rationale.split()) for e in examples]
    print(f"{args.source}: {len(examples)} examples, {sum(n_steps) / len(examples):.2f} steps and "
          f"{sum(words) / len(examples):.1f} words per rationale on average")
    for e in examples[:args.n]:
        print("-" * 72)
        print(f"Question: {e.question}\n{format_rationale(e.steps, e.answer)}")


def main(argv=None):
    parser = cli.ArgumentParser(description="Teacher rationales: inspect a source, or generate one with a teacher model.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="load a source and print statistics and examples")
    show.add_argument("source", help="'gsm8k', or a teacher JSONL / the authors' JSONL or JSON list")
    show.add_argument("--rows", type=rows_option, default=None, help="START:END slice of the records")
    show.add_argument("--gsm8k-path", default=None, help="GSM8K train JSONL for source 'gsm8k'")
    show.add_argument("--thinking", default="keep", choices=THINKING, help="the authors' 'Thinking...' section in the rationale")
    show.add_argument("-n", type=nonnegative_int, default=2, help="examples to print")
    gen = sub.add_parser("generate", help="run a teacher model on GSM8K train, keep correct rationales")
    gen.add_argument("--model", required=True, help="teacher checkpoint folder or hub id")
    gen.add_argument("--out", required=True, help="teacher JSONL to append to (rejected ones go to OUT.rejected.jsonl)")
    gen.add_argument("--data", default=None, help="GSM8K-format JSONL or hub id (default: ../shared's train, else the hub)")
    gen.add_argument("--rows", type=rows_option, default=None, help="START:END slice of the questions")
    gen.add_argument("--limit", type=positive_int, default=None, help="the first N questions (after --rows)")
    gen.add_argument("--chat", default="auto", choices=["auto", *CHAT_TEMPLATES],
                     help="prompt format; auto: deepseek-r1 / qwen (instruct) / none (base) from the tokenizer")
    gen.add_argument("--batch-size", type=positive_int, default=16, help="questions per generate call")
    gen.add_argument("--max-new-tokens", type=positive_int, default=1024, help="R1-style teachers think long: use 4096")
    gen.add_argument("--temperature", type=nonnegative_float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-p", type=nucleus, default=1.0, help="nucleus sampling (with temperature > 0)")
    gen.add_argument("--samples", type=positive_int, default=1, help="attempts per question (with temperature > 0); the first correct one is kept")
    gen.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed")
    gen.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: as stored")
    gen.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    gen.add_argument("--compile", action="store_true", help="torch.compile the decode step (generate.compile_decode)")
    args = parser.parse_args(argv)
    if args.command == "show":
        return show_main(args)
    return generate_main(args)


if __name__ == "__main__":
    cli.run(main)
