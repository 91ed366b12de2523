"""
A hand-written Qwen2.5, the one place in this project that knows the architecture.

Everything else (the three curriculum stages, the evaluation, the tiny world) goes through
this file: it reads an official Hugging Face checkpoint, runs the forward pass, and writes
checkpoints that transformers can read back (sampling and scoring completions are in
generate.py). The parameter names are exactly Hugging Face's (`model.layers.0.self_attn.q_proj.weight`,
...), so official safetensors load strictly with no renaming table.

Read it top to bottom:
  1. Qwen2Config       - the hyper-parameters, read from a config.json
  2. the network       - RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, the
                         decode step generate.py calls and the float32 LM head it samples from
  3. KVCache           - preallocated keys/values for generation
  4. loading / saving  - from_pretrained (local folder or hub id), save_pretrained
The LoRA adapters (lora.py) and the tokenizer (tokenizer.py) live beside it. This file imports
nothing else of the project: a model with adapters is saved by passing save_pretrained the
merged state dict (lora.merged_state_dict).

Quick check:
    python -c "from model import *; m = Qwen2.from_pretrained('Qwen/Qwen2.5-0.5B'); print(m)"
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

# -----------------------------------------------------------------------------
# 1. Config


@dataclass
class Qwen2Config:
    """The fields of a Hugging Face Qwen2 `config.json` that the forward pass uses."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    torch_dtype: str = "float32"
    # every other key of the original file, written back unchanged by save_pretrained
    extra: dict = field(default_factory=dict, repr=False)

    REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> "Qwen2Config":
        missing = [k for k in cls.REQUIRED if k not in raw]
        if missing:
            raise ValueError(f"{source}: missing required key(s) {', '.join(missing)}")
        # Features the official Qwen2.5 checkpoints do not use; refuse rather than silently ignore.
        if raw.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported")
        if raw.get("rope_scaling"):
            raise ValueError(f"{source}: rope_scaling={raw['rope_scaling']} is not supported")
        if raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act={raw['hidden_act']!r}, only 'silu' is supported")
        raw = dict(raw)
        # transformers 5 writes `rope_parameters: {rope_theta, rope_type}` and `dtype`
        # where the official Qwen2.5 files have `rope_theta` and `torch_dtype`
        rope = raw.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"{source}: rope_type={rope['rope_type']!r} is not supported")
        if "rope_theta" not in raw and "rope_theta" in rope:
            raw["rope_theta"] = rope["rope_theta"]
        if "torch_dtype" not in raw and isinstance(raw.get("dtype"), str):
            raw["torch_dtype"] = raw["dtype"]
        if any(t != "full_attention" for t in raw.get("layer_types") or []):
            raise ValueError(f"{source}: only full-attention layers are supported (layer_types)")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in raw.items() if k in names}
        known.setdefault("num_key_value_heads", raw["num_attention_heads"])  # HF's default
        config = cls(**known, extra={k: v for k, v in raw.items() if k not in names})
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"{source}: hidden_size {config.hidden_size} is not divisible by "
                             f"num_attention_heads {config.num_attention_heads}")
        if config.num_attention_heads % config.num_key_value_heads:
            raise ValueError(f"{source}: num_attention_heads {config.num_attention_heads} is not "
                             f"divisible by num_key_value_heads {config.num_key_value_heads}")
        return config

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Qwen2Config":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict:
        out = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
               "hidden_act": "silu", "use_sliding_window": False}
        out.update(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out


# -----------------------------------------------------------------------------
# 2. The network


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # normalise in float32 (as the reference does), then scale in the input dtype
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """cos/sin of shape [batch, time, head_dim] for the given integer positions."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device,
                                             dtype=torch.int64).float() / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # [B, T, head_dim/2]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x, cos, sin):
    """x: [B, heads, T, d]; rotates pairs (i, i + d/2), the layout Qwen2 was trained with."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class Attention(nn.Module):
    def __init__(self, config: Qwen2Config, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=True)
        self.k_proj = nn.Linear(h, self.n_kv_heads * d, bias=True)
        self.v_proj = nn.Linear(h, self.n_kv_heads * d, bias=True)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=False)

    def forward(self, x, cos, sin, mask, cache: "KVCache | None"):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.write(self.layer_index, k, v)  # all keys so far: [B, KV, S, d]
        group = self.n_heads // self.n_kv_heads
        if mask is None:
            # No padding: causal attention from SDPA's `is_causal` alone, no [T, T] mask to build
            # or read. Each KV head is repeated for the `group` query heads it serves (the
            # stacking below would break the causal diagonal).
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        else:
            # Grouped-query attention without copying K/V: query heads that share a KV head are
            # stacked along the time axis, [B, KV, group*T, d], and the mask is stacked to match.
            q = q.reshape(B, self.n_kv_heads, group * T, self.head_dim)
            if group > 1:
                mask = mask.unsqueeze(2).expand(B, 1, group, T, mask.shape[-1]).reshape(B, 1, group * T, -1)
        out = attention(q, k, v, mask)
        out = out.reshape(B, self.n_heads, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out)


def attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v by SDPA; causal when there is no mask. Under bf16
    autocast on a CPU it runs in float32: PyTorch's CPU attention kernel is slower in bf16 than
    in float32, and the tiny world's pre-training step is the one caller under CPU autocast
    (benchmarks/pretrain_step.py; figures in docs/performance.md)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                  is_causal=mask is None)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


class MLP(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: Qwen2Config, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """Named `model` inside Qwen2, so parameter names come out as `model.layers.0...`."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        # `_weight` skips the random init, which would be wasted on loaded weights (and on the
        # meta device it drags in torch._dynamo, seconds of import time)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         _weight=torch.empty(config.vocab_size, config.hidden_size))
        if not self.embed_tokens.weight.is_meta:
            nn.init.normal_(self.embed_tokens.weight)  # nn.Embedding's own default init
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Qwen2(nn.Module):
    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = Body(config)
        # A tied head reuses the embedding matrix; it is then not a separate parameter, so the
        # state dict has exactly the tensors an official tied checkpoint stores.
        self.lm_head = None if config.tie_word_embeddings else \
            nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.source_dir: Path | None = None  # where the weights came from (tokenizer files live there)

    @property
    def device(self):
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.model.embed_tokens.weight.dtype

    def init_weights(self, seed: int = 0, std: float | None = None):
        """Random weights (normal(0, initializer_range), norms at 1, biases at 0), for tests and the tiny world."""
        g = torch.Generator().manual_seed(seed)
        std = std if std is not None else self.config.extra.get("initializer_range", 0.02)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def hidden_states(self, input_ids, attention_mask=None, position_ids=None, cache: "KVCache | None" = None):
        """The final normed hidden states [B, T, hidden].

        attention_mask: [B, T], 1 for real tokens and 0 for padding (left or right); None: no
            padding (with no cache: causal attention alone, no mask tensor).
        position_ids: [B, T]; by default counted over the real tokens of each row.
        cache: keys/values of earlier tokens; this call appends to it.
        """
        B, T = input_ids.shape
        if attention_mask is None and cache is None:
            # no padding, nothing cached: plain causal attention, no mask tensor. Right-padded
            # rows may come here too, when nothing reads the padding's outputs: a real token
            # never looks at the padding after it.
            mask = None
            if position_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
            attention_mask = attention_mask.bool()
            if position_ids is None:
                start = cache.next_position if cache is not None else 0
                position_ids = start + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            if cache is not None:
                mask = cache.attention_mask(attention_mask)  # [B, 1, T, S]
            else:
                causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
                # every query may see itself, so fully padded rows give finite (ignored) outputs
                mask = causal & (attention_mask[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=input_ids.device))
        x = self.model.embed_tokens(input_ids)
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        if cache is not None:
            cache.advance(T, position_ids[:, -1] + 1)
        return self.model.norm(x)

    @property
    def head_weight(self):
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden):
        return F.linear(hidden, self.head_weight)

    def decode_step(self, tokens, cache: "KVCache", head):
        """generate's per-token call: one new token per row [B] through the network, appended to
        the cache; float32 logits [B, vocab] of the next token (head: the LM head's weight in
        float32). generate.compile_decode replaces it on one model by a torch.compile'd version."""
        return float32_logits(self.hidden_states(tokens[:, None], cache=cache)[:, -1], head)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        """Logits [batch, time, vocab]."""
        return self.logits(self.hidden_states(input_ids, attention_mask, position_ids, cache))

    # loading and saving are defined below, next to the file formats they read
    @classmethod
    def from_pretrained(cls, path_or_id, dtype=None, device=None) -> "Qwen2":
        return load_pretrained(path_or_id, dtype=dtype, device=device)

    def save_pretrained(self, out_dir, tokenizer_dir=None, state_dict=None):
        save_pretrained(self, out_dir, tokenizer_dir=tokenizer_dir, state_dict=state_dict)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def float32_logits(hidden, head_weight):
    """The LM head in float32 whatever the weights' dtype or autocast, for sampling and for
    log-probabilities. A bf16 logit near 20 is a multiple of 0.125, an error that goes straight
    into log p; the sampler (token by token, cached) and the trainer (one full-sequence pass)
    would round differently, and GRPO's ratio pi / pi_old would clip on rounding noise."""
    with torch.autocast(hidden.device.type, enabled=False):
        return F.linear(hidden.float(), head_weight.float())


# -----------------------------------------------------------------------------
# 3. KV cache: allocated once per generate call; layers write into it in place.


class KVCache:
    def __init__(self, config: Qwen2Config, batch_size: int, max_len: int, device, dtype):
        # one tensor per layer rather than one for all: under torch.compile (compile_decode) a
        # write into a slice of one shared tensor was copied whole, every layer at every step;
        # per layer it is written in place
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # real token in slot?
        self.length = 0  # slots filled so far (the same for every row: padding fills slots too)
        self.next_position = torch.zeros(batch_size, 1, dtype=torch.long, device=device)

    def attention_mask(self, attention_mask):
        """Mask [B, 1, T, S] for T new tokens that go into slots length..length+T-1."""
        T = attention_mask.shape[1]
        start, end = self.length, self.length + T
        if end > self.valid.shape[1]:
            raise ValueError(f"KV cache is full: {end} slots needed, {self.valid.shape[1]} allocated")
        self.valid[:, start:end] = attention_mask
        key_slots = torch.arange(end, device=self.valid.device)
        query_slots = torch.arange(start, end, device=self.valid.device)
        causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
        itself = key_slots[None, :] == query_slots[:, None]
        return (causal & (self.valid[:, None, None, :end] | itself))

    def write(self, layer: int, k, v):
        T = k.shape[2]
        self.k[layer][:, :, self.length:self.length + T] = k
        self.v[layer][:, :, self.length:self.length + T] = v
        end = self.length + T
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, T: int, next_position):
        self.length += T
        self.next_position = next_position[:, None]

    def select_rows(self, rows):
        """Keep (or repeat) batch rows, e.g. to drop finished sequences or to share one prefill."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.valid = self.valid.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)


# -----------------------------------------------------------------------------
# 4. Loading and saving checkpoints

HUB_FILES = ["*.json", "*.safetensors", "merges.txt", "vocab.json", "tokenizer*"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def looks_like_path(name: str) -> bool:
    """Whether a name that is not on disk was meant as a local path rather than a hub id
    (`org/name`): it starts with ./ ../ / or ~, has more than one slash, or names a folder that
    exists (`runs/stage1` with runs/ present is a typo, not a hub repository called `runs`).
    The same rule as cli.looks_like_path (torch-free, for the data files); tests/test_cli.py
    holds both to one table."""
    name = str(name)
    if name.startswith(("./", "../", "/", "~")) or name in (".", ".."):
        return True
    separators = name.count("/") + (name.count(os.sep) if os.sep != "/" else 0)
    if separators != 1:
        return True
    return Path(name).parent.is_dir()


def _make_readable(path: Path, folder: bool = False):
    """Give what tempfile or safetensors made (0600, or 0700 for a folder) the permissions an
    ordinary open() would have given it: 0666 (0777) less the umask, which os.umask can only
    read by setting it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


def resolve_checkpoint_dir(path_or_id) -> Path:
    """A local folder as it is; anything else is treated as a Hugging Face hub id and downloaded
    (weights, configs and tokenizer files only) into the hub cache."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path}: expected a checkpoint folder, found a file")
    name = str(path_or_id)
    if looks_like_path(name):  # a typo in a local path: say so, rather than ask the hub for it
        raise FileNotFoundError(f"{path}: no such folder (a checkpoint folder, or a hub id like 'Qwen/Qwen2.5-0.5B')")
    from huggingface_hub import snapshot_download  # installed with `datasets`
    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, no such repository, gated: one line that names both readings
        raise FileNotFoundError(f"{name}: no such local folder, and the hub download failed "
                                f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e


def parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def open_safetensors(path: Path):
    """safe_open, with a damaged file (truncated, or not safetensors at all) named in the error."""
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError, not an OSError
        raise ValueError(f"{path}: not a readable safetensors file, truncated or damaged ({e})") from None


def checkpoint_files(folder: Path) -> dict[str, list[str]]:
    """{safetensors file: [tensor names]} from model.safetensors or an index of shards."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
        files: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            files.setdefault(shard, []).append(name)
        for shard in files:
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"{folder / shard}: shard listed in {index.name} is missing")
        return files
    if single.is_file():
        with open_safetensors(single) as f:
            return {single.name: list(f.keys())}
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def load_pretrained(path_or_id, dtype=None, device=None) -> Qwen2:
    """Build the model on the meta device (no memory), then read each tensor straight into its
    final dtype and device, so at most one tensor is ever held twice."""
    folder = resolve_checkpoint_dir(path_or_id)
    config = Qwen2Config.from_json(folder / "config.json")
    dtype = parse_dtype(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device("meta"):
        model = Qwen2(config)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    state = {}
    for file_name, names in checkpoint_files(folder).items():
        path = folder / file_name
        with open_safetensors(path) as f:
            for name in names:
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue  # some tied checkpoints store the head too; it equals the embedding
                if name not in expected:
                    raise ValueError(f"{path}: unexpected tensor {name}")
                try:
                    tensor = f.get_tensor(name)
                except Exception as e:  # safetensors' own error type: data past the end of the file
                    raise ValueError(f"{path}: tensor {name} cannot be read, the file is damaged ({e})") from None
                if tuple(tensor.shape) != expected[name]:
                    raise ValueError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                     f"config says {expected[name]}")
                tensor = tensor.to(device=device, dtype=dtype or tensor.dtype)
                # a NaN or inf weight (a diverged run saved anyway) poisons every output; refuse it
                # here, by name, rather than evaluate or train on NaN logits
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise ValueError(f"{path}: tensor {name} holds NaN or infinite values")
                state[name] = tensor
    missing = [name for name in expected if name not in state]
    if missing:
        raise ValueError(f"{folder}: checkpoint lacks tensor {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    model.load_state_dict(state, strict=True, assign=True)
    model.source_dir = folder
    return model.eval()


def check_state_keys(config: Qwen2Config, state: dict) -> None:
    """Refuse a state dict whose names are not exactly the architecture's: a checkpoint must load
    strictly, here and in transformers."""
    with torch.device("meta"):  # names only: no memory, no random init
        expected = Qwen2(config).state_dict()
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise ValueError(f"save_pretrained: keys the model does not have ({', '.join(unexpected[:3])}"
                         f"{', ...' if len(unexpected) > 3 else ''}): merge LoRA adapters first "
                         f"(lora.merged_state_dict)")
    missing = [name for name in expected if name not in state]
    if missing:
        raise ValueError(f"save_pretrained: the state dict lacks tensor {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def save_pretrained(model: Qwen2, out_dir, tokenizer_dir=None, state_dict=None):
    """Write config.json, model.safetensors (state_dict, by default the model's own; no lm_head
    when tied), generation_config.json and the tokenizer files to a temporary folder, then rename
    it into place, so an interrupted save never leaves a half-written checkpoint behind.
    A model with LoRA adapters is saved with state_dict=lora.merged_state_dict(model); its own
    state dict, adapters apart, is refused."""
    out_dir = Path(out_dir)
    state = model.state_dict() if state_dict is None else state_dict
    check_state_keys(model.config, state)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    _make_readable(tmp, folder=True)  # mkdtemp's 0700 would follow the folder into place
    try:
        # model.dtype, or float32 for adapters merged into a 16-bit base (lora.merged_state_dict)
        saved_dtype = state["model.embed_tokens.weight"].dtype
        dtype_name = next(k for k, v in DTYPES.items() if v == saved_dtype)
        config = dataclasses.replace(model.config, torch_dtype=dtype_name)
        (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()},
                  tmp / "model.safetensors", metadata={"format": "pt"})
        _make_readable(tmp / "model.safetensors")  # safetensors creates it 0600 whatever the umask
        source = Path(tokenizer_dir) if tokenizer_dir is not None else model.source_dir
        generation = source / "generation_config.json" if source is not None else None
        if generation is not None and generation.is_file():
            shutil.copyfile(generation, tmp / "generation_config.json")
        else:
            (tmp / "generation_config.json").write_text(json.dumps(
                {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
                 "do_sample": False}, indent=2) + "\n")
        if source is not None:
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, tmp / name)
        old = out_dir.with_name(out_dir.name + ".old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
