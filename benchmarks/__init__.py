"""Per-stage latency, memory and size benchmarks (host and on-phone), one JSON schema."""

import runtime_py  # noqa: F401 - first: installs the third-party noise filters (runtime_py/quiet.py)
