"""onnxruntime backend for the reference Pipeline: one InferenceSession per method of an ONNX bundle.

Created by runtime_py.backends.create_backend for manifests with `backend: onnx` (the bundle reader
validates files and rebuilds the specs, KV cache included). The step graphs reference the same tensors
in one weights.data (page-aligned when large) and onnxruntime maps that file rather than copying it:
with prepacking off, 10 step sessions cost +26 MB RSS vs +11 MB for one, less than one 3 MB copy of the
AR weights per extra session; prepacked fp32 MatMul weights are per session. Also handing the shared
tensors to every session via `SessionOptions.add_initializer` saved nothing measurable, so it is not done.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import torch


class OnnxBackend:
    """Runs `manifest["methods"]` with onnxruntime; inputs/outputs are torch tensors in contract order."""

    name = "onnxruntime"

    def __init__(self, bundle: str | Path, manifest: dict | None = None, providers: list[str] | None = None,
                 threads: int | None = None, lazy: bool = False):
        self.bundle = Path(bundle)
        self.manifest = manifest or json.loads((self.bundle / "manifest.json").read_text())
        self.providers = providers or ["CPUExecutionProvider"]
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.io: dict[str, tuple[list[str], list[str]]] = {}
        self.threads = threads
        self.files = {m["name"]: m["file"] for m in self.manifest["methods"]}
        for m in self.manifest["methods"]:
            sess = self.sessions[m["name"]] = self._session(m["name"])
            ins = m.get("onnx_inputs") or [i.name for i in sess.get_inputs()]
            outs = m.get("onnx_outputs") or [o.name for o in sess.get_outputs()]
            if len(ins) != len(m["inputs"]) or len(outs) != len(m["outputs"]):
                raise ValueError(f"{m['file']}: graph has {len(ins)} inputs / {len(outs)} outputs, manifest lists "
                                 f"{len(m['inputs'])} / {len(m['outputs'])}")
            self.io[m["name"]] = (ins, outs)
            if lazy:  # checked; loaded again when first run
                del self.sessions[m["name"]]

    def _session(self, method: str) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.log_severity_level = 3  # fp16 graphs log harmless "cannot constant-fold fp16 Gemm" warnings
        if self.threads:
            so.intra_op_num_threads = self.threads
        return ort.InferenceSession(str(self.bundle / self.files[method]), so, providers=self.providers)

    def release(self, method: str, finished: bool = False) -> None:
        """Drop `method`'s session (the graphs are stateless: the KV cache is an explicit tensor)."""
        self.sessions.pop(method, None)

    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if method not in self.sessions:
            self.sessions[method] = self._session(method)
        ins, outs = self.io[method]
        feeds = {n: t.detach().contiguous().numpy() for n, t in zip(ins, inputs)}
        return [torch.from_numpy(o) for o in self.sessions[method].run(outs, feeds)]
