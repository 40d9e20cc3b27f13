"""Core ML backends for the reference Pipeline.

- `CoreMLBackend` runs the .mlpackage files with coremltools `predict` (macOS 15+ only: Core ML and
  its states do not exist elsewhere). One KV state object serves every scale function and is renewed
  at the first scale of each image.
- `CoreMLSimBackend` is the Linux stand-in: the PyTorch stages in fp16 with the weights read back
  out of the packages (dequantized int4/int8, fp16 consts). It checks what the packages contain, not
  Core ML's kernels, so it never replaces a device run (the parity report says so).
"""

from __future__ import annotations

import copy
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from model.stages import MethodSpec, torch_dtype
from runtime_py.pipeline import EagerBackend

FP32_INPUTS = ("noise_u",)  # inputs the Core ML graph consumes in fp32 (export/coreml/graph.py islands)


class CoreMLUnavailable(ValueError):
    """Core ML prediction cannot run here (anything but macOS 15+); a ValueError so CLIs print one line."""


def device_unavailable_reason() -> str | None:
    """None if coremltools can predict with states here, else why not."""
    if sys.platform != "darwin":
        return f"Core ML prediction needs macOS 15+ (this is {platform.system()}); coremltools predict/make_state " \
               "are macOS-only"
    major = int(platform.mac_ver()[0].split(".")[0] or 0)
    if major < 15:
        return f"Core ML states need macOS 15+, this is macOS {platform.mac_ver()[0]}"
    try:
        import coremltools.libcoremlpython  # noqa: F401
    except ImportError as e:
        return f"coremltools has no Core ML runtime binding here ({e})"
    return None


class CoreMLBackend:
    name = "coreml"

    def __init__(self, bundle: Path, compute_units: str | None = None):
        reason = device_unavailable_reason()
        if reason:
            raise CoreMLUnavailable(
                f"{reason}; on Linux use python -m runtime_py.parity --bundle DIR (structural + weight checks)")
        import coremltools as ct

        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        cu = getattr(ct.ComputeUnit, (compute_units or manifest["coreml"]["compute_units"]).upper())
        self.methods = {m["name"]: m for m in manifest["methods"]}
        self.models = {}
        self.load = {}
        for m in manifest["methods"]:
            kw = {"function_name": m["function"]} if m["function"] != "main" else {}
            self.load[m["name"]] = lambda m=m, kw=kw: ct.models.MLModel(str(Path(bundle) / m["package"]),
                                                                        compute_units=cu, **kw)
            self.models[m["name"]] = self.load[m["name"]]()
        self.first_stateful = next(m["name"] for m in manifest["methods"] if m["states"])
        self.state = None

    def release(self, method: str, finished: bool = False) -> None:
        """Drop a method's model; `run` loads it again. A stateful one only once the image is past its last
        use (finished), and then the state goes with it (a new image makes a new one)."""
        if self.methods[method]["states"]:
            if not finished:
                raise ValueError(f"{method} uses the KV state; it cannot be released mid-image")
            self.state = None
        self.models.pop(method, None)

    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if method not in self.models:
            self.models[method] = self.load[method]()
        m, model = self.methods[method], self.models[method]
        feed = {e["coreml_name"]: t.numpy().astype(np.dtype(e["coreml_dtype"]))
                for e, t in zip(m["coreml_inputs"], inputs)}
        kw = {}
        if m["states"]:
            if method == self.first_stateful or self.state is None:
                self.state = model.make_state()  # zeros, new per image
            kw["state"] = self.state
        out = model.predict(feed, **kw)
        return [torch.from_numpy(np.asarray(out[e["coreml_name"]])).to(torch_dtype(t["dtype"]))
                for e, t in zip(m["coreml_outputs"], m["outputs"])]


class CoreMLSimBackend:
    """fp16 eager stages with the packages' stored weights (what a Linux machine can execute)."""

    name = "coreml-sim"

    def __init__(self, reference: torch.nn.Module, stored: dict[str, torch.Tensor], specs: list[MethodSpec]):
        sim = copy.deepcopy(reference)
        with torch.no_grad():
            for fqn, value in stored.items():
                sim.get_parameter(fqn.removeprefix("hart.")).copy_(value)
        sim = sim.half()
        sim.reset_cache(torch.float16)  # Core ML states are fp16
        self.hart = sim
        self.eager = EagerBackend(sim)
        self.specs = {s.name: s for s in specs}

    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        names = [t.name for t in self.specs[method].inputs]
        ins = [t.half() if t.is_floating_point() and n not in FP32_INPUTS else t for t, n in zip(inputs, names)]
        return [o.float() if o.is_floating_point() else o for o in self.eager.run(method, ins)]
