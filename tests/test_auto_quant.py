"""quantization.auto: per-layer plans under a parity budget, applied by the ExecuTorch and Core ML exporters.

The slow cases search the default model for real (torchao, eager), export the plan with ExecuTorch,
and run the bundle's parity gate, whose teacher-forced threshold is the budget itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from quantization import auto
from quantization.recipes import apply_recipe
from runtime_py.thresholds import PARITY_THRESHOLDS, coreml_thresholds, recipe_thresholds

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_units_cover_the_quantizable_layers_once(default_hart):
    us = auto.units(default_hart.ar)
    names = [u.name for u in us]
    assert names == ["word_embed", "context_embed", "block0.qkv", "block0.proj", "block0.mlp", "block1.qkv",
                     "block1.proj", "block1.mlp", "head_nm", "head"]
    layers = [n for u in us for n in u.layers]
    assert len(layers) == len(set(layers)) == 14  # 5 per block + word/context embed, head_nm.ada_lin.1, head
    assert us[0].layers == ["word_embed"]  # in_features 16: the search skips it (not a multiple of the group)
    mlp = us[names.index("block0.mlp")]
    assert mlp.layers == ["blocks.0.ffn.gate_proj", "blocks.0.ffn.up_proj", "blocks.0.ffn.down_proj"]
    assert mlp.params == 3 * 128 * 512


def test_unit_bytes_order():
    u = auto.Unit("x", ["x"], params=128 * 512, out_features=512)
    b = {s: auto.unit_bytes(u, s, 32) for s in ("8da4w", "8da8w", "fp32", "int4", "int8", "fp16")}
    assert b["8da4w"] == 128 * 512 * (0.5 + 4 / 32) and b["int4"] == 128 * 512 * (0.5 + 2 / 32)
    assert b["8da4w"] < b["8da8w"] < b["fp32"] and b["int4"] < b["int8"] < b["fp16"]


def test_upgrade_path_takes_the_best_noise_per_byte_first():
    us = [auto.Unit("a", ["a"], 1000, 10), auto.Unit("b", ["b"], 1000, 10)]
    noise = {"a": {"8da4w": [0.1, 0.1], "8da8w": [0.001, 0.001], "fp32": [0.0, 0.0]},
             "b": {"8da4w": [0.01, 0.01], "8da8w": [0.0001, 0.0001], "fp32": [0.0, 0.0]}}
    path = auto.upgrade_path(us, noise, ("8da4w", "8da8w", "fp32"), 32)
    assert path[0] == ("a", "8da8w")  # a is ten times noisier at the same cost
    assert len(path) == 4 and {p for p in path} == {("a", "8da8w"), ("a", "fp32"), ("b", "8da8w"), ("b", "fp32")}
    assert path.index(("a", "8da8w")) < path.index(("a", "fp32"))


def plan_for(layers: dict[str, str], backend="executorch", budget=0.9) -> dict:
    return {"backend": backend, "budget": budget, "margin": 0.02, "group_size": 32, "layers": layers}


def test_apply_recipe_follows_the_plan(default_hart):
    layers = {n: "8da8w" for u in auto.units(default_hart.ar) for n in u.layers}
    layers["head"] = "8da4w"
    layers["blocks.0.attn.qkv_proj"] = "fp32"
    q, recipe = apply_recipe(default_hart, "auto", plan=plan_for(layers))
    ar = recipe.components["ar_transformer"]
    assert ar.scheme == "auto" and ar.layers["ar.head"] == "8da4w" and ar.layers["ar.blocks.0.attn.qkv_proj"] == "fp32"
    assert "ar.blocks.0.attn.qkv_proj" in ar.kept_float and "ar.head" in ar.quantized
    assert type(q.ar.head.weight).__name__ != "Parameter" or q.ar.head.weight.dtype != torch.float32
    assert q.ar.blocks[0].attn.qkv_proj.weight.dtype == torch.float32
    assert type(q.ar.blocks[0].attn.qkv_proj.weight) is torch.nn.Parameter
    assert type(default_hart.ar.head.weight) is torch.nn.Parameter  # the source model is untouched
    assert recipe.to_json()["auto"]["budget"] == 0.9 and "layers" not in recipe.to_json()["auto"]


@pytest.mark.parametrize("plan, msg", [
    (plan_for({"head": "8da4w"}, backend="coreml"), "searched for 'coreml'"),
    ({**plan_for({"head": "8da4w"}), "group_size": 64}, "group size 64"),
    (plan_for({"blocks.9.attn.proj": "8da4w"}), "unknown layers"),
    (plan_for({"head": "int3"}), "schemes ['int3']"),
])
def test_plans_that_do_not_fit_are_refused(default_hart, plan, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        apply_recipe(default_hart, "auto", plan=plan)
    with pytest.raises(ValueError, match="needs a plan"):
        apply_recipe(default_hart, "auto")


def test_auto_thresholds_gate_the_budget():
    t = recipe_thresholds("auto", plan_for({"head": "8da4w", "proj": "fp32"}, budget=0.91))
    assert t["teacher_forced"] == {"token_agreement": 0.91}
    assert t["end_to_end"] == PARITY_THRESHOLDS["8da4w"]["end_to_end"]
    t8 = recipe_thresholds("auto", plan_for({"head": "8da8w"}, budget=0.95))
    assert t8["end_to_end"] == PARITY_THRESHOLDS["8da8w"]["end_to_end"]
    c = coreml_thresholds("auto", "int8", plan_for({"head": "int8", "x": "fp16"}, "coreml", 0.93))
    assert c["teacher_forced"]["token_agreement"] == 0.93 and c["end_to_end"]["token_agreement"] == 0.55


@pytest.mark.parametrize("module", ["export.executorch", "export.coreml"])
@pytest.mark.parametrize("args, msg", [
    (["--quant", "auto"], "exactly one of --budget"),
    (["--budget", "0.9"], "only apply to --quant auto"),
    (["--quant", "auto", "--budget", "1.5"], "(0, 1]"),
    (["--quant", "auto", "--plan", "/no/such/plan.json"], "is not a file"),
])
def test_auto_cli_rejects_bad_arguments(tmp_path, capsys, module, args, msg):
    import importlib

    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"{module}.exporter").main([*args, "--out", str(out)])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err.strip().splitlines()[-1]
    assert not out.exists()


@pytest.fixture(scope="module")
def plan(tmp_path_factory) -> Path:
    """A real search on the default model through the CLI."""
    out = tmp_path_factory.mktemp("auto") / "plan.json"
    res = cli("-m", "quantization.auto", "--budget", "0.85", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_search_meets_the_budget_below_uniform_int8(plan):
    p = json.loads(plan.read_text())
    assert p["measured_agreement"] >= 0.85 + p["margin"]
    assert set(p["layers"].values()) <= {"8da4w", "8da8w", "fp32"} and len(p["layers"]) == 13
    assert "8da4w" in p["layers"].values()  # the budget is below uniform 8da8w's, so some int4 is affordable
    assert p["ar_weight_bytes"] < p["uniform"]["8da8w"]["bytes"]
    assert p["uniform"]["8da4w"]["agreement"] < 0.85  # uniform int4 alone misses this budget (measured 0.72)
    assert all(s["8da4w"] < s["8da8w"] for s in p["sensitivity"].values())  # int4 always noisier


@pytest.mark.slow
def test_auto_bundle_records_the_plan_and_passes_its_budget(plan, tmp_path):
    out = tmp_path / "auto"
    res = cli("-m", "export.executorch", "--quant", "auto", "--plan", str(plan), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    p = json.loads(plan.read_text())
    ar = m["quantization"]["components"]["ar_transformer"]
    assert ar["scheme"] == "auto" and ar["layers"] == {"ar." + k: v for k, v in p["layers"].items()}
    assert m["parity"]["thresholds"]["teacher_forced"]["token_agreement"] == 0.85
    report = tmp_path / "report"
    res = cli("-m", "runtime_py.parity", "--bundle", str(out), "--report", str(report))
    data = json.loads((report / "parity.json").read_text())
    assert res.returncode == 0 and data["passed"], res.stdout[-3000:]
    assert data["teacher_forced"]["values"]["token_agreement"] >= 0.85


def test_evaluate_is_exact_for_fp32_and_sees_int4(default_hart):
    from quantization.curve import measure

    ref = auto.reference(default_hart, 4.5, auto.CALIBRATION[:1])
    layers = {n: "fp32" for u in auto.units(default_hart.ar) for n in u.layers}
    assert measure(default_hart, layers, ref, 32) == {"agreement": 1.0, "worst_sqnr_db": 999.0}
    q = measure(default_hart, {**layers, "head": "8da4w"}, ref, 32)
    assert q["agreement"] < 1.0 and 10 < q["worst_sqnr_db"] < 40  # measured 0.87 / 20.3 dB
    assert type(default_hart.ar.head.weight) is torch.nn.Parameter  # restored after the measurement


@pytest.mark.parametrize("args, msg", [
    (["--budgets", "0"], "(0, 1]"),
    (["--scales", "1"], "--scales must be in [2, 10]"),
    (["--checkpoint", "/no/such/dir"], "is not a folder"),
])
def test_curve_cli_rejects_bad_arguments(tmp_path, capsys, args, msg):
    from quantization import curve

    with pytest.raises(SystemExit) as e:
        curve.main([*args, "--out", str(tmp_path / "never")])
    assert e.value.code == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_coarser_units_for_deep_models(default_hart):
    per_block = auto.units(default_hart.ar, "block")
    assert [u.name for u in per_block if u.name.startswith("block")] == ["block0", "block1"]
    grouped = auto.units(default_hart.ar, "blocks2")
    assert [u.name for u in grouped if u.name.startswith("block")] == ["blocks0-1"]
    assert sum(u.params for u in grouped) == sum(u.params for u in auto.units(default_hart.ar))
