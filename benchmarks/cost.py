"""Analytic per-method cost from the config: FLOPs and the weights each method reads.

FLOPs come from torch's shape formulas (FlopCounterMode) on a meta-device model, so nothing is
allocated or timed: a 0.7B config costs well under a second. Tests cross-check the numbers with
the spec's hand-derived MAC table.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from model.config import HartConfig
from model.hart import Hart
from model.stages import Stage, method_specs, torch_dtype
from model.transformer import Attention


def meta_model(cfg: HartConfig) -> Hart:
    """Hart on the meta device; the text encoder gets a byte tokenizer (no tokenizer.json needed)."""
    from dataclasses import replace

    from model.text_encoder import TextEncoder
    from model.tokenizer import PromptTokenizer

    with torch.device("meta"):
        hart = Hart(cfg, with_text=False)
        tcfg = replace(cfg.text, pad_id=256, tokenizer="byte")
        hart.text = TextEncoder(tcfg, PromptTokenizer.byte_level(tcfg.max_tokens), empty=True)
    return hart


def method_costs(cfg: HartConfig) -> dict[str, dict[str, float]]:
    """{method: {"flops": F, "params": P}}: P counts every parameter of every module whose forward
    ran (plus the codebook, read directly by the scale steps)."""
    hart = meta_model(cfg)
    out: dict[str, dict[str, float]] = {}
    for spec in method_specs(hart):
        if spec.name == "text_encoder":
            flops, params = _text_cost(hart)
            out[spec.name] = {"flops": flops, "params": params}
            continue
        seen: set[int] = set()
        hooks = [m.register_forward_pre_hook(lambda mod, args, s=seen: s.add(id(mod))) for m in hart.modules()]
        inputs = [torch.empty(t.shape, dtype=torch_dtype(t.dtype), device="meta") for t in spec.inputs]
        fc = FlopCounterMode(display=False)
        with fc, torch.no_grad(), torch.device("meta"):
            Stage(hart, spec.name)(*inputs)
        for h in hooks:
            h.remove()
        seen |= {id(m.qkv_proj) for m in hart.modules() if isinstance(m, Attention) and id(m) in seen}  # F.linear
        params = sum(p.numel() for m in hart.modules() if id(m) in seen for p in m.parameters(recurse=False))
        if spec.component == "ar_transformer":
            params += hart.vae.quantize.embedding.weight.numel()
        out[spec.name] = {"flops": float(fc.get_total_flops()), "params": float(params)}
    return out


def _text_cost(hart: Hart) -> tuple[float, float]:
    """Closed form for the prefix-cached Qwen2 pass over T prompt tokens (the meta model has no prefix KV)."""
    c = hart.text.cfg
    T, S, C, H, K, D, inter = c.max_tokens, hart.text.num_prefix_tokens, c.hidden_size, c.num_heads, \
        c.num_kv_heads, c.head_dim, c.intermediate_size
    proj = C * H * D * 2 + C * K * D * 2  # q, o and k, v
    per_layer = T * (proj + 3 * C * inter) + 2 * T * (S + T) * H * D
    params = c.num_layers * (proj + 3 * C * inter + 2 * C) + T * C  # embedding: only T rows are read
    return 2.0 * c.num_layers * per_layer, float(params)
