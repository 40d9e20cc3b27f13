"""Stateless views of the stage methods, the reference for stateless backends (ONNX): the KV cache
becomes an explicit input and output.

ONNX graphs have no state, and `torch.onnx.export(dynamo=True)` silently drops in-place buffer writes
(the cache would become a constant). So each AR step is wrapped functionally: the stacked cache comes
in as a tensor, `torch.func.functional_call` runs the step on per-layer views of it, and the updated
cache goes out. The last step writes its slice but no later step reads it, so it does not return it.
In the int8 memory mode the cache holds int8 codes and a second state tensor `kv_scale` carries the fp32
per-token scales (same layout, head_dim 1); both flow like `kv_cache`.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from model.hart import Hart
from model.stages import MethodSpec, Stage, TensorSpec, example_inputs, method_specs, torch_dtype

KV_NAME = "kv_cache"
KV_SCALE_NAME = "kv_scale"
KV_LAYOUT = "[layers, 2 (k, v), 2B (cond rows, then uncond), heads, kv_tokens, head_dim]"
KV_SCALE_LAYOUT = "[layers, 2 (k, v), 2B, heads, kv_tokens, 1]: value = int8 code * scale"
STATE_NAMES = (KV_NAME, KV_SCALE_NAME)
# Inputs a half-precision graph casts to fp16 on entry (the model casts everything else itself).
HALF_INPUTS = {"diffusion_head": ("z",)}


def kv_shape(hart: Hart) -> tuple[int, ...]:
    k = hart.ar.blocks[0].attn.k_cache
    return (len(hart.ar.blocks), 2, *k.shape)


def kv_dtype(hart: Hart) -> str:
    return str(hart.ar.blocks[0].attn.k_cache.dtype).removeprefix("torch.")


def _kv_fqns(hart: Hart, kind: str = "cache") -> list[tuple[str, str]]:
    """Buffer names of the cache (or its int8 scales) as seen from a Stage (prefix `hart.`)."""
    return [(f"hart.ar.blocks.{i}.attn.k_{kind}", f"hart.ar.blocks.{i}.attn.v_{kind}")
            for i in range(len(hart.ar.blocks))]


def explicit_kv_specs(hart: Hart) -> list[MethodSpec]:
    """The export contract plus the explicit cache: every AR step takes `kv_cache` (zeros from the host
    at the first step, else the previous step's output) and every AR step but the last returns it."""
    first = [TensorSpec(KV_NAME, kv_shape(hart), kv_dtype(hart), source="zeros")]
    if kv_dtype(hart) == "int8":
        first.append(TensorSpec(KV_SCALE_NAME, (*kv_shape(hart)[:-1], 1), "float32", source="zeros"))
    state = tuple(replace(t, source="env") for t in first)
    last = f"scale_{hart.num_scales - 1:02d}"
    out = []
    for m in method_specs(hart):
        if m.component == "ar_transformer":
            ins = m.inputs + (tuple(first) if m.name == "scale_00" else state)
            outs = m.outputs + (() if m.name == last else state)
            m = replace(m, inputs=ins, outputs=outs)
        out.append(m)
    return out


class KVStep(nn.Module):
    """One AR scale step, pure: (step inputs…, kv_cache[, kv_scale]) -> (step outputs…, kv_cache'[, kv_scale'])."""

    def __init__(self, hart: Hart, name: str, emit_cache: bool = True):
        super().__init__()
        self.stage = Stage(hart, name)
        self.fqns = [_kv_fqns(hart)] + ([_kv_fqns(hart, "scale")] if kv_dtype(hart) == "int8" else [])
        self.emit_cache = emit_cache

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.fqns)
        ins, states = args[:-n], args[-n:]
        bufs = {}
        for fqns, state in zip(self.fqns, states):
            for i, (k, v) in enumerate(fqns):
                bufs[k], bufs[v] = state[i, 0].clone(), state[i, 1].clone()  # written in place by the step
        outs = torch.func.functional_call(self.stage, bufs, tuple(ins), strict=False, tie_weights=False)
        if not self.emit_cache:
            return tuple(outs)
        return (*outs, *(torch.stack([torch.stack([bufs[k], bufs[v]]) for k, v in fqns]) for fqns in self.fqns))


class HalfStage(nn.Module):
    """A stage of an fp16 copy of the model with the fp32 interface of the contract."""

    def __init__(self, hart_half: Hart, name: str):
        super().__init__()
        self.stage = Stage(hart_half, name)
        self.cast = HALF_INPUTS.get(name, ())
        self.names = [t.name for t in next(m for m in method_specs(hart_half) if m.name == name).inputs]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args = tuple(a.half() if n in self.cast else a for n, a in zip(self.names, args))
        return tuple(o.float() if o.is_floating_point() else o for o in self.stage(*args))


def half_copy(hart: Hart) -> Hart:
    """fp16 copy for the diffusion head and VAE decoder (norm statistics stay fp32 inside the model)."""
    return copy.deepcopy(hart).half().eval().requires_grad_(False)


def graph_module(hart: Hart, spec: MethodSpec, hart_half: Hart | None = None) -> nn.Module:
    """The nn.Module exported for one method (KVStep for AR steps, HalfStage when given an fp16 copy)."""
    if spec.component == "ar_transformer":
        return KVStep(hart, spec.name, emit_cache=any(t.name == KV_NAME for t in spec.outputs)).eval()
    if hart_half is not None:
        return HalfStage(hart_half, spec.name).eval()
    return Stage(hart, spec.name).eval()


def graph_inputs(spec: MethodSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Traceable example inputs; the cache is random (not zeros) so nothing folds it away."""
    base = replace(spec, inputs=tuple(t for t in spec.inputs if t.name not in STATE_NAMES))
    ex = example_inputs(base, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for t in spec.inputs[len(base.inputs):]:
        if t.dtype == "int8":
            ex = ex + (torch.randint(-127, 128, t.shape, generator=gen, dtype=torch.int8),)
        elif t.name == KV_SCALE_NAME:
            ex = ex + (torch.rand(t.shape, generator=gen) / 127 + 1e-4,)
        else:
            ex = ex + (torch.randn(t.shape, generator=gen).to(torch_dtype(t.dtype)),)
    return ex


class FunctionalEagerBackend:
    """Eager oracle for the ONNX contract: the very modules that get exported, run in PyTorch
    (the cache flows as a tensor, exactly as between the ONNX graphs)."""

    name = "eager-functional"

    def __init__(self, hart: Hart):
        self.modules = {s.name: graph_module(hart, s) for s in explicit_kv_specs(hart)}

    def run(self, method: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.modules[method](*inputs))
