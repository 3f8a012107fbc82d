"""The synthetic generator: deterministic, masks that mark exactly what a defect changed, and a replayable video."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter import synth


def test_same_seed_same_pixels_and_different_seed_different_pixels() -> None:
    a = synth.render(4, 7, defect="crack")
    b = synth.render(4, 7, defect="crack")
    c = synth.render(5, 7, defect="crack")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def test_good_part_has_empty_mask() -> None:
    p = synth.render(1, 0)
    assert not p.defective and not p.mask.any()
    assert p.image.shape == (256, 256, 3) and p.image.dtype == np.uint8


@pytest.mark.parametrize("kind", synth.DEFECT_KINDS)
def test_mask_marks_the_pixels_the_defect_changed(kind: str) -> None:
    for index in range(6):
        good = synth.render(9, index).image.astype(np.float32).mean(axis=2)
        bad = synth.render(9, index, defect=kind)
        diff = np.abs(bad.image.astype(np.float32).mean(axis=2) - good)
        assert 0.001 < bad.mask.mean() < 0.05, "a defect is visible but small"
        inside, outside = diff[bad.mask].mean(), diff[~cv2.dilate(bad.mask.astype(np.uint8), np.ones((5, 5)))
                                                       .astype(bool)].mean()
        assert inside > 8 * outside, f"{kind} #{index}: inside {inside:.1f} vs outside {outside:.1f}"


def test_unknown_defect_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown defect kind 'dent'"):
        synth.render(0, 0, defect="dent")


def test_dataset_layout_and_balance(tmp_path: Path) -> None:
    counts = synth.write_dataset(tmp_path, count=40, seed=2, size=96)
    assert counts["good"] + counts["defect"] == 40 and min(counts.values()) >= 10
    assert len(list((tmp_path / "good").glob("*.png"))) == counts["good"]
    masks = sorted(p.name for p in (tmp_path / "masks").glob("*.png"))
    assert masks == sorted(p.name for p in (tmp_path / "defect").glob("*.png"))
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert {v for k, v in labels.items() if k.startswith("defect/")} <= set(synth.DEFECT_KINDS)


def test_video_has_every_part_and_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "line.avi"
    truth = synth.write_video(path, parts=3, seed=1, size=128, frames_per_part=10)
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 30
    assert json.loads(path.with_suffix(".json").read_text()) == truth
    assert all(isinstance(t["centred_frame"], int) for t in truth)
