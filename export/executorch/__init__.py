"""ExecuTorch (XNNPACK) exporter, `python -m export.executorch`.

exporter.py: the CLI and the bundle writer; lowering.py: the XNNPACK lowering and its workarounds.
"""
