"""Qwen2 text encoder for HART in plain PyTorch (spec §2.3 and §3), export-friendly.

HART runs ``Qwen2Model`` on ``concat(system_prompt_ids, prompt_ids)`` and keeps the
final-norm hidden states of the 300 prompt positions. The system tokens never attend to
later tokens, so their per-layer K/V (after RoPE) are computed once and stored as
non-persistent buffers; ``forward`` then encodes only the 300 prompt tokens at a fixed
shape (exact, not an approximation). ``forward_reference`` is the direct S+T computation
kept for tests.

Parameter names equal HF ``Qwen2Model``'s state-dict names (HF files add ``model.``), so
official safetensors load without renaming.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from model.tokenizer import MAX_TOKENS, PAD_TOKEN, SYSTEM_PROMPT, PromptTokenizer

__all__ = [
    "SYSTEM_PROMPT",
    "TextConfig",
    "TextEncoder",
    "init_text_encoder",
    "load_text_encoder",
    "save_text_encoder",
]

TOKENIZER_KINDS = ("byte", "qwen2")
# Checkpoint key prefixes stripped on load (newest first: transformers>=4.52 Qwen2-VL layout).
_STRIP_PREFIXES = ("model.language_model.", "model.")
# Keys that belong to other heads/towers and are deliberately skipped.
_IGNORE_PREFIXES = ("lm_head.", "visual.", "model.visual.")
_EXTRAS_KEY = "hart_mobile"  # our non-HF fields inside config.json


@dataclass(frozen=True)
class TextConfig:
    """Text-encoder hyper-parameters. Defaults: the small byte-level model."""

    vocab_size: int = 257
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # None → hidden_size // num_heads
    intermediate_size: int = 768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_tokens: int = MAX_TOKENS
    pad_id: int = 256
    tie_word_embeddings: bool = True
    use_system_prompt: bool = True
    tokenizer: str = "byte"

    def __post_init__(self) -> None:
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.tokenizer not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer must be one of {TOKENIZER_KINDS}, got {self.tokenizer!r}")

    @classmethod
    def qwen2_vl_1_5b(cls) -> TextConfig:
        """Text config of mit-han-lab/Qwen2-VL-1.5B-Instruct (spec §2.3; the loader reads the real file)."""
        return cls(
            vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
            intermediate_size=8960, rope_theta=1_000_000.0, rms_norm_eps=1e-6, pad_id=151643,
            tie_word_embeddings=True, use_system_prompt=True, tokenizer="qwen2",
        )  # fmt: skip


# ----------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: statistics in fp32, cast back, then scale (same op order as HF)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_f32 = x.float()
        y = x_f32 * torch.rsqrt(x_f32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [L, head_dim] in fp32 for 1-D RoPE, HF layout (frequencies duplicated, rotate-half)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs_LD2 = positions.float()[:, None] * inv_freq[None, :]
    emb_LD = torch.cat([freqs_LD2, freqs_LD2], dim=-1)
    return emb_LD.cos(), emb_LD.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x_BHLD: torch.Tensor, cos_LD: torch.Tensor, sin_LD: torch.Tensor) -> torch.Tensor:
    cos, sin = cos_LD.to(x_BHLD.dtype), sin_LD.to(x_BHLD.dtype)
    return x_BHLD * cos + rotate_half(x_BHLD) * sin


def repeat_kv(x_BKLD: torch.Tensor, n_rep: int) -> torch.Tensor:
    """GQA: kv head k serves query heads k*n_rep .. k*n_rep+n_rep-1 (HF repeat_kv)."""
    if n_rep == 1:
        return x_BKLD
    B, K, L, D = x_BKLD.shape
    return x_BKLD[:, :, None].expand(B, K, n_rep, L, D).reshape(B, K * n_rep, L, D)


class Attention(nn.Module):
    """GQA self-attention; q/k/v with bias, o_proj without (Qwen2)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv_head * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=False)

    def qkv(
        self, x_BTC: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected heads with RoPE applied to q and k: [B,H,T,D], [B,K,T,D], [B,K,T,D]."""
        B, T, _ = x_BTC.shape
        q = self.q_proj(x_BTC).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x_BTC).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x_BTC).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos_TD, sin_TD), apply_rope(k, cos_TD, sin_TD), v

    def forward(
        self,
        x_BTC: torch.Tensor,
        cos_TD: torch.Tensor,
        sin_TD: torch.Tensor,
        mask_B1TL: torch.Tensor,
        prefix_k_1KSD: torch.Tensor | None,
        prefix_v_1KSD: torch.Tensor | None,
    ) -> torch.Tensor:
        """Cached path: prompt queries attend to [constant prefix K/V | prompt K/V]; L = S + T."""
        B, T, _ = x_BTC.shape
        q, k, v = self.qkv(x_BTC, cos_TD, sin_TD)
        if prefix_k_1KSD is not None and prefix_v_1KSD is not None:
            S = prefix_k_1KSD.shape[2]
            k = torch.cat([prefix_k_1KSD.expand(B, self.n_kv_head, S, self.head_dim), k], dim=2)
            v = torch.cat([prefix_v_1KSD.expand(B, self.n_kv_head, S, self.head_dim), v], dim=2)
        n_rep = self.n_head // self.n_kv_head
        y = F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask_B1TL)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x_BTC: torch.Tensor,
        cos_TD: torch.Tensor,
        sin_TD: torch.Tensor,
        mask_B1TL: torch.Tensor,
        prefix_k_1KSD: torch.Tensor | None,
        prefix_v_1KSD: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.input_layernorm(x_BTC)
        x_BTC = x_BTC + self.self_attn(h, cos_TD, sin_TD, mask_B1TL, prefix_k_1KSD, prefix_v_1KSD)
        return x_BTC + self.mlp(self.post_attention_layernorm(x_BTC))


# ----------------------------------------------------------------------------- encoder


class TextEncoder(nn.Module):
    """Qwen2Model + HART's prompt contract: ids[B,T] → final-norm hidden states [B,T,hidden] (fp32).

    Buffers (non-persistent, rebuilt by ``refresh_prefix_cache``):
      sys_ids [S]                 system-prompt ids (S = 0 without system prompt)
      rope_cos_TD / rope_sin_TD   RoPE tables for prompt positions S .. S+max_tokens-1
      prefix_k / prefix_v         [num_layers, 1, num_kv_heads, S, head_dim], K after RoPE
    """

    def __init__(self, cfg: TextConfig, tokenizer: PromptTokenizer | None = None, *, empty: bool = False) -> None:
        """``empty=True`` puts parameters on the meta device (loader assigns real tensors, then
        calls ``refresh_prefix_cache``) so a 1.5B checkpoint is not allocated twice."""
        super().__init__()
        if tokenizer is None:
            if cfg.tokenizer != "byte":
                raise ValueError(
                    f"tokenizer {cfg.tokenizer!r} needs a PromptTokenizer (load_text_encoder reads tokenizer.json)"
                )
            tokenizer = PromptTokenizer.byte_level(cfg.max_tokens)
        if tokenizer.pad_id != cfg.pad_id:
            raise ValueError(f"tokenizer pad id {tokenizer.pad_id} != config pad_id {cfg.pad_id}")
        if tokenizer.max_tokens != cfg.max_tokens:
            raise ValueError(f"tokenizer max_tokens {tokenizer.max_tokens} != config max_tokens {cfg.max_tokens}")
        self.cfg = cfg
        self.tokenizer = tokenizer

        with torch.device("meta" if empty else "cpu"):
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

        sys_ids = tokenizer.encode_system_prompt() if cfg.use_system_prompt else []
        if any(i >= cfg.vocab_size for i in sys_ids):
            raise ValueError(f"system-prompt token id {max(sys_ids)} >= vocab_size {cfg.vocab_size}")
        self.register_buffer("sys_ids", torch.tensor(sys_ids, dtype=torch.long), persistent=False)
        self.num_prefix_tokens = len(sys_ids)
        if not empty:
            self.refresh_prefix_cache()

    # -- prefix cache ---------------------------------------------------------------------

    @torch.no_grad()
    def refresh_prefix_cache(self) -> None:
        """Recompute RoPE tables and the system-prompt K/V from the current weights.

        Must be called after weights change (load, init, dtype/device move of the weights).
        """
        w = self.embed_tokens.weight
        S, T, L = self.num_prefix_tokens, self.cfg.max_tokens, self.cfg.num_layers
        K, D = self.cfg.num_kv_heads, self.cfg.head_dim
        self.sys_ids = self.sys_ids.to(w.device)
        cos_TD, sin_TD = rope_tables(torch.arange(S, S + T, device=w.device), D, self.cfg.rope_theta)
        self.register_buffer("rope_cos_TD", cos_TD, persistent=False)
        self.register_buffer("rope_sin_TD", sin_TD, persistent=False)
        prefix_k = torch.zeros(L, 1, K, S, D, dtype=w.dtype, device=w.device)
        prefix_v = torch.zeros_like(prefix_k)
        if S > 0:
            ids_1S = self.sys_ids[None]
            _, kv = self._reference_pass(ids_1S, torch.ones_like(ids_1S, dtype=torch.bool))
            for i, (k, v) in enumerate(kv):
                prefix_k[i], prefix_v[i] = k, v
        self.register_buffer("prefix_k", prefix_k, persistent=False)
        self.register_buffer("prefix_v", prefix_v, persistent=False)

    # -- export path ----------------------------------------------------------------------

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Encode right-padded prompt ids [B, T] (T ≤ max_tokens, static) → [B, T, hidden] fp32."""
        B, T = token_ids.shape
        S = self.num_prefix_tokens
        if T > self.cfg.max_tokens:
            raise ValueError(f"got {T} tokens, max_tokens is {self.cfg.max_tokens}")
        x_BTC = self.embed_tokens(token_ids)
        dtype = x_BTC.dtype
        cos_TD, sin_TD = self.rope_cos_TD[:T], self.rope_sin_TD[:T]

        # Key i (prompt) is visible to query t iff i <= t and ids[i] != pad; prefix keys always.
        t_T = torch.arange(T, device=token_ids.device)
        causal_TT = t_T[None, :] <= t_T[:, None]
        key_valid_B1T = (token_ids != self.cfg.pad_id)[:, None, :]
        allowed_BTT = causal_TT[None] & key_valid_B1T
        if S > 0:
            prefix_BTS = torch.ones(B, T, S, dtype=torch.bool, device=token_ids.device)
            allowed_BTL = torch.cat([prefix_BTS, allowed_BTT], dim=-1)
        else:
            allowed_BTL = allowed_BTT
        zero = torch.zeros((), dtype=dtype, device=token_ids.device)
        neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=token_ids.device)
        mask_B1TL = torch.where(allowed_BTL, zero, neg)[:, None]

        for i, layer in enumerate(self.layers):
            pk = self.prefix_k[i] if S > 0 else None
            pv = self.prefix_v[i] if S > 0 else None
            x_BTC = layer(x_BTC, cos_TD, sin_TD, mask_B1TL, pk, pv)
        return self.norm(x_BTC).float()

    # -- reference path -------------------------------------------------------------------

    def _reference_pass(
        self, ids_BL: torch.Tensor, key_valid_BL: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Plain Qwen2Model over a whole sequence (positions 0..L-1, explicit fp32 softmax).

        Returns final-norm hidden states and each layer's (k after RoPE, v) [B,K,L,D].
        """
        B, L = ids_BL.shape
        cfg = self.cfg
        x = self.embed_tokens(ids_BL)
        cos, sin = rope_tables(torch.arange(L, device=ids_BL.device), cfg.head_dim, cfg.rope_theta)
        causal_LL = torch.ones(L, L, dtype=torch.bool, device=ids_BL.device).tril()
        allowed_BLL = causal_LL[None] & key_valid_BL[:, None, :]
        n_rep = cfg.num_heads // cfg.num_kv_heads
        kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in self.layers:
            attn = layer.self_attn
            q, k, v = attn.qkv(layer.input_layernorm(x), cos, sin)
            kv.append((k, v))
            k_full = k.repeat_interleave(n_rep, dim=1)
            v_full = v.repeat_interleave(n_rep, dim=1)
            scores = (q.float() @ k_full.float().transpose(-1, -2)) / math.sqrt(cfg.head_dim)
            scores = scores.masked_fill(~allowed_BLL[:, None], torch.finfo(torch.float32).min)
            probs = scores.softmax(dim=-1).to(q.dtype)
            y = (probs @ v_full).transpose(1, 2).reshape(B, L, cfg.num_heads * cfg.head_dim)
            x = x + attn.o_proj(y)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x), kv

    def forward_reference(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Spec §3 verbatim: run on concat(sys_ids, ids) with mask concat(ones, ids != pad), slice [:, S:]."""
        B = token_ids.shape[0]
        S = self.num_prefix_tokens
        ids_BL = torch.cat([self.sys_ids[None].expand(B, S), token_ids], dim=1)
        key_valid_BL = torch.cat(
            [torch.ones(B, S, dtype=torch.bool, device=token_ids.device), token_ids != self.cfg.pad_id], dim=1
        )
        hidden_BLC, _ = self._reference_pass(ids_BL, key_valid_BL)
        return hidden_BLC[:, S:].float()

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Convenience (host side): prompt → (ids [1,T], mask [1,T], hidden [1,T,C])."""
        ids, mask = self.tokenizer.encode(prompt)
        return ids, mask, self(ids.to(self.embed_tokens.weight.device))


# ----------------------------------------------------------------------------- init / IO


@torch.no_grad()
def init_text_encoder(cfg: TextConfig, seed: int, tokenizer: PromptTokenizer | None = None) -> TextEncoder:
    """Deterministic random weights for tests: N(0, 1/fan_in) matrices, 1+0.1N norms, 0.1N biases."""
    enc = TextEncoder(cfg, tokenizer)
    gen = torch.Generator().manual_seed(seed)
    for name, p in enc.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("bias"):
            p.copy_(0.1 * noise)
        elif p.ndim == 1:
            p.copy_(1.0 + 0.1 * noise)
        else:
            p.copy_(noise / math.sqrt(p.shape[1]))
    enc.requires_grad_(False).eval()
    enc.refresh_prefix_cache()
    return enc


def _hf_config(cfg: TextConfig, pad_token: str) -> dict:
    out = {
        "architectures": ["Qwen2Model"],
        "model_type": "qwen2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
        _EXTRAS_KEY: {
            "tokenizer": cfg.tokenizer,
            "use_system_prompt": cfg.use_system_prompt,
            "max_tokens": cfg.max_tokens,
            "pad_id": cfg.pad_id,
            "pad_token": pad_token,
        },
    }
    if cfg.head_dim != cfg.hidden_size // cfg.num_heads:
        out["head_dim"] = cfg.head_dim
    return out


def save_text_encoder(enc: TextEncoder, folder: str | Path) -> None:
    """Write an HF-layout Qwen2 folder: config.json, model.safetensors (``model.`` keys), tokenizer.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_json = _hf_config(enc.cfg, enc.tokenizer.pad_token)
    cfg_json["torch_dtype"] = str(enc.embed_tokens.weight.dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n", encoding="utf-8")
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in enc.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    enc.tokenizer.save(folder / "tokenizer.json")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _config_from_hf(raw: dict, path: Path, pad_id: int, extras: dict) -> TextConfig:
    model_type = raw.get("model_type")
    if model_type not in ("qwen2", "qwen2_vl"):
        raise ValueError(
            f"{path}: model_type {model_type!r} is not a Qwen2 text model (expected 'qwen2' or 'qwen2_vl')"
        )
    fields = dict(raw)
    if isinstance(raw.get("text_config"), dict):  # newer qwen2_vl configs nest the LLM fields
        fields.update(raw["text_config"])
    required = (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "intermediate_size",
    )  # fmt: skip
    for name in required:
        if name not in fields:
            raise ValueError(f"{path}: missing field {name!r}")
    return TextConfig(
        vocab_size=int(fields["vocab_size"]),
        hidden_size=int(fields["hidden_size"]),
        num_layers=int(fields["num_hidden_layers"]),
        num_heads=int(fields["num_attention_heads"]),
        num_kv_heads=int(fields["num_key_value_heads"]),
        head_dim=int(fields["head_dim"]) if fields.get("head_dim") else None,
        intermediate_size=int(fields["intermediate_size"]),
        rope_theta=float(fields.get("rope_theta", 10000.0)),
        rms_norm_eps=float(fields.get("rms_norm_eps", 1e-6)),
        max_tokens=int(extras.get("max_tokens", MAX_TOKENS)),
        pad_id=pad_id,
        tie_word_embeddings=bool(fields.get("tie_word_embeddings", False)),
        use_system_prompt=bool(extras.get("use_system_prompt", True)),
        tokenizer=str(extras.get("tokenizer", "qwen2")),
    )


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, Path], Path]:
    """Shard files, the key→file map claimed by the index (empty if unsharded), and the file to
    name in 'missing key' errors."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map'")
        claimed = {k: folder / v for k, v in weight_map.items()}
        files = sorted(set(claimed.values()))
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"shard {f.name} listed in {index} does not exist")
        return files, claimed, index
    if single.is_file():
        return [single], {}, single
    raise FileNotFoundError(
        f"no weights in {folder}: expected model.safetensors or model.safetensors.index.json "
        "with model-0000X-of-0000Y.safetensors shards"
    )


def _local_name(key: str) -> str | None:
    """Checkpoint key → our parameter name, or None for ignored keys (lm_head, vision tower)."""
    if key.startswith(_IGNORE_PREFIXES):
        return None
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _resolve_pad(folder: Path, extras: dict) -> str:
    """Pad token as HF would resolve ``tokenizer.pad_token``: tokenizer_config.json first."""
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        pad = _read_json(tc).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            return pad
    return str(extras.get("pad_token", PAD_TOKEN))


def load_text_encoder(
    folder: str | Path, *, use_system_prompt: bool | None = None, dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """Load an HF Qwen2 / Qwen2-VL text-model folder (safetensors only, never pickle).

    Strict: every parameter must be present once with the configured shape; ``lm_head.*`` and
    vision-tower keys are ignored, anything else unexpected is an error.
    """
    folder = Path(folder)
    expected = "config.json, tokenizer.json and model.safetensors (or model.safetensors.index.json + shards)"
    if not folder.is_dir():
        raise FileNotFoundError(f"text-encoder folder {folder} does not exist; expected a folder with {expected}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found; expected a Qwen2 HF folder with {expected}")
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"{tok_path} not found; expected a Qwen2 HF folder with {expected}")

    raw = _read_json(cfg_path)
    extras = raw.get(_EXTRAS_KEY, {}) if isinstance(raw.get(_EXTRAS_KEY), dict) else {}
    max_tokens = int(extras.get("max_tokens", MAX_TOKENS))
    tok = PromptTokenizer.from_file(tok_path, max_tokens=max_tokens, pad_token=_resolve_pad(folder, extras))
    cfg = _config_from_hf(raw, cfg_path, tok.pad_id, extras)
    if use_system_prompt is not None:
        cfg = TextConfig(**{**asdict(cfg), "use_system_prompt": use_system_prompt})

    enc = TextEncoder(cfg, tok, empty=True)
    want = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    files, claimed, missing_ref = _weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    source: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as sf:
            for key in sf.keys():  # noqa: SIM118 (safe_open is not a dict)
                name = _local_name(key)
                if name is None:
                    continue
                if name not in want:
                    raise ValueError(f"unexpected tensor {key!r} in {f}")
                if name in state:
                    raise ValueError(f"tensor {key!r} appears in both {source[name]} and {f}")
                shape = tuple(sf.get_slice(key).get_shape())
                if shape != want[name]:
                    raise ValueError(
                        f"shape mismatch for {key!r} in {f}: checkpoint {list(shape)}, "
                        f"expected {list(want[name])} from {cfg_path.name}"
                    )
                state[name] = sf.get_tensor(key).to(dtype)
                source[name] = f
    for name in want:
        if name not in state:
            hf_key = f"model.{name}"
            where = claimed.get(hf_key, missing_ref)
            raise ValueError(f"missing tensor {hf_key!r} in {where}")

    enc.load_state_dict(state, strict=True, assign=True)
    enc.requires_grad_(False).eval()
    enc.refresh_prefix_cache()
    return enc
