"""The bundle format shared by the ExecuTorch, Core ML and ONNX exporters.

A bundle is a folder: artifacts, `tokenizer.json`, `golden/` (eager reference tensors a phone can
replay) and `manifest.json`, which describes everything a runtime needs without reading Python:
call order, per-method I/O with sources and RNG streams, the scale schedule, sampler constants, the
RNG spec, the tokenizer, the quantization recipe, parity thresholds and the sha256 + size of every
file. `runtime_py/bundle.py` validates all of that before anything runs.

Writing is all-or-nothing: `staging(dest)` builds the bundle in a temp folder next to `dest`
(`.<name>.partial-<pid>-*`) and `os.replace`s it into place only when the block finishes; any
exception (Ctrl-C, a full disk, `ulimit -f`) removes the temp folder. A killed export (SIGKILL) cannot
clean up, so the next export to the same `dest` removes leftovers whose process is gone.
`write_manifest` writes manifest.json last, then manifest.sha256 (its digest, docs/bundle-format.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from model.diffusion import VAE_SCALE
from model.errors import UserError
from model.hart import Hart
from model.stages import MethodSpec
from runtime_py.bundle import DIGEST_FILE, checkpoint_source, default_source, digest_line, sha256_file  # noqa: F401 - re-exported for exporters
from runtime_py.cli import check_checkpoint_args

FORMAT = "hart-mobile-bundle"
SCHEMA_VERSION = 1
MIN_RUNTIME_VERSION = 1  # runtime_py/bundle.py RUNTIME_VERSION must be >= this
GOLDEN_PROMPT, GOLDEN_SEED = "a lighthouse on a cliff at dusk", 7
TAU_FORMULA = "tau = max(0.27 * (1 - 0.95 * r), 0.005)"

def file_table(root: Path) -> dict[str, dict]:
    """{relative posix path: {bytes, sha256}} of every file except manifest.json and its digest."""
    skip = ("manifest.json", DIGEST_FILE)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in skip)
    return {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files}


STALE_SECONDS = 24 * 3600  # a leftover whose pid cannot be judged (other host, pid reused) goes after a day


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """Yield an empty temp folder next to `dest`; on success it replaces `dest` atomically.

    An existing `dest` must be a bundle (has manifest.json) or empty, so a typo in --out never
    deletes unrelated files. The old bundle is moved aside first and removed after the swap; Ctrl-C is
    ignored during the swap, so it never leaves `dest` missing. Stale temp folders of killed exports to
    the same `dest` are removed first (remove_stale).
    """
    dest = Path(dest).absolute()
    check_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest)
    tmp = _temp_dir(dest, "partial")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a bundle is an ordinary folder
    try:
        yield tmp
        with _no_interrupt():
            old = None
            if dest.exists():
                old = _temp_dir(dest, "old")
                os.replace(dest, old / "bundle")
            os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _temp_dir(dest: Path, kind: str) -> Path:
    """`.<name>.<kind>-<pid>-<random>` next to dest: the pid tells a later export whether it is stale."""
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.{kind}-{os.getpid()}-", dir=dest.parent))


def remove_stale(dest: Path) -> list[Path]:
    """Remove `.<name>.partial-*` / `.<name>.old-*` folders next to `dest` left by an export that was
    killed: their pid (in the name) is no longer running, or they are older than STALE_SECONDS.
    Only real folders matching exactly that pattern are touched; returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(?:partial|old)-(?:(\d+)-)?[a-z0-9_]+")
    removed = []
    for p in dest.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or p.is_symlink() or not p.is_dir():
            continue
        dead = m[1] is not None and not _alive(int(m[1]))
        if dead or time.time() - p.lstat().st_mtime > STALE_SECONDS:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Ignore Ctrl-C while the finished bundle is swapped into place (two renames)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def check_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / "manifest.json").is_file())):
        raise ValueError(f"--out {dest} exists and is not a bundle folder; choose another path or remove it")


def check_export_args(p, a, default_out: Path | None) -> None:
    """Checks every exporter CLI shares: --checkpoint is a folder, --attn-chunk >= 0, --out is free or an
    old bundle."""
    if a.attn_chunk < 0:
        p.error(f"--attn-chunk must be >= 0 (0 = off), got {a.attn_chunk}")
    check_checkpoint_args(p, a)
    a.out = a.out or default_out
    if a.out is not None:
        try:
            check_destination(a.out.absolute())
        except ValueError as e:
            p.error(str(e))


def add_memory_mode_args(p, kv_default: str = "fp32", kv_help: str = "int8 = per-token scales, quantized on "
                         "write") -> None:
    """--kv-cache and --attn-chunk, shared by every exporter (check_export_args validates --attn-chunk)."""
    p.add_argument("--kv-cache", choices=("fp32", "fp16", "int8"), default=kv_default,
                   help=f"KV cache memory mode: {kv_help} (default {kv_default})")
    p.add_argument("--attn-chunk", type=int, default=0,
                   help="attention over query chunks of N tokens, no full score matrix (default 0 = off)")


def check_auto_args(p, a) -> None:
    """--quant auto takes exactly one of --budget (search at export) and --plan (a saved search)."""
    if a.quant == "auto" and (a.budget is None) == (a.plan is None):
        p.error("--quant auto needs exactly one of --budget (search now) or --plan FILE (a saved search)")
    if a.quant != "auto" and (a.budget is not None or a.plan is not None):
        p.error("--budget / --plan only apply to --quant auto")
    if a.budget is not None and not 0 < a.budget <= 1:
        p.error(f"--budget is a token agreement in (0, 1], got {a.budget}")
    if a.plan is not None and not a.plan.is_file():
        p.error(f"--plan {a.plan} is not a file (write one with python -m quantization.auto)")


def auto_plan(hart: Hart, a, backend: str, group_size: int) -> dict:
    """The saved plan (--plan) or a fresh search against --budget (quantization/auto.py)."""
    import sys

    from quantization.auto import search

    if a.plan is not None:
        return read_plan(a.plan, backend, group_size)
    log = (lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr))
    return search(hart, a.budget, backend, group_size, log=log).to_json()


def read_plan(path: Path, backend: str, group_size: int) -> dict:
    """A saved auto plan (--plan): untrusted JSON, checked for the fields the exporters and the gate read."""
    from quantization.auto import SCHEMES

    fix = f"write one with python -m quantization.auto --backend {backend} --group-size {group_size}"
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--plan {path} is not a readable JSON file ({e})", fix) from None
    if not isinstance(plan, dict):
        raise UserError(f"--plan {path}: expected a JSON object, got {type(plan).__name__}", fix)
    layers, budget = plan.get("layers"), plan.get("budget")
    problem = (
        f"searched for backend {plan.get('backend')!r}, not {backend}" if plan.get("backend") != backend else
        f"group_size {plan.get('group_size')!r}, the export uses {group_size}" if plan.get("group_size") != group_size
        else f"budget {budget!r} is not a token agreement in (0, 1]"
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1
        else "layers must be a non-empty object {layer: scheme}" if not isinstance(layers, dict) or not layers
        else f"schemes must be among {', '.join(SCHEMES[backend])}"
        if not all(isinstance(k, str) and v in SCHEMES[backend] for k, v in layers.items()) else None)
    if problem:
        raise UserError(f"--plan {path}: {problem}", fix)
    return plan


# ---- golden tensors ---------------------------------------------------------------------------


def write_golden(root: Path, specs: list[MethodSpec], trace: dict, prompt: str, seed: int, cfg: float) -> dict:
    """golden/<sha16>.bin (raw little-endian, C order) + golden/index.json; identical tensors are
    stored once (an output of one method is often the next method's input)."""
    gdir = root / "golden"
    gdir.mkdir()
    entries = []
    for m in specs:
        for io, tspecs in (("in", m.inputs), ("out", m.outputs)):
            for i, (ts, t) in enumerate(zip(tspecs, trace[m.name][io], strict=True)):
                data = t.detach().contiguous().cpu().numpy().astype(t.numpy().dtype.newbyteorder("<")).tobytes()
                digest = hashlib.sha256(data).hexdigest()
                fname = f"{digest[:16]}.bin"
                if not (gdir / fname).exists():
                    (gdir / fname).write_bytes(data)
                entries.append({"method": m.name, "io": io, "index": i, "name": ts.name, "shape": list(t.shape),
                                "dtype": str(t.dtype).removeprefix("torch."), "source": ts.source,
                                "file": fname, "sha256": digest})
    index = {"version": 1, "byte_order": "little", "layout": "C-contiguous", "prompt": prompt, "seed": seed,
             "cfg": cfg, "reference": "eager PyTorch fp32 (the source model, not the quantized copy)",
             "tensors": entries}
    (gdir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


# ---- manifest sections ------------------------------------------------------------------------


def header(backend: str, specs: list[MethodSpec]) -> dict:
    """The fields every bundle starts with, whatever the backend (runtime_py/bundle.py checks them)."""
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "min_runtime_version": MIN_RUNTIME_VERSION,
            "backend": backend, "call_order": [s.name for s in specs]}


def method_entry(spec: MethodSpec, file: str, **extra) -> dict:
    return {"name": spec.name, "component": spec.component, "file": file, **extra,
            "inputs": [t.to_json() for t in spec.inputs], "outputs": [t.to_json() for t in spec.outputs]}


def schedule_info(hart: Hart, name: str | None) -> dict:
    return {"name": name, "patch_nums": list(hart.cfg.ar.patch_nums), "latent_side": hart.G,
            "image_size": hart.cfg.image_size, "batch": hart.B, "steps": [asdict(s) for s in hart.steps]}


def sampler_info(hart: Hart) -> dict:
    s = hart.cfg.sampler
    return {
        "cfg_default": s.cfg, "top_k": [st.top_k for st in hart.steps], "top_p": s.top_p,
        "more_smooth": s.more_smooth, "ratio": [st.ratio for st in hart.steps],
        "cfg_weight": "t = cfg * r (r = si/(SN-1); the last scale reuses (SN-2)/(SN-1))",
        "gumbel_tau": TAU_FORMULA, "tau": [max(0.27 * (1 - 0.95 * st.ratio), 0.005) for st in hart.steps],
        "diffusion": {"steps": hart.cfg.ar.num_sampling_steps, "guidance": "w = cfg * r_last; w == 1 disables CFG",
                      "vae_scale": VAE_SCALE},
        "in_graph": "CFG mix, top-k/top-p, Gumbel-max choice and the diffusion sampler run inside the methods; "
                    "the host only supplies the noise inputs listed per method",
    }


def rng_info(specs: list[MethodSpec]) -> dict:
    streams = {f"{m.name}.{t.name}": t.rng for m in specs for t in m.inputs if t.source == "rng"}
    return {"algorithm": "Philox4x32-10", "spec": "docs/rng.md", "mapping_version": 1,
            "uniform": "u = ((x >> 9) + 0.5) * 2^-23 (float32, exact)",
            "normal": "Box-Muller on uniform pairs (2j, 2j+1) in float64, rounded once to float32",
            "layout": "input[s] = draw(seed, streams[s], shape[1:]) row-major, offset 0", "streams": streams}


def tokenizer_info(hart: Hart, file: str) -> dict:
    tok = hart.text.tokenizer
    return {"file": file, "max_tokens": tok.max_tokens, "pad_token": tok.pad_token, "pad_id": tok.pad_id}


def versions() -> dict:
    import executorch.version
    import torchao

    return {"torch": torch.__version__, "executorch": executorch.version.__version__,
            "torchao": torchao.__version__, "python": platform.python_version()}


KV_STATE_SUFFIXES = ("k_cache", "v_cache", "k_scale", "v_scale")  # int8 mode: fp32 per-token scales


def kv_cache_bytes(hart: Hart) -> int:
    """Bytes of the allocated KV state: caches plus, in int8 mode, their per-token scales."""
    return sum(b.numel() * b.element_size() for n, b in hart.named_buffers() if n.endswith(KV_STATE_SUFFIXES))


def memory_mode_info(hart: Hart) -> dict:
    """`memory.mode` of a manifest, and the KV bytes every mode would take (model/memory.py)."""
    from dataclasses import replace

    from model.memory import KV_BYTES, memory_mode
    from model.memory import kv_cache_bytes as kv_bytes_of

    per_mode = {m: int(kv_bytes_of(replace(hart.cfg, kv_cache=m))) for m in KV_BYTES}
    return {**memory_mode(hart.cfg), "kv_cache_bytes_per_mode": per_mode,
            "reference": "the parity gate compares with eager PyTorch in the same mode (golden/ comes from it) and "
                         "reports the drift from the full-precision (fp32 cache, unchunked) eager path"}


def memory_estimate(hart: Hart, weights_bytes: int, largest_activation_bytes: int, text_encoder_bytes: int = 0,
                    text_activation_bytes: int = 0, rest_activation_bytes: int | None = None,
                    resident_activation_bytes: int | None = None, phase_bytes: dict[str, int] | None = None) -> dict:
    """Peak estimate with every program resident, and with the text encoder released after encoding
    (`text_encoder_bytes` = its artifact bytes; activations of the text method / of every other program).
    `resident_activation_bytes`: the activation arenas held while every program is loaded (ExecuTorch:
    each loaded program keeps its own planned arena, so their sum; default the largest one). `phase_bytes`:
    per component, its artifacts + arenas (+ the KV state for the AR) resident while it runs, for a runtime
    that releases each component after use (runtime_py.pipeline release_after_use)."""
    kv = kv_cache_bytes(hart)
    resident = largest_activation_bytes if resident_activation_bytes is None else resident_activation_bytes
    rest_act = largest_activation_bytes if rest_activation_bytes is None else rest_activation_bytes
    text_phase = text_encoder_bytes + text_activation_bytes
    rest_phase = weights_bytes - text_encoder_bytes + kv + rest_act
    return {
        "weights_bytes": weights_bytes, "kv_cache_bytes": kv, "largest_activation_bytes": largest_activation_bytes,
        "resident_activation_bytes": resident, "peak_bytes": weights_bytes + kv + resident,
        "text_encoder_bytes": text_encoder_bytes,
        "peak_bytes_unload_text_encoder": max(text_phase, rest_phase),
        **({"phase_bytes": phase_bytes, "peak_bytes_release_after_use": max(phase_bytes.values())}
           if phase_bytes else {}),
        "mode": memory_mode_info(hart),
        "formula": "peak = sum(artifact bytes; every program stays loaded) + KV state (2 * depth * 2B rows * "
                   "heads * kv_len * (head_dim * bytes per value + 4 B scale if int8)) + resident activation arenas "
                   "(the exporter's memory plan, KV excluded; every loaded program keeps its own, the AR methods "
                   "share one). peak_bytes_unload_text_encoder = max(text encoder bytes + its arena, the other "
                   "artifacts + KV + their arenas): the text "
                   "encoder runs once, first, and is released before the other programs load (an app that keeps "
                   "them loaded across images reloads the text encoder next to them). "
                   "peak_bytes_release_after_use = the largest phase_bytes (one component loaded at a time, "
                   "python -m runtime_py.generate --release-after-use). "
                   "Not counted: backend weight "
                   "repacking (XNNPACK: up to one more copy of the weights) and the delegates' internal "
                   "workspaces; measured on the 0.7B architecture at 512 px the estimate is 45% below peak RSS "
                   "(docs/scale.md).",
    }


def preview_info(hart: Hart, progress: bool = False) -> dict:
    """The manifest's `preview` section (model/preview.py): the model's fitted projection (a checkpoint's
    preview.json), else one fitted now from the decoder (a few eager samples, seconds on the default model)."""
    import sys

    from runtime_py.preview_fit import fit_for

    log = (lambda m: print(m, file=sys.stderr)) if progress else None
    return fit_for(hart, log=log).to_json(grid=hart.G)


def write_manifest(root: Path, manifest: dict) -> dict:
    """Add the file table (every file already in `root`), write manifest.json last and seal it."""
    manifest = {**manifest, "files": file_table(root)}
    (root / "manifest.json").write_bytes((json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    seal(root)
    return manifest


def seal(root: Path) -> None:
    """Write manifest.sha256: the digest of manifest.json's bytes as they are now (docs/bundle-format.md).
    write_manifest calls it; a test that edits a manifest on purpose calls it to re-seal."""
    (root / DIGEST_FILE).write_bytes(digest_line((root / "manifest.json").read_bytes()))
