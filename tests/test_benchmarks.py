"""Benchmarks: analytic costs agree with the spec's MAC table; host run and compare CLI behave."""

from __future__ import annotations

import json

import pytest

from benchmarks import compare, host
from benchmarks.cost import method_costs
from benchmarks.schema import SCHEMA, summarize, validate
from model.config import hart_0p7b_config

# spec §11.2: GMAC per AR step for ONE CFG row at 1024 px (head on sampled positions included)
SPEC_STEP_GMAC = [210.49, 2.83, 6.38, 11.36, 17.80, 35.06, 58.44, 105.43, 192.25, 345.53, 610.36, 1208.92,
                  2540.57, 5753.51]


def test_costs_match_spec_mac_table_for_0p7b():
    costs = method_costs(hart_0p7b_config("1024px"))
    for si, ref in enumerate(SPEC_STEP_GMAC):
        gmac_per_row = costs[f"scale_{si:02d}"]["flops"] / 2 / 2 / 1e9
        assert gmac_per_row == pytest.approx(ref, rel=0.005, abs=0.05), f"scale {si}"  # + latent update
    assert costs["vae_decoder"]["flops"] / 2e12 == pytest.approx(3.23, rel=0.01)
    # AR step reads every block, head and embedding weight: ~694M of the 696M AR params
    assert 690e6 < costs["scale_05"]["params"] < 697e6


def test_summarize_and_validate():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["min_ms"], s["median_ms"], s["p90_ms"]) == (1.0, 3.0, 5.0)
    with pytest.raises(ValueError, match="schema_version"):
        validate({"schema": SCHEMA, "schema_version": 99})
    with pytest.raises(ValueError, match="missing .targets"):
        validate({"schema": SCHEMA, "schema_version": 1, "machine": {}})


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "r.json"
    assert host.main(["--out", str(out), "--runs", "1", "--warmup", "0"]) == 0
    return out


def test_host_benchmark_eager_baseline(result):
    r = validate(json.loads(result.read_text()))
    t = r["targets"][0]
    assert t["name"] == "eager-fp32" and "scale_09" in t["stages"] and "vae_decoder" in t["stages"]
    assert r["roofline"]["gemm_gflops"] > 0 and r["roofline"]["bandwidth_gbs"] > 0
    assert all(0 < st["roofline_fraction"] for n, st in t["stages"].items() if n != "tokenize")
    assert result.with_suffix(".md").read_text().count("| scale_") == 10
    assert result.with_suffix(".png").stat().st_size > 1000


def test_compare_flags_regressions(result, tmp_path, capsys):
    slower = json.loads(result.read_text())
    slower["targets"][0]["stages"]["vae_decoder"]["median_ms"] *= 1.5
    b = tmp_path / "b.json"
    b.write_text(json.dumps(slower))
    assert compare.main([str(result), str(result), "--fail-above", "5%"]) == 0
    assert compare.main([str(result), str(b), "--fail-above", "5%"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        compare.main([str(result), str(tmp_path / "missing.json")])
    assert e.value.code == 2
