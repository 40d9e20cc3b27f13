"""python -m benchmarks.scale: the full-size architecture on a phone bundle, and how cost grows with size.

    python -m benchmarks.scale --config hart-0.7b-1024px --random-init --schedule 512px --out reports/scale
    python -m benchmarks.scale --costs-only

The full run exports the config (official dimensions, random weights) to an ExecuTorch bundle in a
child process (wall time, CPU time and peak RSS per export step), then runs generations through the
reference runtime (runtime_py) in a second, fresh child process (per-stage latency, peak RSS), and
writes scale.json, scale.md and scale.png (per-scale latency against tokens and KV length) to --out.
`--costs-only` prints the analytic cost-growth table (benchmarks/cost.py; nothing is exported).

The text encoder keeps the official hidden size (so the context the AR model reads has its real
width) but has --text-layers layers (default 2 of 28) and the 257-symbol byte vocabulary: the full
Qwen2-1.5B in fp32 is ~6 GB before the quantizer's copy, and it is not part of what this benchmark
measures. Its FLOPs and latency are reported for the depth actually exported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from model.config import PRESETS, SCHEDULES, ARConfig, HartConfig, VAEConfig, total_tokens
from model.text_encoder import TextConfig
from runtime_py.cli import OneLineParser, cli_main

PROMPT = "a lighthouse on a cliff at dusk"
SEED = 20241014
# Nominal stored bits per weight for the cost table (measured values come from the bundle manifest):
# int4 + one 16-bit scale per group of 32; the VAE decoder is stored fp32 whatever its compute dtype
# (ExecuTorch 1.5.1 XNNPACK keeps conv weights fp32, docs/executorch.md).
NOMINAL_BITS = {"fp32": 32.0, "fp16": 16.0, "8da8w": 8.0, "8da4w": 4.5}
COST_RECIPES = ("fp32", "8da8w", "8da4w")


def mid_config() -> HartConfig:
    """A mid-size model between the default and 0.7B: depth 12, width 768, 256 px, 4096-code VAE."""
    text = TextConfig(vocab_size=257, hidden_size=768, num_layers=4, num_heads=12, num_kv_heads=2, head_dim=64,
                      intermediate_size=2048, max_tokens=300, pad_id=256, tokenizer="byte")
    ar = ARConfig(depth=12, embed_dim=768, num_heads=12, context_token=300, context_dim=768,
                  patch_nums=SCHEDULES["256px"], diff_width=512, diff_depth=3, vocab_size=4096, cvae=32)
    vae = VAEConfig(vocab_size=4096, z_channels=32, ch=64, ch_mult=(1, 1, 2, 2, 4))
    return HartConfig(name="mid-d12-w768-256px", ar=ar, vae=vae, text=text)


def scale_config(name: str, schedule: str | None, text_layers: int) -> HartConfig:
    """Preset `name` on `schedule`, with a byte-vocabulary text encoder of `text_layers` layers (0 = all)."""
    cfg = PRESETS[name]()
    cfg = replace(cfg.with_schedule(schedule), name=f"{name}@{schedule}") if schedule else cfg
    text = replace(cfg.text, num_layers=text_layers or cfg.text.num_layers, vocab_size=257, pad_id=256,
                   tokenizer="byte")
    return replace(cfg, text=text)


# ---- analytic costs ----------------------------------------------------------------------------


def component_params(cfg: HartConfig) -> dict[str, int]:
    """Parameters per bundle component (meta device: nothing is allocated)."""
    from benchmarks.cost import meta_model

    h = meta_model(cfg)
    n = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    diff = n(h.ar.diffloss)
    return {"text_encoder": n(h.text), "ar_transformer": n(h.ar) - diff + h.vae.quantize.embedding.weight.numel(),
            "diffusion_head": diff, "vae_decoder": n(h.vae.decoder) + n(h.vae.post_quant_conv)}


def weight_bytes(params: dict[str, int], recipe: str) -> float:
    from quantization.recipes import component_schemes

    schemes = component_schemes(recipe, "fp16")
    bits = {c: NOMINAL_BITS[s] for c, s in schemes.items()}
    bits["vae_decoder"] = 32.0
    return sum(params[c] * bits[c] / 8 for c in params)


def cost_row(cfg: HartConfig) -> dict:
    from benchmarks.cost import method_costs
    from model.memory import kv_cache_bytes

    costs = method_costs(cfg)
    params = component_params(cfg)
    flops = {c: 0.0 for c in params}
    for name, c in costs.items():
        comp = "ar_transformer" if name.startswith("scale_") else name
        flops[comp] += c["flops"]
    return {"config": cfg.name, "image_size": cfg.image_size, "scales": len(cfg.ar.patch_nums),
            "tokens": total_tokens(cfg.ar), "depth": cfg.ar.depth, "width": cfg.ar.embed_dim,
            "text_layers": cfg.text.num_layers, "params": params, "flops": flops,
            "flops_total": sum(flops.values()), "kv_bytes": kv_cache_bytes(cfg),
            "weight_bytes": {r: weight_bytes(params, r) for r in COST_RECIPES}}


def cost_configs() -> list[HartConfig]:
    big = PRESETS["hart-0.7b-1024px"]().with_schedule("512px")
    return [PRESETS["default"](), mid_config(), replace(big, name="hart-0.7b-1024px@512px")]


def cost_table(rows: list[dict]) -> str:
    head = ("| config | px | scales | tokens | text / AR / diff / VAE params (M) | GFLOP per generation "
            "(AR / diff / VAE / text) | KV fp32 | weights fp32 / 8da8w / 8da4w |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, f = r["params"], r["flops"]
        mp = " / ".join(f"{p[c] / 1e6:.1f}" for c in ("text_encoder", "ar_transformer", "diffusion_head",
                                                       "vae_decoder"))
        gf = " / ".join(f"{f[c] / 1e9:.0f}" for c in ("ar_transformer", "diffusion_head", "vae_decoder",
                                                       "text_encoder"))
        wb = " / ".join(_size(r["weight_bytes"][k]) for k in COST_RECIPES)
        lines.append(f"| {r['config']} (d{r['depth']}, w{r['width']}, text {r['text_layers']}L) | {r['image_size']} "
                     f"| {r['scales']} | {r['tokens']} | {mp} | {r['flops_total'] / 1e9:,.0f} ({gf}) "
                     f"| {_size(r['kv_bytes'])} | {wb} |")
    return "\n".join(lines) + "\n"


def _size(b: float) -> str:
    return f"{b / 2**30:.2f} GB" if b >= 2**30 else f"{b / 2**20:.1f} MB"


# ---- the full run ------------------------------------------------------------------------------


def run_child(kind: str, spec: dict, workdir: Path) -> dict:
    """Run benchmarks.scale_run in a fresh process (its stderr is ours: progress bars show live)."""
    spec_path, result_path = workdir / f"{kind}-spec.json", workdir / f"{kind}.json"
    spec_path.write_text(json.dumps(spec, indent=1) + "\n")
    result_path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale_run", kind, str(spec_path), str(result_path)],
                          env=env, check=False)
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"the {kind} step failed (exit code {proc.returncode}); its output is above")
    return json.loads(result_path.read_text())


def previous_export(out: Path, bundle: Path) -> dict | None:
    """With --skip-export: the export record an earlier run left in `out`, if it made this bundle."""
    spec, result = out / "export-spec.json", out / "export.json"
    if not (spec.is_file() and result.is_file()):
        return None
    if Path(json.loads(spec.read_text())["bundle"]).resolve() != bundle.resolve():
        return None
    return json.loads(result.read_text())


def per_scale_rows(cfg: HartConfig, costs: dict, stages: dict) -> list[dict]:
    from model.config import scale_steps

    rows = []
    for st in scale_steps(cfg.ar, cfg.sampler, cfg.vae.share_quant_resi):
        name = f"scale_{st.si:02d}"
        ms = stages[name]["median_ms"]
        rows.append({"method": name, "pn": st.pn, "tokens": 2 * cfg.batch * st.num_query, "kv_len": st.kv_end,
                     "flops": costs[name]["flops"], "median_ms": ms,
                     "gflops": costs[name]["flops"] / (ms / 1e3) / 1e9})
    return rows


def memory_check(cfg: HartConfig, manifest: dict, gen: dict) -> dict:
    """The manifest estimate and model.memory's per-mode estimates against the measured peak RSS."""
    from model.memory import estimate_peak_bytes

    measured = gen["peak_rss_mb"] * 2**20
    above_base = (gen["peak_rss_mb"] - gen["baseline_rss_mb"]) * 2**20
    files = {c: v["bytes"] for c, v in manifest["components"].items()}
    exported_mode = manifest["memory"].get("mode", {}).get("kv_cache", cfg.kv_cache)
    modes = {m: estimate_peak_bytes(replace(cfg, kv_cache=m), files) for m in ("fp32", "fp16", "int8")}
    staged = gen.get("release_after_use", False)  # one component resident at a time: its own estimate
    est = manifest["memory"]["peak_bytes_release_after_use" if staged else "peak_bytes"]
    return {"estimate_compared": "peak_bytes_release_after_use" if staged else "peak_bytes",
            "measured_peak_rss_bytes": measured, "measured_above_baseline_bytes": above_base,
            "baseline_rss_bytes": gen["baseline_rss_mb"] * 2**20, "manifest_estimate": manifest["memory"],
            "manifest_error": (est - measured) / measured,
            "manifest_error_above_baseline": (est - above_base) / above_base,
            "exported_kv_mode": exported_mode, "per_mode_estimate": modes,
            "per_mode_error_exported": (modes[exported_mode]["total"] - measured) / measured}


def stage_summary(gen: dict) -> dict:
    from benchmarks.schema import summarize

    warm = gen["runs"][1:] or gen["runs"]
    out = {}
    for name in gen["runs"][0]["stages_ms"]:
        out[name] = {**summarize([r["stages_ms"][name] for r in warm]), "cold_ms": gen["runs"][0]["stages_ms"][name]}
    out["end_to_end"] = {**summarize([r["total_ms"] for r in warm]), "cold_ms": gen["runs"][0]["total_ms"]}
    return out


def chart(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "tokens", "query tokens (2 CFG rows × pn², context at scale 0)"),
                           (axes[1], "kv_len", "KV length after the step")):
        ax.loglog([r[key] for r in rows], [r["median_ms"] for r in rows], marker="o")
        for r in rows:
            ax.annotate(r["method"][6:], (r[key], r["median_ms"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("median ms")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(r: dict) -> str:
    m, mem = r["machine"], r["memory"]
    lines = [f"# benchmarks.scale: {r['config']} @ {r['image_size']} px, {r['quant']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, {r['ram_gb']:.0f} GB RAM; "
             f"roofline {r['roofline']['gemm_gflops']:.1f} GFLOP/s fp32 GEMM, "
             f"{r['roofline']['bandwidth_gbs']:.1f} GB/s. "
             f"Text encoder: {r['text_layers']} layers (of {r['text_layers_official']}), byte vocabulary. "
             f"Random weights (seed {SEED}).", ""]
    if r.get("export"):
        lines += ["## Export", "", "| step | wall s | CPU s | peak RSS MB |", "|---|---|---|---|"]
        lines += [f"| {s['step']} | {s['seconds']} | {s['cpu_seconds']} | {s['peak_rss_mb']:.0f} |"
                  for s in r["export"]["steps"]]
        lines += ["", f"Whole export {r['export']['export_seconds']} s; process peak RSS "
                  f"{r['export']['lifetime_peak_rss_mb']:.0f} MB.", ""]
    lines += ["## Bundle", "", "| file | size | params | stored bits/weight |", "|---|---|---|---|"]
    for c in r["bundle"]["components"].values():
        lines.append(f"| {c['file']} | {_size(c['bytes'])} | {c['params']:,} | {c['bits_per_weight']} |")
    lines += [f"| golden/ + tokenizer + manifest | {_size(r['bundle']['other_bytes'])} | | |",
              f"| **total** | {_size(r['bundle']['total_bytes'])} | | |", "",
              "## Per-stage latency (reference runtime, ExecuTorch pybindings)", "",
              f"Median of {r['runs']} warm generation(s); cold = the first generation after loading "
              f"(load {r['generation']['load_ms'] / 1e3:.1f} s).", "",
              "| stage | median ms | cold ms | GFLOP | GFLOP/s |", "|---|---|---|---|---|"]
    for name, st in r["stages"].items():
        c = r["costs"].get(name)
        gf = f"{c['flops'] / 1e9:.1f} | {c['flops'] / st['median_ms'] / 1e6:.1f}" if c else "– | –"
        lines.append(f"| {name} | {st['median_ms']:.0f} | {st['cold_ms']:.0f} | {gf} |")
    lines += ["", "## Per scale: cost against tokens and KV length", "",
              "| scale | pn | query tokens | KV length | GFLOP | median ms | GFLOP/s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {s['method']} | {s['pn']} | {s['tokens']} | {s['kv_len']} | {s['flops'] / 1e9:.1f} | "
              f"{s['median_ms']:.0f} | {s['gflops']:.1f} |" for s in r["per_scale"]]
    est = mem["manifest_estimate"]
    lines += ["", "## Peak memory: estimate vs measured", "",
              f"Measured peak RSS of the generation process: {_size(mem['measured_peak_rss_bytes'])} "
              f"({_size(mem['baseline_rss_bytes'])} of it before the bundle was opened: Python, torch, "
              "ExecuTorch).", "",
              "| estimate | weights | KV cache | activation | total | error vs measured peak "
              "| error vs peak − baseline |",
              "|---|---|---|---|---|---|---|",
              f"| manifest (export), {mem.get('estimate_compared', 'peak_bytes')} | {_size(est['weights_bytes'])} | "
              f"{_size(est['kv_cache_bytes'])} | {_size(est['largest_activation_bytes'])} | "
              f"{_size(est[mem.get('estimate_compared', 'peak_bytes')])} | "
              f"{100 * mem['manifest_error']:+.1f}% | "
              f"{100 * mem['manifest_error_above_baseline']:+.1f}% |"]
    if "peak_bytes_unload_text_encoder" in est:
        lines.append(f"| manifest, text encoder released after use (not what was measured) | | | | "
                     f"{_size(est['peak_bytes_unload_text_encoder'])} | | |")
    for mode, e in mem["per_mode_estimate"].items():
        err = f"{100 * mem['per_mode_error_exported']:+.1f}%" if mode == mem["exported_kv_mode"] else "not measured"
        lines.append(f"| model.memory, KV {mode} | {_size(e['weights'])} | {_size(e['kv_cache'])} | "
                     f"{_size(e['activation'])} | {_size(e['total'])} | {err} | |")
    lines += ["", "## Cost growth over configurations (analytic)", "", r["cost_table"]]
    return "\n".join(lines) + "\n"


def full_run(a) -> dict:
    from benchmarks.cost import method_costs
    from benchmarks.machine import machine_info, measure_roofline

    cfg = scale_config(a.config, a.schedule, a.text_layers)
    a.out.mkdir(parents=True, exist_ok=True)
    base = {"config": a.config, "schedule": a.schedule, "text_layers": cfg.text.num_layers, "seed": SEED,
            "threads": a.threads, "bundle": str(a.bundle_dir), "quant": a.quant, "group_size": 32,
            "checkpoint": str(a.checkpoint) if a.checkpoint else None}
    if a.skip_export:
        export = previous_export(a.out, a.bundle_dir)
    else:
        export = run_child("export", base, a.out)
    gen = run_child("generate", {**base, "runs": a.runs, "prompt": PROMPT, "release_after_use": a.release_after_use},
                    a.out)
    manifest = json.loads((a.bundle_dir / "manifest.json").read_text())
    costs = method_costs(cfg)
    stages = stage_summary(gen)
    roof = measure_roofline()
    comp_bytes = sum(c["bytes"] for c in manifest["components"].values())
    total = sum(f["bytes"] for f in manifest["files"].values()) + (a.bundle_dir / "manifest.json").stat().st_size
    return {"config": cfg.name, "schedule": a.schedule, "image_size": cfg.image_size, "quant": a.quant,
            "text_layers": cfg.text.num_layers, "text_layers_official": PRESETS[a.config]().text.num_layers,
            "machine": machine_info(a.threads),
            "ram_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
            "roofline": roof, "runs": a.runs, "export": export, "generation": gen,
            "bundle": {"path": str(a.bundle_dir), "components": manifest["components"], "files": manifest["files"],
                       "total_bytes": total, "other_bytes": total - comp_bytes,
                       "manifest_export_seconds": manifest.get("export_seconds")},
            "costs": costs, "stages": stages, "per_scale": per_scale_rows(cfg, costs, stages),
            "memory": memory_check(cfg, manifest, gen),
            "cost_growth": (rows := [cost_row(c) for c in cost_configs()]), "cost_table": cost_table(rows)}


def parse_args(argv: list[str] | None):
    p = OneLineParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(PRESETS), default="hart-0.7b-1024px", help="architecture preset")
    p.add_argument("--random-init", action="store_true", help="random weights with the preset's dimensions")
    p.add_argument("--checkpoint", type=Path, help="real weights (the --config preset must describe them)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), help="scale schedule (default: the preset's)")
    p.add_argument("--quant", choices=("fp32", "8da8w", "8da4w"), default="8da4w", help="recipe (default 8da4w)")
    p.add_argument("--text-layers", type=int, default=2, help="text-encoder depth to export (0 = official; default 2)")
    p.add_argument("--out", type=Path, help="results folder: scale.json, scale.md, scale.png")
    p.add_argument("--bundle-dir", type=Path, help="where the bundle is written/read (default OUT/bundle)")
    p.add_argument("--skip-export", action="store_true", help="reuse the bundle in --bundle-dir")
    p.add_argument("--runs", type=int, default=2, help="warm generations after the cold one (default 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch/ExecuTorch threads")
    p.add_argument("--release-after-use", action="store_true",
                   help="generate with each component loaded when needed and released after use (runtime_py "
                        "--release-after-use); the measured peak is compared with memory.peak_bytes_release_after_use")
    p.add_argument("--costs-only", action="store_true", help="print the analytic cost-growth table and exit")
    a = p.parse_args(argv)
    if a.costs_only:
        return a
    if a.random_init == (a.checkpoint is not None):
        p.error("give exactly one of --random-init (random weights) or --checkpoint DIR")
    if a.checkpoint is not None and not a.checkpoint.is_dir():
        p.error(f"--checkpoint {a.checkpoint} is not a folder")
    if a.out is None:
        p.error("--out DIR is required (results folder)")
    if a.runs < 0 or a.threads < 1 or a.text_layers < 0:
        p.error("--runs and --text-layers must be >= 0, --threads >= 1")
    a.bundle_dir = a.bundle_dir or a.out / "bundle"
    if a.skip_export and not (a.bundle_dir / "manifest.json").is_file():
        p.error(f"--skip-export: {a.bundle_dir} has no manifest.json (export it first or pass --bundle-dir)")
    if not a.skip_export and a.bundle_dir.exists() and any(a.bundle_dir.iterdir()) \
            and not (a.bundle_dir / "manifest.json").is_file():
        p.error(f"--bundle-dir {a.bundle_dir} exists and is not a bundle folder")
    return a


@cli_main("python -m benchmarks.scale")
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.costs_only:
        print(cost_table([cost_row(c) for c in cost_configs()]), end="")
        return 0
    try:
        result = full_run(a)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"python -m benchmarks.scale: error: {e}", file=sys.stderr)
        return 1
    (a.out / "scale.json").write_text(json.dumps(result, indent=1) + "\n")
    chart(result["per_scale"], f"{result['config']} {result['quant']}: per-scale latency, "
          f"{result['machine']['threads']} threads", a.out / "scale.png")
    md = markdown(result)
    (a.out / "scale.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
