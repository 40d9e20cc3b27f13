"""Core ML bundle checks that run on Linux.

package.py reads .mlpackage files, checks.py verifies structure and stored weights, parity.py is the
Core ML section of the parity gate (`python -m runtime_py.coreml.parity`).
"""
