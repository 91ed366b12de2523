"""
The reward contract of stages 2 and 3, the rewards any stage may take, and the one registry.

A reward is a plain function `reward(completion, example) -> float` whose docstring states its
formula. `completion` is what the policy wrote (a Completion: its text, token count, the token
limit it was sampled under and whether the limit cut it); `example` is the record its prompt was
built from: .answer (the gold number as a string), .steps (the teacher's steps), .rationale and
.question. The rules:
  - it returns a finite number: a nan or an inf would spread through its group's advantages into
    the weights, so score refuses one in a line naming the reward and the question;
  - what it writes into completion.parts is logged in metrics.jsonl as reward_<key> (a mean over
    all completions, 0 where it wrote none); accuracy (parts["correct"], eval's grading) and format
    (parts["format"], well_formed) are logged whatever the reward, score filling in those it did
    not set;
  - its own options are its keyword parameters after (completion, example), each with a default
    (the paper's words_per_step, overlong's overlong_buffer); `--reward-option NAME=VALUE` sets
    one, checked against the function and bound once, at start-up (reward_from_args, bind_reward).
`--reward NAME` chooses from REWARDS: the rewards here, the paper's stage-2 reward (registered by
stage2_grpo.py beside its definition) and stage 3's rewriting rewards (stage3_rewrite.py);
`--reward FILE.py:FUNCTION` takes a function from a file of one's own, which needs no entry.

Why a module of its own: both GRPO stages take rewards, and no stage imports another's helpers.
It imports no torch (tests/test_layout.py): a reward file that imports it loads without torch.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import cli
from cli import positive_float, positive_int
from eval import ANSWER_LABEL, extract_answer, is_correct, strip_continuation
from teacher import STEP_MARKER

# -----------------------------------------------------------------------------
# 1. What a reward sees, and how a response's format and answer are judged


@dataclass
class Completion:
    """One sampled completion, as a reward sees it."""
    text: str
    num_tokens: int = 0          # completion tokens, EOS included
    max_new_tokens: int = 256    # the token limit it was sampled under
    truncated: bool = False      # whether the limit cut it
    parts: dict[str, float] = dataclasses.field(default_factory=dict)  # components to log


def well_formed(solution: str) -> bool:
    """The paper's format check, one rule for stages 2 and 3: a `Step k:` label (teacher.py's
    STEP_MARKER, the one that splits the teacher data: any case and spacing) and an answer label
    (eval.ANSWER_LABEL, the one eval reads the answer from: `Answer:` or `Final Answer:`, any case)."""
    return bool(STEP_MARKER.search(solution)) and ANSWER_LABEL.search(solution) is not None


def is_right(text: str, example) -> bool:
    """Whether the answer eval extracts from `text` equals the gold number (eval's grading)."""
    return is_correct(extract_answer(text), str(example.answer))


def answer_part(text: str) -> str:
    """The response up to the end of its first answer line (the authors cut there too): what
    follows the answer is not part of the solution and must not count towards its length."""
    text = strip_continuation(text)
    match = ANSWER_LABEL.search(text)
    end = text.find("\n", match.end()) if match else -1
    return text[:end] if end >= 0 else text


# -----------------------------------------------------------------------------
# 2. The paper's length budget, scaled to the teacher data

# The authors' budget of 35 words a teacher step was set for R1 rationales of ~290 words in ~4.7
# steps, i.e. B is ~0.57 of a teacher step's ~62 words. Other teacher data (GSM8K's own
# solutions: ~58 words in ~4 steps) needs the same share of its own steps, or every response is
# far under B and the length term is ~0 (tiny_world.py scales its world's budget the same way).
PAPER_WORDS_PER_STEP = 35.0
R1_WORDS_PER_STEP = 62.0


def calibrated_words_per_step(examples: Sequence[Any]) -> float:
    """35 * (the teacher data's words per step) / 62, words per step = all rationale words /
    all steps: the paper's budget as the same share of this data's steps."""
    words = sum(len(e.rationale.split()) for e in examples)
    steps = sum(len(e.steps) for e in examples)
    return round(PAPER_WORDS_PER_STEP * words / max(steps, 1) / R1_WORDS_PER_STEP, 1)


# -----------------------------------------------------------------------------
# 3. Rewards any stage may take (the paper's own are in their stages: reward_paper in
#    stage2_grpo.py, paper_rewrite in stage3_rewrite.py)


def reward_correct(completion: Completion, example) -> float:
    """Correctness only: 1 if the extracted answer equals the gold number, else 0."""
    correct = is_right(completion.text, example)
    completion.parts.update(correct=float(correct))
    return float(correct)


def reward_overlong(completion: Completion, example, overlong_buffer: int = 64) -> float:
    """Correctness (+1 / -1) plus DAPO's soft overlong penalty (Yu et al. 2025), in tokens.

    With L = completion tokens, L_max = max_new_tokens and a buffer L_c = overlong_buffer:
      penalty = 0                              if L <= L_max - L_c
                (L_max - L_c - L) / L_c        if L_max - L_c < L <= L_max   (0 down to -1)
    so answers are free to be long until they approach the limit, then pay linearly."""
    correct, n = is_right(completion.text, example), completion.num_tokens
    threshold = completion.max_new_tokens - overlong_buffer
    penalty = 0.0 if n <= threshold else max((threshold - n) / max(overlong_buffer, 1), -1.0)
    completion.parts.update(correct=float(correct), overlong=penalty)
    return (1.0 if correct else -1.0) + penalty


def reward_cosine(completion: Completion, example) -> float:
    """Cosine length-scaled reward (Yeo et al. 2025, "Demystifying long chain-of-thought").

    With x = L / L_max (L = completion tokens, L_max = max_new_tokens):
      r = r_L + (r_0 - r_L) * (1 + cos(pi * x)) / 2
    right: r_0 = 1, r_L = 0.5 (shorter is better); wrong: r_0 = -1, r_L = -0.5 (a wrong answer
    is punished less when the model at least kept thinking); cut by the limit: -1."""
    correct = is_right(completion.text, example)
    if completion.truncated:
        value = -1.0
    else:
        r0, rL = (1.0, 0.5) if correct else (-1.0, -0.5)
        x = min(completion.num_tokens / max(completion.max_new_tokens, 1), 1.0)
        value = rL + (r0 - rL) * 0.5 * (1.0 + math.cos(math.pi * x))
    completion.parts.update(correct=float(correct))
    return value


RewardFn = Callable[[Completion, Any], float]


# The one registry of rewards, by the name --reward takes, for every stage that takes rewards:
# stage 2 adds the paper's reward ("paper") beside its definition, stage 3 its rewriting rewards,
# and a reward kept in a file of one's own needs no entry (`--reward FILE.py:FUNCTION`, load_reward).
REWARDS: dict[str, RewardFn] = {
    "correct": reward_correct,
    "overlong": reward_overlong,
    "cosine": reward_cosine,
}


def score(reward_fn: RewardFn, completion: Completion, example) -> float:
    """reward_fn(completion, example), refused in one line when it is not a finite number: a nan
    or inf would spread through its group's advantages into the weights. Then the parts logged
    whatever the reward is, where it set none: format (well_formed of answer_part) and, when the
    example has a gold answer, correct (is_right), both of the text as sampled."""
    text = completion.text
    value = float(reward_fn(completion, example))
    if not math.isfinite(value):
        name = getattr(getattr(reward_fn, "func", reward_fn), "__name__", repr(reward_fn))  # partial: its function
        question = " ".join(str(getattr(example, "question", example)).split())
        raise ValueError(f"reward {name} returned {value} for the question "
                         f"{question[:80] + ('...' if len(question) > 80 else '')!r}: a reward must be a finite number")
    part = completion.parts
    if "format" not in part:
        part["format"] = float(well_formed(answer_part(text)))
    if "correct" not in part and getattr(example, "answer", None) is not None:
        part["correct"] = float(is_right(text, example))
    return value


# -----------------------------------------------------------------------------
# 4. Choosing a reward on the command line, and binding its options


def add_reward_arguments(group, default: str):
    """--reward and the reward's options (stages 2 and 3; reward_from_args reads them)."""
    group.add_argument("--reward", default=default,
                       help=f"the reward: one of {', '.join(sorted(REWARDS))}, or FILE.py:FUNCTION for a "
                            f"reward in a file of your own")
    group.add_argument("--reward-option", action="append", default=[], metavar="NAME=VALUE",
                       help="set one of the reward's keyword parameters (repeatable), e.g. words_per_step=20 "
                            "(default: none, each keeps its default)")
    group.add_argument("--words-per-step", type=positive_float, default=None,
                       help="words_per_step of a reward that takes it, as paper: B = this * teacher steps (None: 35 "
                            "scaled to the teacher data's words per step, see calibrated_words_per_step; printed)")
    group.add_argument("--overlong-buffer", type=positive_int, default=None,
                       help="overlong_buffer of a reward that takes it, as overlong: tokens before the limit where "
                            "the penalty starts (None: the reward's default, 64)")


def load_reward(spec: str) -> RewardFn:
    """The reward --reward names: a name in REWARDS, or FILE.py:FUNCTION, a function in a file of
    one's own (loaded as a module; it may import this file for Completion, answer_part, ...)."""
    if spec in REWARDS:
        return REWARDS[spec]
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name:
        raise cli.UsageError(f"--reward {spec}: not a registered reward ({', '.join(sorted(REWARDS))}) "
                             f"nor FILE.py:FUNCTION")
    if not Path(path).is_file():
        raise cli.UsageError(f"--reward {spec}: {path}: no such file")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    reward = getattr(module, name, None)
    if not callable(reward):
        raise cli.UsageError(f"--reward {spec}: {path} defines no function {name}")
    return reward


def reward_options(reward: RewardFn) -> dict[str, Any]:
    """A reward's own options: its parameters after (completion, example), with their defaults."""
    params = list(inspect.signature(reward).parameters.values())[2:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def option_value(text: str, default: Any) -> Any:
    """A --reward-option value as its default's type (text when the default is None)."""
    if isinstance(default, bool):   # bool("false") would be True
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    return text if default is None else type(default)(text)


def reward_from_args(args) -> tuple[RewardFn, dict[str, Any]]:
    """The reward --reward names and the options given for it, each checked against the reward's
    keyword parameters and converted to its default's type: --reward-option NAME=VALUE, and
    --words-per-step / --overlong-buffer for a reward that takes words_per_step / overlong_buffer
    (ignored by one that does not, so a run script can pass them whatever the reward). Called
    before any work, so a typo costs nothing."""
    reward, name = load_reward(args.reward), args.reward
    known = reward_options(reward)
    options: dict[str, Any] = {}
    for item in args.reward_option:
        key, sep, text = item.partition("=")
        if not sep or key not in known:
            problem = f"reward {name} has no option {key!r}" if sep else "expected NAME=VALUE"
            raise cli.UsageError(f"--reward-option {item}: {problem} (the options of reward {name}: "
                                 f"{', '.join(known) or 'none'})")
        try:
            options[key] = option_value(text, known[key])
        except ValueError:
            raise cli.UsageError(f"--reward-option {item}: reward {name} expects {key} as "
                                 f"{type(known[key]).__name__}, like its default {known[key]!r}") from None
    for key in ("words_per_step", "overlong_buffer"):
        if getattr(args, key) is not None and key in known:
            if key in options:
                raise cli.UsageError(f"--reward-option {key}: given twice, also as --{key.replace('_', '-')}")
            options[key] = getattr(args, key)
    return reward, options


def bind_reward(reward: RewardFn, options: dict[str, Any], examples: Sequence[Any], desc: str) -> RewardFn:
    """The reward with its options bound (functools.partial). A reward that takes words_per_step
    and was not given one gets the paper's 35 calibrated to `examples` (printed once)."""
    options = dict(options)
    if "words_per_step" in reward_options(reward) and "words_per_step" not in options:
        options["words_per_step"] = calibrated_words_per_step(examples)
        words = sum(len(e.rationale.split()) for e in examples) / max(sum(len(e.steps) for e in examples), 1)
        if os.environ.get("RANK", "0") == "0":   # once under torchrun
            print(f"{desc}: --words-per-step {options['words_per_step']:g} (35 x {words:.1f} teacher words per "
                  f"step / {R1_WORDS_PER_STEP:g}, the authors' R1 rationales; pass --words-per-step to override)")
    return functools.partial(reward, **options) if options else reward
