"""Conventions of the Core ML packages that the exporter writes and the Linux checks read: which
weights get quantized, how MIL const names map back to torch parameters, which ops stay fp32.

Both sides import them from here, so the checker verifies exactly the policy the exporter applied.
"""

from __future__ import annotations

import re

import torch

WEIGHT_THRESHOLD = 2048  # coremltools default: smaller tensors stay fp16
CONST_NAME = re.compile(r"^[pbc]_(?P<base>.+?)(?:_to_fp16)?(?:_quantized)?$")
# Ops whose fp16 rounding is catastrophic for this model (export/coreml/graph.py docstring).
FP32_SINKS = frozenset({"log", "sin", "cos"})
# Cheap elementwise/layout ops allowed inside an fp32 island (never linear/matmul/conv/softmax).
FP32_CHEAP = frozenset({
    "add", "sub", "mul", "real_div", "concat", "slice_by_index", "expand_dims", "squeeze", "reshape",
    "cumsum", "fill_like", "stack", "tile", "transpose", "gather", "select", "pad", "clip", "cast",
})



def param_index(hart: torch.nn.Module) -> dict[str, str]:
    """Sanitized name ('hart_ar_head_weight') -> Stage-level FQN ('hart.ar.head.weight'), params + buffers.

    Keys are lower case: torch.export placeholder names (and so the MIL const names) are lower-cased.
    """
    names = [n for n, _ in hart.named_parameters()] + [n for n, _ in hart.named_buffers()]
    return {f"hart.{n}".replace(".", "_").lower(): f"hart.{n}" for n in names}


def const_to_param(const_name: str, index: dict[str, str]) -> str | None:
    """Map a MIL const / constexpr output name back to the torch FQN it was converted from (None: derived)."""
    m = CONST_NAME.match(const_name)
    return index.get(m.group("base").lower()) if m else None


def _children(op) -> list:
    return [c for v in op.outputs for c in v.child_ops]


def keep_fp32(op, _memo: dict | None = None) -> bool:
    """True if `op` is a sink (log/sin/cos) or a cheap op whose result flows (through cheap ops) into one."""
    if op.op_type in FP32_SINKS:
        return True
    if op.op_type not in FP32_CHEAP:
        return False
    memo = {} if _memo is None else _memo
    key = id(op)
    if key not in memo:
        memo[key] = False  # cycle guard (graphs are DAGs, but stay safe)
        memo[key] = any(keep_fp32(c, memo) for c in _children(op))
    return memo[key]


def fp16_selector(op) -> bool:
    """`FP16ComputePrecision(op_selector=...)`: True = compute in fp16."""
    return not keep_fp32(op)
