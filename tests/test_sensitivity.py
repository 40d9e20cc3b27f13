"""Per-group quantization sensitivity: real torchao quantization, teacher-forced logits vs fp32."""

from __future__ import annotations

import pytest

from quantization import sensitivity


@pytest.fixture(scope="module")
def results(default_hart):
    return {r: sensitivity.run(default_hart, r, 32, "a lighthouse at dusk", [1], 4.5) for r in ("8da4w", "8da8w")}


@pytest.mark.slow
def test_groups_cover_every_quantizable_linear(default_hart):
    g = sensitivity.groups(default_hart.ar, 32)
    names = set(sensitivity.linear_names(default_hart.ar, 32))
    blocks = {n for k, v in g.items() if k.startswith("block") and k[5:].isdigit() for n in v}
    assert blocks | set(g["head"]) | set(g["context_embed"]) == names
    assert not any(n.startswith(("diffloss.", "lvl_embed.")) for n in names)


@pytest.mark.slow
def test_sensitivity_is_measured_and_ranked(results, tmp_path):
    for recipe, res in results.items():
        groups = res["groups"]
        assert res["ranking"][0] != "all" and len(res["ranking"]) == len(groups) - 1
        mins = [groups[k]["min_sqnr_db"] for k in res["ranking"]]
        assert mins == sorted(mins)
        # quantizing everything is worse than quantizing any single group
        assert groups["all"]["min_sqnr_db"] < min(mins), recipe
        assert all(len(g["sqnr_db"]) == 10 for g in groups.values())
    # 8-bit weights lose far less than 4-bit weights (measured: ~12.6 vs ~30+ dB on the default model)
    assert results["8da8w"]["groups"]["all"]["min_sqnr_db"] > results["8da4w"]["groups"]["all"]["min_sqnr_db"] + 10
    md = sensitivity.markdown(results["8da4w"])
    assert md.count("\n| ") >= len(results["8da4w"]["groups"])
    sensitivity.chart(results["8da4w"], tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
