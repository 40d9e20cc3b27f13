"""Read an .mlpackage on any OS: spec, pymil program, and every stored weight (dequantized to fp32).

Core ML cannot run on Linux, but the package is plain protobuf + a weight blob, so the checks that
matter (I/O contract, op set, how weights are stored, what the weights are) need no Apple runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

QUANT_OPS = ("constexpr_blockwise_shift_scale",)


@dataclass
class StoredWeight:
    """One weight as stored in the package (deduplicated by name across functions)."""

    name: str  # MIL var name, e.g. p_hart_ar_head_weight_to_fp16_quantized
    storage: str  # int4 | int8 | uint4 | uint8 | fp16 | fp32
    shape: tuple[int, ...]
    stored_bits: int  # data + scales + offsets
    functions: tuple[str, ...]
    value: torch.Tensor  # dequantized, fp32
    scale: torch.Tensor | None = None  # per-block scales (quantized weights), fp32, compact

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def quantized(self) -> bool:
        return self.scale is not None


@cache
def _ct():
    import coremltools as ct

    return ct


def load_spec(path: Path):
    return _ct().utils.load_spec(str(path))


def load_program(path: Path):
    """(spec, pymil Program with all functions) without compiling the model."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = load_spec(path)
    weights_dir = Path(path) / "Data" / "com.apple.CoreML" / "weights"
    prog = milproto_load(spec, spec.specificationVersion, file_weights_dir=str(weights_dir))
    return spec, prog


def dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def expand_blocks(t: np.ndarray | torch.Tensor, shape: tuple[int, ...]):
    """Broadcast a per-block tensor to the full shape (block size = dim / block-tensor dim on each axis)."""
    out = t
    for ax, (n, s) in enumerate(zip(shape, t.shape)):
        if s != n:
            out = out.repeat_interleave(n // s, dim=ax) if isinstance(out, torch.Tensor) else np.repeat(out, n // s, ax)
    return out


def dequantize(op) -> StoredWeight:
    """constexpr_blockwise_shift_scale -> fp32 weight (data - offset) * scale, with its storage cost."""
    data = op.data.val.astype(np.float32)
    scale = op.scale.val.astype(np.float32)
    w = data
    bits = data.size * int(re.sub(r"\D", "", dtype_name(op.data)))
    if op.offset is not None:
        w = w - expand_blocks(op.offset.val.astype(np.float32), data.shape)
        bits += op.offset.val.size * op.offset.val.itemsize * 8
    bits += op.scale.val.size * op.scale.val.itemsize * 8
    w = w * expand_blocks(scale, data.shape)
    return StoredWeight(op.outputs[0].name, dtype_name(op.data), w.shape, bits, (), torch.from_numpy(w),
                        torch.from_numpy(scale))


def _read(op) -> StoredWeight | None:
    """A weight-like op as StoredWeight, None for anything else."""
    if op.op_type in QUANT_OPS:
        return dequantize(op)
    if op.op_type != "const":
        return None
    v = op.outputs[0]
    if not isinstance(v.val, np.ndarray) or v.val.dtype not in (np.float16, np.float32) or v.val.size < 2:
        return None
    if v.child_ops and all(c.op_type in QUANT_OPS for c in v.child_ops):
        return None  # codes/scales of a constexpr op: reported through that op
    storage = "fp16" if v.val.dtype == np.float16 else "fp32"
    return StoredWeight(v.name, storage, v.val.shape, v.val.size * v.val.itemsize * 8, (),
                        torch.from_numpy(v.val.astype(np.float32)))


def stored_weights(path: Path, prog=None) -> dict[str, StoredWeight]:
    """Every float/quantized weight in the package, keyed by MIL name.

    Functions of a multifunction package share a weight when name and value agree (that is what the
    merge deduplicates); a name reused with a different value is keyed "function/name".
    """
    if prog is None:
        _, prog = load_program(path)
    out: dict[str, StoredWeight] = {}
    for fname, fn in prog.functions.items():
        for op in fn.operations:
            w = _read(op)
            if w is None:
                continue
            key = w.name
            if key in out and not torch.equal(out[key].value, w.value):
                key = f"{fname}/{key}"
            rec = out.setdefault(key, w)
            rec.functions = tuple(sorted({*rec.functions, fname}))
    return out


def package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
