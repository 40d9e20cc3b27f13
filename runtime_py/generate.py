"""python -m runtime_py.generate --prompt TEXT [--seed N] [--out out.png]: one image, eager or from a bundle."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from runtime_py.cli import (
    OneLineParser,
    UserError,
    add_checkpoint_args,
    check_checkpoint_args,
    check_out_dir,
    check_out_file,
    cli_main,
    finite_float,
    load_model,
    seed_int,
    utf8_text,
)

PROG = "python -m runtime_py.generate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(
        prog=PROG,
        description="Generate an image with HART: eager PyTorch (default model or --checkpoint) "
        "or an exported --bundle.",
    )
    p.add_argument("--prompt", required=True, type=utf8_text, help="text prompt")
    p.add_argument("--seed", type=seed_int, default=1, help="portable RNG seed in [0, 2^63), default 1")
    p.add_argument("--cfg", type=finite_float, default=None,
                   help="classifier-free guidance (default: the model's, 4.5)")
    p.add_argument("--top-k", type=int, default=None, help="override top-k for every scale (eager only)")
    p.add_argument("--top-p", type=finite_float, default=None, help="top-p in (0, 1]; 0 disables (eager only)")
    p.add_argument("--hard", action="store_true", help="hard token embeddings instead of Gumbel-soft (eager only)")
    src = p.add_mutually_exclusive_group()
    add_checkpoint_args(p, "checkpoint folder in the official layout (default: seeded default model)", src)
    src.add_argument("--bundle", type=Path, help="exported bundle folder (manifest.json)")
    p.add_argument("--out", type=Path, default=Path("out.png"), help="PNG path (written atomically)")
    p.add_argument("--preview", type=Path, default=None,
                   help="folder for the per-scale preview: scale_00.png … (the latent after each scale through the "
                        "model's latent-to-RGB projection, model/preview.py) and an animated preview.gif")
    p.add_argument("--unload-text-encoder", action="store_true",
                   help="bundles: release the text encoder program after encoding (lower peak; same image)")
    p.add_argument("--release-after-use", action="store_true",
                   help="bundles: load each program when first needed and release it after its last method of the "
                        "image (text encoder, AR + KV cache, diffusion head, VAE decoder: one at a time; same image; "
                        "the manifest's memory.peak_bytes_release_after_use)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if not a.prompt.strip():
        p.error("--prompt is empty: give the text to draw, e.g. --prompt 'a lighthouse at dusk'")
    check_checkpoint_args(p, a)
    if a.bundle is not None and not (a.bundle / "manifest.json").is_file():
        p.error(f"--bundle {a.bundle} has no manifest.json (export one with python -m export.executorch)")
    if a.top_k is not None and a.top_k < 1:
        p.error(f"--top-k must be >= 1, got {a.top_k}")
    if a.top_p is not None and not 0 <= a.top_p <= 1:
        p.error(f"--top-p must be in [0, 1], got {a.top_p}")
    if a.bundle is not None and (a.top_k is not None or a.top_p is not None or a.hard):
        p.error("--top-k/--top-p/--hard are baked into a bundle at export time; re-export to change them")
    check_out_file(p, "--out", a.out)
    if a.preview is not None:
        check_out_dir(p, "--preview", a.preview)
    return a


def eager_pipeline(checkpoint: Path | None, top_k: int | None, top_p: float | None, hard: bool, progress,
                   text_encoder: Path | None = None):
    """Pipeline over the eager model's stage functions (sampling overrides applied to the config)."""
    from model.hart import Hart
    from model.stages import method_specs
    from runtime_py.pipeline import EagerBackend, Pipeline

    hart = load_model(checkpoint, text_encoder)
    sampler = hart.cfg.sampler
    if top_k is not None:
        sampler = replace(sampler, top_k_early=top_k, top_k_late=top_k)
    if top_p is not None:
        sampler = replace(sampler, top_p=top_p)
    if hard:
        sampler = replace(sampler, more_smooth=False)
    if sampler != hart.cfg.sampler:
        rebuilt = Hart(replace(hart.cfg, sampler=sampler), with_text=False)
        rebuilt.load_state_dict(hart.state_dict(), strict=False)
        rebuilt.text, rebuilt.preview = hart.text, hart.preview
        hart = rebuilt.eval().requires_grad_(False)
    pipe = Pipeline(method_specs(hart), EagerBackend(hart), hart.text.tokenizer, progress=progress)
    return pipe, hart.cfg.sampler.cfg


def preview_projection(pipe, bundle, quiet: bool):
    """The latent-to-RGB projection: the bundle manifest's `preview` section; eager: the checkpoint's
    preview.json, else fitted from the decoder now (model/preview.py, seconds)."""
    from model.preview import Projection
    from runtime_py.preview_fit import fit_for

    if bundle is not None:
        if "preview" not in bundle.manifest:
            raise UserError(f"bundle {bundle.root} has no preview section in manifest.json (exported before "
                            "per-scale previews)", "re-export the bundle, or drop --preview")
        return Projection.from_json(bundle.manifest["preview"], f"{bundle.root / 'manifest.json'} preview")
    hart = pipe.backend.hart
    log = None if quiet else (lambda m: print(m, file=sys.stderr))
    if hart.preview is None and log:
        log("preview: no fitted projection with this model (preview.json); fitting one from the decoder")
    return fit_for(hart, log=log)


def write_previews(folder: Path, proj, latents: list, image) -> None:
    from model.preview import preview_rgb
    from runtime_py.images import write_preview

    size = image.shape[-1]
    frames = [preview_rgb(lat, proj.weight, proj.bias, size) for lat in latents]
    write_preview(folder, frames, final=image)
    print(f"preview: {len(frames)} scales -> {folder}/scale_00.png … scale_{len(frames) - 1:02d}.png + preview.gif "
          f"({proj.fit.get('method', 'fitted')}, held-out {proj.fit.get('psnr_db', '?')} dB)")


@cli_main(PROG)
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    progress = None if a.quiet else (lambda it, desc: tqdm(it, desc=desc, unit="stage", file=sys.stderr))
    t0 = time.perf_counter()
    if a.bundle is not None:
        from runtime_py.bundle import open_pipeline

        pipe, bundle = open_pipeline(a.bundle, release_after_use=a.release_after_use)
        pipe.progress = progress
        cfg = a.cfg if a.cfg is not None else bundle.default_cfg
        source = f"bundle {a.bundle} ({pipe.backend.name})"
    else:
        pipe, default_cfg = eager_pipeline(a.checkpoint, a.top_k, a.top_p, a.hard, progress, a.text_encoder)
        cfg = a.cfg if a.cfg is not None else default_cfg
        source = f"eager {a.checkpoint or 'default seeded model'}"
    load_ms = (time.perf_counter() - t0) * 1e3
    pipe.unload_text_encoder = a.unload_text_encoder
    proj = None
    if a.preview is not None:
        proj = preview_projection(pipe, bundle if a.bundle is not None else None, a.quiet)
    latents: list = []
    gen = pipe.generate(a.prompt, a.seed, cfg,
                        on_latent=(lambda name, lat: latents.append(lat)) if proj is not None else None)
    from runtime_py.images import png_bytes, write_atomic

    if proj is not None:
        write_previews(a.preview, proj, latents, gen.image[0])
    write_atomic(a.out, png_bytes(gen.image[0]))
    total = sum(gen.timings_ms.values())
    print(f"{source}: seed {a.seed}, cfg {cfg}, image {tuple(gen.image.shape[-2:])} -> {a.out}")
    print(f"{'stage':<16}{'ms':>10}")
    print(f"{'load':<16}{load_ms:>10.1f}")
    for k, v in gen.timings_ms.items():
        print(f"{k:<16}{v:>10.1f}")
    print(f"{'total':<16}{total:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
