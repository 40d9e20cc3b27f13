"""The preview fit for checkpoints trained here: procedural-world renders through the VAE encoder.

Each render gives two latents, the continuous f and its multi-scale quantized f_hat (the discrete part the
AR draws), both paired with the render area-pooled to the latent grid; held-out scenes (the world's
held-out split) give the PSNR. The projection itself and its file format live in model/preview.py.
"""

from __future__ import annotations

import torch

from data.world import render, scene_at
from model.errors import UserError
from model.preview import Projection, fit_preview, grid_psnr
from model.vae import multiscale_quantize


@torch.no_grad()
def fit_from_renders(hart, n_fit: int = 192, n_heldout: int = 48, seed: int = 0, batch: int = 16,
                     log=None) -> Projection:
    """Fit on procedural-world renders through the VAE encoder (needs `hart.vae.has_encoder`)."""
    if not hart.vae.has_encoder:
        raise UserError("this checkpoint has no VAE encoder", "use fit_from_decoder (python -m train --stage preview "
                        "falls back to it by itself)")
    size, pn = hart.cfg.image_size, tuple(hart.cfg.ar.patch_nums)

    def pairs(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fs, qs, imgs = [], [], []
        for start in range(0, n, batch):
            k = min(batch, n - start)
            x = torch.stack([torch.from_numpy(render(scene_at(seed, split, start + i), size)).permute(2, 0, 1)
                             for i in range(k)]).float() / 255
            f = hart.vae.img_to_f(x * 2 - 1)
            fs.append(f)
            qs.append(multiscale_quantize(hart.vae, f, pn).f_hat)
            imgs.append(x)
            if log:
                log(f"preview fit: encoded {split} {start + k}/{n}")
        return torch.cat(fs), torch.cat(qs), torch.cat(imgs)

    f, q, img = pairs("train", n_fit)
    w, b = fit_preview(torch.cat([f, q]), torch.cat([img, img]))
    f_h, q_h, img_h = pairs("heldout", n_heldout)
    fit = {"method": "encoder-renders", "data": "data/world.py renders (train split), VAE encoder latent f and its "
           "multi-scale quantized f_hat, each paired with the render area-pooled to the latent grid",
           "samples": n_fit, "seed": seed, "heldout": n_heldout, "heldout_data": "data/world.py held-out split",
           "psnr_db": grid_psnr(w, b, q_h, img_h), "psnr_db_continuous": grid_psnr(w, b, f_h, img_h),
           "psnr_on": "latent grid (render area-pooled to G x G), held-out renders; psnr_db on the quantized f_hat "
                      "(what the AR draws), psnr_db_continuous on the encoder latent"}
    return Projection(w, b, fit)
