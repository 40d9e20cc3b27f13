"""Bundle integrity and interrupted exports, through the real CLIs in subprocesses (docs/bundle-format.md).

- manifest.sha256: a manifest edited after export is refused when the bundle is opened;
- the parity gate refuses thresholds looser than documented, even from a forger who re-hashes the files
  and re-seals the manifest;
- a bundle file replaced by a symlink is refused;
- Ctrl-C and `ulimit -f` during an export: one line, exit 130 / 1, nothing at --out, no temp folder left;
  the temp folder of a killed export is removed by the next export, a live export's is kept.
The bundle is a real ONNX fp32 export of the default model (about a minute); the interrupted exports
are real ExecuTorch exports stopped early.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export import bundle as fmt
from runtime_py.thresholds import looser_than_documented, parity_section

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def one_error_line(r: subprocess.CompletedProcess, code: int) -> str:
    """The CLI contract for a refused input: exit `code`, exactly one stderr line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "onnx-fp32"
    r = cli("export.onnx", "--quant", "fp32", "--quiet", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "", r.stderr[-3000:]  # --quiet: no third-party noise either (runtime_py/quiet.py)
    return out


@pytest.fixture
def bundle(onnx_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(onnx_bundle, dst)
    return dst


def edit_manifest(root: Path, change) -> dict:
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    return m


# ---- the digest ------------------------------------------------------------------------------


@pytest.mark.slow
def test_untouched_bundle_passes_the_gate_quietly(onnx_bundle, tmp_path):
    """The control for everything below: the exported bundle opens, passes its gate and generates,
    with nothing on stderr."""
    r = cli("runtime_py.parity", "--bundle", str(onnx_bundle))
    assert r.returncode == 0 and "parity passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr == ""
    r = cli("runtime_py.generate", "--bundle", str(onnx_bundle), "--prompt", "a red fox", "--out",
            str(tmp_path / "fox.png"), "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr[-3000:]
    assert (tmp_path / "fox.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["runtime_py.parity", "runtime_py.generate"])
def test_manifest_edited_without_its_digest_is_refused(bundle, command, tmp_path):
    """Loosening a threshold by hand (the digest left as exported) is caught before anything runs."""
    edit_manifest(bundle, lambda m: m["parity"]["thresholds"]["golden"].update(sqnr_db=0.0))
    args = ["--prompt", "x", "--out", str(tmp_path / "x.png")] if command.endswith("generate") else []
    line = one_error_line(cli(command, "--bundle", str(bundle), *args), 1)
    assert "manifest.json was edited after export (digest mismatch with manifest.sha256)" in line
    assert "re-export the bundle" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_resealed_tampered_bundle_with_loosened_thresholds_fails_the_gate(bundle, default_hart):
    """A forger scales one AR weight, re-hashes every file, sets every threshold to 0 and re-seals the
    manifest (export.bundle.write_manifest): the bundle opens, but the gate refuses its limits."""
    data = bytearray((bundle / "weights.data").read_bytes())
    w = default_hart.ar.blocks[1].ffn.down_proj.weight.detach().T  # ONNX MatMul stores W^T
    raw = w.contiguous().numpy().astype("<f4").tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "weight bytes not found exactly once"
    data[at:at + len(raw)] = (w * 1.5).contiguous().numpy().astype("<f4").tobytes()
    (bundle / "weights.data").write_bytes(bytes(data))
    m = json.loads((bundle / "manifest.json").read_text())
    for limits in [*m["parity"]["thresholds"].values(), m["parity"].get("full_precision", {})]:
        for k in limits:
            limits[k] = 0.0
    fmt.write_manifest(bundle, {k: v for k, v in m.items() if k != "files"})  # new hashes, new digest
    line = one_error_line(cli("runtime_py.parity", "--bundle", str(bundle)), 1)
    assert "parity thresholds are looser than documented for onnx fp32" in line
    assert "components.diffusion_psnr_db 0 < documented 60" in line and "and 9 more" in line  # every limit
    assert "re-export the bundle" in line


@pytest.mark.slow
def test_file_replaced_by_a_symlink_is_refused(bundle, tmp_path):
    """Same bytes, same hash, but outside the bundle: a symlink is never followed."""
    outside = tmp_path / "elsewhere.data"
    shutil.move(bundle / "weights.data", outside)
    (bundle / "weights.data").symlink_to(outside)
    line = one_error_line(cli("runtime_py.parity", "--bundle", str(bundle)), 1)
    assert "weights.data is a symlink" in line


def test_thresholds_tighter_than_documented_are_accepted_looser_ones_named():
    """The gate's comparison: stricter limits pass; lower, missing, non-finite or unknown ones are named."""
    from types import SimpleNamespace

    hart = SimpleNamespace(cfg=SimpleNamespace(kv_cache="int8", attn_chunk=0))
    documented = parity_section("executorch", "8da4w", hart)
    assert "full_precision" in documented  # a memory mode adds the drift check
    tight = json.loads(json.dumps(documented))
    tight["thresholds"]["golden"]["token_agreement"] = 0.99
    assert looser_than_documented(tight, documented) == []
    loose = json.loads(json.dumps(documented))
    loose["thresholds"]["golden"]["token_agreement"] = 0.5
    loose["thresholds"]["end_to_end"]["image_psnr_db"] = math.nan
    loose["thresholds"]["golden"]["made_up"] = 1.0
    del loose["thresholds"]["components"]
    loose["full_precision"]["token_agreement"] = True
    assert looser_than_documented(loose, documented) == [
        "components missing", "end_to_end.image_psnr_db is nan, not a number",
        "full_precision.token_agreement is True, not a number", "golden.made_up is not a documented threshold",
        "golden.token_agreement 0.5 < documented 0.6"]
    assert looser_than_documented({"thresholds": documented["thresholds"]}, documented) == ["full_precision missing"]


@pytest.mark.parametrize("scheme, base", [("8da4w", "8da4w"), ("8da8w", "8da8w")])
def test_gate_rebuilds_an_auto_plans_limits_from_the_manifest(scheme, base):
    """auto: the manifest records the budget (quantization.auto) and the layer schemes (the AR component);
    what the gate rebuilds from them equals what the exporter wrote from the plan itself."""
    from types import SimpleNamespace

    from quantization.recipes import ComponentRecipe, Recipe
    from runtime_py.thresholds import manifest_plan

    hart = SimpleNamespace(cfg=SimpleNamespace(kv_cache="fp32", attn_chunk=0))
    plan = {"backend": "executorch", "budget": 0.93, "layers": {"blocks.0.ffn.up_proj": scheme, "head": "fp32"}}
    ar = ComponentRecipe("ar_transformer", "auto", 32, layers={"ar." + k: v for k, v in plan["layers"].items()})
    manifest = {"quantization": Recipe("auto", 32, {"ar_transformer": ar}, plan).to_json()}
    rebuilt = parity_section("executorch", "auto", hart, manifest_plan(manifest))
    assert rebuilt == parity_section("executorch", "auto", hart, plan)
    assert rebuilt["thresholds"]["teacher_forced"] == {"token_agreement": 0.93}
    assert rebuilt["thresholds"]["end_to_end"] == parity_section("executorch", base, hart)["thresholds"]["end_to_end"]


# ---- interrupted and killed exports ------------------------------------------------------------


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_remove_stale_takes_only_dead_or_day_old_temp_folders_of_that_out(tmp_path):
    out = tmp_path / "out"
    gone = dead_pid()
    stale = [tmp_path / f".out.partial-{gone}-abc_12", tmp_path / f".out.old-{gone}-zz9"]
    old = tmp_path / ".out.partial-k2j4h5g6"  # an older naming without a pid: removed once a day old
    keep = [tmp_path / f".out.partial-{os.getpid()}-live1", tmp_path / f".other.partial-{gone}-abc",
            tmp_path / ".out.partial-young123", tmp_path / f".out.partial-{gone}-afile"]
    for d in stale + [old] + keep[:3]:
        d.mkdir()
        (d / "half.pte").write_bytes(b"x")
    keep[3].write_bytes(b"a file, not a folder")
    day_ago = time.time() - fmt.STALE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    target = tmp_path / "precious"
    target.mkdir()
    link = tmp_path / f".out.partial-{gone}-link"
    link.symlink_to(target)  # never followed, never removed
    assert sorted(fmt.remove_stale(out)) == sorted(stale + [old])
    assert all(p.exists() for p in keep) and link.is_symlink() and target.is_dir()
    assert not any(p.exists() for p in stale + [old])


def export_to(out: Path, **popen) -> subprocess.Popen:
    """A real ExecuTorch export (fp32: no calibration) of the default model, stderr captured."""
    return subprocess.Popen([sys.executable, "-m", "export.executorch", "--quant", "fp32", "--quiet", "--out",
                             str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def wait_for(cond, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"export ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}"
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_ctrl_c_during_export_writes_nothing_and_stale_folders_are_cleaned(tmp_path):
    """SIGINT while the bundle is being built: exit 130, one line, no --out, no temp folder. The same
    export first removed the leftover of a killed export (dead pid) and kept a live one's."""
    out = tmp_path / "out"
    stale = tmp_path / f".out.partial-{dead_pid()}-abcd1234"
    live = tmp_path / f".out.partial-{os.getpid()}-efgh5678"
    for d in (stale, live):
        d.mkdir()
        (d / "ar_transformer.pte").write_bytes(b"half")
    proc = export_to(out)
    mine = f".out.partial-{proc.pid}-"
    try:
        wait_for(lambda: any(p.name.startswith(mine) for p in tmp_path.iterdir()), proc)
        assert not stale.exists() and live.is_dir()
        time.sleep(2)  # inside the export proper, not at the folder's creation
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    r = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    line = one_error_line(r, 130)
    assert "interrupted" in line and "nothing was written" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]  # no --out, no temp folder of its own


@pytest.mark.slow
def test_file_size_limit_during_export_is_one_line_and_leaves_nothing(tmp_path):
    """`ulimit -f 256` (RLIMIT_FSIZE): the first program written fails with EFBIG (Python ignores
    SIGXFSZ, so the write raises instead of killing the process): exit 1, one line, nothing left."""
    limit = 256 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "out"
    proc = export_to(out, preexec_fn=small_files)
    try:
        _, err = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, "", err), 1)
    assert "File too large" in line and "ulimit -f" in line
    assert list(tmp_path.iterdir()) == []
