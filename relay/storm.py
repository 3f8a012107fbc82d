"""From accepted alerts to outgoing mails and notifications: routing, hours, evidence wait, cooldown, digests and
escalation.

For each (device, kind): the first alert goes out on its own, with its snapshot, frame and heatmap if they arrive
within ``evidence_wait_s``. Alerts that come within ``cooldown_s`` of that mail are collected into one digest, sent
when its window of ``digest_window_s`` closes: a line stopping on a fault makes a handful of mails, not a thousand,
and every alert is counted in one of them. An alert is marked in the same transaction that queues the mail carrying
it, so a restart can neither lose it nor mail it twice; alerts of a digest still open at a restart are simply
collected again.

A route tells its people only within its ``hours`` (the plant's time); an alert no route takes at that hour is
counted (``alerts_out_of_hours``) and stays in the console. An alert sent on its own to a route with
``escalate_after_min`` is scheduled, in the same transaction, to go to the route's escalation recipients unless the
console reviews its frame first (a camera gone: unless it comes back); digested alerts never escalate (the storm's
first mail does, and one escalation per storm is the point).
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from relay import mailer, notify
from relay.config import RelayConfig, Route
from relay.queue import Escalation, Store
from relay.render import Renderer

ESCALATING = ("defect", "low_confidence", "camera_offline")  # what someone can act on, and say they did


@dataclass
class _Digest:
    opened: float
    alerts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Audience:
    """Everyone one alert goes to now: mail recipients, notification URLs, escalations (all without repeats)."""

    recipients: list[str]
    notify: list[str]
    escalations: list[Escalation]

    def __bool__(self) -> bool:
        return bool(self.recipients or self.notify)


def in_hours(windows: list[str], clock: str) -> bool:
    """``clock`` (HH:MM) inside any of the windows ("06:00-14:00"; "22:00-06:00" runs over midnight)."""
    if not windows:
        return True
    for w in windows:
        start, end = w.split("-")
        if (start <= clock < end) if start < end else (clock >= start or clock < end):
            return True
    return False


class Router:
    def __init__(self, cfg: RelayConfig):
        self.cfg = cfg
        self.zone = ZoneInfo(cfg.time_zone) if cfg.time_zone else None

    def routes(self, device_id: str, kind: str) -> list[Route]:
        return [r for r in self.cfg.routes
                if kind in r.kinds and any(fnmatch.fnmatchcase(device_id, pattern) for pattern in r.devices)]

    def audience(self, device_id: str, kind: str, now: float) -> Audience:
        clock = f"{datetime.fromtimestamp(now, timezone.utc).astimezone(self.zone):%H:%M}"
        recipients: dict[str, None] = {}
        urls: dict[str, None] = {}
        escalations: dict[Escalation, None] = {}
        for r in self.routes(device_id, kind):
            if not in_hours(r.hours, clock):
                continue
            recipients.update(dict.fromkeys(r.recipients))
            urls.update(dict.fromkeys(r.notify))
            if r.escalate_after_min and kind in ESCALATING:
                escalations[Escalation(r.escalate_after_min, tuple(r.escalate_to), tuple(r.escalate_notify))] = None
        return Audience(list(recipients), list(urls), list(escalations))


class Scheduler:
    def __init__(self, cfg: RelayConfig, store: Store, renderer: Renderer):
        self.cfg = cfg
        self.store = store
        self.render = renderer
        self.router = Router(cfg)
        self._last_sent: dict[tuple[str, str], float] = {}
        self._digests: dict[tuple[str, str], _Digest] = {}
        self._collected: set[str] = set()  # dedup keys waiting in an open digest

    def _ready(self, alert: dict[str, Any], now: float) -> bool:
        if not alert["frame_id"] or now - alert["received"] >= self.cfg.delivery.evidence_wait_s:
            return True
        return {"snapshot", "gradcam"} <= set(self.store.evidence(alert["frame_id"]))

    def _items(self, alert: dict[str, Any], recipients: list[str] | tuple[str, ...], urls: list[str] | tuple[str, ...],
               escalated_after_min: float | None = None) -> list[tuple[str, str, bytes]]:
        """One alert's mail and notifications, composed now and kept in the queue as sent."""
        a = {**json.loads(alert["payload"]), "received": alert["received"]}
        evidence = self.store.evidence(alert["frame_id"])
        items = [("smtp", ",".join(recipients),
                  mailer.alert_mail(self.cfg, self.render, a, evidence, list(recipients), escalated_after_min))] \
            if recipients else []
        if urls:
            title, text = self.render.notification(a, escalated_after_min)
            picture = evidence.get("snapshot")
            body = notify.body(title, text, picture, f"{alert['frame_id'] or 'alert'}.jpg")
            items += [("apprise", url, body) for url in urls]
        return items

    def _send_digest(self, key: tuple[str, str], digest: _Digest, now: float) -> None:
        device_id, kind = key
        who = self.router.audience(device_id, kind, now)
        thumbs: list[tuple[str, bytes]] = []
        for a in digest.alerts:
            if len(thumbs) >= self.cfg.storm.thumbnails:
                break
            snap = self.store.evidence(a["frame_id"]).get("snapshot")
            if snap:
                thumbs.append((a["frame_id"], mailer.thumbnail(snap)))
        alerts = [{**json.loads(a["payload"]), "received": a["received"]} for a in digest.alerts]
        items = [("smtp", ",".join(who.recipients),
                  mailer.digest_mail(self.cfg, self.render, device_id, kind, alerts, thumbs, who.recipients))] \
            if who.recipients else []
        if who.notify:
            r = self.render.digest(device_id, kind, alerts, [])
            body = notify.body(r.subject, r.text, thumbs[0][1] if thumbs else None, "digest.jpg")
            items += [("apprise", url, body) for url in who.notify]
        keys = [a["dedup_key"] for a in digest.alerts]
        self.store.enqueue(keys, "digested" if items else "out_of_hours", items)
        if not items:
            self.store.count("alerts_out_of_hours", len(keys))
        self._collected.difference_update(keys)

    def _escalate(self, now: float) -> None:
        for alert, e, handled in self.store.due_escalations(now):
            if handled:
                self.store.escalated(alert["dedup_key"], e, "handled", [])
                self.store.count("escalations_handled")
                continue
            self.store.escalated(alert["dedup_key"], e, "sent", self._items(alert, e.recipients, e.notify,
                                                                            e.after_min))
            self.store.count("escalations_sent")

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for alert in self.store.new_alerts():
            if alert["dedup_key"] in self._collected or not self._ready(alert, now):
                continue
            key = (alert["device_id"], alert["kind"])
            if not self.router.routes(*key):
                self.store.mark([alert["dedup_key"]], "unrouted")
                self.store.count("alerts_unrouted")
                continue
            if key not in self._digests and now - self._last_sent.get(key, -1e18) >= self.cfg.storm.cooldown_s:
                who = self.router.audience(*key, now)
                if not who:
                    self.store.mark([alert["dedup_key"]], "out_of_hours")
                    self.store.count("alerts_out_of_hours")
                    continue
                self.store.enqueue([alert["dedup_key"]], "mailed", self._items(alert, who.recipients, who.notify),
                                   who.escalations)
                self._last_sent[key] = now
            else:
                self._digests.setdefault(key, _Digest(opened=now)).alerts.append(alert)
                self._collected.add(alert["dedup_key"])
        for key, digest in list(self._digests.items()):
            if now - digest.opened >= self.cfg.storm.digest_window_s:
                self._send_digest(key, digest, now)
                del self._digests[key]
                self._last_sent[key] = now
        self._escalate(now)
