"""cli.py: every script ends a bad input with one `error:` line naming the culprit (no traceback
unless --debug), and eval.py keeps its samples through an interruption and continues from them."""
import json
import os
import runpy
import shutil
import stat
import subprocess
import sys

import pytest

import cli
from conftest import GSM8K_TEST, ROOT
import eval as eval_script
import generate as generate_module
import model as model_module


def run_script(script: str, args: list[str], cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "BRIDGE_DEBUG"}
    environment.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def bad_inputs(tiny_qwen_checkpoint, tmp_path):
    """A folder of broken things, each named after what is wrong with it."""
    from safetensors.torch import load_file, save_file
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    (tmp_path / "long.jsonl").write_text(json.dumps({"question": "two " * 2100, "answer": "#### 1"}) + "\n")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "runs").mkdir()
    weights = (tiny_qwen_checkpoint / "model.safetensors").read_bytes()
    for name, content in (("garbage", b"not safetensors at all" * 100), ("truncated", weights[:len(weights) // 2])):
        (tmp_path / name).mkdir()
        shutil.copyfile(tiny_qwen_checkpoint / "config.json", tmp_path / name / "config.json")
        (tmp_path / name / "model.safetensors").write_bytes(content)
    (tmp_path / "nan").mkdir()
    shutil.copyfile(tiny_qwen_checkpoint / "config.json", tmp_path / "nan" / "config.json")
    state = load_file(tiny_qwen_checkpoint / "model.safetensors")
    state["model.norm.weight"][3] = float("nan")
    save_file(state, tmp_path / "nan" / "model.safetensors")
    return tmp_path


EVAL = "--model {ckpt} --data {gsm8k} --limit 2 --max-new-tokens 4 --out {tmp}/out --quiet"

# script, arguments ({ckpt}: the tiny checkpoint, {tmp}: the bad_inputs folder, also the working
# directory), exit code, what the one stderr line must name
CASES = {
    "missing data file": ("eval.py", EVAL.replace("{gsm8k}", "{tmp}/nope.jsonl"), 2, "nope.jsonl: no such file"),
    "bad JSONL line": ("eval.py", EVAL.replace("{gsm8k}", "{tmp}/bad.jsonl"), 2, "bad.jsonl:2: not valid JSON"),
    "bad option value": ("eval.py", EVAL + " --batch-size many", 2, "--batch-size"),
    "garbage safetensors": ("eval.py", EVAL.replace("{ckpt}", "{tmp}/garbage"), 2, "garbage/model.safetensors: not a readable"),
    "truncated safetensors": ("eval.py", EVAL.replace("{ckpt}", "{tmp}/truncated"), 2, "truncated/model.safetensors: not a readable"),
    "NaN weights": ("eval.py", EVAL.replace("{ckpt}", "{tmp}/nan"), 2, "tensor model.norm.weight holds NaN"),
    "typo in a local path": ("eval.py", EVAL.replace("{ckpt}", "runs/stage1"), 2, "runs/stage1: no such folder"),
    "unwritable --out": ("eval.py", EVAL.replace("{tmp}/out", "{tmp}/a_file/out"), 2, "--out"),
    "context overflow": ("eval.py", EVAL.replace("--max-new-tokens 4", "--max-new-tokens 2000"), 2,
                         "--max-new-tokens 2000: the longest prompt"),
    "prompt alone too long": ("eval.py", EVAL.replace("{gsm8k}", "{tmp}/long.jsonl"), 2,
                              "question 1: its prompt alone is"),
    "stage 1, missing teacher data": ("stage1_reconstruct.py", "--model {ckpt} --teacher-data {tmp}/nope.jsonl "
                                      "--out {tmp}/s1", 2, "nope.jsonl: teacher data not found"),
    "stage 2, bad option value": ("stage2_grpo.py", "--model {ckpt} --out {tmp}/s2 --group-size two", 2, "--group-size"),
    "stage 3, typo in --model": ("stage3_rewrite.py", "--model ./stage2 --out {tmp}/s3 --teacher-data {gsm8k} "
                                 "--rows 0:2", 2, "stage2: no such folder"),
    "teacher.py, missing source": ("teacher.py", "show {tmp}/nope.jsonl", 2, "nope.jsonl: teacher data not found"),
    "tiny_world.py table, empty run": ("tiny_world.py", "table {tmp}/runs", 2, "runs: no eval/<stage>/summary.json"),
    "benchmark, missing config": ("benchmarks/gpu_memory.py", "--models {tmp}/nope.json", 2, "nope.json"),
}


# Numeric and --rows options out of range stop the parser: one line naming the option and the
# valid range. (script, arguments, what the line must say of the range)
BAD_NUMBERS = [
    ("stage2_grpo.py", "--model m --out o --top-p 1.5", "(0, 1]"),
    ("stage2_grpo.py", "--model m --out o --top-p 0", "(0, 1]"),
    ("stage2_grpo.py", "--model m --out o --temperature -1", "> 0"),
    ("stage2_grpo.py", "--model m --out o --group-size 1", ">= 2"),
    ("stage2_grpo.py", "--model m --out o --lr 0", "> 0"),
    ("stage2_grpo.py", "--model m --out o --beta -0.1", ">= 0"),
    ("stage2_grpo.py", "--model m --out o --epochs nan", "> 0"),
    ("stage2_grpo.py", "--model m --out o --max-new-tokens 0", ">= 1"),
    ("stage2_grpo.py", "--model m --out o --words-per-step 0", "> 0"),
    ("stage2_grpo.py", "--model m --out o --clip-eps 1", "(0, 1)"),
    ("stage2_grpo.py", "--model m --out o --rows 4000:2000", "END > START"),
    ("stage2_grpo.py", "--model m --out o --rows 20", "START:END"),
    ("stage3_rewrite.py", "--model m --out o --attempts 0", ">= 1"),
    ("stage3_rewrite.py", "--model m --out o --mine-temperature -0.5", ">= 0"),
    ("stage3_rewrite.py", "--model m --out o --mine-top-p 0", "(0, 1]"),
    ("stage3_rewrite.py", "--model m --out o --overlong-buffer 0", ">= 1"),
    ("stage3_rewrite.py", "--model m --out o --attempts 2 --failure-threshold 3", "[1, --attempts = 2]"),
    ("stage1_reconstruct.py", "--model m --out o --mask-prob 1.5", "[0, 1]"),
    ("stage1_reconstruct.py", "--model m --out o --lora-dropout 1", "[0, 1)"),
    ("stage1_reconstruct.py", "--model m --out o --batch-size 0", ">= 1"),
    ("stage1_reconstruct.py", "--model m --out o --lr -0.00001", "> 0"),
    ("stage1_reconstruct.py", "--model m --out o --rows a:b", "integer START and END"),
    ("eval.py", "--model m --batch-size 0", ">= 1"),
    ("eval.py", "--model m --max-new-tokens -5", ">= 1"),
    ("eval.py", "--model m --limit 0", ">= 1"),
    ("teacher.py", "generate --model m --out o --temperature -1", ">= 0"),
    ("teacher.py", "generate --model m --out o --top-p 2", "(0, 1]"),
    ("teacher.py", "generate --model m --out o --samples 0", ">= 1"),
    ("teacher.py", "show gsm8k --rows 1:5:0", "step >= 1"),
    ("teacher.py", "show gsm8k -n -1", ">= 0"),
    ("tiny_world.py", "--threads 0", ">= 1"),
    ("tiny_world.py", "--seed -1", ">= 0"),
]
CASES.update({f"{script} {args.split()[-2]} {args.split()[-1]}": (script, args, 2, (f"argument {args.split()[-2]}", valid))
              for script, args, valid in BAD_NUMBERS})

# These run as real processes, as a user types them; the other cases run the same script in this
# process (runpy, as `python SCRIPT` would, stderr and exit code captured), which checks the same
# line and code without starting Python and importing torch again for each (~2 s a case).
AS_PROCESSES = {"missing data file", "stage 2, bad option value", "teacher.py, missing source"}


def run_in_process(script: str, args: list[str], cwd, monkeypatch, capsys) -> subprocess.CompletedProcess:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    monkeypatch.delenv("BRIDGE_DEBUG", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the script runs a second time in this process and registers its rewards again: into a copy
    # of the registry, so that the functions the other tests compare with stay registered
    import rewards
    monkeypatch.setattr(rewards, "REWARDS", dict(rewards.REWARDS))
    capsys.readouterr()
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, captured.out, captured.err)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_with_one_line(case, bad_inputs, tiny_qwen_checkpoint, monkeypatch, capsys):
    script, args, code, culprit = CASES[case]
    args = args.format(ckpt=tiny_qwen_checkpoint, tmp=bad_inputs, gsm8k=GSM8K_TEST).split()
    if case in AS_PROCESSES:
        result = run_script(script, args, cwd=bad_inputs)
    else:
        result = run_in_process(script, args, bad_inputs, monkeypatch, capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    culprits = culprit if isinstance(culprit, tuple) else (culprit,)
    assert all(c in lines[0] for c in culprits) and "Traceback" not in result.stderr


@pytest.mark.parametrize("error, code, line", [
    (ValueError("data.jsonl:3: field 'answer' is missing"), 2, "error: data.jsonl:3: field 'answer' is missing"),
    (FileNotFoundError("runs/x: no such folder"), 2, "error: runs/x: no such folder"),
    (SystemExit("runs/s1 already holds a run: pass --resume"), 2, "error: runs/s1 already holds a run: pass --resume"),
    (OSError(28, "No space left on device"), 1, "error: OSError: [Errno 28] No space left on device (run again"),
    (RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB"), 1, "error: RuntimeError: CUDA out of memory. ..."),
    (KeyboardInterrupt("3 of 5 questions done"), 130, "interrupted: 3 of 5 questions done"),
])
def test_run_turns_known_errors_into_one_line(error, code, line, monkeypatch, capsys):
    import cli

    def main():
        raise error

    monkeypatch.setattr(sys, "argv", ["script.py"])
    monkeypatch.delenv("BRIDGE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as caught:
        cli.run(main)
    lines = capsys.readouterr().err.splitlines()
    assert caught.value.code == code and len(lines) == 1 and lines[0].startswith(line)
    monkeypatch.setattr(sys, "argv", ["script.py", "--debug"])  # --debug: the error itself, untouched
    with pytest.raises(type(error)):
        cli.run(main)
    assert sys.argv == ["script.py"]


def test_run_leaves_bugs_their_traceback(monkeypatch):
    import cli
    monkeypatch.setattr(sys, "argv", ["script.py"])
    with pytest.raises(TypeError):
        cli.run(lambda: None + 1)


def test_jsonl_records_names_a_bad_line_and_skips_only_a_torn_last_one(tmp_path):
    import cli
    path = tmp_path / "m.jsonl"
    # U+2028 inside a JSON string is valid JSON and not a line break of the file
    path.write_text('{"a": "x\u2028y"}\n\n{"a": 2}\n{"a": 3, "b\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"m.jsonl:4: not valid JSON"):
        list(cli.jsonl_records(path))
    assert [(n, r["a"]) for n, _, r in cli.jsonl_records(path, last_may_be_torn=True)] == [(1, "x\u2028y"), (3, 2)]
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')  # a bad line before the last is never a torn one
    with pytest.raises(ValueError, match=r"m.jsonl:2: not valid JSON"):
        list(cli.jsonl_records(path, last_may_be_torn=True))


@pytest.mark.parametrize("module", [cli, model_module], ids=["cli", "model"])  # model.py keeps its own copy
@pytest.mark.parametrize("name, is_path", [
    ("Qwen/Qwen2.5-3B", False), ("openai/gsm8k", False), ("./stage1", True), ("../runs/stage1", True),
    ("runs/tiny/stage1", True), ("/abs/folder", True), ("~/models/x", True), ("noslash", True),
])
def test_looks_like_path(module, name, is_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert module.looks_like_path(name) is is_path
    (tmp_path / "runs").mkdir()
    assert module.looks_like_path("runs/stage1")  # runs/ exists: a typo, not a hub repository


@pytest.mark.parametrize("how", ["--debug", "BRIDGE_DEBUG=1"])
def test_debug_shows_the_traceback(how, bad_inputs, tiny_qwen_checkpoint):
    args = EVAL.replace("{gsm8k}", "{tmp}/bad.jsonl").format(ckpt=tiny_qwen_checkpoint, tmp=bad_inputs).split()
    if how == "--debug":
        result = run_script("eval.py", args + ["--debug"], cwd=bad_inputs)
    else:
        result = run_script("eval.py", args, cwd=bad_inputs, env={"BRIDGE_DEBUG": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "bad.jsonl:2: not valid JSON" in result.stderr.strip().splitlines()[-1]


def test_eval_continues_after_an_interruption(tiny_qwen_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C in the second batch keeps the first; the same command again finishes the rest, and
    the samples and summary equal an uninterrupted run's."""
    args = ["--model", str(tiny_qwen_checkpoint), "--data", str(GSM8K_TEST), "--limit", "5",
            "--batch-size", "2", "--quiet", "--max-new-tokens", "8"]
    full = eval_script.main(args + ["--out", str(tmp_path / "full")])

    real_generate, calls = generate_module.generate, []

    def interrupted_generate(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_generate(*a, **k)

    out = tmp_path / "parts"
    monkeypatch.setattr(generate_module, "generate", interrupted_generate)
    with pytest.raises(KeyboardInterrupt, match="2 of 5 questions done.*run the same command again"):
        eval_script.main(args + ["--out", str(out)])
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2 and not (out / "summary.json").exists()
    with open(out / "samples.jsonl", "a") as f:
        f.write('{"index": 4, "question": "cut sh')  # a line the kill cut short
    monkeypatch.setattr(generate_module, "generate", real_generate)
    resumed = eval_script.main(args + ["--out", str(out)])

    timing = ("seconds", "generated_tokens_per_second")
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
    assert (out / "samples.jsonl").read_text() == (tmp_path / "full" / "samples.jsonl").read_text()

    # finished: the same command again generates nothing and writes the same summary
    monkeypatch.setattr(generate_module, "generate", lambda *a, **k: pytest.fail("generated again"))
    again = eval_script.main(args + ["--out", str(out)])
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}
    # other settings: refused, naming the one that changed
    with pytest.raises(ValueError, match="max_new_tokens was 8, now 9"):
        eval_script.main(args[:-1] + ["9", "--out", str(out)])


def test_eval_refuses_samples_of_a_retrained_model(tiny_qwen_checkpoint, tmp_path):
    """Same --model path, new weights (a stage run again into its folder): not the same model."""
    checkpoint = tmp_path / "stage1"
    shutil.copytree(tiny_qwen_checkpoint, checkpoint)
    args = ["--model", str(checkpoint), "--data", str(GSM8K_TEST), "--limit", "1", "--max-new-tokens", "2",
            "--quiet", "--out", str(tmp_path / "eval")]
    eval_script.main(args)
    weights = checkpoint / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="weights files of --model changed"):
        eval_script.main(args)


def test_written_files_respect_the_umask(tiny_qwen_checkpoint, tmp_path):
    """mkstemp and mkdtemp make 0600 / 0700; what we write should look like any other file."""
    old = os.umask(0o022)
    try:
        cli.write_atomic(tmp_path / "a.json", "{}\n")
        model = model_module.Qwen2.from_pretrained(tiny_qwen_checkpoint)
        model.save_pretrained(tmp_path / "checkpoint")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o644
    assert mode(tmp_path / "checkpoint") == 0o755
    assert mode(tmp_path / "checkpoint" / "model.safetensors") == 0o644


def test_generate_refuses_to_run_past_the_context_window(tiny_qwen_checkpoint):
    model = model_module.Qwen2.from_pretrained(tiny_qwen_checkpoint)
    with pytest.raises(ValueError, match=r"max_new_tokens 100: a prompt of 2000 tokens .* window of 2048"):
        generate_module.generate(model, [[1] * 2000], 100)
    assert len(generate_module.generate(model, [[1] * 2046], 2, eos_token_ids=[]).tokens[0]) == 2  # exactly fits
