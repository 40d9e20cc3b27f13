"""Core ML exporter, `python -m export.coreml`.

exporter.py: the CLI and the bundle writer; graph.py: the torch.export graphs; convert.py: conversion
and quantization per function; manifest.py: what the bundle says about itself.
"""
