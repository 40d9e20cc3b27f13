"""ONNX export + onnxruntime backend: explicit KV cache, weights stored once, parity with eager.

The default model is exported once per session (about 75 s on 2 cores); the fp32 and int4 bundles
are written from those graphs. End-to-end gates are runtime_py.parity's, with the thresholds in the
manifest (export/onnx/manifest.py); fp32 must match eager token for token. The per-method int4
thresholds below come from measurements (values in comments) with a margin.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper, onnx_pb

from export.onnx.graphs import unsplat
from export.onnx.weights import share_external
from model.explicit_kv import KV_NAME, FunctionalEagerBackend, explicit_kv_specs, kv_shape
from model.stages import TensorSpec, method_specs
from runtime_py.pipeline import EagerBackend, Pipeline

PROMPT, SEED, CFG = "a lighthouse at dusk", 7, 4.5

# int4 vs fp32, per method on the oracle's inputs (measured minima in comments). context: the int8 text
# encoder with reduce_range, the same on AVX-512 and emulated AVX2 (the full-range recipe measured 0.99951
# here but 16.3 dB SQNR on AVX2 without VNNI, docs/portability.md).
INT4_TEACHER_FORCED_MIN_COS = {"f_hat": 0.92, "x": 0.92, "e_last": 0.75, "z": 0.95, "cond": 0.99,
                               KV_NAME: 0.98, "context": 0.999,  # 0.951 0.959 0.850 0.977 0.9976 0.990 0.99933
                               "delta": 0.9999, "image": 0.9999}  # fp16 graphs: 1.000000, max abs 1.1e-3, 2.3e-3
INT4_TEACHER_FORCED_MIN_AGREEMENT = 0.5  # 0.72
FP16_MAX_ABS = {"delta": 5e-3, "image": 1e-2}
# int4 graphs vs eager PyTorch holding the dequantized int4 weights (activations int8 in MatMulNBits
# accuracy level 4 make the rest): measured cos >= 0.9984 (f_hat, x), 0.988 (e_last), tokens >= 0.95.
SAME_WEIGHTS_MIN_COS = {"f_hat": 0.995, "x": 0.995, "e_last": 0.97, "z": 0.99, "cond": 0.9999, KV_NAME: 0.9999}
SAME_WEIGHTS_MIN_AGREEMENT = 0.9


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm() + 1e-30))


# ---- fast: contract, pipeline, weight sharing -------------------------------------------------------

def test_specs_carry_the_cache_in_and_out(default_hart):
    specs = explicit_kv_specs(default_hart)
    base = {m.name: m for m in method_specs(default_hart)}
    ar = [m for m in specs if m.component == "ar_transformer"]
    assert [m.name for m in specs] == list(base) and len(ar) == 10
    shape = kv_shape(default_hart)
    c = default_hart.cfg.ar
    kv_len = c.context_token + sum(p * p for p in c.patch_nums[1:])
    assert shape == (c.depth, 2, 2, c.num_heads, kv_len, c.embed_dim // c.num_heads)  # layers, k|v, 2B, heads
    for m in ar:
        kv_in = m.inputs[-1]
        assert kv_in.name == KV_NAME and kv_in.shape == shape
        assert kv_in.source == ("zeros" if m.name == "scale_00" else "env")
        assert m.inputs[:-1] == base[m.name].inputs
        emits = m.outputs[-1].name == KV_NAME
        assert emits == (m.name != "scale_09")  # the last step's writes are never read
    for m in specs:
        if m.component != "ar_transformer":
            assert m == base[m.name]


def test_pipeline_gives_zeros_for_zero_source_inputs():
    spec = TensorSpec(KV_NAME, (2, 3), "float32", source="zeros")
    t = Pipeline([], None, None).host_input(spec, {}, seed=1, cfg=4.5)
    assert t.dtype == torch.float32 and t.shape == (2, 3) and not t.any()


def test_functional_steps_equal_the_stateful_model(default_hart):
    """The wrapper that gets exported (cache as a tensor) computes exactly what the stateful model does."""
    ref = Pipeline(method_specs(default_hart), EagerBackend(default_hart), default_hart.text.tokenizer)
    fun = Pipeline(explicit_kv_specs(default_hart), FunctionalEagerBackend(default_hart), default_hart.text.tokenizer)
    a, b = ref.generate(PROMPT, SEED, CFG), fun.generate(PROMPT, SEED, CFG)
    assert all(torch.equal(a.tokens[k], b.tokens[k]) for k in a.tokens)
    assert torch.equal(a.image, b.image)


def _matmul_model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes, x = [], "x"
    for i, name in enumerate(weights):
        nodes.append(helper.make_node("MatMul", [x, name], [f"y{i}"]))
        x = f"y{i}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx_pb.TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info(x, onnx_pb.TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def test_share_external_stores_each_tensor_once(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w, u, v = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(3))
    models = {"a": _matmul_model({"val_1": w, "val_2": u}), "b": _matmul_model({"val_7": w, "val_1": v})}
    rep = share_external(models, tmp_path)
    assert rep.data_bytes < 4 * w.nbytes and rep.referenced_bytes == 4 * w.nbytes and rep.num_tensors == 3
    refs = {}
    for g in "ab":
        for t in onnx.load(tmp_path / f"{g}.onnx", load_external_data=False).graph.initializer:
            refs.setdefault(t.name, set()).add(tuple((e.key, e.value) for e in t.external_data))
    assert all(len(r) == 1 for r in refs.values())  # one name -> one location, in every graph
    assert len(refs) == 3 and "w/val_1" in refs and "w/val_1__" in "".join(refs)  # clashing names renamed
    x = rng.standard_normal((1, 64)).astype(np.float32)
    for g, (p, q) in {"a": (w, u), "b": (w, v)}.items():
        (y,) = ort.InferenceSession(str(tmp_path / f"{g}.onnx")).run(None, {"x": x})
        np.testing.assert_allclose(y, x @ p @ q, rtol=1e-4, atol=1e-4)


def test_unsplat_replaces_filled_constants():
    import onnxruntime as ort

    fill = np.full((64, 64), -np.inf, dtype=np.float32)
    eye = np.eye(64, dtype=np.float32)
    nodes = [helper.make_node("Max", ["x", "fill"], ["m"]), helper.make_node("MatMul", ["m", "eye"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx_pb.TensorProto.FLOAT, [64, 64])],
                          [helper.make_tensor_value_info("y", onnx_pb.TensorProto.FLOAT, [64, 64])],
                          [numpy_helper.from_array(fill, "fill"), numpy_helper.from_array(eye, "eye")])
    m = unsplat(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]))
    assert [t.name for t in m.graph.initializer if t.name == "eye"] and m.graph.node[0].op_type == "ConstantOfShape"
    assert m.ByteSize() < eye.nbytes + 1024
    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    np.testing.assert_array_equal(ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0], x)


@pytest.mark.parametrize("args,needle", [
    (["--quant", "int3"], "invalid choice: 'int3'"),
    (["--checkpoint", "/definitely/not/here"], "is not a folder"),
    (["--schedule", "999px"], "invalid choice: '999px'"),
])
def test_export_cli_bad_arguments_one_line_exit_2(capsys, args, needle):
    from export.onnx import exporter as cli

    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], lines


def test_export_cli_out_is_a_file(tmp_path, capsys):
    from export.onnx import exporter as cli

    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        cli.main(["--out", str(f)])
    assert e.value.code == 2 and "is not a bundle folder" in capsys.readouterr().err


# ---- slow: real exports ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def onnx_graphs(default_hart):
    from export.onnx.exporter import export_graphs

    return export_graphs(default_hart, {"diffusion_head", "vae_decoder"}, progress=False)


@pytest.fixture(scope="session")
def onnx_bundles(default_hart, onnx_graphs, tmp_path_factory) -> dict[str, Path]:
    from export.onnx.exporter import write_bundle

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for q in ("fp32", "int4"):
        write_bundle(default_hart, onnx_graphs, q, root / f"onnx-{q}", progress=False)  # golden, manifest, sha256
        out[q] = root / f"onnx-{q}"
    return out


@pytest.fixture(scope="session")
def ort_backends(onnx_bundles):
    from runtime_py.backends.onnx import OnnxBackend

    return {q: OnnxBackend(p, threads=2) for q, p in onnx_bundles.items()}


@pytest.fixture(scope="session")
def oracle(default_hart):
    """The eager run in ONNX-contract form: every method's inputs and outputs, cache included."""
    pipe = Pipeline(explicit_kv_specs(default_hart), FunctionalEagerBackend(default_hart), default_hart.text.tokenizer)
    return pipe.generate(PROMPT, SEED, CFG, keep_trace=True)


def _ops(path: Path) -> dict[str, int]:
    m = onnx.load(path, load_external_data=False)
    out: dict[str, int] = {}
    for n in m.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


@pytest.mark.slow
def test_int4_bundle_manifest_files_and_recipe(onnx_bundles, default_hart):
    from runtime_py.bundle import Bundle

    b = onnx_bundles["int4"]
    bundle = Bundle.open(b)  # the shared reader: schema, call order, every file's size and sha256
    man = bundle.manifest
    assert man["backend"] == "onnx" and man["quantization"]["name"] == "int4" and man["parity"]["recipe"] == "int4"
    specs = explicit_kv_specs(default_hart)
    assert bundle.specs == specs and man["call_order"] == [s.name for s in specs]
    for m in man["methods"]:
        graph = onnx.load(b / m["file"], load_external_data=False).graph
        assert [i.name for i in graph.input] == m["onnx_inputs"] and len(m["onnx_inputs"]) == len(m["inputs"])
        assert [o.name for o in graph.output] == m["onnx_outputs"] and len(m["onnx_outputs"]) == len(m["outputs"])
        assert m["execution_providers"]["android"][-1] == "CPUExecutionProvider"
    kv = man["onnx"]["kv_cache"]
    assert kv["init"] == "zeros" and kv["shape"] == list(kv_shape(default_hart)) and kv["first"] == "scale_00"
    assert man["methods"][1]["inputs"][-1]["source"] == "zeros" and man["methods"][2]["inputs"][-1]["source"] == "env"
    comps = man["quantization"]["components"]
    assert comps["ar_transformer"]["scheme"] == "int4" and comps["text_encoder"]["scheme"] == "int8"
    assert comps["diffusion_head"]["scheme"] == comps["vae_decoder"]["scheme"] == "fp16"
    ar = comps["ar_transformer"]
    assert len(ar["quantized"]) == 12 and "ar.head.weight" in ar["quantized"]  # 10 block linears, head, context
    assert "ar.word_embed.weight" in ar["kept_float"]  # 16 input features < one int4 block
    step = _ops(b / "scale_03.onnx")
    assert step.get("MatMulNBits") == 11  # 2 blocks x (qkv, proj, gate, up, down) + head
    assert step.get("MatMul") == 6  # attention x4, the Gumbel-soft codebook product, word_embed
    assert _ops(b / "text_encoder.onnx").get("MatMulInteger", 0) > 0
    vae = onnx.load(b / "vae_decoder.onnx", load_external_data=False)
    convs = {i for n in vae.graph.node if n.op_type == "Conv" for i in n.input[1:2]}
    assert all(t.data_type == onnx_pb.TensorProto.FLOAT16 for t in vae.graph.initializer if t.name in convs)
    gold = bundle.golden()
    assert gold[("scale_00", "in")][-1].shape == kv_shape(default_hart) and not gold[("scale_00", "in")][-1].any()
    assert [p.name for p in b.parent.iterdir() if p.name.startswith(".")] == []  # no temp folder left behind


@pytest.mark.slow
def test_weights_stored_once(onnx_bundles):
    """All 10 step graphs together cost far less than 10 self-contained step graphs."""
    b = onnx_bundles["int4"]
    man = json.loads((b / "manifest.json").read_text())
    ranges: dict[str, set[tuple[int, int]]] = {}
    for m in man["methods"]:
        for t in onnx.load(b / m["file"], load_external_data=False).graph.initializer:
            if t.data_location == onnx_pb.TensorProto.EXTERNAL:
                ext = {e.key: e.value for e in t.external_data}
                assert ext["location"] == "weights.data"
                ranges.setdefault(m["name"], set()).add((int(ext["offset"]), int(ext["length"])))
    steps = [m["name"] for m in man["methods"] if m["component"] == "ar_transformer"]
    one_step = sum(n for _, n in ranges["scale_03"]) + (b / "scale_03.onnx").stat().st_size
    all_steps = sum(n for _, n in set().union(*(ranges[s] for s in steps)))
    all_steps += sum((b / f"{s}.onnx").stat().st_size for s in steps)
    assert all_steps < 2.5 * one_step, (all_steps, one_step)  # 10 self-contained graphs would be ~10x
    shared = set.intersection(*(ranges[s] for s in steps[1:-1]))
    assert sum(n for _, n in shared) > 0.6 * sum(n for _, n in ranges["scale_03"])  # same bytes, same offsets
    data = (b / "weights.data").stat().st_size
    assert data <= sum(n for _, n in set().union(*ranges.values())) + 4096 * len(set().union(*ranges.values()))


@pytest.mark.slow
def test_fp32_graphs_match_eager_per_method(ort_backends, oracle, default_hart):
    """Golden-style: each fp32 graph on the oracle's recorded inputs reproduces the oracle's outputs."""
    be = ort_backends["fp32"]
    specs = {s.name: s for s in explicit_kv_specs(default_hart)}
    for m, tr in oracle.trace.items():
        outs = be.run(m, tr["in"])
        for s, o, r in zip(specs[m].outputs, outs, tr["out"]):
            assert o.dtype == r.dtype and o.shape == r.shape, (m, s.name)
            if s.dtype == "int64":
                assert torch.equal(o, r), (m, s.name)
            else:
                assert cos(o, r) > 0.99999 and float((o - r).abs().max()) < 2e-3, (m, s.name)


@pytest.mark.slow
def test_kv_cache_flows_between_step_graphs(ort_backends, oracle):
    """scale_00 writes the context rows of the cache; scale_01 reads them: a zero cache changes its result."""
    be = ort_backends["fp32"]
    s0, s1 = oracle.trace["scale_00"], oracle.trace["scale_01"]
    kv0 = be.run("scale_00", s0["in"])[-1]
    assert kv0[..., :300, :].abs().amin(dim=-1).gt(0).float().mean() > 0.99  # context slots written
    assert not kv0[..., 300:, :].any()  # nothing else
    with_cache = be.run("scale_01", s1["in"][:-1] + [kv0])
    zero_cache = be.run("scale_01", s1["in"][:-1] + [torch.zeros_like(kv0)])
    f_ref, f_zero = with_cache[1], zero_cache[1]
    assert cos(f_ref, s1["out"][1]) > 0.99999  # the oracle's f_hat
    assert cos(f_zero, f_ref) < 0.99 and float((with_cache[2] - zero_cache[2]).abs().max()) > 0.1
    kv1 = with_cache[-1]
    assert torch.equal(kv1[..., :300, :], kv0[..., :300, :]) and kv1[..., 300:304, :].abs().sum() > 0


def _int4_eager(hart, bundle: Path):
    """A copy of the model whose quantized Linear weights are the int4 graphs' dequantized weights."""
    from export.onnx.quant import int4_weights

    h = copy.deepcopy(hart)
    linears = {n: m for n, m in h.named_modules() if isinstance(m, torch.nn.Linear)}
    man = json.loads((bundle / "manifest.json").read_text())
    replaced = {}
    for m in man["methods"]:
        if m["precision"] == "int4":
            for w in int4_weights(onnx.load(bundle / m["file"])):
                # the Linear this int4 weight approximates: same shape, nearest values
                err, name = min((float(np.abs(w - lin.weight.numpy()).mean()), n) for n, lin in linears.items()
                                if tuple(lin.weight.shape) == w.shape)
                replaced[name] = w
    for name, w in replaced.items():
        linears[name].weight.data = torch.from_numpy(w.copy())
    return h, sorted(replaced)


@pytest.mark.slow
def test_int4_graphs_match_eager_with_the_same_int4_weights(onnx_bundles, ort_backends, default_hart):
    """Separates runtime correctness from quantization error: same weights, so only int8 activations differ."""
    h, names = _int4_eager(default_hart, onnx_bundles["int4"])
    assert len(names) == 12  # 10 block linears, head, context_embed
    trace = Pipeline(explicit_kv_specs(h), FunctionalEagerBackend(h), h.text.tokenizer).generate(
        PROMPT, SEED, CFG, keep_trace=True).trace
    specs = {s.name: s for s in explicit_kv_specs(h)}
    for m in [f"scale_{i:02d}" for i in range(10)]:
        outs = ort_backends["int4"].run(m, trace[m]["in"])
        for s, o, r in zip(specs[m].outputs, outs, trace[m]["out"]):
            if s.dtype == "int64":
                assert float((o == r).float().mean()) >= SAME_WEIGHTS_MIN_AGREEMENT, (m, s.name)
            elif s.name in SAME_WEIGHTS_MIN_COS:
                assert cos(o, r) >= SAME_WEIGHTS_MIN_COS[s.name], (m, s.name, cos(o, r))


@pytest.mark.slow
def test_int4_per_method_vs_fp32(ort_backends, oracle, default_hart):
    specs = {s.name: s for s in explicit_kv_specs(default_hart)}
    for m, tr in oracle.trace.items():
        outs = ort_backends["int4"].run(m, tr["in"])
        for s, o, r in zip(specs[m].outputs, outs, tr["out"]):
            if s.dtype == "int64":
                assert float((o == r).float().mean()) >= INT4_TEACHER_FORCED_MIN_AGREEMENT, (m, s.name)
            elif s.name in INT4_TEACHER_FORCED_MIN_COS:
                assert cos(o, r) >= INT4_TEACHER_FORCED_MIN_COS[s.name], (m, s.name, cos(o, r))
            if s.name in FP16_MAX_ABS:
                assert float((o - r).abs().max()) <= FP16_MAX_ABS[s.name], (m, s.name)


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_parity_gate_passes(onnx_bundles, quant):
    """runtime_py.parity's four checks (golden, teacher-forced, components, end to end) with the manifest's
    thresholds: fp32 needs identical tokens at every scale and image PSNR >= 45 dB."""
    from runtime_py.parity import run_parity

    rep = run_parity(onnx_bundles[quant])
    assert rep["passed"], {k: rep[k]["failures"] for k in ("golden", "teacher_forced", "components", "end_to_end")}
    if quant == "fp32":
        for row in rep["end_to_end"]["rows"]:
            assert set(row["token_agreement"].values()) == {1.0} and row["image_psnr_db"] >= 45


@pytest.mark.slow
def test_generate_cli_runs_an_onnx_bundle(onnx_bundles, tmp_path, capsys):
    from PIL import Image

    from runtime_py import generate

    out = tmp_path / "a.png"
    assert generate.main(["--bundle", str(onnx_bundles["int4"]), "--prompt", PROMPT, "--out", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (256, 256)
    text = capsys.readouterr().out
    assert "onnxruntime" in text and "scale_09" in text


@pytest.mark.slow
def test_export_cli_writes_the_bundle_atomically(onnx_graphs, tmp_path, capsys, monkeypatch):
    """CLI wiring (default int4 recipe, summary table, replacing an old bundle) on the session's graphs."""
    from export.onnx import exporter as cli

    monkeypatch.setattr(cli, "export_graphs", lambda hart, fp16, progress=True: onnx_graphs)
    out = tmp_path / "b"
    for _ in range(2):  # the second run replaces the first bundle
        assert cli.main(["--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "scale_09" in text and "int4" in text and "weights.data" in text
    assert json.loads((out / "manifest.json").read_text())["quantization"]["name"] == "int4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or backup folder left
