"""The model sees the part, on a belt of real photos (harness/belt.py): casting test photos sliding past the camera
on a dark belt, judged by a model trained on the casting train photos (``casting_model``), never a demo model.

Per part: judged once, and its verdict against the model's own call on the part's clean photo. That is framing
parity, proven as quantization parity is: on decisions (p > threshold). The three-way call (ok / ng / unsure) is
printed beside it; its band edges move with the camera's own noise (the exact photo region of a video frame shifts
p by about 0.05). Presence and trigger mode, and the ROI fed whole, which is what the unit did before.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge import framing
from edge.classifier import Classifier, decide
from edge.images import list_images, read_rgb
from edge.manifest import load
from edge.parts import PartSettings, PartVerdict, Presence, PresenceSettings
from edge.pipeline import Pipeline
from edge.sources import Camera, source_from_spec
from harness.belt import ROI, BeltPart, TriggeredFrames, judge_presence, match, read_video, write_belt

pytestmark = pytest.mark.slow

PARTS = 30


@pytest.fixture(scope="module")
def belt(casting_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BeltPart]]:
    """30 test photos (held out from training), good and defective in turn, on the dark belt."""
    test = casting_model.parent / "split" / "test"
    good, bad = list_images(test / "good"), list_images(test / "defect")
    photos = [x for pair in zip([(p, False) for p in good], [(p, True) for p in bad], strict=False)
              for x in pair][:PARTS]
    video = tmp_path_factory.mktemp("belt") / "belt.avi"
    return video, write_belt(video, photos, seed=3)


def _calls(clf: Classifier, truth: list[BeltPart]) -> dict[int, tuple[bool, str]]:
    """The model's call on each part's clean photo: (defective, ok/ng/unsure)."""
    out = {}
    for t in truth:
        defective, _, low = decide(clf.classify(read_rgb(Path(t.photo))).p_defect, clf.decision)
        out[t.index] = defective, "unsure" if low else "ng" if defective else "ok"
    return out


def _agreement(judged: dict[int, list[PartVerdict]], clean: dict[int, tuple[bool, str]]) -> tuple[float, float]:
    """(decisions, three-way calls) equal to the clean photo's, over every part; a part judged twice or never fails."""
    n = len(clean)
    once = {i: v[0] for i, v in judged.items() if len(v) == 1 and v[0].prediction is not None}
    decisions = sum(once[i].prediction.defective == clean[i][0] for i in once) / n  # type: ignore[union-attr]
    calls = sum(once[i].verdict == clean[i][1] for i in once) / n
    return decisions, calls


def _presence(video: Path, manifest: Path, crop: str) -> tuple[list[PartVerdict], dict[str, int]]:
    camera = Camera(source_from_spec(str(video)))
    clf = Classifier(manifest, frame_order=camera.frame_order, roi=ROI)
    settings = PartSettings(presence=Presence(PresenceSettings(), roi=ROI), crop=crop)  # type: ignore[arg-type]
    return judge_presence(video, camera, clf, parts=settings)


def test_presence_feeds_the_part_not_the_roi(casting_model: Path, belt: tuple[Path, list[BeltPart]]) -> None:
    video, truth = belt
    clean = _calls(Classifier(casting_model), truth)
    figures = {}
    for crop in ("part", "roi"):
        verdicts, index = _presence(video, casting_model, crop)
        judged = match(truth, verdicts, index)
        assert not judged.phantoms, "no verdict on the empty belt"
        assert all(len(v) == 1 for v in judged.matched.values()), \
            {i: len(v) for i, v in judged.matched.items() if len(v) != 1}
        figures[crop] = _agreement(judged.matched, clean)
        if crop == "part":
            for t in truth:  # the crop is the photo's carrier plate, to the pixel: not a line of belt in it
                f = judged.matched[t.index][0].part.frames[0]
                assert f.crop is not None and f.crop.width == f.crop.height == 300 and f.crop.y == 30, f.crop
    print(f"\nreal-photo belt, presence, {len(truth)} parts: decisions as on the clean photo: crop "
          f"{figures['part'][0]:.3f}, ROI {figures['roi'][0]:.3f}; three-way calls: crop {figures['part'][1]:.3f}, "
          f"ROI {figures['roi'][1]:.3f}")
    assert figures["part"][0] >= 0.95
    assert figures["roi"][0] < figures["part"][0] - 0.15, "the ROI, belt and all, is not what the model learnt"


def test_trigger_mode_crops_the_part_inside_the_roi(casting_model: Path, belt: tuple[Path, list[BeltPart]]
                                                     ) -> None:
    video, truth = belt
    clean = _calls(Classifier(casting_model), truth)
    holder: list[Pipeline] = []
    source = TriggeredFrames(read_video(video), {t.centred_frame for t in truth}, lambda: holder[0].trigger("gpio"))
    pipe = Pipeline(Camera(source), Classifier(casting_model, roi=ROI), device_id="belt", mode="on_demand",
                    parts=PartSettings(max_frame_delay_s=0.5))
    holder.append(pipe)
    verdicts: list[PartVerdict] = []
    pipe.run(threading.Event(), lambda r: None, on_part=verdicts.append)
    assert len(verdicts) == len(truth) and not [v for v in verdicts if v.verdict == "missed"]
    by_part = {t.index: [v] for t, v in zip(truth, sorted(verdicts, key=lambda v: v.part.seq), strict=True)}
    decisions, calls = _agreement(by_part, clean)
    print(f"\nreal-photo belt, trigger: decisions as on the clean photo {decisions:.3f}, three-way calls {calls:.3f}")
    assert decisions >= 0.95
    assert all(v.part.frames[0].crop is not None for v in verdicts), "the part located inside the ROI"


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
    assert any("grey level" in p for p in problems), problems  # the dark belt all round, where photos had a plate
    found = framing.locate(roi)
    assert found is not None
    crop = framing.part_crop(roi, found, spec, None)
    assert framing.compare(framing.figures(roi[crop.y:crop.y + crop.height, crop.x:crop.x + crop.width]), spec) == []


def _foreign(kind: str, i: int) -> np.ndarray:
    """Inputs a casting model has never seen: the demo's synthetic parts, an empty belt, a hand over the belt."""
    import cv2

    from converter import synth

    if kind == "synthetic part":
        return synth.sample(5, i, size=256).image
    r = np.random.default_rng(i)
    img = np.clip(40 + r.normal(0, 3, (300, 300, 3)) + r.uniform(-10, 10), 0, 255).astype(np.uint8)
    if kind == "hand":
        skin = tuple(int(v) for v in (r.uniform(170, 230), r.uniform(120, 170), r.uniform(90, 140)))
        cx, cy = (int(v) for v in r.integers(80, 220, 2))
        cv2.ellipse(img, (cx, cy), (70, 90), float(r.uniform(0, 180)), 0, 360, skin, -1)
        for _ in range(4):
            a = r.uniform(0, 2 * np.pi)
            cv2.line(img, (cx, cy), (int(cx + 140 * np.cos(a)), int(cy + 140 * np.sin(a))), skin, 22)
    return img


def test_the_unit_knows_what_it_has_never_seen(casting_model: Path) -> None:
    from converter.metrics import roc_auc

    clf = Classifier(casting_model)
    limit = clf.ood_threshold
    assert limit is not None and clf.signature is not None
    test = casting_model.parent / "split" / "test"
    held = np.array([clf.classify(read_rgb(p)).ood for c in ("good", "defect") for p in list_images(test / c)])
    foreign = {k: np.array([clf.classify(_foreign(k, i)).ood for i in range(40)])
               for k in ("synthetic part", "empty belt", "hand")}
    shares = {k: float((v > limit).mean()) for k, v in foreign.items()}
    everything = np.concatenate(list(foreign.values()))
    auc = roc_auc(np.r_[np.zeros(len(held)), np.ones(len(everything))].astype(bool), np.r_[held, everything])
    print(f"\ncasting model's signature: threshold {limit:.2f}; {float((held <= limit).mean()):.3f} of "
          f"{len(held)} held-out photos below; above: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
          + f"; AUC {auc:.3f}")
    assert (held <= limit).mean() >= 0.99
    assert all(s >= 0.95 for s in shares.values()), shares
