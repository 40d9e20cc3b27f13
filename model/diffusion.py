"""Residual diffusion head (MLP with AdaLN) and the respaced iDDPM sampler, unrolled for export."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.layers import TimestepEmbedder

VAE_SCALE = 0.6  # the head was trained on residual / 0.6


def layer_norm_fp32(x: torch.Tensor, dim: int, weight=None, bias=None, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm computed in fp32: ExecuTorch's fp16 layer_norm kernel is wrong (toolchain notes §4)."""
    return F.layer_norm(x.float(), (dim,), None if weight is None else weight.float(),
                        None if bias is None else bias.float(), eps).to(x.dtype)


class ResBlock(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.w = w
        self.in_ln = nn.LayerNorm(w, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 3 * w))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        h = layer_norm_fp32(x, self.w, self.in_ln.weight, self.in_ln.bias) * (1 + scale) + shift
        return x + gate * self.mlp(h)


class FinalLayer(nn.Module):
    def __init__(self, w: int, out: int):
        super().__init__()
        self.w = w
        self.linear = nn.Linear(w, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(layer_norm_fp32(x, self.w) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """ε/variance network: out[:, :Cvae] = ε, out[:, Cvae:] = v ∈ ~[-1, 1]."""

    def __init__(self, cvae: int, z_dim: int, width: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(z_dim, width)
        self.input_proj = nn.Linear(cvae, width)
        self.res_blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final_layer = FinalLayer(width, 2 * cvae)

    def forward(self, x, t, c):
        """Reference signature of the official net (t: original timesteps [N])."""
        return self.forward_body(x, self.time_embed(t) + self.cond_embed(c))

    def forward_body(self, x, y):
        h = self.input_proj(x)
        for blk in self.res_blocks:
            h = blk(h, y)
        return self.final_layer(h, y)


def respaced_schedule(num_steps: int = 8, num_timesteps: int = 1000) -> dict[str, np.ndarray]:
    """Cosine schedule respaced to `num_steps` (spec §5.2), float64, as the official gen_diffusion."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                      for i in range(num_timesteps)], dtype=np.float64)
    base_ac = np.cumprod(1.0 - betas)
    stride = (num_timesteps - 1) / (num_steps - 1)
    keep = sorted({round(i * stride) for i in range(num_steps)})
    new_betas, last = [], 1.0
    for i in keep:
        new_betas.append(1 - base_ac[i] / last)
        last = base_ac[i]
    b = np.array(new_betas, dtype=np.float64)
    ac = np.cumprod(1.0 - b)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "timestep_map": np.array(keep, dtype=np.int64),
        "betas": b,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "posterior_mean_coef1": b * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac),
        "log_betas": np.log(b),
    }


class DiffLoss(nn.Module):
    """Holds `net` (official key prefix `diffloss.net.*`) and the unrolled CFG sampler."""

    def __init__(self, cvae: int, z_dim: int, width: int, depth: int, num_steps: int = 8):
        super().__init__()
        self.cvae = cvae
        self.num_steps = num_steps
        self.net = SimpleMLPAdaLN(cvae, z_dim, width, depth)
        s = respaced_schedule(num_steps)
        f32 = lambda a: [float(np.float32(v)) for v in a]  # noqa: E731 - constants as the official .float()
        self.t_map = [int(v) for v in s["timestep_map"]]
        self.sr, self.srm1 = f32(s["sqrt_recip_alphas_cumprod"]), f32(s["sqrt_recipm1_alphas_cumprod"])
        self.coef1, self.coef2 = f32(s["posterior_mean_coef1"]), f32(s["posterior_mean_coef2"])
        self.min_log, self.max_log = f32(s["posterior_log_variance_clipped"]), f32(s["log_betas"])

    def guided_out(self, x_NC, y_2NW, w):
        """One network call on [x; x] and the official CFG mix on ε only (variance from the cond rows)."""
        n = x_NC.shape[0]
        out = self.net.forward_body(torch.cat([x_NC, x_NC], dim=0), y_2NW).float()
        eps = (1 + w) * out[:n, : self.cvae] - w * out[n:, : self.cvae]
        return eps, out[:n, self.cvae:]

    def p_step(self, k: int, x_NC, eps, v, noise_NC=None, temperature: float = 1.0):
        x0 = (self.sr[k] * x_NC - self.srm1[k] * eps).clamp(-1, 1)
        mean = self.coef1[k] * x0 + self.coef2[k] * x_NC
        if k == 0:
            return mean
        frac = (v + 1) / 2
        log_var = frac * self.max_log[k] + (1 - frac) * self.min_log[k]
        return mean + torch.exp(0.5 * log_var) * noise_NC * temperature

    def sample(self, z_2NC: torch.Tensor, w: torch.Tensor, noise_KNC: torch.Tensor) -> torch.Tensor:
        """All steps unrolled. noise_KNC[0] = x_T, noise_KNC[1 + j] = noise of iteration j (j = 0..K-2).

        w is the guidance weight tensor [1]; exactly 1.0 selects the official no-guidance path
        (ε unguided), expressed branch-free so it stays one static graph.
        """
        w = torch.where(w == 1.0, torch.zeros_like(w), w)
        c_emb = self.net.cond_embed(z_2NC)
        x = noise_KNC[0].to(c_emb.dtype)
        for j, k in enumerate(reversed(range(self.num_steps))):
            t = torch.full((1,), self.t_map[k], dtype=torch.int64)
            y = self.net.time_embed(t).to(c_emb.dtype) + c_emb
            eps, v = self.guided_out(x, y, w.to(c_emb.dtype))
            x = self.p_step(k, x.float(), eps, v, None if k == 0 else noise_KNC[1 + j].float()).to(c_emb.dtype)
        return (x.float() * VAE_SCALE)
