"""python -m benchmarks.host: per-stage latency, load time, peak RSS, size and roofline on this machine.

Every bundle is measured next to the eager fp32 PyTorch pipeline of the same checkpoint in the same
run, so each figure also appears as a ratio to that baseline.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.cost import method_costs
from benchmarks.machine import PeakRSS, attainable_gflops, machine_info, measure_roofline
from benchmarks.schema import SCHEMA, SCHEMA_VERSION, summarize, validate
from runtime_py.cli import (
    OneLineParser,
    add_checkpoint_args,
    check_checkpoint_args,
    check_out_file,
    cli_main,
    finite_float,
    load_model,
    seed_int,
)
from runtime_py.images import atomic_file, write_atomic

PROMPT = "a lighthouse at dusk"


class _Timed:
    """Backend wrapper recording per-method peak RSS on an instrumented run."""

    def __init__(self, backend):
        self.inner, self.name, self.rss = backend, backend.name, {}

    def run(self, method, inputs):
        with PeakRSS() as p:
            out = self.inner.run(method, inputs)
        self.rss[method] = p.mb
        return out


def eager_target(checkpoint: Path | None, text_encoder: Path | None = None):
    from model.stages import method_specs
    from runtime_py.pipeline import EagerBackend, Pipeline

    t0 = time.perf_counter()
    hart = load_model(checkpoint, text_encoder)
    load_ms = (time.perf_counter() - t0) * 1e3
    pipe = Pipeline(method_specs(hart), EagerBackend(hart), hart.text.tokenizer)
    bits = {"text_encoder": 32, "ar_transformer": 32, "diffusion_head": 32, "vae_decoder": 32}
    return pipe, hart.cfg, {"name": "eager-fp32", "backend": "eager", "bundle": None, "recipe": dict.fromkeys(bits,
            "fp32"), "bits_per_weight": bits, "load_ms": {"cold": load_ms, "warm": None}, "size_bytes": None}


def bundle_target(path: Path):
    from runtime_py.bundle import open_pipeline

    t0 = time.perf_counter()
    pipe, bundle = open_pipeline(path)
    cold = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    pipe, bundle = open_pipeline(path)
    warm = (time.perf_counter() - t0) * 1e3
    info = bundle.benchmark_info()
    return pipe, bundle, {"name": path.name, "backend": pipe.backend.name, "bundle": str(path), **info,
                          "load_ms": {"cold": cold, "warm": warm}}


def measure(pipe, target: dict, costs: dict, roof: dict, runs: int, warmup: int, seed: int, cfg: float) -> dict:
    for _ in range(warmup):
        pipe.generate(PROMPT, seed, cfg)
    per: dict[str, list[float]] = {}
    e2e = []
    for _ in range(runs):
        t0 = time.perf_counter()
        g = pipe.generate(PROMPT, seed, cfg)
        e2e.append((time.perf_counter() - t0) * 1e3)
        for k, v in g.timings_ms.items():
            per.setdefault(k, []).append(v)
    timed = _Timed(pipe.backend)
    inner, pipe.backend = pipe.backend, timed
    with PeakRSS() as total_rss:
        pipe.generate(PROMPT, seed, cfg)
    pipe.backend = inner
    bits = target.get("bits_per_weight") or {}
    comp = {s.name: s.component for s in pipe.specs}
    stages = {}
    for name, vals in per.items():
        st = summarize(vals)
        if name in costs:
            c = costs[name]
            wbytes = c["params"] * bits.get(comp.get(name, ""), 32) / 8
            gflops = c["flops"] / (st["median_ms"] / 1e3) / 1e9
            st.update(flops=c["flops"], weight_bytes=wbytes, gflops=gflops,
                      roofline_fraction=gflops / attainable_gflops(c["flops"], wbytes, roof),
                      peak_rss_mb=timed.rss.get(name))
        stages[name] = st
    target["stages"] = stages
    target["end_to_end"] = {**summarize(e2e), "peak_rss_mb": total_rss.mb}
    return target


def add_ratios(targets: list[dict]) -> None:
    base = targets[0]
    for t in targets[1:]:
        for name, st in t["stages"].items():
            b = base["stages"].get(name)
            if b:
                st["ratio_to_baseline"] = st["median_ms"] / b["median_ms"]
        t["end_to_end"]["ratio_to_baseline"] = t["end_to_end"]["median_ms"] / base["end_to_end"]["median_ms"]


def markdown(result: dict) -> str:
    targets = result["targets"]
    names = list(targets[0]["stages"])
    head = "| stage | " + " | ".join(t["name"] for t in targets) + " |"
    lines = [f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores, "
             f"{result['machine']['threads']} threads); roofline {result['roofline']['gemm_gflops']:.1f} GFLOP/s, "
             f"{result['roofline']['bandwidth_gbs']:.1f} GB/s", "", "Median ms (ratio to eager):", "",
             head, "|" + "---|" * (len(targets) + 1)]
    for n in names + ["end_to_end"]:
        cells = []
        for t in targets:
            st = t["end_to_end"] if n == "end_to_end" else t["stages"].get(n)
            if st is None:
                cells.append("–")
                continue
            r = st.get("ratio_to_baseline")
            frac = st.get("roofline_fraction")
            cells.append(f"{st['median_ms']:.2f}" + (f" ({r:.2f}×)" if r else "")
                         + (f" [{100 * frac:.0f}% roof]" if frac else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for t in result["targets"]:
        names = [n for n in t["stages"] if n.startswith("scale_")]
        ax.plot(range(len(names)), [t["stages"][n]["median_ms"] for n in names], marker="o", label=t["name"])
    ax.set_xlabel("AR scale step")
    ax.set_ylabel("median ms")
    ax.set_yscale("log")
    ax.set_title(f"Per-scale latency — {result['machine']['cpu']}, {result['machine']['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@cli_main("python -m benchmarks.host")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m benchmarks.host", description=__doc__)
    p.add_argument("--bundle", type=Path, action="append", default=[], help="bundle folder (repeatable)")
    add_checkpoint_args(p, "checkpoint of the eager baseline (default: seeded default)")
    p.add_argument("--baseline", choices=["eager"], default="eager")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=seed_int, default=7)
    p.add_argument("--cfg", type=finite_float, default=4.5)
    p.add_argument("--out", type=Path, required=True, help="results JSON (markdown and PNG written beside it)")
    a = p.parse_args(argv)
    if a.runs < 1 or a.warmup < 0 or a.threads < 1:
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    for b in a.bundle:
        if not (b / "manifest.json").is_file():
            p.error(f"--bundle {b} has no manifest.json")
    check_checkpoint_args(p, a)
    check_out_file(p, "--out", a.out)
    torch.set_num_threads(a.threads)
    roof = measure_roofline()
    print(f"roofline: {roof['gemm_gflops']:.1f} GFLOP/s fp32 GEMM, {roof['bandwidth_gbs']:.1f} GB/s", file=sys.stderr)
    pipe, cfg, base = eager_target(a.checkpoint, a.text_encoder)
    costs = method_costs(cfg)
    targets = [measure(pipe, base, costs, roof, a.runs, a.warmup, a.seed, a.cfg)]
    for b in a.bundle:
        bpipe, _, t = bundle_target(b)
        targets.append(measure(bpipe, t, costs, roof, a.runs, a.warmup, a.seed, a.cfg))
    add_ratios(targets)
    result = validate({"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                       "created": datetime.now(UTC).isoformat(timespec="seconds"),
                       "machine": machine_info(a.threads), "roofline": roof,
                       "settings": {"runs": a.runs, "warmup": a.warmup, "prompt": PROMPT, "seed": a.seed,
                                    "cfg": a.cfg, "config": cfg.name},
                       "baseline": targets[0]["name"], "targets": targets})
    write_atomic(a.out, (json.dumps(result, indent=1) + "\n").encode())  # each file whole or absent
    md = markdown(result)
    write_atomic(a.out.with_suffix(".md"), md.encode())
    with atomic_file(a.out.with_suffix(".png")) as tmp:
        chart(result, tmp)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
