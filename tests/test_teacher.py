"""teacher.py: step splitting, every source format, bad input, the teacher-generation CLI."""
import json

import pytest

from conftest import BRIDGE_STAGE3, GSM8K_TRAIN
from cli import row_slice
from teacher import TeacherExample, format_rationale, judge_completion, load_teacher_data, main, split_steps


# -----------------------------------------------------------------------------
# Step splitting


def test_step_markers_drop_thinking_preamble_and_answer():
    text = ("Thinking…\nFirst I add, then I halve. Step 1 is obvious.\n\n"
            "Step 1: Add: 3 + 5 = 8.\nStep 2: **Halve**: 8 / 2 = 4.\n\nAnswer: 4")
    assert split_steps(text) == ["Add: 3 + 5 = 8.", "Halve**: 8 / 2 = 4."]


def test_numbering_restart_keeps_final_run_and_think_block_is_dropped():
    text = ("<think>\nStep 1: scratch. Step 2: more scratch.\n</think>\n"
            "Step 1: a = 2.\nStep 2: b = 3.\nStep 1: c = a + b = 5.\nStep 2: d = 10.\nFinal Answer: 10")
    assert split_steps(text) == ["c = a + b = 5.", "d = 10."]


def test_fallbacks_numbered_list_then_lines_then_sentences():
    assert split_steps("1. Buy 3 apples.\n2) Eat one, so 2 left.\nAnswer: 2") == \
        ["Buy 3 apples.", "Eat one, so 2 left."]
    assert split_steps("He has 3.\nHe gets 4 more, 7 in all.\n#### 7") == ["He has 3.", "He gets 4 more, 7 in all."]
    assert split_steps("He has 3.5 kg. Then 2 more, so 5.5 kg. Answer: 5.5") == \
        ["He has 3.5 kg.", "Then 2 more, so 5.5 kg."]
    assert split_steps("Thinking... hmm ...done thinking. 7 - 2 = 5. So 5 left.") == ["7 - 2 = 5.", "So 5 left."]


def test_format_rationale_round_trips():
    steps = ["Add 3 and 5 to get 8.", "Halve it: 4."]
    text = format_rationale(steps, "4")
    assert text == "Step 1: Add 3 and 5 to get 8.\nStep 2: Halve it: 4.\nAnswer: 4"
    assert split_steps(text) == steps


def test_all_568_real_teacher_rationales_yield_steps_and_answer():
    raw = json.loads(BRIDGE_STAGE3.read_text())
    examples = load_teacher_data(str(BRIDGE_STAGE3), quiet=True, thinking="drop")  # the canonical form
    assert len(examples) == len(raw) == 568
    for example, record in zip(examples, raw):
        assert len(example.steps) >= 2, record["idx"]
        assert example.answer == record["gold_answer"]
        assert example.rationale.endswith(f"\nAnswer: {record['gold_answer']}")
        assert not any("Thinking" in s[:12] or "Answer:" in s for s in example.steps), record["idx"]


# -----------------------------------------------------------------------------
# Sources


def test_gsm8k_source_parses_solutions_and_rows():
    examples = load_teacher_data("gsm8k", rows=slice(0, 50), gsm8k_path=str(GSM8K_TRAIN))
    assert len(examples) == 50
    first = examples[0]
    assert first.answer == "72" and first.question.startswith("Natalia sold clips")
    assert first.steps == ["Natalia sold 48/2 = 24 clips in May.",
                           "Natalia sold 48+24 = 72 clips altogether in April and May."]
    assert all("<<" not in s and "####" not in s for e in examples for s in e.steps)
    later = load_teacher_data("gsm8k", rows=slice(10, 12), gsm8k_path=str(GSM8K_TRAIN))
    assert [e.question for e in later] == [e.question for e in examples[10:12]]


def test_authors_stage12_jsonl_and_our_jsonl(tmp_path):
    authors = tmp_path / "phase1.jsonl"
    authors.write_text("\n".join(json.dumps(r) for r in [
        {"input": "Question: Tom has 3 cats and buys 2 more. How many?",
         "target": "Thinking...\nCount them.\n\nStep 1: Tom starts with 3 cats.\nStep 2: 3 + 2 = 5.\n\nAnswer: 5"},
        {"input": "Question: What is 1,000 + 80?", "target": "Step 1: Add.\n\nAnswer: 1,080",
         "metadata": {"gold_answer": "1080"}},
    ]) + "\n")
    a, b = load_teacher_data(str(authors), thinking="drop")
    assert a == TeacherExample("Tom has 3 cats and buys 2 more. How many?", "5",
                               "Step 1: Tom starts with 3 cats.\nStep 2: 3 + 2 = 5.\nAnswer: 5",
                               ["Tom starts with 3 cats.", "3 + 2 = 5."])
    assert b.answer == "1080" and b.steps == ["Add."]
    ours = tmp_path / "teacher.jsonl"
    ours.write_text(json.dumps({"question": "Q?", "answer": 7, "rationale": "Step 1: x.\nStep 2: y.\nAnswer: 7"})
                    + "\n" + json.dumps({"question": "R?", "answer": "2", "steps": ["one", "two"]}) + "\n")
    c, d = load_teacher_data(str(ours), rows=row_slice("0:"))
    assert (c.answer, c.steps) == ("7", ["x.", "y."])
    assert d.rationale == "Step 1: one\nStep 2: two\nAnswer: 2"


def test_bad_records_are_reported_with_file_line_and_counted(tmp_path, capsys):
    path = tmp_path / "teacher.jsonl"
    good = json.dumps({"question": "Q?", "answer": "3", "steps": ["a", "b"]})
    path.write_text("\n".join([good, "{not json", json.dumps({"answer": "3", "steps": ["a"]}),
                               json.dumps({"question": "Q?", "answer": "three", "steps": ["a"]}),
                               json.dumps({"question": "Q?", "answer": "3", "rationale": "  "}), good]) + "\n")
    examples = load_teacher_data(str(path))
    assert len(examples) == 2
    err = capsys.readouterr().err
    for line, reason in [(2, "not valid JSON"), (3, "no question"), (4, "no answer"), (5, "no steps")]:
        assert f"{path}:{line}: skipped, {reason}" in err
    assert "skipped 4" in err


def test_nothing_usable_is_an_error_naming_the_file(tmp_path):
    listing = tmp_path / "bad.json"
    listing.write_text('[\n{"question": "Q"},,\n]\n')
    with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
        load_teacher_data(str(listing))
    path = tmp_path / "bad.jsonl"
    path.write_text("oops\n\n" + json.dumps({"question": "Q", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"no usable teacher records.*not valid JSON \(first at .*bad.jsonl:1\)"):
        load_teacher_data(str(path), quiet=True)
    with pytest.raises(ValueError, match="START:END"):
        row_slice("12")


# -----------------------------------------------------------------------------
# Teacher generation


def test_judge_keeps_only_correct_rationales_with_steps():
    kept, why = judge_completion("<think>\nlong thoughts\n</think>\nStep 1: 2 + 2 = 4.\nStep 2: So 4.\nAnswer: 4", "4", "eos")
    assert why == "ok" and kept.steps == ["2 + 2 = 4.", "So 4."] and kept.rationale.endswith("Answer: 4")
    assert judge_completion("Step 1: 2 + 2 = 5.\nAnswer: 5", "4", "eos") == (None, "wrong answer")
    assert judge_completion("<think>\nStep 1: 4 Answer: 4", "4", "length") == (None, "unfinished thinking")


def test_generate_cli_appends_and_resumes(tiny_qwen_checkpoint, tmp_path, capsys):
    """A random model gets everything wrong: every question lands in the rejected file, and a
    second run (after a crash cut the last line short) skips what is done."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                            for i in range(3)))
    out = tmp_path / "teacher.jsonl"
    args = ["generate", "--model", str(tiny_qwen_checkpoint), "--out", str(out), "--data", str(data),
            "--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu"]
    main(args + ["--limit", "2"])
    rejected = tmp_path / "teacher.rejected.jsonl"
    lines = rejected.read_text().splitlines()
    assert [json.loads(x)["question"] for x in lines] == ["What is 0 + 1?", "What is 1 + 1?"]
    rejected.write_text(lines[0] + "\n" + lines[1][:10])  # an interrupted write
    capsys.readouterr()
    main(args)
    assert "1 of 3 questions already done; 2 to go" in capsys.readouterr().err
    assert [json.loads(x)["question"] for x in rejected.read_text().splitlines()] == \
        ["What is 0 + 1?", "What is 1 + 1?", "What is 2 + 1?"]
