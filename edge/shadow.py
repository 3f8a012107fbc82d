"""A candidate model judging a share of the live frames beside the active one, never deciding anything.

The inference loop offers each result (:meth:`Shadow.offer`, a few microseconds); a share of them (``share``, spread
evenly, not random) go to a thread of their own at a lower CPU priority (nice 10), which runs the candidate on the
same pixels and the same crop and compares: the two models' labels, the difference of their p_defect, the candidate's
own latency and out-of-distribution score, its rate of defective calls.

The thread works at most ``duty_cycle`` of one core (a quarter: an eighth of a two-core unit, whatever the line's
rate). A frame that arrives while it is busy or resting is skipped and counted: the shadow takes what the line
leaves, and a fast line gets a smaller share compared than asked (``compared`` against ``offered`` says how much).
Frames where the two disagree are handed to ``on_disagree`` (the daemon sends their snapshot to the console's review
queue), so the reviewed truth of exactly the calls that would change can decide the promotion.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.classifier import Classifier, Prediction
from core.preprocess import FrameError, Roi

log = logging.getLogger(__name__)

SHADOW_NICE = 10
KEPT = 2000  # the last comparisons the figures are computed over


@dataclass(frozen=True)
class Offered:
    frame_id: str
    image: np.ndarray
    crop: Roi | None
    active: Prediction


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


class Shadow:
    def __init__(self, candidate: Classifier, share: float, on_disagree: Callable[[Offered, Prediction], None], *,
                 duty_cycle: float = 0.25):
        self.candidate = candidate
        self.share = share
        self.duty_cycle = duty_cycle
        self.on_disagree = on_disagree
        self.offered = 0
        self.skipped = 0  # sampled while the shadow thread was still busy
        self.errors = 0
        self.last_error = ""
        self._credit = 0.0
        self._slot: Offered | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._compared: deque[tuple[bool, float, float, float | None, bool]] = deque(maxlen=KEPT)
        self.disagreements: deque[str] = deque(maxlen=20)
        self.compared = 0
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def offer(self, frame_id: str, image: np.ndarray, crop: Roi | None, active: Prediction) -> None:
        """Inference loop: take this frame if it is the share's turn and the shadow is free."""
        self.offered += 1
        self._credit += self.share
        if self._credit < 1.0:
            return
        self._credit -= 1.0
        with self._cond:
            if self._slot is not None:
                self.skipped += 1
                return
            self._slot = Offered(frame_id, image, crop, active)
            self._cond.notify()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICE)  # this thread only (Linux)
        except OSError as e:
            log.warning("shadow: cannot lower its priority: %s", e)
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._slot = self._slot, None
            assert item is not None
            t0 = time.perf_counter()
            try:
                p = self.candidate.classify(item.image, box=item.crop)
            except (FrameError, ValueError, RuntimeError) as e:
                self.errors += 1
                self.last_error = str(e)[:200]
                continue
            finally:  # rest as long as it worked, and more: at most ``duty_cycle`` of one core, however fast the line
                busy = time.perf_counter() - t0
                with self._cond:
                    self._cond.wait_for(lambda: self._stop, busy * (1.0 / self.duty_cycle - 1.0))
            agree = p.defective == item.active.defective
            self._compared.append((agree, p.p_defect - item.active.p_defect, p.timings_ms.get("inference", 0.0),
                                   p.ood, p.defective))
            self.compared += 1
            if not agree:
                self.disagreements.append(item.frame_id)
                try:
                    self.on_disagree(item, p)
                except Exception:  # reporting a disagreement must not end the shadow
                    log.exception("shadow: reporting a disagreement failed")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    @property
    def ng_rate(self) -> float | None:
        rows = list(self._compared)
        return sum(r[4] for r in rows) / len(rows) if rows else None

    def inference_p95_ms(self) -> float:
        return _pct([r[2] for r in self._compared], 95)

    def report(self) -> dict[str, Any]:
        """What the shadow run measured, for the status and the console."""
        rows = list(self._compared)
        dp = [r[1] for r in rows]
        lat = [r[2] for r in rows]
        ood = [r[3] for r in rows if r[3] is not None]
        ng = self.ng_rate
        return {
            "share": self.share, "offered": self.offered, "compared": self.compared, "skipped_busy": self.skipped,
            "errors": self.errors, **({"last_error": self.last_error} if self.last_error else {}),
            "agreement": round(sum(r[0] for r in rows) / len(rows), 4) if rows else None,
            "dp": {"mean": round(float(np.mean(dp)), 4) if dp else None,
                   "p5": round(_pct(dp, 5), 4), "p50": round(_pct(dp, 50), 4), "p95": round(_pct(dp, 95), 4),
                   "max_abs": round(max((abs(x) for x in dp), default=0.0), 4)},
            "inference_ms": {"p50": round(_pct(lat, 50), 3), "p95": round(_pct(lat, 95), 3)},
            "ood": {"mean": round(float(np.mean(ood)), 4), "unfamiliar": sum(
                1 for x in ood if self.candidate.ood_threshold is not None and x > self.candidate.ood_threshold)}
            if ood else None,
            "ng_rate": round(ng, 4) if ng is not None else None,
            "disagreements": list(self.disagreements),
        }
