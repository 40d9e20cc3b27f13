"""python -m benchmarks.onnx_latency --bundle DIR [--bundle DIR ...] [--runs N]: per-method latency,
onnxruntime vs eager PyTorch, on the same recorded inputs (median of N calls after one warm-up)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from runtime_py.cli import OneLineParser, cli_main


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_methods(backend, inputs: dict[str, list[torch.Tensor]], runs: int) -> dict[str, float]:
    return {m: median_ms(lambda: backend.run(m, ins), runs) for m, ins in inputs.items()}  # noqa: B023 - called now


@cli_main("python -m benchmarks.onnx_latency")
def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m benchmarks.onnx_latency", description=__doc__)
    p.add_argument("--bundle", type=Path, action="append", required=True, help="ONNX bundle folder (repeatable)")
    p.add_argument("--runs", type=int, default=20, help="timed calls per method (default 20)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes (default 2)")
    a = p.parse_args(argv)
    for b in a.bundle:
        if not (b / "manifest.json").is_file():
            p.error(f"--bundle {b} has no manifest.json (export one with python -m export.onnx)")
    from model.build import default_model
    from model.explicit_kv import FunctionalEagerBackend, explicit_kv_specs
    from model.stages import method_specs
    from runtime_py.backends.onnx import OnnxBackend
    from runtime_py.pipeline import EagerBackend, Pipeline

    torch.set_num_threads(a.threads)
    hart = default_model()
    trace = Pipeline(explicit_kv_specs(hart), FunctionalEagerBackend(hart), hart.text.tokenizer).generate(
        "a lighthouse at dusk", 7, 4.5, keep_trace=True).trace
    eager, n_in = EagerBackend(hart), {s.name: len(s.inputs) for s in method_specs(hart)}  # stateful: no cache input
    cols = {"eager fp32": time_methods(eager, {m: t["in"][:n_in[m]] for m, t in trace.items()}, a.runs)}
    for b in a.bundle:
        be = OnnxBackend(b, threads=a.threads)
        name = f"ort {be.manifest['quantization']['name']}"
        cols[name] = time_methods(be, {m: t["in"] for m, t in trace.items()}, a.runs)
    print(f"{'method (ms)':<16}" + "".join(f"{c:>14}" for c in cols))
    for m in trace:
        print(f"{m:<16}" + "".join(f"{cols[c][m]:>14.2f}" for c in cols))
    print(f"{'total':<16}" + "".join(f"{sum(cols[c].values()):>14.2f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
