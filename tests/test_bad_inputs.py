"""The bad-input battery (issue 14): every case runs a real CLI (or a public loader) in a subprocess, as a
new user would, and asserts the promise of runtime_py/cli.py:

- exit code 2 for bad arguments or inputs, 1 for a check that ran and failed, 130 for Ctrl-C;
- exactly one line on stderr, naming the problem (the `needle`), and no traceback;
- no partial output: the --out path does not exist afterwards and no temp/partial file is left beside it.

Inputs are built once per session: a synthetic bundle (real manifest writer and seal, the default model's
method contract, artifacts that are not real programs: every case fails before or while loading them) and a
saved checkpoint of the default model. Argument cases fail before torch is imported; the others need torch.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from export import bundle as fmt
from model.stages import method_specs
from runtime_py.bundle import Bundle, sha256_file
from runtime_py.thresholds import parity_section

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
COMPONENTS = ("text_encoder", "ar_transformer", "diffusion_head", "vae_decoder")
PTE_LIKE = (24).to_bytes(4, "little") + b"ET12" + b"\x00" * 16 + os.urandom(4000)  # right header, no program


def run(module: str, *args, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("HART_DEBUG", None)
    return subprocess.run([PY, "-m", module, *args], cwd=ROOT, capture_output=True, timeout=timeout, env=env, **kw)


def check(r: subprocess.CompletedProcess, code: int, needle: str, out: Path | None = None) -> str:
    """The promise: exit `code`, one stderr line containing `needle`, no traceback, nothing left at `out`."""
    err = r.stderr.decode("utf-8", "replace") if isinstance(r.stderr, bytes) else r.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert r.returncode == code, f"exit {r.returncode}, want {code}; stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"want one stderr line, got {len(lines)}:\n{err}"
    assert "error" in lines[0] and needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    if out is not None:
        assert not out.exists(), f"{out} was written"
        if out.parent.is_dir():
            left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
            assert not left, f"partial output left: {left}"
    return lines[0]


# ---- shared inputs, built once ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def base_bundle(tmp_path_factory, default_hart) -> Path:
    """A sealed ExecuTorch-layout bundle of the default model whose artifacts are not programs."""
    hart, specs = default_hart, method_specs(default_hart)
    root = tmp_path_factory.mktemp("bad") / "bundle"
    with fmt.staging(root) as tmp:
        for comp in COMPONENTS:
            (tmp / f"{comp}.pte").write_bytes(PTE_LIKE)
        hart.text.tokenizer.save(tmp / "tokenizer.json")
        fmt.write_manifest(tmp, {
            **fmt.header("executorch", specs),
            "model": {"name": hart.cfg.name, "source": fmt.default_source(), "image_size": hart.cfg.image_size,
                      "batch": hart.B},
            "methods": [fmt.method_entry(s, f"{s.component}.pte", entry=s.name) for s in specs],
            "schedule": fmt.schedule_info(hart, None), "sampler": fmt.sampler_info(hart), "rng": fmt.rng_info(specs),
            "tokenizer": fmt.tokenizer_info(hart, "tokenizer.json"), "quantization": {"name": "fp32"},
            "parity": parity_section("executorch", "fp32", hart),
        })
    return root


def test_the_base_bundle_is_valid_so_each_case_fails_for_its_own_reason(base_bundle):
    assert Bundle.open(base_bundle).backend == "executorch"


@pytest.fixture(scope="session")
def base_checkpoint(tmp_path_factory, default_hart) -> Path:
    """The default model saved in the official layout; llm/ keeps only model.safetensors (no pickle)."""
    from model import save

    root = save(default_hart, tmp_path_factory.mktemp("bad") / "ckpt")
    (root / "llm" / "ema_model.bin").unlink()
    return root


@pytest.fixture
def bundle(base_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(base_bundle, dst, symlinks=True)
    return dst


@pytest.fixture
def checkpoint(base_checkpoint, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(base_checkpoint, dst)
    return dst


def reseal(root: Path, manifest: dict | None = None, raw: bytes | None = None, rehash: bool = False) -> None:
    """Write a manifest (dict or raw bytes) and re-seal it, as someone tampering on purpose would."""
    if manifest is not None and rehash:
        for name, meta in manifest["files"].items():
            p = root / name
            if p.exists() and isinstance(meta, dict):
                meta.update(bytes=p.stat().st_size, sha256=sha256_file(p))
    data = raw if raw is not None else (json.dumps(manifest, indent=1) + "\n").encode()
    (root / "manifest.json").write_bytes(data)
    fmt.seal(root)


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


# ---- 1. CLI arguments (fail before torch is imported) --------------------------------------------------------

GENERATE_ARGS = [
    ("no-prompt", [], "--prompt"),
    ("empty-prompt", ["--prompt", "   "], "--prompt is empty"),
    ("seed-negative", ["--prompt", "x", "--seed", "-1"], "outside [0, 2^63 - 1]"),
    ("seed-2^63", ["--prompt", "x", "--seed", str(2**63)], "outside [0, 2^63 - 1]"),
    ("seed-2^64", ["--prompt", "x", "--seed", str(2**64)], "outside [0, 2^63 - 1]"),
    ("seed-float", ["--prompt", "x", "--seed", "1.5"], "not an integer seed"),
    ("seed-word", ["--prompt", "x", "--seed", "abc"], "not an integer seed"),
    ("cfg-nan", ["--prompt", "x", "--cfg", "nan"], "not a finite number"),
    ("cfg-inf", ["--prompt", "x", "--cfg", "inf"], "not a finite number"),
    ("cfg-minus-inf", ["--prompt", "x", "--cfg=-inf"], "not a finite number"),
    ("cfg-word", ["--prompt", "x", "--cfg", "strong"], "is not a number"),
    ("top-k-zero", ["--prompt", "x", "--top-k", "0"], "--top-k must be >= 1"),
    ("top-p-above-1", ["--prompt", "x", "--top-p", "1.5"], "--top-p must be in [0, 1]"),
    ("top-p-nan", ["--prompt", "x", "--top-p", "nan"], "not a finite number"),
    ("checkpoint-missing", ["--prompt", "x", "--checkpoint", "/no/such/ckpt"], "is not a folder"),
    ("checkpoint-and-bundle", ["--prompt", "x", "--checkpoint", "/tmp", "--bundle", "/tmp"], "not allowed with"),
    ("bundle-without-manifest", ["--prompt", "x", "--bundle", "/tmp"], "has no manifest.json"),
    ("text-encoder-alone", ["--prompt", "x", "--text-encoder", "/tmp"], "--text-encoder goes with --checkpoint"),
    ("unknown-flag", ["--prompt", "x", "--steps", "3"], "unrecognized arguments"),
    ("out-is-a-folder", ["--prompt", "x", "--out", "/tmp"], "is a folder"),
    ("out-in-proc", ["--prompt", "x", "--out", "/proc/hart-out.png"], "cannot write in /proc"),
]


@pytest.mark.parametrize("args, needle", [c[1:] for c in GENERATE_ARGS], ids=[c[0] for c in GENERATE_ARGS])
def test_generate_arguments(args, needle, tmp_path):
    out = tmp_path / "x.png"
    args = [*args, "--out", str(out)] if "--out" not in args else args
    check(run("runtime_py.generate", *args, "--quiet"), 2, needle, out)


def test_generate_prompt_with_invalid_utf8(tmp_path):
    out = tmp_path / "x.png"  # argv bytes that are not UTF-8 arrive as lone surrogates (PEP 383)
    check(run("runtime_py.generate", "--prompt", b"caf\xe9 \xff", "--out", str(out), "--quiet"), 2,
          "not valid UTF-8", out)


def test_generate_out_under_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "x.png"
    check(run("runtime_py.generate", "--prompt", "x", "--out", str(out), "--quiet"), 2, "is not a folder")


def test_generate_text_encoder_not_a_folder(tmp_path, base_checkpoint):
    out = tmp_path / "x.png"
    check(run("runtime_py.generate", "--prompt", "x", "--checkpoint", str(base_checkpoint), "--text-encoder",
              str(tmp_path / "nope"), "--out", str(out), "--quiet"), 2, "is not a folder", out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (the /proc case covers it)")
def test_generate_out_in_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    check(run("runtime_py.generate", "--prompt", "x", "--out", str(ro / "x.png"), "--quiet"), 2, "cannot write")


def _result(tmp: Path, name: str = "a.json", **stage) -> Path:
    from benchmarks.schema import SCHEMA, SCHEMA_VERSION

    st = {"min_ms": 1.0, "median_ms": 1.0, "p90_ms": 1.0, "runs_ms": [1.0], **stage}
    p = tmp / name
    p.write_text(json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "machine": {},
                             "targets": [{"name": "t", "backend": "eager", "stages": {"vae": st}}]}))
    return p


COMPARE = [
    ("fail-above-nan", lambda t: [_result(t), _result(t), "--fail-above", "nan"], "not a finite number"),
    ("fail-above-inf", lambda t: [_result(t), _result(t), "--fail-above", "inf%"], "not a finite number"),
    ("fail-above-negative", lambda t: [_result(t), _result(t), "--fail-above=-5%"], "is negative"),
    ("fail-above-word", lambda t: [_result(t), _result(t), "--fail-above", "some"], "is not a number"),
    ("missing-file", lambda t: [_result(t), t / "none.json"], "is not a file"),
    ("folder", lambda t: [_result(t), t], "is not a file"),
    ("garbage-bytes", lambda t: [_result(t), _write(t / "g.json", b"\xff\xfe\x00garbage")], "not a benchmark result"),
    ("json-null", lambda t: [_result(t), _write(t / "n.json", b"null")], "not a benchmark result"),
    ("json-list", lambda t: [_result(t), _write(t / "l.json", b"[1, 2]")], "not a benchmark result"),
    ("wrong-schema", lambda t: [_result(t), _write(t / "s.json", b'{"schema": "x"}')], "schema is 'x'"),
    ("median-string", lambda t: [_result(t), _result(t, "b.json", median_ms="fast")], "is not a number"),
    ("nothing-shared", lambda t: [_result(t), _write(t / "e.json", json.dumps(
        {**json.loads(_result(t).read_text()), "targets": []}).encode())], "share no target"),
]


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("make, needle", [c[1:] for c in COMPARE], ids=[c[0] for c in COMPARE])
def test_benchmarks_compare(make: Callable, needle, tmp_path):
    check(run("benchmarks.compare", *map(str, make(tmp_path))), 2, needle)


# CLIs that import torch before parsing: still one line and exit 2, nothing written.
HEAVY_ARGS = [
    ("et-quant", "export.executorch", ["--quant", "int3"], "invalid choice"),
    ("et-group-size-odd", "export.executorch", ["--group-size", "3"], "positive even number"),
    ("et-group-size-48", "export.executorch", ["--group-size", "48"], "does not divide the transformer block"),
    ("et-attn-chunk", "export.executorch", ["--attn-chunk", "-4"], "--attn-chunk must be >= 0"),
    ("et-split-int8-kv", "export.executorch", ["--kv-cache", "int8"], "need --ar-layout scales"),
    ("et-ar-layout", "export.executorch", ["--ar-layout", "flat"], "invalid choice"),
    ("et-auto-no-budget", "export.executorch", ["--quant", "auto"], "exactly one of --budget"),
    ("et-budget-nan", "export.executorch", ["--quant", "auto", "--budget", "nan"], "not a finite number"),
    ("et-budget-above-1", "export.executorch", ["--quant", "auto", "--budget", "1.5"], "in (0, 1]"),
    ("et-budget-without-auto", "export.executorch", ["--budget", "0.9"], "only apply to --quant auto"),
    ("et-plan-missing", "export.executorch", ["--quant", "auto", "--plan", "/no/plan.json"], "is not a file"),
    ("et-checkpoint-missing", "export.executorch", ["--checkpoint", "/no/ckpt"], "is not a folder"),
    ("et-schedule", "export.executorch", ["--schedule", "999px"], "invalid choice"),
    ("onnx-quant", "export.onnx", ["--quant", "int2"], "invalid choice"),
    ("onnx-kv-cache", "export.onnx", ["--kv-cache", "int4"], "invalid choice"),
    ("onnx-text-encoder-alone", "export.onnx", ["--text-encoder", "/tmp"], "--text-encoder goes with"),
    ("coreml-kv-int8", "export.coreml", ["--kv-cache", "int8"], "fp16 only"),
    ("coreml-block-size", "export.coreml", ["--block-size", "3"], "power of two"),
    ("coreml-schedule", "export.coreml", ["--schedule", "1,x"], "--schedule"),
    ("parity-no-bundle", "runtime_py.parity", ["--bundle", "/no/bundle"], "has no manifest.json"),
    ("coreml-parity-no-bundle", "runtime_py.coreml.parity", ["--bundle", "/no/bundle"], "has no manifest.json"),
    ("host-runs-zero", "benchmarks.host", ["--runs", "0"], "--runs and --threads must be >= 1"),
    ("host-cfg-nan", "benchmarks.host", ["--cfg", "nan"], "not a finite number"),
    ("host-seed-2^64", "benchmarks.host", ["--seed", str(2**64)], "outside [0, 2^63 - 1]"),
    ("android-no-bundle", "benchmarks.android", ["--bundle", "/no/bundle"], "has no manifest.json"),
    ("ios-no-bundle", "benchmarks.ios", ["--bundle", "/no/bundle"], "has no manifest.json"),
    ("scale-no-source", "benchmarks.scale", [], "exactly one of --random-init"),
    ("auto-budget-nan", "quantization.auto", ["--budget", "nan"], "not a finite number"),
    ("auto-group-size", "quantization.auto", ["--budget", "0.9", "--group-size", "5"], "positive even number"),
    ("sensitivity-seed", "quantization.sensitivity", ["--seeds", "-2"], "outside [0, 2^63 - 1]"),
    ("sensitivity-cfg", "quantization.sensitivity", ["--cfg", "inf"], "not a finite number"),
    ("curve-budget", "quantization.curve", ["--budgets", "1.5"], "in (0, 1]"),
    ("curve-granularity", "quantization.curve", ["--granularity", "rows"], "kind, block or blocksN"),
    ("quality-seeds", "benchmarks.quality", ["--seeds", "-1"], "--seeds must be in [1, 1000]"),
    ("quality-prompts", "benchmarks.quality", ["--prompts", "0"], "--prompts must be in [1, 153]"),
    ("quality-no-bundle", "benchmarks.quality", ["--bundle", "/no/bundle"], "has no manifest.json"),
    ("quality-checkpoint-missing", "benchmarks.quality", ["--checkpoint", "/no/ckpt"], "is not a folder"),
    ("train-stage", "train", ["--stage", "gan"], "invalid choice"),
    ("train-steps", "train", ["--stage", "vae", "--steps", "0"], "--steps must be >= 1"),
    ("train-seed", "train", ["--stage", "vae", "--seed", "-3"], "--seed must be >= 0"),
    ("train-ar-without-vae", "train", ["--stage", "ar"], "run the earlier stages"),
    ("train-preview-without-model", "train", ["--stage", "preview"], "run the earlier stages"),
]


@pytest.mark.parametrize("module, args, needle", [c[1:] for c in HEAVY_ARGS], ids=[c[0] for c in HEAVY_ARGS])
def test_cli_arguments(module, args, needle, tmp_path):
    out = tmp_path / "out"
    check(run(module, *args, "--out", str(out)) if module.startswith(("export", "quantization", "benchmarks.host",
                                                                     "benchmarks.scale", "benchmarks.quality", "train"))
          else run(module, *args), 2, needle, out)


PLANS = [
    ("not-json", b"{layers", "not a readable JSON file"),
    ("list", b"[]", "expected a JSON object"),
    ("empty-object", b"{}", "searched for backend None"),
    ("wrong-backend", json.dumps({"backend": "coreml", "group_size": 32}).encode(), "not executorch"),
    ("group-size", json.dumps({"backend": "executorch", "group_size": 64}).encode(), "group_size 64"),
    ("budget-nan", b'{"backend": "executorch", "group_size": 32, "budget": NaN}', "budget nan"),
    ("no-layers", json.dumps({"backend": "executorch", "group_size": 32, "budget": 0.9}).encode(), "layers must be"),
    ("bad-scheme", json.dumps({"backend": "executorch", "group_size": 32, "budget": 0.9,
                               "layers": {"blocks.0.attn.proj": "int2"}}).encode(), "schemes must be among"),
]


@pytest.mark.parametrize("data, needle", [c[1:] for c in PLANS], ids=[c[0] for c in PLANS])
def test_export_auto_plan(data, needle, tmp_path):
    plan, out = tmp_path / "plan.json", tmp_path / "out"
    plan.write_bytes(data)
    check(run("export.executorch", "--quant", "auto", "--plan", str(plan), "--out", str(out), "--quiet"), 2, needle,
          out)


def test_export_out_is_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("mine")
    check(run("export.onnx", "--out", str(f)), 2, "is not a bundle folder")
    assert f.read_text() == "mine"


def test_export_out_is_a_folder_with_other_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    check(run("export.executorch", "--out", str(tmp_path / "out")), 2, "is not a bundle folder")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_export_checkpoint_without_text_encoder(tmp_path, base_checkpoint):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(base_checkpoint, ckpt, ignore=shutil.ignore_patterns("text_encoder"))
    check(run("export.onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--quiet"), 2,
          "pass --text-encoder DIR", tmp_path / "out")


# ---- 2. checkpoint folders (generate --checkpoint and the public loader) ------------------------------------

def _json(path: Path, value) -> None:
    path.write_text(json.dumps(value) if not isinstance(value, bytes) else value.decode())


def _config(ckpt: Path, **changes) -> None:
    p = ckpt / "llm" / "config.json"
    _json(p, {**json.loads(p.read_text()), **changes})


def _tensor(ckpt: Path, rel: str, value: float) -> None:
    p = ckpt / rel
    sd = load_file(p)
    key = sorted(k for k, v in sd.items() if k.endswith(".weight") and v.numel() > 1)[0]
    sd[key].view(-1)[0] = value
    save_file(sd, p)


class _Evil:
    """A pickle that runs a shell command when unpickled: the loader must refuse it (weights_only)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


CHECKPOINTS = [
    ("config-list", lambda c: _json(c / "llm" / "config.json", [1, 2]), "expected a JSON object, got list"),
    ("config-null", lambda c: _json(c / "llm" / "config.json", None), "expected a JSON object, got NoneType"),
    ("config-not-json", lambda c: _json(c / "llm" / "config.json", b"{depth: 2"), "invalid JSON"),
    ("num-heads-0", lambda c: _config(c, num_heads=0), "num_heads=0"),
    ("num-heads-3", lambda c: _config(c, num_heads=3), "num_heads=3"),
    ("num-heads-string", lambda c: _config(c, num_heads="4"), "num_heads='4'"),
    ("num-heads-too-many", lambda c: _config(c, num_heads=256), "num_heads=256"),
    ("patch-nums-string", lambda c: _config(c, patch_nums="1,2,4"), "patch_nums="),
    ("patch-nums-zero", lambda c: _config(c, patch_nums=[0, 1, 2]), "patch_nums="),
    ("context-token-negative", lambda c: _config(c, context_token=-3), "context_token=-3"),
    ("mlp-ratio-nan", lambda c: _config(c, mlp_ratio=math.nan), "mlp_ratio=nan"),
    ("depth-mismatch", lambda c: _config(c, depth=7), "config.json says depth=7"),
    ("weights-truncated", lambda c: _write(c / "llm" / "model.safetensors",
                                           (c / "llm" / "model.safetensors").read_bytes()[:5000]), "cannot be read"),
    ("weights-garbage", lambda c: _write(c / "llm" / "model.safetensors", os.urandom(3000)), "cannot be read"),
    ("weights-missing", lambda c: (c / "llm" / "model.safetensors").unlink(), "no weights"),
    ("weights-nan", lambda c: _tensor(c, "llm/model.safetensors", math.nan), "contains NaN or Inf"),
    ("weights-inf", lambda c: _tensor(c, "llm/model.safetensors", math.inf), "contains NaN or Inf"),
    ("vae-weights-inf", lambda c: _tensor(c, "tokenizer/model.safetensors", -math.inf), "contains NaN or Inf"),
    ("vae-weights-garbage", lambda c: _write(c / "tokenizer" / "model.safetensors", b"\x08" + b"\0" * 7 + b"{"),
     "cannot be read"),
    ("vae-config-list", lambda c: _json(c / "tokenizer" / "config.json", ["x"]), "expected a JSON object"),
    ("vae-config-missing", lambda c: (c / "tokenizer" / "config.json").unlink(), "missing"),
    ("pickle-payload", lambda c: _write(c / "llm" / "ema_model.bin", pickle.dumps({"w": _Evil(c / "EVIL_RAN")})),
     "not a loadable weights-only state dict"),
    ("text-tokenizer-garbage", lambda c: _write(c / "text_encoder" / "tokenizer.json", b"{\"model\": 3}"),
     "cannot be read"),
    ("text-config-list", lambda c: _json(c / "text_encoder" / "config.json", []), "cannot be read"),
    ("text-weights-garbage", lambda c: _write(c / "text_encoder" / "model.safetensors", os.urandom(100)),
     "cannot be read"),
    ("text-encoder-missing", lambda c: shutil.rmtree(c / "text_encoder"), "pass --text-encoder DIR"),
]


@pytest.mark.parametrize("spoil, needle", [c[1:] for c in CHECKPOINTS], ids=[c[0] for c in CHECKPOINTS])
def test_generate_checkpoint(spoil: Callable, needle, checkpoint, tmp_path):
    spoil(checkpoint)
    out = tmp_path / "x.png"
    r = run("runtime_py.generate", "--prompt", "x", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet")
    check(r, 2, needle, out)
    assert not (checkpoint / "EVIL_RAN").exists()


def test_generate_text_encoder_from_its_own_folder_is_checked_too(checkpoint, tmp_path):
    text = tmp_path / "qwen"
    shutil.move(checkpoint / "text_encoder", text)
    (text / "config.json").write_text("[]")
    out = tmp_path / "x.png"
    check(run("runtime_py.generate", "--prompt", "x", "--checkpoint", str(checkpoint), "--text-encoder", str(text),
              "--out", str(out), "--quiet"), 2, f"{text}: cannot be read", out)


API = """import sys
from model.errors import UserError
try:
    {call}
except UserError as e:
    print("error:", e, file=sys.stderr)
    sys.exit(e.code)
"""


@pytest.mark.parametrize("spoil, needle", [c[1:] for c in CHECKPOINTS if c[0] in
                                           ("config-list", "num-heads-0", "weights-garbage", "weights-nan")],
                         ids=["config-list", "num-heads-0", "weights-garbage", "weights-nan"])
def test_model_load_raises_user_error(spoil: Callable, needle, checkpoint):
    spoil(checkpoint)
    code = API.format(call=f"from model import load; load({str(checkpoint)!r})")
    check(subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, timeout=600), 2, needle)


# ---- 3. manifest.json -----------------------------------------------------------------------------------------

def _set(path: str | tuple, value):
    """A manifest edit at a dotted path (or a tuple of keys; digits index lists); _DELETE deletes."""
    def apply(m: dict) -> dict:
        keys = path if isinstance(path, tuple) else path.split(".")
        *parents, last = [int(k) if isinstance(k, str) and k.isdigit() else k for k in keys]
        node = m
        for k in parents:
            node = node[k]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
        return m
    return apply


_DELETE = object()
FIRST_FILE = "ar_transformer.pte"

MANIFESTS = [
    ("null", b"null", "expected a JSON object, got NoneType"),
    ("list", b"[]", "expected a JSON object, got list"),
    ("string", b'"bundle"', "expected a JSON object, got str"),
    ("not-json", b'{"format": ', "not valid JSON"),
    ("not-utf8", b'{"format": "\xff"}', "not valid JSON"),
    ("missing-files", _set("files", _DELETE), "missing field(s) files"),
    ("missing-methods", _set("methods", _DELETE), "missing field(s) methods"),
    ("entry-without-sha256", _set(("files", FIRST_FILE, "sha256"), _DELETE), "64 lowercase hex digits"),
    ("entry-without-bytes", _set(("files", FIRST_FILE, "bytes"), _DELETE), "non-negative integer"),
    ("entry-bytes-string", _set(("files", FIRST_FILE, "bytes"), "4096"), "non-negative integer"),
    ("entry-sha-not-hex", _set(("files", FIRST_FILE, "sha256"), "z" * 64), "64 lowercase hex digits"),
    ("entry-not-object", _set(("files", FIRST_FILE), "abc"), "must be {bytes"),
    ("files-list", _set("files", []), "files must be a non-empty object"),
    ("methods-object", _set("methods", {}), "methods must be a non-empty list"),
    ("method-without-file", _set("methods.0.file", _DELETE), "methods[0].file must be a non-empty string"),
    ("method-name-number", _set("methods.1.name", 7), "methods[1].name must be a non-empty string"),
    ("tensor-dtype", _set("methods.0.inputs.0.dtype", "complex128"), "dtype must be one of"),
    ("tensor-shape", _set("methods.0.inputs.0.shape", [1, -2]), "shape must be a list of non-negative"),
    ("tensor-shape-string", _set("methods.0.outputs.0.shape", "1x2"), "shape must be a list"),
    ("tokenizer-missing", _set("tokenizer", _DELETE), "missing field(s) tokenizer"),
    ("tokenizer-max-tokens", _set("tokenizer.max_tokens", "many"), "max_tokens (positive integer)"),
    ("schema-version-string", _set("schema_version", "1"), "schema_version must be an integer"),
    ("schema-version-99", _set("schema_version", 99), "schema_version 99 is not supported"),
    ("min-runtime-99", _set("min_runtime_version", 99), "needs runtime version >= 99"),
    ("format", _set("format", "zip"), "format 'zip'"),
    ("backend-number", _set("backend", 3), "backend must be a string"),
    ("backend-unknown", _set("backend", "tflite"), "unknown backend 'tflite'"),
    ("call-order", _set("call_order", ["scale_00"]), "do not follow call_order"),
    ("cfg-default-string", _set("sampler.cfg_default", "high"), "cfg_default must be a finite number"),
    ("thresholds-string", _set("parity.thresholds", "loose"), "parity.thresholds must be an object"),
    ("path-escape", lambda m: {**m, "files": {"../outside.pte": m["files"][FIRST_FILE], **m["files"]}},
     "unsafe path '../outside.pte'"),
    ("path-absolute", lambda m: {**m, "files": {"/etc/passwd": m["files"][FIRST_FILE], **m["files"]}},
     "unsafe path '/etc/passwd'"),
    ("method-file-not-listed", _set("methods.0.file", "other.pte"), "not in the file table"),
    ("listed-file-missing", lambda m: {**m, "files": {**m["files"], "extra.bin": m["files"][FIRST_FILE]}},
     "extra.bin: missing"),
]


@pytest.mark.parametrize("spoil, needle", [c[1:] for c in MANIFESTS], ids=[c[0] for c in MANIFESTS])
def test_generate_bundle_manifest(spoil, needle, bundle, tmp_path):
    if isinstance(spoil, bytes):
        reseal(bundle, raw=spoil)
    else:
        reseal(bundle, spoil(manifest_of(bundle)))
    out = tmp_path / "x.png"
    check(run("runtime_py.generate", "--prompt", "x", "--bundle", str(bundle), "--out", str(out), "--quiet"), 2,
          needle, out)


# ---- 4. bundle files ----------------------------------------------------------------------------------------

def _symlink_out(b: Path) -> None:
    outside = b.parent / "elsewhere.pte"
    (b / FIRST_FILE).rename(outside)
    (b / FIRST_FILE).symlink_to(outside)  # same bytes, so size and sha256 still match


def _symlink_in(b: Path) -> None:
    (b / "tokenizer.json").rename(b / "tok.real")
    (b / "tokenizer.json").symlink_to("tok.real")


def _flip(b: Path, name: str = FIRST_FILE) -> None:
    data = bytearray((b / name).read_bytes())
    data[100] ^= 1
    (b / name).write_bytes(bytes(data))


def _rehashed(write: Callable[[Path], None]) -> Callable[[Path], None]:
    def spoil(b: Path) -> None:
        write(b)
        reseal(b, manifest_of(b), rehash=True)
    return spoil


FILES = [
    ("file-modified", 2, _flip, "sha256 does not match"),
    ("file-truncated", 2, lambda b: _write(b / FIRST_FILE, (b / FIRST_FILE).read_bytes()[:100]), "size 100 bytes"),
    ("file-missing", 2, lambda b: (b / "vae_decoder.pte").unlink(), "vae_decoder.pte: missing"),
    ("file-is-a-folder", 2, lambda b: ((b / "vae_decoder.pte").unlink(), (b / "vae_decoder.pte").mkdir()), "missing"),
    ("symlink-outside", 1, _symlink_out, "is a symlink"),
    ("symlink-inside", 1, _symlink_in, "is a symlink"),
    ("manifest-symlink", 1, lambda b: ((b / "manifest.json").rename(b / "m.json"),
                                    (b / "manifest.json").symlink_to("m.json")), "is a symlink"),
    ("manifest-edited-unsealed", 1, lambda b: (b / "manifest.json").write_text(
        (b / "manifest.json").read_text().replace('"fp32"', '"fp16"', 1)), "digest mismatch"),
    ("seal-missing", 1, lambda b: (b / "manifest.sha256").unlink(), "no manifest.sha256"),
    ("seal-garbage", 1, lambda b: _write(b / "manifest.sha256", b"0" * 10), "is not one line"),
    ("pte-garbage-rehashed", 2, _rehashed(lambda b: _write(b / "text_encoder.pte", os.urandom(4096))),
     "is not an ExecuTorch program"),
    ("pte-empty-rehashed", 2, _rehashed(lambda b: _write(b / "text_encoder.pte", b"")), "is not an ExecuTorch program"),
    ("pte-corrupt-rehashed", 2, lambda b: None, "fails ExecuTorch program verification"),  # the base artifacts
    ("tokenizer-garbage-rehashed", 2, _rehashed(lambda b: _write(b / "tokenizer.json", b'{"model": {"type": 1}}')),
     "not a usable tokenizer"),
]


@pytest.mark.parametrize("code, spoil, needle", [c[1:] for c in FILES], ids=[c[0] for c in FILES])
def test_generate_bundle_files(code, spoil: Callable, needle, bundle, tmp_path):
    """Integrity failures (links, an edited manifest, a broken seal) are failed checks (1); a bundle that
    cannot be used is a bad input (2). A garbage .pte once aborted the process (exit -6)."""
    spoil(bundle)
    out = tmp_path / "x.png"
    r = run("runtime_py.generate", "--prompt", "x", "--bundle", str(bundle), "--out", str(out), "--quiet")
    check(r, code, needle, out)


def test_bundle_open_raises_user_error(bundle):
    _flip(bundle)
    code = API.format(call=f"from runtime_py.bundle import Bundle; Bundle.open({str(bundle)!r})")
    check(subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, timeout=600), 2, "sha256 does not match")


# ---- 5. the parity gate: arguments, output path, tampered thresholds -------------------------------------------

def _loosen(m: dict) -> dict:
    m["parity"]["thresholds"]["end_to_end"]["image_psnr_db"] = 1.0
    m["parity"]["thresholds"]["teacher_forced"]["token_agreement"] = 0.01
    return m


def _tamper_weights_and_limits(b: Path) -> None:
    _flip(b, "ar_transformer.pte")
    reseal(b, _loosen(manifest_of(b)), rehash=True)


PARITY = [
    ("report-is-a-file", lambda b, t: ["--report", str(_write(t / "r.txt", b"mine"))], 2, "is an existing file"),
    ("report-under-a-file", lambda b, t: ["--report", str(_write(t / "f", b"x")) + "/r"], 2, "is not a folder"),
    ("report-in-proc", lambda b, t: ["--report", "/proc/hart-report"], 2, "cannot write in /proc"),
    ("checkpoint-for-seeded", lambda b, t: ["--checkpoint", str(t)], 2, "drop --checkpoint"),
    ("text-encoder-alone", lambda b, t: ["--text-encoder", str(t)], 2, "--text-encoder goes with"),
    ("thresholds-loosened", lambda b, t: reseal(b, _loosen(manifest_of(b)))
     or [], 1, "looser than documented"),
    ("tampered-weights-and-limits", lambda b, t: _tamper_weights_and_limits(b) or [], 1, "looser than documented"),
    ("threshold-removed", lambda b, t: reseal(b, _set("parity.thresholds.golden.sqnr_db", _DELETE)(manifest_of(b)))
     or [], 1, "looser than documented"),
    ("unknown-recipe", lambda b, t: reseal(b, _set("parity.recipe", "int1")(manifest_of(b))) or [], 1,
     "has no documented thresholds"),
    ("no-thresholds", lambda b, t: reseal(b, _set("parity", {})(manifest_of(b))) or [], 2, "no parity thresholds"),
    ("threshold-nan", lambda b, t: reseal(b, raw=(b / "manifest.json").read_bytes().replace(
        b'"image_psnr_db": 45.0', b'"image_psnr_db": NaN')) or [], 2, "finite numbers"),
    ("artifact-unloadable", lambda b, t: [], 2, "fails ExecuTorch program verification"),
]


@pytest.mark.parametrize("make, code, needle", [c[1:] for c in PARITY], ids=[c[0] for c in PARITY])
def test_parity_gate(make: Callable, code, needle, bundle, tmp_path):
    extra = make(bundle, tmp_path)
    report = tmp_path / "report"
    args = extra if "--report" in extra else [*extra, "--report", str(report)]
    check(run("runtime_py.parity", "--bundle", str(bundle), *args), code, needle)
    assert not report.exists()
    assert (tmp_path / "r.txt").read_bytes() == b"mine" if (tmp_path / "r.txt").exists() else True


# ---- 6. interrupted and failing writes ---------------------------------------------------------------------------

@pytest.mark.slow  # starts a real export
def test_export_interrupted_by_ctrl_c(tmp_path):
    """SIGINT in the middle of an export: one line, exit 130, no bundle and no partial folder."""
    out = tmp_path / "b"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([PY, "-m", "export.onnx", "--quant", "fp32", "--out", str(out), "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".b.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    check(subprocess.CompletedProcess(proc.args, proc.returncode, b"", err), 130, "interrupted", out)
    assert not any(p.name.startswith(".b.") for p in tmp_path.iterdir())


@pytest.mark.parametrize("module", ["export.onnx", "runtime_py.generate", "quantization.auto"])
def test_ctrl_c_while_starting(module, tmp_path):
    """Ctrl-C while torch is still importing (signalled as soon as libtorch is mapped: a fixed delay either
    lands before Python's own handler or, on a fast machine, after generate has already finished): one
    line, exit 130, never a traceback, nothing written."""
    out = tmp_path / "out"
    args = {"export.onnx": ["--out", str(out)], "runtime_py.generate": ["--prompt", "x", "--out", str(out), "--quiet"],
            "quantization.auto": ["--budget", "0.9", "--out", str(out)]}[module]
    proc = subprocess.Popen([PY, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 120
    while "libtorch_cpu" not in maps.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "torch was never loaded"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    check(subprocess.CompletedProcess(proc.args, proc.returncode, b"", err), 130, "interrupted", out)


def test_generate_under_a_file_size_limit(tmp_path):
    """`ulimit -f`: the PNG cannot be written; one line, exit 1, no PNG and no temp file."""
    import resource

    out = tmp_path / "x.png"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    check(run("runtime_py.generate", "--prompt", "a red fox", "--out", str(out), "--quiet", preexec_fn=limit), 1,
          "File too large", out)
