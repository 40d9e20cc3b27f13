"""Exporters (ExecuTorch, Core ML, ONNX) and the bundle format they share (export/bundle.py)."""
