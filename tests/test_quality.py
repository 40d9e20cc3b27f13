"""benchmarks.quality: prompt set, analyser verdicts, image metrics, outputs and CLI errors.

The model here is the seeded random one (saved as a checkpoint, so the test does not depend on which
model is the default): it draws noise, so accuracies are low; what is tested is structure and the
invariants that hold for any model. The real fp32 bundle run is marked slow (it exports a program).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import quality
from benchmarks.quality_report import HEADER_H, LABEL_W, PAD, TILE
from benchmarks.quality_score import (
    INF_DB,
    SSIM_RADIUS,
    SSIM_SIGMA,
    attribute_values,
    luma,
    prompt_keys,
    psnr,
    ssim,
)
from data.analyse import ATTRIBUTES
from data.world import all_single_keys, split_of

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeded_ckpt(tmp_path_factory) -> Path:
    from model import save
    from model.build import build
    from model.config import default_config

    return save(build(default_config()), tmp_path_factory.mktemp("seeded") / "ckpt")


@pytest.fixture(scope="module")
def result(seeded_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quality") / "q"
    assert quality.main(["--checkpoint", str(seeded_ckpt), "--prompts", "2", "--seeds", "1", "--out", str(out),
                         "--quiet"]) == 0
    return out


def test_prompt_set_is_fixed_held_out_and_balanced():
    keys = prompt_keys(64)
    assert keys == prompt_keys(64) and prompt_keys(10) == keys[:10]  # deterministic; N extends a smaller N
    assert len(set(keys)) == 64 and all(split_of(k) == "heldout" and len(k) == 2 for k in keys)
    assert set(keys) <= set(all_single_keys("heldout"))
    for a in ATTRIBUTES:
        counts = Counter(attribute_values(k)[a] for k in keys)
        assert max(counts.values()) - min(counts.values()) <= 1, (a, counts)
    with pytest.raises(ValueError):
        prompt_keys(len(all_single_keys("heldout")) + 1)


def _ssim_direct(a_HW3: np.ndarray, b_HW3: np.ndarray) -> float:
    """SSIM written the slow way: a 2-D Gaussian window placed at every valid position."""
    t = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1)
    g = np.exp(-t ** 2 / (2 * SSIM_SIGMA ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    x, y = luma(a_HW3), luma(b_HW3)
    n, vals = len(t), []
    for i in range(x.shape[0] - n + 1):
        for j in range(x.shape[1] - n + 1):
            px, py = x[i:i + n, j:j + n], y[i:i + n, j:j + n]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_and_psnr():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (19, 23, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_ssim_direct(a, b), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, b) == pytest.approx(ssim(b, a)) and ssim(a, b) < 1
    assert ssim(a, 255 - a) < 0  # inverted contrast: negative structure term
    assert psnr(a, a) == INF_DB
    c = a.copy()
    c[0, 0, 0] ^= 1  # one channel of one pixel off by one: MSE = 1 / (19·23·3)
    assert psnr(a, c) == pytest.approx(10 * np.log10(255 ** 2 * 19 * 23 * 3))


def test_outputs_and_invariants(result):
    r = json.loads((result / "quality.json").read_text())
    assert r["schema"] == "hart-mobile/quality" and r["machine"]["cores"] >= 1
    assert r["targets"] == ["eager"] and r["settings"]["seeds"] == [1] and len(r["prompts"]) == 2
    gt = r["ground_truth"]
    assert gt["accuracy"] >= quality.GT_THRESHOLD and gt["images"] == 2
    e = r["eager"]
    assert 0 <= e["accuracy"] <= 1 and e["images"] == len(e["verdicts"]) == 2
    assert e["accuracy"] == pytest.approx(np.mean(list(e["per_attribute"].values())))
    assert e["accuracy"] == pytest.approx(np.mean([v["correct"][a] for v in e["verdicts"] for a in ATTRIBUTES]))
    for v in e["verdicts"]:  # a verdict is correct exactly when the analyser's value is the caption's
        truth = dict(zip(("background", "size", "colour", "shape", "position"), r["prompts"][v["prompt"]]["key"]))
        assert v["correct"] == {a: v["predicted"][a] == truth[a] for a in ATTRIBUTES}
    md = (result / "quality.md").read_text()
    assert "| ground truth | **1.000**" in md and "| eager |" in md
    sheet = Image.open(result / "contact_sheet.png")
    assert sheet.size == (LABEL_W + 2 * (TILE + PAD), HEADER_H + 2 * (TILE + PAD))  # 2 rows × 2 prompts
    assert not [p for p in result.iterdir() if p.name.startswith(".")]  # no temp files left


def test_eager_against_itself_agrees(seeded_ckpt):
    from runtime_py.generate import eager_pipeline

    pipes = [eager_pipeline(seeded_ckpt, None, None, False, None)[0] for _ in range(2)]  # two separate loads
    scores, images = quality.evaluate([("eager", {}, pipes[0]), ("again", {}, pipes[1])], prompt_keys(1), [3],
                                      4.5, progress=False)
    v = scores["again"]["vs_eager"]
    assert v["agreement"] == 1.0 and set(v["per_attribute_agreement"].values()) == {1.0}
    assert v["psnr_db"]["min"] == INF_DB and v["ssim"]["min"] == pytest.approx(1.0)
    assert scores["again"]["accuracy"] == scores["eager"]["accuracy"]
    assert images["eager"][0].shape == (256, 256, 3) and images["eager"][0].dtype == np.uint8


def test_broken_analyser_fails_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(quality, "GT_THRESHOLD", 1.01)  # no analyser can reach it
    out = tmp_path / "q"
    assert quality.main(["--prompts", "2", "--out", str(out), "--quiet"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "ground-truth renders" in err[0] and "data/analyse.py" in err[0]
    assert not out.exists()


def _bad_args(tmp_path: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "afile").write_text("x")
    for d in ("a/bundle", "b/bundle", "eager"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "manifest.json").write_text("{}")
    out = str(tmp_path / "q")
    return [
        (["--prompts", "0", "--out", out], "--prompts must be in [1, 153]"),
        (["--prompts", "154", "--out", out], "--prompts must be in [1, 153]"),
        (["--seeds", "0", "--out", out], "--seeds must be in"),
        (["--cfg", "nan", "--out", out], "not a finite number"),
        (["--prompts", "two", "--out", out], "invalid int value"),
        ([], "--out"),
        (["--out", str(tmp_path / "afile")], "is an existing file"),
        (["--bundle", str(tmp_path / "none"), "--out", out], "has no manifest.json"),
        (["--bundle", str(tmp_path / "a/bundle"), "--bundle", str(tmp_path / "b/bundle"), "--out", out],
         "given twice"),
        (["--bundle", str(tmp_path / "eager"), "--out", out], "is reserved"),
        (["--text-encoder", str(tmp_path), "--out", out], "--text-encoder goes with --checkpoint"),
    ]


def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys):
    for argv, needle in _bad_args(tmp_path):
        with pytest.raises(SystemExit) as e:
            quality.main(argv)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert e.value.code == 2 and len(err) == 1 and needle in err[0], (argv, err)
        assert not (tmp_path / "q").exists()


def test_cli_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--help"], cwd=ROOT, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0 and "--bundle" in r.stdout and "--prompts" in r.stdout
    r = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--seeds", "-1", "--out", str(tmp_path / "q")],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "error: --seeds" in r.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_fp32_bundle_matches_eager(seeded_ckpt, tmp_path):
    bundle = tmp_path / "executorch-fp32"
    r = subprocess.run([sys.executable, "-m", "export.executorch", "--checkpoint", str(seeded_ckpt), "--quant", "fp32",
                        "--out", str(bundle), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "q"
    assert quality.main(["--checkpoint", str(seeded_ckpt), "--bundle", str(bundle), "--prompts", "2", "--seeds", "2",
                         "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "quality.json").read_text())
    assert res["targets"] == ["eager", "executorch-fp32"]
    b = res["executorch-fp32"]
    assert b["backend"] == "executorch" and b["images"] == 4
    assert b["vs_eager"]["agreement"] == 1.0 and b["accuracy"] == res["eager"]["accuracy"]
    assert b["vs_eager"]["psnr_db"]["min"] >= 40 and b["vs_eager"]["ssim"]["min"] >= 0.99
    assert "| executorch-fp32 | **1.000**" in (out / "quality.md").read_text()
    assert Image.open(out / "contact_sheet.png").size[1] == HEADER_H + 3 * (TILE + PAD)
