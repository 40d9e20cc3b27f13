"""The documented parity thresholds of every backend and recipe, in one place.

The exporters write these into manifest.json and the parity gate (runtime_py/parity.py) compares a
manifest's thresholds with them, so they live below both (the runtime never imports exporters).
Pure data and small helpers: no torch import.
"""

from __future__ import annotations

import math
from typing import Any

# ---- ExecuTorch ---------------------------------------------------------------------------------

# Parity thresholds per recipe (runtime_py/parity.py). fp32 must reproduce eager: every token on
# identical inputs except numerical ties, image PSNR >= 45 dB. The quantized ones are set from
# measurements on the default model with a margin (docs/executorch.md lists the measured numbers;
# with a different AR model, e.g. other seeded weights, teacher-forced agreement drops to 0.03).
# They are calibrated on the default (random-weight, flat-logit) model: re-measure for a checkpoint.
# Portability (docs/portability.md): 8da4w re-measured under 1/2 threads and torch forced to AVX2:
# golden 0.743 / 11.9 dB and end to end 0.393 / 0.705 / 11.0 dB identical on every config; teacher
# forced 0.699-0.702 / 11.8-11.9 dB; text 33.8 dB; diffusion 43.6-44.2 dB; VAE 47.7-47.8 dB: every
# limit keeps >= 3.8 dB / 0.099 of margin over the worst config. fp32 keeps eager-level limits: a
# mismatch only counts beyond TIE_TOL (1e-3, ~100x the fp32 logit differences between kernels).
PARITY_THRESHOLDS: dict[str, dict[str, dict[str, float]]] = {
    "fp32": {
        "golden": {"token_agreement": 0.99, "tie_adjusted_agreement": 1.0, "sqnr_db": 60.0},
        "teacher_forced": {"token_agreement": 0.99, "tie_adjusted_agreement": 1.0, "sqnr_db": 60.0},
        "components": {"text_sqnr_db": 60.0, "diffusion_psnr_db": 60.0, "vae_psnr_db": 60.0},
        "end_to_end": {"token_agreement": 0.99, "closed_loop_agreement": 1.0, "image_psnr_db": 45.0},
    },
    "8da8w": {  # measured: 0.962 / 26.8 dB, 0.957 / 24.6 dB, 33.8 / 38.8 / 46.8 dB, 0.72 / 0.962 / 13.4 dB
        "golden": {"token_agreement": 0.90, "sqnr_median_db": 20.0},
        "teacher_forced": {"token_agreement": 0.90, "sqnr_median_db": 20.0},
        "components": {"text_sqnr_db": 30.0, "diffusion_psnr_db": 35.0, "vae_psnr_db": 43.0},
        "end_to_end": {"token_agreement": 0.50, "closed_loop_agreement": 0.90, "image_psnr_db": 12.0},
    },
    "8da4w": {  # measured: 0.743 / 11.9 dB, 0.70 / 10.6 dB, 33.8 / 38.8 / 46.8 dB, 0.33 / 0.705 / 10.4 dB
        "golden": {"token_agreement": 0.60, "sqnr_median_db": 7.0},
        "teacher_forced": {"token_agreement": 0.60, "sqnr_median_db": 7.0},
        "components": {"text_sqnr_db": 30.0, "diffusion_psnr_db": 35.0, "vae_psnr_db": 43.0},
        "end_to_end": {"token_agreement": 0.25, "closed_loop_agreement": 0.60, "image_psnr_db": 8.0},
    },
}

# Drift of a memory-mode bundle from the full-precision (fp32 cache, unchunked) eager path, end to end
# on the parity runs (runtime_py/parity.py `full_precision`); from the eager measurements of
# tests/test_memory_modes.py and docs/executorch.md "Memory modes", with a margin. Chunked attention
# is exact, so a chunk-only mode keeps the recipe's own end-to-end thresholds.
MEMORY_DRIFT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp16": {"token_agreement": 0.97, "image_psnr_db": 35.0},
    "int8": {"token_agreement": 0.90, "image_psnr_db": 18.0},
}

# Same-mode end to end with an fp16/int8 cache: rounding on write turns the ~1e-6 fp32 differences
# between runtime and eager into whole code steps now and then (at most ~1/127 of a token's absmax),
# so a near-tie token can flip a few scales later (closed-loop agreement stays 1.0). Measured on the
# default model, fp32 weights, int8 cache: ExecuTorch (chunk 32) 0.998 tokens / 39.0 dB (one flip at
# scale_08, eager margin 0.022), ONNX 0.9985 / 46.0 dB.
MEMORY_MODE_END_TO_END: dict[str, dict[str, float]] = {
    "fp16": {"token_agreement": 0.97, "image_psnr_db": 30.0},
    "int8": {"token_agreement": 0.97, "image_psnr_db": 30.0},
}


def recipe_thresholds(recipe: str, plan: dict | None = None) -> dict[str, dict[str, float]]:
    """The gate's limits for a recipe. auto: the budget is the teacher-forced token agreement (the
    metric the search measured on other prompts); the other checks keep the limits of the coarsest
    scheme in the plan (8da4w if any layer is int4, else 8da8w: the other components are quantized)."""
    if recipe != "auto":
        return PARITY_THRESHOLDS[recipe]
    if plan is None:
        raise ValueError("the auto recipe needs its plan to set parity thresholds")
    base = "8da4w" if "8da4w" in plan["layers"].values() else "8da8w"
    out = {k: dict(v) for k, v in PARITY_THRESHOLDS[base].items()}
    out["teacher_forced"] = {"token_agreement": float(plan["budget"])}
    return out


def mode_thresholds(hart: Any, thresholds: dict) -> dict:
    """The recipe's thresholds, end to end relaxed to MEMORY_MODE_END_TO_END for a rounded KV cache.
    `hart`: anything with `.cfg.kv_cache` (a model.hart.Hart)."""
    out = {k: dict(v) for k, v in thresholds.items()}
    for k, v in MEMORY_MODE_END_TO_END.get(hart.cfg.kv_cache, {}).items():
        out["end_to_end"][k] = min(out["end_to_end"][k], v)
    return out


def full_precision_thresholds(hart: Any, recipe: str, table: dict | None = None) -> dict:
    """{"full_precision": thresholds} for a bundle in a memory mode, {} for the full-precision mode: the
    weaker of the recipe's end-to-end limits and the mode's own drift limits."""
    cfg = hart.cfg
    if cfg.kv_cache == "fp32" and cfg.attn_chunk == 0:
        return {}
    e2e = (table or PARITY_THRESHOLDS)[recipe]["end_to_end"]
    mode = MEMORY_DRIFT_THRESHOLDS.get(cfg.kv_cache, {})
    return {"full_precision": {k: min(e2e[k], mode.get(k, e2e[k])) for k in ("token_agreement", "image_psnr_db")}}


# ---- ONNX ---------------------------------------------------------------------------------------

# Parity thresholds (runtime_py/parity.py metrics) per ONNX recipe, from runtime_py.parity on the
# default model (measured value in the comment) with a margin. The quantized end-to-end numbers are
# low because the seeded default model has random weights and near-flat logits: any weight error
# resamples tokens (two fp32 images of one seed and different prompts agree about as much).
# Portability (docs/portability.md): the int4 row was re-measured under 1/2 threads and torch forced to
# AVX2 (spread: teacher-forced tokens 0.0044, SQNR 0.29 dB, golden and end to end bit-identical);
# the int8 text encoder uses reduce_range since full-range weights saturated onnxruntime's AVX2 u8s8
# kernel (16.3 dB on an emulated Haswell vs 30.1 dB with VNNI); with 7-bit weights it measures 29.4 dB
# in the gate on every configuration, so 25 dB keeps a 4.4 dB margin and still fails a damaged layer.
ONNX_PARITY_THRESHOLDS: dict[str, dict[str, dict[str, float]]] = {
    "fp32": PARITY_THRESHOLDS["fp32"],
    "int4": {  # measured: 0.803 / 3.96 dB (e_last at the last scale) / median 16.9 dB, on every config
        "golden": {"token_agreement": 0.65, "sqnr_db": 1.0, "sqnr_median_db": 10.0},
        # 0.804-0.808 / 3.46-3.75 / 14.3-14.5 over threads and torch ISAs
        "teacher_forced": {"token_agreement": 0.65, "sqnr_db": 1.0, "sqnr_median_db": 10.0},
        "components": {"text_sqnr_db": 25.0, "diffusion_psnr_db": 55.0, "vae_psnr_db": 55.0},  # 29.4, 71.4, 70.7
        "end_to_end": {"token_agreement": 0.30, "closed_loop_agreement": 0.65, "image_psnr_db": 9.0},  # .40 .79 11.5
    },
    "int8": {  # measured (reduce_range): 0.925 / 8.46 dB / median 32.4 dB, on every config
        "golden": {"token_agreement": 0.80, "sqnr_db": 5.0, "sqnr_median_db": 25.0},
        # 0.929-0.934 / 9.04-10.92 / 29.1-29.5 over threads and torch ISAs
        "teacher_forced": {"token_agreement": 0.80, "sqnr_db": 5.0, "sqnr_median_db": 25.0},
        "components": {"text_sqnr_db": 25.0, "diffusion_psnr_db": 55.0, "vae_psnr_db": 55.0},  # 29.4, 71.4, 70.7
        "end_to_end": {"token_agreement": 0.55, "closed_loop_agreement": 0.85, "image_psnr_db": 11.0},  # .64 .93 12.9
    },
}

# ---- Core ML ------------------------------------------------------------------------------------

# Parity thresholds (runtime_py.parity metrics), measured on the default model with CoreMLSimBackend
# (fp16 PyTorch carrying the packages' weights) vs fp32 eager, set with a margin. Measured values
# (golden tok/SQNR, teacher-forced tok/SQNR, end-to-end tok/PSNR): int4 0.68/2.1, 0.70/2.4, 0.37/10.8;
# int8 0.975/15.5, 0.977/13.2, 0.71/13.7; fp16 0.993/22.7, 0.999/34.1, 0.97/24.5. Unrelated
# samples (eager, another seed) score 0.02 and 9.5 dB end to end.
AR_THRESHOLDS: dict[str, dict[str, dict[str, float]]] = {
    "fp16": {"golden": {"token_agreement": 0.95, "sqnr_db": 17.0},
             "teacher_forced": {"token_agreement": 0.97, "sqnr_db": 25.0},
             "end_to_end": {"token_agreement": 0.90, "image_psnr_db": 19.0}},
    "int8": {"golden": {"token_agreement": 0.90, "sqnr_db": 10.0},
             "teacher_forced": {"token_agreement": 0.90, "sqnr_db": 8.0},
             "end_to_end": {"token_agreement": 0.55, "image_psnr_db": 11.0}},
    "int4": {"golden": {"token_agreement": 0.50, "sqnr_db": 1.0},
             "teacher_forced": {"token_agreement": 0.50, "sqnr_db": 1.0},
             "end_to_end": {"token_agreement": 0.20, "image_psnr_db": 9.5}},
}
# Text context SQNR by text recipe (measured: fp16 58.5 dB, int8 37.5 dB, int4 13.2 dB); the
# fp16 diffusion head and VAE decoder measured 44.6 dB residual PSNR and 64 dB image PSNR.
TEXT_SQNR_DB = {"fp16": 45.0, "int8": 30.0, "int4": 10.0}


def coreml_thresholds(ar: str, text: str, plan: dict | None = None) -> dict[str, dict[str, float]]:
    """Thresholds for one Core ML recipe pair; an int4 text encoder also relaxes end to end to the int4
    row. auto: the budget is the teacher-forced token agreement; the rest from the coarsest dtype in the plan."""
    if ar == "auto":
        used = set(plan["layers"].values())
        base = next(d for d in ("int4", "int8", "fp16") if d in used or d == "fp16")
        t = {k: dict(v) for k, v in AR_THRESHOLDS[base].items()}
        t["teacher_forced"]["token_agreement"] = float(plan["budget"])
    else:
        t = {k: dict(v) for k, v in AR_THRESHOLDS[ar].items()}
    if text == "int4":
        t["end_to_end"] = dict(AR_THRESHOLDS["int4"]["end_to_end"])
    t["components"] = {"text_sqnr_db": TEXT_SQNR_DB[text], "diffusion_psnr_db": 40.0, "vae_psnr_db": 50.0}
    return t


# ---- one manifest section, and the gate's comparison with it -----------------------------------

def parity_section(backend: str, recipe: str, hart: Any, plan: dict | None = None, text: str = "int8") -> dict:
    """manifest["parity"]: the documented thresholds of `backend` + `recipe` (+ the auto plan, the Core ML
    text recipe) in `hart`'s memory mode. The exporters write it; the parity gate rebuilds it from the
    manifest and refuses a manifest whose limits are looser (looser_than_documented)."""
    if backend == "coreml":
        return {"recipe": recipe, "thresholds": coreml_thresholds(recipe, text, plan)}
    table = ONNX_PARITY_THRESHOLDS if backend == "onnx" else PARITY_THRESHOLDS
    limits = recipe_thresholds(recipe, plan) if recipe == "auto" else table[recipe]
    return {"recipe": recipe, "thresholds": mode_thresholds(hart, limits),
            **full_precision_thresholds(hart, recipe, {recipe: limits})}


def manifest_plan(manifest: dict) -> dict | None:
    """The auto plan's budget and layer schemes as recorded in a manifest (ExecuTorch: quantization.auto
    + the AR component's layers; Core ML: both inside the AR component), None for other recipes."""
    q = manifest.get("quantization") or {}
    ar = (q.get("components") or {}).get("ar_transformer") or {}
    auto = q.get("auto") or ar.get("auto")
    if not isinstance(auto, dict):
        return None
    return {**auto, "layers": ar.get("layers") or {}}


def looser_than_documented(parity: dict, documented: dict) -> list[str]:
    """Every way a manifest's parity section is looser than the documented one: a limit below the
    documented value, missing, or not a finite number; a check or metric the documentation does not
    have. Higher is better for every metric, so a higher limit (tighter) is fine."""
    want, got = _checks(documented), _checks(parity)
    problems = []
    for check in sorted(set(want) | set(got)):
        w, g = want.get(check), got.get(check)
        if w is None:
            problems.append(f"{check} is not a documented check")
            continue
        if not isinstance(g, dict):
            problems.append(f"{check} missing")
            continue
        for metric in sorted(set(w) | set(g)):
            v = g.get(metric)
            if metric not in w:
                problems.append(f"{check}.{metric} is not a documented threshold")
            elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                problems.append(f"{check}.{metric} is {v!r}, not a number")
            elif v < w[metric]:
                problems.append(f"{check}.{metric} {v:g} < documented {w[metric]:g}")
    return problems


def _checks(parity: dict) -> dict:
    """{check: {metric: limit}} of a parity section: its thresholds plus full_precision when present."""
    out = dict(parity.get("thresholds") or {}) if isinstance(parity.get("thresholds"), dict) else {}
    if "full_precision" in parity:
        out["full_precision"] = parity["full_precision"]
    return out
