"""Per-scale preview: a cheap latent -> RGB projection, so a phone can show the picture forming.

HART's AR draws a coarse-to-fine latent f_hat [B, Cvae, G, G] (updated after every scale). The preview
maps each latent pixel to a colour with one affine map, rgb = clamp(W·f + b, 0, 1) (W [3, Cvae], b [3]),
then upsamples the G×G picture by nearest neighbour (src = floor(dst·G / size), integer arithmetic, the
rule the apps implement). The latent of scale si is f_hat after that scale; at the last scale it is
f_hat + e_last (the last scale's codes, before the diffusion residual), see `scale_latent`.

The map is fitted in closed form (least squares with a bias column, float64) on pairs (latent, colour)
where the colour is an RGB picture area-pooled to the latent grid. Two fits:

- `train/preview.py` (checkpoints with a VAE encoder, i.e. trained here): procedural-world renders
  (data/world.py) through the encoder, continuous f and quantized f_hat each paired with the render;
  held-out scenes give the PSNR on the latent grid.
- `runtime_py/preview_fit.py` (no encoder, e.g. official checkpoints; also what export uses when the
  model has no fitted projection): the model's own per-scale latents paired with their VAE decodings.

Both fits live above model/ (they need the world or the runtime's sampler); this file is the projection,
its file format and its schema check, which the manifest schema and the apps' fixtures share.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# ---- the file format ------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def preview_problem(p: Any, channels: int | None = None, grid: int | None = None) -> str | None:
    """The first problem of a preview projection (manifest `preview` section or a checkpoint's
    preview.json): weight [3, C] and bias [3] of finite numbers, C = latent_channels
    (= the latent's channels when known), grid = the latent side when both are given."""
    if not isinstance(p, dict):
        return "preview must be an object"
    c = p.get("latent_channels")
    if not _is_int(c) or c < 1:
        return "preview.latent_channels must be a positive integer"
    if channels is not None and c != channels:
        return f"preview.latent_channels is {c} but the latent (f_hat) has {channels} channels"
    w, b = p.get("weight"), p.get("bias")
    rows_ok = isinstance(w, list) and len(w) == 3 and all(
        isinstance(r, list) and len(r) == c and all(_is_num(v) for v in r) for r in w)
    if not rows_ok:
        return f"preview.weight must be 3 rows of {c} finite numbers ([3, latent_channels])"
    if not (isinstance(b, list) and len(b) == 3 and all(_is_num(v) for v in b)):
        return "preview.bias must be 3 finite numbers"
    if "grid" in p and not (_is_int(p["grid"]) and p["grid"] > 0 and (grid is None or p["grid"] == grid)):
        return f"preview.grid must be the latent side{f' ({grid})' if grid else ''}, got {p['grid']!r}"
    if not isinstance(p.get("fit", {}), dict):
        return "preview.fit must be an object"
    return None


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
