"""Small shared building blocks: RMSNorm, sinusoidal embeddings, RoPE tables."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Llama RMSNorm: statistics in fp32, weight applied after casting back (matches the official order)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def sinusoid_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """φ(t) = [cos(t·f), sin(t·f)], f_k = exp(-ln(max_period)·k/half); fp32 like the official code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid + 2-layer MLP; used as the AR level embedding and the diffusion time embedding."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def rope_inv_freq(head_dim: int, step: int, base: float = 10000.0) -> torch.Tensor:
    """inv_freq = 1/base^(arange(0, d, step)/d) in fp32; step 2 → 1-D RoPE, step 4 → HART 2-D RoPE."""
    return 1.0 / (base ** (torch.arange(0, head_dim, step, dtype=torch.int64).float() / head_dim))


def rope_1d(pos_BL: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, L, d] for scalar positions: angles [a_0..a_{d/2-1}] repeated twice."""
    ang = pos_BL.float()[..., None] * inv_freq
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rope_2d(pos_BL2: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HART's 2-D layout: [θ_i(d/4), θ_i(d/4), θ_j(d/4), θ_j(d/4)], applied with full-width rotate-half."""
    ang_i = pos_BL2[..., 0:1].float() * inv_freq
    ang_j = pos_BL2[..., 1:2].float() * inv_freq
    emb = torch.cat([ang_i, ang_i, ang_j, ang_j], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE; cos/sin [B, L, d] already broadcast to x's layout (BHLD: [:, None], BLHD: [:, :, None])."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")
