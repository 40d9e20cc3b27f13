"""Stage -> Core ML conversion: one mlprogram per method, weights quantized per function, AR merged.

Naming (shared with the manifest and the structure check): inputs keep their contract names; an
output whose name is also an input of the same function (`x`, `f_hat` in the middle scales) gets the
suffix `_out`, because a Core ML function cannot have an input and an output with the same name.
States are the KV buffers with dots replaced by underscores (`hart_ar_blocks_0_attn_k_cache`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from export.coreml.graph import export_stage
from model.stages import MethodSpec, example_inputs
from runtime_py.coreml.conventions import CONST_NAME, WEIGHT_THRESHOLD, const_to_param, fp16_selector

QUANT_CHOICES = ("int4", "int8", "fp16")
AUTO_DEFAULT = "int8"  # auto recipe: AR parameters outside the per-layer plan (embeddings, codebook)
COMPUTE_UNITS = ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only")
OUT_SUFFIX = "_out"


@dataclass(frozen=True)
class QuantRecipe:
    """How one package stores its weights."""

    dtype: str  # int4 | int8 | fp16 | auto (per layer, from `plan`)
    block_size: int = 32
    plan: dict | None = None  # auto: quantization.auto.Plan.to_json() searched for coreml

    @property
    def granularity(self) -> str | None:
        return {"int4": "per_block", "int8": "per_channel"}.get(self.dtype)

    def layer_dtypes(self) -> dict[str, str]:
        """auto: {sanitized torch parameter name ('hart_ar_head_weight'): int4 | int8 | fp16}."""
        layers = (self.plan or {}).get("layers", {})
        return {f"hart.ar.{n}.weight".replace(".", "_").lower(): s for n, s in layers.items()}

    def to_json(self) -> dict:
        if self.dtype == "fp16":
            return {"dtype": "fp16"}
        if self.dtype == "auto":
            return {"dtype": "auto", "mode": "linear_symmetric", "block_size": self.block_size,
                    "weight_threshold": WEIGHT_THRESHOLD, "default": AUTO_DEFAULT,
                    "layers": {f"ar.{n}": s for n, s in sorted(self.plan["layers"].items())},
                    "auto": {k: v for k, v in self.plan.items() if k != "layers"},
                    "scope": "per-layer plan (op_name_configs); other torch parameters above the threshold "
                             f"{AUTO_DEFAULT}"}
        d = {"dtype": self.dtype, "mode": "linear_symmetric", "granularity": self.granularity,
             "weight_threshold": WEIGHT_THRESHOLD, "scope": "torch parameters (p_* consts) above the threshold"}
        if self.dtype == "int4":
            d["block_size"] = self.block_size
        return d


def output_features(spec: MethodSpec) -> list[str]:
    ins = {t.name for t in spec.inputs}
    return [t.name + OUT_SUFFIX if t.name in ins else t.name for t in spec.outputs]


def coreml_dtype(contract_dtype: str) -> str:
    """Core ML I/O dtype for a contract dtype: int64 -> int32 (no int64 multi-arrays), floats as-is."""
    return "int32" if contract_dtype == "int64" else contract_dtype


def state_name(buffer_fqn: str) -> str:
    return buffer_fqn.replace(".", "_")


@contextlib.contextmanager
def quiet_coremltools():
    """Silence coremltools' nested progress bars and expected warnings (our own bar reports progress).

    Expected: the text mask's fp32 minimum becomes -inf in fp16 ("overflow encountered in cast"), and
    KV buffers are renamed to Core ML state names ("has been renamed").
    """
    import coremltools.converters.mil.frontend.torch.ops as ops_mod
    import coremltools.converters.mil.mil.passes.pass_pipeline as pipe_mod
    import coremltools.optimize._utils as opt_utils
    import coremltools.optimize.coreml._post_training_quantization as ptq_mod
    import coremltools.optimize.coreml._quantization_passes as qp_mod

    patches = [(ops_mod, "_tqdm"), (pipe_mod, "tqdm"), (ptq_mod, "tqdm"), (qp_mod, "tqdm")]
    saved = [getattr(m, a) for m, a in patches]
    # "not divisible by block size" (a weight left in fp16) goes to the root logger from optimize._utils
    logs = [logging.getLogger("coremltools"), opt_utils._logger]
    levels = [lg.level for lg in logs]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning)
            warnings.filterwarnings("ignore", message=".*has been renamed to", category=UserWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            for m, a in patches:
                setattr(m, a, functools.partial(tqdm, disable=True))
            for lg in logs:
                lg.setLevel(logging.ERROR)
            yield
    finally:
        for (m, a), v in zip(patches, saved):
            setattr(m, a, v)
        for lg, lv in zip(logs, levels):
            lg.setLevel(lv)


def convert_method(hart: torch.nn.Module, spec: MethodSpec):
    """One method -> MLModel (iOS18 mlprogram, fp16 compute with fp32 islands, KV buffers as fp16 states)."""
    import coremltools as ct

    ep = export_stage(hart, spec, example_inputs(spec))
    np_dtype = {"int32": np.int32, "float32": np.float32, "float16": np.float16}
    inputs = [ct.TensorType(name=t.name, shape=t.shape, dtype=np_dtype[coreml_dtype(t.dtype)]) for t in spec.inputs]
    outputs = [ct.TensorType(name=n, dtype=np_dtype[coreml_dtype(t.dtype)])
               for n, t in zip(output_features(spec), spec.outputs)]
    return ct.convert(
        ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, inputs=inputs, outputs=outputs,
        compute_precision=ct.transform.FP16ComputePrecision(op_selector=fp16_selector), skip_model_load=True,
    )


def quantize(mlmodel, recipe: QuantRecipe, index: dict[str, str]):
    """Weight-only linear quantization of the consts that ARE torch parameters (torch.export's p_<fqn>);
    derived consts (folded products, transposes) and buffers (RoPE tables, prefix K/V) stay fp16.

    Must run per function, before merging: coremltools refuses multifunction models.
    """
    if recipe.dtype == "fp16":
        return mlmodel
    import coremltools.optimize.coreml as cto

    def op_cfg(dtype: str):
        if dtype == "fp16":
            return None
        return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=dtype,
                                           granularity=QuantRecipe(dtype).granularity,
                                           block_size=recipe.block_size, weight_threshold=WEIGHT_THRESHOLD)

    consts = [op.outputs[0].name for f in mlmodel._mil_program.functions.values()
              for op in f.find_ops(op_type="const")]
    per_op = {n: None for n in consts if not n.startswith("p_") or const_to_param(n, index) is None}
    if recipe.dtype == "auto":  # the plan's layers by op name; the rest of the parameters: AUTO_DEFAULT
        layers = recipe.layer_dtypes()
        for n in consts:
            m = CONST_NAME.match(n)
            if n not in per_op and m and m.group("base").lower() in layers:
                per_op[n] = op_cfg(layers[m.group("base").lower()])
    default = op_cfg(AUTO_DEFAULT if recipe.dtype == "auto" else recipe.dtype)
    cfg = cto.OptimizationConfig(global_config=default, op_name_configs=per_op)
    return cto.linear_quantize_weights(mlmodel, config=cfg)


def merge_functions(parts: list[tuple[str, Path]], out: Path) -> None:
    """Single-function packages -> one multifunction package; identical weights are stored once."""
    import coremltools as ct

    desc = ct.utils.MultiFunctionDescriptor()
    for name, path in parts:
        desc.add_function(str(path), src_function_name="main", target_function_name=name)
    desc.default_function_name = parts[0][0]
    ct.utils.save_multifunction(desc, str(out))
