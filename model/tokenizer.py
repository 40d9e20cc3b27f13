"""Prompt tokenisation for the HART text encoder (spec §3 steps 1-3).

HART tokenises every prompt on its own with ``padding="max_length"``, ``max_length=300``,
``truncation=True`` and the tokenizer's default special-token handling (Qwen2 adds no
BOS/EOS), then derives the context mask as ``ids != pad_id``. This module reproduces that
with the ``tokenizers`` library alone, so no ``transformers`` dependency is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

PAD_TOKEN = "<|endoftext|>"
MAX_TOKENS = 300

# HART's LLM system prompt (hart/utils/constants.py ``llm_system_prompt``; spec §3 step 3),
# exactly 705 characters. Re-exported by model.text_encoder.
SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions'
    " suitable for image generation.\n"
    "\n"
    "Examples:\n"
    "- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a round shape, sleeping"
    " peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n"
    "- User Prompt: A busy city street -> A bustling city street scene at dusk, featuring glowing street"
    " lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering"
    " glass skyscrapers.\n"
    "\n"
    "Please generate only the enhanced description for the prompt below and DO NOT include any additional"
    ' sentences. Start your response with "Enhanced Prompt:".\n'
    "\n"
    "User Prompt:\n"
)


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-unicode map (the ByteLevel alphabet).

    Printable Latin-1 bytes map to themselves; the remaining 68 bytes are shifted to
    U+0100.. in byte order. Defining it here (rather than relying on the unordered
    ``ByteLevel.alphabet()``) fixes the id of every byte: id == byte value.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {}
    shift = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def byte_level_tokenizer() -> Tokenizer:
    """Deterministic byte-level tokenizer for the small default text model.

    BPE over the 256-symbol byte alphabet with no merges (so one token per UTF-8 byte,
    id == byte value) plus ``<|endoftext|>`` (id 256) used as pad: vocab size 257. Built
    from constants only, so ``to_str()`` is identical on every machine.
    """
    vocab = {ch: b for b, ch in _byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD_TOKEN])
    assert tok.token_to_id(PAD_TOKEN) == 256 and tok.get_vocab_size() == 257
    return tok


class PromptTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with HART's fixed-length prompt contract.

    ``encode`` returns right-padded/truncated ids of static length ``max_tokens`` so the
    exported text encoder always sees the same shape.
    """

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = MAX_TOKENS, pad_token: str = PAD_TOKEN) -> None:
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the tokenizer vocabulary")
        self.pad_token = pad_token
        self.pad_id: int = pad_id
        self.max_tokens = max_tokens
        # Private copy: truncation is configured on it, padding is done by hand (right side).
        self._tok = Tokenizer.from_str(tokenizer.to_str())
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_tokens)

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_ids(self, text: str) -> list[int]:
        """Token ids, truncated to max_tokens; special tokens as the tokenizer's default
        post-processor adds them (HF's default ``add_special_tokens=True``; none for Qwen2)."""
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def encode(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """ids LongTensor[1, max_tokens] (right-padded with pad_id) and mask = ids != pad_id."""
        ids = self.encode_ids(prompt)
        ids_1T = torch.full((1, self.max_tokens), self.pad_id, dtype=torch.long)
        if ids:
            ids_1T[0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return ids_1T, ids_1T != self.pad_id

    def encode_system_prompt(self, system_prompt: str | None = None) -> list[int]:
        """System-prompt ids: truncated to max_tokens, never padded (HART's "longest")."""
        return self.encode_ids(SYSTEM_PROMPT if system_prompt is None else system_prompt)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def to_str(self) -> str:
        """tokenizer.json text without the truncation setting we added (keeps files canonical)."""
        data = json.loads(self._tok.to_str())
        data["truncation"] = None
        data["padding"] = None
        return json.dumps(data, ensure_ascii=False, indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_str(), encoding="utf-8")

    @classmethod
    def from_file(
        cls, path: str | Path, max_tokens: int = MAX_TOKENS, pad_token: str = PAD_TOKEN
    ) -> PromptTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"expected a tokenizers tokenizer.json at {path}")
        return cls(Tokenizer.from_file(str(path)), max_tokens=max_tokens, pad_token=pad_token)

    @classmethod
    def byte_level(cls, max_tokens: int = MAX_TOKENS) -> PromptTokenizer:
        return cls(byte_level_tokenizer(), max_tokens=max_tokens)
