"""ONNX exporter, `python -m export.onnx`.

exporter.py: the CLI and the bundle writer; graphs.py: torch.onnx export of the explicit-KV stage views
(model/explicit_kv.py); quant.py: int4/int8; weights.py: every weight stored once; manifest.py.
"""
