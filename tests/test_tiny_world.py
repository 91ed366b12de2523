"""The tiny world: reproducible, train/test disjoint, a tokenizer that round-trips with single
digits, a base model that loads with model.py and is right some (not all) of the time, files the
real scripts read, and the curriculum's results table."""
import dataclasses
import json
import random

import pytest

import tiny_world as tw
from eval import build_prompt, evaluate, extract_answer, load_gsm8k, parse_gold

# a world small enough to build twice in a few seconds (the base model barely trains)
MICRO = dataclasses.replace(tw.PRESETS["test"], n_train=30, n_test=20, vocab_size=400, hidden=32, layers=1,
                            heads=2, kv_heads=1, base_steps=2, batch_size=4)


def world_files(root):
    """Every file of a world, with the wall-clock timings taken out."""
    out = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name == "world.json":
            info = json.loads(data)
            info.pop("build_seconds")
            info["base"].pop("seconds")
            data = json.dumps(info, sort_keys=True).encode()
        elif path.name == "metrics.jsonl":
            data = "".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "seconds"})
                           for line in data.decode().splitlines()).encode()
        out[str(path.relative_to(root))] = data
    return out


def test_same_seed_same_files_other_seed_other_world(tmp_path):
    a = tw.build_world(tmp_path / "a", MICRO, seed=3, progress=False)
    b = tw.build_world(tmp_path / "b", MICRO, seed=3, progress=False)
    c = tw.build_world(tmp_path / "c", MICRO, seed=4, progress=False)
    files_a, files_b = world_files(a.root), world_files(b.root)
    assert "base/model.safetensors" in files_a and "tokenizer/tokenizer.json" in files_a
    assert files_a == files_b
    assert a.train.read_text() != c.train.read_text()
    # an existing world is reused, and one built otherwise is refused rather than mixed up
    assert tw.build_world(a.root, MICRO, seed=3).info == a.info
    with pytest.raises(ValueError, match="seed 3"):
        tw.build_world(a.root, MICRO, seed=5)


def test_problems_are_consistent_and_held_out(tiny_world):
    train = load_gsm8k(str(tiny_world.train))
    test = load_gsm8k(str(tiny_world.test))
    info = tiny_world.info
    assert len(train) == info["sizes"]["train"] and len(test) == info["sizes"]["test"]
    train_questions = {e["question"] for e in train}
    assert len(train_questions) == len(train)
    assert not train_questions & {e["question"] for e in test}
    teacher = [json.loads(line) for line in tiny_world.teacher.read_text().splitlines()]
    assert [t["question"] for t in teacher] == [e["question"] for e in train]
    for t, e in zip(teacher, train):
        assert t["answer"] == e["gold"]
        assert t["rationale"] == tw.format_steps(t["steps"], t["answer"])
        assert extract_answer(t["rationale"]) == t["answer"]
        assert 5 <= len(t["steps"]) <= 9
    # the stage scripts read the teacher file through teacher.py
    from teacher import load_teacher_data
    loaded = load_teacher_data(str(tiny_world.teacher), slice(0, 5))
    assert [x.steps for x in loaded] == [t["steps"] for t in teacher[:5]]


def test_generated_arithmetic_is_right():
    rng = random.Random(0)
    for _ in range(200):
        p = tw.make_problem(rng, rng.randint(2, 4), 99)
        x = p.start
        for s in p.steps:
            x = {"add": x + s.operand, "sub": x - s.operand, "mul": x * s.operand, "div": x / s.operand}[s.op]
            assert x == int(x) and 1 <= x <= 99
        assert x == p.answer
        assert parse_gold(tw.gsm8k_record(p)["answer"]) == str(p.answer)
        concise = tw.format_steps(tw.concise_steps(p), p.answer)
        assert len(concise.split()) < len(tw.format_steps(tw.teacher_steps(rng, p), p.answer).split())


def test_tokenizer_round_trips_with_single_digits(tiny_world):
    from model import load_tokenizer
    tok = load_tokenizer(tiny_world.base_model)
    assert tok.decode([tok.eos_token_id], skip_special_tokens=False) == "<|endoftext|>"
    assert tok.pad_token_id == tok.eos_token_id and 200 <= tok.vocab_size <= 1024
    teacher = json.loads(tiny_world.teacher.read_text().splitlines()[0])
    texts = [build_prompt(teacher["question"]) + "\n" + teacher["rationale"],
             "Odd text: 12,345.67 apples, ünïcode → 😀, tabs\tand  spaces\n\n"]
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        pieces = [tok.decode([i]) for i in ids]
        assert all(len(p) == 1 for p in pieces if any(ch.isdigit() for ch in p))
    # the world's own text is compact: its fixed instruction is a handful of tokens
    assert len(tok.encode(build_prompt(teacher["question"]))) < len(build_prompt(teacher["question"]).split())


def test_base_model_is_partly_right_with_long_answers(tiny_world):
    from model import Qwen2, load_tokenizer
    model = Qwen2.from_pretrained(tiny_world.base_model)
    tok = load_tokenizer(tiny_world.base_model)
    examples = load_gsm8k(str(tiny_world.test), limit=40)
    samples, summary = evaluate(model, tok, examples, batch_size=40, max_new_tokens=200, progress=False)
    assert 0.0 < summary["accuracy"] < 1.0
    assert summary["truncated"] <= len(examples) // 5   # mostly finishes its answer
    finished = [s for s in samples if s["finish_reason"] != "length"]
    assert all("Step 1:" in s["completion"] and extract_answer(s["completion"]) is not None for s in finished)
    # rambling like the real base model: longer than the teacher's rationales
    teacher_tokens = [len(tok.encode(json.loads(line)["rationale"]))
                      for line in tiny_world.teacher.read_text().splitlines()[:40]]
    assert summary["mean_generated_tokens"] > sum(teacher_tokens) / len(teacher_tokens)


def test_results_table(tmp_path):
    from eval import write_atomic
    for stage, acc, tokens in [("base", 0.3, 100.0), ("stage1", 0.4, 80.0), ("stage3", 0.5, 60.0)]:
        write_atomic(tmp_path / "eval" / stage / "summary.json", json.dumps(
            {"accuracy": acc, "accuracy_ci95": [acc - 0.05, acc + 0.05], "mean_generated_tokens": tokens,
             "n": 500, "seconds": 7.0}))
    (tmp_path / "timings.tsv").write_text("base 300\neval_base 7\nstage1 100\nstage3 60\nstage3 5\n")
    rows = tw.results_table(tmp_path)
    assert [r["stage"] for r in rows] == ["base", "stage1", "stage3"]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert rows[2]["seconds"] == 65 and rows[0]["eval_seconds"] == 7
    md = (tmp_path / "results.md").read_text()
    assert "+20.0 pts, -40% tokens" in md
    assert (tmp_path / "results.svg").is_file() or (tmp_path / "results.png").is_file()
    (tmp_path / "timings.tsv").write_text("base\n")
    with pytest.raises(ValueError, match="timings.tsv:1"):
        tw.results_table(tmp_path)
