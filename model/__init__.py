"""Export-friendly HART: configs, the Hart module with static stage functions, official-layout IO.

The public names load lazily (PEP 562), so `import model.errors` or `model.rng` does not pull in torch:
CLIs validate their arguments before any heavy import.
"""

from __future__ import annotations

import importlib

_LAZY = {"CheckpointError": "model.checkpoint", "load": "model.checkpoint", "save": "model.checkpoint",
         "PRESETS": "model.config", "HartConfig": "model.config", "default_config": "model.config",
         "Hart": "model.hart"}

__all__ = ["CheckpointError", "Hart", "HartConfig", "PRESETS", "default_config", "load", "save"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
