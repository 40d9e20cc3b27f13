"""python -m export.executorch: export HART to an ExecuTorch (XNNPACK) bundle.

Artifacts: text_encoder.pte, ar_transformer.pte (one method per scale; one copy of the weights and
one mutable KV cache shared by all methods), diffusion_head.pte, vae_decoder.pte, tokenizer.json,
golden/ and manifest.json (export/bundle.py). Nothing is left behind on failure.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from export import bundle as fmt
from model.build import with_patch_nums
from model.config import SCHEDULES
from model.hart import Hart
from model.memory import with_memory_mode
from model.stages import BODY, MethodSpec, Stage, example_inputs, is_split, method_specs, split_method_specs
from quantization.recipes import COMPONENTS, RECIPES, Recipe, apply_recipe
from quantization.recipes import check_group_size as check_group_fits
from runtime_py.cli import OneLineParser, add_checkpoint_args, check_group_size, cli_main, finite_float, load_model
from runtime_py.quiet import cpu_probe_quiet
from runtime_py.thresholds import parity_section

ARTIFACTS = {c: f"{c}.pte" for c in COMPONENTS}
BODY_FILE = f"{BODY}.pte"  # split AR layout: the transformer body (and the KV cache) in a program of its own
AR_LAYOUTS = ("scales", "split")
VAE_FP16_MIN_PSNR = 40.0  # the VAE decoder ships fp16 only if its image stays this close to fp32 eager


class BoundaryCast(nn.Module):
    """Method I/O stays float32 (the contract); inputs listed in `casts` enter at the component's
    dtype, float outputs leave as float32."""

    def __init__(self, stage: nn.Module, casts: dict[int, torch.dtype]):
        super().__init__()
        self.stage = stage
        self.casts = casts

    def forward(self, *args: torch.Tensor):
        args = tuple(a.to(self.casts[i]) if i in self.casts else a for i, a in enumerate(args))
        return tuple(o.float() if o.is_floating_point() else o for o in self.stage(*args))


def stage_module(hart: Hart, spec: MethodSpec, split: bool = False) -> nn.Module:
    stage = Stage(hart, spec.name, split)
    if spec.component == "diffusion_head":
        dtype = hart.ar.diffloss.net.cond_embed.weight.dtype
        return BoundaryCast(stage, {0: dtype}) if dtype != torch.float32 else stage
    return stage


def export_program(hart: Hart, specs: list[MethodSpec], split: bool = False) -> tuple[bytes, dict]:
    """Lower `specs` (one component) into one .pte; returns its bytes and facts for the manifest.

    Per-scale layout: the AR methods share one mutable KV cache. Split layout: `specs` is either the
    body alone (one method over every query length, bounded by the largest call, owning the cache) or
    the prefill and glue methods (no state), so no program shares state between methods."""
    from export.executorch.lowering import lower, prepare

    t0, c0 = time.perf_counter(), time.process_time()
    programs, weights = {}, {}
    body = split and specs[0].name.startswith(BODY)
    for s in [max(specs, key=lambda m: m.inputs[0].shape[1])] if body else specs:
        name = BODY if body else s.name
        module = stage_module(hart, replace(s, name=name), split)
        dims = None
        if body:  # x, cos, sin share the query length; cond and start_pos are fixed
            L = torch.export.Dim("query_len", min=1, max=s.inputs[0].shape[1])
            dims = (({1: L}, {1: L}, {1: L}, None, None),)  # Stage.forward(*args)
        ep = torch.export.export(module, _example(s, body), dynamic_shapes=dims, strict=False)
        weights.update(used_parameters(ep))
        programs[name] = prepare(ep)
    shared = specs[0].component == "ar_transformer" and not split
    et = lower(programs, shared_state=shared)
    plans = et.executorch_program.execution_plan
    arenas = {p.name: int(sum(p.non_const_buffer_sizes)) for p in plans}
    return et.buffer, {"params": sum(weights.values()), "weight_bytes": stored_weight_bytes(et.buffer),
                       "seconds": round(time.perf_counter() - t0, 1),
                       "cpu_seconds": round(time.process_time() - c0, 1), "planned_arena_bytes": arenas,
                       "shared_mutable_state": shared,
                       "mutable_state": mutable_state(et.buffer) if shared or body else {}}


def _example(spec: MethodSpec, body: bool) -> tuple[torch.Tensor, ...]:
    """Tracing inputs; the body's start position is a valid one for its length (0 at the prefill length)."""
    ex = example_inputs(spec)
    return (*ex[:-1], torch.zeros(1, dtype=torch.int64)) if body else ex


_ET_DTYPES = {"FLOAT": "float32", "HALF": "float16", "CHAR": "int8", "LONG": "int64"}


def mutable_state(pte: bytes) -> dict[str, dict]:
    """{buffer FQN: {dtype, shape}} of the named mutable buffers of a .pte (the shared KV state)."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.exir.scalar_type import ScalarType

    out = {}
    for plan in deserialize_pte_binary(pte).program.execution_plan:
        for v in plan.values:
            info = getattr(v.val, "extra_tensor_info", None)
            if info is not None and info.fully_qualified_name:
                dtype = ScalarType(v.val.scalar_type).name
                out[info.fully_qualified_name] = {"dtype": _ET_DTYPES.get(dtype, dtype.lower()),
                                                  "shape": list(v.val.sizes)}
    return dict(sorted(out.items()))


def stored_weight_bytes(pte: bytes) -> int:
    """Bytes of constant data in a .pte (delegate named data + portable constant buffers): the
    weights as stored, without the program and delegate graphs."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    f = deserialize_pte_binary(pte)
    named = sum(len(bytes(b)) for b in f.named_data.buffers) if f.named_data is not None else 0
    return named + sum(len(b.storage) for b in f.program.constant_buffer)


def used_parameters(ep) -> dict[str, int]:
    """{parameter FQN: logical element count} of the parameters the graph reads."""
    users = {n.name: len(n.users) for n in ep.graph.nodes if n.op == "placeholder"}
    return {s.target: ep.state_dict[s.target].numel() for s in ep.graph_signature.input_specs
            if s.kind.name == "PARAMETER" and users.get(s.arg.name)}


def run_method(data: bytes, name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    from executorch.runtime import Runtime

    with cpu_probe_quiet():
        method = Runtime.get().load_program(data).load_method(name)
    return list(method.execute(inputs))


def load_source(checkpoint: Path | None, schedule: str | None,
                text_encoder: Path | None = None) -> tuple[Hart, dict]:
    from model.build import build
    from model.config import default_config

    if checkpoint is None:
        cfg = default_config()
        hart = build(cfg.with_schedule(schedule) if schedule else cfg)
        return hart, fmt.default_source()
    hart = load_model(checkpoint, text_encoder)
    if schedule:
        hart = with_patch_nums(hart, SCHEDULES[schedule])
    return hart, fmt.checkpoint_source(checkpoint)


def export_bundle(hart: Hart, source: dict, out: Path, quant: str = "8da4w", group_size: int = 32,
                  schedule: str | None = None, vae_dtype: str = "auto", progress: bool = True,
                  plan: dict | None = None, ar_layout: str = "split") -> dict:
    """Write a complete bundle to `out` (atomically) and return its manifest (`plan`: the per-layer
    AR recipe of `quant="auto"`, quantization.auto.Plan.to_json(); `ar_layout`: "scales" = one AR
    method per scale sharing the KV cache, "split" = model.stages.split_method_specs)."""
    steps = ["golden trace", "quantize", *COMPONENTS, "write"]
    t_start = time.perf_counter()
    with tqdm(total=len(steps), desc="export", unit="stage", file=sys.stderr, disable=not progress) as bar, \
            fmt.staging(out) as tmp:
        step = bar.set_description
        step("golden trace")
        split = ar_layout == "split"
        specs = split_method_specs(hart) if split else method_specs(hart)
        trace, cfg = golden_trace(hart, specs)
        bar.update()
        step("quantize")
        first_vae = "fp16" if (quant != "fp32" and vae_dtype in ("auto", "fp16")) else "fp32"
        qhart, recipe = apply_recipe(hart, quant, group_size, vae_dtype=first_vae, plan=plan)
        if split:
            qhart.reset_cache(layout="llm")
        bar.update()
        facts: dict[str, dict] = {}
        for comp in COMPONENTS:
            step(comp)
            cspecs = [s for s in specs if s.component == comp]
            if split and comp == "ar_transformer":
                body = [s for s in cspecs if s.name.startswith(BODY)]
                cspecs = [s for s in cspecs if s not in body]
                data, facts[BODY] = export_program(qhart, body, split=True)
                (tmp / BODY_FILE).write_bytes(data)
            data, facts[comp] = export_program(qhart, cspecs, split)
            if comp == "vae_decoder" and quant != "fp32":
                data, facts[comp], recipe = _settle_vae(hart, quant, group_size, vae_dtype, data, facts[comp],
                                                        recipe, cspecs, trace)
            (tmp / ARTIFACTS[comp]).write_bytes(data)
            bar.update()
        step("write")
        hart.text.tokenizer.save(tmp / "tokenizer.json")
        fmt.write_golden(tmp, specs, trace, fmt.GOLDEN_PROMPT, fmt.GOLDEN_SEED, cfg)
        manifest = build_manifest(hart, specs, recipe, facts, source, schedule, tmp, cfg)
        manifest["preview"] = fmt.preview_info(hart, progress)
        manifest["export_seconds"] = round(time.perf_counter() - t_start, 1)
        manifest = fmt.write_manifest(tmp, manifest)
        bar.update()
    return manifest


def golden_trace(hart: Hart, specs: list[MethodSpec]) -> tuple[dict, float]:
    from runtime_py.pipeline import EagerBackend, Pipeline

    cfg = hart.cfg.sampler.cfg
    backend = EagerBackend(hart, split=is_split([s.name for s in specs]))
    gen = Pipeline(specs, backend, hart.text.tokenizer).generate(
        fmt.GOLDEN_PROMPT, fmt.GOLDEN_SEED, cfg, keep_trace=True)
    return gen.trace, cfg


def _settle_vae(hart, quant, group_size, vae_dtype, data, facts, recipe: Recipe, cspecs, trace):
    """Measure the fp16 VAE decoder against fp32 eager on the golden inputs; fall back to fp32 when
    `vae_dtype` is auto and it is not close enough. The decision and the number go into the recipe."""
    from runtime_py.parity import psnr

    name = cspecs[0].name
    got = run_method(data, name, trace[name]["in"])[0]
    score = psnr(trace[name]["out"][0], got, peak=1.0)
    comp = recipe.components["vae_decoder"]
    if vae_dtype == "fp16" or score >= VAE_FP16_MIN_PSNR:
        why = f"{comp.why}; measured image PSNR {score:.1f} dB vs fp32 eager on the golden inputs"
        recipe.components["vae_decoder"] = replace(comp, why=why)
        return data, facts, recipe
    qhart, recipe = apply_recipe(hart, quant, group_size, vae_dtype="fp32", plan=recipe.plan)
    data, facts = export_program(qhart, cspecs)
    why = (f"fp16 decoder reached only {score:.1f} dB image PSNR vs fp32 eager (< {VAE_FP16_MIN_PSNR} dB), "
           "so the decoder ships fp32")
    recipe.components["vae_decoder"] = replace(recipe.components["vae_decoder"], why=why)
    return data, facts, recipe


def build_manifest(hart: Hart, specs: list[MethodSpec], recipe: Recipe, facts: dict, source: dict,
                   schedule: str | None, root: Path, cfg: float) -> dict:
    import executorch.version

    files = {c: program_file(c) for c in facts}  # the components, plus the body program of the split layout
    sizes = {c: (root / f).stat().st_size for c, f in files.items()}
    kv = fmt.kv_cache_bytes(hart)
    # the program holding the KV cache plans it in its arena; count it once, separately
    arenas = {c: max(v - (kv if facts[c].get("mutable_state") else 0)
                     for v in facts[c]["planned_arena_bytes"].values()) for c in facts}
    arena = max(arenas.values())
    phases: dict[str, int] = {}  # per component: its programs + their arenas (+ the KV state for the AR)
    for c in facts:
        comp = "ar_transformer" if c == BODY else c
        phases[comp] = phases.get(comp, 0) + sizes[c] + arenas[c]
    phases["ar_transformer"] += kv
    components = {}
    for c in facts:
        f = facts[c]
        components[c] = {"file": files[c], "methods": [s.name for s in specs if method_file(s) == files[c]],
                         "bytes": sizes[c], "params": f["params"], "weight_bytes": f["weight_bytes"],
                         "bits_per_weight": round(8 * f["weight_bytes"] / max(f["params"], 1), 2),
                         "file_bits_per_weight": round(8 * sizes[c] / max(f["params"], 1), 2),
                         "planned_arena_bytes": f["planned_arena_bytes"], "export_seconds": f["seconds"],
                         "export_cpu_seconds": f.get("cpu_seconds"),
                         "shared_mutable_state": f["shared_mutable_state"],
                         **({"component": "ar_transformer"} if c == BODY else {})}
    state = facts[BODY if BODY in facts else "ar_transformer"].get("mutable_state", {})
    kv_doc = (f"mutable buffers hart.ar.blocks.{{i}}.attn.{{k,v}}_cache of the {BODY} method in {BODY_FILE}, the only "
              "method that touches them; keep that program loaded for a whole generation" if BODY in facts else
              "mutable buffers hart.ar.blocks.{i}.attn.{k,v}_cache shared by every ar_transformer method "
              "(share_mutable_buffers); keep the program loaded for a whole generation")
    return {
        **fmt.header("executorch", specs),
        "executorch": {"version": executorch.version.__version__, "delegate": "XnnpackBackend",
                       "kv_cache": kv_doc, "mutable_state": state},
        "model": {"name": hart.cfg.name, "source": source, "image_size": hart.cfg.image_size, "batch": hart.B},
        "methods": [fmt.method_entry(s, method_file(s), entry=BODY if s.name.startswith(BODY) else s.name)
                    for s in specs],
        "components": components,
        "schedule": fmt.schedule_info(hart, schedule),
        "sampler": fmt.sampler_info(hart),
        "rng": fmt.rng_info(specs),
        "tokenizer": fmt.tokenizer_info(hart, "tokenizer.json"),
        "quantization": recipe.to_json(),
        "memory": fmt.memory_estimate(hart, sum(sizes.values()), arena, sizes["text_encoder"], arenas["text_encoder"],
                                      sum(v for c, v in arenas.items() if c != "text_encoder"),
                                      sum(arenas.values()), phase_bytes=phases),
        "parity": parity_section("executorch", recipe.name, hart, recipe.plan),
        "golden": {"index": "golden/index.json", "prompt": fmt.GOLDEN_PROMPT, "seed": fmt.GOLDEN_SEED, "cfg": cfg},
        "versions": fmt.versions(),
    }


def program_file(program: str) -> str:
    return BODY_FILE if program == BODY else ARTIFACTS[program]


def method_file(spec: MethodSpec) -> str:
    return BODY_FILE if spec.name.startswith(BODY) else ARTIFACTS[spec.component]


def summary(manifest: dict) -> str:
    """Table: file, size, params, bits/weight (stored weights only) and bits/weight of the whole file."""
    rows = [("file", "size", "params", "bits/weight", "file bits/weight")]
    for c in manifest["components"].values():
        rows.append((c["file"], f"{c['bytes'] / 1024:.0f} KB", f"{c['params']:,}", f"{c['bits_per_weight']:.2f}",
                     f"{c['file_bits_per_weight']:.2f}"))
    tok = manifest["files"]["tokenizer.json"]["bytes"]
    gold = sum(v["bytes"] for k, v in manifest["files"].items() if k.startswith("golden/"))
    rows += [("tokenizer.json", f"{tok / 1024:.0f} KB", "-", "-", "-"),
             ("golden/", f"{gold / 1024:.0f} KB", "-", "-", "-")]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(f"{v:<{w[i]}}" if i == 0 else f"{v:>{w[i]}}" for i, v in enumerate(r)) for r in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m export.executorch",
                      description="Export HART to an ExecuTorch (XNNPACK) bundle with golden tensors.")
    add_checkpoint_args(p, "checkpoint folder in the official layout (default: seeded model)")
    p.add_argument("--quant", choices=RECIPES, default="8da4w",
                   help="recipe (default 8da4w); auto = per-layer 8da4w/8da8w/fp32 AR plan meeting --budget")
    p.add_argument("--budget", type=finite_float,
                   help="auto: minimum teacher-forced token agreement with fp32 eager (0-1], checked by the gate")
    p.add_argument("--plan", type=Path, help="auto: reuse a plan written by python -m quantization.auto")
    p.add_argument("--group-size", type=int, default=32, help="int4 group size for 8da4w (default 32)")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), help="scale schedule (default: the model's own)")
    p.add_argument("--ar-layout", choices=AR_LAYOUTS, default="split",
                   help=f"split (default): one transformer-body method ({BODY_FILE}, ExecuTorch's LLM cache ops, the "
                        "only method with state) plus per-scale glue, correct under the stock Android Module options; "
                        "fp32 KV cache only. scales: one AR method per scale sharing the KV cache (needs a runtime "
                        "that shares arenas between methods); the memory modes need it")
    p.add_argument("--vae-dtype", choices=("auto", "fp16", "fp32"), default="auto",
                   help=f"VAE decoder precision for quantized recipes; auto = fp16 if >= {VAE_FP16_MIN_PSNR} dB")
    fmt.add_memory_mode_args(p)
    p.add_argument("--out", type=Path, help="bundle folder (default bundles/executorch-<quant>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    check_group_size(p, a.group_size)
    fmt.check_auto_args(p, a)
    fmt.check_export_args(p, a, Path("bundles") / f"executorch-{a.quant}")
    if a.ar_layout == "split" and (a.kv_cache != "fp32" or a.attn_chunk):
        p.error("--kv-cache/--attn-chunk need --ar-layout scales (the split layout keeps an fp32 cache; "
                "custom_sdpa tiles attention itself)")
    return a


@cli_main("python -m export.executorch")
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch/torchao pytree deprecation spam
    try:
        hart, source = load_source(a.checkpoint, a.schedule, a.text_encoder)
        hart = with_memory_mode(hart, a.kv_cache, a.attn_chunk)
        if a.quant == "8da4w":
            check_group_fits(hart, a.group_size)  # before any work: a misfit would ship fp32 layers
        plan = fmt.auto_plan(hart, a, "executorch", a.group_size) if a.quant == "auto" else None
    except ValueError as e:
        print(f"python -m export.executorch: error: {e}", file=sys.stderr)
        return 2
    manifest = export_bundle(hart, source, a.out, a.quant, a.group_size, a.schedule, a.vae_dtype, not a.quiet, plan,
                             a.ar_layout)
    print(summary(manifest))
    vae = manifest["quantization"]["components"]["vae_decoder"]
    stored = manifest["components"]["vae_decoder"]["bits_per_weight"]  # what the file holds, not the intent
    print(f"bundle {a.out} ({manifest['quantization']['name']}, VAE {vae['scheme']} compute, {stored:.0f} bits per "
          f"stored weight) in {manifest['export_seconds']} s")
    return 0

