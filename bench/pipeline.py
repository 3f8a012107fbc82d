"""How close the edge engine comes to the bare interpreter, measured as ratios within one run.

1. engine_vs_invoke: per-frame time of ``Classifier.classify`` on frames already in memory (preprocess + invoke +
   postprocess) ÷ bare ``invoke()`` time, same model, 1 thread. Target <= 1.15.
2. replay_vs_limit: frames/s of the threaded pipeline replaying the casting JPEGs from disk ÷ the limit
   1 / max(decode + preprocess, invoke) measured here. Target >= 0.9.
3. speedup_vs_keras_predict: that throughput ÷ the original app's way (decode, /255, Keras ``model.predict`` per image,
   same images). Target >= 15.
4. peak_rss_mb and tensorflow_imported: a ``defect-edge classify`` process over 500 frames. Target <= 90 MB, False.

Run: ``.venv/bin/python -m bench.pipeline [--model mobilenetv2] [--frames 500]``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.timing import median_ms
from core import manifest as mf
from core.classifier import Classifier
from core.images import read_rgb
from edge.pipeline import Pipeline, Result
from edge.sources.base import Camera
from edge.sources.replay import FolderReplay
from harness import REPO
from harness.data import casting_sample, link_into

RSS_PROBE = """
import sys
from edge.cli import main
rc = main(["classify", sys.argv[1], "--model", sys.argv[2], "--models-dir", sys.argv[3], "--json"])
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print("PROBE", int(hwm) / 1024, "tensorflow" in sys.modules, rc, file=sys.stderr)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--models-dir", type=Path, default=REPO / "models")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--keras-frames", type=int, default=100)
    a = ap.parse_args()
    manifest_path = a.models_dir / f"{a.model}.json"
    paths = casting_sample(a.frames)
    frames = [read_rgb(p) for p in paths[:200]]

    # 1. engine vs bare invoke, 1 thread, frames in memory
    clf = Classifier(manifest_path, num_threads=1)
    it = iter(range(10**9))
    engine_ms = median_ms(lambda: clf.classify(frames[next(it) % len(frames)]), 1000)
    invoke_ms = median_ms(clf.interpreter.invoke, 1000)
    pre_ms = median_ms(lambda: clf.preprocess(frames[next(it) % len(frames)]), 1000)
    decode_ms = median_ms(lambda: read_rgb(paths[next(it) % len(paths)]), 300)

    # 2. threaded replay from disk vs its limit
    pipe = Pipeline(Camera(FolderReplay(paths)), Classifier(manifest_path, num_threads=1), device_id="bench",
                    queue_size=2, drop_when_behind=False)
    count = 0

    def done(_: Result) -> None:
        nonlocal count
        count += 1

    t = time.perf_counter()
    pipe.run(threading.Event(), done)
    replay_fps = count / (time.perf_counter() - t)
    limit_fps = 1e3 / max(decode_ms + pre_ms, invoke_ms)

    # 3. the original app's way: Keras predict per image (imports TensorFlow, so after the edge measurements)
    from edge.tfload import load_model

    m = mf.load(manifest_path)
    keras_model = load_model(mf.resolve(manifest_path, m.source))
    import cv2
    import numpy as np

    def keras_one(p: Path) -> None:
        img = cv2.resize(read_rgb(p), (m.input.width, m.input.height))
        keras_model.predict(img[None].astype(np.float32) / 255.0, verbose=0)

    keras_one(paths[0])
    t = time.perf_counter()
    for p in paths[:a.keras_frames]:
        keras_one(p)
    keras_fps = a.keras_frames / (time.perf_counter() - t)

    # 4. peak RSS of a classify process over the same frames, and proof TensorFlow stays out
    with tempfile.TemporaryDirectory() as tmp:
        frames_dir = link_into(paths, Path(tmp) / "frames")
        proc = subprocess.run([sys.executable, "-c", RSS_PROBE, str(frames_dir), a.model, str(a.models_dir)],
                              capture_output=True, text=True, cwd=REPO, timeout=600)
    probe = next(line for line in proc.stderr.splitlines() if line.startswith("PROBE")).split()
    rss_mb, tf_imported = float(probe[1]), probe[2] == "True"

    result = {
        "engine_vs_invoke": engine_ms / invoke_ms,
        "replay_vs_limit": replay_fps / limit_fps,
        "speedup_vs_keras_predict": replay_fps / keras_fps,
        "peak_rss_mb": rss_mb,
        "tensorflow_imported": tf_imported,
    }
    print(f"model {m.name} ({m.quantization}), {len(paths)} casting JPEGs, 1 inference thread, {clf.runtime.name}")
    print(f"{'measure':<46}{'value':>12}{'target':>10}")
    rows = [
        ("bare invoke() ms", f"{invoke_ms:.3f}", ""),
        ("engine classify() ms (frames in memory)", f"{engine_ms:.3f}", ""),
        ("  preprocess ms / decode ms", f"{pre_ms:.3f} / {decode_ms:.3f}", ""),
        ("1. engine / invoke", f"{result['engine_vs_invoke']:.3f}", "<= 1.15"),
        ("limit fps = 1 / max(decode+pre, invoke)", f"{limit_fps:.1f}", ""),
        ("threaded replay fps", f"{replay_fps:.1f}", ""),
        ("2. replay / limit", f"{result['replay_vs_limit']:.3f}", ">= 0.9"),
        ("Keras predict fps (original app)", f"{keras_fps:.1f}", ""),
        ("3. replay / Keras predict", f"{result['speedup_vs_keras_predict']:.1f}x", ">= 15"),
        (f"4. peak RSS, classify over {len(paths)} frames (MB)", f"{rss_mb:.1f}", "<= 90"),
        ("   tensorflow imported", str(tf_imported), "False"),
    ]
    for name, value, target in rows:
        print(f"{name:<46}{value:>12}{target:>10}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
