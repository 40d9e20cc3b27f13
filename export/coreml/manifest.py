"""manifest.json of a Core ML bundle, in the shared schema of export/bundle.py.

Core ML specifics live in `coreml` (target, precision policy, states), in each method entry
(`package`, `function`, `coreml_inputs`/`coreml_outputs` with Core ML names and dtypes, `states`)
and in `components` (functions, sizes, bits per weight, quantization). `file` of a method is the
package's own Manifest.json, because the bundle file table lists files and a package is a folder.

The Core ML part is built from the export contract and the naming rules of export/coreml/convert.py,
not read back from the packages: the structure check compares the packages against it.
"""

from __future__ import annotations

import platform

import torch

from export import bundle as fmt
from export.coreml.convert import QuantRecipe, coreml_dtype, output_features, state_name
from model.hart import Hart
from model.stages import MethodSpec
from runtime_py.coreml.conventions import FP32_CHEAP, FP32_SINKS
from runtime_py.thresholds import parity_section

DEPLOYMENT_TARGET, SPEC_VERSION, OPSET = "iOS18", 9, "CoreML8"
PACKAGES = {"text_encoder": "TextEncoder.mlpackage", "ar_transformer": "ArTransformer.mlpackage",
            "diffusion_head": "DiffusionHead.mlpackage", "vae_decoder": "VaeDecoder.mlpackage"}

def kv_states(hart: Hart) -> list[dict]:
    """KV buffers as Core ML states (fp16 only in Core ML), in buffer order."""
    out = []
    for fqn, buf in hart.named_buffers():
        if fqn.endswith(("attn.k_cache", "attn.v_cache")):
            full = f"hart.{fqn}"
            out.append({"name": state_name(full), "buffer": full, "shape": list(buf.shape), "dtype": "float16"})
    return out


def method_entry(spec: MethodSpec, states: list[dict]) -> dict:
    """Contract I/O (shared schema) plus the Core ML view: package, function, feature names and dtypes."""
    multi = spec.component == "ar_transformer"
    pkg = PACKAGES[spec.component]
    ins = [{"name": t.name, "coreml_name": t.name, "shape": list(t.shape), "coreml_dtype": coreml_dtype(t.dtype)}
           for t in spec.inputs]
    outs = [{"name": t.name, "coreml_name": n, "shape": list(t.shape), "coreml_dtype": coreml_dtype(t.dtype)}
            for t, n in zip(spec.outputs, output_features(spec))]
    return fmt.method_entry(spec, f"{pkg}/Manifest.json", package=pkg, function=spec.name if multi else "main",
                            coreml_inputs=ins, coreml_outputs=outs, states=states if multi else [])


def versions() -> dict:
    import coremltools

    return {"torch": torch.__version__, "coremltools": coremltools.__version__, "python": platform.python_version()}


def build_manifest(hart: Hart, specs: list[MethodSpec], quant: str, block_size: int,
                   recipes: dict[str, QuantRecipe], compute_units: str, source: dict, schedule: str | None,
                   components: dict[str, dict], cfg: float) -> dict:
    """Everything but the file table (export.bundle.write_manifest adds it last)."""
    states = kv_states(hart)
    ar = [s.name for s in specs if s.component == "ar_transformer"]
    return {
        "format": fmt.FORMAT, "schema_version": fmt.SCHEMA_VERSION, "min_runtime_version": fmt.MIN_RUNTIME_VERSION,
        "backend": "coreml",
        "coreml": {
            "deployment_target": DEPLOYMENT_TARGET, "spec_version": SPEC_VERSION, "opset": OPSET,
            "compute_units": compute_units,
            "compute_precision": {"default": "float16", "float32_ops": sorted(FP32_SINKS),
                                  "float32_feeders": sorted(FP32_CHEAP),
                                  "why": "Gumbel -log(-log u) and RoPE angles lose too much in fp16"},
            "int_io": "Core ML has no int64 arrays: token_ids and idx are int32 at the package boundary",
            "kv_cache": {"states": [s["name"] for s in states], "dtype": "float16", "init": "zeros",
                         "functions": ar, "rule": "one state (model.makeState()) shared by every scale_* function "
                                                  "of ArTransformer; make a new one per image"},
        },
        "model": {"name": hart.cfg.name, "source": source, "image_size": hart.cfg.image_size, "batch": hart.B},
        "call_order": [s.name for s in specs],
        "methods": [method_entry(s, states) for s in specs],
        "components": {c: {**components[c], "compute_units": compute_units} for c in PACKAGES},
        "schedule": fmt.schedule_info(hart, schedule),
        "sampler": fmt.sampler_info(hart),
        "rng": fmt.rng_info(specs),
        "tokenizer": fmt.tokenizer_info(hart, "tokenizer.json"),
        "quantization": {"name": quant, "block_size": block_size,
                         "components": {c: r.to_json() for c, r in recipes.items()}},
        "memory": {"mode": {"kv_cache": "fp16", "attn_chunk": hart.cfg.attn_chunk, "full_precision": False,
                            "reference_mode": {"kv_cache": "fp32", "attn_chunk": hart.cfg.attn_chunk},
                            "why": "Core ML states are fp16 only; golden/ and parity use the fp32-cache eager model"}},
        "parity": parity_section("coreml", quant, hart, recipes["ar_transformer"].plan, recipes["text_encoder"].dtype),
        "golden": {"index": "golden/index.json", "prompt": fmt.GOLDEN_PROMPT, "seed": fmt.GOLDEN_SEED, "cfg": cfg},
        "versions": versions(),
    }
