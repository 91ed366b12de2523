"""eval.py: the authors' protocol (prompt, stop rule, extraction) with numeric scoring."""
import json
import random
import re
import subprocess
import sys

import pytest

from conftest import GSM8K_TEST, ROOT
from eval import (ANSWER_LINE, build_prompt, extract_answer, is_correct, load_gsm8k, main, parse_gold, should_stop,
                  wilson_interval)


@pytest.mark.parametrize("text, expected", [
    ("Step 1: 3 + 4 = 7\nFinal Answer: 7", "7"),
    ("Final Answer: $1,080", "1080"),
    ("She lost money.\nFinal Answer: -12", "-12"),
    ("Final Answer: 18.0", "18.0"),
    ("Final Answer: 3.75 dollars", "3.75"),
    ("Step 1: 12 - 5 = 7\nAnswer: 7\n", "7"),                  # Answer: when no Final Answer
    ("Answer: 5\nFinal Answer: 9", "9"),                      # Final Answer wins over Answer
    ("So 3 apples and then 4 pears, 12 in all.", "12"),        # last number
    ("I do not know.", None),
    ("Final Answer: none\nbut the total is 42", "42"),          # marker without a number: fall back
    ("Final Answer: 20\nQuestion: Tom has 99 cats", "20"),
    ("The total is 16 - 9 = 7 eggs", "7"),
    ("It costs $2,345,000.50 in total", "2345000.50"),
    ("a 3-4 week trip", "4"),                                  # a hyphen between digits is no sign
    ("Step 2: 10 - 3 = 7\nQuestion: what is 5 + 5?\nAnswer: 10", "7"),  # text after Question: is ignored
    ("Step 1: 3 + 4 = 7\nfinal answer: 7 apples in 2 bags", "7"),  # the markers in any case, not the last number
    ("Final Answer: 9\nAnswer: 5", "9"),                     # Final Answer wins wherever it stands
    ("Final Answer: unknown\nAnswer: 5\nor maybe 8", "5"),   # then Answer:, before the last number
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("prediction, gold, correct", [
    ("18.0", "18", True), ("1,080", "1080", True), ("-3", "-3", True), ("3", "-3", False),
    ("0.50", "0.5", True), (None, "5", False), ("abc", "5", False), ("18.01", "18", False),
])
def test_is_correct_compares_numbers(prediction, gold, correct):
    assert is_correct(prediction, gold) is correct


def test_parse_gold():
    assert parse_gold("It takes 2/2=<<2/2=1>>1 bolt\n#### 3") == "3"
    assert parse_gold("...\n#### 1,080") == "1080"
    assert parse_gold("...\n#### -4") == "-4"
    with pytest.raises(ValueError, match="####"):
        parse_gold("no marker here")


def test_stop_rule():
    assert not should_stop("Step 1: 2 + 2 = 4\nStep 2:")
    assert not should_stop("Step 1: 2 + 2 = 4\nFinal Answer: 4")          # the line may go on (4.5?)
    assert should_stop("Step 1: 2 + 2 = 4\nFinal Answer: 4\n")
    assert should_stop("Answer: 4 because the two pairs make four")        # > 20 characters after it
    assert should_stop("Step 1: 2 + 2 = 4\n\nQuestion:")


def test_stop_rule_shortcut_is_exact():
    """should_stop skips the regex when lower() shows no "wer:". That is exact only if no other
    character matches w, e, r or : under IGNORECASE (s, for one, also matches U+017F)."""
    every_character = "".join(map(chr, range(sys.maxunicode + 1)))
    for letter in "wer:":
        same = re.compile(re.escape(letter), re.IGNORECASE).findall(every_character)  # one C-level scan
        assert all(c.lower() == letter for c in same), (letter, same)

    def full_rule(text):  # should_stop without the shortcut
        match = ANSWER_LINE.search(text)
        return "Question:" in text or bool(match and ("\n" in text[match.end():] or len(text) - match.end() > 20))

    rng = random.Random(0)
    pieces = ["Answer", "answer", "ANSWER", "Final ", "An\u017fwer", ":", " ", "\n", "$", "-", "4", "12,5", ".5",
              "x", "Question", "wer", "W", "\u0130", "\ufffd"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert should_stop(text) == full_rule(text), repr(text)


def test_prompt_is_the_authors():
    assert build_prompt("What is 2+2?") == (
        "Solve this math problem step by step, showing your complete reasoning.\n"
        "Question: What is 2+2?\n"
        'You must end your response with "Final Answer: [number]"\n'
        "Reasoning:")


def test_wilson_interval():
    # known values (z = 1.96): a Wald interval, p +- z sqrt(p (1 - p) / n), gives (0.402, 0.598)
    # at 50/100, (0.552, 1.048) at 8/10 and (0, 0) at 0/10
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 1.96 ** 2 / (10 + 1.96 ** 2)), abs=1e-9)  # z^2 / (n + z^2)
    low, high = wilson_interval(50, 100)
    assert low < 0.5 < high and abs((0.5 - low) - (high - 0.5)) < 1e-9
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(100, 1000)[1] - wilson_interval(100, 1000)[0] < wilson_interval(10, 100)[1] - wilson_interval(10, 100)[0]


def test_load_gsm8k_local_and_errors(tmp_path):
    examples = load_gsm8k(str(GSM8K_TEST), limit=5)
    assert len(examples) == 5 and examples[0]["gold"] == "18"
    assert len(load_gsm8k(str(GSM8K_TEST))) == 1319
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_gsm8k(str(bad))
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'answer' is missing"):
        load_gsm8k(str(bad))
    bad.write_text('{"question": "q", "answer": "no gold"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'answer': .*####"):
        load_gsm8k(str(bad))


def test_eval_cli_end_to_end(tiny_qwen_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    summary = main(["--model", str(tiny_qwen_checkpoint), "--data", str(GSM8K_TEST), "--limit", "3",
                    "--batch-size", "2", "--max-new-tokens", "12", "--out", str(out), "--quiet"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    written = json.loads((out / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert len(samples) == written["n"] == 3
    assert [s["gold"] for s in samples] == [e["gold"] for e in load_gsm8k(str(GSM8K_TEST), limit=3)]
    assert written["accuracy"] == sum(s["correct"] for s in samples) / 3
    assert written["mean_generated_tokens"] == sum(s["generated_tokens"] for s in samples) / 3
    assert all(1 <= s["generated_tokens"] <= 12 for s in samples)
    low, high = written["accuracy_ci95"]
    assert 0 <= low <= written["accuracy"] <= high <= 1
    for s in samples:
        assert s["prediction"] == extract_answer(s["completion"])
        assert s["correct"] == is_correct(s["prediction"], s["gold"])
    assert "accuracy" in capsys.readouterr().out


def test_the_data_modules_import_without_torch():
    """eval.py, teacher.py and tiny_world.py import torch only inside the functions that run a
    model, so reading data, grading and the results table do not pay for loading it; rewards.py,
    which judges text, imports none at all."""
    code = ("import sys, eval, teacher, tiny_world, rewards\n"
            "print(sorted(m for m in ('torch', 'model', 'generate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
