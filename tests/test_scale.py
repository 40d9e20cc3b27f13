"""benchmarks.scale: the cost-growth table, the report arithmetic and the argument errors (no export here)."""

from __future__ import annotations

import pytest

from benchmarks import scale
from model.config import total_tokens


@pytest.fixture(scope="module")
def table():
    rows = [scale.cost_row(c) for c in scale.cost_configs()]  # ~25 s: meta-device models, no allocation
    return rows, scale.cost_table(rows)


def test_costs_only_prints_three_configs(table, capsys, monkeypatch):
    by_name = {r["config"]: r for r in table[0]}
    monkeypatch.setattr(scale, "cost_row", lambda cfg: by_name[cfg.name])  # computed once, in the fixture
    assert scale.main(["--costs-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5  # header, rule, default, mid, 0.7B
    assert out[2].startswith("| default ") and out[3].startswith("| mid-d12-w768-256px ")
    assert out[4].startswith("| hart-0.7b-1024px@512px (d24, w1536, text 28L) | 512 | 10 | 2539 |")


def test_cost_rows_grow_and_match_hand_formulas(table):
    rows, _ = table
    big = rows[2]
    # KV cache: 2 CFG rows x depth x (K, V) x tokens x width x 4 bytes
    assert big["kv_bytes"] == 2 * 24 * 2 * 2539 * 1536 * 4
    assert big["tokens"] == total_tokens(scale.cost_configs()[2].ar) == 2539
    assert 690e6 < big["params"]["ar_transformer"] < 700e6  # blocks + head + embeddings + codebook
    assert 1.5e9 < big["params"]["text_encoder"] < 1.6e9  # the full Qwen2-1.5B stack in the cost table
    for key in ("flops_total", "kv_bytes"):
        assert rows[0][key] < rows[1][key] < rows[2][key], key
    for r in rows:
        w = r["weight_bytes"]
        assert w["8da4w"] < w["8da8w"] < w["fp32"]
    # fp32 weight bytes are exactly 4 bytes per parameter
    assert big["weight_bytes"]["fp32"] == 4 * sum(big["params"].values())


def test_scale_config_keeps_official_widths_with_a_short_byte_text_encoder():
    cfg = scale.scale_config("hart-0.7b-1024px", "512px", 2)
    assert cfg.text.num_layers == 2 and cfg.text.hidden_size == 1536 == cfg.ar.context_dim
    assert cfg.text.tokenizer == "byte" and cfg.text.vocab_size == 257
    assert cfg.image_size == 512 and cfg.ar.depth == 24 and cfg.ar.embed_dim == 1536
    assert scale.scale_config("hart-0.7b-1024px", None, 0).text.num_layers == 28


def test_per_scale_rows_and_memory_check():
    cfg = scale.scale_config("default", None, 2)
    from benchmarks.cost import method_costs

    costs = method_costs(cfg)
    stages = {n: {"median_ms": 10.0} for n in costs}
    rows = scale.per_scale_rows(cfg, costs, stages)
    assert [r["tokens"] for r in rows][:3] == [600, 8, 18]  # context x 2 rows, then 2 x pn²
    assert rows[-1]["kv_len"] == total_tokens(cfg.ar)
    assert rows[3]["gflops"] == pytest.approx(costs["scale_03"]["flops"] / 0.01 / 1e9)
    manifest = {"components": {"ar_transformer": {"bytes": 2**20}},
                "memory": {"peak_bytes": 3 * 2**20, "weights_bytes": 2**20, "kv_cache_bytes": 0,
                           "largest_activation_bytes": 0}}
    mem = scale.memory_check(cfg, manifest, {"peak_rss_mb": 4.0, "baseline_rss_mb": 1.0})
    assert mem["manifest_error"] == pytest.approx(-0.25)  # 3 MB estimated, 4 MB measured
    assert mem["manifest_error_above_baseline"] == pytest.approx(0.0)
    assert set(mem["per_mode_estimate"]) == {"fp32", "fp16", "int8"}
    manifest["memory"]["peak_bytes_release_after_use"] = 2 * 2**20  # a staged run is held to the staged estimate
    staged = scale.memory_check(cfg, manifest, {"peak_rss_mb": 4.0, "baseline_rss_mb": 1.0, "release_after_use": True})
    assert staged["estimate_compared"] == "peak_bytes_release_after_use"
    assert staged["manifest_error"] == pytest.approx(-0.5)


@pytest.mark.parametrize("argv, message", [
    (["--out", "x"], "exactly one of --random-init"),
    (["--random-init", "--checkpoint", ".", "--out", "x"], "exactly one of --random-init"),
    (["--random-init"], "--out DIR is required"),
    (["--checkpoint", "no/such/dir", "--out", "x"], "is not a folder"),
    (["--random-init", "--out", "x", "--runs", "-1"], "must be >= 0"),
    (["--random-init", "--config", "nope", "--out", "x"], "invalid choice"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        scale.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_skip_export_needs_a_bundle_and_bundle_dir_must_be_a_bundle(tmp_path, capsys):
    with pytest.raises(SystemExit):
        scale.parse_args(["--random-init", "--out", str(tmp_path), "--skip-export"])
    assert "has no manifest.json" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        scale.parse_args(["--random-init", "--out", str(tmp_path), "--bundle-dir", str(tmp_path / "b")])
    assert "is not a bundle folder" in capsys.readouterr().err
    a = scale.parse_args(["--random-init", "--out", str(tmp_path)])
    assert a.bundle_dir == tmp_path / "bundle"


def test_skip_export_reuses_the_export_record_only_for_the_same_bundle(tmp_path):
    import json

    assert scale.previous_export(tmp_path, tmp_path / "bundle") is None
    (tmp_path / "export-spec.json").write_text(json.dumps({"bundle": str(tmp_path / "bundle")}))
    (tmp_path / "export.json").write_text(json.dumps({"export_seconds": 12.5}))
    assert scale.previous_export(tmp_path, tmp_path / "bundle") == {"export_seconds": 12.5}
    assert scale.previous_export(tmp_path, tmp_path / "other") is None
