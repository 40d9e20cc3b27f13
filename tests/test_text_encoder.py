"""Tests for model/text_encoder.py and model/tokenizer.py (spec §3 semantics, loader, export)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.text_encoder import (
    SYSTEM_PROMPT,
    TextConfig,
    TextEncoder,
    init_text_encoder,
    load_text_encoder,
    save_text_encoder,
)
from model.tokenizer import PromptTokenizer, byte_level_tokenizer

TINY = TextConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
PROMPTS = [
    "a photo of a cat",
    "",
    "Ünïcödé prompt 🙂 with <|endoftext|> inside",
    "a very long prompt, " * 40,  # > 300 bytes: truncated
]


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    return init_text_encoder(TINY, seed=0)


@pytest.fixture(scope="module")
def enc_nosys() -> TextEncoder:
    return init_text_encoder(replace(TINY, use_system_prompt=False), seed=0)


def _ids(enc: TextEncoder, prompts: list[str]) -> torch.Tensor:
    return torch.cat([enc.tokenizer.encode(p)[0] for p in prompts])


def _read(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# ----------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("fixture", ["enc", "enc_nosys"])
def test_prefix_cached_forward_matches_reference(fixture: str, request: pytest.FixtureRequest) -> None:
    e: TextEncoder = request.getfixturevalue(fixture)
    ids = _ids(e, PROMPTS)
    with torch.no_grad():
        fast = e(ids)
        ref = e.forward_reference(ids)
        single = torch.cat([e(ids[i : i + 1]) for i in range(len(PROMPTS))])
    assert fast.shape == (len(PROMPTS), 300, TINY.hidden_size) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(single, fast, atol=1e-5, rtol=1e-5)  # batch rows independent
    assert torch.isfinite(fast).all()


def test_system_prompt_setup(enc: TextEncoder, enc_nosys: TextEncoder) -> None:
    assert len(SYSTEM_PROMPT) == 705
    assert SYSTEM_PROMPT.startswith("Given a user prompt") and SYSTEM_PROMPT.endswith("User Prompt:\n")
    # byte tokenizer: 705 single-byte chars truncated to max_tokens like HART's tokenize_fn
    assert enc.num_prefix_tokens == 300 and enc.sys_ids.tolist() == list(SYSTEM_PROMPT.encode())[:300]
    assert enc.prefix_k.shape == (2, 1, 2, 300, 16)
    assert enc_nosys.num_prefix_tokens == 0
    ids = _ids(enc, PROMPTS[:1])
    with torch.no_grad():
        assert not torch.allclose(enc(ids), enc_nosys(ids), atol=1e-3)  # same weights, prefix matters


def test_pad_positions_are_real_and_prompt_dependent(enc: TextEncoder) -> None:
    ids = _ids(enc, ["a cat", "a dog"])
    n = len("a cat")
    with torch.no_grad():
        out = enc(ids)
    pads = out[:, n:]
    assert pads.abs().mean(-1).gt(0.1).all()  # real hidden states, not zeroed
    torch.testing.assert_close(out[0, :2], out[1, :2], atol=0, rtol=0)  # shared "a " prefix: causal
    assert not torch.allclose(out[0, n:], out[1, n:], atol=1e-4)  # pads see the prompt
    assert not torch.allclose(out[0, n - 1], out[1, n - 1], atol=1e-4)


def test_causal_property(enc: TextEncoder) -> None:
    ids, _ = enc.tokenizer.encode("the quick brown fox jumps")
    j = 10
    changed = ids.clone()
    changed[0, j] = (int(ids[0, j]) + 1) % 256
    late_pad = ids.clone()
    late_pad[0, 200] = ord("x")  # a pad slot becomes a real token
    with torch.no_grad():
        a, b, c = enc(ids), enc(changed), enc(late_pad)
    torch.testing.assert_close(a[:, :j], b[:, :j], atol=0, rtol=0)
    assert (a[0, j:] - b[0, j:]).abs().amax(-1).gt(1e-4).all()
    torch.testing.assert_close(a[:, :200], c[:, :200], atol=0, rtol=0)
    assert not torch.allclose(a[:, 200:], c[:, 200:], atol=1e-4)


def test_shorter_static_length_and_too_long(enc: TextEncoder) -> None:
    ids = _ids(enc, ["hello"])[:, :64]
    with torch.no_grad():
        torch.testing.assert_close(enc(ids), enc.forward_reference(ids), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc(ids), enc(_ids(enc, ["hello"]))[:, :64], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_tokens"):
        enc(torch.zeros(1, 301, dtype=torch.long))


def test_hf_state_dict_names(enc: TextEncoder) -> None:
    names = set(enc.state_dict())
    expect = {"embed_tokens.weight", "norm.weight"}
    for i in range(TINY.num_layers):
        p = f"layers.{i}."
        expect |= {p + f"self_attn.{n}_proj.{w}" for n in "qkv" for w in ("weight", "bias")}
        expect |= {p + n + ".weight" for n in ("self_attn.o_proj", "input_layernorm", "post_attention_layernorm")}
        expect |= {p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")}
    assert names == expect  # caches are non-persistent buffers


def test_init_is_deterministic() -> None:
    a, b, c = (init_text_encoder(TINY, s).state_dict() for s in (3, 3, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.self_attn.q_proj.weight"], c["layers.0.self_attn.q_proj.weight"])
    norm = a["layers.1.input_layernorm.weight"]
    assert (norm - 1).abs().mean() < 0.2 and not torch.equal(norm, torch.ones_like(norm))


def test_refresh_prefix_cache_follows_weights() -> None:
    e = init_text_encoder(TINY, seed=1)
    ids = _ids(e, ["refresh"])
    with torch.no_grad():
        e.layers[0].self_attn.k_proj.weight.mul_(1.5)
        stale = e(ids)
        e.refresh_prefix_cache()
        fresh = e(ids)
        ref = e.forward_reference(ids)
    torch.testing.assert_close(fresh, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stale, ref, atol=1e-4)


def test_strict_export(enc: TextEncoder) -> None:
    ids = _ids(enc, ["export me"])
    assert ids.shape == (1, 300)
    ep = torch.export.export(enc, (ids,), strict=True)
    other = _ids(enc, ["a different prompt for the exported graph"])
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(other), enc(other), atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- save / load


def test_save_load_round_trip(enc: TextEncoder, tmp_path: Path) -> None:
    save_text_encoder(enc, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["num_hidden_layers"] == 2 and cfg["num_key_value_heads"] == 2
    assert all(k.startswith("model.") for k in _read(tmp_path / "model.safetensors"))
    loaded = load_text_encoder(tmp_path)
    assert loaded.cfg == enc.cfg
    ids = _ids(enc, PROMPTS)
    with torch.no_grad():
        assert torch.equal(loaded(ids), enc(ids))
    nosys = load_text_encoder(tmp_path, use_system_prompt=False)
    assert nosys.num_prefix_tokens == 0


def test_sharded_qwen2_vl_layout(enc: TextEncoder, tmp_path: Path) -> None:
    """Official Qwen2-VL layout: qwen2_vl config with nested text fields, 2 shards, lm_head + vision keys."""
    save_text_encoder(enc, tmp_path)
    tensors = _read(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(tensors)
    half = len(keys) // 2
    shard1 = {k: tensors[k] for k in keys[:half]}
    shard2 = {k: tensors[k] for k in keys[half:]}
    shard2["lm_head.weight"] = torch.zeros(3, 3)
    shard2["visual.blocks.0.attn.qkv.weight"] = torch.zeros(2, 2)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, part in zip(names, (shard1, shard2), strict=True):
        save_file(part, str(tmp_path / name))
    weight_map = {k: names[0] for k in shard1} | {k: names[1] for k in shard2}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    text_fields = {k: cfg.pop(k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size")}
    cfg |= {"model_type": "qwen2_vl", "text_config": text_fields}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = load_text_encoder(tmp_path)
    ids = _ids(enc, PROMPTS[:2])
    with torch.no_grad():
        assert torch.equal(loaded(ids), enc(ids))

    # a key listed in the index but absent from its shard names that shard
    save_file({k: v for k, v in shard2.items() if k != "model.norm.weight"}, str(tmp_path / names[1]))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.norm\.weight'.*model-00002-of-00002"):
        load_text_encoder(tmp_path)


def _corrupt(tmp_path: Path, enc: TextEncoder, edit) -> None:
    save_text_encoder(enc, tmp_path)
    tensors = _read(tmp_path / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(tmp_path / "model.safetensors"))


def test_loader_missing_key(enc: TextEncoder, tmp_path: Path) -> None:
    _corrupt(tmp_path, enc, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    msg = r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'.*model\.safetensors"
    with pytest.raises(ValueError, match=msg):
        load_text_encoder(tmp_path)


def test_loader_unexpected_key(enc: TextEncoder, tmp_path: Path) -> None:
    _corrupt(tmp_path, enc, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(1)}))
    msg = r"unexpected tensor 'model\.layers\.0\.extra\.weight'.*model\.safetensors"
    with pytest.raises(ValueError, match=msg):
        load_text_encoder(tmp_path)


def test_loader_shape_mismatch(enc: TextEncoder, tmp_path: Path) -> None:
    _corrupt(tmp_path, enc, lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    msg = r"shape mismatch for 'model\.norm\.weight'.*model\.safetensors.*\[65\].*\[64\]"
    with pytest.raises(ValueError, match=msg):
        load_text_encoder(tmp_path)


def test_loader_ignores_lm_head_and_vision(enc: TextEncoder, tmp_path: Path) -> None:
    extra = {"lm_head.weight": torch.zeros(257, 64), "visual.merger.mlp.0.weight": torch.zeros(4, 4)}
    _corrupt(tmp_path, enc, lambda t: t.update(extra))
    assert load_text_encoder(tmp_path).cfg == enc.cfg


def test_loader_missing_files(enc: TextEncoder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json"):
        load_text_encoder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_text_encoder(tmp_path)
    save_text_encoder(enc, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_text_encoder(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg | {"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_text_encoder(tmp_path)


def test_loader_reads_pad_token_from_tokenizer_config(enc: TextEncoder, tmp_path: Path) -> None:
    save_text_encoder(enc, tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "<|endoftext|>"}}))
    assert load_text_encoder(tmp_path).cfg.pad_id == 256
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|pad|>"}))
    with pytest.raises(ValueError, match="pad token"):
        load_text_encoder(tmp_path)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_padding_truncation_mask() -> None:
    tok = PromptTokenizer.byte_level()
    ids, mask = tok.encode("a cat")
    assert ids.shape == mask.shape == (1, 300) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0, :5].tolist() == list(b"a cat") and (ids[0, 5:] == 256).all()
    assert mask[0, :5].all() and not mask[0, 5:].any()
    ids, mask = tok.encode("x" * 1000)
    assert (ids == ord("x")).all() and mask.all()
    ids, mask = tok.encode("")
    assert (ids == 256).all() and not mask.any()
    ids, _ = tok.encode("é")  # 2 UTF-8 bytes, no BOS/EOS
    assert ids[0, :3].tolist() == [0xC3, 0xA9, 256]
    assert tok.decode(tok.encode_ids("héllo 🙂")) == "héllo 🙂"


def test_system_prompt_ids_unpadded() -> None:
    short = PromptTokenizer(byte_level_tokenizer(), max_tokens=1000)
    assert short.encode_system_prompt() == list(SYSTEM_PROMPT.encode())
    assert len(PromptTokenizer.byte_level().encode_system_prompt()) == 300


def test_byte_tokenizer_deterministic(tmp_path: Path) -> None:
    a, b = byte_level_tokenizer(), byte_level_tokenizer()
    assert a.to_str() == b.to_str() and a.get_vocab_size() == 257 and a.token_to_id("<|endoftext|>") == 256
    assert all(a.token_to_id(a.id_to_token(i)) == i for i in range(257))
    tok = PromptTokenizer(a)
    tok.save(tmp_path / "t1.json")
    PromptTokenizer.from_file(tmp_path / "t1.json").save(tmp_path / "t2.json")
    assert (tmp_path / "t1.json").read_text() == (tmp_path / "t2.json").read_text()
    reloaded = PromptTokenizer.from_file(tmp_path / "t1.json")
    assert torch.equal(reloaded.encode("same ids?")[0], tok.encode("same ids?")[0])


def test_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pad token"):
        PromptTokenizer(byte_level_tokenizer(), pad_token="<pad>")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        PromptTokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="pad"):
        TextEncoder(replace(TINY, pad_id=0))
    with pytest.raises(ValueError, match="needs a PromptTokenizer"):
        TextEncoder(replace(TINY, tokenizer="qwen2"))
