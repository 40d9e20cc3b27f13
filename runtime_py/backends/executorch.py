"""ExecuTorch backend: one loaded Program per .pte artifact, methods mapped through the manifest.

The AR program's methods share one mutable KV-cache allocation (exported with
share_mutable_buffers), so the program must stay loaded for a whole generation: scale_01 reads the
cache scale_00 wrote. Every cache slot a scale reads is written earlier in the same generation, so
consecutive generations need no reset. The mutable state is whatever the exporter planned (fp32 or
fp16 caches, or int8 caches plus fp32 per-token scales); it lives inside the program, so the host
passes only the contract tensors. `release(method)` drops the program holding `method` (the AR programs
only with finished=True, after the image's last scale: their state must persist within an image); `run`
loads it again when needed. `lazy=True` verifies every program at open and then drops it, so that a
pipeline releasing each component after use holds one component at a time.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from runtime_py.quiet import cpu_probe_quiet

PTE_IDENTIFIER = b"ET12"  # flatbuffer file_identifier of executorch/schema/program.fbs, bytes 4..8


@contextlib.contextmanager
def _fd2_captured() -> Iterator[list[bytes]]:
    """Collect the non-empty lines C++ code writes to fd 2 inside the block (the list fills when it ends)."""
    logged: list[bytes] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield logged
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            logged.extend(ln for ln in tmp.read().splitlines() if ln.strip())


class ExecuTorchBackend:
    name = "executorch"

    def __init__(self, root: str | Path, manifest: dict, lazy: bool = False):
        from executorch.runtime import Runtime

        self.runtime = Runtime.get()
        self.root = root = Path(root)
        self.programs = {}
        self.methods: dict[str, tuple[str, str]] = {}
        self.stateful = {m["file"] for m in manifest["methods"] if m["component"] == "ar_transformer"}
        if any(m.get("entry") == "ar_body" for m in manifest["methods"]):  # split AR layout: LLM cache ops
            from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401 - registers their kernels
        for m in manifest["methods"]:
            if m["file"] not in self.programs:
                self.programs[m["file"]] = self._load(m["file"])
            entry = m.get("entry", m["name"])
            if entry not in self.programs[m["file"]].method_names:
                raise ValueError(f"{root / m['file']}: has no method {entry!r} (manifest method {m['name']})")
            self.methods[m["name"]] = (m["file"], entry)
        if lazy:
            self.programs.clear()

    def _load(self, file: str):
        """load_program with InternalConsistency verification, after a header check of our own: ExecuTorch
        logs a bad file identifier as raw bytes, which aborts the process (pybind11 cannot decode them)."""
        from executorch.runtime import Verification

        from runtime_py.bundle import BundleError

        path = self.root / file
        with open(path, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[4:8] != PTE_IDENTIFIER or int.from_bytes(head[:4], "little") >= path.stat().st_size:
            raise BundleError(f"{path} is not an ExecuTorch program (bad flatbuffer header); re-export the bundle")
        program, error = None, None
        with _fd2_captured() as logged:  # ExecuTorch logs the reason from C++ to fd 2: fold it into the error
            try:
                program = self.runtime.load_program(path, verification=Verification.InternalConsistency)
            except RuntimeError as e:
                error = e
        if program is not None:
            if logged:  # not ours to hide
                os.write(2, b"\n".join(logged) + b"\n")
            return program
        why = "; ".join(ln.decode("utf-8", "replace").split("] ", 1)[-1] for ln in logged) or str(error)
        raise BundleError(f"{path} fails ExecuTorch program verification ({why})", "re-export the bundle")

    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        file, entry = self.methods[method]
        if file not in self.programs:
            self.programs[file] = self._load(file)
        with cpu_probe_quiet():
            loaded = self.programs[file].load_method(entry)
        outs = loaded.execute([t.contiguous() for t in inputs])
        return list(outs)

    def release(self, method: str, finished: bool = False) -> None:
        file = self.methods[method][0]
        if file in self.stateful and not finished:
            raise ValueError(f"{method}: {file} holds the KV cache across methods; it cannot be released mid-image")
        self.programs.pop(file, None)
