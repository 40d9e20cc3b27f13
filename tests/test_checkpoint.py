"""Official-layout writer/loader: round trip, variant detection, and every loader error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import model
from model.checkpoint import CheckpointError
from model.stages import method_specs
from runtime_py.pipeline import EagerBackend, Pipeline


def generate(h, seed=3):
    return Pipeline(method_specs(h), EagerBackend(h), h.text.tokenizer).generate("a red fox", seed, 4.5)


@pytest.fixture(scope="module")
def saved(default_hart, tmp_path_factory):
    return model.save(default_hart, tmp_path_factory.mktemp("ckpt") / "hart-default")


def test_round_trip_identical_outputs(default_hart, saved):
    loaded = model.load(saved)
    assert loaded.cfg.ar == default_hart.cfg.ar and loaded.cfg.vae == default_hart.cfg.vae
    a, b = generate(default_hart), generate(loaded)
    assert torch.equal(a.image, b.image)
    assert all(torch.equal(a.tokens[k], b.tokens[k]) for k in a.tokens)
    names = {p.name for p in (saved / "llm").iterdir()}
    assert {"config.json", "ema_model.bin", "model.safetensors"} <= names
    sd = torch.load(saved / "llm" / "ema_model.bin", weights_only=True)
    assert "attn_bias_for_masking" in sd and "lvl_1L" in sd and "blocks.0.attn.zero_k_bias" in sd


@pytest.mark.parametrize("variant", ["full_adaln_avg", "shared_adaln", "l2norm_ctxnorm_table_gpt2mlp"])
def test_variants_detected_from_keys(tmp_path, variant):
    from tests.test_model import variant_model

    h = variant_model(variant)
    loaded = model.load(model.save(h, tmp_path / variant))
    assert loaded.cfg.ar == h.cfg.ar
    assert torch.equal(generate(h, 1).image, generate(loaded, 1).image)


def copy_ckpt(saved, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(saved, dst)
    return dst


def edit_ema(path, fn):
    f = path / "llm" / "ema_model.bin"
    sd = torch.load(f, weights_only=True)
    fn(sd)
    torch.save(sd, f)


def expect_error(path, *needles):
    with pytest.raises(CheckpointError) as e:
        model.load(path)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_missing_key_is_named(saved, tmp_path):
    p = copy_ckpt(saved, tmp_path)
    edit_ema(p, lambda sd: sd.pop("blocks.1.ffn.up_proj.weight"))
    expect_error(p, "missing key 'blocks.1.ffn.up_proj.weight'", "ema_model.bin")


def test_unexpected_key_is_named(saved, tmp_path):
    p = copy_ckpt(saved, tmp_path)
    edit_ema(p, lambda sd: sd.__setitem__("blocks.0.attn.extra", torch.zeros(3)))
    expect_error(p, "unexpected key 'blocks.0.attn.extra'", "ema_model.bin")


def test_shape_mismatch_is_named(saved, tmp_path):
    p = copy_ckpt(saved, tmp_path)
    edit_ema(p, lambda sd: sd.__setitem__("head.bias", torch.zeros(7)))
    expect_error(p, "shape mismatch for 'head.bias'", "(7,)")


def test_vae_missing_key_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    p = copy_ckpt(saved, tmp_path)
    f = p / "tokenizer" / "model.safetensors"
    sd = load_file(f)
    sd.pop("vae.decoder.conv_out.bias")
    save_file(sd, f)
    expect_error(p, "missing key 'vae.decoder.conv_out.bias'", "model.safetensors")


def test_config_disagreeing_with_weights(saved, tmp_path):
    p = copy_ckpt(saved, tmp_path)
    cfg = json.loads((p / "llm" / "config.json").read_text())
    cfg["shared_aln"] = True
    (p / "llm" / "config.json").write_text(json.dumps(cfg))
    expect_error(p, "shared_aln=True", "weights say False")


def test_missing_folder_and_bad_json(saved, tmp_path):
    expect_error(tmp_path / "nope", "does not exist")
    p = copy_ckpt(saved, tmp_path)
    shutil.rmtree(p / "llm")
    expect_error(p, "missing", "llm/config.json")
    (p / "tokenizer" / "config.json").write_text("{not json")
    expect_error(p, "invalid JSON", "tokenizer/config.json")


def test_pickled_objects_are_refused(saved, tmp_path):
    """weights_only=True: a file that needs arbitrary unpickling is rejected, never executed."""
    p = copy_ckpt(saved, tmp_path)
    import argparse

    torch.save({"payload": argparse.Namespace(x=1)}, p / "llm" / "ema_model.bin")
    expect_error(p, "not a loadable weights-only state dict")


def test_official_fixture_loads_without_text_encoder(official_dir):
    h = model.load(official_dir)
    assert h.text is None and h.cfg.ar.context_token == 16


def test_vae_norm_groups_round_trip_and_validation(tmp_path):
    """norm_groups (not an official key) survives save/load and changes the decoder; a value that does
    not divide the channel widths is refused by name."""
    from dataclasses import replace

    from model.build import build
    from model.config import default_config

    base = build(default_config())
    cfg = replace(base.cfg, vae=replace(base.cfg.vae, norm_groups=1))
    hart = build(cfg)
    hart.text = base.text
    path = model.save(hart, tmp_path / "g1")
    assert json.loads((path / "tokenizer" / "config.json").read_text())["norm_groups"] == 1
    back = model.load(path)
    assert back.cfg.vae.norm_groups == 1 and back.vae.decoder.norm_out.num_groups == 1
    z = torch.randn(1, cfg.vae.z_channels, 4, 4)
    assert torch.equal(back.vae.fhat_to_img(z), hart.vae.fhat_to_img(z))
    assert not torch.allclose(base.vae.fhat_to_img(z), hart.vae.fhat_to_img(z))  # groups matter
    cfg_file = path / "tokenizer" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "norm_groups": 3}))
    with pytest.raises(CheckpointError, match="norm_groups 3"):
        model.load(path)
