"""Backends for the reference Pipeline, chosen by the manifest's `backend` field.

A backend is any object with `name` and `run(method, inputs) -> outputs` (runtime_py.pipeline.Backend).
Each factory takes a validated Bundle and imports its runtime lazily (executorch, onnxruntime and
coremltools are heavy and optional), so adding a runtime means adding one entry here; Pipeline and
the bundle reader do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime_py.bundle import Bundle
    from runtime_py.pipeline import Backend


def _executorch(bundle: Bundle, lazy: bool = False) -> Backend:
    from runtime_py.backends.executorch import ExecuTorchBackend

    return ExecuTorchBackend(bundle.root, bundle.manifest, lazy=lazy)


def _onnx(bundle: Bundle, lazy: bool = False) -> Backend:
    from runtime_py.backends.onnx import OnnxBackend

    return OnnxBackend(bundle.root, bundle.manifest, lazy=lazy)


def _coreml(bundle: Bundle, lazy: bool = False) -> Backend:
    from runtime_py.backends.coreml import CoreMLBackend

    return CoreMLBackend(bundle.root)  # Core ML loads every function up front (lazy is not offered there)


BACKENDS: dict[str, Callable[[Bundle], Backend]] = {"executorch": _executorch, "onnx": _onnx, "coreml": _coreml}


def register(name: str, factory: Callable[[Bundle], Backend]) -> None:
    BACKENDS[name] = factory


def create_backend(bundle: Bundle, lazy: bool = False) -> Backend:
    """The manifest's backend over the bundle's artifacts (`lazy`: programs are checked at open, then loaded
    when first run; for a Pipeline with release_after_use). The artifacts are untrusted input: whatever a
    runtime raises while loading them is a BundleError naming the backend (exit code 2, no traceback)."""
    from runtime_py.bundle import BundleError

    try:
        factory = BACKENDS[bundle.backend]
    except KeyError:
        raise BundleError(f"{bundle.root}: unknown backend {bundle.backend!r}",
                          f"known: {', '.join(BACKENDS)}") from None
    try:
        return factory(bundle, lazy) if lazy else factory(bundle)
    except BundleError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime, executorch and coremltools raise their own types
        raise BundleError(f"{bundle.root}: the {bundle.backend} runtime cannot load this bundle "
                          f"({type(e).__name__}: {e})", "re-export the bundle") from None
