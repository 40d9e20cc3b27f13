"""Run one bundle's parity gate under several CPU kernel configurations and tabulate the spread.

    PYTHONPATH=. .venv/bin/python tools/parity_spread.py --bundle DIR [--config NAME ...] [--out r.json]

Why: a threshold must sit below what legitimately varies between machines (summation order, thread
count, AVX-512 / AVX2 / VNNI kernel variants), with a margin. Each configuration runs the whole gate
(runtime_py.parity.run_parity) in its own process, since the ISA switches are read at start-up:

- `t2` / `t1`: 2 or 1 threads for eager torch, onnxruntime (intra-op) and ExecuTorch's XNNPACK pool;
- `avx2-t2` / `avx2-t1`: eager torch, MKL and oneDNN forced to AVX2 (ATEN_CPU_CAPABILITY etc.);
  onnxruntime's MLAS and XNNPACK choose kernels from CPUID only and have no such switch;
- `haswell-t1`: the whole process under `qemu-x86_64 -cpu Haswell` (user-mode emulation hides
  AVX-512 and VNNI from CPUID, so MLAS and XNNPACK take their AVX2 paths too); slow (tens of minutes).

Prints one markdown row per metric: threshold, value per configuration, spread (max - min) and the
margin of the worst value over the threshold. docs/portability.md has the measured tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
CONFIGS: dict[str, tuple[dict[str, str], int, list[str]]] = {  # name: (environment, threads, command prefix)
    "t2": ({}, 2, []),
    "t1": ({}, 1, []),
    "avx2-t2": (AVX2_ENV, 2, []),
    "avx2-t1": (AVX2_ENV, 1, []),
    "haswell-t1": ({}, 1, ["qemu-x86_64", "-cpu", "Haswell"]),
}
CHECKS = ("golden", "teacher_forced", "components", "end_to_end", "full_precision")


def threaded_backend(bundle_dir: Path, threads: int):
    """The bundle's backend with `threads` intra-op threads (eager torch set by the caller)."""
    from runtime_py.backends import create_backend
    from runtime_py.bundle import Bundle

    bundle = Bundle.open(bundle_dir)
    if bundle.backend == "onnx":
        from runtime_py.backends.onnx import OnnxBackend

        return OnnxBackend(bundle.root, bundle.manifest, threads=threads)
    if bundle.backend == "executorch":
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(threads)  # XNNPACK's pool
    return create_backend(bundle)


def child(bundle_dir: Path, threads: int, out: Path) -> None:
    import torch

    from runtime_py.parity import run_parity

    torch.set_num_threads(threads)
    rep = run_parity(bundle_dir, backend=threaded_backend(bundle_dir, threads))
    res = {k: {"values": rep[k]["values"], "thresholds": rep[k]["thresholds"]} for k in CHECKS if k in rep}
    res["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out.write_text(json.dumps(res, indent=1) + "\n")


def run_config(name: str, bundle_dir: Path, out: Path) -> dict:
    env, threads, prefix = CONFIGS[name]
    cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "--child", "--bundle", str(bundle_dir),
           "--threads", str(threads), "--out", str(out)]
    full_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    res = subprocess.run(cmd, env=full_env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{name}: the gate did not run: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())


def table(results: dict[str, dict]) -> list[str]:
    names = list(results)
    lines = [f"| check | metric | threshold | {' | '.join(names)} | spread | worst margin |",
             "|---|---|---|" + "---|" * len(names) + "---|---|"]
    first = results[names[0]]
    for check in CHECKS:
        for metric, lim in first.get(check, {}).get("thresholds", {}).items():
            vals = [results[n][check]["values"][metric] for n in names]
            cells = " | ".join(f"{v:.4g}" for v in vals)
            lines.append(f"| {check} | {metric} | {lim:.4g} | {cells} | {max(vals) - min(vals):.3g} | "
                         f"{min(vals) - lim:+.3g} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--config", nargs="+", choices=list(CONFIGS), default=["t2", "t1", "avx2-t2", "avx2-t1"])
    p.add_argument("--out", type=Path, help="write every configuration's values as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.bundle, a.threads, a.out)
        return 0
    results = {}
    for name in a.config:
        tmp = (a.out or Path(f"/tmp/parity-spread-{os.getpid()}.json")).with_suffix(f".{name}.json")
        results[name] = run_config(name, a.bundle, tmp)
        print(f"{name}: done ({results[name]['cpu_capability']})", file=sys.stderr)
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
