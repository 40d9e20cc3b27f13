"""Per-scale preview (model/preview.py): the least-squares fit, storage next to a checkpoint, the manifest
section and its schema check, `generate --preview`, and the app cores' fixture (docs/preview_golden.json)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from export import bundle as fmt
from model.build import build
from model.checkpoint import load, save
from model.errors import UserError
from model.preview import (
    FILE,
    PROMPTS,
    Projection,
    fit_preview,
    load_preview,
    preview_problem,
    preview_rgb,
    project,
    scale_latent,
    upsample_nearest,
)
from runtime_py.bundle import DIGEST_FILE, digest_line
from runtime_py.generate import main as generate_main
from runtime_py.manifest_schema import manifest_problem
from runtime_py.preview_fit import fit_from_decoder, sampled_latents
from train.__main__ import main as train_main
from train.common import new_model
from train.plan import tiny_plan

_spec = importlib.util.spec_from_file_location("make_preview_golden",
                                               Path(__file__).resolve().parents[1] / "tools" / "make_preview_golden.py")
make_preview_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_preview_golden)


@pytest.fixture(scope="module")
def tiny():
    """A seeded 32 px model on the (1, 2, 4) schedule with a text encoder: fast to sample and decode."""
    return build(tiny_plan().model, seed=3)


@pytest.fixture(scope="module")
def tiny_proj(tiny):
    return fit_from_decoder(tiny, n_fit=2, n_heldout=1)


def test_fit_recovers_a_known_affine_map():
    g = torch.Generator().manual_seed(0)
    C, G, up = 6, 5, 4
    lat = torch.randn(10, C, G, G, generator=g)
    w, b = 0.04 * torch.randn(3, C, generator=g), torch.tensor([0.4, 0.5, 0.6])
    rgb = torch.einsum("oc,bchw->bohw", w, lat) + b[None, :, None, None]
    img = rgb.repeat_interleave(up, dim=2).repeat_interleave(up, dim=3)  # area-pooling gives rgb back
    fw, fb = fit_preview(lat, img)
    torch.testing.assert_close(fw, w, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fb, b, atol=1e-5, rtol=1e-4)
    noisy = fit_preview(lat, (img + 0.3).clamp(0, 1))  # a different target gives a different map
    assert not torch.allclose(noisy[1], b, atol=1e-2)


def test_preview_rgb_shape_range_and_nearest_rule():
    lat = torch.randn(2, 4, 3, 3) * 5
    w, b = torch.randn(3, 4), torch.zeros(3)
    out = preview_rgb(lat, w, b, 12)
    assert out.shape == (3, 12, 12) and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(out, F.interpolate(project(lat[:1], w, b), size=12, mode="nearest")[0])
    idx = torch.arange(7) * 3 // 7  # non-integer ratio: floor(dst * 3 / 7)
    torch.testing.assert_close(upsample_nearest(torch.arange(3.0)[None, None, None].expand(1, 1, 3, 3), 7)[0, 0, 0],
                               idx.float())


def test_last_scale_latent_is_f_hat_plus_e_last():
    f_hat, e = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 4)
    got = scale_latent({"idx": torch.zeros(1, 4), "e_last": e, "z": torch.zeros(2, 4)}, {"f_hat": f_hat})
    torch.testing.assert_close(got[0, :, 1, 0], f_hat[0, :, 1, 0] + e[0, 2])
    assert scale_latent({"x": e}, {"f_hat": f_hat}) is None


def test_pipeline_reports_one_latent_per_scale(tiny):
    (lats,) = sampled_latents(tiny, ["a red circle"], [4])
    assert len(lats) == tiny.num_scales and all(t.shape == (1, tiny.cfg.ar.cvae, tiny.G, tiny.G) for t in lats)
    assert not torch.equal(lats[0], lats[-1])  # the latent changes from scale to scale


def test_decoder_fallback_fits_its_target(tiny, tiny_proj):
    """The fallback is the least-squares map from the model's own per-scale latents to their decodings
    (rebuilt here from the same prompts and seeds), beats the mean colour on them, and records a held-out PSNR."""
    assert tiny_proj.fit["method"] == "decoder-samples" and math.isfinite(tiny_proj.fit["psnr_db"])
    assert tiny_proj.weight.shape == (3, tiny.cfg.ar.cvae) and tiny_proj.weight.abs().sum() > 0
    lat = torch.cat([torch.cat(s) for s in sampled_latents(tiny, list(PROMPTS[:2]), [1, 2])])
    img = (tiny.vae.fhat_to_img(lat) + 1) / 2
    w, b = fit_preview(lat, img)
    torch.testing.assert_close(w, tiny_proj.weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b, tiny_proj.bias, atol=1e-4, rtol=1e-4)
    pooled = F.adaptive_avg_pool2d(img, tiny.G)
    err = (project(lat, w, b) - pooled).pow(2).mean()
    assert err < (pooled - pooled.mean(dim=(0, 2, 3), keepdim=True)).pow(2).mean()


def test_checkpoint_keeps_preview_out_of_the_state_dict(tmp_path, tiny, tiny_proj):
    tiny.preview = tiny_proj
    try:
        save(tiny, tmp_path / "ck")
    finally:
        tiny.preview = None
    assert (tmp_path / "ck" / FILE).is_file()
    hart = load(tmp_path / "ck")
    torch.testing.assert_close(hart.preview.weight, tiny_proj.weight)
    assert not any("preview" in k for k in hart.state_dict())
    d = json.loads((tmp_path / "ck" / FILE).read_text())
    assert d["grid"] == tiny.G and d["fit"]["method"] == "decoder-samples"
    d["weight"] = d["weight"][:2]
    (tmp_path / "ck" / FILE).write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"weight must be 3 rows"):
        load(tmp_path / "ck")
    assert load_preview(tmp_path / "nothing-here") is None


def test_train_stage_preview_fits_on_renders(tmp_path):
    """`python -m train --stage preview` on a checkpoint with a VAE encoder: world renders, held-out PSNR."""
    plan = tiny_plan()
    save(new_model(plan.model, 1).eval().requires_grad_(False), tmp_path / "model")
    assert train_main(["--stage", "preview", "--out", str(tmp_path), "--tiny", "--quiet"]) == 0
    hart = load(tmp_path / "model")
    assert hart.preview.fit["method"] == "encoder-renders" and hart.preview.fit["heldout"] == 8
    assert math.isfinite(hart.preview.fit["psnr_db"]) and math.isfinite(hart.preview.fit["psnr_db_continuous"])


@pytest.mark.parametrize("fitted", [True, False])
def test_generate_writes_one_png_per_scale_and_a_gif(tmp_path, tiny, tiny_proj, fitted, capsys):
    tiny.preview = tiny_proj if fitted else None
    try:
        save(tiny, tmp_path / "ck")
    finally:
        tiny.preview = None
    rc = generate_main(["--checkpoint", str(tmp_path / "ck"), "--prompt", "a red circle", "--quiet",
                        "--out", str(tmp_path / "x.png"), "--preview", str(tmp_path / "pv")])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "pv").iterdir())
    assert names == sorted([f"scale_{i:02d}.png" for i in range(tiny.num_scales)] + ["preview.gif"])
    gif = Image.open(tmp_path / "pv" / "preview.gif")
    assert gif.n_frames == tiny.num_scales + 1 and gif.size == (tiny.cfg.image_size,) * 2
    last = np.asarray(Image.open(tmp_path / "pv" / f"scale_{tiny.num_scales - 1:02d}.png"))
    assert last.shape == (tiny.cfg.image_size, tiny.cfg.image_size, 3)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folders left
    assert "preview:" in capsys.readouterr().out


def _manifest(preview) -> dict:
    f_hat = {"name": "f_hat", "shape": [1, 4, 3, 3], "dtype": "float32"}
    return {"format": "hart-mobile-bundle", "schema_version": 1, "min_runtime_version": 1, "backend": "executorch",
            "call_order": ["scale_00"], "methods": [{"name": "scale_00", "component": "ar_transformer",
                                                     "file": "a.pte", "inputs": [], "outputs": [f_hat]}],
            "tokenizer": {"file": "tokenizer.json", "max_tokens": 8, "pad_token": "<pad>"},
            "files": {"a.pte": {"bytes": 1, "sha256": "0" * 64}}, "preview": preview}


def test_manifest_preview_section_is_schema_checked(tiny_proj):
    good = Projection(torch.ones(3, 4), torch.zeros(3)).to_json(grid=3)
    assert manifest_problem(_manifest(good), ()) is None
    bad = {"weight shape": {**good, "weight": [[1.0] * 4] * 2},
           "channels vs f_hat": {**good, "latent_channels": 5, "weight": [[1.0] * 5] * 3},
           "NaN": {**good, "bias": [0.0, float("nan"), 0.0]}, "grid": {**good, "grid": 4},
           "not an object": [1, 2]}
    for what, p in bad.items():
        assert manifest_problem(_manifest(p), ()) is not None, what
    assert "f_hat" in preview_problem(bad["channels vs f_hat"], 4)


def test_bad_preview_in_a_bundle_exits_2(tmp_path, capsys):
    bad = Projection(torch.ones(3, 4), torch.zeros(3)).to_json(grid=3)
    bad["weight"] = [[1.0, 2.0]] * 3
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest(bad)))
    (tmp_path / DIGEST_FILE).write_bytes(digest_line((tmp_path / "manifest.json").read_bytes()))
    rc = generate_main(["--bundle", str(tmp_path), "--prompt", "x", "--preview", str(tmp_path / "pv")])
    err = capsys.readouterr().err
    assert rc == 2 and "preview.weight" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "pv").exists()


def test_exporters_manifest_section(tiny, tiny_proj):
    """What every exporter writes: the model's fitted projection, else a decoder fit made now."""
    tiny.preview = tiny_proj
    try:
        sec = fmt.preview_info(tiny)
    finally:
        tiny.preview = None
    assert preview_problem(sec, tiny.cfg.ar.cvae, tiny.G) is None and sec["weight"] == tiny_proj.weight.tolist()
    from model.build import with_patch_nums
    from model.memory import with_memory_mode

    tiny.preview = tiny_proj
    try:  # the projection is per latent pixel: it survives schedule and memory-mode changes (with_config)
        assert with_memory_mode(with_patch_nums(tiny, (1, 2)), "int8", 0).preview is tiny_proj
    finally:
        tiny.preview = None
    fresh = fmt.preview_info(tiny)
    assert fresh["fit"]["method"] == "decoder-samples" and preview_problem(fresh, tiny.cfg.ar.cvae, tiny.G) is None


def test_app_fixture_is_current_and_matches_model_preview():
    """docs/preview_golden.json (read by the Kotlin and Swift core tests) is what the tool writes, and its
    expected pixels are what model/preview.py computes."""
    assert make_preview_golden.OUT.read_text() == make_preview_golden.text(), \
        "stale: run python tools/make_preview_golden.py"
    for c in json.loads(make_preview_golden.OUT.read_text())["cases"]:
        f_hat = torch.tensor(c["f_hat"]).reshape(c["f_hat_shape"])
        e_last = None if c["e_last"] is None else torch.tensor(c["e_last"]).reshape(c["e_last_shape"])
        outs = {"f_hat": f_hat} if e_last is None else {"e_last": e_last}
        lat = scale_latent(outs, {"f_hat": f_hat})
        w, b = torch.tensor(c["weight"]), torch.tensor(c["bias"])
        torch.testing.assert_close(project(lat, w, b).reshape(-1), torch.tensor(c["rgb_grid"]), atol=1e-5, rtol=0)
        u8 = (preview_rgb(lat, w, b, c["size"]).permute(1, 2, 0) * 255).to(torch.uint8)
        rgba = torch.cat([u8, torch.full((c["size"], c["size"], 1), 255, dtype=torch.uint8)], dim=2).reshape(-1)
        assert (rgba.int() - torch.tensor(c["rgba"])).abs().max() <= 1
