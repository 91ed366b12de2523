"""Numerics and the optimisation schedule (issue #12, items 1, 3 and 8): trained weights and their
optimizer state stay float32 whatever the frozen base's dtype, merging adapters into a bf16 base
keeps the update, sampler and trainer log-probs agree in bf16 (the LM head runs in float32),
a material gap makes GRPO train against the trainer's own pi_old, and GRPO follows the authors'
schedule (10% warm-up, linear decay, weight decay 0.01, one prompt per step) unless told not to."""
import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

import stage1_reconstruct as s1
import stage2_grpo as s2
import stage3_rewrite as s3
from conftest import tiny_config_dict
from generate import generate, token_logprobs
from lora import LoRALinear, add_lora, merged_state_dict
from model import Qwen2, Qwen2Config, float32_logits
from run import learning_rate
from tokenizer import load_tokenizer
from test_paper_settings import REQUIRED, _branch_settings, parsed


def small_model(dtype=torch.float32, hidden=64):
    torch.manual_seed(0)
    model = Qwen2(Qwen2Config.from_dict(tiny_config_dict(vocab_size=256, hidden=hidden))).init_weights(seed=0)
    return model.to(dtype)


# -----------------------------------------------------------------------------
# 1. bf16: trained weights and optimizer state are float32


def train_lora(model, steps=20, lr=5e-5):
    """`steps` AdamW steps of next-token cross-entropy on a fixed batch; returns the change of
    every lora_A entry and the optimizer."""
    torch.manual_seed(1)  # the same adapter init for every base dtype
    add_lora(model, rank=8, alpha=16, dropout=0.0)
    return _train(model, steps, lr)


def _train(model, steps, lr):
    ids = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(2))
    params = [p for p in model.parameters() if p.requires_grad]
    before = [m.lora_A.detach().float().clone() for m in model.modules() if isinstance(m, LoRALinear)]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    for _ in range(steps):
        logits = model(ids[:, :-1]).float()
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = [m.lora_A.detach().float() for m in model.modules() if isinstance(m, LoRALinear)]
    return torch.cat([(a - b).flatten() for a, b in zip(after, before)]), optimizer


def test_bf16_base_trains_lora_like_fp32():
    update32, _ = train_lora(small_model(torch.float32))
    model16 = small_model(torch.bfloat16)
    update16, optimizer = train_lora(model16)
    assert all(p.dtype == torch.float32 for p in model16.parameters() if p.requires_grad)
    assert all(s["exp_avg"].dtype == torch.float32 for s in optimizer.state.values())
    assert model16.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16  # the frozen base stays bf16
    for update in (update32, update16):
        assert (update == 0).float().mean() < 0.01  # every entry of A moved
    assert update16.norm() / update32.norm() == pytest.approx(1.0, abs=0.1)

    # the control: adapters in bf16 (what LoRALinear did before) lose most of these updates
    control = small_model(torch.bfloat16)
    torch.manual_seed(1)
    add_lora(control, rank=8, alpha=16, dropout=0.0).to(torch.bfloat16)
    update_bf16, _ = _train(control, 20, 5e-5)
    assert (update_bf16 == 0).float().mean() > 0.3
    assert update_bf16.norm() / update32.norm() < 0.9


def test_merging_into_a_bf16_base_keeps_the_update(tmp_path):
    model = add_lora(small_model(torch.bfloat16), rank=4, alpha=8, dropout=0.0)
    lora = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        lora.lora_B.fill_(1e-4)  # an update well below half a bf16 ulp of most weights
    W = lora.base.weight.float()
    delta = (lora.lora_B @ lora.lora_A) * lora.scale
    merged = merged_state_dict(model)["model.layers.0.self_attn.q_proj.weight"]
    assert merged.dtype == torch.float32 and torch.equal(merged, W + delta)
    assert (merged.bfloat16().float() == W).float().mean() > 0.5  # what merging in bf16 would keep
    model.save_pretrained(tmp_path / "merged", state_dict=merged_state_dict(model))
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["torch_dtype"] == "float32"
    back = Qwen2.from_pretrained(tmp_path / "merged")
    assert back.dtype == torch.float32
    assert torch.equal(back.model.layers[0].self_attn.q_proj.weight, merged)
    assert torch.equal(back.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.float())


def test_saving_unmerged_adapters_is_refused(tmp_path):
    """model.py knows only the plain architecture: a LoRA model's own state dict (base weights
    under `.base.`, adapters apart) is refused by name, and nothing is written."""
    model = add_lora(small_model(), rank=4, alpha=8, dropout=0.0)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.base\.weight.*merged_state_dict"):
        model.save_pretrained(tmp_path / "unmerged")
    assert list(tmp_path.iterdir()) == []


def test_full_finetuning_in_16_bits_is_refused():
    with pytest.raises(SystemExit, match="full fine-tuning"):
        s1.main(REQUIRED + ["--dtype", "bfloat16", "--lora-rank", "0"])
    with pytest.raises(SystemExit, match="full fine-tuning"):
        s2.train_grpo(s2.GRPOConfig(model="m", out="o", dtype="bfloat16", lora_rank=0), [object()], None, None)
    with pytest.raises(SystemExit, match="full fine-tuning"):
        s3.main(REQUIRED + ["--dtype", "bfloat16", "--lora-rank", "0", "--failures", "f.jsonl"])


# -----------------------------------------------------------------------------
# 2. bf16: sampler and trainer log-probs agree


def test_float32_head_under_bf16_weights_and_autocast():
    model = small_model(torch.bfloat16)
    hidden = model.hidden_states(torch.randint(0, 256, (2, 16)))
    exact = hidden.double() @ model.head_weight.double().T
    for context in (contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16)):
        with context:
            logits = float32_logits(hidden, model.head_weight)
        assert logits.dtype == torch.float32
        assert (logits.double() - exact).abs().max() < 1e-5
    assert (model.logits(hidden).double() - exact).abs().max() > 1e-4  # the bf16 head rounds


@pytest.mark.parametrize("dtype,autocast", [("bfloat16", False), ("float32", True)])
def test_sampler_and_trainer_logprobs_agree_in_bf16(tiny_world, dtype, autocast):
    from eval import build_prompt
    from teacher import load_teacher_data
    model = Qwen2.from_pretrained(tiny_world.base_model, dtype=dtype)
    tok = load_tokenizer(tiny_world.base_model)
    prompts = tok.encode_batch([build_prompt(e.question) for e in load_teacher_data(str(tiny_world.teacher), rows=slice(0, 4))])
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context, torch.no_grad():
        out = generate(model, prompts, 64, temperature=0.7, top_p=0.9, num_samples=2, eos_token_ids=tok.eos_token_ids,
                       pad_token_id=tok.pad_token_id, seed=0, return_logprobs=True)
        trainer, mask = token_logprobs(model, [p for p in prompts for _ in range(2)], out.tokens, 0.7, tok.pad_token_id)
    sampler = torch.zeros_like(trainer)
    for i, row in enumerate(out.logprobs):
        sampler[i, :len(row)] = torch.tensor(row)
    gap = (trainer - sampler).abs()[mask]
    # measured: mean 2.7-3.8e-4, max 0.017-0.018 (with the bf16 head of before: mean 0.9-1.3e-3,
    # max 0.048-0.071); the PPO clip range is log(1.2) = 0.18
    assert gap.mean() < 6e-4 and gap.max() < 0.035


# -----------------------------------------------------------------------------
# 3. GRPO runs: the recompute rule, bf16 LoRA end to end, the schedule and exact resume


def grpo_args(world, out, *extra):
    return ["--model", str(world.base_model), "--teacher-data", str(world.teacher), "--rows", "0:16",
            "--out", str(out), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "24",
            "--lr", "1e-3", "--seed", "0", "--save-every", "0", "--keep-zero-variance", "--reward", "cosine",
            "--device", "cpu", "--quiet", *extra]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_material_gap_trains_against_the_trainers_logprobs(tiny_world, tmp_path):
    bf16_lora = ["--dtype", "bfloat16", "--lora-rank", "4", "--max-steps", "2"]
    s2.main(grpo_args(tiny_world, tmp_path / "always", *bf16_lora, "--recompute-gap", "0"))
    rows = metrics(tmp_path / "always")
    assert all(r["old_recomputed"] == 1.0 and r["clip_fraction"] == 0.0 for r in rows)
    assert all(r["logprob_gap"] > 0 for r in rows)   # measured against the sampler, before replacing
    s2.main(grpo_args(tiny_world, tmp_path / "never", *bf16_lora, "--recompute-gap", "1e9"))
    rows = metrics(tmp_path / "never")
    assert all(r["old_recomputed"] == 0.0 and 0 < r["logprob_gap_mean"] <= r["logprob_gap"] for r in rows)
    # the adapters were float32 on the bf16 base, and the merged model was saved in float32
    assert Qwen2.from_pretrained(tmp_path / "never").dtype == torch.float32


def test_stage3_trains_rewrites_under_the_eval_prompt_against_the_trainers_logprobs(tiny_world, tmp_path):
    # the rewrites are sampled from the rewriting prompt; under --policy-prompt eval the loss
    # conditions them on the eval prompt, where the sampler's log-probs are not pi_old (they are
    # of another prompt): every trained row takes the trainer's, whatever --recompute-gap says
    def stage3(name, policy_prompt):
        s3.main(["--model", str(tiny_world.base_model), "--failures", str(tiny_world.teacher), "--out",
                 str(tmp_path / name), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "16",
                 "--max-steps", "2", "--save-every", "0", "--reward", "cosine", "--keep-zero-variance",
                 "--recompute-gap", "1e9", "--policy-prompt", policy_prompt, "--device", "cpu", "--quiet"])
        return metrics(tmp_path / name)

    rows = stage3("eval", "eval")
    assert all(r["old_recomputed"] == 1.0 and r["clip_fraction"] == 0.0 for r in rows)
    assert all(r["logprob_gap"] == 0.0 for r in rows)   # no sampler log-probs were compared
    rows = stage3("rewrite", "rewrite")   # float32, same prompt: the sampler's are pi_old
    assert all(r["old_recomputed"] == 0.0 and 0 < r["logprob_gap"] < 1e-3 for r in rows)


def config(**kw):
    return s2.GRPOConfig(model="m", out="o", **kw)


def test_learning_rate_schedules():
    paper = config()  # the defaults: 10% warm-up, linear decay
    lrs = [learning_rate(paper, step, 6000) for step in range(6000)]
    assert lrs[0] == pytest.approx(1e-5 / 600) and lrs[599] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs[599:], lrs[600:])) and 0 < lrs[-1] < 1e-8
    old = config(lr_schedule="constant", warmup_ratio=0.0)
    assert {learning_rate(old, step, 100) for step in range(100)} == {1e-5}
    warm = config(lr_schedule="constant", warmup_steps=4)   # --warmup-steps overrides the ratio
    assert [learning_rate(warm, step, 100) for step in (0, 3, 50)] == pytest.approx([2.5e-6, 1e-5, 1e-5])


def test_curriculum_paper_branch_takes_the_authors_update_count(monkeypatch):
    s = _branch_settings("paper")
    a = parsed(monkeypatch, s2.main, REQUIRED + s["S2"])
    assert (a.prompts_per_step, a.lr_schedule, a.warmup_ratio, a.weight_decay) == (1, "linear", 0.1, 0.01)
    start, end = map(int, a.rows.split(":"))
    assert (end - start) * a.epochs / a.prompts_per_step == 6000   # the authors' optimizer steps
    for name, main in (("S2", s2.main), ("S3", s3.main)):   # the tiny world keeps its old schedule
        t = parsed(monkeypatch, main, REQUIRED + _branch_settings("tiny")[name])
        assert (t.lr_schedule, t.warmup_ratio, t.warmup_steps, t.weight_decay, t.prompts_per_step) == \
            ("constant", 0.0, 0, 0.0, 8)


def test_linear_schedule_in_a_run(tiny_world, tmp_path):
    """A run takes learning_rate's schedule step by step. (That a resumed run continues it
    exactly, weights to the bit, is test_faults.py's SIGKILL test, whose stage-2 and stage-3 runs
    use this linear schedule.)"""
    s2.main(grpo_args(tiny_world, tmp_path / "straight", "--max-steps", "4", "--warmup-ratio", "0.5"))
    assert [r["lr"] for r in metrics(tmp_path / "straight")] == pytest.approx([5e-4, 1e-3, 2e-3 / 3, 1e-3 / 3])
