"""The shape of the project, read from the source (ast only, no imports run): which file may
import which (the README's layout section states the picture); these tests keep the code from
drifting away from it."""
import pytest

from conftest import ROOT, imported_modules

PROJECT = {path.stem for path in ROOT.glob("*.py")}


def project_imports(name: str) -> set[str]:
    """The project modules a file imports, at its top or inside a function."""
    return {m for m in imported_modules((ROOT / f"{name}.py").read_text()) if m in PROJECT} - {name}


@pytest.mark.parametrize("name", ["model", "lora", "cli", "distributed"])
def test_the_foundations_import_nothing_of_the_project(name):
    """model.py is the network and its files, lora.py the adapters, cli.py how a script meets the
    shell, distributed.py data parallelism: each reads on its own."""
    assert project_imports(name) == set()


def test_stage_2_does_not_import_stage_1():
    """What both stages use (AdamW, the schedule, the data order) lives in run.py, and the hint
    count in teacher.py; stage 2 reads on its own, beside stage 1 rather than above it."""
    assert "stage1_reconstruct" not in project_imports("stage2_grpo")


def test_the_rewards_import_no_torch_and_only_the_data_modules():
    """rewards.py is the contract a reward meets (what it sees, the registry, its options): it reads
    completions as text, so it imports no torch, and of the project only what judges text: cli,
    eval (the grading) and teacher (the step marker). A reward file importing it stays light."""
    assert "torch" not in imported_modules((ROOT / "rewards.py").read_text())
    assert project_imports("rewards") <= {"cli", "eval", "teacher"}


def test_eval_knows_gsm8k_and_leaves_the_output_files_to_cli():
    """eval.py is GSM8K: the prompt, the stop rule, grading, loading, the loop that answers and its
    command. How its output survives an interruption (the --out check, samples appended and
    continued) is cli.SampleLog's, so it needs neither os nor tempfile; it imports the model side
    only inside the functions that run a model."""
    assert not {"os", "tempfile"} & set(imported_modules((ROOT / "eval.py").read_text()))
    assert project_imports("eval") <= {"cli", "generate", "model", "tokenizer"}
