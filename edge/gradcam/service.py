"""The daemon's side of Grad-CAM: a worker process started at the first request, restarted when it crashes or
hangs, and stopped after ``idle_timeout_s`` to give its memory (about 700 MB with TensorFlow) back.

Requests are queued and answered one at a time by ``on_done`` with an :class:`Outcome`, ok or not. This module
imports no TensorFlow; the daemon's inference loop never waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.preprocess import Roi

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Outcome:
    frame_id: str
    method: str  # as asked ("auto"), or as computed once the worker answered
    ok: bool
    error: str = ""
    layer: str = ""  # the layers it was computed at, joined with "+" (empty when it failed)
    jpeg: bytes = b""
    p_defect_keras: float | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # queue, start, compute, render
    context: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    frame_id: str
    image: np.ndarray
    frame_order: str
    method: str
    context: dict[str, Any]
    queued: float = field(default_factory=time.perf_counter)


class GradcamService:
    def __init__(self, manifest_path: Callable[[], Path], on_done: Callable[[Outcome], None], *,
                 roi: Roi | None = None, threads: int = 1, nice: int = 10, idle_timeout_s: float = 300.0,
                 request_timeout_s: float = 30.0, alpha: float = 0.45, jpeg_quality: int = 90,
                 max_queue: int = 32, layers: tuple[str, ...] = (), duty_cycle: float = 1.0):
        """``layers``: instead of the manifest's (the original app's layer, say). ``duty_cycle``: the share of the
        time the worker may compute while requests keep coming; after a heatmap that took t seconds the next one
        starts t × (1 / duty_cycle - 1) later. A lone request is never delayed; a burst is spread out, so that
        inference, which is what the line waits for, keeps most of the cores (``nice`` alone does not: the worker
        runs in every gap the inference threads leave, and takes their caches)."""
        self._manifest_path = manifest_path
        self._on_done = on_done
        self.roi = (roi.x, roi.y, roi.width, roi.height) if roi else None
        self.threads, self.nice, self.alpha, self.jpeg_quality = threads, nice, alpha, jpeg_quality
        self.idle_timeout_s, self.request_timeout_s = idle_timeout_s, request_timeout_s
        self.layers = layers
        self.duty_cycle = duty_cycle
        self._next_start = 0.0  # monotonic time before which the next heatmap waits (the duty cycle's rest)
        self._stopping = threading.Event()
        self._jobs: queue.Queue[_Job | None] = queue.Queue(max_queue)
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._requests: Any = None
        self._replies: Any = None
        self._loaded: Path | None = None
        self._last_used = 0.0
        self.state = "stopped"
        self.counts = {"done": 0, "errors": 0, "restarts": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gradcam", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def request(self, frame_id: str, image: np.ndarray, frame_order: str, method: str,
                context: dict[str, Any] | None = None) -> bool:
        """Queue a heatmap; False when the queue is full (the caller says so)."""
        try:
            self._jobs.put_nowait(_Job(frame_id, image, frame_order, method, context or {}))
            return True
        except queue.Full:
            return False

    def stop(self) -> None:
        """Within the daemon's stop budget: the worker is killed if it does not leave at once."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._jobs.put_nowait(None)
        self._stop_worker()
        self._thread.join(timeout=1)

    # -- the service thread ------------------------------------------------------------------------------------
    def _start_worker(self, path: Path) -> str | None:
        """Start the worker for ``path``; an error message when it cannot serve."""
        from edge.gradcam.worker import worker_main

        self.state = "starting"
        self._requests, self._replies = self._ctx.Queue(), self._ctx.Queue()
        self._proc = self._ctx.Process(target=worker_main, name="defect-edge-gradcam", daemon=True,
                                       args=(self._requests, self._replies, str(path), self.roi, self.threads,
                                             self.alpha, self.jpeg_quality, os.getpid(), self.nice, self.layers))
        self._proc.start()
        try:
            kind, *rest = self._replies.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            self._stop_worker()
            return f"the Grad-CAM worker did not start within {STARTUP_TIMEOUT_S:.0f} s"
        if kind != "ready":
            self._stop_worker()
            return str(rest[0])
        seconds, niceness = rest
        log.info("gradcam worker %d ready in %.1f s for %s (nice %d)", self._proc.pid, seconds, path.name, niceness)
        if niceness < self.nice:
            log.warning("gradcam worker runs at nice %d, not %d: heatmaps compete with inference for CPU (a "
                        "SystemCallFilter= without setpriority?)", niceness, self.nice)
        self._loaded, self.state = path, "ready"
        return None

    def _stop_worker(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            if proc.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    self._requests.put(None)
                    proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        self._loaded, self.state = None, "stopped"

    def _fail(self, job: _Job, error: str, timings: dict[str, float]) -> None:
        self.counts["errors"] += 1
        self._on_done(Outcome(job.frame_id, job.method, False, error=error, timings_ms=timings, context=job.context))

    def _serve(self, job: _Job) -> float:
        """Answer ``job``; the seconds the worker computed for it (0 when it did not)."""
        path = self._manifest_path()
        started = time.perf_counter()
        if self._proc is not None and (not self._proc.is_alive() or self._loaded != path):
            if not self._proc.is_alive():
                self.counts["restarts"] += 1
                log.warning("gradcam worker died (exit %s); starting a new one", self._proc.exitcode)
            self._stop_worker()  # crashed, or the unit switched models
        if self._proc is None:
            error = self._start_worker(path)
            if error:
                self._fail(job, error, {})
                return 0.0
        start_ms = (time.perf_counter() - started) * 1e3
        timings = {"queue": (started - job.queued) * 1e3, "start": start_ms}
        asked = time.perf_counter()
        self._requests.put((job.frame_id, job.image, job.frame_order, job.method))
        deadline = time.monotonic() + self.request_timeout_s
        while True:  # wait for the answer, but notice a worker that died meanwhile without waiting for the timeout
            try:
                reply = self._replies.get(timeout=0.5)
                break
            except queue.Empty:
                proc = self._proc
                if proc is None or not proc.is_alive():
                    code = proc.exitcode if proc is not None else None
                    self.counts["restarts"] += 1
                    self._stop_worker()
                    self._fail(job, f"the Grad-CAM worker crashed (exit {code}); the next request restarts it",
                               timings)
                    return 0.0
                if time.monotonic() > deadline:
                    self.counts["restarts"] += 1
                    self._stop_worker()
                    self._fail(job, f"the Grad-CAM worker hung (no answer in {self.request_timeout_s:.0f} s); "
                               "stopped, the next request restarts it", timings)
                    return 0.0
        if reply[0] == "done":
            _, _, jpeg, p_keras, compute_ms, render_ms, method, layer = reply
            self.counts["done"] += 1
            self._on_done(Outcome(job.frame_id, method, True, layer=layer, jpeg=jpeg, p_defect_keras=p_keras,
                                  timings_ms={**timings, "compute": compute_ms, "render": render_ms},
                                  context=job.context))
        else:
            self._fail(job, str(reply[-1]), timings)
        return time.perf_counter() - asked

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=1.0)
            except queue.Empty:
                if self._proc is not None and time.monotonic() - self._last_used > self.idle_timeout_s:
                    log.info("gradcam worker idle for %.0f s: stopping it", self.idle_timeout_s)
                    self._stop_worker()
                continue
            if job is None:
                return
            rest = self._next_start - time.monotonic()
            if rest > 0 and self._stopping.wait(rest):
                return
            try:
                busy = self._serve(job)
                self._next_start = time.monotonic() + busy * (1 / self.duty_cycle - 1)
            except Exception as e:  # the service thread must outlive any single request
                log.exception("gradcam request failed")
                self._fail(job, f"Grad-CAM failed: {e}", {})
            self._last_used = time.monotonic()
