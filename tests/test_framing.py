"""The locator, the crop and the framing check (core/framing.py) on drawn parts whose boxes are known exactly.

The real-photo belt (tests/test_belt.py) shows they make a trained model's calls at the line its calls on the
photos; these pin down each rule on its own, fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter.cli import main
from core import framing
from core.manifest import FramingSpec, Spread, load
from core.preprocess import Preprocessor, Roi
from edge.parts import Presence, PresenceSettings
from harness import REPO


def disc(size: tuple[int, int], centre: tuple[int, int], radius: int, *, background: int = 40, metal: int = 170
         ) -> np.ndarray:
    img = np.full((*size, 3), background, np.uint8)
    cv2.circle(img, centre, radius, (metal, metal, metal), -1)
    return img


def plate(frame: np.ndarray, x: int, y: int, side: int, radius: int, *, surface: int = 165, metal: int = 80) -> None:
    """A part on its own carrier: a light square plate with a dark round part in its middle, drawn in place."""
    frame[y:y + side, x:x + side] = surface
    cv2.circle(frame, (x + side // 2, y + side // 2), radius, (metal, metal, metal), -1)


def spec(span: float = 0.8, background: float = 40.0) -> FramingSpec:
    def s(v: float) -> Spread:
        return Spread(p5=v * 0.95, median=v, p95=v * 1.05)
    return FramingSpec(images=100, located=1.0, span=s(span), area=s(span * span * 0.78),
                       offset=Spread(p5=0.0, median=0.01, p95=0.03), background=s(background))


def test_locate_finds_a_part_against_its_background_to_a_few_pixels() -> None:
    found = framing.locate(disc((300, 400), (220, 150), 100))
    assert found is not None
    b = found.box
    assert abs(b.x - 120) <= 4 and abs(b.y - 50) <= 4 and abs(b.width - 201) <= 6 and abs(b.height - 201) <= 6
    f = found.figures
    assert abs(f.span - 201 / 400) < 0.02 and f.background == 40 and 0.04 < f.offset < 0.07
    assert framing.locate(np.full((100, 100, 3), 90, np.uint8)) is None, "an empty belt holds no part"
    assert framing.figures(np.full((100, 100, 3), 90, np.uint8)) == framing.NOTHING_FOUND


def test_crop_box_is_square_with_the_training_margin_and_stays_in_the_frame() -> None:
    assert framing.crop_box(Roi(100, 100, 160, 120), 0.8, 640, 360) == Roi(80, 60, 200, 200)
    assert framing.crop_box(Roi(0, 10, 100, 100), 0.5, 640, 360) == Roi(0, 0, 200, 200), "moved in, not cut"
    assert framing.crop_box(Roi(10, 10, 300, 300), 0.5, 640, 360) == Roi(0, 0, 360, 360), "no larger than the frame"


def test_a_part_on_a_carrier_is_framed_as_the_training_photos_of_it_on_its_carrier() -> None:
    frame = np.full((480, 640, 3), 40, np.uint8)
    plate(frame, 200, 30, 300, 120)  # the part spans 0.8 of its plate, as in the training photos
    found = framing.locate(frame)
    assert found is not None and abs(found.box.width - 300) <= 4, "against the belt: the plate"
    carrier = framing.carried(frame, found.box, found.figures.background)
    assert carrier is not None and carrier.box == Roi(200, 30, 300, 300), "the carrier's own edges, to the pixel"
    assert abs(carrier.part.figures.span - 0.8) < 0.03, "on it: the part, as training saw it"
    crop = framing.part_crop(frame, found, spec(0.8, 165), None)
    assert crop == Roi(200, 30, 300, 300), "the plate itself is the training framing: not a line of belt in it"
    crop = framing.part_crop(frame, found, spec(0.65, 165), None)
    assert abs(crop.width - 241 / 0.65) <= 10, "training parts spanned less: the part gets the training margin"
    assert framing.carried(disc((480, 640), (320, 180), 120), Roi(200, 60, 241, 241), 40) is None, \
        "a round part's box meets the belt along most of its border: no carrier"


def test_compare_says_what_is_unlike_training_and_what_to_change() -> None:
    trained = spec(0.8, 40)
    assert framing.compare(framing.Figures(0.8, 0.5, 0.01, 45), trained) == []
    small = framing.compare(framing.Figures(0.3, 0.07, 0.01, 40), trained)
    assert len(small) == 1 and "too much around the part" in small[0] and 'parts.crop = "part"' in small[0]
    assert "cut or too tight" in framing.compare(framing.Figures(1.0, 0.7, 0.01, 40), trained)[0]
    assert "off the input's centre" in framing.compare(framing.Figures(0.8, 0.5, 0.2, 40), trained)[0]
    light = framing.compare(framing.Figures(0.8, 0.5, 0.01, 170), trained)
    assert len(light) == 1 and "grey level 170 where training images had 40" in light[0]


def test_the_watch_alerts_once_when_the_line_turns_unlike_training_and_again_only_after_it_recovered() -> None:
    watch = framing.FramingWatch(spec(0.8, 40), window=4, min_parts=3)
    good, bad = framing.Figures(0.8, 0.5, 0.01, 40), framing.Figures(0.3, 0.07, 0.01, 40)
    assert [watch.add(good) for _ in range(3)] == [None, None, None]
    assert watch.status()["state"] == "like_training"
    said = [watch.add(bad) for _ in range(6)]
    assert [s is not None for s in said] == [False, True, False, False, False, False], "once, when the median turned"
    status = watch.status()
    assert status["state"] == "unlike_training" and status["trained"]["span"] == 0.8  # type: ignore[index]
    assert [watch.add(good) for _ in range(4)] == [None] * 4 and watch.status()["state"] == "like_training"
    assert any(watch.add(bad) for _ in range(4)), "unlike again after recovering: said again"
    unknown = framing.FramingWatch(None)
    assert all(unknown.add(bad) is None for _ in range(9)) and unknown.status()["state"] == "unknown"


def test_presence_gives_the_parts_box_at_the_frames_own_resolution() -> None:
    belt = np.full((360, 640, 3), 40, np.uint8)
    roi = Roi(120, 10, 400, 340)
    presence = Presence(PresenceSettings(learn_frames=3), roi=roi)
    for _ in range(3):
        presence.observe(belt)
    seen = presence.observe(disc((360, 640), (331, 183), 117))
    assert seen is not None and seen.in_position and seen.found is not None
    b = seen.found.box  # the grey copy is 4 frame pixels a step; the box is found again at the frame's own
    assert abs(b.x - 214) <= 3 and abs(b.y - 66) <= 3 and abs(b.width - 235) <= 5 and abs(b.height - 235) <= 5, b


def test_preprocessing_feeds_the_crop_and_refuses_one_outside_the_frame() -> None:
    from core.manifest import InputSpec
    from core.preprocess import FrameError

    pre = Preprocessor(InputSpec(height=8, width=8, dtype="uint8", scale=1 / 255), roi=Roi(0, 0, 4, 4))
    frame = np.zeros((20, 20, 3), np.uint8)
    frame[10:18, 10:18] = 200
    assert (pre(frame) == 0).all(), "no box: the ROI"
    assert (pre.pixels(frame, box=Roi(10, 10, 8, 8)) == 200).all(), "a box: the part"
    with pytest.raises(FrameError, match="crop 15,15 8x8 does not fit a 20x20 frame"):
        pre.source(frame, Roi(15, 15, 8, 8))


def test_framing_command_records_the_training_photos_framing_in_a_manifest(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("*.h5", "efficientnetb0*", "cnn*"))
    photos = tmp_path / "photos"
    for cls in ("good", "defect"):
        (photos / cls).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(photos / cls / f"{i}.png"), disc((200, 200), (100 + i, 100), 80))
    manifest = models / "mobilenetv2.json"
    before = json.loads(manifest.read_text())
    assert main(["framing", str(manifest), "--images", str(photos)]) == 0
    m = load(manifest)
    assert m.framing is not None and m.framing.images == 12 and abs(m.framing.span.median - 161 / 200) < 0.03
    after = json.loads(manifest.read_text())
    kept = {k: v for k, v in after.items() if k != "framing" and (k in before or v is not None)}
    assert kept == {k: v for k, v in before.items() if k != "framing"}, "nothing else of the manifest changed"
    assert main(["framing", str(models / "nothing.json"), "--images", str(photos)]) == 2


def test_check_framing_shows_the_engineer_what_the_model_sees_and_what_to_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core import manifest as mf
    from edge.cli import main as edge_main

    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models, ignore=shutil.ignore_patterns("*.h5", "efficientnetb0*", "cnn*"))
    m = models / "mobilenetv2.json"
    m.write_text(mf.load(m).model_copy(update={"framing": spec(0.8, 165)}).to_json())
    line = tmp_path / "line"
    line.mkdir()
    n = 0
    for _ in range(33):  # the belt empty while presence learns it, then three parts on their plates sliding through
        n += 1
        cv2.imwrite(str(line / f"{n:04d}.png"), np.full((360, 640, 3), 40, np.uint8))
    for part in range(3):
        for x in range(-300, 660, 20):
            frame = np.full((360, 640, 3), 40, np.uint8)
            if x >= 0 and x + 300 <= 640:
                plate(frame, x, 30, 300, 120, metal=60 + 30 * part)
            n += 1
            cv2.imwrite(str(line / f"{n:04d}.png"), frame)
    cfg = tmp_path / "edge.toml"
    base = (f'[device]\nid = "u"\n[camera]\nsource = "{line}"\n[camera.roi]\nx = 120\ny = 10\nwidth = 400\n'
            f'height = 340\n[model]\nname = "mobilenetv2"\nmodels_dir = "{models}"\n[parts]\npresence = true\n')
    cfg.write_text(base)
    assert edge_main(["check-framing", "--config", str(cfg), "--parts", "3", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "framed like the training photos: nothing to change" in out, out
    crops = sorted((tmp_path / "out").glob("part_00?_*[0-9].jpg"))
    assert len(crops) == 3 and all(cv2.imread(str(c)).shape[:2] == (300, 300) for c in crops), crops
    assert len(list((tmp_path / "out").glob("part_*_frame.jpg"))) == 3
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["crop"][2] for r in report["parts"]] == [300, 300, 300]
    cfg.write_text(base + 'crop = "roi"\n')
    assert edge_main(["check-framing", "--config", str(cfg), "--parts", "3", "--out", str(tmp_path / "roi")]) == 1
    out = capsys.readouterr().out
    assert "change: the background around parts is grey level 40 where training images had 165" in out, out
    assert 'parts.crop = "part"' in out
