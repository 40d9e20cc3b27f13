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


def write_preview(folder: str | Path, frames: list[torch.Tensor], final: torch.Tensor | None = None,
                  ms_per_frame: int = 300) -> list[Path]:
    """Per-scale previews: scale_00.png … (one per frame, [3, H, W] in [0, 1]) and preview.gif (the frames,
    then `final` held for a second if given). Everything is written to a temp folder next to `folder`
    first; only complete files are moved in (no partial PNG/GIF on failure)."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        names = [f"scale_{i:02d}.png" for i in range(len(frames))]
        pics = [Image.fromarray(to_uint8(f)) for f in frames]
        for name, pic in zip(names, pics):
            pic.save(tmp / name, format="PNG")
        gif = pics + ([Image.fromarray(to_uint8(final))] if final is not None else [])
        durations = [ms_per_frame] * len(pics) + ([1000] if final is not None else [])
        gif[0].save(tmp / "preview.gif", format="GIF", save_all=True, append_images=gif[1:], duration=durations,
                    loop=0)
        out = []
        for name in [*names, "preview.gif"]:
            os.replace(tmp / name, folder / name)
            out.append(folder / name)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
