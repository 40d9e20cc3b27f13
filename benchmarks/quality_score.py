"""The pieces of the prompt-following score: the held-out prompt set, per-image verdicts, PSNR and SSIM.

Prompt set: every one-shape attribute combination of the held-out split (`data.world.all_single_keys`,
153 of them, in its fixed order), picked greedily so the attributes are spread out: each next prompt
is the combination whose five attribute values (background, size, colour, shape, position) have been
used least so far (the sum of their counts), ties going to the earlier one. No randomness, so the
set for a given N is the same on every machine, and a larger N extends a smaller one.

SSIM (Wang et al. 2004): on BT.601 luma in [0, 255], an 11×11 Gaussian window (sigma 1.5, normalised),
C1 = (0.01·255)², C2 = (0.03·255)², population (co)variances, averaged over the positions where the
window fits. Equal to scikit-image's `structural_similarity(y1, y2, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`; numpy only, so no extra dependency.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from data.analyse import ATTRIBUTES, Verdict, analyse, score
from data.world import Scene, all_single_keys, render, scene_from_key

SPLIT = "heldout"
INF_DB = 999.0  # PSNR of identical images, as in runtime_py.parity (finite, so the JSON stays standard)
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5


def attribute_values(key: tuple) -> dict[str, str]:
    """A one-shape key (background, (size, colour, shape, position)) as {attribute: value}."""
    bg, (size, colour, shape, position) = key
    return {"background": bg, "colour": colour, "shape": shape, "size": size, "position": position}


def prompt_keys(n: int) -> list[tuple]:
    """The first n prompts of the balanced held-out set (see the module docstring)."""
    keys = all_single_keys(SPLIT)
    if not 1 <= n <= len(keys):
        raise ValueError(f"the held-out split has {len(keys)} one-shape prompts; asked for {n}")
    used: Counter = Counter()
    chosen: list[tuple] = []
    left = list(keys)
    for _ in range(n):
        cost = [sum(used[(a, v)] for a, v in attribute_values(k).items()) for k in left]
        k = left.pop(int(np.argmin(cost)))  # argmin takes the first of equal costs
        used.update(attribute_values(k).items())
        chosen.append(k)
    return chosen


def ground_truth(keys: list[tuple]) -> list[np.ndarray]:
    """The world's own render of each prompt (no jitter): what a perfect model would draw."""
    return [render(scene_from_key(k)) for k in keys]


def predicted(verdict: Verdict, scene: Scene) -> dict[str, str | None]:
    """What the analyser says for each attribute of a one-shape caption, matching the found shape as
    `data.analyse.score` does (same colour, else the biggest); None when no shape was found."""
    (sh,) = scene.shapes
    match = next((f for f in verdict.shapes if f.colour == sh.colour), verdict.shapes[0] if verdict.shapes else None)
    out: dict[str, str | None] = {"background": verdict.background}
    for a in ATTRIBUTES[1:]:
        out[a] = None if match is None else getattr(match, a)
    return out


def judge(img_HW3: np.ndarray, scene: Scene) -> dict:
    """{"predicted": {attr: value}, "correct": {attr: bool}} for one image and its caption's scene."""
    v = analyse(img_HW3)
    hits = score(v, scene)
    return {"predicted": predicted(v, scene), "correct": {a: bool(hits[a][0]) for a in ATTRIBUTES}}


def accuracy(verdicts: list[dict]) -> dict:
    """Per-attribute accuracy and the overall attribute accuracy (every verdict weighs the same)."""
    per = {a: float(np.mean([v["correct"][a] for v in verdicts])) for a in ATTRIBUTES}
    overall = float(np.mean([v["correct"][a] for v in verdicts for a in ATTRIBUTES]))
    return {"accuracy": overall, "per_attribute": per}


def agreement(ref: list[dict], got: list[dict]) -> dict:
    """How often the analyser says the same thing (attribute values, not right/wrong) on two image sets."""
    per = {a: float(np.mean([r["predicted"][a] == g["predicted"][a] for r, g in zip(ref, got)])) for a in ATTRIBUTES}
    overall = float(np.mean([r["predicted"][a] == g["predicted"][a] for r, g in zip(ref, got) for a in ATTRIBUTES]))
    return {"agreement": overall, "per_attribute_agreement": per}


def psnr(ref_HW3: np.ndarray, got_HW3: np.ndarray) -> float:
    """PSNR in dB of two uint8 images over all pixels and channels (peak 255); INF_DB when identical."""
    mse = float(np.mean((ref_HW3.astype(np.float64) - got_HW3.astype(np.float64)) ** 2))
    return INF_DB if mse == 0 else min(INF_DB, 10 * np.log10(255.0 ** 2 / mse))


def luma(img_HW3: np.ndarray) -> np.ndarray:
    x = img_HW3.astype(np.float64)
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _gauss_valid(x_HW: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter, 'valid' positions only (the window lies fully inside the image)."""
    t = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-t ** 2 / (2 * SSIM_SIGMA ** 2))
    g /= g.sum()
    n = 2 * SSIM_RADIUS + 1
    H, W = x_HW.shape
    rows = sum(g[k] * x_HW[k:H - n + 1 + k] for k in range(n))
    return sum(g[k] * rows[:, k:W - n + 1 + k] for k in range(n))


def ssim(ref_HW3: np.ndarray, got_HW3: np.ndarray) -> float:
    """Mean SSIM of the luma of two uint8 RGB images (see the module docstring)."""
    if ref_HW3.shape != got_HW3.shape:
        raise ValueError(f"SSIM of images of different shapes {ref_HW3.shape} and {got_HW3.shape}")
    a, b = luma(ref_HW3), luma(got_HW3)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _gauss_valid(a), _gauss_valid(b)
    var_a = _gauss_valid(a * a) - mu_a ** 2
    var_b = _gauss_valid(b * b) - mu_b ** 2
    cov = _gauss_valid(a * b) - mu_a * mu_b
    m = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(m.mean())
