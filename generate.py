"""
Generation and scoring with model.py's Qwen2: what the stages and the evaluation do with a model.

model.py is the network and its checkpoints; this file is the two things the rest of the project
asks of a policy:
  1. generate        - batched, left-padded sampling with a KV cache: one prefill per prompt
                       (shared by a GRPO group), one token per live row per step, finished rows
                       dropped, stop rules, the log-prob of every sampled token; `draw` samples;
                       compile_decode puts the decode step under torch.compile (--compile)
  2. token_logprobs  - the log-probabilities of given completions, with gradients (GRPO's loss)

The two agree: a completion that generate sampled gets from token_logprobs the log-probs that
generate returned (the LM head in float32 in both, model.float32_logits), which is what GRPO's
ratio pi / pi_old needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from model import KVCache, Qwen2, float32_logits
from tokenizer import Tokenizer

# -----------------------------------------------------------------------------
# 1. Generation: sampling with a KV cache


@dataclass
class Generation:
    """What generate returns, one entry per row (prompt-major: prompt 0's samples come first)."""
    tokens: list[list[int]]           # new tokens, ending at and including EOS when one was made
    finish_reasons: list[str]         # "eos", "stop" (a stop string or stop_fn) or "length"
    logprobs: list[list[float]] | None = None  # log p(token) at the sampling temperature


class TextSoFar:
    """tokenizer.decode(tokens) of a completion that grows by one token per call, decoding only
    the tokens since the last whole character. generate's stop_fn reads the whole completion at
    every step; decoding all of it each time costs time that grows with its length.

    Why it is exact: a byte-level decoder (Qwen2's) turns each token into bytes, joins them and
    reads them as UTF-8, an unfinished character becoming U+FFFD. When the text of the first n
    tokens does not end in U+FFFD their bytes end on a whole character, so the text of any longer
    list is that text followed by the text of the tokens after n. Mid-character, the tokens since
    the last such point are decoded together. Other decoders (one that joins tokens with spaces
    has no such law) decode every token on every call, as before."""

    def __init__(self, tokenizer: "Tokenizer"):
        self.tokenizer = tokenizer
        self.n_done, self.text_done = 0, ""  # tokens[:n_done] decode to text_done, a whole character at its end

    def __call__(self, tokens: Sequence[int]) -> str:
        if not self.tokenizer.decodes_bytes:
            return self.tokenizer.decode(tokens)
        text = self.text_done + self.tokenizer.decode(tokens[self.n_done:])
        if not text.endswith("\ufffd"):
            self.n_done, self.text_done = len(tokens), text
        return text


def pad_rows(sequences: Sequence[Sequence[int]], pad_id: int, device, side: str = "left"):
    """[B, T] ids and a [B, T] bool mask of real tokens (T >= 1), padded on the left (prompts, so
    every row's next token comes after the last column) or on the right (completions, so every
    one starts in the first column)."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for i, s in enumerate(sequences):
        if len(s):
            columns = slice(width - len(s), width) if side == "left" else slice(0, len(s))
            ids[i, columns] = torch.tensor(list(s), dtype=torch.long)
            mask[i, columns] = True
    return ids.to(device), mask.to(device)


def sample_next(logits, temperature: float, top_p: float, generator=None):
    """Pick one token per row. Returns (tokens [B], log-probs [B] under softmax(logits / T)).

    The log-prob is taken before top-p truncation: it is the policy's own probability, the
    number token_logprobs() recomputes later for the GRPO importance ratio."""
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0]
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    probs = logprobs.exp()
    if top_p < 1.0:
        top_probs, top_ids = nucleus(probs, top_p)
        tokens = top_ids.gather(-1, draw(top_probs, generator)[:, None])[:, 0]
    else:
        tokens = draw(probs, generator)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def nucleus(probs, top_p: float, full_sort: bool | None = None):
    """Top-p truncation: (probabilities [B, K] in descending order, zero past the smallest set
    of most likely tokens whose mass reaches top_p, and their token ids [B, K]).

    On a CPU most rows need only a few hundred candidates, so look at the top 1024 first and
    sort in full only when those do not reach top_p. That check reads a value back from the
    device, a second wait per generated token on a GPU, where a full sort is cheap: there
    (full_sort=None picks by device) every row is sorted. The result is the same either way."""
    if full_sort is None:
        full_sort = probs.device.type != "cpu"
    if full_sort:
        top_probs, top_ids = probs.sort(dim=-1, descending=True)
    else:
        top_probs, top_ids = probs.topk(min(1024, probs.shape[-1]), dim=-1)
        if (top_probs.sum(-1) < top_p).any():
            top_probs, top_ids = probs.sort(dim=-1, descending=True)
    before = top_probs.cumsum(-1) - top_probs  # mass of the tokens ranked above each token
    return top_probs.masked_fill(before >= top_p, 0.0), top_ids


def draw(weights, generator=None):
    """One index per row of weights [B, V] (non-negative, any total), with probability
    proportional to its weight: torch.multinomial(weights, 1)'s distribution.

    Inverse-CDF sampling: one uniform number u per row, scaled to the row's total, picks the first
    index whose cumulative weight exceeds u. One random number per row where multinomial does work
    per entry (benchmarks/sampling.py; figures in docs/performance.md). An index of weight 0
    is never picked (its interval of the cumulative sum is empty); the sum is in float64 so that
    the many tiny weights of a 150k vocabulary keep their share."""
    cdf = weights.double().cumsum(-1)
    u = torch.rand(weights.shape[0], 1, generator=generator, device=weights.device, dtype=cdf.dtype)
    total = cdf[:, -1:].contiguous()
    picked = torch.searchsorted(cdf, u * total, right=True)[:, 0]
    # u * total can round up to the total itself, past every index; then take the first index
    # where the sum reaches the total (its weight is not 0: the sum grew there)
    return torch.minimum(picked, torch.searchsorted(cdf, total)[:, 0])


def compile_decode(model: Qwen2, backend: str = "inductor") -> Qwen2:
    """Make generate's decode step a torch.compile'd graph on this model (the --compile option).

    dynamic=True makes the batch size and the cache length symbolic, so one graph serves every
    step of every generate call (static shapes would recompile at each new cache length); the
    prompt's prefill stays eager. The first call compiles, which pays only in long runs, on a
    GPU above all, where it fuses the many small kernels a decode step launches. The weights stay
    the model's own tensors, so a compiled policy keeps sampling from its current weights as GRPO
    updates them. `backend="aot_eager"` traces without generating code (what the tests use: it
    is quick)."""
    model.decode_step = torch.compile(model.decode_step, dynamic=True, backend=backend)
    return model


@torch.inference_mode()
def generate(model: Qwen2, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, num_samples: int = 1,
             eos_token_ids: Sequence[int] | int | None = None, pad_token_id: int = 0,
             stop_strings: Sequence[str] = (), stop_fn: Callable[[str], bool] | None = None,
             tokenizer: Tokenizer | None = None, seed: int | None = None,
             generator: torch.Generator | None = None, return_logprobs: bool = False) -> Generation:
    """Complete each prompt (token-id lists of any lengths); `num_samples` completions each.

    How it works: prompts are left-padded into one batch and prefilled once into a KV cache
    sized for prompt + max_new_tokens; with num_samples > 1 the prefilled cache is repeated, so a
    GRPO group shares one prefill. Each decode step feeds one token per live row. Rows stop at an
    EOS id, at a stop string (or when stop_fn(text so far) is true; both need `tokenizer`), or
    at max_new_tokens. When a quarter of the rows have finished they are dropped from the batch,
    so finished rows stop costing work.
    """
    if not prompts:
        return Generation([], [], [] if return_logprobs else None)
    if (stop_strings or stop_fn) and tokenizer is None:
        raise ValueError("generate: stop_strings / stop_fn need the tokenizer to read the text")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    # Rotary positions past the trained window give no error, only garbage: refuse them.
    longest, window = max(len(p) for p in prompts), model.config.max_position_embeddings
    if longest + max_new_tokens > window:
        # (named as generate's argument: the option behind it is --max-new-tokens in eval.py and
        # stages 2-3, --mine-max-new-tokens in stage 3's mining)
        raise ValueError(f"max_new_tokens {max_new_tokens}: a prompt of {longest} tokens plus "
                         f"{max_new_tokens} new tokens is {longest + max_new_tokens}, past the model's context "
                         f"window of {window} (max_position_embeddings in config.json)")
    if eos_token_ids is None:
        eos_token_ids = tokenizer.eos_token_ids if tokenizer is not None else model.config.eos_token_id
    eos_list = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids or [])
    device = model.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    # 1. prefill every distinct prompt once
    ids, mask = pad_rows(prompts, pad_token_id, device)
    cache = KVCache(model.config, len(prompts), ids.shape[1] + max_new_tokens, device, model.dtype)
    # the head in float32 (as token_logprobs), upcast once per call rather than once per step;
    # only the last position goes through it
    head = model.head_weight.float()
    logits = float32_logits(model.hidden_states(ids, attention_mask=mask, cache=cache)[:, -1], head)
    if num_samples > 1:
        rows = torch.arange(len(prompts), device=device).repeat_interleave(num_samples)
        cache.select_rows(rows)
        logits = logits.index_select(0, rows)

    # 2. decode, one token per live row per step
    n_rows = len(prompts) * num_samples
    out_tokens: list[list[int]] = [[] for _ in range(n_rows)]
    out_logprobs: list[list[float]] = [[] for _ in range(n_rows)]
    reasons = ["length"] * n_rows
    live = list(range(n_rows))  # batch row -> original row; -1 once finished (until compaction)
    eos_tensor = torch.tensor(eos_list, device=device, dtype=torch.long)
    longest_stop = max((len(s) for s in stop_strings), default=0)
    text_so_far = [TextSoFar(tokenizer) for _ in range(n_rows)] if stop_fn else []
    for step in range(max_new_tokens):
        tokens, logprobs = sample_next(logits, temperature, top_p, generator)
        # one read from the device per step (on a GPU each read waits for the step to finish;
        # sample_next's top-p check is the only other): the tokens, whether each is an EOS, and
        # its log-prob, stacked as float64, which holds every token id exactly
        read = torch.stack([tokens.double(), torch.isin(tokens, eos_tensor).double(), logprobs.double()]).tolist()
        token_list, is_eos, logprob_list = [int(t) for t in read[0]], read[1], read[2]
        for b, row in enumerate(live):
            if row < 0:
                continue
            out_tokens[row].append(token_list[b])
            if return_logprobs:
                out_logprobs[row].append(logprob_list[b])
            if is_eos[b]:
                reasons[row], live[b] = "eos", -1
            elif stop_strings or stop_fn:
                # a stop string can only end in the newest tokens: decode just those
                tail = tokenizer.decode(out_tokens[row][-(longest_stop + 2):]) if stop_strings else ""
                if any(s in tail for s in stop_strings) or (stop_fn and stop_fn(text_so_far[row](out_tokens[row]))):
                    reasons[row], live[b] = "stop", -1
        n_live = sum(row >= 0 for row in live)
        if n_live == 0 or step == max_new_tokens - 1:
            break
        if n_live <= 0.75 * len(live):
            # compact the batch so finished rows stop costing work; until then they ride along
            # (cheaper than copying the cache after every single finish)
            keep = torch.tensor([b for b, row in enumerate(live) if row >= 0], device=device)
            cache.select_rows(keep)
            tokens = tokens.index_select(0, keep)
            live = [row for row in live if row >= 0]
        logits = model.decode_step(tokens, cache, head)
    return Generation(out_tokens, reasons, out_logprobs if return_logprobs else None)


# -----------------------------------------------------------------------------
# 2. Log-probabilities of given completions (for the GRPO loss)


def pad_prompt_completion(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                          pad_token_id: int, device):
    """Rows laid out as [left padding][prompt][completion][right padding], so every completion
    starts at the same column P. Returns ids [B, P+C], attention mask [B, P+C], the completion
    ids [B, C], their mask [B, C], and P (token_logprobs, its caller, has checked B is one number)."""
    prompt_ids, prompt_mask = pad_rows(prompts, pad_token_id, device)
    comp_ids, comp_mask = pad_rows(completions, pad_token_id, device, side="right")
    return (torch.cat([prompt_ids, comp_ids], 1), torch.cat([prompt_mask, comp_mask], 1),
            comp_ids, comp_mask, prompt_ids.shape[1])


def prompt_runs(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Lengths of the runs of identical consecutive prompts: a GRPO group's G rows are one run."""
    runs: list[int] = []
    for i, prompt in enumerate(prompts):
        if i and list(prompt) == list(prompts[i - 1]):
            runs[-1] += 1
        else:
            runs.append(1)
    return runs


def token_logprobs(model: Qwen2, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                   temperature: float = 1.0, pad_token_id: int = 0, share_prompts: bool = True):
    """log p(completion token t | prompt, tokens before t) under softmax(logits / temperature).

    Returns (logprobs [B, C] float32, mask [B, C] bool); padded positions hold 0. Gradients
    flow, so wrap the call in torch.no_grad() for the sampling-time or reference policy.
    Only the completion positions go through the LM head, which keeps the [B, C, vocab]
    logits (the largest tensor here, vocab = 151,936) as small as it can be.

    Consecutive rows with the same prompt (a GRPO group) run it once (share_prompts): the prompt
    goes through the network for one row, its keys and values are repeated for the others (as
    generate shares a group's prefill), and the completions attend to them. Gradients flow back
    through the repeat into the one prompt pass, so a group of G costs one prompt forward and
    backward instead of G; the numbers are the same up to float rounding (with dropout on, the
    group's rows share the prompt's dropout mask; GRPO trains without dropout). Under gradient
    checkpointing (which the cached pass does not do) every row runs its whole sequence."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    runs = prompt_runs(prompts)
    checkpointed = model.gradient_checkpointing and model.training and torch.is_grad_enabled()
    if share_prompts and len(runs) < len(prompts) and not checkpointed:
        hidden, comp_ids, comp_mask = shared_prompt_hidden(model, prompts, completions, runs, pad_token_id)
    else:
        ids, mask, comp_ids, comp_mask, P = pad_prompt_completion(prompts, completions, pad_token_id, model.device)
        hidden = model.hidden_states(ids, attention_mask=mask)[:, P - 1:P - 1 + comp_ids.shape[1]]
    logits = float32_logits(hidden, model.head_weight)  # position j predicts token j+1
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logprobs = logits.gather(-1, comp_ids[..., None])[..., 0] - logits.logsumexp(-1)
    return logprobs.masked_fill(~comp_mask, 0.0), comp_mask


def shared_prompt_hidden(model: Qwen2, prompts, completions, runs: list[int], pad_token_id: int):
    """Hidden states [B, C, hidden] that predict each completion token, with each run's prompt
    computed once: its last position predicts the first completion token, the completion's own
    positions the rest. Returns them with the completion ids and mask."""
    device = model.device
    firsts = [sum(runs[:i]) for i in range(len(runs))]
    prompt_ids, prompt_mask = pad_rows([prompts[i] for i in firsts], pad_token_id, device)
    comp_ids, comp_mask = pad_rows(completions, pad_token_id, device, side="right")
    cache = KVCache(model.config, len(runs), prompt_ids.shape[1] + comp_ids.shape[1], device, model.dtype)
    prompt_last = model.hidden_states(prompt_ids, attention_mask=prompt_mask, cache=cache)[:, -1]
    rows = torch.tensor([run for run, n in enumerate(runs) for _ in range(n)], device=device)  # built on the host: no device read
    cache.select_rows(rows)  # index_select: new tensors, differentiable, so the completions' writes are safe
    comp_hidden = model.hidden_states(comp_ids, attention_mask=comp_mask, cache=cache)
    return torch.cat([prompt_last[rows, None], comp_hidden[:, :-1]], 1), comp_ids, comp_mask
