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

from model.errors import UserError
from model.hart import Hart

RECIPES = ("fp32", "8da8w", "8da4w", "auto")  # auto: per-layer AR plan from quantization/auto.py
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
    layers: dict[str, str] = field(default_factory=dict)  # auto only: Linear FQN -> 8da4w | 8da8w | fp32

    def to_json(self) -> dict:
        d = asdict(self)
        d["quantized"], d["kept_float"] = list(self.quantized), list(self.kept_float)
        if not self.layers:
            d.pop("layers")
        return d


@dataclass
class Recipe:
    name: str
    group_size: int
    components: dict[str, ComponentRecipe] = field(default_factory=dict)
    plan: dict | None = None  # auto only: quantization.auto.Plan.to_json() (budget, measurements)

    def to_json(self) -> dict:
        d = {"name": self.name, "group_size": self.group_size,
             "components": {k: v.to_json() for k, v in self.components.items()}}
        if self.plan is not None:
            d["auto"] = {k: v for k, v in self.plan.items() if k != "layers"}
        return d


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


def check_group_size(hart: Hart, group_size: int) -> None:
    """Per-group int4 quantizes a Linear only if the group size divides its in_features; a group size that
    misses the transformer blocks' widths (attention and MLP) would silently ship a mostly-fp32 "8da4w"
    bundle, so it is refused. Small side layers (e.g. a 16-wide word_embed) may still stay fp32, as listed."""
    widths = sorted({m.in_features for n, m in hart.ar.named_modules()
                     if isinstance(m, nn.Linear) and n.startswith("blocks.")})
    misfit = [w for w in widths if w % group_size]
    if misfit:
        fits = [g for g in (16, 32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        raise UserError(f"--group-size {group_size} does not divide the transformer block widths {misfit} "
                        f"(int4 groups would leave those layers fp32)", f"use one of {fits}" if fits else "use 32")


def check_plan(hart: Hart, plan: dict, group_size: int) -> dict[str, str]:
    """The plan's {layer: scheme}, after checking it fits this model and these exporter settings."""
    layers = plan.get("layers") or {}
    if plan.get("backend") != "executorch":
        raise ValueError(f"the auto plan was searched for {plan.get('backend')!r}, not executorch; re-run the search")
    if plan.get("group_size") != group_size:
        raise ValueError(f"the auto plan used group size {plan.get('group_size')}, the export {group_size}")
    bad = sorted(s for s in set(layers.values()) if s not in ("8da4w", "8da8w", "fp32"))
    missing = [n for n in layers if not isinstance(_get(hart.ar, n), nn.Linear)]
    if not layers or bad or missing:
        raise ValueError(f"the auto plan does not fit this model (schemes {bad}, unknown layers {missing[:3]}); "
                         "re-run the search on this checkpoint")
    return layers


def _get(root: nn.Module, fqn: str) -> nn.Module | None:
    try:
        return root.get_submodule(fqn)
    except AttributeError:
        return None


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


def apply_recipe(hart: Hart, recipe: str, group_size: int = 32, vae_dtype: str = "fp32",
                 plan: dict | None = None) -> tuple[Hart, Recipe]:
    """A quantized deep copy of `hart` and the record of what was done to each component
    (`plan`: quantization.auto.Plan.to_json(), required by the auto recipe)."""
    if group_size <= 0 or group_size % 2:
        raise ValueError(f"group size must be a positive even number, got {group_size}")
    if vae_dtype not in ("fp16", "fp32"):
        raise ValueError(f"vae_dtype must be fp16 or fp32, got {vae_dtype!r}")
    if (recipe == "auto") != (plan is not None):
        raise ValueError("the auto recipe needs a plan (quantization.auto), and only it takes one")
    layers = check_plan(hart, plan, group_size) if plan is not None else {}
    if recipe == "8da4w" or "8da4w" in layers.values():
        check_group_size(hart, group_size)
    q = copy.deepcopy(hart).eval().requires_grad_(False)
    out = Recipe(recipe, group_size, plan=plan)
    for comp, scheme in component_schemes(recipe, vae_dtype).items():
        out.components[comp] = (_apply_plan(q, layers, group_size) if scheme == "auto"
                                else _apply_component(q, comp, scheme, group_size))
    return q, out


def _apply_plan(q: Hart, layers: dict[str, str], group_size: int) -> ComponentRecipe:
    """AR transformer per layer: one torchao quantize_ per scheme, each with a filter function."""
    from torchao.quantization import quantize_

    done = []
    for scheme in ("8da4w", "8da8w"):
        wanted = {n for n, s in layers.items() if s == scheme}
        if wanted:
            quantize_(q.ar, torchao_config(scheme, group_size), filter_fn=lambda m, fqn, w=wanted: fqn in w)
            done += sorted(wanted)
    kept = [n for n, m in q.ar.named_modules() if isinstance(m, nn.Linear) and n not in done
            and not n.startswith("diffloss")]
    counts = {s: sum(v == s for v in layers.values()) for s in ("8da4w", "8da8w", "fp32")}
    return ComponentRecipe("ar_transformer", "auto", group_size, tuple("ar." + n for n in done),
                           tuple("ar." + n for n in kept),
                           f"per-layer plan from quantization.auto ({counts}); layers outside the plan stay fp32",
                           {"ar." + n: s for n, s in sorted(layers.items())})


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
