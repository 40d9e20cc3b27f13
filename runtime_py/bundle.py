"""Open an exported bundle: validate manifest + every file's size and sha256 before anything runs.

Integrity: manifest.sha256 holds the sha256 of manifest.json's exact bytes (`sha256sum` format). The
manifest lists every other file's sha256, so this one digest covers the whole bundle; it is checked
before the manifest is parsed, and a bundle file that is a symlink is refused. It catches edits and
damage, not a forger who also rewrites manifest.sha256: the parity gate additionally refuses
thresholds looser than the documented ones (runtime_py/thresholds.py). Format: docs/bundle-format.md.

`open_pipeline(dir)` is what `runtime_py.generate --bundle DIR` calls: it validates the bundle,
rebuilds the method specs from manifest.json, loads the tokenizer and picks the backend named in the
manifest (runtime_py/backends). Nothing here imports the model code that produced the bundle: the
manifest is the whole contract, exactly as on a phone.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from model.errors import FAILED_CHECK, UserError
from runtime_py.manifest_schema import manifest_problem

if TYPE_CHECKING:  # torch and the model code load only when a bundle is used, not to validate one
    import torch

    from model.stages import MethodSpec, TensorSpec
    from model.tokenizer import PromptTokenizer

FORMAT = "hart-mobile-bundle"
SCHEMA_VERSIONS = (1,)
RUNTIME_VERSION = 1  # bumped when a bundle needs a newer reader; compared with min_runtime_version
REQUIRED = ("format", "schema_version", "min_runtime_version", "backend", "call_order", "methods", "tokenizer",
            "files")
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int8": np.int8}


NOMINAL_BITS = {"fp32": 32, "fp16": 16, "8da8w": 8, "int8": 8, "8da4w": 4, "int4": 4}


class BundleError(UserError):
    """A bundle that must not be run (bad manifest, missing/changed/truncated file): exit code 2."""


DIGEST_FILE = "manifest.sha256"
_DIGEST_LINE = re.compile(rb"([0-9a-f]{64})  manifest\.json\n")


def digest_line(manifest_bytes: bytes) -> bytes:
    """The whole content of manifest.sha256 for these manifest.json bytes (`sha256sum manifest.json`)."""
    return hashlib.sha256(manifest_bytes).hexdigest().encode() + b"  manifest.json\n"


def read_manifest_bytes(root: Path) -> bytes:
    """manifest.json's bytes, checked against manifest.sha256 (one read: the bytes hashed are the
    bytes parsed). A bundle that fails this was edited or damaged: a failed check, exit code 1."""
    mpath, dpath = root / "manifest.json", root / DIGEST_FILE
    for p in (mpath, dpath):
        if p.is_symlink():
            raise _symlink_error(p)
    if not mpath.is_file():
        raise BundleError(f"{root}: no manifest.json (not a bundle folder)")
    if not dpath.is_file():
        raise BundleError(f"{root}: no {DIGEST_FILE} (the bundle digest)", "re-export the bundle", code=FAILED_CHECK)
    data, digest = mpath.read_bytes(), dpath.read_bytes()
    if not _DIGEST_LINE.fullmatch(digest):
        raise BundleError(f"{dpath} is not one line '<64 hex digits>  manifest.json'", "re-export the bundle",
                          code=FAILED_CHECK)
    if digest != digest_line(data):
        raise BundleError(f"{mpath} was edited after export (digest mismatch with {DIGEST_FILE})",
                          "re-export the bundle", code=FAILED_CHECK)
    return data


def _symlink_error(path: Path) -> BundleError:
    return BundleError(f"{path} is a symlink; bundle files must be regular files inside the bundle",
                       "copy the bundle instead of linking its files", code=FAILED_CHECK)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_rel(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise BundleError(f"manifest lists an unsafe path {name!r}")
    return p


def _tensor_spec(d: dict) -> TensorSpec:
    from model.stages import TensorSpec

    return TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), d["dtype"], d.get("source", "env"),
                      d.get("rng", {}))


@dataclass
class Bundle:
    root: Path
    manifest: dict

    @classmethod
    def open(cls, root: str | Path, verify_hashes: bool = True) -> Bundle:
        """Validate everything up front; raises BundleError naming the offending file or field."""
        root = Path(root)
        mpath = root / "manifest.json"
        data = read_manifest_bytes(root)
        try:
            manifest = json.loads(data.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath}: not valid JSON ({e})") from None
        _check_header(manifest, mpath)
        _check_files(root, manifest["files"], verify_hashes)
        files = manifest["files"]
        for m in manifest["methods"]:
            if m["file"] not in files:
                raise BundleError(f"{mpath}: method {m['name']} uses {m['file']}, which is not in the file table")
        if manifest["tokenizer"]["file"] not in files:
            raise BundleError(f"{mpath}: tokenizer file {manifest['tokenizer']['file']} is not in the file table")
        names = [m["name"] for m in manifest["methods"]]
        if names != manifest["call_order"]:
            raise BundleError(f"{mpath}: methods {names} do not follow call_order {manifest['call_order']}")
        return cls(root, manifest)

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def specs(self) -> list[MethodSpec]:
        from model.stages import MethodSpec

        return [MethodSpec(m["name"], m["component"], tuple(_tensor_spec(t) for t in m["inputs"]),
                           tuple(_tensor_spec(t) for t in m["outputs"])) for m in self.manifest["methods"]]

    @property
    def default_cfg(self) -> float:
        return float(self.manifest.get("sampler", {}).get("cfg_default", 4.5))

    @property
    def thresholds(self) -> dict:
        return self.manifest.get("parity", {}).get("thresholds", {})

    def tokenizer(self) -> PromptTokenizer:
        from model.tokenizer import PromptTokenizer

        t = self.manifest["tokenizer"]
        try:
            return PromptTokenizer.from_file(self.root / t["file"], max_tokens=t["max_tokens"],
                                             pad_token=t["pad_token"])
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own types on garbage
            raise BundleError(f"{self.root / t['file']}: not a usable tokenizer ({e})",
                              "re-export the bundle") from None

    def golden(self) -> dict[tuple[str, str], list[torch.Tensor]]:
        """{(method, "in"|"out"): tensors in spec order} from golden/index.json (hashes already checked)."""
        import torch

        index = json.loads((self.root / "golden" / "index.json").read_text())
        out: dict[tuple[str, str], list[torch.Tensor]] = {}
        for e in sorted(index["tensors"], key=lambda e: e["index"]):
            raw = np.fromfile(self.root / "golden" / e["file"], dtype=np.dtype(_NP[e["dtype"]]).newbyteorder("<"))
            t = torch.from_numpy(raw.astype(_NP[e["dtype"]]).reshape(e["shape"]))
            out.setdefault((e["method"], e["io"]), []).append(t)
        return out

    def benchmark_info(self) -> dict:
        """Recipe, bits per stored weight and file sizes per component, for benchmark results. ExecuTorch
        and Core ML manifests measure bits per weight; ONNX (one shared weights file) gets the nominal
        bits of each component's scheme."""
        m = self.manifest
        quant = m.get("quantization", {})
        recipe, bits = {}, {}
        for c, info in m.get("components", {}).items():
            q = info.get("quantization") or quant.get("components", {}).get(info.get("component", c), {})
            recipe[c] = q.get("scheme") or q.get("dtype")
            if info.get("bits_per_weight") is not None:
                bits[c] = info["bits_per_weight"]
        for q in quant.get("components", {}).values():
            comp = q.get("component")
            if comp and comp not in recipe:
                recipe[comp] = q.get("scheme")
        for c, scheme in recipe.items():
            bits.setdefault(c, NOMINAL_BITS.get(scheme))
        files = {k: v["bytes"] for k, v in m["files"].items() if not k.startswith("golden/")}
        return {"recipe": recipe, "bits_per_weight": {k: v for k, v in bits.items() if v is not None},
                "size_bytes": {"total": sum(files.values()), "files": files}}

    def golden_info(self) -> dict:
        index = json.loads((self.root / "golden" / "index.json").read_text())
        return {k: index[k] for k in ("prompt", "seed", "cfg")}


def _check_header(m: dict, mpath: Path) -> None:
    if problem := manifest_problem(m, REQUIRED):
        raise BundleError(f"{mpath}: {problem}", "re-export the bundle")
    if m["format"] != FORMAT:
        raise BundleError(f"{mpath}: format {m['format']!r} is not {FORMAT!r}")
    if m["schema_version"] not in SCHEMA_VERSIONS:
        raise BundleError(f"{mpath}: schema_version {m['schema_version']} is not supported "
                          f"(this runtime reads {list(SCHEMA_VERSIONS)})")
    if int(m["min_runtime_version"]) > RUNTIME_VERSION:
        raise BundleError(f"{mpath}: needs runtime version >= {m['min_runtime_version']}, this is {RUNTIME_VERSION}")


def _check_files(root: Path, files: dict, verify_hashes: bool) -> None:
    for name, meta in files.items():
        rel = _safe_rel(name)
        path = root / rel
        linked = next((root.joinpath(*rel.parts[:i]) for i in range(1, len(rel.parts) + 1)
                       if root.joinpath(*rel.parts[:i]).is_symlink()), None)
        if linked is not None:
            raise _symlink_error(linked)
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in manifest.json)")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise BundleError(f"{path}: size {size} bytes, manifest says {meta['bytes']} (truncated or replaced)")
        if verify_hashes and sha256_file(path) != meta["sha256"]:
            raise BundleError(f"{path}: sha256 does not match manifest.json (file was modified)")


def open_pipeline(bundle_dir: str | Path, backend=None, progress=None, release_after_use: bool = False):
    """(Pipeline, Bundle) for a bundle folder; `backend` overrides the manifest's choice. `release_after_use`:
    a lazily loading backend and a Pipeline that releases every component after its last use in an image."""
    from runtime_py.backends import create_backend

    bundle = Bundle.open(bundle_dir)  # before torch is imported: a bad bundle fails fast
    tokenizer = bundle.tokenizer()  # then the cheap checks: a bad tokenizer is reported before programs load
    be = backend if backend is not None else create_backend(bundle, lazy=release_after_use)
    from runtime_py.pipeline import Pipeline

    return Pipeline(bundle.specs, be, tokenizer, progress=progress, release_after_use=release_after_use), bundle


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def default_source(seed: int | None = None) -> dict:
    from model.config import DEFAULT_SEED

    seed = DEFAULT_SEED if seed is None else seed
    return {"kind": "default-seeded", "seed": seed, "config": "default"}


def checkpoint_source(path: Path) -> dict:
    """Identity of a checkpoint folder: its name and the sha256 of every weight file in it."""
    path = Path(path)
    weights = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return {"kind": "checkpoint", "name": path.name,
            "weights": {p.relative_to(path).as_posix(): sha256_file(p) for p in weights}}
