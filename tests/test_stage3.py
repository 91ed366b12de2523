"""Stage 3: failure mining, the rewriting prompt, the rewrite rewards, and the stage on the tiny world."""
from dataclasses import dataclass, field

import pytest
import torch

import rewards
import stage2_grpo as s2
import stage3_rewrite as s3
from eval import build_prompt
from rewards import Completion as C
from teacher import load_teacher_data
from test_stage2 import watch_rollouts_and_loss
from tokenizer import load_tokenizer


@dataclass
class Record:
    """A teacher record (teacher.TeacherExample's fields)."""
    question: str
    answer: str
    rationale: str
    steps: list = field(default_factory=list)


def teacher_record(words: int = 100, answer: str = "7") -> Record:
    """A teacher rationale of exactly `words` words ending in the answer line."""
    body = " ".join(["word"] * (words - 4))
    return Record("How many?", answer, f"Step 1: {body}\nAnswer: {answer}", [body])


def response_of(words: int, answer: str = "7", steps: bool = True, answer_line: bool = True) -> str:
    """A response of exactly `words` words (counting `Step 1:` as two, `Final Answer: N` as three)."""
    head = "Step 1: " if steps else ""
    tail = f"\nFinal Answer: {answer}" if answer_line else f" so {answer}"
    filler = words - (2 if steps else 0) - (3 if answer_line else 2)
    text = head + " ".join(["x"] * filler) + tail
    assert s3.word_count(text) == words
    return text


# -----------------------------------------------------------------------------
# Rewards


@pytest.mark.parametrize("words, expected", [
    (100, 1.0),                        # ratio exactly 1: no bonus, no penalty
    (90, 1.0),                         # inside (0.8, 1]: flat
    (80, 1.0),                         # ratio exactly 0.8: bonus starts at 0
    (65, 1.0 + 0.5 * 0.15 / 0.3),      # halfway through (0.5, 0.8]
    (50, 1.5),                         # ratio exactly 0.5: both branches give 0.5
    (35, 1.5 + 0.3 * 0.5),             # (0.5 - 0.35) / 0.3 = 0.5 of the last branch
    (20, 1.8),                         # ratio 0.2: the maximum
    (10, 1.8),                         # capped below 0.2
    (150, 0.75),                       # 1.5x the teacher: -0.5 * 0.5
    (200, 0.5),                        # exactly 2x: -0.5
    (260, 0.5),                        # above 2x: the penalty is capped
])
def test_paper_rewrite_ratio_boundaries(words, expected):
    assert s3.paper_rewrite(C(response_of(words)), teacher_record(100)) == pytest.approx(expected)


def test_paper_rewrite_wrong_and_missing_structure():
    teacher = teacher_record(100)
    assert s3.paper_rewrite(C(response_of(50, answer="8")), teacher) == -2.0      # wrong beats short
    assert s3.paper_rewrite(C(response_of(250, answer="8")), teacher) == -2.0
    assert s3.paper_rewrite(C(response_of(50, steps=False)), teacher) == -1.0     # no `Step k:`
    assert s3.paper_rewrite(C(response_of(50, answer_line=False)), teacher) == -1.0  # right number, no `Answer:`
    assert s3.paper_rewrite(C(""), teacher) == -2.0


def test_words_after_the_answer_line_do_not_count():
    teacher = teacher_record(100)
    short = response_of(50)
    assert s3.paper_rewrite(C(short + "\nQuestion: " + "y " * 300), teacher) == pytest.approx(1.5)
    assert s3.paper_rewrite(C(short + "\n" + "y " * 300), teacher) == pytest.approx(1.5)


def test_alternative_rewards():
    teacher = teacher_record(100)
    assert s3.rewrite_linear(C(response_of(100)), teacher) == pytest.approx(1.0)
    assert s3.rewrite_linear(C(response_of(90)), teacher) == pytest.approx(1.1)  # no flat zone
    assert s3.rewrite_linear(C(response_of(10)), teacher) == pytest.approx(1.8)
    assert s3.rewrite_linear(C(response_of(300)), teacher) == pytest.approx(0.5)
    assert s3.rewrite_linear(C(response_of(50, answer="8")), teacher) == -2.0
    assert s3.REWARDS["correct"](C(response_of(300)), teacher) == 1.0      # the registry's, by name
    assert s3.REWARDS["correct"](C(response_of(30, answer="8")), teacher) == 0.0
    completion = C(response_of(50))
    s3.paper_rewrite(completion, teacher)
    assert completion.parts == {"correct": 1.0, "format": 1.0, "ratio": 0.5, "words": 50.0}


# -----------------------------------------------------------------------------
# Mining


def scripted_sampler(script: dict):
    """A fake student: question -> its list of answers, returned verbatim; records each call."""
    calls = []

    def sample(questions, k):
        calls.append((list(questions), k))
        return [list(script[q][:k]) for q in questions]

    sample.calls = calls
    return sample


def make_world(k: int = 4):
    """Questions q0..q4 where q_j has j right answers out of k (and its gold is j + 10)."""
    examples, script = [], {}
    for j in range(k + 1):
        gold = str(j + 10)
        examples.append(Record(f"q{j}", gold, f"Step 1: it is {gold}\nAnswer: {gold}", [f"it is {gold}"]))
        right = [f"Step 1: so\nFinal Answer: {gold}"] * j
        wrong = [f"Step 1: so\nFinal Answer: {int(gold) + 1}"] * (k - j)
        script[f"q{j}"] = right + wrong
    return examples, script


@pytest.mark.parametrize("threshold, expected", [
    (4, ["q0"]),                       # the default t = k: never right once
    (3, ["q0", "q1"]),                 # at least 3 of 4 wrong
    (2, ["q0", "q1", "q2"]),
    (1, ["q0", "q1", "q2", "q3"]),     # any wrong attempt
])
def test_mining_threshold_boundaries(threshold, expected):
    examples, script = make_world(4)
    sampler = scripted_sampler(script)
    failures = s3.mine_failures(examples, sampler, attempts=4, threshold=threshold)
    assert [f.question for f in failures] == expected
    assert sampler.calls == [([e.question for e in examples], 4)]   # one call, k attempts each
    for f in failures:
        assert f.wrong == 4 - int(f.question[1:]) and len(f.attempts) == 4
        assert sum(not a.correct for a in f.attempts) == f.wrong
        assert f.rationale.endswith(f"Answer: {f.answer}")


def test_mining_default_threshold_is_all_attempts_and_k1_is_one_attempt():
    examples, script = make_world(4)
    assert [f.question for f in s3.mine_failures(examples, scripted_sampler(script), attempts=4)] == ["q0"]
    # k = 1 (the authors' single greedy attempt): q_j's first scripted answer is right iff j >= 1
    failures = s3.mine_failures(examples, scripted_sampler(script), attempts=1, rows=[100, 101, 102, 103, 104])
    assert [(f.question, f.row, f.wrong) for f in failures] == [("q0", 100, 1)]


@pytest.mark.parametrize("threshold", [0, 5])
def test_mining_rejects_impossible_threshold(threshold):
    examples, script = make_world(4)
    sampler = scripted_sampler(script)
    with pytest.raises(ValueError, match="threshold"):
        s3.mine_failures(examples, sampler, attempts=4, threshold=threshold)
    assert sampler.calls == []   # refused before any sampling


def test_failures_file_is_a_teacher_file(tmp_path):
    """The mined set reloads through teacher.load_teacher_data (what --failures uses)."""
    from teacher import load_teacher_data
    examples, script = make_world(4)
    failures = s3.mine_failures(examples, scripted_sampler(script), attempts=4, threshold=2)
    path = tmp_path / "failures.jsonl"
    s3.save_failures(path, failures)
    back = load_teacher_data(str(path), quiet=True)
    assert [(e.question, e.answer, e.rationale, e.steps) for e in back] == \
        [(f.question, f.answer, f.rationale, f.steps) for f in failures]
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and '"attempts"' in lines[0] and '"wrong": 4' in lines[0]
    assert not list(tmp_path.glob(".failures.jsonl*"))   # no temporary file left behind


def test_mining_k_attempts_through_the_real_sampler(tiny_world, monkeypatch):
    """model_sampler with k > 1 (the tiny runner mines with --attempts 2) against generating each
    question on its own. Greedy, two questions share a generate call of --mine-batch-size rows (k
    rows a question), and each question's k attempts are its own answer. Sampled, one question a
    call, they are the k samples generate draws for that question alone from the same random
    stream. And mine_failures keeps exactly the questions with at least t of their k attempts wrong."""
    import generate as generate_module
    from eval import extract_answer, is_correct, should_stop
    from model import Qwen2
    model = Qwen2.from_pretrained(tiny_world.base_model)
    tok = load_tokenizer(tiny_world.base_model)
    examples = load_teacher_data(str(tiny_world.teacher), rows=slice(0, 4))
    questions = [e.question for e in examples]
    prompts = tok.encode_batch([build_prompt(q) for q in questions])
    real_generate = generate_module.generate

    def alone(prompt, k, **sampling):
        out = real_generate(model, [prompt], 32, num_samples=k, tokenizer=tok, pad_token_id=tok.pad_token_id,
                            stop_fn=should_stop, **sampling)
        return [tok.decode(tokens) for tokens in out.tokens]

    rows_per_call = []

    def counting(model, prompts, *args, num_samples=1, **kwargs):
        rows_per_call.append(len(prompts) * num_samples)
        return real_generate(model, prompts, *args, num_samples=num_samples, **kwargs)
    monkeypatch.setattr(generate_module, "generate", counting)
    greedy = s3.model_sampler(model, tok, temperature=0.0, max_new_tokens=32, batch_size=4)(questions, 2)
    assert rows_per_call == [4, 4]                      # 2 questions x 2 attempts a call
    assert greedy == [alone(p, 1) * 2 for p in prompts]
    assert len({attempts[0] for attempts in greedy}) == len(questions)   # a mix-up of questions would show

    sampler = s3.model_sampler(model, tok, temperature=1.0, max_new_tokens=32, batch_size=3, seed=5)
    sampled = []

    def recording(questions, k):
        sampled.extend(sampler(questions, k))
        return sampled
    failures = s3.mine_failures(examples, recording, attempts=3, threshold=2)
    generator = torch.Generator().manual_seed(5)
    expected = [None] * len(questions)
    for i in sorted(range(len(questions)), key=lambda i: len(prompts[i])):   # eval's order: shortest first
        expected[i] = alone(prompts[i], 3, temperature=1.0, generator=generator)
    assert sampled == expected
    assert all(len(set(attempts)) > 1 for attempts in sampled)   # k draws, not one answer k times
    wrong = [sum(not is_correct(extract_answer(a), e.answer) for a in attempts) for e, attempts in zip(examples, expected)]
    assert [(f.row, f.wrong) for f in failures] == [(i, w) for i, w in enumerate(wrong) if w >= 2]
    assert [[a.completion for a in f.attempts] for f in failures] == [expected[f.row] for f in failures]


@pytest.mark.parametrize("policy_prompt", ["eval", "rewrite"])
def test_the_loss_conditions_each_rewrite_on_the_prompt_policy_prompt_names(policy_prompt, tiny_world, tmp_path,
                                                                              monkeypatch):
    """Observed in the loss's forward, not inferred from metrics: each rewrite is sampled from the
    rewriting prompt of its question, and the loss conditions it on that question's plain
    evaluation prompt (--policy-prompt eval) or on the rewriting prompt it was sampled from
    (rewrite, the default)."""
    sampled, trained = watch_rollouts_and_loss(monkeypatch)
    s3.main(["--model", str(tiny_world.base_model), "--failures", str(tiny_world.teacher), "--out", str(tmp_path / "s3"),
             "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "12", "--max-steps", "1",
             "--save-every", "0", "--reward", "correct", "--keep-zero-variance", "--policy-prompt", policy_prompt,
             "--device", "cpu", "--quiet"])
    tok = load_tokenizer(tiny_world.base_model)
    question_of = {s3.build_rewrite_prompt(e.question, e.rationale): e.question
                   for e in load_teacher_data(str(tiny_world.teacher))}
    assert len(sampled) == len(trained) == 4
    for (prompt, completion), (loss_prompt, trained_completion) in zip(sampled, trained):
        rewrite = tok.decode(prompt)
        assert rewrite in question_of                   # sampled from a rewriting prompt
        expected = build_prompt(question_of[rewrite]) if policy_prompt == "eval" else rewrite
        assert tok.decode(loss_prompt) == expected and trained_completion == completion


# -----------------------------------------------------------------------------
# The rewriting prompt


def test_rewrite_prompt_holds_question_and_full_rationale():
    rationale = "Step 1: 3 apples and 4 apples.\nStep 2: 3 + 4 = 7.\nAnswer: 7"
    prompt = s3.build_rewrite_prompt("  How many apples?  ", rationale)
    assert "Question: How many apples?\n" in prompt
    assert rationale in prompt
    assert "Final Answer: [number]" in prompt and "shorter" in prompt.lower()
    assert prompt.endswith(":")   # the model continues right after the cue


@pytest.mark.parametrize("policy_prompt", ["eval", "rewrite"])
def test_rewrites_trained_under_another_prompt_are_never_pushed_down(policy_prompt, tiny_world, tmp_path,
                                                                     monkeypatch):
    """Under --policy-prompt eval a rewrite is trained under a prompt it was not sampled from,
    where pushing the worse one of a group down has no policy-gradient meaning: the loss sees
    those advantages clamped at 0 (the better rewrites are learned from, as in reward-weighted
    fine-tuning). On-policy (rewrite, the default) the worse rewrites keep their negative
    advantages. The reward here is the text's length, so every group of 2 has one of each."""
    seen = []
    real_loss = s2.grpo_loss

    def grpo_loss(new_logp, old_logp, advantages, *args, **kwargs):
        seen.extend(advantages.flatten().tolist())
        return real_loss(new_logp, old_logp, advantages, *args, **kwargs)
    monkeypatch.setattr(s2, "grpo_loss", grpo_loss)
    monkeypatch.setitem(rewards.REWARDS, "length_for_test", lambda completion, example: float(len(completion.text)))
    s3.main(["--model", str(tiny_world.base_model), "--failures", str(tiny_world.teacher), "--out", str(tmp_path / "s3"),
             "--prompts-per-step", "3", "--group-size", "2", "--max-new-tokens", "12", "--max-steps", "1",
             "--temperature", "1.0", "--save-every", "0", "--reward", "length_for_test", "--policy-prompt", policy_prompt,
             "--device", "cpu", "--quiet"])
    assert len(seen) >= 4  # groups with spread: one rewrite above, one below
    above = [a for a in seen if a > 0.5]
    if policy_prompt == "eval":
        assert min(seen) == 0.0 and len(above) == len(seen) // 2
    else:
        assert sorted(seen) == pytest.approx(sorted(-a for a in seen)) and min(seen) < -0.5
