"""Run a bundle's golden calls through the ExecuTorch C++ `Module` with the options the Android AAR uses.

The AAR's JNI layer constructs `Module(path, load_mode, etdump)`: `share_memory_arenas` stays false,
so every method gets its own planned arenas and no mutable buffer is shared between methods. The JVM
stand-in of android_demo (app/src/jvmTest/jni: et_jni.cpp over the pip wheel's libexecutorch, the
AAR's Module signatures) is built here with g++/javac and driven by StockModuleReplay.java, one
Module per .pte kept for the whole call list, as the app's runner does.

The wheel ships the LLM custom-op kernels (update_cache, custom_sdpa) in a separate library that
links libtorch and the Python bindings (the AAR links them in), so the JVM gets that library through
`-Det.kernelLibs` and libpython through LD_PRELOAD.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
JNI = ROOT / "android_demo" / "app" / "src" / "jvmTest" / "jni"
STUBS = ROOT / "android_demo" / "app" / "src" / "jvmTest" / "stubs" / "org" / "pytorch" / "executorch"
_CODES = {torch.float32: "f32", torch.int64: "i64"}


def build(out: Path) -> Path:
    """Compile the JNI shim and the Java classes into `out`; returns `out`."""
    import executorch

    for tool in ("g++", "javac", "java"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: install g++ and openjdk-17-jdk-headless (.ci/run does)")
    et = Path(next(iter(executorch.__path__)))
    java_home = Path(os.path.realpath(shutil.which("javac"))).parents[1]
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["g++", "-std=c++17", "-O2", "-w", "-fPIC", "-shared", "-o", str(out / "libet_jni.so"),
                    str(JNI / "et_jni.cpp"), f"-I{et}/include",
                    f"-I{et}/include/executorch/runtime/core/portable_type/c10", f"-I{java_home}/include",
                    f"-I{java_home}/include/linux", "-DC10_USING_CUSTOM_GENERATED_MACROS", f"-L{et}/lib",
                    "-Wl,--no-as-needed", "-lexecutorch", "-lexecutorch_kernels_optimized",
                    "-lexecutorch_backend_xnnpack", "-ldl", f"-Wl,-rpath,{et}/lib"], check=True)
    sources = [JNI / "StockModuleReplay.java", JNI / "org/pytorch/executorch/Module.java",
               *(STUBS / f"{c}.java" for c in ("Tensor", "EValue", "DType"))]
    subprocess.run(["javac", "-d", str(out / "classes"), *map(str, sources)], check=True)
    return out


def replay(built: Path, bundle: Path, calls: list[tuple[str, str, str, list[torch.Tensor]]], work: Path,
           share_memory_arenas: bool = False) -> dict[str, list[torch.Tensor]]:
    """Execute `calls` ([(name, pte file, entry, inputs)], in order) in one JVM; outputs per call name."""
    from executorch.extension.llm.custom_ops import custom_ops

    work.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, (name, file, entry, inputs) in enumerate(calls):
        specs = []
        for i, t in enumerate(inputs):
            path = work / f"{n}.in{i}"
            t.contiguous().numpy().astype(t.numpy().dtype.newbyteorder("<")).tofile(path)
            specs.append(f"{_CODES[t.dtype]}:{','.join(map(str, t.shape))}:{path}")
        lines.append(f"call {bundle / file} {entry} {work / name} {len(specs)} {' '.join(specs)}")
    kernels = Path(custom_ops.__file__).parent / "libcustom_ops_aot_lib.so"
    libpython = Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
    res = subprocess.run(["java", f"-Det.jni={built / 'libet_jni.so'}", f"-Det.kernelLibs={kernels}",
                          f"-Det.shareMemoryArenas={str(share_memory_arenas).lower()}", "-cp",
                          str(built / "classes"), "StockModuleReplay"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "LD_PRELOAD": str(libpython)})
    if res.returncode != 0:
        raise RuntimeError(f"StockModuleReplay failed ({res.returncode}):\n{res.stderr[-3000:]}")
    outs: dict[str, list[torch.Tensor]] = {}
    for line in res.stdout.splitlines():
        if not line.startswith("out "):
            continue
        _, path, code, dims = line.split(" ")
        shape = [int(d) for d in dims.split(",")] if dims else []
        raw = np.fromfile(path, dtype="<i8" if code == "i64" else "<f4").reshape(shape)
        name = Path(path).name.rsplit(".", 1)[0]
        outs.setdefault(name, []).append(torch.from_numpy(raw.astype(np.int64 if code == "i64" else np.float32)))
    return outs
