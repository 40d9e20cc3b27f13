"""HART AR transformer (HARTForT2I without the VAE): llama blocks, HART RoPE, static-offset KV cache.

Parameter names equal the official state-dict keys, so `load_state_dict` maps 1:1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ARConfig
from model.diffusion import DiffLoss
from model.layers import RMSNorm, TimestepEmbedder, apply_rope, gelu_tanh


def llm_ops():
    """ExecuTorch's LLM custom ops (torch.ops.llama.update_cache / custom_sdpa): eager CPU kernels and
    export-time ops that the ExecuTorch runtime implements; imported only by the `llm` cache layout."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 - registers torch.ops.llama

    return torch.ops.llama


class Attention(nn.Module):
    """Self-attention over a preallocated KV cache.

    Two cache layouts with the same numbers: `bhsd` (plain PyTorch, slice writes at static Python-int
    offsets: the reference, and one static graph per scale) and `llm` ([rows, S, H, D], written and read
    by ExecuTorch's update_cache / custom_sdpa at a tensor start position: one graph for every scale,
    writes only the new rows). custom_sdpa with is_causal=False attends to keys [0, start + L), which is
    HART's block-causal rule.
    """

    def __init__(self, cfg: ARConfig):
        super().__init__()
        C, self.H, self.D = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(C, 3 * C, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.proj = nn.Linear(C, C)
        self.l2_norm = cfg.attn_l2_norm
        if self.l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, self.H, 1, 1), 4.0).log())
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.D)  # VAR convention, not 1/sqrt(d)
        self.attn_chunk = 0
        self.layout = "bhsd"
        self.register_buffer("k_cache", torch.zeros(0), persistent=False)
        self.register_buffer("v_cache", torch.zeros(0), persistent=False)
        self.register_buffer("k_scale", torch.zeros(0), persistent=False)
        self.register_buffer("v_scale", torch.zeros(0), persistent=False)

    def setup_cache(self, rows: int, kv_len: int, dtype: torch.dtype, attn_chunk: int = 0,
                    layout: str = "bhsd") -> None:
        """dtype int8 stores codes plus one fp32 scale per (row, head, token): 4x smaller than fp32."""
        if layout == "llm" and (dtype != torch.float32 or attn_chunk):
            raise ValueError("the llm cache layout supports the fp32 cache without attention chunking only")
        self.attn_chunk, self.layout = attn_chunk, layout
        shape = (rows, kv_len, self.H, self.D) if layout == "llm" else (rows, self.H, kv_len, self.D)
        self.k_cache = torch.zeros(shape, dtype=dtype)
        self.v_cache = torch.zeros(shape, dtype=dtype)
        n = kv_len if dtype == torch.int8 else 0
        self.k_scale = torch.zeros(rows, self.H, n, 1)
        self.v_scale = torch.zeros(rows, self.H, n, 1)

    @property
    def int8_cache(self) -> bool:
        return self.k_cache.dtype == torch.int8

    def write_cache(self, cache, scale, x_BHLD, start: int, end: int) -> None:
        if cache.dtype == torch.int8:
            s = (x_BHLD.abs().amax(dim=-1, keepdim=True).float() / 127).clamp(min=1e-8)
            cache[:, :, start:end] = torch.round(x_BHLD.float() / s).clamp(-127, 127).to(torch.int8)
            scale[:, :, start:end] = s
        else:
            cache[:, :, start:end] = x_BHLD.to(cache.dtype)

    def read_cache(self, cache, scale, end: int, dtype: torch.dtype):
        if cache.dtype == torch.int8:
            return (cache[:, :, :end].float() * scale[:, :, :end]).to(dtype)
        return cache[:, :, :end].to(dtype)

    def attend(self, q_BHLD, k_BHSD, v_BHSD, attn_bias=None):
        """softmax(q·kᵀ·scale + bias)·v; with attn_chunk, over static query chunks (peak memory ∝ chunk)."""
        L = q_BHLD.shape[2]
        step = self.attn_chunk if 0 < self.attn_chunk < L else L
        outs = []
        for s in range(0, L, step):
            att = (q_BHLD[:, :, s:s + step] * self.scale) @ k_BHSD.transpose(-2, -1)
            if attn_bias is not None:
                att = att + attn_bias[..., s:s + step, :]
            outs.append(att.softmax(dim=-1) @ v_BHSD)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def forward(self, x_BLC, cos, sin, kv_start, kv_end: int = 0, attn_bias=None):
        """kv_start/kv_end are Python ints (bhsd): each scale step is its own static graph. kv_start < 0
        means "no cache": attend over the given tokens only (teacher forcing), with attn_bias. A tensor
        kv_start ([1] int64) selects the llm layout, where kv_end is implied by the query length."""
        B, L, C = x_BLC.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x_BLC, self.qkv_proj.weight, bias).view(B, L, 3, self.H, self.D)
        if isinstance(kv_start, torch.Tensor):
            return self.proj(self.attend_llm(*qkv.unbind(2), cos, sin, kv_start).reshape(B, L, C))
        q_BHLD, k_BHLD, v_BHLD = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q_BHLD, k_BHLD = self.rope_qk(q_BHLD, k_BHLD, cos[:, None], sin[:, None])
        if kv_start >= 0:
            self.write_cache(self.k_cache, self.k_scale, k_BHLD, kv_start, kv_end)
            self.write_cache(self.v_cache, self.v_scale, v_BHLD, kv_start, kv_end)
            k_BHSD = self.read_cache(self.k_cache, self.k_scale, kv_end, q_BHLD.dtype)
            v_BHSD = self.read_cache(self.v_cache, self.v_scale, kv_end, q_BHLD.dtype)
        else:
            k_BHSD, v_BHSD = k_BHLD, v_BHLD
        o_BHLD = self.attend(q_BHLD, k_BHSD, v_BHSD, attn_bias)
        return self.proj(o_BHLD.transpose(1, 2).reshape(B, L, C))

    def rope_qk(self, q, k, cos, sin, head_dim: int = 1):
        """qk L2 norm (if the checkpoint has it) then RoPE; cos/sin already broadcast to q's layout,
        head_dim = where the heads are (1: BHLD, 2: BLHD)."""
        if self.l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(math.log(100.0)).exp().transpose(1, head_dim)
            q = F.normalize(q, dim=-1) * scale_mul
            k = F.normalize(k, dim=-1)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def attend_llm(self, q_BLHD, k_BLHD, v_BLHD, cos, sin, start_pos):
        """Write the new rows at start_pos (update_cache) and attend to [0, start + L) (custom_sdpa)."""
        if self.layout != "llm":
            raise RuntimeError("a tensor start position needs the llm cache layout (setup_cache(layout='llm'))")
        ops = llm_ops()
        q_BLHD, k_BLHD = self.rope_qk(q_BLHD, k_BLHD, cos[:, :, None], sin[:, :, None], head_dim=2)
        start = start_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + q_BLHD.shape[1] <= self.k_cache.shape[1])
        ops.update_cache(k_BLHD, self.k_cache, start)
        ops.update_cache(v_BLHD, self.v_cache, start)
        return ops.custom_sdpa(q_BLHD, self.k_cache, self.v_cache, start, None, 0.0, False, self.scale)


class LlamaMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class GPT2MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block with ONE shared RMSNorm (`ln_wo_grad`) before attention and MLP."""

    def __init__(self, cfg: ARConfig):
        super().__init__()
        C = cfg.embed_dim
        self.C = C
        self.aln = cfg.aln
        self.attn = Attention(cfg)
        self.ffn = LlamaMLP(C, cfg.mlp_hidden) if cfg.mlp_type == "llama" else GPT2MLP(C, cfg.mlp_hidden)
        self.ln_wo_grad = RMSNorm(C, cfg.norm_eps)
        if cfg.aln == "full":
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        elif cfg.aln == "shared":
            self.scale_shift_table = nn.Parameter(torch.zeros(6, C))

    def forward(self, x, c_block_BC, cos, sin, kv_start, kv_end: int = 0, attn_bias=None):
        if self.aln == "none":
            x = x + self.attn(self.ln_wo_grad(x), cos, sin, kv_start, kv_end, attn_bias)
            return x + self.ffn(self.ln_wo_grad(x))
        if self.aln == "full":
            mod = self.ada_lin(c_block_BC).view(-1, 1, 6, self.C)
        else:
            mod = (self.scale_shift_table[None] + c_block_BC[:, None]).view(-1, 1, 6, self.C)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.unbind(2)
        h = self.ln_wo_grad(x) * (scale1 + 1) + shift1
        x = x + self.attn(h, cos, sin, kv_start, kv_end, attn_bias) * gamma1
        return x + self.ffn(self.ln_wo_grad(x) * (scale2 + 1) + shift2) * gamma2


class HeadNorm(nn.Module):
    """AdaLNBeforeHead: RMSNorm modulated by the max-pooled prompt condition."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = RMSNorm(C, eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BLC, c_head_BC):
        scale, shift = self.ada_lin(c_head_BC).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC) * (scale + 1) + shift


class ARTransformer(nn.Module):
    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        self.word_embed = nn.Linear(cfg.cvae, C)
        self.context_embed = nn.Linear(cfg.context_dim, C)
        if cfg.use_context_norm:
            self.context_norm = RMSNorm(cfg.context_dim, cfg.norm_eps)
        if cfg.timestep_level_embed:
            self.lvl_embed = TimestepEmbedder(C)
        else:
            self.lvl_embed = nn.Embedding(len(cfg.patch_nums), C)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.head_nm = HeadNorm(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)
        self.decoder_norm = RMSNorm(C, cfg.norm_eps)
        self.diffloss = DiffLoss(cfg.cvae, C, cfg.diff_width, cfg.diff_depth, cfg.num_sampling_steps)

    def setup_cache(self, rows: int, kv_len: int, dtype: torch.dtype = torch.float32, attn_chunk: int = 0,
                    layout: str = "bhsd") -> None:
        for b in self.blocks:
            b.attn.setup_cache(rows, kv_len, dtype, attn_chunk, layout)

    def level_embed(self, level: int) -> torch.Tensor:
        """E(level) as [1, 1, C]; levels are static per step, so this folds to a tiny in-graph MLP."""
        lvl = torch.full((1,), level, dtype=torch.int64)
        w = self.lvl_embed.mlp[0].weight if self.cfg.timestep_level_embed else self.lvl_embed.weight
        return self.lvl_embed(lvl).to(w.dtype)[:, None]

    def embed_context(self, ctx_2BTD: torch.Tensor) -> torch.Tensor:
        if self.cfg.use_context_norm:
            ctx_2BTD = self.context_norm(ctx_2BTD)
        return self.context_embed(ctx_2BTD)

    def pool_conditions(self, cond_2BTC: torch.Tensor, mask_2BT: torch.Tensor) -> torch.Tensor:
        """[2B, 2, C]: row 0 = max-pool (head_nm, full-AdaLN "max"), row 1 = masked mean ("avg", shared AdaLN)."""
        c_max = cond_2BTC.max(dim=1).values
        m = mask_2BT.to(cond_2BTC.dtype)[..., None]
        c_avg = (cond_2BTC * m / m.sum(1).clamp(min=1)[:, None]).sum(1)
        return torch.stack([c_max, c_avg], dim=1)

    def block_condition(self, cond_2B2C: torch.Tensor) -> torch.Tensor:
        if self.cfg.aln == "shared" or (self.cfg.aln == "full" and self.cfg.sep_aln_pooling_mode == "avg"):
            return cond_2B2C[:, 1]
        return cond_2B2C[:, 0]

    def forward_blocks(self, x_BLC, cond_2B2C, cos, sin, kv_start, kv_end: int = 0, attn_bias=None):
        c_block = self.block_condition(cond_2B2C)
        for b in self.blocks:
            x_BLC = b(x_BLC, c_block, cos, sin, kv_start, kv_end, attn_bias)
        return x_BLC

    def logits(self, h_BLC: torch.Tensor, cond_2B2C: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_nm(h_BLC, cond_2B2C[:, 0])).float()
