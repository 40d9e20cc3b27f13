"""python -m benchmarks.quality: the prompt-following score of eager PyTorch and of exported bundles.

A fixed held-out prompt set (benchmarks/quality_score.py says how it is chosen) is drawn with every
seed by eager PyTorch and by each bundle (the portable RNG gives both the same noise), and each image
is read by the deterministic analyser of data/analyse.py. Before anything is generated, the analyser
reads the world's own renders of the same prompts; below 98% the benchmark stops (exit 1), because
its scores would mean nothing. Writes quality.json, quality.md and contact_sheet.png to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.quality_score import SPLIT, accuracy, agreement, ground_truth, judge, prompt_keys, psnr, ssim
from data.world import all_single_keys, scene_from_key
from runtime_py.cli import (
    FAILED_CHECK,
    OneLineParser,
    UserError,
    add_checkpoint_args,
    check_checkpoint_args,
    check_out_dir,
    cli_main,
    finite_float,
)

PROG = "python -m benchmarks.quality"
SCHEMA = "hart-mobile/quality"
SCHEMA_VERSION = 1
GT_THRESHOLD = 0.98  # the analyser's accuracy on ground-truth renders below which no score is reported
SEED_BASE = 1  # seeds are 1 .. --seeds (runtime_py.generate's default seed is 1)
SHEET_COLUMNS = 8
RESERVED = {"schema", "schema_version", "created", "machine", "settings", "ground_truth", "targets", "prompts",
            "eager"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    n_keys = len(all_single_keys(SPLIT))
    p = OneLineParser(prog=PROG, description="The prompt-following score of eager PyTorch and of "
                       "exported bundles on held-out captions (docs/quality.md).")
    add_checkpoint_args(p, "checkpoint folder in the official layout for the eager row (default: the default "
                           "model); bundles should be exported from the same one")
    p.add_argument("--bundle", type=Path, action="append", default=[],
                   help="exported bundle folder (repeatable); its folder name names its row")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: quality.json, quality.md, contact_sheet.png (each written atomically)")
    p.add_argument("--prompts", type=int, default=64, help=f"held-out prompts, 1..{n_keys} (default 64)")
    p.add_argument("--seeds", type=int, default=2, help="N seeds per prompt: seeds 1..N (default 2)")
    p.add_argument("--cfg", type=finite_float, default=None,
                   help="classifier-free guidance for every target (default: the eager model's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if not 1 <= a.prompts <= n_keys:
        p.error(f"--prompts must be in [1, {n_keys}] (the held-out split's one-shape captions), got {a.prompts}")
    if not 1 <= a.seeds <= 1000:
        p.error(f"--seeds must be in [1, 1000], got {a.seeds}")
    check_checkpoint_args(p, a)
    names = [b.resolve().name for b in a.bundle]
    for b, name in zip(a.bundle, names):
        if not (b / "manifest.json").is_file():
            p.error(f"--bundle {b} has no manifest.json (export one with python -m export.executorch)")
        if name in RESERVED:
            p.error(f"--bundle {b}: the folder name {name!r} is reserved in quality.json; rename the folder")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        p.error(f"--bundle folder names must differ (they name the rows): {', '.join(dup)} given twice")
    check_out_dir(p, "--out", a.out)
    return a


def draw(pipe, keys: list[tuple], seeds: list[int], cfg: float, tick: Callable[[], None]) -> list[np.ndarray]:
    """uint8 HWC images, prompt-major (prompt 0 seed 0, prompt 0 seed 1, ...)."""
    from runtime_py.images import to_uint8

    out = []
    for k in keys:
        caption = scene_from_key(k).caption
        for s in seeds:
            out.append(to_uint8(pipe.generate(caption, s, cfg).image[0]))
            tick()
    return out


def score_target(images: list[np.ndarray], keys: list[tuple], seeds: list[int]) -> list[dict]:
    scenes = [scene_from_key(k) for k in keys for _ in seeds]
    return [{"prompt": i // len(seeds), "seed": seeds[i % len(seeds)], **judge(img, sc)}
            for i, (img, sc) in enumerate(zip(images, scenes))]


def vs_eager(name: str, ref: list[np.ndarray], got: list[np.ndarray], ref_v: list[dict], got_v: list[dict]) -> dict:
    if ref[0].shape != got[0].shape:
        raise UserError(f"bundle {name} draws {got[0].shape[:2]} images, eager {ref[0].shape[:2]}",
                        "export the bundle from the same checkpoint as --checkpoint")
    ps = [psnr(r, g) for r, g in zip(ref, got)]
    ss = [ssim(r, g) for r, g in zip(ref, got)]
    return {**agreement(ref_v, got_v), "psnr_db": {"mean": float(np.mean(ps)), "min": float(np.min(ps))},
            "ssim": {"mean": float(np.mean(ss)), "min": float(np.min(ss))},
            "psnr_db_per_image": ps, "ssim_per_image": ss}


def evaluate(targets: list[tuple[str, dict, object]], keys: list[tuple], seeds: list[int], cfg: float,
             progress: bool = True) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """targets: (name, info, pipeline), eager first. Returns ({name: target dict}, {name: images})."""
    from tqdm import tqdm

    total = len(targets) * len(keys) * len(seeds)
    bar = tqdm(total=total, desc="generate", unit="img", file=sys.stderr, disable=not progress)
    images: dict[str, list[np.ndarray]] = {}
    out: dict[str, dict] = {}
    for name, info, pipe in targets:
        bar.set_description(name)
        images[name] = draw(pipe, keys, seeds, cfg, lambda: bar.update(1))
        verdicts = score_target(images[name], keys, seeds)
        out[name] = {**info, **accuracy(verdicts), "images": len(verdicts), "verdicts": verdicts}
    bar.close()
    ref = targets[0][0]
    for name, _, _ in targets[1:]:
        out[name]["vs_eager"] = vs_eager(name, images[ref], images[name], out[ref]["verdicts"], out[name]["verdicts"])
    return out, images


def check_ground_truth(keys: list[tuple], gt_images: list[np.ndarray]) -> dict:
    verdicts = [judge(img, scene_from_key(k)) for img, k in zip(gt_images, keys)]
    gt = {**accuracy(verdicts), "threshold": GT_THRESHOLD, "images": len(verdicts)}
    if gt["accuracy"] < GT_THRESHOLD:
        raise UserError(f"the analyser reads only {gt['accuracy']:.3f} of the attributes of ground-truth renders "
                        f"of these prompts (< {GT_THRESHOLD}; per attribute {gt['per_attribute']})",
                        "fix data/analyse.py (python -m data.analyse validates it) before trusting any score",
                        code=FAILED_CHECK)
    return gt


def load_targets(a: argparse.Namespace) -> tuple[list[tuple[str, dict, object]], float]:
    """Bundles are opened (validated) before anything is generated; the eager pipeline comes first."""
    from runtime_py.bundle import open_pipeline
    from runtime_py.generate import eager_pipeline

    bundles = []
    for b in a.bundle:
        pipe, _ = open_pipeline(b)
        bundles.append((b.resolve().name, {"backend": pipe.backend.name, "bundle": str(b)}, pipe))
    pipe, default_cfg = eager_pipeline(a.checkpoint, None, None, False, None, a.text_encoder)
    cfg = a.cfg if a.cfg is not None else default_cfg
    return [("eager", {"backend": "eager", "bundle": None}, pipe), *bundles], float(cfg)


def write_outputs(out: Path, result: dict, rows: dict[str, list[np.ndarray]], captions: list[str]) -> str:
    from benchmarks.quality_report import contact_sheet, markdown
    from runtime_py.images import atomic_file, write_atomic

    md = markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "quality.json", (json.dumps(result, indent=1) + "\n").encode())
    write_atomic(out / "quality.md", md.encode())
    with atomic_file(out / "contact_sheet.png") as tmp:
        contact_sheet(rows, captions, tmp)
    return md


@cli_main(PROG)
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    keys = prompt_keys(a.prompts)
    seeds = list(range(SEED_BASE, SEED_BASE + a.seeds))
    gt_images = ground_truth(keys)
    gt = check_ground_truth(keys, gt_images)  # before the model loads: a broken analyser stops here
    import torch

    from benchmarks.machine import machine_info

    targets, cfg = load_targets(a)
    scores, images = evaluate(targets, keys, seeds, cfg, progress=not a.quiet)
    captions = [scene_from_key(k).caption for k in keys]
    result = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(torch.get_num_threads()),
        "settings": {"prompts": a.prompts, "seeds": seeds, "cfg": cfg, "split": SPLIT,
                     "checkpoint": str(a.checkpoint) if a.checkpoint else None,
                     "selection": "benchmarks/quality_score.py prompt_keys: balanced greedy over held-out "
                                  "one-shape combinations"},
        "ground_truth": gt,
        "targets": [name for name, _, _ in targets],
        "prompts": [{"caption": c, "key": [k[0], *k[1]]} for c, k in zip(captions, keys)],
        **scores,
    }
    cols = list(range(min(SHEET_COLUMNS, len(keys))))
    rows = {"ground truth": [gt_images[j] for j in cols]}
    rows.update({name: [imgs[j * len(seeds)] for j in cols] for name, imgs in images.items()})
    print(write_outputs(a.out, result, rows, [captions[j] for j in cols]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
