"""Labelled image folders (``good/`` and ``defect/``) for training, calibration and parity.

A user's folder, the casting data set and the synthetic generator's output all have this layout. Images are decoded
and resized through the edge's :class:`~core.preprocess.Preprocessor`, so training, calibration and the parity check
see pixels exactly as the unit will.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.images import iter_readable, list_images
from core.preprocess import Preprocessor

# Folder names accepted for each class; the first is the one the product writes.
CLASS_DIRS: dict[int, tuple[str, ...]] = {0: ("good", "ok", "ok_front"), 1: ("defect", "defective", "def_front")}


class DatasetError(ValueError):
    """A labelled folder cannot serve (missing, empty, or one class only)."""


@dataclass
class LabelledFolder:
    """The image paths of a labelled folder, label 1 = defective. Nothing is decoded until asked."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    unreadable: dict[Path, str] = field(default_factory=dict)  # filled while reading; each file once

    @property
    def skipped(self) -> list[str]:
        """One line per unreadable image, however often the folder was read."""
        return list(self.unreadable.values())

    @property
    def counts(self) -> dict[str, int]:
        return {"good": int((self.labels == 0).sum()), "defect": int((self.labels == 1).sum())}

    def subset(self, index: np.ndarray) -> LabelledFolder:
        return LabelledFolder(self.root, [self.paths[i] for i in index], self.labels[index], self.unreadable)

    def sample(self, limit: int | None, seed: int = 0) -> LabelledFolder:
        """At most ``limit`` images, drawn evenly from both classes and repeatable for a seed."""
        if limit is None or limit >= len(self.paths):
            return self
        rng = np.random.default_rng(seed)
        picks = []
        for cls in (0, 1):
            idx = np.flatnonzero(self.labels == cls)
            share = round(limit * len(idx) / len(self.labels))
            picks.append(rng.permutation(idx)[:max(1, share)])
        return self.subset(np.sort(np.concatenate(picks)))

    def frames(self) -> Iterator[tuple[Path, int, np.ndarray]]:
        """(path, label, RGB frame) for each readable image; unreadable ones are recorded in ``skipped``."""
        label_of = dict(zip(self.paths, self.labels.tolist(), strict=True))
        for path, frame in iter_readable(self.paths, self.unreadable.__setitem__):
            yield path, label_of[path], frame

    def pixels(self, pre: Preprocessor) -> tuple[np.ndarray, np.ndarray]:
        """All readable images resized to the model's size as uint8, with their labels (for training)."""
        xs, ys = [], []
        for _, label, frame in self.frames():
            xs.append(pre.pixels(frame).copy())
            ys.append(label)
        if not xs:
            raise DatasetError(f"{self.root}: no readable image ({len(self.skipped)} unreadable)")
        return np.stack(xs), np.asarray(ys, np.int32)


def open_folder(root: Path, *, need_both_classes: bool = True) -> LabelledFolder:
    """List a labelled folder; raises :class:`DatasetError` with one line when it cannot serve."""
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected one with good/ and defect/ inside)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, names in CLASS_DIRS.items():
        for name in names:
            sub = root / name
            if sub.is_dir():
                found = list_images(sub)
                paths += found
                labels += [label] * len(found)
    if not paths:
        raise DatasetError(f"{root}: no images found in good/ or defect/")
    arr = np.asarray(labels, np.int32)
    if need_both_classes and len(set(labels)) < 2:
        only = "good" if arr[0] == 0 else "defect"
        raise DatasetError(f"{root}: only {only} images found; both good/ and defect/ are needed")
    return LabelledFolder(root, paths, arr)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices with ``fraction`` of each class held out, repeatable for a seed."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.append(idx[:n])
        train.append(idx[n:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
