"""VAE side of the hybrid tokenizer: codebook, Phi convs, fixed resampling matrices, CNN decoder,
and (optional, training only) the CNN encoder with HART's multi-scale residual quantization.

Module names equal the official `vae.*` keys (minus the prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VAEConfig, phi_indices


def Normalize(ch: int, groups: int = 32) -> nn.GroupNorm:  # noqa: N802 - official name
    return nn.GroupNorm(groups, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin, groups), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = Normalize(cout, groups), nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (softmax over keys, scale C^-1/2)."""

    def __init__(self, ch: int, groups: int = 32):
        super().__init__()
        self.C = ch
        self.norm = Normalize(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        w = torch.bmm(q.permute(0, 2, 1), k) * (C ** -0.5)  # [B, HW_q, HW_k]
        w = w.softmax(dim=2)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Upsample2x(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample2x(nn.Module):
    """Pad right/bottom by one, then a stride-2 3×3 conv (the official asymmetric downsample)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    """Image [B, 3, H, W] in [-1, 1] → latent [B, z, H/ds, W/ds]; attention at the lowest level and mid."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, mult, nres, g = cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.norm_groups
        n_lvl = len(mult)
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for lvl in range(n_lvl):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * mult[lvl]
            for _ in range(nres):
                down.block.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
                if lvl == n_lvl - 1:
                    down.attn.append(AttnBlock(block_in, g))
            if lvl != n_lvl - 1:
                down.downsample = Downsample2x(block_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, g)
        self.norm_out = Normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for lvl, down in enumerate(self.down):
            for i, blk in enumerate(down.block):
                h = blk(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if lvl != len(self.down) - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, mult, nres, g = cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.norm_groups
        n_lvl = len(mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, g)
        self.mid.attn_1 = AttnBlock(block_in, g)
        self.mid.block_2 = ResnetBlock(block_in, block_in, g)
        ups: list[nn.Module] = []
        for lvl in reversed(range(n_lvl)):
            up = nn.Module()
            block_out = ch * mult[lvl]
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for _ in range(nres + 1):
                up.block.append(ResnetBlock(block_in, block_out, g))
                block_in = block_out
                if lvl == n_lvl - 1:
                    up.attn.append(AttnBlock(block_in, g))
            if lvl != 0:
                up.upsample = Upsample2x(block_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in, g)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for lvl in reversed(range(len(self.up))):
            up = self.up[lvl]
            for i, blk in enumerate(up.block):
                h = blk(h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if lvl != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PhiList(nn.Module):
    def __init__(self, cvae: int, n: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList([nn.Conv2d(cvae, cvae, 3, 1, 1) for _ in range(n)])


class Quantizer(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)
        self.quant_resi = PhiList(cfg.z_channels, cfg.share_quant_resi)


class VAE(nn.Module):
    """with_encoder adds `encoder.*` and `quant_conv.*` (training / tokenizing); inference never needs them."""

    def __init__(self, cfg: VAEConfig, with_encoder: bool = False):
        super().__init__()
        self.cfg = cfg
        self.quantize = Quantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.decoder = Decoder(cfg)
        if with_encoder:
            self.add_encoder()

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

    def add_encoder(self) -> None:
        self.encoder = Encoder(self.cfg)
        self.quant_conv = nn.Conv2d(self.cfg.z_channels, self.cfg.z_channels, 3, 1, 1)

    def img_to_f(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous latent f = quant_conv(encoder(img)), img in [-1, 1]."""
        return self.quant_conv(self.encoder(img_B3HW))

    def phi(self, h_BCHW: torch.Tensor, k: int) -> torch.Tensor:
        """Phi_k(h) = (1 - r)·h + r·conv_k(h), r = quant_resi."""
        r = abs(self.cfg.quant_resi)
        return h_BCHW * (1 - r) + self.quantize.quant_resi.qresi_ls[k](h_BCHW) * r

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decoder output clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1)


def resample_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """[n_out, n_in] matrix M with interpolate(x) = M·x·Mᵀ for separable linear resampling.

    Built by interpolating identity bases, so it equals F.interpolate (bicubic A=-0.75, area) exactly;
    two small matmuls replace ops that Core ML and some backends lack.
    """
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :, None].expand(n_in, 1, n_in, 1)
    kw = {"align_corners": False} if mode == "bicubic" else {}
    cols = F.interpolate(eye.contiguous(), size=(n_out, 1), mode=mode, **kw)  # [n_in, 1, n_out, 1]
    return cols[:, 0, :, 0].T.contiguous().float()


def resample(x_BCHW: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("oh,bchw,pw->bcop", m.to(x_BCHW.dtype), x_BCHW, m.to(x_BCHW.dtype))


@lru_cache(maxsize=64)
def _scale_matrices(pn: int, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(area G→pn, bicubic pn→G): the same fixed matrices Hart uses between AR steps."""
    return resample_matrix(G, pn, "area"), resample_matrix(pn, G, "bicubic")


@dataclass
class Tokens:
    """Hybrid tokens of a latent f [B, C, G, G] on a scale schedule (spec §6.4).

    idx[si]: [B, pn²] codebook ids of scale si (the AR targets);
    f_hat: discrete reconstruction Σ_si<SN-1 Phi(bicubic(code[idx_si])) + code[idx_last] (what AR sampling rebuilds);
    residual_BLC: [B, G², C] continuous residual f - f_hat (what the diffusion head predicts, before /0.6);
    vq_loss: HART's per-scale commitment + codebook loss, mean over scales.
    """

    idx: list[torch.Tensor]
    f_hat: torch.Tensor
    residual_BLC: torch.Tensor
    vq_loss: torch.Tensor


def nearest_code(z_NC: torch.Tensor, code_VC: torch.Tensor) -> torch.Tensor:
    d = z_NC.pow(2).sum(1, keepdim=True) + code_VC.pow(2).sum(1)[None] - 2 * z_NC @ code_VC.T
    return d.argmin(dim=1)


def multiscale_quantize(vae: VAE, f_BCGG: torch.Tensor, patch_nums: tuple[int, ...], beta: float = 0.25) -> Tokens:
    """HART's residual quantization: per scale, area-pool the rest, take nearest codes, add
    Phi_k(bicubic(code)) to f_hat; the last scale is quantized on the full grid without Phi, and what
    remains is the continuous residual. Gradients reach the codebook and Phi convs through vq_loss."""
    B, C, G, _ = f_BCGG.shape
    assert patch_nums[-1] == G, f"schedule ends at {patch_nums[-1]} but the latent grid is {G}"
    code = vae.quantize.embedding.weight
    phis = phi_indices(len(patch_nums), vae.cfg.share_quant_resi)
    f_ng = f_BCGG.detach()
    rest, f_hat = f_ng.clone(), torch.zeros_like(f_ng)
    idx, losses = [], []
    for si, pn in enumerate(patch_nums):
        last = si == len(patch_nums) - 1
        if last:
            z_BCpp = rest
        else:
            down, up = (m.to(f_BCGG.device) for m in _scale_matrices(pn, G))
            z_BCpp = resample(rest, down)
        with torch.no_grad():
            idx_N = nearest_code(z_BCpp.detach().permute(0, 2, 3, 1).reshape(-1, C), code)
        e_BCpp = F.embedding(idx_N, code).reshape(B, pn, pn, C).permute(0, 3, 1, 2)
        if last:
            residual = (rest - e_BCpp).permute(0, 2, 3, 1).reshape(B, G * G, C)
            h = e_BCpp
        else:
            h = vae.phi(resample(e_BCpp, up), phis[si])
        f_hat = f_hat + h
        rest = rest - h
        idx.append(idx_N.reshape(B, pn * pn))
        losses.append(beta * F.mse_loss(f_hat.detach(), f_BCGG) + F.mse_loss(f_hat, f_ng))
    return Tokens(idx, f_hat, residual.detach(), torch.stack(losses).mean())


def fhat_from_ids(vae: VAE, idx: list[torch.Tensor], patch_nums: tuple[int, ...]) -> list[torch.Tensor]:
    """Teacher forcing: f_hat after each scale si < SN-1 from ground-truth ids (the AR inputs of si+1)."""
    code = vae.quantize.embedding.weight
    G, C = patch_nums[-1], code.shape[1]
    phis = phi_indices(len(patch_nums), vae.cfg.share_quant_resi)
    B = idx[0].shape[0]
    f_hat = code.new_zeros(B, C, G, G)
    out = []
    for si, pn in enumerate(patch_nums[:-1]):
        up = _scale_matrices(pn, G)[1].to(code.device)
        e_BCpp = F.embedding(idx[si], code).reshape(B, pn, pn, C).permute(0, 3, 1, 2)
        f_hat = f_hat + vae.phi(resample(e_BCpp, up), phis[si])
        out.append(f_hat)
    return out
