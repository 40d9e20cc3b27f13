"""Shared fixtures: the official-tiny checkpoint (../shared/fixtures) and the seeded default model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = Path(os.environ.get("HART_OFFICIAL_TINY", ROOT.parent / "shared" / "fixtures" / "official-tiny"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def official_dir() -> Path:
    if not (OFFICIAL_TINY / "reference.npz").is_file():
        pytest.fail(f"official fixture missing at {OFFICIAL_TINY} (set HART_OFFICIAL_TINY)")
    return OFFICIAL_TINY


@pytest.fixture(scope="session")
def ref(official_dir):
    return np.load(official_dir / "reference.npz")


@pytest.fixture(scope="session")
def default_hart():
    from model.build import default_model

    return default_model()
