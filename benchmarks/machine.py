"""What machine a result came from, and its measured roofline (fp32 GEMM rate, memory bandwidth)."""

from __future__ import annotations

import os
import platform
import time

import torch


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("executorch", "torchao", "coremltools", "onnxruntime"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:  # noqa: BLE001 - optional package
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "os": platform.platform(),
            "machine": platform.machine(), "versions": versions}


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_roofline(n: int = 1536, copy_mb: int = 256, repeats: int = 5) -> dict:
    """Sustained fp32 GEMM GFLOP/s (n×n×n matmul) and copy bandwidth GB/s (read + write)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = _best(lambda: torch.mm(a, b), repeats)
    src = torch.empty(copy_mb * 2**20 // 4)
    dst = torch.empty_like(src)
    tc = _best(lambda: dst.copy_(src), repeats)
    return {"gemm_gflops": 2 * n**3 / t / 1e9, "bandwidth_gbs": 2 * src.numel() * 4 / tc / 1e9,
            "gemm_n": n, "copy_mb": copy_mb}


def attainable_gflops(flops: float, bytes_moved: float, roof: dict) -> float:
    """Roofline: min(peak compute, arithmetic intensity × bandwidth)."""
    if bytes_moved <= 0:
        return roof["gemm_gflops"]
    return min(roof["gemm_gflops"], flops / bytes_moved * roof["bandwidth_gbs"])


class PeakRSS:
    """Peak resident set size of this process over a region (Linux: VmHWM reset via clear_refs)."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.ok = True
        except OSError:
            self.ok = False
        return self

    def __exit__(self, *exc):
        self.mb = None
        if self.ok:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    self.mb = int(line.split()[1]) / 1024
        return False
