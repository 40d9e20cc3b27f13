"""quality.md (tables) and contact_sheet.png (ground truth, eager and each bundle, one column per prompt)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.analyse import ATTRIBUTES

TILE, LABEL_W, HEADER_H, PAD = 128, 118, 64, 4


def markdown(result: dict) -> str:
    s, gt = result["settings"], result["ground_truth"]
    lines = [
        "# Prompt-following score", "",
        f"{s['prompts']} held-out one-shape prompts × seeds {s['seeds']}, cfg {s['cfg']}, model "
        f"{s['checkpoint'] or 'default seeded model'}. Analyser accuracy on ground-truth renders of the same "
        f"prompts: {gt['accuracy']:.3f} (required ≥ {gt['threshold']}).", "",
        "Attribute accuracy (fraction of caption attributes the analyser finds in the image):", "",
        "| target | accuracy | " + " | ".join(ATTRIBUTES) + " |",
        "|---" * (len(ATTRIBUTES) + 2) + "|",
    ]
    for name in ["ground truth", *result["targets"]]:
        t = gt if name == "ground truth" else result[name]
        lines.append(f"| {name} | **{t['accuracy']:.3f}** | "
                     + " | ".join(f"{t['per_attribute'][a]:.3f}" for a in ATTRIBUTES) + " |")
    bundles = result["targets"][1:]
    if bundles:
        lines += ["", "Bundles vs eager on the same prompts and seeds:", "",
                  "| bundle | verdict agreement | " + " | ".join(ATTRIBUTES)
                  + " | PSNR mean / min (dB) | SSIM mean / min |", "|---" * (len(ATTRIBUTES) + 4) + "|"]
        for name in bundles:
            v = result[name]["vs_eager"]
            lines.append(f"| {name} | **{v['agreement']:.3f}** | "
                         + " | ".join(f"{v['per_attribute_agreement'][a]:.3f}" for a in ATTRIBUTES)
                         + f" | {v['psnr_db']['mean']:.1f} / {v['psnr_db']['min']:.1f}"
                         + f" | {v['ssim']['mean']:.3f} / {v['ssim']['min']:.3f} |")
    return "\n".join(lines) + "\n"


def _tile(img_HW3: np.ndarray) -> Image.Image:
    return Image.fromarray(img_HW3).resize((TILE, TILE), Image.Resampling.BOX)


def contact_sheet(rows: dict[str, list[np.ndarray]], captions: list[str], path: Path) -> None:
    """One row per name (ground truth, eager, bundles), one column per caption; written to `path` as PNG."""
    font = ImageFont.load_default()
    n = len(captions)
    W = LABEL_W + n * (TILE + PAD)
    H = HEADER_H + len(rows) * (TILE + PAD)
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, cap in enumerate(captions):
        x = LABEL_W + j * (TILE + PAD)
        lines = textwrap.wrap(cap, width=22)[:5]
        draw.multiline_text((x, 2), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1)
    for i, (name, imgs) in enumerate(rows.items()):
        y = HEADER_H + i * (TILE + PAD)
        draw.multiline_text((2, y + TILE // 2 - 6), "\n".join(textwrap.wrap(name, width=18)), fill=(0, 0, 0),
                            font=font)
        for j, img in enumerate(imgs[:n]):
            sheet.paste(_tile(img), (LABEL_W + j * (TILE + PAD), y))
    sheet.save(path, format="PNG")
