"""ExecuTorch export + parity gate on real bundles of the default model (fp32 and 8da4w with one AR
method per scale; fp32 with the split AR layout: one transformer body + per-scale glue).

The bundles are exported once per session, concurrently, through the CLI (lowering is single
threaded Python; several processes use both cores). Every other test reuses or copies them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export import bundle as fmt
from runtime_py.bundle import Bundle
from runtime_py.parity import TIE_TOL, psnr, run_parity, sqnr

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = Path(os.environ.get("HART_OFFICIAL_TINY", ROOT.parent / "shared" / "fixtures" / "official-tiny"))
pytestmark = pytest.mark.slow


def cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


class Export:
    """One `python -m export.executorch` run started at session start; `path()` waits for it."""

    def __init__(self, quant: str, out: Path, *args: str):
        self.quant, self.out = quant, out
        self.proc = subprocess.Popen([sys.executable, "-m", "export.executorch", "--quant", quant, "--out", str(out),
                                      "--quiet", *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.result: tuple[str, str] | None = None

    def path(self) -> Path:
        if self.result is None:
            self.result = self.proc.communicate(timeout=1800)
        stdout, stderr = self.result
        assert self.proc.returncode == 0, f"export {self.quant} failed:\n{stderr[-3000:]}"
        assert "ar_transformer.pte" in stdout and "bits/weight" in stdout  # the summary table
        return self.out


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Both exports start at once (lowering is single-threaded Python: two processes use both
    cores); fp32 tests run while the 8da4w export is still lowering."""
    base = tmp_path_factory.mktemp("bundles")
    runs = {q: Export(q, base / q, "--ar-layout", "scales") for q in ("fp32", "8da4w")}
    runs["split-fp32"] = Export("fp32", base / "split-fp32")  # the default layout
    yield runs
    for r in runs.values():
        if r.proc.poll() is None:
            r.proc.kill()


@pytest.fixture(scope="session")
def bundles(exports) -> dict[str, Path]:
    return {q: exports[q].path() for q in ("fp32", "8da4w")}


@pytest.fixture(scope="session")
def split_bundle(exports) -> Path:
    return exports["split-fp32"].path()


@pytest.fixture(scope="session")
def fp32_bundle(exports) -> Path:
    return exports["fp32"].path()


@pytest.fixture(scope="session")
def fp32_report(fp32_bundle) -> dict:
    return run_parity(fp32_bundle)


def test_fp32_bundle_reproduces_eager(fp32_bundle, fp32_report):
    r = fp32_report
    assert r["passed"], json.dumps({k: r[k].get("failures") for k in r if isinstance(r[k], dict)})
    for check in ("golden", "teacher_forced"):  # identical inputs: every token, ties aside
        assert r[check]["values"]["tie_adjusted_agreement"] == 1.0
        assert r[check]["values"]["sqnr_db"] >= 60
    e2e = r["end_to_end"]
    assert e2e["values"]["closed_loop_agreement"] == 1.0 and e2e["values"]["image_psnr_db"] >= 45
    for row in e2e["rows"]:  # a raw difference from eager's own run may only start at an eager near-tie
        assert all(m <= TIE_TOL for ms in row["eager_margins_at_mismatches"].values() for m in ms[:1])
    m = Bundle.open(fp32_bundle).manifest
    assert {c["scheme"] for c in m["quantization"]["components"].values()} == {"fp32"}
    assert all(c["bits_per_weight"] >= 32 for c in m["components"].values())


def test_split_bundle_reproduces_eager(split_bundle, default_hart):
    """One body method (ExecuTorch's update_cache / custom_sdpa) + glue: the fp32 gate against the plain
    per-scale eager model, and nothing but the body touches the KV cache."""
    r = run_parity(split_bundle)
    assert r["passed"], json.dumps({k: r[k].get("failures") for k in r if isinstance(r[k], dict)})
    assert r["teacher_forced"]["values"]["tie_adjusted_agreement"] == 1.0
    m = Bundle.open(split_bundle).manifest
    body = [x for x in m["methods"] if x["name"].startswith("ar_body_")]
    assert len(body) == len(m["schedule"]["patch_nums"]) and {(x["file"], x["entry"]) for x in body} == \
        {("ar_body.pte", "ar_body")}
    depth = default_hart.cfg.ar.depth
    assert set(m["executorch"]["mutable_state"]) == {f"hart.ar.blocks.{i}.attn.{k}_cache" for i in range(depth)
                                                     for k in "kv"}
    assert not any(c["shared_mutable_state"] for c in m["components"].values())


def test_release_after_use_holds_one_component_and_draws_the_same(split_bundle):
    """--release-after-use: nothing resident after open, each component released after its last method
    (the AR with its KV cache after the last scale), and the images equal the all-resident pipeline's,
    also for a second image (whose all-resident run reuses the first image's cache; here it is reloaded)."""
    from runtime_py.bundle import open_pipeline

    keep, b = open_pipeline(split_bundle)
    lazy, _ = open_pipeline(split_bundle, release_after_use=True)
    assert keep.backend.programs and not lazy.backend.programs
    for prompt, seed in (("a small red circle at the top left on a blue background", 1), ("two", 2)):
        want, got = keep.generate(prompt, seed, b.default_cfg), lazy.generate(prompt, seed, b.default_cfg)
        assert torch.equal(want.image, got.image)
        assert all(torch.equal(want.tokens[k], got.tokens[k]) for k in want.tokens)
        assert not lazy.backend.programs
    mem = b.manifest["memory"]
    assert set(mem["phase_bytes"]) == {"text_encoder", "ar_transformer", "diffusion_head", "vae_decoder"}
    assert mem["phase_bytes"]["ar_transformer"] > mem["kv_cache_bytes"]
    assert mem["peak_bytes_release_after_use"] == max(mem["phase_bytes"].values()) < mem["peak_bytes"]


def _stock_module_agreement(bundle: Path, built: Path, work: Path, share: bool) -> float:
    """Token agreement of a golden replay through the C++ Module (tests/stock_module.py) with eager's ids;
    a mismatch counts only where eager's own choice was not a numerical tie."""
    from stock_module import replay

    from runtime_py.parity import eager_replay, reference_model

    b = Bundle.open(bundle)
    gold = b.golden()
    calls = [(x["name"], x["file"], x.get("entry", x["name"]), gold[(x["name"], "in")]) for x in b.manifest["methods"]]
    outs = replay(built, bundle, calls, work, share_memory_arenas=share)
    _, margin = eager_replay(reference_model(b, None), b.specs, {m.name: gold[(m.name, "in")] for m in b.specs})
    equal = total = 0
    for m in b.specs:
        for s, want, got in zip(m.outputs, gold[(m.name, "out")], outs[m.name]):
            if s.name == "idx":
                total += want.numel()
                equal += int(((want == got) | (margin[m.name] <= TIE_TOL)).sum())
    return equal / total


def test_split_bundle_is_exact_under_the_stock_module(split_bundle, fp32_bundle, tmp_path_factory):
    """The Android AAR builds Module(path, load_mode, etdump): no shared arenas, every method its own.
    The split bundle gives eager's tokens there; the per-scale bundle (KV cache shared between methods)
    does not, which also shows that the stand-in really runs without arena sharing."""
    from stock_module import build

    built = build(tmp_path_factory.mktemp("jvm"))
    assert _stock_module_agreement(split_bundle, built, tmp_path_factory.mktemp("split"), share=False) == 1.0
    assert _stock_module_agreement(fp32_bundle, built, tmp_path_factory.mktemp("scales"), share=False) < 0.5
    assert _stock_module_agreement(fp32_bundle, built, tmp_path_factory.mktemp("shared"), share=True) == 1.0


def _patch_weight(pte: Path, weight: torch.Tensor, factor: float) -> None:
    """Scale one fp32 weight tensor inside a .pte in place (found by its exact bytes)."""
    data = bytearray(pte.read_bytes())
    raw = weight.contiguous().numpy().astype("<f4").tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "weight bytes not found exactly once"
    data[at:at + len(raw)] = (weight * factor).contiguous().numpy().astype("<f4").tobytes()
    pte.write_bytes(bytes(data))


def test_perturbed_weight_is_rejected_by_the_gate(fp32_bundle, default_hart, tmp_path):
    """A bundle whose hashes are valid but whose AR weights changed (x1.5 on one Linear) must fail."""
    bad = tmp_path / "bad"
    shutil.copytree(fp32_bundle, bad)
    _patch_weight(bad / "ar_transformer.pte", default_hart.ar.blocks[1].ffn.down_proj.weight, 1.5)
    manifest = json.loads((bad / "manifest.json").read_text())
    fmt.write_manifest(bad, {k: v for k, v in manifest.items() if k != "files"})  # re-hash: Bundle.open passes
    Bundle.open(bad)
    r = run_parity(bad)
    assert not r["passed"]
    assert not r["golden"]["passed"] and not r["teacher_forced"]["passed"]
    assert r["components"]["passed"]  # the other programs are untouched


def test_kv_cache_carries_across_methods(fp32_bundle):
    """scale_01 after scale_00 in one program matches eager; scale_01 in a fresh program does not."""
    from executorch.runtime import Runtime

    b = Bundle.open(fp32_bundle)
    gold = b.golden()
    pte = b.root / "ar_transformer.pte"
    seq = Runtime.get().load_program(pte)
    seq.load_method("scale_00").execute(gold[("scale_00", "in")])
    chained = seq.load_method("scale_01").execute(gold[("scale_01", "in")])
    alone = Runtime.get().load_program(pte).load_method("scale_01").execute(gold[("scale_01", "in")])
    want_fhat, want_x = gold[("scale_01", "out")][1:3]
    assert sqnr(want_fhat, chained[1]) > 60 and sqnr(want_x, chained[2]) > 60
    assert sqnr(want_x, alone[2]) < 20  # the next scale's input is wrong without the context K/V
    assert sqnr(chained[1], alone[1]) < 40


def test_interrupted_export_leaves_no_bundle(tmp_path, default_hart, monkeypatch, fp32_bundle):
    """An exception after some artifacts were written: no bundle, no temp folders, old bundle kept."""
    import export.executorch.exporter as ex

    calls = []

    def flaky(hart, specs, split=False):
        calls.append(specs[0].component)
        if len(calls) == 2:
            raise RuntimeError("lowering crashed")
        return b"\0" * 64, {"params": 1, "seconds": 0.0, "planned_arena_bytes": {}, "shared_mutable_state": False}

    monkeypatch.setattr(ex, "export_program", flaky)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="lowering crashed"):
        ex.export_bundle(default_hart, fmt.default_source(), fresh, quant="fp32", progress=False, ar_layout="scales")
    assert not fresh.exists()
    kept = tmp_path / "kept"
    shutil.copytree(fp32_bundle, kept)
    calls.clear()
    with pytest.raises(RuntimeError, match="lowering crashed"):
        ex.export_bundle(default_hart, fmt.default_source(), kept, quant="fp32", progress=False, ar_layout="scales")
    Bundle.open(kept)  # the previous bundle is intact, hashes and all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


@pytest.mark.parametrize("args, msg", [
    (["--checkpoint", "/no/such/checkpoint"], "is not a folder"),
    (["--checkpoint", str(OFFICIAL_TINY)], "has no text encoder"),  # loads, but a bundle needs the text model
    (["--schedule", "999px"], "invalid choice"),
    (["--quant", "int3"], "invalid choice"),
    (["--group-size", "0"], "group-size"),
])
def test_export_cli_rejects_bad_arguments(tmp_path, args, msg):
    out = tmp_path / "never"
    res = cli("-m", "export.executorch", *args, "--out", str(out), timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_cli_help():
    res = cli("-m", "export.executorch", "--help", timeout=120)
    assert res.returncode == 0 and "--quant" in res.stdout and "--schedule" in res.stdout


def test_golden_is_small_and_replayable(bundles):
    b = Bundle.open(bundles["8da4w"])
    gold_bytes = sum(v["bytes"] for k, v in b.manifest["files"].items() if k.startswith("golden/"))
    assert gold_bytes < 12 * 2**20
    gold = b.golden()
    image = gold[("vae_decoder", "out")][0]
    assert image.shape == (1, 3, 256, 256) and image.min() >= 0 and image.max() <= 1
    first = json.loads((b.root / "golden" / "index.json").read_text())["tensors"][0]
    assert (first["method"], first["name"], first["dtype"]) == ("text_encoder", "token_ids", "int64")
    raw = np.fromfile(b.root / "golden" / first["file"], dtype="<i8")  # readable without Python helpers
    assert torch.equal(torch.from_numpy(raw.reshape(1, 300)), gold[("text_encoder", "in")][0])
    assert psnr(image, image) == 999.0


def test_export_and_generate_keep_stderr_clean(exports, bundles, tmp_path):
    """--quiet on success prints nothing on stderr: no torchao .so-load lines, pytree deprecation,
    buffer-mutation warning or ExecuTorch cpuinfo probe lines (runtime_py/quiet.py)."""
    for quant, e in exports.items():
        assert e.result is not None and e.result[1] == "", (quant, e.result and e.result[1][-3000:])
    res = cli("-m", "runtime_py.generate", "--bundle", str(bundles["8da4w"]), "--prompt", "a red fox", "--out",
              str(tmp_path / "fox.png"), "--quiet")
    assert res.returncode == 0 and res.stderr == "", res.stderr[-3000:]


def test_8da4w_bundle_passes_its_gate_via_cli(bundles, tmp_path):
    report = tmp_path / "report"
    res = cli("-m", "runtime_py.parity", "--bundle", str(bundles["8da4w"]), "--report", str(report))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert res.stderr == ""  # no third-party noise (runtime_py/quiet.py)
    data = json.loads((report / "parity.json").read_text())
    assert data["passed"] and data["recipe"] == "8da4w"
    assert "| end_to_end | image_psnr_db |" in (report / "parity.md").read_text()
    from PIL import Image

    w, h = Image.open(report / "parity.png").size
    assert (w, h) == (2 * 256, 2 * 256)  # eager | bundle, one row per end-to-end run


def test_8da4w_recipe_is_recorded_and_compresses(bundles, default_hart):
    m = Bundle.open(bundles["8da4w"]).manifest
    ar = m["quantization"]["components"]["ar_transformer"]
    assert ar["scheme"] == "8da4w" and ar["group_size"] == 32
    blocks = [n for n in ar["quantized"] if ".blocks." in n]
    # qkv, proj, gate, up, down per block
    assert len(blocks) == default_hart.cfg.ar.depth * 5 and "ar.head" in ar["quantized"]
    assert "ar.word_embed" in ar["kept_float"]  # in_features 16: not a multiple of 32
    assert not any(n.startswith(("ar.lvl_embed", "ar.diffloss")) for n in ar["quantized"])
    assert m["quantization"]["components"]["diffusion_head"]["scheme"] == "fp16"
    assert m["quantization"]["components"]["text_encoder"]["scheme"] == "8da8w"
    fp32 = Bundle.open(bundles["fp32"]).manifest
    assert m["components"]["ar_transformer"]["bytes"] < 0.45 * fp32["components"]["ar_transformer"]["bytes"]
    # stored weights: int4 codes + scales (+ the fp32 layers listed above) and fp16 for the diffusion head
    assert m["components"]["ar_transformer"]["bits_per_weight"] < 10
    assert 15.5 < m["components"]["diffusion_head"]["bits_per_weight"] < 17
    assert m["memory"]["peak_bytes"] == sum(m["memory"][k] for k in ("weights_bytes", "kv_cache_bytes",
                                                                     "resident_activation_bytes"))
    arenas = [max(c["planned_arena_bytes"].values()) - (m["memory"]["kv_cache_bytes"] if c["shared_mutable_state"]
                                                           else 0) for c in m["components"].values()]
    assert m["memory"]["resident_activation_bytes"] == sum(arenas) > m["memory"]["largest_activation_bytes"]


def test_host_benchmark_over_real_bundles(bundles, tmp_path):
    """CI keeps the host benchmark's bundle path alive: one run per stage, no timing assertions."""
    from benchmarks import host
    from benchmarks.schema import validate

    out = tmp_path / "bench.json"
    assert host.main(["--bundle", str(bundles["fp32"]), "--bundle", str(bundles["8da4w"]), "--runs", "1",
                      "--warmup", "0", "--out", str(out)]) == 0
    r = validate(json.loads(out.read_text()))
    names = [t["name"] for t in r["targets"]]
    assert names == ["eager-fp32", "fp32", "8da4w"]
    for t in r["targets"][1:]:
        assert t["backend"] == "executorch" and t["load_ms"]["cold"] > 0
        files = t["size_bytes"]["files"]
        assert t["size_bytes"]["total"] == sum(files.values()) and files["ar_transformer.pte"] > 0
        assert not any(k.startswith("golden/") for k in files)
        assert {"text_encoder", "scale_09", "diffusion_head", "vae_decoder"} <= set(t["stages"])
        assert all(t["stages"][k]["median_ms"] > 0 and "ratio_to_baseline" in t["stages"][k]
                   for k in ("text_encoder", "scale_09", "diffusion_head", "vae_decoder"))
    assert r["targets"][2]["bits_per_weight"]["ar_transformer"] < r["targets"][1]["bits_per_weight"]["ar_transformer"]
    assert out.with_suffix(".md").read_text().count("| scale_") >= 10
