"""Hart: text encoder + AR transformer + diffusion head + VAE, exposed as static stage functions.

The stage functions are the export contract: for a fixed config and scale schedule every shape is
static, randomness comes in as tensors, and the only state is the KV cache (module buffers written
at static offsets). A caller only moves tensors between stages:

    ctx = encode_text(ids)
    idx, f_hat, x, cond, pos = ar_step(0, ctx, mask, cfg, u0)
    idx, f_hat, x = ar_step(si, x, f_hat, cond, pos, cfg, u_si)          # 0 < si < SN-1
    idx, e, z = ar_step(SN-1, x, cond, pos, cfg, u_last)
    delta = diffuse(z, cfg, noise)
    img = decode(f_hat, e, delta)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import HartConfig, ScaleStep, scale_steps, total_tokens
from model.layers import rope_1d, rope_2d, rope_inv_freq
from model.text_encoder import TextEncoder
from model.transformer import ARTransformer
from model.vae import VAE, resample, resample_matrix


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """g = -log(-log(u)): a Gumbel(0,1) draw; also the official -log(Exp(1)) with Exp = -log(u)."""
    return -torch.log(-torch.log(u))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Logits strictly below the k-th largest become -inf (ties kept), as the official sampler."""
    kth = logits.topk(k, dim=-1).values.amin(dim=-1, keepdim=True)
    return torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Drop the smallest tokens whose cumulative probability ≤ 1 - p (largest always kept).

    Static-shape form of the official sort/scatter: the removed tokens are a prefix of the ascending
    order, so everything below the smallest kept value goes (ties at the cut are kept).
    """
    srt = logits.sort(dim=-1).values
    remove = srt.softmax(dim=-1).cumsum(dim=-1) <= (1 - p)
    remove[..., -1:] = False
    cut = torch.where(remove, torch.full_like(srt, float("inf")), srt).amin(dim=-1, keepdim=True)
    return torch.where(logits < cut, torch.full_like(logits, float("-inf")), logits)


KV_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}


class Hart(nn.Module):
    def __init__(self, cfg: HartConfig, with_text: bool = True):
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg.text) if with_text else None
        self.ar = ARTransformer(cfg.ar)
        self.vae = VAE(cfg.vae)
        self.steps: list[ScaleStep] = scale_steps(cfg.ar, cfg.sampler, cfg.vae.share_quant_resi)
        self.G = cfg.ar.patch_nums[-1]
        self.B = cfg.batch
        self.preview = None  # model/preview.py Projection from CKPT/preview.json (model.load); not in state_dict
        d = cfg.ar.head_dim
        self.register_buffer("inv_freq_1d", rope_inv_freq(d, 2), persistent=False)
        self.register_buffer("inv_freq_2d", rope_inv_freq(d, 4), persistent=False)
        for st in self.steps[:-1]:
            self.register_buffer(f"up_{st.si}", resample_matrix(st.pn, self.G, "bicubic"), persistent=False)
            self.register_buffer(f"down_{st.si}", resample_matrix(self.G, st.next_pn, "area"), persistent=False)
        self.reset_cache()

    # ---- plumbing -----------------------------------------------------------------------------
    @property
    def num_scales(self) -> int:
        return len(self.steps)

    @property
    def more_smooth(self) -> bool:
        return self.cfg.sampler.more_smooth

    def reset_cache(self, dtype: torch.dtype | None = None, layout: str = "bhsd") -> None:
        """(Re)allocate the KV cache; dtype defaults to the config's memory mode (cfg.kv_cache); layout
        "llm" is the one `body` needs (model/transformer.py Attention)."""
        dtype = dtype or KV_DTYPES[self.cfg.kv_cache]
        self.ar.setup_cache(2 * self.B, total_tokens(self.cfg.ar), dtype, self.cfg.attn_chunk, layout)

    def codebook(self) -> torch.Tensor:
        return self.vae.quantize.embedding.weight

    def noise_shape(self, si: int) -> tuple[int, ...]:
        """Uniform input of step si: [n, B, l', V], n = 2 with more_smooth (choice + soft), else 1."""
        st = self.steps[si]
        return (2 if self.more_smooth else 1, self.B, st.num_sampled, self.cfg.ar.vocab_size)

    def diffusion_noise_shape(self) -> tuple[int, int, int]:
        return (self.cfg.ar.num_sampling_steps, self.B * self.G * self.G, self.cfg.ar.cvae)

    def image_coords(self, pn: int) -> torch.Tensor:
        """[pn², 2] official 2-D coordinates (i/pn·G, j/pn·G) in fp32 for a pn×pn map."""
        ar = torch.arange(pn)
        gi, gj = torch.meshgrid(ar, ar, indexing="ij")
        return torch.stack([gi, gj], dim=-1).reshape(-1, 2) / pn * self.G

    # ---- stage: text ------------------------------------------------------------------------
    def encode_text(self, token_ids_BT: torch.Tensor) -> torch.Tensor:
        assert self.text is not None, "this model was built without a text encoder"
        return self.text(token_ids_BT)

    # ---- stage: AR steps ------------------------------------------------------------------------
    def prefill(self, ctx_BTD, mask_BT):
        """Step-0 inputs: CFG batch (cond rows, then zero-context rows), positions and conditions."""
        B = ctx_BTD.shape[0]
        ctx_2BTD = torch.cat([ctx_BTD, torch.zeros_like(ctx_BTD)], dim=0)
        cond_2BTC = self.ar.embed_context(ctx_2BTD)
        mask = mask_BT.to(torch.float32)
        pos_BT = mask.cumsum(dim=1) - 1
        uncond_mask = F.pad(torch.ones_like(mask[:, :1]), (0, mask.shape[1] - 1))
        pos_2BT = torch.cat([pos_BT, torch.zeros_like(pos_BT)], dim=0)
        cond_2B2C = self.ar.pool_conditions(cond_2BTC, torch.cat([mask, uncond_mask], dim=0))
        pos_off_2B = pos_2BT[:, -1]
        x_2BLC = cond_2BTC + self.ar.level_embed(0)
        assert B == self.B
        return x_2BLC, pos_2BT, cond_2B2C, pos_off_2B

    def rope(self, st: ScaleStep, pos_2BL_or_off):
        """cos/sin [2B, l, d] of step st: 1-D positions of the context at step 0, else 2-D image coordinates."""
        if st.si == 0:
            return rope_1d(pos_2BL_or_off, self.inv_freq_1d)
        coords = self.image_coords(st.pn)[None] + pos_2BL_or_off[:, None, None]
        return rope_2d(coords, self.inv_freq_2d)

    def hidden(self, st: ScaleStep, x_2BLC, cond_2B2C, pos_2BL_or_off):
        """Run the blocks for step st (writes its KV slice); returns h_last [2B, l, C]."""
        cos, sin = self.rope(st, pos_2BL_or_off)
        return self.ar.forward_blocks(x_2BLC, cond_2B2C, cos, sin, st.kv_start, st.kv_end)

    def cfg_logits(self, st: ScaleStep, h_2BLC, cond_2B2C, cfg):
        """CFG-mixed logits [B, l', V] (fp32) of the sampled positions, before filtering."""
        if st.si == 0:
            h_2BLC = h_2BLC[:, -1:]  # only the last context position predicts the 1×1 token
        logits = self.ar.logits(h_2BLC, cond_2B2C)
        t = cfg.float() * st.ratio
        return (1 + t) * logits[: self.B] - t * logits[self.B:]

    def guided_logits(self, st: ScaleStep, h_2BLC, cond_2B2C, cfg):
        """CFG-mixed, top-k (and top-p) filtered logits [B, l', V]."""
        logits = top_k_filter(self.cfg_logits(st, h_2BLC, cond_2B2C, cfg), st.top_k)
        if self.cfg.sampler.top_p > 0:
            logits = top_p_filter(logits, self.cfg.sampler.top_p)
        return logits

    def choose(self, st: ScaleStep, logits_BlV, gumbel):
        """Gumbel-max token choice; with more_smooth the Gumbel-soft codeword mixture (official τ)."""
        idx_Bl = (logits_BlV + gumbel[0]).argmax(dim=-1)
        code = self.codebook()
        if self.more_smooth:
            tau = max(0.27 * (1 - 0.95 * st.ratio), 0.005)
            y = ((logits_BlV * (1 + st.ratio) + gumbel[1]) / tau).softmax(dim=-1)
            e_BlC = y.to(code.dtype) @ code
        else:
            e_BlC = F.embedding(idx_Bl, code)
        return idx_Bl, e_BlC

    def latent_update(self, st: ScaleStep, f_hat, e_BlC):
        """f_hat += Phi(bicubic(e)); next input = word_embed(area(f_hat)) + E(si+1), doubled for CFG."""
        B, pn, C = f_hat.shape[0], st.pn, e_BlC.shape[-1]
        h_BCpp = e_BlC.transpose(1, 2).reshape(B, C, pn, pn)
        f_hat = f_hat + self.vae.phi(resample(h_BCpp, getattr(self, f"up_{st.si}")), st.phi_index)
        return f_hat, self.next_tokens(st, f_hat)

    def next_tokens(self, st: ScaleStep, f_hat):
        """Input tokens of scale si+1 from f_hat after step si: word_embed(area(f_hat)) + E(si+1), ×2 for CFG."""
        B, C = f_hat.shape[:2]
        tok_BlC = resample(f_hat, getattr(self, f"down_{st.si}")).reshape(B, C, -1).transpose(1, 2)
        x_next = self.ar.word_embed(tok_BlC.to(self.ar.word_embed.weight.dtype)) + self.ar.level_embed(st.si + 1)
        return torch.cat([x_next, x_next], dim=0)

    def diffusion_condition(self, h_2BLC, idx_Bl):
        """z = decoder_norm(h_last + word_embed(code[idx])) (hard ids even with more_smooth) → [2B·l, C]."""
        q = self.ar.word_embed(F.embedding(idx_Bl, self.codebook()).to(self.ar.word_embed.weight.dtype))
        z = self.ar.decoder_norm(h_2BLC + torch.cat([q, q], dim=0))
        return z.reshape(-1, z.shape[-1])

    def ar_step(self, si: int, *args):
        """One scale step; signature depends on si (see module docstring). Uniform noise u is an input."""
        st = self.steps[si]
        if si == 0:
            ctx, mask, cfg, u = args
            x, pos, cond, pos_off = self.prefill(ctx, mask)
            h = self.hidden(st, x, cond, pos)
        else:
            if si < self.num_scales - 1:
                x, f_hat, cond, pos_off, cfg, u = args
            else:
                x, cond, pos_off, cfg, u = args
            h = self.hidden(st, x, cond, pos_off)
        return self.sample_step(si, h, *args[1:] if si else (cond, pos_off, cfg, u))

    # ---- the split AR program: one transformer body for every scale + small per-scale glue -------------
    def split_prefill(self, ctx_BTD, mask_BT):
        """Inputs of the first body call: context tokens, their 1-D RoPE, conditions, start position 0."""
        x, pos, cond, pos_off = self.prefill(ctx_BTD, mask_BT)
        cos, sin = self.rope(self.steps[0], pos)
        return x, cos, sin, cond, pos_off, torch.zeros(1, dtype=torch.int64)

    def body(self, x_2BLC, cos, sin, cond_2B2C, start_pos):
        """The transformer blocks over any query length at a tensor start position (llm cache layout)."""
        return self.ar.forward_blocks(x_2BLC, cond_2B2C, cos, sin, start_pos)

    def body_static(self, si: int, x_2BLC, cos, sin, cond_2B2C, start_pos):
        """The plain-PyTorch reference of `body` for step si (static offsets; start_pos must equal them)."""
        st = self.steps[si]
        return self.ar.forward_blocks(x_2BLC, cond_2B2C, cos, sin, st.kv_start, st.kv_end)

    def glue(self, si: int, h_2BLC, *args):
        """Scale si after the body: sampling and the latent update, plus the next body call's RoPE tables
        and start position (the last scale returns idx, e_last, z as ar_step does)."""
        out = self.sample_step(si, h_2BLC, *args)
        if si == self.num_scales - 1:
            return out
        pos_off = args[-3]
        nxt = self.steps[si + 1]
        cos, sin = self.rope(nxt, pos_off)
        start = torch.full((1,), nxt.kv_start, dtype=torch.int64)
        return (*out[:3], cos, sin, start)

    def sample_step(self, si: int, h, *args):
        """Logits, sampling and latent update of step si from its hidden states h. args: (f_hat,) cond,
        pos_off, cfg, u for 0 < si < last; cond, pos_off, cfg, u at step 0; cond, pos_off, cfg, u last."""
        st = self.steps[si]
        if 0 < si < self.num_scales - 1:
            f_hat, cond, pos_off, cfg, u = args
        else:
            cond, pos_off, cfg, u = args
        logits = self.guided_logits(st, h, cond, cfg)
        idx, e = self.choose(st, logits, gumbel_from_uniform(u.float()))
        if si == self.num_scales - 1:
            return idx, e, self.diffusion_condition(h, idx)
        if si == 0:
            f_hat = torch.zeros(self.B, self.cfg.ar.cvae, self.G, self.G, dtype=e.dtype)
        f_hat, x_next = self.latent_update(st, f_hat, e)
        if si == 0:
            return idx, f_hat, x_next, cond, pos_off
        return idx, f_hat, x_next

    # ---- stage: diffusion + decode ----------------------------------------------------------------
    def diffuse(self, z_2NC: torch.Tensor, cfg: torch.Tensor, noise_KNC: torch.Tensor) -> torch.Tensor:
        """Residual tokens δ [N, Cvae]; guidance w = cfg·r_last (the official stale ratio)."""
        w = cfg.float() * self.steps[-1].ratio
        return self.ar.diffloss.sample(z_2NC, w, noise_KNC)

    def decode(self, f_hat: torch.Tensor, e_BLC: torch.Tensor, delta_NC: torch.Tensor) -> torch.Tensor:
        """f_hat + (e + δ) on the G×G grid → image [B, 3, H, W] in [0, 1]."""
        B, C = f_hat.shape[:2]
        last = (e_BLC + delta_NC.reshape(B, -1, C).to(e_BLC.dtype)).transpose(1, 2).reshape(B, C, self.G, self.G)
        img = self.vae.fhat_to_img((f_hat + last).to(self.vae.post_quant_conv.weight.dtype))
        return (img.float() + 1) * 0.5
