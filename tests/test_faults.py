"""Checkpoints and --resume under faults (issue #14): kills at any moment, torn metrics lines,
leftovers of interrupted saves, changed options, no pickle, and the tokenizer of the final model."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import resume
import stage1_reconstruct as s1
import stage2_grpo as s2
import stage3_rewrite as s3
from conftest import ROOT
from model import Qwen2
from tokenizer import load_tokenizer


def metrics_steps(out):
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_complete_model(out):
    """The final model loads, with its tokenizer (the files a later stage or eval needs)."""
    Qwen2.from_pretrained(out)
    assert load_tokenizer(out).eos_token_id is not None


def assert_evaluates(out, world):
    """The final model answers held-out questions through eval.py's own loop."""
    from eval import evaluate, load_gsm8k
    samples, summary = evaluate(Qwen2.from_pretrained(out), load_tokenizer(out), load_gsm8k(str(world.test), limit=4),
                                batch_size=4, max_new_tokens=8, progress=False)
    assert summary["n"] == 4 and all(s["generated_tokens"] > 0 for s in samples)


def no_pickle(*args, **kwargs):
    raise AssertionError("--resume must not unpickle anything (torch.load)")


# -----------------------------------------------------------------------------
# resume.py on hand-made folders


def fake_checkpoint(folder, step, complete=True):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text("weights")
    if complete:
        resume.save_trainer_state(folder, {"x": torch.zeros(1)}, {"step": step})


def test_discovery_and_cleaning_of_interrupted_saves(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint-2", 2)
    fake_checkpoint(tmp_path / "checkpoint-4.old", 4)           # killed between the two renames
    fake_checkpoint(tmp_path / "checkpoint-6", 6, complete=False)  # killed before its trainer state
    fake_checkpoint(tmp_path / "checkpoint-2.old", 2)           # stale: checkpoint-2 is complete
    (tmp_path / ".checkpoint-8.partial").mkdir()                # killed before its rename into place
    (tmp_path / "..checkpoint-8.partial.tmp-abc").mkdir()       # killed inside save_pretrained
    (tmp_path / "checkpoint-notes").mkdir()
    final_tmp = tmp_path.parent / f".{tmp_path.name}.final.tmp-xyz"
    final_tmp.mkdir()
    assert resume.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"  # no crash on `4.old`
    resume.clean_checkpoints(tmp_path)
    assert resume.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"  # the .old copy restored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-notes"]
    assert not final_tmp.exists()
    resume.remove_old_checkpoints(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-notes"]


def test_checkpoint_to_resume_cleans_then_picks_the_newest_complete(tmp_path, capsys):
    """The one start-up sequence of stages 1 and 2: nothing touched without --resume; with it,
    the leftovers of a killed save put right first, then the newest complete checkpoint loaded."""
    class OneProcess:
        is_main, barrier = True, staticmethod(lambda: None)
    fake_checkpoint(tmp_path / "checkpoint-2", 2)
    fake_checkpoint(tmp_path / "checkpoint-4.old", 4)            # killed between the two renames
    fake_checkpoint(tmp_path / "checkpoint-6", 6, complete=False)  # killed before its trainer state
    assert resume.checkpoint_to_resume(tmp_path, False, OneProcess()) == (None, {}, None)
    assert (tmp_path / "checkpoint-4.old").is_dir() and (tmp_path / "checkpoint-6").is_dir()
    folder, tensors, state = resume.checkpoint_to_resume(tmp_path, True, OneProcess())
    assert folder == tmp_path / "checkpoint-4" and state["step"] == 4 and list(tensors) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert resume.checkpoint_to_resume(tmp_path / "new", True, OneProcess()) == (None, {}, None)
    assert "no checkpoint in" in capsys.readouterr().out


def test_the_final_model_joins_its_run_folder_weights_last(tmp_path, tiny_qwen_checkpoint, monkeypatch):
    """Both stages save their final model with resume.save_final: into the run folder, beside
    metrics.jsonl and the checkpoints (save_pretrained alone would replace the folder), and
    model.safetensors moved in last, so that a kill mid-way leaves no loadable half-model."""
    out = tmp_path / "run"
    fake_checkpoint(out / "checkpoint-2", 2)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    moved = []
    replace = type(out).replace
    monkeypatch.setattr(type(out), "replace", lambda self, target: (moved.append(self.name), replace(self, target))[1])
    model = Qwen2.from_pretrained(tiny_qwen_checkpoint)
    resume.save_final(model, out, tiny_qwen_checkpoint)
    assert moved[-1] == "model.safetensors" and {"config.json", "tokenizer.json"} <= set(moved)
    assert {"metrics.jsonl", "checkpoint-2", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left
    assert_complete_model(out)
    reloaded = Qwen2.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))


def test_old_pickled_checkpoint_is_refused_not_deleted(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint-3", 3, complete=False)
    (tmp_path / "checkpoint-3" / "trainer_state.pt").write_bytes(b"pickle")
    with pytest.raises(SystemExit, match="old format"):
        resume.clean_checkpoints(tmp_path)
    assert (tmp_path / "checkpoint-3" / "trainer_state.pt").is_file()


def test_metrics_torn_last_line_is_dropped_and_corrupt_middle_line_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "lo')  # killed while writing step 4
    resume.truncate_metrics(path, 2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    path.write_text(lines[0] + "\n" + '{"step": 2, "lo\n' + lines[2] + "\n")
    with pytest.raises(SystemExit) as error:
        resume.truncate_metrics(path, 3)
    message = str(error.value)
    assert f"{path}:2: " in message and "\n" not in message


def test_optimizer_and_rng_round_trip_without_pickle(tmp_path, monkeypatch):
    """AdamW continued from the saved state takes exactly the steps the original takes."""
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.randn(3, 4))
    optimizer = torch.optim.AdamW([weights], lr=0.1, weight_decay=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        (weights ** 3).sum().backward()
        optimizer.step()
    tensors, groups = resume.optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    resume.save_trainer_state(tmp_path, {**tensors, "weights": weights.data}, {"param_groups": groups})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([resume.STATE_TENSORS, resume.STATE_JSON])

    monkeypatch.setattr(torch, "load", no_pickle)
    loaded, info = resume.load_trainer_state(tmp_path)
    copy = torch.nn.Parameter(loaded["weights"].clone())
    copy_optimizer = torch.optim.AdamW([copy], lr=0.5)  # the saved groups replace these settings
    resume.load_optimizer(copy_optimizer, loaded, info["param_groups"])
    expected_noise = torch.randn(2)
    torch.set_rng_state(loaded["rng.torch"])
    assert torch.equal(torch.randn(2), expected_noise)
    for p, opt in ((weights, optimizer), (copy, copy_optimizer)):
        opt.zero_grad()
        (p ** 3).sum().backward()
        opt.step()
    assert torch.equal(weights, copy)


def test_lora_adapters_round_trip_and_a_mismatch_is_refused(tiny_qwen_checkpoint):
    from lora import add_lora
    trained = add_lora(Qwen2.from_pretrained(tiny_qwen_checkpoint), rank=4)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".lora_" in name:
                p.normal_()
    tensors, _ = resume.trainer_tensors(trained, torch.optim.AdamW(trained.parameters()))
    assert any(k.startswith("lora.") for k in tensors)
    fresh = add_lora(Qwen2.from_pretrained(tiny_qwen_checkpoint), rank=4)
    resume.load_adapters(fresh, tensors, "ckpt")
    assert all(torch.equal(a, b) for (n, a), (_, b) in zip(trained.named_parameters(), fresh.named_parameters()))
    with pytest.raises(SystemExit, match="ckpt: LoRA adapters do not match the model"):
        resume.load_adapters(add_lora(Qwen2.from_pretrained(tiny_qwen_checkpoint), rank=4), {}, "ckpt")


def test_config_change_is_one_line_naming_option_and_values():
    saved = {"model": "a", "lr": 1e-4, "rows": "0:16", "save_every": 5}
    resume.check_config(saved, {**saved, "save_every": 7}, ["save_every"], "ckpt")  # may differ
    with pytest.raises(SystemExit) as error:
        resume.check_config(saved, {**saved, "lr": 2e-4}, ["save_every"], "ckpt")
    assert str(error.value) == "ckpt: cannot resume with different options: --lr (saved 0.0001, now 0.0002)"


def test_an_option_added_later_resumes_older_checkpoints_at_its_old_behaviour():
    """A stage-1 checkpoint written before --masked-steps existed resumes with the paper's `one`
    (what the code did then), and refuses any other value."""
    saved = {"model": "a", "lr": 1e-4}
    resume.check_config(saved, {**saved, "masked_steps": "one"}, [], "ckpt", s1.ADDED_LATER)
    with pytest.raises(SystemExit, match=r"--masked-steps \(saved 'one', now 'half'\)"):
        resume.check_config(saved, {**saved, "masked_steps": "half"}, [], "ckpt", s1.ADDED_LATER)
    with pytest.raises(SystemExit, match="--masked-steps"):  # without the table it is a changed option
        resume.check_config(saved, {**saved, "masked_steps": "one"}, [], "ckpt")


def test_a_stage2_checkpoint_from_before_the_keep_checkpoints_rename_resumes():
    """Before 2026-11-29 stages 2-3 spelled --keep-checkpoints `--save-total-limit`: a checkpoint
    that saved the old name resumes with any --keep-checkpoints, and a real change still stops it."""
    new = {"model": "a", "lr": 1e-4, "keep_checkpoints": 3}
    old = {"model": "a", "lr": 1e-4, "save_total_limit": 2}
    resume.check_config(old, new, s2.MAY_CHANGE_ON_RESUME, "ckpt")
    with pytest.raises(SystemExit, match="--lr"):
        resume.check_config(old, {**new, "lr": 2e-4}, s2.MAY_CHANGE_ON_RESUME, "ckpt")


def test_a_removed_option_resumes_only_where_it_did_what_the_code_does_now():
    """--ref-model is gone (the KL reference is always --model): a checkpoint that saved its
    default resumes; one that named another reference would be resumed with another one, so no."""
    new = {"model": "a", "lr": 1e-4}
    resume.check_config({**new, "ref_model": None}, new, s2.MAY_CHANGE_ON_RESUME, "ckpt", removed=s2.REMOVED_OPTIONS)
    with pytest.raises(SystemExit, match="--ref-model, which this code no longer has"):
        resume.check_config({**new, "ref_model": "other"}, new, s2.MAY_CHANGE_ON_RESUME, "ckpt",
                            removed=s2.REMOVED_OPTIONS)
    with pytest.raises(SystemExit, match="--ref-model"):  # without the table it is an unknown saved option
        resume.check_config({**new, "ref_model": None}, new, s2.MAY_CHANGE_ON_RESUME, "ckpt")


def test_a_path_option_may_be_spelled_another_way_on_resume(tmp_path, monkeypatch):
    (tmp_path / "base").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = {"model": "base", "lr": 1e-4}
    for spelling in ["./base", "base/", str(tmp_path / "base")]:
        resume.check_config(saved, {**saved, "model": spelling}, [], "ckpt")
    for other in ["other", "missing"]:  # another folder, or a hub id that is no folder here
        with pytest.raises(SystemExit, match="--model"):
            resume.check_config(saved, {**saved, "model": other}, [], "ckpt")


# -----------------------------------------------------------------------------
# Stage 1


def stage1_args(world, out, *extra):
    return ["--model", str(world.base_model), "--teacher-data", str(world.teacher), "--out", str(out),
            "--rows", "0:8", "--batch-size", "2", "--grad-accum", "1", "--lr", "5e-4", "--warmup-steps", "1",
            "--max-length", "256", "--max-steps", "3", "--save-every", "1", "--lora-rank", "4", "--device", "cpu",
            "--quiet", *extra]


def test_stage1_resumes_after_a_kill_between_renames_with_a_torn_metrics_line(tiny_world, tmp_path, monkeypatch):
    """The checkpoint put back is the complete one set aside, not the half-written new copy. (That
    a run resumed from a complete checkpoint ends with the weights of a run never interrupted, to
    the bit, is test_sigkill_at_a_random_moment_then_resume_is_bit_exact's, for every stage.)"""
    out = tmp_path / "killed"
    s1.main(stage1_args(tiny_world, out, "--stop-after", "2"))
    complete = {p.name: p.read_bytes() for p in (out / "checkpoint-2").iterdir()}
    # the kill: while checkpoint-2 was being replaced (the new copy half written and not yet
    # renamed in, the old one aside as .old) and while metrics.jsonl was getting step 3's line
    shutil.copytree(out / "checkpoint-2", out / ".checkpoint-2.partial")
    (out / ".checkpoint-2.partial" / "model.safetensors").write_bytes(complete["model.safetensors"][:1000])
    (out / "checkpoint-2").rename(out / "checkpoint-2.old")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "epoch": 0.')
    other_model = tmp_path / "other_model"
    shutil.copytree(tiny_world.base_model, other_model)
    with pytest.raises(SystemExit, match=r"--model \(saved '.*base', now '.*other_model'\)"):
        s1.main(stage1_args(tiny_world, out, "--resume", "--model", str(other_model)))
    monkeypatch.setattr(torch, "load", no_pickle)
    summary = s1.main(stage1_args(tiny_world, out, "--resume", "--save-every", "2"))  # may change
    assert summary["steps"] == 3 and metrics_steps(out) == [1, 2, 3]
    assert not list(out.glob("*.old")) and not list(out.glob(".*checkpoint-*"))
    assert {p.name: p.read_bytes() for p in (out / "checkpoint-2").iterdir()} == complete
    assert_complete_model(out)


# -----------------------------------------------------------------------------
# Stages 2 and 3


class Killed(Exception):
    """Stands in for a kill at a chosen moment (the real SIGKILL is tested below)."""


def stage2_args(world, out, *extra):
    return ["--model", str(world.base_model), "--teacher-data", str(world.teacher), "--rows", "0:16",
            "--out", str(out), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "16",
            "--lr", "1e-3", "--seed", "0", "--max-steps", "5", "--save-every", "1", "--keep-checkpoints", "1",
            "--keep-zero-variance", "--device", "cpu", "--quiet", *extra]


def killed_at_call(n):
    """A reward (minus the completion's share of the limit) that raises at its n-th call."""
    calls = []

    def reward(completion, example):
        calls.append(1)
        if len(calls) == n:
            raise Killed
        completion.parts.update(correct=0.0)
        return -completion.num_tokens / completion.max_new_tokens
    return reward


def test_stage2_kill_resume_cycles_keep_the_tokenizer_and_check_options(tiny_world, tmp_path, monkeypatch):
    out = tmp_path / "s2"
    calls_per_step = 2 * 2  # prompts x group size
    monkeypatch.setitem(s2.REWARDS, "short", killed_at_call(calls_per_step + 1))  # dies in step 2
    with pytest.raises(Killed):
        s2.main(stage2_args(tiny_world, out, "--reward", "short"))
    assert resume.latest_checkpoint(out) == out / "checkpoint-1"

    # every option that changes the result is checked against the saved run, in one line
    shutil.copytree(tiny_world.base_model, tmp_path / "other")
    for option, value in [("--lr", "2e-3"), ("--seed", "1"), ("--reward", "correct"), ("--rows", "0:8"),
                          ("--group-size", "3"), ("--model", str(tmp_path / "other"))]:
        with pytest.raises(SystemExit) as error:
            s2.main(stage2_args(tiny_world, out, "--reward", "short", "--resume", option, value))
        assert f"{option} (saved " in str(error.value) and "\n" not in str(error.value), str(error.value)

    # resumed from checkpoint-1 and killed again in step 4: checkpoint-1, which the first resume
    # loaded its weights from, has been rotated away by then
    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setitem(s2.REWARDS, "short", killed_at_call(2 * calls_per_step + 1))
    with pytest.raises(Killed):
        s2.main(stage2_args(tiny_world, out, "--reward", "short", "--resume", "--save-every", "1"))
    assert resume.latest_checkpoint(out) == out / "checkpoint-3"
    assert (out / "checkpoint-3" / "tokenizer.json").is_file()
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "rew')  # and the kill tore the metrics line being written
    monkeypatch.setitem(s2.REWARDS, "short", killed_at_call(-1))
    s2.main(stage2_args(tiny_world, out, "--reward", "short", "--resume"))
    assert metrics_steps(out) == [1, 2, 3, 4, 5]
    assert (out / "checkpoint-4" / "tokenizer.json").is_file()
    assert_complete_model(out)


def test_stage3_resume_checks_its_own_options(tiny_world, tmp_path):
    out = tmp_path / "s3"
    args = ["--model", str(tiny_world.base_model), "--failures", str(tiny_world.teacher), "--out", str(out),
            "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "8", "--max-steps", "2",
            "--save-every", "1", "--reward", "correct", "--device", "cpu", "--quiet"]
    s3.main(args)
    assert (out / "checkpoint-1" / resume.STATE_JSON).is_file()
    with pytest.raises(SystemExit, match=r"--policy-prompt \(saved 'rewrite', now 'eval'\)"):
        s3.main([*args, "--resume", "--policy-prompt", "eval"])
    s3.main([*args, "--resume", "--save-every", "5"])
    assert metrics_steps(out) == [1, 2]
    assert_complete_model(out)


# -----------------------------------------------------------------------------
# Real signals: SIGKILL at a random moment after the first checkpoint, then --resume to the end;
# SIGINT (Ctrl-C), which stops with one line saying what --resume will do


# The script run as `python SCRIPT ARGS`, with this process's torch thread count: calling
# torch.set_num_threads (conftest does) changes the CPU kernels' reduction order even when the
# count is the default, and the resumed half of a run, here in-process, must compute alike.
# Its end waits for the signal: resume.save_final, the last thing every stage does, first sleeps,
# so however fast the steps go the signal lands in a live run, never after a finished one.
LAUNCHER = ("import runpy, sys, time, torch, resume; torch.set_num_threads({}); "
            "resume.save_final = lambda *args, **kwargs: time.sleep(3600); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def start_stage(command):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    launcher = LAUNCHER.format(torch.get_num_threads())
    # a background job of a non-interactive shell (CI under nohup, say) starts with SIGINT ignored,
    # and Python then never turns it into KeyboardInterrupt: give the child the default handler
    return subprocess.Popen([sys.executable, "-c", launcher, *command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def signal_after_first_checkpoint(process, out, sig, delay=0.0, timeout=300):
    """Send `sig` `delay` seconds after the first complete checkpoint appears (any checkpoint-N:
    with --keep-checkpoints 1 the first may be rotated away between two looks). Returns the exit
    code and stderr; a run that makes no checkpoint fails here."""
    deadline = time.time() + timeout
    while not list(out.glob(f"checkpoint-*/{resume.STATE_JSON}")):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            _, err = process.communicate()
            raise AssertionError(f"no checkpoint in {out} (exit {process.returncode}): {err.decode()[-2000:]}")
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(sig)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err.decode()


def stage_command(stage, world, out):
    if stage == "stage1":
        return ["stage1_reconstruct.py", *stage1_args(world, out, "--max-steps", "5")]
    if stage == "stage2":
        return ["stage2_grpo.py", *stage2_args(world, out, "--reward", "cosine")]
    return ["stage3_rewrite.py", "--model", str(world.base_model), "--failures", str(world.teacher),
            "--out", str(out), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "16",
            "--lr", "1e-3", "--max-steps", "5", "--save-every", "1", "--keep-checkpoints", "1",
            "--reward", "correct", "--keep-zero-variance", "--device", "cpu", "--quiet"]


MAINS = {"stage1": s1.main, "stage2": s2.main, "stage3": s3.main}


def no_litter(out):
    """Nothing left of an interrupted save: no hidden temporary folders, no .old or .partial."""
    names = [p.name for p in [*out.iterdir(), *out.parent.iterdir()]]
    return [n for n in names if n.startswith(".") or n.endswith((".old", ".partial"))] == []


def weights(out):
    from safetensors.torch import load_file
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_sigkill_at_a_random_moment_then_resume_is_bit_exact(stage, tiny_world, tmp_path):
    out = tmp_path / "killed" / stage
    command = stage_command(stage, tiny_world, out)
    delay = random.Random(stage).uniform(0.0, 0.5)  # anywhere in the next steps, saves included
    code, err = signal_after_first_checkpoint(start_stage(command), out, signal.SIGKILL, delay)
    assert code == -signal.SIGKILL, err[-2000:]   # killed: the run could not have finished first
    logged = (out / "metrics.jsonl").read_text().count("\n")
    print(f"{stage}: killed {delay:.2f} s after the first checkpoint, {logged} of 5 steps logged")
    MAINS[stage]([*command[1:], "--resume"])
    assert metrics_steps(out) == [1, 2, 3, 4, 5]
    assert_complete_model(out)
    assert_evaluates(out, tiny_world)
    assert no_litter(out)
    # the same run, never interrupted, ends with the same weights to the bit
    whole = tmp_path / "whole" / stage
    MAINS[stage](stage_command(stage, tiny_world, whole)[1:])
    ours, reference = weights(out), weights(whole)
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_ctrl_c_stops_in_one_line_and_resume_finishes(tiny_world, tmp_path):
    out = tmp_path / "stage2"
    command = stage_command("stage2", tiny_world, out)
    code, err = signal_after_first_checkpoint(start_stage(command), out, signal.SIGINT)
    assert code == 130, err[-2000:]  # (sent as the first checkpoint appears, with steps still to run)
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert line.startswith("interrupted: the same command with --resume continues from ") and "checkpoint-" in line
    kept = resume.latest_checkpoint(out)
    assert kept is not None and str(kept) in line
    s2.main([*command[1:], "--resume"])
    assert metrics_steps(out) == [1, 2, 3, 4, 5]
    assert_complete_model(out)
    assert no_litter(out)
