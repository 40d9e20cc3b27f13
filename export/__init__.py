"""Exporters (ExecuTorch, Core ML, ONNX) and the bundle format they share (export/bundle.py)."""

import runtime_py  # noqa: F401 - first: installs the third-party noise filters (runtime_py/quiet.py)
