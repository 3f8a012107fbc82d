"""Snapshots and heatmaps on disk, one file per content (``<dir>/<sha[:2]>/<sha>.jpg``): the same frame sent twice, or
by two units, is stored once. Files are written under a temporary name and renamed, so a crash never leaves half a
JPEG under a real name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

JPEG_MAGIC = b"\xff\xd8"


def path_of(root: Path, sha256: str) -> Path:
    return root / sha256[:2] / f"{sha256}.jpg"


def store(root: Path, data: bytes) -> str:
    """Write ``data`` (idempotent) and return its sha256."""
    sha = hashlib.sha256(data).hexdigest()
    target = path_of(root, sha)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return sha


def read_frame(root: Path, sha256: str) -> np.ndarray:
    """A stored image as an RGB frame (for a heatmap of it)."""
    from core.images import decode_rgb

    return decode_rgb(path_of(root, sha256).read_bytes(), sha256[:12])


def remove(root: Path, sha256: str) -> None:
    path_of(root, sha256).unlink(missing_ok=True)
