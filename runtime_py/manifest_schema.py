"""Structure and types of manifest.json, checked before any field is used (the manifest is untrusted
input: a phone or a user may hand over anything). `manifest_problem` returns the first problem as a
short phrase naming the field, or None; runtime_py/bundle.py turns it into a BundleError.
"""

from __future__ import annotations

import math
import re
from typing import Any

from model.preview import preview_problem

DTYPES = ("float32", "float16", "int64", "int8")  # what runtime_py.bundle can read back (golden, specs)
_SHA = re.compile(r"[0-9a-f]{64}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _tensor_problem(t: Any, where: str) -> str | None:
    if not isinstance(t, dict) or not isinstance(t.get("name"), str):
        return f"{where} must be an object with a string name"
    if not isinstance(t.get("shape"), list) or not all(_int(x) and x >= 0 for x in t["shape"]):
        return f"{where}.shape must be a list of non-negative integers"
    if t.get("dtype") not in DTYPES:
        return f"{where}.dtype must be one of {', '.join(DTYPES)}"
    if not isinstance(t.get("source", "env"), str) or not isinstance(t.get("rng", {}), dict):
        return f"{where}: source must be a string and rng an object"
    return None


def _method_problem(m: Any, where: str) -> str | None:
    if not isinstance(m, dict):
        return f"{where} must be an object"
    for k in ("name", "component", "file"):
        if not isinstance(m.get(k), str) or not m[k]:
            return f"{where}.{k} must be a non-empty string"
    for io in ("inputs", "outputs"):
        if not isinstance(m.get(io), list):
            return f"{where}.{io} must be a list"
        for j, t in enumerate(m[io]):
            if p := _tensor_problem(t, f"{where}.{io}[{j}]"):
                return p
    return None


def _thresholds_problem(parity: Any) -> str | None:
    if not isinstance(parity, dict):
        return "parity must be an object"
    for key in ("thresholds", "full_precision"):
        table = parity.get(key, {})
        if not isinstance(table, dict):
            return f"parity.{key} must be an object"
        checks = table.values() if key == "thresholds" else [table]
        for check in checks:
            if not isinstance(check, dict) or not all(_num(v) for v in check.values()):
                return f"parity.{key} must map checks to finite numbers"
    return None


def _fhat_shape(methods: list) -> list | None:
    """Shape of the first method output named f_hat ([B, C, G, G]), if any."""
    for meth in methods:
        for t in meth["outputs"]:
            if t["name"] == "f_hat":
                return t["shape"]
    return None


def manifest_problem(m: Any, required: tuple[str, ...]) -> str | None:
    """The first structural problem of a parsed manifest.json, or None."""
    if not isinstance(m, dict):
        return f"expected a JSON object, got {type(m).__name__}"
    missing = [k for k in required if k not in m]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    for k in ("format", "backend"):
        if not isinstance(m[k], str):
            return f"{k} must be a string"
    for k in ("schema_version", "min_runtime_version"):
        if not _int(m[k]):
            return f"{k} must be an integer"
    if not isinstance(m["call_order"], list) or not all(isinstance(n, str) for n in m["call_order"]):
        return "call_order must be a list of method names"
    if not isinstance(m["methods"], list) or not m["methods"]:
        return "methods must be a non-empty list"
    for i, meth in enumerate(m["methods"]):
        if p := _method_problem(meth, f"methods[{i}]"):
            return p
    tok = m["tokenizer"]
    if not (isinstance(tok, dict) and isinstance(tok.get("file"), str) and _int(tok.get("max_tokens"))
            and tok["max_tokens"] > 0 and isinstance(tok.get("pad_token"), str)):
        return "tokenizer must be an object with file (string), max_tokens (positive integer) and pad_token (string)"
    files = m["files"]
    if not isinstance(files, dict) or not files:
        return "files must be a non-empty object"
    for name, meta in files.items():
        if not (isinstance(meta, dict) and _int(meta.get("bytes")) and meta["bytes"] >= 0
                and isinstance(meta.get("sha256"), str) and _SHA.fullmatch(meta["sha256"])):
            return f"files[{name!r}] must be {{bytes: non-negative integer, sha256: 64 lowercase hex digits}}"
    sampler = m.get("sampler", {})
    if not isinstance(sampler, dict) or not _num(sampler.get("cfg_default", 4.5)):
        return "sampler.cfg_default must be a finite number"
    if "parity" in m and (p := _thresholds_problem(m["parity"])):
        return p
    if "preview" in m:
        shape = _fhat_shape(m["methods"])
        ok_shape = shape is not None and len(shape) == 4
        if p := preview_problem(m["preview"], shape[1] if ok_shape else None, shape[-1] if ok_shape else None):
            return p
    for k in ("model", "schedule", "memory", "quantization", "components"):
        if k in m and not isinstance(m[k], dict):
            return f"{k} must be an object"
    return None
