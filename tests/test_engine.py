"""The edge engine: classifier and runtime errors, the threaded pipeline, and `defect-edge classify`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter import synth
from core import manifest as mf
from core.classifier import Classifier, ModelMismatchError, p_of_levels
from core.images import list_images, read_rgb
from core.preprocess import Roi
from core.runtime import RuntimeUnavailableError
from edge.cli import main
from edge.pipeline import Pipeline, Result
from edge.sources.base import Camera
from harness.frames import MemoryFrames as Frames

pytestmark = pytest.mark.tensorflow  # the models_dir fixture converts models


@pytest.fixture(scope="module")
def parts() -> list[np.ndarray]:
    return [synth.sample(31, i, size=128).image for i in range(40)]


def run(pipe: Pipeline, *, slow_ms: float = 0.0, stop_after: float | None = None,
        until: Callable[[list[Result]], bool] | None = None, timeout: float = 30.0) -> list[Result]:
    """Run until the stream ends, ``stop_after`` seconds, or ``until(results)`` holds (then within ``timeout``)."""
    out: list[Result] = []
    stop = threading.Event()
    timer = threading.Timer(stop_after or timeout, stop.set)
    if stop_after or until:
        timer.start()

    def keep(r: Result) -> None:
        out.append(r)
        if until is not None and until(out):
            stop.set()
        if slow_ms:
            time.sleep(slow_ms / 1e3)

    pipe.run(stop, keep)
    timer.cancel()
    return out


def test_newest_frame_wins_when_inference_is_behind(models_dir: Path, parts: list[np.ndarray]) -> None:
    cam = Camera(Frames(parts))
    pipe = Pipeline(cam, Classifier(models_dir / "tiny.json"), device_id="u1")
    results = run(pipe, slow_ms=20)  # a slow consumer: frames arrive faster than they are handled
    assert pipe.dropped > 0
    assert len(results) + pipe.dropped == cam.stats.frames == 40
    assert [r.frame.index for r in results] == sorted(r.frame.index for r in results)
    assert results[-1].frame.index == 39  # the last frame is never the one dropped


def test_replay_can_ask_that_nothing_is_dropped(models_dir: Path, parts: list[np.ndarray]) -> None:
    pipe = Pipeline(Camera(Frames(parts)), Classifier(models_dir / "tiny.json"), device_id="u1", queue_size=2,
                    drop_when_behind=False)
    results = run(pipe, slow_ms=5)
    assert len(results) == 40 and pipe.dropped == 0
    ids = [r.frame_id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 40 and ids[0].startswith("u1-")
    r = results[0]
    assert set(r.timings_ms) == {"capture", "queue", "preprocess", "inference", "postprocess"}
    assert r.prediction.model == "tiny" and r.prediction.sha256 == mf.load(models_dir / "tiny.json").tflite.sha256


def test_on_demand_classifies_one_fresh_frame_per_trigger(models_dir: Path, parts: list[np.ndarray]) -> None:
    pipe = Pipeline(Camera(Frames(parts, loop=True, period=0.005)), Classifier(models_dir / "tiny.json"),
                    device_id="u1", mode="on_demand")
    triggered: list[float] = []

    def press() -> None:
        for _ in range(3):
            time.sleep(0.1)
            triggered.append(time.perf_counter())
            pipe.trigger()

    threading.Thread(target=press).start()
    results = run(pipe, until=lambda out: len(out) == 3)
    assert len(results) == 3, "one result per trigger, within the timeout"
    for t, r in zip(triggered, results, strict=True):
        assert r.frame.monotonic >= t, "a triggered result shows a frame captured after the trigger"


def test_target_fps_caps_the_rate(models_dir: Path, parts: list[np.ndarray]) -> None:
    pipe = Pipeline(Camera(Frames(parts, loop=True)), Classifier(models_dir / "tiny.json"), device_id="u1",
                    target_fps=20)
    results = run(pipe, stop_after=0.5)
    assert 1 <= len(results) <= 0.5 * 20 + 2


def test_bad_frames_are_counted_and_the_rest_continue(models_dir: Path, parts: list[np.ndarray]) -> None:
    small = np.zeros((50, 50, 3), np.uint8)
    clf = Classifier(models_dir / "tiny.json", roi=Roi(0, 0, 100, 100))
    pipe = Pipeline(Camera(Frames([parts[0], small, parts[1]])), clf, device_id="u1", drop_when_behind=False)
    results = run(pipe)
    assert [r.frame.origin for r in results] == ["0", "2"]
    assert pipe.stats.frame_errors == 1 and "does not fit a 50x50 frame" in pipe.stats.last_error


def test_camera_and_classifier_must_agree_on_channel_order(models_dir: Path) -> None:
    class Bgr(Frames):
        frame_order = "BGR"

    with pytest.raises(ValueError, match="classifier expects RGB frames, camera gives BGR"):
        Pipeline(Camera(Bgr([])), Classifier(models_dir / "tiny.json"), device_id="u1")


def _float32_dequantized(q: np.integer, scale: float, zero_point: int) -> float:
    """The reference the tests hold P(defective) to, written out: ``(q - zero point) * scale`` in float32."""
    return float((np.float32(q) - np.float32(zero_point)) * np.float32(scale))


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("positive", ["defective", "good"])
@pytest.mark.parametrize(("scale", "zero_point"), [(1 / 256, 0), (1 / 256, -128), (0.0041, 7), (0.0037, -100)])
def test_every_output_level_reads_as_float32_dequantization(dtype: str, positive: str, scale: float,
                                                            zero_point: int) -> None:
    """The table of levels the loop reads P(defective) from agrees with float32 dequantization on every byte an
    output can hold, int8's negative ones included."""
    out = mf.OutputSpec(dtype=dtype, positive=positive, scale=scale, zero_point=zero_point)  # type: ignore[arg-type]
    levels = p_of_levels(out)
    assert levels is not None and len(levels) == 256
    for q in np.arange(256, dtype=np.uint8).view(dtype):
        v = _float32_dequantized(q, scale, zero_point)
        assert levels[int(q) & 0xFF] == (1.0 - v if positive == "good" else v), (dtype, int(q))
    assert p_of_levels(mf.OutputSpec()) is None  # a float output is read as it is


def test_the_classifier_reads_p_as_its_runtime_dequantizes_it(models_dir: Path, parts: list[np.ndarray],
                                                              casting_model: Path) -> None:
    """P(defective) is the output tensor's value, dequantized with the scale and zero point the runtime reports: on
    the quantized and the float tiny model with synthetic parts, and on the model trained on the casting photos with
    held-out photos of the data set."""
    test_split = casting_model.parent / "split" / "test"
    photos = [read_rgb(path) for kind in ("good", "defect") for path in list_images(test_split / kind)[:12]]
    for manifest, frames in ((models_dir / "tiny.json", parts), (models_dir / "tiny_f32.json", parts),
                             (casting_model, photos)):
        clf = Classifier(manifest, num_threads=1)
        [details] = [d for d in clf.interpreter.get_output_details() if int(np.prod(d["shape"])) == 1]  # not features
        scale, zero_point = details["quantization"]
        seen = set()
        for image in frames:
            p = clf.classify(image).p_defect
            raw = clf.interpreter.get_tensor(details["index"]).reshape(-1)[0]
            want = float(raw) if not scale else _float32_dequantized(raw, scale, zero_point)
            assert p == want, (manifest.name, raw)
            seen.add(float(raw))
        assert len(seen) > 5, f"{manifest.name}: too few distinct outputs ({sorted(seen)}) to prove much"


class TestModelErrors:
    def test_missing_delegate_is_a_clear_error(self, models_dir: Path) -> None:
        with pytest.raises(RuntimeUnavailableError, match=r"delegate libedgetpu\.so\.1 could not be loaded .*"
                                                          r"libedgetpu1-std"):
            Classifier(models_dir / "tiny.json", delegate="libedgetpu.so.1")

    def test_model_input_not_what_the_manifest_says(self, models_dir: Path, tmp_path: Path) -> None:
        for f in models_dir.glob("tiny.*"):
            if f.is_file():  # the verification set's folder is not needed here
                shutil.copy(f, tmp_path)
        data = json.loads((tmp_path / "tiny.json").read_text())
        data["input"]["height"] = 96
        data["input"]["scale"] = 0.5
        (tmp_path / "tiny.json").write_text(json.dumps(data))
        with pytest.raises(ModelMismatchError, match=r"input shape \[1, 64, 64, 3\] != manifest \[1, 96, 64, 3\]; "
                                                     r"input quantization"):
            Classifier(tmp_path / "tiny.json")

    def test_corrupt_model_with_a_matching_manifest(self, models_dir: Path, tmp_path: Path) -> None:
        for f in models_dir.glob("tiny.*"):
            if f.is_file():  # the verification set's folder is not needed here
                shutil.copy(f, tmp_path)
        (tmp_path / "tiny.tflite").write_bytes(b"\0" * 1000)
        data = json.loads((tmp_path / "tiny.json").read_text())
        data["tflite"]["sha256"] = mf.sha256_file(tmp_path / "tiny.tflite")
        (tmp_path / "tiny.json").write_text(json.dumps(data))
        with pytest.raises(RuntimeUnavailableError, match="ai_edge_litert cannot load this model"):
            Classifier(tmp_path / "tiny.json")

    def test_threads_are_always_set(self, models_dir: Path) -> None:
        assert Classifier(models_dir / "tiny.json", num_threads=1).threads == 1
        clf = Classifier(models_dir / "tiny.json")
        assert clf.threads >= 1 and clf.runtime.name == "ai_edge_litert"


class TestClassifyCli:
    @pytest.fixture
    def images(self, tmp_path: Path) -> Path:
        d = tmp_path / "imgs"
        d.mkdir()
        for i in range(6):
            cv2.imwrite(str(d / f"p{i}.png"), synth.sample(8, i, size=128).image[:, :, ::-1])
        return d

    def test_json_lines_and_summary(self, models_dir: Path, images: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["classify", str(images), "--model", "tiny", "--models-dir", str(models_dir), "--json"]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [x["origin"] for x in lines[:-1]] == [f"p{i}.png" for i in range(6)]
        assert all(x["label"] in ("good", "defective") and 0 <= x["p_defect"] <= 1 for x in lines[:-1])
        s = lines[-1]["summary"]
        assert s["frames"] == 6 and s["good"] + s["defective"] == 6 and s["skipped"] == 0
        assert s["latency_ms_p50"] > 0 and s["model"] == "tiny"

    def test_table_video_and_corrupt_image(self, models_dir: Path, images: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        (images / "broken.jpg").write_bytes(b"\xff\xd8 not really")
        video = tmp_path / "line.avi"
        synth.write_video(video, parts=1, size=96, frames_per_part=4)
        rc = main(["classify", str(images), str(video), "--model", "tiny", "--models-dir", str(models_dir)])
        out, err = capsys.readouterr()
        assert rc == 2  # bad input reported, the rest classified
        assert "broken.jpg: not a decodable image" in err
        assert "line.avi#4" in out and "p5.png" in out
        assert "10 frames:" in out and "1 skipped" in out

    def test_unknown_model_lists_the_known_ones(self, models_dir: Path, images: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["classify", str(images), "--model", "../etc/passwd", "--models-dir", str(models_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"defect-edge: error: unknown model '../etc/passwd' in {models_dir}; known: tiny, tiny_f32"

    def test_tampered_model_is_refused(self, models_dir: Path, images: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        for f in models_dir.glob("tiny.*"):
            if f.is_file():  # the verification set's folder is not needed here
                shutil.copy(f, tmp_path)
        with (tmp_path / "tiny.tflite").open("ab") as f:
            f.write(b"x")
        assert main(["classify", str(images), "--model", "tiny", "--models-dir", str(tmp_path)]) == 2
        assert "sha256 of tiny.tflite is" in capsys.readouterr().err

    def test_missing_path(self, models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["classify", "/nonexistent/x.png", "--model", "tiny", "--models-dir", str(models_dir)]) == 2
        assert "/nonexistent/x.png: no such file or folder" in capsys.readouterr().err

    def test_never_imports_tensorflow(self, models_dir: Path, images: Path) -> None:
        code = ("import sys; from edge.cli import main; rc = main(['classify', sys.argv[1], '--model', 'tiny', "
                "'--models-dir', sys.argv[2], '--json']); print('TF' if 'tensorflow' in sys.modules else 'noTF', rc)")
        proc = subprocess.run([sys.executable, "-c", code, str(images), str(models_dir)], capture_output=True,
                              text=True, timeout=120)
        assert proc.stdout.splitlines()[-1] == "noTF 0", proc.stderr


def test_the_units_processes_keep_numpys_blas_on_one_thread() -> None:
    """A unit's process (anything that imports ``edge`` before numpy, as ``defect-edge`` does) loads OpenBLAS with one
    thread: a second one spins for a core the model keeps busy. An operator's own setting is kept."""
    import os

    script = "import {}, numpy, os; print(os.environ.get('OPENBLAS_NUM_THREADS'), len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}

    def run(first: str, **extra: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", script.format(first)], env={**env, **extra}, check=True,
                              capture_output=True, text=True, timeout=120).stdout.split()

    assert run("edge.cli") == ["1", "1"], "no BLAS worker thread beside the main one"
    setting, threads = run("json")  # the same process without the unit's package
    if (os.cpu_count() or 1) > 1:
        assert setting == "None" and int(threads) > 1, "the control: OpenBLAS starts workers of its own"
    assert run("edge.cli", OPENBLAS_NUM_THREADS="2")[0] == "2"
