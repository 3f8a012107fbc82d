"""Grad-CAM quality and cost, measured in one run on this machine.

Quality, per committed model, of its default heatmap (the layers and method its manifest names, chosen by the
converter) and of the original app's (plain Grad-CAM on its layer), on a fixed set of synthetic defective parts (the
generator knows each defect's mask):
- pointing game: share of images whose heatmap maximum falls inside the defect mask dilated by 5 px; chance is the
  share of the image that dilated mask covers;
- deletion faithfulness: mean drop of the Keras p_defect when the hottest 10 % of pixels are blurred, against
  blurring a random 10 %.
Cost, for ``--model`` (default mobilenetv2, the demo's): warm heatmap time ÷ one compiled Keras forward pass; cold
first request (worker process start + TensorFlow import + model load + first heatmap); and the daemon's frames per
second during a burst of 20 heatmap requests ÷ its frames per second without them (target >= 0.75 on 2 cores).

Run: ``.venv/bin/python -m bench.gradcam [--parts 40] [--pictures docs/gradcam]``. The last line is one JSON object.
``--pictures DIR`` also writes, per model, one defective part beside the original app's heatmap and the default one,
with the defect's true outline drawn in.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import median_ms
from converter import synth
from edge.gradcam.overlay import full_frame_heatmap
from edge.gradcam.quality import blur_pixels, chance, pointing_hit, random_share, top_share
from edge.gradcam.service import GradcamService
from harness import REPO
from harness.broker import Broker
from harness.daemon import write_toml
from harness.data import casting_sample, link_into


def quality(model_name: str, parts: int) -> dict[str, dict[str, Any]]:
    """{"default": figures, "original": figures}, each with the layers and method measured."""
    from converter.architectures import ARCHITECTURES
    from core import manifest as mf
    from edge.gradcam.worker import setup

    path = REPO / "models" / f"{model_name}.json"
    m = mf.load(path)
    original = ARCHITECTURES[m.architecture].gradcam_layer if m.architecture in ARCHITECTURES else m.gradcam.layer
    out = {}
    for kind, layers, method in (("default", (), "auto"), ("original", (original,), "gradcam")):
        cam, pre = setup(path, None, 1, layers)  # the worker's default: 1 TF thread
        rng = np.random.default_rng(0)
        hits, chances, drops, rand_drops = [], [], [], []
        for i in range(parts):
            part = synth.render(9100, i, size=256, defect=synth.DEFECT_KINDS[i % len(synth.DEFECT_KINDS)])
            h = cam(pre["RGB"](part.image), method)
            heat = full_frame_heatmap(h.cam, part.image.shape[:2], None)
            hits.append(pointing_hit(heat, part.mask))
            chances.append(chance(part.mask))
            blurred = [blur_pixels(part.image, chosen) for chosen in (top_share(heat, 0.1),
                                                                     random_share(heat.shape, 0.1, rng))]
            p_top, p_random = cam.p_defect(np.stack([pre["RGB"](b) for b in blurred]))
            drops.append(h.p_defect - p_top)
            rand_drops.append(h.p_defect - p_random)
        out[kind] = {"layers": "+".join(h.layers), "method": h.method, "pointing_game": float(np.mean(hits)),
                     "pointing_chance": float(np.mean(chances)), "deletion_drop": float(np.mean(drops)),
                     "random_drop": float(np.mean(rand_drops))}
    return out


def picture(model_name: str, out: Path) -> Path:
    """One defective part (a crack, index 3 of the fixed set), then the original app's heatmap and the default one,
    each with the generator's defect outline in white; written as ``out/MODEL.png``."""
    import cv2

    from converter.architectures import ARCHITECTURES
    from core import manifest as mf
    from edge.gradcam.overlay import blend
    from edge.gradcam.worker import setup

    path = REPO / "models" / f"{model_name}.json"
    part = synth.render(9100, 3, size=256, defect=synth.DEFECT_KINDS[3 % len(synth.DEFECT_KINDS)])
    bgr = cv2.cvtColor(part.image, cv2.COLOR_RGB2BGR)
    outline, _ = cv2.findContours(part.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    m = mf.load(path)
    panels = [bgr]
    for layers, method in (((ARCHITECTURES[m.architecture].gradcam_layer,), "gradcam"), ((), "auto")):
        cam, pre = setup(path, None, 1, layers)
        h = cam(pre["RGB"](part.image), method)
        panel = blend(bgr, full_frame_heatmap(h.cam, part.image.shape[:2], None))
        cv2.drawContours(panel, outline, -1, (255, 255, 255), 1)
        cv2.putText(panel, f"{h.method} {'+'.join(h.layers)}"[:34], (4, 250), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(panel)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{model_name}.png"
    cv2.imwrite(str(target), np.hstack(panels))
    return target


def speed(model_name: str) -> tuple[float, float]:
    """(warm heatmap ÷ compiled forward, cold first request in s)."""
    from core import manifest as mf
    from edge.gradcam.worker import setup
    from edge.tfload import load_model, tf_keras

    path = REPO / "models" / f"{model_name}.json"
    done = threading.Event()
    t = time.perf_counter()
    service = GradcamService(lambda: path, lambda _o: done.set(), threads=1)
    service.request("cold", synth.render(1, 1).image, "RGB", "auto")
    done.wait(300)
    cold = time.perf_counter() - t
    service.stop()
    tf, _ = tf_keras()
    cam, pre = setup(path, None, 1)  # 1 thread, as the worker runs (TF allows setting it once per process)
    x = pre["RGB"](synth.render(1, 2, defect="crack").image)
    model = load_model(mf.resolve(path, mf.load(path).source))
    forward = tf.function(lambda v: model(v, training=False))
    fwd_ms = median_ms(lambda: forward(x[None]), 50)
    cam_ms = median_ms(lambda: cam(x), 50)
    return cam_ms / fwd_ms, cold


def burst_ratio(model_name: str, tmp: Path) -> tuple[float, float, float]:
    """(fps without heatmaps, fps during a burst of 20, their ratio) of a running daemon."""
    from harness.broker import Collector

    broker = Broker(tmp / "broker").start()
    frames = link_into(casting_sample(200), tmp / "frames")
    cfg = write_toml(tmp / "edge.toml", {
        "device": {"id": "unit"}, "mqtt": {"host": "127.0.0.1", "port": broker.port, "prefix": "bench"},
        "camera": {"source": str(frames), "loop": True, "fps": 0},
        "model": {"name": model_name, "models_dir": str(REPO / "models")},
        "alerts": {"on_defect": False, "on_low_confidence": False}, "metrics": {"interval_s": 1},
        "state": {"dir": str(tmp / "state"), "ring_frames": 400}, "gradcam": {"threads": 1}})
    c = Collector(broker.port, "bench/unit/result", "bench/unit/gradcam/+", persistent=False)
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        c.wait(lambda m: len(m) > 50, 60)
        stamp: list[float] = []  # arrival times of everything the listener hears
        orig = c.client.on_message

        def on_message(client: Any, ud: Any, msg: Any) -> None:
            stamp.append(time.time())
            orig(client, ud, msg)

        c.client.on_message = on_message
        time.sleep(1.0)
        n0, t0 = len(stamp), time.time()
        time.sleep(6.0)
        base_fps = (len(stamp) - n0) / (time.time() - t0)
        first = next(json.loads(p)["frame_id"] for t, p, _ in reversed(list(c.messages)) if t.endswith("/result"))
        c.publish("bench/unit/cmd/gradcam", json.dumps({"frame_id": first}))  # the cold start, not measured
        if not c.wait(lambda m: any("/gradcam/" in t for t, _, _ in m), 180):
            raise RuntimeError("the Grad-CAM worker did not answer within 180 s")
        # The burst names frames from after the cold start: the unit keeps only its last 400.
        ids = [json.loads(p)["frame_id"] for t, p, _ in list(c.messages) if t.endswith("/result")][-20:]
        n1, t1, heat0 = len(stamp), time.time(), len([1 for t, _, _ in c.messages if "/gradcam/" in t])
        for fid in ids:
            c.client.publish("bench/unit/cmd/gradcam", json.dumps({"frame_id": fid}), qos=1)
        if not c.wait(lambda m: len([1 for t, _, _ in m if "/gradcam/" in t]) >= heat0 + 20, 300):
            raise RuntimeError("the burst's 20 heatmaps did not all arrive within 300 s")
        burst_fps = (len(stamp) - n1 - 20) / (time.time() - t1)  # results only: the 20 heatmaps are not frames
        return base_fps, burst_fps, burst_fps / base_fps
    finally:
        proc.terminate()
        proc.wait(20)
        c.close()
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--parts", type=int, default=40)
    ap.add_argument("--pictures", type=Path, help="write one picture per model into this folder")
    a = ap.parse_args()
    models = [m for m in ("mobilenetv2", "cnn", "efficientnetb0") if (REPO / "models" / f"{m}.json").is_file()]
    q = {m: quality(m, a.parts) for m in models}
    for m in models if a.pictures else ():
        print(f"wrote {picture(m, a.pictures)}")
    warm_vs_forward, cold = speed(a.model)
    with tempfile.TemporaryDirectory() as tmp:
        base_fps, burst_fps, ratio = burst_ratio(a.model, Path(tmp))
    print(f"{'model':<16}{'heatmap':<9}{'layers':<34}{'method':<11}{'pointing':>9}{'chance':>8}{'deletion':>10}"
          f"{'random':>8}")
    for m, by_kind in q.items():
        for kind, r in by_kind.items():
            print(f"{m:<16}{kind:<9}{r['layers'][:33]:<34}{r['method']:<11}{r['pointing_game']:>9.3f}"
                  f"{r['pointing_chance']:>8.3f}{r['deletion_drop']:>10.3f}{r['random_drop']:>8.3f}")
    print("targets: pointing >= 0.6 with the default heatmap; deletion drop >= 5 x the random drop")
    print(f"\n{a.model}: warm heatmap / compiled forward {warm_vs_forward:.2f}; cold first request {cold:.1f} s; "
          f"daemon fps {base_fps:.1f} without heatmaps, {burst_fps:.1f} during 20 requests "
          f"(ratio {ratio:.2f}, target >= 0.75)")
    figures = ("pointing_game", "pointing_chance", "deletion_drop", "random_drop")
    print(json.dumps({"model": a.model,
                      **{f"{k}_{m}": round(by_kind["default"][k], 4) for m, by_kind in q.items() for k in figures},
                      **{f"{k}_{m}_original": round(by_kind["original"][k], 4) for m, by_kind in q.items()
                         for k in figures},
                      "warm_vs_forward": round(warm_vs_forward, 3), "cold_start_s": round(cold, 2),
                      "fps_ratio_during_burst": round(ratio, 3)}))


if __name__ == "__main__":
    main()
