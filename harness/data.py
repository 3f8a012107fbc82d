"""The real photos the tests and benchmarks use: the public casting data set, read in place (never copied).

It is "casting product image data for quality inspection" (Kaggle, ravirajsinh45), 7,348 photos of cast impellers
laid out as ``good/`` and ``defect/``. A checkout finds it at ``../shared/data/casting`` or wherever
``$DEFECT_CASTING_DIR`` points; tests that need it skip with this hint when it is absent (and fail under CI).
"""

from __future__ import annotations

import os
from pathlib import Path

from core.images import list_images
from harness import REPO

CASTING = Path(os.environ.get("DEFECT_CASTING_DIR") or REPO.parent / "shared" / "data" / "casting")
WHERE = ("the casting data set (Kaggle: 'casting product image data for quality inspection', folders good/ and "
         f"defect/) is expected at {CASTING}; set DEFECT_CASTING_DIR to its folder")


def casting_present() -> bool:
    return (CASTING / "good").is_dir() and (CASTING / "defect").is_dir()


def casting_sample(n: int) -> list[Path]:
    """``n`` casting photos spread evenly over both classes, the same ones on every run."""
    if not casting_present():
        raise FileNotFoundError(WHERE)
    paths = list_images(CASTING / "good") + list_images(CASTING / "defect")
    return paths[:: max(1, len(paths) // n)][:n]


def link_into(paths: list[Path], folder: Path) -> Path:
    """A folder of symlinks to ``paths``, for a replay source or a `classify` run (the data set stays in place)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (folder / p.name).symlink_to(p.resolve())
    return folder


def casting_split(casting: Path, out: Path) -> tuple[Path, Path]:
    """The data set's original train and test splits as labelled folders of symlinks (nothing is copied).

    The 64 test images that are byte-identical to training images (duplicates_train_test.txt) are left out of the
    test split, so it is truly held out.
    """
    leaked = {line.split("\t")[0] for line in (casting / "duplicates_train_test.txt").read_text().splitlines()
              if line and not line.startswith("#")}
    for split in ("train", "test"):
        for cls in ("good", "defect"):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
    for cls in ("good", "defect"):
        for img in (casting / cls).iterdir():
            split = img.name.split("__", 1)[0]
            if split in ("train", "test") and f"{cls}/{img.name}" not in leaked:
                (out / split / cls / img.name).symlink_to(img.resolve())
    return out / "train", out / "test"
