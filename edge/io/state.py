"""What the unit tells the line, one copy for every wire (:class:`LineState`), and what a wire is
(:class:`LineInterface`). The wires import this module, and the package's factory imports the wires: nothing here
imports them back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from contract.payloads import TriggerSource
from edge.parts import Part, PartVerdict

Trigger = Callable[[TriggerSource], Part]
UnitState = Literal["starting", "ready", "not_ready", "stopping"]
STATE_CODES: dict[UnitState, int] = {"starting": 0, "ready": 1, "not_ready": 2, "stopping": 3}
VERDICT_CODES = {"none": 0, "ok": 1, "ng": 2, "unsure": 3, "missed": 4}
STALLED_AFTER_S = 2.0  # no heartbeat from the inference loop this long: the unit cannot inspect
REFUSALS_SAID_EVERY_S = 10.0  # a client sending garbage in a loop gets one line per this, with the count since

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One consistent view for a PLC: a verdict's fields never mix two parts."""

    heartbeat: int
    state: UnitState
    seq: int
    part_id: str
    verdict: str
    p_defect: float
    trigger_to_verdict_ms: float
    missed: int
    pending: int
    refused: int
    duplicates: int


class LineState:
    """What the unit tells the line, updated by the daemon and read by every interface, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats = 0
        self._last_beat = 0.0
        self._state: UnitState = "starting"
        self._verdict: PartVerdict | None = None
        self._missed = 0
        self.pending: Callable[[], int] = lambda: 0  # the pipeline's waiting triggers, set by the daemon
        self.duplicates: Callable[[], int] = lambda: 0  # triggers debounced as the part before, set by the daemon
        self.refused = 0  # requests refused from the line (garbage, read-only registers, other unit ids)
        self._said_at = -REFUSALS_SAID_EVERY_S
        self._unsaid = 0

    def beat(self, ready: bool) -> None:
        """From the inference loop: alive, and whether it can inspect (camera streaming, model loaded)."""
        with self._lock:
            self._beats += 1
            self._last_beat = time.monotonic()
            if self._state != "stopping":
                self._state = "ready" if ready else "not_ready"

    def stopping(self) -> None:
        with self._lock:
            self._state = "stopping"

    def decided(self, v: PartVerdict) -> None:
        with self._lock:
            self._verdict = v
            self._missed += v.verdict == "missed"

    def refuse(self, why: str) -> None:
        """Count a request refused from the line, and say why: at once, then at most one line every
        :data:`REFUSALS_SAID_EVERY_S` with how many were not said (a PLC misconfigured in a loop must not flood
        the journal)."""
        with self._lock:
            self.refused += 1
            now = time.monotonic()
            if now - self._said_at < REFUSALS_SAID_EVERY_S:
                self._unsaid += 1
                return
            unsaid, self._unsaid, self._said_at = self._unsaid, 0, now
        log.warning("%s%s", why, f" ({unsaid} more refused before this, not said)" if unsaid else "")

    def state(self) -> UnitState:
        with self._lock:
            stalled = self._state == "ready" and time.monotonic() - self._last_beat > STALLED_AFTER_S
            return "not_ready" if stalled else self._state

    def snapshot(self) -> Snapshot:
        state = self.state()
        with self._lock:
            v = self._verdict
            p = v.prediction.p_defect if v is not None and v.prediction is not None else 0.0
            return Snapshot(heartbeat=self._beats, state=state, seq=v.part.seq if v else 0,
                            part_id=v.part.part_id if v else "", verdict=v.verdict if v else "none", p_defect=p,
                            trigger_to_verdict_ms=v.trigger_to_verdict_ms if v else 0.0, missed=self._missed,
                            pending=self.pending(), refused=self.refused, duplicates=self.duplicates())


class LineInterface(Protocol):
    """One of the line's wires. ``start`` may raise :class:`OSError` (a port taken, a pin busy): the daemon says
    so in one line and runs without it."""

    name: str

    def start(self, trigger: Trigger) -> None: ...

    def decided(self, v: PartVerdict) -> None: ...

    def stop(self) -> None: ...
