"""python -m export.onnx [--checkpoint DIR] [--quant int4|int8|fp32] [--schedule NAME] [--out DIR]

One ONNX graph per method (text encoder, one per AR scale, diffusion head, VAE decoder); the KV cache is
an explicit input/output of the step graphs; every weight is stored once in `weights.data`, which all
graphs reference by offset. The bundle (shared schema, golden tensors) is written atomically.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from tqdm import tqdm

from export import bundle as fmt
from export.onnx.graphs import export_graph
from export.onnx.manifest import build_manifest, method_entry, quantization_info
from export.onnx.quant import RECIPES, linear_weights, quantize
from export.onnx.weights import share_external
from model.config import SCHEDULES
from model.explicit_kv import FunctionalEagerBackend, explicit_kv_specs, graph_module, half_copy
from model.hart import Hart
from runtime_py.cli import OneLineParser, add_checkpoint_args, cli_main

DATA_FILE = "weights.data"


@dataclass
class Graphs:
    """Exported graphs before any recipe: fp32 for every method, fp16 for the components that use it."""

    fp32: dict[str, onnx.ModelProto] = field(default_factory=dict)
    fp16: dict[str, onnx.ModelProto] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    manifest: dict
    rows: list[tuple] = field(default_factory=list)  # method, precision, graph KB, weights KB, export s
    self_contained_bytes: int = 0  # the same graphs, each saved with its weights inline
    shared_data_bytes: int = 0


def _bar(it, desc: str, progress: bool):
    return tqdm(it, desc=desc, unit="graph", file=sys.stderr, disable=not progress, leave=False)


def export_graphs(hart: Hart, fp16_components: set[str], progress: bool = True) -> Graphs:
    """torch -> ONNX for every method (and an fp16 twin of the listed components)."""
    g = Graphs()
    specs = explicit_kv_specs(hart)
    half = half_copy(hart) if fp16_components else None
    jobs = [(s, "fp32") for s in specs] + [(s, "fp16") for s in specs if s.component in fp16_components]
    for spec, prec in _bar(jobs, "export", progress):
        t0 = time.perf_counter()
        getattr(g, prec)[spec.name] = export_graph(graph_module(hart, spec, half if prec == "fp16" else None), spec)
        g.seconds[f"{spec.name}/{prec}"] = time.perf_counter() - t0
    return g


def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def recipe_graphs(hart: Hart, graphs: Graphs, quant: str, progress: bool = True):
    """Per method: the graph at its recipe precision; plus quantized / all Linear weights per component."""
    recipe = RECIPES[quant]
    parts = {"text_encoder": (hart.text, (), "text."), "ar_transformer": (hart.ar, ("diffloss",), "ar.")}
    linears = {c: set(linear_weights(m, skip, pre).values()) for c, (m, skip, pre) in parts.items()}
    models, quantized = {}, {}
    for spec in _bar(explicit_kv_specs(hart), "quantize", progress):
        prec = recipe[spec.component]
        src = graphs.fp16 if prec == "fp16" else graphs.fp32
        if spec.name not in src:
            raise ValueError(f"{spec.name}: no {prec} export (export_graphs without that component)")
        model = _copy(src[spec.name])
        if spec.component in parts:
            module, skip, prefix = parts[spec.component]
            model, names = quantize(model, prec, module, skip, prefix)
            quantized.setdefault(spec.component, set()).update(names)
        models[spec.name] = model
    return models, quantization_info(quant, recipe, quantized, linears)


def write_bundle(hart: Hart, graphs: Graphs, quant: str, out: Path, source: dict | None = None,
                 schedule: str | None = None, progress: bool = True) -> Report:
    """Apply the recipe, share weights, write graphs + weights.data + tokenizer + golden + manifest."""
    specs = explicit_kv_specs(hart)
    models, quant_info = recipe_graphs(hart, graphs, quant, progress)
    self_contained = sum(m.ByteSize() for m in models.values())
    cfg = hart.cfg.sampler.cfg
    trace = golden_trace(hart, specs, cfg)
    with fmt.staging(Path(out)) as tmp:
        shared = share_external(models, tmp, DATA_FILE)
        hart.text.tokenizer.save(tmp / "tokenizer.json")
        fmt.write_golden(tmp, specs, trace, fmt.GOLDEN_PROMPT, fmt.GOLDEN_SEED, cfg)
        prec = {c["component"]: c["scheme"] for c in quant_info["components"].values()}
        methods = [method_entry(s, prec[s.component], shared.external[s.name]) for s in specs]
        sizes = {"weights_file_bytes": shared.data_bytes, "self_contained_graphs_bytes": self_contained,
                 "graph_bytes": shared.graph_bytes}
        weights = shared.data_bytes + sum(shared.graph_bytes.values())
        manifest = build_manifest(hart, specs, methods, quant_info, source or fmt.default_source(), schedule,
                                  DATA_FILE, weights, cfg, sizes, _own_bytes(models, shared, "text_encoder"))
        manifest["preview"] = fmt.preview_info(hart, progress)
        manifest = fmt.write_manifest(tmp, manifest)
    rows = [(s.name, prec[s.component], shared.graph_bytes[s.name] / 1024, _external_kb(models[s.name]),
             graphs.seconds.get(f"{s.name}/{'fp16' if prec[s.component] == 'fp16' else 'fp32'}", 0.0))
            for s in specs]
    return Report(manifest, rows, self_contained, shared.data_bytes)


def golden_trace(hart: Hart, specs, cfg: float) -> dict:
    """Golden tensors: the exported modules run eagerly (cache as a tensor) on the golden prompt."""
    from runtime_py.pipeline import Pipeline

    pipe = Pipeline(specs, FunctionalEagerBackend(hart), hart.text.tokenizer)
    return pipe.generate(fmt.GOLDEN_PROMPT, fmt.GOLDEN_SEED, cfg, keep_trace=True).trace


def _own_bytes(models: dict[str, onnx.ModelProto], shared, name: str) -> int:
    """Bytes a runtime frees by releasing graph `name`: its graph file and the weights no other graph uses."""
    others = {n for g, names in shared.external.items() if g != name for n in names}
    own = sum(int({e.key: e.value for e in t.external_data}.get("length", 0))
              for t in models[name].graph.initializer if t.name not in others)
    return shared.graph_bytes[name] + own


def _external_kb(model: onnx.ModelProto) -> float:
    """KB of weights.data a graph references (what it would carry on its own)."""
    return sum(int({e.key: e.value for e in t.external_data}.get("length", 0)) for t in model.graph.initializer) / 1024


def export_onnx(hart: Hart, quant: str = "int4", out: Path | None = None, source: dict | None = None,
                schedule: str | None = None, progress: bool = True) -> Report:
    if hart.text is None:
        raise ValueError("the model has no text encoder (the bundle needs one)")
    fp16 = {c for c, p in RECIPES[quant].items() if p == "fp16"}
    graphs = export_graphs(hart, fp16, progress)
    return write_bundle(hart, graphs, quant, out or Path("bundles") / f"onnx-{quant}", source, schedule, progress)


def summary(rep: Report, out: Path) -> str:
    lines = [f"{'method':<16}{'precision':<11}{'graph KB':>10}{'weights KB':>12}{'export s':>10}"]
    lines += [f"{n:<16}{p:<11}{g:>10.1f}{w:>12.1f}{s:>10.1f}" for n, p, g, w, s in rep.rows]
    files = rep.manifest["files"]
    mb = 1 / 2**20
    total = sum(f["bytes"] for f in files.values())
    gold = sum(f["bytes"] for k, f in files.items() if k.startswith("golden/"))
    lines.append(f"weights.data {rep.shared_data_bytes * mb:.2f} MB, each shared weight stored once "
                 f"(self-contained graphs would take {rep.self_contained_bytes * mb:.2f} MB)")
    lines.append(f"bundle {out}: {(total - gold) * mb:.2f} MB + golden/ {gold * mb:.2f} MB "
                 f"({rep.manifest['quantization']['name']})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m export.onnx",
                      description="Export HART to an ONNX bundle (one graph per method, explicit KV cache).")
    add_checkpoint_args(p, "official-layout checkpoint folder (default: seeded default model)")
    p.add_argument("--quant", choices=sorted(RECIPES), default="int4",
                   help="int4: AR MatMulNBits, text int8, diffusion/VAE fp16 (default); int8; fp32")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), help="scale schedule (default: the model's own)")
    fmt.add_memory_mode_args(p, kv_help="int8 = codes + kv_scale state tensor, quantized on write")
    p.add_argument("--out", type=Path, help="bundle folder (default bundles/onnx-<quant>), replaced atomically")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    fmt.check_export_args(p, a, Path("bundles") / f"onnx-{a.quant}")
    return a


@cli_main("python -m export.onnx")
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        from export.executorch.exporter import load_source  # the shared model/source loader (also used by parity)
        from model.memory import with_memory_mode

        hart, source = load_source(a.checkpoint, a.schedule, a.text_encoder)
        hart = with_memory_mode(hart, a.kv_cache, a.attn_chunk)
        rep = export_onnx(hart, a.quant, a.out, source, a.schedule, progress=not a.quiet)
    except (ValueError, FileNotFoundError) as e:
        print(f"python -m export.onnx: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 2
    print(summary(rep, a.out))
    return 0

