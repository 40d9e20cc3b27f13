"""The official checkpoint, loaded through model.load, reproduces the official outputs stage by stage.

Fixture: ../shared/fixtures/official-tiny (written by the official code's save_pretrained; every
array in reference.npz is an official output for recorded inputs, ids and noise).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from model.config import SamplerConfig
from model.diffusion import respaced_schedule
from model.hart import Hart
from model.layers import rope_1d, rope_2d

ATOL = 1e-5  # what the official code itself shows between thread counts (fixture README)


def close(a: torch.Tensor, b, atol=ATOL, rtol=1e-5, what=""):
    a = a.detach()
    b = (b.detach() if isinstance(b, torch.Tensor) else torch.from_numpy(np.asarray(b))).to(a.dtype)
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    tol = atol + rtol * b.abs().max().item()
    assert err <= tol, f"{what}: max |Δ| {err:.3e} > {tol:.3e}"


@pytest.fixture(scope="module")
def official(official_dir):
    return model.load(official_dir)


def with_sampler(h: Hart, **kw) -> Hart:
    """Same weights, other sampler flags (more_smooth changes the step graphs)."""
    h2 = Hart(replace(h.cfg, sampler=replace(h.cfg.sampler, **kw)), with_text=False)
    h2.load_state_dict(h.state_dict(), strict=False)
    return h2.eval().requires_grad_(False)


def T(ref, key) -> torch.Tensor:
    return torch.from_numpy(np.asarray(ref[key]))


def test_loader_reads_config_and_detects_variants(official):
    ar = official.cfg.ar
    assert (ar.depth, ar.embed_dim, ar.num_heads, ar.context_token, ar.context_dim) == (2, 128, 4, 16, 64)
    assert (ar.aln, ar.timestep_level_embed, ar.attn_l2_norm, ar.use_context_norm) == ("none", True, False, False)
    assert ar.patch_nums == (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert (official.cfg.vae.vocab_size, official.cfg.vae.z_channels, official.cfg.vae.quant_resi) == (1024, 16, 0.5)
    assert official.text is None  # the fixture ships no text model: context is fed directly


def test_ema_weights_are_the_default(official_dir, ref):
    """The official sampler uses ema_model.bin; the online weights give different outputs."""
    online = model.load(official_dir, prefer_ema=False)
    ema = model.load(official_dir)
    w_online, w_ema = online.ar.head.weight, ema.ar.head.weight
    assert not torch.equal(w_online, w_ema)
    x, *_ = ema.prefill(T(ref, "b1.context"), T(ref, "b1.context_mask"))
    close(x, ref["b1.s00.x_in"], what="x_in from EMA weights")


def test_module_probes(official, ref):
    ar = official.ar
    close(ar.embed_context(T(ref, "mod.context_embed.x")), ref["mod.context_embed.out"], what="context_embed")
    lv = torch.cat([ar.level_embed(int(lvl))[0] for lvl in ref["mod.lvl_embed.levels"]])
    close(lv, ref["mod.lvl_embed.out"], what="lvl_embed")
    cond = T(ref, "mod.cond_BD")
    c = ar.pool_conditions(cond, torch.ones(cond.shape[:2]))
    close(ar.head_nm(T(ref, "mod.head.h"), c[:, 0]), ref["mod.head.head_nm_out"], what="head_nm")
    close(ar.logits(T(ref, "mod.head.h"), c), ref["mod.head.logits"], what="logits")
    close(ar.decoder_norm(T(ref, "mod.head.h")), ref["mod.decoder_norm.out"], what="decoder_norm")
    net = ar.diffloss.net
    out = net(T(ref, "mod.diffnet.x"), T(ref, "mod.diffnet.t"), T(ref, "mod.diffnet.c"))
    close(out, ref["mod.diffnet.out"], what="diffusion net")
    vae = official.vae
    close(vae.post_quant_conv(T(ref, "mod.vae.f_hat")), ref["mod.vae.post_quant_conv"], what="post_quant_conv")
    close(vae.fhat_to_img(T(ref, "mod.vae.f_hat")), ref["mod.vae.fhat_to_img"], atol=2e-5, what="fhat_to_img")


def test_rope_tables(official, ref):
    pos = T(ref, "mod.ctx_pos")
    cos, sin = rope_1d(pos, official.inv_freq_1d)
    close(cos, ref["mod.rope.ctx_cos"], what="ctx cos")
    close(sin, ref["mod.rope.ctx_sin"], what="ctx sin")
    off = pos[:, -1].float()
    for st in official.steps[1:]:
        p = official.image_coords(st.pn)[None] + off[:, None, None]
        close(p, ref[f"mod.rope.s{st.si:02d}.pos"], what=f"2-D positions si={st.si}")
        cos, sin = rope_2d(p, official.inv_freq_2d)
        close(cos, ref[f"mod.rope.s{st.si:02d}.cos"], what=f"2-D cos si={st.si}")
        close(sin, ref[f"mod.rope.s{st.si:02d}.sin"], what=f"2-D sin si={st.si}")


def test_schedule_and_phi_tables(official, ref):
    s = respaced_schedule(8)
    for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
              "sqrt_recipm1_alphas_cumprod", "posterior_log_variance_clipped", "posterior_mean_coef1",
              "posterior_mean_coef2", "timestep_map"):
        np.testing.assert_allclose(s[k], ref[f"mod.diffsched.{k}"], rtol=1e-12, atol=0, err_msg=k)
    assert [st.phi_index for st in official.steps[:-1]] == list(ref["mod.quant.phi_index"][:-1])


def test_next_input_probes(official, ref):
    for si in (0, 2, 5, 8):
        st = official.steps[si]
        h = T(ref, f"mod.next_input.s{si:02d}.h")
        e = h.reshape(1, h.shape[1], -1).transpose(1, 2)
        f_hat, x = official.latent_update(st, T(ref, f"mod.next_input.s{si:02d}.f_hat_in"), e)
        close(f_hat, ref[f"mod.next_input.s{si:02d}.f_hat_out"], what=f"f_hat si={si}")
        nm = official.ar.word_embed(T(ref, f"mod.next_input.s{si:02d}.next_map").flatten(2).transpose(1, 2))
        close(x[:1], nm + official.ar.level_embed(si + 1), what=f"next tokens si={si}")


@pytest.mark.parametrize("run,smooth", [("b1", False), ("b1s", True), ("b1f", False)])
def test_generation_stage_by_stage(official, ref, run, smooth):
    """Every scale: inputs, hidden state, CFG logits, chosen ids, soft/hard embeddings, f_hat; then z,
    the 8 diffusion steps, the residual and the image — each from recorded official inputs."""
    h = with_sampler(official, more_smooth=smooth)
    h.reset_cache()
    P = run
    cfg = torch.tensor([float(ref[f"{P}.cfg"])])
    x, pos, cond, pos_off = h.prefill(T(ref, f"{P}.context"), T(ref, f"{P}.context_mask"))
    close(h.ar.embed_context(torch.cat([T(ref, f"{P}.context"), torch.zeros_like(T(ref, f"{P}.context"))])),
          ref[f"{P}.cond_BD"], what="cond_BD")
    for st in h.steps:
        s = f"{P}.s{st.si:02d}"
        close(x, ref[f"{s}.x_in"], what=f"{s}.x_in")
        hid = h.hidden(st, T(ref, f"{s}.x_in"), cond, pos if st.si == 0 else pos_off)
        close(hid, ref[f"{s}.h_last"], what=f"{s}.h_last")
        logits = h.guided_logits(st, hid, cond, cfg)
        raw = T(ref, f"{s}.logits_cfg")
        kept = torch.isfinite(logits)
        assert int(ref[f"{s}.top_k"]) == st.top_k
        assert torch.equal(kept, raw >= raw.topk(st.top_k, dim=-1).values.amin(-1, keepdim=True)), f"{s}: top-k set"
        close(logits[kept], raw[kept], what=f"{s}.logits_cfg")
        if smooth:
            g = torch.stack([torch.zeros_like(logits), -torch.log(T(ref, f"{s}.gumbel_exp"))])
            assert float(ref[f"{s}.gumbel_tau"]) == pytest.approx(max(0.27 * (1 - 0.95 * st.ratio), 0.005))
        else:
            g = torch.zeros((1, *logits.shape))  # greedy = Gumbel-max with constant noise
        idx, e = h.choose(st, logits, g)
        if P != "b1f":
            assert torch.equal(idx, T(ref, f"{s}.idx")), f"{s}: chosen ids"
        ids = T(ref, f"{s}.idx")
        if not smooth:
            e = F.embedding(ids, h.codebook())
        if st.si < h.num_scales - 1:
            h_in = T(ref, f"{s}.h_in")
            close(e.transpose(1, 2).reshape(h_in.shape), h_in, atol=2e-3 if smooth else ATOL, what=f"{s}.h_in")
            f_prev = torch.zeros_like(T(ref, f"{s}.f_hat")) if st.si == 0 else T(ref, f"{P}.s{st.si - 1:02d}.f_hat")
            f_hat, x = h.latent_update(st, f_prev, h_in.flatten(2).transpose(1, 2))
            close(f_hat, ref[f"{s}.f_hat"], what=f"{s}.f_hat")
            close(x[:1], h.ar.word_embed(T(ref, f"{s}.next_map").flatten(2).transpose(1, 2))
                  + h.ar.level_embed(st.si + 1), what=f"{s}.next tokens")
        else:
            close(h.diffusion_condition(hid, ids), ref[f"{P}.diff.z"], what="diff.z")
    n = T(ref, f"{P}.diff.noise_init").shape[0]
    noise = torch.stack([T(ref, f"{P}.diff.noise_init")] + [T(ref, f"{P}.diff.k{j}.noise")[:n] for j in range(7)])
    w = float(ref[f"{P}.diff.cfg"])
    assert w == pytest.approx(float(ref[f"{P}.cfg"]) * h.steps[-1].ratio)
    # each sampler step from the recorded official x_t
    dl = h.ar.diffloss
    z = T(ref, f"{P}.diff.z")
    for j, k in enumerate(reversed(range(8))):
        xk = T(ref, f"{P}.diff.k{j}.x")[:n]
        assert int(ref[f"{P}.diff.k{j}.t"][0]) == dl.t_map[k]
        y = dl.net.time_embed(torch.full((1,), dl.t_map[k])) + dl.net.cond_embed(z)
        eps, v = dl.guided_out(xk, y, torch.tensor([w]))
        out = T(ref, f"{P}.diff.k{j}.out")[:n]
        close(eps, out[:, :16], what=f"diff step {j} eps")
        close(v, out[:, 16:], what=f"diff step {j} v")
        if j < 7:
            nxt = dl.p_step(k, xk, eps, v, T(ref, f"{P}.diff.k{j}.noise")[:n])
            close(nxt, ref[f"{P}.diff.k{j + 1}.x"][:n], what=f"diff step {j} x_(t-1)")
    delta = h.diffuse(z, cfg, noise)
    close(delta, ref[f"{P}.residual_tokens"].reshape(-1, 16), what="residual tokens")
    f8 = T(ref, f"{P}.s08.f_hat")
    resid = T(ref, f"{P}.residual_tokens")
    e_last = (T(ref, f"{P}.f_hat_final") - f8).flatten(2).transpose(1, 2) - resid
    img = h.decode(f8, e_last, resid.reshape(-1, 16))
    close(img, ref[f"{P}.img"], atol=2e-5, what="image")


def test_sampler_defaults_match_official_cli():
    s = SamplerConfig()
    assert (s.cfg, s.top_k_early, s.top_k_late, s.top_k_switch, s.top_p, s.more_smooth) == (4.5, 600, 300, 7, 0.0, True)
