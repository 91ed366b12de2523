"""stage1_reconstruct.py: example construction, the target-only loss, training, checkpoints, resume."""
import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import stage1_reconstruct as s1
from conftest import GradientRecorder, small_policy
from distributed import Dist
from eval import build_prompt
from generate import token_logprobs
from model import Qwen2
from run import lr_at
from tokenizer import load_tokenizer
from teacher import TeacherExample, format_rationale, load_teacher_data, num_masked

STEPS = ["Mia starts with 4 apples.", "She buys 3 more: 4 + 3 = 7.", "She eats 2: 7 - 2 = 5.",
         "She doubles them: 5 x 2 = 10.", "So she has 10 apples."]


def shown_steps(prompt: str) -> list[str]:
    return [line[2:] for line in prompt.split("\n") if line.startswith("- ")]


# -----------------------------------------------------------------------------
# Examples


@pytest.mark.parametrize("n", [1, 2, 5])
def test_masking_and_shuffling_invariants(n):
    ex = TeacherExample("How many apples?", "10", "", STEPS[:n])
    masks, reordered = 0, 0
    for seed in range(400):
        e = s1.reconstruction_example(ex, random.Random(seed), mask_prob=0.7)
        shown = shown_steps(e.prompt)
        assert sorted(e.order) == list(range(n))
        assert shown.count(s1.MASK) == len(e.masked) <= 1
        # the unmasked steps are exactly the teacher's steps less the masked one, as a multiset
        expected = Counter(s for i, s in enumerate(ex.steps) if i not in e.masked)
        assert Counter(s for s in shown if s != s1.MASK) == expected
        assert shown == [s1.MASK if i in e.masked else ex.steps[i] for i in e.order]
        assert e.prompt.startswith("Question: How many apples?\n") and e.prompt.endswith("\nReasoning:")
        assert e.target == "\n" + format_rationale(ex.steps, "10")
        masks += bool(e.masked)
        reordered += e.order != sorted(e.order)
        again = s1.reconstruction_example(ex, random.Random(seed), mask_prob=0.7)
        assert (again.prompt, again.order, again.masked) == (e.prompt, e.order, e.masked)
    assert 0.6 < masks / 400 < 0.8
    assert (reordered > 100) == (n >= 2)
    never = s1.reconstruction_example(ex, random.Random(0), mask_prob=0.0)
    assert never.masked == [] and s1.MASK not in shown_steps(never.prompt)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_masked_steps_half_and_all(n):
    """--masked-steps half hides stage 2's count of steps and all hides every one, whatever
    --mask-prob; the shuffle and the target are the paper's."""
    ex = TeacherExample("How many apples?", "10", "", [f"{i} + 1 = {i + 1}." for i in range(n)])
    for seed in range(50):
        for mode, count in (("half", num_masked(n)), ("all", n)):
            e = s1.reconstruction_example(ex, random.Random(seed), mask_prob=0.0, masked_steps=mode)
            shown = shown_steps(e.prompt)
            assert len(e.masked) == len(set(e.masked)) == count == shown.count(s1.MASK)
            assert shown == [s1.MASK if i in e.masked else ex.steps[i] for i in e.order]
            assert e.target == "\n" + format_rationale(ex.steps, "10")
    assert num_masked(5) == 3 and num_masked(7) == 3 and num_masked(2) == 1


def test_stream_is_a_function_of_seed_and_position():
    examples = [TeacherExample(f"Q{i}?", str(i), "", [f"a{i}", f"b{i}", f"c{i}"]) for i in range(6)]
    a, b = s1.Stream(examples, 1, 0.7, 0.5), s1.Stream(examples, 1, 0.7, 0.5)
    assert len(a) == 9
    first = [a[j].prompt for j in range(18)]
    assert first == [b[j].prompt for j in reversed(range(18))][::-1]  # any access order
    epoch0, epoch1 = first[:9], first[9:]
    assert sorted(p.split("\n")[0] for p in epoch0) == sorted(p.split("\n")[0] for p in epoch1)
    assert epoch0 != epoch1                       # a new order (and new masks) every epoch
    assert sum("Solve this math problem" in p for p in epoch0) == 3  # round(0.5 * 6) plain pairs
    assert [s1.Stream(examples, 2, 0.7, 0.5)[j].prompt for j in range(9)] != epoch0


def test_plain_task_is_standard_distillation():
    """--task plain (the SFT baseline): every item is eval prompt -> the teacher's rationale."""
    examples = [TeacherExample(f"Q{i}?", str(i), "", [f"a{i}", f"b{i}"]) for i in range(5)]
    stream = s1.Stream(examples, 1, 0.7, 0.5, task="plain")
    assert len(stream) == 5
    items = [stream[j] for j in range(10)]
    assert all(e.prompt == build_prompt(e.prompt.split("Question: ")[1].split("\n")[0]) for e in items)
    assert all(e.order is None and e.masked is None for e in items)
    assert sorted(e.target for e in items[:5]) == sorted("\n" + format_rationale(x.steps, x.answer) for x in examples)


def test_lr_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, 10, 4, 1.0) for s in range(10)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(x > y for x, y in zip(lrs[3:], lrs[4:])) and lrs[-1] > 0
    assert lr_at(10, 10, 4, 1.0) == 0.0


# -----------------------------------------------------------------------------
# The loss


def test_max_length_is_cut_to_the_context_window(capsys):
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=64))
    assert s1.within_window(48, model, say=True) == 48 and capsys.readouterr().out == ""
    assert s1.within_window(2048, model, say=True) == 64
    assert "cut at 64 tokens" in capsys.readouterr().out
    assert s1.within_window(2048, model, say=False) == 64 and capsys.readouterr().out == ""   # other ranks


def test_loss_covers_target_tokens_only(tiny_qwen_checkpoint):
    model = Qwen2.from_pretrained(tiny_qwen_checkpoint)
    tok = load_tokenizer(tiny_qwen_checkpoint)
    ex = TeacherExample("Tom has 3 cats and buys 2. How many?", "5", "", ["3 + 2 = 5.", "He has 5 cats."])
    items = [s1.encode(s1.reconstruction_example(ex, random.Random(0), 0.7), tok, 2048),
             s1.encode(s1.plain_example(ex), tok, 2048)]
    assert all(e.target[-1] == tok.eos_token_id for e in items)
    assert tok.decode(items[0].target) == "\nStep 1: 3 + 2 = 5.\nStep 2: He has 5 cats.\nAnswer: 5"
    batch = s1.collate(items, tok.pad_token_id, "cpu")
    for row, e in enumerate(items):
        seq = e.prompt + e.target
        assert batch.labels[row, :len(e.prompt)].eq(s1.IGNORE).all()
        assert batch.labels[row, len(e.prompt):len(seq)].tolist() == e.target
        assert batch.labels[row, len(seq):].eq(s1.IGNORE).all()
    assert batch.target_tokens == sum(len(e.target) for e in items)

    # the summed loss is exactly -log p(target | prompt), computed independently by model.py
    hidden_out = {}
    hook = model.model.norm.register_forward_hook(lambda m, i, o: hidden_out.update(h=o) or o.retain_grad())
    loss = s1.target_loss(model, batch)
    hook.remove()
    logprobs, mask = token_logprobs(model, [e.prompt for e in items], [e.target for e in items],
                                    pad_token_id=tok.pad_token_id)
    assert torch.allclose(loss, -logprobs[mask].sum(), rtol=1e-5)

    # what the model predicts for a prompt (or padding) position never reaches the loss: the
    # gradient at every position whose next token is not a target token is exactly zero
    loss.backward()
    grad = hidden_out["h"].grad.abs().sum(-1)
    for row, e in enumerate(items):
        P, L = len(e.prompt), len(e.prompt) + len(e.target)
        assert grad[row, :P - 1].eq(0).all() and grad[row, L - 1:].eq(0).all()
        assert grad[row, P - 1:L - 1].gt(0).all()


def uneven_examples(seed=1):
    """Four encoded examples whose prompts and targets differ in length (2 to 9 target tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(1, 256, (n,), generator=g).tolist()  # noqa: E731
    return [s1.Encoded(ids(p), ids(t)) for p, t in [(5, 2), (3, 9), (7, 4), (2, 6)]]


def train_step_gradients(model, encoded, micro_batch, dist=None):
    """The gradients train_step steps with (no clipping of the gradient norm)."""
    optimizer = GradientRecorder(model)
    s1.train_step(model, optimizer, optimizer.params, encoded, pad_token_id=0, lr=0.0, micro_batch=micro_batch,
                  max_grad_norm=1e9, dist_ctx=dist or Dist(), autocast=False)
    return optimizer.grads


def test_a_step_in_micro_batches_has_the_gradient_of_the_whole_batch():
    """train_step's loss is the mean over every target token of the step, however the step is
    split: micro-batches of 4, of 1, or of 3 and 1 all give the gradient of
    sum(-log p(target token)) / (all target tokens), computed here example by example with no
    padding. (Dividing each micro-batch by its own token count would weigh the tokens of a short
    example more.)"""
    model = small_policy()
    encoded = uneven_examples()
    total = sum(len(e.target) for e in encoded)
    for e in encoded:
        logits = model(torch.tensor([e.prompt + e.target]))[0, len(e.prompt) - 1:-1]
        (F.cross_entropy(logits.float(), torch.tensor(e.target), reduction="sum") / total).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    for micro_batch in (4, 1, 3):
        for a, b in zip(train_step_gradients(model, encoded, micro_batch), expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# -----------------------------------------------------------------------------
# Training on the tiny world


def run(world, out, *extra):
    return s1.main(["--model", str(world.base_model), "--teacher-data", str(world.teacher), "--out", str(out),
                    "--rows", "0:48", "--batch-size", "4", "--grad-accum", "2", "--lr", "5e-4",
                    "--warmup-steps", "1", "--lora-rank", "0", "--device", "cpu", "--quiet", *extra])


def test_training_lowers_reconstruction_loss_and_output_loads(tiny_world, tmp_path):
    """Full fine-tuning for 8 steps, run as 5 steps and then --resume for the rest. The loss is
    measured on 16 of the rows it trains on, under shuffles and masks of their own (seeded per
    row here, not training's stream): 8 steps on 48 rows lower it by a tenth or more. On 16 rows
    it never saw the drop is smaller (2-16%, depending on how well the base already copies), so
    there the check is only that it drops: the model learned the task, not just its rows."""
    tok = load_tokenizer(tiny_world.base_model)

    def encoded(rows):
        examples = load_teacher_data(str(tiny_world.teacher), rows=rows)
        return [s1.encode(s1.reconstruction_example(e, random.Random(i), 0.7), tok, 2048) for i, e in enumerate(examples)]
    items, held_out = encoded(slice(0, 16)), encoded(slice(48, 64))
    base = Qwen2.from_pretrained(tiny_world.base_model)
    before, held_out_before = (s1.mean_target_loss(base, x, tok.pad_token_id) for x in (items, held_out))
    out = tmp_path / "s1"
    first = run(tiny_world, out, "--max-steps", "8", "--stop-after", "5")
    assert first["steps"] == 5 and (out / "checkpoint-5" / "trainer_state.json").is_file()
    with pytest.raises(SystemExit, match="already holds a run"):
        run(tiny_world, out, "--max-steps", "8")
    second = run(tiny_world, out, "--max-steps", "8", "--resume")
    assert second["steps"] == 8
    trained = Qwen2.from_pretrained(out)
    after, held_out_after = (s1.mean_target_loss(trained, x, tok.pad_token_id) for x in (items, held_out))
    assert after < 0.9 * before, (before, after)
    assert held_out_after < held_out_before, (held_out_before, held_out_after)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert {"loss", "lr", "tokens_per_s", "grad_norm"} <= set(metrics[0])
    assert load_tokenizer(out).eos_token_id == tok.eos_token_id


def test_stop_after_leaves_a_checkpoint_that_resume_finishes_from(tiny_world, tmp_path):
    """LoRA: --stop-after 3 with --save-every 2 leaves checkpoint-2 and the one it stopped at and no
    final model (--keep-checkpoints 0 keeps every one); --resume refuses a changed option, then
    continues the schedule at step 4 and merges the adapters into a plain checkpoint. (That a
    resumed run ends with the weights of one never interrupted, adapters, dropout RNG and
    optimiser included, is test_faults.py's SIGKILL test, whose stage-1 run trains LoRA.)"""
    extra = ["--max-steps", "4", "--save-every", "2", "--lora-rank", "4", "--lr", "1e-2"]
    part = run(tiny_world, tmp_path / "parts", *extra, "--stop-after", "3")
    assert part["steps"] == 3 and not (tmp_path / "parts" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "parts").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    run(tiny_world, tmp_path / "every", "--max-steps", "4", "--save-every", "1", "--keep-checkpoints", "0",
        "--stop-after", "3")  # 0: keep them all
    assert sorted(p.name for p in (tmp_path / "every").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]
    with pytest.raises(SystemExit, match="--mask-prob"):
        run(tiny_world, tmp_path / "parts", *extra, "--resume", "--mask-prob", "0.5")
    run(tiny_world, tmp_path / "parts", *extra, "--resume")
    parts = [json.loads(x) for x in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in parts] == [1, 2, 3, 4]
    assert [m["lr"] for m in parts] == pytest.approx([lr_at(step, 4, 1, 1e-2) for step in range(4)], rel=1e-5)
    b = Qwen2.from_pretrained(tmp_path / "parts").state_dict()
    base = Qwen2.from_pretrained(tiny_world.base_model).state_dict()
    assert b.keys() == base.keys()  # merged: a plain checkpoint
    assert any(not torch.equal(b[k], base[k]) for k in b)
