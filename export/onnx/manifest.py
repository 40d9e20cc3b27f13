"""manifest.json of an ONNX bundle, in the shared bundle schema (export/bundle.py) plus an `onnx` section.

The method I/O lists carry the KV cache like any other tensor: `kv_cache` is an input of every AR
step (source `zeros` at the first step, `env` after) and an output of every step but the last. A
phone loop that passes tensors by name and allocates zeros for `source: zeros` needs nothing else.
"""

from __future__ import annotations

import math
import platform

import onnx
import onnxruntime
import torch

from export import bundle as fmt
from export.onnx.graphs import OPSET, onnx_io_names
from model.explicit_kv import KV_LAYOUT, KV_NAME, KV_SCALE_LAYOUT, STATE_NAMES
from model.hart import Hart
from model.stages import MethodSpec, torch_dtype
from runtime_py.thresholds import parity_section

_CPU = ["CPUExecutionProvider"]
# Priority lists for a phone (nodes a provider cannot take fall back to the next one). MatMulNBits and
# the dynamic-int8 ops are CPU-provider contrib kernels, so quantized graphs stay on the CPU provider.
PROVIDERS = {
    "int4": {"android": _CPU, "ios": _CPU},
    "int8": {"android": _CPU, "ios": _CPU},
    "fp16": {"android": ["XnnpackExecutionProvider", *_CPU], "ios": ["CoreMLExecutionProvider", *_CPU]},
    "fp32": {"android": ["XnnpackExecutionProvider", *_CPU], "ios": ["CoreMLExecutionProvider", *_CPU]},
}
WHY = {
    "int4": "MatMulNBits (ORT contrib op): int4 weights, symmetric, block 32, int8 activations (accuracy level 4)",
    "int8": "quantize_dynamic: int8 weights per output channel in a 7-bit range (reduce_range: no u8s8 "
            "saturation on AVX2 without VNNI), activations quantized at run time",
    "fp16": "graph exported from an fp16 copy; norm statistics and the sampler update stay fp32; I/O stays fp32",
    "fp32": "reference precision",
}
def method_entry(spec: MethodSpec, precision: str, shared: list[str]) -> dict:
    ins, outs = onnx_io_names(spec)
    return fmt.method_entry(spec, f"{spec.name}.onnx", precision=precision,
                            execution_providers=PROVIDERS[precision], onnx_inputs=ins, onnx_outputs=outs,
                            shared_initializers=shared)


def quantization_info(quant: str, recipe: dict[str, str], quantized: dict[str, set[str]],
                      linears: dict[str, set[str]]) -> dict:
    """Per component: scheme, the Linear weights converted, the ones left float, and why."""
    comps = {}
    for comp, scheme in recipe.items():
        done = sorted(quantized.get(comp, set()))
        kept = sorted(linears.get(comp, set()) - set(done)) if scheme in ("int4", "int8") else []
        comps[comp] = {"component": comp, "scheme": scheme, "quantized": done, "kept_float": kept,
                       "group_size": 32 if scheme == "int4" else None, "why": WHY[scheme]}
    return {"name": quant, "group_size": 32 if quant == "int4" else None, "components": comps}


def kv_info(hart: Hart, specs: list[MethodSpec]) -> dict:
    """The explicit KV state: `kv_cache` (fp32/fp16/int8) and, in int8 mode, `kv_scale` (fp32); `bytes`
    is the whole state (cache + scales), `state` lists every tensor the host carries between steps."""
    ar = [m.name for m in specs if m.component == "ar_transformer"]
    first = next(m for m in specs if m.name == ar[0])
    state = [t for t in first.inputs if t.name in STATE_NAMES]
    sizes = {t.name: math.prod(t.shape) * torch.empty((), dtype=torch_dtype(t.dtype)).element_size() for t in state}
    kv = state[0]
    names = " and ".join(t.name for t in state)
    return {"name": KV_NAME, "shape": list(kv.shape), "dtype": kv.dtype, "layout": KV_LAYOUT,
            "bytes": sum(sizes.values()), "init": "zeros", "first": ar[0], "last": ar[-1],
            "state": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "bytes": sizes[t.name],
                       "source_first": "zeros", "layout": KV_LAYOUT if t.name == KV_NAME else KV_SCALE_LAYOUT}
                      for t in state],
            "rule": f"the host passes zeros to {ar[0]}; each step's {names} outputs are the next step's inputs; "
                    f"{ar[-1]} does not return them (nothing reads them afterwards)"}


def versions() -> dict:
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


def build_manifest(hart: Hart, specs: list[MethodSpec], methods: list[dict], quantization: dict, source: dict,
                   schedule: str | None, weights_file: str, weights_bytes: int, cfg: float,
                   sizes: dict[str, int], text_bytes: int = 0) -> dict:
    kv = kv_info(hart, specs)
    return {
        "format": fmt.FORMAT, "schema_version": fmt.SCHEMA_VERSION, "min_runtime_version": fmt.MIN_RUNTIME_VERSION,
        "backend": "onnx",
        "onnx": {"opset": OPSET, "contrib_domains": ["com.microsoft"], "weights_file": weights_file,
                 "weights": "one external-data file shared by every graph; a tensor used by several graphs is "
                            "stored once and has the same name and offset in each",
                 "verified_providers": _CPU, "kv_cache": kv, "sizes": sizes},
        "model": {"name": hart.cfg.name, "source": source, "image_size": hart.cfg.image_size, "batch": hart.B},
        "call_order": [s.name for s in specs],
        "methods": methods,
        "schedule": fmt.schedule_info(hart, schedule),
        "sampler": fmt.sampler_info(hart),
        "rng": fmt.rng_info(specs),
        "tokenizer": fmt.tokenizer_info(hart, "tokenizer.json"),
        "quantization": quantization,
        "memory": {"weights_bytes": weights_bytes, "kv_cache_bytes": kv["bytes"], "kv_cache_copies": 2,
                   "peak_bytes": weights_bytes + 2 * kv["bytes"],
                   "text_encoder_bytes": text_bytes,
                   "peak_bytes_unload_text_encoder": weights_bytes - text_bytes + 2 * kv["bytes"],
                   "mode": fmt.memory_mode_info(hart),
                   "formula": "peak ~ weights + 2 x KV state (a step's input and output cache, and scales in int8 "
                              "mode, are alive together) + the largest activation (not counted); onnxruntime maps "
                              "weights.data, prepacked fp32 MatMul weights are per session. With the text encoder "
                              "released after encoding its graph and the weights only it uses no longer count"},
        "parity": parity_section("onnx", quantization["name"], hart),
        "golden": {"index": "golden/index.json", "prompt": fmt.GOLDEN_PROMPT, "seed": fmt.GOLDEN_SEED, "cfg": cfg},
        "versions": versions(),
    }
