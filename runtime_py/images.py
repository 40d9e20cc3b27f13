"""Image output helpers: tensors in [0, 1] → PNG bytes, written atomically."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(img_3HW: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] → HWC uint8 by truncation, as the official sample.py writes."""
    return (img_3HW.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def png_bytes(img_3HW: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img_3HW)).save(buf, format="PNG")
    return buf.getvalue()


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temp path in the same folder (same suffix, for writers that pick the format from it), renamed to
    `path` when the block succeeds and removed when it fails: never a partial file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write to a temp file in the same folder, then rename: no partial file on failure."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
