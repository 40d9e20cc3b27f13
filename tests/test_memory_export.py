"""Memory modes at export: --kv-cache / --attn-chunk per backend, the manifest estimate per mode, and
the text-encoder unload option of the runtime.

Slow tests export the default model once per session (fp32 weights, so the mode is the only
approximation): ExecuTorch with an int8 cache + attention chunks of 32, ONNX with an int8 cache. Both
must pass their parity gate against same-mode eager and stay within the manifest's drift limits from
the full-precision eager path (runtime_py/thresholds.py MEMORY_DRIFT_THRESHOLDS, measured on the parity runs:
int8 token agreement 0.946-0.969, image PSNR 24.4-26.6 dB; see docs/executorch.md "Memory modes").
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export import bundle as fmt
from model.build import default_model
from model.explicit_kv import KV_NAME, KV_SCALE_NAME, FunctionalEagerBackend, explicit_kv_specs
from model.memory import kv_cache_bytes, with_memory_mode
from model.stages import method_specs
from runtime_py.pipeline import EagerBackend, Pipeline

ROOT = Path(__file__).resolve().parents[1]
PROMPT, SEED, CFG = "a lighthouse at dusk", 5, 4.5


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def hart():
    return default_model()


# ---- fast: estimates, CLI rejections, functional int8 cache -----------------------------------------

def test_manifest_estimate_follows_the_mode(hart):
    est = {m: fmt.memory_estimate(with_memory_mode(hart, m, 0), 10**6, 10**5, 3 * 10**5, 10**4, 9 * 10**4)
           for m in ("fp32", "fp16", "int8")}
    kv = {m: e["kv_cache_bytes"] for m, e in est.items()}
    assert kv["int8"] < kv["fp16"] < kv["fp32"]
    ar = hart.cfg.ar
    kv_len = ar.context_token + sum(p * p for p in ar.patch_nums[1:])
    values = 2 * ar.depth * 2 * ar.num_heads * kv_len * (ar.embed_dim // ar.num_heads)  # K+V, depth, 2 CFG rows
    assert kv == {"fp32": 4 * values, "fp16": 2 * values, "int8": values + 4 * values // 32}  # int8: + fp32 scales
    for m, e in est.items():
        assert e["kv_cache_bytes"] == kv_cache_bytes(with_memory_mode(hart, m, 0).cfg)  # buffers == analytic model
        assert e["mode"]["kv_cache"] == m and e["mode"]["kv_cache_bytes_per_mode"][m] == kv[m]
        assert e["peak_bytes"] > e["peak_bytes"] - e["kv_cache_bytes"]
        assert e["peak_bytes_unload_text_encoder"] == 10**6 - 3 * 10**5 + kv[m] + 9 * 10**4 < e["peak_bytes"]
    assert est["int8"]["peak_bytes"] < est["fp16"]["peak_bytes"] < est["fp32"]["peak_bytes"]


def test_memory_mode_keeps_weights_and_source(hart):
    m = with_memory_mode(hart, "int8", 32)
    assert hart.ar.blocks[0].attn.k_cache.dtype == torch.float32 and hart.cfg.attn_chunk == 0  # unchanged
    assert m.ar.blocks[0].attn.k_cache.dtype == torch.int8 and m.ar.blocks[0].attn.attn_chunk == 32
    assert torch.equal(m.ar.head.weight, hart.ar.head.weight) and m.text is hart.text
    assert with_memory_mode(hart, "fp32", 0) is hart
    with pytest.raises(ValueError, match="attention chunk"):
        with_memory_mode(hart, "int8", -1)


def test_onnx_functional_int8_cache_matches_stateful_eager(hart):
    """The ONNX contract's int8 state (kv_cache codes + kv_scale) reproduces the stateful int8 model."""
    m = with_memory_mode(hart, "int8", 32)
    specs = explicit_kv_specs(m)
    first = next(s for s in specs if s.name == "scale_00")
    state = {t.name: t for t in first.inputs[-2:]}
    assert state[KV_NAME].dtype == "int8" and state[KV_SCALE_NAME].dtype == "float32"
    assert state[KV_SCALE_NAME].shape == (*state[KV_NAME].shape[:-1], 1) and state[KV_NAME].source == "zeros"
    last = next(s for s in specs if s.name == "scale_09")
    assert KV_NAME not in [t.name for t in last.outputs]
    ref = Pipeline(method_specs(m), EagerBackend(m), m.text.tokenizer).generate(PROMPT, SEED, CFG)
    got = Pipeline(specs, FunctionalEagerBackend(m), m.text.tokenizer).generate(PROMPT, SEED, CFG)
    assert torch.equal(ref.image, got.image)
    assert all(torch.equal(ref.tokens[k], got.tokens[k]) for k in ref.tokens)


def test_coreml_rejects_int8_cache(tmp_path):
    out = tmp_path / "coreml"
    r = cli("-m", "export.coreml", "--kv-cache", "int8", "--attn-chunk", "32", "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stderr
    assert "fp16 only" in r.stderr and "export.executorch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("module", ["export.executorch", "export.onnx", "export.coreml"])
def test_negative_chunk_is_rejected(module, tmp_path):
    r = cli("-m", module, "--attn-chunk", "-4", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "--attn-chunk" in r.stderr
    assert not list(tmp_path.iterdir())


def test_unload_text_encoder_eager_is_identical(hart):
    """Pipeline.unload_text_encoder releases through backends that can; outputs do not change."""
    class Releasing(EagerBackend):
        released: list[str] = []

        def release(self, method, finished=False):
            self.released.append(method)

    be = Releasing(hart)
    specs = method_specs(hart)
    a = Pipeline(specs, be, hart.text.tokenizer).generate(PROMPT, SEED, CFG)
    b = Pipeline(specs, be, hart.text.tokenizer, unload_text_encoder=True).generate(PROMPT, SEED, CFG)
    assert be.released == ["text_encoder"] and "release_text_encoder" in b.timings_ms
    assert torch.equal(a.image, b.image)


def test_release_after_use_releases_each_component_after_its_last_method(hart):
    """Pipeline.release_after_use: every component once, right after its last method, in pipeline order;
    the AR (KV state) only after the last scale, with finished=True."""
    calls: list[tuple[str, bool, int]] = []

    class Releasing(EagerBackend):
        ran = 0

        def run(self, method, inputs):
            self.ran += 1
            return super().run(method, inputs)

        def release(self, method, finished=False):
            calls.append((method, finished, self.ran))

    specs = method_specs(hart)
    g = Pipeline(specs, Releasing(hart), hart.text.tokenizer, release_after_use=True).generate(PROMPT, SEED, CFG)
    order = list(dict.fromkeys(s.component for s in specs))
    released = [next(s.component for s in specs if s.name == m) for m, _, _ in calls]
    assert list(dict.fromkeys(released)) == order and all(f for _, f, _ in calls)
    for comp in order:  # released once the component's last method had run, before the next one ran
        last = max(i for i, s in enumerate(specs) if s.component == comp) + 1
        assert {ran for m, _, ran in calls if released[[c[0] for c in calls].index(m)] == comp} == {last}
    assert [k for k in g.timings_ms if k.startswith("release_")] == [f"release_{c}" for c in order]


# ---- slow: real exports with their parity gates ------------------------------------------------------

class Export:
    """One exporter CLI run started when the fixture is created; `path()` waits for it."""

    def __init__(self, module: str, args: list[str], out: Path):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args, "--out", str(out), "--quiet"], cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.result: tuple[str, str] | None = None

    def path(self) -> Path:
        if self.result is None:
            self.result = self.proc.communicate(timeout=1800)
        assert self.proc.returncode == 0, f"export failed:\n{self.result[1][-3000:]}"
        return self.out


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Both exports at once (each is mostly single-threaded Python; two processes use both cores)."""
    base = tmp_path_factory.mktemp("memory-bundles")
    runs = {"executorch": Export("export.executorch", ["--quant", "fp32", "--kv-cache", "int8", "--attn-chunk", "32",
                                                       "--ar-layout", "scales"],
                                 base / "et-int8"),
            "onnx": Export("export.onnx", ["--quant", "fp32", "--kv-cache", "int8"], base / "onnx-int8")}
    yield runs
    for r in runs.values():
        if r.proc.poll() is None:
            r.proc.kill()


def _check_parity(bundle: Path) -> dict:
    from runtime_py.parity import run_parity

    report = run_parity(bundle)
    report.pop("_images")
    assert report["memory_mode"]["kv_cache"] == "int8"
    for k in ("golden", "teacher_forced", "components", "end_to_end", "full_precision"):
        assert report[k]["passed"], (k, report[k]["failures"])
    assert report["passed"]
    fp = report["full_precision"]
    assert fp["thresholds"] == {"token_agreement": 0.90, "image_psnr_db": 18.0}
    # the bundle drifts from full precision about as much as same-mode eager does (fp32 weights)
    assert abs(fp["values"]["token_agreement"] - fp["same_mode_eager"]["token_agreement"]) < 0.02
    return report


@pytest.mark.slow
def test_executorch_int8_chunked_bundle(exports, hart):
    from export.executorch.exporter import mutable_state
    from runtime_py.bundle import Bundle

    out = exports["executorch"].path()
    m = Bundle.open(out).manifest
    mode = m["memory"]["mode"]
    assert (mode["kv_cache"], mode["attn_chunk"], mode["full_precision"]) == ("int8", 32, False)
    int8 = with_memory_mode(hart, "int8", 32)
    assert m["memory"]["kv_cache_bytes"] == kv_cache_bytes(int8.cfg) == fmt.kv_cache_bytes(int8)
    assert m["memory"]["peak_bytes_unload_text_encoder"] < m["memory"]["peak_bytes"]
    # the cache really is int8 inside the program: read the mutable buffers back out of the .pte
    state = mutable_state((out / "ar_transformer.pte").read_bytes())
    assert state == m["executorch"]["mutable_state"]
    ar = hart.cfg.ar
    heads, hd = ar.num_heads, ar.embed_dim // ar.num_heads
    kv_len = ar.context_token + sum(p * p for p in ar.patch_nums[1:])
    for i in range(ar.depth):
        for kv in "kv":
            assert state[f"hart.ar.blocks.{i}.attn.{kv}_cache"] == {"dtype": "int8", "shape": [2, heads, kv_len, hd]}
            assert state[f"hart.ar.blocks.{i}.attn.{kv}_scale"] == {"dtype": "float32", "shape": [2, heads, kv_len, 1]}
    _check_parity(out)


@pytest.mark.slow
def test_onnx_int8_bundle(exports):
    from runtime_py.bundle import Bundle

    out = exports["onnx"].path()
    m = Bundle.open(out).manifest
    kv = m["onnx"]["kv_cache"]
    assert [(s["name"], s["dtype"], s["source_first"]) for s in kv["state"]] == [
        (KV_NAME, "int8", "zeros"), (KV_SCALE_NAME, "float32", "zeros")]
    assert kv["bytes"] == m["memory"]["kv_cache_bytes"] == sum(s["bytes"] for s in kv["state"])
    assert m["memory"]["mode"]["kv_cache"] == "int8"
    first = next(x for x in m["methods"] if x["name"] == "scale_00")
    assert [t["name"] for t in first["inputs"][-2:]] == [KV_NAME, KV_SCALE_NAME]
    _check_parity(out)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_unload_text_encoder_gives_identical_images(exports, backend):
    from runtime_py.bundle import open_pipeline

    pipe, _ = open_pipeline(exports[backend].path())
    keep = pipe.generate(PROMPT, SEED, CFG)
    pipe.unload_text_encoder = True
    first = pipe.generate(PROMPT, SEED, CFG)  # releases the text encoder after encoding
    again = pipe.generate(PROMPT, SEED, CFG)  # loads it again
    for gen in (first, again):
        assert "release_text_encoder" in gen.timings_ms
        assert torch.equal(gen.image, keep.image)
        assert all(torch.equal(gen.tokens[k], keep.tokens[k]) for k in keep.tokens)
