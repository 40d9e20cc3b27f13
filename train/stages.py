"""The three training stages and the token pool between them.

vae:       encoder + codebook + Phi + decoder; multi-scale residual quantization with straight-through
           gradients, commitment/codebook loss, L1+L2 reconstruction of either the discrete f_hat or the
           full latent (HART decodes both), dead-code restarts.
pool:      a fixed set of training scenes tokenized once by the frozen VAE (ids per scale + residual).
ar:        teacher-forced transformer, block-causal mask, CFG context dropout, per-scale cross-entropy.
diffusion: residual head on the frozen AR's last-scale states, DDPM ε loss on the 1000-step cosine schedule.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from model.diffusion import VAE_SCALE, respaced_schedule
from model.hart import Hart
from model.vae import multiscale_quantize
from train.common import encode_captions, images, load_state, lr_at, plot_losses, save_state, step_generator
from train.plan import Plan, StagePlan
from train.teacher import block_causal_bias, scale_weighted_ce, teacher_forced

RESIDUAL_BOUND = 0.5  # |residual| the VAE is pushed under: the diffusion head clips x0 = residual/0.6 to [-1, 1]


def stage_params(hart: Hart, stage: str, train_text: bool = False) -> list[torch.nn.Parameter]:
    if stage == "vae":
        return list(hart.vae.parameters())
    if stage == "ar":
        ar = [p for n, p in hart.ar.named_parameters() if not n.startswith("diffloss.")]
        return ar + (list(hart.text.parameters()) if train_text else [])
    return list(hart.ar.diffloss.parameters())


def run_stage(hart: Hart, stage: str, sp: StagePlan, out: Path, resume: bool, step_fn: Callable, seed: int,
              progress: bool = True, ckpt_every: int = 100, train_text: bool = False) -> dict[str, list[float]]:
    """Generic resumable loop: step_fn(step, gen) -> dict of scalar losses (already back-propagated)."""
    hart.requires_grad_(False)
    params = stage_params(hart, stage, train_text)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=sp.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, losses = 0, {}
    if resume and (out / "state" / f"{stage}.json").is_file():
        step, losses = load_state(out, stage, hart, opt)
    bar = tqdm(total=sp.steps, initial=step, desc=stage, disable=not progress, dynamic_ncols=True)
    t0, c0, start = time.time(), time.process_time(), step
    while step < sp.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, sp.steps, sp.lr, sp.warmup)
        opt.zero_grad(set_to_none=True)
        vals = step_fn(step, step_generator(seed, stage, step))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for k, v in vals.items():
            losses.setdefault(k, []).append(v)
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.4f}" for k, v in vals.items() if not k.startswith("_")})
        if step % ckpt_every == 0 or step == sp.steps:
            save_state(out, stage, hart, opt, step, losses)
            plot_losses(out / f"loss_{stage}.png", {k: v for k, v in losses.items() if not k.startswith("_")},
                        f"{stage} stage")
    bar.close()
    done = step - start
    hart.requires_grad_(False)
    _log(out, stage, {"steps": step, "steps_per_s": done / max(time.time() - t0, 1e-9) if done else None,
                      "cpu_s_per_step": (time.process_time() - c0) / done if done else None,
                      "threads": torch.get_num_threads(),
                      "final": {k: float(np.mean(v[-50:])) for k, v in losses.items()}})
    return losses


def _log(out: Path, stage: str, info: dict) -> None:
    path = out / "train_log.json"
    log = json.loads(path.read_text()) if path.is_file() else {}
    log[stage] = info
    path.write_text(json.dumps(log, indent=2) + "\n")


# ---- stage 1: VAE tokenizer ---------------------------------------------------------------------

def recon_loss(rec: torch.Tensor, x: torch.Tensor, shape_weight: float = 0.0) -> torch.Tensor:
    """L1 + L2; with shape_weight > 0 every pixel off its image's background colour (the per-channel
    median: the background covers most of a scene or crop) weighs 1 + shape_weight, normalised so a
    scene without shapes keeps the plain loss."""
    if shape_weight <= 0:
        return F.l1_loss(rec, x) + F.mse_loss(rec, x)
    bg = x.flatten(2).median(dim=2).values[:, :, None, None]
    w = 1 + shape_weight * ((x - bg).abs().amax(dim=1, keepdim=True) > 0.1).float()
    w = w / w.mean()
    return (w * (rec - x).abs()).mean() + (w * (rec - x).pow(2)).mean()


def vae_step_fn(hart: Hart, plan: Plan, seed: int, restart_every: int = 25):
    vae, cfg, sp = hart.vae, hart.cfg, plan.vae
    hits = torch.zeros(cfg.vae.vocab_size)

    crop_steps = int(sp.steps * plan.vae_crop_frac)
    warm_steps = int(sp.steps * plan.vae_continuous_frac)  # plain autoencoder first, then hybrid decoding
    crop_px = cfg.image_size // 2
    crop_nums = tuple(p for p in cfg.ar.patch_nums if p <= crop_px // cfg.vae.downsample)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        cycle = (lambda i: i % plan.vae_scenes) if plan.vae_scenes else (lambda i: i)
        if step < crop_steps:  # half-size crops: 4× cheaper; schedule cut at the crop's latent side
            n = plan.vae_crop_batch_mult * sp.batch
            x, _ = images(cfg, seed, "train", cycle(step * n), n, plan.two_prob)
            ds = cfg.vae.downsample
            oy, ox = (ds * torch.randint(0, (cfg.image_size - crop_px) // ds + 1, (2,), generator=gen)).tolist()
            x, nums = x[:, :, oy:oy + crop_px, ox:ox + crop_px], crop_nums
        else:
            x, _ = images(cfg, seed, "train", cycle((1 << 24) + step * sp.batch), sp.batch, plan.two_prob)
            nums = cfg.ar.patch_nums
        f = vae.img_to_f(x)
        tok = multiscale_quantize(vae, f, nums)
        continuous = step < warm_steps or bool(torch.rand((), generator=gen) < 0.5)
        f_dec = f if continuous else f + (tok.f_hat - f).detach()  # straight-through to the encoder
        rec = vae.decoder(vae.post_quant_conv(f_dec))
        l_rec = recon_loss(rec, x, plan.vae_shape_weight)
        l_bound = F.relu((f - tok.f_hat.detach()).abs() - RESIDUAL_BOUND).pow(2).mean()
        loss = l_rec + tok.vq_loss + l_bound
        loss.backward()
        with torch.no_grad():
            hits.add_(torch.bincount(torch.cat([i.flatten() for i in tok.idx]), minlength=len(hits)).float())
            if (step + 1) % restart_every == 0:  # dead codes restart at random latent vectors of this batch
                dead = (hits == 0).nonzero().flatten()
                pool = f.detach().permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                pick = torch.randint(len(pool), (len(dead),), generator=gen)
                vae.quantize.embedding.weight[dead] = pool[pick] + 0.01 * torch.randn(len(dead), f.shape[1],
                                                                                       generator=gen)
                hits.zero_()
        res = tok.residual_BLC
        return {"recon": l_rec.item(), "vq": tok.vq_loss.item(), "bound": l_bound.item(),
                "_resid_clip": float((res.abs() > VAE_SCALE).float().mean()),
                "_usage": float((torch.bincount(torch.cat([i.flatten() for i in tok.idx]),
                                                minlength=len(hits)) > 0).float().mean())}

    return step_fn


@torch.no_grad()
def vae_report(hart: Hart, plan: Plan, seed: int, out: Path, n: int = 16) -> dict:
    """PSNR of continuous and discrete-only reconstructions of held-out scenes, and the analyser's
    accuracy on the discrete ones: does the tokenizer keep what captions talk about?"""
    from data.analyse import ATTRIBUTES, analyse, score
    from data.world import scene_at

    cfg = hart.cfg
    x, _ = images(cfg, seed, "heldout", 0, n, plan.two_prob)
    f = hart.vae.img_to_f(x)
    tok = multiscale_quantize(hart.vae, f, cfg.ar.patch_nums)
    info, hits = {}, {a: [] for a in ATTRIBUTES}
    for name, lat in (("continuous", f), ("discrete", tok.f_hat)):
        rec = hart.vae.fhat_to_img(lat)
        info[f"psnr_{name}"] = float(10 * torch.log10(4 / (rec - x).pow(2).mean()))
    rgb = ((rec + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(rgb):
        for a, h in score(analyse(img), scene_at(seed, "heldout", i, plan.two_prob)).items():
            hits[a].extend(h)
    info["analyser_on_discrete"] = {a: float(np.mean(h)) for a, h in hits.items()}
    info["residual_clipped"] = float((tok.residual_BLC.abs() > VAE_SCALE).float().mean())
    _log(out, "vae_report", info)
    return info


# ---- token pool ------------------------------------------------------------------------------------

@torch.no_grad()
def build_pool(hart: Hart, plan: Plan, seed: int, out: Path, progress: bool = True) -> dict:
    """Tokenize plan.pool training scenes (seeded stream after the VAE's scenes) → OUT/state/pool.*."""
    path, meta = out / "state" / "pool.safetensors", out / "state" / "pool.json"
    vae_hash = hashlib.sha256((out / "state" / "vae.safetensors").read_bytes()).hexdigest()
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("vae_sha256") == vae_hash:
        return load_pool(out)  # tokenized by this very VAE state; anything else is rebuilt
    cfg, n, bs = hart.cfg, plan.pool, 16
    start = 1 << 28  # a stream region the VAE stage never reads
    idx_parts, res_parts, captions = [[] for _ in cfg.ar.patch_nums], [], []
    t0, c0 = time.time(), time.process_time()
    for b in tqdm(range(0, n, bs), desc="tokenize", disable=not progress, dynamic_ncols=True):
        x, caps = images(cfg, seed, "train", start + b, min(bs, n - b), plan.two_prob)
        tok = multiscale_quantize(hart.vae, hart.vae.img_to_f(x), cfg.ar.patch_nums)
        for parts, t in zip(idx_parts, tok.idx):
            parts.append(t.to(torch.int32))
        res_parts.append(tok.residual_BLC.half())
        captions += caps
    tensors = {f"idx_{si}": torch.cat(p) for si, p in enumerate(idx_parts)}
    tensors["residual"] = torch.cat(res_parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    meta.write_text(json.dumps({"vae_sha256": vae_hash, "captions": captions}) + "\n")
    _log(out, "pool", {"scenes": n, "s_per_scene": (time.time() - t0) / n,
                       "cpu_s_per_scene": (time.process_time() - c0) / n})
    return load_pool(out)


def load_pool(out: Path) -> dict:
    t = load_file(str(out / "state" / "pool.safetensors"))
    n_scales = sum(k.startswith("idx_") for k in t)
    return {"idx": [t[f"idx_{si}"].long() for si in range(n_scales)], "residual": t["residual"].float(),
            "captions": json.loads((out / "state" / "pool.json").read_text())["captions"]}


def pool_batch(pool: dict, seed: int, stage: str, step: int, batch: int) -> list[int]:
    """Rows of step `step`: epochs are seeded permutations of the pool (resume-exact)."""
    n = len(pool["captions"])
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, sum(map(ord, stage)), epoch]).permutation(n)
    return perm[k * batch:(k + 1) * batch].tolist()


# ---- stage 2: AR transformer ------------------------------------------------------------------------

def ar_step_fn(hart: Hart, plan: Plan, seed: int, pool: dict):
    bias = block_causal_bias(hart)

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        rows = pool_batch(pool, seed, "ar", step, plan.ar.batch)
        ctx, mask = encode_captions(hart, [pool["captions"][r] for r in rows], grad=plan.train_text)
        idx = [t[rows] for t in pool["idx"]]
        drop = torch.rand(len(rows), generator=gen) < plan.cfg_drop
        logits, _ = teacher_forced(hart, ctx, mask, idx, drop, bias)
        loss, per_scale = scale_weighted_ce(hart, logits, idx)
        loss.backward()
        acc = (logits.argmax(-1) == torch.cat(idx, 1)).float().mean().item()
        return {"ce": loss.item(), "_acc": acc, **{f"_ce{si}": v for si, v in enumerate(per_scale)}}

    return step_fn


# ---- stage 3: diffusion head --------------------------------------------------------------------------

def diffusion_step_fn(hart: Hart, plan: Plan, seed: int, pool: dict):
    bias = block_causal_bias(hart)
    ac = torch.tensor(respaced_schedule(1000, 1000)["alphas_cumprod"], dtype=torch.float32)
    ar, cvae = hart.ar, hart.cfg.ar.cvae

    def step_fn(step: int, gen: torch.Generator) -> dict[str, float]:
        rows = pool_batch(pool, seed, "diffusion", step, plan.diffusion.batch)
        ctx, mask = encode_captions(hart, [pool["captions"][r] for r in rows])
        idx = [t[rows] for t in pool["idx"]]
        drop = torch.rand(len(rows), generator=gen) < plan.cfg_drop
        with torch.no_grad():
            _, h_last = teacher_forced(hart, ctx, mask, idx, drop, bias)
            q = ar.word_embed(F.embedding(idx[-1], hart.codebook()))
            z = ar.decoder_norm(h_last + q).flatten(0, 1)
        x0 = (pool["residual"][rows].flatten(0, 1) / VAE_SCALE).clamp(-1, 1)
        z, x0 = z.repeat(plan.diffusion_repeat, 1), x0.repeat(plan.diffusion_repeat, 1)
        t = torch.randint(0, 1000, (len(x0),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ac[t][:, None]
        out = ar.diffloss.net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, z)
        loss = F.mse_loss(out[:, :cvae], noise)
        loss.backward()
        return {"eps_mse": loss.item()}

    return step_fn
