"""Core ML export (python -m export.coreml) and its Linux-side verification.

Core ML cannot execute on Linux: these tests convert real packages and check them with
runtime_py.coreml.checks / coreml_parity (structure, stored weights, fp16 parity in PyTorch).
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.coreml import exporter as cli
from export.coreml.convert import output_features
from runtime_py.coreml.conventions import const_to_param, param_index

PROMPT, SEED = "a lighthouse at dusk", 7


# ---- fast: CLI contract, naming ------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--quant", "int3"], ["--block-size", "24"], ["--schedule", "2,1"], ["--schedule", "big"],
    ["--compute-units", "gpu"], ["--checkpoint", "/nonexistent/ckpt"],
])
def test_bad_args_one_line_exit_2(args, tmp_path, capsys):
    out = tmp_path / "bundle"
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0]
    assert not out.exists()


def test_schedule_parsing():
    assert cli.parse_schedule("256px")[-1] == 16
    assert cli.parse_schedule("1,2,4") == (1, 2, 4)


def test_output_names_and_param_mapping(default_hart):
    from model.stages import method_specs

    specs = {s.name: s for s in method_specs(default_hart)}
    assert output_features(specs["scale_01"]) == ["idx", "f_hat_out", "x_out"]  # x, f_hat are also inputs
    assert output_features(specs["scale_00"]) == ["idx", "f_hat", "x", "cond", "pos_offset"]
    index = param_index(default_hart)
    assert const_to_param("p_hart_ar_blocks_0_attn_qkv_proj_weight_to_fp16_quantized", index) == \
        "hart.ar.blocks.0.attn.qkv_proj.weight"
    assert const_to_param("transpose_0_to_fp16", index) is None


@pytest.mark.slow
def test_failed_export_leaves_nothing(tmp_path, monkeypatch, default_hart):
    from export.coreml import convert as coreml_convert

    def boom(*_a, **_k):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(coreml_convert, "convert_method", boom)
    out = tmp_path / "coreml-int4"
    with pytest.raises(RuntimeError):
        cli.export_coreml(default_hart, out, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temp folder


@pytest.mark.slow
def test_fp32_compute_check_allows_only_islands():
    """log/sin/cos and the cheap ops feeding them may stay fp32; any other fp32 compute is flagged."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from runtime_py.coreml.checks import Check, _check_precision

    w = np.ones((4, 4), np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4))], opset_version=ct.target.iOS18)
    def prog(u):
        g = mb.log(x=mb.mul(x=mb.log(x=u), y=-1.0))  # Gumbel-style island: log, mul, log
        return mb.add(x=g, y=mb.linear(x=u, weight=w))

    chk = Check("structure")
    _check_precision(chk, "x.mlpackage", prog)
    flagged = sorted(e.split("compute ")[1].split()[0] for e in chk.errors)
    assert flagged == ["add", "linear"]


# ---- slow: real conversions ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> tuple[Path, cli.Report]:
    """The default model converted once (int4 AR, int8 text)."""
    from model.build import default_model

    out = tmp_path_factory.mktemp("coreml") / "coreml-int4"
    return out, cli.export_coreml(default_model(), out, "int4", progress=False)


@pytest.mark.slow
def test_graph_fixes_remove_unsupported_nodes(default_hart):
    from export.coreml.graph import export_stage
    from model.stages import example_inputs, method_specs

    specs = {s.name: s for s in method_specs(default_hart)}
    default_hart.reset_cache(torch.float16)
    try:
        for name in ("text_encoder", "scale_09"):
            ep = export_stage(default_hart, specs[name], example_inputs(specs[name]))
            targets = {str(n.target) for n in ep.graph.nodes}
            assert "aten.alias.default" not in targets and "aten.__and__.Tensor" not in targets
            phs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ("token_ids",)]
            assert all(n.meta["val"].dtype == torch.int32 for n in phs)
    finally:
        default_hart.reset_cache(torch.float32)


@pytest.mark.slow
def test_conversion_and_structure(bundle):
    from runtime_py.backends import create_backend
    from runtime_py.bundle import Bundle
    from runtime_py.coreml.checks import check_structure

    out, rep = bundle
    manifest = Bundle.open(out).manifest  # the shared validator: header, file table, sha256
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ArTransformer.mlpackage", "DiffusionHead.mlpackage", "TextEncoder.mlpackage", "VaeDecoder.mlpackage",
         "golden", "manifest.json", "manifest.sha256", "tokenizer.json"])
    comps = manifest["components"]
    assert comps["ar_transformer"]["functions"] == [f"scale_{i:02d}" for i in range(10)]
    assert comps["ar_transformer"]["quantization"]["dtype"] == "int4"
    assert comps["ar_transformer"]["bits_per_quantized_weight"] == pytest.approx(4.5)  # 4 bits + fp16 scale / 32
    assert comps["text_encoder"]["quantization"]["dtype"] == "int8"
    assert comps["vae_decoder"]["quantization"]["dtype"] == "fp16"
    states = manifest["methods"][1]["states"]
    assert [s["dtype"] for s in states] == ["float16"] * 4 and states[0]["name"] == "hart_ar_blocks_0_attn_k_cache"
    assert manifest["methods"][1]["coreml_outputs"][0]["coreml_dtype"] == "int32"  # idx: no int64 in Core ML
    chk = check_structure(out, manifest)
    assert chk.ok, chk.errors
    # weights stored once: 10 functions in about the size of one plus scale_00's extra weights
    assert comps["ar_transformer"]["bytes"] < 2.5 * 2**20
    if sys.platform != "darwin":
        with pytest.raises(ValueError, match="macOS"):
            create_backend(Bundle.open(out))


@pytest.mark.slow
def test_structure_check_catches_wrong_shape(bundle):
    from runtime_py.coreml.checks import check_structure

    out, _ = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    bad = copy.deepcopy(manifest)
    m = next(m for m in bad["methods"] if m["name"] == "scale_03")
    m["coreml_inputs"][0]["shape"][1] += 1
    chk = check_structure(out, bad)
    assert chk.status == "FAIL"
    assert any("ArTransformer.mlpackage:scale_03 inputs[0]" in e for e in chk.errors), chk.errors
    bad = copy.deepcopy(manifest)
    bad["components"]["ar_transformer"]["functions"].pop()
    assert check_structure(out, bad).status == "FAIL"
    bad = copy.deepcopy(manifest)  # claim int8 for the fp16 diffusion head: its weights are plain fp16
    bad["components"]["diffusion_head"]["quantization"] = {"dtype": "int8", "granularity": "per_channel"}
    chk = check_structure(out, bad)
    assert any("DiffusionHead.mlpackage: parameter" in e and "stored as fp16" in e for e in chk.errors), chk.errors


@pytest.mark.slow
def test_weights_and_fp16_parity(bundle):
    from runtime_py.coreml.parity import coreml_section

    out, _ = bundle
    sec = coreml_section(out)
    checks = {c["name"]: c for c in sec["checks"]}
    assert sec["status"] == "PASS", json.dumps(sec, indent=1)
    assert checks["weights"]["info"]["int4_max_steps"] < 0.51
    assert checks["sim_components"]["info"]["values"]["vae_psnr_db"] > 50
    dev = checks["device"]
    if sys.platform != "darwin":
        assert dev["status"] == "SKIPPED" and "macOS" in dev["info"]["reason"]


def _scale_blob(pkg: Path, weight: str) -> int:
    """Offset of the blob header of `weight`'s scales in weight.bin (read from the spec)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(pkg))
    for f in spec.mlProgram.functions.values():
        for op in f.block_specializations["CoreML8"].operations:
            if op.outputs and op.outputs[0].name == weight:
                return op.inputs["scale"].arguments[0].value.blobFileValue.offset
    raise KeyError(weight)


@pytest.mark.slow
def test_tampered_weight_fails_numerics(bundle, tmp_path):
    from runtime_py.bundle import Bundle, BundleError
    from runtime_py.coreml.checks import check_structure, check_weights
    from runtime_py.parity import reference_model

    src, _ = bundle
    out = tmp_path / "tampered"
    shutil.copytree(src, out)
    pkg = out / "ArTransformer.mlpackage"
    blob = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = bytearray(blob.read_bytes())
    head = _scale_blob(pkg, "p_hart_ar_head_weight_to_fp16_quantized")
    sentinel, _, size, data = struct.unpack_from("<IIQQ", raw, head)
    assert sentinel == 0xDEADBEEF
    raw[data:data + size] = (np.frombuffer(raw, np.float16, size // 2, data) * 3).astype(np.float16).tobytes()
    blob.write_bytes(bytes(raw))
    manifest = json.loads((out / "manifest.json").read_text())
    assert check_structure(out, manifest).ok  # same structure...
    ref = reference_model(Bundle(out, manifest), None)
    chk, _ = check_weights(out, manifest, ref)  # ...but not the weights
    assert chk.status == "FAIL" and any("hart.ar.head.weight" in e for e in chk.errors), chk.errors
    with pytest.raises(BundleError, match="sha256"):
        Bundle.open(out)


def tiny_config():
    """A smaller architecture than the default (1 block, dim 64, V 256, 3 scales): fast to convert."""
    from dataclasses import replace

    from model.config import default_config

    c = default_config()
    text = replace(c.text, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=32,
                   intermediate_size=128)
    ar = replace(c.ar, depth=1, embed_dim=64, num_heads=2, context_dim=64, diff_width=32, diff_depth=1,
                 vocab_size=256, patch_nums=(1, 2, 4))
    return replace(c, ar=ar, vae=replace(c.vae, vocab_size=256, ch_mult=(1, 2)), text=text)


@pytest.mark.slow
def test_synthetic_official_checkpoint_converts(tmp_path):
    """model.save of a seeded model (other seed, other size, 3 scales) -> official layout -> CLI -> checks pass."""
    from model import save
    from model.build import build
    from model.config import DEFAULT_SEED
    from runtime_py.bundle import Bundle
    from runtime_py.coreml.checks import check_structure, check_weights
    from runtime_py.parity import contract_check, reference_model

    ckpt = save(build(tiny_config(), seed=DEFAULT_SEED + 101), tmp_path / "ckpt")
    out = tmp_path / "coreml-int8"
    assert cli.main(["--checkpoint", str(ckpt), "--quant", "int8", "--text-quant", "int4", "--out", str(out),
                     "--quiet"]) == 0
    bundle = Bundle.open(out)
    manifest = bundle.manifest
    assert manifest["model"]["source"]["kind"] == "checkpoint"
    assert {c: v["dtype"] for c, v in manifest["quantization"]["components"].items()} == {
        "text_encoder": "int4", "ar_transformer": "int8", "diffusion_head": "fp16", "vae_decoder": "fp16"}
    assert manifest["components"]["ar_transformer"]["functions"] == ["scale_00", "scale_01", "scale_02"]
    chk = check_structure(out, manifest)
    assert chk.ok, chk.errors
    ref = reference_model(bundle, ckpt)
    contract_check(bundle, ref)
    wchk, stored = check_weights(out, manifest, ref)
    assert wchk.ok, wchk.errors
    assert "hart.text.layers.0.mlp.gate_proj.weight" in stored and "hart.ar.head.weight" in stored


@pytest.mark.slow
def test_auto_plan_per_layer_dtypes_and_budget(tmp_path):
    """--quant auto: the plan reaches coremltools as op_name_configs, every weight is stored with its
    layer's dtype, and the fp16 stand-in gate checks the plan's budget."""
    from model.build import default_model
    from runtime_py.coreml.checks import check_structure
    from runtime_py.coreml.parity import coreml_section

    hart = default_model()
    layers = {n: "int4" for n, m in hart.ar.named_modules() if isinstance(m, torch.nn.Linear)
              and n.startswith(("blocks.", "head", "context_embed"))}
    layers.update({"head": "int8", "blocks.0.attn.qkv_proj": "fp16"})
    plan = {"backend": "coreml", "budget": 0.6, "margin": 0.02, "group_size": 32, "layers": layers}
    out = tmp_path / "coreml-auto"
    rep = cli.export_coreml(hart, out, "auto", plan=plan, progress=False)
    q = rep.manifest["components"]["ar_transformer"]["quantization"]
    assert q["dtype"] == "auto" and q["layers"]["ar.head"] == "int8"
    assert q["layers"]["ar.blocks.1.ffn.up_proj"] == "int4"
    assert rep.manifest["parity"]["thresholds"]["teacher_forced"]["token_agreement"] == 0.6
    manifest = json.loads((out / "manifest.json").read_text())
    assert check_structure(out, manifest).ok
    bad = copy.deepcopy(manifest)  # claim int4 for the layer stored int8: the storage check must notice
    bad["components"]["ar_transformer"]["quantization"]["layers"]["ar.head"] = "int4"
    chk = check_structure(out, bad)
    assert any("hart_ar_head_weight" in e and "recipe is int4" in e for e in chk.errors), chk.errors
    bad["components"]["ar_transformer"]["quantization"]["layers"]["ar.head"] = "int8"
    bad["components"]["ar_transformer"]["quantization"]["layers"]["ar.blocks.0.attn.qkv_proj"] = "int4"
    assert any("qkv_proj" in e and "stored as fp16" in e for e in check_structure(out, bad).errors)
    sec = coreml_section(out, device=False)
    checks = {c["name"]: c for c in sec["checks"]}
    assert sec["status"] == "PASS", json.dumps(sec, indent=1)[:3000]
    assert checks["sim_teacher_forced"]["info"]["thresholds"]["token_agreement"] == 0.6
    with pytest.raises(ValueError, match="searched for executorch"):
        cli.export_coreml(hart, tmp_path / "never", "auto", plan={**plan, "backend": "executorch"}, progress=False)
    assert not (tmp_path / "never").exists()
