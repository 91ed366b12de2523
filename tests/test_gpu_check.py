"""The GPU check (benchmarks/gpu_check.sh, issue #12) runs its CPU smoke version end to end: one
JSON with every figure, each labelled, every number finite. What is checked is the code path a GPU
run will take, not the figures: our Qwen2 against transformers' is tests/test_model.py's to check,
and on a CPU the speeds say nothing."""
import json
import math
import os
import subprocess
import sys

from conftest import ROOT

FIGURES = ["parity_0.5b", "generate_0.5b", "parity_3b", "generate_3b", "eval_3b", "stage1_3b", "grpo_step_3b",
           "compiled_generate_0.5b"]


def numbers(value, where=""):
    """Every number in a JSON value, with its path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, value


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "check.json"
    # BUDGET, the GPU run's time limit (it skips the parts that would start late), is set out of
    # reach: on a loaded machine the smoke run may take minutes, and that is no failure of the check
    env = {**os.environ, "PY": sys.executable, "BUDGET": "100000", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--smoke", "--device", "cpu"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"figures in {out}" in run.stdout
    report = json.loads(out.read_text())

    # every part ran, none failed or was skipped, and each figure says what and where it measured
    assert report["complete"] and report["errors"] == {} and report["skipped"] == [], report
    assert list(report["figures"]) == FIGURES
    assert report["device"] == "cpu" and report["mode"].startswith("smoke")
    for name, figure in report["figures"].items():
        assert figure["measures"] and figure["device"] == "cpu" and figure["torch"] and figure["date"], name
    for where, value in numbers(report):
        assert math.isfinite(value), where

    f, settings = report["figures"], report["settings"]
    for size in ("0.5b", "3b"):
        # the parity part compared every prompt and continuation it was asked to (the agreement
        # itself, on the same weights, is test_model.py's: test_save_then_transformers_loads_same_logits,
        # test_greedy_generation_batched_equals_single_and_transformers)
        parity = f[f"parity_{size}"]
        assert parity["prompts"] == len(parity["greedy_prefix_agreement_per_prompt"]) == settings["parity_prompts"]
        assert parity["greedy_new_tokens"] == settings["parity_new_tokens"] and parity["positions"] > parity["prompts"]
        assert f[f"generate_{size}"]["ours_tokens_per_s"] > 0 and f[f"generate_{size}"]["transformers_tokens_per_s"] > 0
    ev = f["eval_3b"]
    assert ev["questions"] == report["settings"]["eval_questions"]
    assert 0 < ev["mean_generated_tokens"] <= ev["max_new_tokens"]
    assert math.isclose(ev["extrapolated_seconds_gsm8k_test"], ev["seconds_per_question"] * 1319)
    s1 = f["stage1_3b"]
    assert s1["tokens_per_s"] > 0 and s1["trainable_parameters"] > 0 and s1["computed_gb"] > 0
    grpo = f["grpo_step_3b"]
    assert grpo["settings"]["group_size"] == 2 and grpo["settings"]["beta"] == 0.1
    assert grpo["settings"]["gradient_checkpointing"] is True
    assert 0 < grpo["completion_tokens"] <= grpo["settings"]["max_new_tokens"]
    assert grpo["step_seconds"] >= grpo["rollout_seconds"] > 0 and grpo["computed_gb"] > 0
    assert grpo["peak_allocated_gb"] is None  # no CUDA: not measured, and the file says so
    compiled = f["compiled_generate_0.5b"]
    assert compiled["backend"] == "aot_eager" and compiled["greedy_prefix_agreement"] == 1.0
    assert compiled["compiled_tokens_per_s"] > 0 and compiled["compile_seconds"] > 0


def test_gpu_check_one_part(tmp_path):
    """--parts runs only what it names (to measure a failed part again without the rest): here
    eval's timing, which loads no transformers model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check
    report = gpu_check.main(["--out", str(tmp_path / "one.json"), "--smoke", "--device", "cpu", "--parts", "eval_3b"])
    assert list(report["figures"]) == ["eval_3b"] and report["complete"]
    written = json.loads((tmp_path / "one.json").read_text())["figures"]
    assert list(written) == ["eval_3b"] and written["eval_3b"]["questions"] == report["settings"]["eval_questions"]
