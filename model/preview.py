"""Per-scale preview: a cheap latent -> RGB projection, so a phone can show the picture forming.

HART's AR draws a coarse-to-fine latent f_hat [B, Cvae, G, G] (updated after every scale). The preview
maps each latent pixel to a colour with one affine map, rgb = clamp(W·f + b, 0, 1) (W [3, Cvae], b [3]),
then upsamples the G×G picture by nearest neighbour (src = floor(dst·G / size), integer arithmetic, the
rule the apps implement). The latent of scale si is f_hat after that scale; at the last scale it is
f_hat + e_last (the last scale's codes, before the diffusion residual), see `scale_latent`.

The map is fitted in closed form (least squares with a bias column, float64) on pairs (latent, colour)
where the colour is an RGB picture area-pooled to the latent grid. Two fits:

- `fit_from_renders` (checkpoints with a VAE encoder, i.e. trained here): renders of the procedural world
  (data/world.py), encoded; each render gives two latents, the continuous f and its multi-scale
  quantized f_hat (the discrete part the AR draws), both paired with the render. Held-out scenes (the
  world's held-out split) give the PSNR on the latent grid.
- `fit_from_decoder` (no encoder, e.g. official checkpoints; also what export uses when the model has no
  fitted projection): the model draws a few images with its own sampler; every per-scale latent it
  produces is decoded by the VAE decoder and paired with that decoding. The target is therefore "what
  the decoder would draw from this partial latent", on latents from the model's own distribution, and
  it needs only the stages a bundle ships. Held-out: the last prompt/seed pairs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from model.errors import UserError

FILE = "preview.json"
FORMAT = "hart-mobile-preview"
APPLY = ("rgb[c, y, x] = clamp(bias[c] + sum_k weight[c][k] * latent[k, y, x], 0, 1) on the latent grid, "
         "then nearest upsampling to size: src = floor(dst * grid / size)")
INPUT = ("f_hat output of every scale_XX method; at the last scale (no f_hat output) f_hat + e_last, "
         "e_last [B, G*G, C] transposed to [B, C, G, G]")
PROMPTS = ("a small red circle at the top left on a blue background",
           "a large yellow square in the centre on a black background",
           "a small white triangle on the right on a green background",
           "a large blue circle at the bottom on a yellow background",
           "a large green triangle at the top on a white background",
           "a small black square at the bottom left on a red background")


@dataclass
class Projection:
    weight: torch.Tensor  # [3, C] float32
    bias: torch.Tensor  # [3] float32
    fit: dict = field(default_factory=dict)  # how it was fitted and its held-out PSNR

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1])

    def to_json(self, grid: int | None = None) -> dict:
        d = {"format": FORMAT, "version": 1, "kind": "affine", "latent_channels": self.channels,
             "weight": [[float(v) for v in row] for row in self.weight.tolist()],
             "bias": [float(v) for v in self.bias.tolist()], "apply": APPLY, "input": INPUT, "fit": self.fit}
        if grid is not None:
            d["grid"] = grid
        return d

    @classmethod
    def from_json(cls, d, where: str, channels: int | None = None) -> Projection:
        from runtime_py.manifest_schema import preview_problem

        if problem := preview_problem(d, channels):
            raise UserError(f"{where}: {problem}", f"refit it (python -m train --stage preview) or delete {FILE}")
        return cls(torch.tensor(d["weight"], dtype=torch.float32), torch.tensor(d["bias"], dtype=torch.float32),
                   dict(d.get("fit", {})))


# ---- the projection itself -----------------------------------------------------------------------

def pool_to_grid(images_B3HW: torch.Tensor, grid: int) -> torch.Tensor:
    """Area average of images to the latent grid (what one latent pixel covers)."""
    return F.adaptive_avg_pool2d(images_B3HW.float(), grid)


def project(latent_BCHW: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, 3, h, w] colours in [0, 1] on the latent grid."""
    rgb = torch.einsum("oc,bchw->bohw", weight.float(), latent_BCHW.float()) + bias.float()[None, :, None, None]
    return rgb.clamp(0, 1)


def upsample_nearest(img_BCHW: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest upsampling with src = floor(dst * h / size) in integers (the apps' rule, exact)."""
    h, w = img_BCHW.shape[-2:]
    ys, xs = torch.arange(size) * h // size, torch.arange(size) * w // size
    return img_BCHW[..., ys[:, None], xs[None, :]]


def preview_rgb(latent: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: int) -> torch.Tensor:
    """First latent of [B, C, h, w] (or [C, h, w]) -> [3, size, size] in [0, 1] (ready for uint8)."""
    lat = latent if latent.dim() == 4 else latent[None]
    return upsample_nearest(project(lat[:1], weight, bias), size)[0]


def fit_preview(latents_BCHW: torch.Tensor, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares affine map (weight [3, C], bias [3]) from latent pixels to the colours of images
    in [0, 1] area-pooled to the latent grid. Closed form (lstsq, gelsd: rank-deficient latents are fine)."""
    B, C, h, w = latents_BCHW.shape
    if images_B3HW.shape[0] != B or images_B3HW.shape[1] != 3:
        raise ValueError(f"images {tuple(images_B3HW.shape)} do not pair with latents {tuple(latents_BCHW.shape)}")
    target = pool_to_grid(images_B3HW, h) if images_B3HW.shape[-1] != h else images_B3HW.float()
    X = latents_BCHW.double().permute(0, 2, 3, 1).reshape(-1, C)
    X = torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], dim=1)
    Y = target.double().permute(0, 2, 3, 1).reshape(-1, 3)
    sol = torch.linalg.lstsq(X, Y, driver="gelsd").solution  # [C+1, 3]
    return sol[:C].T.float().contiguous(), sol[C].float().contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.float() - b.float()).pow(2).mean())
    return 99.0 if mse <= 1e-10 else 10 * math.log10(1.0 / mse)


def grid_psnr(proj_w: torch.Tensor, proj_b: torch.Tensor, latents: torch.Tensor, images: torch.Tensor) -> float:
    """PSNR (dB) of the projection against the images pooled to the latent grid."""
    return round(psnr(project(latents, proj_w, proj_b), pool_to_grid(images, latents.shape[-1])), 2)


def scale_latent(outputs: dict[str, torch.Tensor], env: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The latent to preview after a scale method: its f_hat output, or at the last scale f_hat + e_last."""
    if "f_hat" in outputs:
        return outputs["f_hat"].float()
    if "e_last" in outputs and "f_hat" in env:
        f_hat, e = env["f_hat"].float(), outputs["e_last"].float()
        B, C, G, _ = f_hat.shape
        return f_hat + e.transpose(1, 2).reshape(B, C, G, G)
    return None


# ---- fits -------------------------------------------------------------------------------------

@torch.no_grad()
def fit_from_renders(hart, n_fit: int = 192, n_heldout: int = 48, seed: int = 0, batch: int = 16,
                     log=None) -> Projection:
    """Fit on procedural-world renders through the VAE encoder (needs `hart.vae.has_encoder`)."""
    from data.world import render, scene_at
    from model.vae import multiscale_quantize

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


@torch.no_grad()
def sampled_latents(hart, prompts: list[str], seeds: list[int]) -> list[list[torch.Tensor]]:
    """Per (prompt, seed): the per-scale preview latents the model's own sampler produces (eager stages)."""
    from model.stages import method_specs
    from runtime_py.pipeline import EagerBackend, Pipeline

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


# ---- storage next to a checkpoint ------------------------------------------------------------------

def save_preview(ckpt_dir: str | Path, proj: Projection, grid: int) -> Path:
    """CKPT/preview.json, written to a temp file and renamed."""
    path = Path(ckpt_dir) / FILE
    fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(proj.to_json(grid), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def load_preview(ckpt_dir: str | Path, channels: int | None = None) -> Projection | None:
    """CKPT/preview.json if present (checked: shapes, finite numbers, channel count), else None."""
    path = Path(ckpt_dir) / FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})", f"refit it or delete {FILE}") from None
    return Projection.from_json(d, str(path), channels)
