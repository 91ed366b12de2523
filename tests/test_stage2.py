"""Stage 2 (stage2_grpo.py): masked prompts, rewards at their boundaries, the GRPO pieces on
hand-built tensors, and short runs on the tiny world (reward rises, --resume continues)."""
import json
import math
import random
import shutil
from types import SimpleNamespace

import pytest
import torch

import rewards
import stage2_grpo as s2
from conftest import BRIDGE_STAGE3, GradientRecorder, small_policy
from distributed import Dist
from eval import build_prompt, extract_answer, is_correct
from generate import token_logprobs
from run import step_examples
from teacher import TeacherExample, load_teacher_data, num_masked


def example(n_steps=4, answer="18"):
    steps = [f"fact number {i} about eggs" for i in range(1, n_steps + 1)]
    return TeacherExample(question="How many eggs?", answer=answer, rationale="", steps=steps)


def response(words: int, markers: int, answer="18", answer_line=True) -> str:
    """A response with exactly `words` whitespace-separated words and `markers` `Step k:` labels."""
    tail = [f"Answer: {answer}"] if answer_line else [answer]
    head = [f"Step {k}:" for k in range(1, markers + 1)]
    head = [w for marker in head for w in marker.split()]  # "Step", "1:" count as two words
    filler = words - len(head) - len(" ".join(tail).split())
    assert filler >= 0
    text = " ".join(head + ["egg"] * filler + tail)
    assert len(text.split()) == words
    return text


# -----------------------------------------------------------------------------
# Prompts


@pytest.mark.parametrize("n,k", [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 3), (7, 3), (8, 4), (11, 5)])
def test_num_masked(n, k):
    assert num_masked(n) == k


def test_masked_prompts_hide_the_masked_steps_of_real_rationales():
    examples = load_teacher_data(str(BRIDGE_STAGE3), quiet=True)
    assert len(examples) > 500
    for index, ex in enumerate(examples):
        prompt = s2.build_masked_prompt(ex, random.Random(f"7:{index}"))
        assert prompt == s2.build_masked_prompt(ex, random.Random(f"7:{index}"))  # seeded
        shown, hidden = s2.mask_steps(ex.steps, random.Random(f"7:{index}"))
        assert len(hidden) == num_masked(len(ex.steps))
        # one hint line per teacher step, in the original order: the step itself or the mask
        hints = [line for line in prompt.splitlines() if line.startswith("Step ")]
        assert len(hints) == len(ex.steps)
        for k, (line, step) in enumerate(zip(hints, ex.steps)):
            assert line == f"Step {k + 1}: {s2.MASK if k in hidden else step}"
        for i in hidden:
            step = ex.steps[i]
            # a masked step may only be "seen" if its text is also part of something shown
            visible = step in ex.question or any(step in s for j, s in enumerate(ex.steps) if j not in hidden)
            assert visible or step not in prompt, (index, step)
        assert ex.rationale not in prompt
        assert prompt.startswith("Solve this math problem") and prompt.endswith("Reasoning:")


def test_grpo_forward_has_no_dropout(tiny_qwen_checkpoint):
    """LoRA's dropout would make pi / pi_old noisy before any update: the loss forward runs
    in training mode (for gradient checkpointing) with dropout off."""
    from model import Qwen2
    from lora import add_lora
    model = add_lora(Qwen2.from_pretrained(tiny_qwen_checkpoint), rank=4, alpha=8.0, dropout=0.5)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)   # adapters that change the output
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    model.train()
    assert not torch.equal(model(ids), model(ids))   # dropout on: two forwards differ
    s2.train_without_dropout(model)
    assert model.training and torch.equal(model(ids), model(ids))
    # sampling (in eval mode) hands the model back to training without switching dropout on
    from tokenizer import load_tokenizer
    s2.rollout(model, load_tokenizer(tiny_qwen_checkpoint), [[1, 2, 3]], group_size=2, max_new_tokens=3,
               temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(0), stop_fn=None)
    assert model.training and torch.equal(model(ids), model(ids))


def test_prompt_builder_masked_or_plain():
    ex = TeacherExample("How many apples does Mia have?", "10", "", ["a 4", "b 7", "c 5", "d 10"])
    masked = s2.prompt_builder("masked")(ex, random.Random(3))
    assert masked == s2.build_masked_prompt(ex, random.Random(3)) and s2.MASK in masked
    assert s2.prompt_builder("plain")(ex, random.Random(3)) == build_prompt(ex.question)  # the GRPO-alone baseline
    with pytest.raises(ValueError, match="--prompt"):
        s2.prompt_builder("hinted")


def test_mask_answer_steps_never_shows_the_answer():
    examples = load_teacher_data(str(BRIDGE_STAGE3), quiet=True)
    leaked_at_random = 0
    for index, ex in enumerate(examples):
        n, k = len(ex.steps), num_masked(len(ex.steps))
        stating = [i for i, step in enumerate(ex.steps) if s2.states_answer(step, ex.answer)]
        shown, hidden = s2.mask_steps(ex.steps, random.Random(index), answer=ex.answer)
        assert len(hidden) == (0 if k == 0 else max(k, min(len(stating), n - 1)))
        if k:
            # every answer-stating step is hidden, except one when all n of them state it
            assert sum(i not in hidden for i in stating) == (1 if len(stating) == n else 0), index
        _, random_hidden = s2.mask_steps(ex.steps, random.Random(index))
        leaked_at_random += any(i not in random_hidden for i in stating)
        prompt = s2.build_masked_prompt(ex, random.Random(index), mask_answer_steps=True)
        assert [l for l in prompt.splitlines() if l.startswith("Step ")] == \
            [f"Step {j + 1}: {text}" for j, text in enumerate(shown)]
    # the reason for the option: with random masks many real prompts show a step stating the
    # answer (249 of these 568 authors' rationales)
    assert leaked_at_random > len(examples) // 3


def test_states_answer_compares_numbers_as_numbers():
    assert s2.states_answer("So she pays $1,080 in total.", "1080")
    assert s2.states_answer("That is 18.0 apples.", "18")
    assert not s2.states_answer("That is 180 apples, or 181.", "18")
    assert s2.states_answer("The change is -3 degrees.", "-3")


# -----------------------------------------------------------------------------
# Rewards


def paper(text, ex=None, wps=10.0):
    completion = rewards.Completion(text)
    return s2.reward_paper(completion, ex or example(4), words_per_step=wps), completion.parts


def test_paper_reward_hierarchy():
    ex = example(4)  # B = 40 words, 0.8 B = 32
    assert paper(response(20, 2, answer="17"), ex)[0] == -2.0          # wrong
    assert paper(response(20, 2, answer_line=False), ex)[0] == -1.0    # right, no Answer:
    assert paper(response(20, 0), ex)[0] == -1.0                       # right, no Step k:
    value, parts = paper(response(20, 2), ex)
    assert parts["correct"] == 1.0 and parts["format"] == 1.0
    assert value == pytest.approx(1 + 0.6 + 0.012)                     # d = 2, 12 words under 0.8 B


def test_paper_reward_length_boundaries():
    ex = example(4)
    B = 40
    at = lambda w: paper(response(w, 4), ex)[0]  # 4 markers: d = 0, no step bonus
    assert at(B) == pytest.approx(1 - 0.002 * (B - 32))                # exactly B
    assert at(32) == pytest.approx(1.0)                                # exactly 0.8 B: t = 0
    assert at(33) == pytest.approx(1 - 0.002)                          # just above 0.8 B
    assert at(B + 1) == pytest.approx(1 - 0.01)                        # just above B
    assert at(B + 100) == pytest.approx(0.0)                           # penalty capped at -1
    assert at(31) == pytest.approx(1.001)
    assert at(10) == pytest.approx(1.022)


def test_paper_reward_step_bonus_and_maximum():
    ex = example(8)  # B = 80
    bonus = lambda markers: paper(response(64, markers), ex)[1]["step_bonus"]
    assert [bonus(m) for m in (8, 9, 7, 6, 5, 4, 1)] == pytest.approx([0, 0, 0.3, 0.6, 0.9, 0.9, 0.9])
    # the top: 3+ steps fewer than the teacher and far under 0.8 B
    assert paper(response(12, 1), example(8, answer="18"), wps=35)[0] == pytest.approx(2.1)


def test_paper_reward_uses_words_per_step():
    ex = example(4)
    text = response(30, 4)
    assert paper(text, ex, wps=10)[0] == pytest.approx(1.002)           # 0.8 B = 32: just under
    assert paper(text, ex, wps=5)[0] == pytest.approx(1 - 0.01 * 10)    # B = 20: 10 words over


def test_correct_only_reward():
    ex = example(3)
    assert rewards.reward_correct(rewards.Completion("Step 1: 9 + 9\nFinal Answer: 18"), ex) == 1.0
    assert rewards.reward_correct(rewards.Completion("Final Answer: 18.0"), ex) == 1.0  # numbers compared as numbers
    assert rewards.reward_correct(rewards.Completion("Final Answer: 19"), ex) == 0.0
    assert rewards.reward_correct(rewards.Completion("no number at all"), ex) == 0.0


def test_overlong_reward_boundaries():
    ex = example(3)
    r = lambda text, n: rewards.reward_overlong(rewards.Completion(text, n, max_new_tokens=100), ex, overlong_buffer=20)
    assert r("Answer: 18", 80) == 1.0                                   # at L_max - L_c: free
    assert r("Answer: 18", 90) == pytest.approx(0.5)                    # half way into the buffer
    assert r("Answer: 18", 100) == pytest.approx(0.0)                   # at the limit: -1
    assert r("Answer: 17", 10) == -1.0
    assert r("Answer: 17", 100) == pytest.approx(-2.0)


def test_cosine_reward_boundaries():
    ex = example(3)
    r = lambda text, n, truncated=False: rewards.reward_cosine(rewards.Completion(text, n, 100, truncated), ex)
    assert r("Answer: 18", 0) == pytest.approx(1.0)
    assert r("Answer: 18", 50) == pytest.approx(0.75)
    assert r("Answer: 18", 100) == pytest.approx(0.5)
    assert r("Answer: 18", 20) > r("Answer: 18", 40)                     # right: shorter is better
    assert r("Answer: 17", 0) == pytest.approx(-1.0)
    assert r("Answer: 17", 100) == pytest.approx(-0.5)
    assert r("Answer: 18", 100, truncated=True) == -1.0


def test_every_registered_reward_reports_correctness():
    for name, fn in rewards.REWARDS.items():
        completion = rewards.Completion("Step 1: 9 + 9 = 18\nAnswer: 18", num_tokens=12, max_new_tokens=64)
        value = fn(completion, example(3))
        assert isinstance(value, float) and completion.parts["correct"] == 1.0, name


# -----------------------------------------------------------------------------
# GRPO on hand-built tensors


def test_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0,   -2.0, -2.0, -2.0, -2.0,   0.0, 0.0, 0.0, 4.0])
    adv, zero = s2.group_advantages(rewards, 4)
    assert zero.tolist() == [False, True, False]
    groups = adv.view(3, 4)
    assert groups[1].abs().max() == 0.0
    for g in (0, 2):
        assert groups[g].mean().abs() < 1e-6
        assert groups[g].std() == pytest.approx(1.0, abs=1e-3)       # (r - mean) / (std + eps)
    assert groups[0].argsort().tolist() == [0, 1, 2, 3]
    two, _ = s2.group_advantages(torch.tensor([0.0, 1.0, 5.0, -5.0]), 2)
    assert two.tolist() == pytest.approx([-0.7071, 0.7071, 0.7071, -0.7071], abs=1e-3)


@pytest.mark.parametrize("adv,ratio,expected_loss,grad_sign", [
    (+1.0, 1.10, -1.10, -1),   # inside the clip range: the ratio itself, gradient raises logp
    (+1.0, 1.50, -1.20, 0),    # A > 0 above 1 + eps: clipped, no gradient
    (+1.0, 0.50, -0.50, -1),   # A > 0 below 1 - eps: the unclipped term is the min, still pushed up
    (-1.0, 0.50, +0.80, 0),    # A < 0 below 1 - eps: clipped, no gradient
    (-1.0, 1.50, +1.50, +1),   # A < 0 above 1 + eps: unclipped, gradient lowers logp
    (-1.0, 0.90, +0.90, +1),   # inside the range, negative advantage
])
def test_clipped_surrogate_value_and_gradient(adv, ratio, expected_loss, grad_sign):
    old = torch.tensor([[-1.0]])
    new = (old + math.log(ratio)).clone().requires_grad_(True)
    loss, stats = s2.grpo_loss(new, old, torch.tensor([adv]), torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(expected_loss, abs=1e-5)
    grad = float(new.grad)
    if grad_sign == 0:
        assert grad == 0.0 and stats.clipped == 1
    else:
        assert math.copysign(1, grad) == grad_sign and grad == pytest.approx(-adv * ratio, abs=1e-5)
        assert stats.clipped == 0


def test_k3_kl_is_zero_for_equal_policies_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(5, 7, 11, generator=g), -1)
    assert s2.k3_kl(logp, logp).abs().max() == 0.0
    other = torch.log_softmax(torch.randn(5, 7, 11, generator=g), -1)
    assert (s2.k3_kl(logp, other) > 0).all()
    # and its expectation under pi is KL(pi || pi_ref)
    p = logp[0, 0].exp()
    assert float((p * s2.k3_kl(logp[0, 0], other[0, 0])).sum()) == pytest.approx(
        float((p * (logp[0, 0] - other[0, 0])).sum()), rel=1e-5)


def test_kl_term_is_beta_times_k3_worked_out_by_hand():
    """One completion of two tokens, pi_old = pi (ratio 1, so the surrogate is -A on each token)
    and a reference that differs from pi: d = ref - new = -0.5 and +1.0, k3 = exp(d) - d - 1 =
    0.1065307 and 0.7182818, each token's loss -A + beta k3 and its gradient -A + beta (1 - exp(d)),
    averaged over the two tokens (seq-mean). A flipped or missing KL term, or k3 of new - ref,
    gives other numbers."""
    new = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    loss, stats = s2.grpo_loss(new, new.detach().clone(), torch.tensor([0.5]), torch.ones(1, 2, dtype=torch.bool),
                               ref, beta=0.1)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(((-0.5 + 0.1 * 0.1065307) + (-0.5 + 0.1 * 0.7182818)) / 2, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(-0.4587594, abs=1e-6)
    assert stats.kl == pytest.approx(0.1065307 + 0.7182818, abs=1e-6)   # summed over tokens, for the metrics
    assert new.grad[0].tolist() == pytest.approx([(-0.5 + 0.1 * (1 - 0.6065307)) / 2,
                                                  (-0.5 + 0.1 * (1 - 2.7182818)) / 2], abs=1e-6)


def random_batch(seed=0, B=4, C=6):
    g = torch.Generator().manual_seed(seed)
    new = (torch.randn(B, C, generator=g) * 0.1 - 1).requires_grad_(True)
    old = new.detach() + torch.randn(B, C, generator=g) * 0.1
    ref = new.detach() + torch.randn(B, C, generator=g) * 0.3
    lengths = torch.tensor([6, 3, 1, 4])[:B]
    mask = torch.arange(C)[None, :] < lengths[:, None]
    adv = torch.randn(B, generator=g)
    return new, old, ref, mask, adv


@pytest.mark.parametrize("agg", ["seq-mean", "token-mean"])
def test_padding_never_changes_the_loss(agg):
    new, old, ref, mask, adv = random_batch()
    loss, _ = s2.grpo_loss(new, old, adv, mask, ref, beta=0.1, loss_agg=agg)
    loss.backward()
    grad = new.grad.clone()
    # three more padded columns holding garbage (inf and nan included), and garbage under the mask
    junk = torch.tensor([float("inf"), float("nan"), 123.0])
    new2 = torch.cat([new.detach(), junk.expand(4, 3)], 1)
    new2[~torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)] = 55.0
    new2.requires_grad_(True)
    pad = lambda t: torch.cat([t, junk.expand(4, 3)], 1)
    mask2 = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], 1)
    loss2, _ = s2.grpo_loss(new2, pad(old), adv, mask2, pad(ref), beta=0.1, loss_agg=agg)
    loss2.backward()
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-6)
    assert torch.allclose(new2.grad[:, :6][mask], grad[mask], atol=1e-7)
    assert new2.grad[~mask2].abs().max() == 0


def test_aggregations_and_micro_batches():
    new, old, ref, mask, adv = random_batch(seed=1)
    per_token = -(torch.exp(new - old) * adv[:, None]).detach()  # ratios near 1: nothing clips
    seq = sum(per_token[i][mask[i]].mean() for i in range(4)) / 4
    tok = per_token[mask].sum() / mask.sum()
    assert float(s2.grpo_loss(new, old, adv, mask, clip_eps=10)[0].detach()) == pytest.approx(float(seq), abs=1e-6)
    assert float(s2.grpo_loss(new, old, adv, mask, clip_eps=10, loss_agg="token-mean")[0].detach()) == pytest.approx(float(tok), abs=1e-6)
    for agg, total in (("seq-mean", 4), ("token-mean", int(mask.sum()))):
        whole = s2.grpo_loss(new, old, adv, mask, ref, 0.1, loss_agg=agg)[0]
        halves = sum(s2.grpo_loss(new[a:b], old[a:b], adv[a:b], mask[a:b], ref[a:b], 0.1, loss_agg=agg, total=total)[0]
                     for a, b in ((0, 1), (1, 4)))
        assert halves.item() == pytest.approx(whole.item(), abs=1e-6)


def test_zero_variance_group_carries_no_policy_gradient():
    new, old, ref, mask, _ = random_batch(seed=2)
    rewards = torch.tensor([1.0, 1.0, 0.0, 2.0])  # group 0 (rows 0, 1) has no spread
    adv, zero = s2.group_advantages(rewards, 2)
    assert zero.tolist() == [True, False]
    loss, _ = s2.grpo_loss(new, old, adv, mask, clip_eps=0.2)
    loss.backward()
    assert new.grad[:2].abs().max() == 0.0
    assert new.grad[2:][mask[2:]].abs().min() > 0.0
    # the KL pull is the only thing such a group could still contribute
    new.grad = None
    s2.grpo_loss(new, old, adv, mask, ref, beta=0.5)[0].backward()
    assert new.grad[:2][mask[:2]].abs().max() > 0.0


def grpo_rows(model, groups=3, G=2, seed=0):
    """Hand-made GRPO rows for optimise: `groups` prompts of different lengths, G completions of
    each (1 to 7 tokens), pi_old and pi_ref near the policy (some ratios clip) and advantages."""
    g = torch.Generator().manual_seed(seed)
    prompt_of_group = [torch.randint(1, 256, (3 + 2 * i,), generator=g).tolist() for i in range(groups)]
    prompts = [prompt_of_group[row // G] for row in range(groups * G)]
    completions = [torch.randint(1, 256, (1 + 5 * row % 7,), generator=g).tolist() for row in range(groups * G)]
    with torch.no_grad():
        logprobs, _ = token_logprobs(model, prompts, completions, 0.7, 0)
    near = lambda scale: [(row[:len(c)] + scale * torch.randn(len(c), generator=g)).tolist()  # noqa: E731
                          for row, c in zip(logprobs, completions)]
    return prompts, completions, near(0.1), near(0.3), torch.randn(groups * G, generator=g)


def optimise_gradients(model, rows, dist, n_sampled, **config):
    """The gradients one optimise call steps with (beta 0.1, no clipping of the gradient norm, and
    the sampler's pi_old kept however far it is from the trainer's)."""
    prompts, completions, old, ref, adv = rows
    cfg = s2.GRPOConfig(model="m", out="o", beta=0.1, temperature=0.7, max_new_tokens=8, max_grad_norm=1e9,
                        recompute_gap=1e9, **config)
    optimizer = GradientRecorder(model)
    s2.optimise(model, optimizer, SimpleNamespace(pad_token_id=0), cfg, dist, prompts, completions, list(old), ref,
                adv, lr=0.0, n_sampled=n_sampled)
    return optimizer.grads


@pytest.mark.parametrize("agg", s2.LOSS_AGGREGATIONS)
def test_micro_batches_take_the_gradient_of_the_whole_batch(agg):
    """optimise normalises each micro-batch by the whole batch's count (its completions, all their
    tokens, or Dr. GRPO's L_max x every sampled completion, 2 of 8 left out of the loss here), so
    --micro-batch-size changes memory, not the step: micro-batches of 1, or of 4 and 2, give the
    gradient of one pass over the 6 rows. (Normalising by each micro-batch's own count would not,
    nor would Dr. GRPO's constant if it counted the trained completions only.)"""
    model = small_policy()
    rows = grpo_rows(model)
    whole = optimise_gradients(model, rows, Dist(), n_sampled=8, loss_agg=agg, micro_batch_size=6)
    assert max(float(g.abs().max()) for g in whole) > 1e-3
    for micro in (1, 4):
        split = optimise_gradients(model, rows, Dist(), n_sampled=8, loss_agg=agg, micro_batch_size=micro)
        for a, b in zip(split, whole):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    if agg == "dr-grpo":   # its constant counts the completions left out too: twice as many, half the step
        doubled = optimise_gradients(model, rows, Dist(), n_sampled=16, loss_agg=agg, micro_batch_size=6)
        for a, b in zip(doubled, whole):
            torch.testing.assert_close(a, b / 2, rtol=1e-5, atol=1e-9)


def test_step_examples_cover_each_epoch_once():
    picks = [step_examples(10, 4, step, seed=3) for step in range(5)]  # 20 prompts = 2 epochs
    flat = [p for step in picks for p in step]
    assert sorted(i for e, i in flat if e == 0) == list(range(10))
    assert sorted(i for e, i in flat if e == 1) == list(range(10))
    assert [i for e, i in flat if e == 0] != [i for e, i in flat if e == 1]  # reshuffled
    assert picks[3] == step_examples(10, 4, 3, seed=3)


# -----------------------------------------------------------------------------
# Short runs on the tiny world


def shorter_is_better(completion, example):
    """A reward that a few GRPO steps can surely move: minus the completion's share of the limit."""
    completion.parts.update(correct=float(is_correct(extract_answer(completion.text), example.answer)))
    return -completion.num_tokens / completion.max_new_tokens


def run_args(world, out, *extra):
    return ["--model", str(world.base_model), "--teacher-data", str(world.teacher), "--rows", ":", "--out", str(out),
            "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "128", "--lr", "1e-4",
            "--lr-schedule", "constant", "--warmup-ratio", "0", "--weight-decay", "0",  # as before the authors' schedule
            "--beta", "0.04", "--seed", "0", "--quiet", *extra]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_world_run_raises_reward_and_resumes(tiny_world, tmp_path, monkeypatch):
    from generate import compile_decode
    from model import Qwen2
    monkeypatch.setitem(rewards.REWARDS, "shorter", shorter_is_better)  # a new reward is one dict entry
    straight = tmp_path / "straight"
    options = ["--reward", "shorter", "--max-steps", "6", "--lr", "5e-4"]
    summary = s2.main(run_args(tiny_world, straight, *options, "--save-every", "3"))
    rows = metrics(straight)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("reward", "reward_correct", "accuracy", "completion_tokens", "zero_variance_groups", "truncated",
                "kl", "clip_fraction", "rollout_seconds", "train_seconds"):
        assert all(r[key] is not None for r in rows), key
    # each step samples other prompts, so one step's reward is noisy: compare the means of the
    # first two and the last three steps, and ask for a rise above twice the standard error of
    # their difference, from the spread of the rewards logged at each step (16 completions a step).
    # (At lr 1e-4 the rise was within that noise: 6 steps moved the reward by 0.006.)
    mean = lambda key, part: sum(r[key] for r in part) / len(part)  # noqa: E731
    variance = lambda part: sum(r["reward_std"] ** 2 for r in part) / len(part)  # noqa: E731
    first, last = rows[:2], rows[3:]
    noise = math.sqrt(variance(first) / (16 * len(first)) + variance(last) / (16 * len(last)))
    assert mean("reward", last) > mean("reward", first) + 2 * noise, (mean("reward", first), mean("reward", last), noise)
    assert mean("completion_tokens", last) < mean("completion_tokens", first)
    last = rows[-1]
    assert all(r["trained_completions"] > 0 for r in rows)      # every step trained (gentle lr)...
    assert all(r["kl"] > 0 for r in rows[1:])                   # ...and moved away from the reference
    assert summary["last_reward"] == last["reward"]
    # the final checkpoint sits beside metrics.jsonl and loads
    Qwen2.from_pretrained(straight)
    assert (straight / "checkpoint-3" / "trainer_state.json").is_file()

    # the finished run is not overwritten by a fresh start in the same folder
    with pytest.raises(SystemExit, match="already holds a run"):
        s2.main(run_args(tiny_world, straight, *options))
    assert metrics(straight) == rows

    # resume: a run that stopped after step 3 continues exactly as the straight run did, here
    # with --compile (which may change on resume): the compiled decode step samples from the
    # weights as each step updates them (aot_eager: traced as inductor would, no code generated)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-3", resumed / "checkpoint-3")
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))  # one step too many
    compiled = []
    monkeypatch.setattr(s2, "compile_decode", lambda m: compiled.append(compile_decode(m, backend="aot_eager")))
    s2.main(run_args(tiny_world, resumed, *options, "--resume", "--compile"))
    assert len(compiled) == 1
    again = metrics(resumed)
    assert [r["step"] for r in again] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows[3:], again[3:]):
        assert b["reward"] == pytest.approx(a["reward"], abs=1e-6)
        assert b["completion_tokens"] == a["completion_tokens"]


def test_a_reward_is_a_function_of_completion_and_example(tiny_world, tmp_path):
    """`def reward(completion, example) -> float` is enough; the loop still logs accuracy (eval's
    grading) and format, and what it hands the reward is the completion's text, tokens, limit and cut."""
    seen = []

    def longer(completion, example):
        seen.append((example.answer, completion))
        return float(len(completion.text))

    config = s2.GRPOConfig(model=str(tiny_world.base_model), out=str(tmp_path / "run"), group_size=2,
                           prompts_per_step=2, max_steps=2, max_new_tokens=16, save_every=0, quiet=True)
    examples = load_teacher_data(str(tiny_world.teacher), rows=slice(0, 8))
    s2.train_grpo(config, examples, s2.prompt_builder("plain"), longer)
    rows = metrics(tmp_path / "run")
    assert len(seen) == 2 * 2 * 2 and all(r["accuracy"] is not None for r in rows)
    formatted = sum(rewards.well_formed(rewards.answer_part(c.text)) for _, c in seen)
    assert sum(r["reward_format"] * 4 for r in rows) == pytest.approx(formatted)   # 4 completions a step
    assert all(c.max_new_tokens == 16 and 1 <= c.num_tokens <= 16 for _, c in seen)
    assert all(c.num_tokens == 16 for _, c in seen if c.truncated)     # only the limit cuts
    assert sum(c.truncated for _, c in seen) == round(sum(r["truncated"] * 4 for r in rows))


def watch_rollouts_and_loss(monkeypatch):
    """Record (prompt, completion) of every sampled row, and of every row the loss's forward
    conditions on (token_logprobs with gradients on: not the no-grad pi_ref pass), in order."""
    sampled, trained = [], []
    real_rollout, real_logprobs = s2.rollout, s2.token_logprobs

    def rollout(*args, **kwargs):
        out = real_rollout(*args, **kwargs)
        sampled.extend(zip(map(tuple, out.prompts), map(tuple, out.completions)))
        return out

    def logprobs(model, prompts, completions, *args, **kwargs):
        if torch.is_grad_enabled():
            trained.extend(zip(map(tuple, prompts), map(tuple, completions)))
        return real_logprobs(model, prompts, completions, *args, **kwargs)
    monkeypatch.setattr(s2, "rollout", rollout)
    monkeypatch.setattr(s2, "token_logprobs", logprobs)
    return sampled, trained


def test_groups_without_reward_spread_are_left_out_of_the_loss(tiny_world, tmp_path, monkeypatch):
    """Which rows train, observed in the loss's forward: the completions of the groups whose
    rewards differ, and no other, unless --keep-zero-variance asks for every completion (which
    then carries the KL pull only). The reward is flat for half the questions, the text's length
    for the others."""
    examples = load_teacher_data(str(tiny_world.teacher), rows=slice(0, 8))
    flat = {e.question for e in examples[::2]}
    rewards = []

    def reward(completion, example):
        rewards.append(0.0 if example.question in flat else float(len(completion.text)))
        return rewards[-1]
    sampled, trained = watch_rollouts_and_loss(monkeypatch)
    for keep in (False, True):
        for record in (rewards, sampled, trained):
            record.clear()
        config = s2.GRPOConfig(model=str(tiny_world.base_model), out=str(tmp_path / f"keep-{keep}"), group_size=2,
                               prompts_per_step=4, max_steps=1, max_new_tokens=16, save_every=0, quiet=True,
                               keep_zero_variance=keep)
        s2.train_grpo(config, examples, s2.prompt_builder("plain"), reward)
        spread = [max(rewards[g:g + 2]) > min(rewards[g:g + 2]) for g in range(0, 8, 2)]
        assert len(sampled) == 8 and True in spread and False in spread   # both kinds of group this step
        assert trained == [row for r, row in enumerate(sampled) if keep or spread[r // 2]]


def test_truncated_exclude_and_ppo_epochs(tiny_world, tmp_path, monkeypatch):
    """--truncated exclude leaves cut completions out of the loss; --ppo-epochs 2 takes a second
    optimiser step on the same rollouts, where the ratio to the sampling policy has moved from 1
    and clipping starts (with one epoch the ratio is 1 up to float rounding: nothing clips)."""
    cut = lambda name, *extra: metrics_of(s2.main(run_args(  # noqa: E731
        tiny_world, tmp_path / name, "--max-steps", "1", "--max-new-tokens", "4", "--keep-zero-variance",
        "--save-every", "0", *extra)), tmp_path / name)
    kept, excluded = cut("keep"), cut("exclude", "--truncated", "exclude")
    assert kept["truncated"] == excluded["truncated"] == 1.0     # 4 tokens never finish an answer
    assert kept["trained_completions"] == 16 and excluded["trained_completions"] == 0
    monkeypatch.setitem(rewards.REWARDS, "chars", lambda completion, example: float(len(completion.text)))  # reward spread
    one, two = (metrics_of(s2.main(run_args(
        tiny_world, tmp_path / f"ppo{n}", "--max-steps", "1", "--max-new-tokens", "16", "--reward", "chars",
        "--lr", "1e-2", "--save-every", "0", "--ppo-epochs", str(n))), tmp_path / f"ppo{n}") for n in (1, 2))
    assert one["trained_completions"] == two["trained_completions"] > 0
    assert one["clip_fraction"] == 0 and two["clip_fraction"] > 0.01
    from model import Qwen2
    weights = [Qwen2.from_pretrained(tmp_path / f"ppo{n}").state_dict() for n in (1, 2)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def metrics_of(summary, out):
    rows = metrics(out)
    assert len(rows) == 1
    return rows[0]
