"""Shared test fixtures: paths into ../shared, tiny random checkpoints, the tiny world."""
import ast
import functools
import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("BRIDGE_SHARED", ROOT.parent / "shared"))
QWEN_TOKENIZER = SHARED / "tokenizers" / "qwen2.5"
GSM8K_TEST = SHARED / "data" / "gsm8k" / "test.jsonl"
GSM8K_TRAIN = SHARED / "data" / "gsm8k" / "train.jsonl"
BRIDGE_STAGE3 = SHARED / "data" / "bridge" / "stage3_error_samples.json"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_config_dict(vocab_size=151936, hidden=32, layers=2, heads=4, kv_heads=2, tied=True, **extra):
    """A Qwen2.5-shaped config.json, small enough to run anywhere."""
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab_size,
            "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 2048,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": tied,
            "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
            "torch_dtype": "float32", **extra}


def small_policy(seed: int = 0):
    """A random Qwen2 with a 256-token vocabulary, to train on hand-made token ids."""
    from model import Qwen2, Qwen2Config
    return Qwen2(Qwen2Config.from_dict(tiny_config_dict(vocab_size=256, hidden=32))).init_weights(seed=seed)


class GradientRecorder:
    """Stands in for the optimiser of one training step: keeps the gradients the step hands it
    (averaged over processes and clipped) and moves no weight, so that two ways of computing the
    same step can be compared."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.param_groups = [{"lr": 0.0}]
        self.grads = None

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        assert self.grads is None, "one optimiser step was expected"
        self.grads = [p.grad.clone() for p in self.params]


@pytest.fixture(scope="session")
def tiny_qwen_checkpoint(tmp_path_factory):
    """A random-weight Qwen2.5-architecture checkpoint with the real Qwen2.5 tokenizer
    (base-model tokenizer config: EOS <|endoftext|>)."""
    from model import Qwen2, Qwen2Config
    import shutil
    tok_dir = tmp_path_factory.mktemp("qwen_tokenizer")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(QWEN_TOKENIZER / name, tok_dir / name)
    shutil.copyfile(QWEN_TOKENIZER / "tokenizer_config.base.json", tok_dir / "tokenizer_config.json")
    shutil.copyfile(SHARED / "configs" / "generation_config" / "qwen2.5-0.5b.json", tok_dir / "generation_config.json")
    model = Qwen2(Qwen2Config.from_dict(tiny_config_dict())).init_weights(seed=0)
    out = tmp_path_factory.mktemp("tiny_qwen") / "checkpoint"
    model.save_pretrained(out, tokenizer_dir=tok_dir)
    return out


@functools.lru_cache(maxsize=None)
def imported_modules(source: str) -> tuple[str, ...]:
    """The top-level name of every module a file's text imports, at the top or inside a function
    (kept per text: parsing is most of what world_key costs)."""
    modules = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules.append(node.module)
    return tuple(module.split(".")[0] for module in modules)


def world_sources(root: Path = ROOT) -> list[str]:
    """The code that builds the tiny world: tiny_world.py and every project file it imports,
    directly or through another, at the top of a file or inside a function (the stage files for
    their prompt builders; model, generate and eval to pre-train and measure the base)."""
    project = {path.stem for path in root.glob("*.py")}
    seen, todo = set(), ["tiny_world"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [m for m in imported_modules((root / f"{name}.py").read_text()) if m in project]
    return sorted(f"{name}.py" for name in seen)


def world_key(preset: str, seed: int, root: Path = ROOT) -> str:
    """The name of a reusable world: its preset and seed, a hash of the code that builds it
    (world_sources: a change there can change the base model, and with it every figure the tests
    measure on it) and the torch version (the build is deterministic for one version only)."""
    digest = hashlib.sha256(torch.__version__.encode())
    for name in world_sources(root):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return f"{preset}-seed{seed}-{digest.hexdigest()[:16]}"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny world's test preset (problems, tokenizer, a briefly pre-trained base model),
    built once per test session (a few minutes on 2 cores). See tiny_world.py. To run test files
    one at a time without rebuilding it, point $BRIDGE_TEST_WORLD at a folder: the world is built
    in a subfolder named by world_key and reused while the code that builds it is unchanged (a
    world built by other code is another subfolder, never reused)."""
    import tiny_world as tw
    cache = os.environ.get("BRIDGE_TEST_WORLD")
    folder = Path(cache) / world_key("test", 0) if cache else tmp_path_factory.mktemp("tiny_world")
    return tw.build_world(folder, preset="test", seed=0, progress=False)
