"""From accepted alerts to outgoing mails and webhook posts: routing, evidence wait, cooldown and digests.

For each (device, kind): the first alert goes out on its own, with its snapshot and heatmap if they arrive within
``evidence_wait_s``. Alerts that come within ``cooldown_s`` of that mail are collected into one digest, sent when its
window of ``digest_window_s`` closes: a line stopping on a fault makes a handful of mails, not a thousand, and every
alert is counted in one of them. An alert is marked in the same transaction that queues the mail carrying it, so a
restart can neither lose it nor mail it twice; alerts of a digest still open at a restart are simply collected again.
"""

from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass, field
from typing import Any

from relay import mailer, webhook
from relay.config import RelayConfig
from relay.queue import Store


@dataclass
class _Digest:
    opened: float
    alerts: list[dict[str, Any]] = field(default_factory=list)


def route(cfg: RelayConfig, device_id: str, kind: str) -> tuple[list[str], list[str]]:
    """(recipients, webhook URLs) of every route matching this device and kind, without repeats."""
    recipients: dict[str, None] = {}
    hooks: dict[str, None] = {}
    for r in cfg.routes:
        if kind in r.kinds and any(fnmatch.fnmatchcase(device_id, pattern) for pattern in r.devices):
            recipients.update(dict.fromkeys(r.recipients))
            hooks.update(dict.fromkeys(r.webhooks))
    return list(recipients), list(hooks)


class Scheduler:
    def __init__(self, cfg: RelayConfig, store: Store):
        self.cfg = cfg
        self.store = store
        self._last_sent: dict[tuple[str, str], float] = {}
        self._digests: dict[tuple[str, str], _Digest] = {}
        self._collected: set[str] = set()  # dedup keys waiting in an open digest

    def _ready(self, alert: dict[str, Any], now: float) -> bool:
        if not alert["frame_id"] or now - alert["received"] >= self.cfg.delivery.evidence_wait_s:
            return True
        return {"snapshot", "gradcam"} <= set(self.store.evidence(alert["frame_id"]))

    def _items(self, recipients: list[str], hooks: list[str], mail: bytes, text: str,
               detail: dict[str, Any]) -> list[tuple[str, str, bytes]]:
        items = [("smtp", ",".join(recipients), mail)] if recipients else []
        return items + [("webhook", url, webhook.body(text, detail)) for url in hooks]

    def _send_one(self, alert: dict[str, Any], recipients: list[str], hooks: list[str]) -> None:
        payload = json.loads(alert["payload"])
        evidence = self.store.evidence(alert["frame_id"])
        mail = mailer.alert_mail(self.cfg, {**payload, "received": alert["received"]}, evidence, recipients) \
            if recipients else b""
        text = f"[{alert['kind']}] {alert['device_id']}: frame {alert['frame_id'] or '-'}"
        self.store.enqueue([alert["dedup_key"]], "mailed", self._items(recipients, hooks, mail, text, payload))

    def _send_digest(self, key: tuple[str, str], digest: _Digest) -> None:
        device_id, kind = key
        recipients, hooks = route(self.cfg, device_id, kind)
        thumbs: list[tuple[str, bytes]] = []
        for a in digest.alerts:
            if len(thumbs) >= self.cfg.storm.thumbnails:
                break
            snap = self.store.evidence(a["frame_id"]).get("snapshot")
            if snap:
                thumbs.append((a["frame_id"], mailer.thumbnail(snap)))
        mail = mailer.digest_mail(self.cfg, device_id, kind, digest.alerts, thumbs, recipients) if recipients else b""
        keys = [a["dedup_key"] for a in digest.alerts]
        text = f"[{kind}] {device_id}: {len(keys)} alerts (digest)"
        detail = {"device_id": device_id, "kind": kind, "count": len(keys),
                  "first_frame_id": digest.alerts[0]["frame_id"], "last_frame_id": digest.alerts[-1]["frame_id"]}
        self.store.enqueue(keys, "digested", self._items(recipients, hooks, mail, text, detail))
        self._collected.difference_update(keys)

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for alert in self.store.new_alerts():
            if alert["dedup_key"] in self._collected or not self._ready(alert, now):
                continue
            key = (alert["device_id"], alert["kind"])
            recipients, hooks = route(self.cfg, *key)
            if not recipients and not hooks:
                self.store.mark([alert["dedup_key"]], "unrouted")
                self.store.count("alerts_unrouted")
                continue
            if key not in self._digests and now - self._last_sent.get(key, -1e18) >= self.cfg.storm.cooldown_s:
                self._send_one(alert, recipients, hooks)
                self._last_sent[key] = now
            else:
                self._digests.setdefault(key, _Digest(opened=now)).alerts.append(alert)
                self._collected.add(alert["dedup_key"])
        for key, digest in list(self._digests.items()):
            if now - digest.opened >= self.cfg.storm.digest_window_s:
                self._send_digest(key, digest)
                del self._digests[key]
                self._last_sent[key] = now
