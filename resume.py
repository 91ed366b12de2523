"""
Checkpoints of a training run and `--resume`, shared by the three stages.

Why a file of its own. Long runs get killed: a time limit, a pre-empted GPU, a full disk. Wherever
the kill lands, `--resume` must continue the same run and end with a complete model. That takes
four things, the same in every stage, so they live here once:
  1. trainer state without pickle: torch.load of a pickle runs whatever code the file names, so
     the tensors (optimizer moments, RNG states as uint8 tensors, LoRA adapters) go to
     trainer_state.safetensors and everything else (step, learning-rate groups, Python's RNG,
     the run's options) to trainer_state.json. The JSON is written last: a checkpoint folder
     that has it is complete.
  2. checkpoint discovery that believes only complete `checkpoint-<step>` folders, and puts right
     what a kill in the middle of a save leaves behind (an `.old` copy, temporary folders).
  3. metrics.jsonl cut back to the resumed step: a torn last line is the step being written when
     the kill came and is dropped; a bad line anywhere else is damage, and the run stops.
  4. the saved options compared with the new ones, so a resume cannot silently train on other
     data, from another model or with another learning rate.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file

from cli import make_readable
from cli import jsonl_records, write_atomic
from lora import merged_state_dict

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"   # written last: its presence marks a complete checkpoint
CHECKPOINT = re.compile(r"checkpoint-(\d+)")

# -----------------------------------------------------------------------------
# 1. Trainer state: tensors in safetensors, the rest in JSON


def _json(obj) -> str:
    # default=str: an option JSON cannot hold (a Path, a slice) is kept as its text, which is all
    # check_config needs to compare it
    return json.dumps(obj, default=str)


def save_trainer_state(folder: Path, tensors: dict[str, torch.Tensor], info: dict):
    """folder/trainer_state.safetensors, then folder/trainer_state.json, each written to a
    temporary name and renamed into place."""
    tmp = folder / f".{STATE_TENSORS}.tmp"
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp)
    make_readable(tmp)  # safetensors creates it 0600 whatever the umask
    tmp.replace(folder / STATE_TENSORS)
    write_atomic(folder / STATE_JSON, _json(info) + "\n")


def save_checkpoint(model, folder: Path, tokenizer_dir: Path, tensors: dict[str, torch.Tensor], info: dict):
    """OUT/checkpoint-STEP as one folder that appears whole: the weights (model.save_pretrained of
    the merged state dict, with the tokenizer files of tokenizer_dir) and the trainer state are written under a hidden
    name, then renamed into place. Replacing a folder takes two renames, the old one aside as
    NAME.old first; clean_checkpoints repairs a kill between them."""
    staging = folder.with_name(f".{folder.name}.partial")
    model.save_pretrained(staging, tokenizer_dir=tokenizer_dir, state_dict=merged_state_dict(model))
    save_trainer_state(staging, tensors, info)
    old = folder.with_name(f"{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def save_final(model, out: Path, tokenizer_dir: Path):
    """The finished model into OUT itself, beside metrics.jsonl and the checkpoints.
    model.save_pretrained replaces its whole folder, which would take those with it; so save to
    a sibling and move the files in, the weights last: until they arrive the folder cannot be
    loaded by mistake (from_pretrained needs model.safetensors)."""
    staging = out.with_name(f".{out.name}.final")
    model.save_pretrained(staging, tokenizer_dir=tokenizer_dir, state_dict=merged_state_dict(model))
    for f in sorted(staging.iterdir(), key=lambda p: p.name == "model.safetensors"):
        f.replace(out / f.name)
    shutil.rmtree(staging, ignore_errors=True)


def load_trainer_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    return load_file(folder / STATE_TENSORS), json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimizer's state_dict in two parts: its per-parameter tensors, named
    `optimizer.<parameter index>.<name>` (AdamW: step, exp_avg, exp_avg_sq), and its
    param_groups (numbers and flags, for the JSON)."""
    state = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{name}": value
               for index, values in state["state"].items() for name, value in values.items()}
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict]):
    """The inverse of optimizer_tensors. The parameter indices must be ints again: load_state_dict
    matches the state to the parameters by them (with strings it would keep none of it)."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def trainer_tensors(model, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """What both stages' checkpoints hold as tensors: the optimizer's (optimizer_tensors) and, with
    LoRA, the adapters unmerged (`lora.<name>`), since the saved weights have them merged in."""
    tensors, param_groups = optimizer_tensors(optimizer)
    tensors.update({f"lora.{k}": v for k, v in model.state_dict().items() if ".lora_" in k})
    return tensors, param_groups


def load_adapters(model, tensors: dict[str, torch.Tensor], checkpoint: Path):
    """The inverse for the adapters: load the `lora.` tensors into a model with LoRA added;
    adapters that do not fit its layers are refused, not half loaded."""
    lora = {k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")}
    result = model.load_state_dict(lora, strict=False)
    if result.unexpected_keys or any(".lora_" in k for k in result.missing_keys):
        raise SystemExit(f"{checkpoint}: LoRA adapters do not match the model")


# -----------------------------------------------------------------------------
# 2. Finding, cleaning and rotating checkpoint folders


def _step(folder: Path) -> int | None:
    match = CHECKPOINT.fullmatch(folder.name)
    return int(match[1]) if match else None


def _folders(out: Path) -> list[Path]:
    """Every OUT/checkpoint-<step> folder, complete or not, oldest first (`checkpoint-3.old` and
    other names are not checkpoints)."""
    return sorted((p for p in out.glob("checkpoint-*") if p.is_dir() and _step(p) is not None), key=_step)


def is_complete(folder: Path) -> bool:
    return (folder / STATE_JSON).is_file()


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step, if any."""
    done = [p for p in _folders(out) if is_complete(p)]
    return done[-1] if done else None


def checkpoint_to_resume(out: Path, resuming: bool, dist) -> tuple[Path | None, dict[str, torch.Tensor], dict | None]:
    """(checkpoint folder, its trainer tensors, its trainer state) for --resume: the newest
    complete checkpoint in OUT, after the main process has put right what a kill during a save
    left behind; (None, {}, None) without --resume or when there is none yet. Every process calls
    it (dist: distributed.setup's context); they wait for the cleaning together."""
    if resuming and dist.is_main and out.is_dir():
        clean_checkpoints(out)
    dist.barrier()
    folder = latest_checkpoint(out) if resuming and out.is_dir() else None
    if folder is None:
        if resuming and dist.is_main:
            print(f"--resume: no checkpoint in {out}, starting from step 0")
        return None, {}, None
    tensors, state = load_trainer_state(folder)
    return folder, tensors, state


def how_to_continue(out: Path) -> str:
    """The line a stage leaves on Ctrl-C (cli.on_interrupt): what --resume will do."""
    last = latest_checkpoint(out)
    if last is None:
        return f"no checkpoint in {out} yet; the same command with --resume starts it again"
    return f"the same command with --resume continues from {last}"


def clean_checkpoints(out: Path):
    """Put right, before resuming, what kills during saves leave in OUT and beside it:
    - checkpoint-N.old: a folder is replaced by two renames (the old one aside as NAME.old, then
      the new one in). After a kill between them the .old copy is the only complete
      checkpoint-N, so it goes back under its name; otherwise it is stale and goes.
    - checkpoint-N without trainer_state.json: not a checkpoint (a save cut short, by code that
      wrote the trainer state after the rename). Such folders are newer than every complete one
      (saves run in step order), so the resumed run writes them again; they go now, so that
      rotation never counts them.
    - the hidden folders of unfinished saves (.checkpoint-N.partial and save_pretrained's
      temporary folders inside OUT, the final model's .OUT.final* next to it)."""
    legacy = [p for p in _folders(out) if (p / "trainer_state.pt").is_file() and not is_complete(p)]
    if legacy:  # not deleted as incomplete: it is a whole checkpoint in the format this code no longer reads
        raise SystemExit(f"{legacy[-1]}: trainer_state.pt (a pickle) is the old format, which --resume no "
                         f"longer reads; resume with the code that wrote it, or start a new run")
    for old in out.glob("checkpoint-*.old"):
        folder = old.with_name(old.name[:-len(".old")])
        if _step(folder) is not None and is_complete(old) and not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
            old.rename(folder)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for folder in _folders(out):
        if not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
    for tmp in [*out.glob(".*checkpoint-*"), *out.parent.glob(f".{out.name}.final*")]:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_old_checkpoints(out: Path, keep: int):
    """Keep the newest `keep` checkpoint folders (the one just written among them); keep 0
    keeps them all (--keep-checkpoints 0, in every stage)."""
    if keep <= 0:
        return
    folders = _folders(out)
    for folder in folders[:max(0, len(folders) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)


def refuse_existing_run(out: Path, resuming: bool):
    """A finished or interrupted run in `out` is continued with --resume, never overwritten:
    starting afresh there would cut its metrics.jsonl and leave its checkpoints for a later
    --resume to pick up. (All three stages call this before any work.)"""
    if not resuming and (out / "metrics.jsonl").exists():
        raise SystemExit(f"{out} already holds a run (metrics.jsonl): pass --resume, or choose another --out")


# -----------------------------------------------------------------------------
# 3. metrics.jsonl


def truncate_metrics(path: Path, step: int):
    """Keep the lines of steps 1..step, so the resumed run appends to a file that reads as one
    run. An invalid last line was being written when the run was killed (each line is one
    write of a whole record), so it is dropped; an invalid line before it is not explained by a
    kill, and stops the resume rather than being guessed around."""
    kept = []
    try:
        for _, line, record in (jsonl_records(path, last_may_be_torn=True) if path.is_file() else []):
            if record["step"] <= step:
                kept.append(line)
    except ValueError as e:
        raise SystemExit(f"{e}; repair or delete that line to resume") from None
    write_atomic(path, "".join(line + "\n" for line in kept))


# -----------------------------------------------------------------------------
# 4. The run's options


def check_config(saved: dict, new: dict, may_differ: Iterable[str], where: Path, added_later: dict | None = None,
                 removed: dict | None = None):
    """Refuse, in one line, to resume with an option that differs from the saved run's. Every
    option is compared except those in `may_differ` (where to write, how often to save, what to
    print), so an option added later is checked unless someone decides it is harmless.
    `added_later` names options newer than some checkpoints, each with the value that does what
    the code did before it existed: a checkpoint that lacks the option counts as having it.
    `removed` names options the code no longer has, each with the value that does what the code
    does now: a checkpoint saved with another value cannot be resumed by this code."""
    new = json.loads(_json(new))  # as it reads back from the JSON: tuples as lists, a slice as text
    saved = {**json.loads(_json(added_later or {})), **saved}
    for name, value in (removed or {}).items():
        if name in saved and not same_option(saved.pop(name), value):
            raise SystemExit(f"{where}: saved with --{name.replace('_', '-')}, which this code no longer has "
                             f"(it always does what {value!r} did); resume with the code that wrote it")
    skip = set(may_differ)
    changed = [k for k in new if k not in skip and not same_option(saved.get(k), new[k])]
    changed += [k for k in saved if k not in skip and k not in new]
    if changed:
        raise SystemExit(f"{where}: cannot resume with different options: " + ", ".join(
            f"--{k.replace('_', '-')} (saved {saved.get(k)!r}, now {new.get(k)!r})" for k in changed))


def same_option(saved, new) -> bool:
    """Equal values, or two spellings of one existing file or folder (`runs/x` and `./runs/x`, or
    its absolute path): --model, --teacher-data and the like name a path however the user typed it."""
    if saved == new:
        return True
    if isinstance(saved, str) and isinstance(new, str) and saved and new:
        try:
            return Path(saved).exists() and Path(new).exists() and Path(saved).samefile(new)
        except OSError:
            return False
    return False
