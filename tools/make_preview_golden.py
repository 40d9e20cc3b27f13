"""Write docs/preview_golden.json: cases the Kotlin and Swift demo cores must reproduce when they turn a
preview latent (f_hat, or f_hat + e_last at the last scale) and a manifest's projection into pixels.

Reference arithmetic (model/preview.py APPLY), float32 throughout: acc = bias[c]; acc += weight[c][k] *
latent[k] for k = 0..C-1 in order; clamp to [0, 1]; uint8 = trunc(v * 255); nearest upsampling with
src = floor(dst * grid / size). tests/test_preview.py checks the file is what this script writes.

    python tools/make_preview_golden.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "preview_golden.json"


def project_f32(weight: np.ndarray, bias: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """[C, h, w] -> [3, h, w] float32, the apps' summation order, clamped to [0, 1]."""
    C, h, w = latent.shape
    out = np.empty((3, h, w), dtype=np.float32)
    for c in range(3):
        acc = np.full((h, w), bias[c], dtype=np.float32)
        for k in range(C):
            acc = (acc + np.float32(weight[c, k]) * latent[k]).astype(np.float32)
        out[c] = acc
    return np.clip(out, 0, 1)


def rgba(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[1:]
    ys, xs = np.arange(size) * h // size, np.arange(size) * w // size
    up = rgb[:, ys[:, None], xs[None, :]]
    u8 = (up * np.float32(255)).astype(np.uint8)  # trunc, as runtime_py/images.py
    return np.concatenate([u8.transpose(1, 2, 0), np.full((size, size, 1), 255, np.uint8)], axis=2).reshape(-1)


def case(name: str, rng: np.random.Generator, C: int, h: int, size: int, last: bool) -> dict:
    f32 = np.float32
    weight = rng.normal(0, 0.4, (3, C)).astype(f32)
    bias = rng.uniform(0.2, 0.8, 3).astype(f32)
    f_hat = rng.normal(0, 1, (1, C, h, h)).astype(f32)
    e_last = rng.normal(0, 0.5, (1, h * h, C)).astype(f32) if last else None
    latent = f_hat[0] + (e_last[0].T.reshape(C, h, h) if last else 0)
    latent = latent.astype(f32)
    rgb = project_f32(weight, bias, latent)
    return {"name": name, "channels": C, "grid": h, "size": size,
            "weight": weight.tolist(), "bias": bias.tolist(),
            "f_hat_shape": [1, C, h, h], "f_hat": f_hat.reshape(-1).tolist(),
            "e_last_shape": [1, h * h, C] if last else None, "e_last": e_last.reshape(-1).tolist() if last else None,
            "rgb_grid": rgb.reshape(-1).tolist(), "rgba": rgba(rgb, size).tolist()}


def build() -> dict:
    rng = np.random.default_rng(13)
    return {"version": 1, "generator": "tools/make_preview_golden.py",
            "rule": "latent = f_hat (or f_hat + e_last transposed to [C, G, G] at the last scale); rgb[c] = "
                    "clamp(bias[c] + sum_k weight[c][k] * latent[k], 0, 1) in float32, k in order; uint8 = "
                    "trunc(v * 255); nearest upsampling src = floor(dst * grid / size); RGBA row-major, alpha 255",
            "tolerance": {"rgb_grid": 1e-5, "rgba": 1},
            "cases": [case("scale", rng, 4, 3, 7, False), case("last_scale", rng, 4, 2, 5, True),
                      case("wide", rng, 16, 4, 8, False)]}


def text() -> str:
    return json.dumps(build(), indent=None, separators=(",", ":")) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/preview_golden.json is stale")
    a = p.parse_args(argv)
    if a.check:
        ok = OUT.is_file() and OUT.read_text() == text()
        print(f"{OUT}: {'up to date' if ok else 'STALE (run python tools/make_preview_golden.py)'}")
        return 0 if ok else 1
    OUT.write_text(text())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
