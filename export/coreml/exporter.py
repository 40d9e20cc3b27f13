"""python -m export.coreml: HART -> Core ML bundle (four .mlpackage folders, golden/, manifest.json).

ArTransformer.mlpackage holds one function per scale (weights stored once, KV cache as fp16 states);
TextEncoder is int8 (int4 with --text-quant int4), DiffusionHead and VaeDecoder fp16. Every method is
converted from the same Stage module the other backends use (torch.export -> ct.convert), quantized
per function, then the AR functions are merged. The bundle is built in a temp folder and renamed
into place (export/bundle.py staging), so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from export import bundle as fmt
from export.coreml import convert as cc
from export.coreml.manifest import PACKAGES, build_manifest
from model.build import with_patch_nums
from model.config import SCHEDULES
from model.hart import Hart
from model.memory import with_memory_mode
from model.stages import method_specs
from runtime_py.cli import OneLineParser, add_checkpoint_args, cli_main, finite_float, load_model
from runtime_py.coreml.conventions import param_index


@dataclass
class Report:
    manifest: dict
    seconds: dict[str, float] = field(default_factory=dict)  # per method (export + convert + quantize), merge
    total_seconds: float = 0.0


def recipes_for(quant: str, block_size: int, text_quant: str | None,
                plan: dict | None = None) -> dict[str, cc.QuantRecipe]:
    text = text_quant or ("fp16" if quant == "fp16" else "int8")
    if (quant == "auto") != (plan is not None):
        raise ValueError("--quant auto needs a plan (quantization.auto), and only it takes one")
    if plan is not None and (plan.get("backend") != "coreml" or plan.get("group_size") != block_size):
        raise ValueError(f"the auto plan was searched for {plan.get('backend')} with group size "
                         f"{plan.get('group_size')}, not coreml with block size {block_size}; re-run the search")
    return {"text_encoder": cc.QuantRecipe(text, block_size),
            "ar_transformer": cc.QuantRecipe(quant, block_size, plan),
            "diffusion_head": cc.QuantRecipe("fp16"), "vae_decoder": cc.QuantRecipe("fp16")}


def parse_schedule(value: str) -> tuple[int, ...]:
    """A preset name (256px, 512px, 1024px) or comma-separated patch sides, e.g. 1,2,4."""
    if value in SCHEDULES:
        return SCHEDULES[value]
    try:
        nums = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--schedule {value!r}: use one of {', '.join(SCHEDULES)} or sides like 1,2,4") from None
    if len(nums) < 2 or nums[0] != 1 or any(b <= a for a, b in zip(nums, nums[1:])):
        raise ValueError(f"--schedule {value!r}: sides must start at 1 and increase (at least two scales)")
    return nums


def _convert_all(hart: Hart, recipes: dict[str, cc.QuantRecipe], tmp: Path, progress: bool) -> dict[str, float]:
    """Every method -> its package (AR functions via single-function parts, merged at the end)."""
    specs = method_specs(hart)
    index = param_index(hart)
    parts_dir = tmp / ".parts"
    parts_dir.mkdir()
    ar_parts, seconds = [], {}
    bar = tqdm(specs, desc="coreml", unit="method", file=sys.stderr, disable=not progress)
    with cc.quiet_coremltools():
        for spec in bar:
            bar.set_postfix_str(spec.name)
            t0 = time.perf_counter()
            ml = cc.quantize(cc.convert_method(hart, spec), recipes[spec.component], index)
            if spec.component == "ar_transformer":
                path = parts_dir / f"{spec.name}.mlpackage"
                ar_parts.append((spec.name, path))
            else:
                path = tmp / PACKAGES[spec.component]
            ml.save(str(path))
            seconds[spec.name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cc.merge_functions(ar_parts, tmp / PACKAGES["ar_transformer"])
        seconds["merge"] = time.perf_counter() - t0
    shutil.rmtree(parts_dir)
    return seconds


def _components(tmp: Path, specs, recipes: dict[str, cc.QuantRecipe], seconds: dict[str, float]) -> dict[str, dict]:
    """Per package: functions, size, parameters, bits per weight (all stored weights / quantized ones)."""
    from runtime_py.coreml.package import package_bytes, stored_weights

    out = {}
    for comp, pkg in PACKAGES.items():
        ws = stored_weights(tmp / pkg)
        params = sum(w.numel for w in ws.values())
        quant = [w for w in ws.values() if w.quantized]
        qn = sum(w.numel for w in quant)
        fns = [s.name for s in specs if s.component == comp]
        multi = comp == "ar_transformer"
        out[comp] = {"file": pkg, "methods": fns, "functions": fns if multi else ["main"],
                     "default_function": fns[0] if multi else "main", "bytes": package_bytes(tmp / pkg),
                     "params": params, "bits_per_weight": round(sum(w.stored_bits for w in ws.values()) / params, 3),
                     "quantized_params": qn,
                     "bits_per_quantized_weight": round(sum(w.stored_bits for w in quant) / qn, 3) if qn else None,
                     "quantization": recipes[comp].to_json(),
                     "export_seconds": round(sum(seconds.get(f, 0.0) for f in fns), 1)}
    return out


def golden_trace(hart: Hart, specs) -> tuple[dict, float]:
    """Eager fp32 generation of the golden prompt (the reference a phone replays)."""
    from runtime_py.pipeline import EagerBackend, Pipeline

    cfg = hart.cfg.sampler.cfg
    gen = Pipeline(specs, EagerBackend(hart), hart.text.tokenizer).generate(
        fmt.GOLDEN_PROMPT, fmt.GOLDEN_SEED, cfg, keep_trace=True)
    return gen.trace, cfg


def export_coreml(hart: Hart, out: Path, quant: str = "int4", block_size: int = 32, text_quant: str | None = None,
                  compute_units: str = "all", source: dict | None = None, schedule: str | None = None,
                  progress: bool = True, plan: dict | None = None) -> Report:
    """Convert, quantize, merge, write golden + manifest; the bundle appears at `out` only when complete.
    `plan`: the per-layer AR recipe of quant="auto" (quantization.auto.Plan.to_json(), backend coreml)."""
    if hart.text is None:
        raise ValueError("the model has no text encoder (the bundle needs one)")
    t_start = time.perf_counter()
    recipes = recipes_for(quant, block_size, text_quant, plan)
    specs = method_specs(hart)
    with fmt.staging(out) as tmp:
        trace, cfg = golden_trace(hart, specs)
        hart.reset_cache(torch.float16)  # Core ML states are fp16 only
        try:
            seconds = _convert_all(hart, recipes, tmp, progress)
            comps = _components(tmp, specs, recipes, seconds)
            hart.text.tokenizer.save(tmp / "tokenizer.json")
            fmt.write_golden(tmp, specs, trace, fmt.GOLDEN_PROMPT, fmt.GOLDEN_SEED, cfg)
            manifest = build_manifest(hart, specs, quant, block_size, recipes, compute_units,
                                      source or fmt.default_source(), schedule, comps, cfg)
        finally:
            hart.reset_cache(torch.float32)
        manifest["preview"] = fmt.preview_info(hart, progress)
        manifest["export_seconds"] = round(time.perf_counter() - t_start, 1)
        manifest = fmt.write_manifest(tmp, manifest)
    return Report(manifest, seconds, time.perf_counter() - t_start)


def print_summary(rep: Report, out: Path) -> None:
    print(f"{'package':<26}{'functions':>10}{'MB':>9}{'weights':>11}{'quant':>7}{'bits/w':>8}{'bits/qw':>9}"
          f"{'export s':>10}")
    for c in rep.manifest["components"].values():
        qw = f"{c['bits_per_quantized_weight']:.2f}" if c["bits_per_quantized_weight"] else "-"
        print(f"{c['file']:<26}{len(c['functions']):>10}{c['bytes'] / 2**20:>9.3f}{c['params']:>11,}"
              f"{c['quantization']['dtype']:>7}{c['bits_per_weight']:>8.2f}{qw:>9}{c['export_seconds']:>10.1f}")
    files = rep.manifest["files"]
    gold = sum(v["bytes"] for k, v in files.items() if k.startswith("golden/"))
    total = sum(v["bytes"] for v in files.values())
    print(f"tokenizer.json {files['tokenizer.json']['bytes'] / 1024:.0f} KB, golden/ {gold / 1024:.0f} KB; "
          f"bundle {total / 2**20:.2f} MB -> {out} in {rep.total_seconds:.1f} s "
          f"({rep.manifest['coreml']['deployment_target']}, compute units {rep.manifest['coreml']['compute_units']})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m export.coreml",
                      description="Export HART to a Core ML bundle (multifunction AR with KV states, iOS18).")
    add_checkpoint_args(p, "official-layout checkpoint folder (default: seeded default model)")
    p.add_argument("--quant", choices=(*cc.QUANT_CHOICES, "auto"), default="int4",
                   help="AR weights: int4 per-block (default), int8 per-channel, fp16, or auto = per-layer "
                        "int4/int8/fp16 plan meeting --budget")
    p.add_argument("--budget", type=finite_float,
                   help="auto: minimum teacher-forced token agreement with fp32 eager (0-1], checked by the gate")
    p.add_argument("--plan", type=Path,
                   help="auto: reuse a plan written by python -m quantization.auto --backend coreml")
    p.add_argument("--block-size", type=int, default=32, help="int4 block size along the input axis (default 32)")
    p.add_argument("--text-quant", choices=cc.QUANT_CHOICES,
                   help="text encoder weights (default int8; fp16 with --quant fp16)")
    p.add_argument("--compute-units", choices=cc.COMPUTE_UNITS, default="all",
                   help="recommended MLComputeUnits recorded in the manifest (default all)")
    p.add_argument("--schedule", help=f"scale schedule: {', '.join(SCHEDULES)} or sides like 1,2,4 (default: model's)")
    fmt.add_memory_mode_args(p, "fp16", "Core ML states are fp16 only, so fp16 is the one accepted")
    p.add_argument("--out", type=Path, help="bundle folder (default bundles/coreml-<quant>), replaced atomically")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if not 1 <= a.block_size <= 4096 or a.block_size & (a.block_size - 1):
        p.error(f"--block-size must be a power of two in [1, 4096], got {a.block_size}")
    if a.kv_cache != "fp16":
        p.error(f"--kv-cache {a.kv_cache}: Core ML states (the KV cache) are fp16 only (iOS 18 MLState; ct.convert "
                "rejects other state dtypes), so an int8 or fp32 cache cannot be exported; use --kv-cache fp16 "
                "(half of fp32) with --attn-chunk N to cut the attention peak, or export.executorch / export.onnx "
                "--kv-cache int8 for an int8 cache")
    fmt.check_auto_args(p, a)
    fmt.check_export_args(p, a, None)
    a.schedule_name = a.schedule
    try:
        a.schedule = parse_schedule(a.schedule) if a.schedule else None
    except ValueError as e:
        p.error(str(e))
    return a


@cli_main("python -m export.coreml")
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = a.out or Path("bundles") / f"coreml-{a.quant}"
    try:
        loaded = load_model(a.checkpoint, a.text_encoder)
        scheduled = with_patch_nums(loaded, a.schedule) if a.schedule else loaded
        hart = with_memory_mode(scheduled, "fp32", a.attn_chunk)  # states: fp16 at export
        source = fmt.default_source() if a.checkpoint is None else fmt.checkpoint_source(a.checkpoint)
        plan = fmt.auto_plan(hart, a, "coreml", a.block_size) if a.quant == "auto" else None
        rep = export_coreml(hart, out, a.quant, a.block_size, a.text_quant, a.compute_units, source,
                            a.schedule_name, progress=not a.quiet, plan=plan)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print_summary(rep, out)
    return 0

