"""The preview fit without an encoder (official checkpoints, or a model without a fitted preview.json).

The model draws a few images with its own sampler (this runtime's Pipeline on eager stages); every
per-scale latent it produces is decoded by the VAE decoder and paired with that decoding, so the target
is "what the decoder would draw from this partial latent" on latents from the model's own distribution.
Held-out: the last prompt/seed pairs. The projection itself and its file format live in model/preview.py.
"""

from __future__ import annotations

import torch

from model.errors import UserError
from model.preview import PROMPTS, Projection, fit_preview, grid_psnr
from model.stages import method_specs
from runtime_py.pipeline import EagerBackend, Pipeline


@torch.no_grad()
def sampled_latents(hart, prompts: list[str], seeds: list[int]) -> list[list[torch.Tensor]]:
    """Per (prompt, seed): the per-scale preview latents the model's own sampler produces (eager stages)."""
    if hart.text is None:
        raise UserError("the model has no text encoder, so it cannot sample latents to fit a preview on",
                        "pass --text-encoder DIR")
    pipe = Pipeline(method_specs(hart), EagerBackend(hart), hart.text.tokenizer)
    out = []
    for p, s in zip(prompts, seeds):
        lats: list[torch.Tensor] = []
        pipe.generate(p, s, hart.cfg.sampler.cfg, on_latent=lambda name, lat, acc=lats: acc.append(lat[:1]))
        out.append(lats)
    return out


@torch.no_grad()
def fit_from_decoder(hart, n_fit: int = 3, n_heldout: int = 1, log=None) -> Projection:
    """Fit without an encoder: decode the model's own per-scale latents and fit to the decodings."""
    n = n_fit + n_heldout
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    seeds = list(range(1, n + 1))
    if log:
        log(f"preview fit: sampling {n} images with the model's own sampler to decode their per-scale latents")
    samples = sampled_latents(hart, prompts, seeds)
    dtype = hart.vae.post_quant_conv.weight.dtype

    def pairs(group: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        lat = torch.cat([torch.cat(s) for s in group])
        img = torch.cat([(hart.vae.fhat_to_img(x.to(dtype)).float() + 1) * 0.5 for x in lat.split(8)])
        return lat, img

    lat, img = pairs(samples[:n_fit])
    w, b = fit_preview(lat, img)
    lat_h, img_h = pairs(samples[n_fit:])
    fit = {"method": "decoder-samples", "data": "per-scale latents the model's own sampler drew "
           f"({n_fit} prompts x {len(samples[0])} scales), each paired with its VAE decoding area-pooled to the "
           "latent grid", "samples": n_fit, "seeds": seeds[:n_fit], "heldout": n_heldout,
           "heldout_data": "the same on other prompts/seeds", "psnr_db": grid_psnr(w, b, lat_h, img_h),
           "psnr_on": "latent grid (decoding area-pooled to G x G), held-out samples"}
    return Projection(w, b, fit)


def fit_for(hart, log=None) -> Projection:
    """The model's fitted projection (hart.preview, from preview.json), else the decoder fallback."""
    proj = getattr(hart, "preview", None)
    if proj is not None:
        return proj
    return fit_from_decoder(hart, log=log)
