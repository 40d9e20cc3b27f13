"""Export-friendly HART: configs, the Hart module with static stage functions, official-layout IO."""

from model.checkpoint import CheckpointError, load, save
from model.config import PRESETS, HartConfig, default_config
from model.hart import Hart

__all__ = ["CheckpointError", "Hart", "HartConfig", "PRESETS", "default_config", "load", "save"]
