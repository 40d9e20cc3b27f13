"""Config dataclasses and presets. Every shape in the exported graphs derives from these."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from model.text_encoder import TextConfig

# Scale schedules (patch_nums). SN = len; G = last entry (latent grid side).
SCHEDULES: dict[str, tuple[int, ...]] = {
    "1024px": (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
    "512px": (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    "256px": (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
}


@dataclass(frozen=True)
class ARConfig:
    """The AR transformer + diffusion head (official `llm/config.json`)."""

    depth: int = 2
    embed_dim: int = 128
    num_heads: int = 4
    mlp_ratio: float = 4.0
    mlp_type: str = "llama"  # "llama" (SwiGLU) | "gpt2" (fc1/GELU-tanh/fc2)
    norm_eps: float = 1e-6
    context_token: int = 300
    context_dim: int = 128
    patch_nums: tuple[int, ...] = SCHEDULES["256px"]
    aln: str = "none"  # "none" (release) | "full" (ada_lin per block) | "shared" (scale_shift_table)
    sep_aln_pooling_mode: str = "max"
    timestep_level_embed: bool = True  # lvl_embed.mlp.* (release) vs lvl_embed.weight table
    attn_l2_norm: bool = False
    use_context_norm: bool = False
    context_norm_scale: float = 1.0
    diff_width: int = 64
    diff_depth: int = 2
    num_sampling_steps: int = 8
    vocab_size: int = 1024  # V, from the VAE codebook
    cvae: int = 16  # latent channels, from the VAE

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_type == "llama":
            return int(self.embed_dim * self.mlp_ratio * 2 / 3 + 255) // 256 * 256
        return round(self.embed_dim * self.mlp_ratio)


@dataclass(frozen=True)
class VAEConfig:
    """The VAE side of the hybrid tokenizer (official `tokenizer/config.json`)."""

    vocab_size: int = 1024
    z_channels: int = 16
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # decoder levels have num_res_blocks + 1 ResBlocks
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    # GroupNorm groups (official: 32). At ch=32 that is one channel per group, an instance norm that
    # erases a flat image's colour at the first layer: the trained default uses 1 (docs/training.md).
    norm_groups: int = 32

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling defaults of the official CLI (sample.py)."""

    cfg: float = 4.5
    top_k_early: int = 600  # si < 7
    top_k_late: int = 300
    top_k_switch: int = 7
    top_p: float = 0.0
    more_smooth: bool = True  # Gumbel-soft codeword mixtures (official CLI default)


@dataclass(frozen=True)
class HartConfig:
    name: str
    ar: ARConfig
    vae: VAEConfig
    text: TextConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    batch: int = 1  # B: prompts per call; the CFG batch is 2B
    kv_cache: str = "fp32"  # memory mode: "fp32" | "fp16" | "int8" (per-token scales, quantized on write)
    attn_chunk: int = 0  # memory mode: >0 splits attention over query chunks of this size (no full score matrix)

    @property
    def image_size(self) -> int:
        return self.ar.patch_nums[-1] * self.vae.downsample

    def with_schedule(self, name_or_nums: str | tuple[int, ...]) -> HartConfig:
        nums = SCHEDULES[name_or_nums] if isinstance(name_or_nums, str) else tuple(name_or_nums)
        return replace(self, ar=replace(self.ar, patch_nums=nums))


@dataclass(frozen=True)
class ScaleStep:
    """Static facts of AR step si (spec §8): every exported graph is specialised on these."""

    si: int
    pn: int  # side of the token map sampled at this step
    num_query: int  # query tokens per CFG row (context_token at si=0)
    kv_start: int
    kv_end: int
    ratio: float  # r = si/(SN-1); the last step reuses (SN-2)/(SN-1)
    top_k: int
    phi_index: int  # -1 at the last step (no Phi)
    next_pn: int  # side of the next scale's input map (0 at the last step)

    @property
    def num_sampled(self) -> int:
        """Logit positions sampled per row: 1 at si=0 (last context token), else pn²."""
        return 1 if self.si == 0 else self.pn * self.pn


def phi_indices(num_scales: int, k: int = 4) -> list[int]:
    """Phi selection per scale, computed exactly as the official numpy float64 argmin (ties included)."""
    ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k) if k == 4 else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    return [int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) for si in range(num_scales)]


def scale_steps(ar: ARConfig, sampler: SamplerConfig, share_quant_resi: int = 4) -> list[ScaleStep]:
    pns = ar.patch_nums
    sn = len(pns)
    phis = phi_indices(sn, share_quant_resi)
    steps, kv = [], 0
    for si, pn in enumerate(pns):
        nq = ar.context_token if si == 0 else pn * pn
        last = si == sn - 1
        ratio = (sn - 2) / (sn - 1) if last else si / (sn - 1)
        top_k = sampler.top_k_early if si < sampler.top_k_switch else sampler.top_k_late
        steps.append(
            ScaleStep(
                si=si, pn=pn, num_query=nq, kv_start=kv, kv_end=kv + nq, ratio=ratio,
                top_k=min(top_k, ar.vocab_size), phi_index=-1 if last else phis[si],
                next_pn=0 if last else pns[si + 1],
            )
        )
        kv += nq
    return steps


def total_tokens(ar: ARConfig) -> int:
    """KV length after the last scale: context + Σ_{s≥1} pn²."""
    return ar.context_token + sum(pn * pn for pn in ar.patch_nums[1:])


# ---- presets -------------------------------------------------------------------------------

DEFAULT_SEED = 20241014  # the same default model on every machine


def default_config() -> HartConfig:
    """The small seeded model every command uses when no checkpoint is given (256 px, 10 scales)."""
    text = TextConfig(
        vocab_size=257, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
        intermediate_size=256, rope_theta=1e6, rms_norm_eps=1e-6, max_tokens=300, pad_id=256,
        tie_word_embeddings=True, use_system_prompt=True, tokenizer="byte",
    )
    ar = ARConfig(depth=2, embed_dim=128, num_heads=4, context_token=300, context_dim=128,
                  patch_nums=SCHEDULES["256px"], diff_width=64, diff_depth=2, vocab_size=1024, cvae=16)
    vae = VAEConfig(vocab_size=1024, z_channels=16, ch=32, ch_mult=(1, 1, 2, 2, 4))
    return HartConfig(name="default", ar=ar, vae=vae, text=text)


def hart_0p7b_config(schedule: str = "1024px") -> HartConfig:
    """hart-0.7b-1024px with the Qwen2-VL-1.5B text model (spec §2); the loader re-reads config.json."""
    text = TextConfig(
        vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, head_dim=128,
        intermediate_size=8960, rope_theta=1e6, rms_norm_eps=1e-6, max_tokens=300, pad_id=151643,
        tie_word_embeddings=True, use_system_prompt=True, tokenizer="qwen2",
    )
    ar = ARConfig(depth=24, embed_dim=1536, num_heads=24, context_token=300, context_dim=1536,
                  patch_nums=SCHEDULES[schedule], diff_width=1024, diff_depth=6, vocab_size=4096, cvae=32)
    vae = VAEConfig(vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4))
    return HartConfig(name=f"hart-0.7b-{schedule}", ar=ar, vae=vae, text=text)


PRESETS = {
    "default": default_config,
    "hart-0.7b-1024px": lambda: hart_0p7b_config("1024px"),
    "hart-0.7b-512px": lambda: hart_0p7b_config("512px"),
}

