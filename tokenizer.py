"""
The tokenizer: the `tokenizers` library's, plus the ids that end a sequence and the one that pads.

Qwen2.5's checkpoints say which tokens end generation in two places (generation_config.json and
tokenizer_config.json) and may name a padding token; `Tokenizer` gathers them so `generate` and
the stages need not. Kept apart from model.py, as gpt-fast keeps its tokenizer.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers.decoders import ByteLevel

from model import resolve_checkpoint_dir


class Tokenizer:
    """The `tokenizers` library's tokenizer plus what generation needs to know: which ids end a
    sequence (from generation_config.json and tokenizer_config.json) and which id pads."""

    def __init__(self, folder: Path):
        self.folder = folder
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library's own error type, with no file name in it
            raise ValueError(f"{path}: not a readable tokenizer file ({e})") from None
        tok_config = _read_json(folder / "tokenizer_config.json")
        gen_config = _read_json(folder / "generation_config.json")
        eos_ids: list[int] = []
        gen_eos = gen_config.get("eos_token_id")
        for i in (gen_eos if isinstance(gen_eos, list) else [gen_eos]):
            if i is not None and i not in eos_ids:
                eos_ids.append(int(i))
        token_id = self._special_id(tok_config.get("eos_token"), folder)
        if token_id is not None and token_id not in eos_ids:
            eos_ids.append(token_id)
        if not eos_ids:
            fallback = self.tok.token_to_id("<|endoftext|>")
            if fallback is None:
                raise ValueError(f"{folder}: no EOS token in generation_config.json or tokenizer_config.json")
            eos_ids.append(fallback)
        self.eos_token_ids = eos_ids
        pad = self._special_id(tok_config.get("pad_token"), folder)
        self.pad_token_id = pad if pad is not None else eos_ids[0]
        # Qwen2's decoder: each token is bytes and the joined bytes are read as UTF-8 (TextSoFar)
        self.decodes_bytes = isinstance(self.tok.decoder, ByteLevel)

    def _special_id(self, token, folder):
        if isinstance(token, dict):  # {"content": "<|endoftext|>", ...}
            token = token.get("content")
        if token is None:
            return None
        token_id = self.tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{folder / 'tokenizer_config.json'}: token {token!r} is not in the vocabulary")
        return token_id

    @property
    def eos_token_id(self) -> int:
        return self.eos_token_ids[0]

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_tokenizer(path_or_id) -> Tokenizer:
    return Tokenizer(resolve_checkpoint_dir(path_or_id))
