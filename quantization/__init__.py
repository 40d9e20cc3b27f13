"""Quantization recipes for the phone bundles (recipes.py) and sensitivity analysis."""

import runtime_py  # noqa: F401 - first: installs the third-party noise filters (runtime_py/quiet.py)
