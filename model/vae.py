"""VAE side of the hybrid tokenizer: codebook, Phi convs, fixed resampling matrices, CNN decoder.

Module names equal the official `vae.*` keys (minus the prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VAEConfig


def Normalize(ch: int) -> nn.GroupNorm:  # noqa: N802 - official name
    return nn.GroupNorm(32, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = Normalize(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = Normalize(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (softmax over keys, scale C^-1/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.C = ch
        self.norm = Normalize(ch)
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


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, mult, nres = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        n_lvl = len(mult)
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        ups: list[nn.Module] = []
        for lvl in reversed(range(n_lvl)):
            up = nn.Module()
            block_out = ch * mult[lvl]
            up.block = nn.ModuleList()
            up.attn = nn.ModuleList()
            for _ in range(nres + 1):
                up.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if lvl == n_lvl - 1:
                    up.attn.append(AttnBlock(block_in))
            if lvl != 0:
                up.upsample = Upsample2x(block_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
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
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.quantize = Quantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.decoder = Decoder(cfg)

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
