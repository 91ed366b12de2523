"""model.py against transformers' Qwen2 (the numerical reference) on small random checkpoints."""
import json
import shutil

import pytest
import torch

from conftest import QWEN_TOKENIZER, SHARED
from generate import generate, token_logprobs
from lora import add_lora, lora_disabled, merged_state_dict
from model import KVCache, Qwen2, Qwen2Config
from tokenizer import load_tokenizer

transformers = pytest.importorskip("transformers")


def reference_model(tied: bool, seed: int = 0, vocab: int = 320):
    """transformers' Qwen2 with every weight random (biases and norms included, so a wrong
    bias or norm in our model cannot hide behind HF's zero/one initialisation)."""
    config = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
        max_position_embeddings=256, rope_theta=10000.0, eos_token_id=vocab - 1, bos_token_id=vocab - 1)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08)
    return model


@pytest.fixture(scope="module", params=[pytest.param(True, id="tied"), pytest.param(False, id="untied")])
def pair(request, tmp_path_factory):
    """transformers' model and ours, loaded from transformers' save_pretrained in one file. (A
    sharded save loads the very same weights: test_a_sharded_checkpoint_loads_like_one_file.)"""
    ref = reference_model(request.param)
    folder = tmp_path_factory.mktemp("hf")
    ref.save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    return ref, Qwen2.from_pretrained(folder), folder


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_sharded_checkpoint_loads_like_one_file(tied, tmp_path):
    """Sharding matters to loading alone: from several files and their index (the tied head in
    none of them), from_pretrained gives the weights of the one-file save bit for bit, so every
    other test here, run on the one-file pair, holds for sharded checkpoints too."""
    ref = reference_model(tied)
    ref.save_pretrained(tmp_path / "one")
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    one, sharded = Qwen2.from_pretrained(tmp_path / "one"), Qwen2.from_pretrained(tmp_path / "sharded")
    a, b = one.state_dict(), sharded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 320, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (sharded(ids) - ref(ids).logits).abs().max().item() < 1e-4


def test_logits_match_transformers(pair):
    ref, ours, _ = pair
    ids = torch.randint(0, 320, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(ids).logits
        got = ours(ids)
    assert got.shape == (3, 17, 320)
    assert (got - expected).abs().max().item() < 1e-4


def test_padded_batch_matches_transformers(pair):
    ref, ours, _ = pair
    ids = torch.randint(0, 320, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :4] = 0   # left padding
    mask[2, 9:] = 0   # right padding
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (got - expected)[real].abs().max().item() < 1e-4


def test_right_padded_rows_need_no_mask(pair, monkeypatch):
    """The tiny world pre-trains without a mask (causal attention only): with the padding on the
    right, every real token's logits are those of the masked forward, also under bf16 autocast
    (where model.attention runs in float32), and gradients flow through it."""
    _, ours, _ = pair
    ids = torch.randint(0, 320, (3, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False
    with torch.no_grad():
        masked, unmasked = ours(ids, attention_mask=mask), ours(ids)
    assert (masked - unmasked)[mask].abs().max().item() < 1e-5
    assert (masked - unmasked)[~mask].abs().max().item() > 1e-3  # the padding's outputs do differ
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked16, unmasked16 = ours(ids, attention_mask=mask), ours(ids)
    assert (masked16.float() - masked)[mask].abs().max().item() < 0.1
    assert (unmasked16.float() - masked)[mask].abs().max().item() < 0.1
    # the attention itself runs in float32 under CPU autocast, with a mask or without
    seen = []

    def recording_sdpa(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        seen.append(out.dtype)
        return out
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours(ids), ours(ids, attention_mask=mask)
    layers = ours.config.num_hidden_layers
    assert seen == [torch.float32] * (2 * layers)
    monkeypatch.undo()
    ours.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours(ids).float()[mask].logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())
    ours.zero_grad()


def test_kv_cache_decoding_equals_full_forward(pair):
    _, ours, _ = pair
    ids = torch.randint(0, 320, (2, 14), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = ours(ids)
        cache = KVCache(ours.config, 2, 14, "cpu", torch.float32)
        steps = [ours(ids[:, :6], cache=cache)]
        for t in range(6, 14):
            steps.append(ours(ids[:, t:t + 1], cache=cache))
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-4


def test_greedy_generation_batched_equals_single_and_transformers(pair):
    ref, ours, _ = pair
    prompts = [[5, 17, 42, 9, 100, 3], [7], [250, 251, 12, 13]]
    eos = 319
    batched = generate(ours, prompts, max_new_tokens=12, eos_token_ids=[eos])
    for prompt, tokens in zip(prompts, batched.tokens):
        alone = generate(ours, [prompt], max_new_tokens=12, eos_token_ids=[eos]).tokens[0]
        assert tokens == alone
        hf = ref.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                          eos_token_id=eos, pad_token_id=0)[0, len(prompt):].tolist()
        assert tokens == hf


def test_save_then_transformers_loads_same_logits(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path / "saved")
    files = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= files
    from safetensors import safe_open
    with safe_open(tmp_path / "saved" / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not ours.config.tie_word_embeddings)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (back(ids).logits - ours(ids)).abs().max().item() < 1e-5
    assert not any(p.name.startswith(".saved.tmp") for p in tmp_path.iterdir())


def test_save_replaces_existing_checkpoint(pair, tmp_path):
    _, ours, _ = pair
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "stale.txt").write_text("old")
    ours.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "stale.txt").exists()
    assert Qwen2.from_pretrained(tmp_path / "ckpt").config.vocab_size == 320


def test_sampling_is_reproducible_and_logprobs_match(pair):
    _, ours, _ = pair
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5]]
    a = generate(ours, prompts, 10, temperature=0.8, top_p=0.9, num_samples=3, seed=7, return_logprobs=True)
    b = generate(ours, prompts, 10, temperature=0.8, top_p=0.9, num_samples=3, seed=7, return_logprobs=True)
    c = generate(ours, prompts, 10, temperature=0.8, top_p=0.9, num_samples=3, seed=8)
    assert a.tokens == b.tokens and len(a.tokens) == 6
    assert a.tokens != c.tokens
    rows = [prompts[i // 3] for i in range(6)]
    with torch.no_grad():
        lp, mask = token_logprobs(ours, rows, a.tokens, temperature=0.8)
    for i, tokens in enumerate(a.tokens):
        assert mask[i].sum().item() == len(tokens)
        assert torch.allclose(lp[i, :len(tokens)], torch.tensor(a.logprobs[i]), atol=1e-4)


def test_top_p_keeps_only_the_nucleus():
    from generate import sample_next
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {sample_next(logits, 1.0, 0.7, g)[0].item() for _ in range(300)}
    assert seen == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: token 2 and 3 are cut
    seen = {sample_next(logits, 1.0, 1.0, g)[0].item() for _ in range(600)}
    assert seen == {0, 1, 2, 3}


def test_nucleus_is_the_same_with_or_without_the_full_sort():
    # the GPU sorts every row in full (no read-back); the CPU looks at the top 1024 first and sorts
    # only rows they do not cover: a peaked row (top 1024 enough) and a flat one (they are not)
    from generate import nucleus
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5000, generator=g)
    logits[0] *= 8    # peaked
    logits[1] *= 0.3  # nearly flat: the top 1024 of 5000 hold about a quarter of the mass
    probs = torch.softmax(logits, -1)
    for top_p in (0.5, 0.9):
        kept = []
        for full_sort in (True, False):
            top_probs, top_ids = nucleus(probs, top_p, full_sort=full_sort)
            kept.append(torch.zeros_like(probs).scatter(-1, top_ids, top_probs))
        assert torch.equal(kept[0], kept[1])
        assert 0 < (kept[0][0] > 0).sum() < 1024 < (kept[0][1] > 0).sum()  # both paths were taken
        smallest_kept = kept[0].masked_fill(kept[0] == 0, 1.0).min(-1).values
        assert torch.all(kept[0].sum(-1) >= top_p) and torch.all(kept[0].sum(-1) - smallest_kept < top_p)


def test_draw_follows_the_weights_and_never_picks_a_zero(monkeypatch):
    from generate import draw
    g = torch.Generator().manual_seed(0)
    weights = torch.tensor([[0.0, 1.0, 0.0, 3.0, 6.0, 0.0]]).repeat(40000, 1)  # any total, zeros inside and at the end
    counts = torch.bincount(draw(weights, g), minlength=6).double() / 40000
    assert counts[[0, 2, 5]].sum() == 0
    assert torch.allclose(counts[[1, 3, 4]], torch.tensor([0.1, 0.3, 0.6], dtype=torch.double), atol=0.01)
    # if u * total rounds up to the total, the last token of non-zero weight is taken, not the zero after it
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.ones(*shape, dtype=kw.get("dtype")))
    assert draw(torch.tensor([[0.0, 2.0, 0.0]])).tolist() == [1]


def test_eos_stop_strings_and_length(pair):
    _, ours, _ = pair
    free = generate(ours, [[5, 6, 7]], max_new_tokens=8, eos_token_ids=[])
    assert free.finish_reasons == ["length"] and len(free.tokens[0]) == 8
    first = free.tokens[0][2]
    stopped = generate(ours, [[5, 6, 7]], max_new_tokens=8, eos_token_ids=[first])
    assert stopped.finish_reasons == ["eos"]
    assert stopped.tokens[0] == free.tokens[0][:free.tokens[0].index(first) + 1]


def test_lora_merge_and_reference(pair, tmp_path):
    _, _, folder = pair
    model = Qwen2.from_pretrained(folder)
    base = Qwen2.from_pretrained(folder)
    add_lora(model, rank=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids = torch.randint(0, 320, (2, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        adapted = model(ids)
        with lora_disabled(model):
            assert torch.allclose(model(ids), base(ids), atol=1e-6)
        assert (adapted - base(ids)).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "merged", state_dict=merged_state_dict(model))
    merged = Qwen2.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        assert (merged(ids) - adapted).abs().max().item() < 1e-4


def test_lora_scale_is_alpha_over_rank():
    """An adapted projection computes W x + b + (alpha / r) B A x and merges to W + (alpha / r) B A,
    checked against numbers worked out by hand: rank 4 and alpha 2 scale B A by 0.5, where alpha
    alone or r / alpha would scale it by 2 and rsLoRA's alpha / sqrt(r) by 1."""
    from lora import LORA_TARGETS
    attention = torch.nn.Module()
    for name in LORA_TARGETS:
        setattr(attention, name, torch.nn.Linear(2, 2))
    layer = torch.nn.Module()
    layer.self_attn = attention
    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer])
    add_lora(model, rank=4, alpha=2.0, dropout=0.0)
    q = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q.base.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        q.base.bias.copy_(torch.tensor([0.1, -0.1]))
        q.lora_A.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
        q.lora_B.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))  # B A = [[1, 0], [1, 1]]
    x = torch.tensor([[1.0, -1.0]])
    # W x + b = [-1 + 0.1, -1 - 0.1]; 0.5 B A x = 0.5 [1, 0]
    assert torch.allclose(q(x), torch.tensor([[-0.4, -1.1]]))
    assert torch.allclose(q.merged_weight(), torch.tensor([[1.5, 2.0], [3.5, 4.5]]))


def test_token_logprobs_ignore_padding(pair):
    _, ours, _ = pair
    prompts, completions = [[3, 4, 5, 6], [9]], [[10, 11], [12, 13, 14, 15]]
    with torch.no_grad():
        both, mask = token_logprobs(ours, prompts, completions, temperature=0.7)
        for i in range(2):
            alone, _ = token_logprobs(ours, [prompts[i]], [completions[i]], temperature=0.7)
            n = len(completions[i])
            assert torch.allclose(both[i, :n], alone[0, :n], atol=1e-5)
            assert not mask[i, n:].any() and (both[i, n:] == 0).all()


def test_a_shared_prompt_runs_once_with_the_same_logprobs_and_gradients(pair, monkeypatch):
    """GRPO groups (runs of rows with one prompt) put each prompt through the network once; the
    log-probs and the gradients are those of running every row whole."""
    import generate as generate_module
    _, ours, _ = pair
    prompts = [[1, 2, 3, 4]] * 3 + [[5, 6]] + [[7, 8, 9, 10, 11, 12]] * 2
    completions = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [31, 32, 33], []]
    assert generate_module.prompt_runs(prompts) == [3, 1, 2]
    prompt_tokens = []
    real_hidden_states = type(ours).hidden_states
    def counting(self, input_ids, *args, **kwargs):
        prompt_tokens.append(input_ids.shape[0])
        return real_hidden_states(self, input_ids, *args, **kwargs)
    monkeypatch.setattr(type(ours), "hidden_states", counting)
    results = {}
    for share in (False, True):
        ours.zero_grad()
        lp, mask = token_logprobs(ours, prompts, completions, temperature=0.7, share_prompts=share)
        lp.sum().backward()
        results[share] = lp.detach(), mask, [p.grad.clone() for p in ours.parameters()]
    assert prompt_tokens == [6, 3, 6]  # whole rows; then the 3 distinct prompts, then the 6 completions
    (whole, whole_mask, whole_grads), (shared, shared_mask, shared_grads) = results[False], results[True]
    assert torch.equal(whole_mask, shared_mask)
    assert torch.allclose(whole, shared, atol=1e-5)
    for a, b in zip(whole_grads, shared_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    ours.zero_grad()


def test_loading_errors_name_file_and_tensor(pair, tmp_path):
    _, ours, _ = pair
    from safetensors.torch import load_file, save_file
    ours.save_pretrained(tmp_path / "good")
    weights = load_file(tmp_path / "good" / "model.safetensors")

    def variant(name, tensors):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        save_file(tensors, folder / "model.safetensors")
        return folder

    missing = dict(weights)
    del missing["model.norm.weight"]
    with pytest.raises(ValueError, match="model.norm.weight"):
        Qwen2.from_pretrained(variant("missing", missing))
    extra = dict(weights, **{"model.layers.9.mlp.up_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"model.safetensors: unexpected tensor model.layers.9.mlp.up_proj.weight"):
        Qwen2.from_pretrained(variant("extra", extra))
    wrong = dict(weights, **{"model.norm.weight": torch.zeros(63)})
    with pytest.raises(ValueError, match=r"model.safetensors: tensor model.norm.weight has shape \(63,\)"):
        Qwen2.from_pretrained(variant("shape", wrong))
    (tmp_path / "empty").mkdir()
    shutil.copyfile(tmp_path / "good" / "config.json", tmp_path / "empty" / "config.json")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        Qwen2.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        Qwen2.from_pretrained(tmp_path / "nowhere")


def test_config_reads_official_files_and_rejects_missing_keys():
    config = Qwen2Config.from_json(SHARED / "configs" / "qwen2.5-3b.json")
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads, config.head_dim) == (2048, 36, 2, 128)
    assert config.tie_word_embeddings and config.rope_theta == 1e6
    seven = Qwen2Config.from_json(SHARED / "configs" / "qwen2.5-7b.json")
    assert not seven.tie_word_embeddings and seven.vocab_size == 152064
    raw = json.loads((SHARED / "configs" / "qwen2.5-0.5b.json").read_text())
    del raw["hidden_size"]
    with pytest.raises(ValueError, match="missing required key.*hidden_size"):
        Qwen2Config.from_dict(raw, source="cfg.json")


LAYOUT = json.loads((SHARED / "configs" / "safetensors_layout.json").read_text())["models"]


@pytest.mark.parametrize("name", sorted(LAYOUT))
def test_official_layout_parameter_names_and_count(name):
    """Our parameter names and shapes are exactly those of each official checkpoint."""
    entry = LAYOUT[name]
    config = Qwen2Config.from_json(SHARED / "configs" / entry["config_file"])
    with torch.device("meta"):
        model = Qwen2(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == entry["tensors"]
    assert len(ours) == entry["num_tensors"]
    assert model.num_parameters() == entry["num_parameters"]


def test_tokenizer_ids_and_special_tokens(tiny_qwen_checkpoint):
    tok = load_tokenizer(QWEN_TOKENIZER)
    assert tok.encode("Hello world") == [9707, 1879]
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.decode([9707, 1879]) == "Hello world"
    # the shared folder holds the instruct tokenizer config: EOS <|im_end|>, pad <|endoftext|>
    assert tok.eos_token_ids == [151645] and tok.pad_token_id == 151643
    base = load_tokenizer(tiny_qwen_checkpoint)  # base config + base generation config
    assert base.eos_token_ids == [151643] and base.pad_token_id == 151643


def test_text_so_far_is_the_full_decode():
    """TextSoFar (generate's stop_fn text) equals decode(all tokens) after every token, also
    mid-character: Qwen's ids below 256 are single bytes, many of them halves of a UTF-8 character,
    and the ids for multi-byte words and special tokens are mixed in."""
    import generate as generate_module
    tok = load_tokenizer(QWEN_TOKENIZER)
    words = tok.encode("Ünïcödé 数学 ✓ 🙂 Answer: 12\n") + [151643, 151645]  # <|endoftext|>, <|im_end|>
    rng = torch.Generator().manual_seed(0)
    for trial in range(300):
        n = int(torch.randint(1, 60, (1,), generator=rng))
        pool = torch.randint(0, 2, (n,), generator=rng).tolist()
        ids = [int(torch.randint(0, 256, (1,), generator=rng)) if p else words[int(torch.randint(0, len(words), (1,), generator=rng))]
               for p in pool]
        text = generate_module.TextSoFar(tok)
        for k in range(1, n + 1):
            assert text(ids[:k]) == tok.decode(ids[:k]), (trial, ids[:k])


def test_stop_fn_sees_what_full_decoding_saw(pair, monkeypatch):
    """generate with TextSoFar gives the tokens and finish reasons of the old rule (decode every
    token at every step), on sampled completions from a 320-token vocabulary (Qwen's bytes)."""
    import generate as generate_module
    from eval import should_stop
    _, ours, _ = pair
    tok = load_tokenizer(QWEN_TOKENIZER)
    rules = [should_stop, lambda text: text.count("\ufffd") >= 3 or len(text) > 40, lambda text: "e" in text[-3:]]
    prompts = [[5, 6, 7], [40, 41], [100, 200, 300, 12]]

    def run():
        return [generate(ours, prompts, max_new_tokens=48, temperature=1.0, num_samples=6, seed=seed,
                         eos_token_ids=[319], stop_fn=rule, tokenizer=tok)
                for rule in rules for seed in range(3)]

    new = run()
    monkeypatch.setattr(generate_module, "TextSoFar", lambda tokenizer: tokenizer.decode)  # the old rule
    old = run()
    reasons = set()
    for a, b in zip(new, old):
        assert a.tokens == b.tokens and a.finish_reasons == b.finish_reasons
        reasons.update(a.finish_reasons)
    assert {"stop", "length"} <= reasons


def test_compiled_decode_step_generates_what_eager_does(tmp_path):
    """compile_decode (the --compile option): the same tokens, finish reasons and log-probs as the
    eager step, through batch compaction (rows ending at EOS) and GRPO-style groups, with a
    handful of graphs for all steps and calls rather than one per cache length. The
    aot_eager backend traces the step as inductor would and runs it without generating code,
    so this checks our side (shapes, cache mutation, guards) in seconds."""
    torch._dynamo.reset()
    reference_model(tied=True).save_pretrained(tmp_path)
    eager, compiled = Qwen2.from_pretrained(tmp_path), Qwen2.from_pretrained(tmp_path)
    from generate import compile_decode
    compile_decode(compiled, backend="aot_eager")
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5], [4] * 11, [30, 31]]
    free = generate(eager, prompts, 12, temperature=1.0, top_p=0.9, num_samples=3, seed=0, eos_token_ids=[])
    greedy = generate(eager, prompts, 12, eos_token_ids=[])
    # many rows end early (the batch gets compacted), some run to the length limit
    eos = sorted({t[3] for t in free.tokens[::2]} | {greedy.tokens[0][3]})
    counters = torch._dynamo.utils.counters["stats"]
    graphs_before, reasons = counters["unique_graphs"], []
    for batch, kwargs in ((prompts, dict(temperature=1.0, top_p=0.9, num_samples=3, seed=0)),
                          (prompts[1:3], dict(temperature=0.0))):
        a = generate(eager, batch, 12, eos_token_ids=eos, return_logprobs=True, **kwargs)
        b = generate(compiled, batch, 12, eos_token_ids=eos, return_logprobs=True, **kwargs)
        assert b.tokens == a.tokens and b.finish_reasons == a.finish_reasons
        reasons += a.finish_reasons
        for x, y in zip(a.logprobs, b.logprobs):
            assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-5)
    assert reasons.count("eos") >= 4 and "length" in reasons
    assert 1 <= counters["unique_graphs"] - graphs_before <= 3
