"""python -m train --stage {vae,ar,diffusion,preview,all} --out DIR [--resume] [--steps N] [--seed S]

Trains the model/ architecture on the procedural world (data/) in stages; each stage starts from the
previous stage's state in OUT/state/ and, when done, writes OUT/model in the official checkpoint layout
(fp16 safetensors, VAE encoder included; `model.load` ignores the encoder unless asked).
`--stage preview` (also the last step of `all`) fits the per-scale preview projection into
OUT/model/preview.json (model/preview.py): on world renders through the VAE encoder, or from the decoder
alone when the checkpoint has no encoder; seconds to a minute.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from model.checkpoint import CheckpointError, save
from model.errors import UserError
from runtime_py.cli import OneLineParser, cli_main
from train.common import load_model_tensors, new_model
from train.plan import TRAIN_SEED, Plan, tiny_plan
from train.stages import ar_step_fn, build_pool, diffusion_step_fn, run_stage, vae_report, vae_step_fn

STAGES = ("vae", "ar", "diffusion")
PREVIEW_FIT = {"full": (192, 48), "tiny": (16, 8)}  # (fit, held-out) renders


def parse_args(argv):
    p = OneLineParser(prog="python -m train", description="Train the model/ architecture on the procedural world "
                      "(data/) in stages: VAE tokenizer, AR transformer, diffusion head; see docs/training.md.")
    p.add_argument("--stage", required=True, choices=(*STAGES, "preview", "all"),
                   help="stage to run (all = vae, ar, diffusion, preview); preview fits OUT/model/preview.json")
    p.add_argument("--out", type=Path, required=True, help="output folder (state/, loss_*.png, model/)")
    p.add_argument("--resume", action="store_true", help="continue a stage from OUT/state/<stage>.* if present")
    p.add_argument("--steps", type=int, default=None, help="override the plan's step count of each stage run")
    p.add_argument("--seed", type=int, default=TRAIN_SEED, help=f"data and init seed (default {TRAIN_SEED})")
    p.add_argument("--pool", type=int, default=None, help="override the number of tokenized scenes (timing runs)")
    p.add_argument("--tiny", action="store_true", help="tiny 32 px model and plan (tests, smoke runs)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps must be >= 1, got {a.steps}")
    if a.pool is not None and a.pool < 1:
        p.error(f"--pool must be >= 1, got {a.pool}")
    if a.seed < 0:
        p.error(f"--seed must be >= 0, got {a.seed}")
    if a.threads < 1:
        p.error(f"--threads must be >= 1, got {a.threads}")
    if a.out.exists() and not a.out.is_dir():
        p.error(f"--out {a.out} exists and is not a folder")
    return a


def needs(stage: str, out: Path) -> Path:
    """The file a stage starts from (the previous stage's state, or for preview the saved checkpoint);
    UserError (exit 2, nothing written) when it is missing."""
    if stage == "preview":
        prev = out / "model" / "tokenizer" / "model.safetensors"
    else:
        prev = out / "state" / f"{STAGES[STAGES.index(stage) - 1]}.safetensors"
    if not prev.is_file():
        raise UserError(f"stage {stage} needs {prev}", f"run the earlier stages into {out} first")
    return prev


def model_for(stage: str, plan: Plan, out: Path, seed: int):
    """Fresh model with the previous stage's weights (each state file holds the whole model); a stage's
    own state is only read by --resume (run_stage), so re-running a stage starts it over."""
    hart = new_model(plan.model, seed)
    if stage == "vae":
        return hart
    prev = needs(stage, out)
    load_model_tensors(hart, load_file(str(prev)))
    return hart


def run(stage: str, plan: Plan, out: Path, seed: int, resume: bool, progress: bool) -> Path:
    sp = plan.stage(stage)
    hart = model_for(stage, plan, out, seed)
    if stage == "vae":
        fn = vae_step_fn(hart, plan, seed)
    else:
        pool = build_pool(hart, plan, seed, out, progress)
        fn = (ar_step_fn if stage == "ar" else diffusion_step_fn)(hart, plan, seed, pool)
    run_stage(hart, stage, sp, out, resume, fn, seed, progress, train_text=plan.train_text and stage == "ar")
    if stage == "vae":
        print(f"vae: {vae_report(hart, plan, seed, out)}")
    return save(hart.half(), out / "model")


def fit_preview_stage(out: Path, tiny: bool, seed: int, progress: bool) -> Path:
    """OUT/model/preview.json: fitted on world renders through the encoder (the decoder fallback without one)."""
    from model.checkpoint import load
    from model.preview import save_preview
    from runtime_py.preview_fit import fit_from_decoder
    from train.preview import fit_from_renders

    ckpt = out / "model"
    needs("preview", out)
    log = (lambda m: print(m, file=sys.stderr)) if progress else None
    try:
        hart = load(ckpt, with_encoder=True)
        n_fit, n_held = PREVIEW_FIT["tiny" if tiny else "full"]
        proj = fit_from_renders(hart, n_fit, n_held, seed=seed, log=log)
    except CheckpointError:  # no encoder in this checkpoint: fit from what the decoder draws
        hart = load(ckpt)
        proj = fit_from_decoder(hart, log=log)
    path = save_preview(ckpt, proj, hart.G)
    print(f"preview: {proj.fit['method']}, held-out PSNR {proj.fit['psnr_db']} dB on the latent grid -> {path}")
    return ckpt


@cli_main("python -m train")
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    first = STAGES[0] if a.stage == "all" else a.stage
    if first != "vae":
        needs(first, a.out)  # before anything is created under --out
    torch.set_num_threads(a.threads)
    plan = tiny_plan() if a.tiny else Plan()
    if a.steps is not None:
        plan = replace(plan, **{s: replace(plan.stage(s), steps=a.steps) for s in STAGES})
    if a.pool is not None:
        plan = replace(plan, pool=a.pool)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for stage in (*STAGES, "preview") if a.stage == "all" else (a.stage,):
        if stage == "preview":
            path = fit_preview_stage(a.out, a.tiny, a.seed, not a.quiet)
        else:
            path = run(stage, plan, a.out, a.seed, a.resume, not a.quiet)
    print(f"wrote {path} ({sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 1e6:.1f} MB) "
          f"in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
