"""Paper mode is faithful (issue #12): the scripts' defaults are the authors' settings, every
numeric option is checked when it is parsed, --help shows every default, the tiny world's runner
keeps its own settings, and the data and rewards are the authors' (their thinking text, no
truncated rationales, words counted up to the answer line, Dr. GRPO as Dr. GRPO defines it)."""
import argparse
import re

import pytest
import torch

import cli
import eval as ev
import rewards
import stage1_reconstruct as s1
import stage2_grpo as s2
import stage3_rewrite as s3
import teacher
import tiny_world as tw
from conftest import BRIDGE_STAGE3, GSM8K_TRAIN, ROOT

REQUIRED = ["--model", "m", "--out", "o"]


class Parsed(Exception):
    pass


def parsed(monkeypatch, main, argv):
    """The namespace a script's parser returns for argv; the script stops right there."""
    real = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace), self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(Parsed) as caught:
            main(argv)
    return caught.value.args[0]


# -----------------------------------------------------------------------------
# 1. Defaults


def test_stage1_defaults_are_the_papers(monkeypatch):
    a = parsed(monkeypatch, s1.parse_args, REQUIRED)
    assert (a.lora_rank, a.lora_alpha, a.lora_dropout) == (16, 32.0, 0.05)
    assert (a.lr, a.weight_decay, a.warmup_steps, a.epochs) == (5e-5, 0.01, 80, 5)
    assert (a.batch_size * a.grad_accum, a.max_length, a.max_grad_norm, a.seed) == (32, 2048, 1.0, 42)
    assert a.rows == "0:2000" and a.mask_prob == 0.7


def test_stage2_defaults_are_the_papers_and_the_dataclass_agrees(monkeypatch):
    a = parsed(monkeypatch, s2.main, REQUIRED)
    assert (a.group_size, a.temperature, a.top_p, a.max_new_tokens) == (2, 0.7, 0.9, 256)
    assert (a.lr, a.beta, a.epochs, a.rows, a.reward) == (1e-5, 0.1, 3.0, "2000:4000", "paper")
    assert a.words_per_step is None   # calibrated to the teacher data (test below)
    # add_grpo_arguments re-declares GRPOConfig's fields: both must say the same
    assert s2.GRPOConfig.from_args(a) == s2.GRPOConfig(model="m", out="o")


def test_stage3_defaults_are_the_papers(monkeypatch):
    a = parsed(monkeypatch, s3.main, REQUIRED)
    assert (a.group_size, a.temperature, a.top_p, a.max_new_tokens) == (2, 0.7, 0.9, 512)
    assert (a.lr, a.beta, a.epochs, a.rows) == (1e-5, 0.1, 5.0, "2000:")
    assert (a.attempts, a.mine_temperature, a.failure_threshold) == (1, 0.0, None)   # one greedy attempt
    assert a.reward == "paper_rewrite" and a.thinking == "keep"


TINY_BRANCH = 'if [ "$TARGET" = tiny ] || [ "$TARGET" = rewards ]; then'  # the tiny world's settings (and the lab's)


def _branch_settings(branch: str) -> dict[str, list[str]]:
    """S1/S2/S3 of one branch of curriculum.sh, with $VAR references expanded."""
    text = (ROOT / "curriculum.sh").read_text()
    tiny, paper = text.split(TINY_BRANCH, 1)[1].split("\nelse\n", 1)
    body = tiny if branch == "tiny" else paper.split("\nfi\n", 1)[0]
    values: dict[str, str] = {}
    for name, value in re.findall(r'^\s*(S1|S2|S3|GRPO)="([^"]*)"', body, re.MULTILINE):
        values[name] = re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), m.group(0)), value)
    return {k: v.replace("WPS", "8").split() for k, v in values.items() if k != "GRPO"}


def test_tiny_runner_keeps_its_settings(monkeypatch):
    """curriculum.sh tiny passes explicitly what it used to get from the old defaults."""
    s = _branch_settings("tiny")
    a1 = parsed(monkeypatch, s1.parse_args, REQUIRED + s["S1"])
    assert (a1.lora_rank, a1.epochs, a1.batch_size * a1.grad_accum, a1.lr) == (0, 4, 32, 3e-4)   # 4: the 15 minutes
    a2 = parsed(monkeypatch, s2.main, REQUIRED + s["S2"])
    assert (a2.group_size, a2.beta, a2.words_per_step, a2.max_new_tokens, a2.lr) == (8, 0.1, 8.0, 256, 2e-5)
    a3 = parsed(monkeypatch, s3.main, REQUIRED + s["S3"])
    assert (a3.attempts, a3.mine_temperature, a3.group_size, a3.beta) == (2, 0.7, 8, 0.1)


def test_paper_runner_passes_the_paper_settings(monkeypatch):
    s = _branch_settings("paper")
    for main, flags in [(s1.parse_args, s["S1"]), (s2.main, s["S2"]), (s3.main, s["S3"])]:
        given = vars(parsed(monkeypatch, main, REQUIRED + flags))
        default = vars(parsed(monkeypatch, main, REQUIRED))
        changed = {k for k in given if given[k] != default[k]}
        # memory and speed only, and the authors' KL on every completion (the tiny world's runner keeps the default)
        assert changed <= {"dtype", "gradient_checkpointing", "keep_zero_variance"}, changed


# -----------------------------------------------------------------------------
# 2. Every option shows its default in --help


def _help_entries(main, argv, capsys) -> dict[str, str]:
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    entries, current = {}, None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
        else:
            current = None
    entries.pop("-h", None)
    return entries


@pytest.mark.parametrize("main, argv", [
    (s1.parse_args, ["--help"]), (s2.main, ["--help"]), (s3.main, ["--help"]), (ev.main, ["--help"]),
    (teacher.main, ["show", "--help"]), (teacher.main, ["generate", "--help"]), (tw.main, ["--help"]),
], ids=["stage1", "stage2", "stage3", "eval", "teacher-show", "teacher-generate", "tiny_world"])
def test_help_shows_every_default(main, argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    entries = _help_entries(main, argv, capsys)
    assert len(entries) >= 3
    # an option that takes a value is followed by its metavar or choices; a flag (off unless
    # given) shows no default, least of all `(default: True)` for --no-std-scale
    takes_value = {name: re.match(rf"^\s+{re.escape(name)} [A-Z{{]", text) is not None for name, text in entries.items()}
    required = {"--model", "--out", "--teacher-data"} & set(entries)  # (shown without a default)
    missing = [name for name, text in entries.items()
               if takes_value[name] and name not in required and "default:" not in text]
    assert not missing
    flags = [name for name in entries if not takes_value[name]]
    assert all("(default:" not in entries[name] for name in flags), flags


# -----------------------------------------------------------------------------
# 3. Numeric options are checked at parse time (the bad values: tests/test_cli.py's table)


def test_checked_types_accept_their_range_and_keep_values():
    assert cli.nucleus("1") == 1.0 and cli.probability("0") == 0.0 and cli.positive_int("3") == 3
    assert cli.row_slice("2000:") == slice(2000, None) and cli.row_slice(":") == slice(None, None)
    assert cli.row_slice("-100:") == slice(-100, None) and cli.row_slice("") is None
    assert cli.rows_option("0:2000") == "0:2000"
    with pytest.raises(ValueError, match="START:END"):
        cli.row_slice("12")
    with pytest.raises(ValueError, match=r"an integer >= 1, got '2.5'"):
        cli.positive_int("2.5")


# -----------------------------------------------------------------------------
# 4. Teacher data: truncated completions, the authors' thinking text


def test_truncated_teacher_completion_is_rejected_even_with_the_right_last_number():
    text = "Step 1: 2 + 2 = 4.\nStep 2: Then we double it, 4"    # cut off mid-step, last number 4
    assert teacher.judge_completion(text, "4", "length") == (None, "truncated")
    kept, why = teacher.judge_completion(text + "\nAnswer: 4", "4", "eos")
    assert why == "ok" and kept.steps == ["2 + 2 = 4.", "Then we double it, 4"]
    assert teacher.judge_completion("Step 1: 2 + 2 = 5.\nAnswer: 5", "4", "length") == (None, "truncated")


def test_authors_thinking_is_kept_by_default_and_can_be_dropped():
    kept = teacher.load_teacher_data(str(BRIDGE_STAGE3), quiet=True)
    dropped = teacher.load_teacher_data(str(BRIDGE_STAGE3), quiet=True, thinking="drop")
    mean = lambda xs: sum(len(e.rationale.split()) for e in xs) / len(xs)
    assert 285 < mean(kept) < 300 and 140 < mean(dropped) < 155     # 292.5 and 147.5 words
    assert all(k.rationale.startswith("Thinking") for k in kept)
    assert all(k.steps == d.steps for k, d in zip(kept, dropped))    # the steps never hold it
    assert all(d.rationale == teacher.format_rationale(d.steps, d.answer) for d in dropped)
    # stage 3's ratio denominator is the rationale stage 1 teaches (no thinking): the same either way
    rewrite = "Step 1: " + "word " * 60 + "\nFinal Answer: " + kept[0].answer
    as_kept, as_dropped = rewards.Completion(rewrite), rewards.Completion(rewrite)
    s3.paper_rewrite(as_kept, kept[0])
    s3.paper_rewrite(as_dropped, dropped[0])
    assert as_kept.parts["ratio"] == as_dropped.parts["ratio"]


def test_stage3_failures_file_keeps_thinking_unless_told(monkeypatch, tmp_path):
    seen = {}

    def fake_train(config, examples, build_prompt, reward_fn, desc="", train_prompt=None, **more):
        seen.update(examples=examples, reward_fn=reward_fn, config=config)
        return {"steps": 0, "out": config.out, "model": None}

    monkeypatch.setattr(s2, "train_grpo", fake_train)
    base = ["--model", "m", "--failures", str(BRIDGE_STAGE3), "--device", "cpu"]
    s3.main(base + ["--out", str(tmp_path / "a")])
    assert seen["examples"][0].rationale.startswith("Thinking")
    s3.main(base + ["--out", str(tmp_path / "b"), "--thinking", "drop", "--reward", "overlong", "--overlong-buffer", "10"])
    assert seen["examples"][0].rationale.startswith("Step 1:")
    assert seen["reward_fn"].keywords == {"overlong_buffer": 10}          # stage 2's options reach stage 3
    s3.main(base + ["--out", str(tmp_path / "c"), "--reward", "paper", "--words-per-step", "20"])
    assert seen["reward_fn"].func is s2.reward_paper and seen["reward_fn"].keywords == {"words_per_step": 20.0}


# -----------------------------------------------------------------------------
# 5. Stage 2's length budget, calibrated to the teacher data


def test_words_per_step_is_calibrated_to_the_teacher_data(monkeypatch, tmp_path, capsys):
    r1_like = [teacher.TeacherExample("q", "1", " ".join(["w"] * 310), ["a"] * 5)]   # 62 words a step
    assert rewards.calibrated_words_per_step(r1_like) == 35.0
    seen = {}

    def fake_train(config, examples, build_prompt, reward_fn, desc="", train_prompt=None, **more):
        seen.update(reward_fn=reward_fn, n=len(examples))
        return {"steps": 0, "out": config.out}

    monkeypatch.setattr(s2, "train_grpo", fake_train)
    argv = ["--model", "m", "--out", str(tmp_path), "--gsm8k-path", str(GSM8K_TRAIN)]
    s2.main(argv)   # GSM8K's own rationales, rows 2000:4000: ~58 words in ~3.6 steps
    assert seen["n"] == 2000
    wps = seen["reward_fn"].keywords["words_per_step"]
    assert 8.5 < wps < 10 and f"--words-per-step {wps:g}" in capsys.readouterr().out
    s2.main(argv + ["--words-per-step", "35"])
    assert seen["reward_fn"].keywords["words_per_step"] == 35.0 and "--words-per-step" not in capsys.readouterr().out


# -----------------------------------------------------------------------------
# 6. Rewards and GRPO variants


def test_paper_reward_counts_words_up_to_the_answer_line():
    ex = teacher.TeacherExample("q", "4", "r", ["a", "b", "c"])
    answer = "Step 1: 2 + 2 = 4.\nAnswer: 4"
    tail = "\nStep 2: " + "and so on " * 100
    alone, with_tail = rewards.Completion(answer), rewards.Completion(answer + tail)
    assert s2.reward_paper(with_tail, ex, words_per_step=10) == s2.reward_paper(alone, ex, words_per_step=10)
    assert with_tail.parts["words"] == alone.parts["words"] == len(answer.split())
    assert rewards.answer_part("Step 1: x\nFinal Answer: 3\nQuestion: next") == "Step 1: x\nFinal Answer: 3"
    assert s3.answer_part is s2.answer_part is rewards.answer_part and s3.REWARDS["paper"] is s2.reward_paper


@pytest.mark.parametrize("text", ["Step 1: 2 + 2 = 4.\nAnswer: 4", "step 1: 2 + 2 = 4.\nFINAL ANSWER: 4",
                                  "Step 1: 2 + 2 = 4.\nAnswer : 4", "Step 1: 2 + 2 = 4.\nThe answer is 4"])
def test_the_format_check_finds_an_answer_line_where_eval_reads_one(text):
    # one answer label (eval.ANSWER_LABEL): what the rewards call formatted is what eval reads
    # its answer from, and answer_part cuts at the end of that same line
    from eval import ANSWER_LINE
    assert rewards.well_formed(text) == bool(ANSWER_LINE.search(text))
    assert rewards.answer_part(text + "\nStep 2: more") == (text if rewards.well_formed(text) else text + "\nStep 2: more")


def test_advantages_without_std_scale_are_r_minus_mean():
    rewards = torch.tensor([1.0, 3.0, 0.0, 0.0, -2.0, 2.0])
    adv, zero = s2.group_advantages(rewards, 2, std_scale=False)
    assert adv.tolist() == [-1.0, 1.0, 0.0, 0.0, -2.0, 2.0] and zero.tolist() == [False, True, False]
    scaled, _ = s2.group_advantages(rewards, 2)
    assert scaled[0] == pytest.approx(-0.7071, abs=1e-3) and scaled[4] == pytest.approx(-0.7071, abs=1e-3)


def test_dr_grpo_divides_the_token_sum_by_a_constant():
    lp = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5])
    # ratio 1, no KL: the per-token loss is -A; token sum = -(2 * 1 + 3 * -0.5) = -0.5
    loss, _ = s2.grpo_loss(lp, lp, adv, mask, loss_agg="dr-grpo", max_new_tokens=8)
    assert float(loss) == pytest.approx(-0.5 / (8 * 2))
    token_mean, _ = s2.grpo_loss(lp, lp, adv, mask, loss_agg="token-mean")
    assert float(token_mean) == pytest.approx(-0.5 / 5)
    cfg = s2.GRPOConfig.from_args(s2.add_grpo_arguments(argparse.ArgumentParser()).parse_args(
        REQUIRED + ["--loss-agg", "dr-grpo", "--no-std-scale"]))
    assert (cfg.loss_agg, cfg.std_scale) == ("dr-grpo", False)
    assert "Dr. GRPO" not in s2.__doc__.split('"token-mean"')[1].split('"dr-grpo"')[0]   # token-mean is DAPO's


def test_the_reward_lab_runs_stage_2_four_ways_from_stage_1(monkeypatch, tmp_path):
    """`bash curriculum.sh rewards`: four rows, each the tiny runner's stage 2 with LAB_STEPS steps
    and another reward (the paper's, correctness only, the paper's at half the word budget,
    cosine), every one a command stage 2 accepts; without a tiny run it stops at once, in one
    line that names the missing folder."""
    import subprocess
    text = (ROOT / "curriculum.sh").read_text()
    lab = text.split('if [ "$TARGET" = rewards ]; then\n  STAGE1=', 1)[1]
    lines = lab.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0].splitlines()
    s2_flags = _branch_settings("tiny")["S2"]
    seen = {}
    for line in lines:
        name, *reward = line.replace("$((WPS / 2))", "4").split()
        a = parsed(monkeypatch, s2.main, REQUIRED + s2_flags + reward)
        seen[name] = (a.reward, a.words_per_step)
    assert seen == {"paper": ("paper", 8.0), "correct": ("correct", 8.0), "paper_tight": ("paper", 4.0),
                    "cosine": ("cosine", 8.0)}
    assert "${LAB_STEPS:-40}" in lab
    done = subprocess.run(["bash", str(ROOT / "curriculum.sh"), "rewards"], env={"PATH": "/usr/bin:/bin",
                          "RUN": str(tmp_path / "none")}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and f"{tmp_path / 'none'}/stage1" in done.stderr
