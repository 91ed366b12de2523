"""The reward contract as someone who changes rewards meets it (issue 27): one registry serves
stages 2 and 3, a reward's options are its own keyword parameters, a reward may live in a file of
one's own, a reward that is not a finite number is refused, and the metrics add up whatever keys
each process's rewards logged. Then the paper differences that meet the rewards and the run: what
stage 3's length ratio divides by, the warm-up count, and the paper runner's settings."""
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import cli
import rewards
import stage2_grpo as s2
import stage3_rewrite as s3
from conftest import BRIDGE_STAGE3, ROOT
from run import learning_rate
from test_paper_settings import REQUIRED, TINY_BRANCH, _branch_settings, parsed
from teacher import format_rationale, load_teacher_data

RECORDS = [{"question": f"Tom has {n} apples and buys 2 more. How many now?", "answer": str(n + 2),
            "rationale": f"Step 1: Tom has {n} apples.\nStep 2: {n} + 2 = {n + 2}.\nAnswer: {n + 2}",
            "steps": [f"Tom has {n} apples.", f"{n} + 2 = {n + 2}."]} for n in range(3, 7)]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "teacher.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


@pytest.fixture
def seen(monkeypatch):
    """What each stage would train with: train_grpo is replaced by a recorder (no model is loaded)."""
    record = {}

    def fake_train(config, examples, build_prompt, reward_fn, desc="", **more):
        record.update(config=config, examples=examples, reward_fn=reward_fn)
        return {"steps": 0, "out": config.out}

    monkeypatch.setattr(s2, "train_grpo", fake_train)
    return record


def stage2(data, tmp_path, *extra):
    return s2.main(["--model", "m", "--out", str(tmp_path / "s2"), "--teacher-data", str(data), "--rows", ":",
                    "--device", "cpu", *extra])


def stage3(data, tmp_path, *extra):
    return s3.main(["--model", "m", "--out", str(tmp_path / "s3"), "--failures", str(data), "--device", "cpu", *extra])


def brevity(completion, example):
    """-(words in the completion)"""
    return -float(len(completion.text.split()))


def scaled(completion, example, scale: float = 1.0, offset: int = 0, negate: bool = False):
    """(-1 if negate else 1) * scale * words + offset"""
    return (-1 if negate else 1) * scale * len(completion.text.split()) + offset


def budgeted(completion, example, words_per_step: float = 35.0, overlong_buffer: int = 64):
    """words_per_step + overlong_buffer (a reward with the paper's and DAPO's option names)"""
    return words_per_step + overlong_buffer


# -----------------------------------------------------------------------------
# 1. One registry


def test_one_registry_serves_both_stages(monkeypatch, seen, data, tmp_path):
    monkeypatch.setitem(rewards.REWARDS, "brevity", brevity)   # added to the one registry
    stage2(data, tmp_path, "--reward", "brevity")
    assert seen["reward_fn"] is brevity
    stage3(data, tmp_path, "--reward", "brevity")         # ...and stage 3 offers it
    assert seen["reward_fn"] is brevity
    assert s3.REWARDS is s2.REWARDS is rewards.REWARDS and {"paper_rewrite", "rewrite_linear"} <= set(rewards.REWARDS)
    # the defaults stay: the paper's reward in stage 2 (its budget calibrated), paper_rewrite in stage 3
    stage2(data, tmp_path / "a")
    assert seen["reward_fn"].func is s2.reward_paper and set(seen["reward_fn"].keywords) == {"words_per_step"}
    stage3(data, tmp_path / "a")   # (registered anew, by another function object, when stage 3 runs as a script)
    assert seen["reward_fn"] is rewards.REWARDS["paper_rewrite"] and seen["reward_fn"].__name__ == "paper_rewrite"


# -----------------------------------------------------------------------------
# 2. Options: the reward's own keyword parameters


def test_reward_options_are_the_rewards_keyword_parameters(monkeypatch, seen, data, tmp_path):
    monkeypatch.setitem(rewards.REWARDS, "scaled", scaled)
    stage2(data, tmp_path, "--reward", "scaled", "--reward-option", "scale=0.5", "--reward-option", "negate=true",
           "--reward-option", "offset=3")
    assert seen["reward_fn"].func is scaled
    assert seen["reward_fn"].keywords == {"scale": 0.5, "negate": True, "offset": 3}   # the defaults' types
    assert type(seen["reward_fn"].keywords["offset"]) is int
    assert seen["reward_fn"](rewards.Completion("a b c d"), None) == -2.0 + 3
    stage3(data, tmp_path, "--reward", "scaled", "--reward-option", "scale=2")   # stage 3 binds them alike
    assert seen["reward_fn"].keywords == {"scale": 2.0}
    stage2(data, tmp_path / "b", "--reward", "overlong", "--reward-option", "overlong_buffer=10")
    assert seen["reward_fn"].func is rewards.reward_overlong and seen["reward_fn"].keywords == {"overlong_buffer": 10}


@pytest.mark.parametrize("option, message", [
    ("scael=2", "--reward-option scael=2: reward scaled has no option 'scael' (the options of reward scaled: "
                "scale, offset, negate)"),
    ("scale", "--reward-option scale: expected NAME=VALUE (the options of reward scaled: scale, offset, negate)"),
    ("offset=1.5", "--reward-option offset=1.5: reward scaled expects offset as int, like its default 0"),
    ("negate=maybe", "reward scaled expects negate as bool"),
    ("scale=x", "reward scaled expects scale as float"),
])
def test_a_bad_reward_option_is_one_line_naming_reward_and_option(monkeypatch, seen, data, tmp_path, option,
                                                                   message):
    monkeypatch.setitem(rewards.REWARDS, "scaled", scaled)
    with pytest.raises(cli.UsageError) as caught:
        stage2(data, tmp_path, "--reward", "scaled", "--reward-option", option)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    # stage 3 refuses it before any work: the model named here does not exist, and is never loaded
    with pytest.raises(cli.UsageError, match="reward scaled"):
        s3.main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "s3"), "--reward", "scaled",
                 "--reward-option", option])


def test_words_per_step_and_overlong_buffer_reach_any_reward_that_takes_them(monkeypatch, seen, data, tmp_path,
                                                                            capsys):
    monkeypatch.setitem(rewards.REWARDS, "budgeted", budgeted)
    stage2(data, tmp_path / "a", "--reward", "budgeted", "--words-per-step", "12", "--overlong-buffer", "5")
    assert seen["reward_fn"].keywords == {"words_per_step": 12.0, "overlong_buffer": 5}
    assert "--words-per-step" not in capsys.readouterr().out
    stage2(data, tmp_path / "b", "--reward", "budgeted")   # not given: calibrated and printed, as for paper
    wps = rewards.calibrated_words_per_step(load_teacher_data(str(data)))
    assert seen["reward_fn"].keywords == {"words_per_step": wps}
    assert f"stage 2: --words-per-step {wps:g}" in capsys.readouterr().out
    # a reward without them ignores them, so a run script may pass them whatever --reward says
    stage2(data, tmp_path / "c", "--reward", "correct", "--words-per-step", "12", "--overlong-buffer", "5")
    assert seen["reward_fn"] is rewards.reward_correct
    with pytest.raises(cli.UsageError, match="given twice"):
        stage2(data, tmp_path / "d", "--reward", "budgeted", "--words-per-step", "12",
               "--reward-option", "words_per_step=9")


# -----------------------------------------------------------------------------
# 3. A reward in a file of one's own


MY_REWARDS = '''
def brevity(completion, example, per_word: float = 0.01):
    """-per_word * (words in the completion)"""
    return -per_word * len(completion.text.split())
'''


def test_a_reward_in_a_file_of_ones_own(seen, data, tmp_path):
    (tmp_path / "my_rewards.py").write_text(MY_REWARDS)
    spec = f"{tmp_path / 'my_rewards.py'}:brevity"
    stage2(data, tmp_path / "a", "--reward", spec, "--reward-option", "per_word=0.5")
    assert seen["reward_fn"](rewards.Completion("one two three"), None) == -1.5
    stage3(data, tmp_path / "b", "--reward", spec)
    assert seen["reward_fn"](rewards.Completion("one two three"), None) == pytest.approx(-0.03)
    for bad, message in [(f"{tmp_path / 'nothere.py'}:brevity", "nothere.py: no such file"),
                         (f"{tmp_path / 'my_rewards.py'}:shortness", "my_rewards.py defines no function shortness"),
                         ("brevty", "--reward brevty: not a registered reward (")]:
        with pytest.raises(cli.UsageError) as caught:
            stage2(data, tmp_path / "c", "--reward", bad)
        assert message in str(caught.value)


def test_a_missing_reward_file_is_one_line_from_the_command_line(tmp_path):
    run = subprocess.run([sys.executable, "stage2_grpo.py", "--model", "m", "--out", str(tmp_path / "o"),
                          "--reward", "my_rewards.py:brevity"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr == "error: --reward my_rewards.py:brevity: my_rewards.py: no such file\n"


# -----------------------------------------------------------------------------
# 4. A reward that is not a finite number


@pytest.mark.parametrize("bad", [math.nan, -math.inf])
def test_a_reward_that_is_not_finite_is_refused_before_the_advantages(tiny_world, tmp_path, bad):
    examples = load_teacher_data(str(tiny_world.teacher), rows=slice(0, 4))
    victim = examples[2]

    def broken(completion, example):
        return bad if example.question == victim.question else 1.0

    config = s2.GRPOConfig(model=str(tiny_world.base_model), out=str(tmp_path / "run"), group_size=2,
                           prompts_per_step=4, max_steps=1, max_new_tokens=8, save_every=0, quiet=True,
                           device="cpu")
    with pytest.raises(ValueError) as caught:
        s2.train_grpo(config, examples, s2.prompt_builder("plain"), broken)
    message = str(caught.value)
    assert message.startswith(f"reward broken returned {bad} for the question ") and victim.question[:40] in message
    assert "\n" not in message
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text()   # no step was taken


# -----------------------------------------------------------------------------
# 5. Metrics under torchrun: the processes' sums, whatever parts each one's rewards logged


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_sums(rank: int, parts: dict[str, float]) -> dict:
    """One process's sums as grpo_step returns them: 4 completions, and the parts its reward logged."""
    return {"reward": 2.0 + rank, "reward_sq": 5.0, "rows": 4, "tokens": 40, "truncated": 0, "zero_var": 0.0,
            "groups": 2, "kl": 0.0, "trained_tokens": 40, "clipped": 0.0, "loss": 0.0, "gap_sum": 0.0,
            "recomputed": 0, **{f"part_{k}": v for k, v in parts.items()}}


# each process's parts in each step: a key only one process logged (same count, other names, so
# zipping by order would add one process's "long" to the other's "short"), then a key one lacks
PARTS = [[{"correct": 1.0, "long": 2.0}, {"correct": 3.0, "short": 1.0}],
         [{"correct": 1.0, "short": 2.0}, {"correct": 2.0}]]


def _metrics_worker(rank: int, world_size: int, port: int, out_dir: str):
    from datetime import timedelta
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, str(ROOT))
    import distributed
    import stage2_grpo
    torch.set_num_threads(1)
    # a short timeout: sums that do not line up across processes fail here instead of hanging
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    ctx = distributed.setup("cpu")
    cfg = stage2_grpo.GRPOConfig(model="m", out="o")
    info = {"trained_rows": 8, "grad_norm": 0.0, "gap": 0.0, "rollout_seconds": 0.0, "train_seconds": 0.0}
    try:
        records = []
        for step, parts in enumerate(PARTS):
            records.append(stage2_grpo.step_metrics(step_sums(rank, parts[rank]), info, ctx, cfg, step, 10, 1e-5))
            (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(records))
    finally:
        ctx.close()


def test_metrics_add_up_over_the_union_of_the_processes_parts(tmp_path):
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_metrics_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method=method)
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert records[0] == records[1]
    first, second = records[0]
    n = 8   # completions over both processes
    assert (first["reward_correct"], first["reward_long"], first["reward_short"]) == (4 / n, 2 / n, 1 / n)
    assert first["accuracy"] == 4 / n and first["reward"] == 5 / n
    assert (second["reward_correct"], second["reward_short"]) == (3 / n, 2 / n) and "reward_long" not in second


# -----------------------------------------------------------------------------
# 6. Stage 3's length ratio: against the rationale the student is trained to write


def test_stage3_ratio_is_against_the_rationale_stage1_teaches():
    kept = load_teacher_data(str(BRIDGE_STAGE3), quiet=True)                    # their "Thinking..." kept
    dropped = load_teacher_data(str(BRIDGE_STAGE3), quiet=True, thinking="drop")
    assert kept[0].rationale.startswith("Thinking") and kept[0].steps == dropped[0].steps
    target = format_rationale(kept[0].steps, kept[0].answer)   # stage 1's target, thinking or not
    rewrite = "Step 1: " + "word " * 30 + "\nFinal Answer: " + kept[0].answer
    as_kept, as_dropped = rewards.Completion(rewrite), rewards.Completion(rewrite)
    assert s3.paper_rewrite(as_kept, kept[0]) == s3.paper_rewrite(as_dropped, dropped[0])
    assert as_kept.parts["ratio"] == as_dropped.parts["ratio"] == len(rewrite.split()) / len(target.split())
    # copying what stage 1 taught is no compression: ratio 1, no bonus (against the thinking ~0.5, +0.5)
    copy = rewards.Completion(target)
    assert s3.paper_rewrite(copy, kept[0]) == 1.0 and copy.parts["ratio"] == 1.0


def test_the_tiny_worlds_rationales_are_already_stage1s_target(tiny_world):
    """Why the ratio's denominator did not change the tiny world: its rationales are the canonical form."""
    examples = load_teacher_data(str(tiny_world.teacher), quiet=True)
    assert all(e.rationale == format_rationale(e.steps, e.answer) for e in examples)


# -----------------------------------------------------------------------------
# 7. The warm-up, counted as the authors' trainer counts it: int(0.1 x total steps)


def test_warmup_ratio_rounds_down_as_the_authors_trainer():
    cfg = s2.GRPOConfig(model="m", out="o", lr=1e-5, warmup_ratio=0.1)
    # 0.1 x 25 = 2.5 -> 2 warm-up steps, and 0.1 x 30 = 3.0000000000000004 -> 3: step 2 is at the peak
    assert [learning_rate(cfg, step, 25) for step in (0, 1)] == pytest.approx([5e-6, 1e-5])
    assert [learning_rate(cfg, step, 30) for step in (0, 2)] == pytest.approx([1e-5 / 3, 1e-5])
    assert learning_rate(cfg, 599, 6000) == pytest.approx(1e-5)   # the paper's 6,000 steps: 600


# -----------------------------------------------------------------------------
# 8. The paper runner: the authors' stage-3 batch, their KL on every completion, one eval precision


def test_paper_runner_takes_the_authors_batches_kl_and_one_eval_precision(monkeypatch):
    paper, tiny = _branch_settings("paper"), _branch_settings("tiny")
    a2, a3 = (parsed(monkeypatch, main, REQUIRED + paper[name]) for main, name in ((s2.main, "S2"), (s3.main, "S3")))
    assert (a2.prompts_per_step, a3.prompts_per_step) == (1, 2)   # train_batch_size 1 and 2 in their configs
    assert parsed(monkeypatch, s3.main, REQUIRED).prompts_per_step == 2   # also stage 3's default
    assert a2.keep_zero_variance and a3.keep_zero_variance           # beta * KL on every completion
    branches = (ROOT / "curriculum.sh").read_text().split(TINY_BRANCH, 1)[1].split("\nelse\n", 1)
    ev = {name: re.search(r'^\s*EV="([^"]*)"', text, re.MULTILINE).group(1).split()
          for name, text in zip(("tiny", "paper"), branches)}
    assert ev["paper"][ev["paper"].index("--dtype") + 1] == "bfloat16"   # base, stages 1-3: one precision
    # the tiny world's runner is left as it was
    t2, t3 = (parsed(monkeypatch, main, REQUIRED + tiny[name]) for main, name in ((s2.main, "S2"), (s3.main, "S3")))
    assert not t2.keep_zero_variance and not t3.keep_zero_variance and t3.prompts_per_step == 8
    assert "--dtype" not in ev["tiny"]
