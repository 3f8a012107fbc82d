"""The model sees the part, on a belt of real photos (harness/belt.py): casting test photos sliding past the camera
on a dark belt, judged by a model trained on the casting train photos (``casting_model``), never a demo model.

Per part: judged once, and its verdict against the model's own call on the part's clean photo. That is framing
parity, proven as quantization parity is: on decisions (p > threshold). The three-way call (ok / ng / unsure) is
printed beside it; its band edges move with the camera's own noise (the exact photo region of a video frame shifts
p by about 0.05). Presence and trigger mode, and the ROI fed whole, which is what the unit did before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import framing
from core.classifier import Classifier
from core.images import list_images, read_rgb
from core.manifest import load
from harness.belt import (
    FOREIGN,
    ROI,
    BeltPart,
    agreement,
    belt_photos,
    clean_calls,
    foreign,
    read_video,
    run_presence,
    run_trigger,
    write_belt,
)

pytestmark = [pytest.mark.tensorflow, pytest.mark.processes]

PARTS = 30


@pytest.fixture(scope="module")
def belt(casting_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[BeltPart]]:
    """30 test photos (held out from training), good and defective in turn, on the dark belt."""
    video = tmp_path_factory.mktemp("belt") / "belt.avi"
    return video, write_belt(video, belt_photos(casting_model.parent / "split" / "test", PARTS), seed=3)


def test_presence_feeds_the_part_not_the_roi(casting_model: Path, belt: tuple[Path, list[BeltPart]]) -> None:
    video, truth = belt
    clean = clean_calls(Classifier(casting_model), truth)
    part = run_presence(video, casting_model, truth, crop="part")
    roi = run_presence(video, casting_model, truth, crop="roi")
    for judged in (part, roi):
        assert not judged.phantoms, "no verdict on the empty belt"
        assert all(len(v) == 1 for v in judged.matched.values()), \
            {i: len(v) for i, v in judged.matched.items() if len(v) != 1}
    for t in truth:  # the crop is the photo's carrier plate, to the pixel: not a line of belt in it
        f = part.matched[t.index][0].part.frames[0]
        assert f.crop is not None and f.crop.width == f.crop.height == 300 and f.crop.y == 30, f.crop
    a, b = agreement(truth, part.matched, clean), agreement(truth, roi.matched, clean)
    print(f"\nreal-photo belt, presence, {len(truth)} parts: decisions as on the clean photo: crop {a.decisions:.3f}, "
          f"ROI {b.decisions:.3f}; three-way calls: crop {a.calls:.3f}, ROI {b.calls:.3f}")
    assert a.decisions >= 0.95 and a.judged_once == 1.0
    assert b.decisions < a.decisions - 0.15, "the ROI, belt and all, is not what the model learnt"


def test_trigger_mode_crops_the_part_inside_the_roi(casting_model: Path, belt: tuple[Path, list[BeltPart]]
                                                     ) -> None:
    video, truth = belt
    verdicts = run_trigger(video, casting_model, truth)
    assert len(verdicts) == len(truth) and not [v for v in verdicts if v.verdict == "missed"]
    a = agreement(truth, {t.index: [v] for t, v in zip(truth, verdicts, strict=True)},
                  clean_calls(Classifier(casting_model), truth))
    print(f"\nreal-photo belt, trigger: decisions as on the clean photo {a.decisions:.3f}, three-way calls "
          f"{a.calls:.3f}")
    assert a.decisions >= 0.95
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


def test_the_unit_knows_what_it_has_never_seen(casting_model: Path) -> None:
    from converter.metrics import roc_auc

    clf = Classifier(casting_model)
    limit = clf.ood_threshold
    assert limit is not None and clf.signature is not None
    test = casting_model.parent / "split" / "test"
    held = np.array([clf.classify(read_rgb(p)).ood for c in ("good", "defect") for p in list_images(test / c)])
    unseen = {k: np.array([clf.classify(foreign(k, i)).ood for i in range(40)]) for k in FOREIGN}
    shares = {k: float((v > limit).mean()) for k, v in unseen.items()}
    everything = np.concatenate(list(unseen.values()))
    auc = roc_auc(np.r_[np.zeros(len(held)), np.ones(len(everything))].astype(bool), np.r_[held, everything])
    print(f"\ncasting model's signature: threshold {limit:.2f}; {float((held <= limit).mean()):.3f} of "
          f"{len(held)} held-out photos below; above: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
          + f"; AUC {auc:.3f}")
    assert (held <= limit).mean() >= 0.99
    assert all(s >= 0.95 for s in shares.values()), shares


def test_a_unit_judging_impellers_with_the_demo_model_says_so(tmp_path: Path, casting: Path, broker: Any,
                                                               daemons: list[Any]) -> None:
    """The real daemon, over MQTT, on the casting belt, with the committed demo MobileNetV2 (trained on synthetic
    parts on a dark background): every part still gets its verdict, and the unit says both that its crops are unlike
    the model's training images and that the inputs are unlike anything it has seen, with the crop attached."""
    import json

    import cv2

    from harness import REPO
    from harness.broker import Collector
    from harness.daemon import BASE, Daemon, config
    from harness.data import casting_sample

    photos = [(p, p.parent.name == "defect") for p in casting_sample(12)]
    video = tmp_path / "belt.avi"
    truth = write_belt(video, photos, seed=5)
    c = Collector(broker.port, f"{BASE}/#")
    cfg = config(tmp_path, broker.port, REPO / "models", model={"name": "mobilenetv2"},
                 camera={"source": str(video), "fps": 0, "loop": False,
                         "roi": {"x": ROI.x, "y": ROI.y, "width": ROI.width, "height": ROI.height}},
                 parts={"presence": True}, gradcam={"enabled": False})
    d = Daemon(tmp_path / "unit", cfg).start()
    daemons.append(d)
    assert c.wait(lambda m: sum(t.endswith("/part") for t, _, _ in m) >= len(truth) - 1, 120), d.log()[-3000:]
    parts = [json.loads(p) for p in c.on("/part")]
    for p in parts:  # a square on the plate: the plate itself, or the impeller re-framed at the training's margin
        _, y, w, h = p["crop"]
        assert w == h and y >= 30 and y + h <= 330 and p["framing"]["background"] > 120, (p["crop"], p["framing"])
    assert sum(p["unfamiliar"] for p in parts) >= 0.9 * len(parts) and all(p["ood"] > 0 for p in parts)
    assert c.wait(lambda m: {"framing", "unfamiliar_input"} <= {json.loads(p)["kind"] for t, p, _ in m
                                                                  if t.endswith("/alert")}, 30), d.log()[-3000:]
    alerts = {a["kind"]: a for a in (json.loads(p) for p in c.on("/alert"))}
    framing_alert, unfamiliar = alerts["framing"], alerts["unfamiliar_input"]
    assert any("grey level" in p and "training images had 38" in p for p in framing_alert["problems"]), framing_alert
    assert unfamiliar["ood"] > unfamiliar["ood_threshold"] > 0 and unfamiliar["part_id"]
    assert c.wait(lambda m: any(t.endswith(f"/frame/{framing_alert['frame_id']}") for t, _, _ in m), 30)
    crop = cv2.imdecode(np.frombuffer(c.on(f"/snapshot/{framing_alert['frame_id']}")[0], np.uint8), cv2.IMREAD_COLOR)
    whole = cv2.imdecode(np.frombuffer(c.on(f"/frame/{framing_alert['frame_id']}")[0], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape[:2] == (300, 300) and whole.shape[:2] == (360, 640), "the crop the model saw, and where it was"
    status = json.loads([p for t, p, _ in c.messages if t.endswith("/status")][-1])
    assert status["framing"]["state"] == "unlike_training" and status["framing"]["problems"]
    assert status["familiarity"]["threshold"] == unfamiliar["ood_threshold"] and status["familiarity"]["unfamiliar"]
    c.close()
