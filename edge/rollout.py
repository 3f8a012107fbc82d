"""The unit's side of a rollout: a release offered to it becomes a candidate, runs in shadow, is promoted, and rolls
itself back when it goes wrong.

States (in the retained ``status`` as ``release``): ``offered`` → ``downloading`` → ``verified`` → ``shadow`` →
``promoted``; or ``failed`` (it could not be fetched, trusted, loaded or proven: the active model was never
touched), ``rejected`` (an engineer said no), ``rolled_back`` (with the reason: the engineer's word, or what the
unit saw). Each change is published at once and kept in the history.

- ``cmd/release {"name", "version"}`` fetches the release (:class:`edge.releases.Releases`: TUF-verified), loads it
  from where it was fetched (the models folder is not touched yet) on one inference thread, re-proves its parity on
  this unit and starts its shadow (:class:`edge.shadow.Shadow`).
- ``cmd/promote`` installs it into the models folder (the files it replaces kept aside), loads it from there on the
  unit's threads (parity proven again) and swaps it in; the model it
  replaced stays loaded for the next ``watch_results`` results, which are watched: frames it fails on, an inference
  p95 beyond ``latency_factor`` times the shadow's, or a rate of defective calls further than
  ``ng_rate_delta`` from the shadow's each roll it back at once, in memory, and then on disk.
- ``cmd/rollback`` does so by hand, ``cmd/reject`` drops a candidate in shadow.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import manifest as mf
from core.classifier import Classifier, Prediction
from core.preprocess import Roi
from edge.errors import USER_ERRORS
from edge.modelstore import add, files_of
from edge.shadow import Offered, Shadow
from edge.variants import Timed, chosen, table_path

if TYPE_CHECKING:  # the release client (TUF, cryptography: 10 MB) is loaded only by a unit that takes releases
    from edge.releases import Fetched, Releases

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """A rollout command that does not apply now; the message says why (the reply's error)."""


@dataclass(frozen=True)
class Watch:
    watch_results: int = 200
    latency_factor: float = 2.0
    latency_floor_ms: float = 5.0  # a slowdown smaller than this never counts (a shared CPU's noise)
    ng_rate_delta: float = 0.2
    min_results: int = 30  # results before the NG rate is compared


class Rollout:
    def __init__(self, releases: Releases | None, models_dir: Path, *, load: Callable[[Path, int | None], Classifier],
                 swap: Callable[[Classifier], Classifier], share: float,
                 watch: Watch, changed: Callable[[], None], event: Callable[..., None],
                 on_disagree: Callable[[Offered, Prediction], None], frame_errors: Callable[[], int],
                 choose: Callable[[Path], list[Timed] | None] = lambda _: None):
        self.releases, self.models_dir = releases, models_dir
        self._choose = choose
        self._load, self._swap = load, swap
        self.share, self.watch = share, watch
        self._changed, self._event, self._on_disagree = changed, event, on_disagree
        self._frame_errors = frame_errors
        self._errors_at = 0  # frame errors when the promotion happened
        self._aside_path: Path | None = None
        self.lock = threading.Lock()
        self.state: str | None = None
        self.reason = ""
        self.name = ""
        self.version: int | None = None
        self.since = 0.0
        self.shadow: Shadow | None = None
        self.shadow_report: dict[str, Any] | None = None
        self.fetched: Fetched | None = None
        self.measured: list[Timed] | None = None  # the release's variants as timed here (None: it has one)
        self.previous: Classifier | None = None  # the model a promotion replaced, loaded while the new one is watched
        self._watched: list[tuple[float, bool]] = []  # (inference ms, defective) since the promotion

    # -- state ---------------------------------------------------------------------------------------------------
    def _set(self, state: str, reason: str = "") -> None:
        self.state, self.reason, self.since = state, reason, time.time()
        self._event("release", model=self.name, version=self.version, state=state, reason=reason)
        (log.warning if state in ("failed", "rolled_back") else log.info)(
            "release %s %s: %s%s", self.name, self.version, state, f": {reason}" if reason else "")
        self._changed()

    def status(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        shadow = self.shadow.report() if self.shadow else self.shadow_report
        return {"name": self.name, "version": self.version, "state": self.state, "since": round(self.since, 3),
                **({"reason": self.reason} if self.reason else {}), **({"shadow": shadow} if shadow else {}),
                **({"watching": len(self._watched)} if self.previous is not None else {}),
                **({"variants": [asdict(t) for t in self.measured]} if self.measured else {})}

    # -- commands ------------------------------------------------------------------------------------------------
    def offer(self, name: str, version: int | None) -> dict[str, Any]:
        if self.releases is None:
            raise RolloutError("this unit has no release repository (releases.url in edge.toml)")
        with self.lock:
            if self.state in ("offered", "downloading", "verified"):
                raise RolloutError(f"release {self.name} {self.version} is {self.state}; wait for it")
            self._stop_shadow()
            self.name, self.version, self.fetched, self.shadow_report = name, version, None, None
            self.measured = None
            self._set("offered")
        threading.Thread(target=self._prepare, name="release", daemon=True).start()
        return {"name": name, "version": version, "state": "offered"}

    def _prepare(self) -> None:
        assert self.releases is not None
        try:
            self._set("downloading")
            fetched = self.releases.fetch(self.name, self.version)
            self.version = fetched.version
            # Parity re-proven on this unit, or refused; on one thread: the shadow is background work, and on every
            # core it cost the line 23 % of its rate where one thread cost 13 % (bench/rollout.py).
            # A release with variants: the one this unit would run, timed here (edge/variants.py), is the candidate.
            measured = self._choose(fetched.manifest)
            candidate = self._load(chosen(measured, fetched.manifest)[1] if measured else fetched.manifest, 1)
        except USER_ERRORS as e:
            with self.lock:
                self._set("failed", str(e))
            return
        except Exception as e:  # anything else is this candidate's failure, never the unit's
            log.exception("release %s: preparing failed", self.name)
            with self.lock:
                self._set("failed", f"{type(e).__name__}: {e}")
            return
        with self.lock:
            if self.state != "downloading":
                return  # rejected meanwhile
            self.fetched, self.measured = fetched, measured
            self._set("verified")
            self.shadow = Shadow(candidate, self.share, self._on_disagree) if self.share > 0 else None
            self._set("shadow")

    def _stop_shadow(self) -> None:
        if self.shadow is not None:
            self.shadow.stop()
            self.shadow_report = self.shadow.report()
            self.shadow = None

    def reject(self) -> dict[str, Any]:
        with self.lock:
            if self.state not in ("offered", "downloading", "verified", "shadow"):
                raise RolloutError("no candidate to reject")
            self._stop_shadow()
            self.fetched = None
            self._set("rejected", "by command")
        return {"name": self.name, "version": self.version, "state": "rejected"}

    def promote(self) -> dict[str, Any]:
        with self.lock:
            if self.state != "shadow" or self.fetched is None:
                raise RolloutError(f"nothing to promote: the release is {self.state or 'none'}")
            self._stop_shadow()
            name = self.fetched.name
            aside = self._aside(name)
            try:
                add(self.fetched.source, self.models_dir, measured=self.measured)
                active = self._load(self.models_dir / f"{name}.json", None)  # as installed, on the unit's threads
            except USER_ERRORS as e:
                self._set("failed", f"not installed: {e}")
                raise RolloutError(f"not installed: {e}") from None
            self._errors_at = self._frame_errors()
            self.previous = self._swap(active)
            self._watched = []
            self._aside_path = aside
            self._set("promoted")
        return {"name": name, "version": self.version, "state": "promoted",
                "previous": self.previous.name if self.previous else None}

    def _aside(self, name: str) -> Path | None:
        """The installed model's files the promotion replaces, copied aside for a rollback."""
        current = self.models_dir / f"{name}.json"
        if not current.is_file() or self.releases is None:
            return None
        aside = self.releases.state / "models" / name / ".before"
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir(parents=True)
        for f in [*files_of(current, mf.load(current)), table_path(self.models_dir, name)]:
            with contextlib.suppress(FileNotFoundError):  # a model installed without a table of variants
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, aside / f.name)
        return aside / name

    def rollback(self, reason: str = "by command") -> dict[str, Any]:
        with self.lock:
            if self.state != "promoted" or self.previous is None:
                raise RolloutError(f"nothing to roll back: the release is {self.state or 'none'}"
                                   + (" and its predecessor is no longer loaded" if self.state == "promoted" else ""))
            t0 = time.perf_counter()
            self._swap(self.previous)  # at once, in memory: the next frame is judged by the old model
            swapped_ms = (time.perf_counter() - t0) * 1e3
            aside = self._aside_path
            if aside is not None:
                try:
                    add(aside, self.models_dir)  # and on disk, so a restart keeps it
                except USER_ERRORS as e:
                    log.error("rollback: the previous model's files were not put back: %s", e)
            self.previous = None
            self._set("rolled_back", reason)
        return {"name": self.name, "version": self.version, "state": "rolled_back", "swap_ms": round(swapped_ms, 3)}

    def stop(self) -> None:
        with self.lock:
            self._stop_shadow()

    # -- the inference loop ----------------------------------------------------------------------------------
    def on_result(self, frame_id: str, image: Any, crop: Roi | None, p: Prediction) -> None:
        """Each result: offered to the shadow; after a promotion, watched."""
        shadow = self.shadow
        if shadow is not None:
            shadow.offer(frame_id, image, crop, p)
            return
        if self.previous is None:
            return
        self._watched.append((p.timings_ms.get("inference", 0.0), p.defective))
        self.check()

    def check(self) -> None:
        """After a promotion (each result, and the housekeeping beat: a model failing every frame makes none):
        roll back on a departure, or let the old model go once the new one has judged enough."""
        if self.previous is None:
            return
        why = self._departure()
        if why:
            with contextlib.suppress(RolloutError):
                self.rollback(why)
        elif len(self._watched) >= self.watch.watch_results:
            with self.lock:
                self.previous = None  # it judged enough: the old model is let go
                self._changed()

    def _departure(self) -> str:
        failed = self._frame_errors() - self._errors_at
        if failed > 0:
            return f"the promoted model failed on {failed} frame(s)"
        report = self.shadow_report or {}
        w = self.watch
        lat = sorted(x for x, _ in self._watched)
        shadow_p95 = (report.get("inference_ms") or {}).get("p95") or 0.0
        if len(lat) >= w.min_results and shadow_p95:
            p95 = lat[int(0.95 * (len(lat) - 1))]
            if p95 > max(shadow_p95 * w.latency_factor, shadow_p95 + w.latency_floor_ms):
                return f"inference p95 {p95:.1f} ms, beyond {w.latency_factor}x the shadow's {shadow_p95:.1f} ms"
        expected = report.get("ng_rate")
        if expected is not None and len(self._watched) >= w.min_results:
            rate = sum(d for _, d in self._watched) / len(self._watched)
            if abs(rate - expected) > w.ng_rate_delta:
                return (f"defective calls {rate:.0%} of {len(self._watched)} results, against {expected:.0%} in its "
                        f"shadow run")
        return ""
