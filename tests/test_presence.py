"""Presence at a restart while parts pass, on the real-photo belt: the belt learnt right, kept, checked, relearnt.

The belt is harness/belt.py's: casting photos (the real data set) on a dark belt, here moving slowly (12 px a frame at
12 fps), so that a part covers the middle of the ROI for most of a 30-frame learning window, as on the line where a
restart learnt ghosts that never healed. No model: presence alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from core.preprocess import Roi
from edge import parts
from edge.parts import Presence, PresenceSettings
from harness.belt import ROI, BeltPart, belt_photos, read_video, write_belt
from harness.data import casting_split


@pytest.fixture(scope="module")
def slow_belt(tmp_path_factory: pytest.TempPathFactory, casting: Path) -> tuple[list[BeltPart], list[np.ndarray]]:
    tmp = tmp_path_factory.mktemp("slow_belt")
    _, test = casting_split(casting, tmp / "split")
    truth = write_belt(tmp / "belt.avi", belt_photos(test, 16), step_px=12.0)
    return truth, read_video(tmp / "belt.avi")


def _watch(presence: Presence, frames: list[np.ndarray]) -> int:
    """Parts seen in position: runs of in-position frames."""
    seen, inside = 0, False
    for frame in frames:
        s = presence.observe(frame)
        now = s is not None and s.in_position
        seen += now and not inside
        inside = now
    return seen


def test_a_start_with_parts_passing_sees_every_part_or_says_it_passed(
        slow_belt: tuple[list[BeltPart], list[np.ndarray]], monkeypatch: pytest.MonkeyPatch) -> None:
    truth, frames = slow_belt
    start = truth[2].first_frame + 5  # the unit starts with a part sliding in
    passing = sum(t.centred_frame >= start for t in truth)
    presence = Presence(PresenceSettings(), roi=ROI)
    seen = _watch(presence, frames[start:])
    assert passing - 1 <= seen + presence.unjudged <= passing, (seen, presence.unjudged, passing)
    # The learning it replaces: the median of the first 30 frames, whatever they showed.
    monkeypatch.setattr(parts, "learn_belt", lambda greys, level: np.median(np.stack(greys), axis=0))
    monkeypatch.setattr(parts, "LEARN_AT_MOST", 1)
    before = Presence(PresenceSettings(), roi=ROI)
    wrong = _watch(before, frames[start:])
    assert abs(wrong - passing) > 2, (wrong, passing)
    print(f"restart with parts passing: {seen} parts seen + {presence.unjudged} said unjudged of {passing} "
          f"(median of the first 30 frames: {wrong} seen)")


def test_the_belt_is_kept_checked_at_a_restart_and_relearnt_when_it_no_longer_fits(
        slow_belt: tuple[list[BeltPart], list[np.ndarray]], tmp_path: Path) -> None:
    truth, frames = slow_belt
    store = tmp_path / "belt.npz"
    first = Presence(PresenceSettings(), roi=ROI, store=store)
    _watch(first, frames[:40])  # the belt is empty for the first 36 frames
    assert first.state == "learnt" and store.exists()

    again = Presence(PresenceSettings(), roi=ROI, store=store)  # a restart: not blind while learning
    assert again.state == "checking" and again.observe(frames[truth[0].centred_frame]) is not None
    seen = _watch(again, frames[truth[0].centred_frame + 1:truth[4].last_frame])
    assert again.state == "loaded" and again.relearnt == 0 and seen >= 3

    brighter = [np.clip(f.astype(np.int16) + 60, 0, 255).astype(np.uint8) for f in frames[:60]]
    lit = Presence(PresenceSettings(), roi=ROI, store=store)  # the light changed while the unit was off
    _watch(lit, brighter[:12])
    assert lit.relearnt == 1 and "does not fit" in lit.reason
    _watch(lit, brighter[12:])
    assert lit.state == "learnt" and lit.status()["belt"] == "learnt"

    lit.asked = "asked by cmd/learn_belt"  # as the command does, from another thread
    lit.observe(frames[0])
    assert lit.state == "learning" and lit.status()["why"] == "asked by cmd/learn_belt" and lit.relearnt == 2

    store.write_bytes(b"not a belt")
    assert Presence(PresenceSettings(), roi=ROI, store=store).state == "learning", "a corrupt file: learnt again"


def test_a_ghost_that_never_moves_is_relearnt() -> None:
    """Something that stands still in the ROI longer than ``stale_frames`` is taken for belt: a part that was on the
    belt while it was learnt leaves a hole that would otherwise be a part forever."""
    belt = np.full((120, 160, 3), 40, np.uint8)
    part = belt.copy()
    part[40:80, 60:100] = 200
    presence = Presence(PresenceSettings(learn_frames=5))
    _watch(presence, [part] * 5)  # learnt with the part on it
    assert presence.state == "learnt"
    stale = presence.s.stale_frames
    _watch(presence, [belt] * (stale + 1))  # the part leaves: its hole stays where it was
    assert presence.relearnt == 1 and "has not moved" in presence.reason
    _watch(presence, [belt] * 5)
    seen = presence.observe(part)
    assert seen is not None and seen.in_position, "relearnt on the empty belt, a part is a part again"


def test_a_roi_with_no_margin_for_the_parts_seen_is_said_by_check_config(
        slow_belt: tuple[list[BeltPart], list[np.ndarray]], tmp_path: Path, models_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The parts are 300 px photos moving 12 px a frame along the frame's width: an ROI 340 px wide leaves each a
    few frames wholly inside it, and one 320 px wide lets some pass without one. The unit measures both on the parts
    it sees, keeps them with the belt, and ``check-config`` says them from there; the framing issue's ROI (400 px)
    is fine."""
    from edge.cli import main
    from edge.config import PartsConfig

    _, frames = slow_belt
    tight = Roi(x=150, y=10, width=340, height=340)

    def watched(roi: Roi, state: Path) -> Presence:
        presence = parts.PartSettings.from_config(PartsConfig(presence=True), roi, state).presence
        assert presence is not None
        _watch(presence, frames)
        return presence

    said = watched(tight, tmp_path / "tight").margin_problem()
    assert said is not None and re.search(r"^the parts seen span 9\d% of the ROI \(340 x 340 px\) along", said), said
    assert watched(ROI, tmp_path / "wide").margin_problem() is None
    # 20 px wider than a part at 12 px a frame: some parts are never wholly inside it, and pass unjudged
    narrow = watched(Roi(x=160, y=10, width=320, height=340), tmp_path / "narrow")
    assert narrow.crossed > 2 and f"{narrow.crossed} of the last 16 things to cross" in str(narrow.margin_problem())

    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[device]\nid = "u"\n[camera]\nsource = "0"\n[camera.roi]\nx = 150\ny = 10\nwidth = 340\n'
                   f'height = 340\n[model]\nname = "tiny"\nmodels_dir = "{models_dir}"\n[parts]\npresence = true\n'
                   f'[state]\ndir = "{tmp_path / "tight"}"\n')
    assert main(["check-config", "--config", str(cfg), "--no-camera"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"warning: presence \(from the parts the unit has seen\): the parts seen span 9\d%", out), out
    with capsys.disabled():
        print(f"\nROI 340 px: {said}\nROI 320 px: {narrow.margin_problem()}")
