"""The Grad-CAM worker process: TensorFlow, the Keras model and one compiled gradient function, loaded once.

It runs in its own process (multiprocessing "spawn"), so the daemon never imports TensorFlow and a crash here cannot
touch inference. Inference keeps its cores: TensorFlow's threads are limited (default 1) and the process runs at a
lower CPU priority (nice 10 by default), so a burst of heatmaps waits for CPU rather than slowing the line. Messages:
requests ``(request_id, frame, frame_order, method)`` or None to stop; replies ``("ready", seconds, nice)``,
``("fatal", message)``, ``("done", request_id, jpeg, p_defect, compute_ms, render_ms, method, layers)`` (the
method "auto" resolved, the layers joined with "+"), ``("error", request_id, msg)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import time
from collections.abc import Sequence
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np

INSTALL_HINT = "TensorFlow is not installed on this unit: install the gradcam extra (pip install " \
               "'defect-inspection[gradcam]')"


def setup(manifest_path: Path, roi: tuple[int, int, int, int] | None, threads: int,
          layers: Sequence[str] = ()) -> tuple[Any, Any]:
    """The compiled heatmap function and the preprocessors per frame order. ``layers`` overrides the manifest's
    (e.g. the original app's ``Conv_1``, kept selectable); the method "auto" stays the manifest's."""
    from edge.tfload import load_model, tf_keras

    try:
        tf, _ = tf_keras()  # quietly: TensorFlow's start-up notices would land in the unit's journal
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    # TensorFlow takes these only before its first operation: always so in the worker process; a one-off CLI or
    # a test that already ran TensorFlow keeps the setting it has.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    from core import manifest as mf
    from core.preprocess import Preprocessor, Roi
    from edge.gradcam.cam import GradCam

    m = mf.load(manifest_path)
    if m.gradcam is None:
        raise RuntimeError(f"{manifest_path.name} has no Grad-CAM layer: it was converted from a SavedModel, whose "
                           "layers Keras cannot reach; convert the model's .keras or .h5 file to have heatmaps")
    source = mf.resolve(manifest_path, m.source)
    if not source.is_file():
        raise RuntimeError(f"the Keras model {source} named by {manifest_path.name} is missing (Grad-CAM needs it)")
    if mf.sha256_file(source) != m.source.sha256:
        raise RuntimeError(f"{source.name} does not match the sha256 in {manifest_path.name} (a different model?)")
    model = load_model(source)
    cam = GradCam(model, list(layers) or m.gradcam.layers, method=m.gradcam.method,
                  defect_index=m.output.defect_index, p_is_good=m.output.positive == "good")
    spec = m.input.model_copy(update={"dtype": "float32", "scale": 0.0, "zero_point": 0})
    region = Roi(*roi) if roi else None
    pre = {order: Preprocessor(spec, roi=region, frame_order=order) for order in ("RGB", "BGR")}
    cam(pre["RGB"](np.zeros((spec.height, spec.width, 3), np.uint8)))  # trace and compile once, before "ready"
    return cam, pre


def _die_with_parent() -> None:
    """A daemon killed with SIGKILL cannot stop its worker: ask the kernel to (Linux), and poll as a fallback."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _lower_priority(nice: int) -> int:
    """Lower this process's CPU priority; the niceness it has afterwards (the daemon reports a shortfall)."""
    with contextlib.suppress(OSError):  # e.g. EPERM from a unit's syscall filter: the daemon logs what it got
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    return os.getpriority(os.PRIO_PROCESS, 0)


def worker_main(requests: Queue[Any], replies: Queue[Any], manifest_path: str, roi: tuple[int, int, int, int] | None,
                threads: int, alpha: float, jpeg_quality: int, parent: int, nice: int,
                layers: Sequence[str] = ()) -> None:
    """``parent`` is the daemon's pid, passed in: read here, a parent that died during the spawn would read as 1."""
    _die_with_parent()
    if os.getppid() != parent:
        return  # the daemon died before the kernel was asked to take us with it
    niceness = _lower_priority(nice)
    t0 = time.perf_counter()
    try:
        cam, pre = setup(Path(manifest_path), roi, threads, layers)
    except Exception as e:  # one line back to the daemon, whatever went wrong
        replies.put(("fatal", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
        return
    import cv2

    from core.preprocess import Roi
    from edge.gradcam.overlay import blend, encode, full_frame_heatmap

    region = Roi(*roi) if roi else None
    replies.put(("ready", time.perf_counter() - t0, niceness))
    while True:
        try:
            req = requests.get(timeout=5.0)
        except queue.Empty:
            if os.getppid() != parent:
                return  # orphaned
            continue
        if req is None:
            return
        request_id, frame, order, method = req
        try:
            t1 = time.perf_counter()
            heat = cam(pre[order](frame), method)
            t2 = time.perf_counter()
            bgr = frame if order == "BGR" else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            jpeg = encode(blend(bgr, full_frame_heatmap(heat.cam, frame.shape[:2], region), alpha=alpha),
                          jpeg_quality=jpeg_quality)
            t3 = time.perf_counter()
            replies.put(("done", request_id, jpeg, heat.p_defect, (t2 - t1) * 1e3, (t3 - t2) * 1e3, heat.method,
                         "+".join(heat.layers)))
        except Exception as e:
            replies.put(("error", request_id, f"Grad-CAM failed: {e}"[:300]))
