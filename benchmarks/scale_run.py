"""Child processes of `python -m benchmarks.scale`: the export and the reference-runtime generation.

Each runs in its own process so its peak RSS is its own (an export leaves gigabytes in the
allocator that a generation in the same process would inherit). Each writes one JSON file:

    python -m benchmarks.scale_run export   SPEC.json RESULT.json
    python -m benchmarks.scale_run generate SPEC.json RESULT.json

SPEC.json is written by benchmarks/scale.py (config name, schedule, text layers, quant, bundle, runs).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks.machine import PeakRSS
from runtime_py.cli import cli_main


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def lifetime_peak_mb() -> float:
    """Peak RSS of this process since it started (ru_maxrss is not reset by clear_refs)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Steps:
    """Wall time, CPU time and peak RSS of named steps (PeakRSS resets VmHWM at each step start)."""

    def __init__(self):
        self.rows: list[dict] = []

    def wrap(self, name_of, fn):
        def run(*args, **kwargs):
            name = name_of(*args, **kwargs)
            print(f"[scale] {name} ... (RSS {rss_mb():.0f} MB)", file=sys.stderr, flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            with PeakRSS() as p:
                out = fn(*args, **kwargs)
            row = {"step": name, "seconds": round(time.perf_counter() - t0, 1),
                   "cpu_seconds": round(time.process_time() - c0, 1), "peak_rss_mb": p.mb, "end_rss_mb": rss_mb()}
            self.rows.append(row)
            print(f"[scale] {name}: {row['seconds']} s, peak RSS {p.mb:.0f} MB", file=sys.stderr, flush=True)
            return out
        return run


def do_export(spec: dict) -> dict:
    import export.executorch.exporter as ex
    from benchmarks.scale import scale_config
    from model.build import build

    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(spec["threads"])
    steps = Steps()
    if spec.get("checkpoint"):
        hart, source = steps.wrap(lambda *a: "load checkpoint", ex.load_source)(Path(spec["checkpoint"]),
                                                                                spec["schedule"])
    else:
        cfg = scale_config(spec["config"], spec["schedule"], spec["text_layers"])
        hart = steps.wrap(lambda c, seed: "build (random init)", build)(cfg, spec["seed"])
        source = {"kind": "random-init", "seed": spec["seed"], "config": cfg.name, "text_layers": cfg.text.num_layers,
                  "note": "benchmarks.scale: official dimensions, random weights"}
    # instrument the exporter's own steps (module globals, looked up at call time)
    ex.golden_trace = steps.wrap(lambda *a, **k: "golden trace (eager fp32)", ex.golden_trace)
    ex.apply_recipe = steps.wrap(lambda *a, **k: f"quantize ({a[1]}, VAE {k.get('vae_dtype')})", ex.apply_recipe)
    ex.export_program = steps.wrap(lambda h, specs: f"lower {specs[0].component}", ex.export_program)
    t0 = time.perf_counter()
    manifest = ex.export_bundle(hart, source, Path(spec["bundle"]), spec["quant"], spec["group_size"],
                                spec["schedule"], "auto", progress=True)
    return {"steps": steps.rows, "export_seconds": round(time.perf_counter() - t0, 1),
            "lifetime_peak_rss_mb": lifetime_peak_mb(), "manifest_export_seconds": manifest["export_seconds"]}


def do_generate(spec: dict) -> dict:
    from runtime_py.bundle import open_pipeline

    torch.set_num_threads(spec["threads"])
    base = rss_mb()
    t0 = time.perf_counter()
    pipe, bundle = open_pipeline(spec["bundle"], release_after_use=spec.get("release_after_use", False))
    load_ms = (time.perf_counter() - t0) * 1e3
    after_load = rss_mb()
    runs = []
    for i in range(spec["runs"] + 1):  # run 0 is cold: XNNPACK initialises (repacks) each method on first call
        print(f"[scale] generation {i + 1}/{spec['runs'] + 1}{' (cold)' if i == 0 else ''} ...",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        g = pipe.generate(spec["prompt"], spec["seed"] + i, bundle.default_cfg)
        runs.append({"total_ms": (time.perf_counter() - t0) * 1e3, "stages_ms": g.timings_ms,
                     "rss_mb": rss_mb(), "image_std": float(g.image.std())})
        print(f"[scale]   {runs[-1]['total_ms'] / 1e3:.1f} s, RSS {runs[-1]['rss_mb']:.0f} MB", file=sys.stderr,
              flush=True)
    return {"baseline_rss_mb": base, "after_load_rss_mb": after_load, "load_ms": load_ms, "runs": runs,
            "peak_rss_mb": lifetime_peak_mb(), "threads": spec["threads"],
            "release_after_use": spec.get("release_after_use", False)}


@cli_main("python -m benchmarks.scale_run")
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("export", "generate"):
        print("usage: python -m benchmarks.scale_run {export,generate} SPEC.json RESULT.json (started by "
              "python -m benchmarks.scale)", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    result = do_export(spec) if argv[0] == "export" else do_generate(spec)
    Path(argv[2]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
