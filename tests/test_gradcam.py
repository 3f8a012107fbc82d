"""Grad-CAM: localisation on the committed models, and the daemon's worker over MQTT (ok, and every way it fails)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib

from converter import synth
from converter.architectures import ARCHITECTURES
from core import manifest as mf
from edge.gradcam.overlay import full_frame_heatmap
from edge.gradcam.quality import chance, pointing_hit
from edge.gradcam.service import GradcamService, Outcome
from edge.gradcam.worker import setup
from harness import REPO
from harness.broker import Broker, Collector
from harness.daemon import ALERT_STREAM, BASE, Daemon, config

pytestmark = [pytest.mark.tensorflow, pytest.mark.processes]


@pytest.mark.parametrize("model", ["mobilenetv2", "cnn", "efficientnetb0"])
def test_default_heatmaps_point_at_the_defect(model: str) -> None:
    """Each committed model's own heatmap (the layers and method its manifest names, chosen by the converter without
    masks) lands on the defect; the original app's layer stays selectable. bench/gradcam.py measures both on 40."""
    cam, pre = setup(REPO / "models" / f"{model}.json", None, 2)
    original, _ = setup(REPO / "models" / f"{model}.json", None, 2, (ARCHITECTURES[model].gradcam_layer,))
    assert original.layers == (ARCHITECTURES[model].gradcam_layer,) and cam.layers != original.layers
    hits, chances = [], []
    for i in range(16):
        part = synth.render(9100, i, size=256, defect=synth.DEFECT_KINDS[i % len(synth.DEFECT_KINDS)])
        heat = full_frame_heatmap(cam(pre["RGB"](part.image)).cam, part.image.shape[:2], None)
        hits.append(pointing_hit(heat, part.mask))
        chances.append(chance(part.mask))
    assert np.mean(hits) >= 10 * np.mean(chances) and np.mean(hits) >= 0.6, (np.mean(hits), np.mean(chances))


def gradcam_config(tmp: Path, port: int, models_dir: Path, **over: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return config(tmp, port, models_dir, state={"ring_frames": 200}, **over)


def test_cmd_gradcam_publishes_a_heatmap(tmp_path: Path, broker: Broker, models_dir: Path,
                                         daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/#")
    d = Daemon(tmp_path, gradcam_config(tmp_path, broker.port, models_dir)).start()
    daemons.append(d)
    assert c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 30), d.log()
    frame_id = json.loads(c.on("/result")[-1])["frame_id"]
    c.publish(f"{BASE}/cmd/gradcam", json.dumps({"frame_id": frame_id, "method": "gradcam++"}))
    assert c.wait(lambda m: any(t == f"{BASE}/gradcam/{frame_id}" for t, _, _ in m) and
                  any(t == f"{BASE}/gradcam" for t, _, _ in m), 90), d.log()
    reply = json.loads(c.on("/cmd/gradcam/reply")[0])
    assert reply["ok"] and reply["result"]["queued"]
    assert c.on(f"/gradcam/{frame_id}")[0][:2] == b"\xff\xd8"
    event = json.loads(next(p for t, p, _ in c.messages if t == f"{BASE}/gradcam"))
    assert event["ok"] and event["frame_id"] == frame_id and event["method"] == "gradcam++"
    chosen = mf.load(models_dir / "tiny_f32.json").gradcam
    assert event["layer"] == "+".join(chosen.layers) and abs(event["p_defect_keras"] - event["p_defect_tflite"]) < 1e-3
    assert set(event["timings_ms"]) == {"queue", "start", "compute", "render"}
    c.publish(f"{BASE}/cmd/gradcam", json.dumps({"frame_id": "unit1-0000000000-000000001"}))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/cmd/gradcam/reply")]) == 2, 10)
    assert "unknown or no longer buffered" in json.loads(c.on("/cmd/gradcam/reply")[1])["error"]
    rc, took = d.stop()
    assert rc == 0 and took < 5, "the worker does not hold up the stop"
    assert d.query("SELECT COUNT(*) FROM heatmaps")[0][0] == 1


def test_a_crashed_worker_is_restarted(models_dir: Path) -> None:
    done: list[Outcome] = []
    ready = threading.Event()

    def on_done(o: Outcome) -> None:
        done.append(o)
        ready.set()

    service = GradcamService(lambda: models_dir / "tiny_f32.json", on_done, duty_cycle=0.5)
    try:
        frame = synth.render(1, 1, size=128, defect="scratch").image
        service.request("f1", frame, "RGB", "gradcam")
        assert ready.wait(120) and done[0].ok
        ready.clear()
        assert service.pid is not None
        # Heatmaps wait for CPU rather than slow the line: the worker runs below the daemon's priority.
        assert os.getpriority(os.PRIO_PROCESS, service.pid) == max(10, os.getpriority(os.PRIO_PROCESS, 0))
        os.kill(service.pid, signal.SIGKILL)
        service.request("f2", frame, "RGB", "gradcam")  # whether it sees the death now or while waiting...
        assert ready.wait(120) and done[1].frame_id == "f2", done
        assert done[1].ok or "crashed (exit -9)" in done[1].error
        ready.clear()
        service.request("f3", frame, "RGB", "gradcam")  # ...the next request is served by a new worker
        assert ready.wait(120) and done[-1].ok and done[-1].frame_id == "f3", done
        assert service.counts["restarts"] == 1 and service.counts["done"] >= 2
        # A burst is spread out: at duty cycle 0.5 the second of two requests queued together waits for the first
        # and for a rest as long as the first took (a lone request, like f1, waits for nothing).
        ready.clear()
        service.request("f4", frame, "RGB", "gradcam")
        service.request("f5", frame, "RGB", "gradcam")
        deadline = time.monotonic() + 120
        while done[-1].frame_id != "f5" and ready.wait(max(0.0, deadline - time.monotonic())):
            ready.clear()
        assert [o.frame_id for o in done[-2:]] == ["f4", "f5"] and done[-1].ok, done
        f4, f5 = done[-2].timings_ms, done[-1].timings_ms
        assert f5["queue"] - f4["queue"] >= 2 * (f4["compute"] + f4["render"]), (f4, f5)
    finally:
        service.stop()
    assert service.pid is None


def test_automatic_heatmaps_for_alerts(tmp_path: Path, broker: Broker, models_dir: Path,
                                       daemons: list[Daemon]) -> None:
    c = Collector(broker.port, f"{BASE}/alert", f"{BASE}/gradcam/+")
    over = {**ALERT_STREAM, "alerts": {**ALERT_STREAM["alerts"], "repeat_after_s": 5},
            "gradcam": {"auto_on": ["defect"]}}
    d = Daemon(tmp_path, gradcam_config(tmp_path, broker.port, models_dir, **over)).start()
    daemons.append(d)
    assert c.wait(lambda m: any("/gradcam/" in t for t, _, _ in m), 90), d.log()
    first_alert = json.loads(c.on("/alert")[0])["frame_id"]
    assert next(t for t, _, _ in c.messages if "/gradcam/" in t) == f"{BASE}/gradcam/{first_alert}"
    d.stop()


@pytest.mark.parametrize("breakage", ["h5_missing", "h5_changed", "layer_missing"])
def test_unavailable_cases_are_clear_errors_and_inference_goes_on(tmp_path: Path, broker: Broker, models_dir: Path,
                                                                 daemons: list[Daemon], breakage: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for f in models_dir.glob("tiny_f32.*"):  # the model, its manifest, reports and verification set
        if f.is_dir():
            shutil.copytree(f, models / f.name)
        else:
            shutil.copy(f, models)
    m = json.loads((models / "tiny_f32.json").read_text())
    h5 = (models_dir / m["source"]["path"]).resolve()
    if breakage == "h5_missing":
        m["source"]["path"] = "nowhere.h5"
    elif breakage == "h5_changed":
        shutil.copy(h5, models / "changed.h5")
        with (models / "changed.h5").open("ab") as f:
            f.write(b"\0")
        m["source"]["path"] = "changed.h5"
    else:
        m["source"]["path"] = str(h5)
        m["gradcam"]["layer"] = "conv_9"
    if breakage != "layer_missing":
        m["source"]["path"] = m["source"]["path"]
    (models / "tiny_f32.json").write_text(json.dumps(m))
    c = Collector(broker.port, f"{BASE}/result", f"{BASE}/gradcam")
    d = Daemon(tmp_path, gradcam_config(tmp_path, broker.port, models)).start()
    daemons.append(d)
    assert c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 30), d.log()
    c.publish(f"{BASE}/cmd/gradcam", json.dumps({"frame_id": json.loads(c.on("/result")[-1])["frame_id"]}))
    assert c.wait(lambda m: any(t == f"{BASE}/gradcam" for t, _, _ in m), 90), d.log()
    event = json.loads(next(p for t, p, _ in c.messages if t == f"{BASE}/gradcam"))
    expected = {"h5_missing": "nowhere.h5 named by tiny_f32.json is missing",
                "h5_changed": "changed.h5 does not match the sha256", "layer_missing": "layer 'conv_9' is not"}
    assert not event["ok"] and expected[breakage] in event["error"], event
    n = len(c.on("/result"))
    assert c.wait(lambda m: len([1 for t, _, _ in m if t.endswith("/result")]) > n + 10, 20), "inference goes on"
    d.stop()


def test_tensorflow_not_installed(tmp_path: Path, broker: Broker, models_dir: Path, daemons: list[Daemon]) -> None:
    """A real edge-only environment (the core dependencies, no TensorFlow), as on a Raspberry Pi."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]  # the unit's, no extra
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), *core],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    c = Collector(broker.port, f"{BASE}/result", f"{BASE}/gradcam")
    d = Daemon(tmp_path, gradcam_config(tmp_path, broker.port, models_dir))
    with d.log_path.open("ab") as log:
        d.proc = subprocess.Popen([str(py), "-m", "edge.cli", "run", "--config", str(d.config_path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=d.env, cwd=d.workdir)
    daemons.append(d)
    assert c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 60), d.log()
    c.publish(f"{BASE}/cmd/gradcam", json.dumps({"frame_id": json.loads(c.on("/result")[-1])["frame_id"]}))
    assert c.wait(lambda m: any(t == f"{BASE}/gradcam" for t, _, _ in m), 60), d.log()
    event = json.loads(next(p for t, p, _ in c.messages if t == f"{BASE}/gradcam"))
    assert not event["ok"] and "TensorFlow is not installed on this unit" in event["error"]
    assert d.alive()
    d.stop()



def _spawned_workers() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"multiprocessing.spawn" in (proc / "cmdline").read_bytes():
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_daemon_killed_while_its_worker_starts_leaves_no_worker(tmp_path: Path, broker: Broker, models_dir: Path,
                                                                 daemons: list[Daemon]) -> None:
    before = _spawned_workers()
    c = Collector(broker.port, f"{BASE}/result", f"{BASE}/cmd/gradcam/reply")
    d = Daemon(tmp_path, gradcam_config(tmp_path, broker.port, models_dir)).start()
    daemons.append(d)
    assert c.wait(lambda m: any(t.endswith("/result") for t, _, _ in m), 30), d.log()
    c.publish(f"{BASE}/cmd/gradcam", json.dumps({"frame_id": json.loads(c.on("/result")[-1])["frame_id"]}))
    assert c.wait(lambda m: any(t.endswith("/reply") for t, _, _ in m), 10)
    d.signal(signal.SIGKILL)  # the worker is still importing TensorFlow
    d.proc.wait(10)  # type: ignore[union-attr]
    deadline = time.monotonic() + 15
    while _spawned_workers() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _spawned_workers() - before, "the worker went with its daemon"
