"""Bundle format: manifest validation, file hashing, atomic writes, golden tensors, backend choice.

These build small synthetic bundles with export/bundle.py (no lowering), so they run in seconds;
tests/test_executorch.py covers real exported bundles.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from export import bundle as fmt
from model.stages import method_specs
from runtime_py import backends
from runtime_py.bundle import RUNTIME_VERSION, Bundle, BundleError, open_pipeline
from runtime_py.pipeline import EagerBackend, Pipeline
from runtime_py.thresholds import PARITY_THRESHOLDS


@pytest.fixture(scope="module")
def trace(default_hart):
    """One eager generation with its per-method trace (the golden source)."""
    pipe = Pipeline(method_specs(default_hart), EagerBackend(default_hart), default_hart.text.tokenizer)
    return pipe.generate("a tiny test", 5, 4.5, keep_trace=True)


def make_bundle(root: Path, hart, trace, backend: str = "fake") -> Path:
    """A schema-valid bundle with placeholder artifacts (random bytes) and real golden tensors."""
    specs = method_specs(hart)
    with fmt.staging(root) as tmp:
        for comp in ("text_encoder", "ar_transformer", "diffusion_head", "vae_decoder"):
            (tmp / f"{comp}.pte").write_bytes(os.urandom(4096))
        hart.text.tokenizer.save(tmp / "tokenizer.json")
        fmt.write_golden(tmp, specs, trace.trace, "a tiny test", 5, 4.5)
        fmt.write_manifest(tmp, {
            **fmt.header(backend, specs), "methods": [fmt.method_entry(s, f"{s.component}.pte") for s in specs],
            "tokenizer": fmt.tokenizer_info(hart, "tokenizer.json"), "sampler": fmt.sampler_info(hart),
            "schedule": fmt.schedule_info(hart, None), "rng": fmt.rng_info(specs),
        })
    return root


@pytest.fixture
def bundle_dir(tmp_path, default_hart, trace) -> Path:
    return make_bundle(tmp_path / "b", default_hart, trace)


def rewrite_manifest(root: Path, **changes) -> None:
    """Edit the manifest and re-seal it (manifest.sha256), so the check under test is the one that fires."""
    m = json.loads((root / "manifest.json").read_text())
    m.update(changes)
    (root / "manifest.json").write_text(json.dumps(m))
    fmt.seal(root)


def test_valid_bundle_round_trips_the_contract(bundle_dir, default_hart):
    b = Bundle.open(bundle_dir)
    assert b.specs == method_specs(default_hart)  # MethodSpec/TensorSpec rebuilt exactly from JSON
    assert b.tokenizer().encode("hello")[0].tolist() == default_hart.text.tokenizer.encode("hello")[0].tolist()
    assert b.default_cfg == default_hart.cfg.sampler.cfg


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "append"])
def test_changed_files_are_rejected_with_their_name(bundle_dir, damage):
    target = bundle_dir / "ar_transformer.pte"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[1000] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:-10]))
    elif damage == "append":
        target.write_bytes(bytes(data) + b"\0")
    else:
        target.unlink()
    expect = {"flip": "sha256", "truncate": "size", "append": "size", "delete": "missing"}[damage]
    with pytest.raises(BundleError, match=expect) as e:
        Bundle.open(bundle_dir)
    assert "ar_transformer.pte" in str(e.value)


def test_golden_files_are_hashed_too(bundle_dir):
    gfile = next(p for p in (bundle_dir / "golden").iterdir() if p.suffix == ".bin")
    data = bytearray(gfile.read_bytes())
    data[0] ^= 1
    gfile.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=gfile.name):
        Bundle.open(bundle_dir)


@pytest.mark.parametrize("changes, match", [
    ({"schema_version": 99}, "schema_version 99"),
    ({"min_runtime_version": RUNTIME_VERSION + 1}, "runtime version"),
    ({"format": "something-else"}, "format"),
    ({"call_order": ["scale_00"]}, "call_order"),
    ({"backend": None}, "backend must be a string"),
])
def test_bad_manifest_header_is_rejected(bundle_dir, changes, match):
    rewrite_manifest(bundle_dir, **changes)
    with pytest.raises(BundleError, match=match):
        Bundle.open(bundle_dir)


def test_missing_field_and_unsafe_paths_are_rejected(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    rewrite_manifest(bundle_dir, files={**m["files"], "../escape.bin": {"bytes": 1, "sha256": "0" * 64}})
    with pytest.raises(BundleError, match="unsafe path"):
        Bundle.open(bundle_dir)
    del m["tokenizer"]
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    fmt.seal(bundle_dir)
    with pytest.raises(BundleError, match="missing field"):
        Bundle.open(bundle_dir)
    (bundle_dir / "manifest.json").write_text("{not json")
    fmt.seal(bundle_dir)
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_dir)


def test_manifest_digest_covers_every_byte(bundle_dir):
    """manifest.sha256 is `sha256sum manifest.json`; any edit, a missing or malformed digest is refused."""
    import hashlib

    data = (bundle_dir / "manifest.json").read_bytes()
    digest = (bundle_dir / "manifest.sha256").read_bytes()
    assert digest == hashlib.sha256(data).hexdigest().encode() + b"  manifest.json\n"
    assert "manifest.sha256" not in Bundle.open(bundle_dir).manifest["files"]
    (bundle_dir / "manifest.json").write_bytes(data.replace(b'"top_p": ', b'"top_p":  '))  # whitespace only
    with pytest.raises(BundleError, match=r"edited after export \(digest mismatch"):
        Bundle.open(bundle_dir)
    (bundle_dir / "manifest.json").write_bytes(data)
    (bundle_dir / "manifest.sha256").write_bytes(digest.upper())
    with pytest.raises(BundleError, match="not one line"):
        Bundle.open(bundle_dir)
    (bundle_dir / "manifest.sha256").unlink()
    with pytest.raises(BundleError, match="no manifest.sha256"):
        Bundle.open(bundle_dir)


def test_symlinked_files_are_refused(bundle_dir, tmp_path):
    """A listed file (or a folder on its path) that is a symlink is refused, even with matching bytes."""
    outside = tmp_path / "outside.pte"
    shutil.move(bundle_dir / "ar_transformer.pte", outside)
    (bundle_dir / "ar_transformer.pte").symlink_to(outside)
    with pytest.raises(BundleError, match="ar_transformer.pte is a symlink"):
        Bundle.open(bundle_dir)
    shutil.move(outside, bundle_dir / "ar_transformer.pte")
    shutil.move(bundle_dir / "golden", tmp_path / "golden")
    (bundle_dir / "golden").symlink_to(tmp_path / "golden")
    with pytest.raises(BundleError, match="golden is a symlink"):
        Bundle.open(bundle_dir)


def test_golden_round_trip_and_dedup(bundle_dir, trace, default_hart):
    gold = Bundle.open(bundle_dir).golden()
    for m in method_specs(default_hart):
        for io in ("in", "out"):
            want = trace.trace[m.name][io]
            got = gold[(m.name, io)]
            assert len(got) == len(want)
            for w, g in zip(want, got, strict=True):
                assert g.dtype == w.dtype and torch.equal(g, w), (m.name, io)
    index = json.loads((bundle_dir / "golden" / "index.json").read_text())
    files = {e["file"] for e in index["tensors"]}
    assert len(files) < len(index["tensors"])  # x/f_hat/cond passed between methods are stored once
    assert all(e["source"] in ("env", "tokenizer", "user", "rng") for e in index["tensors"])


def test_staging_leaves_nothing_on_error_and_keeps_the_old_bundle(tmp_path, bundle_dir):
    dest = tmp_path / "out"
    shutil.copytree(bundle_dir, dest)
    before = (dest / "manifest.json").read_bytes()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), fmt.staging(dest) as tmp:
            (tmp / "half-written.pte").write_bytes(b"x" * 10)
            raise exc
    assert (dest / "manifest.json").read_bytes() == before
    assert not (dest / "half-written.pte").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "out"]  # no .partial-/.old- leftovers


def test_staging_replaces_a_bundle_but_refuses_other_folders(tmp_path, bundle_dir):
    dest = tmp_path / "out"
    shutil.copytree(bundle_dir, dest)
    with fmt.staging(dest) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ValueError, match="not a bundle folder"), fmt.staging(other):
        pass
    assert (other / "cat.jpg").read_bytes() == b"meow"


def test_open_pipeline_uses_the_manifest_backend(tmp_path, default_hart, trace):
    """A registered backend plugs in without touching Pipeline; specs and tokenizer come from JSON."""
    backends.register("fake", lambda b: EagerBackend(default_hart))
    try:
        root = make_bundle(tmp_path / "fake", default_hart, trace, backend="fake")
        pipe, bundle = open_pipeline(root)
        assert bundle.backend == "fake" and pipe.backend.name == "eager"
        gen = pipe.generate("a tiny test", 5, bundle.default_cfg)
        assert torch.equal(gen.image, trace.image)
        for name, ids in trace.tokens.items():
            assert torch.equal(gen.tokens[name], ids)
    finally:
        backends.BACKENDS.pop("fake")


def test_unknown_backend_is_a_clear_error(tmp_path, default_hart, trace):
    root = make_bundle(tmp_path / "x", default_hart, trace, backend="tpu-of-the-future")
    with pytest.raises(ValueError, match="unknown backend 'tpu-of-the-future'"):
        open_pipeline(root)


def test_checkpoint_identity_is_checked_by_the_parity_reference(tmp_path, default_hart):
    """A checkpoint bundle names its weight files by sha256; parity refuses other weights."""
    from model import save
    from runtime_py.parity import reference_model

    ckpt = save(default_hart, tmp_path / "ckpt")
    source = fmt.checkpoint_source(ckpt)
    assert source["name"] == "ckpt" and "llm/model.safetensors" in source["weights"]
    manifest = {"model": {"source": source}, "schedule": fmt.schedule_info(default_hart, None)}
    ref = reference_model(Bundle(tmp_path, manifest), ckpt)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), default_hart.state_dict().values(),
                                                   strict=True))
    with pytest.raises(ValueError, match="pass --checkpoint"):
        reference_model(Bundle(tmp_path, manifest), None)
    weights = ckpt / "tokenizer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="weight files differ"):
        reference_model(Bundle(tmp_path, manifest), ckpt)


def test_exporter_manifest_is_complete(tmp_path, default_hart, monkeypatch):
    """export_bundle's manifest with stand-in programs (no lowering): every documented field."""
    import export.executorch.exporter as ex

    fake = {"params": 10, "weight_bytes": 40, "seconds": 0.0, "cpu_seconds": 0.0, "shared_mutable_state": False,
            "planned_arena_bytes": {"m": 1000}}
    monkeypatch.setattr(ex, "export_program", lambda hart, specs, split=False: (b"\0" * 64, dict(fake)))
    m = ex.export_bundle(default_hart, fmt.default_source(), tmp_path / "b", quant="fp32", progress=False,
                         ar_layout="scales")
    assert Bundle.open(tmp_path / "b").manifest == m
    steps = default_hart.steps
    assert m["call_order"] == [s.name for s in method_specs(default_hart)]
    assert m["schedule"]["patch_nums"] == list(default_hart.cfg.ar.patch_nums) and len(m["schedule"]["steps"]) == 10
    assert m["sampler"]["top_k"] == [s.top_k for s in steps] and m["sampler"]["cfg_default"] == 4.5
    assert m["rng"]["algorithm"] == "Philox4x32-10" and m["rng"]["streams"]["scale_03.noise_u"]["streams"] == [3, 1003]
    text, ar = default_hart.cfg.text, default_hart.cfg.ar
    assert m["tokenizer"] == {"file": "tokenizer.json", "max_tokens": text.max_tokens, "pad_token": "<|endoftext|>",
                              "pad_id": 256}
    assert m["model"]["source"] == {"kind": "default-seeded", "seed": 20241014, "config": "default"}
    assert set(m["versions"]) == {"torch", "executorch", "torchao", "python"}
    kv_len = ar.context_token + sum(p * p for p in ar.patch_nums[1:])  # context + every token but the first scale
    # K+V, depth, 2 CFG rows, heads, kv_len, head dim, fp32
    head_dim = ar.embed_dim // ar.num_heads
    assert m["memory"]["kv_cache_bytes"] == 2 * ar.depth * 2 * ar.num_heads * kv_len * head_dim * 4
    assert m["parity"]["thresholds"] == PARITY_THRESHOLDS["fp32"]
    assert set(m["quantization"]["components"]) == {"text_encoder", "ar_transformer", "diffusion_head", "vae_decoder"}
    assert all(e["entry"] == e["name"] and e["file"] == f"{e['component']}.pte" for e in m["methods"])
    assert "golden/index.json" in m["files"] and all(len(v["sha256"]) == 64 for v in m["files"].values())


def test_vae_falls_back_to_fp32_when_fp16_is_not_close_enough(tmp_path, default_hart, monkeypatch):
    """--vae-dtype auto measures the fp16 decoder against fp32 eager and records the decision."""
    import export.executorch.exporter as ex

    fake = {"params": 10, "weight_bytes": 40, "seconds": 0.0, "cpu_seconds": 0.0, "shared_mutable_state": False,
            "planned_arena_bytes": {"m": 1000}}
    dtypes = []

    def fake_export(hart, specs, split=False):
        dtypes.append(hart.vae.decoder.conv_in.weight.dtype)
        return b"\0" * 64, dict(fake)

    monkeypatch.setattr(ex, "export_program", fake_export)
    monkeypatch.setattr(ex, "run_method", lambda data, name, inputs: [torch.full((1, 3, 256, 256), 0.5)])
    m = ex.export_bundle(default_hart, fmt.default_source(), tmp_path / "b", quant="8da8w", progress=False)
    vae = m["quantization"]["components"]["vae_decoder"]
    assert vae["scheme"] == "fp32" and "ships fp32" in vae["why"]
    assert dtypes[-2:] == [torch.float16, torch.float32]  # fp16 measured first, then re-exported in fp32
    assert m["quantization"]["components"]["ar_transformer"]["scheme"] == "8da8w"
