"""Teacher-forced AR forward: every scale's inputs built from ground-truth ids, one pass with HART's
block-causal mask (the same computation the KV-cached step loop does, tests/test_model.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.hart import Hart
from model.layers import rope_1d, rope_2d
from model.vae import fhat_from_ids, resample


def block_causal_bias(hart: Hart) -> torch.Tensor:
    """[L, L] additive mask: a token sees its own level and every earlier level (context = level 0)."""
    level = torch.cat([torch.full((st.num_query,), st.si) for st in hart.steps])
    return torch.where(level[:, None] >= level[None], 0.0, float("-inf"))


def drop_context(ctx_BTD: torch.Tensor, mask_BT: torch.Tensor, drop_B: torch.Tensor):
    """CFG dropout: dropped rows get the unconditional branch's inputs (zero context, mask [1, 0, …])."""
    uncond_mask = F.pad(torch.ones_like(mask_BT[:, :1]), (0, mask_BT.shape[1] - 1))
    ctx = torch.where(drop_B[:, None, None], torch.zeros_like(ctx_BTD), ctx_BTD)
    mask = torch.where(drop_B[:, None], uncond_mask, mask_BT)
    return ctx, mask


def teacher_forced(hart: Hart, ctx_BTD, mask_BT, idx: list[torch.Tensor], drop_B: torch.Tensor, bias=None):
    """Returns (logits [B, 1 + Σ_{s≥1} pn², V] predicting cat(idx), h_last [B, G², C]).

    Dropped rows use position ids 0 like the unconditional CFG rows at inference.
    """
    ar, T = hart.ar, mask_BT.shape[1]
    ctx, mask = drop_context(ctx_BTD, mask_BT, drop_B)
    pos_BT = torch.where(drop_B[:, None], torch.zeros_like(mask), mask.cumsum(dim=1) - 1)
    cond_BTC = ar.embed_context(ctx)
    cond_B2C = ar.pool_conditions(cond_BTC, mask)
    pos_off_B = pos_BT[:, -1]
    cos, sin = rope_1d(pos_BT, hart.inv_freq_1d)
    xs, coss, sins = [cond_BTC + ar.level_embed(0)], [cos], [sin]
    with torch.no_grad():
        f_hats = fhat_from_ids(hart.vae, idx, hart.cfg.ar.patch_nums)
    for st in hart.steps[1:]:
        prev = hart.steps[st.si - 1]
        tok_BlC = resample(f_hats[st.si - 1], getattr(hart, f"down_{prev.si}")).flatten(2).transpose(1, 2)
        xs.append(ar.word_embed(tok_BlC) + ar.level_embed(st.si))
        cos, sin = rope_2d(hart.image_coords(st.pn)[None] + pos_off_B[:, None, None], hart.inv_freq_2d)
        coss.append(cos)
        sins.append(sin)
    bias = block_causal_bias(hart) if bias is None else bias
    h = ar.forward_blocks(torch.cat(xs, 1), cond_B2C, torch.cat(coss, 1), torch.cat(sins, 1), -1, -1, bias)
    logits = ar.logits(torch.cat([h[:, T - 1:T], h[:, T:]], dim=1), cond_B2C)
    G2 = hart.G * hart.G
    return logits, h[:, -G2:]


def scale_weighted_ce(hart: Hart, logits_BLV: torch.Tensor, idx: list[torch.Tensor]) -> tuple[torch.Tensor, list]:
    """Cross-entropy per scale, mixed with weights ∝ √(tokens): coarse scales (layout, colour) are not
    drowned by the 256 finest tokens, and the 1-token first scale does not dominate either."""
    per_scale, start = [], 0
    for t in idx:
        n = t.shape[1]
        per_scale.append(F.cross_entropy(logits_BLV[:, start:start + n].flatten(0, 1), t.flatten()))
        start += n
    w = torch.tensor([t.shape[1] ** 0.5 for t in idx])
    loss = (torch.stack(per_scale) * w).sum() / w.sum()
    return loss, [v.item() for v in per_scale]
