"""Per-component quantization recipes for the phone bundles (torchao 8da4w / 8da8w, fp16, fp32).

A recipe never touches the caller's model: `apply_recipe` deep-copies it, then quantizes each
component's submodule in place on the copy. The components own disjoint submodules (text encoder:
`text`; AR transformer: `ar` minus `ar.diffloss`; diffusion head: `ar.diffloss`; VAE decoder:
`vae.decoder` + `vae.post_quant_conv`; the codebook and Phi convs stay fp32 because the AR steps use
them), so one copy serves every component of a bundle.

Only the dynamic-activation configs are used: torchao weight-only configs lower without error in
ExecuTorch 1.5.1 + XNNPACK but compute output x 1/scale (toolchain notes section 3).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from model.hart import Hart

RECIPES = ("fp32", "8da8w", "8da4w")
COMPONENTS = ("text_encoder", "ar_transformer", "diffusion_head", "vae_decoder")
# AR Linear layers kept in fp32 on purpose (relative to hart.ar): the tiny level-embedding MLP runs
# on a constant input, and the diffusion head is its own component.
AR_KEEP_PREFIXES = ("lvl_embed.", "diffloss.")


@dataclass(frozen=True)
class ComponentRecipe:
    """What one component of a bundle contains; `quantized` lists every Linear that was converted."""

    component: str
    scheme: str  # fp32 | fp16 | 8da8w | 8da4w
    group_size: int | None = None  # per-group int4 only
    quantized: tuple[str, ...] = ()  # Linear FQNs (relative to the Hart) converted by torchao
    kept_float: tuple[str, ...] = ()  # Linear FQNs deliberately left in float, with `why`
    why: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["quantized"], d["kept_float"] = list(self.quantized), list(self.kept_float)
        return d


@dataclass
class Recipe:
    name: str
    group_size: int
    components: dict[str, ComponentRecipe] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "group_size": self.group_size,
                "components": {k: v.to_json() for k, v in self.components.items()}}


def torchao_config(scheme: str, group_size: int = 32):
    """8da4w: int8 dynamic activations, int4 weights per group; 8da8w: int8 weights per output channel."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    if scheme == "8da8w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    raise ValueError(f"unknown integer scheme {scheme!r} (8da4w or 8da8w)")


def component_schemes(recipe: str, vae_dtype: str) -> dict[str, str]:
    """Scheme per component. fp32 is the exact reference bundle; the quantized recipes also move the
    diffusion head (and the VAE decoder when `vae_dtype` is fp16) to fp16."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if recipe == "fp32":
        return dict.fromkeys(COMPONENTS, "fp32")
    return {"text_encoder": "8da8w", "ar_transformer": recipe, "diffusion_head": "fp16", "vae_decoder": vae_dtype}


def _quantize_linears(root: nn.Module, prefix: str, scheme: str, group_size: int,
                      keep: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """quantize_ every eligible Linear under `root`; returns (quantized, kept float) FQNs."""
    from torchao.quantization import quantize_

    done: list[str] = []
    kept: list[str] = []

    def eligible(mod: nn.Module, fqn: str) -> bool:
        if not isinstance(mod, nn.Linear):
            return False
        per_group = scheme == "8da4w"
        if fqn.startswith(keep) or (per_group and mod.in_features % group_size):
            kept.append(prefix + fqn)
            return False
        done.append(prefix + fqn)
        return True

    quantize_(root, torchao_config(scheme, group_size), filter_fn=eligible)
    return tuple(done), tuple(kept)


def apply_recipe(hart: Hart, recipe: str, group_size: int = 32, vae_dtype: str = "fp32") -> tuple[Hart, Recipe]:
    """A quantized deep copy of `hart` and the record of what was done to each component."""
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group size must be a positive even number, got {group_size}")
    if vae_dtype not in ("fp16", "fp32"):
        raise ValueError(f"vae_dtype must be fp16 or fp32, got {vae_dtype!r}")
    q = copy.deepcopy(hart).eval().requires_grad_(False)
    out = Recipe(recipe, group_size)
    for comp, scheme in component_schemes(recipe, vae_dtype).items():
        out.components[comp] = _apply_component(q, comp, scheme, group_size)
    return q, out


def _apply_component(q: Hart, comp: str, scheme: str, group_size: int) -> ComponentRecipe:
    gs = group_size if scheme == "8da4w" else None
    if scheme == "fp32":
        return ComponentRecipe(comp, "fp32", why="reference precision")
    if comp == "text_encoder":
        if q.text is None:
            raise ValueError("the model has no text encoder to quantize")
        done, kept = _quantize_linears(q.text, "text.", scheme, group_size, ())
        return ComponentRecipe(comp, scheme, gs, done, kept,
                               "Linear layers quantized; token embedding and the precomputed system-prompt K/V "
                               "(from fp32 weights) stay fp32")
    if comp == "ar_transformer":
        done, kept = _quantize_linears(q.ar, "ar.", scheme, group_size, AR_KEEP_PREFIXES)
        return ComponentRecipe(comp, scheme, gs, done, kept,
                               "level-embedding MLP (constant input) and layers whose in_features is not a "
                               "multiple of the group size stay fp32; codebook and Phi convs stay fp32")
    if comp == "diffusion_head":
        q.ar.diffloss.half()
        return ComponentRecipe(comp, "fp16", why="weights fp16; LayerNorm statistics, the CFG mix and the sampler "
                                                  "update run in fp32 (model/diffusion.py); method I/O stays fp32")
    if comp == "vae_decoder":
        q.vae.decoder.half()
        q.vae.post_quant_conv.half()
        return ComponentRecipe(comp, "fp16", why="decoder + post_quant_conv in fp16 (fp16 compute on ARM; ExecuTorch "
                                                  "1.5.1 XNNPACK still stores conv weights as fp32, so the file does "
                                                  "not shrink); method I/O stays fp32")
    raise ValueError(f"unknown component {comp!r}")
