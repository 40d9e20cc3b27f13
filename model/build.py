"""The small seeded default model: the same weights on every machine, no download."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from model.config import DEFAULT_SEED, HartConfig, default_config
from model.hart import Hart
from model.text_encoder import init_text_encoder

# Gains keep the default model in a useful regime: diffusion variance channels inside [-1, 1],
# AdaLN shifts small, logits with a spread that makes top-k and Gumbel sampling matter.
_GAINS = (("ada_lin", 0.25), ("adaLN_modulation", 0.25), ("final_layer.linear", 0.15))


@torch.no_grad()
def seeded_init(module: torch.nn.Module, seed: int) -> None:
    """Deterministic weights from one torch.Generator, in named_parameters() order."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        n = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.ndim == 1:
            is_scale = name.endswith(".weight")  # RMSNorm / LayerNorm / GroupNorm weights sit near 1
            p.copy_(1.0 + 0.1 * n if is_scale else 0.1 * n)
        elif name.endswith("quantize.embedding.weight"):
            p.copy_(n)
        elif name.endswith("scale_shift_table"):
            p.copy_(0.1 * n)
        else:
            gain = next((g for key, g in _GAINS if key in name), 1.0)
            p.copy_(gain * n / math.sqrt(p[0].numel()))


def build(cfg: HartConfig, seed: int = DEFAULT_SEED) -> Hart:
    """A Hart with seeded weights for any config (default model, tests, scale benchmarks)."""
    hart = Hart(cfg, with_text=False)
    seeded_init(hart.ar, seed)
    seeded_init(hart.vae, seed + 1)
    hart.text = init_text_encoder(cfg.text, seed + 2)
    return hart.eval().requires_grad_(False)


def default_model() -> Hart:
    return build(default_config())


def with_config(hart: Hart, cfg: HartConfig, what: str) -> Hart:
    """The same weights (and text encoder) under another config, e.g. a scale schedule or a memory mode:
    steps, caches and resampling matrices are rebuilt; `what` names the change in the error."""
    if cfg == hart.cfg:
        return hart
    out = Hart(cfg, with_text=False)
    missing, _ = out.load_state_dict({k: v for k, v in hart.state_dict().items() if not k.startswith("text.")},
                                     strict=False)
    if missing:
        raise ValueError(f"{what} change lost weights: {missing[:3]}")
    out.text = hart.text
    out.preview = hart.preview  # the latent-to-RGB projection does not depend on the schedule or the mode
    return out.eval().requires_grad_(False)


def with_patch_nums(hart: Hart, patch_nums: tuple[int, ...]) -> Hart:
    """The same weights on another scale schedule (the steps, caches and resampling matrices change)."""
    if tuple(patch_nums) == tuple(hart.cfg.ar.patch_nums):
        return hart
    return with_config(hart, replace(hart.cfg, ar=replace(hart.cfg.ar, patch_nums=tuple(patch_nums))), "schedule")
