"""Frame sources: replay, OpenCV on a real HTTP stream that goes away, the picamera2 contract, the Camera policy."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from converter import synth
from core.classifier import Prediction
from edge.ringbuffer import Buffered, FrameRing
from edge.sources import source_from_spec
from edge.sources.base import Backoff, Camera, EndOfStream, FrameSource, SourceError
from edge.sources.picamera2 import PiCamera
from edge.sources.replay import FolderReplay, VideoReplay

CONTRACTS = Path(__file__).parent / "contracts"


def fast_backoff() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)


def collect(camera: Camera, limit: int = 1000, stop: threading.Event | None = None) -> list:
    stop = stop or threading.Event()
    out = []
    for f in camera.frames(stop):
        out.append(f)
        if len(out) >= limit:
            stop.set()
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"img_{i}.png"), synth.render(3, i, size=64).image[:, :, ::-1])
    return tmp_path


def test_folder_replay_in_order_then_ends(folder: Path) -> None:
    cam = Camera(FolderReplay(folder))
    frames = collect(cam)
    assert [f.origin for f in frames] == [f"img_{i}.png" for i in range(5)]
    assert [f.index for f in frames] == list(range(5)) and cam.state == "ended"
    assert np.array_equal(frames[0].image, synth.render(3, 0, size=64).image)  # RGB, as the source declares
    assert all(f.capture_ms > 0 and f.captured_at > 1e9 for f in frames)


def test_the_ring_keeps_a_replayed_frame_as_its_file_and_gives_back_the_same_pixels(folder: Path) -> None:
    frames = collect(Camera(FolderReplay(folder)))
    ring = FrameRing(max_frames=10, max_bytes=1 << 20)
    good = Prediction("good", False, 0.2, 0.8, 0.5, False, "m", "0" * 64)
    for i, f in enumerate(frames):
        ring.add(Buffered.of(f"f{i}", f, "RGB", good))
    kept = ring.get("f3")
    assert kept is not None and kept.encoded and kept.stored.nbytes == (folder / "img_3.png").stat().st_size
    assert kept.frame_order == "RGB" and np.array_equal(kept.image, frames[3].image)
    camera_frame = dataclasses.replace(frames[0], encoded=None)  # a camera delivers pixels only
    ring.add(Buffered.of("cam", camera_frame, "BGR", good))
    raw = ring.get("cam")
    assert raw is not None and not raw.encoded and raw.image is camera_frame.image and raw.frame_order == "BGR"


def test_corrupt_images_are_skipped_and_the_rest_continue(folder: Path) -> None:
    (folder / "img_2.png").write_bytes(b"\x89PNG broken")
    src = FolderReplay(folder)
    frames = collect(Camera(src))
    assert [f.origin for f in frames] == ["img_0.png", "img_1.png", "img_3.png", "img_4.png"]
    assert len(src.skipped) == 1 and "img_2.png: not a decodable image" in src.skipped[0]


def test_looping_replay_at_a_set_rate(folder: Path) -> None:
    src = FolderReplay(folder, fps=50, loop=True)
    t = time.monotonic()
    frames = collect(Camera(src), limit=12)
    elapsed = time.monotonic() - t
    assert [f.origin for f in frames][5:7] == ["img_0.png", "img_1.png"]
    assert elapsed >= 11 / 50 * 0.9  # paced: 12 frames at 50 fps take at least 11 periods


def test_video_replay_ends_cleanly(tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    synth.write_video(video, parts=2, size=64, frames_per_part=5)
    cam = Camera(VideoReplay(video, fps=0))
    frames = collect(cam)
    assert len(frames) == 10 and cam.state == "ended" and frames[0].image.shape == (64, 64, 3)
    assert frames[-1].origin == "line.avi#10"


def test_missing_and_undecodable_video_are_retried_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video")
    for path in (bad, tmp_path / "none.avi"):
        cam = Camera(VideoReplay(path), backoff=fast_backoff())
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        assert collect(cam, stop=stop) == []
        assert cam.stats.open_failures >= 2 and path.name in cam.stats.last_error


class Flaky(FrameSource):
    """A real source's failure modes on demand: fails to open, read errors, silence (stall), recovery."""

    frame_order = "RGB"

    def __init__(self, script: list[str]):
        self.script = script
        self.opens = 0

    @property
    def description(self) -> str:
        return "flaky"

    def open(self) -> None:
        self.opens += 1
        if self.script and self.script[0] == "open_fail":
            self.script.pop(0)
            raise SourceError("device busy")

    def read(self) -> tuple[np.ndarray, str] | None:
        if not self.script:
            raise EndOfStream
        step = self.script.pop(0)
        if step == "error":
            raise SourceError("unplugged")
        if step == "silent":
            time.sleep(0.03)
            return None
        return np.zeros((4, 4, 3), np.uint8), step

    def close(self) -> None:
        pass


def test_camera_reopens_after_open_failure_read_error_and_stall() -> None:
    src = Flaky(["open_fail", "a", "error", "b", *["silent"] * 6, "c"])
    cam = Camera(src, stall_timeout=0.1, backoff=fast_backoff())
    frames = collect(cam)
    assert [f.origin for f in frames] == ["a", "b", "c"]
    assert (cam.stats.open_failures, cam.stats.read_errors, cam.stats.stalls) == (1, 1, 1)
    assert cam.stats.reconnects == 3 and src.opens == 4 and "stalled" in cam.stats.last_error


def test_backoff_grows_to_its_ceiling_and_resets() -> None:
    b = Backoff(initial=0.5, maximum=4)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    b.reset()
    assert b.next_delay() == 0.5


class RecordingPicamera2:
    """Stands in for picamera2.Picamera2 and records every call, to compare with the recorded contract."""

    calls: ClassVar[list[list[object]]] = []
    cameras: ClassVar[list[dict[str, object]]] = [{"Model": "imx708", "Num": 0}]

    def __init__(self, num: int):
        self.calls.append(["Picamera2", num])

    @classmethod
    def global_camera_info(cls) -> list[dict[str, object]]:
        cls.calls.append(["global_camera_info"])
        return cls.cameras

    def create_video_configuration(self, main: dict[str, object], controls: dict[str, object]) -> dict[str, object]:
        self.calls.append(["create_video_configuration", {"main": {**main, "size": list(main["size"])},  # type: ignore[call-overload]
                                                          "controls": controls}])
        return {"main": main}

    def configure(self, config: dict[str, object]) -> None:
        self.calls.append(["configure"])

    def start(self) -> None:
        self.calls.append(["start"])

    def capture_array(self, name: str) -> np.ndarray:
        self.calls.append(["capture_array", name])
        return np.zeros((960, 1280, 3), np.uint8)

    def stop(self) -> None:
        self.calls.append(["stop"])

    def close(self) -> None:
        self.calls.append(["close"])


def test_picamera2_adapter_keeps_the_recorded_contract() -> None:
    RecordingPicamera2.calls = []
    cam = PiCamera(0, width=1280, height=960, fps=30, factory=RecordingPicamera2)
    cam.open()
    image, _ = cam.read() or (None, "")
    cam.close()
    contract = json.loads((CONTRACTS / "picamera2.json").read_text())
    assert RecordingPicamera2.calls == contract["calls"]
    assert image is not None and image.shape == (960, 1280, 3) and cam.frame_order == "RGB"


def test_picamera2_without_a_camera_says_so() -> None:
    RecordingPicamera2.calls = []
    cam = PiCamera(1, factory=RecordingPicamera2)
    with pytest.raises(SourceError, match="picamera2 camera 1: not connected \\(1 camera\\(s\\) found\\)"):
        cam.open()


def test_picamera2_not_installed_is_a_clear_error() -> None:
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        PiCamera(0).open()


def test_specs_choose_the_backend(folder: Path) -> None:
    assert type(source_from_spec("picamera2:1")).__name__ == "PiCamera"
    cv = source_from_spec("rtsp://user:secret@10.0.0.9/stream")
    assert type(cv).__name__ == "OpenCVCamera" and "secret" not in cv.description
    assert type(source_from_spec("/dev/video0")).__name__ == "OpenCVCamera"
    assert type(source_from_spec("/dev/v4l/by-id/usb-046d_HD_Pro_Webcam-video-index0")).__name__ == "OpenCVCamera"
    assert type(source_from_spec("videotestsrc ! appsink")).__name__ == "OpenCVCamera"
    assert isinstance(source_from_spec(str(folder)), FolderReplay)
    with pytest.raises(SourceError, match="no such file or folder"):
        source_from_spec(str(folder / "nope"))


def test_gstreamer_pipeline_without_gstreamer_says_so() -> None:
    """pip's OpenCV has no GStreamer: a Jetson CSI pipeline must fail with the reason, not "cannot open"."""
    from edge.sources.opencv import OpenCVCamera, has_gstreamer

    if has_gstreamer():
        pytest.skip("this OpenCV has GStreamer, so the pipeline would open")
    with pytest.raises(SourceError, match=r"was built without GStreamer .* JetPack's OpenCV"):
        OpenCVCamera("videotestsrc ! videoconvert ! appsink").open()


def test_network_camera_unplugged_and_plugged_back() -> None:
    """OpenCV reading a real MJPEG HTTP stream; the server goes away mid-run and comes back."""
    from edge.sources.opencv import OpenCVCamera
    from tests.mjpeg_server import MjpegCamera

    server = MjpegCamera()
    server.plug()
    cam = Camera(OpenCVCamera(server.url, timeout_ms=1500), stall_timeout=3, backoff=fast_backoff())
    stop = threading.Event()
    frames = []
    try:
        for f in cam.frames(stop):
            frames.append(f)
            if len(frames) == 5:
                server.unplug()
                threading.Timer(0.5, server.plug).start()
            if len(frames) == 20:  # well past what the socket could have buffered before the outage
                break
    finally:
        stop.set()
        server.unplug()
    assert len(frames) == 20 and frames[0].image.shape == (96, 96, 3)
    assert cam.stats.read_errors >= 1 and cam.stats.open_failures >= 1 and cam.stats.reconnects >= 1
