"""The model sees the part, on a belt of real photos (harness/belt.py): casting test photos sliding past the camera,
judged by a model trained on the casting train photos (tests/conftest.py's ``casting_model``), never a demo model.

Per part: judged once, and its verdict against the model's own call on the part's clean photo (what framing parity
promises) and against its label. Presence and trigger mode, and the ROI fed whole beside the crop, which is what
the unit did before and what got most good parts called NG.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge import framing
from edge.classifier import Classifier
from edge.images import read_rgb
from edge.manifest import load
from edge.parts import PartSettings, PartVerdict, Presence, PresenceSettings
from edge.pipeline import Pipeline
from edge.sources import Camera, source_from_spec
from harness.belt import ROI, BeltPart, TriggeredFrames, judge_presence, match, read_video, write_belt
from tests.conftest import casting_split

pytestmark = pytest.mark.slow

PARTS = 24


@pytest.fixture(scope="module")
def belt(casting_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BeltPart]]:
    """The light belt: the test photos (held out from training) blended into a belt of their own surface."""
    test = casting_model.parent / "split" / "test"
    good, bad = sorted((test / "good").iterdir()), sorted((test / "defect").iterdir())
    photos = [(p, False) for p in good[: PARTS // 2]] + [(p, True) for p in bad[: PARTS // 2]]
    photos = [photos[i] for i in (list(range(0, PARTS, 2)) + list(range(1, PARTS, 2)))]  # good and bad mixed
    video = tmp_path_factory.mktemp("belt") / "light.avi"
    return video, write_belt(video, photos, belt="light", seed=3)


def _clean_calls(clf: Classifier, truth: list[BeltPart]) -> dict[int, bool]:
    return {t.index: clf.classify(read_rgb(Path(t.photo))).defective for t in truth}


def _agreement(truth: list[BeltPart], judged: dict[int, list[PartVerdict]], clean: dict[int, bool]) -> float:
    return sum(len(judged[t.index]) == 1 and (judged[t.index][0].verdict == "ng") == clean[t.index]
               for t in truth) / len(truth)


def _presence(video: Path, clf_manifest: Path, crop: str) -> tuple[list[PartVerdict], dict[str, int]]:
    camera = Camera(source_from_spec(str(video)))
    clf = Classifier(clf_manifest, frame_order=camera.frame_order, roi=ROI)
    settings = PartSettings(presence=Presence(PresenceSettings(), roi=ROI), crop=crop)  # type: ignore[arg-type]
    return judge_presence(video, camera, clf, parts=settings)


def test_presence_feeds_the_part_not_the_roi(casting_model: Path, belt: tuple[Path, list[BeltPart]]) -> None:
    video, truth = belt
    clean = _clean_calls(Classifier(casting_model), truth)
    results = {}
    for crop in ("part", "roi"):
        verdicts, index = _presence(video, casting_model, crop)
        judged = match(truth, verdicts, index)
        assert not judged.phantoms, "no verdict on the empty belt"
        assert all(len(v) == 1 for v in judged.matched.values()), \
            {i: len(v) for i, v in judged.matched.items() if len(v) != 1}
        results[crop] = _agreement(truth, judged.matched, clean)
        if crop == "part":
            for t in truth:  # the crop is square, around the part, as large as the photo it came from
                f = judged.matched[t.index][0].part.frames[0]
                assert f.crop is not None and f.crop.width == f.crop.height
                assert abs(f.crop.width - 300) <= 30, f.crop
    print(f"\nlight belt, presence: agreement with the clean photo's call: crop {results['part']:.3f}, "
          f"ROI {results['roi']:.3f} ({len(truth)} parts)")
    assert results["part"] >= 0.95
    assert results["roi"] < results["part"], "the ROI, belt and all, is what the model was not trained on"


def test_trigger_mode_crops_the_part_inside_the_roi(casting_model: Path, belt: tuple[Path, list[BeltPart]]
                                                     ) -> None:
    video, truth = belt
    frames = read_video(video)
    clf = Classifier(casting_model, roi=ROI)
    clean = _clean_calls(Classifier(casting_model), truth)
    holder: list[Pipeline] = []
    source = TriggeredFrames(frames, {t.centred_frame for t in truth}, lambda: holder[0].trigger("gpio"))
    pipe = Pipeline(Camera(source), clf, device_id="belt", mode="on_demand", drop_when_behind=True,
                    parts=PartSettings(max_frame_delay_s=0.5))
    holder.append(pipe)
    verdicts: list[PartVerdict] = []
    pipe.run(threading.Event(), lambda r: None, on_part=verdicts.append)
    assert len(verdicts) == len(truth) and not [v for v in verdicts if v.verdict == "missed"]
    by_part = {t.index: [v] for t, v in zip(truth, sorted(verdicts, key=lambda v: v.part.seq), strict=True)}
    agreement = _agreement(truth, by_part, clean)
    print(f"\nlight belt, trigger: agreement with the clean photo's call {agreement:.3f}")
    assert agreement >= 0.95


def test_the_converter_records_how_training_photos_frame_the_part(casting_model: Path) -> None:
    spec = load(casting_model).framing
    assert spec is not None and spec.images == 200 and spec.located == 1.0
    assert 0.8 <= spec.span.median <= 0.97, spec.span  # the impeller fills most of each photo
    assert 140 <= spec.background.median <= 200, spec.background  # on a light grey plate


def test_the_roi_fed_whole_is_unlike_training_and_the_check_says_what_to_change(
        casting_model: Path, belt: tuple[Path, list[BeltPart]]) -> None:
    spec = load(casting_model).framing
    assert spec is not None
    frame = read_video(belt[0])[belt[1][0].centred_frame]
    roi = frame[ROI.y:ROI.y + ROI.height, ROI.x:ROI.x + ROI.width]
    problems = framing.compare(framing.figures(roi), spec)
    assert problems and "too much around the part" in problems[0], problems
    located = framing.locate(roi)
    assert located is not None
    crop = framing.crop_box(located.box, spec.span.median, ROI.width, ROI.height)
    assert framing.compare(framing.figures(roi[crop.y:crop.y + crop.height, crop.x:crop.x + crop.width]), spec) == []


def test_held_out_photos_frame_like_the_training_ones(casting: Path, tmp_path: Path, casting_model: Path) -> None:
    spec = load(casting_model).framing
    assert spec is not None
    _, test = casting_split(casting, tmp_path / "c")
    photos = [read_rgb(p) for p in sorted((test / "good").iterdir())[:40]]
    assert framing.compare(framing.median_figures([framing.figures(p) for p in photos]), spec) == []
