"""The real frames the benchmarks replay: an even sample of ../shared/data/casting, linked (never copied)."""

from __future__ import annotations

from pathlib import Path

from edge.images import list_images

CASTING = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "casting"


def casting_sample(n: int) -> list[Path]:
    """``n`` casting photos spread evenly over both classes, the same ones on every run."""
    paths = list_images(CASTING / "good") + list_images(CASTING / "defect")
    return paths[:: max(1, len(paths) // n)][:n]


def link_into(paths: list[Path], folder: Path) -> Path:
    """A folder of symlinks to ``paths``, for a replay source or a `classify` run (the data set stays in place)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (folder / p.name).symlink_to(p.resolve())
    return folder
