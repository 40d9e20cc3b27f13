"""Torch-side fixes that make the stage graphs convertible to Core ML, and the fp32-island policy.

Everything here edits the torch graph or wraps the stage module; the MIL program is never edited by
hand. Findings (coremltools 9.0, torch 2.13, iOS18 target):

- int64 I/O: Core ML multi-arrays have no int64. `CoreMLStage` takes int32 `token_ids` and returns
  int32 `idx`; the casts to/from int64 live inside the torch graph, so the device sees int32 only.
- `aten.alias` (the last scale reads the whole KV cache, `k_cache[:, :, :kv_end]` with kv_end = len)
  has no converter: `drop_aliases` replaces it by its input (alias is the identity on values).
- `aten.__and__` on bool masks (text encoder) has no converter: `bool_and_to_logical_and`.
- topk, amin, argmax, cumsum, log, where and the top-p sort convert natively (`topk`, `reduce_min`,
  `reduce_argmax`, `cumsum`, `log`, `select`), so no rewrite is needed for them.
- Precision: with fp16 compute, `-log(-log(u))` of a uniform input rounds u > 1 - 2^-12 to 1 and
  gives +inf Gumbel noise (about one in five rows of V = 1024 has such an entry), and RoPE angles
  (position x frequency, up to ~300 rad) get 0.25 rad resolution. `keep_fp32` keeps the cheap
  elementwise ops that feed `log`/`sin`/`cos`, and those ops, in fp32; everything else is fp16.
"""

from __future__ import annotations

import torch
from torch import nn

from model.stages import MethodSpec, Stage


class CoreMLStage(Stage):
    """A `Stage` with int32 instead of int64 at the boundary (Core ML has no int64 tensors)."""

    def __init__(self, hart, spec: MethodSpec):
        super().__init__(hart, spec.name)
        self.int_in = [t.dtype == "int64" for t in spec.inputs]

    def forward(self, *args: torch.Tensor):
        args = tuple(a.long() if is_int else a for a, is_int in zip(args, self.int_in))
        outs = super().forward(*args)
        return tuple(o.int() if o.dtype == torch.int64 else o for o in outs)


def drop_aliases(gm: torch.fx.GraphModule) -> int:
    """Replace `aten.alias(x)` by `x`; returns how many were removed."""
    n = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            n += 1
    return n


def bool_and_to_logical_and(gm: torch.fx.GraphModule) -> int:
    """`aten.__and__.Tensor` on bool tensors is `aten.logical_and`; returns how many were rewritten."""
    n = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.__and__.Tensor:
            node.target = torch.ops.aten.logical_and.default
            n += 1
    return n


def export_stage(hart: nn.Module, spec: MethodSpec, example: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export (strict) of the int32-boundary stage, decomposed to core aten, graph fixes applied."""
    ex = tuple(t.int() if t.dtype == torch.int64 else t for t in example)
    ep = torch.export.export(CoreMLStage(hart, spec), ex, strict=True).run_decompositions({})
    gm = ep.graph_module
    if drop_aliases(gm) + bool_and_to_logical_and(gm):
        gm.graph.lint()
        gm.recompile()
    return ep


