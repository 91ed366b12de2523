"""The tiny world: reproducible, train/test disjoint, a tokenizer that round-trips with single
digits, a base model that loads with model.py and is right some (not all) of the time, files the
real scripts read, and the curriculum's results table."""
import dataclasses
import json
import random
import shutil

import pytest

import tiny_world as tw
from eval import build_prompt, evaluate, extract_answer, load_gsm8k, parse_gold
from teacher import TeacherExample

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
            info["base"].pop("by_form_seconds")
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
    with pytest.raises(ValueError, match="seed 3"):
        tw.build_world(a.root, MICRO, seed=3, teacher_checks=0.5)
    # a world built before a setting existed (absent from its world.json) was built at its default
    older = json.loads((a.root / "world.json").read_text())
    del older["settings"]["teacher_checks"]
    # (and one built before the teacher was a setting had the tidy teacher, this preset's)
    del older["settings"]["teacher"], older["settings"]["detour_rate"]
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "world.json").write_text(json.dumps(older))
    assert tw.build_world(tmp_path / "older", MICRO, seed=3).info == older
    with pytest.raises(ValueError, match="seed 3"):
        tw.build_world(tmp_path / "older", MICRO, seed=3, teacher_checks=0.5)
    with pytest.raises(ValueError, match="seed 3"):
        tw.build_world(tmp_path / "older", MICRO, seed=3, teacher="verbose")


def test_a_reused_test_world_is_keyed_on_the_code_that_builds_it(tmp_path):
    """$BRIDGE_TEST_WORLD reuses a world only while the code that built it is unchanged: the key
    covers tiny_world.py and what it imports inside its functions too (the stage files' prompt
    builders, model.py and tokenizer.py to pre-train, eval.py to measure), and one changed byte in
    any of those files changes it."""
    from conftest import ROOT, world_key, world_sources
    sources = world_sources()
    assert {"tiny_world.py", "model.py", "tokenizer.py", "generate.py", "eval.py", "teacher.py",
            "stage1_reconstruct.py", "stage2_grpo.py", "stage3_rewrite.py"} <= set(sources)
    for name in sources:
        shutil.copyfile(ROOT / name, tmp_path / name)
    key = world_key("test", 0, tmp_path)
    assert key == world_key("test", 0) != world_key("test", 1)
    for name in sources:
        original = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(original + b"\n")
        assert world_key("test", 0, tmp_path) != key, name
        (tmp_path / name).write_bytes(original)


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
        for preset in tw.PRESETS["tiny"], tw.PRESETS["test"]:  # the verbose teacher and the tidy one
            assert len(concise.split()) < len(tw.format_steps(tw.teacher_steps(rng, p, preset), p.answer).split())


def test_teacher_checks_repeat_a_calculation_and_change_nothing_else():
    """--teacher-checks: each calculation is followed, with that probability, by a step that does
    it again; at 0 the teacher draws no extra random number, so a world is what it was before."""
    rng = random.Random(5)
    for _ in range(50):
        p = tw.make_problem(rng, rng.randint(2, 4), 99)
        seed = rng.random()
        plain = tw.tidy_teacher_steps(random.Random(seed), p)
        assert tw.tidy_teacher_steps(random.Random(seed), p, checks=0.0) == plain
        assert not any(step.startswith("Let me double-check") for step in plain)
        checked = tw.tidy_teacher_steps(random.Random(seed), p, checks=1.0)
        for s in p.steps:  # every calculation, then its check right after it
            i = checked.index(f"{s.fact} So {tw.calc(s)} {p.item}.")
            assert checked[i + 1] == f"Let me double-check: {tw.calc(s)}. Correct."
        without_checks = [step for step in checked if not step.startswith("Let me double-check")]
        assert len(checked) == len(without_checks) + len(p.steps) and without_checks[-1] == plain[-1]
    with pytest.raises(SystemExit):
        tw.main(["--teacher-checks", "1.5", "--out", "/nonexistent/never-built"])


def test_the_verbose_teacher_buries_a_right_solution_in_detours():
    """Every rationale of the default teacher computes every step and ends on the answer, with or
    without its detours; at detour rate 0 it is the bare solution (start, one paragraph per
    operation, result), at 1 it has every detour, and in between it lies between the two."""
    rng = random.Random(7)
    for _ in range(50):
        p = tw.make_problem(rng, rng.randint(2, 3), 12)
        bare = tw.verbose_teacher_steps(random.Random(0), p, detour_rate=0.0)
        full = tw.verbose_teacher_steps(random.Random(0), p, detour_rate=1.0)
        some = tw.verbose_teacher_steps(rng, p, detour_rate=0.7)
        for steps in bare, full, some:
            assert len(steps) == len(p.steps) + 2 and f"{p.answer} {p.item}" in steps[-1]
            assert all(f"So {tw.calc(s)} {p.item}." in steps[i + 1] for i, s in enumerate(p.steps))
            assert extract_answer(tw.format_steps(steps, p.answer)) == str(p.answer)
        assert bare[0] == f"{p.name} starts with {p.start} {p.item}." and "Wait" not in " ".join(bare)
        assert " ".join(full).count("Wait, let me double-check that") == len(p.steps)
        assert len(" ".join(bare).split()) <= len(" ".join(some).split()) <= len(" ".join(full).split())


def test_the_default_teacher_is_longer_than_the_base_and_varies_in_length():
    """The paper's premise, at the level of the generator (no model needed): the default world's
    teacher writes longer than its base model's own answers (the paper's: ~1.7x in tokens; ours
    ~1.3x in tokens, 1.28x in words), the same question gets rationales of different lengths
    (so stage 1's student varies too, and stage 2's groups have lengths to choose between), and
    the paper's length-aware reward, at the budget world.json suggests, scores the bare solution
    above the detoured one, with the control world's tidy teacher shorter than the base."""
    import stage2_grpo as s2
    from teacher import TeacherExample as Example
    rng, preset = random.Random(11), tw.PRESETS["tiny"]
    problems = [tw.make_problem(rng, rng.randint(preset.min_ops, preset.max_ops), preset.max_value)
                for _ in range(300)]

    def words(text):
        return len(text.split())
    teacher = [words(tw.format_steps(tw.teacher_steps(rng, p, preset), p.answer)) for p in problems]
    base = [words(tw.base_completion(rng, p, preset)) for p in problems]
    tidy_preset = dataclasses.replace(preset, teacher="tidy")
    tidy = [words(tw.format_steps(tw.teacher_steps(rng, p, tidy_preset), p.answer)) for p in problems]
    assert sum(teacher) > 1.2 * sum(base) and sum(tidy) < sum(base)
    spread = [len({words(" ".join(tw.teacher_steps(random.Random(f"{i}:{g}"), p, preset))) for g in range(8)})
              for i, p in enumerate(problems[:100])]
    assert sum(n > 1 for n in spread) >= 95  # a group of 8 draws almost always has 2+ lengths
    records = [tw.teacher_record(rng, p, preset) for p in problems]
    wps = tw.suggested_settings(records)["stage2_words_per_step"]
    shorter_wins = 0
    for p, r in zip(problems[:100], records):
        example = Example(r["question"], r["answer"], r["rationale"], r["steps"])
        answers = [tw.format_steps(tw.verbose_teacher_steps(random.Random(0), p, rate), p.answer) for rate in (0, 1)]
        bare, full = (s2.reward_paper(s2.Completion(a, 0, 256), example, wps) for a in answers)
        shorter_wins += bare > full
    assert shorter_wins >= 90

def misleading_problem(rng):
    """A problem with at least one misleading sentence (see tiny_world.MISLEADING)."""
    while True:
        p = tw.make_problem(rng, 3, 30)
        if any(tw.misleads(s) for s in p.steps):
            return p


def test_the_base_author_misreads_only_what_no_prompt_shows():
    rng = random.Random(1)
    for _ in range(50):
        p = misleading_problem(rng)
        mis = [i for i, s in enumerate(p.steps) if tw.misleads(s)]
        # always misread: every misleading operation becomes an addition, so the answer is wrong
        steps, answer = tw.base_solution_steps(random.Random(0), p, error_rate=0.0, misread_rate=1.0)
        x = p.start
        for s in p.steps:
            x = tw.apply("add" if tw.misleads(s) else s.op, x, s.operand)
        assert answer == x
        for i in mis:
            line = next(s for s in steps if s.startswith(f"{p.steps[i].fact} So "))
            assert f" + {p.steps[i].operand} = " in line
        # shown worked out in the prompt: read right, whatever the rate
        steps, answer = tw.base_solution_steps(random.Random(0), p, 0.0, 1.0, known=frozenset(mis))
        assert answer == p.answer
        assert all(f"{p.steps[i].fact} So {tw.calc(p.steps[i])}." in steps for i in mis)


def test_pretraining_documents_use_every_stage_prompt():
    import stage1_reconstruct as s1
    import stage2_grpo as s2
    import stage3_rewrite as s3
    from eval import build_prompt
    rng = random.Random(2)
    preset = tw.PRESETS["tiny"]
    forms = [tw.pretraining_text(rng, misleading_problem(rng), preset)[0] for _ in range(300)]
    assert set(forms) == set(tw.FORMS) and forms.count("plain") > forms.count("rewrite")
    p = misleading_problem(rng)
    teacher = tw.teacher_record(rng, p, preset)
    plain, known = tw.form_prompt("plain", p, teacher, random.Random(0))
    assert plain == build_prompt(p.question) and known == frozenset()
    rewrite, known = tw.form_prompt("rewrite", p, teacher, random.Random(0))
    assert rewrite == s3.build_rewrite_prompt(p.question, teacher["rationale"]) and known == set(range(len(p.steps)))
    ex = TeacherExample(teacher["question"], teacher["answer"], teacher["rationale"], teacher["steps"])
    hinted, known = tw.form_prompt("hinted", p, teacher, random.Random(5))
    assert hinted == s2.build_masked_prompt(ex, random.Random(5))
    shown, hidden = s2.mask_steps(ex.steps, random.Random(5))
    assert known == {i for i, s in enumerate(p.steps) if any(tw.calc(s) in step for step in shown)}
    recon, known = tw.form_prompt("reconstruct", p, teacher, random.Random(6))
    assert recon == s1.reconstruction_example(ex, random.Random(6), 0.7).prompt
    with pytest.raises(ValueError, match="prompt form"):
        tw.form_prompt("chat", p, teacher, rng)


def test_length_buckets_cover_every_document_once():
    lengths = [random.Random(i).randint(10, 300) for i in range(32 * 40)]
    batches = tw.length_buckets(lengths, 32, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) == 32 for b in batches) and batches == tw.length_buckets(lengths, 32, seed=0)
    padded = sum(32 * max(lengths[i] for i in b) for b in batches)
    unsorted = sum(32 * max(lengths[i:i + 32]) for i in range(0, len(lengths), 32))
    assert padded < 0.8 * unsorted


def test_tokenizer_round_trips_with_single_digits(tiny_world):
    from tokenizer import load_tokenizer
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
    from model import Qwen2
    from tokenizer import load_tokenizer
    model = Qwen2.from_pretrained(tiny_world.base_model)
    tok = load_tokenizer(tiny_world.base_model)
    examples = load_gsm8k(str(tiny_world.test), limit=40)
    samples, summary = evaluate(model, tok, examples, batch_size=40, max_new_tokens=200, progress=False)
    assert 0.0 < summary["accuracy"] < 1.0
    assert summary["truncated"] <= len(examples) // 5   # mostly finishes its answer
    finished = [s for s in samples if s["finish_reason"] != "length"]
    assert all("Step 1:" in s["completion"] and extract_answer(s["completion"]) is not None for s in finished)
    # world.json reports the base under every prompt form the curriculum trains on: sometimes right
    # under each (every stage needs reward spread there), and right more often under the forms
    # that show teacher steps, which the author reads right, than under the bare question
    by_form = tiny_world.info["base"]["by_form"]
    assert list(by_form) == list(tw.FORMS)
    assert all(0.0 < f["accuracy"] < 1.0 and f["mean_generated_tokens"] > 10 for f in by_form.values())
    assert all(by_form[form]["accuracy"] > by_form["plain"]["accuracy"] for form in tw.FORMS if form != "plain")
    # rambling like the real base model: longer than the teacher's rationales
    teacher_tokens = [len(tok.encode(json.loads(line)["rationale"]))
                      for line in tiny_world.teacher.read_text().splitlines()[:40]]
    assert summary["mean_generated_tokens"] > sum(teacher_tokens) / len(teacher_tokens)


def test_results_table(tmp_path):
    from cli import write_atomic
    for stage, acc, tokens in [("base", 0.3, 100.0), ("stage1", 0.4, 80.0), ("stage3", 0.5, 60.0),
                               ("sft", 0.45, 90.0)]:
        write_atomic(tmp_path / "eval" / stage / "summary.json", json.dumps(
            {"accuracy": acc, "accuracy_ci95": [acc - 0.05, acc + 0.05], "mean_generated_tokens": tokens,
             "n": 500, "seconds": 7.0}))
    (tmp_path / "timings.tsv").write_text("base 300\neval_base 7\nstage1 100\nstage3 60\nstage3 5\n")
    write_atomic(tmp_path / "eval" / "base" / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in [
        {"question": "Mia has 4 cards. She sells 2 cards. How many?", "correct": False},
        {"question": "Leo has 4 cards. After a trade, he has 2 times as many cards as before. How many?", "correct": True},
        {"question": "Ava has 4 cards. She loses 2 cards. How many?", "correct": True}]))
    write_atomic(tmp_path / "stage3" / "metrics.jsonl", "".join(
        json.dumps({"step": i, "reward": 0.1 * i, "completion_tokens": 50 - i, "kl": 0.01 * i, "accuracy": 0.5})
        + "\n" for i in range(1, 6)))
    write_atomic(tmp_path / "world" / "world.json", json.dumps({"base": {"by_form": {
        "plain": {"accuracy": 0.3, "mean_generated_tokens": 100.0, "n": 200},
        "hinted": {"accuracy": 0.55, "mean_generated_tokens": 98.0, "n": 200}}}}))
    rows = tw.results_table(tmp_path)
    assert [r["stage"] for r in rows] == ["base", "stage1", "stage3", "sft"]
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    assert rows[2]["seconds"] == 65 and rows[0]["eval_seconds"] == 7
    md = (tmp_path / "results.md").read_text()
    assert "+20.0 pts, -40% tokens" in md and "| sft | 45.0% (+15.0 pts, -10% tokens)" in md
    assert "| 500 | 50.0% / 100.0% |" in md                    # base: misleading questions / the others
    assert rows[0]["accuracy_misleading"] == 0.5 and "accuracy_other" not in rows[1]
    # a set with no question of one kind shows "-" there
    write_atomic(tmp_path / "eval" / "stage1" / "samples.jsonl",
                 json.dumps({"question": "Ava has 4 cards. She loses 2 cards. How many?", "correct": True}) + "\n")
    tw.results_table(tmp_path)
    assert "| 500 | - / 100.0% |" in (tmp_path / "results.md").read_text()
    assert "| hinted | 55.0% | 98.0 | 200 |" in md              # the base under each prompt form
    svg = (tmp_path / "results.svg").read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert all(title in svg for title, _, _ in tw.CURVES)
    assert svg.count("<circle") == 4 and svg.count("<polyline") == 4   # 4 rows; stage 3's reward, acc, tokens, kl
    (tmp_path / "timings.tsv").write_text("base\n")
    with pytest.raises(ValueError, match="timings.tsv:1"):
        tw.results_table(tmp_path)


def test_the_plot_labels_points_that_nearly_coincide_legibly():
    """Stage 2, stage 3 and a lab row can land within a pixel of each other: their labels are
    moved apart until no two boxes overlap, and each stays on its point's side."""
    points = {"stage2": (100.0, 50.0), "stage3": (101.0, 51.0), "paper": (100.5, 50.5), "sft": (280.0, 52.0),
              "base": (150.0, 150.0)}
    labels = {name: f"{name} (80.0%, 46)" for name in points}
    where = tw.place_labels(points, labels, left=60.0, right=360.0)
    boxes = []
    for name, (x, y, anchor) in where.items():
        width = tw.CHAR_WIDTH * len(labels[name])
        x0 = x if anchor == "start" else x - width
        assert (anchor == "start") == (points[name][0] < 210.0) and y >= points[name][1] - 6
        boxes.append((x0, y - tw.LABEL_HEIGHT + 2, x0 + width, y + 2))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
