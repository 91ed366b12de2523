"""
The GPU check (issue #12): the figures the README still marks "computed" or "the paper's", measured
in one run on one GPU (H100 or H200, at most 8 minutes with gpu_check.sh), written to ONE JSON file.

Why one script. A GPU is lent for minutes at a time. Whoever gets one should not have to assemble
five commands; this runs them all, writes the JSON again after every part (a part that fails or
runs out of time costs only itself), and labels every figure with what it measures, the device,
the torch version and the date, so a figure pasted elsewhere still says where it came from.

Every model has random weights at an official shape (../shared/configs; no download, no network):
  parity_0.5b, parity_3b   our Qwen2 against transformers' Qwen2ForCausalLM on the SAME weights
                           (our save_pretrained, read back by transformers' from_pretrained), bf16:
                           max |logit difference|, argmax agreement at every prompt position, and
                           how much of a greedy continuation the two produce token for token
  generate_0.5b, _3b       generate.generate against transformers' generate, new tokens per second at
                           batch 64, 256 sampled new tokens, bf16 (benchmarks/generation.py's timers)
  eval_3b                  eval.evaluate on the first 64 GSM8K test questions (batch 64, 256 new
                           tokens, bf16), scaled to the 1,319 questions of the test set
  stage1_3b                stage 1's step (LoRA r=16 on the bf16 base, 4 x 2048 tokens, no
                           checkpointing, as curriculum.sh): tokens/s and peak memory
  grpo_step_3b             one stage-2 GRPO step with the paper's settings (1 prompt x G=2, 256 new
                           tokens, beta 0.1 against a frozen fp32 reference, full fine-tuning in fp32
                           under bf16 autocast, gradient checkpointing): rollout and training seconds,
                           torch.cuda.max_memory_allocated against benchmarks/gpu_memory.py's figure
  compiled_generate_0.5b   the --compile option (generate.compile_decode, inductor) at the 0.5B shape,
                           last because it may take minutes: compile seconds, new tokens per second
                           eager and compiled in one run, and whether greedy output is the same

Random weights never say EOS, so every completion runs to its token limit: the seconds are an
upper bound for those limits (a trained model stops earlier). The GRPO step is built from stage
2's own pieces (rollout, group_advantages, token_logprobs, grpo_loss, in train_grpo's order) rather
than by calling train_grpo, so that one warm step is timed on its own, with no model loading or
final 12 GB save inside the figure; its reward is fixed (0 and 1 in each group) so both completions
train. Without CUDA (CI, a laptop) every part runs on tiny shapes in float32 in a few seconds: the
figures are then only a smoke test of the code path (parity must hold to ~1e-5).

    bash benchmarks/gpu_check.sh                            # on the GPU machine; prints the JSON's path
    python benchmarks/gpu_check.py --out runs/gpu_check.json   # the same, with no time limit
    python benchmarks/gpu_check.py --out /tmp/smoke.json --smoke   # tiny shapes on any device
    bash benchmarks/gpu_check.sh again.json --parts grpo_step_3b    # one part again
"""
from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import cli  # noqa: E402

SHARED = ROOT.parent / "shared"
GB = 1024 ** 3
GSM8K_TEST_QUESTIONS = 1319
PARTS = ("parity_0.5b", "generate_0.5b", "parity_3b", "generate_3b", "eval_3b", "stage1_3b", "grpo_step_3b",
         "compiled_generate_0.5b")


@dataclass
class Settings:
    """How big each part is: the GPU check's, or the smoke test's."""
    dtype: str                  # parity, generation, eval and stage 1's base weights
    shrink: bool                # tiny shapes (2 layers) instead of the official ones
    parity_prompts: int
    parity_new_tokens: int
    generate_batch: int
    generate_prompt_tokens: int
    generate_new_tokens: int
    eval_questions: int         # also eval's batch size (curriculum.sh's paper mode: 64)
    eval_new_tokens: int
    stage1_batch: int
    stage1_length: int          # prompt + target tokens per example (half and half)
    stage1_steps: int           # timed, after one warm-up step
    grpo_new_tokens: int
    compile_backend: str        # torch.compile backend of compiled_generate (aot_eager: traced, no code made)


GPU = Settings("bfloat16", False, 4, 32, 64, 100, 256, 64, 256, 4, 2048, 3, 256, "inductor")
SMOKE = Settings("float32", True, 2, 8, 4, 16, 8, 4, 8, 2, 64, 2, 8, "aot_eager")


def shape(name: str, shrink: bool) -> dict:
    """The official config.json of ../shared/configs/<name>.json; shrunk to 2 layers for the
    smoke test (the vocabulary stays real, so GSM8K prompts tokenize as they do for real)."""
    config = json.loads((SHARED / "configs" / f"{name}.json").read_text())
    if shrink:
        hidden = 32 if "0.5b" in name else 64
        config.update(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return config


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_checkpoint(config: dict, folder: Path, dtype: str, device) -> Path:
    """Random weights of this shape saved with model.save_pretrained beside the real tokenizer.
    Built on the meta device and filled on the target device in the target dtype: 3B in float32
    on the CPU first would be 12 GB and a minute of initialisation."""
    from model import DTYPES, Qwen2, Qwen2Config
    tokenizer = folder / "tokenizer"
    tokenizer.mkdir(parents=True, exist_ok=True)
    source = SHARED / "tokenizers" / "qwen2.5"
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(source / name, tokenizer / name)
    shutil.copyfile(source / "tokenizer_config.base.json", tokenizer / "tokenizer_config.json")
    shutil.copyfile(SHARED / "configs" / "generation_config" / "qwen2.5-0.5b.json", tokenizer / "generation_config.json")
    with torch.device("meta"):
        model = Qwen2(Qwen2Config.from_dict(config)).to(DTYPES[dtype])
    model = model.to_empty(device=device).init_weights(seed=0)
    model.save_pretrained(folder / "model", tokenizer_dir=tokenizer)
    del model
    free()
    return folder / "model"


def load_transformers(checkpoint: Path, dtype: str, device):
    import transformers
    ref = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype))
    # (transformers before 4.56 ignores `dtype=`: make sure the weights really are in it)
    return ref.to(device=device, dtype=getattr(torch, dtype)).eval()


def gsm8k_prompts(n: int, tokenizer) -> list[list[int]]:
    import eval as ev
    questions = ev.load_gsm8k(str(SHARED / "data" / "gsm8k" / "test.jsonl"), limit=n)
    return tokenizer.encode_batch([ev.build_prompt(q["question"]) for q in questions])


# -----------------------------------------------------------------------------
# The parts: each returns the figures it measured (a dict), or raises


def parity(ours, ref, prompts: list[list[int]], new_tokens: int) -> dict:
    """Logits of each prompt (batch 1, so no padding is involved) and a greedy continuation."""
    from generate import generate
    worst, largest, agree, positions, prefixes = 0.0, 0.0, 0, 0, []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=ours.device)
        with torch.inference_mode():
            # with a mask: the attention path the stages and eval run (without one, the model
            # takes the causal-only path that only the tiny world's pre-training uses)
            a, b = ours(ids, attention_mask=torch.ones_like(ids)).float(), ref(ids).logits.float()
            theirs = ref.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        worst, largest = max(worst, float((a - b).abs().max())), max(largest, float(b.abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[1]
        mine = generate(ours, [prompt], new_tokens, temperature=0.0, eos_token_ids=[]).tokens[0]
        same = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), new_tokens)
        prefixes.append(same / new_tokens)
    return {"max_abs_logit_diff": worst, "max_abs_logit": largest,
            "argmax_agreement": agree / positions, "positions": positions,
            "greedy_prefix_agreement": sum(prefixes) / len(prefixes),
            "greedy_prefix_agreement_per_prompt": prefixes, "prompts": len(prompts),
            "greedy_new_tokens": new_tokens}


def generation_speed(ours, ref, vocab: int, s: Settings) -> dict:
    import generation  # benchmarks/generation.py: the same timers, the same sampling settings
    prompts = generation.random_prompts(s.generate_batch, vocab, s.generate_prompt_tokens)
    device = str(ours.device)
    generation.time_ours(ours, prompts[:2], 4, device)  # warm-up
    t_ours = generation.time_ours(ours, prompts, s.generate_new_tokens, device)
    generation.time_transformers(ref, prompts[:2], 4, device)
    t_ref = generation.time_transformers(ref, prompts, s.generate_new_tokens, device)
    tokens = s.generate_batch * s.generate_new_tokens
    return {"ours_tokens_per_s": tokens / t_ours, "transformers_tokens_per_s": tokens / t_ref,
            "ours_over_transformers": t_ref / t_ours, "ours_seconds": t_ours, "transformers_seconds": t_ref,
            "batch": s.generate_batch, "prompt_tokens": s.generate_prompt_tokens,
            "new_tokens": s.generate_new_tokens, "sampling": "temperature 1, no top-k/top-p, EOS disabled"}


def compiled_generation(checkpoint: Path, vocab: int, s: Settings, device) -> dict:
    """generation_speed's run with generate.compile_decode against the eager step, same model and
    prompts; and greedy continuations of the first prompts, which should agree token for token."""
    import generation
    from generate import compile_decode, generate
    from model import Qwen2
    model = Qwen2.from_pretrained(checkpoint, dtype=s.dtype, device=device)
    prompts = generation.random_prompts(s.generate_batch, vocab, s.generate_prompt_tokens)
    greedy = lambda: generate(model, prompts[:4], s.parity_new_tokens, eos_token_ids=[]).tokens  # noqa: E731
    generation.time_ours(model, prompts[:2], 4, str(device))  # warm-up
    t_eager = generation.time_ours(model, prompts, s.generate_new_tokens, str(device))
    eager_greedy = greedy()
    compile_decode(model, backend=s.compile_backend)
    # (warmed up on the timed batch: a first call on 2 rows would leave a second compile, for the
    # new batch size, inside the timed call)
    compile_seconds, t_compiled = generation.time_warm(model, prompts, s.generate_new_tokens, str(device))
    compiled_greedy = greedy()
    same = [sum(1 for _ in itertools.takewhile(lambda ab: ab[0] == ab[1], zip(a, b))) / len(a)
            for a, b in zip(eager_greedy, compiled_greedy)]
    tokens = s.generate_batch * s.generate_new_tokens
    return {"backend": s.compile_backend, "compile_seconds": compile_seconds,
            "eager_tokens_per_s": tokens / t_eager, "compiled_tokens_per_s": tokens / t_compiled,
            "compiled_over_eager": t_eager / t_compiled, "greedy_prefix_agreement": min(same),
            "batch": s.generate_batch, "prompt_tokens": s.generate_prompt_tokens, "new_tokens": s.generate_new_tokens}


def eval_time(ours, tokenizer, s: Settings) -> dict:
    import eval as ev
    examples = ev.load_gsm8k(str(SHARED / "data" / "gsm8k" / "test.jsonl"), limit=s.eval_questions)
    sync(ours.device)
    start = time.perf_counter()
    _, summary = ev.evaluate(ours, tokenizer, examples, batch_size=s.eval_questions,
                             max_new_tokens=s.eval_new_tokens, progress=False)
    sync(ours.device)
    seconds = time.perf_counter() - start
    per_question = seconds / len(examples)
    return {"questions": len(examples), "batch_size": s.eval_questions, "max_new_tokens": s.eval_new_tokens,
            "seconds": seconds, "seconds_per_question": per_question,
            "extrapolated_seconds_gsm8k_test": per_question * GSM8K_TEST_QUESTIONS,
            "extrapolated_minutes_gsm8k_test": per_question * GSM8K_TEST_QUESTIONS / 60,
            "mean_generated_tokens": summary["mean_generated_tokens"], "truncated": summary["truncated"],
            "generated_tokens_per_s": summary["generated_tokens_per_second"]}


def stage1_step(model, tokenizer, config: dict, s: Settings) -> dict:
    """Stage 1's micro-batch as stage1_reconstruct.main runs it: LoRA on q/k/v/o of the bf16 base,
    the target-token cross-entropy, clipping, AdamW (one optimiser step per micro-batch here)."""
    import gpu_memory
    import run
    import stage1_reconstruct as s1
    from lora import add_lora
    device = model.device
    add_lora(model, rank=16, alpha=32.0, dropout=0.05)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = run.adamw(params, lr=5e-5, weight_decay=0.01)  # the stages' optimiser
    g = torch.Generator().manual_seed(1)
    prompt_len = s.stage1_length // 2
    items = [s1.Encoded(torch.randint(0, 151643, (prompt_len,), generator=g).tolist(),
                        torch.randint(0, 151643, (s.stage1_length - prompt_len - 1,), generator=g).tolist()
                        + [tokenizer.eos_token_id]) for _ in range(s.stage1_batch)]
    batch = s1.collate(items, tokenizer.pad_token_id, device)
    autocast = device.type == "cuda" and model.dtype == torch.float32  # stage 1's rule: off on a bf16 base
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    losses = []
    for step in range(1 + s.stage1_steps):
        if step == 1:  # the first step is warm-up (kernels, AdamW's moments)
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = s1.target_loss(model, batch)
        (loss / batch.target_tokens).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) / batch.target_tokens)
    sync(device)
    seconds = (time.perf_counter() - start) / s.stage1_steps
    tokens = s.stage1_batch * s.stage1_length
    computed = gpu_memory.stage_rows(config, argparse.Namespace(
        stage1_batch_size=s.stage1_batch, stage1_tokens=s.stage1_length, stage1_target_tokens=batch.target_tokens // s.stage1_batch,
        stage2_prompt_tokens=300, stage3_prompt_tokens=450, prompts_per_step=1, group_size=2, micro_batch_size=2,
        gradient_checkpointing=False))[0][1]
    return {"tokens_per_s": tokens / seconds, "seconds_per_step": seconds, "batch": s.stage1_batch,
            "tokens_per_example": s.stage1_length, "target_tokens_per_example": batch.target_tokens // s.stage1_batch,
            "timed_steps": s.stage1_steps, "lora_rank": 16, "gradient_checkpointing": False,
            "trainable_parameters": sum(p.numel() for p in params), "loss_first_last": [losses[0], losses[-1]],
            **memory_figures(device, before, computed)}


def memory_figures(device, before: int, computed: dict) -> dict:
    """Measured peak beside gpu_memory.py's computed sum (which leaves out the CUDA context and
    fragmentation, as max_memory_allocated does too; reserved memory includes the latter)."""
    out = {"computed_gb": sum(computed.values()) / GB,  # (stage 2's at gpu_memory.py's 256 new tokens)
           "computed_parts_gb": {k: round(v / GB, 3) for k, v in computed.items()}}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_allocated_gb=peak / GB, peak_reserved_gb=torch.cuda.max_memory_reserved() / GB,
                   allocated_before_gb=before / GB, measured_over_computed=peak / max(sum(computed.values()), 1))
    else:
        out["peak_allocated_gb"] = None  # not measurable without CUDA
    return out


def grpo_one_step(checkpoint: Path, config: dict, s: Settings, device) -> dict:
    """One stage-2 step, in train_grpo's order (its steps 3-6), from stage 2's own pieces; the
    first of two steps is warm-up and the second is timed. Everything else is freed first, so
    the peak is this step's alone."""
    import gpu_memory
    import grpo_step as bench  # benchmarks/grpo_step.py: the stage-2 masked prompts of GSM8K train
    import run
    import stage2_grpo as s2
    from generate import token_logprobs
    from model import Qwen2
    from tokenizer import load_tokenizer
    free()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    cfg = s2.GRPOConfig(model=str(checkpoint), out="", max_new_tokens=s.grpo_new_tokens, gradient_checkpointing=True)
    # 1. policy, frozen reference and optimiser as train_grpo builds them (paper: full FT, fp32)
    policy = Qwen2.from_pretrained(checkpoint, dtype="float32", device=device)
    ref = Qwen2.from_pretrained(checkpoint, dtype="float32", device=device).requires_grad_(False)
    policy.gradient_checkpointing = cfg.gradient_checkpointing
    tokenizer = load_tokenizer(checkpoint)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = run.adamw(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # as train_grpo
    texts = bench.prompt_texts(2 * cfg.prompts_per_step, SHARED / "data" / "gsm8k" / "train.jsonl")
    for step in range(2):
        prompt_ids = tokenizer.encode_batch(texts[step * cfg.prompts_per_step:(step + 1) * cfg.prompts_per_step])
        sync(device)
        t0 = time.perf_counter()
        # 3. rollout: G completions per prompt with their sampling log-probs
        generator = torch.Generator(device=device).manual_seed(step)
        with run.autocast(device):
            ro = s2.rollout(policy, tokenizer, prompt_ids, cfg.group_size, cfg.max_new_tokens,
                            cfg.temperature, cfg.top_p, generator)
        sync(device)
        t1 = time.perf_counter()
        # 4. a fixed reward with spread in every group (0, 1, ...), so every completion trains
        rewards = torch.tensor([float(row % 2) for row in range(len(ro.completions))])
        advantages, _ = s2.group_advantages(rewards, cfg.group_size, std_scale=cfg.std_scale)
        rows = len(ro.completions)
        # 5. pi_ref log-probs (pi_old: the sampler's own, as stage 2 takes it)
        ref_lp = s2._batch_logprobs(ref, ro.prompts, ro.completions, cfg.temperature, tokenizer.pad_token_id,
                                    cfg.micro_batch_size, device)
        # 6. one optimiser step, gradients accumulated over micro-batches
        s2.train_without_dropout(policy)
        optimizer.zero_grad(set_to_none=False)
        for lo in range(0, rows, cfg.micro_batch_size):
            hi = min(lo + cfg.micro_batch_size, rows)
            with run.autocast(device):
                new_lp, mask = token_logprobs(policy, ro.prompts[lo:hi], ro.completions[lo:hi], cfg.temperature,
                                              tokenizer.pad_token_id)
            width = new_lp.shape[1]
            loss, _ = s2.grpo_loss(new_lp, s2._pad(ro.old_logprobs[lo:hi], width, device), advantages[lo:hi].to(device),
                                   mask, s2._pad(ref_lp[lo:hi], width, device), cfg.beta, cfg.clip_eps, cfg.loss_agg, rows)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
    prompt_tokens = max(len(p) for p in ro.prompts)
    completion_tokens = sum(len(c) for c in ro.completions) / rows
    computed = gpu_memory.stage_rows(config, argparse.Namespace(
        stage1_batch_size=4, stage1_tokens=512, stage1_target_tokens=200, stage2_prompt_tokens=prompt_tokens,
        stage3_prompt_tokens=450, prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size,
        micro_batch_size=min(cfg.micro_batch_size, rows), gradient_checkpointing=True))[1][1]
    step_seconds = t2 - t0
    updates = 2000 * 3 // cfg.prompts_per_step  # the authors' stage 2: rows 2000-3999, 3 epochs
    figures = {"rollout_seconds": t1 - t0, "train_seconds": t2 - t1, "step_seconds": step_seconds,
               "extrapolated_stage2_hours": step_seconds * updates / 3600, "stage2_updates": updates,
               "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "loss": float(loss.detach()),
               "settings": {k: getattr(cfg, k) for k in ("prompts_per_step", "group_size", "max_new_tokens", "beta",
                                                          "temperature", "top_p", "lr", "micro_batch_size",
                                                          "gradient_checkpointing", "loss_agg")}
               | {"weights": "float32", "autocast": "bfloat16" if device.type == "cuda" else "none"},
               **memory_figures(device, before, computed)}
    del policy, ref, optimizer, ro, loss, new_lp
    return figures


# -----------------------------------------------------------------------------
# The run


class Report:
    """The JSON file, rewritten after every part, so whatever finished is on disk."""

    def __init__(self, path: Path, header: dict):
        self.path, self.start = path, time.time()
        self.label = {k: header[k] for k in ("device", "torch", "date")}
        self.data = {**header, "figures": {}, "errors": {}, "skipped": [], "complete": False}
        self.write()

    def add(self, name: str, measures: str, figures: dict):
        self.data["figures"][name] = {"measures": measures, **self.label, **figures}
        print(f"gpu_check: {name}: " + ", ".join(f"{k} {_short(v)}" for k, v in figures.items()
                                                  if isinstance(v, (int, float)) and not isinstance(v, bool)), flush=True)
        self.write()

    def write(self):
        self.data["elapsed_seconds"] = round(time.time() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="default: cuda if available, else cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in float32 (the default without CUDA)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: parts that would start after this are skipped (gpu_check.sh sets it)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these (e.g. to measure again one that failed)")
    parser.add_argument("--work", default=None, help="folder for the random checkpoints (default: a temporary one)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    smoke = args.smoke or device.type != "cuda"
    s = SMOKE if smoke else GPU
    import transformers
    transformers.utils.logging.disable_progress_bar()
    report = Report(Path(args.out), {
        "what": "BRIDGE GPU check (benchmarks/gpu_check.py): random weights at official Qwen2.5 shapes",
        "mode": "smoke (tiny shapes, float32: checks the code path, not the speed)" if smoke else "gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(s)})
    print(f"gpu_check: {report.data['mode']} on {report.data['device']}, torch {torch.__version__} -> {args.out}", flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))

    def part(name: str, measures: str, fn):
        """Run one part; a failure is recorded in the JSON and the next part goes on."""
        if name not in args.parts:
            return None
        if args.budget is not None and time.time() - report.start > args.budget:
            report.data["skipped"].append(name)
            report.write()
            return None
        try:
            start = time.time()
            figures = fn()
            report.add(name, measures, {**figures, "part_seconds": round(time.time() - start, 1)})
            return figures
        except Exception as e:  # noqa: BLE001 - one failed part must not lose the others
            report.data["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"gpu_check: {name} FAILED\n{traceback.format_exc()}", flush=True)
            report.write()
            return None
        finally:
            free()

    from model import Qwen2
    from tokenizer import load_tokenizer
    checkpoints = {}
    try:
        for size in ("0.5b", "3b"):
            if not any(p.endswith(f"_{size}") for p in args.parts):
                continue
            ours = ref = None
            try:  # a failure here loses this shape's parts only
                config = shape(f"qwen2.5-{size}", s.shrink)
                checkpoint = random_checkpoint(config, work / size, s.dtype, device)
                checkpoints[size] = (checkpoint, config)
                tokenizer = load_tokenizer(checkpoint)
                wanted = {p[:-len(size) - 1] for p in args.parts if p.endswith(f"_{size}")}
                if wanted - {"grpo_step"}:
                    ours = Qwen2.from_pretrained(checkpoint, dtype=s.dtype, device=device)
                if wanted & {"parity", "generate"}:
                    ref = load_transformers(checkpoint, s.dtype, device)
            except Exception as e:  # noqa: BLE001
                report.data["errors"][f"setup_{size}"] = f"{type(e).__name__}: {e}"
                print(f"gpu_check: setup of {size} FAILED\n{traceback.format_exc()}", flush=True)
                report.write()
                del ours, ref
                free()
                continue
            label = f"Qwen2.5-{size.upper()} shape" + (" (smoke: 2 layers)" if s.shrink else "")
            part(f"parity_{size}", f"{label}, {s.dtype}: model.py's Qwen2 against transformers' Qwen2ForCausalLM on "
                 f"the same random weights (saved by our save_pretrained, loaded by theirs); logits of GSM8K prompts "
                 f"(batch 1) and a greedy continuation of each",
                 lambda: parity(ours, ref, gsm8k_prompts(s.parity_prompts, tokenizer), s.parity_new_tokens))
            part(f"generate_{size}", f"{label}, {s.dtype}: new tokens per second, generate.generate against "
                 f"transformers' generate (benchmarks/generation.py's timers), random prompts",
                 lambda: generation_speed(ours, ref, config["vocab_size"], s))
            del ref
            free()
            if size == "3b":
                part("eval_3b", f"{label}, {s.dtype}: wall time of eval.evaluate on the first {s.eval_questions} GSM8K "
                     f"test questions in one batch, scaled to all {GSM8K_TEST_QUESTIONS} (random weights: every "
                     f"answer runs to max_new_tokens)", lambda: eval_time(ours, tokenizer, s))
                part("stage1_3b", f"{label}: stage 1 training, LoRA r=16 on the {s.dtype} base, batch {s.stage1_batch} "
                     f"x {s.stage1_length} tokens; prompt + target tokens per second and peak GPU memory against "
                     f"benchmarks/gpu_memory.py", lambda: stage1_step(ours, tokenizer, config, s))
                del ours
                free()
                part("grpo_step_3b", f"{label}: one stage-2 GRPO step with the paper's settings (1 prompt x G=2, "
                     f"{s.grpo_new_tokens} new tokens, beta 0.1, full fine-tuning, fp32 weights under bf16 autocast "
                     f"on CUDA, gradient checkpointing), warm; seconds and torch.cuda.max_memory_allocated against "
                     f"benchmarks/gpu_memory.py", lambda: grpo_one_step(checkpoint, config, s, device))
            else:
                del ours
                free()
        if "compiled_generate_0.5b" in args.parts:
            def compiled():
                if "0.5b" not in checkpoints:  # asked for on its own
                    config = shape("qwen2.5-0.5b", s.shrink)
                    checkpoints["0.5b"] = (random_checkpoint(config, work / "0.5b", s.dtype, device), config)
                checkpoint, config = checkpoints["0.5b"]
                return compiled_generation(checkpoint, config["vocab_size"], s, device)
            part("compiled_generate_0.5b", f"Qwen2.5-0.5B shape{' (smoke: 2 layers)' if s.shrink else ''}, {s.dtype}: "
                 f"generate with generate.compile_decode (torch.compile, {s.compile_backend}, dynamic shapes) against "
                 f"the eager decode step on the same model and prompts; greedy agreement of the two", compiled)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report.data["complete"] = not report.data["errors"] and not report.data["skipped"]
    report.write()
    print(f"gpu_check: {len(report.data['figures'])} parts measured, {len(report.data['errors'])} failed, "
          f"{len(report.data['skipped'])} skipped, {report.data['elapsed_seconds']:.0f} s -> {args.out}", flush=True)
    return report.data


if __name__ == "__main__":
    cli.run(main)
