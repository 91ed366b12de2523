"""GRPO learns, on its own: a run on the tiny world's test base raises its mean reward.

The held-out accuracy of the curriculum is measured by `bash curriculum.sh tiny` (README); this is
the small version that fits in the suite. The test world's base is right only 10-15% of the time,
too rarely for a correctness reward to show a rise in a few steps, but its answers vary in length
by a dozen words within a group, so a length reward has spread from the first step. If GRPO's
pieces (group advantages, the clipped ratio, the sign of the loss, the optimiser step) did not
add up to "make the better completions more likely", this reward would not rise.
"""
import json
import math

import rewards
import stage2_grpo as s2
from eval import extract_answer
from teacher import load_teacher_data


def brevity(completion: rewards.Completion, example) -> float:
    """r = -words/50 when the completion ends in an answer line, else -2 (a reward written the
    way a reader would write one: a plain function of the completion)."""
    text = completion.text
    answered = extract_answer(text) is not None and "Answer:" in text
    completion.parts.update(correct=float(rewards.is_right(text, example)), answered=float(answered),
                            words=len(text.split()))
    return -len(text.split()) / 50 if answered else -2.0


def test_grpo_raises_a_length_reward_and_keeps_the_answer_format(tiny_world, tmp_path):
    examples = load_teacher_data(str(tiny_world.teacher), rows=slice(200, None))
    config = s2.GRPOConfig(model=str(tiny_world.base_model), out=str(tmp_path / "run"), group_size=4,
                           prompts_per_step=4, max_steps=30, lr=3e-4, beta=0.0, temperature=1.0, top_p=1.0,
                           max_new_tokens=96, save_every=0, quiet=True, seed=0,
                           lr_schedule="constant", warmup_ratio=0.0, weight_decay=0.0)
    s2.train_grpo(config, examples, s2.prompt_builder("plain"), brevity)
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 30
    first, last = steps[:5], steps[-5:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    # measured at this seed: about -1.7 over the first five steps, -0.8 over the last five (-1.66 and
    # -0.76 on the 400-step test base of fd66954, 83 -> 36 words)
    assert mean(last, "reward") > mean(first, "reward") + 0.3
    assert mean(last, "reward_words") < mean(first, "reward_words") - 15
    # shorter, but still in eval's format: answered no less often in the last five steps than in
    # the run's own first five, but for sampling noise (three standard errors of the difference of
    # two rates of 5 x 16 completions: 0.08 at 0.97, 0.14 at 0.9), and never under the 0.8 this
    # test asked before (per step 0.81-1.0 measured, 0.99 in the first five and 0.95 in the last)
    answered = mean(first, "reward_answered"), mean(last, "reward_answered")
    rate = sum(answered) / 2
    noise = math.sqrt(rate * (1 - rate) * 2 / (5 * 16))
    assert answered[1] >= answered[0] - 3 * noise, answered
    assert answered[1] >= 0.8, answered
