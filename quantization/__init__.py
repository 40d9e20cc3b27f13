"""Quantization recipes for the phone bundles (recipes.py) and sensitivity analysis."""
