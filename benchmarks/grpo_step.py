"""
Seconds per GRPO step: stage2_grpo.train_grpo, split into rollout and training, and beside it
TRL's GRPOTrainer on the same model, group size, lengths, batch and loss when `trl` is installed.

Why a benchmark and not a test: the timings depend on the machine and on whatever else runs on
it; a test would be flaky and prove nothing. This prints figures to compare and to quote.

Both sides get the same work: P prompts x G completions per step, exactly N new tokens each
(stop only at EOS; a random-weight model never says EOS, so every completion has N tokens),
sampling at T = 0.7 with top-p 0.9, one optimiser step per batch of rollouts (TRL:
num_iterations=1, steps_per_generation=1), the per-sequence mean loss (TRL: loss_type="grpo"),
the same beta with a frozen reference copy, AdamW, fp32 on the CPU. The reward is a fixed
pseudo-random function of the text, so every group has reward spread and every completion trains.
The first step is warm-up and not counted. With --impl both, each implementation runs in a process
of its own, so that each one's peak resident memory (VmHWM, counted from after the checkpoint is
written) is its own; ours is read before train_grpo writes its final checkpoint (TRL's run saves
nothing, and safetensors holds a whole copy of the weights in memory while it writes them).

    python benchmarks/grpo_step.py --world runs/tiny/world                  # the tiny world's base model
    python benchmarks/grpo_step.py --config ../shared/configs/qwen2.5-0.5b.json --max-new-tokens 32
    /path/to/venv-with-trl/bin/python benchmarks/grpo_step.py --config ../shared/configs/qwen2.5-0.5b.json --impl both
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import cli  # noqa: E402

SHARED = ROOT.parent / "shared"


def pseudo_reward(text: str) -> float:
    """A deterministic reward in [0, 1) with spread inside every group (only the cost matters here)."""
    return (zlib.crc32(text.encode()) % 1000) / 1000


def random_checkpoint(config_path: Path, tokenizer_dir: Path, out: Path, seed: int) -> Path:
    """Random weights of the given shape, saved with the real tokenizer (base-model configs)."""
    from model import Qwen2, Qwen2Config
    staging = out / "tokenizer"
    staging.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_dir / name, staging / name)
    shutil.copyfile(tokenizer_dir / "tokenizer_config.base.json", staging / "tokenizer_config.json")
    config = Qwen2Config.from_json(config_path)
    model = Qwen2(config).init_weights(seed)
    model.save_pretrained(out / "model", tokenizer_dir=staging)
    return out / "model"


def prompt_texts(n: int, gsm8k: Path) -> list[str]:
    """The stage-2 masked prompts of the first GSM8K training questions."""
    import random
    import stage2_grpo as s2
    from teacher import load_teacher_data
    examples = load_teacher_data("gsm8k", rows=slice(0, n), gsm8k_path=str(gsm8k), quiet=True)
    return [s2.build_masked_prompt(e, random.Random(i)) for i, e in enumerate(examples)]


def reset_peak_rss():
    """Start counting the peak resident set size afresh (Linux: writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float | None:
    """This process's peak resident set size since reset_peak_rss (Linux), in GB."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kb / 1024 ** 2


def run_ours(checkpoint: Path, prompts: list[str], args, work: Path) -> dict:
    import stage2_grpo as s2
    examples = list(range(len(prompts)))
    cfg = s2.GRPOConfig(model=str(checkpoint), out=str(work / "ours"), group_size=args.group_size,
                        prompts_per_step=args.prompts_per_step, max_steps=args.steps, lr=1e-6, beta=args.beta,
                        temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, stop="eos",
                        micro_batch_size=args.prompts_per_step * args.group_size, save_every=0,
                        seed=0, quiet=True, device="cpu")
    peak_before_save = []
    save_final = s2.resume.save_final

    def measured_save_final(*a, **k):  # the training's peak, before the final save (see the docstring)
        peak_before_save.append(peak_rss_gb())
        return save_final(*a, **k)

    s2.resume.save_final = measured_save_final
    try:
        s2.train_grpo(cfg, examples, lambda i, rng: prompts[i], lambda completion, ex: pseudo_reward(completion.text))
    finally:
        s2.resume.save_final = save_final
    rows = [json.loads(l) for l in (work / "ours" / "metrics.jsonl").read_text().splitlines()][1:]
    return {"rollout_s": statistics.median(r["rollout_seconds"] for r in rows),
            "train_s": statistics.median(r["train_seconds"] for r in rows),
            "completion_tokens": statistics.mean(r["completion_tokens"] for r in rows),
            "peak_rss_gb": peak_before_save[0]}


def run_trl(checkpoint: Path, prompts: list[str], args, work: Path) -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.padding_side = "left"
    rows = args.prompts_per_step * args.group_size
    config = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=rows, gradient_accumulation_steps=1,
                        num_generations=args.group_size, max_completion_length=args.max_new_tokens,
                        temperature=0.7, top_p=0.9, beta=args.beta, learning_rate=1e-6, loss_type="grpo",
                        num_iterations=1, max_steps=args.steps, logging_steps=1, save_strategy="no",
                        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, shuffle_dataset=False)
    # a "min_new_tokens" equal to the max would be unfair to nobody: random weights never emit EOS
    step_times: list[float] = []
    rollout_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.start)

    trainer = GRPOTrainer(model=model, reward_funcs=lambda prompts, completions, **kw: [pseudo_reward(c) for c in completions],
                          args=config, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                          processing_class=tokenizer, callbacks=[Timer()])
    generate_and_score = trainer._generate_and_score_completions  # private: timed only, behaviour unchanged

    def timed(*a, **k):
        start = time.perf_counter()
        out = generate_and_score(*a, **k)
        rollout_times.append(time.perf_counter() - start)
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    total = statistics.median(step_times[1:])
    rollout = statistics.median(rollout_times[1:]) if len(rollout_times) > 1 else float("nan")
    return {"rollout_s": rollout, "train_s": total - rollout, "trl_version": trl.__version__}


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default=None, help="a tiny-world folder: benchmark its base model")
    parser.add_argument("--config", default=str(SHARED / "configs" / "qwen2.5-0.5b.json"),
                        help="without --world: random weights of this config.json's shape")
    parser.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "qwen2.5"))
    parser.add_argument("--gsm8k", default=str(SHARED / "data" / "gsm8k" / "train.jsonl"))
    parser.add_argument("--impl", default="ours", choices=["ours", "trl", "both"])
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps per implementation (the first is warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)  # a child of --impl both writes here
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.impl == "both":
        return both(argv if argv is not None else sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="grpo_bench_") as tmp:
        work = Path(tmp)
        n_prompts = args.prompts_per_step * args.steps
        if args.world:
            world = Path(args.world)
            checkpoint = world / "base"
            import random
            import stage2_grpo as s2
            from teacher import load_teacher_data
            examples = load_teacher_data(str(world / "teacher.jsonl"), rows=slice(0, n_prompts), quiet=True)
            prompts = [s2.build_masked_prompt(e, random.Random(i)) for i, e in enumerate(examples)]
            shape = f"tiny world {world}"
        else:
            checkpoint = random_checkpoint(Path(args.config), Path(args.tokenizer), work, seed=0)
            prompts = prompt_texts(n_prompts, Path(args.gsm8k))
            shape = f"{Path(args.config).name}, random weights"
        print(f"{shape}: {args.prompts_per_step} prompts x G={args.group_size}, {args.max_new_tokens} new tokens, "
              f"beta={args.beta}, {args.threads} threads, median of steps 2..{args.steps}")
        reset_peak_rss()
        try:
            run = run_ours if args.impl == "ours" else run_trl
            figures = run(checkpoint, prompts, args, work)
            result = {"peak_rss_gb": peak_rss_gb(), **figures}  # ours reports its own, from before its save
        except ImportError as e:
            print(f"TRL not measured: {e}")
            return {}
    report({args.impl: result})
    if args.json:
        Path(args.json).write_text(json.dumps(result))
    return {args.impl: result}


def report(results: dict):
    for name, r in results.items():
        extra = {k: v for k, v in r.items() if k not in ("rollout_s", "train_s")}
        print(f"{name:5s} rollout {r['rollout_s']:7.2f} s  train {r['train_s']:7.2f} s  "
              f"step {r['rollout_s'] + r['train_s']:7.2f} s  {extra}", flush=True)


def both(argv: list[str]) -> dict:
    """--impl both: ours, then TRL, each in a fresh process with the same arguments."""
    import subprocess
    results = {}
    with tempfile.TemporaryDirectory(prefix="grpo_bench_both_") as tmp:
        for impl in ("ours", "trl"):
            child = [a for a in argv if a not in ("--impl", "both", "--impl=both")]
            out = Path(tmp) / f"{impl}.json"
            subprocess.run([sys.executable, __file__, *child, "--impl", impl, "--json", str(out)], check=True)
            if out.exists():
                results[impl] = json.loads(out.read_text())
    print("\nside by side:")
    report(results)
    if "ours" in results and "trl" in results:
        ours, theirs = results["ours"], results["trl"]
        gb = lambda r: "n/a" if r["peak_rss_gb"] is None else f"{r['peak_rss_gb']:.2f} GB"  # noqa: E731 (not Linux: None)
        print(f"TRL / ours, seconds per step: "
              f"{(theirs['rollout_s'] + theirs['train_s']) / (ours['rollout_s'] + ours['train_s']):.2f}x; "
              f"peak RSS ours {gb(ours)}, TRL {gb(theirs)}")
    return results


if __name__ == "__main__":
    cli.run(main)
