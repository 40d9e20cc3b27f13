"""The default model's text encoder as ONNX in several int8 recipes, and their SQNR on this CPU.

    PYTHONPATH=. .venv/bin/python tools/onnx_int8_isa.py build DIR      # graphs + eager fp32 contexts
    .venv/bin/python tools/onnx_int8_isa.py eval DIR                    # SQNR per recipe, this CPU
    qemu-x86_64 -cpu Haswell .venv/bin/python tools/onnx_int8_isa.py eval DIR   # an AVX2-only CPU

Why: onnxruntime picks its int8 GEMM kernels from CPUID (no switch), and on AVX2 without VNNI the
u8s8 kernel saturates int16 pair sums for full-range weights. `eval` needs only numpy and
onnxruntime, so it is short enough to run under emulation. Results: docs/portability.md.
"""

from __future__ import annotations

import glob
import logging
import sys
from pathlib import Path

import numpy as np


def build(out: Path) -> None:
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from export.bundle import GOLDEN_PROMPT
    from export.onnx.graphs import export_graph
    from export.onnx.quant import linear_matmuls, linear_weights
    from model.build import build as build_model
    from model.config import default_config
    from model.explicit_kv import explicit_kv_specs, graph_module
    from runtime_py.parity import RUNS
    from runtime_py.pipeline import EagerBackend

    logging.getLogger().setLevel(logging.ERROR)  # the ONNX exporter and quantizers log at INFO/WARNING
    out.mkdir(parents=True, exist_ok=True)
    hart = build_model(default_config(), seed=0)
    spec = next(s for s in explicit_kv_specs(hart) if s.component == "text_encoder")
    m = export_graph(graph_module(hart, spec), spec)
    onnx.save(m, out / "fp32.onnx")
    arrays = {}
    for i, prompt in enumerate([GOLDEN_PROMPT] + [p for p, _ in RUNS]):
        ids = hart.text.tokenizer.encode(prompt)[0]
        with torch.no_grad():
            arrays[f"ctx{i}"] = EagerBackend(hart).run("text_encoder", [ids])[0].numpy()
        arrays[f"ids{i}"] = ids.numpy()
    np.savez(out / "inputs.npz", **arrays)
    nodes = list(linear_matmuls(m, linear_weights(hart.text)))
    for name, kw in {"dynamic_full_range": {}, "dynamic_reduce_range": {"reduce_range": True}}.items():
        quantize_dynamic(m, out / f"{name}.onnx", weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, **kw)
    others = [n.name for n in m.graph.node if n.op_type == "MatMul" and n.name not in set(nodes)]
    for level in (0, 4):
        algo = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=level, bits=8)
        q = MatMulNBitsQuantizer(onnx.load(out / "fp32.onnx"), block_size=32, is_symmetric=True,
                                 accuracy_level=level, nodes_to_exclude=others, algo_config=algo)
        q.process()
        onnx.save(q.model.model, out / f"matmulnbits8_level{level}.onnx")
    print(f"{out}: {len(nodes)} quantized MatMuls")


def evaluate(folder: Path) -> None:
    import onnxruntime as ort

    z = np.load(folder / "inputs.npz")
    prompts = len([k for k in z if k.startswith("ids")])
    for f in sorted(glob.glob(str(folder / "*.onnx"))):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
        worst = 999.0
        for i in range(prompts):
            got = sess.run(None, {sess.get_inputs()[0].name: z[f"ids{i}"]})[0].astype(np.float64)
            ref = z[f"ctx{i}"].astype(np.float64)
            noise = max(float(((ref - got) ** 2).sum()), 1e-300)
            worst = min(worst, 10 * np.log10(float((ref ** 2).sum()) / noise))
        print(f"{Path(f).stem:24s} {worst:7.2f} dB (worst of {prompts} prompts)")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "eval"):
        sys.exit(__doc__.splitlines()[2].strip())
    (build if sys.argv[1] == "build" else evaluate)(Path(sys.argv[2]))
